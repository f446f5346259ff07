//! PostgreSQL's interval arithmetic and date/time functions SQLite lacks: `timestamp ±
//! interval`, `timestamp - timestamp`, interval `+ - * /` and comparison keys, `age`,
//! `make_interval`, `justify_*`, `make_date`/`make_timestamp`, `to_timestamp`, `to_char`,
//! and the counting behind `generate_series` over numbers and timestamps.

use super::{coded, sql_error, type_arg};
use crate::error::sqlstate;
use crate::limits;
use crate::types::{self, interval, interval::Interval, PgType};
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

const DAY_US: i64 = 86_400_000_000;

fn interval_arg(ctx: &Context<'_>, i: usize) -> rusqlite::Result<Option<Interval>> {
    Interval::of_stored(&ctx.get::<Value>(i)?).map_err(sql_error)
}

/// A date, timestamp or timestamptz argument in µs since 2000-01-01; Err(value) when it is
/// NULL or infinite (returned as it is).
fn micros_arg(ctx: &Context<'_>, i: usize, ty: PgType) -> rusqlite::Result<Result<i64, Value>> {
    let v: Value = ctx.get(i)?;
    match types::timestamp_micros(&v, ty).map_err(sql_error)? {
        Some(us) => Ok(Ok(us)),
        None => Ok(Err(v)),
    }
}

fn float_arg(ctx: &Context<'_>, i: usize) -> rusqlite::Result<Option<f64>> {
    Ok(match ctx.get_raw(i) {
        ValueRef::Null => None,
        ValueRef::Integer(n) => Some(n as f64),
        ValueRef::Real(f) => Some(f),
        ValueRef::Text(t) => {
            let s = std::str::from_utf8(t).unwrap_or("").trim();
            Some(s.parse::<f64>().map_err(|_| {
                coded(
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    format!("invalid input syntax for type double precision: \"{s}\""),
                )
            })?)
        }
        ValueRef::Blob(_) => None,
    })
}

fn out_of_range(what: &str) -> rusqlite::Error {
    coded(
        sqlstate::DATETIME_FIELD_OVERFLOW,
        format!("{what} out of range"),
    )
}

pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    let constant = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let volatile = FunctionFlags::SQLITE_UTF8;
    // cairn_ts_add(timestamp, 'its type', interval, sign): a date moves as a timestamp.
    conn.create_scalar_function("cairn_ts_add", 4, constant, |ctx| {
        let ty = type_arg(ctx, 1)?.unwrap_or(PgType::Timestamptz);
        let us = match micros_arg(ctx, 0, ty)? {
            Ok(us) => us,
            Err(v) => return Ok(v),
        };
        let Some(mut i) = interval_arg(ctx, 2)? else {
            return Ok(Value::Null);
        };
        if ctx.get::<i64>(3)? < 0 {
            i = i.negate().map_err(sql_error)?;
        }
        let moved = interval::add_to_micros(us, i).map_err(sql_error)?;
        types::timestamp_value(moved, ty == PgType::Timestamptz).map_err(sql_error)
    })?;
    // cairn_ts_diff(a, b, 'type'): a - b as an interval.
    conn.create_scalar_function("cairn_ts_diff", 3, constant, |ctx| {
        let ty = type_arg(ctx, 2)?.unwrap_or(PgType::Timestamptz);
        let (Ok(a), Ok(b)) = (micros_arg(ctx, 0, ty)?, micros_arg(ctx, 1, ty)?) else {
            return if ctx.get_raw(0) == ValueRef::Null || ctx.get_raw(1) == ValueRef::Null {
                Ok(Value::Null)
            } else {
                Err(out_of_range("interval"))
            };
        };
        Ok(interval::between(a, b).map_err(sql_error)?.stored())
    })?;
    // cairn_interval_op(op, a, b): 0 a + b, 1 a - b.
    conn.create_scalar_function("cairn_interval_op", 3, constant, |ctx| {
        let (Some(a), Some(b)) = (interval_arg(ctx, 1)?, interval_arg(ctx, 2)?) else {
            return Ok(Value::Null);
        };
        let b = if ctx.get::<i64>(0)? == 1 {
            b.negate().map_err(sql_error)?
        } else {
            b
        };
        Ok(a.checked_add(b).map_err(sql_error)?.stored())
    })?;
    // cairn_interval_mul(interval, factor, divide)
    conn.create_scalar_function("cairn_interval_mul", 3, constant, |ctx| {
        let (Some(i), Some(f)) = (interval_arg(ctx, 0)?, float_arg(ctx, 1)?) else {
            return Ok(Value::Null);
        };
        let factor = if ctx.get::<i64>(2)? != 0 {
            if f == 0.0 {
                return Err(coded(sqlstate::DIVISION_BY_ZERO, "division by zero"));
            }
            1.0 / f
        } else {
            f
        };
        Ok(i.scaled(factor).map_err(sql_error)?.stored())
    })?;
    conn.create_scalar_function("cairn_interval_neg", 1, constant, |ctx| {
        Ok(match interval_arg(ctx, 0)? {
            None => Value::Null,
            Some(i) => i.negate().map_err(sql_error)?.stored(),
        })
    })?;
    // An interval's place in PostgreSQL's order (30-day months): compared, not shown.
    conn.create_scalar_function("cairn_interval_key", 1, constant, |ctx| {
        Ok(match interval_arg(ctx, 0)? {
            None => Value::Null,
            Some(i) => {
                let key = i.sort_key();
                i64::try_from(key).map_or(Value::Real(key as f64), Value::Integer)
            }
        })
    })?;
    // age(a, b) and age(a) (from today's midnight).
    conn.create_scalar_function("age", 2, constant, |ctx| {
        let (Ok(a), Ok(b)) = (
            micros_arg(ctx, 0, PgType::Timestamptz)?,
            micros_arg(ctx, 1, PgType::Timestamptz)?,
        ) else {
            return Ok(Value::Null);
        };
        Ok(interval::age(a, b).stored())
    })?;
    conn.create_scalar_function("age", 1, volatile, |ctx| {
        let Ok(b) = micros_arg(ctx, 0, PgType::Timestamptz)? else {
            return Ok(Value::Null);
        };
        let now =
            types::timestamp_micros(&Value::Text(super::timestamp_now()), PgType::Timestamptz)
                .map_err(sql_error)?
                .unwrap_or(0);
        Ok(interval::age(now - now.rem_euclid(DAY_US), b).stored())
    })?;
    // make_interval(years, months, weeks, days, hours, mins, secs): the translator fills in
    // omitted and named arguments.
    conn.create_scalar_function("make_interval", 7, constant, |ctx| {
        let mut whole = [0i64; 6];
        for (i, slot) in whole.iter_mut().enumerate() {
            match ctx.get_raw(i) {
                ValueRef::Null => return Ok(Value::Null),
                ValueRef::Integer(n) => *slot = n,
                _ => {
                    return Err(coded(
                        sqlstate::DATATYPE_MISMATCH,
                        "make_interval takes whole numbers except for secs",
                    ))
                }
            }
        }
        let Some(secs) = float_arg(ctx, 6)? else {
            return Ok(Value::Null);
        };
        let [years, months, weeks, days, hours, mins] = whole;
        let fits = |x: i64| i32::try_from(x).map_err(|_| out_of_range("interval"));
        let micros = (hours as f64 * 3.6e9 + mins as f64 * 6e7 + secs * 1e6).round();
        if !micros.is_finite() || micros.abs() > 9.2e18 {
            return Err(out_of_range("interval"));
        }
        Ok(Interval {
            months: fits(years.saturating_mul(12).saturating_add(months))?,
            days: fits(weeks.saturating_mul(7).saturating_add(days))?,
            micros: micros as i64,
        }
        .stored())
    })?;
    for (name, f) in [
        (
            "justify_hours",
            Interval::justify_hours as fn(Interval) -> Interval,
        ),
        ("justify_days", Interval::justify_days),
        ("justify_interval", |i: Interval| {
            i.justify_hours().justify_days()
        }),
    ] {
        conn.create_scalar_function(name, 1, constant, move |ctx| {
            Ok(interval_arg(ctx, 0)?.map_or(Value::Null, |i| f(i).stored()))
        })?;
    }
    conn.create_scalar_function("make_date", 3, constant, |ctx| {
        let (Some(y), Some(m), Some(d)) = (
            ctx.get::<Option<i64>>(0)?,
            ctx.get::<Option<i64>>(1)?,
            ctx.get::<Option<i64>>(2)?,
        ) else {
            return Ok(Value::Null);
        };
        let text = format!("{y:04}-{m:02}-{d:02}");
        types::coerce(Value::Text(text), PgType::Date).map_err(|_| {
            coded(
                sqlstate::DATETIME_FIELD_OVERFLOW,
                format!("date field value out of range: {y}-{m:02}-{d:02}"),
            )
        })
    })?;
    for (name, tz) in [("make_timestamp", false), ("make_timestamptz", true)] {
        conn.create_scalar_function(name, 6, constant, move |ctx| {
            let mut parts = [0i64; 5];
            for (i, slot) in parts.iter_mut().enumerate() {
                match ctx.get::<Option<i64>>(i)? {
                    Some(n) => *slot = n,
                    None => return Ok(Value::Null),
                }
            }
            let Some(secs) = float_arg(ctx, 5)? else {
                return Ok(Value::Null);
            };
            let [y, mo, d, h, mi] = parts;
            if !(1..=12).contains(&mo)
                || !(1..=types::days_in_month(y, mo)).contains(&d)
                || !(0..24).contains(&h)
                || !(0..60).contains(&mi)
                || !(0.0..60.0).contains(&secs)
            {
                return Err(coded(
                    sqlstate::DATETIME_FIELD_OVERFLOW,
                    format!("date/time field value out of range: {y}-{mo:02}-{d:02} {h:02}:{mi:02}:{secs}"),
                ));
            }
            let us = types::civil_micros(y, mo, d)
                + (h * 3600 + mi * 60) * 1_000_000
                + (secs * 1e6).round() as i64;
            types::timestamp_value(us, tz).map_err(sql_error)
        })?;
    }
    // to_timestamp(unix seconds)
    conn.create_scalar_function("to_timestamp", 1, constant, |ctx| {
        let Some(secs) = float_arg(ctx, 0)? else {
            return Ok(Value::Null);
        };
        if !secs.is_finite() {
            return Ok(Value::Text(
                if secs > 0.0 { "infinity" } else { "-infinity" }.into(),
            ));
        }
        let us = (secs * 1e6).round() - types::PG_EPOCH_UNIX_MICROS as f64;
        if us.abs() > 9.2e18 {
            return Err(out_of_range("timestamp"));
        }
        types::timestamp_value(us as i64, true).map_err(sql_error)
    })?;
    // cairn_to_char(value, format, 'value type' or NULL)
    conn.create_scalar_function("cairn_to_char", 3, constant, |ctx| {
        let value: Value = ctx.get(0)?;
        let Some(format) = ctx.get::<Option<String>>(1)? else {
            return Ok(None);
        };
        if matches!(value, Value::Null) {
            return Ok(None);
        }
        let ty = type_arg(ctx, 2)?.unwrap_or(match &value {
            Value::Integer(_) | Value::Real(_) => PgType::Numeric,
            _ => PgType::Timestamptz,
        });
        to_char(&value, ty, &format).map(Some)
    })?;
    // cairn_series_count(start, stop, step, kind): how many values generate_series gives.
    conn.create_scalar_function("cairn_series_count", 4, constant, |ctx| {
        let kind = type_arg(ctx, 3)?.unwrap_or(PgType::Int8);
        series_count(ctx, kind)
    })?;
    // cairn_series_at(start, step, i, kind): the i-th value (from 0).
    conn.create_scalar_function("cairn_series_at", 4, constant, |ctx| {
        let kind = type_arg(ctx, 3)?.unwrap_or(PgType::Int8);
        let i: i64 = ctx.get(2)?;
        series_at(ctx, kind, i)
    })?;
    Ok(())
}

fn series_count(ctx: &Context<'_>, kind: PgType) -> rusqlite::Result<Option<i64>> {
    let too_many = || {
        coded(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "generate_series would produce more than {} rows",
                limits::SERIES_ROWS_MAX
            ),
        )
    };
    let zero_step = || {
        coded(
            sqlstate::INVALID_PARAMETER_VALUE,
            "step size cannot equal zero",
        )
    };
    match kind {
        PgType::Timestamp | PgType::Timestamptz | PgType::Date => {
            let (Ok(start), Ok(stop)) = (micros_arg(ctx, 0, kind)?, micros_arg(ctx, 1, kind)?)
            else {
                return Ok(None);
            };
            let Some(step) = interval_arg(ctx, 2)? else {
                return Ok(None);
            };
            if step.sort_key() == 0 {
                return Err(zero_step());
            }
            let forward = step.sort_key() > 0;
            let mut n = 0i64;
            let mut at = start;
            while (forward && at <= stop) || (!forward && at >= stop) {
                n += 1;
                if n > limits::SERIES_ROWS_MAX {
                    return Err(too_many());
                }
                // Each value is the previous one plus the step (a month from Jan 31 is
                // Feb 28, and from there Mar 28), as PostgreSQL steps.
                let Ok(next) = interval::add_to_micros(at, step) else {
                    break;
                };
                at = next;
            }
            Ok(Some(n))
        }
        _ => {
            let (Some(start), Some(stop)) = (exact_arg(ctx, 0)?, exact_arg(ctx, 1)?) else {
                return Ok(None);
            };
            let step = if ctx.get_raw(2) == ValueRef::Null {
                types::Exact::ONE
            } else {
                match exact_arg(ctx, 2)? {
                    Some(s) => s,
                    None => return Ok(None),
                }
            };
            if step.is_zero() {
                return Err(zero_step());
            }
            let span = (stop - start) / step;
            if span.is_sign_negative() {
                return Ok(Some(0));
            }
            let n = span.floor() + types::Exact::ONE;
            let n = i64::try_from(n).map_err(|_| too_many())?;
            if n > limits::SERIES_ROWS_MAX {
                return Err(too_many());
            }
            Ok(Some(n))
        }
    }
}

thread_local! {
    /// The last value `series_step` gave, so walking a series in order costs one step per
    /// row: (start, step, position, value).
    static LAST_STEP: std::cell::Cell<Option<(i64, Interval, i64, i64)>> =
        const { std::cell::Cell::new(None) };
}

/// The i-th value of a timestamp series: `start` plus `step`, `i` times over.
fn series_step(start: i64, step: Interval, i: i64) -> crate::error::Result<i64> {
    let (mut at, mut from) = (start, 0);
    if let Some((s, st, pos, value)) = LAST_STEP.with(|c| c.get()) {
        if s == start && st == step && pos <= i {
            (at, from) = (value, pos);
        }
    }
    for _ in from..i {
        at = interval::add_to_micros(at, step)?;
    }
    LAST_STEP.with(|c| c.set(Some((start, step, i, at))));
    Ok(at)
}

fn exact_arg(ctx: &Context<'_>, i: usize) -> rusqlite::Result<Option<types::Exact>> {
    types::exact(&ctx.get::<Value>(i)?).map_err(sql_error)
}

fn series_at(ctx: &Context<'_>, kind: PgType, i: i64) -> rusqlite::Result<Value> {
    match kind {
        PgType::Timestamp | PgType::Timestamptz | PgType::Date => {
            let Ok(start) = micros_arg(ctx, 0, kind)? else {
                return Ok(Value::Null);
            };
            let Some(step) = interval_arg(ctx, 1)? else {
                return Ok(Value::Null);
            };
            let at = series_step(start, step, i).map_err(sql_error)?;
            types::timestamp_value(at, kind == PgType::Timestamptz).map_err(sql_error)
        }
        _ => {
            let Some(start) = exact_arg(ctx, 0)? else {
                return Ok(Value::Null);
            };
            let step = if ctx.get_raw(1) == ValueRef::Null {
                types::Exact::ONE
            } else {
                exact_arg(ctx, 1)?.unwrap_or(types::Exact::ONE)
            };
            let v = start + step * types::Exact::from(i);
            Ok(if kind == PgType::Numeric {
                Value::Text(v.to_string())
            } else {
                types::numeric_stored(v)
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// to_char

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const ROMAN: [&str; 12] = [
    "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII",
];

fn to_char(value: &Value, ty: PgType, format: &str) -> rusqlite::Result<String> {
    match ty {
        PgType::Date | PgType::Timestamp | PgType::Timestamptz => {
            let Some(us) = types::timestamp_micros(value, ty).map_err(sql_error)? else {
                return Ok(match value {
                    Value::Text(t) => t.clone(),
                    _ => String::new(),
                });
            };
            Ok(format_datetime(
                &Clock::of_micros(us),
                format,
                ty == PgType::Timestamptz,
            ))
        }
        PgType::Interval => {
            let Some(i) = Interval::of_stored(value).map_err(sql_error)? else {
                return Ok(String::new());
            };
            Ok(format_datetime(&Clock::of_interval(i), format, false))
        }
        _ => {
            let number = types::exact(value).map_err(sql_error)?;
            Ok(match number {
                Some(n) => format_number(n, format),
                None => "NaN".to_string(),
            })
        }
    }
}

/// The fields `to_char` prints.
struct Clock {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    micros: i64,
    /// Days since 2000-01-01 (a Saturday).
    days: i64,
    interval: bool,
}

impl Clock {
    fn of_micros(us: i64) -> Clock {
        let (year, month, day, tod, days) = types::civil_fields(us);
        Clock {
            year,
            month,
            day,
            hour: tod / 3_600_000_000,
            minute: tod / 60_000_000 % 60,
            second: tod / 1_000_000 % 60,
            micros: tod % 1_000_000,
            days,
            interval: false,
        }
    }

    fn of_interval(i: Interval) -> Clock {
        let us = i.micros;
        Clock {
            year: i64::from(i.months / 12),
            month: i64::from(i.months % 12),
            day: i64::from(i.days),
            hour: us / 3_600_000_000,
            minute: us / 60_000_000 % 60,
            second: us / 1_000_000 % 60,
            micros: us % 1_000_000,
            days: 0,
            interval: true,
        }
    }

    fn dow(&self) -> i64 {
        (self.days + 6).rem_euclid(7)
    }

    fn doy(&self) -> i64 {
        self.days - types::civil_micros(self.year, 1, 1) / DAY_US + 1
    }
}

fn ordinal(n: i64) -> &'static str {
    match (n % 100, n % 10) {
        (11..=13, _) => "th",
        (_, 1) => "st",
        (_, 2) => "nd",
        (_, 3) => "rd",
        _ => "th",
    }
}

/// Capitalisation a name pattern asks for: `MONTH`, `Month`, `month`.
fn styled(name: &str, pattern: &str) -> String {
    let mut chars = pattern.chars();
    let first_upper = chars.next().is_some_and(|c| c.is_ascii_uppercase());
    let second_upper = chars.next().is_some_and(|c| c.is_ascii_uppercase());
    match (first_upper, second_upper) {
        (true, true) => name.to_uppercase(),
        (true, false) => name.to_string(),
        _ => name.to_lowercase(),
    }
}

fn format_datetime(c: &Clock, format: &str, tz: bool) -> String {
    const PATTERNS: &[&str] = &[
        "Y,YYY", "YYYY", "YYY", "YY", "Y", "IYYY", "IYY", "IY", "HH24", "HH12", "HH", "MI",
        "SSSSS", "SSSS", "SS", "MS", "US", "A.M.", "P.M.", "AM", "PM", "MONTH", "MON", "MM", "DAY",
        "DY", "IDDD", "DDD", "DD", "ID", "D", "WW", "W", "IW", "CC", "J", "Q", "RM", "TZH", "TZM",
        "TZ", "OF",
    ];
    let mut out = String::new();
    let mut i = 0;
    while i < format.len() {
        let rest = &format[i..];
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push_str(&quoted[..end]);
            i += end + 2;
            continue;
        }
        if rest.starts_with('\\') && rest.len() > 1 {
            let c = rest[1..].chars().next().unwrap_or('\\');
            out.push(c);
            i += 1 + c.len_utf8();
            continue;
        }
        let fill = rest.len() >= 2 && rest[..2].eq_ignore_ascii_case("FM");
        let at = if fill { i + 2 } else { i };
        let rest = &format[at..];
        let Some(pattern) = PATTERNS.iter().find(|p| {
            rest.len() >= p.len()
                && rest.is_char_boundary(p.len())
                && rest[..p.len()].eq_ignore_ascii_case(p)
        }) else {
            let c = format[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
            continue;
        };
        let written = &rest[..pattern.len()];
        let mut next = at + pattern.len();
        let num = |n: i64, width: usize| -> String {
            if fill {
                n.to_string()
            } else if n < 0 {
                format!("-{:0width$}", -n)
            } else {
                format!("{n:0width$}")
            }
        };
        let pad = |s: String, width: usize| -> String {
            if fill {
                s
            } else {
                format!("{s:<width$}")
            }
        };
        let hour12 = (c.hour + 11) % 12 + 1;
        let (numeric, text): (Option<i64>, String) = match *pattern {
            "Y,YYY" => {
                let y = num(c.year, 4);
                let (thousands, rest) = y.split_at(y.len().saturating_sub(3));
                (None, format!("{thousands},{rest}"))
            }
            "YYYY" | "IYYY" => (Some(c.year), num(c.year, 4)),
            "YYY" | "IYY" => (Some(c.year % 1000), num(c.year % 1000, 3)),
            "YY" | "IY" => (Some(c.year % 100), num(c.year % 100, 2)),
            "Y" => (Some(c.year % 10), num(c.year % 10, 1)),
            "HH24" => (Some(c.hour), num(c.hour, 2)),
            "HH12" | "HH" => {
                let h = if c.interval { c.hour } else { hour12 };
                (Some(h), num(h, 2))
            }
            "MI" => (Some(c.minute), num(c.minute, 2)),
            "SS" => (Some(c.second), num(c.second, 2)),
            "SSSS" | "SSSSS" => {
                let s = c.hour * 3600 + c.minute * 60 + c.second;
                (Some(s), num(s, 1))
            }
            "MS" => (Some(c.micros / 1000), num(c.micros / 1000, 3)),
            "US" => (Some(c.micros), num(c.micros, 6)),
            "AM" | "PM" => (None, styled(if c.hour < 12 { "AM" } else { "PM" }, written)),
            "A.M." | "P.M." => (
                None,
                styled(if c.hour < 12 { "A.M." } else { "P.M." }, written),
            ),
            "MONTH" => (
                None,
                pad(
                    styled(MONTHS[(c.month.clamp(1, 12) - 1) as usize], written),
                    9,
                ),
            ),
            "MON" => (
                None,
                styled(&MONTHS[(c.month.clamp(1, 12) - 1) as usize][..3], written),
            ),
            "MM" => (Some(c.month), num(c.month, 2)),
            "DAY" => (None, pad(styled(DAYS[c.dow() as usize], written), 9)),
            "DY" => (None, styled(&DAYS[c.dow() as usize][..3], written)),
            "DDD" | "IDDD" => (Some(c.doy()), num(c.doy(), 3)),
            "DD" => (Some(c.day), num(c.day, 2)),
            "D" => (Some(c.dow() + 1), num(c.dow() + 1, 1)),
            "ID" => {
                let d = if c.dow() == 0 { 7 } else { c.dow() };
                (Some(d), num(d, 1))
            }
            "WW" => ((Some((c.doy() - 1) / 7 + 1)), num((c.doy() - 1) / 7 + 1, 2)),
            "W" => (Some((c.day - 1) / 7 + 1), num((c.day - 1) / 7 + 1, 1)),
            "IW" => {
                let w = iso_week(c);
                (Some(w), num(w, 2))
            }
            "CC" => {
                let cc = (c.year + 99) / 100;
                (Some(cc), num(cc, 2))
            }
            "J" => (Some(c.days + 2_451_545), (c.days + 2_451_545).to_string()),
            "Q" => (
                Some((c.month - 1) / 3 + 1),
                ((c.month - 1) / 3 + 1).to_string(),
            ),
            "RM" => (
                None,
                pad(
                    styled(ROMAN[(c.month.clamp(1, 12) - 1) as usize], written),
                    4,
                ),
            ),
            "TZ" => (
                None,
                if tz {
                    styled("UTC", written)
                } else {
                    String::new()
                },
            ),
            "TZH" => (None, if tz { "+00".into() } else { String::new() }),
            "TZM" => (None, if tz { "00".into() } else { String::new() }),
            "OF" => (None, if tz { "+00".into() } else { String::new() }),
            _ => (None, written.to_string()),
        };
        out.push_str(&text);
        // TH / th: the ordinal suffix of a number.
        if let Some(n) = numeric {
            let suffix = format.get(next..next + 2);
            if let Some(s @ ("TH" | "th")) = suffix {
                let o = ordinal(n);
                out.push_str(&if s == "TH" {
                    o.to_uppercase()
                } else {
                    o.to_string()
                });
                next += 2;
            }
        }
        i = next;
    }
    out
}

fn iso_week(c: &Clock) -> i64 {
    let monday_of_week1 = |y: i64| {
        let jan4 = types::civil_micros(y, 1, 4) / DAY_US;
        jan4 - (jan4 + 5).rem_euclid(7)
    };
    let mut y = c.year;
    if c.days < monday_of_week1(y) {
        y -= 1;
    } else if c.days >= monday_of_week1(y + 1) {
        y += 1;
    }
    (c.days - monday_of_week1(y)) / 7 + 1
}

/// to_char of a number: `9` (digit or blank), `0` (digit or zero), `.`/`D`, `,`/`G`, `S`,
/// `MI`, `PL`, `SG`, `FM`; other characters are copied.
fn format_number(n: types::Exact, format: &str) -> String {
    let upper = format.to_ascii_uppercase();
    let fill = upper.contains("FM");
    let body: String = upper.replace("FM", "");
    let point = body.find(['.', 'D']);
    let (int_fmt, frac_fmt) = match point {
        Some(p) => (&body[..p], &body[p + 1..]),
        None => (body.as_str(), ""),
    };
    let frac_digits = frac_fmt.chars().filter(|c| matches!(c, '9' | '0')).count() as u32;
    let int_slots = int_fmt.chars().filter(|c| matches!(c, '9' | '0')).count();
    let rounded = n.round_dp_with_strategy(
        frac_digits,
        rust_decimal::RoundingStrategy::MidpointAwayFromZero,
    );
    let negative = rounded.is_sign_negative() && !rounded.is_zero();
    let abs = rounded.abs();
    let text = {
        let mut a = abs;
        a.rescale(frac_digits);
        a.to_string()
    };
    let (int_digits, frac_text) = text.split_once('.').unwrap_or((&text, ""));
    let int_digits = int_digits.trim_start_matches('0');
    if int_digits.len() > int_slots {
        // Too wide for the format: PostgreSQL prints #s.
        return body
            .chars()
            .map(|c| if matches!(c, '9' | '0') { '#' } else { c })
            .collect();
    }
    // Integer part, right to left.
    let first_zero = int_fmt.find('0').map(|p| {
        int_fmt[..p]
            .chars()
            .filter(|c| matches!(c, '9' | '0'))
            .count()
    });
    let mut digits = int_digits.chars().rev();
    let mut slot = int_slots;
    let mut int_out: Vec<char> = Vec::new();
    let mut started = false;
    let explicit_sign =
        body.contains('S') || body.contains("MI") || body.contains("PL") || body.contains("SG");
    for c in int_fmt.chars().rev() {
        match c {
            '9' | '0' => {
                slot -= 1;
                match digits.next() {
                    Some(d) => {
                        int_out.push(d);
                        started = true;
                    }
                    None if c == '0' || first_zero.is_some_and(|z| slot >= z) => int_out.push('0'),
                    None => int_out.push(' '),
                }
            }
            ',' | 'G' => {
                let more = digits.clone().next().is_some()
                    || (slot > 0 && first_zero.is_some_and(|z| slot > z));
                int_out.push(
                    if more || (started && slot > 0 && int_out.last() != Some(&' ')) {
                        ','
                    } else {
                        ' '
                    },
                );
            }
            'S' | 'M' | 'I' | 'P' | 'L' => {}
            other => int_out.push(other),
        }
    }
    let mut int_part: String = int_out.into_iter().rev().collect();
    // A number below one prints a zero before the point only for a `0` in the format.
    let sign = if negative {
        '-'
    } else if explicit_sign && body.contains('S') {
        '+'
    } else {
        ' '
    };
    if !explicit_sign || body.starts_with('S') {
        // The sign goes right before the first digit.
        let first = int_part.find(|c: char| c != ' ').unwrap_or(int_part.len());
        int_part.insert(first, sign);
    }
    let mut out = int_part;
    if point.is_some() {
        out.push('.');
        let mut frac: String = frac_text.to_string();
        if fill {
            // FM: trailing zeros of 9 positions go.
            let keep_zero = frac_fmt.rfind('0').map_or(0, |p| p + 1);
            while frac.len() > keep_zero && frac.ends_with('0') {
                frac.pop();
            }
        }
        out.push_str(&frac);
    }
    if body.ends_with("MI") {
        out.push(if negative { '-' } else { ' ' });
    } else if body.ends_with('S') && !body.starts_with('S') {
        out.push(sign);
    }
    if fill {
        out = out.trim().to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Value {
        types::coerce(Value::Text(s.into()), PgType::Timestamptz).unwrap()
    }

    #[test]
    fn to_char_formats_timestamps_as_postgresql() {
        let t = ts("2024-03-05 14:07:09.123456+00");
        for (format, expected) in [
            ("YYYY-MM-DD HH24:MI:SS", "2024-03-05 14:07:09"),
            ("DD Mon YYYY", "05 Mar 2024"),
            ("FMDD FMMonth YYYY", "5 March 2024"),
            ("Month", "March    "),
            ("Day, DDth", "Tuesday  , 05th"),
            ("HH12:MI AM", "02:07 PM"),
            ("YYYY-MM-DD\"T\"HH24:MI:SS.MS", "2024-03-05T14:07:09.123"),
            ("Q", "1"),
            ("DDD", "065"),
            ("IW", "10"),
        ] {
            assert_eq!(
                to_char(&t, PgType::Timestamptz, format).unwrap(),
                expected,
                "{format}"
            );
        }
    }

    #[test]
    fn to_char_formats_numbers_as_postgresql() {
        let n = |s: &str| types::exact(&Value::Text(s.into())).unwrap().unwrap();
        for (value, format, expected) in [
            ("1234.5", "9999.99", " 1234.50"),
            ("-12", "9999", "  -12"),
            ("0.5", "0.99", " 0.50"),
            ("1234567.891", "9,999,999.99", " 1,234,567.89"),
            ("12", "FM9999", "12"),
            ("12.5", "FM999.99", "12.5"),
            ("99999", "999", "###"),
            ("7", "000", " 007"),
        ] {
            assert_eq!(
                format_number(n(value), format),
                expected,
                "{value} {format}"
            );
        }
    }
}
