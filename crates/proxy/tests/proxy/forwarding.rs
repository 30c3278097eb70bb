//! What the upstream sees, access rules, redirects, maintenance, access log, metrics.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_forwarding_headers() {
    let web = upstream("web").await;
    let (_proxy, addr) = start(
        config(),
        table(vec![service("web", &["web.test"], &[&web])]),
    )
    .await;
    let req = Request::get("/p?q=1")
        .header("host", "Web.Test:8080")
        .header("x-forwarded-for", "198.51.100.7")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let got = send(addr, req).await;
    assert_eq!(got.status, 200);
    let seen = got.seen();
    assert_eq!(seen.header("host"), Some("Web.Test:8080"), "host preserved");
    assert_eq!(seen.get("path"), Some("/p?q=1"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("198.51.100.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("Web.Test:8080"));
    assert_eq!(
        seen.header("x-real-ip"),
        Some("127.0.0.1"),
        "untrusted peer is the client"
    );
    assert_eq!(seen.header("x-request-id").map(str::len), Some(32));
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("x-hop"), None);
    assert_eq!(seen.header("keep-alive"), None);
    assert_eq!(got.headers["x-upstream"], "web");

    let req = Request::get("/")
        .header("host", "web.test")
        .header("x-request-id", "given-id")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(
        send(addr, req).await.seen().header("x-request-id"),
        Some("given-id")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_rules_use_the_client_address() {
    let web = upstream("web").await;
    let mut allow = service("allow", &["allow.test"], &[&web]);
    allow.allow = vec![
        "127.0.0.1/32".parse().expect("cidr"),
        "::1/128".parse().expect("cidr"),
    ];
    let mut deny = service("deny", &["deny.test"], &[&web]);
    deny.deny = vec!["127.0.0.2/32".parse().expect("cidr")];
    let (_proxy, addr) = start(config(), table(vec![allow, deny])).await;

    let cases = [
        ("127.0.0.1", "allow.test", 200),
        ("127.0.0.2", "allow.test", 403),
        ("127.0.0.1", "deny.test", 200),
        ("127.0.0.2", "deny.test", 403),
    ];
    for (from, host, want) in cases {
        let got = send_on(connect_from(from, addr).await, get(host, "/")).await;
        assert_eq!(got.status, want, "{from} -> {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_decide_whether_x_forwarded_for_names_the_client() {
    let web = upstream("web").await;
    let mut route = service("web", &["web.test"], &[&web]);
    route.deny = vec!["203.0.113.0/24".parse().expect("cidr")];
    let mut cfg = config();
    cfg.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    let (_proxy, addr) = start(cfg, table(vec![route])).await;

    let with_xff = |xff: &str| {
        Request::get("/")
            .header("host", "web.test")
            .header("x-forwarded-for", xff)
            .header("x-forwarded-proto", "https")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    // From the trusted 127.0.0.1: the header names the client.
    let got = send(addr, with_xff("203.0.113.9")).await;
    assert_eq!(got.status, 403);
    let got = send(addr, with_xff("198.51.100.1, 127.0.0.1")).await;
    assert_eq!(got.status, 200);
    let seen = got.seen();
    assert_eq!(seen.header("x-real-ip"), Some("198.51.100.1"));
    assert_eq!(
        seen.header("x-forwarded-proto"),
        Some("https"),
        "kept from a trusted proxy"
    );
    // From 127.0.0.2 (not trusted): the header is ignored for the decision.
    let got = send_on(
        connect_from("127.0.0.2", addr).await,
        with_xff("203.0.113.9"),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.seen().header("x-real-ip"), Some("127.0.0.2"));
    assert_eq!(got.seen().header("x-forwarded-proto"), Some("http"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_keeps_path_query_and_port() {
    let dir = temp_dir("redirect");
    let c = cert(&dir, "web", &["web.test"]);
    let web = upstream("web").await;
    let mut route = service("web", &["web.test"], &[&web]);
    route.https_redirect = true;
    let mut cfg = config();
    cfg.https = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.certificates = vec![(c.cert.clone(), c.key.clone())];
    let (proxy, addr) = start(cfg.clone(), table(vec![route.clone()])).await;
    let https_port = proxy.local_addrs().1.expect("https").port();

    let got = fetch(addr, "Web.Test:8080", "/a/b?c=d").await;
    assert_eq!(got.status, 308);
    assert_eq!(
        got.headers["location"],
        format!("https://web.test:{https_port}/a/b?c=d").as_str()
    );
    // Over TLS the request is forwarded.
    let tls = tls_connect(
        proxy.local_addrs().1.expect("https"),
        Some("web.test"),
        &[b"http/1.1"],
    )
    .await;
    let got = send_on(tls, get("web.test", "/a")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.seen().header("x-forwarded-proto"), Some("https"));

    cfg.public_https_port = Some(443);
    let (_proxy, addr) = start(cfg, table(vec![route])).await;
    let got = fetch(addr, "web.test", "/x").await;
    assert_eq!(got.status, 308);
    assert_eq!(got.headers["location"], "https://web.test/x");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_answers_503_with_the_page() {
    let web = upstream("web").await;
    let mut route = service("web", &["web.test"], &[&web]);
    route.maintenance = Some("<h1>back soon</h1>".into());
    let (proxy, addr) = start(config(), table(vec![route.clone()])).await;
    let got = fetch(addr, "web.test", "/").await;
    assert_eq!(got.status, 503);
    assert!(got.headers.contains_key("retry-after"));
    assert_eq!(got.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(got.text(), "<h1>back soon</h1>");
    route.maintenance = None;
    proxy.update_routes(table(vec![route]));
    assert_eq!(fetch(addr, "web.test", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_metrics_and_in_flight() {
    let dir = temp_dir("alog");
    let log_path = dir.join("logs/access.log");
    let web = upstream("web").await;
    let mut cfg = config();
    cfg.access_log = Some(log_path.clone());
    let (proxy, addr) = start(cfg, table(vec![service("web", &["web.test"], &[&web])])).await;

    let slow = tokio::spawn(fetch(addr, "web.test", "/sleep/400"));
    eventually(WAIT, "one request in flight", || async {
        (proxy.in_flight("web") == 1).then_some(())
    })
    .await;
    assert_eq!(slow.await.expect("join").status, 200);
    eventually(WAIT, "in-flight back to 0", || async {
        (proxy.in_flight("web") == 0).then_some(())
    })
    .await;
    assert_eq!(fetch(addr, "nowhere.test", "/missing").await.status, 404);

    let lines = eventually(WAIT, "two access log lines", || async {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        (text.lines().count() >= 2).then_some(text)
    })
    .await;
    let first = lines
        .lines()
        .find(|l| l.contains("/sleep/400"))
        .expect("logged");
    for part in [
        "\"service\":\"web\"",
        "\"instance\":\"web\"",
        "\"method\":\"GET\"",
        "\"host\":\"web.test\"",
        "\"status\":200",
        "\"client\":\"127.0.0.1\"",
        "\"time\":\"",
        "\"duration_ms\":",
    ] {
        assert!(first.contains(part), "{part} missing in {first}");
    }
    assert!(!first.contains("\"bytes\":0"), "{first}");
    assert!(lines.contains("\"status\":404"));

    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains("berth_proxy_requests_total{service=\"web\",code=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("berth_proxy_request_duration_seconds_count{service=\"web\"} 1"));
    assert!(metrics.contains("berth_proxy_unrouted_requests_total 1"));
    proxy.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_errors_name_the_address() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = taken.local_addr().expect("addr");
    let mut cfg = config();
    cfg.http = Some(addr);
    let err = proxy::Proxy::start(cfg, table(vec![]))
        .await
        .expect_err("port taken");
    assert_eq!(
        err.to_string(),
        format!("cannot listen on {addr}: address in use")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let web = upstream("web").await;
    let (proxy, addr) = start(
        config(),
        table(vec![service("web", &["web.test"], &[&web])]),
    )
    .await;
    let slow = tokio::spawn(fetch(addr, "web.test", "/sleep/300"));
    eventually(WAIT, "request in flight", || async {
        (proxy.in_flight("web") == 1).then_some(())
    })
    .await;
    proxy.shutdown(Duration::from_secs(5)).await;
    assert_eq!(slow.await.expect("join").status, 200);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rebinds_a_changed_listener() {
    let web = upstream("web").await;
    let cfg = config();
    let (proxy, old) = start(
        cfg.clone(),
        table(vec![service("web", &["web.test"], &[&web])]),
    )
    .await;
    // Keep-alive connection opened before the reload.
    let stream = tokio::net::TcpStream::connect(old).await.expect("connect");
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);

    let spare = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let new_addr = spare.local_addr().expect("addr");
    drop(spare);
    let mut moved = cfg.clone();
    moved.http = Some(new_addr);
    proxy.reload(moved).await.expect("reload");
    assert_eq!(proxy.local_addrs().0, Some(new_addr));
    assert_eq!(fetch(new_addr, "web.test", "/").await.status, 200);
    eventually(WAIT, "old listener closed", || async {
        tokio::net::TcpStream::connect(old)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let got = collect(
        tx.send_request(get("web.test", "/"))
            .await
            .expect("old conn"),
    )
    .await;
    assert_eq!(got.status, 200, "open connections survive the rebind");
}
