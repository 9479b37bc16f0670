//! The test harness shared by the integration and browser tests.
//!
//! Every test gets its own PostgreSQL database (created here, migrated by the first node that
//! starts, dropped when the test ends) and its own RabbitMQ names (a unique prefix for every
//! exchange and queue, deleted when the test ends), so tests run in parallel against the one
//! local PostgreSQL and RabbitMQ and leave nothing behind.

pub mod api;
pub mod browser;
pub mod checks;
pub mod client;
pub mod postgres_pair;
pub mod process;
pub mod proxy;
pub mod services;

pub use api::Api;
pub use client::WsClient;
pub use services::{TestBus, TestDb};

use anyhow::{bail, Context};
use chat_backend::Config;
use services::node_config;
use shutdown::Shutdown;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a test waits for any single thing before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// How long a node may take to stop: more than its own drain bounds (HTTP 2 s, WebSockets 10 s,
/// persisters 10 s, then the RabbitMQ connection), which a busy machine may use up.
pub const STOP_DEADLINE: Duration = Duration::from_secs(45);

/// A database and RabbitMQ prefix for one test, and the nodes started against them.
pub struct TestEnv {
    pub db: TestDb,
    pub bus: TestBus,
}

impl TestEnv {
    pub async fn new() -> anyhow::Result<TestEnv> {
        init_logs();
        Ok(TestEnv {
            db: TestDb::create().await?,
            bus: TestBus::new(),
        })
    }

    /// The configuration a node of this test runs with.
    pub fn config(&self, node_id: &str) -> Config {
        node_config(&self.db.url, &self.bus.prefix, node_id)
    }

    /// Starts a node in this process and waits until it is ready.
    pub async fn start_node(&self, node_id: &str) -> anyhow::Result<TestNode> {
        TestNode::start(self.config(node_id)).await
    }
}

/// A chat node running inside the test process on an ephemeral port.
pub struct TestNode {
    pub addr: SocketAddr,
    /// The operator's listener: `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: SocketAddr,
    pub node_id: String,
    shutdown: Shutdown,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestNode {
    pub async fn start(config: Config) -> anyhow::Result<TestNode> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let operator = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let metrics_addr = operator.local_addr()?;
        let node_id = config.node_id.clone();
        let shutdown = Shutdown::new();
        let signal = shutdown.signal();
        let task = tokio::spawn(chat_backend::run_with_operator(
            config,
            listener,
            Some(operator),
            signal,
        ));
        let node = TestNode {
            addr,
            metrics_addr,
            node_id,
            shutdown,
            task: Some(task),
        };
        wait_ready(addr).await?;
        Ok(node)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Where this node's Prometheus metrics are read.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }

    /// A REST client for this node, not signed in.
    pub fn api(&self) -> Api {
        Api::new(&self.http_url()).with_metrics(&self.metrics_url())
    }

    /// A REST client signed in as `name` (registered with `api::test_password` if new).
    pub async fn sign_in(&self, name: &str) -> anyhow::Result<Api> {
        self.api().sign_in(name).await
    }

    /// A client connected to this node and signed in as `name` (the user is created if new).
    pub async fn user(&self, name: &str) -> anyhow::Result<WsClient> {
        WsClient::connect_as(&self.ws_url(), self.sign_in(name).await?).await
    }

    /// Stops the node gracefully and waits for it to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(STOP_DEADLINE, task)
                .await
                .context("node did not stop in time")???;
        }
        Ok(())
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A client connected to the node at `addr` and signed in as `name` (created if new).
pub async fn user_at(addr: SocketAddr, name: &str) -> anyhow::Result<WsClient> {
    let api = Api::new(&format!("http://{addr}")).sign_in(name).await?;
    WsClient::connect_as(&format!("ws://{addr}/ws"), api).await
}

/// Shows the nodes' logs in test output when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Polls `/readyz` until it answers 200.
pub async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let url = format!("http://{addr}/readyz");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(response) = client.get(&url).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("node at {addr} not ready within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `check` returns `Some`, polling every 50 ms, failing after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A send as a node would put it into an ingest batch, for tests that publish to the ingest
/// exchange or call the persister's store directly; its body is `body of <id>`.
pub fn ingest_message(
    room_id: chat_protocol::RoomId,
    sender_id: chat_protocol::UserId,
    id: &str,
) -> chat_protocol::bus::IngestMessage {
    chat_protocol::bus::IngestMessage {
        room_id,
        sender_id,
        sender_name: "ada".into(),
        client_msg_id: chat_protocol::ClientMsgId(id.into()),
        body: format!("body of {id}"),
        sent_at_ms: 1_795_817_270_814,
        origin: chat_protocol::bus::Origin {
            node_id: "test".into(),
            conn_id: 1,
        },
    }
}

mod shutdown {
    use tokio::sync::watch;

    /// A one-shot shutdown signal that can be triggered from `Drop`.
    pub struct Shutdown(watch::Sender<bool>);

    impl Shutdown {
        pub fn new() -> Self {
            Shutdown(watch::channel(false).0)
        }

        pub fn trigger(&self) {
            let _ = self.0.send(true);
        }

        pub fn signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
            let mut receiver = self.0.subscribe();
            async move {
                let _ = receiver.wait_for(|stopped| *stopped).await;
            }
        }
    }
}
