//! Statements that change the catalog, run by the meta group's writer (inside a meta
//! transaction when several must apply together). Nothing else writes the meta tables.

use super::{Change, Colocation, Job, NodeRecord, Object, Shard, Table};
use crate::error::{Error, Result};
use crate::storage::replica::{Statement, StatementKind};
use rusqlite::types::Value;

fn dml(sql: &str, params: Vec<Value>) -> Statement {
    Statement {
        sql: sql.to_string(),
        params,
        kind: StatementKind::Dml,
        refs: Vec::new(),
        cancel: Default::default(),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_string(v)
        .map(Value::Text)
        .map_err(Error::internal)
}

pub fn put_node(n: &NodeRecord) -> Result<Statement> {
    Ok(dml(
        "INSERT OR REPLACE INTO _cairn_nodes (id, def) VALUES (?1, ?2)",
        vec![Value::Integer(n.id.0 as i64), json(n)?],
    ))
}

/// Replace shard `s` only if its replicas are still `expected` (the placement driver's
/// compare-and-set: a DDL job or another driver may have changed the shard meanwhile).
pub fn put_shard_if(s: &Shard, expected: &[crate::ids::NodeId]) -> Result<Statement> {
    Ok(dml(
        "UPDATE _cairn_shards SET def = ?2 WHERE id = ?1 AND json_extract(def, '$.replicas') = json(?3)",
        vec![Value::Integer(s.id.0 as i64), json(s)?, json(&expected)?],
    ))
}

/// Replace node `n`'s record only if its state is still `state` (lifecycle changes from any
/// node race the placement driver's).
pub fn put_node_if_state(n: &NodeRecord, state: &str) -> Result<Statement> {
    Ok(dml(
        "UPDATE _cairn_nodes SET def = ?2 WHERE id = ?1 AND coalesce(json_extract(def, '$.state'), 'active') = ?3",
        vec![
            Value::Integer(n.id.0 as i64),
            json(n)?,
            Value::Text(state.to_string()),
        ],
    ))
}

pub fn put_table(t: &Table) -> Result<Statement> {
    Ok(dml(
        "INSERT OR REPLACE INTO _cairn_tables (name, def) VALUES (?1, ?2)",
        vec![Value::Text(t.name.to_lowercase()), json(t)?],
    ))
}

pub fn delete_table(name: &str) -> Statement {
    dml(
        "DELETE FROM _cairn_tables WHERE name = ?1",
        vec![Value::Text(name.to_lowercase())],
    )
}

/// Retire colocation group `colocation` and its shards if no table (in any state) is on it
/// any more: the shards get tombstones in `_cairn_retired`, and each node then removes its
/// replicas of them. Conditional in SQL, so it is right whatever the caller's catalog says.
pub fn retire_if_unused(colocation: u64) -> Vec<Statement> {
    const UNUSED: &str =
        "NOT EXISTS (SELECT 1 FROM _cairn_tables WHERE json_extract(def, '$.colocation') = ?1)";
    let id = || vec![Value::Integer(colocation as i64)];
    vec![
        dml(
            &format!("INSERT OR IGNORE INTO _cairn_retired (id) SELECT id FROM _cairn_shards WHERE json_extract(def, '$.colocation') = ?1 AND {UNUSED}"),
            id(),
        ),
        dml(
            &format!("DELETE FROM _cairn_shards WHERE json_extract(def, '$.colocation') = ?1 AND {UNUSED}"),
            id(),
        ),
        dml(
            &format!("DELETE FROM _cairn_colocations WHERE id = ?1 AND {UNUSED}"),
            id(),
        ),
    ]
}

pub fn put_colocation(g: &Colocation) -> Result<Statement> {
    Ok(dml(
        "INSERT OR REPLACE INTO _cairn_colocations (id, def) VALUES (?1, ?2)",
        vec![Value::Integer(g.id as i64), json(g)?],
    ))
}

pub fn delete_colocation(id: u64) -> Statement {
    dml(
        "DELETE FROM _cairn_colocations WHERE id = ?1",
        vec![Value::Integer(id as i64)],
    )
}

pub fn put_shard(s: &Shard) -> Result<Statement> {
    Ok(dml(
        "INSERT OR REPLACE INTO _cairn_shards (id, def) VALUES (?1, ?2)",
        vec![Value::Integer(s.id.0 as i64), json(s)?],
    ))
}

pub fn put_job(j: &Job) -> Result<Statement> {
    Ok(dml(
        "INSERT OR REPLACE INTO _cairn_jobs (id, def) VALUES (?1, ?2)",
        vec![Value::Integer(j.id as i64), json(j)?],
    ))
}

pub fn delete_job(id: u64) -> Statement {
    dml(
        "DELETE FROM _cairn_jobs WHERE id = ?1",
        vec![Value::Integer(id as i64)],
    )
}

pub fn put_user(u: &crate::catalog::User) -> Result<Statement> {
    Ok(dml(
        "INSERT OR REPLACE INTO _cairn_users (name, def) VALUES (?1, ?2)",
        vec![Value::Text(u.name.to_lowercase()), json(u)?],
    ))
}

pub fn delete_user(name: &str) -> Statement {
    dml(
        "DELETE FROM _cairn_users WHERE name = ?1",
        vec![Value::Text(name.to_lowercase())],
    )
}

pub fn put_setting(key: &str, value: &str) -> Statement {
    dml(
        "INSERT OR REPLACE INTO _cairn_settings (key, value) VALUES (?1, ?2)",
        vec![Value::Text(key.into()), Value::Text(value.into())],
    )
}

/// The next free id of one of the id-keyed meta tables (read inside a meta transaction).
pub fn next_id(table: &str) -> Statement {
    dml(
        &format!("SELECT coalesce(max(id), 0) + 1 FROM {table}"),
        vec![],
    )
}

/// Reserve `count` values of sequence `name`: returns the first (read-then-write inside a
/// meta transaction).
pub fn sequence_next(name: &str) -> Statement {
    dml(
        "SELECT next FROM _cairn_sequences WHERE name = ?1",
        vec![Value::Text(name.into())],
    )
}

pub fn sequence_set(name: &str, next: i64) -> Statement {
    dml(
        "INSERT OR REPLACE INTO _cairn_sequences (name, next) VALUES (?1, ?2)",
        vec![Value::Text(name.into()), Value::Integer(next)],
    )
}

pub fn put_object(o: &Object) -> Result<Statement> {
    Ok(dml(
        "INSERT OR REPLACE INTO _cairn_objects (key, def) VALUES (?1, ?2)",
        vec![Value::Text(o.key()), json(o)?],
    ))
}

pub fn delete_object(key: &str) -> Statement {
    dml(
        "DELETE FROM _cairn_objects WHERE key = ?1",
        vec![Value::Text(key.to_string())],
    )
}

/// The statement that makes `change`.
pub fn change(change: &Change) -> Result<Statement> {
    match change {
        Change::PutTable(t) => put_table(t),
        Change::ForgetTable(name) => Ok(delete_table(name)),
        Change::PutColocation(g) => put_colocation(g),
        Change::PutObject(o) => put_object(o),
        Change::ForgetObject(key) => Ok(delete_object(key)),
        // Only the factor changes: the placement driver may be changing replicas meanwhile.
        Change::SetReplicationFactor { colocation, factor } => Ok(dml(
            "UPDATE _cairn_shards SET def = json_set(def, '$.replication_factor', ?2) WHERE json_extract(def, '$.colocation') = ?1",
            vec![
                Value::Integer(*colocation as i64),
                Value::Integer(*factor as i64),
            ],
        )),
        Change::SetShardReplicationFactor { shard, factor } => Ok(dml(
            "UPDATE _cairn_shards SET def = json_set(def, '$.replication_factor', ?2) WHERE id = ?1",
            vec![
                Value::Integer(shard.0 as i64),
                Value::Integer(*factor as i64),
            ],
        )),
    }
}
