//! The client frame parser: every text a client can send gets a frame or a typed error.

use crate::support::{self, json_tokens, mutated, peak_heap, text};
use chat_protocol::frame::CLIENT_FRAME_TYPES;
use chat_protocol::{limits, ClientFrame, ClientMsgId, ErrorCode, PresenceStatus, RoomId, Seq};
use proptest::prelude::*;
use serde_json::Value;

/// The codes `ClientFrame::parse` may answer with: nothing else reaches a client from it.
const PARSE_ERRORS: &[ErrorCode] = &[
    ErrorCode::BadJson,
    ErrorCode::UnknownType,
    ErrorCode::BadFrame,
    ErrorCode::FrameTooLarge,
    ErrorCode::BodyTooLong,
    ErrorCode::BodyEmpty,
    ErrorCode::InvalidBody,
    ErrorCode::InvalidClientMsgId,
];

/// Most heap one parse may hold: a frame is at most 16 KiB, and its JSON tree a small multiple.
const PARSE_PEAK_BYTES: u64 = 2 * 1024 * 1024;

/// What the parser must answer for `text`: a frame that reads back as itself, or an error with
/// one of the parser's codes, and the code an independent reading of the text expects.
fn check_parse(text: &str) -> Result<(), TestCaseError> {
    let (result, peak) = peak_heap(|| ClientFrame::parse(text));
    prop_assert!(
        peak <= PARSE_PEAK_BYTES,
        "parsing {} bytes held {peak} bytes",
        text.len()
    );
    match result {
        Ok(frame) => {
            let again = serde_json::to_string(&frame)
                .map_err(|e| TestCaseError::fail(e.to_string()))
                .map(|json| ClientFrame::parse(&json))?;
            prop_assert_eq!(again, Ok(frame));
        }
        Err(error) => {
            prop_assert!(PARSE_ERRORS.contains(&error.code), "{error:?}");
            prop_assert!(!error.message.is_empty());
            if let Some(id) = &error.client_msg_id {
                prop_assert!(id.0.chars().count() <= limits::MAX_CLIENT_MSG_ID_BYTES);
            }
            if let Some(expected) = expected_code(text) {
                prop_assert_eq!(error.code, expected, "{:?}", error.message);
            }
        }
    }
    Ok(())
}

/// The error code of a text that is not a frame of a known type, read without the parser; `None`
/// for a known type, whose field errors are the parser's own business.
fn expected_code(text: &str) -> Option<ErrorCode> {
    if text.len() > limits::MAX_FRAME_BYTES {
        return Some(ErrorCode::FrameTooLarge);
    }
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text) else {
        return Some(ErrorCode::BadJson);
    };
    match object.get("type").and_then(Value::as_str) {
        Some(t) if CLIENT_FRAME_TYPES.contains(&t) => None,
        _ => Some(ErrorCode::UnknownType),
    }
}

fn client_msg_id() -> impl Strategy<Value = ClientMsgId> {
    text(16)
        .prop_filter("1 to 64 bytes", |id| {
            (1..=limits::MAX_CLIENT_MSG_ID_BYTES).contains(&id.len())
        })
        .prop_map(ClientMsgId)
}

/// A body `send` and `edit` accept: not blank, no NUL, at most 4,000 characters.
fn body() -> impl Strategy<Value = String> {
    let valid = |body: &String| {
        !body.trim().is_empty()
            && !body.contains('\0')
            && body.chars().count() <= limits::MAX_BODY_CHARS
    };
    prop_oneof![
        8 => text(64),
        1 => text(limits::MAX_BODY_CHARS),
        1 => (limits::MAX_BODY_CHARS - 2..=limits::MAX_BODY_CHARS)
            .prop_map(|chars| "é".repeat(chars)),
    ]
    .prop_filter("a valid body", valid)
}

fn room_id() -> impl Strategy<Value = RoomId> {
    any::<i64>().prop_map(RoomId)
}

fn seq() -> impl Strategy<Value = Seq> {
    any::<i64>().prop_map(Seq)
}

/// Every frame a client may send, each with valid fields.
fn valid_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (room_id(), prop::option::of(seq()))
            .prop_map(|(room_id, after)| ClientFrame::Join { room_id, after }),
        room_id().prop_map(|room_id| ClientFrame::Leave { room_id }),
        room_id().prop_map(|room_id| ClientFrame::Typing { room_id }),
        (room_id(), client_msg_id(), body()).prop_map(|(room_id, client_msg_id, body)| {
            ClientFrame::Send {
                room_id,
                client_msg_id,
                body,
            }
        }),
        (room_id(), seq(), body()).prop_map(|(room_id, seq, body)| ClientFrame::Edit {
            room_id,
            seq,
            body
        }),
        (room_id(), seq()).prop_map(|(room_id, seq)| ClientFrame::Delete { room_id, seq }),
        (room_id(), seq()).prop_map(|(room_id, seq)| ClientFrame::MarkRead { room_id, seq }),
        prop::sample::select(vec![PresenceStatus::Online, PresenceStatus::Away])
            .prop_map(|status| ClientFrame::Presence { status }),
    ]
}

/// A frame's JSON as a client might write it: fields in any order, unknown fields added,
/// spaces between tokens.
fn written_frame() -> impl Strategy<Value = (ClientFrame, String)> {
    valid_frame()
        .prop_flat_map(|frame| {
            let fields: Vec<(String, String)> = match serde_json::to_value(&frame) {
                Ok(Value::Object(object)) => object
                    .into_iter()
                    .map(|(key, value)| (format!("{key:?}"), value.to_string()))
                    .collect(),
                _ => Vec::new(),
            };
            let extra = prop::collection::vec(
                ("[a-z_]{1,8}", any::<i64>())
                    .prop_map(|(key, value)| (format!("\"x_{key}\""), value.to_string())),
                0..3,
            );
            (
                Just(frame),
                Just(fields),
                extra,
                prop::sample::select(vec!["", " ", "\n\t "]),
            )
        })
        .prop_flat_map(|(frame, mut fields, extra, space)| {
            fields.extend(extra);
            (Just(frame), Just(fields).prop_shuffle(), Just(space))
        })
        .prop_map(|(frame, fields, space)| {
            let members: Vec<String> = fields
                .into_iter()
                .map(|(key, value)| format!("{space}{key}{space}:{space}{value}{space}"))
                .collect();
            (frame, format!("{{{}}}", members.join(",")))
        })
}

/// Arbitrary JSON of any shape, up to a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text(12).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text(8), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// An object with a known frame type and fields of the right names but any values: reaches
/// every field check.
fn frame_like_object() -> impl Strategy<Value = String> {
    let field = prop::sample::select(vec![
        "room_id",
        "after",
        "seq",
        "client_msg_id",
        "body",
        "status",
        "type",
    ]);
    (
        prop::sample::select(CLIENT_FRAME_TYPES.to_vec()),
        prop::collection::vec((field, json_value()), 0..5),
    )
        .prop_map(|(frame_type, fields)| {
            let mut object = serde_json::Map::new();
            object.insert("type".into(), Value::from(frame_type));
            for (key, value) in fields {
                object.insert(key.into(), value);
            }
            Value::Object(object).to_string()
        })
}

fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    written_frame().prop_map(|(_, json)| json.into_bytes())
}

proptest! {
    #![proptest_config(support::config(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proptest-regressions/fuzz-frames.txt"
    )))]

    #[test]
    fn any_text_gets_a_frame_or_a_typed_error(text in text(300)) {
        check_parse(&text)?;
    }

    #[test]
    fn any_json_gets_a_frame_or_a_typed_error(value in json_value()) {
        check_parse(&value.to_string())?;
    }

    #[test]
    fn frames_of_known_types_with_any_fields_get_a_frame_or_a_typed_error(
        text in frame_like_object()
    ) {
        check_parse(&text)?;
    }

    #[test]
    fn every_valid_frame_reads_back_as_written((frame, json) in written_frame()) {
        prop_assert_eq!(ClientFrame::parse(&json), Ok(frame));
    }

    #[test]
    fn mutated_frames_get_a_frame_or_a_typed_error(
        bytes in mutated(frame_bytes(), json_tokens().boxed())
    ) {
        check_parse(&String::from_utf8_lossy(&bytes))?;
    }
}

/// Frames near and over the size limit, made of what is most expensive to parse.
#[test]
fn frames_at_the_size_limit_are_parsed_or_refused_in_bounded_memory() {
    let inputs = [
        "[".repeat(limits::MAX_FRAME_BYTES),
        "[".repeat(limits::MAX_FRAME_BYTES + 1),
        format!("[{}0]", "0,".repeat(limits::MAX_FRAME_BYTES / 2 - 2)),
        format!("[{}{{}}]", "{},".repeat(limits::MAX_FRAME_BYTES / 3 - 2)),
        format!(
            r#"{{"type":"send","room_id":1,"client_msg_id":"m","body":"{}"}}"#,
            "\\u00e9".repeat(2_600)
        ),
        format!(r#"{{"type":"{}","room_id":1}}"#, "\\u0000".repeat(2_700)),
        "\"".repeat(limits::MAX_FRAME_BYTES * 4),
    ];
    for input in &inputs {
        if let Err(failure) = check_parse(input) {
            panic!("{} bytes: {failure}", input.len());
        }
    }
}

/// Every seed in `tests/corpus/client_frames` gives what its name says: `ok--…` a frame,
/// `<error code>--…` that error.
#[test]
fn the_client_frame_corpus_replays() {
    for (name, bytes) in support::corpus("client_frames") {
        let text = String::from_utf8_lossy(&bytes);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        if let Err(failure) = check_parse(text) {
            panic!("{name}: {failure}");
        }
        let got = match ClientFrame::parse(text) {
            Ok(_) => "ok".to_owned(),
            Err(error) => error.code.as_str().to_owned(),
        };
        assert_eq!(got, support::expectation(&name), "{name}");
    }
}

/// The corpus has a valid seed of every frame type a client may send.
#[test]
fn the_client_frame_corpus_has_every_frame_type() {
    let seeds = support::corpus("client_frames");
    for frame_type in CLIENT_FRAME_TYPES {
        let found = seeds.iter().any(|(name, bytes)| {
            support::expectation(name) == "ok"
                && serde_json::from_slice::<Value>(bytes)
                    .ok()
                    .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
                    .as_deref()
                    == Some(frame_type)
        });
        assert!(found, "no valid seed of `{frame_type}`");
    }
}
