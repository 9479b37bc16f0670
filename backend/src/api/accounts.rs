//! `POST /api/register`, `/api/login`, `/api/logout`, `/api/password`.

use super::{
    body, finish, json, no_content, parse, request, with_cookie, ApiFailure, Request, RequestError,
};
use crate::app::App;
use crate::auth;
use crate::store::NewUser;
use bytes::Bytes;
use chat_protocol::api::{
    default_initials, validate_display_name, validate_password, validate_username,
    ChangePasswordRequest, LoginRequest, Profile, RegisterRequest, SessionInfo,
};
use chat_protocol::bus::EndedSessions;
use chat_protocol::{ErrorCode, UserId};
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

#[derive(Debug, thiserror::Error)]
enum AccountError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("that user name is taken")]
    UsernameTaken,
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("the current password is wrong")]
    WrongCurrentPassword,
}

impl ApiFailure for AccountError {
    fn status(&self) -> StatusCode {
        match self {
            AccountError::Request(error) => error.status(),
            AccountError::UsernameTaken => StatusCode::CONFLICT,
            AccountError::BadCredentials => StatusCode::UNAUTHORIZED,
            AccountError::WrongCurrentPassword => StatusCode::FORBIDDEN,
        }
    }

    fn code(&self) -> ErrorCode {
        match self {
            AccountError::Request(error) => error.code(),
            AccountError::UsernameTaken => ErrorCode::UsernameTaken,
            AccountError::BadCredentials | AccountError::WrongCurrentPassword => {
                ErrorCode::BadCredentials
            }
        }
    }

    fn retry_after(&self) -> Option<crate::rate_limit::RetryAfter> {
        match self {
            AccountError::Request(error) => error.retry_after(),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, AccountError>;

pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let register = warp::path!("register")
        .and(warp::post())
        .and(request(app.clone()))
        .and(body())
        .then(|request: Request, body: Bytes| async move { finish(register(request, body).await) });
    let login = warp::path!("login")
        .and(warp::post())
        .and(request(app.clone()))
        .and(body())
        .then(|request: Request, body: Bytes| async move { finish(login(request, body).await) });
    let logout = warp::path!("logout")
        .and(warp::post())
        .and(request(app.clone()))
        .then(|request: Request| async move { finish(logout(request).await) });
    let password = warp::path!("password")
        .and(warp::post())
        .and(request(app))
        .and(body())
        .then(|request: Request, body: Bytes| async move {
            finish(change_password(request, body).await)
        });
    register
        .or(login)
        .unify()
        .or(logout)
        .unify()
        .or(password)
        .unify()
        .boxed()
}

async fn register(request: Request, body: Bytes) -> Result<Response> {
    request.check_origin()?;
    request
        .app
        .limits
        .check_registration(request.ip)
        .await
        .map_err(RequestError::from)?;
    let form: RegisterRequest = parse(&body)?;
    validate_username(&form.username).map_err(RequestError::from)?;
    validate_password(&form.password).map_err(RequestError::from)?;
    let display_name = form.display_name.unwrap_or_else(|| form.username.clone());
    validate_display_name(&display_name).map_err(RequestError::from)?;
    let password_hash = auth::hash_password(form.password)
        .await
        .map_err(RequestError::from)?;
    let created = request
        .app
        .store
        .create_user(NewUser {
            username: form.username,
            avatar_initials: default_initials(&display_name),
            display_name,
            password_hash,
        })
        .await
        .map_err(RequestError::from)?;
    let Some(user) = created else {
        return Err(AccountError::UsernameTaken);
    };
    start_session(&request, user.into_profile(), StatusCode::CREATED).await
}

async fn login(request: Request, body: Bytes) -> Result<Response> {
    request.check_origin()?;
    let form: LoginRequest = parse(&body)?;
    request
        .app
        .limits
        .check_login(request.ip, &form.username)
        .await
        .map_err(RequestError::from)?;
    let credentials = if validate_username(&form.username).is_ok() {
        request
            .app
            .store
            .credentials(form.username.clone())
            .await
            .map_err(RequestError::from)?
    } else {
        None
    };
    let (user, hash) = match credentials {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    let matches = auth::verify_password(form.password, hash)
        .await
        .map_err(RequestError::from)?;
    let Some(user) = user.filter(|_| matches) else {
        request.app.metrics.auth_failures.inc();
        return Err(AccountError::BadCredentials);
    };
    let profile = load_profile(&request, user).await?;
    start_session(&request, profile, StatusCode::OK).await
}

async fn logout(request: Request) -> Result<Response> {
    let me = request.identify().await?;
    let session = me.session_key();
    request
        .app
        .store
        .delete_session(me.token_hash)
        .await
        .map_err(RequestError::from)?;
    let ended = EndedSessions::Only(vec![session.to_hex()]);
    auth::sessions_ended(&request.app, me.user.user_id, ended).await;
    Ok(with_cookie(
        no_content(),
        &auth::cleared_cookie(request.app.config.cookie_secure),
    ))
}

async fn change_password(request: Request, body: Bytes) -> Result<Response> {
    let me = request.identify().await?;
    request.count_write(&me, false)?;
    let form: ChangePasswordRequest = parse(&body)?;
    request
        .app
        .limits
        .check_login(request.ip, &format!("#{}", me.user.user_id))
        .await
        .map_err(RequestError::from)?;
    validate_password(&form.new_password).map_err(RequestError::from)?;
    let current = request
        .app
        .store
        .password_hash(me.user.user_id)
        .await
        .map_err(RequestError::from)?;
    if !auth::verify_password(form.current_password, current)
        .await
        .map_err(RequestError::from)?
    {
        request.app.metrics.auth_failures.inc();
        return Err(AccountError::WrongCurrentPassword);
    }
    let hash = auth::hash_password(form.new_password)
        .await
        .map_err(RequestError::from)?;
    let kept = me.session_key();
    request
        .app
        .store
        .set_password(me.user.user_id, hash, me.token_hash)
        .await
        .map_err(RequestError::from)?;
    // The session that changed the password stays; every other one ends.
    let ended = EndedSessions::AllBut(Some(kept.to_hex()));
    auth::sessions_ended(&request.app, me.user.user_id, ended).await;
    Ok(no_content())
}

async fn load_profile(request: &Request, user: UserId) -> Result<Profile> {
    request
        .app
        .directory
        .profile(user)
        .await
        .map_err(RequestError::from)?
        .ok_or(AccountError::BadCredentials)
}

/// Creates a session and answers with its token, in the body and as the cookie.
async fn start_session(
    request: &Request,
    profile: Profile,
    status: StatusCode,
) -> Result<Response> {
    let (token, token_hash) = auth::new_token();
    let ttl = chrono::Duration::hours(i64::from(request.app.config.session_ttl_hours.max(1)));
    let expires_at = chrono::Utc::now() + ttl;
    request
        .app
        .store
        .create_session(profile.user_id, token_hash, expires_at)
        .await
        .map_err(RequestError::from)?;
    let cookie = auth::session_cookie(&token, ttl.num_seconds(), request.app.config.cookie_secure);
    let answer = SessionInfo {
        token,
        expires_at_ms: expires_at.timestamp_millis(),
        profile,
    };
    Ok(with_cookie(json(status, &answer), &cookie))
}
