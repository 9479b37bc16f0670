//! The Markdown tables of `BENCHMARKS.md`, built from the JSON reports of a bench run.

use crate::host::HostReport;
use crate::idle::IdleResult;
use crate::report::RunReport;
use crate::stages::{StageLatency, STAGES};
use crate::stats::TimelinePoint;
use crate::storm::StormResult;
use std::fmt::Write;

/// Highest p99 send→deliver, in ms, at which an offered rate still counts as sustained.
pub const SUSTAINED_P99_MS: f64 = 50.0;

/// The offered rate of a `rooms` run at a fixed rate.
fn offered_rate(report: &RunReport) -> Option<f64> {
    report.settings.get("pace")?.get("Rate")?.as_f64()
}

fn sustained(report: &RunReport) -> bool {
    report.drained && report.checks.clean() && report.deliver_latency.p99 <= SUSTAINED_P99_MS
}

fn cpu(report: &RunReport) -> String {
    report
        .cpu
        .iter()
        .map(|p| format!("{} {:.0}%", p.name, p.cpu_percent))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A bucket bound in ms, as a table shows it.
fn bound(ms: f64) -> String {
    if ms.is_infinite() {
        "∞".into()
    } else if ms < 1.0 {
        format!("{ms}")
    } else {
        format!("{ms:.0}")
    }
}

/// Seconds of a run whose own p99 send→deliver was above `ms`, of the seconds that had
/// deliveries: a rate held back by a stall or two shows few, one the system cannot carry many.
fn seconds_over(timeline: &[TimelinePoint], ms: f64) -> (usize, usize) {
    (timeline.iter())
        .filter(|p| p.deliveries > 0)
        .fold((0, 0), |(over, measured), p| {
            (over + usize::from(p.deliver_p99_ms > ms), measured + 1)
        })
}

/// Idle runs labelled `idle-spread…` are one of several side-by-side runs, one per node.
pub const SPREAD_LABEL: &str = "idle-spread";

fn is_spread(report: &RunReport) -> bool {
    report.label.starts_with(SPREAD_LABEL)
}

/// Every table: targets, rooms runs, idle (on one node and over several), storm.
pub fn tables(reports: &[RunReport]) -> String {
    let mut out = String::new();
    let rooms: Vec<&RunReport> = reports.iter().filter(|r| r.workload == "rooms").collect();
    let rated: Vec<(&RunReport, f64)> = (rooms.iter())
        .filter_map(|r| Some((*r, offered_rate(r)?)))
        .collect();
    let best_sustained = (rated.iter())
        .filter(|(r, _)| sustained(r))
        .map(|(_, rate)| *rate)
        .fold(None, |best: Option<f64>, rate| {
            Some(best.map_or(rate, |b| b.max(rate)))
        });
    let saturation = (rooms.iter())
        .filter(|r| offered_rate(r).is_none())
        .map(|r| r.deliveries_per_s)
        .fold(None, |best: Option<f64>, d| {
            Some(best.map_or(d, |b| b.max(d)))
        });
    let at_2000 = rated.iter().find(|(_, rate)| (*rate - 2000.0).abs() < 1.0);
    let idle: Option<IdleResult> = (reports.iter())
        .find(|r| r.workload == "idle" && !is_spread(r))
        .and_then(|r| serde_json::from_value(r.extra.clone()).ok());
    let spread: Vec<IdleResult> = (reports.iter())
        .filter(|r| r.workload == "idle" && is_spread(r))
        .filter_map(|r| serde_json::from_value(r.extra.clone()).ok())
        .collect();
    let storm: Option<StormResult> = (reports.iter())
        .find(|r| r.workload == "storm")
        .and_then(|r| serde_json::from_value(r.extra.clone()).ok());

    let _ = writeln!(out, "| Target | Goal | Measured | Met |\n|---|---|---|---|");
    let met = |ok: bool| if ok { "yes" } else { "**no**" };
    let _ = writeln!(
        out,
        "| rooms: sustainable rate (p99 send→deliver ≤ {SUSTAINED_P99_MS} ms, zero loss) | ≥ 15,000 msgs/s | {} | {} |",
        best_sustained.map_or("none of the rates tried".into(), |r| format!("{r:.0} msgs/s (highest rate tried that held)")),
        met(best_sustained.is_some_and(|r| r >= 15_000.0))
    );
    let _ = writeln!(
        out,
        "| rooms: saturation | ≥ 300,000 deliveries/s | {} | {} |",
        saturation.map_or("not run".into(), |d| format!("{d:.0} deliveries/s")),
        met(saturation.is_some_and(|d| d >= 300_000.0))
    );
    if let Some((report, _)) = at_2000 {
        let p99 = report.deliver_remote_latency.p99;
        let _ = writeln!(
            out,
            "| rooms at 2,000 msgs/s: p99 send→deliver, receivers on the other node | ≤ 10 ms | {p99:.1} ms (all receivers: {:.1} ms) | {} |",
            report.deliver_latency.p99,
            met(p99 <= 10.0 && report.checks.clean())
        );
    }
    if let Some(idle) = &idle {
        let per = idle.rss_per_connection_kib.unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| idle: connections on one node, RSS each | 50,000 at ≤ 16 KiB | {} at {per:.1} KiB | {} |",
            idle.established,
            met(idle.established >= 50_000 && per <= 16.0)
        );
    }
    if !spread.is_empty() {
        let total: usize = spread.iter().map(|r| r.established).sum();
        let together = IdleResult::held_together_ms(&spread).is_some();
        let worst = (spread.iter())
            .map(|r| r.rss_per_connection_kib.unwrap_or(f64::NAN))
            .fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            out,
            "| idle: the same goal over several nodes (one process holds about 20,000 files here) | 50,000 at ≤ 16 KiB | {total} on {} nodes, {}, at most {worst:.1} KiB each | {} |",
            spread.len(),
            if together { "all open at once" } else { "**not** all open at once" },
            met(total >= 50_000 && together && worst <= 16.0)
        );
    }
    if let Some(storm) = &storm {
        let _ = writeln!(
            out,
            "| storm: clients resumed after their node's death, nothing lost | 10,000 within 10 s | {} of {} in {} | {} |",
            storm.resumed,
            storm.clients,
            storm.all_resumed_s.map_or("—".into(), |s| format!("{s:.2} s")),
            met(storm.clients >= 10_000
                && storm.all_resumed_s.is_some_and(|s| s <= 10.0)
                && storm.rejoined_lost == 0
                && storm.observers_lost == 0
                && storm.accepted_not_stored.unwrap_or(0) == 0)
        );
    }

    let _ = writeln!(
        out,
        "\n### rooms\n\n| Run | Offered | Sent/s | Accepted/s | Deliveries/s | send→accepted p50 / p99 ms | send→deliver p50 / p90 / p99 / p999 / max ms | other node p99 ms | seconds with p99 > {SUSTAINED_P99_MS} ms | Lost / dup / out-of-order / unconfirmed | CPU |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &rooms {
        let (a, d) = (&r.accept_latency, &r.deliver_latency);
        let offered = match (
            offered_rate(r),
            r.settings.get("pace").and_then(|p| p.get("Window")),
        ) {
            (Some(rate), _) => format!("{rate:.0} msgs/s"),
            (None, Some(window)) => format!("saturation, window {window}"),
            _ => "?".into(),
        };
        let c = &r.checks;
        let (over, seconds) = seconds_over(&r.timeline, SUSTAINED_P99_MS);
        let _ = writeln!(
            out,
            "| {} | {offered} | {:.0} | {:.0} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} | {:.2} | {over} of {seconds} | {} | {} |",
            r.label, r.sent_per_s, r.accepted_per_s, r.deliveries_per_s, a.p50, a.p99,
            d.p50, d.p90, d.p99, d.p999, d.max, r.deliver_remote_latency.p99,
            if r.drained {
                format!("{} / {} / {} / {}", c.lost, c.duplicated, c.out_of_order, c.unconfirmed)
            } else {
                // Still in flight when the drain time ran out: not a loss verdict.
                format!(
                    "not drained: {} deliveries, {} stores missing at stop / {} / {}",
                    c.lost, c.unconfirmed, c.duplicated, c.out_of_order
                )
            },
            cpu(r)
        );
    }
    let staged: Vec<&&RunReport> = rooms.iter().filter(|r| !r.stages.is_empty()).collect();
    if !staged.is_empty() {
        let _ = writeln!(
            out,
            "\n### rooms: where a message's time goes\n\nFrom the nodes' own histograms over each run (`chat_pipeline_seconds`, `chat_delivery_seconds`): mean, and the bucket bound p99 falls under, in ms. *Delivered* is the whole trip from the send being read to its frame being queued to the receivers' sockets; what it leaves over the stages before it is the delivery hop (RabbitMQ and the receiving node's fan-out).\n\n| Run | {} |\n|---|{}",
            STAGES.join(" | "),
            "---|".repeat(STAGES.len())
        );
        for r in staged {
            let cells = stage_cells(&r.stages);
            let _ = writeln!(out, "| {} | {} |", r.label, cells.join(" | "));
        }
    }
    slow_seconds_table(&mut out, &rooms);
    host_table(&mut out, reports);
    if let Some(idle) = &idle {
        let _ = writeln!(
            out,
            "\n### idle\n\n| Requested | Established | Failed | Connect time | Node RSS before → after | RSS per connection |\n|---|---|---|---|---|---|\n| {} | {} | {} | {:.1} s | {:.0} → {:.0} MiB | {:.1} KiB |",
            idle.requested, idle.established, idle.failed, idle.connect_seconds,
            idle.node_rss_before_mib.unwrap_or(f64::NAN), idle.node_rss_after_mib.unwrap_or(f64::NAN),
            idle.rss_per_connection_kib.unwrap_or(f64::NAN)
        );
        if let Some(error) = &idle.first_error {
            let _ = writeln!(out, "\nFirst connection error: `{error}`");
        }
    }
    if !spread.is_empty() {
        let _ = writeln!(
            out,
            "\n### idle over several nodes\n\nOne load process per node, run side by side.\n\n| Node | Requested | Established | Failed | Connect time | Node RSS before → after | RSS per connection |\n|---|---|---|---|---|---|---|"
        );
        for run in &spread {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.1} s | {:.0} → {:.0} MiB | {:.1} KiB |",
                run.node,
                run.requested,
                run.established,
                run.failed,
                run.connect_seconds,
                run.node_rss_before_mib.unwrap_or(f64::NAN),
                run.node_rss_after_mib.unwrap_or(f64::NAN),
                run.rss_per_connection_kib.unwrap_or(f64::NAN)
            );
        }
        let total: usize = spread.iter().map(|r| r.established).sum();
        let _ = writeln!(
            out,
            "\nTotal: {total} connections; {}.",
            match IdleResult::held_together_ms(&spread) {
                Some(ms) => format!(
                    "all of them were open at once for {:.1} s",
                    ms as f64 / 1000.0
                ),
                None =>
                    "the runs did **not** overlap, so the total was never open at once".to_owned(),
            }
        );
        for run in spread.iter().filter(|r| r.first_error.is_some()) {
            let _ = writeln!(
                out,
                "\nFirst connection error on {}: `{}`",
                run.node,
                run.first_error.as_deref().unwrap_or_default()
            );
        }
    }
    if let Some(report) = reports.iter().find(|r| r.workload == "storm") {
        if let Some(storm) = &storm {
            let c = &report.checks;
            let _ = writeln!(
                out,
                "\n### storm\n\n| Clients | Resumed | All resumed after | p50 / p99 | Reconnect attempts | Incomplete resumes | Accepted sends | Accepted but not in PostgreSQL | Lost: observers / resumed clients | Dup / out-of-order |\n|---|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {:.2} / {:.2} s | {} | {} | {} | {} | {} / {} | {} / {} |",
                storm.clients, storm.resumed,
                storm.all_resumed_s.map_or("—".into(), |s| format!("{s:.2} s")),
                storm.resume_p50_s, storm.resume_p99_s, storm.reconnect_attempts,
                storm.incomplete_resumes, storm.accepted,
                storm.accepted_not_stored.map_or("not checked".into(), |n| n.to_string()),
                storm.observers_lost, storm.rejoined_lost, c.duplicated, c.out_of_order
            );
        }
    }
    out
}

/// The machine during each run that watched it.
fn host_table(out: &mut String, reports: &[RunReport]) {
    let watched: Vec<(&RunReport, &HostReport)> = (reports.iter())
        .filter_map(|r| Some((r, r.host.as_ref()?)))
        .collect();
    if watched.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### the machine during each run\n\nEvery process shares the same two cores. *Busy*: share of both cores' time not idle. *Waiting for a core*: share of the run during which some runnable task waited for a core (`/proc/pressure/cpu`, `some`). *Waiting for the disk*: share of the run during which some task waited for the disk (`/proc/pressure/io`, `some`; a stalled `fsync` holds up RabbitMQ's confirms and PostgreSQL's commits). *Steal*: share of the cores' time the hypervisor kept. *Context switches*: a second, all processes (`/proc/stat`, `ctxt`), and per message sent in rooms runs: a hand-off between threads or processes that finds the receiver asleep is one, and on this machine each is dear (section 1).\n\n| Run | Busy | Waiting for a core | Waiting for the disk | Steal | Context switches /s | per message sent |\n|---|---|---|---|---|---|---|"
    );
    for (report, host) in watched {
        let per_message = match (host.switches_per_s, report.workload.as_str()) {
            (Some(rate), "rooms") if report.sent_per_s > 0.0 => {
                format!("{:.1}", rate / report.sent_per_s)
            }
            _ => "—".into(),
        };
        let [busy, cpu, io, steal, switches] = host.figures("—");
        let _ = writeln!(
            out,
            "| {} | {busy} | {cpu} | {io} | {steal} | {switches} | {per_message} |",
            report.label,
        );
    }
}

/// One cell per stage of [`STAGES`]: mean, and the bucket bound p99 falls under, in ms.
fn stage_cells(stages: &[StageLatency]) -> Vec<String> {
    STAGES
        .iter()
        .map(|&stage| {
            stages
                .iter()
                .find(|s| s.stage == stage)
                .map_or("—".into(), |s| {
                    format!("{:.1} / ≤ {}", s.mean_ms, bound(s.p99_ms_at_most))
                })
        })
        .collect()
}

/// Most seconds per run in the slow-seconds table.
const SLOW_SECONDS_SHOWN: usize = 3;

/// For each rooms run, its slowest seconds above the sustainable line with each stage's mean in
/// that second: which part of the pipeline a stall was in.
fn slow_seconds_table(out: &mut String, rooms: &[&RunReport]) {
    let mut rows = Vec::new();
    for run in rooms {
        let mut slow: Vec<_> = run
            .timeline
            .iter()
            .filter(|point| point.deliveries > 0 && point.deliver_p99_ms > SUSTAINED_P99_MS)
            .collect();
        slow.sort_by(|a, b| b.deliver_p99_ms.total_cmp(&a.deliver_p99_ms));
        for point in slow.into_iter().take(SLOW_SECONDS_SHOWN) {
            let Some(observed) = run.stage_seconds.iter().find(|s| s.second == point.second) else {
                continue;
            };
            let cells = stage_cells(&observed.stages);
            let [busy, waiting_for_a_core, waiting_for_the_disk, steal, _] =
                observed.machine.figures("—");
            rows.push(format!(
                "| {} | {} | {:.1} | {} | {busy} | {waiting_for_a_core} | {waiting_for_the_disk} | {steal} |",
                run.label,
                point.second,
                point.deliver_p99_ms,
                cells.join(" | ")
            ));
        }
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### rooms: the slowest seconds\n\nThe seconds whose p99 send→deliver was above {SUSTAINED_P99_MS} ms (at most {SLOW_SECONDS_SHOWN} a run, slowest first), with each stage's mean in that second and the bucket bound its p99 fell under, from the nodes' histograms read once a second (ms), and the machine over that second (as in the machine table below). A stage far above its mean for the whole run (the table before) is where that second's time went; when none is, the time went outside the nodes' stages (the load generator, or the sockets between); when all are, it is the machine's.\n\n| Run | Second | p99 ms | {} | Busy | Waiting for a core | Waiting for the disk | Steal |\n|---|---|---|{}---|---|---|---|",
        STAGES.join(" | "),
        "---|".repeat(STAGES.len())
    );
    for row in rows {
        let _ = writeln!(out, "{row}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(second: u32, deliveries: u64, p99: f64) -> TimelinePoint {
        TimelinePoint {
            second,
            deliveries,
            deliver_p50_ms: p99 / 2.0,
            deliver_p99_ms: p99,
            deliver_max_ms: p99,
        }
    }

    #[test]
    fn seconds_over_the_line_are_counted_among_seconds_with_deliveries() {
        let timeline = [
            second(0, 100, 20.0),
            second(1, 100, 50.0),
            second(2, 100, 50.5),
            second(3, 100, 257.0),
            // The drain after the sending phase: nothing delivered, nothing to judge.
            second(4, 0, 0.0),
        ];
        assert_eq!(seconds_over(&timeline, 50.0), (2, 4));
        assert_eq!(seconds_over(&[], 50.0), (0, 0));
    }

    fn latency(stage: &str, mean_ms: f64, p99_ms_at_most: f64) -> StageLatency {
        StageLatency {
            stage: stage.into(),
            count: 100,
            mean_ms,
            p50_ms_at_most: mean_ms,
            p99_ms_at_most,
        }
    }

    #[test]
    fn slow_seconds_show_the_stages_of_that_second() {
        let mut run = RunReport::new(
            "rooms-2000",
            "rooms",
            serde_json::Value::Null,
            std::time::Duration::from_secs(10),
            Default::default(),
            Default::default(),
            &crate::stats::Recorder::new(),
            Default::default(),
            Vec::new(),
            true,
        );
        run.timeline = vec![
            second(0, 100, 8.0),
            second(1, 100, 154.6),
            second(2, 100, 60.0),
        ];
        let stage = |second: u32, store: f64| crate::stages::StageSecond {
            second,
            stages: vec![
                latency("ingest", 2.0, 5.0),
                latency("store", store, store * 2.0),
            ],
            machine: crate::host::HostReport {
                busy_percent: Some(90.0),
                cpu_pressure_percent: Some(80.0),
                io_pressure_percent: None,
                steal_percent: Some(0.25),
                switches_per_s: None,
            },
        };
        run.stage_seconds = vec![stage(0, 0.7), stage(1, 120.0), stage(2, 0.8)];
        let mut out = String::new();
        slow_seconds_table(&mut out, &[&run]);
        let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("| rooms-")).collect();
        assert_eq!(
            rows,
            [
                "| rooms-2000 | 1 | 154.6 | 2.0 / ≤ 5 | 120.0 / ≤ 240 | — | — | — | — | 90% | 80% | — | 0.2% |",
                "| rooms-2000 | 2 | 60.0 | 2.0 / ≤ 5 | 0.8 / ≤ 2 | — | — | — | — | 90% | 80% | — | 0.2% |",
            ]
        );

        // A run without slow seconds adds no table.
        run.timeline = vec![second(0, 100, 8.0)];
        let mut out = String::new();
        slow_seconds_table(&mut out, &[&run]);
        assert!(out.is_empty());
    }
}
