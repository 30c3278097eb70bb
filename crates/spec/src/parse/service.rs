//! One `[services.NAME]` table and its `health`, `deploy` and `restart` sub-tables.
//!
//! Rules that need more than one service (the single default, routes claimed twice)
//! are checked by the caller from the [`RouteClaims`] returned here.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use toml::de::DeValue;

use super::reader::{Errors, Item, Span, Table, describe, resolve};
use super::{cidr, values};
use crate::{
    Balance, Command, DeploySpec, DomainPattern, HealthCheck, HealthSpec, RestartPolicy,
    RestartSpec, ServiceKind, ServiceName, ServiceSpec, Signal, StatusRange, Strategy,
};

const SERVICE_KEYS: &[&str] = &[
    "kind",
    "command",
    "dir",
    "user",
    "instances",
    "domains",
    "paths",
    "default",
    "https_redirect",
    "allow",
    "deny",
    "max_body",
    "env",
    "balance",
    "maintenance_page",
    "log_max",
    "health",
    "deploy",
    "restart",
];
/// DESIGN.md's "coming later" keys: rejected, with a note, until they are built.
const SERVICE_PLANNED: &[&str] = &[
    "image",
    "volumes",
    "secrets",
    "talks_to",
    "source",
    "build",
    "autoscale",
];
/// Keys that only make sense for a service routed from the edge.
const WEB_ONLY: &[&str] = &["domains", "paths", "default", "https_redirect"];
const HEALTH_KEYS: &[&str] = &[
    "http",
    "tcp",
    "command",
    "status",
    "host",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
    "grace",
];
const DEPLOY_KEYS: &[&str] = &[
    "strategy",
    "surge",
    "drain",
    "watch",
    "auto_rollback",
    "maintenance",
    "release_command",
    "keep_releases",
];
const RESTART_KEYS: &[&str] = &["policy", "stop_signal", "stop_timeout"];

const KINDS: &[(&str, ServiceKind)] = &[
    ("web", ServiceKind::Web),
    ("private", ServiceKind::Private),
    ("worker", ServiceKind::Worker),
];
const BALANCES: &[(&str, Balance)] = &[
    ("round_robin", Balance::RoundRobin),
    ("least_conn", Balance::LeastConn),
];
const STRATEGIES: &[(&str, Strategy)] = &[
    ("rolling", Strategy::Rolling),
    ("recreate", Strategy::Recreate),
];
const POLICIES: &[(&str, RestartPolicy)] = &[
    ("always", RestartPolicy::Always),
    ("on-failure", RestartPolicy::OnFailure),
    ("never", RestartPolicy::Never),
];

const COMMAND_EXPECTED: &str = r#"a non-empty string like "python3 app.py" or a non-empty array of strings like ["./server", "--verbose"]"#;

/// Which proxy listeners exist, for the rules that depend on them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Listeners {
    pub http: bool,
    pub https: bool,
}

/// A service as read: its spec, unless it is too broken to build, and its claims.
#[derive(Debug)]
pub(super) struct ParsedService {
    pub name: ServiceName,
    pub spec: Option<ServiceSpec>,
    pub claims: RouteClaims,
}

/// Where a service claims traffic, for the checks across services.
#[derive(Debug)]
pub(super) struct RouteClaims {
    /// `None` when `kind` is invalid.
    pub kind: Option<ServiceKind>,
    /// The service's table, for errors about the service as a whole.
    pub span: Span,
    /// The `default = true` value.
    pub default: Option<Span>,
    /// Each domain with the position of its array element.
    pub domains: Vec<(DomainPattern, Span)>,
}

/// Reads `[services.NAME]`; the spec is `None` when the service is too broken to build
/// (errors recorded).
pub(super) fn read_service(
    errs: &mut Errors,
    base: &Path,
    t: &Table<'_, '_>,
    listeners: Listeners,
) -> (Option<ServiceSpec>, RouteClaims) {
    t.check_keys(errs, SERVICE_KEYS, SERVICE_PLANNED);
    // An invalid kind is reported once; the rest is read as for a web service, and
    // the rules that depend on the kind are skipped.
    let known_kind = match t.get("kind") {
        Some(v) => v.choice(errs, KINDS),
        None => Some(ServiceKind::Web),
    };
    let kind = known_kind.unwrap_or(ServiceKind::Web);
    if kind != ServiceKind::Web {
        let kind_name = KINDS
            .iter()
            .find(|(_, k)| *k == kind)
            .map_or("", |(n, _)| n);
        for key in WEB_ONLY {
            if let Some(span) = t.key_span(key) {
                errs.at(
                    &span,
                    format!(
                        "{}.{key}: only web services are routed from the proxy, and this one has kind = {kind_name:?}",
                        t.path
                    ),
                );
            }
        }
    }
    // Web-only keys are read only for web services, so a wrong kind is one error.
    let web = |key: &str| t.get(key).filter(|_| kind == ServiceKind::Web);

    let command = match t.get("command") {
        Some(v) => read_command(errs, &v),
        None => {
            t.missing(errs, "command", COMMAND_EXPECTED);
            None
        }
    };
    let instances = t
        .get("instances")
        .and_then(|v| v.u32_from(errs, 0))
        .unwrap_or(1);
    let domains: Vec<(DomainPattern, Span)> = web("domains")
        .and_then(|v| {
            v.array_of(errs, "an array of domains", |errs, item| {
                let domain = item.parse_str(
                    errs,
                    r#"a domain string like "example.com""#,
                    values::domain,
                )?;
                Some((domain, item.span.clone()))
            })
        })
        .unwrap_or_default();
    let default_item = web("default");
    let default = default_item
        .as_ref()
        .and_then(|v| v.bool(errs))
        .unwrap_or(false);
    let redirect_item = web("https_redirect");
    let https_redirect = redirect_item
        .as_ref()
        .and_then(|v| v.bool(errs))
        .unwrap_or(false);
    if let Some(v) = &redirect_item
        && https_redirect
        && instances > 0
        && !listeners.https
    {
        v.fail(
            errs,
            "https_redirect = true needs an HTTPS listener, but [proxy] has no https",
        );
    }

    let deploy_table = sub_table(errs, t, "deploy");
    let restart_table = sub_table(errs, t, "restart");
    // Every key is read even when `command` is missing, to report all errors.
    let spec = ServiceSpec {
        kind,
        command: Command::Argv(Vec::new()),
        dir: t
            .get("dir")
            .and_then(|v| v.path(errs, base))
            .unwrap_or_else(|| resolve(base, ".")),
        user: t
            .get("user")
            .and_then(|v| v.non_empty_str(errs, "a non-empty user name"))
            .map(str::to_owned),
        instances,
        domains: domains.iter().map(|(d, _)| d.clone()).collect(),
        paths: web("paths")
            .and_then(|v| {
                v.array_of(errs, "an array of path prefixes", |errs, item| {
                    item.parse_str(errs, r#"a path string like "/api""#, |s| {
                        values::url_path(s, false)
                    })
                })
            })
            .unwrap_or_default(),
        default,
        https_redirect,
        allow: cidrs(errs, t.get("allow")),
        deny: cidrs(errs, t.get("deny")),
        max_body: t
            .get("max_body")
            .and_then(|v| v.size(errs))
            .unwrap_or(1 << 30),
        env: t.get("env").map(|v| read_env(errs, &v)).unwrap_or_default(),
        balance: t
            .get("balance")
            .and_then(|v| v.choice(errs, BALANCES))
            .unwrap_or(Balance::RoundRobin),
        maintenance_page: t.get("maintenance_page").and_then(|v| v.path(errs, base)),
        log_max: t
            .get("log_max")
            .and_then(|v| v.positive_size(errs))
            .unwrap_or(64 << 20),
        health: sub_table(errs, t, "health").and_then(|h| read_health(errs, &h, kind)),
        deploy: read_deploy(errs, deploy_table.as_ref()),
        restart: read_restart(errs, restart_table.as_ref()),
    };
    let claims = RouteClaims {
        kind: known_kind,
        span: t.span.clone(),
        default: default_item.filter(|_| default).map(|v| v.span),
        domains,
    };
    let spec = command.map(|command| ServiceSpec { command, ..spec });
    (spec, claims)
}

/// `[services.NAME.KEY]` as a table, if present.
fn sub_table<'a, 'i>(errs: &mut Errors, t: &Table<'a, 'i>, key: &str) -> Option<Table<'a, 'i>> {
    t.get(key)?
        .table(errs, &format!("a table like [{}.{key}]", t.path))
}

/// `command`: a string for `/bin/sh -c`, or an argv array.
fn read_command(errs: &mut Errors, v: &Item<'_, '_>) -> Option<Command> {
    match v.value {
        DeValue::String(s) if !s.trim().is_empty() => Some(Command::Shell(s.to_string())),
        DeValue::Array(items) if !items.is_empty() => {
            let argv = v.array_of(errs, COMMAND_EXPECTED, |errs, item| {
                item.str(errs).map(str::to_owned)
            })?;
            if argv.len() != items.len() {
                return None;
            }
            if argv[0].trim().is_empty() {
                v.fail(errs, "the program (first element) is empty");
                return None;
            }
            Some(Command::Argv(argv))
        }
        _ => {
            v.wrong_type(errs, COMMAND_EXPECTED);
            None
        }
    }
}

/// `allow` / `deny`.
fn cidrs(errs: &mut Errors, v: Option<Item<'_, '_>>) -> Vec<ipnet::IpNet> {
    v.and_then(|v| v.array_of(errs, "an array of CIDRs", cidr))
        .unwrap_or_default()
}

/// `env`: string values only, under valid names that berth does not set itself.
fn read_env(errs: &mut Errors, v: &Item<'_, '_>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(t) = v.table(errs, r#"a table of strings like { KEY = "value" }"#) else {
        return env;
    };
    for entry in t.entries() {
        if let Err(message) = values::env_name(entry.key) {
            errs.at(&entry.key_span, format!("{}: {message}", entry.item.path));
            continue;
        }
        let literal = match entry.item.value {
            DeValue::String(s) => {
                env.insert(entry.key.to_owned(), s.to_string());
                continue;
            }
            DeValue::Integer(i) => i.to_string(),
            DeValue::Float(f) => f.to_string(),
            DeValue::Boolean(b) => b.to_string(),
            _ => {
                entry.item.wrong_type(errs, "a string");
                continue;
            }
        };
        entry.item.fail(
            errs,
            format!(
                "expected a string, found {}; environment values are strings, so quote it: {} = \"{literal}\"",
                describe(entry.item.value),
                entry.key
            ),
        );
    }
    env
}

/// `[services.NAME.health]`: exactly one of `http`, `tcp = true`, `command`.
fn read_health(errs: &mut Errors, t: &Table<'_, '_>, kind: ServiceKind) -> Option<HealthSpec> {
    t.check_keys(errs, HEALTH_KEYS, &[]);
    let tcp = t.get("tcp").and_then(|v| v.bool(errs)).unwrap_or(false);
    let mut chosen: Vec<(&str, Span)> = ["http", "tcp", "command"]
        .into_iter()
        .filter(|key| *key != "tcp" || tcp)
        .filter_map(|key| Some((key, t.key_span(key)?)))
        .collect();
    chosen.sort_by_key(|(_, span)| span.start);
    let Some((first, _)) = chosen.first().cloned() else {
        errs.at(
            &t.span,
            format!(
                "{}: expected exactly one check: http = \"/path\", tcp = true or command = \"...\"",
                t.path
            ),
        );
        return None;
    };
    for (key, span) in &chosen[1..] {
        errs.at(
            span,
            format!(
                "{}.{key}: only one of http, tcp and command may be set, and {first} already is",
                t.path
            ),
        );
    }
    for (key, span) in &chosen {
        if !kind.has_port() && *key != "command" {
            errs.at(
                span,
                format!(
                    "{}.{key}: a worker has no port to probe; use command = \"...\" instead",
                    t.path
                ),
            );
        }
    }
    if first != "http" {
        for key in ["status", "host"] {
            if let Some(span) = t.key_span(key) {
                errs.at(
                    &span,
                    format!("{}.{key}: only applies to http checks", t.path),
                );
            }
        }
    }
    // Read every key before giving up on a bad one, to report all errors.
    let http_path = t.get("http").and_then(|v| {
        v.parse_str(errs, r#"a path string like "/healthz""#, |s| {
            values::url_path(s, true)
        })
    });
    let status = t.get("status").and_then(|v| read_status(errs, &v));
    let host = t.get("host").and_then(|v| read_host(errs, &v));
    let command = t
        .get("command")
        .and_then(|v| v.non_empty_str(errs, "a non-empty shell command string"));
    let check = match first {
        "http" => http_path.map(|path| HealthCheck::Http {
            path,
            status: status.unwrap_or(StatusRange { min: 200, max: 399 }),
            host,
        }),
        "tcp" => Some(HealthCheck::Tcp),
        _ => command.map(|c| HealthCheck::Command(c.to_owned())),
    };
    let threshold = |errs: &mut Errors, key: &str, default: u32| {
        t.get(key)
            .and_then(|v| v.u32_from(errs, 1))
            .unwrap_or(default)
    };
    let positive = |errs: &mut Errors, key: &str, default: Duration| {
        t.get(key)
            .and_then(|v| v.positive_duration(errs))
            .unwrap_or(default)
    };
    let interval = positive(errs, "interval", Duration::from_secs(2));
    let timeout = positive(errs, "timeout", Duration::from_secs(1));
    let healthy_threshold = threshold(errs, "healthy_threshold", 1);
    let unhealthy_threshold = threshold(errs, "unhealthy_threshold", 3);
    let grace = t
        .get("grace")
        .and_then(|v| v.duration(errs))
        .unwrap_or(Duration::from_secs(30));
    Some(HealthSpec {
        check: check?,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
        grace,
    })
}

/// `status = "200-399"`, `"200"` or `200`.
fn read_status(errs: &mut Errors, v: &Item<'_, '_>) -> Option<StatusRange> {
    if let DeValue::Integer(_) = v.value {
        let n = u16::try_from(v.int_in(errs, 100, 599)?).ok()?;
        return Some(StatusRange { min: n, max: n });
    }
    v.parse_str(
        errs,
        r#"a status range string like "200-399""#,
        values::status_range,
    )
}

/// The probe's `Host` header: any non-empty value without white space.
fn read_host(errs: &mut Errors, v: &Item<'_, '_>) -> Option<String> {
    let expected = r#"a host name like "web.example.com""#;
    let s = v.non_empty_str(errs, expected)?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        v.wrong_type(errs, expected);
        return None;
    }
    Some(s.to_owned())
}

/// `[services.NAME.deploy]`; every key has a default, so the table may be absent.
fn read_deploy(errs: &mut Errors, t: Option<&Table<'_, '_>>) -> DeploySpec {
    if let Some(t) = t {
        t.check_keys(errs, DEPLOY_KEYS, &[]);
    }
    let get = |key: &str| t.and_then(|t| t.get(key));
    let duration = |errs: &mut Errors, key: &str, default: u64| {
        get(key)
            .and_then(|v| v.duration(errs))
            .unwrap_or(Duration::from_secs(default))
    };
    let strategy = get("strategy")
        .and_then(|v| v.choice(errs, STRATEGIES))
        .unwrap_or(Strategy::Rolling);
    let surge_item = get("surge");
    let surge = surge_item
        .as_ref()
        .and_then(|v| v.u32_from(errs, 0))
        .unwrap_or(1);
    if let Some(v) = &surge_item
        && surge == 0
        && strategy == Strategy::Rolling
    {
        v.fail(
            errs,
            "a rolling deploy needs surge >= 1 (new instances start before old ones stop); found 0, or use strategy = \"recreate\"",
        );
    }
    DeploySpec {
        strategy,
        surge,
        drain: duration(errs, "drain", 30),
        watch: duration(errs, "watch", 10),
        auto_rollback: get("auto_rollback")
            .and_then(|v| v.bool(errs))
            .unwrap_or(true),
        maintenance: get("maintenance")
            .and_then(|v| v.bool(errs))
            .unwrap_or(false),
        release_command: get("release_command")
            .and_then(|v| v.str(errs))
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned),
        keep_releases: get("keep_releases")
            .and_then(|v| v.u32_from(errs, 1))
            .unwrap_or(10),
    }
}

/// `[services.NAME.restart]`; may be absent.
fn read_restart(errs: &mut Errors, t: Option<&Table<'_, '_>>) -> RestartSpec {
    if let Some(t) = t {
        t.check_keys(errs, RESTART_KEYS, &[]);
    }
    let get = |key: &str| t.and_then(|t| t.get(key));
    RestartSpec {
        policy: get("policy")
            .and_then(|v| v.choice(errs, POLICIES))
            .unwrap_or(RestartPolicy::Always),
        stop_signal: get("stop_signal")
            .and_then(|v| read_signal(errs, &v))
            .unwrap_or(Signal::TERM),
        stop_timeout: get("stop_timeout")
            .and_then(|v| v.duration(errs))
            .unwrap_or(Duration::from_secs(10)),
    }
}

/// `"TERM"`, `"SIGTERM"`, `"hup"` or a number.
fn read_signal(errs: &mut Errors, v: &Item<'_, '_>) -> Option<Signal> {
    if let DeValue::Integer(_) = v.value {
        let number = i32::try_from(v.int_in(errs, 1, 64)?).ok()?;
        return Some(Signal { number });
    }
    v.parse_str(errs, r#"a signal name like "TERM""#, Signal::parse)
}
