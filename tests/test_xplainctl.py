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
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET

import numpy as np

from xpltest import (BUILD, Daemon, assert_close, encode, join, random_attention, ref,
                     wait_until)

import msgpack

XPLAINCTL = os.path.join(BUILD, "client", "xplainctl")
SVG = "{http://www.w3.org/2000/svg}"
L, H, N, CLS = 2, 3, 6, 5
TOKENS = ["price", "size", "spread", "side", "venue", "CLS"]


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
    raise AssertionError("daemon did not explain the trades")


# ---- without a daemon --------------------------------------------------

def test_help_everywhere(_):
    rc, out, err = ctl("--help")
    assert rc == 0 and "usage: xplainctl COMMAND" in out, (rc, out, err)
    for cmd in ["tail", "top", "query", "heatmap", "stats"]:
        assert cmd in out
        rc, out2, err = ctl(cmd, "--help")
        assert rc == 0, (cmd, rc, err)
        assert out2.startswith(f"usage: xplainctl {cmd}"), out2
        assert "--query EP" in out2 and "--timeout MS" in out2, cmd
        rc, out3, _ = ctl("help", cmd)
        assert rc == 0 and out3 == out2
    rc, out, _ = ctl("--version")
    assert rc == 0 and out.startswith("xplainctl ")


def test_usage_errors(_):
    for args, needle in [([], None), (["frob"], "unknown command 'frob'"),
                         (["tail", "--bogus"], "unknown argument '--bogus'"),
                         (["tail", "-k", "zero"], "non-negative integer"),
                         (["tail", "-k", "0"], "at least 1"),
                         (["query"], "no op given"), (["query", "ping", "novalue"], "KEY=VALUE"),
                         (["heatmap", "--model", "m1"], "--id are required"),
                         (["stats", "--timeout"], "needs a value"),
                         (["stats", "--timeout", "0"], "at least 1 ms"),
                         (["top", "--bogus"], "unknown argument")]:
        rc, out, err = ctl(*args)
        assert rc == 2, (args, rc, out, err)
        if needle:
            one_line_error(err, needle)


def test_unreachable_daemon(_):
    tmp = tempfile.mkdtemp(prefix="xplctl-")
    nobody = ["--query", f"ipc://{tmp}/q", "--sub", f"ipc://{tmp}/p", "--timeout", "200"]
    for args in [["query", "ping"], ["stats"], ["heatmap", "--model", "m", "--id", "1"],
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


def test_top_no_models(d):
    """A daemon that has no model yet: top waits up to the timeout, then
    says so (interactively it would wait until interrupted)."""
    t0 = time.time()
    rc, out, err = ctl_d(d, "top", "--once", "--timeout", "400")
    assert rc == 1, (rc, out, err)
    one_line_error(err, "no models yet")
    assert 0.35 < time.time() - t0 < 5


# ---- against the demo stream ---------------------------------------------

def test_demo_tail(d):
    rc, out, err = ctl_d(d, "tail", "--count", "3", "-k", "2", "--ascii")
    assert rc == 0, err
    assert out.count("demo-trades  ") == 3
    assert "#" in out and "█" not in out


def test_demo_top(d):
    """The README's live view: the demo model is picked by default."""
    wait_until(lambda: d.query("global", model="demo-trades")["ok"], what="demo global state")
    rc, out, err = ctl_d(d, "top", "--once")
    assert rc == 0, err
    assert out.startswith("xplaind top  demo-trades"), out
    assert "rollout" in out and "drift" in out


def main():
    failures = []
    passed = 0

    def run(name, fn, *args):
        nonlocal passed
        try:
            fn(*args)
            passed += 1
            print(f"ok   {name}")
        except Exception:
            failures.append(name)
            print(f"FAIL {name}\n{traceback.format_exc()}")

    for name, fn in [("help", test_help_everywhere), ("usage", test_usage_errors),
                     ("unreachable", test_unreachable_daemon)]:
        run(name, fn, None)

    d = Daemon()
    try:
        run("top without models", test_top_no_models, d)
        f = Feeder(d)
        for k in range(3):
            f.send(f"t-{k}")
        f.send(7)
        f.send("nograd", grad=False)
        wait_explained(d, 5)
        for name, fn in [("query", test_query), ("stats", test_stats), ("tail", test_tail),
                         ("heatmap", test_heatmap), ("top", test_top)]:
            run(name, fn, d, f)
    finally:
        d.stop()

    d = Daemon("--demo", ingest_bind=False)
    try:
        run("demo tail", test_demo_tail, d)
        run("demo top", test_demo_top, d)
    finally:
        d.stop()

    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
