//! The `storm` workload: N clients on one node, in rooms that also have an observer on a
//! surviving node, sending at a modest rate; the node is killed (SIGKILL) and every client
//! reconnects to a surviving node, signs in again and resumes its room (`join` with `after`, the
//! last sequence number it saw), then sends again, with the same ids, what the dead node never
//! answered.
//!
//! Measured: time from the kill until each client has resumed; what the observers (whose node
//! did not die) saw, by sequence number; what each client saw from its first join to the end,
//! across the kill (every sequence number once, in order); and, with a database URL, that every
//! send answered `accepted` is stored.

use crate::conn::Socket;
use crate::database::stored_messages;
use crate::host::HostMeter;
use crate::identity::{self, Account, JoinedRoom};
use crate::procstat::CpuMeter;
use crate::report::{self, RunReport, SequenceChecks};
use crate::stats::{now_micros, Recorder, RoomView, Samples};
use crate::Target;
use anyhow::{bail, Context};
use chat_protocol::{ClientFrame, ClientMsgId, RoomId, Seq, ServerFrame, UserId};
use futures::{SinkExt, StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Accounts the observers are spread over, at least; and at most this many observers to one
/// (a stock node takes 20 WebSockets of a user).
const OBSERVER_ACCOUNTS: usize = 20;
const OBSERVERS_PER_ACCOUNT: usize = 16;

#[derive(Debug, Clone, serde::Serialize)]
pub struct StormConfig {
    pub clients: usize,
    /// Clients per room (each room also has one observer on the surviving node).
    pub members: usize,
    /// Index of the node to kill; its process id must be known.
    pub victim: usize,
    /// Messages per second, in total, sent by the clients while the run goes on.
    pub rate: f64,
    pub before_kill: Duration,
    pub after_resume: Duration,
    /// Longest wait for every client to resume.
    pub resume_timeout: Duration,
    pub setup_concurrency: usize,
    /// Users the clients are spread over (one connection per client).
    pub accounts: usize,
    /// Index of the node the clients reconnect through (a load balancer); no observer uses it.
    pub reconnect_via: Option<usize>,
    /// `postgres://…` of the nodes' database, to check that every accepted send is stored.
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StormResult {
    pub clients: usize,
    pub resumed: usize,
    /// From the kill until the last client had re-joined its room, in seconds.
    pub all_resumed_s: Option<f64>,
    pub resume_p50_s: f64,
    pub resume_p99_s: f64,
    pub accepted: u64,
    /// Accepted sends not found in PostgreSQL (None without a database URL).
    pub accepted_not_stored: Option<u64>,
    /// Gaps seen by the observers on the surviving node (whose connections never broke).
    pub observers_lost: u64,
    /// Gaps seen by the resumed clients, from their first join to the end, across the kill.
    pub rejoined_lost: u64,
    /// Resumes answered `complete: false` (too much missed to send).
    #[serde(default)]
    pub incomplete_resumes: u64,
    pub reconnect_attempts: u64,
}

struct Shared {
    recorder: Recorder,
    killed_at: AtomicU64,
    resumed: AtomicUsize,
    attempts: AtomicU64,
    /// The highest sequence number each observer (by room) has seen.
    observed: Vec<AtomicI64>,
    /// The highest sequence number each client (by client number) has seen.
    seen: Vec<AtomicI64>,
}

/// How long the readers may take, once the sends stop, to receive everything stored.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

struct ClientOutcome {
    name: String,
    /// Index of the client's room (as for the observers).
    room: usize,
    user_id: UserId,
    accepted: Vec<String>,
    view: RoomView,
    resumed_after: Option<f64>,
    /// The resume answered `complete: false` (too much missed to send).
    incomplete: bool,
    debug_after: Option<i64>,
    debug_joined: Option<i64>,
}

pub async fn run_storm(
    target: &Target,
    config: &StormConfig,
    label: &str,
) -> anyhow::Result<RunReport> {
    let victim = target
        .nodes
        .get(config.victim)
        .context("no such victim node")?;
    let victim_pid = victim
        .pid
        .context("storm needs the victim node's process id")?;
    let survivors: Vec<SocketAddr> = (target.nodes.iter().enumerate())
        .filter(|(i, _)| *i != config.victim && Some(*i) != config.reconnect_via)
        .map(|(_, node)| node.addr)
        .collect();
    anyhow::ensure!(!survivors.is_empty(), "storm needs a second node");
    // Where the clients go after the kill: through the balancer, or to the survivors.
    let reconnect_to: Vec<SocketAddr> = match config.reconnect_via {
        Some(index) => vec![target.nodes.get(index).context("no such node")?.addr],
        None => survivors.clone(),
    };
    let run = crate::run_id();
    let rooms = config.clients.div_ceil(config.members.max(1));
    let room_name = |room: usize| format!("{run}-s{room}");

    let observer_accounts = OBSERVER_ACCOUNTS.max(rooms.div_ceil(OBSERVERS_PER_ACCOUNT));
    // Every socket is read from the moment it has joined: setting up thousands may take longer
    // than a node waits for a silent WebSocket to answer its ping.
    let set_up = CancellationToken::new();
    // Observers first, on the survivors, so they see every message of their room.
    let mut observers = Vec::new();
    let mut room_ids = Vec::new();
    for room in 0..rooms {
        let node = survivors[room % survivors.len()];
        let mut session = identity::sign_in(
            &target.dialer,
            &target.accounts,
            node,
            // Observers share a few accounts: each is still its own connection.
            &format!("load-o{}", room % observer_accounts),
        )
        .await?;
        let joined = identity::join(&target.dialer, &mut session, &room_name(room)).await?;
        room_ids.push(joined.room_id.0);
        observers.push((hold(session, set_up.clone()), joined));
    }
    // Clients share accounts (registering is slow on purpose): one connection each.
    let accounts: Vec<Account> =
        futures::stream::iter(0..config.accounts.clamp(1, config.clients.max(1)))
            .map(|n| {
                let name = format!("load-a{n}");
                async move {
                    identity::sign_up(&target.dialer, &target.accounts, victim.addr, &name).await
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
    let clients: Vec<_> = futures::stream::iter(0..config.clients)
        .map(|n| {
            let name = format!("{run}-c{n}");
            let room = room_name(n % rooms);
            let account = accounts[n % accounts.len()].clone();
            let set_up = set_up.clone();
            async move {
                let mut session = identity::connect(&target.dialer, victim.addr, &account).await?;
                let joined = identity::join(&target.dialer, &mut session, &room).await?;
                let account = session.account.clone();
                anyhow::Ok((n, name, account, hold(session, set_up.clone()), joined))
            }
        })
        .buffer_unordered(config.setup_concurrency.max(1))
        .try_collect()
        .await?;
    set_up.cancel();
    let mut observer_sockets = Vec::new();
    for (held, joined) in observers {
        observer_sockets.push((held.await??, joined));
    }
    let mut client_sockets = Vec::new();
    for (n, name, account, held, joined) in clients {
        client_sockets.push((n, name, account, held.await??, joined));
    }

    let shared = Arc::new(Shared {
        recorder: Recorder::new(),
        killed_at: AtomicU64::new(0),
        resumed: AtomicUsize::new(0),
        attempts: AtomicU64::new(0),
        observed: (0..rooms).map(|_| AtomicI64::new(0)).collect(),
        seen: (0..config.clients).map(|_| AtomicI64::new(0)).collect(),
    });
    let stop = CancellationToken::new();
    let stop_sending = CancellationToken::new();
    let period = Duration::from_secs_f64(config.clients as f64 / config.rate.max(0.001));
    let observer_tasks: Vec<_> = observer_sockets
        .into_iter()
        .enumerate()
        .map(|(room, (socket, joined))| {
            tokio::spawn(observe(room, socket, joined, shared.clone(), stop.clone()))
        })
        .collect();
    let started = Instant::now();
    let cpu = CpuMeter::start(target.watched());
    let host = HostMeter::start();
    let client_tasks: Vec<_> = client_sockets
        .into_iter()
        .map(|(n, name, account, socket, joined)| {
            let first_send = started + period.mul_f64(n as f64 / config.clients.max(1) as f64);
            let client = StormClient {
                number: n,
                name,
                room: n % rooms,
                room_id: joined.room_id,
                survivors: reconnect_to.clone(),
                account,
                shared: shared.clone(),
                period,
                first_send,
            };
            tokio::spawn(client.run(
                target.dialer_handle(),
                socket,
                joined,
                stop_sending.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let bar = report::progress_bar(target.progress, Duration::ZERO, label);
    bar.set_length(config.clients as u64);
    tokio::time::sleep(config.before_kill).await;
    shared.killed_at.store(now_micros(), Relaxed);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .context("cannot kill the victim node")?;
    let resume_deadline = Instant::now() + config.resume_timeout;
    while shared.resumed.load(Relaxed) < config.clients && Instant::now() < resume_deadline {
        bar.set_position(shared.resumed.load(Relaxed) as u64);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bar.finish_and_clear();
    tokio::time::sleep(config.after_resume).await;
    let measured = started.elapsed();
    let at_deadline = shared.recorder.counters.snapshot();
    stop_sending.cancel();
    let cpu = cpu.finish();
    let host = host.finish();
    // The last sends are stored and delivered before the readers stop.
    settle(config.database_url.as_deref(), &room_ids, &shared).await?;
    stop.cancel();

    let mut outcomes = Vec::new();
    for task in client_tasks {
        outcomes.push(task.await?);
    }
    let mut observed = Vec::new();
    for task in observer_tasks {
        observed.push(task.await?);
    }
    let stored = match &config.database_url {
        Some(url) => Some(stored_messages(url, &room_ids).await?),
        None => None,
    };
    let final_seq: HashMap<usize, i64> = observed
        .iter()
        .enumerate()
        .map(|(room, view)| {
            let in_db = stored
                .as_ref()
                .and_then(|s| s.max_seq.get(&room_ids[room]).copied())
                .unwrap_or_default();
            (room, view.highest.max(in_db))
        })
        .collect();
    let mut checks = SequenceChecks::default();
    for (room, view) in observed.iter().enumerate() {
        checks.add(view, final_seq[&room]);
    }
    let observers_lost = checks.lost;
    // Clients finished setting up in any order: each outcome carries its own room.
    for outcome in &outcomes {
        let room_final = final_seq[&outcome.room];
        checks.add(&outcome.view, room_final);
        if std::env::var_os("CHAT_LOAD_DEBUG").is_some()
            && (outcome.view.lost(room_final) > 0 || outcome.view.duplicated > 0)
        {
            eprintln!(
                "client {} room {} first {} dup {} missing {:?} resumed after {:?} got {:?}",
                outcome.name,
                outcome.room,
                outcome.view.first,
                outcome.view.duplicated,
                outcome.view.missing(room_final),
                outcome.debug_after,
                outcome.debug_joined,
            );
        }
    }
    let rejoined_lost = checks.lost - observers_lost;
    let accepted: u64 = outcomes.iter().map(|o| o.accepted.len() as u64).sum();
    let accepted_not_stored = stored.as_ref().map(|stored| {
        outcomes
            .iter()
            .flat_map(|o| o.accepted.iter().map(move |id| (o.user_id.0, id)))
            .filter(|(user, id)| !stored.ids.contains(&(*user, (*id).clone())))
            .count() as u64
    });
    let mut resume_times: Vec<f64> = outcomes.iter().filter_map(|o| o.resumed_after).collect();
    resume_times.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        resume_times
            .get(
                ((resume_times.len() as f64 * q) as usize)
                    .min(resume_times.len().saturating_sub(1)),
            )
            .copied()
            .unwrap_or_default()
    };
    let result = StormResult {
        clients: config.clients,
        resumed: resume_times.len(),
        all_resumed_s: (resume_times.len() == config.clients)
            .then(|| resume_times.last().copied().unwrap_or_default()),
        resume_p50_s: quantile(0.5),
        resume_p99_s: quantile(0.99),
        accepted,
        accepted_not_stored,
        observers_lost,
        rejoined_lost,
        incomplete_resumes: outcomes.iter().filter(|o| o.incomplete).count() as u64,
        reconnect_attempts: shared.attempts.load(Relaxed),
    };
    let totals = shared.recorder.counters.snapshot();
    let mut report = RunReport::new(
        label,
        "storm",
        serde_json::to_value(config)?,
        measured,
        at_deadline,
        totals,
        &shared.recorder,
        checks,
        cpu,
        result.resumed == config.clients,
    );
    report.extra = serde_json::to_value(result)?;
    report.host = Some(host);
    Ok(report)
}

/// Reads `session`'s socket until `release` (so that pings are answered), then gives it back.
/// Nothing is sent before every socket is set up, so what it reads meanwhile is not needed.
fn hold(
    session: identity::Session,
    release: CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<Socket>> {
    let mut socket = session.socket;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = release.cancelled() => return Ok(socket),
                frame = socket.next() => match frame {
                    Some(Ok(Message::Close(close))) => {
                        bail!("the node closed a socket while the others were set up: {close:?}")
                    }
                    // The pong the WebSocket layer queued goes out now, not with the next frame.
                    Some(Ok(Message::Ping(_))) => socket.flush().await?,
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(error.into()),
                    None => bail!("a socket closed while the others were set up"),
                },
            }
        }
    })
}

/// Waits until every reader has received its room's last stored message (the store quiet
/// first), or [`SETTLE_TIMEOUT`]: what a reader lacks then is counted lost. Without a database
/// to ask, until nobody received anything for a second.
async fn settle(
    database_url: Option<&str>,
    room_ids: &[i64],
    shared: &Shared,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let Some(url) = database_url else {
        let mut last = u64::MAX;
        while Instant::now() < deadline {
            let delivered = shared.recorder.counters.delivered.load(Relaxed);
            if delivered == last {
                break;
            }
            last = delivered;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        return Ok(());
    };
    let mut last: Option<HashMap<i64, i64>> = None;
    let finals = loop {
        let now = stored_messages(url, room_ids).await?.max_seq;
        if last.as_ref() == Some(&now) || Instant::now() >= deadline {
            break now;
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let target = |room: usize| {
        room_ids
            .get(room)
            .and_then(|id| finals.get(id))
            .copied()
            .unwrap_or(0)
    };
    let rooms = room_ids.len().max(1);
    while Instant::now() < deadline {
        let observers = shared
            .observed
            .iter()
            .enumerate()
            .all(|(room, seen)| seen.load(Relaxed) >= target(room));
        let clients = shared
            .seen
            .iter()
            .enumerate()
            .all(|(n, seen)| seen.load(Relaxed) >= target(n % rooms));
        if observers && clients {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// An observer on a surviving node: records what it sees of its room.
async fn observe(
    room: usize,
    mut socket: Socket,
    joined: JoinedRoom,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> RoomView {
    let mut view = RoomView::new(joined.last_seq.0);
    let mut samples = Samples::default();
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = socket.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            _ => break,
        };
        if let Ok(ServerFrame::Message(message)) = serde_json::from_str::<ServerFrame>(&text) {
            shared.recorder.counters.delivered.fetch_add(1, Relaxed);
            let now = now_micros();
            if let Some(sent_at) = message
                .body
                .split(':')
                .next()
                .and_then(|p| p.parse::<u64>().ok())
            {
                samples.deliver(now, now.saturating_sub(sent_at), true);
            }
            view.record(message.seq.0);
            if let Some(seen) = shared.observed.get(room) {
                seen.fetch_max(message.seq.0, Relaxed);
            }
            samples.maybe_flush(&shared.recorder, now);
        }
    }
    samples.flush(&shared.recorder);
    view
}

struct StormClient {
    /// The client's number, `n`.
    number: usize,
    name: String,
    /// Index of the room (`n % rooms` for client `n`).
    room: usize,
    room_id: RoomId,
    survivors: Vec<SocketAddr>,
    account: Account,
    shared: Arc<Shared>,
    period: Duration,
    first_send: Instant,
}

impl StormClient {
    async fn run(
        self,
        dialer: Arc<crate::Dialer>,
        mut socket: Socket,
        joined: JoinedRoom,
        stop_sending: CancellationToken,
        stop: CancellationToken,
    ) -> ClientOutcome {
        let room_id = joined.room_id;
        // The room as this client sees it across the kill: every sequence number after its
        // first join, once and in order, live or resumed.
        let mut view = RoomView::new(joined.last_seq.0);
        let mut last_seen = joined.last_seq;
        let mut resumed_after = None;
        let mut incomplete = false;
        let mut debug_after = None;
        let mut debug_joined = None;
        let mut accepted = Vec::new();
        let mut pending: HashMap<String, u64> = HashMap::new();
        let mut samples = Samples::default();
        let mut next_send = self.first_send;
        let mut number = 0u64;
        'session: loop {
            loop {
                let sending = !stop_sending.is_cancelled();
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break 'session,
                    message = socket.next() => match message {
                        Some(Ok(Message::Text(text))) => {
                            match serde_json::from_str::<ServerFrame>(&text) {
                                Ok(ServerFrame::Accepted { client_msg_id, .. })
                                    if pending.contains_key(&client_msg_id.0) =>
                                {
                                    let sent_at = pending.remove(&client_msg_id.0).unwrap_or_default();
                                    let now = now_micros();
                                    samples.accept(now.saturating_sub(sent_at));
                                    samples.maybe_flush(&self.shared.recorder, now);
                                    self.shared.recorder.counters.accepted.fetch_add(1, Relaxed);
                                    accepted.push(client_msg_id.0);
                                }
                                Ok(ServerFrame::Message(message)) => {
                                    self.shared.recorder.counters.delivered.fetch_add(1, Relaxed);
                                    view.record(message.seq.0);
                                    last_seen = last_seen.max(message.seq);
                                    if let Some(seen) = self.shared.seen.get(self.number) {
                                        seen.fetch_max(message.seq.0, Relaxed);
                                    }
                                }
                                _ => {}
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    _ = tokio::time::sleep_until(next_send), if sending => {
                        next_send += self.period;
                        number += 1;
                        let id = format!("{}-{number}", self.name);
                        let frame = ClientFrame::Send {
                            room_id,
                            client_msg_id: ClientMsgId(id.clone()),
                            body: format!("{}:0:storm", now_micros()),
                        };
                        let Ok(text) = serde_json::to_string(&frame) else { continue };
                        pending.insert(id, now_micros());
                        self.shared.recorder.counters.sent.fetch_add(1, Relaxed);
                        if socket.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            if resumed_after.is_some() {
                break; // a second loss is not part of this workload
            }
            debug_after = Some(last_seen.0);
            // The dead node's socket goes first: holding it while reconnecting would need two
            // descriptors per client, and 10,000 clients would run out of them.
            drop(socket);
            match self.resume(&dialer, last_seen, &stop).await {
                Ok((new_socket, joined)) => {
                    debug_joined = Some(joined.last_seq.0);
                    let killed_at = self.shared.killed_at.load(Relaxed);
                    resumed_after = Some(now_micros().saturating_sub(killed_at) as f64 / 1e6);
                    self.shared.resumed.fetch_add(1, Relaxed);
                    incomplete = !joined.complete;
                    socket = new_socket;
                    // Sends the dead node never answered go again with the same ids: stored
                    // once whatever became of the first attempt.
                    for id in pending.keys() {
                        let frame = ClientFrame::Send {
                            room_id,
                            client_msg_id: ClientMsgId(id.clone()),
                            body: format!("{}:0:storm", now_micros()),
                        };
                        let Ok(text) = serde_json::to_string(&frame) else {
                            continue;
                        };
                        if socket.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                }
                Err(_) => break,
            }
        }
        samples.flush(&self.shared.recorder);
        ClientOutcome {
            name: self.name.clone(),
            room: self.room,
            user_id: self.account.user_id,
            accepted,
            view,
            resumed_after,
            incomplete,
            debug_after,
            debug_joined,
        }
    }

    /// Reconnects to a surviving node and resumes the room after `after`, retrying until
    /// stopped.
    async fn resume(
        &self,
        dialer: &crate::Dialer,
        after: Seq,
        stop: &CancellationToken,
    ) -> anyhow::Result<(Socket, JoinedRoom)> {
        let mut attempt = 0usize;
        loop {
            if stop.is_cancelled() {
                bail!("stopped before resuming");
            }
            self.shared.attempts.fetch_add(1, Relaxed);
            let node = self.survivors[attempt % self.survivors.len()];
            attempt += 1;
            let result = async {
                let mut session = identity::connect(dialer, node, &self.account).await?;
                let joined = identity::follow(&mut session, self.room_id, Some(after)).await?;
                anyhow::Ok((session.socket, joined))
            }
            .await;
            match result {
                Ok(done) => return Ok(done),
                Err(error) => {
                    if std::env::var_os("CHAT_LOAD_DEBUG").is_some() {
                        eprintln!("{}: resume attempt {attempt} failed: {error:#}", self.name);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
            }
        }
    }
}
