"""End to end: one daemon in the event-time modes, against a float64
account kept here from what it published.

--decay-half-life-s: every "decayed" of the `global` reply (overall and per
class) is sum w x / sum w with w = 2^((ts - newest)/h) over the per-trade
vectors the daemon published on xpl/, within 1e-9 relative (the vectors
come back as float32, exactly what the daemon added).
--drift-window-s / --drift-lateness-s: drift/ reports one window per
second of ts that holds trades, with "window" = start / 1 s and "trades"
= the trades of that second; a trade that comes more than the lateness
after a newer one is counted as late (drift stats) and changes no window.
Trades arrive out of order within the lateness, so the windows do not
depend on the order of arrival.
--segment-by desk (trades tagged desk=d<target>): each segment has the
same modes over its own trades: its drift/m1/<segment> windows hold its
trades of each second (closed by its own trades' watermark), its decayed mean is its own trades' by ts, and
the late trade is late in its segment only. Every window, overall or of
a segment, carries the drift mode's verdict and what moved.
"""
import time

import msgpack
import numpy as np

from xpltest import Daemon, join, wait_until

T0 = 1_796_169_600 * 10 ** 9
SEC = 10 ** 9
HALF = 2.5


def test_event_time_decay_and_windows():
    d = Daemon("--decay-half-life-s", str(HALF), "--drift-window-s", "1", "--drift-lateness-s", "0.5",
               "--methods", "rollout,attn_mean", "--glob-interval-ms", "100",
               "--segment-by", "desk")
    try:
        sub = d.subscriber(b"xpl/m1")
        sub.subscribe(b"drift/m1")
        pub = d.publisher()
        rng = np.random.default_rng(3)
        L, H, n = 2, 2, 4
        tokens = ["a", "b", "c", "CLS"]
        sent = []
        seq = 0

        def send(ts, target):
            nonlocal seq
            A = rng.random((1, L, H, n, n)).astype(np.float32)
            A /= A.sum(-1, keepdims=True)
            pub.send_multipart([b"attn/m1", msgpack.packb({
                "v": 1, "model": "m1", "seq": seq, "ts": ts, "ids": [seq], "L": L, "H": H, "n": n,
                "dtype": "f32", "attn": A.astype("<f4").tobytes(), "cls": n - 1, "tokens": tokens,
                "target": [target], "tags": {"desk": "d%d" % target}})])
            sent.append((seq, ts, target))
            seq += 1

        join(d, pub, sub)   # sub too: the first explanation must not meet a slow joiner
        send(T0, 0)
        # 12 s of trades, 20 a second, each up to 0.4 s older than the newest.
        newest = T0
        for i in range(1, 240):
            ts = T0 + i * SEC // 20 - int(rng.uniform(0, 0.4) * SEC)
            ts = max(ts, newest - SEC * 4 // 10)
            newest = max(newest, ts)
            send(ts, i % 2)
        send(newest - 2 * SEC, 1)                   # late: its window has closed
        send(newest + 3 * SEC, 0)                   # closes every window before it
        total = len(sent)
        wait_until(lambda: d.query("global", model="m1").get("count") == total, 20, "all trades counted")

        ts_of = {i: ts for i, ts, _ in sent}
        target_of = {i: t for i, _, t in sent}
        vec, drift = {}, []
        end = time.monotonic() + 3
        while time.monotonic() < end and (len(vec) < total or not drift):
            if not sub.poll(100):
                continue
            t, b = sub.recv_multipart()
            b = msgpack.unpackb(b)
            if t == b"xpl/m1":
                vec[b["id"]] = {m: np.asarray(v, dtype=np.float32).astype(np.float64) for m, v in b["attr"].items()}
            elif t.startswith(b"drift/"):
                drift.append(b)
        end = time.monotonic() + 1
        while time.monotonic() < end:
            if sub.poll(100):
                t, b = sub.recv_multipart()
                if t.startswith(b"drift/"):
                    drift.append(msgpack.unpackb(b))
        assert len(vec) == total, f"{len(vec)} explanations of {total}"

        g = d.query("global", model="m1")
        newest_all = max(ts_of.values())
        for meth in ("rollout", "attn_mean"):
            for target in (None, 0, 1):
                ids = [i for i in vec if target is None or target_of[i] == target]
                w = np.array([2.0 ** ((ts_of[i] - newest_all) / (HALF * SEC)) for i in ids])
                x = np.array([vec[i][meth] for i in ids])
                want = (w[:, None] * x).sum(0) / w.sum()
                if target is None:
                    got = g["methods"][meth]["decayed"]
                else:
                    got = next(t for t in g["targets"] if t["target"] == target)["methods"][meth]["decayed"]
                np.testing.assert_allclose(got, want, rtol=1e-9, atol=0,
                                           err_msg=f"{meth} target {target} decayed")
                np.testing.assert_allclose(
                    g["methods"][meth]["mean"] if target is None else
                    next(t for t in g["targets"] if t["target"] == target)["methods"][meth]["mean"],
                    x.mean(0), rtol=1e-9, atol=0)

        # Windows: one per second holding trades, the late trade in none;
        # a segment's: one per second holding trades of that segment, closed
        # by the watermark of its own trades (a quiet segment's last
        # window stays open until its next trade).
        late_id = total - 2
        for seg in (None, 0, 1):
            newest_seg = max(ts for _, ts, target in sent if seg in (None, target))
            last_closed = (newest_seg - SEC // 2) // SEC         # windows below it are closed
            by_window = {}
            for i, ts, target in sent:
                if i != late_id and ts < newest + 3 * SEC and seg in (None, target):
                    by_window.setdefault(ts // SEC, []).append(i)
            want = {k: len(v) for k, v in by_window.items() if k < last_closed}
            label = None if seg is None else "desk=d%d" % seg
            seqs = sorted(b["seq"] for b in drift if b.get("segment") == label)
            assert seqs == list(range(len(seqs))), f"{label}: a seq of its own on its topic"
            for meth in ("rollout", "attn_mean"):
                mine = [b for b in drift if b["method"] == meth and b.get("segment") == label]
                got = {b["window"]: b["trades"] for b in mine}
                assert got == want, f"{label} {meth}: windows {sorted(got.items())[:4]}..., want {sorted(want.items())[:4]}..."
                for b in mine:
                    assert b["verdict"]["mode"] == "fixed" and "moved" in b, b
        dq = d.query("drift", model="m1")
        assert dq["ok"]
        for meth in ("rollout", "attn_mean"):
            assert dq["methods"][meth]["late"] == 1, dq["methods"][meth]
        for seg in (0, 1):
            dq = d.query("drift", model="m1", segment="desk=d%d" % seg)
            assert dq["ok"], dq
            late = 1 if target_of[late_id] == seg else 0
            for meth in ("rollout", "attn_mean"):
                assert dq["methods"][meth]["late"] == late, (seg, dq["methods"][meth])
            gs = d.query("global", model="m1", segment="desk=d%d" % seg)
            assert gs["ok"], gs
            ids = [i for i in vec if target_of[i] == seg]
            assert gs["count"] == len(ids)
            w = np.array([2.0 ** ((ts_of[i] - newest_all) / (HALF * SEC)) for i in ids])
            for meth in ("rollout", "attn_mean"):
                x = np.array([vec[i][meth] for i in ids])
                np.testing.assert_allclose(gs["methods"][meth]["decayed"], (w[:, None] * x).sum(0) / w.sum(),
                                           rtol=1e-9, atol=0, err_msg=f"desk=d{seg} {meth} decayed")
    finally:
        d.stop()

