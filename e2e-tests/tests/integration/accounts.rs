//! Accounts and sessions: register, log in, log out, change password; cookie and bearer
//! sessions; the authenticated WebSocket upgrade and its origin check.

use e2e_tests::{Api, TestEnv, TestNode, WsClient};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

async fn register(
    api: &Api,
    username: &str,
    password: &str,
) -> anyhow::Result<e2e_tests::api::Reply> {
    api.post(
        "/api/register",
        json!({"username": username, "password": password}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_change_password_and_logout() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("accounts").await?;
    let api = node.api();

    let created = register(&api, "ada", "correct horse").await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let cookie = created
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(cookie.starts_with("chat_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let first_token = created.body["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(created.body["profile"]["username"], "ada");
    assert_eq!(created.body["profile"]["display_name"], "ada");
    assert_eq!(created.body["profile"]["avatar"]["initials"], "A");

    // Every field has limits with their own codes.
    register(&api, "ada", "another password")
        .await?
        .expect_error(409, "username_taken")?;
    register(&api, "ada lovelace", "correct horse")
        .await?
        .expect_error(400, "invalid_username")?;
    register(&api, &"a".repeat(33), "correct horse")
        .await?
        .expect_error(400, "invalid_username")?;
    register(&api, "x'); DROP TABLE users;--", "correct horse")
        .await?
        .expect_error(400, "invalid_username")?;
    register(&api, "bob", "short")
        .await?
        .expect_error(400, "invalid_password")?;
    register(&api, "bob", &"p".repeat(129))
        .await?
        .expect_error(400, "invalid_password")?;
    api.post(
        "/api/register",
        json!({"username": "bob", "password": "correct horse", "display_name": "bad\u{7}name"}),
    )
    .await?
    .expect_error(400, "invalid_name")?;
    api.post("/api/register", json!({"username": "bob"}))
        .await?
        .expect_error(400, "bad_request")?;
    let oversized = api
        .send(
            api.http()
                .post(format!("{}/api/register", api.base()))
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"username":"bob","password":"{}"}}"#,
                    "p".repeat(20_000)
                )),
        )
        .await?;
    oversized.expect_error(413, "payload_too_large")?;
    let not_json = api
        .send(
            api.http()
                .post(format!("{}/api/login", api.base()))
                .body("username=ada&password=x"),
        )
        .await?;
    not_json.expect_error(400, "bad_request")?;

    // Logging in: a wrong password and an unknown user are answered alike.
    let wrong = api
        .post(
            "/api/login",
            json!({"username": "ada", "password": "wrong horse"}),
        )
        .await?;
    wrong.expect_error(401, "bad_credentials")?;
    let unknown = api
        .post(
            "/api/login",
            json!({"username": "nobody", "password": "wrong horse"}),
        )
        .await?;
    unknown.expect_error(401, "bad_credentials")?;
    assert_eq!(wrong.body, unknown.body);
    let second = api
        .post(
            "/api/login",
            json!({"username": "ada", "password": "correct horse"}),
        )
        .await?;
    assert_eq!(second.status, 200, "{:?}", second.body);
    let second_token = second.body["token"].as_str().unwrap_or_default().to_owned();
    assert_ne!(first_token, second_token);

    // A session works as a bearer token and as the cookie; nothing else does.
    let ada = api.with_token(&first_token);
    assert_eq!(ada.get("/api/me").await?.body["username"], "ada");
    let by_cookie = api
        .send(
            api.http()
                .get(format!("{}/api/me", api.base()))
                .header("cookie", format!("theme=dark; chat_session={second_token}")),
        )
        .await?;
    assert_eq!(by_cookie.status, 200);
    api.get("/api/me")
        .await?
        .expect_error(401, "unauthenticated")?;
    api.with_token("not-a-token")
        .get("/api/me")
        .await?
        .expect_error(401, "unauthenticated")?;

    // Changing the password ends every other session, keeps this one.
    ada.post(
        "/api/password",
        json!({"current_password": "wrong horse", "new_password": "battery staple"}),
    )
    .await?
    .expect_error(403, "bad_credentials")?;
    ada.post(
        "/api/password",
        json!({"current_password": "correct horse", "new_password": "short"}),
    )
    .await?
    .expect_error(400, "invalid_password")?;
    let changed = ada
        .post(
            "/api/password",
            json!({"current_password": "correct horse", "new_password": "battery staple"}),
        )
        .await?;
    assert_eq!(changed.status, 204, "{:?}", changed.body);
    assert_eq!(ada.get("/api/me").await?.status, 200);
    api.with_token(&second_token)
        .get("/api/me")
        .await?
        .expect_error(401, "unauthenticated")?;
    api.post(
        "/api/login",
        json!({"username": "ada", "password": "correct horse"}),
    )
    .await?
    .expect_error(401, "bad_credentials")?;
    assert_eq!(
        api.post(
            "/api/login",
            json!({"username": "ada", "password": "battery staple"})
        )
        .await?
        .status,
        200
    );

    // Logging out revokes the session and clears the cookie.
    let logout = ada.post_empty("/api/logout").await?;
    assert_eq!(logout.status, 204);
    let cleared = logout
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    ada.get("/api/me")
        .await?
        .expect_error(401, "unauthenticated")?;
    ada.post_empty("/api/logout")
        .await?
        .expect_error(401, "unauthenticated")?;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoints_and_methods_answer_json() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("routes").await?;
    let api = node.sign_in("ada").await?;
    api.get("/api/nothing-here")
        .await?
        .expect_error(404, "not_found")?;
    api.call(reqwest::Method::DELETE, "/api/rooms", None)
        .await?
        .expect_error(405, "method_not_allowed")?;
    api.get("/api/rooms/not-a-number")
        .await?
        .expect_error(404, "not_found")?;

    // A body without a Content-Length (chunked) is refused before it is read.
    let mut socket = tokio::net::TcpStream::connect(node.addr).await?;
    socket
        .write_all(
            b"POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        )
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(e2e_tests::DEADLINE, socket.read_to_string(&mut answer)).await??;
    assert!(answer.starts_with("HTTP/1.1 411 "), "{answer}");
    assert!(answer.contains(r#""code":"bad_request""#), "{answer}");
    node.stop().await?;
    Ok(())
}

async fn upgrade(node: &TestNode, headers: &[(&'static str, String)]) -> anyhow::Result<u16> {
    let mut request = node.ws_url().into_client_request()?;
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value)?);
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => Ok(response.status().as_u16()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Ok(response.status().as_u16())
        }
        Err(error) => Err(error.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_needs_a_session_and_an_allowed_origin() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("ws-auth");
    config.allowed_origins = vec!["https://chat.example".into()];
    let node = TestNode::start(config).await?;
    let ada = node.sign_in("ada").await?;
    let token = ada.token().unwrap_or_default().to_owned();
    let bearer = ("authorization", format!("Bearer {token}"));

    assert_eq!(upgrade(&node, &[]).await?, 401);
    assert!(WsClient::connect(&node.ws_url()).await.is_err());
    assert_eq!(
        upgrade(&node, &[("authorization", "Bearer nope".into())]).await?,
        401
    );
    assert_eq!(upgrade(&node, std::slice::from_ref(&bearer)).await?, 101);
    assert_eq!(
        upgrade(&node, &[("cookie", format!("chat_session={token}"))]).await?,
        101
    );
    assert_eq!(
        upgrade(
            &node,
            &[bearer.clone(), ("origin", "https://evil.example".into())]
        )
        .await?,
        403
    );
    assert_eq!(
        upgrade(
            &node,
            &[bearer.clone(), ("origin", "https://chat.example".into())]
        )
        .await?,
        101
    );
    assert_eq!(
        upgrade(&node, &[bearer.clone(), ("origin", node.http_url())]).await?,
        101
    );
    // A request that is not a WebSocket handshake is refused, signed in or not, as the REST
    // API refuses a malformed request.
    ada.send(
        ada.http()
            .get(node.ws_url().replacen("ws://", "http://", 1))
            .bearer_auth(&token),
    )
    .await?
    .expect_error(400, "bad_request")?;
    assert_eq!(
        upgrade(
            &node,
            &[bearer.clone(), ("sec-websocket-version", "8".into())]
        )
        .await?,
        400
    );
    // The same origin rule guards the REST API against cross-site requests.
    let cross_site = ada
        .send(
            ada.http()
                .get(format!("{}/api/me", ada.base()))
                .bearer_auth(&token)
                .header("origin", "https://evil.example"),
        )
        .await?;
    cross_site.expect_error(403, "origin_not_allowed")?;

    // A signed-in connection is greeted with who it is.
    let client = node.user("ada").await?;
    let me = ada.get("/api/me").await?;
    assert_eq!(me.body["user_id"].as_i64(), Some(client.user_id()?.0));
    node.stop().await?;
    Ok(())
}
