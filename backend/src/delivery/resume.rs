//! A connection joining a room, gap-free, with or without a resume (`join` with `after`).
//!
//! The connection is put in the room (its live frames held back) before the room's catch-up is
//! read, so every message is either at or below the newest sequence number that read finds
//! (sent from the store) or arrives live after it (held, then released in order). The store can
//! be ahead of what this node has delivered live; the connection then skips live frames up to
//! what it already has (`Hub::finish_catch_up`).

use super::hub::{self, ConnId, Frame, Hub};
use super::reads::RoomReads;
use crate::connection::FRAME_OVERHEAD_BYTES;
use crate::store::{CatchUp, CatchUpRequest};
use chat_protocol::frame::Resume;
use chat_protocol::{ChatMessage, RoomId, Seq, ServerFrame};

/// Most missed messages a resume sends; beyond it the client reloads recent history instead.
/// A resume also sends nothing when its messages would take more than half the connection's
/// outbox, so a resume never trips the slow-client rule.
pub const MAX_RESUME_MESSAGES: i64 = 1_000;

/// One connection joining one room. The caller does what needs the rest of the node around
/// [`Joining::enter`] (the room's membership lock, binding the node queue).
pub struct Joining<'a, R> {
    hub: &'a Hub,
    reads: &'a R,
    room: RoomId,
    conn: ConnId,
}

impl<'a, R: RoomReads> Joining<'a, R> {
    pub fn new(hub: &'a Hub, reads: &'a R, room: RoomId, conn: ConnId) -> Joining<'a, R> {
        Joining {
            hub,
            reads,
            room,
            conn,
        }
    }

    /// The room's newest sequence number, read before the connection is in the room: where
    /// this node's delivery of the room starts when the connection is its first local member.
    pub async fn starting_seq(&self) -> Result<Seq, R::Error> {
        self.reads.last_seq(self.room).await
    }

    /// Puts the connection in the room; its live frames are held from now on.
    pub fn enter(&self, starting_seq: Seq) {
        self.hub
            .join_catching_up(self.room, self.conn, starting_seq);
    }

    /// Reads the room's newest sequence number and what was missed after `after`, then queues
    /// `joined` (naming the room `room_name`), the missed messages and the live frames held
    /// since [`Joining::enter`]; the connection is live from then on. On an error nothing is
    /// queued and the connection is still in the room: the caller takes it out.
    pub async fn catch_up(
        &self,
        room_name: String,
        after: Option<Seq>,
        outbox_budget: usize,
    ) -> Result<(), R::Error> {
        let CatchUp { last_seq, missed } = self
            .reads
            .catch_up(CatchUpRequest {
                room: self.room,
                after,
                max_missed: MAX_RESUME_MESSAGES,
            })
            .await?;
        let (frames, resume) = match after {
            None => (Vec::new(), None),
            Some(after) => {
                let missed_count = (last_seq.0 - after.0).max(0);
                let frames = missed_frames(missed, outbox_budget / 2);
                let resume = Resume {
                    after,
                    missed: missed_count,
                    complete: missed_count <= MAX_RESUME_MESSAGES && frames.is_some(),
                };
                (frames.unwrap_or_default(), Some(resume))
            }
        };
        let joined = hub::frame(&ServerFrame::Joined {
            room_id: self.room,
            room: room_name,
            last_seq,
            resume,
        });
        let live_after = Seq(last_seq.0.max(after.map_or(0, |after| after.0)));
        self.hub
            .finish_catch_up(self.room, self.conn, joined, frames, live_after);
        Ok(())
    }
}

/// The missed messages' frames, or `None` when together they would take more than `budget`
/// bytes of the outbox (the client then reloads recent history, as after a long absence).
fn missed_frames(messages: Vec<ChatMessage>, budget: usize) -> Option<Vec<(Seq, Frame)>> {
    let mut bytes = 0;
    let mut frames = Vec::with_capacity(messages.len());
    for message in messages {
        let seq = message.seq;
        let frame = hub::frame(&ServerFrame::Message(message));
        bytes += frame.len() + FRAME_OVERHEAD_BYTES;
        if bytes > budget {
            return None;
        }
        frames.push((seq, frame));
    }
    Some(frames)
}
