//! Rooms and memberships through Memcached: after the first read, room metadata and membership
//! checks (REST and WebSocket alike) do not reach PostgreSQL, on the node that read them nor on
//! any other; a membership change made on one node is seen by every other node's very next check.

use chat_protocol::{ClientFrame, RoomId, ServerFrame};
use e2e_tests::{Api, TestEnv, WsClient};
use serde_json::json;

const ROOM_LOADS: &str = r#"chat_directory_loads_total{kind="room"}"#;
const MEMBERSHIP_LOADS: &str = r#"chat_directory_loads_total{kind="membership"}"#;

/// PostgreSQL reads of room metadata and of memberships on the node `api` talks to.
async fn loads(api: &Api) -> anyhow::Result<(f64, f64)> {
    Ok((
        api.metric(ROOM_LOADS).await?,
        api.metric(MEMBERSHIP_LOADS).await?,
    ))
}

/// Sends `join` and returns the error code it is refused with, or "" when it is joined.
async fn try_subscribe(client: &mut WsClient, room_id: RoomId) -> anyhow::Result<String> {
    client
        .send(&ClientFrame::Join {
            room_id,
            after: None,
        })
        .await?;
    client
        .recv_until(|frame| match frame {
            ServerFrame::Joined {
                room_id: joined, ..
            } if *joined == room_id => Some(String::new()),
            ServerFrame::Error { code, .. } => Some(code.as_str().to_owned()),
            _ => None,
        })
        .await
}

/// Sends a message and returns the error code it is refused with, or "" once it is stored.
pub(crate) async fn try_send(
    client: &mut WsClient,
    room_id: RoomId,
    id: &str,
) -> anyhow::Result<String> {
    client.send_message(room_id, id, id).await?;
    client
        .recv_until(|frame| match frame {
            ServerFrame::Stored { client_msg_id, .. } if client_msg_id.0 == id => {
                Some(String::new())
            }
            ServerFrame::Error {
                code,
                client_msg_id: Some(refused),
                ..
            } if refused.0 == id => Some(code.as_str().to_owned()),
            _ => None,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rooms_and_memberships_are_read_from_memcached_after_the_first_read() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let node_a = env.start_node("rooms-cache-a").await?;
    let node_b = env.start_node("rooms-cache-b").await?;
    let ada_a = node_a.sign_in("ada").await?;
    let token = ada_a.token().unwrap_or_default().to_owned();
    let ada_b = node_b.api().with_token(&token);
    let created = ada_a
        .post(
            "/api/rooms",
            json!({"name": "cached", "visibility": "public"}),
        )
        .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    let room = created.body["room_id"].as_i64().unwrap_or(-1);
    let path = format!("/api/rooms/{room}");

    let (rooms_before, members_before) = loads(&ada_a).await?;
    let first = ada_a.get(&path).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["role"], "owner");
    assert_eq!(
        loads(&ada_a).await?,
        (rooms_before + 1.0, members_before + 1.0),
        "the first read loads the room and the membership"
    );
    for _ in 0..3 {
        assert_eq!(ada_a.get(&path).await?.body, first.body);
    }
    let members = ada_a.get(&format!("{path}/members")).await?;
    assert_eq!(members.status, 200, "{}", members.body);
    assert_eq!(
        loads(&ada_a).await?,
        (rooms_before + 1.0, members_before + 1.0),
        "later reads must not reach PostgreSQL"
    );

    // The other node finds both in the shared cache: its REST reads, its WebSocket join and the
    // membership check of every send never reach PostgreSQL.
    assert_eq!(ada_b.get(&path).await?.body, first.body);
    let mut ada_ws = WsClient::connect_as(&node_b.ws_url(), ada_b.clone()).await?;
    let room_id = RoomId(room);
    ada_ws.subscribe(room_id).await?;
    for index in 0..3 {
        assert_eq!(
            try_send(&mut ada_ws, room_id, &format!("m{index}")).await?,
            ""
        );
    }
    assert_eq!(loads(&ada_b).await?, (0.0, 0.0));
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_membership_changed_on_one_node_is_seen_by_the_next_check_on_another(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("members-cache-a").await?;
    let node_b = env.start_node("members-cache-b").await?;
    let ada = node_a.sign_in("ada").await?;
    let created = ada
        .post(
            "/api/rooms",
            json!({"name": "moving", "visibility": "public"}),
        )
        .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    let room_id = RoomId(created.body["room_id"].as_i64().unwrap_or(-1));
    let members = format!("/api/rooms/{room_id}/members");
    let bob_a = node_a.sign_in("bob").await?;
    let token = bob_a.token().unwrap_or_default().to_owned();
    let bob_b = node_b.api().with_token(&token);
    let mut bob_ws = WsClient::connect_as(&node_b.ws_url(), bob_b.clone()).await?;

    // Node B caches "bob is not a member" and answers from it.
    bob_b.get(&members).await?.expect_error(403, "not_member")?;
    let (_, membership_loads) = loads(&bob_b).await?;
    bob_b.get(&members).await?.expect_error(403, "not_member")?;
    assert_eq!(try_subscribe(&mut bob_ws, room_id).await?, "not_member");
    assert_eq!(
        loads(&bob_b).await?.1,
        membership_loads,
        "served from the cache"
    );

    // Bob joins through node A: node B lets him in at once, without waiting for the entry to
    // expire, and he can send there.
    let joined = bob_a
        .post_empty(&format!("/api/rooms/{room_id}/join"))
        .await?;
    assert_eq!(joined.status, 200, "{}", joined.body);
    assert_eq!(try_subscribe(&mut bob_ws, room_id).await?, "");
    assert_eq!(try_send(&mut bob_ws, room_id, "hello").await?, "");
    assert_eq!(bob_b.get(&members).await?.status, 200);
    assert_eq!(
        loads(&bob_b).await?.1,
        membership_loads + 1.0,
        "the change made node B read the membership again, once"
    );

    // Bob leaves through node A: node B's very next check refuses him.
    let left = bob_a
        .post_empty(&format!("/api/rooms/{room_id}/leave"))
        .await?;
    assert_eq!(left.status, 204, "{}", left.body);
    bob_b.get(&members).await?.expect_error(403, "not_member")?;
    // His socket on node B ends the room when node B hears of the leave (`left`, one RabbitMQ
    // hop after the answer; a send is trusted on the membership confirmed at its join until
    // then), and from then on its sends are refused.
    let ended = bob_ws
        .recv_until(|frame| match frame {
            ServerFrame::Left { room_id: left } if *left == room_id => Some(()),
            _ => None,
        })
        .await;
    assert!(ended.is_ok(), "node B never ended the room on bob's socket");
    let refused = try_send(&mut bob_ws, room_id, "after-leave").await?;
    assert!(
        refused == "not_member" || refused == "not_joined",
        "a send after leaving got {refused:?}"
    );
    assert_eq!(try_subscribe(&mut bob_ws, room_id).await?, "not_member");

    // Nothing bob sent after leaving was stored.
    let mut ada_ws = WsClient::connect_as(&node_a.ws_url(), ada.clone()).await?;
    ada_ws.subscribe(room_id).await?;
    assert_eq!(try_send(&mut ada_ws, room_id, "marker").await?, "");
    let history = ada.get(&format!("/api/rooms/{room_id}/messages")).await?;
    let ids: Vec<&str> = history.body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|message| message["client_msg_id"].as_str())
        .collect();
    assert_eq!(ids, ["hello", "marker"]);
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}
