//! `cairn slt`: runs sqllogictest files (the SQLite project's corpus format) against any
//! PostgreSQL-protocol server — Cairn, or PostgreSQL itself for a baseline — and counts
//! what passes.
//!
//! A file is a list of records separated by blank lines:
//! - `statement ok` / `statement error`, then the SQL;
//! - `query <types> <sort> [label]`, the SQL, `----`, then the expected values one per line,
//!   or `N values hashing to <md5>` (when there are more than the `hash-threshold`);
//! - `skipif <db>` / `onlyif <db>` before a record (this runner is `postgresql`), `halt`,
//!   `hash-threshold N`, and `#` comments.
//!
//! Values are printed as the reference runner prints them: `I` as an integer, `R` with
//! three decimals, `T` as text (characters outside printable ASCII as `@`), NULL as `NULL`,
//! an empty string as `(empty)`; `rowsort` sorts rows, `valuesort` single values. With
//! `--distribute`, a `CREATE TABLE` without a primary key is hash-distributed on its first
//! column (`PARTITION BY HASH`), so queries run across shards.

use md5::{Digest, Md5};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct SltArgs {
    /// A PostgreSQL URL (postgres://user@host:port/db).
    #[arg(long)]
    pub url: String,
    /// Hash-distribute tables that have no primary key on their first column.
    #[arg(long)]
    pub distribute: bool,
    /// Print the first N failures of each file.
    #[arg(long, default_value_t = 0)]
    pub show: usize,
    /// Give up on a statement or query after this long (it counts as an error).
    #[arg(long, default_value = "30s")]
    pub timeout: humantime_like::Duration,
    /// Test files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// A `Duration` read from `500ms`, `30s`, `2m`.
pub mod humantime_like {
    #[derive(Debug, Clone, Copy)]
    pub struct Duration(pub std::time::Duration);

    impl std::str::FromStr for Duration {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            crate::sql::parse_duration(s)
                .map(Duration)
                .ok_or_else(|| format!("not a duration: {s} (e.g. 30s)"))
        }
    }
}

/// One record of a test file.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Statement {
        ok: bool,
        sql: String,
        line: usize,
    },
    Query {
        types: String,
        sort: Sort,
        sql: String,
        expected: Option<Expected>,
        line: usize,
    },
    HashThreshold(usize),
    Halt,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sort {
    None,
    Rows,
    Values,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    Values(Vec<String>),
    Hash { count: usize, md5: String },
}

/// The records of a file that apply to PostgreSQL (skipif/onlyif decided).
pub fn parse(text: &str) -> Vec<Record> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let mut applies = true;
        // Conditions and comments before the record.
        while i < lines.len() {
            let l = lines[i].trim_end();
            if let Some(db) = l.strip_prefix("skipif ") {
                applies &= db.trim() != "postgresql";
            } else if let Some(db) = l.strip_prefix("onlyif ") {
                applies &= db.trim() == "postgresql";
            } else if !l.starts_with('#') {
                break;
            }
            i += 1;
        }
        if i >= lines.len() {
            break;
        }
        let head = lines[i].trim_end();
        if head.is_empty() {
            i += 1;
            continue;
        }
        let line = i + 1;
        i += 1;
        let mut body = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() {
            body.push(lines[i]);
            i += 1;
        }
        let words: Vec<&str> = head.split_whitespace().collect();
        let record = match words.first().copied() {
            Some("statement") => Some(Record::Statement {
                ok: words.get(1) == Some(&"ok"),
                sql: body.join("\n"),
                line,
            }),
            Some("query") => {
                let split = body.iter().position(|l| l.trim_end() == "----");
                let (sql, results) = match split {
                    Some(at) => (&body[..at], Some(&body[at + 1..])),
                    None => (&body[..], None),
                };
                let expected = results.map(|r| {
                    let hashed = r.first().and_then(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        (w.len() == 5 && w[1] == "values" && w[2] == "hashing")
                            .then(|| (w[0].parse().ok(), w[4].to_string()))
                    });
                    match hashed {
                        Some((Some(count), md5)) => Expected::Hash { count, md5 },
                        _ => Expected::Values(r.iter().map(|l| l.trim_end().to_string()).collect()),
                    }
                });
                Some(Record::Query {
                    types: words.get(1).unwrap_or(&"").to_string(),
                    sort: match words.get(2).copied() {
                        Some("rowsort") => Sort::Rows,
                        Some("valuesort") => Sort::Values,
                        _ => Sort::None,
                    },
                    sql: sql.join("\n"),
                    expected,
                    line,
                })
            }
            Some("hash-threshold") => words
                .get(1)
                .and_then(|n| n.parse().ok())
                .map(Record::HashThreshold),
            Some("halt") => Some(Record::Halt),
            _ => None,
        };
        if let (true, Some(r)) = (applies, record) {
            out.push(r);
        }
    }
    out
}

/// A value as the reference runner prints it for column type `ty` (`I`, `R`, `T`).
pub fn render(value: Option<&str>, ty: char) -> String {
    let Some(v) = value else {
        return "NULL".into();
    };
    match ty {
        'I' => match v.trim().parse::<i64>() {
            Ok(i) => i.to_string(),
            Err(_) => match v.trim().parse::<f64>() {
                Ok(f) => (f.trunc() as i64).to_string(),
                Err(_) => match v {
                    "t" | "true" => "1".into(),
                    "f" | "false" => "0".into(),
                    _ => "0".into(),
                },
            },
        },
        'R' => match v.trim().parse::<f64>() {
            Ok(f) => format!("{f:.3}"),
            Err(_) => "0.000".into(),
        },
        _ if v.is_empty() => "(empty)".into(),
        _ => v
            .chars()
            .map(|c| if (' '..='~').contains(&c) { c } else { '@' })
            .collect(),
    }
}

/// The values a query's rows print, sorted as asked.
pub fn values(rows: Vec<Vec<Option<String>>>, types: &str, sort: Sort) -> Vec<String> {
    let types: Vec<char> = types.chars().collect();
    let mut rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, v)| render(v.as_deref(), types.get(i).copied().unwrap_or('T')))
                .collect()
        })
        .collect();
    match sort {
        Sort::Rows => {
            rows.sort();
            rows.into_iter().flatten().collect()
        }
        Sort::Values => {
            let mut all: Vec<String> = rows.into_iter().flatten().collect();
            all.sort();
            all
        }
        Sort::None => rows.into_iter().flatten().collect(),
    }
}

pub fn hash(values: &[String]) -> String {
    let mut h = Md5::new();
    for v in values {
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `CREATE TABLE t(a ..., b ...)` without a primary key, hash-distributed on its first
/// column; anything else as it is.
pub fn distributed(sql: &str) -> String {
    let lower = sql.to_ascii_lowercase();
    let t = lower.trim_start();
    if !t.starts_with("create table")
        || lower.contains("primary key")
        || lower.contains(" as select")
    {
        return sql.to_string();
    }
    let Some(open) = sql.find('(') else {
        return sql.to_string();
    };
    let first = sql[open + 1..]
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == ',' || c == ')')
        .next()
        .unwrap_or("");
    if first.is_empty() {
        return sql.to_string();
    }
    format!(
        "{} PARTITION BY HASH ({first})",
        sql.trim_end().trim_end_matches(';')
    )
}

#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub statements: usize,
    pub statements_wrong: usize,
    pub queries: usize,
    pub passed: usize,
    /// Wrong answers.
    pub wrong: usize,
    /// Errors where a result was expected.
    pub errors: usize,
    pub failures: Vec<String>,
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn run_sql(
    client: &tokio_postgres::Client,
    sql: &str,
    timeout: Duration,
) -> Result<Vec<Vec<Option<String>>>, String> {
    let run = client.simple_query(sql);
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(format!("no answer in {timeout:?}")),
        Ok(Err(e)) => Err(e
            .as_db_error()
            .map(|d| format!("{} {}", d.code().code(), d.message()))
            .unwrap_or_else(|| e.to_string())),
        Ok(Ok(messages)) => Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect()),
    }
}

/// Run one file's records on a fresh connection; tables it creates are dropped first (a
/// file assumes an empty database) and after.
pub async fn run_file(args: &SltArgs, records: &[Record]) -> anyhow::Result<Tally> {
    let mut client = connect(&args.url).await?;
    let timeout = args.timeout.0;
    let created: Vec<String> = records
        .iter()
        .filter_map(|r| match r {
            Record::Statement { sql, .. } => {
                let l = sql.to_ascii_lowercase();
                let rest = l.trim_start().strip_prefix("create table")?;
                let name = rest
                    .trim_start()
                    .trim_start_matches("if not exists")
                    .trim_start()
                    .split(|c: char| c == '(' || c.is_whitespace())
                    .next()?
                    .to_string();
                Some(name)
            }
            _ => None,
        })
        .collect();
    drop_tables(&client, &created).await;
    let mut tally = Tally::default();
    let mut threshold = 0usize;
    for record in records {
        if client.is_closed() {
            client = connect(&args.url).await?;
        }
        match record {
            Record::HashThreshold(n) => threshold = *n,
            Record::Halt => break,
            Record::Statement { ok, sql, line } => {
                tally.statements += 1;
                let sql = if args.distribute {
                    distributed(sql)
                } else {
                    sql.clone()
                };
                let result = run_sql(&client, &sql, timeout).await;
                if result.is_ok() != *ok {
                    tally.statements_wrong += 1;
                    if tally.failures.len() < args.show {
                        tally.failures.push(format!(
                            "line {line}: statement {} expected, got {:?}\n  {sql}",
                            if *ok { "ok" } else { "error" },
                            result.err()
                        ));
                    }
                }
            }
            Record::Query {
                types,
                sort,
                sql,
                expected,
                line,
            } => {
                tally.queries += 1;
                let result = run_sql(&client, sql, timeout).await;
                let verdict = match (result, expected) {
                    (Err(e), _) => Err((true, e)),
                    (Ok(_), None) => Ok(()),
                    (Ok(rows), Some(want)) => {
                        let got = values(rows, types, *sort);
                        let same = match want {
                            Expected::Values(v) if got.len() > threshold && threshold > 0 => {
                                // Written out though over the threshold: compare values.
                                got == *v
                            }
                            Expected::Values(v) => got == *v,
                            Expected::Hash { count, md5 } => {
                                got.len() == *count && hash(&got) == *md5
                            }
                        };
                        if same {
                            Ok(())
                        } else {
                            let shown = if got.len() > 12 {
                                format!("{} values hashing to {}", got.len(), hash(&got))
                            } else {
                                got.join(" | ")
                            };
                            Err((false, shown))
                        }
                    }
                };
                match verdict {
                    Ok(()) => tally.passed += 1,
                    Err((is_error, what)) => {
                        if is_error {
                            tally.errors += 1;
                        } else {
                            tally.wrong += 1;
                        }
                        if tally.failures.len() < args.show {
                            tally.failures.push(format!(
                                "line {line}: {} {what}\n  {sql}",
                                if is_error { "error" } else { "wrong:" }
                            ));
                        }
                    }
                }
            }
        }
    }
    drop_tables(&client, &created).await;
    Ok(tally)
}

/// Drop what a file creates (views over the tables first), ignoring what is not there.
async fn drop_tables(client: &tokio_postgres::Client, tables: &[String]) {
    for t in tables.iter().rev() {
        let _ = client
            .simple_query(&format!("DROP VIEW IF EXISTS {t} CASCADE"))
            .await;
        let _ = client
            .simple_query(&format!("DROP TABLE IF EXISTS {t} CASCADE"))
            .await;
    }
}

pub async fn run(args: SltArgs) -> anyhow::Result<()> {
    let mut total = Tally::default();
    println!(
        "{:<60} {:>8} {:>8} {:>7} {:>7} {:>9}",
        "file", "queries", "passed", "wrong", "errors", "stmt-bad"
    );
    for file in &args.files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let records = parse(&text);
        let t = run_file(&args, &records).await?;
        println!(
            "{:<60} {:>8} {:>8} {:>7} {:>7} {:>9}",
            file.display(),
            t.queries,
            t.passed,
            t.wrong,
            t.errors,
            t.statements_wrong
        );
        for f in &t.failures {
            println!("    {f}");
        }
        total.statements += t.statements;
        total.statements_wrong += t.statements_wrong;
        total.queries += t.queries;
        total.passed += t.passed;
        total.wrong += t.wrong;
        total.errors += t.errors;
    }
    let share = if total.queries == 0 {
        100.0
    } else {
        100.0 * total.passed as f64 / total.queries as f64
    };
    println!(
        "total: {} queries, {} passed ({share:.2} %), {} wrong, {} errors; {} of {} statements not as expected",
        total.queries, total.passed, total.wrong, total.errors, total.statements_wrong, total.statements
    );
    if total.wrong + total.errors + total.statements_wrong > 0 {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_conditions_and_expected_values_parse() {
        let text = "hash-threshold 8\n\nstatement ok\nCREATE TABLE t1(a INTEGER, b INTEGER)\n\n\
                    skipif postgresql\nquery I nosort\nSELECT 1\n----\n1\n\n\
                    onlyif postgresql\nquery IT rowsort label-1\nSELECT a, b\nFROM t1\n----\n1\nx\n\n\
                    query I nosort\nSELECT a FROM t1\n----\n30 values hashing to abc\n\nhalt\n";
        let records = parse(text);
        assert_eq!(records.len(), 5, "{records:?}");
        assert_eq!(records[0], Record::HashThreshold(8));
        assert!(
            matches!(&records[2], Record::Query { sort: Sort::Rows, sql, expected: Some(Expected::Values(v)), .. } if sql == "SELECT a, b\nFROM t1" && v == &["1", "x"])
        );
        assert!(matches!(
            &records[3],
            Record::Query {
                expected: Some(Expected::Hash { count: 30, .. }),
                ..
            }
        ));
        assert_eq!(records[4], Record::Halt);
    }

    #[test]
    fn values_print_and_hash_as_the_reference_runner() {
        assert_eq!(render(Some("3.7"), 'I'), "3");
        assert_eq!(render(Some("2"), 'R'), "2.000");
        assert_eq!(render(Some(""), 'T'), "(empty)");
        assert_eq!(render(None, 'I'), "NULL");
        assert_eq!(render(Some("é"), 'T'), "@");
        let rows = vec![
            vec![Some("2".to_string()), Some("b".into())],
            vec![Some("1".into()), None],
        ];
        assert_eq!(
            values(rows.clone(), "IT", Sort::Rows),
            ["1", "NULL", "2", "b"]
        );
        assert_eq!(values(rows, "IT", Sort::Values), ["1", "2", "NULL", "b"]);
        // md5 of "1\n2\n".
        assert_eq!(
            hash(&["1".into(), "2".into()]),
            "6ddb4095eb719e2a9f0a3f95677d24e0"
        );
    }

    #[test]
    fn tables_without_a_key_are_spread_with_distribute() {
        assert_eq!(
            distributed("CREATE TABLE t1(a INTEGER, b INTEGER)"),
            "CREATE TABLE t1(a INTEGER, b INTEGER) PARTITION BY HASH (a)"
        );
        assert_eq!(
            distributed("CREATE TABLE tab0(pk INTEGER PRIMARY KEY, col0 INTEGER)"),
            "CREATE TABLE tab0(pk INTEGER PRIMARY KEY, col0 INTEGER)"
        );
    }
}
