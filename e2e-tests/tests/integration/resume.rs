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
    let total = chat_backend::session::MAX_RESUME_MESSAGES as usize + 5;
    let mut sent = Observed::default();
    for batch in 0..total.div_ceil(500) {
        let ids: Vec<String> = (batch * 500..((batch + 1) * 500).min(total))
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
