"""Shared helpers of the end-to-end tests: start a real xplaind on ipc://
endpoints in a temporary directory, talk to it with plain pyzmq + msgpack
(no project code), and stop it, checking that it exits cleanly.

Run by Debian's /usr/bin/python3 (python3-zmq, python3-msgpack, python3-numpy),
under pytest: tests/conftest.py turns these helpers into fixtures (daemon,
free_port, ...) and adds the watchdog. Importing this module starts
nothing, so that a helper process (test_install's sandbox child) can use
it too.
"""
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import numpy as np
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("XPL_BUILD_DIR") or os.path.join(HERE, "..", "build")
SOURCE = os.environ.get("XPL_SOURCE_DIR") or os.path.join(HERE, "..")
XPLAIND = os.path.join(BUILD, "daemon", "xplaind")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref  # noqa: E402  (the float64 reference of MATH.md)

# Every daemon started in this process: conftest.py appends the end of the
# logs of the last three to a failing test's report (CI shows only the
# test's own output), and kills those a test left running.
started = []


def daemon_logs(last=3, lines=80):
    """The end of the logs of the last `last` daemons started, as text."""
    out = []
    if len(started) > last:
        out.append(f"--- ({len(started) - last} earlier daemons of this run not shown)")
    for d in started[-last:]:
        try:
            text = d.stderr().splitlines()
        except OSError as e:
            text = [f"(log unreadable: {e})"]
        state = "running" if d.proc.poll() is None else f"exit {d.proc.returncode}"
        out.append(f"--- xplaind pid {d.proc.pid} ({state}): {' '.join(d.cmd[1:])}")
        if len(text) > lines:
            out.append(f"    ({len(text) - lines} earlier lines left out)")
        out += ["    " + line for line in text[-lines:]]
    return "\n".join(out)


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent(then=None):
    """preexec_fn of every daemon a test starts: SIGKILL it when the test
    process dies, so that a test killed by its watchdog or by ctest leaves
    no daemon behind. `then`: a further preexec_fn (resource limits)."""
    def preexec():
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if then is not None:
            then()
    return preexec


def close_context(ctx, timeout=5.0):
    """Close every socket of `ctx` (linger 0) and terminate it, but never
    wait for that forever: libzmq can hang in zmq_ctx_term when a CURVE or
    ZAP handshake is cut short on a loaded machine (zeromq/libzmq#2733).
    A test has nothing left to send by then, so after `timeout` seconds the
    context is left to process exit, with a note on stderr."""
    t = threading.Thread(target=ctx.destroy, kwargs={"linger": 0}, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        print(f"note: zmq context still terminating after {timeout:.0f} s "
              "(zeromq/libzmq#2733); left to process exit", file=sys.stderr, flush=True)


class Daemon:
    """A running xplaind. Ingest binds at self.ingest (models connect).

    curve: (public, secret, server_public) Z85 keys of an admitted client
    when the daemon runs with --curve: the readiness ping and self.req use
    them."""

    def __init__(self, *args, ingest_bind=True, preexec_fn=None, curve=None):
        self.dir = tempfile.mkdtemp(prefix="xpltest-")
        self.ingest = f"ipc://{self.dir}/in"
        self.publish = f"ipc://{self.dir}/pub"
        self.query_ep = f"ipc://{self.dir}/q"
        cmd = [XPLAIND, "--publish", self.publish, "--query", self.query_ep]
        if ingest_bind:
            cmd += ["--ingest-bind", self.ingest]
        cmd += list(args)
        self.cmd = cmd
        self.curve = curve
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.log = open(self.log_path, "w")
        self.final_log = None
        # preexec_fn: e.g. resource limits for the daemon alone (fault tests).
        self.proc = subprocess.Popen(cmd, stderr=self.log, stdout=self.log,
                                     preexec_fn=_die_with_parent(preexec_fn))
        started.append(self)
        self.ctx = zmq.Context()
        self.req = None
        self._wait_ready()

    def _new_req(self):
        if self.req is not None:
            self.req.close(linger=0)
        self.req = self.ctx.socket(zmq.REQ)
        if self.curve:
            self.req.curve_publickey, self.req.curve_secretkey, self.req.curve_serverkey = self.curve
        self.req.setsockopt(zmq.RCVTIMEO, 5000)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.connect(self.query_ep)

    def _wait_ready(self):
        """Ping on fresh sockets until the daemon answers: a ping lost to a
        connection made while the daemon was still starting (or to a CURVE
        handshake that stalled) is retried, for up to XPL_TEST_READY
        seconds (default 30)."""
        t0 = time.monotonic()
        deadline = t0 + float(os.environ.get("XPL_TEST_READY", "30"))
        tries = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("xplaind exited early:\n" + self.stderr())
            tries += 1
            try:
                self._new_req()
                self.req.setsockopt(zmq.RCVTIMEO, 200 if tries < 5 else 1000)
                self.req.send(msgpack.packb({"v": 1, "op": "ping"}))
                if msgpack.unpackb(self.req.recv())["ok"]:
                    self.req.setsockopt(zmq.RCVTIMEO, 5000)
                    if time.monotonic() - t0 > 3:
                        print(f"note: xplaind answered ping after {time.monotonic() - t0:.1f} s "
                              f"({tries} tries)", file=sys.stderr, flush=True)
                    return
            except zmq.Again:
                continue
        raise RuntimeError(f"xplaind did not answer ping in {time.monotonic() - t0:.0f} s "
                           f"({tries} tries):\n" + self.stderr())

    def query(self, op, **args):
        body = {"v": 1, "op": op}
        body.update(args)
        self.req.send(msgpack.packb(body))
        return msgpack.unpackb(self.req.recv())

    def query_raw(self, frame):
        self.req.send(frame)
        return msgpack.unpackb(self.req.recv())

    def stats(self):
        st = self.query("stats")
        assert st["ok"], st
        return st

    def subscriber(self, topic=b"xpl/"):
        s = self.ctx.socket(zmq.SUB)
        s.setsockopt(zmq.RCVTIMEO, 10000)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.publish)
        s.subscribe(topic)
        return s

    def publisher(self):
        p = self.ctx.socket(zmq.PUB)
        p.setsockopt(zmq.LINGER, 1000)
        p.setsockopt(zmq.SNDHWM, 0)
        p.connect(self.ingest)
        return p

    def stderr(self):
        if self.final_log is not None:
            return self.final_log
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self, status=0):
        """SIGTERM, and check the daemon stops with `status` (0: cleanly)."""
        close_context(self.ctx)
        self.req = None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("xplaind did not stop on SIGTERM")
        self.log.close()
        out = self.final_log = open(self.log_path).read()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert rc == status, f"xplaind exited with {rc}, expected {status}:\n{out}"
        return out

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        self.final_log = open(self.log_path).read()
        close_context(self.ctx)
        self.req = None
        shutil.rmtree(self.dir, ignore_errors=True)


class ShardDaemon(Daemon):
    """A Daemon on endpoints fixed by the test (eps: {"in", "pub", "q"}), which outlive it:
    a restarted shard comes back where the aggregator and the publishers
    look for it."""

    def __init__(self, eps, *args, **kw):
        self.fixed = eps
        super().__init__(*args, "--ingest-bind", eps["in"], "--publish", eps["pub"], "--query", eps["q"],
                         **kw)

    def _wait_ready(self):
        self.ingest, self.publish, self.query_ep = self.fixed["in"], self.fixed["pub"], self.fixed["q"]
        super()._wait_ready()


def free_port():
    """A TCP port of 127.0.0.1 that is free now, for a daemon to bind. It
    is drawn at random below the kernel's ephemeral range, so no outgoing
    connection (of a test running in parallel) takes it meanwhile; another
    test may still draw it: start the daemon with Daemon.on_free_ports,
    which draws again when the port was taken."""
    lo = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    lo = max(lo, 2048)
    for _ in range(1000):
        port = random.randrange(1024, lo)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise AssertionError("no free TCP port on 127.0.0.1 below the ephemeral range")


def on_free_ports(n, start, tries=5):
    """start(*ports) with n free ports (free_port), drawn again when the
    daemon it starts (a Daemon) exits at once because a port was taken in
    between by another test. Returns (what start returned, ports)."""
    for attempt in range(tries):
        ports = [free_port() for _ in range(n)]
        try:
            return start(*ports), ports
        except RuntimeError as e:
            if "Address already in use" not in str(e) or attempt == tries - 1:
                raise
            print(f"note: port(s) {ports} taken meanwhile, drawing others", file=sys.stderr)


def sanitized_build():
    """Was BUILD configured with XPL_SANITIZE (ASan keeps freed memory in
    quarantine, so RSS says nothing about leaks there: LeakSanitizer does)?"""
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
            return any(line.strip() in ("XPL_SANITIZE:BOOL=ON", "XPL_SANITIZE:BOOL=TRUE") for line in f)
    except OSError:
        return False


def rss_kb(pid):
    """Resident set size of a process, in kB (VmRSS of /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def model_info(daemon, model):
    """The `models` query's entry for one model, or None."""
    for m in daemon.query("models")["models"]:
        if m["model"] == model:
            return m
    return None


def wait_until(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def join(daemon, pub, sub=None, model="__probe"):
    """Beat ZeroMQ's slow joiner on both sides: publish probe messages for a
    throw-away model until the daemon has explained one from this publisher
    (and, when `sub` is given, until one reached this subscriber), so that
    nothing the test sends next is dropped before the subscriptions are in
    place. With `sub`, no probe explanation reaches it after join returns:
    a last probe is sent once joined, and `sub` is read up to its
    explanation (one publisher's messages are explained and delivered in
    order), so every earlier probe's explanation has been read as well."""
    def explained():
        for m in daemon.stats()["models"]:
            if m["model"] == model:
                return m["explained"]
        return 0

    before = explained()
    topic = f"xpl/{model}".encode()
    if sub is not None:
        sub.subscribe(topic)
    seq = 1 << 40

    def send_probe():
        nonlocal seq
        A = np.full((1, 1, 1, 2, 2), 0.5, dtype="<f4")
        pub.send_multipart([f"attn/{model}".encode(), msgpack.packb({
            "v": 1, "model": model, "seq": seq, "ts": 0, "ids": [seq], "L": 1, "H": 1, "n": 2,
            "dtype": "f32", "attn": A.tobytes(), "cls": -1, "tokens": ["a", "b"]})])
        seq += 1
        return seq - 1

    def probe_id():
        """The trade id of the next probe explanation on `sub`, or None."""
        if not sub.poll(50):
            return None
        t, body = sub.recv_multipart()
        assert t == topic, f"unexpected message on {t!r} while joining"
        return msgpack.unpackb(body)["id"]

    def probe():
        send_probe()
        if sub is None:
            return explained() > before
        return probe_id() is not None
    wait_until(probe, what="the test publisher and subscriber to be connected")
    if sub is not None:
        last = send_probe()
        wait_until(lambda: probe_id() == last, what="the last probe's explanation")
        sub.unsubscribe(topic)


def random_attention(rng, shape, temp=1.0):
    logits = rng.standard_normal(shape) * temp
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def f32_to_bf16_bits(x):
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (uint16)."""
    b = np.asarray(x, dtype="<f4").view("<u4").astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return b.astype("<u2")


def encode(x, dtype):
    """Wire bytes of a float array, and the exact float64 values they hold."""
    if dtype == "f32":
        a = np.asarray(x, dtype="<f4")
        return a.tobytes(), a.astype(np.float64)
    if dtype == "f16":
        a = np.asarray(x, dtype="<f2")
        return a.tobytes(), a.astype(np.float64)
    bits = f32_to_bf16_bits(x)
    return bits.tobytes(), (bits.astype("<u4") << 16).view("<f4").astype(np.float64)


def assert_close(got, want, rel=1e-5, what=""):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    err = np.abs(got - want) - (rel * np.abs(want) + 1e-12)
    if (err > 0).any():
        k = int(np.argmax(err))
        raise AssertionError(f"{what}: [{k}] got {got.flat[k]!r} want {want.flat[k]!r}")
