//! Profiles, and Memcached in front of them: reads after the first come from the cache, an
//! update is seen at once by every node, and with Memcached gone everything still works from
//! PostgreSQL and the cache is used again once it is back.

use e2e_tests::{eventually, Api, TestEnv, TestNode, DEADLINE};
use serde_json::json;
use std::process::{Child, Command, Stdio};

const PROFILE_LOADS: &str = r#"chat_directory_loads_total{kind="profile"}"#;
const CACHE_HITS: &str = r#"chat_cache_requests_total{op="get",result="hit"}"#;
const CACHE_ERRORS: &str = "chat_cache_errors_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn profiles_are_cached_and_updates_reach_every_node() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("cache-a").await?;
    let node_b = env.start_node("cache-b").await?;
    let ada_a = node_a.sign_in("ada").await?;
    let token = ada_a.token().unwrap_or_default().to_owned();
    let ada_b = node_b.api().with_token(&token);

    let first = ada_a.get("/api/me").await?;
    assert_eq!(first.status, 200);
    assert_eq!(ada_a.metric(PROFILE_LOADS).await?, 1.0);
    for _ in 0..3 {
        assert_eq!(ada_a.get("/api/me").await?.body, first.body);
    }
    assert_eq!(
        ada_a.metric(PROFILE_LOADS).await?,
        1.0,
        "later reads must not reach PostgreSQL"
    );
    // The other node finds it in the shared cache too.
    assert_eq!(ada_b.get("/api/me").await?.body, first.body);
    assert_eq!(ada_b.metric(PROFILE_LOADS).await?, 0.0);

    let updated = ada_a
        .patch(
            "/api/me",
            json!({"display_name": "Ada L.", "status_text": "in a meeting", "avatar_color": "#aa3300", "avatar_initials": "AL"}),
        )
        .await?;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    // No waiting: the update deleted the entry, so node B's very next read sees it.
    let seen_on_b = ada_b.get("/api/me").await?;
    assert_eq!(seen_on_b.body, updated.body);
    assert_eq!(seen_on_b.body["avatar"]["initials"], "AL");
    assert_eq!(ada_b.metric(PROFILE_LOADS).await?, 1.0);
    let user_id = updated.body["user_id"].as_i64().unwrap_or(-1);
    let bob = node_b.sign_in("bob").await?;
    assert_eq!(
        bob.get(&format!("/api/users/{user_id}")).await?.body["status_text"],
        "in a meeting"
    );

    // Profile fields have limits with their codes.
    for (field, value, code) in [
        ("display_name", json!(""), "invalid_name"),
        ("display_name", json!("x".repeat(33)), "invalid_name"),
        ("status_text", json!("s".repeat(141)), "invalid_profile"),
        ("avatar_color", json!("blue"), "invalid_profile"),
        ("avatar_initials", json!("ABCD"), "invalid_profile"),
        ("nickname", json!("x"), "bad_request"),
    ] {
        ada_a
            .patch("/api/me", json!({ field: value }))
            .await?
            .expect_error(400, code)?;
    }
    bob.get("/api/users/999999")
        .await?
        .expect_error(404, "user_not_found")?;
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

/// A memcached of this test's own, on a port of its own; killed on drop.
pub(crate) struct PrivateMemcached {
    pub(crate) port: u16,
    process: Option<Child>,
}

impl PrivateMemcached {
    pub(crate) fn start_on(port: u16) -> anyhow::Result<PrivateMemcached> {
        let mut command = Command::new("memcached");
        command
            .args([
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                "16",
                "-U",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // memcached refuses to run as root without a user to switch to.
        if std::env::var("USER").map(|u| u == "root").unwrap_or(true) {
            command.args(["-u", "memcache"]);
        }
        Ok(PrivateMemcached {
            port,
            process: Some(command.spawn()?),
        })
    }

    pub(crate) fn start() -> anyhow::Result<PrivateMemcached> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        PrivateMemcached::start_on(port)
    }

    pub(crate) async fn wait_up(&self) -> anyhow::Result<()> {
        let address = format!("127.0.0.1:{}", self.port);
        eventually("memcached to listen", || {
            let address = address.clone();
            async move { tokio::net::TcpStream::connect(address).await.ok() }
        })
        .await?;
        Ok(())
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for PrivateMemcached {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Everything a user does, checked against what PostgreSQL has.
async fn exercise(node: &TestNode, api: &Api, round: &str) -> anyhow::Result<()> {
    let status = format!("status {round}");
    let updated = api.patch("/api/me", json!({"status_text": status})).await?;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    assert_eq!(api.get("/api/me").await?.body["status_text"], status);
    let room = format!("room-{round}");
    let mut client = node.user("ada").await?;
    let (room_id, _) = client.join(&room).await?;
    client
        .send_message(room_id, &format!("m-{round}"), round)
        .await?;
    assert_eq!(client.next_message(room_id).await?.body, round);
    let members = api.get(&format!("/api/rooms/{room_id}/members")).await?;
    assert_eq!(members.body["members"][0]["username"], "ada");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_stays_correct_while_memcached_is_down_and_uses_it_again_after(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut memcached = PrivateMemcached::start()?;
    memcached.wait_up().await?;
    let mut config = env.config("cache-down");
    config.memcached_servers = format!("127.0.0.1:{}", memcached.port);
    let node = TestNode::start(config).await?;
    let ada = node.sign_in("ada").await?;

    exercise(&node, &ada, "before").await?;
    ada.get("/api/me").await?;
    assert!(ada.metric(CACHE_HITS).await? >= 1.0);
    assert_eq!(ada.metric(CACHE_ERRORS).await?, 0.0);

    memcached.stop();
    let started = tokio::time::Instant::now();
    exercise(&node, &ada, "during").await?;
    assert!(
        started.elapsed() < DEADLINE / 2,
        "a dead cache must stay cheap"
    );
    assert!(
        ada.metric(CACHE_ERRORS).await? >= 1.0,
        "failures are counted"
    );

    // Back on the same port, empty: the node uses it again within its short pause.
    let restarted = PrivateMemcached::start_on(memcached.port)?;
    restarted.wait_up().await?;
    let hits_before = ada.metric(CACHE_HITS).await?;
    eventually("cache hits again", || {
        let ada = ada.clone();
        async move {
            ada.get("/api/me").await.ok()?;
            (ada.metric(CACHE_HITS).await.ok()? > hits_before).then_some(())
        }
    })
    .await?;
    exercise(&node, &ada, "after").await?;
    assert_eq!(
        ada.get("/api/me").await?.body["status_text"],
        "status after"
    );
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pointed_at_a_closed_port_works_from_postgres() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("no-cache");
    config.memcached_servers = "127.0.0.1:1".into();
    let node = TestNode::start(config).await?;
    let ada = node.sign_in("ada").await?;
    exercise(&node, &ada, "closed").await?;
    assert!(ada.metric(CACHE_ERRORS).await? >= 1.0);
    assert_eq!(ada.metric(CACHE_HITS).await?, 0.0);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalidating_an_entry_that_is_not_cached_is_no_failure() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("cache-absent").await?;
    let ada = node.sign_in("ada").await?;
    // Nothing read the profile yet: the update deletes a key memcached does not have.
    let updated = ada
        .patch("/api/me", json!({"status_text": "first words"}))
        .await?;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    assert_eq!(ada.metric(CACHE_ERRORS).await?, 0.0);
    // The cache keeps working: the second read is a hit, PostgreSQL is asked once.
    let hits = ada.metric(CACHE_HITS).await?;
    for _ in 0..2 {
        assert_eq!(ada.get("/api/me").await?.body, updated.body);
    }
    assert_eq!(ada.metric(CACHE_HITS).await?, hits + 1.0);
    assert_eq!(ada.metric(PROFILE_LOADS).await?, 1.0);
    assert_eq!(ada.metric(CACHE_ERRORS).await?, 0.0);
    node.stop().await?;
    Ok(())
}
