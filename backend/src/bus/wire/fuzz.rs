//! Fuzzing the two binary layouts inside `cargo test`: any payload from RabbitMQ is read or
//! refused with a `WireError`, in memory proportional to its size; every valid batch reads back
//! as encoded; and a declared count or length the rest of the payload cannot hold is refused
//! before anything is reserved for it.
//!
//! Each property runs a bounded number of generated cases (`CHAT_FUZZ_CASES` raises it for a
//! longer run); the seeds in `backend/tests/corpus/` are replayed; a failing case proptest finds
//! is kept in `backend/proptest-regressions/` and tried first on every later run.

use super::*;
use chat_protocol::bus::StoredMessage;
use chat_protocol::{ChatMessage, ServerFrame};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence};
use std::path::Path;

const CASES: u32 = 3_000;

fn config() -> Config {
    let cases = std::env::var("CHAT_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(CASES);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/bus-wire.txt"
        )))),
        ..Config::default()
    }
}

/// Most heap a decode may hold per byte of payload: the items it reserves for are at most three
/// times the size of their smallest encoding, and the strings are copies.
const PEAK_BYTES_PER_PAYLOAD_BYTE: u64 = 16;
const PEAK_BYTES_BASE: u64 = 1024;

/// The most heap a call holds at once on this thread, in bytes, with what it returned.
fn peak_heap<T>(call: impl FnOnce() -> T) -> (T, u64) {
    let mut result = None;
    let info = allocation_counter::measure(|| result = Some(call()));
    match result {
        Some(result) => (result, info.bytes_max),
        None => unreachable!("measure runs the call"),
    }
}

fn within_memory_bound(payload: &[u8], peak: u64) -> Result<(), TestCaseError> {
    let bound = PEAK_BYTES_BASE + PEAK_BYTES_PER_PAYLOAD_BYTE * payload.len() as u64;
    prop_assert!(
        peak <= bound,
        "decoding {} bytes held {peak} bytes",
        payload.len()
    );
    Ok(())
}

/// What a persister must do with any ingest payload. The layout has one encoding per batch, so
/// whatever is read encodes back to the very same bytes.
fn check_ingest(payload: &[u8]) -> Result<Result<Vec<IngestMessage>, WireError>, TestCaseError> {
    let (result, peak) = peak_heap(|| decode_ingest(payload));
    within_memory_bound(payload, peak)?;
    match &result {
        Ok(messages) => {
            let again = encode_ingest(messages);
            prop_assert_eq!(again.as_deref(), Ok(payload));
        }
        Err(WireError::Trailing(left)) => prop_assert!(*left > 0 && *left < payload.len()),
        Err(_) => {}
    }
    Ok(result)
}

/// What a node must do with any rooms payload: as for ingest, and every frame it passes on to
/// clients is UTF-8 (the type says so) taken from the payload.
fn check_rooms(payload: &[u8]) -> Result<Result<Vec<DeliveredRoom>, WireError>, TestCaseError> {
    let owned = payload.to_vec();
    let (result, peak) = peak_heap(|| decode_rooms(owned));
    within_memory_bound(payload, peak)?;
    match &result {
        Ok(rooms) => prop_assert_eq!(encode_delivered(rooms), payload),
        Err(WireError::Trailing(left)) => prop_assert!(*left > 0 && *left < payload.len()),
        Err(_) => {}
    }
    Ok(result)
}

/// The rooms layout of what a node read, frames as they are: the inverse of `decode_rooms`.
fn encode_delivered(rooms: &[DeliveredRoom]) -> Vec<u8> {
    let mut out = vec![VERSION];
    let put_len = |out: &mut Vec<u8>, len: usize| {
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    };
    put_len(&mut out, rooms.len());
    for room in rooms {
        out.extend_from_slice(&room.room_id.0.to_le_bytes());
        put_len(&mut out, room.messages.len());
        for message in &room.messages {
            out.extend_from_slice(&message.seq.0.to_le_bytes());
            out.extend_from_slice(&message.sent_at_ms.to_le_bytes());
            let origin = message.origin.clone().unwrap_or(Origin {
                node_id: String::new(),
                conn_id: 0,
            });
            out.extend_from_slice(&origin.conn_id.to_le_bytes());
            for text in [
                origin.node_id.as_str(),
                message.client_msg_id.0.as_str(),
                message.frame.as_str(),
            ] {
                put_len(&mut out, text.len());
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
    out
}

/// Where a payload declares a count of items or a length of bytes: the offset of the `u32`, and
/// the fewest bytes each unit it counts takes.
#[derive(Debug, Clone, Copy)]
struct Declared {
    at: usize,
    unit_bytes: usize,
}

/// Every count and length of a valid payload, found by walking its layout.
fn declared(payload: &[u8], rooms_layout: bool) -> Vec<Declared> {
    let mut found = Vec::new();
    let mut at = 1;
    let read = |at: usize| -> usize {
        payload
            .get(at..at + 4)
            .and_then(|field| <[u8; 4]>::try_from(field).ok())
            .map(u32::from_le_bytes)
            .map_or(0, |value| value as usize)
    };
    let string = |found: &mut Vec<Declared>, at: &mut usize| {
        found.push(Declared {
            at: *at,
            unit_bytes: 1,
        });
        *at += 4 + read(*at);
    };
    if rooms_layout {
        found.push(Declared {
            at,
            unit_bytes: ROOM_MIN_BYTES,
        });
        let rooms = read(at);
        at += 4;
        for _ in 0..rooms {
            at += 8;
            found.push(Declared {
                at,
                unit_bytes: MESSAGE_MIN_BYTES,
            });
            let messages = read(at);
            at += 4;
            for _ in 0..messages {
                at += 24;
                for _ in 0..3 {
                    string(&mut found, &mut at);
                }
            }
        }
    } else {
        found.push(Declared {
            at,
            unit_bytes: INGEST_MESSAGE_MIN_BYTES,
        });
        let messages = read(at);
        at += 4;
        for _ in 0..messages {
            at += 32;
            for _ in 0..4 {
                string(&mut found, &mut at);
            }
        }
    }
    found
}

/// A valid payload with one declared count or length raised past what the rest can hold.
fn overstated(payload: Vec<u8>, rooms_layout: bool, which: Index, excess: u32) -> Vec<u8> {
    let fields = declared(&payload, rooms_layout);
    let field = fields[which.index(fields.len())];
    let left = payload.len() - field.at - 4;
    let most = u32::try_from(left / field.unit_bytes).unwrap_or(u32::MAX);
    let value = most.saturating_add(excess.max(1));
    let mut payload = payload;
    payload[field.at..field.at + 4].copy_from_slice(&value.to_le_bytes());
    payload
}

fn text(max_chars: usize) -> impl Strategy<Value = String> {
    let char = prop_oneof![
        4 => any::<char>(),
        2 => prop::char::range(' ', '~'),
        1 => prop::sample::select(vec!['"', '\\', '\n', '\0', '\u{202e}', '\u{1f600}']),
    ];
    prop::collection::vec(char, 0..=max_chars).prop_map(|chars| chars.into_iter().collect())
}

fn origin() -> impl Strategy<Value = Origin> {
    (text(12), any::<u64>()).prop_map(|(node_id, conn_id)| Origin { node_id, conn_id })
}

fn ingest_batch() -> impl Strategy<Value = Vec<IngestMessage>> {
    let message = (
        (any::<i64>(), any::<i64>(), any::<i64>()),
        (text(12), text(16), text(80)),
        origin(),
    )
        .prop_map(
            |((room, sender, sent_at_ms), (sender_name, id, body), origin)| IngestMessage {
                room_id: RoomId(room),
                sender_id: UserId(sender),
                sender_name,
                client_msg_id: ClientMsgId(id),
                body,
                sent_at_ms,
                origin,
            },
        );
    prop::collection::vec(message, 0..5)
}

fn rooms_batch() -> impl Strategy<Value = Vec<RoomMessages>> {
    let message = (
        (any::<i64>(), any::<i64>(), any::<i64>()),
        (text(12), text(16), text(80)),
        (prop::option::of(any::<i64>()), any::<bool>(), origin()),
    )
        .prop_map(
            |((seq, sender, sent_at_ms), (sender_name, id, body), (edited, deleted, origin))| {
                (
                    Seq(seq),
                    UserId(sender),
                    sent_at_ms,
                    sender_name,
                    ClientMsgId(id),
                    body,
                    edited,
                    deleted,
                    origin,
                )
            },
        );
    let room = (any::<i64>(), prop::collection::vec(message, 0..4)).prop_map(|(room, messages)| {
        RoomMessages {
            room_id: RoomId(room),
            messages: messages
                .into_iter()
                .map(
                    |(
                        seq,
                        sender_id,
                        sent_at_ms,
                        sender_name,
                        client_msg_id,
                        body,
                        edited,
                        deleted,
                        origin,
                    )| {
                        StoredMessage {
                            message: ChatMessage {
                                room_id: RoomId(room),
                                seq,
                                sender_id,
                                sender_name,
                                client_msg_id,
                                body,
                                sent_at_ms,
                                edited_at_ms: edited,
                                deleted,
                            },
                            origin,
                        }
                    },
                )
                .collect(),
        }
    });
    prop::collection::vec(room, 0..4)
}

fn encoded_ingest() -> impl Strategy<Value = Vec<u8>> {
    ingest_batch().prop_map(|batch| encode_ingest(&batch).unwrap_or_default())
}

fn encoded_rooms() -> impl Strategy<Value = Vec<u8>> {
    rooms_batch().prop_map(|rooms| encode_rooms(&rooms).unwrap_or_default())
}

/// One change to a valid payload, made with the layout in mind: cut, flipped, bytes put in or
/// taken out, a count or length overwritten.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// Overwrite four bytes with a `u32`, wherever they are.
    Word(Index, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let word = prop_oneof![
        Just(u32::MAX),
        Just(u32::MAX / 2 + 1),
        Just(0),
        0u32..256,
        any::<u32>(),
    ];
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), 1usize..16).prop_map(|(at, count)| Mutation::Remove(at, count)),
        (any::<Index>(), word).prop_map(|(at, word)| Mutation::Word(at, word)),
    ]
}

fn mutated(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (valid, prop::collection::vec(mutation(), 1..5)).prop_map(|(mut bytes, mutations)| {
        for mutation in mutations {
            let len = bytes.len();
            match mutation {
                Mutation::Truncate(at) => bytes.truncate(at.index(len + 1)),
                Mutation::Flip(at, mask) if len > 0 => bytes[at.index(len)] ^= mask,
                Mutation::Flip(..) => {}
                Mutation::Insert(at, inserted) => {
                    let at = at.index(len + 1);
                    bytes.splice(at..at, inserted);
                }
                Mutation::Remove(at, count) => {
                    let at = at.index(len + 1);
                    bytes.drain(at..(at + count).min(len));
                }
                Mutation::Word(at, word) if len >= 4 => {
                    let at = at.index(len - 3);
                    bytes[at..at + 4].copy_from_slice(&word.to_le_bytes());
                }
                Mutation::Word(..) => {}
            }
        }
        bytes
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_are_an_ingest_batch_or_refused(
        payload in prop::collection::vec(any::<u8>(), 0..400),
        versioned in any::<bool>(),
    ) {
        let mut payload = payload;
        if versioned && !payload.is_empty() {
            payload[0] = VERSION;
        }
        let _ = check_ingest(&payload)?;
    }

    #[test]
    fn any_bytes_are_a_rooms_delivery_or_refused(
        payload in prop::collection::vec(any::<u8>(), 0..400),
        versioned in any::<bool>(),
    ) {
        let mut payload = payload;
        if versioned && !payload.is_empty() {
            payload[0] = VERSION;
        }
        let _ = check_rooms(&payload)?;
    }

    #[test]
    fn every_ingest_batch_reads_back_as_encoded(batch in ingest_batch()) {
        let payload = encode_ingest(&batch);
        prop_assert!(payload.is_ok());
        let payload = payload.unwrap_or_default();
        prop_assert_eq!(check_ingest(&payload)?, Ok(batch));
    }

    /// A node passes each frame on as the persister wrote it: the `message` frame of the stored
    /// message, exactly as the node would serialize it.
    #[test]
    fn every_rooms_delivery_reads_back_as_encoded(rooms in rooms_batch()) {
        let payload = encode_rooms(&rooms);
        prop_assert!(payload.is_ok());
        let payload = payload.unwrap_or_default();
        let decoded = check_rooms(&payload)?;
        prop_assert!(decoded.is_ok(), "{decoded:?}");
        let decoded = decoded.unwrap_or_default();
        prop_assert_eq!(decoded.len(), rooms.len());
        for (room, read) in rooms.iter().zip(&decoded) {
            prop_assert_eq!(read.room_id, room.room_id);
            prop_assert_eq!(read.messages.len(), room.messages.len());
            for (stored, read) in room.messages.iter().zip(&read.messages) {
                prop_assert_eq!(read.seq, stored.message.seq);
                prop_assert_eq!(read.sent_at_ms, stored.message.sent_at_ms);
                prop_assert_eq!(&read.client_msg_id, &stored.message.client_msg_id);
                prop_assert_eq!(read.origin.as_ref(), Some(&stored.origin));
                prop_assert_eq!(
                    read.frame.as_str(),
                    ServerFrame::Message(stored.message.clone()).to_json()
                );
            }
        }
    }

    /// Every cut of a valid payload is refused: counts come first, so a cut never passes for a
    /// shorter batch.
    #[test]
    fn a_cut_short_payload_is_always_refused(
        ingest in encoded_ingest(),
        rooms in encoded_rooms(),
        cut in any::<Index>(),
    ) {
        let end = cut.index(ingest.len());
        prop_assert!(check_ingest(&ingest[..end])?.is_err());
        let end = cut.index(rooms.len());
        prop_assert!(check_rooms(&rooms[..end])?.is_err());
    }

    #[test]
    fn mutated_ingest_batches_are_read_or_refused(payload in mutated(encoded_ingest())) {
        let _ = check_ingest(&payload)?;
    }

    #[test]
    fn mutated_rooms_deliveries_are_read_or_refused(payload in mutated(encoded_rooms())) {
        let _ = check_rooms(&payload)?;
    }

    /// A count or length bigger than the rest of the payload can hold is refused as cut short,
    /// whichever it is, and what was reserved until then stays within the payload's bound.
    #[test]
    fn an_overstated_count_or_length_is_refused_before_it_is_reserved(
        ingest in encoded_ingest(),
        rooms in encoded_rooms(),
        which in any::<Index>(),
        excess in prop_oneof![1u32..4, any::<u32>()],
    ) {
        let payload = overstated(ingest, false, which, excess);
        prop_assert_eq!(check_ingest(&payload)?, Err(WireError::Truncated));
        let payload = overstated(rooms, true, which, excess);
        prop_assert_eq!(check_rooms(&payload)?.err(), Some(WireError::Truncated));
    }
}

/// A batch that declares more items than its payload could hold reserves nothing at all.
#[test]
fn a_huge_batch_count_reserves_nothing() {
    for count in [u32::MAX, 1 << 24, 2] {
        let mut payload = vec![VERSION];
        payload.extend_from_slice(&count.to_le_bytes());
        payload.extend_from_slice(&[0; 12]);
        let (result, peak) = peak_heap(|| decode_ingest(&payload));
        assert_eq!(result, Err(WireError::Truncated));
        assert_eq!(peak, 0, "an ingest count of {count}");
        let owned = payload.clone();
        let (result, peak) = peak_heap(|| decode_rooms(owned));
        assert_eq!(result.err(), Some(WireError::Truncated));
        assert_eq!(peak, 0, "a rooms count of {count}");
    }
}

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name);
    let mut seeds: Vec<(String, Vec<u8>)> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let bytes = std::fs::read(entry.path()).ok()?;
                Some((entry.file_name().to_string_lossy().into_owned(), bytes))
            })
            .collect(),
        Err(e) => panic!("cannot read the corpus {}: {e}", dir.display()),
    };
    seeds.sort();
    assert!(!seeds.is_empty(), "the corpus {} is empty", dir.display());
    seeds
}

/// What a seed's file name says it must give: `ok--…`, or the refusal (`truncated--…`,
/// `version--…`, `not_utf8--…`, `trailing--…`).
fn outcome(result: Result<(), &WireError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(WireError::Truncated) => "truncated",
        Err(WireError::Version(_)) => "version",
        Err(WireError::NotUtf8) => "not_utf8",
        Err(WireError::Trailing(_)) => "trailing",
        Err(WireError::TooLong) => "too_long",
    }
}

fn expectation(name: &str) -> &str {
    name.split("--").next().unwrap_or(name)
}

/// The corpus in `backend/tests/corpus/`: each seed is read or refused as its name says and
/// passes every check the properties make. The `ok` seeds are batches of the documented layouts
/// that must keep reading the same: a change to the layout that breaks them breaks nodes that
/// are still running the previous version.
#[test]
fn the_wire_corpus_replays() {
    for (name, payload) in corpus("ingest_v1") {
        let result = check_ingest(&payload).map_err(|e| format!("{name}: {e}"));
        let result = result.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            outcome(result.as_ref().map(|_| ())),
            expectation(&name),
            "{name}"
        );
    }
    for (name, payload) in corpus("rooms_v1") {
        let result = check_rooms(&payload).map_err(|e| format!("{name}: {e}"));
        let result = result.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            outcome(result.as_ref().map(|_| ())),
            expectation(&name),
            "{name}"
        );
        for room in result.iter().flatten() {
            for message in &room.messages {
                let frame = serde_json::from_str::<ServerFrame>(message.frame.as_str());
                match frame {
                    Ok(ServerFrame::Message(read)) => {
                        assert_eq!(
                            (read.room_id, read.seq),
                            (room.room_id, message.seq),
                            "{name}"
                        );
                        assert_eq!(read.client_msg_id, message.client_msg_id, "{name}");
                    }
                    other => panic!("{name}: a frame that is not a message: {other:?}"),
                }
            }
        }
    }
}
