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
/// not a second row, and the count below would show a lost one).
fn write_rows(pg: SocketAddr, keys: std::ops::RangeInclusive<i64>) {
    for k in keys {
        let deadline = Instant::now() + Duration::from_secs(60);
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

/// The three nodes in n1's view, every one alive, each at its service's name: which node id
/// each service has (a recreated container must come back under its id, not as a fourth
/// node).
fn three_alive(http: SocketAddr) -> Result<Vec<(String, String)>, String> {
    let v = json(http, "/v1/nodes").ok_or("no answer from /v1/nodes")?;
    let nodes: Vec<(String, String, String)> = v["nodes"]
        .as_array()
        .ok_or("no nodes")?
        .iter()
        .map(|n| {
            (
                n["cluster_addr"].as_str().unwrap_or("?").to_string(),
                n["id"].as_str().unwrap_or("?").to_string(),
                n["liveness"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    let mut addrs: Vec<&str> = nodes.iter().map(|n| n.0.as_str()).collect();
    addrs.sort();
    if addrs == ["n1:7000", "n2:7000", "n3:7000"] && nodes.iter().all(|n| n.2 == "alive") {
        let mut ids: Vec<(String, String)> =
            nodes.into_iter().map(|(addr, id, _)| (addr, id)).collect();
        ids.sort();
        Ok(ids)
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
    if Command::new("psql").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CAIRN_REQUIRE_PSQL").is_none(),
            "psql is required here but not installed"
        );
        eprintln!("skipped: psql is not installed");
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
    // Each service starts once the one before is healthy: node ids follow service names.
    let ids: Vec<(String, String)> = (1..=3)
        .map(|i| (format!("n{i}:7000"), format!("n{i}")))
        .collect();
    wait_until(
        || match three_alive(http1) {
            Ok(found) if found == ids => Ok(()),
            Ok(found) => Err(format!("ids {found:?}")),
            Err(e) => Err(e),
        },
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
        || match three_alive(http1) {
            Ok(found) if found == ids => Ok(()),
            Ok(found) => Err(format!("ids {found:?}")),
            Err(e) => Err(e),
        },
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
    let err = start_refused(
        &[
            "--insecure",
            "--cluster-addr",
            &every(cluster),
            "--pg-addr",
            &pg.to_string(),
            "--http-addr",
            &http.to_string(),
        ],
        &[],
    );
    assert!(err.contains("give --advertise-addr"), "{err}");
    // An advertised name that does not resolve is said at once.
    let err = start_refused(
        &[
            "--insecure",
            "--cluster-addr",
            &every(cluster),
            "--pg-addr",
            &pg.to_string(),
            "--http-addr",
            &http.to_string(),
        ],
        &[("CAIRN_ADVERTISE_ADDR", "no-such-host.invalid")],
    );
    assert!(
        err.contains("advertised address no-such-host.invalid:"),
        "{err}"
    );
}
