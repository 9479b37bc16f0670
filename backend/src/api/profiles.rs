//! `GET /api/me`, `PATCH /api/me`, `GET /api/users/{id}`.

use super::{body, finish, json, parse, request, ApiFailure, Request, RequestError};
use crate::app::App;
use chat_protocol::api::{validate_profile_update, ProfileUpdate};
use chat_protocol::{ErrorCode, UserId};
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::hyper::body::Bytes;
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
            .and(request(app))
            .then(|user: i64, request: Request| async move {
                finish(profile(request, UserId(user)).await)
            });
    me.or(update).unify().or(other).unify().boxed()
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
