"""xplain.live.explain_forward: a live model's scored batches published
with their explanation inputs, never blocking the model.

- through a real xplaind: an rtdl-style FT-Transformer (its own attention
  module, captured with match=) wrapped, batches scored under no_grad and
  under inference_mode; the outputs equal the unwrapped model's; every
  sampled batch's trades arrive with the ids given, the predicted class as
  target, y = the probability of that class, and every method's vector
  equal to tests/ref.py on a capture done by hand of the same batch;
- sampling: with sample=0.5 and a seed, exactly the batches the seeded
  draws select are captured (the others run the plain forward);
- a full queue drops and counts: a publisher that blocks (a stub whose
  send waits on an event) holds the sender; the model's calls keep
  returning, batches beyond the queue are counted as dropped, and once
  released the queued ones are sent;
- training mode passes through uncaptured; a failing capture is counted
  and the model still answers (strict=True raises instead); close()
  restores model.forward.

Run by ctest with /usr/bin/python3 and XPL_BUILD_DIR / XPL_SOURCE_DIR.
"""
import os
import random
import sys
import threading
import time


SOURCE = os.environ.get("XPL_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("XPL_BUILD_DIR") or os.path.join(SOURCE, "build")
XPLAIND = os.path.join(BUILD, "daemon", "xplaind")
sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
sys.path.insert(0, os.path.join(SOURCE, "tests"))

import pytest                       # noqa: E402
import torch                        # noqa: E402

import ref                          # noqa: E402
import xplain                       # noqa: E402
from xplain.live import explain_forward                     # noqa: E402
from xplain.torch_capture import AttentionCapture           # noqa: E402
from xpltest import wait_until                              # noqa: E402
from test_python_capture import (RtdlFTTransformer, RtdlMultiheadAttention,  # noqa: E402
                                 assert_close, by_hand, join)

ALL = "rollout,grad_rollout,first_layer,attn_mean,diag,flow"
TOKENS = ["num%d" % i for i in range(4)] + ["cat0", "cat1", "CLS"]
CLS = 6


def model_and_batches(k, B=3, seed=7):
    torch.manual_seed(seed)
    m = RtdlFTTransformer(n_num=4, cardinalities=[3, 5])
    m.eval()
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(B, 4, generator=g),
                torch.stack([torch.randint(0, 3, (B,), generator=g), torch.randint(0, 5, (B,), generator=g)], 1))
               for _ in range(k)]
    return m, batches



@pytest.fixture(scope="module", autouse=True)
def _torch_setup():
    assert os.access(XPLAIND, os.X_OK), "xplaind not built at %s" % XPLAIND
    torch.set_num_threads(1)
    yield


@pytest.fixture
def d():
    """A daemon with every method; it must stop cleanly."""
    with xplain.Daemon(XPLAIND, methods=ALL) as d:
        yield d
        rc = d.stop()
        assert rc == 0, "daemon exit status %s:\n%s" % (rc, d.log_text())


def test_live_daemon(d):
    q = xplain.Client(d.query, timeout=5)
    sub = xplain.Subscriber(d.publish, models=["live_ftt", "zz_probe"], query=q)
    join(d, sub)
    m, batches = model_and_batches(6)
    with torch.no_grad():
        plain = [m(*b) for b in batches]
    mods = [b["attention"] for b in m.blocks]
    pub = xplain.Publisher("live_ftt", connect=d.ingest, tokens=TOKENS, cls=CLS)
    assert pub.wait_subscriber(10), "the daemon did not subscribe"
    ids = iter(range(1000, 2000, 10))
    live = explain_forward(m, pub, capture=AttentionCapture(m, match=RtdlMultiheadAttention),
                           ids=lambda x_num, x_cat: (lambda first: [first + b for b in range(len(x_num))])(next(ids)),
                           strict=True)
    outs = []
    for k, b in enumerate(batches):
        if k % 2:
            with torch.inference_mode():
                outs.append(m(*b))
        else:
            with torch.no_grad():
                outs.append(m(*b))
    for o, p in zip(outs, plain):
        assert not o.requires_grad
        assert_close(o.numpy(), p.numpy(), rel=1e-5, abs_=1e-6, what="wrapped output")
    assert live.flush(10), "queued batches not sent in 10 s: %s" % live.counts
    assert live.close()
    assert "forward" not in vars(m) and all("forward" not in vars(x) for x in m.modules())
    assert live.counts == dict(scored=6, sampled=6, training=0, queued=6, dropped=0, sent=6, failed=0), live.counts

    want = {}
    for k, b in enumerate(batches):
        target = plain[k].argmax(1).numpy()
        A, G, out = by_hand(m, mods, b, target)
        p = torch.softmax(torch.from_numpy(out), 1).numpy()
        for i in range(len(target)):
            want[1000 + 10 * k + i] = (A[i], G[i], int(target[i]), float(p[i, target[i]]))
    got = {}
    deadline = time.monotonic() + 20
    while len(got) < len(want):
        x = sub.recv(timeout=max(0.0, deadline - time.monotonic()))
        assert x is not None, "%d of %d explanations" % (len(got), len(want))
        if x.model == "live_ftt":
            assert x.id not in got
            got[x.id] = x
    assert set(got) == set(want), (sorted(got), sorted(want))
    for i, (A, G, t, y) in want.items():
        x = got[i]
        assert x.target == t and abs(x.y - y) < 1e-6, (i, x.target, t, x.y, y)
        exp = ref.methods(A, G, CLS, with_flow=True)
        assert set(x.attr) == set(exp)
        for meth, v in x.attr.items():
            assert_close(v, exp[meth], rel=1e-5, abs_=1e-7, what="live %s %s" % (i, meth))
    print("  %d trades in 6 batches, no_grad and inference_mode, equal to the reference" % len(want))
    pub.close()
    sub.close()
    q.close()


class BlockingPublisher:
    """Holds the sender thread in send() until released."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sent = []

    def send(self, attn, grad=None, ids=None, target=None, y=None, ts=None):
        self.entered.set()
        assert self.release.wait(30), "never released"
        self.sent.append((attn.shape, None if grad is None else grad.shape, list(target), list(y)))


def test_sampling_and_dropping():
    m, batches = model_and_batches(20, B=2)
    cap = AttentionCapture(m, match=RtdlMultiheadAttention)

    # sample=0.5, seed 3: the batches random.Random(3) selects.
    pub = BlockingPublisher()
    pub.release.set()
    live = explain_forward(m, pub, sample=0.5, seed=3, capture=cap, strict=True)
    with torch.no_grad():
        for b in batches:
            m(*b)
    assert live.close()
    rng = random.Random(3)
    picked = sum(rng.random() < 0.5 for _ in batches)
    assert 0 < picked < len(batches)
    assert live.counts["scored"] == 20 and live.counts["sampled"] == picked == len(pub.sent), live.counts
    assert pub.sent[0][:2] == ((2, 3, 4, 7, 7), (2, 3, 4, 7, 7)), pub.sent[0]

    # A sender stuck in send(): one batch in flight, queue_size in the
    # queue, the rest dropped; the model's calls all return meanwhile.
    pub = BlockingPublisher()
    live = explain_forward(m, pub, queue_size=3, capture=cap, strict=True)
    with torch.no_grad():
        m(*batches[0])
        assert pub.entered.wait(10), "the sender never called send()"
        for b in batches[1:10]:
            m(*b)
    assert live.counts["dropped"] == 9 - 3 and live.counts["queued"] == 1 + 3, live.counts
    assert live.counts["sent"] == 0
    pub.release.set()
    assert live.flush(10), live.counts
    assert live.counts["sent"] == 4 and len(pub.sent) == 4
    assert live.close()


def test_modes_and_errors():
    m, batches = model_and_batches(3)
    pub = BlockingPublisher()
    pub.release.set()
    cap = AttentionCapture(m, match=RtdlMultiheadAttention)
    live = explain_forward(m, pub, capture=cap)
    m.train()
    m(*batches[0])
    m.eval()
    assert live.counts["training"] == 1 and live.counts["sampled"] == 0
    try:
        explain_forward(m, pub)
    except RuntimeError as e:
        assert "already replaced" in str(e)
    else:
        raise AssertionError("a second wrapper on the same model was accepted")
    live.close()
    # A capture that fails (a probs= getter that returns no tensor):
    # counted, and the model answers.
    live = explain_forward(m, pub, capture=AttentionCapture(m, match=RtdlMultiheadAttention,
                                                            probs=lambda mod, out: None))
    with torch.no_grad():
        out = m(*batches[1])
        want = m.__class__.forward(m, *batches[1])
    assert_close(out.numpy(), want.numpy(), rel=1e-6, what="output after a failed capture")
    assert live.counts["failed"] == 1 and "not a tensor" in str(live.last_error), live.counts
    live.close()
    live = explain_forward(m, pub, strict=True, capture=AttentionCapture(
        m, match=RtdlMultiheadAttention, probs=lambda mod, out: None))
    try:
        m(*batches[1])
    except RuntimeError as e:
        assert "not a tensor" in str(e)
    else:
        raise AssertionError("strict=True did not raise")
    live.close()
    # With grad enabled by the caller, the output keeps its graph.
    live = explain_forward(m, pub, capture=cap, strict=True)
    out = m(*batches[2])
    assert out.requires_grad
    out.sum().backward()
    assert any(p.grad is not None for p in m.parameters())
    live.close()
    wait_until(lambda: len(pub.sent) == 1, what="the one sampled batch to be sent")
