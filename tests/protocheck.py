"""Shared by the tests of proto/'s example messages (test_proto_*.py):
the example set's own loader, proto/examples/make.py, imported as the
module `mk`, and a counter of checks so that a test reports every
mismatch it finds rather than stopping at the first."""
import importlib.util
import os

SOURCE = os.environ.get("XPL_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..")
PROTO = os.path.join(SOURCE, "proto")
EXAMPLES = os.path.join(PROTO, "examples")

_spec = importlib.util.spec_from_file_location("proto_examples_make", os.path.join(EXAMPLES, "make.py"))
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)


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
