//! The app bench/deploy runs as instances (std only; compiled by `run` with rustc).
//!
//! The same interface as berth's `berth-test-app` for what the benchmark uses, on
//! `127.0.0.1:$PORT`, HTTP/1.1 keep-alive:
//! - `GET /` → `service=… instance=… release=… version=<./VERSION, read at start>`
//! - `GET /healthz` → 200, or the status in a `HEALTH_STATUS` file in the working directory
//!
//! Unlike `berth-test-app`, it answers each request with a single write on a TCP_NODELAY
//! socket: `berth-test-app` writes the head and the body separately, so on a keep-alive
//! connection Nagle's algorithm holds the body until the peer's delayed ACK (~40 ms):
//! ~44 ms per request, ~450 requests/s with 20 connections, which would make the load
//! light and the polling client's resolution ~45 ms.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

fn main() {
    let port = std::env::var("PORT").expect("PORT");
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).unwrap_or_else(|e| {
        eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
        std::process::exit(1);
    });
    let env = |n: &str| std::env::var(n).unwrap_or_default();
    let version = std::fs::read_to_string("VERSION").unwrap_or_default();
    let root: Arc<str> = format!(
        "service={} instance={} release={} version={}\n",
        env("BERTH_SERVICE"),
        env("BERTH_INSTANCE"),
        env("BERTH_RELEASE"),
        version.trim()
    )
    .into();
    println!("listening on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        let root = root.clone();
        std::thread::spawn(move || {
            let _ = connection(stream, &root);
        });
    }
}

fn connection(stream: TcpStream, root: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
        let (mut content_length, mut close) = (0u64, false);
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        std::io::copy(&mut (&mut reader).take(content_length), &mut std::io::sink())?;
        let (status, body) = match path.split('?').next().unwrap_or("") {
            "/" => (200, root.to_owned()),
            "/healthz" => (
                std::fs::read_to_string("HEALTH_STATUS")
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(200u16),
                "health\n".to_owned(),
            ),
            _ => (404, "not found\n".to_owned()),
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        out.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}
