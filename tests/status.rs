//! `cairn status` against real `cairn start` processes: the nodes, then every shard with its
//! tables, leader, replicas, lag and health; a killed node's shards show as not healthy.

mod common;

use common::{wait_for, Cluster};
use std::process::Command;
use std::time::Duration;

fn status(http: std::net::SocketAddr, json: bool) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["status", "--url", &format!("http://{http}")]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run cairn status");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn status_shows_nodes_and_shards_and_a_dead_nodes_shards_as_not_healthy() {
    let mut cluster = Cluster::start(3, &[]);
    let http: Vec<_> = cluster.nodes.iter().map(|n| n.http).collect();
    let (code, body) = common::http_post(
        http[0],
        "/v1/sql",
        r#"{"sql": "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric) WITH (shard_count = 2)"}"#,
        Duration::from_secs(60),
    );
    assert_eq!(code, 200, "{body}");
    let mut out = String::new();
    wait_for(
        || {
            let (ok, text) = status(http[1], false);
            out = text;
            ok && out.contains("all healthy")
        },
        Duration::from_secs(60),
        "a healthy status",
    );
    for node in ["n1", "n2", "n3"] {
        assert!(out.contains(node), "{out}");
    }
    let order_lines: Vec<&str> = out.lines().filter(|l| l.contains("orders")).collect();
    assert_eq!(order_lines.len(), 2, "one line per shard of orders: {out}");
    for line in &order_lines {
        assert!(line.contains('*'), "the leader is marked: {line}");
        assert!(line.trim_end().ends_with("ok"), "{line}");
    }
    let (ok, json) = status(http[2], true);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("JSON");
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    let shard = v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["tables"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "orders")
        })
        .expect("a shard of orders");
    let roles: Vec<&str> = shard["replica_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "leader").count(),
        1,
        "{shard}"
    );
    assert_eq!(
        roles.iter().filter(|r| **r == "follower").count(),
        2,
        "{shard}"
    );

    // A node killed: its replicas are unknown, the shards under-replicated.
    cluster.nodes[2].kill9();
    wait_for(
        || {
            let (ok, text) = status(http[0], false);
            out = text;
            ok && out.contains("not healthy") && out.contains("under-replicated (2/3)")
        },
        Duration::from_secs(60),
        "the dead node's shards shown as not healthy",
    );
    assert!(out.contains("n3?"), "{out}");
    // A bad URL is an error, not a crash.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["status", "--url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
