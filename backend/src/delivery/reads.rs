//! What the delivery core reads from the store, and nothing more: a room's newest sequence
//! number, a join's catch-up, and a room's messages after a sequence number (a gap).
//!
//! The core is written against [`RoomReads`], implemented here for the real [`Store`] (each read
//! is the store's own, batched where the store batches it) and, in the tests, by an in-memory
//! fake, so the ordering and gap logic runs without PostgreSQL.

use crate::store::{CatchUp, CatchUpRequest, Store, StoreError};
use chat_protocol::{ChatMessage, RoomId, Seq};
use std::fmt::Display;
use std::future::Future;

/// The store reads that delivery depends on.
pub trait RoomReads: Send + Sync + 'static {
    /// Why a read failed; logged, never shown to a client.
    type Error: Display + Send + 'static;

    /// The sequence number of the room's newest stored message (0 for none).
    fn last_seq(&self, room: RoomId) -> impl Future<Output = Result<Seq, Self::Error>> + Send;

    /// A join's read: the room's newest sequence number and, given `after`, the messages
    /// missed since (none when more than `max_missed` were).
    fn catch_up(
        &self,
        request: CatchUpRequest,
    ) -> impl Future<Output = Result<CatchUp, Self::Error>> + Send;

    /// Up to `limit` of the room's messages after `after`, oldest first.
    fn messages_after(
        &self,
        room: RoomId,
        after: Seq,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ChatMessage>, Self::Error>> + Send;
}

impl RoomReads for Store {
    type Error = StoreError;

    fn last_seq(&self, room: RoomId) -> impl Future<Output = Result<Seq, StoreError>> + Send {
        Store::last_seq(self, room)
    }

    fn catch_up(
        &self,
        request: CatchUpRequest,
    ) -> impl Future<Output = Result<CatchUp, StoreError>> + Send {
        Store::catch_up(self, request)
    }

    fn messages_after(
        &self,
        room: RoomId,
        after: Seq,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ChatMessage>, StoreError>> + Send {
        Store::messages_after(self, room, after, limit)
    }
}
