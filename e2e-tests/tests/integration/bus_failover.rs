//! Broker failover: a node given several RabbitMQ brokers moves to the next one when its broker
//! is cut away, and every send is either accepted and stored once, or refused and then stored
//! once when retried. The three "brokers" are three TCP proxies in front of the shared RabbitMQ,
//! so cutting one (for good) looks to the node like a broker dying, and the test's own prefix
//! keeps its queues apart from other tests'.

use chat_backend::config::Secret;
use chat_protocol::RoomId;
use e2e_tests::checks::{assert_all_accepted_stored, assert_gapless, stored_messages, Observed};
use e2e_tests::proxy::TcpProxy;
use e2e_tests::{eventually, TestEnv, TestNode, WsClient};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The most a node may take from losing its broker to taking sends through the next one: the
/// documented pause (README, ARCHITECTURE.md) is about a second; this leaves room for a machine
/// busy with other builds.
const MOST_PAUSE: Duration = Duration::from_secs(10);

/// Sends `count` messages named `<prefix>-<n>` and waits until each is answered.
async fn send_answered(
    client: &mut WsClient,
    observed: &mut Observed,
    room: RoomId,
    ids: &[String],
) -> anyhow::Result<()> {
    for id in ids {
        client.send_message(room, id, "failover").await?;
    }
    client
        .observe_until(observed, |o| {
            ids.iter()
                .all(|id| o.accepted.contains(id) || o.refused.contains_key(id))
        })
        .await
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("{prefix}-{index}"))
        .collect()
}

/// The broker (`host:port`) the node reports being connected to, if any.
async fn broker_in_use(node: &TestNode) -> Option<String> {
    let metrics = reqwest::get(node.metrics_url())
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metrics.lines().find_map(|line| {
        let labels = line.strip_prefix("chat_bus_broker{broker=\"")?;
        let (broker, value) = labels.split_once("\"}")?;
        (value.trim() == "1").then(|| broker.to_owned())
    })
}

/// Waits until the node is connected through `proxy`, and says how long that took.
async fn wait_connected_through(node: &TestNode, proxy: &TcpProxy) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let expected = proxy.addr.to_string();
    eventually(&format!("connected through {expected}"), || async {
        (broker_in_use(node).await.as_deref() == Some(expected.as_str())).then_some(())
    })
    .await?;
    Ok(started.elapsed())
}

/// Cuts the proxy the node uses (for good) right after a burst of sends, so some are in flight;
/// waits for the node to be on `next`; retries whatever was refused with the same ids.
async fn cut_during_a_burst(
    node: &TestNode,
    sender: &mut WsClient,
    sent: &mut Observed,
    room: RoomId,
    (cut, next): (&TcpProxy, &TcpProxy),
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let burst = ids(prefix, 40);
    for id in &burst {
        sender.send_message(room, id, "failover").await?;
    }
    cut.cut();
    let pause = wait_connected_through(node, next).await?;
    assert!(pause < MOST_PAUSE, "failover took {pause:?}");
    sender
        .observe_until(sent, |o| {
            burst
                .iter()
                .all(|id| o.accepted.contains(id) || o.refused.contains_key(id))
        })
        .await?;
    // Whatever the cut left unconfirmed was answered `unavailable`; the retry finds the
    // original if it was stored after all.
    let refused: Vec<String> = (burst.iter())
        .filter(|id| !sent.accepted.contains(*id))
        .cloned()
        .collect();
    for id in &refused {
        sent.refused.remove(id);
    }
    send_answered(sender, sent, room, &refused).await?;
    for id in &burst {
        assert!(sent.accepted.contains(id), "{id} not accepted on retry");
    }
    Ok(burst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_moves_to_the_next_broker_when_its_own_is_cut_and_loses_nothing(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let proxies = [
        TcpProxy::start("127.0.0.1:5672").await?,
        TcpProxy::start("127.0.0.1:5672").await?,
        TcpProxy::start("127.0.0.1:5672").await?,
    ];
    let mut config = env.config("failover");
    config.amqp_url = Secret(
        (proxies.iter())
            .map(|proxy| format!("amqp://guest:guest@{}/%2f", proxy.addr))
            .collect::<Vec<_>>()
            .join(","),
    );
    let node = TestNode::start(config).await?;
    // A second node straight on RabbitMQ, to show the failed-over node's sends reach others.
    let other = env.start_node("failover-other").await?;
    wait_connected_through(&node, &proxies[0]).await?;

    let mut sender = node.user("sender").await?;
    let (room, _) = sender.join("failover").await?;
    let mut local_reader = node.user("local-reader").await?;
    local_reader.join("failover").await?;
    let mut remote_reader = other.user("remote-reader").await?;
    remote_reader.join("failover").await?;

    let mut sent = Observed::default();
    let before = ids("before", 20);
    send_answered(&mut sender, &mut sent, room, &before).await?;
    assert!(before.iter().all(|id| sent.accepted.contains(id)));

    // The first broker dies: the node goes on through the second, then the second dies too and
    // it goes on through the third (round robin, starting after the one that failed).
    let mut expected: Vec<String> = before;
    let pairs = [(&proxies[0], &proxies[1]), (&proxies[1], &proxies[2])];
    for (round, pair) in pairs.into_iter().enumerate() {
        let burst = cut_during_a_burst(
            &node,
            &mut sender,
            &mut sent,
            room,
            pair,
            &format!("cut-{round}"),
        )
        .await?;
        let after = ids(&format!("after-{round}"), 20);
        send_answered(&mut sender, &mut sent, room, &after).await?;
        for id in &after {
            assert!(sent.accepted.contains(id), "{id} sent after the failover");
        }
        expected.extend(burst);
        expected.extend(after);
    }

    let stored = eventually("every send stored", || async {
        let stored = stored_messages(&env.db, room).await.ok()?;
        let ids: HashSet<&String> = stored.iter().map(|(_, id)| id).collect();
        expected.iter().all(|id| ids.contains(id)).then_some(stored)
    })
    .await?;
    assert_all_accepted_stored(&sent.accepted, &stored);
    assert_gapless("store", &stored);
    assert_eq!(
        stored.len(),
        expected.len(),
        "each send stored exactly once"
    );
    for reader in [&mut local_reader, &mut remote_reader] {
        let mut observed = Observed::default();
        reader
            .observe_until(&mut observed, |o| o.room_ids(room).len() >= stored.len())
            .await?;
        assert_eq!(observed.room_ids(room), stored, "delivered once, in order");
    }
    node.stop().await?;
    other.stop().await?;
    Ok(())
}
