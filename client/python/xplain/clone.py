"""GlobalView: a model's global state kept current by the Clone pattern
(proto/global.md; zguide chapter 5).

    view = GlobalView("tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558", "m1")
    view.poll(1.0)                       # apply the updates that arrived
    view.state["methods"]["rollout"]["mean"]     # numpy float64

The SUB socket subscribes to glob/<model> before the snapshot is asked for
(the order that avoids the race of zguide issue 818); updates with a seq
at or below the snapshot's are dropped; every glob/ message is a whole
state, so a later one simply replaces the view.

With `segment` (a label such as "desk=rates", daemon run with
--segment-by) the view follows that segment's state instead: topic
glob/<model>/<segment>, which numbers its messages on its own, and the
`global` query with that segment. Segments keep no per-class means.

ZeroMQ matches topic prefixes, so the subscription glob/m1 also receives
glob/m10 and every glob/m1/<segment>: the view applies only messages
whose topic is exactly its own (and whose body names its model and
segment, or no segment for the model overall). A seq at or below the
last applied one in a message sent later (its `ts` is newer than the
state's) means the daemon restarted and counts again: the view takes a new
snapshot. (The `global` reply's `ts` is the time of the reply, so every
message queued before the snapshot is older than it.)
"""
import time
from typing import Any, Dict, Optional, Union

import msgpack
import numpy as np
import zmq

from . import curve as _curve
from .query import Client, QueryError, XplainError, arrays


class GlobalView:
    """Clone-pattern view of one model's glob/ state (or of one segment's,
    glob/<model>/<segment>, with `segment`).

    state   the last whole state (dict as in glob/, vectors as numpy), or
            None while the daemon has none for the model
    seq     its seq (-1 before the first)

    curve_secret, server_public (arguments) for a daemon running with
    --curve: this view's secret certificate and the daemon's public one,
    or raw Z85 keys (see xplain.curve); a daemon that does not admit the
    key makes the first snapshot raise QueryTimeout with a CURVE hint.
    """

    def __init__(self, publish: str, query: Union[str, Client], model: str, context: Optional[zmq.Context] = None,
                 timeout: float = 5.0, curve_secret: Optional[Union[str, bytes]] = None, server_public: Optional[Union[str, bytes]] = None,
                 segment: Optional[str] = None) -> None:
        self.curve = _curve.keys(curve_secret, server_public)
        self._ctx = context or zmq.Context.instance()
        self.model = model
        self.segment = segment or None
        self._sub = self._ctx.socket(zmq.SUB)
        if self.curve is not None:
            self.curve.apply(self._sub)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        self._sub.connect(publish)
        if isinstance(query, str):
            self._q, self._own_q = Client(query, timeout=timeout, context=self._ctx,
                                          curve_secret=self.curve), True
        else:
            self._q, self._own_q = query, False
        self.state = None
        self.seq = -1
        self.snapshots = 0
        self.updates = 0
        self.restarts = 0
        try:
            self.snapshot()
        except BaseException:
            self.close()
            raise

    segment: Optional[str] = None

    @property
    def topic(self) -> bytes:
        """The topic followed: glob/<model>, or glob/<model>/<segment>."""
        return ("glob/" + self.model + ("/" + self.segment if self.segment else "")).encode()

    def snapshot(self) -> Dict[str, Any]:
        """Take a snapshot (the `global` query) now. Messages queued on the
        SUB socket stay queued and are filtered by seq in poll()."""
        try:
            r = self._q.global_state(self.model, segment=self.segment)
        except QueryError as e:
            if e.code not in ("unknown_model", "not_found"):
                raise
            self.state, self.seq = None, -1
            return False
        for k in ("ok",):
            r.pop(k, None)
        seq = r.get("seq", -1)
        if not isinstance(seq, int):
            raise XplainError("global: reply's 'seq' is not an integer: %.100r" % (seq,))
        self.state, self.seq = r, seq
        self.snapshots += 1
        return True

    def poll(self, timeout: float = 0.0) -> int:
        """Apply every glob/ update that arrives within `timeout` seconds
        (0: only those already queued). Returns the number applied."""
        applied = 0
        want = self.topic
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            if not self._sub.poll(int(left * 1000), zmq.POLLIN):
                return applied
            topic, body = self._sub.recv_multipart()[:2]
            if topic != want:
                continue          # glob/m10, glob/m1/<segment> also match the prefix glob/m1
            try:
                m = msgpack.unpackb(body, raw=False, strict_map_key=False)
            except Exception:
                continue
            if not isinstance(m, dict) or m.get("model") != self.model or not isinstance(m.get("seq"), int) \
                    or m.get("segment") != self.segment:
                continue
            seq = m["seq"]
            if seq <= self.seq:
                # Older than the state held: either sent before the snapshot
                # (drop it) or, when it was sent after the state held was
                # (ts), by a daemon that restarted and counts again.
                ts, held = m.get("ts", 0), (self.state or {}).get("ts", 0)
                if self.state is not None and isinstance(ts, int) and isinstance(held, int) \
                        and ts > held:
                    self.restarts += 1
                    self.snapshot()
                continue
            self.state, self.seq = arrays(m), seq
            self.updates += 1
            applied += 1

    def mean(self, method: str, target: Optional[int] = None) -> Any:
        """The global mean vector of a method (overall or for a target
        class), or None (also when the state holds no vector there)."""
        if self.state is None:
            return None
        if target is None:
            ms = self.state.get("methods", {})
        else:
            ts = self.state.get("targets", [])
            ms = next((t.get("methods") for t in (ts if isinstance(ts, list) else [])
                       if isinstance(t, dict) and t.get("target") == target), {})
        e = ms.get(method) if isinstance(ms, dict) else None
        mean = e.get("mean") if isinstance(e, dict) else None
        return mean if isinstance(mean, np.ndarray) else None   # not a vector: no mean

    def close(self) -> None:
        self._sub.close(0)
        if self._own_q:
            self._q.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
