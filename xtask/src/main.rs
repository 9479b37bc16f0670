//! Build and run tasks: `cargo xtask up`, `cargo xtask test`, `cargo xtask bench`,
//! `cargo xtask instructions`, `cargo xtask audit`, `cargo xtask web`, `cargo xtask web-bench`,
//! `cargo xtask cluster`, `cargo xtask backup`, `cargo xtask restore`,
//! `cargo xtask upgrade-check`.

mod audit;
mod backup;
mod bench;
mod cluster;
mod instructions;
mod services;
mod upgrade_check;
mod web;
mod web_bench;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run and test the chat system")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the web client and run a local cluster of chat nodes until Ctrl-C.
    Up {
        /// Number of chat nodes.
        #[arg(long, default_value_t = 2)]
        nodes: u16,
        /// Port of the first node; the others follow.
        #[arg(long, default_value_t = 8081)]
        port: u16,
        /// Build optimised binaries.
        #[arg(long)]
        release: bool,
    },
    /// Run every test: unit, integration against the real services, and browser tests.
    Test {
        /// Extra arguments passed to `cargo test` (after `--`, e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the benchmark suite against a local two-node cluster and update BENCHMARKS.md.
    Bench {
        /// A short run of each workload (about a minute in all).
        #[arg(long)]
        quick: bool,
        /// Only these runs of the set, by label (`rooms-2000,rooms-saturation`); the tables are
        /// printed and BENCHMARKS.md is left as it is.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// A chat-server binary to measure instead of this tree's release build; the tables are
        /// printed and BENCHMARKS.md is left as it is.
        #[arg(long)]
        server: Option<PathBuf>,
        /// An empty database to run the nodes on instead of a fresh `chat_bench` on
        /// 127.0.0.1:5432 (`cargo run -p e2e-tests --example postgres_pair` prints the URL of a
        /// primary with a synchronous standby); the tables are printed and BENCHMARKS.md is left
        /// as it is.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Count the instructions each node executes per message, under callgrind: far steadier
    /// than time on a shared machine, for telling whether a change made messages cheaper.
    Instructions {
        /// Messages a second offered (the nodes run about fifty times slower under callgrind).
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Seconds of the shorter of the two counted runs; the other runs twice as long.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// How many times to count the pair of runs (on the same nodes); the median is reported.
        #[arg(long, default_value_t = 3)]
        repeat: u32,
        /// A chat-server binary to count instead of this tree's release build.
        #[arg(long)]
        server: Option<PathBuf>,
    },
    /// Check the dependencies against the RustSec advisory database, offline (cargo-deny).
    Audit {
        /// A copy of the RustSec advisory-db [default: ../shared/advisory-db]
        #[arg(long, env = "CHAT_ADVISORY_DB")]
        db: Option<PathBuf>,
    },
    /// The whole deployment on this machine, one network namespace per server: three clustered
    /// RabbitMQ brokers with quorum queues, PostgreSQL, Memcached, three chat nodes, nginx.
    Cluster {
        #[command(subcommand)]
        task: cluster::ClusterTask,
    },
    /// Faults under load on a cluster of its own (`cluster up` … `cluster down`): chat nodes
    /// SIGKILLed and drained, the quorum leader's broker SIGKILLed, PostgreSQL paused,
    /// Memcached and nginx SIGKILLed, each while the delivery checker sends through the load
    /// balancer. Fails on any message lost, doubled or out of order; writes the figures into
    /// RELIABILITY.md. Needs root.
    Chaos {
        /// Only the scenarios `cargo xtask test` runs (a chat node and the quorum leader's
        /// broker SIGKILLed); leaves RELIABILITY.md as it is.
        #[arg(long)]
        short: bool,
        /// Check only: leave RELIABILITY.md as it is.
        #[arg(long)]
        check_only: bool,
        /// Leave the cluster up after the run, for a look at it.
        #[arg(long)]
        keep: bool,
        /// Messages a second over all users (15 a second each, 4 users to a source address).
        #[arg(long, default_value_t = cluster::chaos::SHORT_RATE)]
        rate: f64,
        /// Only these scenarios (`kill-node,stop-postgres`…); leaves RELIABILITY.md as it is.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Run the cluster's nodes on a release build of chat-server (a debug build by default).
        #[arg(long)]
        release: bool,
    },
    /// Back up the chat database into one file (pg_dump, custom format), while it is in use.
    Backup {
        /// The database, as a libpq URL.
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/chat"
        )]
        database_url: String,
        /// The backup file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into an empty database (pg_restore, in one transaction).
    Restore {
        /// The database to fill, created empty beforehand, as a libpq URL (never taken from
        /// the environment: a restore names its target).
        #[arg(long)]
        database_url: String,
        /// The backup file `cargo xtask backup` wrote.
        file: PathBuf,
    },
    /// A rolling upgrade's mixed cluster, checked: a node of `<commit>` and a node of this tree
    /// on one fresh database and RabbitMQ prefix, two users, one on each, in one room; fails
    /// on any message lost, doubled or out of order, live, in history or in a resume.
    UpgradeCheck {
        /// The release upgraded from (any commit git knows, e.g. `127507b`).
        commit: String,
        /// Write the result into UPGRADING.md (between its `upgrade-check` markers).
        #[arg(long)]
        write: bool,
    },
    /// Build the web client into web-client/dist.
    Web {
        #[arg(long)]
        release: bool,
    },
    /// Measure the release web client (asset sizes, time to interactive in headless Chromium)
    /// and update the web client section of BENCHMARKS.md.
    WebBench {
        /// Page loads measured per width and kind of visit; the median is reported.
        #[arg(long, default_value_t = 10)]
        samples: u32,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Task::Up {
            nodes,
            port,
            release,
        } => up(&root, nodes, port, release),
        Task::Test { args } => test(&root, &args),
        Task::Bench {
            quick,
            only,
            server,
            database_url,
        } => bench::bench(
            &root,
            bench::Options {
                quick,
                only,
                server,
                database_url,
            },
        ),
        Task::Instructions {
            rate,
            seconds,
            repeat,
            server,
        } => instructions::instructions(
            &root,
            instructions::Options {
                rate,
                seconds,
                repeat,
                server,
            },
        ),
        Task::Audit { db } => audit::audit(&root, db),
        Task::Cluster { task } => cluster::run(&root, task),
        Task::Chaos {
            short,
            check_only,
            keep,
            rate,
            only,
            release,
        } => {
            let write = !check_only && !short && only.is_empty();
            let scope = if short {
                cluster::chaos::Scope::Short
            } else if only.is_empty() {
                cluster::chaos::Scope::All
            } else {
                cluster::chaos::Scope::Only(only)
            };
            let binary = if release {
                Some(cluster::build_server(&root, true)?)
            } else {
                None
            };
            cluster::chaos::run(&root, binary, rate, scope, write, keep)
        }
        Task::Backup { database_url, out } => {
            backup::backup(&database_url, &out)?;
            println!("backup written to {}", out.display());
            Ok(())
        }
        Task::Restore { database_url, file } => {
            backup::restore(&database_url, &file)?;
            println!("{} restored", file.display());
            Ok(())
        }
        Task::UpgradeCheck { commit, write } => upgrade_check::upgrade_check(&root, &commit, write),
        Task::Web { release } => {
            let dist = web::build_web_client(&root, release)?;
            println!("web client built in {}", dist.display());
            web::print_sizes(&dist)
        }
        Task::WebBench { samples } => web_bench::web_bench(&root, samples),
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    services::ensure_all()?;
    services::ensure_browser()?;
    let target = web::target_dir(root)?;
    let axe_core = services::ensure_axe_core(&target)?;
    let test_runner = services::wasm_bindgen_test_runner()?;
    let dist = web::build_web_client(root, false)?;
    // Tests in which a node dies run it as a process: `chat-server` is built by this same
    // command (the backend's own command-line tests need it), with the features the whole
    // workspace's tests unify to, so the dependencies are compiled once.
    let mut command = cargo();
    command
        .current_dir(root)
        .args(["test", "--workspace", "--exclude", "web-client"])
        .env("CHAT_WEB_DIR", &dist)
        .env("AXE_CORE_JS", &axe_core)
        .env("CHAT_SCREENSHOT_DIR", target.join("screenshots"));
    if !args.is_empty() {
        command.arg("--").args(args);
    }
    run(&mut command)?;

    // The client's own tests: the plain ones on the host, then the wasm ones in headless
    // Chromium (wasm-bindgen-test-runner drives it through chromedriver).
    let mut host = cargo();
    host.current_dir(root).args(["test", "-p", "web-client"]);
    if !args.is_empty() {
        host.arg("--").args(args);
    }
    run(&mut host)?;
    let mut wasm = cargo();
    wasm.current_dir(root)
        .args([
            "test",
            "-p",
            "web-client",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", &test_runner)
        .env("CHROMEDRIVER", "/usr/bin/chromedriver")
        .env(
            "WASM_BINDGEN_TEST_TIMEOUT",
            std::env::var("WASM_BINDGEN_TEST_TIMEOUT").unwrap_or_else(|_| "60".into()),
        );
    if !args.is_empty() {
        wasm.arg("--").args(args);
    }
    run(&mut wasm)?;

    // The fault suite on a three-broker cluster, with the chat-server the tests built. It
    // needs root (network namespaces); a filtered run skips it.
    if !args.is_empty() {
        return Ok(());
    }
    if !cluster::can_run() {
        println!("chaos suite skipped: it needs root, for network namespaces");
        return Ok(());
    }
    let binary = web::target_dir(root)?.join("debug").join("chat-server");
    cluster::chaos::run(
        root,
        Some(binary),
        cluster::chaos::SHORT_RATE,
        cluster::chaos::Scope::Short,
        false,
        false,
    )
}

/// The metrics listener of `up`'s first node; the others follow.
const METRICS_PORT: u16 = 9091;

fn up(root: &Path, nodes: u16, port: u16, release: bool) -> Result<()> {
    services::ensure_all()?;
    services::ensure_database("chat")?;
    let dist = web::build_web_client(root, release)?;
    let mut build = cargo();
    build
        .current_dir(root)
        .args(["build", "-p", "chat-backend", "--bin", "chat-server"]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let target = web::target_dir(root)?;
    let binary = target
        .join(if release { "release" } else { "debug" })
        .join("chat-server");

    let stopping = Arc::new(AtomicBool::new(false));
    {
        let stopping = stopping.clone();
        // Ctrl-C reaches the nodes too (same process group); this process only waits for them.
        ctrlc::set_handler(move || stopping.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }

    let mut children: Vec<(String, Child)> = Vec::new();
    for index in 0..nodes {
        let node_id = format!("node-{}", index + 1);
        let listen = format!("127.0.0.1:{}", port + index);
        let metrics = format!("127.0.0.1:{}", METRICS_PORT + index);
        let child = Command::new(&binary)
            .env("CHAT_NODE_ID", &node_id)
            .env("CHAT_LISTEN", &listen)
            .env("CHAT_METRICS_LISTEN", &metrics)
            .env("CHAT_WEB_DIR", &dist)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        println!("{node_id}: http://{listen}/  (metrics: http://{metrics}/metrics)");
        children.push((node_id, child));
    }
    println!("Open two of the URLs above in two browser tabs. Ctrl-C stops the cluster.");

    loop {
        if stopping.load(Ordering::SeqCst) {
            for (_, child) in &children {
                // SIGTERM in case the node did not get the terminal's SIGINT (a detached run).
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
            for (node_id, child) in &mut children {
                let status = child.wait()?;
                println!("{node_id} stopped ({status})");
            }
            return Ok(());
        }
        for (node_id, child) in &mut children {
            if let Some(status) = child.try_wait()? {
                if !stopping.load(Ordering::SeqCst) {
                    println!("{node_id} exited ({status}); stopping the cluster");
                    stopping.store(true, Ordering::SeqCst);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
