//! A cluster of `cairn start` child processes on loopback, for the harnesses that kill,
//! pause and restart nodes (`cairn bench failover`, `cairn chaos`).

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct LocalNode {
    pub pg: SocketAddr,
    pub http: SocketAddr,
    pub cluster: SocketAddr,
    pub dir: PathBuf,
    pub child: Option<tokio::process::Child>,
    pub paused: bool,
    /// Further `cairn start` arguments, e.g. `--dead-after 3s`.
    pub args: Vec<String>,
}

impl LocalNode {
    pub fn url(&self) -> String {
        format!("postgres://chaos@{}/cairn", self.pg)
    }

    /// Start (or restart) the node; waits until it serves.
    pub fn spawn(&mut self, join: Option<SocketAddr>) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("start").arg("--data-dir").arg(&self.dir);
        cmd.args([
            "--pg-addr",
            &self.pg.to_string(),
            "--http-addr",
            &self.http.to_string(),
        ]);
        cmd.args(["--cluster-addr", &self.cluster.to_string()]);
        cmd.args(&self.args);
        if let Some(j) = join {
            cmd.args(["--join", &j.to_string()]);
        }
        // Each node's log goes next to its data dir (`n1.log`, appended across restarts), so
        // a failing or slow run can be read afterwards.
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let log_path = self.dir.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        cmd.stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting cairn")?;
        super::dev::wait_ready(
            self.http,
            &mut child,
            Instant::now() + Duration::from_secs(60),
        )?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.paused {
                self.signal_pid(c.id(), "-CONT");
            }
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        self.paused = false;
    }

    fn signal_pid(&self, pid: Option<u32>, sig: &str) {
        if let Some(pid) = pid {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status();
        }
    }

    pub fn pause(&mut self) {
        if let Some(c) = &self.child {
            self.signal_pid(c.id(), "-STOP");
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if let Some(c) = &self.child {
            self.signal_pid(c.id(), "-CONT");
        }
        self.paused = false;
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some() && !self.paused
    }
}

/// GET `path` from a node's HTTP API; the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    match request(addr, "GET", path, Duration::from_secs(3))? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// POST (no body) to `path` on a node's HTTP API: status and body, none if it did not
/// answer.
pub fn http_post(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    request(addr, "POST", path, Duration::from_secs(30))
}

fn request(addr: SocketAddr, method: &str, path: &str, wait: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(wait)).ok()?;
    s.write_all(format!("{method} {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

pub struct LocalCluster {
    pub nodes: Vec<LocalNode>,
    dir: PathBuf,
    base_port: u16,
    args: Vec<String>,
}

impl LocalCluster {
    /// Start `n` nodes with data under `dir` (emptied first) on ports from `base_port`.
    pub fn start(n: usize, dir: &std::path::Path, base_port: u16) -> anyhow::Result<LocalCluster> {
        Self::start_with(n, dir, base_port, Vec::new())
    }

    /// `start`, every node (and every node added later) given `args` besides its addresses.
    pub fn start_with(
        n: usize,
        dir: &std::path::Path,
        base_port: u16,
        args: Vec<String>,
    ) -> anyhow::Result<LocalCluster> {
        let _ = std::fs::remove_dir_all(dir);
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            dir: dir.to_path_buf(),
            base_port,
            args,
        };
        for _ in 0..n {
            cluster.add()?;
        }
        Ok(cluster)
    }

    /// Start one more node (joining the first); its index in `nodes`.
    pub fn add(&mut self) -> anyhow::Result<usize> {
        let i = self.nodes.len();
        // On Linux every 127.x address is local: each node gets its own, so a partition can
        // tell nodes apart (see `firewall`).
        let ip = |i: usize| -> [u8; 4] {
            if cfg!(target_os = "linux") {
                [127, 0, 0, 11 + (i % 100) as u8]
            } else {
                [127, 0, 0, 1]
            }
        };
        let addr = |k: usize| -> SocketAddr { (ip(i), self.base_port + k as u16).into() };
        let mut node = LocalNode {
            pg: addr(i),
            http: addr(100 + i),
            cluster: addr(200 + i),
            dir: self.dir.join(format!("n{}", i + 1)),
            child: None,
            paused: false,
            args: self.args.clone(),
        };
        node.spawn(self.nodes.first().map(|n| n.cluster))?;
        self.nodes.push(node);
        Ok(i)
    }

    /// Index of the node a running node names as leader of its first data shard (of the
    /// meta group while there is none).
    pub fn leader(&self) -> Option<usize> {
        self.nodes.iter().filter(|n| n.is_up()).find_map(|n| {
            let v: serde_json::Value = serde_json::from_str(&http_get(n.http, "/health")?).ok()?;
            let shards = v["shards"].as_array()?;
            let shard = shards
                .iter()
                .find(|s| s["shard"] != "meta")
                .or_else(|| shards.first())?;
            let l = shard["leader"]
                .as_str()?
                .trim_start_matches('n')
                .parse::<usize>()
                .ok()?;
            Some(l - 1)
        })
    }

    /// Wait until every shard's replicas are at the same applied index and no prepared part
    /// of a two-phase commit is left anywhere; then whether their checksums agree (false
    /// also if prepared parts are still unresolved at the limit), with each node's state.
    pub fn converge(&self, limit: Duration) -> anyhow::Result<(bool, Vec<String>)> {
        let deadline = Instant::now() + limit;
        loop {
            // Per node: shard → (applied index, checksum, unresolved prepared parts).
            type Replicas = std::collections::BTreeMap<String, (u64, String, u64)>;
            // Nodes taken out of service for good (no process) hold nothing that counts.
            let states: Option<Vec<Replicas>> = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
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
                                    r["prepared"].as_u64()?,
                                ),
                            ))
                        })
                        .collect()
                })
                .collect();
            if let Some(states) = states {
                // Every shard held by several nodes: same index everywhere, then same sum.
                let shards: std::collections::BTreeSet<&String> =
                    states.iter().flat_map(|s| s.keys()).collect();
                let copies = |shard: &String| -> Vec<&(u64, String, u64)> {
                    states.iter().filter_map(|s| s.get(shard)).collect()
                };
                let indexes_equal = shards
                    .iter()
                    .all(|sh| copies(sh).windows(2).all(|w| w[0].0 == w[1].0));
                let unresolved: u64 = states.iter().flat_map(|s| s.values()).map(|r| r.2).sum();
                if indexes_equal && (unresolved == 0 || Instant::now() > deadline) {
                    let sums_equal = shards
                        .iter()
                        .all(|sh| copies(sh).windows(2).all(|w| w[0].1 == w[1].1));
                    let names = self
                        .nodes
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| n.child.is_some())
                        .map(|(i, _)| format!("n{}", i + 1));
                    let mut report: Vec<String> = names
                        .zip(&states)
                        .map(|(name, s)| format!("{name}: {s:?}"))
                        .collect();
                    if unresolved > 0 {
                        report.push(format!(
                            "{unresolved} prepared parts (summed over replicas) still unresolved after {limit:?}"
                        ));
                    }
                    return Ok((sums_equal && unresolved == 0, report));
                }
            }
            if Instant::now() > deadline {
                bail!("replicas did not reach the same applied index within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
