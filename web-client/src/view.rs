//! The message list: one `li.message` per message, in seq order, each seq once.
//!
//! A message this tab sends is shown at once, marked `pending`, at the bottom of the list.
//! Once the server gives it a seq (in `stored`, or in the `message` frame itself) it moves
//! to its seq position; from then on it is the same as any other message.
//!
//! Messages come from history pages and from live frames in any order and overlap; a seq
//! already shown is only updated. Edits and deletes only move forward: a deleted message stays
//! deleted, and an edit older than the shown one is ignored, so a history page fetched before
//! a live edit cannot undo it. A change for a seq not shown yet is kept until it is.
//!
//! An item: `<li class="message [own] [edited] [deleted]" data-seq="42">` with
//! `<span class="sender">`, `<span class="body">`, `<span class="edited-mark">(edited)</span>`
//! when edited, and for the user's own messages `<span class="controls">` with
//! `<button class="edit">` and `<button class="delete">`. While editing, the body is an
//! `<input class="edit-input">`.

use crate::dom;
use chat_protocol::{ChatMessage, ClientMsgId, Seq};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Unbounded};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{Document, Element, Event, HtmlButtonElement, HtmlInputElement, KeyboardEvent};

/// Marks a sent message that the server has not confirmed yet.
const PENDING: &str = "pending";
/// Marks a sent message that the server refused.
const FAILED: &str = "failed";
/// Marks messages this tab's user wrote, for styling.
const OWN: &str = "own";
/// Shown in place of a deleted message.
pub const DELETED_TEXT: &str = "message deleted";
/// How close to the bottom (in pixels) still counts as reading the newest messages.
const AT_BOTTOM_SLACK: i32 = 24;

/// What the user asked for with a message's controls.
pub enum Action {
    /// Open the editor on one of the user's messages.
    Edit(Seq),
    /// Save the editor's text.
    Save(Seq, String),
    /// Close the editor without saving.
    Cancel(Seq),
    Delete(Seq),
}

/// A change that arrived for a seq not shown yet.
enum Change {
    Edited { body: String, at_ms: i64 },
    Deleted,
}

/// A message shown under its seq.
struct Shown {
    item: Element,
    sender: String,
    body: String,
    own: bool,
    edited_at_ms: Option<i64>,
    deleted: bool,
}

/// A message sent from this tab that has no seq yet.
struct Pending {
    item: Element,
    body: String,
    failed: bool,
}

pub struct MessageList {
    document: Document,
    list: Element,
    /// "Load older messages", shown while the oldest message shown is not the room's first.
    load_older: HtmlButtonElement,
    by_seq: BTreeMap<Seq, Shown>,
    awaiting_seq: HashMap<ClientMsgId, Pending>,
    early_changes: HashMap<Seq, Change>,
}

impl MessageList {
    pub fn new(document: Document, list: Element, load_older: HtmlButtonElement) -> MessageList {
        let messages = MessageList {
            document,
            list,
            load_older,
            by_seq: BTreeMap::new(),
            awaiting_seq: HashMap::new(),
            early_changes: HashMap::new(),
        };
        messages.update_load_older();
        messages
    }

    /// Empties the list, for a new room (or a history that has to be loaded afresh).
    pub fn clear(&mut self) {
        self.list.set_text_content(None);
        self.by_seq.clear();
        self.awaiting_seq.clear();
        self.early_changes.clear();
        self.update_load_older();
    }

    /// Empties the list but for this tab's sends the server has not confirmed, which stay at
    /// the bottom (shown as sent by `sender`) to be sent again.
    pub fn restart(&mut self, sender: &str) -> Result<(), JsValue> {
        let unsent = self.unconfirmed();
        self.clear();
        for (client_msg_id, body) in unsent {
            self.add_pending(&client_msg_id, sender, &body)?;
        }
        Ok(())
    }

    /// The newest seq shown, which a resume continues after.
    pub fn newest_seq(&self) -> Option<Seq> {
        self.by_seq.keys().next_back().copied()
    }

    /// The oldest seq shown, which the next older history page ends below.
    pub fn oldest_seq(&self) -> Option<Seq> {
        self.by_seq.keys().next().copied()
    }

    /// Sends from this tab that the server has neither stored nor refused, oldest first, to
    /// send again (with the same ids) after a reconnect.
    pub fn unconfirmed(&self) -> Vec<(ClientMsgId, String)> {
        let mut pending: Vec<(&ClientMsgId, &Pending)> = self
            .awaiting_seq
            .iter()
            .filter(|(_, pending)| !pending.failed)
            .collect();
        pending.sort_by_key(|(id, _)| sent_order(id));
        pending
            .into_iter()
            .map(|(id, pending)| (id.clone(), pending.body.clone()))
            .collect()
    }

    /// Whether the list is scrolled to its newest messages.
    pub fn at_bottom(&self) -> bool {
        let list = &self.list;
        list.scroll_top() + list.client_height() >= list.scroll_height() - AT_BOTTOM_SLACK
    }

    /// Shows a message from a live frame or a history page. A seq already shown only takes
    /// the message's edit or delete, if newer. `own` says it was sent by this user, so it may
    /// be one of this tab's pending items.
    pub fn show(&mut self, message: &ChatMessage, own: bool) -> Result<(), JsValue> {
        if self.by_seq.contains_key(&message.seq) {
            if message.deleted {
                return self.deleted(message.seq);
            }
            return match message.edited_at_ms {
                Some(at_ms) => self.edited(message.seq, &message.body, at_ms),
                None => Ok(()),
            };
        }
        let sent_here = own
            .then(|| self.awaiting_seq.remove(&message.client_msg_id))
            .flatten();
        let item = match sent_here {
            Some(pending) => pending.item,
            None => self.document.create_element("li")?,
        };
        let mut shown = Shown {
            item,
            sender: message.sender_name.clone(),
            body: message.body.clone(),
            own,
            edited_at_ms: message.edited_at_ms,
            deleted: message.deleted,
        };
        match self.early_changes.remove(&message.seq) {
            Some(Change::Deleted) => shown.deleted = true,
            Some(Change::Edited { body, at_ms }) if Some(at_ms) > shown.edited_at_ms => {
                shown.body = body;
                shown.edited_at_ms = Some(at_ms);
            }
            _ => {}
        }
        self.render(&shown)?;
        self.place(message.seq, shown)
    }

    /// Shows a message just sent from this tab, before the server has answered.
    pub fn add_pending(
        &mut self,
        client_msg_id: &ClientMsgId,
        sender_name: &str,
        body: &str,
    ) -> Result<(), JsValue> {
        let item = self.document.create_element("li")?;
        item.set_class_name("message own pending");
        append_span(&self.document, &item, "sender", sender_name)?;
        append_span(&self.document, &item, "body", body)?;
        item.set_attribute("data-client-msg-id", &client_msg_id.0)?;
        // Items without a seq always sit at the bottom, so appending keeps the order.
        self.list.append_child(&item)?;
        self.awaiting_seq.insert(
            client_msg_id.clone(),
            Pending {
                item,
                body: body.to_owned(),
                failed: false,
            },
        );
        self.scroll_to_bottom();
        Ok(())
    }

    /// The server has made the message durable.
    pub fn mark_accepted(&mut self, client_msg_id: &ClientMsgId) -> Result<(), JsValue> {
        match self.awaiting_seq.get(client_msg_id) {
            Some(pending) => pending.item.class_list().remove_1(PENDING),
            None => Ok(()),
        }
    }

    /// The server has stored the message under `seq`.
    pub fn mark_stored(
        &mut self,
        client_msg_id: &ClientMsgId,
        seq: Seq,
        sender: &str,
    ) -> Result<(), JsValue> {
        let Some(pending) = self.awaiting_seq.remove(client_msg_id) else {
            return Ok(());
        };
        if self.by_seq.contains_key(&seq) {
            // A resend of a message that is already shown under its seq.
            pending.item.remove();
            return Ok(());
        }
        let shown = Shown {
            item: pending.item,
            sender: sender.to_owned(),
            body: pending.body,
            own: true,
            edited_at_ms: None,
            deleted: false,
        };
        self.render(&shown)?;
        self.place(seq, shown)
    }

    /// The server refused the message; it stays visible, marked as failed.
    pub fn mark_failed(
        &mut self,
        client_msg_id: &ClientMsgId,
        reason: &str,
    ) -> Result<(), JsValue> {
        let Some(pending) = self.awaiting_seq.get_mut(client_msg_id) else {
            return Ok(());
        };
        pending.failed = true;
        pending.item.class_list().remove_1(PENDING)?;
        pending.item.class_list().add_1(FAILED)?;
        pending.item.set_attribute("title", reason)
    }

    /// A message's body was edited at `at_ms`.
    pub fn edited(&mut self, seq: Seq, body: &str, at_ms: i64) -> Result<(), JsValue> {
        let Some(shown) = self.by_seq.get_mut(&seq) else {
            let newer = match self.early_changes.get(&seq) {
                Some(Change::Deleted) => false,
                Some(Change::Edited { at_ms: earlier, .. }) => at_ms > *earlier,
                None => true,
            };
            if newer {
                let body = body.to_owned();
                self.early_changes
                    .insert(seq, Change::Edited { body, at_ms });
            }
            return Ok(());
        };
        if shown.deleted || Some(at_ms) <= shown.edited_at_ms {
            return Ok(());
        }
        shown.body = body.to_owned();
        shown.edited_at_ms = Some(at_ms);
        self.render_seq(seq)
    }

    /// A message was deleted: its place shows a placeholder.
    pub fn deleted(&mut self, seq: Seq) -> Result<(), JsValue> {
        let Some(shown) = self.by_seq.get_mut(&seq) else {
            self.early_changes.insert(seq, Change::Deleted);
            return Ok(());
        };
        if shown.deleted {
            return Ok(());
        }
        shown.deleted = true;
        shown.body.clear();
        self.render_seq(seq)
    }

    /// Replaces a message's body with an editor holding its text.
    pub fn begin_edit(&self, seq: Seq) -> Result<(), JsValue> {
        let Some(shown) = self
            .by_seq
            .get(&seq)
            .filter(|shown| shown.own && !shown.deleted)
        else {
            return Ok(());
        };
        let Some(body) = shown.item.query_selector(".body")? else {
            return Ok(());
        };
        let input: HtmlInputElement = self.document.create_element("input")?.unchecked_into();
        input.set_class_name("edit-input");
        input.set_value(&shown.body);
        input.set_attribute("aria-label", "Edit the message, then press Enter")?;
        input.set_max_length(
            i32::try_from(chat_protocol::limits::MAX_BODY_CHARS).unwrap_or(i32::MAX),
        );
        shown.item.replace_child(&input, &body)?;
        if let Some(controls) = shown.item.query_selector(".controls")? {
            controls.remove();
        }
        input.focus()
    }

    /// Closes the editor, showing the message as it is.
    pub fn end_edit(&self, seq: Seq) -> Result<(), JsValue> {
        self.render_seq(seq)
    }

    /// The body a message shows now (empty when deleted or unknown).
    pub fn body_of(&self, seq: Seq) -> &str {
        self.by_seq
            .get(&seq)
            .map_or("", |shown| shown.body.as_str())
    }

    /// What a click or key press in the list asks for, if anything.
    pub fn action(event: &Event) -> Option<Action> {
        let item = dom::closest(event, "li.message[data-seq]")?;
        let seq = Seq(item.get_attribute("data-seq")?.parse().ok()?);
        if let Some(key) = event.dyn_ref::<KeyboardEvent>() {
            let input = dom::closest(event, "input.edit-input")?
                .dyn_into::<HtmlInputElement>()
                .ok()?;
            return match key.key().as_str() {
                "Enter" if !key.is_composing() => Some(Action::Save(seq, input.value())),
                "Escape" => Some(Action::Cancel(seq)),
                _ => None,
            };
        }
        let button = dom::closest(event, "button")?;
        if button.class_list().contains("edit") {
            Some(Action::Edit(seq))
        } else if button.class_list().contains("delete") {
            Some(Action::Delete(seq))
        } else {
            None
        }
    }

    fn render_seq(&self, seq: Seq) -> Result<(), JsValue> {
        match self.by_seq.get(&seq) {
            Some(shown) => self.render(shown),
            None => Ok(()),
        }
    }

    /// Rebuilds an item from its state. Text goes in through `textContent`: a body is never
    /// parsed as HTML.
    fn render(&self, shown: &Shown) -> Result<(), JsValue> {
        let item = &shown.item;
        item.set_text_content(None);
        item.set_class_name("message");
        let classes = item.class_list();
        if shown.own {
            classes.add_1(OWN)?;
        }
        append_span(&self.document, item, "sender", &shown.sender)?;
        if shown.deleted {
            classes.add_1("deleted")?;
            append_span(&self.document, item, "body", DELETED_TEXT)?;
            return Ok(());
        }
        append_span(&self.document, item, "body", &shown.body)?;
        if shown.edited_at_ms.is_some() {
            classes.add_1("edited")?;
            append_span(&self.document, item, "edited-mark", "(edited)")?;
        }
        if shown.own {
            let controls = append_span(&self.document, item, "controls", "")?;
            for (class, label) in [("edit", "edit"), ("delete", "delete")] {
                let button = self.document.create_element("button")?;
                button.set_class_name(class);
                button.set_attribute("type", "button")?;
                button.set_text_content(Some(label));
                controls.append_child(&button)?;
            }
        }
        Ok(())
    }

    /// Puts the item before the first message with a larger seq, or else before the items
    /// that have no seq yet. An older message keeps what the reader sees in place; a newest
    /// one scrolls into view if the reader was at the bottom.
    fn place(&mut self, seq: Seq, shown: Shown) -> Result<(), JsValue> {
        shown.item.set_attribute("data-seq", &seq.to_string())?;
        let later = self
            .by_seq
            .range((Excluded(seq), Unbounded))
            .next()
            .map(|(_, next)| next.item.clone());
        let following_bottom = self.at_bottom();
        let height = self.list.scroll_height();
        match &later {
            Some(next) => self.list.insert_before(&shown.item, Some(next))?,
            None => {
                let unsent = self.list.query_selector("li.message:not([data-seq])")?;
                self.list
                    .insert_before(&shown.item, unsent.as_ref().map(|item| item.as_ref()))?
            }
        };
        self.by_seq.insert(seq, shown);
        if later.is_none() && following_bottom {
            self.scroll_to_bottom();
        } else if later.is_some() {
            let grown = self.list.scroll_height() - height;
            self.list.set_scroll_top(self.list.scroll_top() + grown);
        }
        self.update_load_older();
        Ok(())
    }

    fn update_load_older(&self) {
        let more = self.oldest_seq().is_some_and(|oldest| oldest > Seq(1));
        self.load_older.set_hidden(!more);
    }

    fn scroll_to_bottom(&self) {
        self.list.set_scroll_top(self.list.scroll_height());
    }
}

/// Appends `<span class="…">text</span>` to `parent` and returns it.
fn append_span(
    document: &Document,
    parent: &Element,
    class: &str,
    text: &str,
) -> Result<Element, JsValue> {
    let span = document.create_element("span")?;
    span.set_class_name(class);
    span.set_text_content(Some(text));
    parent.append_child(&span)?;
    Ok(span)
}

/// The per-tab counter that ends every client message id this tab makes (see
/// `chat::new_client_msg_id`), so unconfirmed sends are resent in the order they were written.
fn sent_order(id: &ClientMsgId) -> u64 {
    id.0.rsplit('-')
        .next()
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}
