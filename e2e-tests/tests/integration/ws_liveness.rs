//! The node pings a WebSocket that has been silent for a ping interval and drops one that stays
//! silent (no frame, no pong) past the timeout, with close code 4002. Clients need nothing for
//! it: the WebSocket layer answers pings (browsers do too).

use chat_protocol::limits::CLOSE_SILENT;
use e2e_tests::{Api, TestEnv, TestNode};
use futures::StreamExt;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const PING_EVERY: Duration = Duration::from_millis(200);
const SILENCE_TIMEOUT: Duration = Duration::from_millis(600);

async fn node_with_quick_pings(env: &TestEnv) -> anyhow::Result<TestNode> {
    let mut config = env.config("pinging");
    config.ws_ping_interval_ms = PING_EVERY.as_millis() as u64;
    config.ws_silence_timeout_ms = SILENCE_TIMEOUT.as_millis() as u64;
    TestNode::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_client_that_answers_pings_stays_connected() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = node_with_quick_pings(&env).await?;
    let api = node.sign_in("quiet").await?;
    let mut request = node.ws_url().into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", api.token().unwrap_or_default()))?,
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    // The client sends nothing of its own; reading, it answers every ping with a pong.
    let mut pings = 0;
    let quiet_for = tokio::time::Instant::now() + SILENCE_TIMEOUT * 4;
    while tokio::time::Instant::now() < quiet_for {
        let Ok(message) = tokio::time::timeout_at(quiet_for, socket.next()).await else {
            break;
        };
        match message {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(frame))) => anyhow::bail!("closed while answering: {frame:?}"),
            Some(Ok(_)) => {}
            other => anyhow::bail!("the connection ended: {other:?}"),
        }
    }
    assert!(pings >= 2, "{pings} pings in {:?}", SILENCE_TIMEOUT * 4);
    assert_eq!(api.metric(SILENT).await?, 0.0);
    node.stop().await?;
    Ok(())
}

const SILENT: &str = r#"chat_disconnects_total{reason="silent"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_is_dropped() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = node_with_quick_pings(&env).await?;
    let api: Api = node.sign_in("gone").await?;
    let mut request = node.ws_url().into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", api.token().unwrap_or_default()))?,
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    // Not polled from here on: the pings stay unanswered, as from a peer that is gone.
    let dropped = e2e_tests::eventually("the silent client dropped", || {
        let api = api.clone();
        async move { (api.metric(SILENT).await.ok()? >= 1.0).then_some(()) }
    });
    tokio::time::timeout(SILENCE_TIMEOUT + PING_EVERY * 5, dropped).await??;
    // Reading at last: the pings it never answered, then the close. Reading them makes the
    // client answer the pings, on a connection the node has already let go of, which may cut
    // it (reset) before the close frame is read.
    let close = tokio::time::timeout(e2e_tests::DEADLINE, async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await?;
    assert!(
        matches!(close, None | Some(CLOSE_SILENT)),
        "closed with {close:?}"
    );
    node.stop().await?;
    Ok(())
}
