//! One ingest shard as its persister sees it: batches in, deliveries out, acks and dead letters.

use super::consume::has_content_type;
use super::publish::{batch_payload, check_confirmation, persistent_json, transient_json};
use super::{wire, BusError, Names};
use chat_protocol::bus::{Delivery, IngestBatch, IngestMessage};
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer, PublisherConfirm};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// One AMQP message taken from an ingest queue: a node's batch of sends, decoded when possible.
pub struct IngestItem {
    pub tag: u64,
    pub redelivered: bool,
    pub messages: Result<Vec<IngestMessage>, String>,
    pub raw: Vec<u8>,
    /// `raw` is in the binary layout ([`wire::INGEST_CONTENT_TYPE`]) rather than JSON.
    pub binary: bool,
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
    /// Set whenever a batch is taken: the balancer reads it to learn which shards this node
    /// is the active consumer of.
    took: Arc<AtomicBool>,
    /// Cancelled by the balancer when this node should hand the shard to another one.
    release: CancellationToken,
    /// Dropped with the shard: tells the balancer that everything taken is acknowledged.
    _finished: oneshot::Sender<()>,
}

/// The bus's side of a shard's consumer: what the balancer needs to see it working and to
/// hand it over.
pub(super) struct ShardSlot {
    pub(super) shard: u16,
    pub(super) channel: Channel,
    pub(super) took: Arc<AtomicBool>,
    pub(super) release: CancellationToken,
    pub(super) finished: oneshot::Receiver<()>,
}

impl IngestShard {
    pub(super) fn new(
        shard: u16,
        channel: Channel,
        consumer: Consumer,
        names: Names,
        lost: Arc<Notify>,
    ) -> (Self, ShardSlot) {
        let took = Arc::new(AtomicBool::new(false));
        let release = CancellationToken::new();
        let (finished_tx, finished) = oneshot::channel();
        let slot = ShardSlot {
            shard,
            channel: channel.clone(),
            took: took.clone(),
            release: release.clone(),
            finished,
        };
        let shard = IngestShard {
            shard,
            channel,
            consumer,
            names,
            lost,
            took,
            release,
            _finished: finished_tx,
        };
        (shard, slot)
    }

    /// Cancelled when the balancer asks this node to hand the shard over: the persister then
    /// takes nothing more, finishes what it took, and drops the shard. What the consumer holds
    /// but was not taken goes back to the queue, in order, for the next consumer.
    pub fn release(&self) -> CancellationToken {
        self.release.clone()
    }

    /// Reports that this shard's channel or consumer failed. A shard without a consumer would
    /// silently stop being stored, so the whole connection is rebuilt.
    pub fn report_lost(&self) {
        self.lost.notify_one();
    }

    /// The shard's outgoing side (deliveries, acks, dead letters), which can work on one batch
    /// while the consumer takes the next.
    pub fn publisher(&self) -> ShardPublisher {
        ShardPublisher {
            shard: self.shard,
            channel: self.channel.clone(),
            names: self.names.clone(),
            lost: self.lost.clone(),
        }
    }

    /// Waits for the next message, then takes every message already waiting, up to `max`.
    /// `None` means the consumer is gone (connection lost or node closing).
    pub async fn next_batch(&mut self, max: usize) -> Option<Vec<IngestItem>> {
        let first = self.consumer.next().await?.ok()?;
        self.took.store(true, Ordering::Relaxed);
        let mut batch = vec![decode(first)];
        while batch.len() < max {
            match self.consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(decode(delivery)),
                _ => break,
            }
        }
        Some(batch)
    }
}

/// The outgoing side of one ingest shard's consumer: deliveries, dead letters and acks, on the
/// consumer's channel (acks must travel on the channel the messages came from).
#[derive(Clone)]
pub struct ShardPublisher {
    pub shard: u16,
    channel: Channel,
    names: Names,
    lost: Arc<Notify>,
}

impl ShardPublisher {
    /// Reports that the shard's channel failed: see [`IngestShard::report_lost`].
    pub fn report_lost(&self) {
        self.lost.notify_one();
    }

    /// Publishes deliveries; their confirms come back to be awaited separately.
    pub async fn publish_deliveries(
        &self,
        deliveries: &[Delivery],
    ) -> Result<DeliveryConfirms, BusError> {
        let mut confirms = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let mut keys = routing_keys(delivery).into_iter();
            let Some(routing_key) = keys.next() else {
                continue;
            };
            let binary = match delivery {
                Delivery::Rooms { rooms } if self.names.binary => Some(wire::encode_rooms(rooms)),
                _ => None,
            };
            let (payload, mut properties) =
                batch_payload(binary, wire::ROOMS_CONTENT_TYPE, delivery, transient_json())?;
            let copies: Vec<AMQPValue> =
                keys.map(|key| AMQPValue::LongString(key.into())).collect();
            if !copies.is_empty() {
                // Sender-selected distribution: RabbitMQ routes the message by these keys too,
                // puts one copy in each queue bound to any of them, and strips the header.
                let mut headers = FieldTable::default();
                headers.insert("BCC".into(), AMQPValue::FieldArray(copies.into()));
                properties = properties.with_headers(headers);
            }
            confirms.push(
                self.channel
                    .basic_publish(
                        self.names.delivery_exchange().into(),
                        routing_key.into(),
                        BasicPublishOptions::default(),
                        &payload,
                        properties,
                    )
                    .await?,
            );
        }
        Ok(DeliveryConfirms(confirms))
    }

    /// Publishes a payload that can never be stored to the dead-letter queue, with the reason
    /// in its `x-chat-reason` header; `binary` for a payload in the ingest batch's binary layout,
    /// otherwise it is JSON. The ingest message itself is acknowledged with its batch.
    pub async fn dead_letter(
        &self,
        payload: &[u8],
        binary: bool,
        reason: &str,
    ) -> Result<(), BusError> {
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
                self.names.dead_letter_exchange().into(),
                "".into(),
                BasicPublishOptions::default(),
                payload,
                if binary {
                    persistent_json().with_content_type(wire::INGEST_CONTENT_TYPE.into())
                } else {
                    persistent_json()
                }
                .with_headers(headers),
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

/// RabbitMQ's confirms of published deliveries, awaited apart from the publishing so that
/// the next batch's deliveries need not wait for them.
pub struct DeliveryConfirms(Vec<PublisherConfirm>);

impl DeliveryConfirms {
    /// Resolves when RabbitMQ has taken every delivery.
    pub async fn confirmed(self) -> Result<(), BusError> {
        for confirm in self.0 {
            check_confirmation(confirm.await?)?;
        }
        Ok(())
    }
}

/// The keys a delivery is routed by; empty when it goes nowhere.
fn routing_keys(delivery: &Delivery) -> Vec<String> {
    match delivery {
        Delivery::Rooms { rooms } => rooms
            .iter()
            .map(|room| Names::room_key(room.room_id))
            .collect(),
        Delivery::Typing { room_id, .. }
        | Delivery::MemberLeft { room_id, .. }
        | Delivery::MessageChanged { room_id, .. } => vec![Names::room_key(*room_id)],
        Delivery::ReadMarker { .. }
        | Delivery::Presence { .. }
        | Delivery::PresenceSnapshot { .. }
        | Delivery::PresenceSync { .. }
        | Delivery::RoomsChanged { .. }
        | Delivery::SessionsEnded { .. } => vec![Names::everyone_key().to_owned()],
        Delivery::Duplicates { receipts } => receipts
            .first()
            .map(|receipt| Names::node_key(&receipt.origin.node_id))
            .into_iter()
            .collect(),
    }
}

fn decode(delivery: lapin::message::Delivery) -> IngestItem {
    let binary = has_content_type(&delivery.properties, wire::INGEST_CONTENT_TYPE);
    let messages = if binary {
        wire::decode_ingest(&delivery.data).map_err(|e| format!("undecodable ingest payload: {e}"))
    } else {
        IngestBatch::decode(&delivery.data)
            .map(|batch| batch.messages)
            .map_err(|e| format!("undecodable ingest payload: {e}"))
    };
    IngestItem {
        tag: delivery.delivery_tag,
        redelivered: delivery.redelivered,
        messages,
        raw: delivery.data,
        binary,
    }
}
