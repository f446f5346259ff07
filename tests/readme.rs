//! The README's examples run against a 3-node cluster (zones `beijing`, `hongkong`,
//! `beijing`), in the order the README gives them, so the README cannot drift from what
//! Cairn does:
//! - every ```sql block's statements run through pgwire; a `-- ⇒ text` line after a
//!   statement must appear in one of its rows (cells joined by ` | `), or, written
//!   `-- ⇒ ERROR code: message`, the statement must fail with that SQLSTATE and message;
//! - every `curl` command of a ```sh block runs against the first node's HTTP API, and a
//!   `# {json}` line after it must equal the answer (the example transaction id stands for
//!   whatever id the cluster gives).

mod common;

use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// The fenced blocks of the README: (info string, lines).
fn blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        if let Some(info) = line.strip_prefix("```") {
            match current.take() {
                Some(block) => out.push(block),
                None => current = Some((info.trim().to_string(), Vec::new())),
            }
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line.to_string());
        }
    }
    out
}

/// The statements of a SQL block with what each is expected to answer.
fn statements(lines: &[String]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut sql = String::new();
    for line in lines {
        if let Some(expect) = line.trim().strip_prefix("-- ⇒ ") {
            out.last_mut()
                .expect("an expectation follows a statement")
                .1
                .push(expect.to_string());
            continue;
        }
        let code = line.split(" --").next().unwrap_or(line);
        if code.trim().is_empty() || code.trim_start().starts_with("--") {
            continue;
        }
        sql.push_str(code);
        sql.push('\n');
        if code.trim_end().ends_with(';') {
            out.push((std::mem::take(&mut sql), Vec::new()));
        }
    }
    assert!(sql.trim().is_empty(), "a statement without its ';': {sql}");
    out
}

/// A request a `curl` command makes: method, path, body.
type Request = (String, String, Option<String>);

/// The `curl` commands of a shell block, each with the lines expected after it.
fn curls(lines: &[String]) -> Vec<(Request, Vec<String>)> {
    let mut out: Vec<(Request, Vec<String>)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(expect) = line.strip_prefix("# ") {
            if let Some(last) = out.last_mut() {
                last.1.push(expect.to_string());
            }
            i += 1;
            continue;
        }
        if !line.starts_with("curl ") {
            i += 1;
            continue;
        }
        // The command, with its continuation lines and a quoted body spanning lines.
        let mut command = line.trim_end_matches('\\').to_string();
        while (command.matches('\'').count() % 2 == 1 || lines[i].trim_end().ends_with('\\'))
            && i + 1 < lines.len()
        {
            i += 1;
            command.push('\n');
            command.push_str(lines[i].trim().trim_end_matches('\\'));
        }
        let method = if command.contains("-X POST") || command.contains("-d '") {
            "POST"
        } else {
            "GET"
        };
        let url = command
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("a URL");
        let path = url
            .trim_start_matches("http://")
            .split_once('/')
            .map(|(_, p)| format!("/{p}"))
            .expect("a path");
        let body = command
            .split_once("-d '")
            .map(|(_, rest)| rest.rsplit_once('\'').map_or(rest, |(b, _)| b).to_string());
        out.push(((method.to_string(), path, body), Vec::new()));
        i += 1;
    }
    out
}

fn cells(row: &tokio_postgres::SimpleQueryRow) -> String {
    (0..row.len())
        .map(|i| row.get(i).unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `want` equals `got`, an example id in `want` standing for the one in `got` (recorded in
/// `ids`).
fn same(want: &Value, got: &Value, ids: &mut HashMap<String, String>) -> bool {
    match (want, got) {
        (Value::String(w), Value::String(g))
            if w.len() == 16 && w.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            ids.insert(w.clone(), g.clone());
            true
        }
        (Value::Object(w), Value::Object(g)) => {
            w.len() == g.len()
                && w.iter()
                    .all(|(k, v)| g.get(k).is_some_and(|x| same(v, x, ids)))
        }
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| same(a, b, ids))
        }
        (Value::Number(w), Value::Number(g)) => w.as_f64() == g.as_f64(),
        _ => want == got,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_example_answers_as_shown() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let zones = ["beijing", "hongkong", "beijing"];
    let cluster = tokio::task::block_in_place(|| {
        common::Cluster::start_each(3, |i| vec!["--zone".to_string(), zones[i].to_string()])
    });
    let client = common::connect(cluster.nodes[0].pg).await;
    let http = cluster.nodes[0].http;
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut checked = 0;
    for (info, lines) in blocks(&readme) {
        match info.as_str() {
            "sql" => {
                for (sql, expected) in statements(&lines) {
                    let result = client.simple_query(&sql).await;
                    match (&result, expected.first()) {
                        (Err(e), Some(want)) if want.starts_with("ERROR ") => {
                            let db = e.as_db_error().expect("a database error");
                            let shown = format!("ERROR {}: {}", db.code().code(), db.message());
                            assert_eq!(&shown, want, "{sql}");
                        }
                        (Err(e), _) => panic!("README statement failed: {sql}\n{e:?}"),
                        (Ok(messages), _) => {
                            let rows: Vec<String> = messages
                                .iter()
                                .filter_map(|m| match m {
                                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(cells(r)),
                                    _ => None,
                                })
                                .collect();
                            for want in &expected {
                                assert!(
                                    rows.iter().any(|r| r.contains(want.as_str())),
                                    "README says {sql}\nanswers {want:?}; it answered:\n{}",
                                    rows.join("\n")
                                );
                            }
                        }
                    }
                    checked += expected.len();
                }
            }
            "sh" => {
                for ((method, mut path, mut body), expected) in curls(&lines) {
                    for (example, actual) in &ids {
                        path = path.replace(example, actual);
                        body = body.map(|b| b.replace(example, actual));
                    }
                    let answer = tokio::task::block_in_place(|| {
                        if method == "POST" {
                            let raw = common::http_post(
                                http,
                                &path,
                                body.as_deref().unwrap_or("{}"),
                                Duration::from_secs(30),
                            )
                            .1;
                            assert!(!raw.is_empty(), "no answer from {path}");
                            raw.split_once("\r\n\r\n")
                                .map(|(_, b)| b.to_string())
                                .unwrap_or(raw)
                        } else {
                            common::http_get(http, &path).unwrap_or_default()
                        }
                    });
                    for want in expected {
                        let want: Value = serde_json::from_str(&want)
                            .unwrap_or_else(|e| panic!("README output is not JSON ({e}): {want}"));
                        let got: Value = serde_json::from_str(&answer).unwrap_or_else(|e| {
                            panic!("{method} {path} {body:?} answered no JSON ({e}): {answer}")
                        });
                        assert!(
                            same(&want, &got, &mut ids),
                            "README says {method} {path} {body:?}\nanswers {want}\nit answered {got}"
                        );
                        checked += 1;
                    }
                }
            }
            _ => {}
        }
    }
    assert!(checked > 10, "only {checked} README outputs were checked");
}

#[test]
fn statements_and_commands_are_read_from_the_readme_format() {
    let lines: Vec<String> =
        "SELECT 1;\n-- ⇒ 1\nBEGIN; UPDATE t SET a = 1; COMMIT;\nSET x = 'y';  -- why\n"
            .lines()
            .map(String::from)
            .collect();
    let s = statements(&lines);
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].1, ["1"]);
    assert_eq!(s[2].0.trim(), "SET x = 'y';");
    let lines: Vec<String> = "curl -s http://127.0.0.1:8080/v1/sql -d '{\"statements\": [\n  {\"sql\": \"SELECT 1\"}]}'\n# {\"results\":[]}\ncurl -s -X POST http://127.0.0.1:8080/v1/txn/ab/commit\n"
        .lines()
        .map(String::from)
        .collect();
    let c = curls(&lines);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].0 .1, "/v1/sql");
    assert_eq!(
        c[0].0 .2.as_deref(),
        Some("{\"statements\": [\n{\"sql\": \"SELECT 1\"}]}")
    );
    assert_eq!(c[0].1, ["{\"results\":[]}"]);
    assert_eq!(c[1].0 .0, "POST");
}
