//! Header and body limits, slow headers, garbage: each answered without disturbing
//! other connections.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn proxy_with_limits() -> (proxy::Proxy, std::net::SocketAddr, Upstream) {
    let web = upstream("web").await;
    let mut route = service("web", &["web.test"], &[&web]);
    route.max_body = 64 * 1024;
    let mut cfg = config();
    cfg.max_header_size = 16 * 1024;
    cfg.header_timeout = Duration::from_millis(300);
    let (proxy, addr) = start(cfg, table(vec![route])).await;
    (proxy, addr, web)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let (_proxy, addr, _web) = proxy_with_limits().await;
    let big = "a".repeat(40 * 1024);
    let head = format!("GET / HTTP/1.1\r\nhost: web.test\r\nx-big: {big}\r\n\r\n");
    let raw = raw_exchange(addr, head.as_bytes()).await;
    assert_eq!(raw_status(&raw), 431, "{raw}");
    assert_eq!(fetch(addr, "web.test", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_oversized_body_gets_413_readable_before_close() {
    let (_proxy, addr, _web) = proxy_with_limits().await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = "POST /up HTTP/1.1\r\nhost: web.test\r\ncontent-length: 10000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    // Keep sending body while the answer comes; the client must still read it.
    let chunk = vec![b'x'; 256 * 1024];
    for _ in 0..4 {
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let raw = read_to_close(&mut stream).await;
    assert_eq!(raw_status(&raw), 413, "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chunked_body_over_the_limit_gets_413() {
    let (_proxy, addr, _web) = proxy_with_limits().await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = "POST /up HTTP/1.1\r\nhost: web.test\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "y".repeat(16 * 1024));
    for _ in 0..16 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let raw = read_to_close(&mut stream).await;
    assert_eq!(raw_status(&raw), 413, "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_within_the_limit_stream_through() {
    let (_proxy, addr, _web) = proxy_with_limits().await;
    let req = Request::post("/up")
        .header("host", "web.test")
        .body(Full::new(Bytes::from(vec![b'z'; 60 * 1024])))
        .expect("request");
    let got = send(addr, req).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.seen().get("body"), Some("61440"));
    // Chunked, under the limit.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let body = "5\r\nhello\r\n0\r\n\r\n";
    let head = format!(
        "POST /c HTTP/1.1\r\nhost: web.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{body}"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let raw = read_to_close(&mut stream).await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    assert!(raw.contains("body=5"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_are_cut_off() {
    let (_proxy, addr, _web) = proxy_with_limits().await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nhost: web")
        .await
        .expect("write");
    // Another client is served meanwhile.
    assert_eq!(fetch(addr, "web.test", "/").await.status, 200);
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "slow client was not cut off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_400() {
    let (_proxy, addr, _web) = proxy_with_limits().await;
    let raw = raw_exchange(addr, b"\x16\x03\x01garbage that is not http\r\n\r\n").await;
    assert_eq!(raw_status(&raw), 400, "{raw}");
    let raw = raw_exchange(addr, b"GET / HTTP/1.1\r\nbad header line\r\n\r\n").await;
    assert_eq!(raw_status(&raw), 400, "{raw}");
    assert_eq!(fetch(addr, "web.test", "/").await.status, 200);
}

/// An upstream that records each request head it reads (after its body) and answers
/// `200 ok`, closing the connection.
async fn head_recorder() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(head) = read_request(&mut s, &mut Vec::new()).await else {
                    return;
                };
                seen.lock().expect("heads").push(head);
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_framing_cannot_be_smuggled() {
    let (up, heads) = head_recorder().await;
    let (_proxy, addr) = start(config(), table(vec![service_at("web", "web.test", up)])).await;

    // Both framings: the instance gets the chunked one only (RFC 9112 6.1), never a
    // Content-Length beside it that it might prefer.
    let raw = raw_exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    {
        let heads = heads.lock().expect("heads");
        assert_eq!(heads.len(), 1, "{heads:?}");
        assert!(
            heads[0].contains("transfer-encoding: chunked"),
            "{}",
            heads[0]
        );
        assert!(!heads[0].contains("content-length"), "{}", heads[0]);
    }

    // Ambiguous framings are refused before anything reaches the instance.
    assert_each_status(
        addr,
        &[
            b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: gzip\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ],
        400,
    )
    .await;
    assert_eq!(
        heads.lock().expect("heads").len(),
        1,
        "nothing more forwarded"
    );
}
