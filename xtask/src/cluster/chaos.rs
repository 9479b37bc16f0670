//! `cargo xtask chaos`: faults injected into the local cluster (`cargo xtask cluster up`) while
//! the delivery checker (`checker`) sends through its load balancer. Each scenario runs the
//! checker's load, injects its fault a few seconds in, repairs it a few seconds later, and fails
//! on any message lost, stored twice, or delivered out of order, twice or not at all to a
//! member. The cluster is brought up for the run and removed after it.

use super::checker::{self, Load, Report};
use super::hosts::{self, Cluster, BALANCER_PORT, NODE_PORT};
use super::net::{self, Role};
use super::smoke::{http, Session};
use super::state::{state_path, State};
use super::{brokers, teardown};
use anyhow::{bail, Context, Result};
use chat_protocol::api::{CreateRoomRequest, Room, RoomKind};
use chat_protocol::RoomId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The checker's users, in groups of `GROUP` sharing `ROOMS` rooms: each user sends at most
/// `RATE_PER_USER` messages a second (the per-user limit is 20), and at most `USERS_PER_SOURCE`
/// users come from one address (a stock deployment registers at most 10 accounts an hour and
/// takes at most 200 messages a second from one).
const GROUP: usize = 8;
const ROOMS: usize = 3;
const RATE_PER_USER: f64 = 15.0;
const USERS_PER_SOURCE: usize = 4;
/// The rate of `cargo xtask test`'s short suite.
pub const SHORT_RATE: f64 = 120.0;

/// How many users send `rate` messages a second, and from how many addresses.
fn users_for(rate: f64) -> (usize, usize) {
    let users = ((rate / RATE_PER_USER).ceil() as usize).max(GROUP);
    (users, users.div_ceil(USERS_PER_SOURCE))
}
/// Load before the fault, and after its repair.
const FAULT_AFTER: Duration = Duration::from_secs(3);
const LOAD_AFTER_REPAIR: Duration = Duration::from_secs(5);
/// How long a process stays dead before it is started again.
const REPAIR_AFTER: Duration = Duration::from_secs(4);
/// How long PostgreSQL stays stopped or paused, and a link stays cut.
const OUTAGE: Duration = Duration::from_secs(10);
/// How long a broker stays partitioned from the others: more than the cluster's brokers take
/// to notice a lost peer (`net_ticktime` 10 s, so 10 to 15 s), so that `pause_minority` acts.
const PARTITION: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL of a chat node; its clients reconnect through the balancer to the others.
    KillNode,
    /// SIGKILL of the broker leading most ingest quorum queues; nodes connected to it move to
    /// another broker of their list.
    KillQuorumLeader,
    /// SIGTERM of a chat node: it drains, telling its clients to go elsewhere (close 1001).
    DrainNode,
    /// Every PostgreSQL process SIGSTOPped, then SIGCONTinued.
    PausePostgres,
    /// SIGKILL of Memcached, then a fresh (empty) one.
    KillMemcached,
    /// SIGKILL of nginx, which every client's connection goes through, then a new one.
    KillBalancer,
    /// PostgreSQL shut down (fast), started again after [`OUTAGE`].
    StopPostgres,
    /// Every chat node in turn drained with SIGTERM and started again.
    RollingNodes,
    /// Every broker in turn stopped (`rabbitmqctl stop`) and started again.
    RollingBrokers,
    /// A chat node cut off from every broker for [`OUTAGE`] (`net::cut`); its clients,
    /// PostgreSQL and Memcached still reach it.
    CutNodeFromBrokers,
    /// The quorum leader's broker cut off from the other brokers (not from the chat nodes) for
    /// [`PARTITION`]: `pause_minority` pauses it, and the nodes on it move on.
    PartitionBroker,
    /// `STORM_CLIENTS` clients on one chat node, which is SIGKILLed: all of them reconnect
    /// through the balancer at once (`chat-load storm`, not the checker).
    ReconnectStorm,
}

impl Fault {
    /// The scenarios of `cargo xtask chaos`; the short suite of `cargo xtask test` runs the
    /// first two.
    const ALL: [Fault; 12] = [
        Fault::KillNode,
        Fault::KillQuorumLeader,
        Fault::DrainNode,
        Fault::PausePostgres,
        Fault::KillMemcached,
        Fault::KillBalancer,
        Fault::StopPostgres,
        Fault::RollingNodes,
        Fault::RollingBrokers,
        Fault::CutNodeFromBrokers,
        Fault::PartitionBroker,
        Fault::ReconnectStorm,
    ];
    const SHORT: usize = 2;

    fn name(self) -> &'static str {
        match self {
            Fault::KillNode => "chat node SIGKILLed",
            Fault::KillQuorumLeader => "quorum leader's broker SIGKILLed",
            Fault::DrainNode => "chat node drained (SIGTERM)",
            Fault::PausePostgres => "PostgreSQL paused (SIGSTOP)",
            Fault::KillMemcached => "Memcached SIGKILLed",
            Fault::KillBalancer => "load balancer SIGKILLed",
            Fault::StopPostgres => "PostgreSQL stopped for 10 s",
            Fault::RollingNodes => "rolling restart of the chat nodes",
            Fault::RollingBrokers => "rolling restart of the brokers",
            Fault::CutNodeFromBrokers => "chat node cut from the brokers for 10 s",
            Fault::PartitionBroker => "quorum leader's broker partitioned (pause_minority)",
            Fault::ReconnectStorm => "10,000 clients reconnecting after their node's death",
        }
    }

    /// The scenario's name on the command line (`--only`).
    fn slug(self) -> &'static str {
        match self {
            Fault::KillNode => "kill-node",
            Fault::KillQuorumLeader => "kill-quorum-leader",
            Fault::DrainNode => "drain-node",
            Fault::PausePostgres => "pause-postgres",
            Fault::KillMemcached => "kill-memcached",
            Fault::KillBalancer => "kill-balancer",
            Fault::StopPostgres => "stop-postgres",
            Fault::RollingNodes => "rolling-nodes",
            Fault::RollingBrokers => "rolling-brokers",
            Fault::CutNodeFromBrokers => "cut-node",
            Fault::PartitionBroker => "partition-broker",
            Fault::ReconnectStorm => "reconnect-storm",
        }
    }

    /// How long the checker's load runs: past the fault's repair, or for the rolling restarts
    /// long enough to cover most of them (the checker waits for the rest anyway).
    fn load(self) -> Duration {
        let fault = match self {
            Fault::PausePostgres | Fault::StopPostgres | Fault::CutNodeFromBrokers => OUTAGE,
            Fault::PartitionBroker => PARTITION,
            Fault::RollingNodes => Duration::from_secs(25),
            Fault::RollingBrokers => Duration::from_secs(40),
            _ => REPAIR_AFTER,
        };
        FAULT_AFTER + fault + LOAD_AFTER_REPAIR
    }
}

/// Each scenario's figures, and the scenarios that did not run to their end (with why).
type Outcome = (Vec<(Fault, Report)>, Vec<(Fault, String)>);

/// Which scenarios a run makes.
pub enum Scope {
    All,
    /// The first [`Fault::SHORT`], for `cargo xtask test`.
    Short,
    /// These, by [`Fault::slug`].
    Only(Vec<String>),
}

/// Brings a cluster up with `binary` (built here when `None`), runs every scenario, takes the
/// cluster down, and fails if any scenario broke the delivery contract. With `write`, the
/// figures go into RELIABILITY.md.
pub fn run(
    root: &Path,
    binary: Option<PathBuf>,
    rate: f64,
    scope: Scope,
    write: bool,
    keep: bool,
) -> Result<()> {
    let faults: Vec<Fault> = match scope {
        Scope::All => Fault::ALL.to_vec(),
        Scope::Short => Fault::ALL[..Fault::SHORT].to_vec(),
        Scope::Only(names) => names
            .iter()
            .map(|name| {
                Fault::ALL
                    .into_iter()
                    .find(|fault| fault.slug() == name)
                    .with_context(|| {
                        let all: Vec<&str> = Fault::ALL.iter().map(|f| f.slug()).collect();
                        format!(
                            "no scenario is called {name}; the scenarios: {}",
                            all.join(", ")
                        )
                    })
            })
            .collect::<Result<_>>()?,
    };
    let binary = match binary {
        Some(binary) => binary,
        None => super::build_server(root, false)?,
    };
    super::up_with(root, false, false, false, Some(&binary))?;
    let outcome = scenarios(root, &binary, rate, &faults);
    let failed = match &outcome {
        Ok((reports, unfinished)) => {
            !unfinished.is_empty() || reports.iter().any(|(_, report)| !report.holds())
        }
        Err(_) => true,
    };
    if failed {
        keep_logs(root);
    }
    if keep {
        println!("the cluster stays up (`cargo xtask cluster status`, `cargo xtask cluster down`)");
    }
    let down = if keep { Ok(()) } else { teardown::down(root) };
    let (reports, unfinished) = outcome?;
    down?;
    println!("\n{}", table(rate, &reports));
    if write {
        write_reliability(root, rate, &reports, &unfinished)?;
    }
    if let Some((fault, error)) = unfinished.first() {
        bail!("{} did not run to its end: {error}", fault.name());
    }
    let broken: Vec<&str> = reports
        .iter()
        .filter(|(_, report)| !report.holds())
        .map(|(fault, _)| fault.name())
        .collect();
    if !broken.is_empty() {
        bail!("the delivery contract broke under: {}", broken.join(", "));
    }
    Ok(())
}

fn scenarios(root: &Path, binary: &Path, rate: f64, faults: &[Fault]) -> Result<Outcome> {
    let state = State::load(&state_path(root)?)?;
    let cluster = state.cluster(root);
    let balancer: SocketAddr = cluster.host(Role::Balancer)?.socket(BALANCER_PORT).into();
    let (users, sources) = users_for(rate);
    if sources > CHECKER_SOURCES {
        bail!("{rate} msgs/s needs {sources} client addresses; the checker has {CHECKER_SOURCES}");
    }
    let sources = net::add_client_addresses(0, sources)?;
    let sessions = checker::sign_in_users(balancer, "chaos", users, &sources)?;
    let database_url = cluster.database_url()?;
    let mut reports = Vec::new();
    let mut unfinished = Vec::new();
    for (number, fault) in faults.iter().copied().enumerate() {
        if let Fault::ReconnectStorm = fault {
            println!("==> scenario: {}", fault.name());
            // A workload of its own: when it fails, the other scenarios' figures still count.
            match storm(&cluster, binary) {
                Ok(report) => {
                    println!("{}", storm_row(&report));
                    reports.push((fault, report));
                }
                Err(error) => {
                    println!("    did not run to its end: {error:#}");
                    unfinished.push((fault, format!("{error:#}")));
                }
            }
            wait_healthy(&cluster)?;
            continue;
        }
        println!(
            "==> scenario: {} at {rate} msgs/s from {users} users",
            fault.name()
        );
        let rooms = create_rooms(balancer, &sessions, number)?;
        let fault_at = Instant::now() + FAULT_AFTER;
        let injector = {
            let cluster = state.cluster(root);
            let binary = binary.to_owned();
            std::thread::spawn(move || inject(&cluster, fault, &binary, fault_at))
        };
        let report = checker::run(
            balancer,
            &sessions,
            &rooms,
            Load {
                rate,
                duration: fault.load(),
            },
            fault_at,
            |rooms| stored(&database_url, rooms),
        );
        let injected = injector
            .join()
            .map_err(|_| anyhow::anyhow!("the fault's thread panicked"))?;
        let what =
            injected.with_context(|| format!("injecting and repairing: {}", fault.name()))?;
        let report = report?;
        println!("    {what}\n{}", row(rate, fault, &report));
        reports.push((fault, report));
        wait_healthy(&cluster)?;
    }
    Ok((reports, unfinished))
}

/// Copies every host's logs to `target/chaos-logs/` before the cluster (and its run directory)
/// is removed.
fn keep_logs(root: &Path) {
    let Ok(state) = state_path(root).and_then(|path| State::load(&path)) else {
        return;
    };
    let Ok(target) = crate::web::target_dir(root) else {
        return;
    };
    let kept = target.join("chaos-logs");
    let _ = std::fs::remove_dir_all(&kept);
    for process in &state.processes {
        let name = process
            .log
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let to = kept.join(format!("{}-{name}", process.host));
        let _ = std::fs::create_dir_all(&kept);
        let _ = std::fs::copy(&process.log, &to);
    }
    println!("the cluster's logs are kept in {}", kept.display());
}

/// For each group of `GROUP` users, `ROOMS` public rooms of this scenario's own, every user of
/// the group a member; each user's rooms.
fn create_rooms(
    balancer: SocketAddr,
    sessions: &[Session],
    scenario: usize,
) -> Result<Vec<Vec<RoomId>>> {
    let mut rooms_of = Vec::new();
    for (group, members) in sessions.chunks(GROUP).enumerate() {
        let owner = members.first().context("no users")?;
        let mut rooms = Vec::new();
        for index in 0..ROOMS {
            let create = CreateRoomRequest {
                name: format!("chaos-{scenario}-{group}-{index}"),
                visibility: RoomKind::Public,
            };
            let (status, body) = http(balancer, "POST", "/api/rooms", Some(owner), Some(&create))?;
            if status != 201 {
                bail!("creating a room: HTTP {status}: {body}");
            }
            let room = serde_json::from_str::<Room>(&body)?.room_id;
            for member in &members[1..] {
                let path = format!("/api/rooms/{}/join", room.0);
                let (status, body) = http::<()>(balancer, "POST", &path, Some(member), None)?;
                if status != 200 {
                    bail!("joining a room: HTTP {status}: {body}");
                }
            }
            rooms.push(room);
        }
        rooms_of.extend(members.iter().map(|_| rooms.clone()));
    }
    Ok(rooms_of)
}

/// Each room's stored (seq, client message id), read with psql from this machine.
fn stored(database_url: &str, rooms: &[RoomId]) -> Result<BTreeMap<RoomId, Vec<(i64, String)>>> {
    let list: Vec<String> = rooms.iter().map(|room| room.0.to_string()).collect();
    let sql = format!(
        "SELECT room_id, seq, client_msg_id FROM messages WHERE room_id IN ({}) ORDER BY room_id, seq",
        list.join(",")
    );
    let output = net::output(
        Command::new("psql")
            .arg(database_url)
            .args(["-X", "-A", "-t", "-F", " ", "-c", &sql]),
    )
    .context("reading the stored messages")?;
    let mut rows: BTreeMap<RoomId, Vec<(i64, String)>> =
        rooms.iter().map(|room| (*room, Vec::new())).collect();
    for line in output.lines().filter(|line| !line.trim().is_empty()) {
        let mut fields = line.split(' ');
        let (Some(room), Some(seq), Some(id)) = (fields.next(), fields.next(), fields.next())
        else {
            bail!("unexpected psql line: {line}");
        };
        rows.entry(RoomId(room.parse()?))
            .or_default()
            .push((seq.parse()?, id.to_owned()));
    }
    Ok(rows)
}

/// Waits until `at`, injects the fault, waits, repairs it; says what it did.
fn inject(cluster: &Cluster, fault: Fault, binary: &Path, at: Instant) -> Result<String> {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
    match fault {
        Fault::KillNode | Fault::DrainNode => {
            let host = cluster
                .nodes()
                .get(1)
                .copied()
                .context("no second chat node")?;
            let signal = match fault {
                Fault::DrainNode => "-TERM",
                _ => "-KILL",
            };
            // Whatever runs in the node's namespace: the chat node, as first started or since.
            let pids = signal_host(host, signal)?;
            // A drained node exits by itself (within its drain bounds); a new one starts once
            // it has.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !net::pids(&host.netns()).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(REPAIR_AFTER);
            restart_node(cluster, host, 2, binary)?;
            Ok(format!(
                "sent {signal} to {} ({pids:?}), restarted it",
                host.name
            ))
        }
        Fault::PausePostgres => {
            let host = cluster.host(Role::Database)?;
            let pids = signal_host(host, "-STOP")?;
            std::thread::sleep(OUTAGE);
            signal_host(host, "-CONT")?;
            Ok(format!(
                "paused {} PostgreSQL processes, then let them go on",
                pids.len()
            ))
        }
        Fault::KillMemcached => {
            let host = cluster.host(Role::Cache)?;
            signal_host(host, "-KILL")?;
            std::thread::sleep(REPAIR_AFTER);
            let mut started = hosts::start_memcached(cluster, host)?;
            hosts::wait_listening(&mut started, host.socket(hosts::MEMCACHED_PORT))?;
            Ok("killed Memcached, started an empty one".to_owned())
        }
        Fault::KillBalancer => {
            let host = cluster.host(Role::Balancer)?;
            signal_host(host, "-KILL")?;
            std::thread::sleep(REPAIR_AFTER);
            let conf = hosts::configure_balancer(cluster, host)?;
            let mut started = hosts::start_balancer(cluster, host, &conf)?;
            hosts::wait_balancer(&mut started, host)?;
            Ok("killed nginx, started a new one".to_owned())
        }
        Fault::KillQuorumLeader => {
            let host = quorum_leader(cluster)?;
            let output = net::output(brokers::broker_tool(cluster, host, "rabbitmqctl").args([
                "-q",
                "eval",
                "os:getpid().",
            ]))?;
            let pid: u32 = output
                .trim()
                .trim_matches('"')
                .parse()
                .with_context(|| format!("not a pid: {output}"))?;
            signal_pid("-KILL", pid)?;
            std::thread::sleep(REPAIR_AFTER);
            let mut started = brokers::restart_broker(cluster, host)?;
            brokers::wait_broker(cluster, host, &mut started)?;
            Ok(format!(
                "killed {} (the leader of most ingest queues, beam pid {pid}), restarted it",
                Cluster::broker_name(host)
            ))
        }
        // Its own workload kills the node (`storm`).
        Fault::ReconnectStorm => bail!("the reconnection storm is not injected beside the checker"),
        Fault::StopPostgres => {
            let host = cluster.host(Role::Database)?;
            hosts::stop_postgres(cluster, host)?;
            std::thread::sleep(OUTAGE);
            let mut started = hosts::start_postgres(cluster, host)?;
            hosts::wait_postgres_ready(cluster, host, &mut started)?;
            Ok("stopped PostgreSQL (fast shutdown), started it again".to_owned())
        }
        Fault::RollingNodes => {
            for (index, host) in cluster.nodes().into_iter().enumerate() {
                signal_host(host, "-TERM")?;
                wait_exited(host, Duration::from_secs(30))?;
                restart_node(cluster, host, u8::try_from(index + 1)?, binary)?;
            }
            Ok("drained and restarted every chat node in turn".to_owned())
        }
        Fault::RollingBrokers => {
            for host in cluster.brokers() {
                net::output(
                    brokers::broker_tool(cluster, host, "rabbitmqctl").args(["-q", "stop"]),
                )
                .with_context(|| format!("stopping {}", Cluster::broker_name(host)))?;
                let mut started = brokers::restart_broker(cluster, host)?;
                brokers::wait_broker(cluster, host, &mut started)?;
                brokers::wait_clustered(cluster, Duration::from_secs(120))?;
            }
            Ok("stopped and restarted every broker in turn".to_owned())
        }
        Fault::CutNodeFromBrokers => {
            let host = cluster.nodes().first().copied().context("no chat node")?;
            let brokers = cluster.brokers();
            net::cut(host, &brokers)?;
            std::thread::sleep(OUTAGE);
            net::uncut(host, &brokers)?;
            Ok(format!(
                "cut {} off from the brokers, then joined them again",
                host.name
            ))
        }
        Fault::PartitionBroker => {
            let host = quorum_leader(cluster)?;
            let others: Vec<_> = cluster
                .brokers()
                .into_iter()
                .filter(|other| other.address != host.address)
                .collect();
            net::cut(host, &others)?;
            std::thread::sleep(PARTITION);
            net::uncut(host, &others)?;
            brokers::wait_clustered(cluster, Duration::from_secs(120))?;
            Ok(format!(
                "cut {} off from the other brokers, then joined them again",
                Cluster::broker_name(host)
            ))
        }
    }
}

/// The reconnection storm: clients, the users they are spread over (a node takes 20 WebSockets
/// of one user), the addresses they come from (a node takes 200 WebSockets and 10 registrations
/// an hour from one), and their messages a second.
const STORM_CLIENTS: usize = 10_000;
const STORM_ACCOUNTS: usize = 520;
const STORM_SOURCES: usize = 100;
/// The checker's client addresses come first, the storm's after them: their per-address
/// budgets (registrations above all) are apart.
const CHECKER_SOURCES: usize = 50;
const STORM_RATE: f64 = 200.0;

/// `chat-load storm` against the cluster: `STORM_CLIENTS` clients connected straight to the
/// second chat node (observers on the others), the node SIGKILLed, every client reconnecting
/// through the balancer and resuming its room; then the node is started again.
fn storm(cluster: &Cluster, binary: &Path) -> Result<Report> {
    // chat-load of the same profile as the nodes': a debug one holding 10,000 sockets beside
    // release nodes on two cores falls behind their pings.
    let release = binary
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|dir| dir == "release");
    let mut build = crate::cargo();
    build
        .current_dir(&cluster.root)
        .args(["build", "-p", "chat-load"]);
    if release {
        build.arg("--release");
    }
    crate::run(&mut build)?;
    let target = crate::web::target_dir(&cluster.root)?;
    let load = target
        .join(if release { "release" } else { "debug" })
        .join("chat-load");
    let json = target.join("chaos-storm.json");
    let nodes = cluster.nodes();
    let victim = nodes.get(1).copied().context("no second chat node")?;
    let pid = net::pids(&victim.netns())
        .first()
        .copied()
        .with_context(|| format!("nothing runs on {}", victim.name))?;
    let sources = net::add_client_addresses(CHECKER_SOURCES, STORM_SOURCES)?;
    let first_source = sources.first().context("no client address")?;
    let mut command = Command::new(load);
    command
        .args(["storm", "--quiet", "--victim", "0", "--members", "10"])
        .args(["--clients", &STORM_CLIENTS.to_string()])
        .args(["--users", &STORM_ACCOUNTS.to_string()])
        .args(["--rate", &STORM_RATE.to_string()])
        .args(["--sources", &STORM_SOURCES.to_string()])
        .args(["--first-source", &first_source.to_string()])
        .args(["--reconnect-via", &nodes.len().to_string()])
        .arg("--database-url")
        .arg(cluster.database_url()?)
        .arg("--json")
        .arg(&json)
        .arg("--node")
        .arg(format!(
            "{}={}@{pid}",
            victim.name,
            victim.socket(NODE_PORT)
        ));
    for node in nodes.iter().filter(|node| node.name != victim.name) {
        command
            .arg("--node")
            .arg(format!("{}={}", node.name, node.socket(NODE_PORT)));
    }
    let balancer = cluster.host(Role::Balancer)?;
    command
        .arg("--node")
        .arg(format!("lb={}", balancer.socket(BALANCER_PORT)));
    let ran = crate::run(&mut command);
    // The storm kills the node; when it failed before, the node is killed here.
    signal_host(victim, "-KILL")?;
    wait_exited(victim, Duration::from_secs(30))?;
    restart_node(cluster, victim, u8::try_from(nodes.len().min(2))?, binary)?;
    ran.context("chat-load storm failed")?;
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("cannot read {}", json.display()))?;
    storm_report(&serde_json::from_str(&text)?)
}

/// The storm's JSON report as a [`Report`]: lost is accepted but not in PostgreSQL, missing at
/// members what a client or an observer never saw of its room, duplicated and reordered what
/// they saw twice or out of order; steady after is when the last client had resumed.
fn storm_report(json: &serde_json::Value) -> Result<Report> {
    let extra = &json["extra"];
    let number = |value: &serde_json::Value, what: &str| -> Result<usize> {
        value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .with_context(|| format!("the storm's report has no {what}"))
    };
    let seconds =
        |value: &serde_json::Value| Duration::from_secs_f64(value.as_f64().unwrap_or(0.0));
    let clients = number(&extra["clients"], "clients")?;
    let resumed = number(&extra["resumed"], "resumed")?;
    let accepted = number(&extra["accepted"], "accepted")?;
    let sent = number(&json["totals"]["sent"], "sent")?;
    let refused = number(&json["totals"]["refused"], "refused")?;
    let lost = number(&extra["accepted_not_stored"], "accepted_not_stored")?;
    let report = Report {
        sent,
        accepted,
        refused,
        unanswered: sent.saturating_sub(accepted + refused),
        // The accepted sends found in PostgreSQL.
        stored: accepted.saturating_sub(lost),
        lost,
        duplicated: number(&json["checks"]["duplicated"], "duplicated")?,
        reordered: number(&json["checks"]["out_of_order"], "out_of_order")?,
        // A client that never resumed missed everything after the kill.
        missing_at_members: number(&json["checks"]["lost"], "lost")?
            + (clients - resumed.min(clients)),
        reconnects: resumed,
        reconnect_p50: seconds(&extra["resume_p50_s"]),
        reconnect_p99: seconds(&extra["resume_p99_s"]),
        worst_latency: Duration::from_secs_f64(
            json["deliver_latency"]["max"].as_f64().unwrap_or(0.0) / 1000.0,
        ),
        steady_after: extra["all_resumed_s"].as_f64().map(Duration::from_secs_f64),
        ..Report::default()
    };
    Ok(report)
}

/// The storm's line of [`table`].
fn storm_row(report: &Report) -> String {
    let load = format!(
        "{STORM_CLIENTS} clients ({STORM_ACCOUNTS} users) in rooms of 10, {STORM_RATE} msgs/s"
    );
    row_with(Fault::ReconnectStorm, &load, report)
}

/// Starts chat node number `index` on `host` again, with the web client `up` built, and waits
/// until it is ready.
fn restart_node(cluster: &Cluster, host: &net::Host, index: u8, binary: &Path) -> Result<()> {
    let web_dir = cluster.root.join("web-client/dist");
    let mut started = hosts::start_node(cluster, host, index, binary, &web_dir)?;
    hosts::wait_node(&mut started, host)
}

/// Waits until nothing runs in `host`'s namespace.
fn wait_exited(host: &net::Host, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while !net::pids(&host.netns()).is_empty() {
        if Instant::now() > deadline {
            bail!("{} still runs {within:?} after SIGTERM", host.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The broker leading the most `chat.ingest.*` quorum queues.
fn quorum_leader(cluster: &Cluster) -> Result<&net::Host> {
    let brokers = cluster.brokers();
    let first = brokers.first().copied().context("no brokers")?;
    let json = net::output(brokers::broker_tool(cluster, first, "rabbitmqctl").args([
        "-q",
        "list_queues",
        "name",
        "leader",
        "--formatter",
        "json",
    ]))?;
    let queues: Vec<serde_json::Value> =
        serde_json::from_str(&json).context("rabbitmqctl list_queues is not JSON")?;
    let mut leads: BTreeMap<String, usize> = BTreeMap::new();
    for queue in &queues {
        let name = queue["name"].as_str().unwrap_or_default();
        if let (true, Some(leader)) = (name.starts_with("chat.ingest"), queue["leader"].as_str()) {
            *leads.entry(leader.to_owned()).or_default() += 1;
        }
    }
    let (leader, _) = leads
        .into_iter()
        .max_by_key(|(_, count)| *count)
        .context("no ingest quorum queue has a leader")?;
    brokers
        .into_iter()
        .find(|host| Cluster::broker_name(host) == leader)
        .with_context(|| format!("{leader} is none of the cluster's brokers"))
}

fn signal_pid(signal: &str, pid: u32) -> Result<()> {
    net::output(Command::new("kill").args([signal, &pid.to_string()]))?;
    Ok(())
}

/// Sends `signal` to every process in `host`'s namespace; returns their pids.
fn signal_host(host: &net::Host, signal: &str) -> Result<Vec<i32>> {
    let pids = net::pids(&host.netns());
    for pid in &pids {
        signal_pid(signal, u32::try_from(*pid)?)?;
    }
    Ok(pids)
}

/// Every chat node ready and every broker in the cluster again, before the next scenario.
fn wait_healthy(cluster: &Cluster) -> Result<()> {
    brokers::wait_clustered(cluster, Duration::from_secs(120))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for host in cluster.nodes() {
        while hosts::http_status(host.socket(NODE_PORT), "/readyz") != Some(200) {
            if Instant::now() > deadline {
                bail!("{} not ready again within a minute", host.name);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    Ok(())
}

fn millis(duration: Duration) -> String {
    format!("{} ms", duration.as_millis())
}

/// A scenario's line of [`table`].
fn row(rate: f64, fault: Fault, report: &Report) -> String {
    if let Fault::ReconnectStorm = fault {
        return storm_row(report);
    }
    let (users, _) = users_for(rate);
    let load = format!("{rate} msgs/s, {users} users, {GROUP} to a group of {ROOMS} rooms");
    row_with(fault, &load, report)
}

fn row_with(fault: Fault, load: &str, report: &Report) -> String {
    format!(
        "| {} | {load} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |\n",
        fault.name(),
        report.accepted,
        report.refused,
        report.unanswered,
        report.stored,
        report.lost,
        report.duplicated,
        report.reordered,
        report.missing_at_members,
        reconnects(report),
        millis(report.reconnect_p50),
        millis(report.reconnect_p99),
        millis(report.worst_latency),
        report.steady_after.map_or_else(|| "-".to_owned(), millis),
    )
}

/// The reconnects, with the close codes that caused them and the resumes made up over REST.
fn reconnects(report: &Report) -> String {
    let mut notes: Vec<String> = report
        .closes
        .iter()
        .map(|(code, count)| format!("{count}× close {code}"))
        .collect();
    if report.reloads > 0 {
        notes.push(format!("{} history reloads", report.reloads));
    }
    if notes.is_empty() {
        report.reconnects.to_string()
    } else {
        format!("{} ({})", report.reconnects, notes.join(", "))
    }
}

fn table(rate: f64, reports: &[(Fault, Report)]) -> String {
    let mut text = String::from(
        "| Scenario | Load | Accepted | Refused | Unanswered | Stored | Lost | Duplicated | \
         Reordered | Missing at members | Reconnects | Reconnect p50 / p99 | Worst send→deliver | \
         Steady after |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (fault, report) in reports {
        text.push_str(&row(rate, *fault, report));
    }
    text
}

const BEGIN: &str = "<!-- cargo xtask chaos: begin -->";
const END: &str = "<!-- cargo xtask chaos: end -->";

/// Replaces the chaos section of RELIABILITY.md with this run's table.
fn write_reliability(
    root: &Path,
    rate: f64,
    reports: &[(Fault, Report)],
    unfinished: &[(Fault, String)],
) -> Result<()> {
    let path = root.join("RELIABILITY.md");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        bail!("{} has no chaos section ({BEGIN} … {END})", path.display());
    };
    let date = net::output(Command::new("date").args(["-u", "+%Y-%m-%d"]))?;
    let mut notes = String::new();
    for (fault, error) in unfinished {
        let error = error.lines().next().unwrap_or_default();
        notes.push_str(&format!(
            "\nNot run to its end in this run: {} ({error}).\n",
            fault.name()
        ));
    }
    let section = format!(
        "{BEGIN}\nRun of {} on {} (`cargo xtask {}`):\n\n{}{notes}{END}",
        date.trim(),
        machine_class(),
        // The command as given (`chaos --rate 2000 --release`).
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        table(rate, reports)
    );
    let text = format!("{}{section}{}", &text[..begin], &text[end + END.len()..]);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub(crate) fn machine_class() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
        .unwrap_or_else(|| "an unknown CPU".to_owned());
    if model.contains("EPYC") {
        "AMD EPYC".to_owned()
    } else if model.contains("Xeon") {
        "Intel Xeon".to_owned()
    } else {
        model
    }
}
