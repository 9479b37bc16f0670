//! Opening WebSockets to the nodes from several loopback source addresses.
//!
//! One source address has about 28,000 ephemeral ports towards one node address; binding each
//! client socket to one of 127.0.0.1, 127.0.0.2, … before connecting multiplies that. The port
//! is left to `connect` (`IP_BIND_ADDRESS_NO_PORT`), so a port is shared between destinations.

use anyhow::{bail, Context};
use chat_protocol::{ClientFrame, ServerFrame};
use futures::{SinkExt, StreamExt};
use nix::sys::socket::{setsockopt, sockopt};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket.
pub type Socket = WebSocketStream<TcpStream>;

/// How long the tool waits for one answer from a node (sign-in, join) before giving up.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an idle REST connection is kept for the next request.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// Picks a source address for each new connection, round robin.
#[derive(Debug)]
pub struct Dialer {
    sources: Vec<Ipv4Addr>,
    /// One HTTP client per source address, so per-address limits see several addresses.
    http: Vec<reqwest::Client>,
    next: AtomicUsize,
}

impl Dialer {
    /// A dialer using 127.0.0.1 … 127.0.0.`count`.
    pub fn loopback(count: u8) -> Dialer {
        Dialer::from(Ipv4Addr::new(127, 0, 0, 1), count)
    }

    /// A dialer using `count` consecutive addresses from `first` (which must be this machine's).
    pub fn from(first: Ipv4Addr, count: u8) -> Dialer {
        let first = u32::from(first);
        let sources: Vec<Ipv4Addr> = (0..u32::from(count.max(1)))
            .map(|i| Ipv4Addr::from(first.wrapping_add(i)))
            .collect();
        let http = sources
            .iter()
            .map(|&source| {
                reqwest::Client::builder()
                    .local_address(std::net::IpAddr::V4(source))
                    .timeout(ANSWER_TIMEOUT)
                    // Idle connections go before a node's own cut (its header timeout may be
                    // as short as 10 s), so a request never goes out on one the node closed.
                    .pool_idle_timeout(POOL_IDLE)
                    .build()
                    .unwrap_or_default()
            })
            .collect();
        Dialer {
            sources,
            http,
            next: AtomicUsize::new(0),
        }
    }

    /// An HTTP client bound to one of the source addresses, round robin.
    pub fn http(&self) -> &reqwest::Client {
        &self.http[self.next.fetch_add(1, Ordering::Relaxed) % self.http.len()]
    }

    /// Opens a WebSocket to `node`'s `/ws`, trying the next source address when one has no
    /// free port left.
    pub async fn connect(
        &self,
        node: SocketAddr,
        authorization: Option<&str>,
    ) -> anyhow::Result<Socket> {
        let mut last_error = None;
        for _ in 0..self.sources.len() {
            let index = self.next.fetch_add(1, Ordering::Relaxed) % self.sources.len();
            let source = self.sources[index];
            match connect_from(source, node, authorization).await {
                Ok(socket) => return Ok(socket),
                Err(error) => last_error = Some(error),
            }
        }
        match last_error {
            Some(error) => Err(error),
            None => bail!("no source address"),
        }
    }
}

async fn connect_from(
    source: Ipv4Addr,
    node: SocketAddr,
    authorization: Option<&str>,
) -> anyhow::Result<Socket> {
    let socket = TcpSocket::new_v4()?;
    // Choose the port at connect time, by the whole 4-tuple: a port bound before connecting is
    // reserved towards every destination, and with tens of thousands of sockets (and the
    // TIME_WAIT ones of the previous run) the kernel's search for a free one dominates.
    setsockopt(&socket, sockopt::IpBindAddressNoPort, &true)
        .context("cannot set IP_BIND_ADDRESS_NO_PORT")?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .with_context(|| format!("cannot bind a client socket to {source}"))?;
    let stream = socket
        .connect(node)
        .await
        .with_context(|| format!("cannot connect from {source} to {node}"))?;
    stream.set_nodelay(true)?;
    let mut request = format!("ws://{node}/ws").into_client_request()?;
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert("authorization", value.parse()?);
    }
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config()))
        .await
        .with_context(|| format!("WebSocket handshake with {node} failed"))?;
    Ok(socket)
}

/// The WebSocket settings of every load connection. The WebSocket layer zeroes the free part of
/// its read buffer before every read, so the buffer's size is paid on each one: with the default
/// 128 KiB that clearing was a sixth of this tool's CPU at 15,000 msgs/s; 4 KiB per read costs
/// next to nothing and no more system calls than 16 KiB did (the same CPU in both).
fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024)
}

/// Sends one client frame.
pub async fn send_frame(socket: &mut Socket, frame: &ClientFrame) -> anyhow::Result<()> {
    socket
        .send(Message::text(serde_json::to_string(frame)?))
        .await?;
    Ok(())
}

/// Reads frames until `pick` accepts one, skipping the others, within [`ANSWER_TIMEOUT`].
pub async fn recv_until<T>(
    socket: &mut Socket,
    mut pick: impl FnMut(ServerFrame) -> Result<Option<T>, Box<ServerFrame>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .context("no answer from the node in time")?;
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => bail!("the node closed the connection: {close:?}"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.into()),
            None => bail!("the node closed the connection"),
        };
        let frame: ServerFrame =
            serde_json::from_str(&text).with_context(|| format!("unparseable frame {text}"))?;
        match pick(frame) {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => continue,
            Err(frame) => match *frame {
                ServerFrame::Error { code, message, .. } => bail!("{code}: {message}"),
                frame => bail!("unexpected frame {frame:?}"),
            },
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit; returns the new limit.
pub fn raise_open_files_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}
