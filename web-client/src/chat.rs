//! The chat session: opening a room, sending from the composer, editing and deleting, and
//! applying the server's frames to the page. The connection to the open room is kept up by
//! [`live::run`].
//!
//! All state lives in one `Chat` behind `Rc<RefCell<_>>`. Every borrow ends before an
//! `.await`, so event handlers and the connection task never hold it at the same time.

use crate::api;
use crate::connection::{ConnectionError, Membership};
use crate::dom::{self, Page};
use crate::live;
use crate::members::MemberList;
use crate::rooms::RoomList;
use crate::typing::TypingIndicator;
use crate::view::{Action, MessageList};
use chat_protocol::api::Member;
use chat_protocol::frame::validate_body;
use chat_protocol::{
    ChatMessage, ClientFrame, ClientMsgId, PresenceStatus, RoomId, Seq, ServerFrame,
};
use futures::channel::mpsc::UnboundedSender;
use futures::future::{AbortHandle, Abortable};
use std::cell::RefCell;
use std::rc::Rc;

/// At most one `typing` frame per this many milliseconds (the server forwards no more).
const TYPING_EVERY_MS: f64 = 2_000.0;

/// The room to open.
pub enum Target {
    /// A public room by name, joined (or created) over REST first; a new private room when
    /// `private`.
    Named { name: String, private: bool },
    /// One of the user's rooms.
    Room(RoomId),
}

pub struct Chat {
    page: Page,
    messages: MessageList,
    members: MemberList,
    typing: TypingIndicator,
    rooms: RoomList,
    /// Stops the current connection task, which closes its socket.
    connection: Option<AbortHandle>,
    /// The room this tab shows, from the moment it is opened (also while reconnecting).
    open_room: Option<RoomId>,
    /// Set while the server has the room joined on a live connection.
    room: Option<JoinedRoom>,
    /// Makes each client message id unique within this tab.
    sent_count: u64,
    /// When the last `typing` frame went out (browser clock).
    last_typing_ms: f64,
    /// The newest seq this tab has reported read in the open room.
    marked_read: Option<Seq>,
}

struct JoinedRoom {
    membership: Membership,
    /// Frames for the connection task to write to the socket.
    outbox: UnboundedSender<ClientFrame>,
}

/// Work a frame calls for that needs the network, done after the state is released.
pub enum FollowUp {
    /// Someone not in the member list showed up: load it again.
    ReloadMembers(RoomId),
}

impl Chat {
    pub fn new(page: Page) -> Chat {
        let document = page.document.clone();
        Chat {
            messages: MessageList::new(
                document.clone(),
                page.messages.clone(),
                page.load_older.clone(),
            ),
            members: MemberList::new(document.clone(), page.members.clone()),
            typing: TypingIndicator::new(page.typing.clone()),
            rooms: RoomList::new(document, page.room_list.clone()),
            page,
            connection: None,
            open_room: None,
            room: None,
            sent_count: 0,
            last_typing_ms: 0.0,
            marked_read: None,
        }
    }

    /// Leaves whatever room this tab was in and opens `target` on a new connection.
    pub fn open(chat: &Rc<RefCell<Chat>>, target: Target) {
        let (abort, registration) = AbortHandle::new_pair();
        {
            let mut state = chat.borrow_mut();
            state.disconnect();
            state.connection = Some(abort);
            state.clear_room();
            state.page.set_error("");
        }
        let task = Abortable::new(live::run(Rc::clone(chat), target), registration);
        wasm_bindgen_futures::spawn_local(async move {
            // An aborted task was replaced by a newer one, which now owns the page.
            let _ = task.await;
        });
    }

    /// The room this tab shows, if any.
    pub fn open_room(&self) -> Option<RoomId> {
        self.open_room
    }

    /// Sends the composer's text to the room, if it is a valid message.
    pub fn send_composed(&mut self) {
        let Some(room) = &self.room else {
            return;
        };
        let body = self.page.composer.value();
        if body.is_empty() {
            return;
        }
        // The server checks this too; checking here first keeps a message that cannot
        // be sent out of the list.
        if let Err(error) = validate_body(&body) {
            self.page.set_error(&error.to_string());
            return;
        }
        self.sent_count += 1;
        let client_msg_id = new_client_msg_id(self.sent_count);
        let frame = ClientFrame::Send {
            room_id: room.membership.room_id,
            client_msg_id: client_msg_id.clone(),
            body: body.clone(),
        };
        if room.outbox.unbounded_send(frame).is_err() {
            self.page.set_status("not connected");
            return;
        }
        let shown = self
            .messages
            .add_pending(&client_msg_id, &room.membership.name, &body);
        self.report(shown);
        self.page.composer.set_value("");
        self.last_typing_ms = 0.0;
    }

    /// The composer changed: tell the room the user is typing, at most every 2 seconds.
    pub fn typed(&mut self) {
        let now = dom::now_ms();
        if self.page.composer.value().is_empty() || now - self.last_typing_ms < TYPING_EVERY_MS {
            return;
        }
        if let Some(room_id) = self.joined_room() {
            if self.send_frame(ClientFrame::Typing { room_id }) {
                self.last_typing_ms = now;
            }
        }
    }

    /// Carries out what the user asked for with a message's controls.
    pub fn act(&mut self, action: Action) {
        let Some(room_id) = self.joined_room() else {
            return;
        };
        let result = match action {
            Action::Edit(seq) => self.messages.begin_edit(seq),
            Action::Cancel(seq) => self.messages.end_edit(seq),
            Action::Save(seq, body) => {
                if body == self.messages.body_of(seq) {
                    self.messages.end_edit(seq)
                } else if let Err(error) = validate_body(&body) {
                    self.page.set_error(&error.to_string());
                    Ok(())
                } else {
                    self.send_frame(ClientFrame::Edit { room_id, seq, body });
                    // The message shows its new text when the server's `message_edited` comes.
                    self.messages.end_edit(seq)
                }
            }
            Action::Delete(seq) => {
                self.send_frame(ClientFrame::Delete { room_id, seq });
                Ok(())
            }
        };
        self.report(result);
    }

    /// The page was hidden or shown again: the user is away or back.
    pub fn visibility_changed(&mut self) {
        let status = if dom::page_hidden(&self.page.document) {
            PresenceStatus::Away
        } else {
            PresenceStatus::Online
        };
        self.send_frame(ClientFrame::Presence { status });
        self.mark_read_if_seen();
    }

    /// The message list moved; the newest messages may be in view now.
    pub fn scrolled(&mut self) {
        self.mark_read_if_seen();
    }

    /// Shows a history page of `room_id` (if it is still open); with `reset` the list starts
    /// over from it, keeping only sends not yet confirmed.
    pub fn show_history(&mut self, room_id: RoomId, page: &[ChatMessage], reset: bool) {
        if self.open_room != Some(room_id) {
            return;
        }
        if reset {
            let sender = self.room.as_ref().map(|room| room.membership.name.clone());
            let result = self.messages.restart(sender.as_deref().unwrap_or(""));
            self.report(result);
        }
        let own_id = self.room.as_ref().map(|room| room.membership.user_id);
        for message in page {
            let own = Some(message.sender_id) == own_id;
            let result = self.messages.show(message, own);
            self.report(result);
        }
        self.mark_read_if_seen();
    }

    /// Shows the member list of `room_id` (if it is still open).
    pub fn show_members(&mut self, room_id: RoomId, members: &[Member]) {
        if self.open_room == Some(room_id) {
            let result = self.members.show(members);
            self.report(result);
        }
    }

    /// Shows the user's rooms with their unread counts.
    pub fn show_rooms(&mut self, rooms: &[chat_protocol::api::Room]) {
        let mut result = self.rooms.show(rooms);
        if result.is_ok() {
            result = self.rooms.set_open(self.open_room);
        }
        self.report(result);
    }

    /// The oldest seq shown in `room_id`, if it is open.
    pub fn oldest_seq(&self, room_id: RoomId) -> Option<Seq> {
        (self.open_room == Some(room_id))
            .then(|| self.messages.oldest_seq())
            .flatten()
    }

    pub fn show_error(&self, text: &str) {
        self.page.set_error(text);
    }

    pub fn show_status(&self, text: &str) {
        self.page.set_status(text);
    }

    /// From now on `room_id` is the room this tab shows.
    pub fn set_open_room(&mut self, room_id: RoomId) {
        self.open_room = Some(room_id);
        let result = self.rooms.set_open(Some(room_id));
        self.report(result);
    }

    /// The newest seq shown, which a resume continues after.
    pub fn newest_seq(&self) -> Option<Seq> {
        self.messages.newest_seq()
    }

    fn joined_room(&self) -> Option<RoomId> {
        self.room.as_ref().map(|room| room.membership.room_id)
    }

    /// Queues a frame for the socket; false when there is no live connection.
    fn send_frame(&self, frame: ClientFrame) -> bool {
        match &self.room {
            Some(room) => room.outbox.unbounded_send(frame).is_ok(),
            None => false,
        }
    }

    /// Reports the newest message shown as read, if the user is looking at it.
    fn mark_read_if_seen(&mut self) {
        let (Some(room_id), Some(newest)) = (self.joined_room(), self.messages.newest_seq()) else {
            return;
        };
        let seen = !dom::page_hidden(&self.page.document) && self.messages.at_bottom();
        if !seen || self.marked_read.is_some_and(|marked| newest <= marked) {
            return;
        }
        let frame = ClientFrame::MarkRead {
            room_id,
            seq: newest,
        };
        if self.send_frame(frame) {
            self.marked_read = Some(newest);
        }
    }

    fn clear_room(&mut self) {
        self.messages.clear();
        self.members.clear();
        self.typing.clear();
        self.open_room = None;
        self.marked_read = None;
        let result = self.rooms.set_open(None);
        self.report(result);
    }

    fn disconnect(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.abort();
        }
        self.room = None;
        self.page.set_joined(false);
    }

    pub fn joined(&mut self, membership: Membership, outbox: UnboundedSender<ClientFrame>) {
        self.page.set_status(&format!(
            "joined #{} as {}",
            membership.room, membership.name
        ));
        self.page.set_joined(true);
        // After a reconnect the user may be editing a message: leave the focus there.
        let editing = self
            .page
            .document
            .active_element()
            .is_some_and(|element| element.class_list().contains("edit-input"));
        if !editing {
            self.report(self.page.composer.focus());
        }
        let room_id = membership.room_id;
        // A new connection starts online.
        if dom::page_hidden(&self.page.document) {
            let _ = outbox.unbounded_send(ClientFrame::Presence {
                status: PresenceStatus::Away,
            });
        }
        // Sends the last connection left unanswered; their ids make a second store impossible.
        for (client_msg_id, body) in self.messages.unconfirmed() {
            let _ = outbox.unbounded_send(ClientFrame::Send {
                room_id,
                client_msg_id,
                body,
            });
        }
        self.room = Some(JoinedRoom { membership, outbox });
    }

    /// The connection ended: show why. Returns whether it had joined the room.
    pub fn connection_lost(&mut self, error: &ConnectionError) -> bool {
        let was_joined = self.room.is_some();
        self.room = None;
        self.typing.clear();
        self.page.set_joined(false);
        if error.is_final() {
            self.page.set_error(&error.to_string());
            self.connection = None;
            self.page.set_status(&format!("not connected: {error}"));
        } else {
            self.page.set_status("reconnecting…");
        }
        was_joined
    }

    /// Applies a frame that arrived after `joined`.
    pub fn handle(&mut self, frame: ServerFrame) -> Result<Option<FollowUp>, ConnectionError> {
        let Some(room) = &self.room else {
            return Ok(None);
        };
        let open = room.membership.room_id;
        let own_id = room.membership.user_id;
        let sender = room.membership.name.clone();
        let mut follow_up = None;
        let result = match frame {
            ServerFrame::Message(message) if message.room_id == open => {
                self.typing.stop(message.sender_id);
                let own = message.sender_id == own_id;
                let seen = !dom::page_hidden(&self.page.document) && self.messages.at_bottom();
                if !own && !seen {
                    let counted = self.rooms.count_up(open);
                    self.report(counted);
                }
                self.messages.show(&message, own)
            }
            ServerFrame::Accepted { client_msg_id, .. } => {
                self.messages.mark_accepted(&client_msg_id)
            }
            ServerFrame::Stored {
                client_msg_id, seq, ..
            } => self.messages.mark_stored(&client_msg_id, seq, &sender),
            ServerFrame::MessageEdited {
                room_id,
                seq,
                body,
                edited_at_ms,
            } if room_id == open => self.messages.edited(seq, &body, edited_at_ms),
            ServerFrame::MessageDeleted { room_id, seq, .. } if room_id == open => {
                self.messages.deleted(seq)
            }
            ServerFrame::Typing {
                room_id,
                user_id,
                name,
                expires_in_ms,
            } if room_id == open && user_id != own_id => {
                self.typing.show(user_id, &name, expires_in_ms);
                Ok(())
            }
            ServerFrame::Presence { user_id, status } => {
                match self.members.set_presence(user_id, status) {
                    Ok(false) if status != PresenceStatus::Offline => {
                        follow_up = Some(FollowUp::ReloadMembers(open));
                        Ok(())
                    }
                    other => other.map(drop),
                }
            }
            ServerFrame::ReadMarker {
                room_id,
                seq,
                unread,
            } => {
                if room_id == open {
                    self.marked_read = self.marked_read.max(Some(seq));
                }
                self.rooms.set_unread(room_id, unread)
            }
            ServerFrame::Left { room_id } if room_id == open => return Err(ConnectionError::Left),
            ServerFrame::Error {
                code,
                message,
                client_msg_id,
                ..
            } => {
                let text = format!("{code}: {message}");
                self.page.set_error(&text);
                match client_msg_id {
                    Some(id) => self.messages.mark_failed(&id, &text),
                    None => Ok(()),
                }
            }
            // Other rooms' frames, and answers this client does not wait for.
            _ => Ok(()),
        };
        self.report(result);
        self.mark_read_if_seen();
        Ok(follow_up)
    }

    /// Shows a failed DOM call in the status line; there is no better place for it.
    fn report(&self, result: Result<(), wasm_bindgen::JsValue>) {
        if let Err(error) = result {
            self.page.set_status(&dom::describe(&error));
        }
    }
}

/// Disconnects this tab; the caller has already ended the session.
pub fn signed_out(chat: &Rc<RefCell<Chat>>) {
    let mut state = chat.borrow_mut();
    state.disconnect();
    state.clear_room();
    state.show_rooms(&[]);
    state.page.set_status("signed out");
}

/// Shows the user's rooms in the room list.
pub async fn refresh_rooms(chat: &Rc<RefCell<Chat>>) {
    if let Ok(rooms) = api::my_rooms().await {
        chat.borrow_mut().show_rooms(&rooms);
    }
}

/// A client message id. There is no `getrandom` here: the time, `Math.random` and a
/// per-tab counter are unique enough, since the server only needs them unique per sender.
fn new_client_msg_id(sent_count: u64) -> ClientMsgId {
    let millis = js_sys::Date::now() as u64;
    let noise = (js_sys::Math::random() * f64::from(u32::MAX)) as u32;
    ClientMsgId(format!("{millis:x}-{noise:08x}-{sent_count}"))
}
