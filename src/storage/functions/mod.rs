//! PostgreSQL functions SQLite lacks (or has with other semantics), registered on every
//! connection. Non-deterministic ones (`now()`, `random()`, `gen_random_uuid()`) run only on
//! the leader's speculative execution; replicas receive their results in changesets.

use crate::error::sqlstate;
use crate::types::{self, ArithOp, PgType, Typmod};
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;
use std::time::{SystemTime, UNIX_EPOCH};

mod arrays;
mod time;

pub const SERVER_VERSION: &str = "16.0";

/// What `version()` reports: drivers parse the leading "PostgreSQL <major>.<minor>".
pub fn version_string() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (Cairn {})",
        env!("CARGO_PKG_VERSION")
    )
}

pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    let volatile = FunctionFlags::SQLITE_UTF8;
    let constant = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    for name in [
        "now",
        "transaction_timestamp",
        "statement_timestamp",
        "clock_timestamp",
    ] {
        conn.create_scalar_function(name, 0, volatile, |_| Ok(timestamp_now()))?;
    }
    conn.create_scalar_function("version", 0, constant, |_| Ok(version_string()))?;
    // The key-value API's clock and versions, evaluated where the statement runs: on the
    // shard's leader for a write, so the leader decides expiry and versions.
    conn.create_scalar_function("cairn_clock_us", 0, volatile, |_| Ok(now_micros() as i64))?;
    conn.create_scalar_function("cairn_kv_version", 1, volatile, |ctx| {
        let previous: Option<i64> = ctx.get(0)?;
        Ok(next_kv_version(previous, now_micros() as i64))
    })?;
    conn.create_scalar_function("current_database", 0, constant, |_| Ok("cairn".to_string()))?;
    conn.create_scalar_function("current_schema", 0, constant, |_| Ok("public".to_string()))?;
    // Drivers set session settings this way (Django's time zone, asyncpg's jit); Cairn's
    // settings that matter are set with SET, so the new value is only answered.
    conn.create_scalar_function("set_config", 3, volatile, |ctx| {
        ctx.get::<Option<String>>(1)
    })?;
    conn.create_scalar_function("pg_backend_pid", 0, constant, |_| {
        Ok(std::process::id() as i64)
    })?;
    // PostgreSQL's random() is a float in [0, 1); SQLite's is a 64-bit integer.
    conn.create_scalar_function("random", 0, volatile, |_| Ok(rand::random::<f64>()))?;
    conn.create_scalar_function("gen_random_uuid", 0, volatile, |_| Ok(random_uuid()))?;
    // `/` and `%` are rewritten to these: SQLite yields NULL on a zero divisor where
    // PostgreSQL raises "division by zero".
    conn.create_scalar_function("cairn_div", 2, constant, |ctx| arith(ctx, Op::Div))?;
    conn.create_scalar_function("cairn_mod", 2, constant, |ctx| arith(ctx, Op::Mod))?;
    // Raises its argument as an error: DDL jobs use it to refuse a step (`SELECT
    // cairn_fail('...') FROM t LIMIT 1` fails only if t has rows).
    conn.create_scalar_function("cairn_fail", 1, volatile, |ctx| {
        let msg: String = ctx.get(0)?;
        Err::<i64, _>(rusqlite::Error::UserFunctionError(msg.into()))
    })?;
    register_postgres_semantics(conn)?;
    register_text(conn)?;
    arrays::register(conn)?;
    time::register(conn)?;
    // generate_series(start, stop, step) over integers, as a table (the translator counts
    // other series with `cairn_series_count` and walks them with `cairn_series_at`).
    rusqlite::vtab::series::load_module(conn)?;
    Ok(())
}

fn coded(code: &str, message: impl std::fmt::Display) -> rusqlite::Error {
    let text = crate::error::coded_message(code, &message.to_string());
    rusqlite::Error::UserFunctionError(text.into())
}

fn sql_error(e: crate::error::Error) -> rusqlite::Error {
    match e {
        crate::error::Error::Sql { code, message } => coded(code, message),
        other => rusqlite::Error::UserFunctionError(other.to_string().into()),
    }
}

fn type_arg(ctx: &rusqlite::functions::Context<'_>, i: usize) -> rusqlite::Result<Option<PgType>> {
    match ctx.get_raw(i) {
        ValueRef::Text(t) => {
            let name = std::str::from_utf8(t).unwrap_or("");
            Ok(PgType::parse_declared(name))
        }
        _ => Ok(None),
    }
}

fn scale_arg(ctx: &rusqlite::functions::Context<'_>, i: usize) -> Option<u32> {
    match ctx.get_raw(i) {
        ValueRef::Integer(s) if s >= 0 => Some(s as u32),
        _ => None,
    }
}

/// Functions the translator calls where SQLite's own operators or functions answer
/// differently from PostgreSQL: casts, exact numeric and checked integer arithmetic, `^`,
/// date arithmetic, `extract`, `date_trunc`, and Unicode case mapping.
/// PostgreSQL's string functions SQLite lacks, by characters (not bytes). NULL in, NULL out.
fn register_text(conn: &Connection) -> rusqlite::Result<()> {
    let constant = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    fn args(ctx: &rusqlite::functions::Context<'_>) -> rusqlite::Result<Option<Vec<Value>>> {
        let mut out = Vec::with_capacity(ctx.len());
        for i in 0..ctx.len() {
            match ctx.get::<Value>(i)? {
                Value::Null => return Ok(None),
                v => out.push(v),
            }
        }
        Ok(Some(out))
    }
    fn text(v: &Value) -> String {
        match v {
            Value::Text(t) => t.clone(),
            Value::Integer(n) => n.to_string(),
            Value::Real(f) => f.to_string(),
            Value::Blob(b) => String::from_utf8_lossy(b).into_owned(),
            Value::Null => String::new(),
        }
    }
    fn int(v: &Value) -> rusqlite::Result<i64> {
        match v {
            Value::Integer(n) => Ok(*n),
            Value::Real(f) => Ok(f.round() as i64),
            Value::Text(t) => t.trim().parse().map_err(|_| {
                coded(
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    format!("invalid input syntax for type integer: \"{t}\""),
                )
            }),
            _ => Err(coded(
                sqlstate::DATATYPE_MISMATCH,
                "an integer argument is required",
            )),
        }
    }
    // left/right(s, n): the first/last n characters; a negative n drops that many from the
    // other end.
    for (name, from_left) in [("left", true), ("right", false)] {
        conn.create_scalar_function(name, 2, constant, move |ctx| {
            let Some(a) = args(ctx)? else { return Ok(None) };
            let chars: Vec<char> = text(&a[0]).chars().collect();
            let n = int(&a[1])?;
            let len = chars.len() as i64;
            let keep = if n >= 0 { n.min(len) } else { (len + n).max(0) } as usize;
            Ok(Some(if from_left {
                chars[..keep].iter().collect::<String>()
            } else {
                chars[chars.len() - keep..].iter().collect()
            }))
        })?;
    }
    // lpad/rpad(s, n [, fill]): to n characters, cut if longer.
    for (name, left) in [("lpad", true), ("rpad", false)] {
        for n_args in [2, 3] {
            conn.create_scalar_function(name, n_args, constant, move |ctx| {
                let Some(a) = args(ctx)? else { return Ok(None) };
                let chars: Vec<char> = text(&a[0]).chars().collect();
                let n = int(&a[1])?.max(0) as usize;
                let fill: Vec<char> = match a.get(2) {
                    Some(f) => text(f).chars().collect(),
                    None => vec![' '],
                };
                if chars.len() >= n || fill.is_empty() {
                    return Ok(Some(chars[..n.min(chars.len())].iter().collect::<String>()));
                }
                let pad: String = fill.iter().cycle().take(n - chars.len()).collect();
                let body: String = chars.iter().collect();
                Ok(Some(if left { pad + &body } else { body + &pad }))
            })?;
        }
    }
    conn.create_scalar_function("split_part", 3, constant, |ctx| {
        let Some(a) = args(ctx)? else { return Ok(None) };
        let (s, delim, n) = (text(&a[0]), text(&a[1]), int(&a[2])?);
        if n == 0 {
            return Err(coded(
                sqlstate::INVALID_PARAMETER_VALUE,
                "field position must not be zero",
            ));
        }
        let parts: Vec<&str> = if delim.is_empty() {
            vec![s.as_str()]
        } else {
            s.split(delim.as_str()).collect()
        };
        let i = if n > 0 { n - 1 } else { parts.len() as i64 + n };
        Ok(Some(
            usize::try_from(i)
                .ok()
                .and_then(|i| parts.get(i))
                .map_or(String::new(), |p| p.to_string()),
        ))
    })?;
    conn.create_scalar_function("repeat", 2, constant, |ctx| {
        let Some(a) = args(ctx)? else { return Ok(None) };
        let n = int(&a[1])?.max(0) as usize;
        let s = text(&a[0]);
        if s.len().saturating_mul(n) > crate::limits::SQL_TEXT_BYTES_MAX * 16 {
            return Err(coded(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                "requested length too large",
            ));
        }
        Ok(Some(s.repeat(n)))
    })?;
    conn.create_scalar_function("reverse", 1, constant, |ctx| {
        let Some(a) = args(ctx)? else { return Ok(None) };
        Ok(Some(text(&a[0]).chars().rev().collect::<String>()))
    })?;
    conn.create_scalar_function("strpos", 2, constant, |ctx| {
        let Some(a) = args(ctx)? else { return Ok(None) };
        let (s, sub) = (text(&a[0]), text(&a[1]));
        Ok(Some(
            s.find(&sub)
                .map_or(0, |b| s[..b].chars().count() as i64 + 1),
        ))
    })?;
    conn.create_scalar_function("starts_with", 2, constant, |ctx| {
        let Some(a) = args(ctx)? else { return Ok(None) };
        Ok(Some(text(&a[0]).starts_with(&text(&a[1]))))
    })?;
    conn.create_scalar_function("initcap", 1, constant, |ctx| {
        let Some(a) = args(ctx)? else { return Ok(None) };
        let mut out = String::new();
        let mut start = true;
        for c in text(&a[0]).chars() {
            if c.is_alphanumeric() {
                if start {
                    out.extend(c.to_uppercase());
                } else {
                    out.extend(c.to_lowercase());
                }
                start = false;
            } else {
                out.push(c);
                start = true;
            }
        }
        Ok(Some(out))
    })?;
    // regexp_replace(s, pattern, replacement [, flags]): the first match, or every one with
    // flag g; flag i ignores case. `\1` in the replacement is the first group.
    for n_args in [3, 4] {
        conn.create_scalar_function("regexp_replace", n_args, constant, |ctx| {
            let Some(a) = args(ctx)? else { return Ok(None) };
            let flags = a.get(3).map(text).unwrap_or_default();
            if let Some(bad) = flags.chars().find(|c| !"gi".contains(*c)) {
                return Err(coded(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("invalid regular expression option: \"{bad}\""),
                ));
            }
            let re = regex_lite::RegexBuilder::new(&text(&a[1]))
                .case_insensitive(flags.contains('i'))
                .build()
                .map_err(|e| {
                    coded(
                        sqlstate::INVALID_REGULAR_EXPRESSION,
                        format!("invalid regular expression: {e}"),
                    )
                })?;
            let mut replacement = String::new();
            let given = text(&a[2]);
            let mut chars = given.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, chars.peek()) {
                    ('\\', Some(d)) if d.is_ascii_digit() => {
                        replacement.push_str(&format!("${{{d}}}"));
                        chars.next();
                    }
                    ('\\', Some('\\')) => {
                        replacement.push('\\');
                        chars.next();
                    }
                    ('$', _) => replacement.push_str("$$"),
                    (c, _) => replacement.push(c),
                }
            }
            let s = text(&a[0]);
            Ok(Some(if flags.contains('g') {
                re.replace_all(&s, replacement.as_str()).into_owned()
            } else {
                re.replace(&s, replacement.as_str()).into_owned()
            }))
        })?;
    }
    Ok(())
}

fn register_postgres_semantics(conn: &Connection) -> rusqlite::Result<()> {
    let constant = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    // cairn_cast(value, 'target type', 'source type' or NULL): an explicit cast;
    // cairn_assign: the cast of a value written into a column (too long text is an error).
    for (name, explicit) in [("cairn_cast", true), ("cairn_assign", false)] {
        conn.create_scalar_function(name, 3, constant, move |ctx| {
            let target: String = ctx.get(1)?;
            let to = PgType::parse_declared(&target).ok_or_else(|| {
                coded(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("type \"{target}\" does not exist"),
                )
            })?;
            let typmod = Typmod::of_declared(&target, to).map_err(sql_error)?;
            let from = type_arg(ctx, 2)?;
            types::cast(ctx.get::<Value>(0)?, from, to, typmod, explicit).map_err(sql_error)
        })?;
    }
    // cairn_num(op, a, b, scale of a, scale of b): exact numeric + - * /.
    conn.create_scalar_function("cairn_num", 5, constant, |ctx| {
        let op = match ctx.get::<i64>(0)? {
            0 => ArithOp::Add,
            1 => ArithOp::Sub,
            2 => ArithOp::Mul,
            _ => ArithOp::Div,
        };
        let (a, b): (Value, Value) = (ctx.get(1)?, ctx.get(2)?);
        if matches!(a, Value::Null) || matches!(b, Value::Null) {
            return Ok(Value::Null);
        }
        types::numeric_arith(op, &a, &b, (scale_arg(ctx, 3), scale_arg(ctx, 4))).map_err(sql_error)
    })?;
    // cairn_int(op, a, b, bits): integer + - * that fails on overflow, as PostgreSQL's do.
    conn.create_scalar_function("cairn_int", 4, constant, |ctx| {
        let op: i64 = ctx.get(0)?;
        let (a, b) = (ctx.get_raw(1), ctx.get_raw(2));
        let (ValueRef::Integer(x), ValueRef::Integer(y)) = (a, b) else {
            let (Some(x), Some(y)) = (float_of(a), float_of(b)) else {
                return Ok(Value::Null);
            };
            return Ok(Value::Real(match op {
                0 => x + y,
                1 => x - y,
                _ => x * y,
            }));
        };
        let bits: i64 = ctx.get(3)?;
        let r = match op {
            0 => x.checked_add(y),
            1 => x.checked_sub(y),
            _ => x.checked_mul(y),
        };
        let (name, fits) = match bits {
            16 => ("smallint", r.is_some_and(|r| i16::try_from(r).is_ok())),
            32 => ("integer", r.is_some_and(|r| i32::try_from(r).is_ok())),
            _ => ("bigint", r.is_some()),
        };
        match r {
            Some(r) if fits => Ok(Value::Integer(r)),
            _ => Err(coded(
                sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                format!("{name} out of range"),
            )),
        }
    })?;
    // cairn_pow(a, b, numeric, scale of a, scale of b)
    conn.create_scalar_function("cairn_pow", 5, constant, |ctx| {
        let (Some(x), Some(y)) = (float_of(ctx.get_raw(0)), float_of(ctx.get_raw(1))) else {
            return Ok(Value::Null);
        };
        if x == 0.0 && y < 0.0 {
            return Err(coded(
                sqlstate::INVALID_ARGUMENT_FOR_POWER,
                "zero raised to a negative power is undefined",
            ));
        }
        if x < 0.0 && y.fract() != 0.0 {
            return Err(coded(
                sqlstate::INVALID_ARGUMENT_FOR_POWER,
                "a negative number raised to a non-integer power yields a complex result",
            ));
        }
        let r = x.powf(y);
        if r.is_infinite() && x.is_finite() && y.is_finite() {
            return Err(coded(
                sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                "value out of range: overflow",
            ));
        }
        if ctx.get::<i64>(2)? != 0 {
            let operands = (ctx.get::<Value>(0)?, ctx.get::<Value>(1)?);
            return numeric_power(operands, r, (scale_arg(ctx, 3), scale_arg(ctx, 4)));
        }
        Ok(Value::Real(r))
    })?;
    // cairn_date_add(date, days)
    conn.create_scalar_function("cairn_date_add", 2, constant, |ctx| {
        let date: Value = ctx.get(0)?;
        let Some(days) = types::date_days(&date).map_err(sql_error)? else {
            return Ok(date); // NULL or an infinity
        };
        match ctx.get_raw(1) {
            ValueRef::Integer(n) => types::date_value(days + n).map_err(sql_error),
            ValueRef::Null => Ok(Value::Null),
            _ => Err(coded(
                sqlstate::DATATYPE_MISMATCH,
                "a date can only be moved by a whole number of days",
            )),
        }
    })?;
    // cairn_date_diff(a, b): a - b in days.
    conn.create_scalar_function("cairn_date_diff", 2, constant, |ctx| {
        let (a, b): (Value, Value) = (ctx.get(0)?, ctx.get(1)?);
        match (
            types::date_days(&a).map_err(sql_error)?,
            types::date_days(&b).map_err(sql_error)?,
        ) {
            (Some(a), Some(b)) => Ok(Some(a - b)),
            _ if matches!(a, Value::Null) || matches!(b, Value::Null) => Ok(None),
            _ => Err(coded(
                sqlstate::DATETIME_FIELD_OVERFLOW,
                "cannot subtract infinite dates",
            )),
        }
    })?;
    // cairn_extract(field, value, 'source type', as_double)
    conn.create_scalar_function("cairn_extract", 4, constant, |ctx| {
        let field: String = ctx.get(0)?;
        let ty = type_arg(ctx, 2)?.unwrap_or(PgType::Timestamptz);
        let double = ctx.get::<i64>(3)? != 0;
        let value: Value = ctx.get(1)?;
        extract(&field.to_ascii_lowercase(), &value, ty, double).map_err(sql_error)
    })?;
    // cairn_date_trunc(field, value, 'source type')
    conn.create_scalar_function("cairn_date_trunc", 3, constant, |ctx| {
        let field: String = ctx.get(0)?;
        let ty = type_arg(ctx, 2)?.unwrap_or(PgType::Timestamptz);
        let value: Value = ctx.get(1)?;
        date_trunc(&field.to_ascii_lowercase(), &value, ty).map_err(sql_error)
    })?;
    for (name, upper) in [("upper", true), ("lower", false)] {
        conn.create_scalar_function(name, 1, constant, move |ctx| {
            Ok(match ctx.get_raw(0) {
                ValueRef::Null => None,
                ValueRef::Text(t) => {
                    let s = String::from_utf8_lossy(t);
                    Some(change_case(&s, upper))
                }
                ValueRef::Integer(i) => Some(i.to_string()),
                ValueRef::Real(f) => Some(f.to_string()),
                ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
            })
        })?;
    }
    conn.create_aggregate_function("cairn_num_sum", 2, constant, NumericSum)?;
    conn.create_aggregate_function("cairn_num_avg", 2, constant, NumericAvg)?;
    conn.create_aggregate_function("cairn_num_avg", 1, constant, NumericAvg)?;
    // cairn_num_avg_merge(exact sum, count, scale): the average of shards' partial sums
    // and counts, as cairn_num_avg would have computed it over all the rows.
    conn.create_scalar_function("cairn_num_avg_merge", 3, constant, |ctx| {
        let (total, count): (Value, Value) = (ctx.get(0)?, ctx.get(1)?);
        let count = match count {
            Value::Integer(n) if n > 0 => n,
            _ => return Ok(Value::Null),
        };
        let Some(total) = types::exact(&total).map_err(sql_error)? else {
            return Ok(Value::Null);
        };
        let scale = scale_arg(ctx, 2);
        let quotient = types::numeric_arith(
            ArithOp::Div,
            &types::numeric_stored(total),
            &Value::Integer(count),
            (scale, Some(0)),
        )
        .map_err(sql_error)?;
        Ok(quotient_text(&quotient, total, count, scale))
    })?;
    // cairn_numeric_text(value, scale): a numeric as text with its display scale.
    conn.create_scalar_function("cairn_numeric_text", 2, constant, |ctx| {
        let value: Value = ctx.get(0)?;
        let scale = scale_arg(ctx, 1).unwrap_or(0);
        Ok(match types::numeric_with_scale(&value, scale) {
            Some(text) => Value::Text(text),
            None => value,
        })
    })?;
    Ok(())
}

/// PostgreSQL's upper/lower in a UTF-8 locale: each character mapped on its own (towupper),
/// so a letter whose upper case is several characters (ß) stays as it is.
fn change_case(s: &str, upper: bool) -> String {
    s.chars()
        .map(|c| {
            let mut mapped = if upper {
                c.to_uppercase().collect::<Vec<_>>()
            } else {
                c.to_lowercase().collect::<Vec<_>>()
            };
            match mapped.len() {
                1 => mapped.pop().unwrap_or(c),
                _ => c,
            }
        })
        .collect()
}

/// PostgreSQL's numeric ^: computed in double precision, printed with its result scale
/// (16 significant digits, and no fewer fractional digits than either operand has).
fn numeric_power(
    (a, b): (Value, Value),
    r: f64,
    scales: (Option<u32>, Option<u32>),
) -> rusqlite::Result<Value> {
    use rust_decimal::MathematicalOps;
    let magnitude = if r == 0.0 {
        0
    } else {
        r.abs().log10().trunc() as i64
    };
    let floor = i64::from(scales.0.unwrap_or(0).max(scales.1.unwrap_or(0)));
    let scale = (16 - magnitude).max(floor).clamp(0, 28) as u32;
    let overflow = || {
        coded(
            sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
            "value out of range: overflow",
        )
    };
    // In decimal where it fits (a double has too few digits for 16 significant ones).
    let exact = match (types::exact(&a), types::exact(&b)) {
        (Ok(Some(x)), Ok(Some(y))) => x.checked_powd(y),
        _ => None,
    };
    let Some(mut d) = exact.or_else(|| types::Exact::from_f64_retain(r)) else {
        return Err(overflow());
    };
    d = d.round_dp_with_strategy(scale, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    d.rescale(scale);
    Ok(Value::Text(d.to_string()))
}

fn float_of(v: ValueRef<'_>) -> Option<f64> {
    match number(v)? {
        Value::Integer(i) => Some(i as f64),
        Value::Real(f) => Some(f),
        _ => None,
    }
}

/// sum() over numerics, exactly.
struct NumericSum;

impl rusqlite::functions::Aggregate<(Option<types::Exact>, Option<u32>), Value> for NumericSum {
    fn init(
        &self,
        _: &mut rusqlite::functions::Context<'_>,
    ) -> rusqlite::Result<(Option<types::Exact>, Option<u32>)> {
        Ok((None, None))
    }

    fn step(
        &self,
        ctx: &mut rusqlite::functions::Context<'_>,
        acc: &mut (Option<types::Exact>, Option<u32>),
    ) -> rusqlite::Result<()> {
        let v: Value = ctx.get(0)?;
        if matches!(v, Value::Null) {
            return Ok(());
        }
        acc.1 = scale_arg(ctx, 1);
        let Some(x) = types::exact(&v).map_err(sql_error)? else {
            return Err(coded(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "sum() of a NaN numeric",
            ));
        };
        acc.0 = Some(match acc.0 {
            None => x,
            Some(total) => total.checked_add(x).ok_or_else(|| {
                coded(
                    sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                    "numeric value out of range: the sum exceeds 28 significant digits",
                )
            })?,
        });
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut rusqlite::functions::Context<'_>,
        acc: Option<(Option<types::Exact>, Option<u32>)>,
    ) -> rusqlite::Result<Value> {
        Ok(match acc.and_then(|(total, _)| total) {
            None => Value::Null,
            Some(total) => types::numeric_stored(total),
        })
    }
}

/// avg() over numerics (or integers), exactly: PostgreSQL's sum / count, with its scale.
struct NumericAvg;

impl rusqlite::functions::Aggregate<(Option<types::Exact>, i64, Option<u32>), Value>
    for NumericAvg
{
    fn init(
        &self,
        _: &mut rusqlite::functions::Context<'_>,
    ) -> rusqlite::Result<(Option<types::Exact>, i64, Option<u32>)> {
        Ok((None, 0, None))
    }

    fn step(
        &self,
        ctx: &mut rusqlite::functions::Context<'_>,
        acc: &mut (Option<types::Exact>, i64, Option<u32>),
    ) -> rusqlite::Result<()> {
        let v: Value = ctx.get(0)?;
        if matches!(v, Value::Null) {
            return Ok(());
        }
        acc.2 = if ctx.len() > 1 {
            scale_arg(ctx, 1)
        } else {
            None
        };
        let Some(x) = types::exact(&v).map_err(sql_error)? else {
            return Err(coded(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "avg() of a NaN numeric",
            ));
        };
        acc.0 = Some(match acc.0 {
            None => x,
            Some(total) => total.checked_add(x).ok_or_else(|| {
                coded(
                    sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                    "numeric value out of range: the sum exceeds 28 significant digits",
                )
            })?,
        });
        acc.1 += 1;
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut rusqlite::functions::Context<'_>,
        acc: Option<(Option<types::Exact>, i64, Option<u32>)>,
    ) -> rusqlite::Result<Value> {
        let Some((Some(total), count, scale)) = acc else {
            return Ok(Value::Null);
        };
        let quotient = types::numeric_arith(
            ArithOp::Div,
            &types::numeric_stored(total),
            &Value::Integer(count),
            (scale, Some(0)),
        )
        .map_err(sql_error)?;
        // Keep the printed scale: the quotient's digits, as text.
        Ok(match types::exact(&quotient).ok().flatten() {
            Some(_) => quotient_text(&quotient, total, count, scale),
            None => quotient,
        })
    }
}

/// The quotient with PostgreSQL's display scale (its trailing zeros kept, as text).
fn quotient_text(q: &Value, total: types::Exact, count: i64, scale: Option<u32>) -> Value {
    let mut t = total;
    if let Some(s) = scale.filter(|s| *s > t.scale()) {
        t.rescale(s);
    }
    let digits = types::division_scale_of(&t, &types::Exact::from(count));
    match types::numeric_with_scale(q, digits) {
        Some(text) => Value::Text(text),
        None => q.clone(),
    }
}

const US_PER_SECOND: i64 = 1_000_000;

/// PostgreSQL's extract (numeric) and date_part (double precision).
fn extract(field: &str, value: &Value, ty: PgType, double: bool) -> crate::error::Result<Value> {
    use crate::error::Error;
    if ty == PgType::Interval {
        return extract_interval(field, value, double);
    }
    let Some(us) = types::timestamp_micros(value, ty)? else {
        return Ok(Value::Null);
    };
    let (year, month, day, tod, days) = types::civil_fields(us);
    let time_field = matches!(
        field,
        "hour"
            | "minute"
            | "second"
            | "milliseconds"
            | "microseconds"
            | "timezone"
            | "timezone_hour"
            | "timezone_minute"
    );
    if ty == PgType::Date && time_field {
        return Err(Error::sql(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("unit \"{field}\" not supported for type date"),
        ));
    }
    let dow = (days + 6).rem_euclid(7); // 2000-01-01 was a Saturday (6)
    let iso = iso_week(year, month, day, days);
    let exact_micros = |micros: i64, scale: u32| {
        let mut d = types::Exact::new(micros, 6);
        d.rescale(scale);
        d
    };
    let number: types::Exact = match field {
        "year" | "years" => year.into(),
        "month" | "months" => month.into(),
        "day" | "days" => day.into(),
        "hour" | "hours" => (tod / 3_600_000_000).into(),
        "minute" | "minutes" => (tod / 60_000_000 % 60).into(),
        "second" | "seconds" => exact_micros(tod % 60_000_000, 6),
        "milliseconds" => exact_micros((tod % 60_000_000) * 1000, 3),
        "microseconds" => (tod % 60_000_000).into(),
        "dow" => dow.into(),
        "isodow" => (if dow == 0 { 7 } else { dow }).into(),
        "doy" => (days - (types::civil_micros(year, 1, 1) / (86_400 * US_PER_SECOND)) + 1).into(),
        "week" => iso.1.into(),
        "isoyear" => iso.0.into(),
        "quarter" => ((month - 1) / 3 + 1).into(),
        "decade" => year.div_euclid(10).into(),
        "century" => ((year + 99) / 100).into(),
        "millennium" => ((year + 999) / 1000).into(),
        "julian" => (days + 2_451_545).into(),
        "timezone" | "timezone_hour" | "timezone_minute" if ty == PgType::Timestamptz => 0.into(),
        "epoch" => {
            let unix = us + types::PG_EPOCH_UNIX_MICROS;
            if ty == PgType::Date {
                (unix / US_PER_SECOND).into()
            } else {
                exact_micros(unix, 6)
            }
        }
        other => {
            return Err(Error::sql(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("unit \"{other}\" not recognized for type {}", ty.name()),
            ))
        }
    };
    if double {
        let f: f64 = number.to_string().parse().unwrap_or(f64::NAN);
        return Ok(Value::Real(f));
    }
    if number.scale() > 0 {
        // Keep the scale PostgreSQL prints ("59.000000"): as text when a double would drop it.
        return Ok(Value::Text(number.to_string()));
    }
    Ok(types::numeric_stored(number))
}

/// extract / date_part of an interval: its fields as PostgreSQL splits them.
fn extract_interval(field: &str, value: &Value, double: bool) -> crate::error::Result<Value> {
    use crate::error::Error;
    let Some(i) = types::interval::Interval::of_stored(value)? else {
        return Ok(Value::Null);
    };
    let micros_in_minute = i.micros % 60_000_000;
    let exact_micros = |micros: i64, scale: u32| {
        let mut d = types::Exact::new(micros, 6);
        d.rescale(scale);
        d
    };
    let number: types::Exact = match field {
        "year" | "years" => (i.months / 12).into(),
        "month" | "months" => (i.months % 12).into(),
        "day" | "days" => i.days.into(),
        "hour" | "hours" => (i.micros / 3_600_000_000).into(),
        "minute" | "minutes" => (i.micros / 60_000_000 % 60).into(),
        "second" | "seconds" => exact_micros(micros_in_minute, 6),
        "milliseconds" => exact_micros(micros_in_minute * 1000, 3),
        "microseconds" => micros_in_minute.into(),
        "decade" => (i.months / 120).into(),
        "century" => (i.months / 1200).into(),
        "millennium" => (i.months / 12000).into(),
        "quarter" => ((i.months % 12) / 3 + 1).into(),
        "epoch" => {
            let whole = i64::from(i.months / 12) * 31_557_600
                + i64::from(i.months % 12) * 2_592_000
                + i64::from(i.days) * 86_400;
            let micros = i128::from(whole) * 1_000_000 + i128::from(i.micros);
            let mut d = types::Exact::from_i128_with_scale(micros, 6);
            d.rescale(6);
            d
        }
        other => {
            return Err(Error::sql(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("unit \"{other}\" not supported for type interval"),
            ))
        }
    };
    if double {
        let f: f64 = number.to_string().parse().unwrap_or(f64::NAN);
        return Ok(Value::Real(f));
    }
    if number.scale() > 0 {
        return Ok(Value::Text(number.to_string()));
    }
    Ok(types::numeric_stored(number))
}

/// (ISO year, ISO week) of a civil date; `days` since 2000-01-01.
fn iso_week(year: i64, _month: i64, _day: i64, days: i64) -> (i64, i64) {
    let day_us = 86_400 * US_PER_SECOND;
    let monday_of_week1 = |y: i64| {
        let jan4 = types::civil_micros(y, 1, 4) / day_us;
        jan4 - (jan4 + 5).rem_euclid(7)
    };
    let mut iso_year = year;
    if days < monday_of_week1(year) {
        iso_year -= 1;
    } else if days >= monday_of_week1(year + 1) {
        iso_year += 1;
    }
    (iso_year, (days - monday_of_week1(iso_year)) / 7 + 1)
}

/// PostgreSQL's date_trunc: a date comes back as a timestamptz, as there (UTC sessions).
fn date_trunc(field: &str, value: &Value, ty: PgType) -> crate::error::Result<Value> {
    use crate::error::Error;
    let Some(us) = types::timestamp_micros(value, ty)? else {
        return Ok(value.clone());
    };
    let (year, month, day, tod, days) = types::civil_fields(us);
    let midnight = us - tod;
    let truncated = match field {
        "microseconds" => us,
        "milliseconds" => us - us.rem_euclid(1000),
        "second" => us - us.rem_euclid(US_PER_SECOND),
        "minute" => us - us.rem_euclid(60 * US_PER_SECOND),
        "hour" => us - us.rem_euclid(3600 * US_PER_SECOND),
        "day" => midnight,
        "week" => midnight - (days + 5).rem_euclid(7) * 86_400 * US_PER_SECOND,
        "month" => types::civil_micros(year, month, 1),
        "quarter" => types::civil_micros(year, (month - 1) / 3 * 3 + 1, 1),
        "year" => types::civil_micros(year, 1, 1),
        "decade" => types::civil_micros(year - year.rem_euclid(10), 1, 1),
        "century" => types::civil_micros((year - 1) / 100 * 100 + 1, 1, 1),
        "millennium" => types::civil_micros((year - 1) / 1000 * 1000 + 1, 1, 1),
        other => {
            return Err(Error::sql(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("unit \"{other}\" not recognized for type {}", ty.name()),
            ))
        }
    };
    let _ = day;
    types::timestamp_value(truncated, ty != PgType::Timestamp)
}

#[derive(Clone, Copy)]
enum Op {
    Div,
    Mod,
}

fn number(v: ValueRef<'_>) -> Option<Value> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(Value::Integer(i)),
        ValueRef::Real(f) => Some(Value::Real(f)),
        ValueRef::Text(t) => {
            let s = std::str::from_utf8(t).ok()?.trim();
            s.parse::<i64>()
                .map(Value::Integer)
                .ok()
                .or_else(|| s.parse::<f64>().ok().map(Value::Real))
        }
        ValueRef::Blob(_) => None,
    }
}

fn arith(ctx: &rusqlite::functions::Context<'_>, op: Op) -> rusqlite::Result<Value> {
    let fail = |m: &str| rusqlite::Error::UserFunctionError(m.to_string().into());
    let (Some(a), Some(b)) = (number(ctx.get_raw(0)), number(ctx.get_raw(1))) else {
        return Ok(Value::Null);
    };
    match (a, b) {
        (Value::Integer(_), Value::Integer(0)) => Err(fail("division by zero")),
        (Value::Integer(a), Value::Integer(b)) => match op {
            Op::Div => a
                .checked_div(b)
                .map(Value::Integer)
                .ok_or_else(|| fail("integer out of range")),
            Op::Mod => Ok(Value::Integer(a.checked_rem(b).unwrap_or(0))),
        },
        (a, b) => {
            let f = |v: Value| match v {
                Value::Integer(i) => i as f64,
                Value::Real(f) => f,
                _ => f64::NAN,
            };
            let (a, b) = (f(a), f(b));
            if b == 0.0 {
                return Err(fail("division by zero"));
            }
            Ok(Value::Real(match op {
                Op::Div => a / b,
                Op::Mod => a % b,
            }))
        }
    }
}

/// A key's next version: the writing leader's clock in µs, and always past the previous
/// version, so a version is never given twice to one key while it exists, and a key
/// deleted and created again gets a new one unless leaders' clocks disagree by more than
/// the time in between.
pub fn next_kv_version(previous: Option<i64>, now_us: i64) -> i64 {
    match previous {
        Some(p) if p >= now_us => p + 1,
        _ => now_us,
    }
}

/// This node's clock: µs since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The current time as PostgreSQL prints a `timestamptz` in UTC.
pub fn timestamp_now() -> String {
    let micros = now_micros() as i64;
    crate::types::format_timestamp_micros(micros - crate::types::PG_EPOCH_UNIX_MICROS, true)
}

fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
