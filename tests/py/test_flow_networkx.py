"""core/flow against networkx, the attention-flow authors' own tool.

Random cases (shapes, CLS positions, random and peaked attention) are
built in numpy; the C library computes them through tests/unit/flow_cli (built
next to the tests), and networkx computes maximum_flow_value on the graph
built exactly as tests/ref.py builds it. Two comparisons, both at 1e-6
relative:

- same input: networkx on the float32 capacities the library sees (the
  graph construction of ref.flow, capacities given instead of attention);
- end to end: ref.flow itself, on the float64 attention (the library's
  input is Â rounded to float32, which moves a flow by far less than
  1e-6 relative).

Run by Debian's /usr/bin/python3 (python3-numpy, python3-networkx), with
XPL_BUILD_DIR pointing at the build tree.
"""
import os
import struct
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref  # noqa: E402  (the float64 reference of MATH.md)

BUILD = os.environ.get("XPL_BUILD_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "build")
FLOW_CLI = os.path.join(BUILD, "tests", "unit", "flow_cli")
# The watchdog of conftest.py: just under ctest's timeout of these cases (a
# safety net against a hang on a loaded machine, not a speed check).
WATCHDOG_S = 1750
REL = 1e-6


def attention(rng, L, H, n, temp):
    """L*H softmax rows of logits ~ temp * N(0, 1), [L][H][n][n] float64."""
    z = temp * rng.standard_normal((L, H, n, n))
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def c_flow(cases):
    """Run flow_cli once over all (C float32, cls) cases; list of vectors."""
    blob = bytearray()
    for C, cls in cases:
        L, n, _ = C.shape
        blob += struct.pack("<3i", L, n, cls)
        blob += np.ascontiguousarray(C, dtype="<f4").tobytes()
    res = subprocess.run([FLOW_CLI], input=bytes(blob), capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    lines = res.stdout.decode().splitlines()
    assert len(lines) == len(cases), (len(lines), len(cases))
    return [np.array([float(v) for v in line.split()]) for line in lines]


def close(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want)
    bad = err > REL * np.abs(want)
    assert not bad.any(), "%s: worst [%d] got %.9g want %.17g" % (
        what, int(np.argmax(err)), got[np.argmax(err)], want[np.argmax(err)])
    return float((err / np.maximum(np.abs(want), 1e-300)).max())


def make_cases():
    rng = np.random.default_rng(20240606)
    cases = []
    # (n, L, cls, temp): corners, the tab32 shape, and random draws
    fixed = [(2, 1, 1, 1.0), (2, 12, 0, 8.0), (3, 3, -1, 1.0), (8, 2, -1, 8.0),
             (32, 4, 31, 1.0), (32, 4, 31, 8.0), (64, 2, 63, 8.0), (40, 3, 0, 1.0),
             (16, 12, 7, 8.0), (6, 6, -1, 8.0)]
    for n, L, cls, temp in fixed:
        cases.append((n, L, cls, temp))
    for _ in range(14):
        n = int(rng.integers(2, 25))
        L = int(rng.integers(1, 13))
        cls = int(rng.choice([-1, 0, n - 1, int(rng.integers(0, n))]))
        if cls < 0 and n * n * L > 1500:
            n = max(2, int((1500 / L) ** 0.5))
        cases.append((n, L, cls, float(rng.choice([1.0, 8.0]))))
    out = []
    for n, L, cls, temp in cases:
        A = attention(rng, L, 4, n, temp)
        out.append((A, cls))
    return out


def test_c_flow_equals_networkx():
    t0 = time.time()
    cases = make_cases()
    inputs = [(ref.flow_capacities(A).astype(np.float32), cls) for A, cls in cases]
    got = c_flow(inputs)
    worst_same = worst_e2e = 0.0
    checked = 0
    for (A, cls), (C, _), g in zip(cases, inputs, got):
        L, _, n, _ = A.shape
        what = "L=%d n=%d cls=%d" % (L, n, cls)
        want = ref.flow_from_capacities(C.astype(np.float64), cls)
        worst_same = max(worst_same, close(g, want, what + " (same float32 input)"))
        if n * n * L <= 4096:
            e2e = ref.flow(A, cls)
            worst_e2e = max(worst_e2e, close(g, e2e, what + " (ref.flow on float64 attention)"))
        checked += len(g)
    assert checked > 300, checked
    print("test_flow_networkx: %d cases, %d values, worst rel %.2e (same input), %.2e "
          "(ref.flow), %.1f s" % (len(cases), checked, worst_same, worst_e2e, time.time() - t0))
