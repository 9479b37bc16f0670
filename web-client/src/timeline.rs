//! One room's messages as this tab knows them: stored messages by sequence number (each once,
//! whatever order history pages and live frames bring them in), and the user's own sends that
//! have no sequence number yet, each in one of three states:
//!
//! ```text
//! pending ──stored / message──▶ (a stored message)
//!    │  ▲
//! error│  │retry (same client_msg_id, so it can never be stored twice)
//!    ▼  │
//!  failed ──discard──▶ (gone)
//! ```
//!
//! Edits and deletes only move forward: an edit older than the one shown is ignored, and a
//! deleted message stays deleted, so a history page fetched before a live change cannot undo it.

use chat_protocol::{ChatMessage, ClientMsgId, RoomId, Seq, UserId};
use std::collections::BTreeMap;

/// Where one of the user's sends is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendState {
    /// Sent (or waiting for the connection); no answer yet.
    Pending,
    /// Refused or lost; the reason in plain words. Retry sends it again with the same id.
    Failed(String),
}

/// A send without a sequence number yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub client_msg_id: ClientMsgId,
    pub body: String,
    pub created_ms: i64,
    pub state: SendState,
}

/// What one row of the message list shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// A new calendar day starts (the key is the day's first message's time).
    Day { key: String, at_ms: i64 },
    /// The first unread message follows.
    NewMessages,
    /// A stored message; `continued` when it follows one of the same sender within minutes.
    Message {
        message: ChatMessage,
        continued: bool,
    },
    /// One of the user's sends that has no sequence number yet.
    Outgoing(Outgoing),
}

/// Consecutive messages of one sender closer than this are grouped under one header.
pub const GROUP_WITHIN_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub room_id: Option<RoomId>,
    messages: BTreeMap<Seq, ChatMessage>,
    outgoing: Vec<Outgoing>,
    /// The first page reached sequence number 1: nothing older exists.
    pub reached_start: bool,
    /// The read marker when the room was opened: the "new messages" line goes after it.
    pub read_marker: Option<Seq>,
}

impl Timeline {
    pub fn new(room_id: RoomId) -> Timeline {
        Timeline {
            room_id: Some(room_id),
            ..Timeline::default()
        }
    }

    /// Adds or updates a stored message (from a page or a live frame). A send of this tab with
    /// the same client message id is the same message: it leaves the outgoing list.
    /// Returns whether the message was new.
    pub fn apply_message(&mut self, message: ChatMessage, own_id: Option<UserId>) -> bool {
        if Some(message.sender_id) == own_id {
            self.outgoing
                .retain(|o| o.client_msg_id != message.client_msg_id);
        }
        if message.seq == Seq(1) {
            self.reached_start = true;
        }
        match self.messages.get_mut(&message.seq) {
            None => {
                self.messages.insert(message.seq, message);
                true
            }
            Some(shown) => {
                if shown.deleted {
                    return false;
                }
                if message.deleted {
                    *shown = message;
                } else if message.edited_at_ms > shown.edited_at_ms {
                    shown.body = message.body;
                    shown.edited_at_ms = message.edited_at_ms;
                }
                false
            }
        }
    }

    /// Forgets the stored messages (a resume could not cover the gap), keeping the sends
    /// without answers and the read marker.
    pub fn restart(&mut self) {
        self.messages.clear();
        self.reached_start = false;
    }

    /// A page of history, oldest first.
    pub fn apply_page(&mut self, page: Vec<ChatMessage>, own_id: Option<UserId>) {
        for message in page {
            self.apply_message(message, own_id);
        }
    }

    pub fn edited(&mut self, seq: Seq, body: String, at_ms: i64) {
        if let Some(shown) = self.messages.get_mut(&seq) {
            if !shown.deleted && Some(at_ms) >= shown.edited_at_ms {
                shown.body = body;
                shown.edited_at_ms = Some(at_ms);
            }
        }
    }

    pub fn deleted(&mut self, seq: Seq) {
        if let Some(shown) = self.messages.get_mut(&seq) {
            shown.deleted = true;
            shown.body.clear();
        }
    }

    /// A new send from this tab.
    pub fn add_outgoing(&mut self, client_msg_id: ClientMsgId, body: String, now_ms: i64) {
        self.outgoing.push(Outgoing {
            client_msg_id,
            body,
            created_ms: now_ms,
            state: SendState::Pending,
        });
    }

    /// `stored` arrived: the send is a stored message now. The `message` frame carries the body;
    /// until it comes (a duplicate's may never come on this connection) the outgoing entry
    /// becomes a stored message of its own.
    pub fn stored(
        &mut self,
        client_msg_id: &ClientMsgId,
        seq: Seq,
        own_id: UserId,
        own_name: &str,
    ) {
        let Some(at) = self
            .outgoing
            .iter()
            .position(|o| &o.client_msg_id == client_msg_id)
        else {
            return;
        };
        let sent = self.outgoing.remove(at);
        self.messages.entry(seq).or_insert_with(|| ChatMessage {
            room_id: self.room_id.unwrap_or(RoomId(0)),
            seq,
            sender_id: own_id,
            sender_name: own_name.to_owned(),
            client_msg_id: sent.client_msg_id,
            body: sent.body,
            sent_at_ms: sent.created_ms,
            edited_at_ms: None,
            deleted: false,
        });
    }

    /// The server refused a send, or the connection went before an answer.
    pub fn failed(&mut self, client_msg_id: &ClientMsgId, reason: &str) {
        for o in &mut self.outgoing {
            if &o.client_msg_id == client_msg_id {
                o.state = SendState::Failed(reason.to_owned());
            }
        }
    }

    /// Every pending send fails (the connection went away before they were answered).
    pub fn fail_pending(&mut self, reason: &str) {
        for o in &mut self.outgoing {
            if o.state == SendState::Pending {
                o.state = SendState::Failed(reason.to_owned());
            }
        }
    }

    /// Retry: the send goes pending again and is returned to be sent with its original id.
    pub fn retry(&mut self, client_msg_id: &ClientMsgId) -> Option<Outgoing> {
        let o = self
            .outgoing
            .iter_mut()
            .find(|o| &o.client_msg_id == client_msg_id)?;
        if o.state == SendState::Pending {
            return None;
        }
        o.state = SendState::Pending;
        Some(o.clone())
    }

    pub fn discard(&mut self, client_msg_id: &ClientMsgId) {
        self.outgoing.retain(|o| &o.client_msg_id != client_msg_id);
    }

    pub fn outgoing(&self) -> &[Outgoing] {
        &self.outgoing
    }

    pub fn oldest_seq(&self) -> Option<Seq> {
        self.messages.keys().next().copied()
    }

    pub fn newest_seq(&self) -> Option<Seq> {
        self.messages.keys().next_back().copied()
    }

    pub fn get(&self, seq: Seq) -> Option<&ChatMessage> {
        self.messages.get(&seq)
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.outgoing.is_empty()
    }

    /// The user's newest message that is not deleted (for ↑ to edit).
    pub fn last_own(&self, own_id: UserId) -> Option<&ChatMessage> {
        self.messages
            .values()
            .rev()
            .find(|m| m.sender_id == own_id && !m.deleted)
    }

    /// The rows to show, with day separators (`day_of` gives a message's calendar day), the
    /// new-messages line after the read marker (when a message of someone else follows it),
    /// and grouping.
    pub fn rows(&self, own_id: Option<UserId>, day_of: impl Fn(i64) -> String) -> Vec<Row> {
        let mut rows = Vec::with_capacity(self.messages.len() + self.outgoing.len() + 4);
        let mut last_day = String::new();
        let mut previous: Option<&ChatMessage> = None;
        let mut line_drawn = false;
        for message in self.messages.values() {
            let day = day_of(message.sent_at_ms);
            let mut new_group = true;
            if day != last_day {
                rows.push(Row::Day {
                    key: day.clone(),
                    at_ms: message.sent_at_ms,
                });
                last_day = day;
            } else if let Some(previous) = previous {
                new_group = previous.sender_id != message.sender_id
                    || previous.deleted
                    || message.sent_at_ms - previous.sent_at_ms > GROUP_WITHIN_MS;
            }
            if !line_drawn
                && self.read_marker.is_some_and(|read| message.seq > read)
                && Some(message.sender_id) != own_id
            {
                rows.push(Row::NewMessages);
                line_drawn = true;
                new_group = true;
            }
            rows.push(Row::Message {
                message: message.clone(),
                continued: !new_group,
            });
            previous = Some(message);
        }
        rows.extend(self.outgoing.iter().cloned().map(Row::Outgoing));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn message(seq: i64, sender: i64, body: &str) -> ChatMessage {
        ChatMessage {
            room_id: RoomId(1),
            seq: Seq(seq),
            sender_id: UserId(sender),
            sender_name: format!("user{sender}"),
            client_msg_id: ClientMsgId(format!("c-{seq}")),
            body: body.into(),
            sent_at_ms: seq * 1000,
            edited_at_ms: None,
            deleted: false,
        }
    }

    fn seqs(timeline: &Timeline) -> Vec<i64> {
        timeline
            .rows(None, |_| "d".into())
            .iter()
            .filter_map(|row| match row {
                Row::Message { message, .. } => Some(message.seq.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn messages_are_ordered_and_each_seq_once() {
        let mut t = Timeline::new(RoomId(1));
        t.apply_page(vec![message(3, 2, "c"), message(4, 2, "d")], None);
        assert!(t.apply_message(message(5, 2, "e"), None));
        assert!(!t.apply_message(message(4, 2, "d"), None));
        t.apply_page(
            vec![message(1, 2, "a"), message(2, 2, "b"), message(3, 2, "c")],
            None,
        );
        assert_eq!(seqs(&t), vec![1, 2, 3, 4, 5]);
        assert!(t.reached_start);
        assert_eq!(t.oldest_seq(), Some(Seq(1)));
        assert_eq!(t.newest_seq(), Some(Seq(5)));
    }

    #[test]
    fn changes_only_move_forward() {
        let mut t = Timeline::new(RoomId(1));
        t.apply_message(message(1, 2, "old"), None);
        t.edited(Seq(1), "new".into(), 50);
        // A page fetched before the edit does not undo it.
        t.apply_message(message(1, 2, "old"), None);
        assert_eq!(t.get(Seq(1)).map(|m| m.body.as_str()), Some("new"));
        t.deleted(Seq(1));
        let mut stale = message(1, 2, "new");
        stale.edited_at_ms = Some(50);
        t.apply_message(stale, None);
        assert!(t
            .get(Seq(1))
            .is_some_and(|m| m.deleted && m.body.is_empty()));
    }

    #[test]
    fn a_send_goes_pending_failed_retried_and_stored_once() {
        let me = UserId(7);
        let mut t = Timeline::new(RoomId(1));
        let id = ClientMsgId("k-1".into());
        t.add_outgoing(id.clone(), "hello".into(), 10);
        assert_eq!(t.outgoing()[0].state, SendState::Pending);
        // A pending send cannot be retried.
        assert!(t.retry(&id).is_none());
        t.failed(&id, "the server is unavailable");
        assert!(matches!(t.outgoing()[0].state, SendState::Failed(_)));
        let again = t.retry(&id);
        assert_eq!(again.map(|o| o.client_msg_id), Some(id.clone()));
        assert_eq!(t.outgoing()[0].state, SendState::Pending);
        t.stored(&id, Seq(4), me, "ada");
        assert!(t.outgoing().is_empty());
        // The message frame of the same send is the same row.
        let mut echoed = message(4, 7, "hello");
        echoed.client_msg_id = id.clone();
        assert!(!t.apply_message(echoed.clone(), Some(me)));
        assert_eq!(seqs(&t), vec![4]);
        // The message frame before `stored` replaces the pending row too.
        let id2 = ClientMsgId("k-2".into());
        t.add_outgoing(id2.clone(), "again".into(), 11);
        let mut second = message(5, 7, "again");
        second.client_msg_id = id2.clone();
        t.apply_message(second, Some(me));
        t.stored(&id2, Seq(5), me, "ada");
        assert!(t.outgoing().is_empty());
        assert_eq!(seqs(&t), vec![4, 5]);
    }

    #[test]
    fn discard_and_connection_loss() {
        let mut t = Timeline::new(RoomId(1));
        t.add_outgoing(ClientMsgId("a".into()), "a".into(), 1);
        t.add_outgoing(ClientMsgId("b".into()), "b".into(), 2);
        t.fail_pending("connection lost");
        assert!(t
            .outgoing()
            .iter()
            .all(|o| matches!(o.state, SendState::Failed(_))));
        t.discard(&ClientMsgId("a".into()));
        assert_eq!(t.outgoing().len(), 1);
    }

    #[test]
    fn rows_group_separate_days_and_mark_new() {
        let mut t = Timeline::new(RoomId(1));
        let mut m = vec![
            message(1, 2, "a"),
            message(2, 2, "b"),
            message(3, 3, "c"),
            message(4, 3, "d"),
        ];
        m[3].sent_at_ms = 10 * 24 * 3600 * 1000;
        t.apply_page(m, None);
        t.read_marker = Some(Seq(2));
        let rows = t.rows(Some(UserId(2)), |ms| (ms / (24 * 3600 * 1000)).to_string());
        let shape: Vec<String> = rows
            .iter()
            .map(|r| match r {
                Row::Day { .. } => "day".to_owned(),
                Row::NewMessages => "new".to_owned(),
                Row::Message { message, continued } => {
                    format!("{}{}", message.seq.0, if *continued { "+" } else { "" })
                }
                Row::Outgoing(_) => "out".to_owned(),
            })
            .collect();
        assert_eq!(shape, vec!["day", "1", "2+", "new", "3", "day", "4"]);
        assert_eq!(t.last_own(UserId(3)).map(|m| m.seq), Some(Seq(4)));
    }
}
