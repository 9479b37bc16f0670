//! Connection accounting: which TCP connections and WebSockets the node takes on.
//!
//! Every client connection takes a descriptor, and so does every PostgreSQL, RabbitMQ and
//! Memcached connection the node opens for them. The node therefore accepts at most the open-file
//! limit less a reserve, and closes any connection past that at once, so its own connections and
//! the operator's listener (`/metrics`, `/healthz`) always find a descriptor. Under that cap one
//! peer address holds a bounded number of TCP connections; among them, one user and one client
//! address hold a bounded number of WebSockets, and the node keeps a tenth of its connections
//! for HTTP requests (sign-in, history) whatever the WebSockets take.
//!
//! A [`ConnectionSlot`] or [`WebSocketPermit`] is counted while it lives: its `Drop` gives the
//! place back, so a connection that ends in any way (closed, reset, timed out, its task
//! cancelled) is never counted twice or forever.

use crate::api::ApiFailure;
use crate::config::Config;
use chat_protocol::{ErrorCode, UserId};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use warp::http::StatusCode;

/// The connection limits in force, with the defaults that depend on the machine resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// TCP connections the node holds at once (both listeners' clients; not its own).
    pub connections: u32,
    /// TCP connections one peer address holds; 0: no limit. Trusted proxies are not counted.
    pub connections_per_ip: u32,
    /// WebSockets open on the node at once.
    pub websockets: u32,
    /// WebSockets one user holds on this node; 0: no limit.
    pub websockets_per_user: u32,
    /// WebSockets one client address (behind trusted proxies, the forwarded one) holds; 0: no
    /// limit.
    pub websockets_per_ip: u32,
}

impl ConnectionLimits {
    /// The limits `config` asks for, on a process whose open-file limit is `open_files`.
    pub fn new(config: &Config, open_files: u64) -> ConnectionLimits {
        let connections = connection_cap(config.max_connections, open_files, config.fd_reserve);
        let websockets = match config.max_websockets {
            0 => connections - connections / 10,
            limit => limit.min(connections),
        };
        ConnectionLimits {
            connections,
            connections_per_ip: config.connections_per_ip,
            websockets: websockets.max(1),
            websockets_per_user: config.websockets_per_user,
            websockets_per_ip: config.websockets_per_ip,
        }
    }

    /// The limits for this process, reading its open-file limit.
    pub fn for_process(config: &Config) -> ConnectionLimits {
        let open_files = open_file_limit();
        let limits = ConnectionLimits::new(config, open_files);
        if u64::from(limits.connections) < u64::from(config.fd_reserve) {
            tracing::warn!(
                open_files,
                connections = limits.connections,
                "the open-file limit leaves few client connections; raise `nofile`"
            );
        }
        limits
    }
}

/// The soft open-file limit (`RLIMIT_NOFILE`) of this process; `u64::MAX` when it cannot be read
/// or is unlimited.
pub fn open_file_limit() -> u64 {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _hard)) => soft,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit");
            u64::MAX
        }
    }
}

/// Raises the soft open-file limit to the hard one, as a server with many sockets should; what
/// the limit then is, is what [`ConnectionLimits::for_process`] sees.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open-file limit"),
    }
}

/// Connections the node may hold: `configured` when set, otherwise the open-file limit less the
/// reserve. A limit no larger than the reserve leaves half of it to clients. Never above that,
/// and at least 1.
fn connection_cap(configured: u32, open_files: u64, reserve: u32) -> u32 {
    let reserve = u64::from(reserve);
    let room = if open_files > reserve {
        open_files - reserve
    } else {
        open_files / 2
    };
    let room = u32::try_from(room).unwrap_or(u32::MAX);
    let cap = match configured {
        0 => room,
        configured => configured.min(room),
    };
    cap.max(1)
}

/// Why a WebSocket upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this user has {0} WebSockets open on this node, the most allowed; close one first")]
    UserFull(u32),
    #[error("this address has {0} WebSockets open on this node, the most allowed")]
    AddressFull(u32),
    #[error("this node holds all the WebSockets it may; retry later or on another node")]
    NodeFull,
}

impl ApiFailure for Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::UserFull(_) | Refusal::AddressFull(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::NodeFull => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> ErrorCode {
        match self {
            Refusal::UserFull(_) | Refusal::AddressFull(_) => ErrorCode::TooManyConnections,
            Refusal::NodeFull => ErrorCode::NodeFull,
        }
    }
}

/// The node's open connections, counted.
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    connections: u32,
    connections_per_ip: HashMap<IpAddr, u32>,
    websockets: u32,
    websockets_per_user: HashMap<UserId, u32>,
    websockets_per_ip: HashMap<IpAddr, u32>,
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            open: Mutex::new(Open::default()),
        })
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Counts a new TCP connection from `peer`, or refuses it (`None`: close it at once) when the
    /// node or, unless `peer` is a trusted proxy, the address is full.
    pub fn admit_connection(
        self: &Arc<Self>,
        peer: IpAddr,
        trusted: bool,
    ) -> Option<ConnectionSlot> {
        let peer = peer.to_canonical();
        let mut open = self.lock();
        if open.connections >= self.limits.connections {
            return None;
        }
        let counted = !trusted && self.limits.connections_per_ip > 0;
        if counted
            && !take(
                &mut open.connections_per_ip,
                peer,
                self.limits.connections_per_ip,
            )
        {
            return None;
        }
        open.connections += 1;
        Some(ConnectionSlot {
            admission: self.clone(),
            peer: counted.then_some(peer),
        })
    }

    /// Counts a new WebSocket of `user` from `client`, or says why not.
    pub fn admit_websocket(
        self: &Arc<Self>,
        user: UserId,
        client: Option<IpAddr>,
    ) -> Result<WebSocketPermit, Refusal> {
        let client = client.map(|ip| ip.to_canonical());
        let limits = self.limits;
        let mut open = self.lock();
        if open.websockets >= limits.websockets {
            return Err(Refusal::NodeFull);
        }
        let per_user = limits.websockets_per_user > 0;
        if per_user
            && !take(
                &mut open.websockets_per_user,
                user,
                limits.websockets_per_user,
            )
        {
            return Err(Refusal::UserFull(limits.websockets_per_user));
        }
        let client = client.filter(|_| limits.websockets_per_ip > 0);
        if let Some(ip) = client {
            if !take(&mut open.websockets_per_ip, ip, limits.websockets_per_ip) {
                if per_user {
                    give_back(&mut open.websockets_per_user, user);
                }
                return Err(Refusal::AddressFull(limits.websockets_per_ip));
            }
        }
        open.websockets += 1;
        Ok(WebSocketPermit {
            admission: self.clone(),
            user: per_user.then_some(user),
            client,
        })
    }

    /// Open TCP connections and WebSockets.
    pub fn open(&self) -> (u32, u32) {
        let open = self.lock();
        (open.connections, open.websockets)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // The counts are updated in single statements; a panic elsewhere cannot leave them torn.
        crate::locks::lock(&self.open)
    }
}

/// Adds one to `key`'s count unless it is at `limit`.
fn take<K: Hash + Eq>(counts: &mut HashMap<K, u32>, key: K, limit: u32) -> bool {
    let count = counts.entry(key).or_insert(0);
    if *count >= limit {
        return false;
    }
    *count += 1;
    true
}

/// Takes one from `key`'s count, forgetting the key at zero so the map holds only open ones.
fn give_back<K: Hash + Eq>(counts: &mut HashMap<K, u32>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut entry) = counts.entry(key) {
        *entry.get_mut() -= 1;
        if *entry.get() == 0 {
            entry.remove();
        }
    }
}

/// One counted TCP connection; dropping it (with the connection) gives its place back.
#[derive(Debug)]
pub struct ConnectionSlot {
    admission: Arc<Admission>,
    peer: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.admission.lock();
        open.connections = open.connections.saturating_sub(1);
        if let Some(peer) = self.peer {
            give_back(&mut open.connections_per_ip, peer);
        }
    }
}

/// One counted WebSocket; held until its session ends.
#[derive(Debug)]
pub struct WebSocketPermit {
    admission: Arc<Admission>,
    user: Option<UserId>,
    client: Option<IpAddr>,
}

impl Drop for WebSocketPermit {
    fn drop(&mut self) {
        let mut open = self.admission.lock();
        open.websockets = open.websockets.saturating_sub(1);
        if let Some(user) = self.user {
            give_back(&mut open.websockets_per_user, user);
        }
        if let Some(client) = self.client {
            give_back(&mut open.websockets_per_ip, client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: u32, per_ip: u32, websockets: u32, per_user: u32) -> ConnectionLimits {
        ConnectionLimits {
            connections,
            connections_per_ip: per_ip,
            websockets,
            websockets_per_user: per_user,
            websockets_per_ip: per_ip,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn the_cap_keeps_the_reserve_free() {
        assert_eq!(connection_cap(0, 20_000, 1_000), 19_000);
        assert_eq!(connection_cap(0, 1_048_576, 1_000), 1_047_576);
        // A configured cap holds, but never eats into the reserve.
        assert_eq!(connection_cap(500, 20_000, 1_000), 500);
        assert_eq!(connection_cap(50_000, 20_000, 1_000), 19_000);
        assert_eq!(connection_cap(0, 1_100, 1_000), 100);
        // A limit no larger than the reserve: half of it for clients.
        assert_eq!(connection_cap(0, 1_000, 1_000), 500);
        assert_eq!(connection_cap(0, u64::MAX, 1_000), u32::MAX);
        assert_eq!(connection_cap(0, 0, 1_000), 1);
    }

    #[test]
    fn websockets_leave_a_tenth_of_the_connections_by_default() -> Result<(), clap::Error> {
        use clap::Parser;
        let config = Config::try_parse_from(["chat-server"])?;
        let limits = ConnectionLimits::new(&config, 20_000);
        assert_eq!(limits.connections, 19_000);
        assert_eq!(limits.websockets, 17_100);
        assert_eq!(limits.websockets_per_user, 20);
        assert_eq!(limits.websockets_per_ip, 200);
        let config = Config::try_parse_from(["chat-server", "--max-websockets", "100"])?;
        assert_eq!(ConnectionLimits::new(&config, 20_000).websockets, 100);
        Ok(())
    }

    #[test]
    fn connections_are_counted_per_address_until_dropped() {
        let admission = Admission::new(limits(3, 2, 3, 0));
        let a1 = admission.admit_connection(ip(1), false);
        let a2 = admission.admit_connection(ip(1), false);
        assert!(a1.is_some() && a2.is_some());
        assert!(
            admission.admit_connection(ip(1), false).is_none(),
            "address full"
        );
        // A trusted proxy is not held to the per-address limit, only to the node's.
        let proxy = admission.admit_connection(ip(9), true);
        assert!(proxy.is_some());
        assert!(
            admission.admit_connection(ip(2), false).is_none(),
            "node full"
        );
        drop(a1);
        assert!(admission.admit_connection(ip(1), false).is_some());
        drop(proxy);
        drop(a2);
        assert_eq!(admission.open().0, 0);
        assert!(admission.lock().connections_per_ip.is_empty());
    }

    #[test]
    fn websockets_are_counted_per_user_address_and_node() {
        let admission = Admission::new(limits(100, 3, 4, 2));
        let (ada, bob, cy) = (UserId(1), UserId(2), UserId(3));
        let first = admission.admit_websocket(ada, Some(ip(1)));
        let second = admission.admit_websocket(ada, Some(ip(2)));
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(
            admission.admit_websocket(ada, Some(ip(3))).err(),
            Some(Refusal::UserFull(2))
        );
        let bob1 = admission.admit_websocket(bob, Some(ip(1)));
        let bob2 = admission.admit_websocket(bob, Some(ip(1)));
        assert!(bob1.is_ok() && bob2.is_ok());
        // The node holds 4 now.
        assert_eq!(
            admission.admit_websocket(cy, Some(ip(4))).err(),
            Some(Refusal::NodeFull)
        );
        drop(second);
        // ip(1) holds 3: cy is refused there, and the refusal counts nothing for cy.
        assert_eq!(
            admission.admit_websocket(cy, Some(ip(1))).err(),
            Some(Refusal::AddressFull(3))
        );
        assert!(!admission.lock().websockets_per_user.contains_key(&cy));
        let cy1 = admission.admit_websocket(cy, Some(ip(4)));
        assert!(cy1.is_ok());
        drop((first, bob1, bob2, cy1));
        let open = admission.lock();
        assert_eq!(open.websockets, 0);
        assert!(open.websockets_per_user.is_empty() && open.websockets_per_ip.is_empty());
    }

    #[test]
    fn refusals_answer_429_or_503() {
        assert_eq!(
            Refusal::UserFull(20).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            Refusal::AddressFull(200).code(),
            ErrorCode::TooManyConnections
        );
        assert_eq!(Refusal::NodeFull.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Refusal::NodeFull.code(), ErrorCode::NodeFull);
    }
}
