//! Routing by shard: run an operation on the shard's leader, here or on another node, so a
//! client connected to any node never sees a redirect. The target is the cached leader, else
//! the leader this node's replica knows, else each replica in turn; a `NotLeader` answer
//! carrying a hint corrects the cache and the call goes again, until `limits::LEADER_WAIT`.
//!
//! Retries: only `NotLeader` is retried. It means nothing will ever apply: the writer returns
//! it before executing; openraft answers a proposal with `ForwardToLeader` only if the node
//! was not leader when it arrived or if its entry was truncated from the log (checked in
//! openraft 0.9's `RaftCore`, `DeleteConflictLog`); a node without a replica of the shard
//! answers it before doing anything; and a call that could not even be dialled never left
//! this node.

use super::Cluster;
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::limits;
use crate::replication::group::{wait_for_leader, ReadConsistency, ShardGroup};
use crate::replication::transport::{CallError, Request, Response};
use crate::replication::writer::Transaction;
use crate::storage::replica::{Rows, Statement};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A transaction's hold on one shard's writer: here, or on the shard's leader elsewhere.
/// Dropping it rolls the transaction back (a remote one with a message to the leader).
pub enum Lease {
    Local(Transaction),
    Remote(RemoteTxn),
}

pub struct RemoteTxn {
    addr: String,
    txn: u64,
    client: Arc<crate::replication::transport::Client>,
    ended: bool,
    /// Tells the leader every `REMOTE_TXN_KEEPALIVE` that this session is still here.
    keepalive: tokio::task::JoinHandle<()>,
}

impl RemoteTxn {
    fn new(
        addr: String,
        txn: u64,
        client: Arc<crate::replication::transport::Client>,
    ) -> RemoteTxn {
        let (a, c) = (addr.clone(), client.clone());
        let keepalive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(limits::REMOTE_TXN_KEEPALIVE).await;
                let answer = c
                    .call(
                        &a,
                        Request::TxnKeepAlive { txn },
                        limits::REMOTE_TXN_KEEPALIVE,
                    )
                    .await;
                if let Ok(Response::Done(Err(_))) = answer {
                    return; // the leader ended it; the next statement will say so
                }
            }
        });
        RemoteTxn {
            addr,
            txn,
            client,
            ended: false,
            keepalive,
        }
    }
}

impl Drop for RemoteTxn {
    fn drop(&mut self) {
        self.keepalive.abort();
        if self.ended {
            return;
        }
        let (client, addr, txn) = (self.client.clone(), self.addr.clone(), self.txn);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = client
                    .call(&addr, Request::Rollback { txn }, limits::FORWARD_TIMEOUT)
                    .await;
            });
        }
    }
}

fn unexpected() -> Error {
    Error::internal("unexpected answer from the leader")
}

impl Cluster {
    /// How to reach `node`: the catalog, else any local group's membership.
    pub fn addr_of(&self, node: NodeId) -> Option<String> {
        if let Some(n) = self.catalog().node(node) {
            return Some(n.cluster_addr.clone());
        }
        self.groups()
            .iter()
            .find_map(|g| g.node_info(node))
            .map(|n| n.cluster_addr)
    }

    /// The nodes that should hold `shard`.
    pub(super) fn replicas_of(&self, shard: ShardId) -> Vec<NodeId> {
        if shard.is_meta() {
            return self.meta_roles().0.into_iter().collect();
        }
        self.catalog()
            .shard(shard)
            .map(|s| s.replicas.clone())
            .unwrap_or_default()
    }

    /// Fail at once, naming the replicas that are gone, when gossip says most of `shard`'s
    /// replicas are dead: no leader can be elected, and waiting `LEADER_WAIT` for one only
    /// delays the answer.
    fn refuse_without_quorum(&self, shard: ShardId) -> Result<()> {
        let replicas = self.replicas_of(shard);
        let dead: Vec<String> = replicas
            .iter()
            .filter(|n| self.liveness.of(**n).0 == super::liveness::Live::Dead)
            .map(|n| n.to_string())
            .collect();
        if replicas.is_empty() || (replicas.len() - dead.len()) * 2 > replicas.len() {
            return Ok(());
        }
        Err(Error::sql(
            crate::error::sqlstate::CANNOT_CONNECT_NOW,
            format!(
                "shard {shard} has no quorum: {} of its {} replicas are down ({}); it takes \
                 writes again when they return (reads with cairn.read_consistency = 'any' are \
                 served by the replicas left)",
                dead.len(),
                replicas.len(),
                dead.join(", ")
            ),
        ))
    }

    fn cached_leader(&self, shard: ShardId) -> Option<NodeId> {
        self.leaders
            .lock()
            .expect("leader cache")
            .get(&shard)
            .copied()
    }

    fn note_leader(&self, shard: ShardId, leader: Option<NodeId>) {
        let mut cache = self.leaders.lock().expect("leader cache");
        match leader {
            Some(l) => cache.insert(shard, l),
            None => cache.remove(&shard),
        };
    }

    /// The leader of `shard` as far as this node knows, without asking anyone.
    pub fn known_leader(&self, shard: ShardId) -> Option<NodeId> {
        // A replica here knows from Raft itself (a paused or cut-off leader gives no
        // NotLeader hint to correct the cache with).
        self.group(shard)
            .and_then(|g| g.leader().0)
            .or_else(|| self.cached_leader(shard))
    }

    pub(super) async fn call(&self, addr: &str, request: Request) -> Result<Response> {
        self.client
            .call(addr, request, limits::FORWARD_TIMEOUT)
            .await
            .map_err(|e| match e {
                // The leader we knew is gone and the call never left: look for the new one.
                CallError::NotSent(_) => Error::NotLeader { leader: None },
                other => Error::Unavailable(format!("forwarding to the leader: {other}")),
            })
    }

    /// [`Cluster::call`] for a request that takes effect (an autocommit write, a commit):
    /// once it has left, a lost connection or a missing answer leaves its outcome unknown.
    async fn call_write(&self, addr: &str, request: Request) -> Result<Response> {
        self.client
            .call(addr, request, limits::FORWARD_TIMEOUT)
            .await
            .map_err(|e| match e {
                CallError::NotSent(_) => Error::NotLeader { leader: None },
                other => crate::error::ambiguous(format!("forwarded to the leader: {other}")),
            })
    }

    /// Run `local` if this node leads `shard`, else `remote` against the leader's address.
    pub async fn route<T, L, LF, R, RF>(&self, shard: ShardId, local: L, remote: R) -> Result<T>
    where
        L: Fn(Arc<ShardGroup>) -> LF,
        LF: Future<Output = Result<T>>,
        R: Fn(String) -> RF,
        RF: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + limits::LEADER_WAIT;
        let mut rotation = 0usize;
        loop {
            let here = self.group(shard);
            // A leader whose followers died keeps its place until its lease runs out, and
            // would hold the request until the forward timeout: gossip decides first.
            self.refuse_without_quorum(shard)?;
            let mut target = self.known_leader(shard);
            if target.is_none() {
                if let Some(g) = &here {
                    let left = deadline.saturating_duration_since(Instant::now());
                    target = wait_for_leader(&g.raft, left.min(Duration::from_secs(1))).await;
                }
            }
            if target.is_none() {
                let replicas = self.replicas_of(shard);
                if !replicas.is_empty() {
                    target = Some(replicas[rotation % replicas.len()]);
                    rotation += 1;
                }
            }
            let result = match target {
                Some(t) if t == self.node => match &here {
                    Some(g) => local(g.clone()).await,
                    None => Err(Error::NotLeader { leader: None }),
                },
                Some(t) => match self.addr_of(t) {
                    Some(addr) => remote(addr).await,
                    None => Err(Error::NotLeader { leader: None }),
                },
                None => Err(Error::NotLeader { leader: None }),
            };
            match result {
                Err(Error::NotLeader { leader }) if Instant::now() < deadline => match leader {
                    Some(l) if Some(l) != target => self.note_leader(shard, Some(l)),
                    _ => {
                        self.note_leader(shard, None);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                Err(Error::NotLeader { .. }) => {
                    return Err(Error::Unavailable(format!(
                        "shard {shard} has no leader that can be reached"
                    )))
                }
                Ok(v) => {
                    if target.is_some() && self.cached_leader(shard) != target {
                        self.note_leader(shard, target);
                    }
                    return Ok(v);
                }
                Err(e @ (Error::Unavailable(_) | Error::Ambiguous(_))) => {
                    // The node we took for the leader did not answer: find it anew next time.
                    if self.cached_leader(shard) == target {
                        self.note_leader(shard, None);
                    }
                    return Err(e);
                }
                other => return other,
            }
        }
    }

    /// Run a statement on the leader at `addr` (inside forwarded transaction `txn`, if any).
    /// The statement's cancel token reaches the leader as a `Cancel` call naming its key.
    async fn remote_exec(
        &self,
        addr: &str,
        shard: ShardId,
        txn: Option<u64>,
        stmt: Statement,
        read: bool,
    ) -> Result<Rows> {
        let token = stmt.cancel.clone();
        token.check()?;
        let key = rand::random::<u64>();
        let request = Request::Exec {
            shard,
            txn,
            stmt: stmt.into(),
            read,
            cancel: Some(key),
        };
        // No effect outside its transaction: a lost answer fails only the statement (and
        // the transaction with it). Else, once sent, the outcome is unknown.
        let effect = !read && txn.is_none();
        self.call_cancellable(addr, request, key, &token, effect)
            .await
    }

    /// Send `request` (a statement sent with cancel key `key`), passing a cancel of `token`
    /// on to `addr` while it runs; its rows.
    async fn call_cancellable(
        &self,
        addr: &str,
        request: Request,
        key: u64,
        token: &crate::storage::cancel::Cancel,
        effect: bool,
    ) -> Result<Rows> {
        let call = async {
            if effect {
                self.call_write(addr, request).await
            } else {
                self.call(addr, request).await
            }
        };
        tokio::pin!(call);
        let mut cancel_sent = false;
        let answer = loop {
            tokio::select! {
                answer = &mut call => break answer?,
                _ = token.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    let (client, addr) = (self.client.clone(), addr.to_string());
                    tokio::spawn(async move {
                        let _ = client
                            .call(&addr, Request::Cancel { key }, limits::REMOTE_TXN_SILENCE)
                            .await;
                    });
                }
            }
        };
        match answer {
            Response::Rows(r) => r.map(Into::into).map_err(Into::into),
            _ => Err(unexpected()),
        }
    }

    /// An `any` or `bounded` read on a shard this node holds no replica of: served by
    /// another node's replica as it stands (for `bounded`, one that heard from its leader
    /// within the bound), trying the replicas gossip sees alive first. None if no replica
    /// answered (the caller then asks the leader).
    async fn read_elsewhere(
        &self,
        shard: ShardId,
        stmt: &Statement,
        consistency: ReadConsistency,
    ) -> Result<Option<Rows>> {
        let fresh_ms = match consistency {
            ReadConsistency::Any => None,
            ReadConsistency::Bounded(bound) => Some(bound.as_millis() as u64),
            ReadConsistency::Linearizable => return Ok(None),
        };
        let mut replicas: Vec<NodeId> = self
            .replicas_of(shard)
            .into_iter()
            .filter(|n| *n != self.node)
            .collect();
        // Alive first, then suspect; the leader last (it has the most to do).
        let leader = self.known_leader(shard);
        replicas.sort_by_key(|n| (self.liveness.of(*n).0 as u8, Some(*n) == leader));
        for node in replicas {
            if self.liveness.of(node).0 == super::liveness::Live::Dead {
                continue;
            }
            let Some(addr) = self.addr_of(node) else {
                continue;
            };
            let token = stmt.cancel.clone();
            token.check()?;
            let key = rand::random::<u64>();
            let request = Request::ReadReplica {
                shard,
                stmt: stmt.clone().into(),
                fresh_ms,
                cancel: Some(key),
            };
            match self
                .call_cancellable(&addr, request, key, &token, false)
                .await
            {
                Ok(rows) => return Ok(Some(rows)),
                // The statement itself failed: another replica would fail it too.
                Err(e @ Error::Sql { .. }) => return Err(e),
                Err(e) => {
                    tracing::debug!(%shard, %node, error = %e, "replica read elsewhere failed")
                }
            }
        }
        Ok(None)
    }

    /// An autocommit write on `shard`, answered once committed and applied.
    pub async fn write(&self, shard: ShardId, stmt: Statement) -> Result<Rows> {
        self.route(
            shard,
            |g| {
                let stmt = stmt.clone();
                async move { g.write(stmt).await }
            },
            |addr| {
                let stmt = stmt.clone();
                async move { self.remote_exec(&addr, shard, None, stmt, false).await }
            },
        )
        .await
    }

    /// A read on `shard` at `consistency`: `any` and fresh-enough `bounded` reads are served
    /// by the local replica when there is one; everything else by the leader.
    pub async fn read(
        &self,
        shard: ShardId,
        stmt: Statement,
        consistency: ReadConsistency,
    ) -> Result<Rows> {
        // A replica that has applied nothing yet (just placed here, not caught up) has no
        // tables at all: it serves no reads.
        let here = self.group(shard).filter(|g| {
            g.raft
                .metrics()
                .borrow()
                .last_applied
                .is_some_and(|l| l.index > 0)
        });
        if let Some(g) = here {
            if crate::planted::active("stale-reads") {
                return g.read_local(stmt).await;
            }
            match consistency {
                ReadConsistency::Any => return self.read_here(&g, stmt, consistency).await,
                ReadConsistency::Bounded(bound) if g.fresh_within(bound) => {
                    return self.read_here(&g, stmt, consistency).await;
                }
                _ => {}
            }
        } else if let Some(rows) = self.read_elsewhere(shard, &stmt, consistency).await? {
            return Ok(rows);
        }
        self.route(
            shard,
            |g| {
                let stmt = stmt.clone();
                async move {
                    self.read_here(&g, stmt, ReadConsistency::Linearizable)
                        .await
                }
            },
            |addr| {
                let stmt = stmt.clone();
                async move { self.remote_exec(&addr, shard, None, stmt, true).await }
            },
        )
        .await
    }

    /// Read on this node's replica `g`: linearizable (this node must lead `g`'s shard), or
    /// as the local replica stands. Reference-table replicas the statement names are
    /// attached; for a linearizable read each is first caught up with its own leader.
    pub async fn read_here(
        &self,
        g: &ShardGroup,
        stmt: Statement,
        consistency: ReadConsistency,
    ) -> Result<Rows> {
        if stmt.refs.is_empty() {
            return match consistency {
                ReadConsistency::Linearizable => g.read(stmt, consistency).await,
                _ => g.read_local(stmt).await,
            };
        }
        let mut attach = Vec::with_capacity(stmt.refs.len());
        for r in &stmt.refs {
            let local = self.group(*r).ok_or_else(|| {
                Error::Unavailable(format!(
                    "{r} (a reference table) has no replica on this node yet"
                ))
            })?;
            if consistency == ReadConsistency::Linearizable {
                self.sync(*r).await?;
            }
            attach.push((format!("cairn_ref_{}", r.0), local.replica.path.clone()));
        }
        if consistency == ReadConsistency::Linearizable {
            g.read_index().await?;
        }
        g.read_attached(stmt, attach).await
    }

    /// Take `shard`'s writer for an interactive transaction.
    pub async fn begin(&self, shard: ShardId) -> Result<Lease> {
        self.begin_in(shard, None).await
    }

    /// Take `shard`'s writer for a transaction that may already hold others (`priority`:
    /// its start time, for wait-die; see `Writer::begin`).
    pub async fn begin_in(
        &self,
        shard: ShardId,
        priority: Option<crate::replication::writer::Priority>,
    ) -> Result<Lease> {
        self.route(
            shard,
            |g| async move { g.begin(priority).await.map(Lease::Local) },
            |addr| async move {
                match self.call(&addr, Request::Begin { shard, priority }).await? {
                    Response::Txn(r) => r
                        .map(|txn| Lease::Remote(RemoteTxn::new(addr, txn, self.client.clone())))
                        .map_err(Into::into),
                    _ => Err(unexpected()),
                }
            },
        )
        .await
    }

    pub async fn exec(&self, shard: ShardId, lease: &Lease, stmt: Statement) -> Result<Rows> {
        match lease {
            Lease::Local(t) => t.exec(stmt).await,
            Lease::Remote(r) => {
                self.remote_exec(&r.addr, shard, Some(r.txn), stmt, false)
                    .await
            }
        }
    }

    pub async fn commit(&self, lease: Lease) -> Result<()> {
        match lease {
            Lease::Local(t) => t.commit().await,
            Lease::Remote(mut r) => {
                r.ended = true;
                match self
                    .call_write(&r.addr, Request::Commit { txn: r.txn })
                    .await?
                {
                    Response::Done(r) => r.map_err(Into::into),
                    _ => Err(unexpected()),
                }
            }
        }
    }

    pub async fn rollback(&self, lease: Lease) {
        match lease {
            Lease::Local(t) => t.rollback().await,
            Lease::Remote(mut r) => {
                r.ended = true;
                let _ = self.call(&r.addr, Request::Rollback { txn: r.txn }).await;
            }
        }
    }

    /// Two-phase commit, on a transaction's lease: end its statements and keep their
    /// effects; whether there are any.
    pub async fn collect(&self, lease: &Lease) -> Result<bool> {
        match lease {
            Lease::Local(t) => t.collect().await,
            Lease::Remote(r) => match self
                .call(&r.addr, Request::TxnCollect { txn: r.txn })
                .await?
            {
                Response::Flag(f) => f.map_err(Into::into),
                _ => Err(unexpected()),
            },
        }
    }

    /// Prepare the collected effects as part `id`, coordinated by `coordinator`.
    pub async fn prepare(&self, lease: &Lease, id: u64, coordinator: ShardId) -> Result<()> {
        match lease {
            Lease::Local(t) => t.prepare(id, coordinator).await,
            Lease::Remote(r) => {
                let request = Request::TxnPrepare {
                    txn: r.txn,
                    id,
                    coordinator,
                };
                match self.call(&r.addr, request).await? {
                    Response::Done(d) => d.map_err(Into::into),
                    _ => Err(unexpected()),
                }
            }
        }
    }

    /// On the coordinator's lease: record the decision; the decision in force.
    pub async fn decide_on(&self, lease: &Lease, id: u64, commit: bool) -> Result<bool> {
        match lease {
            Lease::Local(t) => t.decide(id, commit).await,
            Lease::Remote(r) => {
                let request = Request::TxnDecide {
                    txn: r.txn,
                    id,
                    commit,
                };
                match self.call(&r.addr, request).await? {
                    Response::Flag(f) => f.map_err(Into::into),
                    _ => Err(unexpected()),
                }
            }
        }
    }

    /// Apply or drop a prepared part through its lease, releasing it.
    pub async fn resolve(&self, lease: Lease, commit: bool) -> Result<()> {
        match lease {
            Lease::Local(t) => t.resolve(commit).await,
            Lease::Remote(mut r) => {
                r.ended = true;
                match self
                    .call(&r.addr, Request::TxnResolve { txn: r.txn, commit })
                    .await?
                {
                    Response::Done(d) => d.map_err(Into::into),
                    _ => Err(unexpected()),
                }
            }
        }
    }

    /// On `shard`'s leader, wherever it is now: the decision on `id`, recording `commit`
    /// unless one is recorded.
    pub async fn decide(&self, shard: ShardId, id: u64, commit: bool) -> Result<bool> {
        self.route(
            shard,
            |g| async move { g.writer.decide(id, commit).await },
            |addr| async move {
                match self
                    .call(&addr, Request::Decide { shard, id, commit })
                    .await?
                {
                    Response::Flag(f) => f.map_err(Into::into),
                    _ => Err(unexpected()),
                }
            },
        )
        .await
    }

    /// On `shard`'s leader: resolve its prepared part of `id` if still there.
    pub async fn resolve_on(&self, shard: ShardId, id: u64, commit: bool) -> Result<()> {
        self.route(
            shard,
            |g| async move { g.writer.resolve(id, commit).await },
            |addr| async move {
                match self
                    .call(&addr, Request::Resolve { shard, id, commit })
                    .await?
                {
                    Response::Done(d) => d.map_err(Into::into),
                    _ => Err(unexpected()),
                }
            },
        )
        .await
    }

    /// Every part of two-phase commit `id` is resolved through its shard's log, so no
    /// participant will ask `coordinator` for the decision again: queue its record for
    /// deletion. Queued records are deleted together once there are `FORGET_BATCH` of them,
    /// or `FORGET_AFTER` after the first. A record whose deletion fails (or that this node
    /// forgets by stopping) stays; it only takes space.
    pub fn decision_resolved(self: &Arc<Self>, coordinator: ShardId, id: u64) {
        let schedule = {
            let mut r = self.resolved.lock().expect("resolved lock poisoned");
            r.pending.entry(coordinator).or_default().push(id);
            r.count += 1;
            if r.count >= limits::FORGET_BATCH {
                drop(r);
                self.forget_resolved();
                return;
            }
            !std::mem::replace(&mut r.scheduled, true)
        };
        if schedule {
            let cluster = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(limits::FORGET_AFTER).await;
                if let Some(cluster) = cluster.upgrade() {
                    cluster.forget_resolved();
                }
            });
        }
    }

    /// Delete the queued decision records (see `decision_resolved`).
    fn forget_resolved(self: &Arc<Self>) {
        let batch = {
            let mut r = self.resolved.lock().expect("resolved lock poisoned");
            r.count = 0;
            r.scheduled = false;
            std::mem::take(&mut r.pending)
        };
        for (shard, ids) in batch {
            let cluster = self.clone();
            tokio::spawn(async move {
                let n = ids.len();
                if let Err(e) = cluster.forget_on(shard, ids).await {
                    tracing::debug!(%shard, records = n, error = %e, "decision records kept");
                }
            });
        }
    }

    /// Whether one transaction holds `shard`'s writer throughout the next `span` (asked of
    /// its leader; see `Writer::held_throughout`).
    pub async fn writer_held_throughout(&self, shard: ShardId, span: Duration) -> Result<bool> {
        let millis = span.as_millis() as u64;
        self.route(
            shard,
            |g| async move { Ok(g.writer.held_throughout(span).await) },
            |addr| async move {
                match self
                    .call(&addr, Request::WriterHeld { shard, millis })
                    .await?
                {
                    Response::Flag(f) => f.map_err(Into::into),
                    _ => Err(unexpected()),
                }
            },
        )
        .await
    }

    /// On `shard`'s leader: delete the decision records of `ids` (see `Op::Forget`).
    pub async fn forget_on(&self, shard: ShardId, ids: Vec<u64>) -> Result<()> {
        self.route(
            shard,
            |g| {
                let ids = ids.clone();
                async move { g.writer.forget(ids).await }
            },
            |addr| {
                let ids = ids.clone();
                async move {
                    match self.call(&addr, Request::Forget { shard, ids }).await? {
                        Response::Done(d) => d.map_err(Into::into),
                        _ => Err(unexpected()),
                    }
                }
            },
        )
        .await
    }

    /// Catch this node's replica of `shard` up with everything committed before the call
    /// (the leader's read index), so what it reads next includes every acknowledged write.
    pub async fn sync(&self, shard: ShardId) -> Result<()> {
        let Some(here) = self.group(shard) else {
            return Ok(());
        };
        let index = self.read_index(shard).await?;
        here.raft
            .wait(Some(limits::LEADER_WAIT))
            .applied_index_at_least(Some(index), "catching up")
            .await
            .map_err(|e| Error::Unavailable(format!("{shard}: catching up: {e}")))?;
        Ok(())
    }

    /// Wait until every node of the catalog has applied the meta group up to what its
    /// leader has committed now (this node first), so a schema change that just succeeded
    /// is what each of them plans its next statement with: no `SELECT *` with the old
    /// columns, no coordinator merge over the old layout. A node that does not answer within
    /// `limits::CATALOG_SPREAD_WAIT` (down, cut off) is left to catch up by itself.
    pub async fn spread_catalog(&self) {
        let index = match self.read_index(ShardId::META).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "schema change made; could not read the meta group's index to spread it");
                return;
            }
        };
        let waiter = self.meta.raft.wait(Some(limits::CATALOG_SPREAD_WAIT));
        let here = waiter.applied_index_at_least(Some(index), "the catalog");
        let others = self
            .catalog()
            .nodes
            .values()
            .filter(|n| n.id != self.node)
            .map(|n| n.cluster_addr.clone())
            .collect::<Vec<_>>();
        let calls = others.iter().map(|addr| async move {
            let answer = self
                .client
                .call(
                    addr,
                    Request::CatalogAt { index },
                    limits::CATALOG_SPREAD_WAIT,
                )
                .await;
            if !matches!(answer, Ok(Response::Done(Ok(())))) {
                tracing::warn!(%addr, index, "a node did not confirm the new catalog in time");
            }
        });
        let (here, _) = futures::future::join(here, futures::future::join_all(calls)).await;
        if let Err(e) = here {
            tracing::warn!(error = %e, index, "this node did not apply the new catalog in time");
        }
    }

    /// The read index of `shard`'s leader: leadership confirmed by a quorum, everything
    /// committed before the call covered. Also how to wait for a new group's first leader.
    pub async fn read_index(&self, shard: ShardId) -> Result<u64> {
        self.route(
            shard,
            |g| async move { g.read_index().await },
            |addr| async move {
                match self.call(&addr, Request::ReadIndex { shard }).await? {
                    Response::Index(r) => r.map_err(Into::into),
                    _ => Err(unexpected()),
                }
            },
        )
        .await
    }

    /// Make `node` a voter of `shard` (on the shard's leader, wherever it is).
    pub async fn add_replica(
        &self,
        shard: ShardId,
        node: NodeId,
        info: crate::replication::NodeInfo,
    ) -> Result<()> {
        self.route(
            shard,
            |g| {
                let info = info.clone();
                async move { self.add_member(&g, node.0, info).await }
            },
            |addr| {
                let info = info.clone();
                async move {
                    let request = Request::AddNode {
                        shard,
                        id: node.0,
                        node: info,
                    };
                    match self.call(&addr, request).await? {
                        Response::Done(r) => r.map_err(Into::into),
                        _ => Err(unexpected()),
                    }
                }
            },
        )
        .await
    }

    /// Take `node` out of `shard`'s group (through its leader).
    pub async fn remove_replica(&self, shard: ShardId, node: NodeId) -> Result<()> {
        self.route(
            shard,
            |g| async move { self.remove_member(&g, node.0).await },
            |addr| async move {
                let request = Request::RemoveNode { shard, id: node.0 };
                match self.call(&addr, request).await? {
                    Response::Done(r) => r.map_err(Into::into),
                    _ => Err(unexpected()),
                }
            },
        )
        .await
    }

    /// The voters of `shard`'s group as its leader sees them.
    pub async fn voters(&self, shard: ShardId) -> Result<(BTreeSet<NodeId>, NodeId)> {
        self.route(
            shard,
            |g| async move {
                leader_voters(&g).map(|(v, l)| (v.into_iter().map(NodeId).collect(), NodeId(l)))
            },
            |addr| async move {
                match self.call(&addr, Request::Voters { shard }).await? {
                    Response::Voters(r) => {
                        let (voters, leader) = r.map_err(Error::from)?;
                        Ok((voters.into_iter().map(NodeId).collect(), NodeId(leader)))
                    }
                    _ => Err(unexpected()),
                }
            },
        )
        .await
    }
}

/// On a group's leader: its voters and its own id; NotLeader elsewhere.
pub fn leader_voters(g: &ShardGroup) -> Result<(Vec<u64>, u64)> {
    if g.leader().0 != Some(g.node) {
        return Err(Error::NotLeader {
            leader: g.leader().0,
        });
    }
    Ok((g.voters().into_iter().collect(), g.node.0))
}
