//! AMQP payloads exchanged between chat nodes through RabbitMQ.
//!
//! A node publishes one [`IngestMessage`] per accepted send to the ingest exchange; the persister
//! that owns the room's shard stores it and publishes a [`Delivery`] to the delivery exchange,
//! from where every node with members in the room receives it.

use crate::frame::ChatMessage;
use crate::ids::{ClientMsgId, RoomId, Seq, UserId};
use serde::{Deserialize, Serialize};

/// Where a send came from, so the answer can find its way back to the sending connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub node_id: String,
    pub conn_id: u64,
}

/// A message accepted by a node and waiting to be stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestMessage {
    pub room_id: RoomId,
    pub sender_id: UserId,
    pub sender_name: String,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    /// When the node accepted it, in milliseconds since the Unix epoch.
    pub sent_at_ms: i64,
    pub origin: Origin,
}

/// A stored message with the connection that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub message: ChatMessage,
    pub origin: Origin,
}

/// The answer to a send that had already been stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateReceipt {
    pub room_id: RoomId,
    pub client_msg_id: ClientMsgId,
    pub seq: Seq,
    pub origin: Origin,
}

/// What the persister publishes to the delivery exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Delivery {
    /// New messages of one room, in sequence order, routed by the room's key.
    Room {
        room_id: RoomId,
        messages: Vec<StoredMessage>,
    },
    /// Answers to resends, routed to the node the resend came through.
    Duplicates { receipts: Vec<DuplicateReceipt> },
}
