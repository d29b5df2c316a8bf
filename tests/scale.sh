#!/bin/bash
# scale.sh - the scale test in small: many connections held open at once,
# over several server and client processes.
#
# crest-echo --workers 2 (two processes, each with its own SO_REUSEPORT
# listener) holds 2,000 concurrent connections from crest-bench -j 2 (two
# client processes, source addresses 127.0.0.2-127.0.0.3) for about 10 s,
# while every connection sends a 64-byte message every 2 s (--rate 1000 in
# all) and checks every reply.  Then the server is stopped with SIGTERM.
#
# Checks (counts only, no timing thresholds): every connection established,
# none failed, no error of any kind (a wrong reply is a "mismatch" error),
# replies came; the server saw all 2,000 at once (the sum of its processes'
# fd peaks), drained, exited 0 with "0 fds leaked" and no buffer bytes held.
#
# The full-size run (100,000 connections) is bench/scale, not part of
# make check.  By hand: abs_top_builddir=. bash tests/scale.sh
set -u

. "$(dirname "$0")/lib.sh"

bin=${abs_top_builddir:-.}/samples
conns=${SCALE_CONNS:-2000}

# kv KEY FILE: a value from the crest-bench: key=value line.
kv() { grep '^crest-bench:' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }

"$bin/crest-echo" --port 0 --workers 2 --quiet >"$work/server.log" 2>&1 &
server=$!
pids+=("$server")
addr=
for _ in $(seq 1 100); do
    addr=$(sed -n 's/^listening on //p' "$work/server.log" | head -n 1)
    [ -n "$addr" ] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.05
done
if [ -z "$addr" ]; then
    echo "crest-echo --workers 2 did not start:"; cat "$work/server.log"
    exit 1
fi
pass "crest-echo --workers 2 listening on $addr"

"$bin/crest-bench" -j 2 -c "$conns" --bind 127.0.0.2-127.0.0.3 --rate $((conns / 2)) \
    --warmup 3 -d 7 "$addr" >"$work/bench.log" 2>&1
rc=$?
cat "$work/bench.log"
established=$(kv conns "$work/bench.log")
failed=$(kv conn_failed "$work/bench.log")
errors=$(kv errors "$work/bench.log")
mismatch=$(kv err_mismatch "$work/bench.log")
msgs=$(kv msgs "$work/bench.log")
[ "$rc" -eq 0 ] && pass "crest-bench -j 2 exit 0" || fail "crest-bench exit $rc"
[ "${established:-0}" -eq "$conns" ] && pass "$conns connections established" ||
    fail "established: ${established:-?} of $conns"
[ "${failed:-1}" -eq 0 ] && pass "0 failed connections" || fail "failed connections: ${failed:-?}"
[ "${errors:-1}" -eq 0 ] && [ "${mismatch:-1}" -eq 0 ] &&
    pass "0 errors, 0 wrong replies" || fail "errors ${errors:-?}, mismatches ${mismatch:-?}"
[ "${msgs:-0}" -gt 0 ] && pass "$msgs replies verified in the window" || fail "no replies measured"

kill -TERM "$server"
wait "$server"
rc=$?
pids=()
cat "$work/server.log"
[ "$rc" -eq 0 ] && pass "crest-echo exit 0 after SIGTERM" || fail "crest-echo exit $rc"
grep -q '^  0 fds leaked' "$work/server.log" && pass "crest-echo: 0 fds leaked" ||
    fail "crest-echo: fds leaked"
grep -q 'buffer bytes outstanding: 0 ' "$work/server.log" && pass "crest-echo: 0 buffer bytes" ||
    fail "crest-echo: buffer bytes outstanding"
served=$(sed -n 's/^  connections: \([0-9]*\) served.*/\1/p' "$work/server.log")
[ "${served:-0}" -eq "$conns" ] && pass "crest-echo served $conns connections" ||
    fail "crest-echo served ${served:-?}"
peak=$(sed -n 's/^  fds: .* peak \([0-9]*\) open at once.*/\1/p' "$work/server.log")
[ "${peak:-0}" -ge "$conns" ] && pass "crest-echo held them at once (fd peaks sum to $peak)" ||
    fail "crest-echo fd peak ${peak:-?} < $conns"

echo "$((checks - failures)) of $checks checks passed"
[ "$failures" -eq 0 ]
