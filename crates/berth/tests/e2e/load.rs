//! A continuous HTTP load through berth's proxy for zero-downtime tests: several client
//! threads, half on keep-alive connections and half opening a fresh connection per
//! request, recording every failure (connection error or non-2xx) and which app version
//! answered.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub failures: Vec<String>,
    /// `version=…` value → responses.
    pub versions: BTreeMap<String, u64>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Tally>>,
}

impl Load {
    pub fn start(addr: &str, host: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let threads = (0..threads)
            .map(|n| {
                let (stop, sent) = (stop.clone(), sent.clone());
                let (addr, host) = (addr.to_owned(), host.to_owned());
                std::thread::spawn(move || run(&addr, &host, n % 2 == 0, &stop, &sent))
            })
            .collect();
        Load {
            stop,
            sent,
            threads,
        }
    }

    /// Waits until at least `n` more requests were sent (so a step ran under load).
    pub fn wait_requests(&self, n: u64) {
        let target = self.sent.load(Ordering::Relaxed) + n;
        testkit::eventually(testkit::DEADLINE, "requests to flow", || {
            let s = self.sent.load(Ordering::Relaxed);
            if s >= target {
                Ok(())
            } else {
                Err(format!("{s} sent"))
            }
        });
    }

    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for t in self.threads {
            let t = t.join().expect("load thread");
            total.ok += t.ok;
            total.failures.extend(t.failures);
            for (v, n) in t.versions {
                *total.versions.entry(v).or_default() += n;
            }
        }
        total
    }
}

fn run(addr: &str, host: &str, keep_alive: bool, stop: &AtomicBool, sent: &AtomicU64) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match TcpStream::connect(addr) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                    s.set_nodelay(true).ok();
                    conn = Some(BufReader::new(s));
                }
                Err(e) => {
                    tally.failures.push(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        sent.fetch_add(1, Ordering::Relaxed);
        match request(c, host, keep_alive) {
            Ok((status, body, server_closes)) => {
                if (200..300).contains(&status) {
                    tally.ok += 1;
                    let version = body
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("version="))
                        .unwrap_or("?")
                        .to_owned();
                    *tally.versions.entry(version).or_default() += 1;
                } else {
                    tally
                        .failures
                        .push(format!("status {status}: {}", body.trim()));
                }
                if !keep_alive || server_closes {
                    conn = None;
                }
            }
            Err(e) => {
                tally.failures.push(format!("request: {e}"));
                conn = None;
            }
        }
    }
    tally
}

fn request(
    c: &mut BufReader<TcpStream>,
    host: &str,
    keep_alive: bool,
) -> std::io::Result<(u16, String, bool)> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(
        c.get_mut(),
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: {connection}\r\n\r\n"
    )?;
    let mut line = String::new();
    if c.read_line(&mut line)? == 0 {
        return Err(std::io::Error::other("connection closed before a response"));
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut closes = false;
    loop {
        line.clear();
        c.read_line(&mut line)?;
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse().ok();
        } else if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        } else if l.starts_with("connection:") && l.contains("close") {
            closes = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            c.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
            let mut chunk = vec![0; size + 2];
            c.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        c.read_exact(&mut body)?;
    } else {
        c.read_to_end(&mut body)?;
        closes = true;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned(), closes))
}
