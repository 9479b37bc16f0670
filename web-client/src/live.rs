//! The live connection to the open room: connect, join (resuming after the newest message
//! shown), load the newest history page and the members, then read and write frames until the
//! socket fails; then wait (backing off) and do it again, until the room is replaced or the
//! failure is final. Node shutdowns (close 1001) and lost networks look the same here.

use crate::api;
use crate::chat::{self, Chat, FollowUp, Target};
use crate::connection::{self, ConnectionError};
use crate::dom;
use crate::history;
use chat_protocol::{ClientFrame, RoomId};
use futures::channel::mpsc::{self, UnboundedReceiver};
use futures::future::{select, Either};
use futures::stream::{SplitSink, SplitStream};
use futures::StreamExt;
use gloo_net::websocket::futures::WebSocket;
use gloo_net::websocket::Message;
use std::cell::RefCell;
use std::pin::pin;
use std::rc::Rc;

/// The first wait before reconnecting, doubled after each failure up to the last.
const FIRST_BACKOFF_MS: u32 = 250;
const MAX_BACKOFF_MS: u32 = 8_000;

/// Loads the member list of `room_id`.
async fn load_members(chat: &Rc<RefCell<Chat>>, room_id: RoomId) {
    match api::members(room_id).await {
        Ok(members) => chat.borrow_mut().show_members(room_id, &members),
        Err(error) => chat.borrow().show_error(&format!("members: {error}")),
    }
}

/// One room's whole life in this tab: join over REST if needed, then connect, and connect
/// again with backoff whenever the connection fails, until it is replaced or cannot succeed.
pub async fn run(chat: Rc<RefCell<Chat>>, target: Target) {
    let joined = match target {
        Target::Room(room_id) => Ok(room_id),
        Target::Named { name, private } if private => api::create_private(&name).await,
        Target::Named { name, .. } => api::join_public(&name).await,
    };
    let room_id = match joined {
        Ok(room_id) => room_id,
        Err(error) => {
            let state = chat.borrow();
            state.show_error(&error.to_string());
            state.show_status(&format!("could not join: {error}"));
            return;
        }
    };
    chat.borrow_mut().set_open_room(room_id);
    chat::refresh_rooms(&chat).await;
    let mut backoff = FIRST_BACKOFF_MS;
    loop {
        let error = serve(&chat, room_id).await;
        if chat.borrow_mut().connection_lost(&error) {
            backoff = FIRST_BACKOFF_MS;
        }
        if error.is_final() {
            return;
        }
        // A connection refused for want of a session will never succeed.
        if let Err(failure) = api::me().await {
            if failure.is_unauthenticated() {
                chat.borrow().show_status("signed out: sign in again");
                return;
            }
        }
        dom::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF_MS);
    }
}

/// One connection: join the room (resuming after the newest message shown), load what the page
/// needs, then read and write until it fails.
async fn serve(chat: &Rc<RefCell<Chat>>, room_id: RoomId) -> ConnectionError {
    let url = match web_sys::window().map(|window| connection::chat_url(&window.location())) {
        Some(Ok(url)) => url,
        Some(Err(error)) => return ConnectionError::Open(dom::describe(&error)),
        None => return ConnectionError::Open("no window".to_owned()),
    };
    let after = chat.borrow().newest_seq();
    let mut socket = match connection::open(&url) {
        Ok(socket) => socket,
        Err(error) => return error,
    };
    let membership = match connection::join(&mut socket, room_id, after).await {
        Ok(membership) => membership,
        Err(error) => return error,
    };
    // Without a complete resume the list may have a hole: start it over from the newest page.
    // After a complete one the newest page still brings edits and deletes made meanwhile.
    let reset = membership.resume.is_some_and(|resume| !resume.complete);
    let (sink, stream) = socket.split();
    let (outbox, outgoing) = mpsc::unbounded();
    chat.borrow_mut().joined(membership, outbox);
    if after.is_some() {
        chat::refresh_rooms(chat).await;
    }
    history::load_newest(chat, room_id, reset).await;
    load_members(chat, room_id).await;
    // Whichever half stops first ends the connection; dropping both closes the socket.
    let reading = pin!(read_frames(chat, stream));
    let writing = pin!(write_frames(sink, outgoing));
    match select(reading, writing).await {
        Either::Left((error, _)) | Either::Right((error, _)) => error,
    }
}

async fn read_frames(
    chat: &Rc<RefCell<Chat>>,
    mut stream: SplitStream<WebSocket>,
) -> ConnectionError {
    loop {
        let frame = match connection::receive(&mut stream).await {
            Ok(frame) => frame,
            Err(error) => return error,
        };
        let follow_up = match chat.borrow_mut().handle(frame) {
            Ok(follow_up) => follow_up,
            Err(error) => return error,
        };
        if let Some(FollowUp::ReloadMembers(room_id)) = follow_up {
            let chat = Rc::clone(chat);
            wasm_bindgen_futures::spawn_local(async move { load_members(&chat, room_id).await });
        }
    }
}

async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut outgoing: UnboundedReceiver<ClientFrame>,
) -> ConnectionError {
    while let Some(frame) = outgoing.next().await {
        if let Err(error) = connection::send(&mut sink, &frame).await {
            return error;
        }
    }
    // The room was left, which drops the outbox.
    ConnectionError::Ended
}
