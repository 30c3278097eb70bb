//! berth's side of the shim protocol (async).

use std::path::Path;
use std::time::Duration;

use crate::{ExitStatus, RuntimeError, ShimStatus};

/// A connection to one instance's shim.
#[derive(Debug)]
pub struct ShimClient {}

impl ShimClient {
    /// Connects to a shim's socket (also used to re-adopt after a restart of berth).
    pub async fn connect(_socket: &Path) -> Result<ShimClient, RuntimeError> {
        Err(RuntimeError::Protocol("not implemented".into()))
    }

    /// Current status of the app.
    pub async fn status(&mut self) -> Result<ShimStatus, RuntimeError> {
        Err(RuntimeError::Protocol("not implemented".into()))
    }

    /// Sends `signal` to the app's whole process group.
    pub async fn signal(&mut self, _signal: i32) -> Result<(), RuntimeError> {
        Err(RuntimeError::Protocol("not implemented".into()))
    }

    /// Graceful stop, carried out by the shim even if berth dies meanwhile: `signal` to the
    /// group, then SIGKILL to the group after `timeout`. Returns once the app has exited.
    pub async fn stop(&mut self, _signal: i32, _timeout: Duration) -> Result<ExitStatus, RuntimeError> {
        Err(RuntimeError::Protocol("not implemented".into()))
    }

    /// Waits until the app exits (returns at once if it already has).
    pub async fn wait_exit(&mut self) -> Result<ExitStatus, RuntimeError> {
        Err(RuntimeError::Protocol("not implemented".into()))
    }

    /// Tells the shim its exit status was recorded: the shim removes its socket and exits.
    pub async fn release(self) -> Result<(), RuntimeError> {
        Err(RuntimeError::Protocol("not implemented".into()))
    }
}
