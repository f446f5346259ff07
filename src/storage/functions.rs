//! PostgreSQL functions SQLite lacks (or has with other semantics), registered on every
//! connection. Non-deterministic ones (`now()`, `random()`, `gen_random_uuid()`) run only on
//! the leader's speculative execution; replicas receive their results in changesets.

use rusqlite::functions::FunctionFlags;
use rusqlite::Connection;
use std::time::{SystemTime, UNIX_EPOCH};

pub const SERVER_VERSION: &str = "16.0";

/// What `version()` reports: drivers parse the leading "PostgreSQL <major>.<minor>".
pub fn version_string() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (Cairn {})",
        env!("CARGO_PKG_VERSION")
    )
}

pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    let volatile = FunctionFlags::SQLITE_UTF8;
    let constant = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    for name in [
        "now",
        "transaction_timestamp",
        "statement_timestamp",
        "clock_timestamp",
    ] {
        conn.create_scalar_function(name, 0, volatile, |_| Ok(timestamp_now()))?;
    }
    conn.create_scalar_function("version", 0, constant, |_| Ok(version_string()))?;
    conn.create_scalar_function("current_database", 0, constant, |_| Ok("cairn".to_string()))?;
    conn.create_scalar_function("current_schema", 0, constant, |_| Ok("public".to_string()))?;
    conn.create_scalar_function("pg_backend_pid", 0, constant, |_| {
        Ok(std::process::id() as i64)
    })?;
    // PostgreSQL's random() is a float in [0, 1); SQLite's is a 64-bit integer.
    conn.create_scalar_function("random", 0, volatile, |_| Ok(rand::random::<f64>()))?;
    conn.create_scalar_function("gen_random_uuid", 0, volatile, |_| Ok(random_uuid()))?;
    Ok(())
}

/// The current time as PostgreSQL prints a `timestamptz` in UTC.
pub fn timestamp_now() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    crate::types::format_timestamp_micros(micros - crate::types::PG_EPOCH_UNIX_MICROS, true)
}

fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
