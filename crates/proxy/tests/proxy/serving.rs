//! HTTP/1.1 on one client connection: every kind of response framing, pipelined
//! requests, a request with a body in the middle of bodiless ones (the inline server
//! hands the connection to hyper there), `Connection: close`, clients that leave in
//! the middle of an exchange, a large body to a slow TLS reader, and shutdown of idle,
//! half-sent and busy keep-alive connections.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A scripted instance. By path:
/// - `/chunked`: `hello` in two chunks;
/// - `/eof`: `hello`, delimited by closing the connection;
/// - `/none`: 204; `/cached`: 304 with `content-length: 5` and no body;
/// - `/stream`: a chunk `first`, then the rest of a chunked body after 60 s;
/// - `/big`: [`BIG`] bytes of `x`, with their length;
/// - `/slow`: as below, after 1 s; `/hang`: the same after 60 s;
/// - anything else: `METHOD /path` plus ` +N` for a body of N bytes, with its length
///   (no body for HEAD).
const BIG: usize = 4 << 20;

async fn scripted() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                while let Some(head) = read_request(&mut s, &mut pending).await {
                    let mut words = head.split_whitespace();
                    let method = words.next().unwrap_or_default().to_ascii_uppercase();
                    let path = words.next().unwrap_or_default().to_owned();
                    let answer = match path.as_str() {
                        "/chunked" => {
                            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n".to_owned()
                        }
                        "/eof" => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello")
                                .await;
                            return;
                        }
                        "/stream" => {
                            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                            let _ = s.write_all(format!("{head}5\r\nfirst\r\n").as_bytes()).await;
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            "4\r\nrest\r\n0\r\n\r\n".to_owned()
                        }
                        "/big" => {
                            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n");
                            let _ = s.write_all(head.as_bytes()).await;
                            "x".repeat(BIG)
                        }
                        "/none" => "HTTP/1.1 204 No Content\r\n\r\n".to_owned(),
                        "/cached" => {
                            "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n".to_owned()
                        }
                        _ => {
                            match path.as_str() {
                                "/slow" => tokio::time::sleep(Duration::from_secs(1)).await,
                                "/hang" => tokio::time::sleep(Duration::from_secs(60)).await,
                                _ => {}
                            }
                            let mut body = format!("{method} {path}");
                            if let Some(n) = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                            {
                                body.push_str(&format!(" +{}", n.trim()));
                            }
                            let shown = if method == "HEAD" { "" } else { body.as_str() };
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{shown}",
                                body.len()
                            )
                        }
                    };
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One response as a client reads it: its head (lower-cased) and its body, framed as
/// RFC 9112 says (no body for HEAD, 204 and 304; chunked; `Content-Length`; else to
/// the close). Panics when the stream ends or stalls first.
async fn read_response(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    head_request: bool,
) -> (String, Vec<u8>) {
    async fn more(stream: &mut TcpStream, pending: &mut Vec<u8>) -> bool {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => false,
            Ok(Ok(n)) => {
                pending.extend_from_slice(&buf[..n]);
                true
            }
            Err(_) => panic!("no response within {WAIT:?}; have {pending:?}"),
        }
    }
    let end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(more(stream, pending).await, "closed in a head: {pending:?}");
    };
    let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
    pending.drain(..end);
    let status = raw_status(&head);
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    if head_request || status == 204 || status == 304 {
        return (head, Vec::new());
    }
    if field("transfer-encoding:").as_deref() == Some("chunked") {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(more(stream, pending).await, "closed in a chunk size");
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&pending[..line_end]).expect("ascii"),
                16,
            )
            .expect("chunk size");
            while pending.len() < line_end + 2 + size + 2 {
                assert!(more(stream, pending).await, "closed in a chunk");
            }
            body.extend_from_slice(&pending[line_end + 2..line_end + 2 + size]);
            assert_eq!(&pending[line_end + 2 + size..line_end + 4 + size], b"\r\n");
            pending.drain(..line_end + 4 + size);
            if size == 0 {
                return (head, body);
            }
        }
    }
    if let Some(length) = field("content-length:") {
        let length: usize = length.parse().expect("content-length");
        while pending.len() < length {
            assert!(more(stream, pending).await, "closed in a body");
        }
        let body = pending.drain(..length).collect();
        return (head, body);
    }
    while more(stream, pending).await {}
    (head, std::mem::take(pending))
}

/// A proxy with `cfg` and one service, `web.test`, routed to a [`scripted`] instance.
async fn in_front_of_scripted(cfg: proxy::ProxyConfig) -> (proxy::Proxy, SocketAddr) {
    let backend = scripted().await;
    start(cfg, table(vec![service_at("web", "web.test", backend)])).await
}

fn request(method: &str, path: &str) -> String {
    request_to("web.test", method, path)
}

fn request_to(host: &str, method: &str, path: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_framing_on_one_connection() {
    let (_proxy, addr) = in_front_of_scripted(config()).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    let mut pending = Vec::new();
    let chunked = "transfer-encoding: chunked";
    let length = "content-length";
    // (host, method, path, status, body, a field the head must have, one it must not)
    let cases = [
        ("web.test", "GET", "/chunked", 200, "hello", chunked, length),
        // Read to the instance's close: chunked to the client, which keeps its connection.
        ("web.test", "GET", "/eof", 200, "hello", chunked, length),
        // No body and no length (RFC 9110 8.6; hyper's rule too).
        ("web.test", "GET", "/none", 204, "", "date: ", length),
        ("web.test", "GET", "/cached", 304, "", "date: ", length),
        // HEAD: the instance's length, no body.
        (
            "web.test",
            "HEAD",
            "/x",
            200,
            "",
            "content-length: 7",
            chunked,
        ),
        (
            "web.test",
            "GET",
            "/x",
            200,
            "GET /x",
            "content-length: 6",
            chunked,
        ),
        (
            "web.test",
            "DELETE",
            "/y",
            200,
            "DELETE /y",
            "content-length: 9",
            chunked,
        ),
        // The proxy's own answers: the length of their text, also to HEAD.
        (
            "nowhere.test",
            "HEAD",
            "/",
            404,
            "",
            "content-length: 25",
            chunked,
        ),
        (
            "nowhere.test",
            "GET",
            "/",
            404,
            "no service for this host\n",
            "content-length: 25",
            chunked,
        ),
    ];
    for (host, method, path, status, body, field, absent) in cases {
        client
            .write_all(request_to(host, method, path).as_bytes())
            .await
            .expect("write");
        let (head, got) = read_response(&mut client, &mut pending, method == "HEAD").await;
        assert_eq!(raw_status(&head), status, "{method} {path}: {head}");
        assert_eq!(
            String::from_utf8_lossy(&got),
            body,
            "{method} {path}: {head}"
        );
        assert!(
            head.contains(field),
            "{method} {path}: no {field:?} in {head}"
        );
        assert!(
            !head.contains(absent),
            "{method} {path}: {absent:?} in {head}"
        );
        assert!(!head.contains("connection: close"), "{head}");
    }
    assert!(
        pending.is_empty(),
        "bytes past the last response: {pending:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_with_a_body_in_the_middle() {
    let (_proxy, addr) = in_front_of_scripted(config()).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    // All in one write: two bodiless requests, one with a body, one more without.
    let burst = format!(
        "{}{}POST /3 HTTP/1.1\r\nhost: web.test\r\ncontent-length: 3\r\n\r\nabc{}",
        request("GET", "/1"),
        request("HEAD", "/2"),
        request("GET", "/4"),
    );
    client.write_all(burst.as_bytes()).await.expect("write");
    let mut pending = Vec::new();
    for (head_request, body) in [
        (false, "GET /1"),
        (true, ""),
        (false, "POST /3 +3"),
        (false, "GET /4"),
    ] {
        let (head, got) = read_response(&mut client, &mut pending, head_request).await;
        assert_eq!(raw_status(&head), 200, "{head}");
        assert_eq!(String::from_utf8_lossy(&got), body);
    }
    // The same connection goes on serving.
    client
        .write_all(request("GET", "/5").as_bytes())
        .await
        .expect("write");
    let (_, got) = read_response(&mut client, &mut pending, false).await;
    assert_eq!(String::from_utf8_lossy(&got), "GET /5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_ends_the_connection_after_the_response() {
    let (_proxy, addr) = in_front_of_scripted(config()).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"GET /a HTTP/1.1\r\nhost: web.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, client.read_to_end(&mut raw))
        .await
        .expect("the proxy closes the connection")
        .expect("read");
    let raw = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(raw.contains("connection: close"), "{raw}");
    assert!(raw.ends_with("\r\n\r\nget /a"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_busy_ones_after_their_response() {
    // No timeout may close the idle connection before shutdown does.
    let mut cfg = config();
    cfg.header_timeout = Duration::from_secs(60);
    cfg.idle_timeout = Duration::from_secs(60);
    let (proxy, addr) = in_front_of_scripted(cfg).await;
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let mut pending = Vec::new();
    idle.write_all(request("GET", "/a").as_bytes())
        .await
        .expect("write");
    read_response(&mut idle, &mut pending, false).await;
    let mut half_sent = TcpStream::connect(addr).await.expect("connect");
    half_sent
        .write_all(b"GET /a HTTP/1.1\r\nhost: web")
        .await
        .expect("write");
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    busy.write_all(request("GET", "/slow").as_bytes())
        .await
        .expect("write");
    eventually(WAIT, "request in flight", || async {
        (proxy.in_flight("web") == 1).then_some(())
    })
    .await;
    // A grace far beyond WAIT: finishing within WAIT means no connection was cut.
    tokio::time::timeout(WAIT, proxy.shutdown(Duration::from_secs(60)))
        .await
        .expect("shutdown waits for no idle connection");
    let (head, body) = read_response(&mut busy, &mut Vec::new(), false).await;
    assert_eq!(String::from_utf8_lossy(&body), "GET /slow");
    assert!(head.contains("connection: close"), "{head}");
    for stream in [&mut idle, &mut half_sent, &mut busy] {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
            .await
            .expect("closed")
            .expect("read");
        assert_eq!(n, 0, "{rest:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_ends_the_exchange() {
    let mut cfg = config();
    cfg.response_timeout = Duration::from_secs(120);
    let (proxy, addr) = in_front_of_scripted(cfg).await;
    // Gone while the instance thinks.
    let mut waiting = TcpStream::connect(addr).await.expect("connect");
    waiting
        .write_all(request("GET", "/hang").as_bytes())
        .await
        .expect("write");
    eventually(WAIT, "request in flight", || async {
        (proxy.in_flight("web") == 1).then_some(())
    })
    .await;
    drop(waiting);
    eventually(WAIT, "the exchange to end", || async {
        (proxy.in_flight("web") == 0).then_some(())
    })
    .await;
    // Gone in the middle of a streamed body.
    let mut streaming = TcpStream::connect(addr).await.expect("connect");
    streaming
        .write_all(request("GET", "/stream").as_bytes())
        .await
        .expect("write");
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("first") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, streaming.read(&mut buf))
            .await
            .expect("the first chunk comes before the rest")
            .expect("read");
        assert!(n > 0, "closed: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(proxy.in_flight("web"), 1);
    drop(streaming);
    eventually(WAIT, "the streamed exchange to end", || async {
        (proxy.in_flight("web") == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_reaches_a_slow_tls_reader_whole() {
    let dir = temp_dir("big-tls");
    let c = cert(&dir, "web", &["web.test"]);
    let mut cfg = config();
    cfg.https = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.certificates = vec![(c.cert.clone(), c.key.clone())];
    // A body held back would show as a stall, not as a close at a timeout.
    cfg.header_timeout = Duration::from_secs(120);
    cfg.idle_timeout = Duration::from_secs(120);
    let (proxy, _) = in_front_of_scripted(cfg).await;
    let addr = proxy.local_addrs().1.expect("https");
    // A small receive window: the proxy's writes keep finding the socket full.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket.connect(addr).await.expect("connect");
    let mut client = tls_over(tcp, Some("web.test"), &[b"http/1.1"]).await;
    client
        .write_all(request("GET", "/big").as_bytes())
        .await
        .expect("write");
    let mut got = Vec::with_capacity(BIG + 1024);
    let mut buf = vec![0u8; 16 * 1024];
    let mut head_end = None;
    while head_end.is_none_or(|end| got.len() < end + BIG) {
        let n = tokio::time::timeout(WAIT, client.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("stalled after {} bytes", got.len()))
            .expect("read");
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if head_end.is_none() {
            head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        }
    }
    let head_end = head_end.expect("a head");
    assert_eq!(got.len(), head_end + BIG);
    assert!(got[head_end..].iter().all(|&b| b == b'x'));
    let _ = std::fs::remove_dir_all(dir);
}
