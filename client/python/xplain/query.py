"""Query client: every op of proto/queries.md over a DEALER socket.

    q = Client("tcp://127.0.0.1:5558", timeout=2.0)
    q.ping()["version"]
    q.schema("m1")["features"]
    q.trade("m1", "t-1")["matrices"]["rollout"]    # numpy [n, n]

A reply with `ok: false` raises QueryError (with `.code` and `.error`);
no reply within `timeout` seconds raises QueryTimeout. After a timeout the
socket is replaced, so a late reply can never be mistaken for the answer
to the next request. A reply that is not one of the contract (not
msgpack, not a map, no boolean `ok`, a field of the wrong type) raises
XplainError, the base of both: never another exception.
"""
from typing import Any, Dict, List, Optional, Sequence, Union

import msgpack
import numpy as np
import zmq

from . import curve as _curve
from .errors import XplainError


class QueryError(XplainError):
    """The daemon answered `ok: false`.

    code   the contract's error code (bad_request, unknown_op,
           unknown_model, not_found, bad_argument, internal), as the
           daemon sent it (a code this client does not know yet too)
    error  the daemon's readable sentence
    reply  the whole reply map"""

    def __init__(self, op, code, error, reply):
        self.op, self.code, self.error, self.reply = op, code, error, reply
        super().__init__("%s: %s: %s" % (op, code, error))


class QueryTimeout(XplainError, TimeoutError):
    """No reply within the timeout (daemon down, wrong endpoint, or busy;
    with CURVE, possibly a key the daemon does not admit: `hint` then says
    more, and ends the message)."""

    def __init__(self, op, endpoint, timeout, hint=""):
        self.op, self.endpoint, self.timeout, self.hint = op, endpoint, timeout, hint
        super().__init__("%s: no reply from %s within %.3g s%s" % (op, endpoint, timeout, hint))


class Client:
    """Request/reply client of the daemon's query socket.

    endpoint  the daemon's --query endpoint
    timeout   seconds to wait for each reply (default 5; per call override)
    curve_secret, server_public  for a daemon running with --curve: this
              client's secret certificate and the daemon's public one, or
              raw Z85 keys (see xplain.curve)
    """

    def __init__(self, endpoint: str, timeout: float = 5.0, context: Optional[zmq.Context] = None,
                 curve_secret: Optional[Union[str, bytes]] = None, server_public: Optional[Union[str, bytes]] = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve = _curve.keys(curve_secret, server_public)
        self._ctx = context or zmq.Context.instance()
        self._sock = None
        self._watch = None
        self._open()

    def _open(self):
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(self._sock)
            self._watch = _curve.HandshakeWatch(self._ctx, self._sock)
        self._sock.connect(self.endpoint)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, op: str, timeout: Optional[float] = None, **args: Any) -> Dict[str, Any]:
        """Send {"v": 1, "op": op, **args}; return the reply map (ok: true)
        or raise QueryError / QueryTimeout. Arguments whose value is None
        are left out."""
        body = {"v": 1, "op": op}
        body.update({k: v for k, v in args.items() if v is not None})
        return self.raw(msgpack.packb(body, use_bin_type=True), op=op, timeout=timeout)

    def raw(self, frame: bytes, op: str = "request", timeout: Optional[float] = None) -> Dict[str, Any]:
        """Send one pre-encoded request frame; return the decoded reply.
        (For tests of malformed requests; request() is what users want.)"""
        return _reply(op, self._roundtrip(frame, op, timeout))

    def _roundtrip(self, frame: bytes, op: str, timeout: Optional[float]) -> bytes:
        """Send one request frame; return the reply's body frame."""
        if self._sock is None:
            self._open()
        timeout = self.timeout if timeout is None else timeout
        self._sock.send_multipart([b"", frame])
        if not self._sock.poll(int(timeout * 1000), zmq.POLLIN):
            # Drop the socket with its pending request: a reply arriving
            # later must not answer the next question. (With CURVE this
            # also retries a refused key, which libzmq never does itself.)
            hint = self._watch.hint() if self._watch is not None else ""
            self.close()
            raise QueryTimeout(op, self.endpoint, timeout, hint)
        return self._sock.recv_multipart()[-1]

    # --- the ops of proto/queries.md ---------------------------------

    def ping(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """`version` and `uptime_s`."""
        return self.request("ping", timeout=timeout)

    def models(self, timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        """List of per-model maps (model, epoch, L, H, n, cls, counters)."""
        return _field(self.request("models", timeout=timeout), "models", list, "models")

    def schema(self, model: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        """model, epoch, L, H, n, cls, tokens, features, dtype."""
        return self.request("schema", model=model, timeout=timeout)

    def stats(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """counters, rejected (by reason), latency_us, models."""
        return self.request("stats", timeout=timeout)

    def trade(self, model: str, id: Union[int, str], flow: Optional[bool] = None,
              timeout: Optional[float] = None) -> Dict[str, Any]:
        """The cached explanation of trade `id`; `attr` values and the n x n
        `matrices` are numpy arrays (float32)."""
        r = self.request("trade", model=model, id=id, flow=flow, timeout=timeout)
        r["attr"] = {k: vector(v, "trade: attr") for k, v in
                     _field(r, "attr", dict, "trade", {}).items()}
        n = r.get("n")
        mats = {}
        for k, v in (_field(r, "matrices", dict, "trade", None) or {}).items():
            if not isinstance(v, bytes) or len(v) % 4:
                raise XplainError("trade: matrix %r is not a bin of float32" % (k,))
            m = np.frombuffer(v, dtype="<f4").astype(np.float32)
            mats[k] = m.reshape(n, n) if isinstance(n, int) and n > 0 and m.size == n * n else m
        r["matrices"] = mats
        return r

    def global_state(self, model: str, method: Optional[str] = None, target: Optional[int] = None,
                     epoch: Optional[int] = None, timeout: Optional[float] = None,
                     segment: Optional[str] = None) -> Dict[str, Any]:
        """The `global` op (global.md): the whole glob/ state of the current
        epoch (or `epoch`), restricted to `method` / target class `target`
        when given, with the `seq` it is current at; with `segment` (a
        label such as "desk=rates"), that segment's means. Vectors (mean,
        std, decayed, reference) are numpy float64 arrays."""
        r = self.request("global", model=model, method=method, target=target, epoch=epoch,
                         segment=segment, timeout=timeout)
        return arrays(r)

    def drift(self, model: str, method: Optional[str] = None, epoch: Optional[int] = None,
              timeout: Optional[float] = None, segment: Optional[str] = None) -> Dict[str, Any]:
        """The `drift` op (global.md): windows, mode and thresholds, last
        window per method (with its verdict and what moved) and the recent
        alerts; of the model overall, or of `segment` when given."""
        return arrays(self.request("drift", model=model, method=method, epoch=epoch,
                                   segment=segment, timeout=timeout))

    def baseline(self, model: str, action: str, timeout: Optional[float] = None, **args: Any) -> Dict[str, Any]:
        """Pin ("pin") or forget ("reset") the drift baseline."""
        return self.request("baseline", model=model, action=action, timeout=timeout, **args)

    def reference(self, model: str, method: str, values: Sequence[float], timeout: Optional[float] = None,
                  **args: Any) -> Dict[str, Any]:
        """Set an external reference attribution (feature order: tokens
        without CLS, groups once), e.g. permutation importance. With
        features=[names] (one per value) the values go by name and
        features the model does not attribute are dropped."""
        vals = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
        return self.request("reference", model=model, method=method, values=vals,
                            timeout=timeout, **args)


def _reply(op: str, frame: bytes) -> Dict[str, Any]:
    """The reply map of a reply body frame when `ok` is true; QueryError
    when it is false; XplainError when the frame is no reply at all."""
    try:
        reply = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as e:      # ValueError, TypeError (a list as a key), StackError...
        raise XplainError("%s: reply is not msgpack (%s: %s)" % (op, type(e).__name__, e)) from None
    if not isinstance(reply, dict):
        raise XplainError("%s: reply is not a map: %.200r" % (op, reply))
    ok = reply.get("ok")
    if ok is False:
        raise QueryError(op, reply.get("code", "?"), reply.get("error", "(no reason given)"), reply)
    if ok is not True:
        raise XplainError("%s: reply without a boolean 'ok': %.200r" % (op, reply))
    return reply


def _field(reply: Dict[str, Any], key: str, typ: type, op: str, default: Any = KeyError) -> Any:
    """reply[key] when it is a `typ` (or `default` when absent, if given);
    XplainError otherwise."""
    if key not in reply and default is not KeyError:
        return default
    v = reply.get(key)
    if not isinstance(v, typ):
        raise XplainError("%s: reply's %r is missing or not a %s" % (op, key, typ.__name__))
    return v


def vector(v: Any, what: str) -> np.ndarray:
    """A vector of numbers as a 1-D numpy float32 array; XplainError when
    `v` is anything else (a string, a map, a nested list...)."""
    if isinstance(v, np.ndarray) and v.ndim == 1:
        return v.astype(np.float32)
    if not isinstance(v, (list, tuple)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise XplainError("%s: %.100r is not an array of numbers" % (what, v))
    return np.asarray(v, dtype=np.float32).reshape(-1)


_VECTOR_KEYS = frozenset(("mean", "std", "decayed", "reference", "importance", "confidence"))


def arrays(obj: Any, key: Optional[str] = None, depth: int = 0) -> Any:
    """Copy of a decoded glob/ heads/ drift/ body (or query reply) with the
    numeric vectors and matrices of global.md (mean, std, decayed,
    reference, importance, confidence) as numpy float64 arrays. Below 32
    levels (deeper than any message of the contract) objects are left as
    they are: a peer's 500 nested arrays must not exhaust Python's stack."""
    if depth >= 32:
        return obj
    if isinstance(obj, dict):
        return {k: arrays(v, k, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        if key in _VECTOR_KEYS:
            try:
                return np.asarray(obj, dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                pass
        return [arrays(x, None, depth + 1) for x in obj]
    return obj
