//! Durations (`"500ms"`, `"2s"`, `"1m30s"`) and sizes (`"512MiB"`, `"64KiB"`, `"1GB"`).
//! TODO(spec helper): implement with table tests.

use std::time::Duration;

/// Parses a duration with units: ms, s, m, h (combinations like `1m30s` allowed).
pub fn parse_duration(_s: &str) -> Result<Duration, String> {
    Err("not implemented".into())
}

/// Parses a size with units: B, KiB, MiB, GiB (1024-based) and KB, MB, GB (1000-based).
pub fn parse_size(_s: &str) -> Result<u64, String> {
    Err("not implemented".into())
}

/// Formats a duration the way the config writes it (`1m30s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
