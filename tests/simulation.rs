//! Deterministic simulation of the replication layer: Cairn's Raft groups (openraft 0.9 with
//! Cairn's `raft_config`, `Network` and `transport`) on 3 or 5 hosts of a `turmoil` network,
//! under partitions, held links, reset connections and host crashes drawn from a seed.
//!
//! What runs for real: `replication::group::raft_config` (Cairn's default timings),
//! `run_heartbeats`, `replication::network::Network` and the whole `transport` (framing,
//! call ids, bounded queues, batching) over turmoil's TCP, through `transport::Dialer` and
//! `transport::serve_connection`. What is simulated here: the storage, an in-memory log store
//! and state machine per replica whose data the driver owns, so it outlives a `sim.crash`
//! like a disk does (Cairn's fjall log store cannot run here anyway: it calls
//! `block_in_place`, which panics on turmoil's current-thread runtimes); and a client that
//! proposes `Op::Ddl("g3-w1-17")` batches to whichever host it believes leads the group (a
//! proposal travels as `Request::Exec`; the host's handler calls `client_write` and answers
//! with the entry's log index).
//!
//! One run: `CHAOS` of simulated time with faults, then every fault is healed, the client
//! stops, and the simulation runs until every replica of every group holds the same log and
//! has applied all of it. Checked:
//! - while running: two replicas never apply different entries at one log index; a log
//!   never removes an entry some replica applied; appends and applies are contiguous; votes
//!   never go backwards; no group stops on a fatal error and no host fails to restart;
//! - leaders: in each group, the entries of a term are all committed by one leader (below);
//! - after healing: every acknowledged write is on every replica at the index it was
//!   acknowledged with, every replica of a group applied the same sequence, each write at
//!   most once, and nothing that was not proposed.
//!
//! Faults, one every 0.1–1 s: a partition of two hosts or of one host from all others
//! (turmoil drops the packets and the connections between them are reset), a held link
//! (packets wait, then arrive, as TCP delivers them after a short outage), a reset of one
//! connection with calls in flight, a crash of a random host or of the one leading most
//! groups (at most a minority down at once; restarted 0.02–5 s later), and a crash aimed at
//! the next replica to pass a `Moment` (just voted, appended, truncated, purged, applied).
//!
//! Differences from a real cluster, and why:
//! - turmoil's TCP drops packets on a partition or with `fail_rate` but never retransmits,
//!   so a connection that lost one packet stalls forever, which real TCP does not do (it
//!   delivers after the outage, or breaks). So partitions also cut the connections they
//!   cross, and message loss is modelled as connection resets rather than `fail_rate`.
//! - Storage writes are durable at once. Cairn's log fsyncs every append too;
//!   `save_committed` is not fsynced there, which only makes a restart re-apply less.
//! - Snapshots are files in a temporary directory (openraft's `SnapshotData` is a
//!   `tokio::fs::File` in Cairn's type config); a paused tokio clock does not advance while
//!   the blocking file I/O runs, so it costs no simulated time. Installing one is instant
//!   unless `CAIRN_SIM_INSTALL_CRASH=1` (next item).
//! - Found here and fixed: openraft 0.9.25 purges the log up to a received snapshot as soon
//!   as it hands the snapshot to the state machine, without waiting for the install to
//!   finish. Cairn's install (SQLite backup into the live replica) takes time; a crash in
//!   it left the log purged past a replica that never got the snapshot's contents, and the
//!   node could no longer start. Now the log store never purges beyond what the replica
//!   holds, and a restart finishes an interrupted install (both mirrored by the storage
//!   here). Installs take `INSTALL_TIME` and crashes are aimed at them;
//!   `CAIRN_SIM_INSTALL_CRASH=0` makes installs instant.
//! - Leaders: Cairn builds openraft without `single-term-leader`, in its "advanced"
//!   leader-id mode, where a leader id is (term, node) and two candidates of one term can
//!   both be elected (the later one deposes the earlier). So "one leader per term" does not
//!   hold there (the runs see it happen); what must hold is that only one of them commits
//!   entries, and that is what is checked. Terms with two observed leaders are counted in
//!   the summary line.
//! - openraft's timers run on tokio time (`TokioRuntime`), which turmoil pauses and advances
//!   by `TICK` per step on each host's runtime: no configuration change was needed.
//!
//! Reproducibility: the seed fixes the fault decisions, the workload and turmoil's network
//! (latencies, delivery order). It does not fix openraft's election timeouts (drawn from
//! `rand::thread_rng`) nor tokio's `select!` branch order, and some faults pick their target
//! from the state (the busiest leader, a live connection, the next replica to pass a
//! moment), so a failing seed replays the same decisions but not always the same
//! interleaving: run it a few times.
//!
//! Replica moves (`replica_moves_survive_faults`): 5 hosts, each group on 3 of them, and a
//! mover standing in for the placement driver that moves replicas the way Cairn does — an
//! `AddNode` to the group's leader runs `membership::add_voter` (learner, caught up,
//! promoted), then a `RemoveNode` runs `membership::remove` — under the same faults, with
//! crashes it asks for right after a step (of the leader, the replica leaving or the one
//! arriving). A move that fails part-way is resumed from the voters the leader reports.
//! Checked besides the above: no membership ever has fewer than 3 voters (in either half of
//! a joint one); at the end every group has 3 voters and no learner, and the checks run over
//! the replicas that are members then (a removed replica keeps what it had and is left out).
//!
//! `CAIRN_SIM_SEEDS=7,8,9` (or `7..=20`; `CAIRN_SIM_MOVE_SEEDS` for the moves) runs other seeds, `CAIRN_SIM_VERBOSE=1` prints each
//! run's faults, `RUST_LOG=openraft=debug` the hosts' logs.

#![allow(clippy::result_large_err)] // openraft's StorageError is large by its design.

use cairn::ids::{NodeId, ShardId};
use cairn::replication::group::{raft_config, run_heartbeats};
use cairn::replication::membership;
use cairn::replication::network::Network;
use cairn::replication::transport::{
    self, Client, Dialer, Handler, Request, Response, Stream, WireError,
};
use cairn::replication::{
    Applied, Batch, Entry, LogId, Membership, NodeInfo, Op, Raft, StorageError, TypeConfig,
    WireStatement,
};
use cairn::storage::replica::StatementKind;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, RaftLogReader, RaftSnapshotBuilder, ServerState,
    SnapshotMeta, StoredMembership, Vote,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Seeds CI runs; `CAIRN_SIM_SEEDS` overrides.
const SEEDS: std::ops::RangeInclusive<u64> = 1..=8;
/// Seeds of the runs with replica moves; `CAIRN_SIM_MOVE_SEEDS` overrides.
const MOVE_SEEDS: std::ops::RangeInclusive<u64> = 1..=4;
const GROUPS: u64 = 8;
/// Concurrent client workers, each proposing one write at a time.
const WORKERS: u64 = 4;
const PORT: u16 = 7000;
/// Cairn's defaults (`cairn start`).
const ELECTION_MS: u64 = 150;
const HEARTBEAT_MS: u64 = 50;
/// Small, so groups build, send and install snapshots and purge their logs during a run.
const SNAPSHOT_EVERY: u64 = 40;
/// How long installing a received snapshot takes with `CAIRN_SIM_INSTALL_CRASH=1` (else it
/// is instant, so no crash can land in it; see the module doc).
const INSTALL_TIME: Duration = Duration::from_millis(100);
/// Simulated time with faults, then the most simulated time healing may take.
const CHAOS: Duration = Duration::from_secs(30);
const HEAL_LIMIT: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(1);
const MAX_LATENCY: Duration = Duration::from_millis(25);
/// How long the client waits for a proposal's answer before counting it as unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Replica moves: hosts of the cluster, and each group's replicas (its voters when no move
/// is under way).
const MOVE_HOSTS: u64 = 5;
const REPLICAS: u64 = 3;
/// The mover waits for a step's answer this long: a learner's catch-up and a membership
/// change have their own limits in `membership` (20 s and 10 s).
const MOVE_TIMEOUT: Duration = Duration::from_secs(35);

/// Hosts of the cluster: 3 (Cairn's default replication factor) for odd seeds, 5 for even.
fn hosts_for(seed: u64) -> u64 {
    if seed % 2 == 1 {
        3
    } else {
        5
    }
}

fn host_name(host: u64) -> String {
    format!("n{host}")
}

fn cluster_addr(host: u64) -> String {
    format!("{}:{PORT}", host_name(host))
}

/// A group's first members: every host, or with replica moves `REPLICAS` of them (a
/// different set for each group).
fn first_members(shared: &Shared, group: u64) -> BTreeSet<u64> {
    if !shared.moves {
        return (1..=shared.hosts).collect();
    }
    (0..REPLICAS)
        .map(|k| (group - 1 + k) % shared.hosts + 1)
        .collect()
}

fn members(hosts: &BTreeSet<u64>) -> BTreeMap<u64, NodeInfo> {
    hosts
        .iter()
        .map(|&h| {
            let info = NodeInfo {
                cluster_addr: cluster_addr(h),
                ..NodeInfo::default()
            };
            (h, info)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// What the replicas applied, and the invariants checked as they run.

/// A log entry as the checks see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Payload {
    Blank,
    Membership,
    Write(String),
}

fn payload(entry: &Entry) -> Payload {
    match &entry.payload {
        EntryPayload::Blank => Payload::Blank,
        EntryPayload::Membership(_) => Payload::Membership,
        EntryPayload::Normal(Batch { ops }) => match ops.as_slice() {
            [Op::Ddl(text)] => Payload::Write(text.clone()),
            other => Payload::Write(format!("{other:?}")),
        },
    }
}

/// Shared by every host and the driver: what has been applied anywhere, and every broken
/// invariant seen so far.
#[derive(Default)]
struct Oracle {
    /// Per (group, log index): the entry the first replica to apply it applied.
    applied: BTreeMap<(u64, u64), (LogId, Payload)>,
    violations: Vec<String>,
    /// Snapshots built, and received snapshots installed (for the summary).
    built: u64,
    installed: u64,
}

impl Oracle {
    /// A replica applied (or installed in a snapshot) `entry` at its index.
    fn saw_applied(&mut self, host: u64, group: u64, log_id: LogId, payload: &Payload) {
        match self.applied.get(&(group, log_id.index)) {
            None => {
                self.applied
                    .insert((group, log_id.index), (log_id, payload.clone()));
            }
            Some((first_id, first)) if (*first_id, first) != (log_id, payload) => {
                let v = format!(
                    "s{group} index {}: n{host} applied {log_id} {payload:?}, another replica \
                     applied {first_id} {first:?}",
                    log_id.index
                );
                self.violations.push(v);
            }
            Some(_) => {}
        }
    }

    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock()
        .expect("a simulation lock is poisoned (a task panicked)")
}

// ---------------------------------------------------------------------------------------
// Storage: one replica's durable state, owned by the driver so it survives a crash.

#[derive(Default)]
struct LogData {
    vote: Option<Vote<u64>>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
}

impl LogData {
    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(self.purged)
    }
}

/// The state machine's contents: what it applied, in order. Snapshots carry it whole, so a
/// replica restored from a snapshot can still be compared entry by entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    last: Option<LogId>,
    membership: Membership,
    entries: Vec<(LogId, Payload)>,
}

type Meta = SnapshotMeta<u64, NodeInfo>;

#[derive(Default)]
struct SmData {
    record: Record,
    /// The newest snapshot and its file.
    snapshot: Option<(Meta, PathBuf)>,
    snapshots_made: u64,
}

/// One replica (host, group): its log and state machine, and where its snapshot files go.
struct Disk {
    host: u64,
    group: u64,
    dir: PathBuf,
    log: Mutex<LogData>,
    sm: Mutex<SmData>,
    /// The `Moment`s this replica passed since the driver last looked (a bit each).
    moments: AtomicU32,
}

/// Points in a replica's storage work where a targeted crash hurts most: right after the
/// write is durable, before anything else happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    Voted = 1,
    Appended = 2,
    Truncated = 4,
    Purged = 8,
    Applied = 16,
    /// In the middle of installing a received snapshot (only with a nonzero install time).
    Installing = 32,
}

const MOMENTS: [Moment; 6] = [
    Moment::Voted,
    Moment::Appended,
    Moment::Truncated,
    Moment::Purged,
    Moment::Applied,
    Moment::Installing,
];

impl Disk {
    fn passed(&self, moment: Moment) {
        self.moments.fetch_or(moment as u32, Ordering::SeqCst);
    }
}

fn io_error(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

#[derive(Clone)]
struct LogStore {
    disk: Arc<Disk>,
    oracle: Arc<Mutex<Oracle>>,
}

impl LogStore {
    /// Records a broken invariant and stops the group (a storage error is fatal to it).
    fn broken(&self, what: String) -> StorageError {
        lock(&self.oracle).violation(what.clone());
        io_error(ErrorSubject::Logs, ErrorVerb::Write, what)
    }

    fn name(&self) -> String {
        format!("n{} s{}", self.disk.host, self.disk.group)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        // As the real log store: only entries continuing from the range's start (a purge may
        // have removed its start meanwhile; openraft would send the rest as if contiguous).
        let mut expected = match range.start_bound() {
            std::ops::Bound::Included(i) => Some(*i),
            std::ops::Bound::Excluded(i) => Some(i + 1),
            std::ops::Bound::Unbounded => None,
        };
        let log = lock(&self.disk.log);
        let mut entries = Vec::new();
        for (_, e) in log.entries.range(range) {
            if expected.is_some_and(|i| e.log_id.index != i) {
                break;
            }
            expected = Some(e.log_id.index + 1);
            entries.push(e.clone());
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let log = lock(&self.disk.log);
        Ok(LogState {
            last_purged_log_id: log.purged,
            last_log_id: log.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let old = lock(&self.disk.log).vote;
        if old.is_some_and(|old| old > *vote) {
            return Err(self.broken(format!(
                "{}: vote went back from {old:?} to {vote}",
                self.name()
            )));
        }
        lock(&self.disk.log).vote = Some(*vote);
        self.disk.passed(Moment::Voted);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(lock(&self.disk.log).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        lock(&self.disk.log).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(lock(&self.disk.log).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut problem = None;
        {
            let mut log = lock(&self.disk.log);
            for entry in entries {
                let expected = log.last_log_id().map(|l| l.index + 1).unwrap_or(0);
                if entry.log_id.index != expected {
                    problem = Some(format!(
                        "{}: append of {} where index {expected} was next",
                        self.name(),
                        entry.log_id
                    ));
                    break;
                }
                log.entries.insert(entry.log_id.index, entry);
            }
        }
        if let Some(what) = problem {
            let e = self.broken(what.clone());
            callback.log_io_completed(Err(std::io::Error::other(what)));
            return Err(e);
        }
        // Durable as soon as it is in the map: the driver owns it across crashes.
        self.disk.passed(Moment::Appended);
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let removed: Vec<LogId> = {
            let mut log = lock(&self.disk.log);
            let removed = log.entries.split_off(&log_id.index);
            removed.values().map(|e| e.log_id).collect()
        };
        self.disk.passed(Moment::Truncated);
        // A removed entry that some replica applied was committed: losing it is the bug
        // Raft exists to prevent.
        let oracle = lock(&self.oracle);
        for id in removed {
            if let Some((applied, _)) = oracle.applied.get(&(self.disk.group, id.index)) {
                if *applied == id {
                    let what = format!("{}: truncated committed entry {id}", self.name());
                    drop(oracle);
                    return Err(self.broken(what));
                }
            }
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut log = lock(&self.disk.log);
        // The purged id is kept before the entries go, as openraft 0.9 requires.
        log.purged = Some(log_id);
        log.entries = log.entries.split_off(&(log_id.index + 1));
        self.disk.passed(Moment::Purged);
        Ok(())
    }
}

struct StateMachine {
    disk: Arc<Disk>,
    oracle: Arc<Mutex<Oracle>>,
    install_time: Duration,
    /// The snapshot file being received from a leader.
    receiving: Option<PathBuf>,
}

impl StateMachine {
    fn broken(&self, what: String) -> StorageError {
        lock(&self.oracle).violation(what.clone());
        io_error(ErrorSubject::StateMachine, ErrorVerb::Write, what)
    }

    fn name(&self) -> String {
        format!("n{} s{}", self.disk.host, self.disk.group)
    }

    fn next_snapshot_path(disk: &Disk, what: &str) -> (u64, PathBuf) {
        let mut sm = lock(&disk.sm);
        sm.snapshots_made += 1;
        let seq = sm.snapshots_made;
        (seq, disk.dir.join(format!("{what}-{seq}")))
    }

    /// Make `path` (with `meta`) the replica's current snapshot if it is newer.
    fn keep_snapshot(disk: &Disk, meta: Meta, path: PathBuf) {
        let mut sm = lock(&disk.sm);
        let newer = sm
            .snapshot
            .as_ref()
            .is_none_or(|(m, _)| m.last_log_id < meta.last_log_id);
        if newer {
            if let Some((_, old)) = sm.snapshot.replace((meta, path)) {
                let _ = std::fs::remove_file(old);
            }
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn snap_err(e: impl ToString) -> StorageError {
    io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
}

fn open_file(path: &Path) -> Result<Box<tokio::fs::File>, StorageError> {
    let file = std::fs::File::open(path).map_err(snap_err)?;
    Ok(Box::new(tokio::fs::File::from_std(file)))
}

struct SnapshotBuilder {
    disk: Arc<Disk>,
    oracle: Arc<Mutex<Oracle>>,
    /// The state machine's contents when openraft asked for the snapshot.
    record: Record,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (seq, path) = StateMachine::next_snapshot_path(&self.disk, "snap");
        let bytes = postcard::to_stdvec(&self.record).map_err(snap_err)?;
        std::fs::write(&path, bytes).map_err(snap_err)?;
        let meta = Meta {
            last_log_id: self.record.last,
            last_membership: self.record.membership.clone(),
            snapshot_id: format!("n{}-{seq}", self.disk.host),
        };
        StateMachine::keep_snapshot(&self.disk, meta.clone(), path.clone());
        lock(&self.oracle).built += 1;
        Ok(Snapshot {
            meta,
            snapshot: open_file(&path)?,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let sm = lock(&self.disk.sm);
        Ok((sm.record.last, sm.record.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut applied = Vec::new();
        for entry in entries {
            let p = payload(&entry);
            let last = lock(&self.disk.sm).record.last;
            let expected = last.map(|l| l.index + 1).unwrap_or(0);
            if entry.log_id.index != expected {
                return Err(self.broken(format!(
                    "{}: applied {} where index {expected} was next",
                    self.name(),
                    entry.log_id
                )));
            }
            lock(&self.oracle).saw_applied(self.disk.host, self.disk.group, entry.log_id, &p);
            if let EntryPayload::Membership(m) = &entry.payload {
                // A move adds the new voter before it removes the old one.
                if m.get_joint_config()
                    .iter()
                    .any(|c| (c.len() as u64) < REPLICAS)
                {
                    return Err(self.broken(format!(
                        "{}: membership {m} at {} has fewer than {REPLICAS} voters",
                        self.name(),
                        entry.log_id
                    )));
                }
            }
            let mut sm = lock(&self.disk.sm);
            if let EntryPayload::Membership(m) = &entry.payload {
                sm.record.membership = StoredMembership::new(Some(entry.log_id), m.clone());
            }
            sm.record.last = Some(entry.log_id);
            sm.record.entries.push((entry.log_id, p));
            applied.push(Applied::default());
        }
        self.disk.passed(Moment::Applied);
        Ok(applied)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            disk: self.disk.clone(),
            oracle: self.oracle.clone(),
            record: lock(&self.disk.sm).record.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let (_, path) = StateMachine::next_snapshot_path(&self.disk, "receiving");
        let file = std::fs::File::create(&path).map_err(snap_err)?;
        self.receiving = Some(path);
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        // openraft shut the file down (flushed) when the last chunk arrived.
        drop(snapshot);
        let path = self
            .receiving
            .take()
            .ok_or_else(|| self.broken(format!("{}: install without a receive", self.name())))?;
        let bytes = std::fs::read(&path).map_err(snap_err)?;
        let record: Record = postcard::from_bytes(&bytes).map_err(snap_err)?;
        if record.last != meta.last_log_id {
            return Err(self.broken(format!(
                "{}: snapshot {} claims {:?} but holds up to {:?}",
                self.name(),
                meta.snapshot_id,
                meta.last_log_id,
                record.last
            )));
        }
        let current = lock(&self.disk.sm).record.last;
        if current > record.last {
            return Err(self.broken(format!(
                "{}: snapshot up to {:?} installed over applied {current:?}",
                self.name(),
                record.last
            )));
        }
        {
            let mut oracle = lock(&self.oracle);
            for (id, p) in &record.entries {
                oracle.saw_applied(self.disk.host, self.disk.group, *id, p);
            }
        }
        // As in Cairn's `StateMachine::install_snapshot`: the received file becomes the
        // current snapshot (Cairn renames it to `snap-N.db`, which a restart picks up), then
        // the replica is restored from it, which takes time (a SQLite backup into the live
        // replica): a crash may land in between.
        StateMachine::keep_snapshot(&self.disk, meta.clone(), path);
        if !self.install_time.is_zero() {
            self.disk.passed(Moment::Installing);
            tokio::time::sleep(self.install_time).await;
        }
        lock(&self.disk.sm).record = record;
        lock(&self.oracle).installed += 1;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = lock(&self.disk.sm).snapshot.clone();
        match current {
            None => Ok(None),
            Some((meta, path)) => Ok(Some(Snapshot {
                meta,
                snapshot: open_file(&path)?,
            })),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The network: turmoil's TCP, with connections the driver can cut.

/// Shared by both ends' wrappers of cut connections: once set, every read and write fails.
#[derive(Default)]
struct Cut {
    cut: AtomicBool,
    wakers: Mutex<[Option<Waker>; 2]>,
}

impl Cut {
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for w in lock(&self.wakers).iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// Fails if cut; else remembers who to wake when it is (slot 0 reads, 1 writes).
    fn check(&self, slot: usize, cx: &Context<'_>) -> std::io::Result<()> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(std::io::ErrorKind::ConnectionReset.into());
        }
        lock(&self.wakers)[slot] = Some(cx.waker().clone());
        Ok(())
    }
}

/// One end of a simulated connection.
struct SimStream {
    inner: turmoil::net::TcpStream,
    cut: Arc<Cut>,
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Err(e) = self.cut.check(0, cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Err(e) = self.cut.check(1, cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Err(e) = self.cut.check(1, cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Every live connection end by its (local, peer) addresses, so faults can cut them.
#[derive(Default)]
struct Wires {
    ends: Mutex<Vec<(SocketAddr, SocketAddr, Weak<Cut>)>>,
}

impl Wires {
    fn attach(&self, inner: turmoil::net::TcpStream) -> std::io::Result<SimStream> {
        let (local, peer) = (inner.local_addr()?, inner.peer_addr()?);
        let cut = Arc::new(Cut::default());
        let mut ends = lock(&self.ends);
        ends.retain(|(_, _, c)| c.strong_count() > 0);
        ends.push((local, peer, Arc::downgrade(&cut)));
        Ok(SimStream { inner, cut })
    }

    /// Cut every connection end for which `which(local ip, peer ip)` holds.
    fn cut_where(&self, which: impl Fn(IpAddr, IpAddr) -> bool) -> usize {
        let mut n = 0;
        for (local, peer, cut) in lock(&self.ends).iter() {
            if let Some(cut) = cut.upgrade() {
                if which(local.ip(), peer.ip()) {
                    cut.cut();
                    n += 1;
                }
            }
        }
        n
    }

    fn cut_between(&self, a: IpAddr, b: IpAddr) -> usize {
        self.cut_where(|l, p| (l, p) == (a, b) || (l, p) == (b, a))
    }

    fn cut_host(&self, a: IpAddr) -> usize {
        self.cut_where(|l, p| l == a || p == a)
    }

    /// Reset one connection (both ends), picked with `rng`.
    fn cut_one(&self, rng: &mut StdRng) -> Option<(SocketAddr, SocketAddr)> {
        let live: Vec<(SocketAddr, SocketAddr)> = lock(&self.ends)
            .iter()
            .filter(|(_, _, c)| c.upgrade().is_some_and(|c| !c.cut.load(Ordering::SeqCst)))
            .map(|(l, p, _)| (*l, *p))
            .collect();
        if live.is_empty() {
            return None;
        }
        let (l, p) = live[rng.random_range(0..live.len())];
        for (local, peer, cut) in lock(&self.ends).iter() {
            if (*local, *peer) == (l, p) || (*local, *peer) == (p, l) {
                if let Some(cut) = cut.upgrade() {
                    cut.cut();
                }
            }
        }
        Some((l, p))
    }
}

/// Dials cluster addresses (`n2:7000`) over turmoil's network.
struct SimDialer {
    wires: Arc<Wires>,
}

#[async_trait::async_trait]
impl Dialer for SimDialer {
    async fn dial(&self, addr: &str) -> std::io::Result<Box<dyn Stream>> {
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| std::io::Error::other(format!("bad cluster address {addr}")))?;
        let stream = turmoil::net::TcpStream::connect((host, port)).await?;
        Ok(Box::new(self.wires.attach(stream)?))
    }
}

// ---------------------------------------------------------------------------------------
// Hosts and the client.

/// Shared by the hosts, the client and the driver.
#[derive(Default)]
struct Shared {
    oracle: Arc<Mutex<Oracle>>,
    wires: Arc<Wires>,
    /// The Raft handles of each running host, by group (the driver reads their metrics).
    live: Mutex<BTreeMap<u64, Vec<(u64, Raft)>>>,
    workload: Mutex<Workload>,
    /// Set when the client should stop proposing.
    stop: AtomicBool,
    /// How long a replica takes to install a received snapshot.
    install_time: Duration,
    /// Hosts in the cluster, `n1` to `n<hosts>`.
    hosts: u64,
    /// Whether the mover moves replicas between hosts (see `run_mover`).
    moves: bool,
    /// Crashes the mover asks for between the steps of a move: (host, why).
    crash_asks: Mutex<Vec<(u64, String)>>,
    /// What the mover did, for the driver's history.
    mover_log: Mutex<Vec<String>>,
    /// Moves finished.
    moved: AtomicU64,
    /// Set by the mover once the client stopped and every move it began has finished.
    settled: AtomicBool,
}

#[derive(Default)]
struct Workload {
    /// Every proposal sent, by group.
    proposed: BTreeSet<(u64, String)>,
    /// (group, payload, log index) of every proposal the leader acknowledged.
    acked: Vec<(u64, String, u64)>,
    /// Proposals with no answer in time or a broken connection: they may or may not be in.
    unknown: u64,
    /// Proposals refused (not the leader, group not ready): never in the log.
    refused: u64,
}

/// A host's calls: Raft messages for its groups, and proposals from the client.
struct HostRpc {
    host: u64,
    rafts: BTreeMap<u64, Raft>,
    /// One membership change of a group at a time, as `Cluster::change_lock`.
    changing: BTreeMap<u64, tokio::sync::Mutex<()>>,
}

fn not_here() -> WireError {
    WireError::NotLeader { leader: None }
}

#[async_trait::async_trait]
impl Handler for HostRpc {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Append { shard, rpc } => match self.rafts.get(&shard.0) {
                Some(raft) => Response::Append(raft.append_entries(rpc).await),
                None => Response::Done(Err(not_here())),
            },
            Request::Vote { shard, rpc } => match self.rafts.get(&shard.0) {
                Some(raft) => Response::Vote(raft.vote(rpc).await),
                None => Response::Done(Err(not_here())),
            },
            Request::Snapshot { shard, rpc } => match self.rafts.get(&shard.0) {
                Some(raft) => Response::Snapshot(raft.install_snapshot(rpc).await),
                None => Response::Done(Err(not_here())),
            },
            // A proposal: the statement's text is the payload.
            Request::Exec {
                shard,
                stmt,
                txn: None,
                read: false,
                ..
            } => {
                let Some(raft) = self.rafts.get(&shard.0) else {
                    return Response::Index(Err(not_here()));
                };
                let batch = Batch {
                    ops: vec![Op::Ddl(stmt.sql)],
                };
                Response::Index(match raft.client_write(batch).await {
                    Ok(r) => Ok(r.log_id.index),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        Err(WireError::NotLeader {
                            leader: f.leader_id,
                        })
                    }
                    Err(e) => Err(WireError::Unavailable(e.to_string())),
                })
            }
            // A replica move's steps, run by Cairn's own `membership` functions.
            Request::AddNode { shard, id, node } => {
                let (Some(raft), Some(lock)) =
                    (self.rafts.get(&shard.0), self.changing.get(&shard.0))
                else {
                    return Response::Done(Err(not_here()));
                };
                let _one_at_a_time = lock.lock().await;
                let added = membership::add_voter(raft, shard, id, node, usize::MAX).await;
                Response::Done(added.map_err(WireError::from))
            }
            Request::RemoveNode { shard, id } => {
                let (Some(raft), Some(lock)) =
                    (self.rafts.get(&shard.0), self.changing.get(&shard.0))
                else {
                    return Response::Done(Err(not_here()));
                };
                let _one_at_a_time = lock.lock().await;
                let removed = membership::remove(raft, shard, id, REPLICAS as usize).await;
                Response::Done(removed.map_err(WireError::from))
            }
            Request::Voters { shard } => {
                let Some(raft) = self.rafts.get(&shard.0) else {
                    return Response::Voters(Err(not_here()));
                };
                let leader = raft.metrics().borrow().current_leader;
                if leader != Some(self.host) {
                    return Response::Voters(Err(WireError::NotLeader { leader }));
                }
                let voters = membership::voters(raft).into_iter().collect();
                Response::Voters(Ok((voters, self.host)))
            }
            Request::Ping => Response::Done(Ok(())),
            other => Response::Done(Err(WireError::Internal(format!(
                "not simulated: {other:?}"
            )))),
        }
    }
}

/// A host's software: its groups on the durable `disks`, the heartbeat ticker, and the
/// cluster port. Runs again from the start after a crash.
async fn run_host(host: u64, disks: Vec<Arc<Disk>>, shared: Arc<Shared>) -> turmoil::Result {
    let client = Client::with_dialer(Arc::new(SimDialer {
        wires: shared.wires.clone(),
    }));
    let config = raft_config(ELECTION_MS, HEARTBEAT_MS, SNAPSHOT_EVERY)?;
    let mut rafts = BTreeMap::new();
    for disk in disks {
        let group = disk.group;
        let network = Network {
            shard: ShardId(group),
            client: client.clone(),
            acks: Default::default(),
        };
        let log = LogStore {
            disk: disk.clone(),
            oracle: shared.oracle.clone(),
        };
        // As Cairn's `StateMachine::new`: a complete received file, or the kept snapshot,
        // ahead of the state machine is an install a crash interrupted (openraft already
        // purged the log up to it); finish it before openraft reads the state.
        {
            let mut newest: Option<Record> = None;
            if let Some((_, path)) = lock(&disk.sm).snapshot.clone() {
                newest = std::fs::read(&path)
                    .ok()
                    .and_then(|b| postcard::from_bytes(&b).ok());
            }
            for entry in std::fs::read_dir(&disk.dir)?.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if !name.starts_with("receiving-") {
                    continue;
                }
                // A file cut short does not decode: it was never complete.
                let record: Option<Record> = std::fs::read(entry.path())
                    .ok()
                    .and_then(|b| postcard::from_bytes(&b).ok());
                if let Some(r) = record {
                    if newest.as_ref().is_none_or(|n| n.last < r.last) {
                        newest = Some(r);
                    }
                }
            }
            let mut sm = lock(&disk.sm);
            if let Some(r) = newest {
                if r.last > sm.record.last {
                    sm.record = r;
                }
            }
        }
        let sm = StateMachine {
            disk,
            oracle: shared.oracle.clone(),
            receiving: None,
            install_time: shared.install_time,
        };
        let raft = Raft::new(host, config.clone(), network, log, sm).await?;
        // Every first member initialises a pristine group with the same membership (openraft
        // allows it); a restarted one already is. Other hosts wait to be added.
        let first = first_members(&shared, group);
        if first.contains(&host) && !raft.is_initialized().await? {
            match raft.initialize(members(&first)).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        rafts.insert(group, raft);
    }
    let all: Vec<Raft> = rafts.values().cloned().collect();
    lock(&shared.live).insert(host, rafts.iter().map(|(g, r)| (*g, r.clone())).collect());
    tokio::spawn(run_heartbeats(
        NodeId(host),
        Duration::from_millis(HEARTBEAT_MS),
        move || all.clone(),
    ));
    let changing = rafts.keys().map(|g| (*g, Default::default())).collect();
    let handler: Arc<dyn Handler> = Arc::new(HostRpc {
        host,
        rafts,
        changing,
    });
    let listener =
        turmoil::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT))).await?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let stream = shared.wires.attach(stream)?;
        tokio::spawn(transport::serve_connection(
            stream,
            peer.to_string(),
            handler.clone(),
        ));
    }
}

/// The client: `WORKERS` tasks proposing unique writes to random groups until told to stop.
async fn run_client(seed: u64, shared: Arc<Shared>) -> turmoil::Result {
    let client = Client::with_dialer(Arc::new(SimDialer {
        wires: shared.wires.clone(),
    }));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(propose(seed, w, client.clone(), shared.clone())))
        .collect();
    for w in workers {
        w.await?;
    }
    Ok(())
}

async fn propose(seed: u64, worker: u64, client: Arc<Client>, shared: Arc<Shared>) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(worker));
    // Where each group's leader is believed to be, from NotLeader hints.
    let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        n += 1;
        let group = rng.random_range(1..=GROUPS);
        let host = match leaders.get(&group) {
            Some(h) => *h,
            None => rng.random_range(1..=shared.hosts),
        };
        let text = format!("g{group}-w{worker}-{n}");
        lock(&shared.workload)
            .proposed
            .insert((group, text.clone()));
        let request = Request::Exec {
            shard: ShardId(group),
            txn: None,
            stmt: WireStatement {
                sql: text.clone(),
                params: vec![],
                kind: StatementKind::Ddl,
                refs: Vec::new(),
            },
            read: false,
            cancel: None,
        };
        let answer = client
            .call(&cluster_addr(host), request, CLIENT_TIMEOUT)
            .await;
        {
            let mut workload = lock(&shared.workload);
            match answer {
                Ok(Response::Index(Ok(index))) => workload.acked.push((group, text, index)),
                Ok(Response::Index(Err(WireError::NotLeader { leader }))) => {
                    workload.refused += 1;
                    match leader {
                        Some(l) if l != host => leaders.insert(group, l),
                        _ => leaders.remove(&group),
                    };
                }
                Ok(Response::Index(Err(_))) => {
                    // The leader lost its leadership with the write in flight: unknown outcome.
                    workload.unknown += 1;
                    leaders.remove(&group);
                }
                Ok(_) | Err(_) => {
                    workload.unknown += 1;
                    leaders.remove(&group);
                }
            }
        }
        // Think time, in simulated time.
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..=20))).await;
    }
}

/// The mover, standing in for Cairn's placement driver: it moves a replica of a random group
/// to a host without one the way the driver does — `AddNode` to the group's leader (learner,
/// caught up, promoted), then `RemoveNode` of the old replica — and now and then asks for a
/// crash between the steps (of the leader, the replica leaving or the one arriving). A move
/// that fails part-way is resumed from the voters the leader reports, never abandoned, so
/// every group ends with `REPLICAS` voters and no learner. Once the client stops, it finishes
/// the moves under way and says so (`settled`).
async fn run_mover(seed: u64, shared: Arc<Shared>) -> turmoil::Result {
    let client = Client::with_dialer(Arc::new(SimDialer {
        wires: shared.wires.clone(),
    }));
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(7_919).wrapping_add(77));
    let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
    // Group → (from, to).
    let mut under_way: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let log = |what: String| lock(&shared.mover_log).push(what);
    loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..=800))).await;
        let stopping = shared.stop.load(Ordering::SeqCst);
        let pending: Vec<u64> = under_way.keys().copied().collect();
        let group = if stopping || (!pending.is_empty() && rng.random_bool(0.5)) {
            match pending.get(rng.random_range(0..pending.len().max(1))) {
                Some(g) => *g,
                None => {
                    shared.settled.store(true, Ordering::SeqCst);
                    log("mover: every move finished".into());
                    return Ok(());
                }
            }
        } else {
            rng.random_range(1..=GROUPS)
        };
        let shard = ShardId(group);
        let host = match leaders.get(&group) {
            Some(h) => *h,
            None => rng.random_range(1..=shared.hosts),
        };
        let answer = client
            .call(
                &cluster_addr(host),
                Request::Voters { shard },
                CLIENT_TIMEOUT,
            )
            .await;
        let (voters, leader) = match answer {
            Ok(Response::Voters(Ok((voters, leader)))) => {
                leaders.insert(group, leader);
                (voters.into_iter().collect::<BTreeSet<u64>>(), leader)
            }
            Ok(Response::Voters(Err(WireError::NotLeader { leader: Some(l) }))) if l != host => {
                leaders.insert(group, l);
                continue;
            }
            _ => {
                leaders.remove(&group);
                continue;
            }
        };
        let (from, to) = match under_way.get(&group) {
            Some(m) => *m,
            None => {
                if voters.len() as u64 != REPLICAS {
                    continue;
                }
                let outside: Vec<u64> =
                    (1..=shared.hosts).filter(|h| !voters.contains(h)).collect();
                let inside: Vec<u64> = voters.iter().copied().collect();
                let from = inside[rng.random_range(0..inside.len())];
                let to = outside[rng.random_range(0..outside.len())];
                under_way.insert(group, (from, to));
                log(format!("mover: s{group} moving n{from} -> n{to}"));
                (from, to)
            }
        };
        let (step, request) = if !voters.contains(&to) {
            let node = NodeInfo {
                cluster_addr: cluster_addr(to),
                ..NodeInfo::default()
            };
            (
                "add",
                Request::AddNode {
                    shard,
                    id: to,
                    node,
                },
            )
        } else if voters.contains(&from) {
            ("remove", Request::RemoveNode { shard, id: from })
        } else {
            under_way.remove(&group);
            shared.moved.fetch_add(1, Ordering::SeqCst);
            log(format!("mover: s{group} moved n{from} -> n{to}"));
            continue;
        };
        let answer = client
            .call(&cluster_addr(leader), request, MOVE_TIMEOUT)
            .await;
        match answer {
            Ok(Response::Done(Ok(()))) => {
                log(format!("mover: s{group} {step} done on n{leader}"));
                if !stopping && rng.random_bool(0.3) {
                    let whom = [leader, from, to][rng.random_range(0..3)];
                    lock(&shared.crash_asks)
                        .push((whom, format!(" after the {step} step of s{group}")));
                }
            }
            Ok(Response::Done(Err(e))) => {
                log(format!(
                    "mover: s{group} {step} on n{leader} refused: {e:?}"
                ));
                leaders.remove(&group);
            }
            other => {
                log(format!("mover: s{group} {step} on n{leader}: {other:?}"));
                leaders.remove(&group);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The driver: faults, convergence, checks.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LinkFault {
    Partition,
    Hold,
}

/// Something to undo at a simulated time.
#[derive(Debug, Clone, Copy)]
enum Undo {
    Link(u64, u64, LinkFault),
    Restart(u64),
}

struct Driver<'a> {
    seed: u64,
    hosts: u64,
    sim: turmoil::Sim<'a>,
    shared: Arc<Shared>,
    disks: BTreeMap<u64, Vec<Arc<Disk>>>,
    rng: StdRng,
    links: BTreeMap<(u64, u64), LinkFault>,
    down: BTreeSet<u64>,
    undo: Vec<(Duration, Undo)>,
    /// What happened, with the simulated time, for the failure report.
    history: Vec<String>,
    /// (group, term) → the hosts seen leading it.
    leaders: BTreeMap<(u64, u64), BTreeSet<u64>>,
    /// Crash the next replica that passes this moment.
    armed: Option<Moment>,
}

impl Driver<'_> {
    fn ip(&self, host: u64) -> IpAddr {
        self.sim.lookup(host_name(host))
    }

    fn note(&mut self, what: String) {
        let at = self.sim.elapsed();
        self.history
            .push(format!("{:>8.3}s {what}", at.as_secs_f64()));
    }

    /// One simulated tick, then the leaders each running host reports.
    fn step(&mut self) -> Result<(), String> {
        self.sim
            .step()
            .map_err(|e| format!("simulation stopped: {e}"))?;
        let said: Vec<String> = lock(&self.shared.mover_log).drain(..).collect();
        for line in said {
            self.note(line);
        }
        let asks: Vec<(u64, String)> = lock(&self.shared.crash_asks).drain(..).collect();
        if !self.shared.stop.load(Ordering::SeqCst) {
            for (host, why) in asks {
                self.crash(host, &why, 1_000);
            }
        }
        let live = lock(&self.shared.live);
        for (host, rafts) in live.iter() {
            if self.down.contains(host) {
                continue;
            }
            for (group, raft) in rafts {
                let m = raft.metrics();
                let m = m.borrow();
                if let Err(e) = &m.running_state {
                    return Err(format!("n{host} s{group} stopped: {e}"));
                }
                if m.state == ServerState::Leader {
                    self.leaders
                        .entry((*group, m.current_term))
                        .or_default()
                        .insert(*host);
                }
            }
        }
        drop(live);
        let oracle = lock(&self.shared.oracle);
        if let Some(v) = oracle.violations.first() {
            return Err(format!("invariant broken: {v}"));
        }
        Ok(())
    }

    fn healthy_pairs(&self) -> Vec<(u64, u64)> {
        let mut pairs = Vec::new();
        for a in 1..=self.hosts {
            for b in a + 1..=self.hosts {
                if !self.links.contains_key(&(a, b)) {
                    pairs.push((a, b));
                }
            }
        }
        pairs
    }

    fn break_link(&mut self, a: u64, b: u64, fault: LinkFault, until: Duration) {
        let (na, nb) = (host_name(a), host_name(b));
        match fault {
            LinkFault::Partition => {
                self.sim.partition(na.as_str(), nb.as_str());
                let cut = self.shared.wires.cut_between(self.ip(a), self.ip(b));
                self.note(format!("partition n{a} n{b} (cut {cut} ends)"));
            }
            LinkFault::Hold => {
                self.sim.hold(na.as_str(), nb.as_str());
                self.note(format!("hold n{a} n{b}"));
            }
        }
        self.links.insert((a, b), fault);
        self.undo.push((until, Undo::Link(a, b, fault)));
    }

    fn apply_undo(&mut self, undo: Undo) {
        match undo {
            Undo::Link(a, b, fault) => {
                if self.links.remove(&(a, b)).is_none() {
                    return;
                }
                let (na, nb) = (host_name(a), host_name(b));
                match fault {
                    LinkFault::Partition => self.sim.repair(na.as_str(), nb.as_str()),
                    LinkFault::Hold => self.sim.release(na.as_str(), nb.as_str()),
                }
                self.note(format!("heal n{a} n{b} ({fault:?})"));
            }
            Undo::Restart(h) => {
                if self.down.remove(&h) {
                    self.sim.bounce(host_name(h));
                    self.note(format!("restart n{h}"));
                }
            }
        }
    }

    /// One fault drawn from the seed.
    fn fault(&mut self) {
        let now = self.sim.elapsed();
        let lasting = |rng: &mut StdRng, max_ms: u64| {
            now + Duration::from_millis(rng.random_range(100..=max_ms))
        };
        match self.rng.random_range(0..100) {
            // A pair of hosts partitioned.
            0..=24 => {
                let pairs = self.healthy_pairs();
                if !pairs.is_empty() {
                    let (a, b) = pairs[self.rng.random_range(0..pairs.len())];
                    let until = lasting(&mut self.rng, 4_000);
                    self.break_link(a, b, LinkFault::Partition, until);
                }
            }
            // One host cut off from all others.
            25..=39 => {
                let h = self.rng.random_range(1..=self.hosts);
                let until = lasting(&mut self.rng, 4_000);
                for other in (1..=self.hosts).filter(|o| *o != h) {
                    let (a, b) = (h.min(other), h.max(other));
                    if !self.links.contains_key(&(a, b)) {
                        self.break_link(a, b, LinkFault::Partition, until);
                    }
                }
            }
            // A link's packets held back, then delivered late.
            40..=54 => {
                let pairs = self.healthy_pairs();
                if !pairs.is_empty() {
                    let (a, b) = pairs[self.rng.random_range(0..pairs.len())];
                    let until = lasting(&mut self.rng, 1_500);
                    self.break_link(a, b, LinkFault::Hold, until);
                }
            }
            // One connection reset with its calls in flight.
            55..=74 => {
                if let Some((l, p)) = self.shared.wires.cut_one(&mut self.rng) {
                    self.note(format!("reset connection {l} <-> {p}"));
                }
            }
            // A crash at the next moment of a kind, whenever that comes.
            75..=84 => {
                let mut moments = MOMENTS.to_vec();
                if self.shared.install_time.is_zero() {
                    moments.retain(|m| *m != Moment::Installing);
                }
                if self.armed.is_none() {
                    let moment = moments[self.rng.random_range(0..moments.len())];
                    self.armed = Some(moment);
                    self.note(format!("armed: crash at the next {moment:?}"));
                }
            }
            // A host crashes and restarts later; the leader of the most groups half of the
            // time.
            _ => {
                let h = if self.rng.random_bool(0.5) {
                    self.busiest_leader()
                } else {
                    self.rng.random_range(1..=self.hosts)
                };
                self.crash(h, "", 5_000);
            }
        }
    }

    /// Crash `host` unless that would leave a majority down; it restarts at a random later
    /// time.
    fn crash(&mut self, host: u64, why: &str, down_ms_max: u64) -> bool {
        if self.down.contains(&host) || self.down.len() as u64 >= (self.hosts - 1) / 2 {
            return false;
        }
        self.sim.crash(host_name(host));
        let cut = self.shared.wires.cut_host(self.ip(host));
        lock(&self.shared.live).remove(&host);
        self.down.insert(host);
        let until =
            self.sim.elapsed() + Duration::from_millis(self.rng.random_range(20..=down_ms_max));
        self.undo.push((until, Undo::Restart(host)));
        self.note(format!("crash n{host}{why} (cut {cut} ends)"));
        true
    }

    /// The armed crash, if a replica passed its moment in the last step; forget the rest.
    fn crash_at_moment(&mut self) {
        let mut hit = None;
        for disk in self.disks.values().flatten() {
            let passed = disk.moments.swap(0, Ordering::SeqCst);
            if let Some(m) = self.armed {
                if hit.is_none() && passed & m as u32 != 0 && !self.down.contains(&disk.host) {
                    hit = Some((disk.host, disk.group, m));
                }
            }
        }
        if let Some((host, group, moment)) = hit {
            // Back soon, often within the same election.
            if self.crash(host, &format!(" at {moment:?} of s{group}"), 1_000) {
                self.armed = None;
            }
        }
    }

    fn busiest_leader(&mut self) -> u64 {
        let live = lock(&self.shared.live);
        let mut led: BTreeMap<u64, usize> = BTreeMap::new();
        for (host, rafts) in live.iter() {
            for (_, raft) in rafts {
                if raft.metrics().borrow().state == ServerState::Leader {
                    *led.entry(*host).or_default() += 1;
                }
            }
        }
        led.into_iter()
            .max_by_key(|(h, n)| (*n, *h))
            .map(|(h, _)| h)
            .unwrap_or(1)
    }

    /// Faults for `CHAOS` of simulated time.
    fn chaos(&mut self) -> Result<(), String> {
        let mut next = Duration::from_millis(self.rng.random_range(200..=1_000));
        while self.sim.elapsed() < CHAOS {
            self.step()?;
            let now = self.sim.elapsed();
            let (due, later): (Vec<_>, Vec<_>) = self.undo.drain(..).partition(|(t, _)| *t <= now);
            self.undo = later;
            for (_, u) in due {
                self.apply_undo(u);
            }
            self.crash_at_moment();
            if now >= next {
                self.fault();
                next = now + Duration::from_millis(self.rng.random_range(100..=1_000));
            }
        }
        Ok(())
    }

    /// Undo every fault and stop the client.
    fn heal(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let undo: Vec<_> = self.undo.drain(..).map(|(_, u)| u).collect();
        for u in undo {
            self.apply_undo(u);
        }
        self.note("healed; client stopped".into());
    }

    /// A group's members (voters, learners) in the newest membership any replica applied.
    fn members(&self, g: u64) -> (BTreeSet<u64>, BTreeSet<u64>) {
        let newest = self
            .disks
            .values()
            .map(|d| lock(&d[(g - 1) as usize].sm).record.clone())
            .max_by_key(|r| r.last)
            .unwrap_or_default();
        let m = newest.membership.membership();
        (m.voter_ids().collect(), m.learner_ids().collect())
    }

    /// The replicas of group `g` that are members of it now, by host.
    fn member_disks(&self, g: u64) -> Vec<(u64, Arc<Disk>)> {
        let (voters, learners) = self.members(g);
        self.disks
            .iter()
            .filter(|(h, _)| voters.contains(h) || learners.contains(h))
            .map(|(h, d)| (*h, d[(g - 1) as usize].clone()))
            .collect()
    }

    /// Whether every member replica of every group holds the same log and applied all of it
    /// (and, with moves, the mover finished every move).
    fn converged(&self) -> bool {
        if self.shared.moves && !self.shared.settled.load(Ordering::SeqCst) {
            return false;
        }
        (1..=GROUPS).all(|g| {
            let states: BTreeSet<(Option<LogId>, Option<LogId>)> = self
                .member_disks(g)
                .iter()
                .map(|(_, disk)| (lock(&disk.log).last_log_id(), lock(&disk.sm).record.last))
                .collect();
            states.len() == 1 && states.iter().all(|(log, applied)| log == applied)
        })
    }

    fn state_report(&self) -> String {
        let mut out = String::new();
        if self.shared.moves {
            out.push_str(&format!(
                "  mover settled: {}\n",
                self.shared.settled.load(Ordering::SeqCst)
            ));
        }
        for g in 1..=GROUPS {
            let (voters, learners) = self.members(g);
            out.push_str(&format!(
                "  s{g}: voters {voters:?} learners {learners:?}\n"
            ));
            for (h, d) in &self.disks {
                let disk = &d[(g - 1) as usize];
                let log = lock(&disk.log);
                let sm = lock(&disk.sm);
                out.push_str(&format!(
                    "  s{g} n{h}: vote {:?} log {:?} purged {:?} committed {:?} applied {:?}\n",
                    log.vote,
                    log.last_log_id(),
                    log.purged,
                    log.committed,
                    sm.record.last
                ));
            }
        }
        out
    }

    /// The checks on the healed cluster.
    fn check(&self) -> Result<(), String> {
        let workload = lock(&self.shared.workload);
        for g in 1..=GROUPS {
            if self.shared.moves {
                let (voters, learners) = self.members(g);
                if voters.len() as u64 != REPLICAS || !learners.is_empty() {
                    return Err(format!(
                        "s{g} settled with voters {voters:?} and learners {learners:?}"
                    ));
                }
            }
            let records: Vec<(u64, Record)> = self
                .member_disks(g)
                .iter()
                .map(|(h, d)| (*h, lock(&d.sm).record.clone()))
                .collect();
            let (first_host, first) = &records[0];
            for (h, r) in &records[1..] {
                if r != first {
                    let at = first
                        .entries
                        .iter()
                        .zip(&r.entries)
                        .position(|(a, b)| a != b)
                        .unwrap_or(first.entries.len().min(r.entries.len()));
                    return Err(format!(
                        "s{g}: n{h} and n{first_host} applied different sequences (from \
                         position {at}: {:?} vs {:?})",
                        r.entries.get(at),
                        first.entries.get(at)
                    ));
                }
            }
            // Each write at most once, and only writes that were proposed.
            let mut seen = BTreeSet::new();
            for (id, p) in &first.entries {
                if let Payload::Write(text) = p {
                    if !seen.insert(text.clone()) {
                        return Err(format!("s{g}: {text} applied twice (again at {id})"));
                    }
                    if !workload.proposed.contains(&(g, text.clone())) {
                        return Err(format!("s{g}: {text} at {id} was never proposed"));
                    }
                }
            }
            // One leader per term is structural: Cairn runs openraft with
            // `single-term-leader` (a vote is for one node per term), so log ids carry
            // the term alone and there is nothing more to compare here.
        }
        // Every acknowledged write at its index, on every member replica.
        for (g, text, index) in &workload.acked {
            for (h, d) in self.member_disks(*g) {
                let sm = lock(&d.sm);
                let found = sm
                    .record
                    .entries
                    .binary_search_by_key(index, |(id, _)| id.index)
                    .ok()
                    .map(|i| &sm.record.entries[i].1);
                if found != Some(&Payload::Write(text.clone())) {
                    return Err(format!(
                        "s{g}: acknowledged {text} at index {index} is {found:?} on n{h}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One simulation run; `Err` says what went wrong.
fn run(seed: u64, moves: bool) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(CHAOS + HEAL_LIMIT + Duration::from_secs(60))
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(MAX_LATENCY)
        .build();
    // Slow installs with crashes aimed at them (the bug they found is fixed; module doc).
    // `CAIRN_SIM_INSTALL_CRASH=0` makes installs instant.
    let install_crash = std::env::var_os("CAIRN_SIM_INSTALL_CRASH").is_none_or(|v| v != "0");
    let shared = Arc::new(Shared {
        install_time: if install_crash {
            INSTALL_TIME
        } else {
            Duration::ZERO
        },
        hosts: if moves { MOVE_HOSTS } else { hosts_for(seed) },
        moves,
        ..Shared::default()
    });
    let mut disks = BTreeMap::new();
    for host in 1..=shared.hosts {
        let mut groups = Vec::new();
        for group in 1..=GROUPS {
            let path = dir.path().join(format!("n{host}-s{group}"));
            std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            groups.push(Arc::new(Disk {
                host,
                group,
                dir: path,
                log: Mutex::default(),
                sm: Mutex::default(),
                moments: AtomicU32::new(0),
            }));
        }
        disks.insert(host, groups.clone());
        let shared = shared.clone();
        sim.host(host_name(host), move || {
            run_host(host, groups.clone(), shared.clone())
        });
    }
    sim.client("client", run_client(seed, shared.clone()));
    if moves {
        sim.client("mover", run_mover(seed, shared.clone()));
    }
    let mut driver = Driver {
        seed,
        hosts: shared.hosts,
        sim,
        shared,
        disks,
        rng: StdRng::seed_from_u64(seed),
        links: BTreeMap::new(),
        down: BTreeSet::new(),
        undo: Vec::new(),
        history: Vec::new(),
        leaders: BTreeMap::new(),
        armed: None,
    };
    let outcome = (|| {
        driver.chaos()?;
        driver.heal();
        let healed_at = driver.sim.elapsed();
        while !driver.converged() {
            if driver.sim.elapsed() - healed_at > HEAL_LIMIT {
                return Err(format!(
                    "replicas did not converge within {HEAL_LIMIT:?} of healing"
                ));
            }
            for _ in 0..50 {
                driver.step()?;
            }
        }
        let took = driver.sim.elapsed() - healed_at;
        driver.note(format!("converged after {:.3}s", took.as_secs_f64()));
        driver.check()
    })();
    match outcome {
        Ok(()) => {
            if std::env::var_os("CAIRN_SIM_VERBOSE").is_some() {
                eprintln!("seed {seed}: what happened:\n{}", driver.history.join("\n"));
            }
            let w = lock(&driver.shared.workload);
            let two_leader_terms = driver.leaders.values().filter(|l| l.len() > 1).count();
            let (built, installed) = {
                let oracle = lock(&driver.shared.oracle);
                (oracle.built, oracle.installed)
            };
            Ok(format!(
                "{} hosts; writes: {} acknowledged, {} unknown, {} refused; {} fault events; \
                 {} (group, term)s with a leader, {} with two; snapshots: {built} built, \
                 {installed} installed; {} replica moves; {:.1}s simulated",
                driver.hosts,
                w.acked.len(),
                w.unknown,
                w.refused,
                driver.history.len(),
                driver.leaders.len(),
                two_leader_terms,
                driver.shared.moved.load(Ordering::SeqCst),
                driver.sim.elapsed().as_secs_f64()
            ))
        }
        Err(e) => Err(format!(
            "{e}\nseed {}: what happened:\n{}\nreplicas:\n{}",
            driver.seed,
            driver.history.join("\n"),
            driver.state_report()
        )),
    }
}

/// The seeds in `var` (`7,8` or `7..=20`), else `default`.
fn seeds(var: &str, default: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    let Ok(spec) = std::env::var(var) else {
        return default.collect();
    };
    let mut seeds = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parsed = match part.split_once("..=") {
            Some((a, b)) => a.parse::<u64>().ok().zip(b.parse::<u64>().ok()),
            None => part.parse::<u64>().ok().map(|s| (s, s)),
        };
        match parsed {
            Some((a, b)) => seeds.extend(a..=b),
            None => panic!("{var}: cannot read {part:?} (want e.g. 7,8 or 7..=20)"),
        }
    }
    seeds
}

/// Run every seed of `var` (else `default`), with or without replica moves; panic with the
/// first failure's report.
fn run_seeds(var: &str, default: std::ops::RangeInclusive<u64>, moves: bool, test: &str) {
    // openraft logs every failed RPC as an error: quiet unless asked for.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    for seed in seeds(var, default) {
        let started = std::time::Instant::now();
        eprintln!("{test} seed {seed}: running");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed, moves)));
        let rerun = format!("rerun with {var}={seed} cargo test --test simulation {test}");
        match outcome {
            Ok(Ok(summary)) => eprintln!(
                "{test} seed {seed}: ok in {:.1}s: {summary}",
                started.elapsed().as_secs_f64()
            ),
            Ok(Err(failure)) => panic!("{test} seed {seed} failed: {failure}\n{rerun}"),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{test} seed {seed} panicked: {message}\n{rerun}")
            }
        }
    }
}

#[test]
fn replication_survives_faults() {
    run_seeds(
        "CAIRN_SIM_SEEDS",
        SEEDS,
        false,
        "replication_survives_faults",
    );
}

/// Replica moves (learner added, caught up, promoted; old replica removed) under the same
/// faults, with crashes aimed between the steps.
#[test]
fn replica_moves_survive_faults() {
    run_seeds(
        "CAIRN_SIM_MOVE_SEEDS",
        MOVE_SEEDS,
        true,
        "replica_moves_survive_faults",
    );
}
