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
use crate::store::batch::{Batched, Limits};
use crate::store::{Removal, RoomRow, Store, StoreError};
use chat_protocol::api::{Profile, ProfileUpdate, Role, RoomKind};
use chat_protocol::{RoomId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

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
    /// Membership checks, batched; the task starts on first use.
    role_checks: Arc<RoleChecks>,
    /// Room reads, batched the same way.
    room_reads: Arc<Batched<RoomId, Checked<Option<RoomInfo>>>>,
}

/// One answer of a batch: the value, or the batch's query failed and the cache did not know.
type Checked<T> = Result<T, CheckFailed>;

/// Membership checks by (room, user), batched.
type RoleChecks = Batched<(RoomId, UserId), Checked<Option<Role>>>;

/// How membership checks and room reads are batched: one batch at a time, each answering
/// everything that was waiting when the previous one was done (at most this many).
const BATCHES: Limits = Limits {
    max_keys: 512,
    in_flight: 1,
};

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
            role_checks: Arc::new(Batched::new("membership", BATCHES)),
            room_reads: Arc::new(Batched::new("room", BATCHES)),
        }
    }

    /// The user's role in the room, or `None` if not a member. Checks waiting at the same moment
    /// share one memcached round trip (and one query for what it missed), so a node under load
    /// checks every send, and a storm of reconnecting clients every join, without a round trip
    /// each.
    pub async fn role(&self, room: RoomId, user: UserId) -> Result<Option<Role>, CheckFailed> {
        self.role_checks
            .get_with((room, user), || {
                let (store, cache, metrics) = self.parts();
                move |keys| check_roles(store.clone(), cache.clone(), metrics.clone(), keys)
            })
            .await
            .map_err(|_| CheckFailed)?
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
        Ok(self
            .room_reads
            .get_with(room, || {
                let (store, cache, metrics) = self.parts();
                move |keys| read_rooms(store.clone(), cache.clone(), metrics.clone(), keys)
            })
            .await??)
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

    /// Removes a member unless they are the room's last owner.
    pub async fn remove_member_keeping_an_owner(
        &self,
        room: RoomId,
        user: UserId,
    ) -> Result<Removal, StoreError> {
        let removal = self
            .store
            .remove_member_keeping_an_owner(room, user)
            .await?;
        if removal == Removal::Removed {
            self.cache.delete(CacheKey::Membership(room, user)).await;
        }
        Ok(removal)
    }

    /// The direct room of two users as `me` opens it, and who became a member by it: both
    /// when it is new, `me` when they had left it, nobody otherwise.
    pub async fn direct_room(
        &self,
        me: UserId,
        other: UserId,
        name: String,
    ) -> Result<(RoomInfo, Vec<UserId>), StoreError> {
        let (row, added) = self.store.direct_room(me, other, name).await?;
        for &user in &added {
            self.cache
                .delete(CacheKey::Membership(row.room_id, user))
                .await;
        }
        Ok((row.into(), added))
    }

    /// What a batching task needs of the directory (not the directory itself, whose batches
    /// own the task's queue).
    fn parts(&self) -> (Store, Cache, Metrics) {
        (self.store.clone(), self.cache.clone(), self.metrics.clone())
    }

    fn loaded(&self, kind: &str) {
        self.metrics
            .directory_loads
            .with_label_values(&[kind])
            .inc();
    }
}

/// Answers a batch of membership checks: one multi-get, then one query for the misses, whose
/// answers ("member" and "not a member" alike) are cached. Checks the cache answered succeed
/// even when the query fails.
async fn check_roles(
    store: Store,
    cache: Cache,
    metrics: Metrics,
    checks: Vec<(RoomId, UserId)>,
) -> Result<Vec<Checked<Option<Role>>>, StoreError> {
    Ok(read_through(
        &cache,
        &metrics,
        "membership",
        &checks,
        |(room, user)| CacheKey::Membership(room, user),
        |missed| store.roles(missed),
        |role| Some(CachedRole(role.copied())),
        |CachedRole(role)| role,
    )
    .await)
}

/// Answers a batch of room reads: one multi-get, then one query for the misses, whose answers
/// are cached (rooms that exist only).
async fn read_rooms(
    store: Store,
    cache: Cache,
    metrics: Metrics,
    reads: Vec<RoomId>,
) -> Result<Vec<Checked<Option<RoomInfo>>>, StoreError> {
    Ok(read_through(
        &cache,
        &metrics,
        "room",
        &reads,
        CacheKey::Room,
        |missed| async move {
            let rows = store.rooms(missed).await?;
            Ok(rows
                .into_iter()
                .map(|(room, row)| (room, RoomInfo::from(row)))
                .collect())
        },
        |info: Option<&RoomInfo>| info.cloned(),
        Some,
    )
    .await)
}

/// One batch of reads through the cache: a multi-get, one load for the keys it missed (each
/// once), and `to_cache` of each missed key's answer cached. Keys the cache answered succeed
/// even when the load fails.
#[allow(clippy::too_many_arguments)]
async fn read_through<K, V, C, Fut>(
    cache: &Cache,
    metrics: &Metrics,
    kind: &str,
    keys: &[K],
    cache_key: impl Fn(K) -> CacheKey,
    load: impl FnOnce(Vec<K>) -> Fut,
    to_cache: impl Fn(Option<&V>) -> Option<C>,
    from_cache: impl Fn(C) -> Option<V>,
) -> Vec<Checked<Option<V>>>
where
    K: Copy + Ord + std::hash::Hash,
    V: Clone,
    C: Serialize + serde::de::DeserializeOwned + Send + 'static,
    Fut: std::future::Future<Output = Result<HashMap<K, V>, StoreError>>,
{
    let cache_keys: Vec<CacheKey> = keys.iter().map(|&key| cache_key(key)).collect();
    let cached: Vec<Option<C>> = cache.get_many(&cache_keys).await;
    let missed = misses(keys, &cached);
    let loaded = if missed.is_empty() {
        Ok(HashMap::new())
    } else {
        metrics
            .directory_loads
            .with_label_values(&[kind])
            .inc_by(missed.len() as u64);
        load(missed.clone()).await
    };
    let loaded = match loaded {
        Ok(values) => {
            let entries: Vec<(CacheKey, C)> = missed
                .iter()
                .filter_map(|&key| Some((cache_key(key), to_cache(values.get(&key))?)))
                .collect();
            cache.set_many(&entries).await;
            Ok(values)
        }
        Err(error) => {
            tracing::error!(%error, kind, "could not read the directory from PostgreSQL");
            Err(CheckFailed)
        }
    };
    keys.iter()
        .zip(cached)
        .map(|(key, cached)| match (cached, &loaded) {
            (Some(cached), _) => Ok(from_cache(cached)),
            (None, Ok(values)) => Ok(values.get(key).cloned()),
            (None, Err(failed)) => Err(*failed),
        })
        .collect()
}

/// The keys the cache did not answer, each once.
fn misses<K: Copy + Ord, V>(keys: &[K], cached: &[Option<V>]) -> Vec<K> {
    let mut missed: Vec<K> = keys
        .iter()
        .zip(cached)
        .filter(|(_, cached)| cached.is_none())
        .map(|(&key, _)| key)
        .collect();
    missed.sort_unstable();
    missed.dedup();
    missed
}
