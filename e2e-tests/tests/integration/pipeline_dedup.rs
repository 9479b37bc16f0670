//! No duplicates: a resend with the same client message id, even through another node, is
//! stored and delivered once and answered with the original sequence number.

use chat_protocol::ServerFrame;
use e2e_tests::checks::stored_messages;
use e2e_tests::TestEnv;

fn stored_answer(frame: &ServerFrame) -> Option<(i64, bool)> {
    match frame {
        ServerFrame::Stored { seq, duplicate, .. } => Some((seq.0, *duplicate)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resend_through_another_node_is_stored_and_delivered_once() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("dedup-a").await?;
    let node_b = env.start_node("dedup-b").await?;
    let node_c = env.start_node("dedup-c").await?;

    let mut ada_on_a = node_a.user("ada").await?;
    let (room, _) = ada_on_a.join("dedup").await?;
    let mut ada_on_b = node_b.user("ada").await?;
    ada_on_b.join("dedup").await?;
    let mut watcher = node_c.user("watcher").await?;
    watcher.join("dedup").await?;

    ada_on_a.send_message(room, "retry-me", "once").await?;
    assert_eq!(ada_on_a.recv_until(stored_answer).await?, (1, false));
    // The same id again, on the same connection and through another node.
    ada_on_a.send_message(room, "retry-me", "once").await?;
    assert_eq!(ada_on_a.recv_until(stored_answer).await?, (1, true));
    ada_on_b.send_message(room, "retry-me", "once").await?;
    assert_eq!(ada_on_b.recv_until(stored_answer).await?, (1, true));

    // The watcher sees the message once: the next one after it is the marker.
    ada_on_b.send_message(room, "marker", "after").await?;
    let first = watcher.next_message(room).await?;
    let second = watcher.next_message(room).await?;
    assert_eq!(
        (first.client_msg_id.0.as_str(), first.seq.0),
        ("retry-me", 1)
    );
    assert_eq!(
        (second.client_msg_id.0.as_str(), second.seq.0),
        ("marker", 2)
    );
    assert_eq!(
        stored_messages(&env.db, room).await?,
        vec![(1, "retry-me".to_string()), (2, "marker".to_string())]
    );
    for node in [node_a, node_b, node_c] {
        node.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_carry_the_pipeline_too() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("quorum");
    config.queue_type = chat_backend::config::QueueType::Quorum;
    let node = e2e_tests::TestNode::start(config).await?;
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("replicated").await?;
    ada.send_message(room, "q-1", "through a quorum queue")
        .await?;
    assert_eq!(ada.recv_until(stored_answer).await?, (1, false));
    ada.send_message(room, "q-1", "through a quorum queue")
        .await?;
    assert_eq!(ada.recv_until(stored_answer).await?, (1, true));
    assert_eq!(
        stored_messages(&env.db, room).await?,
        vec![(1, "q-1".to_string())]
    );
    node.stop().await?;
    Ok(())
}
