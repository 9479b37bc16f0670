//! Rooms over REST: create, search, join, invite, leave, members, history, direct messages;
//! and what users type, stored and returned verbatim.

use chat_protocol::{RoomId, ServerFrame};
use e2e_tests::TestEnv;
use serde_json::{json, Value};

fn room_id(body: &Value) -> RoomId {
    RoomId(body["room_id"].as_i64().unwrap_or(-1))
}

fn names(body: &Value, list: &str, field: &str) -> Vec<String> {
    body[list]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| item[field].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_rooms_are_created_found_joined_and_left() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("rooms").await?;
    let ada = node.sign_in("ada").await?;
    let bob = node.sign_in("bob").await?;

    let created = ada
        .post(
            "/api/rooms",
            json!({"name": "General Chat", "visibility": "public"}),
        )
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["role"], "owner");
    assert_eq!(created.body["kind"], "public");
    let general = room_id(&created.body);

    ada.post(
        "/api/rooms",
        json!({"name": "General Chat", "visibility": "public"}),
    )
    .await?
    .expect_error(409, "room_name_taken")?;
    // A private room may share a public room's name: names of private rooms reveal nothing.
    let private = ada
        .post(
            "/api/rooms",
            json!({"name": "General Chat", "visibility": "private"}),
        )
        .await?;
    assert_eq!(private.status, 201);
    ada.post(
        "/api/rooms",
        json!({"name": "r".repeat(65), "visibility": "public"}),
    )
    .await?
    .expect_error(400, "invalid_room_name")?;
    ada.post("/api/rooms", json!({"name": "  ", "visibility": "public"}))
        .await?
        .expect_error(400, "invalid_room_name")?;
    ada.post("/api/rooms", json!({"name": "dm", "visibility": "direct"}))
        .await?
        .expect_error(400, "invalid_visibility")?;
    ada.post("/api/rooms", json!({"name": "x", "visibility": "secret"}))
        .await?
        .expect_error(400, "invalid_visibility")?;
    ada.post("/api/rooms", json!({"name": "x", "visibility": 1}))
        .await?
        .expect_error(400, "bad_request")?;
    ada.post("/api/rooms", json!({"name": "x"}))
        .await?
        .expect_error(400, "bad_request")?;

    // Search is by substring, any case, public rooms only; LIKE wildcards are literal.
    ada.post(
        "/api/rooms",
        json!({"name": "random", "visibility": "public"}),
    )
    .await?;
    let found = bob.get("/api/rooms?q=general").await?;
    assert_eq!(names(&found.body, "rooms", "name"), vec!["General Chat"]);
    assert!(found.body["rooms"][0].get("role").is_none());
    assert_eq!(
        names(&bob.get("/api/rooms").await?.body, "rooms", "name"),
        vec!["General Chat", "random"]
    );
    assert!(names(&bob.get("/api/rooms?q=%25").await?.body, "rooms", "name").is_empty());
    bob.get("/api/rooms?limit=many")
        .await?
        .expect_error(400, "bad_request")?;

    // Joining is idempotent; members carry their roles.
    let joined = bob
        .post_empty(&format!("/api/rooms/{general}/join"))
        .await?;
    assert_eq!(
        (joined.status, joined.body["role"].as_str()),
        (200, Some("member"))
    );
    assert_eq!(
        bob.post_empty(&format!("/api/rooms/{general}/join"))
            .await?
            .status,
        200
    );
    let members = bob.get(&format!("/api/rooms/{general}/members")).await?;
    assert_eq!(
        names(&members.body, "members", "username"),
        vec!["ada", "bob"]
    );
    assert_eq!(
        names(&members.body, "members", "role"),
        vec!["owner", "member"]
    );
    assert_eq!(
        names(&bob.get("/api/me/rooms").await?.body, "rooms", "name"),
        vec!["General Chat"]
    );

    let left = bob
        .post_empty(&format!("/api/rooms/{general}/leave"))
        .await?;
    assert_eq!(left.status, 204);
    bob.post_empty(&format!("/api/rooms/{general}/leave"))
        .await?
        .expect_error(403, "not_member")?;
    bob.get(&format!("/api/rooms/{general}/members"))
        .await?
        .expect_error(403, "not_member")?;
    assert!(names(&bob.get("/api/me/rooms").await?.body, "rooms", "name").is_empty());
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_rooms_are_entered_by_invitation_only() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("private").await?;
    let ada = node.sign_in("ada").await?;
    let bob = node.sign_in("bob").await?;
    let carol = node.sign_in("carol").await?;
    let secret = room_id(
        &ada.post(
            "/api/rooms",
            json!({"name": "secret", "visibility": "private"}),
        )
        .await?
        .body,
    );

    bob.get(&format!("/api/rooms/{secret}"))
        .await?
        .expect_error(404, "room_not_found")?;
    bob.post_empty(&format!("/api/rooms/{secret}/join"))
        .await?
        .expect_error(404, "room_not_found")?;
    assert!(names(&bob.get("/api/rooms?q=secret").await?.body, "rooms", "name").is_empty());

    ada.post(
        &format!("/api/rooms/{secret}/invite"),
        json!({"username": "nobody"}),
    )
    .await?
    .expect_error(404, "user_not_found")?;
    carol
        .post(
            &format!("/api/rooms/{secret}/invite"),
            json!({"username": "carol"}),
        )
        .await?
        .expect_error(404, "room_not_found")?;
    let invited = ada
        .post(
            &format!("/api/rooms/{secret}/invite"),
            json!({"username": "bob"}),
        )
        .await?;
    assert_eq!(invited.status, 204, "{:?}", invited.body);
    let seen = bob.get(&format!("/api/rooms/{secret}")).await?;
    assert_eq!(
        (seen.body["name"].as_str(), seen.body["role"].as_str()),
        (Some("secret"), Some("member"))
    );

    // A member talks in it over the WebSocket; history has it too.
    let mut bob_ws = node.user("bob").await?;
    bob_ws.subscribe(secret).await?;
    bob_ws.send_message(secret, "b1", "psst").await?;
    assert_eq!(bob_ws.next_message(secret).await?.body, "psst");
    let history = ada.get(&format!("/api/rooms/{secret}/messages")).await?;
    assert_eq!(names(&history.body, "messages", "body"), vec!["psst"]);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_rooms_are_one_per_pair() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("direct").await?;
    let ada = node.sign_in("ada").await?;
    let bob = node.sign_in("bob").await?;
    let carol = node.sign_in("carol").await?;

    let first = ada.post("/api/direct", json!({"username": "bob"})).await?;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["kind"], "direct");
    assert_eq!(first.body["name"], "ada & bob");
    let dm = room_id(&first.body);
    assert_eq!(
        room_id(
            &ada.post("/api/direct", json!({"username": "bob"}))
                .await?
                .body
        ),
        dm
    );
    assert_eq!(
        room_id(
            &bob.post("/api/direct", json!({"username": "ada"}))
                .await?
                .body
        ),
        dm
    );
    ada.post("/api/direct", json!({"username": "ada"}))
        .await?
        .expect_error(400, "cannot_message_self")?;
    ada.post("/api/direct", json!({"username": "nobody"}))
        .await?
        .expect_error(404, "user_not_found")?;
    ada.post(
        &format!("/api/rooms/{dm}/invite"),
        json!({"username": "carol"}),
    )
    .await?
    .expect_error(403, "not_allowed")?;
    carol
        .get(&format!("/api/rooms/{dm}"))
        .await?
        .expect_error(404, "room_not_found")?;
    carol
        .post_empty(&format!("/api/rooms/{dm}/join"))
        .await?
        .expect_error(404, "room_not_found")?;

    let mut ada_ws = node.user("ada").await?;
    let mut bob_ws = node.user("bob").await?;
    ada_ws.subscribe(dm).await?;
    bob_ws.subscribe(dm).await?;
    ada_ws.send_message(dm, "a1", "hi bob").await?;
    assert_eq!(bob_ws.next_message(dm).await?.body, "hi bob");
    let members = bob.get(&format!("/api/rooms/{dm}/members")).await?;
    assert_eq!(
        names(&members.body, "members", "username"),
        vec!["ada", "bob"]
    );
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_users_type_is_stored_and_returned_verbatim() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("verbatim").await?;
    let ada = node.sign_in("ada").await?;
    let nasty_room = "Robert'); DROP TABLE rooms;-- <b>%_\\";
    let created = ada
        .post(
            "/api/rooms",
            json!({"name": nasty_room, "visibility": "public"}),
        )
        .await?;
    assert_eq!(created.body["name"], nasty_room);
    let room = room_id(&created.body);
    let found = ada.get(&format!("/api/rooms/{room}")).await?;
    assert_eq!(found.body["name"], nasty_room);

    let mut ws = node.user("ada").await?;
    ws.subscribe(room).await?;
    let bodies = [
        "'; DROP TABLE messages; --",
        "<script>alert(1)</script>",
        "\u{202e} right-to-left \u{1F600}",
        "{\"type\":\"send\"}",
    ];
    for (index, body) in bodies.iter().enumerate() {
        ws.send_message(room, &format!("m{index}"), body).await?;
        assert_eq!(ws.next_message(room).await?.body, *body);
    }
    // PostgreSQL text cannot hold NUL, so it is refused at the edge instead of failing later.
    ws.send_message(room, "nul", "a\u{0}b").await?;
    let refused = ws
        .recv_until(|frame| match frame {
            ServerFrame::Error { code, .. } => Some(*code),
            _ => None,
        })
        .await?;
    assert_eq!(refused.as_str(), "invalid_body");
    let history = ada
        .get(&format!("/api/rooms/{room}/messages?after=0&limit=10"))
        .await?;
    assert_eq!(names(&history.body, "messages", "body"), bodies.to_vec());
    let later = ada
        .get(&format!("/api/rooms/{room}/messages?after=3"))
        .await?;
    assert_eq!(names(&later.body, "messages", "body"), vec![bodies[3]]);
    ada.get(&format!("/api/rooms/{room}/messages?after=-1"))
        .await?
        .expect_error(400, "bad_request")?;

    let status = "<img src=x onerror=alert(1)> '; --";
    let updated = ada.patch("/api/me", json!({"status_text": status})).await?;
    assert_eq!(updated.body["status_text"], status);
    assert_eq!(ada.get("/api/me").await?.body["status_text"], status);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_search_answers_fifty_rooms_unless_asked_for_another_number() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("search-page").await?;
    let ada = node.sign_in("ada").await?;
    for index in 0..55 {
        let created = ada
            .post(
                "/api/rooms",
                json!({"name": format!("room {index:02}"), "visibility": "public"}),
            )
            .await?;
        assert_eq!(created.status, 201, "{}", created.body);
    }
    for (query, expected) in [
        ("", 50),
        ("?limit=55", 55),
        ("?limit=3", 3),
        ("?limit=0", 1),
        ("?limit=1000", 55),
    ] {
        let found = ada.get(&format!("/api/rooms{query}")).await?;
        assert_eq!(
            names(&found.body, "rooms", "name").len(),
            expected,
            "GET /api/rooms{query}"
        );
    }
    node.stop().await?;
    Ok(())
}
