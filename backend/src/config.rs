//! Layered configuration: built-in defaults that point at the local services, then
//! environment variables, then command-line flags (clap applies them in that order).

use clap::{Parser, ValueEnum};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

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

    /// This node's id: names its RabbitMQ queue and appears in logs. Unique per running node.
    #[arg(long, env = "CHAT_NODE_ID", default_value = "node-1")]
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

    /// RabbitMQ connection URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: Secret,

    /// Prefix of every exchange and queue name; nodes of one deployment share it.
    #[arg(long, env = "CHAT_AMQP_PREFIX", default_value = "chat")]
    pub amqp_prefix: String,

    /// Number of ingest shards. Every node of a deployment must use the same number.
    #[arg(long, env = "CHAT_INGEST_SHARDS", default_value_t = 8)]
    pub ingest_shards: u16,

    /// Most messages the persister stores in one transaction.
    #[arg(long, env = "CHAT_PERSIST_BATCH", default_value_t = 500)]
    pub persist_batch: usize,

    /// Memcached servers, comma separated.
    #[arg(long, env = "MEMCACHED_SERVERS", default_value = "127.0.0.1:11211")]
    pub memcached_servers: String,

    /// Directory with the built web client (index.html and the WebAssembly bundle).
    #[arg(long, env = "CHAT_WEB_DIR", default_value = "web-client/dist")]
    pub web_dir: PathBuf,

    /// Log format.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
}

impl Config {
    /// The defaults, with environment variables applied, as if no flag had been given.
    pub fn from_env() -> Result<Config, clap::Error> {
        Config::try_parse_from(["chat-server"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(config.ingest_shards, 8);
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret("postgres://user:hunter2@db/chat".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
