//! Deploys under continuous load through the proxy: every request must succeed, and
//! afterwards every response must come from the expected version.

use std::path::{Path, PathBuf};

use spec::api::ReleasesResponse;

use crate::harness::{Berth, stderr};
use crate::load::{Load, Tally};

/// A source directory for the test app: `VERSION` and optional behaviour files.
fn source(root: &Path, name: &str, version: &str, extra: &[(&str, &str)]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("VERSION"), version).unwrap();
    for (file, text) in extra {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

fn service(dir: &Path) -> String {
    format!(
        r#"
[services.web]
command = ["{{app}}"]
dir = "{}"
instances = 2
domains = ["web.test"]

[services.web.health]
http = "/healthz"
interval = "100ms"
timeout = "1s"
grace = "3s"

[services.web.deploy]
surge = 1
drain = "5s"
watch = "1s"
"#,
        dir.display()
    )
}

/// Starts berth with v1 serving, and a load running against it.
fn running_v1() -> (Berth, Load) {
    let mut b = Berth::project("");
    let v1 = source(b.dir.path(), "src-v1", "1", &[]);
    b.rewrite(&service(&v1));
    b.up();
    b.wait_running("web", 2);
    let load = Load::start(&b.url(), "web.test", 6);
    load.wait_requests(200);
    (b, load)
}

fn assert_clean(tally: &Tally, expect_last: &str) {
    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        tally.failures.len(),
        tally.ok + tally.failures.len() as u64,
        &tally.failures[..tally.failures.len().min(5)]
    );
    assert!(
        tally.ok > 300,
        "too little load to prove anything: {tally:?}"
    );
    let _ = expect_last;
}

/// Every response after the deploy comes from `version`.
fn assert_serves(b: &Berth, version: &str) {
    for _ in 0..20 {
        let (status, body) = crate::harness::http(&b.url(), "GET", "web.test", "/").unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("version={version}\n")), "{body}");
    }
}

fn releases(b: &Berth) -> ReleasesResponse {
    serde_json::from_str(&b.ok(&["releases", "web", "--json"])).unwrap()
}

#[test]
fn a_rolling_deploy_drops_no_request() {
    let (b, load) = running_v1();
    let before = b.instances("web");
    let v2 = source(b.dir.path(), "src-v2", "2", &[]);
    let out = b.ok(&["deploy", "web", "--dir", v2.to_str().unwrap()]);
    load.wait_requests(200);
    let tally = load.stop();
    assert_clean(&tally, "2");
    assert!(
        tally.versions.contains_key("1") && tally.versions.contains_key("2"),
        "{tally:?}"
    );
    assert!(out.contains("v2 is live"), "{out}");
    assert_serves(&b, "2");
    let after = b.wait_running("web", 2);
    assert!(after.iter().all(|i| i.release == "v2"), "{after:?}");
    assert!(after.iter().all(|i| before.iter().all(|o| o.pid != i.pid)));
    let r = releases(&b);
    assert_eq!(r.releases[0].version, "v2");
    assert_eq!(r.releases[0].status, "live");
    assert_eq!(r.releases[0].trigger, "deploy --dir");
    assert_eq!(r.releases[1].status, "superseded");
    // The release runs from berth's own copy: deleting the original changes nothing.
    std::fs::remove_dir_all(&v2).unwrap();
    b.ok(&["restart", "web"]);
}

#[test]
fn a_restart_drops_no_request() {
    let (b, load) = running_v1();
    let before = b.instances("web");
    b.ok(&["restart", "web"]);
    b.wait_for("web", "every instance replaced", |all| {
        all.len() == 2
            && all.iter().all(|i| i.state == "running")
            && all.iter().all(|i| before.iter().all(|o| o.id != i.id))
    });
    load.wait_requests(200);
    let tally = load.stop();
    assert_clean(&tally, "1");
    assert_serves(&b, "1");
}

#[test]
fn a_release_that_never_gets_healthy_is_rolled_back_without_a_failed_request() {
    let (b, load) = running_v1();
    let before = b.instances("web");
    let bad = source(
        b.dir.path(),
        "src-sick",
        "sick",
        &[("HEALTH_STATUS", "503")],
    );
    let out = b.cli(&["deploy", "web", "--dir", bad.to_str().unwrap()]);
    load.wait_requests(100);
    let tally = load.stop();
    assert_eq!(
        out.status.code(),
        Some(1),
        "deploy of a sick release succeeded"
    );
    let err = stderr(&out);
    assert!(
        err.contains("GET /healthz got 503"),
        "says which check and what it got: {err}"
    );
    assert!(err.contains("times"), "says how often: {err}");
    assert_clean(&tally, "1");
    assert!(
        !tally.versions.contains_key("sick"),
        "the sick release got traffic"
    );
    assert_serves(&b, "1");
    let after = b.instances("web");
    let mut pids: Vec<_> = after.iter().map(|i| i.pid).collect();
    let mut old: Vec<_> = before.iter().map(|i| i.pid).collect();
    pids.sort();
    old.sort();
    assert_eq!(pids, old, "the old instances kept running");
    let r = releases(&b);
    assert_eq!(r.releases[0].status, "failed");
    assert!(
        r.releases[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("503")
    );
    assert_eq!(r.releases[1].status, "live");
}

#[test]
fn a_release_that_exits_at_start_is_rolled_back_without_a_failed_request() {
    let (b, load) = running_v1();
    let bad = source(b.dir.path(), "src-crash", "crash", &[("EXIT_AT_START", "")]);
    let out = b.cli(&["deploy", "web", "--dir", bad.to_str().unwrap()]);
    load.wait_requests(100);
    let tally = load.stop();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exited"), "{}", stderr(&out));
    assert_clean(&tally, "1");
    assert_serves(&b, "1");
    assert_eq!(releases(&b).releases[0].status, "failed");
}

#[test]
fn rollback_returns_to_the_previous_release_without_a_failed_request() {
    let (b, load) = running_v1();
    let v2 = source(b.dir.path(), "src-v2", "2", &[]);
    b.ok(&["deploy", "web", "--dir", v2.to_str().unwrap()]);
    load.wait_requests(100);
    let out = b.ok(&["rollback", "web"]);
    assert!(out.contains("v1 is live"), "{out}");
    load.wait_requests(100);
    let tally = load.stop();
    assert_clean(&tally, "1");
    assert_serves(&b, "1");
    let r = releases(&b);
    let status = |v: &str| {
        r.releases
            .iter()
            .find(|x| x.version == v)
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(status("v1"), "live");
    assert_eq!(status("v2"), "rolled-back");
    // A second rollback goes back to v2 (the last live before v1), `--to` names one.
    let out = b.cli(&["rollback", "web", "--to", "v9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no release v9"));
}

#[test]
fn an_apply_under_load_drops_no_request() {
    let (b, load) = running_v1();
    let text = std::fs::read_to_string(b.config()).unwrap();
    std::fs::write(
        b.config(),
        text.replace("instances = 2", "instances = 3\nenv = { X = \"1\" }"),
    )
    .unwrap();
    let out = b.ok(&["apply"]);
    assert!(out.contains("changed:   web"), "{out}");
    b.wait_for("web", "the new release on 3 instances", |all| {
        all.len() == 3
            && all
                .iter()
                .all(|i| i.state == "running" && i.release == "v2")
    });
    load.wait_requests(200);
    let tally = load.stop();
    assert_clean(&tally, "1");
}

#[test]
fn a_second_deploy_while_one_runs_is_refused_with_409() {
    let (b, load) = running_v1();
    let slow = source(
        b.dir.path(),
        "src-sick",
        "sick",
        &[("HEALTH_STATUS", "503")],
    );
    let out = b.ok(&["deploy", "web", "--detach", "--dir", slow.to_str().unwrap()]);
    assert!(out.contains("deploying web v2"), "{out}");
    let second = b.cli(&["deploy", "web"]);
    assert_eq!(second.status.code(), Some(1));
    let err = stderr(&second);
    assert!(err.contains("a deploy of web is running: v2"), "{err}");
    let _ = load.stop();
}

#[test]
fn maintenance_mode_answers_503_and_survives_a_restart_of_berth() {
    let (mut b, load) = running_v1();
    let _ = load.stop();
    b.ok(&["maintenance", "web", "on"]);
    let (status, body) = crate::harness::http(&b.url(), "GET", "web.test", "/").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.to_lowercase().contains("maintenance"), "{body}");
    assert!(b.signal_and_wait("TERM").success());
    b.up();
    b.wait_running("web", 2);
    let (status, _) = crate::harness::http(&b.url(), "GET", "web.test", "/").unwrap();
    assert_eq!(status, 503);
    b.ok(&["maintenance", "web", "off"]);
    assert_serves(&b, "1");
}

/// App processes whose working directory is inside the test's temp dir.
fn app_processes(b: &Berth) -> Vec<u32> {
    let root = b.dir.path().canonicalize().unwrap();
    testkit::processes()
        .into_iter()
        .filter(|(pid, _)| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            exe.ends_with("berth-test-app") && cwd.starts_with(&root)
        })
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn berth_killed_in_the_middle_of_a_deploy_finishes_it_on_the_next_up() {
    let (mut b, load) = running_v1();
    let _ = load.stop();
    // The new release starts sick, so the deploy is surely in flight when berth dies.
    let text = std::fs::read_to_string(b.config()).unwrap();
    std::fs::write(
        b.config(),
        text.replace("grace = \"3s\"", "grace = \"60s\""),
    )
    .unwrap();
    b.ok(&["apply"]);
    testkit::eventually(testkit::DEADLINE, "the apply's rollout to finish", || {
        let r = releases(&b);
        if r.releases[0].version == "v2" && r.releases[0].status == "live" {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    let v3 = source(b.dir.path(), "src-v3", "3", &[("HEALTH_STATUS", "503")]);
    b.ok(&["deploy", "web", "--detach", "--dir", v3.to_str().unwrap()]);
    b.wait_for("web", "a new v3 instance starting beside the old", |all| {
        all.iter().any(|i| i.release == "v3" && i.pid.is_some())
            && all
                .iter()
                .filter(|i| i.release == "v2" && i.state == "running")
                .count()
                == 2
    });
    b.kill9();
    // Heal berth's copy of the release while berth is down.
    std::fs::remove_file(b.data_dir().join("releases/web/v3/HEALTH_STATUS")).unwrap();
    b.up();
    let after = b.wait_for("web", "the deploy finished after the restart", |all| {
        all.len() == 2
            && all
                .iter()
                .all(|i| i.state == "running" && i.release == "v3")
    });
    testkit::eventually(testkit::DEADLINE, "v3 live", || {
        let r = releases(&b);
        if r.releases[0].version == "v3" && r.releases[0].status == "live" {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert_serves(&b, "3");
    // Exactly the instances berth knows, nothing orphaned or doubled.
    testkit::eventually(testkit::DEADLINE, "no orphan app process", || {
        let mut pids = app_processes(&b);
        pids.sort();
        let mut known: Vec<u32> = after.iter().filter_map(|i| i.pid).collect();
        known.sort();
        if pids == known && known.len() == 2 {
            Ok(())
        } else {
            Err(format!(
                "running {pids:?}, known {known:?}, ps {:?}",
                b.ps()
            ))
        }
    });
}

#[test]
fn a_sick_instance_leaves_rotation_at_once_and_is_replaced_without_a_failed_request() {
    let (b, load) = running_v1();
    let before = b.instances("web");
    let sick = before.iter().find(|i| i.id == "web-1").unwrap();
    let src = b.dir.path().join("src-v1");
    std::fs::write(src.join("HEALTH_STATUS.web-1"), "500").unwrap();
    let seen = b.wait_for("web", "web-1 marked unhealthy", |all| {
        all.iter()
            .any(|i| i.id == "web-1" && i.health == "unhealthy")
    });
    let reason = seen
        .iter()
        .find(|i| i.id == "web-1")
        .unwrap()
        .health_reason
        .clone()
        .unwrap();
    assert!(reason.contains("GET /healthz got 500"), "{reason}");
    let table = b.ok(&["ps"]);
    assert!(
        table.contains("GET /healthz got 500"),
        "ps shows why: {table}"
    );
    let after = b.wait_for("web", "web-1 replaced by a healthy instance", |all| {
        all.len() == 2
            && all
                .iter()
                .all(|i| i.state == "running" && i.health == "healthy")
            && all.iter().all(|i| i.id != "web-1")
    });
    load.wait_requests(100);
    let tally = load.stop();
    assert_clean(&tally, "1");
    assert!(after.iter().any(|i| i.pid != sick.pid));
    let events = b.ok(&["events", "-n", "200"]);
    assert!(events.contains("out of rotation"), "{events}");
    assert!(events.contains("replacing"), "{events}");
}

#[test]
fn old_release_sources_are_pruned_but_never_the_live_or_previous_one() {
    let (b, load) = running_v1();
    let _ = load.stop();
    let text = std::fs::read_to_string(b.config()).unwrap();
    std::fs::write(
        b.config(),
        text.replace("watch = \"1s\"", "watch = \"0s\"\nkeep_releases = 1"),
    )
    .unwrap();
    b.ok(&["apply"]); // v2, from the file's dir (no copied source)
    let releases_dir = b.data_dir().join("releases/web");
    for (n, version) in [(3, "a"), (4, "b"), (5, "c")] {
        let dir = source(b.dir.path(), &format!("src-{version}"), version, &[]);
        testkit::eventually(testkit::DEADLINE, "the previous deploy to end", || {
            let out = b.cli(&["deploy", "web", "--dir", dir.to_str().unwrap()]);
            if out.status.success() {
                Ok(())
            } else {
                Err(stderr(&out))
            }
        });
        assert!(
            releases_dir.join(format!("v{n}")).is_dir(),
            "v{n} source kept while live"
        );
    }
    assert!(
        releases_dir.join("v4").is_dir(),
        "the previous live release's source was deleted"
    );
    assert!(
        !releases_dir.join("v3").exists(),
        "v3's source was kept beyond keep_releases"
    );
    assert_serves(&b, "c");
    // Rolling back to v4 works from its stored source.
    b.ok(&["rollback", "web"]);
    assert_serves(&b, "b");
}

#[test]
fn the_release_command_runs_once_before_traffic_shifts_with_maintenance_if_asked() {
    let (b, load) = running_v1();
    let _ = load.stop();
    let gate = b.dir.path().join("go");
    let marker = b.dir.path().join("migrated");
    let text = std::fs::read_to_string(b.config()).unwrap();
    std::fs::write(
        b.config(),
        text.replace(
            "watch = \"1s\"",
            &format!(
                "watch = \"0s\"\nmaintenance = true\nrelease_command = \"echo $BERTH_SERVICE >> {}; while [ ! -f {} ]; do sleep 0.05; done\"",
                marker.display(),
                gate.display()
            ),
        ),
    )
    .unwrap();
    b.ok(&["apply"]);
    // While the release command runs: maintenance page, old instances untouched.
    testkit::eventually(
        testkit::DEADLINE,
        "the maintenance page during the release command",
        || {
            let (status, body) = crate::harness::http(&b.url(), "GET", "web.test", "/").unwrap();
            if status == 503 {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        },
    );
    assert!(
        b.instances("web").iter().all(|i| i.release == "v1"),
        "new instances before the release command ended"
    );
    std::fs::write(&gate, "").unwrap();
    b.wait_for("web", "the new release running", |all| {
        all.len() == 2
            && all
                .iter()
                .all(|i| i.state == "running" && i.release == "v2")
    });
    testkit::eventually(testkit::DEADLINE, "maintenance over", || {
        let (status, body) = crate::harness::http(&b.url(), "GET", "web.test", "/").unwrap();
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    });
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "web\n",
        "ran exactly once"
    );
}

#[test]
fn a_failing_release_command_fails_the_deploy_and_starts_nothing() {
    let (b, load) = running_v1();
    let before = b.instances("web");
    let text = std::fs::read_to_string(b.config()).unwrap();
    std::fs::write(
        b.config(),
        text.replace(
            "watch = \"1s\"",
            "release_command = \"echo migration broke >&2; exit 4\"",
        ),
    )
    .unwrap();
    b.ok(&["apply"]);
    testkit::eventually(testkit::DEADLINE, "the release to fail", || {
        let r = releases(&b);
        if r.releases[0].status == "failed" {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    let r = releases(&b);
    let reason = r.releases[0].reason.clone().unwrap();
    assert!(
        reason.contains("exit code 4") && reason.contains("migration broke"),
        "{reason}"
    );
    load.wait_requests(200);
    let tally = load.stop();
    assert_clean(&tally, "1");
    let after = b.instances("web");
    assert_eq!(
        after.iter().map(|i| i.pid).collect::<Vec<_>>(),
        before.iter().map(|i| i.pid).collect::<Vec<_>>()
    );
}
