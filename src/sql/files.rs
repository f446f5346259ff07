//! Files: stored in the cluster as rows, so they are sharded, replicated, snapshotted and
//! repaired like any rows, and reachable from every node.
//!
//! Two hash-distributed tables, made on first use:
//! - `cairn_file_versions (path, version, state, size, sha256, content_type, chunk_bytes,
//!   chunks, created_us, changed_us)`, keyed by `(path, version)` and distributed on `path`:
//!   one row per version of a file. `state` is `uploading` while its chunks are written,
//!   `current` for the one version a path shows, `superseded`/`deleted` once replaced or
//!   deleted, `abandoned` for an upload that failed or went silent. Every change of a path
//!   is one transaction on the path's shard, so a reader sees the old file or the new one.
//! - `cairn_file_chunks (chunk, data)`: `chunk` is `<version>:<seq>` (hash-distributed, so
//!   one file's chunks spread over every shard), `data` at most [`Settings::chunk_bytes`]
//!   (`limits::FILE_CHUNK_BYTES` unless measuring), recorded per version.
//!   Chunks are written before their version becomes current and never change afterwards.
//!
//! The view `cairn_files` shows the current versions to SQL. Versions that are no longer
//! current are kept for [`Settings::gc_after`] (downloads in flight finish), then their chunks
//! and row are deleted by [`collect`] on the node leading the meta group; an upload silent
//! for that long is marked abandoned and collected the same way.

use super::kv::run;
use super::{Engine, Output, Session};
use crate::error::{sqlstate, Error, Result};
use crate::limits;
use rusqlite::types::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Versions of files, one row each (hash-distributed on `path`).
pub const VERSIONS: &str = "cairn_file_versions";
/// File contents, one row per chunk (hash-distributed on `chunk`).
pub const CHUNKS: &str = "cairn_file_chunks";
/// The current version of every file, for SQL.
pub const VIEW: &str = "cairn_files";

const CREATE_VERSIONS: &str = "CREATE TABLE IF NOT EXISTS cairn_file_versions (\
    path text NOT NULL, version text NOT NULL, state text NOT NULL, \
    size bigint NOT NULL DEFAULT 0, sha256 text, content_type text, \
    chunk_bytes bigint NOT NULL, chunks bigint NOT NULL DEFAULT 0, \
    created_us bigint NOT NULL, changed_us bigint NOT NULL, renamed_from text, length bigint, \
    PRIMARY KEY (path, version))";
const CREATE_CHUNKS: &str =
    "CREATE TABLE IF NOT EXISTS cairn_file_chunks (chunk text PRIMARY KEY, data bytea NOT NULL)";
const CREATE_VIEW: &str = "CREATE OR REPLACE VIEW cairn_files AS \
    SELECT path, size, sha256, content_type, to_timestamp(changed_us / 1000000.0) AS modified_at, \
    to_timestamp(created_us / 1000000.0) AS created_at, version \
    FROM cairn_file_versions WHERE state = 'current'";

/// The node's file settings (from its flags).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a replaced or deleted version is kept for downloads in flight, and how long
    /// an upload may be silent before it is abandoned.
    pub gc_after: Duration,
    /// Bytes per chunk of the versions this node writes (each version records its own).
    pub chunk_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            gc_after: limits::FILE_GC_AFTER,
            chunk_bytes: limits::FILE_CHUNK_BYTES,
        }
    }
}

impl Settings {
    /// How often an upload tells the cluster it is alive.
    fn touch_every(&self) -> Duration {
        (self.gc_after / 4).min(limits::FILE_UPLOAD_TOUCH_EVERY)
    }

    fn gc_after_us(&self) -> i64 {
        self.gc_after.as_micros().min(i64::MAX as u128) as i64
    }
}

/// The current version of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub path: String,
    pub version: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
    pub content_type: Option<String>,
    pub chunk_bytes: u64,
    pub chunks: u64,
    /// µs since the Unix epoch, from the clock of the shard leader that made it current.
    pub modified_us: i64,
}

impl File {
    /// The chunks holding bytes `start..end` (end exclusive), in order.
    pub fn chunks_for(&self, start: u64, end: u64) -> std::ops::Range<u64> {
        if end <= start || self.chunk_bytes == 0 {
            return 0..0;
        }
        start / self.chunk_bytes..end.div_ceil(self.chunk_bytes)
    }
}

/// What a change requires of the path's current file.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Any,
    /// No current file (`If-None-Match: *`).
    Absent,
    /// A current file, whatever its contents (`If-Match: *`).
    Present,
    /// A current file with this SHA-256 (`If-Match: "<sha256>"`).
    Sha256(String),
}

impl Condition {
    fn holds(&self, current: Option<&str>) -> bool {
        match self {
            Condition::Any => true,
            Condition::Absent => current.is_none(),
            Condition::Present => current.is_some(),
            Condition::Sha256(want) => current.is_some_and(|c| c.eq_ignore_ascii_case(want)),
        }
    }
}

fn precondition_failed(path: &str, condition: &Condition) -> Error {
    let why = match condition {
        Condition::Absent => format!("file {path:?} exists"),
        Condition::Sha256(s) => format!("file {path:?} does not have SHA-256 {s}"),
        Condition::Present | Condition::Any => format!("file {path:?} does not exist"),
    };
    Error::sql(sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, why)
}

fn not_found(path: &str) -> Error {
    Error::sql(sqlstate::UNDEFINED_FILE, format!("no file {path:?}"))
}

/// A path as stored: without a leading `/`, checked against the named limits. Paths are
/// UTF-8 (the caller's type), `/`-separated, with no empty, `.` or `..` segment, no NUL or
/// other control character, and no trailing `/` (folders are prefixes, not files).
pub fn check_path(path: &str) -> Result<String> {
    let bad = |why: &str| {
        Err(Error::sql(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("invalid file path {path:?}: {why}"),
        ))
    };
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return bad("it is empty");
    }
    if trimmed.len() > limits::FILE_PATH_BYTES_MAX {
        return Err(Error::sql(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "a file path is at most {} bytes; this one has {}",
                limits::FILE_PATH_BYTES_MAX,
                trimmed.len()
            ),
        ));
    }
    if trimmed.chars().any(|c| c.is_control()) {
        return bad("it holds a NUL or another control character");
    }
    if trimmed.ends_with('/') {
        return bad("it ends with '/' (a folder, not a file)");
    }
    for segment in trimmed.split('/') {
        match segment {
            "" => return bad("it has an empty segment ('//')"),
            "." | ".." => return bad("'.' and '..' are not allowed as segments"),
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

/// A folder prefix as stored: `""` for the root, else `a/b/` (checked like a path).
pub fn check_prefix(prefix: &str) -> Result<String> {
    let trimmed = prefix.trim_start_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let (body, slash) = match trimmed.strip_suffix('/') {
        Some(b) => (b, "/"),
        None => (trimmed, ""),
    };
    Ok(format!("{}{slash}", check_path(body)?))
}

/// A folder as stored: `""` for the root, else its path ending in `/` (`a/b` and `/a/b/`
/// are both `a/b/`).
pub fn check_folder(folder: &str) -> Result<String> {
    let prefix = check_prefix(folder)?;
    if prefix.is_empty() || prefix.ends_with('/') {
        Ok(prefix)
    } else {
        Ok(format!("{prefix}/"))
    }
}

fn chunk_key(version: &str, seq: u64) -> String {
    format!("{version}:{seq:010}")
}

fn exists(engine: &Engine) -> bool {
    let catalog = engine.cluster.catalog();
    catalog.table(VERSIONS).is_some() && catalog.table(CHUNKS).is_some()
}

/// Create the tables and the view unless they exist.
pub async fn ensure_tables(engine: &Arc<Engine>) -> Result<()> {
    if exists(engine) && engine.cluster.catalog().relation_exists(VIEW) {
        return Ok(());
    }
    let mut session = engine.session();
    let mut result = Ok(());
    for sql in [CREATE_VERSIONS, CREATE_CHUNKS, CREATE_VIEW] {
        result = run(&mut session, sql, vec![]).await.map(|_| ());
        if result.is_err() {
            break;
        }
    }
    session.close().await;
    result
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Text(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    }
}

/// Columns [`file`] reads, in order.
const FILE_COLUMNS: &str =
    "path, version, size, sha256, content_type, chunk_bytes, chunks, changed_us";

fn file(row: &[Value]) -> Result<File> {
    let corrupt = || Error::Corrupt(format!("{VERSIONS}: a current row missing a column"));
    Ok(File {
        path: text(&row[0]).ok_or_else(corrupt)?,
        version: text(&row[1]).ok_or_else(corrupt)?,
        size: int(&row[2]).ok_or_else(corrupt)? as u64,
        sha256: text(&row[3]).unwrap_or_default(),
        content_type: text(&row[4]),
        chunk_bytes: int(&row[5]).ok_or_else(corrupt)? as u64,
        chunks: int(&row[6]).ok_or_else(corrupt)? as u64,
        modified_us: int(&row[7]).ok_or_else(corrupt)?,
    })
}

/// A session reading at `consistency` (linearizable unless given).
async fn reading(engine: &Arc<Engine>, consistency: Option<&str>) -> Result<Session> {
    super::kv::reading(engine, consistency, None).await
}

async fn run_closing(session: &mut Session, sql: &str, params: Vec<Value>) -> Result<Output> {
    let out = run(session, sql, params).await;
    session.close().await;
    out
}

/// The path's current file, or None.
pub async fn current(
    engine: &Arc<Engine>,
    path: &str,
    consistency: Option<&str>,
) -> Result<Option<File>> {
    let path = check_path(path)?;
    if !exists(engine) {
        return Ok(None);
    }
    let mut session = reading(engine, consistency).await?;
    let sql =
        format!("SELECT {FILE_COLUMNS} FROM {VERSIONS} WHERE path = $1 AND state = 'current'");
    let out = run_closing(&mut session, &sql, vec![Value::Text(path)]).await?;
    out.rows.first().map(|r| file(r)).transpose()
}

/// Up to `limit` current files whose paths start with `prefix`, in path order, after
/// `after` if given.
pub async fn list(
    engine: &Arc<Engine>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    consistency: Option<&str>,
) -> Result<Vec<File>> {
    let prefix = check_prefix(prefix)?;
    if !exists(engine) {
        return Ok(Vec::new());
    }
    let mut session = reading(engine, consistency).await?;
    let prefixed = match prefix.chars().count() {
        0 => String::new(),
        n => format!(" AND substr(path, 1, {n}) = $1"),
    };
    let sql = format!(
        "SELECT {FILE_COLUMNS} FROM {VERSIONS} WHERE state = 'current' AND path >= $1{prefixed} \
         AND path > $2 ORDER BY path LIMIT {limit}"
    );
    let params = vec![
        Value::Text(prefix),
        Value::Text(after.unwrap_or("").trim_start_matches('/').into()),
    ];
    let out = run_closing(&mut session, &sql, params).await?;
    out.rows.iter().map(|r| file(r)).collect()
}

/// One chunk's bytes. A chunk of a current version is always there; one of a version
/// replaced longer than `gc_after` ago may be gone (the download fails, it is never mixed).
pub async fn read_chunk(engine: &Arc<Engine>, version: &str, seq: u64) -> Result<Vec<u8>> {
    let mut session = engine.session();
    let sql = format!("SELECT data FROM {CHUNKS} WHERE chunk = $1");
    let key = chunk_key(version, seq);
    let out = run_closing(&mut session, &sql, vec![Value::Text(key.clone())]).await?;
    match out.rows.first().map(|r| &r[0]) {
        Some(Value::Blob(b)) => Ok(b.clone()),
        Some(Value::Text(t)) => Ok(t.clone().into_bytes()),
        _ => Err(Error::Unavailable(format!(
            "chunk {key} is gone: the file was replaced or deleted more than the collection \
             delay ago; read it again"
        ))),
    }
}

/// Bytes `start..end` of `file`, chunk by chunk, [`limits::FILE_READ_AHEAD`] chunks read
/// ahead. A chunk that is missing or not the size the file says is an error (and ends the
/// stream's use): never a short or wrong piece passed on as if whole.
pub fn read_range(
    engine: Arc<Engine>,
    file: File,
    start: u64,
    end: u64,
) -> impl futures::Stream<Item = Result<bytes::Bytes>> + Send {
    use futures::StreamExt;
    let (chunk_bytes, size) = (file.chunk_bytes, file.size);
    let end = end.min(size);
    let version = Arc::new(file.version.clone());
    futures::stream::iter(file.chunks_for(start, end))
        .map(move |seq| {
            let (engine, version) = (engine.clone(), version.clone());
            async move {
                let data = read_chunk(&engine, &version, seq).await?;
                let chunk_start = seq * chunk_bytes;
                let expected = chunk_bytes.min(size - chunk_start);
                if data.len() as u64 != expected {
                    return Err(Error::Corrupt(format!(
                        "chunk {seq} of version {version} has {} bytes, not {expected}",
                        data.len()
                    )));
                }
                let from = start.saturating_sub(chunk_start) as usize;
                let to = (end - chunk_start).min(expected) as usize;
                Ok(bytes::Bytes::from(data).slice(from..to))
            }
        })
        .buffered(limits::FILE_READ_AHEAD)
}

/// Write one chunk (idempotent: a retried write of the same chunk writes the same bytes).
async fn write_chunk(engine: Arc<Engine>, key: String, data: Vec<u8>) -> Result<()> {
    let sql = format!(
        "INSERT INTO {CHUNKS} (chunk, data) VALUES ($1, $2) \
         ON CONFLICT (chunk) DO UPDATE SET data = excluded.data"
    );
    let deadline = Instant::now() + limits::FILE_CHUNK_WRITE_TIMEOUT;
    let mut backoff = Duration::from_millis(20);
    loop {
        let mut session = engine.session();
        let params = vec![Value::Text(key.clone()), Value::Blob(data.clone())];
        match run_closing(&mut session, &sql, params).await {
            Ok(_) => return Ok(()),
            // Nothing else sees a chunk before its version is current: writing it again
            // after an unknown outcome is safe.
            Err(
                Error::Retry(_)
                | Error::Ambiguous(_)
                | Error::NotLeader { .. }
                | Error::Unavailable(_),
            ) if Instant::now() + backoff < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

/// An upload in progress: chunks are written as the bytes arrive (at most
/// [`limits::FILE_UPLOAD_PARALLEL`] at once, so memory stays bounded whatever the size); the
/// file appears only at [`Upload::finish`]. Dropped unfinished, it is abandoned: its chunks
/// are deleted at once, and again by the collector.
pub struct Upload {
    engine: Arc<Engine>,
    settings: Settings,
    path: String,
    version: String,
    content_type: Option<String>,
    hasher: Sha256,
    size: u64,
    next_seq: u64,
    buffer: Vec<u8>,
    writing: JoinSet<Result<()>>,
    touched: Instant,
    done: bool,
}

impl Upload {
    /// Start an upload of `path`; `condition` is checked now (to fail before any byte is
    /// sent) and again when the file becomes current.
    pub async fn begin(
        engine: &Arc<Engine>,
        path: &str,
        content_type: Option<String>,
        condition: &Condition,
    ) -> Result<Upload> {
        let path = check_path(path)?;
        ensure_tables(engine).await?;
        if *condition != Condition::Any {
            let found = current(engine, &path, None).await?;
            if !condition.holds(found.as_ref().map(|f| f.sha256.as_str())) {
                return Err(precondition_failed(&path, condition));
            }
        }
        let version = format!("{:032x}", rand::random::<u128>());
        let mut session = engine.session();
        let sql = format!(
            "INSERT INTO {VERSIONS} (path, version, state, content_type, chunk_bytes, \
             created_us, changed_us) VALUES ($1, $2, 'uploading', $3, $4, cairn_clock_us(), \
             cairn_clock_us())"
        );
        let params = vec![
            Value::Text(path.clone()),
            Value::Text(version.clone()),
            content_type.clone().map_or(Value::Null, Value::Text),
            Value::Integer(engine.files.chunk_bytes as i64),
        ];
        run_closing(&mut session, &sql, params).await?;
        Ok(Upload {
            engine: engine.clone(),
            settings: engine.files,
            path,
            version,
            content_type,
            hasher: Sha256::new(),
            size: 0,
            next_seq: 0,
            buffer: Vec::with_capacity(engine.files.chunk_bytes),
            writing: JoinSet::new(),
            touched: Instant::now(),
            done: false,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append the first `upto` bytes of `file` (a resumed or appending upload keeps them;
    /// [`Upload::finish`] must then be given `Condition::Sha256(file.sha256)` so a file
    /// changed meanwhile is not mixed into).
    pub async fn copy_from(&mut self, file: &File, upto: u64) -> Result<()> {
        use futures::StreamExt;
        if upto > file.size {
            return Err(Error::sql(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "offset {upto} is past the end of {:?} ({} bytes)",
                    file.path, file.size
                ),
            ));
        }
        let mut bytes = std::pin::pin!(read_range(self.engine.clone(), file.clone(), 0, upto));
        while let Some(piece) = bytes.next().await {
            self.write(&piece?).await?;
        }
        Ok(())
    }

    /// Append bytes.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        if self.size + data.len() as u64 > limits::FILE_BYTES_MAX {
            return Err(too_large());
        }
        self.hasher.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = self.settings.chunk_bytes - self.buffer.len();
            let take = room.min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == self.settings.chunk_bytes {
                self.flush_chunk().await?;
            }
        }
        if self.touched.elapsed() >= self.settings.touch_every() {
            self.touch().await?;
        }
        Ok(())
    }

    /// Hand the buffered chunk to a writer task, waiting while too many are in flight.
    async fn flush_chunk(&mut self) -> Result<()> {
        while self.writing.len() >= limits::FILE_UPLOAD_PARALLEL {
            self.reap_one().await?;
        }
        let data = std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(self.settings.chunk_bytes),
        );
        let key = chunk_key(&self.version, self.next_seq);
        self.next_seq += 1;
        self.writing
            .spawn(write_chunk(self.engine.clone(), key, data));
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<()> {
        match self.writing.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(Error::internal(format!("a chunk writer failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Tell the collector this upload is alive; fails once it was abandoned.
    async fn touch(&mut self) -> Result<()> {
        let mut session = self.engine.session();
        let sql = format!(
            "UPDATE {VERSIONS} SET changed_us = cairn_clock_us(), size = $3, chunks = $4 \
             WHERE path = $1 AND version = $2 AND state = 'uploading'"
        );
        let params = vec![
            Value::Text(self.path.clone()),
            Value::Text(self.version.clone()),
            Value::Integer(self.size as i64),
            Value::Integer(self.next_seq as i64),
        ];
        let out = run_closing(&mut session, &sql, params).await?;
        if out.rows_affected == 0 {
            return Err(expired(&self.path));
        }
        self.touched = Instant::now();
        Ok(())
    }

    /// Write what is left, then make this version the path's current file if `condition`
    /// holds, in one transaction on the path's shard.
    pub async fn finish(mut self, condition: &Condition) -> Result<File> {
        if !self.buffer.is_empty() {
            self.flush_chunk().await?;
        }
        while !self.writing.is_empty() {
            self.reap_one().await?;
        }
        let sha256 = hex(&std::mem::take(&mut self.hasher).finalize());
        let mut attempt = 0;
        loop {
            let mut session = self.engine.session();
            let result = self.commit(&mut session, &sha256, condition).await;
            session.close().await;
            match result {
                Err(Error::Retry(_)) if attempt < limits::FILE_COMMIT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10 << attempt.min(6))).await;
                }
                Ok(file) => {
                    self.done = true;
                    return Ok(file);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn commit(
        &self,
        session: &mut Session,
        sha256: &str,
        condition: &Condition,
    ) -> Result<File> {
        let file = File {
            path: self.path.clone(),
            version: self.version.clone(),
            size: self.size,
            sha256: sha256.to_string(),
            content_type: self.content_type.clone(),
            chunk_bytes: self.settings.chunk_bytes as u64,
            chunks: self.next_seq,
            modified_us: 0,
        };
        publish(session, file, "uploading", condition).await
    }
}

/// Make `file` (a version in state `from`, its chunks all written) the path's current file
/// if `condition` holds, superseding the one before, in one transaction on the path's shard.
async fn publish(
    session: &mut Session,
    mut file: File,
    from: &str,
    condition: &Condition,
) -> Result<File> {
    let path = Value::Text(file.path.clone());
    run(session, "BEGIN", vec![]).await?;
    let now = format!("SELECT sha256 FROM {VERSIONS} WHERE path = $1 AND state = 'current'");
    let found = run(session, &now, vec![path.clone()]).await?;
    let found = found.rows.first().and_then(|r| text(&r[0]));
    if !condition.holds(found.as_deref()) {
        return Err(precondition_failed(&file.path, condition));
    }
    let supersede = format!(
        "UPDATE {VERSIONS} SET state = 'superseded', changed_us = cairn_clock_us() \
         WHERE path = $1 AND state = 'current'"
    );
    run(session, &supersede, vec![path.clone()]).await?;
    let publish = format!(
        "UPDATE {VERSIONS} SET state = 'current', size = $3, sha256 = $4, chunks = $5, \
         changed_us = cairn_clock_us() WHERE path = $1 AND version = $2 \
         AND state = $6 RETURNING changed_us"
    );
    let params = vec![
        path,
        Value::Text(file.version.clone()),
        Value::Integer(file.size as i64),
        Value::Text(file.sha256.clone()),
        Value::Integer(file.chunks as i64),
        Value::Text(from.to_string()),
    ];
    let out = run(session, &publish, params).await?;
    let Some(modified_us) = out.rows.first().and_then(|r| int(&r[0])) else {
        return Err(expired(&file.path));
    };
    run(session, "COMMIT", vec![]).await?;
    file.modified_us = modified_us;
    Ok(file)
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.writing.abort_all();
        let engine = self.engine.clone();
        let (path, version) = (self.path.clone(), self.version.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = abandon(&engine, &path, &version).await {
                    tracing::debug!(path, error = %e, "an abandoned upload is left to the collector");
                }
            });
        }
    }
}

fn too_large() -> Error {
    Error::sql(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        format!("a file is at most {} bytes", limits::FILE_BYTES_MAX),
    )
}

/// Nothing of the upload is visible: the client may upload again (40001).
fn expired(path: &str) -> Error {
    Error::Retry(format!(
        "the upload of {path:?} was silent too long and was abandoned; upload it again"
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Mark an upload abandoned and delete its chunks (the collector deletes any written
/// after, and the row).
async fn abandon(engine: &Arc<Engine>, path: &str, version: &str) -> Result<()> {
    let mut session = engine.session();
    let sql = format!(
        "UPDATE {VERSIONS} SET state = 'abandoned', changed_us = cairn_clock_us() \
         WHERE path = $1 AND version = $2 AND state = 'uploading'"
    );
    let params = vec![Value::Text(path.into()), Value::Text(version.into())];
    let out = run_closing(&mut session, &sql, params).await?;
    if out.rows_affected > 0 {
        delete_chunks(engine, version).await?;
    }
    Ok(())
}

/// A resumable upload (`/v1/uploads`): a version in state `resumable` that keeps the bytes
/// received across requests, in whole chunks; `offset` is how many are stored. Once
/// `length` bytes are in, it becomes the path's current file.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumable {
    pub id: String,
    pub path: String,
    pub offset: u64,
    pub length: u64,
    pub content_type: Option<String>,
    pub chunk_bytes: usize,
}

fn no_upload(id: &str) -> Error {
    Error::sql(
        sqlstate::UNDEFINED_FILE,
        format!("no upload {id:?} in progress (finished, cancelled, or expired)"),
    )
}

/// Start a resumable upload of `length` bytes to `path`.
pub async fn create_resumable(
    engine: &Arc<Engine>,
    path: &str,
    length: u64,
    content_type: Option<String>,
) -> Result<Resumable> {
    let path = check_path(path)?;
    if length > limits::FILE_BYTES_MAX {
        return Err(too_large());
    }
    ensure_tables(engine).await?;
    let id = format!("{:032x}", rand::random::<u128>());
    let sql = format!(
        "INSERT INTO {VERSIONS} (path, version, state, content_type, chunk_bytes, length, \
         created_us, changed_us) VALUES ($1, $2, 'resumable', $3, $4, $5, cairn_clock_us(), \
         cairn_clock_us())"
    );
    let params = vec![
        Value::Text(path.clone()),
        Value::Text(id.clone()),
        content_type.clone().map_or(Value::Null, Value::Text),
        Value::Integer(engine.files.chunk_bytes as i64),
        Value::Integer(length as i64),
    ];
    let mut session = engine.session();
    run_closing(&mut session, &sql, params).await?;
    Ok(Resumable {
        id,
        path,
        offset: 0,
        length,
        content_type,
        chunk_bytes: engine.files.chunk_bytes,
    })
}

/// A resumable upload in progress.
pub async fn resumable(engine: &Arc<Engine>, id: &str) -> Result<Resumable> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) || !exists(engine) {
        return Err(no_upload(id));
    }
    let sql = format!(
        "SELECT path, size, length, content_type, chunk_bytes FROM {VERSIONS} \
         WHERE version = $1 AND state = 'resumable'"
    );
    let mut session = engine.session();
    let out = run_closing(&mut session, &sql, vec![Value::Text(id.into())]).await?;
    let row = out.rows.first().ok_or_else(|| no_upload(id))?;
    Ok(Resumable {
        id: id.to_string(),
        path: text(&row[0]).ok_or_else(|| no_upload(id))?,
        offset: int(&row[1]).unwrap_or(0) as u64,
        length: int(&row[2]).unwrap_or(0) as u64,
        content_type: text(&row[3]),
        chunk_bytes: int(&row[4])
            .filter(|c| *c > 0)
            .unwrap_or(limits::FILE_CHUNK_BYTES as i64) as usize,
    })
}

/// Cancel a resumable upload: nothing of it becomes visible, its chunks are deleted.
pub async fn cancel_resumable(engine: &Arc<Engine>, id: &str) -> Result<()> {
    let upload = resumable(engine, id).await?;
    let sql = format!(
        "UPDATE {VERSIONS} SET state = 'abandoned', changed_us = cairn_clock_us() \
         WHERE path = $1 AND version = $2 AND state = 'resumable'"
    );
    let params = vec![Value::Text(upload.path), Value::Text(upload.id.clone())];
    let mut session = engine.session();
    run_closing(&mut session, &sql, params).await?;
    delete_chunks(engine, &upload.id).await?;
    Ok(())
}

/// Bytes appended to a resumable upload by one request. Each whole chunk is stored and the
/// upload's offset moved past it before the next; bytes of a chunk not completed when the
/// request ends are dropped (the client resends from the offset it is told).
pub struct Appending {
    engine: Arc<Engine>,
    upload: Resumable,
    buffer: Vec<u8>,
}

impl Appending {
    /// Append at `offset`, which must be the upload's offset now.
    pub async fn begin(engine: &Arc<Engine>, id: &str, offset: u64) -> Result<Appending> {
        let upload = resumable(engine, id).await?;
        if offset != upload.offset {
            return Err(offset_mismatch(&upload));
        }
        Ok(Appending {
            engine: engine.clone(),
            buffer: Vec::with_capacity(upload.chunk_bytes),
            upload,
        })
    }

    /// The bytes stored so far.
    pub fn upload(&self) -> &Resumable {
        &self.upload
    }

    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        let received = self.upload.offset + self.buffer.len() as u64 + data.len() as u64;
        if received > self.upload.length {
            return Err(Error::sql(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "the upload was declared {} bytes long; {received} came",
                    self.upload.length
                ),
            ));
        }
        while !data.is_empty() {
            let take = (self.upload.chunk_bytes - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == self.upload.chunk_bytes {
                self.store_chunk().await?;
            }
        }
        Ok(())
    }

    /// Store the buffered chunk and move the upload's offset past it (only from the offset
    /// this request started at: a second request appending at once fails here).
    async fn store_chunk(&mut self) -> Result<()> {
        let seq = self.upload.offset / self.upload.chunk_bytes as u64;
        let data = std::mem::take(&mut self.buffer);
        let len = data.len() as u64;
        write_chunk(self.engine.clone(), chunk_key(&self.upload.id, seq), data).await?;
        let sql = format!(
            "UPDATE {VERSIONS} SET size = $3, chunks = $4, changed_us = cairn_clock_us() \
             WHERE path = $1 AND version = $2 AND state = 'resumable' AND size = $5"
        );
        let params = vec![
            Value::Text(self.upload.path.clone()),
            Value::Text(self.upload.id.clone()),
            Value::Integer((self.upload.offset + len) as i64),
            Value::Integer(seq as i64 + 1),
            Value::Integer(self.upload.offset as i64),
        ];
        let mut session = self.engine.session();
        if run_closing(&mut session, &sql, params).await?.rows_affected == 0 {
            let now = resumable(&self.engine, &self.upload.id).await?;
            return Err(offset_mismatch(&now));
        }
        self.upload.offset += len;
        self.buffer = Vec::with_capacity(self.upload.chunk_bytes);
        Ok(())
    }

    /// End this request: once every byte is in, the file is published (if `condition`
    /// holds) and returned; before that, the bytes of an incomplete chunk are dropped.
    pub async fn finish(mut self, condition: &Condition) -> Result<(Resumable, Option<File>)> {
        let complete = self.upload.offset + self.buffer.len() as u64 == self.upload.length;
        if !complete {
            return Ok((self.upload, None));
        }
        if !self.buffer.is_empty() {
            self.store_chunk().await?;
        }
        let upload = self.upload.clone();
        let chunk_bytes = self.upload.chunk_bytes as u64;
        let mut file = File {
            path: upload.path.clone(),
            version: upload.id.clone(),
            size: upload.length,
            sha256: String::new(),
            content_type: upload.content_type.clone(),
            chunk_bytes,
            chunks: upload.length.div_ceil(chunk_bytes),
            modified_us: 0,
        };
        // The hash of bytes that came over several requests: read back once.
        let mut hasher = Sha256::new();
        {
            use futures::StreamExt;
            let mut pieces = std::pin::pin!(read_range(
                self.engine.clone(),
                file.clone(),
                0,
                upload.length
            ));
            while let Some(piece) = pieces.next().await {
                hasher.update(&piece?);
            }
        }
        file.sha256 = hex(&hasher.finalize());
        let mut attempt = 0;
        loop {
            let mut session = self.engine.session();
            let result = publish(&mut session, file.clone(), "resumable", condition).await;
            session.close().await;
            match result {
                Err(Error::Retry(_)) if attempt < limits::FILE_COMMIT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10 << attempt.min(6))).await;
                }
                Ok(file) => return Ok((upload, Some(file))),
                Err(e) => return Err(e),
            }
        }
    }
}

fn offset_mismatch(upload: &Resumable) -> Error {
    Error::sql(
        sqlstate::OBJECT_IN_USE,
        format!(
            "the upload is at offset {}: send the bytes from there",
            upload.offset
        ),
    )
}

/// Delete the path's current file; answers whether there was one. With a condition that
/// does not hold, nothing changes and the error says why.
pub async fn delete(engine: &Arc<Engine>, path: &str, condition: &Condition) -> Result<bool> {
    let path = check_path(path)?;
    if !exists(engine) {
        return match condition {
            Condition::Any | Condition::Absent => Ok(false),
            _ => Err(precondition_failed(&path, condition)),
        };
    }
    let mut session = engine.session();
    let (clause, mut params) = match condition {
        Condition::Sha256(s) => (
            " AND sha256 = $2",
            vec![Value::Text(s.to_ascii_lowercase())],
        ),
        _ => ("", vec![]),
    };
    params.insert(0, Value::Text(path.clone()));
    if *condition == Condition::Absent {
        let found = current(engine, &path, None).await?;
        return match found {
            None => Ok(false),
            Some(_) => Err(precondition_failed(&path, condition)),
        };
    }
    let sql = format!(
        "UPDATE {VERSIONS} SET state = 'deleted', changed_us = cairn_clock_us() \
         WHERE path = $1 AND state = 'current'{clause}"
    );
    let out = run_closing(&mut session, &sql, params).await?;
    match (condition, out.rows_affected) {
        (Condition::Any, n) => Ok(n > 0),
        (_, 0) => Err(precondition_failed(&path, condition)),
        _ => Ok(true),
    }
}

/// Rename `from` to `to` atomically (one transaction over both paths' shards): readers see
/// the file at one path or the other, never both or neither. A file at `to` is replaced
/// unless `to_condition` says otherwise.
pub async fn rename(
    engine: &Arc<Engine>,
    from: &str,
    to: &str,
    from_condition: &Condition,
    to_condition: &Condition,
) -> Result<File> {
    let from = check_path(from)?;
    let to = check_path(to)?;
    if !exists(engine) {
        return Err(not_found(&from));
    }
    let mut attempt = 0;
    loop {
        let mut session = engine.session();
        let result = rename_in(&mut session, &from, &to, from_condition, to_condition).await;
        session.close().await;
        match result {
            Err(Error::Retry(_)) if attempt < limits::FILE_COMMIT_RETRIES => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10 << attempt.min(6))).await;
            }
            other => return other,
        }
    }
}

async fn rename_in(
    session: &mut Session,
    from: &str,
    to: &str,
    from_condition: &Condition,
    to_condition: &Condition,
) -> Result<File> {
    run(session, "BEGIN", vec![]).await?;
    let sql = format!(
        "SELECT {FILE_COLUMNS}, created_us FROM {VERSIONS} WHERE path = $1 AND state = 'current'"
    );
    let found = run(session, &sql, vec![Value::Text(from.into())]).await?;
    let Some(row) = found.rows.first() else {
        return Err(not_found(from));
    };
    let mut file = file(row)?;
    let created_us = int(&row[8]).unwrap_or(file.modified_us);
    if !from_condition.holds(Some(&file.sha256)) {
        return Err(precondition_failed(from, from_condition));
    }
    if from == to {
        run(session, "COMMIT", vec![]).await?;
        return Ok(file);
    }
    let target = format!("SELECT sha256 FROM {VERSIONS} WHERE path = $1 AND state = 'current'");
    let existing = run(session, &target, vec![Value::Text(to.into())]).await?;
    let existing = existing.rows.first().and_then(|r| text(&r[0]));
    if !to_condition.holds(existing.as_deref()) {
        return Err(precondition_failed(to, to_condition));
    }
    let supersede = format!(
        "UPDATE {VERSIONS} SET state = 'superseded', changed_us = cairn_clock_us() \
         WHERE path = $1 AND state = 'current'"
    );
    run(session, &supersede, vec![Value::Text(to.into())]).await?;
    let remove = format!("DELETE FROM {VERSIONS} WHERE path = $1 AND version = $2");
    run(
        session,
        &remove,
        vec![Value::Text(from.into()), Value::Text(file.version.clone())],
    )
    .await?;
    let insert = format!(
        "INSERT INTO {VERSIONS} (path, version, state, size, sha256, content_type, chunk_bytes, \
         chunks, created_us, changed_us, renamed_from) VALUES ($1, $2, 'current', $3, $4, $5, \
         $6, $7, $8, cairn_clock_us(), $9) RETURNING changed_us"
    );
    let params = vec![
        Value::Text(to.into()),
        Value::Text(file.version.clone()),
        Value::Integer(file.size as i64),
        Value::Text(file.sha256.clone()),
        file.content_type.clone().map_or(Value::Null, Value::Text),
        Value::Integer(file.chunk_bytes as i64),
        Value::Integer(file.chunks as i64),
        Value::Integer(created_us),
        Value::Text(from.into()),
    ];
    let out = run(session, &insert, params).await?;
    run(session, "COMMIT", vec![]).await?;
    file.path = to.to_string();
    if let Some(at) = out.rows.first().and_then(|r| int(&r[0])) {
        file.modified_us = at;
    }
    Ok(file)
}

/// One entry of a folder: a file, or a folder below it (named by its path, ending in `/`).
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    File(File),
    Folder(String),
}

/// A folder's prefix for SQL's `substr` (a count of characters) and its range start.
fn under(prefix: &str) -> (String, Vec<Value>) {
    match prefix.chars().count() {
        0 => (String::new(), vec![Value::Text(String::new())]),
        n => (
            format!(" AND substr(path, 1, {n}) = $1"),
            vec![Value::Text(prefix.to_string())],
        ),
    }
}

/// Whether `prefix` (as from [`check_prefix`], ending in `/`) is a folder: the root, one
/// made with [`make_folder`], or one holding files.
pub async fn is_folder(engine: &Arc<Engine>, prefix: &str) -> Result<bool> {
    let prefix = check_folder(prefix)?;
    if prefix.is_empty() {
        return Ok(true);
    }
    if !exists(engine) {
        return Ok(false);
    }
    let (clause, params) = under(&prefix);
    let sql = format!(
        "SELECT 1 FROM {VERSIONS} WHERE state IN ('current', 'folder') AND path >= $1{clause} LIMIT 1"
    );
    let mut session = engine.session();
    Ok(!run_closing(&mut session, &sql, params)
        .await?
        .rows
        .is_empty())
}

/// The files and folders directly in the folder `prefix`, in path order (at most
/// [`limits::FILE_FOLDER_ROWS_MAX`] rows below it are read).
pub async fn children(engine: &Arc<Engine>, prefix: &str) -> Result<Vec<Entry>> {
    let prefix = check_folder(prefix)?;
    if !exists(engine) {
        return Ok(Vec::new());
    }
    let (clause, params) = under(&prefix);
    let sql = format!(
        "SELECT {FILE_COLUMNS}, state FROM {VERSIONS} WHERE state IN ('current', 'folder')          AND path >= $1{clause} ORDER BY path LIMIT {}",
        limits::FILE_FOLDER_ROWS_MAX + 1
    );
    let mut session = engine.session();
    let rows = run_closing(&mut session, &sql, params).await?.rows;
    if rows.len() > limits::FILE_FOLDER_ROWS_MAX {
        return Err(Error::sql(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "folder {prefix:?} holds more than {} files and folders; list it with \
                 GET /v1/files?prefix=...",
                limits::FILE_FOLDER_ROWS_MAX
            ),
        ));
    }
    let mut out: Vec<Entry> = Vec::new();
    for row in rows {
        let Some(path) = text(&row[0]) else { continue };
        let rest = &path[prefix.len()..];
        match rest.split_once('/') {
            Some((first, _)) if !first.is_empty() => {
                let folder = format!("{prefix}{first}/");
                if !matches!(out.last(), Some(Entry::Folder(f)) if *f == folder) {
                    out.push(Entry::Folder(folder));
                }
            }
            Some(_) => {}
            None if text(&row[8]).as_deref() == Some("current") && !rest.is_empty() => {
                out.push(Entry::File(file(&row)?))
            }
            None => {}
        }
    }
    Ok(out)
}

/// Make an empty folder (a marker row; a folder holding files needs none).
pub async fn make_folder(engine: &Arc<Engine>, prefix: &str) -> Result<()> {
    let prefix = check_folder(prefix)?;
    if prefix.is_empty() {
        return Ok(());
    }
    ensure_tables(engine).await?;
    let file = prefix.trim_end_matches('/');
    if current(engine, file, None).await?.is_some() {
        return Err(Error::sql(
            sqlstate::DUPLICATE_OBJECT,
            format!("{file:?} is a file"),
        ));
    }
    let sql = format!(
        "INSERT INTO {VERSIONS} (path, version, state, chunk_bytes, created_us, changed_us)          VALUES ($1, 'folder', 'folder', 0, cairn_clock_us(), cairn_clock_us())          ON CONFLICT (path, version) DO NOTHING"
    );
    let mut session = engine.session();
    run_closing(&mut session, &sql, vec![Value::Text(prefix)]).await?;
    Ok(())
}

/// Remove an empty folder; a folder holding anything is refused.
pub async fn remove_folder(engine: &Arc<Engine>, prefix: &str) -> Result<()> {
    let prefix = check_folder(prefix)?;
    if prefix.is_empty() {
        return Err(Error::sql(
            sqlstate::OBJECT_IN_USE,
            "the root folder cannot be removed",
        ));
    }
    if !is_folder(engine, &prefix).await? {
        return Err(not_found(&prefix));
    }
    let (clause, params) = under(&prefix);
    let sql = format!(
        "SELECT 1 FROM {VERSIONS} WHERE state IN ('current', 'folder') AND path > $1{clause} LIMIT 1"
    );
    let mut session = engine.session();
    if !run_closing(&mut session, &sql, params.clone())
        .await?
        .rows
        .is_empty()
    {
        return Err(Error::sql(
            sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
            format!("folder {prefix:?} is not empty"),
        ));
    }
    let sql = format!("DELETE FROM {VERSIONS} WHERE path = $1 AND state = 'folder'");
    let mut session = engine.session();
    run_closing(&mut session, &sql, vec![Value::Text(prefix)]).await?;
    Ok(())
}

/// Delete every chunk of `version`, a page of keys at a time, each through its shard.
async fn delete_chunks(engine: &Arc<Engine>, version: &str) -> Result<usize> {
    let list = format!(
        "SELECT chunk FROM {CHUNKS} WHERE chunk >= $1 AND chunk < $2 LIMIT {}",
        limits::FILE_GC_BATCH
    );
    let delete = format!("DELETE FROM {CHUNKS} WHERE chunk = $1");
    let range = vec![
        Value::Text(format!("{version}:")),
        Value::Text(format!("{version};")),
    ];
    let mut deleted = 0;
    loop {
        let mut session = engine.session();
        let keys = run_closing(&mut session, &list, range.clone()).await?;
        if keys.rows.is_empty() {
            return Ok(deleted);
        }
        let mut session = engine.session();
        for row in &keys.rows {
            if let Err(e) = run(&mut session, &delete, vec![row[0].clone()]).await {
                session.close().await;
                return Err(e);
            }
            deleted += 1;
        }
        session.close().await;
    }
}

/// What one collection pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Collected {
    pub abandoned: usize,
    pub versions: usize,
    pub chunks: usize,
}

/// Abandon uploads silent past `gc_after`, and delete the chunks and rows of versions
/// replaced, deleted or abandoned more than `gc_after` ago.
pub async fn collect(engine: &Arc<Engine>) -> Result<Collected> {
    let mut done = Collected::default();
    if !exists(engine) {
        return Ok(done);
    }
    let gc_us = engine.files.gc_after_us();
    // Uploads silent past `gc_after`, resumable ones past their expiry: abandoned (each
    // checked again by the update, which an upload touching its row meanwhile fails).
    let expiry_us = limits::FILE_RESUMABLE_EXPIRY.as_micros() as i64;
    let silent = format!(
        "SELECT path, version, state FROM {VERSIONS} WHERE \
         (state = 'uploading' AND changed_us < cairn_clock_us() - {gc_us}) OR \
         (state = 'resumable' AND changed_us < cairn_clock_us() - {expiry_us}) LIMIT {}",
        limits::FILE_GC_BATCH
    );
    let mut session = engine.session();
    let rows = run_closing(&mut session, &silent, vec![]).await?.rows;
    for row in rows {
        let cutoff = match &row[2] {
            Value::Text(s) if s == "resumable" => expiry_us,
            _ => gc_us,
        };
        let mut session = engine.session();
        let mark = format!(
            "UPDATE {VERSIONS} SET state = 'abandoned', changed_us = cairn_clock_us() \
             WHERE path = $1 AND version = $2 AND state = $3 \
             AND changed_us < cairn_clock_us() - {cutoff}"
        );
        let out = run_closing(&mut session, &mark, row.clone()).await?;
        done.abandoned += out.rows_affected as usize;
    }
    let old = format!(
        "SELECT path, version, state FROM {VERSIONS} \
         WHERE state IN ('superseded', 'deleted', 'abandoned') \
         AND changed_us < cairn_clock_us() - {gc_us} LIMIT {}",
        limits::FILE_GC_BATCH
    );
    let mut session = engine.session();
    let rows = run_closing(&mut session, &old, vec![]).await?.rows;
    for row in rows {
        let Some(version) = text(&row[1]) else {
            continue;
        };
        done.chunks += delete_chunks(engine, &version).await?;
        let mut session = engine.session();
        let remove =
            format!("DELETE FROM {VERSIONS} WHERE path = $1 AND version = $2 AND state = $3");
        let out = run_closing(&mut session, &remove, row.clone()).await?;
        done.versions += out.rows_affected as usize;
    }
    Ok(done)
}

/// Collect old versions in the background while the engine lives, on the node leading the
/// meta group only.
pub fn spawn_collector(engine: &Arc<Engine>) {
    let every =
        (engine.files.gc_after / 2).clamp(Duration::from_millis(500), limits::FILE_GC_INTERVAL);
    let engine = Arc::downgrade(engine);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(engine) = engine.upgrade() else {
                return;
            };
            if !engine.cluster.leads_meta() {
                continue;
            }
            match collect(&engine).await {
                Ok(c) if c == Collected::default() => {}
                Ok(c) => tracing::info!(
                    abandoned = c.abandoned,
                    versions = c.versions,
                    chunks = c.chunks,
                    "old file versions collected"
                ),
                Err(e) => tracing::warn!(error = %e, "collecting old file versions failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_and_stored_without_a_leading_slash() {
        assert_eq!(check_path("/a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(
            check_path("photos/2026/x y.jpg").unwrap(),
            "photos/2026/x y.jpg"
        );
        for bad in ["", "/", "a/../b", "..", "./a", "a//b", "a/", "a\0b", "a\nb"] {
            let e = check_path(bad).unwrap_err();
            assert_eq!(e.code(), sqlstate::INVALID_PARAMETER_VALUE, "{bad:?}: {e}");
        }
        let long = "x".repeat(limits::FILE_PATH_BYTES_MAX + 1);
        assert_eq!(
            check_path(&long).unwrap_err().code(),
            sqlstate::PROGRAM_LIMIT_EXCEEDED
        );
        assert_eq!(check_prefix("/").unwrap(), "");
        assert_eq!(check_prefix("a/b/").unwrap(), "a/b/");
        assert!(check_prefix("a/../").is_err());
    }

    #[test]
    fn a_range_maps_to_the_chunks_holding_it() {
        let f = File {
            path: "p".into(),
            version: "v".into(),
            size: 25,
            sha256: String::new(),
            content_type: None,
            chunk_bytes: 10,
            chunks: 3,
            modified_us: 0,
        };
        assert_eq!(f.chunks_for(0, 25), 0..3);
        assert_eq!(f.chunks_for(10, 20), 1..2);
        assert_eq!(f.chunks_for(9, 11), 0..2);
        assert_eq!(f.chunks_for(5, 5), 0..0);
        assert!(chunk_key("v", 2) < chunk_key("v", 10));
        assert!(chunk_key("v", 9_999_999_999).as_str() < "v;");
    }
}
