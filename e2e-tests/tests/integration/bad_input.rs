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
