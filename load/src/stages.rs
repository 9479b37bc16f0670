//! Where a message's time goes, from the nodes' own histograms: `/metrics` is read from every
//! node before and after a run, and the difference of each stage's histogram gives its mean and
//! bucket quantiles over that run's messages.
//!
//! The stages are the persister's (`chat_pipeline_seconds{stage}`: ingest, store, queue,
//! invalidate, publish) and the whole trip to the receiving node's sockets
//! (`chat_delivery_seconds`); what the last leaves over the persister's stages is the delivery
//! hop through RabbitMQ and the node's fan-out.

use crate::host::{HostMeter, HostReport};
use crate::Node;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The stage names, in the order a message passes them; `delivered` is the whole trip.
pub const STAGES: [&str; 6] = [
    "ingest",
    "store",
    "queue",
    "invalidate",
    "publish",
    "delivered",
];

/// One stage over one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageLatency {
    pub stage: String,
    /// Observations: messages (per receiving node for `delivered`).
    pub count: u64,
    pub mean_ms: f64,
    /// Upper bounds of the buckets the quantiles fall in.
    pub p50_ms_at_most: f64,
    pub p99_ms_at_most: f64,
}

/// Each stage's mean over one second of a run, so that a slow second can be told apart by the
/// stage it was slow in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageSecond {
    /// Seconds since the run started, as in the run's timeline.
    pub second: u32,
    /// The stages observed in that second, in [`STAGES`] order: a stall that holds up a few
    /// messages shows in a stage's p99 before it moves its mean.
    pub stages: Vec<StageLatency>,
    /// The machine over the same second: a stall of every stage at once is the machine's.
    #[serde(default)]
    pub machine: HostReport,
}

/// Cumulative bucket counts (by upper bound in seconds), sum and count of one histogram.
#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: BTreeMap<u64, f64>,
    sum: f64,
    count: f64,
}

/// Every stage's histogram, summed over the nodes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    stages: BTreeMap<String, Histogram>,
}

/// Reads every node's `/metrics`; nodes that do not answer are left out.
pub async fn snapshot(nodes: &[Node]) -> Snapshot {
    snapshot_with(&reqwest::Client::new(), nodes).await
}

/// Reads the nodes' stages (two small HTTP requests a second) and the machine's counters at
/// the end of every second from `started` until `until`, and returns each second's figures.
pub async fn follow(nodes: &[Node], started: Instant, until: Instant) -> Vec<StageSecond> {
    let client = reqwest::Client::new();
    let mut previous = snapshot_with(&client, nodes).await;
    let mut machine = HostMeter::start();
    let mut seconds = Vec::new();
    for second in 0u32.. {
        let end = started + Duration::from_secs(u64::from(second) + 1);
        if end > until {
            break;
        }
        tokio::time::sleep_until(end).await;
        let machine_then = machine.finish();
        machine = HostMeter::start();
        let now = snapshot_with(&client, nodes).await;
        seconds.push(StageSecond {
            second,
            stages: now.since(&previous),
            machine: machine_then,
        });
        previous = now;
    }
    seconds
}

async fn snapshot_with(client: &reqwest::Client, nodes: &[Node]) -> Snapshot {
    let mut total = Snapshot::default();
    for node in nodes {
        let Some(metrics) = node.metrics else {
            continue;
        };
        let url = format!("http://{metrics}/metrics");
        let Ok(response) = client.get(&url).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        total.add_text(&text);
    }
    total
}

impl Snapshot {
    fn add_text(&mut self, text: &str) {
        for line in text.lines() {
            let Some((name, labels, value)) = parse_line(line) else {
                continue;
            };
            let (family, part) = if let Some(family) = name.strip_suffix("_bucket") {
                (family, "bucket")
            } else if let Some(family) = name.strip_suffix("_sum") {
                (family, "sum")
            } else if let Some(family) = name.strip_suffix("_count") {
                (family, "count")
            } else {
                continue;
            };
            let stage = match family {
                "chat_pipeline_seconds" => match label(labels, "stage") {
                    Some(stage) => stage.to_owned(),
                    None => continue,
                },
                "chat_delivery_seconds" => "delivered".to_owned(),
                _ => continue,
            };
            let histogram = self.stages.entry(stage).or_default();
            match part {
                "bucket" => {
                    let Some(bound) = label(labels, "le") else {
                        continue;
                    };
                    let bound = if bound == "+Inf" {
                        f64::INFINITY
                    } else {
                        bound.parse().unwrap_or(f64::INFINITY)
                    };
                    *histogram.buckets.entry(micros(bound)).or_default() += value;
                }
                "sum" => histogram.sum += value,
                _ => histogram.count += value,
            }
        }
    }

    /// Each stage's latency between `before` and this snapshot, in [`STAGES`] order; stages
    /// without observations are left out.
    pub fn since(&self, before: &Snapshot) -> Vec<StageLatency> {
        STAGES
            .iter()
            .filter_map(|&stage| {
                let after = self.stages.get(stage)?;
                let empty = Histogram::default();
                let earlier = before.stages.get(stage).unwrap_or(&empty);
                let count = after.count - earlier.count;
                if count < 1.0 {
                    return None;
                }
                let quantile = |q: f64| -> f64 {
                    after
                        .buckets
                        .iter()
                        .find(|(bound, cumulative)| {
                            let was = earlier.buckets.get(bound).copied().unwrap_or_default();
                            *cumulative - was >= q * count
                        })
                        .map_or(f64::INFINITY, |(bound, _)| *bound as f64 / 1000.0)
                };
                Some(StageLatency {
                    stage: stage.to_owned(),
                    count: count as u64,
                    mean_ms: (after.sum - earlier.sum) / count * 1000.0,
                    p50_ms_at_most: quantile(0.5),
                    p99_ms_at_most: quantile(0.99),
                })
            })
            .collect()
    }
}

/// A bucket bound in microseconds (a map key); `+Inf` sorts last.
fn micros(seconds: f64) -> u64 {
    if seconds.is_finite() {
        (seconds * 1e6).round() as u64
    } else {
        u64::MAX
    }
}

/// `name{labels} value` or `name value`.
fn parse_line(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    match head.split_once('{') {
        Some((name, rest)) => Some((name, rest.strip_suffix('}')?, value)),
        None => Some((head, "", value)),
    }
}

/// The value of `key` in `a="x",b="y"`.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP chat_pipeline_seconds x
chat_pipeline_seconds_bucket{stage="store",le="0.001"} 1
chat_pipeline_seconds_bucket{stage="store",le="0.01"} 2
chat_pipeline_seconds_bucket{stage="store",le="+Inf"} 2
chat_pipeline_seconds_sum{stage="store"} 0.006
chat_pipeline_seconds_count{stage="store"} 2
"#;

    const AFTER: &str = r#"chat_pipeline_seconds_bucket{stage="store",le="0.001"} 1
chat_pipeline_seconds_bucket{stage="store",le="0.01"} 101
chat_pipeline_seconds_bucket{stage="store",le="+Inf"} 102
chat_pipeline_seconds_sum{stage="store"} 0.706
chat_pipeline_seconds_count{stage="store"} 102
chat_delivery_seconds_bucket{le="0.02"} 4
chat_delivery_seconds_bucket{le="+Inf"} 4
chat_delivery_seconds_sum 0.04
chat_delivery_seconds_count 4
chat_messages_persisted_total 102
"#;

    #[test]
    fn a_run_is_the_difference_of_two_snapshots() {
        let mut before = Snapshot::default();
        before.add_text(BEFORE);
        let mut after = Snapshot::default();
        after.add_text(AFTER);
        let stages = after.since(&before);
        let names: Vec<&str> = stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(names, ["store", "delivered"]);
        let store = &stages[0];
        assert_eq!(store.count, 100);
        assert!((store.mean_ms - 7.0).abs() < 1e-9, "{store:?}");
        assert_eq!(store.p50_ms_at_most, 10.0);
        assert_eq!(store.p99_ms_at_most, 10.0);
        assert_eq!(stages[1].count, 4);
        assert!((stages[1].mean_ms - 10.0).abs() < 1e-9);
        assert_eq!(stages[1].p99_ms_at_most, 20.0);
    }

    #[test]
    fn two_nodes_add_up() {
        let mut both = Snapshot::default();
        both.add_text(AFTER);
        both.add_text(AFTER);
        let stages = both.since(&Snapshot::default());
        assert_eq!(stages[0].count, 204);
        assert_eq!(stages[1].count, 8);
    }
}
