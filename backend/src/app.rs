//! The node: wires the store, the bus, the hub and the HTTP front together, and runs them until
//! the shutdown signal.

use crate::admission::{Admission, ConnectionLimits};
use crate::auth;
use crate::bus::wire::DeliveredRoom;
use crate::bus::{Bus, BusEvents, BusMetrics, IngestShard, Names, PublishPacing};
use crate::cache::Cache;
use crate::config::{BusFormat, Config, QueueType};
use crate::delivery::{ConnId, Hub};
use crate::directory::Directory;
use crate::fanout::{self, FanoutEvent};
use crate::history::History;
use crate::http;
use crate::membership;
use crate::metrics::Metrics;
use crate::persister;
use crate::presence::{self, Presence, PresenceEvent};
use crate::rate_limit::{self, FrameLimits, RateLimits};
use crate::store::Store;
use crate::watch::Watching;
use anyhow::Context;
use chat_protocol::bus::Delivery;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the node waits for its connections and persisters to finish when stopping.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight HTTP requests get when the node stops.
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a request handler or background task of this node may need.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub bus: Bus,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    /// Cancelled when the node starts shutting down; every connection watches it.
    pub shutdown: CancellationToken,
    pub sessions: TaskTracker,
    persisters: TaskTracker,
    migrated: AtomicBool,
    next_conn: AtomicU64,
    fanout: mpsc::Sender<FanoutEvent>,
    fanout_events: Mutex<Option<mpsc::Receiver<FanoutEvent>>>,
    /// Profiles, rooms and memberships, read through the cache.
    pub directory: Directory,
    /// History pages, the newest through the cache.
    pub history: History,
    pub presence: Presence,
    presence_tx: mpsc::UnboundedSender<PresenceEvent>,
    presence_events: Mutex<Option<mpsc::UnboundedReceiver<PresenceEvent>>>,
    pub limits: RateLimits,
    /// Limits on room-scoped WebSocket frames.
    pub frame_limits: FrameLimits,
    /// Rooms of local users watched for activity, and the rooms the node queue is bound to.
    pub watching: Watching,
    /// The connections and WebSockets this node holds, against its connection limits.
    pub admission: Arc<Admission>,
}

impl App {
    pub fn new(config: Config) -> Arc<App> {
        let metrics = Metrics::new();
        let store = Store::new(
            config.database_url.expose(),
            config.db_pool_size,
            config.db_persist_pool_size,
        );
        let names = Names {
            prefix: config.amqp_prefix.clone(),
            node_id: config.node_id.clone(),
            shards: config.ingest_shards.max(1),
            quorum: config.queue_type == QueueType::Quorum,
            binary: config.bus_format == BusFormat::Binary,
            delivery_limit: config.delivery_limit,
            dead_letter_max_length: config.dead_letter_max_length,
        };
        let balance_every =
            (config.shard_balance_ms > 0).then(|| Duration::from_millis(config.shard_balance_ms));
        let bus = Bus::new(
            config.amqp_urls(),
            names,
            balance_every,
            PublishPacing {
                interval: Duration::from_millis(config.ingest_interval_ms),
                busy_interval: Duration::from_millis(config.ingest_busy_interval_ms),
            },
            BusMetrics {
                sends_per_publish: metrics.ingest_publish_sends.clone(),
                broker: metrics.bus_broker.clone(),
                dead_letters: metrics.dead_letter_queue_messages.clone(),
            },
        );
        let hub = Arc::new(Hub::new(config.node_id.clone(), metrics.clone()));
        let (fanout, fanout_events) = mpsc::channel(fanout::FANOUT_QUEUE);
        let cache = Cache::new(
            &config.memcached_servers,
            &config.cache_prefix,
            config.cache_ttl_secs,
            metrics.clone(),
        );
        let directory = Directory::new(store.clone(), cache.clone(), metrics.clone());
        let history = History::new(store.clone(), cache, metrics.clone());
        let presence = Presence::new(Duration::from_millis(config.presence_ttl_ms.max(1)));
        let (presence_tx, presence_events) = mpsc::unbounded_channel();
        let limits = RateLimits::new(&config, metrics.clone());
        let frame_limits = FrameLimits::new(&config, metrics.clone());
        let admission = Admission::new(ConnectionLimits::for_process(&config));
        Arc::new(App {
            config,
            store,
            bus,
            hub,
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            persisters: TaskTracker::new(),
            migrated: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            fanout,
            fanout_events: Mutex::new(Some(fanout_events)),
            directory,
            history,
            presence,
            presence_tx,
            presence_events: Mutex::new(Some(presence_events)),
            limits,
            frame_limits,
            watching: Watching::default(),
            admission,
        })
    }

    /// Tells the presence task that a local user's state here changed.
    pub fn presence_changed(&self, event: PresenceEvent) {
        let _ = self.presence_tx.send(event);
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// True once migrations are applied and RabbitMQ is connected; PostgreSQL is checked apart.
    pub fn is_started(&self) -> bool {
        self.migrated.load(Ordering::Acquire) && self.bus.is_ready()
    }

    /// Applies migrations, retrying while PostgreSQL is unreachable.
    async fn migrate(&self) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.migrate().await {
                Ok(()) => {
                    self.migrated.store(true, Ordering::Release);
                    return true;
                }
                Err(error) => tracing::warn!(%error, "migrations not applied yet; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => return false,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

impl BusEvents for App {
    fn deliver(&self, delivery: Delivery) -> BoxFuture<'_, ()> {
        async move {
            match delivery {
                // About users, not rooms: handled apart so they never delay messages.
                Delivery::Presence { .. }
                | Delivery::PresenceSnapshot { .. }
                | Delivery::PresenceSync { .. }
                | Delivery::RoomsChanged { .. }
                | Delivery::ReadMarker { .. } => {
                    let _ = self.presence_tx.send(PresenceEvent::Delivery(delivery));
                }
                // Closing a few sockets takes no lookup: done here, at once.
                Delivery::SessionsEnded { user_id, ended } => {
                    self.hub
                        .end_sessions(user_id, |session| ended.includes(&session.to_hex()));
                }
                _ => {
                    let _ = self.fanout.send(FanoutEvent::Delivery(delivery)).await;
                }
            }
        }
        .boxed()
    }

    fn deliver_rooms(&self, rooms: Vec<DeliveredRoom>) -> BoxFuture<'_, ()> {
        async move {
            let _ = self.fanout.send(FanoutEvent::Rooms(rooms)).await;
        }
        .boxed()
    }

    fn connected(&self) {
        if self.bus.connection_count() > 0 {
            self.metrics.bus_reconnects.inc();
        }
        // Queued behind the deliveries already taken, without holding up the reconnect.
        let fanout = self.fanout.clone();
        tokio::spawn(async move {
            let _ = fanout.send(FanoutEvent::Resync).await;
        });
        let _ = self.presence_tx.send(PresenceEvent::Connected);
    }

    fn peer_nodes(&self) -> usize {
        self.presence.peer_nodes()
    }

    fn shard_handed_over(&self, shard: u16) {
        tracing::info!(shard, "ingest shard handed over to another node");
        self.metrics.shard_handovers.inc();
    }

    fn shard_started(&self, shard: IngestShard) {
        self.persisters.spawn(persister::run_shard(
            shard,
            self.store.clone(),
            self.history.clone(),
            self.metrics.clone(),
            self.config.persist_batch,
            self.shutdown.clone(),
        ));
    }
}

/// Runs a node on `listener` until `shutdown` resolves, then drains: WebSockets are closed with
/// "going away", persisters finish their batch, and the RabbitMQ connection is closed. The
/// operator's listener is bound at `config.metrics_listen` unless that is off.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let operator = match config.metrics_listen.0 {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} for metrics"))?,
        ),
        None => None,
    };
    run_with_operator(config, listener, operator, shutdown).await
}

/// [`run`], with the operator's listener (`/metrics`, `/healthz`, `/readyz`) bound by the caller.
pub async fn run_with_operator(
    config: Config,
    listener: TcpListener,
    operator: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = App::new(config);
    let address = listener.local_addr()?;
    let limits = app.admission.limits();
    tracing::info!(
        node = %app.node_id(),
        %address,
        max_connections = limits.connections,
        max_websockets = limits.websockets,
        "chat node listening"
    );

    {
        let app = app.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            app.shutdown.cancel();
        });
    }

    {
        // Limits forget the keys of clients that have been quiet long enough.
        let app = app.clone();
        tokio::spawn(async move {
            let stop = app.shutdown.clone();
            rate_limit::forget_idle_every(&app.limits, rate_limit::FORGET_IDLE_EVERY, stop).await
        });
    }
    {
        let app = app.clone();
        tokio::spawn(async move {
            let (limits, stop) = (&app.frame_limits, app.shutdown.clone());
            rate_limit::forget_idle_frames_every(limits, rate_limit::FORGET_IDLE_EVERY, stop).await
        });
    }
    tokio::spawn(membership::recheck_every(app.clone()));

    {
        // Open WebSockets whose session ended without the notice reaching this node, or expired.
        let app = app.clone();
        tokio::spawn(async move {
            let stop = app.shutdown.clone();
            let every = app.config.session_recheck();
            auth::recheck_sessions_every(app, every, stop).await
        });
    }

    let server = {
        let stop = app.shutdown.clone();
        let server = http::serve(app.clone(), listener, async move { stop.cancelled().await });
        tokio::spawn(server)
    };
    if let Some(operator) = operator {
        tracing::info!(address = %operator.local_addr()?, "metrics listening");
        let stop = app.shutdown.clone();
        tokio::spawn(http::serve_operator(app.clone(), operator, async move {
            stop.cancelled().await
        }));
    }

    if let Some(events) = crate::locks::lock(&app.fanout_events).take() {
        tokio::spawn(fanout::run(app.clone(), events));
    }
    if let Some(events) = crate::locks::lock(&app.presence_events).take() {
        tokio::spawn(presence::run(app.clone(), events));
    }

    let bus_task = if app.migrate().await {
        let events: Arc<dyn BusEvents> = app.clone();
        Some(tokio::spawn(app.bus.clone().run(events)))
    } else {
        None
    };

    app.shutdown.cancelled().await;
    // In-flight requests get a moment; an idle keep-alive connection must not hold the node up.
    let server_abort = server.abort_handle();
    match tokio::time::timeout(HTTP_DRAIN_TIMEOUT, server).await {
        Ok(Err(error)) => tracing::error!(%error, "HTTP server task failed"),
        Ok(Ok(())) => {}
        Err(_) => {
            tracing::debug!("HTTP connections still open; closing them");
            server_abort.abort();
        }
    }
    tracing::debug!("HTTP server stopped");
    app.sessions.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, app.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }
    tracing::debug!("connections closed");
    app.persisters.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, app.persisters.wait())
        .await
        .is_err()
    {
        tracing::warn!("some persisters did not finish in time");
    }
    tracing::debug!("persisters stopped");
    app.bus.close();
    if let Some(task) = bus_task {
        let abort = task.abort_handle();
        if tokio::time::timeout(DRAIN_TIMEOUT, task).await.is_err() {
            tracing::warn!("the RabbitMQ connection did not close in time");
            abort.abort();
        }
    }
    tracing::info!("stopped");
    Ok(())
}
