//! The binary layouts of the two batches on the bus, told apart from JSON by their AMQP content
//! type: a node's ingest batch ([`INGEST_CONTENT_TYPE`], what `IngestBatch` carries in JSON) and
//! a persister batch's delivery ([`ROOMS_CONTENT_TYPE`], what `Delivery::Rooms` carries).
//!
//! Every node fans a stored batch out to its local members, and in JSON each of them parsed the
//! whole batch and serialized every message's `message` frame again. In the rooms layout the
//! persister serializes each frame once, and a node reads the few fields it routes by and takes
//! the frames as they are: slices of the received payload, shared with every connection they go
//! to. The ingest layout spares the node encoding and the persister parsing JSON.
//!
//! All integers are little-endian; a string is a `u32` byte length and its UTF-8 bytes:
//!
//! ```text
//! ingest: version u8 (1) · messages u32
//!   per message: room_id i64 · sender_id i64 · sent_at_ms i64 · origin conn_id u64
//!                · origin node_id string · sender_name string · client_msg_id string · body string
//! rooms:  version u8 (1) · rooms u32
//!   per room:    room_id i64 · messages u32
//!   per message: seq i64 · sent_at_ms i64 · origin conn_id u64 · origin node_id string
//!                · client_msg_id string · frame string (the `message` server frame's JSON)
//! ```
//!
//! In the rooms layout a message's other fields (sender, body, edit state) are only in its frame.

use crate::hub::{DeliveredMessage, Frame};
use bytes::Bytes;
use chat_protocol::bus::{IngestMessage, Origin, RoomMessages};
use chat_protocol::frame::MessageFrame;
use chat_protocol::{ClientMsgId, RoomId, Seq, UserId};

/// The AMQP content type of an ingest batch in its binary layout.
pub const INGEST_CONTENT_TYPE: &str = "application/vnd.chat.ingest.v1";

/// The AMQP content type of a rooms delivery in its binary layout.
pub const ROOMS_CONTENT_TYPE: &str = "application/vnd.chat.rooms.v1";

const VERSION: u8 = 1;

/// The fewest bytes an item takes: bounds what a count may reserve.
const INGEST_MESSAGE_MIN_BYTES: usize = 8 * 4 + 4 * 4;
const ROOM_MIN_BYTES: usize = 8 + 4;
const MESSAGE_MIN_BYTES: usize = 8 * 3 + 4 * 3;
/// What a stored message with its frame usually takes: what a rooms payload reserves for each.
const MESSAGE_BYTES_GUESS: usize = 400;

/// A room's messages in a rooms delivery, in sequence order.
#[derive(Debug, Clone)]
pub struct DeliveredRoom {
    pub room_id: RoomId,
    pub messages: Vec<DeliveredMessage>,
}

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("payload ends inside a field")]
    Truncated,
    #[error("unknown layout version {0}")]
    Version(u8),
    #[error("a string is not UTF-8")]
    NotUtf8,
    #[error("{0} bytes after the last item")]
    Trailing(usize),
    #[error("a length does not fit the layout")]
    TooLong,
}

/// Encodes a node's ingest batch.
pub fn encode_ingest(messages: &[IngestMessage]) -> Result<Vec<u8>, WireError> {
    let size: usize = messages
        .iter()
        .map(|m| {
            INGEST_MESSAGE_MIN_BYTES
                + m.origin.node_id.len()
                + m.sender_name.len()
                + m.client_msg_id.0.len()
                + m.body.len()
        })
        .sum();
    let mut out = Vec::with_capacity(5 + size);
    out.push(VERSION);
    put_len(&mut out, messages.len())?;
    for message in messages {
        out.extend_from_slice(&message.room_id.0.to_le_bytes());
        out.extend_from_slice(&message.sender_id.0.to_le_bytes());
        out.extend_from_slice(&message.sent_at_ms.to_le_bytes());
        out.extend_from_slice(&message.origin.conn_id.to_le_bytes());
        put_str(&mut out, &message.origin.node_id)?;
        put_str(&mut out, &message.sender_name)?;
        put_str(&mut out, &message.client_msg_id.0)?;
        put_str(&mut out, &message.body)?;
    }
    Ok(out)
}

/// Decodes a node's ingest batch.
pub fn decode_ingest(payload: &[u8]) -> Result<Vec<IngestMessage>, WireError> {
    let mut reader = Reader::new(payload)?;
    let count = reader.count(INGEST_MESSAGE_MIN_BYTES)?;
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        let room_id = RoomId(reader.i64()?);
        let sender_id = UserId(reader.i64()?);
        let sent_at_ms = reader.i64()?;
        let conn_id = reader.u64()?;
        let node_id = reader.string()?;
        let sender_name = reader.string()?;
        let client_msg_id = ClientMsgId(reader.string()?);
        let body = reader.string()?;
        messages.push(IngestMessage {
            room_id,
            sender_id,
            sender_name,
            client_msg_id,
            body,
            sent_at_ms,
            origin: Origin { node_id, conn_id },
        });
    }
    reader.finish()?;
    Ok(messages)
}

/// Encodes a batch's rooms, serializing each message's frame straight into the payload.
pub fn encode_rooms(rooms: &[RoomMessages]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(
        5 + rooms
            .iter()
            .map(|room| ROOM_MIN_BYTES + room.messages.len() * MESSAGE_BYTES_GUESS)
            .sum::<usize>(),
    );
    out.push(VERSION);
    put_len(&mut out, rooms.len())?;
    for room in rooms {
        out.extend_from_slice(&room.room_id.0.to_le_bytes());
        put_len(&mut out, room.messages.len())?;
        for stored in &room.messages {
            let message = &stored.message;
            out.extend_from_slice(&message.seq.0.to_le_bytes());
            out.extend_from_slice(&message.sent_at_ms.to_le_bytes());
            out.extend_from_slice(&stored.origin.conn_id.to_le_bytes());
            put_str(&mut out, &stored.origin.node_id)?;
            put_str(&mut out, &message.client_msg_id.0)?;
            // The frame goes in place; its length is filled in once it is written.
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            serde_json::to_writer(&mut out, &MessageFrame::Message(message))
                .map_err(|_| WireError::TooLong)?;
            let len = u32::try_from(out.len() - at - 4).map_err(|_| WireError::TooLong)?;
            out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
    }
    Ok(out)
}

/// Decodes a rooms delivery. The frames share the payload's memory.
pub fn decode_rooms(payload: Vec<u8>) -> Result<Vec<DeliveredRoom>, WireError> {
    let payload = Bytes::from(payload);
    let mut reader = Reader::new(&payload)?;
    let count = reader.count(ROOM_MIN_BYTES)?;
    let mut rooms = Vec::with_capacity(count);
    for _ in 0..count {
        let room_id = RoomId(reader.i64()?);
        let count = reader.count(MESSAGE_MIN_BYTES)?;
        let mut messages = Vec::with_capacity(count);
        for _ in 0..count {
            let seq = Seq(reader.i64()?);
            let sent_at_ms = reader.i64()?;
            let conn_id = reader.u64()?;
            let node_id = reader.string()?;
            let client_msg_id = ClientMsgId(reader.string()?);
            let frame = Frame::try_from(payload.slice_ref(reader.bytes()?))
                .map_err(|_| WireError::NotUtf8)?;
            messages.push(DeliveredMessage {
                seq,
                sent_at_ms,
                client_msg_id,
                origin: Some(Origin { node_id, conn_id }),
                frame,
            });
        }
        rooms.push(DeliveredRoom { room_id, messages });
    }
    reader.finish()?;
    Ok(rooms)
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), WireError> {
    let len = u32::try_from(len).map_err(|_| WireError::TooLong)?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

fn put_str(out: &mut Vec<u8>, text: &str) -> Result<(), WireError> {
    put_len(out, text.len())?;
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader past the payload's version byte, which must be this layout's.
    fn new(bytes: &'a [u8]) -> Result<Reader<'a>, WireError> {
        let mut reader = Reader { bytes, at: 0 };
        match reader.take::<1>()? {
            [VERSION] => Ok(reader),
            [other] => Err(WireError::Version(other)),
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let field = self
            .bytes
            .get(self.at..self.at + N)
            .and_then(|field| <[u8; N]>::try_from(field).ok())
            .ok_or(WireError::Truncated)?;
        self.at += N;
        Ok(field)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn i64(&mut self) -> Result<i64, WireError> {
        Ok(i64::from_le_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    /// A count of items of at least `min_bytes` each; more than the rest could hold is an error.
    fn count(&mut self, min_bytes: usize) -> Result<usize, WireError> {
        let count = usize::try_from(self.u32()?).map_err(|_| WireError::TooLong)?;
        let left = self.bytes.len() - self.at;
        if count > left / min_bytes {
            return Err(WireError::Truncated);
        }
        Ok(count)
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = usize::try_from(self.u32()?).map_err(|_| WireError::TooLong)?;
        let end = self.at.checked_add(len).ok_or(WireError::Truncated)?;
        let field = self.bytes.get(self.at..end).ok_or(WireError::Truncated)?;
        self.at = end;
        Ok(field)
    }

    fn string(&mut self) -> Result<String, WireError> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| WireError::NotUtf8)
    }

    /// The payload must end where its last item does.
    fn finish(self) -> Result<(), WireError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            left => Err(WireError::Trailing(left)),
        }
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::bus::StoredMessage;
    use chat_protocol::{ChatMessage, ServerFrame, UserId};

    fn stored(room: i64, seq: i64, body: &str) -> StoredMessage {
        StoredMessage {
            message: ChatMessage {
                room_id: RoomId(room),
                seq: Seq(seq),
                sender_id: UserId(7),
                sender_name: "ada".into(),
                client_msg_id: ClientMsgId(format!("k-{seq}")),
                body: body.into(),
                sent_at_ms: 1_795_817_270_000 + seq,
                edited_at_ms: None,
                deleted: false,
            },
            origin: Origin {
                node_id: "node-1".into(),
                conn_id: 40 + seq as u64,
            },
        }
    }

    fn batch() -> Vec<RoomMessages> {
        vec![
            RoomMessages {
                room_id: RoomId(1),
                messages: vec![stored(1, 5, "hi"), stored(1, 6, "\"quoted\" ✓\n")],
            },
            RoomMessages {
                room_id: RoomId(4),
                messages: vec![stored(4, 1, "")],
            },
        ]
    }

    #[test]
    fn a_batch_reads_back_with_each_message_frame_as_the_node_would_write_it() {
        let rooms = batch();
        let decoded = encode_rooms(&rooms).and_then(decode_rooms);
        let Ok(decoded) = decoded else {
            panic!("round trip failed: {decoded:?}");
        };
        assert_eq!(decoded.len(), rooms.len());
        for (room, read) in rooms.iter().zip(&decoded) {
            assert_eq!(read.room_id, room.room_id);
            assert_eq!(read.messages.len(), room.messages.len());
            for (stored, read) in room.messages.iter().zip(&read.messages) {
                let expected = DeliveredMessage::new(&stored.message, Some(stored.origin.clone()));
                assert_eq!(read.seq, expected.seq);
                assert_eq!(read.sent_at_ms, expected.sent_at_ms);
                assert_eq!(read.client_msg_id, expected.client_msg_id);
                assert_eq!(read.origin, expected.origin);
                assert_eq!(
                    read.frame.as_str(),
                    ServerFrame::Message(stored.message.clone()).to_json()
                );
            }
        }
    }

    fn ingest_batch() -> Vec<IngestMessage> {
        batch()
            .into_iter()
            .flat_map(|room| room.messages)
            .map(|stored| IngestMessage {
                room_id: stored.message.room_id,
                sender_id: stored.message.sender_id,
                sender_name: stored.message.sender_name,
                client_msg_id: stored.message.client_msg_id,
                body: stored.message.body,
                sent_at_ms: stored.message.sent_at_ms,
                origin: stored.origin,
            })
            .collect()
    }

    #[test]
    fn an_ingest_batch_reads_back_as_it_was() {
        let messages = ingest_batch();
        assert_eq!(
            encode_ingest(&messages).and_then(|payload| decode_ingest(&payload)),
            Ok(messages)
        );
        assert_eq!(
            encode_ingest(&[]).and_then(|payload| decode_ingest(&payload)),
            Ok(Vec::new())
        );
    }

    #[test]
    fn a_cut_short_or_bad_ingest_batch_is_refused() {
        let Ok(payload) = encode_ingest(&ingest_batch()) else {
            panic!("encoding failed");
        };
        for end in 0..payload.len() {
            assert!(
                decode_ingest(&payload[..end]).is_err(),
                "a payload cut at {end} of {} was read",
                payload.len()
            );
        }
        let mut trailing = payload.clone();
        trailing.extend_from_slice(b"xy");
        assert_eq!(decode_ingest(&trailing), Err(WireError::Trailing(2)));
        let mut other_version = payload;
        other_version[0] = 0;
        assert_eq!(decode_ingest(&other_version), Err(WireError::Version(0)));
        // JSON is not this layout.
        assert!(decode_ingest(br#"{"messages":[]}"#).is_err());
    }

    #[test]
    fn an_empty_batch_reads_back_empty() {
        let decoded = encode_rooms(&[]).and_then(decode_rooms);
        assert!(matches!(decoded.as_deref(), Ok([])), "{decoded:?}");
    }

    #[test]
    fn every_cut_short_payload_is_refused_without_panicking() {
        let Ok(payload) = encode_rooms(&batch()) else {
            panic!("encoding failed");
        };
        for end in 0..payload.len() {
            assert!(
                decode_rooms(payload[..end].to_vec()).is_err(),
                "a payload cut at {end} of {} was read",
                payload.len()
            );
        }
    }

    #[test]
    fn bad_payloads_are_refused_with_their_reason() {
        let Ok(payload) = encode_rooms(&batch()) else {
            panic!("encoding failed");
        };
        let mut other_version = payload.clone();
        other_version[0] = 2;
        assert_eq!(
            decode_rooms(other_version).err(),
            Some(WireError::Version(2))
        );

        let mut trailing = payload.clone();
        trailing.push(0);
        assert_eq!(decode_rooms(trailing).err(), Some(WireError::Trailing(1)));

        // A huge room count is refused before anything is reserved for it.
        let mut huge = vec![VERSION];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_rooms(huge).err(), Some(WireError::Truncated));

        // The first message's node id ("node-1") made invalid UTF-8.
        let at = payload
            .windows(6)
            .position(|window| window == b"node-1")
            .unwrap_or(0);
        assert!(at > 0);
        let mut not_utf8 = payload;
        not_utf8[at] = 0xff;
        assert_eq!(decode_rooms(not_utf8).err(), Some(WireError::NotUtf8));
    }
}
