//! The REST API under `/api`: accounts, profiles, rooms and search, one file per resource.
//!
//! Every handler takes a [`Request`] (the node, the caller's credentials and address) and
//! returns `Result<Response, E>` where `E` is the resource's own error enum. [`ApiFailure`] maps
//! each enum to an HTTP status and a stable [`ErrorCode`] in one `match`; [`finish`] turns it
//! into the JSON error body `{"code":…,"message":…}` (plus `Retry-After` for `rate_limited`),
//! and logs the errors a client cannot cause. Rejections by warp itself (unknown path, wrong
//! method, body too large) get the same JSON shape from [`rejection`].

mod accounts;
mod profiles;
mod rooms;
mod search;

use crate::app::App;
use crate::auth::{self, Credentials, Identity};
use crate::forwarded;
use crate::http::Peer;
use crate::rate_limit::RetryAfter;
use crate::store::StoreError;
use bytes::Bytes;
use chat_protocol::api::{ApiError, Invalid};
use chat_protocol::limits::MAX_REQUEST_BYTES;
use chat_protocol::ErrorCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::header::{HeaderMap, HeaderValue, ALLOW, RETRY_AFTER, SET_COOKIE};
use warp::http::StatusCode;
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// Every `/api` route, answering JSON for every outcome.
pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let api = accounts::routes(app.clone())
        .or(profiles::routes(app.clone()))
        .unify()
        .or(rooms::routes(app.clone()))
        .unify()
        .or(search::routes(app))
        .unify()
        .recover(rejection)
        .unify();
    warp::path("api")
        .and(warp::path::full())
        .and(api)
        .map(|path: FullPath, response: Response| with_allow(path.as_str(), response))
        .boxed()
}

/// Adds `Allow` to a 405 answer: the methods the path takes.
pub fn with_allow(path: &str, mut response: Response) -> Response {
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        if let Some(methods) = allowed_methods(path) {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(methods));
        }
    }
    response
}

/// The methods each path of the API takes (as routed in `accounts.rs`, `profiles.rs`,
/// `rooms.rs`, `search.rs`; `tests/integration/openapi.rs` checks them against docs/openapi.yaml).
fn allowed_methods(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let id = |segment: &str| segment.parse::<i64>().is_ok();
    let methods = match segments.as_slice() {
        ["api", "register" | "login" | "logout" | "password" | "direct"] => "POST",
        ["api", "me"] => "GET, PATCH",
        ["api", "me", "rooms"] => "GET",
        ["api", "users" | "search"] => "GET",
        ["api", "users", user] if id(user) => "GET",
        ["api", "rooms"] => "GET, POST",
        ["api", "rooms", room] if id(room) => "GET, PATCH",
        ["api", "rooms", room, "join" | "leave" | "invite"] if id(room) => "POST",
        ["api", "rooms", room, "members" | "messages"] if id(room) => "GET",
        ["api", "rooms", room, "members", user] if id(room) && id(user) => "DELETE",
        _ => return None,
    };
    Some(methods)
}

/// The route an `/api` path takes, as a template with `{room_id}` and `{user_id}` in place of
/// ids (the paths of docs/openapi.yaml), or `None` for a path no route takes. Metrics label
/// requests by it, so a label never carries a raw path.
pub fn route_template(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let id = |segment: &str| segment.parse::<i64>().is_ok();
    let template = match segments.as_slice() {
        ["api", "register"] => "/api/register",
        ["api", "login"] => "/api/login",
        ["api", "logout"] => "/api/logout",
        ["api", "password"] => "/api/password",
        ["api", "direct"] => "/api/direct",
        ["api", "me"] => "/api/me",
        ["api", "me", "rooms"] => "/api/me/rooms",
        ["api", "users"] => "/api/users",
        ["api", "users", user] if id(user) => "/api/users/{user_id}",
        ["api", "rooms"] => "/api/rooms",
        ["api", "rooms", room] if id(room) => "/api/rooms/{room_id}",
        ["api", "rooms", room, "join"] if id(room) => "/api/rooms/{room_id}/join",
        ["api", "rooms", room, "leave"] if id(room) => "/api/rooms/{room_id}/leave",
        ["api", "rooms", room, "invite"] if id(room) => "/api/rooms/{room_id}/invite",
        ["api", "rooms", room, "members"] if id(room) => "/api/rooms/{room_id}/members",
        ["api", "rooms", room, "messages"] if id(room) => "/api/rooms/{room_id}/messages",
        ["api", "rooms", room, "members", user] if id(room) && id(user) => {
            "/api/rooms/{room_id}/members/{user_id}"
        }
        _ => return None,
    };
    Some(template)
}

/// Everything a handler knows about the request besides its body and path.
pub struct Request {
    pub app: Arc<App>,
    pub credentials: Credentials,
    pub origin: Option<String>,
    pub host: Option<String>,
    /// The client's address: the connection's peer, or behind a trusted proxy the address it
    /// forwards for. The per-IP limits count it (REST and WebSocket sessions alike).
    pub ip: Option<IpAddr>,
}

impl Request {
    /// Refuses browser requests from pages of other origins.
    pub fn check_origin(&self) -> Result<(), RequestError> {
        if auth::origin_allowed(
            &self.app.config.allowed_origins,
            self.origin.as_deref(),
            self.host.as_deref(),
        ) {
            Ok(())
        } else {
            Err(RequestError::OriginNotAllowed)
        }
    }

    /// The signed-in caller, or `unauthenticated`.
    pub async fn identify(&self) -> Result<Identity, RequestError> {
        self.check_origin()?;
        match auth::authenticate(&self.app, &self.credentials).await? {
            Some(identity) => Ok(identity),
            None => {
                self.app.metrics.auth_failures.inc();
                Err(RequestError::Unauthenticated)
            }
        }
    }

    /// Counts a REST write by `me` against the per-user limits; a refused write changes nothing.
    pub fn count_write(&self, me: &Identity, creates_room: bool) -> Result<(), RequestError> {
        Ok(self.app.limits.check_write(me.user.user_id, creates_room)?)
    }
}

/// The request context filter.
pub fn request(app: Arc<App>) -> impl Filter<Extract = (Request,), Error = Rejection> + Clone {
    warp::header::optional::<String>("cookie")
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("host"))
        .and(warp::ext::optional::<Peer>())
        .and(warp::header::headers_cloned())
        .map(
            move |cookie, authorization, origin, host, peer: Option<Peer>, headers: HeaderMap| {
                let ip = peer.map(|Peer(addr)| {
                    forwarded::client_ip(
                        addr.ip(),
                        headers.get_all(X_FORWARDED_FOR),
                        &app.config.trusted_proxies.0,
                    )
                });
                Request {
                    app: app.clone(),
                    credentials: Credentials {
                        cookie,
                        authorization,
                    },
                    origin,
                    host,
                    ip,
                }
            },
        )
}

/// Where proxies say whom they forward for (see [`forwarded`]).
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// A JSON request body, at most [`MAX_REQUEST_BYTES`].
pub fn body() -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::body::content_length_limit(MAX_REQUEST_BYTES).and(warp::body::bytes())
}

/// Decodes a JSON body into a request type. Text holding NUL is refused here, for every
/// endpoint: PostgreSQL cannot store it, and no name, password or profile field needs it.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    let bad = |error: serde_json::Error| RequestError::BadRequest(error.to_string());
    let value: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
    if holds_nul(&value) {
        return Err(RequestError::BadRequest(NUL_REFUSED.to_owned()));
    }
    serde_json::from_value(value).map_err(bad)
}

/// Why text with a NUL character is refused.
pub const NUL_REFUSED: &str = "text may not contain the NUL character";

/// Whether any string or key in `value` contains NUL.
fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(fields) => fields
            .iter()
            .any(|(key, field)| key.contains('\0') || holds_nul(field)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Failures every endpoint shares.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("sign in first: no valid session cookie or bearer token")]
    Unauthenticated,
    #[error("requests from this origin are not allowed")]
    OriginNotAllowed,
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("{}", .0.message)]
    Invalid(Invalid),
    #[error("too many requests; retry later")]
    RateLimited(RetryAfter),
    #[error("internal error; retry later")]
    Store(#[from] StoreError),
    #[error("internal error; retry later")]
    Password(#[from] auth::PasswordError),
}

impl From<Invalid> for RequestError {
    fn from(invalid: Invalid) -> Self {
        RequestError::Invalid(invalid)
    }
}

impl From<RetryAfter> for RequestError {
    fn from(retry: RetryAfter) -> Self {
        RequestError::RateLimited(retry)
    }
}

/// How an error shows on the wire.
pub trait ApiFailure: std::error::Error {
    fn status(&self) -> StatusCode;
    fn code(&self) -> ErrorCode;
    fn retry_after(&self) -> Option<RetryAfter> {
        None
    }
}

impl ApiFailure for RequestError {
    fn status(&self) -> StatusCode {
        match self {
            RequestError::Unauthenticated => StatusCode::UNAUTHORIZED,
            RequestError::OriginNotAllowed => StatusCode::FORBIDDEN,
            RequestError::BadRequest(_) | RequestError::Invalid(_) => StatusCode::BAD_REQUEST,
            RequestError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            RequestError::Store(_) | RequestError::Password(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> ErrorCode {
        match self {
            RequestError::Unauthenticated => ErrorCode::Unauthenticated,
            RequestError::OriginNotAllowed => ErrorCode::OriginNotAllowed,
            RequestError::BadRequest(_) => ErrorCode::BadRequest,
            RequestError::Invalid(invalid) => invalid.code,
            RequestError::RateLimited(_) => ErrorCode::RateLimited,
            RequestError::Store(_) | RequestError::Password(_) => ErrorCode::Internal,
        }
    }

    fn retry_after(&self) -> Option<RetryAfter> {
        match self {
            RequestError::RateLimited(retry) => Some(*retry),
            _ => None,
        }
    }
}

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// An empty answer.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Adds a `Set-Cookie` header.
pub fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

/// Turns a handler's result into the answer.
pub fn finish<E: ApiFailure>(result: Result<Response, E>) -> Response {
    let error = match result {
        Ok(response) => return response,
        Err(error) => error,
    };
    let status = error.status();
    if status.is_server_error() {
        tracing::error!(error = %format!("{error:?}"), "request failed");
    }
    let retry = error.retry_after();
    let body = ApiError {
        code: error.code(),
        message: error.to_string(),
        retry_after_ms: retry.map(RetryAfter::millis),
    };
    let mut response = json(status, &body);
    if let Some(retry) = retry {
        if let Ok(value) = HeaderValue::from_str(&retry.secs().to_string()) {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
    }
    response
}

/// Warp's own rejections inside `/api`, as JSON errors. A route whose method matched and that
/// refused the request itself (no length, too large) says more than the other routes of the path
/// refusing the method, so those come before 405.
async fn rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let (status, code, message) = if rejection.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such endpoint",
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            "request bodies are limited to 16 KiB",
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            ErrorCode::BadRequest,
            "a Content-Length header is required",
        )
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        (
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "malformed query string",
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            "this endpoint does not take this method",
        )
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        (
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "malformed request",
        )
    };
    Ok(json(
        status,
        &ApiError {
            code,
            message: message.to_owned(),
            retry_after_ms: None,
        },
    ))
}
