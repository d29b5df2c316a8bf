#!/bin/bash
# proxy.sh - samples/crest-proxy in front of crest-echo backends (and a few
# Python peers, tests/proxy_peers.py).  Checks:
#
#   relay       1 GiB through the proxy, every echoed byte checked
#               (tests/proxy_client: a pattern by offset, half-close after
#               sending, EOF after the last byte);
#   balance     round-robin spreads pairs over the three backends, leastconn
#               too (the proxy's per-backend pair counts);
#   half-close  client side (proxy_client shuts down its writing and still
#               gets every byte); backend side (a backend that answers and
#               shuts down: the client gets the answer then EOF, and what it
#               sends after still reaches the backend);
#   killed      a backend killed mid-stream: its client is cut, with the
#               reason in the proxy's log; a pair on another backend is not;
#   slow        a slow client and a slow backend, 256 MiB and 32 MiB: the
#               proxy's buffer peak (its report) and RSS stay bounded;
#   health      a backend killed is marked down (log), clients avoid it; once
#               restarted it is marked up and gets pairs again;
#   retries     a dead backend: connects fail over to a live one; with only
#               dead backends the client is closed with a logged reason;
#   proxy v2    --send-proxy-v2 to a crest-echo --proxy-protocol v2: the
#               backend names the client's own address and port;
#   hostile     half-open, RST, garbage, slowloris clients while a probe
#               keeps getting verified echoes;
#   reports     every proxy exits 0 on SIGTERM with "0 fds leaked".
#
# No timing thresholds: counts, bytes, log lines.  About 30 s.  By hand:
# abs_top_builddir=. bash tests/proxy.sh (KEEP_WORK=1 keeps the logs).
set -u

. "$(dirname "$0")/lib.sh"

bin=${abs_top_builddir:-.}/samples
client=${abs_top_builddir:-.}/tests/proxy_client
src=${abs_top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
py=${PYTHON3:-$(command -v python3)}
peers="$src/tests/proxy_peers.py"

# start NAME CMD...: run CMD with its output in $work/NAME.log; sets
# $port and $pid once it listens.
start() {
    local name=$1
    shift
    "$@" >"$work/$name.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    if ! wait_listening "$pid" "$work/$name.log"; then
        fail "$name did not start"; cat "$work/$name.log"; summary_now; fi
}
summary_now() { echo "$failures of $checks checks failed"; exit 1; }

# stop_proxy NAME PID: SIGTERM, exit 0 and "0 fds leaked".
stop_proxy() {
    stop_pid "$2" "$1" 10
    if [ "$stop_rc" = 0 ] && grep -q '^  0 fds leaked' "$work/$1.log"; then
        pass "$1: exit 0, 0 fds leaked"
    else
        fail "$1: exit $stop_rc"; tail -30 "$work/$1.log"
    fi
}

# pairs NAME BACKEND_PORT: the pairs the proxy's report gives that backend.
pairs() { sed -n "s/^  backend 127.0.0.1:$2: \([0-9]*\) pairs.*/\1/p" "$work/$1.log"; }

# wait_for FILE REGEX: up to 10 s.
wait_for() {
    for _ in $(seq 1 100); do grep -q "$2" "$1" && return 0; sleep 0.1; done
    return 1
}

# port_file FILE: wait for a Python peer's port.
port_file() {
    for _ in $(seq 1 100); do [ -s "$1" ] && { cat "$1"; return 0; }; sleep 0.1; done
    return 1
}

for i in 1 2 3; do
    start echo$i "$bin/crest-echo" --port 0 -q
    epid[$i]=$pid; eport[$i]=$port
done
backends=(--backend "127.0.0.1:${eport[1]}" --backend "127.0.0.1:${eport[2]}"
          --backend "127.0.0.1:${eport[3]}")

# ---- relay, round-robin, half-close from the client, hostile ----------------
start rr "$bin/crest-proxy" --port 0 "${backends[@]}"
rr=$pid; rrport=$port
out=$("$client" "$rrport" 1073741824)
if [ $? = 0 ]; then pass "1 GiB through the proxy, every byte checked ($out)"
else fail "1 GiB: $out"; fi
for _ in 1 2 3 4 5; do "$client" "$rrport" 100000 >/dev/null || fail "small client"; done
out=$("$py" "$peers" hostile "$rrport")
[ $? = 0 ] && pass "hostile peers: $out" || fail "hostile peers: $out"
if grep -q 'client failed, closing the backend: peer reset' "$work/rr.log"; then
    pass "an RST from a client closes its backend, with the reason logged"
else fail "no 'client failed' line for the RST clients"; fi
stop_proxy rr "$rr"
a=$(pairs rr "${eport[1]}"); b=$(pairs rr "${eport[2]}"); c=$(pairs rr "${eport[3]}")
total=$((a + b + c))
# Picks go strictly in turn, but a pair counts only once its backend is
# open: a hostile client gone before that (slow under valgrind) used a turn
# without a pair.  So each backend gets close to a third, not exactly.
if [ "$a" -ge $((total / 4)) ] && [ "$b" -ge $((total / 4)) ] && [ "$c" -ge $((total / 4)) ]; then
    pass "round-robin: pairs per backend $a $b $c"
else fail "round-robin: pairs per backend $a $b $c"; fi

# ---- leastconn: one long pair on backend 1, then short ones avoid it ---------
start lc "$bin/crest-proxy" --port 0 -q --balance leastconn "${backends[@]}"
lc=$pid; lcport=$port
"$client" "$lcport" 200000000 16384 2000 >"$work/lc-long.out" &
long=$!
sleep 0.5
for _ in 1 2 3 4; do "$client" "$lcport" 1000 >/dev/null || fail "leastconn client"; done
wait "$long" || fail "leastconn long client: $(cat "$work/lc-long.out")"
stop_proxy lc "$lc"
a=$(pairs lc "${eport[1]}"); b=$(pairs lc "${eport[2]}"); c=$(pairs lc "${eport[3]}")
if [ "$a" = 1 ] && [ $((b + c)) = 4 ]; then pass "leastconn: the busy backend got no more pairs ($a $b $c)"
else fail "leastconn: pairs per backend $a $b $c (want 1, then 4 on the others)"; fi

# ---- half-close from the backend ---------------------------------------------
"$py" "$peers" halfclose-backend "$work/hc.port" >"$work/hc-backend.out" 2>&1 &
hcb=$!; pids+=("$hcb")
hcport=$(port_file "$work/hc.port")
start hc "$bin/crest-proxy" --port 0 -q --backend "127.0.0.1:$hcport"
hc=$pid
out=$("$py" "$peers" halfclose-client "$port")
wait "$hcb"
if [ "$out" = "client ok" ] && grep -q 'backend got 1000 bytes after its EOF' "$work/hc-backend.out"; then
    pass "half-close from the backend: answer then EOF to the client, the client's bytes still reach it"
else fail "backend half-close: client '$out', backend '$(cat "$work/hc-backend.out")'"; fi
stop_proxy hc "$hc"

# ---- slow client, slow backend: bounded memory ------------------------------
"$py" "$peers" slow-backend "$work/sb.port" >"$work/sb.out" 2>&1 &
sb=$!; pids+=("$sb")
sbport=$(port_file "$work/sb.port")
start slow "$bin/crest-proxy" --port 0 -q --backend "127.0.0.1:${eport[1]}"
slow=$pid; slowport=$port
start slowb "$bin/crest-proxy" --port 0 -q --backend "127.0.0.1:$sbport"
slowb=$pid; slowbport=$port
"$client" "$slowport" 268435456 16384 20 >"$work/slow.out" &
sc=$!
"$client" "$slowbport" 33554432 >"$work/slowb.out" &
sbc=$!
maxrss=0
while kill -0 "$sc" 2>/dev/null || kill -0 "$sbc" 2>/dev/null; do
    for p in "$slow" "$slowb"; do
        r=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$p/status" 2>/dev/null)
        [ -n "$r" ] && [ "$r" -gt "$maxrss" ] && maxrss=$r
    done
    sleep 0.2
done
wait "$sc" && pass "slow client: $(cat "$work/slow.out")" || fail "slow client: $(cat "$work/slow.out")"
wait "$sbc" && pass "slow backend: $(cat "$work/slowb.out")" || fail "slow backend: $(cat "$work/slowb.out")"
kill "$sb" 2>/dev/null
stop_proxy slow "$slow"
stop_proxy slowb "$slowb"
# One pair: at most high water + a read per direction (2.1 MiB) queued.
for n in slow slowb; do
    peak=$(sed -n 's/^  buffer bytes outstanding: .*(peak \([0-9]*\) in one thread)/\1/p' "$work/$n.log")
    paused=$(sed -n 's/^  reading paused \([0-9]*\) time.*/\1/p' "$work/$n.log")
    if [ -n "$peak" ] && [ "$peak" -le 4194304 ]; then
        pass "$n: buffer peak $peak bytes (bound 4 MiB), reading paused ${paused:-0} times"
    else fail "$n: buffer peak '${peak}' over 4 MiB"; fi
done
if [ "$maxrss" -le 65536 ]; then pass "slow peers: proxy RSS at most $maxrss kB (bound 64 MiB)"
else fail "slow peers: proxy RSS $maxrss kB"; fi

# ---- a backend killed mid-stream ------------------------------------------------
start k1 "$bin/crest-echo" --port 0 -q
k1=$pid; k1port=$port
start kill "$bin/crest-proxy" --port 0 -q --backend "127.0.0.1:$k1port" --backend "127.0.0.1:${eport[2]}"
kp=$pid; kport=$port
"$client" "$kport" 500000000 16384 500 >"$work/kill1.out" &
c1=$!
sleep 0.3 # the first pair (round-robin: the backend to kill) is made
"$client" "$kport" 50000000 16384 500 >"$work/kill2.out" &
c2=$!
sleep 1
kill -KILL "$k1"
wait "$c1" && fail "client of the killed backend completed: $(cat "$work/kill1.out")" \
    || pass "client of the killed backend cut: $(cat "$work/kill1.out")"
wait "$c2" && pass "pair on the other backend unaffected: $(cat "$work/kill2.out")" \
    || fail "other pair: $(cat "$work/kill2.out")"
if grep -q "backend 127.0.0.1:$k1port): backend failed mid-stream, closing the client" "$work/kill.log"; then
    pass "killed backend: $(grep -m1 'failed mid-stream' "$work/kill.log" | sed 's/^crest-proxy: //')"
else fail "killed backend: no reason logged"; tail "$work/kill.log"; fi
stop_proxy kill "$kp"

# ---- health checks: down, then up ------------------------------------------
start h1 "$bin/crest-echo" --port 0 -q
h1=$pid; h1port=$port
start health "$bin/crest-proxy" --port 0 -q --health-interval 100 --health-fails 2 \
    --backend "127.0.0.1:$h1port" --backend "127.0.0.1:${eport[2]}"
hp=$pid; hport=$port
kill -KILL "$h1"
if wait_for "$work/health.log" "backend 127.0.0.1:$h1port down"; then
    pass "health: $(grep -m1 "$h1port down" "$work/health.log" | sed 's/^crest-proxy: //')"
else fail "health: the killed backend was not marked down"; fi
for _ in 1 2 3 4; do "$client" "$hport" 1000 >/dev/null || fail "client while a backend is down"; done
start h1b "$bin/crest-echo" --port "$h1port" -q
h1=$pid
if wait_for "$work/health.log" "backend 127.0.0.1:$h1port up"; then
    pass "health: $(grep -m1 "$h1port up" "$work/health.log" | sed 's/^crest-proxy: //')"
else fail "health: the restarted backend was not marked up"; fi
for _ in 1 2 3 4; do "$client" "$hport" 1000 >/dev/null || fail "client after restart"; done
stop_proxy health "$hp"
a=$(pairs health "$h1port"); b=$(pairs health "${eport[2]}")
if [ "$a" = 2 ] && [ "$b" = 6 ]; then pass "health: no pairs to the down backend, 2 of 4 once it was up"
else fail "health: pairs $a and $b (want 2 and 6)"; fi
stop_pid "$h1" h1b 10

# ---- retries --------------------------------------------------------------------
dead=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start retry "$bin/crest-proxy" --port 0 -q --retries 2 --backend "127.0.0.1:$dead" \
    --backend "127.0.0.1:${eport[3]}"
rp=$pid; rport=$port
ok=0
for _ in 1 2 3 4; do "$client" "$rport" 10000 >/dev/null && ok=$((ok + 1)); done
stop_proxy retry "$rp"
if [ "$ok" = 4 ] && grep -q '^  proxy: [1-9][0-9]* connect failures, [1-9][0-9]* retries' "$work/retry.log"; then
    pass "retries: 4 of 4 clients served past a dead backend ($(grep '^  proxy: .*retries' "$work/retry.log" | sed 's/^ *//'))"
else fail "retries: $ok of 4"; grep '^  proxy' "$work/retry.log"; fi
start alldead "$bin/crest-proxy" --port 0 -q --retries 1 --backend "127.0.0.1:$dead"
ap=$pid
"$client" "$port" 1000 >/dev/null && fail "a client served with no backend alive"
if wait_for "$work/alldead.log" "all connect attempts failed, closing the client"; then
    pass "no backend alive: $(grep -m1 'all connect attempts' "$work/alldead.log" | sed 's/^crest-proxy: //')"
else fail "no backend alive: no reason logged"; fi
stop_proxy alldead "$ap"

# ---- PROXY v2 to the backend ---------------------------------------------------
start pv2echo "$bin/crest-echo" --port 0 --proxy-protocol v2
pe=$pid; peport=$port
start pv2 "$bin/crest-proxy" --port 0 -q --send-proxy-v2 --backend "127.0.0.1:$peport"
pp=$pid
out=$("$py" "$peers" proxy-client "$port")
cport=$(echo "$out" | sed -n 's/^client port \([0-9]*\) .*/\1/p')
if [ -n "$cport" ] && wait_for "$work/pv2echo.log" "^conn 127.0.0.1:$cport open"; then
    pass "--send-proxy-v2: the backend sees the client 127.0.0.1:$cport ($out)"
else fail "--send-proxy-v2: $out"; tail "$work/pv2echo.log"; fi
stop_proxy pv2 "$pp"
stop_pid "$pe" pv2echo 10

# ---- warm pooled connections, a backend by name (dnsmasq) ---------------------
dnsmasq=$(command -v dnsmasq || ls /usr/sbin/dnsmasq 2>/dev/null)
if [ -n "$dnsmasq" ]; then
    # dnsmasq on a free port, seen bound in /proc/net/udp and answering a
    # query (the port bound is not enough: another test's socket may have
    # taken it before dnsmasq, which then exits); another start on a new
    # port if it lost the port to someone else.
    dpid=
    for _ in 1 2 3 4 5; do
        dport=$("$py" -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        "$dnsmasq" --no-daemon --no-resolv --no-hosts --conf-file=/dev/null --port="$dport" \
            --listen-address=127.0.0.1 --bind-interfaces --pid-file="$work/dnsmasq.pid" \
            --local=/test/ --host-record=echo.test,127.0.0.1,300 >"$work/dnsmasq.log" 2>&1 &
        dpid=$!
        hex=$(printf '0100007F:%04X' "$dport")
        for _ in $(seq 1 100); do
            grep -q "$hex" /proc/net/udp && break
            kill -0 "$dpid" 2>/dev/null || break
            sleep 0.1
        done
        grep -q "$hex" /proc/net/udp && kill -0 "$dpid" 2>/dev/null &&
            "$py" - "$dport" <<'PY' && break
import socket, sys
q = bytes.fromhex("c357010000010000000000000570726f6265047465737400" "00010001")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
s.connect(("127.0.0.1", int(sys.argv[1])))
for _ in range(4):
    s.send(q)
    try:
        r = s.recv(512)
    except OSError:
        continue
    sys.exit(0 if r[:2] == q[:2] and r[2] & 0x80 else 1)
sys.exit(1)
PY
        stop_pid "$dpid" dnsmasq 5; dpid=
    done
    pids+=("$dpid")
    start warm "$bin/crest-proxy" --port 0 -q --warm 2 --dns-server "127.0.0.1:$dport" \
        --backend "echo.test:${eport[1]}"
    wp=$pid
    ok=0
    for _ in 1 2 3 4 5; do "$client" "$port" 100000 >/dev/null && ok=$((ok + 1)); done
    stop_proxy warm "$wp"
    warmline=$(grep '^  proxy: warm pools' "$work/warm.log")
    taken=$(echo "$warmline" | sed -n 's/.*: \([0-9]*\) backend connections taken.*/\1/p')
    hot=$(echo "$warmline" | sed -n 's/.*, \([0-9]*\) of them already connected.*/\1/p')
    if [ "$ok" = 5 ] && [ "$taken" = 5 ] && [ "${hot:-0}" -ge 1 ] &&
       grep -q "^  backend echo.test:${eport[1]}: 5 pairs" "$work/warm.log"; then
        pass "--warm 2 and a backend by name: 5 of 5 clients, ${hot} of 5 backend connections were warm"
    else fail "--warm: $ok of 5 clients; '$warmline'"; grep '^  backend' "$work/warm.log"; fi
    stop_pid "$dpid" dnsmasq 10
else
    echo "# no dnsmasq: the warm-pool and name check is skipped"
fi

for i in 1 2 3; do stop_pid "${epid[$i]}" echo$i 10; done
echo "$failures of $checks checks failed"
[ "$failures" = 0 ]
