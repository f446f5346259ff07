//! The cluster as one node sees it: the meta group (which keeps the catalog), the data shard
//! groups this node holds a replica of, routing to any shard's leader, the heartbeat ticker,
//! and — on the meta leader — the placement driver.
//!
//! Invariants:
//! - This node runs a group for exactly the shards whose catalog `replicas` name it (plus the
//!   meta group, on every node). Groups are started when the catalog says so; a group is
//!   initialised only by the nodes of its `initial` membership, all with that membership.
//! - The catalog changes only through the meta group; [`Cluster::catalog`] is the catalog as
//!   of this node's applied meta index. [`Cluster::sync`] catches it up with the leader.
//! - Membership of a data group follows the catalog: the placement driver adds the replicas
//!   the catalog names (learner, catch up, voter).
//!
//! A new shard, traced: `CREATE TABLE` needs a colocation group → `sql::ddl` writes its shards
//! (replicas from [`placement`]) to the meta group → every node's meta replica applies it and
//! publishes a new catalog → [`Cluster::reconcile`] on each replica node starts the group →
//! the preferred leader initialises it (the others too, after a delay, if it did not) → the
//! group elects a leader and the DDL job runs on it.

pub mod feed;
pub mod jobs;
pub mod meta_txn;
pub mod placement;
pub mod router;

use crate::catalog::{meta, Catalog, NodeRecord, META_SCHEMA};
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::limits;
use crate::replication::group::ShardGroup;
use crate::replication::log_store::LogDb;
use crate::replication::transport::Client;
use crate::replication::NodeInfo;
use crate::storage::replica::ReplicaOptions;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use meta_txn::MetaTxn;
pub use router::Lease;

/// Where and how this node runs its groups.
pub struct ClusterConfig {
    pub node: NodeId,
    pub info: NodeInfo,
    /// `<data dir>/shards`: one directory per replica.
    pub dir: PathBuf,
    pub logs: LogDb,
    pub raft: Arc<openraft::Config>,
    pub client: Arc<Client>,
    /// How much of their change events data shards keep.
    pub events: crate::storage::events::Window,
}

pub struct Cluster {
    pub node: NodeId,
    pub info: NodeInfo,
    pub client: Arc<Client>,
    pub meta: Arc<ShardGroup>,
    dir: PathBuf,
    logs: LogDb,
    raft: Arc<openraft::Config>,
    events: crate::storage::events::Window,
    /// Data groups with a replica here.
    groups: RwLock<BTreeMap<ShardId, Arc<ShardGroup>>>,
    catalog: watch::Receiver<Arc<Catalog>>,
    /// Last known leader per shard (routing cache, corrected by NotLeader hints).
    leaders: Mutex<HashMap<ShardId, NodeId>>,
    /// One reconciliation at a time.
    reconciling: tokio::sync::Mutex<()>,
    /// One membership change at a time per node (openraft refuses overlapping ones).
    pub(crate) changing: tokio::sync::Mutex<()>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Two-phase commit decisions (by coordinator shard) whose every part is resolved,
    /// waiting to be deleted in one batch (`Cluster::decision_resolved`).
    resolved: Mutex<ResolvedDecisions>,
}

#[derive(Default)]
struct ResolvedDecisions {
    pending: HashMap<ShardId, Vec<u64>>,
    count: usize,
    /// A flush is scheduled (for `FORGET_AFTER` after the first record queued).
    scheduled: bool,
}

/// Lets a shard's writer learn decisions kept by other shards (two-phase commit recovery).
struct ClusterDecider(std::sync::Weak<Cluster>);

#[async_trait::async_trait]
impl crate::replication::writer::Decider for ClusterDecider {
    async fn decide(&self, coordinator: ShardId, txn: u64) -> Result<bool> {
        let cluster = self
            .0
            .upgrade()
            .ok_or_else(|| Error::Unavailable("node stopping".into()))?;
        cluster.decide(coordinator, txn, false).await
    }
}

impl From<&NodeRecord> for NodeInfo {
    fn from(n: &NodeRecord) -> Self {
        NodeInfo {
            cluster_addr: n.cluster_addr.clone(),
            pg_addr: n.pg_addr.clone(),
            http_addr: n.http_addr.clone(),
            zone: n.zone.clone(),
        }
    }
}

impl Cluster {
    /// Open the meta replica and the data replicas the catalog places here. With
    /// `bootstrap`, a pristine meta group is initialised with this node as its only voter.
    pub async fn open(config: ClusterConfig, bootstrap: bool) -> Result<Arc<Cluster>> {
        let (tx, catalog) = watch::channel(Arc::new(Catalog::default()));
        let on_change = Arc::new(move |conn: &rusqlite::Connection| {
            match Catalog::load(conn) {
                Ok(c) => {
                    tx.send_replace(Arc::new(c));
                }
                // A catalog that does not load means a bug, corruption, or a definition
                // from a newer version.
                // The last good one is kept, marked stale: statements are refused (not
                // planned on definitions that no longer hold) until a later change loads.
                Err(e) => {
                    let message = e.to_string();
                    let mut last = (**tx.borrow()).clone();
                    if last.load_error.as_deref() != Some(&message) {
                        tracing::error!(error = %e, "cannot load the catalog; serving no statements until it loads");
                    }
                    last.load_error = Some(message);
                    tx.send_replace(Arc::new(last));
                }
            }
        });
        let options = ReplicaOptions {
            schema: META_SCHEMA,
            on_change: Some(on_change),
            events: None,
        };
        let meta = Arc::new(
            ShardGroup::start(
                config.node,
                ShardId::META,
                &config.dir,
                &config.logs,
                config.raft.clone(),
                config.client.clone(),
                &options,
            )
            .await?,
        );
        if bootstrap {
            meta.initialize(BTreeMap::from([(config.node.0, config.info.clone())]))
                .await?;
        }
        let cluster = Arc::new(Cluster {
            node: config.node,
            info: config.info,
            client: config.client,
            meta,
            dir: config.dir,
            logs: config.logs,
            raft: config.raft,
            events: config.events,
            groups: RwLock::new(BTreeMap::new()),
            catalog,
            leaders: Mutex::new(HashMap::new()),
            reconciling: tokio::sync::Mutex::new(()),
            changing: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
            resolved: Mutex::new(ResolvedDecisions::default()),
        });
        cluster
            .meta
            .writer
            .set_decider(Arc::new(ClusterDecider(Arc::downgrade(&cluster))));
        cluster.reconcile().await?;
        let tasks = vec![
            tokio::spawn(watch_catalog(cluster.clone())),
            tokio::spawn(heartbeats(cluster.clone())),
            tokio::spawn(placement_driver(cluster.clone())),
        ];
        cluster.tasks.lock().expect("tasks lock").extend(tasks);
        Ok(cluster)
    }

    /// The catalog as of this node's applied meta index.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    /// A receiver that wakes when the catalog changes.
    pub fn catalog_watch(&self) -> watch::Receiver<Arc<Catalog>> {
        self.catalog.clone()
    }

    /// This node's replica of `shard`, if it holds one.
    pub fn group(&self, shard: ShardId) -> Option<Arc<ShardGroup>> {
        if shard.is_meta() {
            return Some(self.meta.clone());
        }
        self.groups
            .read()
            .expect("groups lock poisoned")
            .get(&shard)
            .cloned()
    }

    /// Does this node lead the meta group (as far as it knows)? Cluster-wide chores run
    /// there, so nodes do not repeat each other's work.
    pub fn leads_meta(&self) -> bool {
        self.meta.leader().0 == Some(self.node)
    }

    /// Every group with a replica here, the meta group first.
    pub fn groups(&self) -> Vec<Arc<ShardGroup>> {
        let mut all = vec![self.meta.clone()];
        all.extend(
            self.groups
                .read()
                .expect("groups lock poisoned")
                .values()
                .cloned(),
        );
        all
    }

    /// Start the groups the catalog places here and initialise new ones.
    /// Returns whether a retired shard's replica here is still waiting to be removed.
    async fn reconcile(self: &Arc<Self>) -> Result<bool> {
        let _one = self.reconciling.lock().await;
        let catalog = self.catalog();
        let mut waiting = false;
        for shard in &catalog.retired {
            match self.remove_retired(*shard).await {
                Ok(removed) => waiting |= !removed,
                Err(e) => {
                    tracing::warn!(%shard, error = %e, "removing a retired replica");
                    waiting = true;
                }
            }
        }
        for shard in catalog.shards.values() {
            if !shard.replicas.contains(&self.node) || self.group(shard.id).is_some() {
                continue;
            }
            let group = Arc::new(
                ShardGroup::start(
                    self.node,
                    shard.id,
                    &self.dir,
                    &self.logs,
                    self.raft.clone(),
                    self.client.clone(),
                    &ReplicaOptions {
                        events: Some(self.events),
                        ..Default::default()
                    },
                )
                .await?,
            );
            group
                .writer
                .set_decider(Arc::new(ClusterDecider(Arc::downgrade(self))));
            tracing::info!(shard = %shard.id, replicas = ?shard.replicas, "replica started");
            self.groups
                .write()
                .expect("groups lock poisoned")
                .insert(shard.id, group.clone());
            if !shard.initial.contains(&self.node) || group.is_initialized().await {
                continue;
            }
            let members: Option<BTreeMap<u64, NodeInfo>> = shard
                .initial
                .iter()
                .map(|n| catalog.node(*n).map(|r| (n.0, NodeInfo::from(r))))
                .collect();
            let Some(members) = members else {
                tracing::warn!(shard = %shard.id, "initial members unknown; not initialising yet");
                continue;
            };
            if shard.initial.first() == Some(&self.node) {
                group.initialize(members).await?;
            } else {
                // The preferred leader initialises first and so campaigns first; the others
                // initialise themselves only if they have not heard from it.
                let wait = Duration::from_millis(self.raft.election_timeout_max * 10);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    if let Err(e) = group.initialize(members).await {
                        tracing::warn!(shard = %group.shard, error = %e, "initialising");
                    }
                });
            }
        }
        Ok(waiting)
    }

    /// Stop and delete this node's replica of retired `shard` (group, files, log), if it
    /// has one; false while two-phase commit records on it may still be asked for.
    async fn remove_retired(&self, shard: ShardId) -> Result<bool> {
        if let Some(group) = self.group(shard) {
            if group.replica.two_phase_records().await? > 0 {
                return Ok(false);
            }
            self.groups
                .write()
                .expect("groups lock poisoned")
                .remove(&shard);
            self.leaders.lock().expect("leaders lock").remove(&shard);
            group.shutdown().await;
            tracing::info!(%shard, "replica removed: the shard was retired with its last table");
        }
        let dir = self.dir.join(shard.to_string());
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::internal(format!("removing {}: {e}", dir.display())))?;
            crate::storage::durable::sync_dir(&self.dir)
                .map_err(|e| Error::internal(format!("syncing {}: {e}", self.dir.display())))?;
            self.logs.remove(shard)?;
        }
        Ok(true)
    }

    /// Stop every group and background task. Acknowledged writes are already in the log.
    pub async fn shutdown(&self) {
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
        for group in self.groups() {
            group.shutdown().await;
        }
    }

    /// Add `id` to `group` as a voter (learner first, until it has caught up). Only on the
    /// group's leader.
    pub async fn add_member(&self, group: &ShardGroup, id: u64, node: NodeInfo) -> Result<()> {
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
        tracing::info!(shard = %group.shard, node = %NodeId(id), addr = %node.cluster_addr, "adding replica");
        // A learner that never catches up (it died, or cannot be reached) must not hold the
        // membership lock forever: every later join through this node would wait behind it.
        tokio::time::timeout(
            limits::LEARNER_CATCH_UP_WAIT,
            raft.add_learner(id, node, true),
        )
        .await
        .map_err(|_| {
            Error::Unavailable(format!(
                "{} did not catch up with {} within {:?}",
                NodeId(id),
                group.shard,
                limits::LEARNER_CATCH_UP_WAIT
            ))
        })?
        .map_err(membership_error)?;
        raft.change_membership(
            openraft::ChangeMembers::AddVoterIds(BTreeSet::from([id])),
            false,
        )
        .await
        .map_err(membership_error)?;
        Ok(())
    }
}

/// A refused membership change: NotLeader (with the leader, if known) or Unavailable.
fn membership_error(
    e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, NodeInfo>>,
) -> Error {
    match e {
        openraft::error::RaftError::APIError(
            openraft::error::ClientWriteError::ForwardToLeader(f),
        ) => Error::NotLeader {
            leader: f.leader_id.map(NodeId),
        },
        other => Error::Unavailable(other.to_string()),
    }
}

async fn watch_catalog(cluster: Arc<Cluster>) {
    let mut rx = cluster.catalog_watch();
    loop {
        let waiting = match cluster.reconcile().await {
            Ok(waiting) => waiting,
            Err(e) => {
                tracing::error!(error = %e, "starting replicas");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // A retired replica still holding two-phase commit records is looked at again
        // after a while even if the catalog does not change.
        let recheck = async {
            if waiting {
                tokio::time::sleep(Duration::from_secs(5)).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            () = recheck => {}
        }
    }
}

/// One ticker for the whole node, over every group it holds (see `run_heartbeats`).
async fn heartbeats(cluster: Arc<Cluster>) {
    let interval = Duration::from_millis(cluster.raft.heartbeat_interval);
    crate::replication::group::run_heartbeats(cluster.node, interval, || {
        cluster.groups().iter().map(|g| g.raft.clone()).collect()
    })
    .await
}

/// On the meta leader: give shards the replicas they lack, make each group's membership
/// follow the catalog, and finish DDL jobs whose coordinator went away.
async fn placement_driver(cluster: Arc<Cluster>) {
    // (shard, node) pairs known to be voters, and work in flight.
    let confirmed: Arc<Mutex<BTreeSet<(ShardId, NodeId)>>> = Arc::default();
    let in_flight: Arc<Mutex<BTreeSet<(ShardId, NodeId)>>> = Arc::default();
    let jobs_running: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let mut jobs_seen: HashMap<u64, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(limits::PLACEMENT_INTERVAL).await;
        if cluster.meta.leader().0 != Some(cluster.node) {
            jobs_seen.clear();
            continue;
        }
        let catalog = cluster.catalog();
        // Replicas wanted but not placed (nodes joined since the shard was created).
        for shard in catalog.shards.values() {
            let missing = placement::missing(&catalog, shard);
            if missing.is_empty() {
                continue;
            }
            let mut grown = shard.clone();
            grown.replicas.extend(missing.iter().copied());
            tracing::info!(shard = %shard.id, added = ?missing, "placing more replicas");
            let write = match meta::put_shard(&grown) {
                Ok(stmt) => cluster.meta.writer.execute(stmt).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = write {
                tracing::warn!(shard = %shard.id, error = %e, "placing replicas");
            }
            // One change per round: the next round sees the new catalog.
            break;
        }
        // Group memberships follow the catalog.
        for shard in catalog.shards.values() {
            for node in &shard.replicas {
                let key = (shard.id, *node);
                if confirmed.lock().expect("lock").contains(&key)
                    || !in_flight.lock().expect("lock").insert(key)
                {
                    continue;
                }
                let Some(record) = catalog.node(*node) else {
                    in_flight.lock().expect("lock").remove(&key);
                    continue;
                };
                let info = NodeInfo::from(record);
                let (c, confirmed, in_flight) =
                    (cluster.clone(), confirmed.clone(), in_flight.clone());
                tokio::spawn(async move {
                    match c.add_replica(key.0, key.1, info).await {
                        Ok(()) => {
                            confirmed.lock().expect("lock").insert(key);
                        }
                        Err(e) => {
                            tracing::debug!(shard = %key.0, node = %key.1, error = %e, "membership change pending")
                        }
                    }
                    in_flight.lock().expect("lock").remove(&key);
                });
            }
        }
        // DDL jobs left behind by a coordinator that failed or died.
        jobs_seen.retain(|id, _| catalog.jobs.contains_key(id));
        for job in catalog.jobs.values() {
            let seen = *jobs_seen.entry(job.id).or_insert_with(Instant::now);
            if seen.elapsed() < limits::DDL_JOB_ADOPT_AFTER
                || !jobs_running.lock().expect("lock").insert(job.id)
            {
                continue;
            }
            let (c, job, running) = (cluster.clone(), job.clone(), jobs_running.clone());
            tokio::spawn(async move {
                tracing::info!(job = job.id, table = %job.table, "finishing a DDL job");
                if let Err(e) = c.run_job(&job).await {
                    tracing::warn!(job = job.id, error = %e, "DDL job not finished yet");
                }
                running.lock().expect("lock").remove(&job.id);
            });
        }
    }
}
