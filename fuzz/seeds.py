#!/usr/bin/env python3
"""seeds.py - (re)write the seed corpus in fuzz/corpus/ from the input
formats the targets document (fuzz_line.c, fuzz_length.c, fuzz_conn.c).

    python3 fuzz/seeds.py [OUTDIR]      (default: the corpus next to this file)

The seeds only give libFuzzer a head start: well-formed streams, limits hit
exactly and by one, split writes, injected errors, half-close, RST.  The
files are committed; rerun this only to change them.
"""

import os
import struct
import sys

here = os.path.dirname(os.path.abspath(__file__))
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus")


def save(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- line: u16 max_message (mod 513; 0 = default), then the stream ----
def line(name, max_message, stream):
    save("line", name, struct.pack(">H", max_message) + stream)


line("lines", 100, b"hello\nworld\r\n\nlast")
line("exact-limit", 8, b"12345678\n12345678\r\n123456789\n")
line("cr-at-limit", 4, b"1234\r")
line("too-long-no-newline", 4, b"123456")
line("default-limit", 0, b"a" * 300 + b"\n" + b"b\r\n")
line("crlf-mix", 16, b"\r\n\r\r\n\n\rx\n" + b"z" * 17)

# ---- length: settings byte, u32 limit, then the stream ----
# byte 0: bits 0-1 width index (1,2,4,8), bit 2 little-endian, bits 3-4 limit mode
def length(name, width_idx, le, mode, limit, stream):
    save("length", name, bytes([width_idx | (le << 2) | (mode << 3)]) +
         struct.pack(">I", limit) + stream)


def hdr(width, n, le=False):
    return n.to_bytes(width, "little" if le else "big")


length("be4", 2, 0, 0, 1000, hdr(4, 3) + b"abc" + hdr(4, 0) + hdr(4, 1000) + b"x" * 1000)
length("be4-too-large", 2, 0, 0, 1000, hdr(4, 1001) + b"y" * 10)
length("be4-ffffffff", 2, 0, 1, 0xFFFFFFFF, hdr(4, 0xFFFFFFFF) + b"z")
length("le2", 1, 1, 0, 300, hdr(2, 5, True) + b"hello" + hdr(2, 300, True))
length("w1", 0, 0, 0, 1023, hdr(1, 255) + b"q" * 255 + hdr(1, 0))
length("w8-huge", 3, 0, 2, 3, hdr(8, 2**64 - 1) + b"w")
length("w8-le", 3, 1, 3, 20, hdr(8, 7, True) + b"1234567" + hdr(8, 2**20, True))
length("near-size-max", 2, 0, 2, 9, hdr(4, 4) + b"abcd")

# ---- conn: 7 settings bytes, then ops ----
# b0 framing (bits 0-1: 0 RAW, 1 LINE, 2 LENGTH; bits 2-3 width, bit 4 LE), b1 max
# (b1*8+1, 255 = default), b2 read budget, b3 high water, b4 flags (1 keep
# reading, 2 echo, 4 reject '!', 8 RAW partial take, 16 RAW wait), b5, b6
# max_input.  Ops: 0 WRITE u8+1 bytes, 1 WRITE u16+1 bytes, 2 RUN, 3 READ,
# 4 read error, 5 sendmsg error, 6 SHUT_WR, 7 pause/resume, 8 END (rst bit).
W8, W16, RUN, READ, RERR, SERR, SHUT, PAUSE, END = range(9)


def w(data):
    if len(data) <= 256:
        return bytes([W8, len(data) - 1]) + data
    return bytes([W16]) + struct.pack(">H", len(data) - 1) + data


def conn(name, settings, ops):
    save("conn", name, bytes(settings) + ops)


run = bytes([RUN, 3])
conn("raw-echo", [0, 0, 8, 8, 2, 0, 16],
     w(b"hello") + run + bytes([READ]) + w(b"x" * 3000) + run + bytes([READ, END, 0]))
conn("raw-partial-take", [0, 0, 1, 1, 2 | 8, 7, 2],
     w(b"abcdefghijklmnopqrstuvwxyz" * 10) + run + bytes([READ]) + bytes([SHUT]) + run)
conn("raw-wait-overflow", [0, 0, 1, 1, 16, 90, 1], w(b"0123456789" * 20) + run)
conn("line-split", [1, 4, 1, 4, 2, 0, 0],
     w(b"hel") + run + w(b"lo\r") + run + w(b"\nwor") + run + w(b"ld\n") + run +
     bytes([READ]) + w(b"tail") + bytes([SHUT]) + run + bytes([READ]))
conn("line-too-long", [1, 1, 8, 8, 2, 0, 0], w(b"a" * 20 + b"\n") + run)
conn("line-reject", [1, 20, 8, 8, 2 | 4, 0, 0], w(b"ok\n!bad\nnever\n") + run)
conn("length-be4-pipelined", [2 | (2 << 2), 40, 2, 1, 2, 0, 0],
     w(b"".join(hdr(4, n) + b"p" * n for n in (0, 1, 5, 100, 321))) + run +
     bytes([READ]) + run + bytes([READ, END, 1]))
conn("length-w1-le", [2 | (0 << 2) | 16, 31, 1, 1, 2, 0, 0],
     w(hdr(1, 200) + b"q" * 200) + run + bytes([READ]))
conn("length-too-large", [2 | (2 << 2), 1, 8, 8, 2, 0, 0], w(hdr(4, 0xFFFFFFFF) + b"zz") + run)
conn("read-errors", [1, 30, 8, 8, 2, 0, 0],
     bytes([RERR, 0]) + w(b"a\nb\n") + run + bytes([RERR, 1]) + w(b"c\n") + run)
conn("send-errors", [0, 0, 8, 8, 2, 0, 16],
     bytes([SERR, 0]) + w(b"first") + run + bytes([SERR, 2]) + w(b"second") + run)
conn("high-water-pause", [0, 0, 63, 0, 2, 0, 255],
     w(b"h" * 20000) + run + w(b"i" * 20000) + run + bytes([READ]) + run + bytes([READ]))
conn("user-pause", [1, 30, 8, 8, 2, 0, 0],
     bytes([PAUSE]) + w(b"one\ntwo\n") + run + bytes([PAUSE]) + run + bytes([READ]))
conn("rst-with-unread", [0, 0, 8, 8, 2, 0, 16], w(b"r" * 5000) + run + bytes([END, 1]))

# ---- api: the chaos engine's choices (tests/chaos.h), any bytes at all ----
# Each seed is pseudo-random bytes of a fixed generator: the engine reads
# one or two bytes per choice, so length is how long a run goes on.
def api(name, seed, n):
    x = seed
    out = bytearray()
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append(x >> 56)
    save("api", name, bytes(out))


api("short", 1, 200)
api("medium", 2, 1500)
api("long", 3, 4000)
api("longer", 4, 8000)
