//! The app's stdout and stderr: split into lines (capped at [`MAX_LINE`]), stamped, and
//! written to the size-rotated log file. A complete line is written at once with one
//! `writev(2)`; only an unfinished line is held in memory.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::logs::{TIMESTAMP_LEN, rotated_path, timestamp};

/// Longer lines are split into pieces of this size, each a line of its own.
pub(super) const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static [u8; 6] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }
}

/// The instance's log file, rotated to `<file>.1` before a line would push it past
/// `max_bytes` (0: never rotated).
pub(super) struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl LogWriter {
    /// Opens (appends to) the log, creating its directory.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<LogWriter> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
        })
    }

    /// Writes `<time> <stream> <text>\n`. Errors (disk full, deleted directory) are
    /// swallowed: the app must not notice that its log is broken.
    pub fn write_line(&mut self, stream: Stream, text: &[u8]) {
        let mut prefix = [b' '; TIMESTAMP_LEN + 8];
        prefix[..TIMESTAMP_LEN].copy_from_slice(&timestamp(SystemTime::now()));
        prefix[TIMESTAMP_LEN + 1..TIMESTAMP_LEN + 7].copy_from_slice(stream.name());
        let len = (prefix.len() + text.len() + 1) as u64;
        if self.max_bytes > 0 && self.size > 0 && self.size + len > self.max_bytes {
            self.rotate();
        }
        if write_all_vectored(&mut self.file, &[&prefix, text, b"\n"]).is_ok() {
            self.size += len;
        }
    }

    fn rotate(&mut self) {
        let renamed = std::fs::rename(&self.path, rotated_path(&self.path)).is_ok();
        if renamed && let Ok(file) = open_append(&self.path) {
            self.file = file;
            self.size = 0;
            return;
        }
        // The directory is gone or unwritable: keep writing into the file we hold, but
        // keep it bounded.
        let _ = self.file.set_len(0);
        self.size = 0;
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `write_all` over several buffers, one `writev` in the common case.
fn write_all_vectored(file: &mut File, parts: &[&[u8]; 3]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
    while done < total {
        let mut skip = done;
        let mut slices = [IoSlice::new(&[]), IoSlice::new(&[]), IoSlice::new(&[])];
        for (slot, part) in slices.iter_mut().zip(parts) {
            let from = skip.min(part.len());
            skip -= from;
            *slot = IoSlice::new(&part[from..]);
        }
        match file.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One of the app's output pipes and its unfinished line.
pub(super) struct Capture<R> {
    stream: Stream,
    pipe: Option<R>,
    partial: Vec<u8>,
}

impl<R: Read + AsFd> Capture<R> {
    pub fn new(stream: Stream, pipe: R) -> Capture<R> {
        let _ = nix::fcntl::fcntl(
            pipe.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        Capture {
            stream,
            pipe: Some(pipe),
            partial: Vec::new(),
        }
    }

    /// The pipe while it is open (for poll).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(|p| p.as_fd())
    }

    /// Reads what is available (a bounded amount, so one chatty app cannot starve the
    /// socket); at EOF writes the last unfinished line and closes the pipe.
    pub fn read_available(&mut self, log: &mut LogWriter) {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            let Some(pipe) = self.pipe.as_mut() else {
                return;
            };
            match pipe.read(&mut buf) {
                Ok(0) => {
                    self.finish(log);
                    return;
                }
                Ok(n) => self.feed(&buf[..n], log),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.finish(log);
                    return;
                }
            }
        }
    }

    /// Reads everything buffered in the pipe right now (the app has exited, or the shim
    /// is about to).
    pub fn drain(&mut self, log: &mut LogWriter) {
        // Bounded: a live writer (a left-over group member) could keep it busy forever.
        for _ in 0..64 {
            if self.pipe.is_none() {
                return;
            }
            self.read_available(log);
        }
    }

    /// EOF (or the shim is going away): the unfinished line is written as it is.
    pub fn finish(&mut self, log: &mut LogWriter) {
        if !self.partial.is_empty() {
            log.write_line(self.stream, &self.partial);
            self.partial = Vec::new();
        }
        self.pipe = None;
    }

    fn feed(&mut self, mut data: &[u8], log: &mut LogWriter) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let line = &data[..nl];
                    if self.partial.is_empty() && line.len() <= MAX_LINE {
                        log.write_line(self.stream, line);
                    } else {
                        self.append(line, log);
                        log.write_line(self.stream, &self.partial);
                        self.partial.clear();
                        if self.partial.capacity() > 4096 {
                            self.partial = Vec::new();
                        }
                    }
                    data = &data[nl + 1..];
                }
                None => {
                    self.append(data, log);
                    data = &[];
                }
            }
        }
    }

    /// Adds bytes without a newline to the unfinished line, writing out full
    /// [`MAX_LINE`] pieces first.
    fn append(&mut self, mut bytes: &[u8], log: &mut LogWriter) {
        while !bytes.is_empty() {
            if self.partial.len() == MAX_LINE {
                log.write_line(self.stream, &self.partial);
                self.partial.clear();
            }
            let take = (MAX_LINE - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{LogLine, tail};

    fn capture() -> Capture<File> {
        Capture {
            stream: Stream::Stderr,
            pipe: None,
            partial: Vec::new(),
        }
    }

    #[test]
    fn splits_lines_across_reads_and_caps_long_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs/app.log");
        let mut log = LogWriter::open(&path, 0).expect("open");
        let mut cap = capture();
        cap.feed(b"hel", &mut log);
        cap.feed(b"lo\nwor", &mut log);
        cap.feed(b"ld\n\n", &mut log);
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        cap.feed(&long, &mut log);
        cap.feed(b"\nexact", &mut log);
        cap.feed(&vec![b'y'; MAX_LINE - 5], &mut log);
        cap.feed(b"\ntail", &mut log);
        cap.finish(&mut log);
        let lines = tail(&path, 100).expect("tail");
        let lens: Vec<usize> = lines.iter().map(|l| l.text.len()).collect();
        assert_eq!(lens, [5, 5, 0, MAX_LINE, MAX_LINE, 10, MAX_LINE, 4]);
        assert_eq!(lines[0].stream, "stderr");
        assert_eq!(lines[7].text, "tail");
        assert!(lines.iter().all(|l| l.time.ends_with('Z')));
    }

    #[test]
    fn rotates_before_exceeding_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.log");
        let mut log = LogWriter::open(&path, 200).expect("open");
        for i in 0..10 {
            log.write_line(Stream::Stdout, format!("line {i}").as_bytes());
        }
        let cur = std::fs::metadata(&path).expect("log").len();
        let old = std::fs::metadata(rotated_path(&path))
            .expect("rotated")
            .len();
        assert!(cur <= 200 && old <= 200, "{cur} {old}");
        let all: Vec<String> = tail(&path, 100)
            .expect("tail")
            .into_iter()
            .map(|l: LogLine| l.text)
            .collect();
        assert_eq!(all.last().map(String::as_str), Some("line 9"));
        // lines 0.. rotated away twice are gone; what is left is contiguous
        let first: usize = all[0][5..].parse().expect("number");
        assert_eq!(all.len(), 10 - first);
    }
}
