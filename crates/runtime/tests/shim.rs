//! End-to-end tests of the shim: real shims (the `runtime-test-shim` binary), real apps
//! (`/bin/sh` scripts), real sockets and log files. No fixed sleeps: every wait polls
//! until a deadline. Every test's processes are killed by [`Instance`]'s `Drop`, also
//! when the test fails.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use runtime::logs::{self, LogLine};
use runtime::{ExitStatus, LaunchSpec, Launched, RuntimeError, ShimClient, launch};

const SHIM: &str = env!("CARGO_BIN_EXE_runtime-test-shim");
const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `f` until it returns `Some`, panicking with `what` after [`DEADLINE`].
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spec_in(dir: &Path, script: &str) -> LaunchSpec {
    let app_dir = dir.join("app");
    std::fs::create_dir_all(&app_dir).expect("app dir");
    LaunchSpec {
        shim_exe: PathBuf::from(SHIM),
        instance_id: "test-1".into(),
        socket: dir.join("run/test-1.sock"),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        dir: app_dir,
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        user: None,
        log_file: dir.join("logs/test-1.log"),
        log_max_bytes: 1 << 20,
    }
}

/// A launched instance; dropping it kills the app's group and releases the shim.
struct Instance {
    tmp: tempfile::TempDir,
    spec: LaunchSpec,
    launched: Launched,
}

impl Instance {
    fn start(script: &str) -> Instance {
        Instance::start_with(script, |_| {})
    }

    fn start_with(script: &str, edit: impl FnOnce(&mut LaunchSpec)) -> Instance {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut spec = spec_in(tmp.path(), script);
        edit(&mut spec);
        let launched = launch(&spec).expect("launch");
        Instance {
            tmp,
            spec,
            launched,
        }
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.launched.pid as i32)
    }

    async fn client(&self) -> ShimClient {
        ShimClient::connect(&self.spec.socket)
            .await
            .expect("connect")
    }

    fn log(&self) -> Vec<LogLine> {
        logs::tail(&self.spec.log_file, 10_000).expect("tail")
    }

    fn log_texts(&self) -> Vec<String> {
        self.log().into_iter().map(|l| l.text).collect()
    }

    fn wait_for_line(&self, text: &str) {
        eventually(&format!("log line {text:?}"), || {
            self.log_texts().iter().any(|t| t == text).then_some(())
        });
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        // Release the shim (the requests queue behind the wait); kill it if that fails.
        let released = UnixStream::connect(&self.spec.socket).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"{\"op\":\"wait_exit\"}\n{\"op\":\"release\"}\n")?;
            let mut lines = BufReader::new(s).lines();
            lines.next();
            lines.next().transpose()
        });
        if !matches!(released, Ok(Some(_))) {
            let _ = kill(
                Pid::from_raw(self.launched.shim_pid as i32),
                Signal::SIGKILL,
            );
        }
        let _ = &self.tmp;
    }
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Processes whose process group is `pgid`, from /proc.
fn group_members(pgid: Pid) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(2).and_then(|f| f.parse::<i32>().ok()) == Some(pgid.as_raw()) {
            out.push(pid);
        }
    }
    out
}

fn code(c: i32) -> ExitStatus {
    ExitStatus {
        code: Some(c),
        signal: None,
    }
}

fn signaled(s: Signal) -> ExitStatus {
    ExitStatus {
        code: None,
        signal: Some(s as i32),
    }
}

#[tokio::test]
async fn runs_with_its_env_and_dir_and_logs_both_streams() {
    // An ignored signal in berth must not reach the app (SIGUSR2 is unused by the tests).
    // SAFETY: SIG_IGN installs no handler.
    unsafe { nix::sys::signal::signal(Signal::SIGUSR2, nix::sys::signal::SigHandler::SigIgn) }
        .expect("ignore USR2");
    let inst = Instance::start_with(
        r#"echo "$GREETING from $(pwd)"; echo "home=${HOME-unset}"; grep -E '^Sig(Blk|Ign)' /proc/self/status; echo oops >&2; printf 'no newline'"#,
        |spec| spec.env.push(("GREETING".into(), "hello world".into())),
    );
    assert_ne!(inst.launched.pid, inst.launched.shim_pid);
    assert!(inst.launched.started_at_ms > 1_700_000_000_000);
    let mut client = inst.client().await;
    assert_eq!(client.wait_exit().await.expect("wait"), code(0));
    let lines = inst.log();
    let find = |text: &str| lines.iter().find(|l| l.text == text).cloned();
    let app_dir = inst.spec.dir.display().to_string();
    let greeting = find(&format!("hello world from {app_dir}")).expect("greeting logged");
    assert_eq!(greeting.stream, "stdout");
    assert_eq!(greeting.time.len(), 24);
    assert!(
        find("home=unset").is_some(),
        "berth's env leaked: {lines:?}"
    );
    assert_eq!(find("oops").expect("stderr logged").stream, "stderr");
    assert!(
        find("no newline").is_some(),
        "final partial line: {lines:?}"
    );
    // the socket is private to its owner
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&inst.spec.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn exec_failures_are_errors_of_launch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut spec = spec_in(tmp.path(), "true");
    spec.argv = vec!["no-such-program-berth".into()];
    let err = launch(&spec).expect_err("unknown program");
    assert!(matches!(err, RuntimeError::Exec { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        r#"cannot start "no-such-program-berth": No such file or directory"#
    );
    assert!(!spec.socket.exists(), "no socket is left behind");

    let mut spec = spec_in(tmp.path(), "true");
    spec.dir = tmp.path().join("missing");
    let err = launch(&spec).expect_err("bad dir").to_string();
    assert!(err.contains("missing: No such file or directory"), "{err}");

    let script = tmp.path().join("app/not-executable");
    std::fs::write(&script, "#!/bin/sh\n").expect("write");
    let mut spec = spec_in(tmp.path(), "true");
    spec.argv = vec![script.display().to_string()];
    let err = launch(&spec).expect_err("not executable").to_string();
    assert!(err.ends_with("Permission denied"), "{err}");

    let mut spec = spec_in(tmp.path(), "true");
    spec.user = Some("no-such-user-berth".into());
    let err = launch(&spec).expect_err("unknown user").to_string();
    assert!(err.contains("unknown user"), "{err}");
}

#[tokio::test]
async fn reports_exit_codes_and_signals() {
    let inst = Instance::start("exit 3");
    assert_eq!(
        inst.client().await.wait_exit().await.expect("wait"),
        code(3)
    );
    let inst = Instance::start("kill -KILL $$");
    assert_eq!(
        inst.client().await.wait_exit().await.expect("wait"),
        signaled(Signal::SIGKILL)
    );
}

#[tokio::test]
async fn signals_reach_the_whole_group() {
    let inst = Instance::start(
        r#"trap "" USR1
        (trap "echo child got USR1; exit 7" USR1; echo ready; while :; do sleep 0.05; done) &
        wait $!; echo "child exited $?""#,
    );
    inst.wait_for_line("ready");
    let mut client = inst.client().await;
    client.signal(Signal::SIGUSR1 as i32).await.expect("signal");
    assert_eq!(client.wait_exit().await.expect("wait"), code(0));
    let texts = inst.log_texts();
    assert!(texts.contains(&"child got USR1".to_owned()), "{texts:?}");
    assert!(texts.contains(&"child exited 7".to_owned()), "{texts:?}");
    let err = client.signal(9999).await.expect_err("bad signal");
    assert!(err.to_string().contains("invalid signal"), "{err}");
}

#[tokio::test]
async fn stop_escalates_to_sigkill_when_term_is_ignored() {
    let inst = Instance::start(r#"trap "" TERM; echo ready; while :; do sleep 0.05; done"#);
    inst.wait_for_line("ready");
    let mut client = inst.client().await;
    let started = Instant::now();
    let exit = client
        .stop(Signal::SIGTERM as i32, Duration::from_millis(300))
        .await
        .expect("stop");
    assert_eq!(exit, signaled(Signal::SIGKILL));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(killpg(inst.pgid(), None), Err(Errno::ESRCH));
}

#[tokio::test]
async fn stop_leaves_nothing_of_a_shell_wrapper() {
    let inst = Instance::start("sleep 1000; exit 0");
    eventually("the wrapper's child", || {
        (group_members(inst.pgid()).len() >= 2).then_some(())
    });
    let exit = inst
        .client()
        .await
        .stop(Signal::SIGTERM as i32, Duration::from_secs(10))
        .await
        .expect("stop");
    assert_eq!(exit, signaled(Signal::SIGTERM));
    assert_eq!(group_members(inst.pgid()), Vec::<u32>::new());

    // a group member that ignores TERM and outlives the leader is killed too, at once
    let inst = Instance::start(r#"(trap "" TERM; echo ready; sleep 1000) & sleep 1000; exit 0"#);
    inst.wait_for_line("ready");
    let started = Instant::now();
    inst.client()
        .await
        .stop(Signal::SIGTERM as i32, Duration::from_secs(10))
        .await
        .expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not wait for the timeout"
    );
    assert_eq!(group_members(inst.pgid()), Vec::<u32>::new());
    assert_eq!(killpg(inst.pgid(), None), Err(Errno::ESRCH));
}

#[tokio::test]
async fn a_reconnecting_client_re_adopts_the_same_instance() {
    let inst = Instance::start("echo ready; sleep 1000");
    let mut first = inst.client().await;
    let before = first.status().await.expect("status");
    assert_eq!(before.pid, inst.launched.pid);
    assert_eq!(before.shim_pid, inst.launched.shim_pid);
    assert_eq!(before.exit, None);
    drop(first);
    // a waiter that goes away mid-wait does not disturb the shim
    let mut waiter = inst.client().await;
    assert!(
        tokio::time::timeout(Duration::from_millis(50), waiter.wait_exit())
            .await
            .is_err()
    );
    drop(waiter);

    let mut again = inst.client().await;
    let after = again.status().await.expect("status");
    assert_eq!(after, before);
    assert!(alive(after.pid));
    let err = inst
        .client()
        .await
        .release()
        .await
        .expect_err("release while running");
    assert!(err.to_string().contains("still running"), "{err}");
    let exit = again
        .stop(Signal::SIGTERM as i32, Duration::from_secs(10))
        .await
        .expect("stop");
    assert_eq!(exit, signaled(Signal::SIGTERM));
}

#[tokio::test]
async fn an_exit_while_nobody_listens_is_kept_until_released() {
    let inst = Instance::start("echo bye; exit 5");
    // no client connected: the shim logs and reaps on its own
    eventually("the app to be reaped", || {
        (!alive(inst.launched.pid)).then_some(())
    });
    assert_eq!(inst.log_texts(), ["bye"]);
    let mut client = inst.client().await;
    let status = client.status().await.expect("status");
    assert_eq!(status.exit, Some(code(5)));
    assert_eq!(client.wait_exit().await.expect("wait"), code(5));
    // a stop after the exit just reports it
    assert_eq!(
        client
            .stop(Signal::SIGTERM as i32, Duration::from_secs(1))
            .await
            .expect("stop"),
        code(5)
    );
    client.release().await.expect("release");
    eventually("the shim to exit", || {
        (!alive(inst.launched.shim_pid) || is_zombie(inst.launched.shim_pid)).then_some(())
    });
    assert!(!inst.spec.socket.exists());
    let err = ShimClient::connect(&inst.spec.socket)
        .await
        .expect_err("gone");
    assert!(matches!(err, RuntimeError::Socket { .. }), "{err:?}");
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

#[tokio::test]
async fn connect_fails_fast_on_a_stale_socket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let started = Instant::now();
    let err = ShimClient::connect(&path).await.expect_err("stale");
    assert!(matches!(err, RuntimeError::Socket { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn logs_are_written_without_a_client_and_rotated() {
    let inst = Instance::start_with(
        r#"i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); done; echo started; sleep 1000"#,
        |spec| spec.log_max_bytes = 2000,
    );
    inst.wait_for_line("started");
    let log = &inst.spec.log_file;
    let current = std::fs::metadata(log).expect("log").len();
    let rotated = std::fs::metadata(logs::rotated_path(log))
        .expect("rotated")
        .len();
    assert!(current <= 2000 && rotated <= 2000, "{current} {rotated}");
    assert_eq!(logs::log_files(log).len(), 2);
    // tail reaches back into the rotated file, in order
    let current_lines = std::fs::read_to_string(log).expect("read").lines().count();
    let texts: Vec<String> = logs::tail(log, current_lines + 3)
        .expect("tail")
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(texts.len(), current_lines + 3);
    assert_eq!(texts.last().map(String::as_str), Some("started"));
    let numbers: Vec<u32> = texts[..texts.len() - 1]
        .iter()
        .map(|t| t["line ".len()..].parse().expect("line N"))
        .collect();
    assert_eq!(numbers.last(), Some(&299));
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    // following from a cursor sees new lines
    let (_, mut cursor) = logs::tail_with_cursor(log, 1).expect("tail");
    inst.client()
        .await
        .signal(Signal::SIGTERM as i32)
        .await
        .expect("signal");
    inst.client().await.wait_exit().await.expect("wait");
    assert!(
        logs::read_after(log, &mut cursor)
            .expect("follow")
            .is_empty()
    );
}

#[tokio::test]
async fn berths_descriptors_do_not_leak_into_shim_or_app() {
    // A listening socket without CLOEXEC, as a careless library in berth might leave one.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    use std::os::fd::AsRawFd;
    let raw = listener.as_raw_fd();
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .expect("clear CLOEXEC");
    let leaked = std::fs::read_link(format!("/proc/self/fd/{raw}")).expect("link");
    let inst = Instance::start("ls /proc/self/fd; echo done; sleep 1000");
    inst.wait_for_line("done");
    // ls sees 0, 1, 2 and its own directory handle
    let fds: Vec<String> = inst
        .log_texts()
        .into_iter()
        .filter(|t| t != "done")
        .collect();
    assert_eq!(fds, ["0", "1", "2", "3"]);
    let shim_fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{}/fd", inst.launched.shim_pid))
        .expect("shim fds")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    assert!(!shim_fds.contains(&leaked), "{shim_fds:?}");
    assert!(shim_fds.len() <= 8, "{shim_fds:?}");
    drop(listener);
}

#[tokio::test]
async fn runs_as_another_user_when_root() {
    if !nix::unistd::geteuid().is_root() {
        return; // switching users needs root; the not-root refusal is covered elsewhere
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        return;
    };
    let inst = Instance::start_with("id -u; id -g", |spec| {
        spec.user = Some("nobody".into());
        spec.dir = PathBuf::from("/");
    });
    inst.client().await.wait_exit().await.expect("wait");
    assert_eq!(
        inst.log_texts(),
        [nobody.uid.to_string(), nobody.gid.to_string()]
    );
}

#[test]
fn sample_trees_sums_a_parent_and_its_child() {
    let mut child = std::process::Command::new("sh")
        .args(["-c", "sleep 1000 & wait"])
        .spawn()
        .expect("spawn");
    let root = child.id();
    let grandchild: u32 = eventually("the sleep child", || {
        std::fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    let samples = runtime::stats::sample_trees(&[root, grandchild]);
    let _ = child.kill();
    let _ = kill(Pid::from_raw(grandchild as i32), Signal::SIGKILL);
    let _ = child.wait();
    let (tree, leaf) = (samples[&root], samples[&grandchild]);
    assert!(leaf.rss_bytes > 0);
    assert!(tree.rss_bytes > leaf.rss_bytes, "{tree:?} {leaf:?}");
    assert!(tree.cpu_ticks >= leaf.cpu_ticks);
}

/// Not an assertion on a number that depends on the build: prints the shim's memory so
/// that it can be compared (run with `--nocapture`); fails only on a gross regression.
#[tokio::test]
async fn shim_memory_is_small() {
    let inst = Instance::start("echo ready; sleep 1000");
    inst.wait_for_line("ready");
    inst.client().await.status().await.expect("status");
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", inst.launched.shim_pid))
        .expect("smaps_rollup");
    let kb = |key: &str| -> u64 {
        rollup
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let private = kb("Private_Clean:") + kb("Private_Dirty:");
    println!(
        "shim memory: Rss {} kB, Pss {} kB, Private_Clean {} kB, Private_Dirty {} kB",
        kb("Rss:"),
        kb("Pss:"),
        kb("Private_Clean:"),
        kb("Private_Dirty:")
    );
    assert!(
        private < 4096,
        "shim private memory {private} kB:\n{rollup}"
    );
}
