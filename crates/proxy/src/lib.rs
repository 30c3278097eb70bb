//! berth's data plane: HTTP/HTTPS listeners, TLS with SNI, host/path routing over an
//! immutable [`RouteTable`] snapshot, balancing, forwarding, limits, access log, metrics.
//!
//! **Boundary:** knows nothing of processes, specs or the store. The control plane hands
//! it a new `RouteTable` whenever instances or config change; the proxy reads the latest
//! snapshot per request.
//!
//! Codemap:
//! - [`Proxy`] (this file) owns the shared state and the public API.
//! - `listeners`: accept loops, per-connection HTTP/1 and HTTP/2 serving, lingering close.
//! - `tls`: certificate loading, the SNI resolver, [`check_certificates`].
//! - `routes`: compiles a [`RouteTable`] into host/path lookup maps.
//! - `balance`: round-robin / least-connections choice and ejection of refusing backends.
//! - `upstream`: per-backend state and the keep-alive connection pools.
//! - `h1`: the HTTP/1.1 client that forwards bodiless requests inside the request's task
//!   (hyper's client, one task per connection, carries the rest).
//! - `h1_serve`: the HTTP/1.1 server for bodiless requests on a connection's own task;
//!   hyper takes the connection over at the first request it does not serve.
//! - `forward`: the request handler (rules, redirects, limits, forwarding, upgrades).
//! - `headers`: hop-by-hop stripping, `X-Forwarded-*`, client address resolution.
//! - `body`: request/response body wrappers (size limits, accounting on completion).
//! - `access_log`: the bounded, rotated access log written off the request path.
//! - `metrics`: per-service counters and histograms in Prometheus text format.
//!
//! **Invariant:** the request path takes no lock: routes and config are `arc-swap`
//! snapshots, counters are atomics; the only mutexes guard a backend's idle-connection lists.
#![forbid(unsafe_code)]

mod access_log;
mod balance;
mod body;
mod forward;
mod h1;
mod h1_serve;
mod headers;
mod listeners;
mod metrics;
mod routes;
mod tls;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use tls::check_certificates;

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

impl Default for ProxyConfig {
    /// The defaults of DESIGN.md: no listeners, no access log, 10 s header timeout,
    /// 64 KiB headers, 60 s idle, 5 s connect, 60 s response.
    fn default() -> Self {
        Self {
            http: None,
            https: None,
            public_https_port: None,
            trusted_proxies: Vec::new(),
            access_log: None,
            header_timeout: Duration::from_secs(10),
            max_header_size: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            certificates: Vec::new(),
        }
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
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

impl Default for ServiceRoute {
    /// An empty service: no hosts, no backends, `max_body` 1 GiB, round-robin.
    fn default() -> Self {
        Self {
            name: String::new(),
            hosts: Vec::new(),
            paths: Vec::new(),
            default: false,
            https_redirect: false,
            allow: Vec::new(),
            deny: Vec::new(),
            max_body: 1 << 30,
            balance: Balance::RoundRobin,
            maintenance: None,
            backends: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub instance: String,
    pub addr: SocketAddr,
}

/// Why the proxy could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("the https listener needs at least one [[proxy.certificates]] entry")]
    NoCertificate,
    #[error("{}", .0.join("; "))]
    Certificates(Vec<String>),
    #[error("cannot open access log {}: {source}", path.display())]
    AccessLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How long a pooled upstream connection may stay idle before it is closed. Shorter
/// than the usual backend keep-alive (5 s for Node) so we rarely reuse a connection the
/// backend is closing.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// State shared by the listeners, the request handler and the public API.
pub(crate) struct Shared {
    pub(crate) routes: ArcSwap<routes::CompiledRoutes>,
    pub(crate) config: ArcSwap<listeners::RuntimeConfig>,
    pub(crate) upstreams: upstream::Registry,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) tls: Arc<tls::SniResolver>,
    /// Stops accept loops and asks connections to finish gracefully.
    pub(crate) shutdown: CancellationToken,
    /// Cuts whatever is still open once the shutdown grace has passed.
    pub(crate) hard_stop: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

/// The running edge proxy. Cheap to clone; all clones drive the same listeners.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    control: Arc<Mutex<Control>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("local_addrs", &self.local_addrs())
            .finish_non_exhaustive()
    }
}

/// What only the (rare) control calls touch.
struct Control {
    config: ProxyConfig,
    http: Option<listeners::Listener>,
    https: Option<listeners::Listener>,
    access_log_path: Option<PathBuf>,
}

impl Proxy {
    /// Binds the listeners, loads the certificates and spawns the accept loops on the
    /// current tokio runtime.
    pub async fn start(config: ProxyConfig, routes: RouteTable) -> Result<Proxy, ProxyError> {
        let store = tls::load_store(&config.certificates)?;
        if config.https.is_some() && store.is_empty() {
            return Err(ProxyError::NoCertificate);
        }
        let resolver = Arc::new(tls::SniResolver::new(store));
        let access_log = match &config.access_log {
            Some(path) => Some(Arc::new(access_log::AccessLog::open(path)?)),
            None => None,
        };
        let http = match config.http {
            Some(addr) => Some(listeners::bind(addr).await?),
            None => None,
        };
        let https = match config.https {
            Some(addr) => Some(listeners::bind(addr).await?),
            None => None,
        };
        let https_port = https
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        let runtime = listeners::RuntimeConfig::new(&config, https_port, access_log);
        let shared = Arc::new(Shared {
            routes: ArcSwap::from_pointee(routes::CompiledRoutes::default()),
            config: ArcSwap::from_pointee(runtime),
            upstreams: upstream::Registry::default(),
            metrics: metrics::Metrics::default(),
            tls: resolver,
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        *lock(&shared.metrics.access_log_dropped) = shared
            .config
            .load()
            .access_log
            .as_ref()
            .map(|l| l.dropped.clone());
        let tls_config = tls::server_config(shared.tls.clone());
        let control = Control {
            access_log_path: config.access_log.clone(),
            http: http.map(|l| listeners::spawn_accept_loop(&shared, l, None)),
            https: https.map(|l| listeners::spawn_accept_loop(&shared, l, Some(tls_config))),
            config,
        };
        upstream::spawn_reaper(&shared);
        let proxy = Proxy {
            shared,
            control: Arc::new(Mutex::new(control)),
        };
        proxy.update_routes(routes);
        Ok(proxy)
    }

    /// Swaps in a new routing table. In-flight requests keep the snapshot they started
    /// with; backend state (in-flight counts, pooled connections) carries over by instance.
    pub fn update_routes(&self, routes: RouteTable) {
        let compiled = routes::CompiledRoutes::compile(
            &routes,
            |b| self.shared.upstreams.get_or_insert(b),
            |name| self.shared.metrics.service(name),
        );
        self.shared.routes.store(Arc::new(compiled));
        self.shared.upstreams.retain(&routes);
    }

    /// Takes up new certificates and limits; rebinds listeners whose address changed.
    /// On error nothing changes.
    pub async fn reload(&self, config: ProxyConfig) -> Result<(), ProxyError> {
        let store = tls::load_store(&config.certificates)?;
        if config.https.is_some() && store.is_empty() {
            return Err(ProxyError::NoCertificate);
        }
        let (old, old_log_path, old_log) = {
            let control = lock(&self.control);
            (
                control.config.clone(),
                control.access_log_path.clone(),
                self.shared.config.load().access_log.clone(),
            )
        };
        let new_http = if config.http != old.http {
            match config.http {
                Some(addr) => Some(Some(listeners::bind(addr).await?)),
                None => Some(None),
            }
        } else {
            None
        };
        let new_https = if config.https != old.https {
            match config.https {
                Some(addr) => Some(Some(listeners::bind(addr).await?)),
                None => Some(None),
            }
        } else {
            None
        };
        let access_log = if config.access_log == old_log_path {
            old_log
        } else {
            match &config.access_log {
                Some(path) => Some(Arc::new(access_log::AccessLog::open(path)?)),
                None => None,
            }
        };
        self.shared.tls.swap(store);
        let mut control = lock(&self.control);
        if let Some(listener) = new_http {
            if let Some(old) = control.http.take() {
                old.stop();
            }
            control.http = listener.map(|l| listeners::spawn_accept_loop(&self.shared, l, None));
        }
        if let Some(listener) = new_https {
            if let Some(old) = control.https.take() {
                old.stop();
            }
            let tls_config = tls::server_config(self.shared.tls.clone());
            control.https =
                listener.map(|l| listeners::spawn_accept_loop(&self.shared, l, Some(tls_config)));
        }
        let https_port = control.https.as_ref().map(|l| l.addr.port());
        *lock(&self.shared.metrics.access_log_dropped) =
            access_log.as_ref().map(|l| l.dropped.clone());
        self.shared
            .config
            .store(Arc::new(listeners::RuntimeConfig::new(
                &config, https_port, access_log,
            )));
        control.access_log_path = config.access_log.clone();
        control.config = config;
        Ok(())
    }

    /// Requests currently being forwarded to that backend instance (open WebSockets
    /// included); deploys drain on it.
    pub fn in_flight(&self, instance: &str) -> usize {
        self.shared.upstreams.in_flight(instance)
    }

    /// Per-service counters and latency histograms in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut in_flight: HashMap<String, usize> = HashMap::new();
        for (instance, n) in self.shared.upstreams.in_flight_all() {
            *in_flight.entry(instance).or_default() += n;
        }
        self.shared.metrics.render(&in_flight)
    }

    /// The actual bound (http, https) addresses.
    pub fn local_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let control = lock(&self.control);
        (
            control.http.as_ref().map(|l| l.addr),
            control.https.as_ref().map(|l| l.addr),
        )
    }

    /// Stops accepting, asks open connections to finish their current requests, and
    /// waits up to `grace` before cutting what is left (WebSockets included).
    pub async fn shutdown(&self, grace: Duration) {
        {
            let mut control = lock(&self.control);
            if let Some(l) = control.http.take() {
                l.stop();
            }
            if let Some(l) = control.https.take() {
                l.stop();
            }
        }
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        if tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_err()
        {
            self.shared.hard_stop.cancel();
            // Connection tasks end promptly once cut; bound it anyway.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.tracker.wait()).await;
        }
        self.shared.upstreams.clear_idle();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::h1::fuzz_response;
    pub use crate::h1_serve::fuzz_request;
    pub use crate::headers::fuzz_request_head;
    pub use crate::routes::fuzz_route;
}
