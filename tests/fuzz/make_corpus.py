#!/usr/bin/python3
"""Seed corpora and dictionaries for tests/fuzz (fuzz_ingest, fuzz_query and
the client library's fuzz_topic_* and fuzz_reply_*).

Run from anywhere: /usr/bin/python3 tests/fuzz/make_corpus.py
It rewrites tests/fuzz/corpus/<target>/ and tests/fuzz/{ingest,query,client}.dict.
Files named regress-* in a corpus are inputs a fuzzer found, committed as
they were: they are kept.

A client topic seed is one byte k, k bytes of model name, then the body
(fuzz_client.c publishes it on <kind>/<model>); a client reply seed is the
reply body. They are proto/examples' messages of that kind, exact bytes,
plus one of each kind of damage.

An ingest seed is one byte k, k bytes of topic, then the body (the layout
fuzz_ingest.c splits). A query seed is the request body. Seeds are small:
valid messages of several shapes and dtypes, with the daemon's models of
fuzz_query.c (m1: epoch 1 n=5 with CLS, epoch 2 n=4 without; m2 without a
schema), and one of each kind of bad input proto/ names.
"""
import math
import os
import shutil
import struct

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))

# fuzz_ingest.c's limits: B <= 8, L, H <= 4, n <= 12, B*L*H*n*n <= 4096, str <= 32.


def floats(count, dtype, seed=1, nan_at=None):
    """`count` row-stochastic-looking values as little-endian dtype bytes."""
    vals = [((i * 2654435761 + seed * 97) % 1000) / 1000.0 + 0.01 for i in range(count)]
    if nan_at is not None:
        vals[nan_at] = math.nan
    if dtype == "f32":
        return struct.pack("<%df" % count, *vals)
    if dtype == "f16":
        return struct.pack("<%de" % count, *vals)
    # bf16: the top half of the float32
    return b"".join(struct.pack("<f", v)[2:] for v in vals)


def ingest_body(model="m1", B=1, L=2, H=2, n=4, dtype="f32", cls=3, tokens=True, grad=True,
                target=True, y=True, ids=None, seq=0, **over):
    count = B * L * H * n * n
    body = {"v": 1, "model": model, "seq": seq, "ts": 1764000000000000000,
            "ids": ids if ids is not None else ["t%d" % b for b in range(B)],
            "L": L, "H": H, "n": n, "dtype": dtype, "attn": floats(count, dtype)}
    if grad:
        body["grad"] = floats(count, dtype, seed=2)
    if target:
        body["target"] = [b % 2 for b in range(B)]
    if y:
        body["y"] = [0.5 + b for b in range(B)]
    if cls is not None:
        body["cls"] = cls
    if tokens:
        body["tokens"] = ["tok%d" % k for k in range(n)]
    for k, v in over.items():
        if v is KeyError:
            body.pop(k, None)
        else:
            body[k] = v
    return body


def raw_map(pairs):
    """A map from (key, packed value) pairs: duplicates, wide or bad encodings."""
    n = len(pairs)
    out = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    for k, v in pairs:
        out += msgpack.packb(k) + v
    return out


def packed_pairs(body):
    return [(k, msgpack.packb(v)) for k, v in body.items()]


def ingest_seed(topic, body_bytes):
    t = topic.encode() if isinstance(topic, str) else topic
    return bytes([min(len(t), 255)]) + t[:255] + body_bytes


def ingest_seeds():
    pk = msgpack.packb
    s = {}
    ok = pk(ingest_body())
    s["ok_f32_cls_grad_target_y"] = ingest_seed("attn/m1", ok)
    s["ok_f16_uint_ids_no_cls"] = ingest_seed(
        "attn/m1", pk(ingest_body(B=2, L=1, H=2, n=3, dtype="f16", cls=-1, ids=[1, 2**64 - 1])))
    s["ok_bf16_batch3_grad_nil"] = ingest_seed(
        "attn/m1", pk(ingest_body(B=3, L=2, H=1, n=2, dtype="bf16", cls=0, grad=False) | {"grad": None}))
    s["ok_no_schema_keys"] = ingest_seed("attn/m-1.x_y", pk(ingest_body(model="m-1.x_y", cls=None, tokens=False)))
    s["ok_n1_no_cls"] = ingest_seed("attn/m1", pk(ingest_body(L=1, H=1, n=1, cls=-1, target=False, y=False)))
    s["ok_n12_one_layer"] = ingest_seed("attn/m1", pk(ingest_body(L=1, H=1, n=12, cls=11, grad=False)))
    s["ok_batch8_max_elems"] = ingest_seed("attn/m1", pk(ingest_body(B=8, L=2, H=4, n=4, cls=None, tokens=False)))
    s["ok_utf8_ids_tokens"] = ingest_seed(
        "attn/m1", pk(ingest_body(B=2, n=2, cls=-1, ids=["\u00e9t\u00e9", "\U0001f600"], tokens=False)
                      | {"tokens": ["\u20ac", "\u00fc"]}))
    unknown = [("x_nil", b"\xc0"), ("x_ext", b"\xc7\x02\x05ab"), ("x_fixext", b"\xd4\x01\x00"),
               ("x_nested", pk({"v": 2, "ids": [[], {}]})), ("x_f32", b"\xca\x7f\xc0\x00\x00"),
               ("x_bin", b"\xc4\x02\xc1\xc1"), ("x_neg", pk(-2**63)), ("V", pk("no"))]
    s["ok_unknown_keys_every_type"] = ingest_seed(
        "attn/m1", raw_map(unknown[:4] + packed_pairs(ingest_body()) + unknown[4:]))
    wide = packed_pairs(ingest_body(target=False, y=False))
    wide = [(k, {"L": b"\xcf" + struct.pack(">Q", 2), "H": b"\xd1\x00\x02",
                 "seq": b"\xd0\x05", "v": b"\xce\x00\x00\x00\x01"}.get(k, v)) for k, v in wide]
    s["ok_wide_integer_encodings"] = ingest_seed("attn/m1", raw_map(wide))
    s["nonfinite_nan_in_attn"] = ingest_seed(
        "attn/m1", pk(ingest_body(B=2) | {"attn": floats(2 * 2 * 2 * 16, "f32", nan_at=40)}))
    # Bad inputs, one of each kind.
    s["bad_empty_input"] = b""
    s["bad_truncated_body"] = ingest_seed("attn/m1", ok[: len(ok) // 2])
    s["bad_array32_4g_items"] = ingest_seed("attn/m1", b"\xdd\xff\x00\x00\x00")
    s["bad_map32_4g_pairs"] = ingest_seed("attn/m1", b"\xdf\xff\xff\xff\xff")
    s["bad_bin32_4g"] = ingest_seed("attn/m1", raw_map([("v", b"\x01"), ("attn", b"\xc6\xff\xff\xff\xf0xx")]))
    s["bad_c1"] = ingest_seed("attn/m1", raw_map([("v", b"\x01"), ("x", b"\xc1")]))
    s["bad_nesting_100"] = ingest_seed("attn/m1", raw_map([("v", b"\x01"), ("x", b"\x91" * 100 + b"\x00")]))
    s["bad_trailing_byte"] = ingest_seed("attn/m1", ok + b"\x00")
    s["bad_not_map"] = ingest_seed("attn/m1", pk([1, 2, 3]))
    s["bad_int_key"] = ingest_seed("attn/m1", raw_map([("v", b"\x01"), ("x", b"\x01")]).replace(b"\xa1x", b"\x07", 1))
    s["bad_version_2"] = ingest_seed("attn/m1", pk(ingest_body(v=2)))
    s["bad_version_missing"] = ingest_seed("attn/m1", pk(ingest_body(v=KeyError)))
    s["bad_duplicate_key"] = ingest_seed("attn/m1", raw_map(packed_pairs(ingest_body()) + [("L", b"\x02")]))
    s["bad_grad_nil_then_bin"] = ingest_seed(
        "attn/m1", raw_map([("grad", b"\xc0")] + packed_pairs(ingest_body())))
    s["bad_wrong_type_L"] = ingest_seed("attn/m1", pk(ingest_body() | {"L": "2"}))
    s["bad_wrong_type_id"] = ingest_seed("attn/m1", pk(ingest_body(ids=[1.5])))
    s["bad_dtype"] = ingest_seed("attn/m1", pk(ingest_body(dtype="f64")))
    bad_id = [(k, v) for k, v in packed_pairs(ingest_body()) if k != "ids"] + [("ids", b"\x91\xa2\xed\xa0")]
    s["bad_string_id_not_utf8"] = ingest_seed("attn/m1", raw_map(bad_id))
    s["bad_string_id_too_long"] = ingest_seed("attn/m1", pk(ingest_body(ids=["x" * 40])))
    s["bad_length_ids_empty"] = ingest_seed("attn/m1", pk(ingest_body(ids=[])))
    s["bad_length_target"] = ingest_seed("attn/m1", pk(ingest_body() | {"target": [1, 2]}))
    s["bad_missing_attn"] = ingest_seed("attn/m1", pk(ingest_body(attn=KeyError)))
    s["bad_shape_L0"] = ingest_seed("attn/m1", pk(ingest_body(L=0, attn=b"", grad=False)))
    s["bad_shape_cls"] = ingest_seed("attn/m1", pk(ingest_body(cls=4)))
    s["bad_too_large"] = ingest_seed("attn/m1", pk(ingest_body(B=8, L=4, H=4, n=12, attn=b"", grad=False,
                                                               target=False, y=False, tokens=False)))
    s["bad_size_short"] = ingest_seed("attn/m1", pk(ingest_body(attn=floats(31, "f32"))))
    s["bad_size_f16_with_f32_bytes"] = ingest_seed("attn/m1", pk(ingest_body(grad=False) | {"dtype": "f16"}))
    s["bad_topic_mismatch"] = ingest_seed("attn/m2", ok)
    s["bad_topic_prefix"] = ingest_seed("xpl/m1", ok)
    s["bad_model_name_topic"] = ingest_seed("attn/bad name", ok)
    s["bad_model_key_invalid"] = ingest_seed("attn/m1", pk(ingest_body(model="bad!")))
    return s


def q(**kw):
    return msgpack.packb({"v": 1, **kw})


def query_seeds():
    pk = msgpack.packb
    s = {
        "ping": q(op="ping"),
        "models": q(op="models"),
        "stats": q(op="stats"),
        "schema_m1": q(op="schema", model="m1"),
        "schema_m2_no_schema": q(op="schema", model="m2"),
        "schema_unknown_model": q(op="schema", model="m9"),
        "trade_str_id": q(op="trade", model="m1", id="t1"),
        "trade_uint_id": q(op="trade", model="m1", id=7),
        "trade_utf8_id": q(op="trade", model="m1", id="t-\u00e9"),
        "trade_epoch2": q(op="trade", model="m1", id="e2"),
        "trade_uint_max_flow": q(op="trade", model="m1", id=2**64 - 1, flow=True),
        "trade_flow_false": q(op="trade", model="m1", id="t1", flow=False),
        "trade_not_found": q(op="trade", model="m1", id="nope"),
        "global": q(op="global", model="m1"),
        "global_method_target": q(op="global", model="m1", method="rollout", target=1),
        "global_epoch1": q(op="global", model="m1", epoch=1),
        "global_negative_target": q(op="global", model="m1", target=-3),
        "baseline_pin": q(op="baseline", model="m1", action="pin"),
        "baseline_pin_method_epoch1": q(op="baseline", model="m1", action="pin", method="grad_rollout", epoch=1),
        "baseline_reset": q(op="baseline", model="m1", action="reset"),
        "reference": q(op="reference", model="m1", method="rollout", values=[0.4, 0.3, 0.2, 0.1]),
        "reference_ints": q(op="reference", model="m1", method="attn_mean", values=[1, 2, -3, 4]),
        "reference_wrong_count": q(op="reference", model="m1", method="rollout", values=[1.0]),
        "reference_nan": q(op="reference", model="m1", method="rollout", values=[math.nan, 0.0, 0.0, 0.0]),
        "drift": q(op="drift", model="m1"),
        "drift_method_epoch1": q(op="drift", model="m1", method="first_layer", epoch=1),
        "bad_not_map": pk([1, 2]),
        "bad_empty": b"",
        "bad_v_missing": pk({"op": "ping"}),
        "bad_v_2": pk({"v": 2, "op": "ping"}),
        "bad_op_int": q(op=7),
        "bad_unknown_op": q(op="shutdown"),
        "bad_model_int": q(op="schema", model=5),
        "bad_id_float": q(op="trade", model="m1", id=1.5),
        "bad_flow_str": q(op="trade", model="m1", id="t1", flow="yes"),
        "bad_method": q(op="global", model="m1", method="nope"),
        "bad_action": q(op="baseline", model="m1", action="drop"),
        "bad_epoch_str": q(op="drift", model="m1", epoch="1"),
        "bad_array32_4g": b"\xdd\xff\x00\x00\x00",
        "bad_c1": b"\x82\xa1v\x01\xa2op\xc1",
        "bad_trailing": q(op="ping") + b"\x00",
        "bad_truncated": q(op="schema", model="m1")[:-3],
        "bad_int_key": b"\x83\xa1v\x01\xa2op\xa4ping\x07\x01",
        "bad_17_args": pk({"v": 1, "op": "ping", **{"a%d" % k: k for k in range(15)}}),
        "bad_deep_nesting": b"\x83\xa1v\x01\xa2op\xa4ping\xa1x" + b"\x91" * 40 + b"\x00",
        "bad_duplicate_op": b"\x83\xa1v\x01\xa2op\xa4ping\xa2op\xa5stats",
        "bad_model_control_chars": q(op="schema", model="\u00e9\x01\x7f"),
        "bad_unknown_op_utf8": q(op="\u00e9\u00e9\u00e9" * 20),
    }
    return s


INGEST_DICT = ["v", "model", "seq", "ts", "ids", "L", "H", "n", "dtype", "attn", "grad",
               "target", "y", "cls", "tokens", "f32", "f16", "bf16", "m1"]
QUERY_DICT = ["v", "op", "ping", "models", "schema", "stats", "trade", "global", "baseline",
              "reference", "drift", "model", "id", "flow", "method", "target", "epoch", "action",
              "pin", "reset", "values", "m1", "m2", "t1", "e2", "rollout", "grad_rollout",
              "first_layer", "attn_mean", "diag"]


EXAMPLES = os.path.join(HERE, "..", "..", "proto", "examples")
CLIENT_TOPICS = ("xpl", "glob", "drift", "heads")
CLIENT_REPLIES = ("ping", "models", "schema", "stats", "trade", "global", "drift", "baseline",
                  "reference", "request")


def examples(kind):
    """(name, topic bytes or None, body bytes, rendering) of proto/examples/<kind>/."""
    import json
    d = os.path.join(EXAMPLES, kind)
    out = []
    for f in sorted(os.listdir(d)):
        if not f.endswith(".json"):
            continue
        name = f[:-5]
        with open(os.path.join(d, f)) as fh:
            meta = json.load(fh)
        with open(os.path.join(d, name + ".msgpack"), "rb") as fh:
            body = fh.read()
        topic = None
        if os.path.exists(os.path.join(d, name + ".topic")):
            with open(os.path.join(d, name + ".topic"), "rb") as fh:
                topic = fh.read()
        out.append((name, topic, body, meta))
    return out


def damaged(body):
    """Damaged versions of a valid map body: each key dropped, each value
    replaced by nil and by a wrong type, one at a time (top level and one
    level down), truncated, with trailing bytes."""
    pk = msgpack.packb
    obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
    out = {"truncated": body[: len(body) // 2], "trailing": body + b"\x00"}
    if not isinstance(obj, dict):
        return out
    for k, v in obj.items():
        if k in ("v", "ok"):
            continue
        out["drop_" + k] = pk({kk: vv for kk, vv in obj.items() if kk != k})
        out["nil_" + k] = pk({**obj, k: None})
        out["str_" + k] = pk({**obj, k: "x"})
        if isinstance(v, dict):
            for k2, v2 in v.items():
                sub = {kk: vv for kk, vv in v.items() if kk != k2}
                out["drop_%s.%s" % (k, k2)] = pk({**obj, k: sub})
                if isinstance(v2, dict):
                    for k3 in list(v2)[:8]:
                        sub3 = {kk: vv for kk, vv in v2.items() if kk != k3}
                        out["drop_%s.%s.%s" % (k, k2, k3)] = pk({**obj, k: {**v, k2: sub3}})
                break
        if isinstance(v, list) and v:
            out["short_" + k] = pk({**obj, k: v[:-1]})
            if isinstance(v[0], dict):
                for k2 in list(v[0])[:8]:
                    e0 = {kk: vv for kk, vv in v[0].items() if kk != k2}
                    out["drop_%s[0].%s" % (k, k2)] = pk({**obj, k: [e0] + v[1:]})
    return out


def topic_seed(model, body):
    m = model.encode() if isinstance(model, str) else model
    return bytes([min(len(m), 255)]) + m[:255] + body


def client_topic_seeds(kind):
    s = {}
    for name, topic, body, meta in examples(kind):
        model = topic[len(kind) + 1:]
        s["ok_" + name] = topic_seed(model, body)
    name, topic, body, meta = examples(kind)[0]
    model = topic[len(kind) + 1:]
    for k, v in damaged(body).items():
        s["bad_%s_%s" % (name, k)] = topic_seed(model, v)
    s["bad_model_differs"] = topic_seed(b"m9", body)
    s["bad_model_empty"] = topic_seed(b"", body)
    s["bad_model_65_bytes"] = topic_seed(b"m" * 65, body)
    s["bad_model_nul"] = topic_seed(model + b"\x00x", body)
    s["bad_not_map"] = topic_seed(model, msgpack.packb([1, 2]))
    s["bad_v_2"] = topic_seed(model, msgpack.packb({"v": 2}))
    s["bad_empty_body"] = topic_seed(model, b"")
    if kind == "glob":
        s.update(("bad_" + k, topic_seed(model, v)) for k, v in glob_damage(body).items())
    if kind == "heads":
        # L * H * 8 bytes must not be asked for before the rows are seen.
        obj = msgpack.unpackb(body, raw=False)
        s["bad_L1_H4e9_short_rows"] = topic_seed(model, msgpack.packb(
            {**obj, "L": 1, "H": 4000000000, "importance": [[0.5]], "confidence": [[0.5]]}))
    return s


def glob_damage(body):
    """A global state without (or with damaged) feature names whose first
    method state lacks a vector: the first vector then fixes the length."""
    pk = msgpack.packb
    obj = msgpack.unpackb(body, raw=False)
    meth = next(iter(obj["methods"]))
    out = {}
    for feats in (KeyError, None, 5):
        for vec in ("mean", "std", "decayed"):
            o = {k: v for k, v in obj.items() if k != "features"}
            if feats is not KeyError:
                o["features"] = feats
            o["methods"] = {**obj["methods"],
                            meth: {k: v for k, v in obj["methods"][meth].items() if k != vec}}
            out["features_%s_no_%s" % ({KeyError: "missing", None: "nil", 5: "int"}[feats], vec)] = pk(o)
    return out


def client_reply_seeds(op):
    s = {}
    reps = examples("reply")
    mine = [r for r in reps if r[3].get("op") == op]
    if op == "request":
        mine = reps
    for name, _, body, meta in mine:
        s["ok_" + name] = body
    for name, _, body, meta in reps:
        if name.startswith("error-"):
            s[name] = body
    good = [r for r in mine if msgpack.unpackb(r[2], raw=False).get("ok")]
    if good:
        name, _, body, meta = good[0]
        for k, v in damaged(body).items():
            s["bad_%s_%s" % (name, k)] = v
        if op == "global":
            s.update(("bad_" + k, v) for k, v in glob_damage(body).items())
        if op == "trade":
            # n * n * 4 wraps to 0 in 64 bits for n = 2^31; cls must be < n.
            obj = msgpack.unpackb(body, raw=False)
            s["bad_matrix_n_2_31_empty"] = msgpack.packb(
                {**{k: v for k, v in obj.items() if k != "features"},
                 "n": 2**31, "cls": -1, "matrices": {"rollout": b""}})
            s["bad_cls_equals_n"] = msgpack.packb({**obj, "cls": obj["n"]})
    pk = msgpack.packb
    s["bad_not_map"] = pk([1, 2])
    s["bad_empty"] = b""
    s["bad_ok_missing"] = pk({"v": 1})
    s["bad_ok_str"] = pk({"v": 1, "ok": "yes"})
    s["bad_v_2"] = pk({"v": 2, "ok": True})
    s["bad_error_no_code"] = pk({"v": 1, "ok": False})
    s["bad_error_code_int"] = pk({"v": 1, "ok": False, "code": 7, "error": 8})
    s["bad_error_code_long"] = pk({"v": 1, "ok": False, "code": "x" * 80, "error": "e"})
    s["bad_ok_only"] = pk({"v": 1, "ok": True})
    s["bad_deep_nesting"] = b"\x83\xa1v\x01\xa2ok\xc3\xa1x" + b"\x91" * 40 + b"\x00"
    s["bad_array32_4g"] = b"\x83\xa1v\x01\xa2ok\xc3\xa1x\xdd\xff\x00\x00\x00"
    return s


CLIENT_DICT = ["v", "ok", "code", "error", "model", "seq", "ts", "epoch", "id", "target", "y",
               "attr", "n", "cls", "L", "H", "features", "tokens", "dtype", "matrices", "count",
               "half_life", "untracked_targets", "methods", "mean", "std", "decayed",
               "reference", "reference_spearman", "targets", "method", "trades", "window",
               "compared", "spearman", "ndcg", "js", "alert", "importance", "confidence",
               "importance_count", "confidence_count", "thresholds", "rho_min", "ndcg_min",
               "js_max", "ndcg_k", "alerts_total", "last", "filled", "windows", "alerts",
               "models", "received", "explained", "rejected", "lost", "restarts", "last_seq",
               "last_ts", "counters", "latency_us", "uptime_s", "version", "p50", "max",
               "m1", "rollout", "baseline", "unknown_model", "not_found", "bad_argument"]


def write_dict(path, words, extra):
    lines = ["# libFuzzer dictionary for %s (written by make_corpus.py)" % os.path.basename(path)]
    for w in words:
        lines.append('"%s"' % "".join("\\x%02x" % b for b in msgpack.packb(w)))
    lines.extend('"%s"' % "".join("\\x%02x" % b for b in e) for e in extra)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_corpus(name, seeds):
    d = os.path.join(HERE, "corpus", name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if not f.startswith("regress-"):
            os.remove(os.path.join(d, f))
    for k, v in sorted(seeds.items()):
        with open(os.path.join(d, k), "wb") as f:
            f.write(v)
    return sum(len(v) for v in seeds.values())


def main():
    total = write_corpus("ingest", ingest_seeds()) + write_corpus("query", query_seeds())
    for kind in CLIENT_TOPICS:
        total += write_corpus("topic_" + kind, client_topic_seeds(kind))
    for op in CLIENT_REPLIES:
        total += write_corpus("reply_" + op, client_reply_seeds(op))
    write_dict(os.path.join(HERE, "client.dict"), CLIENT_DICT,
               [b"\xc0", b"\xc2", b"\xc3", b"\xcb", b"\xdc", b"\xde", b"\x90", b"\x80"])
    write_dict(os.path.join(HERE, "ingest.dict"), INGEST_DICT,
               [b"attn/", b"\xc4", b"\xc5", b"\xc6", b"\xdc", b"\xdd", b"\xde", b"\xdf", b"\xc0"])
    write_dict(os.path.join(HERE, "query.dict"), QUERY_DICT, [b"\x81\xa1v\x01", b"\xc3", b"\xc2"])
    assert total < 4 << 20, total
    print("corpus: %d bytes" % total)


if __name__ == "__main__":
    main()
