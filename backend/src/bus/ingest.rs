//! One ingest shard as its persister sees it: batches in, deliveries out, acks and dead letters.

use super::{check_confirmation, persistent_json, transient_json, BusError, Names};
use chat_protocol::bus::{Delivery, IngestBatch, IngestMessage};
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};
use std::sync::Arc;
use tokio::sync::Notify;

/// One AMQP message taken from an ingest queue: a node's batch of sends, decoded when possible.
pub struct IngestItem {
    pub tag: u64,
    pub redelivered: bool,
    pub messages: Result<Vec<IngestMessage>, String>,
    pub raw: Vec<u8>,
}

/// The consumer of one ingest queue. RabbitMQ delivers to one consumer per shard at a time
/// (single active consumer), so whoever holds an active `IngestShard` owns its rooms.
pub struct IngestShard {
    pub shard: u16,
    channel: Channel,
    consumer: Consumer,
    names: Names,
    /// Wakes the bus supervisor, which then rebuilds the connection and every consumer.
    lost: Arc<Notify>,
}

impl IngestShard {
    pub(super) fn new(
        shard: u16,
        channel: Channel,
        consumer: Consumer,
        names: Names,
        lost: Arc<Notify>,
    ) -> Self {
        IngestShard {
            shard,
            channel,
            consumer,
            names,
            lost,
        }
    }

    /// Reports that this shard's channel or consumer failed. A shard without a consumer would
    /// silently stop being stored, so the whole connection is rebuilt.
    pub fn report_lost(&self) {
        self.lost.notify_one();
    }

    /// Waits for the next message, then takes every message already waiting, up to `max`.
    /// `None` means the consumer is gone (connection lost or node closing).
    pub async fn next_batch(&mut self, max: usize) -> Option<Vec<IngestItem>> {
        let first = self.consumer.next().await?.ok()?;
        let mut batch = vec![decode(first)];
        while batch.len() < max {
            match self.consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(decode(delivery)),
                _ => break,
            }
        }
        Some(batch)
    }

    /// Publishes deliveries and waits for every confirm.
    pub async fn publish_deliveries(&self, deliveries: &[Delivery]) -> Result<(), BusError> {
        let mut confirms = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let routing_key = match delivery {
                Delivery::Room { room_id, .. } => Names::room_key(*room_id),
                Delivery::Typing { room_id, .. }
                | Delivery::MemberLeft { room_id, .. }
                | Delivery::MessageChanged { room_id, .. } => Names::room_key(*room_id),
                Delivery::ReadMarker { .. }
                | Delivery::Presence { .. }
                | Delivery::PresenceSnapshot { .. }
                | Delivery::PresenceSync { .. } => Names::everyone_key().to_owned(),
                Delivery::Duplicates { receipts } => match receipts.first() {
                    Some(receipt) => Names::node_key(&receipt.origin.node_id),
                    None => continue,
                },
            };
            let payload = serde_json::to_vec(delivery).unwrap_or_default();
            confirms.push(
                self.channel
                    .basic_publish(
                        &self.names.delivery_exchange(),
                        &routing_key,
                        BasicPublishOptions::default(),
                        &payload,
                        transient_json(),
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            check_confirmation(confirm.await?)?;
        }
        Ok(())
    }

    /// Publishes a payload that can never be stored to the dead-letter queue, with the reason
    /// in its `x-chat-reason` header. The ingest message itself is acknowledged with its batch.
    pub async fn dead_letter(&self, payload: &[u8], reason: &str) -> Result<(), BusError> {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-chat-reason".into(),
            AMQPValue::LongString(reason.to_owned().into()),
        );
        headers.insert(
            "x-chat-shard".into(),
            AMQPValue::LongString(self.names.ingest_queue(self.shard).into()),
        );
        let confirm = self
            .channel
            .basic_publish(
                &self.names.dead_letter_exchange(),
                "",
                BasicPublishOptions::default(),
                payload,
                persistent_json().with_headers(headers),
            )
            .await?;
        check_confirmation(confirm.await?)
    }

    /// Acknowledges every message up to and including `tag`.
    pub async fn ack_through(&self, tag: u64) -> Result<(), BusError> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
        Ok(())
    }
}

fn decode(delivery: lapin::message::Delivery) -> IngestItem {
    let messages = IngestBatch::decode(&delivery.data)
        .map(|batch| batch.messages)
        .map_err(|e| format!("undecodable ingest payload: {e}"));
    IngestItem {
        tag: delivery.delivery_tag,
        redelivered: delivery.redelivered,
        messages,
        raw: delivery.data,
    }
}
