//! One shard's Raft group on this node: the openraft instance, the replica it applies to, and
//! (on the leader) the writer. Leadership changes are logged as one line each.

use super::log_store::LogDb;
use super::network::Network;
use super::state_machine::StateMachine;
use super::transport::Client;
use super::writer::Writer;
use super::NodeInfo;
use super::Raft;
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::storage::replica::{ReplicaHandle, ReplicaOptions, Rows, Statement};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// How a read may be served (DESIGN.md decision 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// Confirmed leader, state machine caught up to the read index. Never stale.
    #[default]
    Linearizable,
    /// A replica that is provably no more than this far behind the leader (else the leader).
    Bounded(std::time::Duration),
    /// Whatever the local replica has applied.
    Any,
}

pub struct ShardGroup {
    reads: ReadBarrier,
    /// Statements this replica served as the shard's executor (reads, autocommit writes,
    /// transactions begun), for metrics and routing tests.
    pub served: std::sync::atomic::AtomicU64,
    /// Leadership changes this node has seen for the group (a new leader or a new term).
    pub elections: Arc<std::sync::atomic::AtomicU64>,
    /// Snapshots this replica received from a leader and installed since the node started.
    pub snapshots_installed: Arc<std::sync::atomic::AtomicU64>,
    /// When this node last accepted entries or a heartbeat from the leader, and the commit
    /// index the leader reported then (for bounded-staleness reads on followers).
    pub leader_contact: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
    /// What followers acknowledged of this node as leader (lease reads).
    acks: Arc<super::network::Acks>,
    /// Linearizable reads this node answered as leader within its lease, and those that
    /// needed a quorum round (or shared one).
    pub lease_reads: std::sync::atomic::AtomicU64,
    pub quorum_reads: std::sync::atomic::AtomicU64,
    pub shard: ShardId,
    pub node: NodeId,
    pub raft: Raft,
    pub replica: ReplicaHandle,
    pub writer: Writer,
}

/// Raft timing and log retention for every group of the node.
pub fn raft_config(
    election_timeout_ms_min: u64,
    heartbeat_interval_ms: u64,
    snapshot_every: u64,
) -> Result<Arc<openraft::Config>> {
    let config = openraft::Config {
        cluster_name: "cairn".into(),
        heartbeat_interval: heartbeat_interval_ms,
        election_timeout_min: election_timeout_ms_min,
        election_timeout_max: election_timeout_ms_min * 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        // Keep a tail after a snapshot so a briefly lagging follower catches up from the log.
        max_in_snapshot_log_to_keep: snapshot_every / 5,
        // openraft's default (200 ms per snapshot chunk) is too tight for a busy 2-core
        // machine: chunks time out and the transfer restarts without end.
        install_snapshot_timeout: 5_000,
        snapshot_max_chunk_size: 1024 * 1024,
        // Heartbeats are sent by the node's one ticker for every group it leads at once
        // (`cluster::Cluster::heartbeats`), so they share frames per peer.
        enable_heartbeat: false,
        ..Default::default()
    };
    Ok(Arc::new(config.validate().map_err(|e| {
        Error::internal(format!("raft config: {e}"))
    })?))
}

impl ShardGroup {
    /// Open (or create) the shard's replica under `dir` and start its group. It waits to be
    /// initialised ([`ShardGroup::initialize`]) or to hear from a leader. `epoch` is which
    /// placement of the shard on this node it is (`ids::replica_name`).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        node: NodeId,
        shard: ShardId,
        epoch: u64,
        dir: &Path,
        logs: &LogDb,
        config: Arc<openraft::Config>,
        client: Arc<Client>,
        options: &ReplicaOptions,
    ) -> Result<ShardGroup> {
        let shard_dir = dir.join(crate::ids::replica_name(shard, epoch));
        let replica = ReplicaHandle::start(&shard_dir.join("replica.db"), shard, options)?;
        let state_machine =
            StateMachine::new(replica.clone(), &shard_dir.join("snapshots")).await?;
        let snapshots_installed = state_machine.installed.clone();
        let mut log_store = logs.store(shard, epoch)?;
        refuse_a_gap(shard, &replica, &mut log_store).await?;
        let acks = Arc::new(super::network::Acks::default());
        let network = Network {
            shard,
            client,
            acks: acks.clone(),
        };
        let raft = Raft::new(node.0, config, network, log_store, state_machine)
            .await
            .map_err(|e| Error::internal(format!("{shard}: starting raft: {e}")))?;
        let elections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(log_leadership(shard, raft.clone(), elections.clone()));
        let writer = Writer::start(raft.clone(), replica.clone(), node);
        Ok(ShardGroup {
            reads: ReadBarrier::default(),
            served: std::sync::atomic::AtomicU64::new(0),
            elections,
            snapshots_installed,
            leader_contact: std::sync::Mutex::new(None),
            acks,
            lease_reads: std::sync::atomic::AtomicU64::new(0),
            quorum_reads: std::sync::atomic::AtomicU64::new(0),
            shard,
            node,
            raft,
            replica,
            writer,
        })
    }

    /// Whether the group has a log (it was initialised here or heard from a leader).
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(true)
    }

    /// Create the group with `members` as its voters, if this replica is pristine. Several
    /// members may do this with the same membership (openraft allows it).
    pub async fn initialize(&self, members: BTreeMap<u64, NodeInfo>) -> Result<()> {
        if self.is_initialized().await {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => Ok(()),
            Err(e) => Err(Error::internal(format!(
                "{}: initializing: {e}",
                self.shard
            ))),
        }
    }

    fn count(&self) {
        self.served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// An autocommit write through this node's writer (which must lead).
    pub async fn write(&self, stmt: Statement) -> Result<Rows> {
        self.count();
        self.writer.execute(stmt).await
    }

    /// Take this node's writer for a transaction (`priority`: see `Writer::begin`).
    pub async fn begin(
        &self,
        priority: Option<super::writer::Priority>,
    ) -> Result<super::writer::Transaction> {
        self.count();
        self.writer.begin(priority).await
    }

    /// A read on this replica as it is, whatever it has applied.
    pub async fn read_local(&self, stmt: Statement) -> Result<Rows> {
        self.count();
        self.replica.read(stmt).await
    }

    /// A read on this replica as it is, with other replica files attached.
    pub async fn read_attached(
        &self,
        stmt: Statement,
        attach: Vec<(String, std::path::PathBuf)>,
    ) -> Result<Rows> {
        self.count();
        self.replica.read_attached(stmt, attach).await
    }

    /// Run a read-only statement at the given consistency.
    pub async fn read(&self, stmt: Statement, consistency: ReadConsistency) -> Result<Rows> {
        self.count();
        if consistency == ReadConsistency::Linearizable {
            wait_for_leader(&self.raft, crate::limits::LEADER_WAIT).await;
            self.confirm_read().await?;
        }
        self.replica.read(stmt).await
    }

    /// A linearizable read on this node, which must lead, with the applied index the rows
    /// are as of (see `ReplicaHandle::read_at`).
    pub async fn read_at(&self, stmt: Statement) -> Result<(Rows, u64)> {
        self.count();
        wait_for_leader(&self.raft, crate::limits::LEADER_WAIT).await;
        self.confirm_read().await?;
        self.replica.read_at(stmt).await
    }

    /// Make a linearizable read on this node safe: within the leader's lease, catch the
    /// replica up with what is committed; else confirm leadership with a quorum round
    /// (shared by the reads that arrive meanwhile).
    async fn confirm_read(&self) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(index) = self.lease_read_index().await {
            let caught_up = self.applied() >= index
                || self
                    .raft
                    .wait(Some(crate::limits::LEADER_WAIT))
                    .applied_index_at_least(Some(index), "lease read")
                    .await
                    .is_ok();
            if caught_up {
                self.lease_reads.fetch_add(1, Relaxed);
                return Ok(());
            }
        }
        self.reads.confirm(&self.raft).await?;
        self.quorum_reads.fetch_add(1, Relaxed);
        Ok(())
    }

    fn applied(&self) -> u64 {
        let m = self.raft.metrics();
        let applied = m.borrow().last_applied.map(|l| l.index).unwrap_or(0);
        applied
    }

    /// A read index without a quorum round: this node's commit index, if it leads, has
    /// committed an entry of its own term (so everything committed before it took over is
    /// covered), and a quorum of voters acknowledged appends it sent less than
    /// `LEASE_READ_FRACTION` of the lease ago. Followers refuse votes for a lease after
    /// accepting an append (openraft), so no other leader can have been elected meanwhile —
    /// except with this node's own vote, which would have ended its leadership, seen here.
    /// `None` during a membership change (two quorums) or whenever anything is unsure.
    async fn lease_read_index(&self) -> Option<u64> {
        if crate::planted::active("lease-forever") {
            // For the fault tests: trust a lease that may have run out long ago.
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.current_leader == Some(self.node.0) {
                return m.last_applied.map(|l| l.index);
            }
        }
        let me = self.node.0;
        let (vote, committed, voters) = self
            .raft
            .with_raft_state(move |st| {
                let vote = *st.vote_ref();
                let effective = st.membership_state.effective();
                let joint = effective.membership().get_joint_config().len() > 1;
                let voters: std::collections::BTreeSet<u64> = effective.voter_ids().collect();
                (vote, st.committed, (!joint).then_some(voters))
            })
            .await
            .ok()?;
        if !vote.is_committed() || vote.leader_id().voted_for() != Some(me) {
            return None;
        }
        let committed = committed?;
        if committed.leader_id.term != vote.leader_id().term {
            return None;
        }
        // Taken after the state was read, so the lease is checked at a moment no earlier
        // than the one the state is of (however long the Raft core took to answer).
        let now = std::time::Instant::now();
        let acked = self.acks.quorum_acked(me, &vote, &voters?, now)?;
        let lease = std::time::Duration::from_millis(self.raft.config().election_timeout_max);
        (now.duration_since(acked) < lease.mul_f64(crate::limits::LEASE_READ_FRACTION))
            .then_some(committed.index)
    }

    /// The read index on this node, which must lead: leadership confirmed by a quorum, and
    /// the replica caught up with everything committed before the call.
    pub async fn read_index(&self) -> Result<u64> {
        let log_id = confirm_leader(&self.raft).await?;
        Ok(log_id.map(|l| l.index).unwrap_or(0))
    }

    /// The group's voters as this replica's membership has them.
    pub fn voters(&self) -> std::collections::BTreeSet<u64> {
        super::membership::voters(&self.raft)
    }

    /// How to reach a member of this group.
    pub fn node_info(&self, id: NodeId) -> Option<NodeInfo> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().get_node(&id.0).cloned()
    }

    /// This replica's applied index, and whether it is a learner (a member without a vote).
    pub fn applied_and_learner(&self, me: NodeId) -> (u64, bool) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == me.0);
        (applied, !voter)
    }

    /// Every member of this group with how to reach it.
    pub fn members(&self) -> Vec<(NodeId, NodeInfo)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (NodeId(*id), n.clone()))
            .collect()
    }

    /// Whether this replica is provably at most `bound` behind the leader: it heard from the
    /// leader within `bound` and has applied everything the leader had committed then.
    pub fn fresh_within(&self, bound: std::time::Duration) -> bool {
        let contact = *self.leader_contact.lock().expect("contact lock poisoned");
        let Some((at, commit)) = contact else {
            return false;
        };
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        at.elapsed() <= bound && applied >= commit
    }

    /// On the leader: whether every other member has every entry of the log and this
    /// replica has applied it all. A retired group's leader goes last, once this holds (and
    /// a heartbeat has told the followers the commit index), so no follower is left short of
    /// the entries that resolve its two-phase commit records, with no leader to send them.
    pub fn followers_have_everything(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let Some(last) = m.last_log_index else {
            return true;
        };
        if m.last_applied.map(|l| l.index) != Some(last) {
            return false;
        }
        let Some(replication) = &m.replication else {
            return false;
        };
        replication
            .iter()
            .filter(|(id, _)| **id != m.id)
            .all(|(_, matched)| matched.map(|l| l.index) >= Some(last))
    }

    /// The current leader and term, as this node knows them.
    pub fn leader(&self) -> (Option<NodeId>, u64) {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.current_leader.map(NodeId), m.current_term)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(shard = %self.shard, error = %e, "raft shutdown");
        }
    }
}

/// A replica behind the start of its log (entries it still needs were purged) with no
/// snapshot to cover them: starting would skip those entries silently. After a power cut
/// this cannot happen — the log is purged only behind a durable snapshot, which
/// `StateMachine::new` restores — so it means lost or tampered files: stop loudly.
async fn refuse_a_gap(
    shard: ShardId,
    replica: &ReplicaHandle,
    log_store: &mut super::log_store::LogStore,
) -> Result<()> {
    use openraft::storage::RaftLogStorage;
    let purged = log_store
        .get_log_state()
        .await
        .map_err(|e| Error::internal(format!("{shard}: reading the log state: {e}")))?
        .last_purged_log_id
        .map(|l| l.index);
    let applied = replica.applied_state().await?.0.map(|l| l.index);
    if purged > applied {
        return Err(Error::Corrupt(format!(
            "{shard}: the replica has applied up to {applied:?} but the log starts after {purged:?}, and no snapshot covers the gap; refusing to start the group"
        )));
    }
    Ok(())
}

/// Shares read-index rounds among linearizable reads. A read needs a round (leadership
/// confirmed by a quorum, then the state machine caught up to the read index) that *started
/// after the read arrived*; every read waiting when a round starts is served by it, so N
/// concurrent reads cost about two rounds instead of N.
///
/// Invariant: `confirmed` = the highest arrival ticket covered by a finished round; a round
/// covers every ticket taken before it began (`upto` is read just before the round).
#[derive(Default)]
struct ReadBarrier {
    arrived: std::sync::atomic::AtomicU64,
    confirmed: tokio::sync::Mutex<u64>,
}

impl ReadBarrier {
    async fn confirm(&self, raft: &Raft) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let mine = self.arrived.fetch_add(1, SeqCst) + 1;
        let mut confirmed = self.confirmed.lock().await;
        if *confirmed >= mine {
            return Ok(());
        }
        let upto = self.arrived.load(SeqCst);
        confirm_leader(raft).await?;
        *confirmed = upto;
        Ok(())
    }
}

/// Confirm with a quorum that this node leads the group, and wait until the replica has
/// applied everything committed before the call; the log id it caught up to.
pub async fn confirm_leader(raft: &Raft) -> Result<Option<super::LogId>> {
    raft.ensure_linearizable().await.map_err(|e| match e {
        openraft::error::RaftError::APIError(
            openraft::error::CheckIsLeaderError::ForwardToLeader(f),
        ) => Error::NotLeader {
            leader: f.leader_id.map(NodeId),
        },
        other => Error::Unavailable(other.to_string()),
    })
}

/// The group's leader, waiting up to `limit` for an election in progress.
pub async fn wait_for_leader(raft: &Raft, limit: std::time::Duration) -> Option<NodeId> {
    if let Some(l) = raft.metrics().borrow().current_leader {
        return Some(NodeId(l));
    }
    raft.wait(Some(limit))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .ok()
        .and_then(|m| m.current_leader.map(NodeId))
}

/// The node's heartbeat ticker: every `interval`, each group (of those `rafts` returns then)
/// that `node` leads sends its heartbeats, all at once, so they leave together on each
/// peer's connection. openraft's own per-group heartbeat timers are off (`raft_config`):
/// without this ticker, followers would campaign against a healthy leader.
pub async fn run_heartbeats(
    node: NodeId,
    interval: std::time::Duration,
    rafts: impl Fn() -> Vec<Raft>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for raft in rafts() {
            if raft.metrics().borrow().current_leader == Some(node.0) {
                let _ = raft.trigger().heartbeat().await;
            }
        }
    }
}

/// Logs one line per leadership change: `shard s1: n1 is leader for term 3`.
async fn log_leadership(shard: ShardId, raft: Raft, elections: Arc<std::sync::atomic::AtomicU64>) {
    let mut metrics = raft.metrics();
    let mut last: Option<(Option<u64>, u64)> = None;
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        if last != Some(now) {
            match now.0 {
                Some(leader) => {
                    elections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        "shard {shard}: {} is leader for term {}",
                        NodeId(leader),
                        now.1
                    )
                }
                None => tracing::info!("shard {shard}: no leader in term {}", now.1),
            }
            last = Some(now);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
