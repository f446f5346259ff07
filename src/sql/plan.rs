//! The planner: where each part of a statement runs (DESIGN.md decision 6).
//!
//! - No table: the coordinator's scratch SQLite ([`Plan::Local`]).
//! - Every table on one shard (single-shard and reference tables, or a colocation group of
//!   one shard), or a single distributed table whose distribution column the WHERE clause
//!   pins (`k = v`, `k IN (...)`): the whole statement on those shards ([`Plan::Shards`]).
//!   A single-table SELECT that needs no merging (no aggregates, DISTINCT, ORDER BY, LIMIT,
//!   window functions) runs on every shard and the rows are concatenated.
//! - Any other query: each table's rows, filtered by the WHERE conjuncts that concern only
//!   it (and cut to ORDER BY + LIMIT when that is safe), are pulled from its shards into a
//!   scratch SQLite at the coordinator, where the statement runs unchanged
//!   ([`Plan::Gather`]). Same engine, so the result is what one database would return.
//! - INSERT ... VALUES: rows split by the shard of their distribution value; serial values
//!   drawn from a cluster-wide sequence, other non-literal keys evaluated at the coordinator
//!   so every replica stores the same value ([`Plan::Insert`]). INSERT ... SELECT: the query
//!   is planned on its own, its rows inserted by shard ([`Plan::InsertSelect`]).
//! - UPDATE/DELETE of a distributed table reading no other table: the pinned shards, or all.
//!
//! A SELECT, traced: `SELECT u.name, count(*) FROM users u JOIN reads r ON r.uid = u.id
//! WHERE u.region = 'beijing' GROUP BY u.name` → tables users, reads in different groups →
//! Gather: pull `SELECT * FROM users AS u WHERE u.region = 'beijing'` from users' shards and
//! `SELECT * FROM reads AS r` from reads' shards → scratch SQLite runs the statement.

use super::scratch;
use super::translate::{self, placeholder_index, Translated};
use crate::catalog::{Catalog, Table};
use crate::error::{sqlstate, Error, Result};
use crate::ids::ShardId;
use crate::limits;
use crate::types;
use rusqlite::types::Value;
use sqlparser::ast::{
    self, visit_expressions, visit_relations, BinaryOperator, Expr, GroupByExpr, Query, SelectItem,
    SetExpr, Statement, TableFactor, TableWithJoins,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

/// Where a statement runs.
#[derive(Debug, Clone)]
pub enum Plan {
    /// No table: the coordinator's scratch database.
    Local { sql: String },
    /// PostgreSQL's system catalogs (`system`), generated at the coordinator; `tables`
    /// are the ones read.
    System { tables: Vec<String>, sql: String },
    /// The whole statement on each shard; rows concatenated, changes summed.
    Shards {
        shards: Vec<ShardId>,
        sql: String,
        read: bool,
        why: String,
        /// Reference-table shards attached where the statement runs.
        refs: Vec<ShardId>,
    },
    /// Pull each table's rows, run the statement over them at the coordinator.
    Gather { pulls: Vec<Pull>, sql: String },
    /// Partial aggregates on each shard, merged at the coordinator: `shard_sql`'s rows
    /// become table `_cairn_partials` (columns `_cairn_g0.., _cairn_a0..`) for `merge_sql`.
    TwoPhase {
        shards: Vec<ShardId>,
        shard_sql: String,
        merge_sql: String,
        columns: Vec<String>,
        refs: Vec<ShardId>,
    },
    /// A different INSERT per shard.
    Insert { parts: Vec<(ShardId, String)> },
    /// Run `source`, then insert its rows into `table` by shard.
    InsertSelect(Box<InsertSelect>),
    /// An UPDATE that changes rows' distribution value: delete them from their shards,
    /// update them at the coordinator, insert them by their new value — in one transaction.
    Move(Box<Move>),
}

#[derive(Debug, Clone)]
pub struct Move {
    pub shards: Vec<ShardId>,
    /// `DELETE ... RETURNING *` of the rows the UPDATE matches.
    pub delete_sql: String,
    /// The UPDATE itself, run at the coordinator over the deleted rows.
    pub update_sql: String,
    pub table: Table,
}

#[derive(Debug, Clone)]
pub struct Pull {
    pub table: Table,
    pub shards: Vec<ShardId>,
    pub sql: String,
}

#[derive(Debug, Clone)]
pub struct InsertSelect {
    pub source: Plan,
    pub table: Table,
    /// Target columns, in the order the source produces them.
    pub columns: Vec<String>,
    /// `ON CONFLICT ...` and `RETURNING ...`, appended to every generated INSERT.
    pub suffix: String,
}

impl Plan {
    /// The plan as EXPLAIN shows it, one line per step.
    pub fn explain(&self) -> Vec<String> {
        let list = |s: &[ShardId]| {
            s.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Plan::Local { sql } => vec![format!("Coordinator: {sql}")],
            Plan::System { sql, .. } => vec![format!("Coordinator (system catalogs): {sql}")],
            Plan::Shards {
                shards, sql, why, ..
            } => vec![
                format!("Shards {} ({why}): {sql}", list(shards)),
                if shards.len() > 1 {
                    "Coordinator: concatenate".to_string()
                } else {
                    "Coordinator: pass through".to_string()
                },
            ],
            Plan::Gather { pulls, sql } => {
                let mut lines: Vec<String> = pulls
                    .iter()
                    .map(|p| format!("Pull from {}: {}", list(&p.shards), p.sql))
                    .collect();
                lines.push(format!("Coordinator (merge in SQLite): {sql}"));
                lines
            }
            Plan::TwoPhase {
                shards,
                shard_sql,
                merge_sql,
                ..
            } => vec![
                format!("Shards {} (partial aggregates): {shard_sql}", list(shards)),
                format!("Coordinator (merge in SQLite): {merge_sql}"),
            ],
            Plan::Insert { parts } => parts
                .iter()
                .map(|(s, sql)| format!("Shard {s}: {sql}"))
                .collect(),
            Plan::Move(m) => vec![
                format!("Shards {}: {}", list(&m.shards), m.delete_sql),
                format!("Coordinator: {}", m.update_sql),
                format!(
                    "Insert the updated rows into {} by shard of {}",
                    m.table.name,
                    m.table.distribution_column().unwrap_or_default()
                ),
            ],
            Plan::InsertSelect(is) => {
                let mut lines = vec!["Source:".to_string()];
                lines.extend(is.source.explain().into_iter().map(|l| format!("  {l}")));
                lines.push(format!(
                    "Insert the source rows into {} by shard of {}",
                    is.table.name,
                    is.table.distribution_column().unwrap_or("its one shard")
                ));
                lines
            }
        }
    }
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

/// Names defined by WITH clauses anywhere in the statement.
pub(crate) fn cte_names(stmt: &Statement) -> BTreeSet<String> {
    struct Ctes(BTreeSet<String>);
    impl ast::Visitor for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if let Some(with) = &q.with {
                for cte in &with.cte_tables {
                    self.0.insert(translate::ident_name(&cte.alias.name));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut ctes = Ctes(BTreeSet::new());
    let _ = ast::Visit::visit(stmt, &mut ctes);
    ctes.0
}

/// Every table the statement names (each once), and how many times each is named.
fn tables_in<'c>(
    stmt: &Statement,
    catalog: &'c Catalog,
) -> Result<(Vec<&'c Table>, BTreeMap<String, usize>)> {
    let ctes = cte_names(stmt);
    let mut names: Vec<String> = Vec::new();
    let _ = visit_relations(stmt, |n| {
        names.push(translate::object_name(n));
        ControlFlow::<()>::Continue(())
    });
    let mut tables: Vec<&Table> = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for name in names {
        let Some(t) = catalog.table(&name) else {
            if ctes.contains(&name.to_lowercase()) || super::srf::is_table_function(&name) {
                continue;
            }
            return Err(undefined_table(&name));
        };
        *counts.entry(t.name.to_lowercase()).or_default() += 1;
        if !tables.iter().any(|x| x.name == t.name) {
            tables.push(t);
        }
    }
    Ok((tables, counts))
}

fn conjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut v = conjuncts(left);
            v.extend(conjuncts(right));
            v
        }
        Expr::Nested(inner) => match inner.as_ref() {
            Expr::BinaryOp {
                op: BinaryOperator::And,
                ..
            } => conjuncts(inner),
            _ => vec![e],
        },
        other => vec![other],
    }
}

/// Whether `e` names `column` of a relation called one of `qualifiers` (or unqualified).
fn is_column(e: &Expr, qualifiers: &[String], column: &str) -> bool {
    match e {
        Expr::Identifier(i) => translate::ident_name(i).eq_ignore_ascii_case(column),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            let q = translate::ident_name(&parts[parts.len() - 2]);
            translate::ident_name(&parts[parts.len() - 1]).eq_ignore_ascii_case(column)
                && qualifiers.iter().any(|x| x.eq_ignore_ascii_case(&q))
        }
        Expr::Nested(inner) => is_column(inner, qualifiers, column),
        _ => false,
    }
}

/// The value of a literal or a bound parameter.
fn constant(e: &Expr, params: &[Value]) -> Option<Value> {
    if let Some(i) = placeholder_index(e) {
        return params.get(i).cloned();
    }
    translate::literal_value(e)
}

/// Values the WHERE clause pins the distribution column to, if it does.
fn pinned_values(
    selection: Option<&Expr>,
    qualifiers: &[String],
    column: &str,
    params: &[Value],
) -> Option<Vec<Value>> {
    for c in conjuncts(selection?) {
        match c {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => {
                if is_column(left, qualifiers, column) {
                    if let Some(v) = constant(right, params) {
                        return Some(vec![v]);
                    }
                }
                if is_column(right, qualifiers, column) {
                    if let Some(v) = constant(left, params) {
                        return Some(vec![v]);
                    }
                }
            }
            Expr::InList {
                expr,
                list,
                negated: false,
            } if is_column(expr, qualifiers, column) => {
                let values: Option<Vec<Value>> = list.iter().map(|e| constant(e, params)).collect();
                if values.is_some() {
                    return values;
                }
            }
            _ => {}
        }
    }
    None
}

/// The shards holding rows of `table` whose distribution column is one of `values`.
fn shards_for_values(catalog: &Catalog, table: &Table, values: &[Value]) -> Result<Vec<ShardId>> {
    let column = table
        .distribution_column()
        .and_then(|c| table.column(c))
        .ok_or_else(|| Error::internal("distributed table without its column"))?;
    let mut shards = BTreeSet::new();
    for v in values {
        let stored = types::coerce(v.clone(), column.ty)?;
        match catalog.shard_for(table, &stored) {
            Ok(s) => {
                shards.insert(s);
            }
            // A value no list partition takes matches no row.
            Err(Error::Sql { code, .. }) if code == sqlstate::CHECK_VIOLATION => {}
            Err(e) => return Err(e),
        }
    }
    Ok(shards.into_iter().collect())
}

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "cairn_num_sum",
    "cairn_num_avg",
    "avg",
    "min",
    "max",
    "total",
    "group_concat",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "array_agg",
    "json_group_array",
    "json_group_object",
];

/// Whether the expressions of `select` contain aggregates or window functions.
fn aggregates_or_windows(items: &[SelectItem], having: Option<&Expr>) -> bool {
    let mut found = false;
    let mut check = |e: &Expr| {
        let _ = visit_expressions(e, |x| {
            if let Expr::Function(f) = x {
                let name = translate::object_name(&f.name);
                if f.over.is_some() || AGGREGATES.contains(&name.as_str()) {
                    found = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
    };
    for item in items {
        match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => check(e),
            _ => {}
        }
    }
    if let Some(h) = having {
        check(h);
    }
    found
}

fn has_subquery(e: &Expr) -> bool {
    let mut found = false;
    let _ = visit_expressions(e, |x| {
        if matches!(
            x,
            Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. }
        ) {
            found = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

/// A top-level relation of a SELECT: its table and the names it can be qualified by.
struct FromTable<'a> {
    table: &'a Table,
    qualifiers: Vec<String>,
}

/// The plain tables of a SELECT's FROM clause, if the clause is only plain tables joined by
/// inner joins (the shape filter pushdown is safe for).
fn inner_join_tables<'c>(
    from: &[TableWithJoins],
    catalog: &'c Catalog,
) -> Option<Vec<FromTable<'c>>> {
    let mut out = Vec::new();
    let mut add = |factor: &TableFactor| -> bool {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let n = translate::object_name(name);
                let Some(table) = catalog.table(&n) else {
                    return false;
                };
                let mut qualifiers = vec![n];
                if let Some(a) = alias {
                    qualifiers = vec![translate::ident_name(&a.name)];
                }
                out.push(FromTable { table, qualifiers });
                true
            }
            _ => false,
        }
    };
    for twj in from {
        if !add(&twj.relation) {
            return None;
        }
        for j in &twj.joins {
            let inner = matches!(
                j.join_operator,
                ast::JoinOperator::Inner(_)
                    | ast::JoinOperator::Join(_)
                    | ast::JoinOperator::CrossJoin(_)
            );
            if !inner || !add(&j.relation) {
                return None;
            }
        }
    }
    Some(out)
}

/// Whether every column `e` names belongs to `me` (qualified by its name, or unqualified
/// and found in no other FROM table).
fn only_columns_of(e: &Expr, me: &FromTable<'_>, others: &[&FromTable<'_>]) -> bool {
    if has_subquery(e) {
        return false;
    }
    let mut ok = true;
    let _ = visit_expressions(e, |x| {
        match x {
            Expr::Identifier(i) => {
                let c = translate::ident_name(i);
                if me.table.column(&c).is_none()
                    || others.iter().any(|o| o.table.column(&c).is_some())
                {
                    ok = false;
                }
            }
            Expr::CompoundIdentifier(parts) => {
                let q = parts
                    .get(parts.len().saturating_sub(2))
                    .map(translate::ident_name)
                    .unwrap_or_default();
                if parts.len() < 2 || !me.qualifiers.iter().any(|m| m.eq_ignore_ascii_case(&q)) {
                    ok = false;
                }
            }
            Expr::Function(f) => {
                let name = translate::object_name(&f.name);
                if f.over.is_some() || AGGREGATES.contains(&name.as_str()) {
                    ok = false;
                }
            }
            _ => {}
        }
        if ok {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    });
    ok
}

fn all_shards(catalog: &Catalog, table: &Table) -> Result<Vec<ShardId>> {
    catalog.shards_of(table)
}

/// Plan a translated Read or Write statement. `params` are the bound values (for routing);
/// `engine` supplies serial values for INSERTs.
/// `allow_refs`: a query may read reference tables from replicas attached where it runs
/// (not inside a transaction, whose statements run on the shard writers' connections).
pub async fn plan(
    engine: &super::Engine,
    catalog: &Catalog,
    t: &Translated,
    params: &[Value],
    allow_refs: bool,
) -> Result<Plan> {
    let stmt = t
        .stmt
        .as_deref()
        .ok_or_else(|| Error::internal("planning a statement without its syntax tree"))?;
    match stmt {
        Statement::Query(q) => plan_query(catalog, stmt, q, params, allow_refs),
        Statement::Insert(insert) => plan_insert(engine, catalog, stmt, insert, params).await,
        Statement::Update(u) => {
            let target = match &u.table.relation {
                TableFactor::Table { name, alias, .. } => (
                    translate::object_name(name),
                    alias.as_ref().map(|a| translate::ident_name(&a.name)),
                ),
                _ => return Err(Error::unsupported("UPDATE of something other than a table")),
            };
            let assigns_key = |t: &Table| {
                t.distribution_column().is_some_and(|k| {
                    u.assignments.iter().any(|a| match &a.target {
                        ast::AssignmentTarget::ColumnName(n) => {
                            translate::object_name(n).eq_ignore_ascii_case(k)
                        }
                        _ => false,
                    })
                })
            };
            plan_modify(
                catalog,
                stmt,
                target,
                u.selection.as_ref(),
                params,
                assigns_key,
            )
        }
        Statement::Delete(d) => {
            let from = match &d.from {
                ast::FromTable::WithFromKeyword(f) | ast::FromTable::WithoutKeyword(f) => f,
            };
            let target = match from.first().map(|f| &f.relation) {
                Some(TableFactor::Table { name, alias, .. }) => (
                    translate::object_name(name),
                    alias.as_ref().map(|a| translate::ident_name(&a.name)),
                ),
                _ => {
                    return Err(Error::unsupported(
                        "DELETE from something other than a table",
                    ))
                }
            };
            plan_modify(catalog, stmt, target, d.selection.as_ref(), params, |_| {
                false
            })
        }
        other => Err(Error::internal(format!("cannot plan {other}"))),
    }
}

/// If every table lives on the same one shard, that shard.
fn single_home(catalog: &Catalog, tables: &[&Table]) -> Result<Option<ShardId>> {
    let mut home: Option<ShardId> = None;
    for t in tables {
        let shards = catalog.shards_of(t)?;
        match (shards.as_slice(), home) {
            ([s], None) => home = Some(*s),
            ([s], Some(h)) if *s == h => {}
            _ => return Ok(None),
        }
    }
    Ok(home)
}

fn plan_query(
    catalog: &Catalog,
    stmt: &Statement,
    q: &Query,
    params: &[Value],
    allow_refs: bool,
) -> Result<Plan> {
    let sql = stmt.to_string();
    let (tables, counts) = tables_in(stmt, catalog)?;
    let system = super::system::tables_read(stmt);
    if !system.is_empty() {
        if tables.len() > system.len() {
            return Err(Error::unsupported(
                "a query joining the system catalogs with tables",
            ));
        }
        return Ok(Plan::System {
            tables: system,
            sql,
        });
    }
    if tables.is_empty() {
        // Functions that look up the catalog's objects (`'t'::regclass`, obj_description,
        // pg_get_viewdef, ...) need them loaded, as a catalog query has.
        if super::system::uses_objects(&sql) {
            return Ok(Plan::System {
                tables: Vec::new(),
                sql,
            });
        }
        return Ok(Plan::Local { sql });
    }
    if let Some(shard) = single_home(catalog, &tables)? {
        return Ok(Plan::Shards {
            shards: vec![shard],
            sql,
            read: true,
            why: "every table on one shard".into(),
            refs: Vec::new(),
        });
    }
    let select = match q.body.as_ref() {
        SetExpr::Select(s) if q.with.is_none() => Some(s),
        _ => None,
    };
    let from = select.and_then(|s| inner_join_tables(&s.from, catalog));
    // Tables whose rows meet only within a shard (one table named once, or co-located
    // tables joined on their distribution columns): route, broadcast, or merge partials.
    if let (Some(s), Some(from)) = (select, &from) {
        let named_once = counts.values().all(|c| *c == 1) && from.len() == tables.len();
        // Reference tables have every row on every node: inside a shard they are read from
        // the local replica (attached), so they never decide where a query runs.
        let is_ref =
            |f: &FromTable<'_>| f.table.distribution == crate::catalog::Distribution::Reference;
        let local: Vec<FromTable<'_>> = from
            .iter()
            .filter(|f| !is_ref(f))
            .map(|f| FromTable {
                table: f.table,
                qualifiers: f.qualifiers.clone(),
            })
            .collect();
        let mut refs: Vec<ShardId> = Vec::new();
        for f in from.iter().filter(|f| is_ref(f)) {
            refs.extend(catalog.shards_of(f.table)?);
        }
        let usable = refs.is_empty() || allow_refs;
        if named_once && usable && !local.is_empty() && shard_local(s, &local) {
            let mut pinned = None;
            for f in &local {
                let key = f.table.distribution_column().unwrap_or_default();
                if let Some(values) =
                    pinned_values(s.selection.as_ref(), &f.qualifiers, key, params)
                {
                    pinned = Some((
                        shards_for_values(catalog, f.table, &values)?,
                        key.to_string(),
                    ));
                    break;
                }
            }
            let simple = s.distinct.is_none()
                && matches!(&s.group_by, GroupByExpr::Expressions(g, _) if g.is_empty())
                && s.having.is_none()
                && !aggregates_or_windows(&s.projection, None)
                && q.order_by.is_none()
                && q.limit_clause.is_none()
                && q.fetch.is_none();
            let all = all_shards(catalog, local[0].table)?;
            let with_refs = |why: String| {
                if refs.is_empty() {
                    why
                } else {
                    format!("{why}, reference tables attached")
                }
            };
            match pinned {
                Some((shards, key)) if shards.len() <= 1 => {
                    return Ok(Plan::Shards {
                        shards,
                        sql,
                        read: true,
                        why: with_refs(format!("{key} pins the shard")),
                        refs,
                    })
                }
                Some((shards, key)) if simple => {
                    return Ok(Plan::Shards {
                        shards,
                        sql,
                        read: true,
                        why: with_refs(format!("{key} pins the shards")),
                        refs,
                    })
                }
                None if simple => {
                    return Ok(Plan::Shards {
                        shards: all,
                        sql,
                        read: true,
                        why: with_refs(if local.len() > 1 {
                            "co-located join, rows concatenated".into()
                        } else {
                            "rows concatenated".into()
                        }),
                        refs,
                    })
                }
                pinned => {
                    if let Some(tp) = two_phase(q, s, &tables) {
                        return Ok(Plan::TwoPhase {
                            shards: pinned.map(|p| p.0).unwrap_or(all),
                            shard_sql: tp.shard_sql,
                            merge_sql: tp.merge_sql,
                            columns: tp.columns,
                            refs,
                        });
                    }
                }
            }
        }
    }
    // Everything else: pull filtered tables to the coordinator.
    let mut pulls = Vec::new();
    let pushable = match (select, &from) {
        (Some(s), Some(from)) => Some((s, from)),
        _ => None,
    };
    for table in &tables {
        let mut pull_sql = format!("SELECT * FROM {}", quote(&table.name));
        let mut shards = all_shards(catalog, table)?;
        let once = counts.get(&table.name.to_lowercase()) == Some(&1);
        if let (Some((s, from)), true) = (pushable, once) {
            if let Some(me) = from.iter().find(|f| f.table.name == table.name) {
                let others: Vec<&FromTable<'_>> =
                    from.iter().filter(|f| f.table.name != table.name).collect();
                let derived = implied_constants(s, &me.qualifiers);
                let mut mine: Vec<&Expr> = s
                    .selection
                    .as_ref()
                    .map(conjuncts)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| only_columns_of(c, me, &others))
                    .collect();
                let known: Vec<String> = mine.iter().map(|c| c.to_string()).collect();
                mine.extend(derived.iter().filter(|d| !known.contains(&d.to_string())));
                let alias = &me.qualifiers[0];
                pull_sql = format!("SELECT * FROM {} AS {}", quote(&table.name), quote(alias));
                if !mine.is_empty() {
                    let text: Vec<String> = mine.iter().map(|c| format!("({c})")).collect();
                    pull_sql.push_str(&format!(" WHERE {}", text.join(" AND ")));
                    if let Some(key) = table.distribution_column() {
                        let owned: Vec<Expr> = mine.iter().map(|c| (*c).clone()).collect();
                        let combined = owned.into_iter().reduce(|a, b| Expr::BinaryOp {
                            left: Box::new(a),
                            op: BinaryOperator::And,
                            right: Box::new(b),
                        });
                        if let Some(values) =
                            pinned_values(combined.as_ref(), &me.qualifiers, key, params)
                        {
                            shards = shards_for_values(catalog, table, &values)?;
                        }
                    }
                }
                // Top-N: each shard's first N rows in the query's order hold the answer's.
                if from.len() == 1
                    && s.distinct.is_none()
                    && matches!(&s.group_by, GroupByExpr::Expressions(g, _) if g.is_empty())
                    && !aggregates_or_windows(&s.projection, s.having.as_ref())
                {
                    if let (
                        Some(order),
                        Some(ast::LimitClause::LimitOffset {
                            limit: Some(limit),
                            offset,
                            ..
                        }),
                    ) = (&q.order_by, &q.limit_clause)
                    {
                        let exprs = match &order.kind {
                            ast::OrderByKind::Expressions(e) => Some(e),
                            _ => None,
                        };
                        let n = constant(limit, params).and_then(|v| match v {
                            Value::Integer(i) => Some(i),
                            _ => None,
                        });
                        let skip = match offset {
                            None => Some(0),
                            Some(o) => constant(&o.value, params).and_then(|v| match v {
                                Value::Integer(i) => Some(i),
                                _ => None,
                            }),
                        };
                        if let (Some(exprs), Some(n), Some(skip)) = (exprs, n, skip) {
                            if exprs.iter().all(|o| only_columns_of(&o.expr, me, &[])) {
                                let text: Vec<String> =
                                    exprs.iter().map(|o| o.to_string()).collect();
                                pull_sql.push_str(&format!(
                                    " ORDER BY {} LIMIT {}",
                                    text.join(", "),
                                    n.max(0).saturating_add(skip.max(0))
                                ));
                            }
                        }
                    }
                }
            }
        }
        pulls.push(Pull {
            table: (*table).clone(),
            shards,
            sql: pull_sql,
        });
    }
    Ok(Plan::Gather { pulls, sql })
}

/// A qualified column reference `q.c`, lower-cased.
fn qualified(e: &Expr) -> Option<(String, String)> {
    match e {
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => Some((
            translate::ident_name(&parts[parts.len() - 2]),
            translate::ident_name(&parts[parts.len() - 1]),
        )),
        Expr::Nested(inner) => qualified(inner),
        _ => None,
    }
}

/// Equalities with a constant that the query implies for the relation called `me`: from
/// `x.a = 'v'` and `me.b = x.a` (in the WHERE clause or an inner join's ON clause), the
/// pull of `me` may filter on `me.b = 'v'` — and be pinned to `'v'`'s shard.
fn implied_constants(s: &ast::Select, me: &[String]) -> Vec<Expr> {
    let mut all: Vec<&Expr> = s.selection.as_ref().map(conjuncts).unwrap_or_default();
    for twj in &s.from {
        for j in &twj.joins {
            if let ast::JoinOperator::Inner(ast::JoinConstraint::On(e))
            | ast::JoinOperator::Join(ast::JoinConstraint::On(e)) = &j.join_operator
            {
                all.extend(conjuncts(e));
            }
        }
    }
    let mut consts: Vec<((String, String), Expr)> = Vec::new();
    let mut pairs: Vec<((String, String), (String, String))> = Vec::new();
    for c in all {
        let Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = c
        else {
            continue;
        };
        let is_const =
            |e: &Expr| placeholder_index(e).is_some() || translate::literal_value(e).is_some();
        match (qualified(left), qualified(right)) {
            (Some(a), Some(b)) => pairs.push((a, b)),
            (Some(a), None) if is_const(right) => consts.push((a, (**right).clone())),
            (None, Some(b)) if is_const(left) => consts.push((b, (**left).clone())),
            _ => {}
        }
    }
    // Spread constants along the equalities until nothing changes.
    loop {
        let mut grew = false;
        for (a, b) in &pairs {
            for (x, y) in [(a, b), (b, a)] {
                let known = consts.iter().find(|(k, _)| k == x).map(|(_, v)| v.clone());
                if let Some(v) = known {
                    if !consts.iter().any(|(k, _)| k == y) {
                        consts.push((y.clone(), v));
                        grew = true;
                    }
                }
            }
        }
        if !grew || consts.len() > 64 {
            break;
        }
    }
    consts
        .into_iter()
        .filter(|((q, _), _)| me.iter().any(|m| m.eq_ignore_ascii_case(q)))
        .map(|((q, c), v)| Expr::BinaryOp {
            left: Box::new(Expr::CompoundIdentifier(vec![
                ast::Ident::with_quote('"', q),
                ast::Ident::with_quote('"', c),
            ])),
            op: BinaryOperator::Eq,
            right: Box::new(v),
        })
        .collect()
}

/// Whether `from` (plain tables, inner joins) only matches rows within one shard: every
/// table in the same colocation group (hash, or list partitions shared), all linked by
/// equalities between their distribution columns (in ON clauses or the WHERE clause). One
/// table always is.
fn shard_local(s: &ast::Select, from: &[FromTable<'_>]) -> bool {
    if from.len() == 1 {
        return from[0].table.distribution != crate::catalog::Distribution::Reference;
    }
    // Single-shard tables all share their one shard.
    if from
        .iter()
        .all(|f| f.table.distribution == crate::catalog::Distribution::Single)
    {
        return true;
    }
    let group = from[0].table.colocation;
    if from.iter().any(|f| {
        f.table.colocation != group
            || !matches!(
                f.table.distribution,
                crate::catalog::Distribution::Hash { .. }
                    | crate::catalog::Distribution::List { .. }
            )
    }) {
        return false;
    }
    // Equalities from the WHERE clause and every ON clause.
    let mut equalities: Vec<&Expr> = s.selection.as_ref().map(conjuncts).unwrap_or_default();
    for twj in &s.from {
        for j in &twj.joins {
            if let ast::JoinOperator::Inner(ast::JoinConstraint::On(e))
            | ast::JoinOperator::Join(ast::JoinConstraint::On(e)) = &j.join_operator
            {
                equalities.extend(conjuncts(e));
            }
        }
    }
    // Union-find over the FROM tables.
    let mut parent: Vec<usize> = (0..from.len()).collect();
    fn root(p: &mut [usize], i: usize) -> usize {
        let mut i = i;
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    let side = |e: &Expr| -> Option<usize> {
        from.iter().position(|f| {
            let key = f.table.distribution_column().unwrap_or_default();
            matches!(e, Expr::CompoundIdentifier(_)) && is_column(e, &f.qualifiers, key)
        })
    };
    for e in equalities {
        if let Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = e
        {
            if let (Some(a), Some(b)) = (side(left), side(right)) {
                let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
                parent[ra] = rb;
            }
        }
    }
    let r0 = root(&mut parent, 0);
    (1..from.len()).all(|i| root(&mut parent, i) == r0)
}

struct TwoPhaseSql {
    shard_sql: String,
    merge_sql: String,
    columns: Vec<String>,
}

/// Split an aggregate query into per-shard partial aggregates and a merge over them.
/// None when an aggregate cannot be merged from partials (DISTINCT, string aggregates),
/// for window functions, or when an expression uses a column outside the groups.
fn two_phase(q: &Query, s: &ast::Select, tables: &[&Table]) -> Option<TwoPhaseSql> {
    if s.distinct.is_some() || q.fetch.is_some() || q.with.is_some() {
        return None;
    }
    let GroupByExpr::Expressions(group, modifiers) = &s.group_by else {
        return None;
    };
    if !modifiers.is_empty() {
        return None;
    }
    // Group expressions, with ordinals and output aliases resolved.
    let mut groups: Vec<Expr> = Vec::new();
    for g in group {
        let resolved = match g {
            Expr::Value(v) => match &v.value {
                ast::Value::Number(n, _) => {
                    let i: usize = n.parse().ok()?;
                    match s.projection.get(i.checked_sub(1)?)? {
                        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                            e.clone()
                        }
                        _ => return None,
                    }
                }
                _ => g.clone(),
            },
            // A name is an input column first, an output column's alias only if no input
            // column has it (PostgreSQL's rule).
            Expr::Identifier(id)
                if tables
                    .iter()
                    .any(|t| t.column(&translate::ident_name(id)).is_some()) =>
            {
                g.clone()
            }
            Expr::Identifier(id) => s
                .projection
                .iter()
                .find_map(|item| match item {
                    SelectItem::ExprWithAlias { expr, alias }
                        if alias.value.eq_ignore_ascii_case(&id.value)
                            && !matches!(expr, Expr::Identifier(_)) =>
                    {
                        Some(expr.clone())
                    }
                    _ => None,
                })
                .unwrap_or_else(|| g.clone()),
            _ => g.clone(),
        };
        groups.push(resolved);
    }
    // With one table in FROM, `t.c` and `c` are the same column: compare them alike.
    let qualifiers: Vec<String> = match s.from.as_slice() {
        [twj] if twj.joins.is_empty() => match &twj.relation {
            TableFactor::Table { name, alias, .. } => {
                let mut q = vec![translate::object_name(name)];
                q.extend(alias.as_ref().map(|a| translate::ident_name(&a.name)));
                q
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let canon = |e: &Expr| -> String {
        let mut e = e.clone();
        let _ = ast::visit_expressions_mut(&mut e, |x| {
            if let Expr::CompoundIdentifier(parts) = x {
                if parts.len() == 2 && qualifiers.contains(&translate::ident_name(&parts[0])) {
                    *x = Expr::Identifier(parts[1].clone());
                }
            }
            ControlFlow::<()>::Continue(())
        });
        e.to_string()
    };
    struct Split<'a> {
        groups: Vec<String>,
        partials: Vec<Expr>,
        ok: bool,
        canon: &'a dyn Fn(&Expr) -> String,
    }
    impl ast::VisitorMut for Split<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            // What this rewrite produced (calls over its own columns) is left alone.
            if let Expr::Function(f) = e {
                if let ast::FunctionArguments::List(l) = &f.args {
                    let ours = !l.args.is_empty()
                        && l.args.iter().all(|a| {
                            matches!(a, ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(Expr::Identifier(i))) if i.value.starts_with("_cairn_"))
                        });
                    if ours {
                        return ControlFlow::Continue(());
                    }
                }
            }
            let text = (self.canon)(e);
            if let Some(i) = self.groups.iter().position(|g| *g == text) {
                *e = Expr::Identifier(ast::Ident::new(format!("_cairn_g{i}")));
                return ControlFlow::Continue(());
            }
            match e {
                Expr::Function(f) => {
                    let name = translate::object_name(&f.name);
                    if f.over.is_some() {
                        self.ok = false;
                        return ControlFlow::Break(());
                    }
                    if !AGGREGATES.contains(&name.as_str()) {
                        return ControlFlow::Continue(());
                    }
                    if self.partials.len() >= limits::PARTIAL_AGGREGATES_MAX {
                        self.ok = false;
                        return ControlFlow::Break(());
                    }
                    let distinct = matches!(&f.args, ast::FunctionArguments::List(l) if l.duplicate_treatment.is_some());
                    if distinct
                        || !matches!(
                            name.as_str(),
                            "count"
                                | "sum"
                                | "min"
                                | "max"
                                | "avg"
                                | "total"
                                | "cairn_num_sum"
                                | "cairn_num_avg"
                        )
                    {
                        self.ok = false;
                        return ControlFlow::Break(());
                    }
                    let mut part = |expr: Expr| -> Expr {
                        self.partials.push(expr);
                        Expr::Identifier(ast::Ident::new(format!(
                            "_cairn_a{}",
                            self.partials.len() - 1
                        )))
                    };
                    let call = |name: &str, arg: Expr| parse_expr(&format!("{name}({arg})"));
                    let merged = match name.as_str() {
                        // A shard's count is 0, not NULL, without rows; so is the total.
                        "count" => {
                            let a = part(e.clone());
                            parse_expr(&format!("coalesce(sum({a}), 0)"))
                        }
                        "sum" | "total" => call(&name, part(e.clone())),
                        // The exact sum of numerics: (value, display scale).
                        "cairn_num_sum" => {
                            let scale = match &f.args {
                                ast::FunctionArguments::List(l) => l
                                    .args
                                    .get(1)
                                    .map(|a| a.to_string())
                                    .unwrap_or_else(|| "NULL".into()),
                                _ => "NULL".into(),
                            };
                            let a = part(e.clone());
                            parse_expr(&format!("cairn_num_sum({a}, {scale})"))
                        }
                        "min" | "max" => call(&name, part(e.clone())),
                        // The exact average: exact sums and counts merged, divided once.
                        "cairn_num_avg" => {
                            let (value, scale) = match &f.args {
                                ast::FunctionArguments::List(l) => (
                                    l.args.first().map(|a| a.to_string()).unwrap_or_default(),
                                    l.args
                                        .get(1)
                                        .map(|a| a.to_string())
                                        .unwrap_or_else(|| "NULL".into()),
                                ),
                                _ => {
                                    self.ok = false;
                                    return ControlFlow::Break(());
                                }
                            };
                            let filter = f
                                .filter
                                .as_ref()
                                .map(|w| format!(" FILTER (WHERE {w})"))
                                .unwrap_or_default();
                            let sum = part(parse_expr(&format!(
                                "cairn_num_sum({value}, {scale}){filter}"
                            )));
                            let count = part(parse_expr(&format!("count({value}){filter}")));
                            parse_expr(&format!(
                                "cairn_num_avg_merge(cairn_num_sum({sum}, {scale}), sum({count}), {scale})"
                            ))
                        }
                        "avg" => {
                            let args = match &f.args {
                                ast::FunctionArguments::List(l) => l.clone(),
                                _ => {
                                    self.ok = false;
                                    return ControlFlow::Break(());
                                }
                            };
                            let with = |fname: &str| {
                                let mut g = f.clone();
                                g.name = ast::ObjectName::from(vec![ast::Ident::new(fname)]);
                                g.args = ast::FunctionArguments::List(args.clone());
                                Expr::Function(g)
                            };
                            let sum = part(with("sum"));
                            let count = part(with("count"));
                            parse_expr(&format!(
                                "CASE WHEN sum({count}) = 0 THEN NULL ELSE sum({sum}) * 1.0 / sum({count}) END"
                            ))
                        }
                        _ => unreachable!("filtered above"),
                    };
                    *e = Expr::Nested(Box::new(merged));
                    ControlFlow::Continue(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    let mut split = Split {
        groups: groups.iter().map(&canon).collect(),
        partials: Vec::new(),
        ok: true,
        canon: &canon,
    };
    let mut projection = s.projection.clone();
    for item in projection.iter_mut() {
        match item {
            SelectItem::UnnamedExpr(e) => {
                // Keep the name the client would have seen.
                let alias = ast::Ident::with_quote('"', translate::pg_column_name(e));
                let mut expr = e.clone();
                let _ = ast::VisitMut::visit(&mut expr, &mut split);
                *item = SelectItem::ExprWithAlias { expr, alias };
            }
            SelectItem::ExprWithAlias { expr: e, .. } => {
                let _ = ast::VisitMut::visit(e, &mut split);
            }
            _ => return None,
        }
    }
    let mut having = s.having.clone();
    if let Some(h) = having.as_mut() {
        let _ = ast::VisitMut::visit(h, &mut split);
    }
    let mut order_by = q.order_by.clone();
    if let Some(o) = order_by.as_mut() {
        let _ = ast::VisitMut::visit(o, &mut split);
    }
    if !split.ok || split.partials.is_empty() && groups.is_empty() {
        return None;
    }
    // Anything left that names a column is outside the groups: no merge for it (output
    // aliases in ORDER BY are fine: they name merged columns).
    let aliases: Vec<String> = projection
        .iter()
        .filter_map(|i| match i {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.to_lowercase()),
            _ => None,
        })
        .collect();
    let mut stray = false;
    let mut check = |e: &Expr, aliases_allowed: bool| {
        let _ = visit_expressions(e, |x| {
            match x {
                Expr::Identifier(i) => {
                    let n = i.value.to_lowercase();
                    let ours = n.starts_with("_cairn_");
                    if !(ours || aliases_allowed && aliases.contains(&n)) {
                        stray = true;
                    }
                }
                Expr::CompoundIdentifier(_) => stray = true,
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
    };
    for item in &projection {
        if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
            check(e, false);
        }
    }
    if let Some(h) = &having {
        check(h, false);
    }
    if let Some(o) = &order_by {
        if let ast::OrderByKind::Expressions(list) = &o.kind {
            for x in list {
                check(&x.expr, true);
            }
        }
    }
    if stray {
        return None;
    }
    let mut columns = Vec::new();
    let mut shard_items = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        shard_items.push(format!("{g} AS _cairn_g{i}"));
        columns.push(format!("_cairn_g{i}"));
    }
    for (i, p) in split.partials.iter().enumerate() {
        shard_items.push(format!("{p} AS _cairn_a{i}"));
        columns.push(format!("_cairn_a{i}"));
    }
    let from: Vec<String> = s.from.iter().map(|f| f.to_string()).collect();
    let mut shard_sql = format!("SELECT {} FROM {}", shard_items.join(", "), from.join(", "));
    if let Some(w) = &s.selection {
        shard_sql.push_str(&format!(" WHERE {w}"));
    }
    if !groups.is_empty() {
        let g: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        shard_sql.push_str(&format!(" GROUP BY {}", g.join(", ")));
    }
    let items: Vec<String> = projection.iter().map(|i| i.to_string()).collect();
    let mut merge_sql = format!("SELECT {} FROM _cairn_partials", items.join(", "));
    if !groups.is_empty() {
        let g: Vec<String> = (0..groups.len()).map(|i| format!("_cairn_g{i}")).collect();
        merge_sql.push_str(&format!(" GROUP BY {}", g.join(", ")));
    }
    if let Some(h) = &having {
        merge_sql.push_str(&format!(" HAVING {h}"));
    }
    if let Some(o) = &order_by {
        merge_sql.push_str(&format!(" {o}"));
    }
    if let Some(l) = &q.limit_clause {
        merge_sql.push_str(&format!(" {l}"));
    }
    Some(TwoPhaseSql {
        shard_sql,
        merge_sql,
        columns,
    })
}

/// An expression this module generated (always valid).
fn parse_expr(sql: &str) -> Expr {
    sqlparser::parser::Parser::new(&sqlparser::dialect::SQLiteDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .expect("a generated expression parses")
}

fn plan_modify(
    catalog: &Catalog,
    stmt: &Statement,
    (name, alias): (String, Option<String>),
    selection: Option<&Expr>,
    params: &[Value],
    assigns_key: impl Fn(&Table) -> bool,
) -> Result<Plan> {
    let sql = stmt.to_string();
    let (tables, counts) = tables_in(stmt, catalog)?;
    let target = catalog.table(&name).ok_or_else(|| undefined_table(&name))?;
    let list = matches!(
        target.distribution,
        crate::catalog::Distribution::List { .. }
    );
    // A new value of a list table's partition column may belong to another partition
    // (even with one partition today): such updates always move rows.
    let moves_rows = assigns_key(target);
    if let Some(shard) = single_home(catalog, &tables)?.filter(|_| !(list && moves_rows)) {
        return Ok(Plan::Shards {
            shards: vec![shard],
            sql,
            read: false,
            why: "every table on one shard".into(),
            refs: Vec::new(),
        });
    }
    if tables.len() > 1 || counts.values().any(|c| *c > 1) {
        return Err(Error::unsupported(format!(
            "UPDATE or DELETE of distributed table \"{}\" that reads other tables or itself (run the query first, then modify rows by key)",
            target.name
        )));
    }
    let qualifiers = vec![alias.clone().unwrap_or_else(|| target.name.clone())];
    let key = target.distribution_column().unwrap_or_default();
    let (shards, why) = match pinned_values(selection, &qualifiers, key, params) {
        Some(values) => (
            shards_for_values(catalog, target, &values)?,
            format!("{key} pins the shards"),
        ),
        None => (all_shards(catalog, target)?, "every shard".to_string()),
    };
    if moves_rows {
        // The row's distribution value changes: take the matching rows off their shards,
        // update them at the coordinator, and insert them where they now belong.
        let mut delete = format!("DELETE FROM {}", quote(&target.name));
        if let Some(a) = &alias {
            delete.push_str(&format!(" AS {}", quote(a)));
        }
        if let Some(w) = selection {
            delete.push_str(&format!(" WHERE {w}"));
        }
        delete.push_str(" RETURNING *");
        return Ok(Plan::Move(Box::new(Move {
            shards,
            delete_sql: delete,
            update_sql: sql,
            table: target.clone(),
        })));
    }
    Ok(Plan::Shards {
        shards,
        sql,
        read: false,
        why,
        refs: Vec::new(),
    })
}

/// The target columns of an INSERT, in the order its rows give them.
fn insert_columns(insert: &ast::Insert, table: &Table) -> Vec<String> {
    if insert.columns.is_empty() {
        table.columns.iter().map(|c| c.name.clone()).collect()
    } else {
        insert.columns.iter().map(translate::object_name).collect()
    }
}

fn is_default_keyword(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

async fn plan_insert(
    engine: &super::Engine,
    catalog: &Catalog,
    stmt: &Statement,
    insert: &ast::Insert,
    params: &[Value],
) -> Result<Plan> {
    let sql = stmt.to_string();
    let ast::TableObject::TableName(name) = &insert.table else {
        return Err(Error::unsupported("INSERT into a table function"));
    };
    let name = translate::object_name(name);
    let (tables, _) = tables_in(stmt, catalog)?;
    let table = catalog.table(&name).ok_or_else(|| undefined_table(&name))?;
    let list = matches!(
        table.distribution,
        crate::catalog::Distribution::List { .. }
    );
    // A list-partitioned table routes every row by value, even with one partition: a value
    // no partition lists must be refused.
    if let Some(shard) = single_home(catalog, &tables)?.filter(|_| !list) {
        return Ok(Plan::Shards {
            shards: vec![shard],
            sql,
            read: false,
            why: "every table on one shard".into(),
            refs: Vec::new(),
        });
    }
    let key = table
        .distribution_column()
        .ok_or_else(|| Error::internal("a table on several shards without a distribution column"))?
        .to_string();
    let key_type = table
        .column(&key)
        .map(|c| c.ty)
        .ok_or_else(|| Error::internal("distribution column missing"))?;
    if let Some(ast::OnInsert::OnConflict(c)) = &insert.on {
        if let ast::OnConflictAction::DoUpdate(u) = &c.action {
            if u.assignments.iter().any(|a| matches!(&a.target, ast::AssignmentTarget::ColumnName(n) if translate::object_name(n).eq_ignore_ascii_case(&key))) {
                return Err(Error::unsupported(format!(
                    "ON CONFLICT DO UPDATE that changes the distribution column \"{key}\""
                )));
            }
        }
    }
    let columns = insert_columns(insert, table);
    let source = insert
        .source
        .as_ref()
        .ok_or_else(|| Error::unsupported("INSERT without VALUES or a query"))?;
    let suffix = {
        let mut s = String::new();
        if let Some(on) = &insert.on {
            s.push_str(&format!(" {on}"));
        }
        if let Some(r) = &insert.returning {
            let items: Vec<String> = r.iter().map(|i| i.to_string()).collect();
            s.push_str(&format!(" RETURNING {}", items.join(", ")));
        }
        s
    };
    let SetExpr::Values(values) = source.body.as_ref() else {
        // INSERT ... SELECT: the query on its own, then its rows by shard.
        let query = Statement::Query(source.clone());
        let source_plan = plan_query(catalog, &query, source, params, false)?;
        return Ok(Plan::InsertSelect(Box::new(InsertSelect {
            source: source_plan,
            table: table.clone(),
            columns,
            suffix,
        })));
    };
    let position = columns.iter().position(|c| c.eq_ignore_ascii_case(&key));
    let mut rows: Vec<Vec<Expr>> = values.rows.iter().map(|p| p.content.clone()).collect();
    let mut columns = columns;
    // Rows whose key the coordinator must supply.
    let needs_key = |row: &Vec<Expr>| match position {
        None => true,
        Some(p) => row.get(p).is_none_or(is_default_keyword),
    };
    let missing = rows.iter().filter(|r| needs_key(r)).count();
    let mut supplied: Vec<Value> = Vec::new();
    if missing > 0 {
        if table
            .serial
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(&key))
        {
            supplied = engine
                .serial_values(&table.name, missing)
                .await?
                .into_iter()
                .map(Value::Integer)
                .collect();
        } else if let Some(default) = &table.key_default {
            for _ in 0..missing {
                supplied.push(evaluate(default.clone(), Vec::new()).await?);
            }
        } else {
            supplied = vec![Value::Null; missing];
        }
    }
    let position = match position {
        Some(p) => p,
        None => {
            columns.push(key.clone());
            for row in rows.iter_mut() {
                row.push(Expr::Identifier(ast::Ident::new("DEFAULT")));
            }
            columns.len() - 1
        }
    };
    let mut supplied = supplied.into_iter();
    let mut by_shard: BTreeMap<ShardId, Vec<Vec<Expr>>> = BTreeMap::new();
    for mut row in rows {
        if row.len() <= position {
            return Err(Error::sql(
                sqlstate::SYNTAX_ERROR,
                "INSERT has more target columns than expressions",
            ));
        }
        let value = if is_default_keyword(&row[position]) {
            let v = supplied.next().unwrap_or(Value::Null);
            row[position] = translate::literal_expr(&v);
            v
        } else if let Some(v) = constant(&row[position], params) {
            v
        } else {
            // An expression: evaluate it once here, so every replica stores this value.
            let v = evaluate(row[position].to_string(), params.to_vec()).await?;
            row[position] = translate::literal_expr(&v);
            v
        };
        let stored = types::coerce(value, key_type)?;
        let shard = catalog.shard_for(table, &stored)?;
        by_shard.entry(shard).or_default().push(row);
    }
    let column_names: Vec<ast::ObjectName> = columns
        .iter()
        .map(|c| ast::ObjectName::from(vec![ast::Ident::with_quote('"', c)]))
        .collect();
    let parts = by_shard
        .into_iter()
        .map(|(shard, rows)| {
            let mut one = insert.clone();
            one.columns = column_names.clone();
            let mut src = (**source).clone();
            if let SetExpr::Values(v) = src.body.as_mut() {
                v.rows = rows.into_iter().map(ast::Parens::with_empty_span).collect();
            }
            one.source = Some(Box::new(src));
            (shard, Statement::Insert(one).to_string())
        })
        .collect();
    Ok(Plan::Insert { parts })
}

/// The value of one expression, computed by the coordinator's SQLite.
async fn evaluate(expr: String, params: Vec<Value>) -> Result<Value> {
    let rows = scratch::run_alone(format!("SELECT {expr}"), params, &Default::default()).await?;
    Ok(rows
        .rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .unwrap_or(Value::Null))
}
