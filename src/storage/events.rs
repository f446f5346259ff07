//! Change events: the rows each committed entry changed, kept in the replica for a bounded
//! window (DESIGN.md decision 4: the change stream is the committed changesets).
//!
//! Applying a changeset captures every row it changes, whole (`changeset::apply_capturing`);
//! the entry's rows are written to `_cairn_events` in the same SQLite transaction as the rows
//! themselves, so a replica's events are exactly its applied entries' — after a crash, after
//! a snapshot install (the snapshot is the file, events included), on every replica alike.
//! That is what lets a subscriber read a shard's changes from any replica and switch
//! replicas mid-stream without a gap or a duplicate.
//!
//! Where a reader stands is a [`Position`]: (entry, event within it). The window is pruned
//! by the entries' own commit times and sizes, never by a local clock, so replicas with the
//! same [`Window`] prune at the same entries. Everything up to `events_floor` (in
//! `_cairn_state`) is gone: a reader behind it is told so, never silently skipped ahead.

use super::changeset::{AppliedRow, ChangeOp};
use crate::error::{Error, Result};
use crate::replication::{LogId, WireValue};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS _cairn_events (
        idx INTEGER NOT NULL, first INTEGER NOT NULL, count INTEGER NOT NULL,
        time INTEGER NOT NULL, bytes INTEGER NOT NULL, data BLOB NOT NULL,
        PRIMARY KEY (idx, first));
";

/// Tables whose changes are not kept as events: file chunks (`sql::files`), whose bytes
/// would be stored a third time on every replica (log, row, event) while nobody follows
/// them — file events come from `cairn_file_versions`. Subscriptions to them and result
/// caching of queries over them are refused, as both rely on events.
pub const UNRECORDED_TABLES: &[&str] = &["cairn_file_chunks"];

/// Events of one entry are kept in parts of about this many bytes, so no read has to load
/// a whole bulk load's events at once.
const PART_BYTES: usize = 256 * 1024;

/// How long and how much of its change events a replica keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Events of entries committed longer ago than this (by the leaders' clocks) go.
    pub max_age: Duration,
    /// The oldest events go while the kept events' encoded size is above this.
    pub max_bytes: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A point in one shard's stream of events, between two events: every event of the entries
/// before `index` and the first `ordinal` events of entry `index` come before it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    pub index: u64,
    pub ordinal: u32,
}

impl Position {
    /// Right after everything entry `index` changed (and everything before it).
    pub fn after_entry(index: u64) -> Position {
        Position {
            index: index + 1,
            ordinal: 0,
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ordinal == 0 {
            write!(f, "{}", self.index)
        } else {
            write!(f, "{}.{}", self.index, self.ordinal)
        }
    }
}

impl std::str::FromStr for Position {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        let (index, ordinal) = match s.split_once('.') {
            Some((i, o)) => (i, o.parse().map_err(|_| ())?),
            None => (s, 0),
        };
        Ok(Position {
            index: index.parse().map_err(|_| ())?,
            ordinal,
        })
    }
}

/// One changed row, as kept: values in SQLite's stored form, columns named by the part's
/// table list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredChange {
    /// Index into [`StoredPart::tables`].
    pub table: u32,
    pub op: ChangeOp,
    pub old: Vec<WireValue>,
    pub new: Vec<WireValue>,
    /// The cross-shard transaction whose commit made this change (its id on every shard it
    /// wrote); None for a change committed by this shard's entry alone.
    pub txn: Option<u64>,
    /// Which of the entry's own transactions made it (group commit puts several
    /// autocommit statements in one entry, each its own changeset): 0, 1, ...
    pub group: u32,
}

/// A changed table as it was when the change was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredTable {
    pub name: String,
    pub columns: Vec<String>,
    /// The primary key's columns (indexes into `columns`, in key order); empty for a table
    /// without one.
    pub key: Vec<u32>,
}

/// The encoded `data` of one `_cairn_events` row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredPart {
    pub tables: Vec<StoredTable>,
    pub changes: Vec<StoredChange>,
}

/// One `_cairn_events` row as read: entry `index`'s events `first .. first + count`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawPart {
    pub index: u64,
    pub first: u32,
    pub count: u32,
    /// Commit time: the leader's clock when it proposed the entry, µs since the Unix epoch.
    pub time: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl RawPart {
    pub fn decode(&self) -> Result<StoredPart> {
        postcard::from_bytes(&self.data)
            .map_err(|e| Error::Corrupt(format!("change events of entry {}: {e}", self.index)))
    }
}

/// What one read of a replica's events found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// Events of entries up to this index are gone from this replica.
    pub floor: u64,
    /// The replica's last applied entry when it was read.
    pub applied: u64,
    /// Parts at or after the position asked for, in order.
    pub parts: Vec<RawPart>,
    /// Where a reader stands after these parts: past `applied` when the page holds
    /// everything there was, else just after its last part.
    pub through: Position,
}

/// The rows one entry changed, as its ops are applied (see `Replica::apply`).
#[derive(Default)]
pub struct EntryChanges {
    part: StoredPart,
    /// Changesets of this entry so far, and whether the last op was one: a changeset right
    /// after another is the next transaction of a group commit (a transaction's DDL
    /// splits its own changes, with the DDL between them).
    changesets: u32,
    after_changeset: bool,
}

impl EntryChanges {
    /// The entry ran DDL: the next changeset continues the same transaction.
    pub fn ddl(&mut self) {
        self.after_changeset = false;
    }

    pub fn is_empty(&self) -> bool {
        self.part.changes.is_empty()
    }
}

/// A replica's side of change events: what it keeps and the caches that make recording
/// cheap. Lives with the replica's writable connection.
pub struct Recorder {
    window: Window,
    /// Tables' columns and keys, read from SQLite; dropped whenever the schema may change.
    tables: HashMap<String, Arc<StoredTable>>,
    /// The kept events' total `bytes`, and the oldest kept entry with its time.
    bytes: u64,
    oldest: Option<(u64, u64)>,
}

impl Recorder {
    /// Read what `conn` keeps. A replica that has never recorded events starts its floor at
    /// its applied index: nothing before it was recorded.
    pub fn open(conn: &Connection, window: Window) -> Result<Recorder> {
        conn.execute_batch(SCHEMA)?;
        if floor(conn)?.is_none() {
            let applied = applied(conn)?;
            set_floor(conn, applied)?;
        }
        let mut recorder = Recorder {
            window,
            tables: HashMap::new(),
            bytes: 0,
            oldest: None,
        };
        recorder.reload(conn)?;
        Ok(recorder)
    }

    /// Forget everything cached: the file's contents were replaced (snapshot restore).
    pub fn reload(&mut self, conn: &Connection) -> Result<()> {
        self.tables.clear();
        self.bytes = conn.query_row(
            "SELECT coalesce(sum(bytes), 0) FROM _cairn_events",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64;
        self.oldest = oldest(conn)?;
        Ok(())
    }

    /// The schema may have changed: column names are read again.
    pub fn schema_changed(&mut self) {
        self.tables.clear();
    }

    /// Add the rows one changeset changed to `entry`; `txn` is the cross-shard transaction
    /// they belong to, if any. Rows of [`UNRECORDED_TABLES`] are left out.
    pub fn add(
        &mut self,
        conn: &Connection,
        entry: &mut EntryChanges,
        txn: Option<u64>,
        rows: Vec<AppliedRow>,
    ) -> Result<()> {
        let group = match txn {
            Some(_) => 0,
            None => {
                if entry.after_changeset {
                    entry.changesets += 1;
                }
                entry.after_changeset = true;
                entry.changesets
            }
        };
        for row in rows {
            if UNRECORDED_TABLES.contains(&row.table.as_str()) {
                continue;
            }
            let table = match entry.part.tables.iter().position(|t| t.name == row.table) {
                Some(i) => i,
                None => {
                    let table = self.table(conn, &row.table)?;
                    entry.part.tables.push(table.as_ref().clone());
                    entry.part.tables.len() - 1
                }
            };
            entry.part.changes.push(StoredChange {
                table: table as u32,
                op: row.op,
                old: row.old.into_iter().map(Into::into).collect(),
                new: row.new.into_iter().map(Into::into).collect(),
                txn,
                group,
            });
        }
        Ok(())
    }

    fn table(&mut self, conn: &Connection, name: &str) -> Result<Arc<StoredTable>> {
        if let Some(t) = self.tables.get(name) {
            return Ok(t.clone());
        }
        let mut stmt = conn.prepare("SELECT name, pk FROM pragma_table_xinfo(?1) ORDER BY cid")?;
        let columns = stmt
            .query_map([name], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut key: Vec<(i64, u32)> = columns
            .iter()
            .enumerate()
            .filter(|(_, (_, pk))| *pk > 0)
            .map(|(i, (_, pk))| (*pk, i as u32))
            .collect();
        key.sort();
        let table = Arc::new(StoredTable {
            name: name.to_string(),
            columns: columns.into_iter().map(|(n, _)| n).collect(),
            key: key.into_iter().map(|(_, i)| i).collect(),
        });
        self.tables.insert(name.to_string(), table.clone());
        Ok(table)
    }

    /// Keep entry `index`'s changes (committed at `time`, µs), then let the window go past
    /// what it no longer covers. Runs inside the transaction applying the entry.
    pub fn record(
        &mut self,
        conn: &Connection,
        index: u64,
        time: u64,
        entry: EntryChanges,
    ) -> Result<()> {
        if !entry.is_empty() {
            let mut insert = conn.prepare_cached(
                "INSERT INTO _cairn_events (idx, first, count, time, bytes, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (first, part) in split(entry.part) {
                let data = postcard::to_stdvec(&part).map_err(Error::internal)?;
                let bytes = data.len() as u64;
                insert.execute(params![
                    index as i64,
                    first,
                    part.changes.len() as i64,
                    time as i64,
                    bytes as i64,
                    data
                ])?;
                self.bytes += bytes;
            }
            self.oldest.get_or_insert((index, time));
        }
        self.prune(conn, index, time)
    }

    /// Drop the oldest entries' events while they are older than the window's age (by
    /// `now`, the newest entry's commit time) or the kept bytes exceed its size. Whole
    /// entries only, and never `newest`: the entry just recorded stays readable however
    /// large it is.
    fn prune(&mut self, conn: &Connection, newest: u64, now: u64) -> Result<()> {
        let cutoff = now.saturating_sub(self.window.max_age.as_micros() as u64);
        let due = |time: u64, bytes: u64| time < cutoff || bytes > self.window.max_bytes;
        match self.oldest {
            Some((_, time)) if due(time, self.bytes) => {}
            _ => return Ok(()),
        }
        let mut through = None;
        let mut bytes = self.bytes;
        {
            let mut stmt = conn.prepare_cached(
                "SELECT idx, min(time), sum(bytes) FROM _cairn_events GROUP BY idx ORDER BY idx",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let (idx, time, size) = (
                    row.get::<_, i64>(0)? as u64,
                    row.get::<_, i64>(1)? as u64,
                    row.get::<_, i64>(2)? as u64,
                );
                if idx >= newest || !due(time, bytes) {
                    break;
                }
                bytes -= size;
                through = Some(idx);
            }
        }
        if let Some(through) = through {
            conn.prepare_cached("DELETE FROM _cairn_events WHERE idx <= ?1")?
                .execute([through as i64])?;
            set_floor(conn, through)?;
            self.bytes = bytes;
            self.oldest = oldest(conn)?;
        }
        Ok(())
    }
}

/// Cut an entry's changes into parts of about `PART_BYTES`, each with the ordinal of its
/// first change.
fn split(part: StoredPart) -> Vec<(u32, StoredPart)> {
    let size = |c: &StoredChange| -> usize {
        16 + c
            .old
            .iter()
            .chain(&c.new)
            .map(|v| match v {
                WireValue::Text(s) => s.len() + 2,
                WireValue::Blob(b) => b.len() + 2,
                _ => 9,
            })
            .sum::<usize>()
    };
    let mut parts = Vec::new();
    let mut current = StoredPart::default();
    let (mut first, mut bytes, mut ordinal) = (0u32, 0usize, 0u32);
    for change in part.changes {
        if bytes >= PART_BYTES && !current.changes.is_empty() {
            parts.push((first, std::mem::take(&mut current)));
            first = ordinal;
            bytes = 0;
        }
        bytes += size(&change);
        let source = &part.tables[change.table as usize];
        let table = match current.tables.iter().position(|t| t.name == source.name) {
            Some(i) => i,
            None => {
                current.tables.push(source.clone());
                current.tables.len() - 1
            }
        };
        current.changes.push(StoredChange {
            table: table as u32,
            ..change
        });
        ordinal += 1;
    }
    if !current.changes.is_empty() {
        parts.push((first, current));
    }
    parts
}

fn oldest(conn: &Connection) -> Result<Option<(u64, u64)>> {
    Ok(conn
        .query_row(
            "SELECT idx, time FROM _cairn_events ORDER BY idx LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .optional()?)
}

fn state<T: serde::de::DeserializeOwned>(conn: &Connection, key: &str) -> Result<Option<T>> {
    let bytes: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM _cairn_state WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?;
    bytes
        .map(|b| postcard::from_bytes(&b).map_err(|e| Error::Corrupt(format!("{key}: {e}"))))
        .transpose()
}

fn floor(conn: &Connection) -> Result<Option<u64>> {
    state(conn, "events_floor")
}

fn set_floor(conn: &Connection, index: u64) -> Result<()> {
    let bytes = postcard::to_stdvec(&index).map_err(Error::internal)?;
    conn.execute(
        "INSERT OR REPLACE INTO _cairn_state (key, value) VALUES ('events_floor', ?1)",
        [bytes],
    )?;
    Ok(())
}

/// The replica's last applied log index as its file says (0 before any).
pub fn applied(conn: &Connection) -> Result<u64> {
    Ok(state::<LogId>(conn, "applied")?.map_or(0, |l| l.index))
}

/// Read the events from `after` on, up to about `max_bytes` of them (at least one part),
/// with the replica's floor and applied index, all at one moment (one read transaction).
/// A position at or behind the floor gets no parts: the caller reports it as gone.
pub fn read(conn: &Connection, after: Position, max_bytes: usize) -> Result<Page> {
    let tx = conn.unchecked_transaction()?;
    let floor = floor(&tx)?.unwrap_or(0);
    let applied = applied(&tx)?;
    let mut page = Page {
        floor,
        applied,
        parts: Vec::new(),
        through: Position::after_entry(applied).max(after),
    };
    if after.index <= floor {
        return Ok(page);
    }
    let mut stmt = tx.prepare_cached(
        "SELECT idx, first, count, time, data FROM _cairn_events
         WHERE idx > ?1 OR (idx = ?1 AND first + count > ?2) ORDER BY idx, first",
    )?;
    let mut rows = stmt.query(params![after.index as i64, after.ordinal as i64])?;
    let mut bytes = 0;
    while let Some(row) = rows.next()? {
        if bytes >= max_bytes && !page.parts.is_empty() {
            let last = page.parts.last().expect("a part");
            page.through = Position {
                index: last.index,
                ordinal: last.first + last.count,
            };
            break;
        }
        let part = RawPart {
            index: row.get::<_, i64>(0)? as u64,
            first: row.get::<_, i64>(1)? as u32,
            count: row.get::<_, i64>(2)? as u32,
            time: row.get::<_, i64>(3)? as u64,
            data: row.get(4)?,
        };
        bytes += part.data.len();
        page.parts.push(part);
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_print_and_parse() {
        let p = Position {
            index: 12,
            ordinal: 3,
        };
        assert_eq!(p.to_string(), "12.3");
        assert_eq!("12.3".parse::<Position>(), Ok(p));
        assert_eq!("12".parse::<Position>(), Ok(Position::after_entry(11)));
        assert!("x".parse::<Position>().is_err());
        assert!(Position::after_entry(11) < p);
    }

    fn change(i: i64) -> StoredChange {
        StoredChange {
            table: 0,
            op: ChangeOp::Insert,
            old: vec![],
            new: vec![WireValue::Integer(i), WireValue::Text("x".repeat(100_000))],
            txn: None,
            group: 0,
        }
    }

    #[test]
    fn large_entries_split_into_parts_keeping_order() {
        let part = StoredPart {
            tables: vec![StoredTable {
                name: "t".into(),
                columns: vec!["a".into(), "b".into()],
                key: vec![0],
            }],
            changes: (0..10).map(change).collect(),
        };
        let parts = split(part);
        assert!(parts.len() > 1);
        let mut next = 0;
        for (first, p) in &parts {
            assert_eq!(*first, next);
            assert_eq!(p.tables.len(), 1);
            for c in &p.changes {
                assert_eq!(c.new[0], WireValue::Integer(next as i64));
                next += 1;
            }
        }
        assert_eq!(next, 10);
    }
}
