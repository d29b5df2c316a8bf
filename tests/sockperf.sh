#!/bin/bash
# sockperf.sh - crest-echo --sockperf driven by the real sockperf client
# (Debian's sockperf 3.7), over TCP on loopback.
#
#   1. ping-pong (2 s, 64 B): every message is a pong request; sockperf must
#      report replies, and no dropped, duplicated or out-of-order message.
#   2. under-load at a fixed rate (--mps 5000, --reply-every 10): the same.
#   3. throughput (2 s): no message asks a reply; sockperf counts what it
#      sent, and crest-echo must have read every one without answering.
#   4. hostile peers (a Python client), with a sockperf ping-pong probe
#      running beside them: messages split byte by byte and many in one
#      send, messages sockperf's server does not answer (no pong request,
#      not from a client, warmup), a message of the maximum size (65507) -
#      each reply checked byte for byte; then a length under the 14-byte
#      header and a length one over the maximum, each closing only its own
#      connection with the reason logged, while the probe gets its answers.
#   5. SIGTERM: exit 0, "0 fds leaked", and the final report's sockperf
#      counts equal, exactly, what the clients sent (sockperf prints its
#      SentMessages).
#
# Counts only, no timing thresholds.  Skipped (77) without sockperf or
# Python 3.  About 15 s.  KEEP_WORK=1 keeps the logs.
set -u

if ! command -v sockperf >/dev/null 2>&1; then
    echo "sockperf.sh: skipped: sockperf is not installed (scripts/deps installs it)"
    exit 77
fi
py=${PYTHON3:-$(command -v python3)}
if [ -z "$py" ] || ! "$py" -c 'import sys' 2>/dev/null; then
    echo "sockperf.sh: skipped: no Python 3"
    exit 77
fi

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

bin=${abs_top_builddir:-$here/..}/samples

# ----------------------------------------------------------------- helpers

# start_server ARGS...: crest-echo --sockperf on a free port; sets $pid,
# $port, $log.
start_server() {
    log=$work/server.log
    "$bin/crest-echo" --sockperf --port 0 "$@" >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_listening "$pid" "$log" && return 0
    echo "crest-echo --sockperf did not start:"
    sed 's/^/    | /' "$log" | tail -n 20
    return 1
}

# run_sockperf NAME MODE ARGS...: the sockperf client against the server,
# output (escape codes stripped) in $work/NAME.out.
run_sockperf() {
    local name=$1 mode=$2
    shift 2
    timeout 30 sockperf "$mode" --tcp -i 127.0.0.1 -p "$port" "$@" 2>&1 |
        sed 's/\x1b\[[0-9;]*m//g' >"$work/$name.out"
}

# field NAME KEY: the first "KEY=N" or "KEY = N" in NAME's output ("" if none).
field() {
    sed -n "s/.*$2 *= *\([0-9][0-9]*\).*/\1/p" "$work/$1.out" | head -n 1
}

# Sent and received of the [Total Run] and [Valid Duration] lines.
total_field() { grep -F '[Total Run]' "$work/$1.out" | sed -n "s/.*$2=\([0-9]*\).*/\1/p"; }
valid_field() { grep -F '[Valid Duration]' "$work/$1.out" | sed -n "s/.*$2=\([0-9]*\).*/\1/p"; }

# check_latency_run NAME: sockperf's own verdict on a ping-pong or
# under-load run: replies received, none dropped, duplicated, out of order.
check_latency_run() {
    local name=$1
    local dropped dup ooo sent recv
    dropped=$(field "$name" '# dropped messages')
    dup=$(field "$name" '# duplicated messages')
    ooo=$(field "$name" '# out-of-order messages')
    sent=$(valid_field "$name" SentMessages)
    recv=$(valid_field "$name" ReceivedMessages)
    if [ -z "$dropped" ] || [ -z "$recv" ]; then
        fail "$name: sockperf printed no statistics:"
        sed 's/^/    | /' "$work/$name.out" | tail -n 15
        return
    fi
    if [ "$dropped" = 0 ] && [ "$dup" = 0 ] && [ "$ooo" = 0 ]; then
        pass "$name: 0 dropped, 0 duplicated, 0 out-of-order"
    else
        fail "$name: $dropped dropped, $dup duplicated, $ooo out-of-order"
    fi
    if [ "$recv" -gt 0 ]; then
        pass "$name: $recv replies received in the valid duration ($sent messages sent)"
    else
        fail "$name: no replies received ($sent messages sent)"
    fi
}

# ------------------------------------------------------------------- cases

start_server || { echo "sockperf.sh: crest-echo did not start"; exit 1; }
echo "crest-echo --sockperf listening on port $port"

run_sockperf pingpong ping-pong -m 64 -t 2
check_latency_run pingpong
pp_sent=$(total_field pingpong SentMessages)
pp_recv=$(total_field pingpong ReceivedMessages)
# The [Valid Duration] trims the first and last milliseconds; in ping-pong
# every message waits for its reply, so there sent equals received.
if [ -n "$pp_sent" ] && [ "$(valid_field pingpong SentMessages)" = "$(valid_field pingpong ReceivedMessages)" ]; then
    pass "ping-pong: every message of the valid duration answered"
else
    fail "ping-pong: sent and received differ: $(grep -F '[Valid Duration]' "$work/pingpong.out")"
fi

ul_every=10
run_sockperf underload under-load -m 64 -t 2 --mps 5000 --reply-every $ul_every
check_latency_run underload
ul_sent=$(total_field underload SentMessages)

run_sockperf throughput throughput -m 64 -t 2
tp_sent=$(sed -n 's/.*Total of \([0-9]*\) messages sent.*/\1/p' "$work/throughput.out")
if [ -n "$tp_sent" ] && [ "$tp_sent" -gt 0 ]; then
    pass "throughput: $tp_sent messages sent, the connection stayed up"
else
    fail "throughput: sockperf sent nothing:"
    sed 's/^/    | /' "$work/throughput.out" | tail -n 15
    tp_sent=0
fi
if grep -q 'closed by a peer' "$work/throughput.out"; then
    fail "throughput: the server closed the connection"
fi

# Hostile peers, with a sockperf probe beside them.
timeout 30 sockperf ping-pong --tcp -i 127.0.0.1 -p "$port" -m 64 -t 3 2>&1 |
    sed 's/\x1b\[[0-9;]*m//g' >"$work/probe.out" &
probe=$!
pids+=("$probe")
sleep 0.5 # the probe is connected and under way

"$py" - "$port" >"$work/hostile.out" 2>&1 <<'EOF'
import socket, struct, sys, time

port = int(sys.argv[1])
CLIENT, PONG, WARMUP = 1, 2, 4
failures = 0

def msg(seq, flags, length):
    """A sockperf message: the 14-byte header, then a payload made of seq."""
    payload = bytes((seq * 7 + i) & 0xff for i in range(length - 14))
    return struct.pack('>QHI', seq, flags, length) + payload

def reply_of(m):
    """What sockperf's server sends back: the client flag cleared."""
    seq, flags, length = struct.unpack('>QHI', m[:14])
    return struct.pack('>QHI', seq, flags & ~CLIENT, length) + m[14:]

def read_until_eof(s, deadline=5.0):
    s.settimeout(deadline)
    got = b''
    try:
        while True:
            d = s.recv(1 << 16)
            if not d:
                return got, True
            got += d
    except socket.timeout:
        return got, False

def check(name, ok, detail=''):
    global failures
    print(('ok   ' if ok else 'FAIL ') + name + (': ' + detail if detail else ''))
    if not ok:
        failures += 1

# 1. Framing and what is answered.  Messages split byte by byte, many in
#    one send, and the largest allowed; only pong requests from a client
#    come back, in order, byte for byte.
s = socket.create_connection(('127.0.0.1', port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msgs = [
    msg(1, CLIENT | PONG, 64),            # answered
    msg(2, CLIENT, 64),                   # no pong request: not answered
    msg(3, PONG, 64),                     # not from a client: skipped
    msg(4, CLIENT | PONG | WARMUP, 64),   # warmup: skipped
    msg(5, CLIENT | PONG, 14),            # header only: answered
    msg(6, CLIENT | PONG, 1000),          # answered
    msg(7, CLIENT | PONG, 65507),         # the maximum: answered
]
want = b''.join(reply_of(m) for m in msgs if (m[9] & (CLIENT | PONG | WARMUP)) == CLIENT | PONG)
stream = b''.join(msgs)
for i in range(40):                      # the first 40 bytes one by one
    s.sendall(stream[i:i + 1])
    time.sleep(0.002)
s.sendall(stream[40:])                   # the rest in one send
s.shutdown(socket.SHUT_WR)
got, eof = read_until_eof(s)
s.close()
check('framing: 4 of 7 messages answered, byte for byte, in order', got == want,
      '%d bytes back, %d expected' % (len(got), len(want)))
check('framing: the server closed after our EOF', eof)

# 2. A length under the header: closed, after answering what came before.
s = socket.create_connection(('127.0.0.1', port))
good = msg(10, CLIENT | PONG, 64)
s.sendall(good + struct.pack('>QHI', 11, CLIENT | PONG, 5) + b'x' * 50)
got, eof = read_until_eof(s)
s.close()
check('short length: closed by the server', eof)
check('short length: the message before it answered', got == reply_of(good),
      '%d bytes back' % len(got))

# 3. A length one over the maximum: closed as soon as the header is in,
#    nothing answered.
s = socket.create_connection(('127.0.0.1', port))
s.sendall(struct.pack('>QHI', 12, CLIENT | PONG, 65508) + b'y' * 100)
got, eof = read_until_eof(s)
s.close()
check('length over the maximum: closed by the server', eof)
check('length over the maximum: nothing answered', got == b'', '%d bytes back' % len(got))

sys.exit(1 if failures else 0)
EOF
hostile_rc=$?
sed 's/^/  hostile: /' "$work/hostile.out"
if [ $hostile_rc -eq 0 ]; then
    pass "hostile peers: replies and closes as sockperf's server"
else
    fail "hostile peers (exit $hostile_rc)"
fi
# Python's own counts, for the final report: answered 5 (4 + 1), without
# a pong request 1, not from a client 1, warmup 1, bad headers 2.
py_answered=5

wait "$probe"
check_latency_run probe
probe_sent=$(total_field probe SentMessages)

if grep -q 'closed: protocol error: sockperf header: length 5 is shorter than the 14-byte header' "$log"; then
    pass "short length: logged (protocol error)"
else
    fail "short length: no 'protocol error: sockperf header' line in the log"
fi
if grep -q 'closed: too large: sockperf header: length 65508 is over the maximum 65507' "$log"; then
    pass "length over the maximum: logged (too large)"
else
    fail "length over the maximum: no 'too large: sockperf header' line in the log"
fi

# Stop, and check the final report.
kill -TERM "$pid"
for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
done
kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
wait "$pid" 2>/dev/null
rc=$?
if [ $rc -eq 0 ]; then pass "crest-echo exited 0 on SIGTERM"; else fail "crest-echo exited $rc"; fi
if grep -q '^  0 fds leaked' "$log"; then
    pass "final report: 0 fds leaked"
else
    fail "final report: fds leaked: $(grep 'fds leaked' "$log" | tail -n 1)"
fi

# Every message sockperf sent reached the server, and those asking a reply
# got one: ping-pong asks on every message, under-load on every
# $ul_every-th (sequence numbers that divide by it), throughput on none.
report=$(grep '^  sockperf:' "$log")
echo "  server: ${report#  }"
if [ -n "$pp_sent" ] && [ -n "$ul_sent" ] && [ -n "$probe_sent" ]; then
    answered=$((pp_sent + ul_sent / ul_every + probe_sent + py_answered))
    no_reply=$((ul_sent - ul_sent / ul_every + tp_sent + 1))
    want="$answered messages answered (pong requests), $no_reply without a pong request, 1 warmup, 1 not from a client (none answered); 2 connections closed on a bad header"
    if [ "${report#  sockperf: }" = "$want" ]; then
        pass "final report: the counts are what the clients sent"
    else
        fail "final report: expected \"$want\""
    fi
else
    fail "final report: a sockperf run printed no SentMessages"
fi

[ "$failures" -eq 0 ] || { echo "server log:"; sed 's/^/    | /' "$log" | tail -n 30; }
echo "sockperf.sh: $checks checks, $failures failed"
[ "$failures" -eq 0 ]
