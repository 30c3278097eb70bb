//! Rollouts: the pure planner that decides, for one service, which instances to start and
//! stop and how a deploy progresses — rolling with surge, recreate, replacing sick
//! instances, failing and rolling back.
//!
//! Every change of what runs is a rollout to a *target* (a release and a rollout
//! number): `up` and `apply` of a changed entry, `restart`, `deploy`, `rollback`, and the
//! automatic rollback itself (whose target is the previous rollout). [`plan`] looks at
//! the service's instances and returns [`Decision`]s; the controller carries them out and
//! calls it again after anything changes. Because the planner is level-triggered and its
//! inputs (the deploy record, the instance records) are stored, a berth that was killed in
//! the middle of a deploy picks up where it was: the deploy finishes, or its rollback does.
//!
//! **Invariant (rolling):** instances of the old rollout are stopped only while the
//! serving instances (running and not unhealthy) stay at or above the desired count, and
//! no more than `desired + surge` instances are active at once.
//! **Invariant:** a failed deploy ends with every instance on the previous rollout.

use serde::{Deserialize, Serialize};
use spec::Strategy;

use crate::instance::{Health, State};

/// A deploy in progress, stored with the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deploy {
    pub from_release: u32,
    pub from_rollout: u64,
    pub to_release: u32,
    pub to_rollout: u64,
    pub phase: Phase,
    /// `deploy`, `apply`, `restart`, `rollback`, …
    pub trigger: String,
    pub started_ms: u64,
    /// Why it failed, once it did.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// The release command runs; nothing is started yet.
    ReleaseCommand,
    /// New instances start in batches; old ones drain as new ones serve.
    Rolling,
    /// Every instance is new; a crash or failed check until `until_ms` rolls back.
    Watching { until_ms: u64 },
    /// Failed: the previous rollout is being restored.
    RollingBack,
}

/// What the planner needs to know about one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub id: String,
    pub rollout: u64,
    pub state: State,
    pub health: Health,
    /// Flagged for replacement (sick, or not healthy within grace outside a deploy).
    pub replace: bool,
    /// When its current incarnation was launched (or created, before that).
    pub since_ms: u64,
    /// Why it last exited or last failed a check, for failure messages.
    pub reason: Option<String>,
}

impl View {
    /// Receives traffic.
    fn serving(&self) -> bool {
        self.state == State::Running && self.health != Health::Unhealthy
    }
}

/// The service-level settings of the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub desired: usize,
    /// The rollout that should run.
    pub rollout: u64,
    pub surge: usize,
    pub strategy: Strategy,
    pub grace_ms: u64,
    pub watch_ms: u64,
    pub auto_rollback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start one new instance of the target rollout.
    Start,
    /// Drain and stop this instance.
    Stop(String),
    /// Drop the record of an ended instance that is not wanted any more.
    Forget(String),
    /// Mark an instance for replacement (it did not become healthy within grace).
    Replace(String),
    /// The deploy failed: restore the previous rollout.
    Fail(String),
    /// Every instance runs the new rollout: start the watch window.
    Switched,
    /// The watch window passed: the deploy succeeded.
    Finish,
    /// The previous rollout serves again: the failed deploy is over.
    RolledBack,
}

/// Decides what to do next for one service. Pure: same inputs, same decisions.
pub fn plan(t: &Target, deploy: Option<&Deploy>, instances: &[View], now_ms: u64) -> Vec<Decision> {
    let mut out = Vec::new();
    if deploy.is_some_and(|d| d.phase == Phase::ReleaseCommand) {
        // Nothing changes until the release command succeeded.
        return out;
    }
    let is_current = |v: &View| v.rollout == t.rollout && !v.replace;
    let current: Vec<&View> = instances
        .iter()
        .filter(|v| is_current(v) && (v.state.is_active() || v.state == State::Exited))
        .collect();
    let old: Vec<&View> = instances
        .iter()
        .filter(|v| !is_current(v) && v.state.is_active())
        .collect();

    // A deploy fails when a new instance crashes or is not healthy in time, and — in the
    // watch window — when one turns unhealthy.
    let rolling_forward = matches!(
        deploy.map(|d| d.phase),
        Some(Phase::Rolling) | Some(Phase::Watching { .. })
    );
    if let Some(d) = deploy.filter(|_| rolling_forward) {
        let watching = matches!(d.phase, Phase::Watching { .. });
        for v in &current {
            let why = |what: &str| match &v.reason {
                Some(r) => format!("instance {} {what}: {r}", v.id),
                None => format!("instance {} {what}", v.id),
            };
            let failure = match v.state {
                State::Backoff | State::Exited => Some(why("exited")),
                State::Starting if now_ms.saturating_sub(v.since_ms) >= t.grace_ms => {
                    Some(why(&format!(
                        "was not healthy within {}",
                        spec::format_duration(std::time::Duration::from_millis(t.grace_ms))
                    )))
                }
                State::Running if watching && v.health == Health::Unhealthy => {
                    Some(why("turned unhealthy"))
                }
                _ => None,
            };
            if let Some(reason) = failure
                && (!watching || t.auto_rollback)
            {
                out.push(Decision::Fail(reason));
                return out;
            }
        }
    } else {
        // Outside a rollout, an instance that never became healthy is replaced.
        for v in &current {
            if v.state == State::Starting && now_ms.saturating_sub(v.since_ms) >= t.grace_ms {
                out.push(Decision::Replace(v.id.clone()));
            }
        }
    }

    // Ended instances of another rollout are history.
    for v in instances {
        if !is_current(v) && v.state.is_final() {
            out.push(Decision::Forget(v.id.clone()));
        }
    }

    let recreate =
        t.strategy == Strategy::Recreate && deploy.is_some_and(|d| d.phase == Phase::Rolling);
    let serving_current = current.iter().filter(|v| v.serving()).count();

    // Stop old instances. Recreate stops them all first; rolling keeps the serving count.
    let mut old_active = old.len();
    if recreate || t.desired == 0 {
        for v in &old {
            out.push(Decision::Stop(v.id.clone()));
        }
        old_active = 0;
    } else {
        let serving_old: Vec<&&View> = old.iter().filter(|v| v.serving()).collect();
        let mut excess = (serving_current + serving_old.len()).saturating_sub(t.desired);
        for v in &old {
            let stop = if v.serving() {
                if excess > 0 {
                    excess -= 1;
                    true
                } else {
                    false
                }
            } else if v.state == State::Running {
                // Running but unhealthy: replaced once the new ones serve.
                serving_current >= t.desired
            } else {
                true // starting or crash-looping: it serves nothing
            };
            if stop {
                out.push(Decision::Stop(v.id.clone()));
                old_active -= 1;
            }
        }
    }

    // Start or shed instances of the target rollout.
    if current.len() < t.desired {
        let room = if recreate && old_active > 0 {
            0
        } else {
            (t.desired + t.surge.max(1)).saturating_sub(current.len() + old_active)
        };
        for _ in 0..(t.desired - current.len()).min(room) {
            out.push(Decision::Start);
        }
    } else if current.len() > t.desired {
        let mut extra = current.clone();
        extra.sort_by_key(|v| {
            let rank = match v.state {
                State::Exited => 0,
                State::Backoff => 1,
                State::Starting => 2,
                _ => 3,
            };
            (rank, std::cmp::Reverse(index_of(&v.id)))
        });
        for v in extra.into_iter().take(current.len() - t.desired) {
            out.push(if v.state == State::Exited {
                Decision::Forget(v.id.clone())
            } else {
                Decision::Stop(v.id.clone())
            });
        }
    }

    // Progress of the deploy.
    let done = old_active == 0 && serving_current >= t.desired && current.len() == t.desired;
    match deploy.map(|d| d.phase) {
        Some(Phase::Rolling) if done => out.push(Decision::Switched),
        Some(Phase::Watching { until_ms }) if now_ms >= until_ms => out.push(Decision::Finish),
        Some(Phase::RollingBack) if done => out.push(Decision::RolledBack),
        _ => {}
    }
    out
}

/// `web-12` → 12.
pub fn index_of(id: &str) -> u32 {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
