//! AMQP payloads exchanged between chat nodes through RabbitMQ.
//!
//! A node publishes its accepted sends as [`IngestBatch`]es to the ingest exchange; the persister
//! that owns the room's shard stores it and publishes a [`Delivery`] to the delivery exchange,
//! from where every node with members in the room receives it.
//!
//! These are the JSON forms; the two batches also have binary layouts (the backend's
//! `bus::wire`), chosen by `CHAT_BUS_FORMAT`. A form is retired only once no supported release
//! writes it (UPGRADING.md, "Bus formats").

use crate::frame::{ChatMessage, PresenceStatus};
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

/// What a node publishes to an ingest shard: the sends it accepted for that shard while its
/// previous publish was under way, in the order they arrived. One AMQP message, one confirm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestBatch {
    pub messages: Vec<IngestMessage>,
}

impl IngestBatch {
    /// Decodes an ingest payload in JSON. Only a batch is read: a single `IngestMessage` object,
    /// which no node writes, is refused like any other payload that is not a batch.
    pub fn decode(payload: &[u8]) -> Result<IngestBatch, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// A stored message with the connection that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub message: ChatMessage,
    pub origin: Origin,
}

/// A room's new messages within a [`Delivery::Rooms`], in sequence order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMessages {
    pub room_id: RoomId,
    pub messages: Vec<StoredMessage>,
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
    /// New messages of several rooms, each room's in sequence order: one persister batch. Routed
    /// by the key of every room in it (the first as routing key, the others in the `BCC`
    /// header), so a node queue bound to any of them gets one copy and keeps the rooms it has.
    Rooms { rooms: Vec<RoomMessages> },
    /// Answers to resends, routed to the node the resend came through.
    Duplicates { receipts: Vec<DuplicateReceipt> },
    /// A user is no longer a member of a room: every node stops delivering the room to that
    /// user's open connections at once.
    MemberLeft { room_id: RoomId, user_id: UserId },
    /// Someone is typing in a room: ephemeral, published without persistence, never stored.
    Typing {
        room_id: RoomId,
        user_id: UserId,
        name: String,
        origin: Origin,
    },
    /// A stored message was edited (`body` is the new text) or deleted (`body` is `None`).
    /// Routed by the room's key; already in PostgreSQL when published.
    MessageChanged {
        room_id: RoomId,
        seq: Seq,
        body: Option<String>,
        changed_at_ms: i64,
        by: UserId,
    },
    /// A member's read marker moved; every node tells that user's connections. Routed to every
    /// node.
    ReadMarker {
        user_id: UserId,
        room_id: RoomId,
        seq: Seq,
        unread: i64,
        /// The connection that moved it, which has its answer already.
        origin: Origin,
    },
    /// A user's list of rooms changed (created, joined, left, invited, removed): every node
    /// tells that user's open connections `rooms_changed`. Routed to every node.
    RoomsChanged { user_id: UserId },
    /// Sessions of a user ended (logout, password change, or any other revocation): every node
    /// closes their open WebSockets with `CLOSE_SESSION_ENDED` at once. Routed to every node;
    /// each node also re-checks its connections' sessions periodically, in case this is lost.
    SessionsEnded {
        user_id: UserId,
        ended: EndedSessions,
    },
    /// A user's presence on one node changed. Routed to every node; ephemeral.
    Presence {
        node_id: String,
        user_id: UserId,
        status: PresenceStatus,
    },
    /// Every user connected to a node, with their presence there: sent every heartbeat interval
    /// and on request. A node's users go offline elsewhere when its snapshots stop.
    PresenceSnapshot {
        node_id: String,
        users: Vec<(UserId, PresenceStatus)>,
    },
    /// A node (re)joined and asks every node for a snapshot.
    PresenceSync { node_id: String },
}

/// Which of a user's sessions ended, by their token hashes (SHA-256 of the token, in hex: what
/// PostgreSQL keeps, which signs nobody in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedSessions {
    /// These sessions (a logout).
    Only(Vec<String>),
    /// Every session of the user but this one (a password change), or every one (`None`).
    AllBut(Option<String>),
}

impl EndedSessions {
    /// Whether the session with this token hash (hex) is among the ended ones.
    pub fn includes(&self, token_hash: &str) -> bool {
        match self {
            EndedSessions::Only(ended) => ended.iter().any(|hash| hash == token_hash),
            EndedSessions::AllBut(kept) => kept.as_deref() != Some(token_hash),
        }
    }
}

impl Delivery {
    /// Decodes a delivery payload. serde reads an internally tagged enum by first copying the
    /// whole payload into a tree of its own; the common kind, `rooms` (every persister batch),
    /// is read directly instead, and every other kind the general way.
    pub fn decode(payload: &[u8]) -> Result<Delivery, serde_json::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum RoomsKind {
            Rooms,
        }
        #[derive(Deserialize)]
        struct RoomsPayload {
            #[serde(rename = "kind")]
            _kind: RoomsKind,
            rooms: Vec<RoomMessages>,
        }
        match serde_json::from_slice::<RoomsPayload>(payload) {
            Ok(RoomsPayload { rooms, .. }) => Ok(Delivery::Rooms { rooms }),
            Err(_) => serde_json::from_slice(payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientMsgId, RoomId, Seq, UserId};

    #[test]
    fn ended_sessions_name_the_sessions_they_end() {
        let logout = EndedSessions::Only(vec!["aa".into(), "bb".into()]);
        assert!(logout.includes("bb"));
        assert!(!logout.includes("cc"));
        let password_changed = EndedSessions::AllBut(Some("aa".into()));
        assert!(!password_changed.includes("aa"));
        assert!(password_changed.includes("bb"));
        assert!(EndedSessions::AllBut(None).includes("aa"));
        let encoded = serde_json::to_string(&Delivery::SessionsEnded {
            user_id: UserId(7),
            ended: password_changed,
        })
        .unwrap_or_default();
        assert_eq!(
            encoded,
            r#"{"kind":"sessions_ended","user_id":7,"ended":{"all_but":"aa"}}"#
        );
    }

    fn message(id: &str) -> IngestMessage {
        IngestMessage {
            room_id: RoomId(1),
            sender_id: UserId(2),
            sender_name: "ada".into(),
            client_msg_id: ClientMsgId(id.into()),
            body: "hi".into(),
            sent_at_ms: 3,
            origin: Origin {
                node_id: "n".into(),
                conn_id: 4,
            },
        }
    }

    #[test]
    fn ingest_payloads_are_batches_and_nothing_else() {
        let batch = IngestBatch {
            messages: vec![message("a"), message("b")],
        };
        let encoded = serde_json::to_vec(&batch).unwrap_or_default();
        assert_eq!(IngestBatch::decode(&encoded).ok(), Some(batch));
        // The single-message form is retired: no node writes it, so none reads it.
        let single = serde_json::to_vec(&message("c")).unwrap_or_default();
        assert!(IngestBatch::decode(&single).is_err());
        assert!(IngestBatch::decode(b"{}").is_err());
    }

    fn stored(room: i64, seq: i64) -> StoredMessage {
        StoredMessage {
            message: ChatMessage {
                room_id: RoomId(room),
                seq: Seq(seq),
                sender_id: UserId(2),
                sender_name: "ada \"the\" first".into(),
                client_msg_id: ClientMsgId("c-1".into()),
                body: "hé\nllo".into(),
                sent_at_ms: 3,
                edited_at_ms: None,
                deleted: false,
            },
            origin: Origin {
                node_id: "n".into(),
                conn_id: 4,
            },
        }
    }

    /// Every kind decodes to what was encoded, the direct way (`rooms`) and the general way
    /// alike, and both ways agree on what they refuse.
    #[test]
    fn deliveries_decode_to_what_was_encoded() {
        let kinds = vec![
            Delivery::Rooms {
                rooms: vec![
                    RoomMessages {
                        room_id: RoomId(1),
                        messages: vec![stored(1, 7), stored(1, 8)],
                    },
                    RoomMessages {
                        room_id: RoomId(5),
                        messages: vec![stored(5, 1)],
                    },
                ],
            },
            Delivery::Rooms { rooms: Vec::new() },
            Delivery::MemberLeft {
                room_id: RoomId(1),
                user_id: UserId(2),
            },
            Delivery::PresenceSync {
                node_id: "n".into(),
            },
            Delivery::SessionsEnded {
                user_id: UserId(2),
                ended: EndedSessions::Only(vec!["ab01".into()]),
            },
            Delivery::SessionsEnded {
                user_id: UserId(2),
                ended: EndedSessions::AllBut(Some("ab01".into())),
            },
            Delivery::SessionsEnded {
                user_id: UserId(2),
                ended: EndedSessions::AllBut(None),
            },
        ];
        for delivery in kinds {
            let encoded = serde_json::to_vec(&delivery).unwrap_or_default();
            assert_eq!(Delivery::decode(&encoded).ok(), Some(delivery.clone()));
            assert_eq!(
                serde_json::from_slice::<Delivery>(&encoded).ok(),
                Some(delivery)
            );
        }
        // Fields in another order, and fields this version does not know.
        let reordered = br#"{"rooms":[],"extra":1,"kind":"rooms"}"#;
        assert_eq!(
            Delivery::decode(reordered).ok(),
            Some(Delivery::Rooms { rooms: Vec::new() })
        );
        for refused in [
            &br#"{"kind":"rooms"}"#[..],
            // The single-room form is retired: no node writes it, so none reads it.
            br#"{"kind":"room","room_id":1,"messages":[]}"#,
            br#"{"kind":"nope","rooms":[]}"#,
            br#"{"rooms":[]}"#,
            br#"[]"#,
            br#"{"kind":"rooms","rooms":[{"room_id":1}]}"#,
        ] {
            assert!(Delivery::decode(refused).is_err(), "{refused:?}");
            assert!(serde_json::from_slice::<Delivery>(refused).is_err());
        }
    }
}
