//! `GET /api/me`, `PATCH /api/me`, `GET /api/users/{id}`, and `GET /api/users?q=`, which
//! finds users by the start of their name for the pickers of invitations and direct messages.

use super::{body, finish, json, parse, request, ApiFailure, Request, RequestError};
use crate::app::App;
use bytes::Bytes;
use chat_protocol::api::{validate_profile_update, ProfileUpdate, UserList};
use chat_protocol::limits::{MAX_USER_QUERY_CHARS, MAX_USER_SEARCH};
use chat_protocol::{ErrorCode, UserId};
use std::collections::HashMap;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

#[derive(Debug, thiserror::Error)]
enum ProfileError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("no such user")]
    UserNotFound,
}

impl ApiFailure for ProfileError {
    fn status(&self) -> StatusCode {
        match self {
            ProfileError::Request(error) => error.status(),
            ProfileError::UserNotFound => StatusCode::NOT_FOUND,
        }
    }

    fn code(&self) -> ErrorCode {
        match self {
            ProfileError::Request(error) => error.code(),
            ProfileError::UserNotFound => ErrorCode::UserNotFound,
        }
    }

    fn retry_after(&self) -> Option<crate::rate_limit::RetryAfter> {
        match self {
            ProfileError::Request(error) => error.retry_after(),
            ProfileError::UserNotFound => None,
        }
    }
}

type Result<T> = std::result::Result<T, ProfileError>;

pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let me = warp::path!("me")
        .and(warp::get())
        .and(request(app.clone()))
        .then(|request: Request| async move { finish(my_profile(request).await) });
    let update = warp::path!("me")
        .and(warp::patch())
        .and(request(app.clone()))
        .and(body())
        .then(|request: Request, body: Bytes| async move {
            finish(update_profile(request, body).await)
        });
    let other =
        warp::path!("users" / i64)
            .and(warp::get())
            .and(request(app.clone()))
            .then(|user: i64, request: Request| async move {
                finish(profile(request, UserId(user)).await)
            });
    let search = warp::path!("users")
        .and(warp::get())
        .and(request(app))
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |request: Request, query: HashMap<String, String>| async move {
                finish(search(request, query).await)
            },
        );
    me.or(update)
        .unify()
        .or(other)
        .unify()
        .or(search)
        .unify()
        .boxed()
}

async fn my_profile(request: Request) -> Result<Response> {
    let me = request.identify().await?;
    match profile(request, me.user.user_id).await {
        // The session's user is gone: that session signs nobody in.
        Err(ProfileError::UserNotFound) => Err(RequestError::Unauthenticated.into()),
        answer => answer,
    }
}

async fn profile(request: Request, user: UserId) -> Result<Response> {
    request.identify().await?;
    let profile = request
        .app
        .directory
        .profile(user)
        .await
        .map_err(RequestError::from)?
        .ok_or(ProfileError::UserNotFound)?;
    Ok(json(StatusCode::OK, &profile))
}

async fn update_profile(request: Request, body: Bytes) -> Result<Response> {
    let me = request.identify().await?;
    request.count_write(&me, false)?;
    let update: ProfileUpdate = parse(&body)?;
    validate_profile_update(&update).map_err(RequestError::from)?;
    let profile = request
        .app
        .directory
        .update_profile(me.user.user_id, update)
        .await
        .map_err(RequestError::from)?
        .ok_or(RequestError::Unauthenticated)?;
    Ok(json(StatusCode::OK, &profile))
}

/// Users whose user name or display name starts with `q`. Nothing to match (no `q`, or only
/// spaces) is an empty list, not every user.
async fn search(request: Request, query: HashMap<String, String>) -> Result<Response> {
    request.identify().await?;
    let prefix = query.get("q").map(String::as_str).unwrap_or_default();
    if prefix.contains('\0') {
        return Err(RequestError::BadRequest(super::NUL_REFUSED.to_owned()).into());
    }
    if prefix.chars().count() > MAX_USER_QUERY_CHARS {
        return Err(RequestError::BadRequest(format!(
            "`q` is at most {MAX_USER_QUERY_CHARS} characters: no name is longer"
        ))
        .into());
    }
    if prefix.trim().is_empty() {
        return Ok(json(StatusCode::OK, &UserList { users: Vec::new() }));
    }
    let users = request
        .app
        .store
        .search_users(prefix.to_owned(), MAX_USER_SEARCH as i64)
        .await
        .map_err(RequestError::from)?;
    Ok(json(StatusCode::OK, &UserList { users }))
}
