//! Starting the app from the shim: program lookup in the app's own PATH, working
//! directory, user switch, process group, stdio, signal mask. Exec failures come back from
//! `Command::spawn` (std reports them through a CLOEXEC pipe), so an unknown program is
//! an error of `launch()`, not an exit a moment later.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout, Command, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
use nix::unistd::{Gid, Uid, User};

use crate::launch::LaunchSpec;
use crate::proto::LaunchReport;

/// PATH used when the app's environment has none (execvp's default, minus ".").
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The running app, as the shim holds it.
pub(super) struct App {
    pub pid: u32,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

/// Who the app runs as, when berth is root and the spec names a user.
struct Identity {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

/// Starts the app: own process group (pgid == pid), stdin /dev/null, stdout and stderr
/// piped to the shim, exactly `spec.env`, cwd `spec.dir`. Every descriptor of the shim
/// is CLOEXEC, so the app gets only 0, 1 and 2.
pub(super) fn start(spec: &LaunchSpec) -> Result<App, LaunchReport> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let failed = |reason: String| LaunchReport::ExecFailed {
        program: program.clone(),
        reason,
    };
    if program.is_empty() {
        return Err(failed("empty command".into()));
    }
    match std::fs::metadata(&spec.dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(failed(format!(
                "directory {}: Not a directory",
                spec.dir.display()
            )));
        }
        Err(e) => {
            return Err(failed(format!(
                "directory {}: {}",
                spec.dir.display(),
                desc(&e)
            )));
        }
    }
    let identity = match &spec.user {
        Some(name) => identity(name).map_err(failed)?,
        None => None,
    };
    let path = resolve(&program, &spec.env, &spec.dir).map_err(|e| failed(e.desc().into()))?;

    let mut cmd = Command::new(path);
    cmd.arg0(&program)
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec. The shim is
    // single-threaded, and the closure only makes raw syscalls (sigaction, sigprocmask,
    // setgroups, setgid, setuid) on data allocated before the fork; it allocates nothing
    // itself. Setting SIG_DFL installs no handler.
    unsafe {
        cmd.pre_exec(move || {
            // The shim blocks SIGCHLD for its signalfd, and std does not reset the mask on
            // every spawn path; an app started with SIGCHLD blocked hangs in `wait`
            // (dash does).
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            // Ignored signals survive exec: a berth started under `nohup` (or anything
            // that ignores TERM) must not pass that on to its apps.
            for sig in Signal::iterator() {
                if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
                    let _ = signal(sig, SigHandler::SigDfl);
                }
            }
            if let Some(id) = &identity {
                nix::unistd::setgroups(&id.groups)?;
                nix::unistd::setgid(id.gid)?;
                nix::unistd::setuid(id.uid)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| failed(desc(&e)))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        // Unreachable with Stdio::piped(); the shim reaps the child through waitpid.
        return Err(failed("no output pipes".into()));
    };
    // Dropping `child` neither kills nor waits: the shim reaps through SIGCHLD.
    Ok(App {
        pid: child.id(),
        stdout,
        stderr,
    })
}

/// Looks `user` up. Only root may switch; a non-root berth may only name itself.
fn identity(name: &str) -> Result<Option<Identity>, String> {
    let user = match User::from_name(name) {
        Ok(Some(u)) => u,
        Ok(None) => return Err(format!("unknown user {name:?}")),
        Err(e) => return Err(format!("looking up user {name:?}: {}", e.desc())),
    };
    let me = nix::unistd::geteuid();
    if !me.is_root() {
        if user.uid == me {
            return Ok(None);
        }
        return Err(format!(
            "cannot run as user {name:?}: berth is not running as root"
        ));
    }
    let groups = CString::new(name)
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, user.gid).ok())
        .unwrap_or_else(|| vec![user.gid]);
    Ok(Some(Identity {
        uid: user.uid,
        gid: user.gid,
        groups,
    }))
}

/// argv[0] as exec will find it: as given when it has a `/`, else the first executable
/// file of that name in the app's PATH (relative PATH entries count from `dir`).
fn resolve(program: &str, env: &[(String, String)], dir: &Path) -> Result<PathBuf, Errno> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let mut err = Errno::ENOENT;
    for entry in path.split(':') {
        let candidate = dir
            .join(if entry.is_empty() { "." } else { entry })
            .join(program);
        match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(candidate),
            Ok(m) if m.is_file() => err = Errno::EACCES,
            _ => {}
        }
    }
    Err(err)
}

/// The OS's message without Rust's " (os error N)" suffix.
fn desc(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_in_the_apps_path_not_berths() {
        let env = vec![("PATH".to_owned(), "/nonexistent:/bin:/usr/bin".to_owned())];
        let sh = resolve("sh", &env, Path::new("/")).expect("sh is in /bin or /usr/bin");
        assert!(sh.ends_with("sh"));
        let none = vec![("PATH".to_owned(), "/nonexistent".to_owned())];
        assert_eq!(resolve("sh", &none, Path::new("/")), Err(Errno::ENOENT));
        assert_eq!(
            resolve("./x", &none, Path::new("/")),
            Ok(PathBuf::from("./x"))
        );
    }

    #[test]
    fn a_non_executable_file_is_permission_denied() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("app"), "#!/bin/sh\n").expect("write");
        let env = vec![("PATH".to_owned(), ".".to_owned())];
        assert_eq!(resolve("app", &env, dir.path()), Err(Errno::EACCES));
    }
}
