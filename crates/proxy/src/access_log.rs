//! The access log: one JSON line per request (time, service, instance, method, host,
//! path, status, bytes, duration, client), written by a dedicated thread.
//!
//! The request path only moves a [`Record`] (cheap clones, no formatting) into a bounded
//! channel with `try_send`; when the writer falls behind, records are dropped and
//! counted rather than slowing requests down. The file is bounded on disk: past
//! [`MAX_FILE_BYTES`] it is renamed to `<name>.1` (replacing the previous one) and a new
//! file is started, so at most two files of that size exist.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri};
use tokio::sync::mpsc;

use crate::ProxyError;

/// Size at which the log file is rotated.
pub(crate) const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Records buffered between the request path and the writer thread.
const CHANNEL_CAPACITY: usize = 16 * 1024;
/// How often the writer wakes up to drain the channel (so senders never wake it).
const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// One request, as the request path hands it over.
pub(crate) struct Record {
    pub(crate) time: SystemTime,
    pub(crate) service: Option<Arc<str>>,
    pub(crate) instance: Option<Arc<str>>,
    pub(crate) method: Method,
    /// `Host` header, else the URI's authority.
    pub(crate) host: Option<HeaderValue>,
    pub(crate) uri: Uri,
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    pub(crate) duration: Duration,
    pub(crate) client: IpAddr,
}

/// Handle to the writer thread; dropping the last one flushes and stops it.
pub(crate) struct AccessLog {
    tx: mpsc::Sender<Record>,
    pub(crate) dropped: Arc<AtomicU64>,
}

impl AccessLog {
    pub(crate) fn open(path: &Path) -> Result<Self, ProxyError> {
        let err = |source| ProxyError::AccessLog {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let writer = Writer::open(path.to_owned()).map_err(err)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("berth-access-log".into())
            .spawn(move || writer.run(rx))
            .map_err(err)?;
        Ok(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Never blocks; drops the record when the writer is behind.
    pub(crate) fn send(&self, record: Record) {
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
}

impl Writer {
    fn open(path: PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self { path, file, size })
    }

    fn run(mut self, mut rx: mpsc::Receiver<Record>) {
        let mut buf = String::with_capacity(64 * 1024);
        loop {
            let mut closed = false;
            loop {
                match rx.try_recv() {
                    Ok(record) => {
                        format_record(&mut buf, &record);
                        if buf.len() >= 60 * 1024 {
                            self.write(&mut buf);
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            self.write(&mut buf);
            if closed {
                return;
            }
            std::thread::sleep(WRITE_INTERVAL);
        }
    }

    fn write(&mut self, buf: &mut String) {
        if buf.is_empty() {
            return;
        }
        if let Err(e) = self.file.write_all(buf.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write access log");
        }
        self.size += buf.len() as u64;
        buf.clear();
        if self.size >= MAX_FILE_BYTES
            && let Err(e) = self.rotate()
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot rotate access log");
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        *self = Writer::open(self.path.clone())?;
        Ok(())
    }
}

fn format_record(out: &mut String, r: &Record) {
    out.push_str("{\"time\":\"");
    format_time(out, r.time);
    out.push_str("\",\"service\":");
    json_opt(out, r.service.as_deref());
    out.push_str(",\"instance\":");
    json_opt(out, r.instance.as_deref());
    out.push_str(",\"method\":");
    json_str(out, r.method.as_str());
    out.push_str(",\"host\":");
    let host = r
        .host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .or_else(|| r.uri.authority().map(|a| a.as_str()));
    json_opt(out, host);
    out.push_str(",\"path\":");
    json_str(out, r.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    let _ = write!(
        out,
        ",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3},\"client\":\"{}\"}}",
        r.status,
        r.bytes,
        r.duration.as_secs_f64() * 1000.0,
        r.client
    );
    out.push('\n');
}

fn json_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 in UTC with milliseconds.
fn format_time(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_record_as_json() {
        let mut out = String::new();
        let record = Record {
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            service: Some("web".into()),
            instance: None,
            method: Method::GET,
            host: Some(HeaderValue::from_static("a\"b\\.test:8080")),
            uri: "/x?q=1".parse().expect("uri"),
            status: 200,
            bytes: 12,
            duration: Duration::from_micros(1500),
            client: "127.0.0.1".parse().expect("ip"),
        };
        format_record(&mut out, &record);
        assert_eq!(
            out,
            "{\"time\":\"2023-11-14T22:13:20.123Z\",\"service\":\"web\",\"instance\":null,\
             \"method\":\"GET\",\"host\":\"a\\\"b\\\\.test:8080\",\"path\":\"/x?q=1\",\
             \"status\":200,\"bytes\":12,\"duration_ms\":1.500,\"client\":\"127.0.0.1\"}\n"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn rotates_past_the_limit() {
        let dir = std::env::temp_dir().join(format!("berth-alog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("access.log");
        let mut w = Writer::open(path.clone()).expect("open");
        let mut chunk = "x".repeat(1024 * 1024);
        for _ in 0..17 {
            w.write(&mut chunk);
            chunk = "x".repeat(1024 * 1024);
        }
        let old = dir.join("access.log.1");
        assert!(old.exists());
        assert!(std::fs::metadata(&old).expect("meta").len() >= MAX_FILE_BYTES);
        assert!(std::fs::metadata(&path).expect("meta").len() < MAX_FILE_BYTES);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
