//! The command line: `berth up` runs the daemon; every other command is a thin client of
//! the control API, found from `-c FILE` (default `./berth.toml`) or `--api`.
//!
//! Exit codes: 0 success, 1 failure (an invalid config included), 2 wrong usage.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use spec::api::*;

use crate::client::Client;

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Run web services on your own servers: supervisor, edge proxy and deploys in one binary.",
    after_help = "Start with `berth up` in a directory with a berth.toml; then, from another \
                  terminal, `berth ps`, `berth logs SERVICE`, `berth apply` after editing the file."
)]
struct Cli {
    /// The config file; the daemon's API address is read from it.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "berth.toml",
        env = "BERTH_CONFIG"
    )]
    config: PathBuf,
    /// Talk to the daemon at this address instead (`unix:PATH` or `HOST:PORT`).
    #[arg(long, global = true, env = "BERTH_API")]
    api: Option<String>,
    /// Bearer token for a TCP API (default: read from the config's api_token_file).
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run berth in the foreground with the config file: supervise, route, serve the API.
    Up,
    /// Validate the config file; exit 0, or 1 with every error as FILE:LINE:COL: message.
    Check,
    /// List instances: service, id, release, state, health, pid, port, CPU, memory,
    /// restarts, uptime.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// List services with their desired and running instance counts.
    Services {
        #[arg(long)]
        json: bool,
    },
    /// Show a service's logs (every instance, merged by time).
    Logs {
        service: String,
        /// Keep following new lines.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines.
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: usize,
        #[arg(long)]
        json: bool,
    },
    /// Replace every instance of a service, new ones first (drops no request).
    Restart { service: String },
    /// Drain and stop every instance of a service (kept stopped across restarts of berth).
    Stop { service: String },
    /// Start a stopped service.
    Start { service: String },
    /// Send a signal to every instance's process group, e.g. `berth signal web HUP`.
    Signal { service: String, signal: String },
    /// Set a service's instance count: `berth scale web=3`.
    Scale {
        #[arg(value_name = "SERVICE=N")]
        target: String,
    },
    /// Apply the edited config file: only changed services are redeployed.
    Apply,
    /// Turn a service's maintenance mode on or off (503 with Retry-After).
    Maintenance {
        service: String,
        #[arg(value_parser = ["on", "off"])]
        mode: String,
    },
    /// Make a new release of a service and roll it out: new instances first, old ones
    /// drained once the new ones are healthy; rolls back by itself if they are not.
    /// Shows each step; exits 0 only once the release is live and its watch window passed.
    Deploy {
        service: String,
        /// Deploy this directory (copied into berth's data_dir as the release's source).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Return as soon as the deploy has started.
        #[arg(long)]
        detach: bool,
    },
    /// Roll back to the last release that was live before the current one (or --to vN).
    Rollback {
        service: String,
        #[arg(long, value_name = "vN")]
        to: Option<String>,
        #[arg(long)]
        detach: bool,
    },
    /// List a service's releases.
    Releases {
        service: String,
        #[arg(long)]
        json: bool,
    },
    /// What berth decided and why.
    Events {
        #[arg(short, long)]
        follow: bool,
        /// How many of the last events.
        #[arg(short = 'n', long = "lines", default_value_t = 50)]
        lines: u32,
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = std::env::var("BERTH_LOG").unwrap_or_else(|_| "info".into());
    if matches!(cli.command, Command::Up) {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .with_writer(std::io::stderr)
            .init();
    }
    // One worker per CPU berth may run on (affinity and cgroup quotas included), like
    // nginx's `worker_processes auto`: extra workers time-sharing a CPU only add latency.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Up => {
            crate::up::run(&cli.config).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Check => return Ok(check(&cli.config)),
        _ => {}
    }
    let client = client(&cli)?;
    let out = &mut std::io::stdout().lock();
    match cli.command {
        Command::Up | Command::Check => {} // handled above
        Command::Ps { json } => {
            let ps: PsResponse = client.get("/v1/instances").await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&ps)?)?;
            } else {
                print_ps(out, &ps)?;
            }
        }
        Command::Services { json } => {
            let r: ServicesResponse = client.get("/v1/services").await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                let mut rows = vec![row(&["SERVICE", "KIND", "RELEASE", "RUNNING", "STATE"])];
                for s in &r.services {
                    let state = match (s.stopped, s.maintenance) {
                        (true, _) => "stopped",
                        (_, true) => "maintenance",
                        _ => "up",
                    };
                    rows.push(vec![
                        s.name.clone(),
                        s.kind.clone(),
                        s.release.clone(),
                        format!("{}/{}", s.running, s.instances),
                        state.into(),
                    ]);
                }
                write_table(out, &rows)?;
            }
        }
        Command::Logs {
            service,
            follow,
            lines,
            json,
        } => {
            let path = format!("/v1/services/{}/logs?n={lines}", encode(&service));
            let print = |out: &mut dyn Write, l: &LogLineView| -> Result<()> {
                if json {
                    writeln!(out, "{}", serde_json::to_string(l)?)?;
                } else {
                    writeln!(out, "{} {} {}", l.time, l.instance, l.line)?;
                }
                Ok(())
            };
            if follow {
                client
                    .follow(&format!("{path}&follow=true"), |line| {
                        let l: LogLineView = serde_json::from_slice(line)?;
                        let mut o = std::io::stdout().lock();
                        print(&mut o, &l)?;
                        o.flush()?;
                        Ok(())
                    })
                    .await?;
            } else {
                let r: LogsResponse = client.get(&path).await?;
                for l in &r.lines {
                    print(out, l)?;
                }
            }
        }
        Command::Restart { service } => ack(out, &client, &service, "restart", &()).await?,
        Command::Stop { service } => ack(out, &client, &service, "stop", &()).await?,
        Command::Start { service } => ack(out, &client, &service, "start", &()).await?,
        Command::Signal { service, signal } => {
            ack(out, &client, &service, "signal", &SignalRequest { signal }).await?
        }
        Command::Scale { target } => {
            let Some((service, n)) = target.split_once('=') else {
                return usage(&format!(
                    "expected SERVICE=N (e.g. web=3), found {target:?}"
                ));
            };
            let Ok(instances) = n.trim().parse::<u32>() else {
                return usage(&format!(
                    "expected a non-negative instance count after '=', found {n:?}"
                ));
            };
            ack(
                out,
                &client,
                service.trim(),
                "scale",
                &ScaleRequest { instances },
            )
            .await?
        }
        Command::Maintenance { service, mode } => {
            let enabled = mode == "on";
            ack(
                out,
                &client,
                &service,
                "maintenance",
                &MaintenanceRequest { enabled },
            )
            .await?
        }
        Command::Apply => {
            let path = absolute(&cli.config)?;
            let r: ApplyResponse = client
                .post(
                    "/v1/apply",
                    &ApplyRequest {
                        path: path.display().to_string(),
                    },
                )
                .await?;
            let list = |v: &Vec<String>| {
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    v.join(", ")
                }
            };
            writeln!(out, "added:     {}", list(&r.added))?;
            writeln!(out, "changed:   {}", list(&r.changed))?;
            writeln!(out, "removed:   {}", list(&r.removed))?;
            writeln!(out, "unchanged: {}", list(&r.unchanged))?;
        }
        Command::Deploy {
            service,
            dir,
            detach,
        } => {
            let dir = dir.map(|d| absolute(&d)).transpose()?;
            let body = DeployRequest {
                dir: dir.map(|d| d.display().to_string()),
            };
            let started: DeployResponse = client
                .post(&format!("/v1/services/{}/deploy", encode(&service)), &body)
                .await?;
            return follow_deploy(&client, &started, detach).await;
        }
        Command::Rollback {
            service,
            to,
            detach,
        } => {
            let started: DeployResponse = client
                .post(
                    &format!("/v1/services/{}/rollback", encode(&service)),
                    &RollbackRequest { to },
                )
                .await?;
            return follow_deploy(&client, &started, detach).await;
        }
        Command::Releases { service, json } => {
            let r: ReleasesResponse = client
                .get(&format!("/v1/services/{}/releases", encode(&service)))
                .await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                let mut rows = vec![row(&["VERSION", "STATUS", "CREATED", "TRIGGER", "REASON"])];
                for rel in &r.releases {
                    rows.push(vec![
                        rel.version.clone(),
                        rel.status.clone(),
                        rel.created.clone(),
                        rel.trigger.clone(),
                        rel.reason.clone().unwrap_or_default(),
                    ]);
                }
                write_table(out, &rows)?;
            }
        }
        Command::Events {
            follow,
            lines,
            json,
        } => {
            let print = |out: &mut dyn Write, e: &EventView| -> Result<()> {
                if json {
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                } else {
                    let who = e
                        .instance
                        .as_deref()
                        .or(e.service.as_deref())
                        .unwrap_or("berth");
                    writeln!(out, "{} {:<12} {:<20} {}", e.time, who, e.kind, e.message)?;
                }
                Ok(())
            };
            let path = format!("/v1/events?limit={lines}");
            if follow {
                client
                    .follow(&format!("{path}&follow=true"), |line| {
                        let e: EventView = serde_json::from_slice(line)?;
                        let mut o = std::io::stdout().lock();
                        print(&mut o, &e)?;
                        o.flush()?;
                        Ok(())
                    })
                    .await?;
            } else {
                let r: EventsResponse = client.get(&path).await?;
                for e in &r.events {
                    print(out, e)?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a deploy's events as they happen until it succeeds (exit 0) or fails (exit 1).
async fn follow_deploy(
    client: &Client,
    started: &DeployResponse,
    detach: bool,
) -> Result<ExitCode> {
    println!("deploying {} {}", started.service, started.release);
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    let mut outcome: Option<(bool, String)> = None;
    let path = format!("/v1/events?after={}&follow=true", started.after_seq);
    let result = client
        .follow(&path, |line| {
            let e: EventView = serde_json::from_slice(line)?;
            if e.service.as_deref() != Some(started.service.as_str()) {
                return Ok(());
            }
            let who = e.instance.as_deref().unwrap_or(&started.service);
            println!(
                "{} {:<12} {}",
                &e.time[11..23.min(e.time.len())],
                who,
                e.message
            );
            match e.kind.as_str() {
                "deploy.succeeded" => outcome = Some((true, e.message)),
                "deploy.failed" => outcome = Some((false, e.message)),
                _ => return Ok(()),
            }
            // Done: end the stream.
            bail!("done")
        })
        .await;
    match (outcome, result) {
        (Some((true, _)), _) => Ok(ExitCode::SUCCESS),
        (Some((false, why)), _) => {
            eprintln!("error: {why}");
            Ok(ExitCode::FAILURE)
        }
        (None, Err(e)) => Err(e),
        (None, Ok(())) => bail!("berth closed the event stream before the deploy ended"),
    }
}

fn check(config: &std::path::Path) -> ExitCode {
    match spec::load(config) {
        Ok(spec) => {
            let problems = crate::dataplane::check_files(&spec);
            if !problems.is_empty() {
                eprintln!("{}", problems.join("\n"));
                return ExitCode::FAILURE;
            }
            println!(
                "{}: ok ({} service(s))",
                spec.path.display(),
                spec.services.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn usage(message: &str) -> Result<ExitCode> {
    eprintln!("error: {message}");
    Ok(ExitCode::from(2))
}

/// The API client, from `--api` or from the config file.
fn client(cli: &Cli) -> Result<Client> {
    if let Some(api) = &cli.api {
        let addr = match api.strip_prefix("unix:") {
            Some(p) => spec::ApiAddr::Unix(absolute(&PathBuf::from(p))?),
            None => spec::ApiAddr::Tcp(api.parse().with_context(|| {
                format!("--api: expected unix:PATH or HOST:PORT, found {api:?}")
            })?),
        };
        return Ok(Client {
            addr,
            token: cli.token.clone(),
        });
    }
    let spec = match spec::load(&cli.config) {
        Ok(s) => s.berth,
        Err(errors) => match lenient_berth_section(&cli.config) {
            // The file is broken elsewhere: the daemon is still where [berth] says.
            Some(b) => b,
            None => {
                eprintln!("{errors}");
                bail!(
                    "cannot find berth's API from {} (fix the file or pass --api)",
                    cli.config.display()
                );
            }
        },
    };
    let token = match (&cli.token, &spec.api) {
        (Some(t), _) => Some(t.clone()),
        (None, spec::ApiAddr::Tcp(_)) => {
            let path = spec
                .api_token_file
                .clone()
                .unwrap_or_else(|| spec.data_dir.join("api.token"));
            std::fs::read_to_string(&path)
                .ok()
                .map(|t| t.trim().to_owned())
        }
        (None, spec::ApiAddr::Unix(_)) => None,
    };
    Ok(Client {
        addr: spec.api.clone(),
        token,
    })
}

/// `[berth]` of a config file that does not validate as a whole: parsed alone, so that
/// commands still find the daemon while the rest of the file is being edited.
fn lenient_berth_section(config: &std::path::Path) -> Option<spec::BerthConfig> {
    let path = absolute(config).ok()?;
    let text = std::fs::read_to_string(&path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let berth = table.get("berth")?.as_table()?;
    let mut only = toml::Table::new();
    only.insert("berth".into(), toml::Value::Table(berth.clone()));
    let text = toml::to_string(&only).ok()?;
    spec::parse(&path, &text).ok().map(|s| s.berth)
}

async fn ack(
    out: &mut impl Write,
    client: &Client,
    service: &str,
    verb: &str,
    body: &impl serde::Serialize,
) -> Result<()> {
    let r: Ack = client
        .post(&format!("/v1/services/{}/{verb}", encode(service)), body)
        .await?;
    writeln!(out, "{}", r.message)?;
    Ok(())
}

fn absolute(p: &std::path::Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// Percent-encodes a path segment (service names are plain, but user input is not).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Left-aligned columns separated by two spaces.
fn write_table(out: &mut impl Write, rows: &[Vec<String>]) -> Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn print_ps(out: &mut impl Write, ps: &PsResponse) -> Result<()> {
    let mut rows = vec![row(&[
        "SERVICE",
        "ID",
        "RELEASE",
        "STATE",
        "HEALTH",
        "PID",
        "PORT",
        "CPU",
        "MEM",
        "RESTARTS",
        "UPTIME",
        "LAST EXIT",
    ])];
    for i in &ps.instances {
        rows.push(vec![
            i.service.clone(),
            i.id.clone(),
            i.release.clone(),
            i.state.clone(),
            i.health.clone(),
            i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            i.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            format!("{:.1}%", i.cpu_percent),
            human_bytes(i.memory_bytes),
            i.restarts.to_string(),
            human_duration(i.uptime_s),
            // Why it is not serving: a failing check while it should, else its last exit.
            match (i.health.as_str(), &i.health_reason) {
                ("unhealthy", Some(r)) => r.clone(),
                _ if i.state == "starting" && i.health_reason.is_some() => {
                    i.health_reason.clone().unwrap_or_default()
                }
                _ => i.last_exit.clone().unwrap_or_default(),
            },
        ]);
    }
    write_table(out, &rows)
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn human_duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{}h", s / 86400, s / 3600 % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            &[row(&["A", "LONGER", "C"]), row(&["wide-cell", "x", "y"])],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A          LONGER  C\nwide-cell  x       y\n"
        );
    }

    #[test]
    fn humane_units() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(31_457_280), "30.0MiB");
        assert_eq!(human_duration(93), "1m33s");
        assert_eq!(human_duration(7300), "2h1m");
    }

    #[test]
    fn usage_errors_exit_2() {
        let e = Cli::try_parse_from(["berth", "scale"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from(["berth", "maintenance", "web", "maybe"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
