"""Publisher: a live model's side of contract v1 (proto/ingest.md).

    pub = Publisher("m1", bind="tcp://127.0.0.1:5556",
                    tokens=["price", "size", "spread", "CLS"], cls=3)
    pub.wait_subscriber(5.0)         # the daemon's SUB has subscribed
    pub.send(attn, grad=grad, target=[1], y=[0.73])

The socket is an XPUB, which is a PUB to the daemon's SUB but also lets the
publisher see subscriptions arrive. That is used twice: `wait_subscriber`
avoids losing the first messages to ZeroMQ's slow-joiner window, and a new
subscription (a daemon started or restarted) makes the next message carry
`cls` and `tokens` again, so that a daemon that joins mid-stream learns the
schema instead of rejecting every message as `no_schema`.

With shards=N the stream is split over N daemons by trade id (xplain.shard,
proto/README.md "Sharding"): trade `id` goes to shard shard_of(id, N) on
the topic shard/<K>/<N>/attn/<model>, which only the daemon run with
--shard K/N subscribes to, so ZeroMQ filters at this publisher.
"""
import re
import time
from typing import Any, Dict, Iterable, Optional, Sequence, Union

import msgpack
import numpy as np
import zmq

from . import codec, curve
from .shard import MAX_SHARDS, shard_of, shard_prefix

MODEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Publisher:
    """Encodes attention (and gradient) tensors as `attn/<model>` messages.

    model     model name, 1-64 bytes of [A-Za-z0-9_.-]
    bind / connect  ZeroMQ endpoint(s) (str or list); give one of the two:
              bind when the daemon runs --ingest-connect, connect when it
              runs --ingest-bind
    tokens, cls     the schema: n token names and the CLS index (-1: none);
              may also be given (or changed) per send()
    dtype     "f32" (default), "f16" or "bf16"
    seq       first sequence number (default 0)
    context   a zmq.Context to use (default: the process-wide instance)
    sndhwm    send high-water mark in messages (default 1000)
    curve_secret, server_public  for a daemon running with --curve: this
              publisher's secret certificate and the daemon's public one,
              or raw Z85 keys (see xplain.curve). Whether the publisher
              binds or connects, the daemon is the CURVE server; a daemon
              that does not admit the key never subscribes
              (wait_subscriber returns False) and what is sent is dropped.
    shards    split the stream over this many shard daemons (default 1:
              no sharding). A batch whose trades belong to several shards
              is sent as one message per shard, in shard order, each with
              its trades in batch order; each shard has its own seq
              (`seqs`) and gets the schema again when its daemon
              (re)subscribes; wait_subscriber waits for every shard.
    """

    def __init__(self, model: str, bind: Union[None, str, Sequence[str]] = None,
                 connect: Union[None, str, Sequence[str]] = None, tokens: Optional[Sequence[str]] = None,
                 cls: Optional[int] = None, dtype: str = "f32", seq: int = 0,
                 context: Optional[zmq.Context] = None, sndhwm: int = 1000, linger_ms: int = 2000,
                 curve_secret: Optional[Union[str, bytes]] = None, server_public: Optional[Union[str, bytes]] = None,
                 shards: int = 1) -> None:
        if not isinstance(model, str) or not MODEL_RE.match(model):
            raise ValueError("model name must be 1-64 bytes of [A-Za-z0-9_.-], not %r" % (model,))
        if dtype not in codec.DTYPES:
            raise ValueError("dtype must be one of %s, not %r" % (", ".join(codec.DTYPES), dtype))
        if (bind is None) == (connect is None):
            raise ValueError("give exactly one of bind= or connect=")
        if isinstance(shards, bool) or int(shards) != shards or not 1 <= shards <= MAX_SHARDS:
            raise ValueError("shards must be an integer in 1..%d, not %r" % (MAX_SHARDS, shards))
        self.model = model
        self.topic = ("attn/" + model).encode()
        self.shards = int(shards)
        self._topics = [self.topic] if self.shards == 1 else \
            [shard_prefix(k, self.shards) + self.topic for k in range(self.shards)]
        self.seqs = [int(seq)] * self.shards      # per shard, when sharded
        self._sent_schemas = [None] * self.shards  # per shard, when sharded
        self.shard_subscriptions = [0] * self.shards
        self.dtype = dtype
        self.seq = int(seq)
        self.tokens = list(tokens) if tokens is not None else None
        self.cls = int(cls) if cls is not None else None
        self._sent_schema = None     # (L, H, n, cls, tokens) last sent
        self._next_id = 0
        self.subscriptions = 0       # subscribe events seen on the XPUB
        self.curve = curve.keys(curve_secret, server_public)
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.XPUB)
        if self.curve is not None:
            self.curve.apply(self._sock)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        # Report every subscription, duplicates included: a restarted daemon
        # subscribes with the same prefix and must be noticed.
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        for ep in _as_list(bind):
            self._sock.bind(ep)
        for ep in _as_list(connect):
            self._sock.connect(ep)

    @property
    def endpoint(self) -> str:
        """The last bound endpoint, with the real port when tcp port 0/* was asked."""
        return self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _drain_subscriptions(self):
        new = 0
        while True:
            try:
                ev = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return new
            if ev[:1] != b"\x01":
                continue
            if self.shards == 1:
                if self.topic.startswith(ev[1:]):
                    new += 1
                continue
            for k, topic in enumerate(self._topics):
                if topic.startswith(ev[1:]):
                    new += 1
                    self.shard_subscriptions[k] += 1
                    self._sent_schemas[k] = None

    def _poll_subscriptions(self):
        new = self._drain_subscriptions()
        if new:
            self.subscriptions += new
            self._sent_schema = None     # a (re)joined daemon needs the schema
        return new

    def _all_shards_subscribed(self):
        return all(c > 0 for c in self.shard_subscriptions)

    def wait_subscriber(self, timeout: float = 5.0) -> bool:
        """Block until a subscriber covering `attn/<model>` has subscribed
        (returns True), or `timeout` seconds passed (returns False).
        Returns at once if one has subscribed since the last call.
        Sharded: until every shard has had a subscriber (at once if so)."""
        if self.shards > 1:
            deadline = time.monotonic() + timeout
            while True:
                self._poll_subscriptions()
                if self._all_shards_subscribed():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._sock.poll(int(left * 1000) + 1, zmq.POLLIN)
        if self._poll_subscriptions():
            return True
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._sock.poll(int(left * 1000) + 1, zmq.POLLIN) and self._poll_subscriptions():
                return True

    def send(self, attn: Any, grad: Any = None, ids: Optional[Iterable[Union[int, str]]] = None,
             target: Any = None, y: Any = None, ts: Optional[int] = None,
             tokens: Optional[Sequence[str]] = None, cls: Optional[int] = None,
             extra: Optional[Dict[str, Any]] = None, rel: Any = None,
             targets: Optional[Sequence[int]] = None) -> int:
        """Send one message with the B trades of `attn` and return its seq
        (sharded: one message per shard with trades, in shard order; the
        seq of the last one is returned, `seqs` holds each shard's next).

        attn    [B, L, H, n, n] or, for a single trade, [L, H, n, n]; numpy
                array or torch tensor, post-softmax attention
        grad    same shape, d y_t / d attn (optional)
        ids     B trade ids (str or non-negative int); default: a running
                counter of this publisher
        target  B target classes (or one int for all); y: B floats (or one)
        ts      event time, ns since the epoch (default: now)
        tokens, cls  change the schema (starts a new epoch in the daemon)
        extra   further keys for the body (ignored by contract-v1 daemons)
        rel     same shape as grad, the relevance of every attention
                probability (the daemon's lrp_rollout); only with grad
        targets T classes explained at once: grad (and rel) are then
                [B, T, L, H, n, n], gradient t that of class targets[t]
                (not with target); one xpl/ message per trade and target
        """
        a = codec.to_numpy(attn)
        if a.ndim == 4:
            a = a[None]
        if a.ndim != 5 or a.shape[3] != a.shape[4]:
            raise ValueError("attn must be [B,L,H,n,n] or [L,H,n,n], got shape %s" % (a.shape,))
        B, L, H, n, _ = a.shape
        g = None
        gshape = a.shape
        if targets is not None:
            targets = [int(t) for t in _as_seq(targets)]
            if grad is None or target is not None or not targets:
                raise ValueError("targets needs grad, no target, and at least one class")
            gshape = (B, len(targets)) + a.shape[1:]
        if grad is not None:
            g = codec.to_numpy(grad)
            if g.ndim == 4 and targets is None:
                g = g[None]
            if g.shape != gshape:
                raise ValueError("grad shape %s, expected %s" % (g.shape, gshape))
        r = None
        if rel is not None:
            if g is None:
                raise ValueError("rel needs grad (lrp_rollout reads both)")
            r = codec.to_numpy(rel)
            if r.ndim == 4 and targets is None:
                r = r[None]
            if r.shape != gshape:
                raise ValueError("rel shape %s, expected %s" % (r.shape, gshape))
        if tokens is not None:
            self.tokens = list(tokens)
        if cls is not None:
            self.cls = int(cls)
        if self.tokens is None or self.cls is None:
            raise ValueError("the schema is unknown: give tokens= and cls= (to the constructor or send)")
        if len(self.tokens) != n:
            raise ValueError("%d token names for n = %d tokens" % (len(self.tokens), n))
        if not -1 <= self.cls < n:
            raise ValueError("cls = %d out of range for n = %d" % (self.cls, n))

        if ids is None:
            ids = list(range(self._next_id, self._next_id + B))
            self._next_id += B
        else:
            ids = [_trade_id(i) for i in _as_seq(ids)]
            if len(ids) != B:
                raise ValueError("%d ids for a batch of %d trades" % (len(ids), B))

        t = [int(v) for v in _broadcast(target, B, "target")] if target is not None else None
        yv = [float(v) for v in _broadcast(y, B, "y")] if y is not None else None
        ts = int(time.time_ns() if ts is None else ts)
        self._poll_subscriptions()
        if self.shards == 1:
            return self._send_message(0, a, g, r, ids, t, yv, ts, extra, targets)
        by_shard: Dict[int, list] = {}
        for i, tid in enumerate(ids):
            by_shard.setdefault(shard_of(tid, self.shards), []).append(i)
        seq = -1
        for k in sorted(by_shard):
            idx = by_shard[k]
            if len(idx) == B:
                seq = self._send_message(k, a, g, r, ids, t, yv, ts, extra, targets)
                continue
            seq = self._send_message(k, a[idx], None if g is None else g[idx],
                                     None if r is None else r[idx], [ids[i] for i in idx],
                                     None if t is None else [t[i] for i in idx],
                                     None if yv is None else [yv[i] for i in idx], ts,
                                     _split_extra(extra, idx, B), targets)
        return seq

    def _send_message(self, k, a, g, r, ids, t, yv, ts, extra, targets):
        """One message of shard k (0 unsharded) with the trades given."""
        _, L, H, n, _ = a.shape
        sharded = self.shards > 1
        body = {
            "v": 1, "model": self.model, "seq": self.seqs[k] if sharded else self.seq,
            "ts": ts, "ids": ids, "L": L, "H": H, "n": n, "dtype": self.dtype,
            "attn": codec.encode(a, self.dtype),
        }
        if g is not None:
            body["grad"] = codec.encode(g, self.dtype)
        if r is not None:
            body["rel"] = codec.encode(r, self.dtype)
        if targets is not None:
            body["targets"] = targets
        if t is not None:
            body["target"] = t
        if yv is not None:
            body["y"] = yv
        schema = (L, H, n, self.cls, tuple(self.tokens))
        if schema != (self._sent_schemas[k] if sharded else self._sent_schema):
            body["cls"] = self.cls
            body["tokens"] = list(self.tokens)
        if extra:
            for key, v in extra.items():
                body.setdefault(key, v)
        self._sock.send_multipart([self._topics[k], msgpack.packb(body, use_bin_type=True)])
        if sharded:
            self._sent_schemas[k] = schema
            seq = self.seqs[k]
            self.seqs[k] += 1
            return seq
        self._sent_schema = schema
        seq = self.seq
        self.seq += 1
        return seq

    def close(self, linger_ms: Optional[int] = None) -> None:
        if linger_ms is not None:
            self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _split_extra(extra, idx, B):
    """extra for the trades idx of a batch of B: per-trade tags (a list of
    B maps, proto/ingest.md) keep those trades' maps; one map for the whole
    message, and every other key, go to each part as they are."""
    if not extra:
        return extra
    tags = extra.get("tags")
    if isinstance(tags, (list, tuple)) and len(tags) == B:
        extra = dict(extra)
        extra["tags"] = [tags[i] for i in idx]
    return extra


def _as_list(x):
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


def _as_seq(x):
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, (str, int)):
        return [x]
    return list(x)


def _trade_id(i):
    if isinstance(i, str):
        return i
    if isinstance(i, bytes):
        return i.decode("utf-8")
    v = int(i)
    if v < 0 or v != i:
        raise ValueError("a trade id is a str or a non-negative integer, not %r" % (i,))
    return v


def _broadcast(x, B, what):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x).reshape(-1)
    if arr.size == 1 and B != 1:
        arr = np.repeat(arr, B)
    if arr.size != B:
        raise ValueError("%d values of %s for a batch of %d trades" % (arr.size, what, B))
    return arr.tolist()
