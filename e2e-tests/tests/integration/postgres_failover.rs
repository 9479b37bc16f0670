//! PostgreSQL with a synchronous standby: the primary SIGKILLed while a user sends, the standby
//! promoted, and the nodes, given both servers in one multi-host URL, carry on against it.
//! Everything accepted is stored exactly once, the room's sequence goes on with no gap, and a
//! member on another node receives all of it in order.

use e2e_tests::checks::{assert_all_accepted_stored, assert_gapless, stored_messages_at, Observed};
use e2e_tests::postgres_pair::PostgresPair;
use e2e_tests::services::node_config;
use e2e_tests::{eventually, TestBus, TestNode};
use std::collections::HashSet;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_standby_takes_over_with_nothing_accepted_lost_or_doubled() -> anyhow::Result<()>
{
    e2e_tests::init_logs();
    let database = format!("chat_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let pair = PostgresPair::start(&database).await?;
    let bus = TestBus::new();
    let url = pair.database_url(&database);
    let node_a = TestNode::start(node_config(&url, &bus.prefix, "failover-a")).await?;
    let node_b = TestNode::start(node_config(&url, &bus.prefix, "failover-b")).await?;
    let mut sender = node_a.user("sender").await?;
    let (room, _) = sender.join("failover").await?;
    let mut reader = node_b.user("reader").await?;
    reader.join("failover").await?;

    let mut sent = Observed::default();
    let before = sender.send_batch(room, "before", 30).await?;
    sender
        .observe_until(&mut sent, |o| {
            before.iter().all(|id| o.stored.contains_key(id))
        })
        .await?;
    // On the standby already: the primary waited for it before each commit returned.
    let standby = pair.standby_url(&database);
    assert_eq!(stored_messages_at(&standby, room).await?.len(), 30);

    // The primary dies in the middle of a stream of sends.
    let mut during = sender.send_batch(room, "during", 20).await?;
    pair.kill_primary()?;
    let killed = Instant::now();
    during.extend(sender.send_batch(room, "after-kill", 40).await?);
    sender
        .observe_until(&mut sent, |o| {
            during
                .iter()
                .all(|id| o.accepted.contains(id) || o.refused.contains_key(id))
        })
        .await?;
    let refused: Vec<_> = sent.refused.iter().collect();
    assert!(
        during.iter().all(|id| sent.accepted.contains(id)),
        "sends stay accepted while no primary exists: {refused:?}"
    );

    pair.promote_standby().await?;
    let promoted = Instant::now();
    let accepted: HashSet<String> = sent.accepted.clone();
    let stored = eventually(
        "every accepted message stored on the promoted standby",
        || {
            let standby = standby.clone();
            let accepted = &accepted;
            async move {
                let stored = stored_messages_at(&standby, room).await.ok()?;
                let ids: HashSet<&String> = stored.iter().map(|(_, id)| id).collect();
                accepted.iter().all(|id| ids.contains(id)).then_some(stored)
            }
        },
    )
    .await?;
    let recovered = promoted.elapsed();
    assert_all_accepted_stored(&accepted, &stored);
    assert_gapless("the promoted standby", &stored);
    assert_eq!(stored.len(), 90);

    // The member on the other node got the room's whole sequence, once and in order.
    let mut seen = Observed::default();
    let delivered = reader
        .observe_until(&mut seen, |o| o.room_ids(room).len() >= stored.len())
        .await;
    if let Err(error) = delivered {
        let got = seen.room_ids(room);
        anyhow::bail!(
            "{error:#}: the reader got {} of {}: first {:?}, last {:?}",
            got.len(),
            stored.len(),
            got.first(),
            got.last()
        );
    }
    assert_eq!(seen.room_ids(room), stored);
    tracing::info!(
        without_primary_ms = promoted.duration_since(killed).as_millis() as u64,
        stored_after_promotion_ms = recovered.as_millis() as u64,
        "failover"
    );

    // New sends go straight to the new primary.
    let later = sender.send_batch(room, "later", 10).await?;
    sender
        .observe_until(&mut sent, |o| {
            later.iter().all(|id| o.stored.contains_key(id))
        })
        .await?;
    assert_gapless(
        "after the failover",
        &stored_messages_at(&standby, room).await?,
    );
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}
