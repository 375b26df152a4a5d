#!/usr/bin/python3
"""What publishing costs the live model, per tab32 trade.

    /usr/bin/python3 bench/pub_cost.py [--build DIR] [--trades N] [--reps R]

For each publisher (Python `xplain.Publisher`, and libxplain's through
build/bench/bench_pub), form (full: every head; fused: fused by the
publisher from full host tensors; prefused: a Fused computed elsewhere,
e.g. on the model's GPU by the capture) and wire dtype (f32, f16): the
publisher's process CPU time per trade (user + system of all its threads,
ZeroMQ's I/O thread included: it is the model's machine that pays it),
sending N single-trade messages as fast as send() returns to a null sink
in another process (bench_pub sink, in C so that it keeps up; it counts
what arrived, and the table says what was dropped).
"today" is the Python publisher as it is on main (`git show main:...`),
full f32: the baseline of the target "fused <= 0.25x today's full".
Also: micro-batching (batch=16) for the fused Python publisher. Medians
over R repetitions. Prints a markdown table (bench/RESULTS.md).

Subcommands used by the driver: sink EP, pub EP MODE DTYPE N BATCH.
"""
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)
L, H, n = 4, 8, 32


def cmd_sink(ep):
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 100000)
    s.setsockopt(zmq.SUBSCRIBE, b"attn/")
    s.connect(ep)
    print("READY", flush=True)
    count = 0
    started = False
    while True:
        if not s.poll(30000 if not started else 3000):
            break
        parts = s.recv_multipart(copy=False)
        started = True
        count += 1
    print("RESULT messages=%d" % count, flush=True)


def cmd_pub(ep, mode, dtype, N, batch, zero_copy=False):
    import numpy as np
    import zmq
    import xplain
    rng = np.random.default_rng(3)
    pool = []
    for _ in range(16):
        lg = rng.normal(size=(1, L, H, n, n)) * 3.0
        a = np.exp(lg - lg.max(-1, keepdims=True))
        a = (a / a.sum(-1, keepdims=True)).astype(np.float32)
        g = rng.normal(size=a.shape).astype(np.float32)
        pool.append((a, g))
    toks = ["f%d" % j for j in range(n - 1)] + ["CLS"]
    kw = {}
    if mode in ("fused", "prefused") or batch > 1 or zero_copy:
        kw = dict(fused=(mode == "fused"), batch=batch, delay=0)
        if zero_copy:
            kw["zero_copy"] = True
    ctx = zmq.Context()
    pub = xplain.Publisher("bench", bind=ep, tokens=toks, cls=n - 1, dtype=dtype, sndhwm=100000,
                           context=ctx, **kw)
    if not pub.wait_subscriber(20):
        print("no subscriber", file=sys.stderr)
        sys.exit(1)
    pre = None
    if mode == "prefused":
        from xplain.fuse import fuse_numpy
        pre = [fuse_numpy(a, g) for a, g in pool]
        if dtype == "f16":
            # As the capture hands them over for an f16 wire: rounded to
            # half on the model's device (fuse_torch(half=True)).
            for f in pre:
                f.fattn, f.fgrad = f.fattn.astype(np.float16), f.fgrad.astype(np.float16)
    warm = N // 10 + 10
    for i in range(warm + N):
        if i == warm:
            if hasattr(pub, "flush"):
                pub.flush()
            c0, w0 = time.process_time(), time.monotonic()
        k = i % 16
        if pre is not None:
            pub.send(pre[k], ids=[i], target=[i & 1], y=[0.5])
        else:
            a, g = pool[k]
            pub.send(a, grad=g, ids=[i], target=[i & 1], y=[0.5])
    if hasattr(pub, "flush"):
        pub.flush()
    w1 = time.monotonic()
    pub.close(linger_ms=20000)
    ctx.term()                      # the I/O thread sends what is queued: its CPU counts
    c2 = time.process_time()
    print("RESULT cpu_us=%.2f wall_us=%.2f sent=%d" % ((c2 - c0) / N * 1e6, (w1 - w0) / N * 1e6, N),
          flush=True)


def free_ep():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "tcp://127.0.0.1:%d" % port


def old_package(tmp):
    """The Python package as it is on main, for the 'today' row."""
    root = os.path.join(tmp, "old")
    os.makedirs(os.path.join(root, "xplain"))
    files = subprocess.run(["git", "-C", SOURCE, "ls-tree", "--name-only", "main", "client/python/xplain/"],
                           check=True, capture_output=True, text=True).stdout.split()
    for f in files:
        data = subprocess.run(["git", "-C", SOURCE, "show", "main:" + f], check=True,
                              capture_output=True).stdout
        with open(os.path.join(root, "xplain", os.path.basename(f)), "wb") as out:
            out.write(data)
    return root


def run_one(argv, env, N, batch, sink_cmd):
    ep = free_ep()
    sink = subprocess.Popen(sink_cmd + [ep], stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "READY"
    pub = subprocess.run(argv(ep), env=env, capture_output=True, text=True, timeout=600)
    out = sink.communicate(timeout=120)[0]
    if pub.returncode != 0:
        raise RuntimeError("publisher failed: %s" % pub.stderr)
    res = dict(kv.split("=") for kv in pub.stdout.split("RESULT ")[1].split())
    got = int(out.split("messages=")[1])
    warm = N // 10 + 10
    want = (warm + N + batch - 1) // batch if batch > 1 else warm + N
    if got < want:
        res["dropped"] = str(want - got)
    return res


def main(argv):
    build = os.path.join(SOURCE, "build")
    N, reps = 3000, 3
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--build":
            build = args.pop(0)
        elif a == "--trades":
            N = int(args.pop(0))
        elif a == "--reps":
            reps = int(args.pop(0))
        else:
            print(__doc__)
            return 2
    bench_pub = os.path.join(build, "bench", "bench_pub")
    env_new = dict(os.environ, PYTHONPATH=os.path.join(SOURCE, "client", "python"))
    with tempfile.TemporaryDirectory() as tmp:
        env_old = dict(os.environ, PYTHONPATH=old_package(tmp))
        rows = [
            ("Python", "today (main)", "full", "f32", 1, env_old),
            ("Python", "", "full", "f32", 1, env_new),
            ("Python", "zero-copy", "full", "f32", 1, env_new),
            ("Python", "", "full", "f16", 1, env_new),
            ("Python", "", "fused", "f32", 1, env_new),
            ("Python", "", "fused", "f16", 1, env_new),
            ("Python", "", "prefused", "f32", 1, env_new),
            ("Python", "", "prefused", "f16", 1, env_new),
            ("Python", "batch=16", "prefused", "f32", 16, env_new),
            ("C", "", "full", "f32", 1, None),
            ("C", "", "full", "f16", 1, None),
            ("C", "", "fused", "f32", 1, None),
            ("C", "", "fused", "f16", 1, None),
            ("C", "", "prefused", "f32", 1, None),
            ("C", "", "prefused", "f16", 1, None),
            ("C", "batch=16", "prefused", "f32", 16, None),
        ]
        results = {}
        for rep in range(reps):
            for k, (lang, note, mode, dt, batch, env) in enumerate(rows):
                if lang == "Python":
                    cmd = lambda ep, mode=mode, dt=dt, batch=batch, zc=(note == "zero-copy"): [
                        sys.executable, __file__, "pub", ep, mode, dt, str(N), str(batch)] + (["zc"] if zc else [])
                else:
                    cmd = lambda ep, mode=mode, dt=dt, batch=batch: [
                        bench_pub, ep, mode, dt, str(N), str(batch)]
                r = run_one(cmd, env, N, batch, [bench_pub, "sink"])
                results.setdefault(k, []).append(r)
                print("rep %d %-6s %-12s %-8s %s batch=%d: %s" % (rep, lang, note, mode, dt, batch, r),
                      file=sys.stderr, flush=True)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    base = med([float(r["cpu_us"]) for r in results[0]])
    print("| publisher | form | wire | batch | CPU us/trade (median of %d) | vs today's Python full f32 | wall us/trade | dropped |" % reps)
    print("|---|---|---|---|---|---|---|---|")
    for k, (lang, note, mode, dt, batch, _) in enumerate(rows):
        cpu = med([float(r["cpu_us"]) for r in results[k]])
        wall = med([float(r["wall_us"]) for r in results[k]])
        drop = max(int(r.get("dropped", 0)) for r in results[k])
        print("| %s%s | %s | %s | %d | %.1f | %.2fx | %.1f | %d |" % (
            lang, " " + note if note else "", mode, dt, batch, cpu, cpu / base, wall, drop))
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "sink":
        cmd_sink(sys.argv[2])
    elif len(sys.argv) >= 7 and sys.argv[1] == "pub":
        cmd_pub(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]),
                len(sys.argv) > 7 and sys.argv[7] == "zc")
    else:
        sys.exit(main(sys.argv[1:]))
