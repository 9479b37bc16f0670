//! Editing and deleting stored messages: live on every node, reflected in history, order kept.

use chat_protocol::api::MessagePage;
use chat_protocol::{ClientFrame, ErrorCode, RoomId, Seq, ServerFrame, UserId};
use e2e_tests::{TestEnv, WsClient};

/// The next edit or delete a client sees, as (seq, new body or None for a delete, by).
async fn next_change(
    client: &mut WsClient,
) -> anyhow::Result<(i64, Option<String>, Option<UserId>)> {
    client
        .recv_until(|frame| match frame {
            ServerFrame::MessageEdited { seq, body, .. } => Some((seq.0, Some(body.clone()), None)),
            ServerFrame::MessageDeleted {
                seq, deleted_by, ..
            } => Some((seq.0, None, Some(*deleted_by))),
            _ => None,
        })
        .await
}

async fn next_error(client: &mut WsClient) -> anyhow::Result<ErrorCode> {
    client
        .recv_until(|frame| match frame {
            ServerFrame::Error { code, .. } => Some(*code),
            _ => None,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edits_and_deletes_reach_every_node_and_history() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("edit-a").await?;
    let node_b = env.start_node("edit-b").await?;
    // Ada creates the room, so she owns it; bob is a member.
    let mut ada = node_a.user("ada").await?;
    let (room, _) = ada.join("edits").await?;
    let mut bob = node_b.user("bob").await?;
    bob.join("edits").await?;
    ada.send_message(room, "a1", "helo").await?;
    bob.next_message(room).await?;
    bob.send_message(room, "b1", "bob's first").await?;
    bob.send_message(room, "b2", "bob's second").await?;
    for _ in 0..2 {
        ada.next_message(room).await?;
    }
    let bob_id = bob.user_id()?;
    let ada_id = ada.user_id()?;

    // Ada fixes her typo: both see the edit, live.
    ada.send(&ClientFrame::Edit {
        room_id: room,
        seq: Seq(1),
        body: "hello".into(),
    })
    .await?;
    assert_eq!(
        next_change(&mut bob).await?,
        (1, Some("hello".into()), None)
    );
    assert_eq!(
        next_change(&mut ada).await?,
        (1, Some("hello".into()), None)
    );

    // Bob may neither edit nor delete ada's message; nobody edits what does not exist.
    bob.send(&ClientFrame::Edit {
        room_id: room,
        seq: Seq(1),
        body: "hijacked".into(),
    })
    .await?;
    assert_eq!(next_error(&mut bob).await?, ErrorCode::NotAllowed);
    bob.send(&ClientFrame::Delete {
        room_id: room,
        seq: Seq(1),
    })
    .await?;
    assert_eq!(next_error(&mut bob).await?, ErrorCode::NotAllowed);
    bob.send(&ClientFrame::Edit {
        room_id: room,
        seq: Seq(99),
        body: "nothing there".into(),
    })
    .await?;
    assert_eq!(next_error(&mut bob).await?, ErrorCode::MessageNotFound);

    // Bob deletes his own message; ada, the owner, deletes bob's other one.
    bob.send(&ClientFrame::Delete {
        room_id: room,
        seq: Seq(2),
    })
    .await?;
    assert_eq!(next_change(&mut ada).await?, (2, None, Some(bob_id)));
    ada.send(&ClientFrame::Delete {
        room_id: room,
        seq: Seq(3),
    })
    .await?;
    assert_eq!(next_change(&mut bob).await?, (2, None, Some(bob_id)));
    assert_eq!(next_change(&mut bob).await?, (3, None, Some(ada_id)));
    // Deleted is gone: neither edited nor deleted again.
    bob.send(&ClientFrame::Edit {
        room_id: room,
        seq: Seq(2),
        body: "back".into(),
    })
    .await?;
    assert_eq!(next_error(&mut bob).await?, ErrorCode::MessageNotFound);

    // A stranger, who cannot join the room, is refused without learning anything.
    let mut eve = node_b.user("eve").await?;
    eve.send(&ClientFrame::Delete {
        room_id: room,
        seq: Seq(1),
    })
    .await?;
    assert_eq!(next_error(&mut eve).await?, ErrorCode::NotJoined);
    eve.send(&ClientFrame::Edit {
        room_id: RoomId(room.0 + 1_000),
        seq: Seq(1),
        body: "x".into(),
    })
    .await?;
    assert_eq!(next_error(&mut eve).await?, ErrorCode::NotJoined);

    // History keeps the order and shows the changes; a new message takes the next number.
    ada.send_message(room, "a2", "after the edits").await?;
    assert_eq!(bob.next_message(room).await?.seq, Seq(4));
    let history: MessagePage = ada
        .api()?
        .get(&format!("/api/rooms/{room}/messages"))
        .await?
        .into()?;
    let shown: Vec<_> = history
        .messages
        .iter()
        .map(|m| {
            (
                m.seq.0,
                m.body.as_str(),
                m.edited_at_ms.is_some(),
                m.deleted,
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (1, "hello", true, false),
            (2, "", false, true),
            (3, "", false, true),
            (4, "after the edits", false, false),
        ]
    );
    // A resend of an edited message's id answers with the original sequence number.
    ada.send_message(room, "a1", "helo").await?;
    let seq = ada
        .recv_until(|frame| match frame {
            ServerFrame::Stored {
                seq,
                duplicate: true,
                ..
            } => Some(*seq),
            _ => None,
        })
        .await?;
    assert_eq!(seq, Seq(1));
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}
