"""xplainctl against a running xplaind: every command, its output and its
exit status (0 success, 1 runtime error with a one-line reason, 2 usage).

The daemon is fed by a plain pyzmq + msgpack publisher (no project code),
so the numbers xplainctl prints can be checked against the float64
reference of MATH.md (tests/ref.py); `xplaind --demo` feeds the live
views. Run by Debian's /usr/bin/python3.
"""
import base64
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from xpltest import (BUILD, Daemon, assert_close, encode, join, random_attention, ref,
                     wait_until)

import msgpack
import zmq

XPLAINCTL = os.path.join(BUILD, "client", "xplainctl")
SVG = "{http://www.w3.org/2000/svg}"
L, H, N, CLS = 2, 3, 6, 5
TOKENS = ["price", "size", "spread", "side", "venue", "CLS"]


# How long a command whose key is refused waits (ms): the refusal reaches
# the client within it even on a starved machine or under ASan.
REFUSAL_MS = 2500

def ctl(*args, timeout=60, env=None):
    """Run xplainctl; returns (exit status, stdout, stderr)."""
    p = subprocess.run([XPLAINCTL, *args], capture_output=True, text=True, timeout=timeout,
                       env=env)
    return p.returncode, p.stdout, p.stderr


def ctl_d(d, *args, **kw):
    return ctl("--query", d.query_ep, "--sub", d.publish, *args, **kw)


def one_line_error(err, *needles):
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("xplainctl"), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


class Feeder:
    """A pyzmq publisher with a fixed model m1; remembers the exact tensors
    of every trade it sent, for the reference."""

    def __init__(self, d):
        self.pub = d.publisher()
        self.seq = 0
        self.trades = {}
        self.rng = np.random.default_rng(7)
        join(d, self.pub)

    def send(self, tid, grad=True):
        A = random_attention(self.rng, (1, L, H, N, N), temp=2.0)
        G = self.rng.standard_normal((1, L, H, N, N)) if grad else None
        abytes, Ax = encode(A, "f32")
        body = {"v": 1, "model": "m1", "seq": self.seq, "ts": time.time_ns(), "ids": [tid],
                "L": L, "H": H, "n": N, "dtype": "f32", "attn": abytes, "cls": CLS,
                "tokens": TOKENS, "target": [1], "y": [0.5]}
        Gx = None
        if grad:
            body["grad"], Gx = encode(G, "f32")
            Gx = Gx.reshape(G.shape)[0]
        self.pub.send_multipart([b"attn/m1", msgpack.packb(body)])
        self.seq += 1
        self.trades[tid] = (Ax.reshape(A.shape)[0], Gx)

    def expected(self, tid):
        A, G = self.trades[tid]
        return ref.methods(A, G, CLS)


def wait_explained(d, count):
    deadline = time.time() + 10
    while time.time() < deadline:
        for m in d.stats()["models"]:
            if m["model"] == "m1" and m["explained"] >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"timed out after 10 s waiting for {count} trades of m1 to be explained")



@pytest.fixture(scope="module")
def fed():
    """A daemon that has explained five trades of m1 (t-0, t-1, t-2, 7 and
    nograd, without a gradient), and their feeder."""
    d = Daemon()
    f = Feeder(d)
    for k in range(3):
        f.send(f"t-{k}")
    f.send(7)
    f.send("nograd", grad=False)
    wait_explained(d, 5)
    yield d, f
    d.stop()


@pytest.fixture(scope="module")
def d(fed):
    return fed[0]


@pytest.fixture(scope="module")
def f(fed):
    return fed[1]


@pytest.fixture
def bare():
    """A daemon that has seen no model."""
    d = Daemon()
    yield d
    d.stop()


@pytest.fixture
def demo():
    """A daemon running its demo stream."""
    d = Daemon("--demo", ingest_bind=False)
    yield d
    d.stop()


@pytest.fixture
def c():
    c = CurveSetup()
    yield c
    c.stop()

# ---- without a daemon --------------------------------------------------

def test_help_everywhere():
    rc, out, err = ctl("--help")
    assert rc == 0 and "usage: xplainctl COMMAND" in out, (rc, out, err)
    assert "--curve-key FILE" in out and "--server-key FILE" in out
    for cmd in ["tail", "top", "query", "heatmap", "report", "stats"]:
        assert cmd in out
        rc, out2, err = ctl(cmd, "--help")
        assert rc == 0, (cmd, rc, err)
        assert out2.startswith(f"usage: xplainctl {cmd}"), out2
        assert "--query EP" in out2 and "--timeout MS" in out2, cmd
        assert "--curve-key FILE" in out2 and "--server-key FILE" in out2, cmd
        rc, out3, _ = ctl("help", cmd)
        assert rc == 0 and out3 == out2
    # keygen needs no daemon: no common options in its help.
    assert "keygen" in out
    rc, out2, err = ctl("keygen", "--help")
    assert rc == 0 and out2.startswith("usage: xplainctl keygen [--force] FILE | --print"), out2
    assert "FILE_secret" in out2 and "0600" in out2 and "--query EP" not in out2
    rc, out3, _ = ctl("help", "keygen")
    assert rc == 0 and out3 == out2
    assert all(len(x) <= 80 for x in (out + out2).splitlines())
    rc, out, _ = ctl("--version")
    assert rc == 0 and out.startswith("xplainctl ")


def test_usage_errors():
    for args, needle in [([], None), (["frob"], "unknown command 'frob'"),
                         (["tail", "--bogus"], "unknown argument '--bogus'"),
                         (["tail", "-k", "zero"], "non-negative integer"),
                         (["tail", "-k", "0"], "at least 1"),
                         (["query"], "no op given"), (["query", "ping", "novalue"], "KEY=VALUE"),
                         (["heatmap", "--model", "m1"], "--id are required"),
                         (["report"], "--model is required"),
                         (["report", "--model", "m1", "--top", "-1"], "non-negative integer"),
                         (["stats", "--timeout"], "needs a value"),
                         (["stats", "--timeout", "0"], "at least 1 ms"),
                         (["top", "--bogus"], "unknown argument"),
                         (["keygen"], "no FILE given"), (["keygen", "a", "b"], "one FILE only"),
                         (["keygen", "--print", "a"], "--print writes no file"),
                         (["keygen", "--bogus"], "unknown argument '--bogus'"),
                         (["--curve-key", "k_secret", "stats"], "--curve-key needs --server-key"),
                         (["stats", "--server-key", "k"], "--server-key needs --curve-key"),
                         (["stats", "--curve-key"], "needs a value")]:
        rc, out, err = ctl(*args)
        assert rc == 2, (args, rc, out, err)
        if needle:
            one_line_error(err, needle)


def test_unreachable_daemon():
    tmp = tempfile.mkdtemp(prefix="xplctl-")
    nobody = ["--query", f"ipc://{tmp}/q", "--sub", f"ipc://{tmp}/p", "--timeout", "200"]
    for args in [["query", "ping"], ["stats"], ["heatmap", "--model", "m", "--id", "1"],
                 ["report", "--model", "m"],
                 ["tail", "--model", "m1"], ["top", "--once"]]:
        t0 = time.time()
        rc, out, err = ctl(*nobody, *args)
        assert rc == 1, (args, rc, out, err)
        one_line_error(err, "no reply from", "within 200 ms", "is xplaind running?")
        assert time.time() - t0 < 5
    # tail of every model waits for messages, not for the query socket.
    rc, out, err = ctl(*nobody, "tail", "--count", "1", "--wait", "300")
    assert rc == 1, (rc, out, err)
    one_line_error(err, "no explanation within 300 ms")


# ---- keygen and CURVE ------------------------------------------------------

def cert_keys(path):
    """(public, secret or None) of a czmq certificate, as bytes."""
    keys = {}
    with open(path) as f:
        for line in f:
            m = re.match(r'^\s*(public|secret)-key\s*=\s*"(.{40})"\s*$', line)
            if m:
                keys[m.group(1)] = m.group(2).encode()
    return keys["public"], keys.get("secret")


def keygen(path, *args):
    rc, out, err = ctl("keygen", *args, path)
    assert rc == 0, (rc, out, err)
    return out


def test_keygen():
    tmp = tempfile.mkdtemp(prefix="xplctl-")
    path = os.path.join(tmp, "c.key")
    old = os.umask(0o022)
    try:
        out = keygen(path)
        pub, sec = cert_keys(path + "_secret")
        assert cert_keys(path) == (pub, None), "the public certificate holds no secret"
        assert zmq.curve_public(sec) == pub, "the certificate's keys belong together"
        lines = out.splitlines()
        assert lines[0] == "public key  " + pub.decode(), out
        assert len(lines) == 3 and lines[2].startswith("hint: copy " + path), out
        assert "clients_dir" in lines[2] and path + "_secret private" in lines[2], out
        assert stat.S_IMODE(os.stat(path + "_secret").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644

        # Never overwritten without --force; with it, the secret is 0600 again.
        before = open(path + "_secret").read()
        rc, out, err = ctl("keygen", path)
        assert rc == 1 and out == "", (rc, out, err)
        one_line_error(err, path, "exists", "--force")
        assert open(path + "_secret").read() == before
        os.unlink(path)         # the secret alone is enough to refuse
        rc, out, err = ctl("keygen", path)
        assert rc == 1 and not os.path.exists(path), (rc, out, err)
        os.chmod(path + "_secret", 0o644)
        keygen(path, "--force")
        pub2, sec2 = cert_keys(path + "_secret")
        assert pub2 != pub and zmq.curve_public(sec2) == pub2
        assert stat.S_IMODE(os.stat(path + "_secret").st_mode) == 0o600

        rc, out, err = ctl("keygen", os.path.join(tmp, "no", "dir.key"))
        assert rc == 1
        one_line_error(err, "cannot write", "No such file")

        rc, out, err = ctl("keygen", "--print")
        assert rc == 0, err
        m = re.fullmatch(r'public-key = "(.{40})"\nsecret-key = "(.{40})"\n', out)
        assert m and zmq.curve_public(m.group(2).encode()) == m.group(1).encode(), out
        assert sorted(os.listdir(tmp)) == ["c.key", "c.key_secret"], "--print wrote a file"
    finally:
        os.umask(old)
        shutil.rmtree(tmp, ignore_errors=True)


class CurveSetup:
    """Keys made by xplainctl keygen: the daemon's (its --secret-key-file is
    keygen's FILE_secret), a client whose keygen FILE is in clients_dir,
    and one whose is not; a daemon started with --curve on them."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="xplctl-curve-")
        self.clients = os.path.join(self.tmp, "clients")
        os.mkdir(self.clients)
        for name in ("server", "good", "bad"):
            keygen(os.path.join(self.tmp, name + ".key"))
        shutil.copy(self.key("good"), self.clients)
        good = cert_keys(self.key("good") + "_secret")
        self.d = Daemon("--curve", "--secret-key-file", self.key("server") + "_secret",
                        "--clients-dir", self.clients, "--glob-interval-ms", "20",
                        "--log-rate", "1000", curve=good + (cert_keys(self.key("server"))[0],))

    def key(self, name):
        return os.path.join(self.tmp, name + ".key")

    def socket(self, kind, who):
        s = self.d.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.curve_publickey, s.curve_secretkey = cert_keys(self.key(who) + "_secret")
        s.curve_serverkey = cert_keys(self.key("server"))[0]
        return s

    def ctl(self, who, *args, server="server", **kw):
        return ctl("--query", self.d.query_ep, "--sub", self.d.publish,
                   "--curve-key", self.key(who) + "_secret", "--server-key", self.key(server),
                   *args, **kw)

    def refused(self):
        return self.d.query("stats")["counters"]["auth_refused"]

    def stop(self):
        self.d.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def curve_message(seq, model="m1"):
    A = random_attention(np.random.default_rng(seq), (1, L, H, N, N))
    return [f"attn/{model}".encode(), msgpack.packb({
        "v": 1, "model": model, "seq": seq, "ts": time.time_ns(), "ids": [f"c-{seq}"], "L": L,
        "H": H, "n": N, "dtype": "f32", "attn": A.astype("<f4").tobytes(), "cls": CLS,
        "tokens": TOKENS})]


def test_curve(c):
    """Keygen's files round-trip through the daemon; every command works
    with the admitted key and ends with a timeout and the hint that the
    daemon refused the key with the unlisted one."""
    d = c.d
    rc, out, err = c.ctl("good", "query", "ping")
    assert rc == 0 and json.loads(out)["ok"], (rc, out, err)

    # Feed the daemon through an admitted CURVE publisher; tail hears it.
    pub = c.socket(zmq.PUB, "good")
    pub.connect(d.ingest)
    results = {}
    t = threading.Thread(target=lambda: results.update(
        tail=c.ctl("good", "tail", "--count", "2", "--json", "--wait", "20000")))
    t.start()
    seq = 0
    while t.is_alive() and seq < 1000:
        pub.send_multipart(curve_message(seq))
        seq += 1
        time.sleep(0.02)
    t.join(30)
    rc, out, err = results["tail"]
    assert rc == 0, (rc, out, err)
    assert [json.loads(x)["features"] for x in out.splitlines()] == [TOKENS[:-1]] * 2
    rc, out, err = c.ctl("good", "stats")
    assert rc == 0 and "auth_admitted" in out and "m1" in out, (rc, out, err)
    last = f"c-{seq - 1}"      # the first ones may have gone before the handshake
    wait_until(lambda: c.ctl("good", "query", "trade", "model=m1", "id=" + last)[0] == 0,
               what="the last trade to be explained")
    rc, out, err = c.ctl("good", "query", "trade", "model=m1", "id=" + last)
    assert rc == 0 and json.loads(out)["id"] == last, (rc, out, err)
    wait_until(lambda: d.query("global", model="m1")["ok"], what="global state")
    rc, out, err = c.ctl("good", "top", "--model", "m1", "--once")
    assert rc == 0 and out.startswith("xplaind top  m1"), (rc, out, err)
    rc, out, err = c.ctl("good", "heatmap", "--model", "m1", "--id", last)
    assert rc == 0 and ET.fromstring(out).tag == SVG + "svg", (rc, err)

    # The unlisted key: every command times out and says the key was refused.
    hint = "; CURVE: the daemon refused this client's key"
    # The refusal must have arrived before the timeout for the hint to name
    # it: a handshake and the ZAP round trip take far longer than usual on
    # a starved machine or under ASan, so the timeout leaves room for that.
    for args, first in [(["query", "ping"], "no reply from"), (["stats"], "no reply from"),
                        (["tail", "--count", "1", "--wait", str(REFUSAL_MS)],
                         f"no explanation within {REFUSAL_MS} ms"),
                        (["top", "--model", "m1", "--once"], "no connection to"),
                        (["heatmap", "--model", "m1", "--id", last], "no reply from")]:
        before = c.refused()
        rc, out, err = c.ctl("bad", "--timeout", str(REFUSAL_MS), *args)
        assert rc == 1 and out == "", (args, rc, out, err)
        one_line_error(err, first, f"{REFUSAL_MS} ms", hint, "clients_dir")
        wait_until(lambda: c.refused() > before, what=f"auth_refused to grow for {args}")

    # A wrong server key, and certificates that cannot be used.
    rc, out, err = c.ctl("good", "--timeout", "300", "query", "ping", server="bad")
    assert rc == 1
    one_line_error(err, "no reply from", "; CURVE: no handshake with the daemon completed")
    rc, out, err = ctl("--query", d.query_ep, "--curve-key", c.key("good"), "--server-key",
                       c.key("server"), "query", "ping")
    assert rc == 1
    one_line_error(err, "public certificate", c.key("good"))
    rc, out, err = ctl("--query", d.query_ep, "--curve-key", c.key("nope") + "_secret",
                       "--server-key", c.key("server"), "stats")
    assert rc == 1
    one_line_error(err, "cannot read", "nope")
    # Without keys: a plain timeout, no CURVE hint.
    rc, out, err = ctl("--query", d.query_ep, "--timeout", "300", "query", "ping")
    assert rc == 1
    one_line_error(err, "no reply from")
    assert "CURVE" not in err

    # Revocation: delete the certificate, SIGHUP; admitted again after a copy.
    os.unlink(os.path.join(c.clients, "good.key"))
    # (the start already logged "N client key(s) admitted": wait for a new line)
    reloads = d.stderr().count("client key(s) admitted from")
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: d.stderr().count("client key(s) admitted from") > reloads, what="the reload")
    last = [ln for ln in d.stderr().splitlines() if "client key(s) admitted from" in ln][-1]
    assert "security: 0 client key(s)" in last, last
    rc, out, err = c.ctl("good", "--timeout", str(REFUSAL_MS), "query", "ping")
    assert rc == 1
    one_line_error(err, hint)
    shutil.copy(c.key("good"), c.clients)
    # (the start already logged "N client key(s) admitted": wait for a new line)
    reloads = d.stderr().count("client key(s) admitted from")
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: d.stderr().count("client key(s) admitted from") > reloads, what="the second reload")
    last = [ln for ln in d.stderr().splitlines() if "client key(s) admitted from" in ln][-1]
    assert "security: 1 client key(s)" in last, last
    rc, out, err = c.ctl("good", "query", "ping")
    assert rc == 0, err
    pub.close()


# ---- against a daemon fed by pyzmq ---------------------------------------

def test_query(d, f):
    rc, out, err = ctl_d(d, "query", "ping")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["ok"] is True and rep["version"]
    rep = json.loads(ctl_d(d, "query", "models")[1])
    assert "m1" in [m["model"] for m in rep["models"]]
    rep = json.loads(ctl_d(d, "query", "schema", "model=m1")[1])
    assert rep["tokens"] == TOKENS and rep["features"] == TOKENS[:-1] and rep["cls"] == CLS

    # trade: the matrices come as base64 of little-endian float32.
    rc, out, err = ctl_d(d, "query", "trade", "model=m1", "id=t-1")
    assert rc == 0, err
    rep = json.loads(out)
    A, G = f.trades["t-1"]
    R = np.frombuffer(base64.b64decode(rep["matrices"]["rollout"]), "<f4").reshape(N, N)
    assert_close(R, ref.rollout_matrix(A), what="rollout matrix")
    exp = f.expected("t-1")
    for m, v in rep["attr"].items():
        assert_close(v, exp[m], what=f"trade attr {m}")
    # Integer ids, typed arguments, quoted strings, arrays.
    rc, out, err = ctl_d(d, "query", "trade", "model=m1", "id=7", "flow=true")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["id"] == 7 and "flow" in rep["attr"]
    rc, out, err = ctl_d(d, "query", "trade", "model=m1", 'id="7"')
    assert rc == 1, "a quoted 7 is the string id '7', which was never sent"
    one_line_error(err, "not in the recent-trade cache")

    rc, out, err = ctl_d(d, "query", "schema", "model=nope")
    assert rc == 1 and out == ""
    one_line_error(err, "unknown model 'nope'")
    rc, out, err = ctl_d(d, "query", "frob")
    assert rc == 1
    one_line_error(err, "unknown op 'frob'")
    rc, out, err = ctl_d(d, "query", "schema", "model=[1,2]")
    assert rc == 1
    one_line_error(err, "'model' must be a str")


def test_stats(d, f):
    rc, out, err = ctl_d(d, "stats")
    assert rc == 0, err
    for needle in ["counters", "explained", "rejected by reason", "p50", "p99.9",
                   "models (", "m1", "query round trip"]:
        assert needle in out, (needle, out)
    assert len(max(out.splitlines(), key=len)) <= 100
    rc, out, err = ctl_d(d, "stats", "--json")
    assert rc == 0, err
    st = json.loads(out)
    assert st["counters"]["explained"] >= len(f.trades)
    assert set(st["latency_us"]) >= {"p50", "p90", "p99", "p999", "max"}


def test_tail(d, f):
    """tail --json prints each trade once, with the reference's numbers;
    text mode shows top-k with bars; filters by model and method."""
    results = {}

    def run(key, *args):
        results[key] = ctl_d(d, "tail", *args)

    t1 = threading.Thread(target=run, args=("json", "--model", "m1", "--count", "4", "--json"))
    t2 = threading.Thread(target=run, args=("text", "--model", "m1", "--method", "rollout",
                                            "--method", "grad_rollout", "-k", "3",
                                            "--count", "2"))
    t1.start()
    t2.start()
    # Subscribers join asynchronously: publish until both have what they need.
    i = 0
    while (t1.is_alive() or t2.is_alive()) and i < 500:
        f.send(f"tail-{i}")
        i += 1
        time.sleep(0.02)
    t1.join(30)
    t2.join(30)

    rc, out, err = results["json"]
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 4, out
    for line in lines:
        e = json.loads(line)
        assert e["model"] == "m1" and e["features"] == TOKENS[:-1]
        assert e["target"] == 1 and e["y"] == 0.5
        exp = f.expected(e["id"])
        assert set(e["attr"]) == set(exp) - {"flow", "diag"}, e["attr"].keys()
        for m, v in e["attr"].items():
            assert_close(v, exp[m], what=f"tail {m}")
    seqs = [json.loads(x)["seq"] for x in lines]
    assert seqs == list(range(seqs[0], seqs[0] + 4)), seqs

    rc, out, err = results["text"]
    assert rc == 0, err
    lines = out.splitlines()
    headers = [x for x in lines if x.startswith("m1  ")]
    assert len(headers) == 2, out
    assert "rollout" in out and "grad_rollout" in out
    assert "first_layer" not in out and "attn_mean" not in out
    bars = [x for x in lines if "█" in x]
    assert len(bars) == 2 * 2 * 3, out       # 2 trades, 2 methods, top 3
    assert all(len(x) <= 80 for x in lines), max(lines, key=len)
    # The first bar row of a method is its top feature by the reference.
    tid = headers[0].split()[1]
    exp = f.expected(tid)
    top = TOKENS[int(np.argmax(np.abs(exp["rollout"])))]
    first = next(x for x in lines if x.lstrip().startswith("rollout"))
    assert top in first, (top, first)

    rc, out, err = ctl_d(d, "tail", "--model", "nope", "--count", "1")
    assert rc == 1
    one_line_error(err, "unknown model 'nope'")
    rc, out, err = ctl_d(d, "tail", "--model", "m1", "--count", "1", "--wait", "300")
    assert rc == 1
    one_line_error(err, "no explanation within 300 ms")


def test_heatmap(d, f):
    tmp = tempfile.mkdtemp(prefix="xplctl-")
    path = os.path.join(tmp, "t.svg")
    rc, out, err = ctl_d(d, "heatmap", "--model", "m1", "--id", "t-1", "-o", path)
    assert rc == 0, err
    root = ET.parse(path).getroot()
    assert root.tag == SVG + "svg"
    cells = [r for r in root.iter(SVG + "rect") if r.get("class") == "cell"]
    assert len(cells) == N * N, len(cells)
    # Cell (i, j)'s tooltip holds R[i][j]; positions form the n x n grid.
    A, G = f.trades["t-1"]
    R = ref.rollout_matrix(A)
    xs = sorted({float(c.get("x")) for c in cells})
    ys = sorted({float(c.get("y")) for c in cells})
    assert len(xs) == N and len(ys) == N
    for c in cells:
        i, j = ys.index(float(c.get("y"))), xs.index(float(c.get("x")))
        title = c.find(SVG + "title").text
        assert title.startswith(f"{TOKENS[i]} → {TOKENS[j]}: "), title
        assert_close(float(title.rsplit(": ", 1)[1]), R[i][j], rel=1e-5, what="cell value")
    bars = [r for r in root.iter(SVG + "rect") if r.get("class") == "bar"]
    exp = f.expected("t-1")
    methods = [m for m in exp if m not in ("flow", "diag")]
    assert len(bars) == len(methods) * (N - 1), len(bars)

    # grad_rollout, stdout, integer ids.
    rc, out, err = ctl_d(d, "heatmap", "--model", "m1", "--id", "7", "--method", "grad_rollout")
    assert rc == 0, err
    root = ET.fromstring(out)
    cells = [r for r in root.iter(SVG + "rect") if r.get("class") == "cell"]
    assert len(cells) == N * N

    rc, out, err = ctl_d(d, "heatmap", "--model", "m1", "--id", "no-such-trade", "-o", path)
    assert rc == 1
    one_line_error(err, "not in the recent-trade cache")
    rc, out, err = ctl_d(d, "heatmap", "--model", "nope", "--id", "t-1", "-o", path)
    assert rc == 1
    one_line_error(err, "unknown model 'nope'")
    rc, out, err = ctl_d(d, "heatmap", "--model", "m1", "--id", "nograd", "--method",
                         "grad_rollout", "-o", path)
    assert rc == 1
    one_line_error(err, "no grad_rollout matrix")
    rc, out, err = ctl_d(d, "heatmap", "--model", "m1", "--id", "t-1", "-o",
                         os.path.join(tmp, "no", "such", "dir.svg"))
    assert rc == 1
    one_line_error(err, "cannot write")


def test_top(d, f):
    """top --once: the ranking of a method matches the global state, the
    drift table lists every method; unknown model and method."""
    wait_until(lambda: d.query("global", model="m1")["ok"], what="global state")
    rc, out, err = ctl_d(d, "top", "--model", "m1", "--once", "--method", "attn_mean", "-k", "3")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("xplaind top  m1  epoch 1"), lines[0]
    assert "\033" not in out, "no terminal control sequences when not on a terminal"
    g = d.query("global", model="m1")
    mean = g["methods"]["attn_mean"]["mean"]
    order = sorted(range(len(mean)), key=lambda j: -mean[j])
    rows = [x for x in lines if x[:4].strip().isdigit()]
    assert len(rows) == 3, out
    for r, row in enumerate(rows):
        assert row.split()[1] == TOKENS[order[r]], (row, order)
    assert "2 more features" in out
    drift = lines.index(next(x for x in lines if x.startswith("drift")))
    for m in ["rollout", "grad_rollout", "first_layer", "attn_mean"]:
        assert any(x.split()[:1] == [m] for x in lines[drift:]), (m, out)
    assert any(x.startswith("alerts") for x in lines)
    assert len(lines) <= 24 and all(len(x) <= 80 for x in lines), out

    rc, out, err = ctl_d(d, "top", "--model", "m1", "--count", "2", "--interval", "100")
    assert rc == 0, err
    assert out.count("xplaind top  m1") == 2
    rc, out, err = ctl_d(d, "top", "--model", "m1", "--once", "--method", "flow")
    assert rc == 0 and "method 'flow' has no global state" in out, out
    rc, out, err = ctl_d(d, "top", "--model", "nope", "--once")
    assert rc == 1
    one_line_error(err, "unknown model 'nope'")


def test_top_no_models(bare):
    d = bare
    """A daemon that has no model yet: top waits up to the timeout, then
    says so (interactively it would wait until interrupted)."""
    t0 = time.time()
    rc, out, err = ctl_d(d, "top", "--once", "--timeout", "400")
    assert rc == 1, (rc, out, err)
    one_line_error(err, "no models yet")
    assert 0.35 < time.time() - t0 < 5


# ---- against the demo stream ---------------------------------------------

def test_demo_tail(demo):
    d = demo
    rc, out, err = ctl_d(d, "tail", "--count", "3", "-k", "2", "--ascii")
    assert rc == 0, err
    assert out.count("demo-trades  ") == 3
    assert "#" in out and "█" not in out


def test_demo_top(demo):
    d = demo
    """The README's live view: the demo model is picked by default."""
    wait_until(lambda: d.query("global", model="demo-trades")["ok"], what="demo global state")
    rc, out, err = ctl_d(d, "top", "--once")
    assert rc == 0, err
    assert out.startswith("xplaind top  demo-trades"), out
    assert "rollout" in out and "drift" in out
