//! Listeners and client connections: accept loops for the HTTP and HTTPS addresses,
//! the TLS handshake (bounded by `header_timeout`), HTTP/1.1 (the inline server of
//! `h1_serve` first, then hyper) or HTTP/2 (hyper) by ALPN, graceful shutdown, and a
//! lingering close so that a client still sending a body can read the 413/431 it was
//! answered before the socket goes away.
//!
//! Timeouts per connection: the TLS handshake and every HTTP/1 request head must
//! arrive within `header_timeout` (the inline server's head timeout, then hyper's
//! header read timeout after a handoff; both also end idle keep-alive connections, at
//! `min(header_timeout, idle_timeout)`); an HTTP/2 connection that saw no new request
//! for `idle_timeout` gets a GOAWAY and finishes its streams.
//!
//! Must not: route or forward (that is `forward`), or hold the config snapshot of a
//! connection longer than its handshake needs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::access_log::AccessLog;
use crate::forward::{self, ConnCtx};
use crate::h1_serve::{self, Outcome, Prefixed};
use crate::{ProxyConfig, ProxyError, Shared};

/// How long a closing connection keeps reading (and discarding) what the client still
/// sends, so that our last response is not lost to a TCP reset.
const LINGER: Duration = Duration::from_secs(2);
/// And how much it reads at most.
const LINGER_BYTES: u64 = 64 * 1024 * 1024;
/// hyper's default read buffer limit; raised when `max_header_size` needs more.
const DEFAULT_MAX_BUF: usize = 400 * 1024;

/// The parts of [`ProxyConfig`] the request path reads, swapped on reload.
pub(crate) struct RuntimeConfig {
    pub(crate) header_timeout: Duration,
    pub(crate) max_header_size: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) trusted_proxies: Vec<IpNet>,
    /// Port in `https_redirect` locations.
    pub(crate) redirect_port: u16,
    pub(crate) access_log: Option<Arc<AccessLog>>,
}

impl RuntimeConfig {
    pub(crate) fn new(
        config: &ProxyConfig,
        https_port: Option<u16>,
        access_log: Option<Arc<AccessLog>>,
    ) -> Self {
        Self {
            header_timeout: config.header_timeout,
            max_header_size: usize::try_from(config.max_header_size).unwrap_or(usize::MAX),
            idle_timeout: config.idle_timeout,
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            trusted_proxies: config.trusted_proxies.iter().map(IpNet::trunc).collect(),
            redirect_port: config.public_https_port.or(https_port).unwrap_or(443),
            access_log,
        }
    }
}

/// A running accept loop.
pub(crate) struct Listener {
    pub(crate) addr: SocketAddr,
    stop: CancellationToken,
}

impl Listener {
    /// Stops accepting; open connections stay.
    pub(crate) fn stop(self) {
        self.stop.cancel();
    }
}

pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ProxyError::Listen {
            addr,
            reason: match e.kind() {
                io::ErrorKind::AddrInUse => "address in use".to_owned(),
                io::ErrorKind::AddrNotAvailable => {
                    "address not available on this machine".to_owned()
                }
                io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
                _ => e.to_string(),
            },
        })
}

pub(crate) fn spawn_accept_loop(
    shared: &Arc<Shared>,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
) -> Listener {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let stop = shared.shutdown.child_token();
    let shared = shared.clone();
    let token = stop.clone();
    let acceptor = tls.map(TlsAcceptor::from);
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = token.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let counter = if acceptor.is_some() {
                        &shared.metrics.connections_https
                    } else {
                        &shared.metrics.connections_http
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    let conn_shared = shared.clone();
                    let acceptor = acceptor.clone();
                    shared
                        .tracker
                        .spawn(serve_connection(conn_shared, stream, peer, acceptor));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Listener { addr, stop }
}

struct OpenGuard<'a>(&'a AtomicU64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
) {
    shared
        .metrics
        .connections_open
        .fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(&shared.metrics.connections_open);
    let io = Linger::new(stream);
    let Some(acceptor) = tls else {
        serve_http(&shared, io, peer, false, false).await;
        return;
    };
    let header_timeout = shared.config.load().header_timeout;
    let handshake = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout(header_timeout, acceptor.accept(io)) => r,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "TLS handshake timed out");
            return;
        }
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    serve_http(&shared, stream, peer, true, h2).await;
}

/// Drives a hyper connection until it ends, the proxy shuts down (graceful), or the
/// HTTP/2 idle watchdog fires (graceful); the hard stop cuts it.
macro_rules! drive {
    ($conn:expr, $shared:expr, $watch:expr) => {{
        let mut conn = std::pin::pin!($conn);
        let watch: Option<(&ConnCtx, Duration)> = $watch;
        let idle = async {
            match watch {
                Some((ctx, every)) => {
                    let mut last = ctx.requests.load(Ordering::Relaxed);
                    loop {
                        tokio::time::sleep(every).await;
                        let now = ctx.requests.load(Ordering::Relaxed);
                        if now == last {
                            return;
                        }
                        last = now;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        let finished = tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                true
            }
            _ = $shared.shutdown.cancelled() => false,
            _ = idle => false,
        };
        if !finished {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = $shared.hard_stop.cancelled() => {}
            }
        }
    }};
}

/// Serves HTTP/2, or HTTP/1.1 with the inline server first and hyper from the first
/// request that is not for it.
async fn serve_http<I>(shared: &Arc<Shared>, mut io: I, peer: SocketAddr, https: bool, h2: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ConnCtx {
        shared: shared.clone(),
        peer: peer.ip().to_canonical(),
        peer_value: crate::headers::ip_value(peer.ip().to_canonical()),
        https,
        requests: AtomicU64::new(0),
    });
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| forward::handle(service_ctx.clone(), req));
    let (header_timeout, idle_timeout, max_header) = {
        let cfg = shared.config.load();
        (cfg.header_timeout, cfg.idle_timeout, cfg.max_header_size)
    };
    if h2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX));
        let conn = builder.serve_connection(TokioIo::new(io), service);
        drive!(conn, shared, Some((&*ctx, idle_timeout)));
    } else {
        let served = tokio::select! {
            outcome = h1_serve::serve(&ctx, &mut io) => outcome,
            () = shared.hard_stop.cancelled() => return,
        };
        let read_ahead = match served {
            Outcome::Handoff(read_ahead) => read_ahead,
            Outcome::Closed => {
                // As hyper ends a connection: a lingering close.
                tokio::select! {
                    _ = io.shutdown() => {}
                    () = shared.hard_stop.cancelled() => {}
                }
                return;
            }
            Outcome::Dropped => return,
        };
        let io = TokioIo::new(Prefixed::new(read_ahead, io));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout.min(idle_timeout))
            .max_header_size(max_header)
            .max_buf_size(DEFAULT_MAX_BUF.max(max_header.saturating_add(8192)));
        // One flat buffer per write: one TLS record instead of one per slice, and a
        // plain `send` instead of `writev`.
        builder.writev(false);
        let conn = builder.serve_connection(io, service).with_upgrades();
        drive!(conn, shared, None);
    }
}

/// A client socket whose shutdown half-closes, then reads and discards what the client
/// still sends (up to [`LINGER`] / [`LINGER_BYTES`]) before reporting done.
pub(crate) struct Linger {
    inner: TcpStream,
    state: LingerState,
}

enum LingerState {
    Open,
    Draining {
        deadline: Pin<Box<tokio::time::Sleep>>,
        read: u64,
    },
    Done,
}

impl Linger {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            state: LingerState::Open,
        }
    }
}

impl AsyncRead for Linger {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Linger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                LingerState::Open => {
                    let _ = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
                    this.state = LingerState::Draining {
                        deadline: Box::pin(tokio::time::sleep(LINGER)),
                        read: 0,
                    };
                }
                LingerState::Draining { deadline, read } => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.state = LingerState::Done;
                        continue;
                    }
                    let mut scratch = [0u8; 8192];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            *read += buf.filled().len() as u64;
                            if *read > LINGER_BYTES {
                                this.state = LingerState::Done;
                            }
                        }
                        Poll::Ready(_) => this.state = LingerState::Done,
                    }
                }
                LingerState::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}
