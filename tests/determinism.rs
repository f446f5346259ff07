//! Determinism: rows written with now(), random(), gen_random_uuid() and serial ids are
//! evaluated once, on the leader; a snapshot of the replica restored into a fresh replica
//! holds identical contents.

mod common;

use cairn::ids::ShardId;
use cairn::storage::replica::{self, ReplicaHandle};
use common::TestNode;

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

    let live = node.node.as_ref().unwrap().engine.group.replica.clone();
    let snap_dir = tempfile::tempdir().unwrap();
    let snap = snap_dir.path().join("snap.db");
    let (applied, _) = replica::snapshot_to(&live.path, &snap).unwrap();
    assert!(applied.is_some());

    let fresh = ReplicaHandle::start(&snap_dir.path().join("fresh.db"), ShardId(1)).unwrap();
    fresh.restore(snap.clone()).await.unwrap();
    let (live_sum, fresh_sum) = (
        live.checksum().await.unwrap(),
        fresh.checksum().await.unwrap(),
    );
    assert_eq!(live_sum, fresh_sum);
    assert_eq!(fresh.applied_state().await.unwrap().0, applied);
    // The restored replica knows the tables' declared types.
    let catalog = fresh.catalog.read().unwrap().clone();
    assert_eq!(
        catalog.column_type("e", "u"),
        Some(cairn::types::PgType::Uuid)
    );
    // And the checksum notices a difference.
    c.execute("INSERT INTO e (note) VALUES ('one more')", &[])
        .await
        .unwrap();
    assert_ne!(live.checksum().await.unwrap().1, fresh_sum.1);
}
