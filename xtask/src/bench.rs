//! `cargo xtask bench`: the standard benchmark set against a local two-node cluster of release
//! binaries, with its results written into `BENCHMARKS.md`.
//!
//! The nodes run as separate processes on a fresh database (`chat_bench`) and a RabbitMQ prefix
//! of their own; `chat-load` runs each workload with bounded counts and durations and writes a
//! JSON report and an SVG plot per run; `chat-load tables` turns the reports into the tables
//! that replace the part of `BENCHMARKS.md` between the two marker comments.

use crate::services;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const DATABASE: &str = "chat_bench";
const FIRST_PORT: u16 = 8091;
/// The metrics listener of the first node; the others follow.
const FIRST_METRICS_PORT: u16 = 9191;
const BEGIN_MARKER: &str = "<!-- bench:begin -->";
const END_MARKER: &str = "<!-- bench:end -->";
/// Rounds of the CPU check's loop: about 80 ms on one core here, in the debug build `cargo xtask`
/// runs (its own scale: compare it between runs of the bench, not with other programs).
const CPU_CHECK_ROUNDS: u64 = 20_000_000;
/// `chat-load tables` reads idle reports whose label starts with this as one run per node
/// (`chat_load::tables::SPREAD_LABEL`).
const SPREAD_LABEL: &str = "idle-spread";

/// One workload run: its label and `chat-load` arguments (before the common ones).
struct Run {
    label: String,
    args: Vec<String>,
    /// Restart the nodes before this run, so that it starts on a quiet cluster rather than
    /// one still working off the overloaded runs before it.
    fresh_nodes: bool,
    /// Nodes the run needs; the cluster is restarted with this many when it has another count.
    nodes: u16,
    /// One `chat-load` per node, side by side (`--on <index>`, label `<label>-<n>`): for
    /// totals one process cannot hold open.
    per_node: bool,
}

fn run(label: &str, args: &str) -> Run {
    Run {
        label: label.to_owned(),
        args: args.split_whitespace().map(str::to_owned).collect(),
        fresh_nodes: false,
        nodes: 2,
        per_node: false,
    }
}

fn on_fresh_nodes(run: Run) -> Run {
    Run {
        fresh_nodes: true,
        ..run
    }
}

/// The run once per node of a fresh cluster of `nodes`, all at the same time.
fn on_each_of(nodes: u16, run: Run) -> Run {
    Run {
        fresh_nodes: true,
        nodes,
        per_node: true,
        ..run
    }
}

/// The standard set. Storm comes last: it kills node-2.
fn standard_set(quick: bool) -> Vec<Run> {
    if quick {
        return vec![
            run("idle", "idle --connections 1000 --on 0"),
            on_each_of(3, run(SPREAD_LABEL, "idle --connections 400 --hold 5")),
            run(
                "rooms-2000",
                "rooms --rate 2000 --seconds 4 --users 200 --rooms 20",
            ),
            run(
                "rooms-saturation",
                "rooms --seconds 4 --users 200 --rooms 20",
            ),
            on_fresh_nodes(run("storm", "storm --clients 500 --victim 1")),
        ];
    }
    // Idle first, while node-1's heap is fresh: memory freed by earlier runs would absorb the
    // connections' memory and hide it. One process holds at most ~20,000 open files here, and
    // the node needs some for itself.
    let mut runs = vec![run("idle", "idle --connections 18000 --on 0")];
    // The 50,000 of the idle goal, over three nodes with one load process each (each process
    // holds a third), every connection open at the same time.
    runs.push(on_each_of(
        3,
        run(SPREAD_LABEL, "idle --connections 16667 --hold 30"),
    ));
    for rate in [
        1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 8_000, 10_000, 12_000, 15_000,
    ] {
        runs.push(run(
            &format!("rooms-{rate}"),
            &format!("rooms --rate {rate} --seconds 10"),
        ));
    }
    runs.push(run("rooms-saturation", "rooms --seconds 10 --window 16"));
    // Storm measures recovery from a node's death, not from the saturation run before it.
    runs.push(on_fresh_nodes(run(
        "storm",
        "storm --clients 10000 --victim 1",
    )));
    runs
}

/// What `cargo xtask bench` runs, and against which build.
pub struct Options {
    pub quick: bool,
    /// Labels of the runs to make; all of the set when empty.
    pub only: Vec<String>,
    /// Another chat-server binary than this tree's release build.
    pub server: Option<PathBuf>,
    /// Another database than a fresh `chat_bench` on this machine's PostgreSQL (an empty one:
    /// a primary with a synchronous standby, say).
    pub database_url: Option<String>,
}

pub fn bench(root: &Path, options: Options) -> Result<()> {
    let Options {
        quick,
        only,
        server,
        database_url,
    } = options;
    let set: Vec<Run> = standard_set(quick)
        .into_iter()
        .filter(|run| only.is_empty() || only.contains(&run.label))
        .collect();
    if set.is_empty() {
        let labels: Vec<String> = standard_set(quick)
            .into_iter()
            .map(|run| run.label)
            .collect();
        bail!(
            "no run of the set is called {}; the set: {}",
            only.join(", "),
            labels.join(", ")
        );
    }
    // Only the whole set, measured on this tree's build, goes into BENCHMARKS.md and its plots.
    let records = only.is_empty() && server.is_none() && database_url.is_none();
    services::ensure_all()?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // Read before anything is built, so the tables name the code they measured.
    let code = match &server {
        Some(server) => format!("the binary `{}`", server.display()),
        None => code_version(root),
    };
    if database_url.is_none() {
        recreate_database(DATABASE)?;
    }
    crate::run(crate::cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        "chat-backend",
        "-p",
        "chat-load",
    ]))?;
    let target = crate::web::target_dir(root)?;
    let server = server.unwrap_or_else(|| target.join("release").join("chat-server"));
    let load = target.join("release").join("chat-load");
    let reports = target.join("bench");
    let plots = if records {
        root.join("docs").join("bench")
    } else {
        reports.clone()
    };
    std::fs::create_dir_all(&reports)?;
    std::fs::create_dir_all(&plots)?;
    for entry in std::fs::read_dir(&reports)? {
        let path = entry?.path();
        // Reports and the account book: the database is new, so are its accounts.
        if path.extension().is_some_and(|ext| ext == "json") {
            std::fs::remove_file(path)?;
        }
    }

    let prefix = format!("bench{}", std::process::id());
    // Plain TCP, as in the compose deployment (the postgres image has no TLS configured):
    // this machine's PostgreSQL offers TLS, which libpq would otherwise take on loopback.
    let database_url = database_url.unwrap_or_else(|| {
        format!("postgres://postgres@127.0.0.1:5432/{DATABASE}?sslmode=disable")
    });
    let start_nodes = |count: u16| -> Result<Vec<NodeProcess>> {
        (0..count)
            .map(|index| start_node(&server, index, &prefix, &database_url, &reports))
            .collect()
    };
    let cpu_before = cpu_check();
    let wake_before = wake_check()?;
    let mut nodes = start_nodes(2)?;
    let result = run_workloads(
        &load,
        &mut nodes,
        &start_nodes,
        &reports,
        &plots,
        &database_url,
        set,
    );
    for node in &mut nodes {
        stop_node(node);
    }
    delete_topology(&prefix);
    let cpu_after = cpu_check();
    let wake_after = wake_check()?;
    let failures = result?;

    let mut paths: Vec<PathBuf> = std::fs::read_dir(&reports)?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .filter(|path| !path.ends_with("accounts.json"))
        .collect();
    paths.sort_by_key(|path| order_of(path));
    if paths.is_empty() {
        bail!("no workload produced a report");
    }
    let output = Command::new(&load)
        .arg("tables")
        .args(&paths)
        .output()
        .context("cannot run chat-load tables")?;
    if !output.status.success() {
        bail!(
            "chat-load tables failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tables = String::from_utf8_lossy(&output.stdout);
    // BENCHMARKS.md keeps the targets' table; the per-run tables stay beside the reports.
    let full_tables = reports.join("tables.md");
    std::fs::write(&full_tables, tables.as_bytes())
        .with_context(|| format!("cannot write {}", full_tables.display()))?;
    let targets = tables.split("\n### ").next().unwrap_or_default();
    let mut section =
        format!(
        "Command: `cargo xtask bench{}` — {}, {}\n\nMachine: {}; load average before the run: {}; \
         CPU check (one core, a fixed loop, best of five): {cpu_before:.1} ms before the run, \
         {cpu_after:.1} ms after; wake-up check (a byte's round trip between two threads over \
         pipes, best of five): {wake_before:.1} µs before, {wake_after:.1} µs after.\n\n",
        if quick { " --quick" } else { "" },
        now_utc(),
        code,
        machine(),
        load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    section.push_str(targets.trim_end());
    section.push_str(
        "\n\nThe per-run tables (each rate, each stage, the slowest seconds, the machine, idle, \
         storm) are printed by the run and kept in `target/bench/tables.md`.\n",
    );
    if !failures.is_empty() {
        section.push_str("\nRuns that failed:\n\n");
        for failure in &failures {
            section.push_str(&format!("- {failure}\n"));
        }
    }
    println!("{tables}");
    if records {
        rewrite_benchmarks(&root.join("BENCHMARKS.md"), &section)?;
        println!("BENCHMARKS.md updated; reports in {}", reports.display());
    } else {
        println!(
            "{}\nBENCHMARKS.md left as it is (not the whole set on this tree's build); reports and plots in {}",
            section.lines().take(3).collect::<Vec<_>>().join("\n"),
            reports.display()
        );
    }
    Ok(())
}

pub(crate) struct NodeProcess {
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) child: Child,
}

fn start_node(
    server: &Path,
    index: u16,
    prefix: &str,
    database_url: &str,
    logs: &Path,
) -> Result<NodeProcess> {
    start_node_under(
        &[],
        server,
        index,
        prefix,
        database_url,
        logs,
        Duration::from_secs(60),
    )
}

/// What the benchmark sets on its nodes beyond a stock node's settings.
const BENCH_SETTINGS: &[(&str, &str)] = &[
    // One ingest shard: with every process on two shared cores, two persisters working at
    // once made each message slower than one (BENCHMARKS.md, section 6); one shard's
    // persister stores large batches in two lanes of rooms at once.
    ("CHAT_INGEST_SHARDS", "1"),
    // The load comes from four addresses and shares a few accounts: lift the per-user and
    // per-address limits, which would otherwise be what is measured.
    ("CHAT_SEND_RATE_PER_USER", "1000000"),
    ("CHAT_SEND_BURST_PER_USER", "1000000"),
    ("CHAT_SEND_RATE_PER_IP", "1000000"),
    ("CHAT_SEND_BURST_PER_IP", "1000000"),
    ("CHAT_LOGIN_ATTEMPTS_PER_IP", "1000000"),
    ("CHAT_LOGIN_ATTEMPTS_PER_USER", "1000000"),
    ("CHAT_LOGIN_ATTEMPTS_PER_USER_IP", "1000000"),
    ("CHAT_REGISTRATIONS_PER_IP", "1000000"),
    ("CHAT_REST_WRITES_PER_MINUTE_PER_USER", "1000000"),
    ("CHAT_REST_WRITE_BURST_PER_USER", "1000000"),
    ("CHAT_ROOMS_PER_USER_PER_HOUR", "1000000"),
    // The storm's 10,000 clients join their rooms again at once, a few accounts and addresses
    // for all of them.
    ("CHAT_JOIN_RATE_PER_USER", "1000000"),
    ("CHAT_JOIN_BURST_PER_USER", "1000000"),
    ("CHAT_JOIN_RATE_PER_IP", "1000000"),
    ("CHAT_JOIN_BURST_PER_IP", "1000000"),
    // Thousands of sockets share those accounts and addresses; the node's own cap, from its
    // open-file limit, stays.
    ("CHAT_WEBSOCKETS_PER_USER", "0"),
    ("CHAT_WEBSOCKETS_PER_IP", "0"),
    ("CHAT_CONNECTIONS_PER_IP", "0"),
];

/// Starts node `index` of a cluster with the benchmark's settings, run by `wrapper` (a program
/// and its arguments, such as valgrind's) when there is one, and waits until it is ready.
pub(crate) fn start_node_under(
    wrapper: &[&str],
    server: &Path,
    index: u16,
    prefix: &str,
    database_url: &str,
    logs: &Path,
    ready_within: Duration,
) -> Result<NodeProcess> {
    let node = LocalNode {
        server,
        name: format!("node-{}", index + 1),
        addr: format!("127.0.0.1:{}", FIRST_PORT + index),
        metrics_addr: metrics_addr(index),
        prefix,
        database_url,
        logs,
        settings: BENCH_SETTINGS,
    };
    launch_node(wrapper, &node, ready_within)
}

/// A chat node run as a process on this machine, beside others of its deployment.
pub(crate) struct LocalNode<'a> {
    pub(crate) server: &'a Path,
    /// Its node id, and the name of its log file.
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) metrics_addr: String,
    /// The deployment's RabbitMQ prefix, also its Memcached prefix.
    pub(crate) prefix: &'a str,
    pub(crate) database_url: &'a str,
    /// The directory of its log file.
    pub(crate) logs: &'a Path,
    /// Environment variables set beyond a stock node's.
    pub(crate) settings: &'a [(&'a str, &'a str)],
}

/// Starts `node`, run by `wrapper` when there is one, and waits until it is ready.
pub(crate) fn launch_node(
    wrapper: &[&str],
    node: &LocalNode,
    ready_within: Duration,
) -> Result<NodeProcess> {
    // Another process answering there would pass for this node.
    if TcpStream::connect(&node.addr).is_ok() {
        bail!("{} is in use: cannot start {} there", node.addr, node.name);
    }
    let log_path = node.logs.join(format!("{}.log", node.name));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    // `exec` keeps the pid, so the pid the load tool reports on is the node's. The open-file
    // limit is raised to the hard limit first: the idle workload needs thousands of sockets.
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" \"$@\""])
        .args(wrapper)
        .arg(node.server)
        .env("CHAT_NODE_ID", &node.name)
        .env("CHAT_LISTEN", &node.addr)
        .env("CHAT_AMQP_PREFIX", node.prefix)
        // The database is new for every run; cached entries of an earlier run must not be seen.
        .env("CHAT_CACHE_PREFIX", node.prefix)
        .env("DATABASE_URL", node.database_url)
        .env("RUST_LOG", "warn")
        .env("CHAT_METRICS_LISTEN", &node.metrics_addr)
        .envs(node.settings.iter().copied())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", node.server.display()))?;
    if let Err(error) = wait_ready(&node.addr, &mut child, ready_within) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(error.context(format!("{} (log {})", node.name, log_path.display())));
    }
    println!(
        "{} ready on {} (pid {}, log {})",
        node.name,
        node.addr,
        child.id(),
        log_path.display()
    );
    Ok(NodeProcess {
        name: node.name.clone(),
        addr: node.addr.clone(),
        child,
    })
}

/// Where node `index` of a benchmark cluster serves its metrics.
pub(crate) fn metrics_addr(index: u16) -> String {
    format!("127.0.0.1:{}", FIRST_METRICS_PORT + index)
}

pub(crate) fn stop_node(node: &mut NodeProcess) {
    if let Ok(Some(_)) = node.child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = node.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = node.child.kill();
    let _ = node.child.wait();
}

/// Runs each workload; a failed run is reported and the others still run.
fn run_workloads(
    load: &Path,
    nodes: &mut Vec<NodeProcess>,
    start_nodes: &dyn Fn(u16) -> Result<Vec<NodeProcess>>,
    reports: &Path,
    plots: &Path,
    database_url: &str,
    set: Vec<Run>,
) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    for workload in set {
        if workload.fresh_nodes || usize::from(workload.nodes) != nodes.len() {
            for node in nodes.iter_mut() {
                stop_node(node);
            }
            *nodes = start_nodes(workload.nodes)?;
        }
        let node_args: Vec<String> = (nodes.iter().zip(0u16..))
            .flat_map(|(node, index)| {
                [
                    "--node".to_owned(),
                    format!("{}={}@{}", node.name, node.addr, node.child.id()),
                    "--metrics".to_owned(),
                    metrics_addr(index),
                ]
            })
            .collect();
        // (label, extra arguments) of each chat-load process of the run.
        let processes: Vec<(String, Vec<String>)> = if workload.per_node {
            (0..nodes.len())
                .map(|index| {
                    let extra = vec!["--on".to_owned(), index.to_string(), "--quiet".to_owned()];
                    (format!("{}-{}", workload.label, index + 1), extra)
                })
                .collect()
        } else {
            vec![(workload.label.clone(), Vec::new())]
        };
        println!("== {} (load average {})", workload.label, load_average());
        let children = processes
            .iter()
            .map(|(label, extra)| {
                let mut args = workload.args.clone();
                args.extend(node_args.iter().cloned());
                args.extend(extra.iter().cloned());
                args.extend([
                    "--accounts".into(),
                    reports.join("accounts.json").display().to_string(),
                    "--label".into(),
                    label.clone(),
                    "--json".into(),
                    reports.join(format!("{label}.json")).display().to_string(),
                    "--svg".into(),
                    plots.join(format!("{label}.svg")).display().to_string(),
                ]);
                let child = Command::new(load)
                    .args(&args)
                    .env("DATABASE_URL", database_url)
                    .spawn()
                    .context("cannot run chat-load")?;
                Ok((label, child))
            })
            .collect::<Result<Vec<_>>>()?;
        for (label, mut child) in children {
            let status = child.wait().context("cannot wait for chat-load")?;
            if !status.success() {
                failures.push(format!("{label}: chat-load exited with {status}"));
            }
        }
    }
    Ok(failures)
}

/// Reports in the order of the standard set.
fn order_of(path: &Path) -> (usize, String) {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let rank = standard_set(false)
        .iter()
        .position(|run| {
            run.label == stem || (run.per_node && stem.starts_with(&format!("{}-", run.label)))
        })
        .unwrap_or(usize::MAX);
    (rank, stem)
}

pub(crate) fn recreate_database(database: &str) -> Result<()> {
    drop_database(database)?;
    psql(&format!("CREATE DATABASE {database}"))
}

pub(crate) fn drop_database(database: &str) -> Result<()> {
    psql(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
}

fn psql(statement: &str) -> Result<()> {
    crate::run(Command::new("psql").args(["-h", "127.0.0.1", "-U", "postgres", "-qc", statement]))
}

/// Removes the run's durable queues (node queues are exclusive and went with their nodes) and
/// its exchanges. `rabbitmqctl` of RabbitMQ 3.10 has no `delete_exchange`; the broker's own
/// function does it.
pub(crate) fn delete_topology(prefix: &str) {
    let mut queues: Vec<String> = (0..8)
        .map(|shard| format!("{prefix}.ingest.{shard}"))
        .collect();
    queues.push(format!("{prefix}.dead"));
    let deletions = queues
        .iter()
        .map(|queue| vec!["-q".to_owned(), "delete_queue".to_owned(), queue.clone()])
        .chain(["ingest", "delivery", "dead"].iter().map(|kind| {
            let expression = format!(
                "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"{prefix}.{kind}\">>), false, <<\"chat-bench\">>)."
            );
            vec!["-q".to_owned(), "eval".to_owned(), expression]
        }));
    let children: Vec<Child> = deletions
        .filter_map(|args| {
            Command::new("rabbitmqctl")
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok()
        })
        .collect();
    for mut child in children {
        let _ = child.wait();
    }
}

fn wait_ready(addr: &str, node: &mut Child, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = node.try_wait()? {
            bail!("node for {addr} exited ({status}) before it was ready");
        }
        if http_status(addr, "/readyz").is_some_and(|status| status == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("node on {addr} not ready within {within:?}")
}

/// The status code of a plain HTTP/1.1 GET, without an HTTP client dependency.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 32];
    let read = stream.read(&mut head).ok()?;
    let text = String::from_utf8_lossy(&head[..read]);
    text.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Milliseconds one core takes for a fixed loop, the best of five tries: the speed the host gives
/// this machine's cores at the moment. The same build takes the same time on an unchanged
/// machine; a host that is busier with other machines' work shows as a longer time, which is
/// how runs hours apart are told comparable or not.
pub(crate) fn cpu_check() -> f64 {
    (0..5)
        .map(|_| {
            let started = Instant::now();
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            for _ in 0..CPU_CHECK_ROUNDS {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            std::hint::black_box(x);
            started.elapsed().as_secs_f64() * 1000.0
        })
        .fold(f64::INFINITY, f64::min)
}

/// Microseconds for one round trip of a byte between two threads over two pipes, each side
/// asleep until the other writes (two wake-ups), the best of five tries of 20,000: what a
/// hand-off between threads or processes costs on this machine at the moment. The pipeline is
/// made of such hand-offs (BENCHMARKS.md section 1); it is recorded beside the CPU check,
/// which has so far told this kind's machines apart better (BENCHMARKS.md, "How to read").
fn wake_check() -> Result<f64> {
    const ROUND_TRIPS: u32 = 20_000;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let (mut to_echo_reader, mut to_echo) = std::io::pipe()?;
        let (mut from_echo, mut from_echo_writer) = std::io::pipe()?;
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            let mut byte = [0u8; 1];
            for _ in 0..ROUND_TRIPS {
                to_echo_reader.read_exact(&mut byte)?;
                from_echo_writer.write_all(&byte)?;
            }
            Ok(())
        });
        let mut byte = [7u8; 1];
        let started = Instant::now();
        for _ in 0..ROUND_TRIPS {
            to_echo.write_all(&byte)?;
            from_echo.read_exact(&mut byte)?;
        }
        let took = started.elapsed();
        echo.join()
            .map_err(|_| anyhow::anyhow!("the wake-up check's echo thread panicked"))??;
        best = best.min(took.as_secs_f64() * 1e6 / f64::from(ROUND_TRIPS));
    }
    Ok(best)
}

/// Cores, memory and kernel, from /proc.
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {mem_gib:.0} GiB RAM, Linux {}",
        kernel.trim()
    )
}

/// The commit the benchmark builds, and whether the work tree differs from it (apart from the
/// files the benchmark itself rewrites).
pub(crate) fn code_version(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short=10", "HEAD"]) else {
        return "code outside git".to_owned();
    };
    let changed = git(&[
        "status",
        "--porcelain",
        "--",
        ".",
        ":!BENCHMARKS.md",
        ":!docs/bench",
    ])
    .is_some_and(|status| !status.is_empty());
    if changed {
        format!("code at commit `{commit}` with uncommitted changes")
    } else {
        format!("code at commit `{commit}`")
    }
}

pub(crate) fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Replaces what is between the bench markers, keeping the rest of the file.
fn rewrite_benchmarks(path: &Path, section: &str) -> Result<()> {
    rewrite_section(path, (BEGIN_MARKER, END_MARKER), section)
}

/// Replaces what is between two marker comments of a file, keeping the rest of it.
pub(crate) fn rewrite_section(
    path: &Path,
    (begin_marker, end_marker): (&str, &str),
    section: &str,
) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(begin), Some(end)) = (text.find(begin_marker), text.find(end_marker)) else {
        bail!(
            "{} has no {begin_marker} … {end_marker} section",
            path.display()
        );
    };
    if end < begin {
        bail!("the markers in {} are out of order", path.display());
    }
    let updated = format!(
        "{}{begin_marker}\n{section}\n{}",
        &text[..begin],
        &text[end..]
    );
    std::fs::write(path, updated)?;
    Ok(())
}
