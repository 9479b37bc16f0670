//! The `idle` workload: N signed-in connections held open on one node, doing nothing, to
//! measure the node's resident memory per connection.
//!
//! One process can hold only as many connections as it may open files, so a total larger than
//! that is reached with one `idle` process per node, run side by side. Each report records when
//! its connections were all open and when they were let go, so the runs can be checked to have
//! held theirs at the same time (see `tables`).

use crate::identity::{self, Account, Session};
use crate::procstat::{rss_bytes, CpuMeter};
use crate::report::{self, RunReport, SequenceChecks};
use crate::stats::Recorder;
use crate::Target;
use futures::{StreamExt, TryStreamExt};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleConfig {
    pub connections: usize,
    /// Index of the node in the target that holds them.
    pub node: usize,
    /// How long to wait after the last connection before reading the node's memory.
    pub settle: Duration,
    /// Connections being opened at once.
    pub concurrency: usize,
    /// Users the connections are spread over.
    pub accounts: usize,
    /// How long to keep the connections open after measuring, so that idle runs on other
    /// nodes overlap with this one.
    pub hold: Duration,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IdleResult {
    pub requested: usize,
    pub established: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub connect_seconds: f64,
    pub node_rss_before_mib: Option<f64>,
    pub node_rss_after_mib: Option<f64>,
    pub rss_per_connection_kib: Option<f64>,
    /// The node that held the connections.
    #[serde(default)]
    pub node: String,
    /// Wall-clock times (ms since the Unix epoch) when every connection was open and when they
    /// were let go.
    #[serde(default)]
    pub held_from_unix_ms: u64,
    #[serde(default)]
    pub held_until_unix_ms: u64,
}

impl IdleResult {
    /// How long (ms) every one of these runs held all of its connections at once; `None` if
    /// they never did.
    pub fn held_together_ms(runs: &[IdleResult]) -> Option<u64> {
        let latest_start = runs.iter().map(|r| r.held_from_unix_ms).max()?;
        let earliest_end = runs.iter().map(|r| r.held_until_unix_ms).min()?;
        (latest_start > 0 && latest_start < earliest_end).then(|| earliest_end - latest_start)
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

pub async fn run_idle(
    target: &Target,
    config: &IdleConfig,
    label: &str,
) -> anyhow::Result<RunReport> {
    let node = target
        .nodes
        .get(config.node)
        .ok_or_else(|| anyhow::anyhow!("no node {}", config.node))?;
    let cpu = CpuMeter::start(target.watched());
    // Sign up through another node when there is one: password hashing grows the heap of
    // the node that does it, and freed heap would then absorb the connections' memory.
    let sign_up_at = target.nodes[(config.node + 1) % target.nodes.len()].addr;
    // Connections share a few accounts: registering is slow on purpose (argon2), and what is
    // measured is the cost of a connection, not of a user.
    let accounts: Vec<Account> =
        futures::stream::iter(0..config.accounts.clamp(1, config.connections.max(1)))
            .map(|n| {
                let name = format!("load-i{n}");
                async move {
                    identity::sign_up(&target.dialer, &target.accounts, sign_up_at, &name).await
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
    // Read after the sign-ups, whose password hashing grows the heap on its own.
    tokio::time::sleep(config.settle).await;
    let rss_before = node.pid.and_then(rss_bytes);
    let bar = report::progress_bar(target.progress, Duration::ZERO, label);
    bar.set_length(config.connections as u64);
    let started = Instant::now();
    let results: Vec<anyhow::Result<Session>> = futures::stream::iter(0..config.connections)
        .map(|n| {
            let account = &accounts[n % accounts.len()];
            let bar = bar.clone();
            async move {
                let session = identity::connect(&target.dialer, node.addr, account).await;
                bar.inc(1);
                session
            }
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect()
        .await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let held_from_unix_ms = unix_ms();
    bar.finish_and_clear();
    let mut sessions = Vec::new();
    let mut first_error = None;
    let mut failed = 0;
    for result in results {
        match result {
            Ok(session) => sessions.push(session),
            Err(error) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    tokio::time::sleep(config.settle).await;
    let rss_after = node.pid.and_then(rss_bytes);
    let cpu = cpu.finish();
    let established = sessions.len();
    tokio::time::sleep(config.hold).await;
    let held_until_unix_ms = unix_ms();
    drop(sessions);
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let result = IdleResult {
        requested: config.connections,
        established,
        failed,
        first_error,
        connect_seconds,
        node_rss_before_mib: rss_before.map(mib),
        node_rss_after_mib: rss_after.map(mib),
        rss_per_connection_kib: match (rss_before, rss_after) {
            (Some(before), Some(after)) if established > 0 => {
                Some(after.saturating_sub(before) as f64 / 1024.0 / established as f64)
            }
            _ => None,
        },
        node: node.name.clone(),
        held_from_unix_ms,
        held_until_unix_ms,
    };
    let recorder = Recorder::new();
    let snapshot = recorder.counters.snapshot();
    let mut report = RunReport::new(
        label,
        "idle",
        serde_json::to_value(config)?,
        started.elapsed(),
        snapshot,
        snapshot,
        &recorder,
        SequenceChecks::default(),
        cpu,
        true,
    );
    report.extra = serde_json::to_value(result)?;
    Ok(report)
}
