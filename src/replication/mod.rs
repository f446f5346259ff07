//! Replication: each shard is one Raft group run by `openraft` 0.9. This module supplies
//! openraft's three adapters — log storage (`log_store`, on `fjall`), the state machine
//! (`state_machine`, the shard's SQLite replica) and the network (`network`) — and never the
//! algorithm itself.
//!
//! What travels through the log is a [`Batch`]: the *result* of executing statements on the
//! leader (SQLite changesets) plus DDL text, never the client's SQL for DML. So every replica
//! applies exactly the same bytes, and `now()`, `random()` and generated ids are evaluated once.
//!
//! A write, traced: `sql::writer` executes statements speculatively on the leader's replica and
//! rolls back → [`Batch`] → `Raft::client_write` → `LogStore::append` (one fsync per batch) →
//! commit → `StateMachine::apply` → `storage::Replica::apply` (changeset + applied index in one
//! SQLite transaction) → the writer answers the client.

pub mod faults;
pub mod group;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod state_machine;
pub mod transport;
pub mod writer;

use crate::storage::replica::{ResultColumn, Rows, Statement, StatementKind};
use serde::{Deserialize, Serialize};

/// One operation of a replicated batch, applied in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A SQLite changeset: the row changes of one or more statements.
    Changeset(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Schema change, run as SQL on every replica (SQLite changesets carry no DDL).
    Ddl(String),
    /// Two-phase commit, phase one: keep `ops` (this shard's part of transaction `txn`)
    /// without applying them. `coordinator` is the shard holding the decision.
    Prepare {
        txn: u64,
        coordinator: crate::ids::ShardId,
        ops: Vec<Op>,
    },
    /// The decision on `txn`, kept on its coordinator shard. The first decision recorded
    /// wins: a later one (a recovering participant voting abort) changes nothing.
    Decide { txn: u64, commit: bool },
    /// Phase two: apply (commit) or drop the prepared part of `txn`; nothing if there is
    /// none (already resolved).
    Resolve { txn: u64, commit: bool },
    /// Part `seq` of the postcard-encoded ops of a commit too large for one entry (see
    /// `writer::propose_ops`): kept, not applied, until `Staged { id }`.
    Stage {
        id: u64,
        seq: u32,
        #[serde(with = "serde_bytes")]
        part: Vec<u8>,
    },
    /// Apply the ops staged under `id` (in `seq` order) and drop them.
    Staged { id: u64 },
    /// Drop staged parts that no prepared transaction refers to (left by a leader that
    /// failed between staging and committing).
    DropStaged,
    /// Delete the decision records of `txns` (kept on their coordinator shard): every part
    /// of each was resolved through the log, so no participant will ask for them again.
    Forget { txns: Vec<u64> },
    /// The proposing leader's clock, µs since the Unix epoch: the commit time of the
    /// entry's changes in change events (`storage::events`). First in every batch a writer
    /// proposes; applying it changes no rows.
    Time(u64),
    /// A consistency check: every replica applying it takes a checksum of its rows at this
    /// entry (`storage::replica`), so replicas are compared at the same log index.
    Check { id: u64 },
    /// The applied index of the state the entry's changes were computed on (the leader's
    /// speculative execution). Every replica refuses, alike, an entry carrying it when a
    /// later entry already changed rows: its changes were computed on a state that is gone
    /// (a writer that lost and regained leadership between computing and proposing).
    Base { index: u64 },
}

impl Op {
    /// Roughly how many bytes the op takes in a message.
    pub fn bytes(&self) -> usize {
        match self {
            Op::Changeset(b) => b.len(),
            Op::Ddl(sql) => sql.len(),
            Op::Prepare { ops, .. } => 32 + ops.iter().map(Op::bytes).sum::<usize>(),
            Op::Stage { part, .. } => 16 + part.len(),
            Op::Forget { txns } => 8 + 8 * txns.len(),
            Op::Decide { .. } | Op::Resolve { .. } | Op::Staged { .. } | Op::DropStaged => 16,
            Op::Time(_) => 9,
            Op::Check { .. } | Op::Base { .. } => 9,
        }
    }
}

/// The payload of one Raft log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} ops", self.ops.len())
    }
}

/// What a replica reports after applying an entry: whether it refused it (an `Op::Base`
/// older than the last entry that changed rows; nothing of it applied).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub refused: bool,
}

impl Op {
    /// Whether applying the op changes a table's rows or schema (what a later `Base` must
    /// have seen).
    pub fn writes_rows(&self) -> bool {
        matches!(
            self,
            Op::Changeset(_) | Op::Ddl(_) | Op::Resolve { commit: true, .. } | Op::Staged { .. }
        )
    }
}

/// `ops` split into their leading `Op::Base` (if any) and the rest: a proposal keeps the
/// base at its top level, where replicas check it, also when the rest is staged or
/// prepared.
pub fn take_base(mut ops: Vec<Op>) -> (Vec<Op>, Vec<Op>) {
    match ops.first() {
        Some(Op::Base { .. }) => {
            let rest = ops.split_off(1);
            (ops, rest)
        }
        _ => (Vec::new(), ops),
    }
}

/// What the cluster knows about a node: how to reach it. Kept in each group's membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node-to-node RPC (Raft, joins, forwarded statements).
    pub cluster_addr: String,
    pub pg_addr: String,
    pub http_addr: String,
    /// Placement label.
    pub zone: Option<String>,
}

/// A SQLite value on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WireValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<rusqlite::types::Value> for WireValue {
    fn from(v: rusqlite::types::Value) -> Self {
        use rusqlite::types::Value as V;
        match v {
            V::Null => WireValue::Null,
            V::Integer(i) => WireValue::Integer(i),
            V::Real(f) => WireValue::Real(f),
            V::Text(s) => WireValue::Text(s),
            V::Blob(b) => WireValue::Blob(b),
        }
    }
}

impl From<WireValue> for rusqlite::types::Value {
    fn from(v: WireValue) -> Self {
        use rusqlite::types::Value as V;
        match v {
            WireValue::Null => V::Null,
            WireValue::Integer(i) => V::Integer(i),
            WireValue::Real(f) => V::Real(f),
            WireValue::Text(s) => V::Text(s),
            WireValue::Blob(b) => V::Blob(b),
        }
    }
}

/// A statement forwarded to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireStatement {
    pub sql: String,
    pub params: Vec<WireValue>,
    pub kind: StatementKind,
    pub refs: Vec<crate::ids::ShardId>,
}

impl From<Statement> for WireStatement {
    fn from(s: Statement) -> Self {
        WireStatement {
            sql: s.sql,
            params: s.params.into_iter().map(Into::into).collect(),
            kind: s.kind,
            refs: s.refs,
        }
    }
}

impl From<WireStatement> for Statement {
    fn from(s: WireStatement) -> Self {
        Statement {
            sql: s.sql,
            params: s.params.into_iter().map(Into::into).collect(),
            kind: s.kind,
            refs: s.refs,
            cancel: Default::default(),
        }
    }
}

/// A forwarded statement's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRows {
    pub columns: Vec<ResultColumn>,
    pub rows: Vec<Vec<WireValue>>,
    pub changes: u64,
}

impl From<Rows> for WireRows {
    fn from(r: Rows) -> Self {
        WireRows {
            columns: r.columns,
            rows: r
                .rows
                .into_iter()
                .map(|row| row.into_iter().map(Into::into).collect())
                .collect(),
            changes: r.changes,
        }
    }
}

impl From<WireRows> for Rows {
    fn from(r: WireRows) -> Self {
        Rows {
            columns: r.columns,
            rows: r
                .rows
                .into_iter()
                .map(|row| row.into_iter().map(Into::into).collect())
                .collect(),
            changes: r.changes,
        }
    }
}

openraft::declare_raft_types!(
    /// Cairn's openraft type configuration. Node ids are plain `u64` inside openraft and
    /// [`crate::ids::NodeId`] everywhere else.
    pub TypeConfig:
        D = Batch,
        R = Applied,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Membership = openraft::StoredMembership<u64, NodeInfo>;
pub type StorageError = openraft::StorageError<u64>;

/// Turns any error into openraft's storage error for `subject`, logging it: a storage error
/// stops the Raft group, which is what must happen rather than diverging.
pub(crate) fn storage_error(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    let io = std::io::Error::other(e.to_string());
    tracing::error!(error = %e, "storage failure; stopping the group");
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&io)).into()
}

#[cfg(test)]
mod tests {
    use super::Op;

    /// Byte fields are encoded as postcard's bytes (length, then the bytes), which is also
    /// how a sequence of u8 was encoded before: logs written either way read back.
    #[test]
    fn byte_fields_keep_their_encoding() {
        let bytes = postcard::to_stdvec(&Op::Changeset(vec![7, 8, 9])).unwrap();
        assert_eq!(bytes, vec![0, 3, 7, 8, 9]);
        let old: Vec<u8> = postcard::to_stdvec(&(0u8, vec![7u8, 8, 9])).unwrap();
        assert_eq!(
            postcard::from_bytes::<Op>(&old).unwrap(),
            Op::Changeset(vec![7, 8, 9])
        );
    }
}
