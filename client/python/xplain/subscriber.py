"""Subscriber: decoded messages from the daemon's PUB socket.

    sub = Subscriber("tcp://127.0.0.1:5557", models=["m1"],
                     query="tcp://127.0.0.1:5558")
    for x in sub:                    # Explanation objects
        print(x.id, x.top("rollout", 3))

Per-trade explanations (`xpl/`, proto/explanations.md) come as Explanation
objects with `attr` as numpy float32 vectors and `features` (the schema's
token names without CLS, or with feature groups each group once under
its name) attached, and `groups` (each group feature's tokens). Feature
names come from the `schema` query, cached per (model, epoch); an epoch
the daemon has moved past cannot be named any more and gets
`features = None`.

Global state, drift and head statistics (`glob/`, `drift/`, `heads/`,
proto/global.md) come as Update objects when asked for with `kinds`.

A message that is not a publication of the contract (not msgpack, not a
map with "v": 1, a model that is no string, an attribution that is no
vector of numbers, ...) is dropped and counted in `malformed`; recv()
never raises because of what a peer sent.
"""
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import msgpack
import numpy as np
import zmq

from . import curve as _curve
from .query import Client, XplainError, arrays, vector

KINDS = ("xpl", "glob", "drift", "heads")


class Explanation:
    """One explained trade.

    model, id, seq, ts, epoch   as in the message
    target, y                   None when the trade had none
    attr                        dict method -> numpy float32 vector
    features                    list of names (len = vector length) or None
    groups                      dict group feature name -> its tokens' names
                                ({} without feature groups, None when unknown)
    raw                         the decoded message body
    """
    kind = "xpl"
    __slots__ = ("model", "id", "seq", "ts", "epoch", "target", "y", "attr",
                 "features", "groups", "raw")

    def __init__(self, body: Dict[str, Any], features: Optional[List[str]] = None,
                 groups: Optional[Dict[str, List[str]]] = None) -> None:
        """XplainError when `attr` is not a map of method name to vector;
        `features` is kept only when it names every entry of every vector."""
        self.raw = body
        self.model = body.get("model")
        self.id = body.get("id")
        self.seq = body.get("seq")
        self.ts = body.get("ts")
        self.epoch = body.get("epoch")
        self.target = body.get("target")
        self.y = body.get("y")
        attr = body.get("attr") or {}
        if not isinstance(attr, dict):
            raise XplainError("xpl: 'attr' is not a map")
        self.attr = {k: vector(v, "xpl: attr") for k, v in attr.items()}
        if features is not None and any(len(v) != len(features) for v in self.attr.values()):
            features = None     # another epoch's names: none rather than wrong ones
        self.features = features
        self.groups = groups if features is not None else None

    def tokens_of(self, feature: str) -> Optional[List[str]]:
        """The tokens a feature sums: its group's tokens, or [feature] for
        a token of its own; None when the features are unknown."""
        if self.features is None or feature not in self.features:
            return None
        return list((self.groups or {}).get(feature, [feature]))

    def top(self, method: str, k: int = 5) -> List[Tuple[Any, float]]:
        """The k largest features of a method: list of (name or index, value)."""
        v = self.attr[method]
        order = sorted(range(len(v)), key=lambda j: (-float(v[j]), j))[:k]
        names = self.features if self.features is not None else list(range(len(v)))
        return [(names[j], float(v[j])) for j in order]

    def as_dict(self, method: str) -> Dict[Any, float]:
        """{feature name: value} of one method (names are indices without a schema)."""
        names = self.features if self.features is not None else list(range(len(self.attr[method])))
        return dict(zip(names, (float(x) for x in self.attr[method])))

    def __repr__(self):
        return "Explanation(model=%r, id=%r, epoch=%r, methods=%s)" % (
            self.model, self.id, self.epoch, sorted(self.attr))


class Update:
    """A `glob/`, `drift/` or `heads/` message: `kind`, `model`, `seq`,
    `epoch`, `segment` (its label for glob/<model>/<segment> and
    drift/<model>/<segment>, None for the model overall), `body` (numeric
    vectors as numpy float64 arrays), `features`."""
    __slots__ = ("kind", "model", "seq", "epoch", "segment", "body", "features")

    def __init__(self, kind: str, body: Dict[str, Any], features: Optional[List[str]] = None) -> None:
        self.kind = kind
        self.body = arrays(body)
        self.model = body.get("model")
        self.seq = body.get("seq")
        self.epoch = body.get("epoch")
        seg = body.get("segment")
        self.segment = seg if isinstance(seg, str) else None
        self.features = features

    def __getitem__(self, k):
        return self.body[k]

    def get(self, k: str, default: Any = None) -> Any:
        return self.body.get(k, default)

    def __repr__(self):
        if self.segment is not None:
            return "Update(kind=%r, model=%r, segment=%r, seq=%r)" % (
                self.kind, self.model, self.segment, self.seq)
        return "Update(kind=%r, model=%r, seq=%r)" % (self.kind, self.model, self.seq)


class Subscriber:
    """SUB socket on the daemon's --publish endpoint.

    endpoint  the daemon's PUB endpoint (connect)
    models    model names to receive (None: all); filtered exactly on the
              body's `model` too, since ZeroMQ topics are prefixes
    kinds     which topics: any of "xpl", "glob", "drift", "heads"
    segments  None (default): the model overall and every segment
              (glob/<model>/<segment>, drift/<model>/<segment> arrive with
              the overall ones, ZeroMQ matching prefixes); else the
              segment labels to keep, None among them for the model
              overall: segments=[None] keeps only the overall messages
    query     a query endpoint or Client, for feature names (optional)
    rcvhwm    receive high-water mark
    curve_secret, server_public  for a daemon running with --curve: this
              subscriber's secret certificate and the daemon's public one,
              or raw Z85 keys (see xplain.curve); also used for the query
              endpoint when `query` is one. A daemon that does not admit
              the key sends nothing (recv returns None).
    """

    def __init__(self, endpoint: Union[str, Sequence[str]], models: Optional[Sequence[str]] = None,
                 kinds: Sequence[str] = ("xpl",), query: Union[None, str, Client] = None,
                 context: Optional[zmq.Context] = None, rcvhwm: int = 100000, query_timeout: float = 2.0,
                 curve_secret: Optional[Union[str, bytes]] = None, server_public: Optional[Union[str, bytes]] = None,
                 segments: Optional[Sequence[Optional[str]]] = None) -> None:
        self.curve = _curve.keys(curve_secret, server_public)
        self._ctx = context or zmq.Context.instance()
        self.segments = None if segments is None else set(
            [segments] if isinstance(segments, str) else segments)
        self._sock = self._ctx.socket(zmq.SUB)
        if self.curve is not None:
            self.curve.apply(self._sock)
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        self.models = None if models is None else set([models] if isinstance(models, str) else models)
        self.kinds = tuple(kinds)
        for k in self.kinds:
            if k not in KINDS:
                raise ValueError("kind must be one of %s, not %r" % (", ".join(KINDS), k))
            for m in (self.models or [None]):
                self._sock.setsockopt(zmq.SUBSCRIBE, ("%s/%s" % (k, m or "")).encode())
        self._sock.connect(endpoint)
        self.endpoint = endpoint
        if isinstance(query, str):
            self._query, self._own_query = Client(query, timeout=query_timeout, context=self._ctx,
                                                  curve_secret=self.curve), True
        else:
            self._query, self._own_query = query, False
        self._features = {}          # (model, epoch) -> list of names
        self._groups = {}            # (model, epoch) -> {group name: tokens}
        self._last_seq = {}          # topic -> last seq seen
        self.gaps = 0                # messages missed (seq gaps), all topics
        self.malformed = 0           # messages dropped as not of the contract

    def features(self, model: str, epoch: int) -> Optional[List[str]]:
        """Feature names of (model, epoch), via the schema query (cached);
        None when unknown or no query endpoint was given."""
        key = (model, epoch)
        if key in self._features:
            return self._features[key]
        if self._query is None:
            return None
        try:
            s = self._query.schema(model)
        except XplainError:
            # Unknown model or daemon unreachable: do not ask again for
            # every message of this epoch.
            self._features[key] = None
            return None
        names = s.get("features")
        if names is None and isinstance(s.get("tokens"), list):
            names = [t for j, t in enumerate(s["tokens"]) if j != s.get("cls", -1)]
        s_epoch = s.get("epoch")
        if not isinstance(names, list) or not all(isinstance(t, str) for t in names) \
                or not isinstance(s_epoch, int):
            self._features[key] = None       # a schema reply not of the contract
            return None
        self._features[(model, s_epoch)] = names
        g = s.get("groups", {})
        if isinstance(g, dict) and all(isinstance(k, str) and isinstance(v, list) and
                                       all(isinstance(t, str) for t in v) for k, v in g.items()):
            self._groups[(model, s_epoch)] = {k: list(v) for k, v in g.items()}
        if s_epoch != epoch and isinstance(epoch, int) and s_epoch > epoch:
            self._features[key] = None       # an epoch the daemon has left behind
        return self._features.get(key)

    def groups(self, model: str, epoch: int) -> Optional[Dict[str, List[str]]]:
        """The feature groups of (model, epoch): {group name: its tokens},
        {} for a schema without groups; None when unknown (as features)."""
        if self.features(model, epoch) is None:
            return None
        return self._groups.get((model, epoch), {})

    def recv(self, timeout: Optional[float] = None) -> Union["Explanation", "Update", None]:
        """The next message as Explanation or Update; None after `timeout`
        seconds (None: wait forever)."""
        while True:
            if timeout is not None:
                t0 = time.monotonic()
                if not self._sock.poll(int(timeout * 1000), zmq.POLLIN):
                    return None
            frames = self._sock.recv_multipart()
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - t0))
            msg = self._decode(frames)
            if msg is not None:
                return msg

    def _decode(self, frames):
        if len(frames) != 2:
            return None
        topic = frames[0].decode("utf-8", "replace")
        kind, _, model = topic.partition("/")
        if kind not in self.kinds:
            return None
        try:
            body = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
        except Exception:
            self.malformed += 1
            return None
        if not isinstance(body, dict) or body.get("v") != 1:
            self.malformed += 1
            return None
        model = body.get("model", model)
        if not isinstance(model, str):
            self.malformed += 1
            return None
        if self.models is not None and model not in self.models:
            return None
        if self.segments is not None and kind != "xpl":
            seg = body.get("segment")
            if (seg if isinstance(seg, str) else None) not in self.segments:
                return None
        seq = body.get("seq")
        if isinstance(seq, int):
            last = self._last_seq.get(topic)
            if last is not None and seq > last + 1:
                self.gaps += seq - last - 1
            self._last_seq[topic] = seq
        if kind == "xpl":
            epoch = body.get("epoch")
            try:
                ok = isinstance(epoch, int)
                return Explanation(body, self.features(model, epoch) if ok else None,
                                   self.groups(model, epoch) if ok else None)
            except XplainError:
                self.malformed += 1
                return None
        feats = body.get("features")
        if not isinstance(feats, list) or not all(isinstance(t, str) for t in feats):
            feats = None
        epoch = body.get("epoch")
        if feats is None and kind == "glob" and isinstance(epoch, int):
            feats = self.features(model, epoch)
        return Update(kind, body, feats)

    def __iter__(self) -> Iterator[Union["Explanation", "Update", None]]:
        while True:
            yield self.recv()

    def close(self) -> None:
        self._sock.close(0)
        if self._own_query and self._query is not None:
            self._query.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
