//! Ingest publishes are paced: the sends a node reads within one interval after a publish go to
//! RabbitMQ together as one persistent message, in their order; after a busy publish (many
//! sends) the next waits out the longer busy interval.

use chat_backend::bus::BUSY_SENDS;
use chat_protocol::ServerFrame;
use e2e_tests::{TestEnv, TestNode};

const FOLLOWERS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sends_of_one_interval_share_one_ingest_publish_in_their_order() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("paced");
    // Long enough that twenty sends written at once are all read within it on any machine,
    // and well within the clients' deadline.
    config.ingest_interval_ms = 3_000;
    let node = TestNode::start(config).await?;
    let operator = node.api();
    let mut alice = node.user("alice").await?;
    let (room, _) = alice.join("paced").await?;

    // Nothing was published before: the first send goes out alone.
    alice.send_message(room, "first", "first").await?;
    accepted(&mut alice, 1).await?;
    assert_eq!(
        operator.metric("chat_ingest_publish_sends_count").await?,
        1.0
    );

    // Twenty more, written at once, reach the node within the interval after that publish.
    for index in 0..FOLLOWERS {
        alice
            .send_message(room, &format!("follower-{index}"), &format!("{index}"))
            .await?;
    }
    let mut bodies = Vec::new();
    while bodies.len() < FOLLOWERS + 1 {
        bodies.push(alice.next_message(room).await?.body);
    }
    let expected: Vec<String> = std::iter::once("first".to_owned())
        .chain((0..FOLLOWERS).map(|index| index.to_string()))
        .collect();
    assert_eq!(bodies, expected, "stored and delivered in the order sent");
    assert_eq!(
        operator.metric("chat_ingest_publish_sends_count").await?,
        2.0,
        "the twenty shared one publish"
    );
    assert_eq!(
        operator.metric("chat_ingest_publish_sends_sum").await?,
        (FOLLOWERS + 1) as f64
    );
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_busy_publish_the_next_waits_out_the_busy_interval() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("busy");
    // Both well within the 5 s in which a send's confirm must come.
    config.ingest_interval_ms = 500;
    config.ingest_busy_interval_ms = 4_000;
    let node = TestNode::start(config).await?;
    let operator = node.api();
    let mut alice = node.user("alice").await?;
    let (room, _) = alice.join("busy").await?;

    // A publish of one send (not busy), then the sends written at once share the next one,
    // an interval later: that publish is busy.
    alice.send_message(room, "first", "first").await?;
    accepted(&mut alice, 1).await?;
    for index in 0..BUSY_SENDS {
        alice
            .send_message(room, &format!("burst-{index}"), &format!("{index}"))
            .await?;
    }
    accepted(&mut alice, BUSY_SENDS).await?;
    assert_eq!(
        operator.metric("chat_ingest_publish_sends_count").await?,
        2.0
    );

    // A send right after it is published the busy interval after it, not the interval. The
    // lower bound leaves the time between that publish and this send (its confirm, one frame)
    // a margin of more than a second; an interval-paced publisher would take half a second.
    let written = std::time::Instant::now();
    alice.send_message(room, "after", "after").await?;
    accepted(&mut alice, 1).await?;
    let waited = written.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(2_500),
        "published {waited:?} after the busy publish's confirm"
    );
    assert_eq!(
        operator.metric("chat_ingest_publish_sends_count").await?,
        3.0
    );
    node.stop().await?;
    Ok(())
}

/// Reads frames until `count` sends were accepted.
async fn accepted(client: &mut e2e_tests::WsClient, count: usize) -> anyhow::Result<()> {
    for _ in 0..count {
        client
            .recv_until(|frame| matches!(frame, ServerFrame::Accepted { .. }).then_some(()))
            .await?;
    }
    Ok(())
}
