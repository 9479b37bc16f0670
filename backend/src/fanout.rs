//! Fan-out: the task that hands the node queue's deliveries to the delivery core, in queue order.
//!
//! Room messages and their changes go to [`RoomLines`] (per room in order, gaps read from the
//! store); after every reconnect it reads what each local room missed meanwhile. The rest is the
//! node around it: the rooms' watchers hear of new messages, typing indicators and duplicate
//! receipts go straight to the hub, and a member who left has the node queue's binding settled.

use crate::app::App;
use crate::bus::wire::DeliveredRoom;
use crate::delivery::{DeliveredMessage, RoomLines};
use crate::store::Store;
use crate::watch;
use chat_protocol::bus::{Delivery, StoredMessage};
use chat_protocol::{RoomId, ServerFrame, UserId};
use std::sync::Arc;
use tokio::sync::mpsc;

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
    let mut lines = RoomLines::new(
        app.hub.clone(),
        Arc::new(app.store.clone()),
        app.metrics.clone(),
    );
    loop {
        tokio::select! {
            // A finished gap read releases its room's held work: take it before new deliveries.
            biased;
            read = lines.finished_read() => lines.fill(read),
            event = events.recv() => match event {
                Some(event) => handle(&app, &mut lines, event),
                None => break,
            },
        }
    }
}

fn handle(app: &Arc<App>, lines: &mut RoomLines<Store>, event: FanoutEvent) {
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
        FanoutEvent::Resync => lines.resync(),
    }
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
