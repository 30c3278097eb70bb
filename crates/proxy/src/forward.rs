//! The request handler: route, access rules, redirect, maintenance, limits, then
//! forward to a backend with retries, and stream the answer back.
//!
//! Decisions that need no backend (404, 403, 308, 503 maintenance, 413 by declared
//! length, 503 without instances) are taken synchronously on the snapshot loaded at the
//! start of the request; the snapshot is not held across awaits, so a route swap never
//! waits for requests.
//!
//! Retries: a failed connect tries the next backend for any request (nothing was sent);
//! a request that hyper reports as never written goes out on another connection; a
//! pooled connection that dies after the request was written is retried once on a new
//! connection when the request is idempotent and bodiless.
//!
//! Must not: hold a lock across an await, buffer a body, or block on the access log.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;

use crate::access_log::{AccessLog, Record};
use crate::balance::{self, Tried};
use crate::body::{Completion, ReqBody, RespBody, is_body_too_large};
use crate::headers::{self, Forwarded};
use crate::metrics::UpstreamError;
use crate::routes::{Service, normalize_host};
use crate::upstream::{self, ConnectError, InFlight};
use crate::{Shared, h1};

/// A pooled connection idle for longer than this might be closing on the backend's
/// side as we use it; only then is the request head kept for a retry.
const STALE_RISK: Duration = Duration::from_millis(250);
const RETRY_AFTER_NO_BACKEND: HeaderValue = HeaderValue::from_static("5");
const RETRY_AFTER_MAINTENANCE: HeaderValue = HeaderValue::from_static("30");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");

/// Per client connection.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    /// Socket peer, IPv4-mapped addresses normalised.
    pub(crate) peer: IpAddr,
    /// `peer` formatted once per connection for `X-Forwarded-For` / `X-Real-IP`.
    pub(crate) peer_value: HeaderValue,
    pub(crate) https: bool,
    /// Requests seen, for the HTTP/2 idle watchdog.
    pub(crate) requests: AtomicU64,
}

/// What a forwarded request needs after the synchronous checks.
struct Plan {
    service: Arc<Service>,
    client: IpAddr,
    peer_trusted: bool,
    connect_timeout: Duration,
    response_timeout: Duration,
}

/// The access-log record being filled in, with its destination.
type LogCtx = Option<(Arc<AccessLog>, Record)>;

pub(crate) async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    ctx.requests.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    match decide(&ctx, &parts, body.size_hint().exact(), start) {
        Decision::Respond(resp) => Ok(resp),
        Decision::Forward(plan, log) => {
            let req = Request::from_parts(parts, body);
            Ok(forward(&ctx, req, plan, log, start).await)
        }
    }
}

/// Serves a request that has no body and asks for no upgrade (the inline HTTP/1.1
/// server's requests, see `h1_serve`): the same rules, then [`forward_inline`].
pub(crate) async fn handle_bodiless(ctx: &ConnCtx, parts: &Parts) -> Response<RespBody> {
    let start = Instant::now();
    match decide(ctx, parts, Some(0), start) {
        Decision::Respond(resp) => resp,
        Decision::Forward(plan, log) => {
            let host = routed_host(parts);
            let forwarded = forwarded(ctx, &plan, host.as_ref());
            forward_inline(&plan, parts, &forwarded, log, start).await
        }
    }
}

#[allow(clippy::large_enum_variant)] // short-lived, on the stack
enum Decision {
    Respond(Response<RespBody>),
    Forward(Plan, LogCtx),
}

/// The checks that need no backend. `body_len`: the request body's declared length.
fn decide(ctx: &ConnCtx, req: &Parts, body_len: Option<u64>, start: Instant) -> Decision {
    let shared = &ctx.shared;
    let cfg = shared.config.load();
    let log: LogCtx = cfg.access_log.as_ref().map(|log| {
        let record = Record {
            time: SystemTime::now(),
            service: None,
            instance: None,
            method: req.method.clone(),
            host: req.headers.get(header::HOST).cloned(),
            uri: req.uri.clone(),
            status: 0,
            bytes: 0,
            duration: Duration::ZERO,
            client: ctx.peer,
        };
        (log.clone(), record)
    });
    let raw_host = match request_host(req) {
        Ok(raw) => raw,
        Err(why) => {
            let mut resp = local(None, log, start, StatusCode::BAD_REQUEST, why);
            if req.version < Version::HTTP_2 {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return Decision::Respond(resp);
        }
    };
    let host = normalize_host(raw_host);
    let routes = shared.routes.load();
    let Some(service) = routes.lookup(&host, req.uri.path()) else {
        shared.metrics.unrouted.fetch_add(1, Ordering::Relaxed);
        return Decision::Respond(local(
            None,
            log,
            start,
            StatusCode::NOT_FOUND,
            "no service for this host\n",
        ));
    };
    let client = headers::client_ip(ctx.peer, &req.headers, &cfg.trusted_proxies);
    let log = log.map(|(l, mut r)| {
        r.client = client;
        r.service = Some(service.name.clone());
        (l, r)
    });
    let denied = service.deny.iter().any(|n| n.contains(&client))
        || (!service.allow.is_empty() && !service.allow.iter().any(|n| n.contains(&client)));
    if denied {
        return Decision::Respond(local(
            Some(service),
            log,
            start,
            StatusCode::FORBIDDEN,
            "forbidden\n",
        ));
    }
    if service.https_redirect && !ctx.https {
        return Decision::Respond(redirect(
            service,
            log,
            start,
            &host,
            &req.uri,
            cfg.redirect_port,
        ));
    }
    if let Some(page) = &service.maintenance {
        let mut resp = local(
            Some(service),
            log,
            start,
            StatusCode::SERVICE_UNAVAILABLE,
            page.clone(),
        );
        resp.headers_mut().insert(header::CONTENT_TYPE, HTML);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, RETRY_AFTER_MAINTENANCE);
        return Decision::Respond(resp);
    }
    if body_len.is_some_and(|n| n > service.max_body) {
        let mut resp = local(
            Some(service),
            log,
            start,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
        );
        if req.version < Version::HTTP_2 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Decision::Respond(resp);
    }
    if service.backends.is_empty() {
        return Decision::Respond(no_backend(service, log, start));
    }
    let peer_trusted = !cfg.trusted_proxies.is_empty()
        && cfg.trusted_proxies.iter().any(|n| n.contains(&ctx.peer));
    Decision::Forward(
        Plan {
            service: service.clone(),
            client,
            peer_trusted,
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
        },
        log,
    )
}

/// The host a request is for, as sent: the request target's authority (absolute form,
/// or `:authority` on HTTP/2) over `Host`. Refused as RFC 9112 3.2 says: more than one
/// `Host`, none on an HTTP/1.1 request, or one that is not `host[:port]`.
fn request_host(req: &Parts) -> Result<&str, &'static str> {
    let mut fields = req.headers.get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err("more than one Host header\n");
    }
    let raw = match (req.uri.authority(), field) {
        (Some(authority), _) => authority.as_str(),
        (None, Some(field)) => field.to_str().map_err(|_| "bad Host header\n")?,
        (None, None) if req.version == Version::HTTP_11 => {
            return Err("missing Host header\n");
        }
        (None, None) => "",
    };
    if is_host_value(raw) {
        Ok(raw)
    } else {
        Err("bad Host header\n")
    }
}

/// `uri-host [":" port]` (RFC 9110 7.2): a registered name or IPv4 address (unreserved,
/// percent-encoded and sub-delimiter characters), or an IP literal in brackets; no user
/// info, path or white space. Empty is allowed (a request target without authority).
fn is_host_value(raw: &str) -> bool {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.is_empty()
            || !literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => ("", port),
            None if after.is_empty() => ("", ""),
            None => return false,
        }
    } else {
        raw.split_once(':').unwrap_or((raw, ""))
    };
    let name_ok = host.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    name_ok && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

fn no_backend(service: &Service, log: LogCtx, start: Instant) -> Response<RespBody> {
    let mut resp = local(
        Some(service),
        log,
        start,
        StatusCode::SERVICE_UNAVAILABLE,
        "no instance of this service is running\n",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, RETRY_AFTER_NO_BACKEND);
    resp
}

fn redirect(
    service: &Service,
    log: LogCtx,
    start: Instant,
    host: &str,
    uri: &Uri,
    port: u16,
) -> Response<RespBody> {
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return local(
            Some(service),
            log,
            start,
            StatusCode::BAD_REQUEST,
            "bad host\n",
        );
    };
    let mut resp = local(
        Some(service),
        log,
        start,
        StatusCode::PERMANENT_REDIRECT,
        Bytes::new(),
    );
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

/// A response made by the proxy itself; accounted and logged at once.
fn local(
    service: Option<&Service>,
    log: LogCtx,
    start: Instant,
    status: StatusCode,
    body: impl Into<Bytes>,
) -> Response<RespBody> {
    let body: Bytes = body.into();
    let elapsed = start.elapsed();
    if let Some(service) = service {
        service.metrics.observe(status.as_u16(), elapsed);
    }
    if let Some((log, mut record)) = log {
        record.status = status.as_u16();
        record.bytes = body.len() as u64;
        record.duration = elapsed;
        log.send(record);
    }
    let mut resp = Response::new(RespBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, TEXT);
    resp
}

/// The host as routed (`request_host`): the authority of an absolute-form or HTTP/2
/// request replaces any `Host` the client sent.
fn routed_host(parts: &Parts) -> Option<HeaderValue> {
    match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    }
}

fn forwarded<'a>(ctx: &'a ConnCtx, plan: &Plan, host: Option<&'a HeaderValue>) -> Forwarded<'a> {
    Forwarded {
        peer: ctx.peer,
        peer_value: &ctx.peer_value,
        peer_trusted: plan.peer_trusted,
        client: plan.client,
        https: ctx.https,
        host,
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The head of a bodiless request, for one retry.
fn clone_head(req: &Request<ReqBody>) -> Request<ReqBody> {
    let mut copy = Request::new(ReqBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

async fn forward(
    ctx: &Arc<ConnCtx>,
    mut req: Request<Incoming>,
    plan: Plan,
    log: LogCtx,
    start: Instant,
) -> Response<RespBody> {
    let service = &plan.service;
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    let host = routed_host(&parts);
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    let forwarded = forwarded(ctx, &plan, host.as_ref());
    if body.is_end_stream() && !upgrade && parts.method != Method::CONNECT {
        // The head is written as it goes out (`Forwarded::encode`): the map stays as is.
        drop(body);
        return forward_inline(&plan, &parts, &forwarded, log, start).await;
    }

    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.remove(header::EXPECT);
    if let Some(h) = &host {
        parts.headers.insert(header::HOST, h.clone());
    }
    parts.headers.reserve(6);
    forwarded.apply(&mut parts.headers);
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = parts
            .uri
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from);
    }
    parts.version = Version::HTTP_11;

    let body = if body.is_end_stream() {
        ReqBody::Empty
    } else if body.size_hint().exact().is_some() {
        ReqBody::Stream(body)
    } else {
        ReqBody::Limited {
            inner: body,
            remaining: service.max_body,
        }
    };
    let may_replay = matches!(body, ReqBody::Empty) && is_idempotent(&parts.method) && !upgrade;
    let mut req = Request::from_parts(parts, body);
    let mut tried = Tried::default();
    let mut replay_left = may_replay;

    loop {
        let Some(index) = balance::pick(service, tried) else {
            return unreachable(service, log, start);
        };
        let up = &service.backends[index];
        let in_flight = InFlight::new(up.clone());
        let (mut tx, idle_for) = match up.checkout() {
            Some((mut tx, idle_for)) => {
                if tx.ready().await.is_err() {
                    continue;
                }
                (tx, Some(idle_for))
            }
            None => match upstream::connect(up.addr, plan.connect_timeout).await {
                Ok(tx) => (tx, None),
                Err(e) => {
                    connect_failed(up, &e);
                    service.metrics.upstream_error(UpstreamError::Connect);
                    tried.add(index);
                    continue;
                }
            },
        };
        let replay = match idle_for {
            Some(d) if replay_left && d > STALE_RISK => Some(clone_head(&req)),
            _ => None,
        };
        let sent = tokio::time::timeout(plan.response_timeout, tx.try_send_request(req)).await;
        match sent {
            Err(_elapsed) => return timed_out(service, up, log, start),
            Ok(Ok(resp)) => {
                return respond(
                    ctx,
                    service,
                    resp,
                    tx,
                    in_flight,
                    client_upgrade,
                    log,
                    start,
                );
            }
            Ok(Err(mut e)) => {
                if let Some(unsent) = e.take_message() {
                    req = unsent;
                    continue;
                }
                let err = e.into_error();
                if is_body_too_large(&err) {
                    let mut resp = local(
                        Some(service),
                        with_instance(log, up),
                        start,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large\n",
                    );
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return resp;
                }
                if let Some(head) = replay {
                    replay_left = false;
                    req = head;
                    continue;
                }
                return failed(service, up, log, start, &err);
            }
        }
    }
}

/// Forwards a request without a body over [`h1`]: the exchange runs in this task.
///
/// Retries: a failed connect tries the next backend; a pooled connection that fails
/// before any byte of a response (closed by the instance while idle) is replaced by a
/// new connection once, when the request was not written at all or is idempotent.
async fn forward_inline(
    plan: &Plan,
    parts: &Parts,
    forwarded: &Forwarded<'_>,
    log: LogCtx,
    start: Instant,
) -> Response<RespBody> {
    let service = &plan.service;
    let mut tried = Tried::default();
    let mut retried = false;
    loop {
        let Some(index) = balance::pick(service, tried) else {
            return unreachable(service, log, start);
        };
        let up = &service.backends[index];
        let in_flight = InFlight::new(up.clone());
        let pooled = if retried { None } else { up.checkout_raw() };
        let (conn, reused) = match pooled {
            Some((conn, _idle_for)) => (conn, true),
            None => match h1::Conn::connect(up.addr, plan.connect_timeout).await {
                Ok(conn) => (conn, false),
                Err(e) => {
                    connect_failed(up, &e);
                    service.metrics.upstream_error(UpstreamError::Connect);
                    tried.add(index);
                    continue;
                }
            },
        };
        match tokio::time::timeout(plan.response_timeout, conn.send(parts, forwarded)).await {
            Err(_elapsed) => return timed_out(service, up, log, start),
            Ok(Ok((head, body))) => {
                let status = head.status;
                // Hop-by-hop fields were left out by the parser.
                let headers = head.headers;
                let done = Completion {
                    metrics: service.metrics.clone(),
                    status: status.as_u16(),
                    start,
                    log: with_instance(log, up).map(|(l, mut r)| {
                        r.status = status.as_u16();
                        (l, r)
                    }),
                    in_flight,
                    conn: None,
                };
                let mut resp = Response::new(RespBody::raw(body, done));
                *resp.status_mut() = status;
                *resp.headers_mut() = headers;
                return resp;
            }
            Ok(Err(e)) => {
                let replay = match e {
                    h1::SendError::Unsent(_) => true,
                    h1::SendError::NoResponse(_) => is_idempotent(&parts.method),
                    h1::SendError::Bad(_) => false,
                };
                if reused && replay && !retried {
                    retried = true;
                    continue;
                }
                return failed(service, up, log, start, &e);
            }
        }
    }
}

/// 502: no instance left to try (all refused or failed to connect).
fn unreachable(service: &Service, log: LogCtx, start: Instant) -> Response<RespBody> {
    local(
        Some(service),
        log,
        start,
        StatusCode::BAD_GATEWAY,
        "cannot reach an instance of this service\n",
    )
}

/// 504: the instance did not answer within the response timeout.
fn timed_out(
    service: &Service,
    up: &upstream::Upstream,
    log: LogCtx,
    start: Instant,
) -> Response<RespBody> {
    service.metrics.upstream_error(UpstreamError::Timeout);
    tracing::warn!(instance = %up.instance, "backend did not answer within the response timeout");
    local(
        Some(service),
        with_instance(log, up),
        start,
        StatusCode::GATEWAY_TIMEOUT,
        "the instance did not answer in time\n",
    )
}

/// 502: the exchange with the instance broke and may not be retried.
fn failed(
    service: &Service,
    up: &upstream::Upstream,
    log: LogCtx,
    start: Instant,
    error: &dyn std::fmt::Display,
) -> Response<RespBody> {
    service.metrics.upstream_error(UpstreamError::Reset);
    tracing::debug!(instance = %up.instance, error = %error, "forwarding failed");
    local(
        Some(service),
        with_instance(log, up),
        start,
        StatusCode::BAD_GATEWAY,
        "the instance closed the connection\n",
    )
}

fn connect_failed(up: &upstream::Upstream, e: &ConnectError) {
    match e {
        ConnectError::Refused => balance::eject(up),
        ConnectError::Timeout => {
            tracing::warn!(instance = %up.instance, addr = %up.addr, "connect to backend timed out");
        }
        ConnectError::Other(e) => {
            tracing::warn!(instance = %up.instance, addr = %up.addr, error = %e, "cannot connect to backend");
        }
    }
}

fn with_instance(log: LogCtx, up: &upstream::Upstream) -> LogCtx {
    log.map(|(l, mut r)| {
        r.instance = Some(up.instance.clone());
        (l, r)
    })
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 wants one (RFC 9113 8.2.3).
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, v) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[allow(clippy::too_many_arguments)]
fn respond(
    ctx: &Arc<ConnCtx>,
    service: &Arc<Service>,
    mut resp: Response<Incoming>,
    tx: upstream::Sender,
    in_flight: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    log: LogCtx,
    start: Instant,
) -> Response<RespBody> {
    let status = resp.status();
    let log = with_instance(log, &in_flight.0);
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return local(
                Some(service),
                log,
                start,
                StatusCode::BAD_GATEWAY,
                "unexpected 101 from the instance\n",
            );
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let hard_stop = ctx.shared.hard_stop.clone();
        ctx.shared.tracker.spawn(async move {
            let (client, upstream) = tokio::join!(client_upgrade, upstream_upgrade);
            let (Ok(client), Ok(upstream)) = (client, upstream) else {
                return;
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                _ = hard_stop.cancelled() => {}
            }
            drop(in_flight);
        });
        let (mut parts, _) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, true);
        service.metrics.observe(status.as_u16(), start.elapsed());
        if let Some((l, mut r)) = log {
            r.status = status.as_u16();
            r.duration = start.elapsed();
            l.send(r);
        }
        drop(tx);
        return Response::from_parts(parts, RespBody::Full(None));
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    let done = Completion {
        in_flight,
        conn: Some(tx),
        metrics: service.metrics.clone(),
        status: status.as_u16(),
        start,
        log: log.map(|(l, mut r)| {
            r.status = status.as_u16();
            (l, r)
        }),
    };
    Response::from_parts(parts, RespBody::upstream(body, done))
}
