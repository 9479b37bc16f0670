//! The walking skeleton: a message crosses from a client on one node to a client on another.

use chat_backend::config::BusFormat;
use chat_protocol::{RoomId, ServerFrame};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use e2e_tests::checks::Observed;
use e2e_tests::{TestEnv, TestNode};

#[derive(QueryableByName, Debug, PartialEq)]
struct Row {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    body: String,
    #[diesel(sql_type = Text)]
    client_msg_id: String,
}

async fn stored_rows(env: &TestEnv, room: RoomId) -> anyhow::Result<Vec<Row>> {
    env.db
        .with_conn(move |conn| {
            Ok(diesel::sql_query(
                "SELECT seq, body, client_msg_id FROM messages WHERE room_id = $1 ORDER BY seq",
            )
            .bind::<BigInt, _>(room.0)
            .load::<Row>(conn)?)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_crosses_two_nodes_and_is_stored_in_order() -> anyhow::Result<()> {
    crosses_two_nodes(BusFormat::Binary).await
}

/// The format a deployment upgrading from nodes older than the binary layout runs with.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_json_batches_on_the_bus_a_message_crosses_two_nodes_the_same() -> anyhow::Result<()> {
    crosses_two_nodes(BusFormat::Json).await
}

async fn crosses_two_nodes(format: BusFormat) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = |id: &str| {
        let mut config = env.config(id);
        config.bus_format = format;
        TestNode::start(config)
    };
    let node_a = node("a").await?;
    let node_b = node("b").await?;

    let mut ada = node_a.user("ada").await?;
    let (room, last_seq) = ada.join("general").await?;
    assert_eq!(last_seq.0, 0);
    let mut bob = node_b.user("bob").await?;
    let (bobs_room, _) = bob.join("general").await?;
    assert_eq!(
        bobs_room, room,
        "both nodes resolve the room name to one room"
    );

    ada.send_message(room, "ada-1", "hello from node a").await?;
    // RabbitMQ's confirm (`accepted`) and the delivery of the stored message race: a client
    // gets both, in either order.
    let mut own = Observed::default();
    ada.observe_until(&mut own, |seen| {
        (seen.accepted.contains("ada-1") && !seen.messages.is_empty()) || !seen.refused.is_empty()
    })
    .await?;
    assert!(own.refused.is_empty(), "the send was refused: {own:?}");
    let received = bob.next_message(room).await?;
    assert_eq!(received.seq.0, 1);
    assert_eq!(received.body, "hello from node a");
    assert_eq!(received.sender_name, "ada");
    assert_eq!(received.client_msg_id.0, "ada-1");
    assert_eq!(
        own.room_ids(room),
        vec![(1, "ada-1".to_owned())],
        "the sender sees its own message with the same sequence"
    );

    bob.send_message(room, "bob-1", "and back from node b")
        .await?;
    let on_a = ada.next_message(room).await?;
    let on_b = bob.next_message(room).await?;
    assert_eq!((on_a.seq.0, on_b.seq.0), (2, 2));
    assert_eq!(on_a.body, "and back from node b");

    assert_eq!(
        stored_rows(&env, room).await?,
        vec![
            Row {
                seq: 1,
                body: "hello from node a".into(),
                client_msg_id: "ada-1".into()
            },
            Row {
                seq: 2,
                body: "and back from node b".into(),
                client_msg_id: "bob-1".into()
            },
        ]
    );

    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sender_learns_the_sequence_and_a_resend_is_stored_once() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("solo").await?;
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("dedup").await?;

    ada.send_message(room, "same-id", "only once").await?;
    let first = ada
        .recv_until(|frame| match frame {
            ServerFrame::Stored { seq, duplicate, .. } => Some((*seq, *duplicate)),
            _ => None,
        })
        .await?;
    assert_eq!((first.0 .0, first.1), (1, false));
    assert_eq!(ada.next_message(room).await?.seq.0, 1);

    ada.send_message(room, "same-id", "only once").await?;
    let second = ada
        .recv_until(|frame| match frame {
            ServerFrame::Stored { seq, duplicate, .. } => Some((*seq, *duplicate)),
            ServerFrame::Message(message) => panic!("a resend was delivered again: {message:?}"),
            _ => None,
        })
        .await?;
    assert_eq!((second.0 .0, second.1), (1, true));
    assert_eq!(stored_rows(&env, room).await?.len(), 1);
    node.stop().await?;
    Ok(())
}
