"""Precision sweep: every served method and option through a real xplaind,
fed by plain pyzmq + msgpack, against the float64 reference (tests/ref.py)
on the inputs as the daemon holds them (rounded to the dtype first), with
one plain criterion for every published value:

    |got - want| <= 1e-5 |want| + 1e-30

(the floor only lets an exact 0 come out as 0 or a denormal). Random
shapes L 1..6, H 1..8, n 2..64, CLS none/first/last/inside, f32/f16/bf16,
fusion mean/max/min, discard ratio, start layer, the residual
normalisation, one to three targets, attention sharp and flat, gradients
and relevances of both signs. The worst relative error of each method is
printed (run with -s), with where it occurs.

Run by hand with more cases: XPL_PRECISION_CASES=400 XPL_TEST_SEED=7
/usr/bin/python3 -m pytest -s tests/e2e/test_e2e_precision.py
"""
import os
import time

import msgpack
import numpy as np

from xpltest import encode, join, random_attention, ref

ALL = ["rollout", "grad_rollout", "first_layer", "attn_mean", "diag", "colsum",
       "grad_rollout_signed", "lrp_rollout"]
GRAD = ("grad_rollout", "grad_rollout_signed", "lrp_rollout")
FUSIONS = ["mean", "max", "min"]
DTYPES = ["f32", "f16", "bf16"]
REL = 1e-5
FLOOR = 1e-30


def cases(rng, count):
    out = []
    for k in range(count):
        L, H, n = int(rng.integers(1, 7)), int(rng.integers(1, 9)), int(rng.integers(2, 65))
        cls = [-1, 0, n - 1, n // 2][k % 4]
        o = {"fusion": FUSIONS[(k // 4) % 3],
             "discard": float([0.0, 0.0, 0.1, 0.35, 0.9, 1.0][k % 6]),
             "start_layer": int(rng.integers(-L, L)),
             # the residual normalisation in every other case, so that it
             # meets every CLS position
             "grad_resnorm": bool((k // 2) % 2)}
        out.append({"model": f"p{k}", "L": L, "H": H, "n": n, "cls": cls,
                    "dtype": DTYPES[(k // 12) % 3], "T": 1 + k % 3, "o": o,
                    "temp": [1.0, 5.0, 0.3][k % 3]})
    return out


def section(c):
    o = c["o"]
    return (f"[model.{c['model']}]\nmethods = {','.join(ALL)}\nfusion = {o['fusion']}\n"
            f"discard = {o['discard']!r}\nstart_layer = {o['start_layer']}\n"
            f"grad_resnorm = {'true' if o['grad_resnorm'] else 'false'}\n")


def expected(A, G, R, cls, o):
    """What the daemon must publish for one trade: dict method -> list of
    vectors (one per target for the gradient methods)."""
    v = ref.variants(A, G, cls, R, fusion=o["fusion"], rho=o["discard"],
                     start=o["start_layer"], resnorm=o["grad_resnorm"])
    plain = ref.methods(A, None, cls, fusion=o["fusion"])
    want = {"rollout": [v["rollout"]], "colsum": [v["colsum"]],
            "first_layer": [plain["first_layer"]], "attn_mean": [plain["attn_mean"]],
            "diag": [plain["diag"]]}
    for m in GRAD:
        want[m] = v[m]
    return want


def rel_err(got, want):
    """Elementwise error in units of the criterion's allowance (<= 1: ok),
    and the plain relative error."""
    err = np.abs(got - want)
    return err / (REL * np.abs(want) + FLOOR), err / np.maximum(np.abs(want), FLOOR)


def test_every_published_value_within_1e5_relative(daemon, tmp_dir):
    rng = np.random.default_rng(int(os.environ.get("XPL_TEST_SEED", "2026")))
    every = cases(rng, int(os.environ.get("XPL_PRECISION_CASES", "96")))
    worst = {}          # method -> (relative error, allowance units, where)
    bad = []
    values = 0
    # A daemon takes at most 256 [model.NAME] sections: batches of 200.
    for first in range(0, len(every), 200):
        values += run_batch(daemon, tmp_dir, rng, every[first:first + 200], worst, bad)
    print(f"\n{len(every)} trades, {values} published values; worst relative error per method:")
    for m in ALL:
        print(f"  {m:20s} {worst[m][0]:.3g}  ({worst[m][2]})")
    assert not bad, f"{len(bad)} vectors beyond 1e-5 relative:\n" + "\n".join(bad[:20])


def run_batch(daemon, tmp_dir, rng, cs, worst, bad):
    cfg = os.path.join(tmp_dir, "xplaind.conf")
    with open(cfg, "w") as f:
        f.write("[explain]\nmethods = rollout\n\n" + "\n".join(section(c) for c in cs))
    d = daemon("--config", cfg, "--max-trade-targets", "3")
    pub = d.publisher()
    sub = d.subscriber(b"xpl/p")
    join(d, pub, sub)
    values = 0
    for c in cs:
        L, H, n, T, cls = c["L"], c["H"], c["n"], c["T"], c["cls"]
        A = random_attention(rng, (L, H, n, n), temp=c["temp"])
        G = rng.standard_normal((T, L, H, n, n))
        R = rng.standard_normal((T, L, H, n, n)) * A
        body = {"v": 1, "model": c["model"], "seq": 0, "ts": time.time_ns(), "ids": [c["model"]],
                "L": L, "H": H, "n": n, "dtype": c["dtype"], "cls": cls,
                "tokens": [f"t{j}" for j in range(n)], "targets": list(range(T))}
        body["attn"], Ax = encode(A, c["dtype"])
        body["grad"], Gx = encode(G, c["dtype"])
        body["rel"], Rx = encode(R, c["dtype"])
        Ax, Gx, Rx = Ax.reshape(A.shape), Gx.reshape(G.shape), Rx.reshape(R.shape)
        pub.send_multipart([f"attn/{c['model']}".encode(), msgpack.packb(body)])
        want = expected(Ax, Gx, Rx, cls, c["o"])
        for t in range(T):
            topic, raw = sub.recv_multipart()
            msg = msgpack.unpackb(raw)
            assert topic == f"xpl/{c['model']}".encode() and msg["target"] == t, (topic, msg)
            for m in ALL if t == 0 else GRAD:
                w = np.asarray(want[m][t if m in GRAD else 0], np.float64)
                got = np.asarray(msg["attr"][m], np.float64)
                assert got.shape == w.shape, (c, m, got.shape, w.shape)
                units, rel = rel_err(got, w)
                values += got.size
                k = int(np.argmax(units))
                where = (f"{c['model']} L={L} H={H} n={n} cls={cls} {c['dtype']} T={T} t={t} "
                         f"{c['o']} [{k}] got {got[k]!r} want {w[k]!r}")
                if m not in worst or rel[k] > worst[m][0]:
                    worst[m] = (float(rel[k]), float(units[k]), where)
                if units[k] > 1:
                    bad.append(f"{m}: {where} rel {rel[k]:.3g}")
    assert d.stats()["counters"]["rejected"] == 0
    d.stop()
    return values
