//! Malformed frames get an error frame with a stable code, and the connection stays usable.

use chat_protocol::limits::MAX_BODY_CHARS;
use chat_protocol::{ErrorCode, ServerFrame};
use e2e_tests::{TestEnv, WsClient};

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
