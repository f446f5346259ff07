//! Fault injection in dev mode: `cairn dev` runs a real 3-node cluster of processes, and
//! `cairn dev partition|heal|crash|restart|pause|resume` (sent to any node, which hands it
//! to the supervisor) act on it; a node started by `cairn start` refuses them all. And the
//! dashboard on such a cluster, in headless Chromium (tests/python/dashboard.py).

mod common;

use serde_json::Value;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `cairn dev` cluster: its supervisor process and its nodes' addresses.
struct Dev {
    child: Child,
    pg: Vec<SocketAddr>,
    http: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        // SIGTERM: the supervisor stops its nodes (a SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}

fn start_dev(base: u16) -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let (pg, http, cluster) = (base, base + 10, base + 20);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["dev", "--data-dir"])
        .arg(dir.path())
        .args(["--pg-port", &pg.to_string()])
        .args(["--http-port", &http.to_string()])
        .args(["--cluster-port", &cluster.to_string()])
        .args(["--ftp-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line.contains("Cairn dev cluster is up") {
                let _ = tx.send(());
            }
        }
    });
    let addr = |port: u16| -> SocketAddr { ([127, 0, 0, 1], port).into() };
    let dev = Dev {
        child,
        pg: (0..3).map(|i| addr(pg + i)).collect(),
        http: (0..3).map(|i| addr(http + i)).collect(),
        _dir: dir,
    };
    rx.recv_timeout(Duration::from_secs(120))
        .expect("cairn dev did not say the cluster is up within 120 s");
    dev
}

/// `cairn dev <args> --url <urls>`: exit status and output.
fn fault(urls: &[SocketAddr], args: &[&str]) -> (i32, String) {
    let urls: Vec<String> = urls.iter().map(|a| format!("http://{a}")).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("dev")
        .args(args)
        .arg("--url")
        .arg(urls.join(","))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn json(http: SocketAddr, path: &str) -> Option<Value> {
    serde_json::from_str(&common::http_get(http, path)?).ok()
}

/// (shard, leader) of every data shard, as `http` sees them.
fn leaders(http: SocketAddr) -> Vec<(String, Option<String>)> {
    json(http, "/v1/shards")
        .map(|v| {
            v["shards"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["shard"].as_str().unwrap().to_string(),
                        s["leader"].as_str().map(str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn liveness(http: SocketAddr, node: &str) -> Option<String> {
    json(http, "/v1/nodes")?["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == node)
        .and_then(|n| n["liveness"].as_str().map(str::to_string))
}

/// Runs `sql` through `pg`, retrying for up to 60 s (leaders move after a fault).
async fn write_through(pg: SocketAddr, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let (c, conn) = tokio_postgres::connect(
                &format!(
                    "host={} port={} user=cairn dbname=cairn",
                    pg.ip(),
                    pg.port()
                ),
                tokio_postgres::NoTls,
            )
            .await?;
            tokio::spawn(conn);
            c.batch_execute(sql).await
        };
        match tokio::time::timeout(Duration::from_secs(30), attempt).await {
            Ok(Ok(())) => return,
            failed => assert!(
                Instant::now() < deadline,
                "{sql} through {pg} kept failing: {failed:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heal_crash_restart_and_pause_act_on_a_dev_cluster() {
    let dev = tokio::task::block_in_place(|| start_dev(31500));
    write_through(
        dev.pg[0],
        "CREATE TABLE k (id integer PRIMARY KEY, v text) WITH (shard_count = 3);
         INSERT INTO k VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    )
    .await;
    let others = [dev.http[1], dev.http[2]];

    // n1 cut off from n2 and n3: it leads nothing the others see, they think it dead, and
    // writes through n2 succeed.
    let (code, out) = fault(&others, &["partition", "n1", "--from", "n2,n3"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("n1 cut from n2, n3"), "{out}");
    let links = json(dev.http[0], "/v1/dev/links").unwrap();
    assert_eq!(links["links"].as_object().unwrap().len(), 2, "{links}");
    tokio::task::block_in_place(|| {
        common::wait_for(
            || {
                let l = leaders(dev.http[1]);
                !l.is_empty()
                    && l.iter().all(|(_, leader)| {
                        leader.as_deref().is_some_and(|n| n == "n2" || n == "n3")
                    })
                    && liveness(dev.http[1], "n1").is_some_and(|l| l != "alive")
            },
            Duration::from_secs(60),
            "n1's shards led elsewhere and n1 not alive, as n2 sees it",
        )
    });
    write_through(
        dev.pg[1],
        "INSERT INTO k VALUES (4, 'through n2 while n1 is cut off')",
    )
    .await;

    // Healed: n1 is back and serves writes and the rows written without it.
    let (code, out) = fault(&others, &["heal"]);
    assert_eq!(code, 0, "{out}");
    assert!(json(dev.http[0], "/v1/dev/links").unwrap()["links"]
        .as_object()
        .unwrap()
        .is_empty());
    tokio::task::block_in_place(|| {
        common::wait_for(
            || liveness(dev.http[1], "n1").as_deref() == Some("alive"),
            Duration::from_secs(60),
            "n1 alive again",
        )
    });
    write_through(
        dev.pg[0],
        "INSERT INTO k VALUES (5, 'through n1 after healing')",
    )
    .await;
    let c = common::connect(dev.pg[0]).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM k", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);

    // Crash n3 (kill -9): it is gone; restart brings it back serving.
    let (code, out) = fault(&dev.http[..1], &["crash", "n3"]);
    assert_eq!(code, 0, "{out}");
    assert!(common::http_get(dev.http[2], "/health").is_none());
    let (_, out) = fault(&dev.http[..1], &["faults"]);
    assert!(out.contains("crashed"), "{out}");
    write_through(dev.pg[1], "INSERT INTO k VALUES (6, 'while n3 is down')").await;
    let (code, out) = fault(&dev.http[..1], &["restart", "n3"]);
    assert_eq!(code, 0, "{out}");
    assert!(common::http_get(dev.http[2], "/health").is_some(), "{out}");

    // Pause n2: it answers nothing until resumed.
    let (code, out) = fault(&dev.http[..1], &["pause", "n2"]);
    assert_eq!(code, 0, "{out}");
    assert!(common::http_get(dev.http[1], "/health").is_none());
    let (code, out) = fault(&dev.http[..1], &["resume", "n2"]);
    assert_eq!(code, 0, "{out}");
    tokio::task::block_in_place(|| {
        common::wait_for(
            || common::http_get(dev.http[1], "/health").is_some(),
            Duration::from_secs(30),
            "n2 answering after resume",
        )
    });

    // Mistakes are refused with a reason, and change nothing.
    let (code, out) = fault(&dev.http[..1], &["crash", "n9"]);
    assert_ne!(code, 0);
    assert!(out.contains("no node n9"), "{out}");
    let (status, body) = common::http_post(
        dev.http[0],
        "/v1/dev/explode",
        "{}",
        Duration::from_secs(10),
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"code\""), "{body}");
    let (status, body) = common::http_post(
        dev.http[0],
        "/v1/dev/crash",
        "garbage",
        Duration::from_secs(10),
    );
    assert_eq!(status, 400, "{body}");
    write_through(
        dev.pg[2],
        "INSERT INTO k VALUES (7, 'through n3 after its restart')",
    )
    .await;
}

#[test]
fn a_node_not_run_by_cairn_dev_refuses_fault_injection() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::ProcessNode::spawn(
        &dir.path().join("n1"),
        common::free_addr(),
        common::free_addr(),
    );
    for path in [
        "/v1/dev/crash",
        "/v1/dev/partition",
        "/v1/dev/links",
        "/v1/dev/heal",
    ] {
        let (status, body) = common::http_post(
            node.http,
            path,
            r#"{"node": "n1"}"#,
            Duration::from_secs(10),
        );
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains(r#""code":"55000""#), "{path}: {body}");
        assert!(body.contains("cairn dev"), "{path}: {body}");
    }
    let (code, out) = fault(&[node.http], &["crash", "n1"]);
    assert_ne!(code, 0);
    assert!(
        out.contains("only for clusters run by `cairn dev`"),
        "{out}"
    );
    // Still serving.
    assert!(common::http_get(node.http, "/health").is_some());
}

/// The browser the dashboard test drives (Debian's `chromium` and `chromium-driver`);
/// None (skipped, saying so) without them, unless CAIRN_REQUIRE_BROWSER demands them.
fn browser() -> Option<()> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    if !found {
        assert!(
            std::env::var("CAIRN_REQUIRE_BROWSER").is_err(),
            "chromium and chromedriver are required here (apt-get install chromium chromium-driver)"
        );
        println!("no chromium/chromedriver; skipped");
        return None;
    }
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_runs_sql_follows_changes_and_crashes_a_node() {
    let (Some(python), Some(())) = (common::python(), browser()) else {
        return;
    };
    let dev = tokio::task::block_in_place(|| start_dev(31600));
    write_through(
        dev.pg[0],
        "CREATE TABLE pets (id integer PRIMARY KEY, name text) WITH (shard_count = 3);
         INSERT INTO pets VALUES (1, 'Rex'), (2, 'Tom')",
    )
    .await;
    let script = format!("{}/tests/python/dashboard.py", env!("CARGO_MANIFEST_DIR"));
    let base = format!("http://{}", dev.http[0]);
    let pg = format!("postgresql://cairn@{}/cairn", dev.pg[2]);
    // CAIRN_SCREENSHOTS=docs/img keeps the pages' screenshots (for the docs).
    let shots = std::env::var("CAIRN_SCREENSHOTS").unwrap_or_default();
    let mut args = vec![script.as_str(), base.as_str(), pg.as_str()];
    if !shots.is_empty() {
        args.push(shots.as_str());
    }
    tokio::task::block_in_place(|| common::run_python(&python, &args, &[]));
}

/// Polls `what` every half second until it gives Some, for at most `secs`.
fn eventually<T>(secs: u64, why: &str, mut what: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = what() {
            return v;
        }
        assert!(Instant::now() < deadline, "{why}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What the dashboard draws from: each node's one-second timeline (read through any node),
/// tables' approximate rows as they change, shards' terms, sizes and lag, and the events of a
/// node that is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timelines_table_sizes_shard_state_and_a_dead_nodes_events_are_reported() {
    let dev = tokio::task::block_in_place(|| start_dev(31700));
    write_through(
        dev.pg[0],
        "CREATE TABLE pets (id integer PRIMARY KEY, name text) WITH (shard_count = 3);
         INSERT INTO pets SELECT g, 'pet ' || g FROM generate_series(1, 300) g;
         SELECT count(*) FROM pets",
    )
    .await;
    tokio::task::block_in_place(|| {
        // n1 ran the statements: its timeline, read through n2, has them by kind; every node
        // fsynced its log (each holds a replica of every shard), and the leaders proposed.
        let timeline = |via: usize, node: &str| -> Option<Vec<Value>> {
            json(dev.http[via], &format!("/v1/timeline?node={node}"))
                .and_then(|v| v["seconds"].as_array().cloned())
        };
        let kinds = json(dev.http[0], "/v1/timeline").unwrap()["kinds"].clone();
        assert_eq!(kinds, serde_json::json!(["read", "write", "ddl", "other"]));
        let total =
            |seconds: &[Value], f: &dyn Fn(&Value) -> u64| -> u64 { seconds.iter().map(f).sum() };
        let n1 = eventually(10, "n1's statements in its timeline", || {
            let s = timeline(1, "n1")?;
            let writes = total(&s, &|x| x["statements"][1].as_u64().unwrap());
            let ddl = total(&s, &|x| x["statements"][2].as_u64().unwrap());
            (writes >= 1 && ddl >= 1).then_some(s)
        });
        // Each statement's latency is in its kind's histogram.
        let counted: u64 = n1
            .iter()
            .flat_map(|x| x["latency"][1].as_array().unwrap().clone())
            .map(|b| b[1].as_u64().unwrap())
            .sum();
        assert_eq!(
            counted,
            total(&n1, &|x| x["statements"][1].as_u64().unwrap())
        );
        eventually(
            10,
            "every node's log fsyncs, and the leaders' proposals",
            || {
                let mut proposals = 0;
                for node in ["n1", "n2", "n3"] {
                    let s = timeline(0, node)?;
                    let fsyncs = total(&s, &|x| {
                        x["fsyncs"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|b| b[1].as_u64().unwrap())
                            .sum()
                    });
                    if fsyncs == 0 {
                        return None;
                    }
                    proposals += total(&s, &|x| x["proposals"].as_u64().unwrap());
                }
                (proposals >= 1).then_some(())
            },
        );
        // Only what came after `since_ms`.
        let last = n1.last().unwrap()["at_ms"].as_u64().unwrap();
        let later = json(
            dev.http[0],
            &format!("/v1/timeline?node=n1&since_ms={last}"),
        )
        .unwrap();
        assert!(later["seconds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["at_ms"].as_u64().unwrap() > last));
        let (status, unknown) = common::http_get_any(dev.http[0], "/v1/timeline?node=n9").unwrap();
        let unknown: Value = serde_json::from_str(&unknown).unwrap();
        assert_eq!(
            (status, &unknown["error"]["code"]),
            (404, &serde_json::json!("42704")),
            "{unknown}"
        );

        // Shards: term, size and lag of every replica.
        eventually(30, "every pets replica with term, size and lag", || {
            let shards = json(dev.http[2], "/v1/shards")?;
            let pets: Vec<&Value> = shards["shards"]
                .as_array()?
                .iter()
                .filter(|s| s["tables"] == serde_json::json!(["pets"]))
                .collect();
            (pets.len() == 3
                && pets.iter().all(|s| {
                    s["holds"].as_str().is_some_and(|h| h.starts_with("hash "))
                        && s["term"].as_u64().is_some_and(|t| t >= 1)
                        && s["bytes"].as_u64().is_some_and(|b| b > 0)
                        && s["replica_state"].as_array().unwrap().iter().all(|r| {
                            r["lag"].as_u64().is_some()
                                && r["lag_ms"].as_u64().is_some()
                                && r["bytes"].as_u64().is_some_and(|b| b > 0)
                        })
                }))
            .then_some(())
        });
    });

    // Tables: approximate rows follow the table as it changes.
    let rows = |http: SocketAddr| -> Option<u64> {
        json(http, "/v1/tables")?["tables"]
            .as_array()?
            .iter()
            .find(|t| t["name"] == "pets")?["approximate_rows"]
            .as_u64()
    };
    tokio::task::block_in_place(|| {
        eventually(60, "300 rows in pets", || {
            (rows(dev.http[1]) == Some(300)).then_some(())
        })
    });
    write_through(dev.pg[1], "DELETE FROM pets WHERE id > 200").await;
    write_through(dev.pg[0], "CREATE TABLE toys (id integer PRIMARY KEY)").await;
    tokio::task::block_in_place(|| {
        eventually(60, "200 rows in pets", || {
            (rows(dev.http[0]) == Some(200)).then_some(())
        });
        let table = json(dev.http[0], "/v1/tables").unwrap();
        assert!(table["tables"][0]["approximate_bytes"].as_u64().unwrap() > 0);

        // A node down keeps the events it reported, marked stale.
        let events_of = |node: &str| -> Vec<Value> {
            json(dev.http[0], "/v1/events").unwrap()["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["node"] == node)
                .cloned()
                .collect()
        };
        // The schema change is an event of the node that ran it.
        let ddl: Vec<Value> = events_of("n1")
            .into_iter()
            .filter(|e| e["kind"] == "ddl")
            .collect();
        assert!(
            ddl.iter().any(|e| e["message"]
                .as_str()
                .unwrap()
                .starts_with("CREATE TABLE toys")),
            "no DDL event: {ddl:?}"
        );
        let before = events_of("n2");
        assert!(!before.is_empty());
        assert!(before.iter().all(|e| e["stale"] == false));
        let (code, out) = fault(&dev.http, &["crash", "n2"]);
        assert_eq!(code, 0, "{out}");
        eventually(
            30,
            "n2's events kept, marked stale, while it is down",
            || {
                let now = events_of("n2");
                (now.len() >= before.len() && now.iter().all(|e| e["stale"] == true)).then_some(())
            },
        );
    });
}
