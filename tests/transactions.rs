//! Transactions across shards on real processes: concurrent transfers between accounts on
//! different shards keep the total and no reader in a transaction sees half a transfer;
//! conflicting transactions get a retryable error at once instead of waiting in a cycle;
//! a coordinator killed between PREPARE and the decision, and a participant's leader killed
//! after PREPARE, both end in one consistent outcome that matches what the client was told.

mod common;

use common::Cluster;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACCOUNTS: i64 = 20;
const OPENING: i64 = 1000;

async fn client(pg: SocketAddr) -> tokio_postgres::Client {
    common::connect(pg).await
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

async fn setup(pg: SocketAddr) {
    let c = client(pg).await;
    c.batch_execute(
        "CREATE TABLE acct (id bigint PRIMARY KEY, bal bigint NOT NULL) WITH (shard_count = 4)",
    )
    .await
    .unwrap();
    let values: Vec<String> = (0..ACCOUNTS).map(|i| format!("({i}, {OPENING})")).collect();
    c.batch_execute(&format!("INSERT INTO acct VALUES {}", values.join(", ")))
        .await
        .unwrap();
}

async fn total(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT sum(bal) FROM acct", &[])
        .await
        .unwrap()
        .get(0)
}

/// The shard holding account `id` (from EXPLAIN).
async fn shard_of(c: &tokio_postgres::Client, id: i64) -> String {
    let plan = c
        .simple_query(&format!("EXPLAIN SELECT * FROM acct WHERE id = {id}"))
        .await
        .unwrap();
    let line = plan
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap();
    line.split_whitespace().nth(1).unwrap().to_string()
}

/// Two accounts on different shards.
async fn split_pair(c: &tokio_postgres::Client) -> (i64, i64) {
    let s0 = shard_of(c, 0).await;
    for b in 1..ACCOUNTS {
        if shard_of(c, b).await != s0 {
            return (0, b);
        }
    }
    panic!("all accounts on one shard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_transfers_keep_the_total_and_readers_see_no_half_transfer() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(3, &[]));
    setup(cluster.nodes[0].pg).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (done, retried, reads) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for w in 0..6u64 {
        let pg = cluster.nodes[(w % 3) as usize].pg;
        let (stop, done, retried) = (stop.clone(), done.clone(), retried.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = client(pg).await;
            let mut seed = w * 7919 + 1;
            while !stop.load(Ordering::Relaxed) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let from = (seed >> 33) as i64 % ACCOUNTS;
                let to = (from + 1 + (seed >> 20) as i64 % (ACCOUNTS - 1)) % ACCOUNTS;
                let amount = 1 + (seed >> 40) as i64 % 50;
                let tx = c.transaction().await.unwrap();
                let result = async {
                    tx.execute(
                        "UPDATE acct SET bal = bal - $2 WHERE id = $1",
                        &[&from, &amount],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE acct SET bal = bal + $2 WHERE id = $1",
                        &[&to, &amount],
                    )
                    .await?;
                    tx.commit().await
                }
                .await;
                match result {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let code = code(&e);
                        assert!(
                            ["40001", "40P01", "25P03"].contains(&code.as_str()),
                            "transfer failed with {code}: {e:?}"
                        );
                        retried.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for r in 0..2u64 {
        let pg = cluster.nodes[(r + 1) as usize % 3].pg;
        let (stop, reads) = (stop.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = client(pg).await;
            while !stop.load(Ordering::Relaxed) {
                let tx = c.transaction().await.unwrap();
                let sum = tx
                    .query_one("SELECT sum(bal), count(*) FROM acct", &[])
                    .await;
                match sum {
                    Ok(row) => {
                        let (sum, n): (i64, i64) = (row.get(0), row.get(1));
                        assert_eq!(
                            (sum, n),
                            (ACCOUNTS * OPENING, ACCOUNTS),
                            "a reader saw half a transfer"
                        );
                        reads.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.commit().await;
                    }
                    Err(e) => {
                        let code = code(&e);
                        assert!(
                            ["40001", "40P01", "25P03"].contains(&code.as_str()),
                            "read failed with {code}: {e:?}"
                        );
                        let _ = tx.rollback().await;
                    }
                }
            }
        }));
    }
    // Until enough has happened to mean something (a loaded machine is slower).
    let deadline = Instant::now() + Duration::from_secs(90);
    while (done.load(Ordering::Relaxed) < 30 || reads.load(Ordering::Relaxed) < 5)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (done, retried, reads) = (
        done.load(Ordering::Relaxed),
        retried.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
    );
    println!("{done} transfers committed, {retried} retryable failures, {reads} consistent reads in transactions");
    assert!(done >= 30, "too few transfers: {done}");
    assert!(reads >= 5, "too few reads: {reads}");
    let c = client(cluster.nodes[2].pg).await;
    assert_eq!(total(&c).await, ACCOUNTS * OPENING);
    tokio::task::block_in_place(|| cluster.assert_converged());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_transactions_get_a_retryable_error_not_a_hang() {
    let node = common::TestNode::start().await;
    setup(node.pg).await;
    let mut a = node.client().await;
    let mut b = node.client().await;
    let (x, y) = split_pair(&a).await;
    let ta = a.transaction().await.unwrap();
    ta.execute("UPDATE acct SET bal = bal - 1 WHERE id = $1", &[&x])
        .await
        .unwrap();
    let tb = b.transaction().await.unwrap();
    tb.execute("UPDATE acct SET bal = bal - 1 WHERE id = $1", &[&y])
        .await
        .unwrap();
    // b is younger and holds a shard: asking for a's shard it dies at once.
    let started = Instant::now();
    let e = tb
        .execute("UPDATE acct SET bal = bal + 1 WHERE id = $1", &[&x])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "40001", "{e:?}");
    println!("younger transaction refused after {:?}", started.elapsed());
    tb.rollback().await.unwrap();
    // a (older) gets b's shard once b is gone, and commits across both.
    ta.execute("UPDATE acct SET bal = bal + 1 WHERE id = $1", &[&y])
        .await
        .unwrap();
    ta.commit().await.unwrap();
    assert_eq!(total(&a).await, ACCOUNTS * OPENING);
    // A single statement writing several shards is atomic: a failure on one leaves none.
    let e = a
        .batch_execute(&format!(
            "UPDATE acct SET bal = bal - 10 WHERE id IN ({x}, {y}); INSERT INTO acct VALUES ({x}, 0)"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "23505");
    assert_eq!(total(&a).await, ACCOUNTS * OPENING);
    let e = a
        .execute(
            "INSERT INTO acct VALUES (100, 1), (101, 1), (102, 1), (103, 1), ($1, 5)",
            &[&x],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "23505");
    let n: i64 = a
        .query_one("SELECT count(*) FROM acct WHERE id >= 100", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a multi-shard INSERT that failed left rows behind");
}

/// A waiter queued behind an older transaction must die (wait-die), not wait: the writer's
/// queue is first come, first served, so a transaction that found a younger holder can end
/// up behind an older one that then waits for it — a cycle only the writer-wait timeout
/// broke (30 s), seen as a stalled cluster under partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_ends_up_behind_an_older_transaction_dies_instead_of_deadlocking() {
    let node = common::TestNode::start().await;
    setup(node.pg).await;
    let probe = node.client().await;
    // Three accounts on three different shards.
    let mut picked: Vec<(i64, String)> = Vec::new();
    for id in 0..ACCOUNTS {
        let shard = shard_of(&probe, id).await;
        if picked.iter().all(|(_, s)| *s != shard) {
            picked.push((id, shard));
        }
    }
    assert!(picked.len() >= 3, "accounts cover fewer than 3 shards");
    let (x, y, z) = (picked[0].0, picked[1].0, picked[2].0);
    let update = "UPDATE acct SET bal = bal + $2 WHERE id = $1";

    // Oldest to youngest: old holds y's shard, mid holds z's, young holds x's.
    let old = node.client().await;
    old.batch_execute("BEGIN").await.unwrap();
    old.execute(update, &[&y, &-1i64]).await.unwrap();
    let mid = node.client().await;
    mid.batch_execute("BEGIN").await.unwrap();
    mid.execute(update, &[&z, &-1i64]).await.unwrap();
    let young = node.client().await;
    young.batch_execute("BEGIN").await.unwrap();
    young.execute(update, &[&x, &0i64]).await.unwrap();

    // old, then mid, queue for x's shard (both older than its holder, so both wait).
    let old = Arc::new(old);
    let old_wait = tokio::spawn({
        let old = old.clone();
        async move { old.execute(update, &[&x, &1i64]).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mid_wait = tokio::spawn(async move {
        let r = mid.execute(update, &[&x, &1i64]).await;
        (mid, r)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // young leaves: old takes the writer, and mid — holding z's shard, younger than old —
    // must die now instead of waiting behind old.
    young.batch_execute("COMMIT").await.unwrap();
    old_wait.await.unwrap().unwrap();
    let (mid, r) = mid_wait.await.unwrap();
    let e = r.unwrap_err();
    assert_eq!(code(&e), "40001", "{e:?}");
    let message = e.as_db_error().map(|d| d.message()).unwrap_or_default();
    assert!(
        message.contains("older transaction"),
        "mid should have died when the older transaction took the writer, not timed out: {message}"
    );
    mid.batch_execute("ROLLBACK").await.unwrap();
    // old now gets z's shard too and commits across all three.
    old.execute(update, &[&z, &0i64]).await.unwrap();
    old.batch_execute("COMMIT").await.unwrap();
    assert_eq!(total(&probe).await, ACCOUNTS * OPENING);
}

/// Balances of `x` and `y` read through `pg`, retrying while the cluster recovers.
async fn balances(pg: SocketAddr, x: i64, y: i64) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = client(pg).await;
        let r = c
            .query(
                "SELECT id, bal FROM acct WHERE id = $1 OR id = $2 ORDER BY id",
                &[&x, &y],
            )
            .await;
        if let Ok(rows) = r {
            let get = |id: i64| {
                rows.iter()
                    .find(|r| r.get::<_, i64>(0) == id)
                    .map(|r| r.get::<_, i64>(1))
            };
            if let (Some(a), Some(b)) = (get(x), get(y)) {
                return (a, b);
            }
        }
        assert!(
            Instant::now() < deadline,
            "balances unreadable for a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A transfer on a session node whose commit pauses after PREPARE (planted); `kill` picks
/// the node to kill in that pause. The transfer must end committed or aborted everywhere,
/// as the client was told (if it was told anything), and the accounts must be writable.
async fn kill_during_commit(kill: impl Fn(&Cluster, usize) -> usize) {
    if !cfg!(debug_assertions) {
        println!("skipped: needs the planted pause-after-prepare (debug builds only)");
        return;
    }
    // Node 4 runs the session with the pause; nodes 1-3 hold the data.
    let mut cluster = tokio::task::block_in_place(|| {
        Cluster::start_each(4, |i| {
            if i == 3 {
                vec!["ENV:CAIRN_PLANTED_BUG=pause-after-prepare".into()]
            } else {
                Vec::new()
            }
        })
    });
    setup(cluster.nodes[0].pg).await;
    let c0 = client(cluster.nodes[0].pg).await;
    let (x, y) = split_pair(&c0).await;
    let session = cluster.nodes[3].pg;
    let transfer = tokio::spawn(async move {
        let mut c = client(session).await;
        let tx = c.transaction().await?;
        tx.execute("UPDATE acct SET bal = bal - 100 WHERE id = $1", &[&x])
            .await?;
        tx.execute("UPDATE acct SET bal = bal + 100 WHERE id = $1", &[&y])
            .await?;
        tx.commit().await
    });
    // Inside the pause: every part prepared, nothing decided.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim = kill(&cluster, 3);
    cluster.nodes[victim].kill9();
    let told = tokio::time::timeout(Duration::from_secs(60), transfer)
        .await
        .expect("the client got an answer or lost its connection in time")
        .unwrap();
    let survivor = (0..4).find(|i| *i != victim && *i != 3).unwrap();
    let (bx, by) = balances(cluster.nodes[survivor].pg, x, y).await;
    let committed = match (bx, by) {
        (900, 1100) => true,
        (1000, 1000) => false,
        other => panic!("half a transfer: {other:?}"),
    };
    match &told {
        Ok(()) => assert!(committed, "the client was told commit, but it aborted"),
        Err(e) if e.as_db_error().is_some() => {
            assert!(!committed, "the client was told {e:?}, but it committed")
        }
        Err(_) => {} // the connection died with the session node: either outcome is fine
    }
    println!(
        "victim n{}: committed {committed}, client told {told:?}",
        victim + 1
    );
    // Nothing stays locked: both accounts take a new transaction.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut c = client(cluster.nodes[survivor].pg).await;
        let tx = c.transaction().await.unwrap();
        let r = async {
            tx.execute("UPDATE acct SET bal = bal + 1 WHERE id = $1", &[&x])
                .await?;
            tx.execute("UPDATE acct SET bal = bal - 1 WHERE id = $1", &[&y])
                .await?;
            tx.commit().await
        }
        .await;
        if r.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "accounts still locked: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = client(cluster.nodes[survivor].pg).await;
    assert_eq!(total(&c).await, ACCOUNTS * OPENING);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_between_prepare_and_decision_leaves_nothing_locked() {
    // The session's node dies: the prepared parts resolve from the coordinator shard's
    // record (abort, since nothing was decided).
    kill_during_commit(|_, session| session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_leader_killed_after_prepare_resolves_consistently() {
    // The leader of s2's... whichever data node leads the most shards dies mid-commit.
    kill_during_commit(|cluster, _| {
        let mut counts = [0usize; 4];
        for shard in ["s1", "s2", "s3", "s4"] {
            counts[cluster.leader_of(shard)] += 1;
        }
        (0..3).max_by_key(|i| counts[*i]).unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_undo_part_of_a_transaction_on_every_shard_it_touched() {
    let node = common::TestNode::start().await;
    setup(node.pg).await;
    let mut c = node.client().await;
    let (x, y) = split_pair(&c).await;
    let bal =
        |rows: Vec<tokio_postgres::Row>| -> Vec<i64> { rows.iter().map(|r| r.get(0)).collect() };

    // Outside a transaction block a savepoint is an error.
    let e = c.batch_execute("SAVEPOINT a").await.unwrap_err();
    assert_eq!(code(&e), "25P01", "{e:?}");

    // ROLLBACK TO undoes work on the shard held before the savepoint and on one taken after.
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE acct SET bal = bal - 5 WHERE id = $1", &[&x])
        .await
        .unwrap();
    tx.batch_execute("SAVEPOINT a").await.unwrap();
    tx.execute("UPDATE acct SET bal = bal - 100 WHERE id = $1", &[&x])
        .await
        .unwrap();
    tx.execute("UPDATE acct SET bal = bal + 100 WHERE id = $1", &[&y])
        .await
        .unwrap();
    tx.batch_execute("ROLLBACK TO SAVEPOINT a").await.unwrap();
    tx.execute("UPDATE acct SET bal = bal + 5 WHERE id = $1", &[&y])
        .await
        .unwrap();
    // An error inside a savepoint is recovered by rolling back to it.
    tx.batch_execute("SAVEPOINT b").await.unwrap();
    let e = tx
        .execute("INSERT INTO acct VALUES ($1, 0)", &[&x])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "23505");
    let e = tx.execute("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(code(&e), "25P02", "{e:?}");
    tx.batch_execute("ROLLBACK TO b").await.unwrap();
    tx.batch_execute("RELEASE SAVEPOINT b").await.unwrap();
    let e = tx.batch_execute("ROLLBACK TO b").await.unwrap_err();
    assert_eq!(code(&e), "3B001", "{e:?}");
    tx.batch_execute("ROLLBACK TO a").await.unwrap();
    tx.execute("UPDATE acct SET bal = bal + 5 WHERE id = $1", &[&y])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rows = c
        .query(
            "SELECT bal FROM acct WHERE id IN ($1, $2) ORDER BY id = $2",
            &[&x, &y],
        )
        .await
        .unwrap();
    assert_eq!(bal(rows), vec![OPENING - 5, OPENING + 5]);
    assert_eq!(total(&c).await, ACCOUNTS * OPENING);

    // Nested savepoints: rolling back to the outer one forgets the inner.
    let tx = c.transaction().await.unwrap();
    tx.batch_execute("SAVEPOINT outer_sp").await.unwrap();
    tx.execute("DELETE FROM acct WHERE id = $1", &[&x])
        .await
        .unwrap();
    tx.batch_execute("SAVEPOINT inner_sp").await.unwrap();
    tx.execute("DELETE FROM acct WHERE id = $1", &[&y])
        .await
        .unwrap();
    tx.batch_execute("ROLLBACK TO outer_sp").await.unwrap();
    let e = tx.batch_execute("RELEASE inner_sp").await.unwrap_err();
    assert_eq!(code(&e), "3B001", "{e:?}");
    tx.rollback().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM acct", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, ACCOUNTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_larger_than_a_raft_entry_commit_and_replicate() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(3, &[]));
    let mut c = client(cluster.nodes[0].pg).await;
    c.batch_execute(
        "CREATE TABLE blobs (id integer PRIMARY KEY, body text NOT NULL) WITH (shard_count = 2);
         CREATE TABLE one (id integer PRIMARY KEY, body text NOT NULL) WITH (shard_count = 1)",
    )
    .await
    .unwrap();
    // 12 MiB on one shard (one commit, staged over several entries) and 12 MiB over two
    // (two prepared parts, each staged).
    let body = "x".repeat(1 << 20);
    for table in ["one", "blobs"] {
        let tx = c.transaction().await.unwrap();
        for id in 0..12i32 {
            let value = format!("{id}:{body}");
            tx.execute(
                &format!("INSERT INTO {table} VALUES ($1, $2)"),
                &[&id, &value],
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    // A transaction that rolls back leaves nothing, however large.
    let tx = c.transaction().await.unwrap();
    for id in 100..106i32 {
        tx.execute("INSERT INTO one VALUES ($1, $2)", &[&id, &body])
            .await
            .unwrap();
    }
    tx.rollback().await.unwrap();
    // An autocommit statement with large changes commits the same way.
    c.execute("UPDATE one SET body = body || 'y'", &[])
        .await
        .unwrap();
    for node in &cluster.nodes {
        let c = client(node.pg).await;
        for (table, suffix) in [("one", 1), ("blobs", 0)] {
            let row = c
                .query_one(
                    &format!("SELECT count(*), sum(length(body)) FROM {table}"),
                    &[],
                )
                .await
                .unwrap();
            let expected: i64 = (0..12)
                .map(|id: i64| (id.to_string().len() + 1 + (1 << 20) + suffix) as i64)
                .sum();
            assert_eq!(
                (row.get::<_, i64>(0), row.get::<_, i64>(1)),
                (12, expected),
                "{table}"
            );
        }
    }
    tokio::task::block_in_place(|| cluster.assert_converged());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_session_node_does_not_keep_a_shard_locked() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(3, &[]));
    let c = client(cluster.nodes[0].pg).await;
    c.batch_execute(
        "CREATE TABLE kept (id bigint PRIMARY KEY, v bigint NOT NULL) WITH (shard_count = 1);
         INSERT INTO kept VALUES (1, 0), (2, 0)",
    )
    .await
    .unwrap();
    let plan = c
        .simple_query("EXPLAIN SELECT * FROM kept WHERE id = 1")
        .await
        .unwrap();
    let shard = plan
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let leader = tokio::task::block_in_place(|| cluster.leader_of(&shard));
    // The session runs on a node that does not lead the shard: its lease is forwarded.
    let session_node = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let mut held = client(cluster.nodes[session_node].pg).await;
    let tx = held.transaction().await.unwrap();
    tx.execute("UPDATE kept SET v = v + 1 WHERE id = 1", &[])
        .await
        .unwrap();
    // The session's node falls silent (as if cut off) while holding the shard's writer.
    cluster.nodes[session_node].signal("-STOP");
    // Others get the shard back once the leader stops hearing from it (well before the
    // 60 s idle-in-transaction limit, and before their own write would time out).
    let writer = client(cluster.nodes[other].pg).await;
    let started = Instant::now();
    let n = writer
        .execute("UPDATE kept SET v = 100 WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(n, 1);
    println!("shard free again after {:?}", started.elapsed());
    cluster.nodes[session_node].signal("-CONT");
    // The silent transaction was rolled back: its commit fails and its write is gone.
    let e = tx.commit().await.unwrap_err();
    println!("the silent session's commit: {e:?}");
    let row = writer
        .query_one("SELECT v FROM kept WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
}

/// Decision records (`_cairn_txns`) on every node's replicas of the data shards.
fn decision_records(node: &common::ProcessNode) -> usize {
    let mut n = 0;
    let Ok(dirs) = std::fs::read_dir(node.dir.join("shards")) else {
        return 0;
    };
    for dir in dirs.flatten() {
        let db = dir.path().join("replica.db");
        if !db.exists() {
            continue;
        }
        let c = rusqlite::Connection::open_with_flags(
            &db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        let count: i64 = c
            .query_row("SELECT count(*) FROM _cairn_txns", [], |r| r.get(0))
            .unwrap_or(0);
        n += count as usize;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_records_are_deleted_once_every_part_is_resolved() {
    const TRANSFERS: usize = 150;
    let cluster = tokio::task::block_in_place(|| Cluster::start(3, &[]));
    setup(cluster.nodes[0].pg).await;
    let c = client(cluster.nodes[1].pg).await;
    let (a, b) = split_pair(&c).await;
    let transfer = format!(
        "BEGIN; UPDATE acct SET bal = bal - 1 WHERE id = {a}; \
         UPDATE acct SET bal = bal + 1 WHERE id = {b}; COMMIT"
    );
    for _ in 0..TRANSFERS {
        c.batch_execute(&transfer).await.unwrap();
    }
    // Each transfer recorded its decision on one shard, on every replica of it; the
    // records are deleted in batches (the last batch when a later commit finds it old).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut extra = 0;
    loop {
        let counts: Vec<usize> = cluster.nodes.iter().map(decision_records).collect();
        if counts.iter().all(|&n| n < TRANSFERS / 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "decision records of {TRANSFERS} resolved transactions are still kept: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.batch_execute(&transfer).await.unwrap();
        extra += 1;
    }
    let row = c
        .query_one(
            &format!("SELECT (SELECT bal FROM acct WHERE id = {a}), (SELECT bal FROM acct WHERE id = {b})"),
            &[],
        )
        .await
        .unwrap();
    let moved = (TRANSFERS + extra) as i64;
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (OPENING - moved, OPENING + moved)
    );
    tokio::task::block_in_place(|| cluster.assert_converged());
}

/// The shard holding account `id`, and the node (index) of its only replica.
async fn placed(cluster: &Cluster, c: &tokio_postgres::Client, id: i64) -> (String, usize) {
    let shard = shard_of(c, id).await;
    let node = tokio::task::block_in_place(|| cluster.leader_of(&shard));
    (shard, node)
}

/// A participant whose transaction's coordinator shard has lost its quorum does not hold
/// its callers: each waits at most `RECOVERY_DECISION_WAIT` and is told 57P03 naming the
/// coordinator; once the coordinator is back the part resolves and the shard serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_coordinator_is_down_answers_unavailable_then_recovers() {
    if !cfg!(debug_assertions) {
        println!("skipped: needs the planted pause-after-prepare (debug builds only)");
        return;
    }
    // One replica per shard, so one node's death takes its shards' quorum; node 4 runs the
    // session, with a pause between PREPARE and the decision.
    let mut cluster = tokio::task::block_in_place(|| {
        Cluster::start_each(4, |i| {
            let mut args = vec!["--replication-factor".to_string(), "1".to_string()];
            if i == 3 {
                args.push("ENV:CAIRN_PLANTED_BUG=pause-after-prepare".into());
            }
            args
        })
    });
    setup(cluster.nodes[0].pg).await;
    let c0 = client(cluster.nodes[0].pg).await;
    let mut places = Vec::new();
    for id in 0..ACCOUNTS {
        places.push((id, placed(&cluster, &c0, id).await));
    }
    // x on the coordinator shard (the lower id), y on another node's shard; neither on the
    // session's node.
    let mut pair = None;
    for (x, (sx, nx)) in &places {
        for (y, (sy, ny)) in &places {
            let num = |s: &str| s.trim_start_matches('s').parse::<u64>().unwrap();
            if *nx != 3 && *ny != 3 && nx != ny && num(sx) < num(sy) {
                pair = pair.or(Some((*x, sx.clone(), *nx, *y, *ny)));
            }
        }
    }
    let (x, coordinator, victim, y, participant) = pair.expect("accounts on two data nodes");
    let session = cluster.nodes[3].pg;
    let transfer = tokio::spawn(async move {
        let mut c = client(session).await;
        let tx = c.transaction().await?;
        tx.execute("UPDATE acct SET bal = bal - 100 WHERE id = $1", &[&x])
            .await?;
        tx.execute("UPDATE acct SET bal = bal + 100 WHERE id = $1", &[&y])
            .await?;
        tx.commit().await
    });
    // Inside the pause: both parts prepared, nothing decided. The coordinator shard dies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| cluster.nodes[victim].kill9());
    let told = tokio::time::timeout(Duration::from_secs(60), transfer)
        .await
        .expect("the client got an answer in time")
        .unwrap();
    assert!(told.is_err(), "committed without its coordinator shard");
    // y's shard is healthy but its part waits for the decision: callers hear why, in time.
    let probe = client(cluster.nodes[participant].pg).await;
    let started = Instant::now();
    let e = match probe
        .execute("UPDATE acct SET bal = bal WHERE id = $1", &[&y])
        .await
    {
        Err(e) if code(&e) == "57P03" => e,
        Err(e) => panic!("{e:?}"),
        // Resolved already? Only if the decision was known, and it was not.
        Ok(_) => panic!("served while its prepared part's decision is unknown"),
    };
    let message = e.as_db_error().unwrap().message().to_string();
    assert!(message.contains(&coordinator), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the caller waited {:?}",
        started.elapsed()
    );
    // The coordinator comes back: the part resolves (abort: nothing was decided).
    tokio::task::block_in_place(|| cluster.nodes[victim].restart());
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = probe
        .execute("UPDATE acct SET bal = bal WHERE id = $1", &[&y])
        .await
    {
        assert_eq!(code(&e), "57P03", "{e:?}");
        assert!(Instant::now() < deadline, "still unavailable: {e:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        balances(cluster.nodes[participant].pg, x, y).await,
        (OPENING, OPENING)
    );
}
