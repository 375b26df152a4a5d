"""End to end: a two-level tree of aggregators, with segments, against one
daemon fed the whole stream.

Four shard daemons (--shard K/4), two aggregators of two shards each, and
a top aggregator of those two aggregators (each aggregator publishes its
merged state on its own state/, as a shard does). Every daemon segments by
the tag `desk` (three desks; the importance of desk "b" alone shifts half
way) with event-time drift windows and a time-decayed mean. Some messages
are malformed, on two shards and to the single daemon.

The top aggregator must read like the single daemon:
- `global` of the model, overall and per segment: counts, means, standard
  deviations and decayed means within 1e-12 relative;
- drift/: the same closed windows, overall and per segment
  (drift/<model>/<segment>), with the same verdicts; and the `drift` query
  with a segment;
- stats: the same rejections, by reason;
- a `trade` query for an id of every shard, answered through two levels.
"""
import os
import shutil
import sys
import tempfile
import time

import msgpack
import numpy as np

from xpltest import SOURCE, Daemon, wait_until

sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
from xplain import Publisher, shard_of  # noqa: E402

NS = 4
T0 = 1_796_169_600 * 10 ** 9
STEP = 40 * 10 ** 6
COMMON = ["--drift-window-s", "1", "--drift-lateness-s", "0.5", "--decay-half-life-s", "3",
          "--glob-interval-ms", "100", "--methods", "rollout,grad_rollout,attn_mean",
          "--drift-rho-min", "0.95", "--segment-by", "desk", "--log-level", "info"]
REL = 1e-12
L, H, N_TOK, CLS = 2, 2, 5, 4
DESKS = ["a", "b", "c"]


def attention(rng, imp):
    logits = rng.standard_normal((L, H, N_TOK, N_TOK)) * 0.3 + 1.2 * np.asarray(imp)[None, None, None, :]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def close(a, b, rel=REL, what=""):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} and {b.shape}"
    tol = rel * np.maximum(np.abs(a), np.abs(b)) + 1e-300
    bad = np.abs(a - b) > tol
    assert not bad.any(), f"{what}: {a[bad][:4]} vs {b[bad][:4]}"


class FixedDaemon(Daemon):
    """A Daemon on endpoints of the test's directory."""

    def __init__(self, eps, *args, **kw):
        self.fixed = eps
        extra = ["--publish", eps["pub"], "--query", eps["q"]]
        if "in" in eps:
            extra += ["--ingest-bind", eps["in"]]
        super().__init__(*args, *extra, **kw)

    def _wait_ready(self):
        self.ingest = self.fixed.get("in")
        self.publish, self.query_ep = self.fixed["pub"], self.fixed["q"]
        super()._wait_ready()


def ids_on(shard, count, start):
    out, i = [], start
    while len(out) < count:
        if shard_of(f"x-{i}", NS) == shard:
            out.append(f"x-{i}")
        i += 1
    return out


def drain(sock, secs):
    out = []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if sock.poll(100):
            t, b = sock.recv_multipart()
            out.append((t, msgpack.unpackb(b)))
    return out


def compare_global(top, single, what, **seg):
    a, s = top.query("global", model="m1", **seg), single.query("global", model="m1", **seg)
    assert a["ok"] and s["ok"], (what, a, s)
    assert a["count"] == s["count"], (what, a["count"], s["count"])
    assert set(a["methods"]) == set(s["methods"]), what
    for meth in s["methods"]:
        am, sm = a["methods"][meth], s["methods"][meth]
        assert am["count"] == sm["count"], (what, meth)
        for f in ("mean", "std", "decayed"):
            close(am[f], sm[f], what=f"{what} {meth} {f}")
    return s


def test_two_aggregators_under_a_top_aggregator_equal_one_daemon():
    tmp = tempfile.mkdtemp(prefix="xplagg-")
    daemons = []
    try:
        ep = {k: {w: f"ipc://{tmp}/s{k}-{w}" for w in ("in", "pub", "q")} for k in range(NS)}
        aep = {j: {w: f"ipc://{tmp}/a{j}-{w}" for w in ("pub", "q")} for j in range(2)}
        for k in range(NS):
            daemons.append(FixedDaemon(ep[k], "--shard", f"{k}/{NS}", *COMMON))
        single = Daemon(*COMMON)
        daemons.append(single)
        for j in range(2):
            ks = (2 * j, 2 * j + 1)
            daemons.append(FixedDaemon(aep[j], "--aggregate", ",".join(ep[k]["pub"] for k in ks),
                                       "--aggregate-query", ",".join(ep[k]["q"] for k in ks),
                                       *COMMON, ingest_bind=False))
        top = Daemon("--aggregate", ",".join(aep[j]["pub"] for j in range(2)),
                     "--aggregate-query", ",".join(aep[j]["q"] for j in range(2)),
                     *COMMON, ingest_bind=False)
        daemons.append(top)

        tsub = top.subscriber(b"drift/")
        ssub = single.subscriber(b"drift/")
        toks = ["f%d" % j for j in range(N_TOK)]
        toks[CLS] = "CLS"
        sharded = Publisher("m1", connect=[ep[k]["in"] for k in range(NS)], tokens=toks, cls=CLS,
                            shards=NS)
        plain = Publisher("m1", connect=single.ingest, tokens=toks, cls=CLS)
        assert sharded.wait_subscriber(20) and plain.wait_subscriber(20), "publishers not joined"

        # Join through both levels: trades of model __probe on every shard
        # until the top aggregator counts one of each.
        probe = Publisher("__probe", connect=[ep[k]["in"] for k in range(NS)], tokens=["a", "b"],
                          cls=-1, shards=NS)
        assert probe.wait_subscriber(20)
        pa = np.full((1, 1, 2, 2), 0.5, dtype=np.float32)
        pids = [ids_on(k, 1, 5 * 10 ** 8)[0] for k in range(NS)]

        def probed():
            r = top.query("global", model="__probe")
            if r["ok"] and r["count"] >= NS:
                return True
            probe.send(np.repeat(pa[None], NS, 0), ids=pids, ts=T0 - 10 ** 12)
            return False
        wait_until(probed, 60, "the top aggregator to count a probe trade of every shard")

        rng = np.random.default_rng(11)
        N = 480
        imp0 = rng.uniform(0, 2, N_TOK)
        imp1 = imp0[::-1].copy()
        sent = []
        i = 0
        while i < N:
            B = min(int(rng.integers(1, 6)), N - i)
            desks = [DESKS[int(rng.integers(0, 3))] for _ in range(B)]
            A = np.stack([attention(rng, imp1 if (d == "b" and i + b >= N // 2) else imp0)
                          for b, d in enumerate(desks)])
            G = rng.standard_normal(A.shape).astype(np.float32)
            ids = [f"t-{i + b}" for b in range(B)]
            tags = [{"desk": d} for d in desks]
            for p in (sharded, plain):
                p.send(A, grad=G, ids=ids, target=0, ts=T0 + i * STEP, extra={"tags": tags})
            sent += ids
            i += B
        # The end of the stream, 1000 s later: a trade of every desk on
        # every shard, so that every window before it closes everywhere.
        for k in range(NS):
            for j, d in enumerate(DESKS):
                tid = ids_on(k, 1, 10 ** 6 + 1000 * j)[0]
                A = attention(rng, imp0)[None]
                G = rng.standard_normal(A.shape).astype(np.float32)
                for p in (sharded, plain):
                    p.send(A, grad=G, ids=[tid], target=0, ts=T0 + 1000 * 10 ** 9,
                           extra={"tags": {"desk": d}})
                sent.append(tid)
        # Malformed messages: two on shard 0, one on shard 3, the same three
        # to the single daemon (the publishers' sockets reach the daemons).
        bad = [b"\xc1", b"\x91\x01", b"\xc1"]
        for body, k in zip(bad, (0, 0, 3)):
            sharded._sock.send_multipart([b"shard/%d/%d/attn/m1" % (k, NS), body])
            plain._sock.send_multipart([b"attn/m1", body])
        total = len(sent)

        def count(d, **seg):
            r = d.query("global", model="m1", **seg)
            return r["count"] if r["ok"] else -1
        wait_until(lambda: count(single) == total, 60, "the single daemon to count the stream")
        wait_until(lambda: count(top) == total, 60, "the top aggregator to count the stream")
        wait_until(lambda: single.stats()["counters"]["rejected"] == 3, 30,
                   "the single daemon to reject the 3 malformed messages")
        wait_until(lambda: top.stats()["counters"]["rejected"] == 3, 30,
                   "the top aggregator to sum the shards' 3 rejections")

        # The same windows closed, overall and per segment.
        sd = single.query("drift", model="m1")
        assert sorted(sd["segments"]) == ["desk=a", "desk=b", "desk=c"], sd["segments"]

        def judged(d, seg):
            r = d.query("drift", model="m1", segment=seg) if seg else d.query("drift", model="m1")
            return r["ok"] and r["methods"]["rollout"]["last"] and r["methods"]["rollout"]["last"]["window"]
        for seg in [None] + sd["segments"]:
            want = judged(single, seg)
            assert want, f"the single daemon judged no window of {seg or 'the model'}"
            wait_until(lambda: judged(top, seg) == want, 30,
                       f"the top aggregator to judge window {want} of {seg or 'the model'}")

        # Global state, overall and per segment.
        compare_global(top, single, "overall")
        for seg in sd["segments"]:
            compare_global(top, single, seg, segment=seg)
        td = top.query("drift", model="m1")
        assert sorted(td["segments"]) == sorted(sd["segments"])     # first come, first listed
        assert td["segments_overflow"] == sd["segments_overflow"] == 0

        # Rejections by reason, as one daemon counts them.
        assert top.stats()["rejected"] == single.stats()["rejected"]

        # Every closed window, overall and per segment, with its verdict.
        def windows(msgs):
            out = {}
            for t, b in msgs:
                if b["model"] == "m1":
                    out[(t, b["method"], b["window"])] = b
            return out
        tw, sw = windows(drain(tsub, 1.0)), windows(drain(ssub, 0.3))
        assert sw, "the single daemon closed no window"
        assert set(tw) == set(sw), f"only at the top: {sorted(set(tw) - set(sw))[:4]}, " \
                                   f"only in the single daemon: {sorted(set(sw) - set(tw))[:4]}"
        assert any(t == b"drift/m1/desk=b" for t, _, _ in sw), "no window of segment desk=b"
        alerts = {}
        for key, s in sw.items():
            a = tw[key]
            for f in ("alert", "compared", "reference", "trades"):
                assert a[f] == s[f], (key, f, a[f], s[f])
            for f in ("spearman", "ndcg", "js"):
                assert (a[f] is None) == (s[f] is None), (key, f)
                if s[f] is not None:
                    close(a[f], s[f], rel=1e-9, what=f"{key} {f}")
            alerts[key[0]] = alerts.get(key[0], 0) + s["alert"]
        assert alerts.get(b"drift/m1/desk=b", 0) > 0, f"the shift of desk b raised no alert: {alerts}"

        # trade queries through two levels, ids of every shard.
        for k in range(NS):
            tid = next(t for t in sent[:N] if shard_of(t, NS) == k)
            ra, rs = top.query("trade", model="m1", id=tid), single.query("trade", model="m1", id=tid)
            assert ra["ok"] and rs["ok"], (k, ra, rs)
            for meth, v in rs["attr"].items():
                assert np.array_equal(np.asarray(ra["attr"][meth]), np.asarray(v)), (tid, meth)
        sharded.close()
        plain.close()
        probe.close()
    finally:
        for d in reversed(daemons):
            if d.proc.poll() is None:
                d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_segments_past_max_segments_are_counted_in_overflow():
    """Three desks, --max-segments 2 everywhere, two shards and an
    aggregator. Which segments a daemon tracks depends on arrival order
    (first come, first served); here desks a and b come first on every
    shard, so every daemon tracks those two: the aggregator's segments
    hold exactly their desks' trades, and desk c's are all in
    segments_overflow (the shards' overflow, summed)."""
    tmp = tempfile.mkdtemp(prefix="xplaggo-")
    daemons = []
    args = [a for a in COMMON] + ["--max-segments", "2"]
    try:
        ns = 2
        ep = {k: {w: f"ipc://{tmp}/s{k}-{w}" for w in ("in", "pub", "q")} for k in range(ns)}
        for k in range(ns):
            daemons.append(FixedDaemon(ep[k], "--shard", f"{k}/{ns}", *args))
        agg = Daemon("--aggregate", ",".join(ep[k]["pub"] for k in range(ns)),
                     "--aggregate-query", ",".join(ep[k]["q"] for k in range(ns)), *args,
                     ingest_bind=False)
        daemons.append(agg)
        toks = ["f%d" % j for j in range(N_TOK)]
        toks[CLS] = "CLS"
        pub = Publisher("m1", connect=[ep[k]["in"] for k in range(ns)], tokens=toks, cls=CLS, shards=ns)
        assert pub.wait_subscriber(20), "publisher not joined"
        rng = np.random.default_rng(5)
        per_desk = {d: 0 for d in DESKS}
        n = 0
        for i in range(90):
            d = DESKS[i % 2] if i < 30 else DESKS[i % 3]
            A = attention(rng, np.ones(N_TOK))[None]
            pub.send(A, ids=[f"o-{i}"], ts=T0 + i * STEP, extra={"tags": {"desk": d}})
            per_desk[d] += 1
            n += 1

        def settled():
            r = agg.query("drift", model="m1")
            g = agg.query("global", model="m1")
            if not (r["ok"] and g["ok"] and g["count"] == n):
                return None
            segs = {s: agg.query("global", model="m1", segment=s)["count"] for s in r["segments"]}
            return (r, segs) if sum(segs.values()) + r["segments_overflow"] == n else None
        r, segs = wait_until(settled, 30, "the aggregator to account every trade in a segment or "
                                          "in overflow")
        assert sorted(r["segments"]) == ["desk=a", "desk=b"], r["segments"]
        for s, c in segs.items():
            assert c == per_desk[s.split("=")[1]], (s, c, per_desk)
        assert r["segments_overflow"] == per_desk["c"] > 0
        pub.close()
    finally:
        for d in reversed(daemons):
            if d.proc.poll() is None:
                d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
