//! `SELECT DISTINCT ON (keys) ... ORDER BY ...`: the first row of each group of equal keys
//! in the query's order. SQLite has no DISTINCT ON; the query becomes a window over the same
//! rows, keeping each group's first:
//!
//! ```sql
//! SELECT "_cairn_c0" AS "grp", "_cairn_c1" AS "id" FROM (
//!     SELECT grp AS "_cairn_c0", id AS "_cairn_c1", grp AS "_cairn_o0", id AS "_cairn_o1",
//!            row_number() OVER (PARTITION BY grp ORDER BY grp, id DESC) AS "_cairn_rn"
//!     FROM t WHERE ...) AS "_cairn_d"
//! WHERE "_cairn_rn" = 1 ORDER BY "_cairn_o0", "_cairn_o1" DESC LIMIT ...
//! ```

use super::translate::{ident_name, object_name, parse, pg_column_name};
use crate::catalog::Table;
use crate::error::{Error, Result};
use sqlparser::ast::{
    self, Distinct, Expr, OrderByKind, Query, SelectItem, SelectItemQualifiedWildcardKind, SetExpr,
    Statement, TableFactor, Value as AstValue, VisitMut, VisitorMut,
};
use std::ops::ControlFlow;

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every `DISTINCT ON` query of the statement, innermost first.
pub fn rewrite(stmt: &mut Statement, tables: &[&Table]) -> Result<()> {
    struct Rewriter<'a> {
        tables: &'a [&'a Table],
        failure: Option<Error>,
    }
    impl VisitorMut for Rewriter<'_> {
        type Break = ();
        fn post_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
            let SetExpr::Select(select) = q.body.as_ref() else {
                return ControlFlow::Continue(());
            };
            if !matches!(select.distinct, Some(Distinct::On(_))) {
                return ControlFlow::Continue(());
            }
            match distinct_on(q, self.tables) {
                Ok(new) => {
                    *q = new;
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    self.failure = Some(e);
                    ControlFlow::Break(())
                }
            }
        }
    }
    let mut r = Rewriter {
        tables,
        failure: None,
    };
    let _ = stmt.visit(&mut r);
    r.failure.map_or(Ok(()), Err)
}

/// The select list with `*` and `t.*` spelled out from the tables of the FROM clause.
fn expanded(select: &ast::Select, tables: &[&Table]) -> Result<Vec<(Expr, String)>> {
    let mut from: Vec<(String, &Table)> = Vec::new();
    for twj in &select.from {
        for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            if let TableFactor::Table { name, alias, .. } = factor {
                let table = object_name(name);
                if let Some(t) = tables.iter().find(|t| t.name.eq_ignore_ascii_case(&table)) {
                    let shown = alias.as_ref().map_or(table, |a| ident_name(&a.name));
                    from.push((shown, t));
                }
            }
        }
    }
    let columns_of = |alias: &str, t: &Table| -> Vec<(Expr, String)> {
        t.columns
            .iter()
            .map(|c| {
                let e = Expr::CompoundIdentifier(vec![
                    ast::Ident::with_quote('"', alias),
                    ast::Ident::with_quote('"', &c.name),
                ]);
                (e, c.name.clone())
            })
            .collect()
    };
    let unknown = || Error::unsupported("DISTINCT ON with * over a subquery or function");
    let mut out = Vec::new();
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(e) => out.push((e.clone(), pg_column_name(e))),
            SelectItem::ExprWithAlias { expr, alias } => {
                out.push((expr.clone(), ident_name(alias)))
            }
            SelectItem::Wildcard(_) => {
                let factors: usize = select.from.iter().map(|t| 1 + t.joins.len()).sum();
                if from.len() != factors {
                    return Err(unknown());
                }
                for (alias, t) in &from {
                    out.extend(columns_of(alias, t));
                }
            }
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(n), _) => {
                let name = object_name(n);
                let (alias, t) = from.iter().find(|(a, _)| *a == name).ok_or_else(unknown)?;
                out.extend(columns_of(alias, t));
            }
            SelectItem::QualifiedWildcard(..) | SelectItem::ExprWithAliases { .. } => {
                return Err(unknown())
            }
        }
    }
    Ok(out)
}

fn distinct_on(q: &mut Query, tables: &[&Table]) -> Result<Query> {
    let SetExpr::Select(select) = q.body.as_ref() else {
        return Err(Error::internal("DISTINCT ON outside a SELECT"));
    };
    let Some(Distinct::On(keys)) = &select.distinct else {
        return Err(Error::internal("no DISTINCT ON"));
    };
    let items = expanded(select, tables)?;
    // ORDER BY items as expressions over the FROM clause: a position or an output name
    // stands for that item's expression.
    let order: Vec<ast::OrderByExpr> = match q.order_by.as_ref().map(|o| &o.kind) {
        None => Vec::new(),
        Some(OrderByKind::Expressions(list)) => list.clone(),
        Some(OrderByKind::All(_)) => return Err(Error::unsupported("ORDER BY ALL")),
    };
    let resolve = |e: &Expr| -> Expr {
        match e {
            Expr::Value(v) => match &v.value {
                AstValue::Number(n, _) => n
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| items.get(n.wrapping_sub(1)))
                    .map_or_else(|| e.clone(), |(x, _)| x.clone()),
                _ => e.clone(),
            },
            Expr::Identifier(i) => {
                let name = ident_name(i);
                select
                    .projection
                    .iter()
                    .find_map(|item| match item {
                        SelectItem::ExprWithAlias { expr, alias } if ident_name(alias) == name => {
                            Some(expr.clone())
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| e.clone())
            }
            _ => e.clone(),
        }
    };
    let direction = |o: &ast::OrderByExpr| {
        let mut s = String::new();
        if matches!(o.options.sort, Some(ast::OrderBySort::Desc)) {
            s.push_str(" DESC");
        }
        match o.options.nulls_first {
            Some(true) => s.push_str(" NULLS FIRST"),
            Some(false) => s.push_str(" NULLS LAST"),
            None => {}
        }
        s
    };
    let mut inner_items: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, (e, _))| format!("{e} AS \"_cairn_c{i}\""))
        .collect();
    let mut window_order = Vec::new();
    let mut outer_order = Vec::new();
    for (k, o) in order.iter().enumerate() {
        let e = resolve(&o.expr);
        inner_items.push(format!("{e} AS \"_cairn_o{k}\""));
        window_order.push(format!("{e}{}", direction(o)));
        outer_order.push(format!("\"_cairn_o{k}\"{}", direction(o)));
    }
    let partition: Vec<String> = keys.iter().map(|k| resolve(k).to_string()).collect();
    inner_items.push(format!(
        "row_number() OVER (PARTITION BY {}{}) AS \"_cairn_rn\"",
        partition.join(", "),
        if window_order.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {}", window_order.join(", "))
        }
    ));
    let mut inner = select.as_ref().clone();
    inner.distinct = None;
    inner.projection = Vec::new();
    let inner_text = inner.to_string();
    let rest = inner_text
        .strip_prefix("SELECT ")
        .ok_or_else(|| Error::internal("a SELECT prints as SELECT"))?;
    let outer_items: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, (_, name))| format!("\"_cairn_c{i}\" AS {}", quoted(name)))
        .collect();
    let mut sql = format!(
        "SELECT {} FROM (SELECT {}{rest}) AS \"_cairn_d\" WHERE \"_cairn_rn\" = 1",
        outer_items.join(", "),
        inner_items.join(", "),
    );
    if !outer_order.is_empty() {
        sql.push_str(&format!(" ORDER BY {}", outer_order.join(", ")));
    }
    if let Some(limit) = &q.limit_clause {
        sql.push_str(&format!("{limit}"));
    }
    let Some(Statement::Query(mut new)) = parse(&sql)?.pop() else {
        return Err(Error::internal("DISTINCT ON rewrite"));
    };
    new.with = q.with.take();
    Ok(*new)
}
