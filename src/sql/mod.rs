//! SQL: a client's session → parse (sqlparser, PostgreSQL dialect) → translate for SQLite →
//! route to the shard's group → execute (reads on a replica, writes through the shard's
//! writer) → typed results. Knows no wire format: `api/` turns [`session::Output`] into
//! pgwire messages or JSON.
//!
//! A statement, traced: `Session::run_script("INSERT ...")` → `translate::parse` →
//! `translate::translate` (Kind::Write, `$1` → `?1`, parameter types from the catalog) →
//! `Session::execute` → `Writer::execute` (group commit, Raft) → `Output { tag: "INSERT 0 1" }`.

pub mod router;
pub mod session;
pub mod translate;

pub use session::{Engine, Field, Output, Prepared, Session, TxnEvent};
