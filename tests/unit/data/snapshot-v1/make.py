"""Write the format-1 snapshot fixture beside this file, with what the
daemon that wrote it reported about it.

Run once, with the daemon of the commit that still wrote format 1 (e6e12e9,
the parent of the first commit that adds this directory):
    XPL_BUILD_DIR=build /usr/bin/python3 tests/unit/data/snapshot-v1/make.py
It leaves state.msgpack (the snapshot, as written at SIGTERM) and
replies.json (the daemon's own global, drift, models and stats replies,
queried after the last trade and before the stop, with nothing changing
in between). tests/unit/test_state.c loads the snapshot with today's code
and compares what it restores with those replies; the fixture is
committed so that a later format change cannot make it vanish.

What it holds: model "alpha" (N=5, five methods, grad sent for every
other trade, targets 0..2, drift window 10: a baseline, compared windows,
alerts, an open window; an external reference on first_layer and a pinned
baseline on rollout) and model "beta" in two schema epochs (N=4, then
N=6), with no targets.
"""
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", ".."))

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402

from xpltest import Daemon, join, random_attention, wait_until  # noqa: E402

L, H = 2, 2
METHODS = "rollout,grad_rollout,first_layer,attn_mean,diag"


def send(pub, sub, model, seq, n, rng, target=None, grad=False):
    A = random_attention(rng, (1, L, H, n, n), temp=2.0)
    body = {"v": 1, "model": model, "seq": seq, "ts": time.time_ns(), "ids": [seq], "L": L,
            "H": H, "n": n, "dtype": "f32", "attn": A.astype("<f4").tobytes(), "cls": n - 1,
            "tokens": [f"t{k}" for k in range(n)]}
    if target is not None:
        body["target"] = [target]
    if grad:
        G = rng.standard_normal((1, L, H, n, n)).astype("<f4")
        body["grad"] = G.tobytes()
    pub.send_multipart([f"attn/{model}".encode(), msgpack.packb(body)])
    msg = msgpack.unpackb(sub.recv_multipart()[1])
    assert msg["seq"] == seq or msg.get("ids") == [seq], msg


def main():
    rng = np.random.default_rng(12)
    state = tempfile.mkdtemp(prefix="xplsnap-")
    d = Daemon("--state-dir", state, "--methods", METHODS, "--drift-window", "10",
               "--half-life", "20", "--max-targets", "2", "--alerts-kept", "5",
               "--snapshot-interval", "86400")
    try:
        pub = d.publisher()
        sub = d.subscriber(b"xpl/")
        heads = d.subscriber(b"heads/")
        join(d, pub, sub)
        seq = 0
        for k in range(23):
            send(pub, sub, "alpha", seq, 5, rng, target=k % 3, grad=k % 2 == 0)
            seq += 1
        ok = d.query("baseline", model="alpha", method="rollout", action="pin")
        assert ok["ok"], ok
        ok = d.query("reference", model="alpha", method="first_layer",
                     values=[0.5, 0.25, 0.125, 0.125])
        assert ok["ok"], ok
        for k in range(23, 47):
            send(pub, sub, "alpha", seq, 5, rng, target=k % 3, grad=k % 2 == 0)
            seq += 1
        for k in range(14):
            send(pub, sub, "beta", k, 4, rng)
        for k in range(14, 27):
            send(pub, sub, "beta", k, 6, rng)
        pub.close(linger=0)
        sub.close(linger=0)
        wait_until(lambda: d.query("global", model="alpha").get("count") == 47,
                   what="alpha's 47 trades in the global state")
        replies = {}
        # global publishes a changed state before it answers (Clone): query
        # every model first so that what follows changes nothing.
        for m in ("alpha", "beta"):
            d.query("global", model=m)
        for m, epochs in (("alpha", [1]), ("beta", [1, 2])):
            for e in epochs:
                replies[f"global/{m}/{e}"] = d.query("global", model=m, epoch=e)
                replies[f"drift/{m}/{e}"] = d.query("drift", model=m, epoch=e)
        # The last heads/ of each model is its head statistics now.
        heads.setsockopt(zmq.RCVTIMEO, 2000)
        while True:
            try:
                msg = msgpack.unpackb(heads.recv_multipart()[1])
            except zmq.Again:
                break
            replies[f"heads/{msg['model']}/{msg['epoch']}"] = msg
        heads.close(linger=0)
        assert "heads/alpha/1" in replies and "heads/beta/2" in replies, list(replies)
        replies["models"] = d.query("models")
        st = d.query("stats")
        replies["stats"] = {"models": st["models"]}
        snapshots = d.stats()["counters"]["snapshots"]
        log = d.stop()
        assert "snapshot written" in log, log
        for k, v in replies.items():
            assert v.get("ok", True), (k, v)
        replies["_snapshots_before_stop"] = snapshots
        replies["_params"] = {"half_life": 20.0, "window": 10, "max_targets": 2,
                              "alerts_kept": 5, "methods": METHODS}
        shutil.copyfile(os.path.join(state, "state.msgpack"), os.path.join(HERE, "state.msgpack"))
        with open(os.path.join(HERE, "replies.json"), "w") as f:
            json.dump(replies, f, indent=1, sort_keys=True,
                      default=lambda b: b.hex() if isinstance(b, bytes) else str(b))
            f.write("\n")
        # The same replies as msgpack, for the C test (no JSON parser there).
        with open(os.path.join(HERE, "replies.msgpack"), "wb") as f:
            f.write(msgpack.packb(replies))
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print("wrote", HERE)


if __name__ == "__main__":
    main()
