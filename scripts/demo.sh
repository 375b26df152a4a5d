#!/bin/sh
# The main job, on a fresh Debian 12 machine: install what is missing,
# build, start xplaind with its built-in demo stream (a synthetic trading
# model whose feature importance drifts every 30 s) and show the live view
# of explanations, global rankings and drift. Ctrl-C stops both.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh build
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DXPL_TESTS=OFF -DXPL_BENCH=OFF >/dev/null
cmake --build build -j"$(nproc)" >/dev/null

RUN=$(mktemp -d /tmp/xplaind-demo.XXXXXX)
PUB="ipc://$RUN/pub"
QUERY="ipc://$RUN/query"
# setpriv --pdeathsig: the daemon also stops when this shell is killed
# outright (a closed terminal), where the trap below never runs.
setpriv --pdeathsig TERM build/daemon/xplaind --demo --publish "$PUB" --query "$QUERY" \
    2>"$RUN/xplaind.log" &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null; rm -rf "$RUN"' EXIT INT TERM
echo "xplaind running (pid $DAEMON), log in $RUN/xplaind.log"
build/client/xplainctl --query "$QUERY" --sub "$PUB" top "$@"
