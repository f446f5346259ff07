//! Histories of client operations and the checkers that judge them.
//!
//! An operation is invoked at one time and completes at a later one with an outcome: `Ok`
//! (it happened, with this result), `Fail` (it certainly did not happen), or `Unknown` (it
//! may have happened — a timeout or a lost connection). Checkers must treat `Unknown` as
//! either.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    Read,
    Write(i64),
    /// Compare-and-set: from the first value to the second.
    Cas(i64, i64),
    /// Add an element to a set.
    Add(i64),
    /// Move `amount` from one account to another, in one transaction.
    Transfer {
        from: i64,
        to: i64,
        amount: i64,
    },
    /// Read the sum of all balances.
    ReadTotal,
    /// Delete the key (files: the file at a path).
    Delete,
    /// Move the key's value to another key, replacing what is there (files: a rename).
    Move {
        to: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// It happened; a read carries the value it saw (None for a missing key).
    Ok(Option<i64>),
    Fail,
    Unknown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    pub client: usize,
    pub key: i64,
    pub call: Call,
    /// Microseconds since the run started.
    pub invoked: u64,
    pub completed: u64,
    pub outcome: Outcome,
    /// The error a failed or unknown operation got, for the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Set workload verdict: every acknowledged add is present; nothing present was never
/// attempted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetVerdict {
    pub acknowledged: usize,
    pub lost: Vec<i64>,
    pub unexpected: Vec<i64>,
    /// Adds reported as failed that are present anyway: the error was a lie.
    pub failed_but_present: Vec<i64>,
    /// Adds with unknown outcome that turned out to be present.
    pub recovered: usize,
}

impl SetVerdict {
    pub fn ok(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty() && self.failed_but_present.is_empty()
    }
}

pub fn check_set(history: &[Op], present: &BTreeSet<i64>) -> SetVerdict {
    let mut attempted = BTreeSet::new();
    let mut acked = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    let mut failed = BTreeSet::new();
    for op in history {
        if let Call::Add(v) = op.call {
            attempted.insert(v);
            match op.outcome {
                Outcome::Ok(_) => {
                    acked.insert(v);
                }
                Outcome::Unknown => {
                    unknown.insert(v);
                }
                Outcome::Fail => {
                    failed.insert(v);
                }
            }
        }
    }
    SetVerdict {
        acknowledged: acked.len(),
        lost: acked.difference(present).copied().collect(),
        unexpected: present.difference(&attempted).copied().collect(),
        failed_but_present: failed.intersection(present).copied().collect(),
        recovered: unknown.intersection(present).count(),
    }
}

/// Register model: one value per key (None until first written).
fn step(state: Option<i64>, call: Call, outcome: Outcome) -> Option<Option<i64>> {
    match (call, outcome) {
        (Call::Read, Outcome::Ok(seen)) => (seen == state).then_some(state),
        (Call::Read, _) => Some(state),
        (Call::Write(v), _) => Some(Some(v)),
        (Call::Cas(from, to), Outcome::Ok(_)) => (state == Some(from)).then_some(Some(to)),
        // An unknown CAS may have applied (if it could) or not.
        (Call::Cas(from, to), Outcome::Unknown) => {
            Some(if state == Some(from) { Some(to) } else { state })
        }
        (Call::Cas(..), Outcome::Fail) => Some(state),
        (Call::Add(_), _)
        | (Call::Transfer { .. }, _)
        | (Call::ReadTotal, _)
        | (Call::Delete, _)
        | (Call::Move { .. }, _) => Some(state),
    }
}

/// Whether the operations on one register admit a linearization (Wing & Gong's search with
/// Lowe's memoisation, as in porcupine). `Fail` operations did nothing and are dropped;
/// `Unknown` ones complete at infinity, so they may take effect at any point after their
/// invocation, or effectively never (at the end). `limit` bounds the search; None = gave up.
pub fn linearizable(ops: &[Op], limit: usize) -> Option<bool> {
    // An unknown CAS that could not have applied and a failed op change nothing.
    let ops: Vec<&Op> = ops
        .iter()
        .filter(|o| !matches!(o.outcome, Outcome::Fail))
        .filter(|o| !(matches!(o.call, Call::Read) && o.outcome == Outcome::Unknown))
        .collect();
    let n = ops.len();
    if n == 0 {
        return Some(true);
    }
    let returned = |i: usize| -> u64 {
        if ops[i].outcome == Outcome::Unknown {
            u64::MAX
        } else {
            ops[i].completed
        }
    };
    // Ops sorted by invocation; an op may be linearized next only if it was invoked before
    // every unlinearized op's return.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (ops[i].invoked, returned(i)));
    let words = n.div_ceil(64);
    let mut seen: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    // Depth-first search over (done set, state).
    let mut stack: Vec<(Vec<u64>, Option<i64>)> = vec![(vec![0; words], None)];
    let mut steps = 0usize;
    while let Some((done, state)) = stack.pop() {
        steps += 1;
        if steps > limit {
            return None;
        }
        let is_done = |i: usize| done[i / 64] >> (i % 64) & 1 == 1;
        if (0..n).all(is_done) {
            return Some(true);
        }
        // The earliest return among pending ops bounds which ops may go next.
        let horizon = (0..n)
            .filter(|&i| !is_done(i))
            .map(returned)
            .min()
            .unwrap_or(u64::MAX);
        for &i in &order {
            if is_done(i) {
                continue;
            }
            if ops[i].invoked > horizon {
                break;
            }
            if let Some(next) = step(state, ops[i].call, ops[i].outcome) {
                let mut d = done.clone();
                d[i / 64] |= 1 << (i % 64);
                if seen.insert((d.clone(), next)) {
                    stack.push((d, next));
                }
            }
        }
    }
    Some(false)
}

/// Register workload verdict per key.
#[derive(Debug, Clone, Default)]
pub struct RegisterVerdict {
    pub keys: usize,
    pub ops: usize,
    pub violations: Vec<i64>,
    pub undecided: Vec<i64>,
}

impl RegisterVerdict {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

pub fn check_registers(history: &[Op]) -> RegisterVerdict {
    let mut by_key: BTreeMap<i64, Vec<Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key).or_default().push(op.clone());
    }
    let mut verdict = RegisterVerdict {
        keys: by_key.len(),
        ops: history.len(),
        ..Default::default()
    };
    for (key, ops) in by_key {
        match linearizable(&ops, 2_000_000) {
            Some(true) => {}
            Some(false) => verdict.violations.push(key),
            None => verdict.undecided.push(key),
        }
    }
    verdict
}

/// Bank workload verdict: money is neither made nor lost, and no reader ever sees a
/// transfer half done.
#[derive(Debug, Clone, Default)]
pub struct BankVerdict {
    pub expected_total: i64,
    pub final_total: i64,
    pub reads: usize,
    /// (time in µs, total seen) of reads that saw another total.
    pub bad_reads: Vec<(u64, i64)>,
    pub negative_balances: usize,
    pub transfers_ok: usize,
}

impl BankVerdict {
    pub fn ok(&self) -> bool {
        self.bad_reads.is_empty()
            && self.final_total == self.expected_total
            && self.negative_balances == 0
    }
}

pub fn check_bank(
    history: &[Op],
    expected_total: i64,
    final_total: i64,
    negative_balances: usize,
) -> BankVerdict {
    let mut v = BankVerdict {
        expected_total,
        final_total,
        negative_balances,
        ..Default::default()
    };
    for op in history {
        match (op.call, op.outcome) {
            (Call::ReadTotal, Outcome::Ok(Some(total))) => {
                v.reads += 1;
                if total != expected_total {
                    v.bad_reads.push((op.invoked, total));
                }
            }
            (Call::Transfer { .. }, Outcome::Ok(_)) => v.transfers_ok += 1,
            _ => {}
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: Call, invoked: u64, completed: u64, outcome: Outcome) -> Op {
        Op {
            client,
            key: 0,
            call,
            invoked,
            completed,
            outcome,
            error: None,
        }
    }
    use Call::*;
    use Outcome::*;

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            op(0, Write(1), 0, 10, Ok(None)),
            op(1, Read, 20, 30, Ok(Some(1))),
            op(0, Cas(1, 2), 40, 50, Ok(None)),
            op(1, Read, 60, 70, Ok(Some(2))),
            op(1, Cas(1, 3), 80, 90, Fail),
        ];
        assert_eq!(linearizable(&h, 10_000), Some(true));
    }

    #[test]
    fn stale_read_is_caught() {
        // The write of 2 completed before the read began, yet the read saw 1.
        let h = [
            op(0, Write(1), 0, 10, Ok(None)),
            op(0, Write(2), 20, 30, Ok(None)),
            op(1, Read, 40, 50, Ok(Some(1))),
        ];
        assert_eq!(linearizable(&h, 10_000), Some(false));
    }

    #[test]
    fn concurrent_operations_may_order_either_way() {
        let h = [
            op(0, Write(1), 0, 100, Ok(None)),
            op(1, Read, 10, 20, Ok(Some(1))),
            op(2, Read, 30, 40, Ok(None)),
        ];
        // Read of None after a read of 1 cannot be explained: 1 was visible, then gone.
        assert_eq!(linearizable(&h, 10_000), Some(false));
        let h = [
            op(0, Write(1), 0, 100, Ok(None)),
            op(1, Read, 10, 20, Ok(None)),
            op(2, Read, 30, 40, Ok(Some(1))),
        ];
        assert_eq!(linearizable(&h, 10_000), Some(true));
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        let applied = [
            op(0, Write(1), 0, 10, Ok(None)),
            op(0, Write(2), 20, 30, Unknown),
            op(1, Read, 40, 50, Ok(Some(2))),
        ];
        assert_eq!(linearizable(&applied, 10_000), Some(true));
        let not_applied = [
            op(0, Write(1), 0, 10, Ok(None)),
            op(0, Write(2), 20, 30, Unknown),
            op(1, Read, 40, 50, Ok(Some(1))),
        ];
        assert_eq!(linearizable(&not_applied, 10_000), Some(true));
        // But a value nobody wrote can never be read.
        let invented = [
            op(0, Write(1), 0, 10, Ok(None)),
            op(1, Read, 40, 50, Ok(Some(7))),
        ];
        assert_eq!(linearizable(&invented, 10_000), Some(false));
    }

    #[test]
    fn lost_acknowledged_cas_is_caught() {
        let h = [
            op(0, Write(1), 0, 10, Ok(None)),
            op(0, Cas(1, 2), 20, 30, Ok(None)),
            op(1, Read, 40, 50, Ok(Some(1))),
        ];
        assert_eq!(linearizable(&h, 10_000), Some(false));
    }

    #[test]
    fn set_checker_finds_lost_and_invented_elements() {
        let h = [
            Op {
                client: 0,
                key: 0,
                call: Add(1),
                invoked: 0,
                completed: 1,
                outcome: Ok(None),
                error: None,
            },
            Op {
                client: 0,
                key: 0,
                call: Add(2),
                invoked: 2,
                completed: 3,
                outcome: Unknown,
                error: None,
            },
            Op {
                client: 0,
                key: 0,
                call: Add(3),
                invoked: 4,
                completed: 5,
                outcome: Ok(None),
                error: None,
            },
            Op {
                client: 0,
                key: 0,
                call: Add(4),
                invoked: 6,
                completed: 7,
                outcome: Fail,
                error: None,
            },
        ];
        let good = check_set(&h, &[1, 2, 3].into_iter().collect());
        assert!(good.ok());
        assert_eq!((good.acknowledged, good.recovered), (2, 1));
        let bad = check_set(&h, &[1, 4, 9].into_iter().collect());
        assert_eq!(bad.lost, vec![3]);
        assert_eq!(bad.unexpected, vec![9]);
        assert_eq!(bad.failed_but_present, vec![4]);
    }

    #[test]
    fn bank_checker_flags_partial_transfers_and_leaks() {
        let read = |t, total| Op {
            client: 0,
            key: 0,
            call: ReadTotal,
            invoked: t,
            completed: t + 1,
            outcome: Ok(Some(total)),
            error: None,
        };
        let good = check_bank(&[read(1, 1000), read(5, 1000)], 1000, 1000, 0);
        assert!(good.ok());
        let partial = check_bank(&[read(1, 1000), read(5, 990)], 1000, 1000, 0);
        assert_eq!(partial.bad_reads, vec![(5, 990)]);
        assert!(!check_bank(&[], 1000, 1010, 0).ok());
        assert!(!check_bank(&[], 1000, 1000, 1).ok());
    }

    #[test]
    fn larger_random_sequential_histories_check_quickly() {
        // A long single-client history: always linearizable, and the memo keeps it fast.
        let mut h = Vec::new();
        let mut v = None;
        let mut t = 0;
        for i in 0..400i64 {
            let call = if i % 3 == 0 { Read } else { Write(i) };
            let outcome = match call {
                Read => Ok(v),
                _ => Ok(None),
            };
            if let Write(x) = call {
                v = Some(x);
            }
            h.push(op(0, call, t, t + 5, outcome));
            t += 10;
        }
        assert_eq!(linearizable(&h, 1_000_000), Some(true));
    }
}

/// Files workload verdict. Each client owns its paths and works on them one operation at a
/// time, so what each path must hold is known from the client's acknowledged operations —
/// widened by every operation whose outcome is unknown (it may take effect at any time
/// after it was invoked). Reads during the run and at the end must see one of those
/// contents whole: a content that was never uploaded (`-1`: a mix or a truncation), or one
/// from an upload that failed, is a violation, and so is an acknowledged upload that the
/// path does not hold when nothing later can have replaced it.
#[derive(Debug, Clone, Default)]
pub struct FilesVerdict {
    pub paths: usize,
    pub uploads_ok: usize,
    pub reads_ok: usize,
    /// (path key, what was read, what it could have been).
    pub bad_reads: Vec<(i64, Option<i64>, Vec<Option<i64>>)>,
    pub bad_finals: Vec<(i64, Option<i64>, Vec<Option<i64>>)>,
}

impl FilesVerdict {
    pub fn ok(&self) -> bool {
        self.bad_reads.is_empty() && self.bad_finals.is_empty()
    }
}

/// `final_state`: each path key's content id at the end (None: no file).
pub fn check_files(history: &[Op], final_state: &BTreeMap<i64, Option<i64>>) -> FilesVerdict {
    let mut by_client: BTreeMap<usize, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_client.entry(op.client).or_default().push(op);
    }
    let mut verdict = FilesVerdict {
        paths: final_state.len(),
        ..Default::default()
    };
    // What each path holds for certain (from acknowledged operations), and what it may
    // hold besides (from operations whose outcome is unknown).
    let mut certain: BTreeMap<i64, Option<i64>> = BTreeMap::new();
    let mut maybe: BTreeMap<i64, BTreeSet<Option<i64>>> = BTreeMap::new();
    for ops in by_client.values_mut() {
        ops.sort_by_key(|op| op.invoked);
        for op in ops.iter() {
            let key = op.key;
            let possible = |certain: &BTreeMap<i64, Option<i64>>,
                            maybe: &BTreeMap<i64, BTreeSet<Option<i64>>>,
                            k: i64| {
                let mut all: BTreeSet<Option<i64>> = maybe.get(&k).cloned().unwrap_or_default();
                all.insert(certain.get(&k).copied().flatten());
                all
            };
            match (op.call, op.outcome) {
                (Call::Write(v), Outcome::Ok(_)) => {
                    verdict.uploads_ok += 1;
                    certain.insert(key, Some(v));
                }
                (Call::Write(v), Outcome::Unknown) => {
                    maybe.entry(key).or_default().insert(Some(v));
                }
                (Call::Delete, Outcome::Ok(_)) => {
                    certain.insert(key, None);
                }
                (Call::Delete, Outcome::Unknown) => {
                    maybe.entry(key).or_default().insert(None);
                }
                (Call::Move { to }, Outcome::Ok(_)) => {
                    let from_maybe = maybe.get(&key).cloned().unwrap_or_default();
                    certain.insert(to, certain.get(&key).copied().flatten());
                    maybe.entry(to).or_default().extend(from_maybe);
                    certain.insert(key, None);
                }
                (Call::Move { to }, Outcome::Unknown) => {
                    let moved = possible(&certain, &maybe, key);
                    maybe.entry(to).or_default().extend(moved);
                    maybe.entry(key).or_default().insert(None);
                }
                (Call::Read, Outcome::Ok(seen)) => {
                    verdict.reads_ok += 1;
                    let allowed = possible(&certain, &maybe, key);
                    if !allowed.contains(&seen) {
                        verdict
                            .bad_reads
                            .push((key, seen, allowed.into_iter().collect()));
                    }
                }
                _ => {}
            }
        }
    }
    for (&key, &actual) in final_state {
        let mut allowed: BTreeSet<Option<i64>> = maybe.get(&key).cloned().unwrap_or_default();
        allowed.insert(certain.get(&key).copied().flatten());
        if !allowed.contains(&actual) {
            verdict
                .bad_finals
                .push((key, actual, allowed.into_iter().collect()));
        }
    }
    verdict
}
