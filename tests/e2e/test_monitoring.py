"""Monitoring: the shipped rules, Alertmanager route and Grafana dashboard
(monitoring/), checked by the real tools and run by the real servers.

1. `promtool check rules` and `promtool test rules` on the shipped rules,
   `amtool check-config` on the Alertmanager example; the dashboard is
   valid JSON with a datasource variable and a row repeated per model;
   every metric name in the dashboard's and the rules' expressions is one
   a real daemon exports (a scrape of the demo stream); `cmake --install`
   puts monitoring/ under <prefix>/share/xplaind/monitoring.
2. Drift: Debian's prometheus and prometheus-alertmanager on loopback (free
   ports, temporary directories, no clustering, nothing remote) load the
   shipped rules and route and scrape `xplaind --demo` whose importance
   changes every 1000 trades; XplaindAttributionDrift must fire for the
   demo model and reach a webhook (a small HTTP server here) through the
   shipped route. Every dashboard expression, its variables filled in,
   must run on that Prometheus and return data.
3. Healthy: the same with a demo stream that never changes
   (--demo-drift-every 0): after 15 windows closed and evaluated, no alert
   is pending or firing and the webhook got nothing.
"""
import calendar
import glob
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from xpltest import BUILD, SOURCE, XPLAIND, _die_with_parent, wait_until
from xplmetrics import free_port, parse, promql_metrics, scrape

MON = os.path.abspath(os.path.join(SOURCE, "monitoring"))
RULES = os.path.join(MON, "prometheus", "xplaind.rules.yml")
AM_EXAMPLE = os.path.join(MON, "alertmanager", "alertmanager.example.yml")
DASHBOARD = os.path.join(MON, "grafana", "xplaind-dashboard.json")


def tool(name):
    path = shutil.which(name)
    assert path, f"{name} not found: scripts/deps.sh test installs it"
    return path


def run(*cmd, cwd=None):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert p.returncode == 0, f"{' '.join(cmd)}:\n{p.stdout}{p.stderr}"
    return p.stdout + p.stderr


class Proc:
    """A server process of the test, its output in a file, stopped at the end."""

    def __init__(self, name, cmd, workdir):
        self.name, self.cmd = name, cmd
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log,
                                     preexec_fn=_die_with_parent())

    def output(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Webhook:
    """Alertmanager's webhook receiver: records every POSTed JSON body."""

    def __init__(self):
        self.posts = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self):
        return [a for _, p in self.posts for a in p.get("alerts", [])]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Stack:
    """xplaind --demo, Alertmanager with the shipped route, Prometheus with
    the shipped rules, all on loopback in a temporary directory."""

    def __init__(self, demo_args):
        self.dir = tempfile.mkdtemp(prefix="xplmon-")
        self.procs = []
        self.hook = Webhook()
        try:
            self._start(demo_args)
        except BaseException:
            self.close()
            raise

    def _start(self, demo_args):
        d = self.dir
        self.metrics_port, self.am_port, self.prom_port = free_port(), free_port(), free_port()
        self.xplaind = Proc("xplaind", [
            XPLAIND, "--demo", "--demo-rate", "1000", "--drift-window", "200",
            "--publish", f"ipc://{d}/pub", "--query", f"ipc://{d}/q",
            "--metrics", f"127.0.0.1:{self.metrics_port}"] + demo_args, d)
        self.procs.append(self.xplaind)
        # The shipped route, with the webhook here and short waits.
        am = yaml.safe_load(open(AM_EXAMPLE))
        for r in am["receivers"]:
            for w in r.get("webhook_configs", []):
                w["url"] = f"http://127.0.0.1:{self.hook.port}/xplaind-alerts"
        for r in am["route"]["routes"]:
            r.update(group_wait="1s", group_interval="1s", repeat_interval="1h")
        am_cfg = os.path.join(d, "alertmanager.yml")
        yaml.safe_dump(am, open(am_cfg, "w"))
        self.procs.append(Proc("alertmanager", [
            tool("prometheus-alertmanager"), f"--config.file={am_cfg}",
            f"--storage.path={d}/am", f"--web.listen-address=127.0.0.1:{self.am_port}",
            "--cluster.listen-address=", "--log.level=warn"], d))
        prom_cfg = os.path.join(d, "prometheus.yml")
        yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [RULES],     # absolute: Prometheus would look beside its config
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [f"127.0.0.1:{self.am_port}"]}]}]},
            "scrape_configs": [{"job_name": "xplaind", "static_configs": [
                {"targets": [f"127.0.0.1:{self.metrics_port}"]}]}],
        }, open(prom_cfg, "w"))
        # Everything local: no remote write/read configured, storage in the
        # temporary directory, the UI bound to loopback.
        self.prom = Proc("prometheus", [
            tool("prometheus"), f"--config.file={prom_cfg}", f"--storage.tsdb.path={d}/tsdb",
            f"--web.listen-address=127.0.0.1:{self.prom_port}", "--storage.tsdb.retention.time=1h",
            "--log.level=warn"], d)
        self.procs.append(self.prom)
        wait_until(self._prom_ready, timeout=60, what="Prometheus to be ready")
        groups = self.api("rules")["groups"]
        assert len(groups) == 2 and all(g["file"] == RULES for g in groups), groups

    def _prom_ready(self):
        for p in self.procs:
            assert p.proc.poll() is None, f"{p.name} exited:\n{p.output()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.prom_port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def alerts(self):
        return self.api("alerts")["alerts"]

    def close(self):
        for p in reversed(self.procs):
            p.stop()
        self.hook.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def dashboard_exprs(dash, model="demo-trades"):
    """(panel title, expr) of every target, and of every variable query."""
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.match(r"label_values\((.*),\s*\w+\)$", q)
            out.append((f"variable {v['name']}", m.group(1) if m else q))
    return out


def fill(expr, model="demo-trades"):
    return (expr.replace("$__rate_interval", "1m").replace('=~"$instance"', '=~".+"')
            .replace('"$model"', f'"{model}"').replace('=~"$method"', '=~".+"'))


@pytest.fixture
def exported():
    """The names a daemon running the drifting demo exports, for the
    static checks."""
    d = tempfile.mkdtemp(prefix="xplmon-")
    port = free_port()
    p = Proc("xplaind", [XPLAIND, "--demo", "--demo-rate", "1000", "--drift-window", "100",
                         "--demo-drift-every", "500", "--publish", f"ipc://{d}/pub",
                         "--query", f"ipc://{d}/q", "--metrics", f"127.0.0.1:{port}"], d)
    try:
        def full():
            try:
                s, _ = parse(scrape(port))
            except OSError:
                return None
            names = {n for n, _ in s}
            return names if "xplaind_drift_spearman_rho" in names else None
        return wait_until(full, timeout=30, what="a scrape with the drift statistics")
    finally:
        p.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def dash():
    with open(DASHBOARD) as f:
        return json.load(f)


def test_static(exported):
    out = run(tool("promtool"), "check", "rules", RULES)
    assert "SUCCESS" in out, out
    out = run(tool("promtool"), "test", "rules", "xplaind.rules.test.yml",
              cwd=os.path.dirname(RULES))
    assert "SUCCESS" in out, out
    run(tool("amtool"), "check-config", AM_EXAMPLE)
    dash = json.load(open(DASHBOARD))
    vars_ = {v["name"]: v for v in dash["templating"]["list"]}
    assert vars_["datasource"]["type"] == "datasource" and vars_["datasource"]["query"] == "prometheus"
    rows = [p for p in dash["panels"] if p["type"] == "row" and p.get("repeat") == "model"]
    assert len(rows) == 1, "one row per model (repeat: model)"
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    # Every metric an expression names is exported by the daemon.
    for where, expr in dashboard_exprs(dash):
        missing = promql_metrics(expr) - exported
        assert not missing, f"dashboard {where}: {sorted(missing)} not exported ({expr})"
    rules = yaml.safe_load(open(RULES))
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for g in rules["groups"]:
        for r in g["rules"]:
            missing = promql_metrics(r["expr"]) - exported - recorded - {"up"}
            assert not missing, f"rule {r.get('alert') or r.get('record')}: {sorted(missing)}"
    # Installed under the data directory.
    dest = tempfile.mkdtemp(prefix="xplmon-install-")
    try:
        env = dict(os.environ, DESTDIR=dest)
        p = subprocess.run(["cmake", "--install", BUILD, "--prefix", "/usr",
                            "--component", "monitoring"], env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        shipped = sorted(os.path.relpath(f, MON) for f in glob.glob(f"{MON}/**/*", recursive=True)
                         if os.path.isfile(f))
        for f in shipped:
            assert os.path.isfile(f"{dest}/usr/share/xplaind/monitoring/{f}"), f"{f} not installed"
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_drift_fires(dash):
    st = Stack(["--demo-drift-every", "1000"])
    try:
        def drift_notified():
            return [a for a in st.hook.alerts() if a["labels"].get("alertname") ==
                    "XplaindAttributionDrift" and a["status"] == "firing"]
        got = wait_until(drift_notified, timeout=90,
                         what="XplaindAttributionDrift to reach the webhook")
        a = got[0]
        assert a["labels"]["model"] == "demo-trades" and a["labels"]["method"], a
        assert a["labels"]["severity"] == "warning" and "rho" in a["annotations"]["description"], a
        assert all(p == "/xplaind-alerts" for p, _ in st.hook.posts)
        firing = [x for x in st.alerts() if x["state"] == "firing"]
        assert {x["labels"]["alertname"] for x in firing} == {"XplaindAttributionDrift"}, firing
        # The dashboard's queries run on the real server and find data
        # (but for those that only show what is above 0: rejections).
        for where, expr in dashboard_exprs(dash):
            res = st.query(fill(expr))
            assert res or expr.endswith("> 0"), f"dashboard {where}: no data for {fill(expr)}"
    finally:
        st.close()


def test_healthy_quiet():
    st = Stack(["--demo-drift-every", "0"])
    try:
        def evaluated():
            res = st.query('min(xplaind_drift_windows_total{model="demo-trades"})')
            return res and float(res[0]["value"][1]) >= 15
        wait_until(evaluated, timeout=90, what="15 drift windows in Prometheus")
        # One more rule evaluation after that scrape.
        t = time.time()
        wait_until(lambda: all(g["rules"] and all(
            r["lastEvaluation"] and _ts(r["lastEvaluation"]) > t for r in g["rules"])
            for g in st.api("rules")["groups"]), timeout=30, what="a rule evaluation")
        assert st.alerts() == [], st.alerts()
        assert st.query("xplaind_drift_alert == 1") == []
        assert st.hook.posts == [], st.hook.posts
    finally:
        st.close()


def _ts(rfc3339):
    """Seconds since the epoch of Prometheus's RFC 3339 timestamps."""
    m = re.match(r"(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(\.\d+)?Z", rfc3339)
    secs = calendar.timegm(tuple(int(m.group(i)) for i in range(1, 7)))
    return secs + float(m.group(7) or 0)
