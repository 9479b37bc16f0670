//! The one WebSocket of a signed-in tab: connect, wait for `welcome`, join the open room
//! (resuming after the newest message shown), then apply every frame to the state until the
//! socket fails; then wait, backing off, and connect again. Close code 4001 (the session
//! ended) signs the tab out instead.
//!
//! Rooms that are not open are not joined: the server tells this connection about their new
//! messages with `room_activity`, and about changes to the room list with `rooms_changed`.

use crate::browser;
use crate::state::{App, Link, Typist};
use crate::words;
use chat_protocol::limits::CLOSE_SESSION_ENDED;
use chat_protocol::{ClientFrame, RoomId, ServerFrame};
use futures::channel::mpsc;
use futures::future::{select, Either};
use futures::{SinkExt, StreamExt};
use gloo_net::websocket::futures::WebSocket;
use gloo_net::websocket::{Message, WebSocketError};
use leptos::prelude::*;
use leptos::task::spawn_local;
use std::pin::pin;

const FIRST_BACKOFF_MS: u32 = 250;
const MAX_BACKOFF_MS: u32 = 5_000;

/// How a connection ended.
enum End {
    /// Lost; connect again. The reason in plain words.
    Lost(String),
    /// The session ended: sign in again.
    SessionEnded,
    /// This connection belongs to an earlier sign-in.
    Stale,
}

/// Starts the connection task of the current sign-in.
pub fn start(app: App) {
    let generation = app.generation.get_value();
    app.link.set(Link::Connecting);
    spawn_local(async move {
        let mut backoff = FIRST_BACKOFF_MS;
        let mut was_live = false;
        loop {
            if app.generation.get_value() != generation {
                return;
            }
            let end = serve(app, generation, &mut was_live).await;
            app.outbox.set_value(None);
            match end {
                End::Stale => return,
                End::SessionEnded => {
                    app.signed_out(Some("Your session has ended. Sign in again.".to_owned()));
                    return;
                }
                End::Lost(reason) => {
                    if app.generation.get_value() != generation {
                        return;
                    }
                    // What was sent and not answered may or may not have arrived: the user
                    // retries it with the same id, which the server stores at most once.
                    app.timeline.update(|t| {
                        t.fail_pending("The connection was lost before the server answered.")
                    });
                    app.link.set(if browser::online() {
                        Link::Reconnecting(reason)
                    } else {
                        Link::Offline
                    });
                    if was_live {
                        backoff = FIRST_BACKOFF_MS;
                        was_live = false;
                    }
                    browser::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF_MS);
                }
            }
        }
    });
}

fn chat_url() -> Option<String> {
    let location = web_sys::window()?.location();
    let scheme = if location.protocol().ok()? == "https:" {
        "wss"
    } else {
        "ws"
    };
    Some(format!("{scheme}://{}/ws", location.host().ok()?))
}

fn describe(error: &WebSocketError) -> End {
    match error {
        WebSocketError::ConnectionClose(close) if close.code == CLOSE_SESSION_ENDED => {
            End::SessionEnded
        }
        WebSocketError::ConnectionClose(close) if close.code == 1001 => {
            End::Lost("The server is restarting.".to_owned())
        }
        _ => End::Lost("The connection to the server was lost.".to_owned()),
    }
}

async fn serve(app: App, generation: u64, was_live: &mut bool) -> End {
    let Some(url) = chat_url() else {
        return End::Lost("The page has no address.".to_owned());
    };
    let socket = match WebSocket::open(&url) {
        Ok(socket) => socket,
        Err(_) => return End::Lost("The server cannot be reached.".to_owned()),
    };
    let (mut sink, mut stream) = socket.split();
    // Nothing is sent before `welcome`: a refused socket (no session) closes first.
    match receive(&mut stream).await {
        Ok(ServerFrame::Welcome { .. }) => {}
        Ok(_) => {}
        Err(end) => {
            // A socket refused at the handshake has no close code; ask whether the session
            // is still there.
            if let Err(failure) = crate::api::me().await {
                if failure.code() == Some(chat_protocol::ErrorCode::Unauthenticated) {
                    return End::SessionEnded;
                }
            }
            return end;
        }
    }
    if app.generation.get_value() != generation {
        return End::Stale;
    }
    let (outbox, mut outgoing) = mpsc::unbounded::<ClientFrame>();
    app.outbox.set_value(Some(outbox));
    *was_live = true;
    app.link.set(Link::Live);
    if browser::page_hidden() {
        app.send_frame(ClientFrame::Presence {
            status: chat_protocol::PresenceStatus::Away,
        });
    }
    // Counts and the room list may have moved while away.
    app.reload_rooms();
    if let Some(room_id) = app.open.get_untracked() {
        let after = app.timeline.with_untracked(|t| t.newest_seq());
        app.send_frame(ClientFrame::Join { room_id, after });
        if after.is_some() {
            // Edits and deletes made meanwhile come with the newest page.
            app.load_newest(room_id);
            app.load_members(room_id);
        }
    }
    let reading = pin!(async {
        loop {
            match receive(&mut stream).await {
                Ok(frame) => {
                    if app.generation.get_value() != generation {
                        return End::Stale;
                    }
                    apply(app, frame);
                }
                Err(end) => return end,
            }
        }
    });
    let writing = pin!(async {
        while let Some(frame) = outgoing.next().await {
            let Ok(text) = serde_json::to_string(&frame) else {
                continue;
            };
            if let Err(error) = sink.send(Message::Text(text)).await {
                return describe(&error);
            }
        }
        End::Stale
    });
    match select(reading, writing).await {
        Either::Left((end, _)) | Either::Right((end, _)) => end,
    }
}

async fn receive<S>(stream: &mut S) -> Result<ServerFrame, End>
where
    S: futures::Stream<Item = Result<Message, WebSocketError>> + Unpin,
{
    loop {
        match stream.next().await {
            None => {
                return Err(End::Lost(
                    "The connection to the server was lost.".to_owned(),
                ))
            }
            Some(Err(error)) => return Err(describe(&error)),
            Some(Ok(Message::Text(text))) => {
                // A newer server may send frames this client does not know: skip them.
                if let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) {
                    return Ok(frame);
                }
            }
            Some(Ok(Message::Bytes(_))) => {}
        }
    }
}

/// Applies one frame to the state.
fn apply(app: App, frame: ServerFrame) {
    let open = app.open.get_untracked();
    let Some(me) = app.my_id() else {
        return;
    };
    match frame {
        ServerFrame::Message(message) => {
            if Some(message.room_id) != open {
                return;
            }
            let (room_id, seq, sender) = (message.room_id, message.seq, message.sender_id);
            // Someone who came in while the room was open: the members panel learns of them.
            let stranger = app
                .members
                .with_untracked(|members| !members.iter().any(|m| m.user_id == sender));
            if stranger {
                app.load_members(room_id);
            }
            let announce = (sender != me && !message.deleted)
                .then(|| format!("{}: {}", message.sender_name, message.body));
            let new = app
                .timeline
                .try_update(|t| t.apply_message(message, Some(me)))
                .unwrap_or(false);
            app.typing
                .update(|t| t.retain(|typist| typist.user_id != sender));
            app.rooms.update(|r| {
                r.activity(room_id, seq, sender, me);
            });
            if new {
                if let Some(text) = announce {
                    app.announcement.set(text);
                    notify_direct(app, room_id, sender, me);
                }
            }
            app.mark_read();
        }
        ServerFrame::RoomActivity {
            room_id,
            seq,
            sender_id,
        } => {
            if Some(room_id) == open {
                return;
            }
            let known = app.rooms.with_untracked(|r| r.get(room_id).is_some());
            if !known {
                app.reload_rooms();
                return;
            }
            let counted = app
                .rooms
                .try_update(|r| r.activity(room_id, seq, sender_id, me))
                .unwrap_or(0);
            if counted > 0 {
                notify_direct(app, room_id, sender_id, me);
            }
        }
        ServerFrame::RoomsChanged => app.reload_rooms(),
        ServerFrame::Stored {
            room_id,
            client_msg_id,
            seq,
            ..
        } => {
            if Some(room_id) == open {
                let name = app.me.with_untracked(|p| {
                    p.as_ref()
                        .map(|p| p.display_name.clone())
                        .unwrap_or_default()
                });
                app.timeline
                    .update(|t| t.stored(&client_msg_id, seq, me, &name));
                app.rooms.update(|r| {
                    r.activity(room_id, seq, me, me);
                });
            }
        }
        ServerFrame::Accepted { .. } | ServerFrame::Welcome { .. } => {}
        ServerFrame::Joined {
            room_id, resume, ..
        } => {
            // Too many were missed to resume: start over from the newest page.
            if resume.is_some_and(|r| !r.complete) && Some(room_id) == open {
                app.timeline.update(|t| t.restart());
                app.load_newest(room_id);
            }
        }
        ServerFrame::Left { room_id } => {
            if Some(room_id) == open {
                app.reload_rooms();
            }
        }
        ServerFrame::MessageEdited {
            room_id,
            seq,
            body,
            edited_at_ms,
        } => {
            if Some(room_id) == open {
                app.timeline.update(|t| t.edited(seq, body, edited_at_ms));
            }
        }
        ServerFrame::MessageDeleted { room_id, seq, .. } => {
            if Some(room_id) == open {
                app.timeline.update(|t| t.deleted(seq));
                if app.editing.get_untracked() == Some(seq) {
                    app.editing.set(None);
                }
            }
        }
        ServerFrame::ReadMarker {
            room_id,
            seq,
            unread,
        } => app.rooms.update(|r| r.read_marker(room_id, seq, unread)),
        ServerFrame::Presence { user_id, status } => app.members.update(|members| {
            for member in members.iter_mut().filter(|m| m.user_id == user_id) {
                member.presence = status;
            }
        }),
        ServerFrame::Typing {
            room_id,
            user_id,
            name,
            expires_in_ms,
        } => {
            if Some(room_id) == open && user_id != me {
                let until_ms = browser::now_ms() + expires_in_ms as f64;
                app.typing.update(|t| {
                    t.retain(|typist| typist.user_id != user_id);
                    t.push(Typist {
                        user_id,
                        name,
                        until_ms,
                    });
                });
                spawn_local(async move {
                    browser::sleep(u32::try_from(expires_in_ms).unwrap_or(5_000) + 50).await;
                    let now = browser::now_ms();
                    app.typing
                        .update(|t| t.retain(|typist| typist.until_ms > now));
                });
            }
        }
        ServerFrame::Error {
            code,
            message,
            client_msg_id,
            ..
        } => {
            let text = words::error(code, &message);
            match client_msg_id {
                Some(id) => app.timeline.update(|t| t.failed(&id, &text)),
                None => app.notice.set(Some(text)),
            }
        }
    }
}

/// A direct message from someone else while the tab is hidden: a browser notification.
fn notify_direct(
    app: App,
    room_id: RoomId,
    sender: chat_protocol::UserId,
    me: chat_protocol::UserId,
) {
    if sender == me || !browser::page_hidden() {
        return;
    }
    let room = app.rooms.with_untracked(|r| r.get(room_id).cloned());
    if let Some(entry) = room.filter(|e| e.is_direct()) {
        let title = words::room_title(&entry.room.name, true, &app.my_username());
        browser::notify(
            &format!("New message from {title}"),
            "Open the chat to read it.",
        );
    }
}
