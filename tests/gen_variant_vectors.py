"""Write tests/vectors/variants.{json,msgpack}: the variants of MATH.md
("Variants asked for by users of the published tools") computed by the
numpy reference (tests/ref.py), for test_variants.c to check both the C
reference (tests/unit/ref.c) and the library against.

The inputs are float32 values (what the library sees); some cases are
quantized to multiples of 1/16 so that the discard ratio meets ties.
Attention flow comes from networkx (ref.flow_from_capacities).

    /usr/bin/python3 tests/gen_variant_vectors.py          # rewrite the files
    /usr/bin/python3 tests/gen_variant_vectors.py --check  # exit 1 if stale
"""
import json
import os
import sys

import msgpack
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ref  # noqa: E402

# L, H, n, cls, T, quantized
CASES = [
    (2, 2, 5, -1, 2, False),
    (3, 2, 6, 0, 1, True),
    (2, 3, 7, 6, 3, False),
    (4, 1, 8, 3, 2, True),
    (1, 2, 2, -1, 1, False),
    (3, 4, 9, -1, 2, True),
    (2, 2, 4, 1, 2, True),
]

# fusion, rho, start (as a function of L), resnorm, discard_flow
RUNS = [
    ("mean", 0.0, lambda L: 0, False, False),
    ("max", 0.5, lambda L: -1, True, True),
    ("min", 0.3, lambda L: L - 1, False, False),
    ("mean", 1.0, lambda L: -L, True, False),
    ("mean", 0.75, lambda L: 0, False, True),
    ("mean", 0.29, lambda L: min(1, L - 1), True, True),
]


def f32(x):
    return np.asarray(x, np.float32).astype(np.float64)


def make_case(seed, L, H, n, cls, T, quantized):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(L, H, n, n)) * rng.uniform(0.5, 4.0, size=(L, H, 1, 1))
    A = np.exp(logits - logits.max(axis=3, keepdims=True))
    A /= A.sum(axis=3, keepdims=True)
    if quantized:
        A = np.round(A * 16) / 16
    A = f32(A)
    G = f32(rng.normal(size=(T, L, H, n, n)))
    rel = f32(rng.normal(size=(T, L, H, n, n)) * 0.3 + 0.05)
    nf = n - 1 if cls >= 0 else n
    feat_of, nfeat = [], 0
    for k in range(nf):
        if nfeat and rng.uniform() < 0.4:
            feat_of.append(int(rng.integers(nfeat)))
        else:
            feat_of.append(nfeat)
            nfeat += 1
    runs = []
    for fusion, rho, start, resnorm, dflow in RUNS:
        s = start(L)
        v = ref.variants(A, G, cls, rel, fusion=fusion, rho=rho, start=s, resnorm=resnorm,
                         discard_flow=dflow, with_flow=True)
        exp = {k: (np.asarray(x).tolist()) for k, x in v.items()}
        exp["rollout_grouped"] = ref.groups(v["rollout"], feat_of, nfeat).tolist()
        exp["grad_rollout_signed_grouped"] = [ref.groups(x, feat_of, nfeat).tolist()
                                              for x in v["grad_rollout_signed"]]
        runs.append({"fusion": fusion, "rho": rho, "start": s, "resnorm": resnorm,
                     "discard_flow": dflow, "expected": exp})
    return {"L": L, "H": H, "n": n, "cls": cls, "T": T, "quantized": quantized,
            "attn": A.ravel().tolist(), "grad": G.ravel().tolist(), "rel": rel.ravel().tolist(),
            "feat_of": feat_of, "nfeat": nfeat, "runs": runs}


def build():
    return {
        "about": "Variants of MATH.md computed by tests/ref.py (numpy, float64; flow by "
                 "networkx) from float32 inputs. attn [L][H][n][n], grad and rel [T][L][H][n][n], "
                 "flat. Gradient methods: one vector per target. Regenerate with "
                 "tests/gen_variant_vectors.py.",
        "cases": [make_case(1000 + i, *c) for i, c in enumerate(CASES)],
    }


def same(a, b):
    """Equal structure and inputs; expected numbers to 1e-12 (another
    BLAS may round the float64 products differently in the last bits)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-12 * abs(b) + 1e-15
    return a == b


def main():
    data = build()
    js = json.dumps(data, indent=None, separators=(",", ":")) + "\n"
    mp = msgpack.packb(data, use_bin_type=True)
    jpath = os.path.join(HERE, "vectors", "variants.json")
    mpath = os.path.join(HERE, "vectors", "variants.msgpack")
    if "--check" in sys.argv:
        with open(jpath) as f:
            old = json.load(f)
        with open(mpath, "rb") as f:
            oldm = msgpack.unpackb(f.read(), raw=False)
        stale = not same(old, data) or not same(oldm, data)
        print("stale" if stale else "current")
        return 1 if stale else 0
    with open(jpath, "w") as f:
        f.write(js)
    with open(mpath, "wb") as f:
        f.write(mp)
    print("wrote", jpath, len(js), "bytes;", mpath, len(mp), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
