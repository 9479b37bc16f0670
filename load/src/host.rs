//! The machine itself during a run: how busy its cores were, how much of the time work waited
//! for a core, how much time the hypervisor kept for itself, and how late a sleeping thread
//! woke up. Everything under test shares the machine's cores with the load generator, so these
//! move the tail latency as much as the code does; a report carries them so that two runs can
//! be told apart by their machine as well as by their code.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the probe thread asks to sleep each time.
const PROBE_SLEEP: Duration = Duration::from_millis(1);

/// Cumulative CPU time of all cores, in clock ticks, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub total: u64,
    /// Idle and waiting for I/O.
    pub idle: u64,
    /// Taken by the hypervisor while this machine had work to run.
    pub steal: u64,
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
    Some(CpuTimes {
        total: (0..8).map(field).sum(),
        idle: field(3) + field(4),
        steal: field(7),
    })
}

/// The `some` total of `/proc/pressure/cpu`: microseconds during which at least one runnable
/// task waited for a core.
pub fn parse_cpu_pressure(pressure: &str) -> Option<u64> {
    let line = pressure.lines().find(|line| line.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("total="))?
        .parse()
        .ok()
}

fn read_cpu_times() -> Option<CpuTimes> {
    parse_cpu_times(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn read_cpu_pressure() -> Option<u64> {
    parse_cpu_pressure(&std::fs::read_to_string("/proc/pressure/cpu").ok()?)
}

/// How late a thread that slept [`PROBE_SLEEP`] woke up, in ms.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct WakeLate {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// The machine over one run. Absent values could not be read (no `/proc/pressure` on this
/// kernel, say).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostReport {
    /// Share of all cores' time that was not idle, 100% being every core busy.
    pub busy_percent: Option<f64>,
    /// Share of the run during which at least one runnable task waited for a core.
    pub cpu_pressure_percent: Option<f64>,
    /// Share of all cores' time the hypervisor kept while this machine had work.
    pub steal_percent: Option<f64>,
    pub wake_late: Option<WakeLate>,
}

impl HostReport {
    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let percent = |value: Option<f64>| value.map_or("?".into(), |v| format!("{v:.0}%"));
        let wake = self.wake_late.map_or("?".into(), |w| {
            format!(
                "p50 {:.2} p99 {:.2} max {:.2}",
                w.p50_ms, w.p99_ms, w.max_ms
            )
        });
        format!(
            "host: cores busy {}, work waiting for a core {} of the time, steal {}, 1 ms sleep woke late ms {wake}",
            percent(self.busy_percent),
            percent(self.cpu_pressure_percent),
            self.steal_percent
                .map_or("?".into(), |v| format!("{v:.1}%")),
        )
    }
}

/// Watches the machine from [`HostMeter::start`] to [`HostMeter::finish`].
pub struct HostMeter {
    started: Instant,
    times: Option<CpuTimes>,
    pressure: Option<u64>,
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicU64>,
    probe: Option<JoinHandle<Option<Histogram<u64>>>>,
}

impl HostMeter {
    /// Starts the wake-up probe: a thread of its own that sleeps 1 ms at a time and records by
    /// how much each sleep overran (a thousand wake-ups a second, next to tens of thousands by
    /// the processes under test).
    pub fn start() -> HostMeter {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(AtomicU64::new(0));
        let probe = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::Builder::new()
                .name("host-probe".into())
                .spawn(move || {
                    let mut late = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
                    while !stop.load(Ordering::Relaxed) {
                        let asleep = Instant::now();
                        std::thread::sleep(PROBE_SLEEP);
                        let over = asleep.elapsed().saturating_sub(PROBE_SLEEP);
                        if let Some(late) = late.as_mut() {
                            let micros = u64::try_from(over.as_micros()).unwrap_or(u64::MAX);
                            late.saturating_record(micros.max(1));
                        }
                        samples.fetch_add(1, Ordering::Relaxed);
                    }
                    late
                })
                .ok()
        };
        HostMeter {
            started: Instant::now(),
            times: read_cpu_times(),
            pressure: read_cpu_pressure(),
            stop,
            samples,
            probe,
        }
    }

    /// Wake-ups measured so far.
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// Stops the probe and reports the machine since [`HostMeter::start`].
    pub fn finish(mut self) -> HostReport {
        let wall_micros = self.started.elapsed().as_micros() as f64;
        self.stop.store(true, Ordering::Relaxed);
        let late = (self.probe.take()).and_then(|probe| probe.join().ok().flatten());
        let times = match (self.times, read_cpu_times()) {
            (Some(before), Some(after)) if after.total > before.total => Some((
                (after.total - before.total) as f64,
                after.idle.saturating_sub(before.idle) as f64,
                after.steal.saturating_sub(before.steal) as f64,
            )),
            _ => None,
        };
        let pressure = match (self.pressure, read_cpu_pressure()) {
            (Some(before), Some(after)) if wall_micros > 0.0 => {
                Some((after.saturating_sub(before) as f64 / wall_micros * 100.0).min(100.0))
            }
            _ => None,
        };
        let ms = |micros: u64| micros as f64 / 1000.0;
        HostReport {
            busy_percent: times.map(|(total, idle, _)| (total - idle) / total * 100.0),
            cpu_pressure_percent: pressure,
            steal_percent: times.map(|(total, _, steal)| steal / total * 100.0),
            wake_late: late.filter(|late| !late.is_empty()).map(|late| WakeLate {
                samples: late.len(),
                p50_ms: ms(late.value_at_quantile(0.5)),
                p99_ms: ms(late.value_at_quantile(0.99)),
                p999_ms: ms(late.value_at_quantile(0.999)),
                max_ms: ms(late.max()),
            }),
        }
    }
}

impl Drop for HostMeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_aggregate_cpu_line() {
        let stat = "cpu  60028 5 11580 31769 1504 0 995 85 7 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            parse_cpu_times(stat),
            Some(CpuTimes {
                total: 60028 + 5 + 11580 + 31769 + 1504 + 995 + 85,
                idle: 31769 + 1504,
                steal: 85,
            })
        );
        assert_eq!(parse_cpu_times("intr 1 2 3\n"), None);
        assert_eq!(parse_cpu_times("cpu  1 x 3\n"), None);
    }

    #[test]
    fn reads_the_some_total_of_cpu_pressure() {
        let pressure = "some avg10=66.24 avg60=30.13 avg300=10.34 total=50010381\n\
                        full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_cpu_pressure(pressure), Some(50_010_381));
        assert_eq!(parse_cpu_pressure("full avg10=0.00 total=7\n"), None);
    }

    #[test]
    fn the_probe_reports_every_wake_up_it_measured() {
        let meter = HostMeter::start();
        let deadline = Instant::now() + Duration::from_secs(10);
        while meter.samples() < 20 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let report = meter.finish();
        let Some(late) = report.wake_late else {
            panic!("no wake-ups measured: {report:?}");
        };
        assert!(late.samples >= 20, "{late:?}");
        assert!(
            late.p50_ms <= late.p99_ms && late.p99_ms <= late.max_ms,
            "{late:?}"
        );
        if let Some(busy) = report.busy_percent {
            assert!((0.0..=100.0).contains(&busy), "{busy}");
        }
    }
}
