//! The key-value API's storage: keys are rows of one hash-distributed table, `cairn_kv`,
//! written and read with SQL through a session like any client's, so keys are sharded,
//! replicated, transactional across shards and visible to SQL and subscriptions like rows.
//!
//! `cairn_kv (key text PRIMARY KEY, value bytea, content_type text, version bigint,
//! expires_at bigint)`: `version` and `expires_at` are µs since the Unix epoch taken from the
//! clock of the shard's leader when it runs the write (`cairn_kv_version`, `cairn_clock_us`),
//! so every replica agrees on both. A key past `expires_at` is invisible to the API at once;
//! [`reap`] deletes it later through its shard's leader, which re-checks the expiry.

use super::{Engine, Output, Session};
use crate::error::{sqlstate, Error, Result};
use crate::limits;
use crate::types;
use rusqlite::types::Value;
use std::sync::Arc;
use std::time::Duration;

/// The table keys and values live in (hash-distributed on `key`).
pub const TABLE: &str = "cairn_kv";

const CREATE: &str = "CREATE TABLE IF NOT EXISTS cairn_kv (key text PRIMARY KEY, \
    value bytea NOT NULL, content_type text, version bigint NOT NULL, expires_at bigint)";

/// A key that has not expired, as seen by the node running the statement.
const LIVE: &str = "(expires_at IS NULL OR expires_at > cairn_clock_us())";

/// One stored key.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub content_type: Option<String>,
    pub version: i64,
    /// µs since the Unix epoch.
    pub expires_at: Option<i64>,
}

/// What a write requires of the key's current state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Any,
    /// The key exists with this version (`If-Match`).
    Version(i64),
    /// The key does not exist (`If-None-Match: *`).
    Absent,
    /// The key exists, whatever its version.
    Present,
}

/// One step of a write.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        content_type: Option<String>,
        ttl: Option<Duration>,
        condition: Condition,
    },
    Delete {
        key: String,
        condition: Condition,
    },
    /// Only a condition: the write happens only if it holds.
    Check {
        key: String,
        condition: Condition,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } | Op::Check { key, .. } => key,
        }
    }
}

/// What each step of a write did: a put's new version, whether a delete removed a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    Put { version: i64 },
    Deleted(bool),
    Checked { version: Option<i64> },
}

/// A write's outcome: done, or the first step whose condition failed (nothing applied).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied(Vec<Done>),
    ConditionFailed { step: usize, key: String },
}

/// Check a key against the named limits.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::sql(
            sqlstate::INVALID_PARAMETER_VALUE,
            "a key cannot be empty",
        ));
    }
    if key.len() > limits::KV_KEY_BYTES_MAX {
        return Err(Error::sql(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "a key is at most {} bytes; this one has {}",
                limits::KV_KEY_BYTES_MAX,
                key.len()
            ),
        ));
    }
    Ok(())
}

/// Check a value against the named limits.
pub fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > limits::KV_VALUE_BYTES_MAX {
        return Err(Error::sql(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "a value is at most {} bytes; this one has {}",
                limits::KV_VALUE_BYTES_MAX,
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Does the table exist in this node's catalog?
fn exists(engine: &Engine) -> bool {
    engine.cluster.catalog().table(TABLE).is_some()
}

/// Create the table unless it exists (the first write, or the first prefix subscription).
pub async fn ensure_table(engine: &Arc<Engine>) -> Result<()> {
    if exists(engine) {
        return Ok(());
    }
    let mut session = engine.session();
    let result = run(&mut session, CREATE, vec![]).await;
    session.close().await;
    result.map(|_| ())
}

/// Run one statement with positional parameters, typed as the statement needs them.
pub(super) async fn run(session: &mut Session, sql: &str, params: Vec<Value>) -> Result<Output> {
    let prepared = session
        .prepare(sql, &[])
        .await?
        .ok_or_else(|| Error::internal("empty key-value statement"))?;
    let params = params
        .into_iter()
        .zip(prepared.param_types().to_vec())
        .map(|(v, t)| types::coerce(v, t))
        .collect::<Result<Vec<_>>>()?;
    session.execute(&prepared, params).await
}

/// A session reading at `consistency` (`linearizable` unless given), with its bound.
pub(super) async fn reading(
    engine: &Arc<Engine>,
    consistency: Option<&str>,
    max_staleness: Option<&str>,
) -> Result<Session> {
    let mut session = engine.session();
    for (name, value) in [
        ("cairn.read_consistency", consistency),
        ("cairn.max_staleness", max_staleness),
    ] {
        if let Some(v) = value {
            let set = format!("SET {name} = '{}'", v.replace('\'', "''"));
            if let Err(e) = run(&mut session, &set, vec![]).await {
                session.close().await;
                return Err(e);
            }
        }
    }
    Ok(session)
}

fn entry(row: &[Value]) -> Result<Entry> {
    let text = |v: &Value| match v {
        Value::Text(s) => Some(s.clone()),
        _ => None,
    };
    let int = |v: &Value| match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    };
    let (Some(key), Some(version)) = (text(&row[0]), int(&row[3])) else {
        return Err(Error::Corrupt(format!(
            "{TABLE}: a row without key or version"
        )));
    };
    let value = match &row[1] {
        Value::Blob(b) => b.clone(),
        Value::Text(s) => s.clone().into_bytes(),
        _ => Vec::new(),
    };
    Ok(Entry {
        key,
        value,
        content_type: text(&row[2]),
        version,
        expires_at: int(&row[4]),
    })
}

/// The key's current value, or None when absent or expired.
pub async fn get(
    engine: &Arc<Engine>,
    key: &str,
    consistency: Option<&str>,
    max_staleness: Option<&str>,
) -> Result<Option<Entry>> {
    check_key(key)?;
    if !exists(engine) {
        return Ok(None);
    }
    let mut session = reading(engine, consistency, max_staleness).await?;
    let sql = format!(
        "SELECT key, value, content_type, version, expires_at FROM {TABLE} \
         WHERE key = $1 AND {LIVE}"
    );
    let result = run(&mut session, &sql, vec![Value::Text(key.into())]).await;
    session.close().await;
    result?.rows.first().map(|r| entry(r)).transpose()
}

/// Up to `limit` live keys starting with `prefix`, in key order, after `after` if given.
pub async fn list(
    engine: &Arc<Engine>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    consistency: Option<&str>,
    max_staleness: Option<&str>,
) -> Result<Vec<Entry>> {
    if !exists(engine) {
        return Ok(Vec::new());
    }
    let mut session = reading(engine, consistency, max_staleness).await?;
    // substr counts characters: the prefix's length in characters.
    let prefixed = match prefix.chars().count() {
        0 => String::new(),
        n => format!(" AND substr(key, 1, {n}) = $1"),
    };
    let sql = format!(
        "SELECT key, value, content_type, version, expires_at FROM {TABLE} \
         WHERE key >= $1{prefixed} AND key > $2 AND {LIVE} ORDER BY key LIMIT {limit}"
    );
    let params = vec![
        Value::Text(prefix.into()),
        Value::Text(after.unwrap_or("").into()),
    ];
    let result = run(&mut session, &sql, params).await;
    session.close().await;
    result?.rows.iter().map(|r| entry(r)).collect()
}

/// Apply `ops` atomically (one shard or several): all of them, or — when a condition
/// fails — none, answering the first step that failed.
pub async fn apply(engine: &Arc<Engine>, ops: &[Op]) -> Result<Outcome> {
    if ops.is_empty() {
        return Ok(Outcome::Applied(Vec::new()));
    }
    for op in ops {
        check_key(op.key())?;
        if let Op::Put { value, .. } = op {
            check_value(value)?;
        }
    }
    if ops.len() > limits::KV_TXN_OPS_MAX {
        return Err(Error::sql(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!("a transaction has at most {} steps", limits::KV_TXN_OPS_MAX),
        ));
    }
    ensure_table(engine).await?;
    let mut session = engine.session();
    let result = apply_in(&mut session, ops).await;
    session.close().await;
    result
}

async fn apply_in(session: &mut Session, ops: &[Op]) -> Result<Outcome> {
    let several = ops.len() > 1;
    if several {
        run(session, "BEGIN", vec![]).await?;
    }
    let mut done = Vec::with_capacity(ops.len());
    for (step, op) in ops.iter().enumerate() {
        match step_once(session, op).await? {
            Some(d) => done.push(d),
            None => {
                if several {
                    run(session, "ROLLBACK", vec![]).await?;
                }
                return Ok(Outcome::ConditionFailed {
                    step,
                    key: op.key().to_string(),
                });
            }
        }
    }
    if several {
        run(session, "COMMIT", vec![]).await?;
    }
    Ok(Outcome::Applied(done))
}

/// One step; None when its condition does not hold (then it changed nothing).
async fn step_once(session: &mut Session, op: &Op) -> Result<Option<Done>> {
    match op {
        Op::Put {
            key,
            value,
            content_type,
            ttl,
            condition,
        } => {
            let expires = match ttl {
                // Relative to the leader's clock when it runs the write.
                Some(t) => format!("cairn_clock_us() + {}", t.as_micros().min(i64::MAX as u128)),
                None => "NULL".into(),
            };
            let params = vec![
                Value::Text(key.clone()),
                Value::Blob(value.clone()),
                content_type.clone().map_or(Value::Null, Value::Text),
            ];
            let sql = match condition {
                // Insert, or replace whatever is there (expired or not).
                Condition::Any => format!(
                    "INSERT INTO {TABLE} (key, value, content_type, version, expires_at) \
                     VALUES ($1, $2, $3, cairn_kv_version(NULL), {expires}) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                     content_type = excluded.content_type, \
                     version = cairn_kv_version({TABLE}.version), expires_at = excluded.expires_at \
                     RETURNING version"
                ),
                // Insert, or replace only an expired key.
                Condition::Absent => format!(
                    "INSERT INTO {TABLE} (key, value, content_type, version, expires_at) \
                     VALUES ($1, $2, $3, cairn_kv_version(NULL), {expires}) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                     content_type = excluded.content_type, \
                     version = cairn_kv_version({TABLE}.version), expires_at = excluded.expires_at \
                     WHERE {TABLE}.expires_at IS NOT NULL AND {TABLE}.expires_at <= cairn_clock_us() \
                     RETURNING version"
                ),
                Condition::Version(_) | Condition::Present => format!(
                    "UPDATE {TABLE} SET value = $2, content_type = $3, \
                     version = cairn_kv_version(version), expires_at = {expires} \
                     WHERE key = $1 AND {LIVE}{} RETURNING version",
                    version_clause(condition, 4)
                ),
            };
            let mut params = params;
            if let Condition::Version(v) = condition {
                params.push(Value::Integer(*v));
            }
            let out = run(session, &sql, params).await?;
            Ok(returned_version(&out).map(|version| Done::Put { version }))
        }
        Op::Delete { key, condition } => {
            let mut params = vec![Value::Text(key.clone())];
            if let Condition::Version(v) = condition {
                params.push(Value::Integer(*v));
            }
            if *condition == Condition::Absent {
                // Deleting a key that must not exist: holds when it does not.
                return check(session, key, *condition).await;
            }
            // An expired key is deleted too (it was already invisible).
            let live = match condition {
                Condition::Any => String::new(),
                _ => format!(" AND {LIVE}{}", version_clause(condition, 2)),
            };
            let sql = format!("DELETE FROM {TABLE} WHERE key = $1{live} RETURNING version");
            let out = run(session, &sql, params).await?;
            match (condition, returned_version(&out)) {
                (Condition::Any, found) => Ok(Some(Done::Deleted(found.is_some()))),
                (_, Some(_)) => Ok(Some(Done::Deleted(true))),
                (_, None) => Ok(None),
            }
        }
        Op::Check { key, condition } => check(session, key, *condition).await,
    }
}

/// `AND version = $n` for a version condition.
fn version_clause(condition: &Condition, param: usize) -> String {
    match condition {
        Condition::Version(_) => format!(" AND version = ${param}"),
        _ => String::new(),
    }
}

async fn check(session: &mut Session, key: &str, condition: Condition) -> Result<Option<Done>> {
    let sql = format!("SELECT version FROM {TABLE} WHERE key = $1 AND {LIVE}");
    let out = run(session, &sql, vec![Value::Text(key.into())]).await?;
    let version = returned_version(&out);
    let holds = match condition {
        Condition::Any => true,
        Condition::Absent => version.is_none(),
        Condition::Present => version.is_some(),
        Condition::Version(v) => version == Some(v),
    };
    Ok(holds.then_some(Done::Checked { version }))
}

fn returned_version(out: &Output) -> Option<i64> {
    match out.rows.first().and_then(|r| r.first()) {
        Some(Value::Integer(v)) => Some(*v),
        _ => None,
    }
}

/// Delete up to `limit` expired keys, each through its shard's leader (which checks the
/// expiry again against its own clock); answers how many went.
pub async fn reap(engine: &Arc<Engine>, limit: usize) -> Result<usize> {
    if !exists(engine) {
        return Ok(0);
    }
    let mut session = engine.session();
    let result = reap_in(&mut session, limit).await;
    session.close().await;
    result
}

async fn reap_in(session: &mut Session, limit: usize) -> Result<usize> {
    let sql = format!(
        "SELECT key FROM {TABLE} WHERE expires_at IS NOT NULL AND expires_at <= cairn_clock_us() \
         LIMIT {limit}"
    );
    let expired = run(session, &sql, vec![]).await?;
    let delete = format!(
        "DELETE FROM {TABLE} WHERE key = $1 AND expires_at IS NOT NULL \
         AND expires_at <= cairn_clock_us()"
    );
    let mut deleted = 0;
    for row in &expired.rows {
        let out = run(session, &delete, vec![row[0].clone()]).await?;
        deleted += out.rows_affected as usize;
    }
    Ok(deleted)
}

/// Delete expired keys in the background while the engine lives. Only the node leading
/// the meta group does it, so nodes do not repeat each other's work.
pub fn spawn_reaper(engine: &Arc<Engine>) {
    let engine = Arc::downgrade(engine);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(limits::KV_EXPIRY_INTERVAL).await;
            let Some(engine) = engine.upgrade() else {
                return;
            };
            if !engine.cluster.leads_meta() {
                continue;
            }
            match reap(&engine, limits::KV_EXPIRY_BATCH).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "expired keys deleted"),
                Err(e) => tracing::warn!(error = %e, "deleting expired keys failed"),
            }
        }
    });
}
