//! Profiles, rooms and memberships as the rest of the node sees them.
//!
//! Reads go through the [`Cache`] (cache-aside): a miss loads from the [`Store`] and fills the
//! entry. Every write goes to the store first and then deletes the entries it changed, so the
//! next read on any node loads the new value. Membership is cached both ways ("member" and
//! "not a member"), which is why every membership change goes through here.
//!
//! [`Directory::access`] is the one place that decides what a user may see of a room.

use crate::cache::{Cache, CacheKey};
use crate::metrics::Metrics;
use crate::store::{RoomRow, Store, StoreError};
use chat_protocol::api::{Profile, ProfileUpdate, Role, RoomKind};
use chat_protocol::{RoomId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// Room metadata as cached. Never includes `last_seq`, which changes with every message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub room_id: RoomId,
    pub name: String,
    pub kind: RoomKind,
}

impl From<RoomRow> for RoomInfo {
    fn from(row: RoomRow) -> Self {
        RoomInfo {
            room_id: row.room_id,
            name: row.name,
            kind: row.kind,
        }
    }
}

/// What a user may do with a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A member: everything.
    Member(RoomInfo, Role),
    /// A public room the user is not in: they may see it and join it, nothing more.
    Outsider(RoomInfo),
    /// No such room, or a private or direct room the user is not in. The two are answered
    /// identically, so nobody learns that a private room exists.
    Hidden,
}

#[derive(Clone)]
pub struct Directory {
    store: Store,
    cache: Cache,
    metrics: Metrics,
    /// The task that batches the membership checks of sends; started on first use.
    send_checks: Arc<OnceLock<mpsc::UnboundedSender<RoleCheck>>>,
    /// The task that batches room reads; started on first use.
    room_reads: Arc<OnceLock<mpsc::UnboundedSender<RoomRead>>>,
}

/// A room read, waiting for its batch.
struct RoomRead {
    room: RoomId,
    answer: oneshot::Sender<Result<Option<RoomInfo>, CheckFailed>>,
}

/// Most membership checks answered by one batch.
const MAX_CHECKS_PER_BATCH: usize = 512;

/// A send's membership check, waiting for its batch.
struct RoleCheck {
    room: RoomId,
    user: UserId,
    answer: oneshot::Sender<Result<Option<Role>, CheckFailed>>,
}

/// A membership could not be checked: neither memcached nor PostgreSQL answered.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("membership could not be checked")]
pub struct CheckFailed;

/// A membership as cached: the role, or none.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct CachedRole(Option<Role>);

impl Directory {
    pub fn new(store: Store, cache: Cache, metrics: Metrics) -> Directory {
        Directory {
            store,
            cache,
            metrics,
            send_checks: Arc::default(),
            room_reads: Arc::default(),
        }
    }

    /// The user's role in the room, or `None` if not a member. Checks waiting at the same moment
    /// share one memcached round trip (and one query for what it missed), so a node under load
    /// checks every send, and a storm of reconnecting clients every join, without a round trip
    /// each.
    pub async fn role(&self, room: RoomId, user: UserId) -> Result<Option<Role>, CheckFailed> {
        let checks = self.send_checks.get_or_init(|| {
            let (checks, waiting) = mpsc::unbounded_channel();
            tokio::spawn(check_roles(
                self.store.clone(),
                self.cache.clone(),
                self.metrics.clone(),
                waiting,
            ));
            checks
        });
        let (answer, answered) = oneshot::channel();
        checks
            .send(RoleCheck { room, user, answer })
            .map_err(|_| CheckFailed)?;
        answered.await.map_err(|_| CheckFailed)?
    }

    pub async fn profile(&self, user: UserId) -> Result<Option<Profile>, StoreError> {
        if let Some(profile) = self.cache.get::<Profile>(CacheKey::Profile(user)).await {
            return Ok(Some(profile));
        }
        self.loaded("profile");
        let Some(row) = self.store.load_profile(user).await? else {
            return Ok(None);
        };
        let profile = row.into_profile();
        self.cache.set(CacheKey::Profile(user), &profile).await;
        Ok(Some(profile))
    }

    pub async fn update_profile(
        &self,
        user: UserId,
        update: ProfileUpdate,
    ) -> Result<Option<Profile>, StoreError> {
        let row = self.store.update_profile(user, update).await?;
        self.cache.delete(CacheKey::Profile(user)).await;
        Ok(row.map(|row| row.into_profile()))
    }

    /// A room's metadata. Reads waiting at the same moment share one memcached multi-get (and
    /// one query for what it missed), as membership checks do: a storm of reconnecting clients
    /// reads the rooms of all its joins in a few round trips.
    pub async fn room(&self, room: RoomId) -> Result<Option<RoomInfo>, StoreError> {
        let reads = self.room_reads.get_or_init(|| {
            let (reads, waiting) = mpsc::unbounded_channel();
            tokio::spawn(read_rooms(
                self.store.clone(),
                self.cache.clone(),
                self.metrics.clone(),
                waiting,
            ));
            reads
        });
        let (answer, answered) = oneshot::channel();
        reads
            .send(RoomRead { room, answer })
            .map_err(|_| CheckFailed)?;
        Ok(answered.await.map_err(|_| CheckFailed)??)
    }

    /// What `user` may do with `room`.
    pub async fn access(&self, room: RoomId, user: UserId) -> Result<Access, StoreError> {
        let Some(info) = self.room(room).await? else {
            return Ok(Access::Hidden);
        };
        match self.role(room, user).await? {
            Some(role) => Ok(Access::Member(info, role)),
            None if info.kind == RoomKind::Public => Ok(Access::Outsider(info)),
            None => Ok(Access::Hidden),
        }
    }

    /// Creates a room owned by `owner`; `None` when a public room has the name.
    pub async fn create_room(
        &self,
        name: String,
        kind: RoomKind,
        owner: UserId,
    ) -> Result<Option<RoomInfo>, StoreError> {
        let Some(row) = self.store.create_room(name, kind, owner).await? else {
            return Ok(None);
        };
        // "Not a member" may have been cached for a room id that did not exist yet.
        self.cache
            .delete(CacheKey::Membership(row.room_id, owner))
            .await;
        Ok(Some(row.into()))
    }

    /// Adds a member; false if already one.
    pub async fn add_member(&self, room: RoomId, user: UserId) -> Result<bool, StoreError> {
        let added = self.store.add_member(room, user, Role::Member).await?;
        self.cache.delete(CacheKey::Membership(room, user)).await;
        Ok(added)
    }

    /// Removes a member; false if not one.
    pub async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool, StoreError> {
        let removed = self.store.remove_member(room, user).await?;
        self.cache.delete(CacheKey::Membership(room, user)).await;
        Ok(removed)
    }

    /// The direct room of two users, created on first use.
    pub async fn direct_room(
        &self,
        me: UserId,
        other: UserId,
        name: String,
    ) -> Result<RoomInfo, StoreError> {
        let row = self.store.direct_room(me, other, name).await?;
        for user in [me, other] {
            self.cache
                .delete(CacheKey::Membership(row.room_id, user))
                .await;
        }
        Ok(row.into())
    }

    fn loaded(&self, kind: &str) {
        self.metrics
            .directory_loads
            .with_label_values(&[kind])
            .inc();
    }
}

/// Answers membership checks in batches: everything waiting when the previous batch is done.
async fn check_roles(
    store: Store,
    cache: Cache,
    metrics: Metrics,
    mut waiting: mpsc::UnboundedReceiver<RoleCheck>,
) {
    while let Some(first) = waiting.recv().await {
        let mut checks = vec![first];
        while checks.len() < MAX_CHECKS_PER_BATCH {
            match waiting.try_recv() {
                Ok(check) => checks.push(check),
                Err(_) => break,
            }
        }
        let keys: Vec<CacheKey> = checks
            .iter()
            .map(|check| CacheKey::Membership(check.room, check.user))
            .collect();
        let cached: Vec<Option<CachedRole>> = cache.get_many(&keys).await;
        let mut missed: Vec<(RoomId, UserId)> = checks
            .iter()
            .zip(&cached)
            .filter(|(_, cached)| cached.is_none())
            .map(|(check, _)| (check.room, check.user))
            .collect();
        missed.sort_unstable();
        missed.dedup();
        let loaded = if missed.is_empty() {
            Ok(HashMap::new())
        } else {
            metrics
                .directory_loads
                .with_label_values(&["membership"])
                .inc_by(missed.len() as u64);
            store.roles(missed.clone()).await
        };
        let loaded = match loaded {
            Ok(roles) => {
                let entries: Vec<(CacheKey, CachedRole)> = missed
                    .iter()
                    .map(|&(room, user)| {
                        (
                            CacheKey::Membership(room, user),
                            CachedRole(roles.get(&(room, user)).copied()),
                        )
                    })
                    .collect();
                cache.set_many(&entries).await;
                Ok(roles)
            }
            Err(error) => {
                tracing::error!(%error, "could not check memberships");
                Err(CheckFailed)
            }
        };
        for (check, cached) in checks.into_iter().zip(cached) {
            let role = match (cached, &loaded) {
                (Some(CachedRole(role)), _) => Ok(role),
                (None, Ok(roles)) => Ok(roles.get(&(check.room, check.user)).copied()),
                (None, Err(failed)) => Err(*failed),
            };
            let _ = check.answer.send(role);
        }
    }
}

/// Answers room reads a batch at a time: one multi-get, then one query for the misses, whose
/// answers are cached.
async fn read_rooms(
    store: Store,
    cache: Cache,
    metrics: Metrics,
    mut waiting: mpsc::UnboundedReceiver<RoomRead>,
) {
    while let Some(first) = waiting.recv().await {
        let mut reads = vec![first];
        while reads.len() < MAX_CHECKS_PER_BATCH {
            match waiting.try_recv() {
                Ok(read) => reads.push(read),
                Err(_) => break,
            }
        }
        let keys: Vec<CacheKey> = reads.iter().map(|read| CacheKey::Room(read.room)).collect();
        let cached: Vec<Option<RoomInfo>> = cache.get_many(&keys).await;
        let mut missed: Vec<RoomId> = reads
            .iter()
            .zip(&cached)
            .filter(|(_, cached)| cached.is_none())
            .map(|(read, _)| read.room)
            .collect();
        missed.sort_unstable();
        missed.dedup();
        let loaded = if missed.is_empty() {
            Ok(HashMap::new())
        } else {
            metrics
                .directory_loads
                .with_label_values(&["room"])
                .inc_by(missed.len() as u64);
            store.rooms(missed).await
        };
        let loaded: Result<HashMap<RoomId, RoomInfo>, CheckFailed> = match loaded {
            Ok(rows) => {
                let infos: HashMap<RoomId, RoomInfo> = rows
                    .into_iter()
                    .map(|(room, row)| (room, RoomInfo::from(row)))
                    .collect();
                let entries: Vec<(CacheKey, RoomInfo)> = infos
                    .iter()
                    .map(|(&room, info)| (CacheKey::Room(room), info.clone()))
                    .collect();
                cache.set_many(&entries).await;
                Ok(infos)
            }
            Err(error) => {
                tracing::error!(%error, "could not read rooms");
                Err(CheckFailed)
            }
        };
        for (read, cached) in reads.into_iter().zip(cached) {
            let info = match (cached, &loaded) {
                (Some(info), _) => Ok(Some(info)),
                (None, Ok(infos)) => Ok(infos.get(&read.room).cloned()),
                (None, Err(failed)) => Err(*failed),
            };
            let _ = read.answer.send(info);
        }
    }
}
