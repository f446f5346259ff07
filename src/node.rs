//! A node: one `cairn start` process. Opens its data dir, starts its shard group(s), and
//! serves pgwire and HTTP until shut down.
//!
//! Data dir layout: `node.json` (the node's identity), `raft/` (the fjall log of every
//! group), `shards/s<N>/replica.db` (SQLite replica) and `shards/s<N>/snapshots/`.

use crate::api;
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::replication::group::{raft_config, ShardGroup};
use crate::replication::log_store::LogDb;
use crate::sql::Engine;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub pg_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub election_timeout_ms_min: u64,
    pub heartbeat_interval_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    node_id: u64,
}

pub struct Node {
    pub id: NodeId,
    pub pg_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub engine: Arc<Engine>,
    servers: Vec<JoinHandle<()>>,
}

/// The node's identity, created on first start and kept in the data dir.
fn identity(config: &NodeConfig) -> Result<NodeId> {
    let path = config.data_dir.join("node.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let id: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
            Ok(NodeId(id.node_id))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A lone node is n1; joining a cluster (the replication work) assigns ids.
            let id = NodeId(1);
            let tmp = path.with_extension("tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec(&Identity { node_id: id.0 }).map_err(Error::internal)?,
            )
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
            Ok(id)
        }
        Err(e) => Err(Error::internal(format!("{}: {e}", path.display()))),
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen for {what} on {addr}: {e}")))
}

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Node> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| Error::internal(format!("creating {}: {e}", config.data_dir.display())))?;
        let id = identity(&config)?;
        let pg = bind(config.pg_addr, "pgwire").await?;
        let http = bind(config.http_addr, "http").await?;
        let pg_addr = pg.local_addr().map_err(Error::internal)?;
        let http_addr = http.local_addr().map_err(Error::internal)?;
        let logs = LogDb::open(&config.data_dir.join("raft"))?;
        let raft = raft_config(config.election_timeout_ms_min, config.heartbeat_interval_ms)?;
        let group = ShardGroup::start(
            id,
            ShardId(1),
            &config.data_dir.join("shards"),
            &logs,
            raft,
            &pg_addr.to_string(),
        )
        .await?;
        if crate::replication::group::wait_for_leader(&group.raft, crate::limits::LEADER_WAIT)
            .await
            .is_none()
        {
            tracing::warn!(shard = %group.shard, "no leader yet; serving anyway, requests will wait for one");
        }
        let engine = Engine::new(Arc::new(group));
        let servers = vec![
            tokio::spawn(api::pgwire::serve(pg, engine.clone())),
            tokio::spawn(api::http::serve(http, engine.clone())),
        ];
        tracing::info!(node = %id, pgwire = %pg_addr, http = %http_addr, "node started");
        Ok(Node {
            id,
            pg_addr,
            http_addr,
            engine,
            servers,
        })
    }

    /// Stop serving and stop the groups. Acknowledged writes are already in the log.
    pub async fn shutdown(self) {
        for s in &self.servers {
            s.abort();
        }
        self.engine.group.shutdown().await;
        tracing::info!(node = %self.id, "node stopped");
    }
}
