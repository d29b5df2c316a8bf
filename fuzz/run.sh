#!/bin/bash
# fuzz/run.sh - build the fuzz targets with clang + libFuzzer and run each
# for a bounded time.  `make fuzz` calls it; by hand, from a configured
# build directory:
#
#   srcdir=. builddir=$PWD FUZZ_CC=clang FUZZ_TIME=60 \
#   FUZZ_LIB_SOURCES="src/loop.c ..." bash fuzz/run.sh line length conn
#
# Each target is compiled with -fsanitize=fuzzer,address,undefined together
# with the library's sources (so -Wl,--wrap reaches the library's calls),
# into fuzz-out/ in the build directory, then run for FUZZ_TIME seconds:
#
#   fuzz-out/fuzz-T -max_total_time=FUZZ_TIME fuzz-out/corpus/T fuzz/corpus/T
#
# New inputs libFuzzer finds go to fuzz-out/corpus/T (kept between runs, so
# a second `make fuzz` goes on from there; the seed corpus in the tree is
# never written).  A crash, leak, sanitizer report or timeout stops the
# target: its input is saved as fuzz-out/T-crash-..., and this script fails
# and says what to do with it: fix the bug, and copy the input to
# fuzz/regressions/T/, so that `make check` replays it from then on
# (fuzz/replay.c).
#
# The last lines give, per target: executions, seconds, corpus size.
set -euo pipefail

: "${srcdir:?}" "${builddir:?}" "${FUZZ_CC:?}" "${FUZZ_TIME:=60}" "${FUZZ_LIB_SOURCES:?}"
out=$builddir/fuzz-out
mkdir -p "$out/obj"

flags=(-g -O1 -std=gnu11 -fno-omit-frame-pointer
       -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
       -I"$srcdir/include" -I"$srcdir/src" -I"$builddir" -pthread
       -DCREST_LIBC_SYSCALLS) # libc read/send/sendmsg, for -Wl,--wrap
# c-ares (src/resolve.c), when configure found it.
read -r -a lib_cflags <<<"${FUZZ_LIB_CFLAGS:-}"
read -r -a libs <<<"${FUZZ_LIBS:-}"
flags+=("${lib_cflags[@]}")

# The library, once for all targets.  An object is rebuilt when its source
# or any header is newer: a struct that changed in a header must not be
# laid out two ways in one binary (stale objects once made the api target
# report nonsense in the timer heap).
objs=()
for src in $FUZZ_LIB_SOURCES; do
    obj=$out/obj/$(basename "${src%.c}").o
    if [ ! -e "$obj" ] || [ "$srcdir/$src" -nt "$obj" ] ||
       [ -n "$(find "$srcdir/src" "$srcdir/include" "$builddir/config.h" -name '*.h' \
               -newer "$obj" -print -quit)" ]; then
        "$FUZZ_CC" "${flags[@]}" -c "$srcdir/$src" -o "$obj"
    fi
    objs+=("$obj")
done

summary=()
status=0
for t in "$@"; do
    bin=$out/fuzz-$t
    wrap=()
    [ "$t" = conn ] && wrap=(-Wl,--wrap=read,--wrap=sendmsg,--wrap=send)
    "$FUZZ_CC" "${flags[@]}" -fsanitize=fuzzer "$srcdir/fuzz/fuzz_$t.c" "${objs[@]}" \
        "${wrap[@]}" "${libs[@]}" -o "$bin"
    mkdir -p "$out/corpus/$t"
    log=$out/fuzz-$t.log
    echo "fuzz: $t for $FUZZ_TIME s (log: $log)"
    rc=0
    # UBSan findings abort (-fno-sanitize-recover), so libFuzzer sees them
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ASAN_OPTIONS=detect_leaks=1 \
    "$bin" -max_total_time="$FUZZ_TIME" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$out/$t-" "$out/corpus/$t" "$srcdir/fuzz/corpus/$t" \
        >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    corpus=$(find "$out/corpus/$t" -type f | wc -l)
    if [ "$rc" -ne 0 ]; then
        status=1
        echo "fuzz: $t FAILED (exit $rc); the end of its log:"
        tail -n 40 "$log"
        for a in "$out/$t-"*; do
            [ -e "$a" ] || continue
            echo "fuzz: $t: the input is $a: once fixed, copy it to fuzz/regressions/$t/"
        done
        summary+=("fuzz $t: FAILED after ${execs:-?} executions")
    else
        summary+=("fuzz $t: ${execs:-?} executions in ${secs:-?} s, corpus $corpus inputs, no failure")
    fi
done
echo
printf '%s\n' "${summary[@]}"
exit $status
