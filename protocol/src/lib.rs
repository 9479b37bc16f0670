//! Wire types shared by the chat server and the browser client.
//!
//! Everything that crosses a process boundary as JSON is defined here and nowhere else:
//! - [`frame`]: WebSocket frames between a client and a chat node,
//! - [`api`]: REST request and answer bodies, and the checks on account and room fields,
//! - [`bus`]: AMQP payloads between chat nodes (ingest and delivery),
//! - [`limits`]: the size limits both sides enforce,
//! - [`names`]: the characters no name may contain.
//!
//! These types are a compatibility promise: add optional fields, never rename or remove.

pub mod api;
pub mod bus;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod names;
pub mod search;

pub use frame::{ChatMessage, ClientFrame, ErrorCode, FrameError, PresenceStatus, ServerFrame};
pub use ids::{ClientMsgId, RoomId, Seq, UserId};
