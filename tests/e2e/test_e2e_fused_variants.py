"""End to end: the fused form meets the variants.

Several targets per trade in the fused form (fgrad, fgrad_signed and
head_importance one block per target, laid out like grad) explained with
a model's own [model.NAME] options (discard ratio, start layer, colsum,
grad_rollout_signed) give the same xpl/ messages, one per trade and
target, and the same global state per class as the full tensors sent to
a second model with the same options (1e-6 relative, f32).

What the fused form cannot carry is refused by name and counted, the
daemon going on: lrp_rollout asked for with a gradient (needs_heads),
grad_rollout_signed asked for without fgrad_signed (fused_form), rel in a
fused message (fused_form), max head fusion in the model's own section
(needs_heads). A model whose own section drops those methods
is explained from the same messages, and a fused message without a
gradient is explained for an lrp_rollout model as the full form would be.
"""
import os
import sys
import time

import msgpack
import numpy as np
import pytest

from xpltest import SOURCE, assert_close, join, random_attention, ref, wait_until

sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
import xplain                       # noqa: E402
from xplain.fuse import fuse, fuse_targets  # noqa: E402

L, H, n = 3, 4, 6
TOKENS = ["CLS"] + ["f%d" % j for j in range(n - 1)]
CLASSES = [4, 1, 9]
VARIANTS = "rollout,grad_rollout,first_layer,attn_mean,diag,flow,colsum,grad_rollout_signed"


def trades(seed, count, T):
    rng = np.random.default_rng(seed)
    A = random_attention(rng, (count, L, H, n, n), temp=2.0).astype(np.float32)
    G = rng.standard_normal((count, T, L, H, n, n)).astype(np.float32)
    return A, G


def collect(sub, models, keys, timeout=30.0):
    """xpl/ messages of `models`, by (id, target), until every key came."""
    got = {m: {} for m in models}
    deadline = time.monotonic() + timeout
    while any(len(got[m]) < len(keys) for m in models):
        left = deadline - time.monotonic()
        if left <= 0 or not sub.poll(int(left * 1000)):
            raise AssertionError("timed out waiting for explanations: have %s of %d" % (
                {m: len(v) for m, v in got.items()}, len(keys)))
        _, body = sub.recv_multipart()
        m = msgpack.unpackb(body)
        if m["model"] in got:
            got[m["model"]][(m["id"], m.get("target"))] = m
    return got


def signed_ref(X, G):
    """grad_rollout_signed of the model options below, in float64."""
    X = np.asarray(X, np.float64)
    G = np.broadcast_to(np.asarray(G, np.float64), X.shape)
    return ref.readout(ref.grad_rollout_matrix(X, G, True, -2, clamp=False), 0)


def write_config(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_fused_targets_equal_full_with_model_options(daemon, tmp_dir):
    opts = ("methods = %s\ndiscard = 0.4\nstart_layer = -2\ngrad_resnorm = true\n" % VARIANTS)
    cfg = os.path.join(tmp_dir, "xplaind.conf")
    # The global options would refuse fused gradients (lrp_rollout): the
    # models' own sections are what apply.
    write_config(cfg, "[explain]\nmethods = rollout,grad_rollout,lrp_rollout\n\n"
                      "[model.tfull]\n" + opts + "\n[model.tfused]\n" + opts)
    d = daemon("--config", cfg, "--flow-every", "1")
    try:
        sub = d.subscriber(b"xpl/t")
        full = xplain.Publisher("tfull", connect=d.ingest, tokens=TOKENS, cls=0)
        fused = xplain.Publisher("tfused", connect=d.ingest, tokens=TOKENS, cls=0, fused=True,
                                 fused_signed=True)
        for p in (full, fused):
            assert p.wait_subscriber(10), "the daemon never subscribed"
        join(d, d.publisher(), sub)     # the test's SUB reaches the daemon before any trade
        T = len(CLASSES)
        A, G = trades(5, 7, T)
        ids = list(range(7))
        k = 0
        for size in (1, 4, 2):
            sl = slice(k, k + size)
            full.send(A[sl], grad=G[sl], ids=ids[sl], targets=CLASSES)
            # With fgrad_signed (grad_rollout_signed is asked for): fused
            # by the caller, or by the publisher (fused_signed=True).
            if size == 4:
                fused.send(A[sl], grad=G[sl], ids=ids[sl], targets=CLASSES)
            else:
                fused.send(fuse_targets(A[sl], G[sl], signed=True), ids=ids[sl], targets=CLASSES)
            k += size
        # What the fused model was sent as S, slice by slice as sent.
        S = np.concatenate([fuse_targets(A[a:b], G[a:b], signed=True).fgrad_signed
                            for a, b in ((0, 1), (1, 5), (5, 7))]).astype(np.float64)
        keys = [(i, c) for i in ids for c in CLASSES]
        got = collect(sub, ("tfull", "tfused"), keys)
        for key in keys:
            want, have = got["tfull"][key], got["tfused"][key]
            assert set(want["attr"]) == set(VARIANTS.split(",")), want["attr"].keys()
            assert set(have["attr"]) == set(want["attr"]), (key, have["attr"].keys())
            for m in want["attr"]:
                if m != "grad_rollout_signed":
                    assert_close(have["attr"][m], want["attr"][m], 1e-6, what="trade %s %s" % (key, m))
            # grad_rollout_signed's layers cancel: the fused form's S (the
            # head mean rounded to float32 by the publisher) is not the
            # full form's (kept in double); each matches the float64
            # reference on what it was given.
            i, t = key[0], CLASSES.index(key[1])
            assert_close(want["attr"]["grad_rollout_signed"], signed_ref(A[i], G[i, t]), 1e-5,
                         what="trade %s full grad_rollout_signed" % (key,))
            assert_close(have["attr"]["grad_rollout_signed"], signed_ref(S[i, t][:, None], 1.0), 1e-5,
                         what="trade %s fused grad_rollout_signed" % (key,))
        gf, gz = d.query("global", model="tfull"), d.query("global", model="tfused")
        assert gf["ok"] and gz["ok"] and gf["count"] == gz["count"] == 7, (gf, gz)
        tf = {c["target"]: c for c in gf["targets"]}
        tz = {c["target"]: c for c in gz["targets"]}
        assert sorted(tf) == sorted(tz) == sorted(CLASSES)
        for c in CLASSES:
            for m, sf in tf[c]["methods"].items():
                assert tz[c]["methods"][m]["count"] == sf["count"], (c, m)
                if sf["count"] and m == "grad_rollout_signed":
                    t = CLASSES.index(c)
                    assert_close(sf["mean"], np.mean([signed_ref(A[i], G[i, t]) for i in ids], 0),
                                 1e-5, what="class %d full %s mean" % (c, m))
                    assert_close(tz[c]["methods"][m]["mean"],
                                 np.mean([signed_ref(S[i, t][:, None], 1.0) for i in ids], 0),
                                 1e-5, what="class %d fused %s mean" % (c, m))
                elif sf["count"]:
                    assert_close(tz[c]["methods"][m]["mean"], sf["mean"], 1e-6,
                                 what="class %d %s mean" % (c, m))
        st = d.stats()
        assert st["counters"]["rejected"] == 0, st["rejected"]
        for p in (full, fused):
            p.close()
    finally:
        d.stop()


def test_what_the_fused_form_cannot_carry_is_refused(daemon, tmp_dir):
    cfg = os.path.join(tmp_dir, "xplaind.conf")
    write_config(cfg, "[explain]\nmethods = rollout,grad_rollout,lrp_rollout\n\n"
                      "[model.rsigned]\nmethods = rollout,grad_rollout,grad_rollout_signed\n\n"
                      "[model.rok]\nmethods = rollout,grad_rollout\n\n"
                      "[model.rmax]\nmethods = rollout,grad_rollout\nfusion = max\n")
    d = daemon("--config", cfg)
    try:
        pubs = {m: xplain.Publisher(m, connect=d.ingest, tokens=TOKENS, cls=0, fused=True)
                for m in ("rlrp", "rsigned", "rok", "rrel", "rnograd", "rmax")}
        for p in pubs.values():
            assert p.wait_subscriber(10), "the daemon never subscribed"
        A, G = trades(6, 2, 1)
        G = G[:, 0]
        pubs["rlrp"].send(A, grad=G)                # lrp_rollout: needs_heads
        pubs["rsigned"].send(A, grad=G)             # no fgrad_signed: fused_form
        # With it: explained (from a new publisher, which sends the schema
        # again: the refused message carried it).
        signed = xplain.Publisher("rsigned", connect=d.ingest, tokens=TOKENS, cls=0, fused=True)
        assert signed.wait_subscriber(10), "the daemon never subscribed"
        signed.send(fuse(A, G, signed=True))
        pubs["rok"].send(A, grad=G)                 # its section drops lrp_rollout
        pubs["rnograd"].send(A)                     # no gradient: no lrp_rollout either way
        pubs["rmax"].send(A)                        # its own fusion is max: needs_heads
        # rel beside the fused tensors (a Publisher refuses it, so as an
        # extra key): fused_form.
        pubs["rrel"].send(fuse(A, G), extra={"rel": np.zeros(A.shape, "<f4").tobytes()})
        with pytest.raises(ValueError, match="rel has no fused form"):
            pubs["rrel"].send(A, grad=G, rel=G)

        def state():
            models = {m["model"]: m for m in d.query("models")["models"]}
            ex = {m: models.get(m, {}).get("explained", 0) for m in pubs}
            return d.stats()["rejected"], ex
        rej, ex = wait_until(
            lambda: (lambda s: s if s[0].get("needs_heads", 0) + s[0].get("fused_form", 0) >= 4
                     and sum(s[1].values()) >= 6 else None)(state()),
            what="4 fused messages refused and 6 trades explained")
        assert rej["needs_heads"] == 2 and rej["fused_form"] == 2, rej
        assert sum(rej.values()) == 4, rej
        assert ex == {"rlrp": 0, "rsigned": 2, "rok": 2, "rrel": 0, "rnograd": 2, "rmax": 0}, ex
        log = d.stderr()
        for what in ("lrp_rollout is asked for", "fgrad without fgrad_signed", "max or min",
                     "the relevance has no fused form"):
            assert what in log, what
        for p in list(pubs.values()) + [signed]:
            p.close()
    finally:
        d.stop()
