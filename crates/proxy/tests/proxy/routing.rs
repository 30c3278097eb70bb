//! Host and path routing through the listener, table-driven.

use crate::support::*;
use proxy::HostPattern;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path() {
    let web = upstream("web").await;
    let api = upstream("api").await;
    let wild = upstream("wild").await;
    let fallback = upstream("fallback").await;
    let mut api_route = service("api", &["web.test"], &[&api]);
    api_route.paths = vec!["/api".into(), "/v2/".into()];
    let mut fallback_route = service("fallback", &[], &[&fallback]);
    fallback_route.default = true;
    let routes = table(vec![
        service("web", &["web.test", "*.web.test"], &[&web]),
        api_route,
        service("wild", &["*.apps.test"], &[&wild]),
        fallback_route,
    ]);
    let (_proxy, addr) = start(config(), routes).await;
    let cases = [
        ("web.test", "/", "web"),
        ("WEB.Test:8080", "/x", "web"),
        ("web.test.", "/", "web"),
        ("web.test", "/api", "api"),
        ("web.test", "/api/users?x=1", "api"),
        ("web.test", "/apix", "web"),
        ("web.test", "/v2/thing", "api"),
        ("a.web.test", "/api", "web"),
        ("one.apps.test", "/", "wild"),
        ("two.levels.apps.test:443", "/", "wild"),
        ("apps.test", "/", "fallback"),
        ("elsewhere.example", "/", "fallback"),
    ];
    for (host, path, want) in cases {
        let got = fetch(addr, host, path).await;
        assert_eq!(got.status, 200, "{host}{path}: {}", got.text());
        assert_eq!(got.seen().get("upstream"), Some(want), "{host}{path}");
        assert_eq!(got.seen().get("path"), Some(path), "{host}{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_host_without_default_is_404() {
    let web = upstream("web").await;
    let mut route = service("web", &[], &[&web]);
    route.hosts = vec![HostPattern::Exact("web.test".into())];
    route.paths = vec!["/only".into()];
    let (proxy, addr) = start(config(), table(vec![route])).await;
    assert_eq!(fetch(addr, "other.test", "/only").await.status, 404);
    assert_eq!(fetch(addr, "web.test", "/").await.status, 404);
    assert_eq!(fetch(addr, "web.test", "/only/x").await.status, 200);
    assert!(
        proxy
            .metrics_text()
            .contains("berth_proxy_unrouted_requests_total 2")
    );
}
