//! The shim: the hidden `berth __shim INSTANCE` mode. Single-threaded, no async runtime,
//! small (berth runs one per instance).
//!
//! Life of a shim:
//! 1. `launch()` runs `shim_exe __shim INSTANCE` and writes the [`LaunchSpec`] as JSON to
//!    its stdin. The shim closes every inherited fd above 2 and reads the spec.
//! 2. It forks: the process berth spawned exits at once (berth reaps it); the grandchild
//!    calls `setsid()`, so berth's terminal and berth's death do not reach it.
//! 3. It becomes a child subreaper, binds its unix socket (mode 0600), opens the log file
//!    and starts the app (`spawn`) in its own process group.
//! 4. It reports a `LaunchReport` on stdout, points stdin/stdout/stderr at /dev/null,
//!    moves to `/` and runs the poll loop (`server`) until a client releases it after
//!    the app exited.
//!
//! **Invariant:** the shim never kills the app on its own: only a `signal` or `stop`
//! request does. When the leader exits by itself, the rest of its group is left running
//! (and reaped when it exits); after a `stop`, the whole group is SIGKILLed once the
//! leader is gone.

mod output;
mod server;
mod spawn;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nix::unistd::ForkResult;

use crate::launch::LaunchSpec;
use crate::proto::LaunchReport;

/// Entry point of `berth __shim ARGS…` (`args` excludes the program name and `__shim`).
/// Never returns.
///
/// Must be called before any thread is started (berth calls it first thing in `main`):
/// the shim forks.
pub fn main(args: Vec<String>) -> ! {
    // args[0] is the instance id, only there so that `ps` shows which instance this is.
    drop(args);
    close_inherited_fds();
    let spec = match read_spec() {
        Ok(spec) => spec,
        Err(reason) => fail(LaunchReport::Failed { reason }),
    };
    // SAFETY: the shim is single-threaded (see the doc above), so the child of this fork
    // is a complete copy of the process and may do anything the parent could.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(ForkResult::Child) => {}
        Err(e) => fail(LaunchReport::Failed {
            reason: format!("fork: {}", e.desc()),
        }),
    }
    // The grandchild: leave berth's session (its terminal, its Ctrl-C) for good. Cannot
    // fail here: a fresh child is never a process group leader.
    let _ = nix::unistd::setsid();
    let shim = match server::Shim::start(spec) {
        Ok(shim) => shim,
        Err(report) => fail(report),
    };
    report(&shim.launch_report());
    detach_stdio();
    let _ = nix::unistd::chdir("/");
    shim.run()
}

fn fail(report_: LaunchReport) -> ! {
    report(&report_);
    std::process::exit(1)
}

/// The one message `launch()` waits for, on stdout.
fn report(report: &LaunchReport) {
    if let Ok(mut line) = serde_json::to_vec(report) {
        line.push(b'\n');
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&line);
        let _ = out.flush();
    }
}

fn read_spec() -> Result<LaunchSpec, String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading the launch spec: {e}"))?;
    let mut spec: LaunchSpec =
        serde_json::from_slice(&buf).map_err(|e| format!("bad launch spec: {e}"))?;
    // The shim moves to `/` later: pin relative paths to where it was started.
    spec.socket = absolute(&spec.socket);
    spec.log_file = absolute(&spec.log_file);
    spec.dir = absolute(&spec.dir);
    Ok(spec)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// berth may hold listening sockets and other descriptors without CLOEXEC; none of them
/// may stay open in a process that outlives berth.
fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors. At this point (start of shim mode) no
    // Rust object owns a descriptor above 2, so nothing is closed behind an owner's back.
    let rc = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return;
    }
    // Kernels before 5.9: list /proc/self/fd first, then close (not while reading it).
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .filter(|&fd| fd > 2)
            .collect(),
        Err(_) => (3..1024).collect(),
    };
    for fd in fds {
        // SAFETY: as above; closing the (already closed) fd of the read_dir is harmless.
        unsafe { nix::libc::close(fd) };
    }
}

/// After reporting: `launch()` sees EOF on our stdout, and nothing holds berth's pipes.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}
