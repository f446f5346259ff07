//! Smoke test with the real `psql` client. `.ci/run` installs it and sets
//! CAIRN_REQUIRE_PSQL=1; elsewhere the test says it was skipped when psql is missing.

mod common;

use common::TestNode;
use std::process::Command;

fn psql(node: &TestNode, script: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-F", "|"])
        .arg(format!("postgres://smoke@{}/cairn", node.pg))
        .arg("-c")
        .arg(script)
        .output()
        .expect("run psql");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_smoke() {
    if Command::new("psql").arg("--version").output().is_err() {
        assert!(
            std::env::var("CAIRN_REQUIRE_PSQL").is_err(),
            "psql is required here but not installed"
        );
        println!("psql is not installed; skipped (install postgresql-client to run it)");
        return;
    }
    let node = TestNode::start().await;
    let script = "CREATE TABLE articles (id serial PRIMARY KEY, title text NOT NULL, category text, reads integer DEFAULT 0)";
    let (ok, out) = tokio::task::block_in_place(|| psql(&node, script));
    assert!(ok, "{out}");
    let steps = [
        ("INSERT INTO articles (title, category) VALUES ('a', 'science'), ('b', 'technology'), ('c', 'science')", ""),
        ("BEGIN; UPDATE articles SET reads = reads + 10 WHERE category = 'science'; COMMIT;", ""),
        ("SELECT category, sum(reads) FROM articles GROUP BY category ORDER BY category", "science|20\ntechnology|0\n"),
        ("SELECT title FROM articles WHERE title ILIKE 'B'", "b\n"),
        ("SELECT count(*) FROM articles", "3\n"),
    ];
    for (sql, want) in steps {
        let (ok, out) = tokio::task::block_in_place(|| psql(&node, sql));
        assert!(ok, "{sql}: {out}");
        assert_eq!(out, want, "{sql}");
    }
    // psql's \copy streams a file through COPY FROM STDIN.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("articles.csv");
    let mut csv = String::new();
    for i in 0..300 {
        csv.push_str(&format!(
            "\"title, {i}\",{}\n",
            if i % 3 == 0 { "art" } else { "sports" }
        ));
    }
    std::fs::write(&file, csv).unwrap();
    let copy = format!(
        "\\copy articles (title, category) FROM '{}' WITH (FORMAT csv)",
        file.display()
    );
    let (ok, out) = tokio::task::block_in_place(|| psql(&node, &copy));
    assert!(ok, "{out}");
    let (ok, out) = tokio::task::block_in_place(|| {
        psql(&node, "SELECT category, count(*) FROM articles WHERE title LIKE 'title,%' GROUP BY 1 ORDER BY 1")
    });
    assert!(ok, "{out}");
    assert_eq!(out, "art|100\nsports|200\n");
    // Errors come back as psql prints them, with the connection still usable.
    let (ok, out) = tokio::task::block_in_place(|| psql(&node, "SELECT * FROM nowhere"));
    assert!(!ok);
    assert!(
        out.contains("ERROR:") && out.contains("relation \"nowhere\" does not exist"),
        "{out}"
    );
}
