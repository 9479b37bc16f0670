//! Live activity in every room: a connection hears of new messages (`room_activity`) in all of
//! its user's rooms while it has joined only one, across nodes, and in rooms the user enters
//! later (after `rooms_changed`).

use anyhow::ensure;
use chat_protocol::{RoomId, Seq, ServerFrame, UserId};
use e2e_tests::{Api, TestEnv, WsClient};
use serde_json::json;

/// The next `room_activity` as (room, seq, sender), failing on a message of a room that is not
/// `joined` (those must come as activity).
async fn next_activity(
    client: &mut WsClient,
    joined: RoomId,
) -> anyhow::Result<(RoomId, Seq, UserId)> {
    client
        .recv_until(|frame| match frame {
            ServerFrame::RoomActivity {
                room_id,
                seq,
                sender_id,
            } => Some(Ok((*room_id, *seq, *sender_id))),
            ServerFrame::Message(message) if message.room_id != joined => Some(Err(
                anyhow::anyhow!("a message of room {} not joined", message.room_id),
            )),
            _ => None,
        })
        .await?
}

async fn join_over_rest(api: &Api, room: RoomId) -> anyhow::Result<()> {
    let joined = api.post_empty(&format!("/api/rooms/{room}/join")).await?;
    ensure!(joined.status == 200, "join failed: {}", joined.body);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_hears_of_activity_in_every_room_of_its_user_across_nodes(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_1 = env.start_node("activity-1").await?;
    let node_2 = env.start_node("activity-2").await?;
    let mut ada = node_1.user("ada").await?;
    let (x, _) = ada.join("x").await?;
    let (y, _) = ada.join("y").await?;
    let bob_api = node_2.sign_in("bob").await?;
    join_over_rest(&bob_api, x).await?;
    join_over_rest(&bob_api, y).await?;

    // Bob, on the other node, opens room X only.
    let mut bob = WsClient::connect_as(&node_2.ws_url(), bob_api.clone()).await?;
    bob.subscribe(x).await?;
    let ada_id = ada.user_id()?;

    for n in 1..=2 {
        ada.send_message(y, &format!("y{n}"), "in y").await?;
        ada.next_message(y).await?;
        assert_eq!(next_activity(&mut bob, x).await?, (y, Seq(n), ada_id));
    }
    // In the joined room, the message itself and no activity.
    ada.send_message(x, "x1", "in x").await?;
    let got = bob
        .recv_until(|frame| match frame {
            ServerFrame::RoomActivity { room_id, .. } => Some(format!("activity {room_id}")),
            ServerFrame::Message(message) => Some(format!("message {}", message.room_id)),
            _ => None,
        })
        .await?;
    assert_eq!(got, format!("message {x}"));

    // Ada invites bob into a new private room: bob is told his rooms changed, then hears of it.
    let z = ada.api()?.private_room("z").await?;
    let invited = ada
        .api()?
        .post(
            &format!("/api/rooms/{z}/invite"),
            json!({"username": "bob"}),
        )
        .await?;
    ensure!(invited.status == 204, "invite failed: {}", invited.body);
    bob.recv_until(|frame| matches!(frame, ServerFrame::RoomsChanged).then_some(()))
        .await?;
    ada.subscribe(z).await?;
    ada.send_message(z, "z1", "in z").await?;
    assert_eq!(next_activity(&mut bob, x).await?, (z, Seq(1), ada_id));

    // After bob leaves Y, its activity stops: the next one he hears of is Z's.
    let leave = bob_api.post_empty(&format!("/api/rooms/{y}/leave")).await?;
    ensure!(leave.status == 204, "leave failed: {}", leave.body);
    ada.send_message(y, "y3", "bob is gone").await?;
    ada.next_message(y).await?;
    ada.send_message(z, "z2", "still here").await?;
    assert_eq!(next_activity(&mut bob, x).await?, (z, Seq(2), ada_id));
    node_1.stop().await?;
    node_2.stop().await?;
    Ok(())
}
