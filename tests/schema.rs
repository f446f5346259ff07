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
