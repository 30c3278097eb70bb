#!/usr/bin/env python3
"""berth's edge proxy vs nginx and haproxy as reverse proxies, in the same run,
alternating. Driven by ./run (which installs nginx, haproxy and wrk and builds berth);
stdlib only.

  proxy.py bench --berth BIN --workdir DIR [--rounds 3] [--duration 10] [--json FILE]
  proxy.py cleanup TAG      # kill every process tagged BERTH_BENCH_TAG=TAG (+ children)

Layout (2 CPUs): the proxy under test is pinned to CPU 1 (`taskset -c 1`); wrk and the
upstream are pinned to CPU 0. nginx runs `worker_processes 1`, haproxy its default
`nbthread` (= the CPUs it may use = 1), berth its own runtime (see the printed note).

The upstream is one nginx (`worker_processes 1`, `return 200 "ok\\n"`) supervised by
berth as the only instance of a web service; nginx-as-proxy and haproxy point at the
same instance port (from `berth ps --json`).

Every proxy: access log off, upstream keep-alive on, HTTP/1.1 to the upstream, the same
forwarding headers added (X-Forwarded-For/-Proto/-Host, X-Real-IP, X-Request-Id), and
TLS 1.2/1.3 with the same self-signed certificate on a second port.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from procfs import TAG_VAR, descendants, read, smaps, stat_fields, tagged  # noqa: E402

HOST = "bench.test"
PROXY_CPU = "1"
LOAD_CPU = "0"

# ---------------------------------------------------------------------------- /proc


def cpu_ticks(pid):
    """(utime, stime) of a process (all threads), in clock ticks."""
    f = stat_fields(pid)
    if f is None:
        return (0, 0)
    return (int(f[11]), int(f[12]))


def sum_ticks(pids):
    user = system = 0
    for p in pids:
        u, s = cpu_ticks(p)
        user += u
        system += s
    return user, system


def kill_tree(tag):
    for _ in range(5):
        top = tagged(tag)
        if not top:
            return
        everyone = set(top)
        for p in top:
            everyone.update(descendants(p))
        for pid in everyone:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


# ---------------------------------------------------------------------------- helpers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def http_get(port, tls=False):
    """One request through curl, to check a proxy answers 200 'ok'."""
    scheme = "https" if tls else "http"
    r = subprocess.run(
        ["curl", "-sk", "-o", "-", "-w", "%{http_code}", "-H", f"Host: {HOST}",
         f"{scheme}://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=10,
    )
    return r.stdout


def negotiated(port):
    """TLS version and cipher a default OpenSSL client gets (what wrk gets)."""
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOST],
        input="", capture_output=True, text=True, timeout=10,
    )
    m = re.search(r"New, (\S+), Cipher is (\S+)", r.stdout)
    return f"{m.group(1)} {m.group(2)}" if m else "?"


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


def parse_wrk(out):
    res = {"rps": float("nan"), "p50": float("nan"), "p99": float("nan"), "errors": 0, "non2xx": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        if m:
            res[key] = to_ms(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    return res


def spawn(argv, tag, log, cpu=None, cwd=None, env_extra=None):
    env = dict(os.environ)
    env[TAG_VAR] = tag
    if env_extra:
        env.update(env_extra)
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    return subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=env, cwd=cwd, start_new_session=True,
    )


def stop(proc, sig=signal.SIGTERM, timeout=15):
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except OSError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()


# ---------------------------------------------------------------------------- configs


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def make_cert(work):
    cert, key = f"{work}/cert.pem", f"{work}/key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", f"/CN={HOST}",
         "-addext", f"subjectAltName=DNS:{HOST}"],
        check=True, capture_output=True,
    )
    both = f"{work}/both.pem"
    write(both, read(cert, "r") + read(key, "r"))
    return cert, key, both


def nginx_http_head(d, suffix=""):
    """What both nginx configs (upstream and proxy) start with: one worker, files under
    `d` (pid and error log named with `suffix`), and the `http` block's common settings,
    left open."""
    return f"""\
daemon off;
worker_processes 1;
pid {d}/nginx{suffix}.pid;
error_log {d}/error{suffix}.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
"""


def upstream_conf(work):
    """The upstream nginx; berth's instance command fills in the port."""
    d = f"{work}/upstream"
    if os.path.exists(f"{d}/nginx.conf.in"):
        return (f"sed s/@PORT@/$PORT/g {d}/nginx.conf.in > {d}/nginx-$PORT.conf && "
                f"exec taskset -c {LOAD_CPU} nginx -p {d} -c {d}/nginx-$PORT.conf")
    os.makedirs(d, exist_ok=True)
    write(f"{d}/nginx.conf.in", nginx_http_head(d, "-@PORT@") + f"""\
    server {{
        listen 127.0.0.1:@PORT@ reuseport;
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
""")
    os.makedirs(f"{d}/tmp", exist_ok=True)
    # string command: /bin/sh -c
    return (f"sed s/@PORT@/$PORT/g {d}/nginx.conf.in > {d}/nginx-$PORT.conf && "
            f"exec taskset -c {LOAD_CPU} nginx -p {d} -c {d}/nginx-$PORT.conf")


def berth_conf(work, http, https, cert, key, tag, ports, name="berth"):
    d = f"{work}/{name}"
    os.makedirs(d, exist_ok=True)
    cmd = upstream_conf(work)
    write(f"{d}/berth.toml", f"""\
[berth]
data_dir = "{d}/data"
ports = "{ports[0]}-{ports[1]}"

[proxy]
http = "127.0.0.1:{http}"
https = "127.0.0.1:{https}"
access_log = false

[[proxy.certificates]]
cert = "{cert}"
key = "{key}"

[services.up]
command = {json.dumps(cmd)}
instances = 1
domains = ["{HOST}"]
default = true
env = {{ {TAG_VAR} = "{tag}" }}
""")
    return f"{d}/berth.toml"


FORWARD_NGINX = """\
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Request-Id $request_id;"""


def nginx_conf(work, http, https, cert, key, up_port):
    d = f"{work}/nginx"
    os.makedirs(f"{d}/tmp", exist_ok=True)
    write(f"{d}/nginx.conf", nginx_http_head(d) + f"""\
    upstream up {{
        server 127.0.0.1:{up_port};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{http};
        listen 127.0.0.1:{https} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{FORWARD_NGINX}
        }}
    }}
}}
""")
    return ["nginx", "-p", d, "-c", f"{d}/nginx.conf"]


def haproxy_conf(work, http, https, both, up_port):
    d = f"{work}/haproxy"
    os.makedirs(d, exist_ok=True)
    write(f"{d}/haproxy.cfg", f"""\
global
    maxconn 4096
    pidfile {d}/haproxy.pid
    ssl-default-bind-options ssl-min-ver TLSv1.2
    # nbthread: default (the CPUs haproxy may run on)

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive

frontend fe
    bind 127.0.0.1:{http}
    bind 127.0.0.1:{https} ssl crt {both} alpn http/1.1
    option forwardfor
    unique-id-format %{{+X}}o%ci%cp%fi%fp%Ts%rt
    unique-id-header X-Request-Id
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Real-IP %[src]
    default_backend be

backend be
    http-reuse always
    server up 127.0.0.1:{up_port}
""")
    return ["haproxy", "-db", "-f", f"{d}/haproxy.cfg"]


# ---------------------------------------------------------------------------- bench


def berth_ps(berth, conf):
    r = subprocess.run([berth, "-c", conf, "ps", "--json"], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None


def find_instances(ps):
    if isinstance(ps, dict):
        for v in ps.values():
            if isinstance(v, list):
                return v
    return ps if isinstance(ps, list) else []


def wait_upstream(berth, conf, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        ps = berth_ps(berth, conf)
        for inst in find_instances(ps) or []:
            if inst.get("state") == "running" and inst.get("port"):
                return int(inst["port"]), inst.get("pid")
        time.sleep(0.2)
    raise SystemExit(f"berth's upstream instance did not come up: {ps}")


def proxy_pids(name, proc):
    """The processes that make up one proxy: berth's own process (not its instances'
    shims or apps); nginx master + workers; haproxy."""
    if name.startswith("berth"):
        return [proc.pid]
    return [proc.pid] + descendants(proc.pid)


def run_wrk(port, tls, duration, pids_of, conns, threads, load_pids):
    scheme = "https" if tls else "http"
    url = f"{scheme}://127.0.0.1:{port}/"
    def wrk(seconds):
        return ["taskset", "-c", LOAD_CPU, "wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s",
                "--latency", "-H", f"Host: {HOST}", url]
    argv = wrk(duration)
    # warm-up: connections and pools filled, not measured
    subprocess.run(wrk(2), capture_output=True, timeout=60)
    pids = pids_of()
    user0, sys0 = sum_ticks(pids)
    load0 = sum(sum_ticks(load_pids))
    busy0 = busy_jiffies()
    t0 = time.time()
    wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wrk_ticks = (0, 0)
    peak_rss = peak_pss = 0
    while wrk.poll() is None:
        time.sleep(0.5)
        if time.time() - t0 < 1.0:
            continue
        rss = pss = 0
        for p in pids_of():
            m = smaps(p)
            rss += m.get("Rss", 0)
            pss += m.get("Pss", 0)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        wrk_ticks = cpu_ticks(wrk.pid) if wrk.poll() is None else wrk_ticks
    out = wrk.stdout.read()
    busy1 = busy_jiffies()
    load1 = sum(sum_ticks(load_pids))
    elapsed = time.time() - t0
    user1, sys1 = sum_ticks(pids_of())
    res = parse_wrk(out)
    hz = os.sysconf("SC_CLK_TCK")
    user_s, sys_s = (user1 - user0) / hz, (sys1 - sys0) / hz
    res.update(rss_kb=peak_rss, pss_kb=peak_pss, cpu=(user_s + sys_s) / elapsed)
    requests = res["rps"] * duration
    per_req = (lambda x: x * 1e6 / requests) if requests > 0 else (lambda x: float("nan"))
    res["us_req"] = per_req(user_s + sys_s)
    res["us_req_user"] = per_req(user_s)
    res["us_req_sys"] = per_req(sys_s)
    # CPU the rest of the machine used meanwhile (not the proxy, wrk or the upstream):
    # other sessions' builds and the like, which disturb the figures.
    ours = (user1 - user0) + (sys1 - sys0) + (load1 - load0) + sum(wrk_ticks)
    res["others"] = max(0.0, (busy1 - busy0 - ours) / hz / elapsed)
    res["raw"] = out
    return res


def busy_jiffies():
    """Busy time of all CPUs (user+nice+system+irq+softirq+steal), in clock ticks."""
    line = (read("/proc/stat", "r") or "cpu 0 0 0 0").splitlines()[0].split()
    f = [int(x) for x in line[1:9]]
    return f[0] + f[1] + f[2] + f[5] + f[6] + f[7]


def wait_quiet(max_wait, limit=0.15):
    """Waits (up to `max_wait` s) until the machine's other work uses less than `limit`
    of a CPU over one second. Returns the cores other work used in the last sample."""
    deadline = time.time() + max_wait
    hz = os.sysconf("SC_CLK_TCK")
    while True:
        b0 = busy_jiffies()
        time.sleep(1.0)
        others = (busy_jiffies() - b0) / hz
        if others < limit or time.time() >= deadline:
            return others
        time.sleep(1.0)


def loadavg():
    return (read("/proc/loadavg", "r") or "?").split()[0]


def fmt_row(name, r, base=None):
    return (f"  {name:<8} {r['rps']:>10.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
            f"{r['rss_kb'] / 1024:>8.1f} {r['pss_kb'] / 1024:>8.1f} {r['cpu']:>6.2f} {r['us_req']:>7.1f}"
            f"{'' if not r.get('bad') else '  errors: ' + str(r['bad'])}")


HEADER = (f"  {'proxy':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'RSS MiB':>8} {'PSS MiB':>8} {'CPU':>6} {'us/req':>7}")


def bench(args):
    tag = args.tag
    work = args.workdir
    berth = args.berth
    cert, key, both = make_cert(work)
    ports = {n: (free_port(), free_port()) for n in ("berth", "berth-b", "nginx", "haproxy")}
    base = 31000 + (os.getpid() % 2000) * 10
    conf = berth_conf(work, *ports["berth"], cert, key, tag, (base, base + 9))
    logs = open(f"{work}/procs.log", "ab")
    procs = {}
    try:
        procs["berth"] = spawn([berth, "up", "-c", conf], tag, logs, cpu=PROXY_CPU,
                               env_extra={"BERTH_LOG": "warn"})
        wait_port(ports["berth"][0])
        up_port, up_pid = wait_upstream(berth, conf)
        upstream_pids = [up_pid] + descendants(up_pid) if up_pid else []
        upstream_b = []
        if args.berth_b:
            # Another berth build for A/B runs; it supervises its own (identical) upstream.
            conf_b = berth_conf(work, *ports["berth-b"], cert, key, tag, (base + 10, base + 19),
                                name="berth-b")
            procs["berth-b"] = spawn([args.berth_b, "up", "-c", conf_b], tag, logs,
                                     cpu=PROXY_CPU, env_extra={"BERTH_LOG": "warn"})
            wait_port(ports["berth-b"][0])
            _, up_pid_b = wait_upstream(args.berth_b, conf_b)
            upstream_b = [up_pid_b] + descendants(up_pid_b) if up_pid_b else []
        procs["nginx"] = spawn(nginx_conf(work, *ports["nginx"], cert, key, up_port), tag, logs,
                               cpu=PROXY_CPU)
        procs["haproxy"] = spawn(haproxy_conf(work, *ports["haproxy"], both, up_port), tag, logs,
                                 cpu=PROXY_CPU)
        for name in procs:
            for p in ports[name]:
                wait_port(p)
        for name in procs:
            for i, tls in enumerate((False, True)):
                got = http_get(ports[name][i], tls)
                if got != "ok\n200":
                    raise SystemExit(f"{name} ({'https' if tls else 'http'}) answered {got!r}")
        print(f"upstream: nginx (worker_processes 1) on 127.0.0.1:{up_port}, pid {up_pid}, "
              f"supervised by berth, CPU {LOAD_CPU}", flush=True)
        for name in ("berth", "berth-b"):
            if name in procs:
                threads = len(os.listdir(f"/proc/{procs[name].pid}/task"))
                print(f"{name + ':':<9} pid {procs[name].pid}, {threads} threads, CPU {PROXY_CPU}",
                      flush=True)
        for name in ("nginx", "haproxy"):
            print(f"{name + ':':<9} {len(proxy_pids(name, procs[name]))} process(es), CPU {PROXY_CPU}",
                  flush=True)
        for name in procs:
            print(f"TLS {name:<8} {negotiated(ports[name][1])}", flush=True)
        print(f"wrk: -t{args.threads} -c{args.connections} -d{args.duration}s --latency, "
              f"CPU {LOAD_CPU}; 2 s warm-up before each run; load average now {loadavg()}",
              flush=True)

        order = [n for n in ("berth", "berth-b", "nginx", "haproxy") if n in args.only and n in procs]
        results = {n: {"plain": [], "tls": []} for n in order}
        for rnd in range(args.rounds):
            rot = order[rnd % len(order):] + order[: rnd % len(order)]
            for mode in ("plain", "tls"):
                for name in rot:
                    port = ports[name][0 if mode == "plain" else 1]
                    quiet = wait_quiet(args.quiet_wait) if args.quiet_wait > 0 else None
                    r = run_wrk(port, mode == "tls", args.duration,
                                lambda n=name: proxy_pids(n, procs[n]),
                                args.connections, args.threads,
                                upstream_b if name == "berth-b" else upstream_pids)
                    r["quiet_before"] = quiet
                    r["bad"] = r["errors"] + r["non2xx"]
                    r["load"] = loadavg()
                    results[name][mode].append(r)
                    print(f"round {rnd + 1} {mode:<5} {fmt_row(name, r).strip()}  "
                          f"(user {r['us_req_user']:.1f} + sys {r['us_req_sys']:.1f} us/req; "
                          f"other work {r['others']:.2f} CPU; load {r['load']})", flush=True)
                    if args.verbose:
                        print(r["raw"])
        return report(results, args)
    finally:
        for name in ("nginx", "haproxy"):
            if name in procs:
                stop(procs[name], signal.SIGTERM if name == "haproxy" else signal.SIGQUIT)
        for name in ("berth", "berth-b"):
            if name in procs:
                stop(procs[name], signal.SIGINT, timeout=30)
        logs.close()


def median(rs, key):
    return statistics.median(r[key] for r in rs)


def report(results, args):
    summary = {}
    print()
    print(f"medians of {args.rounds} rounds ({args.duration} s each); memory = peak under load "
          f"(nginx/haproxy: master + workers summed; berth: its own process); CPU = cores the proxy "
          f"used; us/req = proxy CPU time per request (microseconds)")
    ok_all = True
    for mode in ("plain", "tls"):
        print(f"\n{'HTTP' if mode == 'plain' else 'HTTPS (TLS termination)'}")
        print(HEADER)
        med = {}
        for name, modes in results.items():
            rs = modes[mode]
            med[name] = {k: median(rs, k)
                         for k in ("rps", "p50", "p99", "rss_kb", "pss_kb", "cpu", "us_req")}
            med[name]["bad"] = sum(r["bad"] for r in rs)
            print(fmt_row(name, med[name]))
        summary[mode] = med
        if not all(n in med for n in ("berth", "nginx", "haproxy")):
            continue
        b, n, h = med["berth"], med["nginx"], med["haproxy"]
        # Paired within each round (the three ran within a minute of each other), so that
        # slow swings of the machine's other work cancel out.
        pairs = list(zip(results["berth"][mode], results["nginx"][mode], results["haproxy"][mode]))
        r_n = statistics.median(rb["rps"] / rn["rps"] for rb, rn, _ in pairs)
        r_h = statistics.median(rb["rps"] / rh["rps"] for rb, _, rh in pairs)
        p99_best = statistics.median(rb["p99"] / min(rn["p99"], rh["p99"]) for rb, rn, rh in pairs)
        others = statistics.median(r["others"] for rs in pairs for r in rs)
        print(f"  per-round ratios (median): req/s berth/nginx {r_n:.2f}x, berth/haproxy "
              f"{r_h:.2f}x; p99 berth/best {p99_best:.2f}x; other work on the machine "
              f"{others:.2f} CPU (median over runs)")
        checks = [
            (f"req/s  berth/nginx   {b['rps'] / n['rps']:.2f}x  (target >= 1.20)", b["rps"] >= 1.2 * n["rps"]),
            (f"req/s  berth/haproxy {b['rps'] / h['rps']:.2f}x  (target >= 1.00)", b["rps"] >= h["rps"]),
            (f"p99    berth {b['p99']:.2f} ms vs best {min(n['p99'], h['p99']):.2f} ms  (target <=)",
             b["p99"] <= min(n["p99"], h["p99"])),
            (f"RSS    berth {b['rss_kb'] / 1024:.1f} MiB vs nginx+haproxy "
             f"{(n['rss_kb'] + h['rss_kb']) / 1024:.1f} MiB  (target <=)",
             b["rss_kb"] <= n["rss_kb"] + h["rss_kb"]),
            (f"PSS    berth {b['pss_kb'] / 1024:.1f} MiB vs nginx+haproxy "
             f"{(n['pss_kb'] + h['pss_kb']) / 1024:.1f} MiB  (target <=)",
             b["pss_kb"] <= n["pss_kb"] + h["pss_kb"]),
        ]
        for text, ok in checks:
            ok_all &= ok
            print(f"  {'PASS' if ok else 'MISS'}  {text}")
        summary[mode]["checks"] = [{"check": t, "ok": ok} for t, ok in checks]
    if args.json:
        for modes in results.values():
            for rs in modes.values():
                for r in rs:
                    r.pop("raw", None)
        with open(args.json, "w") as f:
            json.dump({"rounds": results, "medians": summary}, f, indent=2)
    return 0 if ok_all or not args.strict else 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--berth", required=True)
    b.add_argument("--berth-b", help="a second berth build, measured as berth-b (A/B)")
    b.add_argument("--workdir", required=True)
    b.add_argument("--tag", required=True)
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--duration", type=int, default=10)
    b.add_argument("--connections", type=int, default=50)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--only", default="berth,nginx,haproxy")
    b.add_argument("--json")
    b.add_argument("--quiet-wait", type=float, default=60,
                   help="before each run, wait up to this many seconds for other work on "
                        "the machine to use < 0.15 CPU (0: don't wait)")
    b.add_argument("--strict", action="store_true")
    b.add_argument("--verbose", action="store_true")
    c = sub.add_parser("cleanup")
    c.add_argument("tag")
    args = ap.parse_args()
    if args.cmd == "cleanup":
        kill_tree(args.tag)
        return 0
    args.only = args.only.split(",")
    if args.berth_b and "berth-b" not in args.only:
        args.only.insert(1, "berth-b")
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
