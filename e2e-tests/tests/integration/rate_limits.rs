//! Rate limits on sending (per user), on REST writes (per user) and on login attempts (per IP
//! address, per user name from an address, per user name), answered with `rate_limited` and how
//! long to wait; login budgets hold for the whole deployment; behind a trusted proxy, the IP
//! address is the one the proxy forwards for.

use chat_backend::config::Config;
use chat_backend::forwarded::TrustedProxies;
use chat_protocol::ServerFrame;
use clap::Parser;
use e2e_tests::api::Reply;
use e2e_tests::{Api, TestEnv, TestNode, WsClient};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_too_fast_is_refused_with_a_retry_after() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("send-limit");
    config.send_rate_per_user = 1;
    config.send_burst_per_user = 3;
    let node = TestNode::start(config).await?;
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("busy").await?;

    for index in 0..5 {
        ada.send_message(room, &format!("m{index}"), "spam").await?;
    }
    let (code, retry_after_ms, id) = ada
        .recv_until(|frame| match frame {
            ServerFrame::Error {
                code,
                retry_after_ms,
                client_msg_id,
                ..
            } => Some((*code, *retry_after_ms, client_msg_id.clone())),
            _ => None,
        })
        .await?;
    assert_eq!(code.as_str(), "rate_limited");
    assert!(retry_after_ms.unwrap_or(0) > 0);
    assert_eq!(id.map(|id| id.0), Some("m3".to_owned()));
    e2e_tests::eventually("the three allowed messages to be stored", || {
        let api = ada.api().ok().cloned();
        async move {
            let page = api?
                .get(&format!("/api/rooms/{room}/messages"))
                .await
                .ok()?;
            (page.body["messages"].as_array()?.len() == 3).then_some(())
        }
    })
    .await?;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_attempts_are_limited_per_user_and_per_ip() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("login-limit");
    config.login_attempts_per_user_ip = 3;
    config.login_attempts_per_ip = 6;
    let node = TestNode::start(config).await?;
    let api = node.api();
    api.post(
        "/api/register",
        json!({"username": "ada", "password": "correct horse"}),
    )
    .await?;

    for _ in 0..3 {
        api.post(
            "/api/login",
            json!({"username": "ada", "password": "guess guess"}),
        )
        .await?
        .expect_error(401, "bad_credentials")?;
    }
    // Even the right password waits now: the limit counts attempts, not failures.
    let limited = api
        .post(
            "/api/login",
            json!({"username": "ada", "password": "correct horse"}),
        )
        .await?;
    limited.expect_error(429, "rate_limited")?;
    let retry_after: u64 = limited
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(retry_after >= 1, "{:?}", limited.headers);
    assert!(limited.body["retry_after_ms"].as_u64().unwrap_or(0) > 0);

    // One address trying many names hits the per-IP limit (1 registration + 4 logins so far).
    api.post(
        "/api/login",
        json!({"username": "bob", "password": "guess guess"}),
    )
    .await?
    .expect_error(401, "bad_credentials")?;
    api.post(
        "/api/login",
        json!({"username": "carol", "password": "guess guess"}),
    )
    .await?
    .expect_error(429, "rate_limited")?;
    api.post(
        "/api/register",
        json!({"username": "dave", "password": "correct horse"}),
    )
    .await?
    .expect_error(429, "rate_limited")?;
    node.stop().await?;
    Ok(())
}

/// A failed login attempt for `username`, as if forwarded by a proxy for `forwarded_for`.
async fn attempt(api: &Api, forwarded_for: &str, username: &str) -> anyhow::Result<Reply> {
    let request = api
        .http()
        .post(format!("{}/api/login", api.base()))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"username": username, "password": "guess guess"}));
    api.send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_login_budget(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("trusted-proxy");
    config.login_attempts_per_ip = 3;
    // Every test client connects from 127.0.0.1: here, that is the proxy.
    config.trusted_proxies = "127.0.0.1"
        .parse::<TrustedProxies>()
        .map_err(anyhow::Error::msg)?;
    let node = TestNode::start(config).await?;
    let api = node.api();

    for client in ["203.0.113.1", "203.0.113.2"] {
        for index in 0..3 {
            attempt(&api, client, &format!("user{index}"))
                .await?
                .expect_error(401, "bad_credentials")?;
        }
        attempt(&api, client, "user9")
            .await?
            .expect_error(429, "rate_limited")?;
    }
    // A client that writes an address of its own in front of the one the proxy appends is
    // still counted as the address the proxy saw.
    attempt(&api, "198.51.100.7, 203.0.113.1", "user0")
        .await?
        .expect_error(429, "rate_limited")?;
    // Nonsense to the left of the proxy's entry changes nothing either.
    attempt(&api, "nonsense, 203.0.113.2", "user0")
        .await?
        .expect_error(429, "rate_limited")?;
    // The proxy itself (no header) and a third client have budgets of their own.
    api.post(
        "/api/login",
        json!({"username": "user0", "password": "guess guess"}),
    )
    .await?
    .expect_error(401, "bad_credentials")?;
    attempt(&api, "203.0.113.3", "user0")
        .await?
        .expect_error(401, "bad_credentials")?;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_choose_its_address_with_x_forwarded_for() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("untrusted-proxy");
    config.login_attempts_per_ip = 3;
    config.trusted_proxies = "192.0.2.1"
        .parse::<TrustedProxies>()
        .map_err(anyhow::Error::msg)?;
    let node = TestNode::start(config).await?;
    let api = node.api();

    for index in 0..3 {
        attempt(&api, "203.0.113.1", &format!("user{index}"))
            .await?
            .expect_error(401, "bad_credentials")?;
    }
    // The header is ignored: every attempt from this peer shares one budget.
    attempt(&api, "203.0.113.2", "user0")
        .await?
        .expect_error(429, "rate_limited")?;
    api.post(
        "/api/register",
        json!({"username": "dave", "password": "correct horse"}),
    )
    .await?
    .expect_error(429, "rate_limited")?;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_websocket_sends_are_limited_per_forwarded_client(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("trusted-proxy-ws");
    config.send_rate_per_ip = 1;
    config.send_burst_per_ip = 2;
    config.trusted_proxies = "127.0.0.0/8"
        .parse::<TrustedProxies>()
        .map_err(anyhow::Error::msg)?;
    let node = TestNode::start(config).await?;
    let room = node.sign_in("ada").await?.public_room("proxied").await?;

    // Ada and carol behind the proxy from one address, bob from another.
    let mut clients = Vec::new();
    for (name, address) in [
        ("ada", "203.0.113.1"),
        ("carol", "203.0.113.1"),
        ("bob", "203.0.113.2"),
    ] {
        let api = node.sign_in(name).await?;
        let joined = api.post_empty(&format!("/api/rooms/{room}/join")).await?;
        assert_eq!(joined.status, 200, "{}", joined.body);
        let mut client =
            WsClient::connect_with_headers(&node.ws_url(), api, &[("x-forwarded-for", address)])
                .await?;
        client.subscribe(room).await?;
        clients.push(client);
    }
    let mut answers = Vec::new();
    for (index, client) in clients.iter_mut().enumerate() {
        let sends = if index == 1 { 1 } else { 3 };
        for send in 0..sends {
            let id = format!("c{index}-{send}");
            client.send_message(room, &id, "hello").await?;
            let answer = client
                .recv_until(|frame| match frame {
                    ServerFrame::Accepted { client_msg_id, .. } if client_msg_id.0 == id => {
                        Some("accepted".to_owned())
                    }
                    ServerFrame::Error {
                        code,
                        client_msg_id: Some(refused),
                        ..
                    } if refused.0 == id => Some(code.as_str().to_owned()),
                    _ => None,
                })
                .await?;
            answers.push((id, answer));
        }
    }
    let expected = [
        ("c0-0", "accepted"),
        ("c0-1", "accepted"),
        ("c0-2", "rate_limited"),
        // Carol shares ada's address, whose burst is spent; bob has a burst of his own.
        ("c1-0", "rate_limited"),
        ("c2-0", "accepted"),
        ("c2-1", "accepted"),
        ("c2-2", "rate_limited"),
    ];
    let answers: Vec<(&str, &str)> = answers
        .iter()
        .map(|(id, answer)| (id.as_str(), answer.as_str()))
        .collect();
    assert_eq!(answers, expected);
    node.stop().await?;
    Ok(())
}

/// A login attempt for `username` with `password` at `node`, as if forwarded for `forwarded_for`.
async fn login_from(
    api: &Api,
    forwarded_for: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<Reply> {
    let request = api
        .http()
        .post(format!("{}/api/login", api.base()))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"username": username, "password": password}));
    api.send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_wrong_logins_from_one_address_do_not_lock_the_user_out_of_another(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("lock-out");
    // The shipped login limits.
    let shipped = Config::try_parse_from(["chat-server"])?;
    config.login_attempts_per_ip = shipped.login_attempts_per_ip;
    config.login_attempts_per_user = shipped.login_attempts_per_user;
    config.login_attempts_per_user_ip = shipped.login_attempts_per_user_ip;
    config.trusted_proxies = "127.0.0.1"
        .parse::<TrustedProxies>()
        .map_err(anyhow::Error::msg)?;
    let node = TestNode::start(config).await?;
    let api = node.api();
    api.post(
        "/api/register",
        json!({"username": "ada", "password": "correct horse"}),
    )
    .await?;

    // The stranger at 203.0.113.66 guesses until refused.
    let mut refused_after = None;
    for attempt in 0..20 {
        let answer = login_from(&api, "203.0.113.66", "ada", "guess guess").await?;
        if answer.status == 429 {
            answer.expect_error(429, "rate_limited")?;
            refused_after = Some(attempt);
            break;
        }
        answer.expect_error(401, "bad_credentials")?;
    }
    assert_eq!(
        refused_after,
        Some(shipped.login_attempts_per_user_ip as usize)
    );
    // Ada, elsewhere, signs in.
    let answer = login_from(&api, "198.51.100.5", "ada", "correct horse").await?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_budgets_hold_for_the_deployment_not_per_node() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut nodes = Vec::new();
    for name in ["budget-a", "budget-b"] {
        let mut config = env.config(name);
        config.login_attempts_per_ip = 4;
        config.login_attempts_per_user = 3;
        nodes.push(TestNode::start(config).await?);
    }
    let (a, b) = (nodes[0].api(), nodes[1].api());
    let wrong = |name: &str| json!({"username": name, "password": "guess guess"});

    // One user name, three attempts spread over both nodes: the third is the last.
    for api in [&a, &b, &a] {
        api.post("/api/login", wrong("ada"))
            .await?
            .expect_error(401, "bad_credentials")?;
    }
    b.post("/api/login", wrong("ada"))
        .await?
        .expect_error(429, "rate_limited")?;
    // One address, four attempts over both nodes (that refused one counted): both refuse now.
    for api in [&a, &b] {
        api.post("/api/login", wrong("bob"))
            .await?
            .expect_error(429, "rate_limited")?;
        api.post(
            "/api/register",
            json!({"username": "carol", "password": "correct horse"}),
        )
        .await?
        .expect_error(429, "rate_limited")?;
    }
    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_memcached_each_node_keeps_its_own_login_limits() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("login-no-cache");
    config.login_attempts_per_ip = 3;
    // A loopback port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    config.memcached_servers = closed.to_string();
    let node = TestNode::start(config).await?;
    let api = node.api();
    for index in 0..3 {
        api.post(
            "/api/login",
            json!({"username": format!("user{index}"), "password": "guess guess"}),
        )
        .await?
        .expect_error(401, "bad_credentials")?;
    }
    api.post(
        "/api/login",
        json!({"username": "user9", "password": "guess guess"}),
    )
    .await?
    .expect_error(429, "rate_limited")?;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_limited_per_address_per_hour() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("registrations");
    config.registrations_per_ip = 2;
    let node = TestNode::start(config).await?;
    let api = node.api();
    let register = |name: &str| json!({"username": name, "password": "correct horse"});
    for name in ["ada", "bob"] {
        let answer = api.post("/api/register", register(name)).await?;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    let refused = api.post("/api/register", register("carol")).await?;
    refused.expect_error(429, "rate_limited")?;
    assert!(retry_after(&refused) >= 1, "{:?}", refused.headers);
    // Nothing was created: carol does not exist.
    api.post(
        "/api/login",
        json!({"username": "carol", "password": "correct horse"}),
    )
    .await?
    .expect_error(401, "bad_credentials")?;
    node.stop().await?;
    Ok(())
}

/// The `Retry-After` of an answer, in seconds (0 when missing).
fn retry_after(reply: &Reply) -> u64 {
    reply
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rest_write_is_rate_limited_per_user() -> anyhow::Result<()> {
    use reqwest::Method;
    let env = TestEnv::new().await?;
    let mut config = env.config("rest-writes");
    config.rest_writes_per_minute_per_user = 1;
    config.rest_write_burst_per_user = 3;
    let node = TestNode::start(config).await?;
    let owner = node.sign_in("owner").await?;
    let room = owner.public_room("open").await?;
    node.sign_in("bob").await?;

    let writes: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (
            Method::POST,
            "/api/rooms".into(),
            Some(json!({"name": "more", "visibility": "public"})),
        ),
        (Method::POST, format!("/api/rooms/{room}/join"), None),
        (Method::POST, format!("/api/rooms/{room}/leave"), None),
        (
            Method::POST,
            format!("/api/rooms/{room}/invite"),
            Some(json!({"username": "bob"})),
        ),
        (
            Method::POST,
            "/api/direct".into(),
            Some(json!({"username": "bob"})),
        ),
        (
            Method::PATCH,
            "/api/me".into(),
            Some(json!({"status_text": "busy"})),
        ),
        (
            Method::POST,
            "/api/password".into(),
            Some(json!({"current_password": "wrong", "new_password": "a brand new one"})),
        ),
    ];
    let mut problems = Vec::new();
    for (index, (method, path, body)) in writes.into_iter().enumerate() {
        // A writer of their own for each write, who joins the room and spends the rest of the
        // budget (three writes) on joining it again.
        let writer = node.sign_in(&format!("writer{index}")).await?;
        for _ in 0..3 {
            let joined = writer
                .post_empty(&format!("/api/rooms/{room}/join"))
                .await?;
            assert_eq!(joined.status, 200, "{}", joined.body);
        }
        let answer = writer.call(method.clone(), &path, body).await?;
        if answer.status != 429 || answer.code() != "rate_limited" || retry_after(&answer) < 1 {
            problems.push(format!(
                "{method} {path} → {} {}",
                answer.status, answer.body
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Nothing was changed by the refused writes.
    let more = owner.get("/api/rooms?q=more").await?;
    assert_eq!(more.body["rooms"], json!([]), "{}", more.body);
    let members = owner.get(&format!("/api/rooms/{room}/members")).await?;
    let names: Vec<&str> = members.body["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|member| member["username"].as_str())
        .collect();
    assert!(names.contains(&"writer2"), "leaving was refused: {names:?}");
    assert!(!names.contains(&"bob"), "inviting was refused: {names:?}");
    let me = node.sign_in("writer5").await?.get("/api/me").await?;
    assert_eq!(me.body["status_text"], "", "{}", me.body);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_creation_is_limited_per_user_and_a_refused_room_is_not_created() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let mut config = env.config("room-creation");
    config.rooms_per_user_per_hour = 2;
    let node = TestNode::start(config).await?;
    let ada = node.sign_in("ada").await?;
    let create = |name: &str| json!({"name": name, "visibility": "public"});
    for name in ["first", "second"] {
        let answer = ada.post("/api/rooms", create(name)).await?;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    let refused = ada.post("/api/rooms", create("third")).await?;
    refused.expect_error(429, "rate_limited")?;
    assert!(retry_after(&refused) >= 60, "{:?}", refused.headers);
    let found = ada.get("/api/rooms?q=third").await?;
    assert_eq!(found.body["rooms"], json!([]), "{}", found.body);
    // Another user is not affected.
    let bob = node.sign_in("bob").await?;
    let answer = bob.post("/api/rooms", create("third")).await?;
    assert_eq!(answer.status, 201, "{}", answer.body);
    node.stop().await?;
    Ok(())
}
