#!/bin/bash
# http.sh - crest-http driven by clients we did not write: curl, wrk,
# h2load and ab, then hostile HTTP (tests/http_hostile.py).
#
# One crest-http --port 0 --threads 2 -q, and then:
#
#   curl     GET / (200, the body, Date and Content-Length), one curl
#            invocation fetching two URLs re-uses its connection
#            (keep-alive), HEAD (curl -I: the headers, no body), POST /echo
#            (the body and its Content-Type back), GET /bytes/N (N bytes,
#            for N around the stream's 64 KiB chunk, and 8 MiB), a bad N
#            (400), an unknown path (404), a known path with the wrong
#            method (405 with Allow), HTTP/1.0 (curl -0: Connection:
#            close);
#   wrk      -t1 -c50 -d2s: no "Non-2xx or 3xx responses" and no "Socket
#            errors" line; a Lua script counts the requests it sent;
#   h2load   --h1 -n 20000 -c 10 -m 16 (pipelined): 20000 succeeded, 0
#            failed, 0 errored;
#   ab       -k -n 5000 -c 10: "Failed requests: 0", no "Non-2xx";
#   report   SIGTERM: exit 0, 0 fds leaked, and the report's request count
#            is exactly the clients' sum: curl's + h2load's + ab's + the
#            requests wrk sent (counted by its Lua script's request(), less
#            the one call wrk 4.1 makes before it connects, to check the
#            request's form, and never sends; wrk's own "requests in" count
#            leaves out those still in flight when it stops, which the
#            server did read and answer);
#   hostile  a second crest-http with --header-timeout 1 --body-timeout 1
#            --max-body 4096, run beside the load above: tests/http_hostile.py
#            (its docstring lists the attacks: every refusal with its
#            status and logged reason, slowloris on heads and bodies closed
#            by the timeouts, half-sent requests, pipelined garbage after
#            a good request, 10,000 connections of churn, while a probe on
#            its own connections keeps getting 200s); its final report
#            counts exactly the requests the script had answered, and 0
#            fds leaked.
#
# Skips (exit 77) when curl, wrk, h2load, ab or python3 is missing, except
# under CI ($CI set), where a missing tool fails the test: scripts/deps
# installs them.  No timing thresholds: counts, statuses, bytes.  About
# 15 s.  By hand: abs_top_builddir=. bash tests/http.sh (KEEP_WORK=1 keeps
# the logs).
set -u

. "$(dirname "$0")/lib.sh"

bin=${abs_top_builddir:-.}/samples
src=${abs_top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
py=${PYTHON3:-$(command -v python3)}

in_ci() { case ${CI:-} in "" | 0 | false | no) return 1 ;; *) return 0 ;; esac; }
need() {
    command -v "$2" >/dev/null 2>&1 && return 0
    if in_ci; then
        echo "FAIL: $1 is not installed, and CI=$CI (scripts/deps installs it)"
        exit 1
    fi
    echo "SKIP: $1 is not installed (scripts/deps installs it)"
    exit 77
}
need curl curl
need wrk wrk
need "h2load (nghttp2-client)" h2load
need "ab (apache2-utils)" ab
need python3 "${py:-python3}"

# start NAME ARGS...: crest-http --port 0 ARGS, its stdout in
# $work/NAME.out and stderr in $work/NAME.err; sets $pid and $port.
start() {
    local name=$1; shift
    "$bin/crest-http" --port 0 "$@" >"$work/$name.out" 2>"$work/$name.err" &
    pid=$!
    pids+=("$pid")
    wait_listening "$pid" "$work/$name.out" && return 0
    echo "FAIL crest-http ($name) did not start:"; cat "$work/$name.out" "$work/$name.err"
    exit 1
}

# stop PID NAME: SIGTERM, wait (at most 20 s, then SIGKILL); sets $stop_rc.
stop() { stop_pid "$1" "$2" 20; }

# report_requests NAME: the request count in NAME's final report.
report_requests() {
    sed -n 's/^  http: \([0-9]*\) requests; responses by status: .*/\1/p' "$work/$1.out"
}

# ---- the hostile run starts first, beside everything else ----------------------

start hostile -q --header-timeout 1 --body-timeout 1 --max-body 4096
hpid=$pid hport=$port
"$py" "$src/tests/http_hostile.py" --port "$hport" --log "$work/hostile.err" \
    --header-timeout 1 --body-timeout 1 --max-body 4096 >"$work/hostile.log" 2>&1 &
hspid=$!
pids+=("$hspid")

start main --threads 2 -q --admin 127.0.0.1:0
mpid=$pid
base=http://127.0.0.1:$port
admin=$(sed -n 's|^crest-http: admin endpoint on http://127\.0\.0\.1:\([0-9]*\)/$|\1|p' "$work/main.out")
pass "crest-http (pid $mpid) on 127.0.0.1:$port, 2 threads; hostile one (pid $hpid) on 127.0.0.1:$hport"

# ---- curl ------------------------------------------------------------------------

sent=0 # requests made to the main server, all counted by its report

# fetch NAME CURL-ARGS...: one request; sets $code (the status) and
# $size (the body bytes curl read), the body in $work/NAME (for curl -I:
# the headers), the headers in $work/NAME.h.
fetch() {
    local name=$1 out; shift
    out=$(curl -sS --max-time 30 -o "$work/$name" -D "$work/$name.h" -w '%{http_code} %{size_download}' "$@" 2>"$work/$name.err")
    code=${out% *} size=${out#* }
    sent=$((sent + 1))
}
header() { tr -d '\r' <"$work/$1.h" | sed -n "s/^$2: //Ip" | head -n 1; }

fetch root "$base/"
if [ "$code" = 200 ] && [ "$(cat "$work/root")" = "Hello, World!" ] &&
    [ "$(header root Content-Length)" = 14 ] && [ -n "$(header root Date)" ] &&
    [ "$(header root Content-Type)" = text/plain ] && [ "$(header root Server)" = crest-http ]; then
    pass "GET /: 200 \"Hello, World!\", Content-Length 14, Date $(header root Date), Server crest-http"
else
    fail "GET /: $code"; cat "$work/root.h" "$work/root" "$work/root.err"
fi

curl -sS -v --max-time 30 -o /dev/null -o /dev/null "$base/" "$base/echo" -X GET >"$work/reuse.log" 2>&1
sent=$((sent + 2))
if grep -q 'Re-using existing connection' "$work/reuse.log" &&
    [ "$(grep -c 'left intact' "$work/reuse.log")" -eq 2 ] &&
    [ "$(grep -c '^\* Connected to' "$work/reuse.log")" -eq 1 ]; then
    pass "curl / /echo in one invocation: one connection, re-used, left intact (keep-alive)"
else
    fail "curl / /echo did not re-use its connection:"; grep '^[*<>]' "$work/reuse.log" | head -40
fi
if grep -q '^< HTTP/1.1 405' "$work/reuse.log" && grep -qi '^< Allow: POST' "$work/reuse.log"; then
    pass "GET /echo: 405, Allow: POST"
else
    fail "GET /echo: no 405 with Allow: POST"; grep '^[<]' "$work/reuse.log"
fi

fetch head -I "$base/"
if [ "$code" = 200 ] && [ "$size" = 0 ] && [ "$(header head Content-Length)" = 14 ]; then
    pass "HEAD / (curl -I): 200, Content-Length 14, no body"
else
    fail "HEAD /: $code, body $size bytes"; cat "$work/head.h"
fi

printf 'crest echoes\000this \r\n body' >"$work/post.in"
fetch post -H 'Content-Type: text/x-crest' --data-binary "@$work/post.in" "$base/echo"
if [ "$code" = 200 ] && cmp -s "$work/post" "$work/post.in" &&
    [ "$(header post Content-Type)" = text/x-crest ]; then
    pass "POST /echo: 200, the $(wc -c <"$work/post.in")-byte body back, Content-Type text/x-crest"
else
    fail "POST /echo: $code"; cat "$work/post.h"; od -c "$work/post" | head
fi
fetch post2 --data-binary "@$work/post.in" -H 'Content-Type:' "$base/echo"
if [ "$code" = 200 ] && cmp -s "$work/post2" "$work/post.in" &&
    [ "$(header post2 Content-Type)" = application/octet-stream ]; then
    pass "POST /echo without a Content-Type: application/octet-stream"
else
    fail "POST /echo without a Content-Type: $code"; cat "$work/post2.h"
fi

for n in 0 1 65535 65536 65537 8388608; do
    fetch "bytes$n" "$base/bytes/$n"
    got=$(wc -c <"$work/bytes$n")
    if [ "$code" = 200 ] && [ "$got" -eq "$n" ] && [ "$(header "bytes$n" Content-Length)" = "$n" ]; then
        pass "GET /bytes/$n: 200, $got bytes, Content-Length $n"
    else
        fail "GET /bytes/$n: $code, $got bytes"; cat "$work/bytes$n.h" "$work/bytes$n.err"
    fi
done
fetch bytes_head -I "$base/bytes/100000"
if [ "$code" = 200 ] && [ "$size" = 0 ] && [ "$(header bytes_head Content-Length)" = 100000 ]; then
    pass "HEAD /bytes/100000: 200, Content-Length 100000, no body"
else
    fail "HEAD /bytes/100000: $code"; cat "$work/bytes_head.h"
fi
for bad in 01 -5 1073741825 12x; do
    fetch bad "$base/bytes/$bad"
    if [ "$code" = 400 ]; then
        pass "GET /bytes/$bad: 400"
    else
        fail "GET /bytes/$bad: $code"
    fi
done
fetch nope "$base/no/such/page"
[ "$code" = 404 ] && pass "GET /no/such/page: 404" || fail "GET /no/such/page: $code"
fetch put -X PUT --data-binary x "$base/"
if [ "$code" = 405 ] && [ "$(header put Allow)" = "GET, HEAD" ]; then
    pass "PUT /: 405, Allow: GET, HEAD"
else
    fail "PUT /: $code"; cat "$work/put.h"
fi
fetch http10 -0 "$base/"
if [ "$code" = 200 ] && [ "$(cat "$work/http10")" = "Hello, World!" ] &&
    [ "$(header http10 Connection)" = close ]; then
    pass "HTTP/1.0 (curl -0): 200, Connection: close"
else
    fail "HTTP/1.0: $code"; cat "$work/http10.h"
fi

# ---- wrk ---------------------------------------------------------------------------

cat >"$work/count.lua" <<'EOF'
-- Count the requests each thread sends; done() prints their sum.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) sent = 0 end
function request() sent = sent + 1; return wrk.format() end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("sent") end
  io.write(string.format("requests sent: %d\n", n))
end
EOF
wrk -t1 -c50 -d2s -s "$work/count.lua" "$base/" >"$work/wrk.log" 2>&1
wrc=$?
wrk_done=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$work/wrk.log")
wrk_sent=$(sed -n 's/^requests sent: \([0-9]*\)$/\1/p' "$work/wrk.log")
if [ "$wrc" -eq 0 ] && [ -n "$wrk_done" ] && [ "$wrk_done" -gt 0 ] && [ -n "$wrk_sent" ] &&
    ! grep -q 'Non-2xx or 3xx responses' "$work/wrk.log" && ! grep -q 'Socket errors' "$work/wrk.log"; then
    pass "wrk -t1 -c50 -d2s: $wrk_done requests answered ($wrk_sent sent), no non-2xx, no socket errors"
else
    fail "wrk: exit $wrc"; cat "$work/wrk.log"
    wrk_done=${wrk_done:-0} wrk_sent=${wrk_sent:-0}
fi

# ---- h2load (pipelined) --------------------------------------------------------------

h2load --h1 -n 20000 -c 10 -m 16 "$base/" >"$work/h2load.log" 2>&1
hrc=$?
if [ "$hrc" -eq 0 ] &&
    grep -q '^requests: 20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, 0 errored, 0 timeout' "$work/h2load.log" &&
    grep -q '^status codes: 20000 2xx, 0 3xx, 0 4xx, 0 5xx' "$work/h2load.log"; then
    pass "h2load --h1 -n 20000 -c 10 -m 16: 20000 succeeded, 0 failed, 0 errored, all 2xx"
    sent=$((sent + 20000))
else
    fail "h2load: exit $hrc"; cat "$work/h2load.log"
fi

# ---- ab -k ----------------------------------------------------------------------------

ab -k -n 5000 -c 10 "$base/" >"$work/ab.log" 2>&1
arc=$?
if [ "$arc" -eq 0 ] && grep -q '^Complete requests: *5000$' "$work/ab.log" &&
    grep -q '^Failed requests: *0$' "$work/ab.log" && ! grep -q 'Non-2xx' "$work/ab.log" &&
    grep -q '^Keep-Alive requests: *5000$' "$work/ab.log"; then
    pass "ab -k -n 5000 -c 10: 5000 complete, 0 failed, no non-2xx, 5000 kept alive"
    sent=$((sent + 5000))
else
    fail "ab: exit $arc"; cat "$work/ab.log"
fi

# ---- the main server's /metrics ----------------------------------------------------

# metric_sum NAME [LABEL-FILTER]: the sum of NAME's samples (every loop's)
# in $work/metrics whose labels contain LABEL-FILTER.
metric_sum() {
    awk -v n="$1" -v f="${2:-}" '
        { name = $1; sub(/\{.*/, "", name) }
        name == n && index($1, f) { s += $2 }
        END { printf "%d\n", s }' "$work/metrics"
}
want=$((sent + wrk_sent - 1))
curl -sS --max-time 30 -o "$work/metrics" "http://127.0.0.1:$admin/metrics" 2>"$work/metrics.err"
m_req=$(metric_sum crest_http_requests_total)
m_4xx=$(metric_sum crest_http_responses_total 'code="4xx"')
m_2xx=$(metric_sum crest_http_responses_total 'code="2xx"')
if [ -n "$admin" ] && [ "$m_req" = "$want" ] && [ "$m_4xx" = 7 ] &&
    [ $((m_2xx + m_4xx)) -eq "$want" ] &&
    grep -q '^crest_http_requests_total{loop="1"} [1-9]' "$work/metrics" &&
    [ "$(metric_sum crest_http_pending_exchanges)" = 0 ]; then
    pass "/metrics (admin port $admin): crest_http_requests_total sums to the $want requests sent, 2xx $m_2xx + 4xx 7, none pending, both loops serving"
else
    fail "/metrics (admin port ${admin:-none}): requests $m_req (want $want), 2xx $m_2xx, 4xx $m_4xx"
    grep '^crest_http_' "$work/metrics" "$work/metrics.err"
fi
if command -v promtool >/dev/null; then
    promtool check metrics <"$work/metrics" >"$work/promtool.out" 2>&1
    prc=$?
    if [ "$prc" -eq 0 ] && [ ! -s "$work/promtool.out" ]; then
        pass "promtool check metrics on crest-http's /metrics: exit 0, nothing to say ($(grep -c '^# TYPE crest_http_' "$work/metrics") crest_http_ families)"
    else
        fail "promtool check metrics: exit $prc"; cat "$work/promtool.out"
    fi
fi

# ---- the main server's report -------------------------------------------------------

stop "$mpid" crest-http
got=$(report_requests main)
if [ "$stop_rc" -eq 0 ] && grep -q '^  0 fds leaked' "$work/main.out" && [ "$got" = "$want" ]; then
    pass "crest-http: exit 0, 0 fds leaked, $got requests = $sent (curl, h2load, ab) + $((wrk_sent - 1)) (wrk's request() calls less its check; $wrk_done answered before it stopped)"
else
    fail "crest-http: exit $stop_rc, $got requests, expected $want: $sent (curl, h2load, ab) + $((wrk_sent - 1)) (wrk: $wrk_sent request() calls, $wrk_done answered)"
    cat "$work/main.out"; tail -n 20 "$work/main.err"
fi
if grep -q '^  http: [0-9]* requests; responses by status: 2xx [0-9]*, 3xx 0, 4xx 7, 5xx 0$' "$work/main.out"; then
    pass "crest-http: responses by status: 4xx 7 (4 bad /bytes/N, 404, two 405), no 3xx or 5xx"
else
    fail "crest-http: responses by status:"; grep '^  http:' "$work/main.out"
fi

# ---- the hostile run's verdict ------------------------------------------------------

hsrc=124
for _ in $(seq 1 1200); do # 120 s at most; it takes a few seconds
    kill -0 "$hspid" 2>/dev/null || { wait "$hspid"; hsrc=$?; break; }
    sleep 0.1
done
sed 's/^/  hostile: /' "$work/hostile.log"
answered=$(sed -n 's/^http_hostile: requests answered: \([0-9]*\)$/\1/p' "$work/hostile.log")
if [ "$hsrc" -eq 0 ]; then
    pass "hostile HTTP: every attack refused or timed out with its status and logged reason, the probe served throughout"
else
    fail "hostile HTTP: http_hostile.py exit $hsrc"
    kill -KILL "$hspid" 2>/dev/null
fi
stop "$hpid" "crest-http (hostile)"
got=$(report_requests hostile)
if [ "$stop_rc" -eq 0 ] && grep -q '^  0 fds leaked' "$work/hostile.out" && [ -n "$got" ] &&
    [ "$got" = "${answered:-x}" ]; then
    pass "crest-http (hostile): exit 0, 0 fds leaked, $got requests = the $answered the script had answered"
else
    fail "crest-http (hostile): exit $stop_rc, $got requests, the script had $answered answered"
    cat "$work/hostile.out"; tail -n 20 "$work/hostile.err"
fi
pids=()

echo "$((checks - failures)) of $checks checks passed ($SECONDS s)"
[ "$failures" -eq 0 ]
