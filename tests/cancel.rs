//! Cancels and disconnects: whatever moment a client cancels a statement (psql's Ctrl-C, a
//! driver's query timeout) or goes away, the statement ends applied in full and answered so,
//! or not applied at all and answered 57014 — never half, never applied behind a "cancelled",
//! and the session is never left inside a transaction the client does not know about.

mod common;

use common::TestNode;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const ENDLESS: &str = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n)";

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a db error: {e}"))
}

/// Every test is bounded: a hang fails it instead of holding CI.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no end within 120 s"))
}

/// `rows` rows (id, n = 0) in table `t`, spread over the node's 4 shards.
async fn table(c: &Client, rows: i64) {
    c.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, n bigint NOT NULL)")
        .await
        .unwrap();
    c.batch_execute("CREATE TABLE marks (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    for start in (0..rows).step_by(1000) {
        let values: Vec<String> = (start..(start + 1000).min(rows))
            .map(|i| format!("({i}, 0)"))
            .collect();
        c.batch_execute(&format!("INSERT INTO t VALUES {}", values.join(", ")))
            .await
            .unwrap();
    }
}

/// How many rows of `t` have each counter value: one group if every UPDATE applied to
/// every row or to none.
async fn counters(c: &Client) -> Vec<(i64, i64)> {
    c.query("SELECT n, count(*) FROM t GROUP BY n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Run `sql` on `c`, sending CancelRequests from `delay` on until it ends; its result.
async fn cancelled_after(
    c: &Client,
    sql: &str,
    delay: Duration,
) -> Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error> {
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        loop {
            let _ = token.cancel_query(tokio_postgres::NoTls).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let result = c.simple_query(sql).await;
    canceller.abort();
    result
}

/// The probe that found the bug: cancelled multi-shard UPDATEs, then autocommit writes on
/// the same connection. Each UPDATE is all or nothing and counts exactly when it said OK;
/// every later write is visible at once to another connection and survives the first
/// connection closing (a cancelled statement used to leave a hidden transaction that took
/// them and rolled them back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_statements_apply_wholly_or_not_at_all_and_leave_no_hidden_transaction() {
    bounded("cancel probe", async {
        let node = TestNode::start().await;
        let a = node.client().await;
        let b = node.client().await;
        table(&a, 6000).await;
        let mut applied = 0i64;
        let mut cancelled = 0;
        for i in 0..12i64 {
            let delay = Duration::from_millis((i * 13 % 70) as u64);
            match cancelled_after(&a, "UPDATE t SET n = n + 1", delay).await {
                Ok(_) => applied += 1,
                Err(e) => {
                    assert_eq!(code(&e), "57014", "UPDATE {i}: {e}");
                    cancelled += 1;
                }
            }
            a.execute("INSERT INTO marks VALUES ($1)", &[&i])
                .await
                .unwrap_or_else(|e| panic!("INSERT after UPDATE {i}: {e}"));
            let seen: i64 = b
                .query_one("SELECT count(*) FROM marks WHERE id = $1", &[&i])
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                seen, 1,
                "an acknowledged INSERT after cancel {i} is not visible"
            );
        }
        println!("{applied} UPDATEs applied, {cancelled} cancelled");
        assert_eq!(
            counters(&b).await,
            vec![(applied, 6000)],
            "UPDATEs applied in part or miscounted"
        );
        drop(a);
        let marks: i64 = bounded("marks after close", async {
            loop {
                // Closing the connection must roll back nothing acknowledged.
                let n: i64 = b
                    .query_one("SELECT count(*) FROM marks", &[])
                    .await
                    .unwrap()
                    .get(0);
                tokio::time::sleep(Duration::from_millis(200)).await;
                let again: i64 = b
                    .query_one("SELECT count(*) FROM marks", &[])
                    .await
                    .unwrap()
                    .get(0);
                if n == again {
                    return n;
                }
            }
        })
        .await;
        assert_eq!(marks, 12);
    })
    .await;
}

/// Inside a transaction a cancelled statement fails the transaction: later statements get
/// 25P02, and COMMIT rolls back what the transaction did before the cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_inside_a_transaction_fails_it_and_commit_rolls_back() {
    bounded("cancel in a transaction", async {
        let node = TestNode::start().await;
        let c = node.client().await;
        table(&c, 2000).await;
        c.batch_execute("BEGIN").await.unwrap();
        c.batch_execute("UPDATE t SET n = 100").await.unwrap();
        let endless = format!("{ENDLESS} SELECT count(*) FROM n, t WHERE t.id = 1");
        let e = cancelled_after(&c, &endless, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(code(&e), "57014", "{e}");
        let e = c.simple_query("SELECT 1").await.unwrap_err();
        assert_eq!(code(&e), "25P02", "{e}");
        let done = c.simple_query("COMMIT").await.unwrap();
        let tag = done.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        });
        assert!(tag.is_some(), "COMMIT answers");
        let n: i64 = c
            .query_one("SELECT count(*) FROM t WHERE n <> 0", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "a transaction that failed by a cancel committed");
        // Multi-shard UPDATEs in transactions cancelled at many moments: all or nothing.
        let mut applied = 0i64;
        for i in 0..8u64 {
            c.batch_execute("BEGIN").await.unwrap();
            let r =
                cancelled_after(&c, "UPDATE t SET n = n + 1", Duration::from_millis(i * 9)).await;
            let committed = match r {
                Ok(_) => c.batch_execute("COMMIT").await.is_ok(),
                Err(e) => {
                    assert_eq!(code(&e), "57014", "{e}");
                    c.batch_execute("COMMIT").await.unwrap(); // rolls back
                    false
                }
            };
            applied += committed as i64;
        }
        assert_eq!(counters(&c).await, vec![(applied, 2000)]);
    })
    .await;
}

/// A cancel stops the work wherever it runs: a query merged on the coordinator's scratch
/// SQLite, a query on a shard's replica, and a query inside a transaction on the writer's
/// connection. The node then serves the next queries (nothing keeps running, no pooled
/// connection is left attached or busy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_query_wherever_it_runs() {
    bounded("cancel stops work", async {
        let node = TestNode::start().await;
        let c = node.client().await;
        table(&c, 100).await;
        let queries = [
            format!("{ENDLESS} SELECT count(*) FROM n"),
            format!("{ENDLESS} SELECT count(*) FROM n, t WHERE t.id = 7"),
        ];
        for q in &queries {
            for _ in 0..3 {
                let e = cancelled_after(&c, q, Duration::from_millis(30))
                    .await
                    .unwrap_err();
                assert_eq!(code(&e), "57014", "{q}: {e}");
            }
        }
        c.batch_execute("BEGIN").await.unwrap();
        let e = cancelled_after(&c, &queries[1], Duration::from_millis(30))
            .await
            .unwrap_err();
        assert_eq!(code(&e), "57014", "{e}");
        c.batch_execute("ROLLBACK").await.unwrap();
        for _ in 0..20 {
            let n: i64 = c
                .query_one("SELECT count(*) FROM t", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 100);
        }
    })
    .await;
}

/// An HTTP client that goes away in the middle of a statement of its transaction: the
/// statement is cancelled and the transaction fails, so its COMMIT applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_client_leaving_mid_statement_fails_its_transaction() {
    bounded("http disconnect", async {
        let node = TestNode::start().await;
        let c = node.client().await;
        table(&c, 100).await;
        let http = node.http;
        let status = tokio::task::spawn_blocking(move || {
            let post = |path: &str, body: &str| {
                common::http_post(http, path, body, Duration::from_secs(60))
            };
            let (s, body) = post("/v1/txn", "");
            assert_eq!(s, 200, "{body}");
            let txn = body.split("\"txn\":\"").nth(1).unwrap().split('"').next().unwrap().to_string();
            let (s, body) = post(&format!("/v1/txn/{txn}/sql"), r#"{"sql": "UPDATE t SET n = 5"}"#);
            assert_eq!(s, 200, "{body}");
            // The endless statement, and the client hangs up on it.
            let endless = format!(
                r#"{{"sql": "{ENDLESS} SELECT count(*) FROM n, t WHERE t.id = 1"}}"#
            );
            let mut s = std::net::TcpStream::connect(http).unwrap();
            write!(
                s,
                "POST /v1/txn/{txn}/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{endless}",
                endless.len()
            )
            .unwrap();
            // Hang up only once the statement runs: it holds the transaction's session, so
            // a probe statement in the same transaction gets no answer while it does.
            let probe = r#"{"sql": "SELECT 1"}"#;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut p = std::net::TcpStream::connect(http).unwrap();
                p.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                write!(
                    p,
                    "POST /v1/txn/{txn}/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{probe}",
                    probe.len()
                )
                .unwrap();
                let mut answer = [0u8; 1];
                if p.read(&mut answer).is_err() {
                    break; // no answer: the endless statement has the session
                }
                assert!(Instant::now() < deadline, "the endless statement never started");
            }
            drop(s);
            // The commit waits for the abandoned statement to stop, then refuses.
            let started = Instant::now();
            let (status, body) = post(&format!("/v1/txn/{txn}/commit"), "");
            println!("commit after the disconnect: {status} in {:?}: {body}", started.elapsed());
            status
        })
        .await
        .unwrap();
        assert_eq!(status, 409, "the transaction's COMMIT after its client left mid-statement");
        let n: i64 = c
            .query_one("SELECT count(*) FROM t WHERE n <> 0", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "a transaction whose statement was abandoned committed");
    })
    .await;
}

/// Statements forwarded to another node's leader stop too: the cancel follows them as a
/// `Cancel` call. A read on every node of a 3-process cluster (two of them forward it) is
/// stopped, and cancelled forwarded UPDATEs are all or nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_statements_forwarded_to_the_leader() {
    let cluster = tokio::task::block_in_place(|| common::Cluster::start(3, &[]));
    bounded("forwarded cancel", async {
        let first = common::connect(cluster.nodes[0].pg).await;
        table(&first, 2000).await;
        let endless = format!("{ENDLESS} SELECT count(*) FROM n, t WHERE t.id = 1");
        let mut applied = 0i64;
        for (i, node) in cluster.nodes.iter().enumerate() {
            let c = common::connect(node.pg).await;
            let e = cancelled_after(&c, &endless, Duration::from_millis(100))
                .await
                .unwrap_err();
            assert_eq!(code(&e), "57014", "n{}: {e}", i + 1);
            for d in [0u64, 15, 40] {
                match cancelled_after(&c, "UPDATE t SET n = n + 1", Duration::from_millis(d)).await
                {
                    Ok(_) => applied += 1,
                    Err(e) => assert_eq!(code(&e), "57014", "n{}: {e}", i + 1),
                }
            }
        }
        assert_eq!(counters(&first).await, vec![(applied, 2000)]);
    })
    .await;
}
