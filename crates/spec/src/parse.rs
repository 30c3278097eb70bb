//! TOML text → validated [`Spec`], reporting every error with `FILE:LINE:COL`.
//!
//! This module owns the config contract of DESIGN.md: which keys exist, their types,
//! their defaults (documented on the model types) and the rules that tie them together.
//! It walks the spanned TOML document itself rather than deriving serde, so that one
//! pass reports every unknown key and bad value at once, each at the position of the
//! offending key or value, in file order. A TOML syntax error is the one exception: it
//! is reported alone, at the parser's position.
//!
//! Choices made here:
//! - `kind` is optional and defaults to `"web"`; `command` is required.
//! - Relative paths (`data_dir`, the `unix:` API path, `api_token_file`, `dir`, `cert`,
//!   `key`, `maintenance_page`) resolve against the config file's directory. No file is
//!   read or checked: whether certificates exist is the proxy's business.
//! - The keys DESIGN.md lists as "coming later" are unknown keys, with a note.
//!
//! Layout: `reader` reads typed values from the spanned document and records errors;
//! `values` parses single values (addresses, domains, CIDRs, …); `service` reads one
//! `[services.NAME]`; this file reads `[berth]` and `[proxy]` and checks what spans
//! several services (routes, the default service, listeners).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use crate::{
    ApiAddr, BerthConfig, CertificateSpec, PortRange, ProxyConfig, ServiceKind, ServiceName, Spec,
};

mod reader;
mod service;
mod values;

#[cfg(test)]
mod tests;

use reader::{Errors, Item, Locator, Span, Table};
use service::ParsedService;

/// One problem in the config file, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// All the problems found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Top-level keys.
const TOP_KEYS: &[&str] = &["berth", "proxy", "services"];
const TOP_PLANNED: &[&str] = &["environments", "cluster"];
const BERTH_KEYS: &[&str] = &["data_dir", "api", "ports", "metrics", "api_token_file"];
const PROXY_KEYS: &[&str] = &[
    "http",
    "https",
    "public_https_port",
    "trusted_proxies",
    "access_log",
    "header_timeout",
    "max_header_size",
    "idle_timeout",
    "connect_timeout",
    "response_timeout",
    "certificates",
];
const CERTIFICATE_KEYS: &[&str] = &["cert", "key"];

/// What a listener address is, for a value that is not a string.
const ADDR_EXPECTED: &str = r#"an address string like "127.0.0.1:8080""#;

/// Parses and validates `text`, the contents of the file at `path` (which should be
/// absolute: relative paths in the file resolve from its directory).
pub fn parse(path: &Path, text: &str) -> Result<Spec, SpecErrors> {
    let mut locator = Locator::new(text);
    let mut at = |offset: usize, message: String| {
        let (line, col) = locator.line_col(offset);
        SpecError {
            file: path.to_owned(),
            line,
            col,
            message,
        }
    };
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let offset = e.span().map_or(0, |span| span.start);
            return Err(SpecErrors(vec![at(
                offset,
                format!("invalid TOML: {}", e.message()),
            )]));
        }
    };
    let base = path.parent().unwrap_or(Path::new(""));
    let mut errs = Errors::default();
    let spec = read_spec(&mut errs, path, base, &Table::root(&doc));
    if errs.0.is_empty() {
        return Ok(spec);
    }
    // Stable: messages at the same position keep the order they were found in.
    errs.0.sort_by_key(|(offset, _)| *offset);
    Err(SpecErrors(
        errs.0
            .into_iter()
            .map(|(offset, message)| at(offset, message))
            .collect(),
    ))
}

/// Reads and parses the file at `path` (made absolute against the current directory).
pub fn load(path: &Path) -> Result<Spec, SpecErrors> {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    match std::fs::read_to_string(&abs) {
        Ok(text) => parse(&abs, &text),
        Err(e) => Err(SpecErrors(vec![SpecError {
            file: abs,
            line: 1,
            col: 1,
            message: format!("cannot read the config file: {e}"),
        }])),
    }
}

/// Reads the whole document. The returned spec is only meaningful when `errs` is empty:
/// values that failed are replaced by defaults so that reading can go on.
fn read_spec(errs: &mut Errors, path: &Path, base: &Path, root: &Table<'_, '_>) -> Spec {
    root.check_keys(errs, TOP_KEYS, TOP_PLANNED);
    let section = |errs: &mut Errors, key: &str, example: &str| {
        root.get(key)
            .and_then(|item| item.table(errs, &format!("a table like {example}")))
    };
    let berth_table = section(errs, "berth", "[berth]");
    let proxy_table = section(errs, "proxy", "[proxy]");
    let services_table = section(errs, "services", "[services.NAME]");

    let berth = read_berth(errs, base, berth_table.as_ref());
    let proxy = read_proxy(errs, base, proxy_table.as_ref());
    check_distinct_listeners(errs, &berth, &proxy, berth_table, proxy_table);

    let listeners = service::Listeners {
        http: proxy.http.is_some(),
        https: proxy.https.is_some(),
    };
    let parsed = services_table
        .map(|t| read_services(errs, base, &t, listeners))
        .unwrap_or_default();
    check_routes(errs, &parsed, listeners);

    Spec {
        path: path.to_owned(),
        berth,
        proxy,
        services: parsed
            .into_iter()
            .filter_map(|p| Some((p.name, p.spec?)))
            .collect(),
    }
}

/// `[berth]`.
fn read_berth(errs: &mut Errors, base: &Path, table: Option<&Table<'_, '_>>) -> BerthConfig {
    if let Some(t) = table {
        t.check_keys(errs, BERTH_KEYS, &[]);
    }
    let get = |key: &str| table.and_then(|t| t.get(key));
    let data_dir = get("data_dir")
        .and_then(|v| v.path(errs, base))
        .unwrap_or_else(|| reader::resolve(base, ".berth"));
    let api = get("api")
        .and_then(|v| {
            v.parse_str(
                errs,
                r#"a string like "unix:PATH" or "127.0.0.1:7700""#,
                |s| values::api_addr(s, base),
            )
        })
        .unwrap_or_else(|| ApiAddr::Unix(data_dir.join("berth.sock")));
    let metrics =
        get("metrics").and_then(|v| v.parse_str(errs, ADDR_EXPECTED, values::socket_addr));
    let api_token_file = get("api_token_file")
        .and_then(|v| v.path(errs, base))
        .or_else(|| matches!(api, ApiAddr::Tcp(_)).then(|| data_dir.join("api.token")));
    BerthConfig {
        ports: get("ports")
            .and_then(|v| {
                v.parse_str(
                    errs,
                    r#"a port range like "20000-29999""#,
                    values::port_range,
                )
            })
            .unwrap_or(PortRange {
                start: 20000,
                end: 29999,
            }),
        data_dir,
        api,
        metrics,
        api_token_file,
    }
}

/// `[proxy]`.
fn read_proxy(errs: &mut Errors, base: &Path, table: Option<&Table<'_, '_>>) -> ProxyConfig {
    if let Some(t) = table {
        t.check_keys(errs, PROXY_KEYS, &[]);
    }
    let get = |key: &str| table.and_then(|t| t.get(key));
    let duration = |errs: &mut Errors, key: &str, default: u64| {
        get(key)
            .and_then(|v| v.positive_duration(errs))
            .unwrap_or(Duration::from_secs(default))
    };
    ProxyConfig {
        http: get("http").and_then(|v| v.parse_str(errs, ADDR_EXPECTED, values::socket_addr)),
        https: get("https").and_then(|v| v.parse_str(errs, ADDR_EXPECTED, values::socket_addr)),
        public_https_port: get("public_https_port")
            .and_then(|v| v.int_in(errs, 1, 65535))
            .and_then(|n| u16::try_from(n).ok()),
        trusted_proxies: get("trusted_proxies")
            .and_then(|v| v.array_of(errs, "an array of CIDRs", cidr))
            .unwrap_or_default(),
        access_log: get("access_log").and_then(|v| v.bool(errs)).unwrap_or(true),
        header_timeout: duration(errs, "header_timeout", 10),
        max_header_size: get("max_header_size")
            .and_then(|v| v.positive_size(errs))
            .unwrap_or(64 * 1024),
        idle_timeout: duration(errs, "idle_timeout", 60),
        connect_timeout: duration(errs, "connect_timeout", 5),
        response_timeout: duration(errs, "response_timeout", 60),
        certificates: get("certificates")
            .and_then(|v| {
                v.array_of(
                    errs,
                    "an array of tables [[proxy.certificates]]",
                    |errs, item| certificate(errs, base, item),
                )
            })
            .unwrap_or_default(),
    }
}

/// One `[[proxy.certificates]]` entry.
fn certificate(errs: &mut Errors, base: &Path, item: &Item<'_, '_>) -> Option<CertificateSpec> {
    let t = item.table(errs, "a table with cert and key")?;
    t.check_keys(errs, CERTIFICATE_KEYS, &[]);
    let mut path = |key: &str| match t.get(key) {
        Some(v) => v.path(errs, base),
        None => {
            t.missing(errs, key, "a path to a PEM file");
            None
        }
    };
    let cert = path("cert");
    let key = path("key");
    Some(CertificateSpec {
        cert: cert?,
        key: key?,
    })
}

/// An element of `trusted_proxies`, `allow` or `deny`.
fn cidr(errs: &mut Errors, item: &Item<'_, '_>) -> Option<ipnet::IpNet> {
    item.parse_str(errs, r#"a CIDR string like "10.0.0.0/8""#, values::ip_net)
}

/// No two listeners (proxy http/https, metrics, a TCP API) on the same address; the
/// later one in the file is reported.
fn check_distinct_listeners(
    errs: &mut Errors,
    berth: &BerthConfig,
    proxy: &ProxyConfig,
    berth_table: Option<Table<'_, '_>>,
    proxy_table: Option<Table<'_, '_>>,
) {
    let api = match berth.api {
        ApiAddr::Tcp(addr) => Some(addr),
        ApiAddr::Unix(_) => None,
    };
    let span = |table: &Option<Table<'_, '_>>, key: &str| {
        table.as_ref().and_then(|t| t.get(key)).map(|v| v.span)
    };
    let mut listeners: Vec<(&str, SocketAddr, Span)> = [
        ("berth.api", api, span(&berth_table, "api")),
        (
            "berth.metrics",
            berth.metrics,
            span(&berth_table, "metrics"),
        ),
        ("proxy.http", proxy.http, span(&proxy_table, "http")),
        ("proxy.https", proxy.https, span(&proxy_table, "https")),
    ]
    .into_iter()
    .filter_map(|(name, addr, span)| Some((name, addr?, span?)))
    .collect();
    listeners.sort_by_key(|(_, _, span)| span.start);
    for (i, (name, addr, span)) in listeners.iter().enumerate() {
        if let Some((other, _, _)) = listeners[..i].iter().find(|(_, a, _)| a == addr) {
            errs.at(span, format!("{name}: {addr} is already used by {other}"));
        }
    }
}

/// Every `[services.NAME]`, in file order.
fn read_services(
    errs: &mut Errors,
    base: &Path,
    table: &Table<'_, '_>,
    listeners: service::Listeners,
) -> Vec<ParsedService> {
    let mut parsed = Vec::new();
    for entry in table.entries() {
        let name = match ServiceName::new(entry.key) {
            Ok(name) => Some(name),
            Err(message) => {
                errs.at(&entry.key_span, format!("{}: {message}", entry.item.path));
                None
            }
        };
        let Some(t) = entry.item.table(errs, "a table like [services.NAME]") else {
            continue;
        };
        let (spec, claims) = service::read_service(errs, base, &t, listeners);
        if let Some(name) = name {
            parsed.push(ParsedService { name, spec, claims });
        }
    }
    parsed
}

/// Rules across services: a web service needs a proxy listener (said once), there is
/// at most one `default`, and no domain and path is claimed by two services. The later
/// service in the file is the one reported.
fn check_routes(errs: &mut Errors, services: &[ParsedService], listeners: service::Listeners) {
    if !listeners.http
        && !listeners.https
        && let Some(first) = services
            .iter()
            .find(|p| p.claims.kind == Some(ServiceKind::Web))
    {
        errs.at(
            &first.claims.span,
            format!(
                "services.{}: a web service needs a proxy listener, but [proxy] sets neither http nor https; add e.g. http = \"127.0.0.1:8080\" to [proxy] (or set kind = \"private\" or \"worker\")",
                first.name
            ),
        );
    }
    let mut default_owner: Option<&ServiceName> = None;
    // (domain pattern as written, path prefix) -> the service that claimed it first
    let mut owners: BTreeMap<(String, &str), &ServiceName> = BTreeMap::new();
    for p in services {
        if let Some(span) = &p.claims.default {
            match default_owner {
                Some(owner) => errs.at(
                    span,
                    format!(
                        "services.{}.default: only one service may be the default, and \"{owner}\" already is",
                        p.name
                    ),
                ),
                None => default_owner = Some(&p.name),
            }
        }
        let Some(spec) = &p.spec else { continue };
        for (domain, span) in &p.claims.domains {
            for path in spec.route_paths() {
                let owner = *owners.entry((domain.to_string(), path)).or_insert(&p.name);
                if owner != &p.name {
                    errs.at(
                        span,
                        format!(
                            "services.{}.domains: {domain} with path {path:?} is already routed to service \"{owner}\"",
                            p.name
                        ),
                    );
                }
            }
        }
    }
}
