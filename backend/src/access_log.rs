//! The access log: every HTTP request counted by route and status, its latency observed, and
//! one debug line written once it is answered (health checks every few seconds would otherwise
//! fill the log at `info`).

use crate::api;
use crate::metrics::Metrics;
use std::time::Instant;
use warp::http::{Method, Request, StatusCode};

/// A request being answered, from its arrival.
pub struct Access {
    started: Instant,
    method: &'static str,
    route: &'static str,
    path: String,
}

impl Access {
    pub fn begin<B>(request: &Request<B>) -> Access {
        Access {
            started: Instant::now(),
            method: method_label(request.method()),
            route: route_template(request.uri().path()),
            path: request.uri().path().to_owned(),
        }
    }

    /// The span the request is answered in.
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!("request", method = self.method, path = %self.path)
    }

    /// Counts the answer and logs it. A WebSocket's request ends with its `101`, not its session.
    pub fn end(self, metrics: &Metrics, status: StatusCode) {
        let seconds = self.started.elapsed().as_secs_f64();
        metrics
            .http_requests
            .with_label_values(&[self.route, self.method, status.as_str()])
            .inc();
        metrics
            .http_request_seconds
            .with_label_values(&[self.route, self.method])
            .observe(seconds);
        tracing::debug!(
            method = self.method,
            route = self.route,
            path = %self.path,
            status = status.as_u16(),
            latency_ms = seconds * 1000.0,
            "request"
        );
    }
}

/// The route a path takes, as a template (`/api/rooms/{room_id}`): metrics never carry a raw
/// path, whose ids would make a series per room.
pub fn route_template(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/ws" => "/ws",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ if path == "/api" || path.starts_with("/api/") => {
            api::route_template(path).unwrap_or("/api/{unknown}")
        }
        _ if path.starts_with("/assets/") => "/assets/{file}",
        // The web client's pages (and its fallback to index.html).
        _ => "/{page}",
    }
}

/// The request's method, or `other` for a method no route takes: a label's values stay few
/// whatever clients send.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::logged;

    #[test]
    fn routes_are_templates() {
        let cases = [
            ("/", "/"),
            ("/ws", "/ws"),
            ("/metrics", "/metrics"),
            ("/api/rooms", "/api/rooms"),
            ("/api/rooms/42", "/api/rooms/{room_id}"),
            ("/api/rooms/42/messages", "/api/rooms/{room_id}/messages"),
            (
                "/api/rooms/4/members/7",
                "/api/rooms/{room_id}/members/{user_id}",
            ),
            ("/api/users/7", "/api/users/{user_id}"),
            ("/api/rooms/abc", "/api/{unknown}"),
            ("/api/nothing/here", "/api/{unknown}"),
            ("/assets/app-1234.wasm", "/assets/{file}"),
            ("/rooms/42", "/{page}"),
            ("/wp-admin/setup.php", "/{page}"),
        ];
        for (path, template) in cases {
            assert_eq!(route_template(path), template, "{path}");
        }
    }

    #[test]
    fn a_request_is_one_debug_line_with_its_latency_and_counted_by_route() {
        let metrics = Metrics::new();
        let answer = |metrics: &Metrics| {
            let request = Request::get("/api/rooms/42").body(()).unwrap_or_default();
            let access = Access::begin(&request);
            access.end(metrics, StatusCode::OK);
        };
        let debug = logged(tracing::Level::DEBUG, || answer(&metrics));
        let lines: Vec<&str> = debug.lines().collect();
        assert_eq!(lines.len(), 1, "{debug}");
        assert!(lines[0].contains("DEBUG"), "{debug}");
        assert!(
            lines[0].contains("route=\"/api/rooms/{room_id}\""),
            "{debug}"
        );
        assert!(lines[0].contains("status=200"), "{debug}");
        assert!(lines[0].contains("latency_ms="), "{debug}");
        assert_eq!(logged(tracing::Level::INFO, || answer(&metrics)), "");
        let text = metrics.render();
        assert!(text.contains(
            "chat_http_requests_total{method=\"GET\",route=\"/api/rooms/{room_id}\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "chat_http_request_seconds_count{method=\"GET\",route=\"/api/rooms/{room_id}\"} 2"
        ));
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let odd = Method::from_bytes(b"BREW").unwrap_or(Method::TRACE);
        assert_eq!(method_label(&odd), "other");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
    }
}
