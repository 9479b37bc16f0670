//! Shard balance: each node persists at most its share of the ingest shards, and hands the
//! others over to the nodes behind it in line.

use super::connection::BusEvents;
use super::ingest::ShardSlot;
use super::{Bus, BusError};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

impl Bus {
    /// Starts the connection's shard balancer, if the node balances and has shards: see
    /// [`Bus::balance_shards`]. A balancer that fails asks for a reconnect.
    pub(super) async fn start_balancer(
        &self,
        connection: Arc<Connection>,
        ended: CancellationToken,
        events: &Arc<dyn BusEvents>,
        lost: &Arc<Notify>,
        slots: Vec<ShardSlot>,
    ) -> Result<(), BusError> {
        let shards = self.inner.names.shards;
        let Some(every) = self.inner.balance_every.filter(|_| shards > 0) else {
            return Ok(());
        };
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
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::shard_to_hand_over;

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
