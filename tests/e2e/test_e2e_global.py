"""End to end: global attributions, head statistics and drift.

A plain pyzmq publisher streams trades; the test keeps its own float64
account of every per-trade vector the daemon published (xpl/) and checks
the daemon's global state (glob/ and the global query) against it: count,
mean, sample std, decayed mean, per target class, head statistics against
tests/ref.py, and Spearman agreement with an external reference. Then a
stream whose feature importance shifts half-way must raise a drift alert
on the first shifted window and none before.
"""
import sys
import time

import msgpack
import numpy as np

from xpltest import assert_close, join, ref

HALF_LIFE = 50.0


def profile_attention(rng, imp, L, H, n, cls, noise=0.3):
    """Attention of one trade whose CLS row (and others, weakly) follows an
    importance profile over the n-1 features."""
    logits = rng.standard_normal((L, H, n, n)) * noise
    feat = np.insert(np.asarray(imp, float), cls, 0.0)
    logits += 0.4 * feat[None, None, None, :]
    logits[:, :, cls, :] += 1.5 * feat
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Stream:
    def __init__(self, d, model, L=2, H=3, n=6):
        self.d, self.model, self.L, self.H, self.n = d, model, L, H, n
        self.cls = n - 1
        self.pub = d.publisher()
        self.sub = d.subscriber(f"xpl/{model}".encode())
        self.seq = 0
        self.tokens = [f"f{j}" for j in range(n - 1)] + ["CLS"]
        self.vectors = []       # (target, {method: float32 vector}) as published
        self.tensors = []

    def send(self, A, G, target):
        body = {"v": 1, "model": self.model, "seq": self.seq, "ts": time.time_ns(),
                "ids": [self.seq], "L": self.L, "H": self.H, "n": self.n, "dtype": "f32",
                "attn": A.astype("<f4").tobytes(), "grad": G.astype("<f4").tobytes(),
                "cls": self.cls, "tokens": self.tokens, "target": [target]}
        self.pub.send_multipart([f"attn/{self.model}".encode(), msgpack.packb(body)])
        self.seq += 1
        _, msg = self.sub.recv_multipart()
        msg = msgpack.unpackb(msg)
        self.vectors.append((target, {m: np.array(v, dtype=np.float32).astype(np.float64)
                                      for m, v in msg["attr"].items()}))
        self.tensors.append((A.astype("<f4").astype(np.float64), G.astype("<f4").astype(np.float64)))


def expected_state(vectors, method, target=None):
    xs = np.array([v[method] for t, v in vectors if target is None or t == target])
    alpha = 1 - 2 ** (-1 / HALF_LIFE)
    dec = xs[0].copy()
    for x in xs[1:]:
        dec = dec + alpha * (x - dec)
    std = xs.std(axis=0, ddof=1) if len(xs) > 1 else np.zeros(xs.shape[1])
    return len(xs), xs.mean(axis=0), std, dec


def check_state(state, vectors, target=None):
    for m, st in state["methods"].items():
        count, mean, std, dec = expected_state(vectors, m, target)
        assert st["count"] == count, (m, st["count"], count)
        assert_close(st["mean"], mean, 1e-9, what=f"{m} mean")
        assert_close(st["std"], std, 1e-7, what=f"{m} std")
        assert_close(st["decayed"], dec, 1e-9, what=f"{m} decayed")


def test_global_state(daemon):
    d = daemon("--half-life", str(int(HALF_LIFE)), "--glob-interval-ms", "50")
    st = Stream(d, "g1")
    join(d, st.pub, st.sub)
    glob = d.subscriber(b"glob/g1")
    heads = d.subscriber(b"heads/g1")
    rng = np.random.default_rng(1)
    imp = [3, 1, 0.5, 2, 0.1]
    for k in range(240):
        A = profile_attention(rng, imp, st.L, st.H, st.n, st.cls)
        G = rng.standard_normal(A.shape)
        st.send(A, G, target=k % 3)
    # Clone: the snapshot's seq, then only newer glob/ messages apply.
    g = d.query("global", model="g1")
    assert g["ok"] and g["epoch"] == 1 and g["count"] == 240, g
    assert g["features"] == st.tokens[:-1]
    check_state(g, st.vectors)
    assert sorted(t["target"] for t in g["targets"]) == [0, 1, 2]
    for t in g["targets"]:
        check_state(t, st.vectors, t["target"])
    one = d.query("global", model="g1", method="grad_rollout", target=2)
    assert list(one["methods"]) == ["grad_rollout"] and [t["target"] for t in one["targets"]] == [2]
    # The published glob/ with the snapshot's seq holds the same state.
    deadline = time.time() + 10
    while True:
        _, body = glob.recv_multipart()
        msg = msgpack.unpackb(body)
        if msg["seq"] >= g["seq"]:
            break
        assert time.time() < deadline
    assert msg["seq"] == g["seq"], (msg["seq"], g["seq"])
    assert msg["methods"] == g["methods"] and msg["count"] == 240 and msg["ts"] == g["ts"]
    # Head statistics: means over trades of the reference head statistics.
    want_imp = np.mean([ref.head_stats(A, G)[0] for A, G in st.tensors], axis=0)
    want_conf = np.mean([ref.head_stats(A, G)[1] for A, G in st.tensors], axis=0)
    hmsg = None
    while hmsg is None or hmsg["confidence_count"] < 240:
        hmsg = msgpack.unpackb(heads.recv_multipart()[1])
    assert hmsg["L"] == st.L and hmsg["H"] == st.H and hmsg["importance_count"] == 240
    assert_close(hmsg["importance"], want_imp, 1e-4, what="head importance")
    assert_close(hmsg["confidence"], want_conf, 1e-5, what="head confidence")
    # External reference: agreement is Spearman's rho with the global mean.
    perm = [0.5, 0.1, 0.3, 0.2, 0.9]
    r = d.query("reference", model="g1", method="rollout", values=perm)
    assert r["ok"], r
    mean = np.mean([v["rollout"] for _, v in st.vectors], axis=0)
    assert abs(r["spearman"] - ref.spearman(perm, mean)) < 1e-12
    g2 = d.query("global", model="g1", method="rollout")
    assert g2["methods"]["rollout"]["reference"] == perm
    assert abs(g2["methods"]["rollout"]["reference_spearman"] - r["spearman"]) < 1e-12
    assert g2["seq"] > g["seq"]
    const = d.query("reference", model="g1", method="rollout", values=[1, 1, 1, 1, 1])
    assert const["ok"] and const["spearman"] is None   # undefined, not 0
    for bad in ([1, 2], [1, 2, 3, 4, float("nan")]):
        e = d.query("reference", model="g1", method="rollout", values=bad)
        assert e["ok"] is False and e["code"] == "bad_argument", e
    e = d.query("global", model="g1", method="shap")
    assert e["ok"] is False and e["code"] == "bad_argument"
    e = d.query("global", model="g1", epoch=7)
    assert e["ok"] is False and e["code"] == "not_found"
    d.stop()


def test_drift_alert_on_shift(daemon):
    d = daemon("--drift-window", "40", "--glob-interval-ms", "50")
    W = 40
    st = Stream(d, "dr", L=2, H=2, n=7)
    join(d, st.pub, st.sub)
    drift = d.subscriber(b"drift/dr")
    rng = np.random.default_rng(2)
    before = [3.0, 2.5, 2.0, 1.5, 1.0, 0.5]
    after = before[::-1]
    windows = 8
    for k in range(windows * W):
        imp = before if k < (windows // 2) * W else after
        A = profile_attention(rng, imp, st.L, st.H, st.n, st.cls, noise=0.2)
        st.send(A, rng.standard_normal(A.shape), target=0)
    reports = {}
    while len(reports) < windows * 4:
        msg = msgpack.unpackb(drift.recv_multipart()[1])
        reports[(msg["method"], msg["window"])] = msg
    for m in ("rollout", "grad_rollout", "first_layer", "attn_mean"):
        seq = [reports[(m, w)] for w in range(windows)]
        assert seq[0]["compared"] is False and seq[0]["reference"] == "baseline"
        assert all(r["compared"] and r["reference"] == "baseline" for r in seq[1:])
        alerts = [r["alert"] for r in seq]
        if m == "grad_rollout":
            # Gradients here are noise: no claim beyond "no alert before".
            assert not any(alerts[:windows // 2]), (m, alerts)
            continue
        assert alerts == [False] * (windows // 2) + [True] * (windows // 2), (m, alerts)
        shifted = seq[windows // 2]
        assert shifted["spearman"] < 0 and shifted["js"] > 0, shifted
        # The numbers are those of the window means against the baseline.
        xs = np.array([v[m] for _, v in st.vectors])
        base = xs[:W].mean(axis=0)
        win = xs[(windows // 2) * W:(windows // 2 + 1) * W].mean(axis=0)
        assert abs(shifted["spearman"] - ref.spearman(win, base)) < 1e-9
        assert abs(shifted["ndcg"] - ref.ndcg(win, base, 10)) < 1e-9
        assert abs(shifted["js"] - ref.js(win, base)) < 1e-9
    dq = d.query("drift", model="dr", method="rollout")
    assert dq["ok"] and dq["window"] == W and dq["methods"]["rollout"]["windows"] == windows
    assert [a["window"] for a in dq["alerts"]] == list(range(windows // 2, windows))
    # Pin the current state, then reset: the next window becomes the baseline.
    p = d.query("baseline", model="dr", action="pin")
    assert p["ok"] and "rollout" in p["methods"]
    assert d.query("drift", model="dr")["methods"]["rollout"]["reference"] == "pinned"
    r = d.query("baseline", model="dr", action="reset", method="rollout")
    assert r["ok"] and r["methods"] == ["rollout"]
    assert d.query("drift", model="dr")["methods"]["rollout"]["reference"] == "none"
    bad = d.query("baseline", model="dr", action="forget")
    assert bad["ok"] is False and bad["code"] == "bad_argument"
    d.stop()
