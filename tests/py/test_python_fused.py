"""xplain.fuse and the Publisher's fused form and micro-batching (no daemon).

- fuse_numpy against the float64 definitions (proto/ingest.md, "The fused
  form") on many shapes; fuse_torch (CPU) gives the same float32 bits as
  fuse_numpy: both sum heads in head order and scale by float32(1/H);
- a fused Publisher's messages, read with plain pyzmq + msgpack: the
  keys and sizes of the contract, values equal to the fusion of what was
  given, f32 and f16, a Fused computed elsewhere sent as is;
- the full form is byte for byte what msgpack.packb of the contract's
  map gives (the zero-copy packing changed nothing on the wire);
- micro-batching: trades go out in messages of `batch`, the rest after
  `delay` (waited for with a deadline), a change of form or schema sends
  what is pending first, close() sends what is left, seq counts messages.

Run by pytest (ctest registers each case).
"""
import os
import sys
import time

SOURCE = os.environ.get("XPL_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(SOURCE, "client", "python"))

import msgpack                      # noqa: E402
import numpy as np                  # noqa: E402
import zmq                          # noqa: E402

import xplain                       # noqa: E402
from xplain.fuse import Fused, fuse, fuse_numpy   # noqa: E402


def trades(rng, B, L, H, n):
    logits = rng.normal(size=(B, L, H, n, n)) * 2.0
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a = (a / a.sum(-1, keepdims=True)).astype(np.float32)
    g = rng.normal(size=a.shape).astype(np.float32)
    return a, g


def ref_fused(a, g):
    a64, g64 = a.astype(np.float64), g.astype(np.float64)
    M = a64.mean(axis=2)
    P = np.maximum(a64 * g64, 0).mean(axis=2)
    S = (a64 * g64).mean(axis=2)
    imp = np.abs((a64 * g64).sum(axis=(-1, -2)))
    conf = a64.max(axis=-1).mean(axis=-1)
    return M, P, S, imp, conf


def close_imp(got, a, g, what):
    """|sum A G| cancels: compare on the scale of sum |A G| (the daemon's
    own float32 products are good to that)."""
    want = np.abs((a.astype(np.float64) * g).sum(axis=(-1, -2)))
    scale = np.abs(a.astype(np.float64) * g).sum(axis=(-1, -2))
    bad = np.abs(np.asarray(got, dtype=np.float64) - want) > 1e-6 * scale
    assert not bad.any(), "%s: %d values off" % (what, bad.sum())


def close(got, want, rel, what):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    bad = np.abs(got - want) > rel * np.abs(want) + 1e-12
    assert not bad.any(), "%s: %d values off, first %s vs %s" % (
        what, bad.sum(), got[bad].ravel()[:3], want[bad].ravel()[:3])


def test_fuse_numpy_matches_definitions():
    rng = np.random.default_rng(1)
    for B, L, H, n in [(1, 1, 1, 1), (2, 1, 3, 2), (3, 4, 8, 32), (1, 2, 5, 17), (4, 3, 2, 9)]:
        a, g = trades(rng, B, L, H, n)
        f = fuse_numpy(a, g, signed=True)
        M, P, S, imp, conf = ref_fused(a, g)
        assert f.fattn.dtype == np.float32 and f.fattn.shape == (B, L, n, n)
        assert f.head_importance.shape == (B, L, H) and f.head_confidence.shape == (B, L, H)
        close(f.fattn, M, 1e-6, "M")
        close(f.fgrad, P, 1e-5, "P")
        close_imp(f.head_importance, a, g, "imp")
        close(f.head_confidence, conf, 1e-6, "conf")
        # Signed means cancel: compare on the scale of the clamped ones.
        assert np.all(np.abs(f.fgrad_signed - S) <= 1e-5 * (np.abs(a * g).mean(axis=2) + 1e-12))
        # One trade without a batch axis; no gradient.
        f1 = fuse_numpy(a[0])
        assert f1.fgrad is None and f1.head_importance is None and f1.B == 1
        assert np.array_equal(f1.fattn[0], f.fattn[0])


def test_fuse_torch_same_bits_as_numpy():
    try:
        import torch
    except ImportError:
        print("  (torch not installed: skipped)")
        return
    from xplain.fuse import fuse_torch
    rng = np.random.default_rng(2)
    for B, L, H, n in [(1, 1, 1, 3), (3, 4, 8, 32), (2, 2, 7, 11)]:
        a, g = trades(rng, B, L, H, n)
        fn = fuse_numpy(a, g, signed=True)
        ft = fuse_torch(torch.from_numpy(a), torch.from_numpy(g), signed=True)
        assert isinstance(ft.fattn, torch.Tensor)
        fh = ft.to_host()
        for k in ("fattn", "fgrad", "fgrad_signed"):
            assert np.array_equal(getattr(fh, k).view(np.uint32), getattr(fn, k).view(np.uint32)), k
        close_imp(fh.head_importance, a, g, "imp")
        close(fh.head_confidence, fn.head_confidence, 1e-6, "conf")
        # Rounded to half on the device: the same bits as the host's cast.
        fh16 = fuse_torch(torch.from_numpy(a), torch.from_numpy(g), half=True).to_host()
        assert fh16.fattn.dtype == np.float16 and fh16.head_confidence.dtype == np.float32
        assert np.array_equal(fh16.fattn.view(np.uint16), fn.fattn.astype(np.float16).view(np.uint16))
        # fuse() on tensors goes through the device path.
        assert np.array_equal(fuse(torch.from_numpy(a), torch.from_numpy(g)).fattn, fn.fattn)


def test_capture_fuses_on_the_device():
    """A fused capture equals fusing the full capture's tensors (same
    float32 bits for the head means), for a model with several layers."""
    try:
        import torch
    except ImportError:
        print("  (torch not installed: skipped)")
        return
    from xplain.torch_capture import AttentionCapture
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.head = enc, torch.nn.Linear(16, 2)

        def forward(self, x):
            return self.head(self.enc(x)[:, -1])
    model = M().eval()
    x = torch.randn(5, 7, 16)
    cap = AttentionCapture(model)
    full = cap.run(x)
    fz = cap.run(x, fused=True)
    assert fz.attn is None and fz.grad is None and fz.fused is not None
    want = fuse_numpy(full.attn, full.grad)
    assert fz.fused.shape == (5, 3, 4, 7)
    for k in ("fattn", "fgrad"):
        assert np.array_equal(getattr(fz.fused, k), getattr(want, k)), k
    close_imp(fz.fused.head_importance, full.attn, full.grad, "imp")
    close(fz.fused.head_confidence, want.head_confidence, 1e-6, "conf")
    assert np.array_equal(fz.target, full.target)
    fwd = cap.run(x, grad=False, fused=True)
    assert fwd.fused.fgrad is None and fwd.fused.head_importance is None


class Sink:
    """A SUB on the publisher's endpoint; recv() with a deadline."""

    def __init__(self, pub):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"attn/")
        self.sock.connect(pub.endpoint)
        assert pub.wait_subscriber(10), "the test's SUB never subscribed"

    def recv(self, timeout=10.0, what="a message"):
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError("no message within %.0f s (waiting for %s)" % (timeout, what))
        topic, body = self.sock.recv_multipart()
        return topic, msgpack.unpackb(body, raw=False)

    def none_within(self, seconds):
        return not self.sock.poll(int(seconds * 1000))

    def close(self):
        self.sock.close(0)


def f16(b):
    return np.frombuffer(b, dtype="<f2").astype(np.float32)


def f32(b):
    return np.frombuffer(b, dtype="<f4")


def test_fused_publisher_messages():
    rng = np.random.default_rng(3)
    B, L, H, n = 3, 4, 8, 6
    toks = ["a", "b", "c", "d", "e", "CLS"]
    for dtype in ("f32", "f16"):
        pub = xplain.Publisher("fz", bind="tcp://127.0.0.1:*", tokens=toks, cls=5, dtype=dtype, fused=True)
        sink = Sink(pub)
        a, g = trades(rng, B, L, H, n)
        seq = pub.send(a, grad=g, ids=["x", "y", "z"], target=[1, 0, 1], y=[0.5, 0.25, 0.125])
        topic, m = sink.recv()
        assert topic == b"attn/fz" and seq == 0 and m["seq"] == 0
        assert "attn" not in m and "grad" not in m
        assert m["dtype"] == dtype and (m["L"], m["H"], m["n"]) == (L, H, n)
        assert m["ids"] == ["x", "y", "z"] and m["target"] == [1, 0, 1] and m["cls"] == 5
        es = 4 if dtype == "f32" else 2
        for k in ("fattn", "fgrad"):
            assert len(m[k]) == B * L * n * n * es, k
        for k in ("head_importance", "head_confidence"):
            assert len(m[k]) == B * L * H * 4, k
        f = fuse_numpy(a, g)
        dec = f32 if dtype == "f32" else f16
        want = f.fattn if dtype == "f32" else f.fattn.astype(np.float16).astype(np.float32)
        assert np.array_equal(dec(m["fattn"]).reshape(f.fattn.shape), want)
        assert np.array_equal(f32(m["head_importance"]).reshape(B, L, H), f.head_importance)
        assert np.array_equal(f32(m["head_confidence"]).reshape(B, L, H), f.head_confidence)
        # Forward only: no fgrad, no importance.
        pub.send(a)
        _, m = sink.recv()
        assert "fgrad" not in m and "head_importance" not in m and m["seq"] == 1
        # A Fused computed elsewhere, through a publisher that is not fused.
        full = xplain.Publisher("fz2", bind="tcp://127.0.0.1:*", tokens=toks, cls=5, dtype=dtype)
        s2 = Sink(full)
        full.send(fuse(a, g), ids=[7, 8, 9])
        _, m2 = s2.recv()
        assert "attn" not in m2 and m2["ids"] == [7, 8, 9]
        assert np.array_equal(dec(m2["fgrad"]).reshape(f.fgrad.shape),
                              f.fgrad if dtype == "f32" else f.fgrad.astype(np.float16).astype(np.float32))
        # Half arrays on an f16 wire go out as they are; on f32 widened.
        f16f = fuse(a, g)
        f16f.fattn, f16f.fgrad = f16f.fattn.astype(np.float16), f16f.fgrad.astype(np.float16)
        full.send(f16f, ids=[1, 2, 3])
        _, m3 = s2.recv()
        assert np.array_equal(dec(m3["fattn"]), f.fattn.astype(np.float16).astype(np.float32).ravel())
        try:
            full.send(fuse(a, g), grad=g)
            raise AssertionError("grad beside a Fused was accepted")
        except ValueError:
            pass
        s2.close()
        full.close(0)
        sink.close()
        pub.close(0)


def test_full_form_bytes_unchanged():
    """The packed body equals msgpack.packb of the contract's map."""
    rng = np.random.default_rng(4)
    a, g = trades(rng, 2, 2, 3, 4)
    for dtype in ("f32", "f16", "bf16"):
        pub = xplain.Publisher("fb", bind="tcp://127.0.0.1:*", tokens=list("abcd"), cls=-1, dtype=dtype)
        sink = Sink(pub)
        pub.send(a, grad=g, ids=[1, 2], target=[0, 1], y=[0.5, 0.5], ts=123, extra={"trace": "t"})
        if not sink.sock.poll(10000):
            raise AssertionError("no message within 10 s (waiting for the full-form body)")
        _, body = sink.sock.recv_multipart()
        want = msgpack.packb({
            "v": 1, "model": "fb", "seq": 0, "ts": 123, "ids": [1, 2], "L": 2, "H": 3, "n": 4,
            "dtype": dtype, "attn": xplain.encode(a, dtype), "grad": xplain.encode(g, dtype),
            "target": [0, 1], "y": [0.5, 0.5], "cls": -1, "tokens": list("abcd"), "trace": "t"},
            use_bin_type=True)
        assert body == want, dtype
        sink.close()
        pub.close(0)


def test_micro_batching():
    rng = np.random.default_rng(5)
    L, H, n = 2, 2, 3
    toks = ["p", "q", "CLS"]
    pub = xplain.Publisher("mb", bind="tcp://127.0.0.1:*", tokens=toks, cls=2, fused=True,
                           batch=4, delay=0.2)
    sink = Sink(pub)
    a, g = trades(rng, 10, L, H, n)
    t0 = time.monotonic()
    seqs = [pub.send(a[k], grad=g[k], ids=[k], target=[k % 2]) for k in range(10)]
    assert seqs == [0] * 4 + [1] * 4 + [2] * 2, seqs
    for want_ids, seq in (([0, 1, 2, 3], 0), ([4, 5, 6, 7], 1)):
        _, m = sink.recv(what="a batch of 4")
        assert m["ids"] == want_ids and m["seq"] == seq
        assert m["target"] == [i % 2 for i in want_ids]
        f = fuse_numpy(a[want_ids[0]:want_ids[-1] + 1], g[want_ids[0]:want_ids[-1] + 1])
        assert np.array_equal(f32(m["fattn"]).reshape(f.fattn.shape), f.fattn)
        assert np.array_equal(f32(m["head_importance"]).reshape(f.head_importance.shape), f.head_importance)
    # The last two go out when the delay has passed, not before.
    _, m = sink.recv(timeout=10.0, what="the 2 trades the batch timer sends")
    assert time.monotonic() - t0 >= 0.2 - 0.01
    assert m["ids"] == [8, 9] and m["seq"] == 2
    # A change of form (no gradient) sends what is pending first.
    pub.send(a[0], grad=g[0], ids=["g"], target=[1])
    pub.send(a[1], ids=["nog"])
    _, m = sink.recv(what="the trade pending before the form changed")
    assert m["ids"] == ["g"] and "fgrad" in m
    # flush() and close() send what is pending.
    assert pub.flush() == 4
    _, m = sink.recv(what="the flushed trade")
    assert m["ids"] == ["nog"] and "fgrad" not in m
    assert pub.flush() is None
    pub.delay = 0
    pub.send(a[2], ids=["last"])
    assert sink.none_within(0.3), "a trade was sent before its batch filled (delay 0)"
    pub.close()
    _, m = sink.recv(what="the trade close() sends")
    assert m["ids"] == ["last"] and m["seq"] == 5
    sink.close()
    for bad in (dict(batch=0), dict(delay=-1)):
        try:
            xplain.Publisher("mb", bind="inproc://mb-bad", **bad)
            raise AssertionError("accepted %r" % bad)
        except ValueError:
            pass
