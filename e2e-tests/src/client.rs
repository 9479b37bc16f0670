//! A WebSocket client that speaks the chat protocol, for tests.

use crate::api::Api;
use crate::DEADLINE;
use anyhow::{anyhow, bail, Context};
use chat_protocol::{ChatMessage, ClientFrame, ClientMsgId, RoomId, Seq, ServerFrame, UserId};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One test client connection, with the REST session it signed in with.
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    api: Option<Api>,
    user_id: Option<UserId>,
}

impl WsClient {
    /// Opens a WebSocket without credentials (the node refuses it with 401).
    pub async fn connect(url: &str) -> anyhow::Result<WsClient> {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        Ok(WsClient {
            socket,
            api: None,
            user_id: None,
        })
    }

    /// Opens a WebSocket with `api`'s bearer token and waits for `welcome`.
    pub async fn connect_as(url: &str, api: Api) -> anyhow::Result<WsClient> {
        WsClient::connect_with_headers(url, api, &[]).await
    }

    /// Like [`WsClient::connect_as`], with more request headers.
    pub async fn connect_with_headers(
        url: &str,
        api: Api,
        headers: &[(&'static str, &str)],
    ) -> anyhow::Result<WsClient> {
        let mut request = url.into_client_request()?;
        let token = api.token().context("the API client is not signed in")?;
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, HeaderValue::from_str(value)?);
        }
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        let mut client = WsClient {
            socket,
            api: Some(api),
            user_id: None,
        };
        let user_id = client
            .recv_until(|frame| match frame {
                ServerFrame::Welcome { user_id, .. } => Some(*user_id),
                _ => None,
            })
            .await?;
        client.user_id = Some(user_id);
        Ok(client)
    }

    /// The REST session this client signed in with.
    pub fn api(&self) -> anyhow::Result<&Api> {
        self.api.as_ref().context("this client is not signed in")
    }

    /// The signed-in user's id.
    pub fn user_id(&self) -> anyhow::Result<UserId> {
        self.user_id.context("this client is not signed in")
    }

    pub async fn send(&mut self, frame: &ClientFrame) -> anyhow::Result<()> {
        self.send_raw(&serde_json::to_string(frame)?).await
    }

    pub async fn send_raw(&mut self, text: &str) -> anyhow::Result<()> {
        self.socket.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next server frame, failing after the deadline or if the server closes.
    pub async fn recv(&mut self) -> anyhow::Result<ServerFrame> {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.socket.next())
                .await
                .context("no frame from the server in time")?
                .ok_or_else(|| anyhow!("the server closed the connection"))??;
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(&text)
                        .with_context(|| format!("unparseable server frame {text}"))
                }
                Message::Close(frame) => bail!("the server closed the connection: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Reads frames until one matches `pick`, returning what it picked. Other frames are skipped.
    pub async fn recv_until<T>(
        &mut self,
        mut pick: impl FnMut(&ServerFrame) -> Option<T>,
    ) -> anyhow::Result<T> {
        loop {
            let frame = self.recv().await?;
            if let Some(value) = pick(&frame) {
                return Ok(value);
            }
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn recv_close(&mut self) -> anyhow::Result<Option<u16>> {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.socket.next())
                .await
                .context("the server did not close in time")?;
            match message {
                None => return Ok(None),
                Some(Err(_)) => return Ok(None),
                Some(Ok(Message::Close(frame))) => return Ok(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Joins a public room by name (created if needed) over REST, then subscribes to it, and
    /// returns its id and newest sequence number.
    pub async fn join(&mut self, room: &str) -> anyhow::Result<(RoomId, Seq)> {
        let api = self.api()?.clone();
        let room_id = api.public_room(room).await?;
        let joined = api
            .post_empty(&format!("/api/rooms/{room_id}/join"))
            .await?;
        if joined.status != 200 {
            bail!(
                "joining room {room:?} failed: {} {}",
                joined.status,
                joined.body
            );
        }
        self.subscribe(room_id).await
    }

    /// Subscribes this connection to a room the user is a member of.
    pub async fn subscribe(&mut self, room_id: RoomId) -> anyhow::Result<(RoomId, Seq)> {
        self.send(&ClientFrame::Join {
            room_id,
            after: None,
        })
        .await?;
        self.recv_until(|frame| match frame {
            ServerFrame::Joined {
                room_id: joined,
                last_seq,
                ..
            } if *joined == room_id => Some(Ok((*joined, *last_seq))),
            ServerFrame::Error { code, message, .. } => Some(Err(anyhow!(
                "subscribing to {room_id} failed: {code}: {message}"
            ))),
            _ => None,
        })
        .await?
    }

    /// Resumes a room after `after`: sends `join` with it and returns the `joined` frame's
    /// newest sequence number and resume report. Missed messages follow as `message` frames.
    pub async fn resume(
        &mut self,
        room_id: RoomId,
        after: Seq,
    ) -> anyhow::Result<(Seq, Option<chat_protocol::frame::Resume>)> {
        self.send(&ClientFrame::Join {
            room_id,
            after: Some(after),
        })
        .await?;
        self.recv_until(|frame| match frame {
            ServerFrame::Joined {
                room_id: joined,
                last_seq,
                resume,
                ..
            } if *joined == room_id => Some(Ok((*last_seq, *resume))),
            ServerFrame::Error { code, message, .. } => {
                Some(Err(anyhow!("resuming {room_id} failed: {code}: {message}")))
            }
            _ => None,
        })
        .await?
    }

    /// Sends a message without waiting for any answer.
    pub async fn send_message(
        &mut self,
        room_id: RoomId,
        client_msg_id: &str,
        body: &str,
    ) -> anyhow::Result<()> {
        self.send(&ClientFrame::Send {
            room_id,
            client_msg_id: ClientMsgId(client_msg_id.into()),
            body: body.into(),
        })
        .await
    }

    /// Waits for the next chat message of a room.
    pub async fn next_message(&mut self, room: RoomId) -> anyhow::Result<ChatMessage> {
        self.recv_until(|frame| match frame {
            ServerFrame::Message(message) if message.room_id == room => Some(message.clone()),
            _ => None,
        })
        .await
    }
}
