//! The seam between the controller and the proxy, and the translation of the proxy's
//! settings from the spec's types into the proxy's own.

use std::sync::Arc;

use control::DataPlane;
use proxy::{Proxy, RouteTable};

/// The real data plane: the edge proxy.
pub struct ProxyPlane(pub Arc<Proxy>);

impl DataPlane for ProxyPlane {
    fn update_routes(&self, table: RouteTable) {
        self.0.update_routes(table);
    }

    fn in_flight(&self, instance: &str) -> usize {
        self.0.in_flight(instance)
    }
}

/// `[proxy]` as the proxy wants it.
pub fn proxy_config(spec: &spec::Spec) -> proxy::ProxyConfig {
    let p = &spec.proxy;
    proxy::ProxyConfig {
        http: p.http,
        https: p.https,
        public_https_port: p.public_https_port,
        trusted_proxies: p.trusted_proxies.clone(),
        access_log: p
            .access_log
            .then(|| spec.berth.data_dir.join("logs").join("access.log")),
        header_timeout: p.header_timeout,
        max_header_size: p.max_header_size,
        idle_timeout: p.idle_timeout,
        connect_timeout: p.connect_timeout,
        response_timeout: p.response_timeout,
        certificates: p
            .certificates
            .iter()
            .map(|c| (c.cert.clone(), c.key.clone()))
            .collect(),
    }
}

/// Everything wrong with a spec that only reading other files shows (certificates),
/// as lines in the `FILE: message` form of config errors.
pub fn check_files(spec: &spec::Spec) -> Vec<String> {
    let certs: Vec<_> = spec
        .proxy
        .certificates
        .iter()
        .map(|c| (c.cert.clone(), c.key.clone()))
        .collect();
    proxy::check_certificates(&certs)
        .into_iter()
        .map(|p| format!("{}: {p}", spec.path.display()))
        .collect()
}
