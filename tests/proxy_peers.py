#!/usr/bin/env python3
"""proxy_peers.py - the Python peers of tests/proxy.sh (stdlib, loopback,
every socket with a timeout).

  halfclose-backend PORTFILE   a backend that answers "hello\\n" to the first
                               bytes, shuts down its side, then reads on to
                               EOF and prints "backend got N bytes after
                               its EOF"
  halfclose-client PORT        reads "hello\\n" then EOF through the proxy
                               with its own side still open, then sends
                               1000 bytes and shuts down; prints "client
                               ok" or why not
  slow-backend PORTFILE        an echo backend that reads 16 KiB at a time
                               with a 1 ms pause each
  proxy-client PORT            connects, sends "hi", reads the echo; prints
                               "client port N" (its own source port)
  hostile PORT                 half-open, RST, slowloris and garbage peers
                               against the proxy while a probe keeps
                               doing verified round trips; prints "hostile
                               ok" or why not
"""
import socket
import struct
import sys
import threading
import time


def listen(portfile):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    with open(portfile + ".tmp", "w") as f:
        f.write(str(s.getsockname()[1]))
    import os
    os.rename(portfile + ".tmp", portfile)
    return s


def halfclose_backend(portfile):
    s = listen(portfile)
    s.settimeout(30)
    c, _ = s.accept()
    c.settimeout(30)
    c.recv(100)
    c.sendall(b"hello\n")
    c.shutdown(socket.SHUT_WR)
    n = 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        n += len(d)
    print("backend got %d bytes after its EOF" % n, flush=True)
    c.close()


def halfclose_client(port):
    c = socket.create_connection(("127.0.0.1", port), timeout=30)
    c.sendall(b"x")
    got = b""
    while True:
        d = c.recv(100)
        if not d:
            break
        got += d
    if got != b"hello\n":
        print("client got %r" % got)
        return 1
    c.sendall(b"y" * 1000)  # our side is still open: it must still flow
    c.shutdown(socket.SHUT_WR)
    if c.recv(100) != b"":
        print("client: data after EOF")
        return 1
    print("client ok")
    return 0


def slow_backend(portfile):
    s = listen(portfile)
    s.settimeout(60)
    while True:
        try:
            c, _ = s.accept()
        except socket.timeout:
            return
        threading.Thread(target=slow_echo, args=(c,), daemon=True).start()


def slow_echo(c):
    c.settimeout(60)
    try:
        while True:
            d = c.recv(16384)
            if not d:
                break
            time.sleep(0.001)
            c.sendall(d)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    c.close()


def proxy_client(port):
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    c.sendall(b"hi")
    d = c.recv(10)
    print("client port %d echo %r" % (c.getsockname()[1], d), flush=True)
    c.close()
    return 0 if d == b"hi" else 1


def probe(port, n):
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    for i in range(n):
        msg = ("probe %d\n" % i).encode()
        c.sendall(msg)
        got = b""
        while len(got) < len(msg):
            d = c.recv(100)
            if not d:
                return False
            got += d
        if got != msg:
            return False
    c.close()
    return True


def hostile(port):
    held = []
    # half-open: connect, send nothing, hold
    for _ in range(20):
        held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
    # RST after sending
    for _ in range(20):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(b"z" * 100000)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    # garbage, then close without reading
    for _ in range(20):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(bytes(range(256)) * 64)
        c.close()
    # slowloris: a byte at a time on 10 connections
    slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
    for _ in range(10):
        for c in slow:
            c.send(b"s")
        time.sleep(0.02)
    ok = probe(port, 200)
    for c in held + slow:
        c.close()
    ok = ok and probe(port, 50)
    print("hostile ok" if ok else "hostile: the probe failed", flush=True)
    return 0 if ok else 1


def main():
    mode, arg = sys.argv[1], sys.argv[2]
    if mode == "halfclose-backend":
        halfclose_backend(arg)
    elif mode == "halfclose-client":
        return halfclose_client(int(arg))
    elif mode == "slow-backend":
        slow_backend(arg)
    elif mode == "proxy-client":
        return proxy_client(int(arg))
    elif mode == "hostile":
        return hostile(int(arg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
