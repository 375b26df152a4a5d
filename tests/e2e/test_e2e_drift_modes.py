"""End to end: drift verdict modes, what moved, and segments by tags.

- Segments: trades tagged with a desk, segmented by desk. The importance
  of two features trades places on one desk only: that desk's windows
  alert (drift/<model>/desk=<d> and the drift query with its segment),
  naming the two features as those that moved most; the other desks
  never alert. Segments beyond --max-segments are counted, not tracked.
- Modes: the CUSUM mode stays silent through its calibration and the
  quiet windows after it, then alerts on the shift, and its verdict
  carries its evidence.
- Bad tags are refused with a named reason; the daemon keeps running.
"""
import os
import subprocess
import sys
import time

import msgpack
import numpy as np

from xplmetrics import parse, scrape, value
from xpltest import join, wait_until

sys.path.insert(0, os.path.join(os.environ["XPL_SOURCE_DIR"], "client", "python"))
import xplain  # noqa: E402

W = 40
BEFORE = [3.0, 2.5, 2.0, 1.5, 1.0, 0.5]
SWAPPED = [1.0, 2.5, 2.0, 1.5, 3.0, 0.5]   # f0 and f4 trade places
TOKENS = [f"f{j}" for j in range(6)] + ["CLS"]
L, H, N, CLS = 2, 2, 7, 6


def attention(rng, imp, noise=0.2):
    logits = rng.standard_normal((L, H, N, N)) * noise
    feat = np.insert(np.asarray(imp, float), CLS, 0.0)
    logits += 0.4 * feat[None, None, None, :]
    logits[:, :, CLS, :] += 1.5 * feat
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype("<f4")


class Sender:
    """Batches of trades with per-trade tags; waits for the daemon to have
    explained each batch, so that no message is dropped at a high-water
    mark and windows close where the test expects them."""

    def __init__(self, d, model, sub=None):
        """`sub`: a subscriber that must hear from the first trade on (join)."""
        self.d, self.model, self.seq, self.sent = d, model, 0, 0
        self.pub = d.publisher()
        join(d, self.pub, sub)

    def explained(self):
        for m in self.d.stats()["models"]:
            if m["model"] == self.model:
                return m["explained"]
        return 0

    def send(self, tensors, tags=None):
        body = {"v": 1, "model": self.model, "seq": self.seq, "ts": time.time_ns(),
                "ids": list(range(self.sent, self.sent + len(tensors))), "L": L, "H": H,
                "n": N, "dtype": "f32", "attn": b"".join(a.tobytes() for a in tensors),
                "cls": CLS, "tokens": TOKENS}
        if tags is not None:
            body["tags"] = tags
        self.pub.send_multipart([f"attn/{self.model}".encode(), msgpack.packb(body)])
        self.seq += 1
        self.sent += len(tensors)
        want = self.sent
        wait_until(lambda: self.explained() >= want, timeout=30,
                   what=f"the daemon to explain {want} trades of {self.model}")


def drain(sub):
    out = []
    while sub.poll(200):
        topic, body = sub.recv_multipart()
        out.append((topic.decode(), msgpack.unpackb(body)))
    return out


def test_segments(daemon_on_free_ports):
    d, (port,) = daemon_on_free_ports(1, lambda p: (
        "--drift-window", str(W), "--segment-by", "desk", "--max-segments", "4",
        "--methods", "rollout,first_layer", "--metrics", f"127.0.0.1:{p}"))
    desks = ["A", "B", "C"]
    s = Sender(d, "seg")
    sub = d.subscriber(b"drift/seg")
    xpl = d.subscriber(b"xpl/seg")      # 960 explanations: below its high-water mark
    join(d, s.pub, xpl)
    rng = np.random.default_rng(5)
    windows = 8
    per_batch = 4           # trades per desk per message
    for k in range(windows * W // per_batch):
        shifted = k >= (windows // 2) * W // per_batch
        tensors, tags = [], []
        for desk in desks:
            for _ in range(per_batch):
                imp = SWAPPED if shifted and desk == "B" else BEFORE
                tensors.append(attention(rng, imp))
                tags.append({"desk": desk, "venue": "X"})
        s.send(tensors, tags)
    # Every segment has closed its windows.
    for desk in desks:
        seg = f"desk={desk}"
        wait_until(lambda: d.query("drift", model="seg", method="rollout", segment=seg)
                   ["methods"]["rollout"]["windows"] == windows, what=f"{seg}'s windows")
    msgs = drain(sub)
    # Each topic numbers its own messages: no gap a subscriber would take
    # for a loss.
    seqs = {}
    for topic, m in msgs:
        seqs.setdefault(topic, []).append(m["seq"])
    assert sorted(seqs) == ["drift/seg", "drift/seg/desk=A", "drift/seg/desk=B",
                            "drift/seg/desk=C"], sorted(seqs)
    for topic, q in seqs.items():
        assert q == list(range(q[0], q[0] + len(q))), (topic, q)
    by = {}
    for topic, m in msgs:
        if m["method"] == "rollout":
            by.setdefault(m.get("segment"), []).append(m)
            want_topic = "drift/seg" + (f"/{m['segment']}" if "segment" in m else "")
            assert topic == want_topic, (topic, m.get("segment"))
    for desk in desks:
        seq = sorted(by[f"desk={desk}"], key=lambda m: m["window"])
        assert [m["window"] for m in seq] == list(range(windows)), desk
        alerts = [m["alert"] for m in seq]
        if desk == "B":
            assert alerts == [False] * (windows // 2) + [True] * (windows // 2), alerts
            for m in seq[windows // 2:]:
                named = {mv["feature"] for mv in m["moved"][:2]}
                assert named == {"f0", "f4"}, m["moved"]
                assert m["moved"][0]["delta"] * m["moved"][1]["delta"] < 0, m["moved"]
        else:
            assert not any(alerts), (desk, alerts)
    # The moved values are those of the window means against the
    # segment's baseline (its first window), in float64 from xpl/.
    vec = {}
    while xpl.poll(200):
        m = msgpack.unpackb(xpl.recv_multipart()[1])
        vec[m["id"]] = np.array(m["attr"]["rollout"], dtype=np.float32).astype(np.float64)
    assert len(vec) == len(desks) * windows * W, len(vec)
    per = len(desks) * per_batch
    desk_b = [vec[i] for i in sorted(vec) if (i % per) // per_batch == desks.index("B")]
    base = np.mean(desk_b[:W], axis=0)
    first = by["desk=B"][windows // 2]
    assert first["window"] == windows // 2
    cur = np.mean(desk_b[(windows // 2) * W:(windows // 2 + 1) * W], axis=0)
    order = sorted(range(len(cur)), key=lambda j: (-abs(cur[j] - base[j]), j))
    assert len(first["moved"]) == 5     # drift.moved_k's default
    assert [mv["index"] for mv in first["moved"]] == order[:5], first["moved"]
    for mv in first["moved"]:
        j = mv["index"]
        assert abs(mv["ref"] - base[j]) < 1e-12 and abs(mv["cur"] - cur[j]) < 1e-12, mv
        assert abs(mv["delta"] - (cur[j] - base[j])) < 1e-12, mv
    dq = d.query("drift", model="seg", segment="desk=B")
    assert dq["ok"] and dq["segment"] == "desk=B", dq
    assert sorted(dq["segments"]) == ["desk=A", "desk=B", "desk=C"], dq["segments"]
    assert dq["alerts"] and all(a["segment"] == "desk=B" for a in dq["alerts"]), dq["alerts"]
    assert all({mv["feature"] for mv in a["moved"][:2]} == {"f0", "f4"}
               for a in dq["alerts"] if a["method"] == "rollout")
    # The Python client takes the segment too.
    with xplain.Client(d.query_ep) as c:
        for desk in ("A", "C"):
            q = c.drift("seg", segment=f"desk={desk}")
            assert q["segment"] == f"desk={desk}" and q["alerts"] == [], (desk, q["alerts"])
        assert c.global_state("seg", segment="desk=B")["count"] == windows * W
    samples, _ = parse(scrape(port))
    for desk in desks:
        assert value(samples, "xplaind_segment_drift_alert", model="seg", method="rollout",
                     segment=f"desk={desk}") == (1 if desk == "B" else 0), desk
    assert value(samples, "xplaind_segments", model="seg") == 3
    assert value(samples, "xplaind_drift_mode", mode="fixed") == 1
    g = d.query("global", model="seg", segment="desk=A", method="rollout")
    assert g["ok"] and g["count"] == windows * W and g["segment"] == "desk=A", g
    e = d.query("drift", model="seg", segment="desk=Z")
    assert e["ok"] is False and e["code"] == "not_found", e
    # xplainctl top shows the segment's verdict and what moved, and lists
    # the segments under the model's own drift status.
    ctl = [os.path.join(os.environ.get("XPL_BUILD_DIR", "build"), "client", "xplainctl"),
           "--query", d.query_ep, "--sub", d.publish]
    env = dict(os.environ, TERM="dumb")
    p = subprocess.run(ctl + ["top", "--model", "seg", "--segment", "desk=B", "--once", "--ascii"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert "drift desk=B" in p.stdout and "ALERT" in p.stdout, p.stdout
    moved = [line for line in p.stdout.splitlines() if line.startswith("moved (rollout)")]
    assert len(moved) == 1 and "f0 " in moved[0] and "f4 " in moved[0], p.stdout
    p = subprocess.run(ctl + ["top", "--model", "seg", "--once", "--ascii"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert p.returncode == 0 and "segments  desk=A desk=B desk=C" in p.stdout, p.stdout
    # Two more desks: one fits (max 4), the other is counted.
    s.send([attention(rng, BEFORE) for _ in range(2)], [{"desk": "D"}, {"desk": "E"}])
    dq = d.query("drift", model="seg")
    assert sorted(dq["segments"]) == ["desk=A", "desk=B", "desk=C", "desk=D"], dq["segments"]
    assert dq["segments_overflow"] == 1, dq
    # A trade without the key, and one message's tags for all its trades.
    s.send([attention(rng, BEFORE)], [{"venue": "X"}])
    s.send([attention(rng, BEFORE)] * 2, {"desk": "A"})
    assert d.query("global", model="seg", segment="desk=A", method="rollout")["count"] == \
        windows * W + 2
    # Bad tags: refused with a reason, counted, the daemon carries on.
    before = d.stats()
    for bad in ({"desk": "a,b"}, {"desk": 3}, [{"desk": "A"}], "desk"):
        s.pub.send_multipart([b"attn/seg", msgpack.packb({
            "v": 1, "model": "seg", "seq": s.seq, "ts": 0, "ids": [0, 1], "L": L, "H": H, "n": N,
            "dtype": "f32", "attn": attention(rng, BEFORE).tobytes() * 2, "tags": bad})])
        s.seq += 1
    wait_until(lambda: sum(d.stats()["rejected"].values()) >= sum(before["rejected"].values()) + 4,
               what="the four bad-tag messages to be refused")
    rej = d.stats()["rejected"]
    for reason, n in (("bad_string", 1), ("wrong_type", 2), ("length", 1)):
        assert rej.get(reason, 0) - before["rejected"].get(reason, 0) == n, (reason, rej)
    s.send([attention(rng, BEFORE)], [{"desk": "A"}])


def test_cusum_mode(daemon):
    d = daemon("--drift-window", str(W), "--drift-mode", "cusum", "--drift-calib-windows", "5",
               "--methods", "rollout,first_layer")
    sub = d.subscriber(b"drift/cu")
    s = Sender(d, "cu", sub)    # sub joined before window 0 can close
    rng = np.random.default_rng(6)
    calib, quiet, after = 5, 6, 3
    windows = 1 + calib + quiet + after
    for k in range(windows * W // 10):
        imp = SWAPPED if k * 10 >= (1 + calib + quiet) * W else BEFORE
        s.send([attention(rng, imp) for _ in range(10)])
    wait_until(lambda: d.query("drift", model="cu", method="rollout")
               ["methods"]["rollout"]["windows"] == windows, what="cu's windows")
    seq = sorted((m for _, m in drain(sub) if m["method"] == "rollout"),
                 key=lambda m: m["window"])
    assert [m["window"] for m in seq] == list(range(windows))
    for m in seq:
        v = m["verdict"]
        assert v["mode"] == "cusum"
        if m["window"] == 0:
            assert not m["compared"] and m["moved"] == []
        elif m["window"] <= calib:
            assert v["calibrating"] and not m["alert"] and v["z"]["spearman"] is None, m
        elif m["window"] <= calib + quiet:
            assert not v["calibrating"] and not m["alert"], m
            assert v["cusum"]["spearman"] is not None
        else:
            assert m["alert"] and v["alerts"], m
            assert {mv["feature"] for mv in m["moved"][:2]} == {"f0", "f4"}, m["moved"]
    dq = d.query("drift", model="cu", method="rollout")
    assert dq["mode"]["mode"] == "cusum" and dq["mode"]["calib_windows"] == calib
    assert dq["mode"]["cusum_arl"] > 1000, dq["mode"]
    mu, sd = dq["methods"]["rollout"]["scale"]["spearman"]
    assert 0 <= mu < 0.2 and sd > 0, (mu, sd)
    assert dq["segments"] == [] and dq["segment"] is None


def test_restart_keeps_modes_and_segments(daemon, tmp_dir):
    """A snapshot keeps each method's calibration and CUSUM, the last
    windows' verdicts and what moved, the segments with their own state,
    and the alerts with theirs: after a restart the drift replies are the
    same, and the next windows are judged, not calibrated again."""
    args = ("--state-dir", tmp_dir, "--drift-window", str(W), "--drift-mode", "cusum",
            "--drift-calib-windows", "3", "--segment-by", "desk",
            "--methods", "rollout,first_layer")
    rng = np.random.default_rng(8)

    def stream(s, windows, shifted):
        for _ in range(windows * W // 4):
            tensors, tags = [], []
            for desk in ("A", "B"):
                for _ in range(4):
                    tensors.append(attention(rng, SWAPPED if shifted and desk == "B" else BEFORE))
                    tags.append({"desk": desk})
            s.send(tensors, tags)

    segs = (None, "desk=A", "desk=B")
    d = daemon(*args)
    s = Sender(d, "st")
    stream(s, 5, False)
    stream(s, 2, True)
    before = {seg: d.query("drift", model="st", segment=seg) for seg in segs}
    assert before["desk=B"]["alerts"], "the shifted desk alerted before the restart"
    assert "snapshot written" in d.stop()
    d = daemon(*args)
    for seg in segs:
        assert d.query("drift", model="st", segment=seg) == before[seg], seg
    s = Sender(d, "st")
    s.sent, s.seq = 7 * W * 2, 1 << 20
    stream(s, 1, True)
    q = d.query("drift", model="st", segment="desk=B", method="rollout")
    last = q["methods"]["rollout"]["last"]
    assert last["window"] == 7 and not last["verdict"]["calibrating"], last
    assert last["alert"] and {mv["feature"] for mv in last["moved"][:2]} == {"f0", "f4"}, last
