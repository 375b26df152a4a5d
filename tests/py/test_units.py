"""systemd/xplaind@.service, the template unit (one configuration per
instance, for several shards on one host), against systemd/xplaind.service:

- line for line the same unit but for the instance lines: Description,
  the --config path (/etc/xplaind/%i.conf), StateDirectory= and
  RuntimeDirectory= (xplaind/%i), and the comments that say so; so every
  hardening setting of the single unit holds for each instance;
- `systemd-analyze verify` accepts an instance of it (xplaind@shard0),
  with the binary path pointed at the built daemon; skipped without
  systemd-analyze (Debian package systemd).

Run by Debian's /usr/bin/python3 (python3-pytest).
"""
import os
import shutil
import subprocess
import tempfile

import pytest

from xpltest import BUILD, SOURCE

# template line -> the single unit's line
INSTANCE_LINES = {
    "Description=xplaind %i, streaming attention-attribution explainer daemon":
        "Description=xplaind, streaming attention-attribution explainer daemon",
    "ExecStart=/usr/sbin/xplaind --config /etc/xplaind/%i.conf":
        "ExecStart=/usr/sbin/xplaind --config /etc/xplaind/xplaind.conf",
    "ExecReload=/usr/sbin/xplaind --check-config --config /etc/xplaind/%i.conf":
        "ExecReload=/usr/sbin/xplaind --check-config --config /etc/xplaind/xplaind.conf",
    "StateDirectory=xplaind/%i": "StateDirectory=xplaind",
    "RuntimeDirectory=xplaind/%i": "RuntimeDirectory=xplaind",
}


def settings(path, instance=False):
    """The unit's non-comment lines, instance lines mapped to the single unit's."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if instance:
                assert "%i" not in line or line in INSTANCE_LINES, "unexpected instance line: " + line
                line = INSTANCE_LINES.get(line, line)
            out.append(line)
    return out


def test_template_is_the_single_unit_per_instance():
    single = settings(os.path.join(SOURCE, "systemd", "xplaind.service"))
    template = settings(os.path.join(SOURCE, "systemd", "xplaind@.service"), instance=True)
    assert template == single
    with open(os.path.join(SOURCE, "systemd", "xplaind@.service")) as f:
        text = f.read()
    for line in INSTANCE_LINES:
        assert line in text.splitlines(), "the template lost: " + line


def test_systemd_analyze_verifies_an_instance():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    daemon = os.path.join(BUILD, "daemon", "xplaind")
    if not os.access(daemon, os.X_OK):
        pytest.skip("no built daemon at " + daemon)
    with open(os.path.join(SOURCE, "systemd", "xplaind@.service")) as f:
        text = f.read().replace("/usr/sbin/xplaind ", daemon + " ")
    with tempfile.TemporaryDirectory(prefix="xpl-units-") as d:
        with open(os.path.join(d, "xplaind@.service"), "w") as f:
            f.write(text)
        env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice")
        p = subprocess.run(["systemd-analyze", "verify", "--man=no", os.path.join(d, "xplaind@shard0.service")],
                           env=env, capture_output=True, text=True)
        assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
            "systemd-analyze verify complains (exit %d):\n%s%s" % (p.returncode, p.stdout, p.stderr)

