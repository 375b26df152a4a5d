"""End to end: feature groups (MATH.md, "Feature groups") through a real
xplaind, fed by a plain pyzmq + msgpack publisher (no project code).

A schema's "groups" maps several tokens to one feature; every method's
per-trade vector is summed per feature after the readout. The published
xpl/ vectors, the trade query, the schema reply and the global means are
checked against the float64 reference (tests/ref.py) on random shapes,
every CLS position (none, first, last, inside), every dtype, with and
without several targets, the groups sent as a map and as [name, tokens]
pairs. Then: the groups are part of the schema (a change starts an epoch,
a message without "groups" keeps them), a snapshot keeps them, and each
hostile form is rejected under its own reason, counted and logged.
"""
import os
import time

import msgpack
import numpy as np

from xpltest import assert_close, encode, join, random_attention, ref, wait_until

ALL = ["rollout", "grad_rollout", "first_layer", "attn_mean", "diag", "colsum",
       "grad_rollout_signed", "lrp_rollout"]
DTYPES = ["f32", "f16", "bf16"]


def features_of(tokens, cls, groups):
    """Feature names and the feature of each readout position, written
    from MATH.md: a group is one feature standing where its lowest token
    stands, under the group's name; other tokens (CLS excepted) are their
    own features."""
    group_of = {t: g for g, (_, toks) in enumerate(groups) for t in toks}
    names, feat_of, gfeat = [], [], {}
    for j, t in enumerate(tokens):
        if j == cls:
            continue
        g = group_of.get(t)
        if g is None:
            names.append(t)
            feat_of.append(len(names) - 1)
        else:
            if g not in gfeat:
                gfeat[g] = len(names)
                names.append(groups[g][0])
            feat_of.append(gfeat[g])
    return names, feat_of


def random_groups(rng, tokens, cls):
    """A random partition of some non-CLS tokens into groups (in random
    order, tokens shuffled), the rest left alone."""
    cand = [t for j, t in enumerate(tokens) if j != cls]
    rng.shuffle(cand)
    groups, k = [], 0
    while k < len(cand) - 1 and len(groups) < 4:
        size = int(rng.integers(1, min(4, len(cand) - k) + 1))
        groups.append((f"grp{len(groups)}_{size}", [str(t) for t in cand[k:k + size]]))
        k += size + int(rng.integers(0, 2))
    return groups


def wire_groups(groups, as_map):
    return {name: toks for name, toks in groups} if as_map else [[n, t] for n, t in groups]


def per_token(A, G, R, cls):
    """Every method for one trade (target t of G and R), per readout
    position, with each value's tolerance: 1e-5 relative, and for the
    signed method relative to its magnitude scale (as the core's test)."""
    v = ref.variants(A, None if G is None else G[None], cls, None if R is None else R[None])
    plain = ref.methods(A, None, cls)
    want = {"rollout": v["rollout"], "colsum": v["colsum"], "first_layer": plain["first_layer"],
            "attn_mean": plain["attn_mean"], "diag": plain["diag"]}
    for m in ("grad_rollout", "grad_rollout_signed", "lrp_rollout"):
        if m in v:
            want[m] = v[m][0]
    tol = {}
    for m, w in want.items():
        tol[m] = 1e-5 * np.abs(w) + 1e-12
        if m == "grad_rollout_signed":
            tol[m] += 1e-5 * ref.magnitude_scale(A, G, cls, False, 0, False)
    return want, tol


def check_features(attr, want, tol, feat_of, nf, what):
    """Per feature: the sum of the reference's values of its tokens, within
    the sum of their tolerances (plus the float32 rounding of the sum)."""
    assert sorted(attr) == sorted(want), (what, sorted(attr), sorted(want))
    for m, w in want.items():
        got = np.asarray(attr[m], np.float64)
        W = ref.groups(w, feat_of, nf)
        T = ref.groups(tol[m], feat_of, nf) + 1e-6 * np.abs(W) + 1e-12
        assert got.shape == W.shape, (what, m, got.shape, W.shape)
        k = int(np.argmax(np.abs(got - W) - T))
        assert (np.abs(got - W) <= T).all(), \
            f"{what} {m}: feature {k} got {got[k]!r} want {W[k]!r} (tol {T[k]:.3g})"


def recv(sub, count):
    out = []
    for _ in range(count):
        if not sub.poll(10000):
            raise AssertionError(f"timed out waiting for {count} xpl/ messages ({len(out)} came)")
        topic, body = sub.recv_multipart()
        out.append((topic.decode(), msgpack.unpackb(body)))
    return out


def random_cases(rng, count):
    cases = []
    for k in range(count):
        L, H, n = int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(3, 20))
        cls = [-1, 0, n - 1, n // 2][k % 4]
        tokens = [f"c{j}x{int(rng.integers(0, 99))}" for j in range(n)]
        cases.append({"model": f"g{k}", "L": L, "H": H, "n": n, "cls": cls, "tokens": tokens,
                      "dtype": DTYPES[(k // 4) % 3], "B": 1 + k % 3, "T": [0, 0, 2][k % 3],
                      "groups": random_groups(rng, tokens, cls), "as_map": k % 2 == 0})
    return cases


def send_case(pub, c, rng, seq=0, with_groups=True):
    B, L, H, n, T = c["B"], c["L"], c["H"], c["n"], c["T"]
    A = random_attention(rng, (B, L, H, n, n), temp=1 + 3 * (seq % 2))
    gshape = (B, T, L, H, n, n) if T else (B, L, H, n, n)
    G = rng.standard_normal(gshape)
    R = rng.standard_normal(gshape) * (A[:, None] if T else A)
    ids = [f"{c['model']}-{seq}-{b}" for b in range(B)]
    body = {"v": 1, "model": c["model"], "seq": seq, "ts": time.time_ns(), "ids": ids,
            "L": L, "H": H, "n": n, "dtype": c["dtype"], "cls": c["cls"], "tokens": c["tokens"]}
    if with_groups:
        body["groups"] = wire_groups(c["groups"], c["as_map"])
    if T:
        body["targets"] = [5, 9][:T]
    body["attn"], Ax = encode(A, c["dtype"])
    body["grad"], Gx = encode(G, c["dtype"])
    body["rel"], Rx = encode(R, c["dtype"])
    pub.send_multipart([f"attn/{c['model']}".encode(), msgpack.packb(body)])
    return ids, Ax.reshape(A.shape), Gx.reshape(G.shape), Rx.reshape(R.shape)


def run_case(pub, sub, c, rng, seq=0, with_groups=True):
    """Send one message of a case and check its xpl/ messages; returns
    the per-feature vectors of each trade's first target."""
    ids, Ax, Gx, Rx = send_case(pub, c, rng, seq, with_groups)
    names, feat_of = features_of(c["tokens"], c["cls"], c["groups"])
    nf, T = len(names), max(1, c["T"])
    trades = []
    msgs = recv(sub, c["B"] * T)
    for b in range(c["B"]):
        for t in range(T):
            topic, msg = msgs[b * T + t]
            assert topic == f"xpl/{c['model']}" and msg["id"] == ids[b], (topic, msg["id"])
            G = Gx[b, t] if c["T"] else Gx[b]
            R = Rx[b, t] if c["T"] else Rx[b]
            want, tol = per_token(Ax[b], G, R, c["cls"])
            what = (f"{c['model']} L={c['L']} H={c['H']} n={c['n']} cls={c['cls']} {c['dtype']} "
                    f"T={c['T']} trade {b} target {t} groups {c['groups']}")
            check_features(msg["attr"], want, tol, feat_of, nf, what)
            if t == 0:
                trades.append({m: ref.groups(w, feat_of, nf) for m, w in want.items()})
                trades[-1]["tol"] = {m: ref.groups(tol[m], feat_of, nf) for m in want}
                trades[-1]["A"] = Ax[b]
    return ids, trades


def test_groups_match_the_reference(daemon):
    rng = np.random.default_rng(int(os.environ.get("XPL_TEST_SEED", "1414")))
    d = daemon("--methods", ",".join(ALL))
    pub = d.publisher()
    sub = d.subscriber(b"xpl/g")
    join(d, pub, sub)
    cases = random_cases(rng, 36)
    checked = 0
    for c in cases:
        ids, trades = run_case(pub, sub, c, rng)
        checked += c["B"] * max(1, c["T"])
        names, feat_of = features_of(c["tokens"], c["cls"], c["groups"])
        # the schema reply names the features and each group's tokens
        s = d.query("schema", model=c["model"])
        assert s["ok"] and s["features"] == names, (s, names)
        gmembers = {name: sorted(toks, key=c["tokens"].index) for name, toks in c["groups"]}
        if c["groups"]:
            assert s["groups"] == {g: gmembers[g] for g in names if g in gmembers}, s["groups"]
        else:
            assert "groups" not in s, s
        # the trade query: per feature as well
        rep = d.query("trade", model=c["model"], id=ids[-1])
        assert rep["ok"] and rep["features"] == names, rep
        last = trades[-1]
        for m in rep["attr"]:
            got, w = np.asarray(rep["attr"][m], np.float64), last[m]
            T = last["tol"][m] + 1e-6 * np.abs(w) + 1e-12
            assert (np.abs(got - w) <= T).all(), (c["model"], "trade query", m, got, w, T)
        # the global means are over features
        g = d.query("global", model=c["model"])
        assert g["ok"] and g["count"] == c["B"], g
        for m in ("rollout", "colsum", "attn_mean"):
            want = np.mean([t[m] for t in trades], axis=0)
            assert_close(g["methods"][m]["mean"], want, 2e-5, what=f"{c['model']} global {m}")
    st = d.stats()
    assert st["counters"]["rejected"] == 0, st["rejected"]
    assert checked >= 60, checked
    print(f"checked {checked} explanations of {len(cases)} random grouped schemas")
    d.stop()


def test_groups_are_part_of_the_schema(daemon):
    """A message without "groups" keeps them while its tokens are the
    same; other groups, or none ("groups": {}), start an epoch; new tokens
    without "groups" have none."""
    rng = np.random.default_rng(77)
    d = daemon("--methods", ",".join(ALL))
    pub = d.publisher()
    sub = d.subscriber(b"xpl/ep")
    join(d, pub, sub)
    n = 6
    c = {"model": "ep", "L": 2, "H": 2, "n": n, "cls": 0, "tokens": list("abcdef"), "dtype": "f32",
         "B": 1, "T": 0, "groups": [("de", ["e", "d"])], "as_map": True}

    def epoch():
        return d.query("schema", model="ep")["epoch"]

    run_case(pub, sub, c, rng, seq=0)
    assert epoch() == 1
    run_case(pub, sub, c, rng, seq=1, with_groups=False)        # kept
    assert epoch() == 1
    assert d.query("schema", model="ep")["features"] == ["b", "c", "de", "f"]
    c["groups"] = [("bf", ["b", "f"])]
    run_case(pub, sub, c, rng, seq=2)
    assert epoch() == 2
    assert d.query("schema", model="ep")["features"] == ["bf", "c", "d", "e"]
    c["groups"] = []
    run_case(pub, sub, c, rng, seq=3)                           # "groups": {} clears them
    assert epoch() == 3 and "groups" not in d.query("schema", model="ep")
    c["groups"] = [("ab", ["b", "c"])]
    run_case(pub, sub, c, rng, seq=4)
    c["tokens"], c["groups"] = list("uvwxyz"), []
    run_case(pub, sub, c, rng, seq=5, with_groups=False)        # new tokens: no groups
    s = d.query("schema", model="ep")
    assert s["epoch"] == 5 and s["features"] == list("vwxyz") and "groups" not in s, s
    d.stop()


def test_groups_survive_a_snapshot(daemon, tmp_dir):
    rng = np.random.default_rng(3)
    state = os.path.join(tmp_dir, "state")
    os.mkdir(state)
    d = daemon("--methods", ",".join(ALL), "--state-dir", state)
    pub = d.publisher()
    sub = d.subscriber(b"xpl/snap")
    join(d, pub, sub)
    c = {"model": "snap", "L": 2, "H": 2, "n": 8, "cls": 3, "tokens": [f"k{j}" for j in range(8)],
         "dtype": "f16", "B": 3, "T": 0, "groups": [("a", ["k7", "k0"]), ("b", ["k2", "k4", "k5"])],
         "as_map": False}
    _, trades = run_case(pub, sub, c, rng)
    names = ["a", "k1", "b", "k6"]
    before = d.query("global", model="snap")
    d.stop()
    d2 = daemon("--methods", ",".join(ALL), "--state-dir", state)
    s = d2.query("schema", model="snap")
    assert s["ok"] and s["features"] == names, s
    assert s["groups"] == {"a": ["k0", "k7"], "b": ["k2", "k4", "k5"]}, s["groups"]
    after = d2.query("global", model="snap")
    assert after["count"] == 3
    for m in ("rollout", "grad_rollout", "colsum"):
        assert after["methods"][m]["mean"] == before["methods"][m]["mean"], m
        want = np.mean([t[m] for t in trades], axis=0)
        T = np.mean([t["tol"][m] for t in trades], axis=0) + 1e-6 * np.abs(want) + 1e-12
        assert (np.abs(np.asarray(after["methods"][m]["mean"]) - want) <= T).all(), m
    # the restored schema goes on: a message without groups keeps them
    pub2 = d2.publisher()
    sub2 = d2.subscriber(b"xpl/snap")
    join(d2, pub2, sub2)
    run_case(pub2, sub2, c, rng, seq=1, with_groups=False)
    assert d2.query("schema", model="snap")["epoch"] == s["epoch"]
    assert d2.query("global", model="snap")["count"] == 3 + c["B"]
    d2.stop()


def test_hostile_groups_are_rejected_by_name(daemon):
    d = daemon("--max-groups", "3", "--methods", ",".join(ALL))
    pub = d.publisher()
    join(d, pub)
    rng = np.random.default_rng(11)
    A = random_attention(rng, (1, 2, 2, 5, 5))
    base = {"v": 1, "model": "hg", "ts": 1, "ids": [1], "L": 2, "H": 2, "n": 5, "dtype": "f32",
            "cls": 0, "tokens": list("abcde"), "attn": encode(A, "f32")[0]}
    bad = [
        ("group_unknown_token", {"groups": {"g": ["b", "zz"]}}),
        ("group_token_twice", {"groups": {"g": ["b", "c"], "h": ["c", "d"]}}),
        ("group_token_twice", {"groups": [["g", ["b", "b"]]]}),
        ("group_cls_token", {"groups": {"g": ["a", "b"]}}),
        ("group_empty", {"groups": {"g": []}}),
        ("group_duplicate_feature_name", {"groups": {"d": ["b", "c"]}}),
        ("group_duplicate_feature_name", {"groups": [["g", ["b"]], ["g", ["c"]]]}),
        ("group_duplicate_token_name", {"tokens": list("abcbe"), "groups": {"g": ["c", "e"]}}),
        ("wrong_type", {"groups": "b,c"}),
        ("wrong_type", {"groups": {"g": "bc"}}),
        ("wrong_type", {"groups": {"g": ["b", 3]}}),
        ("wrong_type", {"groups": [["g", ["b"], "extra"]]}),
        ("wrong_type", {"groups": [{"g": ["b"]}]}),
        ("length", {"groups": {"g": ["b"], "h": ["c"], "i": ["d"], "j": ["e"]}}),    # > max_groups
        ("length", {"groups": {"g": ["b", "c", "d", "e", "b", "c"]}}),              # > max_tokens
        ("bad_string", {"groups": {"g\x00": ["b"]}}),
        ("missing_key", {"tokens": None, "groups": {"g": ["b", "c"]}}),
        ("missing_key", {"cls": None, "groups": {"g": ["b", "c"]}}),
    ]
    for seq, (reason, extra) in enumerate(bad):
        before = d.stats()
        body = dict(base, seq=seq, **extra)
        for k in [k for k, v in extra.items() if v is None]:
            del body[k]
        pub.send_multipart([b"attn/hg", msgpack.packb(body)])
        after = wait_until(lambda: (lambda s: s if s["counters"]["rejected"] >
                                    before["counters"]["rejected"] else None)(d.stats()),
                           what=f"the '{reason}' rejection of {extra} to be counted")
        for r, c in after["rejected"].items():
            assert c == before["rejected"].get(r, 0) + (1 if r == reason else 0), (reason, r, c)
    # the daemon goes on: a valid grouped message is explained
    sub = d.subscriber(b"xpl/hg")
    join(d, pub, sub)
    pub.send_multipart([b"attn/hg", msgpack.packb(dict(base, seq=100, groups={"bc": ["c", "b"]}))])
    (_, msg), = recv(sub, 1)
    assert len(msg["attr"]["rollout"]) == 3
    log = d.stop()
    for what in ("group_unknown_token", "token 'zz'", "group_cls_token", "group_empty",
                 "groups has 4 entries (limit 3)", "groups is given without tokens"):
        assert what in log, (what, log[-3000:])


def test_python_publisher_and_subscriber_groups(daemon):
    """The Python client: Publisher(groups=) sends them with the schema
    (and {} to remove them), the Subscriber names every vector per
    feature and knows each group's tokens."""
    import sys
    sys.path.insert(0, os.path.join(os.environ["XPL_SOURCE_DIR"], "client", "python"))
    import xplain

    d = daemon("--methods", "rollout,grad_rollout")
    sub = xplain.Subscriber(d.publish, models=["pyg"], query=d.query_ep)
    join(d, d.publisher())
    pub = xplain.Publisher("pyg", connect=d.ingest, tokens=["CLS", "bid", "ask", "size", "side"],
                           cls=0, groups={"quote": ["ask", "bid"]})
    try:
        assert pub.wait_subscriber(10.0), "the daemon never subscribed to the publisher"
        rng = np.random.default_rng(8)
        A = random_attention(rng, (2, 2, 5, 5)).astype(np.float32)
        G = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
        x = None
        deadline = time.monotonic() + 10
        while x is None and time.monotonic() < deadline:
            pub.send(A, grad=G, target=1)
            x = sub.recv(timeout=0.5)
        assert x is not None, "no explanation reached the Python subscriber"
        assert x.features == ["quote", "size", "side"], x.features
        assert x.groups == {"quote": ["bid", "ask"]}, x.groups
        assert x.tokens_of("quote") == ["bid", "ask"] and x.tokens_of("side") == ["side"]
        w = ref.methods(A.astype(np.float64), G.astype(np.float64), 0)
        assert_close(x.attr["rollout"], ref.groups(w["rollout"], [0, 0, 1, 2], 3), 2e-5,
                     what="python subscriber rollout")
        assert dict(x.top("rollout", 3))["quote"] == x.attr["rollout"][0]
        # groups removed: sent as {} with the schema, a new epoch without them
        pub.groups = {}
        x2 = None
        deadline = time.monotonic() + 10
        while (x2 is None or x2.epoch == x.epoch) and time.monotonic() < deadline:
            pub.send(A, grad=G, target=1)
            x2 = sub.recv(timeout=0.5)
        assert x2 is not None and x2.epoch == x.epoch + 1, (x2 and x2.epoch, x.epoch)
        assert x2.features == ["bid", "ask", "size", "side"] and x2.groups == {}, x2.features
    finally:
        pub.close(0)
        sub.close()
    d.stop()


def spearman(a, b):
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def test_reference_over_more_features_compares_on_the_attributed(daemon):
    """A TabTransformer-like model: its numerical columns are no tokens.
    A reference over every column, given by name in any order, is
    compared on the features that have an attribution; one lacking such
    a feature, or naming one twice, is refused."""
    rng = np.random.default_rng(21)
    d = daemon("--methods", ",".join(ALL))
    pub = d.publisher()
    sub = d.subscriber(b"xpl/tab")
    join(d, pub, sub)
    c = {"model": "tab", "L": 2, "H": 2, "n": 7, "cls": 0, "dtype": "f32", "B": 3, "T": 0,
         "tokens": ["CLS", "city=a", "city=b", "job=x", "job=y", "job=z", "color"],
         "groups": [("city", ["city=a", "city=b"]), ("job", ["job=x", "job=y", "job=z"])],
         "as_map": True}
    _, trades = run_case(pub, sub, c, rng)
    names = ["city", "job", "color"]
    assert d.query("schema", model="tab")["features"] == names
    mean = np.mean([t["rollout"] for t in trades], axis=0)
    ref_all = {"age": 0.9, "job": 0.5, "income": 0.7, "color": 0.1, "city": 0.3}
    order = ["age", "job", "income", "color", "city"]
    rep = d.query("reference", model="tab", method="rollout", values=[ref_all[k] for k in order],
                  features=order)
    assert rep["ok"], rep
    want = spearman([ref_all[k] for k in names], mean)
    assert abs(rep["spearman"] - want) < 1e-9, (rep["spearman"], want)
    g = d.query("global", model="tab", method="rollout")
    assert g["methods"]["rollout"]["reference"] == [ref_all[k] for k in names], g["methods"]["rollout"]
    for vals, feats, why in (([0.1, 0.2, 0.3], ["age", "city", "job"], "lacks color"),
                             ([0.1, 0.2, 0.3, 0.4], ["city", "job", "color", "job"], "job twice")):
        rep = d.query("reference", model="tab", method="rollout", values=vals, features=feats)
        assert not rep["ok"] and rep["code"] == "bad_argument", (why, rep)
    rep = d.query("reference", model="tab", method="rollout", values=[1.0, 2.0], features=["a"])
    assert not rep["ok"] and rep["code"] == "bad_request", rep
    d.stop()


def test_shards_with_groups_merge_in_the_aggregator(daemon):
    """The groups travel with the shards' state: an aggregator over two
    shards of a grouped model reports the features, the groups and the
    global means one daemon fed the whole stream reports."""
    import sys
    sys.path.insert(0, os.path.join(os.environ["XPL_SOURCE_DIR"], "client", "python"))
    import xplain

    common = ["--methods", "rollout,grad_rollout,attn_mean", "--glob-interval-ms", "100"]
    shards = [daemon("--shard", f"{k}/2", *common) for k in range(2)]
    single = daemon(*common)
    agg = daemon("--aggregate", ",".join(s.publish for s in shards),
                 "--aggregate-query", ",".join(s.query_ep for s in shards), *common,
                 ingest_bind=False)
    toks = ["bid", "ask", "CLS", "size", "side", "venue"]
    groups = {"quote": ["ask", "bid"], "where": ["venue", "side"]}
    sp = xplain.Publisher("gs", connect=[s.ingest for s in shards], tokens=toks, cls=2,
                          groups=groups, shards=2)
    p1 = xplain.Publisher("gs", connect=single.ingest, tokens=toks, cls=2, groups=groups)
    try:
        assert sp.wait_subscriber(20) and p1.wait_subscriber(20), "publishers not joined"
        rng = np.random.default_rng(4)
        total = 0
        for i in range(30):
            A = random_attention(rng, (2, 2, 2, 6, 6)).astype(np.float32)
            G = rng.standard_normal(A.shape).astype(np.float32)
            ids = [f"t{i}-{b}" for b in range(2)]
            for p in (sp, p1):
                p.send(A, grad=G, ids=ids, target=[i % 2, 1])
            total += 2

        def count(d):
            r = d.query("global", model="gs")
            return r["count"] if r["ok"] else -1
        wait_until(lambda: count(single) == total, 30, "the single daemon to count every trade")
        wait_until(lambda: count(agg) == total, 30, "the aggregator to count every trade")
        a, s = agg.query("global", model="gs"), single.query("global", model="gs")
        assert a["features"] == s["features"] == ["quote", "size", "where"], (a["features"], s["features"])
        for m in s["methods"]:
            assert_close(a["methods"][m]["mean"], s["methods"][m]["mean"], 1e-12, what=f"agg {m}")
        sa = agg.query("schema", model="gs")
        assert sa["features"] == ["quote", "size", "where"]
        assert sa["groups"] == {"quote": ["bid", "ask"], "where": ["side", "venue"]}, sa
        assert agg.query("stats")["counters"].get("state_rejected", 0) == 0
    finally:
        sp.close(0)
        p1.close(0)
    for d in [agg, single] + shards:
        d.stop()


def test_xplainctl_names_features(daemon, tmp_dir):
    """xplainctl tail names the features of a grouped model; heatmap labels
    each grouped token with its feature and puts the feature's bar on its
    lowest token's row."""
    import subprocess
    ctl = os.path.join(os.environ["XPL_BUILD_DIR"], "client", "xplainctl")
    rng = np.random.default_rng(5)
    d = daemon("--methods", ",".join(ALL))
    pub = d.publisher()
    sub = d.subscriber(b"xpl/ctl")
    join(d, pub, sub)
    c = {"model": "ctl", "L": 2, "H": 1, "n": 5, "cls": 0, "dtype": "f32", "B": 1, "T": 0,
         "tokens": ["CLS", "bid", "size", "ask", "side"], "groups": [("quote", ["bid", "ask"])],
         "as_map": True}
    ids, trades = run_case(pub, sub, c, rng)
    # flow on demand (the trade query) is summed per feature as well
    rep = d.query("trade", model="ctl", id=ids[0], flow=True)
    assert rep["ok"] and rep["features"] == ["quote", "size", "side"], rep
    flow = ref.methods(trades[0]["A"], None, 0, with_flow=True)["flow"]
    assert_close(rep["attr"]["flow"], ref.groups(flow, [0, 1, 0, 2], 3), 1e-5, what="grouped flow")
    svg = os.path.join(tmp_dir, "h.svg")
    p = subprocess.run([ctl, "--query", d.query_ep, "--sub", d.publish, "heatmap", "--model", "ctl",
                        "--id", ids[0], "-o", svg], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, LC_ALL="C"))
    assert p.returncode == 0, p.stderr
    text = open(svg).read()
    assert "bid [quote]" in text and "ask [quote]" in text and ">size<" in text, text[:2000]
    p = subprocess.run([ctl, "--query", d.query_ep, "--sub", d.publish, "query", "schema",
                        "model=ctl"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "quote" in p.stdout, (p.stdout, p.stderr)
    d.stop()


def test_fused_form_with_groups(daemon):
    """A fused message (head means instead of every head) of a grouped
    model: the same per-feature sums as the reference."""
    import sys
    sys.path.insert(0, os.path.join(os.environ["XPL_SOURCE_DIR"], "client", "python"))
    import xplain

    d = daemon("--methods", "rollout,grad_rollout,attn_mean,colsum")
    sub = d.subscriber(b"xpl/fg")
    join(d, d.publisher(), sub)
    toks = ["a", "b", "c", "d", "e", "f"]
    pub = xplain.Publisher("fg", connect=d.ingest, tokens=toks, cls=-1, fused=True,
                           groups=[("ae", ["e", "a"]), ("cd", ["c", "d"])])
    try:
        assert pub.wait_subscriber(10.0), "the daemon never subscribed to the publisher"
        rng = np.random.default_rng(12)
        A = random_attention(rng, (3, 2, 6, 6)).astype(np.float32)
        G = rng.standard_normal(A.shape).astype(np.float32)
        pub.send(A, grad=G, target=0)
        (_, msg), = recv(sub, 1)
        feat_of = [0, 1, 2, 2, 0, 3]
        v = ref.variants(A.astype(np.float64), G[None].astype(np.float64), -1)
        plain = ref.methods(A.astype(np.float64), None, -1)
        want = {"rollout": v["rollout"], "grad_rollout": v["grad_rollout"][0],
                "attn_mean": plain["attn_mean"], "colsum": v["colsum"]}
        for m, w in want.items():
            assert_close(msg["attr"][m], ref.groups(w, feat_of, 4), 2e-5, what=f"fused grouped {m}")
        assert d.query("schema", model="fg")["features"] == ["ae", "b", "cd", "f"]
    finally:
        pub.close(0)
    d.stop()


def test_reference_file_by_name(daemon, tmp_dir):
    """The reference file's name=value form: a reference over more
    features than the model attributes is applied on those it does."""
    rng = np.random.default_rng(2)
    path = os.path.join(tmp_dir, "refs.txt")
    with open(path, "w") as f:
        f.write("rf rollout age=0.9 job=0.5 income=0.7 color=0.1 city=0.3\n"
                "rf attn_mean job=0.5 color=0.1\n")         # lacks city: not applied
    d = daemon("--methods", ",".join(ALL), "--reference-file", path)
    pub = d.publisher()
    sub = d.subscriber(b"xpl/rf")
    join(d, pub, sub)
    c = {"model": "rf", "L": 1, "H": 2, "n": 6, "cls": 0, "dtype": "f32", "B": 2, "T": 0,
         "tokens": ["CLS", "city=a", "job=x", "city=b", "job=y", "color"],
         "groups": [("city", ["city=a", "city=b"]), ("job", ["job=x", "job=y"])], "as_map": False}
    run_case(pub, sub, c, rng)
    g = d.query("global", model="rf")
    assert g["features"] == ["city", "job", "color"], g["features"]
    assert g["methods"]["rollout"]["reference"] == [0.3, 0.5, 0.1], g["methods"]["rollout"]
    assert "reference" not in g["methods"]["attn_mean"], g["methods"]["attn_mean"]
    log = d.stop()
    assert "names 2 of epoch 1's 3 features; not applied" in log, log[-2000:]
