//! A room whose missed messages are being read from PostgreSQL holds only itself: while the
//! store does not answer, the node's other rooms are delivered live, and once it answers the
//! waiting room gets its missed messages and then the held ones, in order, each once.

use chat_backend::config::Secret;
use chat_backend::store::{SeqCounters, Store};
use chat_protocol::bus::{IngestMessage, Origin};
use chat_protocol::{ClientMsgId, RoomId, UserId};
use e2e_tests::proxy::TcpProxy;
use e2e_tests::{TestEnv, TestNode};

/// A message stored straight into PostgreSQL, never published: the receiving node's queue
/// misses it, so the room's next delivery there finds a gap.
fn unpublished(room_id: RoomId, sender_id: UserId) -> IngestMessage {
    IngestMessage {
        room_id,
        sender_id,
        sender_name: "ada".into(),
        client_msg_id: ClientMsgId("stored-behind-the-queue".into()),
        body: "missed by the queue".into(),
        sent_at_ms: chrono::Utc::now().timestamp_millis(),
        origin: Origin {
            node_id: "elsewhere".into(),
            conn_id: 1,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gap_read_from_a_stalled_store_holds_only_its_room() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // One shard, never handed over: node-1, started first, persists everything, so a stalled
    // store on node-2 only stalls node-2's reads.
    let mut config = env.config("node-1");
    config.ingest_shards = 1;
    config.shard_balance_ms = 0;
    let sender_node = TestNode::start(config).await?;
    let proxy = TcpProxy::start("127.0.0.1:5432").await?;
    let mut config = env.config("node-2");
    config.ingest_shards = 1;
    config.shard_balance_ms = 0;
    config.database_url = Secret(env.db.url_through(proxy.addr));
    let receiver_node = TestNode::start(config).await?;

    let mut ada = sender_node.user("ada").await?;
    let mut bob = receiver_node.user("bob").await?;
    let (quiet, _) = ada.join("gap").await?;
    let (busy, _) = ada.join("live").await?;
    bob.join("gap").await?;
    bob.join("live").await?;

    let store = Store::new(&env.db.url, 2, 1);
    store
        .persist_batch(
            vec![unpublished(quiet, ada.user_id()?)],
            SeqCounters::default(),
        )
        .await?;

    proxy.stall();
    ada.send_message(quiet, "after-the-gap", "after the gap")
        .await?;
    // The gap read for `quiet` now waits on the stalled store; `live` must not wait with it.
    for n in 1..=3 {
        ada.send_message(busy, &format!("live-{n}"), &format!("live {n}"))
            .await?;
        let message = bob.next_message(busy).await?;
        assert_eq!(message.body, format!("live {n}"));
    }

    proxy.restore();
    let missed = bob.next_message(quiet).await?;
    let held = bob.next_message(quiet).await?;
    assert_eq!(
        (missed.seq.0, missed.body.as_str()),
        (1, "missed by the queue")
    );
    assert_eq!((held.seq.0, held.body.as_str()), (2, "after the gap"));
    Ok(())
}
