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
