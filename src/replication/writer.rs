//! A shard's single writer, on its leader. Autocommit statements that arrive while a proposal
//! is in flight queue up and go together in the next batch (group commit), each in its own
//! savepoint so one failure fails only its statement. An interactive transaction takes the
//! writer from its first statement to COMMIT/ROLLBACK; the writer is released when the client
//! goes away or stays idle for `limits::IDLE_IN_TRANSACTION_TIMEOUT`.
//!
//! Two-phase commit: a transaction's part on this shard may, instead of committing, be
//! collected (`Transaction::collect`), prepared (`Op::Prepare` through Raft: its ops kept,
//! not applied), and later resolved (`Op::Resolve`: applied or dropped) — the writer stays
//! held from first statement to resolution, so nothing else writes the shard in between
//! and the prepared ops cannot conflict when applied. The coordinator shard also records the
//! decision (`Op::Decide`; the first recorded wins). A prepared part whose session goes
//! away, or that a new leader finds in its replica, is resolved by the decision in force,
//! recording abort if none was recorded (presumed abort) — so nothing stays locked
//! forever, and a decision once recorded is never contradicted.
//!
//! Lock waits: wait-die. A transaction that already holds another shard's writer and asks
//! for one held by an older transaction gets a retryable error at once instead of waiting
//! — checked when it asks and again each time the writer changes hands while it queues —
//! so transactions can never wait for each other in a cycle.
//!
//! A transaction's view is current only while this node leads in the term it began in: a
//! part that writes checks the term before proposing, and a part that only read confirms
//! leadership with a quorum when it ends (a deposed leader serves stale reads otherwise).
//!
//! Invariant: the writer never executes against a state that lacks its previous proposal — it
//! waits for each proposal to be applied (openraft answers `client_write` after apply), and
//! a newly elected leader first applies everything before its own term and resolves any
//! prepared parts (`ensure_ready`).

use super::{Batch, Op, Raft};
use crate::error::{sqlstate, Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::limits;
use crate::storage::replica::{ReplicaHandle, Rows, Statement, StatementKind};
use openraft::error::{ClientWriteError, RaftError};
use rusqlite::types::Value;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot, watch};

/// A transaction's standing in lock conflicts (wait-die): when it started (smaller is
/// older) and whether it already holds another shard's writer. Only a transaction that
/// holds one can be part of a wait cycle, so only such a younger one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Priority {
    pub started: u64,
    pub holding: bool,
}

/// Who decides a queued autocommit statement's fate: the writer, by taking it into a batch,
/// or its caller, by abandoning it first (timed out or cancelled while queued). Exactly one
/// wins, so a caller that abandoned knows the statement never runs — and a caller that
/// could not knows it runs, and waits for its outcome.
#[derive(Clone, Default)]
struct Claim(Arc<std::sync::atomic::AtomicU8>);

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

impl Claim {
    fn swap_from_queued(&self, to: u8) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.0.compare_exchange(QUEUED, to, SeqCst, SeqCst).is_ok()
    }

    /// The writer takes it; false if the caller abandoned it.
    fn take(&self) -> bool {
        self.swap_from_queued(TAKEN)
    }

    /// The caller gives up; false if the writer has taken it already.
    fn abandon(&self) -> bool {
        self.swap_from_queued(ABANDONED)
    }
}

/// Finds the decision on a transaction from its coordinator shard's leader (recording abort
/// there if there is none yet). Supplied by the cluster layer, which can reach any shard.
#[async_trait::async_trait]
pub trait Decider: Send + Sync {
    async fn decide(&self, coordinator: ShardId, txn: u64) -> Result<bool>;
}

enum Request {
    Exec {
        stmt: Statement,
        claim: Claim,
        reply: oneshot::Sender<Result<Rows>>,
    },
    Begin {
        priority: u64,
        reply: oneshot::Sender<Result<Transaction>>,
    },
    /// Record `commit` as the decision on `txn` unless one is recorded; answer the decision
    /// in force.
    Decide {
        txn: u64,
        commit: bool,
        reply: oneshot::Sender<Result<bool>>,
    },
    /// Resolve this shard's prepared part of `txn`, if it is still prepared.
    Resolve {
        txn: u64,
        commit: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Delete the decision records of `txns` (every part of each is resolved).
    Forget {
        txns: Vec<u64>,
        reply: oneshot::Sender<Result<()>>,
    },
    Check {
        id: u64,
        reply: oneshot::Sender<Result<()>>,
    },
}

enum TxnCmd {
    Exec(Statement, oneshot::Sender<Result<Rows>>),
    Commit(oneshot::Sender<Result<()>>),
    Rollback(oneshot::Sender<()>),
    Collect(oneshot::Sender<Result<bool>>),
    Prepare {
        txn: u64,
        coordinator: ShardId,
        reply: oneshot::Sender<Result<()>>,
    },
    Decide {
        txn: u64,
        commit: bool,
        reply: oneshot::Sender<Result<bool>>,
    },
    Resolve {
        commit: bool,
        reply: oneshot::Sender<Result<()>>,
    },
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
    /// Priority (start time, smaller = older) of the transaction holding the writer; 0 if
    /// none. Waiters watch it: the holder changes while they queue.
    holder: watch::Receiver<u64>,
    decider: Arc<OnceLock<Arc<dyn Decider>>>,
}

/// An open interactive transaction holding the shard's writer. Dropping it rolls back (or,
/// once prepared, resolves by the recorded decision).
pub struct Transaction {
    tx: mpsc::Sender<TxnCmd>,
}

fn writer_gone() -> Error {
    Error::sql(
        sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
        "the transaction was ended by the server (idle for too long, or the shard's leader changed); roll back and retry",
    )
}

impl Transaction {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> TxnCmd) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())?
    }

    pub async fn exec(&self, stmt: Statement) -> Result<Rows> {
        self.call(|r| TxnCmd::Exec(stmt, r)).await
    }

    /// Commit this shard's part on its own (one Raft proposal). Once the writer has the
    /// commit, an answer that does not come is an unknown outcome, never a retry.
    pub async fn commit(self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(TxnCmd::Commit(reply))
            .await
            .map_err(|_| writer_gone())?;
        match tokio::time::timeout(limits::WRITE_OUTCOME_WAIT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(crate::error::ambiguous(
                "the shard's writer stopped while committing",
            )),
            Err(_) => Err(crate::error::ambiguous(format!(
                "no commit outcome within {:?}",
                limits::WRITE_OUTCOME_WAIT
            ))),
        }
    }

    pub async fn rollback(self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(TxnCmd::Rollback(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// End the statements: keep their effects for a commit or prepare, and say whether
    /// there are any.
    pub async fn collect(&self) -> Result<bool> {
        self.call(TxnCmd::Collect).await
    }

    /// Make the collected effects this shard's prepared part of `txn`.
    pub async fn prepare(&self, txn: u64, coordinator: ShardId) -> Result<()> {
        self.call(|reply| TxnCmd::Prepare {
            txn,
            coordinator,
            reply,
        })
        .await
    }

    /// On the coordinator shard: record the decision on `txn`; the decision in force.
    pub async fn decide(&self, txn: u64, commit: bool) -> Result<bool> {
        self.call(|reply| TxnCmd::Decide { txn, commit, reply })
            .await
    }

    /// Apply or drop the prepared part, releasing the writer.
    pub async fn resolve(self, commit: bool) -> Result<()> {
        self.call(|reply| TxnCmd::Resolve { commit, reply }).await
    }
}

/// The `holder` priority of a writer that is resolving prepared parts from their
/// coordinators' records: older than any transaction. Recovery cannot die, and it may wait
/// for a coordinator shard held by a transaction that itself waits for this shard; as the
/// oldest, it makes that transaction die (wait-die) instead of both waiting out timeouts.
const RECOVERY: u64 = 1;

fn older_holds() -> Error {
    Error::sql(
        sqlstate::SERIALIZATION_FAILURE,
        "could not serialize access: an older transaction holds a shard this one needs; retry the transaction",
    )
}

fn wait_timeout() -> Error {
    Error::Retry(format!(
        "timed out after {:?} waiting for the shard's writer (held by a long transaction)",
        limits::WRITER_WAIT_TIMEOUT
    ))
}

impl Writer {
    pub fn start(raft: Raft, replica: ReplicaHandle, node: NodeId) -> Writer {
        let (tx, rx) = mpsc::channel(limits::WRITER_QUEUE_MAX);
        let (holder_tx, holder) = watch::channel(0u64);
        let decider: Arc<OnceLock<Arc<dyn Decider>>> = Arc::new(OnceLock::new());
        let context = Context {
            raft,
            replica,
            node,
            holder: holder_tx,
            decider: decider.clone(),
        };
        tokio::spawn(run(context, rx));
        Writer {
            tx,
            holder,
            decider,
        }
    }

    /// How this writer learns decisions held by other shards (set once by the cluster).
    pub fn set_decider(&self, decider: Arc<dyn Decider>) {
        let _ = self.decider.set(decider);
    }

    async fn send<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        let fut = async {
            self.tx
                .send(make(reply))
                .await
                .map_err(|_| Error::Unavailable("writer stopped".into()))?;
            rx.await
                .map_err(|_| Error::Unavailable("writer stopped".into()))?
        };
        tokio::time::timeout(limits::WRITER_WAIT_TIMEOUT, fut)
            .await
            .map_err(|_| wait_timeout())?
    }

    /// Execute one autocommit statement; answered once its effects are committed and applied.
    ///
    /// Outcomes: while the statement waits in the queue, a cancel (57014) or
    /// `WRITER_WAIT_TIMEOUT` (retry) withdraws it for certain. Once the writer has taken it,
    /// the statement's own token may still stop its execution (57014, nothing proposed);
    /// past that it is proposed, and an answer that does not come within
    /// `WRITE_OUTCOME_WAIT` is an unknown outcome (08007), never a retry.
    pub async fn execute(&self, stmt: Statement) -> Result<Rows> {
        let cancel = stmt.cancel.clone();
        let claim = Claim::default();
        let (reply, mut rx) = oneshot::channel();
        let request = Request::Exec {
            stmt,
            claim: claim.clone(),
            reply,
        };
        let queue_deadline = tokio::time::Instant::now() + limits::WRITER_WAIT_TIMEOUT;
        tokio::select! {
            sent = self.tx.send(request) => {
                sent.map_err(|_| Error::Unavailable("writer stopped".into()))?;
            }
            _ = cancel.cancelled() => return Err(crate::storage::cancel::cancelled()),
            _ = tokio::time::sleep_until(queue_deadline) => return Err(wait_timeout()),
        }
        let mut deadline = queue_deadline;
        let mut taken = false;
        let mut cancel_seen = false;
        loop {
            tokio::select! {
                answer = &mut rx => {
                    return match answer {
                        Ok(result) => result,
                        Err(_) if claim.abandon() => Err(Error::Unavailable("writer stopped".into())),
                        Err(_) => Err(crate::error::ambiguous("the shard's writer stopped with the statement taken")),
                    };
                }
                _ = cancel.cancelled(), if !cancel_seen => {
                    if claim.abandon() {
                        return Err(crate::storage::cancel::cancelled());
                    }
                    // Taken: its execution sees the token; past that it is proposed.
                    cancel_seen = true;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if !taken && claim.abandon() {
                        return Err(wait_timeout());
                    }
                    if taken {
                        return Err(crate::error::ambiguous(format!(
                            "no outcome from the shard's writer within {:?}",
                            limits::WRITE_OUTCOME_WAIT
                        )));
                    }
                    taken = true;
                    deadline = tokio::time::Instant::now() + limits::WRITE_OUTCOME_WAIT;
                }
            }
        }
    }

    /// Take the writer for an interactive transaction. `priority` is the transaction's
    /// (see [`Priority`]); without one it counts as the youngest and never dies.
    ///
    /// Wait-die: a transaction holding another shard never waits for an older one. It is
    /// checked on arrival and again whenever the writer changes hands while it queues — a
    /// waiter that found a younger holder may otherwise end up behind an older transaction
    /// queued before it, which may in turn wait for the waiter's shards (a cycle that only
    /// the writer-wait timeout would break).
    pub async fn begin(&self, priority: Option<Priority>) -> Result<Transaction> {
        let Some(p) = priority else {
            return self
                .send(|reply| Request::Begin {
                    priority: u64::MAX,
                    reply,
                })
                .await;
        };
        let dies = |holder: u64| p.holding && holder != 0 && p.started > holder;
        let mut holder = self.holder.clone();
        if dies(*holder.borrow_and_update()) {
            return Err(older_holds());
        }
        let wait = self.send(|reply| Request::Begin {
            priority: p.started,
            reply,
        });
        tokio::pin!(wait);
        loop {
            tokio::select! {
                biased;
                result = &mut wait => return result,
                changed = holder.changed(), if p.holding => {
                    if changed.is_err() {
                        return wait.await; // the writer stopped; the wait says so
                    }
                    if dies(*holder.borrow_and_update()) {
                        // Dropping the wait withdraws the request (the writer skips it).
                        return Err(older_holds());
                    }
                }
            }
        }
    }

    /// Whether one transaction holds the writer from now until `span` has passed (it
    /// keeps the shard to itself, for a while at least), rather than none, or ones that
    /// come and go.
    pub async fn held_throughout(&self, span: std::time::Duration) -> bool {
        let mut holder = self.holder.clone();
        let first = *holder.borrow_and_update();
        if first == 0 {
            return false;
        }
        let deadline = tokio::time::Instant::now() + span;
        loop {
            tokio::select! {
                changed = holder.changed() => {
                    if changed.is_err() || *holder.borrow_and_update() != first {
                        return false;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return true,
            }
        }
    }

    /// Record `commit` as the decision on `txn` unless one is recorded; the decision in
    /// force (what a recovering participant asks the coordinator shard).
    pub async fn decide(&self, txn: u64, commit: bool) -> Result<bool> {
        self.send(|reply| Request::Decide { txn, commit, reply })
            .await
    }

    /// Resolve this shard's prepared part of `txn` if it is still there (a session whose
    /// lease on the shard broke finishes its commit this way).
    pub async fn resolve(&self, txn: u64, commit: bool) -> Result<()> {
        self.send(|reply| Request::Resolve { txn, commit, reply })
            .await
    }

    /// Delete the decision records of `txns`, kept here as their coordinator shard. Only
    /// for transactions whose every part was resolved through its shard's log.
    /// Propose consistency check `id` (every replica takes a checksum when it applies it);
    /// returns once it is applied here.
    pub async fn check(&self, id: u64) -> Result<()> {
        self.send(|reply| Request::Check { id, reply }).await
    }

    pub async fn forget(&self, txns: Vec<u64>) -> Result<()> {
        self.send(|reply| Request::Forget { txns, reply }).await
    }
}

/// What the writer task works with.
struct Context {
    raft: Raft,
    replica: ReplicaHandle,
    node: NodeId,
    holder: watch::Sender<u64>,
    decider: Arc<OnceLock<Arc<dyn Decider>>>,
}

/// Fails unless this node leads the group and has applied every entry of earlier terms; a
/// new term also resolves the prepared parts found in the replica.
/// Where the writer stands with its term: ready to serve in `term`, or, with prepared
/// parts whose decisions could not be learnt, refusing (quickly, saying why) until
/// `retry_at`, when the next request tries again.
#[derive(Default)]
struct Readiness {
    term: Option<u64>,
    unresolved: Option<(Error, tokio::time::Instant)>,
}

/// How long a writer with unresolvable prepared parts answers at once before trying again.
const UNRESOLVED_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

async fn ensure_ready(cx: &Context, ready_term: &mut Readiness) -> Result<()> {
    super::group::wait_for_leader(&cx.raft, limits::LEADER_WAIT).await;
    let (leader, term) = {
        let m = cx.raft.metrics();
        let m = m.borrow();
        (m.current_leader, m.current_term)
    };
    if leader != Some(cx.node.0) {
        return Err(Error::NotLeader {
            leader: leader.map(NodeId),
        });
    }
    if ready_term.term != Some(term) {
        if let Some((e, retry_at)) = &ready_term.unresolved {
            if tokio::time::Instant::now() < *retry_at {
                return Err(e.clone());
            }
        }
        super::group::confirm_leader(&cx.raft).await?;
        let resolved = resolve_prepared(cx).await;
        cx.holder.send_replace(0);
        if let Err(e) = resolved {
            ready_term.unresolved =
                Some((e.clone(), tokio::time::Instant::now() + UNRESOLVED_RETRY));
            return Err(e);
        }
        ready_term.unresolved = None;
        drop_staged(cx).await?;
        ready_term.term = Some(term);
    }
    Ok(())
}

async fn propose(raft: &Raft, ops: Vec<Op>) -> Result<()> {
    let mut stamped = Vec::with_capacity(ops.len() + 1);
    stamped.push(Op::Time(crate::storage::functions::now_micros()));
    stamped.extend(ops);
    crate::metrics::timeline::proposal();
    match raft.client_write(Batch { ops: stamped }).await {
        Ok(written) if written.data.refused => Err(Error::Retry(
            "the shard changed between computing this write and committing it (its leader changed); retry it"
                .into(),
        )),
        Ok(_) => Ok(()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(Error::NotLeader {
            leader: f.leader_id.map(NodeId),
        }),
        // Anything else (the group stopping, a storage failure) may come after the entry was
        // appended: it may still commit.
        Err(e) => Err(crate::error::ambiguous(e)),
    }
}

fn internal_read(sql: &str, params: Vec<Value>) -> Statement {
    Statement {
        sql: sql.into(),
        params,
        kind: StatementKind::Dml,
        refs: Vec::new(),
        cancel: Default::default(),
    }
}

/// Commit `ops` through Raft: one entry if they are small; else their encoding in staged
/// parts of about [`limits::ENTRY_BYTES_TARGET`] and a last entry applying them all, so no
/// entry (or message between nodes) grows with the transaction. The writer is held
/// throughout, so nothing else changes the shard in between. Parts left by a failure are
/// dropped here if this node still leads, else by the next leader (`ensure_ready`).
async fn propose_ops(raft: &Raft, ops: Vec<Op>) -> Result<()> {
    let id = rand::random::<u64>() >> 1;
    let (mut base, ops) = super::take_base(ops);
    match stage_large(raft, ops, id).await? {
        Some(ops) => {
            base.extend(ops);
            propose(raft, base).await
        }
        None => {
            base.push(Op::Staged { id });
            staged_or_drop(raft, base).await
        }
    }
}

/// `ops` back if they fit one entry; else staged under `id` (the entry that applies them
/// is the caller's: `Op::Staged { id }`, or a prepared part holding it).
async fn stage_large(raft: &Raft, ops: Vec<Op>, id: u64) -> Result<Option<Vec<Op>>> {
    if ops.iter().map(Op::bytes).sum::<usize>() <= limits::ENTRY_BYTES_TARGET {
        return Ok(Some(ops));
    }
    let bytes = postcard::to_stdvec(&ops).map_err(Error::internal)?;
    drop(ops);
    for (seq, part) in bytes.chunks(limits::ENTRY_BYTES_TARGET).enumerate() {
        let op = Op::Stage {
            id,
            seq: seq as u32,
            part: part.to_vec(),
        };
        if let Err(e) = propose(raft, vec![op]).await {
            let _ = propose(raft, vec![Op::DropStaged]).await;
            return Err(e);
        }
    }
    Ok(None)
}

/// Propose the entry that uses staged parts; on failure drop them (if still leader).
async fn staged_or_drop(raft: &Raft, ops: Vec<Op>) -> Result<()> {
    let result = propose(raft, ops).await;
    if result.is_err() {
        let _ = propose(raft, vec![Op::DropStaged]).await;
    }
    result
}

/// Propose `commit` as the decision on `txn` (this shard coordinates it) and read back the
/// decision in force.
async fn record_decision(cx: &Context, txn: u64, commit: bool) -> Result<bool> {
    propose(&cx.raft, vec![Op::Decide { txn, commit }]).await?;
    let rows = cx
        .replica
        .read(internal_read(
            "SELECT commit_ FROM _cairn_txns WHERE txn = ?1",
            vec![Value::Integer(txn as i64)],
        ))
        .await?;
    match rows.rows.first().and_then(|r| r.first()) {
        Some(Value::Integer(c)) => Ok(*c != 0),
        other => Err(Error::Corrupt(format!(
            "{}: decision on {txn} not recorded after proposing it: {other:?}",
            cx.replica.shard
        ))),
    }
}

/// The decision on `txn` coordinated by `coordinator` (this shard or another), recording
/// abort if none is recorded. Retries while the coordinator is unreachable (a prepared part
/// must not be resolved by guessing), giving up after `limit`.
async fn decision_within(
    cx: &Context,
    txn: u64,
    coordinator: ShardId,
    limit: Option<std::time::Duration>,
) -> Result<bool> {
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    if coordinator == cx.replica.shard {
        return record_decision(cx, txn, false).await;
    }
    let Some(decider) = cx.decider.get().cloned() else {
        return Err(Error::Unavailable(
            "no way to reach the coordinator shard yet".into(),
        ));
    };
    let mut wait = std::time::Duration::from_millis(50);
    loop {
        match decider.decide(coordinator, txn).await {
            Ok(c) => return Ok(c),
            Err(e) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                return Err(Error::Unavailable(format!(
                    "{}: a prepared transaction waits for its decision from {coordinator}, which does not answer: {e}",
                    cx.replica.shard
                )));
            }
            Err(e) => {
                tracing::warn!(shard = %cx.replica.shard, txn, %coordinator, error = %e, "waiting for a transaction's decision");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

/// Drop the staged parts of commits a previous leader did not finish.
async fn drop_staged(cx: &Context) -> Result<()> {
    let rows = cx
        .replica
        .read(internal_read(
            "SELECT 1 FROM _cairn_staged WHERE id NOT IN (SELECT txn FROM _cairn_prepared) LIMIT 1",
            Vec::new(),
        ))
        .await?;
    if !rows.rows.is_empty() {
        tracing::info!(shard = %cx.replica.shard, "dropping parts of a large commit a previous leader left");
        propose(&cx.raft, vec![Op::DropStaged]).await?;
    }
    Ok(())
}

/// Resolve every prepared part in the replica (a new leader inherits them).
async fn resolve_prepared(cx: &Context) -> Result<()> {
    let rows = cx
        .replica
        .read(internal_read(
            "SELECT txn, coordinator FROM _cairn_prepared ORDER BY txn",
            Vec::new(),
        ))
        .await?;
    if !rows.rows.is_empty() {
        // While it waits for other shards' decisions this writer counts as the oldest
        // transaction: one holding a shard that such a decision needs must not wait for it.
        cx.holder.send_replace(RECOVERY);
    }
    for row in rows.rows {
        let (Some(Value::Integer(txn)), Some(Value::Integer(coordinator))) =
            (row.first(), row.get(1))
        else {
            continue;
        };
        let (txn, coordinator) = (*txn as u64, ShardId(*coordinator as u64));
        // Bounded: the writer serves nothing until its prepared parts are resolved, and
        // a caller should hear why (57P03, naming the coordinator) rather than hang; the
        // next request tries again.
        let commit =
            decision_within(cx, txn, coordinator, Some(limits::RECOVERY_DECISION_WAIT)).await?;
        tracing::info!(shard = %cx.replica.shard, txn, commit, "resolving a prepared transaction a previous leader left");
        propose(&cx.raft, vec![Op::Resolve { txn, commit }]).await?;
    }
    Ok(())
}

async fn run(cx: Context, mut rx: mpsc::Receiver<Request>) {
    let mut ready_term = Readiness::default();
    let mut next: Option<Request> = None;
    let mut metrics = cx.raft.metrics();
    loop {
        let first = match next.take() {
            Some(r) => r,
            None => tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Leading a new term: get ready now, not at the first write, so the
                    // prepared parts a previous leader left are resolved promptly (readers
                    // outside transactions would otherwise see them unapplied for long).
                    let (leader, term) = {
                        let m = metrics.borrow_and_update();
                        (m.current_leader, m.current_term)
                    };
                    if leader == Some(cx.node.0) && ready_term.term != Some(term) {
                        if let Err(e) = ensure_ready(&cx, &mut ready_term).await {
                            tracing::debug!(shard = %cx.replica.shard, error = %e, "not ready yet as leader");
                        }
                    }
                    continue;
                }
            },
        };
        match first {
            Request::Exec { stmt, claim, reply } => {
                let mut stmts = Vec::new();
                let mut replies = Vec::new();
                // A caller that gave up waiting (or went away) must not have its statement
                // run later; one whose claim the writer takes waits for its outcome.
                let admit = |stmts: &mut Vec<Statement>,
                             replies: &mut Vec<oneshot::Sender<Result<Rows>>>,
                             stmt,
                             claim: Claim,
                             reply: oneshot::Sender<Result<Rows>>| {
                    if !reply.is_closed() && claim.take() {
                        stmts.push(stmt);
                        replies.push(reply);
                    }
                };
                admit(&mut stmts, &mut replies, stmt, claim, reply);
                while stmts.len() < limits::WRITE_BATCH_STATEMENTS_MAX {
                    match rx.try_recv() {
                        Ok(Request::Exec { stmt, claim, reply }) => {
                            admit(&mut stmts, &mut replies, stmt, claim, reply)
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let mut replies = replies;
                if stmts.is_empty() {
                    continue;
                }
                let results = match ensure_ready(&cx, &mut ready_term).await {
                    Err(e) => vec![Err(e); replies.len()],
                    Ok(()) => match cx.replica.exec_batch(stmts).await {
                        Err(e) => vec![Err(e); replies.len()],
                        Ok((results, ops)) if crate::planted::active("ack-before-commit") => {
                            // Deliberately wrong (see `planted`): answer, then replicate.
                            for (reply, result) in replies.drain(..).zip(results) {
                                let _ = reply.send(result);
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            if !ops.is_empty() {
                                let _ = propose(&cx.raft, ops).await;
                            }
                            Vec::new()
                        }
                        Ok((results, ops)) => {
                            let outcome = if ops.is_empty() {
                                Ok(())
                            } else {
                                propose_ops(&cx.raft, ops).await
                            };
                            results
                                .into_iter()
                                .map(|r| match (&outcome, r) {
                                    (Ok(()), r) => r,
                                    (Err(e), Ok(_)) => Err(e.clone()),
                                    (Err(_), Err(e)) => Err(e),
                                })
                                .collect()
                        }
                    },
                };
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Request::Decide { txn, commit, reply } => {
                if reply.is_closed() {
                    continue;
                }
                let result = match ensure_ready(&cx, &mut ready_term).await {
                    Err(e) => Err(e),
                    Ok(()) => record_decision(&cx, txn, commit).await,
                };
                let _ = reply.send(result);
            }
            Request::Resolve { txn, commit, reply } => {
                if reply.is_closed() {
                    continue;
                }
                // Always through the log, never "not here" from this replica: a leader
                // that was deposed without knowing it would answer from a state that lacks
                // the part (prepared under the new leader), and the part would stay
                // unresolved. A committed Resolve follows the Prepare it resolves (the
                // session asks only after its Prepare committed) and is a no-op if the part
                // was resolved already.
                let result = match ensure_ready(&cx, &mut ready_term).await {
                    Err(e) => Err(e),
                    Ok(()) => propose(&cx.raft, vec![Op::Resolve { txn, commit }]).await,
                };
                let _ = reply.send(result);
            }
            Request::Check { id, reply } => {
                if reply.is_closed() {
                    continue;
                }
                let result = match ensure_ready(&cx, &mut ready_term).await {
                    Err(e) => Err(e),
                    Ok(()) => propose(&cx.raft, vec![Op::Check { id }]).await,
                };
                let _ = reply.send(result);
            }
            Request::Forget { txns, reply } => {
                if reply.is_closed() {
                    continue;
                }
                let result = match ensure_ready(&cx, &mut ready_term).await {
                    Err(e) => Err(e),
                    Ok(()) => propose(&cx.raft, vec![Op::Forget { txns }]).await,
                };
                let _ = reply.send(result);
            }
            Request::Begin { priority, reply } => {
                if reply.is_closed() {
                    continue;
                }
                if let Err(e) = ensure_ready(&cx, &mut ready_term).await {
                    let _ = reply.send(Err(e));
                    continue;
                }
                cx.holder.send_replace(priority);
                let left_prepared =
                    run_transaction(&cx, reply, ready_term.term.unwrap_or_default()).await;
                cx.holder.send_replace(0);
                if left_prepared {
                    // Its decision could not be learnt in time: the next request resolves
                    // the replica's prepared parts first (bounded, answering 57P03 meanwhile).
                    ready_term.term = None;
                }
            }
        }
    }
}

/// Where a transaction holding the writer stands.
enum Stage {
    /// Statements run in the speculative SQLite transaction.
    Open,
    /// Statements ended; their ops are kept (no SQLite transaction is open).
    Collected(Vec<Op>),
    /// This shard's part is prepared in the Raft log as part of `txn`.
    Prepared { txn: u64, coordinator: ShardId },
}

/// The transaction's view is current only while this node leads in the term it began in:
/// once another leader has committed entries, what it read and computed may be stale. A
/// write's proposal in that term commits only if nothing else did; `check_term` catches a
/// node that lost and regained leadership since (a new term) before it proposes.
fn check_term(cx: &Context, began: u64) -> Result<()> {
    let now = cx.raft.metrics().borrow().current_term;
    if now == began {
        Ok(())
    } else {
        Err(Error::Retry(format!(
            "{}: the shard's leader changed during the transaction (term {began} to {now}); retry it",
            cx.replica.shard
        )))
    }
}

/// A part that only read proposes nothing, so nothing else would notice a deposed leader
/// that served it from a stale state: confirm with a quorum that this node still leads in
/// the term the transaction began in (after the reads, so they were current then).
async fn confirm_reads(cx: &Context, began: u64) -> Result<()> {
    super::group::confirm_leader(&cx.raft).await?;
    check_term(cx, began)
}

/// Returns true if the transaction ended leaving its part prepared and unresolved here.
async fn run_transaction(
    cx: &Context,
    reply: oneshot::Sender<Result<Transaction>>,
    began: u64,
) -> bool {
    let replica = &cx.replica;
    if let Err(e) = replica.begin().await {
        let _ = reply.send(Err(e));
        return false;
    }
    let (tx, mut cmds) = mpsc::channel(1);
    if reply.send(Ok(Transaction { tx })).is_err() {
        let _ = replica.rollback().await;
        return false;
    }
    let mut stage = Stage::Open;
    loop {
        // A prepared part waits for its session only briefly: the session is past its
        // last statement and has nothing left to do but decide.
        let limit = match stage {
            Stage::Open | Stage::Collected(_) => limits::IDLE_IN_TRANSACTION_TIMEOUT,
            Stage::Prepared { .. } => limits::PREPARED_TIMEOUT,
        };
        let cmd = match tokio::time::timeout(limit, cmds.recv()).await {
            Ok(Some(cmd)) => cmd,
            gone => {
                if gone.is_err() {
                    tracing::warn!(shard = %replica.shard, "ending a transaction idle for {limit:?}");
                }
                return !abandon(cx, stage).await;
            }
        };
        match (cmd, stage) {
            (TxnCmd::Exec(stmt, r), Stage::Open) => {
                let _ = r.send(replica.exec(stmt).await);
                stage = Stage::Open;
            }
            (TxnCmd::Commit(r), Stage::Open) => {
                let result = match replica.finish().await {
                    Ok(ops) if ops.is_empty() => confirm_reads(cx, began).await,
                    Ok(ops) => match check_term(cx, began) {
                        Ok(()) => propose_ops(&cx.raft, ops).await,
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                let _ = r.send(result);
                return false;
            }
            (TxnCmd::Commit(r), Stage::Collected(ops)) => {
                let result = if ops.is_empty() {
                    Ok(())
                } else {
                    match check_term(cx, began) {
                        Ok(()) => propose_ops(&cx.raft, ops).await,
                        Err(e) => Err(e),
                    }
                };
                let _ = r.send(result);
                return false;
            }
            (TxnCmd::Collect(r), Stage::Open) => match replica.finish().await {
                Ok(ops) if ops.is_empty() => {
                    // A part that only read: this is where its reads are confirmed.
                    let confirmed = confirm_reads(cx, began).await;
                    let ok = confirmed.is_ok();
                    let _ = r.send(confirmed.map(|()| false));
                    if !ok {
                        return false;
                    }
                    stage = Stage::Collected(ops);
                }
                Ok(ops) => {
                    let _ = r.send(Ok(true));
                    stage = Stage::Collected(ops);
                }
                Err(e) => {
                    let _ = r.send(Err(e));
                    return false;
                }
            },
            (
                TxnCmd::Prepare {
                    txn,
                    coordinator,
                    reply,
                },
                Stage::Collected(ops),
            ) => {
                // A large part is staged under the transaction's id; the prepared part
                // then holds only the op that applies the staged parts.
                if let Err(e) = check_term(cx, began) {
                    let _ = reply.send(Err(e));
                    return false;
                }
                // The base stays at the entry's top level, where replicas check it.
                let (mut base, ops) = super::take_base(ops);
                let prepared = match stage_large(&cx.raft, ops, txn).await {
                    Ok(Some(ops)) => {
                        base.push(Op::Prepare {
                            txn,
                            coordinator,
                            ops,
                        });
                        propose(&cx.raft, base).await
                    }
                    Ok(None) => {
                        let ops = vec![Op::Staged { id: txn }];
                        base.push(Op::Prepare {
                            txn,
                            coordinator,
                            ops,
                        });
                        staged_or_drop(&cx.raft, base).await
                    }
                    Err(e) => Err(e),
                };
                match prepared {
                    Ok(()) => {
                        let _ = reply.send(Ok(()));
                        stage = Stage::Prepared { txn, coordinator };
                    }
                    Err(e) => {
                        // Not prepared (the entry was never committed: NotLeader), or
                        // unknown: a later leader resolves whatever is in its replica.
                        let _ = reply.send(Err(e));
                        return false;
                    }
                }
            }
            (
                TxnCmd::Decide { txn, commit, reply },
                Stage::Prepared {
                    txn: mine,
                    coordinator,
                },
            ) if txn == mine => {
                let _ = reply.send(record_decision(cx, txn, commit).await);
                stage = Stage::Prepared { txn, coordinator };
            }
            (TxnCmd::Resolve { commit, reply }, Stage::Prepared { txn, .. }) => {
                let _ = reply.send(propose(&cx.raft, vec![Op::Resolve { txn, commit }]).await);
                return false;
            }
            (TxnCmd::Rollback(r), stage) => {
                let resolved = abandon(cx, stage).await;
                let _ = r.send(());
                return !resolved;
            }
            (cmd, kept) => {
                // A command out of order is the caller's bug; refuse it, keep the state.
                let what = match &cmd {
                    TxnCmd::Exec(..) => "a statement",
                    TxnCmd::Commit(_) => "commit",
                    TxnCmd::Collect(_) => "collect",
                    TxnCmd::Prepare { .. } => "prepare",
                    TxnCmd::Decide { .. } => "decide",
                    TxnCmd::Resolve { .. } => "resolve",
                    TxnCmd::Rollback(_) => "rollback",
                };
                let e = Error::internal(format!("{what} out of order in a transaction"));
                match cmd {
                    TxnCmd::Exec(_, r) => {
                        let _ = r.send(Err(e));
                    }
                    TxnCmd::Commit(r) => {
                        let _ = r.send(Err(e));
                    }
                    TxnCmd::Collect(r) => {
                        let _ = r.send(Err(e));
                    }
                    TxnCmd::Prepare { reply, .. } => {
                        let _ = reply.send(Err(e));
                    }
                    TxnCmd::Decide { reply, .. } => {
                        let _ = reply.send(Err(e));
                    }
                    TxnCmd::Resolve { reply, .. } => {
                        let _ = reply.send(Err(e));
                    }
                    TxnCmd::Rollback(r) => {
                        let _ = r.send(());
                    }
                }
                stage = kept;
            }
        }
    }
}

/// The session went away (or rolled back): undo what is undoable; a prepared part is
/// resolved by the decision in force. False if that decision could not be learnt within
/// `RECOVERY_DECISION_WAIT` (its coordinator shard unreachable): the part stays prepared,
/// and the writer's next request resolves it first (see `ensure_ready`).
async fn abandon(cx: &Context, stage: Stage) -> bool {
    let Stage::Prepared { txn, coordinator } = stage else {
        if let Stage::Open = stage {
            let _ = cx.replica.rollback().await;
        }
        return true;
    };
    // Waiting for the decision, the part counts as the oldest (see `RECOVERY`).
    cx.holder.send_replace(RECOVERY);
    let deadline = tokio::time::Instant::now() + limits::RECOVERY_DECISION_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let outcome = match decision_within(cx, txn, coordinator, Some(left)).await {
            Ok(commit) => propose(&cx.raft, vec![Op::Resolve { txn, commit }])
                .await
                .map(|_| commit),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(commit) => {
                tracing::info!(shard = %cx.replica.shard, txn, commit, "resolved a transaction its session left prepared");
                return true;
            }
            // A new leader resolves it (it finds the prepared part in its replica).
            Err(Error::NotLeader { .. }) => return true,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(shard = %cx.replica.shard, txn, %coordinator, error = %e, "a prepared transaction's decision is not known yet; resolving it at the next request");
                return false;
            }
            Err(e) => {
                tracing::warn!(shard = %cx.replica.shard, txn, error = %e, "resolving a prepared transaction; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}
