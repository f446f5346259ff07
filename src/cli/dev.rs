//! `cairn dev`: a local cluster of `cairn start` child processes (so one can be killed),
//! their logs prefixed with the node's id, connection hints printed once all are up.
//! It restarts nothing on its own, says when a node exits, and SIGINT or SIGTERM stops
//! every node within a few seconds.
//!
//! A new cluster's nodes start one after another, so the cluster gives node i the id `ni`
//! and its data dir is `<dir>/ni`; the ids printed are read back from each node either way.

use anyhow::{bail, Context};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Number of nodes (separate processes).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Parent directory of every node's data dir (`<dir>/n1`, ...); kept between runs.
    #[arg(long, default_value = "cairn-data")]
    pub data_dir: PathBuf,
    /// pgwire port of the first node; node i listens on pg-port + i - 1.
    #[arg(long, default_value_t = 5433)]
    pub pg_port: u16,
    /// HTTP port of the first node; node i listens on http-port + i - 1.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Cluster port of the first node; node i listens on cluster-port + i - 1.
    #[arg(long, default_value_t = 7000)]
    pub cluster_port: u16,
    /// FTP port of the first node; node i listens on ftp-port + i - 1 (0: no FTP).
    #[arg(long, default_value_t = 2121)]
    pub ftp_port: u16,
    /// Replicas per shard in a new cluster.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,
    /// Shards of a hash-distributed table unless its CREATE TABLE says otherwise.
    #[arg(long, default_value_t = 4)]
    pub shard_count: u32,
    /// Zone of each node, comma-separated, in node order (e.g. `beijing,beijing,hongkong,
    /// hongkong`); nodes past the list have none.
    #[arg(long, value_delimiter = ',')]
    pub zones: Vec<String>,
}

/// A node's log prefix: its data dir's name until the cluster's id for it is known.
type Prefix = std::sync::Arc<std::sync::Mutex<String>>;

fn forward_logs(name: Prefix, child: &mut Child) {
    if let Some(out) = child.stderr.take() {
        let name = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let name = name.lock().expect("prefix lock").clone();
                eprintln!("[{name}] {line}");
            }
        });
    }
    if let Some(out) = child.stdout.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let name = name.lock().expect("prefix lock").clone();
                println!("[{name}] {line}");
            }
        });
    }
}

/// The id the cluster gave the node serving HTTP at `addr` (from `/health`).
fn node_id(addr: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    let json: serde_json::Value = serde_json::from_str(body.split_once("\r\n\r\n")?.1).ok()?;
    json["node"].as_str().map(str::to_string)
}

/// Stop a node: SIGTERM, then SIGKILL if it has not exited within `grace`.
async fn stop(name: &str, child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        eprintln!("{name} did not stop within {grace:?}; killing it");
        let _ = child.kill().await;
    }
}

/// Whether the node's HTTP API answers `/health` (it starts serving once the node has
/// joined and its group has a leader).
pub(crate) fn healthy(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"status\":\"ok\"")
}

pub(crate) fn wait_ready(
    addr: SocketAddr,
    child: &mut Child,
    deadline: Instant,
) -> anyhow::Result<()> {
    while Instant::now() < deadline {
        if healthy(addr) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("node exited with {status} before it was ready (http {addr})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("node at {addr} was not ready in time")
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let exe = std::env::current_exe().context("locating the cairn binary")?;
    // A new cluster starts its nodes in turn (so node i joins i-th and is given id `ni`); an
    // existing one all at once (a lone first node cannot elect a meta leader).
    let fresh = !args.data_dir.join("n1").join("node.json").exists();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut children = Vec::new();
    for i in 0..args.nodes {
        let name = format!("n{}", i + 1);
        let pg: SocketAddr = ([127, 0, 0, 1], args.pg_port + i).into();
        let http: SocketAddr = ([127, 0, 0, 1], args.http_port + i).into();
        let cluster: SocketAddr = ([127, 0, 0, 1], args.cluster_port + i).into();
        let first: SocketAddr = ([127, 0, 0, 1], args.cluster_port).into();
        let dir = args.data_dir.join(&name);
        let mut cmd = Command::new(&exe);
        cmd.arg("start")
            .arg("--data-dir")
            .arg(&dir)
            .arg("--pg-addr")
            .arg(pg.to_string())
            .arg("--http-addr")
            .arg(http.to_string())
            .arg("--cluster-addr")
            .arg(cluster.to_string());
        if args.ftp_port != 0 {
            let ftp: SocketAddr = ([127, 0, 0, 1], args.ftp_port + i).into();
            cmd.arg("--ftp-addr").arg(ftp.to_string());
        }
        if let Some(zone) = args.zones.get(i as usize).filter(|z| !z.is_empty()) {
            cmd.arg("--zone").arg(zone);
        }
        if i > 0 {
            cmd.arg("--join").arg(first.to_string());
        } else {
            cmd.arg("--replication-factor")
                .arg(args.replication_factor.to_string())
                .arg("--shard-count")
                .arg(args.shard_count.to_string());
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let prefix: Prefix = std::sync::Arc::new(std::sync::Mutex::new(name.clone()));
        forward_logs(prefix.clone(), &mut child);
        if fresh {
            wait_ready(http, &mut child, deadline)?;
        }
        children.push((prefix, pg, http, dir, child));
    }
    for (prefix, _, http, _, child) in children.iter_mut() {
        wait_ready(*http, child, deadline)?;
        if let Some(id) = node_id(*http) {
            *prefix.lock().expect("prefix lock") = id;
        }
    }
    println!(
        "\nCairn dev cluster is up ({} node{}):",
        args.nodes,
        if args.nodes == 1 { "" } else { "s" }
    );
    for (prefix, pg, http, dir, child) in &children {
        let name = prefix.lock().expect("prefix lock").clone();
        println!(
            "  {name}  pgwire {pg}  http {http}  pid {}  data {}",
            child.id().unwrap_or(0),
            dir.display()
        );
    }
    let (_, pg, http, _, _) = &children[0];
    println!("\nConnect:");
    println!("  psql \"postgres://cairn@{pg}/cairn\"");
    println!("  curl -s http://{http}/v1/sql -d '{{\"sql\": \"SELECT version()\"}}'");
    println!("  curl -T photo.jpg http://{http}/v1/files/photos/photo.jpg");
    if args.ftp_port != 0 {
        println!(
            "  curl ftp://127.0.0.1:{}/ (files over FTP, anonymous)",
            args.ftp_port
        );
    }
    println!("\nPress Ctrl-C to stop.\n");
    let mut exited = vec![false; children.len()];
    let stop_signal = super::shutdown_signal();
    tokio::pin!(stop_signal);
    loop {
        tokio::select! {
            _ = &mut stop_signal => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        // Say when a node exits (crashed, or killed by hand).
        for (i, (prefix, _, _, _, child)) in children.iter_mut().enumerate() {
            if exited[i] {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                exited[i] = true;
                let name = prefix.lock().expect("prefix lock").clone();
                eprintln!("[{name}] exited: {status}");
            }
        }
        if exited.iter().all(|e| *e) {
            bail!("every node exited");
        }
    }
    println!("stopping...");
    // Every node at once: a node that waited for its peers' answers while they stop one
    // by one would take the longest.
    let stops = children.iter_mut().map(|(prefix, _, _, _, child)| {
        let name = prefix.lock().expect("prefix lock").clone();
        async move { stop(&name, child, Duration::from_secs(5)).await }
    });
    futures::future::join_all(stops).await;
    Ok(())
}
