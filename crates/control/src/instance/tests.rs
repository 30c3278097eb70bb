use super::*;

const WEB_ALWAYS: Policy = Policy {
    restart: RestartPolicy::Always,
    kind: ServiceKind::Web,
};

fn started() -> Instance {
    let mut i = Instance::new("web-1".into(), "web".into(), 1, 0, Some(20000));
    i.handle(
        Input::Launched {
            pid: 42,
            shim_pid: 41,
            started_at_ms: 1_000,
        },
        1_000,
        WEB_ALWAYS,
    );
    i
}

fn exit(code: i32) -> Input {
    Input::Exited {
        status: ExitStatus {
            code: Some(code),
            signal: None,
        },
    }
}

fn kinds(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Event { kind, .. } => format!("event:{kind}"),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn launch_then_ready_routes_the_instance() {
    let mut i = Instance::new("web-1".into(), "web".into(), 1, 0, Some(20000));
    let a = i.handle(
        Input::Launched {
            pid: 42,
            shim_pid: 41,
            started_at_ms: 5,
        },
        5,
        WEB_ALWAYS,
    );
    assert_eq!(kinds(&a), ["Watch", "event:instance.started"]);
    assert_eq!(i.state, State::Starting);
    assert_eq!(i.pid, Some(42));
    let a = i.handle(Input::Ready, 10, WEB_ALWAYS);
    assert_eq!(kinds(&a), ["Reroute", "event:instance.running"]);
    assert_eq!(i.state, State::Running);
}

#[test]
fn a_crash_backs_off_and_the_delay_grows_while_it_loops() {
    let mut i = started();
    i.handle(Input::Ready, 1_100, WEB_ALWAYS);
    let a = i.handle(exit(1), 1_200, WEB_ALWAYS);
    assert_eq!(i.state, State::Backoff);
    assert_eq!(
        kinds(&a),
        [
            "Reroute",
            "Release",
            "RestartAfter(100ms)",
            "event:instance.backoff"
        ]
    );
    assert_eq!(i.last_exit.as_deref(), Some("exit code 1"));
    assert_eq!(i.restart_at_ms, Some(1_300));

    let a = i.handle(Input::BackoffElapsed, 1_300, WEB_ALWAYS);
    assert_eq!(kinds(&a), ["Launch", "event:instance.restarting"]);
    assert_eq!((i.state, i.restarts), (State::Starting, 1));
    i.handle(
        Input::Launched {
            pid: 43,
            shim_pid: 44,
            started_at_ms: 1_300,
        },
        1_300,
        WEB_ALWAYS,
    );
    // Crashed again before it was ever ready: not routed, so no reroute.
    let a = i.handle(exit(1), 1_400, WEB_ALWAYS);
    assert_eq!(
        kinds(&a),
        ["Release", "RestartAfter(200ms)", "event:instance.backoff"]
    );
}

#[test]
fn a_stable_run_resets_the_backoff() {
    let mut i = started();
    i.attempt = 6;
    let a = i.handle(exit(1), 1_000 + 31_000, WEB_ALWAYS);
    assert!(a.contains(&Action::RestartAfter(backoff::FIRST_DELAY)));
}

#[test]
fn restart_policies() {
    let on_failure = Policy {
        restart: RestartPolicy::OnFailure,
        kind: ServiceKind::Worker,
    };
    let never = Policy {
        restart: RestartPolicy::Never,
        kind: ServiceKind::Worker,
    };
    let mut i = started();
    i.handle(exit(0), 2_000, on_failure);
    assert_eq!(i.state, State::Exited);
    let mut i = started();
    i.handle(exit(3), 2_000, on_failure);
    assert_eq!(i.state, State::Backoff);
    let mut i = started();
    let a = i.handle(exit(3), 2_000, never);
    assert_eq!(i.state, State::Exited);
    assert_eq!(kinds(&a), ["Release", "event:instance.exited"]);
    let mut i = started();
    i.handle(
        Input::Exited {
            status: ExitStatus {
                code: None,
                signal: Some(9),
            },
        },
        2_000,
        on_failure,
    );
    assert_eq!(i.state, State::Backoff, "a kill by signal is a failure");
}

#[test]
fn stop_drains_a_running_instance_and_ignores_the_policy() {
    let mut i = started();
    i.handle(Input::Ready, 1_100, WEB_ALWAYS);
    let a = i.handle(Input::Stop, 2_000, WEB_ALWAYS);
    assert_eq!(i.state, State::Draining);
    assert_eq!(kinds(&a), ["Reroute", "Drain", "event:instance.draining"]);
    let a = i.handle(Input::Drained, 2_100, WEB_ALWAYS);
    assert_eq!(i.state, State::Stopping);
    assert_eq!(kinds(&a), ["Reroute", "Signal", "event:instance.stopping"]);
    let a = i.handle(exit(143), 2_200, WEB_ALWAYS);
    assert_eq!(i.state, State::Stopped);
    assert_eq!(kinds(&a), ["Reroute", "Release", "event:instance.stopped"]);
}

#[test]
fn stop_of_a_starting_instance_skips_the_drain() {
    let mut i = started();
    let a = i.handle(Input::Stop, 2_000, WEB_ALWAYS);
    assert_eq!(i.state, State::Stopping);
    assert!(a.contains(&Action::Signal));
}

#[test]
fn stop_during_backoff_cancels_the_restart() {
    let mut i = started();
    i.handle(exit(1), 1_500, WEB_ALWAYS);
    i.handle(Input::Stop, 1_550, WEB_ALWAYS);
    assert_eq!(i.state, State::Stopped);
    assert_eq!(i.restart_at_ms, None);
    assert!(
        i.handle(Input::BackoffElapsed, 1_600, WEB_ALWAYS)
            .is_empty()
    );
    assert_eq!(i.state, State::Stopped);
}

#[test]
fn late_inputs_change_nothing() {
    let mut i = started();
    i.handle(Input::Stop, 2_000, WEB_ALWAYS);
    assert!(i.handle(Input::Ready, 2_100, WEB_ALWAYS).is_empty());
    assert_eq!(i.state, State::Stopping);
    let mut s = started();
    s.handle(exit(0), 2_000, WEB_ALWAYS);
    s.handle(Input::Stop, 2_000, WEB_ALWAYS);
    assert!(s.handle(exit(0), 2_100, WEB_ALWAYS).is_empty());
}

#[test]
fn a_lost_shim_counts_as_a_crash() {
    let mut i = started();
    i.handle(Input::Ready, 1_100, WEB_ALWAYS);
    let a = i.handle(Input::Lost, 1_200, WEB_ALWAYS);
    assert_eq!(i.state, State::Backoff);
    assert!(a.contains(&Action::Reroute));
}

#[test]
fn launch_failure_backs_off() {
    let mut i = Instance::new("w-1".into(), "w".into(), 1, 0, None);
    let a = i.handle(
        Input::LaunchFailed {
            reason: "cannot start \"nope\": No such file or directory".into(),
        },
        0,
        WEB_ALWAYS,
    );
    assert_eq!(i.state, State::Backoff);
    assert!(!a.contains(&Action::Release), "no shim to release");
    assert!(i.last_exit.as_deref().unwrap_or("").contains("nope"));
}

#[test]
fn a_stop_that_races_the_launch_stops_the_app_once_it_exists() {
    let mut i = Instance::new("web-1".into(), "web".into(), 1, 0, Some(20000));
    i.handle(Input::Stop, 0, WEB_ALWAYS);
    assert_eq!(i.state, State::Stopping);
    let a = i.handle(
        Input::Launched {
            pid: 9,
            shim_pid: 8,
            started_at_ms: 1,
        },
        1,
        WEB_ALWAYS,
    );
    assert_eq!(a, [Action::Watch, Action::Signal]);
    let mut j = Instance::new("web-2".into(), "web".into(), 1, 0, Some(20001));
    j.handle(Input::Stop, 0, WEB_ALWAYS);
    j.handle(Input::LaunchFailed { reason: "x".into() }, 1, WEB_ALWAYS);
    assert_eq!(j.state, State::Stopped);
}
