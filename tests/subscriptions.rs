//! WebSocket subscriptions (`/v1/ws`) against real nodes: what a subscriber receives is
//! exactly what committed, in order, from now, from a token, or after a snapshot.

mod common;

use common::{TestNode, Ws};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// How long a test waits for what it expects before failing.
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Messages until `done` says so; fails after `WAIT`, showing the last messages.
async fn until(ws: &mut Ws, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = std::collections::VecDeque::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "waited {WAIT:?} for {what}; last messages: {seen:?}"
        );
        let m = ws.expect().await;
        if done(&m) {
            return m;
        }
        seen.push_back(m);
        if seen.len() > 5 {
            seen.pop_front();
        }
    }
}

/// Messages for subscription `id` until `n` events came (progress and others skipped).
async fn events(ws: &mut Ws, id: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = until(ws, &format!("event {} of {id}", got.len() + 1), |m| {
            assert!(m["error"].is_null(), "{m}");
            m["id"] == id && !m["event"].is_null()
        })
        .await;
        got.push(m["event"].clone());
    }
    got
}

/// Wait for a progress message of `id`, failing on any event meanwhile (it would be one
/// nobody expected).
async fn quiet_until_progress(ws: &mut Ws, id: &str) -> String {
    let m = until(ws, &format!("progress of {id}"), |m| {
        assert!(m["event"].is_null(), "unexpected event: {m}");
        assert!(m["error"].is_null(), "{m}");
        m["id"] == id && m["progress"].is_string()
    })
    .await;
    m["progress"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arrive_in_commit_order_with_whole_rows() {
    let node = TestNode::start().await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE rides (id int PRIMARY KEY, status text NOT NULL, fare numeric(8,2), tags text[])",
        )
        .await
        .unwrap();
    client
        .execute("INSERT INTO rides VALUES (0, 'before', 1, '{}')", &[])
        .await
        .unwrap();
    let mut ws = Ws::connect(node.http).await;
    let start = ws.subscribe("s1", json!({"table": "rides"})).await;
    assert!(start.starts_with('s'), "a token: {start}");

    // Three commits (one multi-statement query would be one transaction, whose net
    // change to row 1 is nothing).
    for sql in [
        "INSERT INTO rides VALUES (1, 'open', 12.5, '{a,b}')",
        "UPDATE rides SET status = 'taken' WHERE id = 1",
        "DELETE FROM rides WHERE id = 1",
    ] {
        client.execute(sql, &[]).await.unwrap();
    }
    let got = events(&mut ws, "s1", 3).await;
    assert_eq!(got[0]["op"], "insert");
    assert_eq!(got[0]["table"], "rides");
    assert_eq!(got[0]["key"], json!({"id": 1}));
    assert_eq!(
        got[0]["new"],
        json!({"id": 1, "status": "open", "fare": 12.5, "tags": ["a", "b"]}),
        "values as /v1/sql gives them"
    );
    assert_eq!(got[0]["old"], Value::Null);
    assert_eq!(got[1]["op"], "update");
    assert_eq!(got[1]["old"]["status"], "open");
    assert_eq!(got[1]["new"]["status"], "taken");
    assert_eq!(
        got[1]["new"]["fare"], 12.5,
        "unchanged columns are there too"
    );
    assert_eq!(got[2]["op"], "delete");
    assert_eq!(got[2]["new"], Value::Null);
    assert_eq!(got[2]["old"]["status"], "taken");
    // Three statements, three commits: three transactions, in order.
    let txns: BTreeSet<&str> = got.iter().map(|e| e["txn"].as_str().unwrap()).collect();
    assert_eq!(txns.len(), 3);
    let tokens: Vec<&str> = got.iter().map(|e| e["token"].as_str().unwrap()).collect();
    assert!(tokens.windows(2).all(|w| w[0] != w[1]));
    assert!(got[0]["time"].as_str().unwrap().starts_with("20"));

    // A transaction's changes arrive together, with one id.
    client
        .batch_execute(
            "BEGIN; INSERT INTO rides VALUES (2, 'open', 1, '{}'), (3, 'open', 2, '{}');
             UPDATE rides SET fare = 9 WHERE id = 0; COMMIT;",
        )
        .await
        .unwrap();
    let got = events(&mut ws, "s1", 3).await;
    let txns: BTreeSet<&str> = got.iter().map(|e| e["txn"].as_str().unwrap()).collect();
    assert_eq!(txns.len(), 1, "{got:?}");

    // Progress comes when nothing changes, and resuming from it replays nothing.
    let progress = quiet_until_progress(&mut ws, "s1").await;
    let mut again = Ws::connect(node.http).await;
    let token = again
        .subscribe("r", json!({"table": "rides", "from": progress}))
        .await;
    assert_eq!(token, progress);
    quiet_until_progress(&mut again, "r").await;
    // Resuming from the token of the first change replays the rest, exactly.
    let mut replay = Ws::connect(node.http).await;
    replay
        .subscribe("r", json!({"table": "rides", "from": tokens[0]}))
        .await;
    let rest = events(&mut replay, "r", 5).await;
    // Shards interleave; each shard's changes keep their order.
    let row1: Vec<&Value> = rest.iter().filter(|e| e["key"]["id"] == 1).collect();
    assert_eq!(row1.len(), 2);
    assert_eq!(row1[0]["op"], "update");
    assert_eq!(row1[1]["op"], "delete");
    let later: BTreeSet<&str> = rest
        .iter()
        .filter(|e| e["key"]["id"] != 1)
        .map(|e| e["txn"].as_str().unwrap())
        .collect();
    assert_eq!(later.len(), 1, "the transaction's three changes: {rest:?}");
    quiet_until_progress(&mut replay, "r").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_passes_exactly_the_rows_it_matches_before_or_after() {
    let node = TestNode::start().await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, n int, s text)")
        .await
        .unwrap();
    let mut ws = Ws::connect(node.http).await;
    ws.subscribe(
        "big",
        json!({"table": "t", "where": "n > 10 AND s <> 'skip'"}),
    )
    .await;
    for sql in [
        "INSERT INTO t VALUES (1, 5, 'a')",     // no
        "INSERT INTO t VALUES (2, 20, 'a')",    // yes
        "INSERT INTO t VALUES (3, 20, 'skip')", // no
        "UPDATE t SET n = 6 WHERE id = 1",      // no: neither row matches
        "UPDATE t SET n = 7 WHERE id = 2",      // yes: the old row matched
        "UPDATE t SET n = 30 WHERE id = 1",     // yes: the new row matches
        "DELETE FROM t WHERE id = 3",           // no
        "DELETE FROM t WHERE id = 1",           // yes
    ] {
        client.execute(sql, &[]).await.unwrap();
    }
    let got = events(&mut ws, "big", 4).await;
    let seen: Vec<(String, i64)> = got
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["key"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("insert".into(), 2),
            ("update".into(), 2),
            ("update".into(), 1),
            ("delete".into(), 1)
        ]
    );
    quiet_until_progress(&mut ws, "big").await;

    // Bad requests get coded errors, and the connection stays usable.
    for (request, code) in [
        (json!({"table": "nope"}), "undefined_table"),
        (json!({"table": "t", "where": "n >"}), "invalid_condition"),
        (
            json!({"table": "t", "where": "n > 1; DROP TABLE t"}),
            "invalid_condition",
        ),
        (
            json!({"table": "t", "where": "n IN (SELECT n FROM t)"}),
            "invalid_condition",
        ),
        (json!({"table": "t", "from": "garbage"}), "invalid_token"),
        (json!({"table": "t", "from": "s999:1"}), "invalid_token"),
        (json!({"files": "media/../x"}), "bad_request"),
        (json!({"table": "t", "bogus": 1}), "bad_request"),
    ] {
        ws.send(json!({"id": "x", "subscribe": request})).await;
        let m = until(&mut ws, "an answer", |m| m["id"] == "x").await;
        assert_eq!(m["error"]["code"], code, "{request}: {m}");
    }
    ws.send(json!("not an object")).await;
    let m = until(&mut ws, "an error", |m| !m["error"].is_null()).await;
    assert_eq!(m["error"]["code"], "bad_request");
    ws.send(json!({"unsubscribe": "big"})).await;
    until(&mut ws, "unsubscribed", |m| m["unsubscribed"] == true).await;
    client
        .execute("INSERT INTO t VALUES (9, 99, 'a')", &[])
        .await
        .unwrap();
    ws.subscribe("after", json!({"table": "t"})).await;
    quiet_until_progress(&mut ws, "after").await;

    // An id in use is refused; so is a subscription past the per-connection limit.
    ws.send(json!({"id": "after", "subscribe": {"table": "t"}}))
        .await;
    let m = until(&mut ws, "duplicate", |m| !m["error"].is_null()).await;
    assert_eq!(m["error"]["code"], "duplicate_id", "{m}");
    for i in 1..cairn::limits::SUBSCRIPTIONS_PER_CONNECTION_MAX {
        ws.subscribe(&format!("n{i}"), json!({"table": "t"})).await;
    }
    ws.send(json!({"id": "one-too-many", "subscribe": {"table": "t"}}))
        .await;
    let m = until(&mut ws, "the limit", |m| m["id"] == "one-too-many").await;
    assert_eq!(m["error"]["code"], "too_many_subscriptions", "{m}");
    // Binary frames and garbage are answered, and the node keeps serving.
    {
        use futures::SinkExt;
        let mut raw = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", node.http))
            .await
            .unwrap()
            .0;
        raw.send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![0xff, 0x00, 0x13].into(),
        ))
        .await
        .unwrap();
        raw.send(tokio_tungstenite::tungstenite::Message::Text("{{{".into()))
            .await
            .unwrap();
    }
    let mut fresh = Ws::connect(node.http).await;
    fresh.subscribe("ok", json!({"table": "t"})).await;
}

/// Rows keyed by id, as a subscriber rebuilds them from a snapshot and events.
fn apply(rows: &mut BTreeMap<i64, i64>, event: &Value) {
    let id = event["key"]["id"].as_i64().unwrap();
    match event["op"].as_str().unwrap() {
        "insert" => {
            let old = rows.insert(id, event["new"]["n"].as_i64().unwrap());
            assert!(
                old.is_none(),
                "insert of {id} delivered twice or after the snapshot"
            );
        }
        "update" => {
            let old = rows.insert(id, event["new"]["n"].as_i64().unwrap());
            assert_eq!(
                old,
                event["old"]["n"].as_i64(),
                "update of {id} does not follow what came before"
            );
        }
        "delete" => {
            assert!(
                rows.remove(&id).is_some(),
                "delete of {id} of a row never seen"
            );
        }
        other => panic!("op {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_then_changes_has_no_gap_and_no_duplicate_under_concurrent_writes() {
    let node = TestNode::start().await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE counts (id int PRIMARY KEY, n int NOT NULL)")
        .await
        .unwrap();
    let writer = {
        let client = node.client().await;
        tokio::spawn(async move {
            for i in 0..300i64 {
                client
                    .execute("INSERT INTO counts VALUES ($1, 0)", &[&(i as i32)])
                    .await
                    .unwrap();
                client
                    .execute(
                        "UPDATE counts SET n = n + 1 WHERE id = $1",
                        &[&((i / 2) as i32)],
                    )
                    .await
                    .unwrap();
                if i % 7 == 0 {
                    client
                        .execute("DELETE FROM counts WHERE id = $1", &[&((i / 3) as i32)])
                        .await
                        .unwrap();
                }
            }
        })
    };
    // Subscribe while the writer runs.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer made no progress"
        );
        let n: i64 = client
            .query_one("SELECT count(*) FROM counts", &[])
            .await
            .unwrap()
            .get(0);
        if n > 50 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut ws = Ws::connect(node.http).await;
    ws.subscribe("snap", json!({"table": "counts", "snapshot": true}))
        .await;
    let mut rows = BTreeMap::new();
    let done = until(&mut ws, "the snapshot", |m| {
        assert!(
            m["event"].is_null(),
            "an event before the snapshot ended: {m}"
        );
        for r in m["snapshot"].as_array().into_iter().flatten() {
            rows.insert(r["id"].as_i64().unwrap(), r["n"].as_i64().unwrap());
        }
        !m["snapshot_done"].is_null()
    })
    .await;
    assert_eq!(
        done["snapshot_done"]["rows"].as_u64().unwrap() as usize,
        rows.len()
    );
    assert!(!rows.is_empty());
    writer.await.unwrap();
    // Everything the writer committed is now either in the snapshot or coming as events;
    // read until the subscription's progress covers the last write.
    let expected: BTreeMap<i64, i64> = client
        .query("SELECT id, n FROM counts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i32>(0) as i64, r.get::<_, i32>(1) as i64))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while rows != expected {
        assert!(std::time::Instant::now() < deadline, "never converged");
        let m = ws.expect().await;
        assert!(m["error"].is_null(), "{m}");
        if !m["event"].is_null() {
            apply(&mut rows, &m["event"]);
        }
    }
    // And nothing more comes.
    quiet_until_progress(&mut ws, "snap").await;
    quiet_until_progress(&mut ws, "snap").await;
}

/// Insert ids `0..n` into `t` through any live node, each until it is known committed
/// (acknowledged, or a retry finds it there: 23505), so all of them end up committed once.
async fn write_all(
    nodes: Vec<std::net::SocketAddr>,
    n: i32,
    acked: std::sync::Arc<std::sync::atomic::AtomicI32>,
) {
    let mut target = 0usize;
    let mut client: Option<tokio_postgres::Client> = None;
    for id in 0..n {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "insert {id} never committed"
            );
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                let addr = nodes[target % nodes.len()];
                let url = format!(
                    "host={} port={} user=w dbname=cairn connect_timeout=2",
                    addr.ip(),
                    addr.port()
                );
                client = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        Some(c)
                    }
                    Err(_) => {
                        target += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
            }
            let c = client.as_ref().unwrap();
            let v = format!("row {id}");
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &v];
            let insert = c.execute("INSERT INTO t VALUES ($1, $2)", &params);
            match tokio::time::timeout(std::time::Duration::from_secs(20), insert).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) if e.code().map(|c| c.code()) == Some("23505") => break,
                _ => {
                    // Unknown outcome or unavailable: ask again elsewhere; the retry tells.
                    client = None;
                    target += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        acked.store(id + 1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_resumes_elsewhere_after_its_node_and_shard_leaders_die_and_gets_each_change_once(
) {
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Arc;
    let mut cluster = common::Cluster::start(3, &[]);
    let pg: Vec<_> = cluster.nodes.iter().map(|n| n.pg).collect();
    let http: Vec<_> = cluster.nodes.iter().map(|n| n.http).collect();
    common::connect(pg[0])
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();

    // The subscriber starts on node 3 and, whenever its connection ends, resumes from the
    // last token it got on whichever node answers.
    let received: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let resumed = Arc::new(AtomicI32::new(0));
    let reader = {
        let (received, resumed, http) = (received.clone(), resumed.clone(), http.clone());
        let mut ws = Ws::connect(http[2]).await;
        let mut token = ws.subscribe("t", json!({"table": "t"})).await;
        tokio::spawn(async move {
            loop {
                match ws.next().await {
                    Some(m) if !m["event"].is_null() => {
                        token = m["event"]["token"].as_str().unwrap().to_string();
                        received.lock().unwrap().push(m["event"].clone());
                    }
                    Some(m) if m["progress"].is_string() => {
                        token = m["progress"].as_str().unwrap().to_string();
                    }
                    Some(m) if m["error"]["code"] == "unavailable" => {
                        token = m["error"]["token"].as_str().unwrap().to_string();
                        ws = Ws::connect_any(&http).await;
                        ws.subscribe("t", json!({"table": "t", "from": token}))
                            .await;
                        resumed.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(m) => assert!(m["error"].is_null(), "{m}"),
                    None => {
                        ws = Ws::connect_any(&http).await;
                        ws.subscribe("t", json!({"table": "t", "from": token}))
                            .await;
                        resumed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };

    const N: i32 = 400;
    let acked = Arc::new(AtomicI32::new(0));
    let writer = tokio::spawn(write_all(pg.clone(), N, acked.clone()));
    let reach = |n: i32| {
        let acked = acked.clone();
        async move {
            while acked.load(Ordering::SeqCst) < n {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    reach(100).await;
    cluster.nodes[2].kill9(); // the node serving the subscription
    reach(200).await;
    // Back to three (two of three down would stop every shard), then a shard leader dies.
    let leader = tokio::task::block_in_place(|| {
        cluster.nodes[2].restart();
        cluster.leader_of("s1")
    });
    cluster.nodes[leader].kill9();
    reach(300).await;
    tokio::task::block_in_place(|| {
        for node in cluster.nodes.iter_mut() {
            if node.child.try_wait().map(|s| s.is_some()).unwrap_or(true) {
                node.restart();
            }
        }
    });
    writer.await.unwrap();

    // Every committed insert arrives once: the table holds exactly 0..N.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let n = received.lock().unwrap().len();
        if n >= N as usize {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {n} of {N} changes arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Anything extra would be a duplicate: give it time to show up.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    reader.abort();
    let received = received.lock().unwrap().clone();
    let mut ids: Vec<i64> = received
        .iter()
        .map(|e| {
            assert_eq!(e["op"], "insert");
            e["key"]["id"].as_i64().unwrap()
        })
        .collect();
    // One writer inserts in id order, so each shard's changes come in id order.
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for e in &received {
        let (shard, id) = (
            e["shard"].as_str().unwrap().to_string(),
            e["key"]["id"].as_i64().unwrap(),
        );
        if let Some(prev) = last.insert(shard.clone(), id) {
            assert!(prev < id, "{shard}: {id} after {prev}");
        }
    }
    ids.sort();
    assert_eq!(
        ids,
        (0..N as i64).collect::<Vec<_>>(),
        "each committed change exactly once"
    );
    assert!(
        resumed.load(Ordering::SeqCst) >= 1,
        "the subscriber had to resume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_watch_prints_each_change_once_and_resumes_on_another_node() {
    use std::io::BufRead;
    let mut cluster = common::Cluster::start(3, &[]);
    let pg: Vec<_> = cluster.nodes.iter().map(|n| n.pg).collect();
    let client = common::connect(pg[0]).await;
    client
        .batch_execute("CREATE TABLE w (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let urls = format!(
        "http://{},http://{}",
        cluster.nodes[2].http, cluster.nodes[1].http
    );
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "watch", "--url", &urls, "--table", "w", "--json", "--count", "6",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cairn watch starts");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut printed: Vec<Value> = Vec::new();
    let next_line = |what: &str| -> Value {
        let line = lines.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("cairn watch printed nothing for {WAIT:?} waiting for {what}")
        });
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    // Subscribed (on node 3) before the first write.
    loop {
        let m = next_line("the subscription");
        if !m["subscribed"].is_null() {
            break;
        }
    }
    for id in 1..=3 {
        client
            .execute("INSERT INTO w VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
    }
    while printed.len() < 3 {
        let m = next_line("the first three events");
        if !m["event"].is_null() {
            printed.push(m["event"].clone());
        }
    }
    cluster.nodes[2].kill9();
    let client = common::connect(pg[1]).await;
    for id in 4..=6 {
        client
            .execute("INSERT INTO w VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
    }
    while printed.len() < 6 {
        let m = next_line("the last three events, from node 2");
        if !m["event"].is_null() {
            printed.push(m["event"].clone());
        }
    }
    let status = tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(s) = watch.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cairn watch did not stop after 6 events"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    assert!(status.success(), "{status}");
    let mut ids: Vec<i64> = printed
        .iter()
        .map(|e| e["key"]["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6], "each change printed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_older_than_the_kept_window_gets_token_expired() {
    // A node keeping only ~16 KiB of events per replica.
    let dir = tempfile::tempdir().unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = common::config(dir.path(), any, any);
    config.events = cairn::storage::events::Window {
        max_age: std::time::Duration::from_secs(3600),
        max_bytes: 16 * 1024,
    };
    let node = cairn::node::Node::start(config).await.unwrap();
    let client = common::connect(node.pg_addr).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    client
        .execute("INSERT INTO t VALUES (0, 'first')", &[])
        .await
        .unwrap();
    let mut ws = Ws::connect(node.http_addr).await;
    let old = ws.subscribe("a", json!({"table": "t"})).await;
    drop(ws);
    // ~400 KiB of changes in 200 commits: far more than the window on every shard.
    let pad = "x".repeat(2000);
    for id in 1..=200 {
        client
            .execute("INSERT INTO t VALUES ($1, $2)", &[&id, &pad])
            .await
            .unwrap();
    }
    let mut ws = Ws::connect(node.http_addr).await;
    ws.send(json!({"id": "b", "subscribe": {"table": "t", "from": old}}))
        .await;
    let m = until(&mut ws, "an answer to the old token", |m| {
        m["id"] == "b" && (!m["error"].is_null() || !m["event"].is_null())
    })
    .await;
    assert_eq!(m["error"]["code"], "token_expired", "{m}");
    assert!(
        m["error"]["message"].as_str().unwrap().contains("snapshot"),
        "the message says what to do: {m}"
    );
    // A recent token still resumes.
    let now = ws.subscribe("c", json!({"table": "t"})).await;
    client
        .execute("INSERT INTO t VALUES (1000, 'new')", &[])
        .await
        .unwrap();
    let got = events(&mut ws, "c", 1).await;
    assert_eq!(got[0]["key"]["id"], 1000);
    let mut ws2 = Ws::connect(node.http_addr).await;
    ws2.subscribe("d", json!({"table": "t", "from": now})).await;
    let again = events(&mut ws2, "d", 1).await;
    assert_eq!(again[0]["key"]["id"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_to_keep_up_is_cut_with_its_last_token_and_resumes_from_it() {
    let node = TestNode::start().await;
    let client = node.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    // A client with a small receive buffer that stops reading after subscribing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.http).await.unwrap();
    let (mut slow, _) =
        tokio_tungstenite::client_async(format!("ws://{}/v1/ws", node.http), stream)
            .await
            .unwrap();
    {
        use futures::SinkExt;
        let request = json!({"id": "s", "subscribe": {"table": "t", "progress_ms": 100000}});
        slow.send(tokio_tungstenite::tungstenite::Message::Text(
            request.to_string().into(),
        ))
        .await
        .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    const N: i64 = 30_000;
    client
        .batch_execute(&format!(
            "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, {N}) g"
        ))
        .await
        .unwrap();
    // Not reading for longer than the server waits on a full outbox: it cuts the client.
    tokio::time::sleep(cairn::limits::WS_SLOW_CLIENT_WAIT + std::time::Duration::from_secs(2))
        .await;
    // Now read: events, then the cut with the token of the last event delivered.
    let mut ids = Vec::new();
    let mut last_token = None;
    let cut_token = loop {
        use futures::StreamExt;
        let message = tokio::time::timeout(WAIT, slow.next())
            .await
            .unwrap_or_else(|_| panic!("silence after {} events", ids.len()))
            .unwrap_or_else(|| panic!("the end after {} events, before an error", ids.len()))
            .unwrap();
        let tokio_tungstenite::tungstenite::Message::Text(text) = message else {
            continue;
        };
        let m: Value = serde_json::from_str(&text).unwrap();
        if let Some(e) = m.get("event") {
            ids.push(e["key"]["id"].as_i64().unwrap());
            last_token = Some(e["token"].as_str().unwrap().to_string());
        } else if !m["error"].is_null() {
            assert_eq!(m["error"]["code"], "slow_consumer", "{m}");
            break m["error"]["token"].as_str().unwrap().to_string();
        }
    };
    assert!(
        (ids.len() as i64) < N,
        "cut before everything was delivered"
    );
    if let Some(last) = &last_token {
        assert_eq!(
            &cut_token, last,
            "the cut names the last event the client got"
        );
    }
    // Resuming from the token gives the rest, each once.
    let mut ws = Ws::connect(node.http).await;
    ws.subscribe("r", json!({"table": "t", "from": cut_token}))
        .await;
    let rest = events(&mut ws, "r", N as usize - ids.len()).await;
    ids.extend(rest.iter().map(|e| e["key"]["id"].as_i64().unwrap()));
    ids.sort();
    assert_eq!(ids, (1..=N).collect::<Vec<_>>());
    quiet_until_progress(&mut ws, "r").await;
}
