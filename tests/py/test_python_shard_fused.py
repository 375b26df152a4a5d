"""Publisher(shards=N) with the fused form and micro-batching together.

- against plain pyzmq SUB sockets, one per shard (no daemon): a batched
  publisher (fused and full form) sends what is pending as one message per
  shard with trades, in shard order, each with its trades' slice of every
  per-trade field (ids, y, fattn/fgrad/fgrad_signed/head_importance/
  head_confidence with their targets axis, or attn/grad/rel, tags), the
  message's targets; each shard's seq runs 0, 1, 2, ...; the schema goes
  with each shard's first message; send() returns the seq of the last
  message carrying its trades, flush() that of the last one sent; the
  batch timer's flush is split the same way;
- against three shard daemons (--shard K/3) and one unsharded daemon: the
  same trades, fused and micro-batched through a sharded publisher and
  in the full form through a plain one, are explained once each, by the
  daemon that owns them, as the single daemon explains them (1e-6
  relative, f32; 1e-5 for grad_rollout_signed, see below), one xpl/
  message per trade and target.

Run by Debian's /usr/bin/python3 (python3-zmq, -msgpack, -numpy, -pytest).
"""
import os
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq

from xpltest import SOURCE, Daemon, assert_close, random_attention

sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
from xplain import Publisher, shard_of  # noqa: E402
from xplain.fuse import fuse_targets  # noqa: E402
from xplain.shard import shard_prefix  # noqa: E402

NS = 3
L, H, n = 2, 3, 4
TOKENS = ["a", "b", "c", "CLS"]
CLASSES = [1, 0]


def trades(seed, count, T=len(CLASSES)):
    rng = np.random.default_rng(seed)
    A = random_attention(rng, (count, L, H, n, n), temp=2.0).astype(np.float32)
    G = rng.standard_normal((count, T, L, H, n, n)).astype(np.float32)
    return A, G


def recv(sock, timeout=10.0, what="a message"):
    """One message within the timeout: (topic, body dict)."""
    assert sock.poll(int(timeout * 1000)), "no %s within %.1f s" % (what, timeout)
    topic, body = sock.recv_multipart()
    return topic, msgpack.unpackb(body, raw=False)


def f32(b, shape):
    return np.frombuffer(b, dtype="<f4").reshape(shape)


class Shards:
    """One SUB per shard on a publisher's bound endpoint."""

    def __init__(self, ctx, pub):
        self.socks = []
        for k in range(NS):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, shard_prefix(k, NS))
            s.setsockopt(zmq.LINGER, 0)
            s.connect(pub.endpoint)
            self.socks.append(s)
        assert pub.wait_subscriber(10.0), "not every shard subscribed within 10 s"

    def close(self):
        for s in self.socks:
            s.close(0)


def flush_groups(sizes, batch):
    """The trades (by index) of each flush of a publisher with delay 0:
    pending trades go out when `batch` of them are pending."""
    groups, pending, i = [], [], 0
    for size in sizes:
        pending += list(range(i, i + size))
        i += size
        if len(pending) >= batch:
            groups.append(pending)
            pending = []
    return groups, pending


@pytest.mark.parametrize("form", ["fused", "full"])
def test_batched_flushes_split_by_shard(form):
    ids = [("t-%d" % i) if i % 3 else 500 + i for i in range(29)]
    A, G = trades(11, len(ids))
    R = -0.5 * G
    F = fuse_targets(A, G, signed=True)
    y = [0.25 * i for i in range(len(ids))]
    sizes = [1, 2, 1, 3, 4, 1, 1, 2, 5, 1, 3, 2, 1, 2]
    assert sum(sizes) == len(ids)
    batch = 5
    groups, rest = flush_groups(sizes, batch)
    assert rest, "the test wants trades left for flush()"
    groups.append(rest)
    assert all(len({shard_of(ids[j], NS) for j in g}) > 1 for g in groups), \
        "the test wants every flush to hold trades of several shards"
    ctx = zmq.Context()
    pub = Publisher("sf", bind="tcp://127.0.0.1:*", tokens=TOKENS, cls=3, shards=NS, context=ctx,
                    fused=(form == "fused"), fused_signed=True, batch=batch, delay=0)
    subs = None
    try:
        subs = Shards(ctx, pub)
        rets, i = [], 0
        for size in sizes:
            sl = slice(i, i + size)
            rets.append(pub.send(A[sl], grad=G[sl], rel=None if form == "fused" else R[sl],
                                 ids=ids[sl], y=y[sl], targets=CLASSES, ts=1000 + i))
            i += size
        last = pub.flush()
        ts_of, i = [], 0        # a trade's ts: that of its send
        for size in sizes:
            ts_of += [1000 + i] * size
            i += size
        assert pub.flush() is None
        # Per shard: the messages each flush gives it, in order.
        where, seqs = {}, [0] * NS
        for g in groups:
            shards = sorted({shard_of(ids[j], NS) for j in g})
            for k in shards:
                share = [j for j in g if shard_of(ids[j], NS) == k]
                _, m = recv(subs.socks[k], what="shard %d's message %d" % (k, seqs[k]))
                assert m["seq"] == seqs[k], "shard %d: seq %d, want %d" % (k, m["seq"], seqs[k])
                assert ("tokens" in m) == (seqs[k] == 0), "the schema with each shard's first message"
                assert m["ids"] == [ids[j] for j in share], "shard %d: its trades in batch order" % k
                assert m["ts"] == ts_of[share[0]], "a message carries its first trade's ts"
                assert m["targets"] == CLASSES and m["y"] == [y[j] for j in share]
                assert (m["L"], m["H"], m["n"]) == (L, H, n) and "target" not in m
                B, T = len(share), len(CLASSES)
                if form == "fused":
                    assert "attn" not in m and "grad" not in m and "rel" not in m
                    for key, shape in (("fattn", (B, L, n, n)), ("fgrad", (B, T, L, n, n)),
                                       ("fgrad_signed", (B, T, L, n, n)),
                                       ("head_importance", (B, T, L, H)),
                                       ("head_confidence", (B, L, H))):
                        assert np.array_equal(f32(m[key], shape), getattr(F, key)[share]), \
                            "shard %d: %s of trades %s" % (k, key, share)
                else:
                    assert "fattn" not in m
                    assert np.array_equal(f32(m["attn"], (B, L, H, n, n)), A[share])
                    assert np.array_equal(f32(m["grad"], (B, T, L, H, n, n)), G[share])
                    assert np.array_equal(f32(m["rel"], (B, T, L, H, n, n)), R[share])
                for j in share:
                    where[ids[j]] = (k, seqs[k])
                seqs[k] += 1
        assert len(where) == len(ids)
        assert pub.seqs == seqs
        for s in subs.socks:
            assert not s.poll(100), "an extra message"
        # send() returns the seq of the last message with its trades (the
        # highest shard it has trades on), flush() that of the last sent.
        i = 0
        for size, ret in zip(sizes, rets):
            k = max(shard_of(t, NS) for t in ids[i:i + size])
            assert ret == where[[t for t in ids[i:i + size] if shard_of(t, NS) == k][0]][1], \
                "send of trades %d..%d returned %d" % (i, i + size - 1, ret)
            i += size
        k = max(shard_of(ids[j], NS) for j in rest)
        assert last == seqs[k] - 1
        # Per-trade tags go with their trades; such a send goes out at once.
        tags = [{"desk": "d%d" % j} for j in range(6)]
        tid = ids[:6]
        pub.send(A[:6], grad=G[:6], rel=None if form == "fused" else R[:6], ids=tid, y=y[:6],
                 targets=CLASSES, extra={"tags": tags, "trace": "x"})
        for k in sorted({shard_of(t, NS) for t in tid}):
            _, m = recv(subs.socks[k], what="shard %d's tagged message" % k)
            share = [j for j in range(6) if shard_of(tid[j], NS) == k]
            assert m["ids"] == [tid[j] for j in share] and m["seq"] == seqs[k]
            assert m["tags"] == [tags[j] for j in share] and m["trace"] == "x"
            seqs[k] += 1
    finally:
        if subs is not None:
            subs.close()
        pub.close(0)
        ctx.term()


def test_batch_timer_splits_by_shard():
    """Trades of every shard pending in one batch go out after `delay`,
    without flush(), one message per shard."""
    ids = [("u-%d" % i) for i in range(40)]
    ids = [next(t for t in ids if shard_of(t, NS) == k) for k in (2, 0, 1)] + \
          [next(t for t in reversed(ids) if shard_of(t, NS) == k) for k in (0, 2, 1)]
    A, G = trades(12, len(ids))
    F = fuse_targets(A, G)
    ctx = zmq.Context()
    delay = 0.2
    pub = Publisher("st", bind="tcp://127.0.0.1:*", tokens=TOKENS, cls=3, shards=NS, context=ctx,
                    fused=True, batch=100, delay=delay)
    subs = None
    try:
        subs = Shards(ctx, pub)
        t0 = time.monotonic()
        # Both sends under the publisher's lock: the timer cannot send
        # between them, so they are one batch.
        with pub._lock:
            pub.send(A[:4], grad=G[:4], ids=ids[:4], targets=CLASSES)
            pub.send(A[4:], grad=G[4:], ids=ids[4:], targets=CLASSES)
        for k in range(NS):
            _, m = recv(subs.socks[k], what="shard %d's part of the batch the timer sends" % k)
            share = [j for j in range(len(ids)) if shard_of(ids[j], NS) == k]
            assert time.monotonic() - t0 >= delay - 0.01, "sent before the delay"
            assert m["ids"] == [ids[j] for j in share] and m["seq"] == 0 and "tokens" in m
            B = len(share)
            assert np.array_equal(f32(m["fgrad"], (B, len(CLASSES), L, n, n)), F.fgrad[share])
            assert np.array_equal(f32(m["fattn"], (B, L, n, n)), F.fattn[share])
            assert "fgrad_signed" not in m
        for s in subs.socks:
            assert not s.poll(100), "an extra message"
    finally:
        if subs is not None:
            subs.close()
        pub.close(0)
        ctx.term()


METHODS = "rollout,grad_rollout,first_layer,attn_mean,diag,grad_rollout_signed"


def collect(subs, count, timeout=30.0):
    """xpl/sf messages from every daemon in subs ({name: sock}) until
    `count` arrived in all: {(id, target): [(name, message), ...]}."""
    got, total = {}, 0
    deadline = time.monotonic() + timeout
    while total < count:
        busy = False
        for name, s in subs.items():
            while s.poll(0):
                _, body = s.recv_multipart()
                m = msgpack.unpackb(body)
                if m["model"] == "sf":
                    got.setdefault((m["id"], m.get("target")), []).append((name, m))
                    total += 1
                    busy = True
        if not busy:
            assert time.monotonic() < deadline, "timed out waiting for explanations: %d of %d" % (
                total, count)
            time.sleep(0.01)
    return got


def test_shard_daemons_explain_fused_batches_like_one_daemon():
    started = []
    pubs = []
    try:
        shard_d = [Daemon("--shard", "%d/%d" % (k, NS), "--methods", METHODS) for k in range(NS)]
        started += shard_d
        single = Daemon("--methods", METHODS)
        started.append(single)
        subs = {k: d.subscriber(b"xpl/") for k, d in enumerate(shard_d)}
        subs["single"] = single.subscriber(b"xpl/")
        # Join: a probe trade per shard (and one for the single daemon)
        # until each daemon's explanation of it reached this test.
        probe = Publisher("__probe", connect=[d.ingest for d in shard_d], tokens=["a", "b"], cls=-1,
                          shards=NS)
        probe1 = Publisher("__probe", connect=single.ingest, tokens=["a", "b"], cls=-1)
        pubs += [probe, probe1]
        assert probe.wait_subscriber(20) and probe1.wait_subscriber(20), "probe publishers not joined"
        pid = {}
        for k in range(NS):
            pid[k] = next(i for i in range(10 ** 6, 10 ** 6 + 100) if shard_of(i, NS) == k)
        pid["single"] = 1
        pa = np.full((1, 1, 2, 2), 0.5, dtype=np.float32)
        joined = set()
        deadline = time.monotonic() + 30
        while len(joined) < len(subs):
            assert time.monotonic() < deadline, "no probe explanation from %s" % (set(subs) - joined)
            for k in subs:
                if k not in joined:
                    (probe1 if k == "single" else probe).send(pa, ids=[pid[k]])
            t_end = time.monotonic() + 0.3
            while time.monotonic() < t_end and len(joined) < len(subs):
                for k, s in subs.items():
                    while s.poll(10):
                        _, body = s.recv_multipart()
                        m = msgpack.unpackb(body)
                        assert m["model"] == "__probe", "unexpected %r while joining" % m["model"]
                        assert m["id"] == pid[k], "daemon %s explained probe %r" % (k, m["id"])
                        joined.add(k)

        sharded = Publisher("sf", connect=[d.ingest for d in shard_d], tokens=TOKENS, cls=3,
                            shards=NS, fused=True, fused_signed=True, batch=4, delay=0.05)
        plain = Publisher("sf", connect=single.ingest, tokens=TOKENS, cls=3)
        pubs += [sharded, plain]
        assert sharded.wait_subscriber(20) and plain.wait_subscriber(20), "publishers not joined"
        N = 37
        A, G = trades(13, N)
        ids = [("x-%d" % i) if i % 2 else 7000 + i for i in range(N)]
        i = 0
        for size in [1, 3, 1, 1, 5, 2, 1, 4, 6, 1, 2, 3, 7]:
            sl = slice(i, i + size)
            sharded.send(A[sl], grad=G[sl], ids=ids[sl], y=0.5, targets=CLASSES)
            plain.send(A[sl], grad=G[sl], ids=ids[sl], y=0.5, targets=CLASSES)
            i += size
        assert i == N
        sharded.flush()
        keys = [(t, c) for t in ids for c in CLASSES]
        got = collect(subs, 2 * len(keys))
        assert sorted(got, key=repr) == sorted(keys, key=repr)
        for key in keys:
            names = sorted(str(name) for name, _ in got[key])
            owner = shard_of(key[0], NS)
            assert names == sorted([str(owner), "single"]), \
                "trade %r target %d explained by %s, owner shard %d" % (key[0], key[1], names, owner)
            by = dict(got[key])
            want, have = by["single"]["attr"], by[owner]["attr"]
            assert set(want) == set(METHODS.split(",")), want.keys()
            assert set(have) == set(want), (key, have.keys())
            for meth in want:
                # The full form sums G*A over heads in double; the fused
                # form's fgrad_signed arrives as float32 head means, whose
                # rounding the readout can amplify where values cancel
                # (core/MATH.md, "Precision"): 1e-5 there, as against the
                # float64 reference.
                tol = 1e-5 if meth == "grad_rollout_signed" else 1e-6
                assert_close(have[meth], want[meth], tol, what="trade %r %s" % (key, meth))
        for k, d in enumerate(shard_d):
            st = d.stats()
            assert st["counters"]["rejected"] == 0, (k, st["rejected"])
            model = {m["model"]: m for m in st["models"]}["sf"]
            assert model["explained"] == sum(1 for t in ids if shard_of(t, NS) == k), (k, model)
        assert all(sharded.seqs), "a shard had no message: %s" % sharded.seqs
    finally:
        for p in pubs:
            p.close(0)
        for d in started:
            if d.proc.poll() is None:
                d.stop()
