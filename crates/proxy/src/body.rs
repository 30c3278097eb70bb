//! Body wrappers. Bodies are streamed frame by frame, never collected.
//!
//! - [`ReqBody`]: what goes upstream; counts bytes of bodies without a
//!   `Content-Length` and fails with [`BodyTooLarge`] past the service's `max_body`
//!   (a declared length is checked up front, and hyper enforces it).
//! - [`RespBody`]: what goes to the client; for forwarded responses it counts bytes and,
//!   when dropped, runs the request's [`Completion`]: the pooled connection goes back
//!   to the pool only if the upstream body was read to its end, the in-flight count
//!   drops, metrics and the access log are written.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::access_log::{AccessLog, Record};
use crate::h1;
use crate::metrics::ServiceMetrics;
use crate::upstream::{InFlight, Sender};

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// A streamed request body grew past the service's `max_body`.
#[derive(Debug)]
pub(crate) struct BodyTooLarge;

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body larger than max_body")
    }
}

impl StdError for BodyTooLarge {}

/// Whether `err` (or one of its sources) is [`BodyTooLarge`].
pub(crate) fn is_body_too_large(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<BodyTooLarge>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The body of a request sent upstream.
pub(crate) enum ReqBody {
    Empty,
    /// Length declared and already checked.
    Stream(Incoming),
    /// No declared length: counted against the limit.
    Limited {
        inner: Incoming,
        remaining: u64,
    },
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Stream(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            ReqBody::Limited { inner, remaining } => {
                match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let len = data.len() as u64;
                            if len > *remaining {
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                            }
                            *remaining -= len;
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream(inner) | ReqBody::Limited { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream(inner) | ReqBody::Limited { inner, .. } => inner.size_hint(),
        }
    }
}

/// What happens when a forwarded response is done (or abandoned).
pub(crate) struct Completion {
    pub(crate) in_flight: InFlight,
    pub(crate) conn: Option<Sender>,
    pub(crate) metrics: Arc<ServiceMetrics>,
    pub(crate) status: u16,
    pub(crate) start: Instant,
    pub(crate) log: Option<(Arc<AccessLog>, Record)>,
}

impl Completion {
    /// `raw`: the connection of a response read by [`h1`], when it may be reused.
    fn finish(self, bytes: u64, clean_end: bool, raw: Option<h1::Conn>) {
        let Completion {
            in_flight,
            conn,
            metrics,
            status,
            start,
            log,
        } = self;
        if clean_end && let Some(conn) = conn {
            in_flight.0.checkin(conn);
        }
        if let Some(raw) = raw {
            in_flight.0.checkin_raw(raw);
        }
        drop(in_flight);
        let elapsed = start.elapsed();
        metrics.observe(status, elapsed);
        if let Some((log, mut record)) = log {
            record.bytes = bytes;
            record.duration = elapsed;
            log.send(record);
        }
    }
}

/// A response body streamed from a backend.
pub(crate) struct UpstreamBody {
    inner: Incoming,
    bytes: u64,
    ended: bool,
    done: Option<Completion>,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let clean = self.ended || self.inner.is_end_stream();
            done.finish(self.bytes, clean, None);
        }
    }
}

/// A response body read from an instance by [`h1`].
pub(crate) struct RawBody {
    inner: Option<h1::Body>,
    bytes: u64,
    done: Option<Completion>,
}

impl Drop for RawBody {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let inner = self.inner.take();
            let clean = inner.as_ref().is_some_and(h1::Body::is_end_stream);
            done.finish(self.bytes, clean, inner.and_then(h1::Body::into_reusable));
        }
    }
}

/// The body of every response the proxy sends.
// Kept inline: boxing the upstream variant would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum RespBody {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
    Raw(RawBody),
}

impl RespBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            RespBody::Full(None)
        } else {
            RespBody::Full(Some(bytes))
        }
    }

    pub(crate) fn upstream(inner: Incoming, done: Completion) -> Self {
        RespBody::Upstream(UpstreamBody {
            inner,
            bytes: 0,
            ended: false,
            done: Some(done),
        })
    }

    pub(crate) fn raw(inner: h1::Body, done: Completion) -> Self {
        RespBody::Raw(RawBody {
            inner: Some(inner),
            bytes: 0,
            done: Some(done),
        })
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RespBody::Raw(body) => {
                let Some(inner) = body.inner.as_mut() else {
                    return Poll::Ready(None);
                };
                let polled = std::task::ready!(inner.poll_frame(cx));
                if let Some(Ok(frame)) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    body.bytes += data.len() as u64;
                }
                Poll::Ready(polled.map(|r| r.map_err(Into::into)))
            }
            RespBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Upstream(body) => {
                let polled = std::task::ready!(Pin::new(&mut body.inner).poll_frame(cx));
                match &polled {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            body.bytes += data.len() as u64;
                        }
                    }
                    None => body.ended = true,
                    Some(Err(_)) => {}
                }
                Poll::Ready(polled.map(|r| r.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(bytes) => bytes.is_none(),
            RespBody::Upstream(body) => body.inner.is_end_stream(),
            RespBody::Raw(body) => body.inner.as_ref().is_none_or(h1::Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            RespBody::Upstream(body) => body.inner.size_hint(),
            RespBody::Raw(body) => body
                .inner
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), h1::Body::size_hint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_body_too_large_in_a_chain() {
        #[derive(Debug)]
        struct Wrap(BodyTooLarge);
        impl fmt::Display for Wrap {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl StdError for Wrap {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        assert!(is_body_too_large(&Wrap(BodyTooLarge)));
        assert!(!is_body_too_large(&std::io::Error::other("x")));
    }
}
