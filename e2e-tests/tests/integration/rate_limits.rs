//! Rate limits on sending (per user) and on login attempts (per user name and per IP address),
//! answered with `rate_limited` and how long to wait.

use chat_protocol::ServerFrame;
use e2e_tests::{TestEnv, TestNode};
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
