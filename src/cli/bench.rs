//! `cairn bench`: load generators over pgwire that work against Cairn or any PostgreSQL
//! server, and a failover timer for a local Cairn cluster. Results are throughput and
//! latency percentiles; a read that returns a wrong value is an error, not a data point.

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Latency samples kept per client; beyond this a run is long enough that more samples
/// would not change a percentile.
const SAMPLES_PER_CLIENT_MAX: usize = 5_000_000;

#[derive(Debug, Clone, clap::Args)]
pub struct KvArgs {
    /// PostgreSQL URL of the server to load (Cairn or PostgreSQL).
    #[arg(long, default_value = "postgres://cairn@127.0.0.1:5433/cairn")]
    pub url: String,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// How long to run, e.g. 30s or 2min.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Fraction of operations that are point reads (the rest are updates).
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
    /// Number of keys (loaded before the run).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Random seed for key choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of operations that are scatter-gather aggregates over every key
    /// (`count(*)`, `sum(length(v))`, checked); taken before the read ratio.
    #[arg(long, default_value_t = 0.0)]
    pub scan_ratio: f64,
    /// Cairn only: spread the table over this many shards (`WITH (shard_count = N)`); the
    /// table is then named `cairn_bench_kv_<N>`.
    #[arg(long)]
    pub shards: Option<u32>,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (n, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let n: f64 = n
        .parse()
        .map_err(|_| format!("not a duration: {text} (e.g. 30s, 500ms, 2min)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "min" | "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {text} (ms, s or min)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// The value stored under `key`, so reads can be checked: the key's digits repeated, padded
/// with a version marker that updates change.
fn value(key: u64, version: u64, len: usize) -> String {
    let unit = format!("{key}:{version};");
    unit.repeat(len / unit.len() + 1)[..len].to_string()
}

fn valid(key: u64, v: &str, len: usize) -> bool {
    v.len() == len && v.starts_with(&format!("{key}:"))
}

pub struct Report {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
}

impl Report {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    pub fn print(&self, what: &str) {
        println!(
            "{what}: {} ops in {:.1}s = {:.0} ops/s; latency ms p50 {:.2} p99 {:.2} p999 {:.2}; errors {}",
            self.ops,
            self.elapsed.as_secs_f64(),
            self.ops as f64 / self.elapsed.as_secs_f64(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.percentile(0.999),
            self.errors
        );
    }
}

pub async fn kv(args: KvArgs) -> anyhow::Result<Report> {
    if !(0.0..=1.0).contains(&args.read_ratio) || !(0.0..=1.0).contains(&args.scan_ratio) {
        bail!("--read-ratio and --scan-ratio must be between 0 and 1");
    }
    let table = match args.shards {
        Some(n) => format!("cairn_bench_kv_{n}"),
        None => "cairn_bench_kv".to_string(),
    };
    let with = match args.shards {
        Some(n) => format!(" WITH (shard_count = {n})"),
        None => String::new(),
    };
    if args.keys == 0 || args.clients == 0 || args.value_bytes < 8 {
        bail!("--keys and --clients must be positive and --value-bytes at least 8");
    }
    let mut setup = connect(&args.url).await?;
    setup
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (k bigint PRIMARY KEY, v text NOT NULL){with}"
        ))
        .await?;
    eprintln!(
        "loading {} keys of {} bytes...",
        args.keys, args.value_bytes
    );
    let load = setup
        .prepare(&format!("INSERT INTO {table} (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v"))
        .await?;
    let mut loaded = 0u64;
    while loaded < args.keys {
        let end = (loaded + 500).min(args.keys);
        let tx = setup.transaction().await?;
        for k in loaded..end {
            tx.execute(&load, &[&(k as i64), &value(k, 0, args.value_bytes)])
                .await?;
        }
        tx.commit().await?;
        loaded = end;
        eprint!("\r  {loaded}/{}", args.keys);
    }
    eprintln!();
    let stop = Arc::new(AtomicBool::new(false));
    let done_ops = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (args, stop, done_ops) = (args.clone(), stop.clone(), done_ops.clone());
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&args.url).await?;
            let read = client
                .prepare(&format!("SELECT v FROM {table} WHERE k = $1"))
                .await?;
            let write = client
                .prepare(&format!("UPDATE {table} SET v = $2 WHERE k = $1"))
                .await?;
            let scan = client
                .prepare(&format!("SELECT count(*), sum(length(v)) FROM {table}"))
                .await?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                args.seed.wrapping_mul(1_000_003).wrapping_add(c as u64),
            );
            let mut lat = Vec::new();
            let (mut ops, mut errors, mut version) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let key = rng.random_range(0..args.keys);
                let started = Instant::now();
                let ok = if args.scan_ratio > 0.0 && rng.random_bool(args.scan_ratio) {
                    match client.query_one(&scan, &[]).await {
                        Ok(row) => {
                            row.get::<_, i64>(0) == args.keys as i64
                                && row.get::<_, i64>(1)
                                    == (args.keys * args.value_bytes as u64) as i64
                        }
                        Err(_) => false,
                    }
                } else if rng.random_bool(args.read_ratio) {
                    match client.query_opt(&read, &[&(key as i64)]).await {
                        Ok(Some(row)) => valid(key, row.get::<_, &str>(0), args.value_bytes),
                        _ => false,
                    }
                } else {
                    version += 1;
                    let v = value(key, version * 1000 + c as u64, args.value_bytes);
                    matches!(client.execute(&write, &[&(key as i64), &v]).await, Ok(1))
                };
                if ok {
                    ops += 1;
                    if lat.len() < SAMPLES_PER_CLIENT_MAX {
                        lat.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    done_ops.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((ops, errors, lat))
        }));
    }
    let started = Instant::now();
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_secs(1).min(args.duration)).await;
        let n = done_ops.load(Ordering::Relaxed);
        eprint!(
            "\r  {:>5.1}s  {n} ops  {:.0} ops/s   ",
            started.elapsed().as_secs_f64(),
            n as f64 / started.elapsed().as_secs_f64()
        );
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!();
    let elapsed = started.elapsed();
    let mut report = Report {
        ops: 0,
        errors: 0,
        elapsed,
        latencies_us: Vec::new(),
    };
    for t in tasks {
        let (ops, errors, lat) = t.await??;
        report.ops += ops;
        report.errors += errors;
        report.latencies_us.extend(lat);
    }
    report.latencies_us.sort_unstable();
    Ok(report)
}

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// How many times to kill the leader.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// Where the cluster's data dirs go (emptied first).
    #[arg(long, default_value = "cairn-bench-failover")]
    pub data_dir: std::path::PathBuf,
    /// First of the ports used (pgwire, HTTP and cluster ports of 3 nodes follow it).
    #[arg(long, default_value_t = 17000)]
    pub base_port: u16,
}

/// Kill -9 the leader of a local 3-node cluster `trials` times; report the time from each
/// kill to the first successful write issued after it.
pub async fn failover(args: FailoverArgs) -> anyhow::Result<Vec<Duration>> {
    if args.trials == 0 {
        bail!("--trials must be at least 1");
    }
    let mut cluster = super::local::LocalCluster::start(3, &args.data_dir, args.base_port)?;
    let first = cluster.nodes[0].cluster;
    connect(&cluster.nodes[0].url())
        .await?
        .batch_execute("CREATE TABLE failover_probe (id bigserial PRIMARY KEY, at text)")
        .await?;
    let mut times = Vec::new();
    for trial in 0..args.trials {
        let leader = cluster.leader().context("no leader")?;
        cluster.nodes[leader].kill9().await;
        let killed = Instant::now();
        let survivor = cluster.nodes[(leader + 1) % 3].url();
        let elapsed = loop {
            let attempt = async {
                let c = connect(&survivor).await?;
                c.execute("INSERT INTO failover_probe (at) VALUES (now()::text)", &[])
                    .await?;
                anyhow::Ok(())
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
                break killed.elapsed();
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("no write succeeded within 60 s of killing the leader");
            }
        };
        println!(
            "trial {}: killed n{}, first write after {:.0} ms",
            trial + 1,
            leader + 1,
            elapsed.as_secs_f64() * 1000.0
        );
        times.push(elapsed);
        cluster.nodes[leader].spawn(Some(first))?;
    }
    times.sort();
    Ok(times)
}
