"""Publisher.subscriptions and the waits on it, against plain pyzmq SUB
sockets (no daemon): wait_subscriptions returns for a new subscriber only,
while an old one is still subscribed (a stopped daemon whose
unsubscription has not arrived yet), and what is sent once it returned
reaches the new subscriber; a subscription the batch timer took in while
sending still counts for wait_subscriber and wait_subscriptions; sharded,
a subscription counts once whatever shards it covers.

Run by Debian's /usr/bin/python3 (python3-zmq, -msgpack, -numpy, -pytest).
"""
import os
import sys
import threading
import time

import msgpack
import numpy as np
import zmq

from xpltest import SOURCE

sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
from xplain import Publisher  # noqa: E402
from xplain.shard import shard_prefix  # noqa: E402

TOKENS = ["a", "b", "CLS"]
A = np.full((1, 1, 3, 3), 1 / 3, dtype="<f4")


def sub_socket(ctx, pub, prefix):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, prefix)
    s.connect(pub.endpoint)
    return s


def recv_id(s, timeout_ms):
    """The first trade id of the next message on `s`, or None."""
    if not s.poll(timeout_ms):
        return None
    topic, body = s.recv_multipart()
    assert topic == b"attn/m"
    return msgpack.unpackb(body)["ids"][0]


def test_new_subscriber_while_the_old_one_is_counted():
    ctx = zmq.Context()
    pub = Publisher("m", bind="tcp://127.0.0.1:*", tokens=TOKENS, cls=2, context=ctx, linger_ms=0)
    old = None
    try:
        assert pub.subscriptions == 0
        assert not pub.wait_subscriptions(0, 0)
        for r in range(20):
            before = pub.subscriptions
            assert before == r, "one subscription per subscriber, none lost"
            if old is not None:
                assert not pub.wait_subscriptions(before, 0.1), "returned with no new subscriber"
            s = sub_socket(ctx, pub, b"attn/")
            assert pub.wait_subscriptions(before, 5), "round %d: the new subscription never came" % r
            pub.send(A, ids=[r])
            assert recv_id(s, 5000) == r, "round %d: the trade missed the new subscriber" % r
            if old is not None:
                old.close()
            old = s
        old.close()
        old = None
        # Sends take in the unsubscriptions: the count stays.
        pub.send(A, ids=[99])
        assert pub.subscriptions == 20
        assert pub.wait_subscriptions(19, 0)
    finally:
        if old is not None:
            old.close()
        pub.close()
        ctx.term()


def test_batch_timer_does_not_take_the_subscription():
    ctx = zmq.Context()
    pub = Publisher("m", bind="tcp://127.0.0.1:*", tokens=TOKENS, cls=2, context=ctx, linger_ms=0,
                    batch=64, delay=0.0005)
    subs = []
    try:
        subs.append(sub_socket(ctx, pub, b"attn/m"))
        # Only the timer sends (one trade pending at a time, batch 64): once
        # three trades reached the subscriber, the timer has taken its
        # subscription in.
        deadline = time.monotonic() + 10
        got, i = 0, 0
        while got < 3:
            assert time.monotonic() < deadline, "no trade sent by the batch timer reached the subscriber"
            pub.send(A, ids=[i])
            i += 1
            got += recv_id(subs[0], 5) is not None
        assert pub.subscriptions == 1
        assert pub.wait_subscriber(0), "the timer took the subscription away from wait_subscriber"
        assert pub.wait_subscriptions(0, 0)
        assert not pub.wait_subscriber(0), "the same subscription returned twice"

        # A waiter while another thread keeps the timer sending.
        stop = threading.Event()

        def keep_sending():
            k = 10 ** 6
            while not stop.is_set():
                pub.send(A, ids=[k])
                k += 1
                time.sleep(0.0005)
        th = threading.Thread(target=keep_sending)
        th.start()
        try:
            for n in range(2, 7):
                before = pub.subscriptions
                subs.append(sub_socket(ctx, pub, b"attn/"))
                assert pub.wait_subscriber(10), "subscriber %d: the timer took the subscription" % n
                assert pub.subscriptions == before + 1 == n
        finally:
            stop.set()
            th.join()
    finally:
        for s in subs:
            s.close()
        pub.close()
        ctx.term()


def test_sharded_subscription_counts_once():
    ctx = zmq.Context()
    pub = Publisher("m", bind="tcp://127.0.0.1:*", tokens=TOKENS, cls=2, context=ctx, linger_ms=0,
                    shards=3)
    s = sub_socket(ctx, pub, b"shard/")
    try:
        assert pub.wait_subscriptions(0, 5), "the shard/ subscription never came"
        assert pub.subscriptions == 1 and pub.shard_subscriptions == [1, 1, 1]
        # On the same connection, so they arrive in this order: attn/ (not a
        # sharded publisher's topic) is taken in by the time shard 1's is.
        s.setsockopt(zmq.SUBSCRIBE, b"attn/")
        s.setsockopt(zmq.SUBSCRIBE, shard_prefix(1, 3))
        assert pub.wait_subscriptions(1, 5), "the shard 1 subscription never came"
        assert pub.subscriptions == 2, "the attn/ subscription counted"
        assert pub.shard_subscriptions == [1, 2, 1]
    finally:
        s.close()
        pub.close()
        ctx.term()
