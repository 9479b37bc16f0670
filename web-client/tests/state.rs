//! The client state in a real browser (`wasm-bindgen-test`, headless Chromium): ordering and
//! de-duplication by sequence number, the send state machine, unread counting and Markdown
//! escaping. The same modules' unit tests also run on the host with `cargo test -p web-client`.
#![cfg(target_arch = "wasm32")]

use chat_protocol::api::{Room, RoomKind, Unread};
use chat_protocol::{ChatMessage, ClientMsgId, RoomId, Seq, UserId};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use web_client::markdown::{self, Block, Inline};
use web_client::timeline::{Row, SendState, Timeline};
use web_client::unread::Rooms;

wasm_bindgen_test_configure!(run_in_browser);

fn message(seq: i64, sender: i64, id: &str) -> ChatMessage {
    ChatMessage {
        room_id: RoomId(1),
        seq: Seq(seq),
        sender_id: UserId(sender),
        sender_name: format!("user{sender}"),
        client_msg_id: ClientMsgId(id.into()),
        body: format!("body {seq}"),
        sent_at_ms: 1_795_817_270_814 + seq,
        edited_at_ms: None,
        deleted: false,
    }
}

fn seqs(timeline: &Timeline) -> Vec<i64> {
    timeline
        .rows(None, |_| "day".into())
        .into_iter()
        .filter_map(|row| match row {
            Row::Message { message, .. } => Some(message.seq.0),
            _ => None,
        })
        .collect()
}

#[wasm_bindgen_test]
fn messages_keep_sequence_order_once_each() {
    let mut timeline = Timeline::new(RoomId(1));
    for seq in [5, 3, 4, 3, 5, 1, 2] {
        timeline.apply_message(message(seq, 2, &format!("c{seq}")), None);
    }
    assert_eq!(seqs(&timeline), vec![1, 2, 3, 4, 5]);
}

#[wasm_bindgen_test]
fn a_send_fails_is_retried_with_its_id_and_is_stored_once() {
    let me = UserId(9);
    let id = ClientMsgId("tab-1".into());
    let mut timeline = Timeline::new(RoomId(1));
    timeline.add_outgoing(id.clone(), "hello".into(), 0);
    timeline.fail_pending("lost");
    assert!(matches!(timeline.outgoing()[0].state, SendState::Failed(_)));
    let retried = timeline.retry(&id).map(|o| o.client_msg_id);
    assert_eq!(retried, Some(id.clone()));
    timeline.stored(&id, Seq(1), me, "me");
    timeline.apply_message(message(1, 9, "tab-1"), Some(me));
    assert!(timeline.outgoing().is_empty());
    assert_eq!(seqs(&timeline), vec![1]);
}

#[wasm_bindgen_test]
fn unread_counts_rise_once_per_message() {
    let mut rooms = Rooms::default();
    rooms.load(vec![Room {
        room_id: RoomId(3),
        name: "plans".into(),
        kind: RoomKind::Private,
        role: None,
        unread: Some(Unread {
            last_seq: Seq(4),
            last_read_seq: Seq(4),
            count: 0,
        }),
        invite_policy: None,
    }]);
    rooms.activity(RoomId(3), Seq(6), UserId(2), UserId(1));
    rooms.activity(RoomId(3), Seq(6), UserId(2), UserId(1));
    assert_eq!(rooms.total_unread(), 2);
    assert_eq!(rooms.title(None), "(2) Chat");
}

#[wasm_bindgen_test]
fn markup_in_messages_stays_text() {
    let blocks = markdown::parse("<img src=x onerror=alert(1)> [x](javascript:alert(1))");
    let Some(Block::Paragraph(lines)) = blocks.first() else {
        panic!("no paragraph: {blocks:?}");
    };
    assert!(lines[0]
        .iter()
        .all(|inline| matches!(inline, Inline::Text(_))));
}
