//! PostgreSQL semantics that SQLite's operators do not have, rewritten with the types the
//! catalog gives each expression: casts (`cairn_cast`), exact numeric arithmetic
//! (`cairn_num`), integer arithmetic that fails on overflow (`cairn_int`), `^`, date
//! arithmetic, `extract`/`date_part`/`date_trunc`, exact `sum` of numerics, and assignment
//! casts into typed columns (`cairn_assign`). The functions live in `storage::functions`.
//!
//! Types are inferred on the statement as the client wrote it: each node's rewrite is
//! decided before its children are rewritten (a stack carries the decision from the pre-
//! to the post-visit), so a parent sees its children's PostgreSQL types, not the functions
//! they became.

use super::translate::{
    call, column_of, declared_type, expr_scale, expr_type, function_args, function_name,
    literal_expr, literal_value,
};
use crate::catalog::{Column, Table};
use crate::error::{sqlstate, Error, Result};
use crate::types::{self, PgType, Typmod};
use sqlparser::ast::{
    self, BinaryOperator as B, Expr, SelectItem, SetExpr, Statement, Value as AstValue, VisitMut,
    VisitorMut,
};
use std::ops::ControlFlow;

/// What to do with one node once its children are rewritten.
enum Plan {
    Keep,
    /// `date ± n`, `n + date`: (date operand is left, subtract).
    DateAdd {
        date_left: bool,
        subtract: bool,
    },
    DateDiff,
    Numeric {
        op: i64,
        scales: (Option<u32>, Option<u32>),
    },
    Integer {
        op: i64,
        bits: i64,
    },
    Power {
        numeric: bool,
        scales: (Option<u32>, Option<u32>),
    },
    Cast {
        from: Option<PgType>,
        to: PgType,
        typmod: Option<Typmod>,
    },
    Extract {
        field: String,
        from: PgType,
        double: bool,
    },
    DateTrunc {
        from: PgType,
    },
    NumericSum {
        scale: Option<u32>,
    },
    /// avg() of numerics, exactly, with PostgreSQL's scale.
    NumericAvg {
        scale: Option<u32>,
    },

    /// `timestamp ± interval` (timestamp operand left unless `swapped`).
    MomentAdd {
        ty: PgType,
        subtract: bool,
        swapped: bool,
    },
    /// `timestamp - timestamp`.
    MomentDiff {
        ty: PgType,
    },
    /// `interval ± interval`.
    IntervalOp {
        subtract: bool,
    },
    /// `interval * n`, `n * interval`, `interval / n`.
    IntervalMul {
        interval_left: bool,
        divide: bool,
    },
    /// `-interval`.
    IntervalNeg,
    /// A comparison of intervals: both sides by `cairn_interval_key`.
    IntervalCompare,
    /// `ARRAY[a, b]` → `json_array(a, b)`.
    ArrayLiteral,
    /// `x op ANY (array)` / `x op ALL (array)`.
    Quantified {
        all: bool,
    },
    /// `a[i]`, `a[lo:hi]`.
    Subscript,
    /// `a || b` with arrays: cat, append (element right) or prepend (element left).
    ArrayConcat {
        function: &'static str,
    },
    /// `@>`, `<@`, `&&`.
    ArrayOperator {
        function: &'static str,
        swapped: bool,
    },
    /// A function that needs an argument's type appended (`array_to_string`, `to_char`).
    Typed {
        function: &'static str,
        arity: usize,
        ty: Option<PgType>,
    },
    /// `make_interval(days => 3)`: named arguments in PostgreSQL's positions.
    MakeInterval,
}

struct Typer<'a> {
    tables: &'a [&'a Table],
    stack: Vec<Plan>,
    failure: Option<Error>,
}

fn is_integer(t: PgType) -> bool {
    matches!(t, PgType::Int2 | PgType::Int4 | PgType::Int8)
}

fn bits(t: PgType) -> i64 {
    match t {
        PgType::Int2 => 16,
        PgType::Int4 => 32,
        _ => 64,
    }
}

fn is_datetime(t: PgType) -> bool {
    matches!(t, PgType::Date | PgType::Timestamp | PgType::Timestamptz)
}

fn text(s: &str) -> Expr {
    Expr::value(AstValue::SingleQuotedString(s.to_string()))
}

fn int(i: i64) -> Expr {
    Expr::value(AstValue::Number(i.to_string(), false))
}

fn scale_arg(s: Option<u32>) -> Expr {
    s.map_or_else(|| Expr::value(AstValue::Null), |s| int(s.into()))
}

fn type_arg(t: Option<PgType>) -> Expr {
    t.map_or_else(|| Expr::value(AstValue::Null), |t| text(t.name()))
}

/// A numeric literal SQLite would read as a double that is not the decimal written: passed
/// to the exact functions as text instead.
fn exact_operand(e: Expr) -> Expr {
    match &e {
        Expr::Value(v) => match &v.value {
            AstValue::Number(n, _)
                if matches!(literal_value(&e), Some(rusqlite::types::Value::Text(_))) =>
            {
                text(n)
            }
            _ => e,
        },
        _ => e,
    }
}

impl Typer<'_> {
    fn plan(&self, e: &Expr) -> Result<Plan> {
        let ty = |e: &Expr| expr_type(e, self.tables);
        Ok(match e {
            Expr::Array(a) if a.elem.iter().any(|e| matches!(e, Expr::Array(_))) => {
                return Err(Error::unsupported("multidimensional arrays"))
            }
            Expr::Array(_) => Plan::ArrayLiteral,
            Expr::AnyOp { .. } => Plan::Quantified { all: false },
            Expr::AllOp { .. } => Plan::Quantified { all: true },
            Expr::CompoundFieldAccess { access_chain, .. } => match access_chain.as_slice() {
                [ast::AccessExpr::Subscript(_)] => Plan::Subscript,
                _ => {
                    return Err(Error::unsupported(
                        "field access and subscripts of more than one dimension",
                    ))
                }
            },
            Expr::UnaryOp {
                op: ast::UnaryOperator::Minus,
                expr,
            } if ty(expr) == Some(PgType::Interval) => Plan::IntervalNeg,
            Expr::BinaryOp {
                op: op @ (B::AtArrow | B::ArrowAt | B::PGOverlap),
                ..
            } => Plan::ArrayOperator {
                function: if *op == B::PGOverlap {
                    "cairn_array_overlap"
                } else {
                    "cairn_array_contains"
                },
                swapped: *op == B::ArrowAt,
            },
            Expr::BinaryOp { left, op, right }
                if interval_or_array(ty(left), ty(right))
                    || (*op == B::Minus
                        && matches!(ty(left), Some(PgType::Timestamp | PgType::Timestamptz))
                        && is_datetime_opt(ty(right))) =>
            {
                let (l, r) = (ty(left), ty(right));
                let interval = Some(PgType::Interval);
                let array = |t: Option<PgType>| t.is_some_and(PgType::is_array);
                match op {
                    B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq
                        if l == interval || r == interval =>
                    {
                        Plan::IntervalCompare
                    }
                    B::Plus | B::Minus if is_datetime_opt(l) && r == interval => Plan::MomentAdd {
                        ty: l.unwrap_or(PgType::Timestamptz),
                        subtract: *op == B::Minus,
                        swapped: false,
                    },
                    B::Plus if l == interval && is_datetime_opt(r) => Plan::MomentAdd {
                        ty: r.unwrap_or(PgType::Timestamptz),
                        subtract: false,
                        swapped: true,
                    },
                    B::Minus
                        if matches!(l, Some(PgType::Timestamp | PgType::Timestamptz))
                            && is_datetime_opt(r) =>
                    {
                        Plan::MomentDiff {
                            ty: l.unwrap_or(PgType::Timestamptz),
                        }
                    }
                    B::Plus | B::Minus if l == interval && r == interval => Plan::IntervalOp {
                        subtract: *op == B::Minus,
                    },
                    B::Multiply if l == interval => Plan::IntervalMul {
                        interval_left: true,
                        divide: false,
                    },
                    B::Multiply if r == interval => Plan::IntervalMul {
                        interval_left: false,
                        divide: false,
                    },
                    B::Divide if l == interval => Plan::IntervalMul {
                        interval_left: true,
                        divide: true,
                    },
                    B::StringConcat if array(l) && array(r) => Plan::ArrayConcat {
                        function: "array_cat",
                    },
                    B::StringConcat if array(l) => Plan::ArrayConcat {
                        function: "array_append",
                    },
                    B::StringConcat if array(r) => Plan::ArrayConcat {
                        function: "array_prepend",
                    },
                    _ => Plan::Keep,
                }
            }
            Expr::BinaryOp { left, op, right } => {
                let (l, r) = (ty(left), ty(right));
                let op_code = match op {
                    B::Plus => 0,
                    B::Minus => 1,
                    B::Multiply => 2,
                    B::Divide => 3,
                    B::PGExp => {
                        return Ok(Plan::Power {
                            numeric: ty(e) == Some(PgType::Numeric),
                            scales: (
                                expr_scale(left, self.tables),
                                expr_scale(right, self.tables),
                            ),
                        })
                    }
                    _ => return Ok(Plan::Keep),
                };
                match (l, r) {
                    (Some(PgType::Date), Some(PgType::Date)) if op_code == 1 => Plan::DateDiff,
                    (Some(PgType::Date), Some(n)) if is_integer(n) && op_code < 2 => {
                        Plan::DateAdd {
                            date_left: true,
                            subtract: op_code == 1,
                        }
                    }
                    (Some(n), Some(PgType::Date)) if is_integer(n) && op_code == 0 => {
                        Plan::DateAdd {
                            date_left: false,
                            subtract: false,
                        }
                    }
                    (Some(a), Some(b))
                        if (a == PgType::Numeric || b == PgType::Numeric)
                            && [a, b]
                                .iter()
                                .all(|t| is_integer(*t) || *t == PgType::Numeric) =>
                    {
                        Plan::Numeric {
                            op: op_code,
                            scales: (
                                expr_scale(left, self.tables),
                                expr_scale(right, self.tables),
                            ),
                        }
                    }
                    (Some(a), Some(b)) if is_integer(a) && is_integer(b) && op_code < 3 => {
                        Plan::Integer {
                            op: op_code,
                            bits: bits(a).max(bits(b)),
                        }
                    }
                    _ => Plan::Keep,
                }
            }
            Expr::Cast {
                data_type, expr, ..
            } => {
                let to = declared_type(data_type)?;
                let typmod = Typmod::of_declared(&data_type.to_string(), to)?;
                Plan::Cast {
                    from: ty(expr),
                    to,
                    typmod,
                }
            }
            Expr::Extract { field, expr, .. } => Plan::Extract {
                field: field
                    .to_string()
                    .trim_matches(['"', '\''])
                    .to_ascii_lowercase(),
                from: moment_or_interval(ty(expr)),
                double: false,
            },
            Expr::Function(f) => {
                let args = function_args(f);
                match (function_name(f).as_str(), args.as_slice()) {
                    ("date_part", [field, value]) => match literal_value(field) {
                        Some(rusqlite::types::Value::Text(field)) => Plan::Extract {
                            field: field.to_ascii_lowercase(),
                            from: moment_or_interval(ty(value)),
                            double: true,
                        },
                        _ => {
                            return Err(Error::unsupported(
                                "date_part with a field that is not a literal",
                            ))
                        }
                    },
                    ("date_trunc", [_, value]) => Plan::DateTrunc {
                        from: datetime_of(ty(value)),
                    },
                    ("sum", [value]) if ty(value) == Some(PgType::Numeric) && !is_distinct(f) => {
                        Plan::NumericSum {
                            scale: expr_scale(value, self.tables),
                        }
                    }
                    ("avg", [value])
                        if ty(value) == Some(PgType::Numeric) || is_integer_opt(ty(value)) =>
                    {
                        Plan::NumericAvg {
                            scale: expr_scale(value, self.tables),
                        }
                    }
                    ("array_to_string", [array, ..]) => Plan::Typed {
                        function: "cairn_array_to_string",
                        arity: 3,
                        ty: ty(array),
                    },
                    ("to_char", [value, _]) => Plan::Typed {
                        function: "cairn_to_char",
                        arity: 2,
                        ty: ty(value),
                    },
                    ("make_interval", _) => Plan::MakeInterval,
                    _ => Plan::Keep,
                }
            }
            _ => Plan::Keep,
        })
    }

    fn apply(plan: Plan, e: &mut Expr) -> Result<()> {
        let take = |b: &mut Box<Expr>| std::mem::replace(b.as_mut(), Expr::value(AstValue::Null));
        match plan {
            Plan::Keep => {}
            Plan::DateAdd {
                date_left,
                subtract,
            } => {
                if let Expr::BinaryOp { left, right, .. } = e {
                    let (l, r) = (take(left), take(right));
                    let (date, days) = if date_left { (l, r) } else { (r, l) };
                    let days = if subtract {
                        Expr::UnaryOp {
                            op: ast::UnaryOperator::Minus,
                            expr: Box::new(Expr::Nested(Box::new(days))),
                        }
                    } else {
                        days
                    };
                    *e = call("cairn_date_add", vec![date, days]);
                }
            }
            Plan::DateDiff => {
                if let Expr::BinaryOp { left, right, .. } = e {
                    let (l, r) = (take(left), take(right));
                    *e = call("cairn_date_diff", vec![l, r]);
                }
            }
            Plan::Numeric { op, scales } => {
                if let Expr::BinaryOp { left, right, .. } = e {
                    let (l, r) = (exact_operand(take(left)), exact_operand(take(right)));
                    *e = call(
                        "cairn_num",
                        vec![int(op), l, r, scale_arg(scales.0), scale_arg(scales.1)],
                    );
                }
            }
            Plan::Integer { op, bits } => {
                if let Expr::BinaryOp { left, right, .. } = e {
                    let (l, r) = (take(left), take(right));
                    *e = call("cairn_int", vec![int(op), l, r, int(bits)]);
                }
            }
            Plan::Power { numeric, scales } => {
                if let Expr::BinaryOp { left, right, .. } = e {
                    let (l, r) = (take(left), take(right));
                    let args = vec![
                        l,
                        r,
                        int(numeric.into()),
                        scale_arg(scales.0),
                        scale_arg(scales.1),
                    ];
                    *e = call("cairn_pow", args);
                }
            }
            Plan::Cast { from, to, typmod } => {
                if let Expr::Cast {
                    expr, data_type, ..
                } = e
                {
                    let declared = data_type.to_string();
                    if let Some(value) = literal_value(expr) {
                        *e = literal_expr(&types::cast(value, None, to, typmod, true)?);
                    } else if from == Some(to) && typmod.is_none() {
                        *e = Expr::Nested(Box::new(take(expr)));
                    } else {
                        let inner = take(expr);
                        *e = call("cairn_cast", vec![inner, text(&declared), type_arg(from)]);
                    }
                }
            }
            Plan::Extract {
                field,
                from,
                double,
            } => {
                let value = match e {
                    Expr::Extract { expr, .. } => take(expr),
                    Expr::Function(_) => function_arg_owned(e, 1),
                    _ => return Ok(()),
                };
                *e = call(
                    "cairn_extract",
                    vec![text(&field), value, text(from.name()), int(double.into())],
                );
            }
            Plan::DateTrunc { from } => {
                let field = function_arg_owned(e, 0);
                let value = function_arg_owned(e, 1);
                *e = call("cairn_date_trunc", vec![field, value, text(from.name())]);
            }
            Plan::NumericSum { scale } => {
                let value = function_arg_owned(e, 0);
                recall(e, "cairn_num_sum", vec![value, scale_arg(scale)]);
            }
            Plan::NumericAvg { scale } => {
                let value = function_arg_owned(e, 0);
                // SQLite's DISTINCT aggregates take one argument: then without the scale.
                let distinct = matches!(e, Expr::Function(f) if is_distinct(f));
                let args = if distinct {
                    vec![value]
                } else {
                    vec![value, scale_arg(scale)]
                };
                recall(e, "cairn_num_avg", args);
            }

            Plan::MomentAdd {
                ty,
                subtract,
                swapped,
            } => {
                if let Expr::BinaryOp { left, right, .. } = e {
                    let (l, r) = (take(left), take(right));
                    let (moment, interval) = if swapped { (r, l) } else { (l, r) };
                    let sign = int(if subtract { -1 } else { 1 });
                    *e = call(
                        "cairn_ts_add",
                        vec![moment, text(ty.name()), interval, sign],
                    );
                }
            }
            Plan::MomentDiff { ty } => {
                if let Expr::BinaryOp { left, right, .. } = e {
                    let (l, r) = (take(left), take(right));
                    *e = call("cairn_ts_diff", vec![l, r, text(ty.name())]);
                }
            }
            Plan::IntervalOp { subtract } => {
                if let Expr::BinaryOp { left, right, .. } = e {
                    let (l, r) = (take(left), take(right));
                    *e = call("cairn_interval_op", vec![int(subtract.into()), l, r]);
                }
            }
            Plan::IntervalMul {
                interval_left,
                divide,
            } => {
                if let Expr::BinaryOp { left, right, .. } = e {
                    let (l, r) = (take(left), take(right));
                    let (i, n) = if interval_left { (l, r) } else { (r, l) };
                    *e = call("cairn_interval_mul", vec![i, n, int(divide.into())]);
                }
            }
            Plan::IntervalNeg => {
                if let Expr::UnaryOp { expr, .. } = e {
                    let inner = take(expr);
                    *e = call("cairn_interval_neg", vec![inner]);
                }
            }
            Plan::IntervalCompare => {
                if let Expr::BinaryOp { left, right, .. } = e {
                    let (l, r) = (take(left), take(right));
                    **left = call("cairn_interval_key", vec![l]);
                    **right = call("cairn_interval_key", vec![r]);
                }
            }
            Plan::ArrayLiteral => {
                if let Expr::Array(a) = e {
                    let items = std::mem::take(&mut a.elem);
                    *e = call("json_array", items);
                }
            }
            Plan::Quantified { all } => {
                if let Expr::AnyOp {
                    left,
                    compare_op,
                    right,
                    ..
                }
                | Expr::AllOp {
                    left,
                    compare_op,
                    right,
                } = e
                {
                    let (l, r) = (take(left), take(right));
                    let op = compare_op.clone();
                    *e = quantified(l, &op, r, all)?;
                }
            }
            Plan::Subscript => {
                if let Expr::CompoundFieldAccess { root, access_chain } = e {
                    let array = take(root);
                    let null = || Expr::value(AstValue::Null);
                    *e = match access_chain.pop() {
                        Some(ast::AccessExpr::Subscript(ast::Subscript::Index { index })) => {
                            call("cairn_array_get", vec![array, index])
                        }
                        Some(ast::AccessExpr::Subscript(ast::Subscript::Slice {
                            lower_bound,
                            upper_bound,
                            stride: None,
                        })) => call(
                            "cairn_array_slice",
                            vec![
                                array,
                                lower_bound.unwrap_or_else(null),
                                upper_bound.unwrap_or_else(null),
                            ],
                        ),
                        _ => return Err(Error::unsupported("array slices with a stride")),
                    };
                }
            }
            Plan::ArrayConcat { function } => {
                if let Expr::BinaryOp { left, right, .. } = e {
                    let (l, r) = (take(left), take(right));
                    *e = call(function, vec![l, r]);
                }
            }
            Plan::ArrayOperator { function, swapped } => {
                if let Expr::BinaryOp { left, right, .. } = e {
                    let (l, r) = (take(left), take(right));
                    let args = if swapped { vec![r, l] } else { vec![l, r] };
                    *e = call(function, args);
                }
            }
            Plan::Typed {
                function,
                arity,
                ty,
            } => {
                let mut args: Vec<Expr> = (0..arity).map(|i| function_arg_owned(e, i)).collect();
                args.push(type_arg(ty));
                recall(e, function, args);
            }
            Plan::MakeInterval => {
                const NAMES: [&str; 7] =
                    ["years", "months", "weeks", "days", "hours", "mins", "secs"];
                let mut args: Vec<Expr> = (0..7).map(|_| int(0)).collect();
                if let Expr::Function(f) = e {
                    if let ast::FunctionArguments::List(list) = &mut f.args {
                        for (i, arg) in list.args.drain(..).enumerate() {
                            match arg {
                                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(a))
                                    if i < 7 =>
                                {
                                    args[i] = a
                                }
                                ast::FunctionArg::Named {
                                    name,
                                    arg: ast::FunctionArgExpr::Expr(a),
                                    ..
                                } => {
                                    let n = super::translate::ident_name(&name);
                                    let at =
                                        NAMES.iter().position(|x| *x == n).ok_or_else(|| {
                                            Error::sql(
                                                sqlstate::UNDEFINED_FUNCTION,
                                                format!("make_interval has no argument named {n}"),
                                            )
                                        })?;
                                    args[at] = a;
                                }
                                ast::FunctionArg::ExprNamed {
                                    name: Expr::Identifier(name),
                                    arg: ast::FunctionArgExpr::Expr(a),
                                    ..
                                } => {
                                    let n = super::translate::ident_name(&name);
                                    let at =
                                        NAMES.iter().position(|x| *x == n).ok_or_else(|| {
                                            Error::sql(
                                                sqlstate::UNDEFINED_FUNCTION,
                                                format!("make_interval has no argument named {n}"),
                                            )
                                        })?;
                                    args[at] = a;
                                }
                                _ => {
                                    return Err(Error::sql(
                                        sqlstate::UNDEFINED_FUNCTION,
                                        "make_interval takes at most 7 arguments",
                                    ))
                                }
                            }
                        }
                    }
                }
                *e = call("make_interval", args);
            }
        }
        Ok(())
    }
}

fn is_integer_opt(t: Option<PgType>) -> bool {
    t.is_some_and(is_integer)
}

fn is_datetime_opt(t: Option<PgType>) -> bool {
    t.is_some_and(is_datetime)
}

/// Whether an operator between these types is one of the interval or array forms.
fn interval_or_array(l: Option<PgType>, r: Option<PgType>) -> bool {
    let special = |t: Option<PgType>| t.is_some_and(|t| t == PgType::Interval || t.is_array());
    special(l) || special(r)
}

fn moment_or_interval(t: Option<PgType>) -> PgType {
    match t {
        Some(PgType::Interval) => PgType::Interval,
        other => datetime_of(other),
    }
}

/// `x op ANY (a)` / `x op ALL (a)` over an array (or a subquery) in SQLite's terms.
fn quantified(left: Expr, op: &B, right: Expr, all: bool) -> Result<Expr> {
    let subquery_of = |right: Expr| -> Result<Box<ast::Query>> {
        let sql = "SELECT value FROM json_each(NULL)";
        let Some(Statement::Query(mut q)) = super::translate::parse(sql)?.pop() else {
            return Err(Error::internal("json_each subquery"));
        };
        let _ = q.visit(&mut ReplaceNull(Some(right)));
        Ok(q)
    };
    let (left, rows) = match right {
        Expr::Subquery(q) => (left, q),
        array => (left, subquery_of(array)?),
    };
    Ok(match (op, all) {
        (B::Eq, false) => Expr::InSubquery {
            expr: Box::new(left),
            subquery: rows,
            negated: false,
        },
        (B::NotEq, true) => Expr::InSubquery {
            expr: Box::new(left),
            subquery: rows,
            negated: true,
        },
        _ => {
            // Some element compares true / no element compares false.
            let SetExpr::Select(select) = rows.body.as_ref() else {
                return Err(Error::unsupported("this ANY/ALL form"));
            };
            if select.from.is_empty()
                || !matches!(
                    select.projection.as_slice(),
                    [SelectItem::UnnamedExpr(Expr::Identifier(_))]
                )
            {
                return Err(Error::unsupported(format!(
                    "{op} {} over a subquery (use EXISTS)",
                    if all { "ALL" } else { "ANY" }
                )));
            }
            let mut q = rows.clone();
            let SetExpr::Select(s) = q.body.as_mut() else {
                return Err(Error::internal("select"));
            };
            let value = Expr::Identifier(ast::Ident::new("value"));
            let compared = Expr::BinaryOp {
                left: Box::new(left),
                op: op.clone(),
                right: Box::new(value),
            };
            s.selection = Some(if all {
                Expr::UnaryOp {
                    op: ast::UnaryOperator::Not,
                    expr: Box::new(Expr::Nested(Box::new(compared))),
                }
            } else {
                compared
            });
            s.projection = vec![SelectItem::UnnamedExpr(int(1))];
            let exists = Expr::Exists {
                subquery: q,
                negated: all,
            };
            Expr::Nested(Box::new(exists))
        }
    })
}

/// Replaces the first NULL literal it meets with its expression.
struct ReplaceNull(Option<Expr>);

impl VisitorMut for ReplaceNull {
    type Break = ();
    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Value(v) = expr {
            if v.value == AstValue::Null {
                if let Some(e) = self.0.take() {
                    *expr = e;
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    }
}

fn is_distinct(f: &ast::Function) -> bool {
    matches!(&f.args, ast::FunctionArguments::List(l) if l.duplicate_treatment.is_some())
}

fn datetime_of(t: Option<PgType>) -> PgType {
    t.filter(|t| is_datetime(*t)).unwrap_or(PgType::Timestamptz)
}

/// `e` (a function call) renamed to `name` with `args`, keeping what the call says around
/// its arguments: DISTINCT, ORDER BY, FILTER (WHERE ...), OVER (...).
fn recall(e: &mut Expr, name: &str, args: Vec<Expr>) {
    let mut new = call(name, args);
    if let (Expr::Function(old), Expr::Function(f)) = (&*e, &mut new) {
        f.filter = old.filter.clone();
        f.over = old.over.clone();
        f.null_treatment = old.null_treatment;
        if let (ast::FunctionArguments::List(from), ast::FunctionArguments::List(to)) =
            (&old.args, &mut f.args)
        {
            to.duplicate_treatment = from.duplicate_treatment;
            to.clauses = from.clauses.clone();
        }
    }
    *e = new;
}

/// The i-th argument of a function call, taken out of it.
fn function_arg_owned(e: &mut Expr, i: usize) -> Expr {
    if let Expr::Function(f) = e {
        if let ast::FunctionArguments::List(list) = &mut f.args {
            if let Some(ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(a))) =
                list.args.get_mut(i)
            {
                return std::mem::replace(a, Expr::value(AstValue::Null));
            }
        }
    }
    Expr::value(AstValue::Null)
}

impl Typer<'_> {
    /// Where a numeric of known display scale becomes text (`||`, `concat`, `concat_ws`, a
    /// cast to text), wrap it so it prints its scale: a numeric(8,2) column keeps 12.50 as
    /// 12.5, and PostgreSQL prints `'x' || price` as `x12.50`. Done before the children are
    /// visited, so the wrapped operand is still rewritten for its own type.
    fn numeric_text(&self, e: &mut Expr) {
        let scaled = |x: &Expr| -> Option<u32> {
            (expr_type(x, self.tables) == Some(PgType::Numeric))
                .then(|| expr_scale(x, self.tables))
                .flatten()
                .filter(|s| *s > 0)
        };
        let wrap = |x: &mut Expr, scale: u32| {
            let inner = std::mem::replace(x, Expr::value(AstValue::Null));
            *x = call("cairn_numeric_text", vec![inner, int(scale.into())]);
        };
        match e {
            Expr::BinaryOp {
                left,
                op: B::StringConcat,
                right,
            } => {
                for side in [left, right] {
                    if let Some(s) = scaled(side) {
                        wrap(side, s);
                    }
                }
            }
            Expr::Cast {
                expr, data_type, ..
            } if PgType::parse_declared(&data_type.to_string()).is_some_and(PgType::is_textual) => {
                if let Some(s) = scaled(expr) {
                    wrap(expr, s);
                }
            }
            Expr::Function(f)
                if matches!(function_name(f).as_str(), "concat" | "concat_ws" | "format") =>
            {
                if let ast::FunctionArguments::List(list) = &mut f.args {
                    for arg in list.args.iter_mut() {
                        if let ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(x)) = arg {
                            if let Some(s) = scaled(x) {
                                wrap(x, s);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

impl VisitorMut for Typer<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        self.numeric_text(e);
        match self.plan(e) {
            Ok(plan) => {
                self.stack.push(plan);
                ControlFlow::Continue(())
            }
            Err(err) => {
                self.failure = Some(err);
                ControlFlow::Break(())
            }
        }
    }

    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        let plan = self.stack.pop().unwrap_or(Plan::Keep);
        match Typer::apply(plan, e) {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                self.failure = Some(err);
                ControlFlow::Break(())
            }
        }
    }
}

/// Rewrite `stmt`'s expressions for PostgreSQL's semantics, with the types of `tables`.
pub fn rewrite(stmt: &mut Statement, tables: &[&Table]) -> Result<()> {
    assign_casts(stmt, tables)?;
    let mut typer = Typer {
        tables,
        stack: Vec::new(),
        failure: None,
    };
    let _ = stmt.visit(&mut typer);
    typer.failure.map_or(Ok(()), Err)
}

/// Values written into typed columns by UPDATE SET, INSERT VALUES and INSERT ... SELECT pass
/// through PostgreSQL's assignment cast (`cairn_assign`): numeric(p, s) rounds, varchar(n)
/// refuses what is too long, a double into an integer rounds, and text into a non-text
/// column is 42804 before anything runs. Literals were coerced already.
fn assign_casts(stmt: &mut Statement, tables: &[&Table]) -> Result<()> {
    let assign = |e: &mut Expr, column: &Column| -> Result<()> {
        if literal_value(e).is_some() || super::translate::placeholder_index(e).is_some() {
            return Ok(());
        }
        let from = expr_type(e, tables);
        if let Some(from) = from {
            if from.is_textual() && !column.ty.is_textual() && from != PgType::Unknown {
                return Err(Error::sql(
                    sqlstate::DATATYPE_MISMATCH,
                    format!(
                        "column \"{}\" is of type {} but expression is of type {}",
                        column.name,
                        column.ty.name(),
                        from.name()
                    ),
                ));
            }
        }
        if from == Some(column.ty) && column.typmod.is_none() {
            return Ok(());
        }
        let declared = match column.typmod {
            Some(m) => m.type_name(column.ty),
            None => column.ty.name().to_string(),
        };
        let inner = std::mem::replace(e, Expr::value(AstValue::Null));
        *e = call("cairn_assign", vec![inner, text(&declared), type_arg(from)]);
        Ok(())
    };
    match stmt {
        Statement::Update(update) => {
            let ast::TableFactor::Table { name, .. } = &update.table.relation else {
                return Ok(());
            };
            let Some(table) = super::translate::table_named(tables, name) else {
                return Ok(());
            };
            for a in update.assignments.iter_mut() {
                let ast::AssignmentTarget::ColumnName(col) = &a.target else {
                    continue;
                };
                let name = super::translate::object_name(col);
                let name = name.rsplit('.').next().unwrap_or(&name);
                if let Some(column) = table.column(name) {
                    assign(&mut a.value, column)?;
                }
            }
        }
        Statement::Insert(insert) => {
            let Some(table) = super::translate::insert_target(insert, tables) else {
                return Ok(());
            };
            let columns: Vec<Option<&Column>> = if insert.columns.is_empty() {
                table.columns.iter().map(Some).collect()
            } else {
                insert.columns.iter().map(|c| column_of(table, c)).collect()
            };
            let Some(source) = insert.source.as_mut() else {
                return Ok(());
            };
            match source.body.as_mut() {
                SetExpr::Values(values) => {
                    for row in values.rows.iter_mut() {
                        for (e, column) in row.iter_mut().zip(&columns) {
                            if let Some(column) = column {
                                assign(e, column)?;
                            }
                        }
                    }
                }
                SetExpr::Select(select) => {
                    let wildcard = select.projection.iter().any(|i| {
                        matches!(
                            i,
                            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
                        )
                    });
                    if !wildcard {
                        for (item, column) in select.projection.iter_mut().zip(&columns) {
                            let (SelectItem::UnnamedExpr(e)
                            | SelectItem::ExprWithAlias { expr: e, .. }) = item
                            else {
                                continue;
                            };
                            if let Some(column) = column {
                                assign(e, column)?;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}
