//! The chat session: joining a room from the form, sending from the composer, and
//! applying the server's frames to the page.
//!
//! All state lives in one `Chat` behind `Rc<RefCell<_>>`. Every borrow ends before an
//! `.await`, so event handlers and the connection task never hold it at the same time.

use crate::api;
use crate::connection::{self, ConnectionError, Membership};
use crate::dom::{self, Page};
use crate::view::MessageList;
use chat_protocol::frame::validate_body;
use chat_protocol::{ClientFrame, ClientMsgId, ServerFrame};
use futures::channel::mpsc::{self, UnboundedReceiver, UnboundedSender};
use futures::future::{select, AbortHandle, Abortable, Either};
use futures::stream::{SplitSink, SplitStream};
use futures::StreamExt;
use gloo_net::websocket::futures::WebSocket;
use gloo_net::websocket::Message;
use std::cell::RefCell;
use std::pin::pin;
use std::rc::Rc;

pub struct Chat {
    page: Page,
    messages: MessageList,
    /// Stops the current connection task, which closes its socket.
    connection: Option<AbortHandle>,
    /// Set once the server has answered `join`.
    room: Option<JoinedRoom>,
    /// Makes each client message id unique within this tab.
    sent_count: u64,
}

struct JoinedRoom {
    membership: Membership,
    /// Frames for the connection task to write to the socket.
    outbox: UnboundedSender<ClientFrame>,
}

impl Chat {
    pub fn new(page: Page) -> Chat {
        let messages = MessageList::new(page.document.clone(), page.messages.clone());
        Chat {
            page,
            messages,
            connection: None,
            room: None,
            sent_count: 0,
        }
    }

    /// Leaves whatever room this tab was in and joins the public room `room` (created if
    /// needed; a private one when `private`) on a new connection.
    pub fn connect(chat: &Rc<RefCell<Chat>>, room: String, private: bool) {
        let (abort, registration) = AbortHandle::new_pair();
        {
            let mut state = chat.borrow_mut();
            state.disconnect();
            state.connection = Some(abort);
            state.messages.clear();
            state.page.set_error("");
        }
        let task = Abortable::new(run(Rc::clone(chat), room, private), registration);
        wasm_bindgen_futures::spawn_local(async move {
            // An aborted task was replaced by a newer one, which now owns the page.
            let _ = task.await;
        });
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
    }

    fn disconnect(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.abort();
        }
        self.room = None;
        self.page.set_joined(false);
    }

    fn joined(&mut self, membership: Membership, outbox: UnboundedSender<ClientFrame>) {
        self.page.set_status(&format!(
            "joined #{} as {}",
            membership.room, membership.name
        ));
        self.page.set_joined(true);
        self.report(self.page.composer.focus());
        self.room = Some(JoinedRoom { membership, outbox });
    }

    /// The connection task ended on its own: show why, and allow joining again.
    fn connection_lost(&mut self, error: &ConnectionError) {
        if let ConnectionError::Refused { .. } = error {
            self.page.set_error(&error.to_string());
        }
        let status = match &self.room {
            Some(room) => format!("disconnected from #{}: {error}", room.membership.room),
            None => format!("could not join: {error}"),
        };
        self.connection = None;
        self.disconnect();
        self.page.set_status(&status);
    }

    /// Applies a frame that arrived after `joined`.
    fn handle(&mut self, frame: ServerFrame) {
        let Some(room) = &self.room else {
            return;
        };
        let result = match frame {
            ServerFrame::Message(message) if message.room_id == room.membership.room_id => {
                let own = message.sender_id == room.membership.user_id;
                self.messages.show(&message, own)
            }
            ServerFrame::Accepted { client_msg_id, .. } => {
                self.messages.mark_accepted(&client_msg_id)
            }
            ServerFrame::Stored {
                client_msg_id, seq, ..
            } => self.messages.mark_stored(&client_msg_id, seq),
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
            // Another room's message, or answers to frames this client does not send
            // after joining.
            _ => Ok(()),
        };
        self.report(result);
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
    state.messages.clear();
    state.page.set_status("signed out");
}

/// One connection's whole life: join over REST, connect, subscribe, then read and write until
/// it fails.
async fn run(chat: Rc<RefCell<Chat>>, room: String, private: bool) {
    let joined = if private {
        api::create_private(&room).await
    } else {
        api::join_public(&room).await
    };
    let room_id = match joined {
        Ok(room_id) => room_id,
        Err(error) => {
            let state = chat.borrow();
            state.page.set_error(&error.to_string());
            state.page.set_status(&format!("could not join: {error}"));
            return;
        }
    };
    refresh_rooms(&chat).await;
    if let Err(error) = join_and_serve(&chat, room_id).await {
        chat.borrow_mut().connection_lost(&error);
    }
}

/// Shows the user's rooms in the room list.
pub async fn refresh_rooms(chat: &Rc<RefCell<Chat>>) {
    if let Ok(rooms) = api::my_rooms().await {
        let state = chat.borrow();
        let result = state.page.show_rooms(&rooms);
        state.report(result);
    }
}

async fn join_and_serve(
    chat: &Rc<RefCell<Chat>>,
    room_id: chat_protocol::RoomId,
) -> Result<(), ConnectionError> {
    let url = match web_sys::window().map(|window| connection::chat_url(&window.location())) {
        Some(Ok(url)) => url,
        Some(Err(error)) => return Err(ConnectionError::Open(dom::describe(&error))),
        None => return Err(ConnectionError::Open("no window".to_owned())),
    };
    chat.borrow()
        .page
        .set_status(&format!("connecting to {url}…"));
    let mut socket = connection::open(&url)?;
    let membership = connection::join(&mut socket, room_id).await?;

    let (sink, stream) = socket.split();
    let (outbox, outgoing) = mpsc::unbounded();
    chat.borrow_mut().joined(membership, outbox);
    // Whichever half stops first ends the connection; dropping both closes the socket.
    let reading = pin!(read_frames(chat, stream));
    let writing = pin!(write_frames(sink, outgoing));
    match select(reading, writing).await {
        Either::Left((result, _)) | Either::Right((result, _)) => result,
    }
}

async fn read_frames(
    chat: &Rc<RefCell<Chat>>,
    mut stream: SplitStream<WebSocket>,
) -> Result<(), ConnectionError> {
    loop {
        let frame = connection::receive(&mut stream).await?;
        chat.borrow_mut().handle(frame);
    }
}

async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut outgoing: UnboundedReceiver<ClientFrame>,
) -> Result<(), ConnectionError> {
    while let Some(frame) = outgoing.next().await {
        connection::send(&mut sink, &frame).await?;
    }
    // The room was left, which drops the outbox.
    Err(ConnectionError::Ended)
}

/// A client message id. There is no `getrandom` here: the time, `Math.random` and a
/// per-tab counter are unique enough, since the server only needs them unique per sender.
fn new_client_msg_id(sent_count: u64) -> ClientMsgId {
    let millis = js_sys::Date::now() as u64;
    let noise = (js_sys::Math::random() * f64::from(u32::MAX)) as u32;
    ClientMsgId(format!("{millis:x}-{noise:08x}-{sent_count}"))
}
