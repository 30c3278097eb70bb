//! Choosing a backend: round-robin (default) or least-connections over a service's
//! running instances, skipping ones already tried for this request and ones ejected
//! because they refused connections. When every candidate is ejected, ejected ones are
//! tried anyway: a recovered instance then gets traffic at once, and a dead one costs a
//! refused connect on loopback.
//!
//! Lock-free: one atomic for the rotation, the backends' own atomics for the rest.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::Balance;
use crate::routes::Service;
use crate::upstream::Upstream;

/// How long a backend that refused a connection is skipped.
pub(crate) const EJECT_FOR: Duration = Duration::from_secs(3);

/// Milliseconds since the first call; never 0, so 0 can mean "not ejected".
pub(crate) fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = BASE.get_or_init(Instant::now);
    base.elapsed().as_millis() as u64 + 1
}

pub(crate) fn eject(up: &Upstream) {
    let until = now_ms() + EJECT_FOR.as_millis() as u64;
    up.ejected_until.store(until, Ordering::Relaxed);
    tracing::warn!(instance = %up.instance, addr = %up.addr, "backend refused a connection; ejected for {EJECT_FOR:?}");
}

fn is_ejected(up: &Upstream, now: &mut Option<u64>) -> bool {
    let until = up.ejected_until.load(Ordering::Relaxed);
    if until == 0 {
        return false;
    }
    let now = *now.get_or_insert_with(now_ms);
    if now >= until {
        up.ejected_until.store(0, Ordering::Relaxed);
        false
    } else {
        true
    }
}

/// Backends already tried for one request (by index in the service).
#[derive(Default, Clone, Copy)]
pub(crate) struct Tried(u128);

impl Tried {
    pub(crate) fn add(&mut self, index: usize) {
        if index < 128 {
            self.0 |= 1 << index;
        }
    }
    fn has(&self, index: usize) -> bool {
        index < 128 && self.0 & (1 << index) != 0
    }
}

/// The next backend to try, or `None` when every backend was tried (or there are none).
pub(crate) fn pick(service: &Service, tried: Tried) -> Option<usize> {
    let n = service.backends.len();
    if n == 0 {
        return None;
    }
    if n == 1 {
        return (!tried.has(0)).then_some(0);
    }
    let start = service.next.fetch_add(1, Ordering::Relaxed) % n;
    let mut now = None;
    let order = (0..n).map(|k| (start + k) % n).filter(|i| !tried.has(*i));
    match service.balance {
        Balance::RoundRobin => order
            .clone()
            .find(|i| !is_ejected(&service.backends[*i], &mut now))
            .or_else(|| order.clone().next()),
        Balance::LeastConn => {
            let mut best: Option<(usize, usize)> = None;
            for i in order.clone() {
                if is_ejected(&service.backends[i], &mut now) {
                    continue;
                }
                let load = service.backends[i].in_flight.load(Ordering::Relaxed);
                if best.is_none_or(|(_, l)| load < l) {
                    best = Some((i, load));
                }
            }
            best.map(|(i, _)| i).or_else(|| order.clone().next())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::Backend;
    use crate::metrics::ServiceMetrics;

    fn service(n: usize, balance: Balance) -> Service {
        Service {
            name: "s".into(),
            https_redirect: false,
            allow: vec![],
            deny: vec![],
            max_body: 1,
            balance,
            maintenance: None,
            backends: (0..n)
                .map(|i| {
                    Arc::new(Upstream::new(&Backend {
                        instance: format!("s-{i}"),
                        addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    }))
                })
                .collect(),
            next: AtomicUsize::new(0),
            metrics: Arc::new(ServiceMetrics::new("s")),
        }
    }

    #[test]
    fn round_robin_rotates_and_skips_ejected_and_tried() {
        let s = service(3, Balance::RoundRobin);
        let picks: Vec<_> = (0..6).map(|_| pick(&s, Tried::default())).collect();
        assert_eq!(
            picks,
            [Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)]
        );
        eject(&s.backends[1]);
        for _ in 0..6 {
            assert_ne!(pick(&s, Tried::default()), Some(1));
        }
        let mut tried = Tried::default();
        tried.add(0);
        tried.add(2);
        // Only the ejected one is left: it is tried anyway.
        assert_eq!(pick(&s, tried), Some(1));
        tried.add(1);
        assert_eq!(pick(&s, tried), None);
    }

    #[test]
    fn least_conn_prefers_idle_backends() {
        let s = service(3, Balance::LeastConn);
        s.backends[0].in_flight.store(5, Ordering::Relaxed);
        s.backends[1].in_flight.store(1, Ordering::Relaxed);
        s.backends[2].in_flight.store(3, Ordering::Relaxed);
        for _ in 0..5 {
            assert_eq!(pick(&s, Tried::default()), Some(1));
        }
        let mut tried = Tried::default();
        tried.add(1);
        assert_eq!(pick(&s, tried), Some(2));
    }

    #[test]
    fn empty_service_has_no_pick() {
        assert_eq!(
            pick(&service(0, Balance::RoundRobin), Tried::default()),
            None
        );
    }
}
