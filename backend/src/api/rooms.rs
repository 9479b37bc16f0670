//! Rooms: `GET/POST /api/rooms`, `GET /api/me/rooms`, `GET /api/rooms/{id}`,
//! `PATCH /api/rooms/{id}`, `POST /api/rooms/{id}/join|leave|invite`,
//! `GET /api/rooms/{id}/members|messages`, `DELETE /api/rooms/{id}/members/{user_id}`,
//! `POST /api/direct`.
//!
//! What a caller may see of a room is decided by [`Directory::access`]: a private or direct
//! room the caller is not in answers exactly like a room that does not exist.
//!
//! Every change to a user's list of rooms (created, joined, left, invited, removed, a direct
//! conversation opened) ends with [`rooms_changed`], so that user's open connections on every
//! node reload the list.
//!
//! [`Directory::access`]: crate::directory::Directory::access

use super::{body, finish, json, no_content, parse, request, ApiFailure, Request, RequestError};
use crate::app::App;
use crate::directory::{Access, RoomInfo};
use crate::history::Page;
use crate::store::Removal;
use bytes::Bytes;
use chat_protocol::api::{
    validate_room, InvitePolicy, MemberList, MessagePage, Role, Room, RoomKind, RoomList,
    RoomUpdate, Unread, UserRef,
};
use chat_protocol::bus::Delivery;
use chat_protocol::limits::MAX_PAGE;
use chat_protocol::{ErrorCode, RoomId, Seq, UserId};
use std::collections::HashMap;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

/// Messages per history page when the client does not say.
const DEFAULT_HISTORY_PAGE: usize = 50;
/// Rooms per search answer when the client does not say.
const DEFAULT_SEARCH_PAGE: usize = 50;

#[derive(Debug, thiserror::Error)]
enum RoomError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("a room is public or private")]
    InvalidVisibility,
    #[error("a public room already has that name")]
    NameTaken,
    #[error("no such room")]
    NotFound,
    #[error("you are not a member of this room")]
    NotMember,
    #[error("direct rooms have exactly two members")]
    DirectRoom,
    #[error("no such user")]
    UserNotFound,
    #[error("a direct conversation needs another user")]
    Myself,
    #[error("only the room's owners may do that")]
    OwnersOnly,
    #[error("a room keeps at least one owner")]
    LastOwner,
    #[error("no such member in this room")]
    MemberNotFound,
}

impl ApiFailure for RoomError {
    fn status(&self) -> StatusCode {
        match self {
            RoomError::Request(error) => error.status(),
            RoomError::InvalidVisibility | RoomError::Myself => StatusCode::BAD_REQUEST,
            RoomError::NameTaken => StatusCode::CONFLICT,
            RoomError::NotFound | RoomError::UserNotFound | RoomError::MemberNotFound => {
                StatusCode::NOT_FOUND
            }
            RoomError::NotMember
            | RoomError::DirectRoom
            | RoomError::OwnersOnly
            | RoomError::LastOwner => StatusCode::FORBIDDEN,
        }
    }

    fn code(&self) -> ErrorCode {
        match self {
            RoomError::Request(error) => error.code(),
            RoomError::InvalidVisibility => ErrorCode::InvalidVisibility,
            RoomError::NameTaken => ErrorCode::RoomNameTaken,
            RoomError::NotFound => ErrorCode::RoomNotFound,
            RoomError::NotMember => ErrorCode::NotMember,
            RoomError::DirectRoom | RoomError::OwnersOnly | RoomError::LastOwner => {
                ErrorCode::NotAllowed
            }
            RoomError::UserNotFound | RoomError::MemberNotFound => ErrorCode::UserNotFound,
            RoomError::Myself => ErrorCode::CannotMessageSelf,
        }
    }

    fn retry_after(&self) -> Option<crate::rate_limit::RetryAfter> {
        match self {
            RoomError::Request(error) => error.retry_after(),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, RoomError>;
type Query = HashMap<String, String>;

pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let search = warp::path!("rooms")
        .and(warp::get())
        .and(request(app.clone()))
        .and(warp::query::<Query>())
        .then(|request: Request, query: Query| async move { finish(search(request, query).await) });
    let create = warp::path!("rooms")
        .and(warp::post())
        .and(request(app.clone()))
        .and(body())
        .then(|request: Request, body: Bytes| async move { finish(create(request, body).await) });
    let mine = warp::path!("me" / "rooms")
        .and(warp::get())
        .and(request(app.clone()))
        .then(|request: Request| async move { finish(my_rooms(request).await) });
    let show = warp::path!("rooms" / i64)
        .and(warp::get())
        .and(request(app.clone()))
        .then(
            |room: i64, request: Request| async move { finish(show(request, RoomId(room)).await) },
        );
    let join = warp::path!("rooms" / i64 / "join")
        .and(warp::post())
        .and(request(app.clone()))
        .then(
            |room: i64, request: Request| async move { finish(join(request, RoomId(room)).await) },
        );
    let leave = warp::path!("rooms" / i64 / "leave")
        .and(warp::post())
        .and(request(app.clone()))
        .then(
            |room: i64, request: Request| async move { finish(leave(request, RoomId(room)).await) },
        );
    let invite = warp::path!("rooms" / i64 / "invite")
        .and(warp::post())
        .and(request(app.clone()))
        .and(body())
        .then(|room: i64, request: Request, body: Bytes| async move {
            finish(invite(request, RoomId(room), body).await)
        });
    let members =
        warp::path!("rooms" / i64 / "members")
            .and(warp::get())
            .and(request(app.clone()))
            .then(|room: i64, request: Request| async move {
                finish(members(request, RoomId(room)).await)
            });
    let messages = warp::path!("rooms" / i64 / "messages")
        .and(warp::get())
        .and(request(app.clone()))
        .and(warp::query::<Query>())
        .then(|room: i64, request: Request, query: Query| async move {
            finish(history(request, RoomId(room), query).await)
        });
    let update = warp::path!("rooms" / i64)
        .and(warp::patch())
        .and(request(app.clone()))
        .and(body())
        .then(|room: i64, request: Request, body: Bytes| async move {
            finish(update(request, RoomId(room), body).await)
        });
    let remove = warp::path!("rooms" / i64 / "members" / i64)
        .and(warp::delete())
        .and(request(app.clone()))
        .then(|room: i64, user: i64, request: Request| async move {
            finish(remove(request, RoomId(room), UserId(user)).await)
        });
    let direct = warp::path!("direct")
        .and(warp::post())
        .and(request(app))
        .and(body())
        .then(|request: Request, body: Bytes| async move { finish(direct(request, body).await) });
    search
        .or(create)
        .unify()
        .or(mine)
        .unify()
        .or(show)
        .unify()
        .or(join)
        .unify()
        .or(leave)
        .unify()
        .or(invite)
        .unify()
        .or(members)
        .unify()
        .or(messages)
        .unify()
        .or(direct)
        .unify()
        .or(update)
        .unify()
        .or(remove)
        .unify()
        .boxed()
}

fn room(info: RoomInfo, role: Option<Role>) -> Room {
    Room {
        room_id: info.room_id,
        name: info.name,
        kind: info.kind,
        role,
        unread: None,
        invite_policy: None,
    }
}

fn number(query: &Query, name: &str, default: usize) -> Result<usize> {
    match query.get(name) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| {
            RoomError::Request(RequestError::BadRequest(format!(
                "`{name}` is a non-negative integer"
            )))
        }),
    }
}

/// The caller's access to a room, failing for rooms they may not see at all.
async fn access(request: &Request, room: RoomId) -> Result<(crate::auth::Identity, Access)> {
    let me = request.identify().await?;
    let access = request
        .app
        .directory
        .access(room, me.user.user_id)
        .await
        .map_err(RequestError::from)?;
    if access == Access::Hidden {
        return Err(RoomError::NotFound);
    }
    Ok((me, access))
}

/// Like [`access`], but only members get through.
async fn membership(
    request: &Request,
    room: RoomId,
) -> Result<(crate::auth::Identity, RoomInfo, Role)> {
    match access(request, room).await? {
        (me, Access::Member(info, role)) => Ok((me, info, role)),
        (_, Access::Outsider(_)) => Err(RoomError::NotMember),
        (_, Access::Hidden) => Err(RoomError::NotFound),
    }
}

async fn search(request: Request, query: Query) -> Result<Response> {
    request.identify().await?;
    let limit = number(&query, "limit", DEFAULT_SEARCH_PAGE)?.clamp(1, MAX_PAGE);
    let text = query.get("q").cloned().unwrap_or_default();
    if text.contains('\0') {
        return Err(RequestError::BadRequest(super::NUL_REFUSED.to_owned()).into());
    }
    let rows = request
        .app
        .store
        .search_public_rooms(text, i64::try_from(limit).unwrap_or(50))
        .await
        .map_err(RequestError::from)?;
    let rooms = rows.into_iter().map(|row| room(row.into(), None)).collect();
    Ok(json(StatusCode::OK, &RoomList { rooms }))
}

/// A [`CreateRoomRequest`](chat_protocol::api::CreateRoomRequest) as sent, with `visibility` as text: a value that is no room kind
/// gets `invalid_visibility` like `direct` does, not `bad_request`.
#[derive(serde::Deserialize)]
struct CreateRoomForm {
    name: String,
    visibility: String,
}

async fn create(request: Request, body: Bytes) -> Result<Response> {
    let me = request.identify().await?;
    request.count_write(&me, true)?;
    let form: CreateRoomForm = parse(&body)?;
    validate_room(&form.name).map_err(RequestError::from)?;
    let name = form.name.trim().to_owned();
    let visibility = match RoomKind::parse(&form.visibility) {
        Some(kind @ (RoomKind::Public | RoomKind::Private)) => kind,
        Some(RoomKind::Direct) | None => return Err(RoomError::InvalidVisibility),
    };
    let created = request
        .app
        .directory
        .create_room(name, visibility, me.user.user_id)
        .await
        .map_err(RequestError::from)?
        .ok_or(RoomError::NameTaken)?;
    rooms_changed(&request, me.user.user_id).await;
    Ok(json(StatusCode::CREATED, &room(created, Some(Role::Owner))))
}

async fn my_rooms(request: Request) -> Result<Response> {
    let me = request.identify().await?;
    let store = &request.app.store;
    let rows = store
        .rooms_of(me.user.user_id)
        .await
        .map_err(RequestError::from)?;
    let states = store
        .read_states(me.user.user_id)
        .await
        .map_err(RequestError::from)?;
    let rooms = rows
        .into_iter()
        .map(|(row, role)| {
            let unread = states.get(&row.room_id).map(|state| Unread {
                last_seq: Seq(state.last_seq),
                last_read_seq: Seq(state.last_read_seq),
                count: state.unread,
            });
            Room {
                unread,
                ..room(row.into(), Some(role))
            }
        })
        .collect();
    Ok(json(StatusCode::OK, &RoomList { rooms }))
}

async fn show(request: Request, room_id: RoomId) -> Result<Response> {
    let answer = match access(&request, room_id).await? {
        (_, Access::Member(info, role)) => {
            with_invite_policy(&request, room(info, Some(role))).await?
        }
        (_, Access::Outsider(info)) => room(info, None),
        (_, Access::Hidden) => return Err(RoomError::NotFound),
    };
    Ok(json(StatusCode::OK, &answer))
}

async fn join(request: Request, room_id: RoomId) -> Result<Response> {
    let (me, found) = access(&request, room_id).await?;
    request.count_write(&me, false)?;
    let answer = match (me, found) {
        (_, Access::Member(info, role)) => room(info, Some(role)),
        (me, Access::Outsider(info)) => {
            request
                .app
                .directory
                .add_member(room_id, me.user.user_id)
                .await
                .map_err(RequestError::from)?;
            rooms_changed(&request, me.user.user_id).await;
            room(info, Some(Role::Member))
        }
        (_, Access::Hidden) => return Err(RoomError::NotFound),
    };
    Ok(json(StatusCode::OK, &answer))
}

async fn leave(request: Request, room_id: RoomId) -> Result<Response> {
    let (me, _, _) = membership(&request, room_id).await?;
    request.count_write(&me, false)?;
    request
        .app
        .directory
        .remove_member(room_id, me.user.user_id)
        .await
        .map_err(RequestError::from)?;
    member_gone(&request, room_id, me.user.user_id).await;
    Ok(no_content())
}

/// `DELETE /api/rooms/{id}/members/{user_id}`: an owner removes a member (or another owner,
/// never the last one). Not in direct rooms, whose two members only leave.
async fn remove(request: Request, room_id: RoomId, user: UserId) -> Result<Response> {
    let (me, info, role) = membership(&request, room_id).await?;
    request.count_write(&me, false)?;
    if info.kind == RoomKind::Direct {
        return Err(RoomError::DirectRoom);
    }
    if role != Role::Owner {
        return Err(RoomError::OwnersOnly);
    }
    let removal = request
        .app
        .directory
        .remove_member_keeping_an_owner(room_id, user)
        .await
        .map_err(RequestError::from)?;
    match removal {
        Removal::Removed => {}
        Removal::NotMember => return Err(RoomError::MemberNotFound),
        Removal::LastOwner => return Err(RoomError::LastOwner),
    }
    member_gone(&request, room_id, user).await;
    Ok(no_content())
}

/// `PATCH /api/rooms/{id}`: an owner changes the room's settings.
async fn update(request: Request, room_id: RoomId, body: Bytes) -> Result<Response> {
    let (me, info, role) = membership(&request, room_id).await?;
    request.count_write(&me, false)?;
    let form: RoomUpdate = parse(&body)?;
    if info.kind == RoomKind::Direct {
        return Err(RoomError::DirectRoom);
    }
    if role != Role::Owner {
        return Err(RoomError::OwnersOnly);
    }
    if let Some(policy) = form.invite_policy {
        request
            .app
            .store
            .set_invite_policy(room_id, policy)
            .await
            .map_err(RequestError::from)?;
    }
    let answer = with_invite_policy(&request, room(info, Some(role))).await?;
    Ok(json(StatusCode::OK, &answer))
}

/// A member's view of a room, with who may invite.
async fn with_invite_policy(request: &Request, room: Room) -> Result<Room> {
    let invite_policy = request
        .app
        .store
        .invite_policy(room.room_id)
        .await
        .map_err(RequestError::from)?;
    Ok(Room {
        invite_policy,
        ..room
    })
}

/// A user is no longer a member: their open connections stop receiving the room and sending
/// to it, on this node before the answer (a send right after it is refused), on the others
/// when `MemberLeft` arrives; and their list of rooms changed.
async fn member_gone(request: &Request, room_id: RoomId, user_id: UserId) {
    request.app.hub.remove_user(room_id, user_id);
    let left = Delivery::MemberLeft { room_id, user_id };
    if let Err(error) = request.app.bus.publish_ephemeral(room_id, &left).await {
        tracing::warn!(%error, %room_id, "could not tell the nodes about a member who left");
    }
    rooms_changed(request, user_id).await;
}

/// Tells every node, this one included, that `user_id`'s list of rooms changed, so each of
/// their open connections gets `rooms_changed` and watches the new list. Best effort, like every ephemeral notice: a
/// lost one leaves a list stale until the client reloads it, and never grants access.
async fn rooms_changed(request: &Request, user_id: UserId) {
    let changed = Delivery::RoomsChanged { user_id };
    if let Err(error) = request.app.bus.publish_to_everyone(&changed).await {
        tracing::warn!(%error, %user_id, "could not tell the nodes about a changed room list");
    }
}

async fn invite(request: Request, room_id: RoomId, body: Bytes) -> Result<Response> {
    let (me, info, role) = membership(&request, room_id).await?;
    request.count_write(&me, false)?;
    let form: UserRef = parse(&body)?;
    if info.kind == RoomKind::Direct {
        return Err(RoomError::DirectRoom);
    }
    if role != Role::Owner {
        let policy = request
            .app
            .store
            .invite_policy(room_id)
            .await
            .map_err(RequestError::from)?;
        if policy != Some(InvitePolicy::Members) {
            return Err(RoomError::OwnersOnly);
        }
    }
    let user = request
        .app
        .store
        .user_by_name(form.username)
        .await
        .map_err(RequestError::from)?
        .ok_or(RoomError::UserNotFound)?;
    let added = request
        .app
        .directory
        .add_member(room_id, user)
        .await
        .map_err(RequestError::from)?;
    if added {
        rooms_changed(&request, user).await;
    }
    Ok(no_content())
}

async fn members(request: Request, room_id: RoomId) -> Result<Response> {
    membership(&request, room_id).await?;
    let mut members = request
        .app
        .store
        .members(room_id)
        .await
        .map_err(RequestError::from)?;
    for member in &mut members {
        member.presence = request.app.presence.status(member.user_id);
    }
    Ok(json(StatusCode::OK, &MemberList { members }))
}

async fn history(request: Request, room_id: RoomId, query: Query) -> Result<Response> {
    membership(&request, room_id).await?;
    let limit = number(&query, "limit", DEFAULT_HISTORY_PAGE)?.clamp(1, MAX_PAGE);
    let seq = |name: &str| -> Result<Option<Seq>> {
        match query.get(name) {
            None => Ok(None),
            Some(_) => Ok(Some(Seq(
                i64::try_from(number(&query, name, 0)?).unwrap_or(i64::MAX)
            ))),
        }
    };
    let page = match (seq("before")?, seq("after")?) {
        (Some(_), Some(_)) => {
            return Err(RoomError::Request(RequestError::BadRequest(
                "give `before` or `after`, not both".into(),
            )))
        }
        (Some(before), None) => Page::Before { before, limit },
        (None, Some(after)) => Page::After { after, limit },
        (None, None) => Page::Latest { limit },
    };
    let messages = request
        .app
        .history
        .page(room_id, page)
        .await
        .map_err(RequestError::from)?;
    Ok(json(StatusCode::OK, &MessagePage { messages }))
}

async fn direct(request: Request, body: Bytes) -> Result<Response> {
    let me = request.identify().await?;
    request.count_write(&me, false)?;
    let form: UserRef = parse(&body)?;
    let directory = &request.app.directory;
    let other = request
        .app
        .store
        .user_by_name(form.username.clone())
        .await
        .map_err(RequestError::from)?
        .ok_or(RoomError::UserNotFound)?;
    if other == me.user.user_id {
        return Err(RoomError::Myself);
    }
    // The names as registered: the other may have been typed in another case.
    let mut pair = [String::new(), form.username];
    for (slot, user) in pair.iter_mut().zip([me.user.user_id, other]) {
        if let Some(profile) = directory.profile(user).await.map_err(RequestError::from)? {
            *slot = profile.username;
        }
    }
    pair.sort();
    let name = format!("{} & {}", pair[0], pair[1]);
    let (info, added) = directory
        .direct_room(me.user.user_id, other, name)
        .await
        .map_err(RequestError::from)?;
    for user in added {
        rooms_changed(&request, user).await;
    }
    Ok(json(StatusCode::OK, &room(info, Some(Role::Member))))
}
