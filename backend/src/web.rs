//! The web client's files, and the headers every answer of the node carries.
//!
//! The built client is `index.html` plus content-hashed files under `assets/`, each with `.br`
//! and `.gz` siblings compressed ahead of time. An asset's name changes with its content, so it
//! is cached for a year and never revalidated; `index.html`, which names the current assets, is
//! revalidated on every load. Any other page path is the app's own route and gets `index.html`
//! too. Only names made of plain characters are looked up on disk, one directory deep at most,
//! so no request reaches outside the client's directory.

use chat_protocol::api::ApiError;
use chat_protocol::ErrorCode;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

/// What the client's pages may load and do: its own scripts, styles, images and WebAssembly,
/// connections to this node only, and nothing inline, framed or from elsewhere.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'; object-src 'none'";

/// HSTS when the node is reached over HTTPS only (`--cookie-secure`): a year.
const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000; includeSubDomains";

const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
const CACHE_REVALIDATE: &str = "no-cache";

/// Bytes read from a file at a time while it is sent.
const CHUNK_BYTES: usize = 64 * 1024;

/// Adds the security headers to an answer (those it has already are kept).
pub fn add_security_headers(headers: &mut HeaderMap, https_only: bool) {
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    if https_only {
        set(
            headers,
            header::STRICT_TRANSPORT_SECURITY,
            STRICT_TRANSPORT_SECURITY,
        );
    }
}

/// GET (and HEAD) of the client's files under `dir`.
pub fn routes(dir: PathBuf) -> BoxedFilter<(Response,)> {
    let dir = Arc::new(dir);
    let with_dir = warp::any().map(move || dir.clone());
    let assets = warp::path("assets")
        .and(warp::path::tail())
        .and(warp::header::optional::<String>("accept-encoding"))
        .and(with_dir.clone())
        .then(
            |tail: warp::path::Tail, accept: Option<String>, dir: Arc<PathBuf>| async move {
                asset(&dir, tail.as_str(), accept.as_deref()).await
            },
        );
    let pages =
        warp::path::full().and(with_dir).then(
            |path: warp::path::FullPath, dir: Arc<PathBuf>| async move {
                page(&dir, path.as_str()).await
            },
        );
    warp::get()
        .or(warp::head())
        .unify()
        .and(assets.or(pages).unify())
        .boxed()
}

/// A 404 with the JSON error body the API uses.
pub fn not_found(message: &str) -> Response {
    let body = ApiError {
        code: ErrorCode::NotFound,
        message: message.to_owned(),
        retry_after_ms: None,
    };
    warp::reply::with_status(warp::reply::json(&body), StatusCode::NOT_FOUND).into_response()
}

/// `/assets/<name>`: the precompressed form the client takes, cached for good.
async fn asset(dir: &Path, name: &str, accept_encoding: Option<&str>) -> Response {
    if !is_plain_name(name) {
        return not_found("no such asset");
    }
    let assets = dir.join("assets");
    let accepted = |coding: &str| accept_encoding.is_some_and(|list| accepts(list, coding));
    for (coding, suffix) in [("br", "br"), ("gzip", "gz")] {
        if !accepted(coding) {
            continue;
        }
        let compressed = assets.join(format!("{name}.{suffix}"));
        if let Some(mut response) = file(&compressed, content_type(name)).await {
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
            return cached(response, CACHE_IMMUTABLE, true);
        }
    }
    match file(&assets.join(name), content_type(name)).await {
        Some(response) => cached(response, CACHE_IMMUTABLE, true),
        None => not_found("no such asset"),
    }
}

/// Any other path: a file of the client's directory when one has that name (the client as built
/// before `assets/` existed), otherwise `index.html`, the app's entry for every route.
async fn page(dir: &Path, path: &str) -> Response {
    let relative = path.trim_start_matches('/');
    let segments: Vec<&str> = relative.split('/').collect();
    let direct = !relative.is_empty()
        && segments.len() <= 2
        && segments.iter().all(|segment| is_plain_name(segment));
    if direct {
        let candidate = dir.join(relative);
        if let Some(response) = file(&candidate, content_type(relative)).await {
            return cached(response, CACHE_REVALIDATE, false);
        }
    }
    match file(&dir.join("index.html"), content_type("index.html")).await {
        Some(response) => cached(response, CACHE_REVALIDATE, false),
        None => not_found("the web client is not installed on this node"),
    }
}

fn cached(mut response: Response, cache_control: &'static str, varies: bool) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if varies {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    response
}

/// A name of ASCII letters, digits, `-`, `_` and `.`, not starting with a dot: never `..`, a
/// hidden file, a separator or an encoded character.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 255
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

/// Whether an `Accept-Encoding` list accepts `coding` (named, with a q-value above 0).
fn accepts(list: &str, coding: &str) -> bool {
    list.split(',').any(|entry| {
        let mut parts = entry.split(';');
        let name = parts.next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case(coding) {
            return false;
        }
        parts.all(|parameter| {
            let Some((key, value)) = parameter.split_once('=') else {
                return true;
            };
            !key.trim().eq_ignore_ascii_case("q")
                || value.trim().parse::<f32>().is_ok_and(|q| q > 0.0)
        })
    })
}

fn content_type(name: &str) -> &'static str {
    let extension = name.rsplit_once('.').map(|(_, extension)| extension);
    match extension.map(str::to_ascii_lowercase).as_deref() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript",
        Some("css") => "text/css",
        Some("wasm") => "application/wasm",
        Some("json" | "map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The regular file at `path`, streamed, or `None` when there is none.
async fn file(path: &Path, content_type: &'static str) -> Option<Response> {
    let opened = tokio::fs::File::open(path).await.ok()?;
    let metadata = opened.metadata().await.ok()?;
    if !metadata.is_file() {
        return None;
    }
    let length = metadata.len();
    let chunks = tokio_util::io::ReaderStream::with_capacity(opened, CHUNK_BYTES);
    let mut response = warp::reply::stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_looked_up() {
        for name in ["app-3f2a9c.wasm", "index.html", "style.css", "a_b.js.br"] {
            assert!(is_plain_name(name), "{name}");
        }
        for name in [
            "",
            "..",
            ".env",
            "a/b",
            "..%2f",
            "a\\b",
            "a%2e",
            "caf\u{e9}.js",
            "a b",
        ] {
            assert!(!is_plain_name(name), "{name:?}");
        }
    }

    #[test]
    fn encodings_are_accepted_by_name_and_q_value() {
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("gzip, deflate, br", "gzip"));
        assert!(accepts("BR;q=0.5", "br"));
        assert!(!accepts("br;q=0, gzip", "br"));
        assert!(!accepts("br;q=0.0", "br"));
        assert!(!accepts("identity", "gzip"));
        assert!(!accepts("brotli", "br"));
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("app-1.wasm"), "application/wasm");
        assert_eq!(content_type("app-1.js"), "text/javascript");
        assert_eq!(content_type("app-1.css"), "text/css");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }

    #[test]
    fn security_headers_are_added_once() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("strict-origin"),
        );
        add_security_headers(&mut headers, false);
        assert_eq!(headers[header::REFERRER_POLICY], "strict-origin");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(!headers.contains_key(header::STRICT_TRANSPORT_SECURITY));
        add_security_headers(&mut headers, true);
        assert!(headers.contains_key(header::STRICT_TRANSPORT_SECURITY));
        assert_eq!(headers.get_all(header::X_FRAME_OPTIONS).iter().count(), 1);
    }
}
