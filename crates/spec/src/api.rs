//! Types of the control API's JSON bodies, shared by the server (`berth up`) and the CLI.
//! The shapes of `PsResponse` and `ReleasesResponse` are fixed by DESIGN.md.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/instances` — `berth ps --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PsResponse {
    pub instances: Vec<InstanceView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    pub service: String,
    /// `SERVICE-N`.
    pub id: String,
    /// `vN`.
    pub release: String,
    /// starting | running | draining | stopping | stopped | backoff | exited
    pub state: String,
    /// healthy | unhealthy | unknown
    pub health: String,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub restarts: u32,
    pub uptime_s: u64,
    /// Why the instance last exited (`exit code 1`, `killed by SIGKILL`), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// The last health check failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
}

/// `GET /v1/services/{name}/releases` — `berth releases --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleasesResponse {
    pub releases: Vec<ReleaseView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseView {
    pub version: String,
    /// live | deploying | failed | rolled-back | superseded
    pub status: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub trigger: String,
    pub reason: Option<String>,
}

/// `GET /v1/services` — one line per service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServicesResponse {
    pub services: Vec<ServiceView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServiceView {
    pub name: String,
    pub kind: String,
    /// Desired instance count (after `scale`).
    pub instances: u32,
    pub running: u32,
    pub stopped: bool,
    pub maintenance: bool,
    pub release: String,
}

/// `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventsResponse {
    pub events: Vec<EventView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Increasing sequence number; `?after=SEQ` returns later events.
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub service: Option<String>,
    pub instance: Option<String>,
    /// A stable machine name: `instance.started`, `instance.exited`, `instance.backoff`, …
    pub kind: String,
    pub message: String,
}

/// `GET /v1/services/{name}/logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogsResponse {
    pub lines: Vec<LogLineView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogLineView {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub instance: String,
    /// stdout | stderr
    pub stream: String,
    pub line: String,
}

/// `POST /v1/services/{name}/scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub instances: u32,
}

/// `POST /v1/services/{name}/signal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// `HUP`, `SIGUSR1`, `15`…
    pub signal: String,
}

/// `POST /v1/services/{name}/maintenance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    pub enabled: bool,
}

/// `POST /v1/apply`: the config text to apply (the CLI sends the file's path too, so
/// relative paths resolve from the file's directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// Absolute path of the config file on the server's machine.
    pub path: String,
}

/// What an apply changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApplyResponse {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// `POST /v1/services/{name}/deploy` and `/rollback`: `{"dir": "/path"}` (optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// A directory to copy as the release's source (absolute, on berth's machine).
    #[serde(default)]
    pub dir: Option<String>,
}

/// `POST /v1/services/{name}/rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// `vN`; default: the last release that was live before the current one.
    #[serde(default)]
    pub to: Option<String>,
}

/// A deploy (or rollback) has started; follow `/v1/events?after=after_seq` for progress
/// until a `deploy.succeeded` or `deploy.failed` event of this service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeployResponse {
    pub service: String,
    /// The release being rolled out, `vN`.
    pub release: String,
    pub after_seq: u64,
}

/// A plain acknowledgement with a human message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ack {
    pub message: String,
}

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable: `bad_request`, `not_found`, `conflict`, `unauthorized`, `invalid_config`, `internal`.
    pub code: String,
    pub message: String,
}
