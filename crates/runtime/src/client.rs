//! berth's side of the shim protocol (async, tokio).
//!
//! One request at a time per [`ShimClient`]; open several clients to the same shim to
//! wait for the exit and send signals concurrently. Every call except `wait_exit` and
//! `stop` has a timeout. Cancelling a call (dropping its future, e.g. in `select!`) is
//! safe: the connection it used is dropped and the next call reconnects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::proto::{Request, Response};
use crate::{ExitStatus, RuntimeError, ShimStatus};

/// Connecting to a shim, and each quick request.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// `stop` waits this much longer than its own timeout (the SIGKILL, the group's end).
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// A connection to one instance's shim.
#[derive(Debug)]
pub struct ShimClient {
    socket: PathBuf,
    /// `None` after a failed or cancelled call; the next call reconnects.
    conn: Option<BufReader<UnixStream>>,
}

impl ShimClient {
    /// Connects to a shim's socket (also used to re-adopt after a restart of berth).
    /// Fails at once when the socket is missing or nobody listens on it (a stale file).
    pub async fn connect(socket: &Path) -> Result<ShimClient, RuntimeError> {
        let conn = open(socket).await?;
        Ok(ShimClient {
            socket: socket.to_path_buf(),
            conn: Some(conn),
        })
    }

    /// Current status of the app.
    pub async fn status(&mut self) -> Result<ShimStatus, RuntimeError> {
        match self.call(&Request::Status, Some(CALL_TIMEOUT)).await? {
            Response::Status { status } => Ok(status),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `signal` to the app's whole process group.
    pub async fn signal(&mut self, signal: i32) -> Result<(), RuntimeError> {
        match self
            .call(&Request::Signal { signal }, Some(CALL_TIMEOUT))
            .await?
        {
            Response::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Graceful stop, carried out by the shim even if berth dies meanwhile: `signal` to the
    /// group, then SIGKILL to the group after `timeout`. Returns once the app has exited.
    pub async fn stop(
        &mut self,
        signal: i32,
        timeout: Duration,
    ) -> Result<ExitStatus, RuntimeError> {
        let req = Request::Stop {
            signal,
            timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
        };
        match self.call(&req, Some(timeout + STOP_MARGIN)).await? {
            Response::Exited { exit } => Ok(exit),
            other => Err(unexpected(other)),
        }
    }

    /// Waits until the app exits (returns at once if it already has).
    pub async fn wait_exit(&mut self) -> Result<ExitStatus, RuntimeError> {
        match self.call(&Request::WaitExit, None).await? {
            Response::Exited { exit } => Ok(exit),
            other => Err(unexpected(other)),
        }
    }

    /// Tells the shim its exit status was recorded: the shim removes its socket and exits.
    /// Refused while the app runs.
    pub async fn release(mut self) -> Result<(), RuntimeError> {
        match self.call(&Request::Release, Some(CALL_TIMEOUT)).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn call(
        &mut self,
        req: &Request,
        timeout: Option<Duration>,
    ) -> Result<Response, RuntimeError> {
        let exchange = async {
            // Taken out for the duration of the call: if this future is dropped midway,
            // the half-used connection goes with it.
            let mut conn = match self.conn.take() {
                Some(conn) => conn,
                None => open(&self.socket).await?,
            };
            let mut line =
                serde_json::to_vec(req).map_err(|e| RuntimeError::Protocol(e.to_string()))?;
            line.push(b'\n');
            conn.get_mut().write_all(&line).await?;
            let mut reply = String::new();
            if conn.read_line(&mut reply).await? == 0 {
                return Err(RuntimeError::Protocol(
                    "the shim closed the connection".into(),
                ));
            }
            let resp: Response = serde_json::from_str(&reply).map_err(|e| {
                RuntimeError::Protocol(format!("bad reply {:?}: {e}", reply.trim()))
            })?;
            self.conn = Some(conn);
            Ok(resp)
        };
        match timeout {
            None => exchange.await,
            Some(t) => tokio::time::timeout(t, exchange).await.unwrap_or_else(|_| {
                Err(RuntimeError::Protocol(format!(
                    "no reply from the shim within {t:?}"
                )))
            }),
        }
    }
}

async fn open(socket: &Path) -> Result<BufReader<UnixStream>, RuntimeError> {
    let sock_err = |source| RuntimeError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    match tokio::time::timeout(CALL_TIMEOUT, UnixStream::connect(socket)).await {
        Ok(Ok(stream)) => Ok(BufReader::new(stream)),
        Ok(Err(e)) => Err(sock_err(e)),
        Err(_) => Err(sock_err(std::io::ErrorKind::TimedOut.into())),
    }
}

fn unexpected(resp: Response) -> RuntimeError {
    match resp {
        Response::Error { message } => RuntimeError::Protocol(message),
        other => RuntimeError::Protocol(format!("unexpected reply {other:?}")),
    }
}
