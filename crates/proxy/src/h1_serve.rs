//! The inline HTTP/1.1 server: a client connection starts here, and requests without a
//! body are served by the connection's own task; at the first request this server does
//! not take, the connection goes to hyper with the bytes read so far, and hyper serves
//! it to its end.
//!
//! hyper's server runs a dispatcher per connection that turns each request head into a
//! `Request`, reads the wall clock on every poll and frames the response through its
//! generic encoder. For the commonest request of all, a GET on a keep-alive
//! connection, that was about a sixth of berth's user-space CPU time
//! (`bench/proxy/README.md`). Here such a request is parsed with httparse (as hyper
//! does), goes through the same rules (`forward::handle_bodiless`), and its response is
//! written with one `send`.
//!
//! Taken here: HTTP/1.1, an origin-form target, any method but CONNECT, no
//! `Content-Length`, `Transfer-Encoding`, `Upgrade` or `Expect`, a complete head within
//! `max_header_size` and [`MAX_HEADERS`] fields. Everything else (bodies, upgrades,
//! HTTP/1.0, and every head hyper answers with 400 or 431) goes to hyper, so error
//! answers and every other feature stay hyper's.
//!
//! As hyper's: a request head must be complete within `min(header_timeout,
//! idle_timeout)` of the previous response (then the connection closes without an
//! answer), and is parsed again only when new bytes may end it; a client that closes
//! its connection while its request is forwarded ends the exchange with the instance;
//! on graceful shutdown a connection waiting for a request head closes, and a busy one
//! closes after its response, which says `Connection: close`.
//!
//! Must not: take a request hyper would refuse, or write a response whose framing
//! differs from what its body yields.

use std::future::poll_fn;
use std::io;
use std::ops::Range;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::body::{BoxError, RespBody};
use crate::forward::{self, ConnCtx};

/// Most request header fields taken here (hyper's default limit too).
const MAX_HEADERS: usize = 100;
/// Read buffer growth step.
const READ_CHUNK: usize = 8 * 1024;
/// Response bytes gathered before a write; larger body pieces are written on their own.
const COALESCE: usize = 32 * 1024;

/// How [`serve`] left the connection.
pub(crate) enum Outcome {
    /// Done, to be closed gracefully (a lingering close): the client closed its side,
    /// a response said `Connection: close`, or the proxy shuts down.
    Closed,
    /// Given up, to be dropped at once: a head timed out, the client went away in the
    /// middle of an exchange, or its socket failed.
    Dropped,
    /// hyper serves the rest; these bytes were read and not consumed.
    Handoff(BytesMut),
}

/// Serves requests on `io` until the connection ends or a request is for hyper.
pub(crate) async fn serve<I>(ctx: &ConnCtx, io: &mut I) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let shared = &ctx.shared;
    let (head_timeout, max_head) = {
        let cfg = shared.config.load();
        (
            cfg.header_timeout.min(cfg.idle_timeout),
            cfg.max_header_size,
        )
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(READ_CHUNK);
    let mut fields = Vec::new();
    let mut shutdown = pin!(shared.shutdown.cancelled());
    loop {
        let mut deadline = None;
        // How much of `buf` is known to hold no end of the head; 0: not parsed yet.
        let mut scanned = 0;
        let (parts, asked_close) = loop {
            // A head that arrives in many pieces is parsed again only when the new bytes
            // may end it (as hyper does), not once per piece.
            if scanned == 0 || buf.len() >= max_head || may_end_head(&buf, scanned) {
                match parse(&mut buf, max_head, &mut fields) {
                    Next::Request { parts, close } => break (parts, close),
                    Next::Hyper => return Outcome::Handoff(buf),
                    Next::More => {}
                }
            }
            scanned = buf.len();
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_CHUNK);
            }
            // The clock is read only when the head is not there yet.
            let deadline =
                *deadline.get_or_insert_with(|| tokio::time::Instant::now() + head_timeout);
            let read = tokio::select! {
                biased;
                read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)) => read,
                () = &mut shutdown => return Outcome::Closed,
            };
            match read {
                Ok(Ok(0)) => return Outcome::Closed,
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => return Outcome::Dropped,
            }
        };
        let head_request = parts.method == Method::HEAD;
        // A client that goes away while the instance thinks ends the exchange (hyper
        // drops its request then too).
        let resp = tokio::select! {
            biased;
            resp = forward::handle_bodiless(ctx, &parts) => resp,
            () = poll_fn(|cx| client_gone(io, &mut buf, cx)) => return Outcome::Dropped,
        };
        drop(parts);
        let close = asked_close
            || shared.shutdown.is_cancelled()
            || resp
                .headers()
                .get_all(header::CONNECTION)
                .iter()
                .any(|v| has_close(v.as_bytes()));
        match write_response(io, &mut buf, &mut out, resp, head_request, close).await {
            Err(_) => return Outcome::Dropped,
            Ok(()) if close => return Outcome::Closed,
            Ok(()) => {}
        }
    }
}

/// Whether `buf` may hold the empty line that ends a head, looking only at what came
/// after its first `scanned` bytes (and the 3 before, where a line end may have begun).
fn may_end_head(buf: &[u8], scanned: usize) -> bool {
    let new = &buf[scanned.saturating_sub(3)..];
    new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n")
}

/// Ready when the client has closed its connection (or it failed) while nothing of a
/// next request has arrived. Bytes of one are kept in `buf`, and from then on the
/// connection is not watched (as hyper does).
fn client_gone<I>(io: &mut I, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<()>
where
    I: AsyncRead + Unpin,
{
    if !buf.is_empty() {
        return Poll::Pending;
    }
    if buf.capacity() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    match tokio_util::io::poll_read_buf(Pin::new(io), cx, buf) {
        Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(()),
        Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
    }
}

/// What the bytes at the front of the read buffer hold.
#[allow(clippy::large_enum_variant)] // short-lived, on the stack
enum Next {
    /// An incomplete head: read more.
    More,
    /// A request for hyper (or bytes it will refuse); the buffer is as it was.
    Hyper,
    /// A request taken here, removed from the buffer; `close`: it said
    /// `Connection: close`.
    Request {
        parts: http::request::Parts,
        close: bool,
    },
}

/// Parses the request head at the front of `buf`. `fields` is scratch space, kept by
/// the caller to reuse its allocation.
fn parse(
    buf: &mut BytesMut,
    max_head: usize,
    fields: &mut Vec<(HeaderName, Range<usize>)>,
) -> Next {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Next::More,
        _ => return Next::Hyper,
    };
    if req.version != Some(1) {
        return Next::Hyper;
    }
    let method = match req.method.map(|m| Method::from_bytes(m.as_bytes())) {
        Some(Ok(method)) if method != Method::CONNECT => method,
        _ => return Next::Hyper,
    };
    let Some(path) = req.path.filter(|p| p.starts_with('/')) else {
        return Next::Hyper;
    };
    // httparse hands out slices of `buf`; their offsets survive `split_to` below.
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let target = range(path.as_bytes());
    fields.clear();
    let mut close = false;
    for field in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Next::Hyper;
        };
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
        {
            return Next::Hyper;
        }
        if name == header::CONNECTION && has_close(field.value) {
            close = true;
        }
        fields.push((name, range(field.value)));
    }
    let head = buf.split_to(len).freeze();
    let Ok(target) = PathAndQuery::from_maybe_shared(head.slice(target)) else {
        put_back(head, buf);
        return Next::Hyper;
    };
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields.drain(..) {
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(value)) else {
            put_back(head, buf);
            return Next::Hyper;
        };
        headers.append(name, value);
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = Uri::from(target);
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Next::Request { parts, close }
}

/// Puts a head taken off the buffer back in front of what follows it.
fn put_back(head: Bytes, buf: &mut BytesMut) {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
}

/// Whether a `Connection` value has the `close` token.
fn has_close(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// What the body of a response being written has for us.
enum Step {
    Frame(Option<Result<Frame<Bytes>, BoxError>>),
    /// Nothing ready yet: write what is gathered first.
    Flush,
    /// Nothing ready, and the client has gone.
    Gone,
}

/// Writes `resp` as HTTP/1.1 with the framing hyper's server would give it: no body
/// for HEAD, 1xx, 204 and 304; no length for 1xx, 204 and 304; a HEAD response keeps
/// the length its instance gave, else has the length of its body when it has one;
/// other responses get `Content-Length` when their body's size is known (0 for an
/// empty one), else are chunked. `Date` is added when missing, `Connection: close` with
/// `close`.
///
/// The head and the first body pieces go out together, and every write is flushed (a
/// TLS stream may hold records back otherwise). An error in the body fails the write,
/// and so does a client that goes away while the body waits on the instance (its
/// connection is then dropped, so a client still there sees a cut response); bytes of
/// a next request that arrive meanwhile are kept in `buf`.
async fn write_response<I>(
    io: &mut I,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    resp: Response<RespBody>,
    head_request: bool,
    close: bool,
) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_length = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let bodiless = head_request || no_length;
    let length = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_length = false;
    let mut has_date = false;
    let mut has_connection = false;
    for (name, value) in &parts.headers {
        if *name == header::CONTENT_LENGTH {
            if head_request {
                has_length = true;
                field(out, name.as_str().as_bytes(), value.as_bytes());
            }
            continue;
        }
        if *name == header::TRANSFER_ENCODING {
            continue;
        }
        has_date |= *name == header::DATE;
        has_connection |= *name == header::CONNECTION;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let chunked = !bodiless && length.is_none();
    if !no_length && !has_length {
        match length {
            // A HEAD response without a length of its own says nothing (hyper's rule).
            Some(0) if head_request => {}
            Some(n) => field(out, b"content-length", itoa(n, &mut [0; 20])),
            None if chunked => field(out, b"transfer-encoding", b"chunked"),
            None => {}
        }
    }
    if !has_date {
        date(out);
    }
    if close && !has_connection {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        drop(body);
        io.write_all(out).await?;
        return io.flush().await;
    }
    loop {
        let step = poll_fn(
            |cx: &mut Context<'_>| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(frame) => Poll::Ready(Step::Frame(frame)),
                Poll::Pending if !out.is_empty() => Poll::Ready(Step::Flush),
                Poll::Pending => client_gone(io, buf, cx).map(|()| Step::Gone),
            },
        )
        .await;
        let data = match step {
            Step::Flush => {
                io.write_all(out).await?;
                io.flush().await?;
                out.clear();
                continue;
            }
            Step::Gone => return Err(io::ErrorKind::ConnectionAborted.into()),
            Step::Frame(None) => break,
            Step::Frame(Some(Err(e))) => return Err(io::Error::other(e)),
            Step::Frame(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        if chunked {
            out.extend_from_slice(hex(data.len(), &mut [0; 16]));
            out.extend_from_slice(b"\r\n");
        }
        if out.len() + data.len() > COALESCE {
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    // The upstream connection goes back to its pool before the client hears back.
    drop(body);
    io.write_all(out).await?;
    io.flush().await
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Writes a `Date` field; the text is made once a second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = CACHE.with(|cache| {
        let (at, text) = cache.get();
        if at == secs {
            return text;
        }
        let mut text = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        if formatted.len() == text.len() {
            text.copy_from_slice(formatted.as_bytes());
        }
        cache.set((secs, text));
        text
    });
    field(out, b"date", &text);
}

/// A connection handed to hyper: the bytes already read come first.
pub(crate) struct Prefixed<I> {
    prefix: BytesMut,
    inner: I,
}

impl<I> Prefixed<I> {
    pub(crate) fn new(prefix: BytesMut, inner: I) -> Self {
        Self { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            // Not kept for the connection's life (a WebSocket's, say).
            self.prefix = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
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

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// For the fuzz target: `data` as bytes read from a client. Never panics; a request
/// left to hyper (or not complete yet) leaves the buffer as it was; a request taken
/// here is removed from it, and its head is one httparse reads the same way.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut fields = Vec::new();
    match parse(&mut buf, 4096, &mut fields) {
        Next::More | Next::Hyper => assert_eq!(&buf[..], data),
        Next::Request { parts, .. } => {
            let taken = data.len() - buf.len();
            assert!(taken > 0 && taken <= 4096);
            assert_eq!(&buf[..], &data[taken..]);
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut again = httparse::Request::new(&mut slots);
            assert_eq!(
                again.parse(&data[..taken]).ok(),
                Some(httparse::Status::Complete(taken))
            );
            // A fragment, if any, is dropped from the target.
            let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
            let sent = again.path.unwrap_or_default();
            assert_eq!(sent.split_once('#').map_or(sent, |(t, _)| t), target);
            assert_eq!(parts.headers.len(), again.headers.len());
            assert!(!parts.headers.contains_key(header::CONTENT_LENGTH));
            assert!(!parts.headers.contains_key(header::TRANSFER_ENCODING));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`parse`] makes of `input`: "more", "hyper" (buffer untouched), or the
    /// request as `METHOD target close? +rest`.
    fn parsed(input: &[u8], max_head: usize) -> String {
        let mut buf = BytesMut::from(input);
        match parse(&mut buf, max_head, &mut Vec::new()) {
            Next::More => {
                assert_eq!(&buf[..], input);
                "more".to_owned()
            }
            Next::Hyper => {
                assert_eq!(&buf[..], input);
                "hyper".to_owned()
            }
            Next::Request { parts, close } => format!(
                "{} {} {} {}{}+{}",
                parts.method,
                parts.uri,
                parts.headers.len(),
                if close { "close " } else { "" },
                parts
                    .headers
                    .get(header::HOST)
                    .map_or("-", |h| h.to_str().unwrap_or("?")),
                String::from_utf8_lossy(&buf),
            ),
        }
    }

    #[test]
    fn takes_bodiless_http11_requests_and_leaves_the_rest_to_hyper() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET / 1 a+"),
            (
                b"GET /p?q=1 HTTP/1.1\r\nhost: a\r\nx: 1\r\n\r\nGET /n",
                "GET /p?q=1 2 a+GET /n",
            ),
            (
                b"DELETE /d HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n",
                "DELETE /d 2 close a+",
            ),
            (b"GET / HTTP/1.1\nHost: a\n\n", "GET / 1 a+"),
            // Decided later by the same rules as for hyper's requests (400).
            (b"GET / HTTP/1.1\r\n\r\n", "GET / 0 -+"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", "more"),
            (b"GET / HT", "more"),
            (b"", "more"),
            // hyper's: bodies, upgrades, 1.0, other targets, CONNECT, errors.
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                "hyper",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "hyper",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                "hyper",
            ),
            (
                b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
                "hyper",
            ),
            (b"GET / HTTP/1.0\r\n\r\n", "hyper"),
            (b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", "hyper"),
            (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "hyper"),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "hyper"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "hyper"),
            (b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", "hyper"),
            (b"GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", "hyper"),
            (b"\x16\x03\x01\x02\x00\x01", "hyper"),
        ];
        for (input, want) in cases {
            assert_eq!(
                parsed(input, 4096),
                *want,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn heads_over_the_limit_go_to_hyper_for_its_431() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nx: 0123456789\r\n\r\n";
        assert_eq!(parsed(head, head.len()), "GET / 2 a+");
        assert_eq!(parsed(head, head.len() - 1), "hyper");
        assert_eq!(parsed(&head[..head.len() - 2], head.len() - 2), "hyper");
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x{i}: 1\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(parsed(head.as_bytes(), 1 << 20), "hyper");
    }

    #[test]
    fn every_byte_in_a_target_is_taken_whole_or_left_whole() {
        // Where httparse takes a byte that `http` refuses, the head must go back in
        // front of what follows it.
        let mut taken = 0;
        for byte in 0..=u8::MAX {
            let mut head = b"GET /x".to_vec();
            head.push(byte);
            head.extend_from_slice(b"y HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n");
            let got = parsed(&head, 4096);
            if got != "hyper" {
                assert!(got.ends_with(" 1 a+GET / HTTP/1.1\r\n"), "{byte}: {got}");
                taken += 1;
            }
        }
        // Visible ASCII but for `<`, `>` and `` ` ``, which httparse takes and `http`
        // refuses (so the head went back); '#' starts a fragment ("/x").
        assert_eq!(taken, 91);
        assert_eq!(
            parsed(b"GET /a<b HTTP/1.1\r\nHost: a\r\n\r\nnext", 4096),
            "hyper"
        );
    }

    #[test]
    fn a_head_is_parsed_again_only_when_its_end_may_have_come() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
        ] {
            // Whatever was scanned before, new bytes that end the head are seen...
            for scanned in 0..head.len() {
                assert!(may_end_head(head, scanned), "{scanned}");
            }
            // ...and bytes that do not end it are not.
            let open = &head[..head.len() - 1];
            for scanned in 0..open.len() {
                let seen = may_end_head(open, scanned);
                // Only the empty line at the very end ends a head; none before it.
                assert!(!seen, "{scanned}: {:?}", String::from_utf8_lossy(open));
            }
        }
    }

    #[test]
    fn every_response_is_flushed() {
        // A transport that holds writes back until flushed, as a TLS stream does when
        // its socket is full.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut io = tokio::io::BufWriter::new(server);
            let (mut buf, mut out) = (BytesMut::new(), Vec::new());
            for (body, head_request) in [("hello", false), ("", false), ("hello", true)] {
                let resp = Response::new(RespBody::full(body));
                write_response(&mut io, &mut buf, &mut out, resp, head_request, false)
                    .await
                    .expect("written");
                let mut got = vec![0u8; 1024];
                let n =
                    tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut got))
                        .await
                        .expect("the response is not held back")
                        .expect("read");
                let got = String::from_utf8_lossy(&got[..n]);
                assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
                let shown = if head_request { "" } else { body };
                assert!(got.ends_with(&format!("\r\n\r\n{shown}")), "{got}");
            }
        });
    }

    #[test]
    fn prefixed_reads_the_read_ahead_first() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut near, far) = tokio::io::duplex(64);
            let mut io = Prefixed::new(BytesMut::from(&b"read ahead, "[..]), far);
            near.write_all(b"then the socket").await.expect("write");
            drop(near);
            let mut all = String::new();
            io.read_to_string(&mut all).await.expect("read");
            assert_eq!(all, "read ahead, then the socket");
        });
    }

    #[test]
    fn numbers_for_framing() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        assert_eq!(hex(0, &mut [0; 16]), b"0");
        assert_eq!(hex(0x1f2e, &mut [0; 16]), b"1f2e");
    }
}
