"""End to end: a plain pyzmq + msgpack publisher (no project code) feeds a
real xplaind; every published number is checked against the float64
reference of MATH.md (tests/ref.py), on many shapes, all dtypes, all CLS
positions, batches with B > 1, with and without gradients; plus schema
epochs, id types, the trade query's full matrices, and method options.
"""
import sys
import time

import msgpack
import numpy as np

import pytest

from xpltest import Daemon, assert_close, encode, join, random_attention, ref


@pytest.fixture(scope="module")
def d():
    d = Daemon()
    yield d
    d.stop()


@pytest.fixture
def d_opts():
    d = Daemon("--methods", "rollout,grad_rollout,first_layer,attn_mean,diag,flow",
               "--fusion", "max", "--grad-resnorm")
    yield d
    d.stop()


@pytest.fixture
def d_flow():
    d = Daemon("--methods", "rollout,flow", "--flow-every", "3")
    yield d
    d.stop()


def send(pub, model, seq, ids, A, G, dtype, cls=None, tokens=None, target=None, y=None):
    B, L, H, n, _ = A.shape
    abytes, Aexact = encode(A, dtype)
    body = {"v": 1, "model": model, "seq": seq, "ts": time.time_ns(), "ids": ids,
            "L": L, "H": H, "n": n, "dtype": dtype, "attn": abytes}
    Gexact = None
    if G is not None:
        body["grad"], Gexact = encode(G, dtype)
    if cls is not None:
        body["cls"] = cls
    if tokens is not None:
        body["tokens"] = tokens
    if target is not None:
        body["target"] = target
    if y is not None:
        body["y"] = y
    pub.send_multipart([f"attn/{model}".encode(), msgpack.packb(body)])
    return Aexact.reshape(A.shape), None if Gexact is None else Gexact.reshape(G.shape)


def recv_xpl(sub, count):
    out = []
    for _ in range(count):
        topic, body = sub.recv_multipart()
        out.append((topic, msgpack.unpackb(body)))
    return out


def check_trade(msg, A, G, cls, methods, fusion="mean", resnorm=False):
    want = ref.methods(A, G, cls, grad_resnorm=resnorm, fusion=fusion,
                       with_flow="flow" in methods)
    expected = [m for m in methods if m != "grad_rollout" or G is not None]
    assert sorted(msg["attr"]) == sorted(expected), (sorted(msg["attr"]), expected)
    for m in expected:
        assert_close(msg["attr"][m], want[m], 1e-5 if m != "flow" else 1e-5, what=m)


def test_shapes_dtypes_batches(d):
    pub = d.publisher()
    sub = d.subscriber(b"xpl/m")
    join(d, pub, sub)
    rng = np.random.default_rng(7)
    methods = ["rollout", "grad_rollout", "first_layer", "attn_mean"]
    cases = []
    # (L, H, n, cls, dtype, B, with_grad)
    for k, (L, H, n) in enumerate([(1, 1, 2), (2, 3, 5), (4, 8, 32), (3, 2, 17), (12, 16, 64),
                                   (6, 4, 128), (2, 2, 3), (5, 1, 9)]):
        for dtype in ("f32", "f16", "bf16"):
            cls = [-1, 0, n - 1][(k + len(cases)) % 3]
            B = [1, 3, 1, 2, 1, 1, 5, 4][k]
            cases.append((L, H, n, cls, dtype, B, (k + len(cases)) % 4 != 0))
    checked = 0
    for c, (L, H, n, cls, dtype, B, with_grad) in enumerate(cases):
        model = f"m{c}"
        A = random_attention(rng, (B, L, H, n, n), temp=1 + 6 * (c % 2))
        G = rng.standard_normal((B, L, H, n, n)) if with_grad else None
        tokens = [f"f{j}" for j in range(n)]
        ids = [f"t{c}-{b}" if b % 2 == 0 else 1000 * c + b for b in range(B)]
        target = [int(b % 2) for b in range(B)]
        y = [0.25 * b for b in range(B)]
        Ax, Gx = send(pub, model, 0, ids, A, G, dtype, cls, tokens, target, y)
        msgs = recv_xpl(sub, B)
        for b, (topic, msg) in enumerate(msgs):
            assert topic == f"xpl/{model}".encode()
            assert msg["v"] == 1 and msg["model"] == model and msg["epoch"] == 1
            assert msg["id"] == ids[b], (msg["id"], ids[b])
            assert msg["seq"] == b
            assert msg["target"] == target[b] and msg["y"] == y[b]
            check_trade(msg, Ax[b], None if Gx is None else Gx[b], cls, methods)
            checked += 1
        # The trade query returns the full matrices of the last trade.
        rep = d.query("trade", model=model, id=ids[-1])
        assert rep["ok"], rep
        assert rep["features"] == [t for j, t in enumerate(tokens) if j != cls]
        R = np.frombuffer(rep["matrices"]["rollout"], dtype="<f4").reshape(n, n)
        assert_close(R, ref.rollout_matrix(Ax[-1]), what="trade rollout matrix")
        if Gx is not None:
            Rg = np.frombuffer(rep["matrices"]["grad_rollout"], dtype="<f4").reshape(n, n)
            assert_close(Rg, ref.grad_rollout_matrix(Ax[-1], Gx[-1]), what="trade grad matrix")
        else:
            assert "grad_rollout" not in rep["matrices"]
    st = d.stats()
    assert st["counters"]["rejected"] == 0, st["rejected"]
    print(f"checked {checked} trades in {len(cases)} messages")
    assert checked >= 50


def test_schema_epochs_and_seq(d):
    pub = d.publisher()
    sub = d.subscriber(b"xpl/ep")
    join(d, pub, sub)
    rng = np.random.default_rng(3)
    tok = ["a", "b", "c", "CLS"]
    A = random_attention(rng, (1, 2, 2, 4, 4))
    send(pub, "ep", 10, ["x"], A, None, "f32", 3, tok)
    assert recv_xpl(sub, 1)[0][1]["epoch"] == 1
    # Same schema, cls/tokens omitted: same epoch.
    Ax, _ = send(pub, "ep", 11, ["y"], A, None, "f32")
    m = recv_xpl(sub, 1)[0][1]
    assert m["epoch"] == 1
    check_trade(m, Ax[0], None, 3, ["rollout", "first_layer", "attn_mean"])
    # New tokens: epoch 2. Then a seq gap of 3 (lost) and a restart.
    send(pub, "ep", 15, ["z"], A, None, "f32", 3, ["p", "q", "r", "CLS"])
    assert recv_xpl(sub, 1)[0][1]["epoch"] == 2
    # CLS moves to the front: epoch 3, readout follows it.
    Ax, _ = send(pub, "ep", 0, [7], A, None, "f32", 0, ["CLS", "p", "q", "r"])
    m = recv_xpl(sub, 1)[0][1]
    assert m["epoch"] == 3 and m["id"] == 7
    check_trade(m, Ax[0], None, 0, ["rollout", "first_layer", "attn_mean"])
    # A different L without tokens keeps the names: epoch 4.
    A3 = random_attention(rng, (1, 3, 2, 4, 4))
    send(pub, "ep", 1, ["w"], A3, None, "f32")
    assert recv_xpl(sub, 1)[0][1]["epoch"] == 4
    sc = d.query("schema", model="ep")
    assert sc["ok"] and sc["epoch"] == 4 and sc["L"] == 3 and sc["cls"] == 0
    assert sc["tokens"] == ["CLS", "p", "q", "r"] and sc["features"] == ["p", "q", "r"]
    ep = [m for m in d.query("models")["models"] if m["model"] == "ep"][0]
    assert ep["lost"] == 3 and ep["restarts"] == 1 and ep["explained"] == 5, ep


def test_method_options(d_opts):
    """diag, flow, max fusion and the residual normalisation, end to end."""
    d = d_opts
    pub = d.publisher()
    sub = d.subscriber(b"xpl/opt")
    join(d, pub, sub)
    rng = np.random.default_rng(11)
    methods = ["rollout", "grad_rollout", "first_layer", "attn_mean", "diag", "flow"]
    for c, (L, H, n, cls) in enumerate([(2, 3, 5, 4), (3, 2, 6, -1), (1, 4, 4, 0)]):
        A = random_attention(rng, (2, L, H, n, n), temp=3.0)
        G = rng.standard_normal((2, L, H, n, n))
        Ax, Gx = send(pub, f"opt{c}", 0, ["a", "b"], A, G, "f32", cls, [f"t{j}" for j in range(n)])
        for b, (_, msg) in enumerate(recv_xpl(sub, 2)):
            check_trade(msg, Ax[b], Gx[b], cls, methods, fusion="max", resnorm=True)
        rep = d.query("trade", model=f"opt{c}", id="b")
        Rg = np.frombuffer(rep["matrices"]["grad_rollout"], dtype="<f4").reshape(n, n)
        assert_close(Rg, ref.grad_rollout_matrix(Ax[1], Gx[1], resnorm=True), what="resnorm matrix")
        R = np.frombuffer(rep["matrices"]["rollout"], dtype="<f4").reshape(n, n)
        assert_close(R, ref.rollout_matrix(Ax[1], "max"), what="max-fusion matrix")


def test_flow_sampling_and_on_demand(d_flow):
    d = d_flow
    pub = d.publisher()
    sub = d.subscriber(b"xpl/fl")
    join(d, pub, sub)
    rng = np.random.default_rng(5)
    A = random_attention(rng, (4, 2, 2, 5, 5), temp=2.0)
    Ax, _ = send(pub, "fl", 0, [0, 1, 2, 3], A, None, "f32", 4, list("abcdC"))
    msgs = recv_xpl(sub, 4)
    has_flow = ["flow" in m["attr"] for _, m in msgs]
    assert has_flow == [True, False, False, True], has_flow   # flow_every = 3
    assert_close(msgs[3][1]["attr"]["flow"], ref.flow(Ax[3], 4), what="sampled flow")
    rep = d.query("trade", model="fl", id=1, flow=True)
    assert rep["ok"], rep
    assert_close(rep["attr"]["flow"], ref.flow(Ax[1], 4), what="on-demand flow")
