"""The numpy reference of the variants (tests/ref.py) on cases worked out
by hand from MATH.md, and tests/vectors/variants.* current with it.

test_variants.c checks the C reference (tests/unit/ref.c) and the library
against those vectors, so the two references are compared through them.
"""
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
sys.path.insert(0, HERE)
import ref  # noqa: E402

checks = 0


def eq(got, want, what, tol=1e-12):
    global checks
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, "%s: shape %s vs %s" % (what, got.shape, want.shape)
    assert np.allclose(got, want, rtol=tol, atol=tol), "%s:\n%s\nwant\n%s" % (what, got, want)
    checks += 1


def test_discard_by_hand():
    F = np.array([[0.1, 0.2, 0.1],
                  [0.3, 0.3, 0.3],
                  [0.5, 0.0, 0.5]])
    # no CLS, m = 3, int(0.5 * 3) = 1: the smallest per row, lower column on ties
    eq(ref.discard(F, -1, 0.5), [[0, .2, .1], [0, .3, .3], [.5, 0, .5]], "discard cls=-1")
    # CLS 0 protected, m = 2, k = 1
    eq(ref.discard(F, 0, 0.5), [[.1, .2, 0], [.3, 0, .3], [.5, 0, .5]], "discard cls=0")
    # rho = 1: every candidate goes, column cls stays
    eq(ref.discard(F, 2, 1.0), [[0, 0, .1], [0, 0, .3], [0, 0, .5]], "discard rho=1")
    # int(0.29 * 100) = 28 (IEEE double product, truncated: vit-explain's int(m * rho))
    row = np.arange(100, dtype=np.float64).reshape(1, 100) + 1
    M = np.vstack([row] * 100)
    eq((ref.discard(M, -1, 0.29)[0] == 0).sum(), 28, "int(0.29 * 100)")
    eq(ref.discard(F, -1, 0.0), F, "rho 0")


def test_start_layer_by_hand():
    assert list(ref.start_layer(4, 0)) == [0, 1, 2, 3]
    assert list(ref.start_layer(4, -1)) == [3]
    assert list(ref.start_layer(4, -4)) == [0, 1, 2, 3]
    assert list(ref.start_layer(4, 2)) == [2, 3]
    for bad in (4, -5, 100):
        try:
            ref.start_layer(4, bad)
        except ValueError:
            continue
        raise AssertionError("start %d accepted" % bad)
    # one layer, H = 1: rollout from s = -1 of a 2-layer trade is rownorm(I + A_1)
    A = np.array([[[[0.5, 0.5], [0.25, 0.75]]], [[[0.9, 0.1], [0.2, 0.8]]]])
    R = ref.rollout_matrix(A, start=-1)
    eq(R, [[1.9 / 2, 0.1 / 2], [0.2 / 2, 1.8 / 2]], "rollout s=-1")
    # grad: (I + Ā_1) only
    G = np.ones_like(A)
    eq(ref.grad_rollout_matrix(A, G, start=1), np.eye(2) + A[1, 0], "grad_rollout s=1")


def test_colsum_signed_lrp_by_hand():
    A = np.array([[[[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]]])
    eq(ref.colsum(A, -1), [0.8, 0.9, 1.3], "colsum no CLS")
    eq(ref.colsum(A, 2), [0.8, 0.9], "colsum CLS last")
    G = np.array([[[[1.0, -2.0, 3.0], [-1.0, 1.0, 1.0], [0.0, 2.0, -1.0]]]])
    P = G[0, 0] * A[0, 0]
    eq(ref.grad_rollout_matrix(A, G, clamp=False), np.eye(3) + P, "signed, one layer")
    eq(ref.grad_rollout_matrix(A, G), np.eye(3) + np.maximum(P, 0), "clamped, one layer")
    rel = A * 2
    eq(ref.grad_rollout_matrix(rel, G), np.eye(3) + np.maximum(2 * P, 0), "lrp = clamped with Rel")
    v = ref.variants(A, np.stack([G, -G]), 0, np.stack([rel, rel]))
    eq(v["grad_rollout_signed"][1], -np.delete(P[0], 0), "second target")
    eq(v["lrp_rollout"][0], np.delete(np.maximum(2 * P, 0)[0], 0), "lrp target 0")


def test_groups_by_hand():
    eq(ref.groups([1, 2, 4, 8], [0, 1, 1, 0], 2), [9, 6], "groups")
    eq(ref.groups([1, 2, 4], [0, 1, 2], 3), [1, 2, 4], "singletons")


def test_vectors_current():
    gen = os.path.join(HERE, "gen_variant_vectors.py")
    r = subprocess.run([sys.executable, gen, "--check"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, "tests/vectors/variants.* are stale: run %s (%s%s)" % (gen, r.stdout, r.stderr)
