//! `docs/openapi.yaml` against a running node: every documented operation answers with a
//! documented status and a body of the documented shape, and every route the node serves is
//! documented.

use e2e_tests::api::test_password;
use e2e_tests::TestEnv;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

const SPEC: &str = include_str!("../../../docs/openapi.yaml");

/// Every route the node registers, read from `backend/src/http.rs` and `backend/src/api/*.rs`.
/// The web client's static files (`GET /`, `GET /{file}`) are not an API and are left out.
const SERVED_ROUTES: &[(&str, &str)] = &[
    ("get", "/ws"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    // accounts.rs
    ("post", "/api/register"),
    ("post", "/api/login"),
    ("post", "/api/logout"),
    ("post", "/api/password"),
    // profiles.rs
    ("get", "/api/me"),
    ("patch", "/api/me"),
    ("get", "/api/users/{user_id}"),
    ("get", "/api/users"),
    ("get", "/api/search"),
    // rooms.rs
    ("get", "/api/rooms"),
    ("post", "/api/rooms"),
    ("get", "/api/me/rooms"),
    ("get", "/api/rooms/{room_id}"),
    ("patch", "/api/rooms/{room_id}"),
    ("post", "/api/rooms/{room_id}/join"),
    ("post", "/api/rooms/{room_id}/leave"),
    ("post", "/api/rooms/{room_id}/invite"),
    ("get", "/api/rooms/{room_id}/members"),
    ("delete", "/api/rooms/{room_id}/members/{user_id}"),
    ("get", "/api/rooms/{room_id}/messages"),
    ("post", "/api/direct"),
];

const WS_UPGRADE: &[(&str, &str)] = &[
    ("connection", "Upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// How the tests call each documented operation, in this order (logging out last), as the
/// user `ada`, who owns the public room `{room_id}` (with a message in it); `{user_id}` is `bob`,
/// a member of it.
fn calls() -> Vec<Call> {
    vec![
        Call::new("get", "/healthz"),
        Call::new("get", "/readyz"),
        Call::new("get", "/metrics"),
        Call::new("post", "/api/register")
            .body(json!({"username": "dora", "password": "correct horse", "display_name": "Dora"})),
        Call::new("post", "/api/login")
            .body(json!({"username": "bob", "password": test_password("bob")})),
        Call::new("get", "/api/me"),
        Call::new("patch", "/api/me").body(json!({"status_text": "reading the spec"})),
        Call::new("get", "/api/users/{user_id}"),
        Call::new("get", "/api/users").query("q=bo"),
        Call::new("get", "/api/search").query("q=spec%20words&limit=5"),
        Call::new("get", "/api/rooms").query("q=open&limit=10"),
        Call::new("post", "/api/rooms").body(json!({"name": "spec", "visibility": "private"})),
        Call::new("get", "/api/me/rooms"),
        Call::new("get", "/api/rooms/{room_id}"),
        Call::new("patch", "/api/rooms/{room_id}").body(json!({"invite_policy": "owners"})),
        Call::new("post", "/api/rooms/{room_id}/join"),
        Call::new("post", "/api/rooms/{room_id}/invite").body(json!({"username": "dora"})),
        Call::new("get", "/api/rooms/{room_id}/members"),
        Call::new("delete", "/api/rooms/{room_id}/members/{user_id}"),
        Call::new("get", "/api/rooms/{room_id}/messages").query("after=0&limit=10"),
        Call::new("post", "/api/direct").body(json!({"username": "bob"})),
        Call::new("post", "/api/password").body(json!({
            "current_password": test_password("ada"),
            "new_password": "a brand new password",
        })),
        Call::new("get", "/ws").headers(WS_UPGRADE),
        Call::new("post", "/api/rooms/{room_id}/leave"),
        Call::new("post", "/api/logout"),
    ]
}

#[test]
fn every_served_route_is_documented_and_every_documented_one_served() -> anyhow::Result<()> {
    let spec = spec()?;
    let served: BTreeSet<(String, String)> = SERVED_ROUTES
        .iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    let documented: BTreeSet<(String, String)> = operations(&spec).into_keys().collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && not_served.is_empty(),
        "served but not in docs/openapi.yaml: {undocumented:?}; documented but not served: {not_served:?}"
    );
    let called: BTreeSet<(String, String)> = calls()
        .iter()
        .map(|call| (call.method.to_owned(), call.path.to_owned()))
        .collect();
    assert_eq!(
        called, documented,
        "every documented operation has one call"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented() -> anyhow::Result<()> {
    let spec = spec()?;
    let env = TestEnv::new().await?;
    let node = env.start_node("openapi").await?;
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("openapi").await?;
    ada.send_message(room, "openapi-1", "hello, spec").await?;
    ada.next_message(room).await?;
    let token = ada.api()?.token().unwrap_or_default().to_owned();
    let bob_api = node.sign_in("bob").await?;
    bob_api
        .post_empty(&format!("/api/rooms/{room}/join"))
        .await?;
    let bob = bob_api.get("/api/me").await?.body;
    let ids = BTreeMap::from([
        ("room_id", room.to_string()),
        ("user_id", bob["user_id"].to_string()),
    ]);

    let operations = operations(&spec);
    let mut problems = Vec::new();
    for call in calls() {
        let key = (call.method.to_owned(), call.path.to_owned());
        let operation = &operations[&key];
        // Metrics are on the operator's listener (the path's own `servers` in the spec).
        let base = match call.path {
            "/metrics" => format!("http://{}", node.metrics_addr),
            _ => node.http_url(),
        };
        let answer = call.send(&base, &ids, Some(&token)).await?;
        let at = format!("{} {} → {}", call.method, call.path, answer.status);
        if !(200..300).contains(&answer.status) && answer.status != 101 {
            problems.push(format!("{at}: expected success, got {}", answer.body));
        }
        check_answer(&spec, operation, &answer, &at, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secured_operations_need_a_session_in_either_documented_scheme() -> anyhow::Result<()> {
    let spec = spec()?;
    let env = TestEnv::new().await?;
    let node = env.start_node("openapi").await?;
    let ids = BTreeMap::from([("room_id", "1".to_owned()), ("user_id", "1".to_owned())]);

    let operations = operations(&spec);
    let mut problems = Vec::new();
    for call in calls() {
        let operation = &operations[&(call.method.to_owned(), call.path.to_owned())];
        if !is_secured(&spec, operation) {
            continue;
        }
        let answer = call.send(&node.http_url(), &ids, None).await?;
        let at = format!(
            "{} {} without a session → {}",
            call.method, call.path, answer.status
        );
        if answer.status != 401 {
            problems.push(format!("{at}: expected 401"));
        }
        check_answer(&spec, operation, &answer, &at, &mut problems);
    }

    let token = node
        .sign_in("ada")
        .await?
        .token()
        .unwrap_or_default()
        .to_owned();
    let schemes = spec["components"]["securitySchemes"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(schemes.len(), 2, "a cookie and a bearer scheme");
    for (name, scheme) in schemes {
        let (header, value) = match (scheme["type"].as_str(), scheme["in"].as_str()) {
            (Some("apiKey"), Some("cookie")) => (
                "cookie",
                format!("{}={token}", scheme["name"].as_str().unwrap_or("")),
            ),
            (Some("http"), _) if scheme["scheme"] == "bearer" => {
                ("authorization", format!("Bearer {token}"))
            }
            _ => {
                problems.push(format!("security scheme {name}: not one the node knows"));
                continue;
            }
        };
        let status = reqwest::Client::new()
            .get(format!("{}/api/me", node.http_url()))
            .header(header, value)
            .send()
            .await?
            .status();
        if status != 200 {
            problems.push(format!("GET /api/me signed in by {name} → {status}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_answer_405_with_the_documented_methods_in_allow() -> anyhow::Result<()> {
    let spec = spec()?;
    let env = TestEnv::new().await?;
    let node = env.start_node("openapi-allow").await?;
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (method, path) in operations(&spec).into_keys() {
        if path.starts_with("/api/") {
            documented
                .entry(path)
                .or_default()
                .insert(method.to_uppercase());
        }
    }
    let mut problems = Vec::new();
    for (path, methods) in &documented {
        let url = path.replace("{room_id}", "1").replace("{user_id}", "1");
        for method in ["PUT", "DELETE", "GET", "POST", "PATCH"] {
            if methods.contains(method) {
                continue;
            }
            let response = reqwest::Client::new()
                .request(
                    Method::from_bytes(method.as_bytes())?,
                    node.http_url() + &url,
                )
                .header("content-length", "0")
                .send()
                .await?;
            let status = response.status().as_u16();
            let allow: BTreeSet<String> = response
                .headers()
                .get("allow")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("")
                .split(',')
                .map(|method| method.trim().to_owned())
                .filter(|method| !method.is_empty())
                .collect();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status != 405 || body["code"] != "method_not_allowed" || &allow != methods {
                problems.push(format!(
                    "{method} {path} → {status} {body}, Allow {allow:?}; documented {methods:?}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    node.stop().await?;
    Ok(())
}

/// One request of the tests: a documented operation, with what it is sent with.
struct Call {
    method: &'static str,
    path: &'static str,
    query: &'static str,
    body: Option<Value>,
    headers: &'static [(&'static str, &'static str)],
}

/// What a node answered: the status, the media type and the body (JSON, or text as a string).
struct Answer {
    status: u16,
    media_type: String,
    body: Value,
}

impl Call {
    fn new(method: &'static str, path: &'static str) -> Call {
        Call {
            method,
            path,
            query: "",
            body: None,
            headers: &[],
        }
    }

    fn query(self, query: &'static str) -> Call {
        Call { query, ..self }
    }

    fn body(self, body: Value) -> Call {
        Call {
            body: Some(body),
            ..self
        }
    }

    fn headers(self, headers: &'static [(&'static str, &'static str)]) -> Call {
        Call { headers, ..self }
    }

    /// Sends the call to the node at `base`, with `{name}` in the path replaced by `ids[name]`.
    async fn send(
        &self,
        base: &str,
        ids: &BTreeMap<&str, String>,
        token: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut path = self.path.to_owned();
        for (name, id) in ids {
            path = path.replace(&format!("{{{name}}}"), id);
        }
        if !self.query.is_empty() {
            path = format!("{path}?{}", self.query);
        }
        let method = Method::from_bytes(self.method.to_uppercase().as_bytes())?;
        let mut request = reqwest::Client::new().request(method, format!("{base}{path}"));
        for (name, value) in self.headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request = match &self.body {
            Some(body) => request.json(body),
            None => request.header("content-length", "0"),
        };
        let response = request.send().await?;
        let status = response.status().as_u16();
        let media_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .unwrap_or("")
            .trim()
            .to_owned();
        // A switched protocol has no HTTP body to read.
        if status == 101 {
            return Ok(Answer {
                status,
                media_type,
                body: Value::Null,
            });
        }
        let text = response.text().await?;
        let body = match media_type.as_str() {
            "application/json" => serde_json::from_str(&text)?,
            _ => Value::String(text),
        };
        Ok(Answer {
            status,
            media_type,
            body,
        })
    }
}

fn spec() -> anyhow::Result<Value> {
    Ok(serde_yaml::from_str(SPEC)?)
}

/// Every operation of the spec by method and path.
fn operations(spec: &Value) -> BTreeMap<(String, String), Value> {
    const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch"];
    let mut operations = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            if METHODS.contains(&method.as_str()) {
                operations.insert((method.clone(), path.clone()), operation.clone());
            }
        }
    }
    operations
}

/// An operation needs a session unless it says `security: []`.
fn is_secured(spec: &Value, operation: &Value) -> bool {
    let security = operation.get("security").unwrap_or(&spec["security"]);
    security
        .as_array()
        .is_some_and(|schemes| !schemes.is_empty())
}

/// Checks an answer against the operation's documented responses: the status is listed, the
/// media type is a documented one, and the body has the documented shape.
fn check_answer(
    spec: &Value,
    operation: &Value,
    answer: &Answer,
    at: &str,
    problems: &mut Vec<String>,
) {
    let Some(response) = operation["responses"].get(answer.status.to_string()) else {
        problems.push(format!("{at}: status not documented; body {}", answer.body));
        return;
    };
    let Some(content) = resolve(spec, response).get("content") else {
        return;
    };
    match content.get(&answer.media_type) {
        Some(media) => check(spec, &media["schema"], &answer.body, at, problems),
        None => problems.push(format!(
            "{at}: media type {:?} not documented",
            answer.media_type
        )),
    }
}

/// Checks `value` against a schema: its type, enum, required properties, undocumented
/// properties, and recursively its properties and items.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    let expected = schema["type"].as_str().unwrap_or("");
    let right_type = match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !right_type {
        problems.push(format!("{at}: expected {expected}, got {value}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            problems.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    for name in schema["required"].as_array().into_iter().flatten() {
        if value.get(name.as_str().unwrap_or("")).is_none() {
            problems.push(format!("{at}: required {name} missing in {value}"));
        }
    }
    if let (Some(properties), Some(fields)) = (schema["properties"].as_object(), value.as_object())
    {
        for (name, field) in fields {
            match properties.get(name) {
                Some(property) => check(spec, property, field, &format!("{at}.{name}"), problems),
                None => problems.push(format!("{at}: undocumented property {name:?}")),
            }
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (index, item) in values.iter().enumerate() {
            check(spec, items, item, &format!("{at}[{index}]"), problems);
        }
    }
}

static NOTHING: Value = Value::Null;

/// Follows `$ref`s (`#/components/...`) to the object they name.
fn resolve<'a>(spec: &'a Value, mut object: &'a Value) -> &'a Value {
    while let Some(pointer) = object["$ref"].as_str() {
        match spec.pointer(pointer.trim_start_matches('#')) {
            Some(target) => object = target,
            None => return &NOTHING,
        }
    }
    object
}
