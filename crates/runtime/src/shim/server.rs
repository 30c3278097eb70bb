//! The shim's poll loop: SIGCHLD (signalfd), the app's two output pipes, the listening
//! socket and its clients, and the stop deadline. All state of one instance lives in
//! [`Shim`]; each request is answered from it (see `proto::Request` for the semantics).
//!
//! Stop: `signal` to the group; at the deadline SIGKILL to the group if the leader still
//! runs; once the leader is gone, SIGKILL to whatever is left of the group. Replies to
//! `stop` and `wait_exit` go out when the leader has been reaped and, during a stop, its
//! group is empty (or [`GROUP_SETTLE`] has passed).

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::linux::fs::MetadataExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, killpg};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::output::{Capture, LogWriter, Stream};
use super::spawn;
use crate::launch::LaunchSpec;
use crate::proto::{LaunchReport, Request, Response};
use crate::{ExitStatus, ShimStatus};

/// More connections than this at once are refused (berth needs one or two).
const MAX_CLIENTS: usize = 16;
/// A request line longer than this closes the connection.
const MAX_REQUEST: usize = 64 * 1024;
/// A client that does not read its replies is dropped past this.
const MAX_PENDING_OUT: usize = 256 * 1024;
/// After a stop killed the group: how long replies wait for the group to vanish.
const GROUP_SETTLE: Duration = Duration::from_secs(2);
/// After the leader exited on its own: how often to look whether its group is empty
/// (afterwards the pgid is never signalled again: it may be reused).
const GROUP_RECHECK: Duration = Duration::from_secs(5);
/// While waiting for a killed group to vanish.
const SETTLE_RECHECK: Duration = Duration::from_millis(20);

/// The socket file this shim created (so it never deletes a successor's).
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn remove_if_ours(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && m.st_dev() == self.dev
            && m.st_ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A stop in progress.
struct Stop {
    signal: Signal,
    /// SIGKILL to the group then, if the leader still runs.
    kill_at: Instant,
    killed: bool,
    /// Set when the leader is gone: replies stop waiting for the group after this.
    settle_by: Option<Instant>,
}

struct Client {
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// A `wait_exit` or `stop` is pending: later requests wait behind it.
    waiting: bool,
    /// Replied to `release`: the shim exits once this reply is out.
    released: bool,
    dead: bool,
}

impl Client {
    fn send(&mut self, resp: &Response) {
        if serde_json::to_writer(&mut self.out, resp).is_ok() {
            self.out.push(b'\n');
        }
        self.flush();
    }

    fn flush(&mut self) {
        while !self.out.is_empty() && !self.dead {
            match self.stream.write(&self.out) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => self.dead = true,
            }
        }
        if self.out.len() > MAX_PENDING_OUT {
            self.dead = true;
        }
        if self.out.is_empty() && self.out.capacity() > 4096 {
            self.out = Vec::new();
        }
    }

    fn read_available(&mut self) {
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    if self.inbuf.len() > MAX_REQUEST {
                        self.dead = true;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
    }

    fn next_line(&mut self) -> Option<Vec<u8>> {
        let nl = self.inbuf.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.inbuf.drain(..=nl).collect();
        line.pop();
        Some(line)
    }
}

/// One instance: its app, its log, its socket and clients.
pub(super) struct Shim {
    socket: SocketFile,
    listener: UnixListener,
    sigfd: SignalFd,
    shim_pid: u32,
    /// The app's pid, which is also its process group id.
    pid: Pid,
    started_at_ms: u64,
    exit: Option<ExitStatus>,
    /// The leader has exited and `killpg(pid, 0)` found no one: never signal it again.
    group_gone: bool,
    next_group_check: Option<Instant>,
    stop: Option<Stop>,
    stdout: Capture<ChildStdout>,
    stderr: Capture<ChildStderr>,
    log: LogWriter,
    clients: Vec<Client>,
}

impl Shim {
    /// Sets up everything and starts the app; on error nothing is left behind.
    pub fn start(spec: LaunchSpec) -> Result<Shim, LaunchReport> {
        let failed = |what: &str, e: &dyn std::fmt::Display| LaunchReport::Failed {
            reason: format!("{what}: {e}"),
        };
        // Orphaned descendants of the app (a daemonizing child) become ours to reap.
        nix::sys::prctl::set_child_subreaper(true).map_err(|e| failed("subreaper", &e))?;
        let mut chld = SigSet::empty();
        chld.add(Signal::SIGCHLD);
        // Blocked so that it is only seen through the signalfd; `spawn` gives the app an
        // empty signal mask again.
        chld.thread_block()
            .map_err(|e| failed("blocking SIGCHLD", &e))?;
        let sigfd = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| failed("signalfd", &e))?;
        let (listener, socket) = bind(&spec.socket)
            .map_err(|e| failed(&format!("socket {}", spec.socket.display()), &e))?;
        let log = match LogWriter::open(&spec.log_file, spec.log_max_bytes) {
            Ok(log) => log,
            Err(e) => {
                socket.remove_if_ours();
                return Err(failed(&format!("log file {}", spec.log_file.display()), &e));
            }
        };
        let started_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let app = match spawn::start(&spec) {
            Ok(app) => app,
            Err(report) => {
                socket.remove_if_ours();
                return Err(report);
            }
        };
        Ok(Shim {
            socket,
            listener,
            sigfd,
            shim_pid: std::process::id(),
            pid: Pid::from_raw(app.pid as i32),
            started_at_ms,
            exit: None,
            group_gone: false,
            next_group_check: None,
            stop: None,
            stdout: Capture::new(Stream::Stdout, app.stdout),
            stderr: Capture::new(Stream::Stderr, app.stderr),
            log,
            clients: Vec::new(),
        })
    }

    pub fn launch_report(&self) -> LaunchReport {
        LaunchReport::Started {
            shim_pid: self.shim_pid,
            pid: self.pid.as_raw() as u32,
            started_at_ms: self.started_at_ms,
        }
    }

    fn status(&self) -> ShimStatus {
        ShimStatus {
            shim_pid: self.shim_pid,
            pid: self.pid.as_raw() as u32,
            started_at_ms: self.started_at_ms,
            exit: self.exit,
        }
    }

    /// Runs until released.
    pub fn run(mut self) -> ! {
        loop {
            self.poll_once();
            self.on_timers(Instant::now());
            self.answer_waiters();
            for i in 0..self.clients.len() {
                self.serve(i);
            }
            if let Some(i) = self.clients.iter().position(|c| c.released && !c.dead) {
                self.exit_released(i);
            }
            self.clients.retain(|c| !c.dead);
        }
    }

    fn poll_once(&mut self) {
        let timeout = self.poll_timeout(Instant::now());
        let (sig, listen, out, err, client_events) = {
            let ready = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
            let mut fds = Vec::with_capacity(4 + self.clients.len());
            fds.push(PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN));
            let accepting = self.clients.len() < MAX_CLIENTS;
            if accepting {
                fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
            }
            let out_at = self.stdout.fd().map(|fd| {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                fds.len() - 1
            });
            let err_at = self.stderr.fd().map(|fd| {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                fds.len() - 1
            });
            let first_client = fds.len();
            for c in &self.clients {
                let mut events = PollFlags::POLLIN;
                if !c.out.is_empty() {
                    events |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(c.stream.as_fd(), events));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => return,
                // Cannot happen with valid fds; do not spin if it does.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
            let has = |i: usize, f: PollFlags| fds[i].revents().is_some_and(|r| r.intersects(f));
            let clients: Vec<PollFlags> = fds[first_client..]
                .iter()
                .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
                .collect();
            (
                has(0, PollFlags::POLLIN),
                accepting && has(1, PollFlags::POLLIN),
                out_at.is_some_and(|i| has(i, ready)),
                err_at.is_some_and(|i| has(i, ready)),
                clients,
            )
        };
        if sig {
            while let Ok(Some(_)) = self.sigfd.read_signal() {}
            self.reap();
        }
        if out {
            self.stdout.read_available(&mut self.log);
        }
        if err {
            self.stderr.read_available(&mut self.log);
        }
        for (c, ev) in self.clients.iter_mut().zip(client_events) {
            if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                c.read_available();
            }
            if ev.contains(PollFlags::POLLOUT) {
                c.flush();
            }
        }
        if listen {
            self.accept();
        }
    }

    fn poll_timeout(&self, now: Instant) -> PollTimeout {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(stop) = &self.stop {
            if self.exit.is_none() && !stop.killed {
                consider(stop.kill_at);
            }
            if let Some(settle_by) = stop.settle_by
                && !self.group_gone
                && now < settle_by
            {
                consider((now + SETTLE_RECHECK).min(settle_by));
            }
        }
        if let Some(t) = self.next_group_check {
            consider(t);
        }
        match next {
            None => PollTimeout::NONE,
            Some(t) => {
                // Round up so the loop does not spin just before a deadline.
                let ms = t.saturating_duration_since(now).as_micros().div_ceil(1000);
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue; // dropped: closed
                    }
                    self.clients.push(Client {
                        stream,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        waiting: false,
                        released: false,
                        dead: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock, or a broken listener (its directory deleted): keep going.
                Err(_) => return,
            }
        }
    }

    /// Reaps every exited child: the app, and orphans of its tree (we are their
    /// subreaper). The shim has no other children.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == self.pid => {
                    self.leader_exited(ExitStatus {
                        code: Some(code),
                        signal: None,
                    });
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == self.pid => {
                    self.leader_exited(ExitStatus {
                        code: None,
                        signal: Some(sig as i32),
                    });
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(_) => break, // ECHILD: nothing left
            }
        }
        if self.exit.is_some() {
            self.check_group();
        }
    }

    fn leader_exited(&mut self, exit: ExitStatus) {
        self.exit = Some(exit);
        // What it wrote before exiting belongs in the log before anyone hears of the exit.
        self.stdout.drain(&mut self.log);
        self.stderr.drain(&mut self.log);
        let now = Instant::now();
        if let Some(stop) = &mut self.stop {
            stop.settle_by = Some(now + GROUP_SETTLE);
            let _ = killpg(self.pid, Signal::SIGKILL);
        }
        self.next_group_check = Some(now + GROUP_RECHECK);
    }

    /// After the leader exited: is anyone left in its group?
    fn check_group(&mut self) {
        if self.group_gone {
            return;
        }
        if killpg(self.pid, None) == Err(Errno::ESRCH) {
            self.group_gone = true;
            self.next_group_check = None;
        }
    }

    fn on_timers(&mut self, now: Instant) {
        if let Some(stop) = &mut self.stop
            && self.exit.is_none()
            && !stop.killed
            && now >= stop.kill_at
        {
            stop.killed = true;
            let _ = killpg(self.pid, Signal::SIGKILL);
        }
        if self.exit.is_some() && !self.group_gone {
            let settling = self
                .stop
                .as_ref()
                .and_then(|s| s.settle_by)
                .is_some_and(|t| now < t);
            let due = self.next_group_check.is_some_and(|t| now >= t);
            if settling || due {
                self.check_group();
                if due && !self.group_gone {
                    self.next_group_check = Some(now + GROUP_RECHECK);
                }
            }
        }
    }

    /// The app is done for `wait_exit` and `stop`: the leader is reaped and, after a stop,
    /// its group has vanished (or we gave up waiting for that).
    fn finished(&self) -> Option<ExitStatus> {
        let exit = self.exit?;
        match &self.stop {
            None => Some(exit),
            Some(stop) => {
                let settled =
                    self.group_gone || stop.settle_by.is_some_and(|t| Instant::now() >= t);
                settled.then_some(exit)
            }
        }
    }

    fn answer_waiters(&mut self) {
        let Some(exit) = self.finished() else {
            return;
        };
        for c in self.clients.iter_mut().filter(|c| c.waiting) {
            c.waiting = false;
            c.send(&Response::Exited { exit });
        }
    }

    /// Answers the complete requests of client `i`, in order.
    fn serve(&mut self, i: usize) {
        loop {
            let c = &mut self.clients[i];
            if c.waiting || c.released || c.dead {
                return;
            }
            let Some(line) = c.next_line() else {
                return;
            };
            let reply = match serde_json::from_slice::<Request>(&line) {
                Ok(req) => self.handle(req, i),
                Err(e) => Some(Response::Error {
                    message: format!("bad request: {e}"),
                }),
            };
            if let Some(reply) = reply {
                self.clients[i].send(&reply);
            }
        }
    }

    /// `None`: the reply comes later (the client now waits for the exit).
    fn handle(&mut self, req: Request, client: usize) -> Option<Response> {
        match req {
            Request::Status => Some(Response::Status {
                status: self.status(),
            }),
            Request::Signal { signal } => Some(self.signal(signal)),
            Request::Stop { signal, timeout_ms } => {
                if let Err(message) = self.begin_stop(signal, timeout_ms) {
                    return Some(Response::Error { message });
                }
                self.wait_for_exit(client)
            }
            Request::WaitExit => self.wait_for_exit(client),
            Request::Release => {
                if self.exit.is_none() {
                    return Some(Response::Error {
                        message: format!("the app (pid {}) is still running", self.pid),
                    });
                }
                self.clients[client].released = true;
                Some(Response::Ok)
            }
        }
    }

    fn wait_for_exit(&mut self, client: usize) -> Option<Response> {
        match self.finished() {
            Some(exit) => Some(Response::Exited { exit }),
            None => {
                self.clients[client].waiting = true;
                None
            }
        }
    }

    fn signal(&mut self, signal: i32) -> Response {
        let sig = match signal {
            0 => None,
            n => match Signal::try_from(n) {
                Ok(s) => Some(s),
                Err(_) => {
                    return Response::Error {
                        message: format!("invalid signal {n}"),
                    };
                }
            },
        };
        if self.group_gone {
            return Response::Error {
                message: "the app and its process group are gone".into(),
            };
        }
        match killpg(self.pid, sig) {
            Ok(()) => Response::Ok,
            Err(e) => {
                if e == Errno::ESRCH && self.exit.is_some() {
                    self.group_gone = true;
                }
                Response::Error {
                    message: format!("killpg {}: {}", self.pid, e.desc()),
                }
            }
        }
    }

    fn begin_stop(&mut self, signal: i32, timeout_ms: u64) -> Result<(), String> {
        let sig = Signal::try_from(signal).map_err(|_| format!("invalid signal {signal}"))?;
        let now = Instant::now();
        let kill_at = now + Duration::from_millis(timeout_ms);
        let running = self.exit.is_none();
        match &mut self.stop {
            Some(stop) => {
                // A repeated stop (e.g. from a restarted berth) may only hurry it up.
                stop.kill_at = stop.kill_at.min(kill_at);
                if running && sig != stop.signal {
                    stop.signal = sig;
                    let _ = killpg(self.pid, sig);
                }
            }
            None => {
                let mut stop = Stop {
                    signal: sig,
                    kill_at,
                    killed: false,
                    settle_by: None,
                };
                if running {
                    let _ = killpg(self.pid, sig);
                } else {
                    // The leader is gone already: clear out the rest of its group.
                    stop.settle_by = Some(now + GROUP_SETTLE);
                    self.check_group();
                    if !self.group_gone {
                        let _ = killpg(self.pid, Signal::SIGKILL);
                    }
                }
                self.stop = Some(stop);
            }
        }
        Ok(())
    }

    /// A client released us after the exit: flush its reply, finish the log, remove the
    /// socket, exit.
    fn exit_released(&mut self, i: usize) -> ! {
        let c = &mut self.clients[i];
        if !c.out.is_empty() {
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = c.stream.write_all(&c.out);
        }
        if self.stop.is_some() && !self.group_gone {
            self.check_group();
            if !self.group_gone {
                let _ = killpg(self.pid, Signal::SIGKILL);
            }
        }
        self.stdout.drain(&mut self.log);
        self.stderr.drain(&mut self.log);
        self.stdout.finish(&mut self.log);
        self.stderr.finish(&mut self.log);
        self.socket.remove_if_ours();
        std::process::exit(0)
    }
}

/// Binds the instance's socket: directory created, a stale file replaced, mode 0600.
/// Refuses when a live shim still answers on it (an instance never runs twice).
fn bind(path: &Path) -> io::Result<(UnixListener, SocketFile)> {
    use nix::sys::stat::{Mode, umask};
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another shim is listening on it",
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // umask is per process; the shim is single-threaded. Restored before the app starts.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound?;
    listener.set_nonblocking(true)?;
    let m = std::fs::symlink_metadata(path)?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            dev: m.st_dev(),
            ino: m.st_ino(),
        },
    ))
}
