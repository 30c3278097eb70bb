//! berth's instance driver. Knows processes, process groups, log files and unix sockets;
//! knows nothing of services, HTTP or deploys.
//!
//! Every instance is held by a **shim**: the berth binary re-executed in a hidden mode
//! (`berth __shim …`, entry point [`shim::main`]). The shim detaches from berth
//! (own session), starts the app in its own process group, writes its stdout/stderr
//! line by line with timestamps into a size-rotated log file, reaps it, and answers
//! berth over a unix socket. If berth dies, shims and apps keep running; the next berth
//! re-adopts them with [`ShimClient::connect`].
//!
//! Codemap: [`launch()`] starts a shim and waits for its report; [`shim`] is the shim
//! itself (setup, app spawn, output capture, poll loop); [`proto`] is the one place that
//! knows the wire format (socket requests and the launch report); [`client`] is berth's
//! async side of the socket; [`logs`] reads log files back (tail, follow); [`stats`]
//! samples CPU and RSS of process trees from /proc.
//!
//! **Invariant:** an app is only ever signalled on request (`signal`, `stop`); neither
//! the shim nor this crate kills anything on its own, and a shim outlives berth.
//!
//! This is the only crate allowed `unsafe` (fork/exec plumbing); every block says why it
//! is sound.

pub mod client;
pub mod launch;
pub mod logs;
pub mod proto;
pub mod shim;
pub mod stats;

pub use client::ShimClient;
pub use launch::{LaunchSpec, Launched, launch};
pub use proto::{ExitStatus, ShimStatus};

/// Errors of the instance driver.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start the shim for instance {instance}: {reason}")]
    Launch { instance: String, reason: String },
    #[error("cannot start {program:?}: {reason}")]
    Exec { program: String, reason: String },
    #[error("shim socket {path}: {source}")]
    Socket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("shim protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
