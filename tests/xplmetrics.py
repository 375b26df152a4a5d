"""Helpers of the metrics and monitoring tests: plain-socket HTTP, a strict
parser of the Prometheus text format (0.0.4), and the metric names a
PromQL expression refers to.
"""
import re
import socket

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})?'
                    r' (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


from xpltest import free_port  # noqa: F401  (below the ephemeral range; see xpltest)


def http(port, request, timeout=5):
    """Send raw bytes, read to EOF: (status, head, body)."""
    c = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        c.sendall(request)
        data = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        c.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionError("connection closed without an answer")
    status = int(head.split(b" ")[1])
    return status, head.decode(), body.decode()


def scrape(port, timeout=5):
    status, head, body = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", timeout)
    assert status == 200 and "text/plain; version=0.0.4" in head, head
    return body


def unescape(v):
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def labels(s):
    """'a="x",b="y"' -> {"a": "x", "b": "y"} (values unescaped)."""
    return {k: unescape(v) for k, v in LABEL.findall(s or "")}


def parse(text):
    """Strict parse: returns ({(name, labels): value}, {family: type}).
    HELP and TYPE come once per family, before its samples; samples of a
    family are contiguous; no series repeats; counters are whole and >= 0;
    histogram buckets are cumulative and end in +Inf == _count."""
    types, helps, samples = {}, set(), {}
    assert text.endswith("\n")
    done, current = set(), None
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
            name, lbl, value = m.group(1), m.group(3) or "", m.group(4)
            family = name
            if name not in types:
                family = re.sub(r"_(bucket|sum|count)$", "", name)
                assert types.get(family) == "histogram", f"sample without TYPE: {line}"
            assert family in helps, f"sample before its HELP: {line}"
            if family != current:
                assert family not in done, f"family {family} is not contiguous"
                if current:
                    done.add(current)
                current = family
            key = (name, ",".join(f'{k}="{v}"' for k, v in sorted(LABEL.findall(lbl))))
            assert key not in samples, f"duplicate series {key}"
            v = float(value)
            if types[family] == "counter":
                assert v >= 0 and v == int(v), line
            samples[key] = v
    for fam, typ in types.items():
        if typ != "histogram":
            continue
        bucket = sorted((float(labels(lb)["le"]), v) for (n, lb), v in samples.items()
                        if n == fam + "_bucket")
        counts = [v for _, v in bucket]
        assert counts == sorted(counts) and bucket[-1][0] == float("inf"), fam
        assert bucket[-1][1] == samples[(fam + "_count", "")], fam
    return samples, types


def series(samples, name):
    """[(labels dict, value)] of one metric."""
    return [(labels(lb), v) for (n, lb), v in samples.items() if n == name]


def value(samples, name, **want):
    """The value of the one series of `name` with labels `want`."""
    hits = [v for lb, v in series(samples, name) if all(lb.get(k) == w for k, w in want.items())]
    assert len(hits) == 1, f"{name}{want}: {len(hits)} series"
    return hits[0]


# PromQL words that are not metric names.
_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "atan2",
}


def promql_metrics(expr):
    """Metric names an expression selects (functions, aggregations,
    keywords, label matchers, durations and grouping labels left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)   # strings
    e = re.sub(r"\{[^}]*\}", " ", e)                 # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_:]*\}?", " ", e)    # dashboard variables
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names
