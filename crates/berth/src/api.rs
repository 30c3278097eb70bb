//! The control API: HTTP/JSON under `/v1/…` on a unix socket (mode 0600) or on TCP with
//! a bearer token, the OpenAPI document generated from the handlers, and `/metrics`.
//!
//! Every error is `{"error": {"code", "message"}}` with a fitting status: a malformed
//! body is 400 saying what is wrong, an unknown service 404. Following (`logs -f`,
//! `events -f`) streams newline-delimited JSON.
//!
//! **Boundary:** handlers only translate between HTTP and [`control::Handle`]; they
//! decide nothing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path as UrlPath, Query, Request as HttpRequest, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use control::{ControlError, Handle, Request};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use spec::api::*;
use subtle::ConstantTimeEq;
use tokio::task::JoinHandle;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dataplane::check_files;

#[derive(Clone)]
pub struct ApiState {
    pub handle: Handle,
    pub proxy: Arc<proxy::Proxy>,
    /// SHA-256 of the bearer token; `Some` on a TCP listener.
    pub token_hash: Option<[u8; 32]>,
    /// The config file `berth up` runs (default for `apply`).
    pub config_path: PathBuf,
    /// `[berth]` as berth started with it: these settings need a restart to change.
    pub berth: spec::BerthConfig,
}

// ---- errors ---------------------------------------------------------------------------

/// An error answer: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m),
            ControlError::BadRequest(m) => Self::bad_request(m),
            ControlError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            ControlError::Internal(m) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = std::result::Result<Json<T>, ApiError>;

/// `Json<T>` whose rejections are JSON errors that say what is wrong.
pub struct Body400<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body400<T> {
    type Rejection = ApiError;

    async fn from_request(req: HttpRequest, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body400(v)),
            Err(e) => Err(ApiError::bad_request(match e {
                JsonRejection::MissingJsonContentType(_) => {
                    "expected a JSON body with Content-Type: application/json".to_owned()
                }
                other => format!("malformed request body: {}", other.body_text()),
            })),
        }
    }
}

// ---- handlers -------------------------------------------------------------------------

#[derive(OpenApi)]
#[openapi(
    info(
        title = "berth control API",
        description = "Everything the berth CLI can do."
    ),
    components(schemas(ErrorBody, ErrorDetail))
)]
struct ApiDoc;

/// Instances of every service (`berth ps`).
#[utoipa::path(get, path = "/v1/instances", responses((status = 200, body = PsResponse)))]
async fn instances(State(s): State<ApiState>) -> ApiResult<PsResponse> {
    Ok(Json(s.handle.ask(Request::Ps).await?))
}

/// Services with their desired and running counts.
#[utoipa::path(get, path = "/v1/services", responses((status = 200, body = ServicesResponse)))]
async fn services(State(s): State<ApiState>) -> ApiResult<ServicesResponse> {
    let services = s.handle.ask(Request::Services).await?;
    Ok(Json(ServicesResponse { services }))
}

/// Applies the config file (`berth apply`): only the difference to the stored state.
#[utoipa::path(post, path = "/v1/apply", request_body = ApplyRequest,
    responses((status = 200, body = ApplyResponse), (status = 400, body = ErrorBody)))]
async fn apply(
    State(s): State<ApiState>,
    Body400(req): Body400<ApplyRequest>,
) -> ApiResult<ApplyResponse> {
    let path = if req.path.is_empty() {
        s.config_path.clone()
    } else {
        PathBuf::from(&req.path)
    };
    Ok(Json(apply_file(&s, &path, "apply").await?))
}

/// Loads, checks and applies a config file: the path of `apply` and SIGHUP. Nothing
/// changes unless the whole file is valid; the proxy takes up its new settings
/// (certificates, limits, listeners) before services change.
pub async fn apply_file(
    s: &ApiState,
    path: &Path,
    trigger: &str,
) -> Result<ApplyResponse, ApiError> {
    let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_config", m);
    let spec = spec::load(path).map_err(|e| invalid(e.to_string()))?;
    let problems = check_files(&spec);
    if !problems.is_empty() {
        return Err(invalid(problems.join("\n")));
    }
    let (old, new) = (&s.berth, &spec.berth);
    for (key, changed) in [
        ("data_dir", old.data_dir != new.data_dir),
        ("api", old.api != new.api),
        ("api_token_file", old.api_token_file != new.api_token_file),
        ("metrics", old.metrics != new.metrics),
    ] {
        if changed {
            return Err(invalid(format!(
                "{}: [berth] {key} changed; that takes a restart of berth (stop it and run `berth up` again)",
                spec.path.display()
            )));
        }
    }
    s.proxy
        .reload(crate::dataplane::proxy_config(&spec))
        .await
        .map_err(|e| invalid(format!("{}: [proxy]: {e}", spec.path.display())))?;
    let trigger = trigger.to_owned();
    Ok(s.handle
        .ask(|reply| Request::Apply {
            spec: Box::new(spec),
            trigger,
            reply,
        })
        .await?)
}

/// Sets the instance count (`berth scale`).
#[utoipa::path(post, path = "/v1/services/{name}/scale", request_body = ScaleRequest,
    params(("name" = String, Path, description = "service")),
    responses((status = 200, body = Ack), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn scale(
    State(s): State<ApiState>,
    UrlPath(name): UrlPath<String>,
    Body400(req): Body400<ScaleRequest>,
) -> ApiResult<Ack> {
    let message = s
        .handle
        .ask(|reply| Request::Scale {
            service: name,
            instances: req.instances,
            reply,
        })
        .await?;
    Ok(Json(Ack { message }))
}

/// Drains and stops every instance; kept across restarts of berth until `start`.
#[utoipa::path(post, path = "/v1/services/{name}/stop",
    params(("name" = String, Path, description = "service")),
    responses((status = 200, body = Ack), (status = 404, body = ErrorBody)))]
async fn stop(State(s): State<ApiState>, UrlPath(name): UrlPath<String>) -> ApiResult<Ack> {
    let message = s
        .handle
        .ask(|reply| Request::Stop {
            service: name,
            reply,
        })
        .await?;
    Ok(Json(Ack { message }))
}

/// Starts a stopped service.
#[utoipa::path(post, path = "/v1/services/{name}/start",
    params(("name" = String, Path, description = "service")),
    responses((status = 200, body = Ack), (status = 404, body = ErrorBody)))]
async fn start(State(s): State<ApiState>, UrlPath(name): UrlPath<String>) -> ApiResult<Ack> {
    let message = s
        .handle
        .ask(|reply| Request::Start {
            service: name,
            reply,
        })
        .await?;
    Ok(Json(Ack { message }))
}

/// Replaces every instance: new ones first, old ones drained and stopped once the new
/// ones run.
#[utoipa::path(post, path = "/v1/services/{name}/restart",
    params(("name" = String, Path, description = "service")),
    responses((status = 200, body = Ack), (status = 404, body = ErrorBody)))]
async fn restart(State(s): State<ApiState>, UrlPath(name): UrlPath<String>) -> ApiResult<Ack> {
    let message = s
        .handle
        .ask(|reply| Request::Restart {
            service: name,
            reply,
        })
        .await?;
    Ok(Json(Ack { message }))
}

/// Sends a signal to every instance's process group.
#[utoipa::path(post, path = "/v1/services/{name}/signal", request_body = SignalRequest,
    params(("name" = String, Path, description = "service")),
    responses((status = 200, body = Ack), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn signal(
    State(s): State<ApiState>,
    UrlPath(name): UrlPath<String>,
    Body400(req): Body400<SignalRequest>,
) -> ApiResult<Ack> {
    let signal = spec::Signal::parse(&req.signal).map_err(ApiError::bad_request)?;
    let message = s
        .handle
        .ask(|reply| Request::Signal {
            service: name,
            signal,
            reply,
        })
        .await?;
    Ok(Json(Ack { message }))
}

/// Turns maintenance mode on or off: 503 with Retry-After instead of forwarding.
#[utoipa::path(post, path = "/v1/services/{name}/maintenance", request_body = MaintenanceRequest,
    params(("name" = String, Path, description = "service")),
    responses((status = 200, body = Ack), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn maintenance(
    State(s): State<ApiState>,
    UrlPath(name): UrlPath<String>,
    Body400(req): Body400<MaintenanceRequest>,
) -> ApiResult<Ack> {
    let message = s
        .handle
        .ask(|reply| Request::Maintenance {
            service: name,
            enabled: req.enabled,
            reply,
        })
        .await?;
    Ok(Json(Ack { message }))
}

/// Makes a new release from the file's entry (and a copy of `dir`, if given) and rolls it
/// out. Returns at once; progress is in the events after `after_seq`.
#[utoipa::path(post, path = "/v1/services/{name}/deploy", request_body = DeployRequest,
    params(("name" = String, Path, description = "service")),
    responses((status = 200, body = DeployResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "a deploy of this service is running")))]
async fn deploy(
    State(s): State<ApiState>,
    UrlPath(name): UrlPath<String>,
    Body400(req): Body400<DeployRequest>,
) -> ApiResult<DeployResponse> {
    let source = match req.dir.as_deref() {
        None | Some("") => None,
        Some(dir) => Some(copy_source(&s, &name, Path::new(dir)).await?),
    };
    let trigger = if source.is_some() {
        "deploy --dir"
    } else {
        "deploy"
    }
    .to_owned();
    let result = s
        .handle
        .ask(|reply| Request::Deploy {
            service: name,
            source: source.clone(),
            trigger,
            reply,
        })
        .await;
    if result.is_err()
        && let Some(src) = source
    {
        let _ = std::fs::remove_dir_all(src);
    }
    Ok(Json(result?))
}

/// Copies a deploy's source into `data_dir/releases/NAME/.incoming-*` (the controller
/// renames it into place), so the release never depends on the directory staying put.
async fn copy_source(s: &ApiState, service: &str, dir: &Path) -> Result<PathBuf, ApiError> {
    if !dir.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "dir must be an absolute path, found {:?}",
            dir.display()
        )));
    }
    if !dir.is_dir() {
        return Err(ApiError::bad_request(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if spec::ServiceName::new(service).is_err() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no service named {service:?}"),
        ));
    }
    let mut raw = [0u8; 8];
    getrandom(&mut raw)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let suffix: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let dest = s
        .berth
        .data_dir
        .join("releases")
        .join(service)
        .join(format!(".incoming-{suffix}"));
    let (src, dst) = (dir.to_owned(), dest.clone());
    tokio::task::spawn_blocking(move || copy_tree(&src, &dst))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| {
            let _ = std::fs::remove_dir_all(&dest);
            ApiError::bad_request(format!("cannot copy {}: {e}", dir.display()))
        })?;
    Ok(dest)
}

/// Recursive copy keeping permissions and symbolic links.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

/// Rolls out an earlier release again, from its stored source.
#[utoipa::path(post, path = "/v1/services/{name}/rollback", request_body = RollbackRequest,
    params(("name" = String, Path, description = "service")),
    responses((status = 200, body = DeployResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn rollback(
    State(s): State<ApiState>,
    UrlPath(name): UrlPath<String>,
    Body400(req): Body400<RollbackRequest>,
) -> ApiResult<DeployResponse> {
    let to = match req.to.as_deref() {
        None | Some("") => None,
        Some(v) => Some(
            v.strip_prefix('v')
                .unwrap_or(v)
                .parse::<u32>()
                .map_err(|_| {
                    ApiError::bad_request(format!("to: expected a release like v3, found {v:?}"))
                })?,
        ),
    };
    Ok(Json(
        s.handle
            .ask(|reply| Request::Rollback {
                service: name,
                to,
                reply,
            })
            .await?,
    ))
}

/// The service's releases, newest first.
#[utoipa::path(get, path = "/v1/services/{name}/releases",
    params(("name" = String, Path, description = "service")),
    responses((status = 200, body = ReleasesResponse), (status = 404, body = ErrorBody)))]
async fn releases(
    State(s): State<ApiState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<ReleasesResponse> {
    let releases = s
        .handle
        .ask(|reply| Request::Releases {
            service: name,
            reply,
        })
        .await?;
    Ok(Json(ReleasesResponse { releases }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    /// How many of the last lines (default 100).
    n: Option<usize>,
    /// Keep the response open and stream new lines as NDJSON `LogLineView`s.
    #[serde(default)]
    follow: bool,
}

/// The last lines of every instance's log, merged by time (`berth logs`).
#[utoipa::path(get, path = "/v1/services/{name}/logs",
    params(("name" = String, Path, description = "service"), LogsQuery),
    responses((status = 200, body = LogsResponse, description = "or NDJSON LogLineView lines with follow=true"),
        (status = 404, body = ErrorBody)))]
async fn logs(
    State(s): State<ApiState>,
    UrlPath(name): UrlPath<String>,
    query: std::result::Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> std::result::Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let dir = s
        .handle
        .ask(|reply| Request::LogDir {
            service: name,
            reply,
        })
        .await?;
    let n = q.n.unwrap_or(100);
    let (lines, cursors) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || read_tails(&dir, n)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    if !q.follow {
        return Ok(Json(LogsResponse { lines }).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        for l in lines {
            if tx.send(Ok(ndjson(&l))).await.is_err() {
                return;
            }
        }
        let mut cursors = cursors;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let dir = dir.clone();
            let Ok((new, c)) = tokio::task::spawn_blocking(move || read_new(&dir, cursors)).await
            else {
                return;
            };
            cursors = c;
            for l in new {
                if tx.send(Ok(ndjson(&l))).await.is_err() {
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(ndjson_response(rx))
}

type Cursors = Vec<(String, PathBuf, runtime::logs::LogCursor)>;

/// Instance log files in a service's log directory: (instance id, path of `ID.log`).
fn log_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".log")?.to_owned();
            Some((id, e.path()))
        })
        .collect();
    out.sort();
    out
}

fn view(instance: &str, l: runtime::logs::LogLine) -> LogLineView {
    LogLineView {
        time: l.time,
        instance: instance.to_owned(),
        stream: l.stream,
        line: l.text,
    }
}

fn read_tails(dir: &Path, n: usize) -> (Vec<LogLineView>, Cursors) {
    let mut lines = Vec::new();
    let mut cursors = Vec::new();
    for (id, path) in log_files(dir) {
        if let Ok((tail, cursor)) = runtime::logs::tail_with_cursor(&path, n) {
            lines.extend(tail.into_iter().map(|l| view(&id, l)));
            cursors.push((id, path, cursor));
        }
    }
    // Stable: lines of one instance keep their order when timestamps tie.
    lines.sort_by(|a, b| a.time.cmp(&b.time));
    let skip = lines.len().saturating_sub(n);
    (lines.split_off(skip), cursors)
}

fn read_new(dir: &Path, mut cursors: Cursors) -> (Vec<LogLineView>, Cursors) {
    for (id, path) in log_files(dir) {
        if !cursors.iter().any(|(c, _, _)| *c == id) {
            cursors.push((id, path, runtime::logs::LogCursor::default()));
        }
    }
    let mut lines = Vec::new();
    for (id, path, cursor) in cursors.iter_mut() {
        if let Ok(new) = runtime::logs::read_after(path, cursor) {
            lines.extend(new.into_iter().map(|l| view(id, l)));
        }
    }
    lines.sort_by(|a, b| a.time.cmp(&b.time));
    (lines, cursors)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Only events after this sequence number.
    after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
    /// Keep the response open and stream new events as NDJSON `EventView`s.
    #[serde(default)]
    follow: bool,
}

/// What berth decided and why (`berth events`).
#[utoipa::path(get, path = "/v1/events", params(EventsQuery),
    responses((status = 200, body = EventsResponse, description = "or NDJSON EventView lines with follow=true")))]
async fn events(
    State(s): State<ApiState>,
    query: std::result::Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> std::result::Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let after = q.after;
    let first = s
        .handle
        .ask(|reply| Request::Events {
            after,
            limit,
            reply,
        })
        .await?;
    if !q.follow {
        return Ok(Json(EventsResponse { events: first }).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, Infallible>>(64);
    let handle = s.handle.clone();
    tokio::spawn(async move {
        let mut last = first.last().map(|e| e.seq).or(after).unwrap_or(0);
        for e in first {
            if tx.send(Ok(ndjson(&e))).await.is_err() {
                return;
            }
        }
        loop {
            let notified = handle.events.notified();
            let Ok(batch) = handle
                .ask(|reply| Request::Events {
                    after: Some(last),
                    limit: 1000,
                    reply,
                })
                .await
            else {
                return;
            };
            for e in batch {
                last = e.seq;
                if tx.send(Ok(ndjson(&e))).await.is_err() {
                    return;
                }
            }
            // Wake on the next event, or now and then to notice a closed client.
            let _ = tokio::time::timeout(Duration::from_secs(2), notified).await;
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(ndjson_response(rx))
}

fn ndjson<T: serde::Serialize>(v: &T) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn ndjson_response(
    rx: tokio::sync::mpsc::Receiver<std::result::Result<Bytes, Infallible>>,
) -> Response {
    let stream = futures_stream(rx);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn futures_stream(
    mut rx: tokio::sync::mpsc::Receiver<std::result::Result<Bytes, Infallible>>,
) -> impl futures_util::Stream<Item = std::result::Result<Bytes, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Prometheus metrics: the proxy's, and every instance's state, restarts, CPU and memory
/// (documented in docs/metrics.md).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
async fn metrics(State(s): State<ApiState>) -> Response {
    let mut text = s.proxy.metrics_text();
    if let Ok(ps) = s.handle.ask(Request::Ps).await {
        text.push_str(&instance_metrics(&ps));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// name, type, help, value: one instance metric family.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&InstanceView) -> f64,
);

fn instance_metrics(ps: &PsResponse) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let families: [Family; 4] = [
        (
            "berth_instance_up",
            "gauge",
            "1 while the instance is running (receives traffic if healthy).",
            |i| f64::from(u8::from(i.state == "running")),
        ),
        (
            "berth_instance_restarts_total",
            "counter",
            "Restarts of the instance by its restart policy.",
            |i| f64::from(i.restarts),
        ),
        (
            "berth_instance_cpu_percent",
            "gauge",
            "CPU use of the instance's process tree, in percent of one core.",
            |i| i.cpu_percent,
        ),
        (
            "berth_instance_memory_bytes",
            "gauge",
            "Resident memory of the instance's process tree.",
            |i| i.memory_bytes as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for i in &ps.instances {
            let _ = writeln!(
                out,
                "{name}{{service=\"{}\",instance=\"{}\",release=\"{}\"}} {}",
                i.service,
                i.id,
                i.release,
                value(i)
            );
        }
    }
    out
}

// ---- routers and listeners ------------------------------------------------------------

pub fn router(state: ApiState) -> Router {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(instances))
        .routes(routes!(services))
        .routes(routes!(apply))
        .routes(routes!(scale))
        .routes(routes!(stop))
        .routes(routes!(start))
        .routes(routes!(restart))
        .routes(routes!(signal))
        .routes(routes!(maintenance))
        .routes(routes!(releases))
        .routes(routes!(deploy))
        .routes(routes!(rollback))
        .routes(routes!(logs))
        .routes(routes!(events))
        .routes(routes!(metrics))
        .split_for_parts();
    let api = Arc::new(api);
    let router = router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let api = api.clone();
                async move { Json(api.as_ref().clone()) }
            }),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /v1/openapi.json",
            )
        });
    let auth_state = state.clone();
    router
        .layer(middleware::from_fn_with_state(auth_state, authorize))
        .with_state(state)
}

/// On TCP every request needs `Authorization: Bearer <token>`; on the unix socket the
/// file mode is the access control.
async fn authorize(State(s): State<ApiState>, req: HttpRequest, next: Next) -> Response {
    let Some(expected) = s.token_hash else {
        return next.run(req).await;
    };
    if bearer_matches(req.headers(), &expected) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this API needs Authorization: Bearer <token> (the token is in berth's api_token_file)",
        )
        .into_response()
    }
}

fn bearer_matches(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let got: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    got.ct_eq(expected).into()
}

/// The token's hash for a TCP API: the token file is created (0600) on first use, and
/// only its hash is kept by the server.
pub fn token_hash_for(spec: &spec::Spec) -> Result<[u8; 32]> {
    let path = spec
        .berth
        .api_token_file
        .clone()
        .unwrap_or_else(|| spec.berth.data_dir.join("api.token"));
    let token = match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => {
            let mut raw = [0u8; 32];
            getrandom(&mut raw)?;
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            crate::up::write_secret(&path, &format!("{token}\n"))?;
            eprintln!("berth: API token written to {}", path.display());
            token
        }
    };
    Ok(Sha256::digest(token.as_bytes()).into())
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("cannot read /dev/urandom")
}

pub async fn serve(addr: &spec::ApiAddr, state: ApiState) -> Result<JoinHandle<()>> {
    let app = router(state);
    match addr {
        spec::ApiAddr::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // A socket file left by a berth that was killed: the data_dir lock proves
            // nobody serves it any more.
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("cannot listen on unix:{}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }))
        }
        spec::ApiAddr::Tcp(sa) => {
            let listener = tokio::net::TcpListener::bind(sa)
                .await
                .with_context(|| format!("cannot listen on {sa}"))?;
            Ok(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }))
        }
    }
}

/// The `[berth] metrics` listener: `/metrics` only, no token.
pub async fn serve_metrics(addr: SocketAddr, state: ApiState) -> Result<JoinHandle<()>> {
    let app = Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))?;
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }))
}
