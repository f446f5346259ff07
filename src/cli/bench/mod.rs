//! `cairn bench`: load generators that work against Cairn, PostgreSQL (any pgwire URL) and,
//! for the key-value workload, etcd (`etcd://host:port,...`, through etcd's JSON gateway);
//! a failover timer for a local Cairn cluster; and `report`, which turns the JSON results of
//! `scripts/bench-compare` into tables and plots. Results are throughput and latency
//! percentiles; a read that returns a wrong value stops the run with an error instead of
//! reporting a speed.

mod etcd;
pub mod files;
mod http_kv;
pub mod news;
pub mod rebalance;
pub mod report;
pub mod watch;
mod zipf;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Latency samples kept per client; beyond this a run is long enough that more samples
/// would not change a percentile.
const SAMPLES_PER_CLIENT_MAX: usize = 5_000_000;

/// What every workload takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Server to load: a PostgreSQL URL (Cairn or PostgreSQL), or for the key-value
    /// workload `etcd://host:port,...` or Cairn's HTTP API `http://host:port,...`.
    #[arg(long, default_value = "postgres://cairn@127.0.0.1:5433/cairn")]
    pub url: String,
    /// Concurrent clients (connections).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// How long to measure, e.g. 30s or 2min.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before measuring (not counted), e.g. 5s.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Random seed for the clients' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Name of the system under test, recorded in the JSON (e.g. cairn, postgresql, etcd).
    #[arg(long)]
    pub system: Option<String>,
    /// Server processes whose CPU time and peak memory to record, comma-separated pids.
    #[arg(long, value_delimiter = ',')]
    pub watch_pids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDistribution {
    Uniform,
    /// YCSB's zipfian (theta 0.99): a few keys take most operations.
    Zipfian,
}

#[derive(Debug, Clone, clap::Args)]
pub struct KvArgs {
    #[command(flatten)]
    pub common: Common,
    /// Fraction of operations that are point reads (the rest are updates).
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
    /// Number of keys (loaded before the run).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value_t = KeyDistribution::Uniform)]
    pub distribution: KeyDistribution,
    /// Keys written per update operation (one transaction).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Fraction of operations that are aggregates over every key (`count(*)`,
    /// `sum(length(v))`, checked); taken before the read ratio. Not for etcd.
    #[arg(long, default_value_t = 0.0)]
    pub scan_ratio: f64,
    /// Cairn only: spread the table over this many shards (`WITH (shard_count = N)`); the
    /// table is then named `cairn_bench_kv_<N>`.
    #[arg(long)]
    pub shards: Option<u32>,
    /// The keys were loaded by an earlier run with the same --keys and --value-bytes.
    #[arg(long)]
    pub skip_load: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct InsertArgs {
    #[command(flatten)]
    pub common: Common,
    /// Rows per INSERT statement.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Bytes of payload per row.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub common: Common,
    /// Rows loaded before the run.
    #[arg(long, default_value_t = 10_000)]
    pub rows: u64,
    /// Rows each range query covers (count and sum over a key range, checked).
    #[arg(long, default_value_t = 100)]
    pub range: u64,
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
    let target = super::pgtls::target(url).with_context(|| format!("connecting to {url}"))?;
    super::pgtls::connect(&target)
        .await
        .with_context(|| format!("connecting to {url}"))
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

/// A wrong answer: the run stops, it does not report a speed.
fn wrong(what: String) -> anyhow::Error {
    anyhow::anyhow!("wrong result: {what}")
}

/// One client's connection and what it does in one operation.
#[async_trait::async_trait]
trait Worker: Send + 'static {
    /// Ok(true) done, Ok(false) failed (counted as an error, e.g. a conflict or timeout),
    /// Err a wrong answer (stops the run).
    async fn op(&mut self, rng: &mut StdRng) -> anyhow::Result<bool>;
}

/// Results of one run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub system: String,
    pub workload: String,
    /// The workload's parameters, as given.
    pub params: String,
    pub clients: usize,
    pub ops: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub ops_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// CPU seconds this bench client used while measuring (what the client itself costs).
    pub client_cpu_s: f64,
    /// Each watched server process: CPU seconds while measuring, peak resident memory.
    pub servers: Vec<ServerUsage>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ServerUsage {
    pub pid: u32,
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
}

impl Report {
    pub fn print(&self) {
        println!(
            "{} {} clients={} {}: {} ops in {:.1}s = {:.0} ops/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p999 {:.2}; errors {}; client cpu {:.1}s",
            self.system,
            self.workload,
            self.clients,
            self.params,
            self.ops,
            self.elapsed_s,
            self.ops_per_s,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.errors,
            self.client_cpu_s,
        );
        for s in &self.servers {
            println!(
                "  server pid {}: cpu {:.1}s, peak memory {:.0} MiB",
                s.pid, s.cpu_s, s.peak_rss_mib
            );
        }
    }
}

/// CPU seconds (user + system) of a process so far, from /proc (Linux).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of a process (VmHWM), MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Run `workers` for the warmup, then for the measured duration; a progress line on stderr.
async fn drive<W: Worker>(
    common: &Common,
    workload: &str,
    params: String,
    workers: Vec<W>,
) -> anyhow::Result<Report> {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(common.warmup.is_zero()));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (c, mut worker) in workers.into_iter().enumerate() {
        let (stop, measuring, done) = (stop.clone(), measuring.clone(), done.clone());
        let mut rng =
            StdRng::seed_from_u64(common.seed.wrapping_mul(1_000_003).wrapping_add(c as u64));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut ops, mut errors) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let ok = worker.op(&mut rng).await;
                if !measuring.load(Ordering::Relaxed) {
                    ok?;
                    continue;
                }
                if ok? {
                    ops += 1;
                    if lat.len() < SAMPLES_PER_CLIENT_MAX {
                        lat.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((ops, errors, lat))
        }));
    }
    let tick = Duration::from_secs(1);
    if !common.warmup.is_zero() {
        let warm = Instant::now();
        while warm.elapsed() < common.warmup {
            tokio::time::sleep(tick.min(common.warmup)).await;
            eprint!("\r  warming up {:>5.1}s   ", warm.elapsed().as_secs_f64());
            if tasks.iter().any(|t| t.is_finished()) {
                break;
            }
        }
        measuring.store(true, Ordering::Relaxed);
    }
    let cpu_client = cpu_seconds(None);
    let cpu_servers: Vec<f64> = common
        .watch_pids
        .iter()
        .map(|p| cpu_seconds(Some(*p)))
        .collect();
    let started = Instant::now();
    while started.elapsed() < common.duration {
        tokio::time::sleep(tick.min(common.duration)).await;
        let n = done.load(Ordering::Relaxed);
        eprint!(
            "\r  {:>5.1}s  {n} ops  {:.0} ops/s   ",
            started.elapsed().as_secs_f64(),
            n as f64 / started.elapsed().as_secs_f64()
        );
        if tasks.iter().any(|t| t.is_finished()) {
            break; // a client stopped on a wrong answer: collect it below
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    eprintln!();
    let client_cpu_s = cpu_seconds(None) - cpu_client;
    let servers = common
        .watch_pids
        .iter()
        .zip(cpu_servers)
        .map(|(pid, before)| ServerUsage {
            pid: *pid,
            cpu_s: cpu_seconds(Some(*pid)) - before,
            peak_rss_mib: peak_rss_mib(*pid),
        })
        .collect();
    let (mut ops, mut errors, mut latencies) = (0, 0, Vec::new());
    for t in tasks {
        let (o, e, lat) = t.await??;
        ops += o;
        errors += e;
        latencies.extend(lat);
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    let report = Report {
        system: common.system.clone().unwrap_or_else(|| "server".into()),
        workload: workload.into(),
        params,
        clients: common.clients,
        ops,
        errors,
        elapsed_s: elapsed.as_secs_f64(),
        ops_per_s: ops as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        client_cpu_s,
        servers,
    };
    if let Some(path) = &common.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// Chooses keys in `0..n`.
enum KeyChooser {
    Uniform(u64),
    Zipfian(Arc<zipf::Zipfian>),
}

impl KeyChooser {
    fn new(distribution: KeyDistribution, n: u64) -> KeyChooser {
        match distribution {
            KeyDistribution::Uniform => KeyChooser::Uniform(n),
            KeyDistribution::Zipfian => KeyChooser::Zipfian(Arc::new(zipf::Zipfian::new(n))),
        }
    }

    fn pick(&self, rng: &mut StdRng) -> u64 {
        match self {
            KeyChooser::Uniform(n) => rng.random_range(0..*n),
            KeyChooser::Zipfian(z) => z.sample(rng),
        }
    }

    fn share(&self) -> KeyChooser {
        match self {
            KeyChooser::Uniform(n) => KeyChooser::Uniform(*n),
            KeyChooser::Zipfian(z) => KeyChooser::Zipfian(z.clone()),
        }
    }
}

fn validate_kv(args: &KvArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.read_ratio) || !(0.0..=1.0).contains(&args.scan_ratio) {
        bail!("--read-ratio and --scan-ratio must be between 0 and 1");
    }
    if args.keys == 0 || args.common.clients == 0 || args.value_bytes < 8 || args.batch == 0 {
        bail!("--keys, --clients and --batch must be positive and --value-bytes at least 8");
    }
    Ok(())
}

fn kv_params(args: &KvArgs) -> String {
    format!(
        "read-ratio={} keys={} value-bytes={} distribution={:?} batch={}{}{}",
        args.read_ratio,
        args.keys,
        args.value_bytes,
        args.distribution,
        args.batch,
        if args.scan_ratio > 0.0 {
            format!(" scan-ratio={}", args.scan_ratio)
        } else {
            String::new()
        },
        args.shards
            .map(|n| format!(" shards={n}"))
            .unwrap_or_default()
    )
    .to_lowercase()
}

/// The key-value workload: point reads (checked) and updates of `batch` keys.
pub async fn kv(args: KvArgs) -> anyhow::Result<Report> {
    validate_kv(&args)?;
    if let Some(hosts) = args.common.url.strip_prefix("etcd://") {
        if args.scan_ratio > 0.0 || args.shards.is_some() {
            bail!("--scan-ratio and --shards are not for etcd");
        }
        let hosts: Vec<String> = hosts.split(',').map(|h| format!("http://{h}")).collect();
        return etcd::kv(&args, hosts).await;
    }
    if args.common.url.starts_with("http://") {
        if args.scan_ratio > 0.0 || args.shards.is_some() {
            bail!("--scan-ratio and --shards are not for the HTTP key-value API");
        }
        let hosts: Vec<String> = args
            .common
            .url
            .trim_start_matches("http://")
            .split(',')
            .map(|h| format!("http://{h}"))
            .collect();
        return http_kv::kv(&args, hosts).await;
    }
    let table = match args.shards {
        Some(n) => format!("cairn_bench_kv_{n}"),
        None => "cairn_bench_kv".to_string(),
    };
    let with = match args.shards {
        Some(n) => format!(" WITH (shard_count = {n})"),
        None => String::new(),
    };
    let mut setup = connect(&args.common.url).await?;
    setup
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (k bigint PRIMARY KEY, v text NOT NULL){with}"
        ))
        .await?;
    let loaded_keys = if args.skip_load { args.keys } else { 0 };
    eprintln!(
        "loading {} keys of {} bytes...",
        args.keys - loaded_keys,
        args.value_bytes
    );
    let load = setup
        .prepare(&format!("INSERT INTO {table} (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v"))
        .await?;
    let mut loaded = loaded_keys;
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
    let chooser = KeyChooser::new(args.distribution, args.keys);
    let mut workers = Vec::new();
    for c in 0..args.common.clients {
        let client = connect(&args.common.url).await?;
        let read = client
            .prepare(&format!("SELECT v FROM {table} WHERE k = $1"))
            .await?;
        let write = client
            .prepare(&format!("UPDATE {table} SET v = $2 WHERE k = $1"))
            .await?;
        let scan = client
            .prepare(&format!("SELECT count(*), sum(length(v)) FROM {table}"))
            .await?;
        workers.push(PgKv {
            client,
            read,
            write,
            scan,
            args: args.clone(),
            keys: chooser.share(),
            id: c as u64,
            version: 0,
        });
    }
    drive(&args.common, "kv", kv_params(&args), workers).await
}

struct PgKv {
    client: tokio_postgres::Client,
    read: tokio_postgres::Statement,
    write: tokio_postgres::Statement,
    scan: tokio_postgres::Statement,
    args: KvArgs,
    keys: KeyChooser,
    id: u64,
    version: u64,
}

#[async_trait::async_trait]
impl Worker for PgKv {
    async fn op(&mut self, rng: &mut StdRng) -> anyhow::Result<bool> {
        let a = &self.args;
        if a.scan_ratio > 0.0 && rng.random_bool(a.scan_ratio) {
            let Ok(row) = self.client.query_one(&self.scan, &[]).await else {
                return Ok(false);
            };
            let (n, bytes): (i64, i64) = (row.get(0), row.get(1));
            if n != a.keys as i64 || bytes != (a.keys * a.value_bytes as u64) as i64 {
                return Err(wrong(format!("scan saw {n} keys and {bytes} bytes")));
            }
            return Ok(true);
        }
        if rng.random_bool(a.read_ratio) {
            let key = self.keys.pick(rng);
            return match self.client.query_opt(&self.read, &[&(key as i64)]).await {
                Ok(Some(row)) => {
                    let v: &str = row.get(0);
                    if !valid(key, v, a.value_bytes) {
                        return Err(wrong(format!("key {key} read {v:?}")));
                    }
                    Ok(true)
                }
                Ok(None) => Err(wrong(format!("key {key} missing"))),
                Err(_) => Ok(false),
            };
        }
        let mut keys: Vec<u64> = (0..a.batch).map(|_| self.keys.pick(rng)).collect();
        // One order for every client, so batches cannot deadlock each other.
        keys.sort_unstable();
        keys.dedup();
        self.version += 1;
        let version = self.version * 1000 + self.id;
        if keys.len() == 1 {
            let v = value(keys[0], version, a.value_bytes);
            return Ok(matches!(
                self.client
                    .execute(&self.write, &[&(keys[0] as i64), &v])
                    .await,
                Ok(1)
            ));
        }
        let result = async {
            let tx = self.client.transaction().await?;
            for k in &keys {
                let v = value(*k, version, a.value_bytes);
                tx.execute(&self.write, &[&(*k as i64), &v]).await?;
            }
            tx.commit().await
        }
        .await;
        Ok(result.is_ok())
    }
}

/// Append-only inserts of `batch` rows per statement; at the end every acknowledged row must
/// be there.
pub async fn insert(args: InsertArgs) -> anyhow::Result<Report> {
    if args.batch == 0 || args.common.clients == 0 {
        bail!("--batch and --clients must be positive");
    }
    let setup = connect(&args.common.url).await?;
    setup
        .batch_execute(
            "DROP TABLE IF EXISTS cairn_bench_insert;
             CREATE TABLE cairn_bench_insert (id bigint PRIMARY KEY, client integer NOT NULL, v text NOT NULL)",
        )
        .await?;
    let placeholders: Vec<String> = (0..args.batch)
        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
        .collect();
    let sql = format!(
        "INSERT INTO cairn_bench_insert (id, client, v) VALUES {}",
        placeholders.join(", ")
    );
    let mut workers = Vec::new();
    for c in 0..args.common.clients {
        let client = connect(&args.common.url).await?;
        let stmt = client.prepare(&sql).await?;
        workers.push(PgInsert {
            client,
            stmt,
            id: c as i32,
            next: 0,
            batch: args.batch,
            value: "x".repeat(args.value_bytes),
            inserted: Arc::new(AtomicU64::new(0)),
        });
    }
    let inserted: Vec<Arc<AtomicU64>> = workers.iter().map(|w| w.inserted.clone()).collect();
    let params = format!("batch={} value-bytes={}", args.batch, args.value_bytes);
    let report = drive(&args.common, "insert", params, workers).await?;
    let acknowledged: u64 = inserted.iter().map(|n| n.load(Ordering::Relaxed)).sum();
    let present: i64 = setup
        .query_one("SELECT count(*) FROM cairn_bench_insert", &[])
        .await?
        .get(0);
    // A failed statement may still have committed (its answer was lost), never the reverse.
    if (present as u64) < acknowledged {
        return Err(wrong(format!(
            "{acknowledged} rows acknowledged but {present} present"
        )));
    }
    Ok(report)
}

struct PgInsert {
    client: tokio_postgres::Client,
    stmt: tokio_postgres::Statement,
    id: i32,
    next: i64,
    batch: usize,
    value: String,
    inserted: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Worker for PgInsert {
    async fn op(&mut self, _rng: &mut StdRng) -> anyhow::Result<bool> {
        let ids: Vec<i64> = (0..self.batch as i64)
            .map(|i| ((self.id as i64) << 40) | (self.next + i))
            .collect();
        self.next += self.batch as i64;
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        for id in &ids {
            params.push(id);
            params.push(&self.id);
            params.push(&self.value);
        }
        match self.client.execute(&self.stmt, &params).await {
            Ok(n) if n == self.batch as u64 => {
                self.inserted.fetch_add(n, Ordering::Relaxed);
                Ok(true)
            }
            Ok(n) => Err(wrong(format!("inserted {n} rows of {}", self.batch))),
            Err(_) => Ok(false),
        }
    }
}

/// Range aggregates: count and sum over a random key range, checked.
pub async fn scan(args: ScanArgs) -> anyhow::Result<Report> {
    if args.rows == 0 || args.range == 0 || args.range > args.rows || args.common.clients == 0 {
        bail!("--rows, --range and --clients must be positive, --range at most --rows");
    }
    let mut setup = connect(&args.common.url).await?;
    setup
        .batch_execute(
            "DROP TABLE IF EXISTS cairn_bench_scan;
             CREATE TABLE cairn_bench_scan (k bigint PRIMARY KEY, v bigint NOT NULL)",
        )
        .await?;
    eprintln!("loading {} rows...", args.rows);
    let mut loaded = 0u64;
    while loaded < args.rows {
        let end = (loaded + 1000).min(args.rows);
        let values: Vec<String> = (loaded..end).map(|k| format!("({k}, {k})")).collect();
        let tx = setup.transaction().await?;
        tx.batch_execute(&format!(
            "INSERT INTO cairn_bench_scan VALUES {}",
            values.join(", ")
        ))
        .await?;
        tx.commit().await?;
        loaded = end;
    }
    let mut workers = Vec::new();
    for _ in 0..args.common.clients {
        let client = connect(&args.common.url).await?;
        let stmt = client
            // sum(bigint) is numeric in PostgreSQL: cast it back.
            .prepare(
                "SELECT count(*), sum(v)::bigint FROM cairn_bench_scan WHERE k >= $1 AND k < $2",
            )
            .await?;
        workers.push(PgScan {
            client,
            stmt,
            rows: args.rows,
            range: args.range,
        });
    }
    let params = format!("rows={} range={}", args.rows, args.range);
    drive(&args.common, "scan", params, workers).await
}

struct PgScan {
    client: tokio_postgres::Client,
    stmt: tokio_postgres::Statement,
    rows: u64,
    range: u64,
}

#[async_trait::async_trait]
impl Worker for PgScan {
    async fn op(&mut self, rng: &mut StdRng) -> anyhow::Result<bool> {
        let lo = rng.random_range(0..=self.rows - self.range) as i64;
        let hi = lo + self.range as i64;
        let Ok(row) = self.client.query_one(&self.stmt, &[&lo, &hi]).await else {
            return Ok(false);
        };
        let (n, sum): (i64, i64) = (row.get(0), row.get(1));
        let expected = (lo..hi).sum::<i64>();
        if n != self.range as i64 || sum != expected {
            return Err(wrong(format!(
                "range [{lo}, {hi}) gave count {n} sum {sum}, expected {} and {expected}",
                self.range
            )));
        }
        Ok(true)
    }
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

/// Shards of the probe table `failover` writes: one row per shard, so a write can be aimed
/// at each.
const FAILOVER_SHARDS: u32 = 6;

/// Kill -9 a node of a local 3-node cluster `trials` times — the one leading most of the
/// probe table's shards — and report, for each kill, the time until a write had succeeded
/// on every shard it led (the last of them; a write to a shard it did not lead proves
/// nothing about failover).
pub async fn failover(args: FailoverArgs) -> anyhow::Result<Vec<Duration>> {
    if args.trials == 0 {
        bail!("--trials must be at least 1");
    }
    let mut cluster = super::local::LocalCluster::start(3, &args.data_dir, args.base_port)?;
    let first = cluster.nodes[0].cluster;
    let client = connect(&cluster.nodes[0].url()).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE failover_probe (id bigint PRIMARY KEY, at text) \
             WITH (shard_count = {FAILOVER_SHARDS})"
        ))
        .await?;
    let keys = probe_keys(&client).await?;
    for key in keys.values() {
        client
            .execute(
                "INSERT INTO failover_probe (id, at) VALUES ($1, 'loaded')",
                &[key],
            )
            .await?;
    }
    drop(client);
    let mut times = Vec::new();
    for trial in 0..args.trials {
        let leaders = settled_leaders(&cluster, &keys).await?;
        let victim = (0..cluster.nodes.len())
            .max_by_key(|n| leaders.values().filter(|l| *l == n).count())
            .expect("three nodes");
        let led: Vec<i64> = keys
            .iter()
            .filter(|(shard, _)| leaders.get(*shard) == Some(&victim))
            .map(|(_, key)| *key)
            .collect();
        cluster.nodes[victim].kill9().await;
        let killed = Instant::now();
        let survivor = cluster.nodes[(victim + 1) % 3].url();
        let writes = led
            .iter()
            .map(|key| write_until_done(&survivor, *key, killed));
        let done = futures::future::try_join_all(writes).await?;
        let last = done.iter().max().copied().unwrap_or_default();
        let first_done = done.iter().min().copied().unwrap_or_default();
        println!(
            "trial {}: killed n{} (it led {} of the {} probe shards); a write succeeded on every one of them after {:.0} ms (the first after {:.0} ms)",
            trial + 1,
            victim + 1,
            led.len(),
            keys.len(),
            last.as_secs_f64() * 1000.0,
            first_done.as_secs_f64() * 1000.0,
        );
        times.push(last);
        cluster.nodes[victim].spawn(Some(first))?;
    }
    times.sort();
    Ok(times)
}

/// One key of `failover_probe` per shard, found by asking EXPLAIN where an INSERT goes.
async fn probe_keys(
    client: &tokio_postgres::Client,
) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    let mut keys = std::collections::BTreeMap::new();
    for key in 1..10_000i64 {
        let plan = client
            .simple_query(&format!(
                "EXPLAIN INSERT INTO failover_probe (id, at) VALUES ({key}, '')"
            ))
            .await?;
        let shard = plan.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r
                .get(0)
                .and_then(|l| l.strip_prefix("Shard "))
                .and_then(|l| l.split(':').next())
                .map(str::to_string),
            _ => None,
        });
        let shard = shard.with_context(|| format!("EXPLAIN did not name a shard for key {key}"))?;
        keys.entry(shard).or_insert(key);
        if keys.len() == FAILOVER_SHARDS as usize {
            return Ok(keys);
        }
    }
    bail!(
        "found keys for only {} of {FAILOVER_SHARDS} shards",
        keys.len()
    )
}

/// Each probe shard's leader (node index), once every node is up and every node agrees on a
/// leader for each of them (within 60 s).
async fn settled_leaders(
    cluster: &super::local::LocalCluster,
    keys: &std::collections::BTreeMap<String, i64>,
) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let views: Vec<Option<std::collections::BTreeMap<String, usize>>> = cluster
            .nodes
            .iter()
            .map(|n| {
                let body = super::local::http_get(n.http, "/health")?;
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                v["shards"]
                    .as_array()?
                    .iter()
                    .filter(|s| s["shard"].as_str().is_some_and(|s| keys.contains_key(s)))
                    .map(|s| {
                        let l = s["leader"]
                            .as_str()?
                            .trim_start_matches('n')
                            .parse::<usize>()
                            .ok()?;
                        Some((s["shard"].as_str()?.to_string(), l.checked_sub(1)?))
                    })
                    .collect()
            })
            .collect();
        if let Some(Some(view)) = views.first() {
            if view.len() == keys.len() && views.iter().all(|v| v.as_ref() == Some(view)) {
                return Ok(view.clone());
            }
        }
        if Instant::now() > deadline {
            bail!("the probe shards did not settle on leaders within 60 s: {views:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Write `key`'s row through `url` until a write succeeds (each attempt bounded by 5 s, all
/// of them by 60 s); the time from `since`.
async fn write_until_done(url: &str, key: i64, since: Instant) -> anyhow::Result<Duration> {
    loop {
        let attempt = async {
            let c = connect(url).await?;
            c.execute(
                "UPDATE failover_probe SET at = now()::text WHERE id = $1",
                &[&key],
            )
            .await?;
            anyhow::Ok(())
        };
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
            return Ok(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(60) {
            bail!("no write to key {key} succeeded within 60 s of the kill");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
