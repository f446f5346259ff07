//! ORMs and drivers from other languages, unchanged, against a 3-node cluster: each script
//! in `tests/python/` runs with the interpreter of the virtual environment `.ci/run`
//! makes (`CAIRN_PYTHON`, with `tests/python/requirements.txt`). `.ci/run` sets
//! CAIRN_REQUIRE_PYTHON=1; elsewhere the test says it was skipped without one.

mod common;

use std::process::Command;

fn python() -> Option<String> {
    match std::env::var("CAIRN_PYTHON") {
        Ok(p) => Some(p),
        Err(_) => {
            assert!(
                std::env::var("CAIRN_REQUIRE_PYTHON").is_err(),
                "CAIRN_PYTHON (a virtual environment with tests/python/requirements.txt) is required here"
            );
            println!(
                "CAIRN_PYTHON is not set; skipped (python3 -m venv v && v/bin/pip install -r tests/python/requirements.txt && CAIRN_PYTHON=v/bin/python cargo test --test orm)"
            );
            None
        }
    }
}

fn run(python: &str, script: &str, url: &str) {
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python)
        .arg(&path)
        .arg(url)
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{script} failed:\n{text}");
}

#[test]
fn sqlalchemy_orm_and_inspection_work_unchanged() {
    let Some(python) = python() else { return };
    let cluster = common::Cluster::start(3, &[]);
    // Through a node other than the first, as an application behind a load balancer.
    let url = format!("postgresql+psycopg://app@{}/cairn", cluster.nodes[1].pg);
    run(&python, "sqlalchemy_orm.py", &url);
}
