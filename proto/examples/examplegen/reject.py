"""One ingest message per rejection reason of ingest.md (reject/)."""
import numpy as np

from . import fused
from .example import pack, raw_map


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
    for reason, over, desc in (
            ("group_unknown_token", {"groups": {"quote": ["price", "mid"]}},
             "\"groups\" names the token mid, which the tokens do not have."),
            ("group_token_twice", {"groups": {"quote": ["price", "spread"],
                                              "book": ["spread", "size"]}},
             "The token spread is in two groups."),
            ("group_cls_token", {"groups": {"quote": ["price", "CLS"]}},
             "A group names the CLS token (cls 4), which has no attribution."),
            ("group_empty", {"groups": {"quote": []}}, "A group with no token."),
            ("group_duplicate_feature_name", {"groups": {"side": ["price", "size"]}},
             "A group named side, as the token side, which stays a feature of its own: two "
             "features with one name."),
            ("group_duplicate_token_name", {"tokens": ["price", "size", "price", "side", "CLS"],
                                            "groups": {"quote": ["size", "side"]}},
             "Groups, and the tokens name two tokens price: a group could not say which.")):
        out.append((reason, [t, pack(body(**over))], desc, {}))
    out.extend(fused.reject_examples(valid))
    return out
