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

pub mod check;
pub mod feed;
pub mod jobs;
pub mod journal;
mod leaders;
pub mod liveness;
pub mod meta_txn;
pub mod nodes;
pub mod placement;
pub mod router;

use crate::catalog::{meta, Catalog, NodeRecord, NodeState, META_SCHEMA};
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::limits;
use crate::replication::group::ShardGroup;
use crate::replication::log_store::LogDb;
use crate::replication::membership;
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
    /// Gossip's view of the other nodes.
    pub liveness: Arc<liveness::Liveness>,
    pub journal: Arc<journal::Journal>,
    /// How long a node is dead before its replicas are re-created elsewhere.
    pub dead_after: Duration,
    /// Bytes per second a consistency check reads at most on each replica here.
    pub check_rate: u64,
}

pub struct Cluster {
    pub node: NodeId,
    pub info: NodeInfo,
    pub client: Arc<Client>,
    pub meta: Arc<ShardGroup>,
    pub liveness: Arc<liveness::Liveness>,
    pub journal: Arc<journal::Journal>,
    pub dead_after: Duration,
    /// When this process started (Unix ms).
    pub started_ms: u64,
    dir: PathBuf,
    logs: LogDb,
    raft: Arc<openraft::Config>,
    events: crate::storage::events::Window,
    check_rate: u64,
    /// Data groups with a replica here.
    groups: RwLock<BTreeMap<ShardId, Arc<ShardGroup>>>,
    catalog: watch::Receiver<Arc<Catalog>>,
    /// Last known leader per shard (routing cache, corrected by NotLeader hints).
    leaders: Mutex<HashMap<ShardId, NodeId>>,
    /// One reconciliation at a time.
    reconciling: tokio::sync::Mutex<()>,
    /// One membership change at a time per group (openraft refuses overlapping ones);
    /// groups do not wait for each other.
    changing: Mutex<HashMap<ShardId, Arc<tokio::sync::Mutex<()>>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Shards whose last consistency check here found divergent replicas (by node).
    pub divergent: Mutex<BTreeMap<ShardId, Vec<String>>>,
    /// The placement (`Shard::epochs`) each local replica was made for.
    placed: Mutex<HashMap<ShardId, u64>>,
    /// The placement driver's record of stuck moves (while this node runs it).
    stuck: Mutex<std::sync::Weak<DriverState>>,
    /// Two-phase commit decisions (by coordinator shard) whose every part is resolved,
    /// waiting to be deleted in one batch (`Cluster::decision_resolved`).
    resolved: Mutex<ResolvedDecisions>,
    /// Retired shards led here, waiting for their followers to catch up before going (since).
    retiring: Mutex<HashMap<ShardId, std::time::Instant>>,
    /// Rows and bytes of each table in the shards led here, as last counted
    /// (`refresh_table_sizes`): shard → (table, rows, bytes).
    table_sizes: Mutex<HashMap<ShardId, Vec<TableSize>>>,
    /// The events each other node reported when it last answered (`events_by_node`): a node
    /// down keeps its history on the dashboard.
    events_seen: Mutex<HashMap<NodeId, Vec<journal::Event>>>,
    /// The nodes' statuses as last gathered, and when (`node_statuses`): callers within
    /// `STATUSES_FRESH` of a gathering share it, and callers during one wait for it.
    statuses: tokio::sync::Mutex<Option<(std::time::Instant, nodes::Statuses)>>,
}

#[derive(Default)]
struct ResolvedDecisions {
    pending: HashMap<ShardId, Vec<u64>>,
    count: usize,
    /// A flush is scheduled (for `FORGET_AFTER` after the first record queued).
    scheduled: bool,
}

/// What one node says of itself to the others (`GET /v1/nodes`, `GET /v1/events`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub node: u64,
    pub started_ms: u64,
    pub version: String,
    /// Groups this node leads (`meta` included).
    pub leading: Vec<ShardId>,
    /// Groups with a replica here.
    pub replicas: Vec<ShardId>,
    pub events: Vec<journal::Event>,
    /// How this node sees every other: (node, liveness, since in Unix ms).
    pub liveness: Vec<(u64, String, u64)>,
    /// On the meta leader: why replicas of leaving or dead nodes cannot move now, by node.
    pub stuck: Vec<(u64, Vec<String>)>,
    /// CPU seconds this process has used (user + system), and its resident memory.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// Divergent replicas this node's consistency checks found since it started.
    #[serde(default)]
    pub divergent_replicas: u64,
    /// Each replica here.
    pub replicas_here: Vec<ReplicaStatus>,
    /// Rows and bytes of the tables in the shards this node leads, as last counted:
    /// (shard, table, rows, bytes).
    pub table_sizes: Vec<(ShardId, String, u64, u64)>,
}

/// A table's rows and bytes in one shard: (table, rows, bytes).
pub type TableSize = (String, u64, u64);

/// One replica as its node reports it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReplicaStatus {
    pub shard: ShardId,
    pub applied: u64,
    pub learner: bool,
    pub term: u64,
    /// Commit time (Unix µs) of the last entry applied that carried one (0: none yet since
    /// the replica opened).
    pub applied_time_us: u64,
    /// The replica's files on disk.
    pub bytes: u64,
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
            check_rate: Some(config.check_rate),
        };
        let meta = Arc::new(
            ShardGroup::start(
                config.node,
                ShardId::META,
                0,
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
            liveness: config.liveness,
            journal: config.journal,
            dead_after: config.dead_after,
            started_ms: liveness::now_ms(),
            dir: config.dir,
            logs: config.logs,
            raft: config.raft,
            events: config.events,
            check_rate: config.check_rate,
            groups: RwLock::new(BTreeMap::new()),
            catalog,
            leaders: Mutex::new(HashMap::new()),
            reconciling: tokio::sync::Mutex::new(()),
            changing: Mutex::default(),
            tasks: Mutex::new(Vec::new()),
            resolved: Mutex::new(ResolvedDecisions::default()),
            retiring: Mutex::default(),
            table_sizes: Mutex::default(),
            events_seen: Mutex::default(),
            statuses: Default::default(),
            stuck: Mutex::new(std::sync::Weak::new()),
            placed: Mutex::new(HashMap::new()),
            divergent: Mutex::new(BTreeMap::new()),
        });
        cluster
            .meta
            .writer
            .set_decider(Arc::new(ClusterDecider(Arc::downgrade(&cluster))));
        cluster.reconcile().await?;
        let tasks = vec![
            tokio::spawn(watch_catalog(cluster.clone())),
            tokio::spawn(heartbeats(cluster.clone())),
            tokio::spawn(campaign_on_silence(cluster.clone())),
            tokio::spawn(placement_driver(cluster.clone())),
            tokio::spawn(track_liveness(cluster.clone())),
            tokio::spawn(check::scheduled_checks(cluster.clone())),
            tokio::spawn(journal_elections(cluster.clone())),
        ];
        cluster.tasks.lock().expect("tasks lock").extend(tasks);
        Ok(cluster)
    }

    /// The catalog as of this node's applied meta index.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    /// Whether this node may serve statements: its catalog loads and it was not
    /// decommissioned (57P03 otherwise, so clients go to another node).
    pub fn serving(&self) -> Result<()> {
        let catalog = self.catalog();
        catalog.usable()?;
        if catalog
            .node(self.node)
            .is_some_and(|n| n.state == NodeState::Decommissioned)
        {
            return Err(Error::sql(
                crate::error::sqlstate::CANNOT_CONNECT_NOW,
                format!(
                    "node {} was decommissioned; connect to another node of the cluster",
                    self.node
                ),
            ));
        }
        Ok(())
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
            if !shard.replicas.contains(&self.node) {
                if shard.removed.contains(&self.node) {
                    // Moved away: every copy made for a placement this catalog knows is out
                    // of the group. (A later placement here, which this catalog may not know
                    // yet, is kept.)
                    if let Err(e) = self.delete_lives(shard.id, shard.epochs_below()).await {
                        tracing::warn!(shard = %shard.id, error = %e, "removing a moved replica");
                    }
                }
                continue;
            }
            let epoch = shard.epoch_of(self.node);
            let running = self
                .placed
                .lock()
                .expect("placed lock")
                .get(&shard.id)
                .copied();
            match running {
                Some(e) if e >= epoch => continue,
                _ => {}
            }
            // Copies of earlier placements here are out of the group: delete them first.
            if let Err(e) = self.delete_lives(shard.id, epoch).await {
                tracing::warn!(shard = %shard.id, error = %e, "removing a replica of an older placement");
                continue;
            }
            let group = Arc::new(
                ShardGroup::start(
                    self.node,
                    shard.id,
                    epoch,
                    &self.dir,
                    &self.logs,
                    self.raft.clone(),
                    self.client.clone(),
                    &ReplicaOptions {
                        events: Some(self.events),
                        check_rate: Some(self.check_rate),
                        ..Default::default()
                    },
                )
                .await?,
            );
            group
                .writer
                .set_decider(Arc::new(ClusterDecider(Arc::downgrade(self))));
            self.placed
                .lock()
                .expect("placed lock")
                .insert(shard.id, epoch);
            tracing::info!(shard = %shard.id, replicas = ?shard.replicas, epoch, "replica started");
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

    /// Stop and delete this node's copies of `shard` made for placements below `below`
    /// (the running group too, if it is one of them): the placement driver takes a replica
    /// out of the group's Raft membership before the catalog says so, so nothing counts on
    /// these copies. `u64::MAX` deletes every copy (a retired shard).
    async fn delete_lives(&self, shard: ShardId, below: u64) -> Result<()> {
        let running = self
            .placed
            .lock()
            .expect("placed lock")
            .get(&shard)
            .copied();
        if running.is_some_and(|e| e < below) {
            let group = self
                .groups
                .write()
                .expect("groups lock poisoned")
                .remove(&shard);
            self.leaders.lock().expect("leaders lock").remove(&shard);
            self.placed.lock().expect("placed lock").remove(&shard);
            if let Some(group) = group {
                group.shutdown().await;
                let line = format!(
                    "shard {shard}: replica on {} deleted (moved away)",
                    self.node
                );
                tracing::info!("{line}");
                self.journal.record("replica", line);
            }
        }
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::internal(format!("{}: {e}", self.dir.display()))),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some((id, epoch)) = name.to_str().and_then(crate::ids::parse_replica_name) else {
                continue;
            };
            if id != shard || epoch >= below {
                continue;
            }
            let path = entry.path();
            std::fs::remove_dir_all(&path)
                .map_err(|e| Error::internal(format!("removing {}: {e}", path.display())))?;
            crate::storage::durable::sync_dir(&self.dir)
                .map_err(|e| Error::internal(format!("syncing {}: {e}", self.dir.display())))?;
            self.logs.remove(shard, epoch)?;
        }
        Ok(())
    }

    /// Stop and delete this node's replica of retired `shard` (group, files, log), if it
    /// has one; false while two-phase commit records on it may still be asked for.
    async fn remove_retired(&self, shard: ShardId) -> Result<bool> {
        if let Some(group) = self.group(shard) {
            if group.replica.two_phase_records().await? > 0 {
                return Ok(false);
            }
            // The leader goes last: a follower that has not applied the entries deleting
            // the records yet would otherwise keep them with no leader left to send them
            // (and campaign for ever). A follower gone before its time (dead, or removed
            // early) holds it up for `RETIRED_LEADER_WAIT` at most.
            if group.leader().0 == Some(self.node) && !group.followers_have_everything() {
                let since = *self
                    .retiring
                    .lock()
                    .expect("retiring lock")
                    .entry(shard)
                    .or_insert_with(std::time::Instant::now);
                if since.elapsed() < limits::RETIRED_LEADER_WAIT {
                    return Ok(false);
                }
                tracing::warn!(%shard, "removing a retired shard's leader before every follower caught up");
            } else if group.leader().0 == Some(self.node) {
                // Let a heartbeat carry the commit index to the followers.
                tokio::time::sleep(Duration::from_millis(self.raft.heartbeat_interval * 3)).await;
            }
            self.retiring.lock().expect("retiring lock").remove(&shard);
            self.groups
                .write()
                .expect("groups lock poisoned")
                .remove(&shard);
            self.leaders.lock().expect("leaders lock").remove(&shard);
            self.placed.lock().expect("placed lock").remove(&shard);
            group.shutdown().await;
            tracing::info!(%shard, "replica removed: the shard was retired with its last table");
        }
        self.delete_lives(shard, u64::MAX).await?;
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

    /// This node's status, for the other nodes.
    pub fn status(&self) -> NodeStatus {
        let (cpu_seconds, rss_bytes) = process_usage();
        let groups = self.groups();
        let catalog = self.catalog();
        NodeStatus {
            node: self.node.0,
            started_ms: self.started_ms,
            version: env!("CARGO_PKG_VERSION").to_string(),
            leading: groups
                .iter()
                .filter(|g| g.leader().0 == Some(self.node))
                .map(|g| g.shard)
                .collect(),
            replicas: groups.iter().map(|g| g.shard).collect(),
            replicas_here: groups
                .iter()
                .map(|g| {
                    let (applied, learner) = g.applied_and_learner(self.node);
                    ReplicaStatus {
                        shard: g.shard,
                        applied,
                        learner,
                        term: g.leader().1,
                        applied_time_us: g
                            .replica
                            .applied_time
                            .load(std::sync::atomic::Ordering::Relaxed),
                        bytes: g.replica.disk_bytes(),
                    }
                })
                .collect(),
            table_sizes: self
                .table_sizes
                .lock()
                .expect("table sizes lock")
                .iter()
                .flat_map(|(shard, tables)| {
                    tables
                        .iter()
                        .map(|(t, rows, bytes)| (*shard, t.clone(), *rows, *bytes))
                })
                .collect(),
            events: self.journal.all(),
            liveness: catalog
                .nodes
                .keys()
                .map(|n| {
                    let (live, since) = self.liveness.of(*n);
                    (n.0, live.as_str().to_string(), since)
                })
                .collect(),
            cpu_seconds,
            rss_bytes,
            divergent_replicas: crate::metrics::divergent_replicas(),
            stuck: match self.stuck.lock().expect("lock").upgrade() {
                Some(driver) if self.leads_meta() => driver
                    .stuck
                    .lock()
                    .expect("lock")
                    .iter()
                    .map(|(n, why)| (n.0, why.clone()))
                    .collect(),
                _ => Vec::new(),
            },
        }
    }

    /// Add `id` to `group` as a voter (learner first, until it has caught up). Only on the
    /// group's leader. The meta group keeps at most `META_VOTERS_MAX` voters; other nodes
    /// follow it as learners (the placement driver promotes one when a voter dies or leaves).
    pub async fn add_member(&self, group: &ShardGroup, id: u64, node: NodeInfo) -> Result<()> {
        let lock = self.change_lock(group.shard);
        let _one_at_a_time = lock.lock().await;
        let voters_max = if group.shard.is_meta() {
            limits::META_VOTERS_MAX
        } else {
            usize::MAX
        };
        membership::add_voter(&group.raft, group.shard, id, node, voters_max).await
    }

    /// The lock that keeps `shard`'s membership changes one at a time.
    fn change_lock(&self, shard: ShardId) -> Arc<tokio::sync::Mutex<()>> {
        self.changing
            .lock()
            .expect("lock")
            .entry(shard)
            .or_default()
            .clone()
    }

    /// The meta group's voters and learners, as this node's replica knows them.
    pub fn meta_roles(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        let metrics = self.meta.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        (
            membership.voter_ids().map(NodeId).collect(),
            membership.learner_ids().map(NodeId).collect(),
        )
    }
}

impl Cluster {
    /// Take `id` out of `group`'s membership (voter or learner). Only on the group's leader.
    pub async fn remove_member(&self, group: &ShardGroup, id: u64) -> Result<()> {
        let lock = self.change_lock(group.shard);
        let _one_at_a_time = lock.lock().await;
        membership::remove(&group.raft, group.shard, id, 1).await
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
        // A retired replica still holding two-phase commit records (or leading followers
        // not caught up yet) is looked at again soon even if the catalog does not change.
        let recheck = async {
            if waiting {
                tokio::time::sleep(Duration::from_secs(1)).await
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

/// This process's CPU seconds (user + system) and resident bytes, from `/proc/self` (zeros
/// where there is no `/proc`).
fn process_usage() -> (f64, u64) {
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces) closing with ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks.max(1) as f64)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page.max(1) as u64)
        .unwrap_or(0);
    (cpu, rss)
}

/// Puts each leadership this node wins in its journal (`GET /v1/events`, the dashboard):
/// one line per group and term, from the winner only, so the cluster's events name each
/// election once.
async fn journal_elections(cluster: Arc<Cluster>) {
    let mut known: HashMap<ShardId, u64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for group in cluster.groups() {
            let (leader, term) = group.leader();
            if leader != Some(cluster.node) {
                continue;
            }
            if known.insert(group.shard, term) != Some(term) {
                cluster.journal.record(
                    "leader",
                    format!(
                        "shard {}: {} elected leader (term {term})",
                        group.shard, cluster.node
                    ),
                );
            }
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

/// On every node, every heartbeat interval: a follower that has heard nothing from its
/// group's leader for the leader's lease (openraft's followers refuse votes until it runs
/// out) and is the group's first voter after that leader campaigns at once — instead of
/// waiting out the lease *plus* a random election timeout like the others, which is also
/// how two survivors of three ended up splitting votes for several rounds. Once per
/// silence: a candidacy that fails (a longer log elsewhere, say) is left to openraft's own
/// timers. Raft's safety does not depend on who campaigns when; this only picks one.
/// Requests that never come back cannot stall it: `with_raft_state` and `elect` only talk
/// to this node's own Raft core.
async fn campaign_on_silence(cluster: Arc<Cluster>) {
    let lease = Duration::from_millis(cluster.raft.election_timeout_max) + limits::CAMPAIGN_MARGIN;
    let mut tick =
        tokio::time::interval(Duration::from_millis(cluster.raft.heartbeat_interval.max(1)) / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tried: HashMap<ShardId, Instant> = HashMap::new();
    loop {
        tick.tick().await;
        for g in cluster.groups() {
            let heard = match *g.leader_contact.lock().expect("contact lock poisoned") {
                Some((heard, _)) => heard,
                None => continue,
            };
            if heard.elapsed() < lease || tried.get(&g.shard) == Some(&heard) {
                continue;
            }
            let (leader, first) = {
                let m = g.raft.metrics();
                let m = m.borrow();
                if m.state != openraft::ServerState::Follower {
                    continue;
                }
                let Some(leader) = m.current_leader else {
                    continue;
                };
                let first = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter(|v| *v != leader)
                    .min();
                (leader, first)
            };
            if first != Some(g.node.0) {
                continue;
            }
            // `leader_contact` counts appends only; openraft's own clock also runs from
            // snapshot chunks (a follower being sent a snapshot hears from its leader all
            // along). Campaign only once that clock, the one votes are refused by, ran out.
            let since_vote = g
                .raft
                .with_raft_state(|st| st.vote_last_modified().map(|t| t.elapsed()))
                .await;
            if !matches!(since_vote, Ok(Some(d)) if d >= lease) {
                continue;
            }
            tried.insert(g.shard, heard);
            tracing::info!(shard = %g.shard, silent_ms = heard.elapsed().as_millis() as u64, "no word from leader n{leader} for a lease: campaigning");
            if let Err(e) = g.raft.trigger().elect().await {
                tracing::debug!(shard = %g.shard, error = %e, "could not campaign");
            }
        }
        tried.retain(|shard, _| cluster.group(*shard).is_some());
    }
}

/// On every node: ask the catalog's nodes that gossip does not see alive to gossip with us
/// (a node just started or restarted, or one back from a partition).
async fn track_liveness(cluster: Arc<Cluster>) {
    let mut changes = cluster.catalog_watch();
    loop {
        let catalog = changes.borrow_and_update().clone();
        for n in catalog.nodes.values() {
            if n.id == cluster.node || n.state == NodeState::Decommissioned {
                continue;
            }
            if cluster.liveness.of(n.id).0 == liveness::Live::Alive {
                continue;
            }
            if let Ok(mut addrs) = tokio::net::lookup_host(n.cluster_addr.as_str()).await {
                if let Some(addr) = addrs.next() {
                    cluster.liveness.announce(addr);
                }
            }
        }
        // Again soon, or at once when a node joins.
        tokio::select! {
            () = tokio::time::sleep(limits::GOSSIP_ANNOUNCE_EVERY) => {}
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// The placement driver's memory between rounds (on the meta leader).
#[derive(Default)]
struct DriverState {
    /// (shard, node) pairs known to be voters of the shard's group.
    /// Keyed by placement too: a replica taken away and placed again (a new epoch) is a new
    /// member to add, whoever took it away.
    confirmed: Mutex<BTreeSet<(ShardId, NodeId, u64)>>,
    /// Replicas being made voters.
    adding: Mutex<BTreeSet<(ShardId, NodeId, u64)>>,
    /// Shards a replica is being taken away from.
    removing: Mutex<BTreeSet<ShardId>>,
    /// Nodes being taken out of the meta group.
    leaving_meta: Mutex<BTreeSet<NodeId>>,
    jobs_running: Mutex<BTreeSet<u64>>,
    /// Why shards on a leaving node cannot move now, by node (for `GET /v1/nodes`).
    stuck: Mutex<BTreeMap<NodeId, Vec<String>>>,
    /// Shards whose leadership was last moved, and when.
    leader_moves: Mutex<HashMap<ShardId, Instant>>,
}

/// On the meta leader, every `PLACEMENT_INTERVAL`: make each group's membership follow the
/// catalog, take the next placement step of each shard (within the move limits), finish
/// decommissions, and finish DDL jobs whose coordinator went away.
async fn placement_driver(cluster: Arc<Cluster>) {
    let state: Arc<DriverState> = Arc::default();
    *cluster.stuck.lock().expect("lock") = Arc::downgrade(&state);
    let mut jobs_seen: HashMap<u64, Instant> = HashMap::new();
    let mut leaders_balanced = Instant::now();
    loop {
        tokio::time::sleep(limits::PLACEMENT_INTERVAL).await;
        if !cluster.surely_leads_meta().await {
            jobs_seen.clear();
            // Another leader may change memberships meanwhile.
            state.confirmed.lock().expect("lock").clear();
            continue;
        }
        let catalog = cluster.catalog();
        let nodes: Vec<NodeId> = catalog.nodes.keys().copied().collect();
        let dead = cluster
            .liveness
            .dead_longer_than(nodes.iter().copied(), cluster.dead_after);
        let mut down = cluster.liveness.down_among(nodes.iter().copied());
        down.extend(dead.iter().copied());
        follow_catalog(&cluster, &catalog, &down, &state);
        place(&cluster, &catalog, &down, &dead, &state).await;
        balance_meta(&cluster, &catalog, &down, &dead, &state);
        finish_decommissions(&cluster, &catalog, &state).await;
        // Leaders move once replicas are where they belong (a move in flight changes who
        // can lead what).
        let settled = catalog.shards.values().all(|s| {
            s.leaving.is_empty()
                && s.replicas.len() <= placement::wanted(&catalog, s.replication_factor, &s.zones)
        });
        if settled && leaders_balanced.elapsed() >= limits::LEADER_BALANCE_EVERY {
            leaders_balanced = Instant::now();
            leaders::balance(&cluster, &catalog, &down, &state).await;
        }
        // DDL jobs left behind by a coordinator that failed or died.
        jobs_seen.retain(|id, _| catalog.jobs.contains_key(id));
        for job in catalog.jobs.values() {
            let seen = *jobs_seen.entry(job.id).or_insert_with(Instant::now);
            if seen.elapsed() < limits::DDL_JOB_ADOPT_AFTER
                || !state.jobs_running.lock().expect("lock").insert(job.id)
            {
                continue;
            }
            let (c, job, state) = (cluster.clone(), job.clone(), state.clone());
            tokio::spawn(async move {
                tracing::info!(job = job.id, table = %job.table, "finishing a DDL job");
                if let Err(e) = c.run_job(&job).await {
                    tracing::warn!(job = job.id, error = %e, "DDL job not finished yet");
                }
                state.jobs_running.lock().expect("lock").remove(&job.id);
            });
        }
    }
}

impl Cluster {
    /// Whether this node leads the meta group, confirmed by a quorum of its voters, and is
    /// one of them. A leader taken out of the meta group (decommissioned) can go on
    /// believing it leads, with a catalog that no longer changes: a placement driver
    /// running there undid the real one's moves (membership chaos seed 43).
    ///
    /// openraft 0.9 does not always step a leader down when it leaves the voters; such a
    /// leader stops its heartbeats here, so the voters elect one of their own.
    async fn surely_leads_meta(&self) -> bool {
        let heartbeats = self.meta.raft.runtime_config();
        if self.meta.leader().0 != Some(self.node) {
            heartbeats.heartbeat(true);
            return false;
        }
        if !self.meta.voters().contains(&self.node.0) {
            tracing::info!(
                "this node leads the meta group but is no longer a voter: stopping its heartbeats so a voter takes over"
            );
            heartbeats.heartbeat(false);
            return false;
        }
        heartbeats.heartbeat(true);
        tokio::time::timeout(limits::PLACEMENT_INTERVAL * 4, self.meta.read_index())
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Group memberships follow the catalog: each replica it names on a live node becomes a
/// voter (learner first, caught up, then promoted).
fn follow_catalog(
    cluster: &Arc<Cluster>,
    catalog: &Catalog,
    down: &BTreeSet<NodeId>,
    state: &Arc<DriverState>,
) {
    for shard in catalog.shards.values() {
        for node in &shard.replicas {
            let key = (shard.id, *node, shard.epoch_of(*node));
            if down.contains(node)
                || state.confirmed.lock().expect("lock").contains(&key)
                || !state.adding.lock().expect("lock").insert(key)
            {
                continue;
            }
            let Some(record) = catalog.node(*node) else {
                state.adding.lock().expect("lock").remove(&key);
                continue;
            };
            let info = NodeInfo::from(record);
            let (c, state) = (cluster.clone(), state.clone());
            tokio::spawn(async move {
                match c.add_replica(key.0, key.1, info).await {
                    Ok(()) => {
                        state.confirmed.lock().expect("lock").insert(key);
                    }
                    Err(e) => {
                        tracing::debug!(shard = %key.0, node = %key.1, error = %e, "membership change pending")
                    }
                }
                state.adding.lock().expect("lock").remove(&key);
            });
        }
    }
}

/// One placement step per shard that needs one, adds within `PLACEMENT_MOVES_MAX` moves in
/// flight (and `PLACEMENT_MOVES_PER_NODE` into any one node).
async fn place(
    cluster: &Arc<Cluster>,
    catalog: &Arc<Catalog>,
    down: &BTreeSet<NodeId>,
    dead: &BTreeSet<NodeId>,
    state: &Arc<DriverState>,
) {
    let view = placement::View {
        catalog,
        down,
        dead,
    };
    let mut load = placement::replica_load(catalog);
    // A move is in flight while its shard has a replica more than it wants (added, the old
    // one not yet taken away); a node is taking one in while its replica is not a voter yet.
    let confirmed = state.confirmed.lock().expect("lock").clone();
    let mut moves = 0;
    let mut incoming: BTreeMap<NodeId, usize> = BTreeMap::new();
    for shard in catalog.shards.values() {
        let want = placement::wanted(catalog, shard.replication_factor, &shard.zones);
        if shard.replicas.len() > want {
            moves += 1;
        }
        for n in &shard.replicas {
            if !confirmed.contains(&(shard.id, *n, shard.epoch_of(*n))) && !down.contains(n) {
                *incoming.entry(*n).or_default() += 1;
            }
        }
    }
    let mut stuck: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    for shard in catalog.shards.values() {
        if state.removing.lock().expect("lock").contains(&shard.id) {
            continue;
        }
        let voters: BTreeSet<NodeId> = shard
            .replicas
            .iter()
            .copied()
            .filter(|n| confirmed.contains(&(shard.id, *n, shard.epoch_of(*n))))
            .collect();
        let leader = cluster.known_leader(shard.id);
        let step = placement::next_step(&view, shard, &voters, leader, &load);
        if let Some(why) = placement::why_stuck(&view, shard, &voters, &load) {
            let leaving =
                |n: &&NodeId| dead.contains(*n) || catalog.node(**n).is_none_or(|r| !r.is_active());
            for n in shard.replicas.iter().filter(leaving) {
                stuck
                    .entry(*n)
                    .or_default()
                    .push(format!("{}: {why}", shard.id));
            }
        }
        match step {
            None => {}
            Some(placement::Step::Add { node, from, reason }) => {
                if moves >= limits::PLACEMENT_MOVES_MAX
                    || incoming.get(&node).copied().unwrap_or(0) >= limits::PLACEMENT_MOVES_PER_NODE
                {
                    continue;
                }
                let mut grown = shard.clone();
                grown.place_on(node);
                if reason == placement::Reason::Rebalance {
                    grown.leaving.extend(from);
                }
                let line = match from {
                    Some(from) => format!(
                        "shard {}: moving replica {from} → {node} ({reason})",
                        shard.id
                    ),
                    None => format!("shard {}: adding a replica on {node} ({reason})", shard.id),
                };
                match cluster.put_shard_if(&grown, &shard.replicas).await {
                    Ok(true) => {
                        tracing::info!("{line}");
                        cluster.journal.record("move", line);
                        moves += 1;
                        *incoming.entry(node).or_default() += 1;
                        *load.entry(node).or_default() += 1;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(shard = %shard.id, error = %e, "placing a replica"),
                }
            }
            Some(placement::Step::Stay { node }) => {
                let mut kept = shard.clone();
                kept.leaving.retain(|n| *n != node);
                match cluster.put_shard_if(&kept, &shard.replicas).await {
                    Ok(true) => {
                        let line = format!(
                            "shard {}: keeping the replica on {node} (the rebalance moving it is called off: its new replica is going away too)",
                            shard.id
                        );
                        tracing::info!("{line}");
                        cluster.journal.record("move", line);
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(shard = %shard.id, error = %e, "keeping a replica"),
                }
            }
            Some(placement::Step::Remove { node, reason }) => {
                state.removing.lock().expect("lock").insert(shard.id);
                *load.entry(node).or_default() -= 1;
                let going: Vec<NodeId> = shard
                    .replicas
                    .iter()
                    .copied()
                    .filter(|n| view.doomed_hard(*n).is_some())
                    .collect();
                let (c, shard, state) = (cluster.clone(), shard.clone(), state.clone());
                tokio::spawn(async move {
                    match c.take_replica_away(&shard, node, &going).await {
                        Ok(()) => {
                            let line =
                                format!("shard {}: replica on {node} removed ({reason})", shard.id);
                            tracing::info!("{line}");
                            c.journal.record("move", line);
                            state.confirmed.lock().expect("lock").remove(&(
                                shard.id,
                                node,
                                shard.epoch_of(node),
                            ));
                        }
                        Err(e) => {
                            let line = format!(
                                "shard {}: cannot remove the replica on {node} yet ({reason}): {e}",
                                shard.id
                            );
                            tracing::warn!("{line}");
                            c.journal.record("stuck", line);
                        }
                    }
                    state.removing.lock().expect("lock").remove(&shard.id);
                });
            }
        }
    }
    let mut kept = state.stuck.lock().expect("lock");
    for (node, reasons) in &stuck {
        // Waiting for a new replica to catch up is progress, not worth an event.
        for r in reasons.iter().filter(|r| !r.contains("to catch up")) {
            if !kept.get(node).is_some_and(|old| old.contains(r)) {
                let line = format!("node {node}: cannot move shard {r}");
                tracing::warn!("{line}");
                cluster.journal.record("stuck", line);
            }
        }
    }
    *kept = stuck;
}

/// The meta group's voters: up to `META_VOTERS_MAX` active nodes that are alive, spread over
/// zones; a voter that is dead, leaving or beyond the count becomes a learner once a
/// replacement (if any) is a voter. One change per round.
fn balance_meta(
    cluster: &Arc<Cluster>,
    catalog: &Catalog,
    down: &BTreeSet<NodeId>,
    dead: &BTreeSet<NodeId>,
    state: &Arc<DriverState>,
) {
    let (voters, learners) = cluster.meta_roles();
    let active = |n: &NodeId| catalog.node(*n).is_some_and(|r| r.is_active());
    // A voter stays one until it is dead past `--dead-after` (a suspect moment is no
    // reason to change the group); a learner is promoted only while alive.
    let usable = |n: &NodeId| !dead.contains(n) && active(n);
    let promotable = |n: &NodeId| !down.contains(n) && active(n);
    let good: Vec<NodeId> = voters.iter().copied().filter(usable).collect();
    let target = voters
        .iter()
        .chain(&learners)
        .filter(|n| usable(n))
        .count()
        .min(limits::META_VOTERS_MAX);
    let zone = |n: &NodeId| catalog.node(*n).and_then(|r| r.zone.clone());
    let covered: BTreeSet<Option<String>> = good.iter().map(zone).collect();
    let change = if good.len() < target {
        // Promote a learner, from a zone no good voter is in if there is one.
        learners
            .iter()
            .copied()
            .filter(promotable)
            .min_by_key(|n| (covered.contains(&zone(n)), *n))
            .map(|n| (n, true))
    } else if voters.len() > target {
        // Demote a voter that is dead or leaving, else the surplus.
        voters
            .iter()
            .copied()
            .max_by_key(|n| (!usable(n), Some(*n) != cluster.meta.leader().0, *n))
            .map(|n| (n, false))
    } else {
        None
    };
    let Some((node, promote)) = change else {
        return;
    };
    if !state.leaving_meta.lock().expect("lock").insert(node) {
        return;
    }
    let (c, state) = (cluster.clone(), state.clone());
    tokio::spawn(async move {
        let lock = c.change_lock(ShardId::META);
        let _one_at_a_time = lock.lock().await;
        let change = if promote {
            openraft::ChangeMembers::AddVoterIds(BTreeSet::from([node.0]))
        } else {
            openraft::ChangeMembers::RemoveVoters(BTreeSet::from([node.0]))
        };
        // A demoted voter stays a learner: it still follows the catalog.
        match membership::change(&c.meta.raft, ShardId::META, change, true).await {
            Ok(_) => {
                let line = format!(
                    "meta: {node} is now a {}",
                    if promote { "voter" } else { "learner" }
                );
                tracing::info!("{line}");
                c.journal.record("move", line);
            }
            Err(e) => tracing::warn!(%node, error = %e, "changing the meta group's voters"),
        }
        state.leaving_meta.lock().expect("lock").remove(&node);
    });
}

/// A decommissioning node holding no replica is decommissioned; a decommissioned node
/// leaves the meta group.
async fn finish_decommissions(cluster: &Arc<Cluster>, catalog: &Catalog, state: &Arc<DriverState>) {
    let load = placement::replica_load(catalog);
    for n in catalog.nodes.values() {
        match n.state {
            NodeState::Decommissioning
                if load.get(&n.id).copied().unwrap_or(0) == 0
                    && !cluster.meta_roles().0.contains(&n.id) =>
            {
                let mut done = n.clone();
                done.state = NodeState::Decommissioned;
                done.since_ms = liveness::now_ms();
                let write = match meta::put_node(&done) {
                    Ok(stmt) => cluster.meta.writer.execute(stmt).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                match write {
                    Ok(()) => {
                        let line = format!("node {}: decommissioned (no replicas left)", n.id);
                        tracing::info!("{line}");
                        cluster.journal.record("node", line);
                    }
                    Err(e) => tracing::warn!(node = %n.id, error = %e, "recording a decommission"),
                }
            }
            NodeState::Decommissioned => {
                let member = cluster.meta.members().iter().any(|(m, _)| *m == n.id);
                if !member || !state.leaving_meta.lock().expect("lock").insert(n.id) {
                    continue;
                }
                let (c, state, id) = (cluster.clone(), state.clone(), n.id);
                tokio::spawn(async move {
                    match c.remove_member(&c.meta, id.0).await {
                        Ok(()) => {
                            let line = format!("node {id}: removed from the meta group");
                            tracing::info!("{line}");
                            c.journal.record("node", line);
                        }
                        Err(e) => tracing::warn!(node = %id, error = %e, "leaving the meta group"),
                    }
                    state.leaving_meta.lock().expect("lock").remove(&id);
                });
            }
            _ => {}
        }
    }
}

impl Cluster {
    /// Replace shard `shard` in the catalog if its replicas are still `expected`; whether
    /// it was replaced. Only on the meta leader.
    async fn put_shard_if(
        &self,
        shard: &crate::catalog::Shard,
        expected: &[NodeId],
    ) -> Result<bool> {
        let rows = self
            .meta
            .writer
            .execute(meta::put_shard_if(shard, expected)?)
            .await?;
        Ok(rows.changes > 0)
    }

    /// The second half of a move: take `node`'s replica of `shard` out of the group (after
    /// checking with the group's leader that every other replica is a voter, but those in
    /// `going`, which leave too), then out of the catalog, listing it as removed so the node
    /// deletes its copy.
    async fn take_replica_away(
        &self,
        shard: &crate::catalog::Shard,
        node: NodeId,
        going: &[NodeId],
    ) -> Result<()> {
        let (voters, _) = self.voters(shard.id).await?;
        if let Some(n) = shard
            .replicas
            .iter()
            .find(|r| **r != node && !voters.contains(r) && !going.contains(r))
        {
            return Err(Error::Unavailable(format!("{n} is not a voter yet")));
        }
        self.remove_replica(shard.id, node).await?;
        let shrunk = shard.take_off(node);
        self.put_shard_if(&shrunk, &shard.replicas).await?;
        Ok(())
    }
}
