"""Query client: every op of proto/queries.md over a DEALER socket.

    q = Client("tcp://127.0.0.1:5558", timeout=2.0)
    q.ping()["version"]
    q.schema("m1")["features"]
    q.trade("m1", "t-1")["matrices"]["rollout"]    # numpy [n, n]

A reply with `ok: false` raises QueryError (with `.code` and `.error`);
no reply within `timeout` seconds raises QueryTimeout. After a timeout the
socket is replaced, so a late reply can never be mistaken for the answer
to the next request.
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
           unknown_model, not_found, bad_argument)
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
        frames = self._sock.recv_multipart()
        reply = msgpack.unpackb(frames[-1], raw=False, strict_map_key=False)
        if not isinstance(reply, dict):
            raise XplainError("%s: reply is not a map: %r" % (op, reply))
        if not reply.get("ok", False):
            raise QueryError(op, reply.get("code", "?"), reply.get("error", "(no reason given)"), reply)
        return reply

    # --- the ops of proto/queries.md ---------------------------------

    def ping(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """`version` and `uptime_s`."""
        return self.request("ping", timeout=timeout)

    def models(self, timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        """List of per-model maps (model, epoch, L, H, n, cls, counters)."""
        return self.request("models", timeout=timeout)["models"]

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
        r["attr"] = {k: np.asarray(v, dtype=np.float32) for k, v in r.get("attr", {}).items()}
        n = r.get("n")
        mats = {}
        for k, v in (r.get("matrices") or {}).items():
            m = np.frombuffer(v, dtype="<f4").astype(np.float32)
            mats[k] = m.reshape(n, n) if n and m.size == n * n else m
        r["matrices"] = mats
        return r

    def global_state(self, model: str, method: Optional[str] = None, target: Optional[int] = None,
                     epoch: Optional[int] = None, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The `global` op (global.md): the whole glob/ state of the current
        epoch (or `epoch`), restricted to `method` / target class `target`
        when given, with the `seq` it is current at. Vectors (mean, std,
        decayed, reference) are numpy float64 arrays."""
        r = self.request("global", model=model, method=method, target=target, epoch=epoch,
                         timeout=timeout)
        return arrays(r)

    def drift(self, model: str, method: Optional[str] = None, epoch: Optional[int] = None,
              timeout: Optional[float] = None) -> Dict[str, Any]:
        """The `drift` op (global.md): windows, thresholds, last window per
        method and the recent alerts."""
        return arrays(self.request("drift", model=model, method=method, epoch=epoch,
                                   timeout=timeout))

    def baseline(self, model: str, action: str, timeout: Optional[float] = None, **args: Any) -> Dict[str, Any]:
        """Pin ("pin") or forget ("reset") the drift baseline."""
        return self.request("baseline", model=model, action=action, timeout=timeout, **args)

    def reference(self, model: str, method: str, values: Sequence[float], timeout: Optional[float] = None,
                  **args: Any) -> Dict[str, Any]:
        """Set an external reference attribution (token order without CLS),
        e.g. permutation importance."""
        vals = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
        return self.request("reference", model=model, method=method, values=vals,
                            timeout=timeout, **args)


_VECTOR_KEYS = frozenset(("mean", "std", "decayed", "reference", "importance", "confidence"))


def arrays(obj, key=None):
    """Copy of a decoded glob/ heads/ drift/ body (or query reply) with the
    numeric vectors and matrices of global.md (mean, std, decayed,
    reference, importance, confidence) as numpy float64 arrays."""
    if isinstance(obj, dict):
        return {k: arrays(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        if key in _VECTOR_KEYS:
            try:
                return np.asarray(obj, dtype=np.float64)
            except (TypeError, ValueError):
                pass
        return [arrays(x) for x in obj]
    return obj
