//! The store's batched reads (session lookups, newest sequence numbers, catch-ups) answer each
//! caller exactly what its own query would, however many arrive together; and the pool finds
//! connections killed by an outage without testing every checkout.

use chat_backend::store::{CatchUpRequest, NewUser, SeqCounters, Store};
use chat_protocol::api::RoomKind;
use chat_protocol::bus::{IngestMessage, Origin};
use chat_protocol::{ClientMsgId, RoomId, Seq, UserId};
use chrono::{Duration, Utc};
use diesel::RunQueryDsl;
use e2e_tests::proxy::TcpProxy;
use e2e_tests::{eventually, TestEnv};
use futures::future::join_all;

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn send(room_id: RoomId, sender_id: UserId, n: usize) -> IngestMessage {
    IngestMessage {
        room_id,
        sender_id,
        sender_name: "ada".into(),
        client_msg_id: ClientMsgId(format!("m{room_id}-{n}")),
        body: format!("body {n}"),
        sent_at_ms: 1_795_817_270_814,
        origin: Origin {
            node_id: "test".into(),
            conn_id: 1,
        },
    }
}

async fn user(store: &Store, name: &str) -> anyhow::Result<UserId> {
    let row = store
        .create_user(NewUser {
            username: name.into(),
            display_name: name.to_uppercase(),
            avatar_initials: "A".into(),
            password_hash: "not a hash".into(),
        })
        .await?
        .ok_or_else(|| anyhow::anyhow!("user {name} not created"))?;
    Ok(UserId(row.id))
}

async fn room_with(
    store: &Store,
    owner: UserId,
    name: &str,
    count: usize,
) -> anyhow::Result<RoomId> {
    let room = store
        .create_room(name.into(), RoomKind::Public, owner)
        .await?
        .ok_or_else(|| anyhow::anyhow!("room {name} not created"))?
        .room_id;
    let batch: Vec<_> = (1..=count).map(|n| send(room, owner, n)).collect();
    store.persist_batch(batch, SeqCounters::default()).await?;
    Ok(room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catch_ups_arriving_together_each_get_what_they_missed() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let store = Store::new(&env.db.url, 4, 1);
    store.migrate().await?;
    let ada = user(&store, "ada").await?;
    let long = room_with(&store, ada, "long", 30).await?;
    let short = room_with(&store, ada, "short", 5).await?;
    let empty = room_with(&store, ada, "empty", 0).await?;
    let missing = RoomId(short.0 + 1_000);

    let mut requests = Vec::new();
    for after in 0..=32 {
        requests.push((long, Some(Seq(after)), 20));
    }
    for after in [None, Some(Seq(0)), Some(Seq(3)), Some(Seq(5)), Some(Seq(9))] {
        requests.push((short, after, 1_000));
        requests.push((empty, after, 1_000));
        requests.push((missing, after, 1_000));
    }
    let answers = join_all(requests.iter().map(|&(room, after, max_missed)| {
        store.catch_up(CatchUpRequest {
            room,
            after,
            max_missed,
        })
    }))
    .await;

    let newest = |room| match room {
        r if r == long => 30,
        r if r == short => 5,
        _ => 0,
    };
    for ((room, after, max_missed), answer) in requests.iter().zip(answers) {
        let answer = answer?;
        let last = newest(*room);
        assert_eq!(answer.last_seq, Seq(last), "newest of {room} for {after:?}");
        let expected: Vec<i64> = match after {
            Some(after) if last - after.0 <= *max_missed => (after.0 + 1..=last).collect(),
            _ => Vec::new(),
        };
        let got: Vec<i64> = answer.missed.iter().map(|m| m.seq.0).collect();
        assert_eq!(got, expected, "missed of {room} after {after:?}");
        assert!(answer.missed.iter().all(|m| m.room_id == *room));
        assert!(answer
            .missed
            .iter()
            .all(|m| m.body == format!("body {}", m.seq.0) && m.sender_name == "ADA"));
    }

    let newest_each =
        join_all([long, short, empty, missing].map(|room| store.last_seq(room))).await;
    let newest_each: Vec<i64> = newest_each
        .into_iter()
        .map(|seq| seq.map(|seq| seq.0))
        .collect::<Result<_, _>>()?;
    assert_eq!(newest_each, vec![30, 5, 0, 0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_lookups_arriving_together_each_find_their_own_user() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let store = Store::new(&env.db.url, 4, 1);
    store.migrate().await?;
    let mut lookups = Vec::new();
    for n in 0..40 {
        let name = format!("user{n}");
        let id = user(&store, &name).await?;
        let live = format!("live-{n}").into_bytes();
        store
            .create_session(id, live.clone(), Utc::now() + Duration::hours(1))
            .await?;
        lookups.push((live, Some((id, name.to_uppercase()))));
        let expired = format!("expired-{n}").into_bytes();
        store
            .create_session(id, expired.clone(), Utc::now() - Duration::seconds(1))
            .await?;
        lookups.push((expired, None));
        lookups.push((format!("unknown-{n}").into_bytes(), None));
    }
    let found = join_all(
        lookups
            .iter()
            .map(|(hash, _)| store.session_user(hash.clone())),
    )
    .await;
    for ((hash, expected), found) in lookups.iter().zip(found) {
        let found = found?.map(|user| (user.user_id, user.display_name));
        assert_eq!(&found, expected, "{}", String::from_utf8_lossy(hash));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_an_outage_at_most_one_read_fails_on_a_dead_connection() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let direct = Store::new(&env.db.url, 3, 1);
    direct.migrate().await?;
    let ada = user(&direct, "ada").await?;
    drop(direct);
    let proxy = TcpProxy::start("127.0.0.1:5432").await?;
    let store = Store::new(&env.db.url_through(proxy.addr), 4, 1);
    // Fill the pool: four reads at once each hold a connection.
    let first = join_all((0..4).map(|_| store.load_profile(ada))).await;
    assert!(first.iter().all(|read| matches!(read, Ok(Some(_)))));

    // The outage kills every pooled connection; nothing reads until it is over.
    proxy.cut();
    let db = env.db.name.clone();
    let test_db = &env.db;
    eventually("the pooled connections to end", || {
        let db = db.clone();
        async move {
            let backends = test_db
                .with_conn(move |conn| {
                    Ok(diesel::sql_query(format!(
                        "SELECT count(*) AS n FROM pg_stat_activity \
                         WHERE datname = '{db}' AND pid <> pg_backend_pid()"
                    ))
                    .get_result::<Count>(conn)?
                    .n)
                })
                .await
                .ok()?;
            (backends == 0).then_some(())
        }
    })
    .await?;
    proxy.restore();

    let mut failures = 0;
    for _ in 0..10 {
        if store.load_profile(ada).await.is_err() {
            failures += 1;
        }
    }
    assert!(failures <= 1, "{failures} reads failed after the outage");
    let last = join_all((0..4).map(|_| store.load_profile(ada))).await;
    assert!(last.iter().all(|read| matches!(read, Ok(Some(_)))));
    Ok(())
}
