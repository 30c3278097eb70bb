//! Health probes (`[services.X.health]`): HTTP, TCP and command checks, each bounded by
//! its timeout, each failure with a reason a person can act on ("GET /healthz got 503",
//! "connect: connection refused", "command exited 1: <last line>").
//!
//! The counting (thresholds) is the controller's; this module only runs one probe.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use spec::HealthCheck;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One probe of `check` against an instance on 127.0.0.1:`port`. `Err` says why it failed.
pub async fn probe(
    check: &HealthCheck,
    port: Option<u16>,
    timeout: Duration,
    dir: &Path,
    env: &[(String, String)],
) -> Result<(), String> {
    let what = describe(check);
    match tokio::time::timeout(timeout, run(check, port, dir, env)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{what} timed out after {}",
            spec::format_duration(timeout)
        )),
    }
}

/// `GET /healthz`, `TCP connect`, `command "…"`.
pub fn describe(check: &HealthCheck) -> String {
    match check {
        HealthCheck::Http { path, .. } => format!("GET {path}"),
        HealthCheck::Tcp => "TCP connect".into(),
        HealthCheck::Command(c) => format!("command {c:?}"),
    }
}

async fn run(
    check: &HealthCheck,
    port: Option<u16>,
    dir: &Path,
    env: &[(String, String)],
) -> Result<(), String> {
    let addr = || {
        port.map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .ok_or_else(|| "the instance has no port".to_owned())
    };
    match check {
        HealthCheck::Tcp => {
            let addr = addr()?;
            tokio::net::TcpStream::connect(addr)
                .await
                .map(|_| ())
                .map_err(|e| format!("TCP connect to {addr}: {e}"))
        }
        HealthCheck::Http { path, status, host } => {
            let addr = addr()?;
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("GET {path}: connect to {addr}: {e}"))?;
            let host = host.as_deref().unwrap_or("localhost");
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-health\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
            let mut line = String::new();
            BufReader::new(s)
                .read_line(&mut line)
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
            let code: u16 = line
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("GET {path}: not an HTTP answer: {:?}", line.trim_end()))?;
            if status.contains(code) {
                Ok(())
            } else {
                Err(format!("GET {path} got {code}"))
            }
        }
        HealthCheck::Command(cmd) => {
            let out = tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(dir)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| format!("command {cmd:?}: cannot run: {e}"))?;
            if out.status.success() {
                return Ok(());
            }
            let text = String::from_utf8_lossy(if out.stderr.is_empty() {
                &out.stdout
            } else {
                &out.stderr
            });
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let code = out
                .status
                .code()
                .map(|c| format!("exited {c}"))
                .unwrap_or_else(|| "was killed".into());
            Err(format!("command {cmd:?} {code}: {}", last.trim()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::StatusRange;
    use tokio::io::AsyncReadExt;

    async fn server(status: u16) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        port
    }

    fn http(path: &str) -> HealthCheck {
        HealthCheck::Http {
            path: path.into(),
            status: StatusRange { min: 200, max: 399 },
            host: None,
        }
    }

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn http_accepts_the_status_range_and_names_the_failure() {
        let dir = std::env::temp_dir();
        let ok = server(204).await;
        assert_eq!(probe(&http("/h"), Some(ok), T, &dir, &[]).await, Ok(()));
        let bad = server(503).await;
        assert_eq!(
            probe(&http("/healthz"), Some(bad), T, &dir, &[]).await,
            Err("GET /healthz got 503".into())
        );
        let closed = testkit_free_port();
        let e = probe(&http("/h"), Some(closed), T, &dir, &[])
            .await
            .unwrap_err();
        assert!(e.contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let e = probe(
            &http("/h"),
            Some(port),
            Duration::from_millis(200),
            &std::env::temp_dir(),
            &[],
        )
        .await
        .unwrap_err();
        assert_eq!(e, "GET /h timed out after 200ms");
        drop(l);
    }

    #[tokio::test]
    async fn commands_pass_on_exit_0_and_report_their_output() {
        let dir = std::env::temp_dir();
        let env = vec![("X".to_owned(), "hello".to_owned())];
        let ok = HealthCheck::Command("test \"$X\" = hello".into());
        assert_eq!(probe(&ok, None, T, &dir, &env).await, Ok(()));
        let bad = HealthCheck::Command("echo db down >&2; exit 3".into());
        assert_eq!(
            probe(&bad, None, T, &dir, &env).await,
            Err("command \"echo db down >&2; exit 3\" exited 3: db down".into())
        );
    }

    fn testkit_free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}
