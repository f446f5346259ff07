//! A shard's single writer, on its leader. Autocommit statements that arrive while a proposal
//! is in flight queue up and go together in the next batch (group commit), each in its own
//! savepoint so one failure fails only its statement. An interactive transaction takes the
//! writer from its first statement to COMMIT/ROLLBACK; the writer is released when the client
//! goes away or stays idle for `limits::IDLE_IN_TRANSACTION_TIMEOUT`.
//!
//! Invariant: the writer never executes against a state that lacks its previous proposal — it
//! waits for each proposal to be applied (openraft answers `client_write` after apply), and
//! a newly elected leader first applies everything before its own term (`ensure_ready`).

use super::{Batch, Op, Raft};
use crate::error::{sqlstate, Error, Result};
use crate::ids::NodeId;
use crate::limits;
use crate::storage::replica::{ReplicaHandle, Rows, Statement};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

enum Request {
    Exec {
        stmt: Statement,
        reply: oneshot::Sender<Result<Rows>>,
    },
    Begin {
        reply: oneshot::Sender<Result<Transaction>>,
    },
}

enum TxnCmd {
    Exec(Statement, oneshot::Sender<Result<Rows>>),
    Commit(oneshot::Sender<Result<()>>),
    Rollback(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
}

/// An open interactive transaction holding the shard's writer. Dropping it rolls back.
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
    pub async fn exec(&self, stmt: Statement) -> Result<Rows> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(TxnCmd::Exec(stmt, reply))
            .await
            .map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())?
    }

    pub async fn commit(self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(TxnCmd::Commit(reply))
            .await
            .map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())?
    }

    pub async fn rollback(self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(TxnCmd::Rollback(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
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
        tokio::spawn(run(raft, replica, node, rx));
        Writer { tx }
    }

    /// Execute one autocommit statement; answered once its effects are committed and applied.
    pub async fn execute(&self, stmt: Statement) -> Result<Rows> {
        let (reply, rx) = oneshot::channel();
        let fut = async {
            self.tx
                .send(Request::Exec { stmt, reply })
                .await
                .map_err(|_| Error::Unavailable("writer stopped".into()))?;
            rx.await
                .map_err(|_| Error::Unavailable("writer stopped".into()))?
        };
        tokio::time::timeout(limits::WRITER_WAIT_TIMEOUT, fut)
            .await
            .map_err(|_| wait_timeout())?
    }

    /// Take the writer for an interactive transaction.
    pub async fn begin(&self) -> Result<Transaction> {
        let (reply, rx) = oneshot::channel();
        let fut = async {
            self.tx
                .send(Request::Begin { reply })
                .await
                .map_err(|_| Error::Unavailable("writer stopped".into()))?;
            rx.await
                .map_err(|_| Error::Unavailable("writer stopped".into()))?
        };
        tokio::time::timeout(limits::WRITER_WAIT_TIMEOUT, fut)
            .await
            .map_err(|_| wait_timeout())?
    }
}

/// Fails unless this node leads the group and has applied every entry of earlier terms.
async fn ensure_ready(raft: &Raft, node: NodeId, ready_term: &mut Option<u64>) -> Result<()> {
    super::group::wait_for_leader(raft, limits::LEADER_WAIT).await;
    let (leader, term) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.current_leader, m.current_term)
    };
    if leader != Some(node.0) {
        return Err(Error::NotLeader {
            leader: leader.map(NodeId),
        });
    }
    if *ready_term != Some(term) {
        raft.ensure_linearizable().await.map_err(|e| match e {
            RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f)) => {
                Error::NotLeader {
                    leader: f.leader_id.map(NodeId),
                }
            }
            other => Error::Unavailable(other.to_string()),
        })?;
        *ready_term = Some(term);
    }
    Ok(())
}

async fn propose(raft: &Raft, ops: Vec<Op>) -> Result<()> {
    match raft.client_write(Batch { ops }).await {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(Error::NotLeader {
            leader: f.leader_id.map(NodeId),
        }),
        Err(e) => Err(Error::Unavailable(e.to_string())),
    }
}

async fn run(raft: Raft, replica: ReplicaHandle, node: NodeId, mut rx: mpsc::Receiver<Request>) {
    let mut ready_term = None;
    let mut next: Option<Request> = None;
    loop {
        let first = match next.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        match first {
            Request::Exec { stmt, reply } => {
                let mut stmts = vec![stmt];
                let mut replies = vec![reply];
                while stmts.len() < limits::WRITE_BATCH_STATEMENTS_MAX {
                    match rx.try_recv() {
                        Ok(Request::Exec { stmt, reply }) => {
                            stmts.push(stmt);
                            replies.push(reply);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                // A caller that gave up waiting must not have its statement run later.
                let (stmts, mut replies): (Vec<_>, Vec<_>) = stmts
                    .into_iter()
                    .zip(replies)
                    .filter(|(_, r)| !r.is_closed())
                    .unzip();
                if stmts.is_empty() {
                    continue;
                }
                let results = match ensure_ready(&raft, node, &mut ready_term).await {
                    Err(e) => vec![Err(e); replies.len()],
                    Ok(()) => match replica.exec_batch(stmts).await {
                        Err(e) => vec![Err(e); replies.len()],
                        Ok((results, ops)) if crate::planted::active("ack-before-commit") => {
                            // Deliberately wrong (see `planted`): answer, then replicate.
                            for (reply, result) in replies.drain(..).zip(results) {
                                let _ = reply.send(result);
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            if !ops.is_empty() {
                                let _ = propose(&raft, ops).await;
                            }
                            Vec::new()
                        }
                        Ok((results, ops)) => {
                            let outcome = if ops.is_empty() {
                                Ok(())
                            } else {
                                propose(&raft, ops).await
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
            Request::Begin { reply } => {
                if reply.is_closed() {
                    continue;
                }
                if let Err(e) = ensure_ready(&raft, node, &mut ready_term).await {
                    let _ = reply.send(Err(e));
                    continue;
                }
                run_transaction(&raft, &replica, reply).await;
            }
        }
    }
}

async fn run_transaction(
    raft: &Raft,
    replica: &ReplicaHandle,
    reply: oneshot::Sender<Result<Transaction>>,
) {
    if let Err(e) = replica.begin().await {
        let _ = reply.send(Err(e));
        return;
    }
    let (tx, mut cmds) = mpsc::channel(1);
    if reply.send(Ok(Transaction { tx })).is_err() {
        let _ = replica.rollback().await;
        return;
    }
    loop {
        match tokio::time::timeout(limits::IDLE_IN_TRANSACTION_TIMEOUT, cmds.recv()).await {
            Err(_) => {
                tracing::warn!(shard = %replica.shard, "rolling back a transaction idle for {:?}", limits::IDLE_IN_TRANSACTION_TIMEOUT);
                let _ = replica.rollback().await;
                return;
            }
            Ok(None) => {
                let _ = replica.rollback().await;
                return;
            }
            Ok(Some(TxnCmd::Exec(stmt, r))) => {
                let _ = r.send(replica.exec(stmt).await);
            }
            Ok(Some(TxnCmd::Commit(r))) => {
                let result = match replica.finish().await {
                    Ok(ops) if ops.is_empty() => Ok(()),
                    Ok(ops) => propose(raft, ops).await,
                    Err(e) => Err(e),
                };
                let _ = r.send(result);
                return;
            }
            Ok(Some(TxnCmd::Rollback(r))) => {
                let _ = replica.rollback().await;
                let _ = r.send(());
                return;
            }
        }
    }
}
