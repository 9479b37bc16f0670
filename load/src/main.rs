//! `chat-load`: runs one workload against running chat nodes and writes its report.

use anyhow::{bail, Context};
use chat_load::identity::AccountBook;
use chat_load::idle::{run_idle, IdleConfig};
use chat_load::storm::{run_storm, StormConfig};
use chat_load::{report, run_rooms, Dialer, Node, Pace, RoomsConfig, RunReport, Target};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "chat-load", about = "Load generator for the chat nodes")]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(clap::Args)]
struct Common {
    /// A node: `ADDR` or `NAME=ADDR` or `NAME=ADDR@PID` (the pid lets the tool report the
    /// node's CPU and memory, and kill it in `storm`). Repeat for each node.
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// The metrics address (`CHAT_METRICS_LISTEN`) of each node, in `--node` order: the
    /// pipeline's stages are read there.
    #[arg(long = "metrics")]
    metrics: Vec<SocketAddr>,
    /// Source addresses to spread client sockets over (`--first-source` and the N-1 after it).
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// The first source address: this machine's, as are the ones after it.
    #[arg(long, default_value_t = std::net::Ipv4Addr::LOCALHOST)]
    first_source: std::net::Ipv4Addr,
    /// Name of the run in reports and tables.
    #[arg(long)]
    label: Option<String>,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to draw the latency-over-time plot (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// A file of accounts to reuse between runs (created if missing), so that runs do not
    /// sign up (and hash passwords) again.
    #[arg(long)]
    accounts: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Workload {
    /// U users in R rooms of M members, sending at a rate or as fast as acks allow.
    Rooms {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Total messages per second offered. Without it: saturation with `--window`.
        #[arg(long)]
        rate: Option<f64>,
        /// Unacknowledged sends each user keeps in flight in saturation.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
    },
    /// N idle signed-in connections on one node; reports its memory per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Index of the node (in --node order) that holds them.
        #[arg(long, default_value_t = 0)]
        on: usize,
        /// Seconds to keep the connections open after measuring (to overlap with idle runs
        /// on other nodes).
        #[arg(long, default_value_t = 0)]
        hold: u64,
    },
    /// N clients on a node that is killed; time until all have resumed elsewhere, nothing lost.
    Storm {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Index of the node (in --node order) to kill; needs its pid.
        #[arg(long, default_value_t = 1)]
        victim: usize,
        /// Total messages per second sent by the clients.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// PostgreSQL URL of the nodes' database, to check every accepted send is stored.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// Users the clients are spread over (a node takes at most 20 WebSockets of a user by
        /// default).
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Index of a node (a load balancer in front of the others) that the clients reconnect
        /// through, and no observer uses; without it they reconnect to the other nodes directly.
        #[arg(long)]
        reconnect_via: Option<usize>,
    },
    /// Prints the Markdown result tables of BENCHMARKS.md from JSON reports.
    Tables { reports: Vec<PathBuf> },
}

fn parse_node(index: usize, text: &str) -> anyhow::Result<Node> {
    let (name, rest) = match text.split_once('=') {
        Some((name, rest)) => (name.to_owned(), rest),
        None => (format!("node-{}", index + 1), text),
    };
    let (addr, pid) = match rest.split_once('@') {
        Some((addr, pid)) => (addr, Some(pid.parse().context("bad pid")?)),
        None => (rest, None),
    };
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address {addr}"))?;
    Ok(Node {
        name,
        addr,
        pid,
        metrics: None,
    })
}

fn target(common: &Common) -> anyhow::Result<Target> {
    let mut nodes = (common.nodes.iter().enumerate())
        .map(|(i, text)| parse_node(i, text))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (node, metrics) in nodes.iter_mut().zip(&common.metrics) {
        node.metrics = Some(*metrics);
    }
    let accounts = match &common.accounts {
        Some(path) => AccountBook::open(path)?,
        None => AccountBook::default(),
    };
    Ok(Target {
        nodes,
        accounts: Arc::new(accounts),
        dialer: Arc::new(Dialer::from(common.first_source, common.sources)),
        progress: !common.quiet,
    })
}

fn finish(common: &Common, target: &Target, report: &RunReport) -> anyhow::Result<()> {
    target.accounts.save()?;
    println!("{}", report.summary());
    if !report.extra.is_null() {
        println!("  {}", report.extra);
    }
    if let Some(path) = &common.json {
        report.save_json(path)?;
    }
    // A run without traffic (idle) has no latency to draw.
    if let (Some(path), false) = (&common.svg, report.timeline.is_empty()) {
        report::plot_svg(report, path)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let limit = chat_load::conn::raise_open_files_limit()?;
    match cli.workload {
        Workload::Rooms {
            common,
            users,
            rooms,
            members,
            rate,
            window,
            seconds,
            body_bytes,
        } => {
            let config = RoomsConfig {
                users,
                rooms,
                members,
                pace: rate.map(Pace::Rate).unwrap_or(Pace::Window(window)),
                duration: Duration::from_secs(seconds),
                body_bytes,
                ..RoomsConfig::default()
            };
            let label = common.label.clone().unwrap_or_else(|| "rooms".into());
            let target = target(&common)?;
            let report = run_rooms(&target, &config, &label).await?;
            finish(&common, &target, &report)
        }
        Workload::Idle {
            common,
            connections,
            on,
            hold,
        } => {
            if connections as u64 + 100 > limit {
                eprintln!("note: {connections} connections exceed this process's open-file limit ({limit}); expect failures");
            }
            let config = IdleConfig {
                connections,
                node: on,
                settle: Duration::from_secs(2),
                concurrency: 256,
                accounts: 100,
                hold: Duration::from_secs(hold),
            };
            let label = common.label.clone().unwrap_or_else(|| "idle".into());
            let target = target(&common)?;
            let report = run_idle(&target, &config, &label).await?;
            finish(&common, &target, &report)
        }
        Workload::Storm {
            common,
            clients,
            members,
            victim,
            rate,
            database_url,
            users,
            reconnect_via,
        } => {
            let config = StormConfig {
                clients,
                members,
                victim,
                rate,
                before_kill: Duration::from_secs(3),
                after_resume: Duration::from_secs(2),
                resume_timeout: Duration::from_secs(60),
                setup_concurrency: 128,
                accounts: users,
                reconnect_via,
                database_url,
            };
            let label = common.label.clone().unwrap_or_else(|| "storm".into());
            let target = target(&common)?;
            let report = run_storm(&target, &config, &label).await?;
            finish(&common, &target, &report)
        }
        Workload::Tables { reports } => {
            if reports.is_empty() {
                bail!("no reports given");
            }
            let reports = (reports.iter())
                .map(|path| RunReport::load_json(path))
                .collect::<anyhow::Result<Vec<_>>>()?;
            print!("{}", chat_load::tables::tables(&reports));
            Ok(())
        }
    }
}
