"""The JSON rendering of a msgpack body (README.md, "JSON rendering")."""
import base64
import json

import numpy as np

from .nodes import MsgpackError, walk


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
        fused = key in ("fattn", "fgrad", "fgrad_signed")
        heads = key in ("head_importance", "head_confidence")
        if heads:
            dtype = "f32"       # the head statistics are float32 in every message
        if (key in ("attn", "grad", "rel") or fused or heads) and dtype in ("f32", "f16", "bf16") and \
                len(node.v) % (4 if dtype == "f32" else 2) == 0:
            out["$" + dtype] = [F32(x) for x in decode_tensor(node.v, dtype)]
            shape = ctx.get("shape")
            if shape and fused:
                shape = [shape[0], shape[1], shape[3], shape[4]]     # [B, L, n, n]
            elif shape and heads:
                shape = shape[:3]                                    # [B, L, H]
            if shape and ctx.get("T") and key in ("grad", "rel", "fgrad", "fgrad_signed",
                                                  "head_importance"):
                shape = [shape[0], ctx["T"]] + shape[1:]            # a block per target
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
    tg = node.get("targets")
    if tg is not None and tg.t == "array":
        sub["T"] = len(tg.items)
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
