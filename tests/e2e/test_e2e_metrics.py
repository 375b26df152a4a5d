"""End to end: the Prometheus endpoint (--metrics).

The exposition is parsed strictly (text format 0.0.4: HELP and TYPE before
contiguous samples, valid names and escaped labels, no repeated series,
cumulative histogram buckets ending in +Inf == count), validated by
Debian's `promtool check metrics`, and its numbers must be those of the
stats, drift and global queries. Then the endpoint is attacked: 500 slow
connections from this host while 40 scrapes must be answered and ingest
must go on; requests with NUL bytes, oversized or never completed; too
many connections from one address. Refusals and timeouts are counted in
the exposition and logged.
"""
import shutil
import socket
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest

from xpltest import Daemon, join, on_free_ports, random_attention, wait_until
from xplmetrics import http, parse, scrape, series, value


@pytest.fixture
def dport(daemon_on_free_ports):
    """A daemon with its metrics endpoint, and the endpoint's port."""
    d, (port,) = daemon_on_free_ports(1, lambda p: ("--metrics", f"127.0.0.1:{p}",
                                                    "--drift-window", "20"))
    yield d, port
    d.stop()


@pytest.fixture
def d(dport):
    return dport[0]


@pytest.fixture
def port(dport):
    return dport[1]


@pytest.fixture
def dport2(daemon_on_free_ports):
    d, (port,) = daemon_on_free_ports(1, lambda p: ("--metrics", f"127.0.0.1:{p}",
                                                    "--metrics-top-features", "2"))
    yield d, port
    d.stop()


@pytest.fixture
def d2(dport2):
    return dport2[0]


@pytest.fixture
def port2(dport2):
    return dport2[1]


def send_trades(pub, model, seq0, count, rng, n=4, tokens=None, imp=None):
    for k in range(count):
        if imp is None:
            A = random_attention(rng, (1, 2, 2, n, n))
        else:
            logits = rng.standard_normal((1, 2, 2, n, n)) * 0.2
            logits[..., n - 1, :n - 1] += 1.5 * np.asarray(imp)
            A = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        pub.send_multipart([f"attn/{model}".encode(), msgpack.packb({
            "v": 1, "model": model, "seq": seq0 + k, "ts": 1, "ids": [seq0 + k], "L": 2, "H": 2,
            "n": n, "dtype": "f32", "attn": A.astype("<f4").tobytes(), "cls": n - 1,
            "tokens": tokens or [f"f{j}" for j in range(n - 1)] + ["CLS"]})])


def model_explained(d, model):
    for m in d.stats()["models"]:
        if m["model"] == model:
            return m["explained"]
    return 0


def promtool_check(text):
    """`promtool check metrics` reads the exposition on stdin; it exits 0
    when the format is valid (lint remarks are printed, not failures)."""
    tool = shutil.which("promtool")
    assert tool, "promtool not found: install Debian's prometheus (scripts/deps.sh test)"
    p = subprocess.run([tool, "check", "metrics"], input=text.encode(), capture_output=True,
                       timeout=60)
    out = (p.stdout + p.stderr).decode()
    assert p.returncode == 0, f"promtool check metrics failed:\n{out}"
    assert "error" not in out.lower(), out
    return out


def test_metrics(d, port):
    pub = d.publisher()
    join(d, pub)
    rng = np.random.default_rng(0)
    for k in range(50):
        A = random_attention(rng, (1, 2, 2, 4, 4))
        pub.send_multipart([b"attn/mx", msgpack.packb({
            "v": 1, "model": "mx", "seq": k + (3 if k >= 25 else 0), "ts": 1, "ids": [k], "L": 2,
            "H": 2, "n": 4, "dtype": "f32", "attn": A.astype("<f4").tobytes(), "cls": 3,
            "tokens": list("abcZ")})])
    pub.send_multipart([b"attn/mx", b"\xdd\xff\x00\x00\x00"])
    wait_until(lambda: d.stats()["counters"]["rejected"] >= 1 and
               d.stats()["counters"]["explained"] >= 51, what="50 trades explained, 1 rejected")
    status, head, body = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and "text/plain; version=0.0.4" in head, head
    samples, types = parse(body)
    promtool_check(body)
    st = d.stats()
    c = st["counters"]
    assert value(samples, "xplaind_explained_trades_total") == c["explained"]
    assert value(samples, "xplaind_received_messages_total") == c["received"]
    assert value(samples, "xplaind_lost_messages_total") == c["lost"] == 3
    assert value(samples, "xplaind_rejected_total", reason="msgpack") == 1
    for reason, count in st["rejected"].items():
        assert value(samples, "xplaind_rejected_total", reason=reason) == count
    assert value(samples, "xplaind_model_explained_trades_total", model="mx") == 50
    assert value(samples, "xplaind_model_lost_messages_total", model="mx") == 3
    assert types["xplaind_latency_seconds"] == "histogram"
    assert value(samples, "xplaind_latency_seconds_bucket", le="+Inf") == st["latency_us"]["count"]
    # Errors: other paths and methods, a request line too long for the
    # connection's memory, a NUL byte anywhere in the request head (which
    # a C-string parser would silently cut there): answered at once.
    assert http(port, b"GET / HTTP/1.0\r\n\r\n")[0] == 404
    assert http(port, b"POST /metrics HTTP/1.0\r\n\r\n")[0] == 405
    t0 = time.time()
    assert http(port, b"GET /metrics" + b"X" * 20000)[0] == 431
    for req in (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
                b"GET /metrics\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GE\x00T /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                b"\x00\r\n\r\n", b"\x00" * 100):
        status, _, body = http(port, req)
        assert status == 400 and "NUL" in body, (req, status)
    assert time.time() - t0 < 2, "bad requests were not answered promptly"
    assert "metrics: bad request from 127.0.0.1: NUL byte" in d.stderr()
    after, _ = parse(scrape(port))
    assert value(after, "xplaind_metrics_requests_total", code="400") == 5
    assert value(after, "xplaind_metrics_requests_total", code="431") == 1
    assert value(after, "xplaind_metrics_requests_total", code="404") >= 1
    assert value(after, "xplaind_metrics_requests_total", code="405") >= 1
    assert value(after, "xplaind_metrics_requests_total", code="200") >= 1


def test_drift_metrics(d, port):
    """Every drift statistic and global attribution exported is the one
    the drift and global queries report for the same state."""
    pub = d.publisher()
    join(d, pub)
    rng = np.random.default_rng(3)
    tokens = ['q"uote', "back\\slash", "dup", "dup", "new\nline", "f5", "CLS"]
    before = [3.0, 2.5, 2.0, 1.5, 1.0, 0.5]
    send_trades(pub, "dm", 0, 60, rng, n=7, tokens=tokens, imp=before)
    send_trades(pub, "dm", 60, 40, rng, n=7, tokens=tokens, imp=before[::-1])
    wait_until(lambda: model_explained(d, "dm") == 100, what="100 trades of dm explained")
    text = scrape(port)
    samples, _ = parse(text)
    promtool_check(text)
    dq = d.query("drift", model="dm")
    g = d.query("global", model="dm")
    assert dq["ok"] and g["ok"]
    methods = dq["methods"]
    assert set(methods) >= {"rollout", "first_layer", "attn_mean"}
    alerted = 0
    for m, md in methods.items():
        lab = {"model": "dm", "method": m}
        assert md["windows"] == 5
        assert value(samples, "xplaind_drift_windows_total", **lab) == md["windows"]
        assert value(samples, "xplaind_drift_window_filled_trades", **lab) == md["filled"]
        for kind in ("none", "baseline", "pinned", "external"):
            assert value(samples, "xplaind_drift_reference", reference=kind, **lab) == \
                (kind == md["reference"])
        last = md["last"]
        assert value(samples, "xplaind_drift_alert", **lab) == last["alert"]
        alerted += last["alert"]
        for key, name in (("spearman", "xplaind_drift_spearman_rho"), ("ndcg", "xplaind_drift_ndcg"),
                          ("js", "xplaind_drift_js_divergence")):
            got = [v for lb, v in series(samples, name) if lb == lab]
            assert got == ([] if last[key] is None else [last[key]]), (m, key, got, last[key])
        # Global attributions: nf = 6 is below the default top 10: all of
        # them, a repeated name made unique by its index.
        gm = g["methods"][m]
        assert value(samples, "xplaind_attribution_trades", **lab) == gm["count"] == 100
        feats = ['q"uote', "back\\slash", "dup", "dup#3", "new\nline", "f5"]
        for j, f in enumerate(feats):
            assert value(samples, "xplaind_attribution_mean", feature=f, **lab) == gm["mean"][j]
            assert value(samples, "xplaind_attribution_decayed", feature=f, **lab) == gm["decayed"][j]
    assert alerted >= 2, "the reversed importance should have alerted"
    assert value(samples, "xplaind_model_drift_alerts_total", model="dm") == dq["alerts_total"] > 0
    th = dq["thresholds"]
    assert value(samples, "xplaind_drift_threshold", threshold="rho_min") == th["rho_min"]
    assert value(samples, "xplaind_drift_threshold", threshold="ndcg_min") == th["ndcg_min"]
    assert value(samples, "xplaind_drift_threshold", threshold="js_max") == th["js_max"]
    assert value(samples, "xplaind_drift_ndcg_k") == th["ndcg_k"]
    assert value(samples, "xplaind_drift_window_trades") == dq["window"] == 20


def test_top_features(port2, d2):
    """--metrics-top-features 2: two features per method, the largest by
    max(mean, decayed)."""
    pub = d2.publisher()
    join(d2, pub)
    rng = np.random.default_rng(4)
    send_trades(pub, "tk", 0, 30, rng, n=7, imp=[0.1, 3.0, 0.2, 2.0, 0.3, 0.1])
    wait_until(lambda: model_explained(d2, "tk") == 30, what="30 trades of tk explained")
    samples, _ = parse(scrape(port2))
    g = d2.query("global", model="tk")
    for m, gm in g["methods"].items():
        score = np.maximum(gm["mean"], gm["decayed"])
        want = {f"f{j}" for j in np.argsort(-score)[:2]}
        got = {lb["feature"] for lb, _ in series(samples, "xplaind_attribution_mean")
               if lb["method"] == m and lb["model"] == "tk"}
        assert got == want, (m, got, want)
        assert len([1 for lb, _ in series(samples, "xplaind_attribution_decayed")
                    if lb["method"] == m and lb["model"] == "tk"]) == 2


class Slowloris:
    """`n` connections that each send an incomplete request and then one
    more header byte now and then, reopened as soon as the daemon closes
    them: the classic slow-headers attack, from this host."""

    def __init__(self, port, n, pause=0.3):
        self.port, self.n, self.pause = port, n, pause
        self.socks = []
        self.stop = False
        self.opened = 0
        for _ in range(n):
            self._open()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.setblocking(False)
            s.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            self.socks.append(s)
            self.opened += 1
        except OSError:
            pass

    def _run(self):
        while not self.stop:
            alive = []
            for s in self.socks:
                try:
                    s.send(b"X")
                    alive.append(s)
                except OSError:
                    s.close()
            self.socks = alive
            while len(self.socks) < self.n and not self.stop:
                self._open()
            time.sleep(self.pause)

    def close(self):
        self.stop = True
        self.thread.join()
        for s in self.socks:
            s.close()


def test_slowloris(d, port):
    """500 slow connections from this host: at least 39 of 40 scrapes are
    answered, and ingest goes on meanwhile."""
    pub = d.publisher()
    sub = d.subscriber(b"xpl/sl")
    join(d, pub, sub)
    attack = Slowloris(port, 500)
    try:
        wait_until(lambda: value(parse(scrape(port, timeout=10))[0],
                                 "xplaind_metrics_connections") >= 400,
                   timeout=30, what="the slow connections to be open")
        rng = np.random.default_rng(5)
        ok, seq, t0 = 0, 0, time.time()
        for k in range(40):
            try:
                status, _, body = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
                ok += status == 200 and "xplaind_build_info" in body
            except OSError as e:
                print(f"scrape {k}: {e!r}", file=sys.stderr)
            # Ingest during the attack: every trade explained and published.
            send_trades(pub, "sl", seq, 5, rng)
            seq += 5
            for _ in range(5):
                sub.recv_multipart()
            time.sleep(0.05)
        took = time.time() - t0
        print(f"slowloris: {ok}/40 scrapes answered in {took:.1f} s; {attack.opened} slow "
              f"connections opened", file=sys.stderr)
        assert ok >= 39, f"only {ok} of 40 scrapes answered under slowloris"
        samples, _ = parse(scrape(port, timeout=10))
    finally:
        attack.close()
    # The slow connections were cut at their deadline (--metrics-timeout-ms),
    # counted and logged.
    assert value(samples, "xplaind_metrics_connections_timed_out_total") >= 400
    assert "metrics: closed a connection from 127.0.0.1: no complete request" in d.stderr()
    assert model_explained(d, "sl") == seq


def test_never_completed(d, port):
    """A request that never completes (no blank line) is closed at the
    request deadline, and counted."""
    before = value(parse(scrape(port))[0], "xplaind_metrics_connections_timed_out_total")
    for req in (b"GET /metrics HTTP/1.1\r\n", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"):
        t0 = time.time()
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(req)
        got = b""
        try:
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        c.close()
        took = time.time() - t0
        # Cut at the 2 s deadline (a loaded machine may take longer to
        # get there, never less).
        assert got == b"" and 1.9 < took < 10, (req, got, took)
    after = value(parse(scrape(port))[0], "xplaind_metrics_connections_timed_out_total")
    assert after - before == 2


def test_refusals():
    """Connections over max_per_ip are refused at once, counted and
    logged; over max_connections they wait for a free slot."""
    d, (port,) = on_free_ports(1, lambda p: Daemon(
        "--metrics", f"127.0.0.1:{p}", "--metrics-max-per-ip", "4",
        "--metrics-max-conns", "6", "--metrics-timeout-ms", "30000"))
    try:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            got = extra.recv(100)
        except ConnectionResetError:
            got = b""
        assert got == b"", "a connection over max_per_ip was not refused"
        extra.close()
        for s in idle:
            s.close()

        def scraped():
            # Refused until the daemon has seen the idle connections close.
            try:
                return parse(scrape(port))[0]
            except OSError:
                return None
        samples = wait_until(scraped, what="a scrape once the idle connections closed")
        assert value(samples, "xplaind_metrics_connections_refused_total", reason="per_ip") >= 1
        assert value(samples, "xplaind_metrics_connections_max") == 6
        wait_until(lambda: "metrics: refused a connection from 127.0.0.1" in d.stderr(),
                   what="the refusal to be logged")
    finally:
        d.stop()
