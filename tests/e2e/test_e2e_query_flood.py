"""End to end: query load never makes ingest lose trades.

A model publisher (default send high-water mark, as a real one has)
streams trades at a rate the daemon sustains easily, while query clients
flood the query socket at the same time:

  - requests of 15 MiB (a msgpack map whose padding takes long to walk),
    far over query.max_size: each answered with a clear bad_request and
    counted in query_too_large, without being parsed;
  - `trade` queries of a large cached trade with on-demand flow and the
    full matrices, whose work runs off the main loop (the reply checked
    against the float64 reference first);
  - many small `stats` queries.

Every trade sent must be explained and none lost (the daemon's `lost`
counter stays 0), every query answered. The test waits for conditions
with deadlines; the rate is low enough for a loaded 2-core machine.

Run by Debian's /usr/bin/python3 (python3-zmq, python3-msgpack, python3-numpy).
"""
import os
import sys
import threading
import time

import msgpack
import numpy as np
import zmq

from xpltest import Daemon, assert_close, close_context, join, model_info, random_attention, ref, wait_until

RATE = float(os.environ.get("XPL_FLOOD_RATE", "1000"))       # messages per second
COUNT = int(os.environ.get("XPL_FLOOD_COUNT", "6000"))       # messages (one trade each)
BIG_QUERIES = int(os.environ.get("XPL_FLOOD_BIG", "200"))    # 15 MiB requests
BIG_N, BIG_L = 256, 4                                        # the large cached trade


def small_message(seq, A):
    return [b"attn/qf", msgpack.packb({
        "v": 1, "model": "qf", "seq": seq, "ts": time.time_ns(), "ids": [seq], "L": 2, "H": 2,
        "n": 6, "dtype": "f32", "attn": A.tobytes(), "cls": 5, "tokens": list("abcdeC")})]


def big_message(rng):
    A = random_attention(rng, (1, BIG_L, 1, BIG_N, BIG_N)).astype("<f4")
    G = rng.standard_normal((1, BIG_L, 1, BIG_N, BIG_N)).astype("<f4")
    return A[0], G[0], [b"attn/big", msgpack.packb({
        "v": 1, "model": "big", "seq": 0, "ts": 1, "ids": ["big-1"], "L": BIG_L, "H": 1,
        "n": BIG_N, "dtype": "f32", "attn": A.tobytes(), "grad": G.tobytes(), "cls": 0,
        "tokens": [f"t{k}" for k in range(BIG_N)]})]


def check_big_trade(d, A, G):
    """The large trade's reply (built by the daemon's worker thread) is
    what the float64 reference says."""
    rep = d.query("trade", model="big", id="big-1", flow=True)
    assert rep["ok"], rep
    n = BIG_N
    R = np.frombuffer(rep["matrices"]["rollout"], dtype="<f4").reshape(n, n)
    assert_close(R, ref.rollout_matrix(A), rel=1e-4, what="large trade rollout matrix")
    Rg = np.frombuffer(rep["matrices"]["grad_rollout"], dtype="<f4").reshape(n, n)
    assert_close(Rg, ref.grad_rollout_matrix(A, G), rel=1e-4, what="large trade grad matrix")
    want = ref.methods(A, G, 0)
    assert set(rep["attr"]) == {"rollout", "grad_rollout", "first_layer", "attn_mean", "flow"}, rep["attr"].keys()
    for m, v in rep["attr"].items():
        if m != "flow":
            assert_close(v, want[m], rel=1e-4, what=f"large trade attr {m}")
    f = np.array(rep["attr"]["flow"])
    assert f.shape == (n - 1,) and np.isfinite(f).all() and (f >= 0).all(), f
    assert rep["features"] == [f"t{k}" for k in range(1, n)] and rep["L"] == BIG_L


def stream(d, ctx, done, out):
    """Publish COUNT messages at RATE per second (paced on the clock)."""
    pub = ctx.socket(zmq.PUB)
    # Closing must not discard what is still queued here: with a small
    # ingest.rcvhwm a daemon that lags (both cores busy) leaves the
    # backlog in the publisher, and the last messages of a stream have no
    # later seq to reveal them as lost.
    pub.setsockopt(zmq.LINGER, -1)
    pub.connect(d.ingest)
    join(d, pub, model="__probe_qf")
    A = random_attention(np.random.default_rng(3), (1, 2, 2, 6, 6)).astype("<f4")
    t0 = time.monotonic()
    for seq in range(COUNT):
        lag = t0 + seq / RATE - time.monotonic()
        if lag > 0:
            time.sleep(lag)
        pub.send_multipart(small_message(seq, A))
    out["send_s"] = time.monotonic() - t0
    done.set()
    pub.close()


def big_queries(d, ctx, body, out):
    """BIG_QUERIES requests of 15 MiB, ten in flight at a time."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 60000)
    s.connect(d.query_ep)
    codes = {}
    for k in range(0, BIG_QUERIES, 10):
        n = min(10, BIG_QUERIES - k)
        for _ in range(n):
            s.send_multipart([b"", body], copy=False)
        for _ in range(n):
            rep = msgpack.unpackb(s.recv_multipart()[-1])
            codes[rep.get("code")] = codes.get(rep.get("code"), 0) + 1
            out.setdefault("big_error", rep.get("error"))
    out["big_codes"] = codes
    s.close()


def trade_queries(d, ctx, done, out):
    """`trade` with flow on the large trade, and `stats`, until the stream ends."""
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 120000)
    s.connect(d.query_ep)
    trades = stats = 0
    flows = set()
    while not done.is_set() or trades < 3:
        s.send(msgpack.packb({"v": 1, "op": "trade", "model": "big", "id": "big-1", "flow": True}))
        rep = msgpack.unpackb(s.recv())
        assert rep["ok"], rep
        assert len(rep["matrices"]["rollout"]) == BIG_N * BIG_N * 4
        flows.add(tuple(rep["attr"]["flow"]))
        trades += 1
        for _ in range(20):
            s.send(msgpack.packb({"v": 1, "op": "stats"}))
            assert msgpack.unpackb(s.recv())["ok"]
            stats += 1
    out.update(trades=trades, stats=stats, flows=len(flows))
    s.close()


def test_query_flood_loses_no_trade():
    # Enough cache entries that the streamed trades never push the large one out.
    d = Daemon("--log-level", "notice", "--cache-entries", str(COUNT + 1000))
    ctx = zmq.Context()
    try:
        rng = np.random.default_rng(1)
        pub = d.publisher()
        join(d, pub, model="__probe_big")
        A, G, msg = big_message(rng)
        pub.send_multipart(msg)
        wait_until(lambda: (model_info(d, "big") or {}).get("explained") == 1, timeout=60,
                   what="the large trade to be explained")
        check_big_trade(d, A, G)
        pad = msgpack.packb({"v": 1, "op": "ping", "pad": [0] * (15 << 20)})
        assert len(pad) >= 15 << 20
        c0 = d.stats()["counters"]
        done = threading.Event()
        out = {}
        threads = [threading.Thread(target=stream, args=(d, ctx, done, out)),
                   threading.Thread(target=big_queries, args=(d, ctx, pad, out)),
                   threading.Thread(target=trade_queries, args=(d, ctx, done, out))]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0

        def settled():
            m = model_info(d, "qf")
            return m and m["explained"] + m["lost"] >= COUNT
        wait_until(settled, timeout=120, what=f"the {COUNT} streamed trades to be explained or lost")
        m = model_info(d, "qf")
        c = d.stats()["counters"]
        print(f"  {COUNT} trades at {RATE:.0f}/s (sent in {out['send_s']:.1f} s) under "
              f"{BIG_QUERIES} requests of {len(pad) >> 20} MiB {out['big_codes']}, "
              f"{out['trades']} flow trade queries, {out['stats']} stats queries ({wall:.1f} s): "
              f"explained {m['explained']}, lost {m['lost']}, "
              f"query_too_large +{c.get('query_too_large', 0) - c0.get('query_too_large', 0)}")
        assert m["lost"] == 0 and c["lost"] == c0["lost"], (m, c)
        assert m["explained"] == COUNT, m
        assert out["flows"] == 1, "the on-demand flow of one trade changed between queries"
        assert out["big_codes"] == {"bad_request": BIG_QUERIES}, out["big_codes"]
        assert "query.max_size" in out["big_error"], out["big_error"]
        assert c["query_too_large"] - c0["query_too_large"] == BIG_QUERIES, c
        assert d.query("ping")["ok"]
    finally:
        close_context(ctx)
        d.stop()
