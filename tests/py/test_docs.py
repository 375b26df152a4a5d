"""Documentation is in step with the built binaries.

1. scripts/gen-docs.sh --check: the README's option table and security
   score, systemd/xplaind.conf and the generated parts of man/xplaind.8 and
   man/xplainctl.1 are what the built xplaind and xplainctl (and
   systemd-analyze) say now. When this fails, an option or a command
   changed: run `scripts/gen-docs.sh BUILD_DIR` and commit the result.
2. The example configuration is valid on its own (xplaind --check-config),
   and every default it documents is the real default: with every
   ";key = value" line uncommented the effective configuration
   (--print-config) is the same.
3. The manual pages render without a warning (groff -man -ww) and have a
   NAME section that whatis/apropos can read (lexgrog).

Run by /usr/bin/python3 with XPL_BUILD_DIR and XPL_SOURCE_DIR (ctest).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.abspath(os.environ.get("XPL_BUILD_DIR") or os.path.join(HERE, "..", "..", "build"))
SOURCE = os.path.abspath(os.environ.get("XPL_SOURCE_DIR") or os.path.join(HERE, "..", ".."))
XPLAIND = os.path.join(BUILD, "daemon", "xplaind")
CONF = os.path.join(SOURCE, "systemd", "xplaind.conf")


def run(*cmd):
    return subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=120)


def test_generated_docs_up_to_date():
    p = run(os.path.join(SOURCE, "scripts", "gen-docs.sh"), "--check", BUILD)
    assert p.returncode == 0, (
        "the generated documentation is out of date with the built binaries:\n"
        f"{p.stdout}{p.stderr}\n"
        f"=> run: scripts/gen-docs.sh {BUILD}  and commit what it writes")
    sys.stdout.write(p.stderr)        # e.g. that systemd-analyze is missing


def test_example_config_is_valid():
    p = run(XPLAIND, "--check-config", "--config", CONF)
    assert p.returncode == 0 and "configuration OK" in p.stdout, \
        f"xplaind --check-config rejects {CONF} (exit {p.returncode}):\n{p.stdout}{p.stderr}"


def test_documented_defaults_are_the_defaults():
    with open(CONF) as f:
        text = f.read()
    uncommented, n = re.subn(r"(?m)^;([a-z0-9_]+ =.*)$", r"\1", text)
    assert n >= 20, f"only {n} commented-out defaults in {CONF}"
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(uncommented)
    try:
        p = run(XPLAIND, "--check-config", "--config", f.name)
        assert p.returncode == 0, f"the documented defaults are not accepted:\n{p.stderr}"
        want = run(XPLAIND, "--print-config", "--config", CONF)
        got = run(XPLAIND, "--print-config", "--config", f.name)
        assert want.returncode == 0 and got.returncode == 0, want.stderr + got.stderr
        assert got.stdout == want.stdout, (
            "a default documented in xplaind.conf is not the real default:\n"
            + "".join(l for l in set(got.stdout.splitlines(True)) ^ set(want.stdout.splitlines(True))))
    finally:
        os.unlink(f.name)
    print(f"ok: {n} documented defaults are the real ones")


def test_man_pages_render():
    pages = [os.path.join(SOURCE, "man", p) for p in ("xplaind.8", "xplainctl.1")]
    if shutil.which("groff") is None:
        print("SKIP: groff not installed (Debian package groff-base): man pages not linted")
        return
    env = dict(os.environ, LC_ALL="C.UTF-8")
    for page in pages:
        p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page], env=env,
                           capture_output=True, text=True)
        assert p.returncode == 0 and not p.stderr.strip(), f"groff warns about {page}:\n{p.stderr}"
        p = subprocess.run(["groff", "-man", "-Tutf8", page], env=env, capture_output=True, text=True)
        plain = re.sub(r"\x1b\[[0-9;]*m", "", re.sub(r".\x08", "", p.stdout))
        assert "OPTIONS" in plain or "COMMANDS" in plain, f"{page} renders without its options"
        if shutil.which("lexgrog"):
            p = run("lexgrog", page)
            assert p.returncode == 0 and " - " in p.stdout, f"lexgrog cannot read NAME of {page}:\n{p.stdout}"
    print("ok: man pages render without warnings")
