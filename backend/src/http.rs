//! HTTP routes: the WebSocket endpoint, the REST API, health and readiness, metrics and the web
//! client.

use crate::api::{self, Request, RequestError};
use crate::app::App;
use crate::session;
use chat_protocol::limits::MAX_FRAME_BYTES;
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::StatusCode;
use warp::hyper::upgrade::{OnUpgrade, Upgraded};
use warp::{Filter, Rejection, Reply};

/// Largest WebSocket message accepted at all. Between this and `MAX_FRAME_BYTES` a frame gets a
/// `frame_too_large` error and the connection stays open; above it the connection is closed.
const MAX_WS_MESSAGE_BYTES: usize = 4 * MAX_FRAME_BYTES;

/// Bytes each connection reads from its socket at a time. The buffer is allocated up front for
/// every connection (so it is most of what an idle one costs) and its free part is zeroed before
/// every read; client frames are small, and it grows when one needs more.
const WS_READ_BUFFER_BYTES: usize = 1024;

/// A WebSocket session's socket: the HTTP connection after its upgrade.
pub type Socket = WebSocketStream<Upgraded>;

/// The pending upgrade of a request's connection. [`serve`] takes it out of every request that
/// asks for an upgrade and leaves it in the request's extensions in a form filters can clone;
/// the `/ws` route claims it once the request is accepted.
#[derive(Clone)]
struct PendingUpgrade(Arc<Mutex<Option<OnUpgrade>>>);

impl PendingUpgrade {
    fn claim(&self) -> Option<OnUpgrade> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
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

/// Serves [`routes`] on `listener` until `shutdown` resolves. Unlike warp's `serve_incoming`,
/// this keeps each connection's peer address, which the per-IP rate limits need.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use warp::hyper::server::conn::{AddrIncoming, AddrStream};
    use warp::hyper::service::{make_service_fn, service_fn, Service};
    let service = warp::service(routes(app));
    let make = make_service_fn(move |conn: &AddrStream| {
        let peer = Peer(conn.remote_addr());
        let service = service.clone();
        async move {
            Ok::<_, Infallible>(service_fn(move |mut request: warp::http::Request<_>| {
                request.extensions_mut().insert(peer);
                if request.headers().contains_key(header::UPGRADE) {
                    let upgrade = warp::hyper::upgrade::on(&mut request);
                    let pending = PendingUpgrade(Arc::new(Mutex::new(Some(upgrade))));
                    request.extensions_mut().insert(pending);
                }
                service.clone().call(request)
            }))
        }
    });
    let incoming = match AddrIncoming::from_listener(listener) {
        Ok(mut incoming) => {
            incoming.set_nodelay(true);
            incoming
        }
        Err(error) => {
            tracing::error!(%error, "cannot serve HTTP");
            return;
        }
    };
    let server = warp::hyper::Server::builder(incoming)
        .serve(make)
        .with_graceful_shutdown(shutdown);
    if let Err(error) = server.await {
        tracing::error!(%error, "HTTP server failed");
    }
}

/// Every route the node serves.
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };

    let ws = warp::path("ws")
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PendingUpgrade>())
        .and(api::request(app.clone()))
        .then(upgrade);

    let healthz = warp::path("healthz")
        .and(warp::path::end())
        .and(warp::get())
        .map(|| "ok");

    let readyz = warp::path("readyz")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app.clone())
        .and_then(readyz);

    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app)
        .map(|app: Arc<App>| {
            warp::reply::with_header(
                app.metrics.render(),
                "content-type",
                "text/plain; version=0.0.4",
            )
        });

    let web = warp::get().and(warp::fs::dir(app.config.web_dir.clone()));

    ws.or(api::routes(app.clone()))
        .or(healthz)
        .or(readyz)
        .or(metrics)
        .or(web)
        .with(warp::trace::request())
}

/// Upgrades to a WebSocket session for a signed-in user from an allowed origin; otherwise
/// answers 400 (not a WebSocket handshake), 401 or 403 with the JSON error body, as the REST API
/// does.
async fn upgrade(
    headers: HeaderMap,
    pending: Option<PendingUpgrade>,
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
    let Some(on_upgrade) = pending.as_ref().and_then(PendingUpgrade::claim) else {
        return api::finish(Err(RequestError::BadRequest(
            "the connection cannot be upgraded".to_owned(),
        )));
    };
    let app = request.app;
    let peer = request.ip;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "WebSocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER_BYTES)
            .max_message_size(Some(MAX_WS_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_WS_MESSAGE_BYTES));
        let socket = WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(config)).await;
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

async fn readyz(app: Arc<App>) -> Result<impl Reply, Infallible> {
    let postgres = app.store.ping().await.is_ok();
    let rabbitmq = app.bus.is_ready();
    let ready = postgres && rabbitmq && app.is_started() && !app.shutdown.is_cancelled();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let report = Readiness {
        ready,
        postgres: if postgres { "up" } else { "down" },
        rabbitmq: if rabbitmq { "up" } else { "down" },
        node_id: app.node_id().to_owned(),
    };
    Ok(warp::reply::with_status(warp::reply::json(&report), status))
}
