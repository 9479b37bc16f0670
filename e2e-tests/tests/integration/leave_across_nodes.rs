//! Leaving a room over REST ends its deliveries at once on every node where the user has an
//! open connection, and the sends of those connections.

use chat_protocol::{ErrorCode, ServerFrame};
use e2e_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_who_leaves_stops_receiving_on_every_node() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("leave-a").await?;
    let node_b = env.start_node("leave-b").await?;
    let mut ada = node_a.user("ada").await?;
    let (room, _) = ada.join("leaving").await?;
    let mut bob = node_b.user("bob").await?;
    bob.join("leaving").await?;
    bob.send_message(room, "bob-before-leave", "hello").await?;
    bob.next_message(room).await?;

    // Bob leaves through node A's API while his socket stays open on node B.
    let token = bob.api()?.token().unwrap_or_default().to_owned();
    let leaving = e2e_tests::api::Api::new(&node_a.http_url())
        .with_token(&token)
        .post_empty(&format!("/api/rooms/{room}/leave"))
        .await?;
    assert_eq!(leaving.status, 204, "{}", leaving.body);
    let left = bob
        .recv_until(|frame| match frame {
            ServerFrame::Left { room_id } => Some(*room_id),
            ServerFrame::Message(message) => panic!("delivered after leaving: {message:?}"),
            _ => None,
        })
        .await?;
    assert_eq!(left, room);
    // His open socket sent in the room a moment ago; it may not any more.
    bob.send_message(room, "bob-after-leave", "still here?")
        .await?;
    let refused = bob
        .recv_until(|frame| match frame {
            ServerFrame::Error { code, .. } => Some(*code),
            ServerFrame::Accepted { .. } => panic!("a send accepted after leaving"),
            _ => None,
        })
        .await?;
    assert_eq!(refused, ErrorCode::NotMember);

    ada.send_message(room, "after-leave", "bob must not see this")
        .await?;
    ada.next_message(room).await?;
    // A marker in a room bob is still in proves his socket is live and got nothing else.
    let (other, _) = ada.join("still-shared").await?;
    bob.join("still-shared").await?;
    ada.send_message(other, "marker", "bob sees this").await?;
    let next = bob
        .recv_until(|frame| match frame {
            ServerFrame::Message(message) => Some(message.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(next.client_msg_id.0, "marker");
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}
