//! Change capture and replay over SQLite's session extension.
//!
//! The leader runs a client's transaction with a [`Session`] attached, takes
//! [`Session::changeset`], rolls the transaction back and replicates the changeset; every
//! replica (the leader included) replays it with [`apply`] inside its own transaction.
//! [`decode`] turns a changeset into [`RowChange`]s for change streams.
//!
//! What the session extension records (each point is pinned by a test below):
//! - A changeset is a *net diff*, computed when [`Session::changeset`] is called: for every
//!   row touched since the session was attached it compares the row's values before its first
//!   change with its values now. Work undone by `ROLLBACK TO` a savepoint therefore leaves no
//!   trace, and a row inserted then deleted in the same transaction is absent.
//! - Values are what SQLite stored, so `random()`, `randomblob()`, `datetime('now')` and
//!   assigned rowids replay identically.
//! - Tables without a declared PRIMARY KEY are recorded by rowid (the rowid is the first
//!   column of their changes). Tables with a non-INTEGER PRIMARY KEY are recorded by that
//!   key; their hidden rowid is *not* replicated and may differ between replicas.
//! - Rows whose PRIMARY KEY contains a NULL are silently **not recorded** (SQLite allows
//!   NULL in a non-INTEGER PRIMARY KEY of a rowid table). Cairn must declare primary-key
//!   columns NOT NULL (as PostgreSQL does) or such rows diverge.
//! - DDL is not recorded; the schema must reach replicas another way, before the changeset.
//! - `sqlite_sequence` (AUTOINCREMENT high-water marks) is not recorded; replicas keep their
//!   own, derived from the explicit keys they apply.
//!
//! [`apply`] refuses to diverge: any conflict, and any change SQLite would skip because the
//! table is missing or has a different shape, aborts it with [`Error::Corrupt`] and undoes
//! its partial work. Triggers are disabled and foreign-key actions treated as NO ACTION while
//! it runs, since their effects were already recorded on the leader.
//!
//! This module holds all of Cairn's unsafe code for the session extension.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};

use rusqlite::config::DbConfig;
use rusqlite::ffi;
use rusqlite::types::Value;
use rusqlite::Connection;

use crate::error::{Error, Result};

/// Records every change made through `conn` to any table of its `main` database (tables
/// without a declared PRIMARY KEY are recorded by rowid), until dropped.
pub struct Session<'conn> {
    raw: NonNull<ffi::sqlite3_session>,
    db: *mut ffi::sqlite3,
    _conn: PhantomData<&'conn Connection>,
}

impl<'conn> Session<'conn> {
    pub fn new(conn: &'conn Connection) -> Result<Self> {
        // SAFETY: `handle` returns the connection's live handle. The session borrows `conn`
        // for 'conn, so the handle outlives the session (Connection::close takes it by value).
        let db = unsafe { conn.handle() };
        let mut raw = ptr::null_mut();
        // SAFETY: `db` is a live handle, the name is NUL-terminated and `raw` is a valid
        // out-pointer.
        let rc = unsafe { ffi::sqlite3session_create(db, c"main".as_ptr(), &mut raw) };
        if rc != ffi::SQLITE_OK {
            return Err(sqlite_error(db, rc, "sqlite3session_create"));
        }
        let raw = NonNull::new(raw)
            .ok_or_else(|| Error::internal("sqlite3session_create returned no session"))?;
        // From here on Drop deletes the session on every path.
        let session = Session {
            raw,
            db,
            _conn: PhantomData,
        };

        let mut rowid: c_int = 1;
        // SAFETY: the session is live and no table is attached yet (required for this
        // option); for ROWID the argument points to an int, which SQLite overwrites with the
        // setting now in force.
        let rc = unsafe {
            ffi::sqlite3session_object_config(
                raw.as_ptr(),
                ffi::SQLITE_SESSION_OBJCONFIG_ROWID,
                (&mut rowid as *mut c_int).cast(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(sqlite_error(db, rc, "sqlite3session_object_config(ROWID)"));
        }
        if rowid != 1 {
            return Err(Error::internal(
                "SQLite refused to record tables without a primary key",
            ));
        }

        let mut size: c_int = 1;
        // SAFETY: as above; for SIZE the argument points to an int. It lets
        // `sqlite3session_changeset_size` report how big the changes have grown.
        let rc = unsafe {
            ffi::sqlite3session_object_config(
                raw.as_ptr(),
                ffi::SQLITE_SESSION_OBJCONFIG_SIZE,
                (&mut size as *mut c_int).cast(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(sqlite_error(db, rc, "sqlite3session_object_config(SIZE)"));
        }

        // SAFETY: the session is live; a NULL table name attaches every table, including
        // tables created after this call.
        let rc = unsafe { ffi::sqlite3session_attach(raw.as_ptr(), ptr::null()) };
        if rc != ffi::SQLITE_OK {
            return Err(sqlite_error(db, rc, "sqlite3session_attach"));
        }
        Ok(session)
    }

    /// An upper bound on the size in bytes of [`Session::changeset`] now (rows changed and
    /// then restored by `ROLLBACK TO` still count).
    pub fn size(&self) -> u64 {
        // SAFETY: the session is live and was configured with SQLITE_SESSION_OBJCONFIG_SIZE.
        let n = unsafe { ffi::sqlite3session_changeset_size(self.raw.as_ptr()) };
        u64::try_from(n).unwrap_or(0)
    }

    /// The net changes recorded so far (empty if none). Call it before the transaction ends:
    /// SQLite reads the rows' current values from the database. Fails with a
    /// FEATURE_NOT_SUPPORTED SQL error if a table whose rows changed was then dropped or
    /// renamed, or lost a column, in the same session (ADD COLUMN and RENAME COLUMN are fine).
    pub fn changeset(&mut self) -> Result<Vec<u8>> {
        let mut len: c_int = 0;
        let mut buf: *mut c_void = ptr::null_mut();
        // SAFETY: the session is live and both out-pointers are valid. On return `buf` is
        // NULL or a buffer of `len` bytes that we must release with sqlite3_free.
        let rc = unsafe { ffi::sqlite3session_changeset(self.raw.as_ptr(), &mut len, &mut buf) };
        let buf = SqliteBuffer(buf);
        if rc == ffi::SQLITE_SCHEMA {
            // A table with recorded changes was dropped, renamed or lost a column since.
            return Err(Error::unsupported(
                "dropping or renaming a table, or dropping a column, after changing its rows \
                 in the same transaction",
            ));
        }
        if rc != ffi::SQLITE_OK {
            return Err(sqlite_error(self.db, rc, "sqlite3session_changeset"));
        }
        buf.to_vec(len)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from sqlite3session_create, is deleted exactly once (here), and
        // its connection is still open (borrowed for 'conn).
        unsafe { ffi::sqlite3session_delete(self.raw.as_ptr()) }
    }
}

/// A buffer allocated by SQLite, freed with sqlite3_free when dropped.
struct SqliteBuffer(*mut c_void);

impl SqliteBuffer {
    fn to_vec(&self, len: c_int) -> Result<Vec<u8>> {
        let len = usize::try_from(len)
            .map_err(|_| Error::internal(format!("SQLite returned a buffer of size {len}")))?;
        if self.0.is_null() || len == 0 {
            return Ok(Vec::new());
        }
        // SAFETY: SQLite returned this non-NULL buffer together with its length `len`; it
        // stays allocated until `self` is dropped.
        Ok(unsafe { std::slice::from_raw_parts(self.0.cast::<u8>(), len) }.to_vec())
    }
}

impl Drop for SqliteBuffer {
    fn drop(&mut self) {
        // SAFETY: the pointer is NULL (a no-op) or was allocated by SQLite and is freed once.
        unsafe { ffi::sqlite3_free(self.0) }
    }
}

/// One row change decoded from a changeset (for change streams later).
///
/// `old` holds the row before the change (UPDATE, DELETE) and is empty for an INSERT; `new`
/// holds the row after it (INSERT, UPDATE) and is empty for a DELETE. Within an UPDATE,
/// `old` has values only for the primary key and the changed columns and `new` only for the
/// changed columns; the rest are `None`. For a table without a PRIMARY KEY the first value is
/// the rowid. Text that is not valid UTF-8 is decoded lossily.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub table: String,
    pub op: ChangeOp,
    pub old: Vec<Option<Value>>,
    pub new: Vec<Option<Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChangeOp {
    Insert,
    Update,
    Delete,
}

/// Decode every change of a changeset, in the changeset's order.
pub fn decode(changeset: &[u8]) -> Result<Vec<RowChange>> {
    let mut changes = Vec::new();
    for_each_change(changeset, |it| {
        // SAFETY: `for_each_change` passes an iterator positioned on a change.
        let (table, ncol, op) = unsafe { change_op(it) }?;
        let old = match op {
            ChangeOp::Insert => Vec::new(),
            // SAFETY: as above; old values exist for UPDATE and DELETE.
            _ => unsafe { change_values(it, Side::Old, ncol) }?,
        };
        let new = match op {
            ChangeOp::Delete => Vec::new(),
            // SAFETY: as above; new values exist for INSERT and UPDATE.
            _ => unsafe { change_values(it, Side::New, ncol) }?,
        };
        changes.push(RowChange {
            table: table.to_string(),
            op,
            old,
            new,
        });
        Ok(())
    })?;
    Ok(changes)
}

/// Apply a changeset produced by [`Session::changeset`] inside the caller's open transaction.
///
/// Any conflict (data, notfound, conflict, constraint, foreign key) means the replicas
/// diverged or the changeset does not fit this state: the result is [`Error::Corrupt`]
/// describing the first conflict, and every change of this call is undone (the caller's
/// transaction is otherwise untouched). A change to a missing table, or to a table whose
/// columns or primary key differ from the changeset's, is an error too, where SQLite itself
/// would skip it silently. Triggers do not fire and foreign-key actions (CASCADE, SET NULL,
/// ...) do not run while applying: their effects are already part of the changeset.
pub fn apply(conn: &Connection, changeset: &[u8]) -> Result<()> {
    apply_inner(conn, changeset, None)
}

/// A row as SQLite changed it while applying a changeset: every column's value before
/// (UPDATE, DELETE) and after (INSERT, UPDATE), in the table's column order. Unlike a
/// changeset's own UPDATE records, both sides are whole rows.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedRow {
    pub table: String,
    pub op: ChangeOp,
    /// Empty for an INSERT.
    pub old: Vec<Value>,
    /// Empty for a DELETE.
    pub new: Vec<Value>,
}

/// [`apply`], also appending to `rows` every row change it made, in the order SQLite made
/// them (SQLite's own tables and `_cairn_*` tables left out). Nothing is appended if it
/// fails.
pub fn apply_capturing(
    conn: &Connection,
    changeset: &[u8],
    rows: &mut Vec<AppliedRow>,
) -> Result<()> {
    let mut captured = Capture::default();
    apply_inner(conn, changeset, Some(&mut captured))?;
    if let Some(e) = captured.error {
        return Err(e);
    }
    rows.append(&mut captured.rows);
    Ok(())
}

fn apply_inner(conn: &Connection, changeset: &[u8], capture: Option<&mut Capture>) -> Result<()> {
    if changeset.is_empty() {
        return Ok(());
    }
    if conn.is_autocommit() {
        return Err(Error::internal(
            "changeset::apply needs an open transaction",
        ));
    }
    let len = c_int::try_from(changeset.len()).map_err(|_| {
        Error::internal(format!(
            "changeset of {} bytes is too large",
            changeset.len()
        ))
    })?;
    let expected = count_changes(changeset)?;

    conn.execute_batch("SAVEPOINT cairn_apply_changeset")
        .map_err(internal("SAVEPOINT"))?;
    let outcome = match capture {
        None => apply_within_savepoint(conn, changeset, len, &expected),
        Some(capture) => with_preupdate_hook(conn, capture, || {
            apply_within_savepoint(conn, changeset, len, &expected)
        }),
    };
    let end = if outcome.is_ok() {
        conn.execute_batch("RELEASE cairn_apply_changeset")
    } else {
        conn.execute_batch("ROLLBACK TO cairn_apply_changeset; RELEASE cairn_apply_changeset")
    };
    outcome?;
    end.map_err(internal("ending the apply savepoint"))
}

fn apply_within_savepoint(
    conn: &Connection,
    changeset: &[u8],
    len: c_int,
    expected: &[(String, usize)],
) -> Result<()> {
    let triggers = DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER;
    let triggers_were_enabled = conn
        .db_config(triggers)
        .map_err(internal("reading trigger setting"))?;
    conn.set_db_config(triggers, false)
        .map_err(internal("disabling triggers"))?;

    // SAFETY: `handle` returns the live handle of `conn`, which outlives this call.
    let db = unsafe { conn.handle() };
    let mut ctx = ApplyCtx::default();
    // SAFETY: `db` is live and in a transaction; SQLite only reads the changeset buffer
    // (`len` bytes; the pointer is `*mut` in the C signature only). Both callbacks match the
    // expected signatures, never unwind, and get `ctx`, which outlives the call and is not
    // touched by Rust until it returns. No rebase buffer is requested, so nothing to free.
    let rc = unsafe {
        ffi::sqlite3changeset_apply_v3(
            db,
            len,
            changeset.as_ptr().cast_mut().cast(),
            Some(count_applied),
            Some(abort_on_conflict),
            (&mut ctx as *mut ApplyCtx).cast(),
            ptr::null_mut(),
            ptr::null_mut(),
            ffi::SQLITE_CHANGESETAPPLY_NOSAVEPOINT | ffi::SQLITE_CHANGESETAPPLY_FKNOACTION,
        )
    };
    let apply_error =
        (rc != ffi::SQLITE_OK).then(|| sqlite_error(db, rc, "sqlite3changeset_apply"));
    let restored = conn
        .set_db_config(triggers, triggers_were_enabled)
        .map_err(internal("restoring trigger setting"));

    if let Some(conflict) = ctx.conflict {
        return Err(Error::Corrupt(format!(
            "changeset does not apply: {conflict}"
        )));
    }
    if let Some(e) = apply_error {
        return Err(e);
    }
    restored?;
    for (table, count) in expected {
        let applied = ctx
            .applied
            .iter()
            .find(|(t, _)| t == table.as_bytes())
            .map_or(0, |(_, n)| *n);
        if applied != *count {
            return Err(Error::Corrupt(format!(
                "changeset does not apply: table {table}: {} of its {count} changes were skipped \
                 (the table is missing or its columns or primary key differ from the changeset's)",
                count - applied.min(*count)
            )));
        }
    }
    Ok(())
}

/// What the preupdate hook saw while a changeset was applied.
#[derive(Default)]
struct Capture {
    rows: Vec<AppliedRow>,
    /// The first value that could not be read: the capture is incomplete.
    error: Option<Error>,
}

/// Run `f` with a preupdate hook on `conn` appending every row change to `capture`.
///
/// SQLite keeps one preupdate hook per connection, and the session extension installs its
/// own while a [`Session`] exists, keeping its sessions in the hook's context. So the hook
/// goes in only when none is there, and is removed before returning: a replica applies
/// committed changesets only while no speculative transaction (and so no session) is open.
fn with_preupdate_hook(
    conn: &Connection,
    capture: &mut Capture,
    f: impl FnOnce() -> Result<()>,
) -> Result<()> {
    // SAFETY: `handle` returns the live handle of `conn`, which outlives this call.
    let db = unsafe { conn.handle() };
    // SAFETY: `db` is live; `capture` outlives the hook, which is removed below before
    // `capture` can be touched again by Rust, and the callback never unwinds.
    let previous = unsafe {
        ffi::sqlite3_preupdate_hook(db, Some(capture_row), (capture as *mut Capture).cast())
    };
    let outcome = if previous.is_null() {
        f()
    } else {
        Err(Error::internal(
            "a changeset was applied while a session was recording on the same connection",
        ))
    };
    // SAFETY: `db` is live; removing the hook (NULL callback and context).
    unsafe { ffi::sqlite3_preupdate_hook(db, None, ptr::null_mut()) };
    outcome
}

/// The preupdate hook: copies the row about to change into the [`Capture`] in `ctx`.
unsafe extern "C" fn capture_row(
    ctx: *mut c_void,
    db: *mut ffi::sqlite3,
    op: c_int,
    schema: *const c_char,
    table: *const c_char,
    _key1: ffi::sqlite3_int64,
    _key2: ffi::sqlite3_int64,
) {
    // SAFETY: `ctx` is the `&mut Capture` that `with_preupdate_hook` installed, alive and not
    // otherwise used until the hook is removed.
    let capture = unsafe { &mut *ctx.cast::<Capture>() };
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<Option<AppliedRow>> {
        // SAFETY: SQLite passes NUL-terminated names valid during the callback.
        let (schema, table) = unsafe { (CStr::from_ptr(schema), CStr::from_ptr(table)) };
        let table = table.to_string_lossy();
        if schema.to_bytes() != b"main"
            || table.starts_with("sqlite_")
            || table.starts_with("_cairn")
        {
            return Ok(None);
        }
        let op = match op {
            ffi::SQLITE_INSERT => ChangeOp::Insert,
            ffi::SQLITE_UPDATE => ChangeOp::Update,
            ffi::SQLITE_DELETE => ChangeOp::Delete,
            other => {
                return Err(Error::internal(format!(
                    "preupdate hook: operation {other}"
                )))
            }
        };
        // SAFETY: inside a preupdate callback on `db`.
        let count = unsafe { ffi::sqlite3_preupdate_count(db) };
        let side = |new: bool| -> Result<Vec<Value>> {
            let mut row = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
            for i in 0..count {
                let mut v: *mut ffi::sqlite3_value = ptr::null_mut();
                // SAFETY: inside the callback, `i` below the column count, `v` a valid
                // out-pointer; old values exist for UPDATE/DELETE, new for INSERT/UPDATE.
                let rc = unsafe {
                    if new {
                        ffi::sqlite3_preupdate_new(db, i, &mut v)
                    } else {
                        ffi::sqlite3_preupdate_old(db, i, &mut v)
                    }
                };
                check(rc, "reading a changed row")?;
                // SAFETY: `v` is NULL or a value valid during this callback.
                row.push(unsafe { value_from_raw(v) }?.unwrap_or(Value::Null));
            }
            Ok(row)
        };
        let old = if op == ChangeOp::Insert {
            Vec::new()
        } else {
            side(false)?
        };
        let new = if op == ChangeOp::Delete {
            Vec::new()
        } else {
            side(true)?
        };
        Ok(Some(AppliedRow {
            table: table.into_owned(),
            op,
            old,
            new,
        }))
    }));
    match outcome {
        Ok(Ok(Some(row))) => capture.rows.push(row),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => {
            capture.error.get_or_insert(e);
        }
        Err(_) => {
            capture
                .error
                .get_or_insert(Error::internal("preupdate hook panicked"));
        }
    }
}

/// What the apply callbacks saw.
#[derive(Default)]
struct ApplyCtx {
    /// Changes SQLite went on to apply, per table (name as raw bytes), in first-seen order.
    applied: Vec<(Vec<u8>, usize)>,
    /// The first conflict, described.
    conflict: Option<String>,
}

/// The apply filter: called for each change SQLite is about to apply (changes of tables that
/// fail SQLite's schema check never get here); counts it and lets it through.
unsafe extern "C" fn count_applied(
    ctx: *mut c_void,
    it: *mut ffi::sqlite3_changeset_iter,
) -> c_int {
    // SAFETY: `ctx` is the `&mut ApplyCtx` that `apply_within_savepoint` passed, alive and
    // unaliased for the duration of sqlite3changeset_apply_v3.
    let ctx = unsafe { &mut *ctx.cast::<ApplyCtx>() };
    let counted = catch_unwind(AssertUnwindSafe(|| {
        let mut table: *const c_char = ptr::null();
        let (mut ncol, mut op) = (0, 0);
        // SAFETY: SQLite passes an iterator positioned on the change being applied.
        let rc = unsafe {
            ffi::sqlite3changeset_op(it, &mut table, &mut ncol, &mut op, ptr::null_mut())
        };
        if rc != ffi::SQLITE_OK || table.is_null() {
            return false;
        }
        // SAFETY: a non-NULL table name from the iterator is NUL-terminated and valid for
        // this callback.
        let table = unsafe { CStr::from_ptr(table) }.to_bytes();
        match ctx.applied.iter_mut().rev().find(|(t, _)| t == table) {
            Some((_, n)) => *n += 1,
            None => ctx.applied.push((table.to_vec(), 1)),
        }
        true
    }));
    // A change we could not count is skipped, which the count check then reports.
    c_int::from(matches!(counted, Ok(true)))
}

/// The conflict handler: remembers the first conflict and aborts the apply.
unsafe extern "C" fn abort_on_conflict(
    ctx: *mut c_void,
    kind: c_int,
    it: *mut ffi::sqlite3_changeset_iter,
) -> c_int {
    // SAFETY: as in `count_applied`.
    let ctx = unsafe { &mut *ctx.cast::<ApplyCtx>() };
    if ctx.conflict.is_none() {
        // SAFETY: SQLite passes an iterator describing this conflict.
        let described = catch_unwind(AssertUnwindSafe(|| unsafe { describe_conflict(kind, it) }));
        let description = match described {
            Ok(Ok(d)) => d,
            _ => conflict_name(kind).to_string(),
        };
        ctx.conflict = Some(description);
    }
    ffi::SQLITE_CHANGESET_ABORT
}

fn conflict_name(kind: c_int) -> &'static str {
    match kind {
        ffi::SQLITE_CHANGESET_DATA => "SQLITE_CHANGESET_DATA",
        ffi::SQLITE_CHANGESET_NOTFOUND => "SQLITE_CHANGESET_NOTFOUND",
        ffi::SQLITE_CHANGESET_CONFLICT => "SQLITE_CHANGESET_CONFLICT",
        ffi::SQLITE_CHANGESET_CONSTRAINT => "SQLITE_CHANGESET_CONSTRAINT",
        ffi::SQLITE_CHANGESET_FOREIGN_KEY => "SQLITE_CHANGESET_FOREIGN_KEY",
        _ => "unknown conflict",
    }
}

/// Describe a conflict for the error message.
///
/// # Safety
/// `it` must be the iterator SQLite passed to the conflict handler with this `kind`.
unsafe fn describe_conflict(kind: c_int, it: *mut ffi::sqlite3_changeset_iter) -> Result<String> {
    if kind == ffi::SQLITE_CHANGESET_FOREIGN_KEY {
        // For this kind the iterator is a placeholder: only the count is meaningful.
        let mut n: c_int = 0;
        // SAFETY: the caller's contract; this is the one call valid on that placeholder.
        let rc = unsafe { ffi::sqlite3changeset_fk_conflicts(it, &mut n) };
        check(rc, "sqlite3changeset_fk_conflicts")?;
        return Ok(format!(
            "SQLITE_CHANGESET_FOREIGN_KEY: {n} foreign key reference(s) unresolved after applying"
        ));
    }
    // SAFETY: for the other kinds the iterator is positioned on the conflicting change.
    let (table, ncol, op) = unsafe { change_op(it) }?;
    // SAFETY: as above.
    let pk = unsafe { change_pk(it) }?;
    let side = if op == ChangeOp::Insert {
        Side::New
    } else {
        Side::Old
    };
    // SAFETY: as above; INSERTs carry new values, UPDATEs and DELETEs old ones.
    let values = unsafe { change_values(it, side, ncol) }?;
    let key: Vec<String> = values
        .iter()
        .zip(&pk)
        .filter(|(_, is_pk)| **is_pk)
        .map(|(v, _)| v.as_ref().map_or_else(|| "?".to_string(), fmt_value))
        .collect();
    let what = match kind {
        ffi::SQLITE_CHANGESET_DATA => {
            "the row's current values differ from the changeset's old values"
        }
        ffi::SQLITE_CHANGESET_NOTFOUND => "no row has this primary key",
        ffi::SQLITE_CHANGESET_CONFLICT => "a row with this primary key already exists",
        ffi::SQLITE_CHANGESET_CONSTRAINT => {
            "a constraint failed (UNIQUE, NOT NULL, CHECK or FOREIGN KEY)"
        }
        _ => "unknown conflict kind",
    };
    let mut description = format!(
        "table {table}: {} of the row with key ({}): {}: {what}",
        op_name(op),
        key.join(", "),
        conflict_name(kind)
    );
    if kind == ffi::SQLITE_CHANGESET_DATA || kind == ffi::SQLITE_CHANGESET_CONFLICT {
        // SAFETY: for DATA and CONFLICT the iterator also exposes the database's row.
        let current = unsafe { change_values(it, Side::Conflicting, ncol) }?;
        let current: Vec<String> = current
            .iter()
            .map(|v| v.as_ref().map_or_else(|| "?".to_string(), fmt_value))
            .collect();
        description.push_str(&format!("; row in this database: ({})", current.join(", ")));
    }
    Ok(description)
}

fn op_name(op: ChangeOp) -> &'static str {
    match op {
        ChangeOp::Insert => "insert",
        ChangeOp::Update => "update",
        ChangeOp::Delete => "delete",
    }
}

/// A short SQL-like rendering of a value for error messages.
fn fmt_value(v: &Value) -> String {
    const MAX: usize = 64;
    match v {
        Value::Null => "NULL".to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) if s.chars().count() > MAX => {
            format!("'{}...'", s.chars().take(MAX).collect::<String>())
        }
        Value::Text(s) => format!("'{s}'"),
        Value::Blob(b) => {
            let hex: String = b.iter().take(MAX / 2).map(|x| format!("{x:02x}")).collect();
            format!("x'{hex}{}'", if b.len() > MAX / 2 { "..." } else { "" })
        }
    }
}

/// How many changes `apply` will hand to the filter, per table: every change except UPDATEs
/// that change nothing, which SQLite's apply skips.
fn count_changes(changeset: &[u8]) -> Result<Vec<(String, usize)>> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for_each_change(changeset, |it| {
        // SAFETY: `for_each_change` passes an iterator positioned on a change.
        let (table, ncol, op) = unsafe { change_op(it) }?;
        if op == ChangeOp::Update {
            // SAFETY: as above; UPDATEs carry new values.
            let new = unsafe { change_values(it, Side::New, ncol) }?;
            if new.iter().all(Option::is_none) {
                return Ok(());
            }
        }
        match counts.iter_mut().rev().find(|(t, _)| t == table) {
            Some((_, n)) => *n += 1,
            None => counts.push((table.to_string(), 1)),
        }
        Ok(())
    })?;
    Ok(counts)
}

/// Run `f` on each change of `changeset` with an iterator positioned on it.
fn for_each_change(
    changeset: &[u8],
    mut f: impl FnMut(*mut ffi::sqlite3_changeset_iter) -> Result<()>,
) -> Result<()> {
    if changeset.is_empty() {
        return Ok(());
    }
    let len = c_int::try_from(changeset.len()).map_err(|_| {
        Error::internal(format!(
            "changeset of {} bytes is too large",
            changeset.len()
        ))
    })?;
    let mut raw = ptr::null_mut();
    // SAFETY: `raw` is a valid out-pointer; SQLite only reads the `len` bytes of the buffer,
    // which `changeset` keeps alive and unchanged until the iterator is finalized below.
    let rc =
        unsafe { ffi::sqlite3changeset_start(&mut raw, len, changeset.as_ptr().cast_mut().cast()) };
    let iter = ChangesetIter(raw);
    check(rc, "sqlite3changeset_start")?;
    if iter.0.is_null() {
        return Err(Error::internal(
            "sqlite3changeset_start returned no iterator",
        ));
    }
    loop {
        // SAFETY: the iterator is live (finalized only by `finish` or Drop).
        let rc = unsafe { ffi::sqlite3changeset_next(iter.0) };
        match rc {
            ffi::SQLITE_ROW => f(iter.0)?,
            ffi::SQLITE_DONE => break,
            _ => return Err(sqlite_error(ptr::null_mut(), rc, "sqlite3changeset_next")),
        }
    }
    iter.finish()
}

/// An iterator from sqlite3changeset_start, finalized when dropped.
struct ChangesetIter(*mut ffi::sqlite3_changeset_iter);

impl ChangesetIter {
    /// Finalize, reporting any error the iteration met.
    fn finish(mut self) -> Result<()> {
        let raw = std::mem::replace(&mut self.0, ptr::null_mut());
        // SAFETY: `raw` is live and, now taken out of `self`, finalized exactly once.
        let rc = unsafe { ffi::sqlite3changeset_finalize(raw) };
        check(rc, "sqlite3changeset_finalize")
    }
}

impl Drop for ChangesetIter {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the iterator is live and finalized exactly once. Its return code repeats
            // an error already reported by the failing call that brought us here.
            unsafe { ffi::sqlite3changeset_finalize(self.0) };
        }
    }
}

/// The table, column count and operation of the current change. The name borrows from the
/// iterator.
///
/// # Safety
/// `it` must be a live iterator positioned on a change (after sqlite3changeset_next returned
/// SQLITE_ROW, or inside a conflict handler for a kind other than FOREIGN_KEY), and the name
/// must not be used after the iterator moves on.
unsafe fn change_op<'a>(
    it: *mut ffi::sqlite3_changeset_iter,
) -> Result<(&'a str, c_int, ChangeOp)> {
    let mut table: *const c_char = ptr::null();
    let (mut ncol, mut op) = (0, 0);
    // SAFETY: the caller's contract; all out-pointers are valid.
    let rc =
        unsafe { ffi::sqlite3changeset_op(it, &mut table, &mut ncol, &mut op, ptr::null_mut()) };
    check(rc, "sqlite3changeset_op")?;
    if table.is_null() {
        return Err(Error::Corrupt("changeset change has no table name".into()));
    }
    // SAFETY: a non-NULL name is NUL-terminated and lives as long as the current change.
    let table = unsafe { CStr::from_ptr(table) }
        .to_str()
        .map_err(|_| Error::Corrupt("changeset table name is not UTF-8".into()))?;
    let op = match op {
        ffi::SQLITE_INSERT => ChangeOp::Insert,
        ffi::SQLITE_UPDATE => ChangeOp::Update,
        ffi::SQLITE_DELETE => ChangeOp::Delete,
        other => {
            return Err(Error::Corrupt(format!(
                "changeset has unknown operation {other}"
            )))
        }
    };
    Ok((table, ncol, op))
}

/// Which primary-key flags the current change's table has, one per column.
///
/// # Safety
/// As for [`change_op`].
unsafe fn change_pk(it: *mut ffi::sqlite3_changeset_iter) -> Result<Vec<bool>> {
    let mut flags: *mut u8 = ptr::null_mut();
    let mut ncol: c_int = 0;
    // SAFETY: the caller's contract; the out-pointers are valid.
    let rc = unsafe { ffi::sqlite3changeset_pk(it, &mut flags, &mut ncol) };
    check(rc, "sqlite3changeset_pk")?;
    let ncol = usize::try_from(ncol).unwrap_or(0);
    if flags.is_null() || ncol == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: SQLite returned `ncol` flags, valid while the iterator is on this change.
    Ok(unsafe { std::slice::from_raw_parts(flags, ncol) }
        .iter()
        .map(|f| *f != 0)
        .collect())
}

#[derive(Clone, Copy)]
enum Side {
    Old,
    New,
    /// The row in the database that a DATA or CONFLICT conflict ran into.
    Conflicting,
}

/// The current change's values on one side; `None` where the changeset carries no value.
///
/// # Safety
/// As for [`change_op`]; `side` must be available for the change (old: UPDATE/DELETE,
/// new: INSERT/UPDATE, conflicting: inside a DATA or CONFLICT conflict handler).
unsafe fn change_values(
    it: *mut ffi::sqlite3_changeset_iter,
    side: Side,
    ncol: c_int,
) -> Result<Vec<Option<Value>>> {
    let mut values = Vec::with_capacity(usize::try_from(ncol).unwrap_or(0));
    for i in 0..ncol {
        let mut v: *mut ffi::sqlite3_value = ptr::null_mut();
        // SAFETY: the caller's contract; `i` is within the change's column count and `v` is
        // a valid out-pointer.
        let rc = unsafe {
            match side {
                Side::Old => ffi::sqlite3changeset_old(it, i, &mut v),
                Side::New => ffi::sqlite3changeset_new(it, i, &mut v),
                Side::Conflicting => ffi::sqlite3changeset_conflict(it, i, &mut v),
            }
        };
        check(rc, "reading a changeset value")?;
        // SAFETY: `v` is NULL or a value owned by the iterator, valid during this call.
        values.push(unsafe { value_from_raw(v) }?);
    }
    Ok(values)
}

/// Copy a protected `sqlite3_value` into an owned [`Value`]; NULL pointer means no value.
///
/// # Safety
/// `v` must be NULL or a valid `sqlite3_value` that is not used concurrently.
unsafe fn value_from_raw(v: *mut ffi::sqlite3_value) -> Result<Option<Value>> {
    if v.is_null() {
        return Ok(None);
    }
    // SAFETY: `v` is a valid value (the caller's contract). For text and blobs the pointer is
    // fetched before the length, as SQLite requires, and both stay valid until `v` changes.
    let value = unsafe {
        match ffi::sqlite3_value_type(v) {
            ffi::SQLITE_NULL => Value::Null,
            ffi::SQLITE_INTEGER => Value::Integer(ffi::sqlite3_value_int64(v)),
            ffi::SQLITE_FLOAT => Value::Real(ffi::sqlite3_value_double(v)),
            ffi::SQLITE_TEXT => {
                let p = ffi::sqlite3_value_text(v);
                let n = usize::try_from(ffi::sqlite3_value_bytes(v)).unwrap_or(0);
                if p.is_null() {
                    return Err(Error::internal("out of memory reading a changeset value"));
                }
                Value::Text(String::from_utf8_lossy(std::slice::from_raw_parts(p, n)).into_owned())
            }
            ffi::SQLITE_BLOB => {
                let p = ffi::sqlite3_value_blob(v);
                let n = usize::try_from(ffi::sqlite3_value_bytes(v)).unwrap_or(0);
                if p.is_null() || n == 0 {
                    Value::Blob(Vec::new())
                } else {
                    Value::Blob(std::slice::from_raw_parts(p.cast::<u8>(), n).to_vec())
                }
            }
            other => {
                return Err(Error::Corrupt(format!(
                    "changeset value has unknown type {other}"
                )))
            }
        }
    };
    Ok(Some(value))
}

fn check(rc: c_int, what: &str) -> Result<()> {
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(sqlite_error(ptr::null_mut(), rc, what))
    }
}

/// An error for return code `rc` of `what`: Corrupt for a malformed changeset or database,
/// Internal otherwise. `db` (may be NULL) supplies the connection's message when it is about
/// this failure.
fn sqlite_error(db: *mut ffi::sqlite3, rc: c_int, what: &str) -> Error {
    // SAFETY: sqlite3_errstr returns a static NUL-terminated string for any code.
    let mut message = format!(
        "{what}: {}",
        unsafe { CStr::from_ptr(ffi::sqlite3_errstr(rc)) }.to_string_lossy()
    );
    if !db.is_null() {
        // SAFETY: a non-NULL `db` is a live handle of the calling thread's connection; the
        // message is copied before any other call on it.
        unsafe {
            if ffi::sqlite3_errcode(db) & 0xff == rc & 0xff {
                let detail = CStr::from_ptr(ffi::sqlite3_errmsg(db)).to_string_lossy();
                if !message.ends_with(detail.as_ref()) {
                    message.push_str(&format!(" ({detail})"));
                }
            }
        }
    }
    if rc & 0xff == ffi::SQLITE_CORRUPT {
        Error::Corrupt(message)
    } else {
        Error::Internal(message)
    }
}

fn internal(what: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::internal(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::params;

    fn db(schema: &str) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(schema).unwrap();
        conn
    }

    /// Run `sql` in a transaction with a session attached; return the changeset and roll back.
    fn capture(conn: &Connection, sql: &str) -> Vec<u8> {
        conn.execute_batch("BEGIN").unwrap();
        let changeset = {
            let mut session = Session::new(conn).unwrap();
            conn.execute_batch(sql).unwrap();
            session.changeset().unwrap()
        };
        conn.execute_batch("ROLLBACK").unwrap();
        changeset
    }

    /// Apply in a transaction; commit on success, roll back on failure.
    fn replay(conn: &Connection, changeset: &[u8]) -> Result<()> {
        conn.execute_batch("BEGIN").unwrap();
        let result = apply(conn, changeset);
        conn.execute_batch(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })
            .unwrap();
        result
    }

    fn dump(conn: &Connection, table: &str) -> Vec<Vec<Value>> {
        let ncol = conn
            .prepare(&format!("SELECT * FROM {table}"))
            .unwrap()
            .column_count();
        let order: Vec<String> = (1..=ncol).map(|i| i.to_string()).collect();
        let sql = format!("SELECT * FROM {table} ORDER BY {}", order.join(", "));
        let mut stmt = conn.prepare(&sql).unwrap();
        stmt.query_map([], |row| {
            (0..ncol).map(|i| row.get::<_, Value>(i)).collect()
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }

    fn int(i: i64) -> Option<Value> {
        Some(Value::Integer(i))
    }

    fn text(s: &str) -> Option<Value> {
        Some(Value::Text(s.to_string()))
    }

    const SCHEMA: &str =
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL, data BLOB);";

    /// Execute the same history on the leader (committed, as the leader's own apply would)
    /// and replay its changesets on a follower.
    fn replicate(leader: &Connection, follower: &Connection, sql: &str) {
        let changeset = capture(leader, sql);
        replay(leader, &changeset).unwrap();
        replay(follower, &changeset).unwrap();
    }

    #[test]
    fn insert_update_delete_replicate() {
        let (leader, follower) = (db(SCHEMA), db(SCHEMA));
        replicate(
            &leader,
            &follower,
            "INSERT INTO t VALUES (1, 'a', 1.5, x'00ff'), (2, 'b', NULL, NULL), (3, 'c', 3.0, x'');",
        );
        assert_eq!(dump(&follower, "t").len(), 3);
        replicate(
            &leader,
            &follower,
            "UPDATE t SET name = 'bb', score = 2.25 WHERE id = 2;
             DELETE FROM t WHERE id = 3;
             INSERT INTO t VALUES (4, 'd', -1e300, randomblob(4));
             UPDATE t SET id = 10 WHERE id = 1;",
        );
        assert_eq!(dump(&leader, "t"), dump(&follower, "t"));
        assert_eq!(dump(&follower, "t").len(), 3);
        assert_eq!(dump(&follower, "t")[2][0], Value::Integer(10));
    }

    #[test]
    fn nondeterministic_functions_replay_identically() {
        let schema =
            "CREATE TABLE r(id INTEGER PRIMARY KEY AUTOINCREMENT, b BLOB, at TEXT, n INTEGER);
                      CREATE TABLE s(k TEXT PRIMARY KEY, v);";
        let (leader, follower) = (db(schema), db(schema));
        let sql = "INSERT INTO r(b, at, n) VALUES (randomblob(8), datetime('now'), random());
                   INSERT INTO r(b, at, n) VALUES (randomblob(8), datetime('now'), random());
                   INSERT INTO r(b, at, n) SELECT randomblob(8), datetime('now'), random() FROM r;
                   INSERT INTO s VALUES (hex(randomblob(4)), random());";
        replicate(&leader, &follower, sql);
        replicate(
            &leader,
            &follower,
            "DELETE FROM r WHERE id = 4; UPDATE r SET n = random();",
        );
        replicate(&leader, &follower, sql);
        assert_eq!(dump(&leader, "r"), dump(&follower, "r"));
        assert_eq!(dump(&leader, "s"), dump(&follower, "s"));
        assert_eq!(dump(&follower, "r").len(), 10);
        // The AUTOINCREMENT counter follows from the explicit ids applied.
        assert_eq!(
            dump(&leader, "sqlite_sequence"),
            dump(&follower, "sqlite_sequence")
        );
    }

    #[test]
    fn autoincrement_counter_is_not_replicated() {
        let schema = "CREATE TABLE r(id INTEGER PRIMARY KEY AUTOINCREMENT, v);";
        let (leader, follower) = (db(schema), db(schema));
        // Row 3 is inserted and deleted in one transaction: the net changeset has rows 1, 2.
        let changeset = capture(
            &leader,
            "INSERT INTO r(v) VALUES (1), (2), (3); DELETE FROM r WHERE id = 3;",
        );
        assert!(decode(&changeset).unwrap().iter().all(|c| c.table == "r"));
        leader
            .execute_batch("INSERT INTO r(v) VALUES (1), (2), (3); DELETE FROM r WHERE id = 3;")
            .unwrap();
        replay(&follower, &changeset).unwrap();
        assert_eq!(dump(&leader, "r"), dump(&follower, "r"));
        let seq = |c: &Connection| {
            c.query_row("SELECT seq FROM sqlite_sequence", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
        };
        assert_eq!((seq(&leader), seq(&follower)), (3, 2));
    }

    #[test]
    fn table_without_primary_key_replicates_by_rowid() {
        let schema = "CREATE TABLE log(msg TEXT, n INTEGER);";
        let (leader, follower) = (db(schema), db(schema));
        replicate(
            &leader,
            &follower,
            "INSERT INTO log VALUES ('x', 1), ('x', 1), ('y', 2);",
        );
        replicate(
            &leader,
            &follower,
            "UPDATE log SET n = 5 WHERE rowid = 2; DELETE FROM log WHERE rowid = 1;",
        );
        let rows = |c: &Connection| -> Vec<(i64, String, i64)> {
            c.prepare("SELECT rowid, msg, n FROM log ORDER BY rowid")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        assert_eq!(
            rows(&follower),
            vec![(2, "x".to_string(), 5), (3, "y".to_string(), 2)]
        );
        assert_eq!(rows(&leader), rows(&follower));
        // Decoded changes carry the rowid as their first column.
        let changes = decode(&capture(&leader, "DELETE FROM log WHERE rowid = 3;")).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].old, vec![int(3), text("y"), int(2)]);
    }

    #[test]
    fn savepoint_rollback_leaves_no_trace() {
        let conn = db(SCHEMA);
        let changeset = capture(
            &conn,
            "INSERT INTO t VALUES (1, 'first', 1.0, NULL);
             SAVEPOINT s;
             INSERT INTO t VALUES (2, 'second', 2.0, NULL);
             UPDATE t SET name = 'changed', score = 9.0 WHERE id = 1;
             ROLLBACK TO s;
             RELEASE s;",
        );
        assert_eq!(
            decode(&changeset).unwrap(),
            vec![RowChange {
                table: "t".into(),
                op: ChangeOp::Insert,
                old: vec![],
                new: vec![
                    int(1),
                    text("first"),
                    Some(Value::Real(1.0)),
                    Some(Value::Null)
                ],
            }]
        );
    }

    #[test]
    fn savepoint_rollback_of_delete_and_update_of_existing_rows() {
        let conn = db(SCHEMA);
        conn.execute_batch("INSERT INTO t VALUES (1, 'a', 1.0, NULL), (2, 'b', 2.0, NULL);")
            .unwrap();
        // Every change inside the savepoint is undone; the net diff is empty.
        let changeset = capture(
            &conn,
            "SAVEPOINT s;
             DELETE FROM t WHERE id = 1;
             UPDATE t SET name = 'x' WHERE id = 2;
             INSERT INTO t VALUES (3, 'c', NULL, NULL);
             ROLLBACK TO s;
             RELEASE s;",
        );
        assert_eq!(decode(&changeset).unwrap(), vec![]);
        // An inserted row deleted inside a rolled-back savepoint is still inserted; a row
        // first touched inside it is changed only by what follows.
        let changeset = capture(
            &conn,
            "INSERT INTO t VALUES (5, 'e', NULL, NULL);
             SAVEPOINT s;
             DELETE FROM t WHERE id = 5;
             DELETE FROM t WHERE id = 1;
             ROLLBACK TO s;
             UPDATE t SET score = 7.0 WHERE id = 1;
             RELEASE s;",
        );
        let mut changes = decode(&changeset).unwrap();
        changes.sort_by_key(|c| c.op == ChangeOp::Insert);
        assert_eq!(
            changes,
            vec![
                RowChange {
                    table: "t".into(),
                    op: ChangeOp::Update,
                    old: vec![int(1), None, Some(Value::Real(1.0)), None],
                    new: vec![None, None, Some(Value::Real(7.0)), None],
                },
                RowChange {
                    table: "t".into(),
                    op: ChangeOp::Insert,
                    old: vec![],
                    new: vec![int(5), text("e"), Some(Value::Null), Some(Value::Null)],
                },
            ]
        );
    }

    fn is_corrupt(r: &Result<()>, needle: &str) -> bool {
        matches!(r, Err(Error::Corrupt(m)) if m.contains(needle))
    }

    #[test]
    fn conflicts_are_errors_and_leave_the_database_unchanged() {
        let (leader, follower) = (db(SCHEMA), db(SCHEMA));
        replicate(
            &leader,
            &follower,
            "INSERT INTO t VALUES (1, 'a', NULL, NULL), (2, 'b', NULL, NULL);",
        );
        let before = dump(&follower, "t");

        // Applying the same changeset twice: the rows already exist.
        let insert = capture(
            &leader,
            "INSERT INTO t VALUES (3, 'c', NULL, NULL), (4, 'd', NULL, NULL);",
        );
        replay(&follower, &insert).unwrap();
        let r = replay(&follower, &insert);
        assert!(
            is_corrupt(&r, "table t: insert of the row with key ("),
            "{r:?}"
        );
        assert!(
            is_corrupt(
                &r,
                "SQLITE_CHANGESET_CONFLICT: a row with this primary key already exists"
            ),
            "{r:?}"
        );
        follower
            .execute_batch("DELETE FROM t WHERE id IN (3, 4)")
            .unwrap();
        assert_eq!(dump(&follower, "t"), before);

        // Missing row.
        let update = capture(
            &leader,
            "UPDATE t SET name = 'z' WHERE id = 2; DELETE FROM t WHERE id = 1;",
        );
        follower
            .execute_batch("DELETE FROM t WHERE id = 2")
            .unwrap();
        let r = replay(&follower, &update);
        assert!(
            is_corrupt(
                &r,
                "table t: update of the row with key (2): SQLITE_CHANGESET_NOTFOUND"
            ),
            "{r:?}"
        );
        follower
            .execute_batch("INSERT INTO t VALUES (2, 'b', NULL, NULL)")
            .unwrap();
        assert_eq!(dump(&follower, "t"), before);

        // Different row.
        follower
            .execute_batch("UPDATE t SET name = 'different' WHERE id = 2")
            .unwrap();
        let r = replay(&follower, &update);
        assert!(
            is_corrupt(
                &r,
                "table t: update of the row with key (2): SQLITE_CHANGESET_DATA"
            ),
            "{r:?}"
        );
        assert!(is_corrupt(&r, "'different'"), "{r:?}");
        follower
            .execute_batch("UPDATE t SET name = 'b' WHERE id = 2")
            .unwrap();
        assert_eq!(dump(&follower, "t"), before);
        replay(&follower, &update).unwrap();
        // Applied once, the changeset no longer fits.
        assert!(replay(&follower, &update).is_err());
    }

    #[test]
    fn failed_apply_undoes_its_partial_work_before_the_caller_rolls_back() {
        let (leader, follower) = (db(SCHEMA), db(SCHEMA));
        let rows: Vec<String> = (1..=50)
            .map(|i| format!("({i}, 'n{i}', NULL, NULL)"))
            .collect();
        let changeset = capture(
            &leader,
            &format!("INSERT INTO t VALUES {};", rows.join(", ")),
        );
        follower
            .execute_batch("INSERT INTO t VALUES (25, 'other', NULL, NULL)")
            .unwrap();
        let before = dump(&follower, "t");
        follower.execute_batch("BEGIN").unwrap();
        let r = apply(&follower, &changeset);
        assert!(is_corrupt(&r, "key (25)"), "{r:?}");
        assert_eq!(dump(&follower, "t"), before);
        follower.execute_batch("ROLLBACK").unwrap();
        assert_eq!(dump(&follower, "t"), before);
    }

    #[test]
    fn schema_mismatch_is_an_error_not_a_silent_skip() {
        let leader = db(SCHEMA);
        let changeset = capture(&leader, "INSERT INTO t VALUES (1, 'a', NULL, NULL);");
        for schema in [
            "CREATE TABLE other(x);",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT);",
            "CREATE TABLE t(id INTEGER, name TEXT PRIMARY KEY, score REAL, data BLOB);",
        ] {
            let follower = db(schema);
            let r = replay(&follower, &changeset);
            assert!(
                is_corrupt(&r, "table t: 1 of its 1 changes were skipped"),
                "{schema}: {r:?}"
            );
        }
        // A follower table with extra trailing columns accepts the change (defaults fill them).
        let follower = db("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB, extra DEFAULT 7);");
        replay(&follower, &changeset).unwrap();
        assert_eq!(dump(&follower, "t")[0][4], Value::Integer(7));
    }

    #[test]
    fn apply_requires_a_transaction_and_accepts_empty_changesets() {
        let conn = db(SCHEMA);
        assert!(matches!(apply(&conn, b"x"), Err(Error::Internal(_))));
        assert!(apply(&conn, &[]).is_ok());
        let empty = capture(&conn, "UPDATE t SET name = 'x' WHERE id = 1;");
        assert!(empty.is_empty());
        replay(&conn, &empty).unwrap();
        assert_eq!(decode(&empty).unwrap(), vec![]);
    }

    #[test]
    fn malformed_changesets_are_corrupt() {
        let leader = db(SCHEMA);
        let changeset = capture(&leader, "INSERT INTO t VALUES (1, 'a', 2.0, x'01');");
        let truncated = &changeset[..changeset.len() - 3];
        assert!(
            matches!(decode(truncated), Err(Error::Corrupt(_))),
            "{:?}",
            decode(truncated)
        );
        let follower = db(SCHEMA);
        assert!(matches!(
            replay(&follower, truncated),
            Err(Error::Corrupt(_))
        ));
        assert!(dump(&follower, "t").is_empty());
        assert!(matches!(
            decode(&[0xff, 0x00, 0x13]),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn decode_reports_ops_and_values() {
        let conn = db(SCHEMA);
        conn.execute_batch("INSERT INTO t VALUES (1, 'a', 1.0, x'01'), (2, 'b', 2.0, NULL);")
            .unwrap();
        let changeset = capture(
            &conn,
            "INSERT INTO t VALUES (3, 'c', NULL, x'0203');
             UPDATE t SET name = 'A' WHERE id = 1;
             DELETE FROM t WHERE id = 2;",
        );
        let mut changes = decode(&changeset).unwrap();
        changes.sort_by_key(|c| match &c.old.first().or(c.new.first()) {
            Some(Some(Value::Integer(i))) => *i,
            _ => -1,
        });
        assert_eq!(
            changes,
            vec![
                RowChange {
                    table: "t".into(),
                    op: ChangeOp::Update,
                    old: vec![int(1), text("a"), None, None],
                    new: vec![None, text("A"), None, None],
                },
                RowChange {
                    table: "t".into(),
                    op: ChangeOp::Delete,
                    old: vec![int(2), text("b"), Some(Value::Real(2.0)), Some(Value::Null)],
                    new: vec![],
                },
                RowChange {
                    table: "t".into(),
                    op: ChangeOp::Insert,
                    old: vec![],
                    new: vec![
                        int(3),
                        text("c"),
                        Some(Value::Null),
                        Some(Value::Blob(vec![2, 3]))
                    ],
                },
            ]
        );
    }

    #[test]
    fn changes_to_a_table_created_in_the_same_transaction_are_captured() {
        let conn = db(SCHEMA);
        let changeset = capture(
            &conn,
            "CREATE TABLE fresh(k TEXT PRIMARY KEY NOT NULL, v INTEGER);
             INSERT INTO fresh VALUES ('a', 1), ('b', 2);
             UPDATE fresh SET v = 20 WHERE k = 'b';
             INSERT INTO t VALUES (1, 'x', NULL, NULL);",
        );
        // The rollback dropped the table; the DDL is not in the changeset.
        assert!(conn.prepare("SELECT * FROM fresh").is_err());
        let follower = db(&format!(
            "{SCHEMA} CREATE TABLE fresh(k TEXT PRIMARY KEY NOT NULL, v INTEGER);"
        ));
        replay(&follower, &changeset).unwrap();
        assert_eq!(
            dump(&follower, "fresh"),
            vec![
                vec![Value::Text("a".into()), Value::Integer(1)],
                vec![Value::Text("b".into()), Value::Integer(20)],
            ]
        );
        assert_eq!(dump(&follower, "t").len(), 1);
        // Without the DDL the follower refuses the changeset.
        assert!(is_corrupt(&replay(&db(SCHEMA), &changeset), "table fresh"));
    }

    #[test]
    fn add_column_after_changes_in_the_same_transaction() {
        let conn = db("CREATE TABLE a(id INTEGER PRIMARY KEY, x);");
        conn.execute_batch("INSERT INTO a VALUES (1, 'one');")
            .unwrap();
        let changeset = capture(
            &conn,
            "INSERT INTO a VALUES (2, 'two');
             UPDATE a SET x = 'uno' WHERE id = 1;
             ALTER TABLE a ADD COLUMN y DEFAULT 5;
             INSERT INTO a VALUES (3, 'three', 6);",
        );
        let follower = db(
            "CREATE TABLE a(id INTEGER PRIMARY KEY, x); INSERT INTO a VALUES (1, 'one');
                           ALTER TABLE a ADD COLUMN y DEFAULT 5;",
        );
        replay(&follower, &changeset).unwrap();
        assert_eq!(
            dump(&follower, "a"),
            vec![
                vec![
                    Value::Integer(1),
                    Value::Text("uno".into()),
                    Value::Integer(5)
                ],
                vec![
                    Value::Integer(2),
                    Value::Text("two".into()),
                    Value::Integer(5)
                ],
                vec![
                    Value::Integer(3),
                    Value::Text("three".into()),
                    Value::Integer(6)
                ],
            ]
        );
    }

    #[test]
    fn dropping_a_changed_table_in_the_same_transaction_is_unsupported() {
        for ddl in [
            "DROP TABLE a",
            "ALTER TABLE a RENAME TO z",
            "ALTER TABLE a DROP COLUMN y",
        ] {
            let conn = db("CREATE TABLE a(id INTEGER PRIMARY KEY, x, y); CREATE TABLE b(id INTEGER PRIMARY KEY);");
            conn.execute_batch("BEGIN").unwrap();
            let mut session = Session::new(&conn).unwrap();
            conn.execute_batch(&format!(
                "INSERT INTO a VALUES (1, 2, 3); INSERT INTO b VALUES (1); {ddl};"
            ))
            .unwrap();
            let r = session.changeset();
            assert!(
                matches!(&r, Err(e) if e.code() == crate::error::sqlstate::FEATURE_NOT_SUPPORTED),
                "{ddl}: {r:?}"
            );
        }
        // Renaming a column is fine.
        let conn = db("CREATE TABLE a(id INTEGER PRIMARY KEY, x, y);");
        let changeset = capture(
            &conn,
            "INSERT INTO a VALUES (1, 2, 3); ALTER TABLE a RENAME COLUMN x TO q;",
        );
        assert_eq!(decode(&changeset).unwrap().len(), 1);
    }

    #[test]
    fn rows_with_null_primary_key_are_not_recorded() {
        // SQLite lets a non-INTEGER PRIMARY KEY of a rowid table hold NULL, and the session
        // extension ignores such rows: they would silently not replicate.
        let conn = db("CREATE TABLE k(name TEXT PRIMARY KEY, v);");
        let changeset = capture(&conn, "INSERT INTO k VALUES (NULL, 1), ('a', 2);");
        let changes = decode(&changeset).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].new, vec![text("a"), int(2)]);
        // Declaring the key NOT NULL turns the silent loss into an error on the leader.
        let conn = db("CREATE TABLE k(name TEXT PRIMARY KEY NOT NULL, v);");
        assert!(conn.execute("INSERT INTO k VALUES (NULL, 1)", []).is_err());
    }

    #[test]
    fn triggers_and_cascades_are_not_applied_twice() {
        let schema = "PRAGMA foreign_keys = ON;
            CREATE TABLE parent(id INTEGER PRIMARY KEY);
            CREATE TABLE child(id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id) ON DELETE CASCADE);
            CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT);
            CREATE TRIGGER child_audit AFTER INSERT ON child BEGIN
                INSERT INTO audit(what) VALUES ('child ' || new.id);
            END;";
        let (leader, follower) = (db(schema), db(schema));
        replicate(
            &leader,
            &follower,
            "INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (10, 1), (20, 2);",
        );
        replicate(&leader, &follower, "DELETE FROM parent WHERE id = 1;");
        for table in ["parent", "child", "audit"] {
            assert_eq!(dump(&leader, table), dump(&follower, table), "{table}");
        }
        assert_eq!(dump(&follower, "audit").len(), 2);
        assert_eq!(
            dump(&follower, "child"),
            vec![vec![Value::Integer(20), Value::Integer(2)]]
        );
        // A changeset that breaks a foreign key on the follower is refused.
        let changeset = capture(&leader, "INSERT INTO child VALUES (40, 2);");
        follower
            .execute_batch("DELETE FROM child WHERE parent = 2; DELETE FROM parent WHERE id = 2;")
            .unwrap();
        let r = replay(&follower, &changeset);
        assert!(is_corrupt(&r, "SQLITE_CHANGESET_FOREIGN_KEY"), "{r:?}");
        // Triggers are enabled again after applying, whether it succeeded or failed.
        follower
            .execute_batch("INSERT INTO parent VALUES (3)")
            .unwrap();
        follower
            .execute("INSERT INTO child VALUES (30, 3)", params![])
            .unwrap();
        assert_eq!(dump(&follower, "audit").len(), 3);
    }

    #[test]
    fn session_is_usable_across_statements_and_changesets() {
        let conn = db(SCHEMA);
        conn.execute_batch("BEGIN").unwrap();
        let mut session = Session::new(&conn).unwrap();
        conn.execute("INSERT INTO t VALUES (?1, ?2, NULL, NULL)", params![1, "a"])
            .unwrap();
        let first = session.changeset().unwrap();
        conn.execute("INSERT INTO t VALUES (?1, ?2, NULL, NULL)", params![2, "b"])
            .unwrap();
        let second = session.changeset().unwrap();
        drop(session);
        conn.execute_batch("ROLLBACK").unwrap();
        assert_eq!(decode(&first).unwrap().len(), 1);
        assert_eq!(decode(&second).unwrap().len(), 2);
    }
}
