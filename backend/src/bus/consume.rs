//! The consumers: the node queue's (with its room bindings), one per ingest shard (handed to the
//! persisters), and the dead-letter queue's length.

use super::connection::BusEvents;
use super::ingest::{IngestShard, ShardSlot};
use super::{wire, Bus, BusError, Names};
use chat_protocol::bus::Delivery;
use chat_protocol::RoomId;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel, Connection};
use prometheus::IntGauge;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Unacknowledged ingest messages a persister may hold: the upper bound of a batch.
const INGEST_PREFETCH: u16 = 2_000;
/// Most deliveries of the node queue RabbitMQ sends before the node acknowledges them.
const NODE_PREFETCH: u16 = 512;
/// Under load, the node queue's deliveries are acknowledged at least this often.
const NODE_ACK_EVERY: u16 = NODE_PREFETCH / 4;
/// How often a node reads the dead-letter queue's length into its metrics.
pub const DEAD_LETTER_CHECK_EVERY: Duration = Duration::from_secs(2);

impl Bus {
    /// Binds the node queue to a room. Remembered, so a reconnect binds it again.
    pub async fn bind_room(&self, room: RoomId) -> Result<(), BusError> {
        crate::locks::lock(&self.inner.rooms).insert(room);
        // Taken after the room is recorded: either this binds on the current connection, or the
        // next reconnect sees the room and binds it.
        let session = self.session().ok_or(BusError::NotConnected)?;
        bind(&session.control, &self.inner.names, room).await?;
        Ok(())
    }

    /// Unbinds the node queue from a room.
    pub async fn unbind_room(&self, room: RoomId) -> Result<(), BusError> {
        crate::locks::lock(&self.inner.rooms).remove(&room);
        let session = self.session().ok_or(BusError::NotConnected)?;
        let names = &self.inner.names;
        session
            .control
            .queue_unbind(
                names.node_queue().into(),
                names.delivery_exchange().into(),
                Names::room_key(room).into(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Binds the node queue to every room it must be bound to: after a reconnect.
    pub(super) async fn bind_rooms(&self, control: &Channel) -> Result<(), BusError> {
        let rooms: Vec<RoomId> = crate::locks::lock(&self.inner.rooms)
            .iter()
            .copied()
            .collect();
        for room in rooms {
            bind(control, &self.inner.names, room).await?;
        }
        Ok(())
    }

    /// Starts the node queue's consumer on a channel of its own.
    pub(super) async fn start_node_consumer(
        &self,
        connection: &Connection,
        events: &Arc<dyn BusEvents>,
        lost: &Arc<Notify>,
    ) -> Result<(), BusError> {
        let names = &self.inner.names;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(NODE_PREFETCH, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                names.node_queue().into(),
                format!("node-{}", names.node_id).into(),
                BasicConsumeOptions {
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        tokio::spawn(consume_node_queue(consumer, events.clone(), lost.clone()));
        Ok(())
    }

    /// Subscribes to every ingest queue, in shard order: see [`Bus::consume_shard`].
    pub(super) async fn start_shard_consumers(
        &self,
        connection: &Connection,
        events: &Arc<dyn BusEvents>,
        lost: &Arc<Notify>,
    ) -> Result<Vec<ShardSlot>, BusError> {
        let shards = self.inner.names.shards;
        let mut slots = Vec::with_capacity(usize::from(shards));
        for shard in 0..shards {
            slots.push(self.consume_shard(connection, shard, events, lost).await?);
        }
        Ok(slots)
    }

    /// Subscribes to one ingest queue and hands the consumer to the persister. RabbitMQ makes
    /// the first subscriber of a queue its active consumer; the others wait in line.
    pub(super) async fn consume_shard(
        &self,
        connection: &Connection,
        shard: u16,
        events: &Arc<dyn BusEvents>,
        lost: &Arc<Notify>,
    ) -> Result<ShardSlot, BusError> {
        let names = &self.inner.names;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(INGEST_PREFETCH, BasicQosOptions::default())
            .await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                names.ingest_queue(shard).into(),
                format!("persister-{}-{shard}", names.node_id).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (shard, slot) = IngestShard::new(shard, channel, consumer, names.clone(), lost.clone());
        events.shard_started(shard);
        Ok(slot)
    }
}

async fn bind(channel: &Channel, names: &Names, room: RoomId) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            names.node_queue().into(),
            names.delivery_exchange().into(),
            Names::room_key(room).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Hands the node queue's deliveries to the node, in order, and acknowledges them once taken.
/// A node that cannot keep up stops taking them: RabbitMQ then stops at the prefetch limit and
/// keeps the rest in the (length-limited) queue, so the node's memory stays bounded. Acks go
/// out for everything taken so far (`multiple`) whenever no delivery is waiting, or every
/// `NODE_ACK_EVERY` deliveries under load.
async fn consume_node_queue(
    mut consumer: lapin::Consumer,
    events: Arc<dyn BusEvents>,
    lost: Arc<Notify>,
) {
    let mut unacked: Option<Acker> = None;
    let mut taken_since_ack = 0u16;
    loop {
        let next = match consumer.next().now_or_never() {
            Some(next) => next,
            None => {
                if let Some(acker) = unacked.take() {
                    if let Err(error) = ack_taken(&acker).await {
                        tracing::warn!(%error, "node queue ack failed");
                        break;
                    }
                    taken_since_ack = 0;
                }
                consumer.next().await
            }
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                tracing::warn!(%error, "node queue consumer failed");
                break;
            }
            None => break,
        };
        let acker = delivery.acker;
        if has_content_type(&delivery.properties, wire::ROOMS_CONTENT_TYPE) {
            match wire::decode_rooms(delivery.data) {
                Ok(rooms) => events.deliver_rooms(rooms).await,
                Err(error) => tracing::error!(%error, "undecodable delivery dropped"),
            }
        } else {
            match Delivery::decode(&delivery.data) {
                Ok(payload) => events.deliver(payload).await,
                Err(error) => tracing::error!(%error, "undecodable delivery dropped"),
            }
        }
        unacked = Some(acker);
        taken_since_ack += 1;
        if taken_since_ack >= NODE_ACK_EVERY {
            if let Some(acker) = unacked.take() {
                if let Err(error) = ack_taken(&acker).await {
                    tracing::warn!(%error, "node queue ack failed");
                    break;
                }
            }
            taken_since_ack = 0;
        }
    }
    lost.notify_one();
}

async fn ack_taken(acker: &Acker) -> Result<(), lapin::Error> {
    acker
        .ack(BasicAckOptions { multiple: true })
        .await
        .map(drop)
}

/// Whether a received message says it has `content_type`.
pub(super) fn has_content_type(properties: &BasicProperties, content_type: &str) -> bool {
    properties.content_type().as_ref().map(|kind| kind.as_str()) == Some(content_type)
}

/// Reads the dead-letter queue's length into `gauge` every [`DEAD_LETTER_CHECK_EVERY`] until the
/// session ends. Dead letters come from the persisters and from RabbitMQ itself (a quorum
/// queue's delivery limit), so the queue, not a counter of the node's, is where all of them show.
/// `channel` is its own: a failed passive declaration would close it.
pub(super) async fn watch_dead_letters(
    channel: Channel,
    queue: String,
    gauge: IntGauge,
    ended: CancellationToken,
) {
    loop {
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(declared) => gauge.set(i64::from(declared.message_count())),
            Err(error) => {
                tracing::warn!(%error, "cannot read the dead-letter queue's length");
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(DEAD_LETTER_CHECK_EVERY) => {}
            _ = ended.cancelled() => return,
        }
    }
}
