//! A minimal HTTP/1.1 client for the common case of forwarding: a request without a
//! body and without an upgrade, sent on a pooled keep-alive connection, with the
//! response read and streamed back **inside the request's own task**.
//!
//! hyper's client runs every upstream connection as a task of its own; each exchange
//! then crosses tasks several times (request in, response head out, body readiness and
//! chunks out) through channels allocated per request. Here the request head is written
//! and the response head parsed by the task that serves the client, and the
//! response body is read from the socket as the client side polls it. Requests with a
//! body or an `Upgrade` still go through hyper's client (`upstream::connect`).
//!
//! Framing follows RFC 9112: no body for HEAD, 1xx, 204 and 304; chunked when the last
//! transfer coding is chunked; else `Content-Length`; else until the connection closes
//! (then it is not reused). A connection goes back to the pool only when the response
//! was read to its end and neither side asked to close.
//!
//! Must not: buffer a body, or put a connection back whose response was not fully read.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, request};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::headers::Forwarded;
use crate::upstream::ConnectError;

/// Largest response head accepted from an instance.
const MAX_HEAD: usize = 64 * 1024;
/// Most response header fields accepted.
const MAX_HEADERS: usize = 128;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

/// One keep-alive connection to an instance, idle or in use by exactly one request.
pub(crate) struct Conn {
    io: TcpStream,
    /// Bytes read but not consumed yet.
    buf: BytesMut,
    /// The request head being written; kept to reuse its allocation.
    wbuf: Vec<u8>,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Writing the request failed: the instance cannot have acted on it.
    Unsent(io::Error),
    /// The connection closed (or was reset) before any byte of a response.
    NoResponse(io::Error),
    /// A broken or unacceptable response head, or an error in the middle of it.
    Bad(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unsent(e) => write!(f, "cannot send the request: {e}"),
            SendError::NoResponse(e) => write!(f, "connection closed before a response: {e}"),
            SendError::Bad(why) => write!(f, "bad response: {why}"),
        }
    }
}

/// A response head as read from the instance.
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
}

impl Conn {
    /// Opens a connection to `addr` (TCP_NODELAY on).
    pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ConnectError> {
        let io = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(ConnectError::Refused);
            }
            Ok(Err(e)) => return Err(ConnectError::Other(e)),
            Ok(Ok(s)) => s,
        };
        let _ = io.set_nodelay(true);
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
        })
    }

    /// Whether an idle connection still looks usable: the instance has neither closed
    /// it nor sent anything unasked. Costs no system call unless the socket was
    /// reported readable.
    pub(crate) fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.io.try_read(&mut probe) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }

    /// Writes the request head (the request has no body) and reads the response head.
    /// On success the connection moves into the returned body.
    pub(crate) async fn send(
        mut self,
        req: &request::Parts,
        forwarded: &Forwarded<'_>,
    ) -> Result<(Head, Body), SendError> {
        encode_head(req, forwarded, &mut self.wbuf);
        if let Err(e) = self.io.write_all(&self.wbuf).await {
            return Err(SendError::Unsent(e));
        }
        let head_request = req.method == Method::HEAD;
        let mut got_bytes = false;
        loop {
            if !self.buf.is_empty() {
                got_bytes = true;
                if let Some((head, framing, reusable)) = parse_head(&mut self.buf, head_request)? {
                    let body = Body {
                        conn: Some(self),
                        framing,
                        reusable,
                    };
                    return Ok((head, body));
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(SendError::Bad("response head too large".into()));
                }
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(READ_CHUNK);
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) if got_bytes => {
                    return Err(SendError::Bad(
                        "connection closed in the response head".into(),
                    ));
                }
                Ok(0) => {
                    return Err(SendError::NoResponse(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(e) if got_bytes => return Err(SendError::Bad(e.to_string())),
                Err(e) => return Err(SendError::NoResponse(e)),
            }
        }
    }
}

/// Parses a complete response head at the front of the buffer, skipping 1xx heads.
/// `None`: more bytes are needed.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<(Head, Framing, bool)>, SendError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        let Some(len) = head_len(buf) else {
            return Ok(None);
        };
        let head = buf.split_to(len).freeze();
        let (code, http10, mut headers, hop) = parse_fields(&head)?;
        for name in hop.named {
            headers.remove(name);
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| SendError::Bad(format!("status {code}")))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(SendError::Bad("unexpected 101".into()));
            }
            continue;
        }
        let framing = if head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else if let Some(chunked) = hop.transfer_encoding {
            // Chunked as the final coding, else (or with a Content-Length as well)
            // read to the end of the connection.
            if chunked && !headers.contains_key(header::CONTENT_LENGTH) {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::Eof
            }
        } else if headers.contains_key(header::CONTENT_LENGTH) {
            Framing::Length(content_length(&headers)?)
        } else {
            Framing::Eof
        };
        let keep_alive = if http10 { hop.keep_alive } else { !hop.close };
        let reusable = keep_alive && !matches!(framing, Framing::Eof);
        return Ok(Some((Head { status, headers }, framing, reusable)));
    }
}

/// The length of the complete response head at the front of `buf` (through the empty
/// line; CRLF or bare LF line ends), or `None` while it is incomplete.
fn head_len(buf: &[u8]) -> Option<usize> {
    let mut start = buf.iter().position(|&b| b == b'\n')? + 1;
    loop {
        let nl = start + buf[start..].iter().position(|&b| b == b'\n')?;
        if nl == start || (nl == start + 1 && buf[start] == b'\r') {
            return Some(nl + 1);
        }
        start = nl + 1;
    }
}

/// What the hop-by-hop fields of a response said; they are not kept in the map.
#[derive(Default)]
struct Hop {
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
    /// Other fields `Connection` names, to drop too.
    named: Vec<HeaderName>,
    /// `Transfer-Encoding` present: whether its last coding is chunked.
    transfer_encoding: Option<bool>,
}

/// Parses `HTTP/1.x NNN reason` and the header lines of a complete head. Returns the
/// status code, whether the version is 1.0, the end-to-end fields (values share `head`)
/// and what the hop-by-hop ones said. Names and values are validated by `HeaderName` /
/// `HeaderValue`; obsolete line folding is refused.
fn parse_fields(head: &Bytes) -> Result<(u16, bool, HeaderMap, Hop), SendError> {
    let bad = |why: &str| SendError::Bad(why.to_owned());
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status = lines.next().unwrap_or_default();
    let http10 = match status.get(..9) {
        Some(b"HTTP/1.1 ") => false,
        Some(b"HTTP/1.0 ") => true,
        _ => return Err(bad("not an HTTP/1.x status line")),
    };
    let code = match status.get(9..12) {
        Some(d)
            if d.iter().all(u8::is_ascii_digit) && status.get(12).is_none_or(|&b| b == b' ') =>
        {
            d.iter().fold(0u16, |n, &b| n * 10 + u16::from(b - b'0'))
        }
        _ => return Err(bad("bad status code")),
    };
    let mut headers = HeaderMap::with_capacity(12);
    let mut hop = Hop::default();
    let mut fields = 0;
    for line in lines {
        if line.is_empty() {
            break;
        }
        fields += 1;
        if fields > MAX_HEADERS {
            return Err(bad("too many header fields"));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(bad("obsolete line folding"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("header line without a colon"))?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| bad("bad header name"))?;
        let value = line[colon + 1..].trim_ascii();
        if name == header::CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    hop.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    hop.keep_alive = true;
                } else if let Ok(named) = HeaderName::from_bytes(token) {
                    hop.named.push(named);
                }
            }
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            hop.transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        }
        if crate::headers::is_fixed_hop(&name) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice_ref(value))
            .map_err(|_| bad("bad header value"))?;
        headers.append(name, value);
    }
    Ok((code, http10, headers, hop))
}

/// `METHOD target HTTP/1.1`, then the fields as [`Forwarded::encode`] writes them.
fn encode_head(req: &request::Parts, forwarded: &Forwarded<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    forwarded.encode(&req.headers, out);
    out.extend_from_slice(b"\r\n");
}

/// The one `Content-Length` (repeated identical values are accepted).
fn content_length(headers: &HeaderMap) -> Result<u64, SendError> {
    let mut found: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| SendError::Bad("bad content-length".into()))?;
            if found.is_some_and(|f| f != n) {
                return Err(SendError::Bad("conflicting content-length".into()));
            }
            found = Some(n);
        }
    }
    found.ok_or_else(|| SendError::Bad("bad content-length".into()))
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Bytes still to read.
    Length(u64),
    Chunked(Chunk),
    /// Until the instance closes the connection.
    Eof,
    /// Read to its end.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes of chunk data still to read.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
}

/// A response body read straight from the instance's connection.
pub(crate) struct Body {
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
}

fn bad_data(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

impl Body {
    /// The connection, when the body was read to its end and it may be reused.
    pub(crate) fn into_reusable(mut self) -> Option<Conn> {
        if self.is_end_stream() && self.reusable {
            self.conn.take()
        } else {
            None
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// Reads more from the socket into the buffer; `Ok(false)` at the end of the stream.
    fn fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(READ_CHUNK);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut conn.io),
            cx,
            &mut conn.buf
        ))?;
        Poll::Ready(Ok(n > 0))
    }

    /// The next data frame; after an error the connection is closed and the body ends.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let polled = ready!(self.poll_data(cx));
        if let Some(Err(_)) = &polled {
            self.conn = None;
        }
        Poll::Ready(polled)
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match decode(&mut self.framing, &mut conn.buf)? {
                Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Step::End => return Poll::Ready(None),
                Step::More => {
                    if !ready!(Self::fill(conn, cx))? {
                        return Poll::Ready(end_of_stream(&mut self.framing).err().map(Err));
                    }
                }
            }
        }
    }
}

/// What [`decode`] made of the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The next piece of the body.
    Data(Bytes),
    /// More bytes are needed from the connection.
    More,
    /// The body is complete.
    End,
}

/// Takes the next piece of a body delimited by `framing` off the front of `buf`. Pure:
/// the caller reads the connection when it answers [`Step::More`], and calls
/// [`end_of_stream`] when the connection has nothing more.
fn decode(framing: &mut Framing, buf: &mut BytesMut) -> io::Result<Step> {
    loop {
        match *framing {
            Framing::Done | Framing::Length(0) => {
                *framing = Framing::Done;
                return Ok(Step::End);
            }
            Framing::Length(_) | Framing::Eof | Framing::Chunked(Chunk::Data(_))
                if buf.is_empty() =>
            {
                return Ok(Step::More);
            }
            Framing::Length(left) => {
                let take = (buf.len() as u64).min(left) as usize;
                *framing = match left - take as u64 {
                    0 => Framing::Done,
                    left => Framing::Length(left),
                };
                return Ok(Step::Data(buf.split_to(take).freeze()));
            }
            Framing::Eof => return Ok(Step::Data(buf.split().freeze())),
            Framing::Chunked(Chunk::Data(left)) => {
                let take = (buf.len() as u64).min(left) as usize;
                *framing = Framing::Chunked(match left - take as u64 {
                    0 => Chunk::DataEnd,
                    left => Chunk::Data(left),
                });
                return Ok(Step::Data(buf.split_to(take).freeze()));
            }
            Framing::Chunked(state) => {
                let Some(line) = take_line(buf)? else {
                    return Ok(Step::More);
                };
                *framing = match state {
                    Chunk::Size => {
                        let digits = line
                            .split(|&b| b == b';')
                            .next()
                            .unwrap_or_default()
                            .trim_ascii();
                        let size = std::str::from_utf8(digits)
                            .ok()
                            .filter(|s| !s.is_empty() && s.len() <= 16)
                            .and_then(|s| u64::from_str_radix(s, 16).ok())
                            .ok_or_else(|| bad_data("bad chunk size"))?;
                        Framing::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        })
                    }
                    Chunk::DataEnd if line.is_empty() => Framing::Chunked(Chunk::Size),
                    Chunk::DataEnd => return Err(bad_data("bad chunk end")),
                    Chunk::Trailers if line.is_empty() => Framing::Done,
                    Chunk::Trailers | Chunk::Data(_) => Framing::Chunked(Chunk::Trailers),
                };
            }
        }
    }
}

/// The connection ended while [`decode`] wanted more: the end of a body read to the
/// close, else a body cut short.
fn end_of_stream(framing: &mut Framing) -> io::Result<()> {
    if *framing == Framing::Eof {
        *framing = Framing::Done;
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

/// Takes one LF-terminated line off the buffer (without the CRLF or LF).
fn take_line(buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let mut line = buf.split_to(end + 1).freeze();
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(bad_data("chunk line too long")),
        None => Ok(None),
    }
}

/// For the fuzz target: `data[0]` picks the request method (odd: HEAD) and a piece
/// size; the rest is read as an instance's response, once whole and once arriving in
/// pieces. Never panics; both readings agree; a body never exceeds its declared length.
#[doc(hidden)]
pub fn fuzz_response(data: &[u8]) {
    let Some((&control, response)) = data.split_first() else {
        return;
    };
    let head_request = control & 1 == 1;
    let piece = usize::from(control >> 1).max(1);
    let whole = read_response(response, response.len().max(1), head_request);
    let pieces = read_response(response, piece, head_request);
    // Size limits (head, chunk lines) depend on how much is buffered at once.
    if response.len() <= MAX_LINE {
        assert_eq!(whole, pieces);
    }
}

/// Status, body and whether the body ended cleanly, or the error's text; bytes arrive
/// `piece` at a time as [`Conn::send`] and [`Body::poll_frame`] would read them.
fn read_response(
    response: &[u8],
    piece: usize,
    head_request: bool,
) -> Result<(u16, Vec<u8>), String> {
    let mut chunks = response.chunks(piece);
    let mut buf = BytesMut::new();
    let (head, mut framing) = loop {
        if !buf.is_empty()
            && let Some((head, framing, _)) =
                parse_head(&mut buf, head_request).map_err(|e| e.to_string())?
        {
            break (head, framing);
        }
        match chunks.next() {
            Some(c) => buf.extend_from_slice(c),
            None => return Err("closed in the head".into()),
        }
    };
    let declared = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let mut body = Vec::new();
    loop {
        match decode(&mut framing, &mut buf).map_err(|e| e.to_string())? {
            Step::Data(data) => {
                assert!(!data.is_empty(), "empty data frame");
                body.extend_from_slice(&data);
            }
            Step::End => break,
            Step::More => match chunks.next() {
                Some(c) => buf.extend_from_slice(c),
                None => {
                    end_of_stream(&mut framing).map_err(|e| e.to_string())?;
                    break;
                }
            },
        }
        if let Some(n) = declared {
            assert!(
                body.len() as u64 <= n,
                "body longer than its Content-Length"
            );
        }
    }
    if let Some(n) = declared {
        assert_eq!(body.len() as u64, n, "body shorter than its Content-Length");
    }
    Ok((head.status.as_u16(), body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves `responses` in order, one per request head read, on one connection;
    /// returns the address and a handle yielding the request heads it saw.
    async fn canned(
        responses: Vec<&'static [u8]>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = Vec::new();
            for resp in responses {
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.push(String::from_utf8_lossy(&buf[..end + 4]).into_owned());
                        buf.drain(..end + 4);
                        break;
                    }
                    let mut chunk = [0u8; 1024];
                    let n = s.read(&mut chunk).await.expect("read");
                    if n == 0 {
                        return seen;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                s.write_all(resp).await.expect("write");
            }
            seen
        });
        (addr, task)
    }

    fn get(path: &str) -> request::Parts {
        let (mut parts, ()) = http::Request::get(path)
            .header("host", "a.test")
            .body(())
            .expect("request")
            .into_parts();
        parts.version = http::Version::HTTP_11;
        parts
    }

    fn fwd(host: &HeaderValue) -> Forwarded<'_> {
        static PEER: HeaderValue = HeaderValue::from_static("127.0.0.1");
        Forwarded {
            peer: [127, 0, 0, 1].into(),
            peer_value: &PEER,
            peer_trusted: false,
            client: [127, 0, 0, 1].into(),
            https: false,
            host: Some(host),
        }
    }

    async fn collect(mut body: Body) -> (Vec<u8>, Option<Conn>) {
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.poll_frame(cx)).await {
            let frame = frame.expect("frame");
            out.extend_from_slice(frame.data_ref().expect("data"));
        }
        (out, body.into_reusable())
    }

    #[tokio::test]
    async fn length_chunked_and_head_on_one_connection() {
        let host = HeaderValue::from_static("a.test");
        let (addr, seen) = canned(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A:  b \r\n\r\nok\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
            b"HTTP/1.1 204 No Content\n\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        ])
        .await;
        let conn = Conn::connect(addr, Duration::from_secs(1))
            .await
            .expect("connect");
        let (head, body) = conn
            .send(&get("/one?q=1"), &fwd(&host))
            .await
            .expect("send");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["x-a"], "b");
        let (data, conn) = collect(body).await;
        assert_eq!(data, b"ok\n");
        let mut conn = conn.expect("reusable");
        assert!(conn.is_usable());

        let (head, body) = conn.send(&get("/two"), &fwd(&host)).await.expect("send");
        assert_eq!(head.status, StatusCode::CREATED);
        let (data, conn) = collect(body).await;
        assert_eq!(data, b"abcde");

        let (head, body) = conn
            .expect("reusable")
            .send(&get("/three"), &fwd(&host))
            .await
            .expect("send");
        assert_eq!(head.status, StatusCode::NO_CONTENT);
        assert!(body.is_end_stream());
        let (data, conn) = collect(body).await;
        assert!(data.is_empty());

        let (head, body) = conn
            .expect("reusable")
            .send(&get("/four"), &fwd(&host))
            .await
            .expect("send");
        assert_eq!(head.status, StatusCode::OK);
        let (data, conn) = collect(body).await;
        assert_eq!(data, b"hi");
        assert!(conn.is_none(), "HTTP/1.0 without keep-alive is not reused");

        let seen = seen.await.expect("server");
        assert!(
            seen[0].starts_with("GET /one?q=1 HTTP/1.1\r\nhost: a.test\r\n"),
            "{}",
            seen[0]
        );
    }

    #[tokio::test]
    async fn read_to_close_and_connection_close_are_not_reused() {
        let host = HeaderValue::from_static("a.test");
        let (addr, _seen) = canned(vec![
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
        ])
        .await;
        let conn = Conn::connect(addr, Duration::from_secs(1))
            .await
            .expect("connect");
        let (_, body) = conn.send(&get("/"), &fwd(&host)).await.expect("send");
        let (data, conn) = collect(body).await;
        assert_eq!(data, b"until the end");
        assert!(conn.is_none());
    }

    #[tokio::test]
    async fn errors_are_classified() {
        let host = HeaderValue::from_static("a.test");
        let (addr, _seen) = canned(vec![]).await;
        let conn = Conn::connect(addr, Duration::from_secs(1))
            .await
            .expect("connect");
        assert!(matches!(
            conn.send(&get("/"), &fwd(&host)).await,
            Err(SendError::NoResponse(_))
        ));

        for bad in [
            &b"HTTP/2 200\r\n\r\n"[..],
            b"HTTP/1.1 20x OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            b"HTTP/1.1 101 Switching\r\n\r\n",
        ] {
            let (addr, _seen) = canned(vec![bad]).await;
            let conn = Conn::connect(addr, Duration::from_secs(1))
                .await
                .expect("connect");
            assert!(
                matches!(
                    conn.send(&get("/"), &fwd(&host)).await,
                    Err(SendError::Bad(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }

        let (addr, _seen) =
            canned(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]).await;
        let conn = Conn::connect(addr, Duration::from_secs(1))
            .await
            .expect("connect");
        let (_, mut body) = conn.send(&get("/"), &fwd(&host)).await.expect("send");
        let mut failed = false;
        while let Some(frame) = std::future::poll_fn(|cx| body.poll_frame(cx)).await {
            failed |= frame.is_err();
        }
        assert!(failed, "a body cut short is an error");
        assert!(body.into_reusable().is_none());
    }

    #[test]
    fn hop_by_hop_fields_are_left_out_and_read() {
        let head = Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n",
        );
        let (code, http10, headers, hop) = parse_fields(&head).expect("parse");
        assert_eq!((code, http10), (200, false));
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-secret", "x-kept"]);
        assert_eq!(hop.named, [HeaderName::from_static("x-secret")]);
        assert!(hop.keep_alive && !hop.close);
        assert_eq!(hop.transfer_encoding, Some(true));
    }

    #[test]
    fn responses_read_the_same_in_any_pieces() {
        // (response, to a HEAD request, status and body or an error)
        type Case = (&'static [u8], bool, Result<(u16, &'static [u8]), ()>);
        let cases: [Case; 7] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false, Ok((200, b"hello"))),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1;x=y\r\nd\r\n0\r\nT: 1\r\n\r\n",
                false,
                Ok((200, b"abcd")),
            ),
            (b"HTTP/1.1 200 OK\r\n\r\nto the close", false, Ok((200, b"to the close"))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, Ok((200, b""))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", false, Err(())),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false, Err(())),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX", false, Err(())),
        ];
        for (response, head_request, want) in cases {
            for piece in 1..=response.len() {
                let got = read_response(response, piece, head_request);
                let shown = String::from_utf8_lossy(response);
                match want {
                    Ok((status, body)) => {
                        assert_eq!(
                            got,
                            Ok((status, body.to_vec())),
                            "{shown} in pieces of {piece}"
                        );
                    }
                    Err(()) => assert!(got.is_err(), "{shown} in pieces of {piece}: {got:?}"),
                }
            }
            fuzz_response(&[&[u8::from(head_request) | 6][..], response].concat());
        }
    }

    #[test]
    fn head_boundaries() {
        assert_eq!(head_len(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
        assert_eq!(head_len(b"HTTP/1.1 200 OK\n\nbody"), Some(17));
        assert_eq!(head_len(b"HTTP/1.1 200 OK\r\nA: b\r\n"), None);
        assert_eq!(head_len(b"HTTP/1.1 200 OK"), None);
    }
}
