"""bench/proxy_bench.py: the proxy table of bench/run (issue 16).

samples/crest-proxy (--threads 1, one backend) against HAProxy (Debian's
haproxy 2.6, mode tcp, nbthread 1), each in front of the same crest-echo
backend, in the same run:

    load    samples/crest-bench -c100 -s64 -P1 (raw echo) through the proxy
            for a fixed duration: msgs/s, p50/p99, and the proxy's CPU
    setup   bench/tools/connect_rtt.c: one new connection at a time, the
            time from connect() to the first echoed byte of 16 bytes;
            HAProxy, crest-proxy cold (a backend connect per client) and
            crest-proxy --warm N (pooled warm backend connections)

CPUs (two here): the proxy alone on one, client and backend on the other,
so the proxy's own CPU decides what it can carry.  Each round starts one
crest-echo backend, then every proxy in turn (the order rotates each
round), each started fresh and stopped by its PID; ratios are paired
(crest-proxy over HAProxy in the same round), medians over rounds.

Proxy CPU: the sum of its threads' sum_exec_runtime
(/proc/PID/task/TID/schedstat, HAProxy's master and worker both) over a
window inside crest-bench's measured period, over the window's wall time:
the proxy's utilisation u.  CPU per message = u / (msgs/s); msgs/s per
core = (msgs/s) / u, what the proxy would carry with a whole core.

Imported by bench/run, which passes itself as R (free_port, note_cmd, say,
median, system_cpu, LOGDIR, CREST_ECHO, CREST_BENCH ...).
`bench/run --only proxy` writes its block between the proxy markers of
docs/performance.md and leaves the rest of the page alone; the full run
puts the same block in the page."""

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import http_bench as H   # cpus, pinned, pid_cpu, tree_pids, wait_connect, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"
BEGIN = "<!-- proxy:begin (bench/run --only proxy writes this) -->"
END = "<!-- proxy:end -->"

LOAD = ["haproxy", "crest"]                      # the load runs
SETUP = ["haproxy", "crest", "crest-warm"]       # the connection-setup runs
LABEL = {"haproxy": "HAProxy 2.6 (mode tcp, nbthread 1)",
         "crest": "crest-proxy (--threads 1)",
         "crest-warm": "crest-proxy --warm {warm}"}
# other jobs' CPU (cores) under which a round counts as quiet
QUIET = 0.2

# HAProxy as its documentation and its authors advise for a plain TCP
# relay; every choice is explained in section() below.
HAPROXY_CONF = """\
# The HAProxy anchor of bench/run's proxy table (bench/proxy_bench.py).
global
    nbthread 1
    pidfile {dir}/haproxy.pid
    # 2 fds per client: 4096 clients fit the 20,000-fd hard limit here
    maxconn 4096
    # no log lines: nothing goes to syslog
defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend fe
    bind {host}:{port}
    default_backend be
backend be
    server echo {host}:{bport}
"""


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


class Proc:
    """A process we started, stopped by its own PID only; its CPU is that
    of itself and its children (HAProxy's worker)."""

    def __init__(self, name, argv, log, port, settle_children=False):
        self.name, self.argv, self.port = name, argv, port
        self.log = open(log, "w")
        self.logpath = log
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        self.pid = self.p.pid
        if not H.wait_connect(port, self.p):
            self.stop()
            raise RuntimeError(f"{name} is not listening on {port}; see {log}")
        self.pids = H.tree_pids(self.pid)
        # HAProxy's master forks its worker before the worker listens:
        # it is there by now, but look a little in case
        for _ in range(200):
            if not settle_children or len(self.pids) > 1:
                break
            time.sleep(0.01)
            self.pids = H.tree_pids(self.pid)

    def cpu(self):
        return sum(H.pid_cpu(p) for p in self.pids)

    def stop(self, timeout=20):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()
        return self.p.returncode


def haproxy_argv(tmpdir):
    # -W: master-worker (as systemd runs it, -Ws), which writes the pid
    # file; -db: stay in the foreground, so that we stop it by its PID
    return ["haproxy", "-W", "-db", "-f", os.path.join(tmpdir, "haproxy.cfg")]


def start_haproxy(port, bport, tmpdir, cpu):
    os.makedirs(tmpdir, exist_ok=True)
    with open(os.path.join(tmpdir, "haproxy.cfg"), "w") as f:
        f.write(HAPROXY_CONF.format(dir=tmpdir, host=HOST, port=port, bport=bport))
    srv = Proc("haproxy", H.pinned(cpu, haproxy_argv(tmpdir)),
               os.path.join(tmpdir, "haproxy.log"), port, settle_children=True)
    try:
        with open(os.path.join(tmpdir, "haproxy.pid")) as f:
            pidfile = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pidfile = None
    if pidfile != srv.pid:
        srv.stop()
        raise RuntimeError(f"haproxy's pid file says {pidfile}, we started {srv.pid}")
    return srv


def crest_proxy_binary():
    """samples/crest-proxy's real binary (libtool puts it in .libs)."""
    path = os.path.join(ROOT, "samples/.libs/crest-proxy")
    return path if os.access(path, os.X_OK) else None


def proxy_help(binary):
    try:
        r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
        return r.stdout + r.stderr
    except (OSError, subprocess.SubprocessError):
        return ""


def crest_argv(binary, port, bport, warm=None):
    argv = [binary, "--port", str(port), "--threads", "1", "-q",
            "--backend", f"{HOST}:{bport}"]
    if warm is not None:
        argv += ["--warm", str(warm)]
    return argv


def start_backend(R, port, log, cpu):
    return Proc("crest-echo", H.pinned(cpu, [R.CREST_ECHO, "-q", "-p", str(port)]), log, port)


def connect_tool(R):
    """bench/build/connect-rtt, built from bench/tools/connect_rtt.c."""
    exe = os.path.join(R.BUILD, "connect-rtt")
    src = os.path.join(HERE, "tools", "connect_rtt.c")
    os.makedirs(R.BUILD, exist_ok=True)
    r = subprocess.run(["cc", "-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-o", exe, src],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("bench: cannot build bench/build/connect-rtt:\n" + r.stderr)
    return exe


# ---------------------------------------------------------------------------
# One run of each kind
# ---------------------------------------------------------------------------


def parse_kv(text, prefix):
    for line in text.splitlines():
        if line.startswith(prefix):
            out = {}
            for tok in line[len(prefix):].split():
                k, _, v = tok.partition("=")
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
            return out
    return None


def load_args(opts, kind):
    """crest-bench's workload: saturation (closed loop) or a fixed rate."""
    for f in fixed_runs(opts):
        if f["key"] == kind:
            return ["-c", str(f["conns"]), "-r", str(f["rate"])]
    return ["-c", str(opts.proxy_conns)]


def fixed_runs(opts):
    """The open-loop runs: the same offered rate for both proxies, so that
    their CPU per message compares at equal load (at saturation the slower
    one batches more events per wakeup, which flatters its cost)."""
    return [{"key": "light", "conns": opts.proxy_light_conns, "rate": opts.proxy_light_rate,
             "title": "light load"},
            {"key": "fixed", "conns": opts.proxy_conns, "rate": opts.proxy_fixed_rate,
             "title": "the same load for both"}]


def load_run(R, proxy, backend, port, opts, tag, cpu_c, kind="load"):
    """crest-bench through the proxy; the proxy's CPU over a window inside
    crest-bench's measured period."""
    argv = H.pinned(cpu_c, [R.CREST_BENCH, "-q", "-m", "raw"] + load_args(opts, kind) +
                    ["-s", "64", "-P", "1", "-d", str(opts.duration),
                     "--warmup", str(opts.warmup), f"{HOST}:{port}"])
    R.note_cmd("proxy load", argv, port=port)
    margin = min(0.1, opts.duration * 0.1)
    log = os.path.join(R.LOGDIR, f"proxy-{kind}-{tag}.log")
    with open(log, "w") as f:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        time.sleep(max(0.0, t0 + opts.warmup + margin - time.monotonic()))
        a = (time.monotonic(), proxy.cpu(), backend.cpu(), H.pid_cpu(p.pid), R.system_cpu()[0])
        time.sleep(max(0.0, t0 + opts.warmup + opts.duration - margin - time.monotonic()))
        b = (time.monotonic(), proxy.cpu(), backend.cpu(), H.pid_cpu(p.pid), R.system_cpu()[0])
        try:
            rc = p.wait(opts.duration + opts.warmup + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
    with open(log) as f:
        out = f.read()
    kv = parse_kv(out, "crest-bench:") or {}
    wall = b[0] - a[0]
    u = (b[1] - a[1]) / wall
    rate = kv.get("msgs_per_s") or 0
    r = {"exit": rc, "msgs_per_s": rate or None, "msgs": kv.get("msgs"),
         "errors": int(kv.get("errors", 1)),
         "p50_us": kv.get("p50_us"), "p99_us": kv.get("p99_us"), "p999_us": kv.get("p999_us"),
         "proxy_share": u, "backend_share": (b[2] - a[2]) / wall,
         "client_share": (b[3] - a[3]) / wall, "window_s": wall,
         "others": max(0.0, (b[4] - a[4]) - (b[1] - a[1]) - (b[2] - a[2]) - (b[3] - a[3])) / wall}
    r["cpu_us_per_msg"] = u / rate * 1e6 if rate else None
    r["per_core"] = rate / u if rate and u > 0 else None
    if rc != 0 or not rate:
        R.say(f"proxy {kind} {tag}: crest-bench exit {rc}: {out[-300:]}")
    return r


def setup_run(R, proxy, port, opts, tool, tag, cpu_c):
    argv = H.pinned(cpu_c, [tool, HOST, str(port), str(opts.proxy_setup_n), "16",
                            str(opts.proxy_setup_pause_us)])
    R.note_cmd("proxy setup", argv, port=port)
    c0 = proxy.cpu()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    time.sleep(0.05)   # the proxy closes both sides: part of a connection's cost
    c1 = proxy.cpu()
    kv = parse_kv(r.stdout, "connect_rtt:") or {}
    n = int(kv.get("count", 0))
    out = {"exit": r.returncode, "count": n, "errors": int(kv.get("errors", 1)),
           "cpu_us_per_conn": (c1 - c0) / n * 1e6 if n else None}
    for k in ("first_p50_us", "first_p90_us", "first_p99_us", "first_mean_us",
              "connect_p50_us", "connect_p99_us"):
        out[k] = kv.get(k)
    if r.returncode != 0:
        R.say(f"proxy setup {tag}: connect_rtt exit {r.returncode}: {r.stderr[-300:]}")
    return out


def start_proxy(R, name, port, bport, binary, warm, tag, cpu_s):
    if name == "haproxy":
        return start_haproxy(port, bport, os.path.join(R.LOGDIR, f"haproxy-{tag}"), cpu_s)
    argv = H.pinned(cpu_s, crest_argv(binary, port, bport, warm if name == "crest-warm" else
                                      (0 if warm else None)))
    return Proc(name, argv, os.path.join(R.LOGDIR, f"proxy-{tag}.log"), port)


def wait_quiet(R, most=60.0, limit=QUIET):
    """Wait (at most `most` s) until the machine's busy CPU over half a
    second is under `limit` cores: the two cores are shared with other
    jobs (builds, tests), and a round measured beside one says little.
    Nothing of ours runs meanwhile.  Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < most:
        a = R.system_cpu()[0]
        time.sleep(0.5)
        if (R.system_cpu()[0] - a) / 0.5 < limit:
            break
    return time.monotonic() - t0


def measure_all(opts, R):
    """Rounds: one backend each, every proxy in turn (order rotating)."""
    binary = crest_proxy_binary()
    snap = os.path.join(R.BUILD, "snapshot")
    if binary and os.path.isdir(snap):
        # one build per run: a copy beside bench/run's snapshot of libcrest
        shutil.copy2(binary, snap)
        binary = os.path.join(snap, os.path.basename(binary))
    helptext = proxy_help(binary) if binary else ""
    if binary and "--backend" not in helptext:
        R.say("proxy: samples/crest-proxy has no --backend yet: measuring HAProxy alone")
        binary = None
    warm = opts.proxy_warm if "--warm" in helptext else None
    names = ["haproxy"] + (["crest"] if binary else []) + (["crest-warm"] if warm else [])
    if not binary:
        R.say("proxy: samples/crest-proxy is not built: measuring HAProxy alone")
    elif not warm:
        R.say("proxy: crest-proxy has no --warm yet: the warm row reports 'not available'")
    tool = connect_tool(R)
    cpu_s, cpu_c = H.cpus()
    res = {"servers": names, "pinned": {"proxy": cpu_s, "client": cpu_c}, "warm": warm,
           "conns": opts.proxy_conns, "light_conns": opts.proxy_light_conns,
           "light_rate": opts.proxy_light_rate, "fixed_runs": fixed_runs(opts), "seconds": opts.duration, "warmup": opts.warmup,
           "setup_n": opts.proxy_setup_n, "setup_pause_us": opts.proxy_setup_pause_us,
           "rounds_n": opts.rounds, "rounds": [],
           "haproxy_version": subprocess.run(["haproxy", "-v"], capture_output=True,
                                             text=True).stdout.splitlines()[0]}
    R.say(f"proxy: {opts.rounds} rounds x {', '.join(names)}; proxy on CPU {cpu_s}, "
          f"client and backend on CPU {cpu_c}")
    for rnd in range(opts.rounds):
        waited = wait_quiet(R)
        if waited > 1:
            R.say(f"  waited {waited:.0f} s for other jobs to quieten")
        bport = H.free_port()
        backend = start_backend(R, bport, os.path.join(R.LOGDIR, f"proxy-backend-r{rnd}.log"),
                                cpu_c)
        R.note_cmd("proxy servers", backend.argv, port=bport)
        row = {"load": {}, "setup": {}, "waited_s": waited}
        row.update({f["key"]: {} for f in fixed_runs(opts)})
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        try:
            for name in order:
                tag = f"{name}-r{rnd}"
                port = H.free_port()
                proxy = start_proxy(R, name, port, bport, binary, warm, tag, cpu_s)
                R.note_cmd("proxy servers", proxy.argv, port=port)
                try:
                    if name in LOAD:
                        row["load"][name] = load_run(R, proxy, backend, port, opts, tag, cpu_c)
                        for f in fixed_runs(opts):
                            row[f["key"]][name] = load_run(R, proxy, backend, port, opts, tag,
                                                           cpu_c, f["key"])
                    row["setup"][name] = setup_run(R, proxy, port, opts, tool, tag, cpu_c)
                finally:
                    proxy.stop()
        finally:
            backend.stop()
        res["rounds"].append(row)
        R.say(f"  round {rnd + 1}: " + "; ".join(
            f"{n} {x['msgs_per_s'] or 0:,.0f} msg/s, {x['cpu_us_per_msg'] or 0:.2f} us/msg, "
            f"proxy {x['proxy_share']:.0%}, p99 {x['p99_us'] or 0:.0f} us"
            for n, x in row["load"].items()) + " | setup p50 " + ", ".join(
            f"{n} {x['first_p50_us'] or 0:.0f} us" for n, x in row["setup"].items()))
    return res


# ---------------------------------------------------------------------------
# Summary and tables
# ---------------------------------------------------------------------------


def paired(rounds, kind, a, b, key, median):
    xs = [r[kind][a][key] / r[kind][b][key] for r in rounds
          if r[kind].get(a) and r[kind].get(b) and r[kind][a].get(key) and r[kind][b].get(key)]
    return (median(xs), min(xs), max(xs)) if xs else (None, None, None)


def summarize(res, median):
    rounds = res["rounds"]
    s = {"load": {}, "setup": {}, "ratio": {}}
    for name in LOAD:
        vals = [r["load"][name] for r in rounds if r["load"].get(name)]
        if vals:
            s["load"][name] = {k: median([v.get(k) for v in vals]) for k in (
                "msgs_per_s", "cpu_us_per_msg", "per_core", "p50_us", "p99_us", "proxy_share",
                "backend_share", "client_share", "others")}
            s["load"][name]["errors"] = sum(v["errors"] for v in vals)
            s["load"][name]["n"] = len(vals)
    s["fixed"] = {}
    for f in res.get("fixed_runs") or [{"key": "light"}]:
        fk = f["key"]
        s[fk] = {}
        for name in LOAD:
            vals = [r[fk][name] for r in rounds if r.get(fk, {}).get(name)]
            if vals:
                s[fk][name] = {k: median([v.get(k) for v in vals]) for k in (
                    "msgs_per_s", "cpu_us_per_msg", "per_core", "p50_us", "p99_us", "p999_us",
                    "proxy_share")}
                s[fk][name]["errors"] = sum(v["errors"] for v in vals)
        have = [r for r in rounds if fk in r]
        calm = [r for r in have if all((x.get("others") or 0) < QUIET for x in r[fk].values())]
        s["ratio"][fk + "_n_quiet"] = len(calm)
        for key in ("cpu_us_per_msg", "per_core", "p50_us", "p99_us"):
            s["ratio"][fk + "_" + key] = paired(have, fk, "crest", "haproxy", key, median)
            s["ratio"][fk + "_" + key + "_quiet"] = paired(calm, fk, "crest", "haproxy", key,
                                                           median)
    for name in SETUP:
        vals = [r["setup"][name] for r in rounds if r["setup"].get(name)]
        if vals:
            s["setup"][name] = {k: median([v.get(k) for v in vals]) for k in (
                "first_p50_us", "first_p90_us", "first_p99_us", "connect_p50_us",
                "cpu_us_per_conn")}
            s["setup"][name]["errors"] = sum(v["errors"] for v in vals)
            s["setup"][name]["count"] = sum(v["count"] for v in vals)
    quiet = [r for r in rounds if all((x.get("others") or 0) < QUIET for x in r["load"].values())]
    for key in ("msgs_per_s", "cpu_us_per_msg", "per_core", "p50_us", "p99_us"):
        s["ratio"][key] = paired(rounds, "load", "crest", "haproxy", key, median)
        s["ratio"][key + "_quiet"] = paired(quiet, "load", "crest", "haproxy", key, median)
    s["ratio"]["n_quiet"] = len(quiet)
    for key in ("first_p50_us", "first_p99_us", "cpu_us_per_conn"):
        s["ratio"]["cold_" + key] = paired(rounds, "setup", "crest", "haproxy", key, median)
        s["ratio"]["warm_" + key] = paired(rounds, "setup", "crest-warm", "haproxy", key, median)
        s["ratio"]["warmcold_" + key] = paired(rounds, "setup", "crest-warm", "crest", key, median)
    return s


def rt(t, digits=2):
    med, lo, hi = t
    if med is None:
        return "–"
    return f"**{med:.{digits}f}** ({lo:.{digits}f}–{hi:.{digits}f})"


def label(name, res):
    return LABEL[name].format(warm=res.get("warm"))


def tables(res, median):
    s = summarize(res, median)
    L = []
    w = L.append
    w(f"### Relayed echo: 64-byte messages, {res['conns']} connections, depth 1")
    w("")
    w("| proxy | msgs/s | proxy CPU (% of its core) | proxy CPU us/msg | msgs/s per proxy core "
      "| p50 | p99 | client + backend CPU (% of their core) | errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in LOAD:
        x = s["load"].get(name)
        if not x:
            w(f"| {label(name, res)} | not available | | | | | | | |")
            continue
        w(f"| {label(name, res)} | {x['msgs_per_s'] or 0:,.0f} | {x['proxy_share'] or 0:.0%} "
          f"| {x['cpu_us_per_msg'] or 0:.2f} | {x['per_core'] or 0:,.0f} "
          f"| {x['p50_us'] or 0:,.0f} us | {x['p99_us'] or 0:,.0f} us "
          f"| {(x['client_share'] or 0) + (x['backend_share'] or 0):.0%} | {x['errors']} |")
    w("")
    r = s["ratio"]
    if "crest" in s["load"] and "haproxy" in s["load"]:
        w("Paired ratios, crest-proxy / HAProxy per round (median, min–max over rounds); the "
          f"quiet rounds are those where other jobs on the VM used under {QUIET} of a core "
          "during both runs:")
        w("")
        w("| figure | all rounds | quiet rounds |")
        w("|---|---|---|")
        for key, what in (("msgs_per_s", "msgs/s"), ("per_core", "msgs/s per proxy core"),
                          ("cpu_us_per_msg", "proxy CPU per message"), ("p50_us", "p50"),
                          ("p99_us", "p99")):
            w(f"| {what} | {rt(r[key])} | {rt(r[key + '_quiet'])} ({r['n_quiet']}) |")
        w("")
    for f in res.get("fixed_runs") or [{"key": "light", "title": "light load",
                                        "conns": res.get("light_conns"),
                                        "rate": res.get("light_rate")}]:
        fk = f["key"]
        if not s.get(fk):
            continue
        w(f"### Open loop, {f['title']}: {f['rate']:,} msgs/s in all over {f['conns']} "
          "connections, 64 bytes")
        w("")
        w("Latency counted from each message's scheduled time (crest-bench `-r`), so a stall "
          "is not hidden by the client waiting. The same offered rate for both proxies: their "
          "CPU per message compares at equal load.")
        w("")
        w("| proxy | msgs/s | proxy CPU (% of its core) | proxy CPU us/msg | msgs/s per proxy core "
          "| p50 | p99 | p99.9 | errors |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in LOAD:
            x = s[fk].get(name)
            if x:
                w(f"| {label(name, res)} | {x['msgs_per_s'] or 0:,.0f} | {x['proxy_share'] or 0:.0%} "
                  f"| {x['cpu_us_per_msg'] or 0:.2f} | {x.get('per_core') or 0:,.0f} "
                  f"| {x['p50_us'] or 0:,.0f} us | {x['p99_us'] or 0:,.0f} us "
                  f"| {x['p999_us'] or 0:,.0f} us | {x['errors']} |")
        w("")
        if "crest" in s[fk] and "haproxy" in s[fk]:
            w("Paired ratios crest-proxy / HAProxy (median, min–max over rounds):")
            w("")
            w("| figure | all rounds | quiet rounds |")
            w("|---|---|---|")
            for key, what in (("per_core", "msgs/s per proxy core"),
                              ("cpu_us_per_msg", "proxy CPU per message"), ("p50_us", "p50"),
                              ("p99_us", "p99")):
                w(f"| {what} | {rt(r[fk + '_' + key])} | {rt(r[fk + '_' + key + '_quiet'])} "
                  f"({r[fk + '_n_quiet']}) |")
            w("")
    w(f"### Connection setup for a new client: connect() to the first echoed byte of 16 bytes")
    w("")
    w(f"{res['setup_n']:,} connections per run, one at a time, {res['setup_pause_us']} us apart "
      "(bench/tools/connect_rtt.c).")
    w("")
    w("| proxy | first byte p50 | p90 | p99 | connect() p50 | proxy CPU us/connection "
      "| errors |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for name in SETUP:
        x = s["setup"].get(name)
        if not x:
            why = ("not available: crest-proxy has no --warm yet (the pool is not merged)"
                   if name == "crest-warm" else "not available")
            w(f"| {label(name, res) if name != 'crest-warm' else 'crest-proxy --warm N'} "
              f"| {why} | | | | | |")
            continue
        w(f"| {label(name, res)} | {x['first_p50_us'] or 0:.0f} us | {x['first_p90_us'] or 0:.0f} us "
          f"| {x['first_p99_us'] or 0:.0f} us | {x['connect_p50_us'] or 0:.0f} us "
          f"| {x['cpu_us_per_conn'] or 0:.1f} | {x['errors']} |")
    w("")
    if "crest" in s["setup"]:
        w("Paired ratios (median, min–max over rounds):")
        w("")
        w("| | first byte p50 | first byte p99 | proxy CPU per connection |")
        w("|---|---|---|---|")
        w(f"| crest-proxy cold / HAProxy | {rt(r['cold_first_p50_us'])} "
          f"| {rt(r['cold_first_p99_us'])} | {rt(r['cold_cpu_us_per_conn'])} |")
        if "crest-warm" in s["setup"]:
            w(f"| crest-proxy warm / HAProxy | {rt(r['warm_first_p50_us'])} "
              f"| {rt(r['warm_first_p99_us'])} | {rt(r['warm_cpu_us_per_conn'])} |")
            w(f"| crest-proxy warm / cold | {rt(r['warmcold_first_p50_us'])} "
              f"| {rt(r['warmcold_first_p99_us'])} | {rt(r['warmcold_cpu_us_per_conn'])} |")
        w("")
    return "\n".join(L), s


def targets(res, median):
    s = summarize(res, median)
    r = s["ratio"]
    out = []
    if "crest" in s["load"] and "haproxy" in s["load"]:
        pc, cpu = r["per_core"][0], r["cpu_us_per_msg"][0]
        out.append({"target": "at least 1.2x HAProxy's msgs/s per core",
                    "measured": f"{pc:.2f}x ({s['load']['crest']['per_core']:,.0f} vs "
                                f"{s['load']['haproxy']['per_core']:,.0f} msgs/s per proxy core); "
                                f"msgs/s as measured {r['msgs_per_s'][0]:.2f}x (closed loop, "
                                "100 connections)" + "".join(
                                    f"; open loop at {f['rate']:,} msgs/s: "
                                    f"{r[f['key'] + '_per_core'][0]:.2f}x"
                                    for f in res.get("fixed_runs", [])
                                    if r.get(f["key"] + "_per_core", (None,))[0]),
                    "met": pc >= 1.2})
        out.append({"target": "lower CPU per message than HAProxy",
                    "measured": f"{cpu:.2f}x ({s['load']['crest']['cpu_us_per_msg']:.2f} vs "
                                f"{s['load']['haproxy']['cpu_us_per_msg']:.2f} us, closed loop)"
                                + "".join(
                                    f"; open loop at {f['rate']:,} msgs/s: "
                                    f"{r[f['key'] + '_cpu_us_per_msg'][0]:.2f}x"
                                    for f in res.get("fixed_runs", [])
                                    if r.get(f["key"] + "_cpu_us_per_msg", (None,))[0]),
                    "met": cpu < 1.0})
    if "crest-warm" in s["setup"] and "crest" in s["setup"]:
        c = r["warmcold_first_p50_us"][0]
        out.append({"target": "a measured cut in new-connection latency from the warm pool",
                    "measured": f"warm/cold first-byte p50 {c:.2f}x "
                                f"({s['setup']['crest-warm']['first_p50_us']:.0f} vs "
                                f"{s['setup']['crest']['first_p50_us']:.0f} us), p99 "
                                f"{r['warmcold_first_p99_us'][0]:.2f}x",
                    "met": c < 1.0})
    elif "crest" in s["setup"]:
        out.append({"target": "a measured cut in new-connection latency from the warm pool",
                    "measured": "not measured: crest-proxy has no --warm yet", "met": None})
    return out


def section(data, R):
    res = data["proxy"]
    o = data["options"]
    L = [BEGIN, "## TCP proxy: crest-proxy against HAProxy (issue 16)", ""]
    w = L.append
    w(f"Measured {data['date']} by `bench/run{' --quick' if o.get('quick') else ''} --only proxy"
      f"{' --rounds ' + str(o.get('rounds')) if o.get('rounds') else ''}"
      f"{' --duration ' + str(o.get('duration')) if o.get('duration') else ''}` (or the full "
      f"run): {res['rounds_n']} rounds; each round starts one crest-echo backend and every proxy "
      f"in turn in front of it (the order rotates each round), each proxy started fresh and "
      f"stopped by its PID; crest-bench runs {res['seconds']} s after {res['warmup']} s of "
      f"warm-up; results `bench/results/{data['results_file']}`. {res['haproxy_version']}.")
    w("")
    if "crest" not in res["servers"]:
        w("**crest-proxy was not available in this run: HAProxy alone.**")
        w("")
    cs, cc = res["pinned"]["proxy"], res["pinned"]["client"]
    if cs is not None:
        w(f"- Pinned with taskset: the proxy (HAProxy's master and worker) alone on CPU {cs}; "
          f"the client (crest-bench, connect_rtt) and the crest-echo backend on CPU {cc}. Each "
          "proxy can use at most one core, and no more than the client side lets through: when "
          "client + backend are near 100% of their core, msgs/s is their rate, and the figures "
          "that separate the proxies are CPU per message and msgs/s per proxy core.")
    else:
        w("- Not pinned (fewer than two CPUs or no taskset).")
    w("- Closed loop (crest-bench without `-r`): whichever core saturates first sets the "
      "rate. A proxy that answers sooner wakes the client and the backend more often, with "
      "fewer events per epoll_wait each, which costs their shared core more per message: "
      "msgs/s can then drop while the proxy still has CPU to spare, and the saturated proxy "
      "batches more events per wakeup, which lowers its cost per message. The open-loop runs "
      "offer both proxies the same rate, so that their CPU per message compares at equal "
      "load.")
    w("- Proxy CPU: the sum of the proxy's threads' sum_exec_runtime "
      "(`/proc/PID/task/TID/schedstat`; HAProxy's master and worker both) over a window inside "
      "crest-bench's measured period, over the window's wall time: its utilisation u. CPU per "
      "message = u / (msgs/s); msgs/s per proxy core = (msgs/s) / u, the rate it would carry "
      "with a whole core at the same cost per message.")
    w("- crest-proxy: `samples/crest-proxy --port PORT --threads 1 -q --backend "
      "127.0.0.1:BACKEND` (one loop)" + (f", and with `--warm {res['warm']}` for the warm "
                                          "connection-setup row" if res.get("warm") else "")
      + ".")
    w("- HAProxy: Debian's haproxy, `haproxy -W -db -f DIR/haproxy.cfg` (master-worker, in "
      "the foreground; its pid file checked against the PID we started), the configuration "
      "below: `mode tcp`, `nbthread 1`, no `log` line (nothing to syslog), generous timeouts. "
      "Everything else is HAProxy's default, chosen on purpose: no `option splice-auto` "
      "(splice moves data through a pipe with two more syscalls per transfer; it pays for "
      "large streams, not 64-byte messages); `tune.bufsize` 16 KiB and the kernel's "
      "autotuned socket buffers (crest-proxy uses the kernel's too); no `busy-polling` "
      "(it would spin the core and make CPU per message meaningless). TCP_NODELAY is "
      "HAProxy's default on both sides (strace shows it set on every accepted and every "
      "server socket), as crest-proxy's. A quick A/B of `option splice-auto` against this "
      "configuration, 64-byte and 4 KiB messages, showed no difference beyond the VM's "
      "noise (splice-auto splices only where its heuristics expect a gain: large transfers). crest-proxy's "
      "`--relay-high-water` (1 MiB queued per direction) and HAProxy's 16 KiB buffers never "
      "fill with one 64-byte message in flight per connection.")
    w("- Connection setup: `bench/build/connect-rtt` (bench/tools/connect_rtt.c): socket, "
      "TCP_NODELAY, a blocking connect(), one send of 16 bytes, recv until all 16 are back "
      "(checked), close; the time from before socket() to the first echoed byte, one "
      "connection at a time with a pause between them. Through a proxy, connect() returns "
      "when the proxy's kernel has completed the handshake; the first byte also needs the "
      "proxy to accept, reach the backend (a new connect, or a warm pooled connection) and "
      "relay both ways, which is what a warm pool can shorten. The client loop is the same "
      "C code for every proxy. Proxy CPU per connection: its CPU over the run (plus 50 ms "
      "for the last close) over the connections.")
    w("- The two cores are shared with other jobs: before each round bench/ waits (60 s at "
      f"most) until the machine's busy CPU is under {QUIET} of a core; the other jobs' CPU "
      "during each load run is kept (`others`), and the quiet rounds are those where it "
      f"stayed under {QUIET} of a core for both proxies.")
    w("- Ratios are paired: crest-proxy's figure over HAProxy's in the same round, median "
      "over rounds (min–max).")
    w("")
    text, _ = tables(res, R.median)
    w(text)
    tg = targets(res, R.median)
    if tg:
        w("Targets (issue 16):")
        w("")
        w("| target | measured | met |")
        w("|---|---|---|")
        for t in tg:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            w(f"| {t['target']} | {t['measured']} | {met} |")
        w("")
    w("<details><summary>haproxy.cfg (DIR: the run's directory under bench/results/)</summary>")
    w("")
    w("```")
    w(HAPROXY_CONF.format(dir="DIR", host=HOST, port="PORT", bport="BACKEND").rstrip())
    w("```")
    w("")
    w("</details>")
    w("")
    cmds = [c for sec, c in data.get("commands", []) if sec.startswith("proxy")]
    if cmds:
        w("<details><summary>the commands</summary>")
        w("")
        w("```sh")
        seen = []
        for c in cmds:
            c = re.sub(r"\S*/haproxy-[\w.-]+-r\d+", "DIR", c)
            c = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:BACKEND", c)
            c = c.replace("crest-echo -q -p PORT", "crest-echo -q -p BACKEND")
            if c not in seen:
                seen.append(c)
                w(c)
        w("```")
        w("")
        w("</details>")
        w("")
    w(END)
    return "\n".join(L)


def report(data, w, R):
    """For bench/run's report(): the block, if this run has one."""
    if data.get("proxy"):
        w(section(data, R))
        w("")


def write_section(data, path, R):
    """Put the block between the markers of docs/performance.md."""
    H.put_marked(path, BEGIN, END, section(data, R))


def set_options(opts):
    q = opts.quick
    opts.proxy_conns = 100
    opts.proxy_light_conns = 10      # open loop: latency without a queue
    opts.proxy_light_rate = 10000
    opts.proxy_fixed_rate = 25000    # under both proxies' saturation here
    opts.proxy_setup_n = 500 if q else 2000
    opts.proxy_setup_pause_us = 500
    opts.proxy_warm = 8


def main_only(opts, R):
    """bench/run --only proxy: measure, keep the JSON, write the block.
    Needs crest built and haproxy; not bench/setup's peers."""
    for tool in ("haproxy", "cc"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is missing: scripts/deps installs it")
    R.snapshot()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    R.LOGDIR = os.path.join(R.RESULTS, stamp)
    os.makedirs(R.LOGDIR, exist_ok=True)
    data = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": R.machine(),
            "options": {k: v for k, v in vars(opts).items() if k not in ("report", "out")},
            "results_file": stamp + ".json"}
    t0 = time.monotonic()
    data["proxy"] = measure_all(opts, R)
    data["commands"] = R.COMMANDS
    data["elapsed_s"] = time.monotonic() - t0
    with open(os.path.join(R.RESULTS, stamp + ".json"), "w") as f:
        json.dump(data, f, indent=1)
    write_section(data, opts.out, R)
    print(tables(data["proxy"], R.median)[0])
    for t in targets(data["proxy"], R.median):
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        R.say(f"target: {t['target']}: {t['measured']}: {met}")
    R.say(f"done in {data['elapsed_s']:.0f} s: wrote {R.rel(opts.out)} (between the proxy "
          f"markers); results in bench/results/{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit("bench/proxy_bench.py is a module of bench/run: run `bench/run --only proxy`")
