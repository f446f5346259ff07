//! Replica consistency checks: the shard's leader proposes `Op::Check`, every replica
//! takes a checksum of its rows when it applies that entry (so all at the same log index),
//! and the checker compares them. A replica that disagrees with the majority (the leader's
//! on a tie) is divergent: logged at ERROR, counted in `/metrics`, shown in `/health`, and
//! replaced — taken out of the group and deleted, then placed again as a new copy caught up
//! from the leader.
//!
//! Checks run on demand (`POST /v1/shards/{id}/check`) and, on the meta leader, over every
//! shard in turn every `CONSISTENCY_CHECK_EVERY`, one shard per `CONSISTENCY_CHECK_PACE`.

use super::Cluster;
use crate::catalog::meta;
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::limits;
use crate::replication::transport::{Request, Response};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one check found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    pub shard: String,
    /// The log index every replica took its checksum at.
    pub index: u64,
    /// Each replica's checksum (hex), None for one that did not answer in time.
    pub replicas: BTreeMap<String, Option<String>>,
    pub divergent: Vec<String>,
    /// Replicas being replaced because of this check.
    pub repairing: Vec<String>,
}

impl Cluster {
    /// Check `shard`'s replicas against each other now; replace divergent ones.
    pub async fn check_shard(self: &Arc<Self>, shard: ShardId) -> Result<CheckReport> {
        let record = self.catalog().shard(shard).cloned().ok_or_else(|| {
            Error::sql(
                crate::error::sqlstate::UNDEFINED_OBJECT,
                format!("no shard {shard}"),
            )
        })?;
        let id = rand::random::<u64>() >> 1;
        self.route(
            shard,
            |g| async move { g.writer.check(id).await },
            |addr| async move {
                match self.call(&addr, Request::CheckShard { shard, id }).await? {
                    Response::Done(r) => r.map_err(Into::into),
                    _ => Err(Error::internal("unexpected answer to CheckShard")),
                }
            },
        )
        .await?;
        let leader = self.known_leader(shard);
        // Each replica's result, once it has applied the check and read its rows: a
        // replica that has not applied it gets `CONSISTENCY_CHECK_WAIT`, one still reading
        // (at `--check-rate`) up to `CONSISTENCY_CHECK_RUN_MAX`.
        let asks = record.replicas.iter().map(|n| async move {
            let started = Instant::now();
            let mut deadline = started + limits::CONSISTENCY_CHECK_WAIT;
            loop {
                let found = if *n == self.node {
                    match self.group(shard) {
                        Some(g) => g.replica.check_result(id).await.ok().flatten(),
                        None => None,
                    }
                } else {
                    match self.addr_of(*n) {
                        Some(addr) => match self
                            .client
                            .call(
                                &addr,
                                Request::CheckResult { shard, id },
                                Duration::from_secs(2),
                            )
                            .await
                        {
                            Ok(Response::Check(Ok(found))) => found,
                            _ => None,
                        },
                        None => None,
                    }
                };
                let reading = match found {
                    Some((index, Some(sum))) => return (*n, Some((index, sum))),
                    Some((_, None)) => true,
                    None => false,
                };
                if reading {
                    deadline = started + limits::CONSISTENCY_CHECK_RUN_MAX;
                }
                if Instant::now() > deadline {
                    return (*n, None);
                }
                let pause = if started.elapsed() < limits::CONSISTENCY_CHECK_WAIT {
                    Duration::from_millis(100)
                } else {
                    Duration::from_secs(1)
                };
                tokio::time::sleep(pause).await;
            }
        });
        let results: Vec<(NodeId, Option<(u64, u64)>)> = futures::future::join_all(asks).await;
        // The majority's checksum; on a tie, the leader's.
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for (_, r) in &results {
            if let Some((_, sum)) = r {
                *votes.entry(*sum).or_default() += 1;
            }
        }
        let leader_sum = results
            .iter()
            .find(|(n, _)| Some(*n) == leader)
            .and_then(|(_, r)| r.map(|(_, s)| s));
        let most = votes.values().copied().max().unwrap_or(0);
        let truth = votes
            .iter()
            .filter(|(_, c)| **c == most)
            .map(|(s, _)| *s)
            .find(|s| Some(*s) == leader_sum)
            .or_else(|| votes.iter().find(|(_, c)| **c == most).map(|(s, _)| *s));
        let divergent: Vec<NodeId> = results
            .iter()
            .filter(|(_, r)| r.is_some_and(|(_, s)| Some(s) != truth))
            .map(|(n, _)| *n)
            .collect();
        let index = results
            .iter()
            .find_map(|(_, r)| r.map(|(i, _)| i))
            .unwrap_or(0);
        let mut report = CheckReport {
            shard: shard.to_string(),
            index,
            replicas: results
                .iter()
                .map(|(n, r)| (n.to_string(), r.map(|(_, s)| format!("{s:016x}"))))
                .collect(),
            divergent: divergent.iter().map(|n| n.to_string()).collect(),
            repairing: Vec::new(),
        };
        if divergent.is_empty() {
            self.divergent.lock().expect("lock").remove(&shard);
            return Ok(report);
        }
        let line = format!(
            "shard {shard}: replica(s) {} diverge from the majority at log index {index}: {:?}",
            report.divergent.join(", "),
            report.replicas
        );
        tracing::error!("{line}");
        self.journal.record("divergence", line);
        crate::metrics::divergence_found(divergent.len() as u64);
        self.divergent
            .lock()
            .expect("lock")
            .insert(shard, report.divergent.clone());
        // Replace them, one at a time, while a majority agrees.
        if record.replicas.len() - divergent.len() > record.replicas.len() / 2 {
            for node in divergent {
                match self.replace_divergent(shard, node).await {
                    Ok(()) => report.repairing.push(node.to_string()),
                    Err(e) => {
                        tracing::warn!(%shard, %node, error = %e, "replacing a divergent replica")
                    }
                }
            }
        }
        Ok(report)
    }

    /// Take `node`'s copy of `shard` out of the group and the catalog (it deletes it); the
    /// placement driver then places the shard again — on the same node if no other has
    /// room — as a new copy caught up from the leader.
    async fn replace_divergent(&self, shard: ShardId, node: NodeId) -> Result<()> {
        self.remove_replica(shard, node).await?;
        let record = self
            .catalog()
            .shard(shard)
            .cloned()
            .ok_or_else(|| Error::internal(format!("{shard} vanished")))?;
        let shrunk = record.take_off(node);
        self.write(
            ShardId::META,
            meta::put_shard_if(&shrunk, &record.replicas)?,
        )
        .await?;
        let line =
            format!("shard {shard}: divergent replica on {node} removed; it will be placed again");
        tracing::warn!("{line}");
        self.journal.record("move", line);
        Ok(())
    }
}

/// On the meta leader: every shard checked in turn, one per `CONSISTENCY_CHECK_PACE`, a
/// round every `CONSISTENCY_CHECK_EVERY`.
pub(super) async fn scheduled_checks(cluster: Arc<Cluster>) {
    loop {
        tokio::time::sleep(limits::CONSISTENCY_CHECK_EVERY).await;
        if !cluster.leads_meta() {
            continue;
        }
        let shards: Vec<ShardId> = cluster.catalog().shards.keys().copied().collect();
        for shard in shards {
            if !cluster.leads_meta() {
                break;
            }
            match cluster.check_shard(shard).await {
                Ok(r) if r.divergent.is_empty() => {
                    tracing::debug!(%shard, index = r.index, "replicas agree")
                }
                Ok(_) => {}
                Err(e) => tracing::info!(%shard, error = %e, "consistency check not done"),
            }
            tokio::time::sleep(limits::CONSISTENCY_CHECK_PACE).await;
        }
    }
}
