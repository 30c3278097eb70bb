//! berth's data plane: HTTP/HTTPS listeners, TLS with SNI, host/path routing over an
//! immutable [`RouteTable`] snapshot, balancing, forwarding, limits, access log, metrics.
//!
//! **Boundary:** knows nothing of processes, specs or the store. The control plane hands
//! it a new `RouteTable` whenever instances or config change; the proxy reads the latest
//! snapshot per request.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// Listener and limit settings (from `[proxy]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub public_https_port: Option<u16>,
    pub trusted_proxies: Vec<IpNet>,
    /// Where the access log goes; `None` turns it off.
    pub access_log: Option<PathBuf>,
    pub header_timeout: Duration,
    pub max_header_size: u64,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// (cert PEM, key PEM) paths; the first answers clients without SNI.
    pub certificates: Vec<(PathBuf, PathBuf)>,
}

/// An immutable routing snapshot, swapped atomically.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    pub services: Vec<ServiceRoute>,
}

#[derive(Debug, Clone)]
pub enum HostPattern {
    Exact(String),
    /// Suffix without the `*.`.
    Wildcard(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
}

#[derive(Debug, Clone)]
pub struct ServiceRoute {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    /// Path prefixes; empty means `/`.
    pub paths: Vec<String>,
    pub default: bool,
    pub https_redirect: bool,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub max_body: u64,
    pub balance: Balance,
    /// `Some(html)`: maintenance mode, answer 503 with this page.
    pub maintenance: Option<String>,
    /// The service's `running` instances; the only ones that receive traffic.
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub instance: String,
    pub addr: SocketAddr,
}
