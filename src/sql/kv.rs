//! The key-value API's table.

/// The table keys and values live in (hash-distributed on `key`).
pub const TABLE: &str = "cairn_kv";
