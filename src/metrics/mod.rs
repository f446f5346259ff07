//! Prometheus metrics, served as text at `GET /metrics` on every node: statements by kind
//! and outcome with their latency, and — read on each scrape — every local replica's Raft
//! state (term, leader, applied index, leadership changes) and the catalog's size.

pub mod timeline;

use crate::cluster::Cluster;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Weak};
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatementLabels {
    /// `read`, `write`, `ddl` or `other` (session and transaction control).
    pub kind: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    statements: Family<StatementLabels, Counter>,
    latency: Family<StatementLabels, Histogram>,
    pub cache: CacheMetrics,
}

/// The result cache's counters (`sql::cache`).
#[derive(Clone, Default)]
pub struct CacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    /// Entries pushed out to stay within the cache's bytes.
    pub evictions: Counter,
    /// Entries found stale: a change to a table they read committed after them.
    pub invalidations: Counter,
    pub bytes: prometheus_client::metrics::gauge::Gauge,
}

impl Metrics {
    pub fn new(cluster: &Arc<Cluster>) -> Metrics {
        let mut registry = Registry::with_prefix("cairn");
        let statements = Family::<StatementLabels, Counter>::default();
        let latency = Family::<StatementLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to ~6.5 s.
            Histogram::new(exponential_buckets(0.0001, 2.0, 17))
        });
        registry.register(
            "statements",
            "Statements executed by this node's sessions",
            statements.clone(),
        );
        registry.register(
            "statement_seconds",
            "Statement latency at this node (parse to result)",
            latency.clone(),
        );
        registry.register_collector(Box::new(ReplicaCollector(Arc::downgrade(cluster))));
        let cache = CacheMetrics::default();
        registry.register(
            "result_cache_hits",
            "SELECTs answered from this node's result cache",
            cache.hits.clone(),
        );
        registry.register(
            "result_cache_misses",
            "Cacheable SELECTs that ran (nothing cached, or it was stale or expired)",
            cache.misses.clone(),
        );
        registry.register(
            "result_cache_evictions",
            "Cached results pushed out to keep the cache within its bytes",
            cache.evictions.clone(),
        );
        registry.register(
            "result_cache_invalidations",
            "Cached results found stale (a table they read changed after them)",
            cache.invalidations.clone(),
        );
        registry.register(
            "result_cache_bytes",
            "Bytes of results in this node's cache (estimated)",
            cache.bytes.clone(),
        );
        Metrics {
            registry,
            statements,
            latency,
            cache,
        }
    }

    pub fn statement(&self, kind: &'static str, ok: bool, took: Duration) {
        let labels = StatementLabels {
            kind,
            outcome: if ok { "ok" } else { "error" },
        };
        timeline::statement(kind, ok, took);
        self.statements.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Divergent replicas found by consistency checks run on this node.
static DIVERGENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Count divergent replicas a consistency check found.
pub fn divergence_found(replicas: u64) {
    DIVERGENCE.fetch_add(replicas, std::sync::atomic::Ordering::Relaxed);
}

/// Divergent replicas found by this node's consistency checks since it started.
pub fn divergent_replicas() -> u64 {
    DIVERGENCE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Reads each local replica's Raft metrics at scrape time.
struct ReplicaCollector(Weak<Cluster>);

impl std::fmt::Debug for ReplicaCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicaCollector")
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(String, M)],
) -> Result<(), std::fmt::Error> {
    let Some(first) = values.first() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, None, first.1.metric_type())?;
    for (shard, value) in values {
        let labels = ShardLabel {
            shard: shard.clone(),
        };
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ReplicaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(cluster) = self.0.upgrade() else {
            return Ok(());
        };
        let mut terms = Vec::new();
        let mut leaders = Vec::new();
        let mut leading = Vec::new();
        let mut applied = Vec::new();
        let mut last_log = Vec::new();
        let mut changes = Vec::new();
        let mut served = Vec::new();
        let mut installed = Vec::new();
        let mut lease_reads = Vec::new();
        let mut quorum_reads = Vec::new();
        family(
            &mut encoder,
            "cairn_replica_divergence",
            "Replicas found diverging from their shard's majority by consistency checks run here (shard=\"all\")",
            &[(
                "all".to_string(),
                ConstCounter::new(DIVERGENCE.load(std::sync::atomic::Ordering::Relaxed)),
            )],
        )?;
        for g in cluster.groups() {
            lease_reads.push((
                g.shard.to_string(),
                ConstCounter::new(g.lease_reads.load(std::sync::atomic::Ordering::Relaxed)),
            ));
            quorum_reads.push((
                g.shard.to_string(),
                ConstCounter::new(g.quorum_reads.load(std::sync::atomic::Ordering::Relaxed)),
            ));
            installed.push((
                g.shard.to_string(),
                ConstCounter::new(
                    g.snapshots_installed
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
            ));
            served.push((
                g.shard.to_string(),
                ConstCounter::new(g.served.load(std::sync::atomic::Ordering::Relaxed)),
            ));
            let shard = g.shard.to_string();
            let m = g.raft.metrics().borrow().clone();
            terms.push((shard.clone(), ConstGauge::new(m.current_term as i64)));
            leaders.push((
                shard.clone(),
                ConstGauge::new(m.current_leader.map(|l| l as i64).unwrap_or(0)),
            ));
            leading.push((
                shard.clone(),
                ConstGauge::new(i64::from(m.current_leader == Some(cluster.node.0))),
            ));
            applied.push((
                shard.clone(),
                ConstGauge::new(m.last_applied.map(|l| l.index as i64).unwrap_or(0)),
            ));
            last_log.push((
                shard.clone(),
                ConstGauge::new(m.last_log_index.unwrap_or(0) as i64),
            ));
            changes.push((
                shard,
                ConstCounter::new(g.elections.load(std::sync::atomic::Ordering::Relaxed)),
            ));
        }
        family(
            &mut encoder,
            "raft_term",
            "Current Raft term of each local replica",
            &terms,
        )?;
        family(
            &mut encoder,
            "raft_leader",
            "Node id of each local replica's leader (0: none known)",
            &leaders,
        )?;
        family(
            &mut encoder,
            "raft_is_leader",
            "1 if this node leads the shard",
            &leading,
        )?;
        family(
            &mut encoder,
            "raft_applied_index",
            "Last log index applied to each local replica",
            &applied,
        )?;
        family(
            &mut encoder,
            "raft_last_log_index",
            "Last log index in each local replica's log",
            &last_log,
        )?;
        family(
            &mut encoder,
            "raft_snapshots_installed",
            "Snapshots each local replica received from its leader and installed since the node started",
            &installed,
        )?;
        family(
            &mut encoder,
            "leader_changes",
            "Leadership changes seen by each local replica (new leader or new term)",
            &changes,
        )?;
        family(
            &mut encoder,
            "linearizable_reads_by_lease",
            "Linearizable reads this node answered as each shard's leader within its lease, without a quorum round",
            &lease_reads,
        )?;
        family(
            &mut encoder,
            "linearizable_reads_by_quorum",
            "Linearizable reads this node answered as each shard's leader after confirming leadership with a quorum",
            &quorum_reads,
        )?;
        family(
            &mut encoder,
            "shard_statements",
            "Statements this node executed as each shard's leader (reads, writes, transactions begun)",
            &served,
        )?;
        let catalog = cluster.catalog();
        let gauge = ConstGauge::new(catalog.tables().count() as i64);
        gauge.encode(encoder.encode_descriptor(
            "catalog_tables",
            "Tables in the catalog",
            None,
            gauge.metric_type(),
        )?)?;
        let jobs = ConstGauge::new(catalog.jobs.len() as i64);
        jobs.encode(encoder.encode_descriptor(
            "ddl_jobs_running",
            "Schema changes recorded in the catalog and not finished yet",
            None,
            jobs.metric_type(),
        )?)?;
        let gauge = ConstGauge::new(catalog.shards.len() as i64);
        gauge.encode(encoder.encode_descriptor(
            "catalog_shards",
            "Data shards in the catalog",
            None,
            gauge.metric_type(),
        )?)?;
        let gauge = ConstGauge::new(catalog.nodes.len() as i64);
        gauge.encode(encoder.encode_descriptor(
            "catalog_nodes",
            "Nodes in the catalog",
            None,
            gauge.metric_type(),
        )?)?;
        Ok(())
    }
}
