//! `cairn bench watch`: change delivery. Writers insert rows at a fixed total rate, each
//! stamped with its send time (µs); N subscribers follow the table (Cairn: WebSocket
//! `/v1/ws` on the nodes given, spread evenly) or a key prefix (etcd: `/v3/watch` through
//! its JSON gateway). Reported: events delivered per second over all subscribers, and
//! commit-to-delivery latency (send time to arrival; writer and subscribers share this
//! machine's clock) p50/p90/p99. Every subscriber must receive every row written; missing
//! deliveries count as errors.

use super::{cpu_seconds, peak_rss_mib, Common, Report, ServerUsage};
use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Latency samples kept per subscriber.
const SAMPLES_PER_SUBSCRIBER: usize = 50_000;

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Writers connect here (`--url`, a PostgreSQL URL, or `etcd://host:port,...`);
    /// `--clients` is the number of writers.
    #[command(flatten)]
    pub common: Common,
    /// Cairn: the nodes' HTTP addresses subscribers connect to, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    pub http: Vec<String>,
    /// Subscribers, each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Rows written per second, all writers together.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
}

fn now_us() -> i64 {
    crate::storage::functions::now_micros() as i64
}

/// What one subscriber measured.
#[derive(Default)]
struct Received {
    events: u64,
    latencies_us: Vec<u32>,
}

impl Received {
    fn record(&mut self, sent_us: i64) {
        self.events += 1;
        if self.latencies_us.len() < SAMPLES_PER_SUBSCRIBER {
            let lat = (now_us() - sent_us).max(0) as u64;
            self.latencies_us.push(lat.min(u32::MAX as u64) as u32);
        }
    }
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<Report> {
    if args.subscribers == 0 || args.common.clients == 0 || args.rate == 0 {
        bail!("--subscribers, --clients and --rate must be positive");
    }
    let etcd = args
        .common
        .url
        .strip_prefix("etcd://")
        .map(|h| h.split(',').map(|h| h.to_string()).collect::<Vec<String>>());
    // Rows of this run: ids (and etcd keys) from a base no earlier run used.
    let run = now_us();
    let prefix = format!("cairn_bench_watch/{run}/");
    let pg = match &etcd {
        None => {
            let c = super::connect(&args.common.url).await?;
            c.batch_execute(
                "CREATE TABLE IF NOT EXISTS cairn_bench_watch (id bigint PRIMARY KEY, sent_us bigint NOT NULL)",
            )
            .await?;
            Some(c)
        }
        Some(_) => None,
    };
    drop(pg);

    // Subscribers, all following before the first write.
    eprintln!("opening {} subscribers...", args.subscribers);
    let stop = Arc::new(AtomicBool::new(false));
    let received: Vec<Arc<Mutex<Received>>> =
        (0..args.subscribers).map(|_| Arc::default()).collect();
    let mut subscribers = Vec::new();
    for (i, got) in received.iter().enumerate() {
        let task = match &etcd {
            None => {
                let http = &args.http[i % args.http.len()];
                let ws = cairn_subscribe(http)
                    .await
                    .with_context(|| format!("subscriber {i} on {http}"))?;
                tokio::spawn(cairn_follow(ws, run, got.clone(), stop.clone()))
            }
            Some(hosts) => {
                let host = &hosts[i % hosts.len()];
                let stream = etcd_subscribe(host, &prefix)
                    .await
                    .with_context(|| format!("subscriber {i} on {host}"))?;
                tokio::spawn(etcd_follow(stream, got.clone(), stop.clone()))
            }
        };
        subscribers.push(task);
    }

    // Writers at the rate asked, together.
    eprintln!(
        "writing {} rows/s for {:?}...",
        args.rate, args.common.duration
    );
    let written = Arc::new(AtomicU64::new(0));
    let writing = Arc::new(AtomicBool::new(true));
    let per_writer = args.rate as f64 / args.common.clients as f64;
    let mut writers = Vec::new();
    for w in 0..args.common.clients {
        let (written, writing) = (written.clone(), writing.clone());
        let gap = Duration::from_secs_f64(1.0 / per_writer);
        let first = (run + 1) * 1000 + w as i64 * 1_000_000_000;
        match &etcd {
            None => {
                let c = super::connect(&args.common.url).await?;
                let insert = c
                    .prepare("INSERT INTO cairn_bench_watch (id, sent_us) VALUES ($1, $2)")
                    .await?;
                writers.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(gap);
                    let mut id = first;
                    while writing.load(Ordering::Relaxed) {
                        tick.tick().await;
                        id += 1;
                        c.execute(&insert, &[&id, &now_us()]).await?;
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    anyhow::Ok(())
                }));
            }
            Some(hosts) => {
                let host = format!("http://{}", hosts[w % hosts.len()]);
                let prefix = prefix.clone();
                writers.push(tokio::spawn(async move {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .timeout_global(Some(Duration::from_secs(10)))
                        .build()
                        .into();
                    let mut tick = tokio::time::interval(gap);
                    let mut id = first;
                    while writing.load(Ordering::Relaxed) {
                        tick.tick().await;
                        id += 1;
                        let (agent, host) = (agent.clone(), host.clone());
                        let key = B64.encode(format!("{prefix}{id}"));
                        tokio::task::spawn_blocking(move || {
                            let value = B64.encode(now_us().to_string());
                            agent
                                .post(&format!("{host}/v3/kv/put"))
                                .send(json!({"key": key, "value": value}).to_string())
                                .map(|_| ())
                        })
                        .await??;
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    anyhow::Ok(())
                }));
            }
        }
    }
    let cpu_client = cpu_seconds(None);
    let cpu_servers: Vec<f64> = args
        .common
        .watch_pids
        .iter()
        .map(|p| cpu_seconds(Some(*p)))
        .collect();
    let started = Instant::now();
    let total = |received: &[Arc<Mutex<Received>>]| -> u64 {
        received
            .iter()
            .map(|r| r.lock().expect("received lock").events)
            .sum()
    };
    while started.elapsed() < args.common.duration {
        tokio::time::sleep(Duration::from_secs(1).min(args.common.duration)).await;
        eprint!(
            "\r  {:>5.1}s  {} written  {} delivered   ",
            started.elapsed().as_secs_f64(),
            written.load(Ordering::Relaxed),
            total(&received)
        );
        if writers.iter().any(|w| w.is_finished()) {
            break;
        }
    }
    writing.store(false, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let elapsed = started.elapsed();
    // Every subscriber gets every row: wait for the last ones (at most 30 s).
    let expected = written.load(Ordering::Relaxed) * args.subscribers as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while total(&received) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!();
    stop.store(true, Ordering::Relaxed);
    for s in subscribers {
        s.abort();
    }
    let client_cpu_s = cpu_seconds(None) - cpu_client;
    let servers = args
        .common
        .watch_pids
        .iter()
        .zip(cpu_servers)
        .map(|(pid, before)| ServerUsage {
            pid: *pid,
            cpu_s: cpu_seconds(Some(*pid)) - before,
            peak_rss_mib: peak_rss_mib(*pid),
        })
        .collect();
    let delivered = total(&received);
    let mut latencies: Vec<u32> = received
        .iter()
        .flat_map(|r| r.lock().expect("received lock").latencies_us.clone())
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    let report = Report {
        system: args
            .common
            .system
            .clone()
            .unwrap_or_else(|| "server".into()),
        workload: "watch".into(),
        params: format!(
            "subscribers={} rate={} writers={} rows={}",
            args.subscribers,
            args.rate,
            args.common.clients,
            written.load(Ordering::Relaxed)
        ),
        clients: args.subscribers,
        ops: delivered,
        errors: expected.saturating_sub(delivered),
        elapsed_s: elapsed.as_secs_f64(),
        ops_per_s: delivered as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        client_cpu_s,
        servers,
    };
    if let Some(path) = &args.common.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A subscription to `cairn_bench_watch` from now, acknowledged.
async fn cairn_subscribe(http: &str) -> anyhow::Result<Ws> {
    let url = format!("ws://{}/v1/ws", http.trim_start_matches("http://"));
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .context("connecting timed out")??;
    let request = json!({"id": "b", "subscribe": {"table": "cairn_bench_watch"}});
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        request.to_string().into(),
    ))
    .await?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no acknowledgement")?
            .context("closed")??;
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t)?;
            if !v["subscribed"].is_null() {
                return Ok(ws);
            }
            if !v["error"].is_null() {
                bail!("subscribing: {}", v["error"]);
            }
        }
    }
}

async fn cairn_follow(mut ws: Ws, run: i64, got: Arc<Mutex<Received>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Some(Ok(m)) = ws.next().await else { return };
        let tokio_tungstenite::tungstenite::Message::Text(t) = m else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        let new = &v["event"]["new"];
        if let (Some(id), Some(sent)) = (new["id"].as_i64(), new["sent_us"].as_i64()) {
            // Only this run's rows (ids above its base).
            if id > run * 1000 {
                got.lock().expect("received lock").record(sent);
            }
        }
    }
}

/// A watch of `prefix` on the etcd member at `host` through its JSON gateway: the
/// response body is a stream of JSON messages (chunked HTTP/1.1).
async fn etcd_subscribe(
    host: &str,
    prefix: &str,
) -> anyhow::Result<tokio::io::BufReader<tokio::net::TcpStream>> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let body =
        json!({"create_request": {"key": B64.encode(prefix), "range_end": B64.encode(&end)}})
            .to_string();
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "POST /v3/watch HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reader = tokio::io::BufReader::new(stream);
    // Headers, then the first message (the watch's creation).
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("etcd closed the watch");
        }
        if line == "\r\n" {
            break;
        }
        if line.starts_with("HTTP/") && !line.contains(" 200 ") {
            bail!("etcd answered {}", line.trim());
        }
    }
    let created = tokio::time::timeout(Duration::from_secs(10), next_chunk(&mut reader))
        .await
        .context("no watch creation")??;
    if !created.contains("created") {
        bail!("unexpected first watch message: {created}");
    }
    Ok(reader)
}

/// The next chunk of a chunked body, as text.
async fn next_chunk(
    reader: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> anyhow::Result<String> {
    let mut size = String::new();
    loop {
        size.clear();
        if reader.read_line(&mut size).await? == 0 {
            bail!("the watch ended");
        }
        if !size.trim().is_empty() {
            break;
        }
    }
    let n = usize::from_str_radix(size.trim(), 16).context("a chunk size")?;
    let mut data = vec![0; n + 2];
    reader.read_exact(&mut data).await?;
    data.truncate(n);
    Ok(String::from_utf8_lossy(&data).into_owned())
}

async fn etcd_follow(
    mut reader: tokio::io::BufReader<tokio::net::TcpStream>,
    got: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
) {
    let mut pending = String::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(chunk) = next_chunk(&mut reader).await else {
            return;
        };
        pending.push_str(&chunk);
        // Messages are whole JSON objects, one per line (or one per chunk).
        loop {
            let message: String = match pending.find('\n') {
                Some(end) => pending.drain(..=end).collect(),
                None if serde_json::from_str::<Value>(pending.trim()).is_ok() => {
                    std::mem::take(&mut pending)
                }
                None => break,
            };
            let Ok(v) = serde_json::from_str::<Value>(message.trim()) else {
                continue;
            };
            for e in v["result"]["events"].as_array().into_iter().flatten() {
                let sent = e["kv"]["value"]
                    .as_str()
                    .and_then(|b| B64.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.parse::<i64>().ok());
                if let Some(sent) = sent {
                    got.lock().expect("received lock").record(sent);
                }
            }
        }
    }
}
