//! Typing indicators: ephemeral, across nodes, throttled on the sender, never stored.

use chat_protocol::{ClientFrame, ErrorCode, RoomId, ServerFrame};
use e2e_tests::checks::stored_messages;
use e2e_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typing_reaches_other_nodes_once_per_interval_and_is_not_stored() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("typing-a").await?;
    let node_b = env.start_node("typing-b").await?;
    let mut ada = node_a.user("ada").await?;
    let (room, _) = ada.join("typing").await?;
    let mut bob = node_b.user("bob").await?;
    bob.join("typing").await?;

    // A burst of keystrokes: one indicator goes out, the rest fall in the throttle interval.
    for _ in 0..5 {
        ada.send(&ClientFrame::Typing { room_id: room }).await?;
    }
    ada.send_message(room, "after-typing", "done typing")
        .await?;

    let mut typing = Vec::new();
    let message = bob
        .recv_until(|frame| match frame {
            ServerFrame::Typing {
                name,
                expires_in_ms,
                ..
            } => {
                typing.push((name.clone(), *expires_in_ms));
                None
            }
            ServerFrame::Message(message) => Some(message.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(typing, vec![("ada".to_string(), 5_000)]);
    assert_eq!(message.seq.0, 1, "typing took no sequence number");
    assert_eq!(stored_messages(&env.db, room).await?.len(), 1);

    // The typist does not see its own indicator; a room not joined is refused.
    let own = ada
        .recv_until(|frame| match frame {
            ServerFrame::Typing { .. } => Some(true),
            ServerFrame::Message(_) => Some(false),
            _ => None,
        })
        .await?;
    assert!(!own, "the sender got its own typing indicator");
    ada.send(&ClientFrame::Typing {
        room_id: RoomId(room.0 + 1000),
    })
    .await?;
    let code = ada
        .recv_until(|frame| match frame {
            ServerFrame::Error { code, .. } => Some(*code),
            _ => None,
        })
        .await?;
    assert_eq!(code, ErrorCode::NotJoined);
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}
