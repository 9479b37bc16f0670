//! What a run measures: counters for the progress bar, latency histograms (HDR), a per-second
//! timeline, and per-room sequence checks (lost, duplicated, out of order).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The instant every timestamp of this process counts from; bodies carry microseconds since it.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Microseconds since this process's [`EPOCH`].
pub fn now_micros() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

/// Largest latency a histogram holds: one minute, in microseconds.
const MAX_MICROS: u64 = 60_000_000;
/// Samples a connection keeps before handing them to the recorder.
const FLUSH_SAMPLES: usize = 256;
/// Longest a connection keeps samples before handing them over.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

fn histogram(significant_digits: u8) -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; a failure would be a programming error.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_MICROS, significant_digits).expect("valid histogram bounds")
}

/// Counters read by the progress bar while the run goes on.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub stored: AtomicU64,
    pub delivered: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    pub sent: u64,
    pub accepted: u64,
    pub refused: u64,
    pub stored: u64,
    pub delivered: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Clone, Copy, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// One second of the run, for the latency-over-time plot.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TimelinePoint {
    pub second: u32,
    pub deliveries: u64,
    pub deliver_p50_ms: f64,
    pub deliver_p99_ms: f64,
    pub deliver_max_ms: f64,
}

struct Histograms {
    accept: Histogram<u64>,
    deliver: Histogram<u64>,
    deliver_remote: Histogram<u64>,
    per_second: Vec<Histogram<u64>>,
}

/// Shared by every connection of a run.
pub struct Recorder {
    pub counters: Counters,
    started_micros: u64,
    histograms: Mutex<Histograms>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            counters: Counters::default(),
            started_micros: now_micros(),
            histograms: Mutex::new(Histograms {
                accept: histogram(3),
                deliver: histogram(3),
                deliver_remote: histogram(3),
                per_second: Vec::new(),
            }),
        }
    }

    fn absorb(&self, samples: &mut Samples) {
        let Ok(mut histograms) = self.histograms.lock() else {
            return;
        };
        for &latency in &samples.accept {
            let _ = histograms.accept.record(latency.clamp(1, MAX_MICROS));
        }
        for &(at, latency, remote) in &samples.deliver {
            let latency = latency.clamp(1, MAX_MICROS);
            let _ = histograms.deliver.record(latency);
            if remote {
                let _ = histograms.deliver_remote.record(latency);
            }
            let second = (at.saturating_sub(self.started_micros) / 1_000_000) as usize;
            while histograms.per_second.len() <= second {
                histograms.per_second.push(histogram(2));
            }
            let _ = histograms.per_second[second].record(latency);
        }
        samples.accept.clear();
        samples.deliver.clear();
    }

    /// Send→accepted, send→deliver (all, and receivers on another node than the sender).
    pub fn latencies(&self) -> (Percentiles, Percentiles, Percentiles) {
        match self.histograms.lock() {
            Ok(h) => (
                Percentiles::of(&h.accept),
                Percentiles::of(&h.deliver),
                Percentiles::of(&h.deliver_remote),
            ),
            Err(_) => Default::default(),
        }
    }

    pub fn timeline(&self) -> Vec<TimelinePoint> {
        let Ok(h) = self.histograms.lock() else {
            return Vec::new();
        };
        h.per_second
            .iter()
            .enumerate()
            .map(|(second, histogram)| {
                let p = Percentiles::of(histogram);
                TimelinePoint {
                    second: second as u32,
                    deliveries: p.count,
                    deliver_p50_ms: p.p50,
                    deliver_p99_ms: p.p99,
                    deliver_max_ms: p.max,
                }
            })
            .collect()
    }
}

/// A connection's samples not yet handed to the [`Recorder`] (so the lock is taken rarely).
#[derive(Default)]
pub struct Samples {
    accept: Vec<u64>,
    /// (received at, latency, receiver on another node than the sender)
    deliver: Vec<(u64, u64, bool)>,
    /// When the samples were last handed over, in µs since the tool started ([`now_micros`]).
    last_flush: Option<u64>,
}

impl Samples {
    pub fn accept(&mut self, latency_micros: u64) {
        self.accept.push(latency_micros);
    }

    pub fn deliver(&mut self, received_at: u64, latency_micros: u64, remote: bool) {
        self.deliver.push((received_at, latency_micros, remote));
    }

    /// Hands the samples over when there are many or they are getting old. `now` is
    /// [`now_micros`], which the caller has just read for its sample: one clock read per frame.
    pub fn maybe_flush(&mut self, recorder: &Recorder, now: u64) {
        let last = *self.last_flush.get_or_insert(now);
        if self.accept.len() + self.deliver.len() >= FLUSH_SAMPLES
            || now.saturating_sub(last) > FLUSH_EVERY.as_micros() as u64
        {
            self.flush(recorder);
        }
    }

    pub fn flush(&mut self, recorder: &Recorder) {
        recorder.absorb(self);
        self.last_flush = Some(now_micros());
    }
}

/// What one connection saw of one room: every sequence number, once, in order?
#[derive(Debug, Clone)]
pub struct RoomView {
    /// The first sequence number this connection must see (the room's `last_seq` at join + 1).
    pub first: i64,
    seen: Vec<u64>,
    pub highest: i64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub distinct: u64,
}

impl RoomView {
    pub fn new(last_seq_at_join: i64) -> RoomView {
        RoomView {
            first: last_seq_at_join + 1,
            seen: Vec::new(),
            highest: last_seq_at_join,
            duplicated: 0,
            out_of_order: 0,
            distinct: 0,
        }
    }

    pub fn record(&mut self, seq: i64) {
        if seq < self.first {
            self.duplicated += 1;
            return;
        }
        let offset = (seq - self.first) as usize;
        let (word, bit) = (offset / 64, 1u64 << (offset % 64));
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicated += 1;
            return;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        if seq < self.highest {
            self.out_of_order += 1;
        }
        self.highest = self.highest.max(seq);
    }

    /// The sequence numbers up to `final_seq` this connection never saw.
    pub fn missing(&self, final_seq: i64) -> Vec<i64> {
        (self.first..=final_seq)
            .filter(|seq| {
                let offset = (seq - self.first) as usize;
                let (word, bit) = (offset / 64, 1u64 << (offset % 64));
                self.seen.get(word).is_none_or(|w| w & bit == 0)
            })
            .collect()
    }

    /// Messages between the join and `final_seq` (the room's newest) this connection never saw.
    pub fn lost(&self, final_seq: i64) -> u64 {
        let expected = (final_seq - self.first + 1).max(0) as u64;
        expected.saturating_sub(self.distinct)
    }
}

#[cfg(test)]
mod tests {
    use super::RoomView;

    #[test]
    fn a_room_view_tells_lost_duplicated_and_out_of_order_apart() {
        let mut view = RoomView::new(10);
        for seq in [11, 12, 14, 13, 13, 10, 16] {
            view.record(seq);
        }
        assert_eq!(view.distinct, 5);
        assert_eq!(view.duplicated, 2);
        assert_eq!(view.out_of_order, 1);
        assert_eq!(view.lost(17), 2);
    }
}
