//! A message that can never be stored goes to the dead-letter queue with its reason; the rest of
//! its batch is stored as usual.

use chat_backend::bus::wire;
use chat_protocol::bus::{IngestMessage, Origin};
use chat_protocol::{ClientMsgId, RoomId, UserId};
use e2e_tests::checks::stored_messages;
use e2e_tests::services::{amqp_url, TEST_SHARDS};
use e2e_tests::{eventually, TestEnv};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Connection, ConnectionProperties};

fn message(room_id: RoomId, sender_id: UserId, id: &str, body: &str) -> IngestMessage {
    IngestMessage {
        room_id,
        sender_id,
        sender_name: "ada".into(),
        client_msg_id: ClientMsgId(id.into()),
        body: body.into(),
        sent_at_ms: 0,
        origin: Origin {
            node_id: "elsewhere".into(),
            conn_id: 0,
        },
    }
}

/// A JSON ingest payload (published without a content type, as other tools may).
fn ingest(room_id: RoomId, sender_id: UserId, id: &str, body: &str) -> (Vec<u8>, BasicProperties) {
    (
        serde_json::to_vec(&message(room_id, sender_id, id, body)).unwrap_or_default(),
        BasicProperties::default().with_delivery_mode(2),
    )
}

/// A binary ingest payload, its last `cut` bytes cut off.
fn binary(message: &IngestMessage, cut: usize) -> (Vec<u8>, BasicProperties) {
    let mut payload = wire::encode_ingest(std::slice::from_ref(message)).unwrap_or_default();
    payload.truncate(payload.len().saturating_sub(cut));
    (
        payload,
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(wire::INGEST_CONTENT_TYPE.into()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_their_reason() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("dlq").await?;
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("poison").await?;
    ada.send_message(room, "seed", "first").await?;
    let ada_id = ada.next_message(room).await?.sender_id;

    // Straight into the room's ingest shard, as a faulty or hostile publisher would.
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let exchange = format!("{}.ingest", env.bus.prefix);
    let key = format!("shard.{}", room.0.rem_euclid(i64::from(TEST_SHARDS)));
    let payloads = vec![
        ingest(room, ada_id, "good-1", "fine"),
        (
            b"{ this is not an ingest message".to_vec(),
            BasicProperties::default().with_delivery_mode(2),
        ),
        ingest(RoomId(987_654_321), ada_id, "no-room", "nowhere"),
        ingest(
            room,
            ada_id,
            "nul-byte",
            "PostgreSQL text cannot hold \u{0}",
        ),
        binary(&message(room, ada_id, "good-binary", "binary"), 0),
        binary(&message(room, ada_id, "cut-short", "lost"), 3),
        ingest(room, ada_id, "good-2", "also fine"),
    ];
    for (payload, properties) in payloads {
        channel
            .basic_publish(
                &exchange,
                &key,
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await?
            .await?;
    }

    let stored = eventually("the good messages stored", || async {
        let stored = stored_messages(&env.db, room).await.ok()?;
        (stored.len() >= 4).then_some(stored)
    })
    .await?;
    assert_eq!(
        stored,
        vec![
            (1, "seed".to_string()),
            (2, "good-1".to_string()),
            (3, "good-binary".to_string()),
            (4, "good-2".to_string())
        ]
    );

    let dead_queue = format!("{}.dead", env.bus.prefix);
    let mut reasons = Vec::new();
    let mut binary_letters = 0;
    let deadline = tokio::time::Instant::now() + e2e_tests::DEADLINE;
    while reasons.len() < 4 {
        match channel
            .basic_get(&dead_queue, BasicGetOptions { no_ack: true })
            .await?
        {
            Some(message) => {
                let kind = message
                    .properties
                    .content_type()
                    .as_ref()
                    .map(|k| k.as_str());
                if kind == Some(wire::INGEST_CONTENT_TYPE) {
                    // Dead-lettered as it came, in its own layout.
                    assert_eq!(wire::decode_ingest(&message.data).ok(), None);
                    binary_letters += 1;
                }
                let reason = message
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|headers| headers.inner().get("x-chat-reason").cloned());
                reasons.push(match reason {
                    Some(AMQPValue::LongString(text)) => text.to_string(),
                    other => format!("{other:?}"),
                });
            }
            None if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("only {} dead letters: {reasons:?}", reasons.len())
            }
            None => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert_eq!(binary_letters, 1, "{reasons:?}");
    assert_eq!(
        reasons.iter().filter(|r| r.contains("undecodable")).count(),
        2,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("does not exist")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("0x00")), "{reasons:?}");

    let metrics = reqwest::get(format!("{}/metrics", node.http_url()))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("chat_messages_dead_lettered_total 4"),
        "{metrics}"
    );
    let _ = connection.close(200, "done").await;
    node.stop().await?;
    Ok(())
}
