//! Per-test slices of the real services: a fresh PostgreSQL database, a unique RabbitMQ prefix.

use anyhow::Context;
use chat_backend::config::{Config, LogFormat, RoomFrameLimits, Secret};
use diesel::{Connection, PgConnection, RunQueryDsl};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use std::path::PathBuf;

/// Ingest shards used by test nodes: few, so tests declare little, but more than one.
pub const TEST_SHARDS: u16 = 4;

/// The PostgreSQL server tests create their databases on (`TEST_POSTGRES_URL`).
pub fn postgres_server_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The RabbitMQ broker tests use (`TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The memcached tests use (`TEST_MEMCACHED`).
pub fn memcached_servers() -> String {
    std::env::var("TEST_MEMCACHED").unwrap_or_else(|_| "127.0.0.1:11211".into())
}

/// The built web client: `CHAT_WEB_DIR`, or `web-client/dist` at the workspace root.
pub fn web_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CHAT_WEB_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .context("the test crate has no parent directory")?;
    Ok(root.join("web-client").join("dist"))
}

/// A node configuration for tests: ephemeral port, the test's database and prefix.
pub fn node_config(database_url: &str, prefix: &str, node_id: &str) -> Config {
    Config {
        listen: ([127, 0, 0, 1], 0).into(),
        node_id: node_id.to_owned(),
        database_url: Secret(database_url.to_owned()),
        db_pool_size: 8,
        db_persist_pool_size: 2,
        amqp_url: Secret(amqp_url()),
        amqp_prefix: prefix.to_owned(),
        ingest_shards: TEST_SHARDS,
        ingest_interval_ms: 2,
        ingest_busy_interval_ms: 5,
        queue_type: chat_backend::config::QueueType::Classic,
        delivery_limit: 20,
        dead_letter_max_length: 100_000,
        bus_format: chat_backend::config::BusFormat::Binary,
        persist_batch: 500,
        shard_balance_ms: 2_000,
        memcached_servers: memcached_servers(),
        // Keys of their own per test, so tests share one memcached without seeing each other.
        cache_prefix: prefix.to_owned(),
        cache_ttl_secs: 300,
        membership_recheck_ms: 5_000,
        // Generous, as for sends; the tests of these limits set their own.
        room_frames: RoomFrameLimits {
            change_rate_per_user: 100_000,
            change_burst_per_user: 100_000,
            typing_rate_per_user: 100_000,
            typing_burst_per_user: 100_000,
            presence_rate_per_user: 100_000,
            presence_burst_per_user: 100_000,
            read_marker_rate_per_user: 100_000,
            read_marker_burst_per_user: 100_000,
            join_rate_per_user: 100_000,
            join_burst_per_user: 100_000,
            join_rate_per_ip: 100_000,
            join_burst_per_ip: 100_000,
            max_rooms_per_connection: 500,
            watched_rooms_per_user: 500,
        },
        // Quick, so presence tests see a dead node's users go offline in seconds.
        presence_interval_ms: 500,
        presence_ttl_ms: 2_500,
        allowed_origins: Vec::new(),
        session_ttl_hours: 24,
        session_recheck_ms: 10_000,
        ws_outbox_bytes: 128 * 1024,
        ws_ping_interval_ms: 30_000,
        ws_silence_timeout_ms: 60_000,
        cookie_secure: false,
        // Tests that are not about rate limits must never hit one; those that are set their own.
        send_rate_per_user: 100_000,
        send_burst_per_user: 100_000,
        send_rate_per_ip: 100_000,
        send_burst_per_ip: 100_000,
        login_attempts_per_ip: 100_000,
        login_attempts_per_user: 100_000,
        login_attempts_per_user_ip: 100_000,
        registrations_per_ip: 100_000,
        rest_writes_per_minute_per_user: 100_000,
        rest_write_burst_per_user: 100_000,
        rooms_per_user_per_hour: 100_000,
        trusted_proxies: Default::default(),
        // A node started by `TestNode` gets its own operator's listener on a free port.
        metrics_listen: chat_backend::config::OptionalListen(None),
        // Tests that are not about connection limits must never hit one; those that are set
        // their own.
        max_connections: 0,
        fd_reserve: 1_000,
        connections_per_ip: 0,
        max_websockets: 0,
        websockets_per_user: 0,
        websockets_per_ip: 0,
        http_header_timeout_ms: 10_000,
        http_idle_timeout_ms: 60_000,
        web_dir: web_dir().unwrap_or_else(|_| PathBuf::from("web-client/dist")),
        log_format: LogFormat::Human,
    }
}

fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A database of its own for one test, dropped (with its connections) when this is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// This database's URL through a TCP proxy (or anything else) listening at `addr`.
    pub fn url_through(&self, addr: std::net::SocketAddr) -> String {
        format!("postgres://postgres@{addr}/{}", self.name)
    }

    pub async fn create() -> anyhow::Result<TestDb> {
        let name = format!("chat_test_{}", unique_suffix());
        let server = postgres_server_url();
        let statement = format!("CREATE DATABASE {name}");
        let admin_url = format!("{server}/postgres");
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut conn = PgConnection::establish(&admin_url)
                .with_context(|| format!("cannot reach PostgreSQL at {admin_url}"))?;
            diesel::sql_query(statement).execute(&mut conn)?;
            Ok(())
        })
        .await??;
        Ok(TestDb {
            url: format!("{server}/{name}"),
            name,
        })
    }

    /// Runs blocking diesel work against this test's database.
    pub async fn with_conn<T, F>(&self, work: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConnection) -> anyhow::Result<T> + Send + 'static,
    {
        let url = self.url.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = PgConnection::establish(&url)?;
            work(&mut conn)
        })
        .await?
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = format!("{}/postgres", postgres_server_url());
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Its own thread: Drop may run on an async worker, and diesel blocks.
        let _ = std::thread::spawn(move || {
            if let Ok(mut conn) = PgConnection::establish(&admin_url) {
                let _ = diesel::sql_query(statement).execute(&mut conn);
            }
        })
        .join();
    }
}

/// A RabbitMQ name prefix of its own for one test; its durable queues and exchanges are
/// deleted when this is dropped (node queues are exclusive and go with their connections).
pub struct TestBus {
    pub prefix: String,
}

impl TestBus {
    pub fn new() -> TestBus {
        TestBus {
            prefix: format!("t{}", unique_suffix()),
        }
    }
}

impl Default for TestBus {
    fn default() -> Self {
        TestBus::new()
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(conn) =
                    lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
                        .await
                else {
                    return;
                };
                let Ok(channel) = conn.create_channel().await else {
                    return;
                };
                let mut queues: Vec<String> = (0..TEST_SHARDS)
                    .map(|shard| format!("{prefix}.ingest.{shard}"))
                    .collect();
                queues.push(format!("{prefix}.dead"));
                for queue in queues {
                    let _ = channel
                        .queue_delete(queue.into(), QueueDeleteOptions::default())
                        .await;
                }
                for exchange in ["ingest", "delivery", "dead"] {
                    let _ = channel
                        .exchange_delete(
                            format!("{prefix}.{exchange}").into(),
                            ExchangeDeleteOptions::default(),
                        )
                        .await;
                }
                let _ = conn.close(200, "test done".into()).await;
            });
        })
        .join();
    }
}
