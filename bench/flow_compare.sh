#!/bin/sh
# flow_compare.sh: core/flow against networkx, side by side, in one run.
#
# usage: bench/flow_compare.sh [BUILD_DIR]      (default: build-flow)
#        NX_TRADES=K  trades timed with networkx per shape (default 5)
#
# For each shape: bench_flow writes the trades' capacities to a file, then
# times flow_compute on them (C, before), networkx times the same trades
# and checks the C values (1e-6 relative), and C is timed again (after).
# The ratio is networkx's seconds per trade times C's trades per second
# (mean of before and after), on wall clock and on CPU time: on 2 shared
# cores CPU time is the steadier one. Prints a markdown table.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$SRC/build-flow}
NX_TRADES=${NX_TRADES:-5}
PY=/usr/bin/python3

cmake --build "$B" --target bench_flow >/dev/null
BF=$B/bench/bench_flow
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

val() { awk -v k="$1" '$1 == k { print $2 }' "$2"; }

echo "## flow_compute vs networkx, side by side"
echo
echo "- machine: $(uname -srm), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- networkx $($PY -c 'import networkx; print(networkx.__version__)') on $($PY -V 2>&1), $NX_TRADES trades per shape; C: median of 5 runs >= 0.3 s, before and after"
dirty=$(git -C "$SRC" diff --quiet HEAD -- core/flow.c core/flow.h bench/bench_flow.c || echo " (flow sources modified)")
echo "- commit $(git -C "$SRC" rev-parse --short HEAD)$dirty"
echo
echo "| shape | attention | CLS token | C trades/s (wall) | networkx s/trade (wall) | ratio (wall) | ratio (CPU) | values |"
echo "|---|---|---|---:|---:|---:|---:|---|"

# name gen n L cls networkx-trades
while read -r name gen n L cls k; do
    [ -n "$name" ] || continue
    [ "$k" = "-" ] && k=$NX_TRADES
    "$BF" dump "$TMP/in.bin" --gen "$gen" --n "$n" --L "$L" --cls "$cls" --trades 8 --seed 42
    "$BF" time "$TMP/in.bin" --reps 5 --seconds 0.3 --out "$TMP/c.txt" >"$TMP/c1"
    $PY "$SRC/bench/flow_networkx.py" "$TMP/in.bin" --trades "$k" --values "$TMP/c.txt" >"$TMP/nx"
    "$BF" time "$TMP/in.bin" --reps 5 --seconds 0.3 >"$TMP/c2"
    awk -v name="$name" -v gen="$gen" -v cls="$cls" \
        -v c1="$(val c_trades_per_s "$TMP/c1")" -v c2="$(val c_trades_per_s "$TMP/c2")" \
        -v u1="$(val c_cpu_trades_per_s "$TMP/c1")" -v u2="$(val c_cpu_trades_per_s "$TMP/c2")" \
        -v nx="$(val nx_seconds_per_trade "$TMP/nx")" -v nxc="$(val nx_cpu_seconds_per_trade "$TMP/nx")" \
        -v rel="$(val nx_vs_c_worst_rel "$TMP/nx")" 'BEGIN {
            c = (c1 + c2) / 2; u = (u1 + u2) / 2
            printf "| %s | %s | %s | %.0f | %.3f | %.0fx | %.0fx | agree (worst rel %s) |\n",
                   name, gen, cls < 0 ? "none" : cls, c, nx, nx * c, nxc * u, rel
        }'
done <<EOF
tab32 workload 32 4 31 -
tab32 random 32 4 31 -
tab32 peaked 32 4 31 -
tab16 workload 16 3 15 -
n8L4 workload 8 4 -1 -
n64L4 workload 64 4 63 2
EOF
