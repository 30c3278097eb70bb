//! Durations (`"500ms"`, `"2s"`, `"1m30s"`) and sizes (`"512MiB"`, `"64KiB"`, `"1GB"`)
//! as the config file writes them.
//!
//! This module owns the text forms only: it knows nothing of TOML or of which keys take
//! which unit. Error messages say what was found and what is expected, without a key
//! name; the caller prefixes the key.

use std::time::Duration;

#[cfg(test)]
mod tests;

/// Duration units, largest first, with their length in milliseconds.
const DURATION_UNITS: &[(&str, u64)] = &[("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Size units with their multiplier. Matched case-insensitively.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

const DURATION_EXPECTED: &str =
    r#"expected a duration like "500ms", "2s", "1m" or "1m30s" (units: h, m, s, ms)"#;
const SIZE_EXPECTED: &str =
    r#"expected a size like "512MiB" or "10B" (units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"#;

/// Parses a duration with units: ms, s, m, h, each at most once, largest first
/// (`1h30m`, `1m30s`, `2s500ms`). Whole numbers only; no sign, no bare numbers.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let fail = |why: &str| {
        Err(format!(
            "invalid duration {s:?}: {why}; {DURATION_EXPECTED}"
        ))
    };
    let text = s.trim();
    if text.is_empty() {
        return fail("it is empty");
    }
    if text.starts_with('-') {
        return fail("durations cannot be negative");
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    // Index into DURATION_UNITS of the last unit seen: units must strictly decrease.
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return fail("expected a number");
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return match after.chars().next() {
                None => fail("the unit is missing"),
                Some('.') => fail("use whole numbers, e.g. \"1500ms\" instead of \"1.5s\""),
                Some(c) => fail(&format!("unexpected {c:?}")),
            };
        }
        let Some(index) = DURATION_UNITS.iter().position(|(name, _)| *name == unit) else {
            return fail(&format!("unknown unit {unit:?}"));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return fail("units must go from largest to smallest, each at most once");
        }
        last_unit = Some(index);
        let millis = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(DURATION_UNITS[index].1))
            .and_then(|ms| ms.checked_add(total_ms));
        match millis {
            Some(ms) => total_ms = ms,
            None => return fail("it is too large"),
        }
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses a size with units: B, KiB, MiB, GiB, TiB (1024-based) and KB, MB, GB, TB
/// (1000-based), case-insensitive, with an optional space before the unit. A string
/// must carry a unit; the config accepts a bare number of bytes only as a TOML integer.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let fail = |why: &str| Err(format!("invalid size {s:?}: {why}; {SIZE_EXPECTED}"));
    let text = s.trim();
    if text.is_empty() {
        return fail("it is empty");
    }
    if text.starts_with('-') {
        return fail("sizes cannot be negative");
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return fail("expected a number");
    }
    let (number, unit) = text.split_at(digits);
    let unit = unit.trim_start();
    if unit.is_empty() {
        return fail("the unit is missing");
    }
    if unit.starts_with('.') {
        return fail("use whole numbers, e.g. \"1536MiB\" instead of \"1.5GiB\"");
    }
    let Some((_, multiplier)) = SIZE_UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
    else {
        return fail(&format!("unknown unit {unit:?}"));
    };
    match number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(*multiplier))
    {
        Some(bytes) => Ok(bytes),
        None => fail("it is too large"),
    }
}

/// Formats a duration the way the config writes it, in the shortest natural form that
/// [`parse_duration`] reads back: `1m30s`, `250ms`, `2s`, `1h`, `1500ms`, `0s`.
/// Anything below a millisecond is dropped.
pub fn format_duration(d: Duration) -> String {
    let total_ms = d.as_millis();
    if total_ms == 0 {
        return "0s".to_owned();
    }
    let mut compound = String::new();
    let mut rest = total_ms;
    for (name, unit_ms) in DURATION_UNITS {
        let unit_ms = u128::from(*unit_ms);
        let count = rest / unit_ms;
        if count > 0 {
            compound.push_str(&format!("{count}{name}"));
            rest -= count * unit_ms;
        }
    }
    let plain_ms = format!("{total_ms}ms");
    if plain_ms.len() < compound.len() {
        plain_ms
    } else {
        compound
    }
}
