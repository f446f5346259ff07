//! The coordinator's own SQLite: in-memory databases where rows pulled from shards are
//! joined, grouped and sorted, statements without tables run, and statements are described.
//! It is the same engine as the replicas (same functions, same type affinities from the
//! same DDL), so a query merged here means what it means on one database.
//!
//! Invariant: nothing here is durable or replicated; a scratch database lives for one
//! statement (or, for describing, until the catalog changes).

use crate::catalog::{Catalog, Table};
use crate::error::{Error, Result};
use crate::limits;
use crate::storage::cancel::{Cancel, CancelOnDrop, Slot};
use crate::storage::replica::{self, Rows};
use rusqlite::types::Value;
use rusqlite::Connection;
use std::sync::{Arc, Mutex};

fn open() -> Result<Connection> {
    let conn = Connection::open_in_memory()?;
    conn.pragma_update(None, "foreign_keys", false)?;
    conn.pragma_update(None, "case_sensitive_like", true)?;
    crate::storage::functions::register(&conn)?;
    super::system::register_functions(&conn)?;
    Ok(conn)
}

/// Create `table` (columns and indexes) in `conn`.
fn create(conn: &Connection, table: &Table) -> Result<()> {
    for sql in &table.ddl {
        conn.execute_batch(sql)?;
    }
    Ok(())
}

fn create_indexes(conn: &Connection, table: &Table) -> Result<()> {
    for (_, sql) in &table.indexes {
        conn.execute_batch(sql)?;
    }
    Ok(())
}

/// The rows of one table, pulled from its shards.
pub struct Pulled {
    pub table: Table,
    pub rows: Vec<Vec<Value>>,
}

/// Run `work` on a fresh scratch database on a blocking thread, stopped by `cancel` or by
/// dropping the future (a cancelled or abandoned query does not keep a core busy).
async fn interruptible<R: Send + 'static>(
    cancel: &Cancel,
    work: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
) -> Result<R> {
    let dropped = Cancel::default();
    let guard = CancelOnDrop::new(dropped.clone());
    let tokens = [cancel.clone(), dropped];
    let result = tokio::task::spawn_blocking(move || {
        let mut conn = open()?;
        let slot = Slot::install(&mut conn)?;
        slot.watch(&tokens, || work(&conn))
    })
    .await
    .map_err(Error::internal)?;
    guard.defuse();
    result
}

/// Load `pulled` into a fresh database and run `sql` there.
pub async fn run_over(
    pulled: Vec<Pulled>,
    sql: String,
    params: Vec<Value>,
    cancel: &Cancel,
) -> Result<Rows> {
    interruptible(cancel, move |conn| {
        load_and_run(conn, &pulled, &sql, &params)
    })
    .await
}

/// Load `pulled` (one table), run `sql` (a modifying statement) over it, and return its
/// result and the table's rows afterwards.
pub async fn modify_and_read(
    pulled: Pulled,
    sql: String,
    params: Vec<Value>,
    cancel: &Cancel,
) -> Result<(Rows, Vec<Vec<Value>>)> {
    interruptible(cancel, move |conn| {
        let name = pulled.table.name.replace('"', "\"\"");
        let result = load_and_run(conn, std::slice::from_ref(&pulled), &sql, &params)?;
        let after = replica::run(conn, &format!("SELECT * FROM \"{name}\""), &[])?;
        Ok((result, after.rows))
    })
    .await
}

/// Run a query over PostgreSQL's system catalogs (`tables`, by their rewritten names),
/// generated from `catalog` in a fresh database.
pub async fn run_system(
    catalog: Arc<Catalog>,
    tables: Vec<String>,
    sql: String,
    params: Vec<Value>,
    cancel: &Cancel,
) -> Result<Rows> {
    interruptible(cancel, move |conn| {
        super::system::populate(conn, &catalog, &tables)?;
        replica::run(conn, &sql, &params)
    })
    .await
}

/// A subscription's row condition, evaluated on one row at a time: the row goes into a
/// private copy of its table (same DDL, so the same affinities and functions as on the
/// shards) and the translated query over that table says whether it matches.
pub struct RowFilter {
    conn: Connection,
    table: Table,
    /// `SELECT EXISTS (<the translated query>)`.
    check: String,
}

impl RowFilter {
    /// `query` is SQLite's `SELECT ... FROM <table> WHERE <condition>`.
    pub fn new(table: &Table, query: &str) -> Result<RowFilter> {
        let conn = open()?;
        create(&conn, table)?;
        let filter = RowFilter {
            conn,
            table: table.clone(),
            check: format!("SELECT EXISTS ({query})"),
        };
        filter.conn.prepare_cached(&filter.check)?;
        Ok(filter)
    }

    /// Whether the row with these columns and values matches. Columns the table no longer
    /// has are left out; columns it has and the row lacks take their defaults.
    pub fn matches(&self, columns: &[String], values: &[Value]) -> Result<bool> {
        let known: Vec<(&String, &Value)> = columns
            .iter()
            .zip(values)
            .filter(|(c, _)| self.table.columns.iter().any(|t| &t.name == *c))
            .collect();
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let insert = if known.is_empty() {
            format!("INSERT INTO {} DEFAULT VALUES", quote(&self.table.name))
        } else {
            format!(
                "INSERT INTO {} ({}) VALUES ({})",
                quote(&self.table.name),
                known
                    .iter()
                    .map(|(c, _)| quote(c))
                    .collect::<Vec<_>>()
                    .join(", "),
                (1..=known.len())
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let tx = self.conn.unchecked_transaction()?;
        tx.prepare_cached(&insert)?
            .execute(rusqlite::params_from_iter(known.iter().map(|(_, v)| *v)))?;
        let matched: bool = tx
            .prepare_cached(&self.check)?
            .query_row([], |r| r.get(0))?;
        drop(tx); // rolled back: the copy stays empty
        Ok(matched)
    }
}

/// Run a statement that names no table.
pub async fn run_alone(sql: String, params: Vec<Value>, cancel: &Cancel) -> Result<Rows> {
    interruptible(cancel, move |conn| replica::run(conn, &sql, &params)).await
}

fn load_and_run(conn: &Connection, pulled: &[Pulled], sql: &str, params: &[Value]) -> Result<Rows> {
    for p in pulled {
        create(conn, &p.table)?;
        if p.rows.is_empty() {
            continue;
        }
        let width = p.rows[0].len();
        let marks: Vec<String> = (1..=width).map(|i| format!("?{i}")).collect();
        let insert = format!(
            "INSERT INTO \"{}\" VALUES ({})",
            p.table.name.replace('"', "\"\""),
            marks.join(", ")
        );
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare(&insert)?;
            for row in &p.rows {
                stmt.execute(rusqlite::params_from_iter(row.iter()))?;
            }
        }
        tx.commit()?;
        create_indexes(conn, &p.table)?;
    }
    // Statistics let SQLite order the joins: without them it may pick an index on a
    // low-selectivity column and loop over most of a big table for each row of another
    // (seen: 50 s instead of well under a second for a three-table join of 200k rows).
    let rows: usize = pulled.iter().map(|p| p.rows.len()).sum();
    if pulled.len() > 1 && rows > limits::SCRATCH_ANALYZE_ROWS {
        conn.execute_batch("ANALYZE")?;
    }
    replica::run(conn, sql, params)
}

/// Describes statements against the catalog's schema, rebuilding it when the catalog
/// changes. Shared by a node's sessions.
#[derive(Default)]
pub struct Describer {
    schema: Mutex<Option<(Arc<Catalog>, Connection)>>,
}

impl Describer {
    /// The result columns `sql` would have. Blocking: call from `spawn_blocking`.
    pub fn describe(&self, catalog: &Arc<Catalog>, sql: &str) -> Result<Rows> {
        let mut schema = self.schema.lock().expect("describer lock poisoned");
        let fresh = match &*schema {
            Some((c, _)) => !Arc::ptr_eq(c, catalog),
            None => true,
        };
        if fresh {
            let conn = open()?;
            for t in catalog.tables() {
                create(&conn, t)?;
            }
            *schema = Some((catalog.clone(), conn));
        }
        let (_, conn) = schema.as_ref().expect("just built");
        replica::describe(conn, sql)
    }
}

/// Check that a table's DDL is valid SQLite, before any shard or the catalog sees it.
pub fn validate(tables: &[&Table], extra: &[&str]) -> Result<()> {
    let conn = open()?;
    for t in tables {
        create(&conn, t)?;
        create_indexes(&conn, t)?;
    }
    for sql in extra {
        conn.execute_batch(sql)?;
    }
    Ok(())
}

/// The CREATE TABLE statement that makes `table` as it is now (its CREATE TABLE with every
/// later ALTER TABLE folded in), as SQLite keeps it.
pub fn create_sql(table: &Table) -> Result<String> {
    let conn = open()?;
    create(&conn, table)?;
    conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        [&table.name],
        |r| r.get(0),
    )
    .map_err(Error::from)
}

/// How many rows a pull may bring to the coordinator, checked as rows arrive.
pub fn check_intermediate(rows: usize) -> Result<()> {
    if rows > limits::INTERMEDIATE_ROWS_MAX {
        return Err(Error::sql(
            crate::error::sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "the query needs more than {} rows from other shards at the coordinator; \
                 add filters on the distribution column or co-locate the joined tables",
                limits::INTERMEDIATE_ROWS_MAX
            ),
        ));
    }
    Ok(())
}
