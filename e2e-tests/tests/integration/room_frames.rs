//! Room-scoped frames act only in rooms the connection follows and the user is a member of,
//! every one of them is answered as docs/PROTOCOL.md says, and a membership that ends without
//! any node hearing of it ends the room on every connection within the re-check interval.

use anyhow::ensure;
use chat_protocol::{ClientFrame, ClientMsgId, ErrorCode, RoomId, Seq, ServerFrame};
use diesel::sql_types::BigInt;
use diesel::RunQueryDsl;
use e2e_tests::{TestDb, TestEnv, WsClient};
use serde_json::json;

/// The answer to the frame just sent: the code of an error, or the type of another frame
/// (what others do, and what answers an earlier send, are skipped).
async fn answer(client: &mut WsClient) -> anyhow::Result<String> {
    client
        .recv_until(|frame| match frame {
            ServerFrame::Error { code, .. } => Some(code.as_str().to_owned()),
            ServerFrame::Typing { .. }
            | ServerFrame::Presence { .. }
            | ServerFrame::Accepted { .. }
            | ServerFrame::Stored { .. }
            | ServerFrame::Message(_)
            | ServerFrame::RoomActivity { .. }
            | ServerFrame::RoomsChanged => None,
            other => Some(type_of(other)),
        })
        .await
}

fn type_of(frame: &ServerFrame) -> String {
    serde_json::to_value(frame)
        .ok()
        .and_then(|value| value["type"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Waits for `left` for `room`.
async fn left(client: &mut WsClient, room: RoomId) -> anyhow::Result<()> {
    client
        .recv_until(|frame| match frame {
            ServerFrame::Left { room_id } if *room_id == room => Some(()),
            _ => None,
        })
        .await
}

/// The bodies of a room's messages as history shows them.
async fn history_bodies(client: &WsClient, room: RoomId) -> anyhow::Result<Vec<String>> {
    let page = client
        .api()?
        .get(&format!("/api/rooms/{room}/messages"))
        .await?;
    Ok(page.body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .map(|m| m["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default())
}

async fn delete_membership(db: &TestDb, room: RoomId, user: i64) -> anyhow::Result<usize> {
    db.with_conn(move |conn| {
        Ok(
            diesel::sql_query("DELETE FROM memberships WHERE room_id = $1 AND user_id = $2")
                .bind::<BigInt, _>(room.0)
                .bind::<BigInt, _>(user)
                .execute(conn)?,
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_room_scoped_frame_gets_its_documented_answer() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("answers").await?;
    let mut ada = node.user("ada").await?;
    let (joined, _) = ada.join("joined").await?;
    ada.send_message(joined, "a1", "first").await?;
    ada.next_message(joined).await?;
    // A room ada is a member of but has not joined on this connection, and one she is not in.
    let member_only = ada.api()?.public_room("member-only").await?;
    ada.api()?
        .post_empty(&format!("/api/rooms/{member_only}/join"))
        .await?;
    let mut bob = node.user("bob").await?;
    let (strangers, _) = bob.join("bobs-room").await?;

    let id = |text: &str| ClientMsgId(text.into());
    let cases: Vec<(ClientFrame, &str)> = vec![
        (
            ClientFrame::Typing {
                room_id: member_only,
            },
            "not_joined",
        ),
        (ClientFrame::Typing { room_id: strangers }, "not_joined"),
        (
            ClientFrame::Send {
                room_id: member_only,
                client_msg_id: id("s1"),
                body: "x".into(),
            },
            "not_joined",
        ),
        (
            ClientFrame::Edit {
                room_id: member_only,
                seq: Seq(1),
                body: "x".into(),
            },
            "not_joined",
        ),
        (
            ClientFrame::Delete {
                room_id: member_only,
                seq: Seq(1),
            },
            "not_joined",
        ),
        (
            ClientFrame::Leave {
                room_id: member_only,
            },
            "not_joined",
        ),
        (
            ClientFrame::Join {
                room_id: strangers,
                after: None,
            },
            "not_member",
        ),
        (
            ClientFrame::MarkRead {
                room_id: strangers,
                seq: Seq(1),
            },
            "not_member",
        ),
        (
            ClientFrame::MarkRead {
                room_id: member_only,
                seq: Seq(0),
            },
            "read_marker",
        ),
        (
            ClientFrame::Edit {
                room_id: joined,
                seq: Seq(1),
                body: "first, fixed".into(),
            },
            "message_edited",
        ),
        (
            ClientFrame::Delete {
                room_id: joined,
                seq: Seq(9),
            },
            "message_not_found",
        ),
        (ClientFrame::Leave { room_id: joined }, "left"),
        (
            ClientFrame::Delete {
                room_id: joined,
                seq: Seq(1),
            },
            "not_joined",
        ),
    ];
    for (frame, expected) in cases {
        ada.send(&frame).await?;
        let got = answer(&mut ada).await?;
        assert_eq!(got, expected, "answer to {frame:?}");
    }
    // Nothing refused was applied: the message is there, edited once, not deleted.
    assert_eq!(history_bodies(&ada, joined).await?, vec!["first, fixed"]);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_from_a_connection_that_has_not_joined_is_refused_and_not_applied(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("change-unjoined").await?;
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("edits").await?;
    ada.send_message(room, "a1", "original").await?;
    ada.next_message(room).await?;
    // A second tab of ada's that has not joined the room.
    let mut tab = WsClient::connect_as(&node.ws_url(), ada.api()?.clone()).await?;
    tab.send(&ClientFrame::Edit {
        room_id: room,
        seq: Seq(1),
        body: "changed".into(),
    })
    .await?;
    assert_eq!(answer(&mut tab).await?, "not_joined");
    tab.send(&ClientFrame::Delete {
        room_id: room,
        seq: Seq(1),
    })
    .await?;
    assert_eq!(answer(&mut tab).await?, "not_joined");
    assert_eq!(history_bodies(&ada, room).await?, vec!["original"]);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_who_left_can_no_longer_type_into_the_room_on_any_node() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("left-typing-a").await?;
    let node_b = env.start_node("left-typing-b").await?;
    let mut ada = node_a.user("ada").await?;
    let created = ada
        .api()?
        .post(
            "/api/rooms",
            json!({"name": "secret", "visibility": "private"}),
        )
        .await?;
    ensure!(created.status == 201, "room not created: {}", created.body);
    let room = RoomId(created.body["room_id"].as_i64().unwrap_or_default());
    for name in ["bob", "cy"] {
        node_a.sign_in(name).await?;
        let invited = ada
            .api()?
            .post(
                &format!("/api/rooms/{room}/invite"),
                json!({"username": name}),
            )
            .await?;
        ensure!(
            invited.status == 204,
            "{name} not invited: {}",
            invited.body
        );
    }
    ada.subscribe(room).await?;
    let mut bob = node_b.user("bob").await?;
    bob.subscribe(room).await?;
    let mut cy = node_b.user("cy").await?;
    cy.subscribe(room).await?;

    // Bob leaves over REST on node A; his socket on node B hears of it.
    let leave = node_a
        .sign_in("bob")
        .await?
        .post_empty(&format!("/api/rooms/{room}/leave"))
        .await?;
    ensure!(leave.status == 204, "leave failed: {}", leave.body);
    left(&mut bob, room).await?;
    bob.send(&ClientFrame::Typing { room_id: room }).await?;
    assert_eq!(answer(&mut bob).await?, "not_member");
    bob.send(&ClientFrame::Typing { room_id: room }).await?;
    assert_eq!(answer(&mut bob).await?, "not_joined");

    // Ada sees cy typing, and never bob.
    cy.send(&ClientFrame::Typing { room_id: room }).await?;
    let typist = ada
        .recv_until(|frame| match frame {
            ServerFrame::Typing { name, .. } => Some(name.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(typist, "cy");
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_membership_removed_without_notice_ends_the_room_on_every_node() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut nodes = Vec::new();
    for name in ["lost-notice-a", "lost-notice-b"] {
        let mut config = env.config(name);
        config.membership_recheck_ms = 300;
        nodes.push(e2e_tests::TestNode::start(config).await?);
    }
    let mut ada_a = nodes[0].user("ada").await?;
    let (room, _) = ada_a.join("quietly-removed").await?;
    let mut ada_b =
        WsClient::connect_as(&nodes[1].ws_url(), nodes[1].sign_in("ada").await?).await?;
    ada_b.subscribe(room).await?;
    let mut bob = nodes[1].user("bob").await?;
    bob.join("quietly-removed").await?;

    // Removed in the database by hand: no node hears of it.
    assert_eq!(
        delete_membership(&env.db, room, ada_a.user_id()?.0).await?,
        1
    );
    left(&mut ada_a, room).await?;
    left(&mut ada_b, room).await?;

    // Nothing of the room reaches ada any more; her frames into it are refused.
    bob.send_message(room, "b1", "after ada left").await?;
    bob.next_message(room).await?;
    for ada in [&mut ada_a, &mut ada_b] {
        ada.send(&ClientFrame::Typing { room_id: room }).await?;
        let got = ada
            .recv_until(|frame| match frame {
                ServerFrame::Message(message) => Some(format!("message {}", message.body)),
                ServerFrame::Error { code, .. } => Some(code.as_str().to_owned()),
                _ => None,
            })
            .await?;
        assert_eq!(got, ErrorCode::NotMember.as_str());
    }
    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}
