//! The REST API of the node that served this page. The session cookie is set by the server
//! (HttpOnly) and sent by the browser with every same-origin request, the WebSocket included.

use crate::words;
use chat_protocol::api::{
    ApiError, ChangePasswordRequest, CreateRoomRequest, LoginRequest, Member, MemberList,
    MessagePage, Profile, ProfileUpdate, RegisterRequest, Room, RoomKind, RoomList, SessionInfo,
    UserList, UserRef, UserSummary,
};
use chat_protocol::{ChatMessage, ErrorCode, RoomId, Seq};
use gloo_net::http::{Request, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a call failed.
#[derive(Debug, Clone)]
pub enum ApiFailure {
    /// The server answered with an error body.
    Refused(ApiError),
    /// No answer (the node is down or the network is gone), or not the expected one.
    Transport(String),
}

impl ApiFailure {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ApiFailure::Refused(error) => Some(error.code),
            ApiFailure::Transport(_) => None,
        }
    }

    /// The failure in plain words.
    pub fn plain(&self) -> String {
        match self {
            ApiFailure::Refused(error) => words::error(error.code, &error.message),
            ApiFailure::Transport(detail) => {
                web_sys::console::warn_1(&detail.as_str().into());
                "The server cannot be reached. Check your connection and try again.".to_owned()
            }
        }
    }
}

fn transport(error: impl std::fmt::Display) -> ApiFailure {
    ApiFailure::Transport(error.to_string())
}

async fn answer<T: DeserializeOwned>(response: Response) -> Result<T, ApiFailure> {
    if response.ok() {
        return response.json::<T>().await.map_err(transport);
    }
    match response.json::<ApiError>().await {
        Ok(error) => Err(ApiFailure::Refused(error)),
        Err(error) => Err(transport(format!("HTTP {}: {error}", response.status()))),
    }
}

async fn empty(response: Response) -> Result<(), ApiFailure> {
    if response.ok() {
        return Ok(());
    }
    match response.json::<ApiError>().await {
        Ok(error) => Err(ApiFailure::Refused(error)),
        Err(error) => Err(transport(format!("HTTP {}: {error}", response.status()))),
    }
}

async fn send(request: RequestBuilder) -> Result<Response, ApiFailure> {
    request.send().await.map_err(transport)
}

async fn send_json(request: RequestBuilder, body: &impl Serialize) -> Result<Response, ApiFailure> {
    request
        .json(body)
        .map_err(transport)?
        .send()
        .await
        .map_err(transport)
}

pub async fn register(
    username: &str,
    password: &str,
    display_name: Option<String>,
) -> Result<Profile, ApiFailure> {
    let body = RegisterRequest {
        username: username.to_owned(),
        password: password.to_owned(),
        display_name,
    };
    let session: SessionInfo =
        answer(send_json(Request::post("/api/register"), &body).await?).await?;
    Ok(session.profile)
}

pub async fn login(username: &str, password: &str) -> Result<Profile, ApiFailure> {
    let body = LoginRequest {
        username: username.to_owned(),
        password: password.to_owned(),
    };
    let session: SessionInfo = answer(send_json(Request::post("/api/login"), &body).await?).await?;
    Ok(session.profile)
}

/// The signed-in user's profile, if the cookie holds a live session.
pub async fn me() -> Result<Profile, ApiFailure> {
    answer(send(Request::get("/api/me")).await?).await
}

pub async fn logout() -> Result<(), ApiFailure> {
    empty(send(Request::post("/api/logout")).await?).await
}

pub async fn update_profile(update: &ProfileUpdate) -> Result<Profile, ApiFailure> {
    answer(send_json(Request::patch("/api/me"), update).await?).await
}

pub async fn change_password(current: &str, new: &str) -> Result<(), ApiFailure> {
    let body = ChangePasswordRequest {
        current_password: current.to_owned(),
        new_password: new.to_owned(),
    };
    empty(send_json(Request::post("/api/password"), &body).await?).await
}

/// The rooms the user is in, with read state.
pub async fn my_rooms() -> Result<Vec<Room>, ApiFailure> {
    let list: RoomList = answer(send(Request::get("/api/me/rooms")).await?).await?;
    Ok(list.rooms)
}

/// Public rooms whose name contains `query`.
pub async fn search_rooms(query: &str) -> Result<Vec<Room>, ApiFailure> {
    let list: RoomList =
        answer(send(Request::get("/api/rooms").query([("q", query), ("limit", "50")])).await?)
            .await?;
    Ok(list.rooms)
}

/// People whose user name or display name starts with `query`, for the pickers.
pub async fn search_users(query: &str) -> Result<Vec<UserSummary>, ApiFailure> {
    let list: UserList =
        answer(send(Request::get("/api/users").query([("q", query)])).await?).await?;
    Ok(list.users)
}

pub async fn create_room(name: &str, kind: RoomKind) -> Result<Room, ApiFailure> {
    let body = CreateRoomRequest {
        name: name.to_owned(),
        visibility: kind,
    };
    answer(send_json(Request::post("/api/rooms"), &body).await?).await
}

pub async fn join(room_id: RoomId) -> Result<Room, ApiFailure> {
    answer(send(Request::post(&format!("/api/rooms/{room_id}/join"))).await?).await
}

pub async fn leave(room_id: RoomId) -> Result<(), ApiFailure> {
    empty(send(Request::post(&format!("/api/rooms/{room_id}/leave"))).await?).await
}

pub async fn invite(room_id: RoomId, username: &str) -> Result<(), ApiFailure> {
    let body = UserRef {
        username: username.to_owned(),
    };
    empty(
        send_json(
            Request::post(&format!("/api/rooms/{room_id}/invite")),
            &body,
        )
        .await?,
    )
    .await
}

/// The direct room with `username`, created on first use.
pub async fn direct(username: &str) -> Result<Room, ApiFailure> {
    let body = UserRef {
        username: username.to_owned(),
    };
    answer(send_json(Request::post("/api/direct"), &body).await?).await
}

/// How many messages a history page asks for.
pub const PAGE_SIZE: u32 = 50;

/// A page of a room's history, oldest first: the newest messages, or those right below
/// `before` when scrolling back.
pub async fn messages(
    room_id: RoomId,
    before: Option<Seq>,
) -> Result<Vec<ChatMessage>, ApiFailure> {
    let limit = PAGE_SIZE.to_string();
    let before = before.map(|seq| seq.to_string());
    let mut query = vec![("limit", limit.as_str())];
    if let Some(before) = &before {
        query.push(("before", before.as_str()));
    }
    let page: MessagePage =
        answer(send(Request::get(&format!("/api/rooms/{room_id}/messages")).query(query)).await?)
            .await?;
    Ok(page.messages)
}

/// The members of a room, with their presence.
pub async fn members(room_id: RoomId) -> Result<Vec<Member>, ApiFailure> {
    let list: MemberList =
        answer(send(Request::get(&format!("/api/rooms/{room_id}/members"))).await?).await?;
    Ok(list.members)
}
