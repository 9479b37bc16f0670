//! The room list: the user's rooms with their unread counts; the open room is marked.
//!
//! `<li class="room" data-room-id="7" data-kind="public" data-unread="3">` holding
//! `<span class="name">` and `<span class="unread">` (empty when nothing is unread).

use chat_protocol::api::Room;
use chat_protocol::RoomId;
use std::collections::HashMap;
use wasm_bindgen::JsValue;
use web_sys::{Document, Element, Event};

/// Marks the open room.
const OPEN: &str = "open";

pub struct RoomList {
    document: Document,
    list: Element,
    elements: HashMap<RoomId, Element>,
    open: Option<RoomId>,
}

impl RoomList {
    pub fn new(document: Document, list: Element) -> RoomList {
        RoomList {
            document,
            list,
            elements: HashMap::new(),
            open: None,
        }
    }

    /// Shows these rooms, in the order given, replacing the list.
    pub fn show(&mut self, rooms: &[Room]) -> Result<(), JsValue> {
        self.list.set_text_content(None);
        self.elements.clear();
        for room in rooms {
            let item = self.document.create_element("li")?;
            item.set_class_name("room");
            item.set_attribute("data-room-id", &room.room_id.to_string())?;
            item.set_attribute("data-kind", room.kind.as_str())?;
            item.set_attribute("title", &format!("open #{}", room.name))?;
            for class in ["name", "unread"] {
                let span = self.document.create_element("span")?;
                span.set_class_name(class);
                item.append_child(&span)?;
            }
            if let Some(name) = item.query_selector(".name")? {
                name.set_text_content(Some(&room.name));
            }
            if self.open == Some(room.room_id) {
                item.class_list().add_1(OPEN)?;
            }
            self.list.append_child(&item)?;
            self.elements.insert(room.room_id, item);
            let count = room.unread.map_or(0, |unread| unread.count);
            self.set_unread(room.room_id, count)?;
        }
        Ok(())
    }

    /// Marks `room_id` as the open room (none for `None`).
    pub fn set_open(&mut self, room_id: Option<RoomId>) -> Result<(), JsValue> {
        for (id, item) in &self.elements {
            if Some(*id) == room_id {
                item.class_list().add_1(OPEN)?;
            } else {
                item.class_list().remove_1(OPEN)?;
            }
        }
        self.open = room_id;
        Ok(())
    }

    /// Shows `count` unread messages for a room (nothing for 0).
    pub fn set_unread(&mut self, room_id: RoomId, count: i64) -> Result<(), JsValue> {
        let Some(item) = self.elements.get(&room_id) else {
            return Ok(());
        };
        let count = count.max(0);
        item.set_attribute("data-unread", &count.to_string())?;
        if let Some(badge) = item.query_selector(".unread")? {
            let text = if count == 0 {
                String::new()
            } else {
                count.to_string()
            };
            badge.set_text_content(Some(&text));
        }
        Ok(())
    }

    /// One more unread message in a room.
    pub fn count_up(&mut self, room_id: RoomId) -> Result<(), JsValue> {
        let count = self
            .elements
            .get(&room_id)
            .and_then(|item| item.get_attribute("data-unread"))
            .and_then(|text| text.parse::<i64>().ok())
            .unwrap_or(0);
        self.set_unread(room_id, count + 1)
    }

    /// The room a click in the list landed on.
    pub fn clicked(event: &Event) -> Option<RoomId> {
        crate::dom::closest(event, "li.room")?
            .get_attribute("data-room-id")?
            .parse::<i64>()
            .ok()
            .map(RoomId)
    }
}
