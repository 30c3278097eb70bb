//! The validated desired state. Every value here has passed validation: the rest of
//! berth never sees a raw TOML value, an unparsed duration or a relative path.
//!
//! All types are `Serialize + Deserialize + PartialEq` so the store can keep them as JSON
//! and `diff` can compare a service's stored entry with the file's.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A whole validated `berth.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Absolute path of the config file this spec was read from.
    pub path: PathBuf,
    pub berth: BerthConfig,
    pub proxy: ProxyConfig,
    pub services: BTreeMap<ServiceName, ServiceSpec>,
}

/// `[berth]`: where berth keeps its state and how it is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BerthConfig {
    /// Absolute. Default: `.berth` beside the config file.
    pub data_dir: PathBuf,
    /// Default: `unix:<data_dir>/berth.sock`.
    pub api: ApiAddr,
    /// Default: `20000-29999`.
    pub ports: PortRange,
    /// Optional Prometheus listener without a token.
    pub metrics: Option<SocketAddr>,
    /// File holding the bearer token for a TCP API (absolute). Default when the API is
    /// TCP: `<data_dir>/api.token`, created by `berth up` if missing.
    pub api_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiAddr {
    /// `unix:PATH` (absolute after validation).
    Unix(PathBuf),
    /// `HOST:PORT`; every request then needs a bearer token.
    Tcp(SocketAddr),
}

impl fmt::Display for ApiAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ApiAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// An inclusive range of TCP ports, `start <= end`, `start >= 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

/// `[proxy]`: the edge listeners and their limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyConfig {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    /// The HTTPS port users see (for redirects), when the listener is behind NAT/port-forwarding.
    pub public_https_port: Option<u16>,
    pub trusted_proxies: Vec<IpNet>,
    /// Default true.
    pub access_log: bool,
    /// Default 10s.
    pub header_timeout: Duration,
    /// Default 64 KiB.
    pub max_header_size: u64,
    /// Idle keep-alive timeout for client connections. Default 60s.
    pub idle_timeout: Duration,
    /// Upstream connect timeout. Default 5s.
    pub connect_timeout: Duration,
    /// Upstream response-head timeout. Default 60s.
    pub response_timeout: Duration,
    /// `[[proxy.certificates]]`, in file order; the first answers clients without SNI.
    pub certificates: Vec<CertificateSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateSpec {
    /// Absolute paths.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A service name: `[a-z0-9][a-z0-9-]*`, at most 63 characters (a DNS label), so that
/// `NAME.internal` and instance ids `NAME-3` are always valid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServiceName(String);

impl ServiceName {
    /// Checks the syntax; the error says what is expected.
    pub fn new(s: &str) -> Result<Self, String> {
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if s.is_empty() || s.len() > 63 || !ok_chars || s.starts_with('-') || s.ends_with('-') {
            return Err(format!(
                "invalid service name {s:?}: expected 1-63 lower-case letters, digits or '-', not starting or ending with '-'"
            ));
        }
        Ok(ServiceName(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// Routed from the edge proxy; gets a `PORT`.
    Web,
    /// Gets a `PORT`; reachable from other services only.
    Private,
    /// No port, no routing.
    Worker,
}

impl ServiceKind {
    pub fn has_port(self) -> bool {
        !matches!(self, ServiceKind::Worker)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A string, run as `/bin/sh -c STRING`.
    Shell(String),
    /// An argv array, run directly (argv[0] looked up in PATH).
    Argv(Vec<String>),
}

impl Command {
    /// The argv to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Argv(v) => v.clone(),
        }
    }
}

/// A host pattern from `domains`: lower-case, no trailing dot, no port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DomainPattern {
    /// `web.example.com`
    Exact(String),
    /// `*.example.com`, stored as the suffix `example.com`; matches any name with at
    /// least one more label in front (not `example.com` itself).
    Wildcard(String),
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(h) => f.write_str(h),
            DomainPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastConn,
}

/// `[services.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub kind: ServiceKind,
    pub command: Command,
    /// Absolute working directory; default: the config file's directory.
    pub dir: PathBuf,
    pub user: Option<String>,
    /// Default 1. May be 0.
    pub instances: u32,
    /// Web only (validation rejects them on other kinds).
    pub domains: Vec<DomainPattern>,
    /// Path prefixes, each starting with `/`. Empty means `["/"]`.
    pub paths: Vec<String>,
    pub default: bool,
    pub https_redirect: bool,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    /// Default 1 GiB.
    pub max_body: u64,
    pub env: BTreeMap<String, String>,
    /// `balance = "round_robin" | "least_conn"`, default round robin.
    pub balance: Balance,
    /// Optional HTML file served with 503 in maintenance mode (absolute).
    pub maintenance_page: Option<PathBuf>,
    /// Bound on disk for this service's logs, all instances together. Default 64 MiB.
    pub log_max: u64,
    pub health: Option<HealthSpec>,
    pub deploy: DeploySpec,
    pub restart: RestartSpec,
}

/// `[services.NAME.health]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub check: HealthCheck,
    /// Default 2s.
    pub interval: Duration,
    /// Default 1s.
    pub timeout: Duration,
    /// Default 1.
    pub healthy_threshold: u32,
    /// Default 3.
    pub unhealthy_threshold: u32,
    /// Default 30s.
    pub grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HealthCheck {
    Http {
        /// Starts with `/`; may include a query.
        path: String,
        /// Default 200-399.
        status: StatusRange,
        /// Host header; default the first exact domain, else `localhost`.
        host: Option<String>,
    },
    Tcp,
    /// Run under `/bin/sh -c` in the service's dir and env; healthy when it exits 0.
    Command(String),
}

/// Accepted HTTP statuses, e.g. `"200-399"` or `"200"`, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRange {
    pub min: u16,
    pub max: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.min..=self.max).contains(&status)
    }
}

/// `[services.NAME.deploy]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploySpec {
    pub strategy: Strategy,
    /// Default 1, at least 1 for rolling.
    pub surge: u32,
    /// Default 30s.
    pub drain: Duration,
    /// Default 10s.
    pub watch: Duration,
    /// Default true.
    pub auto_rollback: bool,
    /// Default false.
    pub maintenance: bool,
    /// Empty string in the file means none.
    pub release_command: Option<String>,
    /// How many releases' sources are kept on disk. Default 10.
    pub keep_releases: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Rolling,
    Recreate,
}

/// `[services.NAME.restart]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    /// Default TERM.
    pub stop_signal: Signal,
    /// Default 10s.
    pub stop_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// A Linux signal, validated by name (`"TERM"`, `"SIGTERM"`, `"hup"`) or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// Linux signal number (x86_64/aarch64 numbering of the common signals).
    pub number: i32,
}

/// Names berth accepts for signals, with their Linux numbers.
pub const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("KILL", 9),
    ("USR1", 10),
    ("USR2", 12),
    ("TERM", 15),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("WINCH", 28),
];

impl Signal {
    pub const TERM: Signal = Signal { number: 15 };
    pub const KILL: Signal = Signal { number: 9 };

    /// Parses `TERM`, `SIGTERM`, `term` or `15`.
    pub fn parse(s: &str) -> Result<Signal, String> {
        let up = s.trim().to_ascii_uppercase();
        let name = up.strip_prefix("SIG").unwrap_or(&up);
        if let Some((_, n)) = SIGNALS.iter().find(|(k, _)| *k == name) {
            return Ok(Signal { number: *n });
        }
        if let Ok(n) = name.parse::<i32>()
            && (1..=64).contains(&n)
        {
            return Ok(Signal { number: n });
        }
        let names: Vec<&str> = SIGNALS.iter().map(|(k, _)| *k).collect();
        Err(format!(
            "unknown signal {s:?}: expected one of {} (with or without SIG) or a number 1-64",
            names.join(", ")
        ))
    }

    pub fn name(&self) -> String {
        SIGNALS
            .iter()
            .find(|(_, n)| *n == self.number)
            .map(|(k, _)| format!("SIG{k}"))
            .unwrap_or_else(|| format!("signal {}", self.number))
    }
}

impl ServiceSpec {
    /// The path prefixes this service is routed on: `paths`, or `["/"]` when empty.
    pub fn route_paths(&self) -> Vec<&str> {
        if self.paths.is_empty() {
            vec!["/"]
        } else {
            self.paths.iter().map(String::as_str).collect()
        }
    }
}
