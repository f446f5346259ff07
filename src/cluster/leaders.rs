//! Leadership moves. openraft 0.9 has no leadership transfer; a voter that asks for an
//! election (`Trigger::elect`) wins it when its log is as long as the leader's and the
//! leader's own vote is older than the leader lease (the leader then grants the vote and
//! steps down; followers that heard from it recently refuse, so a three-replica group
//! elects at once and a larger one after the lease). `campaign` is that ask, made only by a
//! caught-up voter; the placement driver uses it to balance leaders across nodes
//! (`balance`), and a node shutting down uses it to hand its leaderships over
//! (`hand_over`).

use super::{Cluster, DriverState};
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::limits;
use crate::replication::group::ShardGroup;
use crate::replication::transport::{Request, Response};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Cluster {
    /// Ask for an election of `g`'s group from this node, if it is a voter that heard from
    /// its leader within `CAMPAIGN_FRESH` and has applied what the leader had committed then.
    pub async fn campaign(&self, g: &ShardGroup) -> Result<()> {
        let (leader, voter) = {
            let m = g.raft.metrics();
            let m = m.borrow();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == self.node.0);
            (m.current_leader, voter)
        };
        if leader == Some(self.node.0) {
            return Ok(());
        }
        if !voter {
            return Err(Error::Unavailable(format!(
                "{}: {} is not a voter of it",
                g.shard, self.node
            )));
        }
        if !g.fresh_within(limits::CAMPAIGN_FRESH) {
            return Err(Error::Unavailable(format!(
                "{}: the replica on {} is not caught up with its leader",
                g.shard, self.node
            )));
        }
        g.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Error::Unavailable(format!("{}: {e}", g.shard)))
    }

    /// Ask `node` to campaign for `shard`.
    async fn ask_to_campaign(&self, shard: ShardId, node: NodeId) -> Result<()> {
        let addr = self
            .addr_of(node)
            .ok_or_else(|| Error::Unavailable(format!("no address for {node}")))?;
        match self.call(&addr, Request::Campaign { shard }).await? {
            Response::Done(r) => r.map_err(Into::into),
            other => Err(Error::internal(format!("campaign: unexpected {other:?}"))),
        }
    }

    /// Before stopping: ask a caught-up voter of each group this node leads to take over,
    /// and wait (at most `wait`) until it leads none. Clients' requests were stopped first.
    pub async fn hand_over(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        let led: Vec<Arc<ShardGroup>> = self
            .groups()
            .into_iter()
            .filter(|g| g.leader().0 == Some(self.node))
            .collect();
        for g in &led {
            // The follower whose log matches the leader's furthest.
            let target = {
                let m = g.raft.metrics();
                let m = m.borrow();
                m.replication.as_ref().and_then(|r| {
                    let voters: BTreeSet<u64> =
                        m.membership_config.membership().voter_ids().collect();
                    r.iter()
                        .filter(|(n, _)| **n != self.node.0 && voters.contains(n))
                        .filter(|(n, _)| {
                            self.liveness.of(NodeId(**n)).0 == super::liveness::Live::Alive
                        })
                        .max_by_key(|(_, matched)| matched.map(|l| l.index))
                        .map(|(n, _)| NodeId(*n))
                })
            };
            let Some(target) = target else { continue };
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ask_to_campaign(g.shard, target)).await {
                Ok(Ok(())) => {
                    tracing::info!(shard = %g.shard, to = %target, "handing leadership over")
                }
                Ok(Err(e)) => {
                    tracing::info!(shard = %g.shard, to = %target, error = %e, "could not hand leadership over")
                }
                Err(_) => break,
            }
        }
        while Instant::now() < deadline && led.iter().any(|g| g.leader().0 == Some(self.node)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One leadership move toward balance, on the meta leader, while every active node is
/// alive: if the data shards' leaders on active nodes differ by more than one between the busiest and the idlest node,
/// ask a voter of one of the busiest node's shards on a node leading fewer than it minus
/// one to campaign. A shard moved is left alone for `LEADER_MOVE_COOLDOWN`.
pub(super) async fn balance(
    cluster: &Arc<Cluster>,
    catalog: &crate::catalog::Catalog,
    down: &BTreeSet<NodeId>,
    state: &Arc<DriverState>,
) {
    // While an active node is down, leaders are where elections put them: moving them
    // too only adds aborted commits for clients already riding out the failure.
    if catalog
        .nodes
        .values()
        .any(|n| n.is_active() && down.contains(&n.id))
    {
        return;
    }
    let eligible: BTreeSet<NodeId> = catalog
        .nodes
        .values()
        .filter(|n| n.is_active() && !down.contains(&n.id))
        .map(|n| n.id)
        .collect();
    if eligible.len() < 2 {
        return;
    }
    let statuses = cluster.node_statuses().await;
    let mut leading: BTreeMap<NodeId, Vec<ShardId>> =
        eligible.iter().map(|n| (*n, Vec::new())).collect();
    for (record, status) in &statuses {
        let Some(status) = status else {
            // A node that did not answer: its count is unknown, do nothing this round.
            if eligible.contains(&record.id) {
                return;
            }
            continue;
        };
        if let Some(list) = leading.get_mut(&record.id) {
            list.extend(status.leading.iter().filter(|s| !s.is_meta()));
        }
    }
    let count = |n: &NodeId| leading.get(n).map_or(0, |l| l.len());
    let Some(busiest) = eligible.iter().copied().max_by_key(|n| (count(n), *n)) else {
        return;
    };
    let mut cooling = state.leader_moves.lock().expect("lock");
    cooling.retain(|_, at| at.elapsed() < limits::LEADER_MOVE_COOLDOWN);
    let confirmed = state.confirmed.lock().expect("lock").clone();
    let mut choice = None;
    for shard in &leading[&busiest] {
        if cooling.contains_key(shard) {
            continue;
        }
        let Some(record) = catalog.shard(*shard) else {
            continue;
        };
        let target = record
            .replicas
            .iter()
            .copied()
            .filter(|n| {
                eligible.contains(n)
                    && count(n) + 1 < count(&busiest)
                    && confirmed.contains(&(*shard, *n, record.epoch_of(*n)))
            })
            .min_by_key(|n| (count(n), *n));
        if let Some(t) = target {
            choice = Some((*shard, t));
            break;
        }
    }
    let Some((shard, target)) = choice else {
        return;
    };
    cooling.insert(shard, Instant::now());
    drop(cooling);
    let line = format!(
        "shard {shard}: moving leadership {busiest} → {target} (balance: {} vs {})",
        count(&busiest),
        count(&target)
    );
    let c = cluster.clone();
    tokio::spawn(async move {
        match c.ask_to_campaign(shard, target).await {
            Ok(()) => {
                tracing::info!("{line}");
                c.journal.record("leader", line);
            }
            Err(e) => tracing::debug!(%shard, %target, error = %e, "leadership move not made"),
        }
    });
}
