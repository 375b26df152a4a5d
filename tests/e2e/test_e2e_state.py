"""End to end: durable state.

The daemon is stopped with SIGTERM in the middle of a stream and
restarted: the restored global state must equal what was ingested
exactly. Then with kill -9: the restored state must be that of a prefix
of the stream no more than one snapshot interval old. A corrupt or
truncated snapshot must be reported clearly, moved aside, and the daemon
must start fresh.
"""
import glob
import os
import subprocess
import sys
import tempfile
import time

import msgpack
import numpy as np
import pytest

from xpltest import XPLAIND, Daemon, assert_close, join, random_attention, wait_until

L, H, N = 2, 2, 5


class StatefulDaemon(Daemon):
    """A daemon on a fixed state directory, restartable."""

    def __init__(self, state_dir, *args):
        super().__init__("--state-dir", state_dir, *args)


def stream(d, model, start, count, rng, vectors, rate=None):
    pub = d.publisher()
    sub = d.subscriber(f"xpl/{model}".encode())
    join(d, pub, sub)
    for k in range(start, start + count):
        A = random_attention(rng, (1, L, H, N, N), temp=2.0)
        body = {"v": 1, "model": model, "seq": k, "ts": time.time_ns(), "ids": [k], "L": L,
                "H": H, "n": N, "dtype": "f32", "attn": A.astype("<f4").tobytes(),
                "cls": N - 1, "tokens": list("abcdC"), "target": [k % 2]}
        pub.send_multipart([f"attn/{model}".encode(), msgpack.packb(body)])
        msg = msgpack.unpackb(sub.recv_multipart()[1])
        vectors.append({m: np.array(v, np.float32).astype(np.float64) for m, v in msg["attr"].items()})
        if rate:
            time.sleep(1.0 / rate)
    pub.close(linger=0)
    sub.close(linger=0)


def check_prefix(g, vectors, count):
    assert g["count"] == count, (g["count"], count)
    for m, st in g["methods"].items():
        xs = np.array([v[m] for v in vectors[:count]])
        assert st["count"] == count
        assert_close(st["mean"], xs.mean(axis=0), 1e-9, what=f"{m} mean")
        assert_close(st["std"], xs.std(axis=0, ddof=1), 1e-7, what=f"{m} std")


@pytest.fixture
def state_dir(tmp_dir):
    return tmp_dir


@pytest.fixture
def snapshot_dir(state_dir):
    """A state directory holding a good snapshot (150 trades of s1 and a
    reference, written at SIGTERM)."""
    d = StatefulDaemon(state_dir)
    stream(d, "s1", 0, 150, np.random.default_rng(1), [])
    d.query("reference", model="s1", method="rollout", values=[4, 3, 2, 1])
    assert "snapshot written" in d.stop()
    return state_dir


def test_sigterm_restores_exactly(state_dir):
    rng = np.random.default_rng(1)
    vectors = []
    d = StatefulDaemon(state_dir)
    stream(d, "s1", 0, 150, rng, vectors)
    d.query("reference", model="s1", method="rollout", values=[4, 3, 2, 1])
    log = d.stop()
    assert "snapshot written" in log
    d = StatefulDaemon(state_dir)
    try:
        g = d.query("global", model="s1")
        assert g["ok"], g
        check_prefix(g, vectors, 150)
        assert g["methods"]["rollout"]["reference"] == [4, 3, 2, 1]
        m = [x for x in d.query("models")["models"] if x["model"] == "s1"][0]
        assert m["explained"] == 150 and m["last_seq"] == 149 and m["epoch"] == 1
        # The stream goes on where it stopped: no restart, no loss counted.
        stream(d, "s1", 150, 50, rng, vectors)
        g = d.query("global", model="s1")
        check_prefix(g, vectors, 200)
        m = [x for x in d.query("models")["models"] if x["model"] == "s1"][0]
        assert m["lost"] == 0 and m["restarts"] == 0, m
    finally:
        d.stop()


def test_kill9_loses_at_most_one_interval(state_dir):
    rng = np.random.default_rng(2)
    vectors = []
    d = StatefulDaemon(state_dir, "--snapshot-interval", "1")
    stream(d, "k9", 0, 120, rng, vectors, rate=100)
    # At least one snapshot after the last trade. Snapshots are written in
    # the daemon's loop, and only when something changed: probe trades
    # after the 120 make sure one more comes, and it includes them...
    wait_until(lambda: d.query("global", model="k9").get("count") == 120,
               what="the 120 trades in the global state")
    snapshots = d.stats()["counters"]["snapshots"]
    probe = d.publisher()
    join(d, probe, model="__tick")
    probe.close(linger=0)
    wait_until(lambda: d.stats()["counters"]["snapshots"] > snapshots, timeout=30,
               what="a snapshot after the 120th trade")
    stream(d, "k9", 120, 30, rng, vectors)   # ...then more, which may be lost
    d.kill()
    d = StatefulDaemon(state_dir)
    try:
        g = d.query("global", model="k9")
        assert g["ok"], g
        count = g["count"]
        assert 120 <= count <= 150, count
        check_prefix(g, vectors, count)
    finally:
        d.stop()


def test_corrupt_snapshot(snapshot_dir):
    state_dir = snapshot_dir
    path = os.path.join(state_dir, "state.msgpack")
    good = open(path, "rb").read()
    variants = {
        "truncated": good[:len(good) // 2],
        "flipped byte": good[:100] + bytes([good[100] ^ 0x40]) + good[101:],
        "not a snapshot": b"hello world, certainly not msgpack",
        "empty": b"",
    }
    for f in glob.glob(path + ".corrupt-*"):
        os.unlink(f)
    # Each unusable snapshot is kept, none over another (the names carry
    # the second, and these come quicker than one a second).
    for i, (name, data) in enumerate(variants.items()):
        with open(path, "wb") as f:
            f.write(data)
        d = StatefulDaemon(state_dir)
        try:
            assert d.query("models")["models"] == [], name
            assert d.query("ping")["ok"]
        finally:
            log = d.stop()
        assert "is unusable" in log and "moved it to" in log and "starting fresh" in log, (name, log)
        aside = sorted(glob.glob(path + ".corrupt-*"))
        kept = [open(f, "rb").read() for f in aside]
        assert len(aside) == i + 1 and data in kept, (name, aside)


def test_unwritable_state_dir_is_reported():
    with tempfile.TemporaryDirectory() as tmp:
        blocker = os.path.join(tmp, "file")
        open(blocker, "w").close()
        p = subprocess.run([XPLAIND, "--demo", "--state-dir", os.path.join(blocker, "sub"),
                            "--publish", f"ipc://{tmp}/p", "--query", f"ipc://{tmp}/q"],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 1 and "state: cannot create" in p.stderr, (p.returncode, p.stderr)
