//! `berth up`: the daemon's lifecycle — config, lock, store, proxy, controller, API,
//! signals — and its orderly end.
//!
//! Lifecycle: a bad config starts nothing; a second berth on the same `data_dir` is
//! refused (an exclusive `flock`, released by the kernel however berth ends); SIGHUP
//! re-applies the file; SIGTERM/SIGINT drain and stop every instance and exit 0; a
//! second SIGTERM/SIGINT kills them at once.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use control::{Controller, ControllerConfig};
use nix::fcntl::{Flock, FlockArg};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::dataplane::{ProxyPlane, check_files, proxy_config};

pub async fn run(config: &Path) -> Result<()> {
    let spec = match spec::load(config) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            bail!("invalid config: nothing started");
        }
    };
    let problems = check_files(&spec);
    if !problems.is_empty() {
        eprintln!("{}", problems.join("\n"));
        bail!("invalid config: nothing started");
    }
    let data_dir = spec.berth.data_dir.clone();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data_dir)
        .with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
    let _lock = lock(&data_dir)?;

    let store = control::store::Store::open(&data_dir.join("berth.db"))
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let token_hash = match &spec.berth.api {
        spec::ApiAddr::Tcp(_) => Some(api::token_hash_for(&spec)?),
        spec::ApiAddr::Unix(_) => None,
    };

    let proxy = Arc::new(
        proxy::Proxy::start(proxy_config(&spec), proxy::RouteTable::default())
            .await
            .context("cannot start the proxy")?,
    );
    let config = ControllerConfig {
        data_dir: data_dir.clone(),
        shim_exe: std::env::current_exe().context("cannot find berth's own executable")?,
    };
    let (handle, controller) = Controller::start(
        config,
        store,
        spec.clone(),
        Arc::new(ProxyPlane(proxy.clone())),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;

    let state = ApiState {
        handle: handle.clone(),
        proxy: proxy.clone(),
        token_hash,
        config_path: spec.path.clone(),
        berth: spec.berth.clone(),
    };
    let api_task = api::serve(&spec.berth.api, state.clone()).await?;
    let metrics_task = match spec.berth.metrics {
        Some(addr) => Some(api::serve_metrics(addr, state.clone()).await?),
        None => None,
    };
    let (http, https) = proxy.local_addrs();
    info!(
        api = %spec.berth.api,
        http = ?http,
        https = ?https,
        services = spec.services.len(),
        "berth is up"
    );
    eprintln!(
        "berth up: {} service(s); api {}{}{}",
        spec.services.len(),
        spec.berth.api,
        http.map(|a| format!("; http {a}")).unwrap_or_default(),
        https.map(|a| format!("; https {a}")).unwrap_or_default(),
    );

    wait_for_signals(&state).await?;
    api_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    proxy.shutdown(Duration::from_secs(5)).await;
    let _ = controller.await;
    if let spec::ApiAddr::Unix(p) = &spec.berth.api {
        let _ = fs::remove_file(p);
    }
    eprintln!("berth stopped");
    Ok(())
}

/// Serves signals until a stop: SIGHUP applies the file again; SIGTERM/SIGINT stop
/// every instance gracefully, a second one at once.
async fn wait_for_signals(state: &ApiState) -> Result<()> {
    let (handle, config) = (&state.handle, &state.config_path);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                info!("SIGHUP: applying {}", config.display());
                match api::apply_file(state, config, "SIGHUP").await {
                    Ok(r) => info!(added = ?r.added, changed = ?r.changed, removed = ?r.removed, "applied"),
                    Err(e) => warn!("SIGHUP apply refused: {}", e.message()),
                }
            }
        }
    }
    eprintln!("berth: stopping every instance (send the signal again to kill them at once)");
    let graceful = handle.shutdown(false);
    tokio::pin!(graceful);
    tokio::select! {
        _ = &mut graceful => {}
        _ = term.recv() => handle.shutdown(true).await,
        _ = int.recv() => handle.shutdown(true).await,
    }
    Ok(())
}

/// Holds `data_dir/berth.lock` exclusively for the life of the daemon.
fn lock(data_dir: &Path) -> Result<Flock<File>> {
    let path = data_dir.join("berth.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            bail!(
                "another berth is already running on {}{}; stop it first or use another data_dir",
                data_dir.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                }
            );
        }
        Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
    };
    lock.set_len(0)?;
    writeln!(lock, "{}", std::process::id())?;
    Ok(lock)
}

/// Creates the token file (0600) if needed and returns the path.
pub fn write_secret(path: &PathBuf, contents: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}
