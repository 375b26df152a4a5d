"""The Python publisher's rel= and targets= against a real xplaind: the
relevance and several targets per trade reach the daemon laid out as the
contract says (proto/ingest.md), each target's lrp_rollout equals ref.py's,
and a gradient shaped for another number of targets is refused before it
is sent."""
import os
import sys

import msgpack
import numpy as np
import pytest

SOURCE = os.environ["XPL_SOURCE_DIR"]
sys.path.insert(0, os.path.join(SOURCE, "client", "python"))

import xplain  # noqa: E402

from xpltest import assert_close, join, random_attention, ref  # noqa: E402


def test_publisher_rel_and_targets(daemon):
    d = daemon("--methods", "rollout,grad_rollout,lrp_rollout")
    sub = d.subscriber(b"xpl/py")
    join(d, d.publisher(), sub)
    pub = xplain.Publisher("py", connect=d.ingest, tokens=list("abcd"), cls=0)
    try:
        assert pub.wait_subscriber(10.0), "the daemon never subscribed to the publisher"
        rng = np.random.default_rng(1)
        A = random_attention(rng, (2, 2, 1, 4, 4)).astype(np.float32)
        G = rng.standard_normal((2, 3, 2, 1, 4, 4)).astype(np.float32)
        Rel = G * A[:, None]
        pub.send(A, grad=G, rel=Rel, targets=[5, 6, 7], ids=[1, 2])
        got = [msgpack.unpackb(sub.recv_multipart()[1]) for _ in range(6)]
        assert [(m["id"], m["target"]) for m in got] == [(b, t) for b in (1, 2) for t in (5, 6, 7)]
        for k, m in enumerate(got):
            b, t = divmod(k, 3)
            w = ref.variants(A[b].astype(np.float64), G[b].astype(np.float64), 0,
                             Rel[b].astype(np.float64))
            assert sorted(m["attr"]) == ["grad_rollout", "lrp_rollout", "rollout"]
            assert_close(m["attr"]["lrp_rollout"], w["lrp_rollout"][t], what=f"lrp {b} {t}")
            assert_close(m["attr"]["grad_rollout"], w["grad_rollout"][t], what=f"grad {b} {t}")
        with pytest.raises(ValueError):
            pub.send(A, grad=G[:, 0], targets=[1, 2])       # one gradient for two targets
        with pytest.raises(ValueError):
            pub.send(A, rel=A)                              # rel without grad
    finally:
        pub.close(0)
    d.stop()
