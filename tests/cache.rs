//! The result cache against real nodes: hits after misses, TTLs, per-table and per-session
//! switches, EXPLAIN, metrics — and never a stale result in a linearizable session, with
//! writes through other nodes.

mod common;

use common::{Cluster, TestNode};
use std::net::SocketAddr;
use std::time::Duration;

/// A counter of `/metrics` on the node at `http`.
fn metric(http: SocketAddr, name: &str) -> u64 {
    let text = common::http_get(http, "/metrics").expect("metrics");
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
        .unwrap_or(0.0) as u64
}

fn hits(http: SocketAddr) -> u64 {
    metric(http, "cairn_result_cache_hits_total")
}

fn misses(http: SocketAddr) -> u64 {
    metric(http, "cairn_result_cache_misses_total")
}

async fn explain(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client.query(&format!("EXPLAIN {sql}"), &[]).await.unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_a_cache_ttl_answers_a_repeated_query_from_the_cache() {
    let node = TestNode::start().await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE articles (id int PRIMARY KEY, section text, views int) WITH (cache_ttl = '60s');
             INSERT INTO articles SELECT g, 'sec' || (g % 3), g FROM generate_series(1, 300) g;
             CREATE TABLE plain (id int PRIMARY KEY)",
        )
        .await
        .unwrap();
    let query = "SELECT section, sum(views) FROM articles GROUP BY section ORDER BY section";
    assert!(
        explain(&client, query).await.contains("no cached result"),
        "{}",
        explain(&client, query).await
    );
    let (h0, m0) = (hits(node.http), misses(node.http));
    let first = client.query(query, &[]).await.unwrap();
    assert_eq!(
        (hits(node.http), misses(node.http)),
        (h0, m0 + 1),
        "a miss first"
    );
    assert!(explain(&client, query)
        .await
        .contains("a cached result is held"));
    let second = client.query(query, &[]).await.unwrap();
    assert_eq!(
        (hits(node.http), misses(node.http)),
        (h0 + 1, m0 + 1),
        "then a hit"
    );
    let sums = |rows: &[tokio_postgres::Row]| -> Vec<(String, i64)> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    assert_eq!(sums(&first), sums(&second));
    // Parameters are part of the key.
    let by_id = "SELECT views FROM articles WHERE id = $1";
    let a: i32 = client.query_one(by_id, &[&7]).await.unwrap().get(0);
    let b: i32 = client.query_one(by_id, &[&8]).await.unwrap().get(0);
    assert_eq!((a, b), (7, 8));
    // A write invalidates: the next read sees it.
    client
        .execute("UPDATE articles SET views = views + 1000 WHERE id = 1", &[])
        .await
        .unwrap();
    let after = client.query(query, &[]).await.unwrap();
    assert_eq!(
        sums(&after)[1].1,
        sums(&first)[1].1 + 1000,
        "{:?}",
        sums(&after)
    );
    // Tables without a TTL, volatile functions and transaction blocks are not cached.
    assert!(!explain(&client, "SELECT * FROM plain")
        .await
        .contains("Result cache"));
    assert!(!explain(&client, "SELECT now(), count(*) FROM articles")
        .await
        .contains("Result cache"));
    let before = misses(node.http) + hits(node.http);
    client
        .batch_execute("BEGIN; SELECT count(*) FROM articles; COMMIT")
        .await
        .unwrap();
    assert_eq!(misses(node.http) + hits(node.http), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_come_from_the_table_or_the_session_and_expire() {
    let node = TestNode::start().await;
    let client = node.client().await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t VALUES (1, 'a'), (2, 'b')",
        )
        .await
        .unwrap();
    let q = "SELECT count(*) FROM t";
    assert!(!explain(&client, q).await.contains("Result cache"));
    // Per session.
    client
        .batch_execute("SET cairn.cache_ttl = '1s'")
        .await
        .unwrap();
    assert!(explain(&client, q).await.contains("ttl 1s"));
    let m0 = misses(node.http);
    client.query(q, &[]).await.unwrap();
    client.query(q, &[]).await.unwrap();
    assert_eq!(misses(node.http), m0 + 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.query(q, &[]).await.unwrap();
    assert_eq!(misses(node.http), m0 + 2, "expired after its TTL");
    client
        .batch_execute("SET cairn.cache_ttl = off")
        .await
        .unwrap();
    assert!(!explain(&client, q).await.contains("Result cache"));
    let e = client
        .batch_execute("SET cairn.cache_ttl = 'soon'")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "22023");

    // Per table, switched on and off with ALTER TABLE.
    client
        .batch_execute("ALTER TABLE t SET (cache_ttl = '5m')")
        .await
        .unwrap();
    assert!(explain(&client, q).await.contains("ttl 300s"));
    let other = common::connect(node.pg).await;
    assert!(
        explain(&other, q).await.contains("ttl 300s"),
        "every session"
    );
    client
        .batch_execute("ALTER TABLE t SET (cache_ttl = 0)")
        .await
        .unwrap();
    assert!(!explain(&client, q).await.contains("Result cache"));
    let e = client
        .batch_execute("ALTER TABLE t SET (cache_ttl = 'forever')")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "22023");
    let e = client
        .batch_execute("ALTER TABLE nowhere SET (cache_ttl = '1s')")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42P01");
    // Dropped with its table: a new table of the same name does not inherit it.
    client
        .batch_execute(
            "ALTER TABLE t SET (cache_ttl = '1m'); DROP TABLE t; CREATE TABLE t (id int PRIMARY KEY)",
        )
        .await
        .unwrap();
    assert!(!explain(&client, q).await.contains("Result cache"));
}

async fn read(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_session_never_gets_a_result_older_than_a_committed_write() {
    let cluster = Cluster::start(3, &[]);
    let writer = common::connect(cluster.nodes[1].pg).await;
    writer
        .batch_execute(
            "CREATE TABLE counters (id int PRIMARY KEY, n int) WITH (cache_ttl = '10m');
             INSERT INTO counters VALUES (1, 0), (2, 0), (3, 0), (4, 0)",
        )
        .await
        .unwrap();
    let reader = common::connect(cluster.nodes[0].pg).await;
    let total = "SELECT sum(n) FROM counters";
    let http = cluster.nodes[0].http;
    let hits_before = hits(http);
    for i in 1..=40i64 {
        // Acknowledged through another node: every later read on node 1 must see it,
        // cached or not.
        writer
            .execute(
                "UPDATE counters SET n = n + 1 WHERE id = $1",
                &[&((i % 4 + 1) as i32)],
            )
            .await
            .unwrap();
        assert_eq!(read(&reader, total).await, i, "read {i} after the write");
        assert_eq!(
            read(&reader, total).await,
            i,
            "the repeat (a cache hit) at {i}"
        );
    }
    assert!(
        hits(http) >= hits_before + 30,
        "repeats were served from the cache: {} hits",
        hits(http) - hits_before
    );
    // Other consistencies share the entries; a bounded read is never older than its bound
    // allows, and all of them agree once nothing changes.
    reader
        .batch_execute("SET cairn.read_consistency = 'bounded'; SET cairn.max_staleness = '2s'")
        .await
        .unwrap();
    assert_eq!(read(&reader, total).await, 40);
}
