use std::time::Duration;

use super::{format_duration, parse_duration, parse_size};

#[test]
fn durations_that_parse() {
    let cases: &[(&str, u64)] = &[
        ("0s", 0),
        ("0ms", 0),
        ("500ms", 500),
        ("2s", 2_000),
        ("1m", 60_000),
        ("1h", 3_600_000),
        ("1m30s", 90_000),
        ("1h30m", 5_400_000),
        ("2s500ms", 2_500),
        ("1h1m1s1ms", 3_661_001),
        (" 10s ", 10_000),
        ("90s", 90_000),
    ];
    for (text, ms) in cases {
        assert_eq!(
            parse_duration(text),
            Ok(Duration::from_millis(*ms)),
            "{text}"
        );
    }
}

#[test]
fn durations_that_fail() {
    let cases: &[(&str, &str)] = &[
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("2", "the unit is missing"),
        ("1m30", "the unit is missing"),
        ("-1s", "durations cannot be negative"),
        ("s", "expected a number"),
        ("1.5s", "use whole numbers"),
        ("2 s", "unexpected ' '"),
        ("3d", "unknown unit \"d\""),
        ("2S", "unknown unit \"S\""),
        ("30s1m", "units must go from largest to smallest"),
        ("1s1s", "units must go from largest to smallest"),
        ("99999999999999999999s", "it is too large"),
        ("5124095576030432h", "it is too large"),
    ];
    for (text, why) in cases {
        let err = parse_duration(text).expect_err(text);
        assert!(
            err.starts_with(&format!("invalid duration {text:?}: {why}")),
            "{text}: {err}"
        );
        assert!(err.contains(r#"expected a duration like "500ms""#), "{err}");
    }
}

#[test]
fn durations_format_in_the_shortest_natural_form() {
    let cases: &[(u64, &str)] = &[
        (0, "0s"),
        (1, "1ms"),
        (250, "250ms"),
        (1_000, "1s"),
        (1_500, "1500ms"),
        (2_000, "2s"),
        (60_000, "1m"),
        (90_000, "1m30s"),
        (3_600_000, "1h"),
        (5_400_000, "1h30m"),
        (3_661_000, "1h1m1s"),
        (61_500, "61500ms"),
    ];
    for (ms, text) in cases {
        let d = Duration::from_millis(*ms);
        assert_eq!(format_duration(d), *text);
        assert_eq!(parse_duration(text), Ok(d), "round trip of {text}");
    }
    assert_eq!(format_duration(Duration::from_micros(1_500)), "1ms");
}

#[test]
fn sizes_that_parse() {
    let cases: &[(&str, u64)] = &[
        ("0B", 0),
        ("10B", 10),
        ("64KiB", 64 * 1024),
        ("512MiB", 512 * 1024 * 1024),
        ("1GiB", 1 << 30),
        ("2TiB", 2 << 40),
        ("1KB", 1_000),
        ("1MB", 1_000_000),
        ("1GB", 1_000_000_000),
        ("1TB", 1_000_000_000_000),
        ("64kib", 64 * 1024),
        ("512 MiB", 512 * 1024 * 1024),
        (" 1gb ", 1_000_000_000),
        // Units are case-insensitive: there are no bits in berth's sizes.
        ("1Mb", 1_000_000),
    ];
    for (text, bytes) in cases {
        assert_eq!(parse_size(text), Ok(*bytes), "{text}");
    }
}

#[test]
fn sizes_that_fail() {
    let cases: &[(&str, &str)] = &[
        ("", "it is empty"),
        ("1024", "the unit is missing"),
        ("-1KiB", "sizes cannot be negative"),
        ("MiB", "expected a number"),
        ("1.5GiB", "use whole numbers"),
        ("12XB", "unknown unit \"XB\""),
        ("99999999999999999999B", "it is too large"),
        ("17179869184GiB", "it is too large"),
    ];
    for (text, why) in cases {
        let err = parse_size(text).expect_err(text);
        assert!(
            err.starts_with(&format!("invalid size {text:?}: {why}")),
            "{text}: {err}"
        );
        assert!(err.contains(r#"expected a size like "512MiB""#), "{err}");
    }
}
