//! A message that can never be stored goes to the dead-letter queue with its reason; the rest of
//! its batch is stored as usual. A quorum ingest queue dead-letters a message it has delivered
//! too often, and the dead-letter queue keeps only its newest messages.

use chat_backend::bus::{topology, wire, Names};
use chat_backend::config::QueueType;
use chat_protocol::bus::{IngestBatch, IngestMessage, Origin};
use chat_protocol::{ClientMsgId, RoomId, UserId};
use e2e_tests::checks::stored_messages;
use e2e_tests::services::{amqp_url, TEST_SHARDS};
use e2e_tests::{eventually, TestEnv, TestNode};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
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

/// A JSON ingest batch of one message (published without a content type, as other tools may).
fn ingest(room_id: RoomId, sender_id: UserId, id: &str, body: &str) -> (Vec<u8>, BasicProperties) {
    let batch = IngestBatch {
        messages: vec![message(room_id, sender_id, id, body)],
    };
    (
        serde_json::to_vec(&batch).unwrap_or_default(),
        BasicProperties::default().with_delivery_mode(2),
    )
}

/// A single message as a JSON object, a form nodes no longer read (UPGRADING.md).
fn retired_single(
    room_id: RoomId,
    sender_id: UserId,
    id: &str,
    body: &str,
) -> (Vec<u8>, BasicProperties) {
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
        retired_single(room, ada_id, "single", "not a batch"),
        ingest(room, ada_id, "good-2", "also fine"),
    ];
    for (payload, properties) in payloads {
        channel
            .basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
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
    // The client message ids in the JSON dead letters that read as ingest batches.
    let mut batch_letters = Vec::new();
    let deadline = tokio::time::Instant::now() + e2e_tests::DEADLINE;
    while reasons.len() < 5 {
        match channel
            .basic_get(dead_queue.as_str().into(), BasicGetOptions { no_ack: true })
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
                } else if let Ok(batch) = IngestBatch::decode(&message.data) {
                    batch_letters.extend(batch.messages.into_iter().map(|m| m.client_msg_id.0));
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
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert_eq!(binary_letters, 1, "{reasons:?}");
    // The garbage, the cut-short binary batch and the single message (a retired form).
    assert_eq!(
        reasons.iter().filter(|r| r.contains("undecodable")).count(),
        3,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("does not exist")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("0x00")), "{reasons:?}");
    // A message PostgreSQL refused is dead-lettered as an ingest batch of one, a payload the
    // ingest queues take again; the undecodable ones as they came.
    batch_letters.sort();
    assert_eq!(batch_letters, vec!["no-room", "nul-byte"], "{reasons:?}");

    let metrics = reqwest::get(node.metrics_url()).await?.text().await?;
    assert!(
        metrics.contains("chat_messages_dead_lettered_total 5"),
        "{metrics}"
    );
    let _ = connection.close(200, "done".into()).await;
    node.stop().await?;
    Ok(())
}

/// A message a quorum ingest queue has delivered more than its delivery limit (every persister
/// that took it died, or gave it back) is dead-lettered by RabbitMQ instead of looping forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_ingest_queue_dead_letters_a_message_returned_too_often() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let limit = 2;
    let names = Names {
        prefix: env.bus.prefix.clone(),
        node_id: "unused".into(),
        shards: TEST_SHARDS,
        quorum: true,
        binary: true,
        delivery_limit: limit,
        dead_letter_max_length: 100,
    };
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // Declared as a node declares them, with no node to consume: the test is the persister.
    topology::declare_shared(&channel, &names).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .basic_publish(
            names.ingest_exchange().as_str().into(),
            Names::shard_key(0).as_str().into(),
            BasicPublishOptions::default(),
            b"a batch that kills its persister",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;

    let ingest_queue = names.ingest_queue(0);
    let dead_queue = names.dead_letter_queue();
    let mut deliveries = 0;
    let deadline = tokio::time::Instant::now() + e2e_tests::DEADLINE;
    // Quorum queues with a single active consumer serve no `basic.get`: a consumer gives every
    // delivery back, as a persister that dies on it would.
    let mut consumer = channel
        .basic_consume(
            ingest_queue.as_str().into(),
            "poison-returner".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let dead_letter = loop {
        let wait = std::time::Duration::from_millis(200);
        match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Some(delivery)) => {
                deliveries += 1;
                delivery?
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await?;
                continue;
            }
            Ok(None) => anyhow::bail!("the consumer ended"),
            Err(_) => {}
        }
        let dead = channel
            .basic_get(dead_queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await?;
        if let Some(dead) = dead {
            break dead;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not dead-lettered after {deliveries} deliveries"
        );
    };
    assert_eq!(
        deliveries,
        limit + 1,
        "delivered once, then returned {limit} times more"
    );
    assert_eq!(dead_letter.data, b"a batch that kills its persister");
    let reason = dead_letter
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get("x-first-death-reason").cloned());
    match reason {
        Some(AMQPValue::LongString(reason)) => assert_eq!(reason.to_string(), "delivery_limit"),
        other => panic!("dead-lettered for {other:?}"),
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// The dead-letter queue keeps the newest `CHAT_DEAD_LETTER_MAX_LENGTH` messages, whatever the
/// queue type, and the node reports how many it holds.
async fn the_dead_letter_queue_keeps_only_the_newest(queue_type: QueueType) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("dead-cap");
    config.queue_type = queue_type;
    config.dead_letter_max_length = 3;
    let node = TestNode::start(config).await?;

    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let dead = format!("{}.dead", env.bus.prefix);
    for index in 0..5 {
        channel
            .basic_publish(
                dead.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                format!("dead-{index}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
    }
    let dead_queue = dead;
    let api = node.api();
    eventually("the node reports 3 dead letters", || async {
        let count = api.metric("chat_dead_letter_queue_messages").await.ok()?;
        (count == 3.0).then_some(())
    })
    .await?;
    let passive = channel
        .queue_declare(
            dead_queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    assert_eq!(passive.message_count(), 3, "capped at 3");
    let oldest_kept = channel
        .basic_get(dead_queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
        .map(|message| message.data.clone());
    assert_eq!(
        oldest_kept.as_deref(),
        Some(&b"dead-2"[..]),
        "the oldest were dropped"
    );
    let _ = connection.close(200, "done".into()).await;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_dead_letter_queue_keeps_only_the_newest() -> anyhow::Result<()> {
    the_dead_letter_queue_keeps_only_the_newest(QueueType::Classic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_dead_letter_queue_keeps_only_the_newest() -> anyhow::Result<()> {
    the_dead_letter_queue_keeps_only_the_newest(QueueType::Quorum).await
}
