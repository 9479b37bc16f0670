//! Gap-free resume: a client that reconnects (to any node) with its last seen sequence number
//! gets exactly what it missed, then the live stream, with nothing skipped and nothing twice.

use chat_protocol::{RoomId, Seq, ServerFrame};
use e2e_tests::checks::{assert_gapless, stored_messages, Observed};
use e2e_tests::{TestEnv, WsClient};

const STREAM: usize = 300;

/// Sends `count` messages from `sender` while the caller does something else.
fn stream(
    mut sender: WsClient,
    room: RoomId,
    count: usize,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        for index in 0..count {
            sender
                .send_message(room, &format!("s-{index}"), "streamed")
                .await?;
            if index % 20 == 19 {
                // Let deliveries interleave with the resume on the other side.
                tokio::task::yield_now().await;
            }
        }
        let mut observed = Observed::default();
        sender
            .observe_until(&mut observed, |o| {
                o.accepted.len() + o.refused.len() >= count
            })
            .await?;
        anyhow::ensure!(
            observed.refused.is_empty(),
            "refused: {:?}",
            observed.refused
        );
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_racing_a_stream_sees_every_sequence_once_in_order() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("resume-a").await?;
    let node_b = env.start_node("resume-b").await?;
    let node_c = env.start_node("resume-c").await?;

    let mut sender = node_a.user("streamer").await?;
    let (room, _) = sender.join("busy").await?;
    let mut reader = node_b.user("reader").await?;
    reader.join("busy").await?;

    let streaming = stream(sender, room, STREAM);
    // Read a little of the stream, then drop the connection mid-stream.
    let mut seen = Observed::default();
    reader
        .observe_until(&mut seen, |o| o.messages.len() >= 20)
        .await?;
    drop(reader);
    let last_seen = seen.messages.iter().map(|m| m.seq.0).max().unwrap_or(0);

    // Reconnect to another node while the stream goes on, and resume.
    let mut reader = node_c.user("reader").await?;
    let (_, resume) = reader.resume(room, Seq(last_seen)).await?;
    let resume = resume.ok_or_else(|| anyhow::anyhow!("joined without a resume report"))?;
    assert!(resume.complete, "{resume:?}");
    assert_eq!(resume.after, Seq(last_seen));
    reader
        .observe_until(&mut seen, |o| o.messages.len() >= STREAM)
        .await?;
    streaming.await??;

    let stored = stored_messages(&env.db, room).await?;
    assert_eq!(stored.len(), STREAM);
    assert_gapless("store", &stored);
    assert_eq!(
        seen.room_ids(room),
        stored,
        "the reader's view across the reconnect"
    );
    for node in [node_a, node_b, node_c] {
        node.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_too_much_says_so_and_goes_live() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("resume-far").await?;
    let mut sender = node.user("chatty").await?;
    let (room, _) = sender.join("far").await?;
    let total = chat_backend::delivery::MAX_RESUME_MESSAGES as usize + 5;
    let mut sent = Observed::default();
    // In batches whose answers and copies fit the sender's outbox while it is still sending.
    for batch in 0..total.div_ceil(100) {
        let ids: Vec<String> = (batch * 100..((batch + 1) * 100).min(total))
            .map(|i| format!("m-{i}"))
            .collect();
        for id in &ids {
            sender.send_message(room, id, "x").await?;
        }
        sender
            .observe_until(&mut sent, |o| {
                ids.iter().all(|id| o.stored.contains_key(id))
            })
            .await?;
    }

    let mut late = node.user("late").await?;
    late.join("far").await?;
    let (last_seq, resume) = late.resume(room, Seq(0)).await?;
    assert_eq!(last_seq.0, total as i64);
    let resume = resume.ok_or_else(|| anyhow::anyhow!("joined without a resume report"))?;
    assert!(!resume.complete);
    assert_eq!(resume.missed, total as i64);
    // Live messages still arrive, and nothing from before is replayed.
    sender.send_message(room, "after", "live").await?;
    let next = late
        .recv_until(|frame| match frame {
            ServerFrame::Message(message) => Some(message.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(
        (next.seq.0, next.client_msg_id.0.as_str()),
        (total as i64 + 1, "after")
    );
    node.stop().await?;
    Ok(())
}

/// A node whose deliveries lag behind PostgreSQL (its RabbitMQ connection is cut while another
/// node stores messages): a client resuming there reads the missed messages from PostgreSQL,
/// ahead of the node's live stream. When the node catches up, that client must not get them a
/// second time, and the node's other clients must get them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_ahead_of_the_nodes_live_stream_gets_nothing_twice() -> anyhow::Result<()> {
    use chat_backend::config::Secret;
    use e2e_tests::proxy::TcpProxy;

    let env = TestEnv::new().await?;
    // Node A persists (it connects first and stays connected); node B reaches RabbitMQ through
    // a proxy the test cuts.
    let node_a = env.start_node("ahead-a").await?;
    let proxy = TcpProxy::start("127.0.0.1:5672").await?;
    let mut config = env.config("ahead-b");
    config.amqp_url = Secret(format!("amqp://guest:guest@{}/%2f", proxy.addr));
    let node_b = e2e_tests::TestNode::start(config).await?;

    let mut ada = node_a.user("ada").await?;
    let (room, _) = ada.join("ahead").await?;
    let mut bob = node_b.user("bob").await?;
    bob.join("ahead").await?;
    for n in 1..=3 {
        ada.send_message(room, &format!("m{n}"), "before").await?;
    }
    for _ in 0..3 {
        bob.next_message(room).await?;
    }

    // B loses RabbitMQ; A keeps storing.
    proxy.cut();
    for n in 4..=7 {
        ada.send_message(room, &format!("m{n}"), "while b is cut off")
            .await?;
    }
    e2e_tests::eventually("messages 4 to 7 stored", || async {
        let stored = stored_messages(&env.db, room).await.ok()?;
        (stored.len() == 7).then_some(())
    })
    .await?;

    // Carol resumes on B after 3: she gets 4 to 7 from PostgreSQL, which B has not delivered.
    let mut carol = node_b.user("carol").await?;
    carol
        .api()?
        .post_empty(&format!("/api/rooms/{room}/join"))
        .await?;
    let (last_seq, resume) = carol.resume(room, Seq(3)).await?;
    assert_eq!(last_seq, Seq(7));
    assert!(resume.is_some_and(|r| r.complete && r.missed == 4));

    // B comes back and catches up; then one more message.
    proxy.restore();
    let mut bob_seen = Vec::new();
    while bob_seen.len() < 4 {
        bob_seen.push(bob.next_message(room).await?.seq.0);
    }
    assert_eq!(bob_seen, vec![4, 5, 6, 7]);
    ada.send_message(room, "m8", "after").await?;
    assert_eq!(bob.next_message(room).await?.seq, Seq(8));

    let mut carol_seen = Vec::new();
    loop {
        let message = carol.next_message(room).await?;
        carol_seen.push(message.seq.0);
        if message.seq == Seq(8) {
            break;
        }
    }
    assert_eq!(carol_seen, vec![4, 5, 6, 7, 8], "carol saw a message twice");
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}
