"""Shared by the tests of proto/'s example messages (test_proto_*.py):
the example set's own generator, proto/examples/make.py, imported as the
module `mk` (its msgpack walker, JSON rendering and replay); the examples
on disk read back (load) and compared with what a daemon sends (compare);
and a counter of checks so that a test reports every mismatch it finds
rather than stopping at the first."""
import importlib.util
import json
import os

SOURCE = os.environ.get("XPL_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..")
PROTO = os.path.join(SOURCE, "proto")
EXAMPLES = os.path.join(PROTO, "examples")

_spec = importlib.util.spec_from_file_location("proto_examples_make", os.path.join(EXAMPLES, "make.py"))
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)


def load(kind=None):
    """Examples on disk: list of dicts (the .json) with "frames_bytes" (the
    frames in order) and "body_bytes" added, sorted by name."""
    out = []
    for k in mk.KINDS if kind is None else (kind,):
        d = os.path.join(EXAMPLES, k)
        if not os.path.isdir(d):
            continue
        for f in sorted(os.listdir(d)):
            if not f.endswith(".json"):
                continue
            with open(os.path.join(d, f)) as fh:
                meta = json.load(fh)
            frames = []
            for name in meta["frames"]:
                with open(os.path.join(d, name), "rb") as fh:
                    frames.append(fh.read())
            meta["frames_bytes"] = frames
            meta["body_bytes"] = frames[1] if len(frames) > 1 else frames[0]
            out.append(meta)
    return out


def compare(want, got, path="", skip=(), float_rel=1e-5, float_abs=1e-6):
    """Differences between two Node trees: structure, types and keys must
    match exactly (integers of any width and sign count as one type);
    values too, floats within a tolerance, except at `skip` paths (lists
    of segments, "*" for any key or index), where only the type counts."""
    diffs = []

    def skipped(p):
        for s in skip:
            if len(s) == len(p) and all(a == "*" or a == b for a, b in zip(s, p)):
                return True
        return False

    def rec(a, b, p):
        where = "/".join(str(x) for x in p) or "(body)"
        if a.t != b.t:
            diffs.append("%s: type %s, expected %s" % (where, b.t, a.t))
            return
        if a.t == "array":
            if len(a.items) != len(b.items):
                diffs.append("%s: %d items, expected %d" % (where, len(b.items), len(a.items)))
                return
            for k, (x, y) in enumerate(zip(a.items, b.items)):
                rec(x, y, p + [k])
            return
        if a.t == "map":
            ka = [k.v for k, _ in a.pairs]
            kb = [k.v for k, _ in b.pairs]
            if ka != kb:
                diffs.append("%s: keys %s, expected %s" % (where, [k.decode("utf-8", "replace") for k in kb],
                                                          [k.decode("utf-8", "replace") for k in ka]))
                return
            for (k, x), (_, y) in zip(a.pairs, b.pairs):
                rec(x, y, p + [k.v.decode("utf-8", "replace")])
            return
        if skipped(p):
            return
        if a.t in ("float32", "float64"):
            if not (abs(a.v - b.v) <= float_abs + float_rel * abs(a.v) or (a.v != a.v and b.v != b.v)):
                diffs.append("%s: %r, expected %r" % (where, b.v, a.v))
        elif a.v != b.v:
            diffs.append("%s: %r, expected %r" % (where, b.v, a.v))

    rec(want, got, [])
    return diffs


class Checks:
    """check(cond, what): count a check, print `what` when it fails;
    check.report() prints the totals and returns the exit status.
    check.fixture(): an autouse pytest fixture for the test module that
    holds `check`: every test starts with no failure counted and fails at
    its end, listing every failed check, when one failed."""

    def __init__(self):
        self.passed = self.failed = 0
        self.failures = []

    def __call__(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append(what)
            print("FAIL:", what)

    def report(self):
        print("%d passed, %d failed" % (self.passed, self.failed))
        return 1 if self.failed else 0

    def fixture(self):
        import pytest

        @pytest.fixture(autouse=True)
        def all_checks_pass():
            self.passed = self.failed = 0
            self.failures = []
            yield
            self.report()
            assert self.failed == 0, "%d of %d checks failed:\n%s" % (
                self.failed, self.failed + self.passed, "\n".join(self.failures))
        return all_checks_pass
