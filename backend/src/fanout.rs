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
use chat_protocol::bus::{Delivery, StoredMessage};
use chat_protocol::{RoomId, Seq, ServerFrame};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Most messages read from PostgreSQL to fill one gap; a longer gap is left to the client's resume.
const MAX_GAP_FILL: i64 = 1_000;

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
pub async fn run(app: Arc<App>, mut events: mpsc::UnboundedReceiver<FanoutEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            FanoutEvent::Rooms(rooms) => {
                let rooms = rooms.into_iter().map(|room| (room.room_id, room.messages));
                deliver_local_rooms(&app, rooms, |messages| messages).await;
            }
            FanoutEvent::Delivery(Delivery::Room { room_id, messages }) => {
                deliver_room(&app, room_id, delivered(messages)).await;
            }
            FanoutEvent::Delivery(Delivery::Rooms { rooms }) => {
                let rooms = rooms.into_iter().map(|room| (room.room_id, room.messages));
                deliver_local_rooms(&app, rooms, delivered).await;
            }
            FanoutEvent::Delivery(Delivery::Duplicates { receipts }) => {
                app.hub.answer_duplicates(&receipts);
            }
            FanoutEvent::Delivery(Delivery::MemberLeft { room_id, user_id }) => {
                app.hub.remove_user(room_id, user_id);
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
                // The message itself first, if this node has not shown it yet: read from
                // PostgreSQL, it already carries the change.
                fill_gap(&app, room_id, Some(Seq(seq.0.saturating_add(1)))).await;
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
                app.hub.deliver_event(room_id, &frame);
            }
            // User-scoped deliveries go to the presence task.
            FanoutEvent::Delivery(
                Delivery::Presence { .. }
                | Delivery::PresenceSnapshot { .. }
                | Delivery::PresenceSync { .. }
                | Delivery::ReadMarker { .. },
            ) => {}
            FanoutEvent::Resync => {
                for room_id in app.hub.rooms() {
                    fill_gap(&app, room_id, None).await;
                }
            }
        }
    }
}

/// A JSON delivery's messages with their frames serialized.
fn delivered(messages: Vec<StoredMessage>) -> Vec<DeliveredMessage> {
    messages
        .into_iter()
        .map(|stored| DeliveredMessage::new(&stored.message, Some(stored.origin)))
        .collect()
}

/// Delivers a batch's rooms that have local members (the batch's other rooms come along),
/// turning a room's messages into deliverable ones only for those.
async fn deliver_local_rooms<M>(
    app: &App,
    rooms: impl Iterator<Item = (RoomId, M)>,
    deliverable: impl Fn(M) -> Vec<DeliveredMessage>,
) {
    for (room_id, messages) in rooms {
        if app.hub.local_delivered_seq(room_id).is_some() {
            deliver_room(app, room_id, deliverable(messages)).await;
        }
    }
}

/// Delivers a room's new messages, after any it missed before them.
async fn deliver_room(app: &App, room_id: RoomId, messages: Vec<DeliveredMessage>) {
    if let Some(first) = messages.first().map(|message| message.seq) {
        fill_gap(app, room_id, Some(first)).await;
    }
    app.hub.deliver_room(room_id, messages);
}

/// Delivers, from PostgreSQL, the room's messages after the last one delivered here and before
/// `before` (or all of them, up to the limit).
async fn fill_gap(app: &App, room_id: RoomId, before: Option<Seq>) {
    let Some(delivered) = app.hub.local_delivered_seq(room_id) else {
        return;
    };
    let limit = match before {
        Some(before) if before.0 <= delivered.0 + 1 => return,
        Some(before) => (before.0 - delivered.0 - 1).min(MAX_GAP_FILL),
        None => MAX_GAP_FILL,
    };
    match app.store.messages_after(room_id, delivered, limit).await {
        Ok(missed) if missed.is_empty() => {}
        Ok(missed) => {
            app.metrics.messages_gap_filled.inc_by(missed.len() as u64);
            app.hub.deliver_room(
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
}
