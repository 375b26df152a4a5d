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

The fused form (proto/ingest.md, "The fused form"): with `fused=True` the
publisher sends per layer the head means the daemon needs (xplain.fuse)
instead of every head, H times fewer bytes; `send()` also takes a
`Fused` computed elsewhere (on the model's GPU: xplain.fuse.fuse_torch).

Micro-batching, for models that score trade by trade at high rates:
with `batch=B` trades are held until B are pending, or until the oldest
has waited `delay` seconds (a timer thread sends it then), and go out as
one message of up to B trades; `flush()` sends what is pending, and
`close()` does too.

With shards=N the stream is split over N daemons by trade id (xplain.shard,
proto/README.md "Sharding"): trade `id` goes to shard shard_of(id, N) on
the topic shard/<K>/<N>/attn/<model>, which only the daemon run with
--shard K/N subscribes to, so ZeroMQ filters at this publisher. Both
forms and micro-batching split alike: what would be one message goes out
as one message per shard that has trades in it, each with its trades'
slice of every per-trade field.

Bodies are packed with one copy of each tensor (straight from the array
into the frame). pyzmq's zero-copy send (`zero_copy=True`, copy=False)
saves one more copy of large frames but is off by default: libzmq may
still be sending a frame when the interpreter exits and frees it (seen
as a segfault or 'Bad address' at exit); use it only where the process
terminates its zmq context before exiting. bench/pub_cost.py measures
both.
"""
import re
import threading
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import msgpack
import numpy as np
import zmq

from . import codec, curve
from .fuse import Fused, fuse, fuse_targets
from .shard import MAX_SHARDS, shard_of, shard_prefix

MODEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _groups_map(groups) -> Dict[str, List[str]]:
    """A schema's groups as {name: [token, ...]}, from a mapping or from
    (name, tokens) pairs; {} for None."""
    if groups is None:
        return {}
    items = groups.items() if isinstance(groups, Mapping) else groups
    out: Dict[str, List[str]] = {}
    for pair in items:
        name, toks = pair
        if not isinstance(name, str) or isinstance(toks, str) or \
                not all(isinstance(t, str) for t in toks):
            raise ValueError("groups: each is a str name and a list of str tokens, not %r" % (pair,))
        out[name] = list(toks)
    return out


class Publisher:
    """Encodes attention (and gradient) tensors as `attn/<model>` messages.

    model     model name, 1-64 bytes of [A-Za-z0-9_.-]
    bind / connect  ZeroMQ endpoint(s) (str or list); give one of the two:
              bind when the daemon runs --ingest-connect, connect when it
              runs --ingest-bind
    tokens, cls     the schema: n token names and the CLS index (-1: none);
              may also be given (or changed) per send()
    groups    feature groups of the schema, {name: [token, ...]} (or
              [(name, [token, ...]), ...]): each group is one feature, the
              sum of its tokens' attributions (proto/ingest.md, "Feature
              groups"); sent with cls and tokens. Set self.groups to
              change them (None or {}: none)
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
    fused     send the fused form: send(attn, grad) computes it (on the
              tensors' device for torch tensors); a Fused given to send()
              is sent as such whatever this says
    fused_signed  with fused, send fgrad_signed too (S = mean_h G A), what
              a daemon asked for grad_rollout_signed needs (without it
              such a daemon refuses fused gradients as fused_form)
    batch     micro-batching: hold trades until `batch` are pending (1,
              the default: every send() is a message of its own)
    delay     ... or until the oldest pending trade waited `delay`
              seconds (default 0.005; 0: only batch and flush() send)
    zero_copy hand frames to ZeroMQ without a copy (see above: only when
              the zmq context is terminated before the process exits)
    shards    split the stream over this many shard daemons (default 1:
              no sharding). A batch whose trades belong to several shards
              is sent as one message per shard, in shard order, each with
              its trades in batch order; each shard has its own seq
              (`seqs`) and gets the schema again when its daemon
              (re)subscribes; wait_subscriber waits for every shard.
              With batch > 1 the pending trades are split when they are
              sent: one message per shard per flush.
    """

    def __init__(self, model: str, bind: Union[None, str, Sequence[str]] = None,
                 connect: Union[None, str, Sequence[str]] = None, tokens: Optional[Sequence[str]] = None,
                 cls: Optional[int] = None, dtype: str = "f32", seq: int = 0,
                 context: Optional[zmq.Context] = None, sndhwm: int = 1000, linger_ms: int = 2000,
                 curve_secret: Optional[Union[str, bytes]] = None, server_public: Optional[Union[str, bytes]] = None,
                 fused: bool = False, batch: int = 1, delay: float = 0.005,
                 zero_copy: bool = False, fused_signed: bool = False,
                 shards: int = 1,
                 groups: Union[None, Mapping[str, Sequence[str]], Sequence[Tuple[str, Sequence[str]]]] = None) -> None:
        if not isinstance(model, str) or not MODEL_RE.match(model):
            raise ValueError("model name must be 1-64 bytes of [A-Za-z0-9_.-], not %r" % (model,))
        if dtype not in codec.DTYPES:
            raise ValueError("dtype must be one of %s, not %r" % (", ".join(codec.DTYPES), dtype))
        if (bind is None) == (connect is None):
            raise ValueError("give exactly one of bind= or connect=")
        if int(batch) < 1:
            raise ValueError("batch must be at least 1, not %r" % (batch,))
        if not delay >= 0:
            raise ValueError("delay must be >= 0 seconds, not %r" % (delay,))
        if isinstance(shards, bool) or int(shards) != shards or not 1 <= shards <= MAX_SHARDS:
            raise ValueError("shards must be an integer in 1..%d, not %r" % (MAX_SHARDS, shards))
        self.fused = bool(fused)
        self.fused_signed = bool(fused_signed)
        self.zero_copy = bool(zero_copy)
        self.batch = int(batch)
        self.delay = float(delay)
        self._pending: List[dict] = []   # trades waiting for a batch
        self._pending_key = None
        self._pending_since = 0.0
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._timer: Optional[threading.Thread] = None
        self._closed = False
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
        self.groups = groups
        self._sent_schema = None     # (L, H, n, cls, tokens, groups) last sent
        self._next_id = 0
        self.subscriptions = 0       # subscriptions seen on the XPUB, never lowered
        self._waited = 0             # self.subscriptions when wait_subscriber last returned
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
        """Take in pending subscriptions; returns how many cover some of
        this publisher's topics (each once, whatever shards it covers)."""
        new = 0
        # EVENTS first: a recv that raises Again costs more than the send.
        if not self._sock.get(zmq.EVENTS) & zmq.POLLIN:
            return 0
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
            ours = False
            for k, topic in enumerate(self._topics):
                if topic.startswith(ev[1:]):
                    ours = True
                    self.shard_subscriptions[k] += 1
                    self._sent_schemas[k] = None
            new += int(ours)

    def _poll_subscriptions(self):
        """Called under the lock (sends, the batch timer, waits): whoever
        takes a subscription in, it is counted in `subscriptions`, which
        the waits compare, so no caller can take another's event away."""
        new = self._drain_subscriptions()
        if new:
            self.subscriptions += new
            self._sent_schema = None     # a (re)joined daemon needs the schema
        return new

    def _all_shards_subscribed(self):
        return all(c > 0 for c in self.shard_subscriptions)

    def _wait(self, done, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            # In slices, under the lock: the batch timer may send meanwhile.
            with self._lock:
                self._poll_subscriptions()
                if done():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if self._sock.poll(int(min(left, 0.05) * 1000) + 1, zmq.POLLIN):
                    self._poll_subscriptions()
                    if done():
                        return True

    def wait_subscriber(self, timeout: float = 5.0) -> bool:
        """Block until a subscriber covering `attn/<model>` has subscribed
        (returns True), or `timeout` seconds passed (returns False).
        Returns at once if one has subscribed since this last returned True
        (or since the publisher was created), whether a send or the batch
        timer took the subscription in meanwhile or not.
        Sharded: until every shard has had a subscriber (at once if so)."""
        def done():                  # under the lock
            if self.shards > 1:
                return self._all_shards_subscribed()
            if self.subscriptions > self._waited:
                self._waited = self.subscriptions
                return True
            return False
        return self._wait(done, timeout)

    def wait_subscriptions(self, more_than: int, timeout: float = 5.0) -> bool:
        """Block until `subscriptions` (subscriptions seen so far, a
        monotonic count: sends and the batch timer add to it, nothing
        lowers it; sharded: one covering several shards counts once)
        exceeds `more_than` (returns True), or `timeout` seconds passed
        (returns False). To wait for a daemon that (re)starts, read the
        count before starting it:

            before = pub.subscriptions
            ... start the daemon ...
            assert pub.wait_subscriptions(before, 10)
        """
        return self._wait(lambda: self.subscriptions > more_than, timeout)

    def send(self, attn: Any, grad: Any = None, ids: Optional[Iterable[Union[int, str]]] = None,
             target: Any = None, y: Any = None, ts: Optional[int] = None,
             tokens: Optional[Sequence[str]] = None, cls: Optional[int] = None,
             extra: Optional[Dict[str, Any]] = None, rel: Any = None,
             targets: Optional[Sequence[int]] = None) -> int:
        """Send (or, with batch > 1, queue) the B trades of `attn`; returns
        the seq of the message that carries them (sharded: one message per
        shard with trades, in shard order; the seq of the last one that
        carries a trade of this send is returned, `seqs` holds each
        shard's next).

        attn    [B, L, H, n, n] or, for a single trade, [L, H, n, n]; numpy
                array or torch tensor, post-softmax attention; or a Fused
                (xplain.fuse), sent in the fused form
        grad    same shape, d y_t / d attn (optional; not with a Fused)
        ids     B trade ids (str or non-negative int); default: a running
                counter of this publisher
        target  B target classes (or one int for all); y: B floats (or one)
        ts      event time, ns since the epoch (default: now); a batched
                message carries its first trade's
        tokens, cls  change the schema (starts a new epoch in the daemon)
        extra   further keys for the body (ignored by contract-v1 daemons);
                a send with extra keys is never merged with other trades
        rel     same shape as grad, the relevance of every attention
                probability (the daemon's lrp_rollout); only with grad, and
                not in the fused form (it has none: lrp_rollout needs every
                head)
        targets T classes explained at once: grad (and rel) are then
                [B, T, L, H, n, n], gradient t that of class targets[t]
                (not with target); one xpl/ message per trade and target.
                In the fused form fgrad (and fgrad_signed) are [B, T, L, n, n]
                and head_importance [B, T, L, H]
        """
        if targets is not None:
            targets = [int(t) for t in _as_seq(targets)]
            if target is not None or not targets:
                raise ValueError("targets needs grad, no target, and at least one class")
        if isinstance(attn, Fused):
            if grad is not None:
                raise ValueError("grad goes inside the Fused (fuse(attn, grad)), not beside it")
            if rel is not None:
                raise ValueError("rel has no fused form (lrp_rollout needs every head): send attn, grad and rel")
            f = attn.to_host()
            B, L, H, n = f.shape
            if targets is not None and (f.fgrad is None or f.T != len(targets)):
                raise ValueError("targets needs a Fused with fgrad for %d targets" % len(targets))
            if targets is None and f.T is not None:
                raise ValueError("a Fused with a target axis needs targets=")
            part = {"fused": True, "f": f}
        else:
            a = codec.to_numpy(attn) if not (self.fused and hasattr(attn, "detach")) else attn
            if a.ndim == 4:
                a = a[None]
            if a.ndim != 5 or a.shape[3] != a.shape[4]:
                raise ValueError("attn must be [B,L,H,n,n] or [L,H,n,n], got shape %s" % (tuple(a.shape),))
            B, L, H, n, _ = (int(x) for x in a.shape)
            gshape = tuple(a.shape) if targets is None else (B, len(targets)) + tuple(a.shape[1:])
            if targets is not None and grad is None:
                raise ValueError("targets needs grad, no target, and at least one class")
            g = None
            if grad is not None:
                g = codec.to_numpy(grad) if not (self.fused and hasattr(grad, "detach")) else grad
                if g.ndim == 4 and targets is None:
                    g = g[None]
                if tuple(g.shape) != gshape:
                    raise ValueError("grad shape %s, expected %s" % (tuple(g.shape), gshape))
            r = None
            if rel is not None:
                if g is None:
                    raise ValueError("rel needs grad (lrp_rollout reads both)")
                if self.fused:
                    raise ValueError("rel has no fused form (lrp_rollout needs every head): "
                                     "send it from a Publisher with fused=False")
                r = codec.to_numpy(rel)
                if r.ndim == 4 and targets is None:
                    r = r[None]
                if r.shape != gshape:
                    raise ValueError("rel shape %s, expected %s" % (r.shape, gshape))
            if self.fused:
                sg = self.fused_signed and g is not None
                part = {"fused": True,
                        "f": fuse(a, g, sg) if targets is None else fuse_targets(a, g, sg)}
            else:
                part = {"fused": False, "a": a, "g": g, "r": r}
        with self._lock:
            if self._closed:
                raise RuntimeError("the publisher is closed")
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
            part.update(B=B, ids=ids, ts=int(time.time_ns() if ts is None else ts),
                        target=None if target is None else [int(v) for v in _broadcast(target, B, "target")],
                        y=None if y is None else [float(v) for v in _broadcast(y, B, "y")],
                        extra=extra, targets=targets)
            if self.shards > 1:
                part["shards"] = [shard_of(i, self.shards) for i in ids]
            f = part.get("f")
            key = (part["fused"], L, H, n, self.cls, tuple(self.tokens),
                   (f.fgrad is not None, f.fgrad_signed is not None) if f is not None
                   else (part["g"] is not None, part["r"] is not None),
                   part["target"] is not None, part["y"] is not None,
                   None if targets is None else tuple(targets))
            if self._pending and (key != self._pending_key or extra):
                self._flush_locked()
            if not self._pending:
                self._pending_key = key
                self._pending_since = time.monotonic()
            self._pending.append(part)
            # The next flush sends one message per shard with trades, at
            # that shard's next seq: the last of this send's is returned.
            seq = self.seqs[max(part["shards"])] if self.shards > 1 else self.seq
            if extra or sum(p["B"] for p in self._pending) >= self.batch:
                self._flush_locked()
            elif self.delay > 0:
                self._start_timer()
                self._cv.notify_all()
            return seq

    def flush(self) -> Optional[int]:
        """Send the pending trades now; returns the seq sent (sharded: that
        of the last shard's message), or None when nothing was pending."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> Optional[int]:
        if not self._pending:
            return None
        parts, self._pending = self._pending, []
        self._pending_key = None
        first = parts[0]
        ids = [i for p in parts for i in p["ids"]]
        if first["fused"]:
            fs = [p["f"] for p in parts]
            f = fs[0] if len(fs) == 1 else Fused(
                *(None if getattr(fs[0], k) is None else np.concatenate([getattr(x, k) for x in fs])
                  for k in ("fattn", "head_confidence", "fgrad", "head_importance", "fgrad_signed")),
                H=fs[0].H)
            B, L, H, n = f.shape
            tensors = [("fattn", f.fattn, self.dtype), ("fgrad", f.fgrad, self.dtype),
                       ("fgrad_signed", f.fgrad_signed, self.dtype),
                       ("head_importance", f.head_importance, "f32"),
                       ("head_confidence", f.head_confidence, "f32")]
        else:
            a = parts[0]["a"] if len(parts) == 1 else np.concatenate([p["a"] for p in parts])
            g = r = None
            if parts[0]["g"] is not None:
                g = parts[0]["g"] if len(parts) == 1 else np.concatenate([p["g"] for p in parts])
            if parts[0]["r"] is not None:
                r = parts[0]["r"] if len(parts) == 1 else np.concatenate([p["r"] for p in parts])
            B, L, H, n, _ = a.shape
            tensors = [("attn", a, self.dtype), ("grad", g, self.dtype), ("rel", r, self.dtype)]
        tensors = [t for t in tensors if t[1] is not None]
        target = None if first["target"] is None else [t for p in parts for t in p["target"]]
        y = None if first["y"] is None else [v for p in parts for v in p["y"]]
        dims = (int(L), int(H), int(n))
        self._poll_subscriptions()
        if self.shards == 1:
            return self._send_message(0, dims, first["ts"], ids, tensors, target, y,
                                      first["targets"], first["extra"])
        # Every per-trade field has the trade on axis 0 (lists: index);
        # targets is the message's, and extra only ever has one part.
        where = [k for p in parts for k in p["shards"]]
        ts = [p["ts"] for p in parts for _ in p["ids"]]
        by_shard: Dict[int, List[int]] = {}
        for i, k in enumerate(where):
            by_shard.setdefault(k, []).append(i)
        seq = None
        for k in sorted(by_shard):
            idx = by_shard[k]
            if len(idx) == len(ids):
                seq = self._send_message(k, dims, ts[0], ids, tensors, target, y,
                                         first["targets"], first["extra"])
                continue
            seq = self._send_message(k, dims, ts[idx[0]], [ids[i] for i in idx],
                                     [(name, x[idx], dt) for name, x, dt in tensors],
                                     None if target is None else [target[i] for i in idx],
                                     None if y is None else [y[i] for i in idx],
                                     first["targets"], _split_extra(first["extra"], idx, len(ids)))
        return seq

    def _send_message(self, k, dims, ts, ids, tensors, target, y, targets, extra) -> int:
        """One message of shard k (0 unsharded) with the trades given;
        tensors are (key, array, dtype), every array present."""
        L, H, n = dims
        sharded = self.shards > 1
        head = {"v": 1, "model": self.model, "seq": self.seqs[k] if sharded else self.seq,
                "ts": ts, "ids": ids, "L": L, "H": H, "n": n, "dtype": self.dtype}
        tail: Dict[str, Any] = {}
        if targets is not None:
            tail["targets"] = list(targets)
        if target is not None:
            tail["target"] = target
        if y is not None:
            tail["y"] = y
        groups = _groups_map(self.groups)
        schema = (L, H, n, self.cls, tuple(self.tokens),
                  tuple((g, tuple(t)) for g, t in groups.items()))
        prev = self._sent_schemas[k] if sharded else self._sent_schema
        if schema != prev:
            tail["cls"] = self.cls
            tail["tokens"] = list(self.tokens)
            if groups or (prev is not None and prev[5]):
                tail["groups"] = groups     # {} removes the groups sent before
        if extra:
            for key, v in extra.items():
                if key not in head and key not in tail and all(key != t[0] for t in tensors):
                    tail[key] = v
        body = _pack_body(head, tensors, tail)
        self._sock.send_multipart([self._topics[k], body], copy=not self.zero_copy)
        if sharded:
            self._sent_schemas[k] = schema
            seq = self.seqs[k]
            self.seqs[k] += 1
            return seq
        self._sent_schema = schema
        seq = self.seq
        self.seq += 1
        return seq

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = threading.Thread(target=self._timer_loop, name="xplain-pub-batch", daemon=True)
            self._timer.start()

    def _timer_loop(self) -> None:
        with self._cv:
            while not self._closed:
                if not self._pending or self.delay <= 0:
                    self._cv.wait()
                    continue
                left = self._pending_since + self.delay - time.monotonic()
                if left > 0:
                    self._cv.wait(left)
                    continue
                try:
                    self._flush_locked()
                except zmq.ZMQError:
                    self._pending = []      # the socket is gone: nothing to send to

    def close(self, linger_ms: Optional[int] = None) -> None:
        """Send what is pending, stop the batch timer and close the socket."""
        with self._cv:
            if self._closed:
                return
            try:
                self._flush_locked()
            finally:
                self._closed = True
                self._cv.notify_all()
        if self._timer is not None:
            self._timer.join(5.0)
        if linger_ms is not None:
            self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _bin_header(size: int) -> bytes:
    if size < 256:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 65536:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def _map_items(d: Dict[str, Any]) -> bytes:
    """msgpack of a dict's key/value pairs without the map header."""
    b = msgpack.packb(d, use_bin_type=True)
    h = b[0]
    return b[1:] if h < 0x90 else b[3:] if h == 0xDE else b[5:]


def _map_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x80 | count])
    if count < 65536:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


def _tensor_view(x, dtype: str):
    """The wire bytes of a tensor as a buffer, without a copy when the
    array already is contiguous little-endian float32 (f32)."""
    if dtype == "f32":
        a = np.ascontiguousarray(x, dtype="<f4")
        return memoryview(a).cast("B")
    if dtype == "f16" and getattr(x, "dtype", None) == np.float16:
        # Already half (converted on the model's device): as is.
        return memoryview(np.ascontiguousarray(x, dtype="<f2")).cast("B")
    return codec.encode(x, dtype)


def _pack_body(head: Dict[str, Any], tensors, tail: Dict[str, Any]) -> bytes:
    """msgpack map of head, tensors (key, array, dtype), tail: the small
    values through msgpack, each tensor copied once, into the frame."""
    chunks = [_map_header(len(head) + len(tensors) + len(tail)), _map_items(head)]
    for k, x, dt in tensors:
        buf = _tensor_view(x, dt)
        chunks.append(_KEYS.get(k) or msgpack.packb(k))
        chunks.append(_bin_header(len(buf)))
        chunks.append(buf)
    if tail:
        chunks.append(_map_items(tail))
    return b"".join(chunks)


_KEYS = {k: msgpack.packb(k) for k in ("attn", "grad", "rel", "fattn", "fgrad", "fgrad_signed",
                                       "head_importance", "head_confidence")}


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
