//! `cargo xtask cluster`: the whole deployment on one machine, each server on a host of its
//! own. A host is a Linux network namespace with one address on a private subnet; a bridge
//! joins them and gives this machine the subnet's first address. Three RabbitMQ brokers in one
//! cluster with quorum queues, PostgreSQL, Memcached, three chat nodes, and nginx in front of
//! them with the deployment's own `docker/nginx.conf`.
//!
//! `up` leaves everything running and records it in `target/cluster/state.json`; `down` ends
//! every process in the cluster's namespaces and removes the namespaces, the bridge and the run
//! directory, whatever state a failed `up` left them in.

mod brokers;
pub mod chaos;
mod checker;
mod hosts;
mod net;
pub(crate) mod smoke;
mod state;
mod status;
mod teardown;
mod templates;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use hosts::Cluster;
use net::Role;
use state::{new_run_dir, random_hex, state_path, State};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by Ctrl-C during `up`: the step under way gives up, and what was started is removed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether this process may build a cluster (it runs as root).
pub fn can_run() -> bool {
    net::is_root()
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[derive(Subcommand)]
pub enum ClusterTask {
    /// Build chat-server, start the cluster, wait until it is ready, print its URL, return.
    Up {
        /// Build and run optimised chat nodes.
        #[arg(long)]
        release: bool,
        /// Build the web client first (otherwise the nodes serve whatever web-client/dist holds).
        #[arg(long)]
        web: bool,
        /// Leave what was started in place when `up` fails, for a look at it (`down` removes it).
        #[arg(long)]
        keep_on_failure: bool,
    },
    /// Stop every process of the cluster and remove its namespaces, bridge and files. Safe to
    /// run again, and after a failed `up`.
    Down,
    /// What runs, what is ready, the brokers' cluster and queues.
    Status,
    /// Two users, one room, a message sent through the load balancer on one WebSocket and
    /// received on another.
    Check {
        /// Another deployment's URL (`http://host:port/`) instead of the cluster's.
        #[arg(long)]
        url: Option<String>,
    },
    /// Run a RabbitMQ tool on a broker's host, e.g.
    /// `cargo xtask cluster rabbitmq -- rabbitmqctl cluster_status`.
    Rabbitmq {
        /// Which broker (1, 2 or 3).
        #[arg(long, default_value_t = 1)]
        broker: u8,
        /// The tool (`rabbitmqctl`, `rabbitmq-queues`, `rabbitmq-diagnostics`) and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        args: Vec<String>,
    },
    /// Rewrite rabbitmq/definitions.quorum.json from rabbitmq/definitions.json.
    Definitions,
}

pub fn run(root: &Path, task: ClusterTask) -> Result<()> {
    match task {
        ClusterTask::Up {
            release,
            web,
            keep_on_failure,
        } => up_with(root, release, web, keep_on_failure, None),
        ClusterTask::Down => teardown::down(root),
        ClusterTask::Status => status::status(root),
        ClusterTask::Check { url } => match url {
            Some(url) => smoke::check(&url),
            // The balancer's address is fixed: no need for the (root-only) state file.
            None => smoke::check(&Cluster::planned(root).balancer_url()?),
        },
        ClusterTask::Rabbitmq { broker, args } => status::rabbitmq(root, broker, &args),
        ClusterTask::Definitions => templates::write_quorum_definitions(root),
    }
}

/// `up`, with chat nodes running `binary` when given (otherwise built here).
fn up_with(
    root: &Path,
    release: bool,
    web: bool,
    keep_on_failure: bool,
    binary: Option<&Path>,
) -> Result<()> {
    let state_file = state_path(root)?;
    let postgres_bin = net::postgres_bin();
    net::preflight(postgres_bin.as_deref())?;
    let leftovers = [net::existing_namespaces()?, net::existing_links()?].concat();
    if state_file.exists() || !leftovers.is_empty() {
        bail!(
            "a cluster, or what is left of one, exists ({}{}): run `cargo xtask cluster down` \
             first",
            state_file.display(),
            if leftovers.is_empty() {
                String::new()
            } else {
                format!("; {}", leftovers.join(", "))
            }
        );
    }
    net::check_subnet_free()?;

    let binary = match binary {
        Some(binary) => binary.to_owned(),
        None => build_server(root, release)?,
    };
    let web_dir = if web {
        crate::web::build_web_client(root, release)?
    } else {
        root.join("web-client/dist")
    };
    if !web_dir.join("index.html").exists() {
        println!(
            "note: {} has no built web client, so the nodes serve the API and WebSocket only \
             (`cargo xtask cluster up --web` builds it)",
            web_dir.display()
        );
    }

    // The daemons run in process groups of their own, so Ctrl-C reaches this process alone.
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    let run_dir = new_run_dir()?;
    let mut state = State {
        up_pid: std::process::id(),
        run_dir,
        erlang_cookie: random_hex(20)?,
        postgres_password: random_hex(16)?,
        postgres_bin: postgres_bin.context("no PostgreSQL binaries")?,
        ..State::default()
    };
    state.save(&state_file)?;
    let started_at = Instant::now();
    match start(root, &mut state, &state_file, &binary, &web_dir) {
        Ok(()) => {
            state.up_seconds = started_at.elapsed().as_secs_f64();
            state.url = state.cluster(root).balancer_url()?;
            state.save(&state_file)?;
            print_summary(root, &state)
        }
        Err(e) => {
            eprintln!("cluster up failed: {e:#}");
            if keep_on_failure {
                eprintln!(
                    "left in place: `cargo xtask cluster status`, then `cargo xtask cluster down`"
                );
            } else {
                eprintln!("removing what was started");
                if let Err(down_error) = teardown::down(root) {
                    eprintln!("and the clean-up failed too: {down_error:#}");
                }
            }
            Err(e)
        }
    }
}

/// Brings the hosts up in dependency order: brokers (the first alone, then the others join
/// it), PostgreSQL and Memcached meanwhile, the chat nodes, the balancer.
fn start(
    root: &Path,
    state: &mut State,
    state_file: &Path,
    binary: &Path,
    web_dir: &Path,
) -> Result<()> {
    let cluster = state.cluster(root);
    std::fs::create_dir(&cluster.run_dir)
        .with_context(|| format!("cannot create {}", cluster.run_dir.display()))?;
    std::fs::set_permissions(
        &cluster.run_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;

    step("network: bridge and namespaces", || {
        net::create_bridge()?;
        cluster.hosts.iter().try_for_each(net::create_host)
    })?;

    let brokers = cluster.brokers();
    let (first_broker, other_brokers) = brokers.split_first().context("no brokers")?;
    for broker in &brokers {
        brokers::configure_broker(&cluster, broker)?;
    }
    let mut first = brokers::start_broker(&cluster, first_broker)?;
    state.record(&first);
    state.save(state_file)?;

    let database = cluster.host(Role::Database)?;
    let mut postgres = step("postgres: initdb", || {
        hosts::configure_postgres(&cluster, database)?;
        hosts::start_postgres(&cluster, database)
    })?;
    state.record(&postgres);
    let cache = cluster.host(Role::Cache)?;
    let mut memcached = hosts::start_memcached(&cluster, cache)?;
    state.record(&memcached);
    state.save(state_file)?;
    step("postgres: ready, database `chat` created", || {
        hosts::wait_postgres(&cluster, database, &mut postgres)
    })?;
    step("memcached: listening", || {
        hosts::wait_listening(&mut memcached, cache.socket(hosts::MEMCACHED_PORT))
    })?;

    step(
        &format!("rabbitmq: {} running", Cluster::broker_name(first_broker)),
        || brokers::wait_broker(&cluster, first_broker, &mut first),
    )?;
    let mut others = Vec::new();
    for broker in other_brokers {
        let started = brokers::start_broker(&cluster, broker)?;
        state.record(&started);
        others.push((*broker, started));
    }
    state.save(state_file)?;
    for (broker, started) in &mut others {
        step(
            &format!("rabbitmq: {} running", Cluster::broker_name(broker)),
            || brokers::wait_broker(&cluster, broker, started),
        )?;
    }
    let running = step("rabbitmq: one cluster", || {
        brokers::wait_clustered(&cluster, Duration::from_secs(60))
    })?;
    println!("    running nodes: {}", running.join(", "));
    step("rabbitmq: quorum queues replicated on every broker", || {
        brokers::grow_quorum_queues(&cluster)
    })?;

    let mut nodes = Vec::new();
    for (index, host) in cluster.nodes().into_iter().enumerate() {
        let number = u8::try_from(index + 1)?;
        let started = hosts::start_node(&cluster, host, number, binary, web_dir)?;
        state.record(&started);
        nodes.push((host, started));
    }
    state.save(state_file)?;
    for (host, started) in &mut nodes {
        step(&format!("chat node {}: /readyz", host.name), || {
            hosts::wait_node(started, host)
        })?;
    }

    let lb = cluster.host(Role::Balancer)?;
    let conf = hosts::configure_balancer(&cluster, lb)?;
    let mut balancer = hosts::start_balancer(&cluster, lb, &conf)?;
    state.record(&balancer);
    state.save(state_file)?;
    step("nginx: /readyz through the balancer", || {
        hosts::wait_balancer(&mut balancer, lb)
    })
}

/// Runs one step of `up`, printing it and how long it took.
fn step<T>(what: &str, run: impl FnOnce() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    let result = run().with_context(|| what.to_owned())?;
    println!("  {what} ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(result)
}

fn print_summary(root: &Path, state: &State) -> Result<()> {
    let cluster = state.cluster(root);
    println!("\ncluster up in {:.1} s", state.up_seconds);
    println!("  load balancer  {}", state.url);
    for node in cluster.nodes() {
        println!(
            "  {:<13}  http://{}/  metrics http://{}/metrics",
            node.name,
            node.socket(hosts::NODE_PORT),
            node.socket(hosts::METRICS_PORT)
        );
    }
    for broker in cluster.brokers() {
        println!(
            "  {:<13}  {}  amqp://{}@{}/%2f",
            broker.name,
            Cluster::broker_name(broker),
            hosts::AMQP_USER,
            broker.socket(hosts::AMQP_PORT)
        );
    }
    println!("  postgres       {}", cluster.database_url()?);
    let cache = cluster.host(Role::Cache)?;
    println!("  memcached      {}", cache.socket(hosts::MEMCACHED_PORT));
    println!("  logs           {}/<host>/", state.run_dir.display());
    println!(
        "\n`cargo xtask cluster check` sends a message through it, `cargo xtask cluster status` \
         shows it, `cargo xtask cluster down` removes it."
    );
    Ok(())
}

pub fn build_server(root: &Path, release: bool) -> Result<PathBuf> {
    let mut build = crate::cargo();
    build
        .current_dir(root)
        .args(["build", "-p", "chat-backend", "--bin", "chat-server"]);
    if release {
        build.arg("--release");
    }
    crate::run(&mut build)?;
    Ok(crate::web::target_dir(root)?
        .join(if release { "release" } else { "debug" })
        .join("chat-server"))
}
