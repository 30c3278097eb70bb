//! Backends as long-lived state: in-flight counts, ejection, and the keep-alive pool of
//! HTTP/1.1 connections to each instance (always on 127.0.0.1 or whatever address the
//! control plane gave, never a name to resolve).
//!
//! The pool is shared by every listener and worker thread. Idle connections are kept
//! at most [`POOL_IDLE_TIMEOUT`](crate::POOL_IDLE_TIMEOUT) and handed out newest first,
//! so the ones most likely to be closed by the backend are the ones we drop.
//!
//! Must not: decide which backend to use (that is `balance`) or touch requests.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::ReqBody;
use crate::h1;
use crate::{Backend, POOL_IDLE_TIMEOUT, RouteTable, Shared, lock};

/// Idle connections kept per backend; more are closed when they come back.
const MAX_IDLE_PER_BACKEND: usize = 512;

pub(crate) type Sender = http1::SendRequest<ReqBody>;

struct IdleConn {
    tx: Sender,
    since: Instant,
}

/// One backend instance at one address.
pub(crate) struct Upstream {
    pub(crate) instance: Arc<str>,
    pub(crate) addr: SocketAddr,
    pub(crate) in_flight: AtomicUsize,
    /// Milliseconds on [`crate::balance::now_ms`]'s clock; 0 = not ejected.
    pub(crate) ejected_until: AtomicU64,
    idle: Mutex<Vec<IdleConn>>,
    /// Idle connections of [`h1`](crate::h1), newest last.
    idle_raw: Mutex<Vec<(h1::Conn, Instant)>>,
}

impl Upstream {
    pub(crate) fn new(backend: &Backend) -> Self {
        Self {
            instance: Arc::from(backend.instance.as_str()),
            addr: backend.addr,
            in_flight: AtomicUsize::new(0),
            ejected_until: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            idle_raw: Mutex::new(Vec::new()),
        }
    }

    /// A pooled [`h1`] connection that is still open, with how long it sat idle.
    pub(crate) fn checkout_raw(&self) -> Option<(h1::Conn, Duration)> {
        loop {
            let (mut conn, since) = lock(&self.idle_raw).pop()?;
            let idle_for = since.elapsed();
            if idle_for < POOL_IDLE_TIMEOUT && conn.is_usable() {
                return Some((conn, idle_for));
            }
        }
    }

    /// Returns an [`h1`] connection whose response was read to its end.
    pub(crate) fn checkin_raw(&self, conn: h1::Conn) {
        let mut idle = lock(&self.idle_raw);
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push((conn, Instant::now()));
        }
    }

    /// A pooled connection that is still open, with how long it sat idle.
    pub(crate) fn checkout(&self) -> Option<(Sender, Duration)> {
        loop {
            let conn = lock(&self.idle).pop()?;
            let idle_for = conn.since.elapsed();
            if idle_for < POOL_IDLE_TIMEOUT && !conn.tx.is_closed() {
                return Some((conn.tx, idle_for));
            }
        }
    }

    /// Returns a connection whose last exchange completed cleanly.
    pub(crate) fn checkin(&self, tx: Sender) {
        if tx.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(IdleConn {
                tx,
                since: Instant::now(),
            });
        }
    }

    fn reap(&self) {
        lock(&self.idle).retain(|c| c.since.elapsed() < POOL_IDLE_TIMEOUT && !c.tx.is_closed());
        lock(&self.idle_raw)
            .retain_mut(|(c, since)| since.elapsed() < POOL_IDLE_TIMEOUT && c.is_usable());
    }

    fn clear_idle(&self) {
        lock(&self.idle).clear();
        lock(&self.idle_raw).clear();
    }
}

/// Why no connection could be made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Refused,
    Timeout,
    Other(io::Error),
}

/// Opens a new HTTP/1.1 connection to `addr` and spawns its driver task.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(ConnectError::Refused);
        }
        Ok(Err(e)) => return Err(ConnectError::Other(e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Other(io::Error::other(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
        }
    });
    Ok(tx)
}

/// Every backend the proxy has routed to recently, keyed by (instance, address).
type UpstreamKey = (Arc<str>, SocketAddr);

#[derive(Default)]
pub(crate) struct Registry {
    map: Mutex<HashMap<UpstreamKey, Arc<Upstream>>>,
}

impl Registry {
    pub(crate) fn get_or_insert(&self, backend: &Backend) -> Arc<Upstream> {
        let key: UpstreamKey = (Arc::from(backend.instance.as_str()), backend.addr);
        lock(&self.map)
            .entry(key)
            .or_insert_with(|| Arc::new(Upstream::new(backend)))
            .clone()
    }

    /// Forgets backends that left the table, once nothing is in flight on them; closes
    /// their idle connections right away.
    pub(crate) fn retain(&self, table: &RouteTable) {
        let mut map = lock(&self.map);
        map.retain(|(instance, addr), up| {
            let routed = table.services.iter().any(|s| {
                s.backends
                    .iter()
                    .any(|b| *b.instance == **instance && b.addr == *addr)
            });
            if !routed {
                up.clear_idle();
            }
            routed || up.in_flight.load(Ordering::Relaxed) > 0
        });
    }

    pub(crate) fn in_flight(&self, instance: &str) -> usize {
        lock(&self.map)
            .values()
            .filter(|u| &*u.instance == instance)
            .map(|u| u.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn in_flight_all(&self) -> Vec<(String, usize)> {
        lock(&self.map)
            .values()
            .map(|u| (u.instance.to_string(), u.in_flight.load(Ordering::Relaxed)))
            .collect()
    }

    pub(crate) fn clear_idle(&self) {
        for up in lock(&self.map).values() {
            up.clear_idle();
        }
    }

    fn reap(&self) {
        let all: Vec<Arc<Upstream>> = lock(&self.map).values().cloned().collect();
        for up in all {
            up.reap();
        }
    }
}

/// Closes pooled connections past their idle time, every second, until the proxy is
/// dropped or shut down.
pub(crate) fn spawn_reaper(shared: &Arc<Shared>) {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let stop = shared.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match weak.upgrade() {
                Some(shared) => shared.upstreams.reap(),
                None => return,
            }
        }
    });
}

/// Holds one unit of a backend's in-flight count.
pub(crate) struct InFlight(pub(crate) Arc<Upstream>);

impl InFlight {
    pub(crate) fn new(up: Arc<Upstream>) -> Self {
        up.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(up)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
