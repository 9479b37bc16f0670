//! CPU time and resident memory of the processes a run involves, read from /proc.

use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// A group of processes watched during a run: a node, the broker, the database, this tool.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pids: Vec<u32>,
    /// The command name the group was found by, when it is every process of that name: the
    /// group is then found again at the end of a run, because such processes come and go
    /// (a PostgreSQL backend per pooled connection).
    comm: Option<String>,
}

impl Watched {
    pub fn pid(name: &str, pid: u32) -> Watched {
        Watched {
            name: name.to_owned(),
            pids: vec![pid],
            comm: None,
        }
    }

    /// Every process whose command name is `comm` (all PostgreSQL backends, say).
    pub fn by_command(name: &str, comm: &str) -> Option<Watched> {
        let pids = pids_of(comm);
        (!pids.is_empty()).then(|| Watched {
            name: name.to_owned(),
            pids,
            comm: Some(comm.to_owned()),
        })
    }

    /// CPU ticks of each process of the group now.
    fn ticks(&self) -> HashMap<u32, u64> {
        let found = self.comm.as_deref().map(pids_of);
        found
            .as_deref()
            .unwrap_or(&self.pids)
            .iter()
            .filter_map(|&pid| Some((pid, cpu_ticks(pid)?)))
            .collect()
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

fn pids_of(comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == comm)
                .unwrap_or(false)
        })
        .collect()
}

/// CPU ticks a group used between two readings of its processes' ticks: a process seen both
/// times counts what it used in between, one that appeared since counts all it used (it
/// started during the interval), and one that ended counts nothing (what it used after the
/// first reading is gone with it, and its whole life's ticks must not be taken off the rest).
fn ticks_between(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(pid, &now)| match before.get(pid) {
            Some(&then) => now.saturating_sub(then),
            None => now,
        })
        .sum()
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
    groups: Vec<(Watched, HashMap<u32, u64>)>,
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
                let ticks = group.ticks();
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
                let after = group.ticks();
                let rss: u64 = after.keys().filter_map(|&pid| rss_bytes(pid)).sum();
                ProcessCpu {
                    name: group.name.clone(),
                    cpu_percent: (ticks_between(before, &after) as f64 / TICKS_PER_SECOND)
                        / seconds
                        * 100.0,
                    rss_mib: rss as f64 / (1024.0 * 1024.0),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_that_come_and_go_during_a_run_do_not_distort_their_group() {
        // 7 kept running, 9 ended mid-run after 5,000 ticks of life, 11 started mid-run.
        let before = HashMap::from([(7, 100), (9, 5_000)]);
        let after = HashMap::from([(7, 130), (11, 20)]);
        assert_eq!(ticks_between(&before, &after), 30 + 20);
        assert_eq!(ticks_between(&before, &before), 0);
        assert_eq!(ticks_between(&HashMap::new(), &HashMap::new()), 0);
    }

    #[test]
    fn a_group_by_command_finds_this_process() -> Result<(), String> {
        let comm = std::fs::read_to_string("/proc/self/comm").map_err(|e| e.to_string())?;
        let group = Watched::by_command("me", comm.trim()).ok_or("not found")?;
        let ticks = group.ticks();
        assert!(ticks.contains_key(&std::process::id()), "{ticks:?}");
        Ok(())
    }
}
