//! `cairn load`: refused records reported and skipped or stopping the load; every row
//! exactly once when a node is killed mid-load, and when the loader itself is killed and
//! run again with --resume.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn load(urls: &[SocketAddr], args: &[&str]) -> Output {
    let urls: Vec<String> = urls.iter().map(|a| a.to_string()).collect();
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("load")
        .arg("--url")
        .arg(urls.join(","))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait(child, Duration::from_secs(240))
}

fn wait(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cairn load ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_are_reported_and_skipped_or_stop_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::ProcessNode::spawn(
        &dir.path().join("n1"),
        common::free_addr(),
        common::free_addr(),
    );
    let c = common::connect(node.pg).await;
    c.batch_execute("CREATE TABLE bad (id integer PRIMARY KEY, name text NOT NULL)")
        .await
        .unwrap();
    let file = dir.path().join("bad.csv");
    // Header in another order than the table's; a quoted newline; a bad number (line 4), a
    // missing NOT NULL value (line 5), a duplicate key (line 8).
    std::fs::write(
        &file,
        "name,id\na,1\nb,2\nc,x\n,4\n\"multi\nline\",5\ndup,1\ng,7\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = load(
        &[node.pg],
        &["--table", "bad", "--batch", "3", "--parallel", "1", f],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("line 4: 22P02"), "{}", text(&out));
    let n: i64 = c
        .query_one("SELECT count(*) FROM bad", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the refused batch was loaded in part");

    let rejects = dir.path().join("rejects.csv");
    let out = load(
        &[node.pg],
        &[
            "--table",
            "bad",
            "--batch",
            "3",
            "--parallel",
            "1",
            "--on-error",
            "skip",
            "--resume",
            "--rejects",
            rejects.to_str().unwrap(),
            f,
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("loaded 4 rows"), "{all}");
    assert!(all.contains("3 records refused"), "{all}");
    for expected in ["line 4: 22P02", "line 5: 23502", "line 8: 23505"] {
        assert!(all.contains(expected), "{expected} in {all}");
    }
    assert_eq!(
        std::fs::read_to_string(&rejects).unwrap(),
        "c,x\n,4\ndup,1\n"
    );
    let rows: Vec<(i32, String)> = c
        .query("SELECT id, name FROM bad ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        [
            (1, "a".into()),
            (2, "b".into()),
            (5, "multi\nline".into()),
            (7, "g".into())
        ]
    );
    // Run again without --resume: refused, nothing loaded twice.
    let out = load(&[node.pg], &["--table", "bad", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--resume"), "{}", text(&out));

    // With batches in parallel, a refused record stops the others too: the load does not
    // run on to the end of the file.
    c.batch_execute("CREATE TABLE many (id integer PRIMARY KEY)")
        .await
        .unwrap();
    let big = dir.path().join("many.csv");
    let mut csv = String::from("id\nnot a number\n");
    for i in 0..20_000 {
        csv.push_str(&format!("{i}\n"));
    }
    std::fs::write(&big, csv).unwrap();
    let out = load(
        &[node.pg],
        &[
            "--table",
            "many",
            "--batch",
            "100",
            "--parallel",
            "4",
            big.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("line 2: 22P02"), "{}", text(&out));
    let n: i64 = c
        .query_one("SELECT count(*) FROM many", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        n < 10_000,
        "the load ran on after its refused record: {n} rows"
    );

    // JSON lines: keys in any order, bad ones reported.
    let jsonl = dir.path().join("more.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\": 100, \"name\": \"j1\"}\n{\"name\": \"j2\", \"id\": 101}\n{\"id\": \"zz\", \"name\": \"bad\"}\nnot json\n",
    )
    .unwrap();
    let out = load(
        &[node.pg],
        &[
            "--table",
            "bad",
            "--format",
            "jsonl",
            "--on-error",
            "skip",
            jsonl.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("2 records refused"), "{}", text(&out));
    let n: i64 = c
        .query_one("SELECT count(*) FROM bad WHERE id >= 100", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_lands_once_through_a_node_kill_and_a_loader_kill() {
    let mut cluster = tokio::task::block_in_place(|| common::Cluster::start(3, &[]));
    let pgs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.pg).collect();
    let c = common::connect(pgs[1]).await;
    // No primary key: a batch applied twice would show as extra rows.
    c.batch_execute("CREATE TABLE items (id bigint NOT NULL, v text)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("items.csv");
    let rows = 40_000;
    let mut csv = String::from("id,v\n");
    for i in 0..rows {
        csv.push_str(&format!("{i},\"value {i}\"\n"));
    }
    std::fs::write(&file, csv).unwrap();
    let count = |c: tokio_postgres::Client| async move {
        let r = c
            .query_one("SELECT count(*), count(DISTINCT id) FROM items", &[])
            .await
            .unwrap();
        (r.get::<_, i64>(0), r.get::<_, i64>(1))
    };

    // Kill -9 of the node the loader lists first, once some batches are in.
    let urls: Vec<String> = pgs.iter().map(|a| a.to_string()).collect();
    let spawn = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args([
                "load",
                "--url",
                &urls.join(","),
                "--table",
                "items",
                "--batch",
                "500",
            ])
            .args(extra)
            .arg(&file)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let loader = spawn(&[]);
    let started = Instant::now();
    loop {
        let (n, _) = count(common::connect(pgs[1]).await).await;
        if n >= 5_000 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the load did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::block_in_place(|| cluster.nodes[0].kill9());
    let out = tokio::task::block_in_place(|| wait(loader, Duration::from_secs(240)));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(count(common::connect(pgs[1]).await).await, (rows, rows));
    tokio::task::block_in_place(|| cluster.nodes[0].restart());

    // The loader itself killed mid-load, then run again with --resume.
    c.batch_execute("DELETE FROM items; DELETE FROM cairn_load_batches")
        .await
        .unwrap();
    let mut loader = spawn(&[]);
    let started = Instant::now();
    loop {
        let (n, _) = count(common::connect(pgs[1]).await).await;
        if n >= 5_000 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the load did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loader.kill().unwrap();
    let _ = loader.wait();
    let (partial, _) = count(common::connect(pgs[1]).await).await;
    assert!(partial < rows, "the loader finished before it was killed");
    let out = tokio::task::block_in_place(|| wait(spawn(&["--resume"]), Duration::from_secs(240)));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("batches were already committed"),
        "{}",
        text(&out)
    );
    assert_eq!(count(common::connect(pgs[1]).await).await, (rows, rows));
}
