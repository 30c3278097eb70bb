//! The instance state machine: pure transitions, no I/O, the clock passed in.
//!
//! ```text
//!            Launched/Ready          Exited (policy: restart)
//! Starting ───────────────▶ Running ─────────────────────────▶ Backoff ──elapsed──▶ Starting
//!    │                         │      Exited (policy: no)                              
//!    │                         ├────────────────────────────▶ Exited
//!    │ Stop                    │ Stop
//!    ▼                         ▼
//! Stopping ◀──drained── Draining          Stopping ──Exited──▶ Stopped
//! ```
//!
//! **Invariant:** `Running` is the only state whose instance receives traffic.
//! **Invariant:** a stop always goes through `Draining` (when the instance may hold
//! requests) and `Stopping`; the restart policy never applies to an exit that a stop
//! caused.

use std::time::Duration;

use runtime::ExitStatus;
use serde::{Deserialize, Serialize};
use spec::{RestartPolicy, ServiceKind};

use crate::backoff;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Running,
    Draining,
    Stopping,
    Stopped,
    Backoff,
    Exited,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Draining => "draining",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Backoff => "backoff",
            State::Exited => "exited",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "starting" => State::Starting,
            "running" => State::Running,
            "draining" => State::Draining,
            "stopping" => State::Stopping,
            "stopped" => State::Stopped,
            "backoff" => State::Backoff,
            "exited" => State::Exited,
            _ => return None,
        })
    }

    /// Counts toward the service's instance count (will run, runs, or restarts).
    pub fn is_active(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Backoff)
    }

    /// A process may exist for this instance.
    pub fn may_have_process(self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Draining | State::Stopping
        )
    }

    /// Ended for good: nothing runs and nothing will.
    pub fn is_final(self) -> bool {
        matches!(self, State::Stopped | State::Exited)
    }
}

/// Health as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        }
    }
}

/// One instance, as stored. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// `SERVICE-N`.
    pub id: String,
    pub service: String,
    /// Release number (`vN`).
    pub release: u32,
    /// Which rollout of the service started it; a restart bumps the service's rollout so
    /// that every instance of an older one is replaced.
    pub rollout: u64,
    /// Incarnation: bumped on every launch. It names the shim's socket, and messages
    /// about an older incarnation are ignored.
    #[serde(default)]
    pub incarnation: u64,
    pub port: Option<u16>,
    pub state: State,
    pub health: Health,
    pub health_reason: Option<String>,
    pub pid: Option<u32>,
    pub shim_pid: Option<u32>,
    pub started_at_ms: Option<u64>,
    /// Total restarts by policy.
    pub restarts: u32,
    /// Backoff attempt (reset after a stable run).
    pub attempt: u32,
    /// When a backoff ends.
    pub restart_at_ms: Option<u64>,
    pub last_exit: Option<String>,
    /// Marked for replacement: it stayed unhealthy, or never became healthy in time.
    #[serde(default)]
    pub replace: bool,
}

/// What happened to an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The shim started the app.
    Launched {
        pid: u32,
        shim_pid: u32,
        started_at_ms: u64,
    },
    /// The app could not be started at all.
    LaunchFailed { reason: String },
    /// Readiness reached (port answers, health passes, or a worker stayed up 1 s).
    Ready,
    /// The app (group leader) ended.
    Exited { status: ExitStatus },
    /// The shim is gone and with it any knowledge of the app (e.g. after a reboot).
    Lost,
    /// Take it out of service: drain, then stop.
    Stop,
    /// No request in flight any more, or the drain time is up.
    Drained,
    /// The backoff delay passed.
    BackoffElapsed,
}

/// What the controller must do as a result. Executed in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start the app (a fresh shim).
    Launch,
    /// Watch for exit and probe readiness of the launched app.
    Watch,
    /// Wait until no request is in flight, at most the service's drain time.
    Drain,
    /// Ask the shim to stop the app gracefully.
    Signal,
    /// Tell the shim it may exit: its exit status is recorded.
    Release,
    /// Wake the instance with `BackoffElapsed` after this delay.
    RestartAfter(Duration),
    /// Routing changed: publish a new table.
    Reroute,
    /// Record an event.
    Event { kind: &'static str, message: String },
}

/// The service-level facts the transitions need.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub restart: RestartPolicy,
    pub kind: ServiceKind,
}

impl Instance {
    pub fn new(id: String, service: String, release: u32, rollout: u64, port: Option<u16>) -> Self {
        Instance {
            id,
            service,
            release,
            rollout,
            incarnation: 0,
            port,
            state: State::Starting,
            health: Health::Unknown,
            health_reason: None,
            pid: None,
            shim_pid: None,
            started_at_ms: None,
            restarts: 0,
            attempt: 0,
            restart_at_ms: None,
            last_exit: None,
            replace: false,
        }
    }

    /// Applies `input` at `now_ms` and returns the actions to carry out. Inputs that do
    /// not apply to the current state (a late `Ready` after a stop, say) change nothing.
    pub fn handle(&mut self, input: Input, now_ms: u64, policy: Policy) -> Vec<Action> {
        use State::*;
        match (self.state, input) {
            (
                Starting,
                Input::Launched {
                    pid,
                    shim_pid,
                    started_at_ms,
                },
            ) => {
                self.launched(pid, shim_pid, started_at_ms);
                vec![
                    Action::Watch,
                    self.event("instance.started", format!("started, pid {pid}")),
                ]
            }
            (Starting, Input::LaunchFailed { reason }) => {
                self.crashed(format!("failed to start: {reason}"), false, now_ms, policy)
            }
            (Starting, Input::Ready) => {
                self.state = Running;
                vec![
                    Action::Reroute,
                    self.event("instance.running", "ready, receiving traffic".into()),
                ]
            }
            (Starting | Running, Input::Exited { status }) => {
                let failed = !status.success();
                self.crashed(status.to_string(), failed, now_ms, policy)
            }
            (Starting | Running, Input::Lost) => self.crashed(
                "lost (its supervising shim is gone)".into(),
                true,
                now_ms,
                policy,
            ),
            (Running, Input::Stop) => {
                self.state = Draining;
                vec![
                    Action::Reroute,
                    Action::Drain,
                    self.event("instance.draining", "draining".into()),
                ]
            }
            // A stop raced with the launch: now that the app exists, stop it.
            (
                Stopping,
                Input::Launched {
                    pid,
                    shim_pid,
                    started_at_ms,
                },
            ) => {
                self.launched(pid, shim_pid, started_at_ms);
                vec![Action::Watch, Action::Signal]
            }
            (Stopping, Input::LaunchFailed { .. }) => {
                self.state = Stopped;
                vec![self.event("instance.stopped", "stopped".into())]
            }
            (Starting, Input::Stop) | (Draining, Input::Drained) => {
                self.state = Stopping;
                vec![
                    Action::Reroute,
                    Action::Signal,
                    self.event("instance.stopping", "stopping".into()),
                ]
            }
            (Backoff | Exited, Input::Stop) => {
                self.state = Stopped;
                self.restart_at_ms = None;
                vec![self.event("instance.stopped", "stopped".into())]
            }
            (Draining | Stopping, Input::Exited { status }) => {
                self.state = Stopped;
                self.pid = None;
                self.last_exit = Some(status.to_string());
                vec![
                    Action::Reroute,
                    Action::Release,
                    self.event("instance.stopped", format!("stopped ({status})")),
                ]
            }
            (Draining | Stopping, Input::Lost) => {
                self.state = Stopped;
                self.pid = None;
                vec![
                    Action::Reroute,
                    self.event("instance.stopped", "stopped (shim gone)".into()),
                ]
            }
            (Backoff, Input::BackoffElapsed) => {
                self.state = Starting;
                self.restarts = self.restarts.saturating_add(1);
                self.restart_at_ms = None;
                self.health = Health::Unknown;
                vec![
                    Action::Launch,
                    self.event(
                        "instance.restarting",
                        format!("restarting (restart #{})", self.restarts),
                    ),
                ]
            }
            _ => Vec::new(),
        }
    }

    fn launched(&mut self, pid: u32, shim_pid: u32, started_at_ms: u64) {
        self.pid = Some(pid);
        self.shim_pid = Some(shim_pid);
        self.started_at_ms = Some(started_at_ms);
    }

    /// The app ended on its own: restart it after a backoff, or leave it exited.
    fn crashed(
        &mut self,
        reason: String,
        failed: bool,
        now_ms: u64,
        policy: Policy,
    ) -> Vec<Action> {
        let was_routed = self.state == State::Running;
        let ran_for = self
            .started_at_ms
            .map(|s| Duration::from_millis(now_ms.saturating_sub(s)))
            .unwrap_or_default();
        self.pid = None;
        self.health = Health::Unknown;
        self.last_exit = Some(reason.clone());
        let mut actions = Vec::new();
        if was_routed {
            actions.push(Action::Reroute);
        }
        if self.shim_pid.is_some() {
            actions.push(Action::Release);
        }
        let restart = match policy.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        if restart {
            // The first crash after a stable run restarts quickly; a crash loop slows down.
            let (delay, next) = backoff::on_crash(self.attempt, ran_for);
            self.attempt = next;
            self.state = State::Backoff;
            self.restart_at_ms = Some(now_ms + delay.as_millis() as u64);
            actions.push(Action::RestartAfter(delay));
            actions.push(self.event(
                "instance.backoff",
                format!("{reason}; restarting in {}", spec::format_duration(delay)),
            ));
        } else {
            self.state = State::Exited;
            actions.push(self.event(
                "instance.exited",
                format!("{reason}; not restarted (policy)"),
            ));
        }
        actions
    }

    fn event(&self, kind: &'static str, message: String) -> Action {
        Action::Event { kind, message }
    }
}

#[cfg(test)]
mod tests;
