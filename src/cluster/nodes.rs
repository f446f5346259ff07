//! Node lifecycle, from any node: decommission (move every replica and the meta vote away,
//! then mark the node decommissioned), recommission (undo that before it finishes), remove
//! (a dead node: the same, without waiting for `--dead-after`), and what every node says of
//! itself (`NodeStatus`, gathered for `GET /v1/nodes` and `GET /v1/events`).
//!
//! The state change is one conditional write to the meta group; the placement driver on the
//! meta leader does the moving and records the end.

use super::{liveness, placement, Cluster, NodeStatus};
use crate::catalog::{meta, NodeRecord, NodeState};
use crate::error::{sqlstate, Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::replication::transport::{Request, Response};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Decommission,
    Recommission,
    /// Decommission a node that is not alive.
    Remove,
}

/// How long `/v1/nodes` waits for each node's own status.
const STATUS_WAIT: Duration = Duration::from_secs(1);
/// How long a node's timeline may take to come: up to 15 minutes of seconds, and the
/// dashboard asks every node at once.
const TIMELINE_WAIT: Duration = Duration::from_secs(5);
/// Statuses gathered this recently are answered again instead of asking every node anew.
const STATUSES_FRESH: Duration = Duration::from_millis(500);

/// Every node with its status, as gathered at one moment.
pub(super) type Statuses = Arc<Vec<(NodeRecord, Option<NodeStatus>)>>;

fn refused(message: String) -> Error {
    Error::sql(sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, message)
}

/// Parse `n3` or `3`.
pub fn parse_node(text: &str) -> Result<NodeId> {
    text.strip_prefix('n')
        .unwrap_or(text)
        .parse::<u64>()
        .map(NodeId)
        .map_err(|_| {
            Error::sql(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("{text:?} is not a node id (n1, n2, ...)"),
            )
        })
}

impl Cluster {
    /// Start, undo or force a node's decommission. Refused at once, naming the shards, if
    /// the rest of the cluster cannot hold their replication factor.
    pub async fn change_node_state(&self, id: NodeId, op: Lifecycle) -> Result<NodeRecord> {
        self.sync(ShardId::META).await?;
        let catalog = self.catalog();
        let Some(node) = catalog.node(id).cloned() else {
            return Err(Error::sql(
                sqlstate::UNDEFINED_OBJECT,
                format!("no node {id} in this cluster"),
            ));
        };
        let (from, to) = match (op, node.state) {
            (Lifecycle::Recommission, NodeState::Active) => return Ok(node),
            (Lifecycle::Recommission, NodeState::Decommissioning) => {
                (NodeState::Decommissioning, NodeState::Active)
            }
            (_, NodeState::Decommissioned) => {
                return Err(refused(format!(
                    "node {id} is decommissioned; it cannot come back under its id (start a \
                     process with an empty data dir to add a new node)"
                )))
            }
            (_, NodeState::Decommissioning) => return Ok(node),
            (Lifecycle::Decommission | Lifecycle::Remove, NodeState::Active) => {
                (NodeState::Active, NodeState::Decommissioning)
            }
        };
        if op == Lifecycle::Remove && self.liveness.of(id).0 == liveness::Live::Alive {
            return Err(refused(format!(
                "node {id} is alive; `remove` is for a dead node (decommission it instead)"
            )));
        }
        if to == NodeState::Decommissioning {
            let stuck = placement::stuck_without(&catalog, id);
            if !stuck.is_empty() {
                let shards: Vec<String> =
                    stuck.iter().map(|(s, why)| format!("{s}: {why}")).collect();
                return Err(refused(format!(
                    "cannot decommission {id}: {} shard(s) would be left without enough \
                     replicas ({}); add nodes first",
                    stuck.len(),
                    shards.join("; ")
                )));
            }
            if catalog.nodes.values().filter(|n| n.is_active()).count() <= 1 {
                return Err(refused(format!(
                    "cannot decommission {id}: it is the only node"
                )));
            }
        }
        let mut changed = node.clone();
        changed.state = to;
        changed.since_ms = liveness::now_ms();
        let rows = self
            .write(
                ShardId::META,
                meta::put_node_if_state(&changed, from.as_str())?,
            )
            .await?;
        if rows.changes == 0 {
            return Err(Error::Retry(format!(
                "node {id} changed state meanwhile; look again"
            )));
        }
        let line = match to {
            NodeState::Active => format!("node {id}: recommissioned"),
            _ => format!("node {id}: decommissioning"),
        };
        tracing::info!("{line}");
        self.journal.record("node", line);
        Ok(changed)
    }

    /// Every node's own status (None for a node that did not answer within a second).
    /// Shared by the callers of one moment: a dashboard asks `/v1/nodes` and `/v1/shards`
    /// together every second, and each tab more; without this every one of them would ask
    /// every node (and on a busy cluster the answers would come slower than the asks).
    pub async fn node_statuses(&self) -> Vec<(NodeRecord, Option<NodeStatus>)> {
        let mut last = self.statuses.lock().await;
        if let Some((at, statuses)) = last.as_ref() {
            if at.elapsed() < STATUSES_FRESH {
                return statuses.as_ref().clone();
            }
        }
        let statuses = Arc::new(self.gather_statuses().await);
        *last = Some((std::time::Instant::now(), statuses.clone()));
        drop(last);
        statuses.as_ref().clone()
    }

    async fn gather_statuses(&self) -> Vec<(NodeRecord, Option<NodeStatus>)> {
        let catalog = self.catalog();
        let asks = catalog.nodes.values().map(|n| async move {
            if n.id == self.node {
                return (n.clone(), Some(self.status()));
            }
            if n.state == NodeState::Decommissioned {
                return (n.clone(), None);
            }
            let status = match self
                .client
                .call(&n.cluster_addr, Request::Status, STATUS_WAIT)
                .await
            {
                Ok(Response::Status(s)) => Some(*s),
                _ => None,
            };
            (n.clone(), status)
        });
        let statuses = futures::future::join_all(asks).await;
        let mut seen = self.events_seen.lock().expect("events lock");
        for (record, status) in &statuses {
            if let Some(s) = status {
                seen.insert(record.id, s.events.clone());
            }
        }
        drop(seen);
        statuses
    }

    /// The seconds `node` kept for the charts that ended after `since_ms`.
    pub async fn node_timeline(
        &self,
        node: NodeId,
        since_ms: u64,
    ) -> Result<Vec<crate::metrics::timeline::Second>> {
        if node == self.node {
            return Ok(crate::metrics::timeline::since(since_ms));
        }
        let catalog = self.catalog();
        let record = catalog
            .nodes
            .get(&node)
            .ok_or_else(|| Error::sql(sqlstate::UNDEFINED_OBJECT, format!("no node {node}")))?;
        match self
            .client
            .call(
                &record.cluster_addr,
                Request::Timeline { since_ms },
                TIMELINE_WAIT,
            )
            .await
            .map_err(|e| Error::Unavailable(format!("node {node} did not answer: {e}")))?
        {
            Response::Timeline(seconds) => Ok(seconds),
            other => Err(Error::internal(format!(
                "node {node} answered a timeline request with {other:?}"
            ))),
        }
    }

    /// Count the rows and bytes of the tables in the shards led here, every
    /// `TABLE_SIZES_EVERY`, for `/v1/tables` (through `NodeStatus`); until the cluster is
    /// dropped.
    pub async fn refresh_table_sizes(cluster: std::sync::Weak<Cluster>) {
        loop {
            let Some(this) = cluster.upgrade() else {
                return;
            };
            let mut sizes = std::collections::HashMap::new();
            for group in this.groups() {
                if group.shard.is_meta() || group.leader().0 != Some(this.node) {
                    continue;
                }
                match group.replica.table_sizes().await {
                    Ok(tables) => {
                        sizes.insert(group.shard, tables);
                    }
                    Err(e) => {
                        tracing::debug!(shard = %group.shard, error = %e, "counting table sizes")
                    }
                }
            }
            *this.table_sizes.lock().expect("table sizes lock") = sizes;
            drop(this);
            tokio::time::sleep(crate::limits::TABLE_SIZES_EVERY).await;
        }
    }

    /// Each node's events: as it reports them now, or — for a node that did not answer —
    /// as it last reported them to this node (`true`: not fresh). Every gathering of the
    /// nodes' statuses (`/v1/nodes`, which the dashboard asks every second) keeps them.
    pub fn events_by_node(
        &self,
        statuses: &[(NodeRecord, Option<NodeStatus>)],
    ) -> Vec<(NodeId, Vec<super::journal::Event>, bool)> {
        let seen = self.events_seen.lock().expect("events lock");
        statuses
            .iter()
            .map(|(record, status)| match status {
                Some(s) => (record.id, s.events.clone(), false),
                None => (
                    record.id,
                    seen.get(&record.id).cloned().unwrap_or_default(),
                    true,
                ),
            })
            .collect()
    }
}
