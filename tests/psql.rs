//! Smoke test with the real `psql` client. `.ci/run` installs it and sets
//! CAIRN_REQUIRE_PSQL=1; elsewhere the test says it was skipped when psql is missing.

mod common;

use common::TestNode;
use std::process::Command;

/// psql with `options` on `url` running `command`: whether it succeeded, and what it printed.
fn run_psql(options: &[&str], url: &str, command: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args(options)
        .arg(url)
        .arg("-c")
        .arg(command)
        .output()
        .expect("run psql");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn psql(node: &TestNode, script: &str) -> (bool, String) {
    run_psql(
        &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-F", "|"],
        &format!("postgres://smoke@{}/cairn", node.pg),
        script,
    )
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

/// psql's meta-command output (aligned, with headers) through `pg`.
fn meta(pg: std::net::SocketAddr, command: &str) -> String {
    let (ok, text) = run_psql(
        &["-X", "-v", "ON_ERROR_STOP=1"],
        &format!("postgres://cairn@{pg}/cairn"),
        command,
    );
    assert!(ok, "{command}: {text}");
    assert!(!text.contains("ERROR"), "{command}: {text}");
    text
}

/// The line of `out` that starts (after spaces) with `first`, split into its cells.
fn row(out: &str, first: &str) -> Vec<String> {
    out.lines()
        .map(|l| {
            l.split('|')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().map(String::as_str) == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_describes_tables_keys_and_indexes_on_every_node() {
    if Command::new("psql").arg("--version").output().is_err() {
        assert!(
            std::env::var("CAIRN_REQUIRE_PSQL").is_err(),
            "psql is required here but not installed"
        );
        println!("psql is not installed; skipped (install postgresql-client to run it)");
        return;
    }
    let cluster = tokio::task::block_in_place(|| common::Cluster::start(3, &[]));
    let c = common::connect(cluster.nodes[0].pg).await;
    c.batch_execute(
        "CREATE TABLE users (id integer PRIMARY KEY, name varchar(20) NOT NULL DEFAULT 'x', email text UNIQUE);
         CREATE INDEX users_name ON users (name);
         CREATE TABLE orders (id bigint PRIMARY KEY, uid integer REFERENCES users (id), total numeric(10,2), at timestamptz);
         CREATE TABLE notes (body text)",
    )
    .await
    .unwrap();
    // Through another node than the one that made them.
    let pg = cluster.nodes[2].pg;
    tokio::task::block_in_place(|| {
        let dt = meta(pg, "\\dt");
        for t in ["notes", "orders", "users"] {
            assert!(
                dt.lines()
                    .any(|l| l.contains(&format!("| {t} ")) && l.contains("| table |")),
                "{t} in:\n{dt}"
            );
        }
        assert!(
            !dt.contains("pg_class"),
            "system tables are not listed:\n{dt}"
        );

        let users = meta(pg, "\\d users");
        assert!(users.contains("Table \"public.users\""), "{users}");
        assert_eq!(row(&users, "id")[1..4], ["integer", "", "not null"]);
        assert_eq!(
            row(&users, "name")[1..5],
            ["character varying(20)", "", "not null", "'x'"]
        );
        assert_eq!(row(&users, "email")[1..4], ["text", "", ""]);
        assert!(
            users.contains("\"users_pkey\" PRIMARY KEY, btree (id)"),
            "{users}"
        );
        assert!(
            users.contains("\"users_email_key\" UNIQUE CONSTRAINT, btree (email)"),
            "{users}"
        );
        assert!(users.contains("\"users_name\" btree (name)"), "{users}");
        assert!(
            users.contains("TABLE \"orders\" CONSTRAINT \"orders_uid_fkey\" FOREIGN KEY (uid) REFERENCES users(id)"),
            "{users}"
        );

        let orders = meta(pg, "\\d orders");
        assert_eq!(row(&orders, "id")[1..4], ["bigint", "", "not null"]);
        assert_eq!(row(&orders, "total")[1], "numeric(10,2)");
        assert_eq!(row(&orders, "at")[1], "timestamp with time zone");
        assert!(
            orders.contains("\"orders_uid_fkey\" FOREIGN KEY (uid) REFERENCES users(id)"),
            "{orders}"
        );

        let di = meta(pg, "\\di");
        for (index, table) in [
            ("users_pkey", "users"),
            ("users_name", "users"),
            ("orders_pkey", "orders"),
        ] {
            assert!(
                di.lines()
                    .any(|l| l.contains(&format!("| {index} ")) && l.trim_end().ends_with(table)),
                "{index} on {table} in:\n{di}"
            );
        }
        let l = meta(pg, "\\l");
        assert_eq!(row(&l, "cairn")[2], "UTF8", "{l}");
        let dn = meta(pg, "\\dn");
        assert_eq!(row(&dn, "public")[1], "cairn", "{dn}");
        let du = meta(pg, "\\du");
        assert!(row(&du, "cairn")[1].contains("Superuser"), "{du}");
        // Nothing of these kinds exists yet: psql says so instead of failing.
        for (command, said) in [
            ("\\dv", "Did not find any relations."),
            ("\\ds", "Did not find any relations."),
        ] {
            assert!(meta(pg, command).contains(said), "{command}");
        }
    });
    // Views, sequences (made and implicit), identity columns and comments, made through
    // one node and described through another.
    c.batch_execute(
        "CREATE TABLE books (id serial PRIMARY KEY, title text NOT NULL, price numeric(8,2));
         CREATE TABLE events (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, at timestamptz);
         CREATE VIEW cheap_books AS SELECT id, title, price FROM books WHERE price < 10;
         CREATE SEQUENCE order_seq INCREMENT 5 START 10 MAXVALUE 1000;
         COMMENT ON TABLE books IS 'every book we sell';
         COMMENT ON COLUMN books.title IS 'as printed on the cover'",
    )
    .await
    .unwrap();
    tokio::task::block_in_place(|| {
        let dv = meta(pg, "\\dv");
        assert!(
            dv.lines()
                .any(|l| l.contains("| cheap_books ") && l.contains("| view ")),
            "{dv}"
        );
        let view = meta(pg, "\\d cheap_books");
        assert!(view.contains("View \"public.cheap_books\""), "{view}");
        assert_eq!(row(&view, "price")[1], "numeric(8,2)", "{view}");
        let ds = meta(pg, "\\ds");
        for s in ["books_id_seq", "events_id_seq", "order_seq"] {
            assert!(
                ds.lines()
                    .any(|l| l.contains(&format!("| {s} ")) && l.contains("| sequence ")),
                "{s} in:\n{ds}"
            );
        }
        let seq = meta(pg, "\\d order_seq");
        assert!(seq.contains("Sequence \"public.order_seq\""), "{seq}");
        assert_eq!(row(&seq, "bigint")[1..5], ["10", "1", "1000", "5"], "{seq}");
        let owned = meta(pg, "\\d books_id_seq");
        assert!(owned.contains("Owned by: public.books.id"), "{owned}");
        let books = meta(pg, "\\d+ books");
        assert_eq!(
            row(&books, "id")[4],
            "nextval('books_id_seq'::regclass)",
            "{books}"
        );
        assert_eq!(
            row(&books, "title").last().map(String::as_str),
            Some("as printed on the cover"),
            "{books}"
        );
        let events = meta(pg, "\\d events");
        assert_eq!(
            row(&events, "id")[4],
            "generated by default as identity",
            "{events}"
        );
        let dt = meta(pg, "\\dt+ books");
        assert!(dt.contains("every book we sell"), "{dt}");
        // Cairn's own functions are in `public`, PostgreSQL's in `pg_catalog` (\dfS).
        let df = meta(pg, "\\df");
        assert!(
            df.lines()
                .any(|l| l.contains("| create_distributed_table ") && l.contains("| void ")),
            "{df}"
        );
        let dfs = meta(pg, "\\dfS array_agg");
        assert!(dfs.contains("| agg"), "{dfs}");
        let (_, said) = run_psql(
            &["-X"],
            &format!("postgres://cairn@{pg}/cairn"),
            "\\d nosuch",
        );
        assert!(
            said.contains("Did not find any relation named \"nosuch\""),
            "{said}"
        );
    });
}
