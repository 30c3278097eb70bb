#!/usr/bin/env python3
"""Helper of bench/deploy/run (python3 stdlib only). See `run` for what is measured.

    deploy.py ports N                      print a free proxy port and a free base of N ports
    deploy.py wait-running BERTH CONF N    wait until N instances are running
    deploy.py bench --berth B --config C --url U --work W [--runs N] [--json F]
    deploy.py cleanup [--grace S] WORKDIR  kill every process whose executable is under WORKDIR
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
import threading
import time
import http.client
import urllib.parse
from datetime import datetime

# Fixed wrk durations (seconds) per step; each step starts WARMUP s after wrk and must end
# at least TAIL s before wrk does, or the step is reported as not covered (FAIL).
WARMUP = 1.0
TAIL = 0.5
WRK_DURATION = {"deploy": 5, "restart": 8, "failed": 10}
TARGET_OVERHEAD_MS = 300.0


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --- ports ---------------------------------------------------------------------------

def port_free(p):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()


def cmd_ports(n):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    proxy = s.getsockname()[1]
    s.close()
    import random
    for _ in range(200):
        base = random.randrange(30000, 60000 - n)
        if base <= proxy < base + n:
            continue
        if all(port_free(p) for p in range(base, base + n)):
            print(proxy, base, base + n - 1)
            return
    sys.exit("no free port range found")


# --- berth CLI -------------------------------------------------------------------------

class Berth:
    def __init__(self, bin_, conf):
        self.bin, self.conf = bin_, conf

    def run(self, *args, check=True, timeout=120):
        p = subprocess.run([self.bin, "-c", self.conf, *args], capture_output=True,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"berth {' '.join(args)} exited {p.returncode}: "
                               f"{p.stdout}{p.stderr}")
        return p

    def ps(self):
        return json.loads(self.run("ps", "--json").stdout)["instances"]

    def events(self, n=500):
        out = self.run("events", "--json", "-n", str(n)).stdout
        return [json.loads(l) for l in out.splitlines() if l.strip()]

    def last_seq(self):
        ev = self.events(1)
        return ev[-1]["seq"] if ev else 0

    def events_after(self, seq):
        return [e for e in self.events(500) if e["seq"] > seq]


def wait_running(berth, n, timeout=30.0, exclude_ids=(), release=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            inst = berth.ps()
        except Exception:
            inst = []
        run = [i for i in inst if i["state"] == "running" and i["id"] not in exclude_ids
               and (release is None or i["release"] == release)]
        if len(run) == n and len(inst) == n:
            return inst
        time.sleep(0.05)
    raise RuntimeError(f"instances not all running after {timeout}s: {inst}")


def ts(rfc3339):
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


# --- polling client ----------------------------------------------------------------------

class Poller(threading.Thread):
    """GET / through the proxy every `period` s on a keep-alive connection (reconnects
    after any error); records (sent, received, status or None, version or error)."""

    def __init__(self, url, period=0.002):
        super().__init__(daemon=True)
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.period = period
        self.records = []
        self.stop_flag = threading.Event()

    def run(self):
        conn = None
        while not self.stop_flag.is_set():
            t_send = time.time()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/")
                r = conn.getresponse()
                body = r.read().decode(errors="replace")
                m = re.search(r"version=(\S*)", body)
                self.records.append((t_send, time.time(), r.status,
                                     m.group(1) if m else body.strip()))
            except Exception as e:  # noqa: BLE001 - every failure is a data point
                self.records.append((t_send, time.time(), None, f"{type(e).__name__}: {e}"))
                try:
                    conn.close()
                except Exception:
                    pass
                conn = None
            self.stop_flag.wait(self.period)
        if conn is not None:
            conn.close()

    def stop(self):
        self.stop_flag.set()
        self.join()

    def failures(self):
        return [r for r in self.records if r[2] is None or not 200 <= r[2] < 400]


# --- wrk -------------------------------------------------------------------------------

LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "versions.lua")


class Wrk:
    """wrk -t2 -c20 -dN --latency with versions.lua: `version` is the version counted as
    new (deploy) or expected (restart, failed deploy)."""

    def __init__(self, url, duration, version):
        self.duration = duration
        self.t_start = time.time()
        self.p = subprocess.Popen(
            ["wrk", "-t2", "-c20", f"-d{duration}s", "--latency", "-s", LUA, url, "--",
             version],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self):
        out, _ = self.p.communicate(timeout=self.duration + 30)
        self.t_end = time.time()
        if self.p.returncode != 0:
            raise RuntimeError(f"wrk exited {self.p.returncode}: {out}")
        req = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
        b = re.search(r"BENCH last_other=([\d.]+) new=(\d+) other=(\d+) non200=(\d+) "
                      r"others=(\S*)", out)
        if not b:
            raise RuntimeError(f"no BENCH line from versions.lua in wrk's output: {out}")
        res = {
            "requests": int(req.group(1)),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket": dict(zip(["connect", "read", "write", "timeout"],
                               map(int, sock.groups()))) if sock else
                      {"connect": 0, "read": 0, "write": 0, "timeout": 0},
            "p99": p99.group(1) if p99 else "?",
            "last_other": float(b.group(1)),
            "n_version": int(b.group(2)),
            "n_other": int(b.group(3)),
            "others": [v for v in b.group(5).split(",") if v],
            "output": out,
        }
        res["failed"] = res["non2xx"] + sum(res["socket"].values())
        return res

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def covered(wrk, t_step_start, t_step_end):
    return t_step_start >= wrk.t_start and t_step_end + TAIL <= wrk.t_start + wrk.duration


# --- steps -----------------------------------------------------------------------------

def make_release(work, name, version, health_status=None):
    d = os.path.join(work, "releases-src", name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "VERSION"), "w") as f:
        f.write(version + "\n")
    if health_status is not None:
        with open(os.path.join(d, "HEALTH_STATUS"), "w") as f:
            f.write(f"{health_status}\n")
    return d


def current_version(url):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    c.request("GET", "/")
    body = c.getresponse().read().decode()
    c.close()
    return re.search(r"version=(\S*)", body).group(1)


def step_deploy(berth, url, work, run_no, wrks):
    old = current_version(url)
    new = f"deploy{run_no}"
    src = make_release(work, new, new)
    before = berth.ps()
    seq0 = berth.last_seq()
    poller = Poller(url)
    wrk = Wrk(url, WRK_DURATION["deploy"], new)
    wrks.append(wrk)
    poller.start()
    time.sleep(WARMUP)
    t0 = time.time()
    p = berth.run("deploy", "web", "--dir", src, check=False)
    t1 = time.time()
    time.sleep(0.5)
    poller.stop()
    w = wrk.result()
    if p.returncode != 0:
        raise RuntimeError(f"deploy {new} failed ({p.returncode}): {p.stdout}{p.stderr}")
    ev = berth.events_after(seq0)

    # The moment after which no client saw the old version: the last response from the
    # old version, from wrk (thousands of samples per second over 20 connections) or the
    # poller, whichever is later. Responses from any third version fail the step.
    ok = [r for r in poller.records if r[2] == 200]
    poll_old = [r for r in ok if r[3] != new]
    if not poll_old or not w["n_other"]:
        raise RuntimeError("no old-version response seen: the deploy did not run under load")
    if not ok or ok[-1][3] != new or not w["n_version"]:
        raise RuntimeError("the new version never answered alone")
    last_old = max(w["last_other"], poll_old[-1][1])
    others = sorted(({r[3] for r in ok} | set(w["others"])) - {old, new})
    # Events: the app's own started -> healthy for each new instance; the last one to turn
    # healthy is the one the switch waited for.
    started, healthy = {}, {}
    for e in ev:
        if e["kind"] == "instance.started":
            started.setdefault(e["instance"], ts(e["time"]))
        elif e["kind"] in ("instance.healthy", "instance.running") and e["instance"] in started:
            healthy.setdefault(e["instance"], ts(e["time"]))
    if not healthy:
        raise RuntimeError(f"no healthy event for new instances: {ev}")
    last_inst = max(healthy, key=healthy.get)
    tth = healthy[last_inst] - started[last_inst]
    kinds = {e["kind"]: ts(e["time"]) for e in ev if e["instance"] is None}
    total = last_old - t0
    res = {
        "run": run_no, "old": old, "new": new,
        "total_ms": total * 1000,
        "app_healthy_ms": tth * 1000,
        "overhead_ms": (total - tth) * 1000,
        "last_old_wrk_ms": (w["last_other"] - t0) * 1000,
        "last_old_poller_ms": (poll_old[-1][1] - t0) * 1000,
        "deploy_cmd_ms": (t1 - t0) * 1000,
        "per_instance_healthy_ms": {i: round((healthy[i] - started[i]) * 1000, 1) for i in healthy},
        # Breakdown of total along the instance the switch waited for: CLI and API up to
        # deploy.started; launch (shim + app spawn) up to its instance.started; the app's
        # started -> healthy; then until the last old response.
        "cli_ms": (kinds.get("deploy.started", t0) - t0) * 1000,
        "launch_ms": (started[last_inst] - kinds.get("deploy.started", t0)) * 1000,
        "switch_ms": (last_old - healthy[last_inst]) * 1000,
        "poll_median_latency_ms": statistics.median(r[1] - r[0] for r in ok) * 1000,
        "poll_requests": len(poller.records),
        "poll_failures": len(poller.failures()),
        "unexpected_versions": others,
        "wrk": w,
        "covered": covered(wrk, t0, t1),
        "old_instances": [i["id"] for i in before],
    }
    log(f"  deploy run {run_no}: {old} -> {new}: last old response {res['total_ms']:.0f} ms "
        f"after `berth deploy` (wrk {res['last_old_wrk_ms']:.0f}, poller "
        f"{res['last_old_poller_ms']:.0f}); app started->healthy {res['app_healthy_ms']:.0f} ms "
        f"({last_inst}; all: {res['per_instance_healthy_ms']}); overhead "
        f"{res['overhead_ms']:.0f} ms = cli {res['cli_ms']:.0f} + launch {res['launch_ms']:.0f} "
        f"+ healthy->last old {res['switch_ms']:.0f}; deploy command {res['deploy_cmd_ms']:.0f} "
        f"ms; wrk {w['requests']} req, {w['failed']} failed, p99 {w['p99']}; poller "
        f"{res['poll_requests']} req ({res['poll_median_latency_ms']:.1f} ms), "
        f"{res['poll_failures']} failed")
    return res


def step_restart(berth, url, wrks):
    version = current_version(url)
    before = {i["id"] for i in berth.ps()}
    seq0 = berth.last_seq()
    poller = Poller(url, period=0.005)
    wrk = Wrk(url, WRK_DURATION["restart"], version)
    wrks.append(wrk)
    poller.start()
    time.sleep(WARMUP)
    t0 = time.time()
    berth.run("restart", "web")
    outcome = None
    while time.time() - t0 < 60:
        for e in berth.events_after(seq0):
            if e["kind"] in ("deploy.succeeded", "deploy.failed") and e["service"] == "web":
                outcome = e
        if outcome:
            break
        time.sleep(0.05)
    wait_running(berth, len(before), timeout=30, exclude_ids=before)
    t1 = time.time()
    time.sleep(0.5)
    poller.stop()
    w = wrk.result()
    versions = {r[3] for r in poller.records if r[2] == 200} | set(w["others"])
    res = {
        "outcome": outcome["kind"] if outcome else "timeout",
        "message": outcome["message"] if outcome else "",
        "duration_ms": (t1 - t0) * 1000,
        "wrk": w, "covered": covered(wrk, t0, t1),
        "poll_requests": len(poller.records), "poll_failures": len(poller.failures()),
        "unexpected_versions": sorted(versions - {version}),
    }
    log(f"  restart: {res['outcome']} after {res['duration_ms']:.0f} ms ({res['message']}); "
        f"wrk {w['requests']} req, {w['failed']} failed, p99 {w['p99']}; poller "
        f"{res['poll_requests']} req, {res['poll_failures']} failed")
    return res


def live_release(berth):
    rels = json.loads(berth.run("releases", "web", "--json").stdout)["releases"]
    return [r["version"] for r in rels if r["status"] == "live"]


def step_failed(berth, url, work, wrks):
    version = current_version(url)
    live_before = live_release(berth)
    n = len(berth.ps())
    src = make_release(work, "unhealthy", "unhealthy", health_status=503)
    poller = Poller(url, period=0.005)
    wrk = Wrk(url, WRK_DURATION["failed"], version)
    wrks.append(wrk)
    poller.start()
    time.sleep(WARMUP)
    t0 = time.time()
    p = berth.run("deploy", "web", "--dir", src, check=False, timeout=120)
    inst = wait_running(berth, n, timeout=30)
    t1 = time.time()
    time.sleep(0.5)
    poller.stop()
    w = wrk.result()
    versions = {r[3] for r in poller.records if r[2] == 200} | set(w["others"])
    reason = (p.stdout + p.stderr).strip().splitlines()
    res = {
        "exit": p.returncode,
        "reason": reason[-1] if reason else "",
        "duration_ms": (t1 - t0) * 1000,
        "releases_after": sorted({i["release"] for i in inst}),
        "live_before": live_before,
        "live_after": live_release(berth),
        "wrk": w, "covered": covered(wrk, t0, t1),
        "poll_requests": len(poller.records), "poll_failures": len(poller.failures()),
        "unexpected_versions": sorted(versions - {version}),
    }
    log(f"  failed deploy: exit {p.returncode} after {res['duration_ms']:.0f} ms: {res['reason']}; "
        f"live release {res['live_before']} -> {res['live_after']}, instances on "
        f"{res['releases_after']}; wrk {w['requests']} req, {w['failed']} "
        f"failed, p99 {w['p99']}; poller {res['poll_requests']} req, "
        f"{res['poll_failures']} failed; versions seen other than {version}: "
        f"{res['unexpected_versions']}")
    return res


def app_own_healthy(app_bin, work):
    """How long the app takes, on its own, from spawn to a 200 on /healthz
    (1 ms polling, no berth): the app's intrinsic time-to-healthy."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    d = make_release(work, "probe", "probe")
    out = []
    for _ in range(5):
        t0 = time.time()
        p = subprocess.Popen([app_bin], cwd=d, env={**os.environ, "PORT": str(port)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while time.time() - t0 < 5:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                    c.request("GET", "/healthz")
                    if c.getresponse().status == 200:
                        out.append((time.time() - t0) * 1000)
                        break
                except OSError:
                    time.sleep(0.001)
        finally:
            p.kill()
            p.wait()
    return statistics.median(out) if out else float("nan")


def fmt_fail(res):
    w = res["wrk"]
    s = w["socket"]
    return (f"{w['failed']} of {w['requests']} (non-2xx {w['non2xx']}, connect {s['connect']}, "
            f"read {s['read']}, write {s['write']}, timeout {s['timeout']}); poller "
            f"{res['poll_failures']} of {res['poll_requests']}")


def cmd_bench(a):
    berth = Berth(a.berth, a.config)
    wrks = []
    try:
        app_ms = app_own_healthy(a.app, a.work)
        log(f"app alone: spawn -> 200 on /healthz in {app_ms:.1f} ms (median of 5)")
        log(f"step 1 + 2a: {a.runs} deploys under wrk -t2 -c20 -d{WRK_DURATION['deploy']}s")
        deploys = [step_deploy(berth, a.url, a.work, i + 1, wrks) for i in range(a.runs)]
        log(f"step 2b: restart under wrk -t2 -c20 -d{WRK_DURATION['restart']}s")
        restart = step_restart(berth, a.url, wrks)
        log(f"step 2c: failed deploy (HEALTH_STATUS=503) under wrk -t2 -c20 "
            f"-d{WRK_DURATION['failed']}s")
        failed = step_failed(berth, a.url, a.work, wrks)
    finally:
        for w in wrks:
            w.kill()

    med = lambda k: statistics.median(d[k] for d in deploys)  # noqa: E731
    mn = lambda k: min(d[k] for d in deploys)  # noqa: E731
    rows = []
    ov_med = med("overhead_ms")
    rows.append(("deploy -> last old-version response",
                 f"{mn('total_ms'):.0f} / {med('total_ms'):.0f} ms", "-", "info"))
    rows.append(("app started -> healthy (events)",
                 f"{mn('app_healthy_ms'):.0f} / {med('app_healthy_ms'):.0f} ms", "-", "info"))
    rows.append(("berth overhead (total - healthy)",
                 f"{mn('overhead_ms'):.0f} / {ov_med:.0f} ms", f"< {TARGET_OVERHEAD_MS:.0f} ms",
                 "PASS" if ov_med < TARGET_OVERHEAD_MS else "FAIL"))
    dep_failed = sum(d["wrk"]["failed"] + d["poll_failures"] for d in deploys)
    dep_req = sum(d["wrk"]["requests"] for d in deploys)
    dep_ok = (dep_failed == 0 and all(d["covered"] for d in deploys)
              and not any(d["unexpected_versions"] for d in deploys))
    rows.append((f"failed requests: deploy (x{a.runs})",
                 f"{dep_failed} of {dep_req}", "0", "PASS" if dep_ok else "FAIL"))
    r_failed = restart["wrk"]["failed"] + restart["poll_failures"]
    r_ok = (r_failed == 0 and restart["covered"] and restart["outcome"] == "deploy.succeeded"
            and not restart["unexpected_versions"])
    rows.append(("failed requests: restart", f"{r_failed} of {restart['wrk']['requests']}",
                 "0", "PASS" if r_ok else "FAIL"))
    f_failed = failed["wrk"]["failed"] + failed["poll_failures"]
    f_ok = (f_failed == 0 and failed["covered"] and failed["exit"] == 1
            and failed["live_after"] == failed["live_before"]
            and not failed["unexpected_versions"])
    rows.append(("failed requests: failed deploy", f"{f_failed} of {failed['wrk']['requests']}",
                 "0", "PASS" if f_ok else "FAIL"))

    print()
    print(f"berth deploy benchmark ({a.runs} deploy runs; min / median; wrk -t2 -c20; "
          f"health interval 250ms, surge 2, 2 instances)")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'metric':<{w0}}  {'measured':<{w1}}  {'target':<8}  result")
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]:<8}  {r[3]}")
    print()
    print(f"per deploy run (ms): " + "; ".join(
        f"#{d['run']} total {d['total_ms']:.0f}, healthy {d['app_healthy_ms']:.0f}, "
        f"overhead {d['overhead_ms']:.0f} (cli {d['cli_ms']:.0f} + launch {d['launch_ms']:.0f} "
        f"+ healthy->last old {d['switch_ms']:.0f}), deploy command {d['deploy_cmd_ms']:.0f}"
        for d in deploys))
    print(f"app alone, spawn -> healthy: {app_ms:.1f} ms")
    print(f"deploy   wrk: {'; '.join(fmt_fail(d) for d in deploys)}")
    print(f"restart  wrk: {fmt_fail(restart)}; {restart['outcome']} in "
          f"{restart['duration_ms']:.0f} ms")
    print(f"failed   wrk: {fmt_fail(failed)}; deploy exit {failed['exit']} in "
          f"{failed['duration_ms']:.0f} ms: {failed['reason']}")
    for name, res in [*((f"deploy {d['run']}", d) for d in deploys), ("restart", restart),
                      ("failed deploy", failed)]:
        if not res["covered"]:
            print(f"WARNING: {name}: wrk ({res['wrk']}) did not cover the whole step")
        if res["unexpected_versions"]:
            print(f"WARNING: {name}: unexpected versions answered: {res['unexpected_versions']}")
    if a.json:
        for d in (*deploys, restart, failed):
            d["wrk"].pop("output", None)
        with open(a.json, "w") as f:
            json.dump({"deploys": deploys, "restart": restart, "failed": failed,
                       "app_alone_ms": app_ms, "table": rows}, f, indent=2)
    return 0 if all(r[3] != "FAIL" for r in rows) else 1


# --- cleanup ---------------------------------------------------------------------------

def procs_under(work):
    work = os.path.realpath(work) + "/"
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if exe.startswith(work):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = exe
            found.append((int(pid), cmd))
    return found


def cmd_cleanup(work, grace):
    """After berth exited: waits `grace` s for its shims to exit by themselves, then
    reports and kills whatever is left (by pid), SIGTERM then SIGKILL."""
    deadline = time.time() + grace
    while time.time() < deadline and procs_under(work):
        time.sleep(0.05)
    left = procs_under(work)
    if left:
        log(f"cleanup: {len(left)} process(es) still running {grace:g} s after berth exited "
            f"(berth left them behind): " + "; ".join(f"pid {p} {c}" for p, c in left))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not left:
            break
        for pid, exe in left:
            log(f"cleanup: {sig.name} pid {pid} ({exe})")
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 3
        while time.time() < deadline and procs_under(work):
            time.sleep(0.05)
        left = procs_under(work)
    if left:
        log(f"cleanup: processes still left: {left}")
        return 1
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ports")
    p.add_argument("n", type=int)
    p = sub.add_parser("wait-running")
    p.add_argument("berth")
    p.add_argument("config")
    p.add_argument("n", type=int)
    p = sub.add_parser("bench")
    p.add_argument("--berth", required=True)
    p.add_argument("--app", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json")
    p = sub.add_parser("cleanup")
    p.add_argument("work")
    p.add_argument("--grace", type=float, default=0.0)
    a = ap.parse_args()
    if a.cmd == "ports":
        cmd_ports(a.n)
    elif a.cmd == "wait-running":
        wait_running(Berth(a.berth, a.config), a.n, timeout=30)
    elif a.cmd == "bench":
        sys.exit(cmd_bench(a))
    elif a.cmd == "cleanup":
        sys.exit(cmd_cleanup(a.work, a.grace))


if __name__ == "__main__":
    main()
