#!/bin/bash
# haproxy.sh - crest-echo behind HAProxy with the PROXY protocol.
#
# Three crest-echo instances on free loopback ports, logging connections
# (not --quiet): two with --proxy-protocol v2 behind HAProxy's
# send-proxy-v2, one with --proxy-protocol any behind send-proxy (v1).
# HAProxy (TCP mode, round robin, config in a temp dir, foreground -db,
# stopped by its PID) listens in front of them.  crest-bench connects
# through HAProxy from the source addresses 127.0.0.5 and 127.0.0.6
# (--bind) and checks every reply byte for byte.
#
# Checks: no errors; every backend served connections; the crest-echo logs
# name the clients 127.0.0.5 and 127.0.0.6 (from the PROXY header), one
# "open" line per connection, and never HAProxy's own address (127.0.0.1);
# a client that connects to a --proxy-protocol v2 server directly, without
# a header, is closed with "protocol error"; every server exits 0 with
# "0 fds leaked".
#
# Skips (exit 77) when haproxy is not installed; CI installs it
# (scripts/deps).  By hand: abs_top_builddir=. bash tests/haproxy.sh
# (KEEP_WORK=1 keeps the temp dir with the logs and the config).
set -u

. "$(dirname "$0")/lib.sh"

bin=${abs_top_builddir:-.}/samples
haproxy=$(command -v haproxy || ls /usr/sbin/haproxy /usr/local/sbin/haproxy 2>/dev/null | head -n 1)
if [ -z "$haproxy" ]; then
    echo "SKIP: haproxy is not installed (apt-get install haproxy; scripts/deps does)"
    exit 77
fi

conns=30

kv() { grep '^crest-bench:' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }

# start N ARGS...: crest-echo number N on a free port; sets port[N], spid[N].
declare -a port spid
start() {
    local n=$1; shift
    local log=$work/echo$n.log
    "$bin/crest-echo" --port 0 "$@" >"$log" 2>&1 &
    spid[$n]=$!
    pids+=("${spid[$n]}")
    for _ in $(seq 1 100); do
        port[$n]=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$log" | head -n 1)
        [ -n "${port[$n]}" ] && return 0
        sleep 0.05
    done
    echo "crest-echo $n did not start:"; cat "$log"
    exit 1
}

# listening PORT: is a TCP socket listening on 127.0.0.1:PORT?  Read from
# /proc/net/tcp (state 0A is LISTEN), so that no probe connection goes
# through HAProxy and shows up in the crest-echo logs.
listening() {
    local hex
    hex=$(printf '%04X' "$1")
    grep -q "^ *[0-9]*: 0100007F:$hex 00000000:0000 0A" /proc/net/tcp
}

start 1 --proxy-protocol v2
start 2 --proxy-protocol v2
start 3 --proxy-protocol any
pass "3 crest-echo instances on ports ${port[1]}, ${port[2]}, ${port[3]}"

# HAProxy on a port below the ephemeral range; another one if it is taken.
hpid=
for try in 1 2 3 4 5; do
    front=$((20000 + (RANDOM + $$ * try) % 10000))
    cat >"$work/haproxy.cfg" <<EOF
global
    maxconn 1000

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend crest_front
    bind 127.0.0.1:$front
    default_backend crest_echo

backend crest_echo
    balance roundrobin
    server echo1 127.0.0.1:${port[1]} send-proxy-v2
    server echo2 127.0.0.1:${port[2]} send-proxy-v2
    server echo3 127.0.0.1:${port[3]} send-proxy
EOF
    "$haproxy" -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
    hpid=$!
    pids+=("$hpid")
    for _ in $(seq 1 100); do
        listening "$front" && break
        kill -0 "$hpid" 2>/dev/null || break
        sleep 0.05
    done
    listening "$front" && kill -0 "$hpid" 2>/dev/null && break
    kill -KILL "$hpid" 2>/dev/null
    wait "$hpid" 2>/dev/null
    hpid=
done
if [ -z "$hpid" ]; then
    echo "haproxy did not start:"; cat "$work/haproxy.log" "$work/haproxy.cfg"
    exit 1
fi
pass "haproxy (pid $hpid) on 127.0.0.1:$front, send-proxy-v2 to two, send-proxy to one"

"$bin/crest-bench" -c "$conns" -n 50 -P 4 --bind 127.0.0.5-127.0.0.6 "127.0.0.1:$front" \
    >"$work/bench.log" 2>&1
rc=$?
errors=$(kv errors "$work/bench.log")
msgs=$(kv msgs "$work/bench.log")
established=$(kv conns "$work/bench.log")
if [ "$rc" -eq 0 ] && [ "${errors:-1}" -eq 0 ] && [ "${established:-0}" -eq "$conns" ] &&
    [ "${msgs:-0}" -eq $((conns * 50)) ]; then
    pass "crest-bench through haproxy: $conns connections, $msgs replies, every one checked"
else
    fail "crest-bench through haproxy: exit $rc"; cat "$work/bench.log"
fi

# A client without a PROXY header, straight to a v2 server: refused.
"$bin/crest-bench" -c 1 -n 1 -d 5 "127.0.0.1:${port[1]}" >"$work/direct.log" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && [ "$(kv err_closed_early "$work/direct.log")" = 1 ]; then
    pass "a client without a PROXY header is closed (crest-bench exit $rc)"
else
    fail "a client without a PROXY header was served: exit $rc"; cat "$work/direct.log"
fi

kill -TERM "$hpid"
wait "$hpid"
pass "haproxy stopped (pid $hpid)"

for n in 1 2 3; do
    kill -TERM "${spid[$n]}"
    wait "${spid[$n]}"
    rc=$?
    log=$work/echo$n.log
    if [ "$rc" -eq 0 ] && grep -q '^  0 fds leaked' "$log"; then
        pass "crest-echo $n: exit 0, 0 fds leaked"
    else
        fail "crest-echo $n: exit $rc"; cat "$log"
    fi
done
pids=()

# What the servers logged.
opens=$(cat "$work"/echo[123].log | grep -c '^conn .* open$')
from5=$(cat "$work"/echo[123].log | grep -c '^conn 127\.0\.0\.5:[0-9]* open$')
from6=$(cat "$work"/echo[123].log | grep -c '^conn 127\.0\.0\.6:[0-9]* open$')
from1=$(cat "$work"/echo[123].log | grep -c '^conn 127\.0\.0\.1:[0-9]* open$')
# The direct client (no header) is the one connection the logs may show
# from 127.0.0.1, and it never "opens": on_open runs only after the header.
if [ "$from5" -eq $((conns / 2)) ] && [ "$from6" -eq $((conns / 2)) ] && [ "$from1" -eq 0 ] &&
    [ "$opens" -eq "$conns" ]; then
    pass "the logs name the original clients: $from5 from 127.0.0.5, $from6 from 127.0.0.6, none from haproxy's 127.0.0.1"
else
    fail "client addresses in the logs: $opens opens, $from5 from .5, $from6 from .6, $from1 from .1"
    cat "$work"/echo[123].log
fi
for n in 1 2 3; do
    c=$(grep -c '^conn 127\.0\.0\.[56]:[0-9]* open$' "$work/echo$n.log")
    if [ "$c" -gt 0 ]; then
        pass "crest-echo $n ($(sed -n 's/^PROXY protocol \([^ ]*\( or v2\)\{0,1\}\) expected.*/\1/p' "$work/echo$n.log")) served $c connections from the clients' addresses"
    else
        fail "crest-echo $n served no connection"
    fi
done
if grep -q 'close reasons:.*protocol error 1' "$work/echo1.log" &&
    ! grep -q 'protocol error' "$work/echo2.log" "$work/echo3.log"; then
    pass "the headerless client is the only 'protocol error'"
else
    fail "protocol errors:"; grep -H 'close reasons' "$work"/echo[123].log
fi

echo "$((checks - failures)) of $checks checks passed"
[ "$failures" -eq 0 ]
