"""Consumer (c) of the benchmark: what a user would write in Python without
xplaind. Subscribes to attn/, decodes each message with msgpack and numpy,
and computes the five per-trade methods of MATH.md (rollout, grad_rollout,
first_layer, attn_mean, diag) with numpy, vectorised over the batch.

Run by Debian's /usr/bin/python3 (python3-zmq, python3-msgpack,
python3-numpy). Protocol with the harness (bench_xplain): prints READY
after the first message, counts trades whose id is >= BASE (the measured
phase), stops after `expect` of them or 2 s of silence, and prints one
RESULT line.

    py_consumer.py ENDPOINT EXPECT RCVHWM
"""
import sys
import time

import msgpack
import numpy as np
import zmq

BASE = 1 << 40
DT = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "bf16": None}


def tensor(buf, dtype, shape):
    if dtype == "bf16":
        u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
        return u.view(np.float32).reshape(shape)
    return np.frombuffer(buf, dtype=DT[dtype]).astype(np.float32, copy=False).reshape(shape)


def readout(M, cls):
    """M: (B, n, n) -> (B, nf): row cls without column cls, or column mean."""
    if cls >= 0:
        return np.delete(M[:, cls, :], cls, axis=1)
    return M.mean(axis=1)


def explain(msg):
    B, L, H, n = len(msg["ids"]), msg["L"], msg["H"], msg["n"]
    cls = msg.get("cls", -1)
    A = tensor(msg["attn"], msg["dtype"], (B, L, H, n, n))
    eye = np.eye(n, dtype=np.float32)
    out = {}
    Am = A.mean(axis=2)                                  # (B, L, n, n) head mean
    Ah = Am + eye
    Ah /= Ah.sum(axis=-1, keepdims=True)
    R = Ah[:, 0]
    for layer in range(1, L):
        R = Ah[:, layer] @ R
    out["rollout"] = readout(R, cls)
    if msg.get("grad") is not None:
        G = tensor(msg["grad"], msg["dtype"], (B, L, H, n, n))
        Ab = np.maximum(G * A, 0).mean(axis=2)           # clamp, then head mean
        R = np.broadcast_to(eye, (B, n, n))
        for layer in range(L):
            R = R + Ab[:, layer] @ R
        out["grad_rollout"] = readout(R, cls)
    out["first_layer"] = readout(Am[:, 0], cls)
    out["attn_mean"] = readout(Am.mean(axis=1), cls)
    d = np.diagonal(Am[:, 0], axis1=1, axis2=2)
    out["diag"] = np.delete(d, cls, axis=1) if cls >= 0 else d
    return out


def main():
    ep, expect, hwm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(ep)
    s.subscribe(b"attn/")
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    ready = False
    count, first, last = 0, 0, 0
    lat = []
    sink = 0.0
    while count < expect:
        if not poller.poll(2000 if count else 60000):
            break
        topic, body = s.recv_multipart(copy=True)
        msg = msgpack.unpackb(body)
        out = explain(msg)
        now = time.time_ns()
        sink += float(out["rollout"][0, 0])
        if not ready:
            print("READY", flush=True)
            ready = True
        ids = msg["ids"]
        if ids[0] < BASE:
            continue
        if count == 0:
            first = now
        last = now
        count += len(ids)
        lat.append((now - msg["ts"]) / 1e3)
    p = np.percentile(np.array(lat), [50, 99, 99.9]) if lat else [0, 0, 0]
    print(f"RESULT count={count} first_ns={first} last_ns={last} p50_us={p[0]:.1f} "
          f"p99_us={p[1]:.1f} p999_us={p[2]:.1f} max_us={max(lat) if lat else 0:.1f}",
          flush=True)
    s.close()
    ctx.term()


if __name__ == "__main__":
    main()
