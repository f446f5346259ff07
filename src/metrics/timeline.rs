//! The last 15 minutes of this node at one-second resolution, kept in memory for the
//! dashboard's charts (`GET /v1/timeline`): statements by kind with their latency
//! distribution, Raft proposals, and fsyncs of the log journal with theirs.
//!
//! Recording is a few relaxed atomic adds into the current second's counters; a sampler task
//! swaps them out once a second into a bounded ring ([`limits::TIMELINE_SECONDS`]).
//! Latencies are kept as sparse log-scale histograms (four buckets per doubling, so a
//! bucket's bounds are within 19 % of each other) rather than quantiles, so that the page
//! can merge nodes exactly: the p99 of three nodes is the p99 of their summed buckets, not an
//! average of p99s.
//!
//! The counters are per process: one node is one process everywhere Cairn runs (`cairn dev`
//! included); only the in-process simulation shares them between its nodes, and it draws no
//! charts.

use crate::limits;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Statement kinds, as `Metrics` labels them.
pub const KINDS: [&str; 4] = ["read", "write", "ddl", "other"];

/// Buckets per doubling of the latency.
const PER_DOUBLING: f64 = 4.0;
/// Bucket `i` holds latencies in [2^(i/4), 2^((i+1)/4)) microseconds; the last one
/// everything from about 71 minutes up.
const BUCKETS: usize = 128;

/// One latency distribution being filled during the current second.
struct Histogram {
    counts: [AtomicU64; BUCKETS],
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    fn observe(&self, took: Duration) {
        self.counts[bucket(took)].fetch_add(1, Relaxed);
    }

    /// The second's buckets as (bucket, count) pairs, non-empty ones only; resets them.
    fn take(&self) -> Vec<(u8, u32)> {
        self.counts
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c.swap(0, Relaxed) {
                0 => None,
                n => Some((i as u8, n.min(u32::MAX as u64) as u32)),
            })
            .collect()
    }
}

fn bucket(took: Duration) -> usize {
    let micros = took.as_secs_f64() * 1e6;
    if micros < 1.0 {
        return 0;
    }
    ((micros.log2() * PER_DOUBLING) as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in milliseconds (what a quantile falling in it reports).
pub fn bucket_upper_ms(i: u8) -> f64 {
    2f64.powf((f64::from(i) + 1.0) / PER_DOUBLING) / 1000.0
}

/// The `q` quantile (0..1) of a sparse histogram, as the upper bound of its bucket in ms.
pub fn quantile_ms(buckets: &[(u8, u32)], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|(_, n)| u64::from(*n)).sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut sorted = buckets.to_vec();
    sorted.sort_by_key(|(i, _)| *i);
    let mut seen = 0;
    for (i, n) in sorted {
        seen += u64::from(n);
        if seen >= rank {
            return Some(bucket_upper_ms(i));
        }
    }
    None
}

struct Current {
    statements: [AtomicU64; KINDS.len()],
    errors: AtomicU64,
    latency: [Histogram; KINDS.len()],
    proposals: AtomicU64,
    fsyncs: Histogram,
}

/// The second being filled and the seconds kept.
struct Timeline {
    current: Current,
    ring: Mutex<VecDeque<Second>>,
}

static TIMELINE: Timeline = Timeline::new();

/// One second of this node.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Second {
    /// The end of the second, in Unix milliseconds.
    pub at_ms: u64,
    /// Statements finished, by kind (`KINDS` order), and how many of them failed.
    pub statements: [u64; KINDS.len()],
    pub errors: u64,
    /// Their latencies, by kind: sparse (bucket, count) histograms (`quantile_ms`).
    pub latency: [Vec<(u8, u32)>; KINDS.len()],
    /// Raft proposals made here as a shard's leader (one per batch of writes).
    pub proposals: u64,
    /// Fsyncs of the node's Raft log journal and their latencies (same buckets).
    pub fsyncs: Vec<(u8, u32)>,
}

impl Timeline {
    const fn new() -> Timeline {
        Timeline {
            current: Current {
                statements: [const { AtomicU64::new(0) }; KINDS.len()],
                errors: AtomicU64::new(0),
                latency: [const { Histogram::new() }; KINDS.len()],
                proposals: AtomicU64::new(0),
                fsyncs: Histogram::new(),
            },
            ring: Mutex::new(VecDeque::new()),
        }
    }

    fn statement(&self, kind: &str, ok: bool, took: Duration) {
        let i = KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(KINDS.len() - 1);
        self.current.statements[i].fetch_add(1, Relaxed);
        if !ok {
            self.current.errors.fetch_add(1, Relaxed);
        }
        self.current.latency[i].observe(took);
    }

    /// Close the current second (ending at `at_ms`) into the ring.
    fn close_second(&self, at_ms: u64) {
        let c = &self.current;
        let second = Second {
            at_ms,
            statements: std::array::from_fn(|i| c.statements[i].swap(0, Relaxed)),
            errors: c.errors.swap(0, Relaxed),
            latency: std::array::from_fn(|i| c.latency[i].take()),
            proposals: c.proposals.swap(0, Relaxed),
            fsyncs: c.fsyncs.take(),
        };
        let mut ring = self.ring.lock().expect("timeline lock");
        if ring.len() >= limits::TIMELINE_SECONDS {
            ring.pop_front();
        }
        ring.push_back(second);
    }

    fn since(&self, since_ms: u64) -> Vec<Second> {
        let ring = self.ring.lock().expect("timeline lock");
        let first = ring.partition_point(|s| s.at_ms <= since_ms);
        ring.range(first..).cloned().collect()
    }
}

/// A statement of `kind` finished after `took`.
pub fn statement(kind: &str, ok: bool, took: Duration) {
    TIMELINE.statement(kind, ok, took);
}

/// A leader proposed one entry to its group.
pub fn proposal() {
    TIMELINE.current.proposals.fetch_add(1, Relaxed);
}

/// The log journal was fsynced, taking `took`.
pub fn fsync(took: Duration) {
    TIMELINE.current.fsyncs.observe(took);
}

/// The seconds kept that ended after `since_ms`, oldest first.
pub fn since(since_ms: u64) -> Vec<Second> {
    TIMELINE.since(since_ms)
}

/// Start the once-a-second sampler (once per process; later calls do nothing).
pub fn start() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                TIMELINE.close_second(crate::storage::functions::now_micros() / 1000);
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_a_fifth_of_the_latency_they_hold() {
        for micros in [1u64, 7, 100, 999, 1_000, 12_345, 250_000, 3_000_000] {
            let upper = bucket_upper_ms(bucket(Duration::from_micros(micros)) as u8);
            let ms = micros as f64 / 1000.0;
            assert!(upper >= ms, "{micros} µs reported as {upper} ms");
            assert!(
                upper <= ms * 1.19 + 1e-9,
                "{micros} µs reported as {upper} ms"
            );
        }
    }

    #[test]
    fn quantiles_of_merged_histograms_count_every_observation() {
        // 98 fast statements on one node, 2 slow ones on another: p50 is fast, p99 slow.
        let fast = [(bucket(Duration::from_micros(500)) as u8, 98)];
        let slow = [(bucket(Duration::from_millis(200)) as u8, 2)];
        let merged: Vec<(u8, u32)> = fast.iter().chain(&slow).copied().collect();
        let p50 = quantile_ms(&merged, 0.5).unwrap();
        let p99 = quantile_ms(&merged, 0.99).unwrap();
        assert!((0.5..0.6).contains(&p50), "p50 {p50}");
        assert!((200.0..240.0).contains(&p99), "p99 {p99}");
        assert_eq!(quantile_ms(&[], 0.5), None);
    }

    #[test]
    fn the_ring_keeps_the_last_fifteen_minutes_and_answers_what_came_after() {
        let timeline = Timeline::new();
        let base = 1_000_000_000;
        for s in 0..(limits::TIMELINE_SECONDS as u64 + 10) {
            timeline.statement("write", s % 2 == 0, Duration::from_millis(3));
            timeline.close_second(base + s * 1000);
        }
        let all = timeline.since(0);
        assert_eq!(all.len(), limits::TIMELINE_SECONDS);
        assert_eq!(all[0].at_ms, base + 10_000);
        let last = timeline.since(base + (limits::TIMELINE_SECONDS as u64 + 7) * 1000);
        assert_eq!(last.len(), 2);
        assert_eq!(last[1].statements, [0, 1, 0, 0]);
        assert_eq!(last[1].latency[1].len(), 1);
    }
}
