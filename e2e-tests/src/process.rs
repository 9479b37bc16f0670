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
    pub node_id: String,
    child: Child,
}

impl ProcessNode {
    /// Starts a node with `config` (its `listen` is replaced by a free port) and waits until ready.
    pub async fn start(config: &Config) -> anyhow::Result<ProcessNode> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(server_binary()?)
            .env("CHAT_LISTEN", addr.to_string())
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
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start chat-server")?;
        let node = ProcessNode {
            addr,
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
