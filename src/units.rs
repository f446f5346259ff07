//! Durations and sizes as people write them in settings, flags and requests.

use std::time::Duration;

/// `500ms`, `2s`, `1min`, `3h`, `1d`, or a bare number of milliseconds.
pub fn duration(text: &str) -> Option<Duration> {
    let t = text.trim().to_lowercase();
    let (number, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let n: f64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1000.0,
        "min" | "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        "d" => n * 86_400_000.0,
        _ => return None,
    };
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_micros((ms * 1000.0) as u64))
}

/// `512`, `64KiB`, `64MiB`, `1GiB` (also `kB`, `MB`, `GB` as powers of 1024, as
/// PostgreSQL's memory settings read them).
pub fn bytes(text: &str) -> Option<u64> {
    let t = text.trim().to_lowercase();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// For clap: a duration flag.
pub fn duration_arg(text: &str) -> Result<Duration, String> {
    duration(text).ok_or_else(|| format!("not a duration: {text} (e.g. 500ms, 30s, 5min, 24h)"))
}

/// For clap: a size flag.
pub fn bytes_arg(text: &str) -> Result<u64, String> {
    bytes(text).ok_or_else(|| format!("not a size: {text} (e.g. 512KiB, 64MiB, 1GiB)"))
}

/// A byte count as people write it: `512 B`, `64 KiB`, `1 MiB`, `1.5 GiB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// For clap: a port range `FIRST-LAST` (inclusive, first at most last).
pub fn port_range_arg(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let parsed = text
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)));
    match parsed {
        Some((a, b)) if a > 0 && a <= b => Ok(a..=b),
        _ => Err(format!("not a port range: {text} (e.g. 50000-50100)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_as_written() {
        assert_eq!(duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(duration("250"), Some(Duration::from_millis(250)));
        assert_eq!(duration("soon"), None);
        assert_eq!(bytes("64MiB"), Some(64 << 20));
        assert_eq!(bytes("512"), Some(512));
        assert_eq!(bytes("1GB"), Some(1 << 30));
        assert_eq!(bytes("lots"), None);
        assert_eq!(bytes("99999999999999GiB"), None);
    }
}
