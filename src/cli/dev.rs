//! `cairn dev`: a local cluster of `cairn start` child processes (so one can be killed),
//! their logs prefixed with the node's id, connection hints printed once all are up.
//! It restarts nothing on its own, says when a node exits, and SIGINT or SIGTERM stops
//! every node within a few seconds.
//!
//! A new cluster's nodes start one after another, so the cluster gives node i the id `ni`
//! and its data dir is `<dir>/ni`; the ids printed are read back from each node either way.
//!
//! The supervisor also injects faults on demand (`cairn dev crash n2`, `restart`, `pause`,
//! `resume`, `partition n1 --from n2,n3`, `slow`, `heal`, or `POST /v1/dev/...` on any node):
//! it listens on a loopback port of its own, given to each node as `--dev-supervisor`, and
//! the nodes forward those requests to it. Crashes and pauses are signals to the process
//! (SIGKILL, SIGSTOP/SIGCONT); partitions and slow links are a filter in each node's
//! cluster transport and gossip (`replication::faults`), switched by the supervisor, so they
//! need no root. Unlike the chaos harness's iptables rules they act above TCP: a cut link
//! refuses calls after a dial timeout's wait rather than dropping packets, and
//! connections already open stay open (unused) until healed.

use crate::replication::faults::LinkFault;
use anyhow::{anyhow, bail, Context};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevArgs {
    /// A fault to inject into the dev cluster running now (none: run a dev cluster).
    #[command(subcommand)]
    pub action: Option<DevAction>,
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

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DevAction {
    /// Kill a node (kill -9); its data stays for `restart`.
    Crash(Target),
    /// Start a node again (killing it first if it runs); waits until it serves.
    Restart(Target),
    /// Stop a node's process (SIGSTOP): it answers nothing until `resume`.
    Pause(Target),
    /// Let a paused node run again (SIGCONT).
    Resume(Target),
    /// Cut a node's links to others (every other node unless --from), both ways.
    Partition(Links),
    /// Delay every message on a node's links to others (every other unless --from).
    Slow(SlowLinks),
    /// Heal every cut or slow link and resume every paused node.
    Heal(Url),
    /// The supervisor's view: each node's process state, and the faulty links.
    Faults(Url),
}

#[derive(Debug, Clone, clap::Args)]
pub struct Url {
    /// HTTP address of any node of the dev cluster (several, comma-separated, are tried
    /// in turn: the first may be the one down).
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080,http://127.0.0.1:8081,http://127.0.0.1:8082",
        value_delimiter = ','
    )]
    pub url: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node, by id (`n2`).
    pub node: String,
    #[command(flatten)]
    pub url: Url,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Links {
    /// The node whose links change, by id (`n1`).
    pub node: String,
    /// The nodes at the other end (default: every other).
    #[arg(long, value_delimiter = ',')]
    pub from: Vec<String>,
    #[command(flatten)]
    pub url: Url,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SlowLinks {
    #[command(flatten)]
    pub links: Links,
    /// How long each message waits. Past the election timeout (150 ms by default) the
    /// node's groups churn through elections, as they would over such a link.
    #[arg(long, default_value = "100ms", value_parser = crate::units::duration_arg)]
    pub delay: Duration,
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

/// One node's process as the supervisor keeps it.
struct Proc {
    /// Log prefix: the node's id once known.
    prefix: Prefix,
    http: SocketAddr,
    cluster: SocketAddr,
    /// `cairn start`'s arguments, for a restart.
    args: Vec<OsString>,
    child: Option<Child>,
    paused: bool,
    /// Killed on request: its exit is expected.
    crashed: bool,
}

impl Proc {
    fn name(&self) -> String {
        self.prefix.lock().expect("prefix lock").clone()
    }

    fn state(&mut self) -> &'static str {
        match &mut self.child {
            None if self.crashed => "crashed",
            None => "exited",
            Some(child) => match child.try_wait() {
                Ok(Some(_)) if self.crashed => "crashed",
                Ok(Some(_)) => "exited",
                _ if self.paused => "paused",
                _ => "running",
            },
        }
    }
}

/// The processes of the dev cluster and the faults injected into it.
struct Supervisor {
    exe: PathBuf,
    procs: tokio::sync::Mutex<Vec<Proc>>,
    /// Faulty links between nodes (by index, lower first).
    links: std::sync::Mutex<BTreeMap<(usize, usize), LinkFault>>,
}

fn spawn_node(exe: &std::path::Path, args: &[OsString], prefix: &Prefix) -> anyhow::Result<Child> {
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", prefix.lock().expect("prefix lock")))?;
    forward_logs(prefix.clone(), &mut child);
    Ok(child)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if let Some(action) = args.action {
        return inject(action).await;
    }
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let exe = std::env::current_exe().context("locating the cairn binary")?;
    let control = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("binding the dev supervisor's port")?;
    let control_addr = control.local_addr()?;
    // A new cluster starts its nodes in turn (so node i joins i-th and is given id `ni`); an
    // existing one all at once (a lone first node cannot elect a meta leader).
    let fresh = !args.data_dir.join("n1").join("node.json").exists();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut procs = Vec::new();
    for i in 0..args.nodes {
        let name = format!("n{}", i + 1);
        let pg: SocketAddr = ([127, 0, 0, 1], args.pg_port + i).into();
        let http: SocketAddr = ([127, 0, 0, 1], args.http_port + i).into();
        let cluster: SocketAddr = ([127, 0, 0, 1], args.cluster_port + i).into();
        let first: SocketAddr = ([127, 0, 0, 1], args.cluster_port).into();
        let dir = args.data_dir.join(&name);
        let mut argv: Vec<OsString> = vec![
            "start".into(),
            "--data-dir".into(),
            dir.clone().into(),
            "--pg-addr".into(),
            pg.to_string().into(),
            "--http-addr".into(),
            http.to_string().into(),
            "--cluster-addr".into(),
            cluster.to_string().into(),
            "--dev-supervisor".into(),
            control_addr.to_string().into(),
        ];
        if args.ftp_port != 0 {
            let ftp: SocketAddr = ([127, 0, 0, 1], args.ftp_port + i).into();
            argv.extend(["--ftp-addr".into(), ftp.to_string().into()]);
        }
        if let Some(zone) = args.zones.get(i as usize).filter(|z| !z.is_empty()) {
            argv.extend(["--zone".into(), zone.into()]);
        }
        if i > 0 {
            argv.extend(["--join".into(), first.to_string().into()]);
        } else {
            argv.extend([
                "--replication-factor".into(),
                args.replication_factor.to_string().into(),
                "--shard-count".into(),
                args.shard_count.to_string().into(),
            ]);
        }
        let prefix: Prefix = std::sync::Arc::new(std::sync::Mutex::new(name.clone()));
        let mut child = spawn_node(&exe, &argv, &prefix)?;
        if fresh {
            wait_ready(http, &mut child, deadline)?;
        }
        procs.push(Proc {
            prefix,
            http,
            cluster,
            args: argv,
            child: Some(child),
            paused: false,
            crashed: false,
        });
    }
    for p in procs.iter_mut() {
        let child = p.child.as_mut().expect("just started");
        wait_ready(p.http, child, deadline)?;
        if let Some(id) = node_id(p.http) {
            *p.prefix.lock().expect("prefix lock") = id;
        }
    }
    println!(
        "\nCairn dev cluster is up ({} node{}):",
        args.nodes,
        if args.nodes == 1 { "" } else { "s" }
    );
    for (i, p) in procs.iter().enumerate() {
        let pg: SocketAddr = ([127, 0, 0, 1], args.pg_port + i as u16).into();
        println!(
            "  {}  pgwire {pg}  http {}  pid {}  data {}",
            p.name(),
            p.http,
            p.child.as_ref().and_then(|c| c.id()).unwrap_or(0),
            args.data_dir.join(format!("n{}", i + 1)).display()
        );
    }
    let pg: SocketAddr = ([127, 0, 0, 1], args.pg_port).into();
    let http = procs[0].http;
    println!("\nConnect:");
    println!("  cairn sql postgres://cairn@{pg}/cairn");
    println!("  psql \"postgres://cairn@{pg}/cairn\"");
    println!("  curl -s http://{http}/v1/sql -d '{{\"sql\": \"SELECT version()\"}}'");
    println!("  curl -T photo.jpg http://{http}/v1/files/photos/photo.jpg");
    if args.ftp_port != 0 {
        println!(
            "  curl ftp://127.0.0.1:{}/ (files over FTP, anonymous)",
            args.ftp_port
        );
    }
    println!("\nInject faults: cairn dev crash|restart|pause|resume n2, cairn dev partition n1 --from n2,n3, cairn dev slow n1 --delay 200ms, cairn dev heal");
    println!("\nDev mode is insecure: no TLS, no passwords, every node on 127.0.0.1 only.");
    println!("\nPress Ctrl-C to stop.\n");
    let supervisor = Arc::new(Supervisor {
        exe,
        procs: tokio::sync::Mutex::new(procs),
        links: std::sync::Mutex::new(BTreeMap::new()),
    });
    let app = axum::Router::new()
        .route("/dev/faults", axum::routing::post(faults).get(faults))
        .route("/dev/{action}", axum::routing::post(act))
        .with_state(supervisor.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(control, app).await {
            eprintln!("the dev supervisor's port stopped: {e}");
        }
    });
    let mut reported = vec![false; args.nodes as usize];
    let stop_signal = super::shutdown_signal();
    tokio::pin!(stop_signal);
    loop {
        tokio::select! {
            _ = &mut stop_signal => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        // Say when a node exits (crashed, or killed by hand). A restart may hold the lock
        // for a while: look next time.
        let Ok(mut procs) = supervisor.procs.try_lock() else {
            continue;
        };
        let mut all_gone = true;
        for (i, p) in procs.iter_mut().enumerate() {
            let exited = match &mut p.child {
                Some(child) => match child.try_wait() {
                    Ok(Some(status)) => Some(status.to_string()),
                    _ => None,
                },
                None => Some("stopped".to_string()),
            };
            match exited {
                Some(status) => {
                    if !reported[i] && !p.crashed {
                        eprintln!("[{}] exited: {status}", p.name());
                    }
                    reported[i] = true;
                    all_gone &= !p.crashed;
                }
                None => {
                    reported[i] = false;
                    all_gone = false;
                }
            }
        }
        if all_gone {
            bail!("every node exited");
        }
    }
    println!("stopping...");
    // Every node at once: a node that waited for its peers' answers while they stop one
    // by one would take the longest.
    let mut procs = supervisor.procs.lock().await;
    let stops = procs.iter_mut().filter_map(|p| {
        let name = p.name();
        let paused = p.paused;
        p.child.as_mut().map(|child| async move {
            if paused {
                signal(child, "-CONT");
            }
            stop(&name, child, Duration::from_secs(5)).await
        })
    });
    futures::future::join_all(stops).await;
    Ok(())
}

fn signal(child: &Child, sig: &str) -> bool {
    let Some(pid) = child.id() else {
        return false;
    };
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// A request to the supervisor: `{"node": "n2", "from": ["n1"], "delay_ms": 200}`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    node: Option<String>,
    #[serde(default)]
    from: Vec<String>,
    delay_ms: Option<u64>,
}

type Answer = (StatusCode, Json<Value>);

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Answer {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
}

/// `GET|POST /dev/faults`: each node's process state and the faulty links.
async fn faults(State(sup): State<Arc<Supervisor>>) -> Answer {
    let mut procs = sup.procs.lock().await;
    let nodes: Vec<Value> = procs
        .iter_mut()
        .map(|p| {
            json!({
                "node": p.name(),
                "state": p.state(),
                "pid": p.child.as_ref().and_then(|c| c.id()),
                "http": p.http.to_string(),
            })
        })
        .collect();
    let links: Vec<Value> = sup
        .links
        .lock()
        .expect("links lock")
        .iter()
        .map(|((a, b), fault)| json!({"between": [procs[*a].name(), procs[*b].name()], "fault": fault}))
        .collect();
    (
        StatusCode::OK,
        Json(json!({"nodes": nodes, "links": links})),
    )
}

/// `POST /dev/{action}`.
async fn act(
    State(sup): State<Arc<Supervisor>>,
    Path(action): Path<String>,
    body: axum::body::Bytes,
) -> Answer {
    let request: FaultRequest = if body.is_empty() {
        FaultRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "08P01",
                    format!("expected {{\"node\": \"n2\", \"from\": [...], \"delay_ms\": N}}: {e}"),
                )
            }
        }
    };
    match sup.act(&action, request).await {
        Ok(message) => (StatusCode::OK, Json(json!({ "message": message }))),
        Err((status, message)) => refuse(
            status,
            if status == StatusCode::NOT_FOUND {
                "42704"
            } else {
                "22023"
            },
            message,
        ),
    }
}

type Refusal = (StatusCode, String);

impl Supervisor {
    async fn act(&self, action: &str, request: FaultRequest) -> Result<String, Refusal> {
        let mut procs = self.procs.lock().await;
        let find = |procs: &[Proc], name: &str| {
            procs.iter().position(|p| p.name() == name).ok_or_else(|| {
                let known: Vec<String> = procs.iter().map(Proc::name).collect();
                (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "no node {name} in this dev cluster (nodes: {})",
                        known.join(", ")
                    ),
                )
            })
        };
        let target = |procs: &[Proc]| match &request.node {
            Some(name) => find(procs, name),
            None => Err((
                StatusCode::BAD_REQUEST,
                format!("{action} needs a node (\"node\": \"n2\")"),
            )),
        };
        match action {
            "crash" => {
                let i = target(&procs)?;
                let p = &mut procs[i];
                let Some(mut child) = p.child.take() else {
                    return Ok(format!("{} is not running", p.name()));
                };
                let _ = child.start_kill();
                let _ = child.wait().await;
                p.crashed = true;
                p.paused = false;
                Ok(format!("{} crashed (kill -9)", p.name()))
            }
            "restart" => {
                let i = target(&procs)?;
                let p = &mut procs[i];
                if let Some(mut child) = p.child.take() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                let mut child = spawn_node(&self.exe, &p.args, &p.prefix)
                    .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
                p.crashed = false;
                p.paused = false;
                let http = p.http;
                let ready = tokio::task::block_in_place(|| {
                    wait_ready(http, &mut child, Instant::now() + Duration::from_secs(60))
                });
                p.child = Some(child);
                ready.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
                let name = p.name();
                let warnings = self.push_links(&mut procs, &[i]).await;
                Ok(format!("{name} restarted and serving{warnings}"))
            }
            "pause" | "resume" => {
                let i = target(&procs)?;
                let p = &mut procs[i];
                let pause = action == "pause";
                let sent = p
                    .child
                    .as_ref()
                    .is_some_and(|c| signal(c, if pause { "-STOP" } else { "-CONT" }));
                if !sent {
                    return Err((StatusCode::CONFLICT, format!("{} is not running", p.name())));
                }
                p.paused = pause;
                let name = p.name();
                if pause {
                    return Ok(format!("{name} paused (SIGSTOP)"));
                }
                let warnings = self.push_links(&mut procs, &[i]).await;
                Ok(format!("{name} resumed (SIGCONT){warnings}"))
            }
            "partition" | "slow" => {
                let i = target(&procs)?;
                let others: Vec<usize> = if request.from.is_empty() {
                    (0..procs.len()).filter(|j| *j != i).collect()
                } else {
                    request
                        .from
                        .iter()
                        .map(|n| find(&procs, n))
                        .collect::<Result<_, _>>()?
                };
                if others.contains(&i) {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "a node cannot be cut from itself".into(),
                    ));
                }
                let fault = if action == "partition" {
                    LinkFault::Cut
                } else {
                    LinkFault::Slow {
                        delay_ms: request.delay_ms.unwrap_or(100),
                    }
                };
                {
                    let mut links = self.links.lock().expect("links lock");
                    for j in &others {
                        links.insert((i.min(*j), i.max(*j)), fault);
                    }
                }
                let mut touched = others.clone();
                touched.push(i);
                let warnings = self.push_links(&mut procs, &touched).await;
                let names: Vec<String> = others.iter().map(|j| procs[*j].name()).collect();
                Ok(match fault {
                    LinkFault::Cut => format!(
                        "{} cut from {}{warnings}",
                        procs[i].name(),
                        names.join(", ")
                    ),
                    LinkFault::Slow { delay_ms } => format!(
                        "{}'s links to {} delay each message {delay_ms} ms{warnings}",
                        procs[i].name(),
                        names.join(", ")
                    ),
                })
            }
            "heal" => {
                self.links.lock().expect("links lock").clear();
                let mut resumed = Vec::new();
                for p in procs.iter_mut() {
                    if p.paused && p.child.as_ref().is_some_and(|c| signal(c, "-CONT")) {
                        p.paused = false;
                        resumed.push(p.name());
                    }
                }
                let all: Vec<usize> = (0..procs.len()).collect();
                let warnings = self.push_links(&mut procs, &all).await;
                Ok(if resumed.is_empty() {
                    format!("every link healed{warnings}")
                } else {
                    format!(
                        "every link healed; resumed {}{warnings}",
                        resumed.join(", ")
                    )
                })
            }
            _ => Err((
                StatusCode::NOT_FOUND,
                format!(
                    "no fault named {action}: crash, restart, pause, resume, partition, slow, heal"
                ),
            )),
        }
    }

    /// Tell each of `nodes` (those running) the faults on its links. Nodes paused or down
    /// are told when they resume or restart. Returns what could not be told, as a suffix.
    async fn push_links(&self, procs: &mut [Proc], nodes: &[usize]) -> String {
        let links = self.links.lock().expect("links lock").clone();
        let mut failed = Vec::new();
        for &i in nodes {
            let p = &mut procs[i];
            if p.state() != "running" {
                continue;
            }
            let mine: BTreeMap<String, LinkFault> = links
                .iter()
                .filter_map(|((a, b), fault)| {
                    let other = if *a == i {
                        *b
                    } else if *b == i {
                        *a
                    } else {
                        return None;
                    };
                    Some((other, *fault))
                })
                .map(|(other, fault)| (procs_cluster(procs, other), fault))
                .collect();
            let http = procs[i].http;
            let body = json!({ "links": mine }).to_string();
            let sent = tokio::task::spawn_blocking(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(3)))
                    .build()
                    .into();
                agent
                    .post(&format!("http://{http}/v1/dev/links"))
                    .header("content-type", "application/json")
                    .send(body.as_bytes())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            if let Err(e) = sent {
                failed.push(format!("{}: {e}", procs[i].name()));
            }
        }
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (not told yet: {})", failed.join("; "))
        }
    }
}

fn procs_cluster(procs: &[Proc], i: usize) -> String {
    procs[i].cluster.to_string()
}

/// `cairn dev crash n2` and the others: the request goes to the first node of `--url`
/// that answers, which hands it to the supervisor.
async fn inject(action: DevAction) -> anyhow::Result<()> {
    let (path, url, body) = match action {
        DevAction::Crash(t) => ("crash", t.url, json!({"node": t.node})),
        DevAction::Restart(t) => ("restart", t.url, json!({"node": t.node})),
        DevAction::Pause(t) => ("pause", t.url, json!({"node": t.node})),
        DevAction::Resume(t) => ("resume", t.url, json!({"node": t.node})),
        DevAction::Partition(l) => ("partition", l.url, json!({"node": l.node, "from": l.from})),
        DevAction::Slow(s) => (
            "slow",
            s.links.url,
            json!({"node": s.links.node, "from": s.links.from,
                   "delay_ms": s.delay.as_millis() as u64}),
        ),
        DevAction::Heal(u) => ("heal", u, json!({})),
        DevAction::Faults(u) => ("faults", u, json!({})),
    };
    let answer = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(100)))
            .build()
            .into();
        let mut last = None;
        for base in &url.url {
            let base = base.trim_end_matches('/');
            let base = if base.contains("://") {
                base.to_string()
            } else {
                format!("http://{base}")
            };
            let endpoint = format!("{base}/v1/dev/{path}");
            match agent
                .post(&endpoint)
                .header("content-type", "application/json")
                .send(body.to_string().as_bytes())
            {
                Ok(mut resp) => {
                    let status = resp.status();
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    return Ok((status, text));
                }
                Err(e) => last = Some(format!("{endpoint}: {e}")),
            }
        }
        Err(anyhow!(
            "no node of the dev cluster answered ({}); is `cairn dev` running?",
            last.unwrap_or_default()
        ))
    })
    .await??;
    let (status, text) = answer;
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({"message": text}));
    if let Some(e) = value.get("error") {
        bail!(
            "{} ({})",
            e["message"].as_str().unwrap_or("refused"),
            e["code"].as_str().unwrap_or(status.as_str())
        );
    }
    if path == "faults" {
        let mut table = comfy_table::Table::new();
        table.load_preset(comfy_table::presets::NOTHING);
        table.set_header(["node", "state", "pid", "http"]);
        for n in value["nodes"].as_array().into_iter().flatten() {
            table.add_row([
                n["node"].as_str().unwrap_or("").to_string(),
                n["state"].as_str().unwrap_or("").to_string(),
                n["pid"].as_u64().map(|p| p.to_string()).unwrap_or_default(),
                n["http"].as_str().unwrap_or("").to_string(),
            ]);
        }
        println!("{table}");
        for l in value["links"].as_array().into_iter().flatten() {
            println!(
                "link {} - {}: {}",
                l["between"][0].as_str().unwrap_or(""),
                l["between"][1].as_str().unwrap_or(""),
                l["fault"]
            );
        }
        return Ok(());
    }
    println!("{}", value["message"].as_str().unwrap_or(&text));
    Ok(())
}
