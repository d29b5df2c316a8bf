"""bench/http_bench.py: the HTTP tables of bench/run (issue 15).

crest-http (samples/crest-http, one loop) against nginx (Debian's
nginx-light, one worker), driven by clients we did not write:

    wrk -t1 -c100 / -c1000 --latency     keep-alive, GET /
    h2load --h1 -c100 -m16               keep-alive, 16 requests pipelined
    ab -k -c100                          keep-alive
    ab -c10 (no -k)                      a new connection per request (churn)

Same method as bench/run's other tables: alternating rounds (the order
rotates each round), each server started fresh for each run, paired ratios
crest/nginx per round, medians over rounds; server CPU is utime+stime of
the server's processes (/proc/PID/stat) over the client's run, divided by
its requests.

Imported by bench/run, which passes itself as R (free_port, proc_cpu,
note_cmd, say, median, LOGDIR ...).  `bench/run --only http` writes the
tables between the http markers of docs/performance.md and leaves the
rest of the page alone; the full run puts the same block in the page.
The nginx anchor (start_nginx) is also used by bench/http-syscalls."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = "Hello, World!\n"
BEGIN = "<!-- http:begin (bench/run --only http writes this) -->"
END = "<!-- http:end -->"

# key, title, tool, connections, keep-alive
SCENARIOS = [
    {"key": "wrk100", "title": "wrk, 100 keep-alive connections", "tool": "wrk", "c": 100},
    {"key": "wrk1000", "title": "wrk, 1,000 keep-alive connections", "tool": "wrk", "c": 1000},
    {"key": "h2load", "title": "h2load --h1, 100 connections, 16 pipelined", "tool": "h2load",
     "c": 100, "m": 16},
    {"key": "abk", "title": "ab -k, 100 keep-alive connections", "tool": "ab", "c": 100, "k": True},
    {"key": "churn", "title": "ab without -k, 10 connections: a new connection per request",
     "tool": "ab", "c": 10, "k": False},
]
SERVERS = ["crest", "nginx"]
LABEL = {"crest": "crest-http", "nginx": "nginx 1.22 (nginx-light)"}
TARGET_KEY = "wrk100"
# other jobs' CPU (cores) under which a round counts as quiet
QUIET = 0.2

# ---------------------------------------------------------------------------
# CPUs: server on one, client on the other (as tests/latency.sh does)
# ---------------------------------------------------------------------------


def cpus():
    """(server cpu, client cpu) to pin to, or (None, None) with fewer than two."""
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2 or not shutil.which("taskset"):
        return None, None
    return mine[-1], mine[0]


def pinned(cpu, argv):
    return argv if cpu is None else ["taskset", "-c", str(cpu)] + argv


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tree_pids(pid):
    """pid and its children (nginx: the master and its worker)."""
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def pid_cpu(pid):
    """CPU time of one process (all its threads), in seconds: the sum of
    its threads' sum_exec_runtime (/proc/PID/task/TID/schedstat, in ns),
    the time that utime+stime split, without their 10 ms ticks (a churn
    run of 0.3 s of server CPU would be 30 ticks)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return 0.0


def wait_connect(port, proc, timeout=15.0):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.01)
    return False


class HttpServer:
    """A server we started; stopped by its own PID only."""

    def __init__(self, name, argv, log, port, tmpdir=None):
        self.name, self.port, self.tmpdir, self.argv = name, port, tmpdir, argv
        self.logpath = log
        self.log = open(log, "w")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        self.pid = self.p.pid
        if not wait_connect(port, self.p):
            self.stop()
            raise RuntimeError(f"{name} is not listening on {port}; see {log}")
        self.pids = tree_pids(self.pid)   # nginx's worker is there once it accepts

    def cpu(self):
        return sum(pid_cpu(p) for p in self.pids)

    def user_sys(self):
        """(utime, stime) in seconds, in 10 ms ticks: the split of cpu()."""
        u = k = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                u, k = u + int(fields[11]), k + int(fields[12])
            except OSError:
                pass
        return u / CLK_TCK, k / CLK_TCK

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


NGINX_CONF = """\
# The nginx anchor of bench/run's HTTP tables (bench/http_bench.py).
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # nginx's default keepalive_timeout is 75 s, as crest-http's; its
    # default keepalive_requests (1000) would close each wrk connection
    # every 1,000 requests, which crest-http does not do
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server_tokens off;
    server {{
        listen {host}:{port} backlog=4096;
        default_type text/plain;
        location = / {{ return 200 "Hello, World!\\n"; }}
    }}
}}
"""


def nginx_argv(tmpdir):
    return ["nginx", "-p", tmpdir, "-c", os.path.join(tmpdir, "nginx.conf"),
            "-e", os.path.join(tmpdir, "error.log")]


def start_nginx(port, tmpdir, cpu=None):
    """nginx with its own prefix in tmpdir (config, pid, error log)."""
    os.makedirs(tmpdir, exist_ok=True)
    with open(os.path.join(tmpdir, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(dir=tmpdir, host=HOST, port=port))
    srv = HttpServer("nginx", pinned(cpu, nginx_argv(tmpdir)),
                     os.path.join(tmpdir, "nginx.log"), port, tmpdir)
    # the worker forks after the master listens: wait for it
    for _ in range(200):
        if len(srv.pids) > 1:
            break
        time.sleep(0.01)
        srv.pids = tree_pids(srv.pid)
    return srv


def crest_argv(binary, port):
    return [binary, "--port", str(port), "-q", "--threads", "1"]


def start_crest(binary, port, log, cpu=None):
    return HttpServer("crest", pinned(cpu, crest_argv(binary, port)), log, port)


def crest_binary():
    """samples/crest-http's real binary (libtool puts it in .libs)."""
    path = os.path.join(ROOT, "samples/.libs/crest-http")
    if not os.access(path, os.X_OK):
        return None
    # the in-tree library, unless bench/run's snapshot already set it
    if "LD_LIBRARY_PATH" not in os.environ:
        os.environ["LD_LIBRARY_PATH"] = os.path.join(ROOT, ".libs")
    return path


# ---------------------------------------------------------------------------
# Clients and their output
# ---------------------------------------------------------------------------


def client_argv(sc, port, opts):
    url = f"http://{HOST}:{port}/"
    if sc["tool"] == "wrk":
        return ["wrk", "-t1", f"-c{sc['c']}", f"-d{opts.http_seconds}s", "--latency", url]
    if sc["tool"] == "h2load":
        return ["h2load", "--h1", f"-c{sc['c']}", f"-m{sc['m']}", f"-n{opts.http_n_pipe}", url]
    n = opts.http_n_ab if sc["k"] else opts.http_n_churn
    return ["ab", "-q"] + (["-k"] if sc["k"] else []) + [f"-c{sc['c']}", f"-n{n}", url]


def to_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not m:
        return None
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[m.group(2)]


def parse_wrk(out):
    r = {"lat": {}}
    for q in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        if m:
            r["lat"][f"p{q}"] = to_us(m.group(1))
    m = re.search(r"(\d+) requests in ([0-9.]+)(\w+)", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["errors"] += int(m.group(1)) if m else 0
    return r


def parse_h2load(out):
    r = {"lat": {}}
    m = re.search(r"finished in [0-9.]+\w+, ([0-9.]+) req/s", out)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    if m:
        r["requests"] = int(m.group(2))
        r["errors"] = int(m.group(3)) + int(m.group(4)) + int(m.group(5))
    else:
        r["requests"], r["errors"] = 0, 1
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        r["lat"] = {"min": to_us(m.group(1)), "max": to_us(m.group(2)),
                    "mean": to_us(m.group(3)), "sd": to_us(m.group(4))}
    return r


def parse_ab(out):
    r = {"lat": {}}
    m = re.search(r"Requests per second:\s+([0-9.]+)", out)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"Complete requests:\s+(\d+)", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Failed requests:\s+(\d+)", out)
    r["errors"] = int(m.group(1)) if m else 1
    m = re.search(r"Non-2xx responses:\s+(\d+)", out)
    r["errors"] += int(m.group(1)) if m else 0
    m = re.search(r"Keep-Alive requests:\s+(\d+)", out)
    r["keepalive"] = int(m.group(1)) if m else 0
    # ab prints whole milliseconds
    for q in ("50", "90", "99", "100"):
        m = re.search(rf"^\s+{q}%\s+(\d+)", out, re.M)
        if m:
            r["lat"][f"p{q}"] = float(m.group(1)) * 1e3
    return r


PARSE = {"wrk": parse_wrk, "h2load": parse_h2load, "ab": parse_ab}


def time_wait():
    """Sockets in TIME_WAIT on this machine (ss -s)."""
    try:
        out = subprocess.run(["ss", "-s"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"timewait (\d+)", out)
        return int(m.group(1)) if m else None
    except (OSError, subprocess.SubprocessError):
        return None


# Churn runs leave their sockets in TIME_WAIT for 60 s.  Past
# net.ipv4.tcp_max_tw_buckets (131,072 here) the kernel drops them with a
# warning: before each churn run, wait until a run's worth fits under it
# (tw_limit()).


def tw_limit(n):
    try:
        with open("/proc/sys/net/ipv4/tcp_max_tw_buckets") as f:
            most = int(f.read())
    except (OSError, ValueError):
        most = 131072
    return max(n, min(100000, most - 2 * n))


def wait_time_wait(limit, most=70.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < most:
        n = time_wait()
        if n is None or n < limit:
            break
        time.sleep(1.0)
    return time.monotonic() - t0


def run_client(argv, log):
    """Run a client to the end; (stdout, wall seconds, client CPU seconds)."""
    with open(log, "w") as f:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        # wait4 gives the client's own CPU (utime + stime), taskset's exec included
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    with open(log) as f:
        return f.read(), wall, ru.ru_utime + ru.ru_stime, p.returncode


def measure(R, name, sc, opts, tag, binary, cpu_s, cpu_c):
    port = free_port()
    log = os.path.join(R.LOGDIR, f"http-{tag}.log")
    if name == "nginx":
        srv = start_nginx(port, os.path.join(R.LOGDIR, f"nginx-{tag}"), cpu_s)
    else:
        srv = start_crest(binary, port, log, cpu_s)
    R.note_cmd("http servers", srv.argv, port=port)
    argv = pinned(cpu_c, client_argv(sc, port, opts))
    R.note_cmd("http", argv, port=port)
    waited = wait_time_wait(tw_limit(opts.http_n_churn)) if not sc.get("k", True) else 0.0
    tw0 = time_wait()
    try:
        c1, us1, y1 = srv.cpu(), srv.user_sys(), R.system_cpu()[0]
        out, wall, ccpu, rc = run_client(argv, os.path.join(R.LOGDIR, f"client-{tag}.log"))
        time.sleep(0.05)      # the server closes the connections: part of the cost
        c2, us2, y2 = srv.cpu(), srv.user_sys(), R.system_cpu()[0]
    finally:
        srv.stop()
    r = PARSE[sc["tool"]](out)
    r.update({"exit": rc, "wall_s": wall, "server_cpu_s": c2 - c1,
              "server_share": (c2 - c1) / wall, "client_share": ccpu / wall,
              "time_wait_before": tw0, "time_wait_after": time_wait(),
              "time_wait_waited_s": waited,
              # the rest of the machine meanwhile (other jobs), in cores
              "others": max(0.0, (y2 - y1) - (c2 - c1) - ccpu) / wall})
    n = r["requests"]
    r["cpu_us_per_req"] = (c2 - c1) / n * 1e6 if n else None
    u, k = us2[0] - us1[0], us2[1] - us1[1]
    # the user-space share of cpu_us_per_req (ticks give the split only)
    r["user_us_per_req"] = (c2 - c1) * u / (u + k) / n * 1e6 if n and u + k > 0 else None
    if r["rps"] is None or rc != 0:
        R.say(f"http {name} {sc['key']}: client exit {rc}: {out[-300:]}")
    return r


def measure_all(opts, R):
    """Every scenario, alternating rounds of crest-http and nginx."""
    binary = crest_binary()
    snap = os.path.join(R.BUILD, "snapshot")
    if binary and os.path.isdir(snap):
        # run a copy beside bench/run's snapshot of libcrest (one build per run)
        shutil.copy2(binary, snap)
        binary = os.path.join(snap, os.path.basename(binary))
    if not binary or not crest_ok(binary):
        R.say("http: samples/crest-http does not serve yet: measuring nginx alone")
        servers = ["nginx"]
    else:
        servers = SERVERS
    cpu_s, cpu_c = cpus()
    res = {"servers": servers, "pinned": {"server": cpu_s, "client": cpu_c},
           "seconds": opts.http_seconds, "n_pipe": opts.http_n_pipe, "n_ab": opts.http_n_ab,
           "n_churn": opts.http_n_churn, "rounds_n": opts.rounds, "scenarios": {},
           "headers": headers(binary if servers == SERVERS else None, R)}
    keys = [k for k in opts.http_scenarios] or [s["key"] for s in SCENARIOS]
    for sc in SCENARIOS:
        if sc["key"] not in keys:
            continue
        R.say(f"http: {sc['title']}: {opts.rounds} rounds x {len(servers)} servers")
        rounds = []
        for r in range(opts.rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            row = {}
            for name in order:
                row[name] = measure(R, name, sc, opts, f"{sc['key']}-{name}-r{r}", binary,
                                    cpu_s, cpu_c)
            rounds.append(row)
            R.say(f"  round {r + 1}: " + ", ".join(
                f"{n} {row[n]['rps'] or 0:,.0f}/s {row[n]['cpu_us_per_req'] or 0:.1f} us/req "
                f"(server {row[n]['server_share']:.0%}, client {row[n]['client_share']:.0%})"
                for n in servers))
        res["scenarios"][sc["key"]] = {"title": sc["title"], "rounds": rounds}
    return res


def crest_ok(binary):
    """Whether crest-http answers GET / (it was a placeholder for a while)."""
    port = free_port()
    try:
        p = subprocess.Popen(crest_argv(binary, port), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    except OSError:
        return False
    try:
        return wait_connect(port, p, timeout=5)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def headers(binary, R):
    """Each server's answer to GET / (curl -si), to show they match."""
    out = {}
    cpu_s, _ = cpus()
    for name in (["crest"] if binary else []) + ["nginx"]:
        port = free_port()
        if name == "nginx":
            srv = start_nginx(port, os.path.join(R.LOGDIR, "nginx-headers"))
        else:
            srv = start_crest(binary, port, os.path.join(R.LOGDIR, "http-headers-crest.log"))
        try:
            r = subprocess.run(["curl", "-si", f"http://{HOST}:{port}/"], capture_output=True,
                               text=True, timeout=10)
            out[name] = re.sub(r"Date: [^\r\n]*", "Date: (now)", r.stdout).replace("\r", "")
        finally:
            srv.stop()
    return out


# ---------------------------------------------------------------------------
# Summary and tables
# ---------------------------------------------------------------------------


def summarize(s, servers, median):
    out = {}
    for name in servers:
        vals = [r[name] for r in s["rounds"] if r.get(name) and r[name].get("rps")]
        lat = {}
        for v in vals:
            for k, x in v["lat"].items():
                lat.setdefault(k, []).append(x)
        out[name] = {"rps": median([v["rps"] for v in vals]),
                     "cpu_us_per_req": median([v["cpu_us_per_req"] for v in vals]),
                     "user_us_per_req": median([v.get("user_us_per_req") for v in vals]),
                     "others": median([v.get("others") for v in vals]),
                     "server_share": median([v["server_share"] for v in vals]),
                     "client_share": median([v["client_share"] for v in vals]),
                     "lat": {k: median(x) for k, x in lat.items()},
                     "errors": sum(v["errors"] for v in vals), "n": len(vals)}
    if "crest" in servers:
        def paired(key, rounds):
            xs = [r["crest"][key] / r["nginx"][key] for r in rounds
                  if r.get("crest") and r.get("nginx") and r["crest"].get(key)
                  and r["nginx"].get(key)]
            return (median(xs), min(xs), max(xs)) if xs else (None, None, None)
        # rounds where other jobs on the VM took under QUIET cores during both runs
        quiet = [r for r in s["rounds"] if r.get("crest") and r.get("nginx")
                 and (r["crest"].get("others") or 0) < QUIET
                 and (r["nginx"].get("others") or 0) < QUIET]
        out["ratio"] = {"rps": paired("rps", s["rounds"]),
                        "cpu": paired("cpu_us_per_req", s["rounds"]),
                        "rps_quiet": paired("rps", quiet),
                        "cpu_quiet": paired("cpu_us_per_req", quiet), "n_quiet": len(quiet)}
    allv = [r[n] for r in s["rounds"] for n in servers if r.get(n)]
    out["others"] = (median([v.get("others") for v in allv]),
                     max((v.get("others") or 0) for v in allv) if allv else None)
    return out


def lat_text(tool, lat):
    def f(x):
        if x is None:
            return "–"
        return f"{x / 1000:.2f} ms" if x >= 1000 else f"{x:.0f} us"
    if tool == "h2load":
        return f"mean {f(lat.get('mean'))}, sd {f(lat.get('sd'))}, max {f(lat.get('max'))}"
    if tool == "ab":
        return " / ".join(f"{lat[k] / 1000:.0f}" for k in ("p50", "p90", "p99") if k in lat) + " ms"
    return " / ".join(f(lat.get(k)) for k in ("p50", "p90", "p99"))


def ratio_text(t, digits=2):
    med, lo, hi = t
    if med is None:
        return "–"
    return f"**{med:.{digits}f}** ({lo:.{digits}f}–{hi:.{digits}f})"


def tables(res, median):
    L = []
    w = L.append
    servers = res["servers"]
    tool = {s["key"]: s["tool"] for s in SCENARIOS}
    sums = {k: summarize(s, servers, median) for k, s in res["scenarios"].items()}
    keep = [k for k in sums if k != "churn"]
    if keep:
        w("### HTTP keep-alive: GET /, 14-byte body")
        w("")
        w("| client | server | requests/s | latency (as the tool prints it) | server CPU us/request "
          "| of which user space | server CPU (% of a core) | client CPU (% of a core) | errors |")
        w("|---|---|---:|---|---:|---:|---:|---:|---:|")
        for k in keep:
            for name in servers:
                x = sums[k][name]
                w(f"| {res['scenarios'][k]['title']} | {LABEL[name]} | {x['rps'] or 0:,.0f} "
                  f"| {lat_text(tool[k], x['lat'])} | {x['cpu_us_per_req'] or 0:.2f} "
                  f"| {x['user_us_per_req'] or 0:.2f} "
                  f"| {x['server_share'] or 0:.0%} | {x['client_share'] or 0:.0%} | {x['errors']} |")
        w("")
        w("Latency columns: wrk p50 / p90 / p99 (`--latency`); h2load's \"time for request\" "
          "(it prints no percentiles); ab's p50 / p90 / p99 in whole milliseconds.")
        w("")
        if "crest" in servers:
            w("Paired ratios, crest-http / nginx per round (median, min–max over rounds); "
              f"the quiet rounds are those where other jobs on the VM used under {QUIET} of a "
              "core during both runs (the rest of the machine's CPU, from /proc/stat, less "
              "server and client):")
            w("")
            w("| client | requests/s ratio | CPU per request ratio | quiet rounds: requests/s "
              "| quiet rounds: CPU per request | other jobs, cores (median, max) |")
            w("|---|---|---|---|---|---|")
            for k in keep:
                rt = sums[k]["ratio"]
                oth = sums[k]["others"]
                w(f"| {res['scenarios'][k]['title']} | {ratio_text(rt['rps'])} "
                  f"| {ratio_text(rt['cpu'])} | {ratio_text(rt['rps_quiet'])} "
                  f"| {ratio_text(rt['cpu_quiet'])} ({rt['n_quiet']} round{'s' if rt['n_quiet'] != 1 else ''}) "
                  f"| {oth[0] or 0:.2f}, {oth[1] or 0:.2f} |")
            w("")
            w("Why, in syscalls ([http.md](http.md), `bench/http-syscalls`): with keep-alive both "
              "servers make the same three per request (epoll_wait, a read, a write), so their "
              "CPU differs only by user space; pipelined, crest-http answers all the requests "
              "of one read with one send, nginx with one writev per request.")
            w("")
    if "churn" in sums:
        w("### Connection churn: ab without -k (one connection per request)")
        w("")
        w("| server | connections/s | server CPU us/connection | of which user space "
          "| server CPU (% of a core) | client CPU (% of a core) | ab p50 / p90 / p99 | errors "
          "| TIME_WAIT after (max) |")
        w("|---|---:|---:|---:|---:|---:|---|---:|---:|")
        rounds = res["scenarios"]["churn"]["rounds"]
        for name in servers:
            x = sums["churn"][name]
            tw = max((r[name].get("time_wait_after") or 0) for r in rounds if r.get(name))
            w(f"| {LABEL[name]} | {x['rps'] or 0:,.0f} | {x['cpu_us_per_req'] or 0:.2f} "
              f"| {x['user_us_per_req'] or 0:.2f} | {x['server_share'] or 0:.0%} | {x['client_share'] or 0:.0%} "
              f"| {lat_text('ab', x['lat'])} | {x['errors']} | {tw:,} |")
        w("")
        if "crest" in servers:
            rt = sums["churn"]["ratio"]
            w(f"Paired ratios crest-http / nginx: connections/s {ratio_text(rt['rps'])}, "
              f"CPU per connection {ratio_text(rt['cpu'])}; in the {rt['n_quiet']} quiet rounds "
              f"{ratio_text(rt['rps_quiet'])} and {ratio_text(rt['cpu_quiet'])}. Other jobs "
              f"used {sums['churn']['others'][0] or 0:.2f} of a core (median; max "
              f"{sums['churn']['others'][1] or 0:.2f}). Why a connection costs crest-http more: "
              "[http.md](http.md) (9 syscalls per connection against nginx's 7: an accept4 that finds the queue empty, and latency insight's TCP_INFO).")
            w("")
    return "\n".join(L), sums


def targets(res, median):
    """The issue's targets at 100 keep-alive connections (wrk)."""
    out = []
    sc = res["scenarios"].get(TARGET_KEY)
    if not sc or "crest" not in res["servers"]:
        return out
    s = summarize(sc, res["servers"], median)
    rps, cpu = s["ratio"]["rps"][0], s["ratio"]["cpu"][0]
    share = s["crest"]["server_share"], s["nginx"]["server_share"]
    client = s["crest"]["client_share"], s["nginx"]["client_share"]
    capped = min(client) >= 0.9
    why = ("the client sets the rate" if capped else
           f"neither is saturated: other jobs on the VM took {s['others'][0]:.2f} of a core "
           "(median)")
    quiet = (f"; in the {s['ratio']['n_quiet']} quiet round(s) {s['ratio']['rps_quiet'][0]:.2f}x"
             if s["ratio"]["n_quiet"] else "")
    out.append({"target": "HTTP, wrk -c100: at least 1.2x nginx's requests/s",
                "measured": f"{rps:.2f}x{quiet}, with wrk at {client[0]:.0%} of its core against "
                            f"crest-http and {client[1]:.0%} against nginx (the servers at "
                            f"{share[0]:.0%} and {share[1]:.0%}): {why}. "
                            f"With a full core each, the rates would be in the inverse ratio "
                            f"of CPU per request: {1 / cpu:.2f}x",
                "met": rps >= 1.2})
    out.append({"target": "HTTP, wrk -c100: at most 0.8x nginx's CPU per request",
                "measured": f"{cpu:.2f}x ({s['crest']['cpu_us_per_req']:.2f} vs "
                            f"{s['nginx']['cpu_us_per_req']:.2f} us; user space "
                            f"{s['crest']['user_us_per_req']:.2f} vs "
                            f"{s['nginx']['user_us_per_req']:.2f} us: the kernel's part, the "
                            "same syscalls for both (docs/http.md), is most of it)",
                "met": cpu <= 0.8})
    return out


def section(data, R):
    """The block between the markers: method, tables, targets, commands."""
    res = data["http"]
    o = data["options"]
    L = [BEGIN, "## HTTP: crest-http against nginx (issue 15)", ""]
    w = L.append
    cs, cc = res["pinned"]["server"], res["pinned"]["client"]
    w(f"Measured {data['date']} by `bench/run{' --quick' if o.get('quick') else ''} --only http` "
      f"(or the full run): {res['rounds_n']} alternating rounds, each server started fresh for "
      f"each run; wrk runs {res['seconds']} s, h2load {res['n_pipe']:,} requests, ab -k "
      f"{res['n_ab']:,}, ab without -k {res['n_churn']:,} connections; results "
      f"`bench/results/{data['results_file']}`.")
    w("")
    w("- crest-http: `samples/crest-http --port PORT -q --threads 1` (one loop); nginx: "
      "Debian's nginx-light, `worker_processes 1`, `access_log off`, `keepalive_timeout 75s`, "
      "`keepalive_requests 1000000` (nginx's default of 1,000 would close each wrk connection "
      "every 1,000 requests; crest-http does not), `location = / { return 200 "
      "\"Hello, World!\\n\"; }` with `default_type text/plain`, started by bench/ with its own "
      "prefix in a temporary directory and stopped by its PID. Same status, body and "
      "Content-Type; the heads differ in the `Server:` value and in nginx's `Connection: "
      "keep-alive`, which crest-http leaves out for HTTP/1.1 (the default there): 136 bytes "
      "per reply from crest-http, 155 from nginx (see below).")
    if cs is not None:
        w(f"- Pinned with taskset: the server (nginx's master and worker too) on CPU {cs}, the "
          f"client on CPU {cc}, so neither steals the other's core; each can use at most 100% of "
          "one core.")
    else:
        w("- Not pinned (fewer than two CPUs or no taskset).")
    w("- Server CPU: the CPU time of the server's processes (nginx's master and worker), summed "
      "over their threads from `/proc/PID/task/TID/schedstat` (nanoseconds: the time that "
      "utime+stime split in 10 ms ticks), from just before the client starts to just after it "
      "exits, divided by the requests it completed; \"of which user space\" splits it by "
      "utime/stime (`/proc/PID/stat`). \"% of a core\": that CPU over the client's wall time; the "
      "client's own from wait4's rusage. A client near 100% is the bottleneck: then requests/s "
      "is the client's rate and cannot separate the servers, and CPU per request is the figure "
      "to compare.")
    w("- Ratios are paired: crest-http's figure over nginx's in the same round, median over "
      "rounds (min–max).")
    w("")
    text, sums = tables(res, R.median)
    w(text)
    tg = targets(res, R.median)
    if tg:
        w("Targets (issue 15), 100 keep-alive connections under wrk:")
        w("")
        w("| target | measured | met |")
        w("|---|---|---|")
        for t in tg:
            w(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
        w("")
    churn = res["scenarios"].get("churn")
    if churn:
        w("TIME_WAIT: every run uses a fresh server port, so no 4-tuple repeats across runs, and "
          f"each churn run opens {res['n_churn']:,} connections, fewer than the "
          "28,232 ephemeral ports (32768-60999): no tuple repeats within a run either. The server "
          "closes first (HTTP/1.0 without keep-alive), so its side holds the TIME_WAIT sockets; "
          "before each churn run bench/ waits until `ss -s` shows fewer than "
          f"{tw_limit(res['n_churn']):,} TIME_WAIT sockets (so that a run's worth stays under "
          "net.ipv4.tcp_max_tw_buckets, past which the kernel drops them with a warning); the "
          "counts before and after each run, and the wait, are in the results (`time_wait_*`).")
        w("")
    for name, h in res.get("headers", {}).items():
        w(f"<details><summary>{LABEL[name]}: curl -si http://127.0.0.1:PORT/</summary>")
        w("")
        w("```")
        w(h.rstrip())
        w("```")
        w("")
        w("</details>")
        w("")
    w("<details><summary>nginx.conf (DIR: the run's directory under bench/results/)</summary>")
    w("")
    w("```nginx")
    w(NGINX_CONF.format(dir="DIR", host=HOST, port="PORT").rstrip())
    w("```")
    w("")
    w("</details>")
    w("")
    cmds = [c for s, c in data.get("commands", []) if s in ("http", "http servers")]
    if cmds:
        w("<details><summary>the commands</summary>")
        w("")
        w("```sh")
        seen = []
        for c in cmds:
            c = re.sub(r"\S*/nginx-[\w.-]+-r\d+", "DIR", c)
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
    if data.get("http"):
        w(section(data, R))
        w("")


def put_marked(path, begin, end, block):
    """Replace what lies between the markers begin..end of path with block
    (appended when the markers are not there yet).  Shared with
    proxy_bench.py."""
    text = open(path).read() if os.path.exists(path) else ""
    m = re.search(re.escape(begin.split(" (")[0]) + r".*?" + re.escape(end), text, re.S)
    text = text[:m.start()] + block + text[m.end():] if m else text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def write_section(data, path, R):
    """Put the block between the markers of docs/performance.md."""
    put_marked(path, BEGIN, END, section(data, R))


def set_options(opts):
    q = opts.quick
    opts.http_seconds = 1 if q else 3
    opts.http_n_pipe = 200000 if q else 600000
    opts.http_n_ab = 50000 if q else 200000
    opts.http_n_churn = 5000 if q else 10000
    opts.http_scenarios = [s for s in (getattr(opts, "scenarios", None) or [])
                           if s in {x["key"] for x in SCENARIOS}]


def main_only(opts, R):
    """bench/run --only http: measure, keep the JSON, write the block.
    Needs crest built and nginx, wrk, h2load, ab; not bench/setup's peers."""
    import datetime
    import json
    for tool in ("nginx", "wrk", "h2load", "ab", "curl"):
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
    data["http"] = measure_all(opts, R)
    data["commands"] = R.COMMANDS
    data["elapsed_s"] = time.monotonic() - t0
    with open(os.path.join(R.RESULTS, stamp + ".json"), "w") as f:
        json.dump(data, f, indent=1)
    write_section(data, opts.out, R)
    print(tables(data["http"], R.median)[0])
    for t in targets(data["http"], R.median):
        R.say(f"target: {t['target']}: {t['measured']}: {'met' if t['met'] else 'MISSED'}")
    R.say(f"done in {data['elapsed_s']:.0f} s: wrote {R.rel(opts.out)} (between the http "
          f"markers); results in bench/results/{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit("bench/http_bench.py is a module of bench/run: run `bench/run --only http`")
