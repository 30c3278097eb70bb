//! Deploys as the controller carries them out: starting a rollout to a release, the
//! release command, failing and rolling back, finishing (release statuses, pruning old
//! sources), and the `deploy` and `rollback` requests. What to start and stop at each
//! step is decided by `crate::deploy::plan`; this is the bookkeeping around it.

use std::path::PathBuf;

use spec::ServiceSpec;
use spec::api::DeployResponse;
use tracing::warn;

use super::{ControlError, Controller, Msg, base_env, deploy_running, not_found};
use crate::clock::now_ms;
use crate::deploy;
use crate::store::ReleaseRecord;

impl Controller {
    /// Starts a rollout of `service` to `to_release` (the same release for a restart).
    pub(super) fn start_deploy(
        &mut self,
        name: &str,
        to_release: u32,
        trigger: &str,
    ) -> Result<DeployResponse, ControlError> {
        let Some(svc) = self.services.get(name) else {
            return Err(not_found(name));
        };
        if let Some(d) = &svc.record.deploy {
            return Err(deploy_running(name, d));
        }
        let spec = self.release_spec(name, to_release).ok_or_else(|| {
            ControlError::NotFound(format!("{name} has no release v{to_release}"))
        })?;
        let after_seq = self
            .store
            .events(None, 1)?
            .last()
            .map(|e| e.seq)
            .unwrap_or(0);
        let now = now_ms();
        let Some(svc) = self.services.get_mut(name) else {
            return Err(not_found(name));
        };
        let release_command = spec
            .deploy
            .release_command
            .clone()
            .filter(|_| to_release != svc.record.release);
        let d = deploy::Deploy {
            from_release: svc.record.release,
            from_rollout: svc.record.rollout,
            to_release,
            to_rollout: svc.record.rollout + 1,
            phase: if release_command.is_some() {
                deploy::Phase::ReleaseCommand
            } else {
                deploy::Phase::Rolling
            },
            trigger: trigger.to_owned(),
            started_ms: now,
            reason: None,
        };
        svc.record.release = to_release;
        svc.record.rollout = d.to_rollout;
        svc.record.stopped = false;
        svc.record.deploy = Some(d.clone());
        let record = svc.record.clone();
        self.store.put_service(&record)?;
        if d.to_release != d.from_release {
            self.set_release_status(name, to_release, "deploying", None);
        }
        self.reroute = true;
        self.record_event(
            Some(name.to_owned()),
            None,
            "deploy.started",
            &format!(
                "rolling out v{to_release} ({trigger}) over v{}",
                d.from_release
            ),
        );
        if let Some(cmd) = release_command {
            self.run_release_command(name, &spec, cmd, d.to_rollout);
        }
        Ok(DeployResponse {
            service: name.to_owned(),
            release: format!("v{to_release}"),
            after_seq,
        })
    }

    fn run_release_command(&mut self, name: &str, spec: &ServiceSpec, cmd: String, rollout: u64) {
        self.record_event(
            Some(name.to_owned()),
            None,
            "deploy.release-command",
            &format!("running the release command: {cmd}"),
        );
        let mut env: Vec<(String, String)> = base_env(spec);
        env.push(("BERTH_SERVICE".into(), name.to_owned()));
        let dir = spec.dir.clone();
        let tx = self.tx.clone();
        let service = name.to_owned();
        tokio::spawn(async move {
            let out = tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&cmd)
                .current_dir(&dir)
                .env_clear()
                .envs(env)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await;
            let result = match out {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => {
                    let text = String::from_utf8_lossy(if o.stderr.is_empty() {
                        &o.stdout
                    } else {
                        &o.stderr
                    })
                    .into_owned();
                    let last = text
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .trim()
                        .to_owned();
                    Err(format!(
                        "release command {cmd:?} failed ({}): {last}",
                        runtime::ExitStatus {
                            code: o.status.code(),
                            signal: None
                        }
                    ))
                }
                Err(e) => Err(format!("release command {cmd:?} could not run: {e}")),
            };
            let _ = tx.send(Msg::ReleaseCommandDone {
                service,
                rollout,
                result,
            });
        });
    }

    pub(super) fn release_command_done(
        &mut self,
        name: &str,
        rollout: u64,
        result: Result<(), String>,
    ) {
        let Some(d) = self
            .services
            .get(name)
            .and_then(|s| s.record.deploy.clone())
        else {
            return;
        };
        if d.to_rollout != rollout || d.phase != deploy::Phase::ReleaseCommand {
            return;
        }
        match result {
            Ok(()) => {
                self.update_deploy(name, |d| d.phase = deploy::Phase::Rolling);
                self.record_event(
                    Some(name.to_owned()),
                    None,
                    "deploy.release-command",
                    "release command succeeded",
                );
            }
            Err(reason) => {
                // Nothing was started: restore the target and end the deploy here.
                self.fail_deploy(name, reason);
            }
        }
    }

    pub(super) fn update_deploy(&mut self, name: &str, f: impl FnOnce(&mut deploy::Deploy)) {
        if let Some(svc) = self.services.get_mut(name)
            && let Some(d) = svc.record.deploy.as_mut()
        {
            f(d);
            let record = svc.record.clone();
            if let Err(e) = self.store.put_service(&record) {
                warn!(service = %name, error = %e, "cannot record deploy");
            }
        }
    }

    /// The deploy failed: the previous rollout becomes the target again.
    pub(super) fn fail_deploy(&mut self, name: &str, reason: String) {
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        let Some(d) = svc.record.deploy.as_mut() else {
            return;
        };
        if d.phase == deploy::Phase::RollingBack {
            return;
        }
        d.phase = deploy::Phase::RollingBack;
        d.reason = Some(reason.clone());
        let d = d.clone();
        svc.record.release = d.from_release;
        svc.record.rollout = d.from_rollout;
        let record = svc.record.clone();
        let _ = self.store.put_service(&record);
        if d.to_release != d.from_release {
            self.set_release_status(name, d.to_release, "failed", Some(reason.clone()));
        }
        self.reroute = true;
        self.record_event(
            Some(name.to_owned()),
            None,
            "deploy.rolling-back",
            &format!(
                "v{} failed: {reason}; restoring v{}",
                d.to_release, d.from_release
            ),
        );
    }

    /// Takes the finished deploy off its service and records that.
    fn end_deploy(&mut self, name: &str) -> Option<deploy::Deploy> {
        let svc = self.services.get_mut(name)?;
        let d = svc.record.deploy.take()?;
        let record = svc.record.clone();
        if let Err(e) = self.store.put_service(&record) {
            warn!(service = %name, error = %e, "cannot record the end of a deploy");
        }
        self.reroute = true;
        Some(d)
    }

    pub(super) fn rolled_back(&mut self, name: &str) {
        let Some(d) = self.end_deploy(name) else {
            return;
        };
        self.record_event(
            Some(name.to_owned()),
            None,
            "deploy.failed",
            &format!(
                "deploy of v{} failed: {}; v{} serves again",
                d.to_release,
                d.reason.unwrap_or_else(|| "unknown reason".into()),
                d.from_release
            ),
        );
    }

    pub(super) fn finish_deploy(&mut self, name: &str) {
        let Some(d) = self.end_deploy(name) else {
            return;
        };
        if d.to_release != d.from_release {
            let previous = if d.trigger == "rollback" {
                "rolled-back"
            } else {
                "superseded"
            };
            self.set_release_status(name, d.from_release, previous, None);
            self.set_release_status(name, d.to_release, "live", None);
            self.prune_sources(name);
        }
        self.reroute = true;
        self.record_event(
            Some(name.to_owned()),
            None,
            "deploy.succeeded",
            &format!("v{} is live ({})", d.to_release, d.trigger),
        );
    }

    fn set_release_status(
        &mut self,
        name: &str,
        version: u32,
        status: &str,
        reason: Option<String>,
    ) {
        match self.store.release(name, version) {
            Ok(Some(mut r)) => {
                r.status = status.to_owned();
                if reason.is_some() {
                    r.reason = reason;
                }
                if let Err(e) = self.store.put_release(&r) {
                    warn!(service = %name, error = %e, "cannot record release");
                }
            }
            Ok(None) => {}
            Err(e) => warn!(service = %name, error = %e, "cannot read release"),
        }
    }

    /// Deletes release sources beyond `keep_releases`, never the live one's or the one
    /// live before it.
    fn prune_sources(&mut self, name: &str) {
        let Some(svc) = self.services.get(name) else {
            return;
        };
        let keep = svc.record.spec.deploy.keep_releases as usize;
        let Ok(releases) = self.store.releases(name) else {
            return;
        };
        let live = svc.record.release;
        let previous_live = releases
            .iter()
            .filter(|r| {
                r.version != live && matches!(r.status.as_str(), "superseded" | "rolled-back")
            })
            .map(|r| r.version)
            .max();
        let dir = self.config.data_dir.join("releases").join(name);
        let mut with_source: Vec<u32> = releases
            .iter()
            .map(|r| r.version)
            .filter(|v| dir.join(format!("v{v}")).exists())
            .collect();
        with_source.sort_unstable_by(|a, b| b.cmp(a));
        for v in with_source.into_iter().skip(keep) {
            if v == live || Some(v) == previous_live {
                continue;
            }
            if std::fs::remove_dir_all(dir.join(format!("v{v}"))).is_ok() {
                self.record_event(
                    Some(name.to_owned()),
                    None,
                    "release.pruned",
                    &format!("deleted the source of v{v}"),
                );
            }
        }
    }

    pub(super) fn next_release_number(&self, name: &str) -> Result<u32, ControlError> {
        let stored = self.store.releases(name)?.iter().map(|r| r.version).max();
        let live = self.services.get(name).map(|s| s.record.release);
        Ok(stored.max(live).unwrap_or(0) + 1)
    }

    pub(super) fn release_spec(&self, name: &str, version: u32) -> Option<ServiceSpec> {
        if let Some(s) = self.release_specs.get(&(name.to_owned(), version)) {
            return Some(s.clone());
        }
        self.store
            .release(name, version)
            .ok()
            .flatten()
            .map(|r| r.spec)
    }

    /// `berth deploy`: a new release from the file's entry, with the source copied into
    /// `incoming` (already under data_dir) when given.
    pub(super) fn deploy(
        &mut self,
        name: &str,
        incoming: Option<PathBuf>,
        trigger: &str,
    ) -> Result<DeployResponse, ControlError> {
        let Some(svc) = self.services.get(name).filter(|s| !s.removed) else {
            return Err(not_found(name));
        };
        if let Some(d) = &svc.record.deploy {
            return Err(deploy_running(name, d));
        }
        let mut spec = svc.record.spec.clone();
        let version = self.next_release_number(name)?;
        if let Some(incoming) = incoming {
            let dest = self
                .config
                .data_dir
                .join("releases")
                .join(name)
                .join(format!("v{version}"));
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::rename(&incoming, &dest).map_err(|e| {
                ControlError::Internal(format!(
                    "cannot move the source into {}: {e}",
                    dest.display()
                ))
            })?;
            spec.dir = dest;
        }
        let r = ReleaseRecord {
            service: name.to_owned(),
            version,
            status: "deploying".into(),
            created_ms: now_ms(),
            trigger: trigger.to_owned(),
            reason: None,
            spec: spec.clone(),
        };
        self.store.put_release(&r)?;
        self.release_specs.insert((name.to_owned(), version), spec);
        self.start_deploy(name, version, trigger)
    }

    /// `berth rollback`: a rolling deploy of an earlier release from its stored source.
    pub(super) fn rollback(
        &mut self,
        name: &str,
        to: Option<u32>,
    ) -> Result<DeployResponse, ControlError> {
        let Some(svc) = self.services.get(name).filter(|s| !s.removed) else {
            return Err(not_found(name));
        };
        let current = svc.record.release;
        let releases = self.store.releases(name)?;
        let target = match to {
            Some(v) => {
                let r = releases
                    .iter()
                    .find(|r| r.version == v)
                    .ok_or_else(|| ControlError::NotFound(format!("{name} has no release v{v}")))?;
                if r.version == current {
                    return Err(ControlError::BadRequest(format!(
                        "v{v} is already the live release of {name}"
                    )));
                }
                r.version
            }
            None => {
                // Releases that were live once: the newest before the current one,
                // else the newest of all (after a rollback to an older one).
                let was_live: Vec<u32> = releases
                    .iter()
                    .filter(|r| r.version != current)
                    .filter(|r| matches!(r.status.as_str(), "superseded" | "rolled-back"))
                    .map(|r| r.version)
                    .collect();
                let before = was_live.iter().copied().filter(|v| *v < current).max();
                before
                    .or_else(|| was_live.iter().copied().max())
                    .ok_or_else(|| {
                        ControlError::BadRequest(format!(
                            "{name} has no earlier release that was live; see `berth releases {name}`"
                        ))
                    })?
            }
        };
        if let Some(r) = releases.iter().find(|r| r.version == target)
            && !r.spec.dir.exists()
        {
            return Err(ControlError::BadRequest(format!(
                "the source of {name} v{target} is gone ({} does not exist)",
                r.spec.dir.display()
            )));
        }
        self.start_deploy(name, target, "rollback")
    }
}
