//! `cairn sql`: scripts (`-c`, `-f`, stdin) against a real node, exiting non-zero at the
//! first failed statement; `\copy` both ways; CSV output; and the interactive shell driven
//! through a pseudo-terminal (tests/python/sql_shell.py, with pexpect).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

fn node() -> (tempfile::TempDir, common::ProcessNode) {
    let dir = tempfile::tempdir().unwrap();
    let node = common::ProcessNode::spawn(
        &dir.path().join("n1"),
        common::free_addr(),
        common::free_addr(),
    );
    (dir, node)
}

/// Runs `cairn sql <pg> args...` with `stdin`, bounded by a deadline.
fn sql(pg: SocketAddr, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("sql")
        .arg(pg.to_string())
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("cairn sql {args:?} ran past 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn a_script_runs_in_order_and_stops_at_its_first_error_with_status_1() {
    let (_dir, node) = node();
    let script = "CREATE TABLE s (id integer PRIMARY KEY, note text);\n\
                  INSERT INTO s VALUES (1, 'one;\n with a newline'), (2, NULL);\n\
                  -- a comment; not a statement\n\
                  SELECT id, note FROM s\n  ORDER BY id;\n\
                  INSERT INTO s VALUES (1, 'again');\n\
                  INSERT INTO s VALUES (3, 'never run');\n";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), script).unwrap();
    let out = sql(node.pg, &["-f", file.path().to_str().unwrap()], "");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("CREATE TABLE\nINSERT 0 2\n"), "{stdout}");
    assert!(stdout.contains("(2 rows)"), "{stdout}");
    assert!(stderr.contains("ERROR:  23505: "), "{stderr}");
    // The statement after the failed one did not run.
    let out = sql(
        node.pg,
        &["--csv", "-c", "SELECT id, note FROM s ORDER BY id"],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "id,note\n1,\"one;\n with a newline\"\n2,\n"
    );

    // The same from stdin, and -c with several statements and a backslash command.
    let out = sql(
        node.pg,
        &[],
        "SELECT count(*) AS n FROM s;\nSELECT nope;\nSELECT 1;\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains(" n \n---\n 2 \n(1 row)"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("ERROR:  42703"),
        "{}",
        text(&out.stderr)
    );
    let out = sql(
        node.pg,
        &[
            "-c",
            "SELECT 1 AS a; SELECT 2 AS b; \\x",
            "-c",
            "SELECT 3 AS c",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("Expanded display is on.\n-[ RECORD 1 ]-\nc | 3\n"),
        "{stdout}"
    );

    // A syntax error points at its place.
    let out = sql(node.pg, &["-c", "SELECT 1,\n  2 FORM s;"], "");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("ERROR:  42601: ")
            && stderr.contains(&format!("\nLINE 2:   2 FORM s;\n{}^\n", " ".repeat(17))),
        "{stderr}"
    );

    // A server that is not there: status 2, said on stderr.
    let out = sql(common::free_addr(), &["-c", "SELECT 1"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn copy_loads_a_local_file_and_saves_a_query_to_one() {
    let (_dir, node) = node();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let mut csv = String::from("id,name\n");
    for i in 0..500 {
        csv.push_str(&format!("{i},\"name, {i}\"\n"));
    }
    std::fs::write(&input, &csv).unwrap();
    let output = dir.path().join("out.csv");
    let out = sql(
        node.pg,
        &[
            "-c",
            "CREATE TABLE people (id integer PRIMARY KEY, name text)",
            "-c",
            &format!(
                "\\copy people (id, name) FROM '{}' WITH (FORMAT csv, HEADER true)",
                input.display()
            ),
            "-c",
            &format!(
                "\\copy (SELECT id, name FROM people ORDER BY id) TO '{}' WITH (FORMAT csv, HEADER true)",
                output.display()
            ),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("COPY 500\n"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read_to_string(&output).unwrap(), csv);

    // A malformed line loads nothing and fails the script.
    std::fs::write(&input, "id,name\n1000,ok\nnot a number,bad\n").unwrap();
    let out = sql(
        node.pg,
        &[
            "-c",
            &format!(
                "\\copy people FROM '{}' WITH (FORMAT csv, HEADER true)",
                input.display()
            ),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("ERROR:  22P02"),
        "{}",
        text(&out.stderr)
    );
    let out = sql(node.pg, &["--csv", "-c", "SELECT count(*) FROM people"], "");
    assert_eq!(text(&out.stdout), "count\n500\n");
    // A file that is not there.
    let out = sql(
        node.pg,
        &["-c", "\\copy people FROM '/nonexistent/x.csv'"],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/x.csv"));
}

#[test]
fn the_interactive_shell_works_through_a_terminal() {
    let Some(python) = common::python() else {
        return;
    };
    let (_dir, node) = node();
    let history = tempfile::NamedTempFile::new().unwrap();
    let script = format!("{}/tests/python/sql_shell.py", env!("CARGO_MANIFEST_DIR"));
    let url = format!("postgres://cairn@{}/cairn", node.pg);
    common::run_python(
        &python,
        &[
            script.as_str(),
            env!("CARGO_BIN_EXE_cairn"),
            url.as_str(),
            history.path().to_str().unwrap(),
        ],
        &[],
    );
}
