//! The news-platform example on a 4-node cluster with two zones (two nodes each): schema,
//! a small deterministic data set loaded through COPY, the platform's queries checked
//! against what the data implies, and the list partitions' replicas found only in their
//! zones.

mod common;

#[path = "../examples/news/data.rs"]
mod data;

use common::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn news_platform_runs_with_zones_and_correct_answers() {
    let zones = ["beijing", "beijing", "hongkong", "hongkong"];
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_each(4, |i| vec!["--zone".into(), zones[i].into()])
    });
    let c = common::connect(cluster.nodes[3].pg).await;
    let d = data::generate(data::Scale {
        users: 200,
        articles: 80,
        reads: 3000,
        seed: 7,
    });
    data::load(&c, &d).await.expect("schema and data load");
    // Queries through a node of the other zone.
    let c = common::connect(cluster.nodes[0].pg).await;
    for check in data::checks(&d) {
        let got = data::rows(&c, &check.sql).await.unwrap();
        assert_eq!(got, check.expected, "{}: {}", check.what, check.sql);
    }
    // Placement: each partition's shard has replicas only in its zones.
    let shard_of = |plan: &[Vec<String>]| plan[0][0].split_whitespace().nth(1).unwrap().to_string();
    let placed = [
        (
            "SELECT * FROM users WHERE region = 'Beijing'",
            &["beijing"][..],
        ),
        (
            "SELECT * FROM users WHERE region = 'Hong Kong'",
            &["hongkong"][..],
        ),
        (
            "SELECT * FROM articles WHERE category = 'science'",
            &["beijing", "hongkong"][..],
        ),
        (
            "SELECT * FROM articles WHERE category = 'technology'",
            &["hongkong"][..],
        ),
        (
            "SELECT * FROM popular_rank WHERE temporal_granularity = 'daily'",
            &["beijing"][..],
        ),
        (
            "SELECT * FROM popular_rank WHERE temporal_granularity = 'monthly'",
            &["hongkong"][..],
        ),
    ];
    for (sql, want) in placed {
        let plan = data::rows(&c, &format!("EXPLAIN {sql}")).await.unwrap();
        assert!(plan[0][0].contains("pins the shard"), "{sql}: {plan:?}");
        let shard = shard_of(&plan);
        let holders: Vec<&str> = tokio::task::block_in_place(|| {
            (0..4)
                .filter(|i| cluster.shards_on(*i).contains(&shard))
                .map(|i| zones[i])
                .collect()
        });
        assert!(!holders.is_empty(), "{sql}: nobody holds {shard}");
        assert!(
            holders.iter().all(|z| want.contains(z)),
            "{sql}: {shard} on {holders:?}, wanted only {want:?}"
        );
        for z in want {
            assert!(
                holders.contains(z),
                "{sql}: {shard} not in zone {z}: {holders:?}"
            );
        }
    }
    // Reads are co-located with their users: the join on (region, uid) runs in the shard.
    let plan = data::rows(
        &c,
        "EXPLAIN SELECT u.name, count(*) FROM users u JOIN reads r ON r.region = u.region AND r.uid = u.uid \
         WHERE u.region = 'Hong Kong' GROUP BY u.name",
    )
    .await
    .unwrap();
    assert!(plan[0][0].contains("pins the shard"), "{plan:?}");
}
