//! WebSocket frames. Every frame is a JSON object with a `type` field.

use crate::ids::{ClientMsgId, RoomId, Seq, UserId};
use crate::limits;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A frame sent by a client to a chat node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Start receiving a room's new messages on this connection. The user must be a member
    /// (rooms are joined, created and left over the REST API). With `after`, the server first
    /// sends every message after that sequence number (a resume), then the live stream, with
    /// nothing skipped and nothing twice.
    Join {
        room_id: RoomId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<Seq>,
    },
    /// Stop receiving a room's messages on this connection.
    Leave { room_id: RoomId },
    /// The user is typing in a joined room. Send it while typing; the server forwards at most
    /// one every 2 seconds per room, and others show it until `expires_in_ms` passes.
    Typing { room_id: RoomId },
    /// Send a message to a joined room.
    Send {
        room_id: RoomId,
        client_msg_id: ClientMsgId,
        body: String,
    },
    /// Replace the body of one of the user's own messages in a joined room. Every member sees
    /// `message_edited`; the message keeps its sequence number.
    Edit {
        room_id: RoomId,
        seq: Seq,
        body: String,
    },
    /// Delete one of the user's own messages in a joined room (the room's owners may delete any
    /// message). Every member sees `message_deleted`; the sequence number stays taken.
    Delete { room_id: RoomId, seq: Seq },
    /// The user has read the room up to `seq`. Markers only move forward; every connection of
    /// the user, on every node, gets `read_marker`.
    MarkRead { room_id: RoomId, seq: Seq },
    /// The user's presence on this connection: `online` or `away` (a hidden or idle tab). A user
    /// is online if any connection is, away if all are away, offline without connections.
    Presence { status: PresenceStatus },
}

/// The `type` values a client may send.
pub const CLIENT_FRAME_TYPES: &[&str] = &[
    "join",
    "leave",
    "send",
    "typing",
    "edit",
    "delete",
    "mark_read",
    "presence",
];

/// Whether a user can be reached. Ordered: `offline` < `away` < `online`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Offline,
    Away,
    Online,
}

impl PresenceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Offline => "offline",
            PresenceStatus::Away => "away",
            PresenceStatus::Online => "online",
        }
    }
}

/// A stored chat message as every member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room_id: RoomId,
    pub seq: Seq,
    pub sender_id: UserId,
    pub sender_name: String,
    pub client_msg_id: ClientMsgId,
    /// Empty when the message was deleted.
    pub body: String,
    /// Milliseconds since the Unix epoch, as stored.
    pub sent_at_ms: i64,
    /// When the body was last edited, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at_ms: Option<i64>,
    /// The message was deleted: its sequence number stays, its body is gone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
}

fn is_false(flag: &bool) -> bool {
    !*flag
}

/// A frame sent by a chat node to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The first frame on every connection: who the session cookie or bearer token signed in.
    Welcome {
        node_id: String,
        user_id: UserId,
        name: String,
    },
    /// The answer to `join`: the connection now receives the room's new messages.
    Joined {
        room_id: RoomId,
        room: String,
        /// The sequence number of the room's newest stored message (0 when empty).
        last_seq: Seq,
        /// The answer to a resume (`join` with `after`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
    },
    /// The answer to `leave`.
    Left { room_id: RoomId },
    /// The message is durable: it will be stored and delivered even if this node dies now.
    Accepted {
        room_id: RoomId,
        client_msg_id: ClientMsgId,
    },
    /// The message is stored with this sequence number. `duplicate` is true when an earlier
    /// send with the same client message id had already stored it.
    Stored {
        room_id: RoomId,
        client_msg_id: ClientMsgId,
        seq: Seq,
        duplicate: bool,
    },
    /// A new message in a joined room.
    Message(ChatMessage),
    /// A message of a joined room was edited (by its sender).
    MessageEdited {
        room_id: RoomId,
        seq: Seq,
        body: String,
        edited_at_ms: i64,
    },
    /// A message of a joined room was deleted, by its sender or a room owner.
    MessageDeleted {
        room_id: RoomId,
        seq: Seq,
        deleted_by: UserId,
    },
    /// The user's read marker of a room moved (on this or another connection): everything up
    /// to `seq` is read, `unread` messages from others are left (counted up to
    /// [`crate::limits::MAX_UNREAD_COUNT`]).
    ReadMarker {
        room_id: RoomId,
        seq: Seq,
        unread: i64,
    },
    /// A user who shares a joined room with this connection came online, went away or went
    /// offline.
    Presence {
        user_id: UserId,
        status: PresenceStatus,
    },
    /// Someone else in a joined room is typing; forget it after `expires_in_ms` unless renewed.
    Typing {
        room_id: RoomId,
        user_id: UserId,
        name: String,
        expires_in_ms: u64,
    },
    /// A new message in a room the user is a member of but this connection has not joined
    /// (for unread counts and notifications of rooms that are not open). At most one per room
    /// per delivered batch: `seq` is the room's newest sequence number in it.
    RoomActivity {
        room_id: RoomId,
        seq: Seq,
        sender_id: UserId,
    },
    /// The user's list of rooms changed (a room was created, joined, left, an invite or a
    /// direct conversation arrived, the user was removed): reload `GET /api/me/rooms`.
    RoomsChanged,
    /// Something the client sent could not be handled. The connection stays usable.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<ClientMsgId>,
        /// With `rate_limited`: how long to wait before sending again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// How a resume went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The sequence number the client asked to resume after.
    pub after: Seq,
    /// Messages missed since `after` (those up to `last_seq`).
    pub missed: i64,
    /// True when every missed message follows this frame. False when too many were missed: the
    /// client should reload the room's recent history instead; live messages follow either way.
    pub complete: bool,
}

/// Stable error codes. Clients match on these, never on the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a JSON object.
    BadJson,
    /// The frame's `type` is missing or not one this server knows.
    UnknownType,
    /// The frame has the right type but a missing or malformed field.
    BadFrame,
    /// The frame is larger than the limit.
    FrameTooLarge,
    /// The message body is longer than the limit.
    BodyTooLong,
    /// The message body is empty or only whitespace.
    BodyEmpty,
    /// The message body has a NUL character, which cannot be stored.
    InvalidBody,
    /// The display name is empty, too long or has control characters.
    InvalidName,
    /// The room name is empty, too long or has control characters.
    InvalidRoomName,
    /// The client message id is empty or too long.
    InvalidClientMsgId,
    /// The connection has not joined that room.
    NotJoined,
    /// A backing service is down; the send was not accepted and may be retried.
    Unavailable,
    /// Something failed on the server; the request may be retried.
    Internal,
    /// The request has no valid session (cookie or bearer token), or it expired.
    Unauthenticated,
    /// The user name and password do not match (or the current password is wrong).
    BadCredentials,
    /// The user name has the wrong length or characters.
    InvalidUsername,
    /// The password is too short or too long.
    InvalidPassword,
    /// Another account has this user name.
    UsernameTaken,
    /// Status text, avatar colour or initials out of their limits.
    InvalidProfile,
    /// `visibility` is not `public` or `private`.
    InvalidVisibility,
    /// Another public room has this name.
    RoomNameTaken,
    /// No such room, or a private room the user is not in (the two are never told apart).
    RoomNotFound,
    /// No user with that name or id.
    UserNotFound,
    /// The user is not a member of that (public) room, or over WebSocket of that room.
    NotMember,
    /// The action is not possible on this kind of room (inviting to a direct room, say).
    NotAllowed,
    /// A direct conversation with oneself.
    CannotMessageSelf,
    /// Too many requests; retry after the time given.
    RateLimited,
    /// The request's `Origin` is not an allowed origin.
    OriginNotAllowed,
    /// The request body is not valid JSON of the expected shape.
    BadRequest,
    /// The request body is over the limit.
    PayloadTooLarge,
    /// No such endpoint.
    NotFound,
    /// The endpoint exists but not with this method.
    MethodNotAllowed,
    /// No message with that sequence number in the room, or it was deleted.
    MessageNotFound,
    /// `join` would take the connection over the most rooms one connection may follow.
    TooManyRooms,
    /// The user, or the client's address, has as many WebSockets open on the node as allowed.
    TooManyConnections,
    /// The node holds all the WebSockets it may; retry later or on another node.
    NodeFull,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::BodyTooLong => "body_too_long",
            ErrorCode::BodyEmpty => "body_empty",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::InvalidRoomName => "invalid_room_name",
            ErrorCode::InvalidClientMsgId => "invalid_client_msg_id",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::BadCredentials => "bad_credentials",
            ErrorCode::InvalidUsername => "invalid_username",
            ErrorCode::InvalidPassword => "invalid_password",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::InvalidProfile => "invalid_profile",
            ErrorCode::InvalidVisibility => "invalid_visibility",
            ErrorCode::RoomNameTaken => "room_name_taken",
            ErrorCode::RoomNotFound => "room_not_found",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::NotMember => "not_member",
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::CannotMessageSelf => "cannot_message_self",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::MessageNotFound => "message_not_found",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::NodeFull => "node_full",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub client_msg_id: Option<ClientMsgId>,
    pub retry_after_ms: Option<u64>,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError {
            code,
            message: message.into(),
            client_msg_id: None,
            retry_after_ms: None,
        }
    }

    pub fn with_retry_after_ms(mut self, millis: u64) -> Self {
        self.retry_after_ms = Some(millis);
        self
    }

    pub fn with_client_msg_id(mut self, id: Option<ClientMsgId>) -> Self {
        self.client_msg_id = id;
        self
    }

    /// The error frame to send back.
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::Error {
            code: self.code,
            message: self.message.clone(),
            client_msg_id: self.client_msg_id.clone(),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for FrameError {}

impl ClientFrame {
    /// Parses and validates a text frame. The error tells apart malformed JSON, unknown
    /// frame types, malformed fields and values outside the limits.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        if text.len() > limits::MAX_FRAME_BYTES {
            return Err(FrameError::new(
                ErrorCode::FrameTooLarge,
                format!("frames are limited to {} bytes", limits::MAX_FRAME_BYTES),
            ));
        }
        match Self::parse_send(text) {
            Some(send) => Ok(send),
            None => Self::parse_general(text),
        }
    }

    /// Any frame, through a JSON tree: tells apart what is wrong with a frame that is not a
    /// valid `send`.
    fn parse_general(text: &str) -> Result<ClientFrame, FrameError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| FrameError::new(ErrorCode::BadJson, bounded(format!("not JSON: {e}"))))?;
        let Some(object) = value.as_object() else {
            return Err(FrameError::new(
                ErrorCode::BadJson,
                "a frame is a JSON object",
            ));
        };
        let client_msg_id = object
            .get("client_msg_id")
            .and_then(|v| v.as_str())
            .map(|s| ClientMsgId(s.chars().take(limits::MAX_CLIENT_MSG_ID_BYTES).collect()));
        let frame_type = object.get("type").and_then(|t| t.as_str());
        match frame_type {
            Some(t) if CLIENT_FRAME_TYPES.contains(&t) => {}
            Some(t) => {
                return Err(FrameError::new(
                    ErrorCode::UnknownType,
                    format!("unknown frame type {:?}", excerpt(t)),
                ))
            }
            None => {
                return Err(FrameError::new(
                    ErrorCode::UnknownType,
                    "the frame has no string `type` field",
                ))
            }
        }
        let frame: ClientFrame = serde_json::from_value(value).map_err(|e| {
            // serde's messages quote the offending value, which the client chose.
            FrameError::new(ErrorCode::BadFrame, bounded(e.to_string()))
                .with_client_msg_id(client_msg_id.clone())
        })?;
        frame
            .validate()
            .map_err(|e| e.with_client_msg_id(client_msg_id))?;
        Ok(frame)
    }

    /// The common frame, a valid `send`, read directly: the general way reads every frame into
    /// a JSON tree, and serde reads an internally tagged enum from a second copy of it. Anything
    /// else, invalid sends included, is left to the general way and its errors.
    fn parse_send(text: &str) -> Option<ClientFrame> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum SendType {
            Send,
        }
        #[derive(Deserialize)]
        struct SendFrame {
            #[serde(rename = "type")]
            _type: SendType,
            room_id: RoomId,
            client_msg_id: ClientMsgId,
            body: String,
        }
        let send: SendFrame = serde_json::from_str(text).ok()?;
        let frame = ClientFrame::Send {
            room_id: send.room_id,
            client_msg_id: send.client_msg_id,
            body: send.body,
        };
        frame.validate().ok()?;
        Some(frame)
    }

    fn validate(&self) -> Result<(), FrameError> {
        match self {
            ClientFrame::Join { .. }
            | ClientFrame::Leave { .. }
            | ClientFrame::Typing { .. }
            | ClientFrame::Delete { .. }
            | ClientFrame::MarkRead { .. } => Ok(()),
            ClientFrame::Edit { body, .. } => validate_body(body),
            ClientFrame::Presence { status } => match status {
                PresenceStatus::Online | PresenceStatus::Away => Ok(()),
                PresenceStatus::Offline => Err(FrameError::new(
                    ErrorCode::BadFrame,
                    "a connection is online or away; closing it goes offline",
                )),
            },
            ClientFrame::Send {
                client_msg_id,
                body,
                ..
            } => {
                validate_client_msg_id(client_msg_id)?;
                validate_body(body)
            }
        }
    }
}

/// Most characters of a client's own input that an error message repeats: an error answers in
/// a few hundred bytes whatever the frame it answers, so errors cannot amplify a client's
/// frames into the node's memory.
pub const MAX_ERROR_EXCERPT_CHARS: usize = 64;

/// The start of a client's `text` as an error message may quote it: at most
/// [`MAX_ERROR_EXCERPT_CHARS`] characters, `…` marking a cut.
pub fn excerpt(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_ERROR_EXCERPT_CHARS) {
        None => text.into(),
        Some((cut, _)) => format!("{}…", &text[..cut]).into(),
    }
}

/// A message built by a library that may quote the client's input (serde's): whole when it is
/// short, else its start and its end (where serde puts the line and column), each
/// [`MAX_ERROR_EXCERPT_CHARS`] characters at most.
fn bounded(message: String) -> String {
    let chars = message.chars().count();
    if chars <= 2 * MAX_ERROR_EXCERPT_CHARS {
        return message;
    }
    let head: String = message.chars().take(MAX_ERROR_EXCERPT_CHARS).collect();
    let tail: String = message
        .chars()
        .skip(chars - MAX_ERROR_EXCERPT_CHARS)
        .collect();
    format!("{head} … {tail}")
}

/// Checks a display name: 1 to 32 characters, none of [`crate::names`]' forbidden ones, not
/// only spaces.
pub fn validate_name(name: &str) -> Result<(), FrameError> {
    validate_label(name, limits::MAX_NAME_CHARS, ErrorCode::InvalidName, "name")
}

/// Checks a room name: 1 to 64 characters, none of [`crate::names`]' forbidden ones, not only
/// spaces.
pub fn validate_room_name(room: &str) -> Result<(), FrameError> {
    validate_label(
        room,
        limits::MAX_ROOM_NAME_CHARS,
        ErrorCode::InvalidRoomName,
        "room name",
    )
}

fn validate_label(value: &str, max: usize, code: ErrorCode, what: &str) -> Result<(), FrameError> {
    let chars = value.chars().count();
    if value.trim().is_empty() || chars > max {
        return Err(FrameError::new(
            code,
            format!("a {what} has 1 to {max} characters"),
        ));
    }
    if crate::names::forbidden_char(value).is_some() {
        return Err(FrameError::new(
            code,
            format!("a {what} has no control, bidirectional or zero-width characters"),
        ));
    }
    Ok(())
}

/// Checks a client message id: 1 to 64 bytes.
pub fn validate_client_msg_id(id: &ClientMsgId) -> Result<(), FrameError> {
    if id.0.is_empty() || id.0.len() > limits::MAX_CLIENT_MSG_ID_BYTES {
        return Err(FrameError::new(
            ErrorCode::InvalidClientMsgId,
            format!(
                "a client message id has 1 to {} bytes",
                limits::MAX_CLIENT_MSG_ID_BYTES
            ),
        ));
    }
    Ok(())
}

/// Checks a message body: not blank, no NUL, at most 4,000 characters.
pub fn validate_body(body: &str) -> Result<(), FrameError> {
    if body.trim().is_empty() {
        return Err(FrameError::new(
            ErrorCode::BodyEmpty,
            "the message is empty",
        ));
    }
    if body.contains('\0') {
        return Err(FrameError::new(
            ErrorCode::InvalidBody,
            "a message cannot contain NUL characters",
        ));
    }
    if body.chars().count() > limits::MAX_BODY_CHARS {
        return Err(FrameError::new(
            ErrorCode::BodyTooLong,
            format!(
                "a message has at most {} characters",
                limits::MAX_BODY_CHARS
            ),
        ));
    }
    Ok(())
}

impl ServerFrame {
    /// Serializes the frame. Server frames are plain data, so this cannot fail.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"unserializable frame"}"#.to_owned()
        })
    }
}

/// The `message` server frame of a message it borrows: serializes exactly as
/// `ServerFrame::Message`, without copying the message into one.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MessageFrame<'a> {
    Message(&'a ChatMessage),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_message_frame_is_the_message_frame() {
        let mut message = ChatMessage {
            room_id: RoomId(3),
            seq: Seq(4),
            sender_id: UserId(5),
            sender_name: "ada \"the\" first".into(),
            client_msg_id: ClientMsgId("k-1".into()),
            body: "line\nbreak ✓".into(),
            sent_at_ms: 1_795_817_270_814,
            edited_at_ms: None,
            deleted: false,
        };
        for _ in 0..2 {
            assert_eq!(
                serde_json::to_string(&MessageFrame::Message(&message)).ok(),
                Some(ServerFrame::Message(message.clone()).to_json())
            );
            message.edited_at_ms = Some(1_795_817_290_000);
            message.deleted = true;
        }
    }

    fn code_of(text: &str) -> ErrorCode {
        match ClientFrame::parse(text) {
            Ok(frame) => panic!("expected an error, got {frame:?}"),
            Err(e) => e.code,
        }
    }

    #[test]
    fn parses_every_client_frame() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"join","room_id":3}"#),
            Ok(ClientFrame::Join {
                room_id: RoomId(3),
                after: None
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"leave","room_id":3}"#),
            Ok(ClientFrame::Leave { room_id: RoomId(3) })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"send","room_id":3,"client_msg_id":"a1","body":"hi"}"#),
            Ok(ClientFrame::Send {
                room_id: RoomId(3),
                client_msg_id: ClientMsgId("a1".into()),
                body: "hi".into()
            })
        );
    }

    #[test]
    fn parses_edits_markers_and_presence() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"edit","room_id":3,"seq":4,"body":"fixed"}"#),
            Ok(ClientFrame::Edit {
                room_id: RoomId(3),
                seq: Seq(4),
                body: "fixed".into()
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"delete","room_id":3,"seq":4}"#),
            Ok(ClientFrame::Delete {
                room_id: RoomId(3),
                seq: Seq(4)
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"mark_read","room_id":3,"seq":9}"#),
            Ok(ClientFrame::MarkRead {
                room_id: RoomId(3),
                seq: Seq(9)
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"presence","status":"away"}"#),
            Ok(ClientFrame::Presence {
                status: PresenceStatus::Away
            })
        );
        assert_eq!(
            code_of(r#"{"type":"presence","status":"offline"}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code_of(r#"{"type":"presence","status":"asleep"}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code_of(r#"{"type":"edit","room_id":3,"seq":4,"body":" "}"#),
            ErrorCode::BodyEmpty
        );
        assert!(PresenceStatus::Online > PresenceStatus::Away);
        assert!(PresenceStatus::Away > PresenceStatus::Offline);
    }

    /// Sends take a direct way; it must agree with the general one on every input.
    #[test]
    fn sends_read_directly_match_the_general_way() {
        let long = "x".repeat(limits::MAX_BODY_CHARS + 1);
        let too_long =
            format!(r#"{{"type":"send","room_id":1,"client_msg_id":"m","body":"{long}"}}"#);
        let inputs = [
            r#"{"type":"send","room_id":3,"client_msg_id":"a1","body":"hi"}"#,
            r#"{"body":"h\u00e9 \"x\"\n","client_msg_id":"a1","room_id":3,"type":"send","pad":[1,{}]}"#,
            r#"{"type":"send","room_id":3,"client_msg_id":"a1","body":"  "}"#,
            r#"{"type":"send","room_id":3,"client_msg_id":"","body":"hi"}"#,
            r#"{"type":"send","room_id":"3","client_msg_id":"a1","body":"hi"}"#,
            r#"{"type":"send","room_id":3,"body":"hi"}"#,
            r#"{"type":"send","type":"send","room_id":3,"client_msg_id":"a1","body":"hi"}"#,
            r#"{"type":"Send","room_id":3,"client_msg_id":"a1","body":"hi"}"#,
            r#"{"type":"join","room_id":3,"client_msg_id":"a1","body":"hi"}"#,
            r#"{"type":"send","room_id":3,"client_msg_id":"a1","body":"hi"} x"#,
            &too_long,
        ];
        for input in inputs {
            assert_eq!(
                ClientFrame::parse(input),
                ClientFrame::parse_general(input),
                "{input}"
            );
        }
        assert!(ClientFrame::parse_send(inputs[1]).is_some());
    }

    #[test]
    fn tells_malformed_input_apart() {
        assert_eq!(code_of("not json"), ErrorCode::BadJson);
        assert_eq!(code_of("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code_of(r#"{"type":"shout"}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"name":"x"}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"type":"join"}"#), ErrorCode::BadFrame);
        assert_eq!(
            code_of(r#"{"type":"leave","room_id":"three"}"#),
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn enforces_limits() {
        let long = "x".repeat(limits::MAX_BODY_CHARS + 1);
        let frame = format!(r#"{{"type":"send","room_id":1,"client_msg_id":"m","body":"{long}"}}"#);
        let error = ClientFrame::parse(&frame).err();
        assert_eq!(error.as_ref().map(|e| e.code), Some(ErrorCode::BodyTooLong));
        assert_eq!(
            error.and_then(|e| e.client_msg_id),
            Some(ClientMsgId("m".into()))
        );
        let exact = "é".repeat(limits::MAX_BODY_CHARS);
        let frame =
            format!(r#"{{"type":"send","room_id":1,"client_msg_id":"m","body":"{exact}"}}"#);
        assert!(ClientFrame::parse(&frame).is_ok());
        assert_eq!(
            code_of(r#"{"type":"send","room_id":1,"client_msg_id":"m","body":"  "}"#),
            ErrorCode::BodyEmpty
        );
        assert_eq!(
            code_of(r#"{"type":"send","room_id":1,"client_msg_id":"","body":"x"}"#),
            ErrorCode::InvalidClientMsgId
        );
        assert_eq!(
            code_of(r#"{"type":"hello","name":"ada"}"#),
            ErrorCode::UnknownType
        );
        assert!(validate_name("").is_err());
        assert!(validate_name("a\u{7}b").is_err());
        assert!(validate_room_name(&"r".repeat(65)).is_err());
        let huge = format!(r#"{{"type":"leave","pad":"{}"}}"#, "n".repeat(20_000));
        assert_eq!(code_of(&huge), ErrorCode::FrameTooLarge);
    }

    /// A frame's error answer stays a few hundred bytes whatever the frame quotes back, so a
    /// client cannot make the node hold more for it than it sent.
    #[test]
    fn errors_quote_at_most_an_excerpt_of_the_frame() {
        let escapes = "\\u0001".repeat(2_500);
        let long = "n".repeat(16_000);
        let frames = [
            format!(r#"{{"type":"{escapes}"}}"#),
            format!(r#"{{"type":"{long}"}}"#),
            format!(r#"{{"type":"join","room_id":"{long}"}}"#),
            format!(r#"{{"type":"join","room_id":"{escapes}"}}"#),
            format!(r#"{{"type":"send","room_id":1,"client_msg_id":"m","body":7,"x":"{long}"}}"#),
            format!(r#"{{"type":"{long}"#),
        ];
        for text in frames {
            assert!(text.len() <= limits::MAX_FRAME_BYTES, "{}", text.len());
            let error = match ClientFrame::parse(&text) {
                Ok(frame) => panic!("expected an error, got {frame:?}"),
                Err(error) => error,
            };
            let answer = error.to_frame().to_json();
            assert!(answer.len() < 1_000, "{} bytes: {answer}", answer.len());
        }
        // What is quoted is still recognisable, and where serde saw the error survives.
        let unknown = ClientFrame::parse(&format!(r#"{{"type":"{long}"}}"#));
        let message = unknown.err().map(|e| e.message).unwrap_or_default();
        assert!(
            message.starts_with("unknown frame type \"nnnn"),
            "{message}"
        );
        assert!(message.ends_with("n…\""), "{message}");
        let typed = ClientFrame::parse(&format!(r#"{{"type":"join","room_id":"{long}"}}"#));
        let message = typed.err().map(|e| e.message).unwrap_or_default();
        assert!(message.starts_with("invalid type: string"), "{message}");
        assert!(message.ends_with("expected i64"), "{message}");
        assert_eq!(excerpt("short"), "short");
        assert_eq!(excerpt(&"é".repeat(65)), format!("{}…", "é".repeat(64)));
    }

    #[test]
    fn server_frames_have_stable_shapes() {
        let frame = ServerFrame::Error {
            code: ErrorCode::BodyTooLong,
            message: "too long".into(),
            client_msg_id: None,
            retry_after_ms: None,
        };
        assert_eq!(
            frame.to_json(),
            r#"{"type":"error","code":"body_too_long","message":"too long"}"#
        );
        let message = ServerFrame::Message(ChatMessage {
            room_id: RoomId(1),
            seq: Seq(2),
            sender_id: UserId(3),
            sender_name: "ada".into(),
            client_msg_id: ClientMsgId("c".into()),
            body: "hi".into(),
            sent_at_ms: 5,
            edited_at_ms: None,
            deleted: false,
        });
        assert_eq!(
            message.to_json(),
            r#"{"type":"message","room_id":1,"seq":2,"sender_id":3,"sender_name":"ada","client_msg_id":"c","body":"hi","sent_at_ms":5}"#
        );
        for code in [
            ErrorCode::BadJson,
            ErrorCode::NotJoined,
            ErrorCode::Unavailable,
        ] {
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
