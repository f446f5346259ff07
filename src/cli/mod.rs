//! The `cairn` command: `start` runs one node; `dev` runs a local cluster of `cairn start`
//! processes for development and prints how to connect.

pub mod bench;
pub mod chaos;
pub mod dev;
pub mod firewall;
pub mod load;
pub mod local;
pub mod node;
pub mod pgtls;
pub mod slt;
pub mod sql;
pub mod watch;

use crate::node::{Node, NodeConfig};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "A fault-tolerant, sharded, replicated SQL database"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node.
    Start(Box<StartArgs>),
    /// Run a local cluster for development and print how to connect.
    Dev(dev::DevArgs),
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a workload on a local cluster while killing and pausing nodes; check the history.
    Chaos(chaos::ChaosArgs),
    /// Run sqllogictest files against a PostgreSQL-protocol server and count what passes.
    Slt(slt::SltArgs),
    /// Print a table's changes or a key prefix's as they commit (WebSocket `/v1/ws`).
    Watch(watch::WatchArgs),
    /// List nodes; decommission, recommission or remove one.
    Node(node::NodeArgs),
    /// The cluster at a glance: nodes, then shards with leader, replicas, lag and health.
    Status(node::StatusArgs),
    /// An interactive SQL shell (or run statements from -c, -f or stdin).
    Sql(sql::SqlArgs),
    /// Load a CSV or JSON-lines file into a table: parallel batches, each exactly once.
    Load(load::LoadArgs),
    /// Make TLS certificates: a cluster CA, a node's, a client's.
    Cert(CertArgs),
    /// Is the node at --url up and its catalog sound? Exits 0 if so (a container's health
    /// check: the image has no curl).
    Health(node::HealthArgs),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Point reads and updates of keys: over pgwire (Cairn or PostgreSQL), or etcd.
    Kv(bench::KvArgs),
    /// Append-only inserts (pgwire).
    Insert(bench::InsertArgs),
    /// Range aggregates over a loaded table (pgwire).
    Scan(bench::ScanArgs),
    /// The news platform's queries over its generated data set, checked (pgwire).
    News(bench::news::NewsArgs),
    /// Tables and plots from the JSON results of several runs (scripts/bench-compare).
    Report(bench::report::ReportArgs),
    /// Kill -9 a leader of a local 3-node cluster repeatedly; time until every shard it led takes writes.
    Failover(bench::FailoverArgs),
    /// A local cluster under a key-value load through added nodes (rebalance) and a node
    /// killed for good (repair): throughput per phase, seconds per GiB moved.
    Rebalance(bench::rebalance::RebalanceArgs),
    /// Change delivery to N subscribers: events/s and commit-to-delivery latency (Cairn's
    /// WebSocket subscriptions, or etcd's watch).
    Watch(bench::watch::WatchArgs),
    /// Files over HTTP on a local cluster: upload and download MB/s beside the disk's own and
    /// a static file server's, and each node's peak memory.
    Files(bench::files::FilesArgs),
}

#[derive(Debug, clap::Args)]
pub struct CertArgs {
    #[command(subcommand)]
    pub command: CertCommand,
    /// Directory of the certificates (created if missing).
    #[arg(long, global = true, env = "CAIRN_CERTS_DIR", default_value = "certs")]
    pub certs_dir: PathBuf,
    /// The CA's private key (default: ca.key in --certs-dir). Keep it off the nodes once
    /// their certificates are made.
    #[arg(long, global = true)]
    pub ca_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// A new certificate authority for the cluster: ca.crt and ca.key.
    CreateCa,
    /// A node's certificate (node.crt, node.key) for every name and address it is reached at.
    CreateNode {
        /// Host names and IP addresses, e.g. `n1 localhost 127.0.0.1 10.0.0.5`.
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// A client's certificate (client.USER.crt, client.USER.key), for psql's sslcert.
    CreateClient {
        /// The user it names.
        user: String,
    },
}

fn cert(args: CertArgs) -> anyhow::Result<()> {
    let dir = &args.certs_dir;
    let ca_key = args
        .ca_key
        .clone()
        .unwrap_or_else(|| dir.join(crate::tls::CA_KEY));
    let made = match &args.command {
        CertCommand::CreateCa => crate::tls::create_ca(dir, &ca_key)?,
        CertCommand::CreateNode { hosts } => crate::tls::create_node(dir, &ca_key, hosts)?,
        CertCommand::CreateClient { user } => crate::tls::create_client(dir, &ca_key, user)?,
    };
    println!("wrote {} (and its key)", made.display());
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// Directory holding this node's data (created if missing).
    #[arg(long, env = "CAIRN_DATA_DIR", default_value = "cairn-data")]
    pub data_dir: PathBuf,
    /// Address for PostgreSQL clients.
    #[arg(long, env = "CAIRN_PG_ADDR", default_value = "127.0.0.1:5433")]
    pub pg_addr: SocketAddr,
    /// Address for the HTTP API.
    #[arg(long, env = "CAIRN_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Address for other nodes (Raft, joins, forwarded statements).
    #[arg(long, env = "CAIRN_CLUSTER_ADDR", default_value = "127.0.0.1:7000")]
    pub cluster_addr: SocketAddr,
    /// The host name or IP address other nodes and clients reach this node at, when it is
    /// not the address it listens on (a container's service name, a NAT address); with a
    /// port, the cluster port others use. Required when listening on 0.0.0.0.
    #[arg(long, env = "CAIRN_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Serve TLS from this directory's ca.crt, node.crt and node.key (`cairn cert`): pgwire
    /// (SSLRequest) and HTTPS for clients, mutual TLS between nodes.
    #[arg(long, env = "CAIRN_CERTS_DIR")]
    pub certs_dir: Option<PathBuf>,
    /// A file holding the password of a new cluster's first user, `admin` (role admin):
    /// with it, PostgreSQL clients must log in (SCRAM-SHA-256). Read when the cluster is
    /// created; ignored when joining or restarting. CAIRN_INIT_PASSWORD gives it directly.
    #[arg(long, env = "CAIRN_INIT_PASSWORD_FILE")]
    pub init_password_file: Option<PathBuf>,
    /// Listen on addresses other machines can reach although Cairn has no TLS and no
    /// passwords yet: anyone who reaches a port can read and write everything. Without it
    /// a node listens on loopback addresses only.
    #[arg(long, env = "CAIRN_INSECURE")]
    pub insecure: bool,
    /// Cluster addresses of existing members to join through (comma-separated). Without
    /// it, a node with an empty data dir starts a new cluster.
    #[arg(long, env = "CAIRN_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Placement label (e.g. a region or rack).
    #[arg(long, env = "CAIRN_ZONE")]
    pub zone: Option<String>,
    /// Minimum Raft election timeout; the maximum is twice this and is the leader's lease
    /// (openraft 0.9): one follower campaigns once the lease has run out (about 2x this
    /// after the leader's last heartbeat), the others after a further random timeout.
    #[arg(long, env = "CAIRN_ELECTION_TIMEOUT_MS", default_value_t = 150)]
    pub election_timeout_ms: u64,
    /// Raft heartbeat interval.
    #[arg(long, env = "CAIRN_HEARTBEAT_MS", default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Applied log entries between snapshots; the log before a snapshot is purged.
    #[arg(long, env = "CAIRN_SNAPSHOT_EVERY", default_value_t = crate::limits::SNAPSHOT_EVERY_ENTRIES)]
    pub snapshot_every: u64,
    /// Replicas per shard in a new cluster (ignored when joining or restarting).
    #[arg(long, env = "CAIRN_REPLICATION_FACTOR", default_value_t = 3)]
    pub replication_factor: u32,
    /// Shards of a hash-distributed table unless its CREATE TABLE says otherwise, in a new
    /// cluster (ignored when joining or restarting).
    #[arg(long, env = "CAIRN_SHARD_COUNT", default_value_t = 4)]
    pub shard_count: u32,
    /// How long each replica keeps its change events (the window a subscriber can resume
    /// in), by commit time.
    #[arg(long, env = "CAIRN_EVENTS_MAX_AGE", default_value = "24h", value_parser = crate::units::duration_arg)]
    pub events_max_age: std::time::Duration,
    /// How many bytes of change events each replica keeps at most (oldest go first).
    #[arg(long, env = "CAIRN_EVENTS_MAX_BYTES", default_value = "64MiB", value_parser = crate::units::bytes_arg)]
    pub events_max_bytes: u64,
    /// How long a node must be dead (by gossip) before its replicas are re-created on
    /// other nodes. Long enough to ride out a restart or an upgrade without copying data.
    #[arg(long, env = "CAIRN_DEAD_AFTER", default_value = "60s", value_parser = crate::units::duration_arg)]
    pub dead_after: std::time::Duration,
    /// How fast a replica reads its rows for a consistency check, in bytes per second
    /// (checks run every 10 minutes and on demand, off the write path).
    #[arg(long, env = "CAIRN_CHECK_RATE", default_value = "8MiB", value_parser = crate::units::bytes_arg)]
    pub check_rate: u64,
    /// How long a replaced or deleted file stays readable for downloads in flight before its
    /// chunks are deleted; an upload silent this long is abandoned and collected.
    #[arg(long, env = "CAIRN_FILES_GC_AFTER", default_value = "5m", value_parser = crate::units::duration_arg)]
    pub files_gc_after: std::time::Duration,
    /// Bytes per chunk of the files this node writes: for measuring (`cairn bench files
    /// --chunk-bytes`); the default was chosen by that measurement.
    #[arg(long, hide = true, default_value_t = crate::limits::FILE_CHUNK_BYTES as u64,
          value_parser = chunk_bytes_arg)]
    pub files_chunk_bytes: u64,
    /// Address for FTP clients (the cluster's files, anonymous); off unless given.
    #[arg(long, env = "CAIRN_FTP_ADDR")]
    pub ftp_addr: Option<SocketAddr>,
    /// Ports FTP's passive mode opens data connections on (`FIRST-LAST`).
    #[arg(long, env = "CAIRN_FTP_PASSIVE_PORTS", default_value = "49152-65535", value_parser = crate::units::port_range_arg)]
    pub ftp_passive_ports: std::ops::RangeInclusive<u16>,
    /// The `cairn dev` supervisor that runs this node (set by `cairn dev` itself): fault
    /// injection over `/v1/dev/...` goes to it.
    #[arg(long, hide = true)]
    pub dev_supervisor: Option<SocketAddr>,
}

/// A chunk size between 4 KiB and one Raft entry's target size.
fn chunk_bytes_arg(text: &str) -> Result<u64, String> {
    let n = crate::units::bytes_arg(text)?;
    let max = crate::limits::ENTRY_BYTES_TARGET as u64;
    if (4096..=max).contains(&n) {
        Ok(n)
    } else {
        Err(format!("a chunk is 4KiB to {max} bytes (got {text})"))
    }
}

pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=error,fjall=warn,lsm_tree=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// The first user's password, from `--init-password-file` or CAIRN_INIT_PASSWORD (one line;
/// the line's end is not part of it).
fn init_password(args: &StartArgs) -> anyhow::Result<Option<String>> {
    let text = match (
        &args.init_password_file,
        std::env::var("CAIRN_INIT_PASSWORD"),
    ) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--init-password-file {}: {e}", path.display()))?,
        (None, Ok(text)) => text,
        (None, Err(_)) => return Ok(None),
    };
    let password = text.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        anyhow::bail!("the initial password is empty");
    }
    Ok(Some(password))
}

/// Refuse to listen beyond this machine unless told `--insecure`: nothing on these ports
/// asks who is connecting.
fn check_exposure(args: &StartArgs) -> anyhow::Result<()> {
    let listening = [
        ("--pg-addr", Some(args.pg_addr)),
        ("--http-addr", Some(args.http_addr)),
        ("--cluster-addr", Some(args.cluster_addr)),
        ("--ftp-addr", args.ftp_addr),
    ];
    let exposed: Vec<String> = listening
        .iter()
        .filter_map(|(flag, addr)| {
            addr.filter(|a| !a.ip().is_loopback())
                .map(|a| format!("{flag} {a}"))
        })
        .collect();
    if exposed.is_empty() {
        return Ok(());
    }
    if !args.insecure {
        anyhow::bail!(
            "refusing to listen beyond this machine ({}) without TLS or authentication: \
             anyone who reaches these ports could read and change every row. Listen on \
             127.0.0.1, or accept that with --insecure (CAIRN_INSECURE=true)",
            exposed.join(", ")
        );
    }
    tracing::warn!(
        listening = %exposed.join(", "),
        "insecure: no TLS and no authentication; anyone who reaches these ports can read and change everything"
    );
    Ok(())
}

pub async fn start(args: StartArgs) -> anyhow::Result<()> {
    check_exposure(&args)?;
    let init_password = init_password(&args)?;
    let config = NodeConfig {
        data_dir: args.data_dir,
        pg_addr: args.pg_addr,
        http_addr: args.http_addr,
        cluster_addr: args.cluster_addr,
        join: args.join,
        zone: args.zone,
        election_timeout_ms_min: args.election_timeout_ms,
        heartbeat_interval_ms: args.heartbeat_ms,
        snapshot_every: args.snapshot_every,
        replication_factor: args.replication_factor,
        shard_count: args.shard_count,
        events: crate::storage::events::Window {
            max_age: args.events_max_age,
            max_bytes: args.events_max_bytes,
        },
        dead_after: args.dead_after,
        check_rate: args.check_rate,
        files: crate::sql::files::Settings {
            gc_after: args.files_gc_after,
            chunk_bytes: args.files_chunk_bytes as usize,
        },
        ftp_addr: args.ftp_addr,
        ftp_passive_ports: args.ftp_passive_ports,
        dev_supervisor: args.dev_supervisor,
        advertise: args.advertise_addr,
        init_password,
        tls: match &args.certs_dir {
            Some(dir) => Some(crate::tls::Tls::load(dir)?),
            None => None,
        },
    };
    let node = Node::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    // Acknowledged writes are in the fsynced log already: a shutdown that waits on peers
    // that are gone is cut short rather than holding the process.
    if tokio::time::timeout(crate::limits::SHUTDOWN_WAIT, node.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "shutdown took longer than {:?}; exiting",
            crate::limits::SHUTDOWN_WAIT
        );
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Print a bench run's report (failed operations are counted in it; a wrong answer has
/// already stopped the run with an error); a run where nothing succeeded fails.
fn finish(report: bench::Report) -> anyhow::Result<()> {
    report.print();
    if report.ops == 0 {
        anyhow::bail!("no operation succeeded ({} failed)", report.errors);
    }
    Ok(())
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Start(args) => start(*args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Slt(args) => slt::run(args).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Node(args) => node::run(args).await,
            Command::Status(args) => node::status(args).await,
            Command::Health(args) => node::health(args).await,
            Command::Cert(args) => cert(args),
            Command::Sql(args) => sql::run(args).await,
            Command::Load(args) => load::run(args).await,
            Command::Chaos(args) => {
                if chaos::run(args).await? {
                    Ok(())
                } else {
                    anyhow::bail!("anomalies found (see above)")
                }
            }
            Command::Bench(BenchCommand::Kv(args)) => finish(bench::kv(args).await?),
            Command::Bench(BenchCommand::Insert(args)) => finish(bench::insert(args).await?),
            Command::Bench(BenchCommand::Scan(args)) => finish(bench::scan(args).await?),
            Command::Bench(BenchCommand::News(args)) => finish(bench::news::news(args).await?),
            Command::Bench(BenchCommand::Watch(args)) => finish(bench::watch::watch(args).await?),
            Command::Bench(BenchCommand::Files(args)) => bench::files::files(args).await,
            Command::Bench(BenchCommand::Report(args)) => {
                let md = bench::report::report(&args)?;
                println!("{md}");
                eprintln!("wrote {}", args.out.join("compare.md").display());
                Ok(())
            }
            Command::Bench(BenchCommand::Rebalance(args)) => {
                bench::rebalance::rebalance(args).await?.print();
                Ok(())
            }
            Command::Bench(BenchCommand::Failover(args)) => {
                let times = bench::failover(args).await?;
                let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                println!(
                    "failover over {} trials: min {:.0} ms, median {:.0} ms, max {:.0} ms",
                    times.len(),
                    ms(times[0]),
                    ms(times[times.len() / 2]),
                    ms(times[times.len() - 1])
                );
                Ok(())
            }
        }
    })
}
