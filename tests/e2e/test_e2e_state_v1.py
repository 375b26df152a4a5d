"""End to end: a state directory written by the first snapshot format
(tests/unit/data/snapshot-v1, made by make.py there with the daemon of
that time) still loads into today's daemon, which then answers the
global, drift and models queries exactly as the daemon that wrote it did
(timestamps of replies aside), and keeps doing so after it rewrote the
snapshot in the current format at its stop.
"""
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, TESTS)   # xpltest, when run without conftest.py

from xpltest import Daemon  # noqa: E402

FIXTURE = os.path.join(TESTS, "unit", "data", "snapshot-v1")


def _replies():
    with open(os.path.join(FIXTURE, "replies.json")) as f:
        return json.load(f)


def _daemon(state_dir, params):
    return Daemon("--state-dir", state_dir, "--methods", params["methods"],
                  "--drift-window", str(params["window"]), "--half-life", str(int(params["half_life"])),
                  "--max-targets", str(params["max_targets"]),
                  "--alerts-kept", str(params["alerts_kept"]))


def _recorded_part(got, want):
    """`got` restricted to the keys `want` has, at every depth."""
    if isinstance(want, dict) and isinstance(got, dict):
        return {k: _recorded_part(got[k], v) for k, v in want.items() if k in got}
    if isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        return [_recorded_part(g, w) for g, w in zip(got, want)]
    return got


def _same_as_recorded(d, replies):
    """Every recorded global/drift reply and the models list, as now."""
    checked = 0
    for key, want in replies.items():
        op, _, rest = key.partition("/")
        if op not in ("global", "drift"):
            continue
        model, epoch = rest.split("/")
        got = json.loads(json.dumps(d.query(op, model=model, epoch=int(epoch))))
        got.pop("ts", None)
        want = dict(want)
        want.pop("ts", None)
        # Fields added to the contract since (drift modes, segments) are
        # not in the recording: every recorded one must be as recorded.
        assert _recorded_part(got, want) == want, (key, got, want)
        checked += 1
    assert checked == 6, checked
    got = json.loads(json.dumps(d.query("models")))
    assert got == replies["models"], (got, replies["models"])


def _format(state_dir):
    with open(os.path.join(state_dir, "state.msgpack"), "rb") as f:
        head = f.read(12)
    assert head[:8] == b"XPLSTATE"
    return int.from_bytes(head[8:12], "little")


def test_format_1_snapshot_loads_and_answers_as_before():
    replies = _replies()
    with tempfile.TemporaryDirectory() as state_dir:
        shutil.copyfile(os.path.join(FIXTURE, "state.msgpack"),
                        os.path.join(state_dir, "state.msgpack"))
        assert _format(state_dir) == 1
        d = _daemon(state_dir, replies["_params"])
        try:
            _same_as_recorded(d, replies)
        finally:
            log = d.stop()
        assert "restored 3 model(s), 76 explained trades" in log, log
        # Written back in the current format, and that loads the same.
        assert _format(state_dir) == 2
        d = _daemon(state_dir, replies["_params"])
        try:
            _same_as_recorded(d, replies)
        finally:
            d.stop()
        assert not [f for f in os.listdir(state_dir) if "corrupt" in f]


def main():
    test_format_1_snapshot_loads_and_answers_as_before()
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
