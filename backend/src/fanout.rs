//! Fan-out: turns the node queue's deliveries into frames for local connections, gap-free.
//!
//! One task per node handles deliveries in queue order. The node queue can lose messages: it is
//! deleted with the node's RabbitMQ connection, and a room is bound only after its first local
//! member joined. So before delivering a room's message with sequence number `n`, the task checks
//! that `n - 1` was delivered here, and otherwise first reads the missing messages from
//! PostgreSQL. After every reconnect it also reads what each local room missed meanwhile.

use crate::app::App;
use crate::bus::wire::DeliveredRoom;
use crate::hub::DeliveredMessage;
use crate::watch;
use chat_protocol::bus::{Delivery, StoredMessage};
use chat_protocol::{ChatMessage, RoomId, Seq, ServerFrame, UserId};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

/// Most messages read from PostgreSQL to fill one gap; a longer gap is left to the client's resume.
const MAX_GAP_FILL: i64 = 1_000;
/// Most gap reads at once: a slow store is not asked for more while it is slow.
const MAX_GAP_READS: usize = 4;
/// Most messages (and changes) a room holds while its gap is read; beyond it they are dropped
/// and read from PostgreSQL after the hold, so a room never holds more than this in memory.
const MAX_HELD_MESSAGES: usize = 2_000;
/// Deliveries queued between the node queue's consumer and the fan-out task. When it is full
/// the consumer stops taking deliveries, and RabbitMQ stops sending at the prefetch limit.
pub const FANOUT_QUEUE: usize = 1_024;

/// How long a typing indicator shows without renewal. Senders renew every 2 s while typing.
pub const TYPING_EXPIRES_MS: u64 = 5_000;

/// What the fan-out task is asked to do.
pub enum FanoutEvent {
    /// A delivery from this node's queue.
    Delivery(Delivery),
    /// A persister batch from this node's queue, in the binary layout.
    Rooms(Vec<DeliveredRoom>),
    /// The node queue was (re)created: every local room may have missed messages.
    Resync,
}

/// Runs until every sender is dropped.
pub async fn run(app: Arc<App>, mut events: mpsc::Receiver<FanoutEvent>) {
    let mut lines = RoomLines::new(app.clone());
    loop {
        tokio::select! {
            // A finished gap read releases its room's held work: take it before new deliveries.
            biased;
            Some(read) = lines.finished.recv() => lines.gap_read(read),
            event = events.recv() => match event {
                Some(event) => handle(&app, &mut lines, event),
                None => break,
            },
        }
    }
}

fn handle(app: &Arc<App>, lines: &mut RoomLines, event: FanoutEvent) {
    match event {
        FanoutEvent::Rooms(rooms) => {
            for room in &rooms {
                if let Some(newest) = room.messages.last() {
                    app.watching
                        .announce(&app.hub, room.room_id, newest.seq, || sender_of(newest));
                }
            }
            for room in rooms {
                if app.hub.local_delivered_seq(room.room_id).is_some() {
                    lines.messages(room.room_id, room.messages);
                }
            }
        }
        FanoutEvent::Delivery(Delivery::Rooms { rooms }) => {
            for room in &rooms {
                announce_stored(app, room.room_id, &room.messages);
            }
            for room in rooms {
                if app.hub.local_delivered_seq(room.room_id).is_some() {
                    lines.messages(room.room_id, delivered(room.messages));
                }
            }
        }
        FanoutEvent::Delivery(Delivery::Duplicates { receipts }) => {
            app.hub.answer_duplicates(&receipts);
        }
        FanoutEvent::Delivery(Delivery::MemberLeft { room_id, user_id }) => {
            app.hub.remove_user(room_id, user_id);
            app.watching.forget_room(user_id, room_id);
            // Off this task: binding waits for RabbitMQ.
            let app = app.clone();
            tokio::spawn(async move { watch::settle_rooms(&app, vec![room_id]).await });
        }
        FanoutEvent::Delivery(Delivery::Typing {
            room_id,
            user_id,
            name,
            origin,
        }) => {
            let frame = ServerFrame::Typing {
                room_id,
                user_id,
                name,
                expires_in_ms: TYPING_EXPIRES_MS,
            };
            let except = (origin.node_id == app.node_id()).then_some(origin.conn_id);
            app.hub.broadcast(room_id, &frame, except);
        }
        FanoutEvent::Delivery(Delivery::MessageChanged {
            room_id,
            seq,
            body,
            changed_at_ms,
            by,
        }) => {
            let frame = match body {
                Some(body) => ServerFrame::MessageEdited {
                    room_id,
                    seq,
                    body,
                    edited_at_ms: changed_at_ms,
                },
                None => ServerFrame::MessageDeleted {
                    room_id,
                    seq,
                    deleted_by: by,
                },
            };
            lines.change(room_id, seq, frame);
        }
        // User-scoped deliveries go to the presence task.
        FanoutEvent::Delivery(
            Delivery::Presence { .. }
            | Delivery::PresenceSnapshot { .. }
            | Delivery::PresenceSync { .. }
            | Delivery::RoomsChanged { .. }
            | Delivery::SessionsEnded { .. }
            | Delivery::ReadMarker { .. },
        ) => {}
        FanoutEvent::Resync => {
            for room_id in app.hub.rooms() {
                lines.resync(room_id);
            }
        }
    }
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

/// A room whose missing messages are being read from PostgreSQL: what arrives for it meanwhile
/// waits here, in order, so the room stays gap-free while every other room goes on.
#[derive(Default)]
struct Waiting {
    held: VecDeque<RoomWork>,
    held_messages: usize,
    /// Work was dropped for room (the hold was full): read everything after the read's end.
    overflowed: bool,
}

/// A finished read of a room's missed messages.
struct GapRead {
    room_id: RoomId,
    missed: Result<Vec<ChatMessage>, String>,
}

/// The per-room ordering of fan-out. A room's messages are delivered in sequence order without
/// gaps: a message whose predecessor was not delivered here first has the missing ones read from
/// PostgreSQL. The read runs beside the fan-out task, never in it, so a slow store or a room
/// with a long gap holds only that room; and what a waiting room may hold is bounded.
struct RoomLines {
    app: Arc<App>,
    waiting: HashMap<RoomId, Waiting>,
    reads: Arc<Semaphore>,
    finished: mpsc::UnboundedReceiver<GapRead>,
    finish: mpsc::UnboundedSender<GapRead>,
}

impl RoomLines {
    fn new(app: Arc<App>) -> RoomLines {
        let (finish, finished) = mpsc::unbounded_channel();
        RoomLines {
            app,
            waiting: HashMap::new(),
            reads: Arc::new(Semaphore::new(MAX_GAP_READS)),
            finished,
            finish,
        }
    }

    fn messages(&mut self, room_id: RoomId, messages: Vec<DeliveredMessage>) {
        if messages.is_empty() {
            return;
        }
        self.run(room_id, RoomWork::Messages(messages));
    }

    fn change(&mut self, room_id: RoomId, seq: Seq, frame: ServerFrame) {
        self.run(room_id, RoomWork::Change(seq, frame));
    }

    /// After a reconnect: every local room may have missed messages.
    fn resync(&mut self, room_id: RoomId) {
        match self.waiting.get_mut(&room_id) {
            Some(waiting) => waiting.overflowed = true,
            None => self.start_read(room_id, None),
        }
    }

    /// Does `work` now, or holds it behind the room's read in progress, or starts that read.
    fn run(&mut self, room_id: RoomId, work: RoomWork) {
        if let Some(waiting) = self.waiting.get_mut(&room_id) {
            hold(waiting, work);
            return;
        }
        let Some(delivered) = self.app.hub.local_delivered_seq(room_id) else {
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
            RoomWork::Messages(messages) => self.app.hub.deliver_room(room_id, messages),
            RoomWork::Change(_, frame) => self.app.hub.deliver_event(room_id, &frame),
        }
    }

    /// Reads, beside this task, the room's messages after the last one delivered here and
    /// before `before` (or all of them, up to the limit); the room waits meanwhile.
    fn start_read(&mut self, room_id: RoomId, before: Option<Seq>) {
        let Some(delivered) = self.app.hub.local_delivered_seq(room_id) else {
            return;
        };
        let limit = match before {
            Some(before) if before.0 <= delivered.0 + 1 => return,
            Some(before) => (before.0 - delivered.0 - 1).min(MAX_GAP_FILL),
            None => MAX_GAP_FILL,
        };
        self.waiting.entry(room_id).or_default();
        let app = self.app.clone();
        let reads = self.reads.clone();
        let finish = self.finish.clone();
        tokio::spawn(async move {
            // The semaphore is never closed; without a permit the read goes ahead anyway.
            let _permit = reads.acquire_owned().await.ok();
            let missed = app
                .store
                .messages_after(room_id, delivered, limit)
                .await
                .map_err(|error| error.to_string());
            let _ = finish.send(GapRead { room_id, missed });
        });
    }

    /// Delivers what a read found, then the work the room held meanwhile, in order.
    fn gap_read(&mut self, read: GapRead) {
        let room_id = read.room_id;
        // Without progress (the store is away, or had nothing), the held work goes out as it is
        // rather than waiting on another read: the clients' resume covers what is missing.
        let progressed = matches!(&read.missed, Ok(missed) if !missed.is_empty());
        match read.missed {
            Ok(missed) if missed.is_empty() => {}
            Ok(missed) => {
                self.app
                    .metrics
                    .messages_gap_filled
                    .inc_by(missed.len() as u64);
                self.app.hub.deliver_room(
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
}

/// Holds work behind a room's read, up to the bound; beyond it the work is dropped and read
/// from PostgreSQL once the hold is released (delivered messages are always stored).
fn hold(waiting: &mut Waiting, work: RoomWork) {
    let messages = work.messages();
    if waiting.held_messages + messages > MAX_HELD_MESSAGES {
        waiting.overflowed = true;
        return;
    }
    waiting.held_messages += messages;
    waiting.held.push_back(work);
}

/// Tells the room's watchers of the newest of a JSON delivery's messages.
fn announce_stored(app: &App, room_id: RoomId, messages: &[StoredMessage]) {
    if let Some(newest) = messages.last() {
        let sender = newest.message.sender_id;
        app.watching
            .announce(&app.hub, room_id, newest.message.seq, || Some(sender));
    }
}

/// The sender of a message in the binary layout, which is only in its frame: read once per room
/// and batch, and only when the room has watchers.
fn sender_of(message: &DeliveredMessage) -> Option<UserId> {
    #[derive(serde::Deserialize)]
    struct Sender {
        sender_id: UserId,
    }
    serde_json::from_str::<Sender>(message.frame.as_str())
        .ok()
        .map(|sender| sender.sender_id)
}

/// A JSON delivery's messages with their frames serialized.
fn delivered(messages: Vec<StoredMessage>) -> Vec<DeliveredMessage> {
    messages
        .into_iter()
        .map(|stored| DeliveredMessage::new(&stored.message, Some(stored.origin)))
        .collect()
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
