//! Routing: every statement goes to the shard's group (one for now). On the leader it runs
//! locally; on a follower it is forwarded to the leader over the cluster transport, so a
//! client connected to any node never sees a redirect. A transaction started on a follower
//! holds the leader's writer through a remote lease.
//!
//! Retries: only `NotLeader` is retried (after re-resolving the leader). It means nothing
//! will ever apply: the writer returns it before executing; openraft answers a proposal
//! with `ForwardToLeader` only if the node was not leader when it arrived or if its entry
//! was truncated from the log (checked in openraft 0.9's `RaftCore`, `DeleteConflictLog`);
//! and a forwarded call that could not even be dialled never left this node.

use crate::error::{Error, Result};
use crate::ids::NodeId;
use crate::limits;
use crate::replication::group::{wait_for_leader, ReadConsistency, ShardGroup};
use crate::replication::transport::{CallError, Client, Request, Response};
use crate::replication::writer::Transaction;
use crate::storage::replica::{Rows, Statement};
use std::sync::Arc;
use std::time::Instant;

pub struct Router {
    pub group: Arc<ShardGroup>,
    pub client: Arc<Client>,
}

/// A transaction's hold on the shard's writer: here, or on the leader.
pub enum Lease {
    Local(Transaction),
    Remote { addr: String, txn: u64 },
}

fn unexpected() -> Error {
    Error::internal("unexpected answer from the leader")
}

impl Router {
    fn leader_addr(&self, leader: NodeId) -> Result<String> {
        self.group
            .node_info(leader)
            .map(|n| n.cluster_addr)
            .ok_or_else(|| Error::Unavailable(format!("leader {leader} is not in the membership")))
    }

    async fn call(&self, addr: &str, request: Request) -> Result<Response> {
        self.client
            .call(addr, request, limits::FORWARD_TIMEOUT)
            .await
            .map_err(|e| match e {
                // The leader we knew is gone and the call never left: look for the new one.
                CallError::NotSent(_) => Error::NotLeader { leader: None },
                other => Error::Unavailable(format!("forwarding to the leader: {other}")),
            })
    }

    /// Run `local` here if this node leads; otherwise `remote` against the leader. Retries
    /// on `NotLeader` until `limits::LEADER_WAIT` has passed.
    async fn route<T, L, LF, R, RF>(&self, local: L, remote: R) -> Result<T>
    where
        L: Fn() -> LF,
        LF: std::future::Future<Output = Result<T>>,
        R: Fn(String) -> RF,
        RF: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + limits::LEADER_WAIT;
        loop {
            let leader = wait_for_leader(&self.group.raft, limits::LEADER_WAIT).await;
            let result = match leader {
                Some(l) if l == self.group.node => local().await,
                Some(l) => remote(self.leader_addr(l)?).await,
                None => Err(Error::NotLeader { leader: None }),
            };
            match result {
                Err(Error::NotLeader { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Run a statement on the leader at `addr` (inside forwarded transaction `txn`, if any).
    async fn remote_exec(
        &self,
        addr: &str,
        txn: Option<u64>,
        stmt: Statement,
        read: bool,
    ) -> Result<Rows> {
        let request = Request::Exec {
            shard: self.group.shard,
            txn,
            stmt: stmt.into(),
            read,
        };
        match self.call(addr, request).await? {
            Response::Rows(r) => r.map(Into::into).map_err(Into::into),
            _ => Err(unexpected()),
        }
    }

    pub async fn write(&self, stmt: Statement) -> Result<Rows> {
        self.route(
            || self.group.writer.execute(stmt.clone()),
            |addr| {
                let stmt = stmt.clone();
                async move { self.remote_exec(&addr, None, stmt, false).await }
            },
        )
        .await
    }

    pub async fn read(&self, stmt: Statement, consistency: ReadConsistency) -> Result<Rows> {
        if crate::planted::active("stale-reads") {
            return self.group.replica.read(stmt).await;
        }
        match consistency {
            ReadConsistency::Any => return self.group.replica.read(stmt).await,
            ReadConsistency::Bounded(bound) if self.group.fresh_within(bound) => {
                return self.group.replica.read(stmt).await;
            }
            _ => {}
        }
        self.route(
            || self.group.read(stmt.clone(), ReadConsistency::Linearizable),
            |addr| {
                let stmt = stmt.clone();
                async move { self.remote_exec(&addr, None, stmt, true).await }
            },
        )
        .await
    }

    pub async fn begin(&self) -> Result<Lease> {
        let shard = self.group.shard;
        self.route(
            || async { self.group.writer.begin().await.map(Lease::Local) },
            |addr| async move {
                match self.call(&addr, Request::Begin { shard }).await? {
                    Response::Txn(r) => {
                        r.map(|txn| Lease::Remote { addr, txn }).map_err(Into::into)
                    }
                    _ => Err(unexpected()),
                }
            },
        )
        .await
    }

    pub async fn exec(&self, lease: &Lease, stmt: Statement) -> Result<Rows> {
        match lease {
            Lease::Local(t) => t.exec(stmt).await,
            Lease::Remote { addr, txn } => self.remote_exec(addr, Some(*txn), stmt, false).await,
        }
    }

    pub async fn commit(&self, lease: Lease) -> Result<()> {
        match lease {
            Lease::Local(t) => t.commit().await,
            Lease::Remote { addr, txn } => match self.call(&addr, Request::Commit { txn }).await? {
                Response::Done(r) => r.map_err(Into::into),
                _ => Err(unexpected()),
            },
        }
    }

    pub async fn rollback(&self, lease: Lease) {
        match lease {
            Lease::Local(t) => t.rollback().await,
            Lease::Remote { addr, txn } => {
                let _ = self.call(&addr, Request::Rollback { txn }).await;
            }
        }
    }
}
