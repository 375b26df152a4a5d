"""The fused form's examples (proto/ingest.md, "The fused form").

Model m3 has m1's schema (L=2, H=2, n=5, CLS last) and is sent only in
the fused form, after the other models' examples, so that none of their
outputs changes. The fused arrays are computed from m1-style tensors the
way the client libraries compute them: heads summed in head order in
float32, scaled by float32(1/H); head statistics in float64, then float32.
Plain numpy + msgpack, no project code.
"""
import numpy as np

from .example import pack

TOKENS_M3 = ["price", "size", "spread", "side", "CLS"]


def fuse(a, g):
    """float64 [B, L, H, n, n] -> (M, P, importance, confidence) float32,
    from the float32 values the wire would carry."""
    a32 = np.asarray(a, dtype=np.float32)
    H = a32.shape[2]
    inv = np.float32(1.0) / np.float32(H)
    M = a32[:, :, 0].copy()
    for h in range(1, H):
        M += a32[:, :, h]
    M *= inv
    conf = a32.max(axis=-1).astype(np.float64).mean(axis=-1).astype(np.float32)
    if g is None:
        return M, None, None, conf
    g32 = np.asarray(g, dtype=np.float32)
    prod = a32 * g32
    imp = np.abs(prod.reshape(prod.shape[:3] + (-1,)).sum(axis=-1, dtype=np.float64)).astype(np.float32)
    c = np.maximum(prod, np.float32(0))
    P = c[:, :, 0].copy()
    for h in range(1, H):
        P += c[:, :, h]
    P *= inv
    return M, P, imp, conf


def ingest_bodies(m1_tensors, tensor_bytes, T0):
    """name -> (topic, body) of the valid fused examples."""
    out = {}
    a, g = m1_tensors(7, 2)
    M, P, imp, conf = fuse(a, g)
    out["fused-f32"] = ("attn/m3", {
        "v": 1, "model": "m3", "seq": 0, "ts": T0 + 20000000, "ids": ["f-1", "f-2"], "L": 2, "H": 2,
        "n": 5, "dtype": "f32", "fattn": tensor_bytes(M, "f32"), "fgrad": tensor_bytes(P, "f32"),
        "head_importance": imp.astype("<f4").tobytes(), "head_confidence": conf.astype("<f4").tobytes(),
        "target": [1, 0], "y": [0.75, 0.25], "cls": 4, "tokens": TOKENS_M3})
    a, _ = m1_tensors(8, 1)
    M, _, _, conf = fuse(a, None)
    out["fused-f16-nograd"] = ("attn/m3", {
        "v": 1, "model": "m3", "seq": 1, "ts": T0 + 21000000, "ids": [301], "L": 2, "H": 2, "n": 5,
        "dtype": "f16", "fattn": tensor_bytes(M, "f16"), "head_confidence": conf.astype("<f4").tobytes()})
    return out


DESCRIPTIONS = {
    "fused-f32": "Model m3 (m1's schema) in the fused form: per trade and layer the head means "
                 "fattn = mean_h A and fgrad = mean_h max(0, G*A), and the head statistics "
                 "(float32 [B][L][H]) instead of every head; 2 trades with target and y.",
    "fused-f16-nograd": "One fused m3 trade in f16 without a gradient: fattn and head_confidence "
                        "only; grad_rollout is skipped.",
}


def reject_examples(valid):
    """(reason, frames, description, expect extras) of the fused form's reasons."""
    topic, good = valid["fused-f32"]
    t = topic.encode()
    _, full = valid["f32-first"]
    mixed = dict(good)
    mixed["attn"] = full["attn"]
    return [
        ("fused_form", [t, pack(mixed)],
         "A fused message of m3 that also carries attn: a message is in one form.", {}),
        ("needs_heads", [t, pack(good)],
         "A valid fused message of m3 to a daemon whose head fusion is max, which the head means "
         "cannot give: refused, never explained wrongly.",
         {"stage": "daemon", "daemon_args": ["--fusion", "max"]}),
    ]
