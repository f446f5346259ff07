//! The chaos harness end to end, within a bounded budget: clean runs of each workload pass,
//! and each planted bug (debug builds only) makes the harness fail. Real `cairn` processes,
//! SIGKILL, SIGSTOP and (as root, with iptables) partitions between their loopback
//! addresses. `.ci/run` sets CAIRN_REQUIRE_PARTITIONS=1; elsewhere the partition runs say
//! they were skipped when partitions cannot be made.

/// Whether partitions can be made here (root with iptables).
fn partitions_possible() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let iptables = Command::new("iptables")
        .args(["-w", "-L", "OUTPUT", "-n"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !(root && iptables) {
        assert!(
            std::env::var("CAIRN_REQUIRE_PARTITIONS").is_err(),
            "partitions are required here but need root and iptables"
        );
        println!("partitions need root and iptables; skipped");
    }
    root && iptables
}

use std::process::Command;

fn chaos(
    workload: &str,
    seed: u64,
    base_port: u16,
    planted: Option<&str>,
    faults: &str,
) -> (bool, String) {
    chaos_for(workload, seed, base_port, planted, faults, "8s")
}

fn chaos_for(
    workload: &str,
    seed: u64,
    base_port: u16,
    planted: Option<&str>,
    faults: &str,
    duration: &str,
) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args([
        "chaos",
        "--workload",
        workload,
        "--seed",
        &seed.to_string(),
        "--duration",
        duration,
    ])
    .args(["--base-port", &base_port.to_string()])
    .args(["--faults", faults])
    .arg("--data-dir")
    .arg(dir.path().join("chaos"))
    .env_remove("CAIRN_PLANTED_BUG")
    .env("RUST_BACKTRACE", "0");
    if let Some(bug) = planted {
        cmd.env("CAIRN_PLANTED_BUG", bug);
    }
    let out = cmd.output().expect("run cairn chaos");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    (out.status.success(), text)
}

#[test]
fn set_workload_under_kills_and_pauses_passes() {
    let (ok, out) = chaos("set", 1, 18000, None, "kill,pause");
    assert!(ok && out.contains("verdict: PASS"), "{out}");
    assert!(
        out.contains("kill -9") || out.contains("SIGSTOP"),
        "no faults were injected: {out}"
    );
}

#[test]
fn register_workload_under_kills_and_pauses_passes() {
    let (ok, out) = chaos("register", 2, 18010, None, "kill,pause");
    assert!(ok && out.contains("verdict: PASS"), "{out}");
}

#[test]
fn planted_stale_reads_are_caught() {
    if !cfg!(debug_assertions) {
        println!("skipped: release builds ignore planted bugs");
        return;
    }
    let (ok, out) = chaos("register", 5, 18020, Some("stale-reads"), "kill,pause");
    assert!(!ok && out.contains("verdict: FAIL"), "{out}");
    assert!(!out.contains("non-linearizable keys []"), "{out}");
}

#[test]
fn planted_ack_before_commit_is_caught() {
    if !cfg!(debug_assertions) {
        println!("skipped: release builds ignore planted bugs");
        return;
    }
    // Losing an acknowledged write needs a leader to die or stall inside the bug's window;
    // some short schedules have no such moment, so try a few seeds until one catches it.
    let mut outputs = Vec::new();
    for seed in [4, 3, 6] {
        let (ok, out) = chaos("set", seed, 18030, Some("ack-before-commit"), "kill,pause");
        if !ok && out.contains("verdict: FAIL") && !out.contains("lost []") {
            return;
        }
        outputs.push(out);
    }
    panic!(
        "the planted bug survived three seeds:\n{}",
        outputs.join("\n")
    );
}

#[test]
fn bank_workload_with_forwarded_transactions_passes() {
    let (ok, out) = chaos("bank", 7, 18040, None, "kill,pause");
    assert!(ok && out.contains("verdict: PASS"), "{out}");
    assert!(out.contains("0 reads saw a wrong total"), "{out}");
}

#[test]
fn bank_and_register_workloads_under_partitions_pass() {
    if !partitions_possible() {
        return;
    }
    let (ok, out) = chaos("bank", 3, 18050, None, "partition");
    assert!(ok && out.contains("verdict: PASS"), "{out}");
    assert!(out.contains("partition: "), "no partition was made: {out}");
    assert!(out.contains("0 reads saw a wrong total"), "{out}");
    let (ok, out) = chaos("register", 4, 18060, None, "kill,pause,partition");
    assert!(ok && out.contains("verdict: PASS"), "{out}");
}

#[test]
fn watch_workload_under_kills_and_pauses_passes() {
    let (ok, out) = chaos("watch", 8, 18070, None, "kill,pause");
    assert!(ok && out.contains("verdict: PASS"), "{out}");
    assert!(
        out.contains("kill -9") || out.contains("SIGSTOP"),
        "no faults were injected: {out}"
    );
    assert!(
        !out.contains(" 0 events delivered"),
        "nothing was delivered: {out}"
    );
}

#[test]
fn planted_dropped_and_reordered_events_are_caught() {
    if !cfg!(debug_assertions) {
        println!("skipped: release builds ignore planted bugs");
        return;
    }
    let (ok, out) = chaos("watch", 9, 18080, Some("watch-drop-event"), "kill,pause");
    assert!(!ok && out.contains("verdict: FAIL"), "{out}");
    assert!(out.contains("never delivered"), "{out}");
    // A swap is visible only where the two writes touch one row or one was acknowledged
    // before the other began: a run may swap only unrelated pairs. A checker that misses
    // the bug on three seeds in a row is broken.
    let mut runs = Vec::new();
    for seed in [10, 11, 12] {
        let (ok, out) = chaos("watch", seed, 18360, Some("watch-reorder"), "kill,pause");
        // Caught by whichever check the swapped pair breaks: a row's chain, the real-time
        // order, or the filtered stream no longer matching the unfiltered one.
        let caught = !ok
            && out.contains("verdict: FAIL")
            && [
                "out of order",
                "acknowledged before",
                "changed from",
                "first difference",
            ]
            .iter()
            .any(|why| out.contains(why));
        if caught {
            return;
        }
        runs.push(out);
    }
    panic!(
        "a planted reorder went unnoticed on 3 seeds:\n{}",
        runs.join("\n")
    );
}

// Each run takes ports base..base+2, +100 and +200 on 127.0.0.11-13, and the tests run in
// parallel: bases must not overlap in those ranges.
#[test]
fn register_workload_over_the_key_value_api_passes() {
    let (ok, out) = chaos("kv-register", 12, 18300, None, "kill,pause");
    assert!(ok && out.contains("verdict: PASS"), "{out}");
    assert!(out.contains("non-linearizable keys []"), "{out}");
    if cfg!(debug_assertions) {
        // The checker sees through the HTTP API too: stale reads make it fail.
        let (ok, out) = chaos("kv-register", 5, 18330, Some("stale-reads"), "kill,pause");
        assert!(!ok && !out.contains("non-linearizable keys []"), "{out}");
    }
}

#[test]
fn files_workload_passes() {
    // Uploads of multi-chunk files, overwrites, renames and deletes over HTTP under kills and
    // pauses: every read and the end state are contents acknowledged (or in doubt), whole.
    let (ok, out) = chaos("files", 13, 18360, None, "kill,pause");
    assert!(ok && out.contains("verdict: PASS"), "{out}");
    assert!(out.contains("bad reads [], bad final states []"), "{out}");
    if cfg!(debug_assertions) {
        // The checker sees stale reads of files. A stale read needs a lagging replica at the
        // moment of a read, which a short run may not meet: up to three seeds, one must fail.
        let mut outs = Vec::new();
        for seed in [5, 6, 7] {
            let (ok, out) = chaos("files", seed, 18390, Some("stale-reads"), "kill,pause");
            if !ok && !out.contains("bad reads [], bad final states []") {
                outs.clear();
                break;
            }
            outs.push(out);
        }
        assert!(
            outs.is_empty(),
            "planted stale reads were never caught:\n{}",
            outs.join("\n")
        );
    }
}

/// A membership run passed, and changed the membership: a node was added and one taken
/// out of service (decommissioned, or killed for good and its replicas re-created), and
/// afterwards every shard was back at its replication factor on the nodes left.
fn assert_passed_under_membership_changes(ok: bool, out: &str) {
    assert!(ok && out.contains("verdict: PASS"), "{out}");
    assert!(out.contains("membership: settled"), "{out}");
    assert!(out.contains("added n"), "no node was added: {out}");
    assert!(
        out.contains("decommissioning n") || out.contains("for good"),
        "no node was taken out: {out}"
    );
}

// Membership runs may start up to 6 nodes: bases 18600, 18610, 18620 keep clear of the
// others' pgwire, HTTP (+100) and cluster (+200) ports.
#[test]
fn set_workload_under_membership_changes_passes() {
    let (ok, out) = chaos_for("set", 21, 18600, None, "membership", "20s");
    assert_passed_under_membership_changes(ok, &out);
}

#[test]
fn register_workload_under_membership_changes_passes() {
    let (ok, out) = chaos_for("register", 22, 18610, None, "membership", "20s");
    assert_passed_under_membership_changes(ok, &out);
}

#[test]
fn bank_workload_under_membership_changes_and_kills_passes() {
    let (ok, out) = chaos_for("bank", 23, 18620, None, "membership,kill", "20s");
    assert_passed_under_membership_changes(ok, &out);
    assert!(out.contains("0 reads saw a wrong total"), "{out}");
}
