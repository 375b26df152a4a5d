"""A real xplaind fed the input examples (SCENARIO), its replies and
what it publishes captured as the output examples."""
import os
import shutil
import subprocess
import tempfile
import time

import msgpack

from .example import Example, pack
from .outputs import (DRIFT, GROUPS_PUBLISHED, PUBLISHED, SHARD_PUBLISHED, TARGETS_PUBLISHED, VARIANTS_PUBLISHED,
                      normalise)
from .queries import REQUESTS

EXAMPLES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# How the daemon runs when outputs are captured (and in tests that replay).
DAEMON_ARGS = ["--methods", "rollout,grad_rollout,first_layer,attn_mean,diag,flow",
               "--flow-every", "2", "--drift-window", "4", "--half-life", "4",
               "--glob-interval-ms", "3600000", "--log-level", "notice"]

# What the replay does, in order: ingest an example (waiting for its xpl/
# messages), or send a request and keep its reply.
SCENARIO = ([("ingest", "ingest/" + n) for n in ("f32-first", "f16-batch3", "bf16-nograd",
                                                  "f32-followup")]
            + [("query", "request/" + n) for n in ("ping", "models", "schema", "trade",
                                                    "trade-uint-flow", "global", "reference",
                                                    "global-method-target")]
            + [("ingest", "ingest/" + n) for n in ("drift-a", "drift-b", "drift-flat",
                                                    "fused-f32", "fused-f16-nograd")]
            + [("query", "request/" + r[0]) for r in REQUESTS[8:]
               if r[0] not in ("models-no-schema", "schema-groups")])
# A second daemon: a model's first message is rejected as no_schema, which
# must leave no trace of the model. The rejected message is followed by a
# valid one on the same connection, whose xpl/ says both were handled.
SCENARIO_NO_SCHEMA = [("send", "reject/no_schema"), ("ingest", "ingest/drift-a"),
                      ("query", "request/models-no-schema")]
SCENARIOS = (SCENARIO, SCENARIO_NO_SCHEMA)
# A third daemon serves the variants, so that the first one's outputs stay
# what they were before the variants existed.
VARIANTS_ARGS = ["--methods", "rollout,grad_rollout,first_layer,attn_mean,diag,colsum,"
                 "grad_rollout_signed,lrp_rollout", "--discard", "0.5", "--start-layer", "-1",
                 "--log-level", "notice"]
SCENARIO_VARIANTS = [("ingest", "ingest/m4-rel")]
# A fourth daemon for several targets per trade, with the default
# methods but diag and flow.
TARGETS_ARGS = ["--methods", "rollout,grad_rollout,first_layer,attn_mean", "--log-level", "notice"]
SCENARIO_TARGETS = [("ingest", "ingest/m5-targets"), ("ingest", "ingest/m5-targets-fused")]


# A shard (of one): its state/ for an aggregator, in the event-time modes.
SHARD_ARGS = ["--shard", "0/1", "--methods", "rollout,attn_mean", "--drift-window-s", "1",
              "--decay-half-life-s", "60", "--glob-interval-ms", "100", "--log-level", "notice"]
SCENARIO_SHARD = [("ingest", "ingest/drift-a")]
# A fifth daemon for feature groups (the variants' methods).
SCENARIO_GROUPS = [("ingest", "ingest/m6-groups"), ("query", "request/schema-groups")]


def find_xplaind():
    cands = [os.environ.get("XPLAIND", "")]
    if os.environ.get("XPL_BUILD_DIR"):
        cands.append(os.path.join(os.environ["XPL_BUILD_DIR"], "daemon", "xplaind"))
    root = os.path.dirname(os.path.dirname(EXAMPLES))
    cands += [os.path.join(root, d, "daemon", "xplaind") for d in ("build-proto", "build")]
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    raise SystemExit("no xplaind found: give --xplaind PATH or set XPL_BUILD_DIR")


class Replay:
    """A real xplaind on ipc:// endpoints in a temporary directory, fed by an
    XPUB (so that we know when its SUB has subscribed), read by a SUB that
    keeps every message, asked by a REQ."""

    def __init__(self, xplaind, args=(), watch=True):
        """watch: also read what the daemon publishes (with time for the
        subscription to reach its PUB before anything is sent)."""
        import zmq
        self.zmq = zmq
        self.dir = tempfile.mkdtemp(prefix="xplproto-")
        ep = {k: "ipc://%s/%s" % (self.dir, k) for k in ("in", "pub", "q")}
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([xplaind, "--ingest-bind", ep["in"], "--publish", ep["pub"],
                                      "--query", ep["q"]] + list(args),
                                     stdout=self.log, stderr=self.log)
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        mon = None
        if watch:
            self.sub.setsockopt(zmq.SUBSCRIBE, b"")
            mon = self.sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            self.sub.connect(ep["pub"])
        self.req = None
        self.q_ep = ep["q"]
        self._new_req()
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 1000)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        self.pub.connect(ep["in"])
        self.received = []          # (topic, body) in arrival order
        try:
            # The daemon's ingest SUB has subscribed once the XPUB sees it.
            if not self.pub.poll(10000):
                raise RuntimeError("xplaind's ingest socket did not subscribe:\n" + self.stderr())
            self.pub.recv()
            if mon is not None:
                # Our SUB's handshake with the daemon's PUB; its
                # subscription travels right behind it.
                if not mon.poll(10000):
                    raise RuntimeError("no handshake with xplaind's PUB:\n" + self.stderr())
                time.sleep(0.5)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            if mon is not None:
                self.sub.disable_monitor()
                mon.close(0)
        self.query_bytes(pack({"v": 1, "op": "ping"}))      # it answers

    def _new_req(self):
        if self.req is not None:
            self.req.close(0)
        self.req = self.ctx.socket(self.zmq.REQ)
        self.req.setsockopt(self.zmq.LINGER, 0)
        self.req.connect(self.q_ep)

    def stderr(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def collect(self, timeout=0.0):
        while self.sub.poll(int(timeout * 1000)):
            self.received.append(tuple(self.sub.recv_multipart()))
            timeout = 0.0

    def send(self, frames):
        self.pub.send_multipart(frames)

    def wait_for(self, topic, count, timeout=10.0):
        """Collect until `count` more messages on `topic` arrived."""
        have = sum(1 for t, _ in self.received if t == topic)
        deadline = time.monotonic() + timeout
        while sum(1 for t, _ in self.received if t == topic) < have + count:
            if time.monotonic() > deadline:
                raise RuntimeError("waiting for %d message(s) on %s:\n%s"
                                   % (count, topic, self.stderr()))
            self.collect(0.05)

    def query_bytes(self, frame, timeout=10.0):
        self.req.send(frame)
        if not self.req.poll(int(timeout * 1000)):
            raise RuntimeError("no reply from xplaind:\n" + self.stderr())
        return self.req.recv()

    def stats(self):
        return msgpack.unpackb(self.query_bytes(pack({"v": 1, "op": "stats"})))

    def stop(self):
        self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.ctx.destroy(0)
        self.log.close()
        log = open(self.log_path).read()
        shutil.rmtree(self.dir, ignore_errors=True)
        if rc != 0:
            raise RuntimeError("xplaind exited with %d:\n%s" % (rc, log))
        return log


def run_scenario(xplaind, frames, scenario=SCENARIO, args=DAEMON_ARGS):
    """Replay a scenario into a fresh daemon; `frames` maps an input
    example's name to its frames. Returns (replies {request name: body},
    published [(topic, body)] in arrival order)."""
    r = Replay(xplaind, args)
    replies = {}
    try:
        for what, name in scenario:
            fr = frames[name]
            if what == "send":
                r.send(fr)
            elif what == "ingest":
                body = msgpack.unpackb(fr[1])
                r.send(fr)
                # One xpl/ message per trade and target.
                r.wait_for(("xpl/" + body["model"]).encode(),
                           len(body["ids"]) * len(body.get("targets") or [None]))
            else:
                replies[name] = r.query_bytes(fr[0])
                r.collect(0.0)
        r.collect(0.5)
    finally:
        r.stop()
    return replies, r.received


def select_outputs(replies, published):
    """Pick the output examples out of a replay: {name: (kind, topic or
    None, body bytes as captured, description)}."""
    out = {}
    for name, op, _req, desc in REQUESTS:
        if "request/" + name not in replies:
            continue        # answered by another daemon
        out["reply/" + name] = ("reply", None, replies["request/" + name],
                                desc.rstrip(".") + ": the reply.")
    bodies = [(t.decode(), b, msgpack.unpackb(b)) for t, b in published]
    for name, (topic, seq, desc) in PUBLISHED.items():
        hit = [b for t, b, m in bodies if t == topic and m.get("seq") == seq]
        if len(hit) != 1:
            raise RuntimeError("%s: %d messages on %s with seq %d" % (name, len(hit), topic, seq))
        out[name] = (name.split("/")[0], topic, hit[0], desc)
    for name, (model, method, window, desc) in DRIFT.items():
        hit = [b for t, b, m in bodies if t == "drift/" + model and m.get("method") == method
               and m.get("window") == window]
        if len(hit) != 1:
            raise RuntimeError("%s: %d drift messages" % (name, len(hit)))
        out[name] = ("drift", "drift/" + model, hit[0], desc)
    return out


# The daemons of their own: (scenario, flags, examples they publish).
OWN_DAEMONS = [(SCENARIO_VARIANTS, VARIANTS_ARGS, VARIANTS_PUBLISHED),
               (SCENARIO_GROUPS, VARIANTS_ARGS, GROUPS_PUBLISHED),
               (SCENARIO_TARGETS, TARGETS_ARGS, TARGETS_PUBLISHED)]


def args_of(name):
    """The daemon flags an output example was captured with."""
    for scenario, args, published in OWN_DAEMONS:
        if name in published or ("query", "request/" + name.split("/", 1)[-1]) in scenario \
                and name.startswith("reply/"):
            return args
    if name in SHARD_PUBLISHED:
        return SHARD_ARGS
    return DAEMON_ARGS


def variants_outputs(xplaind, frames):
    """The output examples of the daemons of their own (the variants, the
    targets, the groups): {name: (kind, topic, body bytes as captured,
    description)}, their replies included."""
    out = {}
    for scenario, args, wanted in OWN_DAEMONS:
        replies, published = run_scenario(xplaind, frames, scenario, args)
        for name, op, _req, desc in REQUESTS:
            if "request/" + name in replies:
                out["reply/" + name] = ("reply", None, replies["request/" + name],
                                        desc.rstrip(".") + ": the reply.")
        for name, (topic, seq, desc) in wanted.items():
            hit = [b for t, b in published
                   if t.decode() == topic and msgpack.unpackb(b).get("seq") == seq]
            if len(hit) != 1:
                raise RuntimeError("%s: %d messages on %s with seq %d" % (name, len(hit), topic, seq))
            out[name] = (name.split("/")[0], topic, hit[0], desc)
    return out


def shard_outputs(xplaind, frames, timeout=10.0):
    """The state/ examples of the shard daemon: {name: (kind, topic, body
    bytes as captured, description)}. The state goes out every interval;
    the first one with the trades of the scenario is kept."""
    r = Replay(xplaind, SHARD_ARGS)
    out = {}
    try:
        for what, name in SCENARIO_SHARD:
            fr = frames[name]
            r.send(fr)
            r.wait_for(("xpl/" + msgpack.unpackb(fr[1])["model"]).encode(),
                       len(msgpack.unpackb(fr[1])["ids"]))
        deadline = time.monotonic() + timeout
        while len(out) < len(SHARD_PUBLISHED):
            if time.monotonic() > deadline:
                raise RuntimeError("no state/ with the trades of the scenario:\n" + r.stderr())
            r.collect(0.05)
            for name, (topic, count, desc) in SHARD_PUBLISHED.items():
                hit = [b for t, b in r.received if t.decode() == topic and
                       msgpack.unpackb(b).get("count") == count]
                if hit and name not in out:
                    out[name] = ("state", topic, hit[0], desc)
    finally:
        r.stop()
    return out


def capture(xplaind, inputs):
    """The output examples, from a fresh replay of `inputs` (Examples)."""
    frames = {n: e.frames for n, e in inputs.items()}
    replies, published = run_scenario(xplaind, frames)
    replies.update(run_scenario(xplaind, frames, SCENARIO_NO_SCHEMA)[0])
    out = {}
    selected = select_outputs(replies, published)
    variants = variants_outputs(xplaind, frames)
    selected.update(variants)
    shard = shard_outputs(xplaind, frames)
    selected.update(shard)
    for name, (kind, topic, raw, desc) in selected.items():
        body, done = normalise(name, kind, raw)
        meta = {}
        if kind == "reply":
            base = name.split("/", 1)[1]
            meta["op"] = next(r[1] for r in REQUESTS if r[0] == base)
            meta["request"] = "request/" + base
        meta["source"] = "captured from xplaind " + " ".join(args_of(name))
        if done:
            meta["normalised"] = done
        frames = [body] if topic is None else [topic.encode(), body]
        out[name] = Example(name, kind, frames, desc, **meta)
    return out
