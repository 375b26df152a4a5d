"""client/python/xplain's decoding against mutated proto/examples messages:
property-based (Debian's python3-hypothesis), derandomized, so every run
checks the same inputs and a failure is reproducible.

What a peer sends must either decode or end in the package's documented
way, never in another exception:

- Subscriber: a mutated xpl/, glob/, drift/ or heads/ message (body or
  topic) is an Explanation, an Update, or dropped (None; counted in
  `malformed` when it is no publication of the contract). An
  Explanation's vectors are 1-D float32, top() and as_dict() work for
  every method, `features` names every entry or is None. The schema reply
  behind the feature names is mutated too.
- Client: every op, given a mutated reply of its kind, returns or raises
  XplainError (QueryError for "ok": false); trade's attr and matrices are
  numpy float32.
- GlobalView: a mutated `global` reply is a snapshot or XplainError; a
  mutated glob/ message is applied or dropped; mean() is an array or None.
- codec.decode: an array or ValueError, for any bytes, dtype and shape.

A hang is caught by xpltest's watchdog (every thread's stack, exit 1).
Mutations: a key dropped, a value replaced by another of any msgpack type
(deep, wide, huge integers, NaN, bytes, non-string keys), a value wrapped
in a list, bytes flipped, cut or inserted, and nesting 500 deep.

Run by Debian's /usr/bin/python3 (python3-hypothesis, -zmq, -msgpack, -numpy).
"""
import copy
import os
import sys
import tempfile

# Hypothesis keeps caches in a directory (./.hypothesis by default): not
# in the source or build tree.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY",
                      os.path.join(tempfile.gettempdir(), "xplain-test-hypothesis"))

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocheck import SOURCE, load  # noqa: E402

sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
import xplain  # noqa: E402
from xplain import Client, Explanation, GlobalView, Subscriber, Update, XplainError  # noqa: E402
from xplain import codec  # noqa: E402

EXAMPLES = load()
EXAMPLES_BY = {}
for e in EXAMPLES:
    EXAMPLES_BY.setdefault(e["kind"], []).append(e)
REPLIES = {}
for e in EXAMPLES_BY["reply"]:
    REPLIES.setdefault(e.get("op"), []).append(e["body_bytes"])
SCHEMA = next(e["body_bytes"] for e in EXAMPLES_BY["reply"] if e["example"] == "reply/schema")
ERRORS = [e["body_bytes"] for e in EXAMPLES_BY["reply"] if e["example"].startswith("reply/error-")]

# Enough examples per property to reach every decoder's branches; the
# same ones on every run (derandomize), nothing written to the tree.
RUNS = int(os.environ.get("XPL_PYFUZZ_EXAMPLES", "400"))
SETTINGS = settings(max_examples=RUNS, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))

# ---- mutations -------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.binary(max_size=16), st.sampled_from(["m1", "rollout", "", "\x00", "t-1"]))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-5, 5)), inner, max_size=4)),
    max_leaves=12)


def _slots(obj, path=()):
    """Every (path, container, key) of a decoded body, the root's items too."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((path + (k,), obj, k))
            out.extend(_slots(v, path + (k,)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((path + (i,), obj, i))
            out.extend(_slots(v, path + (i,)))
    return out


@st.composite
def mutated_obj(draw, body):
    """A decoded body with one to three structural mutations."""
    obj = copy.deepcopy(msgpack.unpackb(body, raw=False, strict_map_key=False))
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(obj)
        if not slots:
            break
        _, parent, key = draw(st.sampled_from(slots))
        op = draw(st.sampled_from(["drop", "replace", "replace", "wrap", "empty"]))
        if op == "drop" and isinstance(parent, dict):
            del parent[key]
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "empty":
            parent[key] = type(parent[key])() if isinstance(parent[key], (list, dict, str, bytes)) else None
        else:
            parent[key] = draw(values)
    return obj


@st.composite
def mutated_bytes(draw, body):
    """Bytes of a body with a few byte-level edits (flip, cut, insert)."""
    b = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, max(0, len(b) - 1)))
        if op == "flip" and b:
            b[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del b[at:at + draw(st.integers(1, 8))]
        else:
            b[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(b)


DEEP = b"\x82\xa1v\x01\xa5model\x91" + b"\x91" * 500 + b"\x01"
DEEP_GLOB = b"\x83\xa1v\x01\xa5model\xa2m1\xa7methods" + b"\x91" * 500 + b"\x01"


@st.composite
def mutated(draw, bodies):
    """A mutated body of one of `bodies`: structural, byte-level or deep."""
    body = draw(st.sampled_from(bodies))
    how = draw(st.sampled_from(["obj", "obj", "obj", "bytes", "deep"]))
    if how == "deep":
        return draw(st.sampled_from([DEEP, DEEP_GLOB]))
    if how == "bytes":
        return draw(mutated_bytes(body))
    return msgpack.packb(draw(mutated_obj(body)), use_bin_type=True)


# ---- a client without a socket ---------------------------------------------

class StagedClient(Client):
    """The real Client with the round trip replaced: every request gets
    `frame` back as the reply body."""

    def __init__(self, frame=b""):
        self.endpoint, self.timeout, self.curve = "staged://", 1.0, None
        self._sock = self._watch = None
        self.frame = frame

    def _roundtrip(self, frame, op, timeout):
        return self.frame

    def close(self):
        pass


class FakeSub:
    """A SUB socket holding the given multipart messages."""

    def __init__(self, messages):
        self.messages = list(messages)

    def poll(self, timeout_ms, flags=0):
        return len(self.messages) > 0

    def recv_multipart(self):
        return self.messages.pop(0)

    def close(self, linger=None):
        pass


# ---- checks ------------------------------------------------------------------

def check_explanation(x):
    assert isinstance(x.attr, dict)
    for m, v in x.attr.items():
        assert isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 1, (m, v)
        assert x.features is None or len(x.features) == len(v), (x.features, v)
        x.top(m, 3)
        x.as_dict(m)
    repr(x)


def check_update(u):
    assert isinstance(u, Update) and isinstance(u.body, dict)
    assert u.model is None or isinstance(u.model, str)      # absent: the topic named it
    assert u.features is None or all(isinstance(t, str) for t in u.features)
    repr(u)


_SUB = []


@pytest.fixture(scope="module", autouse=True)
def _close_subscriber():
    yield
    for sub in _SUB:
        sub.close()


def subscriber_decodes(kind, topic, body, schema):
    """One Subscriber (thousands of sockets would run out of descriptors),
    its caches emptied and its schema replies staged for each message."""
    if not _SUB:
        _SUB.append(Subscriber("inproc://xplain-pyfuzz-nowhere", kinds=xplain.subscriber.KINDS))
    sub = _SUB[0]
    sub._query, sub._features, sub._last_seq = StagedClient(schema), {}, {}
    try:
        before = sub.malformed
        got = sub._decode([topic, body])
    except Exception as e:
        raise AssertionError("%s: %r: %s: %s" % (kind, body[:120], type(e).__name__, e)) from e
    if got is None:
        assert sub.malformed in (before, before + 1)
    elif isinstance(got, Explanation):
        assert kind == "xpl"
        check_explanation(got)
    else:
        assert kind != "xpl"
        check_update(got)
    return got


# ---- properties --------------------------------------------------------------

TOPICAL = [e for k in ("xpl", "glob", "drift", "heads") for e in EXAMPLES_BY[k]]


@SETTINGS
@given(st.data())
def test_subscriber(data):
    e = data.draw(st.sampled_from(TOPICAL))
    body = data.draw(mutated([e["body_bytes"]]))
    schema = data.draw(st.one_of(st.just(SCHEMA), mutated([SCHEMA])))
    topic = e["topic"].encode()
    if data.draw(st.integers(0, 9)) == 0:
        topic = data.draw(mutated_bytes(topic))
    subscriber_decodes(e["kind"], topic, body, schema)


CALLS = {
    "ping": lambda c: c.ping(),
    "models": lambda c: c.models(),
    "schema": lambda c: c.schema("m1"),
    "stats": lambda c: c.stats(),
    "trade": lambda c: c.trade("m1", "t-1"),
    "global": lambda c: c.global_state("m1"),
    "drift": lambda c: c.drift("m1"),
    "baseline": lambda c: c.baseline("m1", "pin"),
    "reference": lambda c: c.reference("m1", "rollout", [0.4, 0.3, 0.2, 0.1]),
}


@SETTINGS
@given(st.data())
def test_client(data):
    op = data.draw(st.sampled_from(sorted(CALLS)))
    bodies = REPLIES.get(op, []) + ERRORS
    frame = data.draw(st.one_of(mutated(bodies), st.sampled_from(bodies)))
    try:
        r = CALLS[op](StagedClient(frame))
    except XplainError:
        return
    except Exception as e:
        raise AssertionError("%s: %r: %s: %s" % (op, frame[:120], type(e).__name__, e)) from e
    if op == "trade":
        for v in r["attr"].values():
            assert isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 1
        for v in r["matrices"].values():
            assert isinstance(v, np.ndarray) and v.dtype == np.float32
    elif op == "models":
        assert isinstance(r, list)
    else:
        assert isinstance(r, dict)


@SETTINGS
@given(st.data())
def test_global_view(data):
    view = GlobalView.__new__(GlobalView)
    view.model, view.state, view.seq = "m1", None, -1
    view.snapshots = view.updates = view.restarts = 0
    view._own_q = False
    view._q = StagedClient(data.draw(st.one_of(mutated(REPLIES["global"]),
                                               st.sampled_from(REPLIES["global"]))))
    try:
        view.snapshot()
    except XplainError:
        pass
    globs = [e["body_bytes"] for e in EXAMPLES_BY["glob"]]
    msgs = [[b"glob/m1", data.draw(st.one_of(mutated(globs), st.sampled_from(globs)))]
            for _ in range(data.draw(st.integers(1, 3)))]
    view._sub = FakeSub(msgs)
    try:
        view.poll(0)
    except XplainError:
        pass            # a re-snapshot's reply was malformed
    except Exception as e:
        raise AssertionError("%r: %s: %s" % (msgs, type(e).__name__, e)) from e
    for m in ("rollout", "grad_rollout", "nope"):
        for t in (None, 0, 1):
            v = view.mean(m, t)
            assert v is None or isinstance(v, np.ndarray), v


@SETTINGS
@given(st.binary(max_size=64), st.sampled_from(list(codec.DTYPES) + ["f64"]),
       st.one_of(st.none(), st.tuples(st.integers(-2, 9), st.integers(-2, 9)),
                 st.integers(-1, 40)))
def test_codec_decode(buf, dtype, shape):
    try:
        a = codec.decode(buf, dtype, shape)
    except ValueError:
        return
    assert isinstance(a, np.ndarray) and a.dtype == np.float32


# ---- the inputs that broke the client, as fixed cases ---------------------------

def test_found():
    """What the properties found, each once more by name."""
    glob = next(e for e in EXAMPLES_BY["glob"] if e["example"] == "glob/m1")
    xpl = next(e for e in EXAMPLES_BY["xpl"] if e["example"] == "xpl/f32-first")
    xobj = msgpack.unpackb(xpl["body_bytes"], raw=False)
    pk = msgpack.packb
    # Nesting 500 deep in a glob/ body exhausted Python's stack (RecursionError).
    assert subscriber_decodes("glob", b"glob/m1", DEEP_GLOB, SCHEMA) is not None
    # An attribution that is a string, a map, or nested.
    for bad in ("x", {"a": 1}, [[1.0, 2.0]], [1.0, "2"]):
        body = pk({**xobj, "attr": {"rollout": bad}})
        assert subscriber_decodes("xpl", b"xpl/m1", body, SCHEMA) is None, bad
    # A model that is no string (unhashable: TypeError in the model filter).
    assert subscriber_decodes("xpl", b"xpl/m1", pk({**xobj, "model": [1]}), SCHEMA) is None
    # An epoch that is a list (unhashable schema cache key).
    assert subscriber_decodes("glob", b"glob/m1",
                              pk({**msgpack.unpackb(glob["body_bytes"], raw=False),
                                  "features": None, "epoch": [1]}), SCHEMA) is not None
    # Feature names of another length than the vectors are not attached.
    x = subscriber_decodes("xpl", b"xpl/m1", pk({**xobj, "attr": {"rollout": [1.0, 2.0]}}), SCHEMA)
    assert x is not None and x.features is None
    x.top("rollout")
    # A schema reply whose epoch is a string (TypeError comparing it).
    assert subscriber_decodes("xpl", b"xpl/m1", xpl["body_bytes"],
                              pk({**msgpack.unpackb(SCHEMA, raw=False), "epoch": "1"})) is not None
    # Replies: a list as a map key (TypeError in msgpack), no "ok", a
    # trade whose attr is a list or whose matrix is not whole floats,
    # a models reply without models.
    trade = msgpack.unpackb(REPLIES["trade"][-1], raw=False)
    for op, frame in [("ping", b"\x82\x91\x01\x02\xa2ok\xc3"), ("ping", pk({"v": 1})),
                      ("trade", pk({**trade, "attr": [1, 2]})),
                      ("trade", pk({**trade, "matrices": {"rollout": b"abc"}})),
                      ("trade", pk({**trade, "matrices": {"rollout": "abc"}})),
                      ("models", pk({"v": 1, "ok": True}))]:
        try:
            CALLS[op](StagedClient(frame))
            raise AssertionError("%s: %r decoded" % (op, frame))
        except XplainError:
            pass
    # A glob/ message newer in seq with a ts of another type, then one
    # older: GlobalView compared str with int.
    view = GlobalView.__new__(GlobalView)
    view.model, view.state, view.seq, view._own_q = "m1", None, -1, False
    view.snapshots = view.updates = view.restarts = 0
    gobj = msgpack.unpackb(glob["body_bytes"], raw=False)
    view._sub = FakeSub([[b"glob/m1", pk({**gobj, "seq": 5, "ts": "late"})],
                         [b"glob/m1", pk({**gobj, "seq": 1})]])
    assert view.poll(0) == 1
    # A state whose mean is a map: mean() gave the map.
    view._sub = FakeSub([[b"glob/m1", pk({**gobj, "seq": 9, "methods": {"rollout": {"mean": {}}}})]])
    assert view.poll(0) == 1 and view.mean("rollout") is None
    # codec: str data, a buffer of half an element, a shape it cannot fill.
    for args in (("abcd", "f32"), (b"abc", "f32"), (b"abcd", "f16", (3, 3))):
        try:
            codec.decode(*args)
            raise AssertionError("codec.decode%r decoded" % (args,))
        except ValueError:
            pass
