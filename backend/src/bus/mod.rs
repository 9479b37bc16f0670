//! The bus: the only module that speaks AMQP.
//!
//! lapin's own connection recovery is left off: after a reconnect the node must also learn that
//! deliveries were missed meanwhile, and hand fresh consumers to its persisters. So [`Bus::run`]
//! is a supervisor: it connects, declares the topology, binds the node queue to every room with
//! local members, starts the node consumer and one ingest consumer per shard, then waits for the
//! connection to fail and starts over with backoff. While it is down, [`Bus::is_ready`] is false and sends are refused as `unavailable`.
//! Given several brokers (the nodes of one RabbitMQ cluster), each new attempt goes to the next
//! one in the list, so a node whose broker died is back on another after one backoff step.

mod ingest;
pub mod topology;
pub mod wire;

use ingest::ShardSlot;
pub use ingest::{DeliveryConfirms, IngestItem, IngestShard, ShardPublisher};
pub use topology::Names;

use chat_protocol::bus::{Delivery, IngestBatch, IngestMessage};
use chat_protocol::RoomId;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    ConnectionStatus, Event, PublisherConfirm,
};
use prometheus::{Histogram, IntGauge, IntGaugeVec};
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// How long a send waits for RabbitMQ's confirm before it is refused.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a broker to answer the connection's close: one that is gone or cut off
/// never does, and a stopping node must not wait for its heartbeat to notice.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Unacknowledged ingest messages a persister may hold: the upper bound of a batch.
const INGEST_PREFETCH: u16 = 2_000;
/// Most deliveries of the node queue RabbitMQ sends before the node acknowledges them.
const NODE_PREFETCH: u16 = 512;
/// Under load, the node queue's deliveries are acknowledged at least this often.
const NODE_ACK_EVERY: u16 = NODE_PREFETCH / 4;
/// Most sends a node puts into one ingest publish.
const MAX_SENDS_PER_PUBLISH: usize = 256;
/// How often a node reads the dead-letter queue's length into its metrics.
pub const DEAD_LETTER_CHECK_EVERY: Duration = Duration::from_secs(2);

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

/// What the bus hands to the rest of the node.
pub trait BusEvents: Send + Sync + 'static {
    /// A delivery from this node's queue, in the order the queue holds them. Resolves once the
    /// delivery is queued for handling: while it is pending the consumer takes nothing more.
    fn deliver(&self, delivery: Delivery) -> BoxFuture<'_, ()>;
    /// A persister batch's rooms, delivered in the binary layout ([`wire`]); in queue order
    /// with [`BusEvents::deliver`]'s.
    fn deliver_rooms(&self, rooms: Vec<wire::DeliveredRoom>) -> BoxFuture<'_, ()>;
    /// An ingest shard's consumer is registered; this node may become its active persister.
    fn shard_started(&self, shard: IngestShard);
    /// The node queue was (re)declared and bound: deliveries made meanwhile were missed.
    fn connected(&self);
    /// This node handed an ingest shard to another node's consumer (see [`Bus::new`]).
    fn shard_handed_over(&self, shard: u16);
    /// Other nodes of the deployment known to be alive (by their presence heartbeats).
    fn peer_nodes(&self) -> usize;
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
    connections: std::sync::atomic::AtomicU64,
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

/// One RabbitMQ broker the node may connect to.
struct Broker {
    url: String,
    /// Host and port, for logs and metrics (the URL may hold a password).
    label: String,
}

impl Broker {
    fn new(url: String) -> Broker {
        let label = match url.parse::<lapin::uri::AMQPUri>() {
            Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
            Err(_) => "unparsable URL".to_owned(),
        };
        Broker { url, label }
    }
}

/// How many shards one node of `nodes` should persist at most: `ceil(shards / nodes)`.
fn shard_share(shards: u16, nodes: u32) -> usize {
    usize::from(shards).div_ceil(nodes.max(1) as usize)
}

/// Which of the shards this node is the active persister of (`active`, ascending) it should
/// hand over: the last one, when it has more than its share.
fn shard_to_hand_over(active: &[usize], shards: u16, nodes: u32) -> Option<usize> {
    active
        .last()
        .copied()
        .filter(|_| active.len() > shard_share(shards, nodes))
}

/// What a connection's shard balancer works with.
struct Balancer {
    connection: Arc<Connection>,
    /// Its own channel: a failed passive declaration closes the channel it was made on.
    channel: Channel,
    every: Duration,
    /// The session's: the balancer stops with its connection.
    ended: CancellationToken,
    events: Arc<dyn BusEvents>,
    lost: Arc<Notify>,
}

/// A send waiting to be published, with the way to tell its sender the outcome.
struct PendingIngest {
    message: IngestMessage,
    /// [`CONFIRM_TIMEOUT`] after it was submitted: unconfirmed by then, it is refused.
    deadline: tokio::time::Instant,
    answer: IngestAnswer,
}

/// Tells the submitter of a send its outcome once RabbitMQ has confirmed or refused the
/// publish that carried it. It runs on the task that awaited the confirm, once for every send of
/// the publish, so it must be quick and must not block: queueing a frame is what it is for.
/// Dropped unanswered (the publisher gone with the node), it answers
/// [`BusError::NotConnected`], so every accepted submission is answered exactly once.
pub struct IngestAnswer(Option<AnswerFn>);

type AnswerFn = Box<dyn FnOnce(Result<(), BusError>) + Send>;

impl IngestAnswer {
    pub fn new(answer: impl FnOnce(Result<(), BusError>) + Send + 'static) -> IngestAnswer {
        IngestAnswer(Some(Box::new(answer)))
    }

    fn answer(mut self, outcome: Result<(), BusError>) {
        if let Some(answer) = self.0.take() {
            answer(outcome);
        }
    }

    /// Drops it without answering: for a submission refused on the spot, which the submitter
    /// learns of from the error it gets back.
    fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for IngestAnswer {
    fn drop(&mut self) {
        if let Some(answer) = self.0.take() {
            answer(Err(BusError::NotConnected));
        }
    }
}

#[derive(Clone)]
struct Session {
    connection: Arc<Connection>,
    publish: Channel,
    control: Channel,
    /// Cancelled when the session is taken down: stops its shard balancer and its watcher.
    ended: CancellationToken,
}

/// The outcome of a shared publish, for each of its senders (an AMQP error is not `Clone`; to a
/// sender it means the connection failed).
fn copy_outcome(outcome: &Result<(), BusError>) -> Result<(), BusError> {
    match outcome {
        Ok(()) => Ok(()),
        Err(BusError::Nacked) => Err(BusError::Nacked),
        Err(BusError::ConfirmTimeout) => Err(BusError::ConfirmTimeout),
        Err(BusError::Unroutable) => Err(BusError::Unroutable),
        Err(BusError::NotConnected | BusError::Amqp(_)) => Err(BusError::NotConnected),
        Err(BusError::Encode(error)) => Err(BusError::Encode(error.clone())),
    }
}

async fn await_confirm(
    confirm: PublisherConfirm,
    deadline: tokio::time::Instant,
) -> Result<(), BusError> {
    match tokio::time::timeout_at(deadline, confirm).await {
        Err(_) => Err(BusError::ConfirmTimeout),
        Ok(Err(e)) => Err(BusError::Amqp(e)),
        Ok(Ok(confirmation)) => check_confirmation(confirmation),
    }
}

fn check_confirmation(confirmation: Confirmation) -> Result<(), BusError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BusError::Unroutable),
        Confirmation::Nack(_) => Err(BusError::Nacked),
        // Every publishing channel is put in confirm mode; this would be a bug.
        Confirmation::NotRequested => Err(BusError::Nacked),
    }
}

/// How a node spaces its ingest publishes: see [`PublishPacer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishPacing {
    /// Least time between two publishes.
    pub interval: Duration,
    /// Least time after a publish that carried [`BUSY_SENDS`] sends or more; `interval` if
    /// shorter.
    pub busy_interval: Duration,
}

/// Sends in one publish from which the publisher counts as busy: see [`PublishPacer`]. At the
/// default 2 ms interval (3 ms in practice, with the timer's 1 ms resolution) that is about
/// 5,000 sends a second on the node; at the default busy interval of 5 ms it stays busy down to
/// about 3,000.
pub const BUSY_SENDS: usize = 16;

/// When the ingest publisher may publish next. Each ingest publish is a persistent message
/// RabbitMQ writes and confirms, and the persister takes and acknowledges, at about the same
/// cost whether it carries one send or a hundred: publishing whatever waits the moment the
/// previous publish left made one AMQP message every few sends under load. Publishes are at
/// least `interval` apart instead: a send that finds the last publish longer ago than that goes
/// out at once (no added latency when idle), and under load every send of an interval shares
/// one publish, waiting at most `interval`.
///
/// A publish that carried [`BUSY_SENDS`] or more spaces the next one by `busy_interval`
/// instead: a busy node gives its sends a few more milliseconds, small beside what queueing for
/// a core costs them by then, and RabbitMQ gets a fifth less work from it, while a quiet node
/// keeps the short interval its latency needs. A publish that filled [`MAX_SENDS_PER_PUBLISH`]
/// lets the next one go at once, so the cap never holds sends back.
#[derive(Debug, Clone)]
pub struct PublishPacer {
    pacing: PublishPacing,
    last: Option<std::time::Instant>,
    /// Sends the last publish carried.
    last_sends: usize,
}

impl PublishPacer {
    pub fn new(pacing: PublishPacing) -> PublishPacer {
        PublishPacer {
            pacing,
            last: None,
            last_sends: 0,
        }
    }

    /// The instant before which the next publish must wait, if any.
    pub fn next_due(&self) -> Option<std::time::Instant> {
        if self.last_sends >= MAX_SENDS_PER_PUBLISH {
            return None;
        }
        let interval = if self.last_sends >= BUSY_SENDS {
            self.pacing.busy_interval.max(self.pacing.interval)
        } else {
            self.pacing.interval
        };
        if interval.is_zero() {
            return None;
        }
        let due = self.last? + interval;
        (due > std::time::Instant::now()).then_some(due)
    }

    /// Records a publish made at `at` that carried `sends` sends.
    pub fn published(&mut self, at: std::time::Instant, sends: usize) {
        self.last = Some(at);
        self.last_sends = sends;
    }
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
                connections: std::sync::atomic::AtomicU64::new(0),
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

    /// Keeps the node connected until [`Bus::close`] is called.
    pub async fn run(self, events: Arc<dyn BusEvents>) {
        let queue = self
            .inner
            .ingest_queue
            .lock()
            .ok()
            .and_then(|mut slot| slot.take());
        if let Some(queue) = queue {
            tokio::spawn(self.clone().publish_ingest_batches(queue));
        }
        let mut failures: u32 = 0;
        let brokers = &self.inner.brokers;
        let mut next = 0;
        while !self.inner.closing.is_cancelled() {
            let broker = &brokers[next % brokers.len()];
            // Whatever happens to this attempt, the next one goes to the next broker.
            next = (next + 1) % brokers.len();
            match self.connect(&events, &broker.url).await {
                Ok(lost) => {
                    failures = 0;
                    self.inner.connections.fetch_add(1, Ordering::Relaxed);
                    self.inner.ready.store(true, Ordering::Release);
                    let in_use = self
                        .inner
                        .metrics
                        .broker
                        .with_label_values(&[&broker.label]);
                    in_use.set(1);
                    tracing::info!(
                        node = %self.inner.names.node_id,
                        broker = %broker.label,
                        "connected to RabbitMQ"
                    );
                    tokio::select! {
                        _ = lost.notified() => {
                            tracing::warn!(
                                broker = %broker.label,
                                "connection to RabbitMQ lost; reconnecting"
                            );
                        }
                        _ = self.inner.closing.cancelled() => {}
                    }
                    self.inner.ready.store(false, Ordering::Release);
                    in_use.set(0);
                    let session = self.take_session();
                    if let Some(session) = session {
                        let closing = session.connection.close(200, "node stopping".into());
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        error = %e,
                        failures,
                        broker = %broker.label,
                        "could not connect to RabbitMQ"
                    );
                    if let Some(session) = self.take_session() {
                        let closing = session.connection.close(200, "setup failed".into());
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
                    }
                }
            }
            let backoff = Duration::from_millis(100u64.saturating_mul(1 << failures.min(6)))
                .min(Duration::from_secs(5));
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.inner.closing.cancelled() => {}
            }
        }
    }

    /// Stops reconnecting and closes the connection.
    pub fn close(&self) {
        self.inner.closing.cancel();
    }

    fn take_session(&self) -> Option<Session> {
        let session = self
            .inner
            .session
            .write()
            .map(|mut guard| guard.take())
            .unwrap_or(None);
        if let Some(session) = &session {
            session.ended.cancel();
        }
        session
    }

    fn session(&self) -> Option<Session> {
        self.inner
            .session
            .read()
            .ok()
            .and_then(|guard| guard.clone())
    }

    async fn connect(
        &self,
        events: &Arc<dyn BusEvents>,
        url: &str,
    ) -> Result<Arc<Notify>, BusError> {
        let names = &self.inner.names;
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("chat-node {}", names.node_id).into());
        let connection = Arc::new(Connection::connect(url, properties).await?);
        let lost = Arc::new(Notify::new());
        let ended = CancellationToken::new();
        tokio::spawn(watch_connection(
            connection.events_listener(),
            connection.status().clone(),
            lost.clone(),
            ended.clone(),
        ));
        // A set-up that fails below stops the watcher with it.
        let set_up = ended.clone().drop_guard();
        let control = connection.create_channel().await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Installed before anything can fail below, so a failed set-up closes this connection.
        if let Ok(mut guard) = self.inner.session.write() {
            *guard = Some(Session {
                connection: connection.clone(),
                publish,
                control: control.clone(),
                ended: ended.clone(),
            });
        }

        topology::declare_shared(&control, names).await?;
        topology::declare_node_queue(&control, names).await?;
        let rooms: Vec<RoomId> = self
            .inner
            .rooms
            .lock()
            .map(|rooms| rooms.iter().copied().collect())
            .unwrap_or_default();
        for room in rooms {
            bind(&control, names, room).await?;
        }

        let node_channel = connection.create_channel().await?;
        node_channel
            .basic_qos(NODE_PREFETCH, BasicQosOptions::default())
            .await?;
        let node_consumer = node_channel
            .basic_consume(
                names.node_queue().into(),
                format!("node-{}", names.node_id).into(),
                BasicConsumeOptions {
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        tokio::spawn(consume_node_queue(
            node_consumer,
            events.clone(),
            lost.clone(),
        ));

        let mut slots = Vec::with_capacity(usize::from(names.shards));
        for shard in 0..names.shards {
            slots.push(
                self.consume_shard(&connection, shard, events, &lost)
                    .await?,
            );
        }
        tokio::spawn(watch_dead_letters(
            connection.create_channel().await?,
            names.dead_letter_queue(),
            self.inner.metrics.dead_letters.clone(),
            ended.clone(),
        ));
        if let Some(every) = self.inner.balance_every.filter(|_| names.shards > 0) {
            let balancer = Balancer {
                channel: connection.create_channel().await?,
                connection,
                every,
                ended,
                events: events.clone(),
                lost: lost.clone(),
            };
            let bus = self.clone();
            tokio::spawn(async move {
                if let Err(error) = bus.balance_shards(&balancer, slots).await {
                    tracing::warn!(%error, "shard balancer failed; reconnecting");
                    balancer.lost.notify_one();
                }
            });
        }
        set_up.disarm();
        events.connected();
        Ok(lost)
    }

    /// Subscribes to one ingest queue and hands the consumer to the persister. RabbitMQ makes
    /// the first subscriber of a queue its active consumer; the others wait in line.
    async fn consume_shard(
        &self,
        connection: &Connection,
        shard: u16,
        events: &Arc<dyn BusEvents>,
        lost: &Arc<Notify>,
    ) -> Result<ShardSlot, BusError> {
        let names = &self.inner.names;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(INGEST_PREFETCH, BasicQosOptions::default())
            .await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                names.ingest_queue(shard).into(),
                format!("persister-{}-{shard}", names.node_id).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (shard, slot) = IngestShard::new(shard, channel, consumer, names.clone(), lost.clone());
        events.shard_started(shard);
        Ok(slot)
    }

    /// Keeps this node from persisting more than its share of the shards. Every
    /// `balance_every`, it counts the consumers of each ingest queue (every node subscribes to
    /// every shard, so the largest count of a classic queue is the number of nodes; quorum
    /// queues count only the active one, so the nodes' presence heartbeats are counted too) and
    /// the shards this node took a batch from since the last look (the ones it is the active
    /// consumer of). With more
    /// than `ceil(shards / nodes)` of them, it hands the highest over: the persister takes
    /// nothing more, finishes and acknowledges what it took, then the channel is closed, which
    /// returns what the consumer held but had not taken to the queue in order, and makes the
    /// next consumer in line (another node's) the active one. The node subscribes again, last
    /// in line. The new owner reads the rooms' counters from PostgreSQL, where everything the
    /// old one acknowledged is committed, so sequence numbers continue without a gap.
    async fn balance_shards(
        &self,
        balancer: &Balancer,
        mut slots: Vec<ShardSlot>,
    ) -> Result<(), BusError> {
        let names = &self.inner.names;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(balancer.every) => {}
                _ = balancer.ended.cancelled() => return Ok(()),
            }
            let mut nodes = u32::try_from(balancer.events.peer_nodes())
                .unwrap_or(u32::MAX)
                .saturating_add(1);
            for slot in &slots {
                let queue = balancer
                    .channel
                    .queue_declare(
                        names.ingest_queue(slot.shard).into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                nodes = nodes.max(queue.consumer_count());
            }
            let active: Vec<usize> = (slots.iter().enumerate())
                .filter(|(_, slot)| slot.took.swap(false, Ordering::Relaxed))
                .map(|(index, _)| index)
                .collect();
            let Some(index) = shard_to_hand_over(&active, names.shards, nodes) else {
                continue;
            };
            let slot = &mut slots[index];
            let shard = slot.shard;
            tracing::info!(
                shard,
                nodes,
                active = active.len(),
                share = shard_share(names.shards, nodes),
                "handing an ingest shard over"
            );
            let released = std::time::Instant::now();
            slot.release.cancel();
            tokio::select! {
                _ = &mut slot.finished => {}
                _ = balancer.ended.cancelled() => return Ok(()),
            }
            let drained = released.elapsed();
            slot.channel.close(200, "shard handed over".into()).await?;
            // From here the next consumer has the shard; until here its sends waited.
            tracing::info!(
                shard,
                drain_ms = drained.as_millis() as u64,
                pause_ms = released.elapsed().as_millis() as u64,
                "ingest shard released"
            );
            *slot = self
                .consume_shard(
                    &balancer.connection,
                    shard,
                    &balancer.events,
                    &balancer.lost,
                )
                .await?;
            balancer.events.shard_handed_over(shard);
        }
    }

    /// Submits a send for publishing to its room's ingest shard. Sends submitted by one task
    /// reach the shard in submission order. `answer` is told the outcome once RabbitMQ has made
    /// the send durable or refused it, or [`CONFIRM_TIMEOUT`] after submission at the latest.
    /// An error here means the send was refused on the spot, and `answer` is not called.
    pub fn submit_ingest(
        &self,
        message: IngestMessage,
        answer: IngestAnswer,
    ) -> Result<(), BusError> {
        if !self.is_ready() {
            answer.defuse();
            return Err(BusError::NotConnected);
        }
        let pending = PendingIngest {
            message,
            deadline: tokio::time::Instant::now() + CONFIRM_TIMEOUT,
            answer,
        };
        self.inner.ingest.send(pending).map_err(|refused| {
            refused.0.answer.defuse();
            BusError::NotConnected
        })
    }

    /// Publishes submitted sends: everything waiting is grouped by shard into one AMQP message
    /// per shard, so under load one confirm covers many sends. Publishes are paced by a
    /// [`PublishPacer`]: a send that finds the publisher idle goes out at once, and under load
    /// the sends of one interval share one publish. Confirms are awaited elsewhere, so the next
    /// publish does not wait for the previous one.
    async fn publish_ingest_batches(self, mut queue: mpsc::UnboundedReceiver<PendingIngest>) {
        let mut pacer = PublishPacer::new(self.inner.pacing);
        while let Some(first) = queue.recv().await {
            if let Some(due) = pacer.next_due() {
                tokio::time::sleep_until(due.into()).await;
            }
            let mut waiting = vec![first];
            while waiting.len() < MAX_SENDS_PER_PUBLISH {
                match queue.try_recv() {
                    Ok(next) => waiting.push(next),
                    Err(_) => break,
                }
            }
            pacer.published(std::time::Instant::now(), waiting.len());
            let mut by_shard: BTreeMap<u16, Vec<PendingIngest>> = BTreeMap::new();
            for pending in waiting {
                let shard = self.inner.names.shard_of(pending.message.room_id);
                by_shard.entry(shard).or_default().push(pending);
            }
            for (shard, group) in by_shard {
                self.inner
                    .metrics
                    .sends_per_publish
                    .observe(group.len() as f64);
                // The earliest submitted send's deadline is the whole publish's (a group is
                // never empty).
                let deadline = (group.iter().map(|p| p.deadline).min())
                    .unwrap_or_else(|| tokio::time::Instant::now() + CONFIRM_TIMEOUT);
                let (messages, answers): (Vec<IngestMessage>, Vec<_>) =
                    group.into_iter().map(|p| (p.message, p.answer)).unzip();
                // The frames are queued on the first poll; a timeout only stops the waiting for
                // them to be written (a connection RabbitMQ has blocked).
                let published = tokio::time::timeout_at(
                    deadline,
                    self.publish_ingest_batch(shard, IngestBatch { messages }),
                )
                .await;
                // One task per publish awaits its confirm and answers every send it carried.
                tokio::spawn(async move {
                    let result = match published {
                        Ok(Ok(confirm)) => await_confirm(confirm, deadline).await,
                        Ok(Err(error)) => Err(error),
                        Err(_) => Err(BusError::ConfirmTimeout),
                    };
                    for answer in answers {
                        answer.answer(copy_outcome(&result));
                    }
                });
            }
        }
    }

    async fn publish_ingest_batch(
        &self,
        shard: u16,
        batch: IngestBatch,
    ) -> Result<PublisherConfirm, BusError> {
        let session = self.session().ok_or(BusError::NotConnected)?;
        if !self.is_ready() {
            return Err(BusError::NotConnected);
        }
        let names = &self.inner.names;
        let (payload, properties) = batch_payload(
            names.binary.then(|| wire::encode_ingest(&batch.messages)),
            wire::INGEST_CONTENT_TYPE,
            &batch,
            persistent_json(),
        )?;
        Ok(session
            .publish
            .basic_publish(
                names.ingest_exchange().into(),
                Names::shard_key(shard).into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                properties,
            )
            .await?)
    }

    /// Publishes an ephemeral event to a room's nodes: not persistent, no confirm awaited, and
    /// dropped while RabbitMQ is away.
    pub async fn publish_ephemeral(&self, room: RoomId, event: &Delivery) -> Result<(), BusError> {
        self.publish_transient(Names::room_key(room).into(), event)
            .await
    }

    /// Publishes an ephemeral event to every node, this one included.
    pub async fn publish_to_everyone(&self, event: &Delivery) -> Result<(), BusError> {
        self.publish_transient(Names::everyone_key().into(), event)
            .await
    }

    async fn publish_transient(
        &self,
        routing_key: ShortString,
        event: &Delivery,
    ) -> Result<(), BusError> {
        let session = self.session().ok_or(BusError::NotConnected)?;
        if !self.is_ready() {
            return Err(BusError::NotConnected);
        }
        let payload = serde_json::to_vec(event)?;
        // The confirm is dropped unawaited: an ephemeral event is worth no wait.
        let _confirm = session
            .publish
            .basic_publish(
                self.inner.names.delivery_exchange().into(),
                routing_key,
                BasicPublishOptions::default(),
                &payload,
                transient_json(),
            )
            .await?;
        Ok(())
    }

    /// Binds the node queue to a room. Remembered, so a reconnect binds it again.
    pub async fn bind_room(&self, room: RoomId) -> Result<(), BusError> {
        if let Ok(mut rooms) = self.inner.rooms.lock() {
            rooms.insert(room);
        }
        // Taken after the room is recorded: either this binds on the current connection, or the
        // next reconnect sees the room and binds it.
        let session = self.session().ok_or(BusError::NotConnected)?;
        bind(&session.control, &self.inner.names, room).await?;
        Ok(())
    }

    /// Unbinds the node queue from a room.
    pub async fn unbind_room(&self, room: RoomId) -> Result<(), BusError> {
        if let Ok(mut rooms) = self.inner.rooms.lock() {
            rooms.remove(&room);
        }
        let session = self.session().ok_or(BusError::NotConnected)?;
        let names = &self.inner.names;
        session
            .control
            .queue_unbind(
                names.node_queue().into(),
                names.delivery_exchange().into(),
                Names::room_key(room).into(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

/// Reports what lapin tells of the connection until the session ends: a failed connection wakes
/// the supervisor through `lost`; a channel the broker closed on an error, or a connection the
/// broker blocked (memory or disk alarm: publishes wait, and sends time out as unconfirmed), is
/// only logged, since whatever used that channel or publishes meanwhile fails on its own.
async fn watch_connection(
    events: impl futures::Stream<Item = Event> + Send + 'static,
    status: ConnectionStatus,
    lost: Arc<Notify>,
    ended: CancellationToken,
) {
    let mut events = std::pin::pin!(events);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = ended.cancelled() => return,
        };
        match event {
            None => return,
            Some(Event::Error(error)) if status.connected() => {
                tracing::warn!(%error, "RabbitMQ channel error");
            }
            Some(Event::Error(error)) => {
                tracing::warn!(%error, "RabbitMQ connection error");
                lost.notify_one();
            }
            Some(Event::ConnectionBlocked(reason)) => {
                tracing::warn!(%reason, "RabbitMQ blocked the connection");
            }
            Some(Event::ConnectionUnblocked) => {
                tracing::info!("RabbitMQ unblocked the connection");
            }
            Some(_) => {}
        }
    }
}

/// Reads the dead-letter queue's length into `gauge` every [`DEAD_LETTER_CHECK_EVERY`] until the
/// session ends. Dead letters come from the persisters and from RabbitMQ itself (a quorum
/// queue's delivery limit), so the queue, not a counter of the node's, is where all of them show.
/// `channel` is its own: a failed passive declaration would close it.
async fn watch_dead_letters(
    channel: Channel,
    queue: String,
    gauge: IntGauge,
    ended: CancellationToken,
) {
    loop {
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(declared) => gauge.set(i64::from(declared.message_count())),
            Err(error) => {
                tracing::warn!(%error, "cannot read the dead-letter queue's length");
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(DEAD_LETTER_CHECK_EVERY) => {}
            _ = ended.cancelled() => return,
        }
    }
}

async fn bind(channel: &Channel, names: &Names, room: RoomId) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            names.node_queue().into(),
            names.delivery_exchange().into(),
            Names::room_key(room).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// A batch's payload and properties: its binary layout with `content_type` when `binary` holds
/// one (the caller asked for it and it could be encoded), otherwise `json` as JSON; an error when
/// neither can be encoded.
fn batch_payload(
    binary: Option<Result<Vec<u8>, wire::WireError>>,
    content_type: &str,
    json: &impl serde::Serialize,
    properties: BasicProperties,
) -> Result<(Vec<u8>, BasicProperties), BusError> {
    match binary {
        Some(Ok(payload)) => Ok((payload, properties.with_content_type(content_type.into()))),
        other => {
            if let Some(Err(error)) = other {
                tracing::warn!(%error, content_type, "batch published as JSON instead");
            }
            Ok((serde_json::to_vec(json)?, properties))
        }
    }
}

/// Hands the node queue's deliveries to the node, in order, and acknowledges them once taken.
/// A node that cannot keep up stops taking them: RabbitMQ then stops at the prefetch limit and
/// keeps the rest in the (length-limited) queue, so the node's memory stays bounded. Acks go
/// out for everything taken so far (`multiple`) whenever no delivery is waiting, or every
/// `NODE_ACK_EVERY` deliveries under load.
async fn consume_node_queue(
    mut consumer: lapin::Consumer,
    events: Arc<dyn BusEvents>,
    lost: Arc<Notify>,
) {
    let mut unacked: Option<Acker> = None;
    let mut taken_since_ack = 0u16;
    loop {
        let next = match consumer.next().now_or_never() {
            Some(next) => next,
            None => {
                if let Some(acker) = unacked.take() {
                    if let Err(error) = ack_taken(&acker).await {
                        tracing::warn!(%error, "node queue ack failed");
                        break;
                    }
                    taken_since_ack = 0;
                }
                consumer.next().await
            }
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                tracing::warn!(%error, "node queue consumer failed");
                break;
            }
            None => break,
        };
        let acker = delivery.acker;
        if has_content_type(&delivery.properties, wire::ROOMS_CONTENT_TYPE) {
            match wire::decode_rooms(delivery.data) {
                Ok(rooms) => events.deliver_rooms(rooms).await,
                Err(error) => tracing::error!(%error, "undecodable delivery dropped"),
            }
        } else {
            match Delivery::decode(&delivery.data) {
                Ok(payload) => events.deliver(payload).await,
                Err(error) => tracing::error!(%error, "undecodable delivery dropped"),
            }
        }
        unacked = Some(acker);
        taken_since_ack += 1;
        if taken_since_ack >= NODE_ACK_EVERY {
            if let Some(acker) = unacked.take() {
                if let Err(error) = ack_taken(&acker).await {
                    tracing::warn!(%error, "node queue ack failed");
                    break;
                }
            }
            taken_since_ack = 0;
        }
    }
    lost.notify_one();
}

async fn ack_taken(acker: &Acker) -> Result<(), lapin::Error> {
    acker
        .ack(BasicAckOptions { multiple: true })
        .await
        .map(drop)
}

/// Whether a received message says it has `content_type`.
fn has_content_type(properties: &BasicProperties, content_type: &str) -> bool {
    properties.content_type().as_ref().map(|kind| kind.as_str()) == Some(content_type)
}

fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

fn transient_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(1)
        .with_content_type("application/json".into())
}

#[cfg(test)]
mod tests {
    use super::{
        batch_payload, shard_to_hand_over, BusError, PublishPacer, PublishPacing, BUSY_SENDS,
        MAX_SENDS_PER_PUBLISH,
    };
    use lapin::BasicProperties;
    use std::time::Duration;

    #[test]
    fn a_payload_that_cannot_be_encoded_is_an_error_not_an_empty_message() {
        // JSON objects need string keys.
        let unencodable: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let outcome = batch_payload(None, "x", &unencodable, BasicProperties::default());
        assert!(matches!(outcome, Err(BusError::Encode(_))), "{outcome:?}");
        let encodable: std::collections::BTreeMap<String, u8> = [("a".to_owned(), 1)].into();
        let outcome = batch_payload(None, "x", &encodable, BasicProperties::default());
        assert!(
            matches!(&outcome, Ok((payload, _)) if payload == br#"{"a":1}"#),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_publish_waits_the_interval_or_after_a_busy_publish_the_busy_interval() {
        let interval = Duration::from_secs(60);
        let busy_interval = Duration::from_secs(150);
        let mut pacer = PublishPacer::new(PublishPacing {
            interval,
            busy_interval,
        });
        assert_eq!(pacer.next_due(), None, "the first send goes out at once");
        let now = std::time::Instant::now();
        pacer.published(now, 1);
        assert_eq!(pacer.next_due(), Some(now + interval));
        pacer.published(now, BUSY_SENDS - 1);
        assert_eq!(pacer.next_due(), Some(now + interval));
        pacer.published(now, BUSY_SENDS);
        assert_eq!(
            pacer.next_due(),
            Some(now + busy_interval),
            "a busy publisher spaces its publishes further"
        );
        pacer.published(now, MAX_SENDS_PER_PUBLISH);
        assert_eq!(
            pacer.next_due(),
            None,
            "a full publish lets the next go at once"
        );
        pacer.published(now - busy_interval * 2, BUSY_SENDS);
        assert_eq!(pacer.next_due(), None, "an idle publisher adds no wait");
        let mut unpaced = PublishPacer::new(PublishPacing::default());
        unpaced.published(now, BUSY_SENDS);
        assert_eq!(unpaced.next_due(), None);
        let mut never_busy = PublishPacer::new(PublishPacing {
            interval,
            busy_interval: Duration::ZERO,
        });
        never_busy.published(now, BUSY_SENDS);
        assert_eq!(
            never_busy.next_due(),
            Some(now + interval),
            "a busy interval below the interval counts as the interval"
        );
    }

    #[test]
    fn a_node_keeps_its_share_and_hands_over_the_highest_shard_beyond_it() {
        // Alone, a node keeps everything.
        assert_eq!(shard_to_hand_over(&[0, 1, 2, 3], 4, 1), None);
        // Two nodes, four shards: two each.
        assert_eq!(shard_to_hand_over(&[0, 1, 2, 3], 4, 2), Some(3));
        assert_eq!(shard_to_hand_over(&[0, 1, 2], 4, 2), Some(2));
        assert_eq!(shard_to_hand_over(&[0, 1], 4, 2), None);
        // Shares round up: two shards over three nodes is one each, and one node idle.
        assert_eq!(shard_to_hand_over(&[0, 1], 2, 3), Some(1));
        assert_eq!(shard_to_hand_over(&[1], 2, 3), None);
        // Five shards over two nodes: three and two.
        assert_eq!(shard_to_hand_over(&[0, 2, 4], 5, 2), None);
        assert_eq!(shard_to_hand_over(&[0, 1, 2, 4], 5, 2), Some(4));
        // Nothing taken, or no consumers counted: nothing to do.
        assert_eq!(shard_to_hand_over(&[], 4, 2), None);
        assert_eq!(shard_to_hand_over(&[0, 1], 2, 0), None);
    }
}
