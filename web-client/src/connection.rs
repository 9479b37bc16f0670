//! The WebSocket to a chat node: where it is, how frames go over it, and the
//! `welcome`/`join` handshake. Only this module turns frames into text and back.

use chat_protocol::frame::Resume;
use chat_protocol::{ClientFrame, ErrorCode, RoomId, Seq, ServerFrame, UserId};
use futures::{Sink, SinkExt, Stream, StreamExt};
use gloo_net::websocket::futures::WebSocket;
use gloo_net::websocket::{Message, WebSocketError};
use std::fmt;
use wasm_bindgen::JsValue;
use web_sys::Location;

/// Why a connection could not be set up, or ended.
#[derive(Debug)]
pub enum ConnectionError {
    /// The browser would not open the WebSocket (for example a malformed URL).
    Open(String),
    /// The socket failed or was closed.
    Socket(WebSocketError),
    /// The socket ended without a close event.
    Ended,
    /// The server answered `join` with an error frame.
    Refused { code: ErrorCode, message: String },
    /// A frame could not be encoded.
    Encode(serde_json::Error),
    /// The user's membership of the room ended (left from another tab or node).
    Left,
}

impl ConnectionError {
    /// Whether connecting again cannot help.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ConnectionError::Refused { .. } | ConnectionError::Left
        )
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionError::Open(reason) => write!(f, "cannot open the WebSocket: {reason}"),
            ConnectionError::Socket(error) => error.fmt(f),
            ConnectionError::Ended => f.write_str("the connection ended"),
            ConnectionError::Refused { code, message } => write!(f, "{code}: {message}"),
            ConnectionError::Encode(error) => write!(f, "cannot encode a frame: {error}"),
            ConnectionError::Left => f.write_str("you are no longer a member of this room"),
        }
    }
}

/// Who the server says we are, and the room we are in.
pub struct Membership {
    pub user_id: UserId,
    pub name: String,
    pub room_id: RoomId,
    pub room: String,
    /// How a resume went, when the join continued after a seq.
    pub resume: Option<Resume>,
}

/// The chat endpoint of the server that served this page: `/ws` on the same host,
/// over TLS when the page is.
pub fn chat_url(location: &Location) -> Result<String, JsValue> {
    let scheme = if location.protocol()? == "https:" {
        "wss"
    } else {
        "ws"
    };
    Ok(format!("{scheme}://{}/ws", location.host()?))
}

/// Opens a WebSocket. Failures to connect show up later, on the first read.
pub fn open(url: &str) -> Result<WebSocket, ConnectionError> {
    WebSocket::open(url).map_err(|error| ConnectionError::Open(error.to_string()))
}

/// Waits for `welcome` (the session cookie signed the socket in), then subscribes to a room
/// the user is a member of, and returns once the server has answered both. With `after`, the
/// missed messages follow the answer on the socket.
pub async fn join(
    socket: &mut WebSocket,
    room_id: RoomId,
    after: Option<Seq>,
) -> Result<Membership, ConnectionError> {
    let (user_id, name) = loop {
        match receive(socket).await? {
            ServerFrame::Welcome { user_id, name, .. } => break (user_id, name),
            // Nothing else is expected before `welcome`.
            _ => continue,
        }
    };
    send(socket, &ClientFrame::Join { room_id, after }).await?;
    loop {
        match receive(socket).await? {
            ServerFrame::Joined {
                room_id,
                room,
                resume,
                ..
            } => {
                return Ok(Membership {
                    user_id,
                    name,
                    room_id,
                    room,
                    resume,
                })
            }
            ServerFrame::Error { code, message, .. } => {
                return Err(ConnectionError::Refused { code, message })
            }
            _ => continue,
        }
    }
}

/// Sends one frame.
pub async fn send<S>(sink: &mut S, frame: &ClientFrame) -> Result<(), ConnectionError>
where
    S: Sink<Message, Error = WebSocketError> + Unpin,
{
    let text = serde_json::to_string(frame).map_err(ConnectionError::Encode)?;
    sink.send(Message::Text(text))
        .await
        .map_err(ConnectionError::Socket)
}

/// Waits for the next frame the client understands.
pub async fn receive<S>(stream: &mut S) -> Result<ServerFrame, ConnectionError>
where
    S: Stream<Item = Result<Message, WebSocketError>> + Unpin,
{
    loop {
        match stream.next().await {
            None => return Err(ConnectionError::Ended),
            Some(Err(error)) => return Err(ConnectionError::Socket(error)),
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerFrame>(&text) {
                Ok(frame) => return Ok(frame),
                // A newer server may send frames this client does not know yet; they must
                // not break the connection.
                Err(error) => web_sys::console::warn_1(&JsValue::from_str(&format!(
                    "ignoring a frame this client does not understand ({error}): {text}"
                ))),
            },
            // The protocol is text only.
            Some(Ok(Message::Bytes(_))) => {}
        }
    }
}
