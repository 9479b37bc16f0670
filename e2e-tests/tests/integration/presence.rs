//! Presence across nodes: several tabs count as one, away when every tab is away, offline when
//! the last closes, and offline within the TTL when the user's node dies.

use chat_protocol::api::MemberList;
use chat_protocol::{ClientFrame, PresenceStatus, RoomId, ServerFrame, UserId};
use e2e_tests::api::Api;
use e2e_tests::process::ProcessNode;
use e2e_tests::{TestEnv, WsClient};
use std::net::SocketAddr;
use std::time::Instant;

/// A member of `room` connected to the node at `addr` (signed in and in the room first, so
/// their coming online is news to the room).
async fn member_at(addr: SocketAddr, name: &str, room: RoomId) -> anyhow::Result<WsClient> {
    let api = Api::new(&format!("http://{addr}")).sign_in(name).await?;
    let joined = api.post_empty(&format!("/api/rooms/{room}/join")).await?;
    anyhow::ensure!(joined.status == 200, "{} {}", joined.status, joined.body);
    WsClient::connect_as(&format!("ws://{addr}/ws"), api).await
}

/// The next presence change of `user` that `client` sees.
async fn next_presence(client: &mut WsClient, user: UserId) -> anyhow::Result<PresenceStatus> {
    client
        .recv_until(|frame| match frame {
            ServerFrame::Presence { user_id, status } if *user_id == user => Some(*status),
            _ => None,
        })
        .await
}

async fn presence_in_members(
    api: &Api,
    room: RoomId,
    user: UserId,
) -> anyhow::Result<PresenceStatus> {
    let members: MemberList = api
        .get(&format!("/api/rooms/{room}/members"))
        .await?
        .into()?;
    members
        .members
        .iter()
        .find(|m| m.user_id == user)
        .map(|m| m.presence)
        .ok_or_else(|| anyhow::anyhow!("user {user} is not listed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tabs_on_several_nodes_count_as_one() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("presence-a").await?;
    let node_b = env.start_node("presence-b").await?;
    let mut ada = node_a.user("ada").await?;
    let (room, _) = ada.join("lobby").await?;

    // Bob's first tab, on node B: ada (on A) sees him come online.
    let mut tab_1 = member_at(node_b.addr, "bob", room).await?;
    let bob = tab_1.user_id()?;
    assert_eq!(next_presence(&mut ada, bob).await?, PresenceStatus::Online);
    assert_eq!(
        presence_in_members(ada.api()?, room, bob).await?,
        PresenceStatus::Online
    );

    // A second tab on node A. One tab away: still online. Both away: away.
    let mut tab_2 = WsClient::connect_as(&node_a.ws_url(), tab_1.api()?.clone()).await?;
    tab_1
        .send(&ClientFrame::Presence {
            status: PresenceStatus::Away,
        })
        .await?;
    tab_2
        .send(&ClientFrame::Presence {
            status: PresenceStatus::Away,
        })
        .await?;
    assert_eq!(next_presence(&mut ada, bob).await?, PresenceStatus::Away);
    // Back on one tab: online; that tab closes, the other is still away.
    tab_2
        .send(&ClientFrame::Presence {
            status: PresenceStatus::Online,
        })
        .await?;
    assert_eq!(next_presence(&mut ada, bob).await?, PresenceStatus::Online);
    drop(tab_2);
    assert_eq!(next_presence(&mut ada, bob).await?, PresenceStatus::Away);
    // The last tab closes: offline, and the member list agrees.
    drop(tab_1);
    assert_eq!(next_presence(&mut ada, bob).await?, PresenceStatus::Offline);
    assert_eq!(
        presence_in_members(ada.api()?, room, bob).await?,
        PresenceStatus::Offline
    );
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_takes_its_users_offline_within_the_ttl() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let survivor = env.start_node("presence-survivor").await?;
    let mut ada = survivor.user("ada").await?;
    let (room, _) = ada.join("vigil").await?;
    let config = env.config("presence-victim");
    let ttl_ms = config.presence_ttl_ms;
    let mut victim = ProcessNode::start(&config).await?;

    let mut bob = member_at(victim.addr, "bob", room).await?;
    let bob_id = bob.user_id()?;
    bob.subscribe(room).await?;
    assert_eq!(
        next_presence(&mut ada, bob_id).await?,
        PresenceStatus::Online
    );

    // No goodbye from a killed node: only its missing snapshots tell.
    let killed = Instant::now();
    victim.kill()?;
    assert_eq!(
        next_presence(&mut ada, bob_id).await?,
        PresenceStatus::Offline
    );
    let took = killed.elapsed();
    eprintln!("offline {took:?} after the kill (TTL {ttl_ms} ms)");
    // The bound is the configured TTL plus one sweep; the deadline of the wait above is far
    // longer, so say which it was.
    assert!(
        took.as_millis() < u128::from(ttl_ms) + 5_000,
        "offline only after {took:?}, TTL {ttl_ms} ms"
    );
    drop(bob);
    survivor.stop().await?;
    Ok(())
}
