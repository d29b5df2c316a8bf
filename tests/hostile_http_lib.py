"""hostile_http_lib.py - what tests/admin_hostile.py and tests/http_hostile.py
share: the check record, a raw HTTP client's helpers (send, read until the
server closes, parse a response head, trickle bytes), the server's log
lookups, and a prober thread that each script gives its own round trip.

Imported, not run.  Stdlib only; every socket has a timeout; every loop is
bounded.
"""

import os
import re
import socket
import threading
import time

HOST = "127.0.0.1"
KiB = 1024

results = []          # (ok, message)
results_lock = threading.Lock()


def record(ok, msg):
    with results_lock:
        results.append((ok, msg))
        print(("ok   " if ok else "FAIL ") + msg, flush=True)


def verdict(name, problems, ok_msg):
    """Record one check: failed with its problems, or passed with ok_msg."""
    if problems:
        record(False, "%s: %s" % (name, "; ".join(problems)))
    else:
        record(True, "%s: %s" % (name, ok_msg))


def summary(prog):
    """Print how many checks passed; the exit status (1 if any failed)."""
    failed = [m for ok, m in results if not ok]
    print("%s: %d of %d checks passed" % (prog, len(results) - len(failed), len(results)))
    return 1 if failed else 0


def now():
    return time.monotonic()


# --------------------------------------------------------------------------
# A raw HTTP client
# --------------------------------------------------------------------------

def parse_head(head):
    """(status, {lower-case header: value}) of a response head (without
    its blank line); ValueError if it is no HTTP/1.1 status line."""
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"^HTTP/1\.1 (\d{3}) ", lines[0])
    if not m:
        raise ValueError("not a status line: %r" % lines[0])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(m.group(1)), headers


def send_quietly(s, data):
    """Send data; the server may refuse and close before it has all."""
    try:
        s.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def read_until_closed(s, limit_s):
    """Everything the server sends until it closes (EOF or reset) or
    limit_s passes.  Returns (data, closed)."""
    data = b""
    deadline = now() + limit_s
    while now() < deadline:
        s.settimeout(max(0.05, deadline - now()))
        try:
            part = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data, True
        if not part:
            return data, True
        data += part
    return data, False


def send_and_read(server, payload, chunks=None):
    """On a new connection, send payload (or chunks, one send each) and
    read until the server closes (10 s at most).  Returns (data, closed,
    the client's port)."""
    s, cport = server.connect()
    try:
        for part in (chunks or [payload]):
            if not send_quietly(s, part):
                break
        data, closed = read_until_closed(s, 10)
    finally:
        s.close()
    return data, closed, cport


def trickle(s, prefix, data, gap_s, start, limit_s):
    """Send prefix, then data a byte at a time, looking for the server's
    close for gap_s between bytes, until limit_s after start; then wait for
    the close until that limit.  Returns (reply, closed)."""
    closed = not send_quietly(s, prefix)
    reply = b""
    for i in range(len(data)):
        if closed or now() - start > limit_s:
            break
        if not send_quietly(s, data[i:i + 1]):
            closed = True
            break
        part, closed = read_until_closed(s, gap_s)
        reply += part
    if not closed:
        part, closed = read_until_closed(s, max(0.1, limit_s - (now() - start)))
        reply += part
    return reply, closed


def smuggling_cases(post):
    """(name, request) for the smuggling attempts both scripts make after
    the head `post` (RFC 9112 6.1, 6.3): each must be refused with 400."""
    return [
        ("smuggling: Content-Length with Transfer-Encoding",
         post + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("smuggling: Transfer-Encoding with Content-Length",
         post + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
        ("smuggling: two different Content-Lengths",
         post + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ("smuggling: obs-fold (a header line starting with a space)",
         post + b"X-A: b\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ]


def garbage_cases():
    """(name, bytes) that are no HTTP at all: each must be refused with 400."""
    return [
        ("garbage bytes", bytes(range(256)) + b"\r\n\r\n"),
        ("a TLS ClientHello",
         bytes.fromhex("16030100c4010000c00303") + os.urandom(32) + b"\r\n\r\n"),
    ]


# --------------------------------------------------------------------------
# The server under test: its port and its stderr
# --------------------------------------------------------------------------

class Server:
    def __init__(self, port, log_path, connect_timeout):
        self.port = port
        self.log_path = log_path
        self.connect_timeout = connect_timeout

    def connect(self):
        s = socket.create_connection((HOST, self.port), timeout=self.connect_timeout)
        return s, s.getsockname()[1]

    def log_line(self, pattern, wait_s=5):
        """The first group of the first server log line matching pattern,
        or None after wait_s (the log is written by another process)."""
        pat = re.compile(pattern)
        deadline = now() + wait_s
        while True:
            try:
                with open(self.log_path, "r", errors="replace") as f:
                    for line in f:
                        m = pat.search(line.rstrip("\n"))
                        if m:
                            return m.group(1)
            except FileNotFoundError:
                pass
            if now() >= deadline:
                return None
            time.sleep(0.05)

    def closed_line(self, client_port):
        """crest's 'connection 127.0.0.1:PORT (fd N) closed: ...' warning
        for this client, or None."""
        return self.log_line(r"connection 127\.0\.0\.1:%d \(fd \d+\) closed: (.*)$" % client_port)

    def timeout_line(self, client_port):
        """The HTTP server's 'http: 127.0.0.1:PORT: request ... (read
        timeout)' line for this client, or None."""
        return self.log_line(r"http: 127\.0\.0\.1:%d: (request .*\(read timeout\))$" % client_port)

    def check_closed_line(self, client_port, log_words, problems):
        """The closed line for this client, with a problem appended if it is
        missing or lacks one of log_words."""
        line = self.closed_line(client_port)
        if line is None:
            problems.append("no 'connection 127.0.0.1:%d ... closed:' line in the server's log"
                            % client_port)
        else:
            for w in log_words:
                if w not in line:
                    problems.append("the log line %r lacks %r" % (line, w))
        return line


# --------------------------------------------------------------------------
# The prober: round trips on connections of its own for the whole run
# --------------------------------------------------------------------------

class Prober(threading.Thread):
    """Subclasses define probe(s, seq): one verified round trip on s
    (raising on any failure)."""

    def __init__(self, port, nconns=2, timeout=10):
        super().__init__(daemon=True)
        self.port = port
        self.nconns = nconns
        self.timeout = timeout
        self.count = 0
        self.errors = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def probe(self, s, seq):
        raise NotImplementedError

    def run(self):
        socks = []
        try:
            for _ in range(self.nconns):
                s = socket.create_connection((HOST, self.port), timeout=self.timeout)
                socks.append(s)
            seq = 0
            while not self.stop.is_set():
                for s in socks:
                    seq += 1
                    self.probe(s, seq)
                    with self.lock:
                        self.count += 1
                self.stop.wait(0.02)
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            self.errors.append("%s: %s" % (type(e).__name__, e))
        finally:
            for s in socks:
                s.close()

    def progress(self):
        with self.lock:
            return self.count

    def start_and_wait(self):
        """Start, and wait (5 s at most) for the first round trip: True if
        it came."""
        self.start()
        deadline = now() + 5
        while self.progress() == 0 and not self.errors and now() < deadline:
            time.sleep(0.02)
        return self.progress() > 0

    def wait_progress(self, before):
        """The prober moved on since `before` (waits a little: a scenario
        can be quicker than one probe round)."""
        deadline = now() + 5
        while self.progress() <= before and now() < deadline:
            time.sleep(0.02)
        return self.progress() > before

    def finish(self, name, ok_msg):
        """Stop, and record its errors or ok_msg % its count."""
        self.stop.set()
        self.join(10)
        if self.errors:
            record(False, "%s: %s" % (name, "; ".join(self.errors)))
        else:
            record(True, "%s: %s" % (name, ok_msg % self.count))
