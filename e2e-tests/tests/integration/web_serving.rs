//! What the node answers besides the API: security headers on every answer, the web client's
//! files with their caching and precompressed forms, and metrics on the operator's listener only.

use e2e_tests::{TestEnv, TestNode};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'; object-src 'none'";

/// A built web client in a directory of its own, removed when dropped: `index.html`, hashed
/// assets with their precompressed siblings, a file of the client as built before `assets/`, and
/// a secret beside the directory that no request may reach.
struct Dist {
    root: PathBuf,
}

impl Dist {
    fn create() -> anyhow::Result<Dist> {
        let root = std::env::temp_dir().join(format!("chat-dist-{}", uuid::Uuid::new_v4()));
        let files: &[(&str, &[u8])] = &[
            ("secret.txt", b"the secret beside the client"),
            ("dist/index.html", b"<!doctype html><title>index</title>"),
            ("dist/web_client.js", b"// the client before assets/"),
            ("dist/assets/app-3f2a9c.wasm", b"\0asm identity"),
            ("dist/assets/app-3f2a9c.wasm.br", b"wasm as brotli"),
            ("dist/assets/app-3f2a9c.wasm.gz", b"wasm as gzip"),
            ("dist/assets/app-3f2a9c.js", b"// js identity"),
            ("dist/assets/app-3f2a9c.js.gz", b"js as gzip"),
            ("dist/assets/style-77e1b0.css", b"body {}"),
        ];
        for (path, content) in files {
            let path = root.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, content)?;
        }
        Ok(Dist { root })
    }

    fn dir(&self) -> PathBuf {
        self.root.join("dist")
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// An answer's status, headers and body.
struct Fetched {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Fetched {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn fetch(url: &str, accept_encoding: Option<&str>) -> anyhow::Result<Fetched> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(codings) = accept_encoding {
        request = request.header("accept-encoding", codings);
    }
    let response = request.send().await?;
    Ok(Fetched {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await?.to_vec(),
    })
}

/// Fails unless the answer carries every security header (and HSTS exactly when `https`).
fn assert_secured(what: &str, answer: &Fetched, https: bool) {
    assert_eq!(answer.header("content-security-policy"), CSP, "{what}");
    assert_eq!(answer.header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(answer.header("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(answer.header("x-frame-options"), "DENY", "{what}");
    assert_eq!(
        answer.headers.contains_key("strict-transport-security"),
        https,
        "{what}: HSTS"
    );
}

/// An asset's answer: the expected body, encoding and type, cached for good.
fn assert_asset(answer: &Fetched, body: &str, encoding: Option<&str>, content_type: &str) {
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), body);
    assert_eq!(
        answer.headers.get("content-encoding").map(|v| v.as_bytes()),
        encoding.map(str::as_bytes)
    );
    assert_eq!(answer.header("content-type"), content_type);
    assert_eq!(
        answer.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(
        answer.header("vary").to_ascii_lowercase(),
        "accept-encoding"
    );
}

/// Sends `path` as it is (no client normalises it) and returns the raw answer.
async fn raw_get(node: &TestNode, path: &str) -> anyhow::Result<String> {
    let mut connection = tokio::net::TcpStream::connect(node.addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: chat.example\r\nConnection: close\r\n\r\n");
    connection.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(e2e_tests::DEADLINE, connection.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

async fn node_serving(
    env: &TestEnv,
    name: &str,
    dir: &Path,
    https: bool,
) -> anyhow::Result<TestNode> {
    let mut config = env.config(name);
    config.web_dir = dir.to_path_buf();
    config.cookie_secure = https;
    TestNode::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let dist = Dist::create()?;
    for https in [false, true] {
        let node = node_serving(&env, &format!("headers-{https}"), &dist.dir(), https).await?;
        let base = node.http_url();
        for path in [
            "/",
            "/rooms/7",
            "/assets/app-3f2a9c.wasm",
            "/assets/nothing.js",
            "/healthz",
            "/api/me",
            "/api/nowhere",
            "/metrics",
        ] {
            let answer = fetch(&format!("{base}{path}"), None).await?;
            assert_secured(path, &answer, https);
        }
        let answer = fetch(&node.metrics_url(), None).await?;
        assert_secured("the operator's /metrics", &answer, https);
        node.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_the_operator_listener_only() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("operator").await?;
    let public = fetch(&format!("{}/metrics", node.http_url()), None).await?;
    assert_eq!(public.status, 404);
    assert!(
        public.text().contains(r#""code":"not_found""#),
        "{}",
        public.text()
    );
    assert!(
        !public.text().contains("chat_"),
        "metrics leaked on the main listener"
    );

    let metrics = fetch(&node.metrics_url(), None).await?;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("chat_connections"),
        "{}",
        metrics.text()
    );
    let operator = format!("http://{}", node.metrics_addr);
    assert_eq!(
        fetch(&format!("{operator}/healthz"), None).await?.status,
        200
    );
    assert_eq!(
        fetch(&format!("{operator}/readyz"), None).await?.status,
        200
    );
    // Nothing else of the node is there.
    assert_eq!(
        fetch(&format!("{operator}/api/me"), None).await?.status,
        404
    );
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_is_served_with_hashed_assets_cached_for_good() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let dist = Dist::create()?;
    let node = node_serving(&env, "web", &dist.dir(), false).await?;
    let base = node.http_url();

    // index.html for the root and for every route of the app, revalidated on each load.
    for path in ["/", "/rooms/42", "/settings"] {
        let page = fetch(&format!("{base}{path}"), None).await?;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(page.text(), "<!doctype html><title>index</title>", "{path}");
        assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
        assert_eq!(page.header("cache-control"), "no-cache", "{path}");
    }
    // The client as built before assets/ is still served.
    let legacy = fetch(&format!("{base}/web_client.js"), None).await?;
    assert_eq!(legacy.text(), "// the client before assets/");
    assert_eq!(legacy.header("content-type"), "text/javascript");
    assert_eq!(legacy.header("cache-control"), "no-cache");

    // br before gzip before identity, from the siblings there are.
    let wasm = format!("{base}/assets/app-3f2a9c.wasm");
    let br = fetch(&wasm, Some("gzip, deflate, br")).await?;
    assert_asset(&br, "wasm as brotli", Some("br"), "application/wasm");
    let gzip = fetch(&wasm, Some("gzip")).await?;
    assert_asset(&gzip, "wasm as gzip", Some("gzip"), "application/wasm");
    let identity = fetch(&wasm, None).await?;
    assert_asset(&identity, "\0asm identity", None, "application/wasm");
    let refused_br = fetch(&wasm, Some("br;q=0, gzip")).await?;
    assert_asset(
        &refused_br,
        "wasm as gzip",
        Some("gzip"),
        "application/wasm",
    );
    let js = fetch(&format!("{base}/assets/app-3f2a9c.js"), Some("br, gzip")).await?;
    assert_asset(&js, "js as gzip", Some("gzip"), "text/javascript");
    let css = fetch(&format!("{base}/assets/style-77e1b0.css"), Some("br, gzip")).await?;
    assert_asset(&css, "body {}", None, "text/css");

    // Missing assets are 404, never index.html.
    for path in [
        "/assets/app-000000.wasm",
        "/assets/",
        "/assets/nested/app.js",
    ] {
        let missing = fetch(&format!("{base}{path}"), None).await?;
        assert_eq!(missing.status, 404, "{path}");
    }
    // No way out of the client's directory.
    for path in [
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/assets/..%2f..%2fsecret.txt",
        "/%2e%2e/secret.txt",
        "/assets/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/..%5csecret.txt",
    ] {
        let answer = raw_get(&node, path).await?;
        assert!(!answer.contains("the secret"), "{path}: {answer}");
    }
    node.stop().await?;
    Ok(())
}
