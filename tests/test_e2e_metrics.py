"""End to end: the Prometheus endpoint (--metrics).

The exposition is parsed strictly (text format 0.0.4: HELP and TYPE before
samples, valid names and labels, cumulative histogram buckets ending in
+Inf == count) and its counters must agree with the stats query. A client
that connects and sends nothing, or floods the port, must not stall
ingest.
"""
import re
import socket
import sys
import time

import msgpack
import numpy as np

from xpltest import Daemon, join, on_free_ports, random_attention

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*)\})? (\S+)$')


def http(port, request, timeout=5):
    c = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    c.sendall(request)
    data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    c.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, head.decode(), body.decode()


def parse(text):
    """Strict parse: returns {(name, labels): value} and {name: type}."""
    types, helps, samples = {}, set(), {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert NAME.match(name) and name not in helps, line
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            assert typ in ("counter", "gauge", "histogram") and name not in types, line
            types[name] = typ
        else:
            m = SAMPLE.match(line)
            assert m, f"bad sample line: {line!r}"
            name, labels, value = m.group(1), m.group(3) or "", m.group(5)
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
            assert family in types and family in helps, f"sample before its TYPE/HELP: {line}"
            v = float(value)
            if types[family] == "counter":
                assert v >= 0 and v == int(v), line
            samples[(name, labels)] = v
    return samples, types


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
    deadline = time.time() + 10
    while d.stats()["counters"]["rejected"] < 1 or d.stats()["counters"]["explained"] < 51:
        assert time.time() < deadline
        time.sleep(0.02)
    status, head, body = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and "text/plain; version=0.0.4" in head, head
    samples, types = parse(body)
    st = d.stats()
    c = st["counters"]
    assert samples[("xplaind_explained_trades_total", "")] == c["explained"]
    assert samples[("xplaind_received_messages_total", "")] == c["received"]
    assert samples[("xplaind_lost_messages_total", "")] == c["lost"] == 3
    assert samples[("xplaind_rejected_total", 'reason="msgpack"')] == 1
    for reason, count in st["rejected"].items():
        assert samples[("xplaind_rejected_total", f'reason="{reason}"')] == count
    assert samples[("xplaind_model_explained_trades_total", 'model="mx"')] == 50
    assert samples[("xplaind_model_lost_messages_total", 'model="mx"')] == 3
    assert types["xplaind_latency_seconds"] == "histogram"
    buckets = sorted((float(lbl.split('"')[1]), v) for (n, lbl), v in samples.items()
                     if n == "xplaind_latency_seconds_bucket" and "+Inf" not in lbl)
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "buckets must be cumulative"
    inf = samples[("xplaind_latency_seconds_bucket", 'le="+Inf"')]
    assert inf == samples[("xplaind_latency_seconds_count", "")] >= counts[-1]
    assert inf == st["latency_us"]["count"]
    # Errors: other paths and methods.
    assert http(port, b"GET / HTTP/1.0\r\n\r\n")[0] == 404
    assert http(port, b"POST /metrics HTTP/1.0\r\n\r\n")[0] == 405
    assert http(port, b"GET /metrics" + b"X" * 5000)[0] == 431


def test_slow_clients_do_not_stall(d, port):
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    pub = d.publisher()
    sub = d.subscriber(b"xpl/slow")
    join(d, pub, sub)
    rng = np.random.default_rng(1)
    t0 = time.time()
    for k in range(20):
        A = random_attention(rng, (1, 1, 1, 3, 3))
        pub.send_multipart([b"attn/slow", msgpack.packb({
            "v": 1, "model": "slow", "seq": k, "ts": 1, "ids": [k], "L": 1, "H": 1, "n": 3,
            "dtype": "f32", "attn": A.astype("<f4").tobytes(), "cls": -1, "tokens": list("abc")})])
        sub.recv_multipart()
    assert time.time() - t0 < 5, "ingest stalled behind idle HTTP clients"
    for s in idle:
        s.close()
    # Once they are gone the endpoint serves again.
    deadline = time.time() + 10
    while True:
        try:
            if http(port, b"GET /metrics HTTP/1.0\r\n\r\n", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        assert time.time() < deadline, "metrics endpoint did not recover"
        time.sleep(0.1)


def main():
    d, (port,) = on_free_ports(1, lambda port: Daemon("--metrics", f"127.0.0.1:{port}"))
    try:
        test_metrics(d, port)
        test_slow_clients_do_not_stall(d, port)
    finally:
        d.stop()
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
