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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_and_stale_ones_replaced() {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let web = upstream("web").await;
    let (_proxy, addr) = start(
        config(),
        table(vec![service("web", &["web.test"], &[&web])]),
    )
    .await;
    for _ in 0..20 {
        assert_eq!(fetch(addr, "web.test", "/").await.status, 200);
    }
    assert_eq!(
        web.accepted.load(Ordering::Relaxed),
        1,
        "one pooled connection reused"
    );

    // A backend that closes every connection after one answer, without saying so.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let once_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce")
                    .await;
            });
        }
    });
    let mut route = service("once", &["once.test"], &[]);
    route.backends.push(Backend {
        instance: "once".into(),
        addr: once_addr,
    });
    let (_proxy, addr) = start(config(), table(vec![route])).await;
    for _ in 0..10 {
        let got = fetch(addr, "once.test", "/").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "once");
    }
}
