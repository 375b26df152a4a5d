"""Install client/python the way a user does, for the tests that need the
installed package: a virtual environment with --system-site-packages (so
Debian's python3-zmq, -msgpack, -numpy, -torch are seen) and pip without
PyPI (--no-index --no-build-isolation: the build uses Debian's setuptools
and wheel). The source is copied first, so that pip's in-tree build
leaves nothing in the source tree and parallel tests do not share it.
"""
import os
import shutil
import subprocess
import sys

SOURCE = os.environ.get("XPL_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(SOURCE, "client", "python")
PIP_FLAGS = ["--no-index", "--no-build-isolation", "--no-cache-dir", "--disable-pip-version-check"]


def clean_env(**extra):
    """The environment without PYTHONPATH (and pip's own settings): the
    package must come from the installation, not from the source tree."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
    env.update(extra)
    return env


def run(cmd, timeout=300, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout, env=kw.pop("env", clean_env()), **kw)
    if p.returncode != 0:
        raise AssertionError("%s exited with %d:\n%s" % (" ".join(cmd), p.returncode, p.stdout))
    return p.stdout


def make_venv(tmp):
    """A fresh venv in tmp/venv made by Debian's /usr/bin/python3; returns
    its python."""
    venv = os.path.join(tmp, "venv")
    run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv])
    return os.path.join(venv, "bin", "python")


def copy_package(tmp):
    dst = os.path.join(tmp, "xplain-src")
    shutil.copytree(PACKAGE, dst, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    return dst


def install(tmp, wheel=False):
    """venv + `pip install <copy of client/python>` (or, wheel=True, build
    a wheel with `pip wheel` and install that). Returns (python, pip's
    output)."""
    py = make_venv(tmp)
    src = copy_package(tmp)
    if wheel:
        dist = os.path.join(tmp, "dist")
        out = run([py, "-m", "pip", "wheel", "--no-deps", "-w", dist] + PIP_FLAGS + [src])
        wheels = [f for f in os.listdir(dist) if f.endswith(".whl")]
        assert len(wheels) == 1, wheels
        target = os.path.join(dist, wheels[0])
    else:
        out, target = "", src
    out += run([py, "-m", "pip", "install"] + PIP_FLAGS + [target])
    return py, out


if __name__ == "__main__":
    # Manual use: python3 tests/pyvenv.py DIR [--wheel]
    print(install(sys.argv[1], "--wheel" in sys.argv)[0])
