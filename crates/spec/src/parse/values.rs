//! The text forms of single values: addresses, port and status ranges, domains, CIDRs,
//! environment variable names.
//!
//! Each parser takes the string as written and returns the typed value or a message
//! that says what was found and what is expected (the caller adds the key path). No
//! TOML, no positions, no I/O.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use ipnet::IpNet;

use super::reader::resolve;
use crate::{ApiAddr, DomainPattern, PortRange, StatusRange};

const ADDR_EXPECTED: &str = r#"expected an address like "127.0.0.1:8080" or "[::1]:8443""#;

/// `"127.0.0.1:8080"`, `"[::1]:8443"`: an IP address (not a host name) and a port.
pub(super) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{ADDR_EXPECTED} (an IP address, not a host name), found {s:?}"))
}

/// `"unix:PATH"` (made absolute against `base`) or `"HOST:PORT"`.
pub(super) fn api_addr(s: &str, base: &Path) -> Result<ApiAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.trim().is_empty() {
            return Err(format!(
                "expected a socket path after \"unix:\", found {s:?}"
            ));
        }
        return Ok(ApiAddr::Unix(resolve(base, path)));
    }
    s.parse().map(ApiAddr::Tcp).map_err(|_| {
        format!(r#"expected "unix:PATH" or an address like "127.0.0.1:7700", found {s:?}"#)
    })
}

/// `"A-B"` with `1 <= A <= B <= 65535`.
pub(super) fn port_range(s: &str) -> Result<PortRange, String> {
    let fail = || {
        Err(format!(
            r#"expected a port range like "20000-29999" (from 1 to 65535, low-high), found {s:?}"#
        ))
    };
    let Some((a, b)) = s.split_once('-') else {
        return fail();
    };
    match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
        (Ok(start), Ok(end)) if start >= 1 && start <= end => Ok(PortRange { start, end }),
        _ => fail(),
    }
}

/// `"200-399"` or `"200"`, within 100-599.
pub(super) fn status_range(s: &str) -> Result<StatusRange, String> {
    let fail = || {
        Err(format!(
            r#"expected a status like "200" or a range like "200-399" (within 100-599), found {s:?}"#
        ))
    };
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
        (Ok(min), Ok(max)) if 100 <= min && min <= max && max <= 599 => {
            Ok(StatusRange { min, max })
        }
        _ => fail(),
    }
}

/// A `domains` entry: `web.example.com` or `*.example.com`, lower-cased, without a
/// trailing dot. Rejects ports, empty labels, characters other than letters, digits and
/// `-`, and `*` anywhere but a whole leading label.
pub(super) fn domain(s: &str) -> Result<DomainPattern, String> {
    let fail = |why: &str| {
        Err(format!(
            r#"expected a domain like "example.com" or "*.example.com", found {s:?} ({why})"#
        ))
    };
    let lower = s.trim().to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.contains(':') || name.contains('/') {
        return fail("a domain has no scheme, port or path");
    }
    let (wildcard, host) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    if host.contains('*') || host.is_empty() {
        return fail("'*' may only be a whole first label, as in \"*.example.com\"");
    }
    if host.len() > 253 {
        return fail("longer than 253 characters");
    }
    for label in host.split('.') {
        if label.is_empty() {
            return fail("empty label");
        }
        if label.len() > 63 {
            return fail("a label is longer than 63 characters");
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return fail(&format!(
                "invalid character {c:?}; use letters, digits and '-', and punycode for others"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return fail("a label cannot start or end with '-'");
        }
    }
    Ok(if wildcard {
        DomainPattern::Wildcard(host.to_owned())
    } else {
        DomainPattern::Exact(host.to_owned())
    })
}

/// A CIDR like `"10.0.0.0/8"` (host bits are cleared) or a bare IP address, taken as
/// `/32` or `/128`.
pub(super) fn ip_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        r#"expected a CIDR like "10.0.0.0/8" or an IP address like "127.0.0.1", found {s:?}"#
    ))
}

/// A URL path: starts with `/`, no white space; a query is allowed when `query`.
pub(super) fn url_path(s: &str, query: bool) -> Result<String, String> {
    let expected = if query {
        r#"expected a path starting with "/", like "/healthz""#
    } else {
        r#"expected a path prefix starting with "/", like "/api", without '?' or '#'"#
    };
    let bad_char =
        |c: char| c.is_whitespace() || c.is_control() || (!query && (c == '?' || c == '#'));
    if !s.starts_with('/') || s.chars().any(bad_char) {
        return Err(format!("{expected}, found {s:?}"));
    }
    Ok(s.to_owned())
}

/// Names berth sets itself in every instance's environment.
pub(super) const RESERVED_ENV: &[&str] =
    &["PORT", "BERTH_SERVICE", "BERTH_INSTANCE", "BERTH_RELEASE"];

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, not one berth sets itself.
pub(super) fn env_name(s: &str) -> Result<(), String> {
    let valid = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "invalid variable name {s:?}: expected letters, digits and '_', not starting with a digit"
        ));
    }
    if RESERVED_ENV.contains(&s) {
        return Err(format!(
            "{s} is set by berth for every instance and cannot be overridden (reserved: {})",
            RESERVED_ENV.join(", ")
        ));
    }
    Ok(())
}
