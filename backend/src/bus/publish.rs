//! Ingest publishing: a node's accepted sends, grouped by shard and paced, each publish
//! confirmed by RabbitMQ before its senders hear `accepted`; and the ephemeral events a node
//! publishes to the other nodes.

use super::{wire, Bus, BusError, Names};
use chat_protocol::bus::{Delivery, IngestBatch, IngestMessage};
use chat_protocol::RoomId;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a send waits for RabbitMQ's confirm before it is refused.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Most sends a node puts into one ingest publish.
const MAX_SENDS_PER_PUBLISH: usize = 256;

/// A send waiting to be published, with the way to tell its sender the outcome.
pub(super) struct PendingIngest {
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

pub(super) fn check_confirmation(confirmation: Confirmation) -> Result<(), BusError> {
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
    /// Starts the task that publishes submitted sends (once: later calls find it started).
    pub(super) fn start_ingest_publisher(&self) {
        let queue = crate::locks::lock(&self.inner.ingest_queue).take();
        if let Some(queue) = queue {
            tokio::spawn(self.clone().publish_ingest_batches(queue));
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
}

/// A batch's payload and properties: its binary layout with `content_type` when `binary` holds
/// one (the caller asked for it and it could be encoded), otherwise `json` as JSON; an error when
/// neither can be encoded.
pub(super) fn batch_payload(
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

pub(super) fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

pub(super) fn transient_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(1)
        .with_content_type("application/json".into())
}

#[cfg(test)]
mod tests {
    use super::{
        batch_payload, BusError, PublishPacer, PublishPacing, BUSY_SENDS, MAX_SENDS_PER_PUBLISH,
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
}
