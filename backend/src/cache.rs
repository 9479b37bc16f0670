//! The cache: the only module that speaks memcached.
//!
//! Cache-aside for hot, read-mostly data (profiles, room metadata, memberships): readers try
//! here first and fill on a miss; writers change PostgreSQL, then delete the key, so every node
//! sees the change on its next read. The cache is an optimisation, never a source of truth:
//! every failure is logged, counted and answered as a miss.
//!
//! A key lives on one server of the pool, chosen by rendezvous hashing (`placement`): every node
//! chooses the same server whatever its build and the order of its list, and a server added or
//! removed moves only its share of the keys. Each server is watched on its own: a dead one makes
//! only its keys miss.
//!
//! Requests use `async_memcached` on the node's own runtime, each on a connection of a small
//! per-server pool (`connections`) that connects lazily (a node starts while memcached is down)
//! and sends nothing on checkout; every request, its wait for a connection included, is bounded
//! by [`TIMEOUT`]. After a server failed its idle connections are closed and requests for its
//! keys skip it; when the pause is over a background probe (a new connection and `version`)
//! decides whether they go back to it, so a dead server costs the requests in flight at the
//! moment it dies one timeout, and nothing after. The pause doubles with each failed probe, up
//! to a few seconds. Deletes that could not be sent are remembered by the server that holds
//! the key; the probe sends them before the server is used again (and any request that finds
//! some still owed sends them before its own command), so an entry invalidated while its
//! server was unreachable is not served afterwards.
//!
//! Version bumps, which every stored batch waits for, and owed deletes go through `pipeline`:
//! one connection per server on which many `incr`s and `delete`s are written at once and
//! answered in one round trip, which the client cannot do (see `pipeline` for why).

mod connections;
mod pipeline;
mod placement;

use crate::metrics::Metrics;
use async_memcached::{AsciiProtocol, Client, Error, Status};
use chat_protocol::{RoomId, UserId};
use connections::Connections;
use pipeline::{Command, Pipeline};
use placement::Placement;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for a connection or an answer.
const TIMEOUT: Duration = Duration::from_millis(250);
/// How long requests skip a server after it failed; doubled after each failed probe.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(500);
/// The longest pause.
const MAX_PAUSE: Duration = Duration::from_secs(4);
/// Connections per memcached server: enough that a burst of requests does not wait for one.
const POOL_SIZE: usize = 16;
/// What a request that timed out failed with.
const NO_ANSWER: &str = "memcached did not answer in time";
/// Most deletes remembered per server while it is unreachable; beyond that the TTL bounds
/// staleness.
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
    /// The pool, in the order configured (which places no key).
    servers: Vec<Server>,
    placement: Placement,
    prefix: String,
    ttl_secs: u32,
    metrics: Metrics,
}

/// One memcached server of the pool, and what this node knows of it.
struct Server {
    /// `host:port`, as every node names it.
    address: String,
    connections: Connections,
    /// Version bumps' and owed deletes' pipelined connection.
    pipeline: Pipeline,
    state: Mutex<ServerState>,
}

impl Server {
    /// Sends the deletes owed to this server: one round trip for up to 512 of them.
    async fn send_owed(&self, owed: &[String]) -> std::io::Result<()> {
        let commands: Vec<Command<'_>> = owed.iter().map(|key| Command::Delete(key)).collect();
        self.pipeline.run(&commands).await
    }
}

#[derive(Default)]
struct ServerState {
    paused_until: Option<Instant>,
    /// A probe of the server is under way after a pause; requests skip it meanwhile.
    probing: bool,
    /// Failures in a row, for the length of the next pause.
    failures: u32,
    /// Keys on this server to delete before anything else is sent to it.
    pending_deletes: HashSet<String>,
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

/// Answers that are outcomes, not failures: a key that is (not) there.
fn absent_or_present(error: &Error) -> bool {
    matches!(
        error,
        Error::Protocol(Status::NotFound | Status::NotStored | Status::Exists)
    )
}

/// Deletes a key; one that is not there (never cached, expired, evicted) is deleted already.
async fn delete_key(client: &mut Client, key: &str) -> Result<(), Error> {
    match client.delete(key).await {
        Err(error) if !absent_or_present(&error) => Err(error),
        _ => Ok(()),
    }
}

/// Creates `key` at `value` unless it exists; either way it exists afterwards.
async fn add_number(client: &mut Client, key: &str, value: u64, ttl: u32) -> Result<(), Error> {
    match client.add(key, value, Some(i64::from(ttl)), None).await {
        Err(error) if !absent_or_present(&error) => Err(error),
        _ => Ok(()),
    }
}

/// The text stored at `key`; a value that is not UTF-8 is none of ours, so a miss.
async fn get_text(client: &mut Client, key: &str) -> Result<Option<String>, Error> {
    let value = client.get(key).await?;
    Ok(value
        .and_then(|value| value.data)
        .and_then(|data| String::from_utf8(data).ok()))
}

/// The texts stored at `keys`, by key, in one round trip.
async fn get_texts(client: &mut Client, keys: &[&str]) -> Result<HashMap<String, String>, Error> {
    let values = match client.get_multi(keys).await {
        Ok(values) => values,
        // The client's answer when none of the keys is there.
        Err(Error::Protocol(Status::NotFound)) => return Ok(HashMap::new()),
        Err(error) => return Err(error),
    };
    Ok(values
        .into_iter()
        .filter_map(|value| {
            let key = String::from_utf8(value.key).ok()?;
            let text = String::from_utf8(value.data?).ok()?;
            Some((key, text))
        })
        .collect())
}

/// The value of a counter or version as memcached returns it.
fn number(text: Option<String>) -> Option<u64> {
    text.and_then(|text| text.trim().parse().ok())
}

/// Reads a version, creating it at `fresh` when it is missing. Versions do not expire; a lost
/// one starts again from a random value, which no stored entry carries.
async fn version_of(
    client: &mut Client,
    version: &str,
    found: Option<String>,
    fresh: u64,
) -> Result<u64, Error> {
    if let Some(current) = number(found) {
        return Ok(current);
    }
    add_number(client, version, fresh, 0).await?;
    Ok(number(get_text(client, version).await?).unwrap_or(fresh))
}

impl Cache {
    /// `servers` is a comma-separated list of `host:port`, in any order but spelt alike on
    /// every node; empty turns the cache off.
    pub fn new(servers: &str, prefix: &str, ttl_secs: u32, metrics: Metrics) -> Cache {
        let mut seen = HashSet::new();
        let servers: Vec<Server> = servers
            .split(',')
            .map(placement::canonical)
            .filter(|address| !address.is_empty() && seen.insert(address.clone()))
            .map(|address| Server {
                connections: Connections::new(&address, POOL_SIZE),
                pipeline: Pipeline::new(&address),
                address,
                state: Mutex::new(ServerState::default()),
            })
            .collect();
        for server in &servers {
            metrics
                .cache_server_up
                .with_label_values(&[&server.address])
                .set(1);
        }
        Cache {
            inner: Arc::new(Inner {
                placement: Placement::new(servers.iter().map(|server| server.address.as_str())),
                servers,
                prefix: prefix.to_owned(),
                ttl_secs,
                metrics,
            }),
        }
    }

    /// The cached value, or `None` on a miss, an undecodable entry or any failure.
    pub async fn get<T: DeserializeOwned + Send + 'static>(&self, key: CacheKey) -> Option<T> {
        let key = self.key(key);
        let text = match self.server_of(&key) {
            Some(server) => self
                .call(server, Op::Get, async |client| get_text(client, &key).await)
                .await
                .flatten(),
            None => None,
        };
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
        let asks =
            self.by_server(keys.iter().cloned())
                .into_iter()
                .map(|(server, asked)| async move {
                    self.call(server, Op::Get, async |client| {
                        let asked: Vec<&str> = asked.iter().map(String::as_str).collect();
                        get_texts(client, &asked).await
                    })
                    .await
                    .unwrap_or_default()
                });
        let found: HashMap<String, String> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        keys.iter()
            .map(|key| {
                let text = found.get(key);
                self.count(Op::Get, if text.is_some() { "hit" } else { "miss" });
                text.and_then(|text| serde_json::from_str(text).ok())
            })
            .collect()
    }

    /// Stores several values for the configured TTL, with one round trip per server.
    pub async fn set_many<T: Serialize>(&self, entries: &[(CacheKey, T)]) {
        let mut by_server: HashMap<usize, Vec<(String, String)>> = HashMap::new();
        for (key, value) in entries {
            let (key, Ok(text)) = (self.key(*key), serde_json::to_string(value)) else {
                continue;
            };
            if let Some(server) = self.server_of(&key) {
                by_server.entry(server).or_default().push((key, text));
            }
        }
        let ttl = i64::from(self.inner.ttl_secs);
        let sets = by_server.into_iter().map(|(server, entries)| {
            self.call(server, Op::Set, async move |client| {
                let entries: Vec<(&str, &str)> = entries
                    .iter()
                    .map(|(key, text)| (key.as_str(), text.as_str()))
                    .collect();
                // Written at once, answered in order; an entry the server refused (too large)
                // is simply not cached.
                let answers = client.set_multi(&entries, Some(ttl), None).await?;
                Ok(answers.values().filter(|answer| answer.is_ok()).count())
            })
        });
        let stored: usize = futures::future::join_all(sets)
            .await
            .into_iter()
            .flatten()
            .sum();
        if stored > 0 {
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
        let ttl = i64::from(self.inner.ttl_secs);
        let Some(server) = self.server_of(&key) else {
            return;
        };
        if self
            .call(server, Op::Set, async |client| {
                client.set(&key, &text, Some(ttl), None).await
            })
            .await
            .is_some()
        {
            self.count(Op::Set, "ok");
        }
    }

    /// Removes an entry after its source changed. If its server cannot be told now, it is told
    /// before anything else once it answers again.
    pub async fn delete(&self, key: CacheKey) {
        let key = self.key(key);
        let Some(server) = self.server_of(&key) else {
            return;
        };
        let remembered = key.clone();
        if self
            .call(server, Op::Delete, async |client| {
                delete_key(client, &key).await
            })
            .await
            .is_some()
        {
            self.count(Op::Delete, "ok");
        } else {
            self.remember_deletes(server, [remembered]);
        }
    }

    /// Adds one to the counter `name` for the window numbered `window` (each `window_secs`
    /// long) and returns its new value with the previous window's: a sliding-window counter every
    /// node shares. A window's counter is created at zero and lives two windows. `None` when
    /// memcached is off, or the server of either window is paused or failed; the caller then
    /// counts on its own.
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
        let (server, previous_server) = (self.server_of(&key)?, self.server_of(&previous)?);
        let same_server = server == previous_server;
        let asked = previous.clone();
        let (now, before) = self
            .call(server, Op::Count, async |client| {
                // `add` fails when another node created the counter first: either way it exists.
                add_number(client, &key, 0, ttl).await?;
                let now = client.increment(&key, 1).await?;
                let before = if same_server {
                    Some(number(get_text(client, &asked).await?).unwrap_or(0))
                } else {
                    None
                };
                Ok((now, before))
            })
            .await?;
        let before = match before {
            Some(before) => before,
            None => {
                self.call(previous_server, Op::Count, async |client| {
                    Ok(number(get_text(client, &previous).await?).unwrap_or(0))
                })
                .await?
            }
        };
        self.count(Op::Count, "ok");
        Some((now, before))
    }

    /// Reads a versioned entry: the current version of `version` (created when missing) and the
    /// entry at `key`, in one round trip when one server holds both. `None` when either server
    /// is unusable.
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
        let (version_server, key_server) = (self.server_of(&version)?, self.server_of(&key)?);
        let fresh: u64 = rand::random::<u64>() >> 1;
        let (current, text) = if version_server == key_server {
            self.call(version_server, Op::Get, async |client| {
                let mut found = get_texts(client, &[version.as_str(), key.as_str()]).await?;
                let current = version_of(client, &version, found.remove(&version), fresh).await?;
                Ok((current, found.remove(&key)))
            })
            .await?
        } else {
            let current = self
                .call(version_server, Op::Get, async |client| {
                    let found = get_text(client, &version).await?;
                    version_of(client, &version, found, fresh).await
                })
                .await?;
            let text = self
                .call(key_server, Op::Get, async |client| {
                    get_text(client, &key).await
                })
                .await?;
            (current, text)
        };
        self.count(Op::Get, if text.is_some() { "hit" } else { "miss" });
        Some((
            current,
            text.and_then(|text| serde_json::from_str(&text).ok()),
        ))
    }

    /// Moves versions on, so entries tagged with the old ones are never served again: pairs of
    /// (version, entry), one pipelined round trip per server. A version that does not exist
    /// stays so: no reader has tagged an entry with it, and one created after this belongs to a
    /// reader that reads PostgreSQL later still, so after the change being announced. Where a
    /// version's server cannot be told, its entry is deleted from its own server before anything
    /// else is sent there.
    pub async fn bump(&self, pairs: Vec<(CacheKey, CacheKey)>) {
        if pairs.is_empty() || self.inner.servers.is_empty() {
            return;
        }
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(version, entry)| (self.key(*version), self.key(*entry)))
            .collect();
        let servers = self.inner.servers.len();
        let mut versions: Vec<Vec<&str>> = vec![Vec::new(); servers];
        for (version, _) in &pairs {
            if let Some(server) = self.server_of(version) {
                versions[server].push(version);
            }
        }
        // The servers to tell, each with the deletes owed to it (sent first).
        let mut owed: Vec<(usize, Vec<String>)> = Vec::new();
        let mut skipped = false;
        for (server, its_versions) in versions.iter().enumerate() {
            match self.checkout(server) {
                Some(pending) if !(its_versions.is_empty() && pending.is_empty()) => {
                    owed.push((server, pending));
                }
                Some(_) => {}
                None => skipped |= !its_versions.is_empty(),
            }
        }
        let requests: Vec<(usize, Vec<Command<'_>>)> = owed
            .iter()
            .map(|(server, pending)| {
                let mut commands: Vec<Command<'_>> =
                    pending.iter().map(|key| Command::Delete(key)).collect();
                commands.extend(
                    versions[*server]
                        .iter()
                        .map(|version| Command::Incr(version)),
                );
                (*server, commands)
            })
            .collect();
        let sent = requests.iter().map(|(server, commands)| async move {
            let Some(entry) = self.inner.servers.get(*server) else {
                return Ok(());
            };
            match tokio::time::timeout(TIMEOUT, entry.pipeline.run(commands)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, NO_ANSWER)),
            }
        });
        let outcomes = futures::future::join_all(sent).await;
        let mut told = vec![false; servers];
        for ((server, pending), outcome) in owed.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    self.succeeded(*server, pending);
                    told[*server] = true;
                }
                Err(error) => self.failed(*server, Op::Bump, &error),
            }
        }
        let mut all_told = true;
        for (version, entry) in &pairs {
            if self.server_of(version).is_some_and(|server| told[server]) {
                continue;
            }
            all_told = false;
            if let Some(server) = self.server_of(entry) {
                self.remember_deletes(server, [entry.clone()]);
            }
        }
        if all_told {
            self.count(Op::Bump, "ok");
        } else if skipped {
            self.count(Op::Bump, "skipped");
        }
    }

    /// The server that holds `key`, or `None` when the cache is off.
    fn server_of(&self, key: &str) -> Option<usize> {
        self.inner.placement.server_of(key)
    }

    /// `keys` grouped by the server that holds them.
    fn by_server(&self, keys: impl IntoIterator<Item = String>) -> HashMap<usize, Vec<String>> {
        let mut grouped: HashMap<usize, Vec<String>> = HashMap::new();
        for key in keys {
            if let Some(server) = self.server_of(&key) {
                grouped.entry(server).or_default().push(key);
            }
        }
        grouped
    }

    /// A request to `server` went through, with the deletes owed that it was given (`sent`):
    /// those are done. Deletes remembered while it was under way (another request failed) stay
    /// owed.
    fn succeeded(&self, server: usize, sent: &[String]) {
        let Some(entry) = self.inner.servers.get(server) else {
            return;
        };
        let mut state = crate::locks::lock(&entry.state);
        for key in sent {
            state.pending_deletes.remove(key);
        }
        state.failures = 0;
    }

    /// Keys of `server` to delete before anything else once it answers again.
    fn remember_deletes(&self, server: usize, keys: impl IntoIterator<Item = String>) {
        let Some(entry) = self.inner.servers.get(server) else {
            return;
        };
        let mut state = crate::locks::lock(&entry.state);
        for key in keys {
            if state.pending_deletes.len() < MAX_PENDING_DELETES {
                state.pending_deletes.insert(key);
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

    /// Runs one request to `server` on a pooled connection, after the deletes owed to it, all
    /// within [`TIMEOUT`]. `None` when that server is paused or failed.
    async fn call<T>(
        &self,
        server: usize,
        op: Op,
        work: impl AsyncFnOnce(&mut Client) -> Result<T, Error>,
    ) -> Option<T> {
        let (Some(entry), Some(owed)) = (self.inner.servers.get(server), self.checkout(server))
        else {
            self.count(op, "skipped");
            return None;
        };
        let request = async {
            entry.send_owed(&owed).await?;
            let mut connection = entry.connections.get().await?;
            let value = work(connection.client()).await?;
            connection.release();
            Ok::<T, Error>(value)
        };
        match tokio::time::timeout(TIMEOUT, request).await {
            Ok(Ok(value)) => {
                self.succeeded(server, &owed);
                Some(value)
            }
            Ok(Err(error)) => {
                self.failed(server, op, &error);
                None
            }
            Err(_) => {
                self.failed(server, op, &NO_ANSWER);
                None
            }
        }
    }

    /// The deletes to send `server` before anything else, or `None` while it is paused.
    fn checkout(&self, server: usize) -> Option<Vec<String>> {
        let entry = self.inner.servers.get(server)?;
        let mut state = crate::locks::lock(&entry.state);
        if state.probing {
            return None;
        }
        if let Some(until) = state.paused_until {
            if Instant::now() < until {
                return None;
            }
            // A background probe decides when requests go to this server again; none of them
            // waits on a server that may still be dead.
            state.probing = true;
            drop(state);
            self.probe(server);
            return None;
        }
        Some(state.pending_deletes.iter().cloned().collect())
    }

    /// Checks `server` in the background on a new connection (`version`) and sends it the
    /// deletes owed: on success its pause ends and the connection joins the pool, on failure
    /// the pause doubles.
    fn probe(&self, server: usize) {
        let cache = self.clone();
        tokio::spawn(async move {
            let Some(entry) = cache.inner.servers.get(server) else {
                return;
            };
            let owed: Vec<String> = crate::locks::lock(&entry.state)
                .pending_deletes
                .iter()
                .cloned()
                .collect();
            let check = async {
                let mut client = entry.connections.connect().await?;
                client.version().await?;
                entry.send_owed(&owed).await?;
                Ok::<Client, Error>(client)
            };
            let client = match tokio::time::timeout(TIMEOUT, check).await {
                Ok(Ok(client)) => client,
                Ok(Err(error)) => return cache.failed(server, Op::Probe, &error),
                Err(_) => return cache.failed(server, Op::Probe, &NO_ANSWER),
            };
            entry.connections.adopt(client);
            cache.count(Op::Probe, "ok");
            {
                let mut state = crate::locks::lock(&entry.state);
                for key in &owed {
                    state.pending_deletes.remove(key);
                }
                state.probing = false;
                state.paused_until = None;
                state.failures = 0;
            }
            cache
                .inner
                .metrics
                .cache_server_up
                .with_label_values(&[&entry.address])
                .set(1);
        });
    }

    fn failed(&self, server: usize, op: Op, error: &dyn std::fmt::Display) {
        let Some(entry) = self.inner.servers.get(server) else {
            return;
        };
        tracing::warn!(
            %error,
            op = op.as_str(),
            server = entry.address,
            "memcached request failed; using PostgreSQL for this server's keys"
        );
        self.inner.metrics.cache_errors.inc();
        self.count(op, "error");
        self.inner
            .metrics
            .cache_server_up
            .with_label_values(&[&entry.address])
            .set(0);
        entry.pipeline.reset();
        entry.connections.clear();
        let mut state = crate::locks::lock(&entry.state);
        state.probing = false;
        let pause = PAUSE_AFTER_FAILURE
            .saturating_mul(1 << state.failures.min(8))
            .min(MAX_PAUSE);
        state.failures = state.failures.saturating_add(1);
        state.paused_until = Some(Instant::now() + pause);
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

    /// A key of `kind` that `server` holds.
    fn key_on(cache: &Cache, server: usize, kind: fn(RoomId) -> CacheKey) -> Option<CacheKey> {
        (1..1_000)
            .map(|room| kind(RoomId(room)))
            .find(|key| cache.server_of(&cache.key(*key)) == Some(server))
    }

    fn server_up(metrics: &Metrics, address: &str) -> i64 {
        metrics.cache_server_up.with_label_values(&[address]).get()
    }

    #[tokio::test]
    async fn a_dead_server_pauses_only_its_own_keys() -> std::io::Result<()> {
        let metrics = Metrics::new();
        let (first, second) = (closed_address()?, closed_address()?);
        let cache = Cache::new(&format!("{first},{second}"), "t", 60, metrics.clone());
        let (Some(on_first), Some(on_second)) = (
            key_on(&cache, 0, CacheKey::Room),
            key_on(&cache, 1, CacheKey::Room),
        ) else {
            panic!("no key found for one of the servers");
        };
        assert_eq!(cache.get::<String>(on_first).await, None);
        assert_eq!(count(&metrics, "get", "error"), 1);
        assert_eq!(server_up(&metrics, &first), 0);
        assert_eq!(server_up(&metrics, &second), 1);
        // The first server is paused: its keys skip it ...
        assert_eq!(cache.get::<String>(on_first).await, None);
        assert_eq!(count(&metrics, "get", "skipped"), 1);
        // ... and the second server's keys still go to the second server.
        assert_eq!(cache.get::<String>(on_second).await, None);
        assert_eq!(count(&metrics, "get", "error"), 2);
        assert_eq!(server_up(&metrics, &second), 0);
        Ok(())
    }

    #[tokio::test]
    async fn an_entry_whose_version_could_not_be_bumped_is_deleted_from_its_own_server(
    ) -> std::io::Result<()> {
        let cache = Cache::new(
            &format!("{},{}", closed_address()?, closed_address()?),
            "t",
            60,
            Metrics::new(),
        );
        // A room whose version and entry live on different servers.
        let Some(room) = (1..1_000).map(RoomId).find(|room| {
            cache.server_of(&cache.key(CacheKey::RecentVersion(*room)))
                != cache.server_of(&cache.key(CacheKey::Recent(*room)))
        }) else {
            panic!("no room with its version and entry apart");
        };
        cache
            .bump(vec![(
                CacheKey::RecentVersion(room),
                CacheKey::Recent(room),
            )])
            .await;
        let entry = cache.key(CacheKey::Recent(room));
        let Some(entry_server) = cache.server_of(&entry) else {
            panic!("no server for {entry}");
        };
        let owed = crate::locks::lock(&cache.inner.servers[entry_server].state)
            .pending_deletes
            .clone();
        assert_eq!(owed, HashSet::from([entry]));
        Ok(())
    }

    fn pending_deletes(cache: &Cache) -> HashSet<String> {
        cache
            .inner
            .servers
            .iter()
            .flat_map(|server| crate::locks::lock(&server.state).pending_deletes.clone())
            .collect()
    }

    #[test]
    fn a_request_that_succeeds_keeps_the_deletes_owed_since_it_started() -> std::io::Result<()> {
        let cache = Cache::new(&closed_address()?, "t", 60, Metrics::new());
        cache.remember_deletes(0, ["t:recent:6".to_owned()]);
        // A request starts with the deletes owed at that moment ...
        let Some(sent) = cache.checkout(0) else {
            panic!("a server that never failed is not paused");
        };
        assert_eq!(sent, vec!["t:recent:6".to_owned()]);
        // ... another request fails meanwhile and leaves one more owed ...
        cache.remember_deletes(0, ["t:recent:7".to_owned()]);
        // ... and the first one succeeds: what it sent is done, the other is still owed.
        cache.succeeded(0, &sent);
        let expected: HashSet<String> = ["t:recent:7"].map(String::from).into();
        assert_eq!(pending_deletes(&cache), expected);
        Ok(())
    }
}
