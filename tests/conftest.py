"""pytest fixtures and hooks of the Python tests (e2e/ and py/).

- a watchdog per test: a test (with its fixtures) still running after
  XPL_TEST_WATCHDOG seconds (default 300; the slowest e2e case takes
  about 45 s under ASan; a module can set a longer WATCHDOG_S) prints the stack of every thread and exits 1, long
  before ctest's own timeout kills it without a word; the daemons it
  started die with it (xpltest._die_with_parent);
- a failing test's report ends with the logs of the last three daemons
  started (CI shows only the test's own output);
- fixtures: `daemon` (start xplaind, stopped or killed at the end),
  `daemon_on_free_ports` (the same with TCP ports drawn below the
  ephemeral range, drawn again when taken meanwhile), `free_port`,
  `publisher`, `tmp_dir`.

The helpers themselves live in xpltest.py, importable by tests and by
helper processes alike. Run one test with
    /usr/bin/python3 -m pytest tests/e2e/test_e2e_state.py -k corrupt
or through ctest (each case is its own ctest test, named by its node id):
    ctest -R 'test_e2e_state.py::test_corrupt'
"""
import faulthandler
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# A test run by hand (not by ctest) finds the tree it lives in and the
# build directory `build` beside tests/.
os.environ.setdefault("XPL_SOURCE_DIR", os.path.dirname(HERE))
os.environ.setdefault("XPL_BUILD_DIR", os.path.join(os.path.dirname(HERE), "build"))
os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
sys.path.insert(0, HERE)

import xpltest  # noqa: E402

WATCHDOG = float(os.environ.get("XPL_TEST_WATCHDOG", "300"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # Setup, call and teardown of one test (module fixtures included in
    # the first and last test that use them) under one deadline. A module
    # of CPU-bound cases that a loaded machine slows many times over (a
    # training, networkx flows) sets a longer one, WATCHDOG_S.
    faulthandler.dump_traceback_later(max(WATCHDOG, getattr(item.module, "WATCHDOG_S", 0)), exit=True,
                                      file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and xpltest.started:
        rep.sections.append(("xplaind logs (the last daemons started)", xpltest.daemon_logs()))


def _stop_left(daemons):
    """Kill the daemons a test left running (it failed before stopping
    them, or only stopped some): none survives its test."""
    for d in daemons:
        if d.proc.poll() is None and d.final_log is None:
            d.kill()


@pytest.fixture
def daemon():
    """daemon(*args, **kw): start an xplaind (xpltest.Daemon: ipc://
    endpoints in a fresh temporary directory, ready when it returns).
    Stop it with d.stop() to check its exit status; any left running at
    the end of the test is killed."""
    mine = []

    def start(*args, **kw):
        d = xpltest.Daemon(*args, **kw)
        mine.append(d)
        return d
    yield start
    _stop_left(mine)


@pytest.fixture
def daemon_on_free_ports(daemon):
    """daemon_on_free_ports(n, args_of_ports, **kw) -> (daemon, ports):
    start a daemon with n TCP ports of 127.0.0.1 (args_of_ports(*ports)
    gives its arguments), drawing them again when one was taken between
    the draw and the bind."""
    def start(n, args_of_ports, **kw):
        return xpltest.on_free_ports(n, lambda *p: daemon(*args_of_ports(*p), **kw))
    return start


@pytest.fixture
def free_port():
    """free_port(): a TCP port of 127.0.0.1, free now, below the kernel's
    ephemeral range (xpltest.free_port)."""
    return xpltest.free_port


@pytest.fixture
def publisher():
    """publisher(d, sub=None, model="__probe"): a PUB socket connected to
    d's ingest endpoint and joined (xpltest.join: the daemon has explained
    a probe from it, and `sub`, when given, has received one)."""
    def make(d, sub=None, model="__probe"):
        p = d.publisher()
        xpltest.join(d, p, sub, model=model)
        return p
    return make


@pytest.fixture(autouse=True)
def _no_daemon_left():
    """Kill the daemons a test started itself (not its module's shared
    ones, started before) and left running because it failed."""
    n = len(xpltest.started)
    yield
    _stop_left(xpltest.started[n:])


@pytest.fixture
def tmp_dir():
    """A fresh directory of this test alone (tempfile: unique under ctest
    -j, short enough for ipc:// paths), removed at its end."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="xpltest-")
    yield d
    shutil.rmtree(d, ignore_errors=True)
