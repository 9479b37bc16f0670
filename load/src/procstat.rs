//! CPU time and resident memory of the processes a run involves, read from /proc.

use serde::Serialize;
use std::time::Instant;

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// A group of processes watched during a run: a node, the broker, the database, this tool.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pids: Vec<u32>,
}

impl Watched {
    pub fn pid(name: &str, pid: u32) -> Watched {
        Watched {
            name: name.to_owned(),
            pids: vec![pid],
        }
    }

    /// Every process whose command name is `comm` (all PostgreSQL backends, say).
    pub fn by_command(name: &str, comm: &str) -> Option<Watched> {
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim() == comm)
                    .unwrap_or(false)
            })
            .collect();
        (!pids.is_empty()).then(|| Watched {
            name: name.to_owned(),
            pids,
        })
    }

    /// The usual suspects on this machine, plus this process.
    pub fn services() -> Vec<Watched> {
        let mut watched = vec![Watched::pid("chat-load", std::process::id())];
        watched.extend(Watched::by_command("rabbitmq", "beam.smp"));
        watched.extend(Watched::by_command("postgres", "postgres"));
        watched.extend(Watched::by_command("memcached", "memcached"));
        watched
    }
}

/// CPU ticks of a process (user + system), if it still exists.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// Resident memory of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU used by each watched group between [`CpuMeter::start`] and [`CpuMeter::finish`].
pub struct CpuMeter {
    started: Instant,
    groups: Vec<(Watched, u64)>,
}

/// One group's share of the machine: 100% is one core busy for the whole run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ProcessCpu {
    pub name: String,
    pub cpu_percent: f64,
    pub rss_mib: f64,
}

impl CpuMeter {
    pub fn start(watched: Vec<Watched>) -> CpuMeter {
        let groups = watched
            .into_iter()
            .map(|group| {
                let ticks = group.pids.iter().filter_map(|&pid| cpu_ticks(pid)).sum();
                (group, ticks)
            })
            .collect();
        CpuMeter {
            started: Instant::now(),
            groups,
        }
    }

    pub fn finish(&self) -> Vec<ProcessCpu> {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        self.groups
            .iter()
            .map(|(group, before)| {
                let after: u64 = group.pids.iter().filter_map(|&pid| cpu_ticks(pid)).sum();
                let rss: u64 = group.pids.iter().filter_map(|&pid| rss_bytes(pid)).sum();
                ProcessCpu {
                    name: group.name.clone(),
                    cpu_percent: (after.saturating_sub(*before) as f64 / TICKS_PER_SECOND)
                        / seconds
                        * 100.0,
                    rss_mib: rss as f64 / (1024.0 * 1024.0),
                }
            })
            .collect()
    }
}
