//! HTTP routes: the WebSocket endpoint, the REST API, health and readiness and the web client on
//! the main listener; metrics, health and readiness on the operator's listener.

use crate::access_log::Access;
use crate::admission::WebSocketPermit;
use crate::api::{self, Request, RequestError};
use crate::app::App;
use crate::listener::{Acceptor, ClientConnection, Timeouts, Upgraded};
use crate::session;
use crate::web;
use chat_protocol::limits::MAX_FRAME_BYTES;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded as UpgradedIo};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;
use tracing::Instrument as _;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// Largest WebSocket message accepted at all. Between this and `MAX_FRAME_BYTES` a frame gets a
/// `frame_too_large` error and the connection stays open; above it the connection is closed.
const MAX_WS_MESSAGE_BYTES: usize = 4 * MAX_FRAME_BYTES;

/// Bytes each connection reads from its socket at a time. The buffer is allocated up front for
/// every connection (so it is most of what an idle one costs) and its free part is zeroed before
/// every read; client frames are small, and it grows when one needs more.
const WS_READ_BUFFER_BYTES: usize = 1024;

/// Bytes of frames the WebSocket layer gathers before it writes them to the socket. The
/// session flushes after every burst anyway; a small buffer keeps what a connection whose peer
/// does not read holds (beyond its outbox) small too.
const WS_WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// A WebSocket session's socket: the HTTP connection after its upgrade.
pub type Socket = WebSocketStream<TokioIo<UpgradedIo>>;

/// How long the operator's listener waits after a failed accept before the next.
const OPERATOR_ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The pending upgrade of a request's connection. [`serve`] takes it out of every request that
/// asks for an upgrade and leaves it in the request's extensions in a form filters can clone;
/// the `/ws` route claims it once the request is accepted.
#[derive(Clone)]
struct PendingUpgrade(Arc<Mutex<Option<OnUpgrade>>>);

impl PendingUpgrade {
    fn claim(&self) -> Option<OnUpgrade> {
        crate::locks::lock(&self.0).take()
    }
}

/// Readiness report served by `/readyz`.
#[derive(Debug, Serialize)]
struct Readiness {
    ready: bool,
    postgres: &'static str,
    rabbitmq: &'static str,
    node_id: String,
}

/// The address a request came from, put in the request's extensions by [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Serves [`routes`] on `listener` until `shutdown` resolves. Unlike warp's own server, this
/// keeps each connection's peer address, which the per-IP limits need, counts connections
/// against the node's limits ([`crate::admission`]) and closes silent ones
/// ([`crate::listener`]).
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let timeouts = Timeouts {
        header: Duration::from_millis(app.config.http_header_timeout_ms.max(1)),
        idle: Duration::from_millis(app.config.http_idle_timeout_ms.max(1)),
    };
    let https_only = app.config.cookie_secure;
    let mut acceptor = Acceptor::new(
        listener,
        app.admission.clone(),
        app.config.trusted_proxies.0.clone(),
        timeouts,
    );
    let metrics = app.metrics.clone();
    let service = warp::service(routes(app));
    let connections = Connections::new(timeouts.header);
    tokio::pin!(shutdown);
    loop {
        let connection: ClientConnection = tokio::select! {
            connection = acceptor.accept() => connection,
            () = &mut shutdown => break,
        };
        let peer = Peer(connection.peer());
        let upgraded = connection.upgraded();
        let service = service.clone();
        let metrics = metrics.clone();
        let handler = service_fn(move |mut request: warp::http::Request<Incoming>| {
            let access = Access::begin(&request);
            let metrics = metrics.clone();
            request.extensions_mut().insert(peer);
            if request.headers().contains_key(header::UPGRADE) {
                let upgrade = hyper::upgrade::on(&mut request);
                let pending = PendingUpgrade(Arc::new(Mutex::new(Some(upgrade))));
                request.extensions_mut().insert(pending);
                request.extensions_mut().insert(upgraded.clone());
            }
            // What the handlers log carries the request's method and path.
            let span = access.span();
            let answer = span.in_scope(|| service.clone().call(request));
            async move {
                let mut response = answer.await?;
                web::add_security_headers(response.headers_mut(), https_only);
                access.end(&metrics, response.status());
                Ok::<_, Infallible>(response)
            }
            .instrument(span)
        });
        connections.spawn(connection, handler);
    }
    connections.close().await;
}

/// The HTTP/1.1 connections of one listener: served by hyper, each on its own task, and closed
/// gracefully (the answer in progress finished, then the connection shut) when the listener
/// stops. Upgraded connections have left hyper by then and end with their sessions.
struct Connections {
    builder: http1::Builder,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Connections {
    fn new(header_timeout: Duration) -> Connections {
        let mut builder = http1::Builder::new();
        // The node speaks HTTP/1.1 (browsers reach it through a TLS proxy); no HTTP/2 to attack.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        Connections {
            builder,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    fn spawn<IO, S>(&self, io: IO, service: S)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
        S: hyper::service::Service<
                warp::http::Request<Incoming>,
                Response = warp::reply::Response,
                Error = Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let connection = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }

    async fn close(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Serves the operator's endpoints (`/metrics`, `/healthz`, `/readyz`) on `listener` until
/// `shutdown` resolves. Its connections are not counted against the client limits, so a node
/// full of clients still answers its health checks here.
pub async fn serve_operator(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let header_timeout = Duration::from_millis(app.config.http_header_timeout_ms.max(1));
    let https_only = app.config.cookie_secure;
    let metrics = app.metrics.clone();
    let routes = operator_routes(app).map(move |reply: warp::reply::Response| {
        let mut response = reply.into_response();
        web::add_security_headers(response.headers_mut(), https_only);
        response
    });
    let service = warp::service(routes);
    let connections = Connections::new(header_timeout);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "operator's listener: cannot accept");
                tokio::time::sleep(OPERATOR_ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let service = service.clone();
        let metrics = metrics.clone();
        let handler = service_fn(move |request: warp::http::Request<Incoming>| {
            let access = Access::begin(&request);
            let metrics = metrics.clone();
            let answer = service.clone().call(request);
            async move {
                let response = answer.await?;
                access.end(&metrics, response.status());
                Ok::<_, Infallible>(response)
            }
        });
        connections.spawn(stream, handler);
    }
    connections.close().await;
}

/// `/metrics`, `/healthz` and `/readyz`.
fn operator_routes(
    app: Arc<App>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let metrics = {
        let app = app.clone();
        warp::path("metrics")
            .and(warp::path::end())
            .and(warp::get())
            .then(move || {
                let app = app.clone();
                async move {
                    refresh_gauges(&app).await;
                    warp::reply::with_header(
                        app.metrics.render(),
                        "content-type",
                        "text/plain; version=0.0.4",
                    )
                    .into_response()
                }
            })
    };
    metrics
        .or(health(app))
        .unify()
        .or(warp::any().map(|| web::not_found("no such endpoint")))
        .unify()
}

/// `/healthz` and `/readyz`, served by both listeners.
fn health(
    app: Arc<App>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let healthz = warp::path("healthz")
        .and(warp::path::end())
        .and(warp::get())
        .map(|| "ok".into_response());
    let readyz = warp::path("readyz")
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::any().map(move || app.clone()))
        .then(readyz);
    healthz.or(readyz).unify()
}

/// Every route the main listener serves.
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let ws = warp::path("ws")
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PendingUpgrade>())
        .and(warp::ext::optional::<Upgraded>())
        .and(api::request(app.clone()))
        .then(upgrade);

    // Metrics are the operator's: on their own listener only, never next to the public API.
    let no_metrics = warp::path("metrics")
        .and(warp::path::end())
        .map(|| web::not_found("no such endpoint"));

    ws.or(api::routes(app.clone()))
        .or(health(app.clone()))
        .or(no_metrics)
        .or(web::routes(app.config.web_dir.clone()))
}

/// Upgrades to a WebSocket session for a signed-in user from an allowed origin; otherwise
/// answers 400 (not a WebSocket handshake), 401 or 403 with the JSON error body, as the REST API
/// does.
async fn upgrade(
    headers: HeaderMap,
    pending: Option<PendingUpgrade>,
    upgraded: Option<Upgraded>,
    request: Request,
) -> warp::reply::Response {
    let accept = match handshake_accept(&headers) {
        Ok(accept) => accept,
        Err(error) => return api::finish(Err(error)),
    };
    let identity = match request.identify().await {
        Ok(identity) => identity,
        Err(error) => return api::finish(Err(error)),
    };
    // Counted from here until its session ends, however it ends.
    let permit: WebSocketPermit = match request
        .app
        .admission
        .admit_websocket(identity.user.user_id, request.ip)
    {
        Ok(permit) => permit,
        Err(refusal) => return api::finish(Err(refusal)),
    };
    let Some(on_upgrade) = pending.as_ref().and_then(PendingUpgrade::claim) else {
        return api::finish(Err(RequestError::BadRequest(
            "the connection cannot be upgraded".to_owned(),
        )));
    };
    if let Some(upgraded) = upgraded {
        upgraded.mark();
    }
    let app = request.app;
    let peer = request.ip;
    tokio::spawn(async move {
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "WebSocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER_BYTES)
            .write_buffer_size(WS_WRITE_BUFFER_BYTES)
            .max_message_size(Some(MAX_WS_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_WS_MESSAGE_BYTES));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let sessions = app.sessions.clone();
        sessions
            .track_future(session::serve(socket, app, identity, peer))
            .await;
    });
    let mut response = warp::reply::Response::default();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// Checks that a request is a WebSocket opening handshake (RFC 6455, section 4.2.1) and returns
/// the `Sec-WebSocket-Accept` value that answers it.
fn handshake_accept(headers: &HeaderMap) -> Result<HeaderValue, RequestError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    let refuse = |what: &str| {
        Err(RequestError::BadRequest(format!(
            "not a WebSocket handshake: {what}"
        )))
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return refuse("Connection does not include upgrade");
    }
    if !has_token(header::UPGRADE, "websocket") {
        return refuse("Upgrade is not websocket");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return refuse("Sec-WebSocket-Version is not 13");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse("Sec-WebSocket-Key is missing");
    };
    HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .or_else(|_| refuse("Sec-WebSocket-Key is malformed"))
}

async fn readyz(app: Arc<App>) -> warp::reply::Response {
    let report = readiness(&app).await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(warp::reply::json(&report), status).into_response()
}

async fn readiness(app: &App) -> Readiness {
    let postgres = app.store.ping().await.is_ok();
    let rabbitmq = app.bus.is_ready();
    let ready = postgres && rabbitmq && app.is_started() && !app.shutdown.is_cancelled();
    Readiness {
        ready,
        postgres: if postgres { "up" } else { "down" },
        rabbitmq: if rabbitmq { "up" } else { "down" },
        node_id: app.node_id().to_owned(),
    }
}

/// Sets the gauges that are read rather than kept: readiness, the RabbitMQ connection and the
/// PostgreSQL pools.
async fn refresh_gauges(app: &App) {
    let metrics = &app.metrics;
    metrics.ready.set(i64::from(readiness(app).await.ready));
    metrics.bus_connected.set(i64::from(app.bus.is_ready()));
    for (pool, state) in app.store.pool_states() {
        let set = |label: &str, value: u32| {
            metrics
                .db_pool_connections
                .with_label_values(&[pool, label])
                .set(i64::from(value));
        };
        set("idle", state.idle);
        set("in_use", state.open.saturating_sub(state.idle));
        set("max", state.max);
    }
}
