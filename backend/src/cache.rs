//! The cache: the only module that speaks memcached.
//!
//! Cache-aside for hot, read-mostly data (profiles, room metadata, memberships): readers try
//! here first and fill on a miss; writers change PostgreSQL, then delete the key, so every node
//! sees the change on its next read. The cache is an optimisation, never a source of truth:
//! every failure is logged, counted and answered as a miss.
//!
//! The `memcache` crate blocks, so every call runs on tokio's blocking pool. Its connection pool
//! is built here rather than by `memcache::Client::connect`, so that building never connects
//! (a node starts while memcached is down) and a checkout never sends a `version` round trip.
//! Its connections are never marked broken, so after a failure the whole client is dropped and
//! rebuilt; after a failure requests skip memcached entirely, and when the pause is over a
//! background probe (`version` on every server) decides whether they go back to it, so a dead
//! server costs the requests in flight at the moment it dies one timeout, and nothing after. The
//! pause doubles with each failed probe, up to a few seconds. Deletes that could not be sent are
//! remembered and sent first when memcached answers again, so an entry invalidated while it was
//! unreachable is not served afterwards.
//!
//! Version bumps, which every stored batch waits for, skip the crate and the blocking pool: each
//! server has one connection on which a bump's `incr`s (and any deletes owed) are written at
//! once and answered in one round trip (`pipeline`).

mod pipeline;

use crate::metrics::Metrics;
use chat_protocol::{RoomId, UserId};
use memcache::{ConnectionManager, Url};
use pipeline::{Command, Pipeline};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for a connection or an answer.
const TIMEOUT: Duration = Duration::from_millis(250);
/// How long requests skip memcached after a failure; doubled after each failed probe.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(500);
/// The longest pause.
const MAX_PAUSE: Duration = Duration::from_secs(4);
/// Connections per memcached server: enough that a burst of requests does not wait for one.
const POOL_SIZE: u32 = 16;
/// Most deletes remembered while memcached is unreachable; beyond that the TTL bounds staleness.
const MAX_PENDING_DELETES: usize = 10_000;

/// What is cached. Each key names one entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheKey {
    Profile(UserId),
    Room(RoomId),
    Membership(RoomId, UserId),
    /// The newest messages of a room, tagged with the version they were read at.
    Recent(RoomId),
    /// A room's message version: bumped after every change to its messages.
    RecentVersion(RoomId),
}

/// A handle to the cache; cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    urls: Vec<Url>,
    /// One per server, in the order of `urls`: a key goes to the same server either way.
    pipelines: Vec<Pipeline>,
    prefix: String,
    ttl_secs: u32,
    metrics: Metrics,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    servers: Option<Arc<Servers>>,
    paused_until: Option<Instant>,
    /// A probe of memcached is under way after a pause; requests skip meanwhile.
    probing: bool,
    /// Failures in a row, for the length of the next pause.
    failures: u32,
    pending_deletes: HashSet<String>,
}

/// One client per memcached server; a key always goes to the same one.
struct Servers {
    clients: Vec<memcache::Client>,
}

impl Servers {
    fn for_key(&self, key: &str) -> Result<&memcache::Client, memcache::MemcacheError> {
        self.clients
            .get(self.index_of(key))
            .ok_or_else(|| memcache::ClientError::Error("no memcached server".into()).into())
    }

    /// The values found for `keys`, with one multi-get per server.
    fn get_many(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, String>, memcache::MemcacheError> {
        let mut by_server: HashMap<usize, Vec<&str>> = HashMap::new();
        for key in keys {
            by_server
                .entry(self.index_of(key))
                .or_default()
                .push(key.as_str());
        }
        let mut found = HashMap::new();
        for (index, keys) in by_server {
            if let Some(client) = self.clients.get(index) {
                found.extend(client.gets::<String>(&keys)?);
            }
        }
        Ok(found)
    }

    fn index_of(&self, key: &str) -> usize {
        server_index(key, self.clients.len())
    }
}

/// Which of `count` servers holds `key`.
fn server_index(key: &str, count: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    usize::try_from(hasher.finish() % count.max(1) as u64).unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Set,
    Delete,
    Bump,
    /// The background check of a server after a pause.
    Probe,
    /// A step of a counter shared by the nodes (rate limits).
    Count,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::Bump => "bump",
            Op::Probe => "probe",
            Op::Count => "count",
        }
    }
}

/// Deletes a key; one that is not there (never cached, expired, evicted) is deleted already.
fn delete_key(servers: &Servers, key: &str) -> Result<(), memcache::MemcacheError> {
    match servers.for_key(key)?.delete(key) {
        Ok(_) => Ok(()),
        Err(error) if absent_or_present(&error) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Answers that are outcomes, not failures: a key that is (not) there.
fn absent_or_present(error: &memcache::MemcacheError) -> bool {
    matches!(
        error,
        memcache::MemcacheError::CommandError(
            memcache::CommandError::KeyNotFound | memcache::CommandError::KeyExists
        )
    )
}

impl Cache {
    /// `servers` is a comma-separated list of `host:port`; empty turns the cache off.
    pub fn new(servers: &str, prefix: &str, ttl_secs: u32, metrics: Metrics) -> Cache {
        let (urls, pipelines) = servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .filter_map(|server| {
                // The crate's binary protocol writes and reads every header field with its own
                // system call (about twenty per request); its text protocol buffers its reads.
                let url = format!(
                    "memcache://{server}?timeout={}&tcp_nodelay=true&protocol=ascii",
                    TIMEOUT.as_secs_f64()
                );
                match Url::parse(&url) {
                    Ok(url) => Some((url, Pipeline::new(server))),
                    Err(error) => {
                        tracing::error!(%error, server, "ignoring a malformed memcached address");
                        None
                    }
                }
            })
            .unzip();
        Cache {
            inner: Arc::new(Inner {
                urls,
                pipelines,
                prefix: prefix.to_owned(),
                ttl_secs,
                metrics,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The cached value, or `None` on a miss, an undecodable entry or any failure.
    pub async fn get<T: DeserializeOwned + Send + 'static>(&self, key: CacheKey) -> Option<T> {
        let key = self.key(key);
        let text = self
            .call(Op::Get, move |servers| {
                servers.for_key(&key)?.get::<String>(&key)
            })
            .await
            .flatten();
        let result = match &text {
            Some(_) => "hit",
            None => "miss",
        };
        self.count(Op::Get, result);
        text.and_then(|text| serde_json::from_str(&text).ok())
    }

    /// Several entries, with one round trip per memcached server: each a value, or `None` on a
    /// miss, an undecodable entry or any failure.
    pub async fn get_many<T: DeserializeOwned + Send + 'static>(
        &self,
        keys: &[CacheKey],
    ) -> Vec<Option<T>> {
        let keys: Vec<String> = keys.iter().map(|key| self.key(*key)).collect();
        let asked = keys.clone();
        let found = self
            .call(Op::Get, move |servers| servers.get_many(&asked))
            .await
            .unwrap_or_default();
        keys.iter()
            .map(|key| {
                let text = found.get(key);
                self.count(Op::Get, if text.is_some() { "hit" } else { "miss" });
                text.and_then(|text| serde_json::from_str(text).ok())
            })
            .collect()
    }

    /// Stores several values for the configured TTL, in one trip to the blocking pool.
    pub async fn set_many<T: Serialize>(&self, entries: &[(CacheKey, T)]) {
        let entries: Vec<(String, String)> = entries
            .iter()
            .filter_map(|(key, value)| Some((self.key(*key), serde_json::to_string(value).ok()?)))
            .collect();
        if entries.is_empty() {
            return;
        }
        let ttl = self.inner.ttl_secs;
        let stored = self
            .call(Op::Set, move |servers| {
                for (key, text) in &entries {
                    servers.for_key(key)?.set(key, text.as_str(), ttl)?;
                }
                Ok(entries.len())
            })
            .await;
        if let Some(stored) = stored {
            self.inner
                .metrics
                .cache_requests
                .with_label_values(&[Op::Set.as_str(), "ok"])
                .inc_by(stored as u64);
        }
    }

    /// Stores a value for the configured TTL.
    pub async fn set<T: Serialize>(&self, key: CacheKey, value: &T) {
        let Ok(text) = serde_json::to_string(value) else {
            return;
        };
        let key = self.key(key);
        let ttl = self.inner.ttl_secs;
        if self
            .call(Op::Set, move |servers| {
                servers.for_key(&key)?.set(&key, text.as_str(), ttl)
            })
            .await
            .is_some()
        {
            self.count(Op::Set, "ok");
        }
    }

    /// Removes an entry after its source changed. If memcached cannot be told now, it is told
    /// before anything else once it answers again.
    pub async fn delete(&self, key: CacheKey) {
        let key = self.key(key);
        let remembered = key.clone();
        if self
            .call(Op::Delete, move |servers| delete_key(servers, &key))
            .await
            .is_some()
        {
            self.count(Op::Delete, "ok");
        } else {
            self.remember_deletes([remembered]);
        }
    }

    /// Adds one to the counter `name` for the window numbered `window` (each `window_secs`
    /// long) and returns its new value with the previous window's: a sliding-window counter every
    /// node shares. A window's counter is created at zero and lives two windows. `None` when
    /// memcached is off, paused or failed; the caller then counts on its own.
    pub async fn count_in_window(
        &self,
        name: &str,
        window: u64,
        window_secs: u32,
    ) -> Option<(u64, u64)> {
        let key = format!("{}:count:{name}:{window}", self.inner.prefix);
        let previous = format!(
            "{}:count:{name}:{}",
            self.inner.prefix,
            window.wrapping_sub(1)
        );
        let ttl = window_secs.saturating_mul(2).saturating_add(1);
        let counted = self
            .call(Op::Count, move |servers| {
                let client = servers.for_key(&key)?;
                // `add` fails when another node created the counter first: either way it exists.
                match client.add(&key, 0_u64, ttl) {
                    Ok(()) => {}
                    Err(error) if absent_or_present(&error) => {}
                    Err(error) => return Err(error),
                }
                let now = client.increment(&key, 1)?;
                let before = servers
                    .for_key(&previous)?
                    .get::<String>(&previous)?
                    .and_then(|text| text.trim().parse().ok())
                    .unwrap_or(0);
                Ok((now, before))
            })
            .await;
        if counted.is_some() {
            self.count(Op::Count, "ok");
        }
        counted
    }

    /// Reads a versioned entry in one round trip: the current version of `version` (created
    /// when missing) and the entry at `key`. `None` when the cache is unusable.
    ///
    /// Writers change PostgreSQL first and then [`Cache::bump`] the version; readers read the
    /// version before PostgreSQL and tag what they store with it. An entry filled from a read
    /// that raced a change carries the old version and is never served.
    pub async fn get_versioned<T: DeserializeOwned + Send + 'static>(
        &self,
        version: CacheKey,
        key: CacheKey,
    ) -> Option<(u64, Option<T>)> {
        let (version, key) = (self.key(version), self.key(key));
        let fresh: u64 = rand::random::<u64>() >> 1;
        let found = self
            .call(Op::Get, move |servers| {
                let (current, text) =
                    if std::ptr::eq(servers.for_key(&version)?, servers.for_key(&key)?) {
                        let mut found: std::collections::HashMap<String, String> = servers
                            .for_key(&key)?
                            .gets(&[version.as_str(), key.as_str()])?;
                        (found.remove(&version), found.remove(&key))
                    } else {
                        (
                            servers.for_key(&version)?.get::<String>(&version)?,
                            servers.for_key(&key)?.get::<String>(&key)?,
                        )
                    };
                let current = match current.and_then(|v| v.trim().parse::<u64>().ok()) {
                    Some(current) => current,
                    None => {
                        // Versions do not expire; a lost one starts again from a random value,
                        // which no stored entry carries.
                        let client = servers.for_key(&version)?;
                        match client.add(&version, fresh, 0) {
                            Ok(()) => {}
                            Err(error) if absent_or_present(&error) => {}
                            Err(error) => return Err(error),
                        }
                        match client
                            .get::<String>(&version)?
                            .and_then(|v| v.trim().parse().ok())
                        {
                            Some(current) => current,
                            None => fresh,
                        }
                    }
                };
                Ok((current, text))
            })
            .await?;
        let (current, text) = found;
        self.count(Op::Get, if text.is_some() { "hit" } else { "miss" });
        Some((
            current,
            text.and_then(|text| serde_json::from_str(&text).ok()),
        ))
    }

    /// Moves versions on, so entries tagged with the old ones are never served again: pairs of
    /// (version, entry), one pipelined round trip per server. A version that does not exist
    /// stays so: no reader has tagged an entry with it, and one created after this belongs to a
    /// reader that reads PostgreSQL later still, so after the change being announced. If
    /// memcached cannot be told, the entries are deleted before anything else once it answers
    /// again.
    pub async fn bump(&self, pairs: Vec<(CacheKey, CacheKey)>) {
        if pairs.is_empty() {
            return;
        }
        let versions: Vec<String> = pairs
            .iter()
            .map(|(version, _)| self.key(*version))
            .collect();
        let entries = || pairs.iter().map(|(_, entry)| self.key(*entry));
        let Some((_, pending)) = self.checkout() else {
            self.count(Op::Bump, "skipped");
            self.remember_deletes(entries());
            return;
        };
        let servers = self.inner.pipelines.len();
        let mut requests: Vec<Vec<Command<'_>>> = vec![Vec::new(); servers];
        // Deletes owed since an outage first, as every other request sends them.
        for key in &pending {
            requests[server_index(key, servers)].push(Command::Delete(key));
        }
        for key in &versions {
            requests[server_index(key, servers)].push(Command::Incr(key));
        }
        let sent =
            self.inner
                .pipelines
                .iter()
                .zip(&requests)
                .map(|(pipeline, commands)| async move {
                    match tokio::time::timeout(TIMEOUT, pipeline.run(commands)).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "memcached did not answer in time",
                        )),
                    }
                });
        let failure = futures::future::join_all(sent)
            .await
            .into_iter()
            .find_map(Result::err);
        match failure {
            None => {
                self.succeeded(&pending);
                self.count(Op::Bump, "ok");
            }
            Some(error) => {
                self.failed(Op::Bump, &error);
                self.remember_deletes(entries());
            }
        }
    }

    /// A request went through, with the deletes owed that it was given (`sent`): those are
    /// done. Deletes remembered while it was under way (another request failed) stay owed.
    fn succeeded(&self, sent: &[String]) {
        if let Ok(mut state) = self.inner.state.lock() {
            for key in sent {
                state.pending_deletes.remove(key);
            }
            state.failures = 0;
        }
    }

    /// Entries to delete before anything else once memcached answers again.
    fn remember_deletes(&self, keys: impl IntoIterator<Item = String>) {
        if let Ok(mut state) = self.inner.state.lock() {
            for key in keys {
                if state.pending_deletes.len() < MAX_PENDING_DELETES {
                    state.pending_deletes.insert(key);
                }
            }
        }
    }

    fn key(&self, key: CacheKey) -> String {
        let prefix = &self.inner.prefix;
        match key {
            CacheKey::Profile(user) => format!("{prefix}:profile:{user}"),
            CacheKey::Room(room) => format!("{prefix}:room:{room}"),
            CacheKey::Membership(room, user) => format!("{prefix}:member:{room}:{user}"),
            CacheKey::Recent(room) => format!("{prefix}:recent:{room}"),
            CacheKey::RecentVersion(room) => format!("{prefix}:recent-version:{room}"),
        }
    }

    fn count(&self, op: Op, result: &str) {
        self.inner
            .metrics
            .cache_requests
            .with_label_values(&[op.as_str(), result])
            .inc();
    }

    /// Runs one request on the blocking pool. `None` when the cache is off, paused or failed.
    async fn call<T, F>(&self, op: Op, work: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(&Servers) -> Result<T, memcache::MemcacheError> + Send + 'static,
    {
        let Some((servers, pending)) = self.checkout() else {
            self.count(op, "skipped");
            return None;
        };
        let span = tracing::Span::current();
        let outcome = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            for key in &pending {
                delete_key(&servers, key)?;
            }
            work(&servers).map(|value| (value, pending))
        })
        .await;
        match outcome {
            Ok(Ok((value, sent))) => {
                self.succeeded(&sent);
                Some(value)
            }
            Ok(Err(error)) => {
                self.failed(op, &error);
                None
            }
            Err(error) => {
                self.failed(op, &error);
                None
            }
        }
    }

    /// The client to use and the deletes to send first, or `None` while paused or off.
    fn checkout(&self) -> Option<(Arc<Servers>, Vec<String>)> {
        if self.inner.urls.is_empty() {
            return None;
        }
        let mut state = self.inner.state.lock().ok()?;
        if state.probing {
            return None;
        }
        if let Some(until) = state.paused_until {
            if Instant::now() < until {
                return None;
            }
            // A background probe decides when requests go to memcached again; none of them
            // waits on a server that may still be dead.
            state.probing = true;
            drop(state);
            self.probe();
            return None;
        }
        let servers = match &state.servers {
            Some(servers) => servers.clone(),
            None => {
                let servers = Arc::new(self.build_servers());
                state.servers = Some(servers.clone());
                servers
            }
        };
        let pending = state.pending_deletes.iter().cloned().collect();
        Some((servers, pending))
    }

    /// Asks every server for its version on the blocking pool: on success the pause ends, on
    /// failure it doubles.
    fn probe(&self) {
        let cache = self.clone();
        let servers = Arc::new(self.build_servers());
        tokio::task::spawn_blocking(move || {
            let answered = servers
                .clients
                .iter()
                .try_for_each(|client| client.version().map(|_| ()));
            match answered {
                Ok(()) => {
                    cache.count(Op::Probe, "ok");
                    if let Ok(mut state) = cache.inner.state.lock() {
                        state.probing = false;
                        state.paused_until = None;
                        state.failures = 0;
                        state.servers = Some(servers);
                    }
                }
                Err(error) => cache.failed(Op::Probe, &error),
            }
        });
    }

    fn build_servers(&self) -> Servers {
        let clients = self
            .inner
            .urls
            .iter()
            .filter_map(|url| {
                let pool = r2d2::Pool::builder()
                    .max_size(POOL_SIZE)
                    .min_idle(Some(0))
                    .connection_timeout(TIMEOUT)
                    .test_on_check_out(false)
                    .build_unchecked(ConnectionManager::new(url.clone()));
                memcache::Client::with_pool(pool).ok()
            })
            .collect();
        Servers { clients }
    }

    fn failed(&self, op: Op, error: &dyn std::fmt::Display) {
        tracing::warn!(%error, op = op.as_str(), "memcached request failed; using PostgreSQL");
        self.inner.metrics.cache_errors.inc();
        self.count(op, "error");
        for pipeline in &self.inner.pipelines {
            pipeline.reset();
        }
        if let Ok(mut state) = self.inner.state.lock() {
            state.servers = None;
            state.probing = false;
            let pause = PAUSE_AFTER_FAILURE
                .saturating_mul(1 << state.failures.min(8))
                .min(MAX_PAUSE);
            state.failures = state.failures.saturating_add(1);
            state.paused_until = Some(Instant::now() + pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback address nothing listens on.
    fn closed_address() -> std::io::Result<String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?.to_string();
        drop(listener);
        Ok(address)
    }

    fn count(metrics: &Metrics, op: &str, result: &str) -> u64 {
        metrics
            .cache_requests
            .with_label_values(&[op, result])
            .get()
    }

    #[tokio::test]
    async fn after_a_failure_only_background_probes_wait_on_a_dead_server() -> std::io::Result<()> {
        let metrics = Metrics::new();
        let cache = Cache::new(&closed_address()?, "t", 60, metrics.clone());
        let key = CacheKey::Room(RoomId(1));
        assert_eq!(cache.get::<String>(key).await, None);
        assert_eq!(count(&metrics, "get", "error"), 1);

        // Reads go on while the pause ends and a probe finds the server still dead.
        let deadline = Instant::now() + Duration::from_secs(10);
        while count(&metrics, "probe", "error") < 1 {
            assert!(Instant::now() < deadline, "no probe within 10 s");
            let burst = (0..20).map(|_| cache.get::<String>(key));
            for value in futures::future::join_all(burst).await {
                assert_eq!(value, None);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // No read after the first went to the dead server: they all skipped.
        assert_eq!(count(&metrics, "get", "error"), 1);
        assert!(count(&metrics, "get", "skipped") >= 20);
        assert_eq!(metrics.cache_errors.get(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_bump_that_fails_pauses_the_cache_and_remembers_the_entries() -> std::io::Result<()> {
        let metrics = Metrics::new();
        let cache = Cache::new(&closed_address()?, "t", 60, metrics.clone());
        let rooms = [RoomId(1), RoomId(2)];
        let pairs = || {
            rooms
                .iter()
                .map(|&room| (CacheKey::RecentVersion(room), CacheKey::Recent(room)))
                .collect::<Vec<_>>()
        };
        cache.bump(pairs()).await;
        assert_eq!(count(&metrics, "bump", "error"), 1);
        // Paused: the next bump does not wait on the dead server.
        cache.bump(pairs()).await;
        assert_eq!(count(&metrics, "bump", "skipped"), 1);
        let expected: HashSet<String> = ["t:recent:1", "t:recent:2"].map(String::from).into();
        assert_eq!(
            pending_deletes(&cache),
            expected,
            "entries to delete once memcached is back"
        );
        Ok(())
    }

    fn pending_deletes(cache: &Cache) -> HashSet<String> {
        cache
            .inner
            .state
            .lock()
            .map(|state| state.pending_deletes.clone())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_request_that_succeeds_keeps_the_deletes_owed_since_it_started() -> std::io::Result<()>
    {
        let cache = Cache::new(&closed_address()?, "t", 60, Metrics::new());
        // While this request is under way, another one fails and leaves a delete owed. The
        // request itself asks no server anything, so it succeeds even with none listening.
        let other = cache.clone();
        let answer = cache
            .call(Op::Get, move |_| {
                other.remember_deletes(["t:recent:7".to_owned()]);
                Ok(1)
            })
            .await;
        assert_eq!(answer, Some(1));
        let expected: HashSet<String> = ["t:recent:7"].map(String::from).into();
        assert_eq!(
            pending_deletes(&cache),
            expected,
            "a delete owed since the request started is still owed"
        );
        Ok(())
    }
}
