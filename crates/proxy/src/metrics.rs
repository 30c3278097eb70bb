//! Per-service request counters and latency histograms, rendered in the Prometheus
//! text exposition format (version 0.0.4) by hand.
//!
//! Recording is three relaxed atomic adds per request on counters the compiled route
//! table points at directly (no lookup, no formatting); rendering walks the registry.
//!
//! Metrics (documented for `docs/metrics.md`):
//! - `berth_proxy_requests_total{service,code}` counter; `code` is the status class
//!   (`2xx`, `4xx`, ...).
//! - `berth_proxy_request_duration_seconds{service}` histogram, from request head to
//!   the end of the response body.
//! - `berth_proxy_upstream_errors_total{service,kind}` counter; `kind` is `connect`,
//!   `timeout` or `reset`.
//! - `berth_proxy_backend_in_flight{instance}` gauge.
//! - `berth_proxy_unrouted_requests_total` counter (404 from berth).
//! - `berth_proxy_connections_total{listener}` counter, `berth_proxy_connections_open` gauge.
//! - `berth_proxy_access_log_dropped_total` counter.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lock;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BUCKET_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

#[derive(Clone, Copy)]
pub(crate) enum UpstreamError {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
}

const UPSTREAM_ERROR_KINDS: [&str; 3] = ["connect", "timeout", "reset"];

/// Counters of one service; survive route swaps.
pub(crate) struct ServiceMetrics {
    name: Arc<str>,
    /// By status class 1xx..5xx.
    classes: [AtomicU64; 5],
    /// Per bucket (not cumulative), plus one overflow slot.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    upstream_errors: [AtomicU64; 3],
}

impl ServiceMetrics {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            classes: Default::default(),
            buckets: Default::default(),
            sum_micros: AtomicU64::new(0),
            upstream_errors: Default::default(),
        }
    }

    pub(crate) fn observe(&self, status: u16, elapsed: Duration) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        let micros = elapsed.as_micros() as u64;
        let bucket = BUCKET_MICROS.partition_point(|&b| b < micros);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// All metrics of one proxy.
#[derive(Default)]
pub(crate) struct Metrics {
    services: Mutex<HashMap<String, Arc<ServiceMetrics>>>,
    pub(crate) unrouted: AtomicU64,
    pub(crate) connections_http: AtomicU64,
    pub(crate) connections_https: AtomicU64,
    pub(crate) connections_open: AtomicU64,
    pub(crate) access_log_dropped: Mutex<Option<Arc<AtomicU64>>>,
}

impl Metrics {
    /// The counters of `name`, created on first use.
    pub(crate) fn service(&self, name: &str) -> Arc<ServiceMetrics> {
        lock(&self.services)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(ServiceMetrics::new(name)))
            .clone()
    }

    pub(crate) fn render(&self, in_flight: &HashMap<String, usize>) -> String {
        let mut services: Vec<Arc<ServiceMetrics>> =
            lock(&self.services).values().cloned().collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = String::with_capacity(1024 + services.len() * 2048);

        out.push_str(
            "# HELP berth_proxy_requests_total Requests answered for a service, by status class.\n\
             # TYPE berth_proxy_requests_total counter\n",
        );
        for s in &services {
            for (i, c) in s.classes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "berth_proxy_requests_total{{service=\"{}\",code=\"{}xx\"}} {}",
                    escape(&s.name),
                    i + 1,
                    c.load(Ordering::Relaxed)
                );
            }
        }

        out.push_str(
            "# HELP berth_proxy_request_duration_seconds Time from request head to the end of the response.\n\
             # TYPE berth_proxy_request_duration_seconds histogram\n",
        );
        for s in &services {
            let name = escape(&s.name);
            let mut cumulative = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "berth_proxy_request_duration_seconds_bucket{{service=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            cumulative += s.buckets[BUCKETS.len()].load(Ordering::Relaxed);
            let sum = s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "berth_proxy_request_duration_seconds_bucket{{service=\"{name}\",le=\"+Inf\"}} {cumulative}\n\
                 berth_proxy_request_duration_seconds_sum{{service=\"{name}\"}} {sum}\n\
                 berth_proxy_request_duration_seconds_count{{service=\"{name}\"}} {cumulative}"
            );
        }

        out.push_str(
            "# HELP berth_proxy_upstream_errors_total Failed attempts to reach a service's instances.\n\
             # TYPE berth_proxy_upstream_errors_total counter\n",
        );
        for s in &services {
            for (i, kind) in UPSTREAM_ERROR_KINDS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "berth_proxy_upstream_errors_total{{service=\"{}\",kind=\"{kind}\"}} {}",
                    escape(&s.name),
                    s.upstream_errors[i].load(Ordering::Relaxed)
                );
            }
        }

        out.push_str(
            "# HELP berth_proxy_backend_in_flight Requests being forwarded to an instance.\n\
             # TYPE berth_proxy_backend_in_flight gauge\n",
        );
        let mut instances: Vec<_> = in_flight.iter().collect();
        instances.sort();
        for (instance, n) in instances {
            let _ = writeln!(
                out,
                "berth_proxy_backend_in_flight{{instance=\"{}\"}} {n}",
                escape(instance)
            );
        }

        let dropped = lock(&self.access_log_dropped)
            .as_ref()
            .map_or(0, |d| d.load(Ordering::Relaxed));
        let _ = write!(
            out,
            "# HELP berth_proxy_unrouted_requests_total Requests no service matched (404).\n\
             # TYPE berth_proxy_unrouted_requests_total counter\n\
             berth_proxy_unrouted_requests_total {}\n\
             # HELP berth_proxy_connections_total Client connections accepted.\n\
             # TYPE berth_proxy_connections_total counter\n\
             berth_proxy_connections_total{{listener=\"http\"}} {}\n\
             berth_proxy_connections_total{{listener=\"https\"}} {}\n\
             # HELP berth_proxy_connections_open Client connections open now.\n\
             # TYPE berth_proxy_connections_open gauge\n\
             berth_proxy_connections_open {}\n\
             # HELP berth_proxy_access_log_dropped_total Access log records dropped because the writer was behind.\n\
             # TYPE berth_proxy_access_log_dropped_total counter\n\
             berth_proxy_access_log_dropped_total {dropped}\n",
            self.unrouted.load(Ordering::Relaxed),
            self.connections_http.load(Ordering::Relaxed),
            self.connections_https.load(Ordering::Relaxed),
            self.connections_open.load(Ordering::Relaxed),
        );
        out
    }
}

/// Label value escaping: backslash, double quote, newline.
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\\', '"', '\n']) {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_classes() {
        let m = Metrics::default();
        let web = m.service("web");
        web.observe(200, Duration::from_micros(300));
        web.observe(204, Duration::from_millis(3));
        web.observe(503, Duration::from_secs(20));
        web.upstream_error(UpstreamError::Timeout);
        let text = m.render(&HashMap::from([("web-1".to_owned(), 2)]));
        for line in [
            "berth_proxy_requests_total{service=\"web\",code=\"2xx\"} 2",
            "berth_proxy_requests_total{service=\"web\",code=\"5xx\"} 1",
            "berth_proxy_request_duration_seconds_bucket{service=\"web\",le=\"0.0005\"} 1",
            "berth_proxy_request_duration_seconds_bucket{service=\"web\",le=\"0.0025\"} 1",
            "berth_proxy_request_duration_seconds_bucket{service=\"web\",le=\"0.005\"} 2",
            "berth_proxy_request_duration_seconds_bucket{service=\"web\",le=\"10\"} 2",
            "berth_proxy_request_duration_seconds_bucket{service=\"web\",le=\"+Inf\"} 3",
            "berth_proxy_request_duration_seconds_count{service=\"web\"} 3",
            "berth_proxy_upstream_errors_total{service=\"web\",kind=\"timeout\"} 1",
            "berth_proxy_backend_in_flight{instance=\"web-1\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
