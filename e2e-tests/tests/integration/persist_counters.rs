//! One order per room even when a persister's sequence counters are out of date: the primary
//! key on (room, seq) refuses the numbers, the batch is stored the checked way, and the room's
//! sequence stays 1, 2, 3… with nothing lost or repeated.

use chat_backend::store::{MessageOutcome, NewUser, SeqCounters, Store};
use chat_protocol::api::RoomKind;
use chat_protocol::{RoomId, UserId};
use e2e_tests::checks::stored_messages;
use e2e_tests::ingest_message as send;
use e2e_tests::TestEnv;

fn seqs(outcomes: &[MessageOutcome]) -> Vec<(i64, bool)> {
    outcomes
        .iter()
        .map(|outcome| match outcome {
            MessageOutcome::Stored(seq) => (seq.0, false),
            MessageOutcome::Duplicate(message) => (message.seq.0, true),
            MessageOutcome::Rejected(_) => (-1, false),
        })
        .collect()
}

/// A store on the test's database with one persisting connection, and a user to send as.
async fn store_with_ada(env: &TestEnv) -> anyhow::Result<(Store, UserId)> {
    let store = Store::new(&env.db.url, 3, 1);
    store.migrate().await?;
    let ada = store
        .create_user(NewUser {
            username: "ada".into(),
            display_name: "Ada".into(),
            avatar_initials: "A".into(),
            password_hash: "not a hash".into(),
        })
        .await?
        .ok_or_else(|| anyhow::anyhow!("user not created"))?;
    Ok((store, UserId(ada.id)))
}

async fn public_room(store: &Store, owner: UserId, name: &str) -> anyhow::Result<RoomId> {
    Ok(store
        .create_room(name.into(), RoomKind::Public, owner)
        .await?
        .ok_or_else(|| anyhow::anyhow!("room {name} not created"))?
        .room_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persister_with_stale_counters_keeps_the_room_in_order() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let (store, ada) = store_with_ada(&env).await?;
    let room = public_room(&store, ada, "counters").await?;

    // Two persisters, one after the other, as when a shard moves between nodes and back.
    let first = SeqCounters::default();
    let second = SeqCounters::default();
    let stored = store
        .persist_batch(
            vec![send(room, ada, "a"), send(room, ada, "b")],
            first.clone(),
        )
        .await?;
    assert_eq!(seqs(&stored), vec![(1, false), (2, false)]);
    let stored = store
        .persist_batch(vec![send(room, ada, "c")], second.clone())
        .await?;
    assert_eq!(seqs(&stored), vec![(3, false)]);
    // The first still believes the room ends at 2: its numbers are refused, and the batch is
    // stored the checked way.
    let stored = store
        .persist_batch(vec![send(room, ada, "d")], first.clone())
        .await?;
    assert_eq!(seqs(&stored), vec![(4, false)]);
    // A resend within a batch is answered as the original; the rest is numbered on.
    let stored = store
        .persist_batch(
            vec![send(room, ada, "e"), send(room, ada, "b")],
            first.clone(),
        )
        .await?;
    assert_eq!(seqs(&stored), vec![(5, false), (2, true)]);
    // And the common way works again from the counters read back.
    let stored = store
        .persist_batch(vec![send(room, ada, "f")], first.clone())
        .await?;
    assert_eq!(seqs(&stored), vec![(6, false)]);
    // A sender that does not exist, in a batch the counters would store the common way: the
    // statement counts the senders and fails as a whole, and the checked way rejects the one.
    let stored = store
        .persist_batch(
            vec![
                send(room, UserId(987_654_321), "ghost"),
                send(room, ada, "g"),
            ],
            first,
        )
        .await?;
    assert_eq!(seqs(&stored), vec![(-1, false), (7, false)]);

    assert_eq!(
        stored_messages(&env.db, room).await?,
        ["a", "b", "c", "d", "e", "f", "g"]
            .iter()
            .enumerate()
            .map(|(index, id)| (index as i64 + 1, id.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(store.last_seq(room).await?.0, 7);
    Ok(())
}

/// The persisters' connections plan their statement once, for whatever batch comes first: the
/// same plan must store a batch of one message in one room as correctly as hundreds over many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plan_stores_batches_of_every_size() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // One persisting connection: every batch below goes through the same prepared statement.
    let (store, ada) = store_with_ada(&env).await?;
    let mut rooms = Vec::new();
    for index in 0..12 {
        rooms.push(public_room(&store, ada, &format!("sizes-{index}")).await?);
    }

    let counters = SeqCounters::default();
    let mut expected: Vec<Vec<(i64, String)>> = vec![Vec::new(); rooms.len()];
    let mut next_id = 0;
    for size in [1usize, 3, 300, 2, 64, 1] {
        let mut batch = Vec::with_capacity(size);
        let mut wanted = Vec::with_capacity(size);
        for position in 0..size {
            let which = (position * 7 + size) % rooms.len();
            let id = format!("m{next_id}");
            next_id += 1;
            let seq = expected[which].len() as i64 + 1;
            expected[which].push((seq, id.clone()));
            batch.push(send(rooms[which], ada, &id));
            wanted.push((seq, false));
        }
        let stored = store.persist_batch(batch, counters.clone()).await?;
        assert_eq!(seqs(&stored), wanted, "a batch of {size}");
    }
    for (room, expected) in rooms.iter().zip(expected) {
        assert_eq!(stored_messages(&env.db, *room).await?, expected);
        assert_eq!(store.last_seq(*room).await?.0, expected.len() as i64);
    }
    Ok(())
}

/// What a batch stores is what was sent, byte for byte and to the millisecond, whichever way it
/// is stored: bodies and ids of every size and script, empty bodies, and send times before and
/// after PostgreSQL's own epoch (2000-01-01).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_store_texts_and_times_exactly() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let (store, ada) = store_with_ada(&env).await?;
    let room = public_room(&store, ada, "exact").await?;

    let contents: [(&str, &str, i64); 6] = [
        ("plain", "hello", 1_795_817_270_814),
        ("empty", "", 0),
        (
            "ünïcødé-ид-💬",
            "naïve café — 日本語 🎉\n\ttabs and \"quotes\" and \\",
            946_684_799_999,
        ),
        ("before-epoch", "{\"json\": [1, 2]}", -1),
        ("long", &"x".repeat(4000), 946_684_800_001),
        ("nul-free ' quote", "it's", 4_102_444_800_000),
    ];
    let sends = |prefix: &str| {
        contents
            .iter()
            .map(|(id, body, sent_at_ms)| {
                let mut message = send(room, ada, &format!("{prefix}{id}"));
                message.body = body.to_string();
                message.sent_at_ms = *sent_at_ms;
                message
            })
            .collect::<Vec<_>>()
    };
    // The common way (known counters), then the checked way (a resend of the first in the batch).
    let counters = SeqCounters::default();
    let common = store.persist_batch(sends("a-"), counters.clone()).await?;
    assert!(common
        .iter()
        .all(|outcome| matches!(outcome, MessageOutcome::Stored(_))));
    let mut checked_batch = sends("b-");
    checked_batch.push(send(room, ada, "a-plain"));
    let checked = store.persist_batch(checked_batch, counters).await?;
    assert_eq!(seqs(&checked).last(), Some(&(1, true)));

    let stored = store
        .messages_after(room, chat_protocol::Seq(0), 100)
        .await?;
    let got: Vec<(String, String, i64)> = stored
        .iter()
        .map(|m| (m.client_msg_id.0.clone(), m.body.clone(), m.sent_at_ms))
        .collect();
    let wanted: Vec<(String, String, i64)> = ["a-", "b-"]
        .iter()
        .flat_map(|prefix| {
            contents
                .iter()
                .map(move |(id, body, at)| (format!("{prefix}{id}"), body.to_string(), *at))
        })
        .collect();
    assert_eq!(got, wanted);
    Ok(())
}
