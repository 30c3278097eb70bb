//! Backends that refuse, hang or are missing: 502 / 503 / 504, failover and ejection.

use std::net::SocketAddr;
use std::time::Duration;

use proxy::Backend;

use crate::support::*;

/// An address on which nothing listens (bound, then closed).
async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_fails_over_then_502() {
    let live = upstream("live").await;
    let mut route = service("web", &["web.test"], &[&live]);
    route.backends.insert(
        0,
        Backend {
            instance: "dead".into(),
            addr: dead_addr().await,
        },
    );
    let (proxy, addr) = start(config(), table(vec![route.clone()])).await;
    for _ in 0..6 {
        let got = fetch(addr, "web.test", "/").await;
        assert_eq!(got.status, 200, "failover to the live backend");
        assert_eq!(got.seen().get("upstream"), Some("live"));
    }
    assert!(
        proxy.metrics_text().contains("kind=\"connect\"} 1"),
        "dead one ejected after the first refusal:\n{}",
        proxy.metrics_text()
    );

    route.backends.remove(1);
    proxy.update_routes(table(vec![route]));
    let got = fetch(addr, "web.test", "/").await;
    assert_eq!(got.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_is_503_with_retry_after() {
    let (_proxy, addr) = start(config(), table(vec![service("web", &["web.test"], &[])])).await;
    let got = fetch(addr, "web.test", "/").await;
    assert_eq!(got.status, 503);
    assert!(got.headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_is_504_and_others_are_unaffected() {
    let web = upstream("web").await;
    let mut cfg = config();
    cfg.response_timeout = Duration::from_millis(300);
    let (_proxy, addr) = start(cfg, table(vec![service("web", &["web.test"], &[&web])])).await;
    let slow = tokio::spawn(fetch(addr, "web.test", "/sleep/5000"));
    assert_eq!(fetch(addr, "web.test", "/fast").await.status, 200);
    let got = slow.await.expect("join");
    assert_eq!(got.status, 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_is_502() {
    let mut cfg = config();
    cfg.connect_timeout = Duration::from_millis(200);
    let mut route = service("web", &["web.test"], &[]);
    // TEST-NET-1: never routed; the connect either times out or fails at once.
    route.backends.push(Backend {
        instance: "far".into(),
        addr: "192.0.2.1:9".parse().expect("addr"),
    });
    let (_proxy, addr) = start(cfg, table(vec![route])).await;
    let got = fetch(addr, "web.test", "/").await;
    assert_eq!(got.status, 502);
}
