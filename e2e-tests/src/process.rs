//! Chat nodes as real processes, for tests in which a node dies (SIGKILL) mid-traffic.

use crate::{wait_ready, WsClient};
use anyhow::Context;
use chat_backend::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The `chat-server` binary: `CHAT_SERVER_BIN`, or the debug build in the target directory.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("CHAT_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let target = match std::env::var("CARGO_TARGET_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the test crate has no parent directory")?
            .join("target"),
    };
    let binary = target.join("debug").join("chat-server");
    anyhow::ensure!(
        binary.exists(),
        "{} is missing; run `cargo build -p chat-backend --bin chat-server` (cargo xtask test does)",
        binary.display()
    );
    Ok(binary)
}

/// A `chat-server` child process; killed when dropped.
pub struct ProcessNode {
    pub addr: SocketAddr,
    /// The operator's listener: `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: SocketAddr,
    pub node_id: String,
    child: Child,
}

impl ProcessNode {
    /// Starts a node with `config` (its `listen` is replaced by a free port) and waits until ready.
    pub async fn start(config: &Config) -> anyhow::Result<ProcessNode> {
        ProcessNode::start_limited(config, None).await
    }

    /// Like [`ProcessNode::start`], with the process's open-file limit (soft and hard) set to
    /// `open_files` when given.
    pub async fn start_limited(
        config: &Config,
        open_files: Option<u64>,
    ) -> anyhow::Result<ProcessNode> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let metrics_addr: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
        let mut command = match open_files {
            Some(limit) => {
                let mut shell = Command::new("sh");
                shell
                    .args(["-c", &format!("ulimit -n {limit} && exec \"$0\"")])
                    .arg(server_binary()?);
                shell
            }
            None => Command::new(server_binary()?),
        };
        let child = command
            .env("CHAT_LISTEN", addr.to_string())
            .env("CHAT_METRICS_LISTEN", metrics_addr.to_string())
            .env("CHAT_NODE_ID", &config.node_id)
            .env("DATABASE_URL", config.database_url.expose())
            .env("AMQP_URL", config.amqp_url.expose())
            .env("CHAT_AMQP_PREFIX", &config.amqp_prefix)
            .env("CHAT_INGEST_SHARDS", config.ingest_shards.to_string())
            .env(
                "CHAT_QUEUE_TYPE",
                match config.queue_type {
                    chat_backend::config::QueueType::Classic => "classic",
                    chat_backend::config::QueueType::Quorum => "quorum",
                },
            )
            .env("CHAT_DELIVERY_LIMIT", config.delivery_limit.to_string())
            .env(
                "CHAT_DEAD_LETTER_MAX_LENGTH",
                config.dead_letter_max_length.to_string(),
            )
            .env("CHAT_PERSIST_BATCH", config.persist_batch.to_string())
            .env("MEMCACHED_SERVERS", &config.memcached_servers)
            // The test's own keys: ids of different test databases must not meet in the cache.
            .env("CHAT_CACHE_PREFIX", &config.cache_prefix)
            .env(
                "CHAT_PRESENCE_INTERVAL_MS",
                config.presence_interval_ms.to_string(),
            )
            .env("CHAT_PRESENCE_TTL_MS", config.presence_ttl_ms.to_string())
            .env(
                "CHAT_MEMBERSHIP_RECHECK_MS",
                config.membership_recheck_ms.to_string(),
            )
            .env("CHAT_WEB_DIR", &config.web_dir)
            // The account and REST-write limits of the config, as for in-process nodes.
            .env(
                "CHAT_LOGIN_ATTEMPTS_PER_IP",
                config.login_attempts_per_ip.to_string(),
            )
            .env(
                "CHAT_LOGIN_ATTEMPTS_PER_USER",
                config.login_attempts_per_user.to_string(),
            )
            .env(
                "CHAT_LOGIN_ATTEMPTS_PER_USER_IP",
                config.login_attempts_per_user_ip.to_string(),
            )
            .env(
                "CHAT_REGISTRATIONS_PER_IP",
                config.registrations_per_ip.to_string(),
            )
            .env(
                "CHAT_REST_WRITES_PER_MINUTE_PER_USER",
                config.rest_writes_per_minute_per_user.to_string(),
            )
            .env(
                "CHAT_REST_WRITE_BURST_PER_USER",
                config.rest_write_burst_per_user.to_string(),
            )
            .env(
                "CHAT_ROOMS_PER_USER_PER_HOUR",
                config.rooms_per_user_per_hour.to_string(),
            )
            .env(
                "CHAT_SESSION_RECHECK_MS",
                config.session_recheck_ms.to_string(),
            )
            .env("CHAT_WS_OUTBOX_BYTES", config.ws_outbox_bytes.to_string())
            // The room-scoped frame limits of the config, as for in-process nodes.
            .envs(room_frame_env(&config.room_frames))
            .env(
                "CHAT_WS_PING_INTERVAL_MS",
                config.ws_ping_interval_ms.to_string(),
            )
            .env(
                "CHAT_WS_SILENCE_TIMEOUT_MS",
                config.ws_silence_timeout_ms.to_string(),
            )
            .env("CHAT_MAX_CONNECTIONS", config.max_connections.to_string())
            .env("CHAT_FD_RESERVE", config.fd_reserve.to_string())
            .env(
                "CHAT_CONNECTIONS_PER_IP",
                config.connections_per_ip.to_string(),
            )
            .env("CHAT_MAX_WEBSOCKETS", config.max_websockets.to_string())
            .env(
                "CHAT_WEBSOCKETS_PER_USER",
                config.websockets_per_user.to_string(),
            )
            .env(
                "CHAT_WEBSOCKETS_PER_IP",
                config.websockets_per_ip.to_string(),
            )
            .env(
                "CHAT_HTTP_HEADER_TIMEOUT_MS",
                config.http_header_timeout_ms.to_string(),
            )
            .env(
                "CHAT_HTTP_IDLE_TIMEOUT_MS",
                config.http_idle_timeout_ms.to_string(),
            )
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start chat-server")?;
        let node = ProcessNode {
            addr,
            metrics_addr,
            node_id: config.node_id.clone(),
            child,
        };
        wait_ready(addr).await?;
        Ok(node)
    }

    /// A client signed in as `name` on this node.
    pub async fn user(&self, name: &str) -> anyhow::Result<WsClient> {
        crate::user_at(self.addr, name).await
    }

    /// The process id, to read the node's memory from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL: no drain, no goodbye.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment that gives a node process these room-scoped frame limits.
fn room_frame_env(limits: &chat_backend::config::RoomFrameLimits) -> Vec<(&'static str, String)> {
    vec![
        (
            "CHAT_CHANGE_RATE_PER_USER",
            limits.change_rate_per_user.to_string(),
        ),
        (
            "CHAT_CHANGE_BURST_PER_USER",
            limits.change_burst_per_user.to_string(),
        ),
        (
            "CHAT_TYPING_RATE_PER_USER",
            limits.typing_rate_per_user.to_string(),
        ),
        (
            "CHAT_TYPING_BURST_PER_USER",
            limits.typing_burst_per_user.to_string(),
        ),
        (
            "CHAT_PRESENCE_RATE_PER_USER",
            limits.presence_rate_per_user.to_string(),
        ),
        (
            "CHAT_PRESENCE_BURST_PER_USER",
            limits.presence_burst_per_user.to_string(),
        ),
        (
            "CHAT_READ_MARKER_RATE_PER_USER",
            limits.read_marker_rate_per_user.to_string(),
        ),
        (
            "CHAT_READ_MARKER_BURST_PER_USER",
            limits.read_marker_burst_per_user.to_string(),
        ),
        (
            "CHAT_JOIN_RATE_PER_USER",
            limits.join_rate_per_user.to_string(),
        ),
        (
            "CHAT_JOIN_BURST_PER_USER",
            limits.join_burst_per_user.to_string(),
        ),
        ("CHAT_JOIN_RATE_PER_IP", limits.join_rate_per_ip.to_string()),
        (
            "CHAT_JOIN_BURST_PER_IP",
            limits.join_burst_per_ip.to_string(),
        ),
        (
            "CHAT_MAX_ROOMS_PER_CONNECTION",
            limits.max_rooms_per_connection.to_string(),
        ),
        (
            "CHAT_WATCHED_ROOMS_PER_USER",
            limits.watched_rooms_per_user.to_string(),
        ),
    ]
}
