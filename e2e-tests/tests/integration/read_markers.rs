//! Read markers and unread counts: synced to every connection of the user on every node, and
//! what an offline user finds when they come back.

use chat_protocol::api::{MessagePage, RoomList};
use chat_protocol::{ClientFrame, ErrorCode, RoomId, Seq, ServerFrame};
use e2e_tests::api::Api;
use e2e_tests::{TestEnv, WsClient};

async fn next_marker(client: &mut WsClient, room: RoomId) -> anyhow::Result<(i64, i64)> {
    client
        .recv_until(|frame| match frame {
            ServerFrame::ReadMarker {
                room_id,
                seq,
                unread,
            } if *room_id == room => Some((seq.0, *unread)),
            _ => None,
        })
        .await
}

/// (last_seq, last_read_seq, unread count) of a room in `GET /api/me/rooms`.
async fn unread(api: &Api, room: RoomId) -> anyhow::Result<(i64, i64, i64)> {
    let rooms: RoomList = api.get("/api/me/rooms").await?.into()?;
    let found = rooms
        .rooms
        .iter()
        .find(|r| r.room_id == room)
        .and_then(|r| r.unread)
        .ok_or_else(|| anyhow::anyhow!("room {room} has no read state"))?;
    Ok((found.last_seq.0, found.last_read_seq.0, found.count))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_markers_sync_across_connections_and_nodes() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("read-a").await?;
    let node_b = env.start_node("read-b").await?;
    let mut bob = node_a.user("bob").await?;
    let (room, _) = bob.join("reading").await?;
    // Ada has a tab on each node; the second never joins the room over WebSocket.
    let mut ada_a = node_a.user("ada").await?;
    ada_a.join("reading").await?;
    let ada_api = ada_a.api()?.clone();
    let mut ada_b = WsClient::connect_as(&node_b.ws_url(), ada_api.clone()).await?;

    for n in 1..=5 {
        bob.send_message(room, &format!("b{n}"), &format!("news {n}"))
            .await?;
    }
    for _ in 0..5 {
        ada_a.next_message(room).await?;
    }
    // Bob's own messages are not unread for him; all five are for ada.
    assert_eq!(unread(&ada_api, room).await?, (5, 0, 5));
    assert_eq!(unread(bob.api()?, room).await?, (5, 0, 0));

    ada_a
        .send(&ClientFrame::MarkRead {
            room_id: room,
            seq: Seq(3),
        })
        .await?;
    assert_eq!(next_marker(&mut ada_a, room).await?, (3, 2));
    assert_eq!(next_marker(&mut ada_b, room).await?, (3, 2));
    assert_eq!(unread(&ada_api, room).await?, (5, 3, 2));

    // Markers never move back, and never past the newest message.
    ada_b
        .send(&ClientFrame::MarkRead {
            room_id: room,
            seq: Seq(1),
        })
        .await?;
    assert_eq!(next_marker(&mut ada_b, room).await?, (3, 2));
    ada_b
        .send(&ClientFrame::MarkRead {
            room_id: room,
            seq: Seq(1_000),
        })
        .await?;
    assert_eq!(next_marker(&mut ada_b, room).await?, (5, 0));
    assert_eq!(next_marker(&mut ada_a, room).await?, (3, 2));
    assert_eq!(next_marker(&mut ada_a, room).await?, (5, 0));

    // Offline: ada closes both tabs, bob writes on; back, she sees the count and reads it.
    drop(ada_a);
    drop(ada_b);
    for n in 6..=8 {
        bob.send_message(room, &format!("b{n}"), &format!("news {n}"))
            .await?;
    }
    bob.recv_until(|frame| match frame {
        ServerFrame::Message(message) if message.seq == Seq(8) => Some(()),
        _ => None,
    })
    .await?;
    let (last_seq, last_read, count) = unread(&ada_api, room).await?;
    assert_eq!((last_seq, last_read, count), (8, 5, 3));
    let missed: MessagePage = ada_api
        .get(&format!("/api/rooms/{room}/messages?after={last_read}"))
        .await?
        .into()?;
    let seqs: Vec<i64> = missed.messages.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, vec![6, 7, 8]);

    // Not a member: refused, nothing moves.
    let mut eve = node_b.user("eve").await?;
    eve.send(&ClientFrame::MarkRead {
        room_id: room,
        seq: Seq(8),
    })
    .await?;
    let code = eve
        .recv_until(|frame| match frame {
            ServerFrame::Error { code, .. } => Some(*code),
            _ => None,
        })
        .await?;
    assert_eq!(code, ErrorCode::NotMember);
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_has_read_what_the_room_held_before_they_came() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("newcomer").await?;
    let mut bob = node.user("bob").await?;
    let (room, _) = bob.join("lobby").await?;
    for n in 1..=3 {
        bob.send_message(room, &format!("b{n}"), &format!("before {n}"))
            .await?;
    }
    for _ in 0..3 {
        bob.recv_until(|frame| matches!(frame, ServerFrame::Stored { .. }).then_some(()))
            .await?;
    }

    // Carol joins after three messages: none of them is unread for her, the next one is.
    let mut carol = node.user("carol").await?;
    carol.join("lobby").await?;
    let carol_api = carol.api()?.clone();
    assert_eq!(unread(&carol_api, room).await?, (3, 3, 0));
    bob.send_message(room, "b4", "after").await?;
    carol.next_message(room).await?;
    assert_eq!(unread(&carol_api, room).await?, (4, 3, 1));
    Ok(())
}

/// A room with 100,000 messages its member has not read: the room list still answers, with the
/// count stopped at the cap, and the plan behind it stops scanning `messages` there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unread_counts_stop_at_the_cap_whatever_the_backlog() -> anyhow::Result<()> {
    use chat_backend::store::READ_STATES_SQL;
    use chat_protocol::limits::MAX_UNREAD_COUNT;
    use diesel::sql_types::{BigInt, Text};
    use diesel::RunQueryDsl;

    const BACKLOG: i64 = 100_000;
    let env = TestEnv::new().await?;
    let node = env.start_node("unread-cap").await?;
    let ada = node.sign_in("ada").await?;
    let bob = node.sign_in("bob").await?;
    let room = ada.public_room("backlog").await?;
    let joined = bob.post_empty(&format!("/api/rooms/{room}/join")).await?;
    anyhow::ensure!(joined.status == 200, "{} {}", joined.status, joined.body);

    // Ada's messages, written straight into the table as a persister would have stored them.
    let bob_id = env
        .db
        .with_conn(move |conn| {
            #[derive(diesel::QueryableByName)]
            struct Id {
                #[diesel(sql_type = BigInt)]
                id: i64,
            }
            diesel::sql_query(
                "INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, sent_at) \
                 SELECT $1, n, (SELECT id FROM users WHERE username = 'ada'), 'bulk-' || n, \
                        'message ' || n, now() \
                 FROM generate_series(1, $2) n",
            )
            .bind::<BigInt, _>(room.0)
            .bind::<BigInt, _>(BACKLOG)
            .execute(conn)?;
            diesel::sql_query("UPDATE rooms SET last_seq = $2 WHERE id = $1")
                .bind::<BigInt, _>(room.0)
                .bind::<BigInt, _>(BACKLOG)
                .execute(conn)?;
            diesel::sql_query("ANALYZE messages").execute(conn)?;
            let bob = diesel::sql_query("SELECT id FROM users WHERE username = 'bob'")
                .get_result::<Id>(conn)?;
            Ok(bob.id)
        })
        .await?;

    assert_eq!(
        unread(&bob, room).await?,
        (BACKLOG, 0, MAX_UNREAD_COUNT),
        "the count stops at the cap"
    );

    // The plan: the count reads at most the cap's rows of `messages` per room.
    let plan = env
        .db
        .with_conn(move |conn| {
            #[derive(diesel::QueryableByName)]
            struct Line {
                #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
                line: String,
            }
            let lines = diesel::sql_query(format!("EXPLAIN ANALYZE {READ_STATES_SQL}"))
                .bind::<BigInt, _>(bob_id)
                .bind::<BigInt, _>(MAX_UNREAD_COUNT)
                .load::<Line>(conn)?;
            Ok(lines
                .into_iter()
                .map(|l| l.line)
                .collect::<Vec<_>>()
                .join("\n"))
        })
        .await?;
    let scan = plan
        .lines()
        .find(|line| line.contains("on messages"))
        .ok_or_else(|| anyhow::anyhow!("no scan of messages in\n{plan}"))?;
    anyhow::ensure!(
        scan.contains(&format!("rows={MAX_UNREAD_COUNT} ")),
        "the scan of messages reads more than the cap:\n{plan}"
    );
    anyhow::ensure!(plan.contains("Limit"), "no limit in\n{plan}");

    // Below the cap the count is exact again.
    let mut bob_ws = WsClient::connect_as(&node.ws_url(), bob.clone()).await?;
    bob_ws
        .send(&ClientFrame::MarkRead {
            room_id: room,
            seq: Seq(BACKLOG - 5),
        })
        .await?;
    assert_eq!(next_marker(&mut bob_ws, room).await?, (BACKLOG - 5, 5));
    assert_eq!(unread(&bob, room).await?, (BACKLOG, BACKLOG - 5, 5));
    drop(bob_ws);
    node.stop().await
}
