#!/bin/sh
# Soak test (not part of the default test run): a real xplaind
# fed at a fixed fraction (80%) of its measured maximum rate for 10 minutes,
# with a subscriber of every explanation attached and durable state on,
# reporting every INTERVAL seconds the daemon's RSS, messages sent /
# received / explained, rejections, lost (seq gaps), PUB sends refused,
# explanations the subscriber missed, and latency percentiles: the daemon's
# own (receive -> published, from the `stats` query, cumulative) and the
# subscriber's end to end (ts -> received, over the interval).
#
# It ends with a verdict line:
#   memory flat  mean RSS of the last quarter of the rows after the warm-up
#                within 10% of the first quarter's;
#   no losses    lost == 0, nothing rejected, and every message sent was
#                received and every trade explained (the publisher sends
#                consecutive seq numbers, so any gap would be a loss).
# Exit status 0 when both hold, 1 otherwise, 2 on a usage error.
#
# usage: scripts/soak.sh [options] OUTPUT
#   --duration S     length of the soak, seconds (default 600)
#   --rate R         trades/s to publish (default: --load x the maximum
#                    measured first by a --burst seconds burst)
#   --load F         fraction of the measured maximum (default 0.8)
#   --burst S        length of the maximum-rate burst, seconds (default 20)
#   --interval S     seconds between report rows (default 15)
#   --warmup S       rows before this are left out of the memory verdict (60)
#   --workload W     tab32 (default), tab16, tab32-b64, tab32-f16 (bench/ names)
#   --xplaind PATH   daemon binary (default $XPL_BUILD_DIR/daemon/xplaind,
#                    else build/daemon/xplaind)
#   --daemon-args S  extra daemon arguments (split on spaces)
# OUTPUT receives the report (markdown: header, table, verdict); it is also
# printed as it is produced.
#
# Publisher and subscriber are plain pyzmq + msgpack (Debian's python3-zmq,
# python3-msgpack, python3-numpy): pre-encoded messages whose seq, ts and
# ids are patched in place, paced on the monotonic clock.
set -eu
cd "$(dirname "$0")/.."
PY=$(mktemp /tmp/xpl-soak.XXXXXX.py)
trap 'rm -f "$PY"' EXIT INT TERM
cat >"$PY" <<'EOF'
import argparse, math, multiprocessing as mp, os, platform, shlex, shutil, signal, struct
import subprocess, sys, tempfile, time

import msgpack
import numpy as np

WORKLOADS = {  # name: L, H, n, B, dtype  (bench/bench_common.h; CLS last, with grad)
    "tab32": (4, 8, 32, 1, "f32"), "tab32-b64": (4, 8, 32, 64, "f32"),
    "tab32-f16": (4, 8, 32, 1, "f16"), "tab16": (3, 4, 16, 1, "f32"),
}


def parse():
    p = argparse.ArgumentParser(prog="scripts/soak.sh")
    p.add_argument("output")
    p.add_argument("--duration", type=float, default=600)
    p.add_argument("--rate", type=float)
    p.add_argument("--load", type=float, default=0.8)
    p.add_argument("--burst", type=float, default=20)
    p.add_argument("--interval", type=float, default=15)
    p.add_argument("--warmup", type=float, default=60)
    p.add_argument("--workload", default="tab32", choices=sorted(WORKLOADS))
    p.add_argument("--xplaind")
    p.add_argument("--daemon-args", default="")
    a = p.parse_args(sys.argv[2:])
    if not a.xplaind:
        build = os.environ.get("XPL_BUILD_DIR") or "build"
        a.xplaind = os.path.join(build, "daemon", "xplaind")
    if not os.access(a.xplaind, os.X_OK):
        p.error(f"no daemon at {a.xplaind} (build it, or use --xplaind)")
    return a


# ---------------------------------------------------------------- messages

class Messages:
    """Pre-encoded contract-v1 messages: a few bodies with different
    tensors, each a msgpack map written by hand so that seq (uint64), ts
    (int64) and the ids (uint64) have fixed widths and are patched in place."""

    def __init__(self, wl, model="soak", variants=8):
        L, H, n, B, dtype = WORKLOADS[wl]
        self.B = B
        self.topic = f"attn/{model}".encode()
        rng = np.random.default_rng(1)
        self.bodies = []
        for _ in range(variants):
            logits = rng.standard_normal((B, L, H, n, n)) * 2.0
            a = np.exp(logits - logits.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            g = rng.standard_normal((B, L, H, n, n))
            np_dt = "<f4" if dtype == "f32" else "<f2"
            fields = [("v", 1), ("model", model), ("seq", "U64"), ("ts", "I64"), ("ids", "IDS"),
                      ("L", L), ("H", H), ("n", n), ("dtype", dtype), ("cls", n - 1),
                      ("tokens", [f"f{k}" for k in range(n - 1)] + ["CLS"]),
                      ("attn", a.astype(np_dt).tobytes()), ("grad", g.astype(np_dt).tobytes()),
                      ("target", [k % 2 for k in range(B)])]
            buf = bytearray([0x80 | len(fields)])
            offs = {}
            for k, v in fields:
                buf += msgpack.packb(k)
                if v == "U64" or v == "I64":
                    buf += b"\xcf" if v == "U64" else b"\xd3"
                    offs[k] = len(buf)
                    buf += bytes(8)
                elif v == "IDS":
                    buf += bytes([0x90 | B]) if B < 16 else b"\xdc" + struct.pack(">H", B)
                    offs[k] = len(buf)
                    buf += b"".join(b"\xcf" + bytes(8) for _ in range(B))
                else:
                    buf += msgpack.packb(v, use_bin_type=True)
            self.bodies.append((buf, offs))
        self.msg_bytes = len(self.bodies[0][0])

    def frames(self, seq):
        buf, o = self.bodies[seq % len(self.bodies)]
        struct.pack_into(">Q", buf, o["seq"], seq)
        struct.pack_into(">q", buf, o["ts"], time.time_ns())
        for b in range(self.B):
            struct.pack_into(">Q", buf, o["ids"] + 9 * b + 1, seq * self.B + b)
        return [self.topic, buf]          # pyzmq copies the bytearray at send


# ---------------------------------------------------------------- subscriber

def subscriber(ep, conn):
    """Receives every xpl/ message; every second sends the parent its totals
    and the end-to-end latencies (us) of the second."""
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(ep)
    s.subscribe(b"xpl/")
    got, gaps, last, lat = 0, 0, {}, []
    next_t = time.monotonic() + 1
    while True:
        if s.poll(100):
            while True:
                try:
                    topic, body = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                m = msgpack.unpackb(body)
                got += 1
                if topic in last and m["seq"] != last[topic] + 1:
                    gaps += max(0, m["seq"] - last[topic] - 1)
                last[topic] = m["seq"]
                lat.append((time.time_ns() - m["ts"]) // 1000)
        if time.monotonic() >= next_t:
            conn.send((got, gaps, np.array(lat, dtype=np.int64)))
            lat = []
            next_t += 1
            if conn.poll(0) and conn.recv() == "stop":
                return


# ---------------------------------------------------------------- daemon

STARTED = []          # daemons to stop whatever way this script ends


def stop_leftovers():
    for p in STARTED:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


class Daemon:
    def __init__(self, a, tmp, tag):
        import zmq
        self.dir = os.path.join(tmp, tag)
        os.makedirs(self.dir)
        self.ingest, self.pub, self.q = (f"ipc://{self.dir}/{x}" for x in ("in", "pub", "q"))
        cmd = [a.xplaind, "--ingest-bind", self.ingest, "--publish", self.pub, "--query", self.q,
               "--state-dir", os.path.join(self.dir, "state"), "--log-level", "notice"]
        cmd += shlex.split(a.daemon_args)
        self.cmd = cmd
        self.log = open(os.path.join(self.dir, "xplaind.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        STARTED.append(self.proc)
        self.ctx = zmq.Context()
        self.req = None
        deadline = time.time() + 10
        while True:
            self._new_req(200)
            try:
                self.query("ping")
                break
            except zmq.Again:
                if time.time() > deadline or self.proc.poll() is not None:
                    sys.exit("xplaind did not start:\n" + open(self.log.name).read())
        self._new_req(10000)

    def _new_req(self, timeout):
        import zmq
        if self.req is not None:
            self.req.close(linger=0)
        self.req = self.ctx.socket(zmq.REQ)
        self.req.setsockopt(zmq.RCVTIMEO, timeout)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.connect(self.q)

    def query(self, op):
        self.req.send(msgpack.packb({"v": 1, "op": op}))
        return msgpack.unpackb(self.req.recv())

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

    def publisher(self):
        # XPUB with ZMQ_XPUB_NODROP: a send blocks while the daemon's side is
        # full (after SNDHWM 1000 queued here and ingest.rcvhwm there) instead
        # of dropping, so that the seq numbers the daemon sees are always
        # consecutive and any gap it counts is a loss of its own. When the
        # daemon cannot keep up, the publisher falls behind its schedule
        # (the "behind" column) rather than losing messages.
        import zmq
        p = self.ctx.socket(zmq.XPUB)
        p.setsockopt(zmq.XPUB_NODROP, 1)
        p.setsockopt(zmq.LINGER, 0)
        p.connect(self.ingest)
        return p

    def stop(self):
        self.req.close(linger=0)
        self.ctx.destroy(linger=0)
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        self.log.close()
        return rc, open(self.log.name).read()


def start_sub(ep):
    parent, child = mp.Pipe()
    p = mp.Process(target=subscriber, args=(ep, child), daemon=True)
    p.start()
    return p, parent


def connect(d, pub):
    """Beat ZeroMQ's slow joiner: publish messages of a separate warm-up
    model until the daemon has explained one, then until its counters stop
    moving, so that the counters read next are a clean base."""
    body = {"v": 1, "model": "warmup", "seq": 0, "ts": 0, "ids": [0], "L": 1, "H": 1, "n": 2,
            "dtype": "f32", "cls": -1, "tokens": ["a", "b"],
            "attn": np.full(4, 0.5, "<f4").tobytes()}
    deadline = time.time() + 10
    while d.query("stats")["counters"]["explained"] == 0:
        if time.time() > deadline:
            sys.exit("the publisher did not connect to the daemon")
        pub.send_multipart([b"attn/warmup", msgpack.packb(body)])
        body["seq"] += 1
        time.sleep(0.05)
    # Those sent before the connection was up are gone; the rest arrive.
    prev = -1
    while prev != d.query("stats")["counters"]["explained"]:
        prev = d.query("stats")["counters"]["explained"]
        time.sleep(0.3)


# ---------------------------------------------------------------- phases

def burst(a, tmp, msgs):
    """Maximum rate: publish as fast as the daemon takes messages (the
    publisher blocks when it is full), with the subscriber attached; the
    rate over the last two thirds of the burst."""
    d = Daemon(a, tmp, "burst")
    sp, conn = start_sub(d.pub)
    pub = d.publisher()
    connect(d, pub)

    def explained():                      # messages of this burst fully explained
        return (d.query("stats")["counters"]["explained"] - base) // msgs.B

    base = d.query("stats")["counters"]["explained"]
    sent = 0
    t0 = time.monotonic()
    mark = None
    while True:
        now = time.monotonic()
        if mark is None and now - t0 >= a.burst / 3:
            mark = (now, explained())
        if now - t0 >= a.burst:
            break
        for _ in range(16):               # blocks while the daemon is full (XPUB_NODROP)
            pub.send_multipart(msgs.frames(sent), copy=True)
            sent += 1
    t1 = time.monotonic()
    rate = (explained() - mark[1]) * msgs.B / (t1 - mark[0])
    conn.send("stop")
    sp.join(5)
    pub.close(linger=0)
    d.stop()
    return rate


def percentile(x, q):
    return int(np.percentile(x, q)) if len(x) else 0


def soak(a, tmp, msgs, rate, out):
    d = Daemon(a, tmp, "soak")
    sp, conn = start_sub(d.pub)
    pub = d.publisher()
    connect(d, pub)
    st0 = d.query("stats")["counters"]
    base_expl, base_recv = st0["explained"], st0["received"]
    msg_rate = rate / msgs.B
    cols = ["t (s)", "RSS (MiB)", "sent", "behind", "received", "explained", "rate (/s)", "rejected",
            "lost", "dropped", "sub missed", "daemon p50 (us)", "daemon p99 (us)",
            "e2e p50 (us)", "e2e p99 (us)"]
    out("| " + " | ".join(cols) + " |")
    out("|" + "---|" * len(cols))
    rows = []
    sub_got = sub_gaps = 0
    lat = []
    sent = 0
    t0 = time.monotonic()
    next_row = t0 + a.interval
    last_expl, last_t = 0, t0

    def drain_sub():
        nonlocal sub_got, sub_gaps
        while conn.poll(0):
            sub_got, sub_gaps, l = conn.recv()
            lat.append(l)

    def row(now, final=False):
        nonlocal last_expl, last_t, lat
        drain_sub()
        st = d.query("stats")
        c, lu = st["counters"], st["latency_us"]
        expl = c["explained"] - base_expl
        l = np.concatenate(lat) if lat else np.zeros(0)
        lat = []
        due = min(int((now - t0) * msg_rate), int(a.duration * msg_rate))
        r = dict(t=now - t0, rss=d.rss_kb() / 1024, sent=sent * msgs.B,
                 behind=0 if final else max(0, due - sent) * msgs.B,
                 received=(c["received"] - base_recv) * msgs.B, explained=expl,
                 rate=(expl - last_expl) / max(1e-9, now - last_t), rejected=c["rejected"],
                 lost=c["lost"], dropped=c["dropped"], missed=sub_gaps,
                 p50=lu["p50"], p99=lu["p99"], e50=percentile(l, 50), e99=percentile(l, 99),
                 final=final)
        last_expl, last_t = expl, now
        rows.append(r)
        out(f"| {r['t']:.0f}{' (end)' if final else ''} | {r['rss']:.1f} | {r['sent']} | {r['behind']} | "
            f"{r['received']} | {r['explained']} | {r['rate']:.0f} | {r['rejected']} | "
            f"{r['lost']} | {r['dropped']} | {r['missed']} | {r['p50']:.0f} | {r['p99']:.0f} | "
            f"{r['e50']} | {r['e99']} |")

    while True:
        now = time.monotonic()
        if now - t0 >= a.duration:
            break
        due = min(int((now - t0) * msg_rate), int(a.duration * msg_rate))
        for _ in range(min(due - sent, 256)):   # (rows keep coming when behind)
            pub.send_multipart(msgs.frames(sent), copy=True)
            sent += 1
        if now >= next_row:
            row(now)
            next_row += a.interval
        drain_sub()
        time.sleep(max(0.0, min(0.002, (sent + 1) / msg_rate - (time.monotonic() - t0))))
    # Let the last messages through, then the final row.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        c = d.query("stats")["counters"]
        if c["explained"] - base_expl >= sent * msgs.B:
            break
        time.sleep(0.1)
    time.sleep(1.5)
    row(time.monotonic(), final=True)
    st = d.query("stats")["counters"]
    conn.send("stop")
    sp.join(5)
    pub.close(linger=0)
    rc, log = d.stop()
    return rows, st, rc, log


def verdict(a, rows, st, rc, sent_trades):
    steady = [r for r in rows if not r["final"] and r["t"] >= a.warmup]
    q = max(1, len(steady) // 4)
    first = float(np.mean([r["rss"] for r in steady[:q]])) if steady else float("nan")
    last = float(np.mean([r["rss"] for r in steady[-q:]])) if steady else float("nan")
    change = (last - first) / first if steady else float("nan")
    flat = bool(steady) and abs(change) <= 0.10
    end = rows[-1]
    no_loss = (end["lost"] == 0 and end["rejected"] == 0 and end["received"] == sent_trades and
               end["explained"] == sent_trades)
    ok = flat and no_loss and rc == 0
    mem = (f"RSS {first:.1f} MiB (first quarter after {a.warmup:.0f} s warm-up) -> "
           f"{last:.1f} MiB (last quarter), {change * 100:+.1f}%: "
           f"{'flat' if flat else 'NOT flat'}")
    loss = (f"lost {end['lost']}, rejected {end['rejected']}, sent {sent_trades} / received "
            f"{end['received']} / explained {end['explained']} trades: "
            f"{'zero unexplained losses' if no_loss else 'LOSSES'}")
    behind = max(r["behind"] for r in rows if not r["final"]) if len(rows) > 1 else 0
    extra = (f"RSS max {max(r['rss'] for r in rows):.1f} MiB; "
             f"publisher at most {behind} trades behind its schedule; "
             f"subscriber missed {end['missed']}, PUB sends refused {end['dropped']}, "
             f"snapshots {st['snapshots']} ({st['snapshot_errors']} failed), daemon exit {rc}")
    return ok, f"**VERDICT: {'PASS' if ok else 'FAIL'}** — {mem}; {loss}. ({extra})"


def main():
    a = parse()
    f = open(a.output, "w")

    def out(line):
        print(line, flush=True)
        f.write(line + "\n")
        f.flush()

    mp.set_start_method("fork")
    msgs = Messages(a.workload)
    tmp = tempfile.mkdtemp(prefix="xpl-soak-")
    try:
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                    if l.startswith("model name")), platform.processor())
        out(f"# xplaind soak: {a.workload}")
        out("")
        out(f"- command: `scripts/soak.sh {' '.join(shlex.quote(x) for x in sys.argv[2:])}`")
        out(f"- machine: {os.cpu_count()} cores, {cpu}, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"{platform.platform()}; load average at start {os.getloadavg()[0]:.2f}")
        out(f"- daemon: {a.xplaind} ({subprocess.run([a.xplaind, '--version'], capture_output=True, text=True).stdout.strip()}), "
            f"state dir on, snapshots every 10 s, default limits")
        out(f"- workload {a.workload}: L,H,n,B,dtype = {WORKLOADS[a.workload]}, with gradients; "
            f"{msgs.msg_bytes} bytes per message")
        cfg = subprocess.run([a.xplaind, "--ingest-bind", "ipc:///nonexistent", *shlex.split(a.daemon_args),
                              "--print-config"], capture_output=True, text=True).stdout
        hwm = next((int(l.split("=")[1]) for l in cfg.splitlines()
                    if l.replace(" ", "").startswith("rcvhwm=")), None)
        if hwm is not None:
            out(f"- ingest.rcvhwm {hwm}: up to {hwm} x {msgs.msg_bytes / 2**20:.2f} MiB = "
                f"{hwm * msgs.msg_bytes / 2**20:.0f} MiB of ingest messages can wait in the daemon")
        if a.rate:
            rate = a.rate
            out(f"- rate: {rate:.0f} trades/s (given)")
        else:
            top = burst(a, tmp, msgs)
            rate = a.load * top
            out(f"- measured maximum: {top:.0f} trades/s ({a.burst:.0f} s burst, publisher and "
                f"subscriber attached); soak at {a.load:.0%}: {rate:.0f} trades/s")
        out(f"- {a.duration:.0f} s, a row every {a.interval:.0f} s; latency: daemon = ingest receive "
            f"-> explanation published (stats query, cumulative), e2e = trade ts -> subscriber "
            f"(this interval)")
        out("")
        rows, st, rc, log = soak(a, tmp, msgs, rate, out)
        sent_trades = rows[-1]["sent"]
        ok, line = verdict(a, rows, st, rc, sent_trades)
        out("")
        out(line)
        if rc != 0:
            out("daemon log:\n" + log[-3000:])
        return 0 if ok else 1
    finally:
        stop_leftovers()
        shutil.rmtree(tmp, ignore_errors=True)
        f.close()


if __name__ == "__main__":
    sys.exit(main())
EOF
/usr/bin/python3 "$PY" soak "$@"
