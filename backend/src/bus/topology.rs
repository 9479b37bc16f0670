//! The names and shapes of every exchange and queue, declared idempotently at start-up and after
//! every reconnect.

use chat_protocol::RoomId;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// Every name the pipeline uses, derived from the deployment's prefix and the node id.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
    pub node_id: String,
    pub shards: u16,
}

impl Names {
    /// Direct exchange nodes publish accepted sends to, routed by shard.
    pub fn ingest_exchange(&self) -> String {
        format!("{}.ingest", self.prefix)
    }

    /// Durable queue of one ingest shard, consumed by a single active persister.
    pub fn ingest_queue(&self, shard: u16) -> String {
        format!("{}.ingest.{shard}", self.prefix)
    }

    /// Direct exchange the persisters publish stored messages to, routed by room and node.
    pub fn delivery_exchange(&self) -> String {
        format!("{}.delivery", self.prefix)
    }

    /// This node's queue: exclusive, so it disappears with the node's connection.
    pub fn node_queue(&self) -> String {
        format!("{}.node.{}", self.prefix, self.node_id)
    }

    /// Fanout exchange and durable queue for messages that can never be stored.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The shard that owns a room. Stable for a given shard count.
    pub fn shard_of(&self, room: RoomId) -> u16 {
        (room.0.rem_euclid(i64::from(self.shards.max(1)))) as u16
    }

    pub fn shard_key(shard: u16) -> String {
        format!("shard.{shard}")
    }

    pub fn room_key(room: RoomId) -> String {
        format!("room.{room}")
    }

    pub fn node_key(node_id: &str) -> String {
        format!("node.{node_id}")
    }
}

/// Declares the shared topology: exchanges, ingest shards and the dead-letter queue.
pub async fn declare_shared(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            &names.ingest_exchange(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            &names.delivery_exchange(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            &names.dead_letter_exchange(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(
            &names.dead_letter_queue(),
            durable_queue,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            &names.dead_letter_queue(),
            &names.dead_letter_exchange(),
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for shard in 0..names.shards {
        let queue = names.ingest_queue(shard);
        channel
            .queue_declare(&queue, durable_queue, ingest_queue_arguments(names))
            .await?;
        channel
            .queue_bind(
                &queue,
                &names.ingest_exchange(),
                &Names::shard_key(shard),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares this node's queue and binds it to the node's own key.
pub async fn declare_node_queue(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(&names.node_queue(), options, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            &names.node_queue(),
            &names.delivery_exchange(),
            &Names::node_key(&names.node_id),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Arguments of every ingest queue. Changing them makes the declaration fail against an existing
/// queue, so they are part of the deployment's contract (see `rabbitmq/definitions.json`).
pub fn ingest_queue_arguments(names: &Names) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(names.dead_letter_exchange().into()),
    );
    arguments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_spread_over_shards_stably() {
        let names = Names {
            prefix: "chat".into(),
            node_id: "n1".into(),
            shards: 8,
        };
        assert_eq!(names.shard_of(RoomId(9)), 1);
        assert_eq!(names.shard_of(RoomId(16)), 0);
        assert_eq!(names.ingest_queue(3), "chat.ingest.3");
        assert_eq!(names.node_queue(), "chat.node.n1");
        assert_eq!(Names::room_key(RoomId(42)), "room.42");
    }
}
