//! `cairn load`: a CSV or JSON-lines file into a table, in parallel batches, exactly once.
//!
//! Each batch is one transaction: a marker row `(load, batch)` in `cairn_load_batches`
//! first, then the batch's records by COPY (the server parses them as PostgreSQL's COPY
//! does, and routes each row to its shard), then COMMIT. A batch whose outcome is unknown
//! (the node went away mid-commit) is sent again, to any node: if the first try committed,
//! the marker's primary key refuses the second, so no row is applied twice; `--resume`
//! skips every batch already marked. A record the table refuses (a malformed number, a
//! NULL in a NOT NULL column, a duplicate key) fails its batch: `--on-error abort` stops
//! the load there, `--on-error skip` finds the bad records by bisection under savepoints,
//! reports each with its line and reason, and commits the rest of the batch.

use anyhow::{anyhow, bail, Context, Result};
use futures::SinkExt;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Stop at the first refused record. Batches already committed stay (with --parallel
    /// above 1, some after it may be among them: those in flight finish); --resume
    /// continues once it is fixed.
    Abort,
    /// Report refused records and load every other one.
    Skip,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// PostgreSQL addresses of nodes (comma-separated); batches are spread over them, and a
    /// batch a node failed goes to the next.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "postgres://cairn@127.0.0.1:5433/cairn"
    )]
    pub url: Vec<String>,
    /// The table to load into.
    #[arg(long)]
    pub table: String,
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
    /// The file to load, or `-` for stdin.
    pub file: PathBuf,
    /// Records per batch (one transaction each; 10,000 measured fastest, see
    /// docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// CSV: the first line is a header naming the columns (in any order). Without it the
    /// records give every column in the table's order.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub header: bool,
    #[arg(long, value_enum, default_value = "abort")]
    pub on_error: OnError,
    /// Write each refused record (as it was in the file) here.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Continue a load stopped part-way (same file, table and --batch): batches already
    /// committed are skipped.
    #[arg(long)]
    pub resume: bool,
    /// The name batches are recorded under [default: TABLE:FILE-NAME:BATCH].
    #[arg(long)]
    pub load_id: Option<String>,
}

/// Where loads record their committed batches.
const MARKERS: &str = "cairn_load_batches";

/// How long one batch keeps being retried through failures that may pass (leader changes,
/// nodes restarting) before the load gives up.
const BATCH_RETRY_FOR: Duration = Duration::from_secs(120);

/// One batch: its number, the line of its first record, and its records in CSV.
struct Batch {
    number: u64,
    records: Vec<Record>,
}

#[derive(Clone)]
struct Record {
    /// 1-based line in the file where it starts.
    line: u64,
    /// The record as CSV (a JSON line is converted).
    csv: String,
    /// The record as it was in the file (for the rejects file).
    raw: String,
}

/// What the workers share.
struct Shared {
    args: LoadArgs,
    load_id: String,
    /// `COPY table (columns) FROM STDIN WITH (FORMAT csv)`.
    copy: String,
    next_url: AtomicU64,
    rows: AtomicU64,
    skipped_batches: AtomicU64,
    rejected: Mutex<Vec<(u64, String, String)>>,
    progress: indicatif::ProgressBar,
    /// Set when a batch failed for good: the reader and the other workers stop.
    stop: std::sync::atomic::AtomicBool,
}

pub async fn run(args: LoadArgs) -> Result<()> {
    if args.batch == 0 || args.parallel == 0 {
        bail!("--batch and --parallel must be at least 1");
    }
    let started = Instant::now();
    let (mut input, size) = open(&args.file)?;
    let load_id = args.load_id.clone().unwrap_or_else(|| {
        let name = args
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "stdin".into());
        format!("{}:{name}:{}", args.table, args.batch)
    });
    let (columns, first_line) = match args.format {
        Format::Csv if args.header => {
            let mut header = String::new();
            read_record(&mut input, &mut header)?;
            let header = header.trim_end_matches(['\r', '\n']);
            if header.is_empty() {
                bail!("{}: empty, or no header line", args.file.display());
            }
            (Some(split_csv(header)), 2)
        }
        Format::Csv => (None, 1),
        Format::Jsonl => (None, 1),
    };
    // JSON lines name their columns in every record; the first one sets the list.
    let mut jsonl_columns: Option<Vec<String>> = None;
    let mut pending_first: Option<(Vec<String>, Record)> = None;
    if args.format == Format::Jsonl {
        let mut line = String::new();
        let mut number = 0;
        loop {
            line.clear();
            if input.read_line(&mut line)? == 0 {
                break;
            }
            number += 1;
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("line {number}: not a JSON object"))?;
            let object = value
                .as_object()
                .ok_or_else(|| anyhow!("line {number}: not a JSON object"))?;
            let cols: Vec<String> = object.keys().cloned().collect();
            let record = Record {
                line: number,
                csv: json_to_csv(object, &cols),
                raw: line.trim_end().to_string(),
            };
            pending_first = Some((cols.clone(), record));
            jsonl_columns = Some(cols);
            break;
        }
    }
    let columns = columns.or(jsonl_columns.clone());
    let copy = match &columns {
        Some(cols) => format!(
            "COPY {} ({}) FROM STDIN WITH (FORMAT csv)",
            args.table,
            cols.iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => format!("COPY {} FROM STDIN WITH (FORMAT csv)", args.table),
    };

    let progress = match size {
        Some(size) => {
            let bar = indicatif::ProgressBar::new(size);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {msg} eta {eta}",
                )
                .expect("template"),
            );
            bar
        }
        None => {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {bytes} {msg}")
                    .expect("template"),
            );
            bar
        }
    };
    progress.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    let shared = Arc::new(Shared {
        load_id,
        copy,
        next_url: AtomicU64::new(0),
        rows: AtomicU64::new(0),
        skipped_batches: AtomicU64::new(0),
        rejected: Mutex::new(Vec::new()),
        progress,
        stop: std::sync::atomic::AtomicBool::new(false),
        args,
    });

    // The marker table, and whether this load ran before.
    let client = connect_any(&shared).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {MARKERS} (load text NOT NULL, batch bigint NOT NULL, \
             records bigint NOT NULL, at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (load, batch))"
        ))
        .await
        .context("creating the table of committed batches")?;
    let done: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {MARKERS} WHERE load = $1"),
            &[&shared.load_id],
        )
        .await?
        .get(0);
    if done > 0 && !shared.args.resume {
        bail!(
            "load {:?} already committed {done} batches; --resume continues it, --load-id starts another",
            shared.load_id
        );
    }
    drop(client);

    // Batches flow from the reader to the workers through a bounded channel.
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(shared.args.parallel * 2);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..shared.args.parallel {
        let (shared, rx) = (shared.clone(), rx.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(batch) = rx.lock().await.recv().await else {
                    return Ok(());
                };
                if shared.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                if let Err(e) = load_batch(&shared, batch).await {
                    shared.stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }));
    }
    let reader = {
        let shared = shared.clone();
        let format = shared.args.format;
        let per_batch = shared.args.batch;
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut records = Vec::with_capacity(per_batch);
            let mut number = 0u64;
            let mut line = first_line;
            if let Some((cols, record)) = pending_first {
                line = record.line + 1;
                let _ = cols;
                records.push(record);
            }
            let mut text = String::new();
            loop {
                text.clear();
                let n = match format {
                    Format::Csv => read_record(&mut input, &mut text)?,
                    Format::Jsonl => input.read_line(&mut text)?,
                };
                if n == 0 || shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                shared.progress.inc(n as u64);
                let start = line;
                line += text.matches('\n').count().max(1) as u64;
                let trimmed = text.trim_end_matches(['\r', '\n']);
                if trimmed.trim().is_empty() {
                    continue;
                }
                let record = match format {
                    Format::Csv => Record {
                        line: start,
                        csv: trimmed.to_string(),
                        raw: trimmed.to_string(),
                    },
                    Format::Jsonl => {
                        let cols = jsonl_columns.as_ref().expect("set by the first line");
                        let csv = match serde_json::from_str::<serde_json::Value>(trimmed) {
                            Ok(serde_json::Value::Object(o)) => json_to_csv(&o, cols),
                            // Refused by the server as a malformed record: one field that is
                            // not a valid CSV row for the columns.
                            _ => format!("\"{}", trimmed.replace('"', "\"\"")),
                        };
                        Record {
                            line: start,
                            csv,
                            raw: trimmed.to_string(),
                        }
                    }
                };
                records.push(record);
                if records.len() == per_batch {
                    let batch = Batch {
                        number,
                        records: std::mem::replace(&mut records, Vec::with_capacity(per_batch)),
                    };
                    number += 1;
                    if tx.blocking_send(batch).is_err() {
                        return Ok(()); // the workers stopped (an error ended the load)
                    }
                }
            }
            if !records.is_empty() && !shared.stop.load(Ordering::Relaxed) {
                let _ = tx.blocking_send(Batch { number, records });
            }
            Ok(())
        })
    };
    let mut failure = None;
    for w in workers {
        if let Err(e) = w
            .await
            .map_err(|e| anyhow!("a worker failed: {e}"))
            .and_then(|r| r)
        {
            failure.get_or_insert(e);
            // Stop the reader: the channel closes once every worker has returned.
            rx.lock().await.close();
        }
    }
    reader
        .await
        .map_err(|e| anyhow!("the reader failed: {e}"))??;
    shared.progress.finish_and_clear();

    let mut rejected = std::mem::take(&mut *shared.rejected.lock().expect("rejected lock"));
    rejected.sort_by_key(|(line, _, _)| *line);
    for (line, why, _) in &rejected {
        eprintln!("line {line}: {why}");
    }
    if let Some(path) = &shared.args.rejects {
        let mut text = String::new();
        for (_, _, raw) in &rejected {
            text.push_str(raw);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| path.display().to_string())?;
    }
    let rows = shared.rows.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let skipped = shared.skipped_batches.load(Ordering::Relaxed);
    println!(
        "loaded {rows} rows into {} in {secs:.1}s ({:.0} rows/s){}{}",
        shared.args.table,
        rows as f64 / secs.max(0.001),
        if skipped > 0 {
            format!("; {skipped} batches were already committed")
        } else {
            String::new()
        },
        if rejected.is_empty() {
            String::new()
        } else {
            format!("; {} records refused (listed above)", rejected.len())
        }
    );
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn open(path: &PathBuf) -> Result<(Box<dyn BufRead + Send>, Option<u64>)> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(std::io::BufReader::new(std::io::stdin())), None));
    }
    let file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let size = file.metadata().ok().map(|m| m.len());
    Ok((
        Box::new(std::io::BufReader::with_capacity(1 << 20, file)),
        size,
    ))
}

/// Reads one CSV record (which may span lines inside quotes) into `out`; bytes read.
fn read_record(input: &mut dyn BufRead, out: &mut String) -> Result<usize> {
    let mut total = 0;
    loop {
        let n = input.read_line(out)?;
        total += n;
        // Inside quotes while the count of `"` is odd (`""` escapes count two).
        if n == 0 || out.matches('"').count().is_multiple_of(2) {
            return Ok(total);
        }
    }
}

/// The fields of one CSV line (quotes removed).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (false, '"') => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (_, c) => field.push(c),
        }
    }
    fields.push(field);
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

fn quote_ident(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// One JSON object as a CSV record with `columns` in order: null or absent → NULL (an
/// empty unquoted field), strings quoted, numbers and booleans as text, arrays and
/// objects as their JSON text.
fn json_to_csv(object: &serde_json::Map<String, serde_json::Value>, columns: &[String]) -> String {
    let fields: Vec<String> = columns
        .iter()
        .map(|c| match object.get(c) {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => format!("\"{}\"", s.replace('"', "\"\"")),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v.to_string(),
            Some(v) => format!("\"{}\"", v.to_string().replace('"', "\"\"")),
        })
        .collect();
    fields.join(",")
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let url = if url.contains("://") || url.contains('=') {
        url.to_string()
    } else {
        format!("postgres://cairn@{url}/cairn")
    };
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(&url, NoTls),
    )
    .await
    .map_err(|_| anyhow!("{url}: no answer within 10 s"))??;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A connection to the next node of `--url` that takes one.
async fn connect_any(shared: &Shared) -> Result<tokio_postgres::Client> {
    let urls = &shared.args.url;
    let mut last = None;
    for _ in 0..urls.len() {
        let i = shared.next_url.fetch_add(1, Ordering::Relaxed) as usize % urls.len();
        match connect(&urls[i]).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no --url given")))
}

/// How a try of a batch ended.
enum Tried {
    Committed(u64),
    /// Its marker was there: an earlier try (or run) committed it.
    AlreadyDone,
    /// A record was refused (abort mode): its line and why.
    Refused(u64, String),
}

async fn load_batch(shared: &Shared, batch: Batch) -> Result<()> {
    let deadline = Instant::now() + BATCH_RETRY_FOR;
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = async {
            let client = connect_any(shared).await?;
            try_batch(shared, &client, &batch).await
        };
        match attempt.await {
            Ok(Tried::Committed(rows)) => {
                shared.rows.fetch_add(rows, Ordering::Relaxed);
                shared
                    .progress
                    .set_message(format!("{} rows", shared.rows.load(Ordering::Relaxed)));
                return Ok(());
            }
            Ok(Tried::AlreadyDone) => {
                shared.skipped_batches.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Ok(Tried::Refused(line, why)) => {
                bail!("line {line}: {why} (nothing of batch {} was loaded; fix it and run again with --resume)", batch.number)
            }
            Err(e) => {
                if !retryable(&e) {
                    return Err(e.context(format!("batch {}", batch.number)));
                }
                if Instant::now() > deadline {
                    return Err(e.context(format!(
                        "batch {} (lines from {}) kept failing for {BATCH_RETRY_FOR:?}",
                        batch.number, batch.records[0].line
                    )));
                }
                tracing::debug!(error = %e, batch = batch.number, "retrying a batch");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Whether a failed try may pass if sent again: connection trouble, conflicts, nodes
/// busy or going away, an unknown outcome (08007) — not a missing table or bad SQL.
fn retryable(e: &anyhow::Error) -> bool {
    let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() else {
        return true; // cannot connect, timeouts
    };
    match pg.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            ["08", "25", "40", "53", "55", "57", "58", "XX"]
                .iter()
                .any(|class| code.starts_with(class))
        }
    }
}

/// SQLSTATE classes of a record the table refuses: data exceptions (22) and integrity
/// violations (23). Anything else may pass on a retry.
fn refused(e: &tokio_postgres::Error) -> Option<String> {
    let db = e.as_db_error()?;
    let code = db.code().code();
    (code.starts_with("22") || code.starts_with("23")).then(|| format!("{code}: {}", db.message()))
}

/// One try: marker, records, commit — in one transaction. Errors are worth a retry.
async fn try_batch(
    shared: &Shared,
    client: &tokio_postgres::Client,
    batch: &Batch,
) -> Result<Tried> {
    client.batch_execute("BEGIN").await?;
    let marked = client
        .execute(
            &format!("INSERT INTO {MARKERS} (load, batch, records) VALUES ($1, $2, $3)"),
            &[
                &shared.load_id,
                &(batch.number as i64),
                &(batch.records.len() as i64),
            ],
        )
        .await;
    if let Err(e) = marked {
        let _ = client.batch_execute("ROLLBACK").await;
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            return Ok(Tried::AlreadyDone);
        }
        return Err(e.into());
    }
    let mut rows = 0;
    match copy(shared, client, &batch.records).await {
        Ok(n) => rows += n,
        Err(e) => match refused(&e) {
            Some(why) if shared.args.on_error == OnError::Abort => {
                // Stop the other batches now, not once this one's record is named.
                shared.stop.store(true, Ordering::Relaxed);
                let _ = client.batch_execute("ROLLBACK").await;
                let line = if batch.records.len() == 1 {
                    batch.records[0].line
                } else {
                    // Name the record: find it as skip mode would, then give up.
                    match first_refused(shared, client, &batch.records).await? {
                        Some((line, why)) => return Ok(Tried::Refused(line, why)),
                        None => batch.records[0].line,
                    }
                };
                return Ok(Tried::Refused(line, why));
            }
            Some(_) => {
                // The transaction failed: start again with savepoints around halves.
                client.batch_execute("ROLLBACK").await?;
                client.batch_execute("BEGIN").await?;
                client
                    .execute(
                        &format!(
                            "INSERT INTO {MARKERS} (load, batch, records) VALUES ($1, $2, $3)"
                        ),
                        &[
                            &shared.load_id,
                            &(batch.number as i64),
                            &(batch.records.len() as i64),
                        ],
                    )
                    .await?;
                let mut rejected = Vec::new();
                rows += bisect(shared, client, &batch.records, &mut rejected).await?;
                client.batch_execute("COMMIT").await?;
                shared
                    .rejected
                    .lock()
                    .expect("rejected lock")
                    .extend(rejected);
                return Ok(Tried::Committed(rows));
            }
            None => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e.into());
            }
        },
    }
    client.batch_execute("COMMIT").await?;
    Ok(Tried::Committed(rows))
}

/// COPY `records` on the open transaction; rows copied.
async fn copy(
    shared: &Shared,
    client: &tokio_postgres::Client,
    records: &[Record],
) -> Result<u64, tokio_postgres::Error> {
    let mut data = String::new();
    for r in records {
        data.push_str(&r.csv);
        data.push('\n');
    }
    let sink = client.copy_in(&shared.copy).await?;
    tokio::pin!(sink);
    sink.send(bytes::Bytes::from(data)).await?;
    sink.as_mut().finish().await
}

/// Loads the good records of `records` inside the open transaction, each half under a
/// savepoint, narrowing down to the refused ones (collected with their line and reason).
async fn bisect(
    shared: &Shared,
    client: &tokio_postgres::Client,
    records: &[Record],
    rejected: &mut Vec<(u64, String, String)>,
) -> Result<u64> {
    let mut rows = 0;
    let mut stack = vec![records];
    while let Some(part) = stack.pop() {
        client.batch_execute("SAVEPOINT part").await?;
        match copy(shared, client, part).await {
            Ok(n) => {
                rows += n;
                client.batch_execute("RELEASE SAVEPOINT part").await?;
            }
            Err(e) => {
                let why = refused(&e).ok_or(e)?;
                client.batch_execute("ROLLBACK TO SAVEPOINT part").await?;
                client.batch_execute("RELEASE SAVEPOINT part").await?;
                if part.len() == 1 {
                    rejected.push((part[0].line, why, part[0].raw.clone()));
                } else {
                    let (a, b) = part.split_at(part.len() / 2);
                    stack.push(b);
                    stack.push(a);
                }
            }
        }
    }
    Ok(rows)
}

/// The first refused record of `records` (line, why), found by bisection in a
/// transaction rolled back afterwards.
async fn first_refused(
    shared: &Shared,
    client: &tokio_postgres::Client,
    records: &[Record],
) -> Result<Option<(u64, String)>> {
    client.batch_execute("BEGIN").await?;
    let mut rejected = Vec::new();
    let result = bisect(shared, client, records, &mut rejected).await;
    let _ = client.batch_execute("ROLLBACK").await;
    result?;
    Ok(rejected
        .into_iter()
        .min_by_key(|(line, _, _)| *line)
        .map(|(line, why, _)| (line, why)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_records_span_quoted_newlines_and_headers_split_on_commas_outside_quotes() {
        let mut input = std::io::Cursor::new("1,\"a\nb\"\n2,\"say \"\"hi\"\"\"\n");
        let mut r = String::new();
        read_record(&mut input, &mut r).unwrap();
        assert_eq!(r, "1,\"a\nb\"\n");
        r.clear();
        read_record(&mut input, &mut r).unwrap();
        assert_eq!(r, "2,\"say \"\"hi\"\"\"\n");
        assert_eq!(
            split_csv("id, \"the, name\" ,\"Q\"\"\""),
            ["id", "the, name", "Q\""]
        );
        let o = serde_json::json!({"a": 1, "b": "x,\"y\"", "c": null, "d": [1], "e": true});
        let o = o.as_object().unwrap();
        let cols: Vec<String> = ["a", "b", "c", "d", "e", "f"].map(String::from).to_vec();
        assert_eq!(json_to_csv(o, &cols), "1,\"x,\"\"y\"\"\",,\"[1]\",true,");
        assert_eq!(quote_ident("name"), "name");
        assert_eq!(quote_ident("Name"), "\"Name\"");
    }
}
