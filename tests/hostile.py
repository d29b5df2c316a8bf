#!/usr/bin/env python3
"""hostile.py - hostile and broken peers against the real sample servers.

Each scenario starts its own crest-echo, crest-framed or crest-chat (port 0,
--stats 0.1, per-connection lines on), misbehaves at it from here, and
checks that:

  - the server survives (it answers SIGTERM with exit 0 and its report);
  - other connections keep getting correct replies meanwhile (a prober
    thread does verified round trips on a few connections of its own for
    the whole scenario);
  - each bad connection is closed with the right reason: the server prints
    "conn 127.0.0.1:PORT closed: REASON" per connection, matched here by the
    client's own port, and the final report's close-reason counts agree;
  - fds and buffer bytes return to their baseline afterwards: the --stats
    line ("F fds open", crest's fd registry; "B buffer bytes in use", the
    loops' buffer pools) and the number of entries in /proc/PID/fd, before
    and after, and "0 fds leaked" at exit.

No latency thresholds: every check is on counts, bytes and reasons.  Time
only bounds the waits (socket timeouts, polls), generously.  The CPU check
of the fd-exhaustion scenario is a count too: CPU seconds the server used
(/proc/PID/stat) over an interval, which must be a small fraction of it.

Clients are stdlib Python on 127.0.0.1 only, every loop bounded, every
socket with a timeout.

    tests/hostile.py [--bindir DIR] [--list] [SCENARIO...]

Run by `make check` through tests/hostile.sh.  Exit 0 if every scenario
passed, 1 otherwise.
"""

import argparse
import errno
import os
import random
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20
SLOW = 1  # waits for the server are stretched this much (--wrap: valgrind)


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def now():
    return time.monotonic()


# --------------------------------------------------------------------------
# The server under test
# --------------------------------------------------------------------------

STATS_RE = re.compile(
    r"^stats: (\d+) conns, .*?, ([\d.]+) MB/s in, ([\d.]+) MB/s out, "
    r"(\d+) fds open, (\d+) buffer bytes in use$")
# "conn 127.0.0.1:PORT closed: REASON (ERRNO)", or "conn closed: ..." if the
# server could not name the peer (counted: the resets scenario wants none)
CLOSED_RE = re.compile(r"^conn(?: 127\.0\.0\.1:(\d+))? closed: (.+?)(?: \((.*)\))?$")
OPENED_RE = re.compile(r"^conn 127\.0\.0\.1:(\d+) open$")


class Server:
    """One sample server process and what it has printed so far."""

    count = 0

    def __init__(self, ctx, name, args, nofile=None):
        Server.count += 1
        self.name = name
        self.log_path = os.path.join(ctx.workdir, "%s-%d.log" % (name, Server.count))
        self.logf = open(self.log_path, "wb")
        cmd = ctx.wrap + [os.path.join(ctx.bindir, name), "--port", "0", "--stats", "0.1"] + args

        def limit_fds():
            if nofile:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=limit_fds)
        self.pid = self.proc.pid
        self.offset = 0
        self.partial = b""
        self.stats = []          # (conns, mb_in, mb_out, fds, buf) per line
        self.closed = {}         # client port -> reason (the latest)
        self.closed_count = {}   # reason -> count, from the per-connection lines
        self.opened = 0
        self.anonymous_closes = 0
        self.port = None
        deadline = now() + 10 * SLOW
        while now() < deadline and self.port is None:
            self.update()
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        check(self.port is not None, "%s did not start:\n%s" % (name, self.tail()))
        # Baseline: the first stats line with no connection.
        self.base = self.wait_stats(lambda s: s[0] == 0, "no connections at start")
        self.base_proc_fds = self.proc_fds()

    # ---- reading the log ----
    def update(self):
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace")
            m = STATS_RE.match(line)
            if m:
                self.stats.append((int(m.group(1)), float(m.group(2)), float(m.group(3)),
                                   int(m.group(4)), int(m.group(5))))
                continue
            m = CLOSED_RE.match(line)
            if m:
                reason = m.group(2)
                if m.group(1):
                    self.closed[int(m.group(1))] = reason
                else:
                    self.anonymous_closes += 1
                self.closed_count[reason] = self.closed_count.get(reason, 0) + 1
                continue
            if OPENED_RE.match(line):
                self.opened += 1
                continue
            if line.startswith("listening on ") and self.port is None:
                self.port = int(line.rsplit(":", 1)[1])

    def tail(self, n=15):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        keep = [l for l in lines if not l.startswith("stats:")]
        return "\n".join(["    | " + l for l in keep[-n:]] +
                         ["    | " + l for l in [x for x in lines if x.startswith("stats:")][-2:]])

    def wait_stats(self, pred, what, timeout=15.0):
        """Wait for a stats line printed after this call that satisfies pred."""
        self.update()
        seen = len(self.stats)
        deadline = now() + timeout * SLOW
        while now() < deadline:
            self.update()
            for s in self.stats[seen + 1:]:  # skip one: it may predate the call
                if pred(s):
                    return s
            check(self.proc.poll() is None,
                  "%s exited (status %s) while waiting for: %s\n%s" %
                  (self.name, self.proc.returncode, what, self.tail()))
            time.sleep(0.05)
        last = self.stats[-1] if self.stats else None
        raise Fail("%s: timed out waiting for %s; last stats (conns, MB/s in, MB/s out, fds, "
                   "buffer bytes): %s\n%s" % (self.name, what, last, self.tail()))

    def wait_closed(self, ports, timeout=15.0):
        """Wait until the server has printed a close line for every port."""
        deadline = now() + timeout * SLOW
        while now() < deadline:
            self.update()
            if all(p in self.closed for p in ports):
                return {p: self.closed[p] for p in ports}
            time.sleep(0.05)
        missing = [p for p in ports if p not in self.closed]
        raise Fail("%s: no close line for %d connection(s), e.g. port %s\n%s" %
                   (self.name, len(missing), missing[:3], self.tail()))

    def alive(self):
        return self.proc.poll() is None

    # ---- /proc ----
    def proc_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def sanitized(self):
        """Built with ASan or TSan: their allocators keep freed memory in
        quarantine, so RSS says little about what the server holds."""
        with open("/proc/%d/maps" % self.pid) as f:
            return any(n in f.read() for n in ("libasan", "libtsan"))

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # after "pid (comm)": state is field 3, utime 14, stime 15
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    # ---- the end ----
    def settle(self, extra_conns=0):
        """Wait until only extra_conns connections are open and the fds and
        buffer bytes are back at the baseline; returns a description."""
        base_fds = self.base[3]
        s = self.wait_stats(
            lambda s: s[0] == extra_conns and s[4] == 0 and s[3] == base_fds + extra_conns,
            "connections, fds and buffer bytes back to the baseline")
        deadline = now() + 5
        while self.proc_fds() != self.base_proc_fds + extra_conns and now() < deadline:
            time.sleep(0.05)
        pf = self.proc_fds()
        check(pf == self.base_proc_fds + extra_conns,
              "/proc/%d/fd: %d entries, baseline %d (+%d)" %
              (self.pid, pf, self.base_proc_fds, extra_conns))
        return ("fds %d -> %d (registry), %d -> %d (/proc), buffer bytes %d -> %d" %
                (base_fds, s[3] - extra_conns, self.base_proc_fds, pf - extra_conns,
                 self.base[4], s[4]))

    def wind_down(self, prober):
        """The end of a scenario: the prober's summary, the settled fds and
        buffers (settle()), and the final report (stop())."""
        probe = prober.finish()
        fds = self.settle()
        return probe, fds, self.stop()

    def stop(self):
        """SIGTERM; check the exit status and the final report; return it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=20 * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Fail("%s did not exit after SIGTERM\n%s" % (self.name, self.tail()))
        self.logf.close()
        self.update()
        with open(self.log_path, "rb") as f:
            text = f.read().decode(errors="replace")
        rep = {"rc": rc, "reasons": {}}
        m = re.search(r"connections: (\d+) served, (\d+) refused \(--max-conns\), (\d+) dropped "
                      r"\(out of fds\), (\d+) accept errors", text)
        if m:
            rep["served"], rep["refused"], rep["dropped"], rep["accept_errors"] = \
                map(int, m.groups())
        m = re.search(r"close reasons: (.*)", text)
        if m and m.group(1) != "none":
            for item in m.group(1).split(", "):
                k, v = item.rsplit(" ", 1)
                rep["reasons"][k] = int(v)
        m = re.search(r"fds: (\d+) opened, (\d+) closed, peak (\d+)", text)
        if m:
            rep["fds_opened"], rep["fds_closed"], rep["fds_peak"] = map(int, m.groups())
        m = re.search(r"buffer bytes outstanding: (\d+)", text)
        rep["buffer_bytes"] = int(m.group(1)) if m else None
        m = re.search(r"reading paused (\d+) time", text)
        rep["paused"] = int(m.group(1)) if m else 0
        rep["clean"] = bool(re.search(r"^  0 fds leaked$", text, re.M))
        check(rc == 0, "%s: exit status %s after SIGTERM (%s)\n%s" %
              (self.name, rc, "killed by signal %d" % -rc if rc < 0 else "see its report",
               self.tail()))
        check(rep["clean"] and rep["buffer_bytes"] == 0,
              "%s: the report shows a leak\n%s" % (self.name, self.tail()))
        check(rep.get("fds_opened") == rep.get("fds_closed"),
              "%s: fds opened %s != closed %s" % (self.name, rep.get("fds_opened"),
                                                  rep.get("fds_closed")))
        return rep

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------

def connect(port, timeout=5.0, rcvbuf=None, linger0=False):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if linger0:
        set_linger0(s)
    s.settimeout(timeout)
    s.connect((HOST, port))
    return s


def set_linger0(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def local_port(s):
    return s.getsockname()[1]


def recv_exact(s, n, timeout=10.0):
    s.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = s.recv(min(n - len(buf), 1 << 20))
        except socket.timeout:
            raise Fail("no data for %.0f s after %d of %d bytes" % (timeout, len(buf), n))
        if not chunk:
            raise Fail("EOF after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def recv_to_eof(s, timeout=10.0, limit=1 << 30):
    """Everything until EOF; (bytes, 'eof' | 'reset' | 'timeout')."""
    s.settimeout(timeout)
    buf = bytearray()
    try:
        while len(buf) < limit:
            chunk = s.recv(1 << 20)
            if not chunk:
                return bytes(buf), "eof"
            buf += chunk
    except ConnectionResetError:
        return bytes(buf), "reset"
    except socket.timeout:
        return bytes(buf), "timeout"
    return bytes(buf), "limit"


def closed_by_peer(s, timeout=5.0):
    """Wait for the server to close s: 'eof', 'reset', or None if it did not
    (data that arrives first is read and dropped)."""
    deadline = now() + timeout
    s.settimeout(0.2)
    while now() < deadline:
        try:
            if not s.recv(65536):
                return "eof"
        except ConnectionResetError:
            return "reset"
        except socket.timeout:
            pass
    return None


def knock(port, timeout=5.0):
    """Connect to a server that must refuse us: 'eof' or 'reset' when it
    closes the connection (the RST may even beat connect() back), None if
    it did not."""
    try:
        s = connect(port)
    except ConnectionResetError:
        return "reset"
    try:
        return closed_by_peer(s, timeout)
    finally:
        s.close()


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


class Proto:
    """Requests and their expected replies for each server mode."""

    def __init__(self, kind):
        self.kind = kind

    def request(self, rng, tag):
        if self.kind == "raw":
            body = rng.randbytes(rng.randint(1, 1500))
            return body, body
        if self.kind == "line":
            # within every --max-line used here (100)
            body = b"probe %d %s" % (tag % 10000, rng.randbytes(rng.randint(0, 40)).hex().encode())
            return body + b"\n", b"echo: " + body + b"\n"
        body = rng.randbytes(rng.randint(0, 1000))  # within every --max-frame used here
        return frame(body), frame(body)


class Prober(threading.Thread):
    """Verified round trips on a few connections of its own, for the whole
    scenario: the "other connections keep being served" check."""

    def __init__(self, port, kind, nconns=3, interval=0.01):
        super().__init__(daemon=True)
        self.port, self.proto, self.nconns, self.interval = port, Proto(kind), nconns, interval
        self.rng = random.Random(port)
        self.ok = 0
        self.errors = []
        self.halt = threading.Event()
        self.ready = threading.Event()
        self.socks = []

    def run(self):
        try:
            self.socks = [connect(self.port) for _ in range(self.nconns)]
        except OSError as e:
            self.errors.append("connect: %s" % e)
        self.ready.set()
        i = 0
        while not self.halt.is_set() and not self.errors:
            s = self.socks[i % self.nconns]
            req, rep = self.proto.request(self.rng, i)
            try:
                s.sendall(req)
                got = recv_exact(s, len(rep), timeout=10)
                if got != rep:
                    self.errors.append("round trip %d: wrong reply" % i)
                else:
                    self.ok += 1
            except (OSError, Fail) as e:
                self.errors.append("round trip %d: %s" % (i, e))
            i += 1
            self.halt.wait(self.interval)

    def start(self):
        super().start()
        self.ready.wait(10)
        return self

    def finish(self, min_ok=5):
        # a few more round trips after the hostile part, and min_ok in all
        want = max(min_ok, self.ok + 3)
        deadline = now() + 15
        while self.ok < want and not self.errors and self.is_alive() and now() < deadline:
            time.sleep(0.01)
        self.halt.set()
        self.join(30)
        for s in self.socks:
            s.close()
        check(not self.errors, "prober: %s" % "; ".join(self.errors[:3]))
        check(self.ok >= min_ok, "prober: only %d round trips" % self.ok)
        return "%d verified round trips on %d other connections meanwhile" % (self.ok,
                                                                               self.nconns)


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------

SCENARIOS = []


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


def expect_reasons(srv, ports, reason):
    got = srv.wait_closed(ports)
    wrong = {p: r for p, r in got.items() if r != reason}
    check(not wrong, "expected '%s' for all %d connections, got %s" %
          (reason, len(ports), sorted(set(wrong.values()))))


@scenario
def slowloris(ctx, out):
    """One byte every 200 ms, never finishing a message.  --idle-timeout 1
    cannot catch it (bytes keep coming, with a 5x margin for a loaded
    machine); --read-timeout 2 does."""
    for name, args, kind, header in (
            ("crest-echo", ["--line"], "line", b""),
            ("crest-framed", ["--max-frame", "1000"], "frame", struct.pack(">I", 900))):
        srv = Server(ctx, name, args + ["--idle-timeout", "1", "--read-timeout", "2"])
        try:
            prober = Prober(srv.port, kind).start()
            n = 10
            socks = [connect(srv.port) for _ in range(n)]
            ports = [local_port(s) for s in socks]
            stream = header + b"x" * 100000
            sent = [0] * n
            closed = [None] * n
            t0 = now()
            while now() - t0 < 10 and None in closed:
                for i, s in enumerate(socks):
                    if closed[i]:
                        continue
                    r, _, _ = select.select([s], [], [], 0)
                    if r:
                        try:
                            data = s.recv(100)
                            closed[i] = "eof" if not data else None
                            check(not data, "%s: got a reply to an unfinished message" % name)
                        except ConnectionResetError:
                            closed[i] = "reset"
                        continue
                    try:
                        s.send(stream[sent[i]:sent[i] + 1])
                        sent[i] += 1
                    except OSError:
                        closed[i] = "send failed"
                time.sleep(0.2)
            elapsed = now() - t0
            check(None not in closed, "%s: %d of %d slowloris connections still open after "
                  "%.1f s" % (name, closed.count(None), n, elapsed))
            expect_reasons(srv, ports, "read timeout")
            for s in socks:
                s.close()
            probe, fds, rep = srv.wind_down(prober)
            check(rep["reasons"].get("read timeout") == n and "idle timeout" not in rep["reasons"],
                  "%s: report close reasons %s" % (name, rep["reasons"]))
            out("%s %s: %d connections trickling 1 byte/200 ms (%d-%d bytes each) all closed "
                "by 'read timeout' 2 s (idle timeout 1 s never fired; report: read timeout %d); "
                "%s; %s" % (name, " ".join(args), n, min(sent), max(sent),
                            rep["reasons"]["read timeout"], probe, fds))
        finally:
            srv.kill()


@scenario
def oversized(ctx, out):
    """Frames above --max-frame (0xFFFFFFFF too), lines above --max-line;
    frames of exactly the limit and zero-length frames are served."""
    srv = Server(ctx, "crest-framed", ["--max-frame", "1000"])
    try:
        prober = Prober(srv.port, "frame").start()
        # Valid edge cases first, on one connection: zero-length frames
        # (pipelined) and a frame of exactly the limit.
        s = connect(srv.port)
        reqs = frame(b"") * 50 + frame(b"L" * 1000) + frame(b"") + frame(b"a")
        s.sendall(reqs)
        check(recv_exact(s, len(reqs)) == reqs, "zero-length / max-size frames: wrong replies")
        s.close()
        bad_ports = []
        lengths = [1001, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
        for L in lengths:
            s = connect(srv.port)
            bad_ports.append(local_port(s))
            # a valid frame first: its reply must still come back
            s.sendall(frame(b"before") + struct.pack(">I", L) + b"z" * 100)
            got, how = recv_to_eof(s, timeout=10)
            check(how in ("eof", "reset"), "length 0x%x: not closed (%s)" % (L, how))
            check(frame(b"before").startswith(got), "length 0x%x: wrong reply %r" % (L, got[:20]))
            s.close()
        expect_reasons(srv, bad_ports, "too large")
        probe, fds, rep = srv.wind_down(prober)
        check(rep["reasons"].get("too large") == len(lengths),
              "framed report close reasons %s" % rep["reasons"])
        out("crest-framed --max-frame 1000: lengths %s each closed 'too large' (frame too large) (report: "
            "%d); 50 zero-length frames and a 1000-byte frame echoed; %s; %s" %
            (", ".join("0x%X" % L for L in lengths), rep["reasons"]["too large"], probe, fds))
    finally:
        srv.kill()

    srv = Server(ctx, "crest-echo", ["--line", "--max-line", "100"])
    try:
        prober = Prober(srv.port, "line").start()
        s = connect(srv.port)
        # As Go's scanner, a "\r" before the "\n" counts against the limit.
        ok = b"a" * 100 + b"\n" + b"b" * 99 + b"\r\n" + b"\n"
        s.sendall(ok)
        want = b"echo: " + b"a" * 100 + b"\n" + b"echo: " + b"b" * 99 + b"\n" + b"echo: \n"
        check(recv_exact(s, len(want)) == want, "lines of exactly --max-line: wrong replies")
        s.close()
        bad_ports = []
        cases = [b"c" * 101 + b"\n", b"d" * 102, b"e" * 100 + b"\r\n", b"f" * 4 * MiB]
        for data in cases:
            s = connect(srv.port)
            bad_ports.append(local_port(s))
            try:
                s.sendall(b"first\n" + data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server closed while the 4 MiB line was going out
            got, how = recv_to_eof(s, timeout=10)
            check(how in ("eof", "reset"), "a %d-byte line: not closed (%s)" % (len(data), how))
            check(b"echo: first\n".startswith(got), "wrong reply before the long line: %r" % got)
            s.close()
        expect_reasons(srv, bad_ports, "too large")
        probe, fds, rep = srv.wind_down(prober)
        check(rep["reasons"].get("too large") == len(cases),
              "echo --line report close reasons %s" % rep["reasons"])
        out("crest-echo --line --max-line 100: lines of 101, 100+CR, 102 (no newline) and "
            "4 MiB bytes each closed 'too large' (line too long) (report: %d); a 100-byte line, a 99-byte "
            "line + CRLF and an empty line answered; %s; %s" %
            (rep["reasons"]["too large"], probe, fds))
    finally:
        srv.kill()


def model_framed(data, max_frame):
    """The replies crest-framed owes for this byte stream, and whether it
    must close the connection as too large."""
    out = bytearray()
    i = 0
    while len(data) - i >= 4:
        (n,) = struct.unpack(">I", data[i:i + 4])
        if n > max_frame:
            return bytes(out), True
        if len(data) - i - 4 < n:
            break
        out += data[i:i + 4 + n]
        i += 4 + n
    return bytes(out), False


@scenario
def garbage(ctx, out):
    """Random bytes to crest-framed (half of it structured so that some
    streams stay valid), sent in random splits; every reply is checked
    against a model of the framing.  And a frame whose header arrives but
    whose payload never does: --read-timeout closes it."""
    max_frame = 1000
    srv = Server(ctx, "crest-framed", ["--max-frame", str(max_frame), "--read-timeout", "1"])
    try:
        prober = Prober(srv.port, "frame").start()
        rng = random.Random(ctx.seed)
        n = 60
        too_large_ports, eof_ports, total = [], [], 0
        for k in range(n):
            data = bytearray()
            for _ in range(rng.randint(1, 12)):
                if rng.random() < 0.5:
                    data += frame(rng.randbytes(rng.randint(0, max_frame)))
                else:
                    data += rng.randbytes(rng.randint(1, 64))
            if k % 3 == 0:  # pure noise
                data = bytearray(rng.randbytes(rng.randint(1, 8192)))
            data = bytes(data)
            want, too_large = model_framed(data, max_frame)
            # complete the last frame if it is partial, so that an honest
            # peer's close ends the stream cleanly (no read timeout)
            rest = len(data) - len(want)
            if not too_large and rest:
                if rest >= 4:
                    (m,) = struct.unpack(">I", data[len(want):len(want) + 4])
                    data += b"\0" * (m - (rest - 4))
                else:
                    data += b"\0" * (4 - rest)
                want, too_large = model_framed(data, max_frame)
                if not too_large and len(want) != len(data):
                    data = data[:len(want)]
            s = connect(srv.port)
            port = local_port(s)
            i = 0
            try:
                while i < len(data):
                    j = min(len(data), i + rng.randint(1, 3000))
                    s.sendall(data[i:j])
                    i = j
                s.shutdown(socket.SHUT_WR)
            except OSError as e:  # EPIPE, ECONNRESET, ENOTCONN (shutdown after a reset)
                check(too_large, "garbage stream %d: %s but the model says valid" % (k, e))
            got, how = recv_to_eof(s, timeout=10)
            total += len(data)
            if too_large:
                # replies may be cut short by an RST (unread input on close)
                check(want.startswith(got), "garbage stream %d: reply is not a prefix of the "
                      "model's" % k)
                too_large_ports.append(port)
            else:
                check(how == "eof" and got == want, "garbage stream %d: %d of %d reply bytes, "
                      "%s" % (k, len(got), len(want), how))
                eof_ports.append(port)
            s.close()
        expect_reasons(srv, too_large_ports, "too large")
        expect_reasons(srv, eof_ports, "peer EOF")

        # Truncated: a header announcing 500 bytes, 100 of them, then nothing.
        s = connect(srv.port)
        tport = local_port(s)
        s.sendall(struct.pack(">I", 500) + b"t" * 100)
        how = closed_by_peer(s, timeout=10)
        check(how is not None, "truncated frame: the server did not close it")
        expect_reasons(srv, [tport], "read timeout")
        s.close()
        probe, fds, rep = srv.wind_down(prober)
        check(rep["reasons"].get("too large") == len(too_large_ports) and
              rep["reasons"].get("read timeout") == 1,
              "framed report close reasons %s" % rep["reasons"])
        out("crest-framed: %d garbage streams (%d bytes, seed %d, random splits): %d closed "
            "'too large' (frame too large), %d answered exactly as the model says then 'peer EOF'; a frame "
            "with 100 of 500 payload bytes closed by 'read timeout'; %s; %s" %
            (n, total, ctx.seed, len(too_large_ports), len(eof_ports), probe, fds))
    finally:
        srv.kill()


def slow_writer(port, pattern, cap, rcvbuf=8192):
    """Send pattern bytes without ever reading until the send blocks for a
    second (or cap bytes went out).  Returns (socket, bytes sent)."""
    s = connect(port, rcvbuf=rcvbuf)
    s.setblocking(False)
    sent = 0
    while sent < cap:
        _, w, _ = select.select([], [s], [], 1.0)
        if not w:
            break
        try:
            off = sent % len(pattern)
            sent += s.send(pattern[off:off + 65536])
        except BlockingIOError:
            pass
    return s, sent


@scenario
def slow_reader(ctx, out):
    """Clients that pipeline and never read: the server's output queue stops
    at the high watermark (1 MiB), it stops reading those connections, its
    buffer bytes and RSS stay bounded; reading the replies afterwards
    returns every byte, in order."""
    for name, args, kind in (("crest-echo", [], "raw"),
                             ("crest-framed", ["--max-frame", "64K"], "frame")):
        srv = Server(ctx, name, args)
        try:
            prober = Prober(srv.port, kind, interval=0.02).start()
            rss0 = srv.rss_kib()
            rng = random.Random(ctx.seed + 1)
            if kind == "raw":
                pattern = rng.randbytes(4 * MiB)
            else:
                pattern = b"".join(frame(rng.randbytes(rng.randint(0, 65536 - 4)))
                                   for _ in range(128))
            n, cap = 4, 256 * MiB
            clients = [slow_writer(srv.port, pattern, cap) for _ in range(n)]
            sent = [c[1] for c in clients]
            check(max(sent) < cap, "%s: a client that never reads sent %d bytes unhindered" %
                  (name, max(sent)))
            s = srv.wait_stats(lambda s: s[0] == n + 3, "the stalled connections")
            # The output queues hold at most high water (1 MiB) plus one
            # read's worth each, and the input buffers one chunk each.
            bound = n * (MiB + 256 * 1024)
            peak_buf = max(st[4] for st in srv.stats[-5:])
            check(peak_buf <= bound, "%s: %d buffer bytes in use with %d stalled readers "
                  "(bound %d)" % (name, peak_buf, n, bound))
            rss1 = srv.rss_kib()
            check(rss1 - rss0 < 32 * 1024, "%s: RSS grew by %d KiB" % (name, rss1 - rss0))
            # Now read everything back: every byte, in order.
            for (c, nsent) in clients:
                c.setblocking(True)
                want = (pattern * (nsent // len(pattern) + 1))[:nsent]
                if kind == "frame":  # a frame cut short by the stall gets no reply
                    want = model_framed(want, 65536)[0]
                got = recv_exact(c, len(want), timeout=30)
                check(got == want, "%s: the echo of a stalled connection differs" % name)
                c.close()
            probe, fds, rep = srv.wind_down(prober)
            check(rep["paused"] >= n, "%s: reading paused %d times, expected >= %d" %
                  (name, rep["paused"], n))
            out("%s: %d clients pipelined without reading until blocked (%d-%d bytes each, "
                "of up to %d MiB tried); server buffer bytes %d (bound %d), RSS +%d KiB; "
                "reading paused %d times; all %d bytes then answered in order; %s; %s" %
                (name, n, min(sent), max(sent), cap // MiB, peak_buf, bound, rss1 - rss0,
                 rep["paused"], sum(sent), probe, fds))
        finally:
            srv.kill()


@scenario
def resets(ctx, out):
    """Clients that close with SO_LINGER 0 (RST) mid-transfer, many at once:
    no SIGPIPE, no crash, each closed as 'peer reset'."""
    srv = Server(ctx, "crest-echo", [])
    try:
        prober = Prober(srv.port, "raw").start()
        rng = random.Random(ctx.seed + 2)
        blob = rng.randbytes(2 * MiB)
        rounds, n, total_bytes = 3, 150, 0
        all_ports = []
        for r in range(rounds):
            socks = []
            for i in range(n):
                s = connect(srv.port)
                set_linger0(s)
                s.setblocking(False)
                try:  # as much as goes out at once: mid-transfer either way
                    total_bytes += s.send(blob[: (i % 16 + 1) * 128 * 1024])
                except BlockingIOError:
                    pass
                socks.append(s)
                all_ports.append(local_port(s))
            # replies are flowing back (and queued in the server); now RST
            # them all at once
            time.sleep(0.05)
            for s in socks:
                s.close()
        # Each by its port: the server still names a peer that reset
        # (crest keeps the address from accept4; getpeername() fails then).
        expect_reasons(srv, all_ports, "peer reset")
        check(srv.anonymous_closes == 0, "%d close lines without the peer's address" %
              srv.anonymous_closes)
        check(srv.alive(), "the server died")
        probe, fds, rep = srv.wind_down(prober)
        check(rep["reasons"].get("peer reset") == rounds * n,
              "report close reasons %s" % rep["reasons"])
        out("crest-echo: %d rounds of %d connections each queueing 128 KiB-2 MiB (%d bytes in all) "
            "then closing with SO_LINGER 0 at once: all %d closed 'peer reset', server alive "
            "(exit 0 after SIGTERM, no SIGPIPE); %s; %s" %
            (rounds, n, total_bytes, rounds * n, probe, fds))
    finally:
        srv.kill()


@scenario
def churn(ctx, out):
    """Tens of thousands of connect/send/close cycles, in four flavours:
    full round trip, send and close without reading, connect and RST,
    connect and close.  fds and registry counts back to baseline exactly."""
    cycles = ctx.churn
    srv = Server(ctx, "crest-echo", [])
    try:
        prober = Prober(srv.port, "raw", interval=0.05).start()
        msg = b"churn-" + b"x" * 58
        t0 = now()
        for i in range(cycles):
            flavour = i % 4
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(10)
            if flavour == 2:
                set_linger0(s)
            s.connect((HOST, srv.port))
            if flavour == 0:
                s.sendall(msg)
                check(recv_exact(s, len(msg)) == msg, "churn: wrong echo")
            elif flavour == 1:
                s.sendall(msg)
            s.close()
        elapsed = now() - t0
        s = srv.wait_stats(lambda s: s[0] == 3, "every churned connection closed", timeout=30)
        probe, fds, rep = srv.wind_down(prober)
        served = rep.get("served", 0)
        closes = sum(rep["reasons"].values())
        check(served == cycles + 3 and closes == served,
              "served %d, closes %d, expected %d" % (served, closes, cycles + 3))
        out("crest-echo: %d connect/send/close cycles in %.1f s (round trip, send+close, RST, "
            "bare close); served %d, close reasons %s; registry fds opened %d = closed %d; "
            "%s; %s" % (cycles, elapsed, served, rep["reasons"], rep["fds_opened"],
                        rep["fds_closed"], probe, fds))
    finally:
        srv.kill()


def echo_ok(s, tag, timeout=5.0):
    msg = b"held %d" % tag
    s.sendall(msg)
    return recv_exact(s, len(msg), timeout=timeout) == msg


@scenario
def fd_exhaustion(ctx, out):
    """RLIMIT_NOFILE (soft) of 64 for the server and more clients than it can
    hold: it keeps serving the ones it has, drops the rest, does not spin,
    and accepts again when fds free."""
    limit = 64
    srv = Server(ctx, "crest-echo", [], nofile=limit)
    held, refused = [], 0
    try:
        # Fill it up: connect until connections start being dropped.
        for i in range(limit + 40):
            s = None
            try:
                s = connect(srv.port)
                if echo_ok(s, i, timeout=3):
                    held.append(s)
                    continue
            except (ConnectionResetError, Fail, socket.timeout):
                pass
            refused += 1
            if s:
                s.close()
        check(held and refused >= 30, "held %d, refused %d: the limit did not bite" %
              (len(held), refused))
        s = srv.wait_stats(lambda s: s[0] == len(held), "the held connections")
        check(s[3] + 3 <= limit, "registry says %d fds open at a limit of %d" % (s[3], limit))
        # At the limit: new clients keep knocking while the held ones keep
        # talking.  Count the CPU seconds the server uses meanwhile.
        interval = 3.0
        cpu0, t0 = srv.cpu_seconds(), now()
        knocks = rounds = 0
        while now() - t0 < interval:
            check(knock(srv.port, timeout=3) is not None,
                  "a connection past the fd limit was neither served nor closed")
            knocks += 1
            check(echo_ok(held[rounds % len(held)], rounds), "a held connection stopped "
                  "being served")
            rounds += 1
            time.sleep(0.02)
        elapsed = now() - t0
        # and idle at the limit with nothing to do
        time.sleep(1.0)
        cpu = srv.cpu_seconds() - cpu0
        elapsed = now() - t0
        check(cpu < 0.25 * elapsed, "the server used %.2f CPU s in %.2f s at the fd limit "
              "(spinning?)" % (cpu, elapsed))
        for i, s in enumerate(held):
            check(echo_ok(s, 1000 + i), "held connection %d not served after the storm" % i)
        # Free some fds: new connections are served again.
        nfree = 10
        for s in held[:nfree]:
            s.close()
        held = held[nfree:]
        srv.wait_stats(lambda s: s[0] == len(held), "the freed connections closed")
        fresh = [connect(srv.port) for _ in range(nfree)]
        for i, s in enumerate(fresh):
            check(echo_ok(s, 2000 + i), "no service after fds were freed (connection %d)" % i)
        held += fresh
        nheld = len(held)
        for s in held:
            s.close()
        held = []
        fds = srv.settle()
        rep = srv.stop()
        check(rep["dropped"] >= refused + knocks,
              "report: %d dropped (out of fds), expected >= %d" % (rep["dropped"],
                                                                  refused + knocks))
        out("crest-echo with RLIMIT_NOFILE %d: held %d connections, %d more dropped at once "
            "(report: %d dropped out of fds); under %d more knocks and %d echoes on held "
            "connections the server used %.2f CPU s in %.1f s; after closing %d, %d new "
            "connections were served; %s" %
            (limit, nheld, refused + knocks, rep["dropped"], knocks, rounds, cpu, elapsed,
             nfree, nfree, fds))
    finally:
        for s in held:
            s.close()
        srv.kill()


@scenario
def half_close(ctx, out):
    """A client sends, shuts its write side, and still gets every reply."""
    rng = random.Random(ctx.seed + 3)
    results = []
    for name, args, kind in (("crest-echo", [], "raw"), ("crest-echo", ["--line"], "line"),
                             ("crest-framed", [], "frame")):
        srv = Server(ctx, name, args)
        try:
            prober = Prober(srv.port, kind).start()
            ports, nbytes = [], 0
            for k in range(5):
                if kind == "raw":
                    req = rng.randbytes(rng.randint(1, 3 * MiB))
                    want = req
                elif kind == "line":
                    lines = [rng.randbytes(rng.randint(0, 300)).hex().encode()
                             for _ in range(rng.randint(1, 2000))]
                    # the last line has no "\n": it is answered at EOF
                    req = b"\n".join(lines)
                    want = b"".join(b"echo: " + l + b"\n" for l in lines)
                else:
                    frames = [frame(rng.randbytes(rng.randint(0, 20000)))
                              for _ in range(rng.randint(1, 200))]
                    req = want = b"".join(frames)
                s = connect(srv.port)
                ports.append(local_port(s))
                # send from a thread: the replies must be read meanwhile or
                # both sides' buffers fill up
                def send_all(sock=s, data=req):
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                th = threading.Thread(target=send_all)
                th.start()
                got, how = recv_to_eof(s, timeout=20)
                th.join(20)
                check(how == "eof" and got == want, "%s %s: %d of %d reply bytes before %s" %
                      (name, kind, len(got), len(want), how))
                nbytes += len(req)
                s.close()
            expect_reasons(srv, ports, "peer EOF")
            probe, fds, _ = srv.wind_down(prober)
            results.append("%s %s: 5 clients, %d bytes sent then SHUT_WR, every reply "
                           "received, then EOF ('peer EOF'); %s; %s" %
                           (name, kind, nbytes, probe, fds))
        finally:
            srv.kill()
    for r in results:
        out(r)


@scenario
def urgent(ctx, out):
    """Urgent data (MSG_OOB) in the middle of a message.  A read stops at
    the urgent mark with the rest still queued; taken as "drained", that
    parked the connection until the peer sent more.  Every byte, the
    urgent one included (SO_OOBINLINE), comes back in order, with nothing
    sent after it."""
    rng = random.Random(ctx.seed + 7)
    results = []
    for name, args, kind in (("crest-echo", [], "raw"), ("crest-framed", [], "frame")):
        srv = Server(ctx, name, args)
        try:
            prober = Prober(srv.port, kind).start()
            ports, n = [], 10
            for k in range(n):
                head = rng.randbytes(rng.randint(1, 3000))
                tail = rng.randbytes(rng.randint(1, 3000))
                mark = bytes([rng.randrange(256)])
                body = head + mark + tail
                pre = frame(body)[:4] if kind == "frame" else b""
                s = connect(srv.port)
                ports.append(local_port(s))
                s.sendall(pre + head)
                s.send(mark, socket.MSG_OOB)
                s.sendall(tail)
                want = pre + body
                try:
                    got = recv_exact(s, len(want), timeout=5)
                except Fail as e:
                    raise Fail("%s: connection %d of %d: %s" % (name, k + 1, n, e))
                check(got == want, "%s: wrong reply (%d bytes) around the urgent byte" %
                      (name, len(got)))
                s.close()
            expect_reasons(srv, ports, "peer EOF")
            probe, fds, _ = srv.wind_down(prober)
            results.append("%s %s: %d connections each sent a message with one urgent byte "
                           "(MSG_OOB) in its middle and nothing after: every byte echoed in "
                           "order; %s; %s" % (name, kind, n, probe, fds))
        finally:
            srv.kill()
    for r in results:
        out(r)


@scenario
def lingering_close(ctx, out):
    """A pipelined request with a big reply, then a frame over the limit
    and more bytes the server never reads.  Closing with unread input sent
    RST, which destroyed the reply still in the server's send queue; the
    lingering close delivers all of it, then EOF."""
    srv = Server(ctx, "crest-framed", ["--max-frame", str(4 * MiB)])
    try:
        prober = Prober(srv.port, "frame").start()
        rng = random.Random(ctx.seed + 8)
        ports, n, total = [], 4, 0
        for k in range(n):
            body = rng.randbytes(3 * MiB + rng.randint(0, MiB))
            s = connect(srv.port, rcvbuf=65536)
            ports.append(local_port(s))
            s.sendall(frame(body) + struct.pack(">I", 0xFFFFFFF0) + b"z" * 65536)
            time.sleep(0.3)  # read nothing for a while
            got, how = recv_to_eof(s, timeout=20)
            check(how == "eof" and got == frame(body),
                  "connection %d of %d: %d of %d reply bytes, then %s" %
                  (k + 1, n, len(got), len(body) + 4, how))
            total += len(got)
            s.close()
        expect_reasons(srv, ports, "too large")
        probe, fds, rep = srv.wind_down(prober)
        check(rep["reasons"].get("too large") == n,
              "report close reasons %s" % rep["reasons"])
        out("crest-framed --max-frame 4M: %d clients each pipelined a 3-4 MiB frame, a frame "
            "announcing 0xFFFFFFF0 bytes and 64 KiB more, reading nothing for 0.3 s: all %d "
            "reply bytes received, then EOF (no RST); %s; %s" % (n, total, probe, fds))
    finally:
        srv.kill()


@scenario
def conn_limit(ctx, out):
    """--max-conns is enforced (connections past it are closed at once) and
    counted; a freed slot is used again."""
    nprobe, extra = 3, 6
    limit = nprobe + 5
    srv = Server(ctx, "crest-echo", ["--max-conns", str(limit)])
    held = []
    try:
        prober = Prober(srv.port, "raw", nconns=nprobe).start()
        held = [connect(srv.port) for _ in range(limit - nprobe)]
        for i, s in enumerate(held):
            check(echo_ok(s, i), "connection %d within the limit not served" % i)
        srv.wait_stats(lambda s: s[0] == limit, "the connections within the limit")
        shut = 0
        for i in range(extra):
            check(knock(srv.port) is not None, "connection %d past --max-conns %d was not "
                  "closed" % (i, limit))
            shut += 1
        for i, s in enumerate(held):
            check(echo_ok(s, 100 + i), "held connection %d not served after the refusals" % i)
        held.pop().close()
        srv.wait_stats(lambda s: s[0] == limit - 1, "a freed slot")
        s = connect(srv.port)
        check(echo_ok(s, 999), "a connection in a freed slot was not served")
        held.append(s)
        for s in held:
            s.close()
        held = []
        probe, fds, rep = srv.wind_down(prober)
        check(rep["refused"] == extra and rep["reasons"].get("connection limit") == extra,
              "report: refused %d, close reasons %s" % (rep["refused"], rep["reasons"]))
        out("crest-echo --max-conns %d: %d connections past the limit closed at once (report: "
            "%d refused, close reason 'connection limit' %d); the %d within it served "
            "throughout; a freed slot served a new connection; %s; %s" %
            (limit, extra, rep["refused"], rep["reasons"]["connection limit"], limit, probe,
             fds))
    finally:
        for s in held:
            s.close()
        srv.kill()


@scenario
def chat_flood(ctx, out):
    """crest-chat --threads 2 under broadcast load with subscribers that
    never read: each is closed at --max-output ('output limit'), the server's
    buffer bytes and RSS stay bounded, and the clients that do read (two
    publishers and three readers, spread over both loops) get every line,
    each publisher's in order, none of their own."""
    max_output = 256 * 1024
    srv = Server(ctx, "crest-chat", ["--threads", "2", "--max-output", "256K"])
    socks = []
    try:
        readers = [connect(srv.port) for _ in range(3)]
        pubs = [connect(srv.port) for _ in range(2)]
        stalled = [connect(srv.port, rcvbuf=4096) for _ in range(4)]
        socks = readers + pubs + stalled
        srv.wait_stats(lambda s: s[0] == len(socks), "every client connected")
        rss0 = srv.rss_kib()
        per_pub, size, window = 1500, 4096, 24
        lines = [[b"%d %06d " % (p, i) + bytes([97 + (i + p) % 26]) * (size - 10)
                  for i in range(per_pub)] for p in range(2)]
        # what each reading client has received: per publisher, lines so far
        rx = {s: [0, 0] for s in readers + pubs}
        partial = {s: b"" for s in readers + pubs}
        sent = [0, 0]
        peak_buf = peak_rss = 0
        deadline = now() + 120 * SLOW

        def behind():  # lines sent that the slowest reading client has not got
            return max(sent[p] - min(rx[s][p] for s in rx if s is not pubs[p])
                       for p in range(2))

        while min(min(rx[s][p] for s in rx if s is not pubs[p]) for p in range(2)) < per_pub:
            check(now() < deadline, "chat: lines stopped arriving: sent %s, received %s" %
                  (sent, [rx[s] for s in rx]))
            while behind() < window and (sent[0] < per_pub or sent[1] < per_pub):
                p = 0 if sent[0] <= sent[1] and sent[0] < per_pub else 1
                pubs[p].sendall(lines[p][sent[p]] + b"\n")
                sent[p] += 1
            ready, _, _ = select.select(list(rx), [], [], 1.0)
            for s in ready:
                data = s.recv(1 << 20)
                check(data, "chat: a reading client got EOF (%s)" %
                      ("publisher" if s in pubs else "reader"))
                parts = (partial[s] + data).split(b"\n")
                partial[s] = parts.pop()
                for l in parts:
                    p = l[0] - 48
                    check(0 <= p <= 1 and s is not pubs[p],
                          "chat: a client got a line it should not have: %r" % l[:20])
                    check(l == lines[p][rx[s][p]], "chat: publisher %d's line %d arrived "
                          "wrong or out of order" % (p, rx[s][p]))
                    rx[s][p] += 1
            if sum(sent) % 200 < 2:
                peak_rss = max(peak_rss, srv.rss_kib())
        peak_rss = max(peak_rss, srv.rss_kib())
        ports = [local_port(s) for s in stalled]
        expect_reasons(srv, ports, "output limit")
        srv.update()
        peak_buf = max(st[4] for st in srv.stats)
        # Each client's queue holds at most max_output; each loop's pool
        # keeps at most a little more than what its clients queue.
        bound = len(socks) * (max_output + 64 * 1024)
        check(peak_buf <= bound, "chat: %d buffer bytes in use (bound %d)" % (peak_buf, bound))
        pushed = per_pub * 2 * size
        # Under --wrap (valgrind) the RSS is valgrind's, which grows with
        # its own tables, and a sanitizer's allocator keeps freed batches in
        # quarantine: the buffer bytes above are the bound there.
        rss_checked = not ctx.wrap and not srv.sanitized()
        check(not rss_checked or peak_rss - rss0 < 24 * 1024, "chat: RSS grew by %d KiB while "
              "%d MiB went to each subscriber" % (peak_rss - rss0, pushed // MiB))
        for s in socks:
            s.close()
        socks = []
        fds = srv.settle()
        rep = srv.stop()
        check(rep["reasons"].get("output limit") == len(stalled),
              "report: close reasons %s" % rep["reasons"])
        with open(srv.log_path, "rb") as f:
            text = f.read().decode(errors="replace")
        m = re.search(r"chat: (\d+) lines in, (\d+) lines out .*?, (\d+) slow clients? dropped",
                      text)
        check(m and int(m.group(1)) == 2 * per_pub and int(m.group(3)) == len(stalled),
              "report: %s" % (m.group(0) if m else "no chat line"))
        out("crest-chat --threads 2 --max-output 256K: 2 publishers x %d lines of %d bytes; "
            "the %d subscribers that never read closed with 'output limit'; the 3 readers "
            "and the 2 publishers got every line of the others, in order; buffer bytes peak "
            "%d (bound %d); RSS +%d KiB (%s) while %d MiB went to each subscriber; report: %s; "
            "%s" % (per_pub, size, len(stalled), peak_buf, bound, peak_rss - rss0,
                    "bound 24 MiB" if rss_checked else "not bounded under valgrind or a sanitizer",
                    pushed // MiB, m.group(0), fds))
    finally:
        for s in socks:
            s.close()
        srv.kill()

# --------------------------------------------------------------------------

class Ctx:
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bindir", default=os.path.join(
        os.environ.get("abs_top_builddir", "."), "samples"))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("HOSTILE_SEED", "6")))
    ap.add_argument("--churn", type=int, default=int(os.environ.get("HOSTILE_CHURN", "20000")))
    ap.add_argument("--wrap", default="",
                    help="command to start the servers under, e.g. 'libtool --mode=execute "
                    "valgrind --error-exitcode=99' (make audit); waits are stretched")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("names", nargs="*")
    a = ap.parse_args()
    names = [f.__name__ for f in SCENARIOS]
    if a.list:
        print("\n".join(names))
        return 0
    unknown = [n for n in a.names if n not in names]
    if unknown:
        print("unknown scenario(s): %s; known: %s" % (" ".join(unknown), " ".join(names)))
        return 2
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    ctx = Ctx()
    ctx.bindir, ctx.seed, ctx.churn = a.bindir, a.seed, a.churn
    ctx.wrap = a.wrap.split()
    global SLOW
    SLOW = 6 if ctx.wrap else 1
    failures = 0
    with tempfile.TemporaryDirectory(prefix="crest-hostile-") as work:
        ctx.workdir = work
        for fn in SCENARIOS:
            if a.names and fn.__name__ not in a.names:
                continue
            t0 = now()
            lines = []
            try:
                fn(ctx, lines.append)
                for l in lines:
                    print("ok   %s: %s" % (fn.__name__, l))
                print("     (%s: %.1f s)" % (fn.__name__, now() - t0))
            except Fail as e:
                failures += 1
                for l in lines:
                    print("ok   %s: %s" % (fn.__name__, l))
                print("FAIL %s: %s" % (fn.__name__, e))
            except Exception as e:  # a client error is a failure too, with its trace
                import traceback
                failures += 1
                for l in lines:
                    print("ok   %s: %s" % (fn.__name__, l))
                print("FAIL %s: %s: %s" % (fn.__name__, type(e).__name__, e))
                traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
    print("%d scenario(s) failed" % failures if failures else "all scenarios passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
