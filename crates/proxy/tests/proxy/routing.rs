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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_rules() {
    let web = upstream("web").await;
    let other = upstream("other").await;
    let mut fallback = service("fallback", &[], &[&web]);
    fallback.default = true;
    let (_proxy, addr) = start(
        config(),
        table(vec![service("other", &["other.test"], &[&other]), fallback]),
    )
    .await;
    // RFC 9112 3.2: one Host, required on HTTP/1.1, and a valid one; 400 otherwise.
    assert_each_status(
        addr,
        &[
            b"GET / HTTP/1.1\r\nHost: web.test\r\nHost: other.test\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: web.test/x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@other.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: other.test:80x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        ],
        400,
    )
    .await;
    assert_eq!(web.accepted.load(std::sync::atomic::Ordering::Relaxed), 0);

    // HTTP/1.0 may leave Host out: the default service answers.
    let raw = raw_exchange(addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    assert!(raw.contains("upstream=web"), "{raw}");
    // IP literals and ports are hosts too.
    for host in ["[::1]:8080", "127.0.0.1", "other.test:"] {
        let raw = raw_exchange(
            addr,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&raw), 200, "Host: {host}: {raw}");
    }
    // An absolute-form target names the host; the upstream sees that one, not the
    // Host field the client sent with it.
    let raw = raw_exchange(
        addr,
        b"GET http://other.test/abs HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    assert!(raw.contains("upstream=other"), "{raw}");
    assert!(raw.contains("h:host=other.test\n"), "{raw}");
}
