//! Runs the real `berth` binary in a temp dir, like a user would, and cleans up every
//! process it started even when the test fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use spec::api::{InstanceView, PsResponse};
use testkit::{DEADLINE, eventually, free_port, kill_tagged, port_range, unique_tag};

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");
pub const APP: &str = env!("CARGO_BIN_EXE_berth-test-app");

/// A berth project in a temp dir, and the `berth up` running it.
pub struct Berth {
    pub dir: tempfile::TempDir,
    pub http: u16,
    tag: String,
    child: Option<Child>,
    runs: u32,
}

impl Berth {
    /// Writes `berth.toml` — a `[berth]`/`[proxy]` header made for the test, then
    /// `services` with `{app}` replaced by the test app's path — without starting berth.
    pub fn project(services: &str) -> Berth {
        let dir = tempfile::tempdir().expect("temp dir");
        let http = free_port();
        let (lo, hi) = port_range(100);
        let config = format!(
            "[berth]\nports = \"{lo}-{hi}\"\n\n[proxy]\nhttp = \"127.0.0.1:{http}\"\n\n{}",
            services.replace("{app}", APP)
        );
        std::fs::write(dir.path().join("berth.toml"), config).expect("write config");
        Berth {
            dir,
            http,
            tag: unique_tag(),
            child: None,
            runs: 0,
        }
    }

    /// `project` + `up`.
    pub fn start(services: &str) -> Berth {
        let mut b = Berth::project(services);
        b.up();
        b
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("berth.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join(".berth")
    }

    /// Replaces the services part of the config (same header).
    pub fn rewrite(&self, services: &str) {
        let text = std::fs::read_to_string(self.config()).expect("read config");
        let header_end = text
            .find("\n\n[services")
            .or_else(|| text.find("\n\n#"))
            .unwrap_or(text.len());
        let header = &text[..header_end];
        std::fs::write(
            self.config(),
            format!("{header}\n\n{}", services.replace("{app}", APP)),
        )
        .expect("write config");
    }

    /// Starts `berth up` and waits until its API answers.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "berth already running");
        self.runs += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("berth-{}.log", self.runs)))
            .expect("log file");
        let child = Command::new(BERTH)
            .args(["up", "-c"])
            .arg(self.config())
            .current_dir(self.dir.path())
            .env("BERTH_TEST_TAG", &self.tag)
            .env("BERTH_LOG", "info,control=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start berth");
        self.child = Some(child);
        eventually(DEADLINE, "berth's API to answer", || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("berth up exited with {status}:\n{}", self.log());
            }
            let out = self.cli(&["ps", "--json"]);
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| stderr(&out))
        });
    }

    /// What `berth up` printed so far (all runs).
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|r| {
                std::fs::read_to_string(self.dir.path().join(format!("berth-{r}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---- next run ----\n")
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("berth not running")
    }

    /// Runs a berth CLI command against this project.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BERTH)
            .arg("-c")
            .arg(self.config())
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run berth cli")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({}):\n{}\n--- berth up log:\n{}",
            out.status,
            stderr(&out),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ps(&self) -> Vec<InstanceView> {
        let out = self.ok(&["ps", "--json"]);
        serde_json::from_str::<PsResponse>(&out)
            .expect("ps --json shape")
            .instances
    }

    pub fn instances(&self, service: &str) -> Vec<InstanceView> {
        self.ps()
            .into_iter()
            .filter(|i| i.service == service)
            .collect()
    }

    /// Waits until `service` has exactly `n` instances and all are running.
    pub fn wait_running(&self, service: &str, n: usize) -> Vec<InstanceView> {
        eventually(
            DEADLINE,
            &format!("{n} running instance(s) of {service}"),
            || {
                let all = self.instances(service);
                if all.len() == n && all.iter().all(|i| i.state == "running") {
                    Ok(all)
                } else {
                    Err(format!("{all:?}"))
                }
            },
        )
    }

    /// Waits until `f` holds for the instances of `service`.
    pub fn wait_for(
        &self,
        service: &str,
        what: &str,
        f: impl Fn(&[InstanceView]) -> bool,
    ) -> Vec<InstanceView> {
        eventually(DEADLINE, what, || {
            let all = self.instances(service);
            if f(&all) {
                Ok(all)
            } else {
                Err(format!("{all:?}"))
            }
        })
    }

    /// SIGKILL to berth itself (not its instances).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("berth not running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends `signal` to berth and waits for it to exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("berth not running");
        send_signal(child.id(), signal);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait berth") {
                return status;
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("berth did not exit after SIG{signal}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// berth and shim processes of this test still alive.
    pub fn tagged_processes(&self) -> Vec<u32> {
        testkit::tagged(&self.tag)
    }

    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.http)
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), "TERM");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever is left (berth was SIGKILLed, or a stop failed): shims and their
        // instance groups.
        kill_tagged(&self.tag);
        if std::thread::panicking() {
            eprintln!("--- berth up log:\n{}", self.log());
        }
    }
}

pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
pub fn http(addr: &str, method: &str, host: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// GET straight to an instance's port.
pub fn get_port(port: u16, path: &str) -> Result<String, String> {
    let (status, body) = http(&format!("127.0.0.1:{port}"), "GET", "localhost", path)?;
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("status {status}: {body}"))
    }
}
