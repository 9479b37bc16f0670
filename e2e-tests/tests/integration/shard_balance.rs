//! Persisting spreads over the nodes: the first node to subscribe takes every ingest shard, and
//! hands shards over, one at a time, once another node is there, until each holds its share. A
//! room moved to another persister keeps one order, with nothing lost or stored twice.

use chat_backend::config::QueueType;
use chat_protocol::RoomId;
use e2e_tests::checks::{assert_gapless, by_room, stored_messages, Observed};
use e2e_tests::services::TEST_SHARDS;
use e2e_tests::{TestEnv, TestNode, WsClient, DEADLINE};
use std::collections::HashSet;
use std::time::Duration;

/// A counter from a node's `/metrics`.
async fn counter(node: &TestNode, name: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(node.metrics_url()).await?.text().await?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .ok_or_else(|| anyhow::anyhow!("{name} missing from /metrics"))?;
    Ok(value.trim().parse()?)
}

/// Sends `burst` messages to each room without waiting, then waits until all are stored.
async fn round(
    sender: &mut WsClient,
    seen: &mut Observed,
    rooms: &[RoomId],
    (tag, burst): (&str, usize),
    sent: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    for index in 0..burst {
        for room in rooms {
            let id = format!("{tag}-{index}-{}", room.0);
            sender.send_message(*room, &id, "moving shards").await?;
            ids.push(id);
        }
    }
    sender
        .observe_until(seen, |seen| {
            !seen.refused.is_empty() || ids.iter().all(|id| seen.stored.contains_key(id))
        })
        .await?;
    anyhow::ensure!(seen.refused.is_empty(), "sends refused: {:?}", seen.refused);
    sent.extend(ids);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_node_takes_its_share_of_the_shards_and_rooms_stay_in_order() -> anyhow::Result<()>
{
    shards_move_and_rooms_stay_in_order(QueueType::Classic).await
}

/// Quorum queues report only their active consumer, so the nodes are counted by their presence
/// heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_spread_over_the_nodes_with_quorum_queues_too() -> anyhow::Result<()> {
    shards_move_and_rooms_stay_in_order(QueueType::Quorum).await
}

async fn shards_move_and_rooms_stay_in_order(queue_type: QueueType) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let quick = |id: &str| {
        let mut config = env.config(id);
        config.shard_balance_ms = 100;
        config.queue_type = queue_type;
        config
    };
    let node_a = TestNode::start(quick("a")).await?;
    let mut ada = node_a.user("ada").await?;
    let mut rooms = Vec::new();
    for index in 0..TEST_SHARDS {
        rooms.push(ada.join(&format!("shard-room-{index}")).await?.0);
    }
    let shards: HashSet<i64> = rooms
        .iter()
        .map(|room| room.0 % i64::from(TEST_SHARDS))
        .collect();
    assert_eq!(
        shards.len(),
        usize::from(TEST_SHARDS),
        "a room in every shard"
    );

    // Alone, node a persists every shard, and hands nothing over: there is nobody to take it.
    let mut seen = Observed::default();
    let mut sent = Vec::new();
    for index in 0..3 {
        round(
            &mut ada,
            &mut seen,
            &rooms,
            (&format!("alone-{index}"), 3),
            &mut sent,
        )
        .await?;
    }
    assert_eq!(counter(&node_a, "chat_shard_handovers_total").await?, 0);
    let before = sent.len();

    let node_b = TestNode::start(quick("b")).await?;
    let mut bob = node_b.user("bob").await?;
    for index in 0..TEST_SHARDS {
        bob.join(&format!("shard-room-{index}")).await?;
    }
    // Node a holds all four shards and its share is two: it hands two over, one at a time,
    // while the rooms keep talking (in bursts, so that a shard moves with sends in flight).
    // Until then, and until no shard has moved for five looks (a look of node a that falls
    // between node b's first and last subscription can hand a shard back to node a itself).
    let handovers = |node| counter(node, "chat_shard_handovers_total");
    let persisted = |node| counter(node, "chat_messages_persisted_total");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut last_move = (0, tokio::time::Instant::now());
    let mut index = 0;
    loop {
        let from_a = handovers(&node_a).await?;
        let moved = from_a + handovers(&node_b).await?;
        if moved != last_move.0 {
            last_move = (moved, tokio::time::Instant::now());
        }
        if from_a >= 2
            && persisted(&node_b).await? > 0
            && last_move.1.elapsed() >= Duration::from_millis(500)
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "node a did not hand two shards to node b in time"
        );
        round(
            &mut ada,
            &mut seen,
            &rooms,
            (&format!("moving-{index}"), 25),
            &mut sent,
        )
        .await?;
        index += 1;
    }

    // Balanced: both nodes persist from now on, and nobody hands anything over again.
    let (a_before, b_before) = (persisted(&node_a).await?, persisted(&node_b).await?);
    let moved = handovers(&node_a).await? + handovers(&node_b).await?;
    for index in 0..5 {
        round(
            &mut ada,
            &mut seen,
            &rooms,
            (&format!("shared-{index}"), 3),
            &mut sent,
        )
        .await?;
    }
    assert!(
        persisted(&node_a).await? > a_before && persisted(&node_b).await? > b_before,
        "both nodes persist once the shards are shared"
    );
    assert_eq!(
        handovers(&node_a).await? + handovers(&node_b).await?,
        moved,
        "no shard moves once each node holds its share"
    );

    // Every room: stored 1, 2, 3… with every send once, and bob on node b saw everything sent
    // after he subscribed, in that order.
    let after_b: HashSet<&String> = sent[before..].iter().collect();
    let mut bobs = Observed::default();
    bob.observe_until(&mut bobs, |seen| {
        seen.delivered_ids().len() >= after_b.len()
    })
    .await?;
    let delivered = by_room(&bobs);
    let mut stored_total = 0;
    for room in &rooms {
        let stored = stored_messages(&env.db, *room).await?;
        assert_gapless(&format!("room {}", room.0), &stored);
        stored_total += stored.len();
        let expected: Vec<(i64, String)> = stored
            .iter()
            .filter(|(_, id)| after_b.contains(id))
            .cloned()
            .collect();
        assert_eq!(
            delivered.get(room).cloned().unwrap_or_default(),
            expected,
            "bob's view of room {}",
            room.0
        );
    }
    assert_eq!(stored_total, sent.len(), "every send stored once");

    node_b.stop().await?;
    node_a.stop().await?;
    Ok(())
}
