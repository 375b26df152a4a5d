"""End to end: every kind of bad input of proto/ingest.md and queries.md is
sent to a real xplaind. After each one the daemon must still answer ping,
have counted exactly that rejection under its reason, logged it, lost
nothing it had accepted, and explain the next good message correctly.
"""
import struct

import msgpack
import numpy as np

from xpltest import assert_close, join, random_attention, ref, wait_until

L, H, N, CLS = 2, 2, 4, 3
TOKENS = ["a", "b", "c", "CLS"]


def good_body(model="m1", seq=0, **over):
    rng = np.random.default_rng(seq)
    A = random_attention(rng, (1, L, H, N, N)).astype("<f4")
    G = rng.standard_normal((1, L, H, N, N)).astype("<f4")
    body = {"v": 1, "model": model, "seq": seq, "ts": 1, "ids": [f"t{seq}"], "L": L, "H": H,
            "n": N, "dtype": "f32", "attn": A.tobytes(), "grad": G.tobytes(), "cls": CLS,
            "tokens": TOKENS}
    body.update(over)
    return body, A.astype(np.float64)[0], G.astype(np.float64)[0]


def raw_map(pairs):
    """A msgpack map built by hand from (key, packed-value-bytes) pairs, for
    what msgpack-python will not produce (duplicate keys, bad UTF-8)."""
    out = bytes([0x80 | len(pairs)]) if len(pairs) < 16 else b"\xde" + struct.pack(">H", len(pairs))
    for k, v in pairs:
        out += msgpack.packb(k) + v
    return out


def bad_inputs(seq=100):
    """(name, reason, frames) for every bad input the contract names, those
    for model m1 numbered with `seq`."""
    b, _, _ = good_body(seq=seq)
    ok = msgpack.packb(b)
    t = b"attn/m1"
    cases = []

    def body(reason, name, **over):
        bb = dict(b)
        for k, v in over.items():
            if v is KeyError:
                del bb[k]
            else:
                bb[k] = v
        cases.append((name, reason, [t, msgpack.packb(bb)]))

    cases.append(("truncated body", "msgpack", [t, ok[:len(ok) // 2]]))
    cases.append(("truncated inside header", "msgpack", [t, ok[:3]]))
    cases.append(("empty body", "msgpack", [t, b""]))
    cases.append(("array header declaring 4G items", "msgpack", [t, b"\xdd\xff\x00\x00\x00"]))
    cases.append(("map header declaring 4G pairs", "msgpack", [t, b"\xdf\xff\xff\xff\xff"]))
    cases.append(("bin declaring 4 GiB", "msgpack",
                  [t, raw_map([("v", b"\x01"), ("attn", b"\xc6\xff\xff\xff\xf0" + b"x" * 10)])]))
    cases.append(("str declaring 4 GiB", "msgpack",
                  [t, raw_map([("v", b"\x01"), ("x", b"\xdb\xff\xff\xff\xff")])]))
    cases.append(("reserved byte 0xc1", "msgpack", [t, raw_map([("v", b"\x01"), ("x", b"\xc1")])]))
    cases.append(("nesting 1000 deep", "msgpack",
                  [t, raw_map([("v", b"\x01"), ("x", b"\x91" * 1000 + b"\x00")])]))
    cases.append(("trailing bytes", "msgpack", [t, ok + b"\x00"]))
    cases.append(("body is an array", "not_map", [t, msgpack.packb([1, 2, 3])]))
    cases.append(("int map key", "not_map", [t, msgpack.packb({1: 2, "v": 1})]))
    body("version", "v = 2", v=2)
    body("version", "v missing", v=KeyError)
    body("version", "v is a str", v="1")
    body("wrong_type", "L is a str", L="2")
    body("wrong_type", "attn is a str", attn="AAAA")
    body("wrong_type", "ids holds a float", ids=[1.5])
    body("wrong_type", "seq negative", seq=-1)
    body("wrong_type", "tokens holds ints", tokens=[1, 2, 3, 4])
    cases.append(("duplicate key", "duplicate_key",
                  [t, raw_map([("v", b"\x01"), ("L", b"\x02"), ("L", b"\x02")])]))
    body("dtype", "dtype f64", dtype="f64")
    body("missing_key", "attn missing", attn=KeyError)
    body("missing_key", "ts missing", ts=KeyError)
    body("shape", "L = 0", L=0, attn=b"")
    body("shape", "n above max_tokens", n=100000)
    body("shape", "cls out of range", cls=9)
    body("too_large", "B*L*H*n*n over the limit", L=64, H=64, n=1024, ids=list(range(16)), attn=b"")
    body("size", "attn one value short", attn=b["attn"][:-4])
    body("size", "grad too long", grad=b["grad"] + b"\0\0\0\0")
    body("size", "f16 with f32 bytes", dtype="f16")
    body("length", "ids empty", ids=[])
    body("length", "target too short", target=[])
    body("length", "y too long", y=[1.0, 2.0])
    body("length", "tokens too few", tokens=["a"])
    bad_utf8 = raw_map([(k, msgpack.packb(v)) for k, v in b.items() if k != "ids"] +
                       [("ids", b"\x91\xa2\xff\xfe")])
    cases.append(("id not UTF-8", "bad_string", [t, bad_utf8]))
    body("bad_string", "token too long", tokens=["a", "b", "x" * 300, "CLS"])
    nan = np.frombuffer(b["attn"], dtype="<f4").copy()
    nan[5] = np.nan
    body("nonfinite", "NaN in attn", attn=nan.tobytes())
    inf = np.frombuffer(b["grad"], dtype="<f4").copy()
    inf[0] = -np.inf
    body("nonfinite", "-Inf in grad", grad=inf.tobytes())
    cases.append(("three frames", "frames", [t, ok, b"extra"]))
    cases.append(("one frame", "frames", [t]))
    cases.append(("topic/model mismatch", "topic", [b"attn/m2", ok]))
    cases.append(("bad model name", "model_name", [b"attn/bad name!", ok]))
    evil, _, _ = good_body(model="evil")
    cases.append(("model not allowed", "not_allowed", [b"attn/evil", msgpack.packb(evil)]))
    fresh, _, _ = good_body(model="m3")
    del fresh["tokens"]
    cases.append(("first message without tokens", "no_schema", [b"attn/m3", msgpack.packb(fresh)]))
    return cases


ARGS = ("--allow-models", "m1,m2,m3,__probe", "--log-rate", "1000")


def test_bad_inputs(daemon):
    d = daemon(*ARGS)
    pub = d.publisher()
    sub = d.subscriber(b"xpl/m1")
    join(d, pub, sub)
    seq = 0

    def good_one():
        nonlocal seq
        body, A, G = good_body(seq=seq)
        seq += 1
        pub.send_multipart([b"attn/m1", msgpack.packb(body)])
        topic, msg = sub.recv_multipart()
        msg = msgpack.unpackb(msg)
        assert msg["id"] == body["ids"][0]
        want = ref.methods(A, G, CLS)
        for m in ("rollout", "grad_rollout", "first_layer", "attn_mean"):
            assert_close(msg["attr"][m], want[m], what=m)

    good_one()
    explained = 1
    for k in range(len(bad_inputs())):
        # Bad messages for m1 take their place in m1's seq numbering, so
        # a rejected message must not show up as lost.
        name, reason, frames = bad_inputs(seq)[k]
        if frames[0] == b"attn/m1":
            seq += 1
        before = d.stats()
        pub.send_multipart(frames)
        after = wait_until(lambda: (lambda s: s if s["counters"]["rejected"] >
                                    before["counters"]["rejected"] else None)(d.stats()),
                           what=f"rejection of {name}")
        for r, c in after["rejected"].items():
            want = before["rejected"][r] + (1 if r == reason else 0)
            assert c == want, f"{name}: reason {r} counted {c}, expected {want}"
        assert d.query("ping")["ok"], name
        good_one()
        explained += 1
        m1 = [m for m in d.query("models")["models"] if m["model"] == "m1"][0]
        assert m1["explained"] == explained, (name, m1)
    st = d.stats()
    assert st["counters"]["explained"] >= explained
    print(f"{len(bad_inputs())} bad inputs rejected by reason; daemon kept serving")
    # Lost messages are counted from seq gaps, never from rejected ones.
    m1 = [m for m in d.query("models")["models"] if m["model"] == "m1"][0]
    assert m1["lost"] == 0 and m1["restarts"] == 0, m1
    # A real gap is still counted: skip 4 seq numbers.
    seq += 4
    good_one()
    m1 = [m for m in d.query("models")["models"] if m["model"] == "m1"][0]
    assert m1["lost"] == 4 and m1["restarts"] == 0, m1
    seq = 0
    good_one()
    m1 = [m for m in d.query("models")["models"] if m["model"] == "m1"][0]
    assert m1["lost"] == 4 and m1["restarts"] == 1, m1
    log = d.stop()
    for reason in ("msgpack", "size", "nonfinite", "version", "not_allowed", "no_schema"):
        assert f": {reason}: " in log, f"no log line for {reason}"


def test_too_many_models(daemon):
    d = daemon("--max-models", "2")
    pub = d.publisher()
    join(d, pub, model="m1")
    body, _, _ = good_body(model="m2")
    pub.send_multipart([b"attn/m2", msgpack.packb(body)])
    wait_until(lambda: any(m["model"] == "m2" for m in d.query("models")["models"]), what="m2")
    before = d.stats()["rejected"]["too_many_models"]
    body, _, _ = good_body(model="m9")
    pub.send_multipart([b"attn/m9", msgpack.packb(body)])
    wait_until(lambda: d.stats()["rejected"]["too_many_models"] == before + 1, what="too_many_models")
    assert d.query("ping")["ok"]
    d.stop()


def test_bad_queries(daemon, publisher):
    d = daemon(*ARGS)
    # m1 is a known model, so that a trade it never had is not_found.
    publisher(d, model="m1")
    cases = [
        (b"\xdd\xff\x00\x00\x00", "bad_request"),
        (b"", "bad_request"),
        (b"garbage that is not msgpack \xc1", "bad_request"),
        (msgpack.packb([1, 2]), "bad_request"),
        (msgpack.packb({"op": "ping"}), "bad_request"),
        (msgpack.packb({"v": 2, "op": "ping"}), "bad_request"),
        (msgpack.packb({"v": 1, "op": 7}), "bad_request"),
        (msgpack.packb({"v": 1, "op": "shutdown"}), "unknown_op"),
        (msgpack.packb({"v": 1, "op": "schema"}), "bad_request"),
        (msgpack.packb({"v": 1, "op": "schema", "model": 5}), "bad_request"),
        (msgpack.packb({"v": 1, "op": "schema", "model": "nope"}), "unknown_model"),
        (msgpack.packb({"v": 1, "op": "trade", "model": "m1"}), "bad_request"),
        (msgpack.packb({"v": 1, "op": "trade", "model": "m1", "id": 1.5}), "bad_request"),
        (msgpack.packb({"v": 1, "op": "trade", "model": "m1", "id": "never"}), "not_found"),
        (msgpack.packb({"v": 1, "op": "schema", "model": "\u00e9\x01"}), "unknown_model"),
    ]
    for frame, code in cases:
        rep = d.query_raw(frame)
        assert rep["v"] == 1 and rep["ok"] is False and rep["code"] == code, (frame[:20], rep)
        assert isinstance(rep["error"], str) and rep["error"]
    # A DEALER with no delimiter and one with two body frames both get answers.
    import zmq
    dealer = d.ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVTIMEO, 5000)
    dealer.connect(d.query_ep)
    dealer.send(msgpack.packb({"v": 1, "op": "ping"}))
    assert msgpack.unpackb(dealer.recv())["ok"]
    dealer.send_multipart([b"", msgpack.packb({"v": 1, "op": "ping"}), b"extra"])
    frames = dealer.recv_multipart()
    assert frames[0] == b"" and msgpack.unpackb(frames[-1])["code"] == "bad_request"
    dealer.close(linger=0)
    assert d.query("ping")["ok"]
    d.stop()
