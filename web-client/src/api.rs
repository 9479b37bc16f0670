//! The REST API of the node that served this page. The session cookie is set by the server
//! (HttpOnly) and sent by the browser with every same-origin request, the WebSocket included.

use chat_protocol::api::{
    ApiError, Member, MemberList, MessagePage, Profile, Room, RoomList, SessionInfo,
};
use chat_protocol::{ChatMessage, ErrorCode, RoomId, Seq};
use gloo_net::http::{Request, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::fmt;

/// Why a call failed.
#[derive(Debug)]
pub enum ApiFailure {
    /// The server answered with an error body.
    Refused(ApiError),
    /// No answer, or not the expected one.
    Transport(String),
}

impl ApiFailure {
    /// The session is gone (signed out, expired or revoked).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, ApiFailure::Refused(error) if error.code == ErrorCode::Unauthenticated)
    }
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiFailure::Refused(error) => write!(f, "{}: {}", error.code, error.message),
            ApiFailure::Transport(reason) => f.write_str(reason),
        }
    }
}

fn transport(error: impl fmt::Display) -> ApiFailure {
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

/// Registers (or logs in) and returns the profile; the server sets the session cookie.
pub async fn sign_in(
    register: bool,
    username: &str,
    password: &str,
) -> Result<Profile, ApiFailure> {
    let path = if register {
        "/api/register"
    } else {
        "/api/login"
    };
    let response = Request::post(path)
        .json(&json!({"username": username, "password": password}))
        .map_err(transport)?
        .send()
        .await
        .map_err(transport)?;
    let session: SessionInfo = answer(response).await?;
    Ok(session.profile)
}

/// The signed-in user's profile, if the cookie holds a live session.
pub async fn me() -> Result<Profile, ApiFailure> {
    answer(Request::get("/api/me").send().await.map_err(transport)?).await
}

pub async fn logout() -> Result<(), ApiFailure> {
    Request::post("/api/logout")
        .send()
        .await
        .map_err(transport)?;
    Ok(())
}

/// The rooms the user is in.
pub async fn my_rooms() -> Result<Vec<Room>, ApiFailure> {
    let list: RoomList = answer(
        Request::get("/api/me/rooms")
            .send()
            .await
            .map_err(transport)?,
    )
    .await?;
    Ok(list.rooms)
}

/// Joins the public room with this name, creating it if there is none.
pub async fn join_public(name: &str) -> Result<RoomId, ApiFailure> {
    let found: RoomList = answer(
        Request::get("/api/rooms")
            .query([("q", name)])
            .send()
            .await
            .map_err(transport)?,
    )
    .await?;
    let room_id = match found.rooms.iter().find(|room| room.name == name) {
        Some(room) => room.room_id,
        None => {
            let created: Room = answer(
                Request::post("/api/rooms")
                    .json(&json!({"name": name, "visibility": "public"}))
                    .map_err(transport)?
                    .send()
                    .await
                    .map_err(transport)?,
            )
            .await?;
            return Ok(created.room_id);
        }
    };
    let _: Room = answer(
        Request::post(&format!("/api/rooms/{room_id}/join"))
            .send()
            .await
            .map_err(transport)?,
    )
    .await?;
    Ok(room_id)
}

/// Creates a private room.
pub async fn create_private(name: &str) -> Result<RoomId, ApiFailure> {
    let created: Room = answer(
        Request::post("/api/rooms")
            .json(&json!({"name": name, "visibility": "private"}))
            .map_err(transport)?
            .send()
            .await
            .map_err(transport)?,
    )
    .await?;
    Ok(created.room_id)
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
    let page: MessagePage = answer(
        Request::get(&format!("/api/rooms/{room_id}/messages"))
            .query(query)
            .send()
            .await
            .map_err(transport)?,
    )
    .await?;
    Ok(page.messages)
}

/// The members of a room, with their presence.
pub async fn members(room_id: RoomId) -> Result<Vec<Member>, ApiFailure> {
    let list: MemberList = answer(
        Request::get(&format!("/api/rooms/{room_id}/members"))
            .send()
            .await
            .map_err(transport)?,
    )
    .await?;
    Ok(list.members)
}
