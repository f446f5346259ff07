//! Node lifecycle over HTTP: `GET /v1/nodes`, `POST /v1/nodes/{id}/decommission`,
//! `.../recommission`, `.../remove`, and the merged event log `GET /v1/events`.

use super::http::{Api, ApiError};
use crate::catalog::NodeRecord;
use crate::cluster::nodes::{parse_node, Lifecycle};
use crate::cluster::NodeStatus;
use crate::ids::ShardId;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

fn node_json(
    api: &Api,
    record: &NodeRecord,
    status: Option<&NodeStatus>,
    replicas: usize,
) -> Value {
    let cluster = &api.engine.cluster;
    let (live, live_since) = cluster.liveness.of(record.id);
    let (voters, learners) = cluster.meta_roles();
    let meta = if voters.contains(&record.id) {
        Some("voter")
    } else if learners.contains(&record.id) {
        Some("learner")
    } else {
        None
    };
    json!({
        "id": record.id.to_string(),
        "cluster_addr": record.cluster_addr,
        "pg_addr": record.pg_addr,
        "http_addr": record.http_addr,
        "zone": record.zone,
        "state": record.state.as_str(),
        "since_ms": record.since_ms,
        "liveness": live.as_str(),
        "liveness_since_ms": live_since,
        "replicas": replicas,
        "leaders": status.map(|s| s.leading.iter().filter(|g| **g != ShardId::META).count()),
        "leads_meta": status.map(|s| s.leading.contains(&ShardId::META)),
        "meta": meta,
        "started_ms": status.map(|s| s.started_ms),
        "version": status.map(|s| s.version.clone()),
        "cpu_seconds": status.map(|s| s.cpu_seconds),
        "rss_bytes": status.map(|s| s.rss_bytes),
        "divergent_replicas": status.map(|s| s.divergent_replicas),
    })
}

/// `GET /v1/nodes`: every node in the catalog, with liveness as this node's gossip sees it,
/// replica counts from the catalog and leader counts from each node itself (null when it did
/// not answer).
pub(super) async fn list(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let cluster = api.engine.cluster.clone();
    let catalog = cluster.catalog();
    let load = crate::cluster::placement::replica_load(&catalog);
    let statuses = cluster.node_statuses().await;
    // The meta leader's placement driver knows which moves are stuck, and why.
    let stuck: Vec<(u64, Vec<String>)> = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .flat_map(|s| s.stuck.clone())
        .collect();
    let nodes: Vec<Value> = statuses
        .iter()
        .map(|(record, status)| {
            let replicas = load.get(&record.id).copied().unwrap_or(0);
            let mut node = node_json(&api, record, status.as_ref(), replicas);
            let why: Vec<&String> = stuck
                .iter()
                .filter(|(n, _)| *n == record.id.0)
                .flat_map(|(_, w)| w)
                .collect();
            node["stuck"] = json!(why);
            node
        })
        .collect();
    Ok(Json(json!({ "nodes": nodes })))
}

async fn change(
    api: Api,
    id: String,
    op: Lifecycle,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_node(&id)?;
    let cluster = api.engine.cluster.clone();
    let record = cluster.change_node_state(id, op).await?;
    let load = crate::cluster::placement::replica_load(&cluster.catalog());
    let replicas = load.get(&id).copied().unwrap_or(0);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "node": node_json(&api, &record, None, replicas) })),
    ))
}

pub(super) async fn decommission(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    change(api, id, Lifecycle::Decommission).await
}

pub(super) async fn recommission(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    change(api, id, Lifecycle::Recommission).await
}

pub(super) async fn remove(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    change(api, id, Lifecycle::Remove).await
}

/// `GET /v1/tables`: every table with how it is laid out: distribution, colocation group,
/// its shards and their replication factors, columns.
pub(super) async fn tables(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let catalog = api.engine.cluster.catalog();
    // Rows and bytes as each shard's leader last counted them.
    let statuses = api.engine.cluster.node_statuses().await;
    let mut sizes: std::collections::HashMap<(ShardId, &str), (u64, u64)> = Default::default();
    for status in statuses.iter().filter_map(|(_, s)| s.as_ref()) {
        for (shard, table, rows, bytes) in &status.table_sizes {
            sizes.insert((*shard, table.as_str()), (*rows, *bytes));
        }
    }
    let tables: Vec<Value> = catalog
        .tables()
        .filter(|t| !t.name.starts_with("cairn_file_"))
        .map(|t| {
            let shards = catalog.shards_of(t).unwrap_or_default();
            let factors: std::collections::BTreeSet<u32> = shards
                .iter()
                .filter_map(|s| catalog.shards.get(s))
                .map(|s| s.replication_factor)
                .collect();
            let distribution = match &t.distribution {
                crate::catalog::Distribution::Single => "single".to_string(),
                crate::catalog::Distribution::Reference => "reference".to_string(),
                crate::catalog::Distribution::Hash { column } => format!("hash({column})"),
                crate::catalog::Distribution::List { column } => format!("list({column})"),
            };
            // A reference table's shards are copies: one of them says how big it is.
            let counted: Vec<(u64, u64)> = shards
                .iter()
                .filter_map(|s| sizes.get(&(*s, t.name.as_str())).copied())
                .collect();
            let (rows, bytes) = match &t.distribution {
                crate::catalog::Distribution::Reference => {
                    counted.first().copied().unwrap_or_default()
                }
                _ => counted
                    .iter()
                    .fold((0, 0), |(r, b), (r2, b2)| (r + r2, b + b2)),
            };
            let complete = !counted.is_empty()
                && (counted.len() == shards.len()
                    || matches!(t.distribution, crate::catalog::Distribution::Reference));
            json!({
                "approximate_rows": complete.then_some(rows),
                "approximate_bytes": complete.then_some(bytes),
                "name": t.name,
                "distribution": distribution,
                "colocation": t.colocation,
                "shards": shards.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "replication_factors": factors,
                "columns": t.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "tables": tables })))
}

/// Which rows of its tables a shard holds: its hash range, its list values, or all of them.
fn holds(catalog: &crate::catalog::Catalog, shard: &crate::catalog::Shard) -> String {
    use crate::catalog::{ColocationKind, KeyValue};
    let Some(group) = catalog.colocations.get(&shard.colocation) else {
        return String::new();
    };
    match &group.kind {
        ColocationKind::Single => "all rows".into(),
        ColocationKind::Reference => "all rows (reference: a copy on every node)".into(),
        ColocationKind::Hash { shard_count } => {
            let i = group
                .shards
                .iter()
                .position(|s| *s == shard.id)
                .unwrap_or(0);
            let (lo, hi) = crate::catalog::hash_range(i, *shard_count as usize);
            format!("hash {lo:016x}–{hi:016x}")
        }
        ColocationKind::List { partitions } => {
            match partitions.iter().find(|p| p.shard == shard.id) {
                Some(p) => match &p.values {
                    Some(values) => {
                        let values: Vec<String> = values
                            .iter()
                            .map(|v| match v {
                                KeyValue::Integer(i) => i.to_string(),
                                KeyValue::Text(t) => format!("'{t}'"),
                            })
                            .collect();
                        format!("{}: {}", p.name, values.join(", "))
                    }
                    None => format!("{}: default", p.name),
                },
                None => String::new(),
            }
        }
    }
}

/// `GET /v1/shards`: every shard's placement from the catalog, with its leader as this node
/// knows it.
pub(super) async fn shards(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let cluster = api.engine.cluster.clone();
    let catalog = cluster.catalog();
    let statuses = cluster.node_statuses().await;
    let names = |nodes: &[crate::ids::NodeId]| -> Vec<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    };
    // Each replica as its node reports it.
    let mut reported: std::collections::HashMap<(ShardId, u64), &crate::cluster::ReplicaStatus> =
        std::collections::HashMap::new();
    for status in statuses.iter().filter_map(|(_, s)| s.as_ref()) {
        for r in &status.replicas_here {
            reported.insert((r.shard, status.node), r);
        }
    }
    let mut tables: std::collections::BTreeMap<ShardId, Vec<String>> = Default::default();
    for table in catalog.tables() {
        for shard in catalog.shards_of(table).unwrap_or_default() {
            tables.entry(shard).or_default().push(table.name.clone());
        }
    }
    let shards: Vec<Value> = catalog
        .shards
        .values()
        .map(|s| {
            let leader = cluster.known_leader(s.id);
            let on_leader = leader.and_then(|l| reported.get(&(s.id, l.0)));
            let state: Vec<Value> = s
                .replicas
                .iter()
                .map(|n| {
                    let r = reported.get(&(s.id, n.0));
                    let role = match r {
                        _ if Some(*n) == leader => "leader",
                        Some(r) if r.learner => "learner",
                        Some(_) => "follower",
                        None => "unknown",
                    };
                    let lag = match (on_leader, r) {
                        (Some(l), Some(r)) => Some(l.applied.saturating_sub(r.applied)),
                        _ => None,
                    };
                    // In time: how much older the newest write applied here is than the
                    // leader's (unknown while a replica has applied none since it opened).
                    let lag_ms = match (on_leader, r, lag) {
                        (_, _, Some(0)) => Some(0),
                        (Some(l), Some(r), _) if l.applied_time_us > 0 && r.applied_time_us > 0 => {
                            Some(l.applied_time_us.saturating_sub(r.applied_time_us) / 1000)
                        }
                        _ => None,
                    };
                    json!({
                        "node": n.to_string(),
                        "role": role,
                        "applied_index": r.map(|r| r.applied),
                        "term": r.map(|r| r.term),
                        "lag": lag,
                        "lag_ms": lag_ms,
                        "bytes": r.map(|r| r.bytes),
                    })
                })
                .collect();
            json!({
                "shard": s.id.to_string(),
                "holds": holds(&catalog, s),
                "tables": tables.get(&s.id).cloned().unwrap_or_default(),
                "colocation": s.colocation,
                "replicas": names(&s.replicas),
                "leaving": names(&s.leaving),
                "replication_factor": s.replication_factor,
                "zones": s.zones,
                "leader": leader.map(|l| l.to_string()),
                "term": on_leader.map(|l| l.term),
                "bytes": on_leader.map(|l| l.bytes),
                "replica_state": state,
            })
        })
        .collect();
    Ok(Json(json!({ "shards": shards })))
}

/// `POST /v1/shards/{id}/check`: compare the shard's replicas at one log index now; a
/// divergent one is replaced.
pub(super) async fn check(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let shard = id
        .strip_prefix('s')
        .and_then(|n| n.parse::<u64>().ok())
        .map(ShardId)
        .ok_or_else(|| {
            crate::error::Error::sql(
                crate::error::sqlstate::INVALID_PARAMETER_VALUE,
                format!("{id:?} is not a shard id (s1, s2, ...)"),
            )
        })?;
    let report = api.engine.cluster.check_shard(shard).await?;
    Ok(Json(json!({ "check": report })))
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct TimelineParams {
    /// `n2`; this node when absent.
    node: Option<String>,
    /// Only seconds that ended after this (Unix ms); all kept when absent.
    since_ms: Option<u64>,
}

/// `GET /v1/timeline?node=n2&since_ms=T`: one node's last 15 minutes at one-second
/// resolution (statements by kind with latency histograms, Raft proposals, log fsyncs), for
/// the dashboard's charts, which merge the nodes' histograms themselves.
pub(super) async fn timeline(
    State(api): State<Api>,
    params: super::kv::QueryResult<TimelineParams>,
) -> Result<Json<Value>, ApiError> {
    let params = super::kv::query(params)?;
    let cluster = &api.engine.cluster;
    let node = match &params.node {
        Some(n) => parse_node(n)?,
        None => cluster.node,
    };
    let seconds = cluster
        .node_timeline(node, params.since_ms.unwrap_or(0))
        .await
        .map_err(|e| {
            let mut e = ApiError::from(e);
            if e.code == crate::error::sqlstate::UNDEFINED_OBJECT {
                e.status = StatusCode::NOT_FOUND;
            }
            e
        })?;
    Ok(Json(json!({
        "node": node.to_string(),
        "kinds": crate::metrics::timeline::KINDS,
        "seconds": seconds,
    })))
}

/// `GET /v1/events`: every node's event log, merged by time (oldest first). A node that does
/// not answer contributes what it said when it last did (`"stale": true`).
pub(super) async fn events(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let cluster = &api.engine.cluster;
    let statuses = cluster.node_statuses().await;
    let mut events: Vec<Value> = Vec::new();
    for (node, logged, stale) in cluster.events_by_node(&statuses) {
        for e in logged {
            events.push(json!({
                "at_ms": e.at_ms,
                "node": node.to_string(),
                "kind": e.kind,
                "message": e.message,
                "stale": stale,
            }));
        }
    }
    events.sort_by_key(|e| e["at_ms"].as_u64().unwrap_or(0));
    Ok(Json(json!({ "events": events })))
}
