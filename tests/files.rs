//! Files over HTTP (`/v1/files`) end to end against real `cairn start` processes on
//! 127.0.0.1: a large file through one node read whole and in ranges from the others with
//! the nodes' memory bounded, preconditions and coded errors, atomic overwrites and renames
//! under concurrent readers, and uploads cut off (client gone, receiving node killed, a
//! chunk shard's leader killed) that leave nothing visible and have their chunks collected.

mod common;

use common::{wait_for, Cluster};
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Old versions and silent uploads are collected this long after, so the tests see it.
const GC_AFTER: &str = "3s";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

struct Answer {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn code(&self) -> String {
        let v = self.json();
        v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {v}"))
            .to_string()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

fn answer(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut resp = resp.expect("request");
    let headers = resp.headers().clone();
    let body = resp
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_vec()
        .unwrap_or_default();
    Answer {
        status: resp.status().as_u16(),
        headers,
        body,
    }
}

fn request(
    method: &str,
    http: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let url = format!("http://{http}{path}");
    let a = agent();
    macro_rules! with_headers {
        ($req:expr) => {{
            let mut req = $req;
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req
        }};
    }
    match method {
        "GET" => answer(with_headers!(a.get(&url)).call()),
        "HEAD" => answer(with_headers!(a.head(&url)).call()),
        "DELETE" => answer(with_headers!(a.delete(&url)).call()),
        "PUT" => answer(with_headers!(a.put(&url)).send(body.unwrap_or_default())),
        "POST" => answer(with_headers!(a.post(&url)).send(body.unwrap_or_default())),
        "PATCH" => answer(with_headers!(a.patch(&url)).send(body.unwrap_or_default())),
        other => panic!("no method {other}"),
    }
}

fn put(http: SocketAddr, path: &str, body: &[u8]) -> Answer {
    request("PUT", http, &format!("/v1/files/{path}"), &[], Some(body))
}

fn get(http: SocketAddr, path: &str) -> Answer {
    request("GET", http, &format!("/v1/files/{path}"), &[], None)
}

fn sql(http: SocketAddr, statement: &str) -> Value {
    let body = json!({ "sql": statement, "consistency": "linearizable" }).to_string();
    let a = request("POST", http, "/v1/sql", &[], Some(body.as_bytes()));
    assert_eq!(a.status, 200, "{statement}: {}", a.json());
    a.json()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).expect("open");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            return hex(&hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// A process's resident memory and its peak so far, in KiB (Linux).
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Chunk rows and non-current version rows left in the cluster.
fn leftovers(http: SocketAddr) -> (i64, i64) {
    let chunks = sql(http, "SELECT count(*) FROM cairn_file_chunks")["rows"][0][0]
        .as_i64()
        .unwrap();
    let versions = sql(
        http,
        "SELECT count(*) FROM cairn_file_versions WHERE state <> 'current'",
    )["rows"][0][0]
        .as_i64()
        .unwrap();
    (chunks, versions)
}

/// Chunks the current files need (each file's `chunks`).
fn chunks_in_use(http: SocketAddr) -> i64 {
    sql(
        http,
        "SELECT coalesce(sum(chunks), 0) FROM cairn_file_versions WHERE state = 'current'",
    )["rows"][0][0]
        .as_i64()
        .unwrap()
}

/// Wait until only the current files' chunks and rows remain.
fn wait_collected(http: SocketAddr, what: &str) {
    let mut last = (0, 0);
    wait_for(
        || {
            last = leftovers(http);
            last == (chunks_in_use(http), 0)
        },
        Duration::from_secs(90),
        what,
    );
}

#[test]
fn a_large_file_through_one_node_is_read_whole_and_in_ranges_from_the_others_in_bounded_memory() {
    let mib: usize = std::env::var("CAIRN_FILES_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let cluster = Cluster::start(3, &["--files-gc-after", GC_AFTER]);
    let nodes: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("upload.bin");
    {
        let mut f = std::fs::File::create(&source).unwrap();
        for _ in 0..mib {
            f.write_all(&random_bytes(1 << 20)).unwrap();
        }
        // Not a whole number of chunks.
        f.write_all(&random_bytes(12_345)).unwrap();
    }
    let size = std::fs::metadata(&source).unwrap().len();
    let expected = sha256_file(&source);
    // Warm the nodes up (tables made, connections open) before the memory baseline.
    assert_eq!(put(nodes[0], "warm", b"up").status, 200);
    assert_eq!(get(nodes[1], "warm").status, 200);
    let before: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| memory_kib(n.child.id()).0)
        .collect();

    let url = |i: usize, path: &str| format!("http://{}/v1/files/{path}", nodes[i]);
    let started = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-T"])
        .arg(&source)
        .args(["-H", "Content-Type: application/x-test"])
        .arg(url(0, "big/upload.bin"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "upload: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("uploaded {size} bytes in {:?}", started.elapsed());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["sha256"], expected, "{answer}");
    assert_eq!(answer["size"], size);

    for i in [1, 2] {
        let target = dir.path().join(format!("down{i}.bin"));
        let started = Instant::now();
        let out = Command::new("curl")
            .args(["-sS", "--fail", "-o"])
            .arg(&target)
            .arg(url(i, "big/upload.bin"))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "download from node {}: {out:?}",
            i + 1
        );
        eprintln!("downloaded from node {} in {:?}", i + 1, started.elapsed());
        assert_eq!(sha256_file(&target), expected, "node {}", i + 1);
    }
    // Ranges: inside a chunk, across chunk boundaries, the tail, a suffix.
    let whole = std::fs::read(&source).unwrap();
    let chunk = 256 * 1024u64;
    for (first, last) in [
        (0, 99),
        (chunk - 10, chunk + 10),
        (3 * chunk, 5 * chunk + 7),
        (size - 100, size - 1),
    ] {
        let a = request(
            "GET",
            nodes[2],
            "/v1/files/big/upload.bin",
            &[("range", &format!("bytes={first}-{last}"))],
            None,
        );
        assert_eq!(a.status, 206);
        assert_eq!(
            a.header("content-range").unwrap(),
            format!("bytes {first}-{last}/{size}")
        );
        assert!(
            a.body == whole[first as usize..=last as usize],
            "bytes {first}-{last} differ"
        );
    }
    let a = request(
        "GET",
        nodes[1],
        "/v1/files/big/upload.bin",
        &[("range", "bytes=-5")],
        None,
    );
    assert_eq!(a.body, whole[whole.len() - 5..]);

    // Memory: nothing held the file whole (a generous bound, far below the file's size).
    for (i, n) in cluster.nodes.iter().enumerate() {
        let (rss, peak) = memory_kib(n.child.id());
        let grew_mib = peak.saturating_sub(before[i]) / 1024;
        eprintln!(
            "node {}: RSS {} MiB before, {} MiB now, peak {} MiB",
            i + 1,
            before[i] / 1024,
            rss / 1024,
            peak / 1024
        );
        assert!(
            grew_mib < (mib as u64 * 3 / 4).max(64),
            "node {} peaked {grew_mib} MiB above its RSS before a {mib} MiB file",
            i + 1
        );
    }
}

#[test]
fn preconditions_ranges_listing_and_bad_input_answer_as_documented() {
    let cluster = Cluster::start(3, &["--files-gc-after", GC_AFTER]);
    let n: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    let one = b"first version".to_vec();
    let a = request(
        "PUT",
        n[0],
        "/v1/files/docs/a.txt",
        &[("content-type", "text/plain"), ("if-none-match", "*")],
        Some(&one),
    );
    assert_eq!(a.status, 200, "{}", a.json());
    let sha_one = sha256_hex(&one);
    assert_eq!(a.header("etag").unwrap(), format!("\"{sha_one}\""));
    assert_eq!(a.json()["path"], "docs/a.txt");

    // Create-only refuses an existing file; If-Match needs the current SHA-256.
    let again = request(
        "PUT",
        n[1],
        "/v1/files/docs/a.txt",
        &[("if-none-match", "*")],
        Some(b"x"),
    );
    assert_eq!(
        (again.status, again.code().as_str()),
        (412, "precondition_failed")
    );
    let wrong = request(
        "PUT",
        n[1],
        "/v1/files/docs/a.txt",
        &[("if-match", &format!("\"{}\"", "0".repeat(64)))],
        Some(b"x"),
    );
    assert_eq!(wrong.status, 412);
    let two = b"second version, longer".to_vec();
    let ok = request(
        "PUT",
        n[2],
        "/v1/files/docs/a.txt",
        &[
            ("if-match", &format!("\"{sha_one}\"")),
            ("content-type", "text/plain"),
        ],
        Some(&two),
    );
    assert_eq!(ok.status, 200, "{}", ok.json());
    let sha_two = sha256_hex(&two);

    // Reads: headers, HEAD, 304, ranges, 416.
    let r = get(n[1], "docs/a.txt");
    assert_eq!(r.body, two);
    assert_eq!(r.header("content-type").unwrap(), "text/plain");
    assert_eq!(r.header("etag").unwrap(), format!("\"{sha_two}\""));
    assert_eq!(r.header("accept-ranges").unwrap(), "bytes");
    assert!(r.header("last-modified").unwrap().ends_with(" GMT"));
    let h = request("HEAD", n[2], "/v1/files/docs/a.txt", &[], None);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length").unwrap(), two.len().to_string());
    assert!(h.body.is_empty());
    let same = request(
        "GET",
        n[0],
        "/v1/files/docs/a.txt",
        &[("if-none-match", &format!("\"{sha_two}\""))],
        None,
    );
    assert_eq!(same.status, 304);
    let part = request(
        "GET",
        n[0],
        "/v1/files/docs/a.txt",
        &[("range", "bytes=7-13")],
        None,
    );
    assert_eq!((part.status, part.body.as_slice()), (206, &two[7..14]));
    let stale_range = request(
        "GET",
        n[0],
        "/v1/files/docs/a.txt",
        &[
            ("range", "bytes=7-13"),
            ("if-range", &format!("\"{sha_one}\"")),
        ],
        None,
    );
    assert_eq!((stale_range.status, stale_range.body), (200, two.clone()));
    let past = request(
        "GET",
        n[0],
        "/v1/files/docs/a.txt",
        &[("range", "bytes=100-")],
        None,
    );
    assert_eq!(
        (past.status, past.code().as_str()),
        (416, "range_not_satisfiable")
    );
    assert_eq!(
        past.header("content-range").unwrap(),
        format!("bytes */{}", two.len())
    );

    // An empty file is a file.
    assert_eq!(put(n[0], "docs/empty", b"").status, 200);
    let e = get(n[2], "docs/empty");
    assert_eq!((e.status, e.body.len()), (200, 0));

    // Listing: a prefix, paging, and the SQL view.
    for i in 0..5 {
        assert_eq!(
            put(n[i % 3], &format!("list/f{i}"), &[i as u8; 10]).status,
            200
        );
    }
    let page = request("GET", n[1], "/v1/files?prefix=list/&limit=3", &[], None).json();
    let paths: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["list/f0", "list/f1", "list/f2"]);
    assert_eq!(page["next"], "list/f2");
    let rest = request(
        "GET",
        n[2],
        "/v1/files?prefix=list/&after=list/f2",
        &[],
        None,
    )
    .json();
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert_eq!(rest["next"], Value::Null);
    assert_eq!(rest["items"][0]["size"], 10);
    let rows = sql(
        n[0],
        "SELECT path, size, sha256 FROM cairn_files ORDER BY path",
    );
    assert_eq!(rows["rows"][0], json!(["docs/a.txt", two.len(), sha_two]));
    assert_eq!(rows["rows"].as_array().unwrap().len(), 7);

    // Delete: a wrong SHA-256 refuses, the right one deletes, a second delete says so.
    let refused = request(
        "DELETE",
        n[1],
        "/v1/files/docs/a.txt",
        &[("if-match", &format!("\"{sha_one}\""))],
        None,
    );
    assert_eq!(refused.status, 412);
    let gone = request("DELETE", n[1], "/v1/files/docs/a.txt", &[], None);
    assert_eq!(gone.json()["deleted"], true);
    let again = request("DELETE", n[2], "/v1/files/docs/a.txt", &[], None);
    assert_eq!(again.json()["deleted"], false);
    let missing = get(n[0], "docs/a.txt");
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (404, "not_found")
    );

    // Bad paths and requests: coded errors, and nothing stored.
    for path in ["a/../b", "a//b", "dir/", "a%00b", "%2E%2E/x", "a%0Ab"] {
        let a = request("PUT", n[0], &format!("/v1/files/{path}"), &[], Some(b"x"));
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "bad_request"),
            "{path}"
        );
    }
    let not_utf8 = raw(n[0], b"PUT /v1/files/a%ff HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx");
    assert!(not_utf8.starts_with("HTTP/1.1 400"), "{not_utf8}");
    assert!(not_utf8.contains("\"bad_request\""), "{not_utf8}");
    let long = "x".repeat(2000);
    let a = request("PUT", n[0], &format!("/v1/files/{long}"), &[], Some(b"x"));
    assert_eq!((a.status, a.code().as_str()), (413, "too_large"));
    let a = request("POST", n[0], "/v1/files/list/f0", &[], None);
    assert_eq!(a.status, 400);
    let a = request(
        "PUT",
        n[0],
        "/v1/files/x",
        &[("if-match", "\"42\"")],
        Some(b"x"),
    );
    assert_eq!(a.status, 400);
    let a = request("GET", n[0], "/v1/files?limit=0", &[], None);
    assert_eq!(a.status, 400);
    let huge = raw(
        n[0],
        b"PUT /v1/files/huge HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999\r\nConnection: close\r\n\r\n",
    );
    assert!(huge.starts_with("HTTP/1.1 413"), "{huge}");
    let listed = request("GET", n[0], "/v1/files?prefix=", &[], None).json();
    let all: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        all,
        [
            "docs/empty",
            "list/f0",
            "list/f1",
            "list/f2",
            "list/f3",
            "list/f4"
        ]
    );
    // The replaced and deleted versions are collected.
    wait_collected(n[2], "old versions collected");
}

/// Send raw bytes, read the answer until the server closes.
fn raw(http: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn overwrites_and_renames_are_atomic_under_concurrent_readers() {
    let cluster = Cluster::start(3, &["--files-gc-after", GC_AFTER]);
    let n: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    // Contents spanning several chunks, each different in every chunk.
    let versions: Vec<Vec<u8>> = (0..4).map(|_| random_bytes(700 * 1024)).collect();
    let shas: Vec<String> = versions.iter().map(|v| sha256_hex(v)).collect();
    assert_eq!(put(n[0], "hot/file", &versions[0]).status, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let check = |a: &Answer| {
        if a.status == 200 {
            let sha = sha256_hex(&a.body);
            assert!(shas.contains(&sha), "a read returned a mix of versions");
            assert_eq!(a.header("etag").unwrap(), format!("\"{sha}\""));
        }
    };
    std::thread::scope(|s| {
        let mut readers = Vec::new();
        for &http in &n {
            let stop = stop.clone();
            readers.push(s.spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let a = get(http, "hot/file");
                    assert_eq!(a.status, 200, "the file vanished during overwrites");
                    check(&a);
                    reads += 1;
                }
                reads
            }));
        }
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (http, body) = (n[w % 3], &versions[w]);
                s.spawn(move || {
                    let mut done = 0;
                    for _ in 0..4 {
                        let a = put(http, "hot/file", body);
                        assert_eq!(a.status, 200, "{}", a.json());
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let writes: i32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads: i32 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        eprintln!("{writes} overwrites, {reads} reads");
        assert_eq!(writes, 16);
        assert!(reads > 0);
    });
    // One complete version, the same on every node.
    let last: Vec<String> = n
        .iter()
        .map(|h| sha256_hex(&get(*h, "hot/file").body))
        .collect();
    assert!(shas.contains(&last[0]));
    assert!(last.iter().all(|s| *s == last[0]), "{last:?}");

    // Renames: after each rename is answered, the new path has the whole file and the old
    // one none, on every node; readers racing it never see a part of it.
    let body = &versions[1];
    assert_eq!(put(n[1], "moving/0", body).status, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (stop, http) = (stop.clone(), n[r + 1]);
                s.spawn(move || {
                    let mut seen = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for i in 0..8 {
                            let a = get(http, &format!("moving/{i}"));
                            match a.status {
                                200 => {
                                    assert!(a.body == *body, "a renamed file read partly");
                                    seen += 1;
                                }
                                404 => {}
                                other => panic!("read answered {other}"),
                            }
                        }
                    }
                    seen
                })
            })
            .collect();
        for i in 0..7 {
            let a = request(
                "POST",
                n[i % 3],
                &format!("/v1/files/moving/{i}?rename_to=moving/{}", i + 1),
                &[],
                None,
            );
            assert_eq!(a.status, 200, "{}", a.json());
            for http in &n {
                assert_eq!(get(*http, &format!("moving/{i}")).status, 404);
                assert!(get(*http, &format!("moving/{}", i + 1)).body == *body);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen: i32 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(seen > 0);
    });
    // A rename onto an existing file replaces it; a missing source is 404.
    assert_eq!(put(n[0], "moving/other", b"replaced").status, 200);
    let a = request(
        "POST",
        n[0],
        "/v1/files/moving/7?rename_to=moving/other",
        &[],
        None,
    );
    assert_eq!(a.status, 200);
    assert!(get(n[2], "moving/other").body == *body);
    let a = request(
        "POST",
        n[0],
        "/v1/files/moving/7?rename_to=moving/x",
        &[],
        None,
    );
    assert_eq!((a.status, a.code().as_str()), (404, "not_found"));
    wait_collected(n[0], "overwritten versions collected");
}

#[test]
fn an_upload_cut_off_leaves_nothing_visible_and_its_chunks_are_collected() {
    let mut cluster = Cluster::start(3, &["--files-gc-after", GC_AFTER]);
    let n: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    assert_eq!(put(n[0], "keep", b"kept").status, 200);

    // 1. The client goes away half-way.
    let mut s = TcpStream::connect(n[1]).unwrap();
    write!(
        s,
        "PUT /v1/files/cut/client HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        8 << 20
    )
    .unwrap();
    for _ in 0..12 {
        s.write_all(&random_bytes(256 * 1024)).unwrap();
    }
    // Cut off once the cluster holds some of its chunks.
    wait_for(
        || leftovers(n[0]).0 > chunks_in_use(n[0]) + 4,
        Duration::from_secs(60),
        "chunks of the cut-off upload written",
    );
    drop(s);
    assert_eq!(get(n[0], "cut/client").status, 404);
    wait_collected(n[0], "the cut-off upload's chunks collected");

    // 2. The node receiving an upload is killed -9 half-way.
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("f.bin");
    std::fs::write(&source, random_bytes(48 << 20)).unwrap();
    let mut curl = Command::new("curl")
        .args(["-sS", "--limit-rate", "4M", "-T"])
        .arg(&source)
        .arg(format!("http://{}/v1/files/cut/killed", n[2]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        || leftovers(n[0]).0 > chunks_in_use(n[0]) + 4,
        Duration::from_secs(60),
        "chunks of the upload written",
    );
    cluster.nodes[2].kill9();
    let _ = curl.wait();
    assert_eq!(get(n[0], "cut/killed").status, 404);
    assert_eq!(get(n[1], "cut/killed").status, 404);
    wait_collected(n[0], "the killed node's upload collected");
    cluster.nodes[2].restart();

    // 3. A chunk shard's leader is killed -9 during an upload through another node: the
    // upload completes whole or fails, and nothing partial is ever visible.
    let plan = sql(
        n[0],
        "EXPLAIN SELECT * FROM cairn_file_chunks WHERE chunk = 'x'",
    );
    // "Shards s4 (chunk pins the shard): ..."
    let shard = plan["rows"][0][0].as_str().unwrap()["Shards ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let leader = cluster.leader_of(&shard);
    let through = (leader + 1) % 3;
    let curl = Command::new("curl")
        .args(["-sS", "--limit-rate", "8M", "-T"])
        .arg(&source)
        .arg(format!("http://{}/v1/files/cut/leader", n[through]))
        .output_later();
    // Killed mid-upload: once some of its chunks are in.
    wait_for(
        || leftovers(alive_before(&n, leader)).0 > chunks_in_use(alive_before(&n, leader)) + 4,
        Duration::from_secs(60),
        "chunks of the upload written",
    );
    cluster.nodes[leader].kill9();
    let out = curl.wait_with_output().unwrap();
    let alive = n[through];
    let a = get(alive, "cut/leader");
    match a.status {
        200 => assert_eq!(
            sha256_hex(&a.body),
            sha256_file(&source),
            "a partial file is visible"
        ),
        404 => eprintln!(
            "the upload failed: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
        other => panic!("read answered {other}"),
    }
    cluster.nodes[leader].restart();
    wait_collected(alive, "nothing left of a failed upload");
    assert_eq!(get(n[0], "keep").body, b"kept");
}

/// A node other than `leader` to ask.
fn alive_before(n: &[SocketAddr], leader: usize) -> SocketAddr {
    n[(leader + 1) % n.len()]
}

trait OutputLater {
    fn output_later(&mut self) -> std::process::Child;
}

impl OutputLater for Command {
    fn output_later(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    }
}

/// A cluster whose nodes serve FTP too; their FTP addresses.
fn ftp_cluster() -> (Cluster, Vec<SocketAddr>) {
    let ftp: Vec<SocketAddr> = (0..3).map(|_| common::free_addr()).collect();
    let addrs = ftp.clone();
    let cluster = Cluster::start_each(3, move |i| {
        vec![
            "--files-gc-after".into(),
            GC_AFTER.into(),
            "--ftp-addr".into(),
            addrs[i].to_string(),
        ]
    });
    (cluster, ftp)
}

#[test]
fn ftp_clients_put_get_list_rename_resume_and_delete_the_same_files_as_http() {
    let (cluster, ftp) = ftp_cluster();
    let n: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    // Python's ftplib: every command the FTP back end serves (tests/python/ftp_client.py).
    let python = std::env::var("CAIRN_PYTHON").unwrap_or_else(|_| "python3".into());
    common::run_python(
        &python,
        &[
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/ftp_client.py"),
            "127.0.0.1",
            &ftp[0].port().to_string(),
            &ftp[1].port().to_string(),
            &n[2].to_string(),
        ],
        &[],
    );

    // curl: put, list, get, a resumed upload (-C -), rename and delete by quote commands.
    let dir = tempfile::tempdir().unwrap();
    let body = random_bytes(900 * 1024);
    let source = dir.path().join("curl.bin");
    std::fs::write(&source, &body).unwrap();
    let curl = |args: &[&str]| -> Vec<u8> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60"])
            .args(args)
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let url = |i: usize, path: &str| format!("ftp://{}/{path}", ftp[i]);
    curl(&[
        "-T",
        source.to_str().unwrap(),
        "--ftp-create-dirs",
        &url(0, "curl/a.bin"),
    ]);
    assert!(
        get(n[1], "curl/a.bin").body == body,
        "a file put over FTP read over HTTP"
    );
    let listing = String::from_utf8(curl(&["-l", &url(1, "curl/")])).unwrap();
    assert_eq!(listing.lines().collect::<Vec<_>>(), ["a.bin"]);
    assert!(curl(&[&url(2, "curl/a.bin")]) == body);
    // A resumed upload: the first part stored, then curl -C - sends the rest.
    std::fs::write(dir.path().join("part.bin"), &body[..300 * 1024]).unwrap();
    curl(&[
        "-T",
        dir.path().join("part.bin").to_str().unwrap(),
        &url(0, "curl/b.bin"),
    ]);
    curl(&[
        "-C",
        "-",
        "-T",
        source.to_str().unwrap(),
        &url(1, "curl/b.bin"),
    ]);
    let b = get(n[2], "curl/b.bin");
    assert_eq!(
        sha256_hex(&b.body),
        sha256_hex(&body),
        "curl -C - resumed the upload"
    );
    // A resumed download.
    let partial = dir.path().join("down.bin");
    std::fs::write(&partial, &body[..100 * 1024]).unwrap();
    curl(&[
        "-C",
        "-",
        "-o",
        partial.to_str().unwrap(),
        &url(2, "curl/b.bin"),
    ]);
    assert!(
        std::fs::read(&partial).unwrap() == body,
        "curl -C - resumed the download"
    );
    curl(&[
        "-Q",
        "RNFR /curl/b.bin",
        "-Q",
        "RNTO /curl/c.bin",
        &url(0, "curl/"),
    ]);
    assert_eq!(get(n[0], "curl/b.bin").status, 404);
    assert!(get(n[1], "curl/c.bin").body == body);
    curl(&["-Q", "DELE /curl/c.bin", &url(2, "curl/")]);
    assert_eq!(get(n[0], "curl/c.bin").status, 404);
    // Garbage on the FTP port: an error reply, and the node keeps serving.
    let mut s = TcpStream::connect(ftp[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"\xff\xfe\x00garbage\r\nRETR\r\nUSER\r\n")
        .unwrap();
    let mut reply = [0u8; 256];
    let got = s.read(&mut reply).unwrap_or(0);
    assert!(got > 0 && reply[0].is_ascii_digit(), "an FTP reply");
    drop(s);
    assert_eq!(get(n[0], "curl/a.bin").status, 200);
    assert!(curl(&[&url(0, "curl/a.bin")]) == body);
}

/// The next `n` file events a subscription receives (progress messages skipped).
async fn file_events(ws: &mut common::Ws, id: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = ws
            .next()
            .await
            .unwrap_or_else(|| panic!("{id}: only {got:?}"));
        assert!(m["error"].is_null(), "{m}");
        if m["id"] == id && !m["file"].is_null() {
            got.push(m["file"].clone());
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_a_prefix_receives_its_file_events() {
    let cluster = Cluster::start(3, &["--files-gc-after", GC_AFTER]);
    let n: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    let mut pics = common::Ws::connect(n[1]).await;
    pics.subscribe("pics", json!({"files": "pics/"})).await;
    let mut other = common::Ws::connect(n[2]).await;
    other.subscribe("other", json!({"files": "other/"})).await;
    let one = random_bytes(300 * 1024);
    let two = b"small".to_vec();
    let http = n[0];
    let ops = tokio::task::spawn_blocking(move || {
        assert_eq!(put(http, "pics/a.jpg", &one).status, 200);
        assert_eq!(put(http, "unrelated/x", b"x").status, 200);
        assert_eq!(put(http, "pics/a.jpg", &two).status, 200);
        let moved = request(
            "POST",
            http,
            "/v1/files/pics/a.jpg?rename_to=other/b.jpg",
            &[],
            None,
        );
        assert_eq!(moved.status, 200);
        let back = request(
            "POST",
            http,
            "/v1/files/other/b.jpg?rename_to=pics/c.jpg",
            &[],
            None,
        );
        assert_eq!(back.status, 200);
        assert_eq!(
            request("DELETE", http, "/v1/files/pics/c.jpg", &[], None).status,
            200
        );
        (sha256_hex(&one), sha256_hex(&two))
    })
    .await
    .unwrap();
    let got = file_events(&mut pics, "pics", 5).await;
    let summary: Vec<(String, String, Value)> = got
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
                e["from"].clone(),
            )
        })
        .collect();
    let expected = [
        ("created", "pics/a.jpg", Value::Null),
        ("overwritten", "pics/a.jpg", Value::Null),
        ("renamed", "other/b.jpg", json!("pics/a.jpg")),
        ("renamed", "pics/c.jpg", json!("other/b.jpg")),
        ("deleted", "pics/c.jpg", Value::Null),
    ];
    // Events of one path's shard come in order; the renames' new paths live on other shards.
    for want in &expected {
        assert!(
            summary.contains(&(want.0.to_string(), want.1.to_string(), want.2.clone())),
            "missing {want:?} in {summary:?}"
        );
    }
    let created = &got[summary.iter().position(|s| s.0 == "created").unwrap()];
    assert_eq!(
        (created["size"].as_i64(), created["sha256"].as_str()),
        (Some(300 * 1024), Some(ops.0.as_str()))
    );
    let overwritten = &got[summary.iter().position(|s| s.0 == "overwritten").unwrap()];
    assert_eq!(overwritten["sha256"], ops.1);
    assert!(summary.iter().all(|s| !s.1.starts_with("unrelated/")));
    // The other prefix sees both renames (one into it, one out of it), and nothing else.
    let got = file_events(&mut other, "other", 2).await;
    let ops: Vec<&str> = got.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["renamed", "renamed"], "{got:?}");
    // A snapshot lists the current files under the prefix.
    let mut snap = common::Ws::connect(n[0]).await;
    snap.send(json!({"id": "s", "subscribe": {"files": "unrelated/", "snapshot": true}}))
        .await;
    loop {
        let m = snap.expect().await;
        if let Some(rows) = m["snapshot"].as_array() {
            assert_eq!(rows.len(), 1, "{m}");
            assert_eq!(rows[0]["path"], "unrelated/x");
            break;
        }
        assert!(m["error"].is_null(), "{m}");
    }
    // Chunks' changes are not kept as events (file events come from versions).
    let mut chunks = common::Ws::connect(n[0]).await;
    chunks
        .send(json!({"id": "c", "subscribe": {"table": "cairn_file_chunks"}}))
        .await;
    let m = chunks.expect().await;
    assert_eq!(m["error"]["code"], "unsupported", "{m}");
    let kept = sql(n[0], "SELECT count(*) FROM cairn_file_chunks")["rows"][0][0]
        .as_i64()
        .unwrap();
    assert!(kept > 0);
    // A bad prefix is a coded error.
    let mut bad = common::Ws::connect(n[0]).await;
    bad.send(json!({"id": "b", "subscribe": {"files": "a/../b"}}))
        .await;
    let m = bad.expect().await;
    assert_eq!(m["error"]["code"], "bad_request", "{m}");
}

#[test]
fn a_resumable_upload_survives_a_cut_off_request_and_publishes_once_whole() {
    let cluster = Cluster::start(3, &["--files-gc-after", GC_AFTER]);
    let n: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    let chunk = 256 * 1024;
    let body = random_bytes(4 * chunk + 77);
    let created = request(
        "POST",
        n[0],
        "/v1/uploads",
        &[],
        Some(
            json!({"path": "big/resumed.bin", "length": body.len(), "content_type": "application/x-test"})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(created.status, 201, "{}", created.json());
    let id = created.json()["upload"].as_str().unwrap().to_string();
    assert_eq!(
        created.header("location").unwrap(),
        format!("/v1/uploads/{id}")
    );
    let at = |i: usize| -> u64 {
        let a = request("HEAD", n[i], &format!("/v1/uploads/{id}"), &[], None);
        assert_eq!(a.status, 200);
        a.header("upload-offset").unwrap().parse().unwrap()
    };
    let patch = |i: usize, offset: usize, bytes: &[u8]| {
        request(
            "PATCH",
            n[i],
            &format!("/v1/uploads/{id}"),
            &[("upload-offset", &offset.to_string())],
            Some(bytes),
        )
    };
    // 600 KiB in: two whole chunks kept, the rest dropped until resent.
    let a = patch(1, 0, &body[..600 * 1024]);
    assert_eq!(a.status, 204);
    assert_eq!(a.header("upload-offset").unwrap(), (2 * chunk).to_string());
    assert_eq!(at(2), 2 * chunk as u64);
    // Not the upload's offset: 409 with the offset to resume from.
    let wrong = patch(0, 600 * 1024, &body[600 * 1024..]);
    assert_eq!(
        (wrong.status, wrong.code().as_str()),
        (409, "offset_mismatch")
    );
    assert_eq!(
        wrong.header("upload-offset").unwrap(),
        (2 * chunk).to_string()
    );
    // Nothing is visible before the last byte.
    assert_eq!(get(n[1], "big/resumed.bin").status, 404);
    // A request cut off by the client: the whole chunks it delivered are kept.
    let mut s = TcpStream::connect(n[2]).unwrap();
    write!(
        s,
        "PATCH /v1/uploads/{id} HTTP/1.1\r\nHost: x\r\nUpload-Offset: {}\r\nContent-Length: {}\r\n\r\n",
        2 * chunk,
        body.len() - 2 * chunk
    )
    .unwrap();
    s.write_all(&body[2 * chunk..3 * chunk + 1000]).unwrap();
    s.flush().unwrap();
    wait_for(
        || at(0) == 3 * chunk as u64,
        Duration::from_secs(30),
        "the delivered chunk kept",
    );
    drop(s);
    // Resumed from the offset the cluster gives, through another node: the file appears.
    let from = at(1) as usize;
    let done = patch(0, from, &body[from..]);
    assert_eq!(done.status, 200, "{}", done.json());
    assert_eq!(done.json()["sha256"], sha256_hex(&body));
    let r = get(n[1], "big/resumed.bin");
    assert!(r.body == body, "the resumed file differs");
    assert_eq!(r.header("content-type").unwrap(), "application/x-test");
    // The upload is over; a cancelled one leaves nothing.
    let gone = request("HEAD", n[0], &format!("/v1/uploads/{id}"), &[], None);
    assert_eq!(gone.status, 404);
    let other = request(
        "POST",
        n[0],
        "/v1/uploads",
        &[],
        Some(
            json!({"path": "big/cancelled.bin", "length": 3 * chunk})
                .to_string()
                .as_bytes(),
        ),
    );
    let other_id = other.json()["upload"].as_str().unwrap().to_string();
    let a = request(
        "PATCH",
        n[1],
        &format!("/v1/uploads/{other_id}"),
        &[("upload-offset", "0")],
        Some(&body[..2 * chunk]),
    );
    assert_eq!(a.status, 204);
    let c = request(
        "DELETE",
        n[2],
        &format!("/v1/uploads/{other_id}"),
        &[],
        None,
    );
    assert_eq!(c.status, 200, "{}", c.json());
    assert_eq!(get(n[0], "big/cancelled.bin").status, 404);
    // Bad requests.
    let a = request(
        "PATCH",
        n[0],
        &format!("/v1/uploads/{other_id}"),
        &[("upload-offset", "0")],
        Some(b"x"),
    );
    assert_eq!((a.status, a.code().as_str()), (404, "not_found"));
    let a = request("PATCH", n[0], "/v1/uploads/zz", &[], Some(b"x"));
    assert_eq!(a.status, 400);
    let a = request(
        "POST",
        n[0],
        "/v1/uploads",
        &[],
        Some(b"{\"path\": \"a/../b\", \"length\": 1}"),
    );
    assert_eq!((a.status, a.code().as_str()), (400, "bad_request"));
    wait_collected(n[0], "the cancelled upload's chunks collected");
}
