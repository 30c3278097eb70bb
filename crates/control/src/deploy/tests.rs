//! Deterministic simulation of rollouts: a fake runtime whose instances start slowly,
//! crash, never get healthy or flap, a fake clock stepped 10 ms at a time, and the real
//! planner deciding. Invariants are checked at every step.

use std::collections::BTreeMap;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    /// Running and healthy `after` ms after the start.
    Good { after: u64 },
    /// Exits `after` ms after the start (before or after becoming ready).
    Crash { after: u64 },
    /// Never passes its health check.
    NeverHealthy,
    /// Ready after `after` ms, then unhealthy every other `period` ms.
    Flapping { after: u64, period: u64 },
}

struct SimInstance {
    view: View,
    started: u64,
    behaviour: Behaviour,
    /// Set while draining/stopping: when it will be gone.
    stops_at: Option<u64>,
}

struct World {
    now: u64,
    target: Target,
    deploy: Option<Deploy>,
    instances: BTreeMap<String, SimInstance>,
    next: u32,
    behaviour_of: BTreeMap<u64, Behaviour>,
    /// Deterministic jitter for start times.
    seed: u64,
    max_active: usize,
    min_serving: usize,
    outcome: Option<&'static str>,
    fail_reason: Option<String>,
}

impl World {
    fn new(desired: usize, surge: usize, strategy: Strategy, seed: u64) -> World {
        let mut w = World {
            now: 0,
            target: Target {
                desired,
                rollout: 1,
                surge,
                strategy,
                grace_ms: 2_000,
                watch_ms: 1_000,
                auto_rollback: true,
            },
            deploy: None,
            instances: BTreeMap::new(),
            next: 1,
            behaviour_of: BTreeMap::from([(1, Behaviour::Good { after: 100 })]),
            seed,
            max_active: 0,
            min_serving: usize::MAX,
            outcome: None,
            fail_reason: None,
        };
        w.run_until(|w| w.serving() == desired, 5_000);
        w
    }

    fn rand(&mut self, below: u64) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed % below.max(1)
    }

    fn serving(&self) -> usize {
        self.instances.values().filter(|i| i.view.serving()).count()
    }

    fn active(&self) -> usize {
        self.instances
            .values()
            .filter(|i| i.view.state.is_active())
            .count()
    }

    fn deploy_to(&mut self, behaviour: Behaviour) {
        let from = self.target.rollout;
        let to = from + 1;
        self.behaviour_of.insert(to, behaviour);
        self.deploy = Some(Deploy {
            from_release: from as u32,
            from_rollout: from,
            to_release: to as u32,
            to_rollout: to,
            phase: Phase::Rolling,
            trigger: "test".into(),
            started_ms: self.now,
            reason: None,
        });
        self.target.rollout = to;
        self.max_active = 0;
        self.min_serving = usize::MAX;
        self.outcome = None;
    }

    fn step(&mut self) {
        self.now += 10;
        let now = self.now;
        // The fake runtime: instances follow their behaviour.
        for i in self.instances.values_mut() {
            if let Some(at) = i.stops_at {
                if now >= at {
                    i.view.state = State::Stopped;
                    i.stops_at = None;
                }
                continue;
            }
            let age = now - i.started;
            match (i.behaviour, i.view.state) {
                (Behaviour::Good { after }, State::Starting) if age >= after => {
                    i.view.state = State::Running;
                    i.view.health = Health::Healthy;
                }
                (Behaviour::Crash { after }, State::Starting | State::Running) if age >= after => {
                    i.view.state = State::Backoff;
                    i.view.reason = Some("exit code 1".into());
                }
                (Behaviour::Flapping { after, .. }, State::Starting) if age >= after => {
                    i.view.state = State::Running;
                    i.view.health = Health::Healthy;
                }
                (Behaviour::Flapping { after, period }, State::Running) => {
                    let sick = ((age - after) / period) % 2 == 1;
                    i.view.health = if sick {
                        Health::Unhealthy
                    } else {
                        Health::Healthy
                    };
                }
                (Behaviour::NeverHealthy, State::Starting) => {
                    i.view.reason = Some("GET /healthz got 503".into());
                }
                _ => {}
            }
        }
        // The planner decides; the fake controller carries it out.
        let views: Vec<View> = self.instances.values().map(|i| i.view.clone()).collect();
        for d in plan(&self.target, self.deploy.as_ref(), &views, now) {
            match d {
                Decision::Start => {
                    let id = format!("web-{}", self.next);
                    self.next += 1;
                    let behaviour = match self.behaviour_of[&self.target.rollout] {
                        Behaviour::Good { after } => Behaviour::Good {
                            after: after + self.rand(300),
                        },
                        b => b,
                    };
                    self.instances.insert(
                        id.clone(),
                        SimInstance {
                            view: View {
                                id,
                                rollout: self.target.rollout,
                                state: State::Starting,
                                health: Health::Unknown,
                                replace: false,
                                since_ms: now,
                                reason: None,
                            },
                            started: now,
                            behaviour,
                            stops_at: None,
                        },
                    );
                }
                Decision::Stop(id) => {
                    let drain = 50 + self.rand(100);
                    let i = self
                        .instances
                        .get_mut(&id)
                        .expect("stop of an unknown instance");
                    assert!(
                        i.view.state.is_active(),
                        "stop of a {:?} instance",
                        i.view.state
                    );
                    i.view.state = State::Draining;
                    i.stops_at = Some(now + drain);
                }
                Decision::Forget(id) => {
                    let i = self
                        .instances
                        .remove(&id)
                        .expect("forget of an unknown instance");
                    assert!(
                        i.view.state.is_final(),
                        "forgot a {:?} instance",
                        i.view.state
                    );
                }
                Decision::Replace(id) => {
                    if let Some(i) = self.instances.get_mut(&id) {
                        i.view.replace = true;
                    }
                }
                Decision::Fail(reason) => {
                    let d = self.deploy.as_mut().expect("fail without a deploy");
                    d.phase = Phase::RollingBack;
                    d.reason = Some(reason.clone());
                    self.target.rollout = d.from_rollout;
                    self.fail_reason = Some(reason);
                }
                Decision::Switched => {
                    let d = self.deploy.as_mut().expect("switch without a deploy");
                    d.phase = Phase::Watching {
                        until_ms: now + self.target.watch_ms,
                    };
                }
                Decision::Finish => {
                    self.deploy = None;
                    self.outcome = Some("live");
                }
                Decision::RolledBack => {
                    self.deploy = None;
                    self.outcome = Some("rolled back");
                }
            }
        }
        self.max_active = self.max_active.max(self.active());
        self.min_serving = self.min_serving.min(self.serving());
    }

    fn run_until(&mut self, done: impl Fn(&World) -> bool, max_ms: u64) {
        let end = self.now + max_ms;
        while !done(self) {
            assert!(self.now < end, "simulation did not settle in {max_ms} ms");
            self.step();
        }
    }

    fn finish_deploy(&mut self) -> &'static str {
        self.run_until(|w| w.deploy.is_none(), 60_000);
        // Let stops complete.
        self.run_until(
            |w| w.instances.values().all(|i| i.stops_at.is_none()),
            5_000,
        );
        self.step();
        self.outcome.expect("deploy ended without an outcome")
    }

    fn rollouts_serving(&self) -> Vec<u64> {
        let mut r: Vec<u64> = self
            .instances
            .values()
            .filter(|i| i.view.serving())
            .map(|i| i.view.rollout)
            .collect();
        r.dedup();
        r
    }
}

#[test]
fn a_rolling_deploy_never_drops_below_the_desired_count() {
    for seed in 1..=20 {
        for (desired, surge) in [(1, 1), (2, 1), (3, 1), (4, 2), (5, 5)] {
            let mut w = World::new(desired, surge, Strategy::Rolling, seed);
            w.deploy_to(Behaviour::Good { after: 150 });
            assert_eq!(w.finish_deploy(), "live", "seed {seed}, {desired}/{surge}");
            assert!(
                w.min_serving >= desired,
                "seed {seed}: serving fell to {} of {desired}",
                w.min_serving
            );
            assert!(
                w.max_active <= desired + surge,
                "seed {seed}: {} active with {desired}+{surge}",
                w.max_active
            );
            assert_eq!(w.rollouts_serving(), vec![2]);
            assert_eq!(w.serving(), desired);
        }
    }
}

#[test]
fn a_crash_at_start_rolls_back_without_losing_capacity() {
    for seed in 1..=10 {
        let mut w = World::new(3, 1, Strategy::Rolling, seed);
        w.deploy_to(Behaviour::Crash { after: 50 });
        assert_eq!(w.finish_deploy(), "rolled back");
        assert!(w.min_serving >= 3, "serving fell to {}", w.min_serving);
        assert_eq!(w.rollouts_serving(), vec![1]);
        assert_eq!(w.serving(), 3);
        let reason = w.fail_reason.clone().unwrap();
        assert!(reason.contains("exited: exit code 1"), "{reason}");
    }
}

#[test]
fn a_release_that_never_gets_healthy_fails_after_grace() {
    let mut w = World::new(2, 1, Strategy::Rolling, 7);
    let start = w.now;
    w.deploy_to(Behaviour::NeverHealthy);
    assert_eq!(w.finish_deploy(), "rolled back");
    assert!(w.now - start >= w.target.grace_ms, "gave up before grace");
    let reason = w.fail_reason.clone().unwrap();
    assert!(
        reason.contains("was not healthy within 2s: GET /healthz got 503"),
        "{reason}"
    );
    assert!(w.min_serving >= 2);
    assert_eq!(w.rollouts_serving(), vec![1]);
}

#[test]
fn a_crash_in_the_watch_window_rolls_back() {
    let mut w = World::new(2, 1, Strategy::Rolling, 3);
    w.deploy_to(Behaviour::Good { after: 100 });
    w.run_until(
        |w| {
            matches!(
                w.deploy.as_ref().map(|d| d.phase),
                Some(Phase::Watching { .. })
            )
        },
        10_000,
    );
    let victim = w
        .instances
        .values_mut()
        .find(|i| i.view.rollout == 2 && i.view.serving())
        .unwrap();
    // It crashes after the switch, inside the watch window.
    victim.behaviour = Behaviour::Crash { after: 0 };
    assert_eq!(w.finish_deploy(), "rolled back");
    assert_eq!(w.rollouts_serving(), vec![1]);
    assert_eq!(w.serving(), 2);
}

#[test]
fn flapping_health_in_the_watch_window_rolls_back_unless_auto_rollback_is_off() {
    let mut w = World::new(2, 1, Strategy::Rolling, 5);
    w.deploy_to(Behaviour::Flapping {
        after: 100,
        period: 400,
    });
    assert_eq!(w.finish_deploy(), "rolled back");
    assert!(w.fail_reason.clone().unwrap().contains("turned unhealthy"));

    let mut w = World::new(2, 1, Strategy::Rolling, 5);
    w.target.auto_rollback = false;
    w.deploy_to(Behaviour::Flapping {
        after: 100,
        period: 400,
    });
    assert_eq!(w.finish_deploy(), "live");
}

#[test]
fn recreate_stops_the_old_first() {
    let mut w = World::new(3, 1, Strategy::Recreate, 11);
    w.deploy_to(Behaviour::Good { after: 100 });
    w.step();
    let old_left = w
        .instances
        .values()
        .filter(|i| i.view.rollout == 1 && i.view.state.is_active())
        .count();
    assert_eq!(old_left, 0, "recreate kept old instances running");
    assert_eq!(w.finish_deploy(), "live");
    assert_eq!(w.min_serving, 0, "recreate has downtime, by design");
    assert_eq!(w.serving(), 3);
}

#[test]
fn a_sick_instance_is_replaced_after_its_replacement_serves() {
    let mut w = World::new(2, 1, Strategy::Rolling, 9);
    let sick_id = w.instances.keys().next().unwrap().clone();
    {
        let sick = w.instances.get_mut(&sick_id).unwrap();
        sick.view.health = Health::Unhealthy;
        sick.view.replace = true;
        sick.behaviour = Behaviour::NeverHealthy;
    }
    w.step();
    let sick = &w.instances[&sick_id];
    assert_eq!(
        sick.view.state,
        State::Running,
        "stopped before a replacement served"
    );
    w.run_until(
        |w| {
            w.serving() == 2
                && w.instances
                    .get(&sick_id)
                    .is_none_or(|i| i.view.state == State::Stopped)
        },
        5_000,
    );
    assert_eq!(w.active(), 2);
}

#[test]
fn scale_down_sheds_the_newest() {
    let mut w = World::new(3, 1, Strategy::Rolling, 2);
    w.target.desired = 1;
    let views: Vec<View> = w.instances.values().map(|i| i.view.clone()).collect();
    let d = plan(&w.target, None, &views, w.now);
    assert_eq!(
        d,
        vec![
            Decision::Stop("web-3".into()),
            Decision::Stop("web-2".into())
        ]
    );
}

#[test]
fn the_release_command_phase_changes_nothing() {
    let w = World::new(2, 1, Strategy::Rolling, 1);
    let views: Vec<View> = w.instances.values().map(|i| i.view.clone()).collect();
    let mut t = w.target;
    t.rollout = 2;
    let d = Deploy {
        from_release: 1,
        from_rollout: 1,
        to_release: 2,
        to_rollout: 2,
        phase: Phase::ReleaseCommand,
        trigger: "deploy".into(),
        started_ms: 0,
        reason: None,
    };
    assert!(plan(&t, Some(&d), &views, w.now).is_empty());
}
