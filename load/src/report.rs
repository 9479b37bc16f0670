//! What a run hands back: the JSON report, the progress bar while it runs, the
//! latency-over-time plot, and the Markdown tables of `BENCHMARKS.md`.

use crate::procstat::ProcessCpu;
use crate::stats::{CounterSnapshot, Percentiles, Recorder, RoomView, TimelinePoint};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// Delivery checks summed over every member of every room.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct SequenceChecks {
    /// Messages a member should have seen (stored after it joined) and never did.
    pub lost: u64,
    /// Sequence numbers a member saw more than once.
    pub duplicated: u64,
    /// Sequence numbers seen after a higher one.
    pub out_of_order: u64,
    /// Sends never answered `stored` nor refused (accepted but not seen stored, or unanswered).
    pub unconfirmed: u64,
}

impl SequenceChecks {
    pub fn add(&mut self, view: &RoomView, final_seq: i64) {
        self.lost += view.lost(final_seq);
        self.duplicated += view.duplicated;
        self.out_of_order += view.out_of_order;
    }

    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.unconfirmed == 0
    }
}

/// One run of one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub label: String,
    pub workload: String,
    pub settings: serde_json::Value,
    /// Length of the measured phase (sending), in seconds.
    pub seconds: f64,
    /// Counters at the end of the measured phase; rates are these over `seconds`.
    pub at_deadline: CounterSnapshot,
    /// Counters after the drain.
    pub totals: CounterSnapshot,
    pub sent_per_s: f64,
    pub accepted_per_s: f64,
    pub deliveries_per_s: f64,
    pub accept_latency: Percentiles,
    pub deliver_latency: Percentiles,
    /// Send→deliver for receivers on another node than the sender.
    pub deliver_remote_latency: Percentiles,
    pub checks: SequenceChecks,
    /// Every ack and delivery arrived before the drain time ran out.
    pub drained: bool,
    pub cpu: Vec<ProcessCpu>,
    /// The machine over the measured phase.
    #[serde(default)]
    pub host: Option<crate::host::HostReport>,
    pub timeline: Vec<TimelinePoint>,
    /// Time per pipeline stage, from the nodes' metrics (rooms only).
    #[serde(default)]
    pub stages: Vec<crate::stages::StageLatency>,
    /// The same per second of the sending phase (rooms only).
    #[serde(default)]
    pub stage_seconds: Vec<crate::stages::StageSecond>,
    /// Workload-specific results (idle: memory per connection; storm: resume times).
    #[serde(default)]
    pub extra: serde_json::Value,
}

impl RunReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        label: &str,
        workload: &str,
        settings: serde_json::Value,
        measured: Duration,
        at_deadline: CounterSnapshot,
        totals: CounterSnapshot,
        recorder: &Recorder,
        checks: SequenceChecks,
        cpu: Vec<ProcessCpu>,
        drained: bool,
    ) -> RunReport {
        let seconds = measured.as_secs_f64().max(1e-3);
        let (accept_latency, deliver_latency, deliver_remote_latency) = recorder.latencies();
        RunReport {
            label: label.to_owned(),
            workload: workload.to_owned(),
            settings,
            seconds,
            at_deadline,
            totals,
            sent_per_s: at_deadline.sent as f64 / seconds,
            accepted_per_s: at_deadline.accepted as f64 / seconds,
            deliveries_per_s: at_deadline.delivered as f64 / seconds,
            accept_latency,
            deliver_latency,
            deliver_remote_latency,
            checks,
            drained,
            cpu,
            host: None,
            timeline: recorder.timeline(),
            stages: Vec::new(),
            stage_seconds: Vec::new(),
            extra: serde_json::Value::Null,
        }
    }

    pub fn save_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    pub fn load_json(path: &Path) -> anyhow::Result<RunReport> {
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let l = &self.deliver_latency;
        let a = &self.accept_latency;
        let c = &self.checks;
        let cpu: Vec<String> = self
            .cpu
            .iter()
            .map(|p| format!("{} {:.0}%", p.name, p.cpu_percent))
            .collect();
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|s| format!("{} {:.2}", s.stage, s.mean_ms))
            .collect();
        let mut stages = if stages.is_empty() {
            String::new()
        } else {
            format!("\n  stages (node metrics), mean ms: {}", stages.join(", "))
        };
        if let Some(host) = &self.host {
            stages.push_str("\n  ");
            stages.push_str(&host.summary());
        }
        format!(
            "{}: sent {:.0}/s, accepted {:.0}/s, deliveries {:.0}/s\n  \
             send→accepted ms p50 {:.2} p99 {:.2} max {:.2}\n  \
             send→deliver ms p50 {:.2} p90 {:.2} p99 {:.2} p999 {:.2} max {:.2}\n  \
             lost {} duplicated {} out-of-order {} unconfirmed {} drained {}\n  cpu: {}{}",
            self.label,
            self.sent_per_s,
            self.accepted_per_s,
            self.deliveries_per_s,
            a.p50,
            a.p99,
            a.max,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            c.lost,
            c.duplicated,
            c.out_of_order,
            c.unconfirmed,
            self.drained,
            cpu.join(", "),
            stages
        )
    }
}

/// A progress bar over the measured phase, hidden when not wanted.
pub fn progress_bar(visible: bool, duration: Duration, label: &str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(duration.as_secs().max(1));
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len}s {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_owned());
    bar
}

/// Updates the bar with the last second's rates until `until`; returns the counters then.
pub async fn follow_progress(
    bar: &ProgressBar,
    recorder: &Recorder,
    until: Instant,
) -> CounterSnapshot {
    let started = Instant::now();
    let mut previous = recorder.counters.snapshot();
    let mut previous_at = Instant::now();
    while Instant::now() < until {
        let next = (Instant::now() + Duration::from_secs(1)).min(until);
        tokio::time::sleep_until(next).await;
        let now = recorder.counters.snapshot();
        let seconds = previous_at.elapsed().as_secs_f64().max(1e-3);
        bar.set_position(started.elapsed().as_secs());
        bar.set_message(format!(
            "sent {:.0}/s accepted {:.0}/s deliveries {:.0}/s",
            (now.sent - previous.sent) as f64 / seconds,
            (now.accepted - previous.accepted) as f64 / seconds,
            (now.delivered - previous.delivered) as f64 / seconds,
        ));
        previous = now;
        previous_at = Instant::now();
    }
    recorder.counters.snapshot()
}

/// Draws send→deliver p50, p99 and max per second as an SVG.
pub fn plot_svg(report: &RunReport, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let points = &report.timeline;
    let seconds = points.len().max(1) as u32;
    let top = points
        .iter()
        .map(|p| p.deliver_max_ms)
        .fold(1.0_f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: send→deliver latency per second", report.label),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0u32..seconds, 0f64..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("second of the run")
        .y_desc("ms")
        .draw()
        .map_err(plot_error)?;
    type Series = (&'static str, RGBColor, fn(&TimelinePoint) -> f64);
    let series: [Series; 3] = [
        ("p50", BLUE, |p| p.deliver_p50_ms),
        ("p99", RED, |p| p.deliver_p99_ms),
        ("max", BLACK, |p| p.deliver_max_ms),
    ];
    for (name, color, value) in series {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.second, value(p))),
                color,
            ))
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {error}")
}
