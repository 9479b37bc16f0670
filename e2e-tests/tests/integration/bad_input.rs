//! Malformed frames get an error frame with a stable code, and the connection stays usable;
//! malformed REST requests get a 4xx answer with a stable code, never a 500, and change nothing.

use chat_protocol::limits::MAX_BODY_CHARS;
use chat_protocol::{ErrorCode, ServerFrame};
use e2e_tests::{Api, TestEnv, WsClient};
use reqwest::Method;
use serde_json::{json, Value};

async fn expect_error(client: &mut WsClient, raw: &str) -> anyhow::Result<ErrorCode> {
    client.send_raw(raw).await?;
    client
        .recv_until(|frame| match frame {
            ServerFrame::Error { code, .. } => Some(*code),
            _ => None,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_typed_errors_and_the_connection_survives() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("bad-input").await?;
    let mut client = node.user("mallory").await?;
    let (room, _) = client.join("abuse").await?;

    assert_eq!(
        expect_error(&mut client, "this is not json").await?,
        ErrorCode::BadJson
    );
    assert_eq!(
        expect_error(&mut client, r#"{"type":"launch_missiles"}"#).await?,
        ErrorCode::UnknownType
    );
    assert_eq!(
        expect_error(&mut client, r#"{"type":"join","room":"general"}"#).await?,
        ErrorCode::BadFrame
    );
    let too_long = "x".repeat(MAX_BODY_CHARS + 1);
    let frame =
        format!(r#"{{"type":"send","room_id":{room},"client_msg_id":"long","body":"{too_long}"}}"#);
    assert_eq!(
        expect_error(&mut client, &frame).await?,
        ErrorCode::BodyTooLong
    );
    let huge = format!(
        r#"{{"type":"send","room_id":{room},"client_msg_id":"huge","body":"{}"}}"#,
        "n".repeat(40_000)
    );
    assert_eq!(
        expect_error(&mut client, &huge).await?,
        ErrorCode::FrameTooLarge
    );
    assert_eq!(
        expect_error(
            &mut client,
            r#"{"type":"send","room_id":999999,"client_msg_id":"y","body":"hi"}"#
        )
        .await?,
        ErrorCode::NotJoined
    );

    // Still usable, and nothing of the above was stored.
    client.send_message(room, "after", "still here").await?;
    let message = client.next_message(room).await?;
    assert_eq!((message.seq.0, message.body.as_str()), (1, "still here"));
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_websocket_limit_closes_the_connection_with_1009() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("bad-input-huge").await?;
    let mut client = node.user("mallory").await?;
    let (room, _) = client.join("abuse").await?;
    let oversized = format!(
        r#"{{"type":"send","room_id":{room},"client_msg_id":"huge","body":"{}"}}"#,
        "n".repeat(70_000)
    );
    client.send_raw(&oversized).await?;
    assert_eq!(client.recv_close().await?, Some(1009));

    // Nothing was stored, and the user's next connection works.
    let mut again = node.user("mallory").await?;
    let (room_again, newest) = again.join("abuse").await?;
    assert_eq!((room_again, newest.0), (room, 0));
    node.stop().await?;
    Ok(())
}

/// Opens a WebSocket by hand (so that frames no client library would send can be written),
/// writes `frame` after the node's first frame, and returns the code of the node's close frame.
async fn close_code_after(
    addr: std::net::SocketAddr,
    token: &str,
    frame: &[u8],
) -> anyhow::Result<Option<u16>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut socket = tokio::net::TcpStream::connect(addr).await?;
        socket
            .write_all(
                format!(
                    "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Authorization: Bearer {token}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(socket.read_u8().await?);
        }
        anyhow::ensure!(
            head.starts_with(b"HTTP/1.1 101 "),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut wrote = false;
        loop {
            // Server frames are unmasked: opcode, length (7 bits, or 16 after 126), payload.
            let opcode = socket.read_u8().await? & 0x0f;
            let length = match socket.read_u8().await? & 0x7f {
                126 => usize::from(socket.read_u16().await?),
                127 => anyhow::bail!("unexpectedly long frame"),
                short => usize::from(short),
            };
            let mut payload = vec![0; length];
            socket.read_exact(&mut payload).await?;
            if opcode == 0x8 {
                return Ok(payload
                    .get(..2)
                    .map(|code| u16::from_be_bytes([code[0], code[1]])));
            }
            if !wrote {
                socket.write_all(frame).await?;
                wrote = true;
            }
        }
    };
    tokio::time::timeout(e2e_tests::DEADLINE, exchange).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_break_the_websocket_rules_close_with_their_codes() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("bad-input-rules").await?;
    let api = node.sign_in("mallory").await?;
    let token = api.token().unwrap_or_default().to_owned();

    // A text frame whose payload is not UTF-8 (masked, as a client must): 1007.
    let mask = [0x11, 0x22, 0x33, 0x44];
    let payload = [0xff_u8, 0xfe, 0xfd];
    let mut not_utf8 = vec![0x81, 0x80 | payload.len() as u8];
    not_utf8.extend_from_slice(&mask);
    not_utf8.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    assert_eq!(
        close_code_after(node.addr, &token, &not_utf8).await?,
        Some(1007)
    );

    // An unmasked frame from a client breaks the protocol: 1002.
    let unmasked = [0x81, 0x02, b'h', b'i'];
    assert_eq!(
        close_code_after(node.addr, &token, &unmasked).await?,
        Some(1002)
    );
    node.stop().await?;
    Ok(())
}

/// A REST request and the status and code it must be answered with.
struct Refused {
    method: Method,
    path: String,
    body: Option<Value>,
    status: u16,
    code: &'static str,
}

fn refused(method: Method, path: &str, body: Option<Value>) -> Refused {
    Refused {
        method,
        path: path.to_owned(),
        body,
        status: 400,
        code: "bad_request",
    }
}

async fn expect_refused(api: &Api, cases: Vec<Refused>) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for case in cases {
        let answer = api.call(case.method.clone(), &case.path, case.body).await?;
        if answer.status != case.status || answer.code() != case.code {
            problems.push(format!(
                "{} {} → {} {}",
                case.method, case.path, answer.status, answer.body
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_with_nul_answers_400_on_every_rest_endpoint_and_changes_nothing() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let node = env.start_node("bad-input-nul").await?;
    let ada = node.sign_in("ada").await?;
    node.sign_in("bob").await?;
    let room = ada.public_room("nul").await?;
    let nul_user = || Some(json!({"username": "bo\u{0}b"}));
    expect_refused(
        &ada,
        vec![
            refused(Method::POST, "/api/direct", nul_user()),
            refused(Method::POST, &format!("/api/rooms/{room}/invite"), nul_user()),
            refused(Method::GET, "/api/rooms?q=%00", None),
            refused(Method::GET, "/api/rooms?q=a%00b&limit=5", None),
            refused(Method::GET, "/api/users?q=%00", None),
            refused(Method::GET, "/api/users?q=bo%00", None),
            refused(
                Method::POST,
                "/api/rooms",
                Some(json!({"name": "a\u{0}", "visibility": "public"})),
            ),
            refused(
                Method::PATCH,
                "/api/me",
                Some(json!({"display_name": "Ada\u{0}", "status_text": "\u{0}"})),
            ),
            refused(
                Method::POST,
                "/api/password",
                Some(json!({"current_password": "\u{0}", "new_password": "long enough\u{0}"})),
            ),
            refused(
                Method::POST,
                "/api/login",
                Some(json!({"username": "ada\u{0}", "password": "correct horse"})),
            ),
            refused(
                Method::POST,
                "/api/register",
                Some(json!({"username": "nul", "password": "correct horse", "display_name": "\u{0}"})),
            ),
        ],
    )
    .await?;
    // Nothing changed: ada's profile and rooms are as they were, and `nul` does not exist.
    let me = ada.get("/api/me").await?;
    assert_eq!(me.body["display_name"], "ada", "{}", me.body);
    let rooms = ada.get("/api/me/rooms").await?;
    assert_eq!(rooms.body["rooms"].as_array().map(Vec::len), Some(1));
    node.api()
        .post(
            "/api/login",
            json!({"username": "nul", "password": "correct horse"}),
        )
        .await?
        .expect_error(401, "bad_credentials")?;
    node.stop().await?;
    Ok(())
}

/// Sends a request with a chunked body (no `Content-Length`) by hand and returns the status.
async fn chunked(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"name":"chunked","visibility":"public","status_text":"chunked"}"#;
    let exchange = async {
        let mut socket = tokio::net::TcpStream::connect(addr).await?;
        socket
            .write_all(
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
                     Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
                     Connection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).await?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|status| status.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no status in {answer}"))?;
        anyhow::Ok(status)
    };
    tokio::time::timeout(e2e_tests::DEADLINE, exchange).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_content_length_answers_411_and_changes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("bad-input-chunked").await?;
    let ada = node.sign_in("ada").await?;
    let token = ada.token().unwrap_or_default().to_owned();
    for (method, path) in [
        ("POST", "/api/rooms"),
        ("PATCH", "/api/me"),
        ("POST", "/api/direct"),
        ("POST", "/api/login"),
    ] {
        assert_eq!(
            chunked(node.addr, method, path, &token).await?,
            411,
            "{method} {path}"
        );
    }
    let rooms = ada.get("/api/rooms?q=chunked").await?;
    assert_eq!(rooms.body["rooms"], json!([]), "{}", rooms.body);
    let me = ada.get("/api/me").await?;
    assert_ne!(me.body["status_text"], "chunked", "{}", me.body);
    node.stop().await?;
    Ok(())
}
