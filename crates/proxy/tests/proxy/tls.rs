//! TLS: SNI choice, wildcards, the no-SNI fallback, HTTP/2 by ALPN, certificate reload
//! without dropping connections.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate() {
    let dir = temp_dir("sni");
    let first = cert(&dir, "first", &["first.test"]);
    let second = cert(&dir, "second", &["a.test", "*.wild.test"]);
    let web = upstream("web").await;
    let mut cfg = config();
    cfg.http = None;
    cfg.https = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.certificates = vec![
        (first.cert.clone(), first.key.clone()),
        (second.cert.clone(), second.key.clone()),
    ];
    let (proxy, _) = start(
        cfg,
        table(vec![service(
            "web",
            &["a.test", "*.wild.test", "first.test"],
            &[&web],
        )]),
    )
    .await;
    let addr = proxy.local_addrs().1.expect("https");
    let cases = [
        (Some("first.test"), &first.der),
        (Some("a.test"), &second.der),
        (Some("x.wild.test"), &second.der),
        (Some("y.x.wild.test"), &first.der),
        (Some("unknown.test"), &first.der),
        (None, &first.der),
    ];
    for (sni, want) in cases {
        let stream = tls_connect(addr, sni, &[b"http/1.1"]).await;
        assert_eq!(&presented(&stream), want, "SNI {sni:?}");
    }
    let stream = tls_connect(addr, Some("x.wild.test"), &[b"http/1.1"]).await;
    let got = send_on(stream, get("x.wild.test", "/tls")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.seen().header("x-forwarded-proto"), Some("https"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_request_end_to_end() {
    let dir = temp_dir("h2");
    let c = cert(&dir, "web", &["web.test"]);
    let web = upstream("web").await;
    let mut cfg = config();
    cfg.https = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.certificates = vec![(c.cert.clone(), c.key.clone())];
    let (proxy, _) = start(cfg, table(vec![service("web", &["web.test"], &[&web])])).await;
    let addr = proxy.local_addrs().1.expect("https");

    let stream = tls_connect(addr, Some("web.test"), &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let req = Request::post("https://web.test:8443/h2/path?x=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::from(vec![b'q'; 1000])))
        .expect("request");
    let got = send_h2(stream, req).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = got.seen();
    assert_eq!(seen.get("path"), Some("/h2/path?x=1"));
    assert_eq!(seen.get("version"), Some("HTTP/1.1"));
    assert_eq!(seen.get("body"), Some("1000"));
    assert_eq!(seen.header("host"), Some("web.test:8443"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("cookie"), Some("a=1; b=2"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_keeps_open_connections() {
    let dir = temp_dir("reload");
    let old = cert(&dir, "old", &["web.test"]);
    let new = cert(&dir, "new", &["web.test"]);
    let web = upstream("web").await;
    let mut cfg = config();
    cfg.https = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.certificates = vec![(old.cert.clone(), old.key.clone())];
    let (proxy, _) = start(
        cfg.clone(),
        table(vec![service("web", &["web.test"], &[&web])]),
    )
    .await;
    let addr = proxy.local_addrs().1.expect("https");

    let stream = tls_connect(addr, Some("web.test"), &[b"http/1.1"]).await;
    assert_eq!(presented(&stream), old.der);
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let first = collect(tx.send_request(get("web.test", "/1")).await.expect("first")).await;
    assert_eq!(first.status, 200);

    // A broken pair is refused and changes nothing.
    let mut bad = cfg.clone();
    bad.certificates = vec![(old.cert.clone(), new.key.clone())];
    let err = proxy.reload(bad).await.expect_err("mismatched key");
    assert!(err.to_string().contains("does not match"), "{err}");
    assert_eq!(
        presented(&tls_connect(addr, Some("web.test"), &[]).await),
        old.der
    );

    cfg.certificates = vec![(new.cert.clone(), new.key.clone())];
    proxy.reload(cfg).await.expect("reload");
    assert_eq!(proxy.local_addrs().1, Some(addr), "same listener");
    assert_eq!(
        presented(&tls_connect(addr, Some("web.test"), &[]).await),
        new.der
    );
    let second = collect(
        tx.send_request(get("web.test", "/2"))
            .await
            .expect("second"),
    )
    .await;
    assert_eq!(second.status, 200, "old connection still served");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_certificates_reports_problems() {
    let dir = temp_dir("check");
    let good = cert(&dir, "good", &["web.test"]);
    let other = cert(&dir, "other", &["web.test"]);
    assert!(proxy::check_certificates(&[(good.cert.clone(), good.key.clone())]).is_empty());
    let problems = proxy::check_certificates(&[
        (dir.join("nope.pem"), good.key.clone()),
        (good.cert.clone(), other.key.clone()),
    ]);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("nope.pem"), "{}", problems[0]);
    assert!(problems[1].contains("does not match"), "{}", problems[1]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_get_a_goaway() {
    let dir = temp_dir("h2-idle");
    let c = cert(&dir, "web", &["web.test"]);
    let web = upstream("web").await;
    let mut cfg = config();
    cfg.https = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.certificates = vec![(c.cert.clone(), c.key.clone())];
    cfg.idle_timeout = std::time::Duration::from_millis(800);
    let (proxy, _) = start(cfg, table(vec![service("web", &["web.test"], &[&web])])).await;
    let addr = proxy.local_addrs().1.expect("https");

    let stream = tls_connect(addr, Some("web.test"), &[b"h2"]).await;
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let h2_get = || {
        Request::get("https://web.test/sleep/200")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    // A connection in use (a request every ~200 ms) is kept past the idle timeout...
    let busy_until = std::time::Instant::now() + 3 * std::time::Duration::from_millis(800);
    while std::time::Instant::now() < busy_until {
        let resp = tokio::time::timeout(WAIT, tx.send_request(h2_get()))
            .await
            .expect("in time")
            .expect("a busy connection stays open");
        assert_eq!(collect(resp).await.status, 200);
    }
    assert!(!conn.is_finished(), "busy connection closed");
    // ...and one left idle is closed by the proxy with a GOAWAY (a clean end for the
    // client, not a reset).
    let ended = tokio::time::timeout(WAIT, conn)
        .await
        .expect("idle connection closed by the proxy")
        .expect("join");
    assert!(ended.is_ok(), "closed cleanly: {ended:?}");
    assert!(
        tx.send_request(h2_get()).await.is_err(),
        "no new stream after the GOAWAY"
    );
    let _ = std::fs::remove_dir_all(dir);
}
