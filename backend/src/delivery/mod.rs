//! The delivery core: how a stored message reaches every local connection in its room, once
//! and in order, live or after a resume.
//!
//! - [`hub`]: this node's connections and the rooms they joined; each connection's outbox, a
//!   joining connection's held live frames, the room's last delivered sequence number.
//! - [`room_line`]: the per-room ordering of the node queue's deliveries, with gaps read from
//!   the store while only their room waits.
//! - [`resume`]: a connection joining a room, with what it missed since `after`.
//! - [`reads`]: the few store reads all of the above make, as a trait.
//!
//! No I/O of its own: it is fed by plain calls (`fanout` and `session` are the glue to the
//! node queue and the WebSockets), reads through [`RoomReads`], and writes only to outboxes.

pub mod hub;
pub mod reads;
pub mod resume;
pub mod room_line;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use hub::{frame, ConnId, DeliveredMessage, Frame, Hub};
pub use reads::RoomReads;
pub use resume::{Joining, MAX_RESUME_MESSAGES};
pub use room_line::{GapRead, RoomLines};
