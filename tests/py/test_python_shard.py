"""xplain.shard and Publisher(shards=N) against plain pyzmq SUB sockets, one
per shard (no daemon): the hash gives proto/README.md's test vectors (the
same ones tests/test_shard.c checks for the C side), every trade of a
batch arrives once on the shard its id hashes to, with its own slice of
the tensors, target, y, rel, targets and tags; each shard's seq runs 0, 1, 2, ...; its first
message carries the schema, and again after its daemon re-subscribes.

Run by Debian's /usr/bin/python3 (python3-zmq, -msgpack, -numpy, -pytest).
"""
import os
import sys

import msgpack
import numpy as np
import pytest
import zmq

from xpltest import SOURCE

sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
from xplain import Publisher, shard_of  # noqa: E402
from xplain.shard import id_key, shard_hash, shard_prefix  # noqa: E402

L, H, N = 1, 2, 3
TOKENS = ["a", "b", "CLS"]


def test_documented_vectors():
    assert shard_hash(b"") == 0xefd01f60ba992926
    assert shard_hash(b"0") == 0xc1e42af088ff1b2c
    assert shard_hash(b"t-1") == 0xfbf2759cb7ae29c1
    assert shard_hash(b"trade-000042") == 0x53a88610d3a8bcd2
    assert shard_hash("é€".encode()) == 0x6a5fa78123426bb1
    assert shard_hash(id_key(17)) == 0xd8273c40ac76f52c
    assert shard_hash(id_key(2 ** 64 - 1)) == 0xa415ffaf93606d58
    assert shard_of(2 ** 64 - 1, 3) == 2 and shard_of(2 ** 64 - 1, 1) == 0
    assert shard_of(17, 5) == shard_of("17", 5)
    assert shard_prefix(1, 3) == b"shard/1/3/"
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            id_key(bad)
    with pytest.raises(ValueError):
        shard_prefix(3, 3)


def recv(sock, timeout=5.0):
    """One message within the timeout: (topic, body dict)."""
    assert sock.poll(int(timeout * 1000)), "no message within %.1f s" % timeout
    topic, body = sock.recv_multipart()
    return topic, msgpack.unpackb(body, raw=False)


def attn_of(t):
    a = np.arange(L * H * N * N, dtype=np.float32).reshape(L, H, N, N) / 1024.0
    return a + np.float32(t)


def test_publisher_splits_batches_by_trade_id():
    ctx = zmq.Context()
    pub = Publisher("m1", bind="tcp://127.0.0.1:*", tokens=TOKENS, cls=2, shards=3, context=ctx)
    subs = []
    try:
        for k in range(3):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, shard_prefix(k, 3))
            s.connect(pub.endpoint)
            subs.append(s)
        assert pub.wait_subscriber(5.0), "not every shard subscribed within 5 s"
        ids = [("t-%d" % i) if i % 2 else 1000 + i for i in range(50)]
        sent, batches = 0, 0
        B = 1
        while sent < len(ids):
            B = min(B, len(ids) - sent)
            batch = ids[sent:sent + B]
            a = np.stack([attn_of(sent + i) for i in range(B)])
            pub.send(a, grad=-a, ids=batch, target=[(sent + i) % 3 for i in range(B)],
                     y=[0.5 * (sent + i) for i in range(B)], ts=7)
            sent += B
            batches += 1
            B = B % 13 + 1
        index = {tid: i for i, tid in enumerate(ids)}
        seen, messages = {}, 0
        for k in range(3):
            share = [tid for tid in ids if shard_of(tid, 3) == k]
            assert share, "shard %d has no trade of the test" % k
            got, seq = [], 0
            while len(got) < len(share):
                topic, body = recv(subs[k])
                messages += 1
                assert topic == b"shard/%d/3/attn/m1" % k
                assert body["seq"] == seq, "shard %d: seq %d, want %d" % (k, body["seq"], seq)
                assert ("tokens" in body) == (seq == 0), "schema with each shard's first message"
                seq += 1
                B = len(body["ids"])
                a = np.frombuffer(body["attn"], dtype="<f4").reshape(B, L, H, N, N)
                g = np.frombuffer(body["grad"], dtype="<f4").reshape(B, L, H, N, N)
                for i, tid in enumerate(body["ids"]):
                    assert tid not in seen, "trade %r twice" % (tid,)
                    seen[tid] = k
                    t = index[tid]
                    assert shard_of(tid, 3) == k
                    assert np.array_equal(a[i], attn_of(t)) and np.array_equal(g[i], -attn_of(t))
                    assert body["target"][i] == t % 3 and body["y"][i] == 0.5 * t
                    got.append(tid)
            assert pub.seqs[k] == seq
            # Batch order is kept within a shard.
            assert got == share
        assert len(seen) == len(ids)
        assert messages > batches, "some batches were split"
        for s in subs:
            assert not s.poll(100), "an extra message"
        # A shard's daemon re-subscribing gets the schema again, the others not.
        before = pub.subscriptions
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.SUBSCRIBE, shard_prefix(1, 3))
        s.connect(pub.endpoint)
        subs.append(s)
        assert pub.wait_subscriptions(before, 5), "the second subscription to shard 1 never came"
        assert pub.shard_subscriptions[1] == 2
        two = [i for i in range(1000, 5000) if shard_of(i, 3) == 1][:1] + \
              [i for i in range(1000, 5000) if shard_of(i, 3) == 2][:1]
        pub.send(np.stack([attn_of(0), attn_of(1)]), ids=two, ts=8)
        _, b1 = recv(subs[1])
        _, b2 = recv(subs[2])
        assert "tokens" in b1 and "tokens" not in b2
    finally:
        for s in subs:
            s.close(0)
        pub.close(0)
        ctx.term()


def test_split_carries_rel_targets_and_tags():
    """A batch split over shards keeps each trade's rel, the message's
    targets, and each trade's tags (a per-trade list is sliced, one map
    for the whole message goes to every part)."""
    ctx = zmq.Context()
    pub = Publisher("m1", bind="tcp://127.0.0.1:*", tokens=TOKENS, cls=2, shards=3, context=ctx)
    subs = []
    try:
        for k in range(3):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, shard_prefix(k, 3))
            s.connect(pub.endpoint)
            subs.append(s)
        assert pub.wait_subscriber(5.0), "not every shard subscribed within 5 s"
        ids = list(range(2000, 2012))
        B, T = len(ids), 2
        a = np.stack([attn_of(i) for i in range(B)])
        g = np.stack([np.stack([a[i] * (t + 1) for t in range(T)]) for i in range(B)])
        r = -g
        tags = [{"desk": "d%d" % (i % 4)} if i % 5 else None for i in range(B)]
        pub.send(a, grad=g, rel=r, targets=[0, 2], ids=ids, ts=9, extra={"tags": tags})
        pub.send(a, ids=ids, ts=10, extra={"tags": {"venue": "x"}})
        for k in range(3):
            share = [i for i, tid in enumerate(ids) if shard_of(tid, 3) == k]
            assert share, "shard %d has no trade of the test" % k
            _, body = recv(subs[k])
            assert body["ids"] == [ids[i] for i in share]
            n = len(share)
            assert body["targets"] == [0, 2]
            bg = np.frombuffer(body["grad"], dtype="<f4").reshape(n, T, L, H, N, N)
            br = np.frombuffer(body["rel"], dtype="<f4").reshape(n, T, L, H, N, N)
            assert np.array_equal(bg, g[share]) and np.array_equal(br, r[share])
            assert body["tags"] == [tags[i] for i in share], "shard %d: tags of its trades" % k
            _, body = recv(subs[k])
            assert body["ids"] == [ids[i] for i in share]
            assert body["tags"] == {"venue": "x"}
            assert "rel" not in body and "targets" not in body
    finally:
        for s in subs:
            s.close(0)
        pub.close(0)
        ctx.term()


def test_bad_shard_counts():
    for bad in (0, -1, 4097, 1.5, True):
        with pytest.raises(ValueError):
            Publisher("m1", bind="inproc://x%d" % id(bad), tokens=TOKENS, cls=2, shards=bad)

