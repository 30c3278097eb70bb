//! Supervision as a user sees it: instances, restarts, backoff, stops, crashes of berth.

use std::time::Duration;

use testkit::{DEADLINE, alive, eventually, group_members};

use crate::harness::{Berth, get_port, send_signal};

const WEB: &str = r#"
[services.web]
command = ["{app}", "--print", "hello from the app"]
instances = 2
env = { GREETING = "hi there" }
domains = ["web.test"]
"#;

#[test]
fn instances_answer_on_their_port_with_their_env() {
    let b = Berth::start(WEB);
    let all = b.wait_running("web", 2);
    let mut ports = Vec::new();
    for i in &all {
        let port = i.port.expect("web instance has a port");
        ports.push(port);
        assert_eq!(get_port(port, "/env/BERTH_SERVICE").unwrap(), "web");
        assert_eq!(get_port(port, "/env/BERTH_INSTANCE").unwrap(), i.id);
        assert_eq!(get_port(port, "/env/BERTH_RELEASE").unwrap(), "v1");
        assert_eq!(get_port(port, "/env/PORT").unwrap(), port.to_string());
        assert_eq!(get_port(port, "/env/GREETING").unwrap(), "hi there");
        assert!(
            !get_port(port, "/env/PATH").unwrap().is_empty(),
            "PATH passed on"
        );
        assert!(
            get_port(port, "/env/BERTH_TEST_TAG").is_err(),
            "berth's own env leaked"
        );
        assert_eq!(
            get_port(port, "/pid").unwrap(),
            i.pid.unwrap().to_string(),
            "ps shows the app's pid"
        );
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 2, "each instance has its own port");
    assert_eq!(all[0].release, "v1");
    assert_eq!(all[0].health, "healthy");
}

#[test]
fn a_killed_instance_is_restarted() {
    let b = Berth::start(WEB);
    let before = b.wait_running("web", 2);
    let victim = &before[0];
    send_signal(victim.pid.unwrap(), "KILL");
    let after = b.wait_for("web", "the killed instance to come back", |all| {
        all.iter().any(|i| {
            i.id == victim.id && i.state == "running" && i.restarts == 1 && i.pid != victim.pid
        })
    });
    let back = after.iter().find(|i| i.id == victim.id).unwrap();
    assert_eq!(back.last_exit.as_deref(), Some("killed by SIGKILL"));
    let untouched = after.iter().find(|i| i.id == before[1].id).unwrap();
    assert_eq!(
        untouched.pid, before[1].pid,
        "the other instance was left alone"
    );
    let events = b.ok(&["events", "-n", "100"]);
    assert!(events.contains("instance.backoff"), "{events}");
    assert!(events.contains("restarting"), "{events}");
}

#[test]
fn a_crash_loop_backs_off_and_shows_as_backoff() {
    let b = Berth::start(
        r#"
[services.crashy]
kind = "worker"
command = ["{app}", "--exit", "3"]
"#,
    );
    let seen = b.wait_for("crashy", "several restarts with growing delays", |all| {
        all.len() == 1 && all[0].restarts >= 4 && all[0].state == "backoff"
    });
    assert_eq!(seen[0].last_exit.as_deref(), Some("exit code 3"));
    let table = b.ok(&["ps"]);
    assert!(table.contains("backoff"), "{table}");
    assert!(table.contains("exit code 3"), "{table}");
    // The delays grow: 100ms, 200ms, 400ms, 800ms, 1.6s … so after 4 restarts the next
    // one is at least 1.6 s away; the events say so.
    let events = b.ok(&["events", "-n", "200"]);
    assert!(
        events.contains("restarting in 1.6s") || events.contains("restarting in 1600ms"),
        "{events}"
    );
}

#[test]
fn restart_policy_never_leaves_an_exited_instance() {
    let b = Berth::start(
        r#"
[services.once]
kind = "worker"
command = ["{app}", "--exit", "0"]
[services.once.restart]
policy = "never"
"#,
    );
    let seen = b.wait_for("once", "the instance to be exited", |all| {
        all.len() == 1 && all[0].state == "exited"
    });
    assert_eq!(seen[0].restarts, 0);
    assert_eq!(seen[0].last_exit.as_deref(), Some("exit code 0"));
}

#[test]
fn an_app_that_ignores_sigterm_is_killed_after_stop_timeout() {
    let b = Berth::start(
        r#"
[services.stubborn]
kind = "worker"
command = "trap '' TERM; exec '{app}'"
[services.stubborn.restart]
stop_timeout = "1s"
"#,
    );
    let before = b.wait_running("stubborn", 1);
    let pid = before[0].pid.unwrap();
    b.ok(&["stop", "stubborn"]);
    b.wait_for("stubborn", "the instance to be stopped", |all| {
        all.iter().all(|i| i.state == "stopped")
    });
    assert!(!alive(pid), "the app survived the stop");
    let events = b.ok(&["events", "-n", "100"]);
    assert!(events.contains("killed by SIGKILL"), "{events}");
}

#[test]
fn a_shell_wrapper_loses_its_child_on_stop() {
    let b = Berth::start(
        r#"
[services.wrapped]
command = "'{app}'; exit 0"
"#,
    );
    let inst = b.wait_running("wrapped", 1).remove(0);
    let app_pid: u32 = get_port(inst.port.unwrap(), "/pid")
        .unwrap()
        .parse()
        .unwrap();
    let shell_pid = inst.pid.unwrap();
    assert_ne!(app_pid, shell_pid, "the app runs as the shell's child");
    assert!(group_members(shell_pid).contains(&app_pid));
    b.ok(&["stop", "wrapped"]);
    b.wait_for("wrapped", "the instance to be stopped", |all| {
        all.iter().all(|i| i.state == "stopped")
    });
    eventually(DEADLINE, "the wrapper's child to be gone", || {
        if alive(app_pid) {
            Err(format!("{app_pid} alive"))
        } else {
            Ok(())
        }
    });
    assert!(group_members(shell_pid).is_empty());
}

#[test]
fn berth_killed_leaves_instances_serving_and_the_next_up_adopts_them() {
    let mut b = Berth::start(WEB);
    let before = b.wait_running("web", 2);
    b.kill9();
    for i in &before {
        assert_eq!(
            get_port(i.port.unwrap(), "/pid").unwrap(),
            i.pid.unwrap().to_string(),
            "instance stopped serving when berth died"
        );
    }
    b.up();
    let after = b.wait_running("web", 2);
    let pids = |v: &[spec::api::InstanceView]| {
        let mut p: Vec<_> = v.iter().map(|i| (i.id.clone(), i.pid)).collect();
        p.sort();
        p
    };
    assert_eq!(
        pids(&after),
        pids(&before),
        "not the same instances after re-adoption"
    );
    assert!(after.iter().all(|i| i.restarts == 0));
}

#[test]
fn an_instance_that_exits_while_berth_is_down_is_restarted_by_the_next_up() {
    let mut b = Berth::start(WEB);
    let before = b.wait_running("web", 2);
    b.kill9();
    let victim = &before[0];
    send_signal(victim.pid.unwrap(), "KILL");
    eventually(DEADLINE, "the victim to die", || {
        if alive(victim.pid.unwrap()) {
            Err("alive".into())
        } else {
            Ok(())
        }
    });
    b.up();
    let after = b.wait_for("web", "the dead instance restarted", |all| {
        all.len() == 2
            && all.iter().all(|i| i.state == "running")
            && all.iter().any(|i| i.id == victim.id && i.restarts == 1)
    });
    let survivor = after.iter().find(|i| i.id == before[1].id).unwrap();
    assert_eq!(survivor.pid, before[1].pid);
}

#[test]
fn sigterm_stops_every_instance_and_berth_exits_0() {
    let mut b = Berth::start(WEB);
    let before = b.wait_running("web", 2);
    let status = b.signal_and_wait("TERM");
    assert!(status.success(), "berth exited with {status}");
    for i in &before {
        assert!(!alive(i.pid.unwrap()), "instance {} still runs", i.id);
    }
    eventually(DEADLINE, "every shim to be gone", || {
        let left = b.tagged_processes();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?} left"))
        }
    });
    // A later up starts them again (a shutdown is not a `berth stop`).
    b.up();
    b.wait_running("web", 2);
}

#[test]
fn logs_show_the_app_output_including_lines_written_while_berth_was_down() {
    let mut b = Berth::start(
        r#"
[services.ticker]
kind = "worker"
command = ["{app}", "--print", "started up", "--eprint", "to stderr"]
env = { TICK_MS = "50" }
"#,
    );
    b.wait_running("ticker", 1);
    eventually(DEADLINE, "the first lines in the log", || {
        let out = b.ok(&["logs", "-n", "100", "ticker"]);
        if out.contains("started up") && out.contains("to stderr") && out.contains("tick 1") {
            Ok(())
        } else {
            Err(out)
        }
    });
    b.kill9();
    let last_seen = {
        let log = b.data_dir().join("logs/ticker/ticker-1.log");
        eventually(DEADLINE, "ticks written while berth is down", || {
            let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
            let n = text.lines().filter(|l| l.contains(" tick ")).count();
            if n >= 20 {
                Ok(n)
            } else {
                Err(format!("{n} ticks"))
            }
        })
    };
    b.up();
    let out = b.ok(&["logs", "-n", "5", "ticker"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    let last_tick: usize = lines[4].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        last_tick + 1 >= last_seen,
        "lines from the downtime missing: {out}"
    );
    assert!(lines[0].contains("ticker-1"), "instance id shown: {out}");
    assert!(lines[0].starts_with("20"), "timestamp shown: {out}");
}

#[test]
fn logs_follow_streams_new_lines() {
    let b = Berth::start(
        r#"
[services.ticker]
kind = "worker"
command = ["{app}"]
env = { TICK_MS = "50" }
"#,
    );
    b.wait_running("ticker", 1);
    let mut child = std::process::Command::new(crate::harness::BERTH)
        .args(["-c"])
        .arg(b.config())
        .args(["logs", "-f", "-n", "1", "ticker"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    use std::io::BufRead;
    while seen.len() < 5 {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.iter().all(|l| l.contains("tick")), "{seen:?}");
}

#[test]
fn stop_survives_a_restart_of_berth_and_start_brings_it_back() {
    let mut b = Berth::start(WEB);
    b.wait_running("web", 2);
    b.ok(&["stop", "web"]);
    b.wait_for("web", "both stopped", |all| {
        all.len() == 2 && all.iter().all(|i| i.state == "stopped" && i.pid.is_none())
    });
    assert!(b.signal_and_wait("TERM").success());
    b.up();
    // Give the reconciler a chance to (wrongly) start them; poll a while for a non-stopped
    // state rather than sleeping.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        let all = b.instances("web");
        assert!(
            all.iter().all(|i| i.state == "stopped"),
            "a stopped service started after a restart: {all:?}"
        );
    }
    b.ok(&["start", "web"]);
    b.wait_running("web", 2);
}

#[test]
fn scale_sets_the_instance_count() {
    let b = Berth::start(WEB);
    b.wait_running("web", 2);
    assert!(b.ok(&["scale", "web=4"]).contains("scaled to 4"));
    b.wait_running("web", 4);
    b.ok(&["scale", "web=1"]);
    let left = b.wait_running("web", 1);
    assert_eq!(left[0].id, "web-1", "the newest were shed first");
    let out = b.cli(&["scale", "web"]);
    assert_eq!(out.status.code(), Some(2), "usage error exits 2");
    let out = b.cli(&["scale", "nope=2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service named \"nope\""));
}

#[test]
fn signal_reaches_the_whole_group() {
    let b = Berth::start(
        r#"
[services.w]
kind = "worker"
command = "trap 'echo got HUP; exit 7' HUP; while true; do sleep 0.05; done"
"#,
    );
    b.wait_running("w", 1);
    b.ok(&["signal", "w", "HUP"]);
    b.wait_for("w", "the exit caused by HUP", |all| {
        all.iter()
            .any(|i| i.last_exit.as_deref() == Some("exit code 7"))
    });
    let out = b.cli(&["signal", "w", "BOGUS"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown signal"));
}

#[test]
fn a_second_berth_on_the_same_data_dir_is_refused() {
    let b = Berth::start(WEB);
    b.wait_running("web", 2);
    let out = std::process::Command::new(crate::harness::BERTH)
        .args(["up", "-c"])
        .arg(b.config())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another berth is already running"), "{err}");
    assert!(
        err.contains(&b.pid().to_string()),
        "names the holder: {err}"
    );
    assert_eq!(b.instances("web").len(), 2, "nothing else started");
}

#[test]
fn an_instance_listening_on_a_wildcard_address_is_warned_about() {
    let b = Berth::start(
        r#"
[services.open]
command = ["{app}"]
domains = ["open.test"]
env = { BIND = "0.0.0.0" }
"#,
    );
    b.wait_running("open", 1);
    eventually(DEADLINE, "a warning event", || {
        let events = b.ok(&["events", "-n", "50"]);
        if events.contains("instance.warning") && events.contains("listens on 0.0.0.0:") {
            Ok(())
        } else {
            Err(events)
        }
    });
}

#[test]
fn instances_run_as_the_configured_user() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let b = Berth::start(
        r#"
[services.low]
command = ["{app}"]
dir = "/"
user = "nobody"
domains = ["low.test"]
"#,
    );
    if root {
        let i = b.wait_running("low", 1).remove(0);
        let uid = get_port(i.port.unwrap(), "/uid").unwrap();
        let nobody = std::process::Command::new("id")
            .args(["-u", "nobody"])
            .output()
            .unwrap();
        assert_eq!(uid, String::from_utf8_lossy(&nobody.stdout).trim());
    } else {
        // Not root: berth cannot switch users and says so.
        let i = b.wait_for("low", "the start to fail", |all| {
            all.iter().any(|i| i.last_exit.is_some())
        });
        assert!(
            i[0].last_exit.as_deref().unwrap().contains("nobody"),
            "{i:?}"
        );
    }
}
