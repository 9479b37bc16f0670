//! Rate limits on sending (per user) and on login attempts (per user name and per IP address),
//! answered with `rate_limited` and how long to wait; behind a trusted proxy, the IP address is
//! the one the proxy forwards for.

use chat_backend::forwarded::TrustedProxies;
use chat_protocol::ServerFrame;
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
    config.login_attempts_per_user = 3;
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
