"""The daemon against proto/examples/: a real xplaind fed the ingest
examples must publish and reply messages with exactly the keys, types
and structure of the output examples (xpl/, glob/, drift/, heads/,
reply/), and the same values except the clock fields each example lists
as normalised (floats within 1e-5); and a real xplaind must count every
reject/ example under its reason and no other.

Talks to the daemon with plain pyzmq + msgpack through
proto/examples/make.py (the same replay that captured the examples), no
project code. Run by Debian's /usr/bin/python3.
"""
import os
import sys
import time

import msgpack
import pytest

from protocheck import EXAMPLES, SOURCE, Checks, compare, load, mk

BUILD = os.environ.get("XPL_BUILD_DIR") or os.path.join(SOURCE, "build")
XPLAIND = os.path.join(BUILD, "daemon", "xplaind")

# Compared by type only: it changes with every release.
VOLATILE = [["version"]]

check = Checks()
all_checks_pass = check.fixture()


@pytest.fixture(scope="module")
def examples():
    ex = {m["example"]: m for m in load()}
    assert ex, "no examples in " + EXAMPLES
    return ex


def test_outputs(examples):
    """Replay the scenario from the input files on disk; compare."""
    frames = {n: m["frames_bytes"] for n, m in examples.items()
              if m["kind"] in ("ingest", "request")}
    for scenario in mk.SCENARIOS:
        for what, name in scenario:
            assert name in frames or name in examples, "%s is in make.py's scenarios but not on disk" % name
    frames.update({n: m["frames_bytes"] for n, m in examples.items() if m["kind"] == "reject"})
    replies, published = mk.run_scenario(XPLAIND, frames)
    for scenario in mk.SCENARIOS[1:]:
        replies.update(mk.run_scenario(XPLAIND, frames, scenario)[0])
    got = mk.select_outputs(replies, published)
    got.update(mk.variants_outputs(XPLAIND, frames))
    got.update(mk.shard_outputs(XPLAIND, frames))
    outputs = [m for m in examples.values()
               if m["kind"] in ("xpl", "glob", "drift", "heads", "state", "reply")]
    check(len(outputs) == len(got), "%d output examples on disk, the replay selects %d"
          % (len(outputs), len(got)))
    for m in outputs:
        name = m["example"]
        if name not in got:
            check(False, "%s: the replay has nothing for it" % name)
            continue
        kind, topic, raw, _ = got[name]
        if topic is not None:
            check(topic == m["topic"], "%s: topic %s, expected %s" % (name, topic, m["topic"]))
        skip = [n["path"] for n in m.get("normalised", [])] + VOLATILE
        try:
            want = mk.walk(m["body_bytes"])
            have = mk.walk(raw)
        except mk.MsgpackError as e:
            check(False, "%s: not msgpack: %s" % (name, e))
            continue
        diffs = compare(want, have, skip=skip)
        check(not diffs, "%s differs from what the daemon sends now:\n    %s"
              % (name, "\n    ".join(diffs[:10])))
        # The normalised fields are there, with the type they had.
        for n in m.get("normalised", []):
            nodes = mk.node_at(have, n["path"])
            check(all(x.t in ("int", "float64", "float32") for x in nodes),
                  "%s: normalised field %s is not a number" % (name, n["path"]))

    # Every message published has the keys of its kind's examples.
    keys = {}
    for m in outputs:
        if m["kind"] != "reply":
            keys.setdefault(m["kind"], set()).update(m["body"].keys())
    for topic, body in published:
        kind = topic.decode().split("/")[0]
        b = msgpack.unpackb(body)
        check(kind in keys and set(b) <= keys[kind],
              "%s: keys %s not in the %s examples" % (topic, sorted(set(b) - keys.get(kind, set())), kind))


def wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_rejections(examples):
    for m in sorted((m for m in examples.values() if m["kind"] == "reject"),
                    key=lambda m: m["example"]):
        name, x = m["example"], m["expect"]
        reason = x["reason"]
        r = mk.Replay(XPLAIND, x.get("daemon_args", []), watch=False)
        try:
            explained = 0
            for b in x.get("before", []):
                fr = examples[b]["frames_bytes"]
                r.send(fr)
                explained += len(msgpack.unpackb(fr[1])["ids"])
                assert wait(lambda: r.stats()["counters"]["explained"] == explained), \
                    "%s: %s was not explained:\n%s" % (name, b, r.stderr())
            st0 = r.stats()
            check(st0["counters"]["rejected"] == 0, "%s: a message of 'before' was rejected" % name)
            r.send(m["frames_bytes"])
            if x.get("reproducible", True) is False:
                ok = wait(lambda: r.stats()["counters"]["explained"] > explained)
                check(ok and r.stats()["counters"]["rejected"] == 0,
                      "%s: a daemon with memory should explain it" % name)
                continue
            ok = wait(lambda: r.stats()["counters"]["rejected"] >= 1)
            # The trades of the same message explained, if any.
            wait(lambda: r.stats()["counters"]["explained"] - explained >= x.get("explained", 0))
            st = r.stats()
            counted = {k: v for k, v in st["rejected"].items() if v}
            check(ok and counted == {reason: 1},
                  "%s: the daemon counted %s, expected {%r: 1}" % (name, counted, reason))
            check(st["counters"]["explained"] - explained == x.get("explained", 0),
                  "%s: %d trades explained, expected %d" % (name, st["counters"]["explained"] - explained,
                                                           x.get("explained", 0)))
        finally:
            log = r.stop()
        if x.get("reproducible", True) is not False:
            check(": %s: " % reason in log, "%s: no log line for the rejection" % name)
