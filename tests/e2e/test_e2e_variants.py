"""End to end: the variants of MATH.md through a real xplaind, fed by a
plain pyzmq + msgpack publisher (no project code): colsum,
grad_rollout_signed and lrp_rollout (with the relevance tensor `rel`
beside `grad`), the discard ratio and the start layer, set per model in
[model.NAME] sections of a configuration file and reloaded on SIGHUP,
and several targets per trade ("targets", one xpl/ message per target).
Every published number is compared with the float64 reference
(tests/ref.py) to 1e-5 relative, on random shapes, every CLS position
(none, first, last, inside) and every dtype. Hostile values of the new
field and options are rejected under their named reason and counted.
"""
import os
import signal
import time

import msgpack
import numpy as np

from xpltest import assert_close, encode, join, random_attention, ref, wait_until

ALL = ["rollout", "grad_rollout", "first_layer", "attn_mean", "diag", "colsum",
       "grad_rollout_signed", "lrp_rollout"]
FUSIONS = ["mean", "max", "min"]
DTYPES = ["f32", "f16", "bf16"]


def send(pub, model, seq, ids, A, G, R, dtype, cls):
    B, L, H, n, _ = A.shape
    body = {"v": 1, "model": model, "seq": seq, "ts": time.time_ns(), "ids": ids,
            "L": L, "H": H, "n": n, "dtype": dtype, "cls": cls,
            "tokens": [f"t{j}" for j in range(n)]}
    body["attn"], Ax = encode(A, dtype)
    Gx = Rx = None
    if G is not None:
        body["grad"], Gx = encode(G, dtype)
        Gx = Gx.reshape(G.shape)
    if R is not None:
        body["rel"], Rx = encode(R, dtype)
        Rx = Rx.reshape(R.shape)
    pub.send_multipart([f"attn/{model}".encode(), msgpack.packb(body)])
    return Ax.reshape(A.shape), Gx, Rx


def recv(sub, count):
    out = []
    for _ in range(count):
        topic, body = sub.recv_multipart()
        out.append((topic.decode(), msgpack.unpackb(body)))
    return out


def expected(A, G, R, cls, o):
    """Every method the daemon must publish for one trade, from ref.py."""
    v = ref.variants(A, None if G is None else G[None], cls, None if R is None else R[None],
                     fusion=o["fusion"], rho=o["discard"], start=o["start_layer"],
                     resnorm=o["grad_resnorm"])
    plain = ref.methods(A, None, cls, fusion=o["fusion"])
    want = {"rollout": v["rollout"], "colsum": v["colsum"], "first_layer": plain["first_layer"],
            "attn_mean": plain["attn_mean"], "diag": plain["diag"]}
    for m in ("grad_rollout", "grad_rollout_signed", "lrp_rollout"):
        if m in v:
            want[m] = v[m][0]
    return want


def check(msg, A, G, R, cls, o, what):
    want = expected(A, G, R, cls, o)
    assert sorted(msg["attr"]) == sorted(want), (what, sorted(msg["attr"]), sorted(want))
    for m, w in want.items():
        got = np.asarray(msg["attr"][m], np.float64)
        # One plain criterion for every method, signed or not: 1e-5
        # relative to the value, a floor only for an exact 0.
        err = np.abs(got - w) - (1e-5 * np.abs(w) + 1e-30)
        k = int(np.argmax(err)) if err.size else 0
        assert got.shape == w.shape and (err <= 0).all(), \
            f"{what} {m}: [{k}] got {got[k]!r} want {w[k]!r}"


def random_cases(rng, count):
    """Random shapes and options; CLS none/first/last/inside and the three
    dtypes in turn, so that every combination of the two comes up."""
    cases = []
    for k in range(count):
        L, H = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        n = int(rng.integers(3, 25))
        cls = [-1, 0, n - 1, n // 2][k % 4]
        o = {"fusion": FUSIONS[k % 3], "discard": [0.0, 0.1, 0.35, 0.5, 0.9, 1.0][k % 6],
             "start_layer": int(rng.integers(-L, L)), "grad_resnorm": bool(k % 5 == 1)}
        cases.append({"model": f"v{k}", "L": L, "H": H, "n": n, "cls": cls,
                      "dtype": DTYPES[(k // 4) % 3], "B": 1 + k % 3, "o": o,
                      "grad": k % 7 != 6, "rel": k % 7 not in (5, 6)})
    return cases


def section(model, o, methods=ALL):
    return (f"[model.{model}]\nmethods = {','.join(methods)}\nfusion = {o['fusion']}\n"
            f"discard = {o['discard']!r}\nstart_layer = {o['start_layer']}\n"
            f"grad_resnorm = {'true' if o['grad_resnorm'] else 'false'}\n")


def write_config(path, sections):
    with open(path + ".tmp", "w") as f:
        f.write("[explain]\nmethods = rollout,grad_rollout,first_layer,attn_mean\n\n")
        f.write("\n".join(sections))
    os.replace(path + ".tmp", path)


def run_cases(d, pub, sub, rng, cases):
    checked = 0
    for c in cases:
        B, L, H, n = c["B"], c["L"], c["H"], c["n"]
        A = random_attention(rng, (B, L, H, n, n), temp=1 + 4 * (checked % 2))
        G = rng.standard_normal((B, L, H, n, n)) if c["grad"] else None
        R = rng.standard_normal((B, L, H, n, n)) * A if c["rel"] else None
        ids = [f"{c['model']}-{b}" for b in range(B)]
        Ax, Gx, Rx = send(pub, c["model"], 0, ids, A, G, R, c["dtype"], c["cls"])
        for b, (topic, msg) in enumerate(recv(sub, B)):
            assert topic == f"xpl/{c['model']}" and msg["id"] == ids[b], (topic, msg["id"])
            check(msg, Ax[b], None if Gx is None else Gx[b], None if Rx is None else Rx[b],
                  c["cls"], c["o"], f"{c['model']} L={L} H={H} n={n} cls={c['cls']} "
                  f"{c['dtype']} {c['o']}")
            checked += 1
        c["last"] = (ids[-1], Ax[-1], None if Gx is None else Gx[-1])
    return checked


def check_matrices(d, c):
    """The trade query's full matrices of a case's last trade, with its
    discard ratio, start layer and residual normalisation."""
    tid, A, G = c["last"]
    o = c["o"]
    rep = d.query("trade", model=c["model"], id=tid)
    assert rep["ok"], rep
    n = c["n"]
    R = np.frombuffer(rep["matrices"]["rollout"], dtype="<f4").reshape(n, n)
    assert_close(R, ref.rollout_matrix(A, o["fusion"], o["discard"], o["start_layer"], c["cls"]),
                 what=f"{c['model']} rollout matrix {o}")
    if G is not None:
        Rg = np.frombuffer(rep["matrices"]["grad_rollout"], dtype="<f4").reshape(n, n)
        assert_close(Rg, ref.grad_rollout_matrix(A, G, o["grad_resnorm"], o["start_layer"]),
                     what=f"{c['model']} grad_rollout matrix {o}")


def test_variants_match_the_reference(daemon, tmp_dir):
    rng = np.random.default_rng(int(os.environ.get("XPL_TEST_SEED", "14")))
    cases = random_cases(rng, 48)
    cfg = os.path.join(tmp_dir, "xplaind.conf")
    write_config(cfg, [section(c["model"], c["o"]) for c in cases])
    d = daemon("--config", cfg)
    pub = d.publisher()
    sub = d.subscriber(b"xpl/v")
    join(d, pub, sub)
    checked = run_cases(d, pub, sub, rng, cases)
    for c in cases:
        check_matrices(d, c)
    st = d.stats()
    assert st["counters"]["rejected"] == 0, st["rejected"]
    assert checked >= 90, checked
    print(f"checked {checked} trades of {len(cases)} random shapes and options")

    # SIGHUP: new options for the same models apply to the next trades.
    for c in cases:
        L = c["L"]
        c["o"] = {"fusion": FUSIONS[(FUSIONS.index(c["o"]["fusion"]) + 1) % 3],
                  "discard": [0.2, 0.0, 0.6][len(c["model"]) % 3],
                  "start_layer": -L if L > 1 else 0, "grad_resnorm": not c["o"]["grad_resnorm"]}
    write_config(cfg, [section(c["model"], c["o"]) for c in cases])
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: applied" in d.stderr() and "model.*" in d.stderr(),
               what="the daemon to log that it applied the new [model.NAME] sections")
    checked = run_cases(d, pub, sub, rng, cases[:12])
    assert checked >= 20
    assert d.stats()["counters"]["rejected"] == 0
    d.stop()


def test_defaults_are_the_classic_methods(daemon):
    """Without options the variants stay off: the same messages (rel
    included) give exactly the four default methods."""
    d = daemon()
    pub = d.publisher()
    sub = d.subscriber(b"xpl/plain")
    join(d, pub, sub)
    rng = np.random.default_rng(5)
    A = random_attention(rng, (1, 3, 2, 7, 7))
    G = rng.standard_normal(A.shape)
    Ax, Gx, Rx = send(pub, "plain", 0, [1], A, G, G * A, "f32", 0)
    (_, msg), = recv(sub, 1)
    assert sorted(msg["attr"]) == ["attn_mean", "first_layer", "grad_rollout", "rollout"]
    want = ref.methods(Ax[0], Gx[0], 0)
    for m in msg["attr"]:
        assert_close(msg["attr"][m], want[m], what=m)
    d.stop()


def test_hostile_rel_and_options_are_rejected_by_name(daemon, tmp_dir):
    cfg = os.path.join(tmp_dir, "xplaind.conf")
    with open(cfg, "w") as f:
        f.write(f"[explain]\nmethods = {','.join(ALL)}\n\n[model.h2]\nstart_layer = -3\n")
    d = daemon("--config", cfg)
    pub = d.publisher()
    sub = d.subscriber(b"xpl/h")
    join(d, pub, sub)
    rng = np.random.default_rng(9)
    A = random_attention(rng, (1, 3, 2, 5, 5))
    G = rng.standard_normal(A.shape)
    base = {"v": 1, "model": "h", "ts": 1, "ids": [1], "L": 3, "H": 2, "n": 5, "dtype": "f32",
            "cls": 0, "tokens": list("abcde"), "attn": encode(A, "f32")[0]}
    good_rel = encode(G * A, "f32")[0]
    nan_rel = np.array(G * A)
    nan_rel[0, 2, 1, 3, 4] = np.nan
    bad = [
        ("missing_key", {"rel": good_rel}),                                  # rel without grad
        ("size", {"grad": encode(G, "f32")[0], "rel": good_rel[:-4]}),      # one value short
        ("wrong_type", {"grad": encode(G, "f32")[0], "rel": [1.0, 2.0]}),
        ("nonfinite", {"grad": encode(G, "f32")[0], "rel": encode(nan_rel, "f32")[0]}),
    ]
    seq = 0
    for reason, extra in bad:
        before = d.stats()
        body = dict(base, seq=seq, **extra)
        seq += 1
        pub.send_multipart([b"attn/h", msgpack.packb(body)])
        after = wait_until(lambda: (lambda s: s if s["counters"]["rejected"] >
                                    before["counters"]["rejected"] else None)(d.stats()),
                           what=f"the '{reason}' rejection to be counted")
        for r, c in after["rejected"].items():
            assert c == before["rejected"][r] + (1 if r == reason else 0), (reason, r, c)
    # A valid message still goes through, rel: nil meaning no rel.
    body = dict(base, seq=seq, grad=encode(G, "f32")[0], rel=None)
    seq += 1
    pub.send_multipart([b"attn/h", msgpack.packb(body)])
    (_, msg), = recv(sub, 1)
    assert "lrp_rollout" not in msg["attr"] and "grad_rollout_signed" in msg["attr"]
    # A model with L = 2 cannot start at layer -3 (its section): 'shape'.
    before = d.stats()["rejected"]["shape"]
    A2 = random_attention(rng, (1, 2, 2, 5, 5))
    body = dict(base, model="h2", seq=0, L=2, attn=encode(A2, "f32")[0])
    pub.send_multipart([b"attn/h2", msgpack.packb(body)])
    wait_until(lambda: d.stats()["rejected"]["shape"] == before + 1,
               what="the start layer out of range to be rejected as shape")
    log = d.stop()
    for what in ("rel is given without grad", "rel has", "NaN or Inf in attn, grad or rel",
                 "explain.start_layer is outside"):
        assert what in log, (what, log[-2000:])



def test_several_targets_per_trade(daemon):
    """"targets": [c0, c1, c2] with T gradient (and relevance) blocks per
    trade: one xpl/ message per target, named by its class, every method
    in it (the gradient methods of that target, against ref.py); the
    trade counted once, each target's vectors in its class. Then T above
    max_trade_targets, targets without grad, target beside targets and a
    gradient sized for the wrong T are refused by name."""
    d = daemon("--methods", ",".join(ALL), "--max-trade-targets", "3")
    pub = d.publisher()
    sub = d.subscriber(b"xpl/mt")
    join(d, pub, sub)
    rng = np.random.default_rng(31)
    for k, (L, H, n, cls, dtype) in enumerate([(2, 3, 6, 0, "f32"), (3, 2, 5, -1, "f16"),
                                                (1, 2, 7, 6, "bf16"), (2, 1, 4, 2, "f32")]):
        model, B, T = f"mt{k}", 2, [3, 1, 2, 2][k]
        classes = [7, 3, 11][:T]
        A = random_attention(rng, (B, L, H, n, n))
        G = rng.standard_normal((B, T, L, H, n, n))
        R = rng.standard_normal((B, T, L, H, n, n)) * A[:, None]
        body = {"v": 1, "model": model, "seq": 0, "ts": 1, "ids": [f"{model}-0", f"{model}-1"],
                "L": L, "H": H, "n": n, "dtype": dtype, "cls": cls,
                "tokens": [f"t{j}" for j in range(n)], "targets": classes}
        body["attn"], Ax = encode(A, dtype)
        body["grad"], Gx = encode(G, dtype)
        body["rel"], Rx = encode(R, dtype)
        Ax, Gx, Rx = Ax.reshape(A.shape), Gx.reshape(G.shape), Rx.reshape(R.shape)
        pub.send_multipart([f"attn/{model}".encode(), msgpack.packb(body)])
        msgs = recv(sub, B * T)
        o = {"fusion": "mean", "discard": 0.0, "start_layer": 0, "grad_resnorm": False}
        for b in range(B):
            for t in range(T):
                _, msg = msgs[b * T + t]
                assert msg["id"] == body["ids"][b] and msg["target"] == classes[t], msg
                check(msg, Ax[b], Gx[b, t], Rx[b, t], cls, o, f"{model} trade {b} target {t}")
        g = d.query("global", model=model)
        assert g["ok"] and g["count"] == B, g
        got = {c["target"]: c for c in g["targets"]}
        assert sorted(got) == sorted(classes), got.keys()
        for t, c in enumerate(classes):
            m = got[c]["methods"]
            want = np.mean([expected(Ax[b], Gx[b, t], Rx[b, t], cls, o)["lrp_rollout"]
                            for b in range(B)], axis=0)
            assert m["lrp_rollout"]["count"] == B
            assert_close(m["lrp_rollout"]["mean"], want, 1e-5, what=f"{model} class {c} mean")
            # The methods without a gradient belong to the trade's first target.
            assert m["rollout"]["count"] == (B if t == 0 else 0), (t, m["rollout"])
    assert d.stats()["counters"]["rejected"] == 0
    # Hostile.
    A = random_attention(rng, (1, 1, 1, 4, 4))
    G = rng.standard_normal((1, 2, 1, 1, 4, 4))
    base = {"v": 1, "model": "mt0", "ts": 1, "ids": [1], "L": 1, "H": 1, "n": 4,
            "dtype": "f32", "attn": encode(A, "f32")[0]}
    bad = [("length", {"targets": [1, 2, 3, 4], "grad": encode(np.tile(G, (1, 2, 1, 1, 1, 1)),
                                                                "f32")[0]}),
           ("length", {"targets": [], "grad": encode(G[:, 0], "f32")[0]}),
           ("missing_key", {"targets": [1, 2]}),
           ("duplicate_key", {"targets": [1, 2], "target": [1], "grad": encode(G, "f32")[0]}),
           ("size", {"targets": [1, 2], "grad": encode(G[:, 0], "f32")[0]}),
           ("wrong_type", {"targets": [1, "x"], "grad": encode(G, "f32")[0]})]
    for seq, (reason, extra) in enumerate(bad):
        before = d.stats()
        pub.send_multipart([b"attn/mt0", msgpack.packb(dict(base, seq=100 + seq, **extra))])
        after = wait_until(lambda: (lambda s: s if s["counters"]["rejected"] >
                                    before["counters"]["rejected"] else None)(d.stats()),
                           what=f"the '{reason}' rejection to be counted")
        for r, c in after["rejected"].items():
            assert c == before["rejected"][r] + (1 if r == reason else 0), (reason, r, c)
    log = d.stop()
    for what in ("targets has 4 entries (1 to 3 allowed)", "targets is given without grad",
                 "target and targets are both given", "B*T*L*H*n*n*4"):
        assert what in log, what
