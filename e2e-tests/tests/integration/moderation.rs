//! Owners remove members and choose who may invite; leaving a direct conversation sticks.
//! Removal crosses nodes: the removed user's socket on another node leaves the room at once.

use chat_protocol::{ErrorCode, RoomId, ServerFrame, UserId};
use e2e_tests::{Api, TestEnv, WsClient};
use serde_json::{json, Value};
use std::time::Duration;

/// How soon a removal reaches a socket on another node: well inside the membership re-check
/// interval (5 s in tests), so only the `member_left` notice can explain it.
const AT_ONCE: Duration = Duration::from_secs(2);

fn room_id(body: &Value) -> RoomId {
    RoomId(body["room_id"].as_i64().unwrap_or(-1))
}

async fn user_id(api: &Api) -> anyhow::Result<UserId> {
    Ok(UserId(
        api.get("/api/me").await?.body["user_id"]
            .as_i64()
            .unwrap_or(-1),
    ))
}

async fn invite(by: &Api, room: RoomId, username: &str) -> anyhow::Result<e2e_tests::api::Reply> {
    by.post(
        &format!("/api/rooms/{room}/invite"),
        json!({"username": username}),
    )
    .await
}

async fn remove(by: &Api, room: RoomId, user: UserId) -> anyhow::Result<e2e_tests::api::Reply> {
    by.call(
        reqwest::Method::DELETE,
        &format!("/api/rooms/{room}/members/{user}"),
        None,
    )
    .await
}

async fn member_names(api: &Api, room: RoomId) -> anyhow::Result<Vec<String>> {
    let members = api.get(&format!("/api/rooms/{room}/members")).await?;
    Ok(members.body["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|member| member["username"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// The room a `left` frame names, failing if it does not come within [`AT_ONCE`].
async fn left_at_once(client: &mut WsClient) -> anyhow::Result<RoomId> {
    tokio::time::timeout(
        AT_ONCE,
        client.recv_until(|frame| match frame {
            ServerFrame::Left { room_id } => Some(*room_id),
            _ => None,
        }),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no `left` within {AT_ONCE:?}"))?
}

/// The error code a send is refused with, failing if it is accepted.
async fn send_refusal(client: &mut WsClient, room: RoomId, id: &str) -> anyhow::Result<ErrorCode> {
    client.send_message(room, id, id).await?;
    client
        .recv_until(|frame| match frame {
            ServerFrame::Error { code, .. } => Some(*code),
            ServerFrame::Accepted { .. } | ServerFrame::Stored { .. } => {
                panic!("a removed member's send was accepted")
            }
            _ => None,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_removes_a_member_whose_socket_is_on_another_node() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("remove-a").await?;
    let node_b = env.start_node("remove-b").await?;
    let ada = node_a.sign_in("ada").await?;
    let mut bob = node_b.user("bob").await?;
    let crew = ada.private_room("crew").await?;
    assert_eq!(invite(&ada, crew, "bob").await?.status, 204);
    bob.subscribe(crew).await?;
    bob.send_message(crew, "bob-1", "hello crew").await?;
    bob.next_message(crew).await?;
    let bob_id = bob.user_id()?;

    let removed = remove(&ada, crew, bob_id).await?;
    assert_eq!(removed.status, 204, "{}", removed.body);
    assert_eq!(left_at_once(&mut bob).await?, crew);
    assert_eq!(
        send_refusal(&mut bob, crew, "bob-2").await?,
        ErrorCode::NotMember
    );
    assert_eq!(member_names(&ada, crew).await?, vec!["ada"]);
    // The private room is hidden from him again; removing him twice finds no member.
    bob.api()?
        .get(&format!("/api/rooms/{crew}"))
        .await?
        .expect_error(404, "room_not_found")?;
    remove(&ada, crew, bob_id)
        .await?
        .expect_error(404, "user_not_found")?;
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_owners_remove_members_and_choose_who_invites() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("owners").await?;
    let ada = node.sign_in("ada").await?;
    let bob = node.sign_in("bob").await?;
    let carol = node.sign_in("carol").await?;
    let (ada_id, carol_id) = (user_id(&ada).await?, user_id(&carol).await?);
    let crew = ada.private_room("crew").await?;
    let shown = ada.get(&format!("/api/rooms/{crew}")).await?;
    assert_eq!(shown.body["invite_policy"], "owners");
    assert_eq!(invite(&ada, crew, "bob").await?.status, 204);

    // A member may not invite into a private room by default, nor remove, nor change settings.
    invite(&bob, crew, "carol")
        .await?
        .expect_error(403, "not_allowed")?;
    remove(&bob, crew, ada_id)
        .await?
        .expect_error(403, "not_allowed")?;
    bob.patch(
        &format!("/api/rooms/{crew}"),
        json!({"invite_policy": "members"}),
    )
    .await?
    .expect_error(403, "not_allowed")?;
    assert_eq!(member_names(&ada, crew).await?, vec!["ada", "bob"]);
    // The last owner stays; someone who is not a member cannot be removed.
    remove(&ada, crew, ada_id)
        .await?
        .expect_error(403, "not_allowed")?;
    remove(&ada, crew, carol_id)
        .await?
        .expect_error(404, "user_not_found")?;
    ada.patch(
        &format!("/api/rooms/{crew}"),
        json!({"invite_policy": "everyone"}),
    )
    .await?
    .expect_error(400, "bad_request")?;

    // The owner opens invitations to members.
    let opened = ada
        .patch(
            &format!("/api/rooms/{crew}"),
            json!({"invite_policy": "members"}),
        )
        .await?;
    assert_eq!(opened.status, 200, "{}", opened.body);
    assert_eq!(opened.body["invite_policy"], "members");
    assert_eq!(invite(&bob, crew, "carol").await?.status, 204);
    assert_eq!(member_names(&ada, crew).await?, vec!["ada", "bob", "carol"]);

    // Direct rooms have no owners to remove anyone.
    let dm = room_id(
        &ada.post("/api/direct", json!({"username": "bob"}))
            .await?
            .body,
    );
    remove(&ada, dm, user_id(&bob).await?)
        .await?
        .expect_error(403, "not_allowed")?;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_a_direct_conversation_sticks_until_the_leaver_opens_it_again() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let node = env.start_node("dm-leave").await?;
    let bob = node.sign_in("bob").await?;
    let mut ada = node.user("ada").await?;
    let ada_api = ada.api()?.clone();
    let dm = room_id(
        &ada_api
            .post("/api/direct", json!({"username": "bob"}))
            .await?
            .body,
    );
    let left = bob.post_empty(&format!("/api/rooms/{dm}/leave")).await?;
    assert_eq!(left.status, 204, "{}", left.body);

    // Ada opens it again and writes: Bob stays out.
    let reopened = ada_api
        .post("/api/direct", json!({"username": "bob"}))
        .await?;
    assert_eq!(room_id(&reopened.body), dm);
    ada.subscribe(dm).await?;
    ada.send_message(dm, "while-away", "are you there?").await?;
    ada.next_message(dm).await?;
    assert_eq!(member_names(&ada_api, dm).await?, vec!["ada"]);
    bob.get(&format!("/api/rooms/{dm}"))
        .await?
        .expect_error(404, "room_not_found")?;
    assert_eq!(bob.get("/api/me/rooms").await?.body["rooms"], json!([]));

    // Bob opens it himself: the same room, with what Ada wrote meanwhile.
    let back = bob.post("/api/direct", json!({"username": "ada"})).await?;
    assert_eq!(room_id(&back.body), dm);
    let history = bob.get(&format!("/api/rooms/{dm}/messages")).await?;
    assert_eq!(history.body["messages"][0]["body"], "are you there?");
    assert_eq!(member_names(&ada_api, dm).await?, vec!["ada", "bob"]);
    node.stop().await?;
    Ok(())
}

/// Waits for `rooms_changed` on a socket, failing if it does not come within [`AT_ONCE`].
async fn rooms_changed(client: &mut WsClient, after: &str) -> anyhow::Result<()> {
    tokio::time::timeout(
        AT_ONCE,
        client.recv_until(|frame| matches!(frame, ServerFrame::RoomsChanged).then_some(())),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no `rooms_changed` within {AT_ONCE:?} after {after}"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_to_a_room_list_reaches_the_users_sockets_on_other_nodes() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let node_a = env.start_node("rooms-changed-a").await?;
    let node_b = env.start_node("rooms-changed-b").await?;
    // Each user signs in on node A; their sockets are on node B.
    let ada = node_a.sign_in("ada").await?;
    let bob = node_a.sign_in("bob").await?;
    let mut ada_socket = WsClient::connect_as(&node_b.ws_url(), ada.clone()).await?;
    let mut bob_socket = WsClient::connect_as(&node_b.ws_url(), bob.clone()).await?;

    let crew = ada.private_room("crew").await?;
    rooms_changed(&mut ada_socket, "creating a room").await?;
    assert_eq!(invite(&ada, crew, "bob").await?.status, 204);
    rooms_changed(&mut bob_socket, "being invited").await?;
    let removed = remove(&ada, crew, user_id(&bob).await?).await?;
    assert_eq!(removed.status, 204, "{}", removed.body);
    rooms_changed(&mut bob_socket, "being removed").await?;

    let lobby = room_id(
        &ada.post(
            "/api/rooms",
            json!({"name": "lobby", "visibility": "public"}),
        )
        .await?
        .body,
    );
    rooms_changed(&mut ada_socket, "creating a public room").await?;
    bob.post_empty(&format!("/api/rooms/{lobby}/join")).await?;
    rooms_changed(&mut bob_socket, "joining").await?;
    bob.post_empty(&format!("/api/rooms/{lobby}/leave")).await?;
    rooms_changed(&mut bob_socket, "leaving").await?;

    bob.post("/api/direct", json!({"username": "ada"})).await?;
    rooms_changed(&mut bob_socket, "opening a direct conversation").await?;
    rooms_changed(&mut ada_socket, "being messaged directly").await?;
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}
