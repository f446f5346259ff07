//! A node: one `cairn start` process. Opens its data dir, joins or bootstraps the cluster,
//! starts its shard group(s), and serves pgwire, HTTP and the cluster port until shut down.
//!
//! Groups: a cluster is created with a fixed set of shard groups (`--shards`, s1..sN); every
//! node holds a replica of each (the placement work will spread them). s1 also decides node
//! ids. SQL runs on s1 until tables are sharded.
//!
//! Joining: a new node asks any member for an id and the list of shards (`AllocateId`,
//! answered by s1's leader), persists them, starts its groups and cluster server, then asks
//! to be added as a voter of each group (`AddNode`, answered by that group's leader: learner,
//! catch up, promote). A restarted node keeps its id and membership; a node that crashed
//! between the two steps repeats the second.
//!
//! Data dir layout: `node.json` (identity), `raft/` (the fjall log of every group),
//! `shards/s<N>/replica.db` (SQLite replica) and `shards/s<N>/snapshots/`.

use crate::api;
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::limits;
use crate::replication::group::{raft_config, wait_for_leader, ReadConsistency, ShardGroup};
use crate::replication::log_store::LogDb;
use crate::replication::transport::{self, Client, Handler, Request, Response, WireError};
use crate::replication::writer::Transaction;
use crate::replication::NodeInfo;
use crate::sql::Engine;
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Shard groups a new cluster is created with (ignored when joining or restarting).
    pub shards: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    node_id: u64,
    /// Whether the cluster has added this node as a voter (false between the two join steps).
    joined: bool,
    #[serde(default = "first_shard_only")]
    shards: Vec<u64>,
}

fn first_shard_only() -> Vec<u64> {
    vec![1]
}

pub struct Node {
    pub id: NodeId,
    pub pg_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub cluster_addr: SocketAddr,
    pub engine: Arc<Engine>,
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

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Node> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| Error::internal(format!("creating {}: {e}", config.data_dir.display())))?;
        let pg = bind(config.pg_addr, "pgwire").await?;
        let http = bind(config.http_addr, "http").await?;
        let cluster = bind(config.cluster_addr, "cluster").await?;
        let pg_addr = pg.local_addr().map_err(Error::internal)?;
        let http_addr = http.local_addr().map_err(Error::internal)?;
        let cluster_addr = cluster.local_addr().map_err(Error::internal)?;
        let info = NodeInfo {
            cluster_addr: cluster_addr.to_string(),
            pg_addr: pg_addr.to_string(),
            http_addr: http_addr.to_string(),
            zone: config.zone.clone(),
        };
        let client = Client::new();
        let id_path = config.data_dir.join("node.json");
        let identity = match read_identity(&id_path)? {
            Some(id) => id,
            None if config.join.is_empty() => {
                let shards = (1..=config.shards.max(1)).collect();
                let id = Identity {
                    node_id: 1,
                    joined: true,
                    shards,
                };
                write_identity(&id_path, &id)?;
                id
            }
            None => {
                let (node_id, shards) =
                    match ask_cluster(&client, &config.join, || Request::AllocateId).await? {
                        Response::Allocated(Ok(a)) => a,
                        other => return Err(unexpected("join", other)),
                    };
                let id = Identity {
                    node_id,
                    joined: false,
                    shards: shards.iter().map(|s| s.0).collect(),
                };
                write_identity(&id_path, &id)?;
                id
            }
        };
        let id = NodeId(identity.node_id);
        let bootstrap = (config.join.is_empty() && identity.node_id == 1).then(|| info.clone());
        let logs = LogDb::open(&config.data_dir.join("raft"))?;
        let raft = raft_config(
            config.election_timeout_ms_min,
            config.heartbeat_interval_ms,
            config.snapshot_every,
        )?;
        let mut groups = BTreeMap::new();
        for shard in identity.shards.iter().map(|s| ShardId(*s)) {
            let dir = config.data_dir.join("shards");
            let group = ShardGroup::start(
                id,
                shard,
                &dir,
                &logs,
                raft.clone(),
                client.clone(),
                bootstrap.clone(),
            )
            .await?;
            groups.insert(shard, Arc::new(group));
        }
        let first = groups
            .values()
            .next()
            .cloned()
            .ok_or_else(|| Error::Corrupt("node has no shards".into()))?;
        let engine = Engine::new(first, groups.values().cloned().collect(), client.clone());
        let handler = Arc::new(NodeRpc {
            groups: groups.clone(),
            client: client.clone(),
            next_id: Mutex::new(0),
            changing: tokio::sync::Mutex::new(()),
            txns: Mutex::new(HashMap::new()),
            next_txn: AtomicU64::new(1),
        });
        let mut servers = vec![tokio::spawn(transport::serve(cluster, handler.clone()))];
        if !identity.joined {
            for shard in groups.keys().copied() {
                let request = || Request::AddNode {
                    shard,
                    id: id.0,
                    node: info.clone(),
                };
                match ask_cluster(&client, &config.join, request).await? {
                    Response::Done(Ok(())) => {}
                    other => return Err(unexpected("join", other)),
                }
            }
            write_identity(
                &id_path,
                &Identity {
                    joined: true,
                    ..identity
                },
            )?;
            tracing::info!(node = %id, shards = groups.len(), "joined the cluster");
        }
        for group in groups.values() {
            if wait_for_leader(&group.raft, limits::LEADER_WAIT)
                .await
                .is_none()
            {
                tracing::warn!(shard = %group.shard, "no leader yet; serving anyway, requests will wait for one");
            }
        }
        tokio::spawn(sweep_transactions(handler));
        servers.push(tokio::spawn(api::pgwire::serve(pg, engine.clone())));
        servers.push(tokio::spawn(api::http::serve(http, engine.clone())));
        tracing::info!(node = %id, pgwire = %pg_addr, http = %http_addr, cluster = %cluster_addr, shards = groups.len(), "node started");
        Ok(Node {
            id,
            pg_addr,
            http_addr,
            cluster_addr,
            engine,
            servers,
        })
    }

    /// Stop serving and stop the groups. Acknowledged writes are already in the log.
    pub async fn shutdown(self) {
        for s in &self.servers {
            s.abort();
        }
        for group in &self.engine.groups {
            group.shutdown().await;
        }
        tracing::info!(node = %self.id, "node stopped");
    }
}

/// A forwarded transaction; `None` once committed or rolled back.
type SharedTxn = Arc<tokio::sync::Mutex<Option<Transaction>>>;

/// Answers other nodes' calls.
struct NodeRpc {
    groups: BTreeMap<ShardId, Arc<ShardGroup>>,
    client: Arc<Client>,
    /// Highest id handed out by this node while leader of the first group.
    next_id: Mutex<u64>,
    /// One membership change at a time (openraft refuses overlapping ones).
    changing: tokio::sync::Mutex<()>,
    /// Transactions that followers' sessions hold on this (leader) node, by id.
    txns: Mutex<HashMap<u64, (SharedTxn, Instant)>>,
    next_txn: AtomicU64,
}

/// Drop forwarded transactions nobody has used for the idle limit (their writer was
/// released by the writer's own idle timeout; this frees the map entry).
async fn sweep_transactions(rpc: Arc<NodeRpc>) {
    loop {
        tokio::time::sleep(limits::IDLE_IN_TRANSACTION_TIMEOUT / 4).await;
        let cutoff = limits::IDLE_IN_TRANSACTION_TIMEOUT * 2;
        rpc.txns
            .lock()
            .expect("txn map lock poisoned")
            .retain(|_, (_, used)| used.elapsed() < cutoff);
    }
}

fn wire<T>(r: Result<T>) -> std::result::Result<T, WireError> {
    r.map_err(WireError::from)
}

fn no_such_shard(shard: ShardId) -> WireError {
    WireError::Internal(format!("this node has no replica of {shard}"))
}

impl NodeRpc {
    fn first(&self) -> &Arc<ShardGroup> {
        self.groups
            .values()
            .next()
            .expect("a node has at least one group")
    }

    /// Forward a membership request to `group`'s leader, or return None to handle it here.
    async fn to_leader(&self, group: &ShardGroup, request: Request) -> Option<Response> {
        match wait_for_leader(&group.raft, limits::LEADER_WAIT).await {
            Some(l) if l == group.node => None,
            Some(l) => {
                let Some(info) = group.node_info(l) else {
                    return Some(Response::Done(Err(WireError::Unavailable(
                        "leader unknown".into(),
                    ))));
                };
                Some(
                    match self
                        .client
                        .call(&info.cluster_addr, request, Duration::from_secs(30))
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
    /// any membership, which is how a joining node first hears from the leader): a message
    /// from elsewhere with a higher term would otherwise depose a healthy leader.
    fn is_member_message(group: &ShardGroup, vote: &openraft::Vote<u64>) -> bool {
        let members = group.members();
        members.is_empty()
            || vote
                .leader_id()
                .voted_for()
                .is_some_and(|id| members.iter().any(|(m, _)| m.0 == id))
    }

    fn stranger(vote: &openraft::Vote<u64>) -> openraft::error::RaftError<u64> {
        tracing::warn!(from = ?vote.leader_id().voted_for(), term = vote.leader_id().get_term(), "rejecting a raft message from a non-member");
        openraft::error::RaftError::Fatal(openraft::error::Fatal::Panicked)
    }

    fn allocate_id(&self) -> u64 {
        let mut next = self.next_id.lock().expect("id lock poisoned");
        let highest = self
            .first()
            .members()
            .iter()
            .map(|(id, _)| id.0)
            .max()
            .unwrap_or(0);
        *next = (*next).max(highest) + 1;
        *next
    }

    async fn add_node(&self, group: &ShardGroup, id: u64, node: NodeInfo) -> Result<()> {
        let _one_at_a_time = self.changing.lock().await;
        let raft = &group.raft;
        let voters: BTreeSet<u64> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.contains(&id) {
            return Ok(());
        }
        tracing::info!(shard = %group.shard, node = %NodeId(id), addr = %node.cluster_addr, "adding node");
        raft.add_learner(id, node, true)
            .await
            .map_err(|e| Error::Unavailable(format!("adding learner: {e}")))?;
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| Error::Unavailable(format!("promoting to voter: {e}")))?;
        Ok(())
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
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Append { shard, rpc } => {
                let Some(group) = self.groups.get(&shard) else {
                    return Response::Done(Err(no_such_shard(shard)));
                };
                if !Self::is_member_message(group, &rpc.vote) {
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
            Request::Vote { shard, rpc } => {
                let Some(group) = self.groups.get(&shard) else {
                    return Response::Done(Err(no_such_shard(shard)));
                };
                if !Self::is_member_message(group, &rpc.vote) {
                    return Response::Vote(Err(Self::stranger(&rpc.vote)));
                }
                Response::Vote(group.raft.vote(rpc).await)
            }
            Request::Snapshot { shard, rpc } => {
                let Some(group) = self.groups.get(&shard) else {
                    return Response::Done(Err(no_such_shard(shard)));
                };
                if !Self::is_member_message(group, &rpc.vote) {
                    let e = openraft::error::RaftError::Fatal(openraft::error::Fatal::Panicked);
                    return Response::Snapshot(Err(e));
                }
                Response::Snapshot(group.raft.install_snapshot(rpc).await)
            }
            Request::AllocateId => match self.to_leader(self.first(), Request::AllocateId).await {
                Some(Response::Done(Err(e))) => Response::Allocated(Err(e)),
                Some(r) => r,
                None => Response::Allocated(Ok((
                    self.allocate_id(),
                    self.groups.keys().copied().collect(),
                ))),
            },
            Request::AddNode { shard, id, node } => {
                let Some(group) = self.groups.get(&shard) else {
                    return Response::Done(Err(no_such_shard(shard)));
                };
                match self
                    .to_leader(
                        group,
                        Request::AddNode {
                            shard,
                            id,
                            node: node.clone(),
                        },
                    )
                    .await
                {
                    Some(r) => r,
                    None => Response::Done(wire(self.add_node(group, id, node).await)),
                }
            }
            Request::Exec {
                txn: Some(txn),
                stmt,
                ..
            } => match self.txn(txn) {
                None => Response::Rows(Err(WireError::Sql {
                    code: crate::error::sqlstate::IDLE_IN_TRANSACTION_TIMEOUT.into(),
                    message: "the transaction no longer exists on the leader; roll back and retry"
                        .into(),
                })),
                Some(t) => {
                    let guard = t.lock().await;
                    match guard.as_ref() {
                        Some(t) => Response::Rows(wire(t.exec(stmt.into()).await.map(Into::into))),
                        None => Response::Rows(Err(WireError::Retry(
                            "the transaction has ended".into(),
                        ))),
                    }
                }
            },
            Request::Exec {
                shard, stmt, read, ..
            } => {
                let Some(group) = self.groups.get(&shard) else {
                    return Response::Rows(Err(no_such_shard(shard)));
                };
                let result = if read {
                    group.read(stmt.into(), ReadConsistency::Linearizable).await
                } else {
                    group.writer.execute(stmt.into()).await
                };
                Response::Rows(wire(result.map(Into::into)))
            }
            Request::Begin { shard } => {
                let Some(group) = self.groups.get(&shard) else {
                    return Response::Txn(Err(no_such_shard(shard)));
                };
                match group.writer.begin().await {
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
