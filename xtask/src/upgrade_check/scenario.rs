//! The two users of the check: one on the old node, one on the new, in one room. Each sends
//! [`MESSAGES`] while the other receives; then the old node's user leaves, the new node's
//! sends [`RESUMED`] more, and the first comes back on the new node resuming after the last
//! sequence number it saw. Every figure is gathered here; `delivery` judges them.

use super::delivery::{self, Received, Sequence, Tally};
use super::interrupted;
use crate::cluster::smoke::{self, Client, Session};
use anyhow::{bail, Context, Result};
use chat_protocol::api::{CreateRoomRequest, MessagePage, Room, RoomKind};
use chat_protocol::frame::Resume;
use chat_protocol::{ClientFrame, ClientMsgId, RoomId, Seq, ServerFrame};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Messages each user sends while both are connected. With the [`RESUMED`] ones, the new
/// node's user sends 60 at once: within a stock node's burst of 100 sends per user.
pub(crate) const MESSAGES: usize = 50;
/// Messages the new node's user sends while the old node's user is away.
pub(crate) const RESUMED: usize = 10;
/// How long everything sent may take to be answered and delivered.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);
/// How long a user goes on listening once it has everything, for anything received twice.
const QUIET: Duration = Duration::from_secs(1);
/// Each history page (the most a page may hold).
const HISTORY_PAGE: usize = 200;

/// A chat node of the check: where it listens and the node id its `welcome` must name.
pub(crate) struct NodeAt<'a> {
    pub(crate) addr: SocketAddr,
    pub(crate) node_id: &'a str,
}

/// What the check saw.
pub(crate) struct Outcome {
    /// The old node's user, then the new node's.
    pub(crate) sides: [SideOutcome; 2],
    pub(crate) sequence: Sequence,
    pub(crate) resume: ResumeOutcome,
}

impl Outcome {
    pub(crate) fn passed(&self) -> bool {
        self.sides.iter().all(SideOutcome::passed)
            && self.sequence.is_continuous()
            && self.resume.passed()
    }
}

/// One user's figures: its sends, and what it received live and in its node's history.
pub(crate) struct SideOutcome {
    pub(crate) user: String,
    pub(crate) sent: usize,
    pub(crate) stored: usize,
    /// Sends answered with an error, with its code.
    pub(crate) refused: Vec<String>,
    pub(crate) live: Tally,
    pub(crate) history: Tally,
}

impl SideOutcome {
    fn passed(&self) -> bool {
        self.stored == self.sent && self.live.is_clean() && self.history.is_clean()
    }

    pub(crate) fn unanswered(&self) -> usize {
        self.sent.saturating_sub(self.stored + self.refused.len())
    }
}

/// The old node's user back on the new node.
pub(crate) struct ResumeOutcome {
    pub(crate) after: i64,
    /// What `joined` said.
    pub(crate) resume: Option<Resume>,
    pub(crate) received: Tally,
}

impl ResumeOutcome {
    fn passed(&self) -> bool {
        self.resume.is_some_and(|resume| resume.complete) && self.received.is_clean()
    }
}

pub(crate) fn run(old: &NodeAt, new: &NodeAt) -> Result<Outcome> {
    let old_session = smoke::sign_in(old.addr, "upgrade-old")?;
    let new_session = smoke::sign_in(new.addr, "upgrade-new")?;
    let room = shared_room(old.addr, &old_session, new.addr, &new_session)?;
    let mut old_user = User::joined(connect(old, &old_session)?, &old_session, room)?;
    let mut new_user = User::joined(connect(new, &new_session)?, &new_session, room)?;

    for index in 0..MESSAGES {
        old_user.send(&format!("old-{index}"))?;
        new_user.send(&format!("new-{index}"))?;
    }
    settle(&mut [&mut old_user, &mut new_user])?;
    let old_live = old_user.live_tally(&stored(&[&old_user, &new_user]));

    // The old node's user goes away; what is said meanwhile it must get on its return.
    let after = old_user.received.iter().map(|m| m.seq).max().unwrap_or(0);
    if let Some(socket) = old_user.socket.take() {
        socket.close();
    }
    for index in 0..RESUMED {
        new_user.send(&format!("new-later-{index}"))?;
    }
    settle(&mut [&mut new_user])?;
    let everything = stored(&[&old_user, &new_user]);

    let mut back = User::new(connect(new, &old_session)?, &old_session, room);
    let resume = back.resume(after)?;
    let missed: BTreeMap<String, i64> = everything
        .iter()
        .filter(|(_, seq)| **seq > after)
        .map(|(id, seq)| (id.clone(), *seq))
        .collect();
    back.receive_until(|user| user.has_all(&missed))?;
    new_user.listen(QUIET)?;
    let resume = ResumeOutcome {
        after,
        resume,
        received: back.live_tally(&missed),
    };

    let old_history = history(old.addr, &old_session, room)?;
    let new_history = history(new.addr, &new_session, room)?;
    let sides = [
        old_user.outcome(old_live, delivery::tally(&everything, &old_history)),
        new_user.outcome(
            new_user.live_tally(&everything),
            delivery::tally(&everything, &new_history),
        ),
    ];
    Ok(Outcome {
        sides,
        sequence: delivery::sequence(everything.values().copied()),
        resume,
    })
}

/// One user's connection to the room, and what it sent and received on it.
struct User {
    name: String,
    room: RoomId,
    /// `None` once it left.
    socket: Option<Client>,
    sent: Vec<String>,
    /// Client message id → sequence number, from `stored`.
    stored: BTreeMap<String, i64>,
    refused: Vec<String>,
    received: Vec<Received>,
}

impl User {
    /// The user on `socket`, about to join `room` (over REST it is a member already).
    fn new(socket: Client, session: &Session, room: RoomId) -> User {
        User {
            name: session.username.clone(),
            room,
            socket: Some(socket),
            sent: Vec::new(),
            stored: BTreeMap::new(),
            refused: Vec::new(),
            received: Vec::new(),
        }
    }

    /// The user on `socket`, once it joined `room`.
    fn joined(mut socket: Client, session: &Session, room: RoomId) -> Result<User> {
        socket.join(room)?;
        Ok(User::new(socket, session, room))
    }

    fn socket(&mut self) -> Result<&mut Client> {
        self.socket
            .as_mut()
            .with_context(|| format!("{} has left", self.name))
    }

    fn send(&mut self, id: &str) -> Result<()> {
        let frame = ClientFrame::Send {
            room_id: self.room,
            client_msg_id: ClientMsgId(id.to_owned()),
            body: format!("{id} from {}", self.name),
        };
        self.socket()?.send(&frame)?;
        self.sent.push(id.to_owned());
        Ok(())
    }

    /// Joins the room again resuming after `after`; what `joined` said of the resume.
    fn resume(&mut self, after: i64) -> Result<Option<Resume>> {
        let room = self.room;
        let socket = self.socket()?;
        socket.send(&ClientFrame::Join {
            room_id: room,
            after: Some(Seq(after)),
        })?;
        socket.wait_for("joined", |frame| match frame {
            ServerFrame::Joined {
                room_id, resume, ..
            } if *room_id == room => Some(*resume),
            _ => None,
        })
    }

    /// Reads what arrives for at most `within`.
    fn listen(&mut self, within: Duration) -> Result<()> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        let (room, stored, refused, received) = (
            self.room,
            &mut self.stored,
            &mut self.refused,
            &mut self.received,
        );
        socket.read_for(within, |frame| {
            match frame {
                ServerFrame::Stored {
                    room_id,
                    client_msg_id,
                    seq,
                    ..
                } if *room_id == room => {
                    stored.insert(client_msg_id.0.clone(), seq.0);
                }
                ServerFrame::Error {
                    client_msg_id: Some(id),
                    code,
                    ..
                } => refused.push(format!("{}: {code:?}", id.0)),
                ServerFrame::Message(message) if message.room_id == room => {
                    received.push(Received {
                        seq: message.seq.0,
                        id: message.client_msg_id.0.clone(),
                    })
                }
                _ => {}
            }
            true
        })
    }

    /// Listens until `done` holds, for at most [`SETTLE_WITHIN`]; then for [`QUIET`] more.
    fn receive_until(&mut self, done: impl Fn(&User) -> bool) -> Result<()> {
        let deadline = Instant::now() + SETTLE_WITHIN;
        while !done(&*self) && Instant::now() < deadline {
            if interrupted() {
                bail!("interrupted");
            }
            self.listen(Duration::from_millis(100))?;
        }
        self.listen(QUIET)
    }

    /// Every send answered, stored or refused.
    fn answered(&self) -> bool {
        self.stored.len() + self.refused.len() >= self.sent.len()
    }

    fn has_all(&self, expected: &BTreeMap<String, i64>) -> bool {
        let received: HashSet<&str> = self.received.iter().map(|m| m.id.as_str()).collect();
        expected.keys().all(|id| received.contains(id.as_str()))
    }

    fn live_tally(&self, expected: &BTreeMap<String, i64>) -> Tally {
        delivery::tally(expected, &self.received)
    }

    fn outcome(&self, live: Tally, history: Tally) -> SideOutcome {
        SideOutcome {
            user: self.name.clone(),
            sent: self.sent.len(),
            stored: self.stored.len(),
            refused: self.refused.clone(),
            live,
            history,
        }
    }
}

/// Listens on every user in turn until each send is answered and each user has received
/// every message stored, or [`SETTLE_WITHIN`] passed; then [`QUIET`] more on each.
fn settle(users: &mut [&mut User]) -> Result<()> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        let everything = stored(&users.iter().map(|user| &**user).collect::<Vec<_>>());
        let done = users
            .iter()
            .all(|user| user.answered() && user.has_all(&everything));
        if done || Instant::now() >= deadline {
            break;
        }
        if interrupted() {
            bail!("interrupted");
        }
        for user in users.iter_mut() {
            user.listen(Duration::from_millis(100))?;
        }
    }
    for user in users.iter_mut() {
        user.listen(QUIET)?;
    }
    Ok(())
}

/// Every message the users stored: client message id → sequence number.
fn stored(users: &[&User]) -> BTreeMap<String, i64> {
    users
        .iter()
        .flat_map(|user| user.stored.iter().map(|(id, seq)| (id.clone(), *seq)))
        .collect()
}

/// A WebSocket to `node`, which must be the node expected there.
fn connect(node: &NodeAt, session: &Session) -> Result<Client> {
    let socket = Client::connect(node.addr, session)?;
    if socket.node != node.node_id {
        bail!(
            "{} answers as node {}, not {}",
            node.addr,
            socket.node,
            node.node_id
        );
    }
    Ok(socket)
}

/// A public room created by the old node's user on the old node, joined by the other on the
/// new node.
fn shared_room(
    old: SocketAddr,
    owner: &Session,
    new: SocketAddr,
    other: &Session,
) -> Result<RoomId> {
    let create = CreateRoomRequest {
        name: "upgrade check".to_owned(),
        visibility: RoomKind::Public,
    };
    let (status, body) = smoke::http(old, "POST", "/api/rooms", Some(owner), Some(&create))?;
    if status != 201 {
        bail!("creating the room on {old}: HTTP {status}: {body}");
    }
    let room = serde_json::from_str::<Room>(&body)?.room_id;
    let path = format!("/api/rooms/{}/join", room.0);
    let (status, body) = smoke::http::<()>(new, "POST", &path, Some(other), None)?;
    if status != 200 {
        bail!(
            "{} joining the room on {new}: HTTP {status}: {body}",
            other.username
        );
    }
    Ok(room)
}

/// The room's whole history as `session`'s user reads it from `node`, page after page.
fn history(node: SocketAddr, session: &Session, room: RoomId) -> Result<Vec<Received>> {
    let mut messages: Vec<Received> = Vec::new();
    loop {
        let after = messages.last().map_or(0, |message| message.seq);
        let path = format!(
            "/api/rooms/{}/messages?after={after}&limit={HISTORY_PAGE}",
            room.0
        );
        let (status, body) = smoke::http::<()>(node, "GET", &path, Some(session), None)?;
        if status != 200 {
            bail!("GET {path} on {node}: HTTP {status}: {body}");
        }
        let page: MessagePage = serde_json::from_str(&body)
            .with_context(|| format!("GET {path} on {node}: unexpected answer {body}"))?;
        let full = page.messages.len() >= HISTORY_PAGE;
        messages.extend(page.messages.into_iter().map(|message| Received {
            seq: message.seq.0,
            id: message.client_msg_id.0,
        }));
        if !full {
            return Ok(messages);
        }
        if messages.last().map_or(0, |message| message.seq) <= after {
            bail!("GET {path} on {node}: a full page that does not go past {after}");
        }
    }
}
