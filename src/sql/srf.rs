//! Set-returning functions: `unnest(array) [WITH ORDINALITY]` and `generate_series(start,
//! stop [, step])` in FROM (and `generate_series` in a SELECT list), as SQLite's
//! table-valued functions `json_each` (arrays are JSON, see `types::array`) and
//! `generate_series` — with every reference to their columns rewritten.
//!
//! PostgreSQL names a function's column after the function or its alias (`SELECT g FROM
//! generate_series(1, 3) g`); SQLite's have fixed names (`value`, `key`). So the FROM item
//! becomes `json_each(a) AS t` and `t.x`, `x` become `t.value` (ordinality `t.key + 1`).
//! A series over numbers with a step, or over timestamps, is counted first
//! (`cairn_series_count`) and walked by position (`cairn_series_at`), so its values are
//! PostgreSQL's whatever the step's sign or unit.
//!
//! Typing runs before rewriting: [`found`] lists the functions with their column types, as
//! stand-in tables the translator adds to its scope; [`rewrite`] consumes the same list.

use super::translate::{call, expr_type, ident_name, object_name};
use crate::catalog::{Column, Table};
use crate::error::{Error, Result};
use crate::types::PgType;
use sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, Ident, ObjectName, Query, SelectItem, SetExpr,
    Statement, TableAlias, TableFactor, TableFunctionArgs, Value as AstValue, VisitMut, VisitorMut,
};
use std::ops::ControlFlow;

/// SQLite's table-valued functions the rewritten statements name (not tables).
pub fn is_table_function(name: &str) -> bool {
    name.eq_ignore_ascii_case("json_each") || name.eq_ignore_ascii_case("generate_series")
}

/// One set-returning function in FROM, as found (before rewriting).
#[derive(Debug, Clone)]
pub struct Found {
    /// The FROM item's name (its alias, or the function's name).
    pub alias: String,
    /// Output columns with their types: the value, then the ordinality if asked for.
    pub columns: Vec<Column>,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Unnest,
    /// `unnest(a, b, ...)`: the arrays side by side, as long as the longest.
    Zip(usize),
    /// `generate_series(a, b)` over integers: SQLite's own.
    IntegerSeries,
    /// Counted and walked by position, with the type of its values.
    Series(PgType),
}

impl Found {
    /// The stand-in table the translator types references with: each column by its name,
    /// and by its position (`#0`, `#1`, ...: how `SELECT *` names them, as two columns may
    /// share a name).
    pub fn table(&self) -> Table {
        let mut columns = self.columns.clone();
        columns.extend(self.columns.iter().enumerate().map(|(i, c)| Column {
            name: format!("#{i}"),
            ..c.clone()
        }));
        Table::scratch(self.alias.clone(), columns)
    }
}

/// A FROM item's function call, if it is a set-returning function: (name, args, alias,
/// with ordinality).
fn call_of(factor: &TableFactor) -> Option<(String, Vec<Expr>, Option<&TableAlias>, bool)> {
    match factor {
        TableFactor::UNNEST {
            alias,
            array_exprs,
            with_ordinality,
            ..
        } => Some((
            "unnest".into(),
            array_exprs.clone(),
            alias.as_ref(),
            *with_ordinality,
        )),
        TableFactor::Table {
            name,
            args: Some(args),
            alias,
            with_ordinality,
            ..
        } => {
            let n = object_name(name);
            if !matches!(n.as_str(), "generate_series" | "unnest") {
                return None;
            }
            let exprs = args
                .args
                .iter()
                .filter_map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                    _ => None,
                })
                .collect();
            Some((n, exprs, alias.as_ref(), *with_ordinality))
        }
        TableFactor::Function {
            name, args, alias, ..
        } => {
            let n = object_name(name);
            if !matches!(n.as_str(), "generate_series" | "unnest") {
                return None;
            }
            let exprs = args
                .iter()
                .filter_map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                    _ => None,
                })
                .collect();
            Some((n, exprs, alias.as_ref(), false))
        }
        _ => None,
    }
}

fn series_type(args: &[Expr], tables: &[&Table]) -> Result<Kind> {
    let types: Vec<Option<PgType>> = args.iter().map(|a| expr_type(a, tables)).collect();
    let moment = types
        .iter()
        .flatten()
        .find(|t| matches!(t, PgType::Date | PgType::Timestamp | PgType::Timestamptz));
    if let Some(t) = moment {
        if args.len() != 3 {
            return Err(Error::unsupported(
                "generate_series over timestamps without an interval step",
            ));
        }
        // A series of dates is one of timestamps, as in PostgreSQL.
        let t = if *t == PgType::Date {
            PgType::Timestamptz
        } else {
            *t
        };
        return Ok(Kind::Series(t));
    }
    let numeric = types
        .iter()
        .flatten()
        .any(|t| matches!(t, PgType::Numeric | PgType::Float4 | PgType::Float8));
    if numeric {
        return Ok(Kind::Series(PgType::Numeric));
    }
    let widest = if types.contains(&Some(PgType::Int8)) {
        PgType::Int8
    } else {
        PgType::Int4
    };
    Ok(match args.len() {
        2 => Kind::IntegerSeries,
        _ => Kind::Series(widest),
    })
}

fn describe(
    name: &str,
    args: &[Expr],
    alias: Option<&TableAlias>,
    ordinality: bool,
    tables: &[&Table],
) -> Result<Found> {
    let (kind, value_type) = match name {
        "unnest" if args.len() > 1 => {
            let table_alias = alias.map_or_else(|| name.to_string(), |a| ident_name(&a.name));
            let named: Vec<String> = alias
                .map(|a| a.columns.iter().map(|c| ident_name(&c.name)).collect())
                .unwrap_or_default();
            let mut columns: Vec<Column> = args
                .iter()
                .enumerate()
                .map(|(i, a)| Column {
                    name: named.get(i).cloned().unwrap_or_else(|| "unnest".into()),
                    ty: expr_type(a, tables)
                        .and_then(PgType::element)
                        .unwrap_or(PgType::Text),
                    typmod: None,
                })
                .collect();
            if ordinality {
                columns.push(Column {
                    name: named
                        .get(args.len())
                        .cloned()
                        .unwrap_or_else(|| "ordinality".into()),
                    ty: PgType::Int8,
                    typmod: None,
                });
            }
            return Ok(Found {
                alias: table_alias,
                columns,
                kind: Kind::Zip(args.len()),
            });
        }
        "unnest" => {
            if args.is_empty() {
                return Err(Error::sql(
                    crate::error::sqlstate::UNDEFINED_FUNCTION,
                    "unnest needs an array",
                ));
            }
            let element = expr_type(&args[0], tables)
                .and_then(PgType::element)
                .unwrap_or(PgType::Text);
            (Kind::Unnest, element)
        }
        _ => {
            if !(2..=3).contains(&args.len()) {
                return Err(Error::sql(
                    crate::error::sqlstate::UNDEFINED_FUNCTION,
                    "generate_series takes a start, a stop and an optional step",
                ));
            }
            let kind = series_type(args, tables)?;
            let ty = match &kind {
                Kind::Series(t) => *t,
                _ => {
                    if args
                        .iter()
                        .any(|a| expr_type(a, tables) == Some(PgType::Int8))
                    {
                        PgType::Int8
                    } else {
                        PgType::Int4
                    }
                }
            };
            (kind, ty)
        }
    };
    let table_alias = alias.map_or_else(|| name.to_string(), |a| ident_name(&a.name));
    let named: Vec<String> = alias
        .map(|a| a.columns.iter().map(|c| ident_name(&c.name)).collect())
        .unwrap_or_default();
    let value_name = named
        .first()
        .cloned()
        .unwrap_or_else(|| table_alias.clone());
    let mut columns = vec![Column {
        name: value_name,
        ty: value_type,
        typmod: None,
    }];
    if ordinality {
        columns.push(Column {
            name: named.get(1).cloned().unwrap_or_else(|| "ordinality".into()),
            ty: PgType::Int8,
            typmod: None,
        });
    }
    Ok(Found {
        alias: table_alias,
        columns,
        kind,
    })
}

/// A SELECT-list item's set-returning call: (name, args).
fn item_call(item: &SelectItem) -> Option<(String, Vec<Expr>)> {
    let (SelectItem::UnnamedExpr(Expr::Function(f))
    | SelectItem::ExprWithAlias {
        expr: Expr::Function(f),
        ..
    }) = item
    else {
        return None;
    };
    let name = super::translate::function_name(f);
    if !matches!(
        name.as_str(),
        "unnest" | "generate_series" | "generate_subscripts"
    ) {
        return None;
    }
    let args = super::translate::function_args(f)
        .into_iter()
        .cloned()
        .collect();
    Some((name, args))
}

/// What a SELECT list's set-returning calls need, in order: the first array's `unnest` or
/// `generate_subscripts` becomes one FROM item (later arrays are read by its position), each
/// `generate_series` one more.
fn list_calls(select: &ast::Select) -> Vec<(String, Vec<Expr>)> {
    let mut out = Vec::new();
    let mut array_seen = false;
    for item in &select.projection {
        if let Some((name, args)) = item_call(item) {
            match name.as_str() {
                "generate_series" => out.push((name, args)),
                _ if !array_seen => {
                    array_seen = true;
                    out.push(("unnest".into(), args.into_iter().take(1).collect()));
                }
                _ => {}
            }
        }
    }
    out
}

/// The set-returning functions of the statement (FROM items, then SELECT-list calls, query
/// by query), in the order [`rewrite`] meets them.
pub fn found(stmt: &Statement, tables: &[&Table]) -> Result<Vec<Found>> {
    struct Finder<'a> {
        tables: &'a [&'a Table],
        out: Vec<Found>,
        failure: Option<Error>,
    }
    impl Finder<'_> {
        fn query(&mut self, q: &Query) -> Result<()> {
            let SetExpr::Select(select) = q.body.as_ref() else {
                return Ok(());
            };
            for twj in &select.from {
                for factor in
                    std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation))
                {
                    if let Some((name, args, alias, ordinality)) = call_of(factor) {
                        self.out
                            .push(describe(&name, &args, alias, ordinality, self.tables)?);
                    }
                }
            }
            for (i, (name, args)) in list_calls(select).into_iter().enumerate() {
                let alias = TableAlias {
                    explicit: true,
                    name: Ident::new(format!("_cairn_srf{i}")),
                    columns: vec![],
                    at: None,
                };
                let mut f = describe(&name, &args, Some(&alias), true, self.tables)?;
                f.alias = ident_name(&alias.name);
                self.out.push(f);
            }
            Ok(())
        }
    }
    impl ast::Visitor for Finder<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            match self.query(q) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    self.failure = Some(e);
                    ControlFlow::Break(())
                }
            }
        }
    }
    let mut finder = Finder {
        tables,
        out: Vec::new(),
        failure: None,
    };
    let _ = ast::Visit::visit(stmt, &mut finder);
    match finder.failure {
        Some(e) => Err(e),
        None => Ok(finder.out),
    }
}

fn qualified(table: &str, column: &str) -> Expr {
    Expr::CompoundIdentifier(vec![Ident::with_quote('"', table), Ident::new(column)])
}

fn text(s: &str) -> Expr {
    Expr::value(AstValue::SingleQuotedString(s.to_string()))
}

fn int(i: i64) -> Expr {
    Expr::value(AstValue::Number(i.to_string(), false))
}

fn table_function(name: &str, args: Vec<Expr>, alias: &str) -> TableFactor {
    TableFactor::Table {
        name: ObjectName::from(vec![Ident::new(name)]),
        alias: Some(TableAlias {
            explicit: true,
            name: Ident::with_quote('"', alias),
            columns: vec![],
            at: None,
        }),
        args: Some(TableFunctionArgs {
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            settings: None,
        }),
        with_hints: vec![],
        version: None,
        with_ordinality: false,
        partitions: vec![],
        json_path: None,
        sample: None,
        index_hints: vec![],
    }
}

/// A FROM item rewritten, with the expressions its columns now are.
fn replace(factor: &mut TableFactor, found: &Found) -> Vec<(String, Expr)> {
    let Some((_, args, _, _)) = call_of(factor) else {
        return Vec::new();
    };
    let (new, columns) = made(args, found);
    *factor = new;
    columns
}

fn a_name(found: &Found) -> &str {
    found.alias.as_str()
}

/// The SQLite FROM item for a set-returning call, and the expressions of its columns.
fn made(args: Vec<Expr>, found: &Found) -> (TableFactor, Vec<(String, Expr)>) {
    let a = found.alias.as_str();
    let null = || Expr::value(AstValue::Null);
    let plus_one = |e: Expr| {
        Expr::Nested(Box::new(Expr::BinaryOp {
            left: Box::new(e),
            op: ast::BinaryOperator::Plus,
            right: Box::new(int(1)),
        }))
    };
    if let Kind::Zip(n) = found.kind {
        // Positions 0 .. the longest array's length; each array read at the position
        // (NULL past its end).
        let lengths: Vec<Expr> = args
            .iter()
            .map(|a| {
                call(
                    "coalesce",
                    vec![call("json_array_length", vec![a.clone()]), int(0)],
                )
            })
            .collect();
        let longest = if lengths.len() == 1 {
            lengths.into_iter().next().unwrap_or_else(|| int(0))
        } else {
            call("max", lengths)
        };
        let last = Expr::BinaryOp {
            left: Box::new(longest),
            op: ast::BinaryOperator::Minus,
            right: Box::new(int(1)),
        };
        let at = |a: &Expr| {
            let path = Expr::BinaryOp {
                left: Box::new(Expr::BinaryOp {
                    left: Box::new(text("$[")),
                    op: ast::BinaryOperator::StringConcat,
                    right: Box::new(qualified(a_name(found), "value")),
                }),
                op: ast::BinaryOperator::StringConcat,
                right: Box::new(text("]")),
            };
            call("json_extract", vec![a.clone(), path])
        };
        let mut columns: Vec<(String, Expr)> = args
            .iter()
            .zip(&found.columns)
            .map(|(a, c)| (c.name.clone(), at(a)))
            .collect();
        if let Some(ord) = found.columns.get(n) {
            columns.push((
                ord.name.clone(),
                Expr::Nested(Box::new(Expr::BinaryOp {
                    left: Box::new(qualified(a, "value")),
                    op: ast::BinaryOperator::Plus,
                    right: Box::new(int(1)),
                })),
            ));
        }
        return (
            table_function("generate_series", vec![int(0), last], a),
            columns,
        );
    }
    // The 1-based position of each row, for WITH ORDINALITY.
    let position = match &found.kind {
        Kind::Unnest => plus_one(qualified(a, "key")),
        Kind::IntegerSeries => plus_one(Expr::BinaryOp {
            left: Box::new(qualified(a, "value")),
            op: ast::BinaryOperator::Minus,
            right: Box::new(Expr::Nested(Box::new(
                args.first().cloned().unwrap_or_else(null),
            ))),
        }),
        Kind::Series(_) | Kind::Zip(_) => plus_one(qualified(a, "value")),
    };
    let (new, value) = match &found.kind {
        Kind::Unnest | Kind::Zip(_) => {
            (table_function("json_each", args, a), qualified(a, "value"))
        }
        Kind::IntegerSeries => (
            table_function("generate_series", args, a),
            qualified(a, "value"),
        ),
        Kind::Series(ty) => {
            let mut args = args.into_iter();
            let start = args.next().unwrap_or_else(null);
            let stop = args.next().unwrap_or_else(null);
            let step = args.next().unwrap_or_else(null);
            let kind = text(ty.name());
            let count = call(
                "cairn_series_count",
                vec![start.clone(), stop, step.clone(), kind.clone()],
            );
            let last = Expr::BinaryOp {
                left: Box::new(count),
                op: ast::BinaryOperator::Minus,
                right: Box::new(int(1)),
            };
            (
                table_function("generate_series", vec![int(0), last], a),
                call(
                    "cairn_series_at",
                    vec![start, step, qualified(a, "value"), kind],
                ),
            )
        }
    };
    let mut columns = vec![(found.columns[0].name.clone(), value)];
    if let Some(ord) = found.columns.get(1) {
        columns.push((ord.name.clone(), position));
    }
    (new, columns)
}

/// SELECT-list set-returning calls: FROM items added, the items read from them.
fn expand_list(
    select: &mut ast::Select,
    found: &mut std::slice::Iter<'_, Found>,
) -> Option<Vec<Scope>> {
    let calls = list_calls(select);
    if calls.is_empty() {
        return Some(Vec::new());
    }
    let mut made_items: Vec<(String, Vec<(String, Expr)>)> = Vec::new();
    let mut scopes = Vec::new();
    for (name, args) in calls {
        let f = found.next()?;
        let (factor, columns) = made(args, f);
        select.from.push(ast::TableWithJoins {
            relation: factor,
            joins: vec![],
        });
        scopes.push(Scope {
            alias: f.alias.clone(),
            columns: Vec::new(),
        });
        made_items.push((name, columns));
    }
    let mut series = made_items.iter().filter(|(n, _)| n == "generate_series");
    let array = made_items.iter().find(|(n, _)| n != "generate_series");
    let first_array = array.map(|(_, c)| c[0].1.clone());
    let position = array.map(|(_, c)| c[1].1.clone());
    let first_text = list_calls(select)
        .into_iter()
        .find(|(n, _)| n != "generate_series")
        .and_then(|(_, args)| args.into_iter().next())
        .map(|a| a.to_string());
    for item in select.projection.iter_mut() {
        let Some((name, args)) = item_call(item) else {
            continue;
        };
        let value = match name.as_str() {
            "generate_series" => series.next()?.1[0].1.clone(),
            "generate_subscripts" => position.clone()?,
            _ if args.first().map(|a| a.to_string()) == first_text => first_array.clone()?,
            // Another array, zipped by position with the first.
            _ => {
                let path = Expr::BinaryOp {
                    left: Box::new(Expr::BinaryOp {
                        left: Box::new(text("$[")),
                        op: ast::BinaryOperator::StringConcat,
                        right: Box::new(Expr::Nested(Box::new(Expr::BinaryOp {
                            left: Box::new(position.clone()?),
                            op: ast::BinaryOperator::Minus,
                            right: Box::new(int(1)),
                        }))),
                    }),
                    op: ast::BinaryOperator::StringConcat,
                    right: Box::new(text("]")),
                };
                call("json_extract", vec![args.into_iter().next()?, path])
            }
        };
        let alias = match item {
            SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
            _ => Ident::with_quote('"', name),
        };
        *item = SelectItem::ExprWithAlias { expr: value, alias };
    }
    Some(scopes)
}

/// The columns of one FROM item, for `SELECT *` over a query with a function in FROM.
struct Scope {
    alias: String,
    columns: Vec<(String, Expr)>,
}

/// Columns SQLite's table-valued functions have besides the ones used: an unqualified
/// column of a table that shares one of these names must be qualified.
const HIDDEN_COLUMNS: &[&str] = &[
    "key", "value", "type", "atom", "id", "parent", "fullkey", "path", "start", "stop", "step",
];

/// One query's FROM clause: its functions, and its tables (alias, column names).
#[derive(Default)]
struct Level {
    functions: Vec<Scope>,
    tables: Vec<(String, Vec<String>)>,
}

struct Rewriter<'a> {
    found: std::slice::Iter<'a, Found>,
    catalog: &'a [&'a Table],
    /// Per query being visited.
    stack: Vec<Level>,
}

impl Rewriter<'_> {
    /// A table column named like a function's hidden column, qualified.
    fn qualify(&self, column: &str) -> Option<Expr> {
        if !HIDDEN_COLUMNS.contains(&column) {
            return None;
        }
        let level = self.stack.iter().rev().find(|l| !l.functions.is_empty())?;
        let (alias, _) = level
            .tables
            .iter()
            .find(|(_, columns)| columns.iter().any(|c| c == column))?;
        Some(qualified_name(alias, column))
    }

    fn lookup(&self, table: Option<&str>, column: &str) -> Option<Expr> {
        for level in self.stack.iter().rev() {
            for scope in &level.functions {
                if table.is_some_and(|t| t != scope.alias) {
                    continue;
                }
                let by_position = column
                    .strip_prefix('#')
                    .and_then(|i| i.parse::<usize>().ok())
                    .and_then(|i| scope.columns.get(i));
                if let Some((_, e)) =
                    by_position.or_else(|| scope.columns.iter().find(|(c, _)| c == column))
                {
                    return Some(e.clone());
                }
            }
        }
        None
    }
}

/// The FROM items of a SELECT, in order (joined ones after their left side).
fn factors(select: &mut ast::Select) -> Vec<&mut TableFactor> {
    let mut out = Vec::new();
    for twj in select.from.iter_mut() {
        out.push(&mut twj.relation);
        for j in twj.joins.iter_mut() {
            out.push(&mut j.relation);
        }
    }
    out
}

impl VisitorMut for Rewriter<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        let mut level = Level::default();
        if let SetExpr::Select(select) = q.body.as_mut() {
            let mut order: Vec<Option<usize>> = Vec::new();
            for factor in factors(select) {
                if call_of(factor).is_some() {
                    let Some(found) = self.found.next() else {
                        return ControlFlow::Break(());
                    };
                    let columns = replace(factor, found);
                    order.push(Some(level.functions.len()));
                    level.functions.push(Scope {
                        alias: found.alias.clone(),
                        columns,
                    });
                } else {
                    if let TableFactor::Table { name, alias, .. } = factor {
                        let table = object_name(name);
                        if let Some(t) = self.catalog.iter().find(|t| t.name == table) {
                            let alias = alias.as_ref().map_or(table, |a| ident_name(&a.name));
                            let columns = t.columns.iter().map(|c| c.name.clone()).collect();
                            level.tables.push((alias, columns));
                        }
                    }
                    order.push(None);
                }
            }
            if !level.functions.is_empty() {
                expand_wildcards(select, &level.functions, &order);
            }
            match expand_list(select, &mut self.found) {
                Some(made) => level.functions.extend(made),
                None => return ControlFlow::Break(()),
            }
        }
        self.stack.push(level);
        // A result column that names a function's column keeps that name.
        if let SetExpr::Select(select) = q.body.as_mut() {
            for item in select.projection.iter_mut() {
                let SelectItem::UnnamedExpr(e) = item else {
                    continue;
                };
                let (table, column) = match e {
                    Expr::Identifier(i) => (None, ident_name(i)),
                    Expr::CompoundIdentifier(p) if p.len() == 2 => {
                        (Some(ident_name(&p[0])), ident_name(&p[1]))
                    }
                    _ => continue,
                };
                if self.lookup(table.as_deref(), &column).is_some() {
                    *item = SelectItem::ExprWithAlias {
                        expr: e.clone(),
                        alias: Ident::with_quote('"', column),
                    };
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
        self.stack.pop();
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        let replaced = match e {
            Expr::Identifier(i) => {
                let name = ident_name(i);
                self.lookup(None, &name).or_else(|| self.qualify(&name))
            }
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                self.lookup(Some(&ident_name(&parts[0])), &ident_name(&parts[1]))
            }
            _ => None,
        };
        if let Some(r) = replaced {
            *e = r;
        }
        ControlFlow::Continue(())
    }
}

/// `*` and `f.*` where `f` is a function: its columns by name; other FROM items keep
/// theirs (`t.*`).
fn expand_wildcards(select: &mut ast::Select, level: &[Scope], order: &[Option<usize>]) {
    let names: Vec<Option<String>> = factors(select)
        .into_iter()
        .map(|f| match f {
            TableFactor::Table { name, alias, .. } => Some(
                alias
                    .as_ref()
                    .map_or_else(|| object_name(name), |a| ident_name(&a.name)),
            ),
            TableFactor::Derived { alias, .. } => alias.as_ref().map(|a| ident_name(&a.name)),
            _ => None,
        })
        .collect();
    let columns_of = |scope: &Scope| -> Vec<SelectItem> {
        scope
            .columns
            .iter()
            .enumerate()
            .map(|(i, (name, _))| SelectItem::ExprWithAlias {
                expr: qualified_name(&scope.alias, &format!("#{i}")),
                alias: Ident::with_quote('"', name),
            })
            .collect()
    };
    let mut items = Vec::new();
    for item in select.projection.drain(..) {
        match &item {
            SelectItem::Wildcard(_) => {
                for (i, slot) in order.iter().enumerate() {
                    match slot {
                        Some(at) => items.extend(columns_of(&level[*at])),
                        None => match names.get(i).cloned().flatten() {
                            Some(n) => items.push(SelectItem::QualifiedWildcard(
                                ast::SelectItemQualifiedWildcardKind::ObjectName(ObjectName::from(
                                    vec![Ident::with_quote('"', n)],
                                )),
                                ast::WildcardAdditionalOptions::default(),
                            )),
                            None => items.push(item.clone()),
                        },
                    }
                }
            }
            SelectItem::QualifiedWildcard(
                ast::SelectItemQualifiedWildcardKind::ObjectName(name),
                _,
            ) => match level.iter().find(|s| s.alias == object_name(name)) {
                Some(scope) => items.extend(columns_of(scope)),
                None => items.push(item),
            },
            _ => items.push(item),
        }
    }
    select.projection = items;
}

/// `alias.column` as the visitor will resolve it (to the function's value expression).
fn qualified_name(table: &str, column: &str) -> Expr {
    Expr::CompoundIdentifier(vec![
        Ident::with_quote('"', table),
        Ident::with_quote('"', column),
    ])
}

/// `SELECT *` over functions in FROM spelled out (`t.*` for tables, each function column by
/// name), before typing, so the result columns get the functions' types.
pub fn expand(stmt: &mut Statement, found: &[Found]) {
    struct Expander<'a> {
        found: std::slice::Iter<'a, Found>,
    }
    impl VisitorMut for Expander<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
            let SetExpr::Select(select) = q.body.as_mut() else {
                return ControlFlow::Continue(());
            };
            let mut level = Vec::new();
            let mut order = Vec::new();
            for factor in factors(select) {
                if call_of(factor).is_some() {
                    let Some(f) = self.found.next() else {
                        return ControlFlow::Break(());
                    };
                    order.push(Some(level.len()));
                    level.push(Scope {
                        alias: f.alias.clone(),
                        columns: f
                            .columns
                            .iter()
                            .map(|c| (c.name.clone(), qualified_name(&f.alias, &c.name)))
                            .collect(),
                    });
                } else {
                    order.push(None);
                }
            }
            // The SELECT list's own calls were counted too.
            for _ in list_calls(select) {
                self.found.next();
            }
            if !level.is_empty() {
                expand_wildcards(select, &level, &order);
            }
            ControlFlow::Continue(())
        }
    }
    if !found.is_empty() {
        let _ = stmt.visit(&mut Expander {
            found: found.iter(),
        });
    }
}

/// Rewrite the set-returning functions `found` listed (in the same order) and every
/// reference to their columns.
pub fn rewrite(stmt: &mut Statement, found: &[Found], catalog: &[&Table]) -> Result<()> {
    if found.is_empty() {
        return Ok(());
    }
    let mut rewriter = Rewriter {
        found: found.iter(),
        catalog,
        stack: Vec::new(),
    };
    match stmt.visit(&mut rewriter) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(Error::internal(
            "set-returning functions changed between typing and rewriting",
        )),
    }
}
