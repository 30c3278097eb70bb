"""/proc helpers shared by the benchmark scripts: find the processes a run started (by
an environment tag), walk their trees, read their memory and CPU counters."""

import os

# Every process a benchmark starts carries TAG_VAR=<run tag> in its environment, so that
# cleanup finds it (and what it started) even after a crash of the script.
TAG_VAR = "BERTH_BENCH_TAG"


def read(path, mode="rb"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def pids():
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def stat_fields(pid):
    """The fields of /proc/PID/stat after `(comm)` (comm may hold spaces and
    parentheses), from `state` on; None when the process is gone."""
    stat = read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def ppid(pid):
    f = stat_fields(pid)
    return None if f is None else int(f[1])


def tagged(tag):
    """The processes whose environment has TAG_VAR=tag (this script excluded)."""
    needle = f"{TAG_VAR}={tag}".encode() + b"\0"
    me = os.getpid()
    out = []
    for pid in pids():
        if pid == me:
            continue
        env = read(f"/proc/{pid}/environ")
        if env and needle in env + b"\0":
            out.append(pid)
    return out


def children(parents):
    parents = set(parents)
    return [p for p in pids() if ppid(p) in parents]


def descendants(root):
    out, frontier = [], [root]
    while frontier:
        kids = children(frontier)
        out += kids
        frontier = kids
    return out


def smaps(pid):
    """kB values from smaps_rollup: Pss, Rss, Private_Dirty, ..."""
    raw = read(f"/proc/{pid}/smaps_rollup", "r")
    out = {}
    if raw is None:
        return out
    for line in raw.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1])
    return out
