//! The `rooms` workload: U users in R rooms of M members, members of each room spread over the
//! nodes, every user sending at a fixed rate or as fast as a window of unacknowledged sends
//! allows (saturation).

use crate::conn::Socket;
use crate::host::HostMeter;
use crate::identity::{self, JoinedRoom, Session};
use crate::procstat::CpuMeter;
use crate::report::{self, RunReport};
use crate::stages;
use crate::stats::{now_micros, Recorder, RoomView, Samples};
use crate::Target;
use anyhow::Context;
use chat_protocol::{ClientFrame, ClientMsgId, RoomId};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt, TryStreamExt};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The fields of a server frame this workload reads, taken from the text as it is: `type`, the
/// room, the sequence number, the client message id and the body. The frames are
/// `ServerFrame`s; decoding them whole (an internally tagged enum, which serde first copies into
/// a tree of owned values) was about a fifth of this tool's CPU at saturation, CPU the nodes
/// share. The test below keeps the two in step.
#[derive(Debug, serde::Deserialize)]
struct Probe<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    room_id: Option<RoomId>,
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default, borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    body: Option<Cow<'a, str>>,
}

/// How fast users send.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub enum Pace {
    /// This many messages per second in total, spread evenly over the users.
    Rate(f64),
    /// Each user keeps this many sends waiting for `accepted`, no more (saturation).
    Window(usize),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomsConfig {
    pub users: usize,
    pub rooms: usize,
    pub members: usize,
    pub pace: Pace,
    /// How long users send.
    pub duration: Duration,
    /// Longest wait after sending stops for the last acks and deliveries.
    pub drain: Duration,
    pub body_bytes: usize,
    /// Sign-ins and joins in flight at once during set-up.
    pub setup_concurrency: usize,
    /// Accounts the users are drawn from (user i is account i mod this). Signing up hashes a
    /// password with argon2, slow and memory-hungry on purpose; the members of a room are
    /// distinct accounts as long as `members` ≤ `accounts`.
    pub accounts: usize,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            users: 1_000,
            rooms: 100,
            members: 10,
            pace: Pace::Rate(2_000.0),
            duration: Duration::from_secs(10),
            drain: Duration::from_secs(15),
            body_bytes: 64,
            setup_concurrency: 64,
            accounts: 200,
        }
    }
}

/// A signed-in user with its rooms (index in the run, id, sequence number at join).
struct Member {
    index: usize,
    node: usize,
    session: Session,
    rooms: Vec<(usize, JoinedRoom)>,
}

/// What a user's task saw, handed back when the run ends.
struct Outcome {
    views: Vec<(usize, RoomView)>,
    highest_stored: Vec<(usize, i64)>,
}

/// Runs the workload and reports on it. `label` names the run in reports and tables.
pub async fn run_rooms(
    target: &Target,
    config: &RoomsConfig,
    label: &str,
) -> anyhow::Result<RunReport> {
    anyhow::ensure!(!target.nodes.is_empty(), "no node to load");
    anyhow::ensure!(
        config.members <= config.users && config.members > 0,
        "a room cannot have more members than there are users"
    );
    let run = crate::run_id();
    let members = set_up(target, config, &run).await?;

    let recorder = Arc::new(Recorder::new());
    let stop = CancellationToken::new();
    let stages_before = stages::snapshot(&target.nodes).await;
    let started = Instant::now();
    let send_until = started + config.duration;
    let cpu = CpuMeter::start(target.watched());
    let host = HostMeter::start();
    let room_of_index: HashMap<RoomId, usize> = members
        .iter()
        .flat_map(|member| member.rooms.iter().map(|(r, joined)| (joined.room_id, *r)))
        .collect();
    let room_of_index = Arc::new(room_of_index);
    let tasks: Vec<_> = members
        .into_iter()
        .map(|member| {
            let user = UserLoop {
                node: member.node,
                rooms: member
                    .rooms
                    .iter()
                    .map(|(r, joined)| (*r, joined.room_id))
                    .collect(),
                views: member
                    .rooms
                    .iter()
                    .map(|(r, joined)| (*r, RoomView::new(joined.last_seq.0)))
                    .collect(),
                recorder: recorder.clone(),
                room_of_index: room_of_index.clone(),
                pending: HashMap::new(),
                highest_stored: HashMap::new(),
                samples: Samples::default(),
                body_padding: "x".repeat(config.body_bytes.saturating_sub(24).max(1)),
                id_prefix: format!("{run}-{}-", member.index),
            };
            let first_send = started
                + match config.pace {
                    Pace::Rate(rate) => {
                        user_period(config, rate).mul_f64(member.index as f64 / config.users as f64)
                    }
                    Pace::Window(_) => Duration::ZERO,
                };
            tokio::spawn(user.run(
                member.session.socket,
                config.clone(),
                first_send,
                send_until,
                stop.clone(),
            ))
        })
        .collect();

    let progress = report::progress_bar(target.progress, config.duration, label);
    let (at_deadline, stage_seconds) = tokio::join!(
        report::follow_progress(&progress, &recorder, send_until),
        stages::follow(&target.nodes, started, send_until)
    );
    let cpu = cpu.finish();
    let host = host.finish();
    let drained = wait_drained(&recorder, config).await;
    progress.finish_and_clear();
    stop.cancel();
    let stages = stages::snapshot(&target.nodes).await.since(&stages_before);

    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.context("a user task failed")?);
    }
    let mut checks = report::SequenceChecks::default();
    let mut final_seq: HashMap<usize, i64> = HashMap::new();
    for outcome in &outcomes {
        for &(room, seq) in &outcome.highest_stored {
            let entry = final_seq.entry(room).or_default();
            *entry = (*entry).max(seq);
        }
        for (room, view) in &outcome.views {
            let entry = final_seq.entry(*room).or_default();
            *entry = (*entry).max(view.highest);
        }
    }
    for outcome in &outcomes {
        for (room, view) in &outcome.views {
            checks.add(view, final_seq.get(room).copied().unwrap_or_default());
        }
    }
    let totals = recorder.counters.snapshot();
    checks.unconfirmed = totals
        .sent
        .saturating_sub(totals.refused)
        .saturating_sub(totals.stored);
    let mut report = RunReport::new(
        label,
        "rooms",
        serde_json::to_value(config)?,
        config.duration,
        at_deadline,
        totals,
        &recorder,
        checks,
        cpu,
        drained,
    );
    report.stages = stages;
    report.stage_seconds = stage_seconds;
    report.host = Some(host);
    Ok(report)
}

fn user_period(config: &RoomsConfig, rate: f64) -> Duration {
    Duration::from_secs_f64(config.users as f64 / rate.max(0.001))
}

/// Waits until every send is answered, stored and delivered to each member, or the drain
/// time is over. Returns whether everything arrived.
async fn wait_drained(recorder: &Recorder, config: &RoomsConfig) -> bool {
    let deadline = Instant::now() + config.drain;
    loop {
        let c = recorder.counters.snapshot();
        let answered = c.accepted + c.refused >= c.sent;
        let stored = c.stored >= c.accepted;
        let delivered = c.delivered >= c.stored * config.members as u64;
        if answered && stored && delivered {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Signs every user in on its node and joins its rooms.
async fn set_up(target: &Target, config: &RoomsConfig, run: &str) -> anyhow::Result<Vec<Member>> {
    let mut rooms_of_user: Vec<Vec<usize>> = vec![Vec::new(); config.users];
    for room in 0..config.rooms {
        for k in 0..config.members {
            rooms_of_user[(room * config.members + k) % config.users].push(room);
        }
    }
    let node_count = target.nodes.len();
    let accounts = config.accounts.max(config.members).max(1);
    let dialer = &*target.dialer;
    let mut members: Vec<Member> = futures::stream::iter(rooms_of_user.into_iter().enumerate())
        .map(|(index, rooms)| {
            let node = index % node_count;
            let addr = target.nodes[node].addr;
            async move {
                let mut session = identity::sign_in(
                    dialer,
                    &target.accounts,
                    addr,
                    &format!("load-u{}", index % accounts),
                )
                .await?;
                let mut joined = Vec::with_capacity(rooms.len());
                for room in rooms {
                    let room_name = format!("{run}-r{room}");
                    let room = (
                        room,
                        identity::join(dialer, &mut session, &room_name).await?,
                    );
                    joined.push(room);
                }
                anyhow::Ok(Member {
                    index,
                    node,
                    session,
                    rooms: joined,
                })
            }
        })
        .buffer_unordered(config.setup_concurrency.max(1))
        .try_collect()
        .await?;
    members.sort_by_key(|member| member.index);
    Ok(members)
}

/// One user's connection during the run: sends at its pace and checks what it receives.
struct UserLoop {
    node: usize,
    rooms: Vec<(usize, RoomId)>,
    views: Vec<(usize, RoomView)>,
    recorder: Arc<Recorder>,
    room_of_index: Arc<HashMap<RoomId, usize>>,
    /// Sends waiting for `accepted`: message number → sent at (µs).
    pending: HashMap<u64, u64>,
    highest_stored: HashMap<usize, i64>,
    samples: Samples,
    body_padding: String,
    /// Starts every client message id: accounts are reused across runs, and a reused id
    /// would be taken for a resend.
    id_prefix: String,
}

impl UserLoop {
    async fn run(
        mut self,
        socket: Socket,
        config: RoomsConfig,
        first_send: Instant,
        send_until: Instant,
        stop: CancellationToken,
    ) -> Outcome {
        let (mut sink, mut stream) = socket.split();
        let mut next_send = first_send;
        let mut number: u64 = 0;
        // Made once (the timer reset after each send), not anew for every frame received, which
        // registered and dropped a timer, and a waiter on the token all users share, per frame.
        let stopped = stop.cancelled();
        let send_timer = tokio::time::sleep_until(next_send);
        tokio::pin!(stopped, send_timer);
        // Whether sending time is left; the clock is read when a send is due, not per frame.
        let mut sending = true;
        loop {
            let (rate_send, window_send) = match config.pace {
                Pace::Rate(_) => (sending, false),
                Pace::Window(window) => (false, sending && self.pending.len() < window),
            };
            // Frames first, and the stop token last: a frame that is ready is taken without
            // polling the others (the token's check takes a lock). The stop comes once traffic
            // has ended, when nothing else is ready.
            tokio::select! {
                biased;
                message = stream.next() => match message {
                    Some(Ok(Message::Text(text))) => self.receive(&text),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                _ = &mut send_timer, if rate_send => {
                    if Instant::now() >= send_until {
                        sending = false;
                        continue;
                    }
                    if let Pace::Rate(rate) = config.pace {
                        next_send += user_period(&config, rate);
                        send_timer.as_mut().reset(next_send);
                    }
                    if self.send(&mut sink, &mut number, 1).await.is_err() {
                        break;
                    }
                }
                _ = std::future::ready(()), if window_send => {
                    if Instant::now() >= send_until {
                        sending = false;
                        continue;
                    }
                    let room = match config.pace { Pace::Window(w) => w, Pace::Rate(_) => 1 };
                    let count = room.saturating_sub(self.pending.len()).max(1);
                    if self.send(&mut sink, &mut number, count).await.is_err() {
                        break;
                    }
                }
                _ = &mut stopped => break,
            }
        }
        self.samples.flush(&self.recorder);
        let _ = sink.close().await;
        drop(stream);
        Outcome {
            views: self.views,
            highest_stored: self.highest_stored.into_iter().collect(),
        }
    }

    async fn send(
        &mut self,
        sink: &mut SplitSink<Socket, Message>,
        number: &mut u64,
        count: usize,
    ) -> anyhow::Result<()> {
        for _ in 0..count {
            *number += 1;
            let room_id = self.rooms[(*number as usize) % self.rooms.len()].1;
            let sent_at = now_micros();
            let frame = ClientFrame::Send {
                room_id,
                client_msg_id: ClientMsgId(format!("{}{number}", self.id_prefix)),
                body: format!("{sent_at}:{}:{}", self.node, self.body_padding),
            };
            self.pending.insert(*number, sent_at);
            sink.feed(Message::text(serde_json::to_string(&frame)?))
                .await?;
            self.recorder.counters.sent.fetch_add(1, Relaxed);
        }
        sink.flush().await?;
        Ok(())
    }

    fn receive(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Probe>(text) else {
            return;
        };
        let recorder = self.recorder.clone();
        let counters = &recorder.counters;
        match frame.kind.as_ref() {
            "accepted" => {
                if let Some(sent_at) = frame.client_msg_id.and_then(|id| self.take_pending(&id)) {
                    counters.accepted.fetch_add(1, Relaxed);
                    let now = now_micros();
                    self.samples.accept(now.saturating_sub(sent_at));
                    self.samples.maybe_flush(&recorder, now);
                }
            }
            "error"
                if frame
                    .client_msg_id
                    .is_some_and(|id| self.take_pending(&id).is_some()) =>
            {
                counters.refused.fetch_add(1, Relaxed);
            }
            "stored" => {
                counters.stored.fetch_add(1, Relaxed);
                let (Some(room_id), Some(seq)) = (frame.room_id, frame.seq) else {
                    return;
                };
                if let Some(&room) = self.room_of_index.get(&room_id) {
                    let highest = self.highest_stored.entry(room).or_default();
                    *highest = (*highest).max(seq);
                }
            }
            "message" => {
                counters.delivered.fetch_add(1, Relaxed);
                let now = now_micros();
                let mut parts = frame.body.as_deref().unwrap_or_default().splitn(3, ':');
                let sent_at = parts.next().and_then(|p| p.parse::<u64>().ok());
                let sender_node = parts.next().and_then(|p| p.parse::<usize>().ok());
                if let Some(sent_at) = sent_at {
                    let remote = sender_node != Some(self.node);
                    self.samples
                        .deliver(now, now.saturating_sub(sent_at), remote);
                    self.samples.maybe_flush(&recorder, now);
                }
                let (Some(room_id), Some(seq)) = (frame.room_id, frame.seq) else {
                    return;
                };
                if let Some(&room) = self.room_of_index.get(&room_id) {
                    if let Some((_, view)) = self.views.iter_mut().find(|(r, _)| *r == room) {
                        view.record(seq);
                    }
                }
            }
            _ => {}
        }
    }

    fn take_pending(&mut self, client_msg_id: &str) -> Option<u64> {
        let number = client_msg_id
            .strip_prefix(&self.id_prefix)?
            .parse::<u64>()
            .ok()?;
        self.pending.remove(&number)
    }
}

#[cfg(test)]
mod tests {
    use super::Probe;
    use chat_protocol::{ChatMessage, ClientMsgId, ErrorCode, RoomId, Seq, ServerFrame, UserId};

    fn probe(
        frame: &ServerFrame,
    ) -> (
        String,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<String>,
    ) {
        let text = serde_json::to_string(frame).unwrap_or_default();
        let probe: Probe = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (
            probe.kind.into_owned(),
            probe.room_id.map(|room| room.0),
            probe.seq,
            probe.client_msg_id.map(|id| id.into_owned()),
            probe.body.map(|body| body.into_owned()),
        )
    }

    #[test]
    fn the_probe_reads_what_the_workload_needs_from_real_frames() {
        let message = ServerFrame::Message(ChatMessage {
            room_id: RoomId(7),
            seq: Seq(42),
            sender_id: UserId(3),
            sender_name: "ada \"the\" sender".into(),
            client_msg_id: ClientMsgId("u1-9".into()),
            body: "1796019394000000:1:padding with \"quotes\"".into(),
            sent_at_ms: 1_796_019_394_000,
            edited_at_ms: None,
            deleted: false,
        });
        assert_eq!(
            probe(&message),
            (
                "message".into(),
                Some(7),
                Some(42),
                Some("u1-9".into()),
                Some("1796019394000000:1:padding with \"quotes\"".into())
            )
        );
        let accepted = ServerFrame::Accepted {
            room_id: RoomId(7),
            client_msg_id: ClientMsgId("u1-10".into()),
        };
        assert_eq!(
            probe(&accepted),
            ("accepted".into(), Some(7), None, Some("u1-10".into()), None)
        );
        let stored = ServerFrame::Stored {
            room_id: RoomId(7),
            client_msg_id: ClientMsgId("u1-10".into()),
            seq: Seq(43),
            duplicate: false,
        };
        assert_eq!(
            probe(&stored),
            (
                "stored".into(),
                Some(7),
                Some(43),
                Some("u1-10".into()),
                None
            )
        );
        let refused = ServerFrame::Error {
            code: ErrorCode::BadJson,
            message: "no".into(),
            client_msg_id: Some(ClientMsgId("u1-11".into())),
            retry_after_ms: None,
        };
        assert_eq!(
            probe(&refused),
            ("error".into(), None, None, Some("u1-11".into()), None)
        );
    }
}
