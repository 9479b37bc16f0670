//! Reads that arrive at the same moment share one trip to PostgreSQL.
//!
//! A [`Batched`] read queues its key and waits. One task per kind of read takes everything
//! queued (up to a bound), runs one query for all of it on the blocking pool, and answers each
//! waiter. While a batch is running, the next one gathers, so under load the number of round
//! trips follows the database's pace rather than the number of callers: when 10,000 clients
//! reconnect at once, their session lookups and catch-ups take a few hundred queries, not
//! tens of thousands. A lone read costs what it did unbatched: one round trip.

use super::{Connections, StoreError};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// The batch a read was in failed; the cause was logged once for the whole batch.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a batched read failed")]
pub struct BatchFailed;

/// How a kind of read is batched: how many keys one query takes, how many queries run at
/// once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_keys: usize,
    pub in_flight: usize,
}

type Answer<V> = oneshot::Sender<Result<V, BatchFailed>>;

/// One kind of batched read, started on first use.
pub struct Batched<K, V> {
    what: &'static str,
    limits: Limits,
    queue: OnceLock<mpsc::UnboundedSender<(K, Answer<V>)>>,
}

impl<K: Send + 'static, V: Send + 'static> Batched<K, V> {
    pub const fn new(what: &'static str, limits: Limits) -> Self {
        Batched {
            what,
            limits,
            queue: OnceLock::new(),
        }
    }

    /// Reads `key` in the next batch. `load` answers a batch: one value per key, in the keys'
    /// order; it runs on the store's blocking pool.
    pub async fn get<F>(&self, connections: &Connections, key: K, load: F) -> Result<V, StoreError>
    where
        F: Fn(&mut super::DbConnection, Vec<K>) -> Result<Vec<V>, StoreError>
            + Send
            + Sync
            + Copy
            + 'static,
    {
        self.get_with(key, || {
            let connections = connections.clone();
            move |keys: Vec<K>| {
                let connections = connections.clone();
                async move { connections.run(move |conn| load(conn, keys)).await }
            }
        })
        .await
    }

    /// Reads `key` in the next batch, for reads that are not one query: `loader` (called once,
    /// when the first read starts the batching task) makes the function that answers a batch,
    /// one value per key, in the keys' order.
    pub async fn get_with<M, L, Fut>(&self, key: K, loader: M) -> Result<V, StoreError>
    where
        M: FnOnce() -> L,
        L: Fn(Vec<K>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<V>, StoreError>> + Send + 'static,
    {
        let queue = self.queue.get_or_init(|| {
            let (queue, waiting) = mpsc::unbounded_channel();
            tokio::spawn(run_batches(self.what, self.limits, waiting, loader()));
            queue
        });
        let (answer, answered) = oneshot::channel();
        queue.send((key, answer)).map_err(|_| BatchFailed)?;
        Ok(answered.await.map_err(|_| BatchFailed)??)
    }
}

/// Takes what is queued, a batch at a time, at most `limits.in_flight` batches at once.
async fn run_batches<K, V, L, Fut>(
    what: &'static str,
    limits: Limits,
    mut waiting: mpsc::UnboundedReceiver<(K, Answer<V>)>,
    load: L,
) where
    K: Send + 'static,
    V: Send + 'static,
    L: Fn(Vec<K>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<V>, StoreError>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    while let Some(first) = waiting.recv().await {
        // Waiting for a slot lets the next batch gather.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut keys = vec![first.0];
        let mut answers = vec![first.1];
        while keys.len() < limits.max_keys.max(1) {
            match waiting.try_recv() {
                Ok((key, answer)) => {
                    keys.push(key);
                    answers.push(answer);
                }
                Err(_) => break,
            }
        }
        let loading = load(keys);
        tokio::spawn(async move {
            let _slot = slot;
            let count = answers.len();
            match loading.await {
                Ok(values) if values.len() == count => {
                    for (answer, value) in answers.into_iter().zip(values) {
                        let _ = answer.send(Ok(value));
                    }
                }
                Ok(values) => {
                    tracing::error!(
                        what,
                        count,
                        answered = values.len(),
                        "a batch answered the wrong number of keys"
                    );
                    for answer in answers {
                        let _ = answer.send(Err(BatchFailed));
                    }
                }
                Err(error) => {
                    tracing::warn!(what, count, %error, "a batched read failed");
                    for answer in answers {
                        let _ = answer.send(Err(BatchFailed));
                    }
                }
            }
        });
    }
}
