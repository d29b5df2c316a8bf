#!/bin/bash
# audit.sh - leak audit of the real servers (`make audit`).
#
# Runs crest-echo (raw, --line, two threads, a Unix socket) and crest-framed
# under valgrind memcheck while crest-bench drives them in every mode: raw,
# line and frame; closed loop, pipelined, open loop (--rate), random sizes,
# several client threads; plus the refused cases (a line or frame over the
# limit).  crest-bench itself runs under memcheck once too.  Then each
# server gets SIGTERM, and:
#
#   - valgrind's exit status: --error-exitcode makes any memcheck error,
#     and any definitely, indirectly or possibly lost block (leak kinds
#     counted as errors), exit 99;
#   - the server's own exit status 0 and report: "0 fds leaked", no buffer
#     bytes outstanding (crest's fd registry and buffer pools);
#   - valgrind --track-fds: no fd open at exit other than those inherited
#     from this script (valgrind does not fail on those by itself).
#
# Then tests/hostile.py runs its scenarios with every server under the same
# valgrind (--wrap), so the error paths (oversized input, garbage, resets,
# half-close, the connection limit, the read timeout) are audited too.
#
# Needs valgrind; run from a build directory (abs_top_builddir), with
# LIBTOOL and VALGRIND as make passes them.  Prints one line per check and
# exits 0 only if all passed.
set -u

. "$(dirname "$0")/lib.sh"

bin=${abs_top_builddir:-.}/samples
srcdir=${abs_top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
# LIBTOOL may be a command with arguments ("/bin/bash ./libtool")
read -r -a libtool <<<"${LIBTOOL:-${abs_top_builddir:-.}/libtool}"
valgrind=${VALGRIND:-valgrind}
py=${PYTHON3:-$(command -v python3)}
if ! command -v "$valgrind" >/dev/null 2>&1; then
    echo "audit: valgrind not found"
    exit 1
fi

vg_flags=(--tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect,possible
          --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=99
          --track-fds=yes --suppressions="$srcdir/tests/valgrind.supp")
# The command prefix that runs an uninstalled program under memcheck (the
# libtool wrapper sets the library path, then execs valgrind on the real
# binary, so a background job's $! is valgrind's pid, the one to signal).
vg=("${libtool[@]}" --mode=execute "$valgrind" "${vg_flags[@]}")

# fds the program itself left open at exit, from valgrind's --track-fds
# report: every "Open file descriptor" entry not inherited from the parent.
vg_fds_left() {
    awk '/Open (file descriptor|AF_[A-Z0-9]+ socket)/ { entry = 1; inherited = 0; next }
         entry && /<inherited from parent>/ { inherited = 1 }
         entry && /^==[0-9]+== *$/ { if (!inherited) n++; entry = 0 }
         END { print n + 0 }' "$1"
}

# vg_verdict LABEL LOG STATUS: the checks on a valgrind run's log.
vg_verdict() {
    local label=$1 log=$2 rc=$3 errs lost fds
    errs=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$log" | tail -n 1)
    lost=$(grep -E "(definitely|indirectly|possibly) lost: [1-9]" "$log" | head -n 3)
    fds=$(vg_fds_left "$log")
    if [ "$rc" -eq 0 ] && [ "${errs:-1}" -eq 0 ] && [ -z "$lost" ] && [ "$fds" -eq 0 ]; then
        pass "$label: memcheck clean (0 errors, no block lost, $fds fds left open at exit)"
    else
        fail "$label: exit $rc, memcheck errors ${errs:-?}, fds left open $fds ${lost:+(lost: $lost)}"
        sed 's/^/    | /' "$log" | tail -n 60
    fi
}

# start NAME ARGS...: the server under memcheck on a free port; sets pid,
# addr, log, vglog.
start() {
    local name=$1; shift
    log=$work/$name.$RANDOM.log
    vglog=$log.vg
    "${vg[@]}" --log-file="$vglog" "$bin/$name" --port 0 "$@" >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    addr=
    for _ in $(seq 1 600); do
        addr=$(sed -n 's/^listening on //p' "$log" | head -n 1)
        [ -n "$addr" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    fail "$name $*: did not start under valgrind"
    cat "$log" "$vglog"
    return 1
}

# stop LABEL: SIGTERM, wait, check the report and valgrind's verdict.
stop() {
    local label=$1 rc
    kill -TERM "$pid"
    wait "$pid"; rc=$?
    if [ "$rc" -eq 0 ] && grep -q '^  0 fds leaked' "$log" &&
        grep -q 'buffer bytes outstanding: 0' "$log"; then
        pass "$label: SIGTERM report: exit 0, 0 fds leaked, 0 buffer bytes"
    else
        fail "$label: SIGTERM report (exit $rc)"
        sed 's/^/    | /' "$log" | tail -n 20
    fi
    vg_verdict "$label" "$vglog" "$rc"
}

# bench EXPECT LABEL ARGS...: crest-bench (not under valgrind) against the
# server; EXPECT ok (exit 0, every reply verified) or refused (the server
# closed the connection on it).
bench() {
    local expect=$1 label=$2; shift 2
    local out=$work/bench.out rc line
    "$bin/crest-bench" --quiet --timeout 30 "$@" >"$out" 2>&1; rc=$?
    line=$(grep '^crest-bench:' "$out")
    kv() { printf '%s\n' "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    if [ "$expect" = ok ]; then
        if [ "$rc" -eq 0 ] && [ "$(kv errors)" = 0 ] && [ "${line:+x}" ]; then
            pass "$label: $(kv msgs) replies, $(kv payload_bytes) payload bytes, all verified"
        else
            fail "$label: crest-bench exit $rc"
            cat "$out"
        fi
    else
        if [ "$rc" -ne 0 ] && [ "$(kv err_closed_early)" -ge 1 ] && [ "$(kv msgs)" = 0 ]; then
            pass "$label: refused, as it should be"
        else
            fail "$label: crest-bench should have been refused (exit $rc)"
            cat "$out"
        fi
    fi
}

echo "audit: valgrind $("$valgrind" --version) on crest-echo, crest-framed, crest-bench"
t0=$SECONDS

if start crest-echo --quiet; then
    bench ok "echo raw, 20 conns" -c 20 -n 200 -s 64 "$addr"
    bench ok "echo raw, pipelined 16, random sizes" -c 8 -n 200 -P 16 --size-random 1-16k "$addr"
    bench ok "echo raw, open loop 2000 msg/s" -c 10 -r 2000 -d 1 --warmup 0.2 "$addr"
    bench ok "echo raw, 2 client threads" -c 8 -t 2 -n 100 -s 1k "$addr"
    bench ok "echo raw, 256 KiB messages" -c 2 -n 10 -s 256k "$addr"
    stop "crest-echo (raw)"
fi

if start crest-echo --quiet --line --max-line 1k; then
    bench ok "echo --line, pipelined 8" --mode line -c 10 -n 200 -P 8 -s 100 "$addr"
    bench ok "echo --line, random sizes" --mode line -c 4 -n 100 --size-random 0-1k "$addr"
    bench refused "echo --line, a 2 KiB line" --mode line -c 1 -n 1 -s 2k "$addr"
    stop "crest-echo --line"
fi

if start crest-echo --quiet --threads 2; then
    bench ok "echo, server threads 2" -c 16 -t 2 -n 100 -P 4 "$addr"
    stop "crest-echo --threads 2"
fi

sock=$work/echo.sock
if start crest-echo --quiet --unix "$sock"; then
    bench ok "echo over a Unix socket" -c 4 -n 100 -P 4 --unix "$sock"
    stop "crest-echo --unix"
fi

if start crest-framed --quiet --max-frame 64k; then
    bench ok "framed, pipelined 8" --mode frame -c 10 -n 200 -P 8 -s 100 "$addr"
    bench ok "framed, random sizes 0-64k" --mode frame -c 4 -n 50 -P 4 --size-random 0-64k "$addr"
    bench ok "framed, open loop" --mode frame -c 5 -r 1000 -d 1 --warmup 0.2 "$addr"
    bench refused "framed, a 128 KiB frame" --mode frame -c 1 -n 1 -s 128k "$addr"
    # crest-bench under memcheck too (the client side of crest)
    blog=$work/bench.vg
    "${vg[@]}" --log-file="$blog" "$bin/crest-bench" --quiet --mode frame -c 6 -t 2 -n 100 -P 4 \
        --size-random 1-4k --timeout 60 "$addr" >"$work/bench-vg.out" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        pass "crest-bench under memcheck: $(grep -o 'msgs=[0-9]*' "$work/bench-vg.out") verified"
    else
        fail "crest-bench under memcheck: exit $rc"
        cat "$work/bench-vg.out"
    fi
    vg_verdict "crest-bench" "$blog" "$rc"
    stop "crest-framed"
fi

# The hostile peers, with every server they start under memcheck.
if [ -n "$py" ]; then
    vgwrap="${vg[*]} --log-file=$work/hostile-%p.vg"
    hostile_out=$work/hostile.out
    "$py" "$srcdir/tests/hostile.py" --bindir "$bin" --wrap "$vgwrap" --churn 2000 \
        slowloris oversized garbage resets churn half_close conn_limit >"$hostile_out" 2>&1
    rc=$?
    grep -E '^(ok|FAIL)' "$hostile_out" | sed 's/^ok   /ok   hostile (memcheck): /; s/^FAIL /FAIL hostile (memcheck): /' |
        cut -c1-220
    checks=$((checks + 1))
    if [ "$rc" -ne 0 ]; then
        failures=$((failures + 1))
        echo "FAIL hostile.py under memcheck (exit $rc)"
        grep -v '^ok' "$hostile_out" | tail -n 40
    fi
    n=0
    for f in "$work"/hostile-*.vg; do
        [ -e "$f" ] || continue
        grep -q "crest-echo\|crest-framed" "$f" || continue
        n=$((n + 1))
        vg_verdict "hostile server $(basename "$f" .vg)" "$f" 0
    done
    [ "$n" -gt 0 ] || fail "hostile: no valgrind logs"
else
    echo "audit: no python3: hostile peers under memcheck skipped"
fi

echo "audit: $((checks - failures)) of $checks checks passed in $((SECONDS - t0)) s"
[ "$failures" -eq 0 ]
