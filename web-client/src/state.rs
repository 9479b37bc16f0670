//! The app's state, in one place: signals that the views read, and the actions that change
//! them. Views never keep state of their own beyond what a form is typing.

use crate::api::{self, ApiFailure};
use crate::browser;
use crate::timeline::Timeline;
use crate::unread::Rooms;
use crate::words;
use chat_protocol::api::{Member, Profile};
use chat_protocol::frame::validate_body;
use chat_protocol::{ClientFrame, ClientMsgId, PresenceStatus, RoomId, Seq, UserId};
use futures::channel::mpsc::UnboundedSender;
use leptos::prelude::*;
use leptos::task::spawn_local;

/// How the connection to the chat node is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// First connection of this sign-in.
    Connecting,
    Live,
    /// Lost; trying again. The reason in plain words.
    Reconnecting(String),
    /// The browser says there is no network.
    Offline,
}

/// The dialog on top of the app, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialog {
    Browse,
    CreateRoom,
    NewDirect,
    Invite,
    Settings,
    ConfirmDelete(Seq),
    ConfirmLeave,
}

/// Someone typing in the open room.
#[derive(Debug, Clone, PartialEq)]
pub struct Typist {
    pub user_id: UserId,
    pub name: String,
    pub until_ms: f64,
}

#[derive(Clone, Copy)]
pub struct App {
    /// `None`: the sign-in screen.
    pub me: RwSignal<Option<Profile>>,
    /// The first `GET /api/me` is under way.
    pub starting: RwSignal<bool>,
    pub rooms: RwSignal<Rooms>,
    pub rooms_loaded: RwSignal<bool>,
    pub open: RwSignal<Option<RoomId>>,
    pub timeline: RwSignal<Timeline>,
    pub loading_history: RwSignal<bool>,
    pub members: RwSignal<Vec<Member>>,
    pub typing: RwSignal<Vec<Typist>>,
    pub link: RwSignal<Link>,
    pub dialog: RwSignal<Option<Dialog>>,
    pub sidebar_open: RwSignal<bool>,
    pub members_open: RwSignal<bool>,
    pub editing: RwSignal<Option<Seq>>,
    /// The polite live region: only newly arrived messages.
    pub announcement: RwSignal<String>,
    /// A short notice (an action failed), shown until dismissed or replaced.
    pub notice: RwSignal<Option<String>>,
    pub dark: RwSignal<Option<bool>>,
    /// Frames for the connection task to write.
    pub outbox: StoredValue<Option<UnboundedSender<ClientFrame>>>,
    /// Counts the sends of this tab, for unique client message ids.
    pub sent: StoredValue<u64>,
    /// Bumped on every sign-in and sign-out; a connection task of an older one stops.
    pub generation: StoredValue<u64>,
    pub last_typing_ms: StoredValue<f64>,
}

impl Default for App {
    fn default() -> App {
        App::new()
    }
}

impl App {
    pub fn new() -> App {
        App {
            me: RwSignal::new(None),
            starting: RwSignal::new(true),
            rooms: RwSignal::new(Rooms::default()),
            rooms_loaded: RwSignal::new(false),
            open: RwSignal::new(None),
            timeline: RwSignal::new(Timeline::default()),
            loading_history: RwSignal::new(false),
            members: RwSignal::new(Vec::new()),
            typing: RwSignal::new(Vec::new()),
            link: RwSignal::new(Link::Connecting),
            dialog: RwSignal::new(None),
            sidebar_open: RwSignal::new(false),
            members_open: RwSignal::new(false),
            editing: RwSignal::new(None),
            announcement: RwSignal::new(String::new()),
            notice: RwSignal::new(None),
            dark: RwSignal::new(browser::saved_theme()),
            outbox: StoredValue::new(None),
            sent: StoredValue::new(0),
            generation: StoredValue::new(0),
            last_typing_ms: StoredValue::new(0.0),
        }
    }

    pub fn my_id(&self) -> Option<UserId> {
        self.me.with_untracked(|me| me.as_ref().map(|p| p.user_id))
    }

    pub fn my_username(&self) -> String {
        self.me
            .with(|me| me.as_ref().map(|p| p.username.clone()).unwrap_or_default())
    }

    /// Signed in: show the app and connect.
    pub fn signed_in(self, profile: Profile) {
        self.me.set(Some(profile));
        self.generation.update_value(|g| *g += 1);
        self.reload_rooms();
        crate::live::start(self);
    }

    /// Signed out (by the user, or the session ended elsewhere): back to the sign-in screen.
    pub fn signed_out(self, why: Option<String>) {
        self.generation.update_value(|g| *g += 1);
        self.outbox.set_value(None);
        self.me.set(None);
        self.open.set(None);
        self.timeline.set(Timeline::default());
        self.rooms.set(Rooms::default());
        self.rooms_loaded.set(false);
        self.members.set(Vec::new());
        self.dialog.set(None);
        self.notice.set(why);
        browser::set_title("Chat");
    }

    pub fn reload_rooms(self) {
        spawn_local(async move {
            match api::my_rooms().await {
                Ok(list) => {
                    let open = self.open.get_untracked();
                    self.rooms.update(|rooms| rooms.load(list));
                    self.rooms_loaded.set(true);
                    // The open room is gone (left here or elsewhere, or removed).
                    if let Some(open) = open {
                        if self.rooms.with_untracked(|r| r.get(open).is_none()) {
                            self.close_room();
                        }
                    }
                }
                Err(failure) => self.failed(&failure),
            }
        });
    }

    /// Shows a failure; an ended session goes back to the sign-in screen.
    pub fn failed(self, failure: &ApiFailure) {
        if failure.code() == Some(chat_protocol::ErrorCode::Unauthenticated) {
            self.signed_out(Some(failure.plain()));
        } else {
            self.notice.set(Some(failure.plain()));
        }
    }

    /// Writes a frame to the connection; false when there is none.
    pub fn send_frame(self, frame: ClientFrame) -> bool {
        self.outbox.with_value(|outbox| {
            outbox
                .as_ref()
                .is_some_and(|outbox| outbox.unbounded_send(frame).is_ok())
        })
    }

    /// Opens a dialog from the room list; on a phone the drawer closes so that the dialog is
    /// not left with the drawer and its scrim behind it.
    pub fn open_from_sidebar(self, dialog: Dialog) {
        self.sidebar_open.set(false);
        self.dialog.set(Some(dialog));
    }

    /// Opens one of the user's rooms: joins it on the connection and loads its newest page.
    pub fn open_room(self, room_id: RoomId) {
        self.sidebar_open.set(false);
        if self.open.get_untracked() == Some(room_id) {
            return;
        }
        if let Some(previous) = self.open.get_untracked() {
            self.send_frame(ClientFrame::Leave { room_id: previous });
        }
        let read = self
            .rooms
            .with_untracked(|r| r.get(room_id).map(|e| e.read_seq));
        let mut timeline = Timeline::new(room_id);
        timeline.read_marker = read;
        self.timeline.set(timeline);
        self.members.set(Vec::new());
        self.typing.set(Vec::new());
        self.editing.set(None);
        self.open.set(Some(room_id));
        browser::remember_room(room_id);
        self.send_frame(ClientFrame::Join {
            room_id,
            after: None,
        });
        self.load_newest(room_id);
        self.load_members(room_id);
    }

    pub fn close_room(self) {
        if let Some(previous) = self.open.get_untracked() {
            self.send_frame(ClientFrame::Leave { room_id: previous });
        }
        self.open.set(None);
        self.timeline.set(Timeline::default());
        self.members.set(Vec::new());
    }

    /// The newest history page of the open room (also after a reconnect: it brings edits and
    /// deletes made meanwhile).
    pub fn load_newest(self, room_id: RoomId) {
        self.loading_history.set(true);
        spawn_local(async move {
            let page = api::messages(room_id, None).await;
            self.loading_history.set(false);
            match page {
                Ok(page) => {
                    if self.open.get_untracked() == Some(room_id) {
                        let me = self.my_id();
                        let short = page.len() < api::PAGE_SIZE as usize;
                        self.timeline.update(|t| {
                            t.apply_page(page, me);
                            if short {
                                t.reached_start = true;
                            }
                        });
                        self.mark_read();
                    }
                }
                Err(failure) => self.failed(&failure),
            }
        });
    }

    /// The page before the oldest message shown.
    pub fn load_older(self) {
        let Some(room_id) = self.open.get_untracked() else {
            return;
        };
        let (oldest, done) = self
            .timeline
            .with_untracked(|t| (t.oldest_seq(), t.reached_start));
        if done || self.loading_history.get_untracked() {
            return;
        }
        let Some(oldest) = oldest else {
            return;
        };
        self.loading_history.set(true);
        spawn_local(async move {
            let page = api::messages(room_id, Some(oldest)).await;
            self.loading_history.set(false);
            match page {
                Ok(page) => {
                    if self.open.get_untracked() == Some(room_id) {
                        let me = self.my_id();
                        let short = page.len() < api::PAGE_SIZE as usize;
                        self.timeline.update(|t| {
                            t.apply_page(page, me);
                            if short {
                                t.reached_start = true;
                            }
                        });
                    }
                }
                Err(failure) => self.failed(&failure),
            }
        });
    }

    pub fn load_members(self, room_id: RoomId) {
        spawn_local(async move {
            match api::members(room_id).await {
                Ok(members) if self.open.get_untracked() == Some(room_id) => {
                    self.members.set(members)
                }
                Ok(_) => {}
                Err(failure) => self.failed(&failure),
            }
        });
    }

    /// Tells the server the open room is read up to its newest message, when the user can see
    /// it.
    pub fn mark_read(self) {
        if browser::page_hidden() {
            return;
        }
        let Some(room_id) = self.open.get_untracked() else {
            return;
        };
        let Some(newest) = self.timeline.with_untracked(|t| t.newest_seq()) else {
            return;
        };
        let (read, unread) = self.rooms.with_untracked(|r| {
            r.get(room_id)
                .map(|e| (e.read_seq, e.unread))
                .unwrap_or((Seq(0), 0))
        });
        if newest > read || unread > 0 {
            self.rooms
                .update(|r| r.read_marker(room_id, newest.max(read), 0));
            self.send_frame(ClientFrame::MarkRead {
                room_id,
                seq: newest.max(read),
            });
        }
    }

    /// Sends the composer's text; returns whether it was taken (the composer then empties).
    pub fn send_message(self, body: String) -> bool {
        let Some(room_id) = self.open.get_untracked() else {
            return false;
        };
        if body.trim().is_empty() {
            return false;
        }
        if let Err(error) = validate_body(&body) {
            self.notice
                .set(Some(words::error(error.code, &error.message)));
            return false;
        }
        self.sent.update_value(|n| *n += 1);
        let client_msg_id = ClientMsgId(format!("{}-{}", browser::tab_id(), self.sent.get_value()));
        self.timeline.update(|t| {
            t.add_outgoing(
                client_msg_id.clone(),
                body.clone(),
                browser::now_ms() as i64,
            )
        });
        let frame = ClientFrame::Send {
            room_id,
            client_msg_id: client_msg_id.clone(),
            body,
        };
        if !self.send_frame(frame) {
            self.timeline
                .update(|t| t.failed(&client_msg_id, "Not connected."));
        }
        self.last_typing_ms.set_value(0.0);
        true
    }

    /// Sends a failed message again under its original id: the server stores it at most once.
    pub fn retry(self, client_msg_id: ClientMsgId) {
        let Some(room_id) = self.open.get_untracked() else {
            return;
        };
        let Some(outgoing) = self
            .timeline
            .try_update(|t| t.retry(&client_msg_id))
            .flatten()
        else {
            return;
        };
        let frame = ClientFrame::Send {
            room_id,
            client_msg_id: outgoing.client_msg_id,
            body: outgoing.body,
        };
        if !self.send_frame(frame) {
            self.timeline
                .update(|t| t.failed(&client_msg_id, "Not connected."));
        }
    }

    pub fn discard(self, client_msg_id: ClientMsgId) {
        self.timeline.update(|t| t.discard(&client_msg_id));
    }

    pub fn save_edit(self, seq: Seq, body: String) {
        let Some(room_id) = self.open.get_untracked() else {
            return;
        };
        let unchanged = self
            .timeline
            .with_untracked(|t| t.get(seq).is_some_and(|m| m.body == body));
        if !unchanged {
            if let Err(error) = validate_body(&body) {
                self.notice
                    .set(Some(words::error(error.code, &error.message)));
                return;
            }
            self.send_frame(ClientFrame::Edit { room_id, seq, body });
        }
        self.editing.set(None);
    }

    pub fn delete(self, seq: Seq) {
        if let Some(room_id) = self.open.get_untracked() {
            self.send_frame(ClientFrame::Delete { room_id, seq });
        }
    }

    /// The user typed: tell the room, at most every 2 seconds.
    pub fn typed(self) {
        let now = browser::now_ms();
        if now - self.last_typing_ms.get_value() < 2_000.0 {
            return;
        }
        if let Some(room_id) = self.open.get_untracked() {
            if self.send_frame(ClientFrame::Typing { room_id }) {
                self.last_typing_ms.set_value(now);
            }
        }
    }

    pub fn visibility_changed(self) {
        let status = if browser::page_hidden() {
            PresenceStatus::Away
        } else {
            PresenceStatus::Online
        };
        self.send_frame(ClientFrame::Presence { status });
        self.mark_read();
    }

    pub fn set_dark(self, dark: Option<bool>) {
        self.dark.set(dark);
        browser::save_theme(dark);
    }
}
