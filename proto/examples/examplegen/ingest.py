"""The valid ingest messages (ingest/): models m1 (every dtype, batches,
grad or not) and m2 (the drift scenario). No randomness: every tensor
value is a ratio of small integers rounded once to float32 (or then to
f16/bf16), so the bytes are the same on every machine."""
import numpy as np

from . import fused

T0 = 1764000000000000000            # ingest event times: T0 + k ms

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
    out.update(fused.ingest_bodies(m1_tensors, tensor_bytes, T0))
    # Model m4 (CLS first) for the variants: grad and rel, the relevance
    # here gradient x attention, rounded once to float32 like the rest.
    # (Not m3: that is the fused examples' model, with m1's schema.)
    a, g = m1_tensors(7, 1)
    out["m4-rel"] = ("attn/m4", {
        "v": 1, "model": "m4", "seq": 0, "ts": T0 + 20000000, "ids": ["v-1"], "L": 2, "H": 2,
        "n": 5, "dtype": "f32", "attn": tensor_bytes(a, "f32"), "grad": tensor_bytes(g, "f32"),
        "rel": tensor_bytes(np.asarray(a, "<f4") * np.asarray(g, "<f4"), "f32"), "target": [1],
        "cls": 0, "tokens": ["CLS"] + TOKENS_M1[:4]})
    # Model m5 (m1's schema) explains each trade for two classes at once:
    # grad [B][T][L][H][n][n], gradient t that of class targets[t].
    a, _ = m1_tensors(8, 2)
    g = np.stack([m1_tensors(9 + t, 2)[1] for t in range(2)], axis=1)
    out["m5-targets"] = ("attn/m5", {
        "v": 1, "model": "m5", "seq": 0, "ts": T0 + 30000000, "ids": ["k-1", "k-2"], "L": 2,
        "H": 2, "n": 5, "dtype": "f32", "attn": tensor_bytes(a, "f32"),
        "grad": tensor_bytes(g, "f32"), "targets": [2, 0], "y": [0.5, 0.25], "cls": 4,
        "tokens": TOKENS_M1})
    # The same trades in the fused form: fgrad [B][T][L][n][n] and
    # head_importance [B][T][L][H], block t fused from gradient t.
    parts = [fused.fuse(a, g[:, t]) for t in range(2)]
    M, conf = parts[0][0], parts[0][3]
    P = np.stack([q[1] for q in parts], axis=1)
    imp = np.stack([q[2] for q in parts], axis=1)
    out["m5-targets-fused"] = ("attn/m5", {
        "v": 1, "model": "m5", "seq": 1, "ts": T0 + 31000000, "ids": ["k-1", "k-2"], "L": 2,
        "H": 2, "n": 5, "dtype": "f32", "fattn": tensor_bytes(M, "f32"),
        "fgrad": tensor_bytes(P, "f32"), "head_importance": imp.astype("<f4").tobytes(),
        "head_confidence": conf.astype("<f4").tobytes(), "targets": [2, 0], "y": [0.5, 0.25]})
    # Model m6 (CLS last) with feature groups: price and spread are one
    # feature, "quote", standing where price stands.
    a, g = m1_tensors(9, 1)
    out["m6-groups"] = ("attn/m6", {
        "v": 1, "model": "m6", "seq": 0, "ts": T0 + 32000000, "ids": ["g-1"], "L": 2, "H": 2,
        "n": 5, "dtype": "f32", "attn": tensor_bytes(a, "f32"), "grad": tensor_bytes(g, "f32"),
        "target": [1], "cls": 4, "tokens": TOKENS_M1, "groups": {"quote": ["spread", "price"]}})
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
    **fused.DESCRIPTIONS,
    "m4-rel": "Model m4 (L=2, H=2, n=5, CLS first) with grad and rel, the relevance of every "
              "attention probability (here gradient x attention), for lrp_rollout; fed to a "
              "daemon of its own that serves the variants (replay.py: VARIANTS_ARGS).",
    "m5-targets": "Model m5 (m1's schema) with several targets per trade: 2 trades explained for "
                  "classes 2 and 0 at once, grad [B][T][L][H][n][n] (gradient t that of class "
                  "targets[t]), y, no target; fed to a daemon of its own (replay.py: "
                  "TARGETS_ARGS).",
    "m5-targets-fused": "The trades of ingest/m5-targets again, in the fused form: fattn and "
                        "head_confidence once per trade, fgrad [B][T][L][n][n] and "
                        "head_importance [B][T][L][H] with a block per target.",
    "m6-groups": "Model m6 (L=2, H=2, n=5, CLS last) with feature groups: \"groups\" maps the "
                 "feature quote to the tokens spread and price, so the model has the features "
                 "quote, size, side (quote where price, its lowest token, stands); fed to a "
                 "daemon of its own (replay.py: SCENARIO_GROUPS).",
}
