//! A large batch is stored in lanes of disjoint rooms at the same time, and every room still
//! gets one order: its messages numbered 1, 2, 3… in the order they were sent, a resend stored
//! once, a message for a room that does not exist dead-lettered, and members see it all in order,
//! also when both lanes wait out a PostgreSQL outage.

use chat_backend::config::Secret;
use chat_protocol::bus::IngestBatch;
use chat_protocol::RoomId;
use e2e_tests::checks::{assert_gapless, by_room, stored_messages, Observed};
use e2e_tests::ingest_message as send;
use e2e_tests::proxy::TcpProxy;
use e2e_tests::services::{amqp_url, TEST_SHARDS};
use e2e_tests::{eventually, TestEnv, TestNode, WsClient};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::BTreeMap;

/// Messages per room: three rooms make a batch above the size stored in lanes (256) and
/// within the largest batch (500).
const PER_ROOM: usize = 100;

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics(node: &TestNode) -> anyhow::Result<String> {
    Ok(reqwest::get(node.metrics_url()).await?.text().await?)
}

/// Three rooms of one ingest shard that ada is in, and one ingest payload for them: sends
/// interleaved as many senders would make them, with a resend in the middle and a message for
/// a room that does not exist. Returns the shard, the rooms' expected ids in order, the payload.
async fn one_shard_batch(
    ada: &mut WsClient,
) -> anyhow::Result<(i64, BTreeMap<RoomId, Vec<String>>, Vec<u8>)> {
    let ada_id = ada.user_id()?;
    let mut by_shard: BTreeMap<i64, Vec<RoomId>> = BTreeMap::new();
    for index in 0..(3 * TEST_SHARDS as usize) {
        let (room, _) = ada.join(&format!("lanes-{index}")).await?;
        by_shard
            .entry(room.0.rem_euclid(i64::from(TEST_SHARDS)))
            .or_default()
            .push(room);
    }
    let (shard, rooms) = by_shard
        .into_iter()
        .max_by_key(|(_, rooms)| rooms.len())
        .ok_or_else(|| anyhow::anyhow!("no rooms"))?;
    anyhow::ensure!(rooms.len() >= 3, "rooms per shard: {rooms:?}");
    let rooms = &rooms[..3];

    let mut messages = Vec::new();
    let mut expected: BTreeMap<RoomId, Vec<String>> = BTreeMap::new();
    for n in 0..PER_ROOM {
        for room in rooms {
            let id = format!("{}-{n}", room.0);
            messages.push(send(*room, ada_id, &id));
            expected.entry(*room).or_default().push(id);
        }
        if n == PER_ROOM / 2 {
            messages.push(send(rooms[0], ada_id, &format!("{}-0", rooms[0].0)));
            messages.push(send(RoomId(987_654_321), ada_id, "nowhere"));
        }
    }
    Ok((
        shard,
        expected,
        serde_json::to_vec(&IngestBatch { messages })?,
    ))
}

/// Publishes the payload into the shard's ingest queue as one AMQP message.
async fn publish(env: &TestEnv, shard: i64, payload: &[u8]) -> anyhow::Result<()> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_publish(
            format!("{}.ingest", env.bus.prefix).into(),
            format!("shard.{shard}").into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Every room is stored 1, 2, 3… in sending order, ada sees each the same way, and the node
/// stored the batch as two transactions, dead-lettered the message for no room.
async fn assert_stored_in_lanes(
    env: &TestEnv,
    node: &TestNode,
    ada: &mut WsClient,
    expected: &BTreeMap<RoomId, Vec<String>>,
) -> anyhow::Result<()> {
    for (room, ids) in expected {
        let stored = eventually("the room's messages stored", || async {
            let stored = stored_messages(&env.db, *room).await.ok()?;
            (stored.len() >= PER_ROOM).then_some(stored)
        })
        .await?;
        assert_gapless(&format!("room {room}"), &stored);
        let stored: Vec<String> = stored.into_iter().map(|(_, id)| id).collect();
        assert_eq!(&stored, ids, "room {room}: stored in sending order");
    }

    let mut observed = Observed::default();
    ada.observe_until(&mut observed, |seen| {
        expected
            .keys()
            .all(|room| seen.room_ids(*room).len() >= PER_ROOM)
    })
    .await?;
    let seen = by_room(&observed);
    for (room, ids) in expected {
        let seen = seen.get(room).cloned().unwrap_or_default();
        assert_gapless(&format!("room {room} as seen"), &seen);
        let seen: Vec<String> = seen.into_iter().map(|(_, id)| id).collect();
        assert_eq!(&seen, ids, "room {room} as seen");
    }

    let metrics = metrics(node).await?;
    assert_eq!(
        metric(&metrics, "chat_persist_batch_size_count"),
        Some(2.0),
        "one batch, two transactions: {metrics}"
    );
    assert_eq!(
        metric(&metrics, "chat_messages_dead_lettered_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "chat_messages_persisted_total"),
        Some((3 * PER_ROOM) as f64)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_stored_in_lanes_and_every_room_keeps_its_order() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("lanes").await?;
    let mut ada = node.user("ada").await?;
    let (shard, expected, payload) = one_shard_batch(&mut ada).await?;
    publish(&env, shard, &payload).await?;
    assert_stored_in_lanes(&env, &node, &mut ada, &expected).await?;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_lanes_wait_out_a_postgres_outage_and_keep_the_order() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let proxy = TcpProxy::start("127.0.0.1:5432").await?;
    let mut config = env.config("lanes-outage");
    config.database_url = Secret(env.db.url_through(proxy.addr));
    let node = TestNode::start(config).await?;
    let mut ada = node.user("ada").await?;
    let (shard, expected, payload) = one_shard_batch(&mut ada).await?;

    proxy.cut();
    publish(&env, shard, &payload).await?;
    // Both lanes fail and retry with backoff; nothing of the batch is stored meanwhile.
    eventually("both lanes retrying", || async {
        let text = metrics(&node).await.ok()?;
        (metric(&text, "chat_store_retries_total")? >= 2.0).then_some(())
    })
    .await?;
    for room in expected.keys() {
        assert!(stored_messages(&env.db, *room).await?.is_empty());
    }

    proxy.restore();
    assert_stored_in_lanes(&env, &node, &mut ada, &expected).await?;
    node.stop().await?;
    Ok(())
}
