//! The bus: the only module that speaks AMQP.
//!
//! lapin's own connection recovery is left off: after a reconnect the node must also learn that
//! deliveries were missed meanwhile, and hand fresh consumers to its persisters. So [`Bus::run`]
//! is a supervisor: it connects, declares the topology, binds the node queue to every room with
//! local members, starts the node consumer and one ingest consumer per shard, then waits for the
//! connection to fail and starts over with backoff. While it is down, [`Bus::is_ready`] is false and sends are refused as `unavailable`.
//! Given several brokers (the nodes of one RabbitMQ cluster), each new attempt goes to the next
//! one in the list, so a node whose broker died is back on another after one backoff step.
//!
//! The parts, one job each, all behind the [`Bus`] handle:
//! - `connection`: the supervisor (connecting to one broker after another, setting a connection
//!   up step by step, watching it, reconnecting) and [`BusEvents`], what the bus hands the node;
//! - `publish`: the node's ingest publisher (pacing, confirms, [`IngestAnswer`]) and its
//!   ephemeral events;
//! - `consume`: the node queue's consumer and its room bindings, the ingest shards' consumers,
//!   and the dead-letter queue's length;
//! - `balance`: handing ingest shards over so that each node persists its share;
//! - `ingest`: one ingest shard as its persister sees it; `topology`: every exchange and queue;
//!   `wire`: the binary layouts of the two batches.

mod balance;
mod connection;
mod consume;
mod ingest;
mod publish;
pub mod topology;
pub mod wire;

pub use connection::BusEvents;
pub use consume::DEAD_LETTER_CHECK_EVERY;
pub use ingest::{DeliveryConfirms, IngestItem, IngestShard, ShardPublisher};
pub use publish::{IngestAnswer, PublishPacer, PublishPacing, BUSY_SENDS};
pub use topology::Names;

use chat_protocol::RoomId;
use connection::{Broker, Session};
use prometheus::{Histogram, IntGauge, IntGaugeVec};
use publish::PendingIngest;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Errors from the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("RabbitMQ is not connected")]
    NotConnected,
    #[error("RabbitMQ refused the message")]
    Nacked,
    #[error("RabbitMQ did not confirm in time")]
    ConfirmTimeout,
    #[error("no queue took the message")]
    Unroutable,
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    /// Nothing is published: an empty payload would be taken for a message.
    #[error("cannot encode the payload: {0}")]
    Encode(String),
}

impl From<serde_json::Error> for BusError {
    fn from(error: serde_json::Error) -> Self {
        BusError::Encode(error.to_string())
    }
}

/// A handle to the node's RabbitMQ connection. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    /// How this node's ingest publishes are spaced.
    pacing: PublishPacing,
    /// The brokers the node may connect to, tried in turn; never empty.
    brokers: Vec<Broker>,
    names: Names,
    /// How often the node checks whether it persists more than its share of the shards.
    balance_every: Option<Duration>,
    session: RwLock<Option<Session>>,
    /// Rooms the node queue must be bound to; re-applied after every reconnect.
    rooms: Mutex<HashSet<RoomId>>,
    ready: AtomicBool,
    closing: CancellationToken,
    connections: AtomicU64,
    ingest: mpsc::UnboundedSender<PendingIngest>,
    ingest_queue: Mutex<Option<mpsc::UnboundedReceiver<PendingIngest>>>,
    metrics: BusMetrics,
}

/// What the bus reports of itself.
#[derive(Clone)]
pub struct BusMetrics {
    /// Sends per ingest publish.
    pub sends_per_publish: Histogram,
    /// 1 for the broker (`broker` label: host and port) the node is connected to, 0 for the
    /// others.
    pub broker: IntGaugeVec,
    /// Messages in the dead-letter queue, as last read (every [`DEAD_LETTER_CHECK_EVERY`]).
    pub dead_letters: IntGauge,
}

impl Bus {
    /// A bus for the node `names.node_id`. With `balance_every`, the node checks that often
    /// whether it is the active persister of more shards than its share (the shard count over
    /// the number of nodes consuming them, rounded up), and if so hands one of them over: see
    /// [`Bus::balance_shards`]. Ingest publishes are spaced by `pacing` (see [`PublishPacer`]).
    /// `urls` are the brokers, tried in turn from the first (an empty list is one empty URL,
    /// which fails to connect, loudly).
    pub fn new(
        urls: Vec<String>,
        names: Names,
        balance_every: Option<Duration>,
        pacing: PublishPacing,
        metrics: BusMetrics,
    ) -> Bus {
        let (ingest, ingest_queue) = mpsc::unbounded_channel();
        let mut brokers: Vec<Broker> = urls.into_iter().map(Broker::new).collect();
        if brokers.is_empty() {
            brokers.push(Broker::new(String::new()));
        }
        for broker in &brokers {
            metrics.broker.with_label_values(&[&broker.label]).set(0);
        }
        Bus {
            inner: Arc::new(Inner {
                brokers,
                names,
                balance_every,
                pacing,
                session: RwLock::new(None),
                rooms: Mutex::new(HashSet::new()),
                ready: AtomicBool::new(false),
                closing: CancellationToken::new(),
                connections: AtomicU64::new(0),
                ingest,
                ingest_queue: Mutex::new(Some(ingest_queue)),
                metrics,
            }),
        }
    }

    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// True while connected with the topology declared and every consumer running.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Connections made so far, the first included.
    pub fn connection_count(&self) -> u64 {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Stops reconnecting and closes the connection.
    pub fn close(&self) {
        self.inner.closing.cancel();
    }

    /// The current connection's channels, if connected.
    fn session(&self) -> Option<Session> {
        self.inner
            .session
            .read()
            .ok()
            .and_then(|guard| guard.clone())
    }
}
