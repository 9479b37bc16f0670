//! HTTP routes: the WebSocket endpoint, the REST API, health and readiness, metrics and the web
//! client.

use crate::api::{self, Request};
use crate::app::App;
use crate::session;
use chat_protocol::limits::MAX_FRAME_BYTES;
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// Largest WebSocket message accepted at all. Between this and `MAX_FRAME_BYTES` a frame gets a
/// `frame_too_large` error and the connection stays open; above it the connection is closed.
const MAX_WS_MESSAGE_BYTES: usize = 4 * MAX_FRAME_BYTES;

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
        .and(warp::ws())
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
/// answers 401 or 403 with the JSON error body, as the REST API does.
async fn upgrade(ws: warp::ws::Ws, request: Request) -> warp::reply::Response {
    let identity = match request.identify().await {
        Ok(identity) => identity,
        Err(error) => return api::finish(Err(error)),
    };
    let app = request.app;
    let peer = request.ip;
    ws.max_message_size(MAX_WS_MESSAGE_BYTES)
        .max_frame_size(MAX_WS_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let sessions = app.sessions.clone();
            sessions.track_future(session::serve(socket, app, identity, peer))
        })
        .into_response()
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
