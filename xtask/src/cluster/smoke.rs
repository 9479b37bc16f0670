//! `cargo xtask cluster check`: proof that the cluster carries a message end to end through
//! its load balancer. Two users sign in (registered on the first run, logged in after), share
//! a room, open a WebSocket each until the two land on different chat nodes, and each sends the
//! other a message: accepted, stored, and delivered across nodes through RabbitMQ.

use anyhow::{bail, Context, Result};
use chat_protocol::api::{
    CreateRoomRequest, LoginRequest, RegisterRequest, Room, RoomKind, RoomList, SessionInfo,
};
use chat_protocol::{ClientFrame, ClientMsgId, RoomId, ServerFrame};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// The check's users and room: the same on every run, so that runs do not use up the
/// deployment's registration and room-creation limits.
const USERS: [&str; 2] = ["cluster-check-ada", "cluster-check-bob"];
const PASSWORD: &str = "cluster-check-password";
const ROOM: &str = "cluster check";
/// How long any one answer may take.
const PATIENCE: Duration = Duration::from_secs(10);

pub fn check(url: &str) -> Result<()> {
    let balancer = balancer_address(url)?;
    println!("checking through the load balancer at {url}");
    let ada = sign_in(balancer, USERS[0])?;
    let bob = sign_in(balancer, USERS[1])?;
    let room = shared_room(balancer, &ada, &bob)?;
    println!("  users {} and {}, room {}", USERS[0], USERS[1], room.0);

    let mut ada_socket = Client::connect(balancer, &ada)?;
    // nginx spreads connections over the nodes; keep opening until bob is elsewhere.
    let mut bob_socket = Client::connect(balancer, &bob)?;
    for _ in 0..6 {
        if bob_socket.node != ada_socket.node {
            break;
        }
        bob_socket = Client::connect(balancer, &bob)?;
    }
    println!(
        "  {} on {}, {} on {}",
        USERS[0], ada_socket.node, USERS[1], bob_socket.node
    );
    if bob_socket.node == ada_socket.node {
        println!("  (both on one node: nginx kept sending them to the same one)");
    }
    ada_socket.join(room)?;
    bob_socket.join(room)?;
    send_and_receive(&mut ada_socket, &mut bob_socket, room)?;
    send_and_receive(&mut bob_socket, &mut ada_socket, room)?;
    println!("check passed");
    Ok(())
}

/// `from` sends one message; it must be accepted and stored for `from`, and reach `to`.
fn send_and_receive(from: &mut Client, to: &mut Client, room: RoomId) -> Result<()> {
    let started = Instant::now();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let client_msg_id = ClientMsgId(format!("cluster-check-{nanos:x}"));
    let body = format!("from {} on {} ({nanos:x})", from.user, from.node);
    from.send(&ClientFrame::Send {
        room_id: room,
        client_msg_id: client_msg_id.clone(),
        body: body.clone(),
    })?;
    let mut accepted = None;
    let seq = from.wait_for("stored", |frame| match frame {
        ServerFrame::Accepted {
            client_msg_id: id, ..
        } if *id == client_msg_id => {
            accepted = Some(started.elapsed());
            None
        }
        ServerFrame::Stored {
            client_msg_id: id,
            seq,
            ..
        } if *id == client_msg_id => Some(Ok(*seq)),
        ServerFrame::Error {
            client_msg_id: Some(id),
            code,
            message,
            ..
        } if *id == client_msg_id => Some(Err(anyhow::anyhow!("{code:?}: {message}"))),
        _ => None,
    })??;
    let stored = started.elapsed();
    to.wait_for("the message", |frame| match frame {
        ServerFrame::Message(message)
            if message.room_id == room && message.client_msg_id == client_msg_id =>
        {
            Some(())
        }
        _ => None,
    })?;
    println!(
        "  {} ({}) -> {} ({}): accepted in {} ms, stored as seq {} in {} ms, delivered in {} ms",
        from.user,
        from.node,
        to.user,
        to.node,
        accepted.map_or_else(|| "?".to_owned(), |d| d.as_millis().to_string()),
        seq.0,
        stored.as_millis(),
        started.elapsed().as_millis()
    );
    Ok(())
}

/// A signed-in WebSocket.
pub(crate) struct Client {
    pub(crate) user: String,
    /// The node id its `welcome` named.
    pub(crate) node: String,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// A WebSocket to `address` (a node, or a balancer in front of nodes) as the session's
    /// user, once its `welcome` has arrived.
    pub(crate) fn connect(address: SocketAddr, session: &Session) -> Result<Client> {
        let mut request = format!("ws://{address}/ws").into_client_request()?;
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", session.token).parse()?,
        );
        let stream = TcpStream::connect_timeout(&address, PATIENCE)?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (socket, _) = tungstenite::client(request, MaybeTlsStream::Plain(stream))
            .map_err(|e| anyhow::anyhow!("WebSocket handshake through {address}: {e}"))?;
        let mut client = Client {
            user: session.username.clone(),
            node: String::new(),
            socket,
        };
        client.node = client.wait_for("welcome", |frame| match frame {
            ServerFrame::Welcome { node_id, .. } => Some(node_id.clone()),
            _ => None,
        })?;
        Ok(client)
    }

    pub(crate) fn join(&mut self, room: RoomId) -> Result<()> {
        self.send(&ClientFrame::Join {
            room_id: room,
            after: None,
        })?;
        self.wait_for("joined", |frame| match frame {
            ServerFrame::Joined { room_id, .. } if *room_id == room => Some(()),
            _ => None,
        })
    }

    pub(crate) fn send(&mut self, frame: &ClientFrame) -> Result<()> {
        self.socket
            .send(Message::text(serde_json::to_string(frame)?))
            .context("cannot send a frame")
    }

    /// Reads frames until `pick` returns something, for at most [`PATIENCE`].
    pub(crate) fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServerFrame) -> Option<T>,
    ) -> Result<T> {
        let mut found = None;
        self.read_for(PATIENCE, |frame| {
            found = pick(frame);
            found.is_none()
        })?;
        found.with_context(|| {
            format!(
                "{} ({}) got no {what} within {PATIENCE:?}",
                self.user, self.node
            )
        })
    }

    /// Hands every frame that arrives within `within` to `take`, until it answers false.
    /// Frames that are not JSON server frames are skipped; a closed connection is an error.
    pub(crate) fn read_for(
        &mut self,
        within: Duration,
        mut take: impl FnMut(&ServerFrame) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    if let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) {
                        if !take(&frame) {
                            return Ok(());
                        }
                    }
                }
                Ok(Message::Close(close)) => {
                    bail!("{} ({}) was disconnected: {close:?}", self.user, self.node)
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => bail!("{} ({}): {e}", self.user, self.node),
            }
        }
        Ok(())
    }

    /// Closes the connection, as a client leaving does.
    pub(crate) fn close(mut self) {
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
    }
}

pub(crate) struct Session {
    pub(crate) username: String,
    pub(crate) token: String,
    /// The address the user's connections come from (this machine's own on the bridge when
    /// `None`).
    pub(super) source: Option<Ipv4Addr>,
}

/// Logs the user in, or registers it on the first run. Login first: registrations count
/// against a per-address hourly limit, logins only against a per-minute one.
pub(crate) fn sign_in(balancer: SocketAddr, username: &str) -> Result<Session> {
    sign_in_from(None, balancer, username)
}

/// [`sign_in`] from `source`, which the user's later requests and connections come from too.
pub(super) fn sign_in_from(
    source: Option<Ipv4Addr>,
    balancer: SocketAddr,
    username: &str,
) -> Result<Session> {
    let login = LoginRequest {
        username: username.to_owned(),
        password: PASSWORD.to_owned(),
    };
    let (status, body) = http_from(source, balancer, "POST", "/api/login", None, Some(&login))?;
    let (status, body) = if status == 401 {
        let register = RegisterRequest {
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
            display_name: None,
        };
        http_from(
            source,
            balancer,
            "POST",
            "/api/register",
            None,
            Some(&register),
        )?
    } else {
        (status, body)
    };
    if status != 200 && status != 201 {
        bail!("signing in {username}: HTTP {status}: {body}");
    }
    let session: SessionInfo = serde_json::from_str(&body)
        .with_context(|| format!("signing in {username}: unexpected answer {body}"))?;
    Ok(Session {
        username: username.to_owned(),
        token: session.token,
        source,
    })
}

/// The check's public room, created by the first user on the first run; both are members.
fn shared_room(balancer: SocketAddr, owner: &Session, other: &Session) -> Result<RoomId> {
    let mine = |session: &Session| -> Result<Vec<Room>> {
        let (status, body) = http::<()>(balancer, "GET", "/api/me/rooms", Some(session), None)?;
        if status != 200 {
            bail!(
                "listing the rooms of {}: HTTP {status}: {body}",
                session.username
            );
        }
        Ok(serde_json::from_str::<RoomList>(&body)?.rooms)
    };
    let existing = mine(owner)?.into_iter().find(|room| room.name == ROOM);
    let room = match existing {
        Some(room) => room.room_id,
        None => {
            let create = CreateRoomRequest {
                name: ROOM.to_owned(),
                visibility: RoomKind::Public,
            };
            let (status, body) = http(balancer, "POST", "/api/rooms", Some(owner), Some(&create))?;
            if status != 201 {
                bail!("creating the room: HTTP {status}: {body}");
            }
            serde_json::from_str::<Room>(&body)?.room_id
        }
    };
    let path = format!("/api/rooms/{}/join", room.0);
    let (status, body) = http::<()>(balancer, "POST", &path, Some(other), None)?;
    if status != 200 {
        bail!("{} joining the room: HTTP {status}: {body}", other.username);
    }
    Ok(room)
}

/// One HTTP/1.0 request (so the answer is never chunked), its status and body; as the
/// session's user, from its address, when there is one.
pub(crate) fn http<T: serde::Serialize>(
    address: SocketAddr,
    method: &str,
    path: &str,
    session: Option<&Session>,
    body: Option<&T>,
) -> Result<(u16, String)> {
    http_from(
        session.and_then(|session| session.source),
        address,
        method,
        path,
        session.map(|session| session.token.as_str()),
        body,
    )
}

/// [`http`] from `source`, with `token` as its bearer token.
pub(crate) fn http_from<T: serde::Serialize>(
    source: Option<Ipv4Addr>,
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&T>,
) -> Result<(u16, String)> {
    let body = body
        .map(serde_json::to_string)
        .transpose()?
        .unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let mut stream = connect_from(source, address, PATIENCE)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("{method} {path}: no answer"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{method} {path}: not an HTTP answer: {head}"))?;
    Ok((status, body.to_owned()))
}

/// A TCP connection to `address`, from `source` when given.
pub(super) fn connect_from(
    source: Option<Ipv4Addr>,
    address: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream> {
    let Some(source) = source else {
        return Ok(TcpStream::connect_timeout(&address, timeout)?);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .with_context(|| format!("cannot bind a socket to {source}"))?;
    socket.connect_timeout(&address.into(), timeout)?;
    Ok(socket.into())
}

fn balancer_address(url: &str) -> Result<SocketAddr> {
    let authority = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .filter(|authority| !authority.is_empty())
        .with_context(|| format!("not an http:// URL: {url}"))?;
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    with_port
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("{authority} has no address"))
}
