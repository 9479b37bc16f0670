//! The hub: this node's WebSocket connections and the rooms they have joined.
//!
//! Deliveries from the node queue fan out here: each frame is serialized once and queued to
//! every local member's outbox without waiting. A member whose outbox is full is too slow to
//! keep up; it is disconnected rather than allowed to hold memory or stall the room
//! (`connection::Outbox`).

use crate::locks::{lock, read, write};
use chat_protocol::bus::{DuplicateReceipt, Origin};
use chat_protocol::frame::MessageFrame;
use chat_protocol::{ChatMessage, ClientMsgId, RoomId, Seq, ServerFrame, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::auth::SessionKey;
use crate::connection::Ending;
pub use crate::connection::Outbox;
use crate::metrics::Metrics;

/// A stored message on its way to a room's local members, its `message` frame already
/// serialized: by the persister, for deliveries in the binary layout (`bus::wire`), or here.
#[derive(Debug, Clone)]
pub struct DeliveredMessage {
    pub seq: Seq,
    pub sent_at_ms: i64,
    pub client_msg_id: ClientMsgId,
    /// The connection that sent it; `None` for a message read from PostgreSQL.
    pub origin: Option<Origin>,
    /// The `message` frame.
    pub frame: Frame,
}

impl DeliveredMessage {
    /// Serializes the message's frame.
    pub fn new(message: &ChatMessage, origin: Option<Origin>) -> DeliveredMessage {
        DeliveredMessage {
            seq: message.seq,
            sent_at_ms: message.sent_at_ms,
            client_msg_id: message.client_msg_id.clone(),
            origin,
            frame: Frame::from(
                serde_json::to_string(&MessageFrame::Message(message)).unwrap_or_default(),
            ),
        }
    }
}

/// A connection's id, unique within this node's lifetime.
pub type ConnId = u64;

/// A serialized frame, shared by every connection it goes to: cloning it counts a reference,
/// and the WebSocket layer writes it without copying it into a message of its own.
pub type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;

struct LocalRoom {
    members: HashSet<ConnId>,
    /// Highest sequence number delivered here: a redelivered message is not shown twice.
    delivered: AtomicI64,
    /// Members that joined with a catch-up, while it matters: see [`CatchUp`].
    catching_up: Mutex<HashMap<ConnId, CatchUp>>,
}

/// A member's catch-up state in a room.
enum CatchUp {
    /// Missed messages are still being read: live frames wait here, with their sequence
    /// numbers, until the missed ones are queued ahead of them.
    Holding(Vec<(i64, Frame)>),
    /// Caught up to this sequence number from the store, which can be ahead of what has been
    /// delivered live here: live frames up to it were already sent and are skipped. Dropped once
    /// the live stream passes it.
    Floor(i64),
}

/// Room membership locks kept, at least, before those nobody holds are forgotten.
const MEMBERSHIP_LOCKS_KEPT: usize = 4_096;

/// Local connections and room membership.
pub struct Hub {
    node_id: String,
    metrics: Metrics,
    connections: RwLock<HashMap<ConnId, Outbox>>,
    /// Each signed-in user's local connections.
    by_user: RwLock<HashMap<UserId, HashSet<ConnId>>>,
    rooms: RwLock<HashMap<RoomId, LocalRoom>>,
    /// Serialises the bind/unbind decisions of one room (first member binds, last unbinds).
    membership_locks: Mutex<MembershipLocks>,
}

#[derive(Default)]
struct MembershipLocks {
    locks: HashMap<RoomId, Arc<tokio::sync::Mutex<()>>>,
    /// The size at which the locks nobody holds are next forgotten: twice what was left, so
    /// the scans cost a constant share of the calls.
    prune_at: usize,
}

impl Hub {
    pub fn new(node_id: String, metrics: Metrics) -> Hub {
        Hub {
            node_id,
            metrics,
            connections: RwLock::new(HashMap::new()),
            by_user: RwLock::new(HashMap::new()),
            rooms: RwLock::new(HashMap::new()),
            membership_locks: Mutex::default(),
        }
    }

    pub fn register(&self, conn: ConnId, outbox: Outbox) {
        write(&self.by_user)
            .entry(outbox.user())
            .or_default()
            .insert(conn);
        write(&self.connections).insert(conn, outbox);
    }

    pub fn unregister(&self, conn: ConnId) {
        let removed = write(&self.connections).remove(&conn);
        if let Some(outbox) = removed {
            let mut by_user = write(&self.by_user);
            if let Some(conns) = by_user.get_mut(&outbox.user()) {
                conns.remove(&conn);
                if conns.is_empty() {
                    by_user.remove(&outbox.user());
                }
            }
        }
    }

    /// Ends (close `CLOSE_SESSION_ENDED`) every local connection of `user` whose session
    /// `ended` says has ended; returns how many.
    pub fn end_sessions(&self, user: UserId, ended: impl Fn(&SessionKey) -> bool) -> usize {
        let conns: Vec<ConnId> = read(&self.by_user)
            .get(&user)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default();
        let connections = read(&self.connections);
        conns
            .iter()
            .filter_map(|conn| connections.get(conn))
            .filter(|outbox| ended(&outbox.session()))
            .filter(|outbox| outbox.end(Ending::SessionEnded))
            .count()
    }

    /// Ends every local connection whose session `ended` says has ended, whoever's; returns
    /// how many.
    pub fn end_sessions_of_any(&self, ended: impl Fn(&SessionKey) -> bool) -> usize {
        let connections = read(&self.connections);
        connections
            .values()
            .filter(|outbox| ended(&outbox.session()))
            .filter(|outbox| outbox.end(Ending::SessionEnded))
            .count()
    }

    /// The sessions of the local connections, each once.
    pub fn sessions(&self) -> HashSet<SessionKey> {
        read(&self.connections)
            .values()
            .map(Outbox::session)
            .collect()
    }

    /// The lock to hold while deciding whether a room must be bound or unbound. One per room
    /// while anyone holds or waits for it; rooms nobody does are forgotten once the map has
    /// grown past [`MEMBERSHIP_LOCKS_KEPT`] and twice what the last such pruning left. On a
    /// poisoned map the hub's lock policy holds (the map is used as it is): handing out a fresh
    /// lock instead would let a bind and an unbind of the room overlap.
    pub fn membership_lock(&self, room: RoomId) -> Arc<tokio::sync::Mutex<()>> {
        let mut held = lock(&self.membership_locks);
        if held.locks.len() >= held.prune_at.max(MEMBERSHIP_LOCKS_KEPT) {
            held.locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            held.prune_at = held.locks.len() * 2;
        }
        held.locks.entry(room).or_default().clone()
    }

    /// Whether the connection is in the room here (it is taken out when its user leaves).
    pub fn follows(&self, room: RoomId, conn: ConnId) -> bool {
        read(&self.rooms)
            .get(&room)
            .is_some_and(|r| r.members.contains(&conn))
    }

    /// Number of local connections in the room.
    pub fn local_members(&self, room: RoomId) -> usize {
        read(&self.rooms).get(&room).map_or(0, |r| r.members.len())
    }

    /// Adds a member whose live frames are held back until [`Hub::finish_catch_up`]. The first
    /// local member starts the room's delivery after `last_seq`, the room's newest message.
    pub fn join_catching_up(&self, room: RoomId, conn: ConnId, last_seq: Seq) {
        let mut rooms = write(&self.rooms);
        let local = rooms.entry(room).or_insert_with(|| LocalRoom {
            members: HashSet::new(),
            delivered: AtomicI64::new(last_seq.0),
            catching_up: Mutex::new(HashMap::new()),
        });
        local.members.insert(conn);
        lock(&local.catching_up).insert(conn, CatchUp::Holding(Vec::new()));
    }

    /// Queues `joined`, then the missed messages' frames, then the live frames held back since
    /// [`Hub::join_catching_up`] that come after `live_after`; from then on the member gets live
    /// frames directly. Done under the lock deliveries take, so nothing interleaves.
    pub fn finish_catch_up(
        &self,
        room: RoomId,
        conn: ConnId,
        joined: Frame,
        missed: Vec<(Seq, Frame)>,
        live_after: Seq,
    ) {
        let rooms = read(&self.rooms);
        let Some(local) = rooms.get(&room) else {
            return;
        };
        // Same lock order as deliveries: rooms, connections, then the held frames.
        let connections = read(&self.connections);
        let mut waiting = lock(&local.catching_up);
        let held = match waiting.remove(&conn) {
            Some(CatchUp::Holding(held)) => held,
            _ => Vec::new(),
        };
        let Some(outbox) = connections.get(&conn) else {
            return;
        };
        outbox.push(joined);
        let mut last = live_after.0;
        for (seq, missed_frame) in missed {
            last = last.max(seq.0);
            outbox.push(missed_frame);
        }
        for (seq, held_frame) in held {
            if seq > last {
                outbox.push(held_frame);
            }
        }
        if last > local.delivered.load(Ordering::Acquire) {
            waiting.insert(conn, CatchUp::Floor(last));
        }
    }

    /// Removes a member; returns how many local members remain.
    pub fn leave(&self, room: RoomId, conn: ConnId) -> usize {
        let mut rooms = write(&self.rooms);
        let Some(local) = rooms.get_mut(&room) else {
            return 0;
        };
        local.members.remove(&conn);
        lock(&local.catching_up).remove(&conn);
        let remaining = local.members.len();
        if remaining == 0 {
            rooms.remove(&room);
        }
        remaining
    }

    /// Queues a frame to one local connection.
    pub fn push_to(&self, conn: ConnId, frame: Frame) -> bool {
        read(&self.connections)
            .get(&conn)
            .is_some_and(|outbox| outbox.push(frame))
    }

    /// Queues a room's messages, in sequence order, to its local members. Sequence numbers at
    /// or below the last one delivered here are dropped; the origin connection, when local, also
    /// gets `stored`.
    pub fn deliver_room(
        &self,
        room_id: RoomId,
        messages: impl IntoIterator<Item = DeliveredMessage>,
    ) {
        let rooms = read(&self.rooms);
        let Some(local) = rooms.get(&room_id) else {
            return;
        };
        let connections = read(&self.connections);
        let now_ms = chrono::Utc::now().timestamp_millis();
        for message in messages {
            let seq = message.seq;
            if local.delivered.fetch_max(seq.0, Ordering::AcqRel) >= seq.0 {
                continue;
            }
            self.metrics
                .delivery_seconds
                .observe((now_ms - message.sent_at_ms).max(0) as f64 / 1000.0);
            if let Some(origin) = message
                .origin
                .filter(|origin| origin.node_id == self.node_id)
            {
                if let Some(outbox) = connections.get(&origin.conn_id) {
                    outbox.push(frame(&ServerFrame::Stored {
                        room_id,
                        client_msg_id: message.client_msg_id,
                        seq,
                        duplicate: false,
                    }));
                }
            }
            let shared = message.frame;
            let mut delivered = 0;
            let mut waiting = lock(&local.catching_up);
            let mut passed = Vec::new();
            for member in &local.members {
                match waiting.get_mut(member) {
                    Some(CatchUp::Holding(held)) => {
                        held.push((seq.0, shared.clone()));
                        continue;
                    }
                    Some(CatchUp::Floor(floor)) if seq.0 <= *floor => continue,
                    Some(CatchUp::Floor(_)) => passed.push(*member),
                    None => {}
                }
                if let Some(outbox) = connections.get(member) {
                    if outbox.push(shared.clone()) {
                        delivered += 1;
                    }
                }
            }
            for member in passed {
                waiting.remove(&member);
            }
            self.metrics.messages_delivered.inc_by(delivered);
        }
    }

    /// Queues an ephemeral frame to a room's local members, except one connection. Members
    /// still catching up skip it: it would be stale by the time they are live.
    pub fn broadcast(&self, room_id: RoomId, event: &ServerFrame, except: Option<ConnId>) {
        let rooms = read(&self.rooms);
        let Some(local) = rooms.get(&room_id) else {
            return;
        };
        let connections = read(&self.connections);
        let shared = frame(event);
        for member in &local.members {
            if Some(*member) == except {
                continue;
            }
            if let Some(outbox) = connections.get(member) {
                outbox.push(shared.clone());
            }
        }
    }

    /// Queues an event about a stored message (an edit or delete) to a room's local members.
    /// Members still catching up get it after their missed messages, whatever they are.
    pub fn deliver_event(&self, room_id: RoomId, event: &ServerFrame) {
        let rooms = read(&self.rooms);
        let Some(local) = rooms.get(&room_id) else {
            return;
        };
        let connections = read(&self.connections);
        let shared = frame(event);
        let mut waiting = lock(&local.catching_up);
        for member in &local.members {
            if let Some(CatchUp::Holding(held)) = waiting.get_mut(member) {
                held.push((i64::MAX, shared.clone()));
                continue;
            }
            if let Some(outbox) = connections.get(member) {
                outbox.push(shared.clone());
            }
        }
    }

    /// Queues a frame once to every local connection in any of `rooms`; returns how many.
    pub fn broadcast_rooms(&self, rooms: &[RoomId], shared: &Frame) -> u64 {
        let local_rooms = read(&self.rooms);
        let connections = read(&self.connections);
        let mut told: HashSet<ConnId> = HashSet::new();
        for room in rooms {
            let Some(local) = local_rooms.get(room) else {
                continue;
            };
            for member in &local.members {
                if told.insert(*member) {
                    if let Some(outbox) = connections.get(member) {
                        outbox.push(shared.clone());
                    }
                }
            }
        }
        told.len() as u64
    }

    /// Queues a frame to every local connection of a user, except one.
    pub fn push_to_user(&self, user: UserId, shared: &Frame, except: Option<ConnId>) {
        let conns: Vec<ConnId> = read(&self.by_user)
            .get(&user)
            .map(|conns| conns.iter().copied().collect())
            .unwrap_or_default();
        let connections = read(&self.connections);
        for conn in conns {
            if Some(conn) == except {
                continue;
            }
            if let Some(outbox) = connections.get(&conn) {
                outbox.push(shared.clone());
            }
        }
    }

    /// Stops delivering a room to every local connection of a user who left it, and tells each
    /// of them with `left`.
    pub fn remove_user(&self, room_id: RoomId, user: UserId) {
        let mut rooms = write(&self.rooms);
        let Some(local) = rooms.get_mut(&room_id) else {
            return;
        };
        let connections = read(&self.connections);
        let left = frame(&ServerFrame::Left { room_id });
        local
            .members
            .retain(|member| match connections.get(member) {
                Some(outbox) if outbox.user() == user => {
                    outbox.push(left.clone());
                    false
                }
                _ => true,
            });
        lock(&local.catching_up).retain(|member, _| local.members.contains(member));
        if local.members.is_empty() {
            rooms.remove(&room_id);
        }
    }

    /// Every (room, user) pair of a local connection in a room, each once.
    pub fn memberships(&self) -> Vec<(RoomId, UserId)> {
        let (rooms, connections) = (read(&self.rooms), read(&self.connections));
        let mut pairs = HashSet::new();
        for (room, local) in rooms.iter() {
            for member in &local.members {
                if let Some(outbox) = connections.get(member) {
                    pairs.insert((*room, outbox.user()));
                }
            }
        }
        pairs.into_iter().collect()
    }

    /// Queues `room_activity` to the connections of `users` that have not joined `room`.
    pub fn push_room_activity(
        &self,
        room: RoomId,
        users: impl Iterator<Item = UserId>,
        shared: &Frame,
    ) {
        // Same lock order as deliveries: rooms, then (here) users, then connections.
        let (rooms, by_user, connections) = (
            read(&self.rooms),
            read(&self.by_user),
            read(&self.connections),
        );
        let joined = rooms.get(&room).map(|local| &local.members);
        for user in users {
            let Some(conns) = by_user.get(&user) else {
                continue;
            };
            for conn in conns {
                if joined.is_some_and(|members| members.contains(conn)) {
                    continue;
                }
                if let Some(outbox) = connections.get(conn) {
                    outbox.push(shared.clone());
                }
            }
        }
    }

    /// Answers resends whose sending connection is on this node.
    pub fn answer_duplicates(&self, receipts: &[DuplicateReceipt]) {
        for receipt in receipts {
            if receipt.origin.node_id != self.node_id {
                continue;
            }
            self.push_to(
                receipt.origin.conn_id,
                frame(&ServerFrame::Stored {
                    room_id: receipt.room_id,
                    client_msg_id: receipt.client_msg_id.clone(),
                    seq: receipt.seq,
                    duplicate: true,
                }),
            );
        }
    }

    /// Rooms with at least one local member.
    pub fn rooms(&self) -> Vec<RoomId> {
        read(&self.rooms).keys().copied().collect()
    }

    /// The highest sequence number delivered locally in a room; `None` without local members.
    pub fn local_delivered_seq(&self, room: RoomId) -> Option<Seq> {
        read(&self.rooms)
            .get(&room)
            .map(|r| Seq(r.delivered.load(Ordering::Acquire)))
    }
}

/// Serializes a frame once for sharing.
pub fn frame(frame: &ServerFrame) -> Frame {
    Frame::from(frame.to_json())
}

#[cfg(test)]
mod membership_lock_tests {
    use super::*;

    #[test]
    fn a_rooms_lock_is_shared_while_held_and_forgotten_once_nobody_holds_it() {
        let hub = Hub::new("n".into(), Metrics::new());
        let held = hub.membership_lock(RoomId(1));
        assert!(Arc::ptr_eq(&held, &hub.membership_lock(RoomId(1))));
        for room in 2..=MEMBERSHIP_LOCKS_KEPT as i64 + 1 {
            drop(hub.membership_lock(RoomId(room)));
        }
        let kept = |hub: &Hub| lock(&hub.membership_locks).locks.len();
        // The pruning at the threshold kept the held lock only, then added the new room.
        assert_eq!(kept(&hub), 2);
        assert!(Arc::ptr_eq(&held, &hub.membership_lock(RoomId(1))));
    }
}
