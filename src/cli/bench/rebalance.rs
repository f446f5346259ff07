//! `cairn bench rebalance`: what membership changes cost a running cluster. A local cluster
//! (`cairn start` processes on loopback) gets a table of large rows, then a key-value load
//! runs throughout four phases, each reported with its throughput and latency:
//! - before: the cluster as started;
//! - rebalance: nodes added, until every shard is at its replication factor and replica
//!   counts are even (bytes copied to the new nodes / time = the rebalance rate);
//! - after: the grown cluster, settled;
//! - repair: one node killed with SIGKILL and left dead, until gossip calls it dead
//!   (detection time) and, `--dead-after` later, every shard is back at its replication
//!   factor on live nodes (its data / the repair's time = the repair rate).
//!
//! Every read is checked and every acknowledged update must be visible at the end.

use super::super::local::{http_get, LocalCluster};
use super::connect;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct RebalanceArgs {
    /// Nodes started.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Nodes added for the rebalance.
    #[arg(long, default_value_t = 2)]
    pub add: usize,
    /// Shards of the data table.
    #[arg(long, default_value_t = 16)]
    pub shards: u32,
    /// Rows of the data table.
    #[arg(long, default_value_t = 200_000)]
    pub rows: u64,
    /// Bytes of each row's payload.
    #[arg(long, default_value_t = 1000)]
    pub row_bytes: u64,
    /// Key-value clients running throughout.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Keys of the key-value table.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// How long the before and after phases measure.
    #[arg(long, default_value = "20s", value_parser = super::parse_duration)]
    pub phase: Duration,
    /// The nodes' `--dead-after` (how long a dead node waits before its replicas are
    /// re-created).
    #[arg(long, default_value = "10s")]
    pub dead_after: String,
    /// The most a rebalance or a repair may take before the run fails.
    #[arg(long, default_value = "10min", value_parser = super::parse_duration)]
    pub limit: Duration,
    /// Where the cluster's data dirs go (emptied first).
    #[arg(long, default_value = "cairn-bench-rebalance")]
    pub data_dir: std::path::PathBuf,
    /// First of the ports used (each node's pgwire, HTTP and cluster ports follow it).
    #[arg(long, default_value_t = 17300)]
    pub base_port: u16,
}

/// The load's counters; `phase` says which phase an operation lands in.
#[derive(Default)]
struct Tally {
    phase: AtomicUsize,
    stop: AtomicBool,
    /// Per phase: operations done, errors, latencies (µs).
    ops: [AtomicU64; PHASES.len()],
    errors: [AtomicU64; PHASES.len()],
    latencies: Mutex<[Vec<u32>; PHASES.len()]>,
    /// The value each key was last acknowledged with (updates only ever increase it).
    acked: Mutex<BTreeMap<i64, i64>>,
}

const PHASES: [&str; 4] = ["before", "rebalance", "after", "repair"];

/// One phase's measurement.
pub struct Phase {
    pub name: &'static str,
    pub seconds: f64,
    pub ops_per_s: f64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub struct RebalanceReport {
    pub phases: Vec<Phase>,
    /// Bytes copied onto the added nodes, and how long the rebalance took.
    pub rebalance_bytes: u64,
    pub rebalance_s: f64,
    /// Shards with a replica moved onto the added nodes.
    pub rebalance_moves: u64,
    /// From the kill to gossip saying dead; to every shard back at its factor.
    pub detect_s: f64,
    pub repaired_s: f64,
    /// Replicas re-created and the bytes of rows the dead node held.
    pub repair_replicas: u64,
    pub repair_bytes: u64,
    /// The nodes' `--dead-after`, which the repair waits out before copying.
    pub dead_after_s: f64,
}

impl RebalanceReport {
    pub fn print(&self) {
        println!("| phase | seconds | kv ops/s | errors | p50 ms | p99 ms |");
        println!("|---|---:|---:|---:|---:|---:|");
        for p in &self.phases {
            println!(
                "| {} | {:.1} | {:.0} | {} | {:.2} | {:.2} |",
                p.name, p.seconds, p.ops_per_s, p.errors, p.p50_ms, p.p99_ms
            );
        }
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        println!(
            "rebalance: {} replicas, {:.0} MiB copied to the new nodes in {:.1} s ({:.0} s per GiB)",
            self.rebalance_moves,
            self.rebalance_bytes as f64 / (1 << 20) as f64,
            self.rebalance_s,
            self.rebalance_s / gib(self.rebalance_bytes).max(1e-9)
        );
        let repair = (self.repaired_s - self.detect_s - self.dead_after_s).max(0.0);
        println!(
            "repair: dead after {:.1} s; every shard back at its factor {:.1} s after the kill; \
             {} replicas ({:.0} MiB of replica files) re-created",
            self.detect_s,
            self.repaired_s,
            self.repair_replicas,
            self.repair_bytes as f64 / (1 << 20) as f64,
        );
        if self.repair_replicas > 0 {
            println!(
                "  copying (after --dead-after {:.0} s): {repair:.1} s, {:.2} s per shard, {:.0} s per GiB",
                self.dead_after_s,
                repair / self.repair_replicas as f64,
                repair / gib(self.repair_bytes).max(1e-9)
            );
        }
    }
}

fn json(addr: std::net::SocketAddr, path: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(addr, path)?).ok()
}

/// Every shard at its factor with nothing leaving, replica counts of active nodes within
/// one of each other, and each of `must_hold` holding some.
fn settled(addr: std::net::SocketAddr, must_hold: &[String], not_on: &[String]) -> bool {
    let (Some(shards), Some(nodes)) = (json(addr, "/v1/shards"), json(addr, "/v1/nodes")) else {
        return false;
    };
    let active = nodes["nodes"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .filter(|n| n["state"] == "active" && !not_on.iter().any(|d| n["id"] == **d))
                .count() as u64
        })
        .unwrap_or(0);
    let shards_ok = shards["shards"].as_array().is_some_and(|ss| {
        ss.iter().all(|s| {
            let replicas = s["replicas"].as_array().map(Vec::len).unwrap_or(0) as u64;
            let factor = s["replication_factor"].as_u64().unwrap_or(0);
            let want = if factor == 0 {
                active
            } else {
                factor.min(active)
            };
            replicas == want
                && s["leaving"].as_array().is_some_and(Vec::is_empty)
                && !s["replicas"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|n| not_on.iter().any(|d| n == d)))
        })
    });
    let counts: BTreeMap<String, u64> = nodes["nodes"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .filter(|n| n["state"] == "active" && !not_on.iter().any(|d| n["id"] == **d))
                .map(|n| {
                    (
                        n["id"].as_str().unwrap_or("").to_string(),
                        n["replicas"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let even = counts.values().max().unwrap_or(&0) - counts.values().min().unwrap_or(&0) <= 1;
    shards_ok
        && even
        && must_hold
            .iter()
            .all(|m| counts.get(m).is_some_and(|c| *c > 0))
}

fn node_id(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    json(addr, "/health")
        .and_then(|h| h["node"].as_str().map(String::from))
        .context("a node's /health did not name it")
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Wait until `done` holds, printing progress; fail after `limit`.
async fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if tokio::task::block_in_place(&mut done) {
            eprintln!("\r  {what}: {:.1}s   ", started.elapsed().as_secs_f64());
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        eprint!("\r  {what}... {:.0}s   ", started.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn rebalance(args: RebalanceArgs) -> anyhow::Result<RebalanceReport> {
    if args.nodes < 3 || args.clients == 0 || args.keys == 0 || args.shards == 0 {
        bail!("--nodes must be at least 3; --clients, --keys and --shards positive");
    }
    eprintln!(
        "starting {} nodes under {}",
        args.nodes,
        args.data_dir.display()
    );
    let mut cluster = tokio::task::block_in_place(|| {
        LocalCluster::start_with(
            args.nodes,
            &args.data_dir,
            args.base_port,
            vec!["--dead-after".into(), args.dead_after.clone()],
        )
    })?;
    let setup = connect(&cluster.nodes[0].url()).await?;
    let n = args.shards;
    setup
        .batch_execute(&format!(
            "CREATE TABLE cairn_bench_big (k bigint PRIMARY KEY, v text NOT NULL) WITH (shard_count = {n});
             CREATE TABLE cairn_bench_moving (k bigint PRIMARY KEY, v bigint NOT NULL) WITH (shard_count = {n});"
        ))
        .await?;
    let chunk = 10_000u64;
    let mut loaded = 0;
    while loaded < args.rows {
        let end = (loaded + chunk).min(args.rows);
        setup
            .batch_execute(&format!(
                "INSERT INTO cairn_bench_big SELECT g, repeat('x', {}) FROM generate_series({}, {}) g",
                args.row_bytes,
                loaded + 1,
                end
            ))
            .await?;
        loaded = end;
        eprint!("\r  loading rows: {loaded}/{}   ", args.rows);
    }
    setup
        .batch_execute(&format!(
            "INSERT INTO cairn_bench_moving SELECT g, 0 FROM generate_series(1, {}) g",
            args.keys
        ))
        .await?;
    eprintln!();
    let tally = Arc::new(Tally::default());
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let mut workers = Vec::new();
    for c in 0..args.clients {
        // Spread over the first nodes; the last of them is the one killed later, so its
        // clients move on to the others.
        let urls = urls.clone();
        let (tally, keys) = (tally.clone(), args.keys);
        workers.push(tokio::spawn(load(c, urls, keys, tally)));
    }
    let phase_started = |t: &Tally, i: usize| {
        t.phase.store(i, Ordering::SeqCst);
        eprintln!("phase {}", PHASES[i]);
        Instant::now()
    };
    let mut seconds = [0.0; PHASES.len()];
    // Before.
    let t = phase_started(&tally, 0);
    tokio::time::sleep(args.phase).await;
    seconds[0] = t.elapsed().as_secs_f64();
    // Rebalance onto added nodes.
    let t = phase_started(&tally, 1);
    let mut added = Vec::new();
    for _ in 0..args.add {
        let i = tokio::task::block_in_place(|| cluster.add())?;
        added.push(node_id(cluster.nodes[i].http)?);
    }
    let http = cluster.nodes[0].http;
    wait_until("rebalance", args.limit, || settled(http, &added, &[])).await?;
    seconds[1] = t.elapsed().as_secs_f64();
    let first_added = cluster.nodes.len() - args.add;
    let rebalance_bytes: u64 = cluster.nodes[first_added..]
        .iter()
        .map(|n| dir_bytes(&n.dir.join("shards")))
        .sum();
    let rebalance_moves: u64 = json(http, "/v1/nodes")
        .and_then(|v| {
            v["nodes"].as_array().map(|ns| {
                ns.iter()
                    .filter(|n| added.iter().any(|a| n["id"] == *a))
                    .map(|n| n["replicas"].as_u64().unwrap_or(0))
                    .sum()
            })
        })
        .unwrap_or(0);
    // After.
    let t = phase_started(&tally, 2);
    tokio::time::sleep(args.phase).await;
    seconds[2] = t.elapsed().as_secs_f64();
    // Repair: kill one of the first nodes (not node 0, which the progress polls).
    let victim = args.nodes - 1;
    let victim_id = node_id(cluster.nodes[victim].http)?;
    let repair_replicas = json(http, "/v1/nodes")
        .and_then(|v| {
            v["nodes"].as_array().and_then(|ns| {
                ns.iter()
                    .find(|n| n["id"] == *victim_id)
                    .and_then(|n| n["replicas"].as_u64())
            })
        })
        .unwrap_or(0);
    let repair_bytes = dir_bytes(&cluster.nodes[victim].dir.join("shards"));
    let t = phase_started(&tally, 3);
    cluster.nodes[victim].kill9().await;
    let killed = Instant::now();
    let dead = |id: &str| {
        json(http, "/v1/nodes").is_some_and(|v| {
            v["nodes"]
                .as_array()
                .is_some_and(|ns| ns.iter().any(|n| n["id"] == id && n["liveness"] == "dead"))
        })
    };
    let detect = wait_until("gossip calls it dead", args.limit, || dead(&victim_id)).await?;
    let gone = [victim_id.clone()];
    wait_until("repair", args.limit, || settled(http, &[], &gone)).await?;
    let repaired = killed.elapsed();
    seconds[3] = t.elapsed().as_secs_f64();
    tally.stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await??;
    }
    // Every acknowledged update is there.
    let acked = tally.acked.lock().expect("lock").clone();
    let check = connect(&cluster.nodes[0].url()).await?;
    for row in check
        .query("SELECT k, v FROM cairn_bench_moving", &[])
        .await?
    {
        let (k, v): (i64, i64) = (row.get(0), row.get(1));
        if let Some(want) = acked.get(&k) {
            if v < *want {
                bail!("key {k} holds {v}, but {want} was acknowledged");
            }
        }
    }
    let latencies = std::mem::take(&mut *tally.latencies.lock().expect("lock"));
    let phases = PHASES
        .iter()
        .zip(latencies)
        .enumerate()
        .map(|(i, (name, mut lat))| {
            lat.sort_unstable();
            let pct = |p: f64| {
                lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
                    .map_or(0.0, |us| *us as f64 / 1000.0)
            };
            Phase {
                name,
                seconds: seconds[i],
                ops_per_s: tally.ops[i].load(Ordering::Relaxed) as f64 / seconds[i].max(1e-9),
                errors: tally.errors[i].load(Ordering::Relaxed),
                p50_ms: pct(0.5),
                p99_ms: pct(0.99),
            }
        })
        .collect();
    Ok(RebalanceReport {
        phases,
        rebalance_bytes,
        rebalance_s: seconds[1],
        rebalance_moves,
        detect_s: detect.as_secs_f64(),
        repaired_s: repaired.as_secs_f64(),
        repair_replicas,
        repair_bytes,
        dead_after_s: super::parse_duration(&args.dead_after)
            .map_err(anyhow::Error::msg)?
            .as_secs_f64(),
    })
}

/// One client: reads (checked to never go back) and increments of random keys, through
/// node `c` of `urls` (the next one when its node stops answering).
async fn load(c: usize, urls: Vec<String>, keys: u64, tally: Arc<Tally>) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
    let mut at = c % urls.len();
    let mut client = None;
    while !tally.stop.load(Ordering::Relaxed) {
        let Some(db) = client.as_ref() else {
            match tokio::time::timeout(Duration::from_secs(2), connect(&urls[at])).await {
                Ok(Ok(db)) => client = Some(db),
                _ => {
                    at = (at + 1) % urls.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        let key = rng.random_range(1..=keys) as i64;
        let phase = tally.phase.load(Ordering::Relaxed);
        let started = Instant::now();
        let read = rng.random_bool(0.5);
        // What was acknowledged before this operation began: a read must see at least it.
        let floor = tally
            .acked
            .lock()
            .expect("lock")
            .get(&key)
            .copied()
            .unwrap_or(0);
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            if read {
                db.query_one("SELECT v FROM cairn_bench_moving WHERE k = $1", &[&key])
                    .await
                    .map(|r| r.get::<_, i64>(0))
            } else {
                db.query_one(
                    "UPDATE cairn_bench_moving SET v = v + 1 WHERE k = $1 RETURNING v",
                    &[&key],
                )
                .await
                .map(|r| r.get::<_, i64>(0))
            }
        })
        .await;
        match answer {
            Ok(Ok(v)) => {
                let mut acked = tally.acked.lock().expect("lock");
                if read && v < floor {
                    bail!("key {key} read {v} after {floor} was acknowledged");
                }
                let known = acked.entry(key).or_insert(0);
                *known = (*known).max(v);
                drop(acked);
                tally.ops[phase].fetch_add(1, Ordering::Relaxed);
                let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                tally.latencies.lock().expect("lock")[phase].push(us);
            }
            Ok(Err(e)) => {
                tally.errors[phase].fetch_add(1, Ordering::Relaxed);
                if e.is_closed() || e.code().is_some_and(|c| c.code().starts_with("57P")) {
                    client = None;
                    at = (at + 1) % urls.len();
                }
            }
            Err(_) => {
                tally.errors[phase].fetch_add(1, Ordering::Relaxed);
                client = None;
                at = (at + 1) % urls.len();
            }
        }
    }
    Ok(())
}
