//! Watched rooms: a connection hears of new messages (`room_activity`) in every room of its
//! user, not only in the rooms it has joined.
//!
//! The node watches the rooms of each user with a connection here: loaded before the user's
//! first connection gets `welcome` (at most `CHAT_WATCHED_ROOMS_PER_USER`, the most recently
//! joined; one query for every user connecting at that moment), loaded again when
//! `rooms_changed` arrives for the user, forgotten with the user's last connection here. So a
//! client that reads its unread counts after `welcome` misses no message after them.
//!
//! The node queue is bound to a room while the room has local members or watchers: each change
//! of either is followed, under the room's membership lock, by [`settle_binding`], which binds
//! or unbinds to match. For each delivered batch, a watched room costs one lookup and, when it
//! has new messages, one frame shared by its watchers' connections that have not joined it:
//! nothing per message, and nothing for connections that joined it.

use crate::app::App;
use crate::bus::BusError;
use crate::delivery::hub::{self, Hub};
use chat_protocol::{RoomId, Seq, ServerFrame, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Who watches which rooms on this node, and which rooms the node queue is bound to.
#[derive(Default)]
pub struct Watching {
    state: RwLock<State>,
    /// Rooms bound, as [`settle_binding`] decided them.
    bound: Mutex<HashSet<RoomId>>,
}

#[derive(Default)]
struct State {
    users: HashMap<UserId, WatchingUser>,
    rooms: HashMap<RoomId, WatchedRoom>,
}

#[derive(Default)]
struct WatchingUser {
    connections: usize,
    /// Counts the loads started: only the latest one's answer is applied.
    loads: u64,
    rooms: Vec<RoomId>,
}

struct WatchedRoom {
    users: HashSet<UserId>,
    /// The newest sequence number announced, so a redelivered batch is not announced twice.
    announced: AtomicI64,
}

/// A load of a user's rooms, started by [`Watching::start_load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    user: UserId,
    number: u64,
}

impl Watching {
    /// A connection of `user` opened here; returns a load to run when it is the user's first.
    pub fn connected(&self, user: UserId) -> Option<Load> {
        let mut state = self.write();
        let watching = state.users.entry(user).or_default();
        watching.connections += 1;
        (watching.connections == 1).then(|| {
            watching.loads += 1;
            Load {
                user,
                number: watching.loads,
            }
        })
    }

    /// A connection of `user` closed; returns the rooms no longer watched when it was the last.
    pub fn disconnected(&self, user: UserId) -> Vec<RoomId> {
        let mut state = self.write();
        let Some(watching) = state.users.get_mut(&user) else {
            return Vec::new();
        };
        watching.connections = watching.connections.saturating_sub(1);
        if watching.connections > 0 {
            return Vec::new();
        }
        let rooms = state
            .users
            .remove(&user)
            .map(|watching| watching.rooms)
            .unwrap_or_default();
        state.unwatch(user, &rooms)
    }

    /// Starts loading the rooms of a user with connections here again (`rooms_changed`).
    pub fn start_load(&self, user: UserId) -> Option<Load> {
        let mut state = self.write();
        let watching = state.users.get_mut(&user)?;
        watching.loads += 1;
        Some(Load {
            user,
            number: watching.loads,
        })
    }

    /// Applies a load's answer, unless a later load started or the user's connections are
    /// gone; returns the rooms whose watchers changed.
    pub fn loaded(&self, load: Load, rooms: Vec<RoomId>) -> Vec<RoomId> {
        let mut state = self.write();
        let Some(watching) = state.users.get_mut(&load.user) else {
            return Vec::new();
        };
        if watching.loads != load.number {
            return Vec::new();
        }
        let before = std::mem::replace(&mut watching.rooms, rooms.clone());
        let new: HashSet<RoomId> = rooms.iter().copied().collect();
        let gone: Vec<RoomId> = before
            .into_iter()
            .filter(|room| !new.contains(room))
            .collect();
        let mut changed = state.unwatch(load.user, &gone);
        for room in rooms {
            let watched = state.rooms.entry(room).or_insert_with(|| WatchedRoom {
                users: HashSet::new(),
                announced: AtomicI64::new(0),
            });
            if watched.users.insert(load.user) {
                changed.push(room);
            }
        }
        changed
    }

    /// The user left a room: it is no longer watched for them. True if it was.
    pub fn forget_room(&self, user: UserId, room: RoomId) -> bool {
        let mut state = self.write();
        let Some(watching) = state.users.get_mut(&user) else {
            return false;
        };
        let before = watching.rooms.len();
        watching.rooms.retain(|watched| *watched != room);
        if watching.rooms.len() == before {
            return false;
        }
        state.unwatch(user, &[room]);
        true
    }

    /// Whether anyone here watches the room.
    pub fn is_watched(&self, room: RoomId) -> bool {
        self.read().rooms.contains_key(&room)
    }

    /// The rooms `user` watches here.
    pub fn rooms_of(&self, user: UserId) -> Vec<RoomId> {
        self.read()
            .users
            .get(&user)
            .map(|watching| watching.rooms.clone())
            .unwrap_or_default()
    }

    /// Tells the watchers of `room` that its newest message is `seq`, from the sender `sender`
    /// finds (asked only when someone is told). Connections that joined the room are skipped:
    /// they get the messages themselves.
    pub fn announce(
        &self,
        hub: &Hub,
        room: RoomId,
        seq: Seq,
        sender: impl FnOnce() -> Option<UserId>,
    ) {
        let state = self.read();
        let Some(watched) = state.rooms.get(&room) else {
            return;
        };
        if watched.announced.fetch_max(seq.0, Ordering::AcqRel) >= seq.0 {
            return;
        }
        let Some(sender_id) = sender() else {
            return;
        };
        let frame = hub::frame(&ServerFrame::RoomActivity {
            room_id: room,
            seq,
            sender_id,
        });
        hub.push_room_activity(room, watched.users.iter().copied(), &frame);
    }

    fn is_bound(&self, room: RoomId) -> bool {
        self.bound().contains(&room)
    }

    fn set_bound(&self, room: RoomId, bound: bool) {
        let mut rooms = self.bound();
        if bound {
            rooms.insert(room);
        } else {
            rooms.remove(&room);
        }
    }

    // The node's lock policy (`crate::locks`).
    fn read(&self) -> RwLockReadGuard<'_, State> {
        crate::locks::read(&self.state)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        crate::locks::write(&self.state)
    }

    fn bound(&self) -> MutexGuard<'_, HashSet<RoomId>> {
        crate::locks::lock(&self.bound)
    }
}

impl State {
    /// Takes `user` off the watchers of `rooms`; returns them.
    fn unwatch(&mut self, user: UserId, rooms: &[RoomId]) -> Vec<RoomId> {
        for room in rooms {
            if let Some(watched) = self.rooms.get_mut(room) {
                watched.users.remove(&user);
                if watched.users.is_empty() {
                    self.rooms.remove(room);
                }
            }
        }
        rooms.to_vec()
    }
}

/// Binds the node queue to `room` if it is not yet. Call with the room's membership lock held.
pub async fn ensure_bound(app: &App, room: RoomId) -> Result<(), BusError> {
    if app.watching.is_bound(room) {
        return Ok(());
    }
    match app.bus.bind_room(room).await {
        // The room is remembered and bound again as soon as RabbitMQ is back.
        Ok(()) | Err(BusError::NotConnected) => {
            app.watching.set_bound(room, true);
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Binds or unbinds the node queue to `room` to match its local members and watchers. Call with
/// the room's membership lock held.
pub async fn settle_binding(app: &App, room: RoomId) -> Result<(), BusError> {
    if app.hub.local_members(room) > 0 || app.watching.is_watched(room) {
        return ensure_bound(app, room).await;
    }
    if !app.watching.is_bound(room) {
        return Ok(());
    }
    // Forgotten by the bus first, so a reconnect does not bind it again either way.
    app.watching.set_bound(room, false);
    app.bus.unbind_room(room).await
}

/// [`settle_binding`] for each room, taking each room's lock.
pub async fn settle_rooms(app: &App, rooms: Vec<RoomId>) {
    let settles = rooms.into_iter().map(|room| async move {
        let lock = app.hub.membership_lock(room);
        let _guard = lock.lock().await;
        if let Err(error) = settle_binding(app, room).await {
            tracing::warn!(%error, %room, "binding the node queue to a watched room failed");
        }
    });
    futures::future::join_all(settles).await;
}

/// Loads the rooms a user watches and binds the node queue to them; logs a failure (the user's
/// next `rooms_changed` or connection loads them again).
pub async fn load(app: &App, load: Load) {
    let limit = app.config.room_frames.watched_rooms_per_user;
    match app.store.room_ids_of(load.user, limit).await {
        Ok(rooms) => {
            let changed = app.watching.loaded(load, rooms);
            settle_rooms(app, changed).await;
        }
        Err(error) => tracing::warn!(%error, user = %load.user, "could not load watched rooms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADA: UserId = UserId(1);
    const BOB: UserId = UserId(2);

    fn sorted(mut rooms: Vec<RoomId>) -> Vec<RoomId> {
        rooms.sort();
        rooms
    }

    #[test]
    fn the_first_connection_loads_and_the_last_forgets() {
        let watching = Watching::default();
        let load = watching.connected(ADA);
        assert!(load.is_some());
        assert_eq!(watching.connected(ADA), None);
        let Some(load) = load else { return };
        assert_eq!(
            sorted(watching.loaded(load, vec![RoomId(1), RoomId(2)])),
            vec![RoomId(1), RoomId(2)]
        );
        assert!(watching.is_watched(RoomId(1)));
        assert_eq!(watching.disconnected(ADA), vec![]);
        assert_eq!(
            sorted(watching.disconnected(ADA)),
            vec![RoomId(1), RoomId(2)]
        );
        assert!(!watching.is_watched(RoomId(1)));
    }

    #[test]
    fn a_room_stays_watched_while_anyone_watches_it() {
        let watching = Watching::default();
        for user in [ADA, BOB] {
            if let Some(load) = watching.connected(user) {
                watching.loaded(load, vec![RoomId(1)]);
            }
        }
        watching.disconnected(ADA);
        assert!(watching.is_watched(RoomId(1)));
        assert!(watching.forget_room(BOB, RoomId(1)));
        assert!(!watching.forget_room(BOB, RoomId(1)));
        assert!(!watching.is_watched(RoomId(1)));
    }

    #[test]
    fn only_the_latest_load_is_applied_and_only_while_connected() {
        let watching = Watching::default();
        let first = watching.connected(ADA);
        let second = watching.start_load(ADA);
        let (Some(first), Some(second)) = (first, second) else {
            panic!("loads not started");
        };
        assert_eq!(
            watching.loaded(second, vec![RoomId(2), RoomId(3)]),
            vec![RoomId(2), RoomId(3)]
        );
        // The older answer arrives late: ignored.
        assert_eq!(watching.loaded(first, vec![RoomId(1)]), vec![]);
        assert_eq!(watching.rooms_of(ADA), vec![RoomId(2), RoomId(3)]);
        // A reload swaps the set: the rooms that went and came are the changed ones.
        let Some(third) = watching.start_load(ADA) else {
            panic!("reload not started");
        };
        assert_eq!(
            sorted(watching.loaded(third, vec![RoomId(3), RoomId(4)])),
            vec![RoomId(2), RoomId(4)]
        );
        watching.disconnected(ADA);
        assert_eq!(watching.start_load(ADA), None);
        assert_eq!(watching.loaded(third, vec![RoomId(5)]), vec![]);
        assert!(!watching.is_watched(RoomId(5)));
    }
}
