//! SQL: a client's session → parse (sqlparser, PostgreSQL dialect) → translate for SQLite →
//! plan (which shards run what, what is merged at the coordinator) → execute through the
//! cluster's routing → typed results. Knows no wire format: `api/` turns
//! [`session::Output`] into pgwire messages or JSON.
//!
//! A statement, traced: `Session::run_script("INSERT INTO t VALUES (1, 'a')")` →
//! `translate::parse` → `translate::translate` (Kind::Write, `$1` → `?1`, parameter types
//! from the catalog) → `plan::plan` (hash of 1 → shard s3: `Plan::Insert`) →
//! `Session::run_plan` → `Cluster::write(s3, ...)` (the leader's writer: group commit, Raft)
//! → `Output { tag: "INSERT 0 1" }`. DDL goes to `ddl` instead: a job in the catalog, run on
//! every shard of the table.

pub mod cache;
pub mod copy;
pub mod ddl;
mod distinct;
pub mod files;
pub mod kv;
pub mod plan;
pub mod scratch;
mod sequences;
pub mod session;
mod srf;
pub mod subscribe;
pub mod system;
pub mod translate;
mod typed;

pub use session::{parse_duration, Engine, Field, Output, Prepared, Session, TxnEvent};
