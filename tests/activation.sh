#!/bin/bash
# activation.sh - socket activation end to end: crest-echo started by
# systemd-socket-activate (Debian's systemd package), which opens the
# listening socket itself and passes it as fd 3 with LISTEN_FDS/LISTEN_PID,
# the way systemd does.  The server must adopt that socket (not bind its
# own), echo through it, and stop cleanly on SIGTERM with "0 fds leaked".
# Then the same with --threads 2 (each thread adopts a dup of the socket).
# No timing thresholds: every wait is a bound.
#
# Run by `make check`; by hand: abs_top_builddir=. bash tests/activation.sh
set -u

. "$(dirname "$0")/lib.sh"

bin=${abs_top_builddir:-.}/samples
sa=$(command -v systemd-socket-activate)
py=${PYTHON3:-$(command -v python3)}
if [ -z "$sa" ] || [ -z "$py" ]; then
    echo "SKIP: needs systemd-socket-activate (package systemd) and python3"
    exit 77
fi

# A free loopback port (systemd-socket-activate does not take port 0).
free_port() {
    "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# echo_through PORT TEXT: send TEXT, expect it back; prints what came back.
echo_through() {
    "$py" - "$1" "$2" <<'PY'
import socket, sys
port, text = int(sys.argv[1]), sys.argv[2].encode()
s = socket.create_connection(("127.0.0.1", port), timeout=20)
s.sendall(text)
got = b""
while len(got) < len(text):
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
s.close()
sys.stdout.write(got.decode(errors="replace"))
PY
}

run_case() {
    local label=$1; shift
    local port log=$work/$label.log pid rc
    port=$(free_port)
    # systemd-socket-activate binds, waits for the first connection, then
    # execs the server in its own process (same pid), with the socket at
    # fd 3 and LISTEN_PID set to that pid.
    "$sa" -l "127.0.0.1:$port" "$bin/crest-echo" "$@" >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 1 100); do
        grep -q "^Listening on 127.0.0.1:$port" "$log" && break
        sleep 0.05
    done
    local got
    got=$(echo_through "$port" "hello through a passed socket")
    if [ "$got" = "hello through a passed socket" ]; then
        pass "$label: echoed through the socket systemd-socket-activate passed"
    else
        fail "$label: echo got '$got'"; cat "$log"
    fi
    for _ in $(seq 1 100); do
        grep -q '^listening on ' "$log" && break
        sleep 0.05
    done
    if grep -q '^socket activation: 1 listening socket passed' "$log" &&
        grep -q "^listening on 127.0.0.1:$port\$" "$log"; then
        pass "$label: the server said it adopted the passed socket, on port $port"
    else
        fail "$label: no socket activation line"; cat "$log"
    fi
    # A second connection, to the same (adopted, not rebound) socket.
    got=$(echo_through "$port" "again")
    [ "$got" = again ] && pass "$label: a second connection echoed" ||
        { fail "$label: second echo got '$got'"; cat "$log"; }
    kill -TERM "$pid"
    wait "$pid"; rc=$?
    if [ "$rc" -eq 0 ] && grep -q '^  0 fds leaked' "$log" &&
        grep -q 'buffer bytes outstanding: 0' "$log" &&
        grep -q '^  connections: 2 served' "$log"; then
        pass "$label: SIGTERM report: exit 0, 2 served, 0 fds leaked"
    else
        fail "$label: SIGTERM report (exit $rc):"; cat "$log"
    fi
}

run_case activated
run_case activated-threads --threads 2 --quiet

# Not activated: LISTEN_PID naming another process is ignored (and the
# server binds --port as usual).
log=$work/plain.log
LISTEN_PID=1 LISTEN_FDS=1 "$bin/crest-echo" --port 0 >"$log" 2>&1 &
pid=$!
pids+=("$pid")
for _ in $(seq 1 100); do
    grep -q '^listening on ' "$log" && break
    sleep 0.05
done
if grep -q '^listening on ' "$log" && ! grep -q '^socket activation' "$log"; then
    pass "LISTEN_PID of another process: ignored, bound --port"
else
    fail "LISTEN_PID of another process"; cat "$log"
fi
kill -TERM "$pid"; wait "$pid"
# Malformed: refused with a message.
LISTEN_PID=not-a-pid LISTEN_FDS=1 "$bin/crest-echo" --port 0 >"$work/bad.log" 2>&1; rc=$?
if [ "$rc" -eq 1 ] && grep -q 'LISTEN_PID/LISTEN_FDS' "$work/bad.log"; then
    pass "malformed LISTEN_PID: exit 1 with a message"
else
    fail "malformed LISTEN_PID (exit $rc)"; cat "$work/bad.log"
fi

echo "$((checks - failures)) of $checks checks passed"
[ "$failures" -eq 0 ]
