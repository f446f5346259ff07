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
