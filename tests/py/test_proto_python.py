"""client/python/xplain against proto/examples/, as tests/unit/test_client_examples.c
does for libxplain: no daemon runs.

- A fake XPUB publishes every xpl/, glob/, drift/, heads/ example to a
  Subscriber; each Explanation / Update must hold what the example's .json
  says (feature names come from the schema query, answered by a fake
  ROUTER with reply/schema for m1 and reply/error-unknown_model else).
- The fake ROUTER answers each Client call with the reply example of the
  request being replayed; the result (or QueryError) must match the
  reply's .json, and the request the client sent must be the request
  example's .msgpack.
- GlobalView takes reply/global as its snapshot, then applies
  glob/m1-reference (a higher seq) and drops glob/m1 (not higher).
- Publisher, given the ingest examples' data, sends the ingest examples.

Run by Debian's /usr/bin/python3 (python3-zmq, -msgpack, -numpy).
"""
import base64
import math
import os
import shutil
import sys
import tempfile
import threading

import msgpack
import numpy as np
import pytest
import zmq

from protocheck import EXAMPLES, SOURCE, Checks, load

sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
import xplain  # noqa: E402
from xplain import Client, GlobalView, Publisher, QueryError, Subscriber  # noqa: E402

check = Checks()
all_checks_pass = check.fixture()


def same(got, want, path="body"):
    """Differences between a decoded value and a JSON rendering: dicts in
    the same key order, numpy arrays or lists against arrays, floats
    exactly (the renderings are exact), null against None or NaN, bin
    against bytes."""
    out = []
    if isinstance(want, dict) and "$bin" in want:
        b = base64.b64decode(want["$bin"])
        if isinstance(got, np.ndarray):        # a matrix the client turned into floats
            vals = np.asarray(want.get("$f32", []), dtype=np.float32)
            if got.dtype != np.float32 or got.size != vals.size or not np.array_equal(got.reshape(-1), vals):
                out.append("%s: matrix differs" % path)
        elif got != b:
            out.append("%s: bytes differ" % path)
        return out
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return ["%s: %r is not a map" % (path, type(got))]
        if list(got) != list(want):
            return ["%s: keys %s, example %s" % (path, list(got), list(want))]
        for k in want:
            out += same(got[k], want[k], path + "." + k)
        return out
    if isinstance(want, list):
        if isinstance(got, np.ndarray):
            got = got.tolist() if got.dtype != np.float32 else [np.float32(x) for x in got.reshape(-1)]
        if not isinstance(got, list) or len(got) != len(want):
            return ["%s: %r, example %d items" % (path, got, len(want))]
        for k, (g, w) in enumerate(zip(got, want)):
            out += same(g, w, "%s[%d]" % (path, k))
        return out
    if want is None:
        if not (got is None or (isinstance(got, float) and math.isnan(got))):
            out.append("%s: %r, example null" % (path, got))
        return out
    if isinstance(want, str) and want in ("NaN", "Infinity", "-Infinity") and isinstance(got, float):
        if not (math.isnan(got) if want == "NaN" else got == float(want.replace("inity", ""))):
            out.append("%s: %r, example %s" % (path, got, want))
        return out
    if isinstance(want, bool) or isinstance(got, bool):
        if got is not want:
            out.append("%s: %r, example %r" % (path, got, want))
        return out
    if isinstance(got, np.float32):
        if got != np.float32(want):
            out.append("%s: %r, example %r" % (path, got, want))
        return out
    if got != want or type(got) is bool:
        out.append("%s: %r, example %r" % (path, got, want))
    elif isinstance(want, int) and not isinstance(got, int):
        out.append("%s: %r is not an integer" % (path, got))
    return out


class FakeRouter:
    """A ROUTER that answers with the staged reply, remembering the request;
    schema queries get reply/schema (m1) or reply/error-unknown_model when
    auto_schema is on."""

    def __init__(self, ctx, ep, examples):
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ep)
        self.ep = ep
        self.ex = examples
        self.reply = None
        self.requests = []
        self.auto_schema = False
        self.stop = False
        self.lock = threading.Lock()
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self):
        while not self.stop:
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart()
            body = frames[-1]
            try:
                req = msgpack.unpackb(body)
            except Exception:
                req = None
            with self.lock:
                if self.auto_schema and isinstance(req, dict) and req.get("op") == "schema":
                    name = "reply/schema" if req.get("model") == "m1" else "reply/error-unknown_model"
                    reply = self.ex[name]["body_bytes"]
                else:
                    reply = self.reply
                    self.requests.append(body)
            self.sock.send_multipart(frames[:-1] + [reply])

    def stage(self, reply):
        with self.lock:
            self.reply = reply["body_bytes"]
            self.requests = []

    def taken(self):
        with self.lock:
            r, self.requests = self.requests, []
        return r

    def close(self):
        self.stop = True
        self.th.join()
        self.sock.close(0)


@pytest.fixture(scope="module")
def ex():
    ex = {m["example"]: m for m in load()}
    assert ex, "no examples in " + EXAMPLES
    return ex


@pytest.fixture
def d():
    """A directory for this test's ipc:// endpoints."""
    d = tempfile.mkdtemp(prefix="xplpy-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(0)


@pytest.fixture
def router(ctx, d, ex):
    router = FakeRouter(ctx, "ipc://%s/q" % d, ex)
    yield router
    router.close()


def wait_subscriptions(xpub, count):
    subs = []
    for _ in range(count):
        assert xpub.poll(5000), "the subscriber did not subscribe"
        subs.append(xpub.recv())
    return subs


def test_published(ctx, d, ex, router):
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    ep = "ipc://%s/pub" % d
    xpub.bind(ep)
    router.auto_schema = True
    sub = Subscriber(ep, kinds=("xpl", "glob", "drift", "heads"), query=router.ep, context=ctx)
    wait_subscriptions(xpub, 4)
    schema_features = ex["reply/schema"]["body"]["features"]
    n = 0
    for m in sorted((m for m in ex.values() if m["kind"] in ("xpl", "glob", "drift", "heads")),
                    key=lambda m: m["example"]):
        name, b = m["example"], m["body"]
        xpub.send_multipart(m["frames_bytes"])
        got = sub.recv(timeout=5.0)
        check(got is not None, "%s: nothing received" % name)
        if got is None:
            continue
        n += 1
        if m["kind"] == "xpl":
            check(isinstance(got, xplain.Explanation), "%s: not an Explanation" % name)
            for k in ("model", "id", "seq", "ts", "epoch"):
                check(getattr(got, k) == b[k] and type(getattr(got, k)) is type(b[k]),
                      "%s: %s is %r, example %r" % (name, k, getattr(got, k), b[k]))
            check(got.target == b.get("target") and got.y == b.get("y"),
                  "%s: target/y %r %r" % (name, got.target, got.y))
            diffs = same(got.attr, b["attr"], "attr")
            check(all(v.dtype == np.float32 for v in got.attr.values()), "%s: attr not float32" % name)
            check(not diffs, "%s: %s" % (name, diffs[:5]))
            want_f = schema_features if b["model"] == "m1" else None
            check(got.features == want_f, "%s: features %r, expected %r" % (name, got.features, want_f))
        else:
            check(isinstance(got, xplain.Update) and got.kind == m["kind"], "%s: not an Update" % name)
            check(got.model == b["model"] and got.seq == b["seq"] and got.epoch == b["epoch"],
                  "%s: model/seq/epoch" % name)
            diffs = same(got.body, b)
            check(not diffs, "%s: %s" % (name, diffs[:5]))
            for key in ("mean", "std", "decayed", "importance", "confidence"):
                for v in _find(got.body, key):
                    check(isinstance(v, np.ndarray) and v.dtype == np.float64,
                          "%s: %s is not a float64 array" % (name, key))
            if m["kind"] == "glob":
                check(got.features == b["features"], "%s: features" % name)
    check(n >= 10, "only %d published examples" % n)
    check(sub.gaps >= 0, "gaps")
    sub.close()
    router.auto_schema = False
    xpub.close(0)


def _find(obj, key):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            else:
                yield from _find(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _find(v, key)


def call(client, req):
    """The Client method for a request body, with its arguments."""
    op = req.get("op") if isinstance(req, dict) else None
    a = {k: v for k, v in req.items() if k not in ("v", "op")} if isinstance(req, dict) else {}
    if op == "ping":
        return client.ping(), None
    if op == "models":
        return client.models(), "models"
    if op == "schema":
        return client.schema(a["model"]), None
    if op == "stats":
        return client.stats(), None
    if op == "trade":
        return client.trade(a["model"], a["id"], flow=a.get("flow")), None
    if op == "global":
        return client.global_state(a["model"], method=a.get("method"), target=a.get("target"),
                                   epoch=a.get("epoch")), None
    if op == "drift":
        return client.drift(a["model"], method=a.get("method"), epoch=a.get("epoch")), None
    if op == "baseline":
        extra = {k: v for k, v in a.items() if k not in ("model", "action")}
        return client.baseline(a["model"], a["action"], **extra), None
    if op == "reference":
        return client.reference(a["model"], a["method"], a["values"]), None
    raise KeyError(op)


def test_queries(ctx, ex, router):
    client = Client(router.ep, timeout=5.0, context=ctx)
    replies = sorted((m for m in ex.values() if m["kind"] == "reply"), key=lambda m: m["example"])
    check(len(replies) > 10, "reply examples")
    for rep in replies:
        name, b = rep["example"], rep["body"]
        req = ex[rep["request"]]
        router.stage(rep)
        try:
            body = msgpack.unpackb(req["body_bytes"])
        except Exception:
            body = None
        try:
            if not isinstance(body, dict) or body.get("op") not in (
                    "ping", "models", "schema", "stats", "trade", "global", "drift", "baseline",
                    "reference"):
                got, sub = client.raw(req["body_bytes"], op=str(rep.get("op"))), None
            else:
                got, sub = call(client, body)
            err = None
        except QueryError as e:
            got, err = None, e
        if b["ok"]:
            check(err is None, "%s: %s" % (name, err))
            if err is None:
                want = b[sub] if sub else b
                diffs = same(got, want)
                check(not diffs, "%s: %s" % (name, diffs[:5]))
                if body and body.get("op") == "trade":
                    check(all(v.dtype == np.float32 for v in got["attr"].values())
                          and all(v.shape == (got["n"], got["n"]) for v in got["matrices"].values()),
                          "%s: attr/matrices as float32 numpy" % name)
        else:
            check(err is not None and err.code == b["code"] and err.error == b["error"],
                  "%s: %r, expected %s: %s" % (name, err, b["code"], b["error"]))
        sent = router.taken()
        check(len(sent) == 1, "%s: %d requests reached the fake daemon" % (name, len(sent)))
        if sent:
            if body is None:
                check(sent[0] == req["body_bytes"], "%s: another request was sent" % name)
            else:
                check(msgpack.unpackb(sent[0]) == body,
                      "%s: sent %r, example %r" % (name, msgpack.unpackb(sent[0]), body))
    client.close()


def test_clone(ctx, d, ex, router):
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    ep = "ipc://%s/clone" % d
    xpub.bind(ep)
    router.stage(ex["reply/global"])
    view = GlobalView(ep, router.ep, "m1", context=ctx)
    wait_subscriptions(xpub, 1)
    check(view.seq == 0 and view.state["count"] == ex["reply/global"]["body"]["count"],
          "GlobalView snapshot from reply/global: seq %r" % view.seq)
    xpub.send_multipart(ex["glob/m1-reference"]["frames_bytes"])
    check(view.poll(2.0) == 1 and view.seq == 1, "GlobalView did not apply glob/m1-reference")
    ref = ex["glob/m1-reference"]["body"]["methods"]["rollout"]["reference"]
    check(list(view.state["methods"]["rollout"]["reference"]) == ref, "GlobalView reference")
    xpub.send_multipart(ex["glob/m1"]["frames_bytes"])
    check(view.poll(0.5) == 0 and view.seq == 1, "GlobalView applied an older seq")
    check(list(view.mean("rollout", target=1)) ==
          ex["glob/m1"]["body"]["targets"][0]["methods"]["rollout"]["mean"], "GlobalView.mean")
    view.close()
    xpub.close(0)


def test_publisher(ctx, d, ex):
    ep = "ipc://%s/in" % d
    first = ex["ingest/f32-first"]["body"]
    pub = Publisher("m1", bind=ep, tokens=first["tokens"], cls=first["cls"], context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"attn/")
    sub.connect(ep)
    check(pub.wait_subscriber(5.0), "the SUB did not subscribe")
    for name in ("ingest/f32-first", "ingest/f16-batch3", "ingest/bf16-nograd", "ingest/f32-followup"):
        m = ex[name]
        b = m["body"]
        want = msgpack.unpackb(m["body_bytes"])
        shape = b["attn"]["$shape"]
        dt = b["dtype"]
        attn = np.asarray(b["attn"]["$" + dt], dtype=np.float32).reshape(shape)
        grad = np.asarray(b["grad"]["$" + dt], dtype=np.float32).reshape(shape) if "grad" in b else None
        pub.dtype = dt
        check(pub.seq == b["seq"], "%s: publisher seq %d" % (name, pub.seq))
        extra = {k: v for k, v in want.items() if k == "trace"}
        pub.send(attn, grad=grad, ids=b["ids"], target=b.get("target"), y=b.get("y"), ts=b["ts"],
                 extra=extra or None)
        check(sub.poll(5000), "%s: nothing sent" % name)
        topic, body = sub.recv_multipart()
        got = msgpack.unpackb(body)
        check(topic == m["frames_bytes"][0], "%s: topic %r" % (name, topic))
        # cls and tokens go with the first message; later ones may omit them.
        for k in ("cls", "tokens"):
            if name != "ingest/f32-first" and (k in got) != (k in want):
                got.pop(k, None)
                want.pop(k, None)
        check(got == want, "%s: sent %s" % (name, sorted(k for k in set(got) | set(want)
                                                        if got.get(k) != want.get(k))))
    pub.close(0)
    sub.close(0)


def test_codec(ex):
    """xplain.codec reads the tensors of every ingest example as rendered."""
    for m in ex.values():
        if m["kind"] != "ingest":
            continue
        b, raw = m["body"], msgpack.unpackb(m["body_bytes"])
        for key in ("attn", "grad"):
            if key in b:
                vals = xplain.decode(raw[key], b["dtype"], b[key]["$shape"])
                want = np.asarray(b[key]["$" + b["dtype"]], dtype=np.float32).reshape(b[key]["$shape"])
                check(np.array_equal(vals, want), "%s: codec.decode(%s)" % (m["example"], key))
                check(xplain.encode(vals, b["dtype"]) == raw[key], "%s: codec.encode(%s)" % (m["example"], key))
