//! The controller: the single writer of instance state.
//!
//! One tokio task owns every service and instance record. Everything else — API
//! requests, process exits, readiness probes, timers — reaches it as a [`Msg`] on one
//! channel; it applies the pure instance transitions (`instance::Instance::handle`),
//! persists the result, and runs the resulting actions as small tasks that report back
//! with more messages. After every message it reconciles: for each service, compare the
//! desired instance count and rollout with the instances that exist, and start, stop or
//! replace until they agree. Start-up (a diff from the stored state), `apply`, `scale`,
//! `stop`, `start` and `restart` all end in that same reconcile.
//!
//! **Invariant:** no instance runs twice: an instance id has at most one incarnation
//! (`incarnation`) whose messages are accepted; late messages of an older incarnation are dropped.
//! **Invariant:** a replaced instance is stopped only when enough instances of the new
//! rollout are `running` to keep the service at its desired count.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spec::api::{
    ApplyResponse, DeployResponse, EventView, InstanceView, PsResponse, ReleaseView, ServiceView,
};
use spec::{ServiceKind, ServiceSpec, Spec};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::clock::{now_ms, rfc3339};
use crate::deploy::{self, Decision};

mod rollout;
use crate::instance::{Action, Health, Input, Instance, Policy, State};
use crate::ports::PortAllocator;
use crate::routes::{self, DataPlane, RouteInput};
use crate::store::{EventRecord, ReleaseRecord, ServiceRecord, Store};

/// How often the controller re-plans on its own (grace and watch deadlines, stats).
const TICK: Duration = Duration::from_millis(250);
/// How often a starting instance is probed until its first health check passes.
const STARTUP_PROBE: Duration = Duration::from_millis(50);
/// Resource usage is sampled every this many ticks (2 s).
const STATS_EVERY: u64 = 8;

/// Errors the controller returns to API callers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for ControlError {
    fn from(e: crate::store::StoreError) -> Self {
        ControlError::Internal(e.to_string())
    }
}

type Reply<T> = oneshot::Sender<Result<T, ControlError>>;

/// Where the controller keeps files and how it starts shims.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    pub shim_exe: PathBuf,
}

/// Requests from the API.
#[derive(Debug)]
pub enum Request {
    Ps(Reply<PsResponse>),
    Services(Reply<Vec<ServiceView>>),
    Apply {
        spec: Box<Spec>,
        trigger: String,
        reply: Reply<ApplyResponse>,
    },
    Scale {
        service: String,
        instances: u32,
        reply: Reply<String>,
    },
    Stop {
        service: String,
        reply: Reply<String>,
    },
    Start {
        service: String,
        reply: Reply<String>,
    },
    Restart {
        service: String,
        reply: Reply<String>,
    },
    Signal {
        service: String,
        signal: spec::Signal,
        reply: Reply<String>,
    },
    Maintenance {
        service: String,
        enabled: bool,
        reply: Reply<String>,
    },
    Releases {
        service: String,
        reply: Reply<Vec<ReleaseView>>,
    },
    Events {
        after: Option<u64>,
        limit: u32,
        reply: Reply<Vec<EventView>>,
    },
    /// A new release from the file's entry (and `source`, a directory already moved
    /// under data_dir), rolled out.
    Deploy {
        service: String,
        source: Option<PathBuf>,
        trigger: String,
        reply: Reply<DeployResponse>,
    },
    /// Roll out an earlier release again.
    Rollback {
        service: String,
        to: Option<u32>,
        reply: Reply<DeployResponse>,
    },
    /// The service's log files, for `logs`.
    LogDir {
        service: String,
        reply: Reply<PathBuf>,
    },
    /// Stop every instance gracefully (or at once with `immediate`), then reply.
    Shutdown {
        immediate: bool,
        reply: oneshot::Sender<()>,
    },
}

#[derive(Debug)]
enum Msg {
    Request(Request),
    Instance {
        id: String,
        incarnation: u64,
        input: Input,
    },
    Stats(HashMap<u32, runtime::stats::TreeSample>, Instant),
    /// One health probe's result.
    Health {
        id: String,
        incarnation: u64,
        result: Result<(), String>,
    },
    ReleaseCommandDone {
        service: String,
        rollout: u64,
        result: Result<(), String>,
    },
    /// Re-plan now (a grace or watch time is up).
    Wake,
    /// Something worth an event that a task found.
    Warning {
        service: String,
        instance: String,
        message: String,
    },
    Tick,
}

/// A cheap, cloneable handle to the controller task.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    /// Notified whenever an event is recorded (for `events -f`).
    pub events: Arc<Notify>,
}

impl Handle {
    /// Sends a request built around a reply channel and waits for the answer.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Request(make(tx)))
            .map_err(|_| ControlError::Internal("berth is shutting down".into()))?;
        rx.await
            .map_err(|_| ControlError::Internal("berth is shutting down".into()))?
    }

    /// Stops every instance and waits until they have stopped.
    pub async fn shutdown(&self, immediate: bool) {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(Msg::Request(Request::Shutdown {
                immediate,
                reply: tx,
            }))
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}

/// A service as the controller holds it.
struct Service {
    record: ServiceRecord,
    /// Being removed: its instances stop, then it is forgotten.
    removed: bool,
    maintenance_page: String,
}

/// An instance with its run-time handles.
struct Slot {
    inst: Instance,
    /// Cancels the tasks of the current state (readiness probes, timers, drains).
    cancel: CancellationToken,
    /// Cancels the tasks of the current incarnation's life (health checks): fired when
    /// it leaves `starting`/`running`.
    life: CancellationToken,
    /// Consecutive passed and failed health checks.
    passes: u32,
    fails: u32,
    /// When this record was created or adopted (grace for instances not yet launched).
    created_ms: u64,
    /// Last CPU sample: (ticks, when).
    cpu: Option<(u64, Instant)>,
    cpu_percent: f64,
    memory_bytes: u64,
}

impl Slot {
    fn new(inst: Instance) -> Self {
        Slot {
            inst,
            cancel: CancellationToken::new(),
            life: CancellationToken::new(),
            passes: 0,
            fails: 0,
            created_ms: now_ms(),
            cpu: None,
            cpu_percent: 0.0,
            memory_bytes: 0,
        }
    }
}

pub struct Controller {
    config: ControllerConfig,
    store: Store,
    dataplane: Arc<dyn DataPlane>,
    tx: mpsc::UnboundedSender<Msg>,
    events: Arc<Notify>,
    services: BTreeMap<String, Service>,
    slots: BTreeMap<String, Slot>,
    /// Release specs by (service, version), read from the store on demand.
    release_specs: HashMap<(String, u32), ServiceSpec>,
    ports: PortAllocator,
    reroute: bool,
    shutting_down: Option<(bool, Vec<oneshot::Sender<()>>)>,
    ticks: u64,
    /// Outstanding `release` calls to shims.
    releases: TaskTracker,
}

impl Controller {
    /// Opens the controller on `store`: re-adopts the instances a previous berth left
    /// running, applies `spec` (a diff against the stored state), and starts the loop.
    pub async fn start(
        config: ControllerConfig,
        store: Store,
        spec: Spec,
        dataplane: Arc<dyn DataPlane>,
    ) -> Result<(Handle, tokio::task::JoinHandle<()>), ControlError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let events = Arc::new(Notify::new());
        let mut c = Controller {
            ports: PortAllocator::new(spec.berth.ports),
            config,
            store,
            dataplane,
            tx: tx.clone(),
            events: events.clone(),
            services: BTreeMap::new(),
            slots: BTreeMap::new(),
            release_specs: HashMap::new(),
            reroute: true,
            shutting_down: None,
            ticks: 0,
            releases: TaskTracker::new(),
        };
        for record in c.store.services()? {
            let maintenance_page = maintenance_page(&record.spec);
            c.services.insert(
                record.name.clone(),
                Service {
                    record,
                    removed: false,
                    maintenance_page,
                },
            );
        }
        c.adopt().await?;
        c.apply(&spec, "up")?;
        c.after_message();
        let ticker = tx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                if ticker.send(Msg::Tick).is_err() {
                    break;
                }
            }
        });
        let task = tokio::spawn(c.run(rx));
        Ok((Handle { tx, events }, task))
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Request(r) => self.request(r),
                Msg::Instance {
                    id,
                    incarnation,
                    input,
                } => self.instance_input(&id, incarnation, input),
                Msg::Stats(samples, at) => self.stats(samples, at),
                Msg::Health {
                    id,
                    incarnation,
                    result,
                } => self.health(&id, incarnation, result),
                Msg::ReleaseCommandDone {
                    service,
                    rollout,
                    result,
                } => self.release_command_done(&service, rollout, result),
                Msg::Wake => {}
                Msg::Warning {
                    service,
                    instance,
                    message,
                } => {
                    warn!(service = %service, instance = %instance, "{message}");
                    self.record_event(Some(service), Some(&instance), "instance.warning", &message);
                }
                Msg::Tick => self.tick(),
            }
            self.after_message();
            if self.shutdown_complete() {
                break;
            }
        }
        self.releases.close();
        if tokio::time::timeout(Duration::from_secs(5), self.releases.wait())
            .await
            .is_err()
        {
            warn!("some shims were not released in time");
        }
        info!("controller stopped");
    }

    /// Re-adopts instances recorded by an earlier berth: their shims are asked how the
    /// app is doing; running ones are kept (same pid), ended ones go through the restart
    /// policy, and ones whose shim is gone count as lost.
    async fn adopt(&mut self) -> Result<(), ControlError> {
        for inst in self.store.instances()? {
            let id = inst.id.clone();
            let slot = Slot::new(inst);
            let (state, incarnation) = (slot.inst.state, slot.inst.incarnation);
            self.slots.insert(id.clone(), slot);
            if !state.may_have_process() {
                if state == State::Backoff {
                    let wait = self
                        .slots
                        .get(&id)
                        .and_then(|s| s.inst.restart_at_ms)
                        .map(|t| t.saturating_sub(now_ms()))
                        .unwrap_or(0);
                    self.run_action(&id, Action::RestartAfter(Duration::from_millis(wait)));
                }
                continue;
            }
            let socket = self.socket_path(&id, incarnation);
            let status = match runtime::ShimClient::connect(&socket).await {
                Ok(mut c) => c.status().await.ok(),
                Err(_) => None,
            };
            match status {
                Some(st) if st.exit.is_none() => {
                    info!(instance = %id, pid = st.pid, "re-adopted");
                    // The record may predate the launch's report (berth died between the
                    // two): the shim is the truth.
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.inst.pid = Some(st.pid);
                        slot.inst.shim_pid = Some(st.shim_pid);
                        slot.inst.started_at_ms = Some(st.started_at_ms);
                        let inst = slot.inst.clone();
                        self.store.put_instance(&inst)?;
                    }
                    self.record_event(
                        self.slots.get(&id).map(|s| s.inst.service.clone()),
                        Some(&id),
                        "instance.adopted",
                        &format!("re-adopted, pid {}", st.pid),
                    );
                    self.run_action(&id, Action::Watch);
                    match state {
                        State::Draining => self.run_action(&id, Action::Drain),
                        State::Stopping => self.run_action(&id, Action::Signal),
                        _ => {}
                    }
                }
                Some(st) => {
                    let status = st.exit.unwrap_or(runtime::ExitStatus {
                        code: None,
                        signal: None,
                    });
                    self.instance_input(&id, incarnation, Input::Exited { status });
                }
                None => self.instance_input(&id, incarnation, Input::Lost),
            }
        }
        self.stop_orphans().await;
        Ok(())
    }

    /// Stops instances whose shim no record knows: berth died while launching them, after
    /// the shim started but before the launch was recorded. No instance runs unmanaged.
    async fn stop_orphans(&mut self) {
        let known: HashSet<PathBuf> = self
            .slots
            .values()
            .map(|s| self.socket_path(&s.inst.id, s.inst.incarnation))
            .collect();
        let Ok(entries) = std::fs::read_dir(self.config.data_dir.join("run")) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if known.contains(&path) || path.extension().is_none_or(|e| e != "sock") {
                continue;
            }
            match runtime::ShimClient::connect(&path).await {
                Ok(mut c) => {
                    let pid = c.status().await.map(|s| s.pid).unwrap_or(0);
                    let _ = c.stop(spec::Signal::KILL.number, Duration::ZERO).await;
                    let _ = c.release().await;
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    self.record_event(
                        None,
                        None,
                        "instance.orphan",
                        &format!(
                            "stopped pid {pid}: its shim ({name}) belongs to no recorded instance"
                        ),
                    );
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    // ---- requests -------------------------------------------------------------------

    fn request(&mut self, r: Request) {
        match r {
            Request::Ps(reply) => {
                let _ = reply.send(Ok(self.ps()));
            }
            Request::Services(reply) => {
                let _ = reply.send(Ok(self.service_views()));
            }
            Request::Apply {
                spec,
                trigger,
                reply,
            } => {
                let _ = reply.send(self.apply(&spec, &trigger));
            }
            Request::Scale {
                service,
                instances,
                reply,
            } => {
                let r = self.with_service(&service, |s| {
                    s.record.scale = Some(instances);
                    format!("{service} scaled to {instances}")
                });
                let _ = reply.send(r);
            }
            Request::Stop { service, reply } => {
                let r = self.with_service(&service, |s| {
                    s.record.stopped = true;
                    format!("{service} stopped")
                });
                let _ = reply.send(r);
            }
            Request::Start { service, reply } => {
                let r = self.with_service(&service, |s| {
                    s.record.stopped = false;
                    format!("{service} started")
                });
                let _ = reply.send(r);
            }
            Request::Restart { service, reply } => {
                let release = self
                    .services
                    .get(&service)
                    .filter(|s| !s.removed)
                    .map(|s| s.record.release);
                let r = match release {
                    Some(v) => self
                        .start_deploy(&service, v, "restart")
                        .map(|_| format!("{service}: rolling restart of v{v} started")),
                    None => Err(not_found(&service)),
                };
                let _ = reply.send(r);
            }
            Request::Deploy {
                service,
                source,
                trigger,
                reply,
            } => {
                let _ = reply.send(self.deploy(&service, source, &trigger));
            }
            Request::Rollback { service, to, reply } => {
                let _ = reply.send(self.rollback(&service, to));
            }
            Request::Maintenance {
                service,
                enabled,
                reply,
            } => {
                let r = self.with_service(&service, |s| {
                    s.record.maintenance = enabled;
                    let on = if enabled { "on" } else { "off" };
                    format!("{service}: maintenance {on}")
                });
                self.reroute = true;
                let _ = reply.send(r);
            }
            Request::Signal {
                service,
                signal,
                reply,
            } => {
                let _ = reply.send(self.signal(&service, signal));
            }
            Request::Releases { service, reply } => {
                let r = self.releases(&service);
                let _ = reply.send(r);
            }
            Request::Events {
                after,
                limit,
                reply,
            } => {
                let r = self
                    .store
                    .events(after, limit)
                    .map(|v| v.into_iter().map(event_view).collect())
                    .map_err(ControlError::from);
                let _ = reply.send(r);
            }
            Request::LogDir { service, reply } => {
                let r = if self.services.contains_key(&service) {
                    Ok(self.config.data_dir.join("logs").join(&service))
                } else {
                    Err(not_found(&service))
                };
                let _ = reply.send(r);
            }
            Request::Shutdown { immediate, reply } => {
                let first = self.shutting_down.is_none();
                let (was_immediate, waiters) =
                    self.shutting_down.get_or_insert((false, Vec::new()));
                waiters.push(reply);
                let escalate = immediate && !*was_immediate;
                *was_immediate |= immediate;
                if first {
                    self.record_event(None, None, "berth.stopping", "stopping every instance");
                    let ids: Vec<String> = self.slots.keys().cloned().collect();
                    for id in &ids {
                        self.stop_instance(id);
                    }
                }
                if escalate {
                    // Skip the drains and grace periods: SIGKILL every group now.
                    let ids: Vec<String> = self.slots.keys().cloned().collect();
                    for id in &ids {
                        if self
                            .slots
                            .get(id)
                            .is_some_and(|s| s.inst.state.may_have_process())
                        {
                            self.stop_process(id, Some(Duration::ZERO));
                        }
                    }
                }
            }
        }
    }

    /// Runs `f` on a known service, persists it and returns `f`'s message.
    fn with_service(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Service) -> String,
    ) -> Result<String, ControlError> {
        let s = match self.services.get_mut(name) {
            Some(s) if !s.removed => s,
            _ => return Err(not_found(name)),
        };
        let msg = f(s);
        self.store.put_service(&s.record)?;
        let service = name.to_owned();
        self.record_event(Some(service), None, "service.changed", &msg);
        Ok(msg)
    }

    fn signal(&mut self, name: &str, signal: spec::Signal) -> Result<String, ControlError> {
        if !self.services.contains_key(name) {
            return Err(not_found(name));
        }
        let targets: Vec<(String, PathBuf)> = self
            .slots
            .values()
            .filter(|s| s.inst.service == name && s.inst.pid.is_some())
            .map(|s| {
                (
                    s.inst.id.clone(),
                    self.socket_path(&s.inst.id, s.inst.incarnation),
                )
            })
            .collect();
        for (id, socket) in &targets {
            let number = signal.number;
            let id = id.clone();
            let socket = socket.clone();
            tokio::spawn(async move {
                let r = async {
                    runtime::ShimClient::connect(&socket)
                        .await?
                        .signal(number)
                        .await
                }
                .await;
                if let Err(e) = r {
                    warn!(instance = %id, error = %e, "signal failed");
                }
            });
        }
        let msg = format!(
            "sent {} to {} instance(s) of {name}",
            signal.name(),
            targets.len()
        );
        self.record_event(Some(name.to_owned()), None, "service.signal", &msg);
        Ok(msg)
    }

    /// Applies a validated spec: the one path for start-up and `apply`.
    fn apply(&mut self, spec: &Spec, trigger: &str) -> Result<ApplyResponse, ControlError> {
        self.ports.set_range(spec.berth.ports);
        let stored: BTreeMap<spec::ServiceName, ServiceSpec> = self
            .services
            .values()
            .filter(|s| !s.removed)
            .filter_map(|s| {
                spec::ServiceName::new(&s.record.name)
                    .ok()
                    .map(|n| (n, s.record.spec.clone()))
            })
            .collect();
        let d = spec::diff(&stored, &spec.services);
        // All or nothing: a changed service whose deploy still runs refuses the apply.
        for name in &d.changed {
            if let Some(dep) = self
                .services
                .get(name.as_str())
                .and_then(|s| s.record.deploy.as_ref())
            {
                return Err(ControlError::Conflict(format!(
                    "{name} changed, but its deploy of v{} ({}) is still running; apply again when it has finished",
                    dep.to_release, dep.trigger
                )));
            }
        }
        let now = now_ms();
        for name in &d.added {
            let sspec = spec.services[name].clone();
            let name = name.to_string();
            // A service re-added while its old instances still stop continues their
            // numbering and releases.
            let (next_index, release, rollout) = match self.services.get(&name) {
                Some(old) => (
                    old.record.next_index,
                    old.record.release + 1,
                    old.record.rollout + 1,
                ),
                None => (1, 1, 0),
            };
            let record = ServiceRecord {
                name: name.clone(),
                spec: sspec.clone(),
                scale: None,
                stopped: false,
                maintenance: false,
                release,
                rollout,
                next_index,
                deploy: None,
            };
            self.new_release(&record, now, trigger)?;
            self.store.put_service(&record)?;
            self.services.insert(
                name.clone(),
                Service {
                    maintenance_page: maintenance_page(&sspec),
                    record,
                    removed: false,
                },
            );
            self.record_event(
                Some(name),
                None,
                "service.added",
                &format!("added ({trigger})"),
            );
        }
        for name in &d.changed {
            let sspec = spec.services[name].clone();
            let name = name.to_string();
            let Some(s) = self.services.get_mut(&name) else {
                continue;
            };
            s.record.spec = sspec.clone();
            // Run-time settings last until the file's entry changes.
            s.record.scale = None;
            s.record.stopped = false;
            s.record.maintenance = false;
            s.maintenance_page = maintenance_page(&sspec);
            let record = s.record.clone();
            self.store.put_service(&record)?;
            let version = self.next_release_number(&name)?;
            let r = ReleaseRecord {
                service: name.clone(),
                version,
                status: "deploying".into(),
                created_ms: now,
                trigger: trigger.to_owned(),
                reason: None,
                spec: sspec.clone(),
            };
            self.store.put_release(&r)?;
            self.release_specs.insert((name.clone(), version), sspec);
            self.record_event(
                Some(name.clone()),
                None,
                "service.changed",
                &format!("changed: release v{version} ({trigger})"),
            );
            self.start_deploy(&name, version, trigger)?;
        }
        for name in &d.removed {
            let name = name.to_string();
            if let Some(s) = self.services.get_mut(&name) {
                s.removed = true;
                self.store.delete_service(&name)?;
                self.record_event(
                    Some(name),
                    None,
                    "service.removed",
                    "removed; stopping its instances",
                );
            }
        }
        self.reroute = true;
        Ok(ApplyResponse {
            added: d.added.iter().map(|n| n.to_string()).collect(),
            changed: d.changed.iter().map(|n| n.to_string()).collect(),
            removed: d.removed.iter().map(|n| n.to_string()).collect(),
            unchanged: d.unchanged.iter().map(|n| n.to_string()).collect(),
        })
    }

    fn new_release(
        &mut self,
        record: &ServiceRecord,
        now: u64,
        trigger: &str,
    ) -> Result<(), ControlError> {
        let r = ReleaseRecord {
            service: record.name.clone(),
            version: record.release,
            status: "live".into(),
            created_ms: now,
            trigger: trigger.to_owned(),
            reason: None,
            spec: record.spec.clone(),
        };
        self.store.put_release(&r)?;
        self.release_specs
            .insert((record.name.clone(), record.release), record.spec.clone());
        Ok(())
    }

    fn releases(&self, name: &str) -> Result<Vec<ReleaseView>, ControlError> {
        if !self.services.contains_key(name) {
            return Err(not_found(name));
        }
        Ok(self
            .store
            .releases(name)?
            .into_iter()
            .map(|r| ReleaseView {
                version: format!("v{}", r.version),
                status: r.status,
                created: rfc3339(r.created_ms),
                trigger: r.trigger,
                reason: r.reason,
            })
            .collect())
    }

    // ---- instances ------------------------------------------------------------------

    fn instance_input(&mut self, id: &str, incarnation: u64, input: Input) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if slot.inst.incarnation != incarnation {
            debug!(instance = %id, incarnation, current = slot.inst.incarnation, ?input, "dropping stale input");
            return;
        }
        let Some(policy) = self.policy(id) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let before = slot.inst.state;
        let actions = slot.inst.handle(input, now_ms(), policy);
        if slot.inst.state != before {
            // Tasks of the old state (probes, drains, timers) are moot now.
            slot.cancel.cancel();
            slot.cancel = CancellationToken::new();
            if !matches!(slot.inst.state, State::Starting | State::Running) {
                slot.life.cancel();
            }
        }
        let inst = slot.inst.clone();
        if let Err(e) = self.store.put_instance(&inst) {
            warn!(instance = %id, error = %e, "cannot record instance");
        }
        if before != State::Running && inst.state == State::Running {
            self.warn_if_wildcard(&inst);
        }
        for a in actions {
            self.run_action(id, a);
        }
    }

    /// Counts a health probe's result: readiness after `healthy_threshold` passes, out of
    /// rotation after `unhealthy_threshold` failures, replaced when it stays unhealthy
    /// as long again.
    fn health(&mut self, id: &str, incarnation: u64, result: Result<(), String>) {
        let Some(spec) = self.instance_spec(id) else {
            return;
        };
        let Some(h) = spec.health.as_ref() else {
            return;
        };
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if slot.inst.incarnation != incarnation
            || !matches!(slot.inst.state, State::Starting | State::Running)
        {
            return;
        }
        let service = slot.inst.service.clone();
        let mut events: Vec<(&'static str, String)> = Vec::new();
        let mut ready = false;
        match result {
            Ok(()) => {
                slot.fails = 0;
                slot.passes = slot.passes.saturating_add(1);
                if slot.passes >= h.healthy_threshold && slot.inst.health != Health::Healthy {
                    if slot.inst.health == Health::Unhealthy {
                        events.push(("instance.healthy", "healthy again: back in rotation".into()));
                    } else {
                        events.push((
                            "instance.healthy",
                            format!("{} passed", crate::health::describe(&h.check)),
                        ));
                    }
                    slot.inst.health = Health::Healthy;
                    slot.inst.health_reason = None;
                    ready = slot.inst.state == State::Starting;
                    self.reroute = true;
                }
            }
            Err(reason) => {
                slot.passes = 0;
                slot.fails = slot.fails.saturating_add(1);
                let changed = slot.inst.health_reason.as_deref() != Some(reason.as_str());
                slot.inst.health_reason = Some(format!(
                    "{reason} ({} time{})",
                    slot.fails,
                    if slot.fails == 1 { "" } else { "s" }
                ));
                if slot.inst.state == State::Starting {
                    if changed && slot.fails == 1 {
                        events.push(("instance.unhealthy", format!("not healthy yet: {reason}")));
                    }
                } else if slot.fails >= h.unhealthy_threshold
                    && slot.inst.health != Health::Unhealthy
                {
                    slot.inst.health = Health::Unhealthy;
                    self.reroute = true;
                    events.push((
                        "instance.unhealthy",
                        format!(
                            "unhealthy, out of rotation: {reason} ({} times)",
                            slot.fails
                        ),
                    ));
                } else if slot.fails >= h.unhealthy_threshold.saturating_mul(2)
                    && !slot.inst.replace
                {
                    slot.inst.replace = true;
                    events.push((
                        "instance.replacing",
                        format!("still unhealthy ({reason}); replacing it"),
                    ));
                }
            }
        }
        let inst = slot.inst.clone();
        let _ = self.store.put_instance(&inst);
        for (kind, message) in events {
            self.record_event(Some(service.clone()), Some(id), kind, &message);
        }
        if ready {
            self.instance_input(id, incarnation, Input::Ready);
        }
    }

    /// An instance listening on 0.0.0.0 or :: bypasses the proxy's allow rules: say so.
    fn warn_if_wildcard(&self, inst: &Instance) {
        let Some(port) = inst.port else {
            return;
        };
        let (service, id) = (inst.service.clone(), inst.id.clone());
        let store_events = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(addr) = crate::listen::wildcard_listener(port) {
                let _ = store_events.send(Msg::Warning {
                    service,
                    instance: id,
                    message: format!(
                        "listens on {addr}:{port}, reachable without the proxy (its allow/deny rules do not apply); bind 127.0.0.1:$PORT instead"
                    ),
                });
            }
        });
    }

    fn policy(&self, id: &str) -> Option<Policy> {
        let spec = self.instance_spec(id)?;
        Some(Policy {
            restart: spec.restart.policy,
            kind: spec.kind,
        })
    }

    /// The spec an instance runs: its release's.
    fn instance_spec(&self, id: &str) -> Option<ServiceSpec> {
        let inst = &self.slots.get(id)?.inst;
        let key = (inst.service.clone(), inst.release);
        if let Some(s) = self.release_specs.get(&key) {
            return Some(s.clone());
        }
        if let Ok(Some(r)) = self.store.release(&inst.service, inst.release) {
            return Some(r.spec);
        }
        self.services
            .get(&inst.service)
            .map(|s| s.record.spec.clone())
    }

    fn run_action(&mut self, id: &str, action: Action) {
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        let service = slot.inst.service.clone();
        match action {
            Action::Event { kind, message } => {
                self.record_event(Some(service), Some(id), kind, &message);
            }
            Action::Reroute => self.reroute = true,
            Action::Launch => self.launch(id),
            Action::Watch => self.watch(id),
            Action::Drain => self.drain(id),
            Action::Signal => self.stop_process(id, None),
            Action::Release => {
                let socket = self.socket_path(id, slot.inst.incarnation);
                // Tracked: berth waits for these before it exits, or the shim would wait
                // for its release forever.
                self.releases.spawn(async move {
                    if let Ok(c) = runtime::ShimClient::connect(&socket).await {
                        let _ = c.release().await;
                    }
                });
            }
            Action::RestartAfter(delay) => {
                let (incarnation, cancel) = (slot.inst.incarnation, slot.cancel.clone());
                let tx = self.tx.clone();
                let id = id.to_owned();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {
                            let _ = tx.send(Msg::Instance { id, incarnation, input: Input::BackoffElapsed });
                        }
                    }
                });
            }
        }
    }

    fn launch(&mut self, id: &str) {
        let Some(spec) = self.instance_spec(id) else {
            return;
        };
        let held = self.held_ports();
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        slot.inst.incarnation += 1;
        let incarnation = slot.inst.incarnation;
        slot.life.cancel();
        slot.life = CancellationToken::new();
        slot.passes = 0;
        slot.fails = 0;
        slot.inst.health = Health::Unknown;
        slot.inst.health_reason = None;
        if spec.kind.has_port() {
            // Keep the port across restarts; a new one if it was taken meanwhile.
            let keep = slot.inst.port.filter(|p| port_is_free(*p));
            slot.inst.port = keep.or_else(|| self.ports.allocate(&held));
        }
        let inst = slot.inst.clone();
        let _ = self.store.put_instance(&inst);
        let tx = self.tx.clone();
        let id = id.to_owned();
        if spec.kind.has_port() && inst.port.is_none() {
            let _ = tx.send(Msg::Instance {
                id,
                incarnation,
                input: Input::LaunchFailed {
                    reason: "no free port left in [berth] ports".into(),
                },
            });
            return;
        }
        let launch = self.launch_spec(&inst, &spec, incarnation);
        tokio::spawn(async move {
            let r = tokio::task::spawn_blocking(move || runtime::launch(&launch)).await;
            let input = match r {
                Ok(Ok(l)) => Input::Launched {
                    pid: l.pid,
                    shim_pid: l.shim_pid,
                    started_at_ms: l.started_at_ms,
                },
                Ok(Err(e)) => Input::LaunchFailed {
                    reason: e.to_string(),
                },
                Err(e) => Input::LaunchFailed {
                    reason: e.to_string(),
                },
            };
            let _ = tx.send(Msg::Instance {
                id,
                incarnation,
                input,
            });
        });
    }

    fn launch_spec(
        &self,
        inst: &Instance,
        spec: &ServiceSpec,
        incarnation: u64,
    ) -> runtime::LaunchSpec {
        let env = instance_env(inst, spec);
        let desired = self
            .services
            .get(&inst.service)
            .map(|s| s.record.desired())
            .unwrap_or(1);
        // The service's log bound, shared by the instances that may exist at once (the
        // desired ones plus a rollout's surge), two files each.
        let parts = u64::from(desired.max(1) + spec.deploy.surge.max(1)) * 2;
        let log_max_bytes = (spec.log_max / parts).max(256 * 1024);
        runtime::LaunchSpec {
            shim_exe: self.config.shim_exe.clone(),
            instance_id: inst.id.clone(),
            socket: self.socket_path(&inst.id, incarnation),
            argv: spec.command.argv(),
            dir: spec.dir.clone(),
            env,
            user: spec.user.clone(),
            log_file: self.log_path(&inst.service, &inst.id),
            log_max_bytes,
        }
    }

    /// Watches a launched instance: its exit, and its readiness.
    fn watch(&mut self, id: &str) {
        let Some(spec) = self.instance_spec(id) else {
            return;
        };
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        let (incarnation, port, state) = (slot.inst.incarnation, slot.inst.port, slot.inst.state);
        let socket = self.socket_path(id, incarnation);
        let tx = self.tx.clone();
        let owned = id.to_owned();
        tokio::spawn(async move {
            let input = match runtime::ShimClient::connect(&socket).await {
                Ok(mut c) => match c.wait_exit().await {
                    Ok(status) => Input::Exited { status },
                    Err(e) => {
                        warn!(instance = %owned, error = %e, "lost the shim");
                        Input::Lost
                    }
                },
                Err(e) => {
                    warn!(instance = %owned, error = %e, "cannot reach the shim");
                    Input::Lost
                }
            };
            let _ = tx.send(Msg::Instance {
                id: owned,
                incarnation,
                input,
            });
        });
        if let Some(health) = spec.health.clone() {
            // Health checks decide readiness and, later, rotation.
            let life = slot.life.clone();
            let env = instance_env(&slot.inst, &spec);
            let dir = spec.dir.clone();
            let tx = self.tx.clone();
            let id = id.to_owned();
            // Until the first pass, probe more often than the interval: a new instance is
            // usually listening within milliseconds, and a deploy should not wait a whole
            // interval for it.
            let eager = health.interval.min(STARTUP_PROBE);
            let mut passed = state == State::Running;
            tokio::spawn(async move {
                loop {
                    let result =
                        crate::health::probe(&health.check, port, health.timeout, &dir, &env).await;
                    passed |= result.is_ok();
                    let msg = Msg::Health {
                        id: id.clone(),
                        incarnation,
                        result,
                    };
                    if life.is_cancelled() || tx.send(msg).is_err() {
                        return;
                    }
                    let wait = if passed { health.interval } else { eager };
                    tokio::select! {
                        _ = life.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            });
            return;
        }
        if state != State::Starting {
            return;
        }
        let cancel = slot.cancel.clone();
        let tx = self.tx.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let ready = async {
                match (spec.kind.has_port(), port) {
                    (true, Some(port)) => loop {
                        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                        if tokio::net::TcpStream::connect(addr).await.is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    },
                    _ => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = ready => { let _ = tx.send(Msg::Instance { id, incarnation, input: Input::Ready }); }
            }
        });
    }

    fn drain(&mut self, id: &str) {
        let Some(spec) = self.instance_spec(id) else {
            return;
        };
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        let (incarnation, cancel) = (slot.inst.incarnation, slot.cancel.clone());
        let dataplane = self.dataplane.clone();
        let tx = self.tx.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + spec.deploy.drain;
            let drained = async {
                // The routing table no longer names it; wait for requests it still serves.
                while dataplane.in_flight(&id) > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = drained => { let _ = tx.send(Msg::Instance { id, incarnation, input: Input::Drained }); }
            }
        });
    }

    /// Asks the shim to stop the app: the stop signal, then SIGKILL after the timeout
    /// (`grace` overrides the spec's timeout).
    fn stop_process(&mut self, id: &str, grace: Option<Duration>) {
        let Some(spec) = self.instance_spec(id) else {
            return;
        };
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        if slot.inst.pid.is_none() {
            // Still launching: the `Launched` input brings the stop back.
            return;
        }
        let socket = self.socket_path(id, slot.inst.incarnation);
        let incarnation = slot.inst.incarnation;
        let tx = self.tx.clone();
        let id = id.to_owned();
        let signal = spec.restart.stop_signal.number;
        let timeout = grace.unwrap_or(spec.restart.stop_timeout);
        tokio::spawn(async move {
            let r = async {
                runtime::ShimClient::connect(&socket)
                    .await?
                    .stop(signal, timeout)
                    .await
            }
            .await;
            if let Err(e) = r {
                // The watch task reports the exit; a shim we cannot reach is lost.
                warn!(instance = %id, error = %e, "stop failed");
                if runtime::ShimClient::connect(&socket).await.is_err() {
                    let _ = tx.send(Msg::Instance {
                        id,
                        incarnation,
                        input: Input::Lost,
                    });
                }
            }
        });
    }

    fn stop_instance(&mut self, id: &str) {
        let incarnation = match self.slots.get(id) {
            Some(s) => s.inst.incarnation,
            None => return,
        };
        self.instance_input(id, incarnation, Input::Stop);
    }

    fn held_ports(&self) -> HashSet<u16> {
        self.slots
            .values()
            .filter(|s| !s.inst.state.is_final())
            .filter_map(|s| s.inst.port)
            .collect()
    }

    // ---- reconcile ------------------------------------------------------------------

    fn after_message(&mut self) {
        if self.shutting_down.is_none() {
            let names: Vec<String> = self.services.keys().cloned().collect();
            for name in names {
                self.reconcile(&name);
            }
        }
        if self.reroute {
            self.reroute = false;
            self.publish_routes();
        }
    }

    /// Brings one service's instances in line with its target: the planner decides,
    /// this carries it out.
    fn reconcile(&mut self, name: &str) {
        let Some(svc) = self.services.get(name) else {
            return;
        };
        let removed = svc.removed;
        let stopped = svc.record.stopped || removed;
        // Stopped instances are shown while the service stays stopped; otherwise they
        // are history.
        let stale: Vec<String> = self
            .slots
            .values()
            .filter(|s| s.inst.service == name && s.inst.state == State::Stopped && !stopped)
            .map(|s| s.inst.id.clone())
            .collect();
        for id in stale {
            self.forget(&id);
        }
        if removed {
            let mine: Vec<(String, State)> = self
                .slots
                .values()
                .filter(|s| s.inst.service == name)
                .map(|s| (s.inst.id.clone(), s.inst.state))
                .collect();
            for (id, state) in &mine {
                if state.is_active() {
                    self.stop_instance(id);
                } else if state.is_final() {
                    self.forget(id);
                }
            }
            if !mine.iter().any(|(_, s)| !s.is_final()) {
                self.services.remove(name);
                self.reroute = true;
            }
            return;
        }
        let Some(target) = self.target(name) else {
            return;
        };
        let views: Vec<deploy::View> = self
            .slots
            .values()
            .filter(|s| s.inst.service == name)
            .map(|s| deploy::View {
                id: s.inst.id.clone(),
                rollout: s.inst.rollout,
                state: s.inst.state,
                health: s.inst.health,
                replace: s.inst.replace,
                since_ms: s
                    .inst
                    .started_at_ms
                    .unwrap_or(s.created_ms)
                    .max(s.created_ms),
                reason: s
                    .inst
                    .last_exit
                    .clone()
                    .or_else(|| s.inst.health_reason.clone()),
            })
            .collect();
        let deploy = self
            .services
            .get(name)
            .and_then(|s| s.record.deploy.clone());
        let now = now_ms();
        for decision in deploy::plan(&target, deploy.as_ref(), &views, now) {
            match decision {
                Decision::Start => self.create_instance(name),
                Decision::Stop(id) => self.stop_instance(&id),
                Decision::Forget(id) => self.forget(&id),
                Decision::Replace(id) => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.inst.replace = true;
                        let inst = slot.inst.clone();
                        let _ = self.store.put_instance(&inst);
                        let why = inst.health_reason.unwrap_or_else(|| "no reason".into());
                        self.record_event(
                            Some(name.to_owned()),
                            Some(&id),
                            "instance.replacing",
                            &format!("not healthy within its grace time ({why}); replacing it"),
                        );
                    }
                }
                Decision::Fail(reason) => {
                    self.fail_deploy(name, reason);
                    return;
                }
                Decision::Switched => {
                    let watch = target.watch_ms;
                    self.update_deploy(name, |d| {
                        d.phase = deploy::Phase::Watching {
                            until_ms: now + watch,
                        }
                    });
                    self.wake_after(Duration::from_millis(watch));
                    self.record_event(
                        Some(name.to_owned()),
                        None,
                        "deploy.switched",
                        &format!(
                            "every instance runs the new release; watching for {}",
                            spec::format_duration(Duration::from_millis(watch))
                        ),
                    );
                }
                Decision::Finish => self.finish_deploy(name),
                Decision::RolledBack => self.rolled_back(name),
            }
        }
    }

    /// The planner's view of a service's settings.
    fn target(&self, name: &str) -> Option<deploy::Target> {
        let svc = self.services.get(name)?;
        let spec = self
            .release_spec(name, svc.record.release)
            .unwrap_or_else(|| svc.record.spec.clone());
        let grace = spec
            .health
            .as_ref()
            .map(|h| h.grace)
            .unwrap_or(Duration::from_secs(30));
        Some(deploy::Target {
            desired: svc.record.desired() as usize,
            rollout: svc.record.rollout,
            surge: spec.deploy.surge as usize,
            strategy: spec.deploy.strategy,
            grace_ms: grace.as_millis() as u64,
            watch_ms: spec.deploy.watch.as_millis() as u64,
            auto_rollback: spec.deploy.auto_rollback,
        })
    }

    /// Sends a `Wake` after `d`, so time-based decisions (grace, watch) are taken on time.
    fn wake_after(&self, d: Duration) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = tx.send(Msg::Wake);
        });
    }

    fn create_instance(&mut self, name: &str) {
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        let index = svc.record.next_index;
        svc.record.next_index += 1;
        let record = svc.record.clone();
        if let Err(e) = self.store.put_service(&record) {
            warn!(service = %name, error = %e, "cannot record service");
        }
        let id = format!("{name}-{index}");
        let inst = Instance::new(
            id.clone(),
            name.to_owned(),
            record.release,
            record.rollout,
            None,
        );
        self.slots.insert(id.clone(), Slot::new(inst));
        self.run_action(&id, Action::Launch);
    }

    fn forget(&mut self, id: &str) {
        if let Some(slot) = self.slots.remove(id) {
            slot.cancel.cancel();
            if let Err(e) = self.store.delete_instance(id) {
                warn!(instance = %id, error = %e, "cannot delete instance record");
            }
        }
    }

    fn publish_routes(&mut self) {
        let instances: Vec<&Instance> = self.slots.values().map(|s| &s.inst).collect();
        let inputs = self
            .services
            .values()
            .filter(|s| !s.removed)
            .map(|s| RouteInput {
                name: &s.record.name,
                spec: &s.record.spec,
                // Maintenance by hand, or for the length of a deploy that asks for it.
                maintenance: (s.record.maintenance
                    || (s.record.deploy.is_some() && s.record.spec.deploy.maintenance))
                    .then_some(s.maintenance_page.as_str()),
            });
        let table = routes::build(inputs, &instances);
        self.dataplane.update_routes(table);
    }

    fn shutdown_complete(&mut self) -> bool {
        let Some((_, waiters)) = &mut self.shutting_down else {
            return false;
        };
        if self.slots.values().any(|s| s.inst.state.may_have_process()) {
            return false;
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
        // Instances stopped by a shutdown are not "stopped" by the user: the next
        // `berth up` starts them again.
        let ids: Vec<String> = self.slots.keys().cloned().collect();
        for id in ids {
            if self
                .slots
                .get(&id)
                .is_some_and(|s| s.inst.state == State::Stopped)
            {
                self.forget(&id);
            }
        }
        true
    }

    // ---- observation ----------------------------------------------------------------

    fn tick(&mut self) {
        self.ticks += 1;
        if !self.ticks.is_multiple_of(STATS_EVERY) {
            return;
        }
        let pids: Vec<u32> = self.slots.values().filter_map(|s| s.inst.pid).collect();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let samples = runtime::stats::sample_trees(&pids);
            let _ = tx.send(Msg::Stats(samples, Instant::now()));
        });
        self.prune_logs();
    }

    fn stats(&mut self, samples: HashMap<u32, runtime::stats::TreeSample>, at: Instant) {
        let hz = runtime::stats::ticks_per_second().max(1) as f64;
        for slot in self.slots.values_mut() {
            let Some(sample) = slot.inst.pid.and_then(|p| samples.get(&p)) else {
                slot.cpu = None;
                slot.cpu_percent = 0.0;
                slot.memory_bytes = 0;
                continue;
            };
            if let Some((ticks, when)) = slot.cpu {
                let secs = at.duration_since(when).as_secs_f64();
                if secs > 0.0 {
                    let used = sample.cpu_ticks.saturating_sub(ticks) as f64 / hz;
                    slot.cpu_percent = (used / secs * 1000.0).round() / 10.0;
                }
            }
            slot.cpu = Some((sample.cpu_ticks, at));
            slot.memory_bytes = sample.rss_bytes;
        }
    }

    /// Keeps each service's log directory under its bound by deleting the logs of
    /// instances that no longer exist, oldest first.
    fn prune_logs(&self) {
        for svc in self.services.values() {
            let dir = self.config.data_dir.join("logs").join(&svc.record.name);
            let live: HashSet<String> = self
                .slots
                .values()
                .filter(|s| s.inst.service == svc.record.name)
                .map(|s| s.inst.id.clone())
                .collect();
            prune_dir(&dir, svc.record.spec.log_max, &live);
        }
    }

    fn ps(&self) -> PsResponse {
        let now = now_ms();
        let instances = self
            .slots
            .values()
            .map(|s| {
                let i = &s.inst;
                let up = i.state.may_have_process() && i.pid.is_some();
                InstanceView {
                    service: i.service.clone(),
                    id: i.id.clone(),
                    release: format!("v{}", i.release),
                    state: i.state.as_str().into(),
                    health: health_of(i).as_str().into(),
                    pid: i.pid,
                    port: i.port,
                    cpu_percent: s.cpu_percent,
                    memory_bytes: s.memory_bytes,
                    restarts: i.restarts,
                    uptime_s: match (up, i.started_at_ms) {
                        (true, Some(t)) => now.saturating_sub(t) / 1000,
                        _ => 0,
                    },
                    last_exit: i.last_exit.clone(),
                    health_reason: i.health_reason.clone(),
                }
            })
            .collect();
        PsResponse { instances }
    }

    fn service_views(&self) -> Vec<ServiceView> {
        self.services
            .values()
            .filter(|s| !s.removed)
            .map(|s| ServiceView {
                name: s.record.name.clone(),
                kind: match s.record.spec.kind {
                    ServiceKind::Web => "web",
                    ServiceKind::Private => "private",
                    ServiceKind::Worker => "worker",
                }
                .into(),
                instances: s.record.desired(),
                running: self
                    .slots
                    .values()
                    .filter(|i| i.inst.service == s.record.name && i.inst.state == State::Running)
                    .count() as u32,
                stopped: s.record.stopped,
                maintenance: s.record.maintenance,
                release: format!("v{}", s.record.release),
            })
            .collect()
    }

    fn record_event(
        &self,
        service: Option<String>,
        instance: Option<&str>,
        kind: &str,
        message: &str,
    ) {
        info!(
            service = service.as_deref().unwrap_or("-"),
            instance = instance.unwrap_or("-"),
            kind,
            "{message}"
        );
        if let Err(e) = self
            .store
            .add_event(now_ms(), service.as_deref(), instance, kind, message)
        {
            warn!(error = %e, "cannot record event");
        }
        self.events.notify_waiters();
    }

    fn socket_path(&self, id: &str, incarnation: u64) -> PathBuf {
        self.config
            .data_dir
            .join("run")
            .join(format!("{id}.{incarnation}.sock"))
    }

    fn log_path(&self, service: &str, id: &str) -> PathBuf {
        self.config
            .data_dir
            .join("logs")
            .join(service)
            .join(format!("{id}.log"))
    }
}

/// berth's PATH and the service's env: what release commands get.
fn base_env(spec: &ServiceSpec) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(path) = std::env::var("PATH") {
        env.insert("PATH".into(), path);
    }
    for (k, v) in &spec.env {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

/// An instance's whole environment: PATH, the service's env, PORT and BERTH_*.
fn instance_env(inst: &Instance, spec: &ServiceSpec) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = base_env(spec).into_iter().collect();
    if let Some(p) = inst.port {
        env.insert("PORT".into(), p.to_string());
    }
    env.insert("BERTH_SERVICE".into(), inst.service.clone());
    env.insert("BERTH_INSTANCE".into(), inst.id.clone());
    env.insert("BERTH_RELEASE".into(), format!("v{}", inst.release));
    env.into_iter().collect()
}

/// Health as shown: without health checks, a running instance counts as healthy.
fn health_of(i: &Instance) -> Health {
    match (i.health, i.state) {
        (Health::Unknown, State::Running) => Health::Healthy,
        (h, _) => h,
    }
}

/// 409: one deploy per service at a time.
fn deploy_running(name: &str, d: &deploy::Deploy) -> ControlError {
    ControlError::Conflict(format!(
        "a deploy of {name} is running: v{} ({}), started {}; wait for it to finish",
        d.to_release,
        d.trigger,
        rfc3339(d.started_ms)
    ))
}

fn event_view(e: EventRecord) -> EventView {
    EventView {
        seq: e.seq,
        time: rfc3339(e.time_ms),
        service: e.service,
        instance: e.instance,
        kind: e.kind,
        message: e.message,
    }
}

fn not_found(service: &str) -> ControlError {
    ControlError::NotFound(format!("no service named {service:?}"))
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn maintenance_page(spec: &ServiceSpec) -> String {
    spec.maintenance_page
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_else(|| routes::DEFAULT_MAINTENANCE_PAGE.to_owned())
}

/// Deletes log files of instances not in `live`, oldest first, while the directory
/// holds more than `max` bytes.
fn prune_dir(dir: &Path, max: u64, live: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf, bool)> = entries
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            let instance = name.split(".log").next().unwrap_or("").to_owned();
            Some((
                meta.modified().ok()?,
                meta.len(),
                e.path(),
                live.contains(&instance),
            ))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path, is_live) in files {
        if total <= max {
            break;
        }
        if !is_live && std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}
