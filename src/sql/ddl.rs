//! Schema changes across the cluster: decide what a DDL statement means for the catalog and
//! for each shard ([`plan`]), then carry it out as a DDL job (`cluster::jobs`) or, inside a
//! transaction block, through the transaction's shard leases with the catalog change made at
//! COMMIT (`Session`).
//!
//! Distribution of a new table (first rule that applies):
//! 1. `PARTITION OF parent FOR VALUES IN (...)`: a new list partition of `parent`, on a new
//!    shard placed in the partition's zones.
//! 2. A foreign key to a single-shard table: single-shard too (same shard, so it is enforced).
//!    To a hash-distributed table: hash-distributed on the referencing column and co-located
//!    with the parent (the key must reference the parent's distribution column).
//! 3. `PARTITION BY LIST (c)` / `PARTITION BY HASH (c)`: list-partitioned / hashed on `c`.
//! 4. Hash-distributed on the first primary-key column, if every unique constraint includes
//!    it (otherwise rows with equal keys could sit on different shards); co-located with
//!    `WITH (colocate_with = 't')`, else with the other tables of the same shard count.
//! 5. Otherwise single-shard (no primary key, or a unique constraint without a common column).
//!
//! New colocation groups get new shards, placed by `cluster::placement`.

use super::translate::{AlterChange, CreateTable, DdlAction, PartitionBy};
use crate::catalog::{
    comment_key, meta, Catalog, Change, Colocation, ColocationKind, Column, Distribution, JobStep,
    ListPartition, Object, Shard, Table, TableState, View,
};
use crate::cluster::{placement, MetaTxn};
use crate::error::{sqlstate, Error, Result};
use crate::ids::ShardId;
use crate::storage::replica::Statement;
use std::collections::BTreeMap;

/// What one DDL statement does (for one table).
#[derive(Debug, Clone, Default)]
pub struct DdlPlan {
    pub table: String,
    /// New shards and colocation groups, committed before anything else (an unused shard is
    /// harmless; a table on a shard the catalog does not know is not).
    pub setup: Vec<Statement>,
    pub new_shards: Vec<ShardId>,
    /// Catalog changes made with the job, before any shard runs it (a table being created
    /// or dropped is hidden from queries meanwhile). Not used inside a transaction block.
    pub hide: Vec<Change>,
    pub steps: Vec<JobStep>,
    pub undo: Vec<JobStep>,
    pub finish: Vec<Change>,
    pub abort: Vec<Change>,
    /// Said to the client on success.
    pub notice: Option<String>,
}

pub enum Planned {
    Do(Box<DdlPlan>),
    /// Nothing to do (IF EXISTS / IF NOT EXISTS); the notice says why.
    Skip(String),
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn undefined_table(name: &str) -> Error {
    Error::sql(
        sqlstate::UNDEFINED_TABLE,
        format!("relation \"{name}\" does not exist"),
    )
}

fn steps_on(shards: &[ShardId], sql: &str) -> Vec<JobStep> {
    shards
        .iter()
        .map(|s| JobStep {
            shard: *s,
            sql: sql.to_string(),
        })
        .collect()
}

/// Plan `action` against `catalog` (the transaction's view of it), allocating ids in `mt`.
pub async fn plan(mt: &MetaTxn<'_>, catalog: &Catalog, action: &DdlAction) -> Result<Vec<Planned>> {
    match action {
        DdlAction::CreateTable(ct) => Ok(vec![plan_create(mt, catalog, ct).await?]),
        DdlAction::DropTables {
            names,
            if_exists,
            cascade,
        } => {
            let mut out = Vec::new();
            for name in names {
                out.push(plan_drop(catalog, name, *if_exists, *cascade)?);
            }
            Ok(out)
        }
        DdlAction::CreateView {
            name,
            or_replace,
            query,
            columns,
            query_columns,
            ..
        } => {
            let exists = catalog.view(name).is_some();
            if (exists && !or_replace) || (!exists && catalog.relation_exists(name)) {
                return Err(Error::sql(
                    sqlstate::DUPLICATE_TABLE,
                    format!("relation \"{name}\" already exists"),
                ));
            }
            let view = Object::View(View {
                name: name.clone(),
                query: query.clone(),
                columns: columns.clone(),
                query_columns: query_columns.clone(),
            });
            Ok(vec![object_plan(
                name,
                vec![Change::PutObject(Box::new(view))],
            )])
        }
        DdlAction::CreateSequence {
            sequence,
            if_not_exists,
        } => {
            if catalog.relation_exists(&sequence.name) {
                if *if_not_exists && catalog.sequence(&sequence.name).is_some() {
                    return Ok(vec![Planned::Skip(format!(
                        "relation \"{}\" already exists, skipping",
                        sequence.name
                    ))]);
                }
                return Err(Error::sql(
                    sqlstate::DUPLICATE_TABLE,
                    format!("relation \"{}\" already exists", sequence.name),
                ));
            }
            if let Some((t, c)) = &sequence.owned_by {
                let table = catalog.table(t).ok_or_else(|| undefined_table(t))?;
                if table.column(c).is_none() {
                    return Err(Error::sql(
                        sqlstate::UNDEFINED_COLUMN,
                        format!("column \"{c}\" of relation \"{t}\" does not exist"),
                    ));
                }
            }
            let mut plan = object_plan(
                &sequence.name,
                vec![Change::PutObject(Box::new(Object::Sequence(
                    sequence.clone(),
                )))],
            );
            // A sequence made again under an old name starts over.
            if let Planned::Do(p) = &mut plan {
                p.setup.push(meta::sequence_set(
                    &sequence_key(&sequence.name),
                    sequence.start,
                ));
            }
            Ok(vec![plan])
        }
        DdlAction::DropObjects {
            kind,
            names,
            if_exists,
            cascade,
        } => {
            let mut out = Vec::new();
            for name in names {
                let key = format!("{kind}:{}", name.to_lowercase());
                if !catalog.objects.contains_key(&key) {
                    if *if_exists {
                        out.push(Planned::Skip(format!(
                            "{kind} \"{name}\" does not exist, skipping"
                        )));
                        continue;
                    }
                    return Err(Error::sql(
                        sqlstate::UNDEFINED_TABLE,
                        format!("{kind} \"{name}\" does not exist"),
                    ));
                }
                let mut changes = dependent_views(catalog, name, *cascade)?;
                changes.push(Change::ForgetObject(format!(
                    "comment:{}",
                    comment_key(kind, name)
                )));
                changes.push(Change::ForgetObject(key));
                out.push(object_plan(name, changes));
            }
            Ok(out)
        }
        DdlAction::SetReplicationFactor { table, factor } => {
            // A list partition's shard: in its zones, with its own factor.
            if let Some(shard) = catalog.list_partition(table).map(|p| p.shard) {
                let change = Change::SetShardReplicationFactor {
                    shard,
                    factor: *factor,
                };
                return Ok(vec![object_plan(table, vec![change])]);
            }
            let t = catalog.table(table).ok_or_else(|| {
                Error::sql(
                    sqlstate::UNDEFINED_TABLE,
                    format!("relation \"{table}\" does not exist"),
                )
            })?;
            if matches!(t.distribution, Distribution::Reference) {
                return Err(Error::unsupported(
                    "a reference table has a replica on every node; its replication factor cannot change",
                ));
            }
            let change = Change::SetReplicationFactor {
                colocation: t.colocation,
                factor: *factor,
            };
            Ok(vec![object_plan(table, vec![change])])
        }
        DdlAction::SetCacheTtl { table, ttl } => {
            if catalog.table(table).is_none() {
                return Err(Error::sql(
                    sqlstate::UNDEFINED_TABLE,
                    format!("relation \"{table}\" does not exist"),
                ));
            }
            let change = match ttl {
                Some(ttl) => Change::PutObject(Box::new(Object::CacheTtl {
                    table: table.to_lowercase(),
                    millis: ttl.as_millis() as u64,
                })),
                None => Change::ForgetObject(crate::catalog::cache_ttl_key(table)),
            };
            Ok(vec![object_plan(table, vec![change])])
        }
        DdlAction::Comment { kind, name, text } => {
            let exists = match *kind {
                "table" => catalog.table(name).is_some(),
                "view" => catalog.view(name).is_some(),
                "sequence" => catalog.sequence(name).is_some(),
                "index" => catalog.index_owner(name).is_some(),
                _ => {
                    let (t, c) = name.split_once('.').unwrap_or((name, ""));
                    catalog
                        .table(t)
                        .map(|t| t.column(c).is_some())
                        .or_else(|| {
                            catalog
                                .view(t)
                                .map(|v| v.columns.iter().any(|x| x.name == c))
                        })
                        .unwrap_or(false)
                }
            };
            if !exists {
                return Err(Error::sql(
                    sqlstate::UNDEFINED_TABLE,
                    format!("{kind} \"{name}\" does not exist"),
                ));
            }
            let on = comment_key(kind, name);
            let change = match text {
                Some(text) => Change::PutObject(Box::new(Object::Comment {
                    on,
                    text: text.clone(),
                })),
                None => Change::ForgetObject(format!("comment:{on}")),
            };
            let owner = name.split('.').next().unwrap_or(name);
            Ok(vec![object_plan(owner, vec![change])])
        }
        DdlAction::CreateIndex {
            table,
            name,
            sql,
            if_not_exists,
            unique,
        } => Ok(vec![
            plan_index(
                mt,
                catalog,
                table,
                name,
                sql,
                *if_not_exists,
                unique.as_deref(),
            )
            .await?,
        ]),
        DdlAction::DropIndexes { names, if_exists } => {
            let mut out = Vec::new();
            for name in names {
                let Some(owner) = catalog.index_owner(name) else {
                    if *if_exists {
                        out.push(Planned::Skip(format!(
                            "index \"{name}\" does not exist, skipping"
                        )));
                        continue;
                    }
                    return Err(Error::sql(
                        sqlstate::UNDEFINED_OBJECT,
                        format!("index \"{name}\" does not exist"),
                    ));
                };
                let mut after = owner.clone();
                after.indexes.retain(|(i, _)| !i.eq_ignore_ascii_case(name));
                let shards = catalog.shards_of(owner)?;
                out.push(Planned::Do(Box::new(DdlPlan {
                    table: owner.name.clone(),
                    steps: steps_on(&shards, &format!("DROP INDEX IF EXISTS {}", quote(name))),
                    finish: vec![Change::PutTable(Box::new(after))],
                    ..DdlPlan::default()
                })));
            }
            Ok(out)
        }
        DdlAction::AlterTable { table, sql, added } => {
            Ok(vec![plan_alter(catalog, table, sql, added)?])
        }
        DdlAction::Rebuild { table, changes } => {
            Ok(vec![plan_rebuild(mt, catalog, table, changes).await?])
        }
        DdlAction::Distribute {
            table,
            column,
            colocate_with,
            shard_count,
        } => {
            let layout = match column {
                None => Layout::Reference,
                Some(c) => Layout::Hash {
                    column: c,
                    colocate_with: colocate_with.as_deref(),
                    shard_count: *shard_count,
                },
            };
            let t = catalog.table(table).ok_or_else(|| undefined_table(table))?;
            let refusal = format!(
                "table {} is not empty: lay it out before loading data (or empty it first)",
                t.name
            );
            Ok(vec![
                plan_distribute(mt, catalog, t, layout, &refusal).await?,
            ])
        }
    }
}

/// Lay an empty table out anew: hash-distributed on `column` (co-located as asked), or as a
/// reference table (`column` None). Each old shard drops the table only if it holds no row
/// (the step fails otherwise, and the job is undone).
/// Where [`plan_distribute`] lays a table out.
enum Layout<'a> {
    /// A copy on every node.
    Reference,
    /// On one shard: of colocation group `group`, or of a shared single-shard group.
    Single { group: Option<u64> },
    Hash {
        column: &'a str,
        colocate_with: Option<&'a str>,
        shard_count: Option<u32>,
    },
}

/// `refusal`: the error a shard answers if the table has rows (the job is then undone).
async fn plan_distribute(
    mt: &MetaTxn<'_>,
    catalog: &Catalog,
    t: &Table,
    layout: Layout<'_>,
    refusal: &str,
) -> Result<Planned> {
    let name = t.name.as_str();
    if let Some(child) = catalog.tables().find(|c| {
        !c.name.eq_ignore_ascii_case(name)
            && c.references.iter().any(|r| r.eq_ignore_ascii_case(name))
    }) {
        return Err(Error::unsupported(format!(
            "changing the layout of \"{}\" while table \"{}\" references it",
            t.name, child.name
        )));
    }
    // Its own foreign keys stay checkable only if it lands on its parents' shard.
    let parents_home = |group: u64| {
        t.references.iter().all(|r| {
            catalog
                .table(r)
                .is_some_and(|p| p.colocation == group || p.distribution == Distribution::Reference)
        })
    };
    let keeps_keys = match layout {
        Layout::Single { group: Some(g) } => parents_home(g),
        _ => t.references.is_empty(),
    };
    if !keeps_keys {
        return Err(Error::unsupported(format!(
            "changing the layout of \"{}\", which has foreign keys (declare them after distributing it)",
            t.name
        )));
    }
    let mut plan = DdlPlan {
        table: t.name.clone(),
        ..DdlPlan::default()
    };
    let (distribution, colocation) = match layout {
        Layout::Single { group: Some(id) } => (Distribution::Single, id),
        Layout::Single { group: None } => {
            let id = match free_single_group(mt, catalog).await {
                Some(id) => id,
                None => {
                    new_colocation(mt, catalog, ColocationKind::Single, 1, &mut plan)
                        .await?
                        .id
                }
            };
            (Distribution::Single, id)
        }
        Layout::Reference => {
            let existing = catalog
                .colocations
                .values()
                .find(|g| g.kind == ColocationKind::Reference)
                .map(|g| g.id);
            let id = match existing {
                Some(id) => id,
                None => new_reference_group(mt, catalog, &mut plan).await?,
            };
            (Distribution::Reference, id)
        }
        Layout::Hash {
            column: c,
            colocate_with,
            shard_count,
        } => {
            if t.column(c).is_none() {
                return Err(Error::sql(
                    sqlstate::UNDEFINED_COLUMN,
                    format!("column \"{c}\" of relation \"{}\" does not exist", t.name),
                ));
            }
            let uniques = unique_sets(t);
            if !includes_all(&uniques, c) {
                return Err(Error::unsupported(format!(
                    "distributing \"{}\" by \"{c}\": a unique constraint of it does not include \"{c}\"",
                    t.name
                )));
            }
            let count = shard_count.unwrap_or(catalog.settings.shard_count);
            let target = match colocate_with {
                Some(other) => {
                    let o = catalog.table(other).ok_or_else(|| undefined_table(other))?;
                    if !matches!(o.distribution, Distribution::Hash { .. }) {
                        return Err(Error::unsupported(format!(
                            "colocate_with \"{other}\", which is not hash-distributed"
                        )));
                    }
                    Some(o.colocation)
                }
                None => catalog
                    .colocations
                    .values()
                    .find(|g| {
                        g.kind == ColocationKind::Hash { shard_count: count }
                            && g.id != t.colocation
                    })
                    .map(|g| g.id),
            };
            let already = matches!(&t.distribution, Distribution::Hash { column: k } if k.eq_ignore_ascii_case(c));
            let id = match target {
                Some(id) if id == t.colocation && already => {
                    return Ok(Planned::Skip(format!(
                        "table \"{}\" is already distributed by \"{c}\" in that colocation group",
                        t.name
                    )))
                }
                Some(id) if id == t.colocation => {
                    return Err(Error::unsupported(format!(
                        "re-distributing \"{}\" within its own colocation group",
                        t.name
                    )))
                }
                Some(id) => id,
                None => {
                    new_colocation(
                        mt,
                        catalog,
                        ColocationKind::Hash { shard_count: count },
                        count,
                        &mut plan,
                    )
                    .await?
                    .id
                }
            };
            (
                Distribution::Hash {
                    column: c.to_string(),
                },
                id,
            )
        }
    };
    let old = catalog.shards_of(t)?;
    let new = shards_after(catalog, colocation, &plan);
    let serial = match &distribution {
        Distribution::Hash { column } => t
            .columns
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(column))
            .then(|| t.serial.clone())
            .flatten()
            .filter(|s| s.eq_ignore_ascii_case(column)),
        _ => None,
    };
    let after = Table {
        distribution,
        colocation,
        serial,
        key_default: None,
        ..t.clone()
    };
    let mut hidden = t.clone();
    hidden.state = TableState::Creating;
    let create: String = t
        .ddl
        .iter()
        .chain(t.indexes.iter().map(|(_, s)| s))
        .map(|s| format!("{s};"))
        .collect();
    let recreate: String = t
        .ddl
        .iter()
        .take(1)
        .map(|s| s.replacen("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
        .chain(t.ddl.iter().skip(1).cloned())
        .chain(
            t.indexes
                .iter()
                .map(|(_, s)| s.replacen("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1)),
        )
        .map(|s| format!("{s};"))
        .collect();
    let q = quote(&t.name);
    let check_and_drop = format!(
        "SELECT cairn_fail('{}') FROM {q} LIMIT 1;DROP TABLE {q};",
        refusal.replace('\'', "''"),
    );
    plan.hide = vec![Change::PutTable(Box::new(hidden))];
    plan.steps = steps_on(&old, &check_and_drop);
    plan.steps.extend(steps_on(
        &new,
        &format!("DROP TABLE IF EXISTS {q};{create}"),
    ));
    plan.undo = steps_on(&new, &format!("DROP TABLE IF EXISTS {q}"));
    plan.undo.extend(steps_on(&old, &recreate));
    plan.finish = vec![Change::PutTable(Box::new(after))];
    plan.abort = vec![Change::PutTable(Box::new(t.clone()))];
    Ok(Planned::Do(Box::new(plan)))
}

/// The column sets of a table's unique constraints, read from its SQLite DDL.
fn unique_sets(t: &Table) -> Vec<Vec<String>> {
    let Some(sql) = t.ddl.first() else {
        return Vec::new();
    };
    match super::translate::parse(sql).ok().and_then(|mut v| v.pop()) {
        Some(sqlparser::ast::Statement::CreateTable(mut c)) => {
            super::translate::create_table_info(&mut c)
                .map(|ct| ct.uniques)
                .unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// The reference group: one shard with a replica on every node.
async fn new_reference_group(
    mt: &MetaTxn<'_>,
    catalog: &Catalog,
    plan: &mut DdlPlan,
) -> Result<u64> {
    let id = mt.next("_colocations", 1).await? as u64;
    let every = catalog
        .nodes
        .values()
        .filter(|n| n.is_active())
        .map(|n| n.id)
        .collect::<Vec<_>>();
    let replicas = placement::leader_first(catalog, every, &BTreeMap::new());
    let shard = ShardId(mt.next("_shards", 1).await? as u64);
    let s = Shard {
        id: shard,
        colocation: id,
        initial: replicas.clone(),
        replicas,
        replication_factor: 0,
        zones: Vec::new(),
        removed: Vec::new(),
        leaving: Vec::new(),
        epochs: Vec::new(),
        epoch_next: 0,
    };
    plan.setup.push(meta::put_shard(&s)?);
    plan.new_shards.push(shard);
    let group = Colocation {
        id,
        kind: ColocationKind::Reference,
        shards: vec![shard],
    };
    plan.setup.push(meta::put_colocation(&group)?);
    Ok(id)
}

/// A change of the catalog alone (views, sequences, comments): no shard has anything to do.
fn object_plan(name: &str, changes: Vec<Change>) -> Planned {
    Planned::Do(Box::new(DdlPlan {
        table: name.to_string(),
        finish: changes,
        ..DdlPlan::default()
    }))
}

/// The counter a sequence draws from (`_cairn_sequences`).
pub fn sequence_key(name: &str) -> String {
    format!("seq:{}", name.to_lowercase())
}

/// Views whose queries name `relation`: dropped with it under CASCADE (and the views over
/// them), else an error, as in PostgreSQL.
fn dependent_views(catalog: &Catalog, relation: &str, cascade: bool) -> Result<Vec<Change>> {
    let mut doomed: Vec<String> = vec![relation.to_lowercase()];
    let mut changes = Vec::new();
    let mut i = 0;
    while i < doomed.len() {
        let target = doomed[i].clone();
        i += 1;
        for v in catalog.views() {
            let key = v.name.to_lowercase();
            if doomed.contains(&key) {
                continue;
            }
            let names_it = super::translate::parse(&v.query)
                .ok()
                .and_then(|mut s| s.pop())
                .is_some_and(|stmt| {
                    let mut found = false;
                    let _ = sqlparser::ast::visit_relations(&stmt, |n| {
                        found |= super::translate::object_name(n) == target;
                        std::ops::ControlFlow::<()>::Continue(())
                    });
                    found
                });
            if !names_it {
                continue;
            }
            if !cascade {
                return Err(Error::sql(
                    sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                    format!(
                        "cannot drop {relation} because view {} depends on it (use DROP ... CASCADE to drop the view too)",
                        v.name
                    ),
                ));
            }
            changes.push(Change::ForgetObject(format!("view:{key}")));
            doomed.push(key);
        }
    }
    Ok(changes)
}

fn plan_drop(catalog: &Catalog, name: &str, if_exists: bool, cascade: bool) -> Result<Planned> {
    let Some(table) = catalog.table(name) else {
        if if_exists {
            return Ok(Planned::Skip(format!(
                "table \"{name}\" does not exist, skipping"
            )));
        }
        return Err(undefined_table(name));
    };
    if let Some(child) = catalog.tables().find(|t| {
        !t.name.eq_ignore_ascii_case(name)
            && t.references.iter().any(|r| r.eq_ignore_ascii_case(name))
    }) {
        return Err(Error::sql(
            sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
            format!(
                "cannot drop table {name} because table {} references it; drop that table first",
                child.name
            ),
        ));
    }
    let mut finish = dependent_views(catalog, &table.name, cascade)?;
    // Its comments, and the sequences it owns, go with it.
    let prefix = |kind: &str| format!("comment:{kind}:{}", table.name.to_lowercase());
    for key in catalog.objects.keys() {
        if key == &prefix("table")
            || key.starts_with(&format!("{}.", prefix("column")))
            || key == &crate::catalog::cache_ttl_key(&table.name)
        {
            finish.push(Change::ForgetObject(key.clone()));
        }
    }
    for seq in catalog.sequences() {
        if seq
            .owned_by
            .as_ref()
            .is_some_and(|(t, _)| t.eq_ignore_ascii_case(&table.name))
        {
            finish.push(Change::ForgetObject(format!(
                "sequence:{}",
                seq.name.to_lowercase()
            )));
        }
    }
    finish.push(Change::ForgetTable(table.name.clone()));
    let shards = catalog.shards_of(table)?;
    let mut hidden = table.clone();
    hidden.state = TableState::Dropping;
    Ok(Planned::Do(Box::new(DdlPlan {
        table: table.name.clone(),
        hide: vec![Change::PutTable(Box::new(hidden))],
        steps: steps_on(
            &shards,
            &format!("DROP TABLE IF EXISTS {}", quote(&table.name)),
        ),
        finish,
        abort: vec![Change::PutTable(Box::new(table.clone()))],
        ..DdlPlan::default()
    })))
}

async fn plan_index(
    mt: &MetaTxn<'_>,
    catalog: &Catalog,
    table: &str,
    name: &str,
    sql: &str,
    if_not_exists: bool,
    unique: Option<&[String]>,
) -> Result<Planned> {
    let t = catalog.table(table).ok_or_else(|| undefined_table(table))?;
    // Each shard checks uniqueness among its own rows only: that is the whole table's only
    // when equal keys always land on the same shard.
    let column = match &t.distribution {
        Distribution::Hash { column } | Distribution::List { column } => Some(column),
        _ => None,
    };
    let mut relayout = false;
    if let (Some(columns), Some(column)) = (unique, column) {
        if !columns.iter().any(|c| c.eq_ignore_ascii_case(column)) {
            // A hash table that is still empty and tied to no other is laid out anew on
            // one shard, where the constraint holds (as migrations add UNIQUE after
            // CREATE TABLE); otherwise the constraint cannot be kept.
            let tied = !t.references.is_empty()
                || catalog.tables().any(|c| {
                    !c.name.eq_ignore_ascii_case(&t.name)
                        && c.references.iter().any(|r| r.eq_ignore_ascii_case(&t.name))
                });
            if tied || !matches!(t.distribution, Distribution::Hash { .. }) {
                return Err(Error::unsupported(format!(
                    "a unique index or constraint on \"{}\" that does not include its \
                     distribution column \"{column}\"",
                    t.name
                )));
            }
            relayout = true;
        }
    }
    if catalog.index_owner(name).is_some() || catalog.any_table(name).is_some() {
        if if_not_exists {
            return Ok(Planned::Skip(format!(
                "relation \"{name}\" already exists, skipping"
            )));
        }
        return Err(Error::sql(
            sqlstate::DUPLICATE_TABLE,
            format!("relation \"{name}\" already exists"),
        ));
    }
    super::scratch::validate(&[t], &[sql])?;
    if relayout {
        let mut with_index = t.clone();
        with_index.indexes.push((name.to_string(), sql.to_string()));
        let refusal = crate::error::coded_message(
            sqlstate::FEATURE_NOT_SUPPORTED,
            &format!(
                "a unique index or constraint on \"{}\" without its distribution column \"{}\": \
                 each shard checks its own rows, so the table must move to one shard, which it \
                 does only while empty",
                t.name,
                column.map(String::as_str).unwrap_or("")
            ),
        );
        return plan_distribute(
            mt,
            catalog,
            &with_index,
            Layout::Single { group: None },
            &refusal,
        )
        .await;
    }
    let shards = catalog.shards_of(t)?;
    let mut after = t.clone();
    after.indexes.push((name.to_string(), sql.to_string()));
    Ok(Planned::Do(Box::new(DdlPlan {
        table: t.name.clone(),
        steps: steps_on(&shards, sql),
        undo: steps_on(&shards, &format!("DROP INDEX IF EXISTS {}", quote(name))),
        finish: vec![Change::PutTable(Box::new(after))],
        ..DdlPlan::default()
    })))
}

/// ALTER TABLE changes SQLite cannot make in place: every shard rebuilds the table — a new
/// one made from the changed definition, the rows copied over (converted for a new type,
/// checked against new constraints), the old one dropped, the new one renamed, the indexes
/// made again. A shard whose rows break the new definition fails the step, and the job is
/// undone on the others (rebuilt back). Not for a table others reference: dropping it
/// would act on their foreign keys.
async fn plan_rebuild(
    mt: &MetaTxn<'_>,
    catalog: &Catalog,
    table: &str,
    changes: &[AlterChange],
) -> Result<Planned> {
    use sqlparser::ast::{ColumnOption, ColumnOptionDef, Statement as S, TableConstraint};
    let t = catalog.table(table).ok_or_else(|| undefined_table(table))?;
    if let Some(planned) = drop_columns_in_place(catalog, t, changes)? {
        return Ok(planned);
    }
    if let Some(child) = catalog.tables().find(|c| {
        !c.name.eq_ignore_ascii_case(&t.name)
            && c.references.iter().any(|r| r.eq_ignore_ascii_case(&t.name))
    }) {
        return Err(Error::unsupported(format!(
            "this ALTER TABLE of \"{}\" while table \"{}\" references it (it rebuilds the table)",
            t.name, child.name
        )));
    }
    let current = super::scratch::create_sql(t)?;
    let mut parsed = super::translate::parse(&current)?;
    let Some(S::CreateTable(mut ct)) = parsed.pop() else {
        return Err(Error::internal(format!("{} has no CREATE TABLE", t.name)));
    };
    let mut after = t.clone();
    // Old column name → the expression the new table's column is copied from.
    let mut copied: Vec<(String, String)> = t
        .columns
        .iter()
        .map(|c| (c.name.clone(), quote(&c.name)))
        .collect();
    let position = |ct: &sqlparser::ast::CreateTable, name: &str| {
        ct.columns
            .iter()
            .position(|c| super::translate::ident_name(&c.name).eq_ignore_ascii_case(name))
    };
    let undefined_column = |name: &str| {
        Error::sql(
            sqlstate::UNDEFINED_COLUMN,
            format!(
                "column \"{name}\" of relation \"{}\" does not exist",
                t.name
            ),
        )
    };
    let mut notice = None;
    // A key to a single-shard table from one elsewhere: the (empty) table moves to its
    // parent's shard, where the key can be checked — as CREATE TABLE would have placed it.
    let mut move_to: Option<u64> = None;
    for change in changes {
        match change {
            AlterChange::AddColumn { def, column } => {
                if position(&ct, &column.name).is_some() {
                    return Err(Error::sql(
                        sqlstate::DUPLICATE_COLUMN,
                        format!(
                            "column \"{}\" of relation \"{}\" already exists",
                            column.name, t.name
                        ),
                    ));
                }
                ct.columns.push((**def).clone());
                after.columns.push(column.clone());
            }
            AlterChange::DropColumn { name, if_exists } => {
                let Some(at) = position(&ct, name) else {
                    if *if_exists {
                        notice = Some(format!(
                            "column \"{name}\" of relation \"{}\" does not exist, skipping",
                            t.name
                        ));
                        continue;
                    }
                    return Err(undefined_column(name));
                };
                if t.distribution_column()
                    .is_some_and(|d| d.eq_ignore_ascii_case(name))
                {
                    return Err(Error::unsupported(format!(
                        "dropping \"{name}\", the distribution column of \"{}\"",
                        t.name
                    )));
                }
                ct.columns.remove(at);
                // Constraints and indexes over the column go with it, as in PostgreSQL.
                let mentions = |text: &str| {
                    let lower = text.to_lowercase();
                    let n = name.to_lowercase();
                    lower.contains(&format!("\"{n}\""))
                        || lower
                            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .any(|w| w == n)
                };
                ct.constraints.retain(|c| !mentions(&c.to_string()));
                after.indexes.retain(|(_, sql)| {
                    let columns = sql.rsplit_once('(').map_or("", |(_, c)| c);
                    !mentions(columns)
                });
                after.columns.retain(|c| !c.name.eq_ignore_ascii_case(name));
                copied.retain(|(c, _)| !c.eq_ignore_ascii_case(name));
            }
            AlterChange::NotNull { column, not_null } => {
                let at = position(&ct, column).ok_or_else(|| undefined_column(column))?;
                let options = &mut ct.columns[at].options;
                options.retain(|o| !matches!(o.option, ColumnOption::NotNull | ColumnOption::Null));
                if *not_null {
                    options.push(ColumnOptionDef {
                        name: None,
                        option: ColumnOption::NotNull,
                    });
                }
            }
            AlterChange::Default { column, default } => {
                let at = position(&ct, column).ok_or_else(|| undefined_column(column))?;
                let options = &mut ct.columns[at].options;
                options.retain(|o| !matches!(o.option, ColumnOption::Default(_)));
                if let Some(e) = default {
                    options.push(ColumnOptionDef {
                        name: None,
                        option: ColumnOption::Default((**e).clone()),
                    });
                }
            }
            AlterChange::Type {
                column,
                data_type,
                using,
            } => {
                let at =
                    position(&ct, &column.name).ok_or_else(|| undefined_column(&column.name))?;
                let old = t
                    .column(&column.name)
                    .cloned()
                    .ok_or_else(|| undefined_column(&column.name))?;
                let def = &mut ct.columns[at];
                def.data_type = (**data_type).clone();
                // The old type's checks go; the new type's come with its definition.
                def.options
                    .retain(|o| !o.name.as_ref().is_some_and(|n| n.value.starts_with('[')));
                super::translate::typed_column_options(column, &mut def.options)?;
                if let Some(slot) = after
                    .columns
                    .iter_mut()
                    .find(|c| c.name.eq_ignore_ascii_case(&column.name))
                {
                    *slot = column.clone();
                }
                let from = match using {
                    Some(e) => e.to_string(),
                    None => format!(
                        "cairn_assign({}, '{}', '{}')",
                        quote(&old.name),
                        match column.typmod {
                            Some(m) => m.type_name(column.ty),
                            None => column.ty.name().to_string(),
                        },
                        old.ty.name()
                    ),
                };
                if let Some(c) = copied
                    .iter_mut()
                    .find(|(c, _)| c.eq_ignore_ascii_case(&column.name))
                {
                    c.1 = from;
                }
            }
            AlterChange::ForeignKey { key, constraint } => {
                let parent = catalog
                    .table(&key.table)
                    .ok_or_else(|| undefined_table(&key.table))?;
                let colocated = match (&parent.distribution, &t.distribution) {
                    (Distribution::Reference, _) => true,
                    (Distribution::Single, Distribution::Single) => {
                        parent.colocation == t.colocation
                    }
                    (Distribution::Hash { column: p }, Distribution::Hash { column: c }) => {
                        parent.colocation == t.colocation
                            && key.columns.len() == 1
                            && key.columns[0].eq_ignore_ascii_case(c)
                            && key
                                .referred
                                .first()
                                .is_none_or(|r| r.eq_ignore_ascii_case(p))
                    }
                    _ => parent.name.eq_ignore_ascii_case(&t.name),
                };
                let movable = matches!(parent.distribution, Distribution::Single)
                    && matches!(
                        t.distribution,
                        Distribution::Single | Distribution::Hash { .. }
                    );
                if !colocated && movable {
                    move_to = Some(parent.colocation);
                } else if !colocated {
                    return Err(Error::sql(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "cannot add a foreign key from \"{}\" to \"{}\": their rows are not on the \
                             same shards, so it could not be checked; co-locate them (the key on \
                             both tables' distribution columns) or make \"{}\" a reference table",
                            t.name, parent.name, parent.name
                        ),
                    ));
                }
                if !matches!(parent.distribution, Distribution::Reference) {
                    ct.constraints.push((**constraint).clone());
                }
                if !after
                    .references
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(&parent.name))
                {
                    after.references.push(parent.name.clone());
                }
            }
            AlterChange::Check(constraint) => {
                if let TableConstraint::Check(_) = constraint.as_ref() {
                    ct.constraints.push((**constraint).clone());
                }
            }
        }
    }
    let q = quote(&t.name);
    let mut renamed = ct.clone();
    renamed.name = sqlparser::ast::ObjectName::from(vec![sqlparser::ast::Ident::with_quote(
        '"',
        "_cairn_rebuild",
    )]);
    let new_create = S::CreateTable(renamed).to_string();
    ct.name =
        sqlparser::ast::ObjectName::from(vec![sqlparser::ast::Ident::with_quote('"', &t.name)]);
    after.ddl = vec![S::CreateTable(ct).to_string()];
    super::scratch::validate(&[&after], &[])?;
    if let Some(group) = move_to {
        let refusal = crate::error::coded_message(
            sqlstate::FEATURE_NOT_SUPPORTED,
            &format!(
                "a foreign key from \"{}\" to a single-shard table: the table must move to its \
                 parent's shard, which it does only while empty",
                t.name
            ),
        );
        let mut placed = plan_distribute(
            mt,
            catalog,
            &after,
            Layout::Single { group: Some(group) },
            &refusal,
        )
        .await?;
        if let Planned::Do(plan) = &mut placed {
            plan.notice = Some(format!(
                "table \"{}\" moved to the shard of the table its foreign key references",
                t.name
            ));
        }
        return Ok(placed);
    }
    let rebuild = |create: &str, columns: &[(String, String)], indexes: &[(String, String)]| {
        let names: Vec<String> = columns.iter().map(|(c, _)| quote(c)).collect();
        let values: Vec<&str> = columns.iter().map(|(_, e)| e.as_str()).collect();
        let mut script = format!(
            "DROP TABLE IF EXISTS \"_cairn_rebuild\";{create};INSERT INTO \"_cairn_rebuild\" ({}) SELECT {} FROM {q};DROP TABLE {q};ALTER TABLE \"_cairn_rebuild\" RENAME TO {q};",
            names.join(", "),
            values.join(", ")
        );
        for (_, sql) in indexes {
            script.push_str(sql);
            script.push(';');
        }
        script
    };
    let forward = rebuild(&new_create, &copied, &after.indexes);
    // Undo: back to the old definition, with the columns both have.
    let mut old_ct = super::translate::parse(&current)?;
    let Some(S::CreateTable(mut old_ct)) = old_ct.pop() else {
        return Err(Error::internal("old CREATE TABLE"));
    };
    old_ct.name = sqlparser::ast::ObjectName::from(vec![sqlparser::ast::Ident::with_quote(
        '"',
        "_cairn_rebuild",
    )]);
    let kept: Vec<(String, String)> = copied
        .iter()
        .filter(|(c, _)| t.column(c).is_some())
        .map(|(c, _)| (c.clone(), quote(c)))
        .collect();
    let backward = rebuild(&S::CreateTable(old_ct).to_string(), &kept, &t.indexes);
    let shards = catalog.shards_of(t)?;
    Ok(Planned::Do(Box::new(DdlPlan {
        table: t.name.clone(),
        steps: steps_on(&shards, &forward),
        undo: steps_on(&shards, &backward),
        finish: vec![Change::PutTable(Box::new(after))],
        notice,
        ..DdlPlan::default()
    })))
}

/// `DROP COLUMN`s SQLite makes in place (no key, foreign key or other table's check uses
/// the column; indexes on it are dropped first, as in PostgreSQL) — also for a table that
/// others reference. None when some change needs a rebuild.
fn drop_columns_in_place(
    catalog: &Catalog,
    t: &Table,
    changes: &[AlterChange],
) -> Result<Option<Planned>> {
    let mut names = Vec::new();
    for change in changes {
        let AlterChange::DropColumn { name, if_exists } = change else {
            return Ok(None);
        };
        if t.column(name).is_none() {
            if *if_exists {
                continue;
            }
            return Err(Error::sql(
                sqlstate::UNDEFINED_COLUMN,
                format!(
                    "column \"{name}\" of relation \"{}\" does not exist",
                    t.name
                ),
            ));
        }
        if t.distribution_column()
            .is_some_and(|d| d.eq_ignore_ascii_case(name))
        {
            return Err(Error::unsupported(format!(
                "dropping \"{name}\", the distribution column of \"{}\"",
                t.name
            )));
        }
        names.push(name.clone());
    }
    let on = |sql: &str, name: &str| {
        let columns = sql.rsplit_once('(').map_or("", |(_, c)| c).to_lowercase();
        let n = name.to_lowercase();
        columns.contains(&format!("\"{n}\""))
            || columns
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|w| w == n)
    };
    let mut after = t.clone();
    let mut sql = String::new();
    for name in &names {
        for (index, isql) in &t.indexes {
            if on(isql, name) && after.indexes.iter().any(|(i, _)| i == index) {
                sql.push_str(&format!("DROP INDEX IF EXISTS {};", quote(index)));
                after.indexes.retain(|(i, _)| i != index);
            }
        }
        sql.push_str(&format!(
            "ALTER TABLE {} DROP COLUMN {};",
            quote(&t.name),
            quote(name)
        ));
        after.columns.retain(|c| !c.name.eq_ignore_ascii_case(name));
    }
    // SQLite refuses a column in a key, a foreign key or a check of another column: then
    // the table is rebuilt instead.
    if super::scratch::validate(&[t], &[&sql]).is_err() {
        return Ok(None);
    }
    after.ddl.push(
        names
            .iter()
            .map(|n| format!("ALTER TABLE {} DROP COLUMN {};", quote(&t.name), quote(n)))
            .collect(),
    );
    let shards = catalog.shards_of(t)?;
    Ok(Some(Planned::Do(Box::new(DdlPlan {
        table: t.name.clone(),
        steps: steps_on(&shards, &sql),
        finish: vec![Change::PutTable(Box::new(after))],
        ..DdlPlan::default()
    }))))
}

fn plan_alter(catalog: &Catalog, table: &str, sql: &str, added: &[Column]) -> Result<Planned> {
    let t = catalog.table(table).ok_or_else(|| undefined_table(table))?;
    for c in added {
        if t.column(&c.name).is_some() {
            return Err(Error::sql(
                sqlstate::DUPLICATE_COLUMN,
                format!(
                    "column \"{}\" of relation \"{}\" already exists",
                    c.name, t.name
                ),
            ));
        }
    }
    super::scratch::validate(&[t], &[sql])?;
    let shards = catalog.shards_of(t)?;
    let mut after = t.clone();
    after.columns.extend(added.iter().cloned());
    after.ddl.push(sql.to_string());
    let undo: String = added
        .iter()
        .map(|c| {
            format!(
                "ALTER TABLE {} DROP COLUMN {};",
                quote(&t.name),
                quote(&c.name)
            )
        })
        .collect();
    Ok(Planned::Do(Box::new(DdlPlan {
        table: t.name.clone(),
        steps: steps_on(&shards, sql),
        undo: steps_on(&shards, &undo),
        finish: vec![Change::PutTable(Box::new(after))],
        ..DdlPlan::default()
    })))
}

/// Shards being placed by this plan, counted so placement spreads them.
#[derive(Default)]
struct Placing {
    replicas: BTreeMap<crate::ids::NodeId, usize>,
    leaders: BTreeMap<crate::ids::NodeId, usize>,
}

async fn new_shard(
    mt: &MetaTxn<'_>,
    catalog: &Catalog,
    colocation: u64,
    zones: &[String],
    factor: Option<u32>,
    placing: &mut Placing,
    plan: &mut DdlPlan,
) -> Result<ShardId> {
    let rf = factor.unwrap_or(catalog.settings.replication_factor);
    let want = placement::wanted(catalog, rf, zones).max(1);
    let replicas = placement::choose(
        catalog,
        &mt.down_nodes(),
        &[],
        want,
        zones,
        &placing.replicas,
    );
    if replicas.is_empty() {
        return Err(Error::sql(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!(
                "no node is in zone(s) {}; start nodes with --zone",
                zones.join(", ")
            ),
        ));
    }
    let replicas = placement::leader_first(catalog, replicas, &placing.leaders);
    for r in &replicas {
        *placing.replicas.entry(*r).or_default() += 1;
    }
    *placing.leaders.entry(replicas[0]).or_default() += 1;
    let id = ShardId(mt.next("_shards", 1).await? as u64);
    let shard = Shard {
        id,
        colocation,
        initial: replicas.clone(),
        replicas,
        replication_factor: rf,
        zones: zones.to_vec(),
        removed: Vec::new(),
        leaving: Vec::new(),
        epochs: Vec::new(),
        epoch_next: 0,
    };
    plan.setup.push(meta::put_shard(&shard)?);
    plan.new_shards.push(id);
    Ok(id)
}

/// A one-shard group a new table can join soon: one whose shard's writer is not kept by
/// one transaction throughout `SHARED_SHARD_BUSY` (a CREATE there would wait for it to
/// end). None: make a new group.
async fn free_single_group(mt: &MetaTxn<'_>, catalog: &Catalog) -> Option<u64> {
    for group in catalog
        .colocations
        .values()
        .filter(|g| g.kind == ColocationKind::Single)
    {
        let Some(&shard) = group.shards.first() else {
            continue;
        };
        // Bounded: this runs holding the meta writer, and the shard's leader may not answer
        // (no answer in time counts as busy).
        let span = crate::limits::SHARED_SHARD_BUSY;
        let busy =
            tokio::time::timeout(span * 2, mt.cluster().writer_held_throughout(shard, span)).await;
        if let Ok(Ok(false)) = busy {
            return Some(group.id);
        }
    }
    None
}

async fn new_colocation(
    mt: &MetaTxn<'_>,
    catalog: &Catalog,
    kind: ColocationKind,
    shard_count: u32,
    plan: &mut DdlPlan,
) -> Result<Colocation> {
    let id = mt.next("_colocations", 1).await? as u64;
    let mut placing = Placing::default();
    let mut shards = Vec::new();
    for _ in 0..shard_count {
        shards.push(new_shard(mt, catalog, id, &[], None, &mut placing, plan).await?);
    }
    let group = Colocation { id, kind, shards };
    plan.setup.push(meta::put_colocation(&group)?);
    Ok(group)
}

fn includes_all(uniques: &[Vec<String>], column: &str) -> bool {
    uniques
        .iter()
        .all(|u| u.iter().any(|c| c.eq_ignore_ascii_case(column)))
}

/// The SQLite expression of `column`'s DEFAULT in a CREATE TABLE.
fn default_of(ct: &CreateTable, column: &str) -> Option<String> {
    ct.ast
        .columns
        .iter()
        .find(|c| super::translate::ident_name(&c.name).eq_ignore_ascii_case(column))?
        .options
        .iter()
        .find_map(|o| match &o.option {
            sqlparser::ast::ColumnOption::Default(e) => Some(e.to_string()),
            _ => None,
        })
}

async fn plan_create(mt: &MetaTxn<'_>, catalog: &Catalog, ct: &CreateTable) -> Result<Planned> {
    if let Some(existing) = catalog.any_table(&ct.name) {
        if ct.if_not_exists && existing.state == TableState::Ready {
            return Ok(Planned::Skip(format!(
                "relation \"{}\" already exists, skipping",
                ct.name
            )));
        }
        return Err(Error::sql(
            sqlstate::DUPLICATE_TABLE,
            format!("relation \"{}\" already exists", ct.name),
        ));
    }
    if catalog.index_owner(&ct.name).is_some() {
        return Err(Error::sql(
            sqlstate::DUPLICATE_TABLE,
            format!("relation \"{}\" already exists", ct.name),
        ));
    }
    if let Some(of) = &ct.partition_of {
        return plan_partition(mt, catalog, ct, of).await;
    }
    let mut plan = DdlPlan {
        table: ct.name.clone(),
        ..DdlPlan::default()
    };
    // Foreign keys decide first: they can only be checked inside one shard.
    let mut unenforced: Vec<String> = Vec::new();
    let mut forced: Option<(Distribution, Option<u64>)> = None;
    let mut references = Vec::new();
    for fk in &ct.references {
        if fk.table.eq_ignore_ascii_case(&ct.name) {
            continue;
        }
        let parent = catalog
            .table(&fk.table)
            .ok_or_else(|| undefined_table(&fk.table))?;
        references.push(parent.name.clone());
        match &parent.distribution {
            Distribution::Single => {
                forced = Some((Distribution::Single, Some(parent.colocation)));
            }
            Distribution::Reference => unenforced.push(parent.name.clone()),
            Distribution::Hash { column } => {
                let referred = if fk.referred.is_empty() {
                    vec![column.clone()]
                } else {
                    fk.referred.clone()
                };
                let ok = fk.columns.len() == 1
                    && referred.len() == 1
                    && referred[0].eq_ignore_ascii_case(column)
                    && includes_all(&ct.uniques, &fk.columns[0]);
                if !ok {
                    return Err(Error::sql(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "cannot create a foreign key from \"{}\" to \"{}\": \"{}\" is distributed \
                             by \"{column}\", so its rows can only be checked on the same shard; make the \
                             key reference \"{column}\" and include the referencing column in \"{}\"'s \
                             primary key (the tables are then co-located), or make \"{}\" a reference table",
                            ct.name, parent.name, parent.name, ct.name, parent.name
                        ),
                    ));
                }
                forced = Some((
                    Distribution::Hash {
                        column: fk.columns[0].clone(),
                    },
                    Some(parent.colocation),
                ));
            }
            Distribution::List { .. } => {
                return Err(Error::unsupported(format!(
                    "foreign key to list-partitioned table \"{}\"",
                    parent.name
                )))
            }
        }
    }
    let column_exists = |c: &str| ct.columns.iter().any(|x| x.name.eq_ignore_ascii_case(c));
    let (distribution, colocate) = match (&forced, &ct.partition_by) {
        (Some(f), None) => f.clone(),
        (Some(_), Some(_)) => {
            return Err(Error::unsupported(
                "PARTITION BY on a table whose foreign key decides its placement",
            ))
        }
        (None, Some(PartitionBy::List(c))) | (None, Some(PartitionBy::Hash(c))) => {
            if !column_exists(c) {
                return Err(Error::sql(
                    sqlstate::UNDEFINED_COLUMN,
                    format!("column \"{c}\" named in partition key does not exist"),
                ));
            }
            if !includes_all(&ct.uniques, c) {
                return Err(Error::unsupported(format!(
                    "a unique constraint on \"{}\" that does not include the partition column \"{c}\"",
                    ct.name
                )));
            }
            let d = match &ct.partition_by {
                Some(PartitionBy::List(_)) => Distribution::List { column: c.clone() },
                _ => Distribution::Hash { column: c.clone() },
            };
            (d, None)
        }
        (None, None) => match ct.primary_key.first() {
            Some(k) if includes_all(&ct.uniques, k) => {
                (Distribution::Hash { column: k.clone() }, None)
            }
            _ => (Distribution::Single, None),
        },
    };
    let colocate = match (&ct.colocate_with, colocate) {
        (Some(other), None) => {
            let t = catalog.table(other).ok_or_else(|| undefined_table(other))?;
            let both_hash = matches!(t.distribution, Distribution::Hash { .. })
                && matches!(distribution, Distribution::Hash { .. });
            let both_list = matches!(t.distribution, Distribution::List { .. })
                && matches!(distribution, Distribution::List { .. });
            if !both_hash && !both_list {
                return Err(Error::unsupported(format!(
                    "colocate_with \"{other}\": both tables must be hash-distributed, or both list-partitioned"
                )));
            }
            Some(t.colocation)
        }
        (Some(_), Some(_)) => {
            return Err(Error::unsupported(
                "colocate_with on a table whose foreign key decides its placement",
            ))
        }
        (None, c) => c,
    };
    // A table asking for its own replication factor gets shards of its own (unless told to
    // share another table's), given that factor once they exist.
    let own_factor = ct.replication_factor.filter(|_| colocate.is_none());
    if ct.replication_factor.is_some() && matches!(distribution, Distribution::List { .. }) {
        return Err(Error::unsupported(
            "replication_factor on a list-partitioned table (give each partition its own: CREATE TABLE ... PARTITION OF ... WITH (zones = '...', replication_factor = n))",

        ));
    }
    let shared_single = match own_factor {
        Some(_) => None,
        None => free_single_group(mt, catalog).await,
    };
    let colocation = match &distribution {
        Distribution::Single => match colocate.or(shared_single) {
            Some(id) => id,
            None => {
                new_colocation(mt, catalog, ColocationKind::Single, 1, &mut plan)
                    .await?
                    .id
            }
        },
        Distribution::Hash { .. } => {
            let count = ct.shard_count.unwrap_or(catalog.settings.shard_count);
            let existing = match colocate {
                Some(id) => {
                    let g = catalog
                        .colocations
                        .get(&id)
                        .ok_or_else(|| Error::Corrupt(format!("missing colocation group {id}")))?;
                    if let (Some(n), ColocationKind::Hash { shard_count }) =
                        (ct.shard_count, &g.kind)
                    {
                        if n != *shard_count {
                            return Err(Error::sql(
                                sqlstate::INVALID_PARAMETER_VALUE,
                                format!("shard_count {n} differs from the {shard_count} shards of the table it is co-located with"),
                            ));
                        }
                    }
                    Some(id)
                }
                None if own_factor.is_some() => None,
                None => catalog
                    .colocations
                    .values()
                    .find(|g| g.kind == ColocationKind::Hash { shard_count: count })
                    .map(|g| g.id),
            };
            match existing {
                Some(id) => id,
                None => {
                    new_colocation(
                        mt,
                        catalog,
                        ColocationKind::Hash { shard_count: count },
                        count,
                        &mut plan,
                    )
                    .await?
                    .id
                }
            }
        }
        // Co-located list tables share the partitions (and so the shards) of the first.
        Distribution::List { .. } => match colocate {
            Some(id) => id,
            None => {
                new_colocation(
                    mt,
                    catalog,
                    ColocationKind::List {
                        partitions: Vec::new(),
                    },
                    0,
                    &mut plan,
                )
                .await?
                .id
            }
        },
        Distribution::Reference => {
            unreachable!("reference tables come from create_reference_table")
        }
    };
    let sqlite = ct.sqlite_sql(&unenforced);
    let key_default = distribution
        .clone()
        .column_name()
        .and_then(|c| default_of(ct, &c));
    let serial = match &distribution {
        Distribution::Single => None,
        _ => ct.serial.clone(),
    };
    let table = Table {
        name: ct.name.clone(),
        columns: ct.columns.clone(),
        ddl: vec![sqlite.clone()],
        indexes: Vec::new(),
        references,
        key_default,
        distribution,
        colocation,
        state: TableState::Ready,
        serial,
        numbered: ct.serial.clone(),
        identity: ct.identity.clone(),
    };
    super::scratch::validate(&[&table], &[])?;
    // The shards of a new group are not in `catalog` yet: read them from the plan.
    let shards = shards_after(catalog, colocation, &plan);
    let mut hidden = table.clone();
    hidden.state = TableState::Creating;
    plan.hide = vec![Change::PutTable(Box::new(hidden))];
    // Anything under this name on a shard is left from a failed attempt: the catalog is
    // the truth, and it has no such table.
    let drop = format!("DROP TABLE IF EXISTS {}", quote(&ct.name));
    plan.steps = steps_on(&shards, &format!("{drop};{sqlite}"));
    plan.undo = steps_on(&shards, &drop);
    plan.finish = vec![Change::PutTable(Box::new(table))];
    if let Some(factor) = own_factor {
        plan.finish
            .push(Change::SetReplicationFactor { colocation, factor });
    }
    if let Some(ttl) = ct.cache_ttl {
        plan.finish
            .push(Change::PutObject(Box::new(Object::CacheTtl {
                table: ct.name.to_lowercase(),
                millis: ttl.as_millis() as u64,
            })));
    }
    plan.abort = vec![Change::ForgetTable(ct.name.clone())];
    if !unenforced.is_empty() {
        plan.notice = Some(format!(
            "foreign keys from \"{}\" to reference table(s) {} are not enforced",
            ct.name,
            unenforced.join(", ")
        ));
    }
    Ok(Planned::Do(Box::new(plan)))
}

/// The shards of colocation group `id`, including ones this plan creates.
fn shards_after(catalog: &Catalog, id: u64, plan: &DdlPlan) -> Vec<ShardId> {
    match catalog.colocations.get(&id) {
        Some(g) => g.shards.clone(),
        None => plan.new_shards.clone(),
    }
}

async fn plan_partition(
    mt: &MetaTxn<'_>,
    catalog: &Catalog,
    ct: &CreateTable,
    of: &super::translate::PartitionOf,
) -> Result<Planned> {
    let parent = catalog
        .table(&of.parent)
        .ok_or_else(|| undefined_table(&of.parent))?;
    let group = catalog.colocation_of(parent)?;
    let ColocationKind::List { partitions } = &group.kind else {
        return Err(Error::sql(
            sqlstate::WRONG_OBJECT_TYPE,
            format!("table \"{}\" is not partitioned by list", parent.name),
        ));
    };
    for p in partitions {
        let overlap = match (&p.values, &of.values) {
            (None, None) => true,
            (Some(a), Some(b)) => a.iter().any(|v| b.contains(v)),
            _ => false,
        };
        if overlap {
            return Err(Error::sql(
                sqlstate::INVALID_OBJECT_DEFINITION,
                format!(
                    "partition \"{}\" would overlap partition \"{}\"",
                    ct.name, p.name
                ),
            ));
        }
    }
    let mut plan = DdlPlan {
        table: parent.name.clone(),
        ..DdlPlan::default()
    };
    let mut placing = Placing::default();
    let shard = new_shard(
        mt,
        catalog,
        group.id,
        &of.zones,
        of.replication_factor,
        &mut placing,
        &mut plan,
    )
    .await?;
    let mut grown = group.clone();
    grown.shards.push(shard);
    if let ColocationKind::List { partitions } = &mut grown.kind {
        partitions.push(ListPartition {
            name: ct.name.clone(),
            values: of.values.clone(),
            zones: of.zones.clone(),
            shard,
        });
    }
    let mut sql = format!("DROP TABLE IF EXISTS {};", quote(&parent.name));
    for s in parent
        .ddl
        .iter()
        .chain(parent.indexes.iter().map(|(_, s)| s))
    {
        sql.push_str(s);
        sql.push(';');
    }
    plan.steps = vec![JobStep { shard, sql }];
    plan.finish = vec![Change::PutColocation(Box::new(grown))];
    Ok(Planned::Do(Box::new(plan)))
}

trait ColumnName {
    fn column_name(self) -> Option<String>;
}

impl ColumnName for Distribution {
    fn column_name(self) -> Option<String> {
        match self {
            Distribution::Hash { column } | Distribution::List { column } => Some(column),
            _ => None,
        }
    }
}
