"""The installed client: `cmake --install --component xplain` into a
temporary prefix gives xplainctl, libxplain (shared and static), its
headers, xplain.pc and the CMake package; a C program then builds against
it with `pkg-config` and with `find_package(xplain)` (both libraries), and
runs. Run by Debian's /usr/bin/python3.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

BUILD = os.environ.get("XPL_BUILD_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "build")


def _sanitized():
    """Was BUILD configured with XPL_SANITIZE? Its libxplain then needs the
    ASan/UBSan runtime, so the consumer programs are built with it too."""
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
            return any(line.strip() in ("XPL_SANITIZE:BOOL=ON", "XPL_SANITIZE:BOOL=TRUE")
                       for line in f)
    except OSError:
        return False


SANITIZE = ["-fsanitize=address,undefined"] if _sanitized() else []

CONSUMER = r"""
#include <xplain/xplain.h>
#include <stdio.h>
#include <string.h>

int
main(void)
{
    /* No daemon there: the call must time out with the library's error. */
    xpl_client_t *c = xpl_client_new("ipc:///nonexistent/xplain-install-test");
    if (!c)
        return 1;
    xpl_client_set_timeout(c, 50);
    int rc = xpl_client_ping(c, NULL, 0, NULL);
    int ok = rc == -1 && xpl_errno() == XPL_ETIMEOUT;
    xpl_client_destroy(&c);
    printf("%s %s\n", ok ? "ok" : "bad", xpl_version());
    return ok ? 0 : 1;
}
"""

CMAKELISTS = """
cmake_minimum_required(VERSION 3.13)
project(consumer C)
find_package(xplain 0.1 REQUIRED)
add_executable(use_shared main.c)
target_link_libraries(use_shared PRIVATE xplain::xplain)
add_executable(use_static main.c)
target_link_libraries(use_static PRIVATE xplain::xplain_static)
"""


def run(*cmd, env=None, cwd=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def libdir(prefix):
    for d in ("lib", "lib64", "lib/x86_64-linux-gnu"):
        if os.path.exists(os.path.join(prefix, d, "pkgconfig", "xplain.pc")):
            return os.path.join(prefix, d)
    raise AssertionError("xplain.pc not installed")


@pytest.fixture(scope="module")
def prefix():
    """libxplain installed (component xplain) into a fresh prefix."""
    tmp = tempfile.mkdtemp(prefix="xplinstall-")
    prefix = os.path.join(tmp, "prefix")
    run("cmake", "--install", BUILD, "--prefix", prefix, "--component", "xplain")
    yield prefix
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def work(prefix):
    """A consumer project: main.c and its CMakeLists.txt."""
    work = tempfile.mkdtemp(prefix="xplconsumer-")
    with open(os.path.join(work, "main.c"), "w") as f:
        f.write(CONSUMER)
    with open(os.path.join(work, "CMakeLists.txt"), "w") as f:
        f.write(CMAKELISTS)
    yield work
    shutil.rmtree(work, ignore_errors=True)


def test_layout(prefix):
    lib = libdir(prefix)
    for f in ["include/xplain/xplain.h", "include/xplain/xpl_view.h", "bin/xplainctl"]:
        assert os.path.exists(os.path.join(prefix, f)), f
    for f in ["libxplain.a", "libxplain.so", "cmake/xplain/xplainConfig.cmake",
              "cmake/xplain/xplainConfigVersion.cmake", "cmake/xplain/xplainTargets.cmake"]:
        assert os.path.exists(os.path.join(lib, f)), f
    # The installed tool finds its library through its RPATH.
    out = run(os.path.join(prefix, "bin", "xplainctl"), "--version")
    assert out.startswith("xplainctl "), out
    # Only xpl_* is exported by the shared library.
    out = run("nm", "-D", "--defined-only", os.path.join(lib, "libxplain.so"))
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert names and all(n.startswith("xpl_") for n in names), [n for n in names if n[:4] != "xpl_"]


def test_pkg_config(prefix, work):
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(libdir(prefix), "pkgconfig"))
    flags = run("pkg-config", "--cflags", "--libs", "xplain", env=env).split()
    assert "-lxplain" in flags, flags
    assert run("pkg-config", "--modversion", "xplain", env=env).strip() == "0.1.0"
    exe = os.path.join(work, "use_pc")
    run("gcc", "-Wall", "-Werror", *SANITIZE, os.path.join(work, "main.c"), "-o", exe, *flags,
        env=env)
    out = run(exe, env=dict(env, LD_LIBRARY_PATH=libdir(prefix)))
    assert out.startswith("ok 0.1.0"), out


def test_find_package(prefix, work):
    build = os.path.join(work, "build")
    run("cmake", "-S", work, "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}",
        "-DCMAKE_C_FLAGS=" + " ".join(SANITIZE))
    run("cmake", "--build", build)
    for exe in ["use_shared", "use_static"]:
        out = run(os.path.join(build, exe))
        assert out.startswith("ok 0.1.0"), (exe, out)
    # The static one does not need libxplain.so at run time.
    deps = run("ldd", os.path.join(build, "use_static"))
    assert "libxplain" not in deps, deps
    # A version the package does not satisfy is refused.
    with open(os.path.join(work, "CMakeLists.txt"), "w") as f:
        f.write(CMAKELISTS.replace("xplain 0.1", "xplain 1.0"))
    p = subprocess.run(["cmake", "-S", work, "-B", os.path.join(work, "build2"),
                        f"-DCMAKE_PREFIX_PATH={prefix}"], capture_output=True, text=True)
    assert p.returncode != 0 and "xplain" in p.stderr, p.stderr
