//! PostgreSQL functions SQLite lacks (or has with other semantics), registered on every
//! connection. Non-deterministic ones (`now()`, `random()`, `gen_random_uuid()`) run only on
//! the leader's speculative execution; replicas receive their results in changesets.

use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value, ValueRef};
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
    // `/` and `%` are rewritten to these: SQLite yields NULL on a zero divisor where
    // PostgreSQL raises "division by zero".
    conn.create_scalar_function("cairn_div", 2, constant, |ctx| arith(ctx, Op::Div))?;
    conn.create_scalar_function("cairn_mod", 2, constant, |ctx| arith(ctx, Op::Mod))?;
    // Raises its argument as an error: DDL jobs use it to refuse a step (`SELECT
    // cairn_fail('...') FROM t LIMIT 1` fails only if t has rows).
    conn.create_scalar_function("cairn_fail", 1, volatile, |ctx| {
        let msg: String = ctx.get(0)?;
        Err::<i64, _>(rusqlite::Error::UserFunctionError(msg.into()))
    })?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Op {
    Div,
    Mod,
}

fn number(v: ValueRef<'_>) -> Option<Value> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(Value::Integer(i)),
        ValueRef::Real(f) => Some(Value::Real(f)),
        ValueRef::Text(t) => {
            let s = std::str::from_utf8(t).ok()?.trim();
            s.parse::<i64>()
                .map(Value::Integer)
                .ok()
                .or_else(|| s.parse::<f64>().ok().map(Value::Real))
        }
        ValueRef::Blob(_) => None,
    }
}

fn arith(ctx: &rusqlite::functions::Context<'_>, op: Op) -> rusqlite::Result<Value> {
    let fail = |m: &str| rusqlite::Error::UserFunctionError(m.to_string().into());
    let (Some(a), Some(b)) = (number(ctx.get_raw(0)), number(ctx.get_raw(1))) else {
        return Ok(Value::Null);
    };
    match (a, b) {
        (Value::Integer(_), Value::Integer(0)) => Err(fail("division by zero")),
        (Value::Integer(a), Value::Integer(b)) => match op {
            Op::Div => a
                .checked_div(b)
                .map(Value::Integer)
                .ok_or_else(|| fail("integer out of range")),
            Op::Mod => Ok(Value::Integer(a.checked_rem(b).unwrap_or(0))),
        },
        (a, b) => {
            let f = |v: Value| match v {
                Value::Integer(i) => i as f64,
                Value::Real(f) => f,
                _ => f64::NAN,
            };
            let (a, b) = (f(a), f(b));
            if b == 0.0 {
                return Err(fail("division by zero"));
            }
            Ok(Value::Real(match op {
                Op::Div => a / b,
                Op::Mod => a % b,
            }))
        }
    }
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
