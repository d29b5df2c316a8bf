#!/bin/bash
# samples.sh - the sample servers under load from crest-bench, end to end.
#
# Starts the real binaries (crest-echo, crest-framed) on free ports, drives
# each with crest-bench in every mode (every reply checked byte for byte by
# crest-bench), checks the oversized-frame and too-long-line cases (the bad
# connection is closed with the right reason while others keep being
# served), the default timeouts (a half line is closed after 10 s), then
# stops each server with SIGTERM and checks its final report:
# exit status 0, "0 fds leaked", no buffer bytes outstanding.
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

echo "$((checks - failures)) of $checks checks passed"
[ "$failures" -eq 0 ]
