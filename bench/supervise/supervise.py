#!/usr/bin/env python3
"""berth vs supervisord: time from start to all running, and idle memory of the
supervising side. Driven by ./run (which installs supervisord and builds berth);
stdlib only.

  supervise.py bench --berth BIN --workdir DIR [--runs 3] [--services 20] [--instances 2]
  supervise.py cleanup TAG      # kill every process tagged BERTH_BENCH_TAG=TAG (+ children)

Fairness: berth runs `kind = "worker"` instances (running once up for 1 s) and
supervisord runs programs with `startsecs=1` (RUNNING once up for 1 s); both run the
same program (`sleep 100000`) and both capture its output to log files.

Status polling, every 50 ms:
  berth:       `berth -c berth.toml ps --json` (the CLI, a fresh process per poll)
  supervisord: the `supervisor.getAllProcessInfo` XML-RPC call over supervisord's unix
               socket, made in-process; that is exactly the call `supervisorctl status`
               makes, without its ~0.2 s Python start-up per poll (which would
               both coarsen the measurement and load the 2 CPUs). `--supervisorctl`
               polls with the `supervisorctl status` CLI instead. Either way the final
               state is confirmed once with `supervisorctl status`.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import xmlrpc.client

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from procfs import TAG_VAR, children, read, smaps, stat_fields, tagged  # noqa: E402

POLL = 0.05
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
IDLE = 3.0
PROGRAM = ["sleep", "100000"]


# ---------------------------------------------------------------------------- /proc


def cmdline(pid):
    raw = read(f"/proc/{pid}/cmdline")
    return [] if raw is None else [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def alive(pid):
    f = stat_fields(pid)
    return f is not None and f[0] != b"Z"


def smaps_by_mapping(pid):
    """Per-mapping Private_Dirty/Pss/Rss (kB) of one process, grouped by name."""
    raw = read(f"/proc/{pid}/smaps", "r")
    groups = {}
    cur = None
    if raw is None:
        return groups
    for line in raw.splitlines():
        first = line.split(None, 1)[0]
        if "-" in first and not first.endswith(":"):
            parts = line.split(None, 5)
            perms = parts[1]
            name = parts[5].strip() if len(parts) > 5 else "[anon]"
            name = os.path.basename(name) if name.startswith("/") else name
            cur = groups.setdefault(f"{name} {perms}", {"Pss": 0, "Rss": 0, "Private_Dirty": 0})
        elif cur is not None and first.rstrip(":") in cur:
            cur[first.rstrip(":")] += int(line.split()[1])
    return groups


def kill_tree(tag, quiet=False):
    """Kill every process tagged `tag` and every child of one (berth's apps are in their
    own process groups and do not carry the tag). Children first, so none is lost to a
    reparent."""
    for _ in range(5):
        top = tagged(tag)
        if not top:
            return
        kids = [k for k in children(top) if k not in top]
        for pid in kids + top:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not quiet:
            print(f"cleanup: killed {len(kids) + len(top)} leftover process(es)", file=sys.stderr)
        time.sleep(0.2)


# ----------------------------------------------------------------------- supervisord


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def make_connection(self, host):
        return UnixHTTPConnection(self.path)


def supervisord_conf(d, services, instances):
    lines = [
        "[unix_http_server]",
        f"file={d}/supervisor.sock",
        "",
        "[supervisord]",
        f"logfile={d}/supervisord.log",
        f"pidfile={d}/supervisord.pid",
        f"childlogdir={d}/logs",
        "nodaemon=true",
        "user=root" if os.geteuid() == 0 else "",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{d}/supervisor.sock",
        "",
    ]
    for i in range(1, services + 1):
        lines += [
            f"[program:s{i:02d}]",
            f"command={' '.join(PROGRAM)}",
            f"numprocs={instances}",
            "process_name=%(program_name)s-%(process_num)d",
            "startsecs=1",
            "autostart=true",
            "autorestart=true",
            f"stdout_logfile={d}/logs/%(program_name)s-%(process_num)d.out.log",
            f"stderr_logfile={d}/logs/%(program_name)s-%(process_num)d.err.log",
            "",
        ]
    return "\n".join(lines)


def berth_conf(services, instances):
    lines = ["[berth]", 'ports = "30000-30999"', ""]
    for i in range(1, services + 1):
        lines += [
            f"[services.s{i:02d}]",
            'kind = "worker"',
            "command = " + json.dumps(PROGRAM),
            f"instances = {instances}",
            "",
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- sides


class Side:
    name = ""

    def __init__(self, args, run_dir, tag, expected):
        self.args = args
        self.dir = run_dir
        self.tag = tag
        self.expected = expected
        self.proc = None
        self.logf = None
        self.poll_costs = []

    def env(self):
        env = dict(os.environ)
        env[TAG_VAR] = self.tag
        if self.name == "berth":
            for kv in self.args.berth_env:
                k, _, v = kv.partition("=")
                env[k] = v
        return env

    def measure_start(self):
        os.makedirs(self.dir)
        self.prepare()
        self.logf = open(os.path.join(self.dir, "daemon.stderr.log"), "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.launch_argv(),
            cwd=self.dir,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches only us
        )
        deadline = t0 + START_TIMEOUT
        last = None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early ({self.proc.returncode}); see {self.logf.name}")
            p0 = time.monotonic()
            n, last = self.count_running()
            p1 = time.monotonic()
            self.poll_costs.append(p1 - p0)
            if n == self.expected:
                return p1 - t0
            if p1 > deadline:
                raise RuntimeError(f"{self.name}: {n}/{self.expected} running after {START_TIMEOUT}s: {last}")
            time.sleep(max(0.0, POLL - (time.monotonic() - p0)))

    def stop(self):
        """SIGTERM the daemon, wait for it, then check nothing of the run is left."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} was not running at the end of the run")
        apps = self.app_pids()
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"{self.name} did not exit within {STOP_TIMEOUT}s of SIGTERM")
        stop_s = time.monotonic() - t0
        # Give stragglers (e.g. shims finishing their last reply) a moment.
        left = []
        for _ in range(50):
            left = sorted(set(p for p in tagged(self.tag) + apps if alive(p)))
            if not left:
                break
            time.sleep(0.1)
        if left:
            detail = "; ".join(f"{p} {' '.join(cmdline(p))}" for p in left)
            msg = f"{self.name} exited but left {len(left)} process(es) running 5 s after: {detail}"
            if self.args.strict:
                raise RuntimeError(msg)
            print(f"WARNING: {msg}", file=sys.stderr, flush=True)
        return stop_s, left


class Berth(Side):
    name = "berth"

    def prepare(self):
        with open(os.path.join(self.dir, "berth.toml"), "w") as f:
            f.write(berth_conf(self.args.services, self.args.instances))

    def launch_argv(self):
        return [self.args.berth, "-c", "berth.toml", "up"]

    def ps(self):
        r = subprocess.run(
            [self.args.berth, "-c", "berth.toml", "ps", "--json"],
            cwd=self.dir,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        if r.returncode != 0:
            return None
        data = json.loads(r.stdout)
        if isinstance(data, dict):  # tolerate {"instances": [...]}
            data = next((v for v in data.values() if isinstance(v, list)), [])
        return data

    def count_running(self):
        try:
            inst = self.ps()
        except ValueError:
            inst = None
        if inst is None:
            return 0, "api not up"
        states = {}
        for i in inst:
            states[i.get("state")] = states.get(i.get("state"), 0) + 1
        return states.get("running", 0), states

    def app_pids(self):
        inst = self.ps() or []
        return [i["pid"] for i in inst if i.get("pid")]

    def supervising_pids(self):
        top = [p for p in tagged(self.tag) if alive(p)]
        shims = [p for p in top if "__shim" in cmdline(p)]
        others = [p for p in top if p != self.proc.pid and p not in shims]
        if others:
            raise RuntimeError(f"unexpected tagged processes: {[(p, cmdline(p)) for p in others]}")
        if len(shims) != self.expected:
            raise RuntimeError(f"expected {self.expected} shims, found {len(shims)}")
        return {"berth": [self.proc.pid], "shim": shims}


class Supervisord(Side):
    name = "supervisord"

    def prepare(self):
        os.makedirs(os.path.join(self.dir, "logs"))
        self.conf = os.path.join(self.dir, "supervisord.conf")
        with open(self.conf, "w") as f:
            f.write(supervisord_conf(self.dir, self.args.services, self.args.instances))
        self.rpc = xmlrpc.client.ServerProxy(
            "http://localhost", transport=UnixTransport(os.path.join(self.dir, "supervisor.sock"))
        )

    def launch_argv(self):
        return [self.args.supervisord, "-n", "-c", self.conf]

    def ctl_status(self):
        r = subprocess.run(
            [self.args.supervisorctl, "-c", self.conf, "status"],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        return [line.split() for line in r.stdout.splitlines() if line.strip()]

    def count_running(self):
        if self.args.supervisorctl_poll:
            rows = self.ctl_status()
            states = {}
            for row in rows:
                if len(row) >= 2:
                    states[row[1]] = states.get(row[1], 0) + 1
            return states.get("RUNNING", 0), states or "no status"
        try:
            info = self.rpc.supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Error, http.client.HTTPException) as e:
            return 0, f"rpc: {e}"
        states = {}
        for p in info:
            states[p["statename"]] = states.get(p["statename"], 0) + 1
        return states.get("RUNNING", 0), states

    def confirm(self):
        rows = self.ctl_status()
        running = sum(1 for r in rows if len(r) >= 2 and r[1] == "RUNNING")
        if running != self.expected:
            raise RuntimeError(f"supervisorctl status shows {running}/{self.expected} RUNNING")

    def app_pids(self):
        try:
            return [p["pid"] for p in self.rpc.supervisor.getAllProcessInfo() if p["pid"]]
        except Exception:
            return []

    def supervising_pids(self):
        return {"supervisord": [self.proc.pid]}


def sum_mem(pid_list, key):
    return sum(smaps(p).get(key, 0) for p in pid_list)


def one_run(side):
    t = side.measure_start()
    if isinstance(side, Supervisord):
        side.confirm()
    time.sleep(IDLE)
    n, states = side.count_running()
    if n != side.expected:
        raise RuntimeError(f"{side.name}: only {n}/{side.expected} still running after idle: {states}")
    groups = side.supervising_pids()
    allp = [p for g in groups.values() for p in g]
    res = {
        "time": t,
        "pss": sum_mem(allp, "Pss"),
        "rss": sum_mem(allp, "Rss"),
        "groups": {
            g: {k: [smaps(p).get(k, 0) for p in ps] for k in ("Pss", "Private_Dirty", "Rss", "Anonymous")}
            for g, ps in groups.items()
        },
        "polls": len(side.poll_costs),
        "poll_ms": statistics.median(side.poll_costs) * 1000,
    }
    if isinstance(side, Berth) and side.args.detail:
        res["detail"] = {"berth": smaps_by_mapping(side.proc.pid), "shim": smaps_by_mapping(groups["shim"][0])}
    res["stop"], res["left"] = side.stop()
    return res


def mib(kb):
    return f"{kb / 1024:.1f} MiB"


def bench(args):
    tag = args.tag
    expected = args.services * args.instances
    results = {"berth": [], "supervisord": []}
    load0 = (read("/proc/loadavg", "r") or "?").split()[:3]
    for r in range(args.runs):
        for cls in (Berth, Supervisord):
            side = cls(args, os.path.join(args.workdir, f"{cls.name}-{r + 1}"), tag, expected)
            try:
                res = one_run(side)
            finally:
                if side.proc is not None and side.proc.poll() is None:
                    side.proc.kill()
                kill_tree(tag)
                if side.logf:
                    side.logf.close()
            results[cls.name].append(res)
            print(
                f"run {r + 1} {cls.name:<11}  start to running {res['time']:6.3f} s"
                f"  idle PSS {mib(res['pss']):>10}  RSS {mib(res['rss']):>10}"
                f"  ({res['polls']} polls, {res['poll_ms']:.1f} ms each; stop {res['stop']:.2f} s,"
                f" {len(res['left'])} left after stop)",
                flush=True,
            )

    med = {s: {k: statistics.median(x[k] for x in results[s]) for k in ("time", "pss", "rss")} for s in results}
    b, s = med["berth"], med["supervisord"]
    print()
    load1 = (read("/proc/loadavg", "r") or "?").split()[:3]
    print(f"{expected} instances ({args.services} services x {args.instances}) of `{' '.join(PROGRAM)}`; "
          f"median of {args.runs} runs each, alternating; {os.cpu_count()} CPUs, "
          f"load average {' '.join(load0)} before, {' '.join(load1)} after")
    print(f"{'':<22}{'berth':<13}{'supervisord':<13}ratio")
    print(f"{'start to running':<22}{b['time']:.2f} s{'':<7}{s['time']:.2f} s{'':<7}{b['time'] / s['time']:.2f}x")
    print(f"{'idle PSS':<22}{mib(b['pss']):<13}{mib(s['pss']):<13}{b['pss'] / s['pss']:.2f}x")
    print(f"{'idle RSS (info)':<22}{mib(b['rss']):<13}{mib(s['rss']):<13}{b['rss'] / s['rss']:.2f}x")
    print(f"  berth = `berth up` + its {expected} shims; supervisord = its own process only; apps not counted")
    for name, rs in results.items():
        left = [len(x["left"]) for x in rs]
        if any(left):
            print(f"  NOTE: {name} left processes running after a clean SIGTERM stop in runs: {left}"
                  " (killed by the bench)")

    # Memory detail of the last berth run.
    last = results["berth"][-1]["groups"]
    print()
    print("berth memory detail (last run, kB from smaps_rollup)")
    print(f"{'':<22}{'Pss':>9}{'Priv_Dirty':>12}{'Rss':>9}{'Anon':>9}")
    for g, label in (("berth", "berth up"), ("shim", f"per shim (avg of {len(last['shim']['Pss'])})")):
        v = last[g]
        avg = {k: sum(v[k]) / len(v[k]) for k in v}
        print(f"{label:<22}{avg['Pss']:>9.0f}{avg['Private_Dirty']:>12.0f}{avg['Rss']:>9.0f}{avg['Anonymous']:>9.0f}")
    v = results["supervisord"][-1]["groups"]["supervisord"]
    print(f"{'supervisord':<22}{v['Pss'][0]:>9}{v['Private_Dirty'][0]:>12}{v['Rss'][0]:>9}{v['Anonymous'][0]:>9}")
    if "detail" in results["berth"][-1]:
        for who in ("shim", "berth"):
            d = results["berth"][-1]["detail"][who]
            top = sorted(d.items(), key=lambda kv: -kv[1]["Pss"])[:12]
            print()
            print(f"{who}: largest mappings by Pss (kB)")
            print(f"  {'mapping':<40}{'Pss':>7}{'Priv_Dirty':>12}{'Rss':>7}")
            for name, m in top:
                print(f"  {name[:40]:<40}{m['Pss']:>7}{m['Private_Dirty']:>12}{m['Rss']:>7}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "median": med}, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--berth", required=True)
    b.add_argument("--supervisord", default="supervisord")
    b.add_argument("--supervisorctl", default="supervisorctl")
    b.add_argument("--workdir", required=True)
    b.add_argument("--tag", required=True)
    b.add_argument("--runs", type=int, default=3)
    b.add_argument("--services", type=int, default=20)
    b.add_argument("--instances", type=int, default=2)
    b.add_argument("--supervisorctl-poll", action="store_true",
                   help="poll supervisord with `supervisorctl status` instead of its XML-RPC")
    b.add_argument("--detail", action="store_true", help="per-mapping memory of berth and one shim")
    b.add_argument("--json", help="write raw results here")
    b.add_argument("--berth-env", action="append", default=[], metavar="K=V",
                   help="extra environment for berth (and so its shims), e.g. MALLOC_ARENA_MAX=1")
    b.add_argument("--strict", action="store_true", help="fail if a side leaves processes after its stop")
    c = sub.add_parser("cleanup")
    c.add_argument("tag")
    args = ap.parse_args()

    if args.cmd == "cleanup":
        kill_tree(args.tag, quiet=False)
        return

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        bench(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        kill_tree(args.tag)


if __name__ == "__main__":
    main()
