//! Test-only helpers for berth's tests: free ports, polling with a deadline, and the
//! clean-up of every process a test left behind.
//!
//! **Invariant:** tests never sleep a fixed time and never use a fixed port.
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The default deadline for [`eventually`].
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what` and the last
/// observation after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut last;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `assert_eventually!(cond, "what")`: polls `cond` until true, for [`DEADLINE`].
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($what:tt)+) => {
        $crate::eventually($crate::DEADLINE, &format!($($what)+), || {
            if $cond { Ok(()) } else { Err("condition still false".to_string()) }
        })
    };
}

/// A TCP port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A range of `len` ports for one test's instances: disjoint from other tests of this
/// process, spread across processes by pid, and always below the kernel's ephemeral
/// range (32768+), where [`free_port`] and outgoing connections take their ports — so a
/// proxy port that is briefly free (berth restarting) is never handed to an instance.
pub fn port_range(len: u16) -> (u16, u16) {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000; // 20000..32000
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    let len = u32::from(len);
    let offset = ((std::process::id() % 20) * 600 + slot * len) % (SPAN - len);
    let base = LOW + offset;
    (base as u16, (base + len - 1) as u16)
}

/// A unique tag for one test; processes started with `BERTH_TEST_TAG=<tag>` in their
/// environment (berth, and through it every shim) are found by [`kill_tagged`].
pub fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
    )
}

/// Live processes whose environment holds `BERTH_TEST_TAG=<tag>` (berth and its shims).
pub fn tagged(tag: &str) -> Vec<u32> {
    let needle = format!("BERTH_TEST_TAG={tag}");
    processes()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| alive(*pid) && environ_contains(*pid, &needle))
        .collect()
}

/// Kills every process whose environment holds `BERTH_TEST_TAG=<tag>` together with the
/// process groups of their children (the instances a shim holds).
pub fn kill_tagged(tag: &str) {
    let needle = format!("BERTH_TEST_TAG={tag}");
    let procs = processes();
    for &(pid, _) in procs
        .iter()
        .filter(|(pid, _)| environ_contains(*pid, &needle))
    {
        for &(child, _) in procs.iter().filter(|(_, ppid)| *ppid == pid) {
            kill(&format!("-{child}"));
            kill(&child.to_string());
        }
        kill(&pid.to_string());
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Every (pid, ppid) on the machine.
pub fn processes() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// The members of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    let mut f = rest.split_whitespace();
                    let state = f.next()?;
                    let pg = f.nth(1)?.parse::<u32>().ok()?;
                    Some(pg == pgid && state != "Z")
                })
                .unwrap_or(false)
        })
        .collect()
}

fn environ_contains(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        .unwrap_or(false)
}

fn kill(target: &str) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", target])
        .stderr(std::process::Stdio::null())
        .status();
}
