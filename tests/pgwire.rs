//! pgwire end to end with a real driver (tokio-postgres) against a real node on 127.0.0.1.

mod common;

use common::TestNode;
use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a db error: {e}"))
}

async fn simple_rows(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_connect_queries_and_settings() {
    let node = TestNode::start().await;
    let c = node.client().await;
    let v: String = c.query_one("SELECT version()", &[]).await.unwrap().get(0);
    assert!(v.starts_with("PostgreSQL 16"), "{v}");
    let db: String = c
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, "cairn");
    let schema: String = c
        .query_one("SELECT current_schema()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema, "public");
    c.batch_execute("SET application_name = 'tests'")
        .await
        .unwrap();
    assert_eq!(
        simple_rows(&c, "SHOW application_name").await,
        vec![vec![Some("tests".into())]]
    );
    assert_eq!(
        simple_rows(&c, "SHOW transaction_isolation").await,
        vec![vec![Some("serializable".into())]]
    );
    let e = c.simple_query("SHOW no_such_setting").await.unwrap_err();
    assert_eq!(code(&e), "42704");
    c.batch_execute("SET cairn.read_consistency = 'any'")
        .await
        .unwrap();
    let e = c
        .batch_execute("SET cairn.read_consistency = 'sometimes'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_dml_and_queries() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute(
        "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL UNIQUE, region varchar(20) DEFAULT 'beijing', \
           age integer CHECK (age >= 0), created timestamptz DEFAULT now());
         CREATE TABLE reads (id bigserial PRIMARY KEY, uid integer NOT NULL REFERENCES users (id), aid integer, ts timestamp);
         CREATE INDEX reads_uid ON reads (uid);",
    )
    .await
    .unwrap();
    // Multi-row INSERT with RETURNING; serial ids are generated once, on the leader.
    let rows = c
        .query("INSERT INTO users (name, age) VALUES ('ann', 30), ('bob', 25), ('cyd', 41) RETURNING id, name", &[])
        .await
        .unwrap();
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert_eq!(
        c.execute(
            "INSERT INTO users (name, age) VALUES ('ann', 1) ON CONFLICT (name) DO NOTHING",
            &[]
        )
        .await
        .unwrap(),
        0
    );
    let r = c
        .query_one("INSERT INTO users (name, age) VALUES ('ann', 31) ON CONFLICT (name) DO UPDATE SET age = excluded.age RETURNING age", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 31);
    for (uid, aid) in [(1, 10), (1, 11), (2, 10), (3, 12), (3, 10)] {
        c.execute(
            "INSERT INTO reads (uid, aid, ts) VALUES ($1, $2, '2024-05-01 10:00:00')",
            &[&uid, &aid],
        )
        .await
        .unwrap();
    }
    // Joins, GROUP BY / HAVING, ORDER BY, LIMIT / OFFSET.
    let rows = c
        .query(
            "SELECT u.name, count(*) AS n FROM users u JOIN reads r ON r.uid = u.id GROUP BY u.name HAVING count(*) > 1 ORDER BY u.name",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![("ann".into(), 2), ("cyd".into(), 2)]);
    let names: Vec<String> = c
        .query(
            "SELECT name FROM users ORDER BY age DESC LIMIT 2 OFFSET 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["ann", "bob"]);
    // Subquery, CTE, window function.
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM users WHERE id IN (SELECT uid FROM reads WHERE aid = 10)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let r = c
        .query_one("WITH heavy AS (SELECT uid, count(*) AS c FROM reads GROUP BY uid) SELECT max(c) FROM heavy", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 2);
    let ranks: Vec<i64> = c
        .query(
            "SELECT rank() OVER (ORDER BY age DESC) FROM users ORDER BY age DESC",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ranks, vec![1, 2, 3]);
    // UPDATE / DELETE with RETURNING, and their counts.
    assert_eq!(
        c.execute("UPDATE users SET age = age + 1 WHERE age < 40", &[])
            .await
            .unwrap(),
        2
    );
    let r = c
        .query("DELETE FROM reads WHERE aid = $1 RETURNING uid", &[&12i32])
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, i32>(0), 3);
    // Defaults evaluated once, on the leader.
    let r = c
        .query_one("SELECT region, created FROM users WHERE name = 'bob'", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "beijing");
    let created: chrono::DateTime<chrono::Utc> = r.get(1);
    assert!((chrono::Utc::now() - created).num_seconds().abs() < 600);
    // ALTER TABLE ADD COLUMN; the new column's declared type is used on the wire.
    c.batch_execute("ALTER TABLE users ADD COLUMN score double precision DEFAULT 1.5")
        .await
        .unwrap();
    let s: f64 = c
        .query_one("SELECT score FROM users WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(s, 1.5);
    c.batch_execute("DROP INDEX reads_uid; DROP TABLE reads")
        .await
        .unwrap();
    let e = c.query("SELECT * FROM reads", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code(), &SqlState::UNDEFINED_TABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_in_binary() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute(
        "CREATE TABLE t (k integer PRIMARY KEY, b boolean, s smallint, i integer, l bigint, r real, d double precision, \
           n numeric(10,2), tx text, vc varchar(10), ch char(3), by bytea, dt date, ts timestamp, tz timestamptz, \
           j json, jb jsonb, u uuid)",
    )
    .await
    .unwrap();
    let date = chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let ts = date.and_hms_micro_opt(13, 14, 15, 123456).unwrap();
    let tz = chrono::DateTime::<chrono::Utc>::from_naive_utc_and_offset(ts, chrono::Utc);
    let uuid = uuid::Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
    let json = serde_json::json!({"a": [1, 2, {"b": null}]});
    let insert = c
        .prepare(
            "INSERT INTO t (k, b, s, i, l, r, d, tx, vc, ch, by, dt, ts, tz, j, jb, u) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .await
        .unwrap();
    c.execute(
        &insert,
        &[
            &1i32,
            &true,
            &-7i16,
            &2_000_000_000i32,
            &-9_000_000_000_000i64,
            &1.5f32,
            &-2.25e100f64,
            &"héllo",
            &"varchar",
            &"abc",
            &vec![0u8, 1, 255],
            &date,
            &ts,
            &tz,
            &json,
            &json,
            &uuid,
        ],
    )
    .await
    .unwrap();
    c.execute("UPDATE t SET n = 12345.67 WHERE k = 1", &[])
        .await
        .unwrap();
    let row = c.query_one("SELECT b, s, i, l, r, d, tx, vc, ch, by, dt, ts, tz, j, jb, u, n::text FROM t WHERE k = $1", &[&1i32]).await.unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i16>(1), -7);
    assert_eq!(row.get::<_, i32>(2), 2_000_000_000);
    assert_eq!(row.get::<_, i64>(3), -9_000_000_000_000);
    assert_eq!(row.get::<_, f32>(4), 1.5);
    assert_eq!(row.get::<_, f64>(5), -2.25e100);
    assert_eq!(row.get::<_, String>(6), "héllo");
    assert_eq!(row.get::<_, String>(7), "varchar");
    assert_eq!(row.get::<_, String>(8), "abc");
    assert_eq!(row.get::<_, Vec<u8>>(9), vec![0u8, 1, 255]);
    assert_eq!(row.get::<_, chrono::NaiveDate>(10), date);
    assert_eq!(row.get::<_, chrono::NaiveDateTime>(11), ts);
    assert_eq!(row.get::<_, chrono::DateTime<chrono::Utc>>(12), tz);
    assert_eq!(row.get::<_, serde_json::Value>(13), json);
    assert_eq!(row.get::<_, serde_json::Value>(14), json);
    assert_eq!(row.get::<_, uuid::Uuid>(15), uuid);
    assert_eq!(row.get::<_, String>(16), "12345.67");
    // The same row in text format (simple query protocol).
    let text = simple_rows(&c, "SELECT b, s, by, dt, ts, tz, u, n FROM t").await;
    assert_eq!(
        text,
        vec![vec![
            Some("t".into()),
            Some("-7".into()),
            Some("\\x0001ff".into()),
            Some("2024-02-29".into()),
            Some("2024-02-29 13:14:15.123456".into()),
            Some("2024-02-29 13:14:15.123456+00".into()),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            Some("12345.67".into()),
        ]]
    );
    // Parameters compared with columns take the column's type.
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM t WHERE u = $1 AND tz = $2 AND b = $3",
            &[&uuid, &tz, &true],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // NULLs of every type.
    c.execute("INSERT INTO t (k) VALUES (2)", &[])
        .await
        .unwrap();
    let row = c
        .query_one("SELECT b, s, by, tz, j, u FROM t WHERE k = 2", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<bool>>(0), None);
    assert_eq!(row.get::<_, Option<i16>>(1), None);
    assert_eq!(row.get::<_, Option<Vec<u8>>>(2), None);
    assert_eq!(row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(3), None);
    assert_eq!(row.get::<_, Option<serde_json::Value>>(4), None);
    assert_eq!(row.get::<_, Option<uuid::Uuid>>(5), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_sqlstates() {
    let node = TestNode::start().await;
    let c = node.client().await;
    // ch references p's distribution column and includes it in its key: co-located, so
    // the foreign key is enforced inside each shard.
    c.batch_execute("CREATE TABLE p (id integer PRIMARY KEY, v text NOT NULL); CREATE TABLE ch (pid integer REFERENCES p (id), id integer, PRIMARY KEY (pid, id))")
        .await
        .unwrap();
    c.execute("INSERT INTO p VALUES (1, 'a')", &[])
        .await
        .unwrap();
    let cases = [
        ("SELEC 1", "42601"),
        ("SELECT * FROM missing", "42P01"),
        ("INSERT INTO p VALUES (1, 'dup')", "23505"),
        ("INSERT INTO p VALUES (2, NULL)", "23502"),
        ("INSERT INTO ch VALUES (99, 1)", "23503"),
        // A foreign key that could not be checked on one shard is refused up front.
        (
            "CREATE TABLE far (id integer PRIMARY KEY, pid integer REFERENCES p (id))",
            "0A000",
        ),
        ("CREATE TABLE x (a money)", "0A000"),
        ("SELECT * FROM _cairn_state", "42501"),
        // A system catalog Cairn does not provide.
        ("SELECT * FROM pg_catalog.pg_shadow", "0A000"),
        ("SELECT no_such_function(1)", "42883"),
        ("SELECT missing_column FROM p", "42703"),
    ];
    for (sql, want) in cases {
        let e = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(code(&e), want, "{sql}: {e:?}");
    }
    // The connection is still fine.
    let n: i64 = c
        .query_one("SELECT count(*) FROM p", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_rollback_and_fail() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    c.batch_execute("CREATE TABLE acct (id integer PRIMARY KEY, bal integer NOT NULL)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO acct VALUES (1, 100), (2, 100)")
        .await
        .unwrap();

    // Commit: both updates visible together; reads inside see the transaction's own writes.
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE acct SET bal = bal - 30 WHERE id = 1", &[])
        .await
        .unwrap();
    let inside: i32 = tx
        .query_one("SELECT bal FROM acct WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(inside, 70);
    tx.execute("UPDATE acct SET bal = bal + 30 WHERE id = 2", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let total: i64 = c
        .query_one("SELECT sum(bal) FROM acct", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 200);
    let b1: i32 = c
        .query_one("SELECT bal FROM acct WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(b1, 70);

    // Rollback: nothing applied.
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE acct SET bal = 0", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    let total: i64 = c
        .query_one("SELECT sum(bal) FROM acct", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 200);

    // An error fails the transaction: later statements get 25P02, COMMIT rolls back.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("UPDATE acct SET bal = bal + 1000 WHERE id = 1")
        .await
        .unwrap();
    let e = c
        .batch_execute("INSERT INTO acct VALUES (1, 5)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "23505");
    let e = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), "25P02");
    let msgs = c.simple_query("COMMIT").await.unwrap();
    assert!(matches!(
        msgs.last(),
        Some(SimpleQueryMessage::CommandComplete(_))
    ));
    let b1: i32 = c
        .query_one("SELECT bal FROM acct WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(b1, 70);

    // DDL inside a transaction commits atomically with the rows written after it.
    c.batch_execute("BEGIN; CREATE TABLE audit (id integer PRIMARY KEY, note text); INSERT INTO audit VALUES (1, 'x'); COMMIT")
        .await
        .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM audit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    c.batch_execute("BEGIN; CREATE TABLE gone (id integer); INSERT INTO gone VALUES (1); ROLLBACK")
        .await
        .unwrap();
    assert_eq!(
        code(&c.simple_query("SELECT * FROM gone").await.unwrap_err()),
        "42P01"
    );

    // Several statements in one simple query are one implicit transaction.
    let e = c
        .batch_execute("UPDATE acct SET bal = 1 WHERE id = 2; INSERT INTO acct VALUES (1, 1)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "23505");
    let b2: i32 = c
        .query_one("SELECT bal FROM acct WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(b2, 130);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_inside_a_transaction_releases_the_writer() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute("CREATE TABLE kv (k integer PRIMARY KEY, v integer)")
        .await
        .unwrap();
    {
        let other = node.client().await;
        other
            .batch_execute("BEGIN; INSERT INTO kv VALUES (1, 1)")
            .await
            .unwrap();
        // The client goes away without COMMIT.
    }
    // Another client can write (the writer was released) and the open write never landed.
    // Within the writer's wait limit: a write that waited it out would mean the
    // abandoned transaction still held the writer.
    tokio::time::timeout(
        cairn::limits::WRITER_WAIT_TIMEOUT,
        c.execute("INSERT INTO kv VALUES (2, 2)", &[]),
    )
    .await
    .expect("the abandoned transaction still holds the writer")
    .unwrap();
    let keys: Vec<i32> = c
        .query("SELECT k FROM kv ORDER BY k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_autocommit_writers_are_group_committed() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute("CREATE TABLE log (id integer PRIMARY KEY, who integer)")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..8i32 {
        let pg = node.pg;
        tasks.push(tokio::spawn(async move {
            let c = common::connect(pg).await;
            let stmt = c.prepare("INSERT INTO log VALUES ($1, $2)").await.unwrap();
            for i in 0..50i32 {
                c.execute(&stmt, &[&(w * 1000 + i), &w]).await.unwrap();
            }
            // One duplicate fails alone; its batch-mates are unaffected.
            let e = c.execute(&stmt, &[&(w * 1000), &w]).await.unwrap_err();
            assert_eq!(code(&e), "23505");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_accepts_text_format_parameters() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute(
        "CREATE TABLE t (k integer PRIMARY KEY, b boolean, s smallint, l bigint, r real, d double precision, n numeric, \
           tx text, vc varchar(10), ch char(3), by bytea, dt date, ts timestamp, tz timestamptz, j json, jb jsonb, u uuid)",
    )
    .await
    .unwrap();
    let addr = node.pg;
    tokio::task::spawn_blocking(move || {
        let mut r = common::Raw::startup(addr);
        let values: [&[u8]; 17] = [
            b"1", b"yes", b"-32768", b"9223372036854775807", b"1.25", b"-1e-300", b"123456789.25", b"t\xc3\xa9xt",
            b"vc", b"abc", b"\\xdeadbeef", b"2000-02-29", b"2024-06-30T23:59:59.5", b"2024-06-30 23:59:59-07:00",
            b"[1,\"two\"]", b"{\"k\": true}", b"{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}",
        ];
        let params: Vec<Option<&[u8]>> = values.iter().map(|v| Some(*v)).collect();
        let msgs = r.extended(
            "INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            &[],
            &[0],
            &params,
        );
        assert_eq!(common::Raw::error_code(&msgs), None, "{msgs:?}");
    })
    .await
    .unwrap();
    let text = simple_rows(
        &c,
        "SELECT b, s, l, r, d, n, tx, vc, ch, by, dt, ts, tz, j, jb, u FROM t",
    )
    .await;
    let want = [
        "t",
        "-32768",
        "9223372036854775807",
        "1.25",
        "-1e-300",
        "123456789.25",
        "téxt",
        "vc",
        "abc",
        "\\xdeadbeef",
        "2000-02-29",
        "2024-06-30 23:59:59.5",
        "2024-07-01 06:59:59+00",
        "[1,\"two\"]",
        "{\"k\": true}",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ];
    assert_eq!(
        text,
        vec![want.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_stops_a_running_query() {
    let node = TestNode::start().await;
    let c = node.client().await;
    let token = c.cancel_token();
    let long = tokio::spawn(async move {
        c.simple_query("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n")
            .await
            .map(|_| ())
    });
    // Cancel until the query has been seen running and stopped (a cancel that arrives before
    // the query starts is a no-op, as in PostgreSQL).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !long.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "query was not cancelled"
        );
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let e = long.await.unwrap().unwrap_err();
    assert_eq!(code(&e), "57014", "{e}");
    // The node is fine and its read connections are free again.
    let again = node.client().await;
    let n: i64 = again
        .query_one("SELECT count(*) FROM t_missing_ok", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
    assert_eq!(n, 0);
    let v: i32 = again.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_in_text_and_csv_into_a_distributed_table() {
    use futures::SinkExt;
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute(
        "CREATE TABLE loaded (id integer PRIMARY KEY, name text, score double precision, seen timestamptz)",
    )
    .await
    .unwrap();
    // Text format, in chunks that cut rows anywhere, with escapes and NULLs.
    let mut text = String::new();
    for i in 0..5000 {
        text.push_str(&format!("{i}\tname\\t{i}\t{}\t\\N\n", i as f64 / 4.0));
    }
    let sink = c.copy_in("COPY loaded FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    for chunk in text.as_bytes().chunks(777) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 5000);
    // CSV with a header, quoted fields and a column list.
    let sink = c
        .copy_in("COPY loaded (id, name) FROM STDIN WITH (FORMAT csv, HEADER true)")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"id,name\n5000,\"Smith, J\"\n5001,\"said \"\"hi\"\"\"\n5002,\n",
    ))
    .await
    .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    let row = c
        .query_one(
            "SELECT count(*), sum(score), count(seen), min(name), count(name) FROM loaded",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 5003);
    assert_eq!(
        row.get::<_, f64>(1),
        (0..5000).map(|i| i as f64 / 4.0).sum::<f64>()
    );
    assert_eq!(row.get::<_, i64>(2), 0);
    assert_eq!(row.get::<_, String>(3), "Smith, J");
    assert_eq!(row.get::<_, i64>(4), 5002);
    let name: String = c
        .query_one("SELECT name FROM loaded WHERE id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "name\t7");
    // Bad data is a clear error naming the line and column; the session goes on.
    let sink = c.copy_in("COPY loaded FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"9001\tx\tnot a number\t\\N\n"))
        .await
        .unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(code(&e), "22P02", "{e:?}");
    assert!(format!("{e:?}").contains("line 1, column score"), "{e:?}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM loaded", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5003);
    // COPY TO: a query's rows in text (escapes, NULLs) and CSV (header, quoting).
    let read = |sql: &'static str| {
        let c = &c;
        async move {
            let stream = c.copy_out(sql).await.unwrap();
            futures::pin_mut!(stream);
            let mut out = Vec::new();
            while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
                out.extend_from_slice(&chunk.unwrap());
            }
            String::from_utf8(out).unwrap()
        }
    };
    let text =
        read("COPY (SELECT id, name, score, seen FROM loaded WHERE id < 2 ORDER BY id) TO STDOUT")
            .await;
    assert_eq!(text, "0\tname\\t0\t0\t\\N\n1\tname\\t1\t0.25\t\\N\n");
    let csv =
        read("COPY (SELECT id, name FROM loaded WHERE id = 1) TO STDOUT WITH (FORMAT csv, HEADER)")
            .await;
    assert_eq!(csv, "id,name\n1,name\t1\n");
    let e = c
        .simple_query("COPY loaded TO STDOUT (FORMAT binary)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
}

/// NULLs sort as in PostgreSQL: last ascending, first descending, unless NULLS FIRST/LAST
/// says otherwise — on a distributed table (merged at the coordinator) and a one-shard one,
/// in ORDER BY, window definitions and ordered aggregates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nulls_sort_as_in_postgresql() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute(
        "CREATE TABLE nd (id integer PRIMARY KEY, v integer);
         CREATE TABLE n1 (id integer, v integer);
         INSERT INTO nd VALUES (1, 2), (2, NULL), (3, 1), (4, NULL), (5, 3);
         INSERT INTO n1 VALUES (1, 2), (2, NULL), (3, 1), (4, NULL), (5, 3);",
    )
    .await
    .unwrap();
    for t in ["nd", "n1"] {
        let col = |sql: String| {
            let c = &c;
            async move {
                simple_rows(c, &sql)
                    .await
                    .into_iter()
                    .map(|r| r[0].clone().unwrap_or_else(|| "null".into()))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        assert_eq!(
            col(format!("SELECT v FROM {t} ORDER BY v")).await,
            "1,2,3,null,null"
        );
        assert_eq!(
            col(format!("SELECT v FROM {t} ORDER BY v DESC")).await,
            "null,null,3,2,1"
        );
        assert_eq!(
            col(format!("SELECT v FROM {t} ORDER BY v NULLS FIRST")).await,
            "null,null,1,2,3"
        );
        assert_eq!(
            col(format!(
                "SELECT v FROM {t} ORDER BY v DESC NULLS LAST LIMIT 3"
            ))
            .await,
            "3,2,1"
        );
        assert_eq!(
            col(format!(
                "SELECT rn FROM (SELECT v, row_number() OVER (ORDER BY v) AS rn FROM {t}) s WHERE v IS NULL ORDER BY rn"
            ))
            .await,
            "4,5"
        );
    }
}

/// A COPY that fails part way reports exactly what was loaded: each batch of rows (spread
/// over every shard of the table) commits whole or not at all, so the rows present are the
/// batches before the failing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_failing_part_way_reports_exactly_what_was_loaded() {
    use futures::SinkExt;
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute(
        "CREATE TABLE cp (id integer PRIMARY KEY, v text); INSERT INTO cp VALUES (3500, 'old')",
    )
    .await
    .unwrap();
    let mut text = String::new();
    for i in 0..6000 {
        text.push_str(&format!("{i}\tv\n"));
    }
    let sink = c.copy_in("COPY cp FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    let mut result = Ok(());
    for chunk in text.as_bytes().chunks(4096) {
        result = sink.send(bytes::Bytes::copy_from_slice(chunk)).await;
        if result.is_err() {
            break;
        }
    }
    let e = match result {
        Ok(()) => sink.finish().await.unwrap_err(),
        Err(e) => e,
    };
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "23505", "{e}");
    let loaded: u64 = db
        .message()
        .split('(')
        .next_back()
        .and_then(|m| m.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in: {}", db.message()));
    let present: i64 = c
        .query_one("SELECT count(*) FROM cp WHERE v = 'v'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(present as u64, loaded, "{}", db.message());
    assert!(loaded > 0 && loaded < 3500, "{}", db.message());
}

/// A literal compared with a column is a value of the column's type, as in PostgreSQL:
/// `b = 't'`, an upper-case uuid, an ISO timestamp with `T` and `Z` all find the row (they
/// were compared as text with the stored form and found nothing), in WHERE, IN and
/// BETWEEN, on a distributed table and a one-shard one; `n = 'abc'` is 22P02.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literals_compare_as_values_of_the_column_type() {
    let node = TestNode::start().await;
    let c = node.client().await;
    for t in ["lt_d", "lt_1"] {
        let key = if t == "lt_d" { "PRIMARY KEY" } else { "" };
        c.batch_execute(&format!(
            "CREATE TABLE {t} (id integer {key}, b boolean, u uuid, ts timestamptz, d date, n integer);
             INSERT INTO {t} VALUES
               (1, true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-06-02 10:00:00+00', '2026-06-02', 5),
               (2, false, 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '2026-05-01 10:00:00+00', '2026-05-01', 6);"
        ))
        .await
        .unwrap();
        let count = |sql: String| {
            let c = &c;
            async move {
                c.query_one(&sql, &[])
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .get::<_, i64>(0)
            }
        };
        for (filter, want) in [
            ("b = 't'", 1),
            ("b = 'true'", 1),
            ("b <> 'yes'", 1),
            ("u = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", 1),
            ("u IN ('A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12}')", 2),
            ("ts > '2026-06-01T00:00:00Z'", 1),
            ("ts BETWEEN '2026-04-30T00:00:00Z' AND '2026-05-02T00:00:00+02:00'", 1),
            ("d >= '2026-06-01'", 1),
            ("n = '5'", 1),
        ] {
            assert_eq!(
                count(format!("SELECT count(*) FROM {t} WHERE {filter}")).await,
                want,
                "{t}: {filter}"
            );
        }
        let e = c
            .query_one(&format!("SELECT count(*) FROM {t} WHERE n = 'abc'"), &[])
            .await
            .unwrap_err();
        assert_eq!(code(&e), "22P02", "{e}");
    }
}

/// What drivers and ORMs ask first, over the extended protocol (prepared, described,
/// typed): the server version, settings, and the catalogs' tables, columns and keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_find_the_server_version_settings_and_catalogs() {
    let node = common::TestNode::start().await;
    let c = node.client().await;
    c.batch_execute(
        "CREATE TABLE acct (id bigint PRIMARY KEY, owner varchar(40) NOT NULL, bal numeric(12,2));
         CREATE TABLE entry (id bigint, acct bigint REFERENCES acct (id), note text, PRIMARY KEY (acct, id))",
    )
    .await
    .unwrap();
    let version: String = c
        .query_one("SELECT pg_catalog.version()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("PostgreSQL 16."), "{version}");
    let row = c
        .query_one(
            "SELECT current_setting('server_version_num'), pg_catalog.current_setting('standard_conforming_strings')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("160000".into(), "on".into())
    );
    // Parameters, typed results: a relation's OID and its columns.
    let oid: u32 = c
        .query_one(
            "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = $1 AND n.nspname = 'public' AND c.relkind = 'r'",
            &[&"acct"],
        )
        .await
        .unwrap()
        .get(0);
    let columns = c
        .query(
            "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull \
             FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .unwrap();
    let columns: Vec<(String, String, bool)> = columns
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        columns,
        vec![
            ("id".into(), "bigint".into(), true),
            ("owner".into(), "character varying(40)".into(), true),
            ("bal".into(), "numeric(12,2)".into(), false),
        ]
    );
    // Key columns in key order, as SQLAlchemy reads them: arrays expanded in a SELECT list
    // (`unnest`, `generate_subscripts`), `= ANY (ARRAY[...])`, `bool_and`.
    let entry: u32 = c
        .query_one("SELECT oid FROM pg_class WHERE relname = 'entry'", &[])
        .await
        .unwrap()
        .get(0);
    let key: Vec<String> = c
        .query(
            "SELECT a.attname FROM pg_catalog.pg_attribute a JOIN \
             (SELECT i.indrelid, unnest(i.indkey) AS attnum, generate_subscripts(i.indkey, 1) AS ord \
              FROM pg_catalog.pg_index i WHERE i.indisprimary) k \
             ON a.attrelid = k.indrelid AND a.attnum = k.attnum \
             WHERE a.attrelid = $1 ORDER BY k.ord",
            &[&entry],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(key, ["acct", "id"]);
    let row = c
        .query_one(
            "SELECT count(*), bool_and(relhasindex) FROM pg_catalog.pg_class \
             WHERE relkind = ANY (ARRAY['r', 'p']) AND relname !~ '^pg_'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (2, true));
    // information_schema, as ORMs read keys.
    let keys = c
        .query(
            "SELECT tc.table_name, tc.constraint_type, kcu.column_name \
             FROM information_schema.table_constraints tc \
             JOIN information_schema.key_column_usage kcu ON kcu.constraint_name = tc.constraint_name \
             ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .unwrap();
    let keys: Vec<(String, String, String)> = keys
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("acct".into(), "PRIMARY KEY".into(), "id".into()),
            ("entry".into(), "FOREIGN KEY".into(), "acct".into()),
            ("entry".into(), "PRIMARY KEY".into(), "acct".into()),
            ("entry".into(), "PRIMARY KEY".into(), "id".into()),
        ]
    );
    let tables: Vec<String> = c
        .query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["acct", "entry"]);
    // The catalogs are read-only, and a query may not mix them with tables.
    let e = c.batch_execute("DROP TABLE pg_class").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e:?}");
    let e = c
        .query("SELECT * FROM acct JOIN pg_class ON true", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e:?}");
}
