//! Instance log files: the on-disk line format (written by the shim, read back here), the
//! last N lines, and following a log across rotation.
//!
//! Each line on disk: `<RFC3339 UTC with ms> <stdout|stderr> <text>\n`, e.g.
//! `2026-11-22T10:00:00.123Z stdout listening on :8080`. The shim writes every line with
//! one `write(2)` on an `O_APPEND` file and rotates `<file>` to `<file>.1` (one old
//! generation) when the file would exceed its size limit. This module is the only place
//! that knows the format; it never writes log files.
//!
//! **Following** (`berth logs -f`): take a [`LogCursor`] from [`tail_with_cursor`] (or
//! [`LogCursor::default`] to start at the beginning of the current file) and call
//! [`read_after`] periodically. The cursor names a file by inode and a byte offset, so a
//! rotation between two polls is noticed: the rest of the old file (now `<file>.1`) is
//! read first, then the new file from its start. Lines rotated away twice between two
//! polls are skipped.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// One log line read back from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// RFC 3339 UTC with milliseconds, as written.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub text: String,
}

impl LogLine {
    /// Parses one line (without its `\n`). A line not in the format (a file edited by
    /// hand) comes back whole as `text` with empty `time` and `stream`.
    pub fn parse(line: &str) -> LogLine {
        let mut parts = line.splitn(3, ' ');
        let (time, stream, text) = (parts.next(), parts.next(), parts.next());
        match (time, stream) {
            (Some(time), Some(stream))
                if time.len() == TIMESTAMP_LEN
                    && time.ends_with('Z')
                    && (stream == "stdout" || stream == "stderr") =>
            {
                LogLine {
                    time: time.to_owned(),
                    stream: stream.to_owned(),
                    text: text.unwrap_or("").to_owned(),
                }
            }
            _ => LogLine {
                time: String::new(),
                stream: String::new(),
                text: line.to_owned(),
            },
        }
    }
}

/// Length of a timestamp such as `2026-11-22T10:00:00.123Z`.
pub const TIMESTAMP_LEN: usize = 24;

/// Formats `t` as RFC 3339 UTC with milliseconds, without allocating.
pub fn timestamp(t: SystemTime) -> [u8; TIMESTAMP_LEN] {
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()) as u64;
    let secs = ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, sod / 3600);
    put(14, 2, sod % 3600 / 60);
    put(17, 2, sod % 60);
    put(20, 3, ms % 1000);
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `<file>.1`, where the previous generation of a log lives.
pub fn rotated_path(log_file: &Path) -> PathBuf {
    let mut name = OsString::from(log_file.as_os_str());
    name.push(".1");
    PathBuf::from(name)
}

/// The files that hold an instance's log, oldest first (only those that exist).
pub fn log_files(log_file: &Path) -> Vec<PathBuf> {
    [rotated_path(log_file), log_file.to_path_buf()]
        .into_iter()
        .filter(|p| p.exists())
        .collect()
}

/// The last `n` lines of an instance's log (its rotated file included).
pub fn tail(log_file: &Path, n: usize) -> io::Result<Vec<LogLine>> {
    tail_with_cursor(log_file, n).map(|(lines, _)| lines)
}

/// Where a follower of a log stands: a file (by inode) and a byte offset in it, always at
/// a line boundary. `Default` means "the start of whatever file is current".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCursor {
    inode: u64,
    offset: u64,
}

/// The last `n` lines, and a cursor just after them for [`read_after`]. A missing log is
/// empty.
pub fn tail_with_cursor(log_file: &Path, n: usize) -> io::Result<(Vec<LogLine>, LogCursor)> {
    let (mut lines, cursor) = match open_existing(log_file)? {
        Some(mut file) => {
            let inode = file.metadata()?.ino();
            let (lines, end) = last_lines(&mut file, n)?;
            (lines, LogCursor { inode, offset: end })
        }
        None => (Vec::new(), LogCursor::default()),
    };
    if lines.len() < n
        && let Some(mut old) = open_existing(&rotated_path(log_file))?
    {
        let (mut older, _) = last_lines(&mut old, n - lines.len())?;
        older.append(&mut lines);
        lines = older;
    }
    Ok((lines.iter().map(|l| LogLine::parse(l)).collect(), cursor))
}

/// At most this much is read by one [`read_after`] call, so a follower far behind catches
/// up in bounded steps.
const READ_LIMIT: u64 = 1 << 20;

/// The complete lines written after `cursor`, which moves past them. Call it again until
/// it returns nothing to catch up; then poll it (e.g. every 250 ms) to follow the log.
pub fn read_after(log_file: &Path, cursor: &mut LogCursor) -> io::Result<Vec<LogLine>> {
    let mut raw = Vec::new();
    let Some(mut file) = open_existing(log_file)? else {
        return Ok(Vec::new());
    };
    let inode = file.metadata()?.ino();
    if cursor.inode != inode {
        // Rotated since the last call: finish the old generation first.
        if cursor.inode != 0
            && let Some(mut old) = open_existing(&rotated_path(log_file))?
            && old.metadata()?.ino() == cursor.inode
        {
            let (lines, offset) = lines_from(&mut old, cursor.offset, READ_LIMIT)?;
            let complete = offset >= old.metadata()?.len();
            cursor.offset = offset;
            raw = lines;
            if !complete {
                return Ok(raw.iter().map(|l| LogLine::parse(l)).collect());
            }
        }
        *cursor = LogCursor { inode, offset: 0 };
    }
    if cursor.offset > file.metadata()?.len() {
        cursor.offset = 0; // truncated by hand
    }
    let (mut lines, offset) = lines_from(&mut file, cursor.offset, READ_LIMIT)?;
    cursor.offset = offset;
    raw.append(&mut lines);
    Ok(raw.iter().map(|l| LogLine::parse(l)).collect())
}

fn open_existing(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Complete lines from `offset`, reading at most `limit` bytes; returns them and the
/// offset after the last one.
fn lines_from(file: &mut File, offset: u64, limit: u64) -> io::Result<(Vec<String>, u64)> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.take(limit).read_to_end(&mut buf)?;
    let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
        return Ok((Vec::new(), offset));
    };
    let lines = split_lines(&buf[..last_nl]);
    Ok((lines, offset + last_nl as u64 + 1))
}

fn split_lines(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == b'\n')
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

/// The last `n` complete lines of `file`, read backwards in blocks, and the offset just
/// after the last complete line.
fn last_lines(file: &mut File, n: usize) -> io::Result<(Vec<String>, u64)> {
    const BLOCK: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    let mut end: Option<u64> = None; // just after the last '\n'
    let mut start = 0;
    let mut found = 0;
    let mut pos = len;
    let mut block = Vec::new();
    'scan: while pos > 0 {
        let from = pos.saturating_sub(BLOCK);
        block.resize((pos - from) as usize, 0);
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut block)?;
        for (i, &b) in block.iter().enumerate().rev() {
            if b != b'\n' {
                continue;
            }
            let at = from + i as u64;
            if end.is_none() {
                end = Some(at + 1);
                if n == 0 {
                    break 'scan;
                }
            } else {
                found += 1;
                if found == n {
                    start = at + 1;
                    break 'scan;
                }
            }
        }
        pos = from;
    }
    let Some(end) = end else {
        return Ok((Vec::new(), 0));
    };
    if n == 0 {
        return Ok((Vec::new(), end));
    }
    let mut buf = vec![0; (end - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut buf)?;
    buf.pop(); // the final '\n'
    Ok((split_lines(&buf), end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn ts(ms: u64) -> String {
        String::from_utf8(timestamp(UNIX_EPOCH + Duration::from_millis(ms)).to_vec())
            .expect("ascii")
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        assert_eq!(ts(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(ts(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(ts(1_795_341_600_123), "2026-11-22T10:00:00.123Z");
        assert_eq!(ts(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn parse_round_trips_and_tolerates_foreign_lines() {
        let l = LogLine::parse("2026-11-22T10:00:00.123Z stderr oops: a b  c");
        assert_eq!(l.stream, "stderr");
        assert_eq!(l.text, "oops: a b  c");
        assert_eq!(LogLine::parse("2026-11-22T10:00:00.123Z stdout ").text, "");
        let odd = LogLine::parse("hello world");
        assert_eq!((odd.time.as_str(), odd.text.as_str()), ("", "hello world"));
    }

    fn write_lines(path: &Path, range: std::ops::Range<usize>) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        for i in range {
            writeln!(f, "2026-11-22T10:00:00.000Z stdout line {i}").expect("write");
        }
    }

    fn texts(lines: &[LogLine]) -> Vec<String> {
        lines.iter().map(|l| l.text.clone()).collect()
    }

    #[test]
    fn tail_reads_backwards_across_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("app.log");
        assert!(tail(&log, 5).expect("tail").is_empty());
        write_lines(&rotated_path(&log), 0..5000);
        write_lines(&log, 5000..5003);
        let got = tail(&log, 5).expect("tail");
        assert_eq!(
            texts(&got),
            [
                "line 4998",
                "line 4999",
                "line 5000",
                "line 5001",
                "line 5002"
            ]
        );
        assert_eq!(tail(&log, 2).expect("tail").len(), 2);
        assert_eq!(tail(&log, 100_000).expect("tail").len(), 5003);
        assert!(tail(&log, 0).expect("tail").is_empty());
    }

    #[test]
    fn read_after_follows_across_rotation_and_skips_partial_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("app.log");
        write_lines(&log, 0..3);
        let (lines, mut cursor) = tail_with_cursor(&log, 1).expect("tail");
        assert_eq!(texts(&lines), ["line 2"]);
        assert!(read_after(&log, &mut cursor).expect("read").is_empty());
        write_lines(&log, 3..5);
        // a line still being written is not returned yet
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(b"2026-11-22T10:00:00.000Z stdout par"))
            .expect("write");
        assert_eq!(
            texts(&read_after(&log, &mut cursor).expect("read")),
            ["line 3", "line 4"]
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(b"tial\n"))
            .expect("write");
        // rotate, then more lines in the new file
        std::fs::rename(&log, rotated_path(&log)).expect("rotate");
        write_lines(&log, 5..7);
        assert_eq!(
            texts(&read_after(&log, &mut cursor).expect("read")),
            ["partial", "line 5", "line 6"]
        );
        assert!(read_after(&log, &mut cursor).expect("read").is_empty());
        let mut from_start = LogCursor::default();
        assert_eq!(read_after(&log, &mut from_start).expect("read").len(), 2);
    }
}
