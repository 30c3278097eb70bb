//! Starting a new instance: spawn the shim, which detaches and starts the app.

use std::path::PathBuf;

use crate::RuntimeError;

/// Everything the shim needs to start one instance. Paths are absolute.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The berth executable to re-run as the shim (normally `std::env::current_exe()`).
    pub shim_exe: PathBuf,
    /// Instance id, e.g. `web-3`; used in messages only.
    pub instance_id: String,
    /// The unix socket the shim listens on (berth puts it under `data_dir/run/`).
    pub socket: PathBuf,
    /// argv[0] is looked up in the env's PATH when it has no `/`.
    pub argv: Vec<String>,
    pub dir: PathBuf,
    /// The app's whole environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Run as this user (name) when berth is root.
    pub user: Option<String>,
    /// The instance's log file; rotated to `<file>.1` when it exceeds `log_max_bytes`.
    pub log_file: PathBuf,
    pub log_max_bytes: u64,
}

/// A started instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub shim_pid: u32,
    pub pid: u32,
    pub started_at_ms: u64,
}

/// Starts the shim and, through it, the app. Blocks until the app has been exec'd (or
/// failed to), so an unknown program or a bad `dir` is an error here, not a crash later.
pub fn launch(_spec: &LaunchSpec) -> Result<Launched, RuntimeError> {
    Err(RuntimeError::Protocol("not implemented".into()))
}
