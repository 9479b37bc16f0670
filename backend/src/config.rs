//! Layered configuration: built-in defaults that point at the local services, then
//! environment variables, then command-line flags (clap applies them in that order).

use crate::forwarded::TrustedProxies;
use clap::{Args, Parser, ValueEnum};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The kind of RabbitMQ queue the durable queues are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueType {
    Classic,
    Quorum,
}

/// How nodes encode their batches on the bus (ingest batches, stored batches' deliveries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BusFormat {
    /// The binary layouts (docs/PROTOCOL.md): a stored message's frame serialized once.
    Binary,
    /// JSON, which nodes of every earlier version read.
    Json,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// A value that must not appear in logs (a URL with a password, say).
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The chat node's configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-server",
    version,
    about = "A chat node: WebSocket front, RabbitMQ pipeline, PostgreSQL store"
)]
pub struct Config {
    /// Address to listen on for HTTP and WebSocket connections.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// This node's id: names its RabbitMQ queue and appears in logs. Unique per running node;
    /// by default the host name and a random suffix, so two nodes never share one by accident.
    #[arg(long, env = "CHAT_NODE_ID", default_value_t = default_node_id(), hide_default_value = true)]
    pub node_id: String,

    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chat"
    )]
    pub database_url: Secret,

    /// Largest number of PostgreSQL connections this node holds.
    #[arg(long, env = "CHAT_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// How many of those connections are the persisters' own (at most half of them): a
    /// persister stores one batch per lane at a time, two lanes per shard it holds.
    #[arg(long, env = "CHAT_DB_PERSIST_POOL_SIZE", default_value_t = 4)]
    pub db_persist_pool_size: u32,

    /// RabbitMQ connection URL, or several, comma separated: the brokers of one cluster. The
    /// node connects to the first; when its connection fails it tries the next one (round
    /// robin). A comma inside a URL's password must be written `%2C`.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: Secret,

    /// Prefix of every exchange and queue name; nodes of one deployment share it.
    #[arg(long, env = "CHAT_AMQP_PREFIX", default_value = "chat")]
    pub amqp_prefix: String,

    /// Number of ingest shards. Every node of a deployment must use the same number. Each shard
    /// has one persister at a time, which stores over 20,000 messages a second in batches;
    /// fewer shards make bigger batches (less work per message for RabbitMQ and PostgreSQL).
    #[arg(long, env = "CHAT_INGEST_SHARDS", default_value_t = 2)]
    pub ingest_shards: u16,

    /// Type of the durable queues (ingest shards, dead letters): `classic`, or `quorum` on a
    /// replicated RabbitMQ cluster. Every node of a deployment must use the same type, and a
    /// queue's type cannot change once it exists.
    #[arg(long, env = "CHAT_QUEUE_TYPE", value_enum, default_value = "classic")]
    pub queue_type: QueueType,

    /// Quorum queues only: how many times an ingest queue delivers one message (returned by a
    /// persister that died or gave it back) before dead-lettering it. 0 declares no limit.
    #[arg(long, env = "CHAT_DELIVERY_LIMIT", default_value_t = crate::bus::topology::DEFAULT_DELIVERY_LIMIT)]
    pub delivery_limit: u32,

    /// Most messages the dead-letter queue keeps; beyond it RabbitMQ drops the oldest.
    #[arg(long, env = "CHAT_DEAD_LETTER_MAX_LENGTH", default_value_t = crate::bus::topology::DEFAULT_DEAD_LETTER_MAX_LENGTH)]
    pub dead_letter_max_length: u32,

    /// How a node publishes its batches (ingest batches; as a persister, stored batches'
    /// deliveries): `binary` (no JSON to write or parse; a stored message's frame serialized once,
    /// for every node to pass on as it is) or `json`. Every node reads both; `json` is for
    /// upgrading a deployment whose nodes predate the binary layouts: upgrade them all with
    /// `json`, then switch.
    #[arg(long, env = "CHAT_BUS_FORMAT", value_enum, default_value = "binary")]
    pub bus_format: BusFormat,

    /// How often a node checks that it is not the active persister of more than its share of
    /// the ingest shards (their count over the number of nodes, rounded up), handing one over
    /// when it is, in milliseconds. 0 turns it off: then the first node to subscribe persists
    /// every shard until it stops.
    #[arg(long, env = "CHAT_SHARD_BALANCE_MS", default_value_t = 2_000)]
    pub shard_balance_ms: u64,

    /// Least time between two ingest publishes of a node, in milliseconds. A send that finds
    /// the node's last publish longer ago than this is published at once; under load the sends
    /// of one interval share one persistent message (far less work for RabbitMQ and the
    /// persister, docs/bench-history.md) and wait at most this long. 0: publish whatever
    /// waits as soon as the previous publish is written.
    #[arg(long, env = "CHAT_INGEST_INTERVAL_MS", default_value_t = 2)]
    pub ingest_interval_ms: u64,

    /// Least time after an ingest publish that carried 16 sends or more, in milliseconds: a
    /// busy node (from about 5,000 sends a second) spaces its publishes further, which takes a
    /// fifth off RabbitMQ's work from 8,000 msgs/s on (docs/bench-history.md). Below
    /// `CHAT_INGEST_INTERVAL_MS` counts as equal to it, which turns the busy spacing off. A
    /// send's wait for its publish counts against the 5 s its confirm has.
    #[arg(long, env = "CHAT_INGEST_BUSY_INTERVAL_MS", default_value_t = 5)]
    pub ingest_busy_interval_ms: u64,

    /// Most messages the persister stores in one transaction.
    #[arg(long, env = "CHAT_PERSIST_BATCH", default_value_t = 500)]
    pub persist_batch: usize,

    /// Memcached servers, comma separated.
    #[arg(long, env = "MEMCACHED_SERVERS", default_value = "127.0.0.1:11211")]
    pub memcached_servers: String,

    /// Prefix of every Memcached key; nodes of one deployment share it.
    #[arg(long, env = "CHAT_CACHE_PREFIX", default_value = "chat")]
    pub cache_prefix: String,

    /// How long a cached profile, room or membership lives, in seconds. Updates invalidate
    /// entries at once; this bounds how long a missed invalidation can be seen.
    #[arg(long, env = "CHAT_CACHE_TTL_SECS", default_value_t = 300)]
    pub cache_ttl_secs: u32,

    /// How long a connection trusts a confirmed room membership for its sends, in
    /// milliseconds. Leaving a room ends its sends at once on every node; this bounds how long
    /// they could go on if that notice were lost. Active users' confirmations are renewed in
    /// the background from half this age, so their sends do not wait for the check.
    #[arg(long, env = "CHAT_MEMBERSHIP_RECHECK_MS", default_value_t = 5_000)]
    pub membership_recheck_ms: u64,

    /// Limits on the room-scoped WebSocket frames and on watched rooms.
    #[command(flatten)]
    pub room_frames: RoomFrameLimits,

    /// How often this node tells the others who is connected to it, in milliseconds.
    #[arg(long, env = "CHAT_PRESENCE_INTERVAL_MS", default_value_t = 10_000)]
    pub presence_interval_ms: u64,

    /// How long another node's presence report holds without renewal, in milliseconds: the users
    /// of a node that died go offline elsewhere within this time.
    #[arg(long, env = "CHAT_PRESENCE_TTL_MS", default_value_t = 25_000)]
    pub presence_ttl_ms: u64,

    /// Origins (scheme://host[:port]) allowed besides the node's own, comma separated. Browser
    /// requests and WebSocket upgrades from any other `Origin` are refused.
    #[arg(long, env = "CHAT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// How often a node checks the sessions of its open WebSockets against PostgreSQL, in
    /// milliseconds (one query for all of them), closing those whose session ended or expired.
    /// Logout and password changes close them on every node at once; this bounds how long a
    /// socket outlives its session if that notice is lost, or the session expires.
    #[arg(long, env = "CHAT_SESSION_RECHECK_MS", default_value_t = 10_000)]
    pub session_recheck_ms: u64,

    /// Most bytes waiting to be written to one WebSocket (deliveries and replies alike); a
    /// client that lets more pile up is disconnected (close 1008). Bounds what a client that
    /// does not read costs the node. At least 64 KiB.
    #[arg(long, env = "CHAT_WS_OUTBOX_BYTES", default_value_t = 128 * 1024)]
    pub ws_outbox_bytes: usize,

    /// A WebSocket silent this long (no frame, no pong) is pinged, in milliseconds. Browsers
    /// answer pings by themselves; the traffic also keeps proxies from cutting quiet users.
    #[arg(long, env = "CHAT_WS_PING_INTERVAL_MS", default_value_t = 30_000)]
    pub ws_ping_interval_ms: u64,

    /// A WebSocket silent this long is dropped as dead (close 4002), in milliseconds; noticed
    /// within one ping interval after. At twice the ping interval or more, a peer always has a
    /// full interval to answer the ping. At least the ping interval.
    #[arg(long, env = "CHAT_WS_SILENCE_TIMEOUT_MS", default_value_t = 60_000)]
    pub ws_silence_timeout_ms: u64,

    /// How long a session lasts after login, in hours.
    #[arg(long, env = "CHAT_SESSION_TTL_HOURS", default_value_t = 720)]
    pub session_ttl_hours: u32,

    /// Mark the session cookie `Secure` (only sent over HTTPS). On behind a TLS load balancer.
    #[arg(long, env = "CHAT_COOKIE_SECURE", default_value_t = false, action = clap::ArgAction::Set)]
    pub cookie_secure: bool,

    /// Messages a user may send per second, sustained …
    #[arg(long, env = "CHAT_SEND_RATE_PER_USER", default_value_t = 20)]
    pub send_rate_per_user: u32,

    /// … and in a burst.
    #[arg(long, env = "CHAT_SEND_BURST_PER_USER", default_value_t = 100)]
    pub send_burst_per_user: u32,

    /// Messages one IP address may send per second, sustained …
    #[arg(long, env = "CHAT_SEND_RATE_PER_IP", default_value_t = 200)]
    pub send_rate_per_ip: u32,

    /// … and in a burst.
    #[arg(long, env = "CHAT_SEND_BURST_PER_IP", default_value_t = 1000)]
    pub send_burst_per_ip: u32,

    /// Login and registration attempts per minute from one IP address, over every node (counted
    /// in Memcached; per node while it is unreachable).
    #[arg(long, env = "CHAT_LOGIN_ATTEMPTS_PER_IP", default_value_t = 30)]
    pub login_attempts_per_ip: u32,

    /// Login attempts per minute for one user name from every address together, over every
    /// node. Well above the per-address limits, so no one address can lock a user out.
    #[arg(long, env = "CHAT_LOGIN_ATTEMPTS_PER_USER", default_value_t = 100)]
    pub login_attempts_per_user: u32,

    /// Login attempts per minute for one user name from one IP address, over every node.
    #[arg(long, env = "CHAT_LOGIN_ATTEMPTS_PER_USER_IP", default_value_t = 10)]
    pub login_attempts_per_user_ip: u32,

    /// Accounts one IP address may register per hour, over every node.
    #[arg(long, env = "CHAT_REGISTRATIONS_PER_IP", default_value_t = 10)]
    pub registrations_per_ip: u32,

    /// REST writes (rooms, joins, leaves, invites, direct conversations, profile and password
    /// changes) a user may make per minute, sustained …
    #[arg(
        long,
        env = "CHAT_REST_WRITES_PER_MINUTE_PER_USER",
        default_value_t = 120
    )]
    pub rest_writes_per_minute_per_user: u32,

    /// … and in a burst.
    #[arg(long, env = "CHAT_REST_WRITE_BURST_PER_USER", default_value_t = 30)]
    pub rest_write_burst_per_user: u32,

    /// Rooms a user may create per hour (also the burst).
    #[arg(long, env = "CHAT_ROOMS_PER_USER_PER_HOUR", default_value_t = 30)]
    pub rooms_per_user_per_hour: u32,

    /// Proxies (IP addresses or CIDR ranges, comma separated) whose `X-Forwarded-For` names the
    /// client; the per-IP limits then count the client, not the proxy. Empty: nobody is.
    #[arg(long, env = "CHAT_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,

    /// Address of the operator's listener (`/metrics`, `/healthz`, `/readyz`), or `off`. Keep
    /// it off the public network: the main listener answers 404 for `/metrics`.
    #[arg(long, env = "CHAT_METRICS_LISTEN", default_value = "127.0.0.1:9091")]
    pub metrics_listen: OptionalListen,

    /// TCP connections the node holds at once; past it new ones are closed at once. 0: the
    /// open-file limit less `CHAT_FD_RESERVE` (the node raises its soft limit to the hard one).
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: u32,

    /// Descriptors kept back from client connections for PostgreSQL, RabbitMQ, Memcached, the
    /// operator's listener and files.
    #[arg(long, env = "CHAT_FD_RESERVE", default_value_t = 1_000)]
    pub fd_reserve: u32,

    /// TCP connections one peer address holds at once (trusted proxies excepted); past it new
    /// ones are closed at once. 0: no limit.
    #[arg(long, env = "CHAT_CONNECTIONS_PER_IP", default_value_t = 250)]
    pub connections_per_ip: u32,

    /// WebSockets open on the node at once; past it upgrades get 503 `node_full`. 0: nine
    /// tenths of the connection limit, so HTTP requests always find room.
    #[arg(long, env = "CHAT_MAX_WEBSOCKETS", default_value_t = 0)]
    pub max_websockets: u32,

    /// WebSockets one user holds on this node; past it upgrades get 429
    /// `too_many_connections`. 0: no limit.
    #[arg(long, env = "CHAT_WEBSOCKETS_PER_USER", default_value_t = 20)]
    pub websockets_per_user: u32,

    /// WebSockets one client address (behind trusted proxies, the forwarded one) holds on this
    /// node; past it upgrades get 429 `too_many_connections`. 0: no limit.
    #[arg(long, env = "CHAT_WEBSOCKETS_PER_IP", default_value_t = 200)]
    pub websockets_per_ip: u32,

    /// Time a new connection has to send its first byte, and a request has to send all its
    /// headers once it started, in milliseconds; then the connection is closed.
    #[arg(long, env = "CHAT_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,

    /// Time an HTTP connection may stay silent between requests (keep-alive), in milliseconds;
    /// then it is closed. WebSockets are not HTTP connections once upgraded.
    #[arg(long, env = "CHAT_HTTP_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub http_idle_timeout_ms: u64,

    /// Directory with the built web client (index.html and the WebAssembly bundle).
    #[arg(long, env = "CHAT_WEB_DIR", default_value = "web-client/dist")]
    pub web_dir: PathBuf,

    /// Log format.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
}

/// Limits on what one client can make a node do over WebSocket, besides sending (each a rate
/// per second, sustained, and a burst; per user unless said otherwise, answered `rate_limited`).
#[derive(Debug, Clone, Args)]
pub struct RoomFrameLimits {
    /// Edits and deletes a user may make per second …
    #[arg(long, env = "CHAT_CHANGE_RATE_PER_USER", default_value_t = 2)]
    pub change_rate_per_user: u32,

    /// … and in a burst.
    #[arg(long, env = "CHAT_CHANGE_BURST_PER_USER", default_value_t = 20)]
    pub change_burst_per_user: u32,

    /// Typing indicators a user may have forwarded per second (after the 2 s per room and
    /// connection throttle, so keystrokes in one room never reach it) …
    #[arg(long, env = "CHAT_TYPING_RATE_PER_USER", default_value_t = 2)]
    pub typing_rate_per_user: u32,

    /// … and in a burst.
    #[arg(long, env = "CHAT_TYPING_BURST_PER_USER", default_value_t = 10)]
    pub typing_burst_per_user: u32,

    /// Presence changes (`presence` frames) a user may make per second …
    #[arg(long, env = "CHAT_PRESENCE_RATE_PER_USER", default_value_t = 1)]
    pub presence_rate_per_user: u32,

    /// … and in a burst.
    #[arg(long, env = "CHAT_PRESENCE_BURST_PER_USER", default_value_t = 10)]
    pub presence_burst_per_user: u32,

    /// Read markers (`mark_read`) a user may move per second …
    #[arg(long, env = "CHAT_READ_MARKER_RATE_PER_USER", default_value_t = 10)]
    pub read_marker_rate_per_user: u32,

    /// … and in a burst.
    #[arg(long, env = "CHAT_READ_MARKER_BURST_PER_USER", default_value_t = 50)]
    pub read_marker_burst_per_user: u32,

    /// Joins (`join` frames; each may bind a RabbitMQ key) a user may make per second …
    #[arg(long, env = "CHAT_JOIN_RATE_PER_USER", default_value_t = 10)]
    pub join_rate_per_user: u32,

    /// … and in a burst (a client opening with many rooms, or resuming them all).
    #[arg(long, env = "CHAT_JOIN_BURST_PER_USER", default_value_t = 100)]
    pub join_burst_per_user: u32,

    /// Joins one IP address may make per second …
    #[arg(long, env = "CHAT_JOIN_RATE_PER_IP", default_value_t = 50)]
    pub join_rate_per_ip: u32,

    /// … and in a burst.
    #[arg(long, env = "CHAT_JOIN_BURST_PER_IP", default_value_t = 500)]
    pub join_burst_per_ip: u32,

    /// Most rooms one connection may have joined at once (`too_many_rooms` beyond).
    #[arg(long, env = "CHAT_MAX_ROOMS_PER_CONNECTION", default_value_t = 500)]
    pub max_rooms_per_connection: usize,

    /// Most rooms of a user watched for `room_activity`, the most recently joined.
    #[arg(long, env = "CHAT_WATCHED_ROOMS_PER_USER", default_value_t = 500)]
    pub watched_rooms_per_user: usize,
}

/// A listen address that may be turned off (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalListen(pub Option<SocketAddr>);

impl std::str::FromStr for OptionalListen {
    type Err = String;

    fn from_str(text: &str) -> Result<OptionalListen, String> {
        match text.trim() {
            "" | "off" => Ok(OptionalListen(None)),
            text => text
                .parse()
                .map(|addr| OptionalListen(Some(addr)))
                .map_err(|_| format!("{text:?} is not an address (host:port) or off")),
        }
    }
}

/// `<host name>-<6 random hex digits>`, keeping only characters safe in a queue name.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    let host = if host.is_empty() {
        "node".to_owned()
    } else {
        host
    };
    format!("{host}-{:06x}", rand::random::<u32>() & 0x00ff_ffff)
}

impl Config {
    /// The defaults, with environment variables applied, as if no flag had been given.
    pub fn from_env() -> Result<Config, clap::Error> {
        Config::try_parse_from(["chat-server"])
    }

    /// Most bytes waiting for one WebSocket.
    pub fn ws_outbox_budget(&self) -> usize {
        self.ws_outbox_bytes.max(64 * 1024)
    }

    /// After how much silence a WebSocket is pinged, and after how much it is dropped.
    pub fn ws_liveness(&self) -> (Duration, Duration) {
        let ping_after = Duration::from_millis(self.ws_ping_interval_ms.max(10));
        let timeout = Duration::from_millis(self.ws_silence_timeout_ms).max(ping_after);
        (ping_after, timeout)
    }

    /// How often the sessions of open WebSockets are checked again.
    pub fn session_recheck(&self) -> Duration {
        Duration::from_millis(self.session_recheck_ms.max(10))
    }

    /// The RabbitMQ brokers, in the order they are tried: `AMQP_URL` split at its commas,
    /// blanks dropped.
    pub fn amqp_urls(&self) -> Vec<String> {
        (self.amqp_url.expose().split(','))
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_url_lists_brokers_in_order_and_a_single_url_stays_one() {
        let parse = |value: &str| match Config::try_parse_from(["chat-server", "--amqp-url", value])
        {
            Ok(config) => config.amqp_urls(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            parse("amqp://u:p@one:5672/%2f"),
            vec!["amqp://u:p@one:5672/%2f"]
        );
        assert_eq!(
            parse("amqp://u:p@one:5672/%2f, amqp://u:p@two:5672/%2f,,amqp://u:p@three/%2f"),
            vec![
                "amqp://u:p@one:5672/%2f",
                "amqp://u:p@two:5672/%2f",
                "amqp://u:p@three/%2f"
            ]
        );
    }

    #[test]
    fn flags_override_defaults() {
        let config = Config::try_parse_from([
            "chat-server",
            "--node-id",
            "n7",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]);
        let config = match config {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(config.node_id, "n7");
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.ingest_shards, 2);
        assert!(config.allowed_origins.is_empty());
        assert!(config.trusted_proxies.0.is_empty());
        assert!(!config.cookie_secure);
        assert_eq!(
            config.metrics_listen,
            OptionalListen(Some(([127, 0, 0, 1], 9091).into()))
        );
    }

    #[test]
    fn the_metrics_listener_can_be_turned_off() {
        let parse = |value: &str| {
            Config::try_parse_from(["chat-server", "--metrics-listen", value])
                .map(|config| config.metrics_listen)
        };
        assert_eq!(parse("off").ok(), Some(OptionalListen(None)));
        assert_eq!(
            parse("0.0.0.0:9100").ok(),
            Some(OptionalListen(Some(([0, 0, 0, 0], 9100).into())))
        );
        assert!(parse("metrics").is_err());
    }

    #[test]
    fn nodes_get_distinct_ids_by_default() {
        let (a, b) = (default_node_id(), default_node_id());
        assert_ne!(a, b);
        for id in [a, b] {
            assert!(id.len() > 7, "{id}");
            assert!(id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
        }
    }

    #[test]
    fn origins_are_a_list() {
        let config = Config::try_parse_from([
            "chat-server",
            "--allowed-origins",
            "https://chat.example,https://www.chat.example",
            "--cookie-secure",
            "true",
        ]);
        let config = match config {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(config.allowed_origins.len(), 2);
        assert!(config.cookie_secure);
    }

    #[test]
    fn trusted_proxies_are_a_list_of_ranges() {
        let config = Config::try_parse_from([
            "chat-server",
            "--trusted-proxies",
            "10.0.0.0/8,192.0.2.7, fd00::/8",
        ]);
        let config = match config {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(config.trusted_proxies.0.len(), 3);
        assert!(Config::try_parse_from(["chat-server", "--trusted-proxies", "lb"]).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret("postgres://user:hunter2@db/chat".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
