#!/bin/sh
# check-exports.sh - libcrest.so must export only public crest_* symbols.
#
# Fails if the shared library exports (defines, in its dynamic symbol table)
# any function or object whose name does not start with "crest_", or that
# starts with "crest__" (crest's internal prefix).
#
# Run by `make check` (automake passes abs_top_builddir and NM in the
# environment, so VPATH builds and `make distcheck` work); can be run by
# hand from the build directory as well.
# Exit status: 0 pass, 1 fail, 77 skip (no shared library was built).

set -u

builddir=${abs_top_builddir:-.}
so=$builddir/.libs/libcrest.so
nm_cmd=${NM:-nm}

if test ! -e "$so"; then
    echo "SKIP: $so not found (built with --disable-shared?)"
    exit 77
fi

# Undefined symbols are excluded by --defined-only.  Symbol types:
# T/t text, D/d data, B/b bss, R/r read-only, W/V weak, i indirect (IFUNC),
# u unique global.  'A' (absolute: version-node names) is not code or data.
if ! syms=$($nm_cmd -D --defined-only "$so"); then
    echo "FAIL: $nm_cmd -D --defined-only $so failed"
    exit 1
fi

exported=$(printf '%s\n' "$syms" | awk 'NF >= 3 && $2 ~ /^[TtDdBbRrWwVviu]$/ { print $3 }')
bad=$(printf '%s\n' "$exported" | grep -v '^$' | grep -Ev '^crest_[^_]')
count=$(printf '%s\n' "$exported" | grep -c '^crest_[^_]')

if test -n "$bad"; then
    echo "FAIL: $so exports symbols outside the public crest_ namespace:"
    printf '%s\n' "$bad" | sed 's/^/  /'
    exit 1
fi

if test "$count" -eq 0; then
    echo "FAIL: $so exports no crest_ symbol at all"
    exit 1
fi

echo "PASS: $so exports $count symbols, all crest_*"
exit 0
