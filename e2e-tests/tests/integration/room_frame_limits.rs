//! Rate limits on every write a client makes over WebSocket besides sends (edits and deletes,
//! typing, presence, read markers, joins) and the cap on rooms one connection follows: a flood
//! gets `rate_limited` with `retry_after_ms` beyond the budget and changes nothing else.

use chat_backend::Config;
use chat_protocol::{ClientFrame, PresenceStatus, RoomId, Seq, ServerFrame};
use e2e_tests::{TestEnv, TestNode, WsClient};
use std::collections::BTreeMap;
use tokio::time::Instant;

/// A frame the server answers with `not_joined` and counts against no budget: sent after a
/// flood, its answer says every frame before it was handled.
fn sentinel() -> ClientFrame {
    ClientFrame::Leave { room_id: RoomId(0) }
}

/// Sends `frames`, then the sentinel, and counts what came back before the sentinel's answer:
/// frame types, and error codes as `error:<code>`. Every `rate_limited` must say when to retry.
async fn flood(
    client: &mut WsClient,
    frames: impl IntoIterator<Item = ClientFrame>,
) -> anyhow::Result<(BTreeMap<String, usize>, f64)> {
    let started = Instant::now();
    for frame in frames {
        client.send(&frame).await?;
    }
    client.send(&sentinel()).await?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    client
        .recv_until(|frame| {
            let kind = match frame {
                ServerFrame::Error {
                    code,
                    retry_after_ms,
                    ..
                } => {
                    if code.as_str() == "not_joined" {
                        return Some(());
                    }
                    if code.as_str() == "rate_limited" {
                        assert!(retry_after_ms.unwrap_or(0) > 0, "no retry_after_ms");
                    }
                    format!("error:{code}")
                }
                // What others do, and the user's own presence, are not answers.
                ServerFrame::Presence { .. }
                | ServerFrame::Typing { .. }
                | ServerFrame::Message(_)
                | ServerFrame::Accepted { .. }
                | ServerFrame::Stored { .. }
                | ServerFrame::RoomActivity { .. } => return None,
                other => serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_owned))
                    .unwrap_or_default(),
            };
            *seen.entry(kind).or_default() += 1;
            None
        })
        .await?;
    Ok((seen, started.elapsed().as_secs_f64()))
}

/// Makes one more edit once the budget allows it and counts, into `seen`, the flood's
/// `message_edited` broadcasts that arrive before that edit's own.
async fn settle_edits(
    client: &mut WsClient,
    room: RoomId,
    seen: &mut BTreeMap<String, usize>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + e2e_tests::DEADLINE;
    while Instant::now() < deadline {
        client
            .send(&ClientFrame::Edit {
                room_id: room,
                seq: Seq(1),
                body: "settled".into(),
            })
            .await?;
        let answer = client
            .recv_until(|frame| match frame {
                ServerFrame::MessageEdited { body, .. } if body == "settled" => Some(None),
                ServerFrame::MessageEdited { .. } => {
                    *seen.entry("message_edited".into()).or_default() += 1;
                    None
                }
                ServerFrame::Error {
                    retry_after_ms: Some(wait),
                    ..
                } => Some(Some(*wait)),
                _ => None,
            })
            .await?;
        match answer {
            None => return Ok(()),
            // The server says when the budget has room again.
            Some(wait) => tokio::time::sleep(std::time::Duration::from_millis(wait)).await,
        }
    }
    anyhow::bail!("the settling edit was never applied")
}

fn count(seen: &BTreeMap<String, usize>, kind: &str) -> usize {
    seen.get(kind).copied().unwrap_or(0)
}

/// Asserts that a flood of `sent` let through the burst and what the rate refilled meanwhile,
/// and answered every other frame `rate_limited`.
fn assert_budget(
    what: &str,
    seen: &BTreeMap<String, usize>,
    applied: &str,
    sent: usize,
    burst: usize,
    elapsed: f64,
) {
    let passed = count(seen, applied);
    let limited = count(seen, "error:rate_limited");
    let most = burst + elapsed.ceil() as usize + 1;
    assert!(
        (burst..=most).contains(&passed),
        "{what}: {passed} passed, expected {burst}..={most} ({seen:?})"
    );
    assert_eq!(
        passed + limited,
        sent,
        "{what}: every frame answered once ({seen:?})"
    );
}

async fn node_with(
    env: &TestEnv,
    name: &str,
    set: impl FnOnce(&mut Config),
) -> anyhow::Result<TestNode> {
    let mut config = env.config(name);
    // A flood is sent whole before its answers are read: they wait in the outbox meanwhile.
    config.ws_outbox_bytes = 1024 * 1024;
    set(&mut config);
    TestNode::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edit_flood_applies_and_broadcasts_only_the_budget() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = node_with(&env, "edit-flood-a", |config| {
        config.room_frames.change_rate_per_user = 1;
        config.room_frames.change_burst_per_user = 10;
    })
    .await?;
    let node_b = env.start_node("edit-flood-b").await?;
    let mut ada = node_a.user("ada").await?;
    let (room, _) = ada.join("edited").await?;
    let mut bob = node_b.user("bob").await?;
    bob.join("edited").await?;
    ada.send_message(room, "a1", "original").await?;
    ada.next_message(room).await?;
    bob.next_message(room).await?;

    let edits = (0..300).map(|n| ClientFrame::Edit {
        room_id: room,
        seq: Seq(1),
        body: format!("edit {n}"),
    });
    let (mut seen, elapsed) = flood(&mut ada, edits).await?;
    // An applied edit is answered by its broadcast, which comes back through RabbitMQ and can
    // trail the sentinel's direct answer; an edit made after the flood, on the same channel,
    // comes back after all of them.
    settle_edits(&mut ada, room, &mut seen).await?;
    assert_budget("edits", &seen, "message_edited", 300, 10, elapsed);

    // Bob, on the other node, saw exactly the applied edits and then the settling one, the last
    // of them last.
    let applied = count(&seen, "message_edited") + 1;
    let mut bodies = Vec::new();
    while bodies.len() < applied {
        bodies.push(
            bob.recv_until(|frame| match frame {
                ServerFrame::MessageEdited { body, .. } => Some(body.clone()),
                _ => None,
            })
            .await?,
        );
    }
    let history = ada
        .api()?
        .get(&format!("/api/rooms/{room}/messages"))
        .await?;
    assert_eq!(bodies.last().map(String::as_str), Some("settled"));
    assert_eq!(
        history.body["messages"][0]["body"].as_str(),
        bodies.last().map(String::as_str)
    );
    // Sends draw from their own budget.
    ada.send_message(room, "a2", "still sending").await?;
    assert_eq!(ada.next_message(room).await?.body, "still sending");
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_presence_flood_changes_presence_only_within_the_budget() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = node_with(&env, "presence-flood", |config| {
        config.room_frames.presence_rate_per_user = 1;
        config.room_frames.presence_burst_per_user = 10;
    })
    .await?;
    let mut ada = node.user("ada").await?;
    ada.join("lobby").await?;
    let api = ada.api()?.clone();
    let published_before = api
        .metric(r#"chat_rate_limited_total{limit="presence_per_user"}"#)
        .await?;
    // Alternating states: without a limit, each one is a change every node is told of.
    let changes = (0..2_000).map(|n| ClientFrame::Presence {
        status: if n % 2 == 0 {
            PresenceStatus::Away
        } else {
            PresenceStatus::Online
        },
    });
    let (seen, _) = flood(&mut ada, changes).await?;
    let limited = count(&seen, "error:rate_limited");
    assert!(
        limited >= 2_000 - 20,
        "only {limited} of 2,000 presence changes limited"
    );
    assert_eq!(seen.len(), 1, "nothing but rate_limited answered: {seen:?}");
    let counted = api
        .metric(r#"chat_rate_limited_total{limit="presence_per_user"}"#)
        .await?;
    assert_eq!(counted - published_before, limited as f64);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typing_read_marker_and_join_floods_get_rate_limited() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = node_with(&env, "frame-floods", |config| {
        let limits = &mut config.room_frames;
        limits.typing_rate_per_user = 1;
        limits.typing_burst_per_user = 3;
        limits.read_marker_rate_per_user = 1;
        limits.read_marker_burst_per_user = 5;
        limits.join_rate_per_user = 1;
        limits.join_burst_per_user = 10;
    })
    .await?;
    let mut ada = node.user("ada").await?;
    let mut rooms = Vec::new();
    for n in 0..6 {
        rooms.push(ada.join(&format!("room-{n}")).await?.0);
    }

    // Typing in six rooms at once: one indicator per room passes the per-room throttle, and
    // the user's budget lets three through.
    let typing = rooms
        .iter()
        .map(|room| ClientFrame::Typing { room_id: *room });
    let (seen, _) = flood(&mut ada, typing).await?;
    let limited = count(&seen, "error:rate_limited");
    assert!((2..=3).contains(&limited), "typing: {seen:?}");

    let markers = (0..50).map(|_| ClientFrame::MarkRead {
        room_id: rooms[0],
        seq: Seq(0),
    });
    let (seen, elapsed) = flood(&mut ada, markers).await?;
    assert_budget("read markers", &seen, "read_marker", 50, 5, elapsed);

    // Six joins were spent above; a flood of joins (each may bind a RabbitMQ key) gets the rest.
    let joins = (0..100).map(|_| ClientFrame::Join {
        room_id: rooms[0],
        after: None,
    });
    let (seen, elapsed) = flood(&mut ada, joins).await?;
    let joined = count(&seen, "joined");
    assert!(
        joined <= 4 + elapsed.ceil() as usize + 1,
        "joins: {seen:?} in {elapsed} s"
    );
    assert_eq!(joined + count(&seen, "error:rate_limited"), 100, "{seen:?}");
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_follows_at_most_the_configured_number_of_rooms() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = node_with(&env, "room-cap", |config| {
        config.room_frames.max_rooms_per_connection = 3;
    })
    .await?;
    let mut ada = node.user("ada").await?;
    let mut rooms = Vec::new();
    for n in 0..3 {
        rooms.push(ada.join(&format!("room-{n}")).await?.0);
    }
    let fourth = ada.api()?.public_room("room-3").await?;
    ada.api()?
        .post_empty(&format!("/api/rooms/{fourth}/join"))
        .await?;
    let again = [rooms[0], fourth].map(|room_id| ClientFrame::Join {
        room_id,
        after: None,
    });
    let (seen, _) = flood(&mut ada, again).await?;
    assert_eq!(count(&seen, "joined"), 1, "{seen:?}");
    assert_eq!(count(&seen, "error:too_many_rooms"), 1, "{seen:?}");
    // Leaving one makes room for another.
    ada.send(&ClientFrame::Leave { room_id: rooms[1] }).await?;
    ada.subscribe(fourth).await?;
    node.stop().await?;
    Ok(())
}
