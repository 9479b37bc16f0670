//! Each local room's line of deliveries: in sequence order, without gaps, and never waiting on
//! another room.
//!
//! The node queue can lose messages (it is deleted with the node's RabbitMQ connection, and a
//! room is bound only after its first local member joined) and can bring a batch again. So before
//! a room's message `n` is delivered here, `n - 1` must have been: otherwise the missing messages
//! are read from the store first, beside the caller, while what arrives for the room meanwhile
//! waits in order. Redelivered sequence numbers are dropped by the hub.

use super::hub::{DeliveredMessage, Hub};
use super::reads::RoomReads;
use crate::metrics::Metrics;
use chat_protocol::{ChatMessage, RoomId, Seq, ServerFrame};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

/// Most messages read from the store to fill one gap; a longer gap is left to the client's resume.
const MAX_GAP_FILL: i64 = 1_000;
/// Most gap reads at once: a slow store is not asked for more while it is slow.
const MAX_GAP_READS: usize = 4;
/// Most messages (and changes) a room holds while its gap is read; beyond it they are dropped
/// and read from the store after the hold, so a room never holds more than this in memory.
const MAX_HELD_MESSAGES: usize = 2_000;

/// The per-room ordering of deliveries. Fed by plain calls, in the node queue's order
/// ([`RoomLines::messages`], [`RoomLines::change`], [`RoomLines::resync`]); a gap read started by
/// one of them comes back through [`RoomLines::finished_read`], to be handed to
/// [`RoomLines::fill`] on the same task.
pub struct RoomLines<R> {
    hub: Arc<Hub>,
    reads: Arc<R>,
    metrics: Metrics,
    waiting: HashMap<RoomId, Waiting>,
    reads_at_once: Arc<Semaphore>,
    finished: mpsc::UnboundedReceiver<GapRead>,
    finish: mpsc::UnboundedSender<GapRead>,
}

/// A finished read of a room's missed messages.
pub struct GapRead {
    room_id: RoomId,
    missed: Result<Vec<ChatMessage>, String>,
}

/// Work on one room that must wait for the room's earlier messages.
enum RoomWork {
    Messages(Vec<DeliveredMessage>),
    /// An edit or delete of `seq`: shown only after the message itself.
    Change(Seq, ServerFrame),
}

impl RoomWork {
    fn messages(&self) -> usize {
        match self {
            RoomWork::Messages(messages) => messages.len(),
            RoomWork::Change(..) => 1,
        }
    }
}

/// A room whose missing messages are being read: what arrives for it meanwhile waits here, in
/// order, so the room stays gap-free while every other room goes on.
#[derive(Default)]
struct Waiting {
    held: VecDeque<RoomWork>,
    held_messages: usize,
    /// Work was dropped for the room (the hold was full): read everything after the read's end.
    overflowed: bool,
}

impl<R: RoomReads> RoomLines<R> {
    pub fn new(hub: Arc<Hub>, reads: Arc<R>, metrics: Metrics) -> RoomLines<R> {
        let (finish, finished) = mpsc::unbounded_channel();
        RoomLines {
            hub,
            reads,
            metrics,
            waiting: HashMap::new(),
            reads_at_once: Arc::new(Semaphore::new(MAX_GAP_READS)),
            finished,
            finish,
        }
    }

    /// A room's messages, in sequence order, as the node queue brought them.
    pub fn messages(&mut self, room_id: RoomId, messages: Vec<DeliveredMessage>) {
        if messages.is_empty() {
            return;
        }
        self.run(room_id, RoomWork::Messages(messages));
    }

    /// An edit or delete of the room's message `seq`, shown after the message itself.
    pub fn change(&mut self, room_id: RoomId, seq: Seq, frame: ServerFrame) {
        self.run(room_id, RoomWork::Change(seq, frame));
    }

    /// After the node queue was (re)created: every local room may have missed messages.
    pub fn resync(&mut self) {
        for room_id in self.hub.rooms() {
            match self.waiting.get_mut(&room_id) {
                Some(waiting) => waiting.overflowed = true,
                None => self.start_read(room_id, None),
            }
        }
    }

    /// The next gap read to finish. Never ends while none is under way.
    pub async fn finished_read(&mut self) -> GapRead {
        match self.finished.recv().await {
            Some(read) => read,
            // Never: this holds a sender itself.
            None => std::future::pending().await,
        }
    }

    /// Delivers what a read found, then the work the room held meanwhile, in order.
    pub fn fill(&mut self, read: GapRead) {
        let room_id = read.room_id;
        // Without progress (the store is away, or had nothing), the held work goes out as it is
        // rather than waiting on another read: the clients' resume covers what is missing.
        let progressed = matches!(&read.missed, Ok(missed) if !missed.is_empty());
        match read.missed {
            Ok(missed) if missed.is_empty() => {}
            Ok(missed) => {
                self.metrics.messages_gap_filled.inc_by(missed.len() as u64);
                self.hub.deliver_room(
                    room_id,
                    missed
                        .iter()
                        .map(|message| DeliveredMessage::new(message, None)),
                );
            }
            Err(error) => {
                tracing::warn!(%error, %room_id, "could not fill a delivery gap; clients resume it")
            }
        }
        let Some(waiting) = self.waiting.remove(&room_id) else {
            return;
        };
        if !progressed {
            for work in waiting.held {
                self.apply(room_id, work);
            }
            return;
        }
        let mut held = waiting.held.into_iter();
        while let Some(work) = held.next() {
            self.run(room_id, work);
            if let Some(again) = self.waiting.get_mut(&room_id) {
                // Another gap: the rest waits behind its read, in order.
                for work in held.by_ref() {
                    hold(again, work);
                }
                again.overflowed |= waiting.overflowed;
                return;
            }
        }
        if waiting.overflowed {
            self.start_read(room_id, None);
        }
    }

    /// Whether the room waits on a read of its missed messages.
    pub fn is_waiting(&self, room_id: RoomId) -> bool {
        self.waiting.contains_key(&room_id)
    }

    /// Does `work` now, or holds it behind the room's read in progress, or starts that read.
    fn run(&mut self, room_id: RoomId, work: RoomWork) {
        if let Some(waiting) = self.waiting.get_mut(&room_id) {
            hold(waiting, work);
            return;
        }
        let Some(delivered) = self.hub.local_delivered_seq(room_id) else {
            return;
        };
        // The first sequence number this work needs delivered before it.
        let needs_before = match &work {
            RoomWork::Messages(messages) => messages.first().map(|message| message.seq),
            RoomWork::Change(seq, _) => Some(Seq(seq.0.saturating_add(1))),
        };
        match needs_before {
            Some(before) if before.0 > delivered.0 + 1 => {
                self.start_read(room_id, Some(before));
                if let Some(waiting) = self.waiting.get_mut(&room_id) {
                    hold(waiting, work);
                }
            }
            _ => self.apply(room_id, work),
        }
    }

    fn apply(&self, room_id: RoomId, work: RoomWork) {
        match work {
            RoomWork::Messages(messages) => self.hub.deliver_room(room_id, messages),
            RoomWork::Change(_, frame) => self.hub.deliver_event(room_id, &frame),
        }
    }

    /// Reads, beside the caller, the room's messages after the last one delivered here and
    /// before `before` (or all of them, up to the limit); the room waits meanwhile.
    fn start_read(&mut self, room_id: RoomId, before: Option<Seq>) {
        let Some(delivered) = self.hub.local_delivered_seq(room_id) else {
            return;
        };
        let limit = match before {
            Some(before) if before.0 <= delivered.0 + 1 => return,
            Some(before) => (before.0 - delivered.0 - 1).min(MAX_GAP_FILL),
            None => MAX_GAP_FILL,
        };
        self.waiting.entry(room_id).or_default();
        let reads = self.reads.clone();
        let reads_at_once = self.reads_at_once.clone();
        let finish = self.finish.clone();
        tokio::spawn(async move {
            // The semaphore is never closed; without a permit the read goes ahead anyway.
            let _permit = reads_at_once.acquire_owned().await.ok();
            let missed = reads
                .messages_after(room_id, delivered, limit)
                .await
                .map_err(|error| error.to_string());
            let _ = finish.send(GapRead { room_id, missed });
        });
    }
}

/// Holds work behind a room's read, up to the bound; beyond it the work is dropped and read
/// from the store once the hold is released (delivered messages are always stored).
fn hold(waiting: &mut Waiting, work: RoomWork) {
    let messages = work.messages();
    if waiting.held_messages + messages > MAX_HELD_MESSAGES {
        waiting.overflowed = true;
        return;
    }
    waiting.held_messages += messages;
    waiting.held.push_back(work);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: i64) -> RoomWork {
        RoomWork::Change(
            Seq(seq),
            ServerFrame::MessageDeleted {
                room_id: RoomId(1),
                seq: Seq(seq),
                deleted_by: chat_protocol::UserId(1),
            },
        )
    }

    #[test]
    fn a_waiting_room_holds_up_to_its_bound_in_order_then_only_remembers_it_dropped() {
        let mut waiting = Waiting::default();
        for seq in 1..=MAX_HELD_MESSAGES as i64 {
            hold(&mut waiting, change(seq));
        }
        assert!(!waiting.overflowed);
        hold(&mut waiting, change(0));
        assert!(waiting.overflowed);
        assert_eq!(waiting.held.len(), MAX_HELD_MESSAGES);
        assert_eq!(waiting.held_messages, MAX_HELD_MESSAGES);
        let order: Vec<i64> = waiting
            .held
            .iter()
            .map(|work| match work {
                RoomWork::Change(seq, _) => seq.0,
                RoomWork::Messages(_) => -1,
            })
            .collect();
        assert!(order.windows(2).all(|pair| pair[0] + 1 == pair[1]));
    }
}
