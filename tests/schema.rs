//! Schema changes are seen at once: after a DDL statement succeeds on one node, the next
//! statement on any node plans with the new definition — `SELECT *` returns the new
//! columns, a query merged at the coordinator uses the new layout, a table dropped and
//! created again under the same name has its new columns. Real processes.

mod common;

use common::Cluster;

async fn columns(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let stmt = c
        .prepare(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let rows = c
        .query(&stmt, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    if let Some(r) = rows.first() {
        assert_eq!(r.len(), stmt.columns().len(), "{sql}: row width");
    }
    stmt.columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_sees_a_schema_change_as_soon_as_it_succeeds() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(3, &[]));
    let mut clients = Vec::new();
    for n in &cluster.nodes {
        clients.push(common::connect(n.pg).await);
    }
    let ddl = &clients[0];
    ddl.batch_execute("CREATE TABLE hh (id integer PRIMARY KEY, v text)")
        .await
        .unwrap();
    ddl.batch_execute("INSERT INTO hh VALUES (1, 'v'), (2, 'v'), (3, 'v'), (4, 'v'), (5, 'v'), (6, 'v'), (7, 'v'), (8, 'v')")
        .await
        .unwrap();
    for round in 0..4 {
        for c in &clients[1..] {
            assert_eq!(columns(c, "SELECT * FROM hh").await.len(), 2 + round);
        }
        ddl.batch_execute(&format!(
            "ALTER TABLE hh ADD COLUMN w{round} text DEFAULT 'new'"
        ))
        .await
        .unwrap();
        for (i, c) in clients.iter().enumerate() {
            let cols = columns(c, "SELECT * FROM hh ORDER BY id").await;
            assert_eq!(cols.len(), 3 + round, "n{}: {cols:?}", i + 1);
            let merged = c
                .query(
                    &format!("SELECT w{round}, count(*) FROM hh GROUP BY w{round}"),
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("n{}: merged query: {e:?}", i + 1));
            assert_eq!(merged.len(), 1);
            assert_eq!(
                merged[0].get::<_, Option<String>>(0).as_deref(),
                Some("new")
            );
            assert_eq!(merged[0].get::<_, i64>(1), 8);
        }
    }
    ddl.batch_execute("DROP TABLE hh").await.unwrap();
    ddl.batch_execute("CREATE TABLE hh (a text PRIMARY KEY, b bigint)")
        .await
        .unwrap();
    for (i, c) in clients.iter().enumerate() {
        let cols = columns(c, "SELECT * FROM hh").await;
        assert_eq!(cols, vec!["a", "b"], "n{}", i + 1);
    }
}

/// One-shard tables share a shard, whose writer a transaction holds until it ends. A new
/// one-shard table does not queue behind a stranger's open transaction (it gets a shard of
/// its own); DDL that must wait and cannot finish in time never answers "retry" for a
/// change that then takes effect: it answers 08007, and the cluster finishes or undoes the
/// change by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_table_does_not_wait_for_strangers_and_ddl_that_must_wait_answers_outcome_unknown() {
    let node = common::TestNode::start().await;
    let holder = node.client().await;
    let other = node.client().await;
    holder
        .batch_execute("CREATE TABLE idle_t (v integer)")
        .await
        .unwrap();
    holder
        .batch_execute("BEGIN; INSERT INTO idle_t VALUES (1)")
        .await
        .unwrap();
    // A new one-shard table does not wait for the stranger: it gets a shard of its own.
    other
        .batch_execute("CREATE TABLE lonely (v integer); INSERT INTO lonely VALUES (7)")
        .await
        .unwrap();
    let n: i64 = other
        .query_one("SELECT count(*) FROM lonely", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // A change of the table the transaction holds must wait for it, as in PostgreSQL.
    let e = other
        .batch_execute("ALTER TABLE idle_t ADD COLUMN w integer")
        .await
        .unwrap_err();
    let code = e.as_db_error().map(|d| d.code().code().to_string());
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(code.as_deref(), Some("08007"), "{e:?}");
    // Settled by the cluster: the job is finished (or undone) within seconds, and the
    // table is then there exactly once — created by the job, or by creating it again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if other.query("SELECT w FROM idle_t", &[]).await.is_ok() {
            break;
        }
        match other
            .batch_execute("ALTER TABLE idle_t ADD COLUMN w integer")
            .await
        {
            Ok(()) => continue,
            Err(e) => {
                // 55006 while the pending job still runs.
                assert!(std::time::Instant::now() < deadline, "never settled: {e:?}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    let n: i64 = other
        .query_one("SELECT count(*) FROM idle_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the holder rolled back");
}

/// The columns a table has, as every shard and the catalog agree: `SELECT *` names them,
/// and a row with a value for each is stored on every shard (a column the catalog lost
/// but a shard kept, or the other way round, fails one of the two).
async fn consistent_columns(c: &tokio_postgres::Client, table: &str) -> Vec<String> {
    let names = columns(c, &format!("SELECT * FROM {table}")).await;
    let list = names.join(", ");
    for id in 1000..1016 {
        let values: Vec<String> = names
            .iter()
            .map(|n| {
                if n == "id" {
                    id.to_string()
                } else {
                    "1".into()
                }
            })
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({list}) VALUES ({})",
            values.join(", ")
        );
        c.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_schema_changes_of_one_table_all_take_effect() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(3, &[]));
    let setup = common::connect(cluster.nodes[0].pg).await;
    setup
        .batch_execute("CREATE TABLE cc (id integer PRIMARY KEY)")
        .await
        .unwrap();
    // Two nodes add columns to the same table at once.
    let mut tasks = Vec::new();
    for (i, n) in cluster.nodes.iter().take(2).enumerate() {
        let pg = n.pg;
        tasks.push(tokio::spawn(async move {
            let c = common::connect(pg).await;
            for k in 0..4 {
                let sql = format!("ALTER TABLE cc ADD COLUMN c{i}_{k} integer");
                c.batch_execute(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut got = consistent_columns(&setup, "cc").await;
    got.sort();
    let mut want: Vec<String> = (0..2)
        .flat_map(|i| (0..4).map(move |k| format!("c{i}_{k}")))
        .collect();
    want.push("id".into());
    want.sort();
    assert_eq!(
        got, want,
        "a concurrent ADD COLUMN was lost from the catalog"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_in_a_transaction_does_not_overwrite_a_change_made_meanwhile() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(3, &[]));
    let a = common::connect(cluster.nodes[0].pg).await;
    let b = common::connect(cluster.nodes[1].pg).await;
    a.batch_execute("CREATE TABLE tx (id integer PRIMARY KEY)")
        .await
        .unwrap();
    a.batch_execute("BEGIN; ALTER TABLE tx ADD COLUMN in_txn integer")
        .await
        .unwrap();
    // Meanwhile another session changes the same table; its job waits for the shards
    // the transaction holds.
    let other = tokio::spawn(async move {
        b.batch_execute("ALTER TABLE tx ADD COLUMN outside integer")
            .await
            .map_err(|e| format!("{e:?}"))
    });
    // Commit once the other change is recorded (its job is in the catalog, waiting).
    let http = cluster.nodes[0].http;
    tokio::task::block_in_place(|| {
        common::wait_for(
            || {
                common::http_get(http, "/metrics").is_some_and(|m| {
                    m.lines().any(|l| {
                        l.contains("ddl_jobs_running") && !l.starts_with('#') && !l.ends_with(" 0")
                    })
                })
            },
            std::time::Duration::from_secs(20),
            "the other schema change to be recorded",
        )
    });
    let committed = a.batch_execute("COMMIT").await;
    other
        .await
        .unwrap()
        .expect("the change outside the transaction");
    let names = consistent_columns(&a, "tx").await;
    assert!(names.contains(&"outside".to_string()), "{names:?}");
    match committed {
        Ok(()) => assert!(names.contains(&"in_txn".to_string()), "{names:?}"),
        Err(e) => {
            let code = e.as_db_error().map(|d| d.code().code().to_string());
            assert_eq!(code.as_deref(), Some("40001"), "{e:?}");
            assert!(!names.contains(&"in_txn".to_string()), "{names:?}");
        }
    }
}

fn shard_sets(cluster: &Cluster) -> Vec<std::collections::BTreeSet<String>> {
    (0..cluster.nodes.len())
        .map(|i| cluster.shards_on(i).into_iter().collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_tables_leave_no_shard_groups_or_files_behind() {
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(3, &[]));
    let c = common::connect(cluster.nodes[0].pg).await;
    let before = tokio::task::block_in_place(|| shard_sets(&cluster));
    c.batch_execute(
        "CREATE TABLE hx (id integer PRIMARY KEY, v text) WITH (shard_count = 3);
         CREATE TABLE lone (v text);
         CREATE TABLE refd (id integer PRIMARY KEY, v text) WITH (shard_count = 2);
         SELECT create_reference_table('refd');
         INSERT INTO hx VALUES (1, 'a'), (2, 'b'), (3, 'c');
         INSERT INTO lone VALUES ('x');
         INSERT INTO refd VALUES (1, 'r');",
    )
    .await
    .unwrap();
    let during = tokio::task::block_in_place(|| shard_sets(&cluster));
    let added: std::collections::BTreeSet<String> = during
        .iter()
        .flatten()
        .filter(|s| !before.iter().any(|b| b.contains(*s)))
        .cloned()
        .collect();
    // 3 hash shards, the single-shard group, the reference table's shard (its first
    // layout's 2 shards are retired by create_reference_table itself).
    assert!(added.len() >= 5, "new shards: {added:?}");
    c.batch_execute("DROP TABLE hx; DROP TABLE lone; DROP TABLE refd")
        .await
        .unwrap();
    let gone = |cluster: &Cluster| {
        shard_sets(cluster) == before
            && cluster
                .nodes
                .iter()
                .all(|n| added.iter().all(|s| !n.dir.join("shards").join(s).exists()))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !tokio::task::block_in_place(|| gone(&cluster)) {
        let left: Vec<_> = cluster
            .nodes
            .iter()
            .map(|n| {
                added
                    .iter()
                    .filter(|s| n.dir.join("shards").join(s).exists())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped tables' replicas are still there: {:?} (before {before:?}), files {left:?}",
            tokio::task::block_in_place(|| shard_sets(&cluster))
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A restarted node does not bring them back.
    tokio::task::block_in_place(|| {
        cluster.nodes[2].kill9();
        cluster.nodes[2].restart();
        assert!(
            gone(&cluster),
            "after a restart: {:?}",
            shard_sets(&cluster)
        );
    });
    // New tables get new shards and work.
    c.batch_execute("CREATE TABLE lone (v text); INSERT INTO lone VALUES ('y')")
        .await
        .unwrap();
    let c2 = common::connect(cluster.nodes[2].pg).await;
    let v: String = c2
        .query_one("SELECT v FROM lone", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "y");
}
