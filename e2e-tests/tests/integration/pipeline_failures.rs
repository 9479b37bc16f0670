//! The delivery contract under failure: a node killed mid-stream, RabbitMQ cut away or not
//! answering, PostgreSQL cut away. Services are cut through a private TCP proxy, never stopped,
//! so tests beside these are not disturbed.

use chat_backend::config::Secret;
use chat_protocol::{ErrorCode, RoomId};
use e2e_tests::checks::{assert_all_accepted_stored, assert_gapless, stored_messages, Observed};
use e2e_tests::process::ProcessNode;
use e2e_tests::proxy::TcpProxy;
use e2e_tests::{eventually, TestEnv, WsClient};
use std::net::SocketAddr;

/// Sends `count` messages, then waits until each is answered: accepted or refused.
async fn send_answered(
    client: &mut WsClient,
    observed: &mut Observed,
    room: RoomId,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let ids = client.send_batch(room, prefix, count).await?;
    client
        .observe_until(observed, |o| answered(o, &ids))
        .await?;
    Ok(ids)
}

fn answered(observed: &Observed, ids: &[String]) -> bool {
    ids.iter()
        .all(|id| observed.accepted.contains(id) || observed.refused.contains_key(id))
}

async fn ready_status(addr: SocketAddr) -> Option<u16> {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .ok()
        .map(|response| response.status().as_u16())
}

/// Waits until everything accepted is stored, then until each receiver has seen the whole room,
/// and checks that every receiver saw exactly the stored order.
async fn assert_delivered_as_stored(
    env: &TestEnv,
    room: RoomId,
    accepted: &std::collections::HashSet<String>,
    receivers: &mut [(&mut WsClient, Observed)],
) -> anyhow::Result<()> {
    let stored = eventually("every accepted message stored", || async {
        let stored = stored_messages(&env.db, room).await.ok()?;
        let ids: std::collections::HashSet<&String> = stored.iter().map(|(_, id)| id).collect();
        accepted.iter().all(|id| ids.contains(id)).then_some(stored)
    })
    .await?;
    assert_all_accepted_stored(accepted, &stored);
    assert_gapless("store", &stored);
    for (client, observed) in receivers.iter_mut() {
        client
            .observe_until(observed, |o| o.room_ids(room).len() >= stored.len())
            .await?;
    }
    // Anything published but unanswered before a failure may have been stored meanwhile.
    let stored = stored_messages(&env.db, room).await?;
    for (index, (client, observed)) in receivers.iter_mut().enumerate() {
        client
            .observe_until(observed, |o| o.room_ids(room).len() >= stored.len())
            .await?;
        assert_eq!(observed.room_ids(room), stored, "receiver {index}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_stream_loses_nothing_it_accepted() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // Started first, the victim is the active persister of every shard: its death also tests
    // the hand-over of the shards to a surviving node.
    let mut victim = ProcessNode::start(&env.config("victim")).await?;
    let survivor_1 = ProcessNode::start(&env.config("survivor-1")).await?;
    let survivor_2 = ProcessNode::start(&env.config("survivor-2")).await?;

    let mut sender = victim.user("sender").await?;
    let (room, _) = sender.join("doomed").await?;
    let mut reader_1 = survivor_1.user("reader-1").await?;
    reader_1.join("doomed").await?;
    let mut reader_2 = survivor_2.user("reader-2").await?;
    reader_2.join("doomed").await?;

    let mut sent = Observed::default();
    send_answered(&mut sender, &mut sent, room, "before", 100).await?;
    assert_eq!(sent.accepted.len(), 100);
    // A second burst, and the node dies while it is in flight.
    sender.send_batch(room, "during", 100).await?;
    victim.kill()?;
    while let Ok(frame) = sender.recv().await {
        sent.record(frame);
    }

    let mut receivers = [
        (&mut reader_1, Observed::default()),
        (&mut reader_2, Observed::default()),
    ];
    assert_delivered_as_stored(&env, room, &sent.accepted, &mut receivers).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_outage_refuses_sends_then_recovers_without_loss() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let proxy = TcpProxy::start("127.0.0.1:5672").await?;
    let via_proxy = |node_id: &str| {
        let mut config = env.config(node_id);
        config.amqp_url = Secret(format!("amqp://guest:guest@{}/%2f", proxy.addr));
        config
    };
    let node_a = e2e_tests::TestNode::start(via_proxy("amqp-a")).await?;
    let node_b = e2e_tests::TestNode::start(via_proxy("amqp-b")).await?;
    let mut sender = node_a.user("sender").await?;
    let (room, _) = sender.join("outage").await?;
    let mut reader = node_b.user("reader").await?;
    reader.join("outage").await?;

    let mut sent = Observed::default();
    send_answered(&mut sender, &mut sent, room, "before", 50).await?;
    assert_eq!(sent.accepted.len(), 50);

    proxy.cut();
    eventually("node a not ready", || async {
        (ready_status(node_a.addr).await == Some(503)).then_some(())
    })
    .await?;
    let during = send_answered(&mut sender, &mut sent, room, "during", 10).await?;
    for id in &during {
        assert_eq!(
            sent.refused.get(id),
            Some(&ErrorCode::Unavailable),
            "{id} sent during the outage"
        );
    }

    proxy.restore();
    for node in [&node_a, &node_b] {
        eventually("node ready again", || async {
            (ready_status(node.addr).await == Some(200)).then_some(())
        })
        .await?;
    }
    let after = send_answered(&mut sender, &mut sent, room, "after", 50).await?;
    assert!(after.iter().all(|id| sent.accepted.contains(id)));

    let mut receivers = [(&mut reader, Observed::default())];
    assert_delivered_as_stored(&env, room, &sent.accepted, &mut receivers).await?;
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rabbitmq_that_stops_answering_gets_sends_refused_and_their_retries_stored_once(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let proxy = TcpProxy::start("127.0.0.1:5672").await?;
    let mut config = env.config("stalled");
    config.amqp_url = Secret(format!("amqp://guest:guest@{}/%2f", proxy.addr));
    let node = e2e_tests::TestNode::start(config).await?;
    let mut sender = node.user("sender").await?;
    let (room, _) = sender.join("stalled").await?;
    let mut reader = node.user("reader").await?;
    reader.join("stalled").await?;

    let mut sent = Observed::default();
    let before = send_answered(&mut sender, &mut sent, room, "before", 5).await?;
    assert!(before.iter().all(|id| sent.accepted.contains(id)));

    // The connection stays open, so the node still counts as connected: what refuses these
    // sends is their confirm not coming in time.
    proxy.stall();
    let during = send_answered(&mut sender, &mut sent, room, "during", 5).await?;
    for id in &during {
        assert_eq!(
            sent.refused.get(id),
            Some(&ErrorCode::Unavailable),
            "{id} sent while RabbitMQ did not answer"
        );
        assert!(
            !sent.accepted.contains(id),
            "{id} both refused and accepted"
        );
    }

    // What was held goes through now; the retries find the originals and are stored once.
    proxy.restore();
    for id in &during {
        sender.send_message(room, id, "during").await?;
    }
    sender
        .observe_until(&mut sent, |o| {
            during.iter().all(|id| o.accepted.contains(id))
        })
        .await?;

    let mut receivers = [(&mut reader, Observed::default())];
    assert_delivered_as_stored(&env, room, &sent.accepted, &mut receivers).await?;
    let stored = stored_messages(&env.db, room).await?;
    for id in &during {
        let copies = stored.iter().filter(|(_, stored)| stored == id).count();
        assert_eq!(copies, 1, "{id} stored {copies} times");
    }
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_keeps_accepting_and_stores_everything_in_order() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let proxy = TcpProxy::start("127.0.0.1:5432").await?;
    let via_proxy = |node_id: &str| {
        let mut config = env.config(node_id);
        config.database_url = Secret(env.db.url_through(proxy.addr));
        config
    };
    let node_a = e2e_tests::TestNode::start(via_proxy("pg-a")).await?;
    let node_b = e2e_tests::TestNode::start(via_proxy("pg-b")).await?;
    let mut sender = node_a.user("sender").await?;
    let (room, _) = sender.join("outage").await?;
    let mut reader = node_b.user("reader").await?;
    reader.join("outage").await?;

    let mut sent = Observed::default();
    let before = sender.send_batch(room, "before", 30).await?;
    sender
        .observe_until(&mut sent, |o| {
            before.iter().all(|id| o.stored.contains_key(id))
        })
        .await?;

    proxy.cut();
    let during = send_answered(&mut sender, &mut sent, room, "during", 30).await?;
    assert!(
        during.iter().all(|id| sent.accepted.contains(id)),
        "sends stay accepted while PostgreSQL is down: {:?}",
        sent.refused
    );
    assert_eq!(ready_status(node_a.addr).await, Some(503));
    let stored_meanwhile = stored_messages(&env.db, room).await?.len();
    assert_eq!(
        stored_meanwhile, 30,
        "nothing can be stored through the cut proxy"
    );

    proxy.restore();
    let mut receivers = [(&mut reader, Observed::default())];
    assert_delivered_as_stored(&env, room, &sent.accepted, &mut receivers).await?;
    assert_eq!(stored_messages(&env.db, room).await?.len(), 60);
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}
