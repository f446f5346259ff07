//! `cairn bench files`: upload and download throughput of files over HTTP on a local
//! 3-node cluster, beside what the machine itself does on the spot — the disk's fsynced
//! sequential write and its read with the page cache dropped (the physical limit), and a
//! plain static file server (Python's `http.server`) sending the same file — and each node's
//! peak memory. Every download is checked against the upload's SHA-256.

use super::super::local::LocalCluster;
use anyhow::{bail, Context};
use sha2::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct FilesArgs {
    /// File sizes measured, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1MiB,64MiB,1GiB",
          value_parser = crate::units::bytes_arg)]
    pub sizes: Vec<u64>,
    /// Rounds per size (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The nodes' chunk size (`--files-chunk-bytes`), for choosing it.
    #[arg(long)]
    pub chunk_bytes: Option<String>,
    /// Where the cluster's data dirs and the test files go (emptied first).
    #[arg(long, default_value = "cairn-bench-files")]
    pub data_dir: PathBuf,
    /// First of the ports used (each node's pgwire, HTTP and cluster ports follow it).
    #[arg(long, default_value_t = 17500)]
    pub base_port: u16,
}

/// One size's medians, in MB/s (10^6 bytes per second).
struct Row {
    size: u64,
    disk_write: f64,
    disk_read: f64,
    static_read: Option<f64>,
    upload: f64,
    download: f64,
}

fn mbps(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64().max(1e-9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Write `size` random bytes to `path` and fsync them: the time taken.
fn write_fsynced(path: &Path, size: u64) -> anyhow::Result<Duration> {
    let mut block = vec![0u8; 1 << 20];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut block);
    let started = Instant::now();
    let mut f = std::fs::File::create(path)?;
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        // Each block differs (its first bytes are its offset), so no two chunks are alike.
        block[..8].copy_from_slice(&left.to_le_bytes());
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(started.elapsed())
}

/// Drop `path` from the page cache, so the next read comes from the disk.
fn uncache(path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    // SAFETY: a plain system call on a file descriptor this function holds open.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!("posix_fadvise failed: {rc}");
    }
    Ok(())
}

/// Read `path` whole: its SHA-256 and the time taken.
fn read_file(path: &Path) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let mut f = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok((hex(&hasher.finalize()), started.elapsed()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3600)))
        .build()
        .into()
}

/// GET `url` to its end: the body's SHA-256 and the time taken.
fn download(url: &str) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let mut resp = agent().get(url).call()?;
    if resp.status() != 200 {
        bail!("GET {url}: {}", resp.status());
    }
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok((hex(&hasher.finalize()), started.elapsed()))
}

/// PUT the file at `path` to `url`: the SHA-256 Cairn answered and the time taken.
fn upload(url: &str, path: &Path) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let mut file = std::fs::File::open(path)?;
    let mut resp = agent()
        .put(url)
        .send(ureq::SendBody::from_reader(&mut file))?;
    let text = resp.body_mut().read_to_string()?;
    if resp.status() != 200 {
        bail!("PUT {url}: {}: {text}", resp.status());
    }
    let answer: serde_json::Value = serde_json::from_str(&text)?;
    let sha = answer["sha256"].as_str().unwrap_or_default().to_string();
    Ok((sha, started.elapsed()))
}

/// A node's peak resident memory so far, in MiB (Linux).
fn peak_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kib / 1024)
}

pub async fn files(args: FilesArgs) -> anyhow::Result<()> {
    tokio::task::block_in_place(|| run(args))
}

fn run(args: FilesArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.sizes.is_empty() {
        bail!("--rounds and --sizes must not be empty");
    }
    let _ = std::fs::remove_dir_all(&args.data_dir);
    let plain = args.data_dir.join("plain");
    std::fs::create_dir_all(&plain)?;
    let mut node_args = Vec::new();
    if let Some(c) = &args.chunk_bytes {
        node_args.extend(["--files-chunk-bytes".to_string(), c.clone()]);
    }
    eprintln!("starting 3 nodes...");
    let cluster =
        LocalCluster::start_with(3, &args.data_dir.join("cluster"), args.base_port, node_args)?;
    let http: Vec<_> = cluster.nodes.iter().map(|n| n.http).collect();
    // The static file server: Python's, serving the same files.
    let static_port = args.base_port + 90;
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &static_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--directory")
        .arg(&plain)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok();
    // Wait (a bounded while) for the server to listen; without one, that column is left out.
    if server.is_some() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], static_port));
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                eprintln!("the static file server did not start; left out");
                server = None;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut rows = Vec::new();
    for &size in &args.sizes {
        let (mut dw, mut dr, mut sr, mut up, mut down) = (vec![], vec![], vec![], vec![], vec![]);
        for round in 0..args.rounds {
            let name = format!("f{size}-{round}.bin");
            let path = plain.join(&name);
            let took = write_fsynced(&path, size)?;
            dw.push(mbps(size, took));
            uncache(&path)?;
            let (sha, took) = read_file(&path)?;
            dr.push(mbps(size, took));
            if server.is_some() {
                uncache(&path)?;
                match download(&format!("http://127.0.0.1:{static_port}/{name}")) {
                    Ok((got, took)) if got == sha => sr.push(mbps(size, took)),
                    Ok(_) => bail!("the static server sent other bytes"),
                    Err(e) => {
                        eprintln!("static server: {e:#}; left out");
                        server = None;
                    }
                }
            }
            uncache(&path)?;
            let target = format!("bench/{name}");
            let (answered, took) = upload(&format!("http://{}/v1/files/{target}", http[0]), &path)
                .with_context(|| format!("uploading {size} bytes"))?;
            if answered != sha {
                bail!("Cairn stored {answered}, the file is {sha}");
            }
            up.push(mbps(size, took));
            let (got, took) = download(&format!("http://{}/v1/files/{target}", http[1]))?;
            if got != sha {
                bail!("a download from n2 differs from the upload");
            }
            down.push(mbps(size, took));
            eprintln!(
                "{size} bytes, round {}: disk write {:.0} read {:.0}, upload {:.1}, download {:.1} MB/s",
                round + 1,
                dw.last().unwrap(),
                dr.last().unwrap(),
                up.last().unwrap(),
                down.last().unwrap()
            );
            let _ = std::fs::remove_file(&path);
        }
        rows.push(Row {
            size,
            disk_write: median(dw),
            disk_read: median(dr),
            static_read: (!sr.is_empty()).then(|| median(sr)),
            upload: median(up),
            download: median(down),
        });
    }
    if let Some(mut s) = server {
        let _ = s.kill();
        let _ = s.wait();
    }
    println!(
        "chunk size: {}",
        args.chunk_bytes
            .as_deref()
            .unwrap_or("default (limits::FILE_CHUNK_BYTES)")
    );
    println!(
        "| file | disk write, fsynced | disk read, uncached | static server download | Cairn upload (n1) | Cairn download (n2) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} MB/s | {:.0} MB/s | {} | {:.1} MB/s | {:.1} MB/s |",
            crate::units::format_bytes(r.size),
            r.disk_write,
            r.disk_read,
            r.static_read
                .map_or("—".to_string(), |v| format!("{v:.0} MB/s")),
            r.upload,
            r.download
        );
    }
    let peaks: Vec<String> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let pid = n.child.as_ref().and_then(|c| c.id()).unwrap_or(0);
            format!(
                "n{}: {}",
                i + 1,
                peak_mib(pid).map_or("?".into(), |m| format!("{m} MiB"))
            )
        })
        .collect();
    println!("peak memory per node: {}", peaks.join(", "));
    Ok(())
}
