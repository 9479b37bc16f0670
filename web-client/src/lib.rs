//! The browser client, compiled to WebAssembly and loaded by `static/index.html`.
//!
//! - [`dom`]: the page's elements, found by the ids the browser tests rely on,
//! - [`connection`]: the WebSocket to a chat node and the `hello`/`join` handshake,
//! - [`view`]: the message list, in seq order, with pending sends,
//! - [`chat`]: the session that ties them together.
//!
//! Every frame is a `chat_protocol` type; this crate writes no JSON by hand.

mod chat;
mod connection;
mod dom;
mod view;

use chat::Chat;
use dom::Page;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use web_sys::{Event, KeyboardEvent};

/// Runs when the module is instantiated: wires the form and the composer to a [`Chat`].
#[wasm_bindgen(start)]
pub fn start() -> Result<(), JsValue> {
    let page = Page::find()?;
    page.prepare();
    if let Err(error) = attach(&page) {
        page.set_status(&format!("cannot start: {}", dom::describe(&error)));
        return Err(error);
    }
    Ok(())
}

fn attach(page: &Page) -> Result<(), JsValue> {
    let chat = Rc::new(RefCell::new(Chat::new(page.clone())));

    let form_chat = Rc::clone(&chat);
    let (name, room) = (page.name.clone(), page.room.clone());
    dom::listen(&page.join_form, "submit", move |event: Event| {
        // The page must not reload: the form only starts a connection.
        event.prevent_default();
        Chat::connect(&form_chat, name.value(), room.value());
    })?;

    dom::listen(&page.composer, "keydown", move |event: KeyboardEvent| {
        // While an input method is composing, Enter confirms the composition.
        if event.key() == "Enter" && !event.is_composing() {
            event.prevent_default();
            chat.borrow_mut().send_composed();
        }
    })
}
