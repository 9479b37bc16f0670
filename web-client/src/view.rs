//! The message list: one `li.message` per message, in seq order.
//!
//! A message this tab sends is shown at once, marked `pending`, at the bottom of the list.
//! Once the server gives it a seq (in `stored`, or in the `message` frame itself) it moves
//! to its seq position; from then on it is the same as any other message.

use chat_protocol::{ChatMessage, ClientMsgId, Seq};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Unbounded};
use wasm_bindgen::JsValue;
use web_sys::{Document, Element};

/// Marks a sent message that the server has not confirmed yet.
const PENDING: &str = "pending";
/// Marks a sent message that the server refused.
const FAILED: &str = "failed";
/// Marks messages this tab's user wrote, for styling.
const OWN: &str = "own";

pub struct MessageList {
    document: Document,
    list: Element,
    /// Every item that has a seq, so that a repeated seq is ignored and a new one finds
    /// its place without reading the DOM.
    by_seq: BTreeMap<Seq, Element>,
    /// Items sent from this tab that have no seq yet.
    awaiting_seq: HashMap<ClientMsgId, Element>,
}

impl MessageList {
    pub fn new(document: Document, list: Element) -> MessageList {
        MessageList {
            document,
            list,
            by_seq: BTreeMap::new(),
            awaiting_seq: HashMap::new(),
        }
    }

    /// Empties the list, for a new room.
    pub fn clear(&mut self) {
        self.list.set_text_content(None);
        self.by_seq.clear();
        self.awaiting_seq.clear();
    }

    /// Shows a message that arrived in the room, unless its seq is already shown.
    /// `own` says it was sent by this connection's user, so it may be one of our pending items.
    pub fn show(&mut self, message: &ChatMessage, own: bool) -> Result<(), JsValue> {
        if self.by_seq.contains_key(&message.seq) {
            return Ok(());
        }
        let sent_here = own
            .then(|| self.awaiting_seq.remove(&message.client_msg_id))
            .flatten();
        let item = match sent_here {
            Some(item) => {
                // The message is stored, which is all `pending` waits for.
                item.class_list().remove_1(PENDING)?;
                item
            }
            None => {
                let item = self.new_item(&message.sender_name, &message.body)?;
                if own {
                    item.class_list().add_1(OWN)?;
                }
                item
            }
        };
        self.place(message.seq, item)
    }

    /// Shows a message just sent from this tab, before the server has answered.
    pub fn add_pending(
        &mut self,
        client_msg_id: &ClientMsgId,
        sender_name: &str,
        body: &str,
    ) -> Result<(), JsValue> {
        let item = self.new_item(sender_name, body)?;
        item.class_list().add_2(PENDING, OWN)?;
        item.set_attribute("data-client-msg-id", &client_msg_id.0)?;
        // Items without a seq always sit at the bottom, so appending keeps the order.
        self.list.append_child(&item)?;
        self.awaiting_seq.insert(client_msg_id.clone(), item);
        self.scroll_to_bottom();
        Ok(())
    }

    /// The server has made the message durable.
    pub fn mark_accepted(&mut self, client_msg_id: &ClientMsgId) -> Result<(), JsValue> {
        match self.awaiting_seq.get(client_msg_id) {
            Some(item) => item.class_list().remove_1(PENDING),
            None => Ok(()),
        }
    }

    /// The server has stored the message under `seq`.
    pub fn mark_stored(&mut self, client_msg_id: &ClientMsgId, seq: Seq) -> Result<(), JsValue> {
        let Some(item) = self.awaiting_seq.remove(client_msg_id) else {
            return Ok(());
        };
        if self.by_seq.contains_key(&seq) {
            // A resend of a message that is already shown under its seq.
            item.remove();
            return Ok(());
        }
        item.class_list().remove_1(PENDING)?;
        self.place(seq, item)
    }

    /// The server refused the message; it stays visible, marked as failed.
    pub fn mark_failed(
        &mut self,
        client_msg_id: &ClientMsgId,
        reason: &str,
    ) -> Result<(), JsValue> {
        let Some(item) = self.awaiting_seq.remove(client_msg_id) else {
            return Ok(());
        };
        item.class_list().remove_1(PENDING)?;
        item.class_list().add_1(FAILED)?;
        item.set_attribute("title", reason)
    }

    /// Puts `item` before the first message with a larger seq, or else before the items
    /// that have no seq yet.
    fn place(&mut self, seq: Seq, item: Element) -> Result<(), JsValue> {
        item.set_attribute("data-seq", &seq.to_string())?;
        let next = match self.by_seq.range((Excluded(seq), Unbounded)).next() {
            Some((_, next)) => Some(next.clone()),
            None => self.list.query_selector("li.message:not([data-seq])")?,
        };
        self.list.insert_before(&item, next.as_deref())?;
        self.by_seq.insert(seq, item);
        self.scroll_to_bottom();
        Ok(())
    }

    /// Builds `<li class="message"><span class="sender"/><span class="body"/></li>`.
    /// Text goes in through `textContent`: a body is never parsed as HTML.
    fn new_item(&self, sender_name: &str, body: &str) -> Result<Element, JsValue> {
        let item = self.document.create_element("li")?;
        item.set_class_name("message");
        for (class, text) in [("sender", sender_name), ("body", body)] {
            let span = self.document.create_element("span")?;
            span.set_class_name(class);
            span.set_text_content(Some(text));
            item.append_child(&span)?;
        }
        Ok(item)
    }

    fn scroll_to_bottom(&self) {
        self.list.set_scroll_top(self.list.scroll_height());
    }
}
