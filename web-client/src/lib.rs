//! The browser client, compiled to WebAssembly and loaded by `static/index.html`.
//!
//! - [`dom`]: the page's elements, found by the ids the browser tests rely on, and timers,
//! - [`api`]: the REST calls (sign in, rooms, history, members); the session is an HttpOnly
//!   cookie,
//! - [`connection`]: the WebSocket to a chat node and the `welcome`/`join` handshake,
//! - [`view`]: the message list, in seq order, with pending sends, edits and deletes,
//! - [`history`]: history pages, newest first and then older on request,
//! - [`rooms`]: the room list with unread counts,
//! - [`members`]: the open room's members and their presence,
//! - [`typing`]: who is typing,
//! - [`chat`]: the session that ties them together,
//! - [`live`]: the connection to the open room, reconnected with backoff and resumed.
//!
//! Every frame is a `chat_protocol` type; this crate writes no JSON by hand.

mod api;
mod chat;
mod connection;
mod dom;
mod history;
mod live;
mod members;
mod rooms;
mod typing;
mod view;

use chat::{Chat, Target};
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

    // A session cookie from an earlier visit may still be live.
    {
        let (page, chat) = (page.clone(), Rc::clone(&chat));
        wasm_bindgen_futures::spawn_local(async move {
            if let Ok(profile) = api::me().await {
                page.set_signed_in(Some(&profile.username));
                chat::refresh_rooms(&chat).await;
            }
        });
    }

    let sign_in = |register: bool, page: Page, chat: Rc<RefCell<Chat>>| {
        wasm_bindgen_futures::spawn_local(async move {
            page.set_error("");
            match api::sign_in(register, &page.name.value(), &page.password.value()).await {
                Ok(profile) => {
                    page.password.set_value("");
                    page.set_signed_in(Some(&profile.username));
                    chat::refresh_rooms(&chat).await;
                }
                Err(error) => page.set_error(&error.to_string()),
            }
        });
    };
    {
        let (page, chat) = (page.clone(), Rc::clone(&chat));
        dom::listen(&page.auth_form.clone(), "submit", move |event: Event| {
            event.prevent_default();
            sign_in(false, page.clone(), Rc::clone(&chat));
        })?;
    }
    {
        let (page, chat) = (page.clone(), Rc::clone(&chat));
        dom::listen(
            &page.register_button.clone(),
            "click",
            move |event: Event| {
                event.prevent_default();
                sign_in(true, page.clone(), Rc::clone(&chat));
            },
        )?;
    }
    {
        let (page, chat) = (page.clone(), Rc::clone(&chat));
        dom::listen(&page.logout_button.clone(), "click", move |_: Event| {
            let (page, chat) = (page.clone(), Rc::clone(&chat));
            wasm_bindgen_futures::spawn_local(async move {
                let _ = api::logout().await;
                chat::signed_out(&chat);
                page.set_signed_in(None);
            });
        })?;
    }

    {
        let chat = Rc::clone(&chat);
        let (room, private) = (page.room.clone(), page.private.clone());
        dom::listen(&page.join_form, "submit", move |event: Event| {
            // The page must not reload: the form only starts a connection.
            event.prevent_default();
            let target = Target::Named {
                name: room.value(),
                private: private.checked(),
            };
            Chat::open(&chat, target);
        })?;
    }
    {
        let chat = Rc::clone(&chat);
        dom::listen(&page.room_list, "click", move |event: Event| {
            let Some(room_id) = rooms::RoomList::clicked(&event) else {
                return;
            };
            if chat.borrow().open_room() != Some(room_id) {
                Chat::open(&chat, Target::Room(room_id));
            }
        })?;
    }
    {
        let chat = Rc::clone(&chat);
        dom::listen(&page.composer, "keydown", move |event: KeyboardEvent| {
            // While an input method is composing, Enter confirms the composition.
            if event.key() == "Enter" && !event.is_composing() {
                event.prevent_default();
                chat.borrow_mut().send_composed();
            }
        })?;
    }
    {
        let chat = Rc::clone(&chat);
        dom::listen(&page.composer, "input", move |_: Event| {
            chat.borrow_mut().typed()
        })?;
    }
    // The message controls (edit, delete) and the editor's keys, for every message at once.
    for event in ["click", "keydown"] {
        let chat = Rc::clone(&chat);
        dom::listen(&page.messages, event, move |event: Event| {
            if let Some(action) = view::MessageList::action(&event) {
                event.prevent_default();
                chat.borrow_mut().act(action);
            }
        })?;
    }
    {
        let chat = Rc::clone(&chat);
        dom::listen(&page.messages, "scroll", move |_: Event| {
            chat.borrow_mut().scrolled()
        })?;
    }
    {
        let chat = Rc::clone(&chat);
        dom::listen(&page.load_older, "click", move |_: Event| {
            let chat = Rc::clone(&chat);
            wasm_bindgen_futures::spawn_local(async move { history::load_older(&chat).await });
        })?;
    }
    dom::listen(&page.document, "visibilitychange", move |_: Event| {
        chat.borrow_mut().visibility_changed();
    })
}
