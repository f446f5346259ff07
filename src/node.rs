//! A node: one `cairn start` process. Opens its data dir, joins or bootstraps the cluster,
//! runs its groups (`cluster::Cluster`), and serves pgwire, HTTP and the cluster port until
//! shut down.
//!
//! Bootstrapping: a node started without `--join` on an empty data dir becomes node n1, the
//! only voter of a new meta group, and records itself and the cluster settings
//! (`--replication-factor`, `--shard-count`) in the catalog.
//!
//! Joining: a new node asks any member for an id (`AllocateId`, answered by the meta leader,
//! which records the node in the catalog), persists it, starts its cluster server, then asks
//! to be added as a voter of the meta group (`AddNode`). Data shards come to it through the
//! placement driver. A restarted node keeps its id, tells the meta leader its addresses
//! (`Register`), and starts the groups its catalog places on it.
//!
//! Data dir layout: `node.json` (identity), `raft/` (the fjall log of every group),
//! `shards/<shard>/replica.db` (SQLite replica: `meta`, `s1`, ...) and
//! `shards/<shard>/snapshots/`.

use crate::api;
use crate::catalog::{meta, NodeRecord};
use crate::cluster::{Cluster, ClusterConfig};
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::limits;
use crate::replication::group::{raft_config, wait_for_leader, ReadConsistency, ShardGroup};
use crate::replication::log_store::LogDb;
use crate::replication::transport::{self, Client, Handler, Request, Response, WireError};
use crate::replication::writer::Transaction;
use crate::replication::NodeInfo;
use crate::sql::Engine;
use crate::storage::cancel::Cancel;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub pg_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub cluster_addr: SocketAddr,
    /// Cluster addresses of existing members to join through; empty to bootstrap.
    pub join: Vec<String>,
    pub zone: Option<String>,
    pub election_timeout_ms_min: u64,
    pub heartbeat_interval_ms: u64,
    /// Applied entries between snapshots (after which the log before them is purged).
    pub snapshot_every: u64,
    /// Replicas per shard, for a new cluster (ignored when joining or restarting).
    pub replication_factor: u32,
    /// Shards of a hash-distributed table unless it says otherwise, for a new cluster.
    pub shard_count: u32,
    /// How much of its change events each data replica here keeps.
    pub events: crate::storage::events::Window,
    /// How long another node is dead (by gossip) before its replicas are re-created
    /// elsewhere (acted on by whichever node leads the meta group).
    pub dead_after: Duration,
    /// Bytes per second a consistency check reads at most on each replica here.
    pub check_rate: u64,
    /// How files are kept (old versions' collection delay).
    pub files: crate::sql::files::Settings,
    /// Where FTP clients connect (none: no FTP), and the ports of its passive mode.
    pub ftp_addr: Option<SocketAddr>,
    pub ftp_passive_ports: std::ops::RangeInclusive<u16>,
    /// The `cairn dev` supervisor that started this node, if one did: fault injection
    /// (`/v1/dev/...`) is forwarded to it, and refused when there is none.
    pub dev_supervisor: Option<SocketAddr>,
    /// The host (name or IP, optionally with the cluster port) other nodes and clients reach
    /// this node at, when it is not the address it listens on (`--advertise-addr`).
    pub advertise: Option<String>,
    /// TLS for clients and between nodes (`--certs-dir`); none: plain TCP.
    pub tls: Option<crate::tls::Tls>,
    /// A new cluster's first user `admin`'s password: PostgreSQL clients must then log in
    /// (`crate::auth`). Ignored when joining or restarting.
    pub init_password: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    node_id: u64,
    /// Whether the cluster has added this node as a voter (false between the two join steps).
    joined: bool,
}

pub struct Node {
    pub id: NodeId,
    pub pg_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub cluster_addr: SocketAddr,
    pub engine: Arc<Engine>,
    pub cluster: Arc<Cluster>,
    servers: Vec<JoinHandle<()>>,
}

fn read_identity(path: &std::path::Path) -> Result<Option<Identity>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::internal(format!("{}: {e}", path.display()))),
    }
}

fn write_identity(path: &std::path::Path, id: &Identity) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(id).map_err(Error::internal)?)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::internal(format!("{}: {e}", path.display())))
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen for {what} on {addr}: {e}")))
}

/// Ask the members in `join`, in turn, until one answers `request` (they forward to the
/// leader); gives up after a minute.
async fn ask_cluster(
    client: &Client,
    join: &[String],
    request: impl Fn() -> Request,
) -> Result<Response> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for addr in join {
            match client.call(addr, request(), Duration::from_secs(10)).await {
                Ok(Response::Allocated(Err(e))) | Ok(Response::Done(Err(e))) => {
                    tracing::info!(%addr, error = ?e, "join: retrying");
                }
                Ok(r) => return Ok(r),
                Err(e) => tracing::info!(%addr, error = %e, "join: retrying"),
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Unavailable(format!(
                "could not join the cluster through {join:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn unexpected(what: &str, r: Response) -> Error {
    Error::internal(format!("{what}: unexpected answer {r:?}"))
}

fn record(id: NodeId, info: &NodeInfo) -> NodeRecord {
    NodeRecord {
        id,
        cluster_addr: info.cluster_addr.clone(),
        pg_addr: info.pg_addr.clone(),
        http_addr: info.http_addr.clone(),
        zone: info.zone.clone(),
        state: Default::default(),
        since_ms: 0,
    }
}

/// The addresses a node gives others: where it listens, or `--advertise-addr`'s host with
/// each listener's port (and the cluster port it names, if it names one).
struct Advertised {
    /// The host others reach this node at, as given (a name is resolved by whoever connects,
    /// so a container that comes back with a new IP address keeps its addresses).
    host: Option<String>,
    /// The cluster address, `host:port`.
    cluster: String,
}

impl Advertised {
    fn new(advertise: Option<&str>, cluster: SocketAddr) -> Result<Advertised> {
        let Some(text) = advertise.map(str::trim).filter(|t| !t.is_empty()) else {
            if cluster.ip().is_unspecified() {
                return Err(Error::Unavailable(format!(
                    "the cluster address {cluster} listens on every interface: give \
                     --advertise-addr, the host name or address other nodes reach this node at"
                )));
            }
            return Ok(Advertised {
                host: None,
                cluster: cluster.to_string(),
            });
        };
        let (host, port) = split_host_port(text).ok_or_else(|| {
            Error::Unavailable(format!(
                "--advertise-addr {text:?}: not a host or host:port"
            ))
        })?;
        let port = port.unwrap_or(cluster.port());
        let cluster = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Advertised {
            host: Some(host),
            cluster,
        })
    }

    /// A listener's address as others should use it.
    fn with_port(&self, listening: SocketAddr) -> String {
        match &self.host {
            None => listening.to_string(),
            Some(h) if h.contains(':') => format!("[{h}]:{}", listening.port()),
            Some(h) => format!("{h}:{}", listening.port()),
        }
    }

    /// The cluster address as an IP address and port, for gossip, which names peers by
    /// socket address: resolved once at start (a restart with a new IP address is a new
    /// gossip identity anyway).
    async fn resolve(&self) -> Result<SocketAddr> {
        let found = tokio::time::timeout(
            limits::RESOLVE_WAIT,
            tokio::net::lookup_host(self.cluster.as_str()),
        )
        .await;
        let addrs: Vec<SocketAddr> = match found {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => {
                return Err(Error::Unavailable(format!(
                    "advertised address {}: {e}",
                    self.cluster
                )))
            }
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "advertised address {}: no answer from the resolver in {:?}",
                    self.cluster,
                    limits::RESOLVE_WAIT
                )))
            }
        };
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| {
                Error::Unavailable(format!("advertised address {}: no address", self.cluster))
            })
    }
}

/// `host`, `host:port`, `1.2.3.4`, `::1`, `[::1]:7000` into a host and maybe a port.
fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some((addr.ip().to_string(), Some(addr.port())));
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Some((ip.to_string(), None));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
        None => (text, None),
    };
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    valid.then(|| (host.to_string(), port))
}

/// The refusal a node that was decommissioned gets when it starts again under its id.
fn decommissioned(id: NodeId) -> Error {
    Error::Unavailable(format!(
        "node {id} was decommissioned and cannot rejoin under its old identity; \
         start it with an empty --data-dir to join as a new node"
    ))
}

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Node> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| Error::internal(format!("creating {}: {e}", config.data_dir.display())))?;
        let pg = bind(config.pg_addr, "pgwire").await?;
        let http = bind(config.http_addr, "http").await?;
        // libunftp binds its own listener: this one only checks the address is free now.
        let ftp = match config.ftp_addr {
            Some(addr) => {
                let probe = bind(addr, "ftp").await?;
                let bound = probe
                    .local_addr()
                    .map_err(|e| Error::internal(format!("ftp address: {e}")))?;
                drop(probe);
                Some(bound)
            }
            None => None,
        };
        let listener = bind(config.cluster_addr, "cluster").await?;
        let pg_addr = pg.local_addr().map_err(Error::internal)?;
        let http_addr = http.local_addr().map_err(Error::internal)?;
        let cluster_addr = listener.local_addr().map_err(Error::internal)?;
        let advertised = Advertised::new(config.advertise.as_deref(), cluster_addr)?;
        let info = NodeInfo {
            cluster_addr: advertised.cluster.clone(),
            pg_addr: advertised.with_port(pg_addr),
            http_addr: advertised.with_port(http_addr),
            zone: config.zone.clone(),
        };
        let gossip_addr = advertised.resolve().await?;
        let source = Some(cluster_addr.ip()).filter(|ip| !ip.is_unspecified());
        let client = match &config.tls {
            None => Client::new(source),
            Some(tls) => Client::with_dialer(Arc::new(transport::TlsDialer {
                tcp: transport::TcpDialer { source },
                config: tls.dial.clone(),
            })),
        };
        let id_path = config.data_dir.join("node.json");
        let (identity, fresh) = match read_identity(&id_path)? {
            Some(id) => (id, false),
            None if config.join.is_empty() => {
                let id = Identity {
                    node_id: 1,
                    joined: true,
                };
                write_identity(&id_path, &id)?;
                (id, true)
            }
            None => {
                let request = || Request::AllocateId { node: info.clone() };
                let node_id = match ask_cluster(&client, &config.join, request).await? {
                    Response::Allocated(Ok(id)) => id,
                    other => return Err(unexpected("join", other)),
                };
                let id = Identity {
                    node_id,
                    joined: false,
                };
                write_identity(&id_path, &id)?;
                (id, false)
            }
        };
        let id = NodeId(identity.node_id);
        let bootstrap = config.join.is_empty() && identity.node_id == 1;
        let logs = LogDb::open(&config.data_dir.join("raft"))?;
        let raft = raft_config(
            config.election_timeout_ms_min,
            config.heartbeat_interval_ms,
            config.snapshot_every,
        )?;
        let journal = Arc::new(crate::cluster::journal::Journal::default());
        let liveness = crate::cluster::liveness::Liveness::start(
            id,
            cluster_addr,
            gossip_addr,
            journal.clone(),
            client.faults.clone(),
        )
        .await?;
        let cluster = Cluster::open(
            ClusterConfig {
                node: id,
                liveness,
                journal,
                dead_after: config.dead_after,
                check_rate: config.check_rate,
                info: info.clone(),
                dir: config.data_dir.join("shards"),
                logs,
                raft,
                client: client.clone(),
                events: config.events,
            },
            bootstrap,
        )
        .await?;
        if cluster
            .catalog()
            .node(id)
            .is_some_and(|n| n.state == crate::catalog::NodeState::Decommissioned)
        {
            cluster.shutdown().await;
            return Err(decommissioned(id));
        }
        // Name the cluster on every connection from the start (a restarted node knows it
        // from its meta replica).
        client.set_cluster_id(cluster.catalog().settings.cluster_id.clone());
        let handler = Arc::new(NodeRpc {
            cluster: cluster.clone(),
            txns: Mutex::new(HashMap::new()),
            // Ids must not repeat across restarts: a session elsewhere may still hold an id
            // from before a crash, and must find its transaction gone, not another's.
            next_txn: AtomicU64::new(rand::random::<u64>() >> 2),
            cancels: Mutex::new(HashMap::new()),
        });
        let mut servers = vec![tokio::spawn(transport::serve(
            listener,
            handler.clone(),
            config.tls.as_ref().map(|t| t.peers.clone()),
        ))];
        if !identity.joined {
            let request = || Request::AddNode {
                shard: ShardId::META,
                id: id.0,
                node: info.clone(),
            };
            match ask_cluster(&client, &config.join, request).await? {
                Response::Done(Ok(())) => {}
                other => return Err(unexpected("join", other)),
            }
            write_identity(
                &id_path,
                &Identity {
                    joined: true,
                    ..identity
                },
            )?;
            tracing::info!(node = %id, "joined the cluster");
        }
        if fresh {
            // A new cluster: record this node and the settings once the meta group has
            // elected this node.
            wait_for_leader(&cluster.meta.raft, limits::LEADER_WAIT).await;
            let lease = cluster.begin(ShardId::META).await?;
            let cluster_id = format!("{:032x}", rand::random::<u128>());
            let stmts = [
                meta::put_node(&record(id, &info))?,
                meta::put_setting("replication_factor", &config.replication_factor.to_string()),
                meta::put_setting("shard_count", &config.shard_count.max(1).to_string()),
                meta::put_setting("cluster_id", &cluster_id),
            ];
            let first_user = match &config.init_password {
                Some(password) => {
                    let admin = crate::auth::user(
                        "admin",
                        password,
                        std::iter::once("admin".to_string()).collect(),
                    )?;
                    Some(meta::put_user(&admin)?)
                }
                None => None,
            };
            let stmts = stmts.into_iter().chain(first_user);
            for stmt in stmts {
                cluster.exec(ShardId::META, &lease, stmt).await?;
            }
            cluster.commit(lease).await?;
        } else if identity.joined {
            // A restart: the addresses may have changed. Not fatal if the meta group has no
            // quorum yet; the node serves its replicas meanwhile.
            let (node_id, node_info) = (id.0, info.clone());
            let request = move || Request::Register {
                id: node_id,
                node: node_info.clone(),
            };
            let peers: Vec<String> = cluster
                .catalog()
                .nodes
                .values()
                .filter(|n| n.id != id)
                .map(|n| n.cluster_addr.clone())
                .collect();
            if cluster.meta.leader().0 == Some(id) || peers.is_empty() {
                let mut updated = record(id, &info);
                if let Some(known) = cluster.catalog().node(id) {
                    updated.state = known.state;
                    updated.since_ms = known.since_ms;
                }
                if let Err(e) = cluster
                    .write(ShardId::META, meta::put_node(&updated)?)
                    .await
                {
                    tracing::warn!(error = %e, "could not record this node's addresses");
                }
            } else {
                // A node decommissioned while it was away learns it here (its own catalog
                // may not say so: it left the meta group).
                for peer in &peers {
                    let answer = client.call(peer, request(), Duration::from_secs(5)).await;
                    match answer {
                        Ok(Response::Done(Ok(()))) => break,
                        Ok(Response::Done(Err(WireError::Unavailable(m))))
                            if m.contains("was decommissioned") =>
                        {
                            cluster.shutdown().await;
                            return Err(Error::Unavailable(m));
                        }
                        _ => {}
                    }
                }
                let c = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = ask_cluster(&c, &peers, request).await {
                        tracing::warn!(error = %e, "could not record this node's addresses");
                    }
                });
            }
        }
        if wait_for_leader(&cluster.meta.raft, limits::LEADER_WAIT)
            .await
            .is_none()
        {
            tracing::warn!(
                "the meta group has no leader yet; serving anyway, requests will wait for one"
            );
        }
        // Connections name the cluster once the catalog says which it is (a joining node
        // learns it with the catalog).
        let mut catalog = cluster.catalog_watch();
        let named = client.clone();
        servers.push(tokio::spawn(async move {
            loop {
                let id = catalog.borrow_and_update().settings.cluster_id.clone();
                named.set_cluster_id(id);
                if catalog.changed().await.is_err() {
                    return;
                }
            }
        }));
        let engine = Engine::new(cluster.clone(), config.files, config.dev_supervisor);
        crate::metrics::timeline::start();
        tokio::spawn(crate::cluster::Cluster::refresh_table_sizes(
            std::sync::Arc::downgrade(&cluster),
        ));
        tokio::spawn(sweep_transactions(handler));
        servers.push(tokio::spawn(api::pgwire::serve(
            pg,
            engine.clone(),
            config.tls.clone(),
        )));
        servers.push(tokio::spawn(api::http::serve(
            http,
            engine.clone(),
            config.tls.as_ref().map(|t| t.clients.clone()),
        )));
        if let Some(ftp) = ftp {
            servers.push(tokio::spawn(api::ftp::serve(
                ftp,
                config.ftp_passive_ports.clone(),
                engine.clone(),
            )));
        }
        tracing::info!(node = %id, pgwire = %pg_addr, http = %http_addr, cluster = %cluster_addr, "node started");
        Ok(Node {
            id,
            pg_addr,
            http_addr,
            cluster_addr,
            engine,
            cluster,
            servers,
        })
    }

    /// Stop serving and stop the groups. Acknowledged writes are already in the log.
    pub async fn shutdown(self) {
        for s in &self.servers {
            s.abort();
        }
        // Others take over this node's leaderships now rather than after an election
        // timeout each.
        self.cluster.hand_over(limits::HANDOVER_WAIT).await;
        self.cluster.shutdown().await;
        tracing::info!(node = %self.id, "node stopped");
    }
}

/// A forwarded transaction; `None` once committed or rolled back.
type SharedTxn = Arc<tokio::sync::Mutex<Option<Transaction>>>;

/// Answers other nodes' calls.
struct NodeRpc {
    cluster: Arc<Cluster>,
    /// Transactions that other nodes' sessions hold on this (leader) node, by id.
    txns: Mutex<HashMap<u64, (SharedTxn, Instant)>>,
    next_txn: AtomicU64,
    /// Cancel tokens of forwarded statements by their callers' keys: made by whichever of
    /// the statement and its `Cancel` arrives first (they travel as separate calls).
    cancels: Mutex<HashMap<u64, (Cancel, Instant)>>,
}

/// End forwarded transactions whose session node has fallen silent (no statement and no
/// keepalive for `REMOTE_TXN_SILENCE`: it died, or a partition cut it off): dropping the
/// last handle rolls the transaction back — or, once prepared, resolves it by the recorded
/// decision — and frees the shard's writer for everyone else.
async fn sweep_transactions(rpc: Arc<NodeRpc>) {
    loop {
        tokio::time::sleep(limits::REMOTE_TXN_SILENCE / 4).await;
        let gone: Vec<SharedTxn> = {
            let mut txns = rpc.txns.lock().expect("txn map lock poisoned");
            let silent: Vec<u64> = txns
                .iter()
                .filter(|(_, (_, used))| used.elapsed() > limits::REMOTE_TXN_SILENCE)
                .map(|(id, _)| *id)
                .collect();
            silent
                .iter()
                .filter_map(|id| txns.remove(id))
                .map(|(t, _)| t)
                .collect()
        };
        // A `Cancel` that came after its statement had ended leaves a token nobody takes.
        rpc.cancels
            .lock()
            .expect("cancel map lock poisoned")
            .retain(|_, (_, made)| made.elapsed() < limits::FORWARD_TIMEOUT);
        for t in gone {
            if let Some(txn) = t.lock().await.take() {
                tracing::info!("ending a forwarded transaction whose session node fell silent");
                drop(txn);
            }
        }
    }
}

fn wire<T>(r: Result<T>) -> std::result::Result<T, WireError> {
    r.map_err(WireError::from)
}

/// A forwarded transaction that no longer exists here (ended by a timeout or a leader
/// change): the caller resolves through the shard instead.
fn gone_txn() -> WireError {
    WireError::Sql {
        code: crate::error::sqlstate::IDLE_IN_TRANSACTION_TIMEOUT.into(),
        message: "the transaction no longer exists on the shard's leader".into(),
    }
}

/// What a node without a replica of the shard answers: the caller tries another node.
fn no_such_shard() -> WireError {
    WireError::NotLeader { leader: None }
}

impl NodeRpc {
    fn group(&self, shard: ShardId) -> Option<Arc<ShardGroup>> {
        self.cluster.group(shard)
    }

    /// Forward a membership request to `group`'s leader, or return None to handle it here.
    async fn to_leader(&self, group: &ShardGroup, request: Request) -> Option<Response> {
        match wait_for_leader(&group.raft, limits::LEADER_WAIT).await {
            Some(l) if l == group.node => None,
            Some(l) => {
                let Some(addr) = self.cluster.addr_of(l) else {
                    return Some(Response::Done(Err(WireError::Unavailable(
                        "leader unknown".into(),
                    ))));
                };
                Some(
                    match self
                        .cluster
                        .client
                        .call(&addr, request, Duration::from_secs(30))
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => Response::Done(Err(WireError::Unavailable(e.to_string()))),
                    },
                )
            }
            None => Some(Response::Done(Err(WireError::NotLeader { leader: None }))),
        }
    }

    /// Raft messages are accepted only from members of the group (or by a node not yet in
    /// any membership, which is how a new replica first hears from the leader): a message
    /// from elsewhere with a higher term would otherwise depose a healthy leader.
    fn is_member_message(&self, group: &ShardGroup, vote: &openraft::Vote<u64>) -> bool {
        let Some(from) = vote.leader_id().voted_for().map(NodeId) else {
            return false;
        };
        let members = group.members();
        let in_members = members.iter().any(|(m, _)| *m == from);
        if group.shard.is_meta() {
            return members.is_empty() || in_members;
        }
        // A data shard's messages come from its members, or from nodes the catalog places
        // on it (a member added after this copy's last membership entry — it learns of
        // it from that node). A new, empty copy takes them only from the catalog's nodes:
        // a copy taken out of the group that has not learnt so yet (paused, cut off) still
        // believes in its old membership and campaigns.
        in_members
            || self
                .cluster
                .catalog()
                .shard(group.shard)
                .is_some_and(|s| s.replicas.contains(&from))
    }

    /// Whether this replica may grant votes. Raft names members by node, not by copy, so
    /// a new, empty copy placed on a node that was once a voter would vote for a removed
    /// copy elsewhere that still lists that node in its old membership (any log is as
    /// long as an empty one) and make it a leader with a stale log. So a copy with no
    /// membership yet votes only in its group's first election, as one of the copies the
    /// group was created with. Once it has a log it votes as Raft says — even while it
    /// believes itself a learner (a promotion it has not received yet may count on it).
    fn may_vote(&self, group: &ShardGroup) -> bool {
        let me = group.node;
        if !group.members().is_empty() {
            return true;
        }
        !group.shard.is_meta()
            && self
                .cluster
                .catalog()
                .shard(group.shard)
                .is_some_and(|s| s.initial.contains(&me) && s.epoch_of(me) == 0)
    }

    fn stranger(vote: &openraft::Vote<u64>) -> openraft::error::RaftError<u64> {
        tracing::warn!(from = ?vote.leader_id().voted_for(), term = vote.leader_id().get_term(), "rejecting a raft message from a non-member");
        openraft::error::RaftError::Fatal(openraft::error::Fatal::Panicked)
    }

    /// On the meta leader: give a joining node the next id and record it in the catalog.
    async fn allocate_id(&self, info: NodeInfo) -> Result<u64> {
        let cluster = &self.cluster;
        let lease = cluster.begin(ShardId::META).await?;
        let result = async {
            // The same address asking again before it ever joined a group (a retried join)
            // gets the same id. An id that has been a voter is never handed out again: a
            // node that lost its data must not vote under its old name.
            let rows = cluster
                .exec(ShardId::META, &lease, meta::next_id("_cairn_nodes"))
                .await?;
            let next = match rows.rows.first().and_then(|r| r.first()) {
                Some(rusqlite::types::Value::Integer(i)) => *i as u64,
                _ => return Err(Error::internal("no next node id")),
            };
            let members = cluster.meta.members();
            let existing = cluster
                .catalog()
                .nodes
                .values()
                .find(|n| {
                    n.cluster_addr == info.cluster_addr && !members.iter().any(|(m, _)| *m == n.id)
                })
                .map(|n| n.id);
            let id = existing.unwrap_or(NodeId(next.max(2)));
            cluster
                .exec(ShardId::META, &lease, meta::put_node(&record(id, &info))?)
                .await?;
            Ok(id.0)
        }
        .await;
        match result {
            Ok(id) => {
                cluster.commit(lease).await?;
                tracing::info!(node = %NodeId(id), addr = %info.cluster_addr, "node id allocated");
                Ok(id)
            }
            Err(e) => {
                cluster.rollback(lease).await;
                Err(e)
            }
        }
    }

    /// The token for a forwarded statement's cancel key (made now if its `Cancel` has not
    /// come first).
    fn cancel_token(&self, key: Option<u64>) -> Cancel {
        let Some(key) = key else {
            return Cancel::default();
        };
        let mut cancels = self.cancels.lock().expect("cancel map lock poisoned");
        cancels
            .entry(key)
            .or_insert_with(|| (Cancel::default(), Instant::now()))
            .0
            .clone()
    }

    fn forget_cancel(&self, key: Option<u64>) {
        if let Some(key) = key {
            self.cancels
                .lock()
                .expect("cancel map lock poisoned")
                .remove(&key);
        }
    }

    /// A statement inside forwarded transaction `txn`.
    async fn exec_in(&self, txn: u64, stmt: crate::storage::replica::Statement) -> Response {
        match self.txn(txn) {
            None => Response::Rows(Err(WireError::Sql {
                code: crate::error::sqlstate::IDLE_IN_TRANSACTION_TIMEOUT.into(),
                message: "the transaction no longer exists on the leader; roll back and retry"
                    .into(),
            })),
            Some(t) => {
                let guard = t.lock().await;
                match guard.as_ref() {
                    Some(t) => Response::Rows(wire(t.exec(stmt).await.map(Into::into))),
                    None => {
                        Response::Rows(Err(WireError::Retry("the transaction has ended".into())))
                    }
                }
            }
        }
    }

    fn txn(&self, id: u64) -> Option<SharedTxn> {
        let mut txns = self.txns.lock().expect("txn map lock poisoned");
        let entry = txns.get_mut(&id)?;
        entry.1 = Instant::now();
        Some(entry.0.clone())
    }
}

#[async_trait::async_trait]
impl Handler for NodeRpc {
    fn cluster_id(&self) -> Option<String> {
        self.cluster.catalog().settings.cluster_id.clone()
    }

    async fn handle(&self, request: Request) -> Response {
        match request {
            // Read by the transport before any call; a second one means nothing.
            Request::Hello { .. } => Response::Done(Ok(())),
            Request::Append { shard, rpc } => {
                let Some(group) = self.group(shard) else {
                    return Response::Done(Err(no_such_shard()));
                };
                if !self.is_member_message(&group, &rpc.vote) {
                    return Response::Append(Err(Self::stranger(&rpc.vote)));
                }
                let commit = rpc.leader_commit.map(|l| l.index).unwrap_or(0);
                let received = Instant::now();
                let result = group.raft.append_entries(rpc).await;
                if matches!(result, Ok(openraft::raft::AppendEntriesResponse::Success)) {
                    *group.leader_contact.lock().expect("contact lock poisoned") =
                        Some((received, commit));
                }
                Response::Append(result)
            }
            Request::Ping => Response::Done(Ok(())),
            Request::Vote { shard, rpc } => {
                let Some(group) = self.group(shard) else {
                    return Response::Done(Err(no_such_shard()));
                };
                if !self.is_member_message(&group, &rpc.vote) || !self.may_vote(&group) {
                    return Response::Vote(Err(Self::stranger(&rpc.vote)));
                }
                Response::Vote(group.raft.vote(rpc).await)
            }
            Request::Snapshot { shard, rpc } => {
                let Some(group) = self.group(shard) else {
                    return Response::Done(Err(no_such_shard()));
                };
                if !self.is_member_message(&group, &rpc.vote) {
                    let e = openraft::error::RaftError::Fatal(openraft::error::Fatal::Panicked);
                    return Response::Snapshot(Err(e));
                }
                Response::Snapshot(group.raft.install_snapshot(rpc).await)
            }
            Request::AllocateId { node } => {
                let meta = self.cluster.meta.clone();
                match self
                    .to_leader(&meta, Request::AllocateId { node: node.clone() })
                    .await
                {
                    Some(Response::Done(Err(e))) => Response::Allocated(Err(e)),
                    Some(r) => r,
                    None => Response::Allocated(wire(self.allocate_id(node).await)),
                }
            }
            Request::Register { id, node } => {
                let meta = self.cluster.meta.clone();
                match self
                    .to_leader(
                        &meta,
                        Request::Register {
                            id,
                            node: node.clone(),
                        },
                    )
                    .await
                {
                    Some(r) => r,
                    None => {
                        // Addresses change; the node's place in its life does not.
                        let mut updated = record(NodeId(id), &node);
                        if let Some(known) = self.cluster.catalog().node(NodeId(id)) {
                            if known.state == crate::catalog::NodeState::Decommissioned {
                                return Response::Done(Err(decommissioned(NodeId(id)).into()));
                            }
                            updated.state = known.state;
                            updated.since_ms = known.since_ms;
                        }
                        let put = meta::put_node(&updated);
                        let result = match put {
                            Ok(stmt) => meta.writer.execute(stmt).await.map(|_| ()),
                            Err(e) => Err(e),
                        };
                        Response::Done(wire(result))
                    }
                }
            }
            Request::ReadIndex { shard } => match self.group(shard) {
                Some(group) => Response::Index(wire(group.read_index().await)),
                None => Response::Index(Err(no_such_shard())),
            },
            Request::AddNode { shard, id, node } => {
                let Some(group) = self.group(shard) else {
                    return Response::Done(Err(no_such_shard()));
                };
                match self
                    .to_leader(
                        &group,
                        Request::AddNode {
                            shard,
                            id,
                            node: node.clone(),
                        },
                    )
                    .await
                {
                    Some(r) => r,
                    None => Response::Done(wire(self.cluster.add_member(&group, id, node).await)),
                }
            }
            Request::RemoveNode { shard, id } => {
                let Some(group) = self.group(shard) else {
                    return Response::Done(Err(no_such_shard()));
                };
                match self
                    .to_leader(&group, Request::RemoveNode { shard, id })
                    .await
                {
                    Some(r) => r,
                    None => Response::Done(wire(self.cluster.remove_member(&group, id).await)),
                }
            }
            Request::Voters { shard } => match self.group(shard) {
                Some(group) => {
                    Response::Voters(wire(crate::cluster::router::leader_voters(&group)))
                }
                None => Response::Voters(Err(no_such_shard())),
            },
            Request::Status => Response::Status(Box::new(self.cluster.status())),
            Request::Timeline { since_ms } => {
                Response::Timeline(crate::metrics::timeline::since(since_ms))
            }
            Request::CheckShard { shard, id } => match self.group(shard) {
                Some(group) => Response::Done(wire(group.writer.check(id).await)),
                None => Response::Done(Err(no_such_shard())),
            },
            Request::CheckResult { shard, id } => match self.group(shard) {
                Some(group) => Response::Check(wire(group.replica.check_result(id).await)),
                None => Response::Check(Err(no_such_shard())),
            },
            Request::CatalogAt { index } => {
                let applied = self
                    .cluster
                    .meta
                    .raft
                    .wait(Some(limits::CATALOG_SPREAD_WAIT))
                    .applied_index_at_least(Some(index), "the catalog")
                    .await;
                Response::Done(
                    applied
                        .map(|_| ())
                        .map_err(|e| WireError::Unavailable(e.to_string())),
                )
            }
            Request::Cancel { key } => {
                self.cancel_token(Some(key)).cancel();
                Response::Done(Ok(()))
            }
            Request::Exec { shard, stmt, .. }
                if !shard.is_meta() && crate::storage::replica::names_internal_table(&stmt.sql) =>
            {
                // Forwarded statements are Cairn's translations of clients' SQL; the
                // replica's own tables are never among what they may touch.
                Response::Rows(Err(WireError::Sql {
                    code: crate::error::sqlstate::INSUFFICIENT_PRIVILEGE.into(),
                    message: "a forwarded statement named an internal table".into(),
                }))
            }
            Request::Exec {
                txn: Some(txn),
                stmt,
                cancel,
                ..
            } => {
                let mut stmt: crate::storage::replica::Statement = stmt.into();
                stmt.cancel = self.cancel_token(cancel);
                let response = self.exec_in(txn, stmt).await;
                self.forget_cancel(cancel);
                response
            }
            Request::Exec {
                shard,
                stmt,
                read,
                cancel,
                ..
            } => {
                let Some(group) = self.group(shard) else {
                    return Response::Rows(Err(no_such_shard()));
                };
                let mut stmt: crate::storage::replica::Statement = stmt.into();
                stmt.cancel = self.cancel_token(cancel);
                let result = if read {
                    self.cluster
                        .read_here(&group, stmt, ReadConsistency::Linearizable)
                        .await
                } else {
                    group.write(stmt).await
                };
                self.forget_cancel(cancel);
                Response::Rows(wire(result.map(Into::into)))
            }
            Request::Campaign { shard } => match self.group(shard) {
                Some(group) => Response::Done(wire(self.cluster.campaign(&group).await)),
                None => Response::Done(Err(no_such_shard())),
            },
            Request::ReadReplica {
                shard,
                stmt,
                fresh_ms,
                cancel,
            } => {
                let Some(group) = self.group(shard) else {
                    return Response::Rows(Err(no_such_shard()));
                };
                let applied = group
                    .raft
                    .metrics()
                    .borrow()
                    .last_applied
                    .map_or(0, |l| l.index);
                if applied == 0 {
                    return Response::Rows(Err(WireError::Unavailable(format!(
                        "{shard}: this replica has applied nothing yet"
                    ))));
                }
                let consistency = match fresh_ms {
                    None => ReadConsistency::Any,
                    Some(ms) => ReadConsistency::Bounded(Duration::from_millis(ms)),
                };
                if let ReadConsistency::Bounded(bound) = consistency {
                    if !group.fresh_within(bound) {
                        return Response::Rows(Err(WireError::Unavailable(format!(
                            "{shard}: this replica has not heard from its leader within {bound:?}"
                        ))));
                    }
                }
                let mut stmt: crate::storage::replica::Statement = stmt.into();
                stmt.cancel = self.cancel_token(cancel);
                let result = self.cluster.read_here(&group, stmt, consistency).await;
                self.forget_cancel(cancel);
                Response::Rows(wire(result.map(Into::into)))
            }
            Request::Begin { shard, priority } => {
                let Some(group) = self.group(shard) else {
                    return Response::Txn(Err(no_such_shard()));
                };
                match group.begin(priority).await {
                    Ok(t) => {
                        let id = self.next_txn.fetch_add(1, Ordering::Relaxed);
                        let entry = (Arc::new(tokio::sync::Mutex::new(Some(t))), Instant::now());
                        self.txns
                            .lock()
                            .expect("txn map lock poisoned")
                            .insert(id, entry);
                        Response::Txn(Ok(id))
                    }
                    Err(e) => Response::Txn(Err(e.into())),
                }
            }
            Request::TxnKeepAlive { txn } => match self.txn(txn) {
                Some(_) => Response::Done(Ok(())),
                None => Response::Done(Err(gone_txn())),
            },
            Request::TxnCollect { txn } => match self.txn(txn) {
                None => Response::Flag(Err(gone_txn())),
                Some(t) => match t.lock().await.as_ref() {
                    Some(t) => Response::Flag(wire(t.collect().await)),
                    None => Response::Flag(Err(gone_txn())),
                },
            },
            Request::TxnPrepare {
                txn,
                id,
                coordinator,
            } => match self.txn(txn) {
                None => Response::Done(Err(gone_txn())),
                Some(t) => match t.lock().await.as_ref() {
                    Some(t) => Response::Done(wire(t.prepare(id, coordinator).await)),
                    None => Response::Done(Err(gone_txn())),
                },
            },
            Request::TxnDecide { txn, id, commit } => match self.txn(txn) {
                None => Response::Flag(Err(gone_txn())),
                Some(t) => match t.lock().await.as_ref() {
                    Some(t) => Response::Flag(wire(t.decide(id, commit).await)),
                    None => Response::Flag(Err(gone_txn())),
                },
            },
            Request::TxnResolve { txn, commit } => {
                let t = self
                    .txns
                    .lock()
                    .expect("txn map lock poisoned")
                    .remove(&txn);
                let t = match t {
                    Some((t, _)) => t.lock().await.take(),
                    None => None,
                };
                match t {
                    Some(t) => Response::Done(wire(t.resolve(commit).await)),
                    None => Response::Done(Err(gone_txn())),
                }
            }
            Request::Decide { shard, id, commit } => match self.group(shard) {
                Some(group) => Response::Flag(wire(group.writer.decide(id, commit).await)),
                None => Response::Flag(Err(no_such_shard())),
            },
            Request::Resolve { shard, id, commit } => match self.group(shard) {
                Some(group) => Response::Done(wire(group.writer.resolve(id, commit).await)),
                None => Response::Done(Err(no_such_shard())),
            },
            Request::WriterHeld { shard, millis } => match self.group(shard) {
                Some(group)
                    if group.raft.metrics().borrow().current_leader
                        == Some(self.cluster.node.0) =>
                {
                    let span = std::time::Duration::from_millis(millis);
                    Response::Flag(Ok(group.writer.held_throughout(span).await))
                }
                _ => Response::Flag(Err(no_such_shard())),
            },
            Request::Forget { shard, ids } => match self.group(shard) {
                Some(group) => Response::Done(wire(group.writer.forget(ids).await)),
                None => Response::Done(Err(no_such_shard())),
            },
            Request::Commit { txn } => {
                let t = self
                    .txns
                    .lock()
                    .expect("txn map lock poisoned")
                    .remove(&txn);
                let t = match t {
                    Some((t, _)) => t.lock().await.take(),
                    None => None,
                };
                match t {
                    Some(t) => Response::Done(wire(t.commit().await)),
                    None => Response::Done(Err(WireError::Sql {
                        code: crate::error::sqlstate::IDLE_IN_TRANSACTION_TIMEOUT.into(),
                        message:
                            "the transaction no longer exists on the leader; it was rolled back"
                                .into(),
                    })),
                }
            }
            Request::Events {
                shard,
                after,
                max_bytes,
                wait_ms,
            } => {
                let Some(group) = self.group(shard) else {
                    return Response::Events(Err(no_such_shard()));
                };
                let wait = Duration::from_millis(wait_ms.into()).min(limits::FEED_WAIT * 4);
                let max_bytes = (max_bytes as usize).min(limits::FEED_PAGE_BYTES * 4);
                Response::Events(wire(
                    self.cluster
                        .events_here(&group, after, max_bytes, wait)
                        .await,
                ))
            }
            Request::ReadAt { shard, stmt }
                if !shard.is_meta() && crate::storage::replica::names_internal_table(&stmt.sql) =>
            {
                Response::RowsAt(Err(WireError::Sql {
                    code: crate::error::sqlstate::INSUFFICIENT_PRIVILEGE.into(),
                    message: "a forwarded statement named an internal table".into(),
                }))
            }
            Request::ReadAt { shard, stmt } => {
                let Some(group) = self.group(shard) else {
                    return Response::RowsAt(Err(no_such_shard()));
                };
                Response::RowsAt(wire(
                    group
                        .read_at(stmt.into())
                        .await
                        .map(|(rows, at)| (rows.into(), at)),
                ))
            }
            Request::Rollback { txn } => {
                let t = self
                    .txns
                    .lock()
                    .expect("txn map lock poisoned")
                    .remove(&txn);
                if let Some((t, _)) = t {
                    if let Some(t) = t.lock().await.take() {
                        t.rollback().await;
                    }
                }
                Response::Done(Ok(()))
            }
        }
    }
}

#[cfg(test)]
mod advertise_tests {
    use super::*;

    #[test]
    fn hosts_and_ports_are_split() {
        let split = |t| split_host_port(t);
        assert_eq!(split("n1"), Some(("n1".into(), None)));
        assert_eq!(
            split("db-1.example.com:7100"),
            Some(("db-1.example.com".into(), Some(7100)))
        );
        assert_eq!(split("10.0.0.5"), Some(("10.0.0.5".into(), None)));
        assert_eq!(
            split("10.0.0.5:7001"),
            Some(("10.0.0.5".into(), Some(7001)))
        );
        assert_eq!(split("::1"), Some(("::1".into(), None)));
        assert_eq!(split("[::1]:7001"), Some(("::1".into(), Some(7001))));
        assert_eq!(split("n1:port"), None);
        assert_eq!(split("bad host"), None);
        assert_eq!(split(":7000"), None);
    }

    #[test]
    fn advertised_addresses_keep_each_listeners_port() {
        let cluster: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        let a = Advertised::new(Some("n2"), cluster).unwrap();
        assert_eq!(a.cluster, "n2:7000");
        assert_eq!(a.with_port("0.0.0.0:5433".parse().unwrap()), "n2:5433");
        let a = Advertised::new(Some("10.1.2.3:17000"), cluster).unwrap();
        assert_eq!(a.cluster, "10.1.2.3:17000");
        assert_eq!(
            a.with_port("0.0.0.0:8080".parse().unwrap()),
            "10.1.2.3:8080"
        );
        let a = Advertised::new(Some("::1"), cluster).unwrap();
        assert_eq!(a.cluster, "[::1]:7000");
        // Without one, the listening address, unless it is every interface.
        let here: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(
            Advertised::new(None, here).unwrap().cluster,
            "127.0.0.1:7000"
        );
        assert!(Advertised::new(None, cluster).is_err());
    }
}
