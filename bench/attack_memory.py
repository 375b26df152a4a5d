#!/usr/bin/python3
"""Ingest memory under attack, on loopback: peak and settled RSS of xplaind.

    /usr/bin/python3 bench/attack_memory.py multipart [--frames 13] [--frame-mb 200]
    /usr/bin/python3 bench/attack_memory.py burst [--count 30] [--mb 0]
        [--xplaind build/daemon/xplaind] [--daemon-args "..."]

multipart: one message of FRAMES frames of FRAME_MB MiB each (a topic
    first), as an outsider can send it. libzmq buffers every frame of a
    message before the daemon sees the first one, and applies max-msg-size
    per frame: frames above it drop the connection at their header, frames
    below it are all held.
burst: COUNT valid messages of trades of L=8, H=8, n=64 (f32 with grad),
    as many trades per message as --max-elems allows (the largest valid
    message at the daemon's defaults), or about MB MiB when --mb is given,
    sent as fast as the daemon takes them.

Prints the daemon's peak RSS (VmHWM of /proc/<pid>/status) and its RSS
once the traffic has been handled, next to the documented bound
(README, "Memory"): base + publishers * (rcvhwm + 1) * max_frame, with
max_frame the frame limit the daemon logs at start. Needs python3-zmq,
python3-msgpack, python3-numpy.
"""
import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

import msgpack
import numpy as np
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    def __init__(self, path, extra):
        self.dir = tempfile.mkdtemp(prefix="xpl-attack-")
        self.ingest = f"tcp://127.0.0.1:{free_port()}"
        self.query_ep = f"ipc://{self.dir}/q"
        self.log_path = os.path.join(self.dir, "stderr.log")
        cmd = [path, "--ingest-bind", self.ingest, "--publish", f"ipc://{self.dir}/pub",
               "--query", self.query_ep] + extra
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        self.ctx = zmq.Context()
        self.req = None
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("xplaind exited:\n" + open(self.log_path).read())
            try:
                if self.stats():
                    return
            except zmq.Again:
                continue
        raise SystemExit("xplaind did not answer ping in 30 s")

    def stats(self):
        if self.req is not None:
            self.req.close(linger=0)
        self.req = self.ctx.socket(zmq.REQ)
        self.req.setsockopt(zmq.RCVTIMEO, 60000)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.connect(self.query_ep)
        self.req.send(msgpack.packb({"v": 1, "op": "stats"}))
        return msgpack.unpackb(self.req.recv())

    def frame_limit(self):
        m = re.search(r"frames up to (\d+) bytes, (\d+) message", open(self.log_path).read())
        return (int(m.group(1)), int(m.group(2))) if m else (None, None)

    def stop(self):
        if self.req is not None:
            self.req.close(linger=0)
        self.ctx.term()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()


def softmax_rows(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype("<f4")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("multipart", "burst"))
    ap.add_argument("--xplaind", default=os.path.join(HERE, "..", "build", "daemon", "xplaind"))
    ap.add_argument("--daemon-args", default="")
    ap.add_argument("--frames", type=int, default=13)
    ap.add_argument("--frame-mb", type=float, default=200)
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--mb", type=float, default=0, help="burst message size (0: largest valid)")
    ap.add_argument("--max-elems", type=int, default=4 << 20, help="the daemon's max-elems")
    a = ap.parse_args(argv)

    d = Daemon(a.xplaind, shlex.split(a.daemon_args))
    frame_max, hwm = d.frame_limit()
    base_kb = status_kb(d.proc.pid, "VmRSS")
    pub = d.ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(d.ingest)
    time.sleep(0.5)     # the PUB must see the daemon's subscription (slow joiner)
    t0 = time.time()
    if a.mode == "multipart":
        big = b"\0" * int(a.frame_mb * (1 << 20))
        pub.send(b"attn/attack", zmq.SNDMORE)
        for k in range(a.frames - 1):
            pub.send(big, zmq.SNDMORE, copy=False)
        pub.send(big, copy=False)
        # Until the daemon has rejected it (frames) or ZeroMQ dropped the
        # connection; peak memory is whatever it reached meanwhile.
        deadline = time.time() + 15
        while time.time() < deadline:
            st = d.stats()
            if st["rejected"]["frames"] >= 1:
                break
            time.sleep(0.2)
        outcome = "rejected as frames" if d.stats()["rejected"]["frames"] else \
            "not delivered (connection dropped by max-msg-size)"
        what = f"1 message of {a.frames} frames x {a.frame_mb:g} MiB"
    else:
        rng = np.random.default_rng(1)
        # Trades of L=8 H=8 n=64 (256 Ki values, 1 MiB of f32 each), as
        # many per message as max-elems (or --mb) allows.
        L, H, n = 8, 8, 64
        per = L * H * n * n
        B = int(a.mb * (1 << 20) / (8 * per)) if a.mb else a.max_elems // per
        A = softmax_rows(rng, (B, L, H, n, n))
        G = rng.standard_normal((B, L, H, n, n)).astype("<f4")
        tokens = [f"f{k}" for k in range(n - 1)] + ["CLS"]
        msgs = []
        for seq in range(a.count):
            msgs.append(msgpack.packb({
                "v": 1, "model": "burst", "seq": seq, "ts": time.time_ns(),
                "ids": [seq * B + k for k in range(B)],
                "L": L, "H": H, "n": n, "dtype": "f32", "cls": n - 1, "tokens": tokens,
                "attn": A.tobytes(), "grad": G.tobytes()}))
        size = len(msgs[0])
        for m in msgs:
            pub.send_multipart([b"attn/burst", m], copy=False)
        deadline = time.time() + 300
        while time.time() < deadline:
            st = d.stats()
            done = st["counters"]["explained"] + st["counters"]["rejected"]
            if done >= a.count * B:
                break
            time.sleep(0.2)
        st = d.stats()
        outcome = (f"{st['counters']['explained']} trades explained, {st['counters']['rejected']} "
                   f"rejected of {a.count * B}")
        what = (f"{a.count} valid messages of {size / (1 << 20):.1f} MiB ({B} trades of L=8 H=8 "
                f"n={n}, f32 + grad)")
    elapsed = time.time() - t0
    time.sleep(1.0)
    peak_kb = status_kb(d.proc.pid, "VmHWM")
    after_kb = status_kb(d.proc.pid, "VmRSS")
    pub.close(linger=0)
    d.stop()
    print(f"attack:        {what}")
    print(f"outcome:       {outcome} in {elapsed:.1f} s")
    print(f"daemon args:   {a.daemon_args or '(defaults)'}")
    if frame_max:
        bound = base_kb / 1024 + (hwm + 1) * frame_max / (1 << 20)
        print(f"frame limit:   {frame_max / (1 << 20):.1f} MiB, rcvhwm {hwm}: documented bound for "
              f"one publisher {bound:.0f} MiB (base {base_kb / 1024:.0f} MiB + "
              f"{hwm + 1} x {frame_max / (1 << 20):.1f} MiB)")
    print(f"RSS at start:  {base_kb / 1024:.0f} MiB")
    print(f"peak RSS:      {peak_kb / 1024:.0f} MiB")
    print(f"RSS after:     {after_kb / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
