//! Test helpers: echo upstreams, clients (plain, TLS, raw), generated certificates,
//! and polling with a deadline instead of fixed sleeps.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::{Backend, HostPattern, Proxy, ProxyConfig, RouteTable, ServiceRoute};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Bound on every network wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Runs `f` until it returns `Some`, or panics after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A proxy config for tests: HTTP on an ephemeral port, short timeouts.
pub fn config() -> ProxyConfig {
    ProxyConfig {
        http: Some("127.0.0.1:0".parse().expect("addr")),
        header_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(5),
        ..ProxyConfig::default()
    }
}

pub fn service(name: &str, hosts: &[&str], backends: &[&Upstream]) -> ServiceRoute {
    ServiceRoute {
        name: name.to_owned(),
        hosts: hosts
            .iter()
            .map(|h| match h.strip_prefix("*.") {
                Some(s) => HostPattern::Wildcard(s.to_owned()),
                None => HostPattern::Exact((*h).to_owned()),
            })
            .collect(),
        backends: backends.iter().map(|u| u.backend()).collect(),
        ..ServiceRoute::default()
    }
}

pub fn table(services: Vec<ServiceRoute>) -> RouteTable {
    RouteTable { services }
}

pub async fn start(config: ProxyConfig, routes: RouteTable) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start(config, routes).await.expect("proxy starts");
    let http = proxy
        .local_addrs()
        .0
        .unwrap_or_else(|| "127.0.0.1:1".parse().expect("addr"));
    (proxy, http)
}

/// An in-process HTTP/1.1 server that answers with what it saw.
///
/// `/sleep/<ms>` answers after that many milliseconds; anything else answers at once.
/// The body is `key=value` lines: `upstream`, `method`, `path`, `body` (length), and
/// `h:<name>` per header.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub fn backend(&self) -> Backend {
        Backend {
            instance: self.name.clone(),
            addr: self.addr,
        }
    }
}

pub async fn upstream(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let name_owned: Arc<str> = Arc::from(name);
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = name_owned.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| echo(name.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream {
        name: name.to_owned(),
        addr,
        accepted,
    }
}

async fn echo(name: Arc<str>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut out = format!(
        "upstream={name}\nmethod={}\npath={}\nversion={:?}\n",
        req.method(),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        req.version()
    );
    for (k, v) in req.headers() {
        out.push_str(&format!(
            "h:{k}={}\n",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    let (_, mut body) = req.into_parts();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => len += f.data_ref().map_or(0, |d| d.len()),
            Err(_) => break,
        }
    }
    out.push_str(&format!("body={len}\n"));
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut()
        .insert("x-upstream", name.parse().expect("header value"));
    Ok(resp)
}

/// What the echo upstream reported.
pub struct Seen(pub HashMap<String, String>);

impl Seen {
    pub fn parse(body: &[u8]) -> Self {
        let text = String::from_utf8_lossy(body);
        let mut map: HashMap<String, String> = HashMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                map.entry(k.to_owned())
                    .and_modify(|old| {
                        old.push_str(", ");
                        old.push_str(v);
                    })
                    .or_insert_with(|| v.to_owned());
            }
        }
        Seen(map)
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.get(&format!("h:{name}"))
    }
}

/// A response with its body read.
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn seen(&self) -> Seen {
        Seen::parse(&self.body)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Got {
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    send_on(stream, req).await
}

pub async fn send_on<S>(stream: S, req: Request<Full<Bytes>>) -> Got
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = tokio::time::timeout(WAIT, tx.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    collect(resp).await
}

pub async fn collect(resp: Response<Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// GET over a fresh connection.
pub async fn fetch(addr: SocketAddr, host: &str, path: &str) -> Got {
    send(addr, get(host, path)).await
}

/// A client socket bound to `from` (any 127/8 address works on Linux).
pub async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind client");
    socket.connect(to).await.expect("connect")
}

/// A route to one backend that is not an [`Upstream`] (a scripted server).
pub fn service_at(name: &str, host: &str, addr: SocketAddr) -> ServiceRoute {
    let mut route = service(name, &[host], &[]);
    route.backends.push(Backend {
        instance: name.to_owned(),
        addr,
    });
    route
}

/// Reads one request from a scripted server's connection: its head (lower-cased) once
/// the body it declares (chunked first, else `Content-Length`) has arrived too. `None`
/// when the connection ends first. `pending` keeps bytes read past the request.
pub async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    async fn more(stream: &mut TcpStream, pending: &mut Vec<u8>) -> bool {
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                true
            }
        }
    }
    let end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !more(stream, pending).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
    let body_end = if head.contains("transfer-encoding: chunked") {
        loop {
            if let Some(i) = pending[end..].windows(5).position(|w| w == b"0\r\n\r\n") {
                break end + i + 5;
            }
            if !more(stream, pending).await {
                return None;
            }
        }
    } else {
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while pending.len() < end + length {
            if !more(stream, pending).await {
                return None;
            }
        }
        end + length
    };
    pending.drain(..body_end);
    Some(head)
}

/// Sends each raw request on a connection of its own and asserts the proxy's status.
pub async fn assert_each_status(addr: SocketAddr, requests: &[&[u8]], status: u16) {
    for request in requests {
        let raw = raw_exchange(addr, request).await;
        assert_eq!(
            raw_status(&raw),
            status,
            "{}",
            String::from_utf8_lossy(request)
        );
    }
}

/// Writes `head` raw and reads until the peer closes (or `WAIT`).
pub async fn raw_exchange(addr: SocketAddr, head: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head).await.expect("write");
    read_to_close(&mut stream).await
}

pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Status code of the first response in raw bytes.
pub fn raw_status(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"))
}

// ---- TLS ----

/// A generated key pair + self-signed certificate written as PEM files.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("berth-proxy-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub fn cert(dir: &Path, file: &str, names: &[&str]) -> Cert {
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .expect("params");
    let cert = params.self_signed(&key).expect("self-signed");
    let cert_path = dir.join(format!("{file}.pem"));
    let key_path = dir.join(format!("{file}.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    Cert {
        cert: cert_path,
        key: key_path,
        der: cert.der().clone(),
    }
}

/// Accepts any server certificate; the tests look at which one was presented.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS to `addr`; `sni` = `None` sends no SNI. `alpn` e.g. `[b"h2"]`.
pub async fn tls_connect(addr: SocketAddr, sni: Option<&str>, alpn: &[&[u8]]) -> TlsStream {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tls_over(tcp, sni, alpn).await
}

/// TLS over a connected socket, as [`tls_connect`].
pub async fn tls_over(tcp: TcpStream, sni: Option<&str>, alpn: &[&[u8]]) -> TlsStream {
    let addr = tcp.peer_addr().expect("peer");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = match sni {
        Some(s) => ServerName::try_from(s.to_owned()).expect("server name"),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake")
}

/// The certificate the server presented.
pub fn presented(stream: &TlsStream) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a certificate")
        .clone()
        .into_owned()
}

/// Sends one request over HTTP/2 on `stream`.
pub async fn send_h2(stream: TlsStream, req: Request<Full<Bytes>>) -> Got {
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = tokio::time::timeout(WAIT, tx.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    collect(resp).await
}
