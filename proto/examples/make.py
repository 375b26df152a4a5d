#!/usr/bin/python3
"""Generate proto/examples/: example messages of wire contract v1.

    /usr/bin/python3 proto/examples/make.py [--xplaind PATH]   write every example
    /usr/bin/python3 proto/examples/make.py --inputs-only        ingest, reject, request only
    /usr/bin/python3 proto/examples/make.py --check              inputs on disk == generated

Inputs (ingest/, reject/, request/) are built here from fixed numbers: no
randomness, and every tensor value is a ratio of small integers rounded
once to float32 (or then to f16/bf16), so the bytes are the same on every
machine. Outputs (xpl/, glob/, drift/, heads/, reply/) are what a real
xplaind publishes and replies when the inputs are replayed into it
(SCENARIO below, daemon flags in DAEMON_ARGS); the fields that depend on
the clock are then overwritten in place, keeping their msgpack type and
width, with the fixed values of NORMALISED (each example's .json lists
them). See README.md beside this file for the layout and the JSON
rendering.

Needs msgpack and numpy; capturing outputs also needs pyzmq and a built
xplaind. No project code is imported: this file speaks the contract with
plain pyzmq + msgpack, as any client may.
"""
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import msgpack
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = 1764000000000000000            # ingest event times: T0 + k ms
NORM_TS = 1764000099000000000       # stands for "when the daemon sent it"
NORM_UPTIME = 12.5                  # stands for the daemon's uptime
NORM_LATENCY = 125.0                # stands for a latency in microseconds

# How the daemon runs when outputs are captured (and in tests that replay).
DAEMON_ARGS = ["--methods", "rollout,grad_rollout,first_layer,attn_mean,diag,flow",
               "--flow-every", "2", "--drift-window", "4", "--half-life", "4",
               "--glob-interval-ms", "3600000", "--log-level", "notice"]

KINDS = ("ingest", "reject", "xpl", "glob", "drift", "heads", "request", "reply")


# ---- msgpack with types and offsets -----------------------------------------

class Node:
    """One msgpack object: t in nil, bool, int, float32, float64, str, bin,
    array, map, ext; v the value (scalars; bytes for str and bin); for
    array `items`, for map `pairs` [(key node, value node)]; off/hdr/end
    byte offsets (value bytes are buf[off + hdr:end] for scalars)."""
    __slots__ = ("t", "v", "off", "hdr", "end", "items", "pairs", "ext")

    def __init__(self, t, v, off, hdr, end):
        self.t, self.v, self.off, self.hdr, self.end = t, v, off, hdr, end
        self.items = self.pairs = None
        self.ext = None

    def get(self, key):
        for k, v in self.pairs or ():
            if k.t == "str" and k.v == key.encode():
                return v
        return None


class MsgpackError(ValueError):
    pass


def walk(buf, depth=64):
    """Parse one msgpack object filling all of `buf` into a Node tree."""
    node, pos = _walk(buf, 0, depth)
    if pos != len(buf):
        raise MsgpackError("%d bytes after the object" % (len(buf) - pos))
    return node


def _need(buf, pos, n):
    if pos + n > len(buf):
        raise MsgpackError("truncated at byte %d" % pos)


def _walk(buf, pos, depth):
    if depth < 0:
        raise MsgpackError("nested too deeply")
    _need(buf, pos, 1)
    b = buf[pos]
    U = struct.unpack_from

    def scalar(t, v, hdr, size):
        return Node(t, v, pos, hdr, pos + hdr + size), pos + hdr + size

    def raw(t, hdr, n):
        _need(buf, pos + hdr, n)
        return Node(t, bytes(buf[pos + hdr:pos + hdr + n]), pos, hdr, pos + hdr + n), pos + hdr + n

    def seq(t, hdr, n):
        node = Node(t, n, pos, hdr, 0)
        p = pos + hdr
        if t == "array":
            node.items = []
            for _ in range(n):
                it, p = _walk(buf, p, depth - 1)
                node.items.append(it)
        else:
            node.pairs = []
            for _ in range(n):
                k, p = _walk(buf, p, depth - 1)
                v, p = _walk(buf, p, depth - 1)
                node.pairs.append((k, v))
        node.end = p
        return node, p

    if b <= 0x7F:
        return scalar("int", b, 1, 0)
    if b >= 0xE0:
        return scalar("int", b - 0x100, 1, 0)
    if 0x80 <= b <= 0x8F:
        return seq("map", 1, b & 0x0F)
    if 0x90 <= b <= 0x9F:
        return seq("array", 1, b & 0x0F)
    if 0xA0 <= b <= 0xBF:
        return raw("str", 1, b & 0x1F)
    if b == 0xC0:
        return scalar("nil", None, 1, 0)
    if b in (0xC2, 0xC3):
        return scalar("bool", b == 0xC3, 1, 0)
    fixed = {0xCC: ("int", ">B", 1), 0xCD: ("int", ">H", 2), 0xCE: ("int", ">I", 4),
             0xCF: ("int", ">Q", 8), 0xD0: ("int", ">b", 1), 0xD1: ("int", ">h", 2),
             0xD2: ("int", ">i", 4), 0xD3: ("int", ">q", 8), 0xCA: ("float32", ">f", 4),
             0xCB: ("float64", ">d", 8)}
    if b in fixed:
        t, fmt, size = fixed[b]
        _need(buf, pos + 1, size)
        return scalar(t, U(fmt, buf, pos + 1)[0], 1, size)
    lens = {0xD9: ("str", ">B", 1), 0xDA: ("str", ">H", 2), 0xDB: ("str", ">I", 4),
            0xC4: ("bin", ">B", 1), 0xC5: ("bin", ">H", 2), 0xC6: ("bin", ">I", 4),
            0xDC: ("array", ">H", 2), 0xDD: ("array", ">I", 4),
            0xDE: ("map", ">H", 2), 0xDF: ("map", ">I", 4)}
    if b in lens:
        t, fmt, size = lens[b]
        _need(buf, pos + 1, size)
        n = U(fmt, buf, pos + 1)[0]
        if t in ("str", "bin"):
            return raw(t, 1 + size, n)
        # Like the daemon's reader: a count cannot exceed the bytes left.
        if n * (2 if t == "map" else 1) > len(buf) - pos - 1 - size:
            raise MsgpackError("%s of %d entries in %d bytes" % (t, n, len(buf) - pos))
        return seq(t, 1 + size, n)
    exts = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
    if b in exts:
        _need(buf, pos + 2, exts[b])
        node, p = raw("ext", 2, exts[b])
        node.ext = struct.unpack_from(">b", buf, pos + 1)[0]
        return node, p
    if b in (0xC7, 0xC8, 0xC9):
        size = {0xC7: 1, 0xC8: 2, 0xC9: 4}[b]
        _need(buf, pos + 1 + size + 1, 0)
        n = U({1: ">B", 2: ">H", 4: ">I"}[size], buf, pos + 1)[0]
        node, p = raw("ext", 2 + size, n)
        node.ext = struct.unpack_from(">b", buf, pos + 1 + size)[0]
        return node, p
    raise MsgpackError("invalid byte 0x%02x at %d" % (b, pos))


def node_at(root, path):
    """Nodes matching `path` (keys; "*" matches every map value or array item)."""
    out = [root]
    for seg in path:
        nxt = []
        for n in out:
            if n.t == "map":
                nxt += [v for k, v in n.pairs if seg == "*" or (k.t == "str" and k.v == seg.encode())]
            elif n.t == "array" and seg == "*":
                nxt += n.items
        out = nxt
    return out


def patch(buf, root, path, value):
    """Overwrite in place every scalar at `path` with `value`, keeping its
    msgpack type and width. Returns how many were changed."""
    count = 0
    for n in node_at(root, path):
        if n.t == "nil":
            continue
        start = n.off + n.hdr
        if n.t == "float64":
            buf[start:n.end] = struct.pack(">d", float(value))
        elif n.t == "float32":
            buf[start:n.end] = struct.pack(">f", float(value))
        elif n.t == "int" and n.end == start and -32 <= int(value) < 128:
            buf[n.off] = int(value) & 0xFF          # a fixint stays a fixint
        elif n.t == "int" and n.end - start in (1, 2, 4, 8):
            fmt = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
                   0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}[buf[n.off]]
            buf[start:n.end] = struct.pack(fmt, int(value))
        else:
            raise ValueError("cannot normalise a %s of %d bytes at %s" % (n.t, n.end - n.off, path))
        count += 1
    return count


# ---- JSON rendering ---------------------------------------------------------

class F32(float):
    """A float32 value: rendered with the fewest digits that give it back."""


def f32_text(x):
    x = np.float32(x)
    if not np.isfinite(x):
        return None
    for digits in range(1, 10):
        s = "%.*g" % (digits, float(x))
        if np.float32(float(s)) == x:
            return s
    return repr(float(x))


def f64_text(x):
    return repr(float(x))


def _nonfinite(x):
    return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")


def decode_tensor(data, dtype):
    if dtype == "f32":
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if dtype == "f16":
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
    if dtype == "bf16":
        return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)
    return None


def render(node, key=None, ctx=None):
    """Node -> JSON-able value (README.md, "JSON rendering")."""
    ctx = ctx or {}
    t = node.t
    if t in ("nil", "bool", "int"):
        return node.v
    if t == "float64":
        return node.v
    if t == "float32":
        return F32(node.v)
    if t == "str":
        try:
            s = node.v.decode("utf-8")
        except UnicodeDecodeError:
            return {"$strbytes": base64.b64encode(node.v).decode()}
        return s
    if t == "bin":
        out = {"$bin": base64.b64encode(node.v).decode()}
        dtype = ctx.get("dtype")
        if key in ("attn", "grad") and dtype in ("f32", "f16", "bf16") and \
                len(node.v) % (4 if dtype == "f32" else 2) == 0:
            out["$" + dtype] = [F32(x) for x in decode_tensor(node.v, dtype)]
            shape = ctx.get("shape")
            if shape and int(np.prod(shape)) == len(out["$" + dtype]):
                out["$shape"] = shape
        elif ctx.get("matrix_n") and len(node.v) == 4 * ctx["matrix_n"] ** 2:
            out["$f32"] = [F32(x) for x in decode_tensor(node.v, "f32")]
            out["$shape"] = [ctx["matrix_n"], ctx["matrix_n"]]
        return out
    if t == "ext":
        return {"$ext": node.ext, "$bin": base64.b64encode(node.v).decode()}
    if t == "array":
        return [render(it, None, ctx) for it in node.items]
    # map
    keys = [k.v if k.t == "str" else None for k, _ in node.pairs]
    sub = dict(ctx)
    dt = node.get("dtype")
    if dt is not None and dt.t == "str":
        sub["dtype"] = dt.v.decode("utf-8", "replace")
    dims = [node.get(k) for k in ("ids", "L", "H", "n")]
    if all(d is not None for d in dims) and dims[0].t == "array" and \
            all(d.t == "int" for d in dims[1:]):
        n = dims[3].v
        sub["shape"] = [len(dims[0].items), dims[1].v, dims[2].v, n, n]
    nn = node.get("n")
    if node.get("matrices") is not None and nn is not None and nn.t == "int":
        sub["matrix_n"] = nn.v
    unique = None not in keys and len(set(keys)) == len(keys)
    try:
        [k.decode("utf-8") for k in keys if k is not None]
    except UnicodeDecodeError:
        unique = False
    if unique:
        return {k.decode(): render(v, k.decode(), sub) for (_, v), k in zip(node.pairs, keys)}
    return {"$map": [[render(k, None, sub), render(v, k.v.decode("utf-8", "replace")
                                                   if k.t == "str" else None, sub)]
                     for k, v in node.pairs]}


def render_body(body):
    try:
        return render(walk(body))
    except MsgpackError as e:
        return {"$undecodable": base64.b64encode(body).decode(), "$why": str(e)}


def dumps(obj, indent=0):
    """JSON text: maps one key per line, arrays of scalars on one line."""
    pad = "  " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [pad + json.dumps(k) + ": " + dumps(v, indent + 1) for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(obj, list):
        if not obj:
            return "[]"
        if all(not isinstance(x, (dict, list)) for x in obj):
            return "[" + ", ".join(dumps(x, indent) for x in obj) + "]"
        return "[\n" + ",\n".join(pad + dumps(x, indent + 1) for x in obj) + "\n" + "  " * indent + "]"
    if isinstance(obj, bool) or obj is None:
        return json.dumps(obj)
    if isinstance(obj, F32):
        s = f32_text(obj)
        return json.dumps(_nonfinite(float(obj))) if s is None else s
    if isinstance(obj, float):
        return json.dumps(_nonfinite(obj)) if obj != obj or obj in (float("inf"), float("-inf")) \
            else f64_text(obj)
    return json.dumps(obj)


# ---- examples -----------------------------------------------------------------

class Example:
    """One example: frames (bytes, in order) and the .json metadata."""

    def __init__(self, name, kind, frames, description, **meta):
        self.name = name            # "<kind dir>/<base>"
        self.kind = kind
        self.frames = list(frames)
        self.meta = {"example": name, "kind": kind, "description": description}
        self.meta.update(meta)

    @property
    def base(self):
        return self.name.split("/", 1)[1]

    @property
    def body(self):
        return self.frames[1] if self.has_topic else self.frames[0]

    @property
    def has_topic(self):
        return self.kind not in ("request", "reply")

    def files(self):
        """{file name (relative to the kind's directory): bytes}."""
        b = self.base
        if not self.has_topic:
            names = [b + ".msgpack"]
        else:
            names = [b + ".topic", b + ".msgpack"] + ["%s.frame%d" % (b, k + 1)
                                                      for k in range(2, len(self.frames))]
        out = dict(zip(names, self.frames))
        meta = dict(self.meta)
        if self.has_topic:
            meta["topic"] = self.frames[0].decode("utf-8", "replace")
        meta["frames"] = names[:len(self.frames)]
        meta["body"] = render_body(self.body)
        out[b + ".json"] = (dumps(meta) + "\n").encode()
        return out


TOKENS_M1 = ["price", "size", "spread", "side", "CLS"]
TOKENS_M2 = ["a", "b", "c", "d"]


def bf16_bytes(a32):
    x = np.ascontiguousarray(a32, dtype="<f4").view("<u4").astype(np.uint64)
    x = (x + 0x7FFF + ((x >> 16) & 1)) >> 16
    return x.astype("<u2").tobytes()


def tensor_bytes(a, dtype):
    """float64 array -> wire bytes: rounded once to float32, then to dtype."""
    a32 = np.asarray(a, dtype="<f4")
    if dtype == "f32":
        return a32.tobytes()
    if dtype == "f16":
        return a32.astype("<f2").tobytes()
    return bf16_bytes(a32)


def m1_tensors(seed, B):
    """Attention [B,2,2,5,5]: integer weights 1..9, each row divided by its
    sum; gradient: multiples of 1/8 in [-3/8, 3/8]."""
    L, H, n = 2, 2, 5
    idx = np.indices((B, L, H, n, n))
    b, l, h, i, j = idx
    w = 1 + (3 * l + 5 * h + 7 * i + 11 * j + 13 * (seed + b)) % 9
    a = w / w.sum(axis=-1, keepdims=True)
    g = (((l + 2 * h + 3 * i + 5 * j + seed + b) % 7) - 3) / 8.0
    return a, g


def m2_tensors(pattern, B):
    """Attention [B,1,2,4,4] for the drift model: every query row puts the
    same weights on the keys a, b, c, d."""
    base = {"a": [8, 4, 2, 1], "b": [1, 2, 4, 8], "flat": [1, 1, 1, 1]}[pattern]
    a = np.zeros((B, 1, 2, 4, 4))
    for t in range(B):
        for h in range(2):
            w = np.array(base, dtype=np.float64)
            if pattern != "flat":
                w[(t + h) % 4] += 1      # a little variety, same ranking
            a[t, 0, h, :, :] = w / w.sum()
    return a


def pack(body):
    return msgpack.packb(body, use_bin_type=True)


def raw_map(pairs):
    """A msgpack map from (packed key, packed value) pairs, for what
    msgpack-python will not write (duplicate or non-str keys)."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(k + v for k, v in pairs)


def ingest_bodies():
    """The valid ingest bodies, by example name."""
    out = {}
    a, g = m1_tensors(0, 1)
    out["f32-first"] = ("attn/m1", {
        "v": 1, "model": "m1", "seq": 0, "ts": T0, "ids": ["t-1"], "L": 2, "H": 2, "n": 5,
        "dtype": "f32", "attn": tensor_bytes(a, "f32"), "grad": tensor_bytes(g, "f32"),
        "target": [1], "y": [0.73], "cls": 4, "tokens": TOKENS_M1})
    a, g = m1_tensors(1, 3)
    out["f16-batch3"] = ("attn/m1", {
        "v": 1, "model": "m1", "seq": 1, "ts": T0 + 1000000, "ids": [101, 102, 103],
        "L": 2, "H": 2, "n": 5, "dtype": "f16", "attn": tensor_bytes(a, "f16"),
        "grad": tensor_bytes(g, "f16"), "target": [0, 1, 1], "y": [0.25, 0.5, 0.875],
        "cls": 4, "tokens": TOKENS_M1})
    a, _ = m1_tensors(4, 1)
    out["bf16-nograd"] = ("attn/m1", {
        "v": 1, "model": "m1", "seq": 2, "ts": T0 + 2000000, "ids": ["t-2"], "L": 2, "H": 2,
        "n": 5, "dtype": "bf16", "attn": tensor_bytes(a, "bf16"), "cls": 4, "tokens": TOKENS_M1})
    a, g = m1_tensors(5, 1)
    out["f32-followup"] = ("attn/m1", {
        "v": 1, "model": "m1", "seq": 3, "ts": T0 + 3000000, "ids": ["t-3"], "L": 2, "H": 2,
        "n": 5, "dtype": "f32", "attn": tensor_bytes(a, "f32"), "grad": tensor_bytes(g, "f32"),
        "target": [0], "y": [0.125], "trace": "an unknown key: ignored"})
    for k, (pattern, seq) in enumerate((("a", 0), ("b", 1), ("flat", 2))):
        body = {"v": 1, "model": "m2", "seq": seq, "ts": T0 + (10 + k) * 1000000,
                "ids": list(range(1 + 4 * k, 5 + 4 * k)), "L": 1, "H": 2, "n": 4,
                "dtype": "f32", "attn": tensor_bytes(m2_tensors(pattern, 4), "f32")}
        if k == 0:
            body.update({"cls": -1, "tokens": TOKENS_M2})
        out["drift-" + pattern] = ("attn/m2", body)
    return out


INGEST_DESCRIPTIONS = {
    "f32-first": "First message of model m1 (L=2, H=2, n=5, CLS last): f32 with grad, target, "
                 "y, cls and tokens; starts schema epoch 1.",
    "f16-batch3": "A batch of 3 trades in f16 with uint ids, grad, target and y; cls and tokens "
                  "repeated unchanged (same epoch).",
    "bf16-nograd": "One trade in bf16 without grad, target or y: grad_rollout is skipped.",
    "f32-followup": "A later message without cls and tokens (the daemon knows them), with an "
                    "unknown key that is ignored.",
    "drift-a": "Model m2 (L=1, H=2, n=4, no CLS): 4 trades whose attention ranks a > b > c > d; "
               "with --drift-window 4 they close window 0, which becomes the baseline.",
    "drift-b": "4 trades of m2 ranking d > c > b > a: window 1 is compared with the baseline "
               "and alerts.",
    "drift-flat": "4 trades of m2 with uniform attention: window 2 has a constant mean, so "
                  "Spearman's rho is undefined (nil).",
}


def reject_examples(valid):
    """One example per rejection reason of ingest.md: (reason, frames,
    description, expect extras)."""
    topic, good = valid["f32-first"]
    t = topic.encode()
    out = []

    def body(**over):
        b = dict(good)
        for k, v in over.items():
            if v is None:
                b.pop(k, None)
            else:
                b[k] = v
        return b

    def pairs(b):
        return [(pack(k), pack(v)) for k, v in b.items()]

    out.append(("frames", [t, pack(good), b"extra"],
                "Three frames (topic, a valid body, one more): a message is exactly two.", {}))
    out.append(("topic", [t, pack(body(model="m2"))],
                "Topic attn/m1 but \"model\": \"m2\".", {}))
    out.append(("model_name", [b"attn/bad name", pack(body(model="bad name"))],
                "The model name holds a space.", {}))
    full = pack(good)
    out.append(("msgpack", [t, full[:len(full) - 150]],
                "The body is cut short: the declared length of the attn bin exceeds the bytes "
                "present.", {}))
    out.append(("not_map", [t, pack([1, "m1"])], "The body is an array, not a map.", {}))
    out.append(("version", [t, pack(body(v=2))], "\"v\": 2.", {}))
    p = pairs(good)
    p.insert(3, (pack("seq"), pack(7)))
    out.append(("duplicate_key", [t, raw_map(p)], "The key \"seq\" appears twice.", {}))
    out.append(("wrong_type", [t, pack(body(L="2"))], "\"L\" is a str.", {}))
    out.append(("dtype", [t, pack(body(dtype="f64"))], "\"dtype\": \"f64\".", {}))
    p = pairs(good)
    p[4] = (pack("ids"), b"\x91\xa4t-\xff\xfe")
    out.append(("bad_string", [t, raw_map(p)], "The trade id is not valid UTF-8.", {}))
    out.append(("length", [t, pack(body(ids=[], target=None, y=None))],
                "\"ids\" is empty.", {}))
    out.append(("missing_key", [t, pack(body(ts=None))], "No \"ts\".", {}))
    out.append(("shape", [t, pack(body(L=0))], "\"L\": 0.", {}))
    out.append(("too_large", [t, pack(body(L=64, H=64, n=1024, tokens=None, cls=None))],
                "L*H*n*n = 64*64*1024*1024 exceeds the default max_elems (4 Mi values); "
                "checked before the attn length.", {}))
    out.append(("size", [t, pack(body(attn=good["attn"][:-4]))],
                "attn holds one value less than B*L*H*n*n.", {}))
    out.append(("not_allowed", [b"attn/m9", pack(body(model="m9"))],
                "A valid message of model m9, which the allow-list does not name.",
                {"stage": "daemon", "daemon_args": ["--allow-models", "m1,m2"]}))
    out.append(("too_many_models", [b"attn/m3", pack(body(model="m3"))],
                "A valid message of a third model while the model table (--max-models 2) "
                "holds m1 and m2.",
                {"stage": "daemon", "daemon_args": ["--max-models", "2"],
                 "before": ["ingest/f32-first", "ingest/drift-a"]}))
    out.append(("no_schema", [t, pack(body(cls=None, tokens=None))],
                "The first message of model m1 without cls and tokens.",
                {"stage": "daemon"}))
    a = np.frombuffer(good["attn"], dtype="<f4").copy()
    a2 = np.concatenate([a, a])
    a2[7] = np.nan
    out.append(("nonfinite", [t, pack(body(ids=["t-nan", "t-ok"], attn=a2.tobytes(),
                                           grad=good["grad"] * 2, target=[1, 1], y=[0.5, 0.5]))],
                "A batch of 2 whose first trade holds a NaN in attn: that trade is rejected, "
                "the second is explained.",
                {"stage": "daemon", "explained": 1}))
    neg = (-np.frombuffer(good["attn"], dtype="<f4")).astype("<f4")
    out.append(("attention", [t, pack(body(attn=neg.tobytes()))],
                "The first message of m1 with its attention negated (every row sums to -1): "
                "not a probability distribution, so the trade is rejected (the schema is "
                "learnt, nothing is explained).",
                {"stage": "daemon"}))
    out.append(("schema_rate", [t, pack(body(tokens=["bid", "ask", "depth", "side", "CLS"]))],
                "m1 renames its tokens right after its first message, with --schema-rate 1 "
                "(one schema epoch a minute): the second epoch is refused and m1 stays in "
                "epoch 1.",
                {"stage": "daemon", "daemon_args": ["--schema-rate", "1"],
                 "before": ["ingest/f32-first"]}))
    out.append(("internal", [t, pack(good)],
                "A valid message: the daemon rejects a message (or trade) as internal only "
                "when it runs out of memory while handling it, which no message content "
                "can cause.",
                {"stage": "daemon", "reproducible": False}))
    return out


STAGE = {"frames": "frames", "topic": "decode", "model_name": "decode"}


def build_inputs():
    """Every input example (ingest, reject, request), by name, in order."""
    ex = {}
    valid = ingest_bodies()
    for name, (topic, body) in valid.items():
        ex["ingest/" + name] = Example("ingest/" + name, "ingest", [topic.encode(), pack(body)],
                                       INGEST_DESCRIPTIONS[name], expect={"reason": "ok"},
                                       source="generated by make.py")
    for reason, frames, desc, extra in reject_examples(valid):
        expect = {"reason": reason, "stage": extra.pop("stage", "decode")}
        if reason == "frames":
            expect["stage"] = "frames"
        expect.update(extra)
        ex["reject/" + reason] = Example("reject/" + reason, "reject", frames, desc,
                                         expect=expect, source="generated by make.py")
    for name, op, req, desc in REQUESTS:
        frame = req if isinstance(req, bytes) else pack(req)
        ex["request/" + name] = Example("request/" + name, "request", [frame], desc, op=op,
                                        reply="reply/" + name, source="generated by make.py")
    return ex


# (name, op, request map or raw bytes, description); each is answered by
# reply/<name>. Ordered as SCENARIO sends them.
REQUESTS = [
    ("ping", "ping", {"v": 1, "op": "ping"}, "Is the daemon there?"),
    ("models", "models", {"v": 1, "op": "models"}, "Every model with its counters."),
    ("schema", "schema", {"v": 1, "op": "schema", "model": "m1"}, "m1's current schema."),
    ("trade", "trade", {"v": 1, "op": "trade", "model": "m1", "id": "t-1"},
     "The cached explanation of trade t-1, with its n x n matrices."),
    ("trade-uint-flow", "trade", {"v": 1, "op": "trade", "model": "m1", "id": 101, "flow": True},
     "Trade 101 (a uint id), asking for flow, which was not sampled for it."),
    ("global", "global", {"v": 1, "op": "global", "model": "m1"},
     "m1's whole global state (publishes glob/m1 and heads/m1 first)."),
    ("reference", "reference", {"v": 1, "op": "reference", "model": "m1", "method": "rollout",
                                "values": [0.4, 0.3, 0.2, 0.1]},
     "An external rollout reference for m1 (4 features)."),
    ("global-method-target", "global",
     {"v": 1, "op": "global", "model": "m1", "method": "rollout", "target": 1},
     "m1's state restricted to rollout and target class 1 (the pending change with the "
     "reference is published on glob/m1 first)."),
    ("global-m2", "global", {"v": 1, "op": "global", "model": "m2"},
     "m2's global state: no target classes, no gradient."),
    ("drift", "drift", {"v": 1, "op": "drift", "model": "m2"},
     "m2's drift status: thresholds, every method's last window, the alerts."),
    ("baseline-pin", "baseline", {"v": 1, "op": "baseline", "model": "m2", "action": "pin"},
     "Pin m2's current global means as the drift reference."),
    ("drift-method", "drift", {"v": 1, "op": "drift", "model": "m2", "method": "rollout"},
     "m2's rollout drift status after the pin."),
    ("baseline-reset", "baseline",
     {"v": 1, "op": "baseline", "model": "m2", "action": "reset", "method": "rollout"},
     "Forget m2's rollout reference: the next window to close becomes the baseline."),
    ("drift-after-reset", "drift", {"v": 1, "op": "drift", "model": "m2", "method": "rollout"},
     "m2's rollout drift status after the reset: no reference."),
    ("drift-m1", "drift", {"v": 1, "op": "drift", "model": "m1"},
     "m1's drift status: every method closed its baseline window but flow (3 sampled trades "
     "of a 4-trade window), whose last is nil."),
    ("error-bad_request", "(none)", {"v": 1, "model": "m1"}, "A request without \"op\"."),
    ("error-bad_request-not-msgpack", "(none)", b"\xc1not msgpack",
     "A request that is not msgpack."),
    ("error-unknown_op", "frobnicate", {"v": 1, "op": "frobnicate"}, "An op that does not exist."),
    ("error-unknown_model", "schema", {"v": 1, "op": "schema", "model": "m9"},
     "A model the daemon has never seen."),
    ("error-not_found", "trade", {"v": 1, "op": "trade", "model": "m1", "id": "t-404"},
     "A trade that is not in the recent-trade cache."),
    ("error-bad_argument", "reference",
     {"v": 1, "op": "reference", "model": "m1", "method": "rollout", "values": [1.0, 2.0]},
     "A reference of 2 values for a model of 4 features."),
    ("stats", "stats", {"v": 1, "op": "stats"}, "The daemon's counters (asked last)."),
    ("models-no-schema", "models", {"v": 1, "op": "models"},
     "The models of a daemon that rejected reject/no_schema, then explained ingest/drift-a: "
     "a rejected message changes nothing, so m1 is not in the table, only m2 is."),
]

# What the replay does, in order: ingest an example (waiting for its xpl/
# messages), or send a request and keep its reply.
SCENARIO = ([("ingest", "ingest/" + n) for n in ("f32-first", "f16-batch3", "bf16-nograd",
                                                  "f32-followup")]
            + [("query", "request/" + n) for n in ("ping", "models", "schema", "trade",
                                                    "trade-uint-flow", "global", "reference",
                                                    "global-method-target")]
            + [("ingest", "ingest/" + n) for n in ("drift-a", "drift-b", "drift-flat")]
            + [("query", "request/" + r[0]) for r in REQUESTS[8:] if r[0] != "models-no-schema"])
# A second daemon: a model's first message is rejected as no_schema, which
# must leave no trace of the model. The rejected message is followed by a
# valid one on the same connection, whose xpl/ says both were handled.
SCENARIO_NO_SCHEMA = [("send", "reject/no_schema"), ("ingest", "ingest/drift-a"),
                      ("query", "request/models-no-schema")]
SCENARIOS = (SCENARIO, SCENARIO_NO_SCHEMA)

# Published messages kept as examples: name -> (topic, seq, predicate on
# the body or None, description).
PUBLISHED = {
    "xpl/f32-first": ("xpl/m1", 0, "Trade t-1 of ingest/f32-first: target and y echoed, "
                      "grad_rollout (a gradient was sent) and flow (sampled: --flow-every 2)."),
    "xpl/f16-batch3-0": ("xpl/m1", 1, "Trade 101 (uint id) of ingest/f16-batch3: no flow "
                         "(not sampled)."),
    "xpl/f16-batch3-1": ("xpl/m1", 2, "Trade 102 of ingest/f16-batch3, with flow."),
    "xpl/f16-batch3-2": ("xpl/m1", 3, "Trade 103 of ingest/f16-batch3."),
    "xpl/bf16-nograd": ("xpl/m1", 4, "Trade t-2 of ingest/bf16-nograd: no target, no y, "
                        "no grad_rollout."),
    "xpl/f32-followup": ("xpl/m1", 5, "Trade t-3 of ingest/f32-followup."),
    "xpl/m2-nocls": ("xpl/m2", 0, "Trade 1 of ingest/drift-a: a model without CLS, so each "
                     "vector has n = 4 entries."),
    "glob/m1": ("glob/m1", 0, "m1's global state after 6 trades, published before the reply "
                "to request/global: two target classes, no external reference."),
    "glob/m1-reference": ("glob/m1", 1, "m1's global state with the external rollout "
                          "reference of request/reference and its Spearman rho."),
    "glob/m2": ("glob/m2", 0, "m2's global state: no target classes."),
    "heads/m1": ("heads/m1", 0, "m1's head statistics (gradients sent: importance is set)."),
    "heads/m2": ("heads/m2", 0, "m2's head statistics: no gradient ever, importance_count 0."),
}
# Drift messages are picked by method and window (their seq depends on the
# order the methods close in).
DRIFT = {
    "drift/baseline": ("m2", "rollout", 0, "Window 0 of m2's rollout: it becomes the baseline, "
                       "nothing is compared, every statistic is nil."),
    "drift/alert": ("m2", "rollout", 1, "Window 1 of m2's rollout, compared with the baseline: "
                    "the ranking is reversed, alert."),
    "drift/undefined": ("m2", "rollout", 2, "Window 2 of m2's rollout: a constant mean vector, "
                        "so Spearman's rho is undefined (nil) and never alerts by itself."),
}

# Clock-dependent fields, overwritten in the captured bytes: kind or reply
# name -> [(path, value)].
_TS = [(["ts"], NORM_TS)]
_LAT = [([h, q], NORM_LATENCY) for h in ("latency_us", "latency_ts_us")
        for q in ("p50", "p90", "p99", "p999", "max", "mean")]
NORMALISED = {
    "glob": _TS, "heads": _TS, "drift": _TS,
    "reply/ping": [(["uptime_s"], NORM_UPTIME)],
    "reply/stats": [(["uptime_s"], NORM_UPTIME)] + _LAT,
    "reply/global": _TS, "reply/global-method-target": _TS, "reply/global-m2": _TS,
    "reply/drift": [(["methods", "*", "last", "ts"], NORM_TS), (["alerts", "*", "ts"], NORM_TS)],
    "reply/drift-method": [(["methods", "*", "last", "ts"], NORM_TS),
                           (["alerts", "*", "ts"], NORM_TS)],
    "reply/drift-m1": [(["methods", "*", "last", "ts"], NORM_TS), (["alerts", "*", "ts"], NORM_TS)],
    "reply/drift-after-reset": [(["methods", "*", "last", "ts"], NORM_TS),
                                (["alerts", "*", "ts"], NORM_TS)],
}


def normalise(name, kind, body):
    """The body with its clock-dependent fields replaced; and the list of
    what was replaced, for the .json."""
    rules = NORMALISED.get(name) or NORMALISED.get(kind) or []
    buf = bytearray(body)
    done = []
    for path, value in rules:
        root = walk(bytes(buf))
        if patch(buf, root, path, value):
            done.append({"path": path, "value": value})
    return bytes(buf), done


# ---- replaying into a real daemon -------------------------------------------------

def find_xplaind():
    cands = [os.environ.get("XPLAIND", "")]
    if os.environ.get("XPL_BUILD_DIR"):
        cands.append(os.path.join(os.environ["XPL_BUILD_DIR"], "daemon", "xplaind"))
    root = os.path.dirname(os.path.dirname(HERE))
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


def run_scenario(xplaind, frames, scenario=SCENARIO):
    """Replay a scenario into a fresh daemon; `frames` maps an input
    example's name to its frames. Returns (replies {request name: body},
    published [(topic, body)] in arrival order)."""
    r = Replay(xplaind, DAEMON_ARGS)
    replies = {}
    try:
        for what, name in scenario:
            fr = frames[name]
            if what == "send":
                r.send(fr)
            elif what == "ingest":
                body = msgpack.unpackb(fr[1])
                r.send(fr)
                r.wait_for(("xpl/" + body["model"]).encode(), len(body["ids"]))
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


def capture(xplaind, inputs):
    """The output examples, from a fresh replay of `inputs` (Examples)."""
    frames = {n: e.frames for n, e in inputs.items()}
    replies, published = run_scenario(xplaind, frames)
    replies.update(run_scenario(xplaind, frames, SCENARIO_NO_SCHEMA)[0])
    out = {}
    for name, (kind, topic, raw, desc) in select_outputs(replies, published).items():
        body, done = normalise(name, kind, raw)
        meta = {}
        if kind == "reply":
            base = name.split("/", 1)[1]
            meta["op"] = next(r[1] for r in REQUESTS if r[0] == base)
            meta["request"] = "request/" + base
        meta["source"] = "captured from xplaind " + " ".join(DAEMON_ARGS)
        if done:
            meta["normalised"] = done
        frames = [body] if topic is None else [topic.encode(), body]
        out[name] = Example(name, kind, frames, desc, **meta)
    return out


# ---- reading examples back (for the tests) ----------------------------------------

def load(kind=None):
    """Examples on disk: list of dicts (the .json) with "frames_bytes" (the
    frames in order) and "body_bytes" added, sorted by name."""
    out = []
    for k in KINDS if kind is None else (kind,):
        d = os.path.join(HERE, k)
        if not os.path.isdir(d):
            continue
        for f in sorted(os.listdir(d)):
            if not f.endswith(".json"):
                continue
            with open(os.path.join(d, f)) as fh:
                meta = json.load(fh)
            frames = []
            for name in meta["frames"]:
                with open(os.path.join(d, name), "rb") as fh:
                    frames.append(fh.read())
            meta["frames_bytes"] = frames
            meta["body_bytes"] = frames[1] if len(frames) > 1 else frames[0]
            out.append(meta)
    return out


def type_of(node):
    return node.t


def compare(want, got, path="", skip=(), float_rel=1e-5, float_abs=1e-6):
    """Differences between two Node trees: structure, types and keys must
    match exactly (integers of any width and sign count as one type);
    values too, floats within a tolerance, except at `skip` paths (lists
    of segments, "*" for any key or index), where only the type counts."""
    diffs = []

    def skipped(p):
        for s in skip:
            if len(s) == len(p) and all(a == "*" or a == b for a, b in zip(s, p)):
                return True
        return False

    def rec(a, b, p):
        where = "/".join(str(x) for x in p) or "(body)"
        if a.t != b.t:
            diffs.append("%s: type %s, expected %s" % (where, b.t, a.t))
            return
        if a.t == "array":
            if len(a.items) != len(b.items):
                diffs.append("%s: %d items, expected %d" % (where, len(b.items), len(a.items)))
                return
            for k, (x, y) in enumerate(zip(a.items, b.items)):
                rec(x, y, p + [k])
            return
        if a.t == "map":
            ka = [k.v for k, _ in a.pairs]
            kb = [k.v for k, _ in b.pairs]
            if ka != kb:
                diffs.append("%s: keys %s, expected %s" % (where, [k.decode("utf-8", "replace") for k in kb],
                                                          [k.decode("utf-8", "replace") for k in ka]))
                return
            for (k, x), (_, y) in zip(a.pairs, b.pairs):
                rec(x, y, p + [k.v.decode("utf-8", "replace")])
            return
        if skipped(p):
            return
        if a.t in ("float32", "float64"):
            if not (abs(a.v - b.v) <= float_abs + float_rel * abs(a.v) or (a.v != a.v and b.v != b.v)):
                diffs.append("%s: %r, expected %r" % (where, b.v, a.v))
        elif a.v != b.v:
            diffs.append("%s: %r, expected %r" % (where, b.v, a.v))

    rec(want, got, [])
    return diffs


# ---- main ---------------------------------------------------------------------------

def write(examples, root=HERE):
    for ex in examples.values():
        d = os.path.join(root, ex.kind)
        os.makedirs(d, exist_ok=True)
        for fname, data in ex.files().items():
            with open(os.path.join(d, fname), "wb") as f:
                f.write(data)


INDEX_BEGIN = "<!-- index: generated by make.py -->"
INDEX_END = "<!-- end of index -->"


def index_text(descriptions):
    """The README's index table: {example name: description}."""
    rows = ["| example | description |", "|---|---|"]
    for kind in KINDS:
        for name in sorted(n for n in descriptions if n.split("/")[0] == kind):
            rows.append("| `%s` | %s |" % (name, descriptions[name].replace("|", "\\|")))
    return "\n".join(rows) + "\n"


def readme_index(root=HERE):
    """The index as it is in README.md."""
    with open(os.path.join(root, "README.md")) as f:
        text = f.read()
    return text[text.index(INDEX_BEGIN) + len(INDEX_BEGIN):text.index(INDEX_END)].strip("\n") + "\n"


def write_index(examples, root=HERE):
    path = os.path.join(root, "README.md")
    with open(path) as f:
        text = f.read()
    a, b = text.index(INDEX_BEGIN) + len(INDEX_BEGIN), text.index(INDEX_END)
    with open(path, "w") as f:
        f.write(text[:a] + "\n" + index_text({n: e.meta["description"] for n, e in examples.items()})
                + text[b:])


def check_inputs(root=HERE):
    """Differences between the input examples on disk and freshly built ones."""
    bad = []
    expected = set()
    for ex in build_inputs().values():
        for fname, data in ex.files().items():
            path = os.path.join(root, ex.kind, fname)
            expected.add(os.path.join(ex.kind, fname))
            try:
                with open(path, "rb") as f:
                    if f.read() != data:
                        bad.append("%s differs" % path)
            except OSError:
                bad.append("%s is missing" % path)
    for kind in ("ingest", "reject", "request"):
        for f in os.listdir(os.path.join(root, kind)):
            if os.path.join(kind, f) not in expected:
                bad.append("%s/%s is not generated by make.py" % (kind, f))
    return bad


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--xplaind", help="the daemon to capture outputs from")
    ap.add_argument("--inputs-only", action="store_true", help="write ingest, reject, request only")
    ap.add_argument("--check", action="store_true", help="compare the inputs on disk, write nothing")
    a = ap.parse_args(argv)
    if a.check:
        bad = check_inputs()
        for b in bad:
            print(b)
        print("inputs: %s" % ("differ" if bad else "as generated"))
        return 1 if bad else 0
    inputs = build_inputs()
    out = dict(inputs)
    if not a.inputs_only:
        out.update(capture(a.xplaind or find_xplaind(), inputs))
        for kind in ("xpl", "glob", "drift", "heads", "reply"):
            shutil.rmtree(os.path.join(HERE, kind), ignore_errors=True)
    for kind in ("ingest", "reject", "request"):
        shutil.rmtree(os.path.join(HERE, kind), ignore_errors=True)
    write(out)
    if not a.inputs_only:
        write_index(out)
    print("%d examples written to %s" % (len(out), HERE))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
