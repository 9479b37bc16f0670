//! History pages over REST: the newest page when a room opens (or a connection resumes), and
//! older pages, on request, below the oldest message shown until the room's first.

use crate::api;
use crate::chat::Chat;
use chat_protocol::RoomId;
use std::cell::RefCell;
use std::rc::Rc;

/// Loads the newest page of `room_id`; with `reset` it replaces what the list shows.
pub async fn load_newest(chat: &Rc<RefCell<Chat>>, room_id: RoomId, reset: bool) {
    match api::messages(room_id, None).await {
        Ok(page) => chat.borrow_mut().show_history(room_id, &page, reset),
        Err(error) => chat.borrow().show_error(&format!("history: {error}")),
    }
}

/// Loads the page right below the oldest message shown in the open room.
pub async fn load_older(chat: &Rc<RefCell<Chat>>) {
    let (room_id, before) = {
        let state = chat.borrow();
        let Some(room_id) = state.open_room() else {
            return;
        };
        match state.oldest_seq(room_id) {
            Some(before) => (room_id, before),
            None => return,
        }
    };
    match api::messages(room_id, Some(before)).await {
        Ok(page) => chat.borrow_mut().show_history(room_id, &page, false),
        Err(error) => chat.borrow().show_error(&format!("history: {error}")),
    }
}
