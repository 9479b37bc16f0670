//! Everything about who a client is and how it gets into a room, in one place.
//!
//! A user registers (or, if the name is taken, logs in) over REST and gets a bearer token; a
//! connection is a WebSocket upgraded with `Authorization: Bearer <token>`, which the node
//! answers with `welcome`. A room is created or joined over REST, then followed on the
//! connection with a `join` frame by room id. When any of this changes, only this module
//! changes: the workloads call [`sign_up`], [`connect`], [`sign_in`] and [`join`], and never
//! build identity requests themselves.

use crate::conn::{recv_until, send_frame, Dialer, Socket};
use anyhow::{bail, Context};
use chat_protocol::api::{
    CreateRoomRequest, LoginRequest, RegisterRequest, Room, RoomKind, RoomList, SessionInfo,
};
use chat_protocol::{ClientFrame, RoomId, Seq, ServerFrame, UserId};
use reqwest::StatusCode;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Every load user's password (the tool's users live in a benchmark database).
const PASSWORD: &str = "load-test-password";

/// A user with a session token, usable for any number of connections to any node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Account {
    pub user_id: UserId,
    pub username: String,
    pub token: String,
}

/// A signed-in connection to one node.
pub struct Session {
    pub socket: Socket,
    pub account: Account,
    pub node: SocketAddr,
}

impl Session {
    /// The node's REST API base and this user's `Authorization` value.
    fn api(&self) -> (String, String) {
        (
            format!("http://{}/api", self.node),
            format!("Bearer {}", self.account.token),
        )
    }
}

/// A room a connection follows, and its newest sequence number at that moment.
#[derive(Debug, Clone, Copy)]
pub struct JoinedRoom {
    pub room_id: RoomId,
    pub last_seq: Seq,
    /// False when a resume missed too much to be sent (the client reloads history instead).
    pub complete: bool,
}

/// Accounts already signed up, kept in a file between runs of the tool: a node hashes each
/// password with argon2 on purpose, and a benchmark of chat traffic should not pay for that on
/// every run (nor grow the nodes' memory with it).
#[derive(Debug, Default)]
pub struct AccountBook {
    path: Option<PathBuf>,
    accounts: Mutex<HashMap<String, Account>>,
}

impl AccountBook {
    /// A book kept in `path` (empty if the file does not exist yet).
    pub fn open(path: &Path) -> anyhow::Result<AccountBook> {
        let accounts = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not an account book", path.display()))?,
            Err(_) => HashMap::new(),
        };
        Ok(AccountBook {
            path: Some(path.to_owned()),
            accounts: Mutex::new(accounts),
        })
    }

    fn get(&self, username: &str) -> Option<Account> {
        self.accounts.lock().ok()?.get(username).cloned()
    }

    fn insert(&self, account: &Account) {
        if let Ok(mut accounts) = self.accounts.lock() {
            accounts.insert(account.username.clone(), account.clone());
        }
    }

    /// Writes the book back to its file, if it has one.
    pub fn save(&self) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = match self.accounts.lock() {
            Ok(accounts) => serde_json::to_string(&*accounts)?,
            Err(_) => bail!("the account book is poisoned"),
        };
        std::fs::write(path, text)?;
        Ok(())
    }
}

/// The account `username`, from the book, else registered through `node`'s REST API (or
/// logged in if the name is taken).
pub async fn sign_up(
    dialer: &Dialer,
    book: &AccountBook,
    node: SocketAddr,
    username: &str,
) -> anyhow::Result<Account> {
    if let Some(account) = book.get(username) {
        return Ok(account);
    }
    let http = dialer.http();
    let register = RegisterRequest {
        username: username.to_owned(),
        password: PASSWORD.to_owned(),
        display_name: None,
    };
    let response = http
        .post(format!("http://{node}/api/register"))
        .json(&register)
        .send()
        .await
        .with_context(|| format!("cannot register {username} at {node}"))?;
    let response = if response.status() == StatusCode::CONFLICT {
        let login = LoginRequest {
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
        };
        http.post(format!("http://{node}/api/login"))
            .json(&login)
            .send()
            .await?
    } else {
        response
    };
    let info: SessionInfo = answer(response, "sign-up").await?;
    let account = Account {
        user_id: info.profile.user_id,
        username: username.to_owned(),
        token: info.token,
    };
    book.insert(&account);
    Ok(account)
}

/// Opens a WebSocket to `node` as `account` and waits for `welcome`.
pub async fn connect(
    dialer: &Dialer,
    node: SocketAddr,
    account: &Account,
) -> anyhow::Result<Session> {
    let mut socket = dialer
        .connect(node, Some(&format!("Bearer {}", account.token)))
        .await?;
    recv_until(&mut socket, |frame| match frame {
        ServerFrame::Welcome { .. } => Ok(Some(())),
        error @ ServerFrame::Error { .. } => Err(Box::new(error)),
        _ => Ok(None),
    })
    .await?;
    Ok(Session {
        socket,
        account: account.clone(),
        node,
    })
}

/// [`sign_up`] then [`connect`].
pub async fn sign_in(
    dialer: &Dialer,
    book: &AccountBook,
    node: SocketAddr,
    username: &str,
) -> anyhow::Result<Session> {
    let account = sign_up(dialer, book, node, username).await?;
    connect(dialer, node, &account).await
}

/// Makes the user a member of the public room `room_name` (creating it if needed), then
/// follows it on this connection. Frames of other rooms that arrive meanwhile are skipped, so
/// callers join before traffic starts.
pub async fn join(
    dialer: &Dialer,
    session: &mut Session,
    room_name: &str,
) -> anyhow::Result<JoinedRoom> {
    let room_id = become_member(dialer, session, room_name).await?;
    first_screen(dialer, session, room_id).await?;
    follow(session, room_id, None).await
}

/// Reads the room's newest page of history, as a client opening the room does. It also makes
/// the room's history a cached entry, which every later message must then mark out of date:
/// the nodes pay for that as they would with real readers.
async fn first_screen(dialer: &Dialer, session: &Session, room_id: RoomId) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Page {
        #[allow(dead_code)]
        messages: Vec<serde::de::IgnoredAny>,
    }
    let (base, bearer) = session.api();
    let response = dialer
        .http()
        .get(format!("{base}/rooms/{room_id}/messages"))
        .query(&[("limit", "50")])
        .header("authorization", bearer)
        .send()
        .await?;
    let _: Page = answer(response, "history").await?;
    Ok(())
}

/// Follows a room the user is already a member of on this connection; with `after`, resumes
/// it (the missed messages follow the answer).
pub async fn follow(
    session: &mut Session,
    room_id: RoomId,
    after: Option<Seq>,
) -> anyhow::Result<JoinedRoom> {
    send_frame(&mut session.socket, &ClientFrame::Join { room_id, after }).await?;
    recv_until(&mut session.socket, |frame| match frame {
        ServerFrame::Joined {
            room_id: joined,
            last_seq,
            resume,
            ..
        } if joined == room_id => Ok(Some(JoinedRoom {
            room_id,
            last_seq,
            complete: resume.is_none_or(|resume| resume.complete),
        })),
        error @ ServerFrame::Error { .. } => Err(Box::new(error)),
        _ => Ok(None),
    })
    .await
}

async fn become_member(
    dialer: &Dialer,
    session: &Session,
    room_name: &str,
) -> anyhow::Result<RoomId> {
    let http = dialer.http();
    let (base, bearer) = session.api();
    let create = CreateRoomRequest {
        name: room_name.to_owned(),
        visibility: RoomKind::Public,
    };
    let response = http
        .post(format!("{base}/rooms"))
        .header("authorization", &bearer)
        .json(&create)
        .send()
        .await?;
    if response.status() != StatusCode::CONFLICT {
        let room: Room = answer(response, "room creation").await?;
        return Ok(room.room_id);
    }
    // Someone else created it first: find it and join it.
    let response = http
        .get(format!("{base}/rooms"))
        .query(&[("q", room_name)])
        .header("authorization", &bearer)
        .send()
        .await?;
    let rooms: RoomList = answer(response, "room search").await?;
    let Some(room) = rooms.rooms.into_iter().find(|room| room.name == room_name) else {
        bail!("room {room_name} exists but cannot be found");
    };
    let response = http
        .post(format!("{base}/rooms/{}/join", room.room_id))
        .header("authorization", &bearer)
        .send()
        .await?;
    let _: Room = answer(response, "room join").await?;
    Ok(room.room_id)
}

async fn answer<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    what: &str,
) -> anyhow::Result<T> {
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("{what} failed with {status}: {body}");
    }
    Ok(response.json().await?)
}
