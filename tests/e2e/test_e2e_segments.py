"""End to end: segments' own global state on glob/<model>/<segment>.

Trades tagged with a desk, segmented by desk; the importance of two
features trades places on desk B only.

- drift/: desk B's windows alert after the change, naming the two
  features that moved; desks A and C never alert (the model overall sees
  the change diluted by the other desks: it may or may not alert).
- glob/<model>/<segment>: every tracked segment's whole state, with a seq
  of its own (consecutive from 0 per topic); its means equal the float64
  mean over that desk's trades (from xpl/, 1e-9 relative).
- Clients: xplain.GlobalView follows one segment (and the overall view
  ignores the segments' messages although glob/seg matches them as a
  prefix); Subscriber(segments=...) keeps only the segments asked for.
- The `global` query with a segment carries the seq of the segment's
  last glob/ (the Clone pattern) and refuses a target: segments keep no
  per-class means.
- A snapshot keeps the segments' means and their glob/ seq.
"""
import os
import sys

import msgpack
import numpy as np

from xpltest import join, wait_until

sys.path.insert(0, os.path.join(os.path.dirname(__file__)))
from test_e2e_drift_modes import BEFORE, SWAPPED, W, Sender, attention, drain  # noqa: E402

sys.path.insert(0, os.path.join(os.environ["XPL_SOURCE_DIR"], "client", "python"))
import xplain  # noqa: E402

DESKS = ["A", "B", "C"]
PER_BATCH = 4


def stream(s, rng, first, last, shift_at):
    """Batches k in [first, last): PER_BATCH trades per desk each; desk B's
    importance swaps from batch shift_at on."""
    for k in range(first, last):
        tensors, tags = [], []
        for desk in DESKS:
            for _ in range(PER_BATCH):
                imp = SWAPPED if k >= shift_at and desk == "B" else BEFORE
                tensors.append(attention(rng, imp))
                tags.append({"desk": desk})
        s.send(tensors, tags)


def desk_of(trade_id):
    return DESKS[(trade_id % (len(DESKS) * PER_BATCH)) // PER_BATCH]


def close_rel(a, b, rel=1e-9):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= rel * np.maximum(np.abs(b), 1e-300)))


def last_by_topic(msgs):
    out = {}
    for topic, m in msgs:
        out[topic] = m
    return out


def test_segment_glob_topics_and_clients(daemon):
    d = daemon("--drift-window", str(W), "--segment-by", "desk", "--max-segments", "4",
               "--methods", "rollout,first_layer", "--glob-interval-ms", "50")
    s = Sender(d, "seg")
    glob = d.subscriber(b"glob/seg")
    drift = d.subscriber(b"drift/seg")
    xpl = d.subscriber(b"xpl/seg")
    for sub in (glob, drift, xpl):
        join(d, s.pub, sub)
    rng = np.random.default_rng(11)
    windows = 6
    batches = windows * W // PER_BATCH
    stream(s, rng, 0, batches // 2, batches // 2)
    # The clients join halfway: their snapshots then updates must agree.
    overall = xplain.GlobalView(d.publish, d.query_ep, "seg")
    view_b = xplain.GlobalView(d.publish, d.query_ep, "seg", segment="desk=B")
    only_overall = xplain.Subscriber(d.publish, models=["seg"], kinds=("glob", "drift"),
                                     segments=[None])
    only_b = xplain.Subscriber(d.publish, models=["seg"], kinds=("glob", "drift"),
                               segments=["desk=B"])
    try:
        assert view_b.state is not None and view_b.state["segment"] == "desk=B", view_b.state
        assert view_b.state["count"] == windows * W // 2, view_b.state["count"]
        for sub in (only_overall, only_b):
            join(d, s.pub, sub._sock)
        stream(s, rng, batches // 2, batches, batches // 2)
        total = windows * W * len(DESKS)
        wait_until(lambda: d.query("global", model="seg", segment="desk=C")["count"]
                   == windows * W, what="desk=C's trades in its global state")

        # drift/: the alert on desk B only, naming what moved.
        for desk in DESKS:
            seg = f"desk={desk}"
            wait_until(lambda: d.query("drift", model="seg", method="rollout", segment=seg)
                       ["methods"]["rollout"]["windows"] == windows, what=f"{seg}'s windows")
        dmsgs = drain(drift)
        alerted = {}
        for topic, m in dmsgs:
            if m["method"] == "rollout":
                alerted.setdefault(m.get("segment"), []).append(m["alert"])
                if m["alert"]:
                    assert {mv["feature"] for mv in m["moved"][:2]} == {"f0", "f4"}, m["moved"]
        assert alerted["desk=B"] == [False] * (windows // 2) + [True] * (windows // 2), alerted
        assert not any(alerted["desk=A"]) and not any(alerted["desk=C"]), alerted

        # glob/<model>/<segment>: the topics, their seqs, their bodies.
        wait_until(lambda: overall.poll(0.05) >= 0 and overall.state["count"] == total,
                   what="the overall view to reach every trade")
        gmsgs = []
        wait_until(lambda: gmsgs.extend(drain(glob)) or any(
            t == "glob/seg/desk=B" and m["count"] == windows * W for t, m in gmsgs),
            what="glob/seg/desk=B with every trade of desk B")
        seqs = {}
        for topic, m in gmsgs:
            seqs.setdefault(topic, []).append(m["seq"])
            want = "glob/seg" + (f"/{m['segment']}" if "segment" in m else "")
            assert topic == want, (topic, m.get("segment"))
            assert m["model"] == "seg", m
        assert sorted(seqs) == ["glob/seg", "glob/seg/desk=A", "glob/seg/desk=B",
                                "glob/seg/desk=C"], sorted(seqs)
        for topic, q in seqs.items():
            assert q == list(range(q[0], q[0] + len(q))), (topic, q)
            if topic != "glob/seg":
                assert q[0] == 0, (topic, q)     # the subscriber was there from the start

        # Means: float64 mean over the desk's trades of the float32 vectors.
        vec = {}
        while xpl.poll(200):
            m = msgpack.unpackb(xpl.recv_multipart()[1])
            vec[m["id"]] = {k: np.array(v, np.float32).astype(np.float64)
                            for k, v in m["attr"].items()}
        assert len(vec) == total, len(vec)
        last = last_by_topic(gmsgs)
        for desk in DESKS:
            body = last[f"glob/seg/desk={desk}"]
            assert body["segment"] == f"desk={desk}" and body["count"] == windows * W, body["count"]
            assert "targets" not in body, "segments keep no per-class means"
            for method in ("rollout", "first_layer"):
                ref = np.mean([v[method] for i, v in vec.items() if desk_of(i) == desk], axis=0)
                st = body["methods"][method]
                assert st["count"] == windows * W
                assert close_rel(st["mean"], ref), (desk, method, st["mean"], ref)
        assert last["glob/seg"]["count"] == total and "segment" not in last["glob/seg"]

        # The segment's view followed its own topic only; the overall one
        # never took a segment's message for its own.
        wait_until(lambda: view_b.poll(0.05) >= 0 and view_b.state["count"] == windows * W,
                   what="the desk=B view to reach every trade of desk B")
        ref_b = np.mean([v["rollout"] for i, v in vec.items() if desk_of(i) == "B"], axis=0)
        assert close_rel(view_b.mean("rollout"), ref_b)
        assert view_b.updates >= 1 and view_b.restarts == 0 and view_b.seq == last["glob/seg/desk=B"]["seq"]
        assert overall.restarts == 0 and "segment" not in overall.state, overall.state.keys()
        assert overall.seq == last["glob/seg"]["seq"], (overall.seq, last["glob/seg"]["seq"])
        ref_all = np.mean([v["rollout"] for v in vec.values()], axis=0)
        assert close_rel(overall.mean("rollout"), ref_all)

        # Subscriber(segments=...): only what was asked for.
        def updates(sub):
            out = []
            while True:
                u = sub.recv(timeout=0.3)
                if u is None:
                    return out
                out.append(u)
        got_overall, got_b = updates(only_overall), updates(only_b)
        assert got_overall and all(u.segment is None for u in got_overall), got_overall
        assert {u.kind for u in got_overall} == {"glob", "drift"}, got_overall
        assert got_b and all(u.segment == "desk=B" for u in got_b), got_b
        assert {u.kind for u in got_b} == {"glob", "drift"}, got_b
        assert any(u.kind == "drift" and u["alert"] for u in got_b), got_b

        # The global query: the Clone pattern's seq, and no per-class means.
        g = d.query("global", model="seg", segment="desk=A")
        assert g["ok"] and g["seq"] == last["glob/seg/desk=A"]["seq"], (g["seq"], seqs)
        e = d.query("global", model="seg", segment="desk=A", target=1)
        assert not e["ok"] and e["code"] == "bad_argument" and "per-class" in e["error"], e
        assert d.query("global", model="seg", segment="desk=Z")["code"] == "not_found"
    finally:
        for c in (overall, view_b, only_overall, only_b):
            c.close()


def test_snapshot_keeps_segment_globs(daemon, tmp_dir):
    args = ("--state-dir", tmp_dir, "--drift-window", str(W), "--segment-by", "desk",
            "--methods", "rollout", "--glob-interval-ms", "50")
    d = daemon(*args)
    s = Sender(d, "st")
    stream(s, np.random.default_rng(3), 0, 2 * W // PER_BATCH, W // PER_BATCH)
    segs = [f"desk={k}" for k in DESKS]
    wait_until(lambda: all(d.query("global", model="st", segment=g)["count"] == 2 * W
                           for g in segs), what="every desk's trades in its global state")
    before = {g: d.query("global", model="st", segment=g) for g in segs}
    assert "snapshot written" in d.stop()
    d = daemon(*args)
    glob = d.subscriber(b"glob/st/desk=B")
    s = Sender(d, "st")
    join(d, s.pub, glob)
    for g in segs:
        after = d.query("global", model="st", segment=g)
        assert after["count"] == before[g]["count"], g
        assert after["epoch"] == before[g]["epoch"], g
        st, st0 = after["methods"]["rollout"], before[g]["methods"]["rollout"]
        for k in ("mean", "std", "decayed"):
            assert st[k] == st0[k], (g, k)
        # The topic's numbering goes on: a clone does not take the daemon
        # for one that restarted without its state.
        assert after["seq"] >= before[g]["seq"], (g, after["seq"], before[g]["seq"])
    # The next trades of desk B go out on its topic after the restored seq.
    s.sent, s.seq = 2 * W * len(DESKS), 1 << 20
    stream(s, np.random.default_rng(4), 0, 1, 0)
    got = []
    wait_until(lambda: got.extend(drain(glob)) or any(m["count"] == 2 * W + PER_BATCH
                                                      for _, m in got),
               what="glob/st/desk=B after the restart")
    assert all(m["seq"] > before["desk=B"]["seq"] for _, m in got), (
        [m["seq"] for _, m in got], before["desk=B"]["seq"])


def test_xplainctl_tail_and_top_segment(daemon):
    """xplainctl tail --drift --segment shows one segment's closed windows
    with the verdict and what moved (libxplain's decode of drift/ on a
    live daemon); top lists a segment's alerts with what moved."""
    import subprocess
    import time
    d = daemon("--drift-window", str(W), "--segment-by", "desk", "--methods", "rollout")
    s = Sender(d, "tl")
    rng = np.random.default_rng(21)
    stream(s, rng, 0, W // PER_BATCH, 0)    # desk B's baseline window (B shifted from the start)
    ctl = [os.path.join(os.environ.get("XPL_BUILD_DIR", "build"), "client", "xplainctl"),
           "--query", d.query_ep, "--sub", d.publish]
    env = dict(os.environ, TERM="dumb")
    env.pop("LANG", None)
    env.pop("LC_ALL", None)
    tail = subprocess.Popen(ctl + ["tail", "--drift", "--segment", "desk=B", "--model", "tl",
                                   "--count", "1", "--json", "--wait", "120000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        # Desk B's baseline had f0 and f4 swapped; its next windows have
        # not: each of them alerts. They keep closing until the tail has
        # printed one (it may have subscribed after the first ones).
        k = W // PER_BATCH
        deadline = time.monotonic() + 90
        while tail.poll() is None:
            assert time.monotonic() < deadline, "xplainctl tail to print a window of desk=B"
            stream(s, rng, k, k + 1, k + 1)
            k += 1
        out, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    import json
    w = json.loads(lines[0])
    assert w["model"] == "tl" and w["segment"] == "desk=B" and w["method"] == "rollout", w
    assert w["verdict"]["mode"] == "fixed" and w["compared"] and w["reference"] == "baseline", w
    assert w["alert"] and w["verdict"]["alerts"], w
    assert len(w["moved"]) == 5 and {m["feature"] for m in w["moved"][:2]} == {"f0", "f4"}, w
    assert all(m["rank_up"] == m["ref_rank"] - m["rank"] for m in w["moved"]), w["moved"]
    by_name = {m["feature"]: m for m in w["moved"]}
    # f0 is back on top, f4 fell from it: their changes and ranks say so.
    assert by_name["f0"]["delta"] > 0 and by_name["f0"]["rank_up"] > 0, by_name["f0"]
    assert by_name["f4"]["delta"] < 0 and by_name["f4"]["rank_up"] < 0, by_name["f4"]
    dq = d.query("drift", model="tl", segment="desk=B", method="rollout")
    assert dq["alerts"], "desk B alerted"
    p = subprocess.run(ctl + ["top", "--model", "tl", "--once", "--ascii"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    alert_lines = [line for line in p.stdout.splitlines() if "desk=B" in line and " moved " in line]
    assert alert_lines and "f0" in alert_lines[0] and "f4" in alert_lines[0], p.stdout
