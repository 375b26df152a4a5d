"""End to end: three shard daemons and an aggregator against one daemon fed
the whole stream.

Two models (one with a gradient and two target classes, one without a CLS
token and integer ids) stream in batches of 1-6 trades through sharded
publishers (xplain.Publisher(shards=3): each trade goes to the shard its id
hashes to) and, the same trades, through a plain publisher to a single
daemon. Every daemon runs with event-time drift windows and a time-decayed
mean (--drift-window-s, --decay-half-life-s), the modes that merge exactly.

The aggregator must then be indistinguishable from the single daemon:
- the `global` reply of every model: counts, means, standard deviations
  and decayed means, overall and per class, within 1e-12 relative;
- heads/: the head statistics, within 1e-12;
- drift/: the same closed windows with the same verdicts (window, alert,
  reference, and statistics within 1e-9);
- every xpl/ message of the stream arrives once through the aggregator's
  own PUB, from all three shards;
- a `trade` query to the aggregator for ids on every shard is answered
  (by the owning shard) with the explanation the single daemon gives.
Then shard 1 stops: the aggregator reports it stale (stats, glob/) and
keeps its last state; it starts again from its snapshot: the aggregator
reports it fresh and nothing is counted twice.
"""
import os
import shutil
import sys
import tempfile
import time

import msgpack
import numpy as np
import pytest

from xpltest import SOURCE, Daemon, ShardDaemon, wait_until

sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
from xplain import Publisher, shard_of  # noqa: E402

NS = 3
T0 = 1_796_169_600 * 10 ** 9
STEP = 40 * 10 ** 6              # ns between trades: 25 trades per 1 s window
COMMON = ["--drift-window-s", "1", "--drift-lateness-s", "0.5", "--decay-half-life-s", "3",
          "--glob-interval-ms", "100", "--methods", "rollout,grad_rollout,attn_mean,first_layer",
          "--drift-rho-min", "0.95", "--log-level", "info"]
REL = 1e-12

MODELS = {
    # name: L, H, n, cls, grad, id kind
    "m1": (2, 2, 5, 4, True, "str"),
    "m2": (1, 3, 4, -1, False, "int"),
}


def tokens_of(n, cls):
    t = ["f%d" % j for j in range(n)]
    if cls >= 0:
        t[cls] = "CLS"
    return t


def attention(rng, L, H, n, imp):
    logits = rng.standard_normal((L, H, n, n)) * 0.3 + 1.2 * np.asarray(imp)[None, None, None, :]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def close(a, b, rel=REL, what=""):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} and {b.shape}"
    tol = rel * np.maximum(np.abs(a), np.abs(b)) + 1e-300
    bad = np.abs(a - b) > tol
    assert not bad.any(), f"{what}: {a[bad][:4]} vs {b[bad][:4]}"


class Cluster:
    def __init__(self, tmp):
        self.tmp = tmp
        self.ep = {k: {w: f"ipc://{tmp}/s{k}-{w}" for w in ("in", "pub", "q")} for k in range(NS)}
        self.state = {k: os.path.join(tmp, f"state{k}") for k in range(NS)}
        self.shards = {k: self.start_shard(k) for k in range(NS)}
        self.single = Daemon(*COMMON)
        self.agg = self.start_agg()

    def start_agg(self):
        return Daemon("--aggregate", ",".join(self.ep[k]["pub"] for k in range(NS)),
                      "--aggregate-query", ",".join(self.ep[k]["q"] for k in range(NS)),
                      "--aggregate-stale-ms", "3000", "--state-dir", os.path.join(self.tmp, "agg"),
                      "--snapshot-interval", "1", *COMMON, ingest_bind=False)

    def start_shard(self, k):
        return ShardDaemon(self.ep[k], "--shard", f"{k}/{NS}", "--state-dir", self.state[k],
                           "--snapshot-interval", "1", *COMMON)

    def stop(self):
        for d in list(self.shards.values()) + [self.single, self.agg]:
            if d.proc.poll() is None:
                d.stop()


def ids_on(shard, kind, count, start=10 ** 6):
    out, i = [], start
    while len(out) < count:
        tid = f"x-{i}" if kind == "str" else i
        if shard_of(tid, NS) == shard:
            out.append(tid)
        i += 1
    return out



def more_state_rounds(agg, rounds=2, timeout=30):
    """Wait until the aggregator has taken `rounds` more whole states from
    every shard (its stats count them per shard)."""
    def states():
        return [sh["states"] for sh in agg.stats()["shards"]]
    start = states()
    wait_until(lambda: all(now >= was + rounds for now, was in zip(states(), start)), timeout,
               f"{rounds} more state rounds from every shard")

def test_three_shards_and_an_aggregator_equal_one_daemon():
    tmp = tempfile.mkdtemp(prefix="xplshard-")
    c = None
    ctx_socks = []
    try:
        c = Cluster(tmp)
        # Subscribers first: the aggregator's xpl/ (forwarded from the
        # shards), drift/, glob/ and heads/; the single daemon's likewise.
        asub = c.agg.subscriber(b"xpl/")
        for t in (b"drift/", b"glob/", b"heads/"):
            asub.subscribe(t)
        ssub = c.single.subscriber(b"drift/")
        for t in (b"glob/", b"heads/"):
            ssub.subscribe(t)
        pubs = {}
        for m, (L, H, n, cls, grad, kind) in MODELS.items():
            toks = tokens_of(n, cls)
            pubs[m] = (Publisher(m, connect=[c.ep[k]["in"] for k in range(NS)], tokens=toks, cls=cls,
                                 shards=NS),
                       Publisher(m, connect=c.single.ingest, tokens=toks, cls=cls))
        for sharded, plain in pubs.values():
            assert sharded.wait_subscriber(20) and plain.wait_subscriber(20), "publishers not joined"

        # Join: probe trades (model __probe, one id per shard) until an
        # explanation from every shard came through the aggregator, and
        # the single daemon explained one.
        probe = Publisher("__probe", connect=[c.ep[k]["in"] for k in range(NS)],
                          tokens=["a", "b"], cls=-1, shards=NS)
        probe1 = Publisher("__probe", connect=c.single.ingest, tokens=["a", "b"], cls=-1)
        assert probe.wait_subscriber(20) and probe1.wait_subscriber(20)
        pa = np.full((1, 1, 2, 2), 0.5, dtype=np.float32)
        pending = {k: ids_on(k, "int", 1, start=5 * 10 ** 8)[0] for k in range(NS)}
        got_probe = set()
        deadline = time.monotonic() + 30
        while len(got_probe) < NS:
            assert time.monotonic() < deadline, "no probe explanation came through the aggregator " \
                                                 f"from shards {set(range(NS)) - got_probe}"
            for k, tid in pending.items():
                if k not in got_probe:
                    probe.send(pa, ids=[tid], ts=T0 - 10 ** 12)
            probe1.send(pa, ids=[1], ts=T0 - 10 ** 12)
            t_end = time.monotonic() + 0.3
            while time.monotonic() < t_end and asub.poll(50):
                topic, body = asub.recv_multipart()
                if topic == b"xpl/__probe":
                    b = msgpack.unpackb(body)
                    for k, tid in pending.items():
                        if b["id"] == tid:
                            got_probe.add(k)

        # The stream: each model's importance shifts half-way (drift).
        rng = np.random.default_rng(7)
        N = 420
        sent = {m: [] for m in MODELS}
        for m, (L, H, n, cls, grad, kind) in MODELS.items():
            imp0 = rng.uniform(0, 2, n)
            imp1 = imp0[::-1].copy()
            i = 0
            while i < N:
                B = min(int(rng.integers(1, 7)), N - i)
                ts = T0 + i * STEP
                A = np.stack([attention(rng, L, H, n, imp0 if i + b < N // 2 else imp1) for b in range(B)])
                G = rng.standard_normal(A.shape).astype(np.float32) if grad else None
                ids = [f"t-{m}-{i + b}" if kind == "str" else 1000 + i + b for b in range(B)]
                target = [int(rng.integers(0, 2)) for _ in range(B)] if grad else None
                for p in pubs[m]:
                    p.send(A, grad=G, ids=ids, target=target, ts=ts)
                sent[m] += ids
                i += B
            # The end of the stream, after a pause of 1000 s: a trade on
            # every shard, so that every window before it closes everywhere
            # (a shard keeps its last 32 windows that hold trades for the
            # aggregator, however long ago they closed).
            for k in range(NS):
                tid = ids_on(k, kind, 1)[0]
                A = attention(rng, L, H, n, imp1)[None]
                G = rng.standard_normal(A.shape).astype(np.float32) if grad else None
                tg = [0] if grad else None
                for p in pubs[m]:
                    p.send(A, grad=G, ids=[tid], target=tg, ts=T0 + 1000 * 10 ** 9)
                sent[m].append(tid)
        total = {m: len(v) for m, v in sent.items()}

        def count(d, m):
            r = d.query("global", model=m)
            return r["count"] if r["ok"] else -1

        for m in MODELS:
            wait_until(lambda: count(c.single, m) == total[m], 60, f"the single daemon to count {m}")
            wait_until(lambda: count(c.agg, m) == total[m], 60, f"the aggregator to count {m}")

        # Global state, overall and per class.
        for m in MODELS:
            a, s = c.agg.query("global", model=m), c.single.query("global", model=m)
            assert a["ok"] and s["ok"], (a, s)
            assert a["count"] == s["count"] == total[m]
            assert a["features"] == s["features"]
            assert set(a["methods"]) == set(s["methods"])
            for meth in s["methods"]:
                am, sm = a["methods"][meth], s["methods"][meth]
                assert am["count"] == sm["count"], (m, meth)
                for f in ("mean", "std", "decayed"):
                    close(am[f], sm[f], what=f"{m} {meth} {f}")
            at = {t["target"]: t["methods"] for t in a["targets"]}
            st = {t["target"]: t["methods"] for t in s["targets"]}
            assert set(at) == set(st)
            for t in st:
                for meth in st[t]:
                    assert at[t][meth]["count"] == st[t][meth]["count"]
                    for f in ("mean", "std", "decayed"):
                        close(at[t][meth][f], st[t][meth][f], what=f"{m} target {t} {meth} {f}")
            am_, sm_ = {x["model"]: x for x in c.agg.query("models")["models"]}, \
                       {x["model"]: x for x in c.single.query("models")["models"]}
            assert am_[m]["explained"] == sm_[m]["explained"] == total[m]
            assert c.agg.query("schema", model=m)["tokens"] == c.single.query("schema", model=m)["tokens"]

        # Read what the subscribers got; heads/ and drift/ must agree.
        def drain(sock, secs):
            out = []
            end = time.monotonic() + secs
            while time.monotonic() < end:
                if sock.poll(100):
                    t, b = sock.recv_multipart()
                    out.append((t, msgpack.unpackb(b)))
            return out
        a_msgs = drain(asub, 2.0)
        s_msgs = drain(ssub, 0.5)
        xpl = [b for t, b in a_msgs if t.startswith(b"xpl/") and t != b"xpl/__probe"]
        seen = {}
        for b in xpl:
            key = (b["model"], b["id"])
            seen[key] = seen.get(key, 0) + 1
        for m in MODELS:
            for tid in sent[m]:
                assert seen.get((m, tid)) == 1, f"xpl/{m} {tid!r} arrived {seen.get((m, tid), 0)} times"
        assert len(xpl) == sum(total.values())

        for m in MODELS:
            ah = [b for t, b in a_msgs if t == f"heads/{m}".encode()]
            sh = [b for t, b in s_msgs if t == f"heads/{m}".encode()]
            if ah and sh:
                ha, hs = ah[-1], sh[-1]
                assert ha["importance_count"] == hs["importance_count"]
                assert ha["confidence_count"] == hs["confidence_count"]
                close(ha["importance"], hs["importance"], what=f"{m} head importance")
                close(ha["confidence"], hs["confidence"], what=f"{m} head confidence")
            else:
                pytest.fail(f"no heads/{m} from {'the aggregator' if not ah else 'the single daemon'}")

        def windows(msgs):
            out = {}
            for t, b in msgs:
                if t.startswith(b"drift/") and b["model"] != "__probe":
                    out[(b["model"], b["method"], b["window"])] = b
            return out
        aw, sw = windows(a_msgs), windows(s_msgs)
        assert sw, "the single daemon closed no window"
        assert set(aw) == set(sw), f"windows only in the aggregator: {sorted(set(aw) - set(sw))[:5]}, " \
                                   f"only in the single daemon: {sorted(set(sw) - set(aw))[:5]}"
        alerts = 0
        for key, s in sw.items():
            a = aw[key]
            for f in ("alert", "compared", "reference", "trades"):
                assert a[f] == s[f], (key, f, a[f], s[f])
            for f in ("spearman", "ndcg", "js"):
                assert (a[f] is None) == (s[f] is None), (key, f)
                if s[f] is not None:
                    close(a[f], s[f], rel=1e-9, what=f"{key} {f}")
            alerts += s["alert"]
        assert alerts > 0, "the shift half-way raised no alert"

        # trade queries through the aggregator, ids of every shard.
        for m, (L, H, n, cls, grad, kind) in MODELS.items():
            for k in range(NS):
                tid = next(t for t in sent[m][:N] if shard_of(t, NS) == k)
                ra, rs = c.agg.query("trade", model=m, id=tid), c.single.query("trade", model=m, id=tid)
                assert ra["ok"] and rs["ok"], (ra, rs)
                assert ra["id"] == tid
                for meth, v in rs["attr"].items():
                    assert np.array_equal(np.asarray(ra["attr"][meth]), np.asarray(v)), (m, tid, meth)

        # A shard stops: stale, its last state kept.
        st = c.shards[1].stats()
        c.shards[1].stop()

        def shard_entry(idx):
            return c.agg.stats()["shards"][idx]
        wait_until(lambda: shard_entry(1)["stale"], 20, "the aggregator to report shard 1 stale")
        assert not shard_entry(0)["stale"] and not shard_entry(2)["stale"]
        for m in MODELS:
            assert count(c.agg, m) == total[m], "a stale shard's last state still counts"

        def glob_stale():
            for t, b in drain(asub, 0.3):
                if t == b"glob/m1":
                    return b.get("stale_shards")
            return None
        wait_until(lambda: glob_stale() == [1], 20, "glob/m1 from the aggregator to list shard 1 stale")

        # ...and starts again from its snapshot: fresh, nothing twice.
        c.shards[1] = c.start_shard(1)
        wait_until(lambda: not shard_entry(1)["stale"], 20, "the aggregator to report shard 1 back")
        more_state_rounds(c.agg)
        for m in MODELS:
            a, s = c.agg.query("global", model=m), c.single.query("global", model=m)
            assert a["count"] == total[m], f"{m}: {a['count']} after the restart, {total[m]} before"
            for meth in s["methods"]:
                close(a["methods"][meth]["mean"], s["methods"][meth]["mean"], what=f"{m} {meth} after restart")
        assert st["ok"]

        # The aggregator restarts (from its own snapshot): the shards' next
        # states rebuild it, nothing lost, nothing twice, and no window it
        # judged before is judged again.
        before = c.agg.query("drift", model="m1")["methods"]["rollout"]
        c.agg.stop()
        c.agg = c.start_agg()
        for m in MODELS:
            wait_until(lambda: count(c.agg, m) == total[m], 30, f"the restarted aggregator to count {m}")
            a, s = c.agg.query("global", model=m), c.single.query("global", model=m)
            for meth in s["methods"]:
                close(a["methods"][meth]["mean"], s["methods"][meth]["mean"], what=f"{m} {meth} after "
                      "the aggregator restarted")
        more_state_rounds(c.agg)
        after = c.agg.query("drift", model="m1")["methods"]["rollout"]
        assert after["last"]["window"] == before["last"]["window"], (before, after)
        assert after["reference"] == before["reference"]
    finally:
        if c is not None:
            c.stop()
        shutil.rmtree(tmp, ignore_errors=True)

