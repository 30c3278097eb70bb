//! `berth-test-app`: the app berth's end-to-end tests run as instances. std only.
//!
//! With `PORT` set it serves HTTP/1.1 (keep-alive) on `127.0.0.1:$PORT` (or `$BIND`):
//! - `GET /` → `service=… instance=… release=… version=…` (version from `APP_VERSION`,
//!   else from a `VERSION` file in the working directory)
//! - `GET /env/NAME` → the value of env var NAME (404 if unset)
//! - `GET /pid` → its pid; `GET /uid` → its real uid
//! - `GET /headers` → the request head as received
//! - `GET /healthz` → 200, or the status in a `HEALTH_STATUS.<instance id>` file, in
//!   `HEALTH_STATUS` (env), or in a `HEALTH_STATUS` file (working directory), read on
//!   every request
//! - `GET /sleep/MS` → answers after MS milliseconds
//! - `GET /exit/CODE` → exits with CODE
//! - `POST /echo` → the request body
//!
//! Without `PORT` it is a worker printing `tick N` every `TICK_MS` (default 200).
//! Flags: `--exit N` exits at once with code N; `--exit-after MS` exits with code 1
//! after MS; `--print TEXT` prints TEXT to stdout at start and `--eprint TEXT` to stderr;
//! `--no-listen` never opens the port; an `EXIT_AT_START` file in the working directory
//! makes it exit with code 1 at once; `--fork-child` starts a `sleep 1000` child in the
//! same process group (to test group stops).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    if std::path::Path::new("EXIT_AT_START").exists() {
        eprintln!("EXIT_AT_START found: exiting");
        std::process::exit(1);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut no_listen = false;
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--exit" => std::process::exit(value.parse().unwrap_or(1)),
            "--exit-after" => {
                let ms = value.parse().unwrap_or(100);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(ms));
                    println!("exiting after {ms}ms");
                    std::process::exit(1);
                });
                i += 1;
            }
            "--print" => {
                println!("{value}");
                i += 1;
            }
            "--eprint" => {
                eprintln!("{value}");
                i += 1;
            }
            "--no-listen" => no_listen = true,
            "--fork-child" => {
                let child = std::process::Command::new("sleep").arg("1000").spawn();
                if let Ok(c) = child {
                    println!("child {}", c.id());
                }
            }
            other => {
                eprintln!("berth-test-app: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    let _ = std::io::stdout().flush();

    let port = std::env::var("PORT").ok();
    match port {
        Some(port) if !no_listen => serve(&port),
        _ => worker(),
    }
}

fn worker() -> ! {
    let tick: u64 = std::env::var("TICK_MS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(200);
    let mut n = 0u64;
    loop {
        println!("tick {n}");
        n += 1;
        std::thread::sleep(Duration::from_millis(tick));
    }
}

fn serve(port: &str) {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1".into());
    let listener = match TcpListener::bind(format!("{bind}:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {bind}:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {bind}:{port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = connection(stream);
        });
    }
}

fn connection(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut head = String::new();
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request_line = line.trim_end().to_owned();
        head.push_str(&line);
        let mut content_length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            head.push_str(&line);
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body)?;
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("/");
        let (status, reply) = respond(method, path, &head, body);
        // Head and body in one write: two small writes on a keep-alive connection would
        // wait for a delayed ACK (Nagle), ~40 ms per request.
        let mut response = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{}\r\n",
            reply.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        response.extend_from_slice(&reply);
        out.write_all(&response)?;
        if close {
            return Ok(());
        }
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// An env var, else the trimmed contents of a file of that name in the working directory.
fn setting(env_name: &str, file: &str) -> String {
    std::env::var(env_name)
        .ok()
        .or_else(|| std::fs::read_to_string(file).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn respond(method: &str, path: &str, head: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let path = path.split('?').next().unwrap_or(path);
    if method == "POST" && path == "/echo" {
        return (200, body);
    }
    if path == "/" {
        let text = format!(
            "service={} instance={} release={} version={}\n",
            env("BERTH_SERVICE"),
            env("BERTH_INSTANCE"),
            env("BERTH_RELEASE"),
            setting("APP_VERSION", "VERSION")
        );
        return (200, text.into_bytes());
    }
    if path == "/uid" {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("?");
        return (200, uid.as_bytes().to_vec());
    }
    if path == "/pid" {
        return (200, std::process::id().to_string().into_bytes());
    }
    if path == "/headers" {
        return (200, head.as_bytes().to_vec());
    }
    if path == "/healthz" {
        // A per-instance file makes one instance sick while its siblings stay well.
        let own = format!("HEALTH_STATUS.{}", env("BERTH_INSTANCE"));
        let status = std::fs::read_to_string(own)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| setting("HEALTH_STATUS", "HEALTH_STATUS"))
            .parse()
            .unwrap_or(200);
        return (status, b"health\n".to_vec());
    }
    if let Some(name) = path.strip_prefix("/env/") {
        return match std::env::var(name) {
            Ok(v) => (200, v.into_bytes()),
            Err(_) => (404, b"unset".to_vec()),
        };
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        return (200, b"slept\n".to_vec());
    }
    if let Some(code) = path.strip_prefix("/exit/") {
        std::process::exit(code.parse().unwrap_or(1));
    }
    (404, b"not found\n".to_vec())
}
