//! A pool of two Memcached servers shared by two nodes that list them in different orders:
//! both nodes put every key on the same server, an edit on one node is what the other reads
//! next, and with one server dead only its keys come from PostgreSQL, nothing stale. And the
//! pool of one server: few connections for many requests, and a server that comes back is
//! used again, after the deletes it missed.

use super::profiles_cache::PrivateMemcached;
use chat_backend::cache::{Cache, CacheKey};
use chat_backend::metrics::Metrics;
use chat_protocol::UserId;
use e2e_tests::{eventually, Api, TestEnv, TestNode, DEADLINE};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROFILE_LOADS: &str = r#"chat_directory_loads_total{kind="profile"}"#;
const USERS: usize = 16;

/// Sends `command` to the memcached on `port` over its text protocol, on a connection of its
/// own, and returns the answer, read up to `last_line`.
async fn ask(port: u16, command: &str, last_line: &[u8]) -> anyhow::Result<Vec<u8>> {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(command.as_bytes()).await?;
        let mut answer = Vec::new();
        let mut chunk = [0_u8; 4096];
        while !answer.ends_with(last_line) {
            let read = stream.read(&mut chunk).await?;
            anyhow::ensure!(read > 0, "memcached closed the connection");
            answer.extend_from_slice(&chunk[..read]);
        }
        anyhow::Ok(answer)
    };
    tokio::time::timeout(DEADLINE, ask).await?
}

/// Whether the memcached on `port` holds `key`.
async fn holds(port: u16, key: &str) -> anyhow::Result<bool> {
    Ok(ask(port, &format!("get {key}\r\n"), b"END\r\n")
        .await?
        .starts_with(b"VALUE "))
}

/// Connections the memcached on `port` has accepted since it started, this one included.
/// Connections open on the server now (its listener and this question's own included).
async fn connections_open(port: u16) -> anyhow::Result<u64> {
    let answer = String::from_utf8(ask(port, "stats\r\n", b"END\r\n").await?)?;
    answer
        .lines()
        .find_map(|line| line.strip_prefix("STAT curr_connections "))
        .and_then(|count| count.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no curr_connections in {answer:?}"))
}

struct User {
    on_node_a: Api,
    on_node_b: Api,
    key: String,
    profile: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_agree_on_each_keys_server_and_a_dead_server_costs_only_its_keys(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut first = PrivateMemcached::start()?;
    let second = PrivateMemcached::start()?;
    first.wait_up().await?;
    second.wait_up().await?;
    let mut config_a = env.config("pool-a");
    config_a.memcached_servers = format!("127.0.0.1:{},127.0.0.1:{}", first.port, second.port);
    let mut config_b = env.config("pool-b");
    config_b.memcached_servers = format!(" 127.0.0.1:{} ,127.0.0.1:{}", second.port, first.port);
    let prefix = config_a.cache_prefix.clone();
    let node_a = TestNode::start(config_a).await?;
    let node_b = TestNode::start(config_b).await?;

    // Each profile read once through node A: one key per user, on one of the two servers.
    let mut users = Vec::new();
    for n in 0..USERS {
        let on_node_a = node_a.sign_in(&format!("pooled{n}")).await?;
        let me = on_node_a.get("/api/me").await?;
        assert_eq!(me.status, 200, "{:?}", me.body);
        let id = me.body["user_id"].as_i64().unwrap_or(-1);
        let token = on_node_a.token().unwrap_or_default().to_owned();
        users.push(User {
            on_node_b: node_b.api().with_token(&token),
            on_node_a,
            key: format!("{prefix}:profile:{id}"),
            profile: me.body,
        });
    }
    let mut on_first = Vec::new();
    for user in &users {
        let (in_first, in_second) = (
            holds(first.port, &user.key).await?,
            holds(second.port, &user.key).await?,
        );
        assert!(
            in_first != in_second,
            "{} must be on exactly one server",
            user.key
        );
        on_first.push(in_first);
    }
    let first_count = on_first.iter().filter(|on| **on).count();
    assert!(
        (1..USERS).contains(&first_count),
        "the keys spread over both servers: {first_count} of {USERS} on the first"
    );

    // Node B, with the list the other way round, finds every one of them in the cache.
    for user in &users {
        assert_eq!(user.on_node_b.get("/api/me").await?.body, user.profile);
    }
    assert_eq!(node_b.api().metric(PROFILE_LOADS).await?, 0.0);

    // An edit through node A is what node B reads next, on either server.
    let edited_first = on_first.iter().position(|on| *on).unwrap_or(0);
    let edited_second = on_first.iter().position(|on| !*on).unwrap_or(0);
    for (round, index) in [edited_first, edited_second].into_iter().enumerate() {
        let user = &mut users[index];
        let status = format!("edit {round}");
        let updated = user
            .on_node_a
            .patch("/api/me", json!({ "status_text": status }))
            .await?;
        assert_eq!(updated.status, 200, "{:?}", updated.body);
        assert_eq!(user.on_node_b.get("/api/me").await?.body, updated.body);
        user.profile = updated.body;
    }

    // The first server dies: its keys come from PostgreSQL, the second server's still from
    // the cache, and every answer is current.
    first.stop();
    let loads_before = node_b.api().metric(PROFILE_LOADS).await?;
    for user in &users {
        assert_eq!(user.on_node_b.get("/api/me").await?.body, user.profile);
    }
    let loads = node_b.api().metric(PROFILE_LOADS).await? - loads_before;
    assert_eq!(
        loads, first_count as f64,
        "only the dead server's keys reach PostgreSQL"
    );
    let gauge = |port: u16| format!(r#"chat_cache_server_up{{server="127.0.0.1:{port}"}}"#);
    assert_eq!(node_b.api().metric(&gauge(first.port)).await?, 0.0);
    assert_eq!(node_b.api().metric(&gauge(second.port)).await?, 1.0);

    // Edits while it is down reach the other node too, whichever server held the entry.
    for (round, index) in [edited_first, edited_second].into_iter().enumerate() {
        let user = &users[index];
        let status = format!("edit {round} while one server is down");
        let updated = user
            .on_node_a
            .patch("/api/me", json!({ "status_text": status }))
            .await?;
        assert_eq!(updated.status, 200, "{:?}", updated.body);
        assert_eq!(user.on_node_b.get("/api/me").await?.body, updated.body);
    }

    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_serves_bursts_on_few_connections_and_finds_a_restarted_server_after_its_deletes(
) -> anyhow::Result<()> {
    let mut memcached = PrivateMemcached::start()?;
    memcached.wait_up().await?;
    let port = memcached.port;
    let metrics = Metrics::new();
    let cache = Cache::new(&format!("127.0.0.1:{port}"), "pool", 60, metrics.clone());
    let key = |n: i64| CacheKey::Profile(UserId(n));

    // A thousand reads in bursts of two hundred share the pool's connections (16 at most).
    let before = connections_open(port).await?;
    let entries: Vec<(CacheKey, i64)> = (0..200).map(|n| (key(n), n)).collect();
    cache.set_many(&entries).await;
    for _ in 0..5 {
        let reads = futures::future::join_all((0..200).map(|n| cache.get::<i64>(key(n)))).await;
        assert_eq!(reads, (0..200).map(Some).collect::<Vec<_>>());
    }
    // Both counts include the listener and the question's own connection. (A request that
    // timed out on a busy machine closes its connection and a later one opens another: the
    // bound is on those open at once.)
    let open = connections_open(port).await?.saturating_sub(before);
    assert!(
        (1..=16).contains(&open),
        "{open} connections open after 1,001 requests"
    );

    // The server dies: a read fails, and an invalidation meanwhile is owed to it.
    memcached.stop();
    assert_eq!(cache.get::<i64>(key(1)).await, None);
    cache.delete(key(2)).await;
    assert_eq!(
        metrics
            .cache_server_up
            .with_label_values(&[&format!("127.0.0.1:{port}")])
            .get(),
        0
    );

    // It comes back, holding the invalidated entry (as a server cut off, not restarted, would).
    // The cache asks nothing of it until a request comes after the pause.
    let restarted = PrivateMemcached::start_on(port)?;
    restarted.wait_up().await?;
    let stored = ask(port, "set pool:profile:2 0 0 3\r\n999\r\n", b"\r\n").await?;
    assert_eq!(stored, b"STORED\r\n");

    // The cache uses it again, on new connections, and never serves the invalidated entry.
    cache.set(key(3), &3_i64).await;
    eventually("the restarted server in use again", || {
        let cache = cache.clone();
        async move {
            assert_eq!(
                cache.get::<i64>(key(2)).await,
                None,
                "an invalidated entry served"
            );
            cache.set(key(3), &3_i64).await;
            (cache.get::<i64>(key(3)).await == Some(3)).then_some(())
        }
    })
    .await?;
    assert!(!holds(port, "pool:profile:2").await?);
    assert_eq!(
        metrics
            .cache_server_up
            .with_label_values(&[&format!("127.0.0.1:{port}")])
            .get(),
        1
    );
    Ok(())
}
