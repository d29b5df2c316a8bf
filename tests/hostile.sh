#!/bin/bash
# hostile.sh - hostile and broken peers against crest-echo, crest-framed and
# crest-chat: tests/hostile.py (slowloris, oversized input, garbage, slow
# readers, resets, churn, fd exhaustion, half-close, connection limit,
# subscribers that never read under broadcast load).  Skipped (exit 77)
# without Python 3.
#
# Run by `make check`; by hand: abs_top_builddir=. bash tests/hostile.sh
# [SCENARIO...] (or tests/hostile.py --help).
py=${PYTHON3:-$(command -v python3)}
if [ -z "$py" ] || ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    echo "hostile.sh: skipped: no Python 3.9 or later"
    exit 77
fi
here=$(cd "$(dirname "$0")" && pwd)
exec "$py" "${abs_top_srcdir:-$here/..}/tests/hostile.py" \
    --bindir "${abs_top_builddir:-$here/..}/samples" "$@"
