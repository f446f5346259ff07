//! The Docker image (`Dockerfile`, `scripts/docker-rootfs`) and `deploy/docker-compose.yml`
//! on the real Docker engine, with the cairn binary this build made: psql from the host into
//! the cluster, a container killed and recreated with a new IP address while writes go on,
//! and `down -v`. `.ci/run` sets CAIRN_REQUIRE_DOCKER=1 where the engine answers; elsewhere
//! the test says it was skipped.

mod common;

use common::{free_addr, http_get, wait_until};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether the tools a test drives are here; says it skips when not (required by `.ci/run`).
fn have(programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| Command::new(p).arg("--version").output().is_err())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CAIRN_REQUIRE_PSQL").is_none(),
        "{missing:?} required here but not installed"
    );
    eprintln!("skipped: {missing:?} not installed");
    false
}

fn docker_usable() -> bool {
    let ok = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let usable = ok("docker", &["info"]) && ok("docker-compose", &["version"]);
    if !usable {
        assert!(
            std::env::var_os("CAIRN_REQUIRE_DOCKER").is_none(),
            "CAIRN_REQUIRE_DOCKER is set but the Docker engine or docker-compose is not usable"
        );
        eprintln!("skipped: no usable Docker engine and docker-compose here");
    }
    usable
}

/// A compose project of deploy/docker-compose.yml with its own name, image and host ports;
/// taken down with its volumes when dropped, whatever the test did.
struct Compose {
    project: String,
    image: String,
    pg: [SocketAddr; 3],
    http: [SocketAddr; 3],
}

impl Compose {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(repo())
            .args(["-p", &self.project, "-f", "deploy/docker-compose.yml"])
            .args(args)
            .env("CAIRN_IMAGE", &self.image);
        for i in 0..3 {
            cmd.env(
                format!("CAIRN_N{}_PG", i + 1),
                self.pg[i].port().to_string(),
            )
            .env(
                format!("CAIRN_N{}_HTTP", i + 1),
                self.http[i].port().to_string(),
            );
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn ip(&self, service: &str) -> String {
        let out = run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.container(service),
        ]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn placeholder(&self) -> String {
        format!("{}-placeholder", self.project)
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.placeholder()])
            .output();
        let _ = self
            .command(&["down", "-v", "--remove-orphans", "-t", "5"])
            .output();
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

fn json(http: SocketAddr, path: &str) -> Option<Value> {
    http_get(http, path).and_then(|b| serde_json::from_str(&b).ok())
}

/// psql from the host: `-At`, stopping at the first error; its output, or its error.
fn psql(pg: SocketAddr, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At"])
        .arg(format!("postgres://cairn@{pg}/cairn?connect_timeout=5"))
        .args(["-c", sql])
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Insert rows `keys` through `pg`, one statement each, retrying a failed one until it
/// succeeds (ON CONFLICT DO NOTHING: a retried insert whose first try committed after all is
/// not a second row, and the count below would show a lost one). Each row gets 30 s, half a
/// forwarded statement's own timeout: a statement stuck on a leader that was cut off fails
/// here rather than waiting that out.
fn write_rows(pg: SocketAddr, keys: std::ops::RangeInclusive<i64>) {
    for k in keys {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sql = format!("INSERT INTO kv VALUES ({k}, 'v{k}') ON CONFLICT (k) DO NOTHING");
            match psql(pg, &sql) {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "insert {k} kept failing: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

/// The three nodes in n1's view, every one alive, service `nX` at `nX:7000` as node `nX`
/// (each service starts once the one before is healthy, so ids follow service names; a
/// recreated container must come back under its id, not as a fourth node).
fn three_alive(http: SocketAddr) -> Result<(), String> {
    let v = json(http, "/v1/nodes").ok_or("no answer from /v1/nodes")?;
    let mut nodes: Vec<String> = v["nodes"]
        .as_array()
        .ok_or("no nodes")?
        .iter()
        .map(|n| format!("{} {} {}", n["cluster_addr"], n["id"], n["liveness"]))
        .collect();
    nodes.sort();
    let want: Vec<String> = (1..=3)
        .map(|i| format!("\"n{i}:7000\" \"n{i}\" \"alive\""))
        .collect();
    if nodes == want {
        Ok(())
    } else {
        Err(format!("{nodes:?}"))
    }
}

/// Every replica of every shard has applied what its leader has, no lag.
fn caught_up(http: SocketAddr) -> Result<(), String> {
    let v = json(http, "/v1/shards").ok_or("no answer from /v1/shards")?;
    let shards = v["shards"].as_array().ok_or("no shards")?;
    let behind: Vec<String> = shards
        .iter()
        .flat_map(|s| {
            let states = s["replica_state"].as_array().cloned().unwrap_or_default();
            let top = states
                .iter()
                .filter_map(|r| r["applied_index"].as_u64())
                .max()
                .unwrap_or(0);
            let mut behind: Vec<String> = states
                .iter()
                .filter(|r| r["applied_index"].as_u64() != Some(top) || r["lag"] != 0)
                .map(|r| format!("{} on {}: {}", s["shard"], r["node"], r["applied_index"]))
                .collect();
            if states.len() != 3 {
                behind.push(format!("{} has {} replicas", s["shard"], states.len()));
            }
            behind
        })
        .collect();
    if shards.is_empty() || !behind.is_empty() {
        Err(format!("{} shards; behind: {behind:?}", shards.len()))
    } else {
        Ok(())
    }
}

fn healthy(compose: &Compose) -> Result<(), String> {
    let states: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|s| {
            Command::new("docker")
                .args(["inspect", "-f", "{{.State.Health.Status}}"])
                .arg(compose.container(s))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        })
        .collect();
    if states.iter().all(|s| s == "healthy") {
        Ok(())
    } else {
        Err(format!("{states:?}"))
    }
}

#[test]
fn a_compose_cluster_keeps_writing_while_a_container_dies_and_returns_with_a_new_address() {
    if !docker_usable() {
        return;
    }
    if !have(&["psql"]) {
        return;
    }
    let project = format!("cairntest{}", std::process::id());
    let compose = Compose {
        image: format!("cairn-test:{}", std::process::id()),
        project,
        pg: [free_addr(), free_addr(), free_addr()],
        http: [free_addr(), free_addr(), free_addr()],
    };
    // The image, from this build's binary.
    run(Command::new(repo().join("scripts/docker-rootfs"))
        .current_dir(repo())
        .args(["--bin", env!("CARGO_BIN_EXE_cairn")]));
    run(Command::new("docker").current_dir(repo()).args([
        "build",
        "-q",
        "-t",
        &compose.image,
        ".",
    ]));
    compose.run(&["up", "-d"]);
    let (pg1, http1) = (compose.pg[0], compose.http[0]);
    wait_until(
        || three_alive(http1),
        Duration::from_secs(120),
        "n1, n2, n3 alive at n1:7000, n2:7000, n3:7000",
    );
    wait_until(
        || healthy(&compose),
        Duration::from_secs(120),
        "every container healthy",
    );

    // psql from the host, through the published port.
    let create = "CREATE TABLE kv (k bigint PRIMARY KEY, v text) WITH (shard_count = 4)";
    wait_until(
        || psql(pg1, create).map(|_| ()),
        Duration::from_secs(60),
        "CREATE TABLE through n1",
    );
    write_rows(pg1, 1..=50);

    // n2 killed and its container removed; writes go on through n1.
    let old_ip = compose.ip("n2");
    compose.run(&["kill", "n2"]);
    compose.run(&["rm", "-f", "n2"]);
    write_rows(pg1, 51..=100);

    // Docker would hand the recreated container its old address: another container takes
    // it first, so n2 comes back on a new one.
    run(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        &compose.placeholder(),
        "--network",
        &format!("{}_cairn", compose.project),
        &compose.image,
        "start",
        "--pg-addr",
        "127.0.0.1:5433",
        "--http-addr",
        "127.0.0.1:8080",
        "--cluster-addr",
        "127.0.0.1:7000",
    ]));
    compose.run(&["up", "-d", "n2"]);
    let new_ip = compose.ip("n2");
    assert_ne!(old_ip, new_ip, "n2 should be on a new address");
    write_rows(pg1, 101..=150);

    // n2 rejoins under its identity (still three nodes, n2 at n2:7000) and catches up.
    wait_until(
        || three_alive(http1),
        Duration::from_secs(120),
        "n2's container back under its node id, alive",
    );
    wait_until(
        || caught_up(http1),
        Duration::from_secs(120),
        "every replica caught up",
    );
    let pg2 = compose.pg[1];
    let counted = psql(
        pg2,
        "SELECT count(*), count(DISTINCT k), min(k), max(k) FROM kv",
    )
    .expect("count through n2");
    assert_eq!(counted, "150|150|1|150", "rows read through n2");
    wait_until(
        || healthy(&compose),
        Duration::from_secs(120),
        "every container healthy again",
    );

    // down -v takes the containers, the network and the volumes.
    run(Command::new("docker").args(["rm", "-f", "-v", &compose.placeholder()]));
    compose.run(&["down", "-v", "-t", "5"]);
    let volumes = run(Command::new("docker").args([
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name={}_", compose.project),
    ]));
    assert!(
        String::from_utf8_lossy(&volumes.stdout).trim().is_empty(),
        "volumes left after down -v"
    );
}

/// `cairn start` with `args` and `env`, expected to exit at once: its stderr.
fn start_refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.arg("start")
        .arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "{args:?} should not start");
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} {env:?} started; it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_refuses_to_listen_beyond_loopback_unless_told_insecure() {
    let (pg, http, cluster) = (free_addr(), free_addr(), free_addr());
    let every = |a: SocketAddr| format!("0.0.0.0:{}", a.port());
    let loopback = [
        "--http-addr",
        &http.to_string(),
        "--cluster-addr",
        &cluster.to_string(),
    ];
    // One exposed listener is enough to refuse, named in the error, by flag or by variable.
    let err = start_refused(&[&["--pg-addr", &every(pg)][..], &loopback].concat(), &[]);
    assert!(
        err.contains("refusing to listen beyond this machine"),
        "{err}"
    );
    assert!(err.contains(&format!("--pg-addr {}", every(pg))), "{err}");
    let err = start_refused(&loopback, &[("CAIRN_PG_ADDR", &every(pg))]);
    assert!(
        err.contains("refusing to listen beyond this machine"),
        "{err}"
    );
    // --insecure lets it listen there, but every interface is no address for others.
    let (every_cluster, pg, http) = (every(cluster), pg.to_string(), http.to_string());
    let insecure = [
        "--insecure",
        "--cluster-addr",
        &every_cluster,
        "--pg-addr",
        &pg,
        "--http-addr",
        &http,
    ];
    let err = start_refused(&insecure, &[]);
    assert!(err.contains("give --advertise-addr"), "{err}");
    // An advertised name that does not resolve is said at once.
    let err = start_refused(
        &insecure,
        &[("CAIRN_ADVERTISE_ADDR", "no-such-host.invalid")],
    );
    assert!(
        err.contains("advertised address no-such-host.invalid:"),
        "{err}"
    );
}

/// Three hosts made of Linux network namespaces: each node in its own, with its own IP
/// address, joined by veth pairs to a bridge in a fourth (a switch), and the test's own
/// namespace plugged into the same bridge. Everything is removed when dropped.
struct Hosts {
    tag: String,
    subnet: String,
    nodes: Vec<std::process::Child>,
    _dirs: tempfile::TempDir,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    fn switch(&self) -> String {
        format!("{}s", self.tag)
    }
    fn host(&self, i: usize) -> String {
        format!("{}h{i}", self.tag)
    }
    /// The switch's end of host `i`'s cable.
    fn port(&self, i: usize) -> String {
        format!("{}p{i}", self.tag)
    }
    fn addr(&self, i: usize, port: u16) -> SocketAddr {
        format!("{}.{}:{port}", self.subnet, i).parse().unwrap()
    }

    /// Make the switch, three hosts and the test's cable; Err if this machine cannot.
    fn build() -> Result<Hosts, String> {
        let pid = std::process::id();
        let hosts = Hosts {
            tag: format!("cn{}", pid % 100_000),
            subnet: format!("10.213.{}", pid % 250),
            nodes: Vec::new(),
            _dirs: tempfile::tempdir().map_err(|e| e.to_string())?,
        };
        let sw = hosts.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 1..=3 {
            let (host, port) = (hosts.host(i), hosts.port(i));
            ip(&["netns", "add", &host])?;
            ip(&[
                "link", "add", "eth0", "netns", &host, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            let cidr = format!("{}.{i}/24", hosts.subnet);
            ip(&["-n", &host, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
        }
        // The test's own cable, from this namespace to the switch.
        let mine = format!("{}t", hosts.tag);
        ip(&[
            "link",
            "add",
            &mine,
            "type",
            "veth",
            "peer",
            "name",
            &hosts.port(0),
            "netns",
            &sw,
        ])?;
        ip(&[
            "-n",
            &sw,
            "link",
            "set",
            &hosts.port(0),
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", hosts.subnet),
            "dev",
            &mine,
        ])?;
        ip(&["link", "set", &mine, "up"])?;
        Ok(hosts)
    }

    /// `cairn start` on host `i`, listening on its own address, joining host 1 unless first.
    fn start(&mut self, i: usize) {
        let dir = self._dirs.path().join(format!("n{i}"));
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.host(i),
            env!("CARGO_BIN_EXE_cairn"),
            "start",
            "--insecure",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--pg-addr", &self.addr(i, 5433).to_string()])
        .args(["--http-addr", &self.addr(i, 8080).to_string()])
        .args(["--cluster-addr", &self.addr(i, 7000).to_string()])
        .args(["--dead-after", "5m"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
        if let Some(logs) = std::env::var_os("CAIRN_NETNS_LOGS") {
            let file = std::fs::File::create(Path::new(&logs).join(format!("n{i}.log"))).unwrap();
            cmd.stderr(file);
        }
        if i > 1 {
            cmd.args(["--join", &self.addr(1, 7000).to_string()]);
        }
        self.nodes
            .push(cmd.spawn().expect("start a node in its namespace"));
    }

    /// Unplug host `i`'s cable at the switch (or plug it back).
    fn cable(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch(), "link", "set", &self.port(i), state]).unwrap();
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        // A veth pair goes with either end's namespace.
        for i in 1..=3 {
            let _ = ip(&["netns", "del", &self.host(i)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}

/// Which node leads each data shard, as `http` sees it.
fn leaders(http: SocketAddr) -> Vec<(String, Option<String>)> {
    json(http, "/v1/shards")
        .and_then(|v| v["shards"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|s| {
            (
                s["shard"].as_str().unwrap_or("?").to_string(),
                s["leader"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn nodes_on_three_network_namespaces_lose_a_link_keep_writing_and_converge() {
    let mut hosts = match Hosts::build() {
        Ok(h) => h,
        Err(e) => {
            assert!(
                std::env::var_os("CAIRN_REQUIRE_NETNS").is_none(),
                "CAIRN_REQUIRE_NETNS is set but namespaces cannot be made here: {e}"
            );
            eprintln!("skipped: network namespaces cannot be made here ({e})");
            return;
        }
    };
    if !have(&["psql"]) {
        return;
    }
    for i in 1..=3 {
        hosts.start(i);
    }
    let http = |i| hosts.addr(i, 8080);
    let pg = |i| hosts.addr(i, 5433);
    let all_alive = |at: SocketAddr| -> Result<(), String> {
        let v = json(at, "/v1/nodes").ok_or("no answer")?;
        let live: Vec<String> = v["nodes"]
            .as_array()
            .ok_or("no nodes")?
            .iter()
            .map(|n| format!("{} {} {}", n["id"], n["cluster_addr"], n["liveness"]))
            .collect();
        if live.len() == 3 && live.iter().all(|l| l.ends_with("\"alive\"")) {
            Ok(())
        } else {
            Err(format!("{live:?}"))
        }
    };
    wait_until(
        || all_alive(http(1)),
        Duration::from_secs(120),
        "three nodes alive",
    );
    // Node ids go by join order; host i's id, by its address.
    let nodes = json(http(1), "/v1/nodes").unwrap();
    let id_of = |i: usize| -> String {
        let addr = hosts.addr(i, 7000).to_string();
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["cluster_addr"] == addr.as_str())
            .and_then(|n| n["id"].as_str())
            .unwrap_or_else(|| panic!("no node at {addr}: {nodes}"))
            .to_string()
    };
    let create = "CREATE TABLE kv (k bigint PRIMARY KEY, v text) WITH (shard_count = 6)";
    wait_until(
        || psql(pg(1), create).map(|_| ()),
        Duration::from_secs(60),
        "CREATE TABLE",
    );
    write_rows(pg(1), 1..=30);

    // Cut the cable of a node leading shards: the others elect new leaders and take writes.
    let mut cut = 0;
    wait_until(
        || {
            let led = leaders(http(1));
            cut = (2..=3)
                .find(|i| {
                    led.iter()
                        .any(|(_, l)| l.as_deref() == Some(id_of(*i).as_str()))
                })
                .unwrap_or(0);
            (cut != 0).then_some(()).ok_or(format!("leaders {led:?}"))
        },
        Duration::from_secs(60),
        "n2 or n3 leading a shard (leaders are spread)",
    );
    hosts.cable(cut, false);
    let other = 5 - cut; // of 2 and 3, the one still plugged in
    write_rows(pg(1), 31..=60);
    write_rows(pg(other), 61..=90);
    wait_until(
        || {
            let led = leaders(http(1));
            let gone = id_of(cut);
            let ok = led
                .iter()
                .all(|(_, l)| l.as_deref().is_some_and(|l| l != gone));
            ok.then_some(()).ok_or(format!("leaders {led:?}"))
        },
        Duration::from_secs(60),
        "every shard led by a node still connected",
    );

    // Plugged back: it is alive again, catches up, and serves every row.
    hosts.cable(cut, true);
    wait_until(
        || all_alive(http(1)),
        Duration::from_secs(120),
        "three nodes alive again",
    );
    wait_until(
        || caught_up(http(1)),
        Duration::from_secs(120),
        "every replica caught up",
    );
    let counted = psql(
        pg(cut),
        "SELECT count(*), count(DISTINCT k), min(k), max(k) FROM kv",
    )
    .expect("count through the healed node");
    assert_eq!(counted, "90|90|1|90", "rows read through n{cut}");
}

/// `cairn cert ...` into `dir`.
fn cert(dir: &Path, args: &[&str]) {
    run(Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["cert", "--certs-dir"])
        .arg(dir)
        .args(args));
}

/// curl over HTTPS trusting `ca`: the body, or curl's error.
fn https_get(ca: &Path, url: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// psql with a libpq connection string's `options` (TLS settings among them).
fn psql_with(port: u16, options: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At"])
        .arg(format!(
            "host=localhost port={port} dbname=cairn user=cairn connect_timeout=5 {options}"
        ))
        .args(["-c", sql])
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[test]
fn tls_serves_psql_and_https_with_the_cluster_ca_and_keeps_another_cas_node_out() {
    if !have(&["psql", "curl"]) {
        return;
    }
    let dirs = tempfile::tempdir().unwrap();
    let (certs, other) = (dirs.path().join("certs"), dirs.path().join("other"));
    for dir in [&certs, &other] {
        cert(dir, &["create-ca"]);
        cert(dir, &["create-node", "localhost", "127.0.0.1"]);
    }
    cert(&certs, &["create-client", "cairn"]);
    let ca = certs.join("ca.crt");
    let certs_arg = format!("ENV:CAIRN_CERTS_DIR={}", certs.display());

    // Three nodes with the cluster's certificates.
    let first = free_addr();
    let mut nodes: Vec<common::ProcessNode> = (0..3)
        .map(|i| common::ProcessNode {
            child: Command::new("true").spawn().unwrap(),
            pg: free_addr(),
            http: free_addr(),
            cluster: if i == 0 { first } else { free_addr() },
            dir: dirs.path().join(format!("n{i}")),
            join: (i > 0).then_some(first),
            extra: vec![certs_arg.clone()],
        })
        .collect();
    for node in &mut nodes {
        node.launch();
    }
    let url = |node: &common::ProcessNode, path: &str| {
        format!("https://localhost:{}{path}", node.http.port())
    };
    wait_until(
        || {
            let body = https_get(&ca, &url(&nodes[0], "/v1/nodes"))?;
            let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let alive = v["nodes"]
                .as_array()
                .map(|n| n.iter().filter(|n| n["liveness"] == "alive").count());
            (alive == Some(3)).then_some(()).ok_or(body)
        },
        Duration::from_secs(120),
        "three TLS nodes alive, over HTTPS",
    );

    // A node whose certificate is another CA's cannot join: no cluster connection gets past
    // the handshake. It gives up after its minute of trying.
    let rogue_dir = dirs.path().join("rogue");
    let mut rogue = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["start", "--data-dir"])
        .arg(&rogue_dir)
        .args(["--pg-addr", &free_addr().to_string()])
        .args(["--http-addr", &free_addr().to_string()])
        .args(["--cluster-addr", &free_addr().to_string()])
        .args(["--join", &first.to_string()])
        .env("CAIRN_CERTS_DIR", &other)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // psql, verifying the node's certificate and name; with a client certificate too.
    let pg = nodes[0].pg.port();
    let verify = format!("sslmode=verify-full sslrootcert={}", ca.display());
    let script = "CREATE TABLE secrets (k bigint PRIMARY KEY, v text); \
                  INSERT INTO secrets VALUES (1, 'a'), (2, 'b'); \
                  SELECT count(*) FROM secrets";
    assert_eq!(psql_with(pg, &verify, script), Ok("2".to_string()));
    let with_cert = format!(
        "{verify} sslcert={} sslkey={}",
        certs.join("client.cairn.crt").display(),
        certs.join("client.cairn.key").display()
    );
    let pg2 = nodes[1].pg.port();
    assert_eq!(
        psql_with(pg2, &with_cert, "SELECT v FROM secrets WHERE k = 2"),
        Ok("b".to_string())
    );
    // Without TLS: turned away. Trusting another CA: the node's certificate fails.
    let plain = psql_with(pg, "sslmode=disable", "SELECT 1").unwrap_err();
    assert!(plain.contains("TLS connections only"), "{plain}");
    // Cairn's own shell, with the CA and a client certificate, from a URL as psql takes it.
    let shell = run(Command::new(env!("CARGO_BIN_EXE_cairn")).args([
        "sql",
        &format!(
            "postgres://cairn@localhost:{pg}/cairn?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            ca.display(),
            certs.join("client.cairn.crt").display(),
            certs.join("client.cairn.key").display()
        ),
        "--csv",
        "-c",
        "SELECT count(*) FROM secrets",
    ]));
    let out = String::from_utf8_lossy(&shell.stdout);
    assert!(out.lines().any(|l| l.trim() == "2"), "{out}");
    let wrong = format!(
        "sslmode=verify-full sslrootcert={}",
        other.join("ca.crt").display()
    );
    let refused = psql_with(pg, &wrong, "SELECT 1").unwrap_err();
    assert!(refused.contains("certificate verify failed"), "{refused}");

    // HTTPS with the CA; not with another CA, not as plain HTTP.
    let health = https_get(&ca, &url(&nodes[2], "/health")).unwrap();
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    let err = https_get(&other.join("ca.crt"), &url(&nodes[2], "/health")).unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(
        http_get(nodes[2].http, "/health"),
        None,
        "plain HTTP answered"
    );
    // WSS: the WebSocket upgrade is answered over TLS (curl stops once it is switched).
    let upgrade = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "3", "--http1.1", "--cacert"])
        .arg(&ca)
        .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
        .args(["-H", "Sec-WebSocket-Version: 13"])
        .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
        .arg(url(&nodes[1], "/v1/ws"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&upgrade.stdout);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = rogue.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the rogue node is still trying");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(rogue.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success() && err.contains("could not join"), "{err}");
    let body = https_get(&ca, &url(&nodes[0], "/v1/nodes")).unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3, "{body}");
}
