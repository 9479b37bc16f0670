//! The machine itself during a run: how busy its cores were, how much of the time work waited
//! for a core or for the disk, how often the kernel switched between threads, and how much time
//! the hypervisor kept for itself. Everything
//! under test shares the machine's cores with the load generator, so these move the tail
//! latency as much as the code does; a report carries them so that two runs can be told apart
//! by their machine as well as by their code.
//!
//! Only counters the kernel keeps anyway are read, at the start and at the end. A thread that
//! measured its own wake-up delays (sleeping 1 ms at a time) was tried and dropped: its thousand
//! wake-ups a second cost 7–20% of the saturation run's deliveries.

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Cumulative CPU time of all cores, in clock ticks, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub total: u64,
    /// Idle and waiting for I/O.
    pub idle: u64,
    /// Taken by the hypervisor while this machine had work to run.
    pub steal: u64,
    /// Context switches since boot, all cores (the `ctxt` line), when present.
    pub switches: Option<u64>,
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
pub fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already
    // counted in user and nice.
    let field = |index: usize| fields.get(index).copied().unwrap_or(0);
    let switches = stat
        .lines()
        .find_map(|line| line.strip_prefix("ctxt "))
        .and_then(|count| count.trim().parse().ok());
    Some(CpuTimes {
        total: (0..8).map(field).sum(),
        idle: field(3) + field(4),
        steal: field(7),
        switches,
    })
}

/// The `some` total of a `/proc/pressure/` file: microseconds during which at least one task
/// waited for the resource (a core, the disk).
pub fn parse_pressure(pressure: &str) -> Option<u64> {
    let line = pressure.lines().find(|line| line.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("total="))?
        .parse()
        .ok()
}

fn read_cpu_times() -> Option<CpuTimes> {
    parse_cpu_times(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn read_pressure(resource: &str) -> Option<u64> {
    parse_pressure(&std::fs::read_to_string(format!("/proc/pressure/{resource}")).ok()?)
}

/// The machine over one run. Absent values could not be read (no `/proc/pressure` on this
/// kernel, say).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostReport {
    /// Share of all cores' time that was not idle, 100% being every core busy.
    pub busy_percent: Option<f64>,
    /// Share of the run during which at least one runnable task waited for a core.
    pub cpu_pressure_percent: Option<f64>,
    /// Share of the run during which at least one task waited for the disk (a stalled `fsync`
    /// holds up RabbitMQ's confirms and PostgreSQL's commits alike).
    #[serde(default)]
    pub io_pressure_percent: Option<f64>,
    /// Share of all cores' time the hypervisor kept while this machine had work.
    pub steal_percent: Option<f64>,
    /// Context switches a second, all processes: every hand-off of work between threads or
    /// processes that finds the receiver asleep is (at least) one.
    #[serde(default)]
    pub switches_per_s: Option<f64>,
}

impl HostReport {
    /// The figures as printed: busy, waiting for a core, waiting for the disk, steal, context
    /// switches a second; `missing` for a value that could not be read.
    pub fn figures(&self, missing: &str) -> [String; 5] {
        let shown = |value: Option<f64>, format: fn(f64) -> String| {
            value.map_or(missing.to_owned(), format)
        };
        let percent = |v: f64| format!("{v:.0}%");
        [
            shown(self.busy_percent, percent),
            shown(self.cpu_pressure_percent, percent),
            shown(self.io_pressure_percent, percent),
            shown(self.steal_percent, |v| format!("{v:.1}%")),
            shown(self.switches_per_s, |v| format!("{v:.0}")),
        ]
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let [busy, cpu, io, steal, switches] = self.figures("?");
        format!(
            "host: cores busy {busy}, work waiting for a core {cpu} of the time, for the disk {io}, steal {steal}, {switches} context switches/s"
        )
    }
}

/// Watches the machine from [`HostMeter::start`] to [`HostMeter::finish`].
pub struct HostMeter {
    started: Instant,
    times: Option<CpuTimes>,
    cpu_pressure: Option<u64>,
    io_pressure: Option<u64>,
}

impl HostMeter {
    pub fn start() -> HostMeter {
        HostMeter {
            started: Instant::now(),
            times: read_cpu_times(),
            cpu_pressure: read_pressure("cpu"),
            io_pressure: read_pressure("io"),
        }
    }

    /// The machine since [`HostMeter::start`].
    pub fn finish(&self) -> HostReport {
        let wall_micros = self.started.elapsed().as_micros() as f64;
        let now = read_cpu_times();
        let switches_per_s = match (
            self.times.and_then(|t| t.switches),
            now.and_then(|t| t.switches),
        ) {
            (Some(before), Some(after)) if wall_micros > 0.0 => {
                Some(after.saturating_sub(before) as f64 / wall_micros * 1e6)
            }
            _ => None,
        };
        let times = match (self.times, now) {
            (Some(before), Some(after)) if after.total > before.total => Some((
                (after.total - before.total) as f64,
                after.idle.saturating_sub(before.idle) as f64,
                after.steal.saturating_sub(before.steal) as f64,
            )),
            _ => None,
        };
        let share = |before: Option<u64>, resource: &str| match (before, read_pressure(resource)) {
            (Some(before), Some(after)) if wall_micros > 0.0 => {
                Some((after.saturating_sub(before) as f64 / wall_micros * 100.0).min(100.0))
            }
            _ => None,
        };
        HostReport {
            busy_percent: times.map(|(total, idle, _)| (total - idle) / total * 100.0),
            cpu_pressure_percent: share(self.cpu_pressure, "cpu"),
            io_pressure_percent: share(self.io_pressure, "io"),
            steal_percent: times.map(|(total, _, steal)| steal / total * 100.0),
            switches_per_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_aggregate_cpu_line() {
        let stat = "cpu  60028 5 11580 31769 1504 0 995 85 7 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n\
                    intr 99 1 2\nctxt 123456789\nbtime 1795817270\n";
        assert_eq!(
            parse_cpu_times(stat),
            Some(CpuTimes {
                total: 60028 + 5 + 11580 + 31769 + 1504 + 995 + 85,
                idle: 31769 + 1504,
                steal: 85,
                switches: Some(123_456_789),
            })
        );
        let without_switches = "cpu  1 2 3 4 5 6 7 8\n";
        assert_eq!(
            parse_cpu_times(without_switches).map(|times| times.switches),
            Some(None)
        );
        assert_eq!(parse_cpu_times("intr 1 2 3\n"), None);
        assert_eq!(parse_cpu_times("cpu  1 x 3\n"), None);
    }

    #[test]
    fn reads_the_some_total_of_a_pressure_file() {
        let pressure = "some avg10=66.24 avg60=30.13 avg300=10.34 total=50010381\n\
                        full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_pressure(pressure), Some(50_010_381));
        assert_eq!(parse_pressure("full avg10=0.00 total=7\n"), None);
    }

    #[test]
    fn a_meter_reports_shares_of_the_interval() {
        let meter = HostMeter::start();
        // Some work of this thread, until the kernel's tick counters have moved.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut spin = 0u64;
        while meter.times.is_some()
            && read_cpu_times().map(|now| now.total) == meter.times.map(|then| then.total)
            && Instant::now() < deadline
        {
            spin = spin.wrapping_add(1);
        }
        let report = meter.finish();
        for share in [
            report.busy_percent,
            report.cpu_pressure_percent,
            report.io_pressure_percent,
            report.steal_percent,
        ]
        .into_iter()
        .flatten()
        {
            assert!((0.0..=100.0).contains(&share), "{report:?} after {spin}");
        }
        if std::path::Path::new("/proc/stat").exists() {
            assert!(report.busy_percent.is_some(), "{report:?}");
            assert!(
                report.switches_per_s.is_some_and(|rate| rate >= 0.0),
                "{report:?}"
            );
        }
    }
}
