//! `cargo xtask instructions`: the instructions each node executes per message, counted by
//! callgrind.
//!
//! Time on this kind of machine moves with whatever else its host runs: the same build's p99 or
//! CPU share can differ by half between two runs minutes apart. An instruction count moves far
//! less: callgrind counts what the node's own code executes (not the kernel's work for it), and
//! the same build under the same load has counted the same to within 0.2% on one machine and
//! within 6% on another (how many messages share a batch follows the timing). That makes it the
//! way to tell whether a change to the node's code made a message cheaper, given a difference
//! beyond that spread or several counts of each build.
//!
//! Two nodes run under callgrind with the benchmark's settings; `chat-load` offers the rooms
//! workload at a low rate (the nodes run some fifty times slower under callgrind) twice, for
//! `seconds` and for twice that. Each run's count includes connecting and joining the users; the
//! difference between the two is what the extra messages cost, per message sent. The pair is
//! counted `repeat` times on the same nodes (a pair takes about a minute; starting the nodes
//! under callgrind takes several), and the median pair is the result, beside the spread of all.

use crate::bench::{self, NodeProcess};
use crate::services;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DATABASE: &str = "chat_instructions";
const USERS: &str = "200";
const ROOMS: &str = "20";
/// Signing up, starting and stopping under callgrind take minutes rather than seconds.
const READY_UNDER_CALLGRIND: Duration = Duration::from_secs(300);
const DUMP_TIMEOUT: Duration = Duration::from_secs(60);

/// One counted run: messages sent, and each node's instructions.
struct Counted {
    sent: u64,
    instructions: Vec<u64>,
}

/// What `cargo xtask instructions` counts.
pub struct Options {
    pub rate: u32,
    pub seconds: u32,
    pub repeat: u32,
    pub server: Option<PathBuf>,
}

pub fn instructions(root: &Path, options: Options) -> Result<()> {
    let Options {
        rate,
        seconds,
        repeat,
        server,
    } = options;
    services::ensure_all()?;
    for tool in ["valgrind", "callgrind_control"] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
        if !found {
            bail!("{tool} not found: install valgrind");
        }
    }
    let mut build = crate::cargo();
    build
        .current_dir(root)
        .args(["build", "--release", "-p", "chat-load"]);
    if server.is_none() {
        build.args(["-p", "chat-backend"]);
    }
    crate::run(&mut build)?;
    let target = crate::web::target_dir(root)?;
    let server = server.unwrap_or_else(|| target.join("release").join("chat-server"));
    let load = target.join("release").join("chat-load");
    let dir = target.join("instructions");
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(&dir)? {
        std::fs::remove_file(entry?.path())?;
    }

    bench::recreate_database(DATABASE)?;
    let prefix = format!("instructions{}", std::process::id());
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{DATABASE}?sslmode=disable");
    let cluster = Cluster {
        server: &server,
        load: &load,
        dir: &dir,
        prefix: &prefix,
        database_url: &database_url,
    };
    let result = cluster.count(rate, seconds, repeat.max(1));
    bench::delete_topology(&prefix);
    let dropped = bench::drop_database(DATABASE);
    let pairs = result?;

    println!(
        "\nInstructions per message sent (callgrind; {}; {USERS} users in {ROOMS} rooms at {rate} msgs/s, \
         {seconds} s and {} s, {} times):",
        server.display(),
        seconds * 2,
        pairs.len()
    );
    let estimates: Vec<Estimate> = pairs.iter().map(Estimate::of).collect();
    for (index, estimate) in estimates.iter().enumerate() {
        let nodes = estimate
            .per_node
            .iter()
            .enumerate()
            .map(|(node, count)| format!("node-{} {count}", node + 1))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "  pair {}: {:>9} per message ({nodes}; {} and {} messages sent)",
            index + 1,
            estimate.both(),
            estimate.sent.0,
            estimate.sent.1
        );
    }
    let mut by_total: Vec<&Estimate> = estimates.iter().collect();
    by_total.sort_by_key(|estimate| estimate.both());
    let median = by_total[by_total.len() / 2];
    let (lowest, highest) = (by_total[0].both(), by_total[by_total.len() - 1].both());
    for (node, count) in median.per_node.iter().enumerate() {
        println!("  node-{}: {count:>9} per message (median pair)", node + 1);
    }
    println!(
        "  both:   {:>9} per message (median pair; all pairs {lowest} to {highest}, a spread of {:.1}%)",
        median.both(),
        spread_percent(lowest, highest)
    );
    dropped
}

/// One pair's instructions per extra message sent, per node.
struct Estimate {
    per_node: Vec<u64>,
    sent: (u64, u64),
}

impl Estimate {
    fn of((short, long): &(Counted, Counted)) -> Estimate {
        let extra = long.sent.saturating_sub(short.sent).max(1);
        let per_node = short
            .instructions
            .iter()
            .zip(&long.instructions)
            .map(|(a, b)| b.saturating_sub(*a) / extra)
            .collect();
        Estimate {
            per_node,
            sent: (short.sent, long.sent),
        }
    }

    fn both(&self) -> u64 {
        self.per_node.iter().sum()
    }
}

/// How far apart the highest and the lowest count are, in percent of the lowest.
fn spread_percent(lowest: u64, highest: u64) -> f64 {
    if lowest == 0 {
        return 0.0;
    }
    (highest - lowest) as f64 * 100.0 / lowest as f64
}

struct Cluster<'a> {
    server: &'a Path,
    load: &'a Path,
    dir: &'a Path,
    prefix: &'a str,
    database_url: &'a str,
}

impl Cluster<'_> {
    fn count(&self, rate: u32, seconds: u32, repeat: u32) -> Result<Vec<(Counted, Counted)>> {
        // Accounts and rooms first, with the nodes at full speed: they go into the account book
        // the counted runs use.
        let mut nodes = self.start(&[], Duration::from_secs(60))?;
        let setup = self.load_run(&nodes, "setup", 20, 2);
        stop(&mut nodes);
        setup?;

        let out_file = format!(
            "--callgrind-out-file={}/callgrind.%p.out",
            self.dir.display()
        );
        let wrapper = ["valgrind", "--tool=callgrind", out_file.as_str()];
        let mut nodes = self.start(&wrapper, READY_UNDER_CALLGRIND)?;
        let counted = (|| {
            self.load_run(&nodes, "warm", 20, 3)?;
            (1..=repeat)
                .map(|pair| {
                    let short = self.counted_run(&nodes, &format!("short{pair}"), rate, seconds)?;
                    let long =
                        self.counted_run(&nodes, &format!("long{pair}"), rate, seconds * 2)?;
                    Ok((short, long))
                })
                .collect()
        })();
        stop(&mut nodes);
        counted
    }

    fn start(&self, wrapper: &[&str], ready_within: Duration) -> Result<Vec<NodeProcess>> {
        (0..2)
            .map(|index| {
                bench::start_node_under(
                    wrapper,
                    self.server,
                    index,
                    self.prefix,
                    self.database_url,
                    self.dir,
                    ready_within,
                )
            })
            .collect()
    }

    /// A rooms run between zeroing the nodes' counters and dumping them.
    fn counted_run(
        &self,
        nodes: &[NodeProcess],
        label: &str,
        rate: u32,
        seconds: u32,
    ) -> Result<Counted> {
        for node in nodes {
            callgrind_control("-z", node)?;
        }
        let sent = self.load_run(nodes, label, rate, seconds)?;
        let instructions = nodes
            .iter()
            .map(|node| {
                let before = newest_dump(self.dir, node.child.id())?.map(|(part, _)| part);
                callgrind_control("-d", node)?;
                wait_for_dump(self.dir, node.child.id(), before)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Counted { sent, instructions })
    }

    /// Runs the rooms workload; returns the messages sent.
    fn load_run(&self, nodes: &[NodeProcess], label: &str, rate: u32, seconds: u32) -> Result<u64> {
        let report = self.dir.join(format!("{label}.json"));
        let mut command = Command::new(self.load);
        command.args(["rooms", "--users", USERS, "--rooms", ROOMS, "--quiet"]);
        command.args([
            "--rate",
            &rate.to_string(),
            "--seconds",
            &seconds.to_string(),
        ]);
        for (node, index) in nodes.iter().zip(0u16..) {
            command
                .arg("--node")
                .arg(format!("{}={}@{}", node.name, node.addr, node.child.id()))
                .arg("--metrics")
                .arg(crate::bench::metrics_addr(index));
        }
        command
            .arg("--accounts")
            .arg(self.dir.join("accounts.json"))
            .args(["--label", label, "--json"])
            .arg(&report)
            .env("DATABASE_URL", self.database_url);
        crate::run(&mut command)?;
        let text = std::fs::read_to_string(&report)
            .with_context(|| format!("cannot read {}", report.display()))?;
        let report: serde_json::Value = serde_json::from_str(&text)?;
        report["totals"]["sent"]
            .as_u64()
            .context("the load report has no totals.sent")
    }
}

fn stop(nodes: &mut [NodeProcess]) {
    for node in nodes {
        bench::stop_node(node);
    }
}

fn callgrind_control(option: &str, node: &NodeProcess) -> Result<()> {
    let output = Command::new("callgrind_control")
        .arg(option)
        .arg(node.child.id().to_string())
        .output()
        .context("cannot run callgrind_control")?;
    if !output.status.success() {
        bail!(
            "callgrind_control {option} {} failed: {}",
            node.child.id(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The highest-numbered dump callgrind wrote for `pid` (`callgrind.<pid>.out.<part>`), if any,
/// with its path.
fn newest_dump(dir: &Path, pid: u32) -> Result<Option<(u32, PathBuf)>> {
    let stem = format!("callgrind.{pid}.out.");
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let part = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix(&stem))
            .and_then(|part| part.parse::<u32>().ok());
        if let Some(part) = part {
            if newest.as_ref().is_none_or(|(best, _)| part > *best) {
                newest = Some((part, path));
            }
        }
    }
    Ok(newest)
}

/// Waits for a dump newer than `before` to be complete, and returns its instruction count.
fn wait_for_dump(dir: &Path, pid: u32, before: Option<u32>) -> Result<u64> {
    let deadline = Instant::now() + DUMP_TIMEOUT;
    while Instant::now() < deadline {
        if let Some((part, path)) = newest_dump(dir, pid)? {
            if before.is_none_or(|before| part > before) {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let total = text.lines().find_map(|line| {
                    let value = line
                        .strip_prefix("totals:")
                        .or_else(|| line.strip_prefix("summary:"))?;
                    value.trim().parse::<u64>().ok()
                });
                if let Some(total) = total {
                    return Ok(total);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("callgrind wrote no dump for pid {pid} within {DUMP_TIMEOUT:?}")
}
