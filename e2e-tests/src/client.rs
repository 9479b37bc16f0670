//! A WebSocket client that speaks the chat protocol, for tests.

use crate::DEADLINE;
use anyhow::{anyhow, bail, Context};
use chat_protocol::{ChatMessage, ClientFrame, ClientMsgId, RoomId, Seq, ServerFrame};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One test client connection.
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn connect(url: &str) -> anyhow::Result<WsClient> {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        Ok(WsClient { socket })
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

    /// Sends `hello` and waits for `welcome`.
    pub async fn hello(&mut self, name: &str) -> anyhow::Result<chat_protocol::UserId> {
        self.send(&ClientFrame::Hello { name: name.into() }).await?;
        self.recv_until(|frame| match frame {
            ServerFrame::Welcome { user_id, .. } => Some(*user_id),
            _ => None,
        })
        .await
    }

    /// Joins a room by name and returns its id and newest sequence number.
    pub async fn join(&mut self, room: &str) -> anyhow::Result<(RoomId, Seq)> {
        self.send(&ClientFrame::Join { room: room.into() }).await?;
        let wanted = room.to_owned();
        self.recv_until(|frame| match frame {
            ServerFrame::Joined {
                room_id,
                room,
                last_seq,
            } if *room == wanted => Some((*room_id, *last_seq)),
            _ => None,
        })
        .await
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
