//! The key-value HTTP API (`/v1/kv`) end to end with a real HTTP client (ureq) against real
//! nodes on 127.0.0.1: values and versions, preconditions, TTLs, paging, transactions
//! across shards, subscriptions to a prefix, and coded errors for bad input.

mod common;

use common::{Cluster, TestNode, Ws};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// An answer: status, headers we look at, body bytes.
struct Answer {
    status: u16,
    etag: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The error code of a JSON error answer.
    fn code(&self) -> String {
        let v = self.json();
        v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {v}"))
            .to_string()
    }
}

fn answer(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut resp = resp.expect("request");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (etag, content_type) = (header("etag"), header("content-type"));
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .expect("body");
    Answer {
        status: resp.status().as_u16(),
        etag,
        content_type,
        body,
    }
}

fn put(http: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut req = agent().put(&format!("http://{http}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req.send(body))
}

fn get(http: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = agent().get(&format!("http://{http}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req.call())
}

fn delete(http: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = agent().delete(&format!("http://{http}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req.call())
}

fn post(http: SocketAddr, path: &str, body: &str) -> Answer {
    answer(
        agent()
            .post(&format!("http://{http}{path}"))
            .header("content-type", "application/json")
            .send(body),
    )
}

fn sql(http: SocketAddr, statement: &str) -> Value {
    let a = post(http, "/v1/sql", &json!({ "sql": statement }).to_string());
    assert_eq!(a.status, 200, "{}", a.json());
    a.json()
}

/// A put that must succeed; its version.
fn put_ok(http: SocketAddr, key: &str, value: &str) -> i64 {
    let a = put(
        http,
        &format!("/v1/kv/{key}"),
        &[("content-type", "text/plain")],
        value.as_bytes(),
    );
    assert_eq!(a.status, 200, "put {key}: {}", a.json());
    let version = a.json()["version"].as_i64().expect("a version");
    assert_eq!(a.etag.as_deref(), Some(format!("\"{version}\"").as_str()));
    version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_stored_read_listed_and_deleted_with_versions() {
    let node = TestNode::start().await;
    let http = node.http;

    // Absent before the first write (the table does not exist yet): a coded 404.
    let a = get(http, "/v1/kv/cart/1", &[]);
    assert_eq!((a.status, a.code().as_str()), (404, "not_found"));
    assert_eq!(
        get(http, "/v1/kv?prefix=cart/", &[]).json()["items"],
        json!([])
    );

    let v1 = put_ok(http, "cart/1", "apples");
    let a = get(http, "/v1/kv/cart/1", &[]);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b"apples");
    assert_eq!(a.content_type.as_deref(), Some("text/plain"));
    assert_eq!(a.etag, Some(format!("\"{v1}\"")));

    // A new version on every write; the old one no longer matches.
    let v2 = put_ok(http, "cart/1", "pears");
    assert!(v2 > v1, "versions grow: {v1} then {v2}");
    let a = get(
        http,
        "/v1/kv/cart/1",
        &[("if-none-match", &format!("\"{v1}\""))],
    );
    assert_eq!((a.status, a.body.as_slice()), (200, b"pears".as_slice()));
    let a = get(
        http,
        "/v1/kv/cart/1",
        &[("if-none-match", &format!("\"{v2}\""))],
    );
    assert_eq!(a.status, 304, "unchanged since v2");

    // Any bytes, kept as sent, with their content type (or none).
    let bytes: Vec<u8> = (0..=255u8).collect();
    let a = put(http, "/v1/kv/blob", &[], &bytes);
    assert_eq!(a.status, 200);
    let a = get(http, "/v1/kv/blob", &[]);
    assert_eq!(a.body, bytes);
    assert_eq!(a.content_type.as_deref(), Some("application/octet-stream"));
    // Keys with spaces and slashes travel percent-encoded.
    put_ok(http, "cart/with%20space", "x");
    assert_eq!(get(http, "/v1/kv/cart/with%20space", &[]).body, b"x");
    // The key named like the transaction endpoint is a key like any other.
    put_ok(http, "txn", "t");
    assert_eq!(get(http, "/v1/kv/txn", &[]).body, b"t");

    // Listing: in key order, paged with `after`, only the prefix's keys.
    for i in 2..=5 {
        put_ok(http, &format!("cart/{i}"), &format!("item {i}"));
    }
    put_ok(http, "carton", "not in cart/");
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            None => "/v1/kv?prefix=cart/&limit=2".to_string(),
            Some(k) => format!(
                "/v1/kv?prefix=cart/&limit=2&after={}",
                k.replace(' ', "%20")
            ),
        };
        let page = get(http, &path, &[]).json();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            keys.push(item["key"].as_str().unwrap().to_string());
            assert!(item["version"].as_i64().is_some(), "{item}");
        }
        match page["next"].as_str() {
            Some(k) => after = Some(k.to_string()),
            None => break,
        }
    }
    assert_eq!(
        keys,
        [
            "cart/1",
            "cart/2",
            "cart/3",
            "cart/4",
            "cart/5",
            "cart/with space"
        ]
    );
    assert_eq!(pages, 3);
    let listed = get(http, "/v1/kv?prefix=cart/1", &[]).json();
    assert_eq!(listed["items"][0]["value"], "pears");
    let listed = get(http, "/v1/kv?prefix=blob", &[]).json();
    assert!(listed["items"][0]["value_base64"].is_string(), "{listed}");

    // Readable through SQL.
    let rows = sql(
        http,
        "SELECT key, value, content_type FROM cairn_kv WHERE key = 'cart/2'",
    );
    assert_eq!(
        rows["rows"],
        json!([["cart/2", "\\x6974656d2032", "text/plain"]])
    );

    // Delete: gone, and a second delete says nothing was there.
    let a = delete(http, "/v1/kv/cart/1", &[]);
    assert_eq!(a.json(), json!({"key": "cart/1", "deleted": true}));
    assert_eq!(get(http, "/v1/kv/cart/1", &[]).status, 404);
    let a = delete(http, "/v1/kv/cart/1", &[]);
    assert_eq!(a.json(), json!({"key": "cart/1", "deleted": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preconditions_decide_writes_and_a_failed_one_answers_412() {
    let node = TestNode::start().await;
    let http = node.http;
    let path = "/v1/kv/lock";
    // Create-only: the first succeeds, the second finds the key.
    let a = put(http, path, &[("if-none-match", "*")], b"mine");
    assert_eq!(a.status, 200, "{}", a.json());
    let v = a.json()["version"].as_i64().unwrap();
    let a = put(http, path, &[("if-none-match", "*")], b"theirs");
    assert_eq!((a.status, a.code().as_str()), (412, "precondition_failed"));
    // Compare-and-set on the version.
    let a = put(http, path, &[("if-match", "\"1\"")], b"theirs");
    assert_eq!(a.status, 412);
    let a = put(http, path, &[("if-match", &format!("\"{v}\""))], b"renewed");
    assert_eq!(a.status, 200);
    let v2 = a.json()["version"].as_i64().unwrap();
    // The old version no longer matches, for writes or deletes.
    let a = delete(http, path, &[("if-match", &format!("\"{v}\""))]);
    assert_eq!(a.status, 412);
    assert_eq!(get(http, path, &[]).body, b"renewed");
    let a = delete(http, path, &[("if-match", &format!("\"{v2}\""))]);
    assert_eq!(a.status, 200);
    // If-Match on a key that is not there fails too; a malformed tag is a bad request.
    assert_eq!(put(http, path, &[("if-match", "\"5\"")], b"x").status, 412);
    let a = put(http, path, &[("if-match", "five")], b"x");
    assert_eq!((a.status, a.code().as_str()), (400, "bad_request"));
    assert_eq!(get(http, path, &[]).status, 404, "no failed write applied");
    // Re-created after a delete: a version it never had before.
    let a = put(http, path, &[("if-none-match", "*")], b"again");
    assert!(a.json()["version"].as_i64().unwrap() > v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_applies_all_of_its_steps_across_shards_or_none() {
    let node = TestNode::start().await;
    let http = node.http;
    let v = put_ok(http, "acct/a", "100");
    // 20 keys hashed over the 4 shards (all on one: odds of 4 in 4^20), with a condition that fails at the end: nothing.
    let mut ops: Vec<Value> = (0..20)
        .map(|i| json!({"put": format!("acct/n{i}"), "value": "1"}))
        .collect();
    ops.push(json!({"check": "acct/a", "if_version": v + 1}));
    let a = post(http, "/v1/kv/txn", &json!({ "ops": ops }).to_string());
    assert_eq!((a.status, a.code().as_str()), (412, "precondition_failed"));
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("step 20"));
    assert_eq!(
        get(http, "/v1/kv?prefix=acct/n", &[]).json()["items"],
        json!([])
    );

    // The same with a condition that holds: every step, and what each did.
    ops.pop();
    ops.push(json!({"check": "acct/a", "if_version": v}));
    ops.push(json!({"put": "acct/a", "value": "80", "if_version": v}));
    ops.push(json!({"delete": "acct/missing"}));
    ops.push(json!({"put": "acct/bin", "value_base64": "AAEC", "ttl": "1h"}));
    let a = post(http, "/v1/kv/txn", &json!({ "ops": ops }).to_string());
    assert_eq!(a.status, 200, "{}", a.json());
    let results = a.json()["results"].clone();
    assert_eq!(results.as_array().unwrap().len(), 24);
    assert_eq!(results[20]["version"], v);
    assert!(results[21]["version"].as_i64().unwrap() > v);
    assert_eq!(results[22]["deleted"], false);
    let listed = get(http, "/v1/kv?prefix=acct/n&limit=100", &[]).json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 20);
    assert_eq!(get(http, "/v1/kv/acct/a", &[]).body, b"80");
    assert_eq!(get(http, "/v1/kv/acct/bin", &[]).body, [0u8, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_coded_json_errors_and_the_node_keeps_serving() {
    let node = TestNode::start().await;
    let http = node.http;
    let long_key = "k".repeat(cairn::limits::KV_KEY_BYTES_MAX + 1);
    let a = put(http, &format!("/v1/kv/{long_key}"), &[], b"x");
    assert_eq!((a.status, a.code().as_str()), (413, "too_large"));
    let big = vec![b'v'; cairn::limits::KV_VALUE_BYTES_MAX + 1];
    let a = put(http, "/v1/kv/big", &[], &big);
    assert_eq!((a.status, a.code().as_str()), (413, "too_large"));
    let huge = vec![b'v'; cairn::limits::HTTP_BODY_BYTES_MAX + 1];
    let a = put(http, "/v1/kv/huge", &[], &huge);
    assert_eq!((a.status, a.code().as_str()), (413, "too_large"));
    for (path, why) in [
        ("/v1/kv/t?ttl=soon", "a ttl that is not a duration"),
        ("/v1/kv/t?ttl=0s", "a zero ttl"),
        ("/v1/kv/t?color=red", "an unknown parameter"),
    ] {
        let a = put(http, path, &[], b"x");
        assert_eq!((a.status, a.code().as_str()), (400, "bad_request"), "{why}");
    }
    let a = put(http, "/v1/kv/t", &[("if-none-match", "\"3\"")], b"x");
    assert_eq!((a.status, a.code().as_str()), (400, "bad_request"));
    assert_eq!(get(http, "/v1/kv?limit=0", &[]).code(), "bad_request");
    assert_eq!(get(http, "/v1/kv?limit=many", &[]).code(), "bad_request");
    for body in [
        "not json",
        "{\"ops\": 3}",
        "{\"ops\": [{\"put\": \"a\"}]}",
        "{\"ops\": [{\"put\": \"a\", \"delete\": \"b\", \"value\": \"x\"}]}",
        "{\"ops\": [{\"check\": \"a\"}]}",
        "{\"ops\": [{\"put\": \"a\", \"value_base64\": \"***\"}]}",
        "{\"ops\": [{\"delete\": \"a\", \"ttl\": \"1s\"}]}",
        "{\"ops\": [{\"put\": \"\", \"value\": \"x\"}]}",
    ] {
        let a = post(http, "/v1/kv/txn", body);
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "bad_request"),
            "{body}"
        );
    }
    let ops: Vec<Value> = (0..=cairn::limits::KV_TXN_OPS_MAX)
        .map(|i| json!({"delete": format!("k{i}")}))
        .collect();
    let a = post(http, "/v1/kv/txn", &json!({ "ops": ops }).to_string());
    assert_eq!((a.status, a.code().as_str()), (413, "too_large"));
    // Nothing of it was stored, and the node still serves.
    assert_eq!(get(http, "/v1/kv?prefix=", &[]).json()["items"], json!([]));
    put_ok(http, "fine", "yes");
}

/// A node's view of one key: its status there, read at `consistency`.
fn status_on(http: SocketAddr, key: &str, consistency: &str) -> u16 {
    get(
        http,
        &format!("/v1/kv/{key}?consistency={consistency}"),
        &[],
    )
    .status
}

#[test]
fn sixteen_clients_incrementing_one_key_by_cas_end_at_the_number_of_successes() {
    let cluster = Cluster::start(3, &[]);
    let nodes: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    put_ok(nodes[0], "counter", "0");
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let http = nodes[c % nodes.len()];
            std::thread::spawn(move || {
                let mut won = 0;
                for _ in 0..12 {
                    let a = get(http, "/v1/kv/counter", &[]);
                    assert_eq!(a.status, 200);
                    let n: i64 = String::from_utf8(a.body).unwrap().parse().unwrap();
                    let tag = a.etag.expect("an etag");
                    let a = put(
                        http,
                        "/v1/kv/counter",
                        &[("if-match", &tag)],
                        (n + 1).to_string().as_bytes(),
                    );
                    match a.status {
                        200 => won += 1,
                        412 => {}
                        other => panic!("increment answered {other}: {}", a.json()),
                    }
                }
                won
            })
        })
        .collect();
    let won: i64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(won > 0);
    for http in &nodes {
        let a = get(*http, "/v1/kv/counter", &[]);
        assert_eq!(String::from_utf8(a.body).unwrap(), won.to_string());
    }
}

#[test]
fn an_expired_key_is_gone_on_every_node_and_then_deleted() {
    let cluster = Cluster::start(3, &[]);
    let nodes: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    let a = put(nodes[0], "/v1/kv/session/1?ttl=2s", &[], b"token");
    assert_eq!(a.status, 200, "{}", a.json());
    put_ok(nodes[0], "session/2", "stays");
    for http in &nodes {
        assert_eq!(status_on(*http, "session/1", "linearizable"), 200);
    }
    let listed = get(nodes[1], "/v1/kv?prefix=session/", &[]).json();
    assert!(listed["items"][0]["expires_at"].is_string(), "{listed}");
    // Past its time it is absent everywhere, at every consistency.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_on(nodes[0], "session/1", "linearizable") == 200 {
        assert!(Instant::now() < deadline, "the key never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    for http in &nodes {
        for consistency in ["linearizable", "any"] {
            assert_eq!(
                status_on(*http, "session/1", consistency),
                404,
                "{http} {consistency}"
            );
        }
        let listed = get(*http, "/v1/kv?prefix=session/", &[]).json();
        let keys: Vec<&str> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["session/2"]);
    }
    // And removed through Raft: the row is gone from every replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gone = nodes.iter().all(|http| {
            let a = post(
                *http,
                "/v1/sql",
                &json!({"sql": "SELECT count(*) FROM cairn_kv WHERE key = 'session/1'", "consistency": "any"}).to_string(),
            );
            a.json()["rows"][0][0] == 0
        });
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the expired key was never deleted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(nodes[2], "/v1/kv/session/2", &[]).body, b"stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_subscription_gets_the_prefixs_puts_and_deletes() {
    let node = TestNode::start().await;
    let http = node.http;
    // Subscribing before any key exists works.
    let mut ws = Ws::connect(http).await;
    ws.subscribe("carts", json!({"prefix": "cart/"})).await;
    let writes = tokio::task::spawn_blocking(move || {
        put_ok(http, "cart/1", "apples");
        put_ok(http, "other/1", "not for this subscriber");
        put_ok(http, "cart/1", "pears");
        let a = delete(http, "/v1/kv/cart/1", &[]);
        assert_eq!(a.status, 200);
    });
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 3 {
        assert!(Instant::now() < deadline, "events so far: {got:?}");
        let m = ws.expect().await;
        assert!(m["error"].is_null(), "{m}");
        if !m["event"].is_null() {
            let e = &m["event"];
            got.push((
                e["op"].as_str().unwrap().to_string(),
                e["key"]["key"].as_str().unwrap().to_string(),
                e["new"]["value"].as_str().map(str::to_string),
            ));
        }
    }
    writes.await.unwrap();
    assert_eq!(
        got,
        [
            ("insert".into(), "cart/1".into(), Some("apples".into())),
            ("update".into(), "cart/1".into(), Some("pears".into())),
            ("delete".into(), "cart/1".into(), None),
        ]
    );
}
