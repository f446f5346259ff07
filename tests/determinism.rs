//! Determinism: rows written with now(), random(), gen_random_uuid() and serial ids are
//! evaluated once, on the leader; a snapshot of the replica restored into a fresh replica
//! holds identical contents.

mod common;

use cairn::catalog::{Catalog, META_SCHEMA};
use cairn::storage::replica::{self, ReplicaHandle, ReplicaOptions};
use common::TestNode;
use std::sync::{Arc, Mutex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restore_gives_identical_contents() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute(
        "CREATE TABLE e (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), r double precision DEFAULT random(), \
           u uuid DEFAULT gen_random_uuid(), note text);
         CREATE TABLE nokey (a integer, b text)",
    )
    .await
    .unwrap();
    for i in 0..50 {
        c.execute("INSERT INTO e (note) VALUES ($1)", &[&format!("row {i}")])
            .await
            .unwrap();
        c.execute("INSERT INTO nokey VALUES ($1, now()::text)", &[&i])
            .await
            .unwrap();
    }
    c.batch_execute("UPDATE e SET r = random() WHERE id % 3 = 0; DELETE FROM e WHERE id % 7 = 0")
        .await
        .unwrap();
    let distinct: i64 = c
        .query_one("SELECT count(DISTINCT r) FROM e", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        distinct > 30,
        "random() should differ per row, got {distinct} distinct values"
    );

    // Every replica on the node — the meta group's and each data shard's — restores from
    // its snapshot into a fresh replica with identical contents.
    let cluster = node.node.as_ref().unwrap().cluster.clone();
    let groups = cluster.groups();
    assert!(groups.len() >= 3, "meta plus the tables' shards");
    let snap_dir = tempfile::tempdir().unwrap();
    for group in &groups {
        let live = group.replica.clone();
        let snap = snap_dir.path().join(format!("{}.snap", group.shard));
        let (applied, _) = replica::snapshot_to(&live.path, &snap).unwrap();
        assert!(applied.is_some());
        let loaded: Arc<Mutex<Option<Catalog>>> = Arc::default();
        let seen = loaded.clone();
        let options = ReplicaOptions {
            schema: if group.shard.is_meta() {
                META_SCHEMA
            } else {
                ""
            },
            on_change: group.shard.is_meta().then(|| {
                let hook: cairn::storage::replica::OnChange = Arc::new(move |conn| {
                    *seen.lock().unwrap() = Some(Catalog::load(conn).unwrap());
                });
                hook
            }),
            events: (!group.shard.is_meta()).then(Default::default),
            check_rate: None,
        };
        let fresh = ReplicaHandle::start(
            &snap_dir.path().join(format!("{}.db", group.shard)),
            group.shard,
            &options,
        )
        .unwrap();
        fresh.restore(snap.clone()).await.unwrap();
        assert_eq!(
            live.checksum().await.unwrap(),
            fresh.checksum().await.unwrap()
        );
        assert_eq!(fresh.applied_state().await.unwrap().0, applied);
        if group.shard.is_meta() {
            // The restored meta replica knows the tables' declared types.
            let catalog = loaded.lock().unwrap().clone().unwrap();
            assert_eq!(
                catalog.column_type("e", "u"),
                Some(cairn::types::PgType::Uuid)
            );
        }
    }
    // And the checksum notices a difference.
    let before: Vec<_> = futures_sums(&groups).await;
    c.execute("INSERT INTO e (note) VALUES ('one more')", &[])
        .await
        .unwrap();
    assert_ne!(futures_sums(&groups).await, before);
}

async fn futures_sums(groups: &[Arc<cairn::replication::group::ShardGroup>]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for g in groups {
        out.push(g.replica.checksum().await.unwrap());
    }
    out
}

/// openraft purges the log up to a received snapshot before the state machine installs it;
/// a crash in between leaves a complete received file ahead of the replica. Opening the
/// state machine again finishes the install; a file cut short is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_snapshot_install_is_finished_on_restart() {
    use cairn::replication::state_machine::StateMachine;
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute("CREATE TABLE r (k integer PRIMARY KEY, v text) WITH (shard_count = 1)")
        .await
        .unwrap();
    for i in 0..20 {
        c.execute("INSERT INTO r VALUES ($1, 'x')", &[&i])
            .await
            .unwrap();
    }
    let cluster = node.node.as_ref().unwrap().cluster.clone();
    let group = cluster
        .groups()
        .into_iter()
        .find(|g| !g.shard.is_meta())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("source.db");
    let (applied, _) = replica::snapshot_to(&group.replica.path, &snap).unwrap();
    let options = ReplicaOptions::default();

    // A complete received file ahead of a pristine replica: restored at open.
    let snapshots = dir.path().join("a/snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    std::fs::copy(&snap, snapshots.join("receiving-7.db")).unwrap();
    let fresh =
        ReplicaHandle::start(&dir.path().join("a/replica.db"), group.shard, &options).unwrap();
    StateMachine::new(fresh.clone(), &snapshots).await.unwrap();
    assert_eq!(fresh.applied_state().await.unwrap().0, applied);
    assert_eq!(
        fresh.checksum().await.unwrap(),
        group.replica.checksum().await.unwrap()
    );
    assert!(snapshots.join("snap-7.db").exists());

    // A received file cut short is not a snapshot: removed, the replica untouched.
    let snapshots = dir.path().join("b/snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    let bytes = std::fs::read(&snap).unwrap();
    std::fs::write(snapshots.join("receiving-3.db"), &bytes[..bytes.len() / 2]).unwrap();
    let other =
        ReplicaHandle::start(&dir.path().join("b/replica.db"), group.shard, &options).unwrap();
    StateMachine::new(other.clone(), &snapshots).await.unwrap();
    assert_eq!(other.applied_state().await.unwrap().0, None);
    assert!(!snapshots.join("receiving-3.db").exists());
}
