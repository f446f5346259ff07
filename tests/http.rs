//! HTTP API end to end with a real HTTP client (ureq) against a real node on 127.0.0.1.

mod common;

use common::TestNode;
use serde_json::{json, Value};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn post(url: &str, body: &str) -> (u16, Value) {
    let mut resp = agent()
        .post(&format!("{url}/v1/sql"))
        .header("content-type", "application/json")
        .send(body)
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
    )
}

fn sql(url: &str, body: Value) -> (u16, Value) {
    post(url, &body.to_string())
}

fn post_to(url: &str, path: &str, body: Value) -> (u16, Value) {
    let mut resp = agent()
        .post(&format!("{url}{path}"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
    )
}

/// Open an HTTP transaction; its id.
fn begin(url: &str, body: Value) -> String {
    let (s, v) = post_to(url, "/v1/txn", body);
    assert_eq!(s, 200, "{v}");
    v["txn"].as_str().unwrap().to_string()
}

fn in_txn(url: &str, txn: &str, sql: &str) -> (u16, Value) {
    post_to(url, &format!("/v1/txn/{txn}/sql"), json!({ "sql": sql }))
}

fn count(url: &str) -> Value {
    let (s, v) = sql(
        url,
        json!({"sql": "SELECT count(*), coalesce(sum(n), 0) FROM ledger"}),
    );
    assert_eq!(s, 200, "{v}");
    v["rows"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_transactions_over_http_commit_roll_back_and_expire() {
    let node = TestNode::start().await;
    let url = node.url();
    tokio::task::spawn_blocking(move || {
        let (s, v) = sql(&url, json!({"sql": "CREATE TABLE ledger (id integer PRIMARY KEY, n integer) WITH (shard_count = 4)"}));
        assert_eq!(s, 200, "{v}");

        // Writes on several shards, read back inside, invisible outside until COMMIT.
        let txn = begin(&url, json!({}));
        let (s, v) = post_to(&url, &format!("/v1/txn/{txn}/sql"), json!({"statements": [
            {"sql": "INSERT INTO ledger VALUES ($1, $2)", "params": [1, 10]},
            {"sql": "INSERT INTO ledger VALUES (2, 20), (3, 30), (4, 40), (5, 50)"}
        ]}));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["results"][1]["rows_affected"], 4);
        let (s, v) = in_txn(&url, &txn, "SELECT sum(n) FROM ledger");
        assert_eq!((s, v["rows"].clone()), (200, json!([[150]])), "{v}");
        assert_eq!(count(&url), json!([0, 0]), "no dirty reads");
        let (s, v) = post_to(&url, &format!("/v1/txn/{txn}/commit"), json!({}));
        assert_eq!((s, v["committed"].clone()), (200, json!(true)), "{v}");
        assert_eq!(count(&url), json!([5, 150]));
        // The id is gone once the transaction ended.
        let (s, v) = in_txn(&url, &txn, "SELECT 1");
        assert_eq!((s, v["error"]["code"].as_str()), (404, Some("25P01")), "{v}");

        // ROLLBACK undoes everything; savepoints work inside.
        let txn = begin(&url, json!({}));
        assert_eq!(in_txn(&url, &txn, "UPDATE ledger SET n = n + 1").0, 200);
        assert_eq!(in_txn(&url, &txn, "SAVEPOINT a").0, 200);
        assert_eq!(in_txn(&url, &txn, "DELETE FROM ledger WHERE id = 1").0, 200);
        assert_eq!(in_txn(&url, &txn, "ROLLBACK TO SAVEPOINT a").0, 200);
        let (_, v) = in_txn(&url, &txn, "SELECT count(*), sum(n) FROM ledger");
        assert_eq!(v["rows"], json!([[5, 155]]), "{v}");
        let (s, v) = post_to(&url, &format!("/v1/txn/{txn}/rollback"), json!({}));
        assert_eq!((s, v["rolled_back"].clone()), (200, json!(true)), "{v}");
        assert_eq!(count(&url), json!([5, 150]));

        // Ending the transaction by SQL is refused: it has its own endpoints.
        let txn = begin(&url, json!({}));
        let (s, v) = in_txn(&url, &txn, "COMMIT");
        assert_eq!(s, 400, "{v}");
        // A failed statement fails the transaction; COMMIT then reports the rollback.
        let (s, v) = in_txn(&url, &txn, "INSERT INTO ledger VALUES (6, 60)");
        assert_eq!(s, 200, "{v}");
        let (s, v) = in_txn(&url, &txn, "INSERT INTO ledger VALUES (1, 0)");
        assert_eq!((s, v["error"]["code"].as_str()), (400, Some("23505")), "{v}");
        let (s, v) = in_txn(&url, &txn, "SELECT 1");
        assert_eq!((s, v["error"]["code"].as_str()), (400, Some("25P02")), "{v}");
        let (s, v) = post_to(&url, &format!("/v1/txn/{txn}/commit"), json!({}));
        assert_eq!((s, v["error"]["code"].as_str()), (409, Some("25P02")), "{v}");
        assert_eq!(count(&url), json!([5, 150]));

        // An idle transaction is rolled back after its timeout and frees its shards.
        let (s, v) = post_to(&url, "/v1/txn", json!({"timeout": "forever"}));
        assert_eq!((s, v["error"]["code"].as_str()), (400, Some("22023")), "{v}");
        let txn = begin(&url, json!({"timeout": "1s"}));
        assert_eq!(in_txn(&url, &txn, "UPDATE ledger SET n = 0").0, 200);
        // A write to the same shards waits for the transaction's writers, which come free
        // when the idle transaction is rolled back (no request touches it meanwhile).
        let (s, v) = sql(&url, json!({"sql": "UPDATE ledger SET n = n * 2"}));
        assert_eq!((s, v["rows_affected"].clone()), (200, json!(5)), "{v}");
        let (s, v) = in_txn(&url, &txn, "SELECT 1");
        assert_eq!((s, v["error"]["code"].as_str()), (404, Some("25P01")), "{v}");
        assert_eq!(count(&url), json!([5, 300]));
        let (s, v) = post_to(&url, "/v1/txn/0000/commit", json!({}));
        assert_eq!((s, v["error"]["code"].as_str()), (404, Some("25P01")), "{v}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_params_batches_and_errors() {
    let node = TestNode::start().await;
    let url = node.url();
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        let url = u;
        let (s, _) = sql(&url, json!({"sql": "CREATE TABLE items (id integer PRIMARY KEY, name text, price numeric, ok boolean, meta jsonb, at timestamptz)"}));
        assert_eq!(s, 200);
        let (s, v) = sql(
            &url,
            json!({"sql": "INSERT INTO items VALUES ($1, $2, $3, $4, $5, $6)", "params": [1, "lamp", 9.5, true, {"color": "red"}, "2024-01-02T03:04:05+01:00"]}),
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["rows_affected"], 1);
        let (s, v) = sql(&url, json!({"sql": "SELECT id, name, price, ok, meta, at FROM items WHERE id = $1", "params": [1]}));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["columns"], json!(["id", "name", "price", "ok", "meta", "at"]));
        assert_eq!(v["types"], json!(["integer", "text", "numeric", "boolean", "jsonb", "timestamp with time zone"]));
        assert_eq!(v["rows"], json!([[1, "lamp", 9.5, true, {"color": "red"}, "2024-01-02 02:04:05+00"]]));

        // A batch is atomic: the failing statement takes the others with it.
        let (s, v) = sql(
            &url,
            json!({"statements": [
                {"sql": "INSERT INTO items (id, name) VALUES (2, 'desk')"},
                {"sql": "INSERT INTO items (id, name) VALUES (1, 'dup')"}
            ]}),
        );
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], "23505");
        assert!(v["error"]["message"].as_str().unwrap().starts_with("statement 1:"), "{v}");
        let (_, v) = sql(&url, json!({"sql": "SELECT count(*) FROM items"}));
        assert_eq!(v["rows"], json!([[1]]));
        let (s, v) = sql(
            &url,
            json!({"statements": [
                {"sql": "INSERT INTO items (id, name) VALUES ($1, $2)", "params": [2, "desk"]},
                {"sql": "UPDATE items SET price = 20 WHERE id = 2 RETURNING name"}
            ]}),
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["results"][1]["rows"], json!([["desk"]]));

        // Errors are JSON with a SQLSTATE code and a 4xx status.
        for (body, status, code) in [
            (json!({"sql": "SELEC 1"}), 400, "42601"),
            (json!({"sql": "SELECT * FROM nope"}), 400, "42P01"),
            (json!({"sql": "SELECT $1::integer", "params": ["x"]}), 400, "22P02"),
            (json!({"sql": "SELECT 1", "params": [1]}), 400, "08P01"),
            (json!({"nothing": true}), 400, "08P01"),
            (json!({"sql": "SELECT 1", "consistency": "whenever"}), 400, "22023"),
        ] {
            let (s, v) = sql(&url, body.clone());
            assert_eq!((s, v["error"]["code"].as_str().unwrap_or("")), (status, code), "{body}: {v}");
        }
        // The body is JSON whatever the Content-Type (curl -d sends a form type).
        let mut resp = agent()
            .post(&format!("{url}/v1/sql"))
            .header("content-type", "application/x-www-form-urlencoded")
            .send(r#"{"sql": "SELECT 2 * 21"}"#)
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.body_mut().read_to_string().unwrap().contains("[[42]]"));
        let (s, v) = post(&url, "{not json");
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], "08P01");
        // Reads may name their consistency.
        let (s, v) = sql(&url, json!({"sql": "SELECT count(*) FROM items", "consistency": "any"}));
        assert_eq!((s, v["rows"].clone()), (200, json!([[2]])));

        // Arrays travel as JSON arrays, both ways; intervals as PostgreSQL prints them.
        let (s, v) = sql(&url, json!({"sql": "CREATE TABLE tagged (id integer PRIMARY KEY, tags text[], marks integer[], flags boolean[], wait interval)"}));
        assert_eq!(s, 200, "{v}");
        let (s, v) = sql(
            &url,
            json!({"sql": "INSERT INTO tagged VALUES ($1, $2, $3, $4, $5)", "params": [1, ["a", "b c", null], [3, 1], [true, false], "90 minutes"]}),
        );
        assert_eq!(s, 200, "{v}");
        let (s, v) = sql(&url, json!({"sql": "SELECT tags, marks, flags, wait, marks[1] FROM tagged WHERE 'a' = ANY(tags) AND id = ANY($1)", "params": [[1, 2]]}));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["types"], json!(["text[]", "integer[]", "boolean[]", "interval", "integer"]), "{v}");
        assert_eq!(v["rows"], json!([[["a", "b c", null], [3, 1], [true, false], "01:30:00", 3]]), "{v}");

        let mut resp = agent().get(&format!("{url}/health")).call().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["shards"][0]["leader"], "n1");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_are_refused_and_the_node_keeps_serving() {
    let node = TestNode::start().await;
    let url = node.url();
    tokio::task::spawn_blocking(move || {
        let huge = format!("{{\"sql\": \"SELECT '{}'\"}}", "x".repeat(cairn::limits::HTTP_BODY_BYTES_MAX + 10));
        let (s, v) = post(&url, &huge);
        assert_eq!(s, 413, "{v}");
        assert_eq!(v["error"]["code"], "54000");
        // Within the body limit but over the SQL text limit.
        let long = json!({"sql": format!("SELECT '{}'", "y".repeat(cairn::limits::SQL_TEXT_BYTES_MAX + 10))});
        let (s, v) = sql(&url, long);
        assert_eq!(s, 413, "{v}");
        assert_eq!(v["error"]["code"], "54000");
        let (s, v) = sql(&url, json!({"sql": "SELECT 1 + 1"}));
        assert_eq!((s, v["rows"].clone()), (200, json!([[2]])));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_statements_and_show_each_replicas_raft_state() {
    let node = TestNode::start().await;
    let url = node.url();
    tokio::task::block_in_place(|| {
        let (status, _) = sql(
            &url,
            json!({"sql": "CREATE TABLE m (k integer PRIMARY KEY, v text) WITH (shard_count = 2)"}),
        );
        assert_eq!(status, 200);
        for k in 0..5 {
            let (status, _) = sql(
                &url,
                json!({"sql": "INSERT INTO m VALUES ($1, 'x')", "params": [k]}),
            );
            assert_eq!(status, 200);
        }
        let (status, _) = sql(&url, json!({"sql": "SELECT * FROM nowhere"}));
        assert_eq!(status, 400);
        let mut resp = agent()
            .get(&format!("{url}/metrics"))
            .call()
            .expect("metrics");
        assert_eq!(resp.status().as_u16(), 200);
        let text = resp.body_mut().read_to_string().unwrap();
        let value = |line_start: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(line_start))
                .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        assert_eq!(
            value("cairn_statements_total{kind=\"write\",outcome=\"ok\"}"),
            5.0
        );
        assert_eq!(
            value("cairn_statements_total{kind=\"read\",outcome=\"error\"}"),
            1.0
        );
        // A lone node leads the meta group and both shards of the table.
        for shard in ["meta", "s1", "s2"] {
            assert_eq!(
                value(&format!("cairn_raft_is_leader{{shard=\"{shard}\"}}")),
                1.0
            );
            assert!(value(&format!("cairn_leader_changes_total{{shard=\"{shard}\"}}")) >= 1.0);
            assert!(value(&format!("cairn_raft_term{{shard=\"{shard}\"}}")) >= 1.0);
        }
        assert_eq!(value("cairn_catalog_tables"), 1.0);
        assert!(text.contains("cairn_statement_seconds_bucket"), "{text}");
    });
}
