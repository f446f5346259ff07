//! Test harness: real nodes on 127.0.0.1 — in-process (`TestNode`) or as `cairn start`
//! processes that can be killed (`ProcessNode`) — and a raw pgwire client for byte-level tests.
#![allow(dead_code)]

use cairn::node::{Node, NodeConfig};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestNode {
    pub node: Option<Node>,
    pub pg: SocketAddr,
    pub http: SocketAddr,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &Path, pg: SocketAddr, http: SocketAddr) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        pg_addr: pg,
        http_addr: http,
        cluster_addr: "127.0.0.1:0".parse().unwrap(),
        join: Vec::new(),
        zone: None,
        election_timeout_ms_min: 150,
        heartbeat_interval_ms: 50,
        snapshot_every: cairn::limits::SNAPSHOT_EVERY_ENTRIES,
        replication_factor: 3,
        shard_count: 4,
        events: Default::default(),
        dead_after: cairn::limits::DEAD_AFTER_DEFAULT,
        check_rate: cairn::limits::CONSISTENCY_CHECK_RATE,
        files: Default::default(),
        ftp_addr: None,
        ftp_passive_ports: 49152..=65535,
        dev_supervisor: None,
        advertise: None,
        tls: None,
        init_password: None,
    }
}

impl TestNode {
    pub async fn start() -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let node = Node::start(config(dir.path(), any, any))
            .await
            .expect("node starts");
        let (pg, http) = (node.pg_addr, node.http_addr);
        TestNode {
            node: Some(node),
            pg,
            http,
            dir,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(self.pg).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

pub async fn connect(pg: SocketAddr) -> tokio_postgres::Client {
    let url = format!("host={} port={} user=test dbname=cairn", pg.ip(), pg.port());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A port for a node to listen on, from below the kernel's ephemeral range (32768 and up):
/// a port the OS hands out (`bind(:0)`) can be taken as the source port of any outgoing
/// connection before the node binds it, and the node then fails to start. Ports are never
/// handed out twice within a test binary.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left below the ephemeral range");
        let port = LOW + (start + n) % SPAN;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return l.local_addr().expect("addr");
        }
    }
}

/// A `cairn start` process, for tests that kill, pause and restart it.
pub struct ProcessNode {
    pub child: Child,
    pub pg: SocketAddr,
    pub http: SocketAddr,
    pub cluster: SocketAddr,
    pub dir: PathBuf,
    pub join: Option<SocketAddr>,
    pub extra: Vec<String>,
}

impl ProcessNode {
    /// A lone node (its own cluster).
    pub fn spawn(dir: &Path, pg: SocketAddr, http: SocketAddr) -> ProcessNode {
        ProcessNode::spawn_in_cluster(dir, pg, http, free_addr(), None, &[])
    }

    /// A node that bootstraps (`join` None) or joins through `join`; waits until it serves.
    pub fn spawn_in_cluster(
        dir: &Path,
        pg: SocketAddr,
        http: SocketAddr,
        cluster: SocketAddr,
        join: Option<SocketAddr>,
        extra: &[&str],
    ) -> ProcessNode {
        let mut node = ProcessNode {
            child: Command::new("true").spawn().expect("placeholder"),
            pg,
            http,
            cluster,
            dir: dir.to_path_buf(),
            join,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        node.restart();
        node
    }

    /// Start the process again on the same data dir and addresses, and wait until it serves.
    pub fn restart(&mut self) {
        self.launch();
        let http = self.http;
        let child = &mut self.child;
        wait_for(
            || {
                // A node that exits has said why on stderr; stop waiting for it.
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("cairn on {http} exited while starting: {status}");
                }
                http_get(http, "/health").is_some_and(|b| b.contains("\"status\":\"ok\""))
            },
            Duration::from_secs(60),
            "node ready",
        );
    }

    /// Start the process again without waiting for it to serve.
    pub fn launch(&mut self) {
        let _ = self.child.wait();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(["start", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--pg-addr",
                &self.pg.to_string(),
                "--http-addr",
                &self.http.to_string(),
            ])
            .args(["--cluster-addr", &self.cluster.to_string()])
            .args(["--election-timeout-ms", "300", "--heartbeat-ms", "75"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // An extra "ENV:NAME=value" sets an environment variable instead of an argument.
        for e in &self.extra {
            match e.strip_prefix("ENV:").and_then(|kv| kv.split_once('=')) {
                Some((k, v)) => {
                    cmd.env(k, v);
                }
                None => {
                    cmd.arg(e);
                }
            }
        }
        if let Some(j) = self.join {
            cmd.args(["--join", &j.to_string()]);
        }
        self.child = cmd.spawn().expect("spawn cairn");
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on unix
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        self.signal_quietly();
        self.kill9();
    }
}

impl ProcessNode {
    fn signal_quietly(&self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
    }
}

/// A plain HTTP POST of a JSON `body`, waiting up to `wait` for the answer: its status (0
/// if none came) and the whole response, head included.
pub fn http_post(addr: SocketAddr, path: &str, body: &str, wait: Duration) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// A plain HTTP GET with short timeouts; None if the node does not answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    match http_get_any(addr, path)? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// GET `path`: the status and body whatever the status (None: no answer).
#[allow(dead_code)]
pub fn http_get_any(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, body) = body.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// A cluster of `cairn start` processes on loopback.
pub struct Cluster {
    pub nodes: Vec<ProcessNode>,
    pub dirs: tempfile::TempDir,
}

impl Cluster {
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_each(n, |_| extra.iter().map(|s| s.to_string()).collect())
    }

    /// A cluster whose node i (0-based) gets the extra arguments `args(i)`.
    pub fn start_each(n: usize, args: impl Fn(usize) -> Vec<String>) -> Cluster {
        let dirs = tempfile::tempdir().unwrap();
        let mut nodes: Vec<ProcessNode> = Vec::new();
        for i in 0..n {
            let join = nodes.first().map(|n| n.cluster);
            let dir = dirs.path().join(format!("n{}", i + 1));
            let extra = args(i);
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            nodes.push(ProcessNode::spawn_in_cluster(
                &dir,
                free_addr(),
                free_addr(),
                free_addr(),
                join,
                &extra,
            ));
        }
        Cluster { nodes, dirs }
    }

    /// The shards each node holds a replica of (from `/v1/replicas`).
    pub fn shards_on(&self, i: usize) -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&http_get(self.nodes[i].http, "/v1/replicas").unwrap()).unwrap();
        v["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["shard"].as_str().unwrap().to_string())
            .collect()
    }

    /// Index of the node the first answering node names as leader of `shard` (`meta`, `s1`, ...).
    pub fn leader_of(&self, shard: &str) -> usize {
        let mut found = None;
        wait_for(
            || {
                found = self.nodes.iter().find_map(|n| {
                    let body = http_get(n.http, "/health")?;
                    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                    let leader = v["shards"]
                        .as_array()?
                        .iter()
                        .find(|s| s["shard"] == shard)?["leader"]
                        .as_str()?
                        .trim_start_matches('n')
                        .parse::<usize>()
                        .ok()?;
                    Some(leader - 1)
                });
                found.is_some()
            },
            Duration::from_secs(30),
            "a leader",
        );
        found.unwrap()
    }

    /// The leader of the first data shard, s1.
    pub fn leader(&self) -> usize {
        self.leader_of("s1")
    }

    /// Per node, each replica's (applied index, checksum) by shard; None for a node that
    /// does not answer.
    pub fn replicas(&self) -> Vec<Option<std::collections::BTreeMap<String, (u64, String)>>> {
        self.nodes
            .iter()
            .map(|n| {
                let v: serde_json::Value =
                    serde_json::from_str(&http_get(n.http, "/v1/replicas")?).ok()?;
                v["replicas"]
                    .as_array()?
                    .iter()
                    .map(|r| {
                        Some((
                            r["shard"].as_str()?.to_string(),
                            (
                                r["applied_index"].as_u64()?,
                                r["checksum"].as_str()?.to_string(),
                            ),
                        ))
                    })
                    .collect()
            })
            .collect()
    }

    /// Wait until every node answers `/health` (after pauses or restarts).
    pub fn wait_all_serving(&self) {
        wait_for(
            || {
                self.nodes
                    .iter()
                    .all(|n| http_get(n.http, "/health").is_some())
            },
            Duration::from_secs(30),
            "every node serving",
        );
    }

    /// Wait until every replica of every shard reports the same applied index, then assert
    /// equal checksums.
    pub fn assert_converged(&self) {
        let mut last = Vec::new();
        let same = |states: &[Option<std::collections::BTreeMap<String, (u64, String)>>],
                    pick: &dyn Fn(&(u64, String)) -> String|
         -> bool {
            let Some(all) = states.iter().cloned().collect::<Option<Vec<_>>>() else {
                return false;
            };
            let shards: std::collections::BTreeSet<String> =
                all.iter().flat_map(|m| m.keys().cloned()).collect();
            shards.iter().all(|sh| {
                let copies: Vec<String> = all.iter().filter_map(|m| m.get(sh)).map(pick).collect();
                copies.windows(2).all(|w| w[0] == w[1])
            })
        };
        wait_for(
            || {
                last = self.replicas();
                same(&last, &|r| r.0.to_string())
            },
            Duration::from_secs(120),
            "all replicas at the same applied index",
        );
        assert!(
            same(&last, &|r| r.1.clone()),
            "replicas diverged at the same applied index: {last:?}"
        );
    }
}

/// Poll `cond` until it holds or `limit` passes (then panic naming `what`).
pub fn wait_for(mut cond: impl FnMut() -> bool, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like `wait_for`, but `check` says what it saw when the condition does not hold, and the
/// last of those is in the failure.
pub fn wait_until(mut check: impl FnMut() -> Result<(), String>, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let seen = match check() {
            Ok(()) => return,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last seen: {seen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A deliberately low-level pgwire client: it sends exactly the bytes a test asks for.
pub struct Raw {
    pub s: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw { s }
    }

    pub fn startup(addr: SocketAddr) -> Raw {
        let mut r = Raw::connect(addr);
        let mut body = 196608i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0test\0database\0cairn\0\0");
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend(body);
        r.s.write_all(&msg).unwrap();
        r.until_ready();
        r
    }

    pub fn send(&mut self, tag: u8, body: &[u8]) {
        let mut msg = vec![tag];
        msg.extend(((body.len() + 4) as i32).to_be_bytes());
        msg.extend_from_slice(body);
        self.s.write_all(&msg).unwrap();
    }

    /// Read messages until ReadyForQuery; returns (type, body) of each.
    pub fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut head = [0u8; 5];
            self.s.read_exact(&mut head).expect("server answers");
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            self.s.read_exact(&mut body).unwrap();
            let done = head[0] == b'Z';
            out.push((head[0], body));
            if done {
                return out;
            }
        }
    }

    pub fn error_code(msgs: &[(u8, Vec<u8>)]) -> Option<String> {
        let (_, body) = msgs.iter().find(|(t, _)| *t == b'E')?;
        body.split(|b| *b == 0)
            .find(|f| f.first() == Some(&b'C'))
            .map(|f| String::from_utf8_lossy(&f[1..]).to_string())
    }

    /// Parse + Bind (with the given parameter format codes and raw values) + Execute + Sync.
    pub fn extended(
        &mut self,
        sql: &str,
        param_oids: &[i32],
        formats: &[i16],
        params: &[Option<&[u8]>],
    ) -> Vec<(u8, Vec<u8>)> {
        let mut p = b"\0".to_vec();
        p.extend(sql.as_bytes());
        p.push(0);
        p.extend((param_oids.len() as i16).to_be_bytes());
        for o in param_oids {
            p.extend(o.to_be_bytes());
        }
        self.send(b'P', &p);
        let mut b = b"\0\0".to_vec();
        b.extend((formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend(f.to_be_bytes());
        }
        b.extend((params.len() as i16).to_be_bytes());
        for v in params {
            match v {
                None => b.extend((-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend(0i16.to_be_bytes());
        self.send(b'B', &b);
        self.send(b'E', b"\0\0\0\0\0");
        self.send(b'S', b"");
        self.until_ready()
    }
}

/// The Python interpreter of the test virtual environment (`CAIRN_PYTHON`, made by
/// `.ci/run` with `tests/python/requirements.txt`); None (the test is skipped, and says
/// so) where it is not set, unless CAIRN_REQUIRE_PYTHON demands it.
#[allow(dead_code)]
pub fn python() -> Option<String> {
    match std::env::var("CAIRN_PYTHON") {
        Ok(p) => Some(p),
        Err(_) => {
            assert!(
                std::env::var("CAIRN_REQUIRE_PYTHON").is_err(),
                "CAIRN_PYTHON (a virtual environment with tests/python/requirements.txt) is required here"
            );
            println!(
                "CAIRN_PYTHON is not set; skipped (python3 -m venv v && v/bin/pip install -r tests/python/requirements.txt && CAIRN_PYTHON=v/bin/python cargo test)"
            );
            None
        }
    }
}

/// Run `python args...` with `env`, bounded by a deadline; panic with its output unless it
/// succeeds.
#[allow(dead_code)]
pub fn run_python(python: &str, args: &[&str], env: &[(&str, &str)]) {
    let mut child = std::process::Command::new(python)
        .args(args)
        .envs(env.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        match child.try_wait().expect("wait for python") {
            Some(_) => break,
            None if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                break;
            }
            None => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    let out = child.wait_with_output().expect("python output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "{args:?} failed (or ran past 300 s):\n{text}"
    );
}

/// A WebSocket client of `/v1/ws`, speaking its JSON messages.
pub struct Ws {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    pub async fn connect(http: SocketAddr) -> Ws {
        let (stream, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws")),
        )
        .await
        .expect("websocket connect in time")
        .expect("websocket connect");
        Ws { stream }
    }

    /// Connect to the first of `nodes` that accepts (others may be down).
    pub async fn connect_any(nodes: &[SocketAddr]) -> Ws {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for http in nodes {
                let attempt = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws")),
                )
                .await;
                if let Ok(Ok((stream, _))) = attempt {
                    return Ws { stream };
                }
            }
            assert!(Instant::now() < deadline, "no node accepted a websocket");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn send(&mut self, message: serde_json::Value) {
        use futures::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(
                message.to_string().into(),
            ))
            .await
            .expect("websocket send");
    }

    /// The next JSON message, or None when the connection ends (or nothing comes for 30 s).
    pub async fn next(&mut self) -> Option<serde_json::Value> {
        use futures::StreamExt;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.stream.next())
                .await
                .ok()??
                .ok()?;
            match message {
                tokio_tungstenite::tungstenite::Message::Text(text) => {
                    return Some(serde_json::from_str(&text).expect("JSON message"))
                }
                tokio_tungstenite::tungstenite::Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next message, which must come.
    pub async fn expect(&mut self) -> serde_json::Value {
        self.next().await.expect("a websocket message")
    }

    /// Subscribe and return the acknowledgement's token (panics on an error answer).
    pub async fn subscribe(&mut self, id: &str, request: serde_json::Value) -> String {
        self.send(serde_json::json!({"id": id, "subscribe": request}))
            .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "no answer to subscribe {id}");
            let m = self.expect().await;
            if m["id"] != id {
                continue;
            }
            assert!(m["error"].is_null(), "subscribe {id}: {m}");
            if let Some(token) = m["subscribed"]["token"].as_str() {
                return token.to_string();
            }
        }
    }
}
