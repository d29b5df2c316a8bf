#!/usr/bin/env python3
"""http_hostile.py - hostile HTTP against a running crest-http.

Started by tests/http.sh against a crest-http it started with short
timeouts and a small body limit (it does not start a server itself):

    tests/http_hostile.py --port PORT --log SERVER_STDERR \\
        --header-timeout 1 --body-timeout 1 --max-body 4096

Each scenario opens its own connection, misbehaves, and checks that:

  - a refusal has the right status and "Connection: close", and the
    server then closes the connection; a timeout (slowloris on the head or
    on the body) closes it without an answer, after the timeout;
  - the server's stderr has the reason for that connection, found by the
    client's own port: crest's "connection 127.0.0.1:PORT (fd N) closed:
    protocol error: http 400 Bad Request: ..." for a refusal, the HTTP
    server's "http: 127.0.0.1:PORT: request head not whole within N ms:
    closed (read timeout)" for a timeout;
  - meanwhile a prober keeps getting 200s for GET / on keep-alive
    connections of its own (never closed under it), and made progress
    during every scenario.

Then 10,000 connections churn (connect, GET /, read the 200, close; a few
at once), and the probers must still be served.

At the end it prints "http_hostile: requests answered: N": the requests
it made that the server handed to its application (every 200, 404 and 405
it got), for http.sh to compare with the server's final report.  Stdlib
only; every socket has a timeout; every loop is bounded.  Exit 0 if every
check passed, 1 otherwise.
"""

import argparse
import os
import socket
import sys
import threading

# The shared helpers sit beside this script (also in a VPATH build, where
# it is run from the source tree); no bytecode left in that tree.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
from hostile_http_lib import (HOST, KiB, Prober, Server, garbage_cases, now,  # noqa: E402
                              parse_head, read_until_closed, record, send_and_read,
                              smuggling_cases, summary, trickle, verdict)

answered = 0          # requests the server handed to crest-http's routes
answered_lock = threading.Lock()


def count_answered(n=1):
    global answered
    with answered_lock:
        answered += n


GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
HELLO = b"Hello, World!\n"


def read_response(s, buf=b""):
    """One whole response (head and Content-Length body) from s, after the
    bytes already in buf.  Returns (status, headers, body, rest); raises
    ConnectionError if the server closes first."""
    while b"\r\n\r\n" not in buf:
        part = s.recv(65536)
        if not part:
            raise ConnectionError("closed before a whole head (%r)" % buf[:100])
        buf += part
    head, _, buf = buf.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    n = int(headers.get("content-length", "0"))
    while len(buf) < n:
        part = s.recv(65536)
        if not part:
            raise ConnectionError("closed inside a body")
        buf += part
    return status, headers, buf[:n], buf[n:]


# --------------------------------------------------------------------------
# The prober: GET / on keep-alive connections for the whole run
# --------------------------------------------------------------------------

class GetProber(Prober):
    def probe(self, s, seq):
        s.sendall(GET)
        status, headers, body, rest = read_response(s)
        if status != 200 or body != HELLO or rest:
            raise ValueError("probe: %d %r %r" % (status, body, rest))
        if headers.get("connection", "").lower() == "close":
            raise ValueError("probe: the server closes a probe connection")
        count_answered()


# --------------------------------------------------------------------------
# Hostile clients
# --------------------------------------------------------------------------

def split_responses(data):
    """[(status, headers, body)] of the whole responses in data."""
    out = []
    while b"\r\n\r\n" in data:
        head, _, data = data.partition(b"\r\n\r\n")
        try:
            status, headers = parse_head(head)
        except ValueError:
            break
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, data[:n]))
        data = data[n:]
    return out


def refusal(server, prober, name, payload, statuses, log_words, chunks=None):
    """Send payload (or chunks, one send each); expect the answers in
    `statuses` (the last one the refusal, with Connection: close), the
    connection closed, and the log line for this client holding each of
    log_words."""
    before = prober.progress()
    data, closed, cport = send_and_read(server, payload, chunks)
    got = split_responses(data)
    problems = []
    if [r[0] for r in got] != statuses:
        problems.append("statuses %s, not %s (reply %r)" % ([r[0] for r in got], statuses,
                                                            data[:300]))
    elif got[-1][1].get("connection", "").lower() != "close":
        problems.append("no 'Connection: close' in %r" % data[:300])
    else:
        count_answered(len(statuses) - 1)  # the good ones before the refusal
    if not closed:
        problems.append("the connection was not closed within 10 s")
    line = server.check_closed_line(cport, log_words, problems)
    if not prober.wait_progress(before):
        problems.append("the probe got no answer meanwhile")
    verdict(name, problems, "%s, Connection: close, closed, logged %r, probe served"
            % (" then ".join(str(x) for x in statuses), line))


def slow(server, prober, name, prefix, trickle_data, limit_s, timeout_s, what):
    """Send prefix, then trickle a byte every 0.2 s: the server must close
    the connection, without an answer, no sooner than timeout_s after the
    request's first byte, and log the read timeout of `what` (head, body)."""
    before = prober.progress()
    s, cport = server.connect()
    start = now()
    try:
        reply, closed = trickle(s, prefix, trickle_data, 0.2, start, limit_s)
    finally:
        s.close()
    took = now() - start
    problems = []
    if not closed:
        problems.append("still open after %.1f s" % took)
    elif took < timeout_s - 0.1:
        problems.append("closed after %.2f s, before the timeout (%.1f s)" % (took, timeout_s))
    if reply:
        problems.append("an answer: %r" % reply[:200])
    line = server.timeout_line(cport)
    if line is None:
        problems.append("no log line names the read timeout of 127.0.0.1:%d" % cport)
    elif ("request %s " % what) not in line:
        problems.append("the log line %r is not about the %s" % (line, what))
    if not prober.wait_progress(before):
        problems.append("the probe got no answer meanwhile")
    verdict(name, problems, "closed after %.1f s without an answer, logged %r, probe served"
            % (took, line))


def half_sent(server, prober, name, payload):
    """Part of a request, then the client closes: nothing is answered, the
    server closes its side, and the probe is still served."""
    before = prober.progress()
    s, _ = server.connect()
    problems = []
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data, closed = read_until_closed(s, 10)
    finally:
        s.close()
    if data:
        problems.append("an answer to half a request: %r" % data[:200])
    if not closed:
        problems.append("the server did not close within 10 s")
    if not prober.wait_progress(before):
        problems.append("the probe got no answer meanwhile")
    verdict(name, problems, "no answer, the server closed its side, probe served")


def churn(port, total, at_once, limit_s):
    """total connections, at_once at a time: connect, GET / (every other
    one with Connection: close), read the 200, close.  Returns (done,
    errors)."""
    lock = threading.Lock()
    state = {"next": 0, "done": 0, "errors": []}
    deadline = now() + limit_s
    close_req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"

    def worker():
        while now() < deadline:
            with lock:
                if state["next"] >= total or len(state["errors"]) > 10:
                    return
                i = state["next"]
                state["next"] += 1
            try:
                with socket.create_connection((HOST, port), timeout=10) as s:
                    s.sendall(close_req if i % 2 else GET)
                    status, _, body, _ = read_response(s)
                    if status != 200 or body != HELLO:
                        raise ValueError("%d %r" % (status, body))
                with lock:
                    state["done"] += 1
            except Exception as e:  # noqa: BLE001
                with lock:
                    state["errors"].append("connection %d: %s: %s" % (i, type(e).__name__, e))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(at_once)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline - now()) + 15)
    return state["done"], state["errors"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True, help="the server's stderr, as a file")
    ap.add_argument("--header-timeout", type=float, required=True)
    ap.add_argument("--body-timeout", type=float, required=True)
    ap.add_argument("--max-body", type=int, required=True)
    ap.add_argument("--churn", type=int, default=10000)
    args = ap.parse_args()

    server = Server(args.port, args.log, connect_timeout=10)
    prober = GetProber(args.port)
    if not prober.start_and_wait():
        record(False, "the prober got no answer: %s" % prober.errors)
        return 1

    host = b"Host: 127.0.0.1\r\n"
    get = b"GET / HTTP/1.1\r\n" + host
    post = b"POST /echo HTTP/1.1\r\n" + host
    ht, bt = args.header_timeout, args.body_timeout

    # The slow ones in threads beside the rest: the run takes about the
    # longest timeout, not their sum.
    slow_threads = [
        threading.Thread(target=slow, daemon=True, args=(
            server, prober, "slowloris on the head (a byte every 0.2 s)",
            get, b"X-Slow: " + b"a" * 400, ht + 10, ht, "head")),
        threading.Thread(target=slow, daemon=True, args=(
            server, prober, "slowloris on the body (a byte every 0.2 s)",
            post + b"Content-Length: 400\r\n\r\n", b"b" * 400, ht + bt + 10, ht + bt, "body")),
    ]
    for t in slow_threads:
        t.start()

    # The codec's limits.
    refusal(server, prober, "request line of 9 KiB (limit 8 KiB)",
            b"GET /" + b"a" * (9 * KiB) + b" HTTP/1.1\r\n" + host + b"\r\n",
            [414], ["too large", "http 414"])
    refusal(server, prober, "huge header (a 32 KiB field; limit 16 KiB)",
            get + b"X-Big: " + b"a" * (32 * KiB) + b"\r\n\r\n",
            [431], ["too large", "http 431"])
    refusal(server, prober, "too many headers (65 small fields; limit 64)",
            get + b"".join(b"X-F%d: v\r\n" % i for i in range(65)) + b"\r\n",
            [431], ["too large", "http 431"])
    lines = b"".join(b"X-Line-%d: v\r\n" % i for i in range(2000))
    refusal(server, prober, "endless header lines (2000 fields, never ended)", None,
            [431], ["too large", "http 431"],
            chunks=[get] + [lines[i:i + 1024] for i in range(0, len(lines), 1024)])
    over = args.max_body + 1
    refusal(server, prober, "a %d-byte body (Content-Length; --max-body %d)" % (over, args.max_body),
            post + b"Content-Length: %d\r\n\r\n" % over + b"b" * over,
            [413], ["too large", "http 413"])
    chunked = b"".join(b"400\r\n" + b"c" * 1024 + b"\r\n" for _ in range(over // 1024 + 1))
    refusal(server, prober, "a chunked body over --max-body",
            post + b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n",
            [413], ["too large", "http 413"])
    # Smuggling (RFC 9112 6.1, 6.3).
    for name, payload in smuggling_cases(post):
        refusal(server, prober, name, payload, [400], ["protocol error", "http 400"])
    # Versions and garbage.
    refusal(server, prober, "HTTP/1.2", b"GET / HTTP/1.2\r\n" + host + b"\r\n",
            [505], ["protocol error", "http 505"])
    refusal(server, prober, "the HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            [505], ["protocol error", "http 505"])
    for name, payload in garbage_cases():
        refusal(server, prober, name, payload, [400], ["protocol error", "http 400"])
    refusal(server, prober, "HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n",
            [400], ["protocol error", "http 400"])
    # Pipelined: a good request, then garbage: the good one is answered,
    # then 400 and the close.
    refusal(server, prober, "pipelined garbage after a good request",
            get + b"\r\n" + b"\x00\x01garbage\r\n\r\n",
            [200, 400], ["protocol error", "http 400"])
    refusal(server, prober, "pipelined: two good requests, then a smuggling one",
            get + b"\r\n" + get + b"\r\n" + post +
            b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            [200, 200, 400], ["protocol error", "http 400"])
    # Half-sent requests, then the client goes.
    half_sent(server, prober, "half a request line, then close", b"GET /hal")
    half_sent(server, prober, "half a head, then close", get + b"X-Half: y")
    half_sent(server, prober, "a head and half its body, then close",
              post + b"Content-Length: 100\r\n\r\n" + b"h" * 50)

    for t in slow_threads:
        t.join(ht + bt + 30)
        if t.is_alive():
            record(False, "a slowloris client thread did not finish")

    # Churn: many short connections, a few at once.
    before = prober.progress()
    start = now()
    done, errors = churn(args.port, args.churn, 8, 120)
    count_answered(done)
    took = now() - start
    if done == args.churn and not errors and prober.wait_progress(before):
        record(True, "churn: %d connections (connect, GET /, 200, close; 8 at once) in %.1f s, "
               "probe served" % (done, took))
    else:
        record(False, "churn: %d of %d in %.1f s; errors: %s" % (done, args.churn, took,
                                                                 errors[:5]))

    prober.finish("prober", "%d GET / answered 200 on its own connections, never closed")

    print("http_hostile: requests answered: %d" % answered)
    return summary("http_hostile")


if __name__ == "__main__":
    sys.exit(main())
