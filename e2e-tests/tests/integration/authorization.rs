//! Authorisation: for every room-scoped endpoint and frame, a non-member is refused and learns
//! nothing; a private room answers exactly like a room that does not exist; without a session
//! every endpoint answers 401.

use chat_protocol::{ErrorCode, RoomId, ServerFrame};
use e2e_tests::{Api, TestEnv, WsClient};
use reqwest::Method;
use serde_json::{json, Value};

/// Every room-scoped endpoint, with a body where it takes one.
fn room_endpoints(room: RoomId) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/api/rooms/{room}"), None),
        (Method::GET, format!("/api/rooms/{room}/members"), None),
        (Method::GET, format!("/api/rooms/{room}/messages"), None),
        (Method::POST, format!("/api/rooms/{room}/leave"), None),
        (
            Method::POST,
            format!("/api/rooms/{room}/invite"),
            Some(json!({"username": "mallory"})),
        ),
        (Method::POST, format!("/api/rooms/{room}/join"), None),
        (
            Method::PATCH,
            format!("/api/rooms/{room}"),
            Some(json!({"invite_policy": "members"})),
        ),
        (Method::DELETE, format!("/api/rooms/{room}/members/1"), None),
    ]
}

async fn call(
    api: &Api,
    (method, path, body): &(Method, String, Option<Value>),
) -> anyhow::Result<(u16, Value)> {
    let reply = api.call(method.clone(), path, body.clone()).await?;
    Ok((reply.status, reply.body))
}

async fn error_code(client: &mut WsClient) -> anyhow::Result<ErrorCode> {
    client
        .recv_until(|frame| match frame {
            ServerFrame::Error { code, .. } => Some(*code),
            ServerFrame::Message(message) => panic!("a non-member received {message:?}"),
            _ => None,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_are_refused_everywhere_and_learn_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("authz").await?;
    let mut ada = node.user("ada").await?;
    let ada_api = ada.api()?.clone();
    let mallory_api = node.sign_in("mallory").await?;
    let mut mallory = node.user("mallory").await?;

    let private = ada_api.private_room("plans").await?;
    ada.subscribe(private).await?;
    ada.send_message(private, "p1", "the secret plan").await?;
    ada.next_message(private).await?;
    let (public, _) = ada.join("lobby").await?;
    let missing = RoomId(private.0 + 1000);

    // REST: a private room and a room that does not exist give the very same answer.
    for (hidden, absent) in room_endpoints(private)
        .iter()
        .zip(room_endpoints(missing).iter())
    {
        let hidden_answer = call(&mallory_api, hidden).await?;
        let absent_answer = call(&mallory_api, absent).await?;
        assert_eq!(hidden_answer.0, 404, "{} {}", hidden.1, hidden_answer.1);
        assert_eq!(hidden_answer.1["code"], "room_not_found", "{}", hidden.1);
        assert_eq!(hidden_answer, absent_answer, "{} leaks", hidden.1);
    }
    // A public room can be seen and joined, but nothing else without joining.
    let endpoints = room_endpoints(public);
    for endpoint in endpoints[1..5].iter().chain(&endpoints[6..]) {
        let (status, body) = call(&mallory_api, endpoint).await?;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("not_member")),
            "{}",
            endpoint.1
        );
    }
    let seen = mallory_api.get(&format!("/api/rooms/{public}")).await?;
    assert_eq!((seen.status, seen.body.get("role")), (200, None));
    // Direct rooms of others are hidden like private ones.
    let mallory_and_ada = mallory_api
        .post("/api/direct", json!({"username": "ada"}))
        .await?;
    let theirs = RoomId(mallory_and_ada.body["room_id"].as_i64().unwrap_or(-1));
    let outsider = node.sign_in("eve").await?;
    for endpoint in room_endpoints(theirs) {
        let (status, body) = call(&outsider, &endpoint).await?;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("room_not_found")),
            "{}",
            endpoint.1
        );
    }

    // WebSocket: subscribing and sending are refused alike for hidden and missing rooms.
    mallory
        .send_raw(&format!(r#"{{"type":"join","room_id":{private}}}"#))
        .await?;
    assert_eq!(error_code(&mut mallory).await?, ErrorCode::NotMember);
    mallory
        .send_raw(&format!(r#"{{"type":"join","room_id":{missing}}}"#))
        .await?;
    assert_eq!(error_code(&mut mallory).await?, ErrorCode::NotMember);
    mallory
        .send_raw(&format!(r#"{{"type":"join","room_id":{public}}}"#))
        .await?;
    assert_eq!(error_code(&mut mallory).await?, ErrorCode::NotMember);
    mallory.send_message(private, "m1", "let me in").await?;
    assert_eq!(error_code(&mut mallory).await?, ErrorCode::NotJoined);

    // Ada talks in the private room; Mallory's next message is from the room she did join.
    let (lobby, _) = mallory.join("lobby").await?;
    ada.send_message(private, "p2", "still secret").await?;
    ada.next_message(private).await?;
    ada.send_message(lobby, "l1", "hello lobby").await?;
    let first = mallory
        .recv_until(|frame| match frame {
            ServerFrame::Message(message) => Some(message.clone()),
            _ => None,
        })
        .await?;
    assert_eq!((first.room_id, first.body.as_str()), (lobby, "hello lobby"));
    let history = ada_api
        .get(&format!("/api/rooms/{private}/messages"))
        .await?;
    assert_eq!(history.body["messages"].as_array().map(Vec::len), Some(2));

    // Leaving over REST ends sending over an open WebSocket, and nothing is stored.
    mallory_api
        .post_empty(&format!("/api/rooms/{lobby}/leave"))
        .await?;
    mallory.send_message(lobby, "m2", "after leaving").await?;
    assert_eq!(error_code(&mut mallory).await?, ErrorCode::NotMember);
    let lobby_history = ada_api.get(&format!("/api/rooms/{lobby}/messages")).await?;
    let bodies: Vec<&str> = lobby_history.body["messages"]
        .as_array()
        .map(|messages| messages.iter().filter_map(|m| m["body"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(bodies, vec!["hello lobby"]);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_every_endpoint_answers_401() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("anon").await?;
    let anonymous = node.api();
    let mut endpoints = room_endpoints(RoomId(1));
    endpoints.extend([
        (Method::GET, "/api/me".to_owned(), None),
        (
            Method::PATCH,
            "/api/me".to_owned(),
            Some(json!({"status_text": "x"})),
        ),
        (Method::GET, "/api/users/1".to_owned(), None),
        (Method::GET, "/api/me/rooms".to_owned(), None),
        (Method::GET, "/api/rooms".to_owned(), None),
        (
            Method::POST,
            "/api/rooms".to_owned(),
            Some(json!({"name": "x", "visibility": "public"})),
        ),
        (
            Method::POST,
            "/api/direct".to_owned(),
            Some(json!({"username": "x"})),
        ),
        (Method::POST, "/api/logout".to_owned(), None),
        (
            Method::POST,
            "/api/password".to_owned(),
            Some(json!({"current_password": "xxxxxxxx", "new_password": "yyyyyyyy"})),
        ),
    ]);
    for endpoint in &endpoints {
        let (status, body) = call(&anonymous, endpoint).await?;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthenticated")),
            "{} {}",
            endpoint.0,
            endpoint.1
        );
    }
    node.stop().await?;
    Ok(())
}
