//! The JSON bus payloads: every payload a node or persister receives from RabbitMQ decodes or is
//! refused with serde's error, and every valid one decodes to what was encoded.

use crate::support::{self, json_tokens, mutated, peak_heap, text};
use chat_protocol::bus::{
    Delivery, DuplicateReceipt, IngestBatch, IngestMessage, Origin, RoomMessages, StoredMessage,
};
use chat_protocol::{ChatMessage, ClientMsgId, PresenceStatus, RoomId, Seq, UserId};
use proptest::prelude::*;
use serde_json::error::Category;

/// Most heap a decode may hold per byte of payload (the general way builds a JSON tree first),
/// plus a little for any payload.
const PEAK_BYTES_PER_PAYLOAD_BYTE: u64 = 64;
const PEAK_BYTES_BASE: u64 = 64 * 1024;

fn within_memory_bound(payload: &[u8], peak: u64) -> Result<(), TestCaseError> {
    let bound = PEAK_BYTES_BASE + PEAK_BYTES_PER_PAYLOAD_BYTE * payload.len() as u64;
    prop_assert!(
        peak <= bound,
        "decoding {} bytes held {peak} bytes",
        payload.len()
    );
    Ok(())
}

/// A refusal says what was wrong with the payload; it is never an I/O error.
fn typed(error: &serde_json::Error) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(
            error.classify(),
            Category::Syntax | Category::Data | Category::Eof
        ),
        "{error}"
    );
    Ok(())
}

/// What a node must do with any ingest payload.
fn check_ingest(payload: &[u8]) -> Result<(), TestCaseError> {
    let (result, peak) = peak_heap(|| IngestBatch::decode(payload));
    within_memory_bound(payload, peak)?;
    match result {
        Ok(batch) => {
            let again = serde_json::to_vec(&batch)
                .map_err(|e| TestCaseError::fail(e.to_string()))
                .map(|json| IngestBatch::decode(&json).ok())?;
            prop_assert_eq!(again, Some(batch));
        }
        Err(error) => typed(&error)?,
    }
    Ok(())
}

/// What a node must do with any delivery payload: the direct way of `Delivery::decode` reads
/// what serde's general way reads, as the same value.
fn check_delivery(payload: &[u8]) -> Result<(), TestCaseError> {
    let (result, peak) = peak_heap(|| Delivery::decode(payload));
    within_memory_bound(payload, peak)?;
    let general = serde_json::from_slice::<Delivery>(payload);
    match (&result, &general) {
        (Ok(direct), Ok(general)) => prop_assert_eq!(direct, general),
        (Err(error), Err(_)) => typed(error)?,
        (direct, general) => prop_assert!(
            false,
            "the two ways disagree: direct {direct:?}, general {general:?}"
        ),
    }
    Ok(())
}

fn origin() -> impl Strategy<Value = Origin> {
    (text(12), any::<u64>()).prop_map(|(node_id, conn_id)| Origin { node_id, conn_id })
}

fn ingest_message() -> impl Strategy<Value = IngestMessage> {
    (
        any::<i64>(),
        any::<i64>(),
        text(12),
        text(16),
        text(80),
        any::<i64>(),
        origin(),
    )
        .prop_map(
            |(room, sender, sender_name, client_msg_id, body, sent_at_ms, origin)| IngestMessage {
                room_id: RoomId(room),
                sender_id: UserId(sender),
                sender_name,
                client_msg_id: ClientMsgId(client_msg_id),
                body,
                sent_at_ms,
                origin,
            },
        )
}

fn ingest_batch() -> impl Strategy<Value = IngestBatch> {
    prop::collection::vec(ingest_message(), 0..5).prop_map(|messages| IngestBatch { messages })
}

pub fn chat_message() -> impl Strategy<Value = ChatMessage> {
    (
        (any::<i64>(), any::<i64>(), any::<i64>()),
        (text(12), text(16), text(80)),
        (any::<i64>(), prop::option::of(any::<i64>()), any::<bool>()),
    )
        .prop_map(
            |((room, seq, sender), (sender_name, client_msg_id, body), (sent, edited, deleted))| {
                ChatMessage {
                    room_id: RoomId(room),
                    seq: Seq(seq),
                    sender_id: UserId(sender),
                    sender_name,
                    client_msg_id: ClientMsgId(client_msg_id),
                    body,
                    sent_at_ms: sent,
                    edited_at_ms: edited,
                    deleted,
                }
            },
        )
}

fn stored_message() -> impl Strategy<Value = StoredMessage> {
    (chat_message(), origin()).prop_map(|(message, origin)| StoredMessage { message, origin })
}

fn room_messages() -> impl Strategy<Value = RoomMessages> {
    (any::<i64>(), prop::collection::vec(stored_message(), 0..4)).prop_map(|(room, messages)| {
        RoomMessages {
            room_id: RoomId(room),
            messages,
        }
    })
}

fn presence() -> impl Strategy<Value = PresenceStatus> {
    prop::sample::select(vec![
        PresenceStatus::Offline,
        PresenceStatus::Away,
        PresenceStatus::Online,
    ])
}

/// Every kind of delivery, `rooms` (the common one) more often.
fn delivery() -> impl Strategy<Value = Delivery> {
    let room = || any::<i64>().prop_map(RoomId);
    let user = || any::<i64>().prop_map(UserId);
    let seq = || any::<i64>().prop_map(Seq);
    prop_oneof![
        4 => prop::collection::vec(room_messages(), 0..4).prop_map(|rooms| Delivery::Rooms { rooms }),
        1 => prop::collection::vec(
            (room(), text(16), seq(), origin()).prop_map(|(room_id, id, seq, origin)| {
                DuplicateReceipt {
                    room_id,
                    client_msg_id: ClientMsgId(id),
                    seq,
                    origin,
                }
            }),
            0..4
        )
        .prop_map(|receipts| Delivery::Duplicates { receipts }),
        1 => (room(), user()).prop_map(|(room_id, user_id)| Delivery::MemberLeft { room_id, user_id }),
        1 => (room(), user(), text(12), origin()).prop_map(|(room_id, user_id, name, origin)| {
            Delivery::Typing {
                room_id,
                user_id,
                name,
                origin,
            }
        }),
        1 => (room(), seq(), prop::option::of(text(40)), any::<i64>(), user()).prop_map(
            |(room_id, seq, body, changed_at_ms, by)| Delivery::MessageChanged {
                room_id,
                seq,
                body,
                changed_at_ms,
                by,
            }
        ),
        1 => (user(), room(), seq(), any::<i64>(), origin()).prop_map(
            |(user_id, room_id, seq, unread, origin)| Delivery::ReadMarker {
                user_id,
                room_id,
                seq,
                unread,
                origin,
            }
        ),
        1 => user().prop_map(|user_id| Delivery::RoomsChanged { user_id }),
        1 => (text(12), user(), presence()).prop_map(|(node_id, user_id, status)| {
            Delivery::Presence {
                node_id,
                user_id,
                status,
            }
        }),
        1 => (text(12), prop::collection::vec((user(), presence()), 0..5))
            .prop_map(|(node_id, users)| Delivery::PresenceSnapshot { node_id, users }),
        1 => text(12).prop_map(|node_id| Delivery::PresenceSync { node_id }),
    ]
}

fn encoded<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

proptest! {
    #![proptest_config(support::config(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proptest-regressions/fuzz-bus.txt"
    )))]

    #[test]
    fn any_bytes_are_an_ingest_batch_or_refused(payload in prop::collection::vec(any::<u8>(), 0..300)) {
        check_ingest(&payload)?;
    }

    #[test]
    fn any_bytes_are_a_delivery_or_refused(payload in prop::collection::vec(any::<u8>(), 0..300)) {
        check_delivery(&payload)?;
    }

    #[test]
    fn every_ingest_batch_reads_back_as_encoded(batch in ingest_batch()) {
        prop_assert_eq!(IngestBatch::decode(&encoded(&batch)).ok(), Some(batch));
    }

    /// The single-message form is retired (UPGRADING.md): refused like anything else.
    #[test]
    fn a_single_ingest_message_is_refused(message in ingest_message()) {
        let payload = encoded(&message);
        prop_assert!(IngestBatch::decode(&payload).is_err());
        check_ingest(&payload)?;
    }

    #[test]
    fn every_delivery_reads_back_as_encoded(delivery in delivery()) {
        let payload = encoded(&delivery);
        prop_assert_eq!(Delivery::decode(&payload).ok(), Some(delivery));
        check_delivery(&payload)?;
    }

    #[test]
    fn mutated_ingest_batches_are_read_or_refused(
        payload in mutated(ingest_batch().prop_map(|b| encoded(&b)), json_tokens().boxed())
    ) {
        check_ingest(&payload)?;
    }

    #[test]
    fn mutated_deliveries_are_read_or_refused(
        payload in mutated(delivery().prop_map(|d| encoded(&d)), json_tokens().boxed())
    ) {
        check_delivery(&payload)?;
    }
}

/// Every seed in `tests/corpus/ingest_json` and `tests/corpus/delivery_json` decodes (`ok--…`)
/// or is refused (`refused--…`) as its name says, and passes every check the properties make.
#[test]
fn the_bus_corpus_replays() {
    for (name, payload) in support::corpus("ingest_json") {
        if let Err(failure) = check_ingest(&payload) {
            panic!("{name}: {failure}");
        }
        let got = if IngestBatch::decode(&payload).is_ok() {
            "ok"
        } else {
            "refused"
        };
        assert_eq!(got, support::expectation(&name), "{name}");
    }
    for (name, payload) in support::corpus("delivery_json") {
        if let Err(failure) = check_delivery(&payload) {
            panic!("{name}: {failure}");
        }
        let got = if Delivery::decode(&payload).is_ok() {
            "ok"
        } else {
            "refused"
        };
        assert_eq!(got, support::expectation(&name), "{name}");
    }
}
