# tests/lib.sh - what the shell test scripts share; sourced, not run.
#
# Sets $work (a scratch directory) and $pids (processes the script
# started: add each "$!"), and on exit kills those processes by PID and
# removes $work (kept if KEEP_WORK is set, for debugging).  pass/fail count
# checks; a script ends with `summary`, whose status is the script's.

work=$(mktemp -d)
pids=()
checks=0
failures=0

cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

pass() { checks=$((checks + 1)); echo "ok   $*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAIL $*"; }

# wait_listening PID FILE: wait (10 s at most) for the "listening on
# HOST:PORT" line a sample prints, in FILE; sets $port from the first one.
# 1 if PID exits first or the line never comes.
wait_listening() {
    local p=$1 file=$2 addr
    port=
    for _ in $(seq 1 200); do
        addr=$(sed -n 's/^listening on //p' "$file" | head -n 1)
        if [ -n "$addr" ]; then
            port=${addr##*:}
            return 0
        fi
        kill -0 "$p" 2>/dev/null || break
        sleep 0.05
    done
    return 1
}

# stop_pid PID NAME SECONDS: SIGTERM, wait up to SECONDS, then a failed
# check and SIGKILL; sets $stop_rc (the exit status).
stop_pid() {
    local p=$1 name=$2 secs=$3
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 1 $((secs * 10))); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$p" 2>/dev/null; then
        fail "$name (pid $p) still running $secs s after SIGTERM: killed"
        kill -KILL "$p"
    fi
    wait "$p"
    stop_rc=$?
}
