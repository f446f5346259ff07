//! Cairn: a fault-tolerant, sharded, replicated SQL and key-value database in one binary.
//!
//! Layers, read bottom-up; dependencies point down only:
//! - [`storage`]: one SQLite file per replica; changesets; snapshots.
//! - [`replication`]: one openraft group per shard; the fjall log; the shard's writer.
//! - [`catalog`]: nodes, tables (declared PostgreSQL types, distribution), colocation groups
//!   and shards — kept by the meta group.
//! - [`cluster`]: this node's groups, routing to any shard's leader, placement.
//! - [`sql`]: sessions, PostgreSQL → SQLite translation, planning, transactions, DDL.
//! - [`api`]: pgwire and HTTP — the only place that knows wire formats.
//! - [`node`]: one process wiring it all together; [`cli`]: the `cairn` command.
//! - [`chaos`]: operation histories and the checkers that judge them (fault testing).
//!
//! Shared foundations: [`ids`] (newtype ids), [`error`] (one error type with SQLSTATEs),
//! [`types`] (PostgreSQL types and their wire encodings), [`limits`] (every bound),
//! [`metrics`] (Prometheus counters and the replicas' Raft state), [`units`] (durations
//! and sizes as people write them).

pub mod api;
pub mod auth;
pub mod catalog;
pub mod chaos;
pub mod cli;
pub mod cluster;
pub mod error;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod planted;
pub mod replication;
pub mod sql;
pub mod storage;
pub mod tls;
pub mod types;
pub mod units;
