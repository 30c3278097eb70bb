//! The shim's wire protocol: one JSON object per line over the instance's unix socket.
//! Only this module and `shim`/`client` know it.

use serde::{Deserialize, Serialize};

/// How the app's process (the group leader) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when a signal killed it.
    pub signal: Option<i32>,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => write!(f, "ended"),
        }
    }
}

/// What the shim reports about its instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimStatus {
    pub shim_pid: u32,
    /// The app's pid (= its process group id).
    pub pid: u32,
    /// Unix time in milliseconds when the app was started.
    pub started_at_ms: u64,
    /// `None` while the app runs.
    pub exit: Option<ExitStatus>,
}
