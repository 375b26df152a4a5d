"""End to end: the fused ingest form through a real xplaind.

The same trades go to two models of one daemon, one through a Python
Publisher sending every head and one through a fused Publisher
(fused=True: per layer the head means, proto/ingest.md "The fused form");
a C publisher (libxplain) sends them fused to a third model. For every
trade the published vectors of every method (flow included) are equal
(1e-6 relative, f32), so are the trade query's matrices, the global state
(count, mean, std, decayed mean, per target class) and the head
statistics (confidence 1e-6 relative; importance to 1e-6 of sum |A G|,
the accuracy of the daemon's own float sums). A daemon whose head fusion
is max refuses fused messages under the reason needs_heads, counted in
stats, and still explains the full ones.
"""
import os
import subprocess
import sys
import time

import msgpack
import numpy as np

from xpltest import BUILD, SOURCE, assert_close, join, random_attention, wait_until

sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
import xplain                       # noqa: E402

ALL = "rollout,grad_rollout,first_layer,attn_mean,diag,flow"
L, H, n = 3, 4, 7
TOKENS = ["f%d" % j for j in range(n - 1)] + ["CLS"]


def trades(seed, count):
    rng = np.random.default_rng(seed)
    A = random_attention(rng, (count, L, H, n, n), temp=2.0).astype(np.float32)
    G = rng.standard_normal(A.shape).astype(np.float32)
    return A, G


def collect(sub, models, ids, timeout=30.0):
    """xpl/ messages of `models` until every id arrived for each."""
    got = {m: {} for m in models}
    deadline = time.monotonic() + timeout
    while any(len(got[m]) < len(ids) for m in models):
        left = deadline - time.monotonic()
        if left <= 0 or not sub.poll(int(left * 1000)):
            raise AssertionError("timed out waiting for explanations: have %s of %d" % (
                {m: len(v) for m, v in got.items()}, len(ids)))
        _, body = sub.recv_multipart()
        m = msgpack.unpackb(body)
        if m["model"] in got:
            got[m["model"]][m["id"]] = m
    return got


def c_publisher(d, model, A, G, targets):
    """Send the trades fused through libxplain (tests/fused_pub, built from
    tests/fused_pub.c): one message of all of them."""
    exe = os.path.join(BUILD, "tests", "unit", "fused_pub")
    path = os.path.join(d.dir, "trades.bin")
    with open(path, "wb") as f:
        f.write(np.asarray(A, "<f4").tobytes() + np.asarray(G, "<f4").tobytes())
    r = subprocess.run([exe, d.ingest, model, str(len(A)), str(L), str(H), str(n), path,
                        ",".join(str(int(t)) for t in targets)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def test_fused_equals_full(daemon):
    d = daemon("--methods", ALL, "--flow-every", "1", "--glob-interval-ms", "50",
               "--half-life", "8")
    try:
        sub = d.subscriber(b"xpl/e")
        heads_sub = d.subscriber(b"heads/e")
        full = xplain.Publisher("efull", connect=d.ingest, tokens=TOKENS, cls=n - 1)
        fused = xplain.Publisher("efused", connect=d.ingest, tokens=TOKENS, cls=n - 1, fused=True)
        for p in (full, fused):
            assert p.wait_subscriber(10), "the daemon never subscribed"
        join(d, d.publisher(), sub)     # the test's SUB reaches the daemon before any trade
        A, G = trades(1, 24)
        targets = np.arange(24) % 2
        ids = list(range(24))
        k = 0
        for size in (1, 3, 2, 5, 1, 4, 8):      # batches of several sizes
            sl = slice(k, k + size)
            for p in (full, fused):
                p.send(A[sl], grad=G[sl], ids=ids[sl], target=targets[sl], y=0.5)
            k += size
        assert k == 24
        c_publisher(d, "ecfused", A, G, targets)
        got = collect(sub, ("efull", "efused", "ecfused"), ids)
        for i in ids:
            want = got["efull"][i]["attr"]
            assert set(want) == set(ALL.split(",")), want.keys()
            for model in ("efused", "ecfused"):
                have = got[model][i]["attr"]
                assert set(have) == set(want), (model, have.keys())
                for m in want:
                    assert_close(have[m], want[m], 1e-6, what="%s trade %d %s" % (model, i, m))
        # The trade query: the cached matrices.
        for i in (0, 7, 23):
            tf = d.query("trade", model="efull", id=i)
            tz = d.query("trade", model="efused", id=i)
            assert tf["ok"] and tz["ok"], (tf, tz)
            for m in tf["matrices"]:
                assert_close(np.frombuffer(tz["matrices"][m], "<f4"),
                             np.frombuffer(tf["matrices"][m], "<f4"), 1e-6, what="matrix %s" % m)
        # Global state, and the head statistics (heads/, published with it).
        gf = d.query("global", model="efull")
        heads = {}
        for model in ("efused", "ecfused"):
            gz = d.query("global", model=model)
            assert gf["ok"] and gz["ok"]
            compare_state(gz, gf)

        def all_heads():
            while heads_sub.poll(50):
                _, body = heads_sub.recv_multipart()
                h = msgpack.unpackb(body)
                heads[h["model"]] = h
            return all(heads.get(m, {}).get("confidence_count") == 24
                       for m in ("efull", "efused", "ecfused"))
        wait_until(all_heads, timeout=20, what="heads/ of the three models after 24 trades each")
        for model in ("efused", "ecfused"):
            compare_heads(heads[model], heads["efull"], A, G)
        st = d.stats()
        assert st["counters"]["rejected"] == 0, st["rejected"]
        for p in (full, fused):
            p.close()
    finally:
        d.stop()


def compare_state(gz, gf):
    assert gz["count"] == gf["count"] == 24, (gz["count"], gf["count"])
    for m, sf in gf["methods"].items():
        sz = gz["methods"][m]
        assert sz["count"] == sf["count"], m
        for key in ("mean", "std", "decayed"):
            assert_close(sz[key], sf[key], 1e-6, what="global %s %s" % (m, key))
    assert len(gz["targets"]) == len(gf["targets"]) == 2
    for tz, tf in zip(gz["targets"], gf["targets"]):
        assert tz["target"] == tf["target"]
        for m, sf in tf["methods"].items():
            assert_close(tz["methods"][m]["mean"], sf["mean"], 1e-6, what="target %s %s" % (tf["target"], m))


def compare_heads(hz, hf, A, G):
    assert hz["importance_count"] == hf["importance_count"] == 24
    assert hz["confidence_count"] == hf["confidence_count"] == 24
    assert_close(hz["confidence"], hf["confidence"], 1e-6, what="head confidence")
    scale = np.abs(A.astype(np.float64) * G).sum(axis=(-1, -2)).mean(axis=0)    # [L][H]
    diff = np.abs(np.asarray(hz["importance"]) - np.asarray(hf["importance"]))
    assert (diff <= 1e-6 * scale).all(), "head importance differs by %s (scale %s)" % (diff.max(), scale.max())


def test_needs_heads_refused(daemon):
    d = daemon("--methods", ALL, "--fusion", "max")
    try:
        full = xplain.Publisher("hfull", connect=d.ingest, tokens=TOKENS, cls=n - 1)
        fused = xplain.Publisher("hfused", connect=d.ingest, tokens=TOKENS, cls=n - 1, fused=True)
        for p in (full, fused):
            assert p.wait_subscriber(10), "the daemon never subscribed"
        A, G = trades(2, 3)

        def counts():
            models = {m["model"]: m for m in d.query("models")["models"]}
            return d.stats()["rejected"], models
        for _ in range(3):
            full.send(A, grad=G)
            fused.send(A, grad=G)
        rej, models = wait_until(
            lambda: (lambda s: s if s[0].get("needs_heads", 0) >= 3
                     and s[1].get("hfull", {}).get("explained", 0) >= 9 else None)(counts()),
            what="3 fused messages refused as needs_heads and 9 full trades explained")
        assert rej["needs_heads"] == 3, rej
        assert sum(rej.values()) == 3, rej
        assert models["hfull"]["explained"] == 9
        assert models.get("hfused", {}).get("explained", 0) == 0
        assert "needs_heads" in d.stderr()
        for p in (full, fused):
            p.close()
    finally:
        d.stop()


def test_live_model_fused_on_the_device(daemon):
    """explain_forward with a fused publisher: the capture fuses on the
    model's device, and the daemon's explanations equal those of the same
    batches captured and sent in full."""
    import torch
    from xplain.live import explain_forward
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.head = enc, torch.nn.Linear(16, 2)

        def forward(self, x):
            return self.head(self.enc(x)[:, -1])
    model = Model().eval()
    xs = [torch.randn(b, 5, 16) for b in (1, 3, 2)]
    toks = ["a", "b", "c", "d", "CLS"]
    d = daemon("--methods", ALL, "--flow-every", "1")
    try:
        sub = d.subscriber(b"xpl/l")
        got = {}
        for model_name, fused in (("lfull", False), ("lfused", True)):
            pub = xplain.Publisher(model_name, connect=d.ingest, tokens=toks, cls=4, fused=fused)
            assert pub.wait_subscriber(10), "the daemon never subscribed"
            k = [0]

            def ids(x):
                k[0] += x.shape[0]
                return list(range(k[0] - x.shape[0], k[0]))
            live = explain_forward(model, pub, ids=ids)
            with torch.no_grad():
                for x in xs:
                    model(x)
            assert live.close(20.0), "the live sender did not finish"
            assert live.counts["sent"] == 3 and live.counts["failed"] == 0, (live.counts, live.last_error)
            pub.close()
        got = collect(sub, ("lfull", "lfused"), list(range(6)))
        for i in range(6):
            want = got["lfull"][i]["attr"]
            for m in want:
                assert_close(got["lfused"][i]["attr"][m], want[m], 1e-6, what="live trade %d %s" % (i, m))
    finally:
        d.stop()
