//! The chaos harness end to end, within a bounded budget: clean runs of each workload pass,
//! and each planted bug (debug builds only) makes the harness fail. Real `cairn` processes,
//! SIGKILL and SIGSTOP, loopback only.

use std::process::Command;

fn chaos(workload: &str, seed: u64, base_port: u16, planted: Option<&str>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args([
        "chaos",
        "--workload",
        workload,
        "--seed",
        &seed.to_string(),
        "--duration",
        "8s",
    ])
    .args(["--base-port", &base_port.to_string()])
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
    let (ok, out) = chaos("set", 1, 18000, None);
    assert!(ok && out.contains("verdict: PASS"), "{out}");
    assert!(
        out.contains("kill -9") || out.contains("SIGSTOP"),
        "no faults were injected: {out}"
    );
}

#[test]
fn register_workload_under_kills_and_pauses_passes() {
    let (ok, out) = chaos("register", 2, 18010, None);
    assert!(ok && out.contains("verdict: PASS"), "{out}");
}

#[test]
fn planted_stale_reads_are_caught() {
    if !cfg!(debug_assertions) {
        return; // release builds ignore planted bugs
    }
    let (ok, out) = chaos("register", 5, 18020, Some("stale-reads"));
    assert!(!ok && out.contains("verdict: FAIL"), "{out}");
    assert!(!out.contains("non-linearizable keys []"), "{out}");
}

#[test]
fn planted_ack_before_commit_is_caught() {
    if !cfg!(debug_assertions) {
        return;
    }
    // Losing an acknowledged write needs a leader to die or stall inside the bug's window;
    // some short schedules have no such moment, so try a few seeds until one catches it.
    let mut outputs = Vec::new();
    for seed in [4, 3, 6] {
        let (ok, out) = chaos("set", seed, 18030, Some("ack-before-commit"));
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
    let (ok, out) = chaos("bank", 7, 18040, None);
    assert!(ok && out.contains("verdict: PASS"), "{out}");
    assert!(out.contains("0 reads saw a wrong total"), "{out}");
}
