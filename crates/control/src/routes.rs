//! Building the proxy's routing snapshot from the controller's state, and the seam
//! through which the controller talks to the data plane.
//!
//! **Invariant:** only `running` instances that are not unhealthy, of a web service that
//! is not being removed, appear as backends.

use std::net::{Ipv4Addr, SocketAddr};

use proxy::{Backend, HostPattern, RouteTable, ServiceRoute};
use spec::{DomainPattern, ServiceKind, ServiceSpec};

use crate::instance::{Health, Instance, State};

/// What the controller needs from the data plane. The berth binary implements it for
/// the real proxy; tests use a fake.
pub trait DataPlane: Send + Sync + 'static {
    /// Swap in a new routing snapshot.
    fn update_routes(&self, table: RouteTable);
    /// Requests in flight to this instance right now.
    fn in_flight(&self, instance: &str) -> usize;
}

/// The 503 page served in maintenance mode when the service configures none.
pub const DEFAULT_MAINTENANCE_PAGE: &str = "<!doctype html><html><head><title>Down for maintenance</title></head>\
<body><h1>Down for maintenance</h1><p>This service is being updated and will be back shortly.</p></body></html>\n";

/// One web service's routing inputs.
pub struct RouteInput<'a> {
    pub name: &'a str,
    pub spec: &'a ServiceSpec,
    /// `Some(page)` in maintenance mode.
    pub maintenance: Option<&'a str>,
}

pub fn build<'a>(
    services: impl IntoIterator<Item = RouteInput<'a>>,
    instances: &[&Instance],
) -> RouteTable {
    let mut table = RouteTable::default();
    for s in services {
        if s.spec.kind != ServiceKind::Web {
            continue;
        }
        let backends = instances
            .iter()
            .filter(|i| {
                i.service == s.name && i.state == State::Running && i.health != Health::Unhealthy
            })
            .filter_map(|i| {
                i.port.map(|p| Backend {
                    instance: i.id.clone(),
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, p)),
                })
            })
            .collect();
        table.services.push(ServiceRoute {
            name: s.name.to_owned(),
            hosts: s
                .spec
                .domains
                .iter()
                .map(|d| match d {
                    DomainPattern::Exact(h) => HostPattern::Exact(h.clone()),
                    DomainPattern::Wildcard(h) => HostPattern::Wildcard(h.clone()),
                })
                .collect(),
            paths: s.spec.paths.clone(),
            default: s.spec.default,
            https_redirect: s.spec.https_redirect,
            allow: s.spec.allow.clone(),
            deny: s.spec.deny.clone(),
            max_body: s.spec.max_body,
            balance: match s.spec.balance {
                spec::Balance::RoundRobin => proxy::Balance::RoundRobin,
                spec::Balance::LeastConn => proxy::Balance::LeastConn,
            },
            maintenance: s.maintenance.map(str::to_owned),
            backends,
        });
    }
    table
}
