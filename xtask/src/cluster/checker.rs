//! The delivery checker of `cargo xtask chaos`, in the spirit of Jepsen's queue checkers.
//!
//! Users connect through the load balancer, each from one of a few source addresses (so that
//! per-address limits see several clients), join their group's rooms and send at a steady rate,
//! each on a thread of its own. Every send, every `accepted`, `stored` and refusal, and every
//! message delivered to every member is recorded. A member whose connection drops reconnects
//! through the balancer and resumes each room after the last sequence number it saw; a resume
//! answered incomplete (too much missed) is made up from the history over REST, as the protocol
//! tells clients to do. When the
//! load ends the checker waits until the store is quiet and every member has caught up, then
//! checks the record against PostgreSQL: each accepted message stored exactly once, each room's
//! sequence gapless, each member given every sequence number of its rooms once and in order.

use super::smoke::{connect_from, http_from, sign_in_from, Session};
use anyhow::{bail, Context, Result};
use chat_protocol::api::MessagePage;
use chat_protocol::{ClientFrame, ClientMsgId, RoomId, Seq, ServerFrame};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How long one connection attempt, or the catch-up after the load, may take.
const PATIENCE: Duration = Duration::from_secs(30);
/// Between reconnection attempts.
const RETRY: Duration = Duration::from_millis(200);

/// One run's load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Messages per second over all users.
    pub rate: f64,
    pub duration: Duration,
}

/// What a run's record shows.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub sent: usize,
    pub accepted: usize,
    /// Sends answered with an error (`unavailable` while a broker is away, say).
    pub refused: usize,
    /// Sends whose connection dropped before any answer: stored or not, never counted lost.
    pub unanswered: usize,
    pub stored: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Deliveries out of order, twice, or past a hole, over every member and room.
    pub reordered: usize,
    pub missing_at_members: usize,
    pub reconnects: usize,
    /// Why the nodes closed members' connections: close code and count (`none` for a connection
    /// that broke without a close frame).
    pub closes: BTreeMap<String, usize>,
    /// Resumes answered `complete: false`, whose missed messages were read over REST.
    pub reloads: usize,
    /// Disconnection to every room resumed, per reconnect.
    pub reconnect_p50: Duration,
    pub reconnect_p99: Duration,
    /// The slowest send to its delivery back to the sender.
    pub worst_latency: Duration,
    /// From the fault to the first send from which on every send was delivered back within a
    /// second (zero when none took longer); `None` when the last ones still did.
    pub steady_after: Option<Duration>,
}

impl Report {
    pub fn holds(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.missing_at_members == 0
    }
}

/// Everything one member saw.
#[derive(Default)]
struct Record {
    /// The member's rooms.
    rooms: Vec<RoomId>,
    sent: HashMap<String, Instant>,
    accepted: HashSet<String>,
    refused: HashMap<String, String>,
    /// Per room, the sequence numbers delivered, in arrival order.
    delivered: BTreeMap<RoomId, Vec<i64>>,
    /// Own messages: when each came back.
    latencies: Vec<(Instant, Duration)>,
    reconnects: Vec<Duration>,
    closes: BTreeMap<String, usize>,
    reloads: usize,
}

/// Signs in `users` users named `<prefix>-<n>` (registered on first use), spread over the
/// `sources` addresses (this machine's own when empty).
pub fn sign_in_users(
    balancer: SocketAddr,
    prefix: &str,
    users: usize,
    sources: &[Ipv4Addr],
) -> Result<Vec<Session>> {
    (0..users)
        .map(|n| {
            let source = (!sources.is_empty()).then(|| sources[n % sources.len()]);
            sign_in_from(source, balancer, &format!("{prefix}-{n}"))
        })
        .collect()
}

/// Runs `load` from `sessions`, each a member of its `rooms_of` (and sending round robin in
/// them), then checks the record against the store (`stored`: each room's (seq, client message
/// id) in sequence order). `fault_at` is when the caller's fault starts, for the time to steady
/// state.
pub fn run(
    balancer: SocketAddr,
    sessions: &[Session],
    rooms_of: &[Vec<RoomId>],
    load: Load,
    fault_at: Instant,
    stored: impl Fn(&[RoomId]) -> Result<BTreeMap<RoomId, Vec<(i64, String)>>>,
) -> Result<Report> {
    // Everyone connected before anyone sends.
    let ready = Arc::new(Barrier::new(sessions.len() + 1));
    let targets: Arc<Mutex<Option<BTreeMap<RoomId, i64>>>> = Arc::new(Mutex::new(None));
    let interval = Duration::from_secs_f64(sessions.len() as f64 / load.rate.max(0.1));
    let rooms: Vec<RoomId> = rooms_of
        .iter()
        .flatten()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let rooms = rooms.as_slice();
    let mut members = Vec::new();
    for (index, session) in sessions.iter().enumerate() {
        let member = Member {
            balancer,
            source: session.source,
            token: session.token.clone(),
            name: session.username.clone(),
            rooms: rooms_of
                .get(index)
                .cloned()
                .context("a user without rooms")?,
            interval,
            // Spread over one interval, so the users do not send in step.
            offset: interval.mul_f64(index as f64 / sessions.len() as f64),
            duration: load.duration,
            ready: ready.clone(),
            targets: targets.clone(),
        };
        members.push(std::thread::spawn(move || member.run()));
    }

    ready.wait();
    // The load ends; wait until everything accepted is stored and the store is quiet.
    std::thread::sleep(load.duration);
    let quiet_deadline = Instant::now() + PATIENCE;
    let mut last_total = usize::MAX;
    let final_rows = loop {
        std::thread::sleep(Duration::from_secs(1));
        let rows = stored(rooms)?;
        let total = rows.values().map(Vec::len).sum::<usize>();
        if total == last_total {
            break rows;
        }
        if Instant::now() > quiet_deadline {
            bail!("the store was still growing {PATIENCE:?} after the load ended");
        }
        last_total = total;
    };
    let last_seqs: BTreeMap<RoomId, i64> = rooms
        .iter()
        .map(|room| {
            let last = final_rows
                .get(room)
                .and_then(|rows| rows.last())
                .map_or(0, |(seq, _)| *seq);
            (*room, last)
        })
        .collect();
    if let Ok(mut slot) = targets.lock() {
        *slot = Some(last_seqs.clone());
    }
    let mut records = Vec::new();
    for member in members {
        match member.join() {
            Ok(record) => records.push(record?),
            Err(_) => bail!("a member's thread panicked"),
        }
    }
    Ok(check(&records, &final_rows, &last_seqs, fault_at))
}

fn check(
    records: &[Record],
    rows: &BTreeMap<RoomId, Vec<(i64, String)>>,
    last_seqs: &BTreeMap<RoomId, i64>,
    fault_at: Instant,
) -> Report {
    let mut report = Report::default();
    let mut stored_ids: HashMap<&str, usize> = HashMap::new();
    for room_rows in rows.values() {
        report.stored += room_rows.len();
        for (index, (seq, id)) in room_rows.iter().enumerate() {
            *stored_ids.entry(id.as_str()).or_default() += 1;
            if *seq != index as i64 + 1 {
                report.reordered += 1;
            }
        }
    }
    report.duplicated = stored_ids.values().filter(|count| **count > 1).count();
    let mut reconnects = Vec::new();
    let mut latencies: Vec<(Instant, Duration)> = Vec::new();
    for record in records {
        report.sent += record.sent.len();
        report.accepted += record.accepted.len();
        report.refused += record.refused.len();
        report.unanswered += record
            .sent
            .keys()
            .filter(|id| !record.accepted.contains(*id) && !record.refused.contains_key(*id))
            .count();
        report.lost += record
            .accepted
            .iter()
            .filter(|id| !stored_ids.contains_key(id.as_str()))
            .count();
        for room in &record.rooms {
            let last = last_seqs.get(room).copied().unwrap_or(0);
            let seen = record.delivered.get(room).map(Vec::as_slice).unwrap_or(&[]);
            let mut expected = 1;
            for seq in seen {
                if *seq != expected {
                    report.reordered += 1;
                }
                expected = seq + 1;
            }
            let distinct: HashSet<&i64> = seen.iter().collect();
            report.missing_at_members += (1..=last).filter(|seq| !distinct.contains(seq)).count();
        }
        reconnects.extend(record.reconnects.iter().copied());
        for (code, count) in &record.closes {
            *report.closes.entry(code.clone()).or_default() += count;
        }
        report.reloads += record.reloads;
        latencies.extend(record.latencies.iter().copied());
    }
    report.reconnects = reconnects.len();
    reconnects.sort();
    report.reconnect_p50 = percentile(&reconnects, 0.5);
    report.reconnect_p99 = percentile(&reconnects, 0.99);
    report.worst_latency = latencies.iter().map(|(_, d)| *d).max().unwrap_or_default();
    latencies.sort_by_key(|(sent, _)| *sent);
    // From the fault to the first send from which on every send came back within a second.
    let after: Vec<&(Instant, Duration)> = latencies
        .iter()
        .filter(|(sent, _)| *sent > fault_at)
        .collect();
    report.steady_after = match after
        .iter()
        .rposition(|(_, latency)| *latency >= Duration::from_secs(1))
    {
        None => Some(Duration::ZERO),
        Some(slow) => after
            .get(slow + 1)
            .and_then(|(sent, _)| sent.checked_duration_since(fault_at)),
    };
    report
}

fn percentile(sorted: &[Duration], at: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * at).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

struct Member {
    balancer: SocketAddr,
    source: Option<Ipv4Addr>,
    token: String,
    name: String,
    rooms: Vec<RoomId>,
    interval: Duration,
    /// From the start of the load to this member's first send.
    offset: Duration,
    duration: Duration,
    ready: Arc<Barrier>,
    /// Each room's last sequence number once the load is over: read until reached.
    targets: Arc<Mutex<Option<BTreeMap<RoomId, i64>>>>,
}

impl Member {
    fn run(self) -> Result<Record> {
        let mut record = Record {
            rooms: self.rooms.clone(),
            ..Record::default()
        };
        let mut last: BTreeMap<RoomId, i64> = self.rooms.iter().map(|room| (*room, 0)).collect();
        let first = self.connect(&mut record, &mut last);
        self.ready.wait();
        let mut socket = Some(first?);
        let started = Instant::now();
        let send_until = started + self.duration;
        let mut next_send = started + self.offset;
        let mut sent = 0_usize;
        let mut disconnected_at: Option<Instant> = None;
        let mut caught_up_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            // Done once the load is over and every room is read to the end.
            if let Some(targets) = self.targets.lock().ok().and_then(|slot| slot.clone()) {
                let deadline = *caught_up_deadline.get_or_insert(now + PATIENCE);
                let done = self.rooms.iter().all(|room| {
                    last.get(room).copied().unwrap_or(0) >= targets.get(room).copied().unwrap_or(0)
                });
                if done || now > deadline {
                    break;
                }
            }
            let Some(ws) = socket.as_mut() else {
                match self.connect(&mut record, &mut last) {
                    Ok(ws) => {
                        if let Some(at) = disconnected_at.take() {
                            record.reconnects.push(at.elapsed());
                        }
                        socket = Some(ws);
                    }
                    Err(_) => std::thread::sleep(RETRY),
                }
                continue;
            };
            if now >= next_send && now < send_until {
                let room = self.rooms[sent % self.rooms.len()];
                // A sender's ids are unique over all its messages, not per room: the rooms'
                // first id makes them unique over runs.
                let id = format!("{}-r{}-{sent}", self.name, self.rooms[0].0);
                let frame = ClientFrame::Send {
                    room_id: room,
                    client_msg_id: ClientMsgId(id.clone()),
                    body: id.clone(),
                };
                sent += 1;
                next_send += self.interval;
                if send(ws, &frame).is_err() {
                    *record.closes.entry("none".to_owned()).or_default() += 1;
                    socket = None;
                    disconnected_at = Some(Instant::now());
                    continue;
                }
                record.sent.insert(id, Instant::now());
            }
            match ws.read() {
                Ok(Message::Text(text)) => {
                    if let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) {
                        self.observe(frame, &mut record, &mut last);
                    }
                }
                Ok(Message::Close(close)) => {
                    let code =
                        close.map_or_else(|| "none".to_owned(), |c| u16::from(c.code).to_string());
                    *record.closes.entry(code).or_default() += 1;
                    socket = None;
                    disconnected_at = Some(Instant::now());
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => {
                    *record.closes.entry("none".to_owned()).or_default() += 1;
                    socket = None;
                    disconnected_at = Some(Instant::now());
                }
            }
        }
        Ok(record)
    }

    fn observe(&self, frame: ServerFrame, record: &mut Record, last: &mut BTreeMap<RoomId, i64>) {
        match frame {
            ServerFrame::Accepted { client_msg_id, .. } => {
                record.accepted.insert(client_msg_id.0);
            }
            ServerFrame::Error {
                code,
                client_msg_id: Some(id),
                ..
            } => {
                record.refused.insert(id.0, format!("{code:?}"));
            }
            ServerFrame::Message(message) => {
                self.delivered(
                    message.room_id,
                    message.seq.0,
                    &message.client_msg_id.0,
                    record,
                    last,
                );
            }
            ServerFrame::Joined {
                room_id,
                last_seq,
                resume: Some(resume),
                ..
            } if !resume.complete => {
                // The live stream starts after `last_seq`: read the missed ones before it.
                record.reloads += 1;
                if let Err(error) = self.reload(room_id, resume.after.0, last_seq.0, record, last) {
                    eprintln!("{}: reloading room {}: {error:#}", self.name, room_id.0);
                }
            }
            _ => {}
        }
    }

    fn delivered(
        &self,
        room: RoomId,
        seq: i64,
        client_msg_id: &str,
        record: &mut Record,
        last: &mut BTreeMap<RoomId, i64>,
    ) {
        record.delivered.entry(room).or_default().push(seq);
        if let Some(last) = last.get_mut(&room) {
            *last = (*last).max(seq);
        }
        if let Some(sent) = record.sent.get(client_msg_id) {
            record.latencies.push((*sent, sent.elapsed()));
        }
    }

    /// The messages of `room` after `after` up to `until`, from the history over REST.
    fn reload(
        &self,
        room: RoomId,
        mut after: i64,
        until: i64,
        record: &mut Record,
        last: &mut BTreeMap<RoomId, i64>,
    ) -> Result<()> {
        while after < until {
            let path = format!("/api/rooms/{}/messages?after={after}&limit=200", room.0);
            let (status, body) = http_from::<()>(
                self.source,
                self.balancer,
                "GET",
                &path,
                Some(&self.token),
                None,
            )?;
            if status != 200 {
                bail!("GET {path}: HTTP {status}: {body}");
            }
            let page: MessagePage = serde_json::from_str(&body).context("a history page")?;
            let Some(newest) = page.messages.last().map(|message| message.seq.0) else {
                bail!("GET {path}: no messages up to {until}");
            };
            for message in page
                .messages
                .iter()
                .filter(|message| message.seq.0 <= until)
            {
                self.delivered(room, message.seq.0, &message.client_msg_id.0, record, last);
            }
            after = newest;
        }
        Ok(())
    }

    /// A WebSocket through the balancer with every room joined and resumed after the last
    /// sequence number seen in it (0 at first: anything stored before the join is caught up
    /// too). Frames read meanwhile are recorded.
    fn connect(
        &self,
        record: &mut Record,
        last: &mut BTreeMap<RoomId, i64>,
    ) -> Result<WebSocket<MaybeTlsStream<TcpStream>>> {
        let mut request = format!("ws://{}/ws", self.balancer).into_client_request()?;
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {}", self.token).parse()?);
        let stream = connect_from(self.source, self.balancer, PATIENCE)?;
        // Long enough for the handshake and the joins; short once sends must go out on time.
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_nodelay(true)?;
        let (mut ws, _) = tungstenite::client(request, MaybeTlsStream::Plain(stream))
            .map_err(|e| anyhow::anyhow!("WebSocket handshake: {e}"))?;
        for room in &self.rooms {
            let after = Some(Seq(last.get(room).copied().unwrap_or(0)));
            send(
                &mut ws,
                &ClientFrame::Join {
                    room_id: *room,
                    after,
                },
            )?;
        }
        let mut joined = HashSet::new();
        let deadline = Instant::now() + PATIENCE;
        while joined.len() < self.rooms.len() {
            if Instant::now() > deadline {
                bail!("{}: not joined within {PATIENCE:?}", self.name);
            }
            match ws.read() {
                Ok(Message::Text(text)) => match serde_json::from_str::<ServerFrame>(&text) {
                    Ok(frame @ ServerFrame::Joined { room_id, .. }) => {
                        joined.insert(room_id);
                        self.observe(frame, record, last);
                    }
                    Ok(ServerFrame::Error {
                        code,
                        message,
                        client_msg_id: None,
                        ..
                    }) => bail!("{}: join refused: {code:?} {message}", self.name),
                    Ok(frame) => self.observe(frame, record, last),
                    Err(_) => {}
                },
                Ok(Message::Close(close)) => {
                    bail!("{}: closed while joining: {close:?}", self.name)
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("reading while joining"),
            }
        }
        if let MaybeTlsStream::Plain(stream) = ws.get_ref() {
            stream.set_read_timeout(Some(Duration::from_millis(5)))?;
        }
        Ok(ws)
    }
}

fn send(ws: &mut WebSocket<MaybeTlsStream<TcpStream>>, frame: &ClientFrame) -> Result<()> {
    ws.send(Message::text(serde_json::to_string(frame)?))
        .context("cannot send a frame")
}
