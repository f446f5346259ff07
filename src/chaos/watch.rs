//! The `watch` workload's checker: what WebSocket subscribers received, judged against what
//! the writers did — etcd's watch properties, per shard.
//!
//! Writers update a few hot rows (`Write(v)`: the row's `v` becomes the unique `v`) and
//! insert new ones (`Add(v)`: row `v` with `v = v`). Every subscriber follows the table
//! from one start token, resuming from its last token whenever its connection ends. For each
//! subscriber:
//! - **ordered, unique**: per shard, event positions strictly increase in delivery order;
//! - **bookmarkable**: no event arrives at or before a position a progress message said was
//!   already delivered;
//! - **reliable** (unfiltered): each acknowledged write's value arrives exactly once, a
//!   failed write's never, an unknown one's at most once, and nothing never written;
//!   each row's events chain (an event's old value is the row's previous new value: a
//!   dropped or reordered event breaks the chain); a write acknowledged before another on
//!   the same shard began is delivered before it;
//! - **complete**: it caught up with the end token taken after the writers stopped;
//! - a filtered subscriber gets exactly the unfiltered stream's events whose old or new
//!   row matches, in the same order at the same positions.

use super::history::{Call, Op, Outcome};
use crate::cluster::feed::Token;
use crate::ids::ShardId;
use crate::storage::events::Position;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// What a subscriber received, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seen {
    Event {
        shard: String,
        /// The subscription's token after this event.
        token: String,
        op: String,
        id: i64,
        old: Option<i64>,
        new: Option<i64>,
    },
    Progress(String),
    /// The connection ended (a fault, or the client dropped it) and it resumed.
    Resumed,
    /// An error that ended the subscription for good.
    Failed(String),
}

/// One subscriber's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Log {
    pub name: String,
    /// `v % modulus = 0` on the old or new row, for a filtered subscriber.
    pub modulus: Option<i64>,
    pub seen: Vec<Seen>,
}

#[derive(Debug, Clone, Default)]
pub struct WatchVerdict {
    pub subscribers: usize,
    pub events: usize,
    pub resumes: usize,
    pub problems: Vec<String>,
}

impl WatchVerdict {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn parse(token: &str) -> Option<Token> {
    token.parse().ok()
}

fn shard_of(name: &str) -> Option<ShardId> {
    name.strip_prefix('s')?.parse().ok().map(ShardId)
}

/// One delivered event with its shard position.
#[derive(Debug, Clone, PartialEq)]
struct Delivered {
    shard: ShardId,
    after: Position,
    op: String,
    id: i64,
    old: Option<i64>,
    new: Option<i64>,
}

/// Check every log against the writers' history. `initial` holds the hot rows' values
/// before the run; `end` is where every subscriber must have caught up to.
pub fn check_watch(
    ops: &[Op],
    initial: &BTreeMap<i64, i64>,
    logs: &[Log],
    end: &Token,
) -> WatchVerdict {
    let mut verdict = WatchVerdict {
        subscribers: logs.len(),
        ..WatchVerdict::default()
    };
    let mut reference: Option<Vec<Delivered>> = None;
    for log in logs {
        let delivered = check_order(log, end, &mut verdict);
        verdict.events += delivered.len();
        verdict.resumes += log.seen.iter().filter(|s| **s == Seen::Resumed).count();
        match log.modulus {
            None => {
                check_values(&log.name, ops, initial, &delivered, &mut verdict);
                if reference.is_none() {
                    reference = Some(delivered);
                }
            }
            Some(m) => {
                if let Some(reference) = &reference {
                    check_filtered(&log.name, m, reference, &delivered, &mut verdict);
                }
            }
        }
    }
    verdict
}

/// Ordered, unique, bookmarkable, complete; the events delivered.
fn check_order(log: &Log, end: &Token, verdict: &mut WatchVerdict) -> Vec<Delivered> {
    let name = &log.name;
    let mut last: BTreeMap<ShardId, Position> = BTreeMap::new();
    let mut progress: BTreeMap<ShardId, Position> = BTreeMap::new();
    let mut out = Vec::new();
    for seen in &log.seen {
        match seen {
            Seen::Event {
                shard,
                token,
                op,
                id,
                old,
                new,
            } => {
                let (Some(s), Some(t)) = (shard_of(shard), parse(token)) else {
                    verdict
                        .problems
                        .push(format!("{name}: unreadable event {shard} {token}"));
                    continue;
                };
                let Some(&after) = t.0.get(&s) else {
                    verdict.problems.push(format!(
                        "{name}: event's token {token} lacks its shard {shard}"
                    ));
                    continue;
                };
                if let Some(prev) = last.get(&s) {
                    if after <= *prev {
                        verdict.problems.push(format!(
                            "{name}: {shard} event at {after} delivered after {prev} (out of order or twice)"
                        ));
                    }
                }
                if let Some(p) = progress.get(&s) {
                    if after <= *p {
                        verdict.problems.push(format!(
                            "{name}: {shard} event at {after} after progress said {p} was delivered"
                        ));
                    }
                }
                last.insert(s, after);
                out.push(Delivered {
                    shard: s,
                    after,
                    op: op.clone(),
                    id: *id,
                    old: *old,
                    new: *new,
                });
            }
            Seen::Progress(token) => match parse(token) {
                Some(t) => {
                    for (s, p) in t.0 {
                        let entry = progress.entry(s).or_insert(p);
                        *entry = (*entry).max(p);
                    }
                }
                None => verdict
                    .problems
                    .push(format!("{name}: unreadable progress {token}")),
            },
            Seen::Resumed => {}
            Seen::Failed(why) => verdict.problems.push(format!("{name}: ended with {why}")),
        }
    }
    for (s, target) in &end.0 {
        let reached = last
            .get(s)
            .copied()
            .max(progress.get(s).copied())
            .unwrap_or_default();
        if reached < *target {
            verdict.problems.push(format!(
                "{name}: never caught up on {s}: reached {reached}, the end is {target}"
            ));
        }
    }
    out
}

/// Reliable: each write's value delivered as its outcome says; rows' events chain;
/// real-time order within a shard.
fn check_values(
    name: &str,
    ops: &[Op],
    initial: &BTreeMap<i64, i64>,
    delivered: &[Delivered],
    verdict: &mut WatchVerdict,
) {
    let mut by_value: HashMap<i64, &Op> = HashMap::new();
    for op in ops {
        if let Call::Write(v) | Call::Add(v) = op.call {
            by_value.insert(v, op);
        }
    }
    let mut count: HashMap<i64, usize> = HashMap::new();
    for d in delivered {
        match (d.op.as_str(), d.new) {
            ("insert" | "update", Some(v)) => {
                *count.entry(v).or_default() += 1;
                if !by_value.contains_key(&v) {
                    verdict.problems.push(format!(
                        "{name}: {} event with v = {v}, which no client wrote",
                        d.op
                    ));
                }
            }
            _ => verdict.problems.push(format!(
                "{name}: unexpected {} event on row {} (the workload only inserts and updates)",
                d.op, d.id
            )),
        }
    }
    let mut lost = Vec::new();
    for (v, op) in &by_value {
        let n = count.get(v).copied().unwrap_or(0);
        let wrong = match op.outcome {
            Outcome::Ok(_) => n != 1,
            Outcome::Fail => n != 0,
            Outcome::Unknown => n > 1,
        };
        if wrong {
            if n == 0 {
                lost.push(*v);
            } else {
                verdict.problems.push(format!(
                    "{name}: write of {v} ({:?}) delivered {n} times",
                    op.outcome
                ));
            }
        }
    }
    if !lost.is_empty() {
        lost.sort();
        verdict.problems.push(format!(
            "{name}: {} acknowledged writes never delivered, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    // Each row's events chain from its value before the run.
    let mut current: HashMap<i64, Option<i64>> =
        initial.iter().map(|(k, v)| (*k, Some(*v))).collect();
    let mut broken = 0;
    for d in delivered {
        let before = current.get(&d.id).copied().flatten();
        if d.old != before {
            broken += 1;
            if broken <= 3 {
                verdict.problems.push(format!(
                    "{name}: row {} changed from {:?} to {:?}, but its last delivered value was {before:?} (an event missing or out of order)",
                    d.id, d.old, d.new
                ));
            }
        }
        current.insert(d.id, d.new);
    }
    // A write acknowledged before another on the same shard began commits first.
    let mut latest_invoked: BTreeMap<ShardId, (u64, i64)> = BTreeMap::new();
    for d in delivered {
        let Some(op) = d.new.and_then(|v| by_value.get(&v)) else {
            continue;
        };
        if !matches!(op.outcome, Outcome::Ok(_)) {
            continue;
        }
        if let Some(&(invoked, earlier)) = latest_invoked.get(&d.shard) {
            if op.completed < invoked {
                verdict.problems.push(format!(
                    "{name}: on {} the write of {} was acknowledged before the write of {earlier} began, but was delivered after it",
                    d.shard,
                    d.new.unwrap_or_default()
                ));
            }
        }
        let entry = latest_invoked
            .entry(d.shard)
            .or_insert((op.invoked, d.new.unwrap_or_default()));
        if op.invoked > entry.0 {
            *entry = (op.invoked, d.new.unwrap_or_default());
        }
    }
}

/// A filtered subscriber got exactly the matching events of the unfiltered stream.
fn check_filtered(
    name: &str,
    modulus: i64,
    reference: &[Delivered],
    delivered: &[Delivered],
    verdict: &mut WatchVerdict,
) {
    let matches = |v: Option<i64>| v.is_some_and(|v| v % modulus == 0);
    // Per shard: across shards the order is not defined.
    let mut expected: BTreeMap<ShardId, Vec<&Delivered>> = BTreeMap::new();
    for d in reference
        .iter()
        .filter(|d| matches(d.old) || matches(d.new))
    {
        expected.entry(d.shard).or_default().push(d);
    }
    let mut got: BTreeMap<ShardId, Vec<&Delivered>> = BTreeMap::new();
    for d in delivered {
        got.entry(d.shard).or_default().push(d);
    }
    let shards: std::collections::BTreeSet<ShardId> =
        expected.keys().chain(got.keys()).copied().collect();
    for shard in shards {
        let (e, g) = (
            expected.get(&shard).cloned().unwrap_or_default(),
            got.get(&shard).cloned().unwrap_or_default(),
        );
        if e != g {
            let first = e
                .iter()
                .zip(&g)
                .position(|(a, b)| a != b)
                .unwrap_or(e.len().min(g.len()));
            verdict.problems.push(format!(
                "{name}: {shard}: {} events, but {} of the unfiltered stream match v % {modulus} = 0; first difference at {first}: expected {:?}, got {:?}",
                g.len(),
                e.len(),
                e.get(first),
                g.get(first)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(v: i64, key: i64, outcome: Outcome, invoked: u64, completed: u64) -> Op {
        Op {
            client: 0,
            key,
            call: Call::Write(v),
            invoked,
            completed,
            outcome,
            error: None,
        }
    }

    fn event(shard: &str, at: u64, id: i64, old: i64, new: i64) -> Seen {
        Seen::Event {
            shard: shard.into(),
            token: format!("{shard}:{at}"),
            op: "update".into(),
            id,
            old: Some(old),
            new: Some(new),
        }
    }

    fn setup() -> (Vec<Op>, BTreeMap<i64, i64>, Vec<Seen>, Token) {
        // Row 1 on s1: 0 → 10 → 11; row 2 on s1: 0 → 20 (acknowledged before 11 began).
        let ops = vec![
            op(10, 1, Outcome::Ok(None), 0, 10),
            op(20, 2, Outcome::Ok(None), 5, 15),
            op(11, 1, Outcome::Ok(None), 20, 30),
            op(99, 1, Outcome::Fail, 40, 41),
        ];
        let initial = BTreeMap::from([(1, 0), (2, 0)]);
        let seen = vec![
            event("s1", 3, 1, 0, 10),
            event("s1", 4, 2, 0, 20),
            Seen::Progress("s1:4".into()),
            Seen::Resumed,
            event("s1", 6, 1, 10, 11),
            Seen::Progress("s1:7".into()),
        ];
        (ops, initial, seen, "s1:7".parse().unwrap())
    }

    fn verdict(seen: Vec<Seen>) -> WatchVerdict {
        let (ops, initial, _, end) = setup();
        let logs = vec![Log {
            name: "w1".into(),
            modulus: None,
            seen,
        }];
        check_watch(&ops, &initial, &logs, &end)
    }

    #[test]
    fn a_faithful_stream_passes() {
        let (_, _, seen, _) = setup();
        let v = verdict(seen);
        assert!(v.ok(), "{:?}", v.problems);
        assert_eq!((v.events, v.resumes), (3, 1));
    }

    #[test]
    fn a_dropped_event_fails() {
        let (_, _, mut seen, _) = setup();
        seen.remove(1);
        let v = verdict(seen);
        assert!(
            v.problems.iter().any(|p| p.contains("never delivered")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_duplicate_after_a_resume_fails() {
        let (_, _, mut seen, _) = setup();
        seen.insert(4, event("s1", 4, 2, 0, 20));
        let v = verdict(seen);
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("twice") || p.contains("2 times")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_reordered_pair_fails_even_with_positions_in_order() {
        // The payloads of two events swapped, positions kept: 20 was acknowledged
        // before 11 began, yet comes after it.
        let (_, _, mut seen, _) = setup();
        seen[1] = event("s1", 4, 1, 10, 11);
        seen[4] = event("s1", 6, 2, 0, 20);
        let v = verdict(seen);
        assert!(
            v.problems.iter().any(|p| p.contains("acknowledged before")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn progress_ahead_of_delivery_fails() {
        let (_, _, mut seen, _) = setup();
        seen.insert(0, Seen::Progress("s1:5".into()));
        let v = verdict(seen);
        assert!(
            v.problems.iter().any(|p| p.contains("after progress")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_failed_write_delivered_or_a_stream_that_stops_short_fails() {
        let (_, _, mut seen, _) = setup();
        seen.push(event("s1", 8, 1, 11, 99));
        let v = verdict(seen);
        assert!(
            v.problems.iter().any(|p| p.contains("(Fail) delivered")),
            "{:?}",
            v.problems
        );
        let (_, _, mut seen, _) = setup();
        seen.truncate(3);
        let v = verdict(seen);
        assert!(
            v.problems.iter().any(|p| p.contains("never caught up")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_filtered_stream_must_match_the_unfiltered_one() {
        let (ops, initial, seen, end) = setup();
        // Old or new row: 0 -> 10 matches through its old row.
        let filtered = vec![
            event("s1", 3, 1, 0, 10),
            event("s1", 4, 2, 0, 20),
            Seen::Progress("s1:7".into()),
        ];
        let logs = |f: Vec<Seen>| {
            vec![
                Log {
                    name: "all".into(),
                    modulus: None,
                    seen: seen.clone(),
                },
                Log {
                    name: "even-tens".into(),
                    modulus: Some(20),
                    seen: f,
                },
            ]
        };
        let v = check_watch(&ops, &initial, &logs(filtered), &end);
        assert!(v.ok(), "{:?}", v.problems);
        let v = check_watch(
            &ops,
            &initial,
            &logs(vec![Seen::Progress("s1:7".into())]),
            &end,
        );
        assert!(!v.ok());
    }
}
