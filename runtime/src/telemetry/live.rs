//! The per-second ring: what happened in each of the last 300 seconds (commands, errors,
//! events appended and projected, queries, and latency distributions), kept in memory so the
//! requirement's 1-second granularity holds whatever the Prometheus scrape interval is.
//!
//! Recording is a few relaxed atomic additions into the slot of the current second; a slot is
//! zeroed when its second comes round again. Each scrape of `/metrics` calls [`publish`],
//! which sets the `nexus_live_*` gauges from the last complete second and the peak of every
//! second since the previous scrape. With several scrapers, each one's "since the previous
//! scrape" is the time since whichever scraped last.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds the ring keeps.
pub const SECONDS: usize = 300;
/// Latency buckets per series: bucket `i` holds latencies up to `FIRST_BOUND × RATIO^i`.
const LATENCY_BUCKETS: usize = 80;
/// The first bucket's upper bound, in seconds (10 µs).
const FIRST_BOUND: f64 = 0.000_01;
/// Each bucket's bound over the previous one: quantiles are exact to 25 %.
const RATIO: f64 = 1.25;

/// What the ring counts per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// Commands handled.
    Commands,
    /// Commands that did not succeed (rejected, conflict, error).
    CommandErrors,
    /// Events appended by commands.
    EventsAppended,
    /// Events projections committed.
    EventsProjected,
    /// Read-model queries answered.
    Queries,
}

impl Series {
    /// Every series, in label order.
    pub const ALL: [Self; 5] = [
        Self::Commands,
        Self::CommandErrors,
        Self::EventsAppended,
        Self::EventsProjected,
        Self::Queries,
    ];

    /// The `series` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Commands => "commands",
            Self::CommandErrors => "command_errors",
            Self::EventsAppended => "events_appended",
            Self::EventsProjected => "events_projected",
            Self::Queries => "queries",
        }
    }
}

/// Which latencies the ring keeps distributions of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Command handling.
    Command,
    /// Read-model queries.
    Query,
}

impl Latency {
    /// Every latency series.
    pub const ALL: [Self; 2] = [Self::Command, Self::Query];

    /// The `series` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Query => "query",
        }
    }
}

/// The quantiles published per latency series.
pub const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

struct Slot {
    /// The Unix second this slot holds; another value means it is stale.
    second: AtomicU64,
    counts: [AtomicU64; Series::ALL.len()],
    latencies: [[AtomicU32; LATENCY_BUCKETS]; Latency::ALL.len()],
}

impl Slot {
    fn new() -> Self {
        Self {
            second: AtomicU64::new(0),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            latencies: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU32::new(0))),
        }
    }

    fn clear(&self) {
        for count in &self.counts {
            count.store(0, Ordering::Relaxed);
        }
        for series in &self.latencies {
            for bucket in series {
                bucket.store(0, Ordering::Relaxed);
            }
        }
    }
}

struct Ring {
    slots: Vec<Slot>,
    /// Serialises the zeroing of a slot whose second came round again.
    rotate: Mutex<()>,
    /// The second of the previous scrape: peaks are taken from there on.
    last_scrape: AtomicU64,
}

fn ring() -> &'static Ring {
    static RING: std::sync::OnceLock<Ring> = std::sync::OnceLock::new();
    RING.get_or_init(|| Ring {
        slots: (0..SECONDS).map(|_| Slot::new()).collect(),
        rotate: Mutex::new(()),
        last_scrape: AtomicU64::new(0),
    })
}

fn now_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Ring {
    /// The slot of `second`, zeroed first if it still holds an older second.
    fn current(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % SECONDS as u64) as usize];
        if slot.second.load(Ordering::Acquire) != second {
            let _rotating = self
                .rotate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.second.load(Ordering::Acquire) != second {
                slot.clear();
                slot.second.store(second, Ordering::Release);
            }
        }
        slot
    }

    /// The slot of a past `second`, if the ring still holds it.
    fn past(&self, second: u64) -> Option<&Slot> {
        let slot = &self.slots[(second % SECONDS as u64) as usize];
        (slot.second.load(Ordering::Acquire) == second).then_some(slot)
    }
}

/// Counts `n` of `series` in the current second.
pub fn count(series: Series, n: u64) {
    let ring = ring();
    ring.current(now_second()).counts[series as usize].fetch_add(n, Ordering::Relaxed);
}

/// Records one latency of `series` in the current second.
pub fn latency(series: Latency, elapsed: Duration) {
    let ring = ring();
    let bucket = bucket_of(elapsed.as_secs_f64());
    ring.current(now_second()).latencies[series as usize][bucket].fetch_add(1, Ordering::Relaxed);
}

fn bucket_of(seconds: f64) -> usize {
    if seconds <= FIRST_BOUND {
        return 0;
    }
    let index = ((seconds / FIRST_BOUND).ln() / RATIO.ln()).ceil();
    (index as usize).min(LATENCY_BUCKETS - 1)
}

fn bound_of(bucket: usize) -> f64 {
    FIRST_BOUND * RATIO.powi(bucket as i32)
}

/// The `q` quantile of a bucketed distribution (its bucket's upper bound), or 0 when empty.
fn quantile(buckets: &[u64; LATENCY_BUCKETS], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bound_of(i);
        }
    }
    bound_of(LATENCY_BUCKETS - 1)
}

/// One second of the ring, read out.
#[derive(Debug, Clone, PartialEq)]
pub struct Second {
    /// The Unix second.
    pub second: u64,
    /// Counts per [`Series`], in [`Series::ALL`] order.
    pub counts: [u64; Series::ALL.len()],
    /// Quantiles per [`Latency`] (in [`Latency::ALL`] order), in [`QUANTILES`] order, seconds.
    pub quantiles: [[f64; QUANTILES.len()]; Latency::ALL.len()],
}

fn read(second: u64) -> Second {
    let mut out = Second {
        second,
        counts: [0; Series::ALL.len()],
        quantiles: [[0.0; QUANTILES.len()]; Latency::ALL.len()],
    };
    let Some(slot) = ring().past(second) else {
        return out;
    };
    for (i, count) in slot.counts.iter().enumerate() {
        out.counts[i] = count.load(Ordering::Relaxed);
    }
    for (s, series) in slot.latencies.iter().enumerate() {
        let buckets: [u64; LATENCY_BUCKETS] =
            std::array::from_fn(|i| u64::from(series[i].load(Ordering::Relaxed)));
        for (k, q) in QUANTILES.iter().enumerate() {
            out.quantiles[s][k] = quantile(&buckets, *q);
        }
    }
    out
}

/// The last `n` complete seconds (at most [`SECONDS`] − 1), oldest first.
pub fn recent(n: usize) -> Vec<Second> {
    let now = now_second();
    let n = n.min(SECONDS - 1) as u64;
    (now.saturating_sub(n)..now).map(read).collect()
}

/// Sets the `nexus_live_*` gauges: the last complete second, and the peaks of every complete
/// second since the previous call. Called by every scrape of `/metrics`.
pub fn publish() {
    let now = now_second();
    let last = read(now.saturating_sub(1));
    let previous = ring().last_scrape.swap(now, Ordering::AcqRel);
    let from = previous.max(now.saturating_sub(SECONDS as u64 - 1));
    let window: Vec<Second> = (from..now).map(read).collect();
    for (i, series) in Series::ALL.iter().enumerate() {
        let label = series.as_str();
        metrics::gauge!("nexus_live_per_second", "series" => label).set(last.counts[i] as f64);
        let peak = window
            .iter()
            .map(|s| s.counts[i])
            .max()
            .unwrap_or(last.counts[i]);
        metrics::gauge!("nexus_live_per_second_peak", "series" => label).set(peak as f64);
    }
    for (s, series) in Latency::ALL.iter().enumerate() {
        let label = series.as_str();
        for (k, q) in QUANTILES.iter().enumerate() {
            metrics::gauge!("nexus_live_latency_seconds", "series" => label, "quantile" => quantile_label(*q))
                .set(last.quantiles[s][k]);
        }
        let p99 = QUANTILES.len() - 1;
        let peak = window
            .iter()
            .map(|w| w.quantiles[s][p99])
            .fold(last.quantiles[s][p99], f64::max);
        metrics::gauge!("nexus_live_latency_peak_seconds", "series" => label).set(peak);
    }
}

fn quantile_label(q: f64) -> &'static str {
    if q <= 0.5 {
        "0.5"
    } else if q <= 0.95 {
        "0.95"
    } else {
        "0.99"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_ten_microseconds_to_minutes_within_a_quarter() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(FIRST_BOUND), 0);
        for seconds in [0.000_05, 0.001, 0.02, 0.7, 3.0, 60.0] {
            let b = bucket_of(seconds);
            assert!(bound_of(b) >= seconds, "{seconds}");
            assert!(bound_of(b) <= seconds * RATIO * 1.000_001, "{seconds}");
        }
        assert_eq!(bucket_of(1e9), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn quantiles_come_from_the_recorded_distribution() {
        let mut buckets = [0u64; LATENCY_BUCKETS];
        buckets[bucket_of(0.001)] = 90;
        buckets[bucket_of(0.1)] = 10;
        assert!((quantile(&buckets, 0.5) - bound_of(bucket_of(0.001))).abs() < 1e-12);
        assert!((quantile(&buckets, 0.95) - bound_of(bucket_of(0.1))).abs() < 1e-12);
        assert_eq!(quantile(&[0; LATENCY_BUCKETS], 0.99), 0.0);
    }

    #[test]
    fn counts_land_in_the_current_second_and_read_back_once_it_is_complete() {
        let before = now_second();
        count(Series::Queries, 3);
        latency(Latency::Query, Duration::from_millis(2));
        let slot = ring().past(before).or_else(|| ring().past(before + 1));
        let slot = slot.expect("the current second's slot");
        assert!(slot.counts[Series::Queries as usize].load(Ordering::Relaxed) >= 3);
        // A second the ring never saw reads as zeros, not as what its slot held before.
        let stale = read(before.saturating_sub(SECONDS as u64 * 2));
        assert_eq!(stale.counts, [0; Series::ALL.len()]);
    }
}
