//! Test harness: real nodes on 127.0.0.1 — in-process (`TestNode`) or as `cairn start`
//! processes that can be killed (`ProcessNode`) — and a raw pgwire client for byte-level tests.
#![allow(dead_code)]

use cairn::node::{Node, NodeConfig};
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
        election_timeout_ms_min: 150,
        heartbeat_interval_ms: 50,
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

pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A `cairn start` process, for tests that kill it.
pub struct ProcessNode {
    pub child: Child,
    pub pg: SocketAddr,
    pub http: SocketAddr,
    pub dir: PathBuf,
}

impl ProcessNode {
    pub fn spawn(dir: &Path, pg: SocketAddr, http: SocketAddr) -> ProcessNode {
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["start", "--data-dir"])
            .arg(dir)
            .args([
                "--pg-addr",
                &pg.to_string(),
                "--http-addr",
                &http.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cairn");
        let node = ProcessNode {
            child,
            pg,
            http,
            dir: dir.to_path_buf(),
        };
        wait_for(
            || TcpStream::connect(pg).is_ok(),
            Duration::from_secs(30),
            "node listening",
        );
        node
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on unix
        let _ = self.child.wait();
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        self.kill9();
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
