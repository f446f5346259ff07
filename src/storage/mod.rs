//! Storage: one SQLite file per replica (rusqlite, bundled SQLite), WAL mode,
//! `synchronous=NORMAL` — commits are not fsynced, the Raft log is the durable copy; only
//! checkpoints sync, so a power cut loses recent transactions (replayed from the log) but
//! never corrupts the file. Snapshots are fsynced with their names ([`durable`]) before the
//! log behind them is purged. The last applied log id is written in
//! the same SQLite transaction as the data it covers, so a restart resumes exactly where the
//! file stands.
//!
//! Main types: [`replica::Replica`] (the file: apply, speculative execution, snapshots),
//! [`replica::ReplicaHandle`] (talks to the replica's own thread — a rusqlite `Connection` is
//! `Send` but not `Sync`, and must never be held across an `.await`), [`replica::ReadPool`]
//! (read-only connections for queries outside transactions), [`changeset`] (the one module
//! with `unsafe`: SQLite's session extension).
//!
//! A write, traced: `ReplicaHandle::exec_batch` → replica thread: `BEGIN`, attach a
//! `changeset::Session`, run each statement in its own savepoint, take the changeset,
//! `ROLLBACK` → the ops go through Raft → `ReplicaHandle::apply` → `Replica::apply`: apply each
//! changeset / DDL and record the applied log id, in one SQLite transaction.

pub mod cancel;
pub mod changeset;
pub mod durable;
pub mod events;
pub mod functions;
pub mod replica;
