//! Prometheus metrics for every stage of the pipeline, served as text on `/metrics`.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The node's metrics. Each node has its own registry so several nodes can live in one test process.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub messages_accepted: IntCounter,
    pub messages_refused: IntCounter,
    pub messages_persisted: IntCounter,
    pub messages_duplicate: IntCounter,
    pub messages_dead_lettered: IntCounter,
    pub messages_delivered: IntCounter,
    pub frames_dropped_slow_client: IntCounter,
    pub disconnects: IntCounterVec,
    pub client_errors: IntCounterVec,
    pub persist_batch_size: Histogram,
    pub ingest_publish_sends: Histogram,
    pub persist_seconds: Histogram,
    pub accept_seconds: Histogram,
    pub store_retries: IntCounter,
    pub messages_gap_filled: IntCounter,
    pub delivery_seconds: Histogram,
    pub pipeline_seconds: HistogramVec,
    pub messages_redelivered: IntCounter,
    pub bus_reconnects: IntCounter,
    pub bus_broker: IntGaugeVec,
    pub dead_letter_queue_messages: IntGauge,
    pub shard_handovers: IntCounter,
    pub cache_requests: IntCounterVec,
    pub cache_errors: IntCounter,
    pub cache_server_up: IntGaugeVec,
    pub directory_loads: IntCounterVec,
    pub membership_checks: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub auth_failures: IntCounter,
    pub history_cache: IntCounterVec,
    pub messages_changed: IntCounterVec,
    pub presence_frames: IntCounter,
    pub presence_expired: IntCounter,
    /// HTTP requests by route template, method and status (see [`crate::access_log`]).
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    /// Always 1, labelled with the version and commit the binary was built from.
    pub build_info: IntGaugeVec,
    /// PostgreSQL connections by pool (`requests`, `persist`) and state (`idle`, `in_use`,
    /// `max`), read at every scrape.
    pub db_pool_connections: IntGaugeVec,
    /// 1 while the node has a working connection to RabbitMQ, read at every scrape.
    pub bus_connected: IntGauge,
    /// 1 while `/readyz` would answer 200, read at every scrape.
    pub ready: IntGauge,
    /// The process's own metrics (`process_open_fds`, `process_max_fds`,
    /// `process_resident_memory_bytes`, `process_cpu_seconds_total`…), without the `chat_`
    /// prefix, as every Prometheus exporter names them.
    process: Registry,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("chat".into()), None).unwrap_or_default();
        let counter = |name: &str, help: &str| register(&registry, IntCounter::new(name, help));
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            register(
                &registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
            )
        };
        // Fine between 1 and 100 ms, where a pipeline stage's tail is decided.
        let latency_buckets = vec![
            0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
            0.2, 0.5, 1.0, 2.0, 5.0,
        ];
        Metrics {
            connections: register(
                &registry,
                IntGauge::new("connections", "Open WebSocket connections."),
            ),
            client_errors: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "client_errors_total",
                        "Error frames sent to clients, by code.",
                    ),
                    &["code"],
                ),
            ),
            messages_accepted: counter(
                "messages_accepted_total",
                "Sends confirmed by RabbitMQ and answered `accepted`.",
            ),
            messages_refused: counter(
                "messages_refused_total",
                "Sends answered with `unavailable` because RabbitMQ did not confirm them.",
            ),
            messages_persisted: counter(
                "messages_persisted_total",
                "Messages stored in PostgreSQL by this node's persisters.",
            ),
            shard_handovers: counter(
                "shard_handovers_total",
                "Ingest shards this node handed to another node's persister because it held more than its share.",
            ),
            messages_duplicate: counter(
                "messages_duplicate_total",
                "Resends recognised by their client message id and not stored again.",
            ),
            messages_dead_lettered: counter(
                "messages_dead_lettered_total",
                "Ingest messages that could never be stored and went to the dead-letter queue.",
            ),
            messages_delivered: counter(
                "messages_delivered_total",
                "Message frames queued to local WebSockets.",
            ),
            frames_dropped_slow_client: counter(
                "slow_client_disconnects_total",
                "Connections closed because they did not read their frames fast enough.",
            ),
            disconnects: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "disconnects_total",
                        "WebSockets the node closed, by reason: too_slow (outbox over its \
                         budget), session_ended, silent (no answer to pings).",
                    ),
                    &["reason"],
                ),
            ),
            persist_batch_size: histogram(
                "persist_batch_size",
                "Messages per persister transaction.",
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
            ),
            ingest_publish_sends: histogram(
                "ingest_publish_sends",
                "Sends per ingest publish: one AMQP message per shard carries every send that \
                 waited while the node's previous publish was being written.",
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 256.0],
            ),
            persist_seconds: histogram(
                "persist_seconds",
                "Time to store one persister transaction (a batch, or one lane of a large batch).",
                latency_buckets.clone(),
            ),
            accept_seconds: histogram(
                "accept_seconds",
                "Time from a send frame to its publisher confirm.",
                latency_buckets.clone(),
            ),
            messages_gap_filled: counter(
                "messages_gap_filled_total",
                "Messages read from PostgreSQL to fill a gap in the node queue's deliveries.",
            ),
            delivery_seconds: histogram(
                "delivery_seconds",
                "Time from a send being accepted to its message being queued to local sockets.",
                latency_buckets.clone(),
            ),
            pipeline_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "pipeline_seconds",
                        "Time each message spent in a persister stage, by stage: ingest (send \
                         read on its node to a persister taking it; millisecond resolution), \
                         store (its batch's transaction), queue (waiting for the publish stage), \
                         invalidate (marking cached history out of date), publish (delivery \
                         publish).",
                    )
                    .buckets(latency_buckets),
                    &["stage"],
                ),
            ),
            messages_redelivered: counter(
                "messages_redelivered_total",
                "Ingest messages a persister received again after an earlier consumer failed.",
            ),
            store_retries: counter(
                "store_retries_total",
                "Persister batches retried because PostgreSQL failed.",
            ),
            bus_reconnects: counter(
                "bus_reconnects_total",
                "Connections to RabbitMQ established after the first.",
            ),
            bus_broker: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "bus_broker",
                        "1 for the RabbitMQ broker (host:port) the node is connected to, 0 for \
                         the other brokers it may fail over to.",
                    ),
                    &["broker"],
                ),
            ),
            dead_letter_queue_messages: register(
                &registry,
                IntGauge::new(
                    "dead_letter_queue_messages",
                    "Messages in the dead-letter queue (dead-lettered by any persister or by \
                     RabbitMQ's delivery limit), read every 2 s.",
                ),
            ),
            cache_requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "cache_requests_total",
                        "Memcached requests by operation and result (hit, miss, ok, error, skipped).",
                    ),
                    &["op", "result"],
                ),
            ),
            cache_errors: counter(
                "cache_errors_total",
                "Memcached requests that failed; the node answered from PostgreSQL instead.",
            ),
            cache_server_up: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "cache_server_up",
                        "1 for a Memcached server (host:port) in use, 0 while its keys go to \
                         PostgreSQL after a failure.",
                    ),
                    &["server"],
                ),
            ),
            directory_loads: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "directory_loads_total",
                        "Profiles, rooms and memberships read from PostgreSQL (cache misses).",
                    ),
                    &["kind"],
                ),
            ),
            membership_checks: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "membership_checks_total",
                        "Membership re-checks of sends' rooms: `ahead` renewed in the background \
                         while sends went on, `send` checked before a send; `node` the periodic \
                         re-check of every joined room of the node.",
                    ),
                    &["when"],
                ),
            ),
            rate_limited: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "rate_limited_total",
                        "Requests refused with `rate_limited`, by limit.",
                    ),
                    &["limit"],
                ),
            ),
            auth_failures: counter(
                "auth_failures_total",
                "Failed logins and requests with a missing, expired or unknown session.",
            ),
            history_cache: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "history_cache_total",
                        "Reads of a room's newest messages, by result (hit, miss).",
                    ),
                    &["result"],
                ),
            ),
            messages_changed: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "messages_changed_total",
                        "Stored messages edited or deleted, by kind (edit, delete).",
                    ),
                    &["kind"],
                ),
            ),
            presence_frames: counter(
                "presence_frames_total",
                "`presence` frames queued to local connections.",
            ),
            presence_expired: counter(
                "presence_expired_total",
                "Users whose presence on another node expired because its snapshots stopped.",
            ),
            http_requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "http_requests_total",
                        "HTTP requests answered, by route template (`/api/rooms/{room_id}`), \
                         method and status. A WebSocket counts once, with its 101.",
                    ),
                    &["route", "method", "status"],
                ),
            ),
            http_request_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "http_request_seconds",
                        "Time from an HTTP request's arrival to its answer's head, by route \
                         template and method.",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
                    &["route", "method"],
                ),
            ),
            build_info: {
                let info = register(
                    &registry,
                    IntGaugeVec::new(
                        Opts::new(
                            "build_info",
                            "Always 1: the version and commit this node was built from.",
                        ),
                        &["version", "commit"],
                    ),
                );
                info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("CHAT_BUILD_COMMIT")])
                    .set(1);
                info
            },
            db_pool_connections: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "db_pool_connections",
                        "PostgreSQL connections by pool (requests, persist) and state (idle, \
                         in_use, max).",
                    ),
                    &["pool", "state"],
                ),
            ),
            bus_connected: register(
                &registry,
                IntGauge::new(
                    "bus_connected",
                    "1 while the node has a working connection to RabbitMQ, 0 while it refuses \
                     sends as unavailable.",
                ),
            ),
            ready: register(
                &registry,
                IntGauge::new(
                    "ready",
                    "1 while the node is ready (/readyz answers 200), 0 otherwise.",
                ),
            ),
            process: process_registry(),
            registry,
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        if let Err(e) = encoder.encode(&families, &mut buffer) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers a metric. Construction only fails on an invalid name or a name registered twice,
/// and every name here is a distinct literal, so failing is a programming error.
#[allow(clippy::expect_used)]
fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("metric names are valid literals");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are distinct");
    metric
}

/// A registry of the process's metrics, read from `/proc` at each scrape (Linux only).
fn process_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    if let Err(error) = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    )) {
        tracing::warn!(%error, "process metrics not available");
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics() {
        let metrics = Metrics::new();
        metrics.messages_accepted.inc();
        metrics.client_errors.with_label_values(&["bad_json"]).inc();
        let text = metrics.render();
        assert!(text.contains("chat_messages_accepted_total 1"));
        assert!(text.contains("chat_client_errors_total{code=\"bad_json\"} 1"));
    }

    #[test]
    fn renders_build_info_and_process_metrics() {
        let text = Metrics::new().render();
        let version = env!("CARGO_PKG_VERSION");
        assert!(text.contains("chat_build_info{commit=\""));
        assert!(text.contains(&format!("version=\"{version}\"}} 1")));
        #[cfg(target_os = "linux")]
        for name in [
            "process_open_fds ",
            "process_max_fds ",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
