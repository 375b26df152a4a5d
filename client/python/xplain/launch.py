"""Start and stop a local xplaind, for examples, notebooks and tests.

    with Daemon(methods="rollout,grad_rollout") as d:
        pub = Publisher("m1", connect=d.ingest, tokens=..., cls=...)
        sub = Subscriber(d.publish, query=d.query)
        ...

The daemon binds its ingest SUB, PUB and query ROUTER on ipc:// endpoints
in a private temporary directory (or on the endpoints given), so nothing
collides with another instance; it runs in the foreground as a child
process (as README.md, "Running the daemon", describes) and is stopped
with SIGTERM, then SIGKILL, on stop() or at exit of the `with` block.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Optional, Sequence, Union

from . import curve
from .query import Client, XplainError


def find_xplaind(path: Optional[str] = None) -> str:
    """The xplaind binary: `path`, else $XPLAIND, else
    $XPL_BUILD_DIR/daemon/xplaind, else build*/daemon/xplaind of this
    source tree, else `xplaind` on PATH. Raises FileNotFoundError."""
    cands = [path, os.environ.get("XPLAIND")]
    if os.environ.get("XPL_BUILD_DIR"):
        cands.append(os.path.join(os.environ["XPL_BUILD_DIR"], "daemon", "xplaind"))
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    if os.path.isdir(root):
        builds = sorted((d for d in os.listdir(root) if d.startswith("build")),
                        key=lambda d: -os.path.getmtime(os.path.join(root, d)))
        cands += [os.path.join(root, d, "daemon", "xplaind") for d in builds]
    cands.append(shutil.which("xplaind"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    if path:
        raise FileNotFoundError("xplaind not found at %s" % path)
    raise FileNotFoundError("xplaind not found: give its path (--xplaind / XPLAIND) "
                            "or build it (cmake --build BUILD)")


class Daemon:
    """A child xplaind process.

    binary   path of xplaind (see find_xplaind)
    methods  value of --methods (None: the daemon's default)
    ingest, publish, query   endpoints; default ipc:// in a temp directory.
             The daemon binds ingest (--ingest-bind) unless
             ingest_connect is given (then it connects there instead).
    args     further command-line arguments
    log      file path for the daemon's stderr (default: in the temp dir)
    curve_secret, server_public  keys of an admitted client, for the ping
             that waits for the daemon to be ready when `args` turn
             --curve on (see xplain.curve)
    """

    def __init__(self, binary: Optional[str] = None, methods: Optional[str] = None,
                 ingest: Optional[str] = None, publish: Optional[str] = None, query: Optional[str] = None,
                 ingest_connect: Optional[str] = None, args: Sequence[str] = (), log: Optional[str] = None,
                 start_timeout: float = 10.0, curve_secret: Optional[Union[str, bytes]] = None,
                 server_public: Optional[Union[str, bytes]] = None) -> None:
        self.binary = find_xplaind(binary)
        self.dir = tempfile.mkdtemp(prefix="xplaind-")
        self.ingest = ingest or "ipc://%s/in" % self.dir
        self.ingest_connect = ingest_connect
        self.publish = publish or "ipc://%s/pub" % self.dir
        self.query = query or "ipc://%s/q" % self.dir
        self.log = log or os.path.join(self.dir, "xplaind.log")
        self.cmd = [self.binary]
        if ingest_connect:
            for ep in ([ingest_connect] if isinstance(ingest_connect, str) else ingest_connect):
                self.cmd += ["--ingest-connect", ep]
        else:
            self.cmd += ["--ingest-bind", self.ingest]
        self.cmd += ["--publish", self.publish, "--query", self.query]
        if methods:
            self.cmd += ["--methods", methods]
        self.cmd += list(args)
        self.start_timeout = start_timeout
        self.curve = curve.keys(curve_secret, server_public)
        self.proc = None
        self._logf = None

    def start(self) -> "Daemon":
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        with Client(self.query, timeout=0.5, curve_secret=self.curve) as q:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError("xplaind exited with status %d at start:\n%s"
                                       % (self.proc.returncode, self.log_text()))
                try:
                    q.ping()
                    return self
                except XplainError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError("xplaind did not answer ping within %.0f s:\n%s"
                                           % (self.start_timeout, self.log_text()))

    def log_text(self, tail: int = 4000) -> str:
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")[-tail:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM, wait, SIGKILL if needed; return the exit status."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            rc = self.proc.returncode
        if self._logf is not None:
            self._logf.close()
            self._logf = None
        return rc

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """tcp://host:PORT with a port that was free a moment ago (the daemon's
    flags take no port 0, so tests probe for one)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return "tcp://%s:%d" % (host, s.getsockname()[1])
