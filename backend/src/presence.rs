//! Presence: who is online, away or offline, as members of shared rooms see it on every node.
//!
//! Each node knows its own connections exactly (a user is online if any local connection is,
//! away if all are away) and tells every node when a user's state here changes. It also sends a
//! snapshot of all its users every heartbeat interval; what another node reported expires when
//! its snapshots stop, so the users of a node that died go offline everywhere within the TTL.
//! A user's presence is the best state any node reports; several tabs count as one.
//!
//! The presence task runs apart from message fan-out, so its lookups never delay delivery.
//! Changes are collected and announced in small batches: one PostgreSQL query finds which of the
//! changed users share a room with a local connection.

use crate::app::App;
use crate::delivery::hub::{self, ConnId};
use crate::watch;
use chat_protocol::bus::Delivery;
use chat_protocol::{PresenceStatus, ServerFrame, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often expired reports are looked for, and changes announced at most.
const TICK: Duration = Duration::from_millis(200);

/// What the presence task is asked to do.
pub enum PresenceEvent {
    /// A user-scoped delivery from the node queue (presence, snapshot, sync, read marker).
    Delivery(Delivery),
    /// A local user's state here changed.
    Local(UserId),
    /// The node queue was (re)created: ask every node for a snapshot and send ours.
    Connected,
}

/// The presence table of one node.
pub struct Presence {
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// This node's connections: user → connection → state.
    local: HashMap<UserId, HashMap<ConnId, PresenceStatus>>,
    /// Other nodes' reports: user → node → (state, expiry).
    remote: HashMap<UserId, HashMap<String, (PresenceStatus, Instant)>>,
    /// Users each node reported in its last snapshot, to drop those it no longer has.
    reported: HashMap<String, HashSet<UserId>>,
    /// The state last announced to local connections, for users not offline.
    announced: HashMap<UserId, PresenceStatus>,
    /// Other nodes heard from (every node sends a snapshot each heartbeat, users or not), with
    /// when that expires.
    peers: HashMap<String, Instant>,
}

impl State {
    fn local_status(&self, user: UserId) -> PresenceStatus {
        self.local
            .get(&user)
            .and_then(|conns| conns.values().copied().max())
            .unwrap_or(PresenceStatus::Offline)
    }

    fn status(&self, user: UserId, now: Instant) -> PresenceStatus {
        let remote = self
            .remote
            .get(&user)
            .and_then(|nodes| {
                nodes
                    .values()
                    .filter(|(_, expires)| *expires > now)
                    .map(|(status, _)| *status)
                    .max()
            })
            .unwrap_or(PresenceStatus::Offline);
        remote.max(self.local_status(user))
    }

    fn set_remote(&mut self, node: &str, user: UserId, status: PresenceStatus, expires: Instant) {
        if status == PresenceStatus::Offline {
            if let Some(nodes) = self.remote.get_mut(&user) {
                nodes.remove(node);
                if nodes.is_empty() {
                    self.remote.remove(&user);
                }
            }
            if let Some(users) = self.reported.get_mut(node) {
                users.remove(&user);
            }
        } else {
            self.remote
                .entry(user)
                .or_default()
                .insert(node.to_owned(), (status, expires));
            self.reported
                .entry(node.to_owned())
                .or_default()
                .insert(user);
        }
    }
}

impl Presence {
    pub fn new(ttl: Duration) -> Presence {
        Presence {
            ttl,
            state: Mutex::new(State::default()),
        }
    }

    /// A user's presence as this node knows it.
    pub fn status(&self, user: UserId) -> PresenceStatus {
        crate::locks::lock(&self.state).status(user, Instant::now())
    }

    /// Sets one local connection's state (`Offline` removes it). Returns the user's new state on
    /// this node when it changed, which other nodes must be told.
    pub fn set_local(
        &self,
        user: UserId,
        conn: ConnId,
        status: PresenceStatus,
    ) -> Option<PresenceStatus> {
        let mut state = crate::locks::lock(&self.state);
        let before = state.local_status(user);
        if status == PresenceStatus::Offline {
            if let Some(conns) = state.local.get_mut(&user) {
                conns.remove(&conn);
                if conns.is_empty() {
                    state.local.remove(&user);
                }
            }
        } else {
            state.local.entry(user).or_default().insert(conn, status);
        }
        let after = state.local_status(user);
        (after != before).then_some(after)
    }

    /// Every local user with their state here.
    pub fn snapshot(&self) -> Vec<(UserId, PresenceStatus)> {
        let state = crate::locks::lock(&self.state);
        state
            .local
            .keys()
            .map(|user| (*user, state.local_status(*user)))
            .collect()
    }

    /// Other nodes alive by their presence snapshots (each sends one every heartbeat, and one
    /// at once when another node connects); they count until their last one expires.
    pub fn peer_nodes(&self) -> usize {
        let now = Instant::now();
        crate::locks::lock(&self.state)
            .peers
            .values()
            .filter(|expires| **expires > now)
            .count()
    }

    /// Records another node's report on one user.
    fn apply_report(&self, node: &str, user: UserId, status: PresenceStatus) {
        let mut state = crate::locks::lock(&self.state);
        let expires = Instant::now() + self.ttl;
        state.set_remote(node, user, status, expires);
    }

    /// Replaces everything a node reported with its snapshot; returns the users it touched.
    fn apply_snapshot(&self, node: &str, users: &[(UserId, PresenceStatus)]) -> Vec<UserId> {
        let mut state = crate::locks::lock(&self.state);
        let expires = Instant::now() + self.ttl;
        state.peers.insert(node.to_owned(), expires);
        let listed: HashSet<UserId> = users.iter().map(|(user, _)| *user).collect();
        let gone: Vec<UserId> = state
            .reported
            .get(node)
            .map(|previous| previous.difference(&listed).copied().collect())
            .unwrap_or_default();
        for user in &gone {
            state.set_remote(node, *user, PresenceStatus::Offline, expires);
        }
        for (user, status) in users {
            state.set_remote(node, *user, *status, expires);
        }
        gone.into_iter().chain(listed).collect()
    }

    /// Drops expired reports; returns the users they were about.
    fn expire(&self, now: Instant) -> Vec<UserId> {
        let mut state = crate::locks::lock(&self.state);
        state.peers.retain(|_, expires| *expires > now);
        let mut expired = Vec::new();
        for (user, nodes) in state.remote.iter_mut() {
            let before = nodes.len();
            nodes.retain(|_, (_, expires)| *expires > now);
            if nodes.len() != before {
                expired.push(*user);
            }
        }
        state.remote.retain(|_, nodes| !nodes.is_empty());
        let State {
            remote, reported, ..
        } = &mut *state;
        for (node, users) in reported.iter_mut() {
            users.retain(|user| {
                remote
                    .get(user)
                    .is_some_and(|nodes| nodes.contains_key(node))
            });
        }
        reported.retain(|_, users| !users.is_empty());
        expired
    }

    /// The users among `users` whose state differs from what was last announced, with their
    /// new state; records it as announced.
    fn changes(&self, users: impl IntoIterator<Item = UserId>) -> Vec<(UserId, PresenceStatus)> {
        let mut state = crate::locks::lock(&self.state);
        let now = Instant::now();
        let mut changed = Vec::new();
        for user in users {
            let status = state.status(user, now);
            let before = state
                .announced
                .get(&user)
                .copied()
                .unwrap_or(PresenceStatus::Offline);
            if status == before {
                continue;
            }
            if status == PresenceStatus::Offline {
                state.announced.remove(&user);
            } else {
                state.announced.insert(user, status);
            }
            changed.push((user, status));
        }
        changed
    }
}

/// Runs the presence task until every sender is dropped or the node stops.
pub async fn run(app: Arc<App>, mut events: mpsc::UnboundedReceiver<PresenceEvent>) {
    let heartbeat = Duration::from_millis(app.config.presence_interval_ms.max(100));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat = tokio::time::interval(heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty: HashSet<UserId> = HashSet::new();
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { return };
                handle(&app, event, &mut dirty).await;
            }
            _ = tick.tick() => {
                let expired = app.presence.expire(Instant::now());
                app.metrics.presence_expired.inc_by(expired.len() as u64);
                dirty.extend(expired);
                if !dirty.is_empty() {
                    announce(&app, std::mem::take(&mut dirty)).await;
                }
            }
            _ = beat.tick() => send_snapshot(&app).await,
            _ = app.shutdown.cancelled() => return,
        }
    }
}

async fn handle(app: &App, event: PresenceEvent, dirty: &mut HashSet<UserId>) {
    let own = app.node_id();
    match event {
        PresenceEvent::Local(user) => {
            dirty.insert(user);
        }
        PresenceEvent::Connected => {
            let sync = Delivery::PresenceSync {
                node_id: own.to_owned(),
            };
            if let Err(error) = app.bus.publish_to_everyone(&sync).await {
                tracing::debug!(%error, "presence sync request not sent");
            }
            send_snapshot(app).await;
        }
        PresenceEvent::Delivery(Delivery::Presence {
            node_id,
            user_id,
            status,
        }) if node_id != own => {
            app.presence.apply_report(&node_id, user_id, status);
            dirty.insert(user_id);
        }
        PresenceEvent::Delivery(Delivery::PresenceSnapshot { node_id, users })
            if node_id != own =>
        {
            dirty.extend(app.presence.apply_snapshot(&node_id, &users));
        }
        PresenceEvent::Delivery(Delivery::PresenceSync { node_id }) if node_id != own => {
            send_snapshot(app).await;
        }
        PresenceEvent::Delivery(Delivery::ReadMarker {
            user_id,
            room_id,
            seq,
            unread,
            origin,
        }) => {
            let except = (origin.node_id == own).then_some(origin.conn_id);
            let frame = hub::frame(&ServerFrame::ReadMarker {
                room_id,
                seq,
                unread,
            });
            app.hub.push_to_user(user_id, &frame, except);
        }
        PresenceEvent::Delivery(Delivery::RoomsChanged { user_id }) => {
            // The watched rooms first, so activity in a new room follows `rooms_changed`.
            if let Some(load) = app.watching.start_load(user_id) {
                watch::load(app, load).await;
            }
            let frame = hub::frame(&ServerFrame::RoomsChanged);
            app.hub.push_to_user(user_id, &frame, None);
        }
        // This node's own reports, and deliveries that are not about users.
        PresenceEvent::Delivery(_) => {}
    }
}

async fn send_snapshot(app: &App) {
    let snapshot = Delivery::PresenceSnapshot {
        node_id: app.node_id().to_owned(),
        users: app.presence.snapshot(),
    };
    if let Err(error) = app.bus.publish_to_everyone(&snapshot).await {
        tracing::debug!(%error, "presence snapshot not sent");
    }
}

/// Tells local connections that share a room with a changed user about the change.
async fn announce(app: &App, users: HashSet<UserId>) {
    let changes = app.presence.changes(users);
    if changes.is_empty() {
        return;
    }
    let local_rooms = app.hub.rooms();
    if local_rooms.is_empty() {
        return;
    }
    let changed: Vec<UserId> = changes.iter().map(|(user, _)| *user).collect();
    let shared = match app.store.shared_rooms(changed, local_rooms).await {
        Ok(shared) => shared,
        Err(error) => {
            tracing::warn!(%error, "could not find who to tell about presence changes");
            return;
        }
    };
    for (user, status) in changes {
        let Some(rooms) = shared.get(&user) else {
            continue;
        };
        let frame = hub::frame(&ServerFrame::Presence {
            user_id: user,
            status,
        });
        let queued = app.hub.broadcast_rooms(rooms, &frame);
        app.metrics.presence_frames.inc_by(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PresenceStatus::{Away, Offline, Online};

    #[test]
    fn tabs_count_as_one() {
        let presence = Presence::new(Duration::from_secs(30));
        let ada = UserId(1);
        assert_eq!(presence.set_local(ada, 1, Online), Some(Online));
        assert_eq!(presence.set_local(ada, 2, Online), None);
        assert_eq!(presence.set_local(ada, 1, Away), None);
        assert_eq!(presence.set_local(ada, 2, Away), Some(Away));
        assert_eq!(presence.set_local(ada, 1, Offline), None);
        assert_eq!(presence.status(ada), Away);
        assert_eq!(presence.set_local(ada, 2, Offline), Some(Offline));
        assert_eq!(presence.status(ada), Offline);
    }

    #[test]
    fn nodes_count_as_peers_while_their_snapshots_hold() {
        let presence = Presence::new(Duration::from_millis(50));
        assert_eq!(presence.peer_nodes(), 0);
        // A node without users still sends its snapshot every heartbeat.
        presence.apply_snapshot("b", &[]);
        presence.apply_snapshot("c", &[(UserId(1), Online)]);
        presence.apply_snapshot("b", &[]);
        assert_eq!(presence.peer_nodes(), 2);
        presence.expire(Instant::now() + Duration::from_millis(60));
        assert_eq!(presence.peer_nodes(), 0);
    }

    #[test]
    fn the_best_node_wins_and_reports_expire() {
        let presence = Presence::new(Duration::from_millis(50));
        let ada = UserId(1);
        presence.apply_report("b", ada, Away);
        presence.apply_report("c", ada, Online);
        assert_eq!(presence.status(ada), Online);
        assert_eq!(presence.changes([ada]), vec![(ada, Online)]);
        assert_eq!(presence.changes([ada]), vec![]);
        presence.apply_snapshot("c", &[]);
        assert_eq!(presence.status(ada), Away);
        let later = Instant::now() + Duration::from_millis(60);
        assert_eq!(presence.expire(later), vec![ada]);
        assert_eq!(presence.changes([ada]), vec![(ada, Offline)]);
    }
}
