//! Starting a new instance: spawn the shim, which detaches and starts the app.
//!
//! `launch()` is blocking (run it with `spawn_blocking`). It starts the shim with
//! `std::process::Command` (fork+exec, or posix_spawn: safe from berth's multi-threaded
//! runtime), writes the [`LaunchSpec`] as JSON to the shim's stdin, reads the shim's one
//! report line from its stdout and reaps the short-lived first shim process. The
//! long-lived shim is its child, reparented to init (or to the nearest subreaper).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::RuntimeError;
use crate::proto::LaunchReport;

/// How long a shim may take to start the app (user lookups may hit the network).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the shim needs to start one instance. Paths are absolute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// The berth executable to re-run as the shim (normally `std::env::current_exe()`).
    pub shim_exe: PathBuf,
    /// Instance id, e.g. `web-3`; used in messages only.
    pub instance_id: String,
    /// The unix socket the shim listens on (berth puts it under `data_dir/run/`).
    pub socket: PathBuf,
    /// `argv[0]` is looked up in the env's PATH when it has no `/`.
    pub argv: Vec<String>,
    pub dir: PathBuf,
    /// The app's whole environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Run as this user (name) when berth is root.
    pub user: Option<String>,
    /// The instance's log file; rotated to `<file>.1` when it exceeds `log_max_bytes`
    /// (0: never rotated).
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
pub fn launch(spec: &LaunchSpec) -> Result<Launched, RuntimeError> {
    let failed = |reason: String| RuntimeError::Launch {
        instance: spec.instance_id.clone(),
        reason,
    };
    let wire = serde_json::to_vec(spec).map_err(|e| failed(format!("launch spec: {e}")))?;
    let mut child = Command::new(&spec.shim_exe)
        .arg("__shim")
        .arg(&spec.instance_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("{}: {e}", spec.shim_exe.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A shim that died early shows up below as a missing report.
        let _ = stdin.write_all(&wire);
    }
    let deadline = Instant::now() + LAUNCH_TIMEOUT;
    let report = child.stdout.take().map(|out| read_to_end_by(out, deadline));
    let stderr = child
        .stderr
        .take()
        .and_then(|err| read_to_end_by(err, deadline).ok())
        .unwrap_or_default();
    if matches!(report, Some(Err(_))) {
        let _ = child.kill();
    }
    // The first shim process exits right after its fork (or on an early error).
    let status = child.wait();
    let report = match report {
        Some(Ok(out)) => out,
        Some(Err(e)) => return Err(failed(e)),
        None => Vec::new(),
    };
    let line = report.split(|&b| b == b'\n').next().unwrap_or_default();
    match serde_json::from_slice::<LaunchReport>(line) {
        Ok(LaunchReport::Started {
            shim_pid,
            pid,
            started_at_ms,
        }) => Ok(Launched {
            shim_pid,
            pid,
            started_at_ms,
        }),
        Ok(LaunchReport::ExecFailed { program, reason }) => {
            Err(RuntimeError::Exec { program, reason })
        }
        Ok(LaunchReport::Failed { reason }) => Err(failed(reason)),
        Err(_) => {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            let stderr = String::from_utf8_lossy(&stderr);
            Err(failed(format!(
                "the shim ended without a report ({status}): {}",
                stderr.trim()
            )))
        }
    }
}

/// Reads until EOF, failing at `deadline`.
fn read_to_end_by(mut r: impl Read + AsFd, deadline: Instant) -> Result<Vec<u8>, String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("the shim did not report within {LAUNCH_TIMEOUT:?}"));
        }
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        match r.read(&mut chunk) {
            Ok(0) => return Ok(buf),
            // A report is one short line; do not let a broken shim grow this unbounded.
            Ok(n) if buf.len() < 1 << 20 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the shim's report: {e}")),
        }
    }
}
