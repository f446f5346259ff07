//! `interval`: months, days and microseconds, kept apart as PostgreSQL keeps them (a month
//! is not a fixed number of days, nor a day a fixed number of hours across time zone
//! changes). Stored as PostgreSQL prints it (`1 year 2 mons 3 days 04:05:06.5`); the
//! arithmetic with timestamps lives here too.

use super::{bad_syntax, civil_fields, civil_micros, days_in_month, out_of_range, PgType, DAY_US};
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interval {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

const HOUR_US: i64 = 3_600_000_000;

fn overflow() -> crate::error::Error {
    out_of_range("interval out of range".into())
}

/// Whether `fields` (after `interval `) are SQL interval fields: `day`, `hour to second`, ...
pub fn fields_ok(fields: &str) -> bool {
    let known = ["year", "month", "day", "hour", "minute", "second", "to"];
    fields
        .split_whitespace()
        .all(|w| known.contains(&w.split('(').next().unwrap_or(w)))
}

/// Accumulates an interval from fields that may be fractional, spilling fractions down as
/// PostgreSQL does (a month is 30 days, a day 24 hours).
#[derive(Default)]
struct Sum {
    months: f64,
    days: f64,
    /// Fractional microseconds (from fractional fields).
    micros: f64,
    /// Whole microseconds, exactly (times of day and whole numbers of time units).
    exact_micros: i128,
}

impl Sum {
    /// `n` microseconds: exactly when `n` is whole.
    fn add_micros(&mut self, n: f64, per_unit: i128) {
        if n.fract() == 0.0 && n.abs() < 9e15 {
            self.exact_micros += n as i128 * per_unit;
        } else {
            self.micros += n * per_unit as f64;
        }
    }

    fn add(&mut self, unit: &str, n: f64) -> Option<()> {
        let u = unit.to_ascii_lowercase();
        let u = u.as_str();
        match u {
            "microsecond" | "microseconds" | "us" | "usec" | "usecs" | "useconds" => {
                self.add_micros(n, 1)
            }
            "millisecond" | "milliseconds" | "ms" | "msec" | "msecs" | "mseconds" => {
                self.add_micros(n, 1_000)
            }
            "second" | "seconds" | "s" | "sec" | "secs" => self.add_micros(n, 1_000_000),
            "minute" | "minutes" | "m" | "min" | "mins" => self.add_micros(n, 60_000_000),
            "hour" | "hours" | "h" | "hr" | "hrs" => self.add_micros(n, 3_600_000_000),
            "day" | "days" | "d" => self.days += n,
            "week" | "weeks" | "w" => self.days += n * 7.0,
            "month" | "months" | "mon" | "mons" => self.months += n,
            "year" | "years" | "y" | "yr" | "yrs" => self.months += n * 12.0,
            "decade" | "decades" => self.months += n * 120.0,
            "century" | "centuries" => self.months += n * 1200.0,
            "millennium" | "millennia" | "millenniums" => self.months += n * 12000.0,
            _ => return None,
        }
        Some(())
    }

    fn finish(self, negate: bool) -> Result<Interval> {
        let sign = if negate { -1.0 } else { 1.0 };
        let months = self.months * sign;
        let whole_months = months.trunc();
        let days = self.days * sign + (months - whole_months) * 30.0;
        let whole_days = days.trunc();
        let spilled = (self.micros * sign + (days - whole_days) * DAY_US as f64).round();
        let fits = |x: f64| (i32::MIN as f64..=i32::MAX as f64).contains(&x);
        if !fits(whole_months)
            || !fits(whole_days)
            || !spilled.is_finite()
            || spilled.abs() > 9.2e18
        {
            return Err(overflow());
        }
        let exact = if negate {
            -self.exact_micros
        } else {
            self.exact_micros
        };
        let micros = i64::try_from(exact + spilled as i128).map_err(|_| overflow())?;
        Ok(Interval {
            months: whole_months as i32,
            days: whole_days as i32,
            micros,
        })
    }
}

/// A time of day field `[-]hh:mm[:ss[.ffffff]]` in microseconds, exactly.
fn time_field(t: &str) -> Option<i128> {
    let (negative, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let parts: Vec<&str> = body.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let number = |s: &str| -> Option<i128> {
        (!s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let hours = number(parts[0])?;
    let minutes = number(parts[1])?;
    let (seconds, micros) = match parts.get(2) {
        None => (0, 0),
        Some(s) => {
            let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
            let frac_digits: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (number(whole)?, number(&frac_digits)?)
        }
    };
    let total = ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + micros;
    Some(if negative { -total } else { total })
}

/// PostgreSQL's interval input: `1 day 02:00:00`, `2 hours 30 minutes`, `1.5 years`,
/// `-1 week`, `@ 3 days ago`, `10` (seconds), `P1Y2M3DT4H5M6S`.
pub fn parse(s: &str) -> Result<Interval> {
    let bad = || bad_syntax(PgType::Interval, s);
    let t = super::trim_pg(s);
    if let Some(iso) = t.strip_prefix('P').or_else(|| t.strip_prefix('p')) {
        return iso_8601(iso).ok_or_else(bad)?.finish(false);
    }
    let mut sum = Sum::default();
    let mut negate = false;
    let mut tokens: Vec<String> = Vec::new();
    for word in t.split_ascii_whitespace() {
        // `10min`, `3days`: split a number from the unit stuck to it.
        let split = word
            .char_indices()
            .find(|(i, c)| *i > 0 && c.is_ascii_alphabetic() && !word[..*i].contains(':'));
        match split {
            Some((i, _)) if word[..i].parse::<f64>().is_ok() => {
                tokens.push(word[..i].to_string());
                tokens.push(word[i..].to_string());
            }
            _ => tokens.push(word.to_string()),
        }
    }
    let mut i = 0;
    let mut any = false;
    while i < tokens.len() {
        let token = tokens[i].as_str();
        i += 1;
        if token == "@" {
            continue;
        }
        if token.eq_ignore_ascii_case("ago") && i == tokens.len() {
            negate = true;
            continue;
        }
        if token.contains(':') {
            sum.exact_micros += time_field(token).ok_or_else(bad)?;
            any = true;
            continue;
        }
        let n: f64 = token.parse().map_err(|_| bad())?;
        if !n.is_finite() {
            return Err(bad());
        }
        match tokens.get(i) {
            Some(unit)
                if unit.chars().all(|c| c.is_ascii_alphabetic())
                    && !unit.eq_ignore_ascii_case("ago") =>
            {
                sum.add(unit, n).ok_or_else(bad)?;
                i += 1;
            }
            // A bare number before a time of day counts days (`1 02:00`); last, seconds.
            Some(next) if next.contains(':') => sum.days += n,
            None => sum.add_micros(n, 1_000_000),
            Some(next) if next.eq_ignore_ascii_case("ago") => sum.add_micros(n, 1_000_000),
            Some(_) => return Err(bad()),
        }
        any = true;
    }
    if !any {
        return Err(bad());
    }
    sum.finish(negate)
}

/// `PnYnMnWnDTnHnMnS` (after the `P`).
fn iso_8601(s: &str) -> Option<Sum> {
    let mut sum = Sum::default();
    let mut in_time = false;
    let mut number = String::new();
    for c in s.chars() {
        match c {
            'T' | 't' if number.is_empty() => in_time = true,
            '0'..='9' | '.' | '-' | '+' => number.push(c),
            unit => {
                let n: f64 = number.parse().ok()?;
                number.clear();
                let name = match (unit.to_ascii_uppercase(), in_time) {
                    ('Y', false) => "year",
                    ('M', false) => "month",
                    ('W', false) => "week",
                    ('D', false) => "day",
                    ('H', true) => "hour",
                    ('M', true) => "minute",
                    ('S', true) => "second",
                    _ => return None,
                };
                sum.add(name, n)?;
            }
        }
    }
    number.is_empty().then_some(sum)
}

impl std::fmt::Display for Interval {
    /// PostgreSQL's output in its default style (`IntervalStyle = postgres`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        let mut before_negative = false;
        let mut part = |out: &mut String, value: i64, unit: &str| {
            if value == 0 {
                return;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            let plus = if before_negative && value > 0 {
                "+"
            } else {
                ""
            };
            let plural = if value != 1 { "s" } else { "" };
            out.push_str(&format!("{plus}{value} {unit}{plural}"));
            before_negative = value < 0;
        };
        let (years, months) = (self.months / 12, self.months % 12);
        part(&mut out, years.into(), "year");
        part(&mut out, months.into(), "mon");
        part(&mut out, self.days.into(), "day");
        if self.micros != 0 || out.is_empty() {
            let sign = if self.micros < 0 {
                "-"
            } else if before_negative {
                "+"
            } else {
                ""
            };
            let us = self.micros.unsigned_abs();
            let (secs, frac) = (us / 1_000_000, us % 1_000_000);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&format!(
                "{sign}{:02}:{:02}:{:02}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            ));
            if frac != 0 {
                let digits = format!("{frac:06}");
                out.push('.');
                out.push_str(digits.trim_end_matches('0'));
            }
        }
        f.write_str(&out)
    }
}

impl Interval {
    /// PostgreSQL's interval_recv: microseconds, days, months.
    pub fn recv(b: [u8; 16]) -> Interval {
        let micros = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        let days = i32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
        let months = i32::from_be_bytes(b[12..].try_into().expect("4 bytes"));
        Interval {
            months,
            days,
            micros,
        }
    }

    pub fn send(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.micros.to_be_bytes());
        out[8..12].copy_from_slice(&self.days.to_be_bytes());
        out[12..].copy_from_slice(&self.months.to_be_bytes());
        out
    }

    /// A stored interval (its text) parsed.
    pub fn of_stored(value: &rusqlite::types::Value) -> Result<Option<Interval>> {
        use rusqlite::types::Value;
        match value {
            Value::Null => Ok(None),
            Value::Text(s) => parse(s).map(Some),
            Value::Integer(i) => Ok(Some(Interval {
                micros: i.saturating_mul(1_000_000),
                ..Interval::default()
            })),
            Value::Real(f) => Sum {
                micros: f * 1e6,
                ..Sum::default()
            }
            .finish(false)
            .map(Some),
            Value::Blob(_) => Err(bad_syntax(PgType::Interval, "(bytes)")),
        }
    }

    /// The stored form.
    pub fn stored(&self) -> rusqlite::types::Value {
        rusqlite::types::Value::Text(self.to_string())
    }

    pub fn negate(self) -> Result<Interval> {
        Ok(Interval {
            months: self.months.checked_neg().ok_or_else(overflow)?,
            days: self.days.checked_neg().ok_or_else(overflow)?,
            micros: self.micros.checked_neg().ok_or_else(overflow)?,
        })
    }

    pub fn checked_add(self, other: Interval) -> Result<Interval> {
        Ok(Interval {
            months: self.months.checked_add(other.months).ok_or_else(overflow)?,
            days: self.days.checked_add(other.days).ok_or_else(overflow)?,
            micros: self.micros.checked_add(other.micros).ok_or_else(overflow)?,
        })
    }

    /// `interval * factor`, fractions spilling down (PostgreSQL's interval_mul).
    pub fn scaled(self, factor: f64) -> Result<Interval> {
        Sum {
            months: f64::from(self.months) * factor,
            days: f64::from(self.days) * factor,
            micros: self.micros as f64 * factor,
            exact_micros: 0,
        }
        .finish(false)
    }

    /// Seconds, counting a month as 30 days and a year as 365.25 days (extract(epoch)).
    pub fn epoch_seconds(&self) -> f64 {
        let years = f64::from(self.months / 12);
        let months = f64::from(self.months % 12);
        years * 365.25 * 86_400.0
            + months * 30.0 * 86_400.0
            + f64::from(self.days) * 86_400.0
            + self.micros as f64 / 1e6
    }

    /// A key that orders intervals as PostgreSQL compares them (30-day months, 24-hour days).
    pub fn sort_key(&self) -> i128 {
        (i128::from(self.months) * 30 + i128::from(self.days)) * i128::from(DAY_US)
            + i128::from(self.micros)
    }

    /// Whole 24-hour periods moved into days (justify_hours), keeping signs consistent.
    pub fn justify_hours(self) -> Interval {
        let mut days = i64::from(self.days) + self.micros / DAY_US;
        let mut micros = self.micros % DAY_US;
        if days > 0 && micros < 0 {
            micros += DAY_US;
            days -= 1;
        } else if days < 0 && micros > 0 {
            micros -= DAY_US;
            days += 1;
        }
        Interval {
            months: self.months,
            days: days.clamp(i32::MIN.into(), i32::MAX.into()) as i32,
            micros,
        }
    }

    /// Whole 30-day periods moved into months (justify_days).
    pub fn justify_days(self) -> Interval {
        let mut months = i64::from(self.months) + i64::from(self.days / 30);
        let mut days = self.days % 30;
        if months > 0 && days < 0 {
            days += 30;
            months -= 1;
        } else if months < 0 && days > 0 {
            days -= 30;
            months += 1;
        }
        Interval {
            months: months.clamp(i32::MIN.into(), i32::MAX.into()) as i32,
            days,
            micros: self.micros,
        }
    }

    pub fn hours_part(&self) -> i64 {
        self.micros / HOUR_US
    }
}

/// `timestamp + interval`: months on the calendar (the day clamped to the month's length),
/// then days, then microseconds — PostgreSQL's timestamp_pl_interval.
pub fn add_to_micros(micros: i64, i: Interval) -> Result<i64> {
    let mut t = micros;
    if i.months != 0 {
        let (y, m, d, tod, _) = civil_fields(t);
        let total = y * 12 + (m - 1) + i64::from(i.months);
        let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
        if !(1..=9999).contains(&ny) {
            return Err(out_of_range("timestamp out of range".into()));
        }
        let nd = d.min(days_in_month(ny, nm));
        t = civil_micros(ny, nm, nd) + tod;
    }
    t = t
        .checked_add(i64::from(i.days) * DAY_US)
        .and_then(|t| t.checked_add(i.micros))
        .ok_or_else(|| out_of_range("timestamp out of range".into()))?;
    Ok(t)
}

/// `timestamp - timestamp`: days and time, whole days counted as days (justify_hours).
pub fn between(a: i64, b: i64) -> Result<Interval> {
    let diff = a
        .checked_sub(b)
        .ok_or_else(|| out_of_range("interval out of range".into()))?;
    Ok(Interval {
        micros: diff,
        ..Interval::default()
    }
    .justify_hours())
}

/// `age(a, b)`: the symbolic difference in years, months and days, then time, with
/// borrowing as PostgreSQL's timestamp_age does.
pub fn age(a: i64, b: i64) -> Interval {
    let (negative, (hi, lo)) = if a >= b {
        (false, (a, b))
    } else {
        (true, (b, a))
    };
    let (y1, m1, d1, t1, _) = civil_fields(hi);
    let (y2, m2, d2, t2, _) = civil_fields(lo);
    let mut micros = t1 - t2;
    let mut days = d1 - d2;
    let mut months = m1 - m2;
    let mut years = y1 - y2;
    if micros < 0 {
        micros += DAY_US;
        days -= 1;
    }
    if days < 0 {
        // Borrow the length of the earlier timestamp's month, as PostgreSQL does.
        days += days_in_month(y2, m2);
        months -= 1;
    }
    if months < 0 {
        months += 12;
        years -= 1;
    }
    let out = Interval {
        months: (years * 12 + months) as i32,
        days: days as i32,
        micros,
    };
    if negative {
        Interval {
            months: -out.months,
            days: -out.days,
            micros: -out.micros,
        }
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(s: &str) -> String {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).to_string()
    }

    #[test]
    fn input_and_output_match_postgresql() {
        for (input, expected) in [
            ("1 day", "1 day"),
            ("2 days", "2 days"),
            ("1 day 02:00:00", "1 day 02:00:00"),
            ("2 hours 30 minutes", "02:30:00"),
            ("1.5 hours", "01:30:00"),
            ("1 year 2 months 3 days", "1 year 2 mons 3 days"),
            ("-1 day", "-1 days"),
            ("1 day -1 hour", "1 day -01:00:00"),
            ("-1 year 2 mons", "-10 mons"),
            ("-1 year 2 days", "-1 years +2 days"),
            ("1.5 years", "1 year 6 mons"),
            ("1.5 months", "1 mon 15 days"),
            ("1.5 days", "1 day 12:00:00"),
            ("3 weeks", "21 days"),
            ("10", "00:00:10"),
            ("0", "00:00:00"),
            ("500 ms", "00:00:00.5"),
            ("10min", "00:10:00"),
            ("@ 3 days ago", "-3 days"),
            ("P1Y2M3DT4H5M6S", "1 year 2 mons 3 days 04:05:06"),
            ("PT1.5S", "00:00:01.5"),
            ("1 02:00", "1 day 02:00:00"),
            ("100 hours", "100:00:00"),
            ("-00:00:01", "-00:00:01"),
        ] {
            assert_eq!(shown(input), expected, "{input}");
        }
        for bad in ["", "abc", "1 fortnight", "1 day 2 3", "::"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn timestamps_move_by_calendar_months_and_days() {
        let jan31 = civil_micros(2024, 1, 31);
        let month = Interval {
            months: 1,
            ..Interval::default()
        };
        assert_eq!(
            add_to_micros(jan31, month).ok(),
            Some(civil_micros(2024, 2, 29))
        );
        let a = civil_micros(2024, 3, 1) + 3 * HOUR_US;
        let b = civil_micros(2024, 1, 31);
        assert_eq!(
            between(a, b).ok().map(|i| i.to_string()).as_deref(),
            Some("30 days 03:00:00")
        );
        assert_eq!(
            age(civil_micros(2024, 3, 1), civil_micros(2023, 1, 15)).to_string(),
            "1 year 1 mon 17 days"
        );
        assert_eq!(
            age(civil_micros(2023, 1, 15), civil_micros(2024, 3, 1)).to_string(),
            "-1 years -1 mons -17 days"
        );
    }
}
