//! Sequences: `nextval`, `currval`, `setval` and `lastval`, evaluated by the session before
//! a statement runs (a sequence is cluster-wide state in the meta group, which no shard's
//! SQLite can reach), each call replaced by its value.
//!
//! The meta group keeps each sequence's next value (`_cairn_sequences`, under
//! `seq:<name>`); a node reserves `cache` values at a time, as PostgreSQL's sessions cache
//! values: each value is handed out once, in increasing order within a node. A cycling
//! sequence wraps to its `min` (or, descending, its `max`). The sequence behind a serial
//! or identity column (`<table>_<column>_seq`) is the column's own counter.
//!
//! A call is evaluated once per place it appears, so `INSERT ... VALUES (nextval('s')),
//! (nextval('s'))` takes two values; a `nextval` in a query that reads rows (it would need
//! one per row) is refused.

use super::session::Engine;
use super::translate::{literal_expr, Translated};
use crate::catalog::{Catalog, Sequence};
use crate::cluster::MetaTxn;
use crate::error::{sqlstate, Error, Result};
use rusqlite::types::Value;
use sqlparser::ast::{
    self, Expr, FunctionArguments, Statement, Value as AstValue, VisitMut, VisitorMut,
};
use std::collections::BTreeMap;
use std::ops::ControlFlow;

const FUNCTIONS: [&str; 4] = ["nextval", "currval", "setval", "lastval"];

/// What a session remembers of its sequences.
#[derive(Debug, Default)]
pub struct SessionValues {
    /// The last value `nextval` gave in this session, per sequence.
    current: BTreeMap<String, i64>,
    last: Option<i64>,
}

/// One call found in a statement, in visiting order.
#[derive(Debug)]
struct Call {
    function: String,
    /// The sequence named (its first argument), except for lastval.
    sequence: Option<String>,
    /// setval's value and is_called.
    value: Option<i64>,
    is_called: bool,
    /// In a query that reads rows (a FROM clause).
    per_row: bool,
}

fn sequence_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            AstValue::SingleQuotedString(s) => {
                Some(s.rsplit('.').next().unwrap_or(s).to_lowercase())
            }
            _ => None,
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) => sequence_name(expr),
        // `'s'::regclass`, as the catalog vocabulary rewrites it.
        Expr::Function(f) if super::translate::function_name(f) == "cairn_reg_oid" => {
            super::translate::function_args(f)
                .get(1)
                .and_then(|a| sequence_name(a))
        }
        _ => None,
    }
}

fn literal_int(e: &Expr) -> Option<i64> {
    match super::translate::literal_value(e)? {
        Value::Integer(i) => Some(i),
        Value::Real(f) if f.fract() == 0.0 => Some(f as i64),
        Value::Text(t) => t.trim().parse().ok(),
        _ => None,
    }
}

/// Whether a translated statement calls a sequence function.
pub fn mentioned(t: &Translated) -> bool {
    let lower = t.sql.to_ascii_lowercase();
    FUNCTIONS.iter().any(|f| lower.contains(f))
}

/// The calls of `stmt` in visiting order (the same order [`replace`] meets them).
fn calls(stmt: &Statement) -> Result<Vec<Call>> {
    struct Finder {
        out: Vec<Call>,
        /// Per query being visited: whether it reads rows.
        reading: Vec<bool>,
        failure: Option<Error>,
    }
    impl ast::Visitor for Finder {
        type Break = ();
        fn pre_visit_query(&mut self, q: &ast::Query) -> ControlFlow<()> {
            let reads = matches!(q.body.as_ref(), ast::SetExpr::Select(s) if !s.from.is_empty());
            self.reading.push(reads);
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &ast::Query) -> ControlFlow<()> {
            self.reading.pop();
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            let Expr::Function(f) = e else {
                return ControlFlow::Continue(());
            };
            let name = super::translate::function_name(f);
            if !FUNCTIONS.contains(&name.as_str()) {
                return ControlFlow::Continue(());
            }
            let args = super::translate::function_args(f);
            let sequence = args.first().and_then(|a| sequence_name(a));
            if name != "lastval" && sequence.is_none() {
                self.failure = Some(Error::unsupported(format!(
                    "{name}() of a sequence not named by a literal"
                )));
                return ControlFlow::Break(());
            }
            let value = args.get(1).and_then(|a| literal_int(a));
            if name == "setval" && value.is_none() {
                self.failure = Some(Error::unsupported(
                    "setval() with a value that is not a literal",
                ));
                return ControlFlow::Break(());
            }
            let is_called = args
                .get(2)
                .and_then(|a| super::translate::literal_value(a))
                .is_none_or(|v| !matches!(v, Value::Integer(0)));
            self.out.push(Call {
                function: name,
                sequence,
                value,
                is_called,
                per_row: self.reading.last().copied().unwrap_or(false),
            });
            ControlFlow::Continue(())
        }
    }
    let mut finder = Finder {
        out: Vec::new(),
        reading: Vec::new(),
        failure: None,
    };
    let _ = ast::Visit::visit(stmt, &mut finder);
    match finder.failure {
        Some(e) => Err(e),
        None => Ok(finder.out),
    }
}

/// Replace the calls, in visiting order, by `values`.
fn replace(stmt: &mut Statement, values: Vec<i64>) {
    struct Replacer(std::vec::IntoIter<i64>);
    impl VisitorMut for Replacer {
        type Break = ();
        fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e {
                if FUNCTIONS.contains(&super::translate::function_name(f).as_str())
                    && matches!(f.args, FunctionArguments::List(_))
                {
                    if let Some(v) = self.0.next() {
                        *e = literal_expr(&Value::Integer(v));
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = stmt.visit(&mut Replacer(values.into_iter()));
}

/// The sequence named `name`: one made by CREATE SEQUENCE, or the one behind a serial or
/// identity column (`<table>_<column>_seq`, whose counter is the column's).
enum Source {
    Sequence(Sequence),
    Serial(String),
}

fn source(catalog: &Catalog, name: &str) -> Result<Source> {
    if let Some(s) = catalog.sequence(name) {
        return Ok(Source::Sequence(s.clone()));
    }
    for t in catalog.tables() {
        if let Some((seq, _)) = t.implicit_sequence() {
            if seq.eq_ignore_ascii_case(name) {
                if t.serial.is_none() {
                    // One shard numbers its own rows (SQLite's rowid).
                    return Err(Error::unsupported(format!(
                        "nextval('{name}') of single-shard table \"{}\" (it numbers its rows itself)",
                        t.name
                    )));
                }
                return Ok(Source::Serial(t.name.clone()));
            }
        }
    }
    Err(Error::sql(
        sqlstate::UNDEFINED_TABLE,
        format!("relation \"{name}\" does not exist"),
    ))
}

fn exhausted(s: &Sequence) -> Error {
    let (which, bound) = if s.increment > 0 {
        ("maximum", s.max)
    } else {
        ("minimum", s.min)
    };
    Error::sql(
        sqlstate::SEQUENCE_GENERATOR_LIMIT_EXCEEDED,
        format!(
            "nextval: reached {which} value of sequence \"{}\" ({bound})",
            s.name
        ),
    )
}

/// The value after `v`: one increment on, wrapping if the sequence cycles, None past its
/// end otherwise.
fn step(s: &Sequence, v: i64) -> Option<i64> {
    match v.checked_add(s.increment) {
        Some(n) if (s.min..=s.max).contains(&n) => Some(n),
        _ if s.cycle => Some(if s.increment > 0 { s.min } else { s.max }),
        _ => None,
    }
}

/// The value setval leaves next: `v` itself, or (called) the one after it.
fn after_set(s: &Sequence, v: i64, is_called: bool) -> Result<Option<i64>> {
    if v < s.min || v > s.max {
        return Err(Error::sql(
            sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
            format!(
                "setval: value {v} is out of bounds for sequence \"{}\" ({}..{})",
                s.name, s.min, s.max
            ),
        ));
    }
    Ok(if is_called { step(s, v) } else { Some(v) })
}

/// The counter's stored next value; `EXHAUSTED` once it ran past the end.
const EXHAUSTED: i64 = i64::MIN;

impl Engine {
    /// `n` values of sequence `s`: from this node's reserved ones, reserving `cache` more
    /// (a meta write) when they run out. Cached entries are (next value, how many left).
    async fn next_values(&self, s: &Sequence, n: usize) -> Result<Vec<i64>> {
        let key = super::ddl::sequence_key(&s.name);
        let mut out = Vec::with_capacity(n);
        let mut cache = self.sequences.lock().await;
        while out.len() < n {
            match cache.get_mut(&key).filter(|(_, left)| *left > 0) {
                Some((next, left)) => {
                    out.push(*next);
                    *left -= 1;
                    *next = step(s, *next).unwrap_or(EXHAUSTED);
                }
                None => {
                    let want = s.cache.max((n - out.len()) as i64);
                    let mt = MetaTxn::begin(&self.cluster).await?;
                    let reserved = async {
                        let rows = mt.exec(crate::catalog::meta::sequence_next(&key)).await?;
                        let first = match rows.rows.first().and_then(|r| r.first()) {
                            Some(Value::Integer(v)) => *v,
                            _ => s.start,
                        };
                        if first == EXHAUSTED {
                            return Err(exhausted(s));
                        }
                        // Walk `want` values on; the one after them is stored.
                        let (mut next, mut count) = (Some(first), 0i64);
                        while count < want {
                            match next {
                                Some(v) => {
                                    next = step(s, v);
                                    count += 1;
                                }
                                None => break,
                            }
                        }
                        mt.exec(crate::catalog::meta::sequence_set(
                            &key,
                            next.unwrap_or(EXHAUSTED),
                        ))
                        .await?;
                        Ok((first, count))
                    }
                    .await;
                    match reserved {
                        Ok((first, count)) => {
                            mt.commit().await?;
                            cache.insert(key.clone(), (first, count));
                        }
                        Err(e) => {
                            mt.rollback().await;
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// setval: the next value becomes `v` (not called) or the one after it.
    async fn set_value(&self, s: &Sequence, v: i64, is_called: bool) -> Result<()> {
        let key = super::ddl::sequence_key(&s.name);
        let next = after_set(s, v, is_called)?.unwrap_or(EXHAUSTED);
        let mt = MetaTxn::begin(&self.cluster).await?;
        if let Err(e) = mt
            .exec(crate::catalog::meta::sequence_set(&key, next))
            .await
        {
            mt.rollback().await;
            return Err(e);
        }
        mt.commit().await?;
        // This node's reserved values are stale now; other nodes keep theirs, as other
        // sessions keep their cached values in PostgreSQL.
        self.sequences.lock().await.remove(&key);
        Ok(())
    }
}

/// `t` with every sequence call replaced by its value (`values` remembers this session's).
pub async fn evaluate(
    engine: &Engine,
    catalog: &Catalog,
    values: &mut SessionValues,
    t: &Translated,
) -> Result<Translated> {
    let Some(stmt) = &t.stmt else {
        return Ok(t.clone());
    };
    let found = calls(stmt)?;
    if found.is_empty() {
        return Ok(t.clone());
    }
    let mut results = Vec::with_capacity(found.len());
    for call in &found {
        let name = call.sequence.clone().unwrap_or_default();
        let v = match call.function.as_str() {
            "nextval" => {
                if call.per_row {
                    return Err(Error::unsupported(
                        "nextval() in a query that reads rows (it would need a value per row); \
                         use a serial or identity column, or call it in VALUES",
                    ));
                }
                let v = match source(catalog, &name)? {
                    Source::Sequence(s) => engine.next_values(&s, 1).await?[0],
                    Source::Serial(table) => engine.serial_values(&table, 1).await?[0],
                };
                values.current.insert(name, v);
                values.last = Some(v);
                v
            }
            "currval" => {
                source(catalog, &name)?;
                *values.current.get(&name).ok_or_else(|| {
                    Error::sql(
                        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                        format!(
                            "currval of sequence \"{name}\" is not yet defined in this session"
                        ),
                    )
                })?
            }
            "lastval" => values.last.ok_or_else(|| {
                Error::sql(
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "lastval is not yet defined in this session",
                )
            })?,
            _ => {
                let v = call.value.expect("setval has a value");
                match source(catalog, &name)? {
                    Source::Sequence(s) => engine.set_value(&s, v, call.is_called).await?,
                    Source::Serial(_) => {
                        return Err(Error::unsupported(format!(
                            "setval() of \"{name}\", the counter of a serial column"
                        )))
                    }
                }
                if call.is_called {
                    values.current.insert(name, v);
                    values.last = Some(v);
                }
                v
            }
        };
        results.push(v);
    }
    let mut stmt = (**stmt).clone();
    replace(&mut stmt, results);
    let mut out = t.clone();
    out.sql = stmt.to_string();
    out.stmt = Some(Box::new(stmt));
    Ok(out)
}

/// The sequence a column's DEFAULT draws from (`nextval('s')`), if it does.
pub fn default_sequence(default: &Expr) -> Option<String> {
    let mut found = None;
    let _ = ast::visit_expressions(default, |e| {
        if let Expr::Function(f) = e {
            if super::translate::function_name(f) == "nextval" {
                found = super::translate::function_args(f)
                    .first()
                    .and_then(|a| sequence_name(a));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::<()>::Continue(())
    });
    found
}
