"""The real live model: examples/ft_transformer.py end to end.

An FT-Transformer is trained on scikit-learn's bundled breast-cancer data,
its test rows are streamed through the Python Publisher to a real xplaind
(started by the example), and the example checks the daemon's per-trade
vectors against tests/ref.py on the captured tensors. This test runs it
twice -- all 171 test rows in f32 batches of 8, then a short bf16 run with
larger batches -- and asserts from its JSON output and its printed table:

- every per-trade vector of every method matches the float64 reference to
  1e-5 relative (no failures, every trade, every value; `flow`, whose
  networkx reference takes seconds per trade, on the first 3 trades);
- the global attribution came from the daemon's `global` query, equals the
  mean of the received per-trade vectors, and the daemon's own Spearman rho
  against the permutation-importance reference equals the one computed here;
- the agreement table is printed, one row per method.

The example runs as a user runs it: the xplain package is built as a
wheel (pip wheel, Debian's setuptools, no PyPI) and installed into a fresh
`python3 -m venv --system-site-packages`, whose python runs the example
with no PYTHONPATH; the example reports where it imported xplain from, and
that must be the venv.

Needs python3-torch, python3-sklearn, python3-venv and python3-pip
(Debian); run by ctest with /usr/bin/python3 and XPL_BUILD_DIR /
XPL_SOURCE_DIR.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest

SOURCE = os.environ.get("XPL_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("XPL_BUILD_DIR") or os.path.join(SOURCE, "build")
XPLAIND = os.path.abspath(os.path.join(BUILD, "daemon", "xplaind"))
sys.path.insert(0, os.path.join(SOURCE, "tests"))

import pyvenv   # noqa: E402  (installs client/python into a venv)
EXAMPLE = os.path.abspath(os.path.join(SOURCE, "examples", "ft_transformer.py"))
METHODS = ["rollout", "grad_rollout", "first_layer", "attn_mean", "diag", "flow", "colsum",
           "grad_rollout_signed", "lrp_rollout"]
FLOW_CHECKED = 3   # the example's --flow-check default: networkx takes seconds per trade
NF = 30        # breast-cancer features (tokens without CLS)
# The watchdog of conftest.py: just under ctest's timeout of these cases (a
# safety net against a hang on a loaded machine, not a speed check).
WATCHDOG_S = 1750


# A safety net against a hang, not a speed check: the two trainings take
# minutes, and many times that on a loaded machine (441 s seen under load).
def run(python, venv, args, rows_expected, timeout=1500):
    with tempfile.TemporaryDirectory() as tmp:
        out_json = os.path.join(tmp, "result.json")
        cmd = [python, EXAMPLE, "--xplaind", XPLAIND, "--json", out_json] + args
        t0 = time.monotonic()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp,
                           timeout=timeout, env=pyvenv.clean_env(PYTHONDONTWRITEBYTECODE="1"))
        dt = time.monotonic() - t0
        print(p.stdout)
        assert p.returncode == 0, "example exited with %d" % p.returncode
        with open(out_json) as f:
            res = json.load(f)
    print("(%s: %.1f s)" % (" ".join(args), dt))
    m = re.search(r"^xplain (\S+) from (\S+)$", p.stdout, re.M)
    assert m, "the example did not say where xplain came from"
    assert m.group(2).startswith(venv + os.sep) and "site-packages" in m.group(2), \
        "xplain imported from %s, not from the venv %s" % (m.group(2), venv)

    assert res["ok"] is True
    assert res["trades"] == rows_expected
    assert res["accuracy"] > 0.9, "model trained badly: accuracy %.3f" % res["accuracy"]
    assert len(res["features"]) == NF and len(res["permutation_importance"]) == NF

    # Per-trade numbers: every method, every trade, every value, no failure.
    assert sorted(res["check"]) == sorted(METHODS), res["check"].keys()
    for m, c in res["check"].items():
        checked = FLOW_CHECKED if m == "flow" else rows_expected
        assert c["trades"] == checked, (m, c)
        assert c["values"] == checked * NF, (m, c)
        assert c["failures"] == 0 and c["max_rel"] <= 1e-5, (m, c)

    # The agreement table: from the daemon's global state, consistent with
    # the per-trade vectors and with the daemon's own rho.
    assert res["global_source"] == "global"
    rows = {t["method"]: t for t in res["table"]}
    assert sorted(rows) == sorted(METHODS)
    for m, t in rows.items():
        assert t["source"] == "global" and t["trades"] == rows_expected, t
        assert t["global_vs_mean_max_abs"] < 1e-6, t
        assert t["spearman"] is not None and -1.0 <= t["spearman"] <= 1.0, t
        assert t["daemon_spearman"] is not None and abs(t["daemon_spearman"] - t["spearman"]) < 1e-9, t
        assert len(t["top5"]) == 5
    text = p.stdout
    assert "agreement with permutation importance" in text
    for m in METHODS:
        pat = r"^\s+%s\s+global\s+%d\s+(-?\d\.\d{3})\s+(-?\d\.\d{3})\s+\S" % (m, rows_expected)
        hit = re.search(pat, text, re.M)
        assert hit, "no table row for %s" % m
        assert abs(float(hit.group(1)) - rows[m]["spearman"]) <= 0.0005
    assert "per-trade check: PASS" in text
    return res


@pytest.fixture(scope="module")
def venv():
    """(python, venv): client/python installed from a wheel into a fresh
    venv, as a user installs it."""
    import sklearn  # noqa: F401  (the test command installs python3-sklearn)
    import torch    # noqa: F401  (and python3-torch)
    assert os.access(XPLAIND, os.X_OK), "xplaind not built at %s" % XPLAIND
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        python, _ = pyvenv.install(tmp, wheel=True)
        venv = os.path.join(tmp, "venv")
        print("xplain installed from a wheel into %s (%.1f s)" % (venv, time.monotonic() - t0))
        yield python, venv


def test_f32_all_rows(venv):
    """All 171 test rows, f32, batches of 8 (B > 1 on the wire)."""
    run(*venv, ["--repeats", "5"], 171)


def test_bf16_short_training(venv):
    """bf16 on the wire, batches of 16, a short training run."""
    run(*venv, ["--dtype", "bf16", "--rows", "48", "--batch", "16", "--epochs", "3",
                "--repeats", "2"], 48)
