#!/usr/bin/env python3
"""admin_hostile.py - hostile HTTP against a running crest admin endpoint.

Started by tests/admin.sh against its crest-echo --admin (it does not start
a server itself):

    tests/admin_hostile.py --admin PORT --data PORT --log SERVER_STDERR

Each scenario opens its own connection to the admin port on 127.0.0.1,
misbehaves, and checks that:

  - the answer has the right status and "Connection: close", and the
    server then closes the connection (or, for the slowloris, that the
    server closes it: its header timeout, 10 s by default);
  - the server's stderr has the reason logged for that connection, found
    by the client's own port ("connection 127.0.0.1:PORT (fd N) closed:
    protocol error: http 400 Bad Request: ...");
  - meanwhile the data port keeps echoing: a prober thread does verified
    round trips on connections of its own for the whole run, and must have
    made progress during every scenario, with no error.

The slowloris runs in its own thread beside the other scenarios, so the
whole run takes about the header timeout.  No timing thresholds beyond
generous bounds on waits.  Stdlib only; every socket has a timeout; every
loop is bounded.  Exit 0 if every check passed, 1 otherwise.
"""

import argparse
import os
import sys
import threading

# The shared helpers sit beside this script (also in a VPATH build, where
# it is run from the source tree); no bytecode left in that tree.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
from hostile_http_lib import (KiB, Prober, Server, garbage_cases, now,  # noqa: E402
                              parse_head, record, send_and_read, smuggling_cases,
                              summary, trickle, verdict)


# --------------------------------------------------------------------------
# The prober: verified echoes on the data port for the whole run
# --------------------------------------------------------------------------

class EchoProber(Prober):
    def __init__(self, port):
        super().__init__(port, timeout=5)

    def probe(self, s, seq):
        msg = (b"probe %08d " % seq) + os.urandom(48)
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            part = s.recv(len(msg) - len(got))
            if not part:
                raise ConnectionError("the echo server closed a probe connection")
            got += part
        if got != msg:
            raise ValueError("echo mismatch: sent %r, got %r" % (msg, got))


# --------------------------------------------------------------------------
# One hostile client
# --------------------------------------------------------------------------

def parse_response(data):
    """(status, {lower-case header: value}) of the first response, or
    (None, {})."""
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        return None, {}
    try:
        return parse_head(head)
    except ValueError:
        return None, {}


def refusal(server, prober, name, payload, status, log_words, chunks=None):
    """Send payload (or chunks, one send each), expect `status` with
    Connection: close, the connection closed, and the log line for this
    client containing each of log_words."""
    before = prober.progress()
    data, closed, cport = send_and_read(server, payload, chunks)
    got, headers = parse_response(data)
    problems = []
    if got != status:
        problems.append("status %s, not %d (reply %r)" % (got, status, data[:200]))
    elif headers.get("connection", "").lower() != "close":
        problems.append("no 'Connection: close' in %r" % data[:300])
    if not closed:
        problems.append("the connection was not closed within 10 s")
    line = server.check_closed_line(cport, log_words, problems)
    if not prober.wait_progress(before):
        problems.append("the data port served no probe meanwhile")
    verdict(name, problems, "%d, Connection: close, closed, logged %r, data port served"
            % (status, line))


args_header_timeout = 10.0  # the admin's default (CREST_HTTP_DEFAULT_HEADER_TIMEOUT_MS)


def slowloris(server, prober, limit_s):
    """A header byte every 0.5 s: the server must close the connection
    (header timeout), and log a read timeout for it."""
    before = prober.progress()
    s, cport = server.connect()
    start = now()
    data = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 200
    try:
        reply, closed = trickle(s, b"", data, 0.5, start, limit_s)
    finally:
        s.close()
    took = now() - start
    problems = []
    if not closed:
        problems.append("still open after %.1f s" % took)
    if closed and took < args_header_timeout - 2:
        problems.append("closed after %.1f s, before the header timeout (%.0f s)"
                        % (took, args_header_timeout))
    # The HTTP server logs each read timeout: "http: 127.0.0.1:PORT:
    # request head not whole within N ms: closed (read timeout)".
    line = server.timeout_line(cport)
    if line is None:
        problems.append("no log line names the read timeout of 127.0.0.1:%d" % cport)
    got, headers = parse_response(reply)
    if got is not None and headers.get("connection", "").lower() != "close":
        problems.append("an answer (%d) without Connection: close" % got)
    if prober.progress() <= before:
        problems.append("the data port served no probe meanwhile")
    if problems:
        record(False, "slowloris: %s" % "; ".join(problems))
    else:
        record(True, "slowloris (a byte every 0.5 s): closed after %.1f s (header timeout "
               "%.0f s)%s, %s, data port served %d probes meanwhile"
               % (took, args_header_timeout, " with %d" % got if got else " without an answer",
                  "logged %r" % line,
                  prober.progress() - before))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--admin", type=int, required=True, help="the admin port")
    ap.add_argument("--data", type=int, required=True, help="the echo (data) port")
    ap.add_argument("--log", required=True, help="the server's stderr, as a file")
    ap.add_argument("--slowloris-limit", type=float, default=20.0,
                    help="seconds the slowloris may stay open (default 20; the "
                         "admin's header timeout is 10 s)")
    args = ap.parse_args()

    server = Server(args.admin, args.log, connect_timeout=5)
    prober = EchoProber(args.data)
    if not prober.start_and_wait():
        record(False, "the data-port prober got no echo: %s" % prober.errors)
        return 1

    slow = threading.Thread(target=slowloris, args=(server, prober, args.slowloris_limit),
                            daemon=True)
    slow.start()

    get = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    post = b"POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"

    # Oversized: one header field of 32 KiB (the head's limit is 16 KiB).
    refusal(server, prober, "huge header (32 KiB field)",
            get + b"X-Big: " + b"a" * (32 * KiB) + b"\r\n\r\n",
            431, ["too large", "http 431"])
    # Endless header lines: small fields, far more than 64, sent in
    # batches as a client that never ends its head would.
    lines = b"".join(b"X-Line-%d: v\r\n" % i for i in range(2000))
    refusal(server, prober, "endless header lines (2000 fields, never ended)", None,
            431, ["too large", "http 431"],
            chunks=[get] + [lines[i:i + 1024] for i in range(0, len(lines), 1024)])
    # A request line over 8 KiB.
    refusal(server, prober, "request line of 9 KiB",
            b"GET /" + b"a" * (9 * KiB) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            414, ["too large", "http 414"])
    # Garbage: binary bytes, then a TLS ClientHello's first bytes.
    for name, payload in garbage_cases():
        refusal(server, prober, name, payload, 400, ["protocol error", "http 400"])
    refusal(server, prober, "bare LF garbage line",
            b"\x7f\x7f\x7f\n\n", 400, ["protocol error", "http 400"])
    # Smuggling attempts (RFC 9112 6.1, 6.3).
    for name, payload in smuggling_cases(post):
        refusal(server, prober, name, payload, 400, ["protocol error", "http 400"])
    refusal(server, prober, "smuggling: Content-Length list 5, 6",
            post + b"Content-Length: 5, 6\r\n\r\nhello!",
            400, ["protocol error", "http 400"])
    refusal(server, prober, "smuggling: Content-Length with a sign",
            post + b"Content-Length: +5\r\n\r\nhello",
            400, ["protocol error", "http 400"])
    refusal(server, prober, "smuggling: space before the colon",
            post + b"Content-Length : 5\r\n\r\nhello",
            400, ["protocol error", "http 400"])
    # Bodies over the admin's 4 KiB limit: announced, and chunked.
    refusal(server, prober, "a 5000-byte body (Content-Length; limit 4 KiB)",
            post + b"Content-Length: 5000\r\n\r\n" + b"b" * 5000,
            413, ["too large", "http 413"])
    chunked = b"".join(b"400\r\n" + b"c" * 1024 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    refusal(server, prober, "a 5 KiB chunked body (limit 4 KiB)",
            post + b"Transfer-Encoding: chunked\r\n\r\n" + chunked,
            413, ["too large", "http 413"])

    slow.join(args.slowloris_limit + 15)
    if slow.is_alive():
        record(False, "slowloris: the client thread did not finish")

    prober.finish("data-port prober", "%d verified echoes, no error")

    return summary("admin_hostile")


if __name__ == "__main__":
    sys.exit(main())
