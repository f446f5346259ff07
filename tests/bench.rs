//! The bench client gives correct answers or none: against a real node, a clean run passes
//! and a table holding wrong values makes `cairn bench kv` fail instead of reporting a
//! speed. `scripts/bench-compare --quick` then runs every workload against Cairn,
//! PostgreSQL and a 3-member etcd, end to end (`.ci/run` installs the peers and sets
//! CAIRN_REQUIRE_BENCH_PEERS=1; elsewhere that part says it was skipped without them).

mod common;

use common::TestNode;
use std::process::Command;

fn bench(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run cairn bench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_speed_only_for_right_answers() {
    let node = TestNode::start().await;
    let url = format!("postgres://bench@{}/cairn", node.pg);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("kv.json");
    let (ok, out) = tokio::task::block_in_place(|| {
        bench(&[
            "kv",
            "--url",
            &url,
            "--clients",
            "2",
            "--duration",
            "1s",
            "--keys",
            "50",
            "--batch",
            "2",
            "--distribution",
            "zipfian",
            "--system",
            "cairn",
            "--json",
            json.to_str().unwrap(),
        ])
    });
    assert!(ok, "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["ops"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["workload"], "kv");
    for (workload, extra) in [
        ("insert", "--batch=3"),
        ("scan", "--rows=300"),
        ("news", "--reads=2000"),
        // Loaded already; other client choices, same data.
        ("news", "--reads=2000 --skip-load --seed=9"),
    ] {
        let mut args = vec![
            workload,
            "--url",
            &url,
            "--clients",
            "2",
            "--duration",
            "1s",
        ];
        args.extend(extra.split_whitespace());
        let (ok, out) = tokio::task::block_in_place(|| bench(&args));
        assert!(ok && out.contains("errors 0"), "{workload}: {out}");
    }

    // Values that are not what the bench wrote: the run fails on the first read.
    let c = node.client().await;
    c.batch_execute("UPDATE cairn_bench_kv SET v = 'not the value' WHERE k = 7")
        .await
        .unwrap();
    let (ok, out) = tokio::task::block_in_place(|| {
        bench(&[
            "kv",
            "--url",
            &url,
            "--clients",
            "1",
            "--duration",
            "3s",
            "--keys",
            "50",
            "--read-ratio",
            "1",
            "--skip-load",
        ])
    });
    assert!(!ok, "a wrong value went unnoticed: {out}");
    assert!(out.contains("wrong result: key 7"), "{out}");
    assert!(!out.contains("ops/s;"), "a speed was reported: {out}");
}

#[test]
fn bench_compare_runs_end_to_end_at_a_tiny_scale() {
    let have = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let postgres = std::fs::read_dir("/usr/lib/postgresql").is_ok();
    if !(have("etcd", "--version") && postgres) {
        assert!(
            std::env::var("CAIRN_REQUIRE_BENCH_PEERS").is_err(),
            "etcd and PostgreSQL are required here but not installed"
        );
        println!(
            "etcd or PostgreSQL missing; skipped (scripts/bench-compare installs them as root)"
        );
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/bench-compare"
    ))
    .args(["--quick", "--out"])
    .arg(out_dir.path())
    .env("CAIRN_BIN", env!("CARGO_BIN_EXE_cairn"))
    .output()
    .expect("run scripts/bench-compare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let md = std::fs::read_to_string(out_dir.path().join("compare.md")).unwrap();
    for needle in [
        "### `kv`",
        "### `insert`",
        "### `scan`",
        "### `news`",
        "### `watch`",
        "| cairn |",
        "| cairn-http |",
        "| cairn-cache |",
        "| postgresql |",
        "| etcd |",
        "Cairn/postgresql throughput",
        "Cairn/etcd throughput",
    ] {
        assert!(md.contains(needle), "no {needle:?} in:\n{md}\n{text}");
    }
    for plot in [
        "kv-throughput.svg",
        "kv-latency.svg",
        "scan-throughput.svg",
        "watch-throughput.svg",
    ] {
        let svg = std::fs::read_to_string(out_dir.path().join(plot)).unwrap();
        assert!(svg.contains("<svg") && svg.contains("cairn"), "{plot}");
    }
}
