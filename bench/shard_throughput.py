"""Aggregate throughput of 1 and 2 shard daemons (README, "Sharding").

A publisher (plain pyzmq, messages encoded once beforehand) binds a PUB and
sends the tab32 workload (L=4, H=8, n=32, f32, with a gradient: 256 KiB
per trade) for one model, split by trade id over N shards on the topics
shard/<K>/<N>/attn/m1; N daemons (--shard K/N, --ingest-connect) explain
their share. The publisher sends as fast as ZeroMQ takes the messages
(PUB drops past the high-water mark: what counts is what the daemons
explained). Throughput = trades explained by all shards per second of wall
time, over the measuring window after a warm-up, and the CPU seconds the
daemons used per second (from /proc). Repeated, alternating N, medians.

Every process (publisher and daemons) shares this machine's cores: with 2
cores, 2 shards and a publisher compete for them, which bounds what the
second shard can add; the report says how many cores there are.

usage: /usr/bin/python3 bench/shard_throughput.py [--xplaind PATH] [--seconds S] [--reps R] [--batch B]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import msgpack
import numpy as np
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "client", "python"))
from xplain.shard import shard_of, shard_prefix  # noqa: E402

L, H, N_TOK = 4, 8, 32


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def messages(nshards, batch, count=64):
    """Pre-encoded messages per shard: (topic, body-without-seq parts)."""
    rng = np.random.default_rng(1)
    a = rng.random((batch, L, H, N_TOK, N_TOK), dtype=np.float32)
    a /= a.sum(-1, keepdims=True)
    g = rng.standard_normal(a.shape).astype(np.float32)
    attn, grad = a.tobytes(), g.tobytes()
    tokens = [f"f{j}" for j in range(N_TOK - 1)] + ["CLS"]
    per = {k: [] for k in range(nshards)}
    i = 0
    while min(len(v) for v in per.values()) < count * batch:
        per[shard_of(i, nshards)].append(i)
        i += 1
    out = {}
    for k in range(nshards):
        topic = (shard_prefix(k, nshards) if nshards > 1 else b"") + b"attn/m1"
        bodies = []
        for j in range(count):
            ids = per[k][j * batch:(j + 1) * batch]
            bodies.append({"v": 1, "model": "m1", "ts": 0, "ids": ids, "L": L, "H": H, "n": N_TOK,
                           "dtype": "f32", "attn": attn, "grad": grad, "cls": N_TOK - 1,
                           "tokens": tokens, "target": [0] * batch})
        out[k] = (topic, bodies)
    return out


def run(xplaind, nshards, seconds, batch):
    tmp = tempfile.mkdtemp(prefix="xplbench-")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 64)
    ep = f"ipc://{tmp}/in"
    pub.bind(ep)
    procs, reqs = [], []
    try:
        for k in range(nshards):
            args = [xplaind, "--ingest-connect", ep, "--publish", f"ipc://{tmp}/p{k}",
                    "--query", f"ipc://{tmp}/q{k}", "--log-level", "warning",
                    "--methods", "rollout,grad_rollout,first_layer,attn_mean"]
            if nshards > 1:
                args += ["--shard", f"{k}/{nshards}"]
            procs.append(subprocess.Popen(args, stderr=subprocess.DEVNULL))
            r = ctx.socket(zmq.REQ)
            r.setsockopt(zmq.RCVTIMEO, 10000)
            r.connect(f"ipc://{tmp}/q{k}")
            reqs.append(r)

        def explained():
            total = 0
            for r in reqs:
                r.send(msgpack.packb({"v": 1, "op": "stats"}))
                total += msgpack.unpackb(r.recv())["counters"]["explained"]
            return total

        # Encoded once, seq 0..count-1 per shard: when the cycle starts
        # again a daemon counts a publisher restart and goes on (the cost
        # of encoding is the publisher's, not what is measured here).
        msgs = messages(nshards, batch)
        encoded = {}
        for k, (t, bodies) in msgs.items():
            encoded[k] = []
            for j, b in enumerate(bodies):
                b["seq"] = j
                encoded[k].append((t, zmq.Frame(msgpack.packb(b))))

        def send_for(secs):
            end = time.monotonic() + secs
            j = 0
            while time.monotonic() < end:
                for k, lst in encoded.items():
                    topic, frame = lst[j % len(lst)]
                    pub.send_multipart([topic, frame], copy=False)
                j += 1

        send_for(1.5)                   # warm-up: subscriptions in, caches grown
        e0, t0 = explained(), time.monotonic()
        c0 = sum(cpu_seconds(p.pid) for p in procs)
        send_for(seconds)
        e1, t1 = explained(), time.monotonic()
        c1 = sum(cpu_seconds(p.pid) for p in procs)
        return (e1 - e0) / (t1 - t0), (c1 - c0) / (t1 - t0)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
        ctx.destroy(0)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--xplaind", default=os.path.join(HERE, "..", "build", "daemon", "xplaind"))
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    res = {1: [], 2: []}
    for _ in range(a.reps):
        for n in (1, 2):
            res[n].append(run(a.xplaind, n, a.seconds, a.batch))
    print(f"tab32, B={a.batch}, {os.cpu_count()} cores, {a.reps} runs of {a.seconds:g} s each, medians")
    print("| shards | trades/s (all shards) | daemon CPU s per s |")
    print("|---|---|---|")
    for n in (1, 2):
        print(f"| {n} | {statistics.median(r[0] for r in res[n]):.0f} | "
              f"{statistics.median(r[1] for r in res[n]):.2f} |")
    one, two = statistics.median(r[0] for r in res[1]), statistics.median(r[0] for r in res[2])
    print(f"2 shards / 1 shard: {two / one:.2f}x")


if __name__ == "__main__":
    main()
