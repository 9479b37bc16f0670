//! The persister: stores an ingest shard's messages in PostgreSQL and publishes them for delivery.
//!
//! One loop per shard. RabbitMQ lets one consumer per shard be active at a time, so the active
//! loop owns its rooms' sequence counters. For each batch: store it in one transaction (retried
//! with backoff while PostgreSQL is down, without acknowledging anything), dead-letter what can
//! never be stored, mark the rooms' cached history out of date, publish the stored messages,
//! wait for the confirms, and only then acknowledge the batch. A crash anywhere before the acknowledgement means the
//! batch comes back; the client message ids make storing it again a no-op, and it is delivered.
//!
//! Each batch has a tracing span, `persist_batch` (its shard and size; once stored, how many
//! messages it stored, answered as duplicates, delivered again and dead-lettered), that goes
//! with it through the three stages, so every log line about one batch carries the same fields.
//! The span is at `info`; warnings and errors name their shard themselves as well, for a filter
//! that leaves the span out.

use crate::bus::{BusError, DeliveryConfirms, IngestItem, IngestShard, ShardPublisher};
use crate::history::History;
use crate::metrics::Metrics;
use crate::store::{MessageOutcome, SeqCounters, Store};
use chat_protocol::bus::{
    Delivery, DuplicateReceipt, IngestBatch, IngestMessage, Origin, RoomMessages, StoredMessage,
};
use chat_protocol::{ChatMessage, ClientMsgId, RoomId, Seq};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Most rooms in one delivery message (each adds its routing key to the message's header).
const MAX_ROOMS_PER_DELIVERY: usize = 200;

/// Batches between two stages: each stage works on the next batch while the one after it
/// finishes the previous one.
const BATCHES_IN_FLIGHT: usize = 2;

/// Batches of at least this many messages are stored in lanes of disjoint rooms at the same
/// time; smaller ones in one transaction. Two transactions at once pay only for batches this
/// large (a backlog, saturation): from 64 on, the rates around 10,000 msgs/s on two shared
/// cores had twice the tail (docs/bench-history.md).
const PARALLEL_STORE_FROM: usize = 256;

/// How many transactions one batch may be stored in at the same time.
const STORE_LANES: usize = 2;

/// Runs one shard's persister until its consumer ends or the node stops.
///
/// Three stages: this loop takes a batch and stores it; the publish stage marks its rooms'
/// cached history out of date and publishes its deliveries; the acknowledge stage waits for
/// their confirms and acknowledges the batch. Batches pass from one to the next in order, so
/// each room's deliveries go out in sequence order, the history is out of date before anyone
/// hears of a message, and acknowledgements move forward only over confirmed batches. No stage
/// waits for a later one's round trips: storing the next batch overlaps the cache and
/// RabbitMQ, and publishing it overlaps the previous confirms.
pub async fn run_shard(
    mut shard: IngestShard,
    store: Store,
    history: History,
    metrics: Metrics,
    max_batch: usize,
    stop: CancellationToken,
) {
    let publisher = shard.publisher();
    let (stored_tx, stored_rx) = mpsc::channel::<StoredBatch>(BATCHES_IN_FLIGHT);
    let publishing = tokio::spawn(publish_stage(
        publisher.clone(),
        history,
        metrics.clone(),
        stored_rx,
    ));
    // Valid while this consumer is the shard's: a new consumer starts with empty counters.
    let counters = SeqCounters::default();
    let release = shard.release();
    loop {
        let batch = tokio::select! {
            batch = shard.next_batch(max_batch.max(1)) => batch,
            _ = stop.cancelled() => break,
            // Another node takes the shard over once this one has acknowledged what it took.
            _ = release.cancelled() => break,
        };
        let Some(batch) = batch else {
            if !stop.is_cancelled() {
                tracing::warn!(shard = shard.shard, "ingest consumer ended");
                shard.report_lost();
            }
            break;
        };
        let taken = Instant::now();
        let span = batch_span(shard.shard, &batch);
        observe_ingest(&metrics, &batch);
        let stored = store_batch(&publisher, &store, &metrics, &counters, batch, &stop)
            .instrument(span.clone())
            .await;
        match stored {
            Ok(Some(stored)) => {
                metrics
                    .pipeline_seconds
                    .with_label_values(&["store"])
                    .observe_each(stored.messages, stored.stored_at.duration_since(taken));
                if stored_tx.send(stored).await.is_err() {
                    // The publish stage failed and has reported it.
                    break;
                }
            }
            // Stopping while PostgreSQL is down: nothing is acknowledged, so it all comes back.
            Ok(None) => break,
            Err(error) => {
                // Unacknowledged messages return to the queue; the bus reconnects and starts a
                // new consumer for the shard.
                tracing::warn!(parent: &span, shard = shard.shard, %error, "persister stopped");
                shard.report_lost();
                break;
            }
        }
    }
    // Batches already stored are published and acknowledged before the persister ends.
    drop(stored_tx);
    let _ = publishing.await;
}

/// A stored batch on its way out: its rooms, what to publish, and the last tag to acknowledge
/// after.
struct StoredBatch {
    rooms: Vec<RoomId>,
    deliveries: Vec<Delivery>,
    last_tag: u64,
    /// Messages it stored or delivers again, and when it was stored (for the stage metrics).
    messages: u64,
    stored_at: Instant,
    /// The batch's `persist_batch` span, for the later stages' log lines.
    span: tracing::Span,
}

/// A published batch waiting for its confirms.
struct PublishedBatch {
    confirms: DeliveryConfirms,
    last_tag: u64,
    span: tracing::Span,
}

/// The span of one batch taken from `shard`: `size` is the sends it carries (in `items` AMQP
/// messages, those that could be read); `stored`, `duplicates`, `delivered_again` and
/// `dead_lettered` are recorded once it is stored ([`BatchCounts::record`]).
fn batch_span(shard: u16, batch: &[IngestItem]) -> tracing::Span {
    let size: usize = batch
        .iter()
        .filter_map(|item| item.messages.as_ref().ok())
        .map(Vec::len)
        .sum();
    tracing::info_span!(
        "persist_batch",
        shard,
        size,
        items = batch.len(),
        stored = tracing::field::Empty,
        duplicates = tracing::field::Empty,
        delivered_again = tracing::field::Empty,
        dead_lettered = tracing::field::Empty,
    )
}

/// What became of a batch's messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct BatchCounts {
    /// Stored now, with new sequence numbers.
    stored: u64,
    /// Resends of stored messages, answered with their sequence numbers.
    duplicates: u64,
    /// Already stored by an earlier attempt or delivery of the batch: published again.
    delivered_again: u64,
    /// Sent to the dead-letter queue (an undecodable payload counts once).
    dead_lettered: u64,
}

impl BatchCounts {
    /// Records the counts on the current span (the batch's) and logs them there at `debug`.
    fn record(&self) {
        let span = tracing::Span::current();
        span.record("stored", self.stored);
        span.record("duplicates", self.duplicates);
        span.record("delivered_again", self.delivered_again);
        span.record("dead_lettered", self.dead_lettered);
        tracing::debug!("batch stored");
    }
}

async fn publish_stage(
    publisher: ShardPublisher,
    history: History,
    metrics: Metrics,
    mut stored: mpsc::Receiver<StoredBatch>,
) {
    let stage = |name: &str| metrics.pipeline_seconds.with_label_values(&[name]);
    let (queue, invalidate, publish) = (stage("queue"), stage("invalidate"), stage("publish"));
    let (published_tx, published_rx) = mpsc::channel::<PublishedBatch>(BATCHES_IN_FLIGHT);
    let acknowledging = tokio::spawn(acknowledge_stage(publisher.clone(), published_rx));
    while let Some(batch) = stored.recv().await {
        let span = batch.span.clone();
        let published = async {
            // Cached history pages of these rooms are out of date before anyone hears of them.
            let picked = Instant::now();
            queue.observe_each(batch.messages, picked.duration_since(batch.stored_at));
            history.changed(batch.rooms).await;
            let invalidated = Instant::now();
            invalidate.observe_each(batch.messages, invalidated.duration_since(picked));
            let confirms = match publisher.publish_deliveries(&batch.deliveries).await {
                Ok(confirms) => confirms,
                Err(error) => {
                    tracing::warn!(shard = publisher.shard, %error, "publishing deliveries failed");
                    publisher.report_lost();
                    return None;
                }
            };
            publish.observe_each(batch.messages, invalidated.elapsed());
            Some(PublishedBatch {
                confirms,
                last_tag: batch.last_tag,
                span: batch.span,
            })
        }
        .instrument(span)
        .await;
        let Some(published) = published else {
            break;
        };
        if published_tx.send(published).await.is_err() {
            // The acknowledge stage failed and has reported it.
            break;
        }
    }
    // Batches already published are acknowledged once confirmed.
    drop(published_tx);
    let _ = acknowledging.await;
}

async fn acknowledge_stage(
    publisher: ShardPublisher,
    mut published: mpsc::Receiver<PublishedBatch>,
) {
    while let Some(batch) = published.recv().await {
        let PublishedBatch {
            confirms,
            last_tag,
            span,
        } = batch;
        let acknowledged = async {
            confirms.confirmed().await?;
            if last_tag > 0 {
                publisher.ack_through(last_tag).await?;
            }
            Ok::<(), BusError>(())
        };
        if let Err(error) = acknowledged.instrument(span.clone()).await {
            tracing::warn!(
                parent: &span,
                shard = publisher.shard,
                %error,
                "delivery confirms failed"
            );
            publisher.report_lost();
            return;
        }
    }
}

/// Stores a batch and makes its deliveries. `None` when the node stops while PostgreSQL is
/// unreachable. Runs in the batch's span, which the stored batch takes along.
async fn store_batch(
    publisher: &ShardPublisher,
    store: &Store,
    metrics: &Metrics,
    counters: &SeqCounters,
    batch: Vec<IngestItem>,
    stop: &CancellationToken,
) -> Result<Option<StoredBatch>, BusError> {
    let Some(last_tag) = batch.last().map(|item| item.tag) else {
        return Ok(Some(StoredBatch {
            rooms: Vec::new(),
            deliveries: Vec::new(),
            last_tag: 0,
            messages: 0,
            stored_at: Instant::now(),
            span: tracing::Span::current(),
        }));
    };
    let mut counts = BatchCounts::default();
    // Every send of the batch (taken out of its item), and whether its item was redelivered.
    let mut sends: Vec<IngestMessage> = Vec::with_capacity(batch.len());
    let mut redelivered: Vec<bool> = Vec::with_capacity(batch.len());
    for item in batch {
        match item.messages {
            Ok(messages) => {
                if item.redelivered {
                    metrics.messages_redelivered.inc_by(messages.len() as u64);
                }
                redelivered.resize(redelivered.len() + messages.len(), item.redelivered);
                sends.extend(messages);
            }
            Err(reason) => {
                publisher
                    .dead_letter(&item.raw, item.binary, &reason)
                    .await?;
                metrics.messages_dead_lettered.inc();
                counts.dead_lettered += 1;
                tracing::error!(shard = publisher.shard, %reason, "ingest message dead-lettered");
            }
        }
    }
    if sends.is_empty() {
        counts.record();
        return Ok(Some(StoredBatch {
            rooms: Vec::new(),
            deliveries: Vec::new(),
            last_tag,
            messages: 0,
            stored_at: Instant::now(),
            span: tracing::Span::current(),
        }));
    }

    // Shared with the store while it works, then ours alone again: the stored messages take
    // their texts from the sends instead of copying them.
    let mut sends: Arc<[IngestMessage]> = sends.into();
    let Some(outcomes) = store_in_lanes(store, metrics, counters, sends.clone(), stop).await else {
        return Ok(None);
    };
    let sends = Arc::make_mut(&mut sends);

    let mut rooms: BTreeMap<RoomId, Vec<StoredMessage>> = BTreeMap::new();
    let mut receipts: BTreeMap<String, Vec<DuplicateReceipt>> = BTreeMap::new();
    for ((ingest, redelivered), (outcome, uncertain)) in
        sends.iter_mut().zip(redelivered).zip(outcomes)
    {
        match outcome {
            MessageOutcome::Stored(seq) => {
                metrics.messages_persisted.inc();
                counts.stored += 1;
                let stored = take_stored(ingest, seq);
                rooms
                    .entry(stored.message.room_id)
                    .or_default()
                    .push(stored);
            }
            // Stored by a batch whose delivery may never have been published (a batch
            // redelivered by RabbitMQ, or an attempt of this one whose commit went through but
            // whose answer was lost with the connection): deliver again; nodes drop sequence
            // numbers they have already shown.
            MessageOutcome::Duplicate(message) if redelivered || uncertain => {
                counts.delivered_again += 1;
                let origin = ingest.origin.clone();
                rooms
                    .entry(message.room_id)
                    .or_default()
                    .push(StoredMessage { message, origin });
            }
            MessageOutcome::Duplicate(original) => {
                metrics.messages_duplicate.inc();
                counts.duplicates += 1;
                receipts
                    .entry(ingest.origin.node_id.clone())
                    .or_default()
                    .push(DuplicateReceipt {
                        room_id: original.room_id,
                        client_msg_id: ingest.client_msg_id.clone(),
                        seq: original.seq,
                        origin: ingest.origin.clone(),
                    });
            }
            MessageOutcome::Rejected(reason) => {
                // As an ingest batch of one, a payload the ingest queues take. Not acknowledged
                // if it cannot even be encoded: the batch comes back.
                let batch = IngestBatch {
                    messages: vec![ingest.clone()],
                };
                let payload = serde_json::to_vec(&batch)?;
                publisher.dead_letter(&payload, false, &reason).await?;
                metrics.messages_dead_lettered.inc();
                counts.dead_lettered += 1;
                tracing::error!(shard = publisher.shard, %reason, "ingest message dead-lettered");
            }
        }
    }

    let changed: Vec<RoomId> = rooms.keys().copied().collect();
    let messages = rooms.values().map(|room| room.len() as u64).sum();
    let mut rooms: Vec<RoomMessages> = rooms
        .into_iter()
        .map(|(room_id, mut messages)| {
            messages.sort_by_key(|stored| stored.message.seq);
            RoomMessages { room_id, messages }
        })
        .collect();
    // One AMQP message for the batch, routed by every room's key; chunked so that the routing
    // header stays far below RabbitMQ's frame size.
    let mut deliveries: Vec<Delivery> = Vec::new();
    while !rooms.is_empty() {
        let rest = rooms.split_off(rooms.len().min(MAX_ROOMS_PER_DELIVERY));
        deliveries.push(Delivery::Rooms {
            rooms: std::mem::replace(&mut rooms, rest),
        });
    }
    deliveries.extend(
        receipts
            .into_values()
            .map(|receipts| Delivery::Duplicates { receipts }),
    );
    counts.record();
    Ok(Some(StoredBatch {
        rooms: changed,
        deliveries,
        last_tag,
        messages,
        stored_at: Instant::now(),
        span: tracing::Span::current(),
    }))
}

/// How long the batch's sends took from being read on their nodes to here (the nodes' clocks
/// are the persister's: they share a host or NTP; milliseconds, as the sends carry them).
fn observe_ingest(metrics: &Metrics, batch: &[IngestItem]) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let ingest = metrics.pipeline_seconds.with_label_values(&["ingest"]);
    for message in batch
        .iter()
        .filter_map(|item| item.messages.as_ref().ok())
        .flatten()
    {
        ingest.observe((now_ms - message.sent_at_ms).max(0) as f64 / 1000.0);
    }
}

/// Observes `duration` once per message.
trait ObserveEach {
    fn observe_each(&self, messages: u64, duration: Duration);
}

impl ObserveEach for prometheus::Histogram {
    fn observe_each(&self, messages: u64, duration: Duration) {
        let seconds = duration.as_secs_f64();
        for _ in 0..messages {
            self.observe(seconds);
        }
    }
}

/// The message a send became when stored with `seq`, its texts moved out of the send.
fn take_stored(send: &mut IngestMessage, seq: Seq) -> StoredMessage {
    StoredMessage {
        message: ChatMessage {
            room_id: send.room_id,
            seq,
            sender_id: send.sender_id,
            sender_name: std::mem::take(&mut send.sender_name),
            client_msg_id: ClientMsgId(std::mem::take(&mut send.client_msg_id.0)),
            body: std::mem::take(&mut send.body),
            sent_at_ms: send.sent_at_ms,
            edited_at_ms: None,
            deleted: false,
        },
        origin: Origin {
            node_id: std::mem::take(&mut send.origin.node_id),
            conn_id: send.origin.conn_id,
        },
    }
}

/// Stores a batch, a large one in [`STORE_LANES`] parts of disjoint rooms at the same time
/// (each part keeps its rooms' messages in batch order, and no room is in two parts, so every
/// room's sequence numbers are assigned as in one transaction). The outcomes are in batch
/// order; `None` if the node stops while PostgreSQL is unreachable, in which case nothing of
/// the batch is acknowledged, whatever parts were stored.
async fn store_in_lanes(
    store: &Store,
    metrics: &Metrics,
    counters: &SeqCounters,
    messages: Arc<[IngestMessage]>,
    stop: &CancellationToken,
) -> Option<Vec<(MessageOutcome, bool)>> {
    let lanes = lanes_of(&messages);
    if lanes.len() < 2 {
        return store_with_retry(store, metrics, counters, messages, stop).await;
    }
    let parts = lanes.iter().map(|lane| {
        let part: Vec<IngestMessage> = lane.iter().map(|&index| messages[index].clone()).collect();
        store_with_retry(store, metrics, counters, part.into(), stop)
    });
    let stored = futures::future::join_all(parts).await;
    let mut outcomes: Vec<Option<(MessageOutcome, bool)>> = vec![None; messages.len()];
    for (lane, part) in lanes.iter().zip(stored) {
        for (&index, outcome) in lane.iter().zip(part?) {
            outcomes[index] = Some(outcome);
        }
    }
    outcomes.into_iter().collect()
}

/// Splits a batch of at least [`PARALLEL_STORE_FROM`] messages into up to [`STORE_LANES`]
/// lanes of whole rooms, each a list of indices in batch order, the busiest rooms spread
/// first so the lanes carry about the same number of messages. Smaller batches, and batches of
/// one room, stay one lane: at low rates one transaction at a time is faster than two.
fn lanes_of(messages: &[IngestMessage]) -> Vec<Vec<usize>> {
    if messages.len() < PARALLEL_STORE_FROM {
        return vec![(0..messages.len()).collect()];
    }
    let mut per_room: BTreeMap<RoomId, usize> = BTreeMap::new();
    for message in messages {
        *per_room.entry(message.room_id).or_default() += 1;
    }
    let mut rooms: Vec<(RoomId, usize)> = per_room.into_iter().collect();
    rooms.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut load = [0usize; STORE_LANES];
    let mut lane_of: BTreeMap<RoomId, usize> = BTreeMap::new();
    for (room, count) in rooms {
        let lightest = (0..STORE_LANES).min_by_key(|&lane| load[lane]).unwrap_or(0);
        load[lightest] += count;
        lane_of.insert(room, lightest);
    }
    let mut lanes: Vec<Vec<usize>> = vec![Vec::new(); STORE_LANES];
    for (index, message) in messages.iter().enumerate() {
        let lane = lane_of.get(&message.room_id).copied().unwrap_or(0);
        lanes[lane].push(index);
    }
    lanes.retain(|lane| !lane.is_empty());
    lanes
}

/// Stores the batch. While PostgreSQL is unreachable it retries with backoff (`None` if the node
/// stops first). When the batch fails for what it contains, it is split in halves, stored in
/// order, until the one message that can never be stored is found and rejected.
fn store_with_retry<'a>(
    store: &'a Store,
    metrics: &'a Metrics,
    counters: &'a SeqCounters,
    // Shared with each attempt, so a retry needs no copy of the messages.
    messages: Arc<[IngestMessage]>,
    stop: &'a CancellationToken,
) -> BoxFuture<'a, Option<Vec<(MessageOutcome, bool)>>> {
    Box::pin(async move {
        let mut delay = Duration::from_millis(50);
        let mut data_failures = 0;
        // An attempt failed with the connection: its commit may have gone through all the
        // same (PostgreSQL's answer lost, or a standby promoted after it had the commit).
        let mut uncertain = false;
        loop {
            let started = Instant::now();
            let error = match store
                .persist_batch(messages.clone(), counters.clone())
                .await
            {
                Ok(outcomes) => {
                    metrics.persist_batch_size.observe(messages.len() as f64);
                    metrics
                        .persist_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Some(
                        outcomes
                            .into_iter()
                            .map(|outcome| (outcome, uncertain))
                            .collect(),
                    );
                }
                Err(error) => error,
            };
            // A broken connection can surface as an unclassified database error; a failed
            // ping tells that apart from a message PostgreSQL refuses.
            let about_the_data = !error.is_transient() && store.ping().await.is_ok();
            if about_the_data {
                data_failures += 1;
                if messages.len() > 1 {
                    tracing::warn!(%error, batch = messages.len(), "batch refused; splitting it");
                    let (first, second) = messages.split_at(messages.len() / 2);
                    let (first, second) = (Arc::from(first), Arc::from(second));
                    let mut outcomes =
                        store_with_retry(store, metrics, counters, first, stop).await?;
                    outcomes
                        .extend(store_with_retry(store, metrics, counters, second, stop).await?);
                    for (_, part_uncertain) in &mut outcomes {
                        *part_uncertain |= uncertain;
                    }
                    return Some(outcomes);
                }
                // Twice, because a writer on another shard can win a unique-key race once; the
                // retry then finds the message stored and answers it as a duplicate.
                if data_failures >= 2 {
                    return Some(vec![(
                        MessageOutcome::Rejected(error.to_string()),
                        uncertain,
                    )]);
                }
                continue;
            }
            uncertain = true;
            metrics.store_retries.inc();
            tracing::warn!(%error, batch = messages.len(), "storing a batch failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return None,
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::UserId;

    fn sends(rooms: &[i64]) -> Vec<IngestMessage> {
        rooms
            .iter()
            .enumerate()
            .map(|(index, room)| IngestMessage {
                room_id: RoomId(*room),
                sender_id: UserId(1),
                sender_name: "ada".into(),
                client_msg_id: ClientMsgId(format!("m{index}")),
                body: String::new(),
                sent_at_ms: 0,
                origin: Origin {
                    node_id: "n".into(),
                    conn_id: 1,
                },
            })
            .collect()
    }

    #[test]
    fn a_small_batch_is_one_lane() {
        let batch = sends(&[1, 2, 3, 1, 2, 3]);
        assert_eq!(lanes_of(&batch), vec![(0..6).collect::<Vec<_>>()]);
    }

    #[test]
    fn a_large_batch_splits_into_lanes_of_whole_rooms_in_batch_order() {
        // Room 7 has half the messages, rooms 1 to 4 share the other half.
        let rooms: Vec<i64> = (0..PARALLEL_STORE_FROM * 2)
            .map(|i| {
                if i % 2 == 0 {
                    7
                } else {
                    1 + (i as i64 / 2) % 4
                }
            })
            .collect();
        let batch = sends(&rooms);
        let lanes = lanes_of(&batch);
        assert_eq!(lanes.len(), STORE_LANES);
        let mut all: Vec<usize> = lanes.concat();
        all.sort_unstable();
        assert_eq!(all, (0..batch.len()).collect::<Vec<_>>());
        for lane in &lanes {
            assert!(lane.windows(2).all(|pair| pair[0] < pair[1]), "{lane:?}");
            assert_eq!(lane.len(), PARALLEL_STORE_FROM);
        }
        let room_lanes = |room: i64| {
            lanes
                .iter()
                .filter(|lane| lane.iter().any(|&index| batch[index].room_id.0 == room))
                .count()
        };
        for room in [1, 2, 3, 4, 7] {
            assert_eq!(room_lanes(room), 1, "room {room} in more than one lane");
        }
    }

    #[test]
    fn a_large_batch_of_one_room_stays_one_lane() {
        let batch = sends(&vec![5; PARALLEL_STORE_FROM * 2]);
        assert_eq!(lanes_of(&batch).len(), 1);
    }

    /// What a log reader sees of one batch: every line, from the store stage's to the
    /// acknowledge stage's, names the batch's shard and size and, once stored, its counts; at
    /// `info` a batch that goes well writes nothing.
    #[test]
    fn the_log_lines_of_a_batch_carry_its_shard_size_and_counts() {
        let items = vec![
            IngestItem {
                tag: 1,
                redelivered: false,
                messages: Ok(sends(&[1, 2, 1])),
                raw: Vec::new(),
                binary: true,
            },
            IngestItem {
                tag: 2,
                redelivered: false,
                messages: Err("undecodable ingest payload".into()),
                raw: Vec::new(),
                binary: false,
            },
        ];
        let counts = BatchCounts {
            stored: 2,
            duplicates: 1,
            delivered_again: 0,
            dead_lettered: 1,
        };
        let batch = |fails: bool| {
            let span = batch_span(4, &items);
            span.in_scope(|| counts.record());
            if fails {
                tracing::warn!(parent: &span, "delivery confirms failed");
            }
        };
        let debug = crate::telemetry::logged(tracing::Level::DEBUG, || batch(true));
        let lines: Vec<&str> = debug.lines().collect();
        assert_eq!(lines.len(), 2, "{debug}");
        for line in &lines {
            for field in [
                "persist_batch{shard=4 size=3 items=2",
                "stored=2 duplicates=1 delivered_again=0 dead_lettered=1}",
            ] {
                assert!(line.contains(field), "{field} not in {line}");
            }
        }
        assert!(lines[0].contains("DEBUG") && lines[0].ends_with("batch stored"));
        assert!(lines[1].contains("WARN") && lines[1].ends_with("delivery confirms failed"));
        assert_eq!(
            crate::telemetry::logged(tracing::Level::INFO, || batch(false)),
            ""
        );
    }
}
