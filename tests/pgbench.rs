//! PostgreSQL's own `pgbench`, unmodified, against a 3-node cluster of real processes: its
//! initialisation (DROP/CREATE with storage options, TRUNCATE of four tables, COPY ... WITH
//! (FREEZE ON) inside a transaction, VACUUM, ALTER TABLE ... ADD PRIMARY KEY) and its
//! built-in TPC-B-like script from several clients, with no failed transaction; afterwards
//! the balances of accounts, tellers, branches and the history agree, read through another
//! node. `.ci/run` installs pgbench and sets CAIRN_REQUIRE_PGBENCH=1; elsewhere the test
//! says it was skipped when pgbench is missing.

mod common;

use common::Cluster;
use std::net::SocketAddr;
use std::process::Command;

fn pgbench(pg: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("pgbench")
        .args(["-h", &pg.ip().to_string(), "-p", &pg.port().to_string()])
        .args(["-U", "bench"])
        .args(args)
        .arg("cairn")
        .output()
        .expect("run pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

/// The number after `label` in pgbench's report.
fn figure(report: &str, label: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no \"{label}\" in:\n{report}"));
    line[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no number in \"{line}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initialises_and_runs_tpcb_without_errors() {
    let installed = Command::new("pgbench")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        assert!(
            std::env::var("CAIRN_REQUIRE_PGBENCH").is_err(),
            "pgbench is required here but not installed"
        );
        println!("pgbench is not installed; skipped (install postgresql to run it)");
        return;
    }
    let cluster = tokio::task::block_in_place(|| Cluster::start(3, &[]));
    let pg = cluster.nodes[0].pg;
    let init = tokio::task::block_in_place(|| pgbench(pg, &["-i", "-s", "1"]));
    assert!(init.contains("done in"), "{init}");
    // Initialising again drops and recreates everything.
    tokio::task::block_in_place(|| pgbench(pg, &["-i", "-s", "1", "-q"]));

    let (clients, per_client) = (4u64, 50u64);
    let run = tokio::task::block_in_place(|| {
        pgbench(
            pg,
            &[
                "-c",
                &clients.to_string(),
                "-j",
                "2",
                "-t",
                &per_client.to_string(),
            ],
        )
    });
    assert_eq!(
        figure(&run, "number of transactions actually processed:"),
        clients * per_client,
        "{run}"
    );
    assert_eq!(figure(&run, "number of failed transactions:"), 0, "{run}");

    let c = common::connect(cluster.nodes[2].pg).await;
    let row = c
        .query_one(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts), \
                    (SELECT sum(tbalance) FROM pgbench_tellers), \
                    (SELECT sum(bbalance) FROM pgbench_branches), \
                    (SELECT sum(delta) FROM pgbench_history), \
                    (SELECT count(*) FROM pgbench_history), \
                    (SELECT count(*) FROM pgbench_accounts)",
            &[],
        )
        .await
        .unwrap();
    let sums: Vec<i64> = (0..4).map(|i| row.get(i)).collect();
    assert!(
        sums.iter().all(|s| *s == sums[3]),
        "balances disagree: {sums:?}"
    );
    assert_eq!(row.get::<_, i64>(4), (clients * per_client) as i64);
    assert_eq!(row.get::<_, i64>(5), 100_000);
    // The primary key pgbench added is a real unique index.
    let dup = c
        .execute(
            "INSERT INTO pgbench_accounts (aid, bid, abalance) VALUES (1, 1, 0)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(dup.as_db_error().unwrap().code().code(), "23505");
    tokio::task::block_in_place(|| cluster.assert_converged());
}
