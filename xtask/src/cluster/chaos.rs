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

/// The checker's users: each sends `RATE / USERS` messages a second (under the per-user limit
/// of 20), and the deployment registers at most 10 accounts an hour from one address.
const USERS: usize = 8;
const ROOMS: usize = 3;
const RATE: f64 = 120.0;
/// Load before the fault, the fault's length, and the whole load.
const FAULT_AFTER: Duration = Duration::from_secs(3);
const REPAIR_AFTER: Duration = Duration::from_secs(4);
const LOAD: Duration = Duration::from_secs(12);

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
}

impl Fault {
    /// The scenarios of `cargo xtask chaos`; the short suite of `cargo xtask test` runs the
    /// first two.
    const ALL: [Fault; 6] = [
        Fault::KillNode,
        Fault::KillQuorumLeader,
        Fault::DrainNode,
        Fault::PausePostgres,
        Fault::KillMemcached,
        Fault::KillBalancer,
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
        }
    }
}

/// Brings a cluster up with `binary` (built here when `None`), runs every scenario, takes the
/// cluster down, and fails if any scenario broke the delivery contract. With `write`, the
/// figures go into RELIABILITY.md.
pub fn run(
    root: &Path,
    binary: Option<PathBuf>,
    short: bool,
    write: bool,
    keep: bool,
) -> Result<()> {
    let binary = match binary {
        Some(binary) => binary,
        None => super::build_server(root, false)?,
    };
    super::up_with(root, false, false, false, Some(&binary))?;
    let faults = if short {
        &Fault::ALL[..Fault::SHORT]
    } else {
        &Fault::ALL[..]
    };
    let outcome = scenarios(root, &binary, faults);
    let failed = match &outcome {
        Ok(reports) => reports.iter().any(|(_, report)| !report.holds()),
        Err(_) => true,
    };
    if failed {
        keep_logs(root);
    }
    if keep {
        println!("the cluster stays up (`cargo xtask cluster status`, `cargo xtask cluster down`)");
    }
    let down = if keep { Ok(()) } else { teardown::down(root) };
    let reports = outcome?;
    down?;
    println!("\n{}", table(&reports));
    if write {
        write_reliability(root, &reports)?;
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

fn scenarios(root: &Path, binary: &Path, faults: &[Fault]) -> Result<Vec<(Fault, Report)>> {
    let state = State::load(&state_path(root)?)?;
    let cluster = state.cluster(root);
    let balancer: SocketAddr = cluster.host(Role::Balancer)?.socket(BALANCER_PORT).into();
    let sessions = checker::sign_in_users(balancer, "chaos", USERS)?;
    let database_url = cluster.database_url()?;
    let mut reports = Vec::new();
    for (number, fault) in faults.iter().copied().enumerate() {
        println!("==> scenario: {} at {RATE} msgs/s", fault.name());
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
                rate: RATE,
                duration: LOAD,
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
        println!("    {what}\n{}", row(fault, &report));
        reports.push((fault, report));
        wait_healthy(&cluster)?;
    }
    Ok(reports)
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

/// `ROOMS` public rooms of this scenario's own, every user a member.
fn create_rooms(
    balancer: SocketAddr,
    sessions: &[Session],
    scenario: usize,
) -> Result<Vec<RoomId>> {
    let owner = sessions.first().context("no users")?;
    let mut rooms = Vec::new();
    for index in 0..ROOMS {
        let create = CreateRoomRequest {
            name: format!("chaos-{scenario}-{index}"),
            visibility: RoomKind::Public,
        };
        let (status, body) = http(balancer, "POST", "/api/rooms", Some(owner), Some(&create))?;
        if status != 201 {
            bail!("creating a room: HTTP {status}: {body}");
        }
        let room = serde_json::from_str::<Room>(&body)?.room_id;
        for member in &sessions[1..] {
            let path = format!("/api/rooms/{}/join", room.0);
            let (status, body) = http::<()>(balancer, "POST", &path, Some(member), None)?;
            if status != 200 {
                bail!("joining a room: HTTP {status}: {body}");
            }
        }
        rooms.push(room);
    }
    Ok(rooms)
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
            let web_dir = cluster.root.join("web-client/dist");
            let mut started = hosts::start_node(cluster, host, 2, binary, &web_dir)?;
            hosts::wait_node(&mut started, host)?;
            Ok(format!(
                "sent {signal} to {} ({pids:?}), restarted it",
                host.name
            ))
        }
        Fault::PausePostgres => {
            let host = cluster.host(Role::Database)?;
            let pids = signal_host(host, "-STOP")?;
            std::thread::sleep(REPAIR_AFTER);
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
    }
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
fn row(fault: Fault, report: &Report) -> String {
    format!(
        "| {} | {RATE} msgs/s, {USERS} users × {ROOMS} rooms | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |\n",
        fault.name(),
        report.accepted,
        report.refused,
        report.unanswered,
        report.stored,
        report.lost,
        report.duplicated,
        report.reordered,
        report.missing_at_members,
        report.reconnects,
        millis(report.reconnect_p50),
        millis(report.reconnect_p99),
        millis(report.worst_latency),
        report.steady_after.map_or_else(|| "-".to_owned(), millis),
    )
}

fn table(reports: &[(Fault, Report)]) -> String {
    let mut text = String::from(
        "| Scenario | Load | Accepted | Refused | Unanswered | Stored | Lost | Duplicated | \
         Reordered | Missing at members | Reconnects | Reconnect p50 / p99 | Worst send→deliver | \
         Steady after |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (fault, report) in reports {
        text.push_str(&row(*fault, report));
    }
    text
}

const BEGIN: &str = "<!-- cargo xtask chaos: begin -->";
const END: &str = "<!-- cargo xtask chaos: end -->";

/// Replaces the chaos section of RELIABILITY.md with this run's table.
fn write_reliability(root: &Path, reports: &[(Fault, Report)]) -> Result<()> {
    let path = root.join("RELIABILITY.md");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        bail!("{} has no chaos section ({BEGIN} … {END})", path.display());
    };
    let date = net::output(Command::new("date").args(["-u", "+%Y-%m-%d"]))?;
    let section = format!(
        "{BEGIN}\nRun of {} on {} (`cargo xtask chaos`):\n\n{}{END}",
        date.trim(),
        machine_class(),
        table(reports)
    );
    let text = format!("{}{section}{}", &text[..begin], &text[end + END.len()..]);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn machine_class() -> String {
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
