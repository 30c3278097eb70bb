//! Table-driven tests of the config contract: values, defaults, paths, and every error
//! with its exact position and message.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::parse;
use crate::{
    ApiAddr, Balance, BerthConfig, CertificateSpec, Command, DeploySpec, DomainPattern,
    HealthCheck, HealthSpec, PortRange, ProxyConfig, RestartPolicy, RestartSpec, ServiceKind,
    ServiceName, ServiceSpec, Signal, Spec, StatusRange, Strategy,
};

const FILE: &str = "/srv/app/berth.toml";

/// A web listener, so that web services are valid; two lines.
const PROXY: &str = "[proxy]\nhttp = \"127.0.0.1:8080\"\n";

fn ok(text: &str) -> Spec {
    parse(Path::new(FILE), text).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

/// The errors as `LINE:COL: message`.
fn errors(text: &str) -> Vec<String> {
    match parse(Path::new(FILE), text) {
        Ok(_) => panic!("expected errors in:\n{text}"),
        Err(errs) => errs
            .0
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.col, e.message))
            .collect(),
    }
}

fn name(s: &str) -> ServiceName {
    ServiceName::new(s).expect("valid name")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid address")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("valid CIDR")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn web(spec: &Spec) -> &ServiceSpec {
    &spec.services[&name("web")]
}

/// What `[services.web] command = "./server"` means with every default.
fn default_service() -> ServiceSpec {
    ServiceSpec {
        kind: ServiceKind::Web,
        command: Command::Shell("./server".into()),
        dir: PathBuf::from("/srv/app"),
        user: None,
        instances: 1,
        domains: vec![],
        paths: vec![],
        default: false,
        https_redirect: false,
        allow: vec![],
        deny: vec![],
        max_body: 1 << 30,
        env: BTreeMap::new(),
        balance: Balance::RoundRobin,
        maintenance_page: None,
        log_max: 64 << 20,
        health: None,
        deploy: DeploySpec {
            strategy: Strategy::Rolling,
            surge: 1,
            drain: secs(30),
            watch: secs(10),
            auto_rollback: true,
            maintenance: false,
            release_command: None,
            keep_releases: 10,
        },
        restart: RestartSpec {
            policy: RestartPolicy::Always,
            stop_signal: Signal::TERM,
            stop_timeout: secs(10),
        },
    }
}

#[test]
fn defaults() {
    let spec = ok(&format!("{PROXY}[services.web]\ncommand = \"./server\"\n"));
    let expected = Spec {
        path: PathBuf::from(FILE),
        berth: BerthConfig {
            data_dir: PathBuf::from("/srv/app/.berth"),
            api: ApiAddr::Unix(PathBuf::from("/srv/app/.berth/berth.sock")),
            ports: PortRange {
                start: 20000,
                end: 29999,
            },
            metrics: None,
            api_token_file: None,
        },
        proxy: ProxyConfig {
            http: Some(addr("127.0.0.1:8080")),
            https: None,
            public_https_port: None,
            trusted_proxies: vec![],
            access_log: true,
            header_timeout: secs(10),
            max_header_size: 64 * 1024,
            idle_timeout: secs(60),
            connect_timeout: secs(5),
            response_timeout: secs(60),
            certificates: vec![],
        },
        services: BTreeMap::from([(name("web"), default_service())]),
    };
    assert_eq!(spec, expected);
}

#[test]
fn an_empty_file_is_a_spec_without_services() {
    let spec = ok("");
    assert!(spec.services.is_empty());
    assert_eq!(spec.proxy.http, None);
}

#[test]
fn health_defaults() {
    let spec = ok(&format!(
        "{PROXY}[services.web]\ncommand = \"./server\"\n[services.web.health]\nhttp = \"/up\"\n"
    ));
    let expected = HealthSpec {
        check: HealthCheck::Http {
            path: "/up".into(),
            status: StatusRange { min: 200, max: 399 },
            host: None,
        },
        interval: secs(2),
        timeout: secs(1),
        healthy_threshold: 1,
        unhealthy_threshold: 3,
        grace: secs(30),
    };
    assert_eq!(web(&spec).health, Some(expected));
}

/// Every key of the contract and the extras, each set to something other than its
/// default.
const EVERY_KEY: &str = r#"
[berth]
data_dir = "/var/lib/berth"
api = "127.0.0.1:7700"
ports = "30000-30099"
metrics = "127.0.0.1:9100"
api_token_file = "secrets/token"

[proxy]
http = "127.0.0.1:8080"
https = "[::1]:8443"
public_https_port = 443
trusted_proxies = ["10.0.0.0/8", "192.168.1.1"]
access_log = false
header_timeout = "5s"
max_header_size = "32KiB"
idle_timeout = "2m"
connect_timeout = "500ms"
response_timeout = "1m30s"
[[proxy.certificates]]
cert = "certs/a.pem"
key = "certs/a.key"
[[proxy.certificates]]
cert = "/etc/ssl/b.pem"
key = "/etc/ssl/b.key"

[services.web]
kind = "web"
command = ["./server", "--port", "$PORT"]
dir = "apps/web"
user = "www-data"
instances = 3
domains = ["Web.Example.com.", "*.web.example.com"]
paths = ["/", "/api"]
default = true
https_redirect = true
allow = ["10.0.0.0/8", "::1"]
deny = ["10.1.0.0/16"]
max_body = "10MB"
env = { FLASK_ENV = "production", _X1 = "" }
balance = "least_conn"
maintenance_page = "pages/503.html"
log_max = 1048576

[services.web.health]
http = "/healthz?full=1"
status = "200-204"
host = "internal.example.com"
interval = "5s"
timeout = "3s"
healthy_threshold = 2
unhealthy_threshold = 5
grace = "1m"

[services.web.deploy]
strategy = "recreate"
surge = 0
drain = "1m"
watch = "0s"
auto_rollback = false
maintenance = true
release_command = "./migrate"
keep_releases = 3

[services.web.restart]
policy = "on-failure"
stop_signal = "SIGQUIT"
stop_timeout = "30s"

[services.cache]
kind = "private"
command = "redis-server --port $PORT"
[services.cache.health]
tcp = true

[services.jobs]
kind = "worker"
command = "celery -A proj worker"
[services.jobs.health]
command = "celery inspect ping"
[services.jobs.restart]
policy = "never"
stop_signal = 2
"#;

#[test]
fn every_key_parses_to_its_value() {
    let spec = ok(EVERY_KEY);
    let berth = BerthConfig {
        data_dir: PathBuf::from("/var/lib/berth"),
        api: ApiAddr::Tcp(addr("127.0.0.1:7700")),
        ports: PortRange {
            start: 30000,
            end: 30099,
        },
        metrics: Some(addr("127.0.0.1:9100")),
        api_token_file: Some(PathBuf::from("/srv/app/secrets/token")),
    };
    assert_eq!(spec.berth, berth);
    let proxy = ProxyConfig {
        http: Some(addr("127.0.0.1:8080")),
        https: Some(addr("[::1]:8443")),
        public_https_port: Some(443),
        trusted_proxies: vec![net("10.0.0.0/8"), net("192.168.1.1/32")],
        access_log: false,
        header_timeout: secs(5),
        max_header_size: 32 * 1024,
        idle_timeout: secs(120),
        connect_timeout: Duration::from_millis(500),
        response_timeout: secs(90),
        certificates: vec![
            CertificateSpec {
                cert: PathBuf::from("/srv/app/certs/a.pem"),
                key: PathBuf::from("/srv/app/certs/a.key"),
            },
            CertificateSpec {
                cert: PathBuf::from("/etc/ssl/b.pem"),
                key: PathBuf::from("/etc/ssl/b.key"),
            },
        ],
    };
    assert_eq!(spec.proxy, proxy);

    let web = ServiceSpec {
        kind: ServiceKind::Web,
        command: Command::Argv(vec!["./server".into(), "--port".into(), "$PORT".into()]),
        dir: PathBuf::from("/srv/app/apps/web"),
        user: Some("www-data".into()),
        instances: 3,
        domains: vec![
            DomainPattern::Exact("web.example.com".into()),
            DomainPattern::Wildcard("web.example.com".into()),
        ],
        paths: vec!["/".into(), "/api".into()],
        default: true,
        https_redirect: true,
        allow: vec![net("10.0.0.0/8"), net("::1/128")],
        deny: vec![net("10.1.0.0/16")],
        max_body: 10_000_000,
        env: BTreeMap::from([
            ("FLASK_ENV".into(), "production".into()),
            ("_X1".into(), String::new()),
        ]),
        balance: Balance::LeastConn,
        maintenance_page: Some(PathBuf::from("/srv/app/pages/503.html")),
        log_max: 1 << 20,
        health: Some(HealthSpec {
            check: HealthCheck::Http {
                path: "/healthz?full=1".into(),
                status: StatusRange { min: 200, max: 204 },
                host: Some("internal.example.com".into()),
            },
            interval: secs(5),
            timeout: secs(3),
            healthy_threshold: 2,
            unhealthy_threshold: 5,
            grace: secs(60),
        }),
        deploy: DeploySpec {
            strategy: Strategy::Recreate,
            surge: 0,
            drain: secs(60),
            watch: secs(0),
            auto_rollback: false,
            maintenance: true,
            release_command: Some("./migrate".into()),
            keep_releases: 3,
        },
        restart: RestartSpec {
            policy: RestartPolicy::OnFailure,
            stop_signal: Signal { number: 3 },
            stop_timeout: secs(30),
        },
    };
    assert_eq!(spec.services[&name("web")], web);

    let cache = &spec.services[&name("cache")];
    assert_eq!(cache.kind, ServiceKind::Private);
    assert_eq!(
        cache.command,
        Command::Shell("redis-server --port $PORT".into())
    );
    assert_eq!(
        cache.health.as_ref().map(|h| &h.check),
        Some(&HealthCheck::Tcp)
    );

    let jobs = &spec.services[&name("jobs")];
    assert_eq!(jobs.kind, ServiceKind::Worker);
    assert_eq!(
        jobs.health.as_ref().map(|h| &h.check),
        Some(&HealthCheck::Command("celery inspect ping".into()))
    );
    assert_eq!(jobs.restart.policy, RestartPolicy::Never);
    assert_eq!(jobs.restart.stop_signal, Signal { number: 2 });
}

/// The example of DESIGN.md's config contract, verbatim. Certificate files are not
/// read by `spec`, so their absence does not matter.
const DESIGN_EXAMPLE: &str = r#"
[berth]
data_dir = ".berth"                 # state, logs, releases
api = "unix:.berth/berth.sock"      # or "127.0.0.1:7700" (then a token is required)
ports = "20000-29999"               # where instance PORTs are allocated
metrics = "127.0.0.1:9100"          # optional: Prometheus /metrics without a token

[proxy]
http = "127.0.0.1:8080"             # listeners; either may be absent
https = "127.0.0.1:8443"
public_https_port = 443             # optional: the port users see, for redirects
trusted_proxies = []                # CIDRs whose X-Forwarded-For is believed
access_log = true                   # false turns the access log off
header_timeout = "10s"              # a client must send its request head within this
max_header_size = "64KiB"
[[proxy.certificates]]              # PEM files; chosen by SNI from the cert's names;
cert = "certs/example.pem"          # the first one also answers clients without SNI
key = "certs/example.key"

[services.web]
kind = "web"                        # web (routed from the edge) | private | worker
command = "python3 app.py"          # a string runs under /bin/sh -c; or an argv array
dir = "apps/web"                    # working directory / source directory
user = "www-data"                   # optional: run as this user when berth is root
instances = 2
domains = ["web.example.com", "*.web.example.com"]   # web only
paths = ["/"]                       # path prefixes, optional
default = false                     # true: catch-all for unmatched hosts
https_redirect = true
allow = ["10.0.0.0/8", "127.0.0.1/32"]   # if set, all other clients get 403
deny = []
max_body = "1GiB"                   # larger request bodies get 413; bodies are streamed
env = { FLASK_ENV = "production" }

[services.web.health]               # without this section: see "Readiness" below
http = "/healthcheck.html"          # or tcp = true, or command = "..."
status = "200-399"                  # accepted HTTP statuses
host = "web.example.com"            # Host header for the probe (default: first domain)
interval = "2s"
timeout = "1s"
healthy_threshold = 1
unhealthy_threshold = 3
grace = "30s"                       # time a new instance has to become healthy

[services.web.deploy]
strategy = "rolling"                # rolling | recreate
surge = 1                           # extra instances started before old ones stop
drain = "30s"                       # the most time in-flight requests get before stop
watch = "10s"                       # after the switch: a crash or failed check rolls back
auto_rollback = true
maintenance = false                 # true: serve the maintenance page during the deploy
release_command = ""                # runs once per release before traffic shifts

[services.web.restart]
policy = "always"                   # always | on-failure | never
stop_signal = "TERM"
stop_timeout = "10s"

[services.worker]
kind = "worker"
command = "celery -A proj worker"
"#;

#[test]
fn the_design_example_parses() {
    let spec = ok(DESIGN_EXAMPLE);
    assert_eq!(spec.berth.data_dir, PathBuf::from("/srv/app/.berth"));
    assert_eq!(
        spec.berth.api,
        ApiAddr::Unix(PathBuf::from("/srv/app/.berth/berth.sock"))
    );
    assert_eq!(
        spec.proxy.certificates,
        vec![CertificateSpec {
            cert: PathBuf::from("/srv/app/certs/example.pem"),
            key: PathBuf::from("/srv/app/certs/example.key"),
        }]
    );
    let web = web(&spec);
    assert_eq!(web.instances, 2);
    assert_eq!(web.dir, PathBuf::from("/srv/app/apps/web"));
    assert_eq!(web.deploy.release_command, None);
    assert_eq!(web.route_paths(), vec!["/"]);
    assert_eq!(spec.services[&name("worker")].kind, ServiceKind::Worker);
    assert_eq!(spec.services.len(), 2);
}

#[test]
fn relative_paths_resolve_from_the_config_directory() {
    let text = r#"
[berth]
data_dir = "./state"
api = "unix:run/berth.sock"
api_token_file = "../token"
[proxy]
http = "127.0.0.1:8080"
[services.web]
command = "./server"
dir = "apps/./web/"
maintenance_page = "/abs/503.html"
"#;
    let spec = ok(text);
    assert_eq!(spec.berth.data_dir, PathBuf::from("/srv/app/state"));
    assert_eq!(
        spec.berth.api,
        ApiAddr::Unix(PathBuf::from("/srv/app/run/berth.sock"))
    );
    assert_eq!(
        spec.berth.api_token_file,
        Some(PathBuf::from("/srv/app/../token"))
    );
    assert_eq!(web(&spec).dir, PathBuf::from("/srv/app/apps/web"));
    assert_eq!(
        web(&spec).maintenance_page,
        Some(PathBuf::from("/abs/503.html"))
    );
}

#[test]
fn the_default_api_follows_data_dir_and_a_tcp_api_gets_a_token_file() {
    let spec = ok("[berth]\ndata_dir = \"var\"\n");
    assert_eq!(
        spec.berth.api,
        ApiAddr::Unix(PathBuf::from("/srv/app/var/berth.sock"))
    );
    assert_eq!(spec.berth.api_token_file, None);

    let spec = ok("[berth]\ndata_dir = \"var\"\napi = \"127.0.0.1:7700\"\n");
    assert_eq!(
        spec.berth.api_token_file,
        Some(PathBuf::from("/srv/app/var/api.token"))
    );
}

#[test]
fn alternative_value_forms() {
    let service = |body: &str| {
        let spec = ok(&format!("{PROXY}[services.web]\ncommand = \"x\"\n{body}\n"));
        web(&spec).clone()
    };
    // Sizes as a number of bytes, units case-insensitive.
    assert_eq!(service("max_body = 1024").max_body, 1024);
    assert_eq!(service("max_body = \"2 kib\"").max_body, 2048);
    // Domains: upper case and a trailing dot are normalised.
    assert_eq!(
        service("domains = [\"EXAMPLE.com.\"]").domains,
        vec![DomainPattern::Exact("example.com".into())]
    );
    // CIDRs: host bits are cleared; a bare IPv6 address is a /128.
    assert_eq!(
        service("allow = [\"10.1.2.3/8\", \"2001:db8::1\"]").allow,
        vec![net("10.0.0.0/8"), net("2001:db8::1/128")]
    );
    // An empty environment value is a value.
    assert_eq!(service("[services.web.env]\nA = \"\"").env["A"], "");
    // Health status as a single number or an integer; signal names in any case.
    let health = service("[services.web.health]\nhttp = \"/\"\nstatus = 204").health;
    assert!(
        matches!(health.map(|h| h.check), Some(HealthCheck::Http { status, .. }) if status == StatusRange { min: 204, max: 204 })
    );
    let health = service("[services.web.health]\nhttp = \"/\"\nstatus = \"200\"").health;
    assert!(
        matches!(health.map(|h| h.check), Some(HealthCheck::Http { status, .. }) if status == StatusRange { min: 200, max: 200 })
    );
    let restart = service("[services.web.restart]\nstop_signal = \"hup\"").restart;
    assert_eq!(restart.stop_signal, Signal { number: 1 });
    // `tcp = false` next to another check is no check at all.
    let health = service("[services.web.health]\ntcp = false\ncommand = \"true\"").health;
    assert_eq!(
        health.map(|h| h.check),
        Some(HealthCheck::Command("true".into()))
    );
    // Instances may be 0.
    assert_eq!(service("instances = 0").instances, 0);
}

/// Each case: a whole file and the errors it must give, as `LINE:COL: message`.
#[test]
fn each_error_at_its_position() {
    let cases: &[(&str, &[&str])] = &[
        // TOML syntax: one error at the parser's position.
        (
            "[berth]\ndata_dir = \"x\n",
            &["2:14: invalid TOML: invalid basic string, expected `\"`"],
        ),
        ("a = 1\na = 2\n", &["2:1: invalid TOML: duplicate key"]),
        // Unknown keys, with a suggestion or a note for the planned ones.
        (
            "colour = \"red\"\n",
            &[
                "1:1: unknown key \"colour\" at the top level; expected one of: berth, proxy, services",
            ],
        ),
        (
            "[cluster]\netcd = []\n",
            &[
                "1:2: unknown key \"cluster\" at the top level (\"cluster\" is planned but not supported yet); expected one of: berth, proxy, services",
            ],
        ),
        (
            "[berth]\ndatadir = \"x\"\n",
            &[
                "2:1: unknown key \"datadir\" in [berth] (did you mean \"data_dir\"?); expected one of: data_dir, api, ports, metrics, api_token_file",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:80\"\ntimeout = \"1s\"\n",
            &[
                "3:1: unknown key \"timeout\" in [proxy]; expected one of: http, https, public_https_port, trusted_proxies, access_log, header_timeout, max_header_size, idle_timeout, connect_timeout, response_timeout, certificates",
            ],
        ),
        (
            "[[proxy.certificates]]\ncert = \"a\"\nkey = \"b\"\nchain = \"c\"\n",
            &["4:1: unknown key \"chain\" in [proxy.certificates[0]]; expected one of: cert, key"],
        ),
        (
            "[services.w]\nkind = \"worker\"\ncommand = \"x\"\n[services.w.health]\ncommand = \"x\"\nretries = 3\n",
            &[
                "6:1: unknown key \"retries\" in [services.w.health]; expected one of: http, tcp, command, status, host, interval, timeout, healthy_threshold, unhealthy_threshold, grace",
            ],
        ),
        (
            "[services.w]\nkind = \"worker\"\ncommand = \"x\"\n[services.w.deploy]\nstrategy = \"rolling\"\nparallel = 2\n",
            &[
                "6:1: unknown key \"parallel\" in [services.w.deploy]; expected one of: strategy, surge, drain, watch, auto_rollback, maintenance, release_command, keep_releases",
            ],
        ),
        (
            "[services.w]\nkind = \"worker\"\ncommand = \"x\"\n[services.w.restart]\nsignal = \"HUP\"\n",
            &[
                "5:1: unknown key \"signal\" in [services.w.restart]; expected one of: policy, stop_signal, stop_timeout",
            ],
        ),
        // Types.
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\ninstances = \"two\"\n",
            &[
                "5:13: services.web.instances: expected a non-negative integer, found string \"two\"",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\ninstances = -1\n",
            &["5:13: services.web.instances: expected a non-negative integer, found integer -1"],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\ninstances = 5000000000\n",
            &[
                "5:13: services.web.instances: expected an integer of at most 4294967295, found integer 5000000000",
            ],
        ),
        (
            "[proxy]\naccess_log = \"yes\"\n",
            &["2:14: proxy.access_log: expected true or false, found string \"yes\""],
        ),
        (
            "berth = 1\n",
            &["1:9: berth: expected a table like [berth], found integer 1"],
        ),
        (
            "[[services]]\nname = \"web\"\n",
            &["1:1: services: expected a table like [services.NAME], found an array"],
        ),
        (
            "[proxy]\ncertificates = { cert = \"a\", key = \"b\" }\n",
            &[
                "2:16: proxy.certificates: expected an array of tables [[proxy.certificates]], found a table",
            ],
        ),
        (
            "[[proxy.certificates]]\ncert = \"a.pem\"\n",
            &[
                "1:1: proxy.certificates[0]: missing required key \"key\"; expected a path to a PEM file",
            ],
        ),
        // [berth] values.
        (
            "[berth]\napi = \"localhost:7700\"\n",
            &[
                "2:7: berth.api: expected \"unix:PATH\" or an address like \"127.0.0.1:7700\", found \"localhost:7700\"",
            ],
        ),
        (
            "[berth]\napi = \"unix:\"\n",
            &["2:7: berth.api: expected a socket path after \"unix:\", found \"unix:\""],
        ),
        (
            "[berth]\nports = \"30000-20000\"\n",
            &[
                "2:9: berth.ports: expected a port range like \"20000-29999\" (from 1 to 65535, low-high), found \"30000-20000\"",
            ],
        ),
        (
            "[berth]\nports = \"0-100\"\n",
            &[
                "2:9: berth.ports: expected a port range like \"20000-29999\" (from 1 to 65535, low-high), found \"0-100\"",
            ],
        ),
        (
            "[berth]\nports = \"20000\"\n",
            &[
                "2:9: berth.ports: expected a port range like \"20000-29999\" (from 1 to 65535, low-high), found \"20000\"",
            ],
        ),
        (
            "[berth]\nmetrics = \"127.0.0.1\"\n",
            &[
                "2:11: berth.metrics: expected an address like \"127.0.0.1:8080\" or \"[::1]:8443\" (an IP address, not a host name), found \"127.0.0.1\"",
            ],
        ),
        (
            "[berth]\ndata_dir = \"\"\n",
            &["2:12: berth.data_dir: expected a non-empty path, found string \"\""],
        ),
        // [proxy] values.
        (
            "[proxy]\nhttp = \"127.0.0.1:99999\"\n",
            &[
                "2:8: proxy.http: expected an address like \"127.0.0.1:8080\" or \"[::1]:8443\" (an IP address, not a host name), found \"127.0.0.1:99999\"",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\nhttps = \"127.0.0.1:8080\"\n",
            &["3:9: proxy.https: 127.0.0.1:8080 is already used by proxy.http"],
        ),
        (
            "[berth]\napi = \"127.0.0.1:7700\"\nmetrics = \"127.0.0.1:7700\"\n",
            &["3:11: berth.metrics: 127.0.0.1:7700 is already used by berth.api"],
        ),
        (
            "[proxy]\npublic_https_port = 0\n",
            &[
                "2:21: proxy.public_https_port: expected an integer from 1 to 65535, found integer 0",
            ],
        ),
        (
            "[proxy]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            &[
                "2:20: proxy.trusted_proxies[0]: expected a CIDR like \"10.0.0.0/8\" or an IP address like \"127.0.0.1\", found \"10.0.0.0/33\"",
            ],
        ),
        (
            "[proxy]\nheader_timeout = \"0s\"\n",
            &[
                "2:18: proxy.header_timeout: expected a duration greater than zero, found string \"0s\"",
            ],
        ),
        (
            "[proxy]\nheader_timeout = 10\n",
            &[
                "2:18: proxy.header_timeout: expected a duration string like \"2s\" or \"500ms\", found integer 10",
            ],
        ),
        (
            "[proxy]\nidle_timeout = \"10\"\n",
            &[
                "2:16: proxy.idle_timeout: invalid duration \"10\": the unit is missing; expected a duration like \"500ms\", \"2s\", \"1m\" or \"1m30s\" (units: h, m, s, ms)",
            ],
        ),
        (
            "[proxy]\nmax_header_size = \"64 kilobytes\"\n",
            &[
                "2:19: proxy.max_header_size: invalid size \"64 kilobytes\": unknown unit \"kilobytes\"; expected a size like \"512MiB\" or \"10B\" (units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)",
            ],
        ),
        // Service names and commands.
        (
            "[services.Web_1]\nkind = \"worker\"\ncommand = \"x\"\n",
            &[
                "1:11: services.Web_1: invalid service name \"Web_1\": expected 1-63 lower-case letters, digits or '-', not starting or ending with '-'",
            ],
        ),
        (
            "[services.w]\nkind = \"worker\"\ncommand = \" \"\n",
            &[
                "3:11: services.w.command: expected a non-empty string like \"python3 app.py\" or a non-empty array of strings like [\"./server\", \"--verbose\"], found string \" \"",
            ],
        ),
        (
            "[services.w]\nkind = \"worker\"\ncommand = [\"./run\", 3]\n",
            &["3:21: services.w.command[1]: expected a string, found integer 3"],
        ),
        (
            "[services.w]\nkind = \"worker\"\ncommand = [\"\", \"x\"]\n",
            &["3:11: services.w.command: the program (first element) is empty"],
        ),
        (
            "[services.w]\nkind = \"cron\"\ncommand = \"x\"\n",
            &[
                "2:8: services.w.kind: expected one of \"web\", \"private\", \"worker\", found \"cron\"",
            ],
        ),
        (
            "[services.w]\nkind = \"worker\"\ncommand = \"x\"\nuser = \"\"\n",
            &["4:8: services.w.user: expected a non-empty user name, found string \"\""],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\nbalance = \"random\"\n",
            &[
                "5:11: services.web.balance: expected one of \"round_robin\", \"least_conn\", found \"random\"",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\nlog_max = 0\n",
            &["5:11: services.web.log_max: expected a size greater than zero, found integer 0"],
        ),
        // Web-only keys on other kinds.
        (
            "[services.cache]\nkind = \"private\"\ncommand = \"x\"\ndomains = [\"a.com\"]\npaths = [\"/\"]\n",
            &[
                "4:1: services.cache.domains: only web services are routed from the proxy, and this one has kind = \"private\"",
                "5:1: services.cache.paths: only web services are routed from the proxy, and this one has kind = \"private\"",
            ],
        ),
        (
            "[services.jobs]\nkind = \"worker\"\ncommand = \"x\"\ndefault = true\nhttps_redirect = false\n",
            &[
                "4:1: services.jobs.default: only web services are routed from the proxy, and this one has kind = \"worker\"",
                "5:1: services.jobs.https_redirect: only web services are routed from the proxy, and this one has kind = \"worker\"",
            ],
        ),
        // Domains and paths.
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\ndomains = [\"a.com:8080\", \"a..com\", \"*\", \"a.*.com\", \"-a.com\", \"é.com\"]\n",
            &[
                "5:12: services.web.domains[0]: expected a domain like \"example.com\" or \"*.example.com\", found \"a.com:8080\" (a domain has no scheme, port or path)",
                "5:26: services.web.domains[1]: expected a domain like \"example.com\" or \"*.example.com\", found \"a..com\" (empty label)",
                "5:36: services.web.domains[2]: expected a domain like \"example.com\" or \"*.example.com\", found \"*\" ('*' may only be a whole first label, as in \"*.example.com\")",
                "5:41: services.web.domains[3]: expected a domain like \"example.com\" or \"*.example.com\", found \"a.*.com\" ('*' may only be a whole first label, as in \"*.example.com\")",
                "5:52: services.web.domains[4]: expected a domain like \"example.com\" or \"*.example.com\", found \"-a.com\" (a label cannot start or end with '-')",
                "5:62: services.web.domains[5]: expected a domain like \"example.com\" or \"*.example.com\", found \"é.com\" (invalid character 'é'; use letters, digits and '-', and punycode for others)",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\npaths = [\"api\", \"/a?b\"]\n",
            &[
                "5:10: services.web.paths[0]: expected a path prefix starting with \"/\", like \"/api\", without '?' or '#', found \"api\"",
                "5:17: services.web.paths[1]: expected a path prefix starting with \"/\", like \"/api\", without '?' or '#', found \"/a?b\"",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\nallow = [\"everyone\"]\ndeny = \"10.0.0.0/8\"\n",
            &[
                "5:10: services.web.allow[0]: expected a CIDR like \"10.0.0.0/8\" or an IP address like \"127.0.0.1\", found \"everyone\"",
                "6:8: services.web.deny: expected an array of CIDRs, found string \"10.0.0.0/8\"",
            ],
        ),
        // Environment.
        (
            "[services.w]\nkind = \"worker\"\ncommand = \"x\"\nenv = { WORKERS = 4, DEBUG = true, PORT = \"1\", \"A-B\" = \"x\", LIST = [] }\n",
            &[
                "4:19: services.w.env.WORKERS: expected a string, found integer 4; environment values are strings, so quote it: WORKERS = \"4\"",
                "4:30: services.w.env.DEBUG: expected a string, found boolean true; environment values are strings, so quote it: DEBUG = \"true\"",
                "4:36: services.w.env.PORT: PORT is set by berth for every instance and cannot be overridden (reserved: PORT, BERTH_SERVICE, BERTH_INSTANCE, BERTH_RELEASE)",
                "4:48: services.w.env.A-B: invalid variable name \"A-B\": expected letters, digits and '_', not starting with a digit",
                "4:68: services.w.env.LIST: expected a string, found an empty array",
            ],
        ),
        (
            "[services.w]\nkind = \"worker\"\ncommand = \"x\"\n[services.w.env]\nBERTH_RELEASE = \"v1\"\n",
            &[
                "5:1: services.w.env.BERTH_RELEASE: BERTH_RELEASE is set by berth for every instance and cannot be overridden (reserved: PORT, BERTH_SERVICE, BERTH_INSTANCE, BERTH_RELEASE)",
            ],
        ),
        // Health.
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\n[services.web.health]\ninterval = \"1s\"\n",
            &[
                "5:1: services.web.health: expected exactly one check: http = \"/path\", tcp = true or command = \"...\"",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\n[services.web.health]\nhttp = \"/\"\ntcp = true\n",
            &[
                "7:1: services.web.health.tcp: only one of http, tcp and command may be set, and http already is",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\n[services.web.health]\nhttp = \"healthz\"\nstatus = \"200-600\"\nhealthy_threshold = 0\ntimeout = \"0ms\"\n",
            &[
                "6:8: services.web.health.http: expected a path starting with \"/\", like \"/healthz\", found \"healthz\"",
                "7:10: services.web.health.status: expected a status like \"200\" or a range like \"200-399\" (within 100-599), found \"200-600\"",
                "8:21: services.web.health.healthy_threshold: expected an integer of at least 1, found integer 0",
                "9:11: services.web.health.timeout: expected a duration greater than zero, found string \"0ms\"",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\n[services.web.health]\ncommand = \"true\"\nstatus = \"200\"\nhost = \"a.com\"\n",
            &[
                "7:1: services.web.health.status: only applies to http checks",
                "8:1: services.web.health.host: only applies to http checks",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\n[services.web.health]\ntcp = \"yes\"\n",
            &[
                "5:1: services.web.health: expected exactly one check: http = \"/path\", tcp = true or command = \"...\"",
                "6:7: services.web.health.tcp: expected true or false, found string \"yes\"",
            ],
        ),
        (
            "[services.jobs]\nkind = \"worker\"\ncommand = \"x\"\n[services.jobs.health]\nhttp = \"/\"\n",
            &[
                "5:1: services.jobs.health.http: a worker has no port to probe; use command = \"...\" instead",
            ],
        ),
        (
            "[services.jobs]\nkind = \"worker\"\ncommand = \"x\"\nhealth = { tcp = true }\n",
            &[
                "4:12: services.jobs.health.tcp: a worker has no port to probe; use command = \"...\" instead",
            ],
        ),
        // Deploy and restart.
        (
            "[services.w]\nkind = \"worker\"\ncommand = \"x\"\n[services.w.deploy]\nsurge = 0\nstrategy = \"blue-green\"\nkeep_releases = 0\n",
            &[
                "5:9: services.w.deploy.surge: a rolling deploy needs surge >= 1 (new instances start before old ones stop); found 0, or use strategy = \"recreate\"",
                "6:12: services.w.deploy.strategy: expected one of \"rolling\", \"recreate\", found \"blue-green\"",
                "7:17: services.w.deploy.keep_releases: expected an integer of at least 1, found integer 0",
            ],
        ),
        (
            "[services.w]\nkind = \"worker\"\ncommand = \"x\"\n[services.w.restart]\npolicy = \"on_failure\"\nstop_signal = \"TERMINATE\"\nstop_timeout = \"-1s\"\n",
            &[
                "5:10: services.w.restart.policy: expected one of \"always\", \"on-failure\", \"never\", found \"on_failure\"",
                "6:15: services.w.restart.stop_signal: unknown signal \"TERMINATE\": expected one of HUP, INT, QUIT, KILL, USR1, USR2, TERM, CONT, STOP, TSTP, WINCH (with or without SIG) or a number 1-64",
                "7:16: services.w.restart.stop_timeout: invalid duration \"-1s\": durations cannot be negative; expected a duration like \"500ms\", \"2s\", \"1m\" or \"1m30s\" (units: h, m, s, ms)",
            ],
        ),
        (
            "[services.w]\nkind = \"worker\"\ncommand = \"x\"\nrestart = { stop_signal = 65 }\n",
            &[
                "4:27: services.w.restart.stop_signal: expected an integer from 1 to 64, found integer 65",
            ],
        ),
        // Rules across keys and services.
        (
            "[services.web]\ncommand = \"x\"\n[services.api]\ncommand = \"y\"\n",
            &[
                "1:1: services.web: a web service needs a proxy listener, but [proxy] sets neither http nor https; add e.g. http = \"127.0.0.1:8080\" to [proxy] (or set kind = \"private\" or \"worker\")",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\nhttps_redirect = true\n",
            &[
                "5:18: services.web.https_redirect: https_redirect = true needs an HTTPS listener, but [proxy] has no https",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.a]\ncommand = \"x\"\ndefault = true\n[services.b]\ncommand = \"x\"\ndefault = true\n",
            &[
                "8:11: services.b.default: only one service may be the default, and \"a\" already is",
            ],
        ),
        (
            "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.b]\ncommand = \"x\"\ndomains = [\"a.com\", \"*.a.com\"]\npaths = [\"/api\"]\n[services.a]\ncommand = \"x\"\ndomains = [\"b.com\", \"A.com\", \"*.a.com\"]\npaths = [\"/\", \"/api\"]\n",
            &[
                "9:21: services.a.domains: a.com with path \"/api\" is already routed to service \"b\"",
                "9:30: services.a.domains: *.a.com with path \"/api\" is already routed to service \"b\"",
            ],
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(errors(text), *expected, "in:\n{text}");
    }
}

#[test]
fn coming_later_keys_are_unknown() {
    let text = r#"
[proxy]
http = "127.0.0.1:8080"
[services.api]
command = "x"
image = "registry/app:tag"
volumes = { data = "/var/lib/app" }
secrets = ["DATABASE_URL"]
talks_to = ["redis"]
[services.api.source]
git = "https://example.org/team/api.git"
[services.api.build]
command = "make"
[services.api.autoscale]
max = 10
[environments.stage]
services.web.domains = ["web-stage.example.com"]
[cluster]
etcd = ["http://10.0.0.1:2379"]
"#;
    let found = errors(text);
    let keys: Vec<&str> = found
        .iter()
        .map(|e| {
            assert!(e.contains("is planned but not supported yet"), "{e}");
            e.split('"').nth(1).unwrap_or_default()
        })
        .collect();
    assert_eq!(
        keys,
        [
            "image",
            "volumes",
            "secrets",
            "talks_to",
            "source",
            "build",
            "autoscale",
            "environments",
            "cluster"
        ]
    );
}

#[test]
fn all_errors_are_reported_at_once_in_file_order() {
    let text = r#"[services.web]
instances = "two"
colour = "red"
[services.web.health]
interval = "soon"
http = "/"
[berth]
ports = "1-0"
"#;
    assert_eq!(
        errors(text),
        [
            "1:1: services.web: missing required key \"command\"; expected a non-empty string like \"python3 app.py\" or a non-empty array of strings like [\"./server\", \"--verbose\"]",
            "1:1: services.web: a web service needs a proxy listener, but [proxy] sets neither http nor https; add e.g. http = \"127.0.0.1:8080\" to [proxy] (or set kind = \"private\" or \"worker\")",
            "2:13: services.web.instances: expected a non-negative integer, found string \"two\"",
            "3:1: unknown key \"colour\" in [services.web]; expected one of: kind, command, dir, user, instances, domains, paths, default, https_redirect, allow, deny, max_body, env, balance, maintenance_page, log_max, health, deploy, restart",
            "5:12: services.web.health.interval: invalid duration \"soon\": expected a number; expected a duration like \"500ms\", \"2s\", \"1m\" or \"1m30s\" (units: h, m, s, ms)",
            "8:9: berth.ports: expected a port range like \"20000-29999\" (from 1 to 65535, low-high), found \"1-0\"",
        ]
    );
}

#[test]
fn errors_display_as_file_line_col_message() {
    let text = "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\n\ninstances = \"two\"\n";
    let err = parse(Path::new(FILE), text).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "/srv/app/berth.toml:6:13: services.web.instances: expected a non-negative integer, found string \"two\""
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let text = "[proxy]\nhttp = \"127.0.0.1:8080\"\n[services.web]\ncommand = \"x\"\nenv = { \"É\" = \"x\", \"é\" = 1 }\n";
    let found = errors(text);
    assert_eq!(found.len(), 2);
    assert!(
        found[0].starts_with("5:9: services.web.env.\"É\": invalid variable name"),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("5:20: services.web.env.\"é\": invalid variable name"),
        "{found:?}"
    );
}

#[test]
fn load_reports_an_unreadable_file() {
    let err = super::load(Path::new("/nonexistent/berth.toml")).expect_err("missing");
    assert_eq!(err.0.len(), 1);
    assert_eq!((err.0[0].line, err.0[0].col), (1, 1));
    assert!(err.0[0].message.starts_with("cannot read the config file"));
}

/// A cheap, deterministic stand-in for the fuzz target: every prefix of a full config
/// and every one-character deletion gives a spec or errors inside the text, no panic.
#[test]
fn damaged_configs_never_panic() {
    let text = EVERY_KEY;
    let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let mut variants: Vec<String> = boundaries.iter().map(|&i| text[..i].to_owned()).collect();
    for window in boundaries.windows(2) {
        variants.push(format!("{}{}", &text[..window[0]], &text[window[1]..]));
    }
    for variant in &variants {
        if let Err(errs) = parse(Path::new(FILE), variant) {
            let lines = variant.split('\n').count();
            assert!(!errs.0.is_empty());
            for e in &errs.0 {
                assert!((1..=lines).contains(&e.line) && e.col >= 1, "{e}");
            }
        }
    }
}
