"""Install: `cmake --install` into a temporary DESTDIR places every file,
the unit names the installed binary and configuration, the unit's
`systemd-analyze security` exposure is 2.0 or better, and the installed
daemon runs under the unit's sandbox.

1. `cmake --install BUILD --prefix /usr` with DESTDIR: binary, unit, example
   configuration (under /etc, not /usr/etc), man pages; the unit equals
   systemd/xplaind.service. The same with --prefix /opt/xpl: the unit's
   ExecStart/ExecReload and --config follow the prefix.
2. `systemd-analyze security --offline=true` on the installed unit: the
   "Overall exposure level" must be <= 2.0. `systemd-analyze verify` must be
   silent on a unit whose binary exists (an install with a real --prefix)
   and whose man pages are found (MANPATH). Skipped, saying so, only when
   systemd-analyze is not installed (scripts/deps.sh test installs it).
3. Sandbox: the installed xplaind, with the installed configuration, runs
   under an emulation of the unit's restrictions, built from the unit file
   itself: a private mount namespace (ProtectSystem=strict: everything
   read-only but the state and runtime directories; PrivateTmp,
   ProtectHome, PrivateDevices, ProtectProc=invisible with ProcSubset=pid,
   PrivateIPC), an unprivileged user with no capabilities at all and
   NoNewPrivileges, UMask, LimitNOFILE, Environment, and seccomp filters
   equal to systemd's for SystemCallFilter (expanded by `systemd-analyze
   syscall-filter`) with SystemCallErrorNumber, RestrictAddressFamilies,
   MemoryDenyWriteExecute and RestrictNamespaces (clone3 -> ENOSYS). It must
   send READY=1, STATUS= and WATCHDOG=1 over NOTIFY_SOCKET, answer a query,
   serve /metrics, explain the demo stream, reload on SIGHUP, and on SIGTERM
   send STOPPING=1, write its snapshot into the state directory and exit 0,
   logging no error. Skipped, saying so, when not root or when mount
   namespaces are not available. (`systemd-run` needs a running systemd,
   which a container does not have; this is the closest stand-in.)

Run by /usr/bin/python3 with XPL_BUILD_DIR and XPL_SOURCE_DIR (ctest).
"""
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.abspath(os.environ.get("XPL_BUILD_DIR") or os.path.join(HERE, "..", "..", "build"))
SOURCE = os.path.abspath(os.environ.get("XPL_SOURCE_DIR") or os.path.join(HERE, "..", ".."))
SANDBOX_UID = 61834          # stands in for the unit's DynamicUser=yes


def install(destdir, prefix):
    env = dict(os.environ, DESTDIR=destdir)
    p = subprocess.run(["cmake", "--install", BUILD, "--prefix", prefix], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, "cmake --install failed:\n" + p.stdout + p.stderr


def unit_directives(text):
    """[(key, value)] of a unit file, in order."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.append((key.strip(), value.strip()))
    return out


def check_files(destdir, prefix, sysconfdir):
    root = destdir + prefix
    files = {
        "binary": f"{root}/sbin/xplaind",
        "unit": f"{root}/lib/systemd/system/xplaind.service",
        "config": f"{destdir}{sysconfdir}/xplaind/xplaind.conf",
        "xplaind(8)": f"{root}/share/man/man8/xplaind.8",
        "xplainctl(1)": f"{root}/share/man/man1/xplainctl.1",
        "xplainctl": f"{root}/bin/xplainctl",
    }
    for what, path in files.items():
        assert os.path.isfile(path), f"{what} not installed at {path}"
    assert os.access(files["binary"], os.X_OK), "installed xplaind is not executable"
    with open(files["config"]) as f, open(os.path.join(SOURCE, "systemd", "xplaind.conf")) as g:
        assert f.read() == g.read(), "installed xplaind.conf differs from systemd/xplaind.conf"
    with open(files["unit"]) as f:
        unit = f.read()
    d = unit_directives(unit)
    conf = f"{sysconfdir}/xplaind/xplaind.conf"
    starts = [v for k, v in d if k == "ExecStart"]
    assert starts == [f"{prefix}/sbin/xplaind --config {conf}"], \
        f"ExecStart does not run the installed binary: {starts}"
    reloads = [v for k, v in d if k == "ExecReload"]
    assert reloads == [f"{prefix}/sbin/xplaind --check-config --config {conf}",
                       "/bin/kill -HUP $MAINPID"], f"ExecReload: {reloads}"
    assert destdir not in unit, "the DESTDIR leaked into the unit"
    return files, unit


def test_install_usr():
    with tempfile.TemporaryDirectory(dir=BUILD, prefix="install-test-") as dest:
        install(dest, "/usr")
        files, unit = check_files(dest, "/usr", "/etc")
        with open(os.path.join(SOURCE, "systemd", "xplaind.service")) as f:
            assert unit == f.read(), "for /usr the installed unit must be systemd/xplaind.service"
        d = dict(unit_directives(unit))
        for key, want in [("Type", "notify"), ("NotifyAccess", "main"), ("DynamicUser", "yes"),
                          ("StateDirectory", "xplaind"), ("RuntimeDirectory", "xplaind"),
                          ("Restart", "on-failure"), ("ProtectSystem", "strict"),
                          ("MemoryDenyWriteExecute", "yes"), ("NoNewPrivileges", "yes")]:
            assert d.get(key) == want, f"unit: {key}={d.get(key)}, want {want}"
        assert re.match(r"^\d+s?$", d.get("WatchdogSec", "")), "unit: no WatchdogSec"
        # The example configuration keeps its state where StateDirectory= is.
        with open(files["config"]) as f:
            assert re.search(r"(?m)^\[state\]\n(?:[;\n].*\n|\n)*?dir = /var/lib/xplaind$", f.read()), \
                "xplaind.conf: state.dir is not /var/lib/xplaind"
        score_unit(files["unit"])
        sandbox_run(dest)
    print("ok: install with --prefix /usr")


def test_install_opt():
    with tempfile.TemporaryDirectory(dir=BUILD, prefix="install-test-") as dest:
        install(dest, "/opt/xpl")
        check_files(dest, "/opt/xpl", "/etc/opt/xpl")
        # An operator's edited configuration is never overwritten.
        conf = f"{dest}/etc/opt/xpl/xplaind/xplaind.conf"
        with open(conf, "a") as f:
            f.write("; edited by the operator\n")
        install(dest, "/opt/xpl")
        assert open(conf).read().endswith("; edited by the operator\n"), "config overwritten"
        assert os.path.isfile(conf + ".dist"), "new example not installed beside the edited one"
    print("ok: install with --prefix /opt/xpl")


def score_unit(unit_path):
    if shutil.which("systemd-analyze") is None:
        print("SKIP: systemd-analyze is not installed (Debian package systemd): "
              "security score and verify not checked")
        return
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit_path],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\S+)", p.stdout)
    assert m, "no exposure level in systemd-analyze security output:\n" + p.stdout + p.stderr
    score = float(m.group(1))
    print(f"systemd-analyze security: {m.group(0)}")
    assert score <= 2.0, f"exposure {score} > 2.0:\n{p.stdout}"

    # verify: on an install with a real prefix, so that ExecStart exists.
    with tempfile.TemporaryDirectory(dir=BUILD, prefix="install-verify-") as prefix:
        install("", prefix)
        unit = f"{prefix}/lib/systemd/system/xplaind.service"
        env = dict(os.environ, MANPATH=f"{prefix}/share/man", SYSTEMD_LOG_LEVEL="notice")
        man = ["--man=yes"]
        if shutil.which("man") is None:
            print("note: man (Debian package man-db) is not installed: systemd-analyze verify "
                  "does not look up the unit's Documentation= pages")
            man = ["--man=no"]
        p = subprocess.run(["systemd-analyze", "verify"] + man + [unit], env=env,
                           capture_output=True, text=True)
        assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
            f"systemd-analyze verify complains (exit {p.returncode}):\n{p.stdout}{p.stderr}"


# ------------------------------------------------------------------ sandbox

def syscall_set(name, seen=None):
    """The system calls of a systemd syscall group, expanded recursively."""
    seen = set() if seen is None else seen
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                         text=True, check=True).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            calls |= syscall_set(line, seen)
    return calls


def unit_sandbox(unit):
    """What the emulation needs from the unit's [Service] settings."""
    allow, deny, errno_name, families, env = None, set(), None, None, {}
    mdwe = nons = False
    umask, nofile = 0o022, None
    for key, value in unit_directives(unit):
        if key == "SystemCallFilter":
            invert = value.startswith("~")
            names = set()
            for n in value.lstrip("~").split():
                names |= syscall_set(n)
            if invert:
                if allow is None:
                    deny |= names
                else:
                    allow -= names
            else:
                allow = (allow or set()) | names
                allow -= deny
        elif key == "SystemCallErrorNumber":
            errno_name = value
        elif key == "RestrictAddressFamilies":
            families = value.split()
        elif key == "MemoryDenyWriteExecute":
            mdwe = value == "yes"
        elif key == "RestrictNamespaces":
            nons = value == "yes"
        elif key == "UMask":
            umask = int(value, 8)
        elif key == "LimitNOFILE":
            nofile = int(value)
        elif key == "Environment":
            for kv in value.split():
                k, _, v = kv.partition("=")
                env[k] = v
    return {"allow": sorted(allow or []), "errno": errno_name, "families": families,
            "mdwe": mdwe, "restrict_namespaces": nons, "umask": umask, "nofile": nofile,
            "env": env}


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def seccomp_exec(spec, argv):
    """Load systemd-equivalent seccomp filters and exec argv (in the
    sandboxed, unprivileged process)."""
    import errno
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ALLOW, ERRNO = 0x7FFF0000, lambda e: 0x00050000 | e
    EQ, GT, MASKED_EQ = 4, 6, 7
    AF_MAX = 46

    def nr(name):
        return lib.seccomp_syscall_resolve_name(name.encode())

    def rule(ctx, action, name, *cmps):
        n = nr(name)
        if n < 0:
            return              # not a system call of this architecture
        arr = (ArgCmp * max(1, len(cmps)))(*[ArgCmp(*c) for c in cmps])
        rc = lib.seccomp_rule_add_array(ctx, action, n, len(cmps), arr)
        assert rc == 0, f"seccomp rule for {name}: {rc}"

    filters = []
    if spec["allow"]:
        e = getattr(errno, spec["errno"]) if spec["errno"] else None
        ctx = lib.seccomp_init(ERRNO(e) if e else 0x80000000)   # else KILL_PROCESS
        for name in spec["allow"]:
            rule(ctx, ALLOW, name)
        filters.append(ctx)
    ctx = lib.seccomp_init(ALLOW)
    if spec["families"] is not None:
        # socket() of every address family not listed: EAFNOSUPPORT.
        allowed = {getattr(socket, f) for f in spec["families"]}
        for d in range(AF_MAX):
            if d not in allowed:
                rule(ctx, ERRNO(errno.EAFNOSUPPORT), "socket", (0, EQ, d, 0))
        rule(ctx, ERRNO(errno.EAFNOSUPPORT), "socket", (0, GT, AF_MAX - 1, 0))
    if spec["mdwe"]:
        wx = 0x2 | 0x4          # PROT_WRITE | PROT_EXEC
        rule(ctx, ERRNO(errno.EPERM), "mmap", (2, MASKED_EQ, wx, wx))
        rule(ctx, ERRNO(errno.EPERM), "mprotect", (2, MASKED_EQ, 0x4, 0x4))
        rule(ctx, ERRNO(errno.EPERM), "pkey_mprotect", (2, MASKED_EQ, 0x4, 0x4))
        rule(ctx, ERRNO(errno.EPERM), "shmat", (2, MASKED_EQ, 0o100000, 0o100000))
    if spec["restrict_namespaces"]:
        for bit in (0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                    0x40000000, 0x80):
            rule(ctx, ERRNO(errno.EPERM), "unshare", (0, MASKED_EQ, bit, bit))
            rule(ctx, ERRNO(errno.EPERM), "clone", (0, MASKED_EQ, bit, bit))
        rule(ctx, ERRNO(errno.EPERM), "setns")
        rule(ctx, ERRNO(errno.ENOSYS), "clone3")    # flags are out of seccomp's sight
    filters.append(ctx)
    # The allow list goes last: seccomp() itself is not on it.
    for ctx in reversed(filters):
        rc = lib.seccomp_load(ctx)
        assert rc == 0, f"seccomp_load: {os.strerror(-rc)}"
    os.execv(argv[0], argv)


def sandbox_child(spec_path, dest, state, runtime):
    """Root, in a new mount and IPC namespace: build the unit's file-system
    view, then become the unprivileged user and exec the seccomp stage."""
    import json
    with open(spec_path) as f:
        spec = json.load(f)

    def sh(*cmd):
        subprocess.run(cmd, check=True, capture_output=True)

    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run")       # RuntimeDirectory=
    # This script, the installed tree and the spec may live under /tmp or
    # /home (a CI checkout), which the unit hides below: give them a place
    # under the new /run first.
    stage = "/run/.xpltest"
    os.makedirs(stage + "/dest")
    sh("mount", "--bind", dest, stage + "/dest")
    script = stage + "/test_install.py"
    open(script, "w").close()
    sh("mount", "--bind", os.path.abspath(__file__), script)
    shutil.copy(spec_path, stage + "/spec.json")
    os.chmod(stage + "/spec.json", 0o644)
    dest, spec_path = stage + "/dest", stage + "/spec.json"
    os.makedirs("/run/xplaind")
    sh("mount", "--bind", runtime, "/run/xplaind")
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/var/lib")   # StateDirectory=
    os.makedirs("/var/lib/xplaind")
    sh("mount", "--bind", state, "/var/lib/xplaind")
    # PrivateDevices=: a /dev of null, zero, full, random, urandom only.
    os.makedirs("/run/.dev")
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run/.dev")
    for d in ("null", "zero", "full", "random", "urandom"):
        open(f"/run/.dev/{d}", "w").close()
        sh("mount", "--bind", f"/dev/{d}", f"/run/.dev/{d}")
    os.makedirs("/run/.dev/shm")
    for i, n in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"/run/.dev/{n}")
    os.symlink("/proc/self/fd", "/run/.dev/fd")
    sh("mount", "--move", "/run/.dev", "/dev")
    for d in ("/tmp", "/var/tmp"):                                      # PrivateTmp=
        sh("mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", d)
    for d in ("/home", "/root", "/run/user"):                           # ProtectHome=
        if os.path.isdir(d):
            sh("mount", "-t", "tmpfs", "-o", "mode=0000", "tmpfs", d)
    # ProtectProc=invisible, ProcSubset=pid.
    sh("mount", "-t", "proc", "-o", "subset=pid,hidepid=invisible", "proc", "/proc")
    # ProtectSystem=strict (and ProtectKernelTunables=, ProtectControlGroups=):
    # every other mount read-only.
    keep = {"/run/xplaind", "/var/lib/xplaind", "/tmp", "/var/tmp", "/proc", "/dev"}
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for mp in points:
        mp = mp.encode().decode("unicode_escape")
        if mp in keep or mp.startswith("/proc/") or mp.startswith("/dev/"):
            continue
        subprocess.run(["mount", "-o", "remount,bind,ro", mp], capture_output=True)
    os.umask(spec["umask"])
    if spec["nofile"]:
        import resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]     # may not be raised here
        n = spec["nofile"] if hard == resource.RLIM_INFINITY else min(spec["nofile"], hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    env = dict(os.environ)
    env.update(spec["env"])
    # DynamicUser=, CapabilityBoundingSet=, AmbientCapabilities=, NoNewPrivileges=.
    os.execve("/usr/bin/setpriv",
              ["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
               "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs",
               "--", sys.executable, script, "--seccomp-exec", spec_path,
               "--", f"{dest}/usr/sbin/xplaind", "--config", f"{dest}/etc/xplaind/xplaind.conf"]
              + spec["args"], env)


def sandbox_run(dest):
    import json
    if shutil.which("systemd-analyze") is None:
        print("SKIP: sandbox run: systemd-analyze is not installed (needed to expand "
              "SystemCallFilter=)")
        return
    if os.geteuid() != 0:
        print("SKIP: sandbox run: needs root (mount namespace, setpriv)")
        return
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or shutil.which("setpriv") is None:
        print("SKIP: sandbox run: no mount namespaces here (unshare -m: %s)" % probe.stderr.strip())
        return
    import zmq
    import msgpack
    import urllib.request
    # Here, not at the top: the sandbox's child runs this file from a
    # bind mount, where tests/ is not beside it.
    sys.path.insert(0, os.path.dirname(HERE))
    from xpltest import free_port, wait_until

    os.chmod(dest, 0o755)           # a mkdtemp: the service user must reach the binary
    with open(f"{dest}/usr/lib/systemd/system/xplaind.service") as f:
        spec = unit_sandbox(f.read())
    assert spec["allow"], "the unit has no SystemCallFilter="
    work = tempfile.mkdtemp(dir=BUILD, prefix="sandbox-")
    os.chmod(work, 0o755)
    state, runtime = os.path.join(work, "state"), os.path.join(work, "run")
    for d in (state, runtime):
        os.makedirs(d, mode=0o700)
        os.chown(d, SANDBOX_UID, SANDBOX_UID)
    ports = [free_port() for _ in range(4)]
    query = f"tcp://127.0.0.1:{ports[1]}"
    spec["args"] = ["--ingest-bind", f"tcp://127.0.0.1:{ports[0]}", "--query", query,
                    "--publish", f"tcp://127.0.0.1:{ports[2]}", "--metrics", f"127.0.0.1:{ports[3]}",
                    "--demo", "--snapshot-interval", "1", "--log-level", "debug"]
    spec_path = os.path.join(work, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    os.chmod(spec_path, 0o644)

    notify_name = f"\0xpl-install-test-{os.getpid()}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_name)
    notify.settimeout(0.2)
    env = dict(os.environ, NOTIFY_SOCKET="@" + notify_name[1:], WATCHDOG_USEC="1000000")
    if sanitized():
        # LeakSanitizer stops the world with ptrace, which the unit forbids.
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    log_path = os.path.join(work, "stderr.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(["unshare", "-m", "-i", "--propagation", "private", "--",
                             sys.executable, os.path.abspath(__file__), "--sandbox-child",
                             spec_path, dest, state, runtime],
                            env=env, stdout=log, stderr=log)
    # Read notifications all the time, as systemd does: sd_notify() blocks
    # once the socket's queue (net.unix.max_dgram_qlen, 10) is full.
    notes, reading = [], threading.Event()

    def reader():
        while not reading.is_set():
            try:
                notes.extend(notify.recv(4096).decode().splitlines())
            except socket.timeout:
                pass
    reader_thread = threading.Thread(target=reader, daemon=True)
    reader_thread.start()

    def wait_note(pred, what, timeout=20.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(pred(n) for n in list(notes)):
                return
            if proc.poll() is not None:
                raise AssertionError(f"sandboxed xplaind exited {proc.returncode} before {what}")
            time.sleep(0.05)
        raise AssertionError(f"no {what} from the sandboxed xplaind")

    ctx = zmq.Context()
    try:
        wait_note(lambda n: n == "READY=1", "READY=1")
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.RCVTIMEO, 5000)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(query)
        req.send(msgpack.packb({"v": 1, "op": "ping"}))
        assert msgpack.unpackb(req.recv())["ok"], "ping failed"
        wait_note(lambda n: n == "WATCHDOG=1", "WATCHDOG=1")
        wait_note(lambda n: n.startswith("STATUS="), "STATUS=", timeout=12)
        deadline = time.time() + 15
        while True:
            req.send(msgpack.packb({"v": 1, "op": "stats"}))
            st = msgpack.unpackb(req.recv())
            explained = st.get("counters", {}).get("explained", 0)
            if explained > 0 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert explained > 0, f"the demo stream was not explained: {st}"
        body = urllib.request.urlopen(f"http://127.0.0.1:{ports[3]}/metrics", timeout=5).read()
        assert b"# TYPE" in body, "no Prometheus text from /metrics"
        def snapshots():
            req.send(msgpack.packb({"v": 1, "op": "stats"}))
            return msgpack.unpackb(req.recv())["counters"]["snapshots"]
        wait_until(lambda: snapshots() >= 1, timeout=15, what="an interval snapshot of the sandboxed xplaind")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP:" in open(log_path).read(), what="the sandboxed xplaind's SIGHUP log line")
        req.send(msgpack.packb({"v": 1, "op": "ping"}))
        assert msgpack.unpackb(req.recv())["ok"], "ping after SIGHUP failed"
        req.close()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        out = open(log_path).read()
        assert rc == 0, f"sandboxed xplaind exited {rc}:\n{out}"
        # Sent before the exit: in the socket's queue, read soon.
        wait_until(lambda: "STOPPING=1" in notes, timeout=5, what="STOPPING=1 from the sandboxed xplaind")
        reading.set()
        reader_thread.join()
        errors = [l for l in out.splitlines() if l.startswith(("<0>", "<1>", "<2>", "<3>"))]
        assert not errors, "errors logged in the sandbox:\n" + "\n".join(errors)
        assert os.listdir(state), "no snapshot in the state directory"
        for name in os.listdir(state):
            mode = os.stat(os.path.join(state, name)).st_mode & 0o777
            assert mode & 0o077 == 0, f"{name} is mode {oct(mode)} despite UMask=0077"
        print(f"ok: sandboxed run ({len(spec['allow'])} system calls allowed; "
              f"{sum(n == 'WATCHDOG=1' for n in notes)} watchdog pings)")
    except BaseException:
        sys.stderr.write("sandboxed xplaind (exit %s), notifications %s, stderr:\n%s\n"
                         % (proc.poll(), notes[-8:], open(log_path).read()))
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reading.set()
        reader_thread.join()
        ctx.destroy(linger=0)
        notify.close()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def sanitized():
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
            return re.search(r"(?m)^XPL_SANITIZE:BOOL=ON$", f.read()) is not None
    except OSError:
        return False


def main(argv):
    if argv[:1] == ["--sandbox-child"]:
        return sandbox_child(*argv[1:5])
    if argv[:1] == ["--seccomp-exec"]:
        import json
        with open(argv[1]) as f:
            spec = json.load(f)
        return seccomp_exec(spec, argv[3:])
    print("run the tests with pytest (README, Testing); this entry point is the sandbox's", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
