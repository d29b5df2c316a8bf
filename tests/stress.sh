#!/bin/bash
# stress.sh - data integrity under load (`make stress`).
#
# At least STRESS_BYTES (default 1 GiB) of payload through each of:
#   crest-echo (raw)          one server thread, 64 connections, pipeline 16
#   crest-echo (raw)          two server threads, two client threads
#   crest-echo --line         lines of random length
#   crest-framed              frames of random length up to 64 KiB
# Message sizes are random (crest-bench --size-random), requests are
# pipelined, and crest-bench checks every byte of every reply against what
# it sent (the expected reply is regenerated from the connection id and
# sequence number).  Then the server's own counters must agree exactly:
# bytes in = what was sent (payload plus framing), bytes out = what came
# back; and its SIGTERM report: exit 0, 0 fds leaked, no buffer bytes
# outstanding.
#
# Run from a build directory (abs_top_builddir).  Exits 0 only if every
# check passed.
set -u

. "$(dirname "$0")/lib.sh"

bin=${abs_top_builddir:-.}/samples
want=${STRESS_BYTES:-1073741824}

start() {
    local name=$1; shift
    log=$work/$name.log
    "$bin/$name" --port 0 --quiet "$@" >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    addr=
    for _ in $(seq 1 200); do
        addr=$(sed -n 's/^listening on //p' "$log" | head -n 1)
        [ -n "$addr" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    fail "$name $*: did not start"; cat "$log"
    return 1
}

# run LABEL MIN MAX PREFIX SUFFIX_IN SUFFIX_OUT BENCH-ARGS...: one server
# already started; bench with random sizes MIN-MAX until at least $want
# payload bytes; PREFIX/SUFFIX_* are the framing bytes per message (in: the
# request's, out: the reply's) for the byte accounting.
run() {
    local label=$1 min=$2 max=$3 pin=$4 pout=$5; shift 5
    local conns=64 rc out=$work/bench.out
    # replies per connection so that the expected total (mean size) is
    # comfortably above $want
    local per=$(( (want * 5 / 4) / ((min + max) / 2) / conns + 1 ))
    local t0=$SECONDS
    "$bin/crest-bench" --quiet --timeout 60 -c $conns -n $per --size-random "$min-$max" "$@" \
        "$addr" >"$out" 2>&1
    rc=$?
    local line kv_msgs kv_bytes kv_errors
    line=$(grep '^crest-bench:' "$out")
    kv() { printf '%s\n' "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    kv_msgs=$(kv msgs); kv_bytes=$(kv payload_bytes); kv_errors=$(kv errors)
    if [ "$rc" -eq 0 ] && [ "${kv_errors:-1}" -eq 0 ] && [ "${kv_msgs:-0}" -eq $((conns * per)) ] &&
        [ "${kv_bytes:-0}" -ge "$want" ]; then
        pass "$label: $kv_msgs messages of $min-$max bytes over $conns connections, $kv_bytes payload bytes each way, every byte checked ($((SECONDS - t0)) s, $(kv mb_per_s) MB/s)"
    else
        fail "$label: crest-bench exit $rc, msgs ${kv_msgs:-?} of $((conns * per)), payload ${kv_bytes:-?} (want >= $want)"
        cat "$out"
    fi
    # The server's side of the story, after SIGTERM.
    kill -TERM "$pid"
    wait "$pid"; rc=$?
    local sin sout
    sin=$(sed -n 's/^  bytes: \([0-9]*\) in, \([0-9]*\) out.*/\1/p' "$log")
    sout=$(sed -n 's/^  bytes: \([0-9]*\) in, \([0-9]*\) out.*/\2/p' "$log")
    local ein=$(( ${kv_bytes:-0} + ${kv_msgs:-0} * pin ))
    local eout=$(( ${kv_bytes:-0} + ${kv_msgs:-0} * pout ))
    if [ "$rc" -eq 0 ] && [ "${sin:-x}" = "$ein" ] && [ "${sout:-x}" = "$eout" ] &&
        grep -q '^  0 fds leaked' "$log" && grep -q 'buffer bytes outstanding: 0' "$log"; then
        pass "$label: server counted $sin bytes in, $sout out (exactly what was sent and verified); exit 0, 0 fds leaked, 0 buffer bytes"
    else
        fail "$label: server exit $rc, bytes in ${sin:-?} (expected $ein), out ${sout:-?} (expected $eout)"
        cat "$log"
    fi
}

t0=$SECONDS
start crest-echo && run "echo raw" 1 65536 0 0 -P 16
start crest-echo --threads 2 && run "echo raw, 2 server + 2 client threads" 1 65536 0 0 -P 8 -t 2
start crest-echo --line --max-line 64k && run "echo --line" 0 16384 1 7 --mode line -P 16
start crest-framed --max-frame 64k && run "framed" 0 65536 4 4 --mode frame -P 16
echo "stress: $((checks - failures)) of $checks checks passed in $((SECONDS - t0)) s"
[ "$failures" -eq 0 ]
