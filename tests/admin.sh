#!/bin/bash
# admin.sh - the admin endpoint (admin.h) with the real tools: curl,
# promtool, a real Prometheus server, and hostile HTTP clients.
#
# One crest-echo --port 0 --admin 127.0.0.1:0 --threads 2 (both ports
# picked by the kernel), loaded by crest-bench, and then:
#
#   pages     curl fetches every page: status, Content-Type (text/plain;
#             version=0.0.4 for /metrics, application/json for the JSON
#             pages), every JSON page parses (python3 json); the doctor's
#             ?seconds=1; HEAD answers headers only; POST is 405 with
#             "Allow: GET, HEAD"; an unknown page is 404; one curl
#             invocation fetching two URLs re-uses its connection
#             (keep-alive).
#   conns     while crest-bench holds 64 connections open,
#             /debug/crest/conns?format=json&limit=7 is walked by its
#             "next" cursor to the end: the connections listed (no id
#             twice, every peer 127.0.0.1) are exactly the 64 open, and
#             /metrics' crest_connections_active, summed, says 64 too; the
#             text page with ?limit shows its cursor and count.
#   promtool  `promtool check metrics` on /metrics after the load exits 0
#             and prints nothing (lint clean).
#   prometheus  a real Prometheus (its own temp data dir, a config with
#             scrape_interval 1s and job "crest" targeting the admin
#             address, web on 127.0.0.1 only, on a free port) scrapes it:
#             its HTTP API answers up{job="crest"} = 1 and
#             sum(crest_connections_opened_total) >= the bench's
#             connections; every socket it listens on is 127.0.0.1;
#             stopped by its PID (TERM, then KILL if it lingers); data dir
#             removed.
#   hostile   tests/admin_hostile.py on the admin port while a prober
#             keeps doing verified echoes on the data port: huge header
#             (431), endless header lines (431), a 9 KiB request line (414),
#             garbage (400), smuggling attempts (CL+TE, TE+CL, two
#             Content-Lengths, a CL list, a signed CL, space before the
#             colon, obs-fold: 400), a body over the 4 KiB limit, announced
#             and chunked (413), each with Connection: close, the
#             connection closed and the reason in the server's log; a
#             slowloris (a byte every 0.5 s) closed by the header timeout.
#   end       /healthz still "ok"; crest-echo exits 0 on SIGTERM with
#             "0 fds leaked".
#
# Skips (exit 77) when curl, python3, promtool or prometheus is missing,
# except under CI ($CI set, as CI services do), where a missing tool fails
# the test: scripts/deps installs them.  About 20 s.
# By hand: abs_top_builddir=. bash tests/admin.sh (KEEP_WORK=1 keeps the
# temp dir with the logs, pages and Prometheus' config).
set -u

. "$(dirname "$0")/lib.sh"

bin=${abs_top_builddir:-.}/samples
src=${abs_top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
py=${PYTHON3:-$(command -v python3)}
conns=64
# The interpreter itself, not a wrapper (a pyenv shim costs 0.3 s a start).
[ -n "$py" ] && py=$("$py" -c 'import sys; print(sys.executable)' 2>/dev/null || echo "$py")

in_ci() { case ${CI:-} in "" | 0 | false | no) return 1 ;; *) return 0 ;; esac; }
need() {
    local what=$1 path=$2
    [ -n "$path" ] && command -v "$path" >/dev/null && return 0
    if in_ci; then
        echo "FAIL: $what is not installed, and CI=$CI (scripts/deps installs it)"
        exit 1
    fi
    echo "SKIP: $what is not installed (scripts/deps installs it)"
    exit 77
}
need curl "$(command -v curl)"
need python3 "$py"
need promtool "$(command -v promtool || ls /usr/bin/promtool 2>/dev/null)"
need prometheus "$(command -v prometheus || ls /usr/bin/prometheus 2>/dev/null)"
promtool=$(command -v promtool || echo /usr/bin/promtool)
prometheus=$(command -v prometheus || echo /usr/bin/prometheus)

kv() { grep '^crest-bench:' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
# sum_metric NAME FILE: the sum of NAME's samples (any labels) in FILE.
sum_metric() {
    awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d\n", s }' "$2"
}
# wait_for SECONDS CMD...: run CMD every 0.1 s until it succeeds; 1 if it never did.
wait_for() {
    local limit=$1; shift
    local end=$((SECONDS + limit))
    while ! "$@"; do
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 0.1
    done
}
# stop PID NAME: SIGTERM, wait up to 10 s, then SIGKILL; sets $stop_rc.
stop() { stop_pid "$1" "$2" 10; }
# listens_on_loopback_only PID: every listening TCP socket of PID is on
# 127.0.0.1 (its socket inodes matched in /proc/net/tcp and tcp6), and it
# has at least one.
listens_on_loopback_only() {
    "$py" - "$1" <<'EOF'
import os, sys
pid = sys.argv[1]
inodes = set()
for fd in os.listdir("/proc/%s/fd" % pid):
    try:
        t = os.readlink("/proc/%s/fd/%s" % (pid, fd))
    except OSError:
        continue
    if t.startswith("socket:["):
        inodes.add(t[8:-1])
found, bad = [], []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    with open(table) as f:
        next(f)
        for line in f:
            p = line.split()
            if p[3] != "0A" or p[9] not in inodes:
                continue
            addr, port = p[1].split(":")
            (found if addr == "0100007F" else bad).append("%s:%d" % (addr, int(port, 16)))
print("listening: %s; elsewhere: %s" % (found, bad))
sys.exit(0 if found and not bad else 1)
EOF
}

# ---- crest-echo --------------------------------------------------------------

"$bin/crest-echo" --port 0 --admin 127.0.0.1:0 --threads 2 >"$work/echo.out" 2>"$work/echo.err" &
epid=$!
pids+=("$epid")
ports() {
    data=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$work/echo.out" | head -n 1)
    admin=$(sed -n 's|^crest-echo: admin endpoint on http://127\.0\.0\.1:\([0-9]*\)/$|\1|p' \
        "$work/echo.out" | head -n 1)
    [ -n "$data" ] && [ -n "$admin" ]
}
if ! wait_for 10 ports; then
    echo "FAIL crest-echo did not print its ports within 10 s:"; cat "$work/echo.out" "$work/echo.err"
    exit 1
fi
base=http://127.0.0.1:$admin
pass "crest-echo (pid $epid): data on 127.0.0.1:$data, admin on 127.0.0.1:$admin"

# ---- Prometheus, started now: it scrapes while the rest runs -----------------

promdir=$work/prometheus
mkdir -p "$promdir"
cat >"$promdir/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: crest
    static_configs:
      - targets: ['127.0.0.1:$admin']
EOF
ppid_=
for try in 1 2 3; do
    pport=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Only the web listener (127.0.0.1): no remote write or read, no
    # alertmanager, no lifecycle or admin API (their defaults: off).
    "$prometheus" --config.file="$promdir/prometheus.yml" \
        --storage.tsdb.path="$promdir/data" \
        --web.listen-address="127.0.0.1:$pport" \
        --web.max-connections=16 \
        --storage.tsdb.retention.time=1h \
        --log.level=info >"$promdir/log.$try" 2>&1 &
    ppid_=$!
    pids+=("$ppid_")
    ready() {
        kill -0 "$ppid_" 2>/dev/null || return 0
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$pport/-/ready")" = 200 ]
    }
    wait_for 30 ready
    if kill -0 "$ppid_" 2>/dev/null &&
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$pport/-/ready")" = 200 ]; then
        break
    fi
    kill -KILL "$ppid_" 2>/dev/null
    wait "$ppid_" 2>/dev/null
    ppid_=
    rm -rf "$promdir/data"
done
if [ -z "$ppid_" ]; then
    fail "prometheus did not start (3 tries):"; cat "$promdir"/log.*
else
    pstart=$SECONDS
    pass "prometheus (pid $ppid_) ready on 127.0.0.1:$pport (at $SECONDS s)"
    if out=$(listens_on_loopback_only "$ppid_"); then
        pass "prometheus listens on 127.0.0.1 only ($out)"
    else
        fail "prometheus listens beyond 127.0.0.1: $out"
    fi
fi

# ---- the pages ---------------------------------------------------------------

# get NAME PATH STATUS CTYPE: curl PATH; check the status and that the
# Content-Type starts with CTYPE; body in $work/NAME, headers in
# $work/NAME.h.  Returns 1 (having failed a check) if either differs.
get() {
    local name=$1 path=$2 status=$3 ctype=$4 got
    got=$(curl -sS --max-time 10 -o "$work/$name" -D "$work/$name.h" \
        -w '%{http_code} %{content_type}' "$base$path" 2>&1)
    if [ "${got%% *}" = "$status" ] && case "${got#* }" in "$ctype"*) true ;; *) false ;; esac; then
        return 0
    fi
    fail "GET $path: '$got', expected $status $ctype"
    head -c 400 "$work/$name"; echo
    return 1
}
# json NAME: $work/NAME parses as JSON.
json() {
    if "$py" -m json.tool "$work/$1" >/dev/null 2>"$work/$1.err"; then
        return 0
    fi
    fail "$1 is not JSON: $(cat "$work/$1.err")"; head -c 400 "$work/$1"; echo
    return 1
}
text=text/plain
prom='text/plain; version=0.0.4'
js=application/json

get index / 200 "$text" && grep -q '^/metrics ' "$work/index" && grep -q '^/debug/crest/conns ' "$work/index" &&
    pass "/ is the index (200 $text), naming /metrics and /debug/crest/conns"
get healthz /healthz 200 "$text" && [ "$(cat "$work/healthz")" = ok ] && pass "/healthz: 200 ok"
get metrics0 /metrics 200 "$prom" && grep -q '^# TYPE crest_connections_opened_total counter$' "$work/metrics0" &&
    pass "/metrics: 200, Content-Type $(sed -n 's/^Content-Type: //Ip' "$work/metrics0.h" | tr -d '\r')"

# ---- load: crest-bench, closed loop, 64 connections for 2 s -------------------

"$bin/crest-bench" -c "$conns" -d 2 --warmup 0.5 -q "127.0.0.1:$data" >"$work/bench.log" 2>&1 &
bpid=$!
pids+=("$bpid")
sleep 1
# Under load: the doctor's window, and the JSON pages.
t0=$SECONDS
get doctor_s "/debug/crest/doctor?seconds=1&format=json" 200 "$js" && json doctor_s &&
    "$py" -c 'import json, sys; w = json.load(open(sys.argv[1]))["headline"]["window_ns"]; sys.exit(not 0.5e9 < w < 30e9)' "$work/doctor_s" &&
    pass "under load: /debug/crest/doctor?seconds=1&format=json: 200 $js, parses, a window of about 1 s ($(( SECONDS - t0 )) s)"
get slow_json "/debug/crest/slow?format=json" 200 "$js" && json slow_json && pass "under load: /debug/crest/slow?format=json: 200 $js, parses"
get conns_json1 "/debug/crest/conns?format=json" 200 "$js" && json conns_json1 && pass "under load: /debug/crest/conns?format=json: 200 $js, parses"
wait "$bpid"
brc=$?
if [ "$brc" -eq 0 ] && [ "$(kv errors "$work/bench.log")" = 0 ] && [ "$(kv conns "$work/bench.log")" = "$conns" ]; then
    pass "crest-bench: $conns connections, $(kv msgs "$work/bench.log") replies checked, no error"
else
    fail "crest-bench: exit $brc"; cat "$work/bench.log"
fi

# ---- conns: crest-bench holds 64 connections (a light open loop) --------------

# 12 s: the walk takes about 1 s, the hostile clients (started after it)
# about 11 s, so the hold costs no time of its own.
"$bin/crest-bench" -c "$conns" -r 640 -d 12 --warmup 0 -q "127.0.0.1:$data" >"$work/hold.log" 2>&1 &
hold=$!
pids+=("$hold")
all_open() {
    curl -sS --max-time 5 -o "$work/m.tmp" "$base/metrics" 2>/dev/null &&
        [ "$(sum_metric crest_connections_active "$work/m.tmp")" -eq "$conns" ]
}
if wait_for 10 all_open; then
    pass "crest-bench holds $conns connections: /metrics says $conns active (crest_connections_active summed, at $SECONDS s)"
else
    fail "crest_connections_active never reached $conns: $(sum_metric crest_connections_active "$work/m.tmp")"
fi

# Walk /debug/crest/conns?format=json&limit=7 by its cursor.
ids=$work/conn_ids
: >"$ids"
after=
pages=0
walk_ok=1
t0=$SECONDS
for pages in $(seq 1 50); do
    get "conns$pages" "/debug/crest/conns?format=json&limit=7${after:+&after=$after}" 200 "$js" || { walk_ok=0; break; }
    # ids and peers of this page, then its "next" (or "null").
    if ! "$py" - "$work/conns$pages" "$ids" >"$work/next" <<'EOF'; then
import json, sys
d = json.load(open(sys.argv[1]))
cs = d["connections"]
assert d["listed"] == len(cs), "listed %s != %d entries" % (d["listed"], len(cs))
assert len(cs) <= 7, "%d entries on a page of 7" % len(cs)
assert d["complete"] is True, "complete: %r" % d["complete"]
with open(sys.argv[2], "a") as f:
    for c in cs:
        assert c["peer"].startswith("127.0.0.1:"), "peer %r" % c["peer"]
        f.write("%s %s\n" % (c["loop"], c["id"]))
print("null" if d["next"] is None else d["next"])
EOF
        fail "conns page $pages: $(cat "$work/next")"; walk_ok=0; break
    fi
    after=$(cat "$work/next")
    [ "$after" = null ] && break
done
listed=$(wc -l <"$ids")
unique=$(sort -u "$ids" | wc -l)
loops=$(cut -d' ' -f1 "$ids" | sort -u | tr '\n' ' ')
if [ "$walk_ok" = 1 ] && [ "$after" = null ] && [ "$listed" -eq "$conns" ] && [ "$unique" -eq "$conns" ] &&
    all_open; then
    pass "/debug/crest/conns?format=json&limit=7 walked by 'next' over $pages pages ($(( SECONDS - t0 )) s): $listed connections on loops ${loops% }, none twice, all 127.0.0.1 = $conns open"
else
    running=no; kill -0 "$hold" 2>/dev/null && running=yes
    fail "conns walk: ok=$walk_ok, last next=$after, $listed listed ($unique distinct) over $pages pages ($(( SECONDS - t0 )) s), $conns open; crest-bench still holding: $running"
fi
if get conns_text "/debug/crest/conns?limit=10" 200 "$text" &&
    [ "$(grep -c ' 127\.0\.0\.1:' "$work/conns_text")" -eq 10 ] &&
    grep -q '^# 10 listed; next page: ?after=[0-9]*\.[0-9]*&limit=10$' "$work/conns_text"; then
    pass "/debug/crest/conns?limit=10 (text): 10 connections, then '$(tail -n 1 "$work/conns_text")'"
else
    fail "/debug/crest/conns?limit=10 (text):"; cat "$work/conns_text"
fi

# ---- hostile clients, in the background from here (the walk is done: their
# probe connections are not in its count) ----------------------------------------

"$py" "$src/tests/admin_hostile.py" --admin "$admin" --data "$data" --log "$work/echo.err" \
    >"$work/hostile.log" 2>&1 &
hpid=$!
pids+=("$hpid")

get doctor /debug/crest/doctor 200 "$text" && [ -s "$work/doctor" ] && pass "/debug/crest/doctor: 200 $text: $(head -n 1 "$work/doctor" | cut -c1-100)"
get doctor_json "/debug/crest/doctor?format=json" 200 "$js" && json doctor_json && pass "/debug/crest/doctor?format=json: 200 $js, parses"
get fds /debug/crest/fds 200 "$text" && grep -q '^crest fd report: ' "$work/fds" &&
    [ "$(grep -c '^  fd [0-9]*: accepted' "$work/fds")" -ge "$conns" ] &&
    pass "/debug/crest/fds: 200 $text, the report lists >= $conns accepted fds"
get slow /debug/crest/slow 200 "$text" && grep -q '^loop 1: ' "$work/slow" && pass "/debug/crest/slow: 200 $text, both loops"

# ---- /metrics after the load: promtool ---------------------------------------

get metrics /metrics 200 "$prom"
opened=$(sum_metric crest_connections_opened_total "$work/metrics")
rx=$(sum_metric crest_received_bytes_total "$work/metrics")
if [ "$opened" -ge "$conns" ] && [ "$rx" -gt 0 ]; then
    pass "/metrics after the load: crest_connections_opened_total = $opened, crest_received_bytes_total = $rx"
else
    fail "/metrics after the load: opened $opened, received bytes $rx"
fi
"$promtool" check metrics <"$work/metrics" >"$work/promtool.out" 2>&1
prc=$?
if [ "$prc" -eq 0 ] && [ ! -s "$work/promtool.out" ]; then
    pass "promtool check metrics: exit 0, nothing to say ($(grep -c '^# TYPE' "$work/metrics") families, $(grep -vc '^#' "$work/metrics") samples)"
else
    fail "promtool check metrics: exit $prc:"; cat "$work/promtool.out"
fi

# ---- HTTP: HEAD, POST, 404, keep-alive ---------------------------------------

# HEAD: the headers of the page and no body.  curl -I reads headers only;
# whether the server sends a body anyway shows on a raw connection: a GET
# pipelined after the HEAD must be answered right after the HEAD's empty
# line.
curl -sS --max-time 10 -I "$base/metrics" -o "$work/head.h" -w '%{http_code} %{size_download}\n' >"$work/head.w" 2>&1
"$py" - "$admin" >"$work/head.raw" 2>&1 <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
          b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
data = b""
while True:
    part = s.recv(65536)
    if not part:
        break
    data += part
head, _, rest = data.partition(b"\r\n\r\n")
assert head.startswith(b"HTTP/1.1 200 "), head[:100]
assert b"\r\nContent-Length: " in head and b"\r\nContent-Length: 0\r\n" not in head, head
assert rest.startswith(b"HTTP/1.1 200 "), "after the HEAD's headers: %r" % rest[:100]
assert rest.endswith(b"\r\n\r\nok\n"), rest[-100:]
print("HEAD then GET on one connection: %d bytes of headers, then the GET's answer" % len(head))
EOF
hrc=$?
if [ "$(cat "$work/head.w")" = "200 0" ] && grep -qi '^Content-Length: [1-9]' "$work/head.h" &&
    grep -qi '^Content-Type: text/plain; version=0.0.4' "$work/head.h" && [ "$hrc" -eq 0 ]; then
    pass "HEAD /metrics: 200, the page's Content-Type and Content-Length, no body ($(cat "$work/head.raw"))"
else
    fail "HEAD /metrics: $(cat "$work/head.w"), raw: $(cat "$work/head.raw")"; cat "$work/head.h"
fi
got=$(curl -sS --max-time 10 -X POST -d x=1 -o "$work/post" -D "$work/post.h" -w '%{http_code}' "$base/metrics" 2>&1)
if [ "$got" = 405 ] && grep -qi '^Allow: GET, HEAD' "$work/post.h"; then
    pass "POST /metrics: 405, Allow: GET, HEAD"
else
    fail "POST /metrics: $got"; cat "$work/post.h"
fi
get nope /no/such/page 404 "$text" && pass "/no/such/page: 404"
curl -sS -v --max-time 10 "$base/healthz" "$base/metrics" -o /dev/null -o /dev/null >"$work/reuse.log" 2>&1
if grep -q 'Re-using existing connection' "$work/reuse.log" && [ "$(grep -c '^\* Connected to' "$work/reuse.log")" -eq 1 ]; then
    pass "curl /healthz /metrics: one connection, re-used (keep-alive)"
else
    fail "curl /healthz /metrics did not re-use its connection:"; grep '^[*<>]' "$work/reuse.log" | head -40
fi

wait "$hold"
hrc_=$?
if [ "$hrc_" -eq 0 ] && [ "$(kv errors "$work/hold.log")" = 0 ]; then
    pass "crest-bench (holding $conns connections): $(kv msgs "$work/hold.log") replies checked, no error"
else
    fail "crest-bench (holding): exit $hrc_"; cat "$work/hold.log"
fi

# ---- Prometheus: up, and a crest counter -------------------------------------

# query EXPR: Prometheus' value of EXPR (the first sample), or "".
query() {
    curl -sS --max-time 5 -G "http://127.0.0.1:$pport/api/v1/query" --data-urlencode "query=$1" 2>/dev/null |
        "$py" -c 'import json, sys
d = json.load(sys.stdin)
r = d["data"]["result"] if d.get("status") == "success" else []
print(r[0]["value"][1] if r else "")' 2>/dev/null
}
if [ -n "$ppid_" ]; then
    is_up() { [ "$(query 'up{job="crest"}')" = 1 ]; }
    counted() { v=$(query 'sum(crest_connections_opened_total{job="crest"})'); [ -n "$v" ] && [ "${v%%.*}" -ge "$conns" ]; }
    if wait_for 30 is_up; then
        pass "prometheus: up{job=\"crest\"} = 1 (scraped 127.0.0.1:$admin; $((SECONDS - pstart)) s after it started)"
    else
        fail "prometheus: up{job=\"crest\"} = '$(query 'up{job="crest"}')' after 30 s"
        curl -sS --max-time 5 "http://127.0.0.1:$pport/api/v1/targets"; echo
    fi
    if wait_for 30 counted; then
        pass "prometheus: sum(crest_connections_opened_total{job=\"crest\"}) = $v >= $conns"
    else
        fail "prometheus: sum(crest_connections_opened_total) = '$(query 'sum(crest_connections_opened_total{job="crest"})')'"
    fi
    v=$(query 'sum(crest_received_bytes_total{job="crest"}) > 0')
    if [ -n "$v" ]; then
        pass "prometheus: sum(crest_received_bytes_total{job=\"crest\"}) = $v > 0"
    else
        fail "prometheus: no crest_received_bytes_total above 0"
    fi
    stop "$ppid_" prometheus
    if [ "$stop_rc" -eq 0 ]; then
        pass "prometheus stopped by SIGTERM (pid $ppid_), exit 0"
    else
        fail "prometheus exit $stop_rc:"; tail -n 20 "$promdir"/log.*
    fi
    rm -rf "$promdir/data"
fi

# ---- the hostile clients' verdict ----------------------------------------------

hrc=124
for _ in $(seq 1 450); do   # 45 s at most; it takes about the header timeout (10 s)
    kill -0 "$hpid" 2>/dev/null || { wait "$hpid"; hrc=$?; break; }
    sleep 0.1
done
sed 's/^/  hostile: /' "$work/hostile.log"
if [ "$hrc" -eq 0 ]; then
    pass "hostile HTTP on the admin port: every attack answered or closed with its reason, data port served throughout"
else
    fail "hostile HTTP on the admin port: admin_hostile.py exit $hrc"
    kill -KILL "$hpid" 2>/dev/null
fi

# ---- the admin's own figures: the attacks are counted ------------------------

if get metrics_end /metrics 200 "text/plain; version=0.0.4"; then
    refused=$(awk '$1 == "crest_admin_refused_total" {print $2}' "$work/metrics_end")
    timeouts=$(awk '$1 == "crest_admin_read_timeouts_total" {print $2}' "$work/metrics_end")
    if [ "${refused:-0}" -ge 10 ] && [ "${timeouts:-0}" -ge 1 ]; then
        pass "/metrics counts the attacks: crest_admin_refused_total $refused, crest_admin_read_timeouts_total $timeouts"
    else
        fail "/metrics: crest_admin_refused_total '${refused}', crest_admin_read_timeouts_total '${timeouts}' (expected >= 10 and >= 1)"
    fi
fi

# ---- the end -----------------------------------------------------------------

get healthz_end /healthz 200 "$text" && [ "$(cat "$work/healthz_end")" = ok ] && pass "/healthz at the end: ok"
stop "$epid" crest-echo
if [ "$stop_rc" -eq 0 ] && grep -q '^  0 fds leaked' "$work/echo.out"; then
    pass "crest-echo: exit 0 on SIGTERM, 0 fds leaked"
else
    fail "crest-echo: exit $stop_rc"; cat "$work/echo.out"; tail -n 30 "$work/echo.err"
fi
pids=()

echo "$((checks - failures)) of $checks checks passed ($SECONDS s)"
[ "$failures" -eq 0 ]
