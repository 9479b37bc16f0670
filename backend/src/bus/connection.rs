//! Connection supervision: connecting to one broker after another, setting each connection up,
//! watching it, and starting over with backoff when it fails.

use super::consume::watch_dead_letters;
use super::ingest::IngestShard;
use super::{topology, wire, Bus, BusError};
use chat_protocol::bus::Delivery;
use futures::future::BoxFuture;
use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties, ConnectionStatus, Event};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Longest wait for a broker to answer the connection's close: one that is gone or cut off
/// never does, and a stopping node must not wait for its heartbeat to notice.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// One RabbitMQ broker the node may connect to.
pub(super) struct Broker {
    pub(super) url: String,
    /// Host and port, for logs and metrics (the URL may hold a password).
    pub(super) label: String,
}

impl Broker {
    pub(super) fn new(url: String) -> Broker {
        let label = match url.parse::<lapin::uri::AMQPUri>() {
            Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
            Err(_) => "unparsable URL".to_owned(),
        };
        Broker { url, label }
    }
}

/// One connection and the channels the node's own requests use.
#[derive(Clone)]
pub(super) struct Session {
    pub(super) connection: Arc<Connection>,
    /// In confirm mode: ingest publishes and ephemeral events.
    pub(super) publish: Channel,
    /// Declarations and room bindings.
    pub(super) control: Channel,
    /// Cancelled when the session is taken down: stops its shard balancer and its watcher.
    pub(super) ended: CancellationToken,
}

/// A connection just opened, with what tells of its end.
pub(super) struct Opened {
    pub(super) connection: Arc<Connection>,
    /// Notified when the connection, or anything the node needs of it, fails.
    pub(super) lost: Arc<Notify>,
    /// Cancelled when the session is taken down (or its set-up fails).
    pub(super) ended: CancellationToken,
}

/// The wait before the next connection attempt: 100 ms, doubling with each failure in a row,
/// at most 5 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5))
}

impl Bus {
    /// Keeps the node connected until [`Bus::close`] is called.
    pub async fn run(self, events: Arc<dyn BusEvents>) {
        self.start_ingest_publisher();
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
                    self.stay_connected(broker, &lost).await;
                    self.end_session("node stopping").await;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        error = %e,
                        failures,
                        broker = %broker.label,
                        "could not connect to RabbitMQ"
                    );
                    self.end_session("setup failed").await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff(failures)) => {}
                _ = self.inner.closing.cancelled() => {}
            }
        }
    }

    /// Marks the node ready on `broker` until the connection is lost or the node closes.
    async fn stay_connected(&self, broker: &Broker, lost: &Notify) {
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
    }

    /// Takes the session down, if there is one, and closes its connection (waiting at most
    /// [`CLOSE_TIMEOUT`] for the broker's answer).
    async fn end_session(&self, reason: &str) {
        let session = self
            .inner
            .session
            .write()
            .map(|mut guard| guard.take())
            .unwrap_or(None);
        if let Some(session) = session {
            session.ended.cancel();
            let closing = session.connection.close(200, reason.into());
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
        }
    }

    /// Connects to `url` and sets everything up on the connection, in order: the session's
    /// channels, the topology and the node queue's bindings, the node consumer, one consumer per
    /// ingest shard, the dead-letter watcher, the shard balancer. Returns what is notified when
    /// the connection is lost. A set-up that fails leaves its session installed for the
    /// supervisor to close.
    async fn connect(
        &self,
        events: &Arc<dyn BusEvents>,
        url: &str,
    ) -> Result<Arc<Notify>, BusError> {
        let Opened {
            connection,
            lost,
            ended,
        } = self.open(url).await?;
        // A set-up that fails below stops the watcher with it.
        let set_up = ended.clone().drop_guard();
        let control = self.install_session(&connection, &ended).await?;
        self.declare_and_bind(&control).await?;
        self.start_node_consumer(&connection, events, &lost).await?;
        let slots = self
            .start_shard_consumers(&connection, events, &lost)
            .await?;
        tokio::spawn(watch_dead_letters(
            connection.create_channel().await?,
            self.inner.names.dead_letter_queue(),
            self.inner.metrics.dead_letters.clone(),
            ended.clone(),
        ));
        self.start_balancer(connection, ended, events, &lost, slots)
            .await?;
        set_up.disarm();
        events.connected();
        Ok(lost)
    }

    /// Opens a connection to `url` and starts watching its events.
    async fn open(&self, url: &str) -> Result<Opened, BusError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("chat-node {}", self.inner.names.node_id).into());
        let connection = Arc::new(Connection::connect(url, properties).await?);
        let lost = Arc::new(Notify::new());
        let ended = CancellationToken::new();
        tokio::spawn(watch_connection(
            connection.events_listener(),
            connection.status().clone(),
            lost.clone(),
            ended.clone(),
        ));
        Ok(Opened {
            connection,
            lost,
            ended,
        })
    }

    /// Opens the session's channels and installs it, before anything else can fail, so a
    /// failed set-up closes this connection. Returns the control channel.
    async fn install_session(
        &self,
        connection: &Arc<Connection>,
        ended: &CancellationToken,
    ) -> Result<Channel, BusError> {
        let control = connection.create_channel().await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        if let Ok(mut guard) = self.inner.session.write() {
            *guard = Some(Session {
                connection: connection.clone(),
                publish,
                control: control.clone(),
                ended: ended.clone(),
            });
        }
        Ok(control)
    }

    /// Declares the shared topology and the node queue, and binds the queue to every room with
    /// local members again.
    async fn declare_and_bind(&self, control: &Channel) -> Result<(), BusError> {
        let names = &self.inner.names;
        topology::declare_shared(control, names).await?;
        topology::declare_node_queue(control, names).await?;
        self.bind_rooms(control).await
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

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn reconnects_back_off_from_100_ms_doubling_to_5_s() {
        let waits: Vec<Duration> = (0..9).map(backoff).collect();
        let millis: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(
            millis,
            vec![100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]
        );
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }
}
