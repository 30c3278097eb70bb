//! Routing: compiles a [`RouteTable`] into hash maps keyed by host, so that a lookup is
//! one or two hash probes plus a short scan of path prefixes.
//!
//! Host matching: the request host is normalised (port stripped, lower-cased, trailing
//! dot dropped); an exact pattern wins over wildcards, and the longest wildcard suffix
//! wins over shorter ones (`*.example.com` matches `a.example.com` and `a.b.example.com`,
//! not `example.com`). Within a host the longest path prefix wins; prefixes match whole
//! segments (`/api` matches `/api` and `/api/x`, not `/apix`). Unmatched requests go to
//! the first `default` service, else nowhere (the caller answers 404).
//!
//! Owns no I/O and no per-request state besides the round-robin counters.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use ipnet::IpNet;

use crate::metrics::ServiceMetrics;
use crate::upstream::Upstream;
use crate::{Backend, Balance, HostPattern, RouteTable};

/// One service as the request path sees it.
pub(crate) struct Service {
    pub(crate) name: Arc<str>,
    pub(crate) https_redirect: bool,
    pub(crate) allow: Vec<IpNet>,
    pub(crate) deny: Vec<IpNet>,
    pub(crate) max_body: u64,
    pub(crate) balance: Balance,
    pub(crate) maintenance: Option<Bytes>,
    pub(crate) backends: Vec<Arc<Upstream>>,
    /// Round-robin position; also the tie-breaker for least-connections.
    pub(crate) next: AtomicUsize,
    pub(crate) metrics: Arc<ServiceMetrics>,
}

/// Path prefixes of one host, longest first.
#[derive(Default)]
struct PathRoutes {
    entries: Vec<(Box<str>, usize)>,
}

impl PathRoutes {
    fn find(&self, path: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(_, i)| *i)
    }
}

/// The compiled, immutable routing snapshot.
#[derive(Default)]
pub(crate) struct CompiledRoutes {
    pub(crate) services: Vec<Arc<Service>>,
    exact: HashMap<Box<str>, PathRoutes>,
    wildcard: HashMap<Box<str>, PathRoutes>,
    default: Option<usize>,
}

impl CompiledRoutes {
    /// Builds the lookup maps. `upstream` maps a backend to its long-lived state (so
    /// in-flight counts and pooled connections survive swaps); `metrics` does the same
    /// for a service's counters.
    pub(crate) fn compile(
        table: &RouteTable,
        mut upstream: impl FnMut(&Backend) -> Arc<Upstream>,
        mut metrics: impl FnMut(&str) -> Arc<ServiceMetrics>,
    ) -> Self {
        let mut out = CompiledRoutes::default();
        for (index, route) in table.services.iter().enumerate() {
            out.services.push(Arc::new(Service {
                name: Arc::from(route.name.as_str()),
                https_redirect: route.https_redirect,
                allow: route.allow.iter().map(IpNet::trunc).collect(),
                deny: route.deny.iter().map(IpNet::trunc).collect(),
                max_body: route.max_body,
                balance: route.balance,
                maintenance: route.maintenance.clone().map(Bytes::from),
                backends: route.backends.iter().map(&mut upstream).collect(),
                next: AtomicUsize::new(0),
                metrics: metrics(&route.name),
            }));
            if route.default && out.default.is_none() {
                out.default = Some(index);
            }
            let prefixes: Vec<&str> = if route.paths.is_empty() {
                vec!["/"]
            } else {
                route.paths.iter().map(String::as_str).collect()
            };
            for pattern in &route.hosts {
                let (map, host) = match pattern {
                    HostPattern::Exact(h) => match h.strip_prefix("*.") {
                        Some(suffix) => (&mut out.wildcard, suffix),
                        None => (&mut out.exact, h.as_str()),
                    },
                    HostPattern::Wildcard(h) => {
                        (&mut out.wildcard, h.strip_prefix("*.").unwrap_or(h))
                    }
                };
                let host = normalize_host(host);
                let entry = map.entry(Box::from(host.as_ref())).or_default();
                for prefix in &prefixes {
                    let prefix = normalize_prefix(prefix);
                    entry.entries.push((prefix.into(), index));
                }
            }
        }
        for routes in out.exact.values_mut().chain(out.wildcard.values_mut()) {
            // Stable: for equal prefixes the service listed first wins.
            routes.entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        }
        out
    }

    /// The service for a normalised host and a request path.
    pub(crate) fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Service>> {
        self.lookup_index(host, path).map(|i| &self.services[i])
    }

    fn lookup_index(&self, host: &str, path: &str) -> Option<usize> {
        if let Some(found) = self.exact.get(host).and_then(|r| r.find(path)) {
            return Some(found);
        }
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(found) = self.wildcard.get(rest).and_then(|r| r.find(path)) {
                    return Some(found);
                }
            }
        }
        self.default
    }
}

fn normalize_prefix(prefix: &str) -> String {
    if prefix.starts_with('/') {
        prefix.to_owned()
    } else {
        format!("/{prefix}")
    }
}

/// Whether `prefix` covers `path`, on segment boundaries.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

/// `Host` / `:authority` to the form routes are keyed by: port stripped, ASCII
/// lower-cased, one trailing dot dropped. Borrows when nothing changes.
pub(crate) fn normalize_host(raw: &str) -> Cow<'_, str> {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.find(':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Fuzz entry: builds a table from `patterns` and looks `host`/`path` up; must never
/// panic.
pub fn fuzz_route(patterns: &[(String, String)], host: &str, path: &str) -> Option<usize> {
    use std::net::{Ipv4Addr, SocketAddr};
    let table = RouteTable {
        services: patterns
            .iter()
            .enumerate()
            .map(|(i, (host, prefix))| crate::ServiceRoute {
                name: format!("s{i}"),
                hosts: vec![if let Some(s) = host.strip_prefix("*.") {
                    HostPattern::Wildcard(s.to_owned())
                } else {
                    HostPattern::Exact(host.clone())
                }],
                paths: vec![prefix.clone()],
                default: i == 0 && host.is_empty(),
                backends: vec![Backend {
                    instance: format!("s{i}-1"),
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
                }],
                ..Default::default()
            })
            .collect(),
    };
    let compiled = CompiledRoutes::compile(
        &table,
        |b| Arc::new(Upstream::new(b)),
        |name| Arc::new(ServiceMetrics::new(name)),
    );
    let host = normalize_host(host);
    compiled.lookup_index(&host, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceRoute;

    fn svc(name: &str, hosts: &[&str], paths: &[&str], default: bool) -> ServiceRoute {
        ServiceRoute {
            name: name.into(),
            hosts: hosts
                .iter()
                .map(|h| match h.strip_prefix("*.") {
                    Some(s) => HostPattern::Wildcard(s.into()),
                    None => HostPattern::Exact((*h).into()),
                })
                .collect(),
            paths: paths.iter().map(|p| (*p).into()).collect(),
            default,
            ..Default::default()
        }
    }

    fn compiled(services: Vec<ServiceRoute>) -> CompiledRoutes {
        CompiledRoutes::compile(
            &RouteTable { services },
            |b| Arc::new(Upstream::new(b)),
            |n| Arc::new(ServiceMetrics::new(n)),
        )
    }

    #[test]
    fn normalises_hosts() {
        let cases = [
            ("example.com", "example.com"),
            ("Example.COM", "example.com"),
            ("example.com:8080", "example.com"),
            ("example.com.", "example.com"),
            ("EXAMPLE.com.:443", "example.com"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw), want, "{raw}");
        }
        assert!(matches!(normalize_host("plain.host"), Cow::Borrowed(_)));
    }

    #[test]
    fn prefix_matching_is_segment_aware() {
        let cases = [
            ("/", "/anything", true),
            ("/api", "/api", true),
            ("/api", "/api/v1", true),
            ("/api", "/apix", false),
            ("/api/", "/api/x", true),
            ("/api/", "/api", false),
            ("/a/b", "/a", false),
        ];
        for (prefix, path, want) in cases {
            assert_eq!(prefix_matches(prefix, path), want, "{prefix} vs {path}");
        }
    }

    #[test]
    fn table_driven_lookup() {
        let routes = compiled(vec![
            svc("fallback", &[], &[], true),
            svc("web", &["web.example.com", "*.web.example.com"], &[], false),
            svc("api", &["web.example.com"], &["/api", "/v2/"], false),
            svc("admin", &["*.example.com"], &["/admin"], false),
            svc("deep", &["*.b.web.example.com"], &[], false),
            svc("shadow", &["web.example.com"], &["/api"], false),
        ]);
        let cases = [
            ("web.example.com", "/", Some("web")),
            ("Web.Example.COM:8443", "/index.html", Some("web")),
            ("web.example.com.", "/", Some("web")),
            ("web.example.com", "/api", Some("api")),
            ("web.example.com", "/api/users", Some("api")),
            ("web.example.com", "/apix", Some("web")),
            ("web.example.com", "/v2/x", Some("api")),
            ("a.web.example.com", "/", Some("web")),
            ("x.a.web.example.com", "/", Some("web")),
            ("a.b.web.example.com", "/", Some("deep")),
            ("other.example.com", "/admin/x", Some("admin")),
            ("other.example.com", "/", Some("fallback")),
            ("example.com", "/admin", Some("fallback")),
            ("unknown.org", "/", Some("fallback")),
        ];
        for (host, path, want) in cases {
            let got = routes
                .lookup(&normalize_host(host), path)
                .map(|s| s.name.as_ref());
            assert_eq!(got, want, "{host}{path}");
        }
    }

    #[test]
    fn no_default_means_no_route() {
        let routes = compiled(vec![svc("web", &["a.test"], &["/x"], false)]);
        assert!(routes.lookup("a.test", "/y").is_none());
        assert!(routes.lookup("b.test", "/x").is_none());
        assert_eq!(
            routes.lookup("a.test", "/x/1").map(|s| &*s.name),
            Some("web")
        );
    }

    #[test]
    fn fuzz_entry_handles_odd_input() {
        let patterns = vec![
            ("*.".to_owned(), "".to_owned()),
            ("".to_owned(), "x".to_owned()),
            ("ÄÖ.example".to_owned(), "/ü".to_owned()),
        ];
        for host in ["", ".", "..", "[", "[::1", ":", "a.:1", "ÄÖ.example"] {
            let _ = fuzz_route(&patterns, host, "/ü/");
        }
    }
}
