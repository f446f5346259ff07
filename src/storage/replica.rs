//! One shard's replica: a SQLite file, the thread that owns its writable connection, and a
//! pool of read-only connections.
//!
//! Invariants:
//! - Only the replica thread writes the file. Speculative execution (the leader's writer) and
//!   applying committed entries both happen there, one after the other.
//! - `_cairn_state.applied` changes in the same SQLite transaction as the rows it covers.
//! - A committed entry that fails to apply stops the replica (the error reaches openraft as a
//!   storage error, which stops the group): replicas must never silently diverge.

use super::cancel::{Cancel, Slot};
use super::changeset::{self, Session};
use super::events::{self, EntryChanges, Recorder};
use crate::error::{Error, Result};
use crate::ids::ShardId;
use crate::limits;
use crate::replication::{Entry, LogId, Membership, Op};
use openraft::EntryPayload;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

/// Tables Cairn keeps inside every replica. Clients cannot name them (`sql::translate`
/// refuses `_cairn*` names). `_cairn_ddl` remembers which DDL jobs ran here, so a job driven
/// twice (by its coordinator and by the recovery on the meta leader) runs once.
///
/// Two-phase commit: `_cairn_prepared` holds the prepared, not yet resolved, parts of
/// cross-shard transactions; `_cairn_txns` the decisions of the transactions this shard
/// coordinates. `_cairn_staged` holds the parts of a commit too large for one Raft entry
/// until the entry that applies them.
/// The tables every replica keeps for itself (apply state, DDL steps run, two-phase commit).
/// Only Cairn's own code touches them, never a forwarded statement.
pub const INTERNAL_TABLES: [&str; 6] = [
    "_cairn_state",
    "_cairn_events",
    "_cairn_ddl",
    "_cairn_prepared",
    "_cairn_txns",
    "_cairn_staged",
];

/// Whether `sql` names one of a replica's internal tables (as a word, quoted or not; a
/// string literal does not count). SQL that cannot be tokenized counts as naming one.
pub fn names_internal_table(sql: &str) -> bool {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let dialect = sqlparser::dialect::GenericDialect {};
    match Tokenizer::new(&dialect, sql).tokenize() {
        Ok(tokens) => tokens.iter().any(|t| {
            matches!(t, Token::Word(w) if INTERNAL_TABLES.iter().any(|n| w.value.eq_ignore_ascii_case(n)))
        }),
        Err(_) => true,
    }
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS _cairn_state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS _cairn_ddl (id INTEGER PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS _cairn_prepared (
        txn INTEGER PRIMARY KEY, coordinator INTEGER NOT NULL, ops BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS _cairn_txns (txn INTEGER PRIMARY KEY, commit_ INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS _cairn_staged (
        id INTEGER NOT NULL, seq INTEGER NOT NULL, part BLOB NOT NULL, PRIMARY KEY (id, seq));
";

/// Called on the replica thread with the connection after the replica's contents changed
/// (opened, entries with data applied, snapshot restored). The meta group uses it to reload
/// the catalog.
pub type OnChange = Arc<dyn Fn(&Connection) + Send + Sync>;

/// How a replica is opened: extra internal tables and a change hook.
#[derive(Clone, Default)]
pub struct ReplicaOptions {
    /// Created (IF NOT EXISTS) when the file is opened, on every replica alike.
    pub schema: &'static str,
    pub on_change: Option<OnChange>,
    /// Keep change events for this window (data shards); None keeps none (the meta group).
    pub events: Option<events::Window>,
    /// Bytes per second a consistency check reads at most (`--check-rate`); None:
    /// `CONSISTENCY_CHECK_RATE`.
    pub check_rate: Option<u64>,
}

/// A column of a statement's result, as SQLite describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResultColumn {
    pub name: String,
    /// The table and column the value comes from, when it is a plain column reference.
    pub origin: Option<(String, String)>,
    pub decl_type: Option<String>,
}

/// What a statement produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    pub columns: Vec<ResultColumn>,
    pub rows: Vec<Vec<Value>>,
    /// Rows inserted, updated or deleted.
    pub changes: u64,
}

/// A statement ready for SQLite: translated text and bound parameter values.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
    pub kind: StatementKind,
    /// Reference-table shards whose local replicas the statement reads (attached to the
    /// connection it runs on, after catching them up with their leaders).
    pub refs: Vec<ShardId>,
    /// Stops the statement wherever it runs, if it has not taken effect yet (see
    /// [`super::cancel`]).
    pub cancel: Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StatementKind {
    /// Reads or writes rows; writes are captured in a changeset.
    Dml,
    /// Changes the schema; replicated as this SQL text.
    Ddl,
    /// Schema change of DDL job `id`: runs only if the job has not run on this replica yet.
    DdlOnce(u64),
    /// Undo step `id` of DDL job `job`: runs once, and only where a step of the job ran (a
    /// shard that refused the change, or never got it, has nothing to undo).
    DdlUndo { id: u64, job: u64 },
    /// Prepare only, to report the result columns; nothing runs.
    Describe,
    /// A client's `SAVEPOINT`, `ROLLBACK TO` or `RELEASE` inside its transaction, run as
    /// is (not wrapped in the per-statement savepoint).
    Savepoint,
}

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::internal(format!("opening {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // PostgreSQL's LIKE is case-sensitive; ILIKE is rewritten to lower() LIKE lower().
    conn.pragma_update(None, "case_sensitive_like", true)?;
    conn.set_prepared_statement_cache_capacity(128);
    super::functions::register(&conn)?;
    Ok(conn)
}

/// Run one statement on `conn`, collecting at most the result limits.
pub fn run(conn: &Connection, sql: &str, params: &[Value]) -> Result<Rows> {
    run_with(conn, sql, params, None)
}

/// [`run`], stopped by any of `watch`'s tokens through the connection's slot: a statement
/// that only reads at any moment, one that writes only before it starts (SQLite answers an
/// interrupted write by rolling back the whole transaction — in the writer, every statement
/// of its batch — so a write, once started, runs to its end).
pub fn run_with(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    watch: Option<(&Slot, &[Cancel])>,
) -> Result<Rows> {
    let result = run_inner(conn, sql, params, watch);
    match (result, watch) {
        (Err(e), Some(_)) if e.code() == crate::error::sqlstate::QUERY_CANCELED => {
            Err(super::cancel::cancelled())
        }
        (other, _) => other,
    }
}

fn run_inner(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    watch: Option<(&Slot, &[Cancel])>,
) -> Result<Rows> {
    let mut stmt = conn.prepare_cached(sql)?;
    let expected = stmt.parameter_count();
    // `?N` placeholders: a statement cut from a larger one (a pushed-down filter) may use only
    // the first few of the client's parameters.
    let params = params.get(..expected).unwrap_or(params);
    if params.len() != expected {
        return Err(Error::sql(
            crate::error::sqlstate::PROTOCOL_VIOLATION,
            format!(
                "statement has {expected} parameters but {} were supplied",
                params.len()
            ),
        ));
    }
    let columns = describe(conn, sql)?.columns;
    let _armed = match watch {
        Some((slot, tokens)) => {
            for t in tokens {
                t.check()?;
            }
            stmt.readonly().then(|| slot.arm(tokens))
        }
        None => None,
    };
    if columns.is_empty() {
        let changes = stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64;
        return Ok(Rows {
            columns,
            rows: Vec::new(),
            changes,
        });
    }
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    let mut columns = columns;
    let mut checked = false;
    let mut cursor = stmt.query(rusqlite::params_from_iter(params.iter()))?;
    while let Some(row) = cursor.next()? {
        if !checked {
            // A cached statement prepared before a schema change is compiled again by
            // SQLite at its first step: its columns may now differ from those described
            // before it (`SELECT *` after ADD COLUMN).
            checked = true;
            if recompiled(row.as_ref(), &columns) {
                columns = describe_fresh(conn, sql)?.columns;
            }
        }
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            let v: Value = row.get(i)?;
            bytes += match &v {
                Value::Text(s) => s.len(),
                Value::Blob(b) => b.len(),
                _ => 8,
            };
            values.push(v);
        }
        rows.push(values);
        if rows.len() > limits::RESULT_ROWS_MAX || bytes > limits::RESULT_BYTES_MAX {
            return Err(Error::sql(
                crate::error::sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "result exceeds {} rows or {} bytes; add a LIMIT or narrow the query",
                    limits::RESULT_ROWS_MAX,
                    limits::RESULT_BYTES_MAX
                ),
            ));
        }
    }
    drop(cursor);
    if !checked {
        // No row came: describe again if the statement was compiled again meanwhile, so
        // an empty result still names the columns the table has now.
        if recompiled(&stmt, &columns) {
            columns = describe_fresh(conn, sql)?.columns;
        }
    }
    let changes = if stmt.readonly() {
        0
    } else {
        rows.len() as u64
    };
    Ok(Rows {
        columns,
        rows,
        changes,
    })
}

/// Prepare `sql` and report its result columns without running it.
pub fn describe(conn: &Connection, sql: &str) -> Result<Rows> {
    let stmt = conn.prepare_cached(sql)?;
    describe_statement(&stmt)
}

/// Whether `stmt` now has other result columns than `columns` described before it ran
/// (SQLite compiled it again after a schema change).
fn recompiled(stmt: &rusqlite::Statement<'_>, columns: &[ResultColumn]) -> bool {
    stmt.column_count() != columns.len()
        || columns
            .iter()
            .enumerate()
            .any(|(i, c)| stmt.column_name(i).map_or(true, |n| n != c.name))
}

/// [`describe`] from a statement prepared now, not the cache (after a schema change).
fn describe_fresh(conn: &Connection, sql: &str) -> Result<Rows> {
    describe_statement(&conn.prepare(sql)?)
}

fn describe_statement(stmt: &rusqlite::Statement<'_>) -> Result<Rows> {
    let columns = stmt
        .columns_with_metadata()
        .zip(stmt.columns())
        .map(|(c, d)| ResultColumn {
            name: c.name().to_string(),
            origin: match (c.table_name(), c.origin_name()) {
                (Some(t), Some(o)) => Some((t.to_string(), o.to_string())),
                _ => None,
            },
            decl_type: d.decl_type().map(str::to_string),
        })
        .collect();
    Ok(Rows {
        columns,
        rows: Vec::new(),
        changes: 0,
    })
}

/// The replica file and its writable connection. Lives on the replica thread.
pub struct Replica {
    conn: Connection,
    /// The writable connection's cancel slot (statements of the writer's batches and
    /// transactions).
    slot: Slot,
    shard: ShardId,
    on_change: Option<OnChange>,
    /// Applied entries that could not be recorded yet because a speculative transaction was
    /// open (only blank and membership entries; see `apply`). Recorded with the next write.
    pending: RefCell<Option<(LogId, Membership)>>,
    /// Change events, when this replica keeps them.
    recorder: RefCell<Option<Recorder>>,
    /// The commit time (Unix µs) of the last entry applied that carried one (for entries of
    /// older logs that carry none); shared with the handle, which reports it (replication lag
    /// in time is the leader's minus a follower's).
    last_time: Arc<std::sync::atomic::AtomicU64>,
    /// Consistency checks applied here, newest last, at most `CHECKS_KEPT`; each one's
    /// checksum is taken on a thread of its own (see `start_check`).
    checks: Arc<Mutex<std::collections::VecDeque<CheckRun>>>,
    /// Bytes per second a check reads at most.
    check_rate: u64,
    /// Debug builds' planted divergence applies to this replica (see `planted.rs`).
    planted_divergence: bool,
}

/// Consistency check results a replica keeps (a checker reads its own within seconds).
const CHECKS_KEPT: usize = 64;

/// A consistency check applied on this replica: its id, the log index it was applied at,
/// and the checksum of the rows as of that index once computed.
#[derive(Debug, Clone, Copy)]
struct CheckRun {
    id: u64,
    index: u64,
    sum: Option<u64>,
}

/// A consistency check on a replica: the log index it was applied at, and the checksum of
/// the rows as of that index once it has been taken.
pub type CheckState = (u64, Option<u64>);

/// Whether `entry` carries a consistency check.
fn carries_check(entry: &Entry) -> bool {
    matches!(&entry.payload, EntryPayload::Normal(batch)
        if batch.ops.iter().any(|op| matches!(op, Op::Check { .. })))
}

/// Keeps a scan at a rate in bytes per second: after each chunk it sleeps until the bytes
/// read so far are due.
struct Pacer {
    rate: u64,
    started: std::time::Instant,
    bytes: u64,
    unpaced: u64,
}

impl Pacer {
    fn new(rate: u64) -> Pacer {
        Pacer {
            rate: rate.max(1),
            started: std::time::Instant::now(),
            bytes: 0,
            unpaced: 0,
        }
    }

    /// How long to wait, `elapsed` after the start, with `bytes` read at `rate`.
    fn wait(rate: u64, bytes: u64, elapsed: std::time::Duration) -> std::time::Duration {
        std::time::Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64)
            .saturating_sub(elapsed)
    }

    fn read(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        self.unpaced += bytes as u64;
        // Sleep in steps of at most a tenth of a second's worth (and 64 KiB).
        if self.unpaced >= (self.rate / 10).clamp(1, 64 * 1024) {
            self.unpaced = 0;
            let wait = Pacer::wait(self.rate, self.bytes, self.started.elapsed());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
    }
}

impl Replica {
    pub fn open(path: &Path, shard: ShardId, options: &ReplicaOptions) -> Result<Replica> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
        }
        let mut conn = open_connection(path, OpenFlags::default())?;
        let slot = Slot::install(&mut conn)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::internal(format!(
                "{}: WAL mode refused ({mode})",
                path.display()
            )));
        }
        // NORMAL, not OFF: in WAL mode commits still do not fsync (the Raft log is the
        // durable copy), but checkpoints do, so a power cut loses recent transactions —
        // replayed from the log — and never leaves a half-checkpointed, corrupt file.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(options.schema)?;
        let recorder = options
            .events
            .map(|window| Recorder::open(&conn, window))
            .transpose()?;
        let replica = Replica {
            conn,
            slot,
            shard,
            on_change: options.on_change.clone(),
            pending: RefCell::new(None),
            recorder: RefCell::new(recorder),
            last_time: Default::default(),
            checks: Default::default(),
            check_rate: options
                .check_rate
                .unwrap_or(limits::CONSISTENCY_CHECK_RATE)
                .max(1),
            // Only a replica the shard was created with (a copy placed later is named
            // `sN.eM`): so a divergent copy, once replaced, is healthy.
            planted_divergence: crate::planted::active("replica-divergence")
                && !shard.is_meta()
                && !path.to_string_lossy().contains(".e"),
        };
        replica.changed();
        Ok(replica)
    }

    fn changed(&self) {
        if let Some(hook) = &self.on_change {
            hook(&self.conn);
        }
    }

    fn read_state<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT value FROM _cairn_state WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?;
        match bytes {
            None => Ok(None),
            Some(b) => postcard::from_bytes(&b)
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("{}: {key}: {e}", self.shard))),
        }
    }

    fn write_state<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = postcard::to_stdvec(value).map_err(Error::internal)?;
        self.conn.execute(
            "INSERT OR REPLACE INTO _cairn_state (key, value) VALUES (?1, ?2)",
            params![key, bytes],
        )?;
        Ok(())
    }

    /// The last applied log id and membership, as openraft needs them on start.
    pub fn applied_state(&self) -> Result<(Option<LogId>, Membership)> {
        if let Some((log_id, membership)) = &*self.pending.borrow() {
            return Ok((Some(*log_id), membership.clone()));
        }
        let applied = self.read_state::<LogId>("applied")?;
        let membership = self
            .read_state::<Membership>("membership")?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    /// Apply committed entries, in one SQLite transaction with the new applied id — or one
    /// up to each entry carrying a consistency check, so the check can read the rows as of
    /// its own entry while the rest are applied (`start_check`).
    /// `in_txn` says whether a speculative transaction is open on the connection; then only
    /// entries without data may arrive (the leader's writer waits for its own proposals).
    fn apply(&self, entries: &[Entry], in_txn: bool) -> Result<Vec<u64>> {
        let mut refused = Vec::new();
        let mut rest = entries;
        while !rest.is_empty() {
            let cut = rest
                .iter()
                .position(carries_check)
                .map_or(rest.len(), |i| i + 1);
            let (now, later) = rest.split_at(cut);
            let checks = self.apply_run(now, in_txn, &mut refused)?;
            for (id, index) in checks {
                self.start_check(id, index)?;
            }
            rest = later;
        }
        Ok(refused)
    }

    /// Apply `entries` in one SQLite transaction; the consistency checks among them are
    /// returned (id, log index), to be started once it is committed, and the indexes of the
    /// entries refused added to `refused`: an entry whose `Op::Base` is older than the last
    /// entry that changed rows (`last_write`) applies nothing — on every replica alike,
    /// since both come from the log.
    fn apply_run(
        &self,
        entries: &[Entry],
        in_txn: bool,
        refused: &mut Vec<u64>,
    ) -> Result<Vec<(u64, u64)>> {
        let mut checks = Vec::new();
        let Some(last) = entries.last() else {
            return Ok(checks);
        };
        let (_, mut membership) = self.applied_state()?;
        let has_data = entries
            .iter()
            .any(|e| matches!(e.payload, EntryPayload::Normal(_)));
        for entry in entries {
            if let EntryPayload::Membership(m) = &entry.payload {
                membership = Membership::new(Some(entry.log_id), m.clone());
            }
        }
        if in_txn && !has_data {
            *self.pending.borrow_mut() = Some((last.log_id, membership));
            return Ok(checks);
        }
        assert!(
            !in_txn,
            "{}: data entries applied while a speculative transaction is open",
            self.shard
        );
        let tx = self.conn.unchecked_transaction()?;
        let mut last_write = self.read_state::<u64>("last_write")?.unwrap_or(0);
        for entry in entries {
            if let EntryPayload::Normal(batch) = &entry.payload {
                let base = batch.ops.iter().find_map(|op| match op {
                    Op::Base { index } => Some(*index),
                    _ => None,
                });
                if base.is_some_and(|base| base < last_write) {
                    tracing::warn!(
                        shard = %self.shard,
                        entry = %entry.log_id,
                        base = base.unwrap_or(0),
                        last_write,
                        "refusing an entry computed on a state a later entry changed"
                    );
                    refused.push(entry.log_id.index);
                    continue;
                }
                if batch.ops.iter().any(Op::writes_rows) {
                    last_write = entry.log_id.index;
                }
                let mut changes = EntryChanges::default();
                for op in &batch.ops {
                    if let Op::Time(t) = op {
                        self.last_time
                            .store(*t, std::sync::atomic::Ordering::Relaxed);
                    }
                    if self.planted_divergence
                        && matches!(op, Op::Changeset(_))
                        && entry.log_id.index % 5 == 0
                    {
                        continue;
                    }
                    if let Op::Check { id } = op {
                        checks.push((*id, entry.log_id.index));
                        continue;
                    }
                    self.apply_op(&tx, op, None, &mut changes).map_err(|e| {
                        Error::Corrupt(format!("{}: applying {}: {e}", self.shard, entry.log_id))
                    })?;
                }
                if let Some(recorder) = self.recorder.borrow_mut().as_mut() {
                    recorder
                        .record(
                            &tx,
                            entry.log_id.index,
                            self.last_time.load(std::sync::atomic::Ordering::Relaxed),
                            changes,
                        )
                        .map_err(|e| {
                            Error::Corrupt(format!(
                                "{}: recording the changes of {}: {e}",
                                self.shard, entry.log_id
                            ))
                        })?;
                }
            }
        }
        self.write_state("applied", &last.log_id)?;
        self.write_state("membership", &membership)?;
        self.write_state("last_write", &last_write)?;
        tx.commit()?;
        *self.pending.borrow_mut() = None;
        if has_data {
            self.changed();
        }
        Ok(checks)
    }

    /// Consistency check `id`, applied at `index` (the last entry committed): pin the rows
    /// as they are now in a read transaction of their own (WAL mode keeps that view while
    /// later entries are applied), then take their checksum on another thread at
    /// `check_rate` bytes per second — a check never holds up the log, nor competes with
    /// clients for the disk at full speed.
    fn start_check(&self, id: u64, index: u64) -> Result<()> {
        let path = self
            .conn
            .path()
            .ok_or_else(|| Error::internal("a replica without a file"))?
            .to_string();
        let reader = open_connection(Path::new(&path), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        reader.execute_batch("BEGIN")?;
        // The first read starts the read transaction: from here on it sees this index.
        reader.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        {
            let mut checks = self.checks.lock().expect("checks lock");
            if checks.len() >= CHECKS_KEPT {
                checks.pop_front();
            }
            checks.push_back(CheckRun {
                id,
                index,
                sum: None,
            });
        }
        let (checks, rate, shard) = (self.checks.clone(), self.check_rate, self.shard);
        let spawned = std::thread::Builder::new()
            .name(format!("cairn-check-{shard}"))
            .spawn(move || {
                let mut pacer = Pacer::new(rate);
                let sum = Replica::checksum_rows_paced(&reader, false, Some(&mut pacer));
                let _ = reader.execute_batch("COMMIT");
                let mut checks = checks.lock().expect("checks lock");
                match sum {
                    Ok(sum) => {
                        if let Some(run) = checks.iter_mut().find(|c| c.id == id) {
                            run.sum = Some(sum);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%shard, index, error = %e, "consistency check failed here");
                        checks.retain(|c| c.id != id);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(%shard, index, error = %e, "cannot start a consistency check");
            self.checks
                .lock()
                .expect("checks lock")
                .retain(|c| c.id != id);
        }
        Ok(())
    }

    /// Apply one committed op inside the entry's SQLite transaction, adding the rows it
    /// changes to `changes` when this replica keeps change events. `txn` is the cross-shard
    /// transaction whose resolution applies it, if any.
    fn apply_op(
        &self,
        tx: &rusqlite::Transaction<'_>,
        op: &Op,
        txn: Option<u64>,
        changes: &mut EntryChanges,
    ) -> Result<()> {
        match op {
            Op::Changeset(bytes) => match self.recorder.borrow_mut().as_mut() {
                Some(recorder) => {
                    let mut rows = Vec::new();
                    changeset::apply_capturing(tx, bytes, &mut rows)?;
                    recorder.add(tx, changes, txn, rows)?;
                }
                None => changeset::apply(tx, bytes)?,
            },
            Op::Ddl(sql) => {
                tx.execute_batch(sql)?;
                changes.ddl();
                if let Some(recorder) = self.recorder.borrow_mut().as_mut() {
                    recorder.schema_changed();
                }
            }
            Op::Time(_) | Op::Check { .. } | Op::Base { .. } => {}
            Op::Prepare {
                txn,
                coordinator,
                ops,
            } => {
                let bytes = postcard::to_stdvec(ops).map_err(Error::internal)?;
                tx.execute(
                    "INSERT OR REPLACE INTO _cairn_prepared (txn, coordinator, ops) VALUES (?1, ?2, ?3)",
                    params![*txn as i64, coordinator.0 as i64, bytes],
                )?;
            }
            Op::Decide { txn, commit } => {
                tx.execute(
                    "INSERT OR IGNORE INTO _cairn_txns (txn, commit_) VALUES (?1, ?2)",
                    params![*txn as i64, *commit as i64],
                )?;
            }
            Op::Resolve { txn, commit } => {
                let prepared: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT ops FROM _cairn_prepared WHERE txn = ?1",
                        [*txn as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(bytes) = prepared {
                    if *commit {
                        let ops: Vec<Op> = postcard::from_bytes(&bytes)
                            .map_err(|e| Error::Corrupt(format!("prepared {txn}: {e}")))?;
                        for op in &ops {
                            self.apply_op(tx, op, Some(*txn), changes)?;
                        }
                    }
                    tx.execute("DELETE FROM _cairn_prepared WHERE txn = ?1", [*txn as i64])?;
                    tx.execute("DELETE FROM _cairn_staged WHERE id = ?1", [*txn as i64])?;
                }
            }
            Op::Stage { id, seq, part } => {
                tx.execute(
                    "INSERT OR REPLACE INTO _cairn_staged (id, seq, part) VALUES (?1, ?2, ?3)",
                    params![*id as i64, *seq as i64, part],
                )?;
            }
            Op::Staged { id } => {
                let mut bytes = Vec::new();
                {
                    let mut stmt =
                        tx.prepare("SELECT part FROM _cairn_staged WHERE id = ?1 ORDER BY seq")?;
                    let mut rows = stmt.query([*id as i64])?;
                    while let Some(row) = rows.next()? {
                        let part: Vec<u8> = row.get(0)?;
                        bytes.extend_from_slice(&part);
                    }
                }
                let ops: Vec<Op> = postcard::from_bytes(&bytes)
                    .map_err(|e| Error::Corrupt(format!("staged {id}: {e}")))?;
                tx.execute("DELETE FROM _cairn_staged WHERE id = ?1", [*id as i64])?;
                for op in &ops {
                    self.apply_op(tx, op, txn, changes)?;
                }
            }
            Op::Forget { txns } => {
                let mut delete = tx.prepare_cached("DELETE FROM _cairn_txns WHERE txn = ?1")?;
                for txn in txns {
                    delete.execute([*txn as i64])?;
                }
            }
            Op::DropStaged => {
                tx.execute(
                    "DELETE FROM _cairn_staged WHERE id NOT IN (SELECT txn FROM _cairn_prepared)",
                    [],
                )?;
            }
        }
        Ok(())
    }

    /// Replace this replica's contents with a snapshot file, atomically (one SQLite write
    /// transaction through the backup API; readers see the old or the new state).
    fn restore_from(&mut self, snapshot: &Path) -> Result<()> {
        self.conn
            .restore(
                rusqlite::MAIN_DB,
                snapshot,
                None::<fn(rusqlite::backup::Progress)>,
            )
            .map_err(|e| {
                Error::internal(format!(
                    "{}: restoring snapshot {}: {e}",
                    self.shard,
                    snapshot.display()
                ))
            })?;
        *self.pending.get_mut() = None;
        if let Some(recorder) = self.recorder.get_mut() {
            recorder.reload(&self.conn)?;
        }
        self.changed();
        Ok(())
    }

    /// (applied index, checksum) read on the replica thread: see `ReplicaHandle::checksum`.
    fn consistent_checksum(&self) -> Result<(u64, u64)> {
        let index = self.applied_state()?.0.map(|l| l.index).unwrap_or(0);
        let path = self
            .conn
            .path()
            .ok_or_else(|| Error::internal("a replica without a file"))?
            .to_string();
        let reader = open_connection(Path::new(&path), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        reader.execute_batch("BEGIN")?;
        let sum = Replica::checksum(&reader);
        let _ = reader.execute_batch("COMMIT");
        Ok((index, sum?))
    }

    /// A checksum of every user table's rows, for comparing replicas in tests and checks.
    pub fn checksum(conn: &Connection) -> Result<u64> {
        Replica::checksum_rows(conn, true)
    }

    /// A checksum of the tables' rows; change events only `with_events` (each node keeps
    /// its own window of them, so consistency checks leave them out).
    fn checksum_rows(conn: &Connection, with_events: bool) -> Result<u64> {
        Replica::checksum_rows_paced(conn, with_events, None)
    }

    /// `checksum_rows`, reading at most as fast as `pacer` allows.
    fn checksum_rows_paced(
        conn: &Connection,
        with_events: bool,
        mut pacer: Option<&mut Pacer>,
    ) -> Result<u64> {
        let mut tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cairn_state' ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !with_events {
            tables.retain(|t| t != "_cairn_events");
        }
        tables.sort();
        let mut hash = Fnv::default();
        for table in tables {
            hash.write(table.as_bytes());
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT * FROM \"{}\" ORDER BY 1, 2",
                    table.replace('"', "\"\"")
                ))
                .or_else(|_| {
                    conn.prepare(&format!(
                        "SELECT * FROM \"{}\" ORDER BY 1",
                        table.replace('"', "\"\"")
                    ))
                })?;
            let n = stmt.column_count();
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let mut bytes = 0;
                for i in 0..n {
                    match row.get::<_, Value>(i)? {
                        Value::Null => hash.write(b"N"),
                        Value::Integer(v) => hash.write(&v.to_le_bytes()),
                        Value::Real(v) => hash.write(&v.to_bits().to_le_bytes()),
                        Value::Text(s) => {
                            bytes += s.len();
                            hash.write(s.as_bytes())
                        }
                        Value::Blob(b) => {
                            bytes += b.len();
                            hash.write(&b)
                        }
                    }
                    bytes += 8;
                }
                if let Some(pacer) = pacer.as_deref_mut() {
                    pacer.read(bytes);
                }
            }
        }
        Ok(hash.0)
    }
}

/// FNV-1a, for checksums that must not change between builds or platforms.
#[derive(Debug)]
struct Fnv(u64);
impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf29ce484222325)
    }
}
impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x100000001b3);
    }
}

/// Snapshot a replica file into `dest` from a read transaction (consistent at one applied
/// index; writers go on). Returns the applied log id and membership the snapshot holds.
pub fn snapshot_to(source: &Path, dest: &Path) -> Result<(Option<LogId>, Membership)> {
    let conn = open_connection(source, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let _ = std::fs::remove_file(dest);
    conn.execute("VACUUM INTO ?1", [dest.to_string_lossy()])?;
    // The log is purged behind a snapshot once it is built: it must be on disk first.
    super::durable::sync_file(dest)
        .map_err(|e| Error::internal(format!("syncing {}: {e}", dest.display())))?;
    snapshot_state(dest)
}

/// The applied log id and membership recorded in a snapshot file.
pub fn snapshot_state(path: &Path) -> Result<(Option<LogId>, Membership)> {
    let conn = open_connection(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let read = |key: &str| -> Result<Option<Vec<u8>>> {
        Ok(conn
            .query_row(
                "SELECT value FROM _cairn_state WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?)
    };
    let applied = read("applied")?
        .map(|b| postcard::from_bytes(&b))
        .transpose()
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    let membership = read("membership")?
        .map(|b| postcard::from_bytes(&b))
        .transpose()
        .map_err(|e| Error::Corrupt(e.to_string()))?
        .unwrap_or_default();
    Ok((applied, membership))
}

/// Read-only connections serving queries outside transactions, each with its cancel slot.
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<(Connection, Slot)>>,
}

impl ReadPool {
    pub fn new(path: &Path) -> ReadPool {
        ReadPool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Run `f` on a read-only connection (on the calling thread: call from `spawn_blocking`).
    /// A connection comes back to the pool only as it was taken: no transaction open, nothing
    /// attached (a failure half-way through `f` must not hand the next reader a connection
    /// still attached to another replica).
    pub fn with<R>(&self, f: impl FnOnce(&Connection, &Slot) -> Result<R>) -> Result<R> {
        let conn = self.idle.lock().expect("pool lock poisoned").pop();
        let (conn, slot) = match conn {
            Some(c) => c,
            None => {
                let mut c = open_connection(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.pragma_update(None, "query_only", true)?;
                let slot = Slot::install(&mut c)?;
                (c, slot)
            }
        };
        let result = f(&conn, &slot);
        // Only a failure part way can leave a database attached (`read_attached` detaches
        // after every statement that ran), so only then is it worth asking.
        let clean = conn.is_autocommit() && (result.is_ok() || attached_count(&conn) == Some(1));
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        if idle.len() < limits::READ_CONNECTIONS_MAX && clean {
            idle.push((conn, slot));
        }
        result
    }
}

/// Databases attached to `conn`, `main` included.
fn attached_count(conn: &Connection) -> Option<usize> {
    conn.prepare("PRAGMA database_list")
        .ok()?
        .query_map([], |_| Ok(()))
        .ok()
        .map(|rows| rows.count())
}

/// Each statement's result, and the ops that replicate the successful ones.
pub type BatchOutcome = (Vec<Result<Rows>>, Vec<Op>);

/// Requests served by the replica thread.
enum Command {
    AppliedState(oneshot::Sender<Result<(Option<LogId>, Membership)>>),
    CheckResult(u64, oneshot::Sender<Result<Option<CheckState>>>),
    Apply(Vec<Entry>, oneshot::Sender<Result<Vec<u64>>>),
    /// Run statements in one speculative transaction, each in its own savepoint; return each
    /// result and the ops to replicate, then roll back.
    ExecBatch(Vec<Statement>, oneshot::Sender<Result<BatchOutcome>>),
    Begin(oneshot::Sender<Result<()>>),
    Exec(Statement, oneshot::Sender<Result<Rows>>),
    /// Take the open transaction's ops and roll it back (`commit` proposes them).
    Finish(oneshot::Sender<Result<Vec<Op>>>),
    Rollback(oneshot::Sender<()>),
    Restore(PathBuf, oneshot::Sender<Result<()>>),
    Checksum(oneshot::Sender<Result<(u64, u64)>>),
}

/// The async face of a replica thread. Cheap to clone.
#[derive(Clone)]
pub struct ReplicaHandle {
    tx: mpsc::SyncSender<Command>,
    pub path: PathBuf,
    pub shard: ShardId,
    pub reads: Arc<ReadPool>,
    /// Commit time (Unix µs) of the last entry applied that carried one; 0 before any has
    /// been applied since the replica opened.
    pub applied_time: Arc<std::sync::atomic::AtomicU64>,
}

impl ReplicaHandle {
    /// Open the replica at `path` and start its thread.
    pub fn start(path: &Path, shard: ShardId, options: &ReplicaOptions) -> Result<ReplicaHandle> {
        let replica = Replica::open(path, shard, options)?;
        let (tx, rx) = mpsc::sync_channel(limits::REPLICA_QUEUE_MAX);
        let applied_time = replica.last_time.clone();
        std::thread::Builder::new()
            .name(format!("replica-{shard}"))
            .spawn(move || thread_main(replica, rx))
            .map_err(|e| Error::internal(format!("spawning replica thread: {e}")))?;
        Ok(ReplicaHandle {
            tx,
            path: path.to_path_buf(),
            shard,
            reads: Arc::new(ReadPool::new(path)),
            applied_time,
        })
    }

    /// Bytes of the replica's files on disk (the database and its write-ahead log).
    pub fn disk_bytes(&self) -> u64 {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        [self.path.as_os_str(), wal.as_os_str()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.clone();
        let cmd = make(reply);
        // The queue is bounded; a full queue blocks this caller only (backpressure).
        tokio::task::spawn_blocking(move || tx.send(cmd))
            .await
            .map_err(Error::internal)?
            .map_err(|_| Error::Unavailable(format!("replica {} stopped", self.shard)))?;
        rx.await
            .map_err(|_| Error::Unavailable(format!("replica {} stopped", self.shard)))
    }

    pub async fn applied_state(&self) -> Result<(Option<LogId>, Membership)> {
        self.call(Command::AppliedState).await?
    }
    /// Apply committed entries; the log indexes of those refused (see `Op::Base`).
    pub async fn apply(&self, entries: Vec<Entry>) -> Result<Vec<u64>> {
        self.call(|r| Command::Apply(entries, r)).await?
    }
    pub async fn exec_batch(&self, stmts: Vec<Statement>) -> Result<BatchOutcome> {
        self.call(|r| Command::ExecBatch(stmts, r)).await?
    }
    pub async fn begin(&self) -> Result<()> {
        self.call(Command::Begin).await?
    }
    pub async fn exec(&self, stmt: Statement) -> Result<Rows> {
        self.call(|r| Command::Exec(stmt, r)).await?
    }
    pub async fn finish(&self) -> Result<Vec<Op>> {
        self.call(Command::Finish).await?
    }
    pub async fn rollback(&self) -> Result<()> {
        self.call(Command::Rollback).await
    }
    pub async fn restore(&self, snapshot: PathBuf) -> Result<()> {
        self.call(|r| Command::Restore(snapshot, r)).await?
    }
    /// The applied log index and a checksum of every user table's committed rows: a
    /// consistent pair, computed on the replica thread (no entry is applied meanwhile) from
    /// a read transaction (never seeing a speculative transaction open on the writer's
    /// connection). The index includes entries applied while such a transaction was open
    /// (they carry no rows, see `Replica::apply`).
    pub async fn checksum(&self) -> Result<(u64, u64)> {
        self.call(Command::Checksum).await?
    }

    /// Consistency check `id` on this replica, once it has applied it: the log index it was
    /// applied at and the checksum of the rows as of that index (None while it is taken).
    pub async fn check_result(&self, id: u64) -> Result<Option<CheckState>> {
        self.call(|reply| Command::CheckResult(id, reply)).await?
    }

    /// Run a read-only query on a pooled connection. Dropping the returned future (a
    /// cancelled query) interrupts SQLite, so no abandoned query keeps running — including
    /// one cancelled before its thread has started.
    pub async fn read(&self, stmt: Statement) -> Result<Rows> {
        self.read_attached(stmt, Vec::new()).await
    }

    /// The one integer `sql` (an internal count) answers; `what` names it in errors.
    async fn count(&self, sql: &str, what: &str) -> Result<u64> {
        let rows = self
            .read(Statement {
                sql: sql.into(),
                params: Vec::new(),
                kind: StatementKind::Dml,
                refs: Vec::new(),
                cancel: Default::default(),
            })
            .await?;
        match rows.rows.first().and_then(|r| r.first()) {
            Some(rusqlite::types::Value::Integer(n)) => Ok(*n as u64),
            other => Err(Error::internal(format!("counting {what}: {other:?}"))),
        }
    }

    /// Two-phase commit state kept here: prepared parts and decision records. A retired
    /// shard's replica is removed only once both are gone (a participant may still ask).
    pub async fn two_phase_records(&self) -> Result<u64> {
        self.count(
            "SELECT (SELECT count(*) FROM _cairn_prepared) + (SELECT count(*) FROM _cairn_txns)",
            "two-phase commit records",
        )
        .await
    }

    /// Prepared parts of two-phase commits not yet resolved here (after faults heal, every
    /// one is resolved by its session or by the shard's leader: a part left over is a bug).
    pub async fn prepared_count(&self) -> Result<u64> {
        self.count("SELECT count(*) FROM _cairn_prepared", "prepared parts")
            .await
    }

    /// This replica's change events from `after` on, about `max_bytes` of them (see
    /// [`events::read`]).
    pub async fn events(&self, after: events::Position, max_bytes: usize) -> Result<events::Page> {
        let reads = self.reads.clone();
        tokio::task::spawn_blocking(move || reads.with(|c, _| events::read(c, after, max_bytes)))
            .await
            .map_err(Error::internal)?
    }

    /// Like [`ReplicaHandle::read`], also answering the applied index the rows are as of
    /// (both from one read transaction): where a stream of this shard's changes picks up
    /// after these rows.
    pub async fn read_at(&self, stmt: Statement) -> Result<(Rows, u64)> {
        let reads = self.reads.clone();
        let dropped = Cancel::default();
        let guard = super::cancel::CancelOnDrop::new(dropped.clone());
        let result = tokio::task::spawn_blocking(move || {
            reads.with(|c, slot| {
                let tx = c.unchecked_transaction()?;
                let applied = events::applied(&tx)?;
                let tokens = [stmt.cancel.clone(), dropped];
                let rows = run_with(&tx, &stmt.sql, &stmt.params, Some((slot, &tokens)))?;
                drop(tx);
                Ok((rows, applied))
            })
        })
        .await
        .map_err(Error::internal)?;
        guard.defuse();
        result
    }

    /// Each user table here with its rows and bytes (its indexes included), counted from
    /// the b-tree pages (`dbstat`) rather than the rows: a walk of the pages' headers.
    pub async fn table_sizes(&self) -> Result<Vec<(String, u64, u64)>> {
        let reads = self.reads.clone();
        tokio::task::spawn_blocking(move || {
            reads.with(|c, _| {
                let mut stmt = c.prepare(
                    "SELECT s.tbl_name,
                            sum(CASE WHEN d.name = s.tbl_name AND d.pagetype = 'leaf'
                                THEN d.ncell ELSE 0 END),
                            sum(d.pgsize)
                     FROM dbstat d JOIN sqlite_schema s ON s.name = d.name
                     WHERE s.tbl_name NOT LIKE '!_cairn!_%' ESCAPE '!'
                       AND s.tbl_name NOT LIKE 'sqlite!_%' ESCAPE '!'
                     GROUP BY s.tbl_name",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?.max(0) as u64,
                        r.get::<_, i64>(2)?.max(0) as u64,
                    ))
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
        .await
        .map_err(Error::internal)?
    }

    /// Like [`ReplicaHandle::read`], with other replica files attached (read-only) under the
    /// given schema names for the statement: unqualified table names not found here are
    /// found there (reference tables joined inside a shard).
    pub async fn read_attached(
        &self,
        stmt: Statement,
        attach: Vec<(String, PathBuf)>,
    ) -> Result<Rows> {
        let reads = self.reads.clone();
        // Dropping this future (a query abandoned because another part of it failed) stops
        // the statement too.
        let dropped = Cancel::default();
        let guard = super::cancel::CancelOnDrop::new(dropped.clone());
        let result = tokio::task::spawn_blocking(move || {
            reads.with(|c, slot| {
                // The pool's connections are read-only, and so is what they attach.
                for (name, path) in &attach {
                    c.execute(
                        "ATTACH DATABASE ?1 AS ?2",
                        rusqlite::params![path.to_string_lossy(), name],
                    )?;
                }
                let tokens = [stmt.cancel.clone(), dropped];
                let result = match stmt.kind {
                    StatementKind::Describe => describe(c, &stmt.sql),
                    _ => run_with(c, &stmt.sql, &stmt.params, Some((slot, &tokens))),
                };
                for (name, _) in &attach {
                    c.execute("DETACH DATABASE ?1", [name])?;
                }
                result
            })
        })
        .await
        .map_err(Error::internal)?;
        guard.defuse();
        result
    }
}

/// A speculative transaction open on the replica's connection.
struct Speculative<'c> {
    session: Option<Session<'c>>,
    ops: Vec<Op>,
    /// The applied index the changes are computed on (`Op::Base`).
    base: u64,
}

impl<'c> Speculative<'c> {
    fn begin(replica: &'c Replica) -> Result<Self> {
        let conn = &replica.conn;
        let mut base = replica.applied_state()?.0.map_or(0, |l| l.index);
        if crate::planted::active("stale-base") {
            // Deliberately wrong (see `planted`): as if computed before the last entry.
            base = base.saturating_sub(1);
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match Session::new(conn) {
            Ok(session) => Ok(Speculative {
                session: Some(session),
                ops: Vec::new(),
                base,
            }),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Move the changes recorded so far into `ops`.
    fn cut(&mut self) -> Result<()> {
        if let Some(session) = self.session.as_mut() {
            let bytes = session.changeset()?;
            if !bytes.is_empty() {
                self.ops.push(Op::Changeset(bytes));
            }
        }
        Ok(())
    }

    /// End the changes recorded so far as one changeset and start the next.
    fn split(&mut self, conn: &'c Connection) -> Result<()> {
        self.cut()?;
        self.session = None;
        self.session = Some(Session::new(conn)?);
        Ok(())
    }

    /// Run one statement in its own savepoint: on error its effects are undone and the
    /// transaction stays usable.
    fn exec(&mut self, conn: &'c Connection, slot: &Slot, stmt: &Statement) -> Result<Rows> {
        stmt.cancel.check()?;
        if stmt.kind == StatementKind::Describe {
            return describe(conn, &stmt.sql);
        }
        if stmt.kind == StatementKind::Savepoint {
            // Changes already cut into ops (before DDL) cannot be taken back.
            if stmt.sql.starts_with("ROLLBACK") && !self.ops.is_empty() {
                return Err(Error::unsupported(
                    "ROLLBACK TO SAVEPOINT in a transaction that changed the schema",
                ));
            }
            conn.execute_batch(&stmt.sql)?;
            return Ok(Rows::default());
        }
        conn.execute_batch("SAVEPOINT cairn_stmt")?;
        let result = match stmt.kind {
            StatementKind::Describe | StatementKind::Savepoint => unreachable!("handled above"),
            StatementKind::Dml => run_with(
                conn,
                &stmt.sql,
                &stmt.params,
                Some((slot, std::slice::from_ref(&stmt.cancel))),
            ),
            StatementKind::Ddl => self.ddl(conn, stmt.sql.clone()),
            StatementKind::DdlOnce(job) => {
                let done: Option<i64> = conn
                    .query_row(
                        "SELECT id FROM _cairn_ddl WHERE id = ?1",
                        [job as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                match done {
                    Some(_) => Ok(Rows::default()),
                    None => self.ddl(
                        conn,
                        format!("{};INSERT INTO _cairn_ddl (id) VALUES ({job});", stmt.sql),
                    ),
                }
            }
            StatementKind::DdlUndo { id, job } => {
                let first = (job << 16) as i64;
                let ran: Option<i64> = conn
                    .query_row(
                        "SELECT id FROM _cairn_ddl WHERE id BETWEEN ?1 AND ?2 LIMIT 1",
                        [first, first | 0xffff],
                        |r| r.get(0),
                    )
                    .optional()?;
                let undone: Option<i64> = conn
                    .query_row(
                        "SELECT id FROM _cairn_ddl WHERE id = ?1",
                        [id as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                match (ran, undone) {
                    (Some(_), None) => self.ddl(
                        conn,
                        format!("{};INSERT INTO _cairn_ddl (id) VALUES ({id});", stmt.sql),
                    ),
                    _ => Ok(Rows::default()),
                }
            }
        };
        let result = result.and_then(|rows| self.check_size().map(|_| rows));
        match &result {
            Ok(_) => conn.execute_batch("RELEASE cairn_stmt")?,
            Err(_) => conn.execute_batch("ROLLBACK TO cairn_stmt; RELEASE cairn_stmt")?,
        }
        result
    }

    /// Fails once the changes recorded pass [`crate::limits::TXN_CHANGES_BYTES_MAX`] (the
    /// statement that crossed it is undone).
    fn check_size(&self) -> Result<()> {
        let cut: usize = self.ops.iter().map(Op::bytes).sum();
        let open = self.session.as_ref().map_or(0, |s| s.size()) as usize;
        if cut + open > crate::limits::TXN_CHANGES_BYTES_MAX {
            return Err(Error::sql(
                crate::error::sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "the transaction's changes on one shard exceed {} MiB; \
                     split the work into smaller transactions",
                    crate::limits::TXN_CHANGES_BYTES_MAX >> 20
                ),
            ));
        }
        Ok(())
    }

    /// Changesets carry no schema: end the current changeset, run the DDL, record its text,
    /// and record later row changes in a fresh session.
    fn ddl(&mut self, conn: &'c Connection, sql: String) -> Result<Rows> {
        self.cut()?;
        self.session = None;
        let result = conn
            .execute_batch(&sql)
            .map(|_| Rows::default())
            .map_err(Error::from);
        if result.is_ok() {
            self.ops.push(Op::Ddl(sql));
        }
        self.session = Some(Session::new(conn)?);
        result
    }

    /// End the transaction: return the ops and roll back (the ops come back through Raft).
    /// The changes, led by the `Op::Base` they were computed on when there are any.
    fn finish(mut self, conn: &Connection) -> Result<Vec<Op>> {
        let cut = self.cut();
        self.session = None;
        conn.execute_batch("ROLLBACK")?;
        cut?;
        if self.ops.iter().any(Op::writes_rows) {
            self.ops.insert(0, Op::Base { index: self.base });
        }
        Ok(self.ops)
    }

    fn abort(mut self, conn: &Connection) {
        self.session = None;
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "rolling back a speculative transaction failed");
        }
    }
}

fn thread_main(mut replica: Replica, rx: mpsc::Receiver<Command>) {
    loop {
        match serve(&replica, &rx) {
            Some((path, reply)) => {
                let _ = reply.send(replica.restore_from(&path));
            }
            None => return,
        }
    }
}

/// Serve commands until the channel closes (None) or a restore is asked for (which needs
/// the connection exclusively, so it runs outside, with no transaction open).
#[allow(clippy::type_complexity)]
fn serve(
    replica: &Replica,
    rx: &mpsc::Receiver<Command>,
) -> Option<(PathBuf, oneshot::Sender<Result<()>>)> {
    let conn = &replica.conn;
    let mut txn: Option<Speculative<'_>> = None;
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::AppliedState(reply) => {
                let _ = reply.send(replica.applied_state());
            }
            Command::Checksum(reply) => {
                let _ = reply.send(replica.consistent_checksum());
            }
            Command::CheckResult(id, reply) => {
                let found = replica
                    .checks
                    .lock()
                    .expect("checks lock")
                    .iter()
                    .find(|c| c.id == id)
                    .map(|c| (c.index, c.sum));
                let _ = reply.send(Ok(found));
            }
            Command::Apply(entries, reply) => {
                let has_data = entries
                    .iter()
                    .any(|e| matches!(e.payload, EntryPayload::Normal(_)));
                if has_data {
                    if let Some(open) = txn.take() {
                        // Only possible after losing leadership mid-transaction: the entries
                        // come from another leader. The transaction's client gets an error.
                        tracing::warn!(shard = %replica.shard, "aborting an open transaction: entries from another leader arrived");
                        open.abort(conn);
                    }
                }
                let _ = reply.send(replica.apply(&entries, txn.is_some()));
            }
            Command::ExecBatch(stmts, reply) => {
                if txn.is_some() {
                    let _ = reply.send(Err(Error::internal("batch while a transaction is open")));
                    continue;
                }
                let result = Speculative::begin(replica).and_then(|mut spec| {
                    // Each statement is a transaction of its own: its own changeset, so
                    // change events stay per transaction (not netted across the batch).
                    let mut results: Vec<Result<Rows>> = Vec::with_capacity(stmts.len());
                    for (i, s) in stmts.iter().enumerate() {
                        if i > 0 {
                            spec.split(conn)?;
                        }
                        results.push(spec.exec(conn, &replica.slot, s));
                    }
                    let ops = spec.finish(conn)?;
                    Ok((results, ops))
                });
                let _ = reply.send(result);
            }
            Command::Begin(reply) => {
                if let Some(open) = txn.take() {
                    open.abort(conn);
                }
                let _ = reply.send(Speculative::begin(replica).map(|s| txn = Some(s)));
            }
            Command::Exec(stmt, reply) => {
                let result = match txn.as_mut() {
                    Some(open) => open.exec(conn, &replica.slot, &stmt),
                    None => Err(Error::Retry(
                        "the transaction was aborted (leadership changed); retry it".into(),
                    )),
                };
                let _ = reply.send(result);
            }
            Command::Finish(reply) => {
                let result = match txn.take() {
                    Some(open) => open.finish(conn),
                    None => Err(Error::Retry(
                        "the transaction was aborted (leadership changed); retry it".into(),
                    )),
                };
                let _ = reply.send(result);
            }
            Command::Rollback(reply) => {
                if let Some(open) = txn.take() {
                    open.abort(conn);
                }
                let _ = reply.send(());
            }
            Command::Restore(path, reply) => {
                if let Some(open) = txn.take() {
                    open.abort(conn);
                }
                return Some((path, reply));
            }
        }
    }
    if let Some(open) = txn.take() {
        open.abort(conn);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::{Batch, WireValue};
    use crate::storage::changeset::ChangeOp;
    use crate::storage::events::{Page, Position, StoredChange, Window};

    fn statement(sql: &str) -> Statement {
        Statement {
            sql: sql.into(),
            params: Vec::new(),
            kind: StatementKind::Dml,
            refs: Vec::new(),
            cancel: Default::default(),
        }
    }

    fn entry(index: u64, ops: Vec<Op>) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch { ops }),
        }
    }

    /// A replica keeping events, with `t (id integer primary key, name text, n integer)`.
    struct Fixture {
        replica: ReplicaHandle,
        next: u64,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        async fn new(window: Window) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let options = ReplicaOptions {
                events: Some(window),
                ..Default::default()
            };
            let replica =
                ReplicaHandle::start(&dir.path().join("r.db"), ShardId(1), &options).unwrap();
            let mut f = Fixture {
                replica,
                next: 1,
                _dir: dir,
            };
            f.commit(
                vec![Op::Ddl(
                    "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INTEGER)".into(),
                )],
                1,
            )
            .await;
            f
        }

        /// Apply `ops` as the next entry, committed at `time` (µs).
        async fn commit(&mut self, ops: Vec<Op>, time: u64) -> u64 {
            let index = self.next;
            self.next += 1;
            let mut stamped = vec![Op::Time(time)];
            stamped.extend(ops);
            self.replica
                .apply(vec![entry(index, stamped)])
                .await
                .unwrap();
            index
        }

        /// Run `sql` on the leader's side and return the ops to replicate.
        async fn ops(&self, sql: &[&str]) -> Vec<Op> {
            let (results, ops) = self
                .replica
                .exec_batch(sql.iter().map(|s| statement(s)).collect())
                .await
                .unwrap();
            for r in results {
                r.unwrap();
            }
            ops
        }

        async fn write(&mut self, sql: &[&str], time: u64) -> u64 {
            let ops = self.ops(sql).await;
            self.commit(ops, time).await
        }

        async fn read(&self, after: Position) -> Page {
            self.replica.events(after, usize::MAX).await.unwrap()
        }
    }

    fn changes(page: &Page) -> Vec<(u64, StoredChange, String)> {
        changes_from(page, Position::default())
    }

    /// The page's changes at or after `from` (a page starts with the whole part holding
    /// `from`).
    fn changes_from(page: &Page, from: Position) -> Vec<(u64, StoredChange, String)> {
        page.parts
            .iter()
            .flat_map(|p| {
                let part = p.decode().unwrap();
                part.changes
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| {
                        Position {
                            index: p.index,
                            ordinal: p.first + *i as u32,
                        } >= from
                    })
                    .map(|(_, c)| {
                        let table = part.tables[c.table as usize].name.clone();
                        (p.index, c, table)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn int(i: i64) -> WireValue {
        WireValue::Integer(i)
    }
    fn text(s: &str) -> WireValue {
        WireValue::Text(s.into())
    }

    #[tokio::test]
    async fn committed_rows_become_events_with_whole_rows() {
        let mut f = Fixture::new(Window::default()).await;
        let start = Position::after_entry(1);
        let i = f
            .write(&["INSERT INTO t VALUES (1, 'a', 10), (2, 'b', 20)"], 100)
            .await;
        let u = f.write(&["UPDATE t SET n = 11 WHERE id = 1"], 200).await;
        let d = f.write(&["DELETE FROM t WHERE id = 2"], 300).await;

        let page = f.read(start).await;
        assert_eq!(page.applied, d);
        assert_eq!(page.through, Position::after_entry(d));
        let got = changes(&page);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].0, i);
        assert_eq!(got[0].1.op, ChangeOp::Insert);
        assert_eq!(got[0].1.new, vec![int(1), text("a"), int(10)]);
        assert!(got[0].1.old.is_empty());
        assert_eq!(got[0].2, "t");
        // An UPDATE carries both whole rows, unchanged columns included.
        assert_eq!(got[2].0, u);
        assert_eq!(got[2].1.op, ChangeOp::Update);
        assert_eq!(got[2].1.old, vec![int(1), text("a"), int(10)]);
        assert_eq!(got[2].1.new, vec![int(1), text("a"), int(11)]);
        assert_eq!(got[3].1.op, ChangeOp::Delete);
        assert_eq!(got[3].1.old, vec![int(2), text("b"), int(20)]);
        let part = page.parts[0].decode().unwrap();
        assert_eq!(part.tables[0].columns, vec!["id", "name", "n"]);
        assert_eq!(part.tables[0].key, vec![0]);
        assert_eq!(page.parts[0].time, 100);
        assert_eq!(page.parts[2].time, 300);

        // From the middle of an entry: only what follows.
        let middle = Position {
            index: i,
            ordinal: 1,
        };
        let got = changes_from(&f.read(middle).await, middle);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].1.new, vec![int(2), text("b"), int(20)]);
        // Nothing after the end.
        assert!(f.read(Position::after_entry(d)).await.parts.is_empty());
    }

    #[tokio::test]
    async fn a_resolved_transaction_carries_its_id_and_an_aborted_one_nothing() {
        let mut f = Fixture::new(Window::default()).await;
        let start = Position::after_entry(1);
        let part = f.ops(&["INSERT INTO t VALUES (5, 'x', 1)"]).await;
        f.commit(
            vec![Op::Prepare {
                txn: 77,
                coordinator: ShardId(2),
                ops: part,
            }],
            10,
        )
        .await;
        assert!(
            f.read(start).await.parts.is_empty(),
            "prepared is not committed"
        );
        let resolved = f
            .commit(
                vec![Op::Resolve {
                    txn: 77,
                    commit: true,
                }],
                20,
            )
            .await;
        let aborted = f.ops(&["INSERT INTO t VALUES (6, 'y', 1)"]).await;
        f.commit(
            vec![Op::Prepare {
                txn: 78,
                coordinator: ShardId(2),
                ops: aborted,
            }],
            30,
        )
        .await;
        f.commit(
            vec![Op::Resolve {
                txn: 78,
                commit: false,
            }],
            40,
        )
        .await;
        let got = changes(&f.read(start).await);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, resolved);
        assert_eq!(got[0].1.txn, Some(77));
    }

    #[tokio::test]
    async fn the_window_drops_whole_old_entries_and_says_where_it_starts() {
        // About 5 entries of 1 KB rows fit in 6 KB.
        let mut f = Fixture::new(Window {
            max_age: std::time::Duration::from_secs(60),
            max_bytes: 6_000,
        })
        .await;
        let start = Position::after_entry(1);
        let mut indexes = Vec::new();
        for i in 0..10 {
            let sql = format!("INSERT INTO t VALUES ({i}, '{}', {i})", "x".repeat(1000));
            indexes.push(f.write(&[&sql], 1_000 + i as u64).await);
        }
        let page = f.read(start).await;
        assert!(
            page.parts.is_empty(),
            "a position behind the floor gets nothing"
        );
        assert!(page.floor >= indexes[3] && page.floor < indexes[9]);
        let kept = f.read(Position::after_entry(page.floor)).await;
        let got = changes(&kept);
        assert_eq!(got.first().unwrap().0, page.floor + 1);
        assert_eq!(got.last().unwrap().0, indexes[9]);

        // By age: an entry committed two minutes later leaves only itself.
        let last = f
            .write(&["INSERT INTO t VALUES (100, 'late', 0)"], 121_000_000)
            .await;
        let page = f.read(start).await;
        assert_eq!(page.floor, indexes[9]);
        let got = changes(&f.read(Position::after_entry(page.floor)).await);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, last);
    }

    #[tokio::test]
    async fn every_replica_refuses_changes_computed_on_a_state_a_later_write_changed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |index: u64, base: u64, k: u64| {
            entry(
                index,
                vec![
                    Op::Base { index: base },
                    Op::Ddl(format!("INSERT INTO t VALUES ({k})")),
                ],
            )
        };
        let log = vec![
            entry(
                1,
                vec![Op::Ddl("CREATE TABLE t (k INTEGER PRIMARY KEY)".into())],
            ),
            write(2, 1, 1),
            // Computed on index 1, but entry 2 changed rows since: refused.
            write(3, 1, 2),
            // Computed on index 2 (entry 3 changed nothing): applied.
            write(4, 2, 3),
            // A batch that writes nothing moves the applied index, not the last write.
            entry(5, vec![Op::Time(1)]),
            write(6, 5, 4),
            write(7, 6, 5),
        ];
        // One replica applies the log entry by entry, the other all at once.
        let options = ReplicaOptions::default();
        let one = ReplicaHandle::start(&dir.path().join("one.db"), ShardId(1), &options).unwrap();
        let all = ReplicaHandle::start(&dir.path().join("all.db"), ShardId(1), &options).unwrap();
        let mut refused_one = Vec::new();
        for e in &log {
            refused_one.extend(one.apply(vec![e.clone()]).await.unwrap());
        }
        let refused_all = all.apply(log).await.unwrap();
        assert_eq!(refused_one, vec![3]);
        assert_eq!(refused_all, vec![3]);
        for replica in [&one, &all] {
            let rows = replica
                .read(statement("SELECT k FROM t ORDER BY k"))
                .await
                .unwrap();
            let keys: Vec<Value> = rows.rows.into_iter().flatten().collect();
            assert_eq!(keys, [1, 3, 4, 5].map(Value::Integer).to_vec());
        }
        assert_eq!(one.checksum().await.unwrap(), all.checksum().await.unwrap());
    }

    #[test]
    fn a_paced_scan_waits_until_its_bytes_are_due() {
        let mib = 1024 * 1024;
        let second = std::time::Duration::from_secs(1);
        // 16 MiB at 8 MiB/s are due after 2 s: at 1 s, one more second to wait.
        assert_eq!(Pacer::wait(8 * mib, 16 * mib, second), second);
        assert_eq!(
            Pacer::wait(8 * mib, 16 * mib, 3 * second),
            std::time::Duration::ZERO
        );
        assert_eq!(
            Pacer::wait(8 * mib, 0, std::time::Duration::ZERO),
            std::time::Duration::ZERO
        );
    }

    /// A replica with `t (id, body)` holding `rows` rows of 1000 bytes, checks reading at
    /// `rate` bytes per second.
    async fn checked_replica(dir: &Path, rate: u64, rows: u64) -> ReplicaHandle {
        let options = ReplicaOptions {
            check_rate: Some(rate),
            ..Default::default()
        };
        let replica = ReplicaHandle::start(&dir.join("r.db"), ShardId(1), &options).unwrap();
        let insert = (1..=rows)
            .map(|i| format!("INSERT INTO t VALUES ({i}, printf('%.1000c', 'x'));"))
            .collect::<String>();
        replica
            .apply(vec![
                entry(
                    1,
                    vec![Op::Ddl(
                        "CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)".into(),
                    )],
                ),
                entry(2, vec![Op::Ddl(insert)]),
            ])
            .await
            .unwrap();
        replica
    }

    async fn check_sum(replica: &ReplicaHandle, id: u64) -> (u64, u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some((index, Some(sum))) = replica.check_result(id).await.unwrap() {
                return (index, sum);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "check {id} never finished"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_check_reads_its_own_index_without_holding_up_later_entries() {
        let dir = tempfile::tempdir().unwrap();
        // 8 rows of 1000 bytes at 4000 bytes/s: about two seconds of reading.
        let slow = checked_replica(&dir.path().join("slow"), 4000, 8).await;
        // The check and a later write, applied together.
        slow.apply(vec![
            entry(3, vec![Op::Check { id: 7 }]),
            entry(
                4,
                vec![Op::Ddl("INSERT INTO t VALUES (100, 'later')".into())],
            ),
        ])
        .await
        .unwrap();
        // The write is applied while the check is still reading.
        let later = slow
            .read(statement("SELECT body FROM t WHERE id = 100"))
            .await
            .unwrap();
        assert_eq!(later.rows, vec![vec![Value::Text("later".into())]]);
        assert_eq!(slow.check_result(7).await.unwrap(), Some((3, None)));
        // Its checksum is of the rows at index 3: the same as a replica that never had the
        // later write, and not what the rows are now.
        let other = checked_replica(&dir.path().join("other"), u64::MAX, 8).await;
        other
            .apply(vec![entry(3, vec![Op::Check { id: 7 }])])
            .await
            .unwrap();
        let expected = check_sum(&other, 7).await;
        assert_eq!(check_sum(&slow, 7).await, expected);
        slow.apply(vec![entry(5, vec![Op::Check { id: 8 }])])
            .await
            .unwrap();
        assert_ne!(check_sum(&slow, 8).await.1, expected.1);
    }

    #[tokio::test]
    async fn events_survive_a_snapshot_and_a_reopen() {
        let mut f = Fixture::new(Window::default()).await;
        let start = Position::after_entry(1);
        f.write(&["INSERT INTO t VALUES (1, 'a', 1)"], 5).await;
        let snap = f._dir.path().join("snap.db");
        snapshot_to(&f.replica.path, &snap).unwrap();
        let options = ReplicaOptions {
            events: Some(Window::default()),
            ..Default::default()
        };
        let other =
            ReplicaHandle::start(&f._dir.path().join("o.db"), ShardId(1), &options).unwrap();
        other.restore(snap).await.unwrap();
        let page = other.events(start, usize::MAX).await.unwrap();
        assert_eq!(changes(&page), changes(&f.read(start).await));
        assert_eq!(page.floor, 0);
    }

    #[tokio::test]
    async fn a_replica_first_keeping_events_starts_its_floor_where_it_stands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let plain = ReplicaHandle::start(&path, ShardId(1), &ReplicaOptions::default()).unwrap();
        plain
            .apply(vec![entry(
                1,
                vec![Op::Ddl("CREATE TABLE t (id INTEGER PRIMARY KEY)".into())],
            )])
            .await
            .unwrap();
        drop(plain);
        let options = ReplicaOptions {
            events: Some(Window::default()),
            ..Default::default()
        };
        // The thread of the first handle may still hold the file briefly; opening again
        // is fine in WAL mode.
        let replica = ReplicaHandle::start(&path, ShardId(1), &options).unwrap();
        let page = replica
            .events(Position::default(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(page.floor, 1);
        assert_eq!(page.applied, 1);
    }
}
