//! The names and shapes of every exchange and queue, declared idempotently at start-up and after
//! every reconnect.

use chat_protocol::RoomId;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// Most bytes a node queue holds before RabbitMQ drops its oldest deliveries.
pub const NODE_QUEUE_MAX_BYTES: i64 = 64 * 1024 * 1024;
/// How often a quorum ingest queue delivers a message before dead-lettering it, by default.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;
/// Most messages the dead-letter queue keeps by default; beyond, the oldest are dropped.
pub const DEFAULT_DEAD_LETTER_MAX_LENGTH: u32 = 100_000;

/// Every name the pipeline uses, derived from the deployment's prefix and the node id.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
    pub node_id: String,
    pub shards: u16,
    /// Durable queues are quorum queues (replicated) rather than classic ones.
    pub quorum: bool,
    /// Ingest batches and stored batches' deliveries go out in their binary layouts
    /// ([`super::wire`]) rather than JSON. Nodes read both either way.
    pub binary: bool,
    /// Quorum ingest queues only: deliveries of one message (returned by a consumer that died or
    /// rejected it) after which RabbitMQ dead-letters it instead, so a batch that kills its
    /// persister cannot loop forever. 0: no limit declared (left to a policy).
    pub delivery_limit: u32,
    /// Most messages the dead-letter queue keeps; past it RabbitMQ drops the oldest.
    pub dead_letter_max_length: u32,
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

    /// Every node queue is bound to this key: user-scoped events (presence, read markers).
    pub fn everyone_key() -> &'static str {
        "everyone"
    }
}

/// An exchange of the shared topology.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExchangeSpec {
    pub name: String,
    /// `direct` or `fanout`.
    pub kind: &'static str,
}

/// A durable queue of the shared topology, with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BindingSpec {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
}

/// Everything every node of a deployment shares: declared by each node at start-up, and
/// mirrored for deployers in `rabbitmq/definitions.json` (a test keeps the two in step).
#[derive(Debug, Clone, PartialEq)]
pub struct SharedTopology {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<BindingSpec>,
}

impl SharedTopology {
    pub fn of(names: &Names) -> SharedTopology {
        let exchange = |name: String, kind| ExchangeSpec { name, kind };
        let queue_type = |mut arguments: serde_json::Map<String, serde_json::Value>| {
            if names.quorum {
                arguments.insert("x-queue-type".into(), "quorum".into());
            }
            arguments
        };
        let mut dead_letter_arguments = serde_json::Map::new();
        dead_letter_arguments.insert(
            "x-max-length".into(),
            i64::from(names.dead_letter_max_length).into(),
        );
        dead_letter_arguments.insert("x-overflow".into(), "drop-head".into());
        let mut queues = vec![QueueSpec {
            name: names.dead_letter_queue(),
            arguments: queue_type(dead_letter_arguments),
        }];
        let mut bindings = vec![BindingSpec {
            exchange: names.dead_letter_exchange(),
            queue: names.dead_letter_queue(),
            routing_key: String::new(),
        }];
        for shard in 0..names.shards {
            let mut arguments = serde_json::Map::new();
            arguments.insert("x-single-active-consumer".into(), true.into());
            arguments.insert(
                "x-dead-letter-exchange".into(),
                names.dead_letter_exchange().into(),
            );
            if names.quorum && names.delivery_limit > 0 {
                arguments.insert(
                    "x-delivery-limit".into(),
                    i64::from(names.delivery_limit).into(),
                );
            }
            queues.push(QueueSpec {
                name: names.ingest_queue(shard),
                arguments: queue_type(arguments),
            });
            bindings.push(BindingSpec {
                exchange: names.ingest_exchange(),
                queue: names.ingest_queue(shard),
                routing_key: Names::shard_key(shard),
            });
        }
        SharedTopology {
            exchanges: vec![
                exchange(names.ingest_exchange(), "direct"),
                exchange(names.delivery_exchange(), "direct"),
                exchange(names.dead_letter_exchange(), "fanout"),
            ],
            queues,
            bindings,
        }
    }
}

/// Declares the shared topology: exchanges, ingest shards and the dead-letter queue. Declaring
/// is idempotent; a queue that exists with other arguments makes it fail loudly.
pub async fn declare_shared(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    let topology = SharedTopology::of(names);
    for exchange in &topology.exchanges {
        let kind = match exchange.kind {
            "fanout" => ExchangeKind::Fanout,
            _ => ExchangeKind::Direct,
        };
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    for queue in &topology.queues {
        channel
            .queue_declare(
                queue.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                field_table(&queue.arguments),
            )
            .await?;
    }
    for binding in &topology.bindings {
        channel
            .queue_bind(
                binding.queue.as_str().into(),
                binding.exchange.as_str().into(),
                binding.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

fn field_table(arguments: &serde_json::Map<String, serde_json::Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        let value = match value {
            serde_json::Value::Bool(flag) => AMQPValue::Boolean(*flag),
            serde_json::Value::Number(n) if n.is_i64() => {
                AMQPValue::LongLongInt(n.as_i64().unwrap_or_default())
            }
            other => AMQPValue::LongString(other.as_str().unwrap_or_default().to_owned().into()),
        };
        table.insert(key.clone().into(), value);
    }
    table
}

/// Declares this node's queue and binds it to the node's own key.
pub async fn declare_node_queue(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    // A node that falls behind lets its queue grow only this far: RabbitMQ then drops the oldest
    // deliveries, whose messages fan-out reads back from PostgreSQL as a gap.
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(NODE_QUEUE_MAX_BYTES),
    );
    channel
        .queue_declare(names.node_queue().into(), options, arguments)
        .await?;
    channel
        .queue_bind(
            names.node_queue().into(),
            names.delivery_exchange().into(),
            Names::node_key(&names.node_id).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            names.node_queue().into(),
            names.delivery_exchange().into(),
            Names::everyone_key().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
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
            quorum: false,
            binary: true,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            dead_letter_max_length: DEFAULT_DEAD_LETTER_MAX_LENGTH,
        };
        assert_eq!(names.shard_of(RoomId(9)), 1);
        assert_eq!(names.shard_of(RoomId(16)), 0);
        assert_eq!(names.ingest_queue(3), "chat.ingest.3");
        assert_eq!(names.node_queue(), "chat.node.n1");
        assert_eq!(Names::room_key(RoomId(42)), "room.42");
    }

    #[test]
    fn quorum_ingest_queues_have_a_delivery_limit_and_dead_letters_a_cap() {
        let names = |quorum, delivery_limit| Names {
            prefix: "chat".into(),
            node_id: "n1".into(),
            shards: 1,
            quorum,
            binary: true,
            delivery_limit,
            dead_letter_max_length: 7,
        };
        let arguments = |names: &Names, queue: &str| {
            let topology = SharedTopology::of(names);
            let spec = topology.queues.into_iter().find(|q| q.name == queue);
            spec.map(|q| serde_json::Value::Object(q.arguments))
                .unwrap_or_default()
        };
        let quorum = names(true, 20);
        assert_eq!(
            arguments(&quorum, "chat.ingest.0")["x-delivery-limit"],
            20,
            "a poison message cannot loop forever"
        );
        assert_eq!(
            arguments(&quorum, "chat.ingest.0")["x-queue-type"],
            "quorum"
        );
        for names in [names(true, 20), names(false, 20)] {
            let dead = arguments(&names, "chat.dead");
            assert_eq!(dead["x-max-length"], 7);
            assert_eq!(dead["x-overflow"], "drop-head");
        }
        let classic = arguments(&names(false, 20), "chat.ingest.0");
        assert_eq!(
            classic.get("x-delivery-limit"),
            None,
            "classic queues have none"
        );
        let unlimited = arguments(&names(true, 0), "chat.ingest.0");
        assert_eq!(
            unlimited.get("x-delivery-limit"),
            None,
            "0 declares no limit"
        );
    }

    /// `rabbitmq/definitions.json` describes the default deployment (prefix `chat`, 2 shards)
    /// exactly as the nodes declare it, and `rabbitmq/definitions.quorum.json` the same with
    /// `CHAT_QUEUE_TYPE=quorum`.
    #[test]
    fn deployer_definitions_match_the_declared_topology() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../rabbitmq");
        definitions_match(&format!("{dir}/definitions.json"), false);
        definitions_match(&format!("{dir}/definitions.quorum.json"), true);
    }

    fn definitions_match(path: &str, quorum: bool) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let definitions: serde_json::Value = match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(e) => panic!("{path} is not JSON: {e}"),
        };
        let names = Names {
            prefix: "chat".into(),
            node_id: "unused".into(),
            shards: 2,
            quorum,
            binary: true,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            dead_letter_max_length: DEFAULT_DEAD_LETTER_MAX_LENGTH,
        };
        let expected = SharedTopology::of(&names);
        let list = |key: &str| definitions[key].as_array().cloned().unwrap_or_default();

        let mut exchanges: Vec<(String, String, bool)> = list("exchanges")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_owned(),
                    e["type"].as_str().unwrap_or_default().to_owned(),
                    e["durable"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        exchanges.sort();
        let mut expected_exchanges: Vec<(String, String, bool)> = expected
            .exchanges
            .iter()
            .map(|e| (e.name.clone(), e.kind.to_owned(), true))
            .collect();
        expected_exchanges.sort();
        assert_eq!(exchanges, expected_exchanges, "{path}");

        let mut queues: Vec<(String, bool, String)> = list("queues")
            .iter()
            .map(|q| {
                (
                    q["name"].as_str().unwrap_or_default().to_owned(),
                    q["durable"].as_bool().unwrap_or(false),
                    q["arguments"].to_string(),
                )
            })
            .collect();
        queues.sort();
        let mut expected_queues: Vec<(String, bool, String)> = expected
            .queues
            .iter()
            .map(|q| {
                (
                    q.name.clone(),
                    true,
                    serde_json::Value::Object(q.arguments.clone()).to_string(),
                )
            })
            .collect();
        expected_queues.sort();
        assert_eq!(queues, expected_queues, "{path}");

        let mut bindings: Vec<(String, String, String)> = list("bindings")
            .iter()
            .map(|b| {
                (
                    b["source"].as_str().unwrap_or_default().to_owned(),
                    b["destination"].as_str().unwrap_or_default().to_owned(),
                    b["routing_key"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        bindings.sort();
        let mut expected_bindings: Vec<(String, String, String)> = expected
            .bindings
            .iter()
            .map(|b| (b.exchange.clone(), b.queue.clone(), b.routing_key.clone()))
            .collect();
        expected_bindings.sort();
        assert_eq!(bindings, expected_bindings, "{path}");
    }
}
