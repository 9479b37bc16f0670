//! Ending a session closes its open WebSockets on every node, with close code 4001: at once
//! through RabbitMQ for a logout or a password change, and by each node's periodic re-check
//! for a session that expired or went away behind the nodes' backs.

use chat_protocol::limits::CLOSE_SESSION_ENDED;
use e2e_tests::api::test_password;
use e2e_tests::{Api, TestEnv, WsClient};
use serde_json::json;
use std::time::Duration;

/// How soon an ended session's sockets must close on every node.
const WITHIN: Duration = Duration::from_secs(1);

/// A second session of a user who already has one (a second device).
async fn second_session(node_url: &str, username: &str) -> anyhow::Result<Api> {
    let api = Api::new(node_url);
    let session: chat_protocol::api::SessionInfo = api
        .post(
            "/api/login",
            json!({"username": username, "password": test_password(username)}),
        )
        .await?
        .into()?;
    Ok(api.with_token(&session.token))
}

/// A WebSocket opened with `api`'s session on the node at `ws_url`.
async fn socket(ws_url: &str, api: &Api) -> anyhow::Result<WsClient> {
    WsClient::connect_as(ws_url, api.clone()).await
}

/// Fails unless the server closes `client` with 4001 within `within`.
async fn expect_session_ended(client: &mut WsClient, within: Duration) -> anyhow::Result<()> {
    let code = tokio::time::timeout(within, client.recv_close())
        .await
        .map_err(|_| anyhow::anyhow!("the socket was still open after {within:?}"))??;
    anyhow::ensure!(
        code == Some(CLOSE_SESSION_ENDED),
        "closed with {code:?}, not {CLOSE_SESSION_ENDED}"
    );
    Ok(())
}

/// Fails unless `client` is still served: it joins a room and gets `joined`.
async fn expect_open(client: &mut WsClient, room: &str) -> anyhow::Result<()> {
    client.join(room).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_on_one_node_closes_that_sessions_sockets_on_every_node() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("logout-a").await?;
    let node_b = env.start_node("logout-b").await?;
    let laptop = node_a.sign_in("ada").await?;
    let phone = second_session(&node_a.http_url(), "ada").await?;
    let mut laptop_on_b = socket(&node_b.ws_url(), &laptop).await?;
    let mut laptop_on_a = socket(&node_a.ws_url(), &laptop).await?;
    let mut phone_on_b = socket(&node_b.ws_url(), &phone).await?;
    // The socket is in use: it has joined a room.
    laptop_on_b.join("lobby").await?;

    let logout = laptop.post_empty("/api/logout").await?;
    assert_eq!(logout.status, 204, "{}", logout.body);

    expect_session_ended(&mut laptop_on_b, WITHIN).await?;
    expect_session_ended(&mut laptop_on_a, WITHIN).await?;
    // The same user's other session is untouched, and the ended one opens no new socket.
    expect_open(&mut phone_on_b, "lobby").await?;
    assert!(socket(&node_b.ws_url(), &laptop).await.is_err());
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_change_closes_the_users_other_sessions_on_every_node() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("password-a").await?;
    let node_b = env.start_node("password-b").await?;
    let laptop = node_a.sign_in("bob").await?;
    let phone = second_session(&node_b.http_url(), "bob").await?;
    let stranger = node_b.sign_in("eve").await?;
    let mut phone_on_b = socket(&node_b.ws_url(), &phone).await?;
    let mut phone_on_a = socket(&node_a.ws_url(), &phone).await?;
    let mut laptop_on_b = socket(&node_b.ws_url(), &laptop).await?;
    let mut stranger_on_b = socket(&node_b.ws_url(), &stranger).await?;

    let changed = laptop
        .post(
            "/api/password",
            json!({"current_password": test_password("bob"), "new_password": "a brand new one"}),
        )
        .await?;
    assert_eq!(changed.status, 204, "{}", changed.body);

    expect_session_ended(&mut phone_on_b, WITHIN).await?;
    expect_session_ended(&mut phone_on_a, WITHIN).await?;
    // The session that changed the password stays, and so does everybody else's.
    expect_open(&mut laptop_on_b, "after-change").await?;
    expect_open(&mut stranger_on_b, "after-change").await?;
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_that_expire_or_vanish_are_closed_by_the_periodic_check() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let recheck = Duration::from_millis(300);
    let mut config = env.config("recheck-a");
    config.session_recheck_ms = recheck.as_millis() as u64;
    let node_a = e2e_tests::TestNode::start(config.clone()).await?;
    config.node_id = "recheck-b".into();
    let node_b = e2e_tests::TestNode::start(config).await?;
    let expiring = node_a.sign_in("cleo").await?;
    let revoked = node_a.sign_in("dan").await?;
    let staying = node_a.sign_in("fay").await?;
    let mut expiring_on_b = socket(&node_b.ws_url(), &expiring).await?;
    let mut revoked_on_a = socket(&node_a.ws_url(), &revoked).await?;
    let mut staying_on_b = socket(&node_b.ws_url(), &staying).await?;

    // Behind the nodes' backs: no notice goes out, only PostgreSQL knows.
    let expired_hash = chat_backend::auth::hash_token(expiring.token().unwrap_or_default());
    let revoked_hash = chat_backend::auth::hash_token(revoked.token().unwrap_or_default());
    env.db
        .with_conn(move |conn| {
            use diesel::RunQueryDsl;
            diesel::sql_query(
                "UPDATE sessions SET expires_at = now() - interval '1 second' \
                 WHERE token_hash = $1",
            )
            .bind::<diesel::sql_types::Bytea, _>(expired_hash)
            .execute(conn)?;
            diesel::sql_query("DELETE FROM sessions WHERE token_hash = $1")
                .bind::<diesel::sql_types::Bytea, _>(revoked_hash)
                .execute(conn)?;
            Ok(())
        })
        .await?;

    let within = recheck + WITHIN;
    expect_session_ended(&mut expiring_on_b, within).await?;
    expect_session_ended(&mut revoked_on_a, within).await?;
    // The check that closed them looked at this session too, and left it open.
    expect_open(&mut staying_on_b, "still-here").await?;
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}
