#!/usr/bin/env python3
"""latency_clients.py - the clients and checks of tests/latency.sh.

Each subcommand makes one cause of high latency happen against a running
sample server on loopback, or reads what the server's doctor wrote:

  oneshot   send one message and wait for its echo, watching the server's
            log while waiting: did the watchdog's line appear BEFORE the
            reply came back (while the loop was still stuck)?
  flood     SIGSTOP the server (by PID), open N nonblocking connections
            against its small backlog, SIGCONT it after a second, keep them
            open a while so that its sampler sees the queue, then close.
  noread    a client that sends and never reads: the server's replies pile
            up in its socket, then in the server's output queue; closed
            after SECONDS (or when the server closes it).
  nagle     the write-write-read pattern that Nagle's algorithm and a
            delayed ACK turn into a ~40 ms stall: each request goes in two
            small segments, and the server (which spins --work per message)
            echoes each part in its own write; the client has put itself in
            delayed-ACK mode (TCP_QUICKACK 0) and waits for the whole echo.
  doctor    read the --doctor-json file: one JSON line per window, the last
            one for the whole run.  With --cause: exit 0 if a window or the
            whole run names it; with --none: exit 0 if no line has a
            finding.  Prints what it found either way.

Bounded: every loop ends by itself within the time given.  Standard
library only (Python 3.9+).
"""
import argparse
import json
import os
import re
import select
import signal
import socket
import statistics
import sys
import time


def connect(port, host="127.0.0.1", nodelay=True, rcvbuf=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect((host, port))
    if nodelay:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s, n, deadline):
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("reply not complete: %d of %d bytes" % (len(buf), n))
        s.settimeout(left)
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


# ------------------------------------------------------------------ oneshot
def cmd_oneshot(a):
    pat = re.compile(a.pattern)
    s = connect(a.port)
    msg = b"x" * a.size
    seen_at = None
    seen_line = None
    t0 = time.monotonic()
    s.sendall(msg)
    got = bytearray()
    deadline = t0 + a.timeout
    s.setblocking(False)
    while len(got) < len(msg) and time.monotonic() < deadline:
        # The log first: a line written before the reply arrived is seen in
        # this pass or an earlier one, before the reply is taken below.
        if seen_at is None:
            try:
                with open(a.log, "r", errors="replace") as f:
                    for line in f:
                        if pat.search(line):
                            seen_at = time.monotonic()
                            seen_line = line.rstrip("\n")
                            break
            except OSError:
                pass
        r, _, _ = select.select([s], [], [], 0.01)
        if r:
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            got += chunk
    t1 = time.monotonic()
    s.close()
    out = {
        "reply_ms": round((t1 - t0) * 1000, 1),
        "reply_complete": len(got) == len(msg),
        "log_line_ms": None if seen_at is None else round((seen_at - t0) * 1000, 1),
        "log_line_before_reply": seen_at is not None and seen_at < t1,
        "log_line": seen_line,
    }
    print(json.dumps(out))
    return 0 if out["reply_complete"] and out["log_line_before_reply"] else 1


# -------------------------------------------------------------------- flood
def cmd_flood(a):
    socks = []
    os.kill(a.pid, signal.SIGSTOP)
    try:
        for _ in range(a.n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", a.port))
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                continue
            socks.append(s)
        time.sleep(a.stop)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    # Keep them while the server takes them in and its sampler looks.
    deadline = time.monotonic() + a.hold
    connected = set()
    while time.monotonic() < deadline:
        pending = [s for s in socks if s not in connected]
        if not pending:
            time.sleep(0.05)
            continue
        _, w, _ = select.select([], pending, [], 0.05)
        for s in w:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected.add(s)
    for s in socks:
        s.close()
    print(json.dumps({"opened": len(socks), "connected": len(connected)}))
    return 0


# ------------------------------------------------------------------- noread
def cmd_noread(a):
    s = connect(a.port, rcvbuf=a.rcvbuf)
    s.setblocking(False)
    chunk = b"r" * 65536
    sent = 0
    closed_by_server = False
    deadline = time.monotonic() + a.seconds
    while time.monotonic() < deadline:
        _, w, x = select.select([], [s], [s], 0.05)
        if w:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                pass
            except OSError:
                closed_by_server = True
                break
    s.close()
    print(json.dumps({"sent": sent, "closed_by_server": closed_by_server}))
    return 0


# -------------------------------------------------------------------- nagle
def cmd_nagle(a):
    s = connect(a.port)
    part = b"n" * a.part
    times = []
    for _ in range(a.rounds):
        # Delayed-ACK mode for this exchange (it does not stick: the kernel
        # leaves it when its delayed-ACK timer fires).
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
        t0 = time.monotonic()
        s.sendall(part)
        time.sleep(a.gap_ms / 1000.0)
        s.sendall(part)
        recv_exactly(s, 2 * len(part), t0 + 2.0)
        times.append((time.monotonic() - t0) * 1000.0)
    s.close()
    stalled = sum(1 for t in times if t >= 30.0)
    print(json.dumps({
        "rounds": len(times),
        "median_ms": round(statistics.median(times), 1),
        "max_ms": round(max(times), 1),
        "rounds_over_30ms": stalled,
    }))
    return 0


# ------------------------------------------------------------------- doctor
def load_lines(path):
    lines = []
    with open(path) as f:
        for raw in f:
            raw = raw.strip()
            if not raw:
                continue
            try:
                lines.append(json.loads(raw))
            except ValueError:
                print("doctor-json: not JSON: %r" % raw[:200])
    return lines


def cmd_doctor(a):
    try:
        lines = load_lines(a.file)
    except OSError as e:
        print("doctor-json: %s" % e)
        return 1
    if not lines:
        print("doctor-json: no line in %s" % a.file)
        return 1
    # The last line is the whole run (written at exit); the others are
    # windows.  If the server did not exit cleanly, every line is a window.
    named = []
    for i, obj in enumerate(lines):
        scope = obj.get("scope")
        if scope is None:  # an older server: the last line after a clean exit
            scope = "run" if (i == len(lines) - 1 and a.exited) else "window"
        where = "whole run" if scope == "run" else "window %d" % (i + 1)
        for f in obj.get("findings", []):
            named.append((where, f))
    if a.none:
        if not named:
            runs = sum(1 for o in lines if o.get("scope") == "run")
            print("no finding in %d window%s%s" %
                  (len(lines) - runs, "" if len(lines) - runs == 1 else "s",
                   " nor the whole run" if runs else ""))
            return 0
        for where, f in named:
            print("unexpected finding (%s): %s %s: %s" %
                  (where, f.get("cause"), f.get("severity"), f.get("evidence")))
        return 1
    hits = [(w, f) for w, f in named if f.get("cause") == a.cause and
            (a.evidence_has is None or a.evidence_has in f.get("evidence", ""))]
    if hits:
        where, f = hits[-1]
        print("%s named (%s, %s): %s" % (a.cause, where, f.get("severity"), f.get("evidence")))
        if f.get("advice"):
            print("  advice: %s" % f["advice"])
        others = sorted({f.get("cause") for _, f in named} - {a.cause})
        if others:
            print("  also found: %s" % ", ".join(others))
        return 0
    print("%s%s not named in %d line%s; findings: %s" % (
        a.cause, "" if a.evidence_has is None else
        " (with \"%s\" in its evidence)" % a.evidence_has, len(lines), "" if len(lines) == 1 else "s",
        ", ".join("%s (%s)" % (f.get("cause"), w) for w, f in named) or "none"))
    last = lines[-1]
    print("  last line: %s" % json.dumps(last)[:600])
    return 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    o = sub.add_parser("oneshot")
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--size", type=int, default=64)
    o.add_argument("--log", required=True)
    o.add_argument("--pattern", required=True)
    o.add_argument("--timeout", type=float, default=5.0)

    o = sub.add_parser("flood")
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--pid", type=int, required=True)
    o.add_argument("-n", type=int, default=50)
    o.add_argument("--stop", type=float, default=1.0)
    o.add_argument("--hold", type=float, default=2.5)

    o = sub.add_parser("noread")
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--seconds", type=float, default=3.0)
    o.add_argument("--rcvbuf", type=int, default=4096)

    o = sub.add_parser("nagle")
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--rounds", type=int, default=20)
    o.add_argument("--part", type=int, default=16)
    o.add_argument("--gap-ms", type=float, default=1.0)

    o = sub.add_parser("doctor")
    o.add_argument("file")
    g = o.add_mutually_exclusive_group(required=True)
    g.add_argument("--cause")
    g.add_argument("--none", action="store_true")
    o.add_argument("--evidence-has", metavar="TEXT",
                   help="with --cause: the finding's evidence must contain TEXT")
    o.add_argument("--exited", action="store_true",
                   help="the server exited cleanly: the last line is the whole run")

    a = p.parse_args()
    return {"oneshot": cmd_oneshot, "flood": cmd_flood, "noread": cmd_noread,
            "nagle": cmd_nagle, "doctor": cmd_doctor}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
