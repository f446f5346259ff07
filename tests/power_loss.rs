//! Power loss: every node of a cluster loses, at the same instant, everything it had not
//! made durable — and nothing acknowledged is lost.
//!
//! The fault: kill -9 every node, then take from each data dir what a power cut takes. The
//! Raft log (fjall) is fsynced before any write is acknowledged, so it stays. Each SQLite
//! replica runs with `synchronous=NORMAL` (it syncs only at checkpoints), so its file is
//! assumed lost entirely — harsher than a real cut, which keeps what was checkpointed.
//! A snapshot file survives only if Cairn made it durable: its contents and then its
//! directory entry fsynced. Which files were synced comes from the storage seam
//! `CAIRN_FSYNC_LOG` (`storage::durable`): every fsync Cairn makes is appended there once it
//! returned. Before the fix snapshots were never fsynced while the log they cover was
//! purged, and a restarted replica had nothing to start from.

mod common;

use common::Cluster;
use std::path::Path;
use std::time::Duration;

/// Remove from `data` (one node's data dir) what a power cut would take (see the module doc).
fn power_cut(data: &Path, fsync_log: &Path) {
    let log = std::fs::read_to_string(fsync_log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let durable = |file: &Path| -> bool {
        // The file's contents synced, then its directory synced after that.
        let dir = file.parent().unwrap().to_string_lossy().to_string();
        let seq = file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("snap-")
            .to_string();
        let written = lines.iter().position(|l| {
            l.strip_prefix("file ").is_some_and(|p| {
                p.starts_with(&dir)
                    && (p.ends_with(&format!("building-{seq}"))
                        || p.ends_with(&format!("receiving-{seq}"))
                        || p.ends_with(&format!("snap-{seq}")))
            })
        });
        written.is_some_and(|w| lines[w..].iter().any(|l| *l == format!("dir {dir}")))
    };
    let shards = data.join("shards");
    let mut lost_snapshots = 0;
    let mut kept_snapshots = 0;
    for shard in std::fs::read_dir(&shards).unwrap().flatten() {
        for name in ["replica.db", "replica.db-wal", "replica.db-shm"] {
            let _ = std::fs::remove_file(shard.path().join(name));
        }
        let snapshots = shard.path().join("snapshots");
        for f in std::fs::read_dir(&snapshots)
            .into_iter()
            .flatten()
            .flatten()
        {
            if durable(&f.path()) {
                kept_snapshots += 1;
            } else {
                lost_snapshots += 1;
                std::fs::remove_file(f.path()).unwrap();
            }
        }
    }
    println!(
        "power cut {}: replicas removed, {kept_snapshots} snapshots durable, {lost_snapshots} lost",
        data.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_of_every_node_loses_no_acknowledged_write() {
    let dirs = tempfile::tempdir().unwrap();
    let logs: Vec<_> = (0..3)
        .map(|i| dirs.path().join(format!("fsync-{i}.log")))
        .collect();
    let mut cluster = tokio::task::block_in_place(|| {
        Cluster::start_each(3, |i| {
            vec![
                "--snapshot-every".into(),
                "40".into(),
                format!("ENV:CAIRN_FSYNC_LOG={}", logs[i].display()),
            ]
        })
    });
    let c = common::connect(cluster.nodes[0].pg).await;
    c.batch_execute("CREATE TABLE pl (id bigint PRIMARY KEY, v text NOT NULL)")
        .await
        .unwrap();
    // 600 acknowledged autocommit writes: many snapshots, logs purged behind them.
    let mut acked = 0i64;
    for i in 0..600i64 {
        c.execute("INSERT INTO pl VALUES ($1, 'v')", &[&i])
            .await
            .unwrap_or_else(|e| panic!("insert {i}: {e}"));
        acked += 1;
    }
    let purged = cluster
        .nodes
        .iter()
        .flat_map(|n| std::fs::read_dir(n.dir.join("shards")).unwrap().flatten())
        .filter(|s| {
            std::fs::read_dir(s.path().join("snapshots"))
                .map(|d| d.count() > 0)
                .unwrap_or(false)
        })
        .count();
    assert!(purged > 0, "the writes should have made snapshots");
    drop(c);
    tokio::task::block_in_place(|| {
        for n in cluster.nodes.iter_mut() {
            n.kill9();
        }
        for (i, n) in cluster.nodes.iter().enumerate() {
            power_cut(&n.dir, &logs[i]);
        }
        // Each node serves /health before its groups have leaders, so one at a time.
        for n in cluster.nodes.iter_mut() {
            n.restart();
        }
    });
    let c = common::connect(cluster.nodes[1].pg).await;
    let mut count = -1i64;
    for _ in 0..600 {
        match c.query_one("SELECT count(*) FROM pl", &[]).await {
            Ok(r) => {
                count = r.get(0);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(count, acked, "acknowledged writes lost to the power cut");
    tokio::task::block_in_place(|| {
        cluster.assert_converged();
        cluster.wait_all_serving();
    });
}
