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
            (None, Some(s)) => match signal_name(s) {
                Some(name) => write!(f, "killed by {name}"),
                None => write!(f, "killed by signal {s}"),
            },
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

/// A request from berth to a shim (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Reply: [`Response::Status`].
    Status,
    /// `killpg(pid, signal)`. Reply: [`Response::Ok`] or [`Response::Error`].
    Signal { signal: i32 },
    /// `signal` to the group, SIGKILL to the group after `timeout_ms`; carried out even if
    /// the client goes away. Reply (once the app and, after a stop, its group are gone):
    /// [`Response::Exited`].
    Stop { signal: i32, timeout_ms: u64 },
    /// Reply (once the app has exited, at once if it already has): [`Response::Exited`].
    WaitExit,
    /// Only after the app exited: the shim replies [`Response::Ok`], removes its socket and
    /// exits. While the app runs: [`Response::Error`].
    Release,
}

/// A shim's reply to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum Response {
    Status { status: ShimStatus },
    Ok,
    Exited { exit: ExitStatus },
    Error { message: String },
}

/// What the shim tells `launch()` on its stdout, once, before it detaches for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum LaunchReport {
    Started {
        shim_pid: u32,
        pid: u32,
        started_at_ms: u64,
    },
    /// The app could not be exec'd (unknown program, bad directory, permissions, user).
    ExecFailed { program: String, reason: String },
    /// The shim itself could not set up (socket, log file, bad spec).
    Failed { reason: String },
}

/// The name of a common Linux signal, for messages.
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes_are_stable() {
        let req = serde_json::to_string(&Request::Stop {
            signal: 15,
            timeout_ms: 500,
        })
        .expect("serialize");
        assert_eq!(req, r#"{"op":"stop","signal":15,"timeout_ms":500}"#);
        let resp = serde_json::to_string(&Response::Exited {
            exit: ExitStatus {
                code: None,
                signal: Some(9),
            },
        })
        .expect("serialize");
        assert_eq!(
            resp,
            r#"{"reply":"exited","exit":{"code":null,"signal":9}}"#
        );
        let back: Request = serde_json::from_str(r#"{"op":"wait_exit"}"#).expect("parse");
        assert_eq!(back, Request::WaitExit);
    }
}
