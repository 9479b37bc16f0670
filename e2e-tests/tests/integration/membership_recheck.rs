//! Sends trust a room membership for `CHAT_MEMBERSHIP_RECHECK_MS`: a membership ended without
//! any node hearing of it stops the user's sends within that time, and an active sender's
//! membership is renewed in the background, so its sends never wait for the check.

use anyhow::ensure;
use chat_backend::cache::{Cache, CacheKey};
use chat_backend::metrics::Metrics;
use diesel::sql_types::BigInt;
use diesel::RunQueryDsl;
use e2e_tests::services::memcached_servers;
use e2e_tests::{Api, TestEnv, TestNode, DEADLINE};
use std::time::Duration;
use tokio::time::Instant;

const CHECKED_AHEAD: &str = r#"chat_membership_checks_total{when="ahead"}"#;
const CHECKED_ON_SEND: &str = r#"chat_membership_checks_total{when="send"}"#;

async fn checks(api: &Api) -> anyhow::Result<(f64, f64)> {
    Ok((
        api.metric(CHECKED_AHEAD).await?,
        api.metric(CHECKED_ON_SEND).await?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_membership_ended_behind_the_nodes_backs_stops_sends_within_the_recheck(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("recheck-removed");
    config.membership_recheck_ms = 300;
    let node = TestNode::start(config).await?;
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("removed-by-hand").await?;
    assert_eq!(try_send(&mut ada, room, "before").await?, "");

    // Removed in the database by hand, and from the cache: no node hears of it.
    let user = ada.user_id()?;
    let removed = env
        .db
        .with_conn(move |conn| {
            Ok(
                diesel::sql_query("DELETE FROM memberships WHERE room_id = $1 AND user_id = $2")
                    .bind::<BigInt, _>(room.0)
                    .bind::<BigInt, _>(user.0)
                    .execute(conn)?,
            )
        })
        .await?;
    assert_eq!(removed, 1);
    Cache::new(&memcached_servers(), &env.bus.prefix, 60, Metrics::new())
        .delete(CacheKey::Membership(room, user))
        .await;

    // Sends on the old confirmation may pass until it runs out; then one is refused.
    let deadline = Instant::now() + DEADLINE;
    let mut attempt = 0;
    let refused = loop {
        attempt += 1;
        let code = try_send(&mut ada, room, &format!("after-{attempt}")).await?;
        if !code.is_empty() {
            break code;
        }
        ensure!(
            Instant::now() < deadline,
            "sends still accepted {DEADLINE:?} after the membership ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused, "not_member");
    // The connection has left the room: it is not in it any more.
    assert_eq!(try_send(&mut ada, room, "later").await?, "not_joined");
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_active_senders_membership_is_renewed_ahead_of_its_sends() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("recheck-active");
    config.membership_recheck_ms = 2_000;
    let node = TestNode::start(config).await?;
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("busy").await?;
    let api = ada.api()?.clone();

    // Every 50 ms for at least two and a half intervals: a check on the send itself would
    // come at least twice.
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(5_000) && sent < 200 {
        sent += 1;
        assert_eq!(try_send(&mut ada, room, &format!("m{sent}")).await?, "");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ahead, on_send) = checks(&api).await?;
    assert!(ahead >= 2.0, "renewed ahead {ahead} times in {sent} sends");
    assert_eq!(on_send, 0.0, "checked on the send itself");
    node.stop().await?;
    Ok(())
}

/// Sends a message and returns the error code it is refused with, or "" once it is accepted:
/// a connection the periodic membership check takes out of the room right after may never see
/// its send `stored` (it gets `left` instead).
async fn try_send(
    client: &mut e2e_tests::WsClient,
    room_id: chat_protocol::RoomId,
    id: &str,
) -> anyhow::Result<String> {
    client.send_message(room_id, id, id).await?;
    client
        .recv_until(|frame| match frame {
            chat_protocol::ServerFrame::Stored { client_msg_id, .. }
            | chat_protocol::ServerFrame::Accepted { client_msg_id, .. }
                if client_msg_id.0 == id =>
            {
                Some(String::new())
            }
            chat_protocol::ServerFrame::Error {
                code,
                client_msg_id: Some(refused),
                ..
            } if refused.0 == id => Some(code.as_str().to_owned()),
            _ => None,
        })
        .await
}
