//! A large batch is stored in lanes of disjoint rooms at the same time, and every room still
//! gets one order: its messages numbered 1, 2, 3… in the order they were sent, a resend stored
//! once, a message for a room that does not exist dead-lettered, and members see it all in order.

use chat_protocol::bus::IngestBatch;
use chat_protocol::RoomId;
use e2e_tests::checks::{assert_gapless, by_room, stored_messages, Observed};
use e2e_tests::ingest_message as send;
use e2e_tests::services::{amqp_url, TEST_SHARDS};
use e2e_tests::{eventually, TestEnv};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::BTreeMap;

/// Messages per room: three rooms make a batch well above the size stored in lanes.
const PER_ROOM: usize = 40;

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_stored_in_lanes_and_every_room_keeps_its_order() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("lanes").await?;
    let mut ada = node.user("ada").await?;
    let ada_id = ada.user_id()?;

    // Rooms of one ingest shard, so that one AMQP message can carry all of them.
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

    // Interleaved as many senders would be, with a resend in the middle and a message for a
    // room that does not exist.
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
    let payload = serde_json::to_vec(&IngestBatch { messages })?;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_publish(
            &format!("{}.ingest", env.bus.prefix),
            &format!("shard.{shard}"),
            BasicPublishOptions::default(),
            &payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;

    for room in rooms {
        let stored = eventually("the room's messages stored", || async {
            let stored = stored_messages(&env.db, *room).await.ok()?;
            (stored.len() >= PER_ROOM).then_some(stored)
        })
        .await?;
        assert_gapless(&format!("room {room}"), &stored);
        let ids: Vec<String> = stored.into_iter().map(|(_, id)| id).collect();
        assert_eq!(
            Some(&ids),
            expected.get(room),
            "room {room}: stored in sending order"
        );
    }

    // The member sees every room in the same order as it is stored.
    let mut observed = Observed::default();
    ada.observe_until(&mut observed, |seen| {
        rooms
            .iter()
            .all(|room| seen.room_ids(*room).len() >= PER_ROOM)
    })
    .await?;
    let seen = by_room(&observed);
    for room in rooms {
        let seen = seen.get(room).cloned().unwrap_or_default();
        assert_gapless(&format!("room {room} as seen"), &seen);
        let ids: Vec<String> = seen.into_iter().map(|(_, id)| id).collect();
        assert_eq!(Some(&ids), expected.get(room), "room {room} as seen");
    }

    // One batch, stored in two parts; the message for no room went to the dead letters.
    let metrics = reqwest::get(format!("{}/metrics", node.http_url()))
        .await?
        .text()
        .await?;
    assert_eq!(
        metric(&metrics, "chat_persist_batch_size_count"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "chat_messages_dead_lettered_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "chat_messages_persisted_total"),
        Some((3 * PER_ROOM) as f64)
    );
    let _ = connection.close(200, "done").await;
    node.stop().await?;
    Ok(())
}
