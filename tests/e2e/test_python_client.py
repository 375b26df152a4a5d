"""The Python client package (client/python/xplain) against a real xplaind.

- codec: bf16 and f16 encodings are exactly round-to-nearest-even, checked
  against an independent float64 construction on every bit pattern and on
  random values, and against torch's own conversions when torch is there;
- Publisher: messages as the contract says (decoded with plain pyzmq +
  msgpack), seq, ids, schema sent first and again on change and when a
  daemon (re)joins, argument errors;
- round trips through the daemon: every per-trade vector of every method,
  for f32/f16/bf16, batches, CLS first/last/none, equals tests/ref.py on
  the tensors the daemon decoded; feature names attached; the trade
  query's matrices; global state (query, Subscriber, GlobalView / Clone
  pattern), head statistics, reference, drift and baseline ops; epochs;
- error paths: unknown model, unknown op, malformed request, bad argument,
  not found, timeouts (and no late reply answering the next question);
- CURVE: czmq certificates parsed as the daemon parses them, raw Z85 keys,
  and every class against a daemon started with --curve (keys from
  `xplainctl keygen`): the listed key admitted on the query, publish and
  ingest paths, the unlisted one refused on each (QueryTimeout with the
  hint that the daemon refused the key, auth_refused grows);
- the PyTorch capture helper (when torch is installed): attention and
  gradients equal an explicit re-implementation of the model with
  hand-written attention, layer by layer, whatever order the layers are
  registered in.

Run by ctest with /usr/bin/python3 and XPL_BUILD_DIR / XPL_SOURCE_DIR.
"""
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

SOURCE = os.environ.get("XPL_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("XPL_BUILD_DIR") or os.path.join(SOURCE, "build")
XPLAIND = os.path.join(BUILD, "daemon", "xplaind")
sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
sys.path.insert(0, os.path.join(SOURCE, "tests"))

import ref      # noqa: E402  (float64 reference of MATH.md)
from xpltest import free_port  # noqa: E402
import xplain   # noqa: E402
from xplain import codec, curve  # noqa: E402

ALL = "rollout,grad_rollout,first_layer,attn_mean,diag,flow"



@pytest.fixture
def d():
    """A daemon with every method and drift windows of 10 trades; it must
    stop cleanly."""
    with xplain.Daemon(XPLAIND, methods=ALL, args=["--drift-window", "10"]) as d:
        yield d
        rc = d.stop()
        assert rc == 0, "daemon exit status %s:\n%s" % (rc, d.log_text())


@pytest.fixture
def d_py_last(d):
    """The daemon, having explained one trade of py_last (SCHEMAS)."""
    model, L, H, n, cls = SCHEMAS[0]
    p = xplain.Publisher(model, connect=d.ingest, tokens=["f%d" % j for j in range(n)], cls=cls)
    assert p.wait_subscriber(10), "the daemon did not subscribe"
    q = xplain.Client(d.query, timeout=5)
    A = random_attention(np.random.default_rng(9), (1, L, H, n, n))
    p.send(A)
    wait_until(lambda: any(m["model"] == model and m["explained"] >= 1 for m in q.models()),
               what="a trade of py_last to be explained")
    q.close()
    p.close()
    return d


def assert_close(got, want, rel=1e-5, abs_=1e-12, what=""):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, "%s: shape %s, want %s" % (what, got.shape, want.shape)
    bad = np.abs(got - want) > rel * np.abs(want) + abs_
    assert not bad.any(), "%s: %d of %d differ, e.g. %r vs %r" % (
        what, bad.sum(), bad.size, got[bad][:3], want[bad][:3])


def wait_until(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def random_attention(rng, shape, temp=1.5):
    z = rng.standard_normal(shape) * temp
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def join(d, sub):
    """Beat the slow joiner between the daemon's PUB and `sub` (which must
    receive every model): publish a probe model until one explanation of it
    reaches the subscriber, then drain the probes."""
    probe = xplain.Publisher("zz_probe", connect=d.ingest, tokens=["a", "b"], cls=-1)
    assert probe.wait_subscriber(10), "daemon never subscribed to the probe publisher"
    A = np.full((1, 1, 2, 2), 0.5, np.float32)

    def once():
        probe.send(A)
        x = sub.recv(timeout=0.05)
        return x is not None and x.model == "zz_probe"
    wait_until(once, what="the subscriber to be joined")
    # A last probe, read up to: one publisher's trades arrive in order, so
    # every earlier probe has been read too.
    probe.send(A, ids=["last"])
    wait_until(lambda: (lambda x: x is not None and x.model == "zz_probe" and x.id == "last")(
        sub.recv(timeout=0.05)), what="the last probe's explanation")
    probe.close()


def recv_n(sub, n, timeout=10.0, model=None):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        x = sub.recv(timeout=max(0.0, deadline - time.monotonic()))
        assert x is not None, "received %d of %d messages" % (len(out), n)
        if model is None or x.model == model:
            out.append(x)
    return out


# --- codec -----------------------------------------------------------------

def bf16_reference(x):
    """float32 -> bf16 bits by float64 arithmetic: the two bf16 values that
    bracket |x|, the nearer one, ties to the even pattern, past the largest
    finite value by half an ulp -> Inf. Shares nothing with codec's bit trick."""
    bits = np.asarray(x, np.float32).view(np.uint32)
    sign = (bits >> 16) & 0x8000
    t = (bits & 0x7FFFFFFF) >> 16                          # truncation, toward 0
    mag = np.abs(np.asarray(x, np.float32).astype(np.float64))
    lo = (t.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    up = (t + 1).astype(np.uint32)
    hi = np.where(up == 0x7F80, 2.0 ** 128, (up << 16).view(np.float32).astype(np.float64))
    dl, dh = mag - lo, hi - mag
    pick = np.where(dl < dh, t, np.where(dl > dh, t + 1, np.where(t % 2 == 0, t, t + 1)))
    return (pick | sign).astype(np.uint16)


def test_codec_bf16():
    enc = codec.f32_to_bf16_bits
    one = np.float32(1.0)
    cases = [
        (1.0, 0x3F80), (-2.0, 0xC000), (0.0, 0x0000), (-0.0, 0x8000),
        (float(one + np.float32(2.0 ** -8)), 0x3F80),            # tie, even stays down
        (float(one + np.float32(3 * 2.0 ** -8)), 0x3F82),        # tie, odd goes up
        (float(one + np.float32(2.0 ** -8 + 2.0 ** -20)), 0x3F81),   # above the tie
        (float(np.float32(2.0 ** 128 - 2.0 ** 120)), 0x7F7F),    # the largest bf16
        (float(np.float32(2.0 ** 128 - 2.0 ** 119 - 2.0 ** 104)), 0x7F7F),   # below the tie
        (float(np.float32(2.0 ** 128 - 2.0 ** 119)), 0x7F80),    # tie past the largest: Inf
        (float("inf"), 0x7F80), (float("-inf"), 0xFF80),
        (float(np.float32(2.0 ** -133)), 0x0001),                # the smallest subnormal
        (float(np.float32(2.0 ** -134)), 0x0000),                # subnormal tie to even 0
        (float(np.float32(3 * 2.0 ** -134)), 0x0002),            # subnormal tie to even 2
    ]
    for v, want in cases:
        got = int(enc(np.array([v], np.float32))[0])
        assert got == want, "bf16(%r) = %#06x, want %#06x" % (v, got, want)
    assert (int(enc(np.array([np.nan], np.float32))[0]) & 0x7FFF) > 0x7F80, "NaN must stay NaN"

    # Every bf16 pattern decodes to a float32 that encodes back to itself.
    allb = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    dec = codec.bf16_bits_to_f32(allb)
    fin = ~np.isnan(dec)
    assert np.array_equal(enc(dec[fin]), allb[fin]), "bf16 patterns do not round-trip"
    assert np.isnan(codec.bf16_bits_to_f32(enc(dec[~fin]))).all()

    # Random float32 bit patterns (all exponents) and values near ties.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[np.isfinite(x)]
    ties = (rng.integers(0, 1 << 16, 1 << 16).astype(np.uint32) << 16 | 0x8000).view(np.float32)
    x = np.concatenate([x, ties[np.isfinite(ties)], rng.standard_normal(1 << 16).astype(np.float32)])
    assert np.array_equal(enc(x), bf16_reference(x)), "bf16 rounding differs from the reference"
    assert np.array_equal(codec.decode(codec.encode(x, "bf16"), "bf16"), codec.round_to(x, "bf16"))
    try:
        import torch
    except ImportError:
        print("  (torch absent: bf16 not compared with torch)")
        return
    tb = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(enc(x), tb), "bf16 differs from torch's conversion"


def test_codec_f16():
    enc = lambda a: np.frombuffer(codec.encode(a, "f16"), "<u2")   # noqa: E731
    allh = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    dec = codec.decode(allh.astype("<u2").tobytes(), "f16")
    fin = ~np.isnan(dec)
    assert np.array_equal(enc(dec[fin]), allh[fin]), "f16 patterns do not round-trip"
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(1 << 18) * np.exp2(rng.integers(-26, 17, 1 << 18))).astype(np.float32)
    b = enc(x).astype(np.int64)
    # Nearest, ties to even: compare with the f16 neighbours in float64.
    mag = b & 0x7FFF
    ok = mag < 0x7C00
    xs, mg = np.abs(x[ok].astype(np.float64)), mag[ok]
    val = lambda m: codec.decode(np.asarray(m, "<u2").tobytes(), "f16").astype(np.float64)  # noqa: E731
    here = val(mg)
    below = val(np.maximum(mg - 1, 0))
    above = np.where(mg + 1 >= 0x7C00, 65520.0 + 16, val(np.minimum(mg + 1, 0x7BFF)))
    d0 = np.abs(xs - here)
    assert (d0 <= np.abs(xs - below)).all() and (d0 <= np.abs(xs - above)).all(), "f16 not nearest"
    tie = (d0 == np.abs(xs - below)) & (mg > 0) | (d0 == np.abs(xs - above))
    assert (mg[tie & (d0 > 0)] % 2 == 0).all(), "f16 ties not to even"
    assert (mag[~ok] == 0x7C00).all() and (np.abs(x[~ok]) >= 65520).all(), "f16 overflow"
    assert int(enc(np.array([65519.0], np.float32))[0]) == 0x7BFF
    assert int(enc(np.array([65520.0], np.float32))[0]) == 0x7C00
    assert int(enc(np.array([2.0 ** -25], np.float32))[0]) == 0x0000       # tie to even 0
    assert int(enc(np.array([3 * 2.0 ** -25], np.float32))[0]) == 0x0002   # tie to even 2
    try:
        import torch
    except ImportError:
        return
    th = torch.from_numpy(x).to(torch.float16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(enc(x), th), "f16 differs from torch's conversion"


# --- publisher on the wire (no daemon) -------------------------------------

def test_publisher_wire():
    ctx = zmq.Context.instance()
    pub = xplain.Publisher("m.wire-1", bind="tcp://127.0.0.1:*", tokens=["a", "b", "c"], cls=2,
                           dtype="bf16", seq=7)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVTIMEO, 5000)
    sub.subscribe(b"attn/")
    sub.connect(pub.endpoint)
    assert pub.wait_subscriber(5), "no subscription seen by the XPUB"
    rng = np.random.default_rng(3)
    A = random_attention(rng, (2, 1, 2, 3, 3))
    G = rng.standard_normal((2, 1, 2, 3, 3)).astype(np.float32)
    assert pub.send(A, grad=G, target=1, y=[0.25, 0.75]) == 7
    topic, raw = sub.recv_multipart()
    m = msgpack.unpackb(raw)
    assert topic == b"attn/m.wire-1"
    assert m["v"] == 1 and m["model"] == "m.wire-1" and m["seq"] == 7 and m["dtype"] == "bf16"
    assert (m["L"], m["H"], m["n"]) == (1, 2, 3) and m["ids"] == [0, 1]
    assert m["cls"] == 2 and m["tokens"] == ["a", "b", "c"]
    assert m["target"] == [1, 1] and m["y"] == [0.25, 0.75]
    assert abs(m["ts"] - time.time_ns()) < 60e9
    assert len(m["attn"]) == 2 * 1 * 2 * 3 * 3 * 2
    assert np.array_equal(codec.decode(m["attn"], "bf16", A.shape), codec.round_to(A, "bf16"))
    assert np.array_equal(codec.decode(m["grad"], "bf16", G.shape), codec.round_to(G, "bf16"))

    # One trade [L,H,n,n]; the schema is not repeated; ids continue.
    pub.send(A[0], ids=["x-1"], ts=123)
    m = msgpack.unpackb(sub.recv_multipart()[1])
    assert m["seq"] == 8 and m["ids"] == ["x-1"] and m["ts"] == 123
    assert "cls" not in m and "tokens" not in m and "grad" not in m and "target" not in m
    pub.send(A)
    assert msgpack.unpackb(sub.recv_multipart()[1])["ids"] == [2, 3]
    # A schema change carries the schema again.
    pub.send(A, tokens=["a", "b", "z"])
    m = msgpack.unpackb(sub.recv_multipart()[1])
    assert m["tokens"] == ["a", "b", "z"] and m["cls"] == 2
    # A new subscriber (a daemon joining) makes the next message carry it too.
    sub2 = ctx.socket(zmq.SUB)
    sub2.setsockopt(zmq.RCVTIMEO, 5000)
    sub2.subscribe(b"attn/m.wire")
    sub2.connect(pub.endpoint)
    assert pub.wait_subscriber(5)
    pub.send(A)
    m = msgpack.unpackb(sub.recv_multipart()[1])
    assert m["tokens"] == ["a", "b", "z"], "schema not re-sent after a new subscription"
    assert msgpack.unpackb(sub2.recv_multipart()[1])["seq"] == m["seq"]
    pub.send(A)
    assert "tokens" not in msgpack.unpackb(sub.recv_multipart()[1])
    # f32 and f16 payloads hold exactly the values the daemon will see.
    for dt in ("f32", "f16"):
        pub.dtype = dt
        pub.send(A)
        m = msgpack.unpackb(sub.recv_multipart()[1])
        assert m["dtype"] == dt
        assert np.array_equal(codec.decode(m["attn"], dt, A.shape), codec.round_to(A, dt))
    sub.close(0)
    sub2.close(0)

    # Argument errors are caught before anything is sent.
    bad = [
        lambda: xplain.Publisher("bad name", bind="inproc://x1"),
        lambda: xplain.Publisher("m" * 65, bind="inproc://x2"),
        lambda: xplain.Publisher("m", bind="inproc://x3", dtype="f64"),
        lambda: xplain.Publisher("m", bind="inproc://x4", connect="inproc://x5"),
        lambda: xplain.Publisher("m"),
        lambda: pub.send(A[:, :, :, :2]),                       # not square
        lambda: pub.send(A, grad=G[:1]),                        # grad shape
        lambda: pub.send(A, tokens=["a", "b"]),                 # n = 3
        lambda: pub.send(A, cls=3),
        lambda: pub.send(A, ids=[1]),                           # B = 2
        lambda: pub.send(A, ids=[1, -2]),
        lambda: pub.send(A, target=[0, 1, 1]),
    ]
    for i, f in enumerate(bad):
        try:
            f()
        except ValueError:
            continue
        raise AssertionError("bad call %d did not raise ValueError" % i)
    nosch = xplain.Publisher("m", bind="inproc://x6")
    try:
        nosch.send(A)
        raise AssertionError("send without a schema did not raise")
    except ValueError as e:
        assert "schema" in str(e)
    nosch.close()
    pub.close()


# --- round trips through the daemon ------------------------------------------

SCHEMAS = [   # model, L, H, n, cls
    ("py_last", 3, 4, 6, 5),
    ("py_first", 2, 3, 5, 0),
    ("py_none", 2, 2, 4, -1),
]


def test_round_trips(d):
    q = xplain.Client(d.query, timeout=5)
    sub = xplain.Subscriber(d.publish, query=q)
    dsub = xplain.Subscriber(d.publish, models=["py_last"], kinds=("drift",))
    join(d, sub)
    rng = np.random.default_rng(4)
    sent = {}          # (model, id) -> (A, G, target, y) as the daemon decodes them
    pubs = {}
    for model, L, H, n, cls in SCHEMAS:
        toks = ["f%d_%s" % (j, model) if j != cls else "CLS" for j in range(n)]
        pubs[model] = p = xplain.Publisher(model, connect=d.ingest, tokens=toks, cls=cls)
        assert p.wait_subscriber(10), "the daemon did not subscribe"
        k = 0
        for dtype in ("f32", "f16", "bf16"):
            p.dtype = dtype
            for B, with_grad in ((1, True), (3, True), (2, False)):
                A = random_attention(rng, (B, L, H, n, n))
                G = rng.standard_normal(A.shape).astype(np.float32) if with_grad else None
                ids = ["%s-%d" % (model, k + b) if (k + b) % 2 else k + b for b in range(B)]
                k += B
                tgt = rng.integers(0, 2, B)
                yv = rng.random(B)
                p.send(A, grad=G, ids=ids, target=tgt, y=yv)
                for b, i in enumerate(ids):
                    sent[(model, i)] = (codec.round_to(A[b], dtype),
                                        None if G is None else codec.round_to(G[b], dtype),
                                        int(tgt[b]), float(yv[b]))
    got = {}
    for x in recv_n(sub, len(sent)):
        assert (x.model, x.id) not in got, "duplicate explanation %r" % ((x.model, x.id),)
        got[(x.model, x.id)] = x
    assert set(got) == set(sent), "missing explanations: %s" % (set(sent) - set(got))
    assert sub.gaps == 0, "seq gaps on xpl/: %d" % sub.gaps

    # Every vector of every method equals the float64 reference.
    checked = 0
    for (model, i), (A, G, tgt, yv) in sent.items():
        cls = dict((s[0], s[4]) for s in SCHEMAS)[model]
        want = ref.methods(A, G, cls, with_flow=True)
        x = got[(model, i)]
        expect = {"rollout", "first_layer", "attn_mean", "diag", "flow"} | ({"grad_rollout"} if G is not None else set())
        assert set(x.attr) == expect, "%s: methods %s" % (i, sorted(x.attr))
        for m, v in x.attr.items():
            assert v.dtype == np.float32
            assert_close(v, want[m], what="%s/%s %s" % (model, i, m))
            checked += v.size
        assert x.target == tgt and abs(x.y - yv) < 1e-12 and x.epoch == 1
        n = A.shape[-1]
        feats = ["f%d_%s" % (j, model) for j in range(n) if j != cls]
        assert x.features == feats, "features %r" % (x.features,)
        assert x.top("rollout", 1)[0][1] == float(np.max(x.attr["rollout"]))
        assert list(x.as_dict("attn_mean")) == feats
    print("  %d trades, %d values equal to the reference" % (len(sent), checked))

    # The trade query: attr and the full n x n matrices.
    for (model, i) in [("py_last", 0), ("py_last", "py_last-1"), ("py_first", "py_first-3"), ("py_none", 4)]:
        A, G, tgt, yv = sent[(model, i)]
        cls = dict((s[0], s[4]) for s in SCHEMAS)[model]
        t = q.trade(model, i)
        assert t["id"] == i and t["model"] == model and t["target"] == tgt
        assert t["matrices"]["rollout"].shape == (A.shape[-1],) * 2
        assert_close(t["matrices"]["rollout"], ref.rollout_matrix(np.float64(A)), what="trade rollout matrix")
        if G is None:
            assert "grad_rollout" not in t["matrices"] and "grad_rollout" not in t["attr"]
        else:
            assert_close(t["matrices"]["grad_rollout"], ref.grad_rollout_matrix(np.float64(A), np.float64(G)),
                         what="trade grad_rollout matrix")
        assert_close(t["attr"]["rollout"], ref.methods(A, G, cls)["rollout"], what="trade attr")

    # Schema, models, stats.
    s = q.schema("py_first")
    assert (s["L"], s["H"], s["n"], s["cls"], s["epoch"]) == (2, 3, 5, 0, 1)
    assert s["features"] == ["f%d_py_first" % j for j in range(1, 5)] and s["tokens"][0] == "CLS"
    ms = {m["model"]: m for m in q.models()}
    for model, L, H, n, cls in SCHEMAS:
        mm = ms[model]
        assert (mm["L"], mm["H"], mm["n"], mm["cls"]) == (L, H, n, cls)
        assert mm["trades"] == 18 and mm["explained"] == 18 and mm["received"] == 9
        assert mm["lost"] == 0 and mm["rejected"] == 0
    st = q.stats()
    assert st["counters"]["explained"] >= len(sent) and sum(st["rejected"].values()) == 0
    assert "p99" in st["latency_us"]
    v = q.ping()
    assert isinstance(v["version"], str) and v["version"]

    # Global state: the mean of the published vectors, per method and per target.
    g = q.global_state("py_last")
    ours = [got[k] for k in sent if k[0] == "py_last"]
    assert g["count"] == 18 and g["epoch"] == 1 and g["features"] == ours[0].features
    for m, e in g["methods"].items():
        vecs = np.array([x.attr[m] for x in ours if m in x.attr], np.float64)
        assert e["count"] == len(vecs)
        assert_close(e["mean"], vecs.mean(axis=0), rel=1e-9, what="global mean " + m)
        assert_close(e["std"], vecs.std(axis=0, ddof=1), rel=1e-6, abs_=1e-12, what="global std " + m)
    for t in g["targets"]:
        vecs = np.array([x.attr["rollout"] for x in ours if x.target == t["target"]], np.float64)
        assert_close(t["methods"]["rollout"]["mean"], vecs.mean(axis=0), rel=1e-9, what="per-target mean")
    one = q.global_state("py_last", method="diag", target=1)
    assert list(one["methods"]) == ["diag"]

    # glob/ and heads/ on the Subscriber, and the Clone-pattern view.
    gsub = xplain.Subscriber(d.publish, models=["py_last"], kinds=("glob", "heads"), query=q)
    view = xplain.GlobalView(d.publish, q, "py_last")
    assert view.state is not None and view.state["count"] == 18 and view.snapshots == 1
    seq0 = view.seq
    time.sleep(0.2)
    p = pubs["py_last"]
    p.dtype = "f32"
    L, H, n = 3, 4, 6
    extra = []
    for _ in range(4):
        A = random_attention(rng, (2, L, H, n, n))
        G = rng.standard_normal(A.shape).astype(np.float32)
        p.send(A, grad=G, target=[0, 1])
        extra += [(A[b], G[b]) for b in range(2)]
    # Until an update covers all 26: on a loaded machine one may go out
    # after only some of the 8 trades.
    wait_until(lambda: (view.poll(0.1), view.state is not None and view.state["count"] == 26)[1],
               what="a glob/ update with 26 trades")
    assert view.seq > seq0 and view.updates >= 1 and view.state["count"] == 26
    mean26 = view.mean("rollout")
    assert mean26 is not None and mean26.shape == (n - 1,)
    assert view.mean("rollout", target=1) is not None
    # The latest glob/ and heads/ updates, once they cover all 26 trades
    # (importance needs a gradient: 12 of the first 18 trades had one, and
    # the 8 just sent).
    allA = [a for (mm, _), (a, _, _, _) in sent.items() if mm == "py_last"] + [a for a, _ in extra]
    allAG = [(a, g_) for (mm, _), (a, g_, _, _) in sent.items() if mm == "py_last" and g_ is not None]
    allAG += extra
    assert (len(allA), len(allAG)) == (26, 20)
    seen = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (
            "glob" in seen and seen["glob"]["count"] == 26
            and "heads" in seen and seen["heads"]["confidence_count"] == 26):
        u = gsub.recv(timeout=0.5)
        if u is not None:
            assert u.model == "py_last" and u.kind in ("glob", "heads")
            seen[u.kind] = u
    assert set(seen) == {"glob", "heads"}, "glob/heads updates: %s" % list(seen)
    assert seen["glob"]["count"] == 26 and seen["heads"]["confidence_count"] == 26
    assert seen["glob"].features == ours[0].features
    assert isinstance(seen["glob"]["methods"]["rollout"]["mean"], np.ndarray)
    # Head statistics: means over trades of MATH.md's per-trade values.
    hs = seen["heads"]
    assert (hs["L"], hs["H"]) == (L, H) and hs["importance"].shape == (L, H)
    assert hs["importance_count"] == 20
    assert_close(hs["importance"], np.mean([ref.head_stats(a, g_)[0] for a, g_ in allAG], axis=0),
                 rel=1e-6, what="head importance")
    assert_close(hs["confidence"], np.mean([ref.head_stats(a, None)[1] for a in allA], axis=0),
                 rel=1e-6, what="head confidence")

    # drift/ on the Subscriber (the daemon runs --drift-window 10): for
    # rollout, window 0 (trades 0-9) became the baseline and window 1
    # (trades 10-19) was compared with it, as MATH.md says.
    drift = {}
    deadline = time.monotonic() + 5
    while len(drift) < 2 and time.monotonic() < deadline:
        u = dsub.recv(timeout=0.5)
        if u is not None and u["method"] == "rollout":
            drift[u["window"]] = u
    assert sorted(drift) == [0, 1], "drift windows of rollout: %s" % sorted(drift)
    w0, w1 = drift[0], drift[1]
    assert w0["compared"] is False and w0["reference"] == "baseline" and w0["alert"] is False
    assert w1["compared"] is True and w1["reference"] == "baseline" and w1["trades"] == 10
    roll = [got[k].attr["rollout"] for k in sent if k[0] == "py_last"]
    roll += [ref.methods(a, None, 5)["rollout"] for a, _ in extra]
    base, cur = np.mean(roll[0:10], axis=0), np.mean(roll[10:20], axis=0)
    assert abs(w1["spearman"] - ref.spearman(cur, base)) < 1e-9
    assert abs(w1["ndcg"] - ref.ndcg(cur, base, 10)) < 1e-6
    assert abs(w1["js"] - ref.js(cur, base)) < 1e-6
    assert w1["alert"] == (w1["spearman"] < 0.8 or w1["ndcg"] < 0.9 or w1["js"] > 0.1)

    # reference, baseline, drift.
    refv = np.arange(n - 1, dtype=np.float64)[::-1]
    r = q.reference("py_last", "rollout", refv)
    want_rho = ref.spearman(refv, q.global_state("py_last")["methods"]["rollout"]["mean"])
    assert r["method"] == "rollout" and abs(r["spearman"] - want_rho) < 1e-12
    gm = q.global_state("py_last", method="rollout")["methods"]["rollout"]
    assert np.array_equal(gm["reference"], refv) and abs(gm["reference_spearman"] - want_rho) < 1e-12
    b = q.baseline("py_last", "pin", method="diag")
    assert b["action"] == "pin" and b["methods"] == ["diag"]
    dr = q.drift("py_last")
    assert dr["methods"]["rollout"]["reference"] == "external"
    assert dr["methods"]["diag"]["reference"] == "pinned"
    assert dr["thresholds"]["rho_min"] == 0.8 and dr["window"] == 10
    assert dr["methods"]["rollout"]["windows"] == 2 and dr["methods"]["rollout"]["filled"] == 6
    assert dr["methods"]["rollout"]["last"]["window"] == 1
    assert all(a["window"] >= 1 for a in dr["alerts"])
    assert ("rollout", 1) in [(a["method"], a["window"]) for a in dr["alerts"]] or not w1["alert"]
    q.baseline("py_last", "reset")
    assert q.drift("py_last", method="diag")["methods"]["diag"]["reference"] != "pinned"

    # A schema change starts epoch 2, with its own feature names.
    toks2 = ["g%d" % j for j in range(n - 1)] + ["CLS"]
    A = random_attention(rng, (1, L, H, n, n))
    p.send(A, tokens=toks2, ids=["e2"])
    x = wait_until(lambda: (lambda u: u if u is not None and u.id == "e2" else None)(sub.recv(timeout=0.5)),
                   what="the explanation of trade e2")
    assert x.epoch == 2 and x.features == toks2[:-1] and x.id == "e2"
    assert q.global_state("py_last")["count"] == 1
    assert q.global_state("py_last", epoch=1)["count"] == 26

    # Model filter: py_none does not match py_n*, only itself.
    only = xplain.Subscriber(d.publish, models=["py_none"], query=q)

    def joined():       # the slow joiner: py_none trades until one reaches `only`
        pubs["py_none"].send(random_attention(rng, (1, 2, 2, 4, 4)), ids=["w"])
        return only.recv(timeout=0.05) is not None
    wait_until(joined, what="the py_none subscriber to receive a first trade")
    pubs["py_none"].send(random_attention(rng, (1, 2, 2, 4, 4)), ids=["f1"])
    pubs["py_first"].send(random_attention(rng, (1, 2, 3, 5, 5)), ids=["f2"])
    pubs["py_none"].send(random_attention(rng, (1, 2, 2, 4, 4)), ids=["f3"])
    xs = []
    while len(xs) < 2:      # the joining trades ("w") went out first, in order
        x = only.recv(timeout=5)
        assert x is not None, f"timed out waiting for f1 and f3 (got {[y.id for y in xs]})"
        if x.id != "w":
            xs.append(x)
    assert [x.id for x in xs] == ["f1", "f3"], xs
    assert only.recv(timeout=0.3) is None
    for o in (only, gsub, dsub, view, sub, q):
        o.close()
    for p in pubs.values():
        p.close()


def test_errors(d_py_last):
    d = d_py_last
    q = xplain.Client(d.query, timeout=5)

    def code_of(f):
        try:
            f()
        except xplain.QueryError as e:
            assert e.error and e.code in str(e), e
            return e.code
        raise AssertionError("no QueryError")
    assert code_of(lambda: q.schema("nope")) == "unknown_model"
    assert code_of(lambda: q.global_state("nope")) == "unknown_model"
    assert code_of(lambda: q.trade("py_last", "no-such-trade")) == "not_found"
    assert code_of(lambda: q.request("frobnicate")) == "unknown_op"
    assert code_of(lambda: q.raw(b"\xc1garbage")) == "bad_request"
    assert code_of(lambda: q.raw(msgpack.packb({"v": 2, "op": "ping"}))) == "bad_request"
    assert code_of(lambda: q.request("schema", model=5)) == "bad_request"
    assert code_of(lambda: q.reference("py_last", "rollout", [1.0, 2.0])) == "bad_argument"
    assert code_of(lambda: q.reference("py_last", "rollout", [1, 2, 3, 4, float("nan")])) == "bad_argument"
    # queries.md calls a right-typed but unusable value bad_argument; the
    # daemon answers an unknown baseline action with bad_request (reported).
    assert code_of(lambda: q.baseline("py_last", "explode")) in ("bad_argument", "bad_request")
    assert code_of(lambda: q.request("trade", model="py_last")) == "bad_request"   # id missing
    assert code_of(lambda: q.global_state("py_last", method="nope")) in ("bad_argument", "not_found")
    e = None
    try:
        q.schema("nope")
    except xplain.QueryError as ex:
        e = ex
    assert "nope" in e.error and e.op == "schema" and e.reply["ok"] is False
    assert q.ping()["version"]           # still answering after the errors
    q.close()

    # Nobody there: a clear timeout, within the time asked.
    lost = xplain.Client("ipc://%s/nobody" % d.dir, timeout=0.3)
    t0 = time.monotonic()
    try:
        lost.ping()
        raise AssertionError("ping of nobody returned")
    except xplain.QueryTimeout as ex:
        assert isinstance(ex, TimeoutError) and "nobody" in str(ex)
    assert 0.25 < time.monotonic() - t0 < 2.0
    lost.close()

    # A late reply never answers the next request.
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    late_sent = threading.Event()

    def serve():
        pending = []
        while not stop.is_set():
            if router.poll(20):
                env = router.recv_multipart()
                req = msgpack.unpackb(env[-1])
                delay = 0.8 if req.get("slow") else 0.0
                pending.append((time.monotonic() + delay, env[:-1], req["op"]))
            for item in [p for p in pending if p[0] <= time.monotonic()]:
                pending.remove(item)
                router.send_multipart(item[1] + [msgpack.packb({"v": 1, "ok": True, "echo": item[2]})])
                if item[2] == "first":
                    late_sent.set()
    th = threading.Thread(target=serve, daemon=True)
    th.start()
    c = xplain.Client("tcp://127.0.0.1:%d" % port, timeout=0.3)
    try:
        c.request("first", slow=True)
        raise AssertionError("slow reply did not time out")
    except xplain.QueryTimeout:
        pass
    assert late_sent.wait(10), "timed out waiting for the fake server's late reply to 'first'"
    assert c.request("second")["echo"] == "second"
    assert c.request("third", timeout=2)["echo"] == "third"
    c.close()
    stop.set()
    th.join()
    router.close(0)


def test_publisher_daemon_restart():
    """The publisher binds, daemons connect: a daemon that starts after the
    schema was sent still learns it (the XPUB sees its subscription)."""
    # Below the ephemeral range (xpltest.free_port), so that no outgoing
    # connection of a parallel test takes it before the publisher binds.
    ep = "tcp://127.0.0.1:%d" % free_port()
    pub = xplain.Publisher("py_restart", bind=ep, tokens=["a", "b", "c", "CLS"], cls=3)
    rng = np.random.default_rng(5)
    for gen in range(2):
        # This daemon's own subscription, not a count the stopped one left.
        before = pub.subscriptions
        with xplain.Daemon(XPLAIND, ingest_connect=ep) as d:
            q = xplain.Client(d.query, timeout=5)
            assert pub.wait_subscriptions(before, 10), "daemon %d did not subscribe" % gen
            A = random_attention(rng, (2, 1, 2, 4, 4))
            pub.send(A, ids=["g%d-a" % gen, "g%d-b" % gen])
            wait_until(lambda: q.stats()["counters"]["explained"] == 2, what="daemon %d to explain" % gen)
            st = q.stats()
            assert st["rejected"]["no_schema"] == 0, st["rejected"]
            t = q.trade("py_restart", "g%d-b" % gen)
            assert_close(t["attr"]["rollout"], ref.methods(A[1], None, 3)["rollout"], what="after restart")
            assert q.schema("py_restart")["features"] == ["a", "b", "c"]
            q.close()
    assert pub.subscriptions >= 2
    pub.close()


# --- CURVE --------------------------------------------------------------------

def write_cert(path, public, secret=None):
    """A certificate as czmq's zcert writes it (metadata section, comments)."""
    with open(path, "w") as f:
        f.write("#   ****  Generated by a test  ****\n#   ZeroMQ CURVE Certificate\n\n")
        f.write('metadata\n    name = "test"\ncurve\n    public-key = "%s"\n' % public.decode())
        if secret is not None:
            f.write('    secret-key = "%s"\n' % secret.decode())


def curve_keys_setup(root):
    """The daemon's and a listed client's keys from `xplainctl keygen` (when
    built; else written here), an unlisted client's written here."""
    ctl = os.path.join(BUILD, "client", "xplainctl")
    paths = {}
    for name in ("server", "good", "bad"):
        path = os.path.join(root, name + ".key")
        if name != "bad" and os.access(ctl, os.X_OK):
            subprocess.run([ctl, "keygen", path], check=True, capture_output=True)
        else:
            pub, sec = zmq.curve_keypair()
            write_cert(path, pub)
            write_cert(path + "_secret", pub, sec)
        paths[name] = path
    os.mkdir(os.path.join(root, "clients"))
    with open(paths["good"]) as f, open(os.path.join(root, "clients", "good.key"), "w") as g:
        g.write(f.read())
    return paths


def test_curve_certificates():
    root = tempfile.mkdtemp(prefix="xplpy-curve-")
    pub, sec = zmq.curve_keypair()
    spub, _ = zmq.curve_keypair()
    write_cert(root + "/c.key", pub)
    write_cert(root + "/c.key_secret", pub, sec)
    write_cert(root + "/s.key", spub)
    assert xplain.load_certificate(root + "/c.key") == (pub, None)
    assert xplain.load_certificate(root + "/c.key_secret") == (pub, sec)
    k = curve.keys(root + "/c.key_secret", root + "/s.key")
    assert (k.public, k.secret, k.server) == (pub, sec, spub)
    # Raw Z85 keys, str or bytes, and path-like objects.
    k = curve.keys(sec.decode(), spub)
    assert (k.public, k.secret, k.server) == (pub, sec, spub), "public key derived from the secret"
    k = curve.keys(pathlib.Path(root) / "c.key_secret", pathlib.Path(root) / "s.key")
    assert k.public == pub
    assert curve.keys() is None and curve.keys(k) is k

    def raises(exc, needle, fn, *args):
        try:
            fn(*args)
        except exc as e:
            assert needle in str(e), (needle, str(e))
            return e
        raise AssertionError("no %s for %r" % (exc.__name__, args))

    raises(ValueError, "needs both", curve.keys, root + "/c.key_secret", None)
    raises(ValueError, "needs both", xplain.Client, "ipc://x", 1.0, None, None, spub)
    e = raises(xplain.CertificateError, "public certificate", curve.keys, root + "/c.key",
               root + "/s.key")
    assert isinstance(e, xplain.XplainError) and isinstance(e, ValueError)
    raises(xplain.CertificateError, "cannot read", curve.keys, root + "/missing", root + "/s.key")
    raises(xplain.CertificateError, "missing", curve.keys, root + "/c.key_secret", root + "/missing")
    with open(root + "/junk", "w") as f:
        f.write("hello\n")
    raises(xplain.CertificateError, "no public-key line", xplain.load_certificate, root + "/junk")
    with open(root + "/short", "w") as f:
        f.write('curve\n    public-key = "abc"\n')
    raises(xplain.CertificateError, "40 Z85", xplain.load_certificate, root + "/short")
    # A secret certificate whose public key is another key's.
    write_cert(root + "/mixed", spub, sec)
    raises(xplain.CertificateError, "not the one of its secret key", curve.keys, root + "/mixed",
           root + "/s.key")
    raises(TypeError, "certificate path or a Z85 key", curve.keys, 42, spub)
    shutil.rmtree(root, ignore_errors=True)


def test_curve_daemon():
    """A daemon with --curve: the listed key is admitted on the query,
    publish and ingest paths (Client, Subscriber with feature names,
    Publisher, GlobalView), the unlisted one refused on each."""
    root = tempfile.mkdtemp(prefix="xplpy-curve-")
    k = curve_keys_setup(root)
    good = dict(curve_secret=k["good"] + "_secret", server_public=k["server"])
    bad = dict(curve_secret=k["bad"] + "_secret", server_public=k["server"])
    args = ["--curve", "--secret-key-file", k["server"] + "_secret",
            "--clients-dir", os.path.join(root, "clients"), "--glob-interval-ms", "20"]
    tokens = ["a", "b", "c", "CLS"]
    rng = np.random.default_rng(11)
    with xplain.Daemon(XPLAIND, args=args, **good) as d:
        q = xplain.Client(d.query, timeout=5, **good)
        assert q.ping()["ok"]

        def refused():
            return q.stats()["counters"]["auth_refused"]

        # Query path: refused, with the hint; the same Client retries. (The
        # refusal must complete within the timeout for the hint to name it:
        # 1.5 s leaves room for a loaded machine.)
        before = refused()
        qb = xplain.Client(d.query, timeout=1.5, **bad)
        for _ in range(2):
            try:
                qb.ping()
                raise AssertionError("the unlisted key was answered")
            except xplain.QueryTimeout as e:
                assert "; CURVE: the daemon refused this client's key" in str(e), str(e)
                assert "clients_dir" in e.hint
        wait_until(lambda: refused() >= before + 2, what="two refusals on the query socket")
        qb.close()
        # A wrong server key: no handshake completes.
        try:
            xplain.Client(d.query, timeout=0.4, curve_secret=good["curve_secret"],
                          server_public=k["bad"]).ping()
            raise AssertionError("answered with a wrong server key")
        except xplain.QueryTimeout as e:
            assert "; CURVE: no handshake with the daemon completed" in str(e), str(e)

        # Ingest and publish paths.
        pub = xplain.Publisher("py_curve", connect=d.ingest, tokens=tokens, cls=3, **good)
        assert pub.wait_subscriber(10), "the daemon never subscribed to the listed publisher"
        sub = xplain.Subscriber(d.publish, models=["py_curve"], query=d.query, **good)
        subb = xplain.Subscriber(d.publish, kinds=("xpl", "glob"), **bad)
        x = None
        for i in range(300):
            pub.send(random_attention(rng, (1, 1, 2, 4, 4)), ids=["t%d" % i])
            x = sub.recv(timeout=0.05)
            if x is not None:
                break
        assert x is not None, "the listed subscriber heard nothing"
        assert x.features == ["a", "b", "c"], "feature names through the subscriber's CURVE Client"
        assert subb.recv(timeout=0.3) is None, "the unlisted subscriber received"

        before = refused()
        pubb = xplain.Publisher("py_bad", connect=d.ingest, tokens=tokens, cls=3, **bad)
        assert not pubb.wait_subscriber(1.0), "the daemon subscribed to the unlisted publisher"
        for i in range(20):
            pubb.send(random_attention(rng, (1, 1, 2, 4, 4)))
        wait_until(lambda: refused() > before, what="the unlisted publisher's refusal")
        assert "py_bad" not in [m["model"] for m in q.models()]

        # GlobalView.
        wait_until(lambda: q.request("global", model="py_curve")["ok"], what="global state")
        v = xplain.GlobalView(d.publish, d.query, "py_curve", **good)
        assert v.state is not None and v.snapshots == 1
        pub.send(random_attention(rng, (1, 1, 2, 4, 4)), ids=["last"])
        wait_until(lambda: v.poll(0.1) or v.updates, what="a glob/ update through CURVE")
        v.close()
        try:
            xplain.GlobalView(d.publish, d.query, "py_curve", timeout=1.5, **bad)
            raise AssertionError("the unlisted view got a snapshot")
        except xplain.QueryTimeout as e:
            assert "refused this client's key" in str(e), str(e)

        # Raw Z85 keys work as well as files.
        gpub, gsec = xplain.load_certificate(good["curve_secret"])
        spub = xplain.load_certificate(k["server"])[0]
        q2 = xplain.Client(d.query, timeout=5, curve_secret=gsec.decode(), server_public=spub)
        assert q2.ping()["ok"]
        q2.close()
        for s in (pub, pubb, sub, subb, q):
            s.close()
        assert d.stop() == 0, d.log_text()
    shutil.rmtree(root, ignore_errors=True)


# --- the PyTorch capture helper -----------------------------------------------

def test_torch_capture():
    try:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
    except ImportError:
        print("  SKIPPED: torch is not installed (apt-get install python3-torch)")
        return
    from xplain.torch_capture import AttentionCapture, capture
    torch.manual_seed(0)
    torch.set_num_threads(1)

    def mha_explicit(mha, x):
        """MultiheadAttention written out, with the probabilities retained."""
        B, n, d = x.shape
        H = mha.num_heads
        hd = d // H
        q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        split = lambda t: t.reshape(B, n, H, hd).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        A = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        A.retain_grad()
        o = (A @ v).transpose(1, 2).reshape(B, n, d)
        return mha.out_proj(o), A

    class Tok(nn.Module):
        def __init__(self, nf, d):
            super().__init__()
            self.w = nn.Parameter(torch.randn(nf, d))
            self.b = nn.Parameter(torch.randn(nf, d))
            self.cls = nn.Parameter(torch.randn(d))

        def forward(self, x):
            t = x[:, :, None] * self.w + self.b
            return torch.cat([t, self.cls.expand(x.shape[0], 1, -1)], dim=1)

    class EncModel(nn.Module):
        """Stock nn.TransformerEncoder (which calls MHA with need_weights=False)."""
        def __init__(self, nf=5, d=16, L=3, H=4):
            super().__init__()
            self.tok = Tok(nf, d)
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, H, 32, dropout=0.2,
                                                                        batch_first=True), L)
            self.head = nn.Linear(d, 3)

        def forward(self, x):
            return self.head(self.enc(self.tok(x))[:, -1])

        def explicit(self, x):
            h, As = self.tok(x), []
            for lyr in self.enc.layers:
                sa, A = mha_explicit(lyr.self_attn, h)
                As.append(A)
                h = lyr.norm1(h + sa)
                h = lyr.norm2(h + lyr.linear2(F.relu(lyr.linear1(h))))
            return self.head(h[:, -1]), As

    class Block(nn.Module):
        def __init__(self, d, H):
            super().__init__()
            self.n = nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, H, batch_first=True)
            self.ff = nn.Linear(d, d)

        def forward(self, h):
            a, _ = self.attn(self.n(h), self.n(h), self.n(h), None, False)  # positional need_weights
            h = h + a
            return h + torch.tanh(self.ff(h))

        def explicit(self, h):
            a, A = mha_explicit(self.attn, self.n(h))
            h = h + a
            return h + torch.tanh(self.ff(h)), A

    class Reversed(nn.Module):
        """Layers registered in the opposite order to the one they run in."""
        def __init__(self, nf=4, d=12, L=4, H=3):
            super().__init__()
            self.tok = Tok(nf, d)
            self.blocks = nn.ModuleList([Block(d, H) for _ in range(L)])
            self.head = nn.Linear(d, 1)

        def forward(self, x):
            h = self.tok(x)
            for b in reversed(self.blocks):
                h = b(h)
            return self.head(h[:, -1])

        def explicit(self, x):
            h, As = self.tok(x), []
            for b in reversed(self.blocks):
                h, A = b.explicit(h)
                As.append(A)
            return self.head(h[:, -1]), As

    def expected(model, x, target):
        model.eval()
        with torch.enable_grad():
            out, As = model.explicit(x)
            t = torch.as_tensor(target)
            score = torch.where(t == 1, out[:, 0], -out[:, 0]) if out.shape[1] == 1 \
                else out.gather(1, t[:, None])[:, 0]
            score.sum().backward()
        return (np.stack([a.detach().numpy() for a in As], 1),
                np.stack([a.grad.numpy() for a in As], 1), out.detach().numpy())

    for model, nf in ((EncModel(), 5), (Reversed(), 4)):
        model.train()                       # run() must switch to eval and back
        x = torch.randn(6, nf)
        target = [0, 1, 2, 1, 0, 2] if isinstance(model, EncModel) else [1, 0, 1, 1, 0, 0]
        c = AttentionCapture(model).run(x, target=target)
        assert model.training, "training mode not restored"
        assert all(p.grad is None for p in model.parameters()), "capture touched parameter .grad"
        A, G, out = expected(model, x, target)
        L = len(model.enc.layers) if isinstance(model, EncModel) else len(model.blocks)
        n = nf + 1
        assert c.attn.shape == (6, L, 4 if isinstance(model, EncModel) else 3, n, n) == G.shape
        assert_close(c.attn, A, rel=1e-5, abs_=1e-7, what="%s attention" % type(model).__name__)
        scale = np.abs(G).max()
        assert_close(c.grad, G, rel=1e-4, abs_=1e-6 * scale, what="%s gradients" % type(model).__name__)
        assert_close(c.logits, out, rel=1e-5, abs_=1e-6, what="logits")
        assert np.array_equal(c.target, target)
        # Layers that do not commute: a wrong pairing of gradients to layers
        # would show (every layer's gradient differs from the others').
        for l1 in range(L):
            for l2 in range(l1 + 1, L):
                assert not np.allclose(c.grad[:, l1], c.grad[:, l2], rtol=1e-2)
        # Batch independence: one trade alone gives its own row of the batch.
        c1 = AttentionCapture(model).run(x[2:3], target=target[2])
        assert_close(c1.attn[0], c.attn[2], rel=1e-5, abs_=1e-7, what="single vs batch attn")
        assert_close(c1.grad[0], c.grad[2], rel=1e-4, abs_=1e-6 * scale, what="single vs batch grad")
        # Nothing stays patched.
        assert all("forward" not in vars(m) for m in model.modules())

    # Explicit layers in registration order on the reversed model: the
    # indices follow the list given (a user's choice), so layer 0 is then
    # the last to run; the call-order default above got it right.
    model = Reversed()
    x = torch.randn(3, 4)
    given = AttentionCapture(model, layers=[b.attn for b in reversed(model.blocks)]).run(x, target=1)
    default = AttentionCapture(model).run(x, target=1)
    assert np.array_equal(given.attn, default.attn) and np.array_equal(given.grad, default.grad)

    # "pred" targets, forward only, under no_grad (the fused fast path of
    # nn.TransformerEncoderLayer must not bypass the capture).
    model = EncModel()
    x = torch.randn(4, 5)
    with torch.no_grad():
        cf = capture(model, x, grad=False)
    assert cf.grad is None and cf.attn.shape == (4, 3, 4, 6, 6)
    assert np.array_equal(cf.target, cf.logits.argmax(1))
    assert_close(cf.attn.sum(-1), np.ones((4, 3, 4, 6)), rel=1e-5, what="rows sum to 1")
    # Callers still get what they asked MultiheadAttention for.
    class Asks(nn.Module):
        def __init__(self, d=8, H=2):
            super().__init__()
            self.a = nn.ModuleList([nn.MultiheadAttention(d, H, batch_first=True) for _ in range(3)])
            self.got = []

        def forward(self, h):
            o, w = self.a[0](h, h, h)                                   # averaged by default
            self.got.append(w)
            o, w = self.a[1](o, o, o, average_attn_weights=False)       # per head
            self.got.append(w)
            o, w = self.a[2](o, o, o, need_weights=False)
            self.got.append(w)
            return o[:, -1, :2]
    m = Asks()
    h = torch.randn(2, 5, 8)
    with AttentionCapture(m) as cap:
        m(h)                                 # outside run(): nothing recorded
        assert [None if w is None else tuple(w.shape) for w in m.got] == [(2, 5, 5), (2, 2, 5, 5), None]
        m.got.clear()
        c = cap.run(h, target=0)
        assert [None if w is None else tuple(w.shape) for w in m.got] == [(2, 5, 5), (2, 2, 5, 5), None]
        assert_close(m.got[0].detach().numpy(), c.attn[:, 0].mean(1), rel=1e-6, abs_=1e-7, what="averaged")
        assert_close(m.got[1].detach().numpy(), c.attn[:, 1], rel=1e-6, abs_=1e-7, what="per head")
        assert c.grad.shape == (2, 3, 2, 5, 5)
    assert all("forward" not in vars(x) for x in m.modules())

    # Captured tensors go straight into a Publisher (torch tensors too).
    pub = xplain.Publisher("py_torch", bind="inproc://torch-pub", tokens=list("abcde") + ["CLS"], cls=5)
    s = zmq.Context.instance().socket(zmq.SUB)
    s.subscribe(b"")
    s.connect("inproc://torch-pub")
    assert pub.wait_subscriber(5)
    pub.send(torch.from_numpy(cf.attn).to(torch.bfloat16), grad=torch.from_numpy(cf.attn),
             y=torch.tensor(cf.prob[:, 1]))
    m = msgpack.unpackb(s.recv_multipart()[1])
    assert m["ids"] == [0, 1, 2, 3] and len(m["y"]) == 4
    assert np.array_equal(codec.decode(m["attn"], "f32", cf.attn.shape),
                          torch.from_numpy(cf.attn).to(torch.bfloat16).float().numpy())
    s.close(0)
    pub.close()
