//! The config file as a user meets it: `check`, a bad file at `up`, `apply`, SIGHUP.

use testkit::{DEADLINE, eventually};

use crate::harness::{BERTH, Berth, send_signal, stderr};

#[test]
fn check_prints_every_error_as_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(
        &path,
        "[berth]\nports = \"9-3\"\n\n[services.web]\nkind = \"worker\"\ncommand = \"x\"\ninstances = \"two\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BERTH)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "one line per error, all at once:\n{err}");
    let file = path.display().to_string();
    assert!(lines[0].starts_with(&format!("{file}:2:9: ")), "{err}");
    assert!(lines[1].starts_with(&format!("{file}:7:13: ")), "{err}");
    assert!(lines[1].contains("\"two\""), "says what was found: {err}");
    assert!(lines[2].starts_with(&format!("{file}:8:1: ")), "{err}");
    assert!(lines[2].contains("colour"), "{err}");
}

#[test]
fn check_accepts_a_good_file() {
    let b = Berth::project("[services.web]\ncommand = [\"{app}\"]\ndomains = [\"a.test\"]\n");
    let out = b.ok(&["check"]);
    assert!(out.contains("ok (1 service(s))"), "{out}");
}

#[test]
fn up_with_a_bad_file_starts_nothing() {
    let b = Berth::project("[services.web]\ncommand = [\"{app}\"]\ninstances = -1\n");
    let out = b.cli(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let line = std::fs::read_to_string(b.config())
        .unwrap()
        .lines()
        .position(|l| l.starts_with("instances"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("berth.toml:{line}:13: services.web.instances")),
        "{err}"
    );
    assert!(err.contains("nothing started"), "{err}");
    assert!(
        !b.data_dir().join("berth.db").exists(),
        "a store was created"
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = std::process::Command::new(BERTH)
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(BERTH)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("scale"));
}

const TWO: &str = r#"
[services.keep]
kind = "worker"
command = ["{app}"]

[services.change]
kind = "worker"
command = ["{app}"]
env = { V = "1" }
"#;

#[test]
fn apply_changes_only_what_changed() {
    let b = Berth::start(TWO);
    let keep = b.wait_running("keep", 1);
    let change = b.wait_running("change", 1);
    b.rewrite(
        r#"
[services.keep]
kind = "worker"
command = ["{app}"]

[services.change]
kind = "worker"
command = ["{app}"]
env = { V = "2" }

[services.added]
kind = "worker"
command = ["{app}"]
"#,
    );
    let out = b.ok(&["apply"]);
    assert!(out.contains("added:     added"), "{out}");
    assert!(out.contains("changed:   change"), "{out}");
    assert!(out.contains("unchanged: keep"), "{out}");
    let changed = b.wait_for("change", "the changed service replaced", |all| {
        all.len() == 1 && all[0].state == "running" && all[0].release == "v2"
    });
    assert_ne!(changed[0].pid, change[0].pid);
    b.wait_running("added", 1);
    assert_eq!(
        b.instances("keep")[0].pid,
        keep[0].pid,
        "unchanged service restarted"
    );

    // Removing a service stops it.
    b.rewrite(
        r#"
[services.keep]
kind = "worker"
command = ["{app}"]
"#,
    );
    let out = b.ok(&["apply"]);
    assert!(
        out.contains("removed:   added, change") || out.contains("removed:   change, added"),
        "{out}"
    );
    eventually(DEADLINE, "removed services gone from ps", || {
        let ps = b.ps();
        if ps.iter().all(|i| i.service == "keep") {
            Ok(())
        } else {
            Err(format!("{ps:?}"))
        }
    });
    assert_eq!(b.instances("keep")[0].pid, keep[0].pid);
}

#[test]
fn apply_with_a_bad_file_changes_nothing() {
    let b = Berth::start(TWO);
    let keep = b.wait_running("keep", 1);
    b.rewrite("[services.keep]\nkind = \"worker\"\ncommand = 42\n");
    let out = b.cli(&["apply"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("berth.toml:"), "{err}");
    assert!(err.contains("command"), "{err}");
    assert_eq!(b.instances("keep")[0].pid, keep[0].pid);
    assert_eq!(b.instances("change").len(), 1);
}

#[test]
fn sighup_applies_the_file() {
    let b = Berth::start(TWO);
    b.wait_running("keep", 1);
    b.rewrite(
        r#"
[services.keep]
kind = "worker"
command = ["{app}"]
instances = 2
"#,
    );
    send_signal(b.pid(), "HUP");
    b.wait_running("keep", 2);
    eventually(DEADLINE, "the removed service gone", || {
        let n = b.instances("change").len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} left"))
        }
    });
}

#[test]
fn scale_is_kept_until_the_files_entry_changes() {
    let mut b = Berth::start(TWO);
    b.wait_running("keep", 1);
    b.ok(&["scale", "keep=3"]);
    b.wait_running("keep", 3);
    assert!(b.signal_and_wait("TERM").success());
    b.up();
    b.wait_running("keep", 3);
    b.rewrite(
        r#"
[services.keep]
kind = "worker"
command = ["{app}"]
env = { NEW = "1" }
"#,
    );
    b.ok(&["apply"]);
    b.wait_for("keep", "the file's count to win", |all| {
        all.len() == 1 && all[0].state == "running" && all[0].release == "v2"
    });
}
