#!/bin/bash
# samples.sh - the sample servers under load from crest-bench, end to end.
#
# Starts the real binaries (crest-echo, crest-framed) on free ports, drives
# each with crest-bench in every mode (every reply checked byte for byte by
# crest-bench), checks the oversized-frame and too-long-line cases (the bad
# connection is closed with the right reason while others keep being
# served), the default timeouts (a half line is closed after 10 s), then
# stops each server with SIGTERM and checks its final report:
# exit status 0, "0 fds leaked", no buffer bytes outstanding.  crest-chat
# is driven by Python clients (below): every line reaches every other
# client, on one loop and across two, never its sender; a client that never
# reads is closed at --max-output while the server's RSS stays bounded.
# The latency insight options: --doctor prints "doctor: no latency problem
# found" for an idle server, --doctor-json writes JSON lines (each with a
# "findings" array) readable while the server runs, --work 5000 makes the
# report count slow callbacks and name "echo", --no-insight still serves.
# No timing thresholds: every check is on counts and text.
#
# Run by `make check`; by hand: abs_top_builddir=. bash tests/samples.sh
set -u

. "$(dirname "$0")/lib.sh"

bin=${abs_top_builddir:-.}/samples

# start NAME ARGS...: run a server on port 0, wait for "listening on", set
# $addr and $pid.
start() {
    local name=$1; shift
    local log=$work/$name.log
    "$bin/$name" --port 0 "$@" >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    addr=
    for _ in $(seq 1 100); do
        addr=$(sed -n 's/^listening on //p' "$log" | head -n 1)
        [ -n "$addr" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "server $name did not start:"; cat "$log"
    return 1
}

# stop NAME: SIGTERM, wait, check the report.
stop() {
    local name=$1 log=$work/$1.log rc
    kill -TERM "$pid"
    wait "$pid"; rc=$?
    if [ "$rc" -eq 0 ] && grep -q '^  0 fds leaked' "$log" &&
        grep -q 'buffer bytes outstanding: 0' "$log"; then
        pass "$name: SIGTERM report: exit 0, 0 fds leaked, 0 buffer bytes"
    else
        fail "$name: SIGTERM report (exit $rc):"; cat "$log"
    fi
}

# log_has SERVER ERE WHAT: a check that SERVER's log ($work/SERVER.log)
# matches ERE; on failure the log is shown.
log_has() {
    if grep -Eq "$2" "$work/$1.log"; then
        pass "$3"
    else
        fail "$3: no /$2/ in the $1 log"; cat "$work/$1.log"
    fi
}

# bench EXPECT LABEL ARGS...: run crest-bench; EXPECT ok (exit 0, no
# errors, messages > 0) or fail (exit non-zero).
bench() {
    local expect=$1 label=$2; shift 2
    local out=$work/bench.out rc
    "$bin/crest-bench" --quiet "$@" >"$out" 2>&1; rc=$?
    local line msgs errors
    line=$(grep '^crest-bench:' "$out")
    msgs=$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^msgs=//p')
    errors=$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^errors=//p')
    if [ "$expect" = ok ]; then
        if [ "$rc" -eq 0 ] && [ "${errors:-1}" -eq 0 ] && [ "${msgs:-0}" -gt 0 ]; then
            pass "$label ($msgs replies verified)"
        else
            fail "$label: exit $rc"; cat "$out"
        fi
    else
        # Refused means: the server closed the connection on us, nothing else.
        local early
        early=$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^err_closed_early=//p')
        if [ "$rc" -ne 0 ] && [ "${early:-0}" -ge 1 ] && [ "${msgs:-1}" -eq 0 ]; then
            pass "$label (the server closed it: exit $rc, closed_early=$early)"
        else
            fail "$label: crest-bench should have failed"; cat "$out"
        fi
    fi
}

# --- crest-echo, raw ---------------------------------------------------------
if start crest-echo --quiet; then
    bench ok "echo raw, 20 conns, depth 1" -c 20 -n 200 -s 64 "$addr"
    bench ok "echo raw, 10 conns, depth 16" -c 10 -n 400 -P 16 -s 64 "$addr"
    bench ok "echo raw, 4 KiB messages" -c 4 -n 100 -s 4096 "$addr"
    bench ok "echo raw, 2 client threads" -c 8 -t 2 -n 100 "$addr"
    stop crest-echo
fi

# --- crest-echo --line, and a line over --max-line ---------------------------
if start crest-echo --quiet --line --max-line 100; then
    bench ok "echo --line, 10 conns" --mode line -c 10 -n 200 -s 50 "$addr"
    bench fail "echo --line: a 200-byte line is refused" --mode line -c 1 -n 1 -s 200 "$addr"
    bench ok "echo --line keeps serving after it" --mode line -c 5 -n 100 -s 100 "$addr"
    stop crest-echo
    log_has crest-echo 'closed: too large: line too long' \
        "echo --line: crest logged reason 'too large', detail 'line too long'"
    log_has crest-echo 'close reasons:.*too large 1' \
        "echo --line: one connection closed for 'too large'"
fi

# --- crest-echo, two worker threads ------------------------------------------
if start crest-echo --quiet --threads 2; then
    bench ok "echo --threads 2" -c 16 -n 100 "$addr"
    stop crest-echo
fi

# --- crest-echo on a Unix socket ---------------------------------------------
sock=$work/echo.sock
"$bin/crest-echo" --quiet --unix "$sock" >"$work/crest-echo.log" 2>&1 &
pid=$!; pids+=("$pid")
for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.05; done
bench ok "echo over a Unix socket" -c 4 -n 100 --unix "$sock"
stop crest-echo

# --- crest-framed, and a frame over --max-frame ------------------------------
if start crest-framed --quiet --max-frame 1000; then
    bench ok "framed, 10 conns, depth 8" --mode frame -c 10 -n 200 -P 8 -s 100 "$addr"
    bench ok "framed, frames of exactly --max-frame" --mode frame -c 2 -n 50 -s 1000 "$addr"
    bench fail "framed: a 2000-byte frame is refused" --mode frame -c 1 -n 1 -s 2000 "$addr"
    bench ok "framed keeps serving after it" --mode frame -c 5 -n 100 -s 10 "$addr"
    stop crest-framed
    log_has crest-framed 'closed: too large: frame too large' \
        "framed: crest logged reason 'too large', detail 'frame too large'"
    log_has crest-framed 'close reasons:.*too large 1' \
        "framed: one connection closed for 'too large'"
fi

# --- latency insight: the doctor's windows, its JSON, a slow handler --------
# (No thresholds on speed: an idle server is healthy; a handler that spins
# 5 ms per read against the 1 ms threshold is slow by 5x.)
py=${PYTHON3:-$(command -v python3)}
# wait_for SERVER ERE COUNT: wait (bounded, 10 s) until SERVER's log has
# COUNT lines matching ERE.
wait_for() {
    for _ in $(seq 1 200); do
        [ "$(grep -Ec "$2" "$work/$1.log")" -ge "$3" ] && return 0
        sleep 0.05
    done
    return 1
}
# json_check FILE MIN WHAT: every line of FILE parses as JSON with a
# "findings" array, at least MIN lines; with "run" the last is the whole
# run's ("scope": "run").
json_check() {
    "$py" - "$@" <<'PYEOF'
import json, sys
path, need, last = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path) as f:
    lines = f.read().splitlines()
try:
    objs = [json.loads(l) for l in lines]
except ValueError as e:
    print("FAIL a line of %s is not JSON (%s): %r" % (path, e, lines))
    sys.exit(1)
bad = [o for o in objs if not isinstance(o.get("findings"), list)]
if len(objs) < need or bad:
    print("FAIL %d lines (want %d), %d without a findings array: %r" % (len(objs), need, len(bad), lines[:3]))
    sys.exit(1)
if last == "run" and objs[-1].get("scope") != "run":
    print("FAIL the last line is not the whole run's: %r" % lines[-1])
    sys.exit(1)
print("ok   %d lines, each with a findings array%s" % (len(objs), ", the last the whole run's" if last == "run" else ""))
PYEOF
}
if [ -z "$py" ]; then
    echo "insight: skipped: no python3"
elif start crest-echo --quiet --threads 2 --doctor 0.5 --doctor-json "$work/doctor.json"; then
    if wait_for crest-echo '^doctor: no latency problem found' 2; then
        pass "echo --doctor 0.5 --threads 2 -q: an idle server prints 'doctor: no latency problem found' each window"
    else
        fail "echo --doctor: no two 'doctor: no latency problem found' lines"; cat "$work/crest-echo.log"
    fi
    bench ok "echo --doctor --doctor-json: serves" -c 4 -n 100 "$addr"
    # Read while the server runs: each line is flushed as it is written.
    out=$(json_check "$work/doctor.json" 2 window); rc=$?
    [ "$rc" -eq 0 ] && pass "echo --doctor-json while running: ${out#ok   }" ||
        { fail "echo --doctor-json while running: ${out#FAIL }"; }
    stop crest-echo
    out=$(json_check "$work/doctor.json" 3 run); rc=$?
    [ "$rc" -eq 0 ] && pass "echo --doctor-json at exit: ${out#ok   }" ||
        { fail "echo --doctor-json at exit: ${out#FAIL }"; }
    log_has crest-echo '^  loop: [1-9][0-9]* iterations, utilization' \
        "echo --doctor: the report gains the loop's iterations and utilization"
    log_has crest-echo '^  doctor \(whole run\):' "echo --doctor: the report gains the whole run's findings"
fi
# --work 5000: every read spins 5 ms, over the 1 ms threshold: the report
# counts slow callbacks and names the handler (the doctor's rule is not
# asserted here: its figures are).
if start crest-echo --quiet --work 5000; then
    bench ok "echo --work 5000: serves" -c 1 -n 5 "$addr"
    stop crest-echo
    log_has crest-echo '^  slow callbacks: [1-9][0-9]* over .*worst [0-9.]+ ms in "echo" on_data' \
        "echo --work 5000: the report counts slow callbacks and names \"echo\" on_data"
fi
if start crest-echo --quiet --no-insight; then
    bench ok "echo --no-insight: serves" -c 4 -n 100 "$addr"
    stop crest-echo
    log_has crest-echo '^  insight: off \(--no-insight\)' "echo --no-insight: the report says insight is off"
fi

# --- safe defaults: a slowloris line is closed by the default read timeout --
if start crest-echo --line; then
    log_has crest-echo '^timeouts: idle 300 s, read 10 s' "echo --line: default timeouts printed"
    # Half a line, then nothing: the default read timeout (10 s) closes it.
    # The wait is a bound, not a threshold.
    exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}"
    printf 'half a line' >&3
    for _ in $(seq 1 600); do
        grep -q 'closed: read timeout' "$work/crest-echo.log" && break
        sleep 0.1
    done
    exec 3<&-
    log_has crest-echo 'closed: read timeout' "echo --line: a half line closed by the default read timeout"
    stop crest-echo
fi
if start crest-framed --quiet --read-timeout 0 --idle-timeout 0; then
    log_has crest-framed '^timeouts: idle off, read off' "framed: both timeouts off with 0"
    stop crest-framed
fi

# --- crest-chat: each line to every other client, across threads, and a
# --- client that never reads is dropped at --max-output ---------------------
# chat_clients MODE: the clients, in Python (stdlib only; every wait bounded).
#   broadcast N: N clients; once the server has logged each one open, each
#     sends 3 lines; each must then receive the 3(N-1) lines of the others,
#     each sender's in order, and none of its own.
#   slow: a reader R, a client S that never reads (SO_RCVBUF 4096) and a
#     publisher P; P sends 4,096 lines of 8 KiB (32 MiB), never more than 32
#     lines ahead of what R has read; R must get every line, in order; S must
#     be closed by the server (EOF or reset); the server's VmRSS
#     (/proc/PID/status), sampled throughout, must grow by less than 16 MiB
#     (half of what went through: without the cap S's queue would hold it);
#     not in a sanitizer build (libasan or libtsan in /proc/PID/maps), whose
#     allocator keeps freed memory in quarantine: crest's buffer-bytes
#     figures still bound it there.
# Prints one "ok ..." or "FAIL ..." line.
py=${PYTHON3:-$(command -v python3)}
chat_clients() {
    "$py" - "$@" <<'PYEOF'
import re, socket, sys, time
mode, logp, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
def log():
    with open(logp) as f:
        return f.read()
port = int(re.search(r"listening on .*:(\d+)", log()).group(1))
def conn(rcvbuf=None):
    c = socket.socket()
    if rcvbuf:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    c.settimeout(10)
    c.connect(("127.0.0.1", port))
    return c
def opens():
    return len(re.findall(r"^conn .* open$", log(), re.M))
opens0 = opens()  # the server may have served others before
def opened(n):
    for _ in range(200):
        if opens() >= opens0 + n:
            return True
        time.sleep(0.05)
    return False
def rss():
    with open("/proc/%d/status" % pid) as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    return 0
def sanitized():
    with open("/proc/%d/maps" % pid) as f:
        return any(n in f.read() for n in ("libasan", "libtsan"))
def result(ok, msg):
    print(("ok   " if ok else "FAIL ") + msg)
    sys.exit(0 if ok else 1)
if mode == "broadcast":
    n = int(sys.argv[4])
    cs = [conn() for _ in range(n)]
    if not opened(n):
        result(False, "chat: the server did not log %d connections open" % n)
    for i, c in enumerate(cs):
        c.sendall(b"".join(b"from %d line %d\r\n" % (i, j) for j in range(3)))
    for i, c in enumerate(cs):
        buf = b""
        while buf.count(b"\n") < 3 * (n - 1):
            d = c.recv(65536)
            if not d:
                result(False, "chat: client %d: EOF after %r" % (i, buf[-80:]))
            buf += d
        got = buf.split(b"\n")[:-1]
        want = sorted(b"from %d line %d" % (k, j) for k in range(n) if k != i for j in range(3))
        if sorted(got) != want:
            result(False, "chat: client %d got %d lines, not the others' 3 each: %r" %
                   (i, len(got), got[:6]))
        for k in range(n):
            mine = [l for l in got if l.startswith(b"from %d " % k)]
            if mine != sorted(mine):
                result(False, "chat: client %d got client %d's lines out of order" % (i, k))
    for c in cs:
        c.close()
    result(True, "chat: %d clients, 3 lines each: every client got the other %d clients' "
           "lines, in order, none of its own" % (n, n - 1))
R, S, P = conn(), conn(rcvbuf=4096), conn()
if not opened(3):
    result(False, "chat: the server did not log 3 connections open")
rss0 = peak = rss()
count, size, window = 4096, 8192, 32
line = lambda i: b"%08d " % i + b"x" * (size - 10)
sent = got = 0
buf = b""
while got < count:
    while sent < count and sent - got < window:
        P.sendall(line(sent) + b"\n")
        sent += 1
    d = R.recv(1 << 20)
    if not d:
        result(False, "chat: the reader got EOF after %d lines" % got)
    buf += d
    parts = buf.split(b"\n")
    buf = parts.pop()
    for l in parts:
        if l != line(got):
            result(False, "chat: the reader's line %d is wrong" % got)
        got += 1
    if got % 128 == 0:
        peak = max(peak, rss())
peak = max(peak, rss())
S.settimeout(10)
how = "open"
try:
    while S.recv(1 << 20):
        pass
    how = "eof"
except ConnectionResetError:
    how = "reset"
except socket.timeout:
    pass
for c in (R, S, P):
    c.close()
san = sanitized()
ok = how != "open" and (san or peak - rss0 < 16 * 1024)
result(ok, "chat: a reader got all %d lines of 8 KiB in order; the client that never "
       "reads was closed by the server (%s); server VmRSS %d KiB -> peak %d KiB (+%d KiB, "
       "%s) while 32 MiB went through" % (got, how, rss0, peak, peak - rss0,
       "not bounded: a sanitizer build" if san else "bound 16 MiB"))
PYEOF
}

# chat_check MODE ARGS...: chat_clients against the server started last.
chat_check() {
    local out rc
    out=$(chat_clients "$1" "$work/crest-chat.log" "$pid" "${@:2}" 2>&1); rc=$?
    if [ "$rc" -eq 0 ]; then
        pass "${out#ok   }"
    else
        fail "${out#FAIL }"; tail -n 20 "$work/crest-chat.log"
    fi
}

if [ -z "$py" ]; then
    echo "crest-chat: skipped: no python3"
else
    if start crest-chat; then
        chat_check broadcast 3
        stop crest-chat
        log_has crest-chat '^  chat: 9 lines in, 18 lines out' \
            "chat: the report counts 9 lines in, 18 out (each to the 2 others)"
    fi
    # 16 clients: SO_REUSEPORT spreads them over both loops (all on one
    # loop: a chance of 2 in 65,536); the report says lines crossed.
    if start crest-chat --threads 2; then
        chat_check broadcast 16
        stop crest-chat
        log_has crest-chat '^  chat: 48 lines in, 720 lines out' \
            "chat --threads 2: 48 lines in, 720 out (each to the 15 others)"
        log_has crest-chat '^  chat: [1-9][0-9]* batches of lines passed to another loop' \
            "chat --threads 2: lines crossed between the loops"
    fi
    # --max-backlog 1: a loop that has just posted a batch to the other
    # finds it over the backlog bound and pauses its clients until the
    # other loop has delivered it; no line may be lost or reordered.
    if start crest-chat --threads 2 --max-backlog 1; then
        chat_check broadcast 16
        stop crest-chat
        log_has crest-chat '^  chat: 48 lines in, 720 lines out' \
            "chat --max-backlog 1: still 48 lines in, 720 out"
        log_has crest-chat 'reading paused [1-9][0-9]* times? \(another loop over --max-backlog 1 bytes\)' \
            "chat --max-backlog 1: a loop paused reading while the other caught up"
    fi
    if start crest-chat --threads 2; then
        chat_check slow
        stop crest-chat
        log_has crest-chat 'closed: output limit' \
            "chat: the client that never reads was logged closed: output limit"
        log_has crest-chat '^  close reasons:.*output limit 1' \
            "chat: the report counts one close for the output limit"
        log_has crest-chat '^  chat: 4096 lines in, .* 1 slow client dropped' \
            "chat: the report counts 4096 lines in and 1 slow client dropped"
    fi
    if "$bin/crest-chat" --workers 2 >"$work/crest-chat.log" 2>&1; then
        fail "chat: --workers 2 should be refused"
    else
        log_has crest-chat 'workers: its clients must share one process' \
            "chat: --workers is refused (clients must share one process)"
    fi
fi

echo "$((checks - failures)) of $checks checks passed"
[ "$failures" -eq 0 ]
