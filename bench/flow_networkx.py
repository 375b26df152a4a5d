"""Time attention flow computed with networkx, on bench_flow's inputs.

usage: /usr/bin/python3 bench/flow_networkx.py FILE [--trades K] [--values CFILE]

FILE holds records written by `bench_flow dump` (tests/unit/flow_cli's format:
int32 L, n, cls, then L*n*n float32 capacities, little-endian). For each
of the first K trades this does what the attention-flow authors' code
(and tests/ref.py) does per trade: build the layered networkx DiGraph and
call maximum_flow_value once per (source, sink), averaging over sources
without CLS. Prints per-trade seconds (median; wall clock and this
process's CPU time) as `key value` lines. With --values, the C library's
outputs for the same records (`bench_flow time FILE --out CFILE`) are
checked against networkx's at 1e-6 relative.
"""
import os
import struct
import sys
import time

import numpy as np

# The same construction the tests check the C library against.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from ref import flow_from_capacities  # noqa: E402


def read_records(path):
    data = open(path, "rb").read()
    off, out = 0, []
    while off < len(data):
        L, n, cls = struct.unpack_from("<3i", data, off)
        off += 12
        cnt = L * n * n
        C = np.frombuffer(data, dtype="<f4", count=cnt, offset=off).reshape(L, n, n)
        off += 4 * cnt
        out.append((C.astype(np.float64), cls))
    return out


def main(argv):
    path, trades, values = None, 5, None
    it = iter(argv[1:])
    for a in it:
        if a == "--trades":
            trades = int(next(it))
        elif a == "--values":
            values = next(it)
        else:
            path = a
    if not path:
        sys.exit(__doc__)
    recs = read_records(path)[:trades]
    wall, cpu, got = [], [], []
    for C, cls in recs:
        t0, c0 = time.perf_counter(), time.process_time()
        got.append(flow_from_capacities(C, cls))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print("nx_trades %d" % len(recs))
    print("nx_seconds_per_trade %.6f" % float(np.median(wall)))
    print("nx_cpu_seconds_per_trade %.6f" % float(np.median(cpu)))
    if values:
        lines = open(values).read().splitlines()
        worst = 0.0
        for k, g in enumerate(got):
            c = np.array([float(v) for v in lines[k].split()])
            rel = np.abs(c - g) / np.abs(g)
            worst = max(worst, float(rel.max()))
        print("nx_vs_c_worst_rel %.3g" % worst)
        if worst > 1e-6:
            sys.exit("flow_networkx: C and networkx values differ by %.3g relative" % worst)


if __name__ == "__main__":
    main(sys.argv)
