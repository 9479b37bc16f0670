//! `chat-load`: a load generator that speaks the real chat protocol, and the workloads of the
//! benchmark suite.
//!
//! - `conn`: WebSockets to the nodes from several loopback source addresses.
//! - `identity`: signing in and joining rooms — the only module that knows how (see there).
//! - `stats`: counters, HDR latency histograms, per-room sequence checks.
//! - `database`: what PostgreSQL stored, for the storm workload's loss check.
//! - `procstat`: CPU and memory of the processes involved, from /proc.
//! - `host`: the machine during a run: busy cores, work waiting for a core or the disk, steal.
//! - `rooms`, `idle`, `storm`: the workloads; each returns a [`report::RunReport`].
//! - `stages`: where a message's time goes, from the nodes' own histograms.
//! - `report`: the JSON report, the progress bar and the latency-over-time plot.
//! - `tables`: the Markdown tables of BENCHMARKS.md, from reports.
//!
//! Workloads are library functions so a test can run one against in-process nodes.

pub mod conn;
pub mod database;
pub mod host;
pub mod identity;
pub mod idle;
pub mod procstat;
pub mod report;
pub mod rooms;
pub mod stages;
pub mod stats;
pub mod storm;
pub mod tables;

pub use conn::Dialer;
pub use report::RunReport;
pub use rooms::{run_rooms, Pace, RoomsConfig};

use std::net::SocketAddr;
use std::sync::Arc;

/// One chat node under load.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    /// The node's process, when it runs as one (for CPU, memory, and killing it in `storm`).
    pub pid: Option<u32>,
    /// The node's operator's listener, where its `/metrics` are read.
    pub metrics: Option<SocketAddr>,
}

/// The cluster a workload runs against, and how to reach it.
pub struct Target {
    pub nodes: Vec<Node>,
    pub dialer: Arc<Dialer>,
    /// Accounts to reuse instead of signing up again.
    pub accounts: Arc<identity::AccountBook>,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
}

impl Target {
    /// The dialer, for tasks that outlive a borrow of the target.
    pub fn dialer_handle(&self) -> Arc<Dialer> {
        self.dialer.clone()
    }

    /// The processes whose CPU and memory a run reports: the nodes and the shared services.
    pub fn watched(&self) -> Vec<procstat::Watched> {
        let mut watched: Vec<procstat::Watched> = self
            .nodes
            .iter()
            .filter_map(|node| Some(procstat::Watched::pid(&node.name, node.pid?)))
            .collect();
        watched.extend(procstat::Watched::services());
        watched
    }
}

/// A short id that makes this run's room names unique in a reused database.
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}", (nanos / 1000) & 0xff_ffff_ffff)
}
