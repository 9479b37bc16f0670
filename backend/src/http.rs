//! HTTP routes: the WebSocket endpoint, health and readiness, metrics and the web client.

use crate::app::App;
use crate::session;
use chat_protocol::limits::MAX_FRAME_BYTES;
use serde::Serialize;
use std::convert::Infallible;
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

/// Every route the node serves.
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };

    let ws = warp::path("ws")
        .and(warp::path::end())
        .and(warp::ws())
        .and(with_app.clone())
        .map(|ws: warp::ws::Ws, app: Arc<App>| {
            ws.max_message_size(MAX_WS_MESSAGE_BYTES)
                .max_frame_size(MAX_WS_MESSAGE_BYTES)
                .on_upgrade(move |socket| {
                    let sessions = app.sessions.clone();
                    sessions.track_future(session::serve(socket, app))
                })
        });

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

    ws.or(healthz)
        .or(readyz)
        .or(metrics)
        .or(web)
        .with(warp::trace::request())
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
