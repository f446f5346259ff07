//! Ambiguous outcomes: a write whose proposal went out and got no answer is reported as
//! "outcome unknown" (SQLSTATE 08007 on pgwire, the same code with `"outcome": "unknown"` on
//! HTTP) — never as "retry" (40001) or "unavailable" (57P03), which tell a client that
//! retrying is safe. Real processes; the shard's followers are paused so the leader's
//! proposal can neither commit nor fail, then resumed: the write may then commit, which a
//! client told "retry" would have applied twice.

mod common;

use common::Cluster;
use std::time::{Duration, Instant};

/// The shard `EXPLAIN` names for a statement (`Shards s3 ...` → "s3").
async fn shard_of(c: &tokio_postgres::Client, sql: &str) -> String {
    let plan = c.simple_query(&format!("EXPLAIN {sql}")).await.unwrap();
    let text: Vec<String> = plan
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    let line = text.join(" ");
    line.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| w.len() > 1 && w.starts_with('s') && w[1..].chars().all(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no shard in {line}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_quorum_answers_outcome_unknown_never_retry() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(3, &[]));
    let c = common::connect(cluster.nodes[0].pg).await;
    c.batch_execute("CREATE TABLE amb (id bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
    let insert = "INSERT INTO amb VALUES (1, 'once')";
    let shard = shard_of(&c, insert).await;
    let leader = tokio::task::block_in_place(|| cluster.leader_of(&shard));
    let lc = common::connect(cluster.nodes[leader].pg).await;
    for (i, n) in cluster.nodes.iter().enumerate() {
        if i != leader {
            n.signal("-STOP");
        }
    }
    // Two writes at once, over pgwire and HTTP: the writer takes one (or both, in one batch)
    // and proposes; a write still queued behind that proposal is withdrawn, for certain.
    let started = Instant::now();
    let http = cluster.nodes[leader].http;
    let over_http = tokio::task::spawn_blocking(move || {
        let body = r#"{"sql": "INSERT INTO amb VALUES (2, 'http')"}"#;
        common::http_post(http, "/v1/sql", body, Duration::from_secs(120)).1
    });
    let e = lc.simple_query(insert).await.unwrap_err();
    let code = e.as_db_error().map(|d| d.code().code().to_string());
    println!(
        "pgwire answered {code:?} after {:?}: {e}",
        started.elapsed()
    );
    let body = over_http.await.unwrap();
    println!("HTTP answered after {:?}: {body}", started.elapsed());
    for (i, n) in cluster.nodes.iter().enumerate() {
        if i != leader {
            n.signal("-CONT");
        }
    }
    let http_unknown = body.contains("\"08007\"") && body.contains("\"outcome\":\"unknown\"");
    let http_withdrawn = body.contains("\"40001\"");
    assert!(http_unknown || http_withdrawn, "HTTP answer: {body}");
    let pg_unknown = code.as_deref() == Some("08007");
    assert!(
        pg_unknown || code.as_deref() == Some("40001"),
        "pgwire answer: {e}"
    );
    assert!(
        pg_unknown || http_unknown,
        "the write the writer took must answer 08007"
    );
    tokio::task::block_in_place(|| cluster.wait_all_serving());
    let want: Vec<i64> = [(pg_unknown, 1), (http_unknown, 2)]
        .iter()
        .filter(|(taken, _)| *taken)
        .map(|(_, id)| *id)
        .collect();
    tokio::task::block_in_place(|| cluster.assert_converged());
    let present: Vec<i64> = lc
        .query("SELECT id FROM amb ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    println!("rows present once converged: {present:?} (unknown: {want:?})");
    // A write answered "unknown" may have committed or not (here the paused followers may
    // elect a new leader that never saw it); one answered "retry" never ran.
    assert!(
        present.iter().all(|id| want.contains(id)),
        "a write answered 40001 was applied: present {present:?}, unknown {want:?}"
    );
}

/// Replicas refuse an entry whose changes were computed on a state a later write changed
/// (`Op::Base`): with every leader's bases planted one entry stale, a write that follows a
/// write is refused — on every replica alike — and its client gets 40001; nothing of it is
/// anywhere, and every acknowledged write is everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_computed_on_a_changed_state_is_refused_on_every_replica() {
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_each(3, |_| vec!["ENV:CAIRN_PLANTED_BUG=stale-base".into()])
    });
    let c = common::connect(cluster.nodes[0].pg).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = c
        .batch_execute("CREATE TABLE IF NOT EXISTS based (k bigint PRIMARY KEY)")
        .await
    {
        assert!(
            Instant::now() < deadline,
            "CREATE TABLE kept failing: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for k in 0..20i64 {
        match c.execute("INSERT INTO based VALUES ($1)", &[&k]).await {
            Ok(1) => acked.push(k),
            Ok(n) => panic!("INSERT of {k} inserted {n} rows"),
            Err(e) => {
                assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{e:?}");
                refused.push(k);
            }
        }
    }
    assert!(
        !acked.is_empty() && !refused.is_empty(),
        "acknowledged {acked:?}, refused {refused:?}: the planted bases should make every other write stale"
    );
    for node in &cluster.nodes {
        let rows = common::connect(node.pg)
            .await
            .query("SELECT k FROM based ORDER BY k", &[])
            .await
            .unwrap();
        let keys: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(
            keys, acked,
            "refused writes applied somewhere, or acknowledged ones lost"
        );
    }
    tokio::task::block_in_place(|| cluster.assert_converged());
}
