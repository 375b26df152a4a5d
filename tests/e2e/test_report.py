"""What people look at: `xplainctl heatmap` and `xplainctl report`, rendered
by a real browser (Debian's chromium, headless) and checked as a reader
would: no text cut off at the canvas edge or running into other text, a
colour scale that shows the off-diagonal structure, labelled bars, charts
that are drawn (not a blank page) and a page that logs no error.

Geometry comes from the browser itself: the SVG (or the report) is loaded
with a small script appended that measures every element with
getBoundingClientRect and writes the result into the DOM, which
`chromium --dump-dom` prints. The SVG and the report are also
screenshotted, and the screenshot's pixels counted (by the browser's PNG
decoder, on a canvas) to see that the charts paint something.
Run by Debian's /usr/bin/python3.
"""
import base64
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import msgpack
import numpy as np
import pytest

from xpltest import BUILD, Daemon, encode, join, random_attention, ref, wait_until

XPLAINCTL = os.path.join(BUILD, "client", "xplainctl")
SVG = "{http://www.w3.org/2000/svg}"
CHROMIUM = shutil.which("chromium")
# Breast-cancer-like feature names (snake case, long ones) and CLS last:
# the names that used to lose their first letters at the left edge.
FEATURES = [f"{p}_{f}" for p in ("mean", "se", "worst") for f in (
    "radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
    "n_concave_points", "symmetry", "fractal_dimension")]
L, H = 2, 3


def ctl(d, *args, timeout=60):
    p = subprocess.run([XPLAINCTL, "--query", d.query_ep, "--sub", d.publish, *args],
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


# ---- the browser ---------------------------------------------------------

def chromium(*args, timeout=180):
    """Run headless chromium on a fresh profile; returns (stdout, stderr)."""
    assert CHROMIUM, "chromium is not installed (scripts/deps.sh test installs it)"
    prof = tempfile.mkdtemp(prefix="xpl-chromium-")
    env = dict(os.environ, HOME=prof)
    try:
        p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                            "--disable-quic", "--no-first-run", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync",
                            "--hide-scrollbars", f"--user-data-dir={prof}", *args],
                           capture_output=True, text=True, timeout=timeout, env=env)
    finally:
        shutil.rmtree(prof, ignore_errors=True)
    return p.stdout, p.stderr


# Put first in <head>: every error the page raises, and console.error
# calls, are kept for the measuring script.
ERROR_HOOK = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || e));
}, true);
(function (ce) { console.error = function () {
  window.__errors.push(Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments);
}; })(console.error);
</script>"""

# Appended at the end: the box of every <svg>, of its texts and of its
# drawn marks, relative to that svg, as JSON in <pre id="__measure">.
MEASURE = """<script>
(function () {
  function box(el, o) { var r = el.getBoundingClientRect();
    return [r.left - o.left, r.top - o.top, r.right - o.left, r.bottom - o.top]; }
  var out = {errors: window.__errors || [], svgs: []};
  document.querySelectorAll('svg').forEach(function (svg) {
    var o = svg.getBoundingClientRect(), vb = svg.viewBox.baseVal;
    var s = {id: svg.id, parent: svg.parentNode.id || '', w: o.width, h: o.height,
             vbw: vb ? vb.width : 0, vbh: vb ? vb.height : 0, texts: [], marks: {}};
    svg.querySelectorAll('text').forEach(function (t) {
      s.texts.push({t: t.textContent, cls: t.getAttribute('class') || '', b: box(t, o)}); });
    ['rect.cell', 'rect.bar', 'circle.point', 'path.series', 'rect.highlight', 'g.matrix']
      .forEach(function (q) {
        var n = 0, ext = null;
        svg.querySelectorAll(q).forEach(function (e) { var b = box(e, o);
          if (b[2] - b[0] > 0 || b[3] - b[1] > 0) { n++; ext = ext ? [Math.min(ext[0], b[0]),
            Math.min(ext[1], b[1]), Math.max(ext[2], b[2]), Math.max(ext[3], b[3])] : b; } });
        s.marks[q] = {n: n, box: ext}; });
    out.svgs.push(s); });
  var pre = document.createElement('pre'); pre.id = '__measure';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
})();
</script>"""


def measure(page_html, tmp):
    """Load a page with the hooks in chromium; the measurements."""
    if "<head>" in page_html:
        page = page_html.replace("<head>", "<head>" + ERROR_HOOK, 1)
    else:
        page = "<!DOCTYPE html><html><head>" + ERROR_HOOK + "</head><body>" + page_html
    page = page.replace("</body>", MEASURE + "</body>") if "</body>" in page else page + MEASURE
    path = os.path.join(tmp, "measure.html")
    with open(path, "w") as f:
        f.write(page)
    out, err = chromium("--dump-dom", path)
    m = re.search(r'<pre id="__measure">(.*?)</pre>', out, re.S)
    assert m, f"the measuring script left no result; chromium said:\n{err[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def check_inside(s, what):
    """No text of svg `s` leaves its canvas; the canvas is drawn 1:1."""
    assert s["texts"], f"{what}: no text rendered"
    assert abs(s["w"] - s["vbw"]) < 1 and abs(s["h"] - s["vbh"]) < 1, (what, s["w"], s["vbw"])
    for t in s["texts"]:
        x0, y0, x1, y1 = t["b"]
        assert x1 > x0 and y1 > y0, f"{what}: text {t['t']!r} has no size"
        assert x0 >= -0.5 and y0 >= -0.5 and x1 <= s["w"] + 0.5 and y1 <= s["h"] + 0.5, \
            f"{what}: text {t['t']!r} at {t['b']} leaves the {s['w']}x{s['h']} canvas"


def overlaps(a, b):
    return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5


# ---- pixels of a screenshot ----------------------------------------------

PIXELS = """<!DOCTYPE html><html><body><pre id="__pixels"></pre>
<img id="shot" onload="count(this)" src="data:image/png;base64,%s">
<script>
function count(img) {
  var c = document.createElement('canvas'); c.width = img.naturalWidth;
  c.height = img.naturalHeight; var x = c.getContext('2d'); x.drawImage(img, 0, 0);
  var d = x.getImageData(0, 0, c.width, c.height).data, painted = 0, orange = 0;
  for (var i = 0; i < d.length; i += 4) {
    if (d[i] + d[i + 1] + d[i + 2] < 750) painted++;
    if (Math.abs(d[i] - 0xd9) < 12 && Math.abs(d[i + 1] - 0x5f) < 12 && d[i + 2] < 14) orange++;
  }
  document.getElementById('__pixels').textContent = JSON.stringify(
    {w: c.width, h: c.height, painted: painted, orange: orange});
}
</script></body></html>"""


def pixels(png, tmp):
    """Size, non-white and bar-orange pixel counts of a PNG screenshot, by
    the browser's own PNG decoder (a data: image does not taint the canvas)."""
    with open(png, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    page = os.path.join(tmp, "pixels.html")
    with open(page, "w") as f:
        f.write(PIXELS % base64.b64encode(data).decode())
    out, err = chromium("--dump-dom", page)
    m = re.search(r'<pre id="__pixels">(.+?)</pre>', out, re.S)
    assert m, f"no pixel count from the browser:\n{err[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


# ---- a model with 31 tokens ----------------------------------------------

class Feeder:
    def __init__(self, d, model, features):
        self.pub = d.publisher()
        self.model, self.features = model, features
        self.n, self.cls = len(features) + 1, len(features)
        self.seq = 0
        self.trades = {}
        self.rng = np.random.default_rng(11)
        join(d, self.pub)

    def send(self, tid):
        n = self.n
        A = random_attention(self.rng, (1, L, H, n, n), temp=3.0)
        G = self.rng.standard_normal((1, L, H, n, n))
        abytes, Ax = encode(A, "f32")
        gbytes, Gx = encode(G, "f32")
        body = {"v": 1, "model": self.model, "seq": self.seq, "ts": time.time_ns(),
                "ids": [tid], "L": L, "H": H, "n": n, "dtype": "f32", "attn": abytes,
                "grad": gbytes, "cls": self.cls, "tokens": self.features + ["CLS"],
                "target": [1]}
        self.pub.send_multipart([f"attn/{self.model}".encode(), msgpack.packb(body)])
        self.seq += 1
        self.trades[tid] = (Ax.reshape(A.shape)[0], Gx.reshape(G.shape)[0])


def check_heatmap_layout(d, f, tid, tmp):
    """Many tokens with long names: every label inside the canvas, the
    title clear of the rotated labels, a robust colour scale, labelled bars."""
    if True:
        path = os.path.join(tmp, f"{tid}.svg")
        rc, out, err = ctl(d, "heatmap", "--model", f.model, "--id", tid, "-o", path)
        assert rc == 0 and err == "", (rc, err)
        text = open(path).read()
        root = ET.fromstring(text)
        m = measure(text.split("?>", 1)[1], tmp)
        assert not m["errors"], m["errors"]
        (s,) = m["svgs"]
        check_inside(s, f"heatmap {tid}")
        n, cls = f.n, f.cls
        labels = [t for t in s["texts"] if t["cls"] == "lbl"]
        assert len(labels) == 2 * n, (len(labels), n)
        # Row labels end left of the grid; rotated column labels sit above
        # it; the title and subtitle touch no other text.
        grid = s["marks"]["g.matrix"]["box"]
        rows, cols = labels[:n], labels[n:]
        assert [t["t"] for t in rows] == f.features + ["CLS"]
        for t in rows:
            assert t["b"][2] <= grid[0] + 0.5, f"row label {t['t']!r} runs into the grid"
        for t in cols:
            assert t["b"][3] <= grid[1] + 0.5, f"column label {t['t']!r} runs into the grid"
        head = s["texts"][:2]
        assert head[0]["t"].startswith(f"{f.model} · trade {tid}"), head[0]
        for h in head:
            for t in s["texts"][2:]:
                assert not overlaps(h["b"], t["b"]), f"{h['t']!r} runs into {t['t']!r}"

        # Colours: the diagonal is grey, outside the scale; the scale spans
        # the 1st to 99th percentile of the off-diagonal cells (numpy's
        # linear interpolation, of the float64 reference), said in the
        # legend; the readout row is outlined and shows structure.
        A, _ = f.trades[tid]
        R = ref.rollout_matrix(A)
        off = R[~np.eye(n, dtype=bool)]
        lo, hi = np.percentile(off, 1), np.percentile(off, 99)
        legend = " ".join(t["t"] for t in s["texts"] if t["cls"] == "legend")
        assert f"colour: {lo:.3g} (white) to {hi:.3g} (dark blue), the 1st to 99th " \
               f"percentile of the off-diagonal cells" in legend, legend
        beyond = int((off > hi).sum() + (off < lo).sum())
        assert f"; {beyond} cell{'' if beyond == 1 else 's'} beyond drawn at the ends" in legend, \
            (beyond, legend)
        assert "grey: the diagonal" in legend and "red outline: the readout row (CLS)" in legend
        cells = [r for r in root.iter(SVG + "rect") if r.get("class") == "cell"]
        assert len(cells) == n * n
        fills = {}
        for c in cells:
            name = c.find(SVG + "title").text.split(": ")[0]
            i, j = [(f.features + ["CLS"]).index(x) for x in name.split(" → ")]
            fills[i, j] = c.get("fill")
        assert all(fills[i, i] == "#bdbdbd" for i in range(n))
        assert all(fills[i, j] != "#bdbdbd" for i in range(n) for j in range(n) if i != j)
        readout = {fills[cls, j] for j in range(n) if j != cls}
        assert len(readout) >= n // 3, f"the CLS row is nearly uniform: {len(readout)} colours"
        hl = s["marks"]["rect.highlight"]
        assert hl["n"] == 1
        cell_h = (grid[3] - grid[1]) / n
        assert abs(hl["box"][1] - (grid[1] + cls * cell_h)) < 2, (hl, grid)

        # Bars: one value label per feature and method, equal to the
        # reference to the 3 digits shown; an axis with ticks per method.
        exp = ref.methods(A, f.trades[tid][1], cls)
        vals = [t for t in s["texts"] if t["cls"] == "val"]
        methods = [m_ for m_ in ("rollout", "grad_rollout", "first_layer", "attn_mean")
                   if m_ in exp]
        assert len(vals) == len(methods) * (n - 1), (len(vals), methods)
        for k, m_ in enumerate(methods):
            got = [float(t["t"]) for t in vals[k * (n - 1):(k + 1) * (n - 1)]]
            want = np.asarray(exp[m_], dtype=np.float64)
            assert np.all(np.abs(np.array(got) - want) <= 5e-3 * np.abs(want) + 1e-12), m_
        ticks = [t for t in s["texts"] if t["cls"] == "tick"]
        assert len(ticks) >= 2 * len(methods), len(ticks)
        names = [t["t"] for t in s["texts"]]
        for m_ in methods:
            assert m_ in names, f"bar column {m_} has no name"

    # A look at it, as a person would: the screenshot is kept for review.
    png = os.path.join(tmp, f"{tid}.png")
    svg = ET.parse(path).getroot()
    chromium(f"--screenshot={png}", f"--window-size={svg.get('width')},{svg.get('height')}",
             path)
    px = pixels(png, tmp)
    assert (px["w"], px["h"]) == (int(svg.get("width")), int(svg.get("height"))), px
    painted = px["painted"] / (px["w"] * px["h"])
    assert painted > 0.15, f"the heatmap screenshot is mostly blank ({painted:.2%} painted)"
    assert px["orange"] > 500, f"no bars in the screenshot ({px['orange']} orange pixels)"
    print(f"   heatmap screenshot: {png}")


# ---- the report -----------------------------------------------------------

def check_self_contained(text):
    """Nothing in the page is fetched: no scripts, styles, images, fonts or
    links from elsewhere (the SVG namespace URI is a name, not a fetch)."""
    rest = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for pat in [r"https?://", r"<script", r"<link", r"<img", r"<iframe", r"@import", r"url\(",
                r"\ssrc="]:
        assert not re.search(pat, rest, re.I), f"the report contains {pat!r}"


def test_report_static(d, f, tmp):
    """A quiet model: the report's numbers equal the daemon's global state,
    the reference agreement equals the daemon's rho, and it renders."""
    d.query("reference", model=f.model, method="rollout",
            values=[float(k % 7) for k in range(len(f.features))])
    g = d.query("global", model=f.model)
    assert g["ok"], g
    path = os.path.join(tmp, "static.html")
    rc, out, err = ctl(d, "report", "--model", f.model, "--listen", "0", "--top", "0",
                       "--trade", "bc-3", "-o", path)
    assert rc == 0 and err == "", (rc, err)
    text = open(path).read()
    check_self_contained(text)
    root = ET.fromstring(re.search(r'<svg[^>]*id="global-rollout".*?</svg>', text, re.S).group(0))
    bars = [r for r in root.iter(SVG + "rect") if r.get("class") == "bar"]
    # mean column then decayed column, each with a bar per feature
    nf = len(f.features)
    assert len(bars) == 2 * nf, len(bars)
    mean = g["methods"]["rollout"]["mean"]
    std = g["methods"]["rollout"]["std"]
    for b in bars[:nf]:
        name, rest = b.find(SVG + "title").text.split(": ", 1)
        v, s = [float(x) for x in rest.split(" ± ")]
        k = f.features.index(name)
        assert abs(v - mean[k]) <= 1e-5 * abs(mean[k]) + 1e-12, (name, v, mean[k])
        assert abs(s - std[k]) <= 1e-5 * abs(std[k]) + 1e-12, (name, s, std[k])
    got = [float(b.find(SVG + "title").text.split(": ")[1].split(" ")[0]) for b in bars[:nf]]
    assert got == sorted(got, reverse=True), "features are not sorted by mean"
    # Drift: windows of 2 trades closed (the first became the baseline);
    # the table and the chart's points hold the drift query's last window.
    dq = d.query("drift", model=f.model)
    for meth, st in dq["methods"].items():
        last = st["last"]
        assert last["window"] == 1 and last["compared"], (meth, last)
        row = re.search(r"<tr><td>%s</td><td>[a-z]+</td><td class=\"num\">2</td>(.*?)</tr>"
                        % meth, text).group(1)
        cells = re.findall(r'<td class="num[^"]*">([^<]*)</td>', row)
        for got, key in zip(cells[2:5], ["spearman", "ndcg", "js"]):
            want = last[key]
            assert (got == "undefined") if want is None else \
                abs(float(got) - want) <= 1e-3 * max(1.0, abs(want)), (meth, key, got, want)
        chart = ET.fromstring(re.search(r'<svg[^>]*id="drift-%s".*?</svg>' % meth, text,
                                        re.S).group(0))
        tips = [c.find(SVG + "title").text for c in chart.iter(SVG + "circle")]
        want = [f"window 1: {last[k]:.4g}" for k in ("spearman", "ndcg", "js")
                if last[k] is not None]
        assert [x.replace(" (alert)", "") for x in tips] == want, (meth, tips, want)
    rho = g["methods"]["rollout"]["reference_spearman"]
    assert f"Spearman ρ = {rho:.3f}" in text, rho
    assert "no head statistics arrived" in text.lower()
    m = measure(text, tmp)
    assert not m["errors"], m["errors"]
    ids = {s["id"] for s in m["svgs"]}
    assert {"global-rollout", "global-grad_rollout", "reference-rollout"} <= ids, ids
    for s in m["svgs"]:
        check_inside(s, f"report svg {s['id'] or s['parent']}")
    (trade,) = [s for s in m["svgs"] if s["parent"] == "trade-heatmap"]
    assert trade["marks"]["rect.cell"]["n"] == f.n * f.n

    # --top K: the K largest features per chart.
    rc, out, err = ctl(d, "report", "--model", f.model, "--listen", "0", "--top", "5")
    assert rc == 0 and err == "", (rc, err)
    root = ET.fromstring(re.search(r'<svg[^>]*id="global-rollout".*?</svg>', out, re.S).group(0))
    top5 = [r.find(SVG + "title").text.split(": ")[0] for r in root.iter(SVG + "rect")
            if r.get("class") == "bar"][:5]
    assert top5 == [f.features[k] for k in np.argsort(-np.asarray(mean), kind="stable")[:5]], \
        top5


def test_report_demo(tmp):
    """The demo stream (8 features, drifting): windows collected while
    listening, alerts, head heatmaps, a trade; rendered in chromium with no
    error logged and charts painted."""
    d = Daemon("--demo", "--drift-window", "40", "--drift-js-max", "0", ingest_bind=False)
    try:
        def has_windows():
            r = d.query("drift", model="demo-trades")
            return r["ok"] and r["alerts_total"] > 0 and r
        wait_until(has_windows, timeout=30, what="the demo's first drift alert")
        nf = len(d.query("schema", model="demo-trades")["features"])
        r = d.query("reference", model="demo-trades", method="rollout",
                    values=[float(nf - k) for k in range(nf)])
        assert r["ok"], r
        path = os.path.join(tmp, "demo.html")
        rc, out, err = ctl(d, "report", "--model", "demo-trades", "--listen", "3", "-o", path,
                           timeout=120)
        assert rc == 0 and err == "", (rc, err)
        drift = d.query("drift", model="demo-trades")
    finally:
        d.stop()
    text = open(path).read()
    check_self_contained(text)
    m = measure(text, tmp)
    assert not m["errors"], m["errors"]
    svgs = {s["id"] or s["parent"]: s for s in m["svgs"]}
    for s in m["svgs"]:
        check_inside(s, f"report svg {s['id'] or s['parent']}")
    methods = sorted(drift["methods"])
    for meth in methods:
        g = svgs[f"global-{meth}"]
        assert g["marks"]["rect.bar"]["n"] == 2 * nf, (meth, g["marks"])
        dr = svgs[f"drift-{meth}"]
        # 3 s at 200 trades/s closes ~15 windows of 40: many points each.
        assert dr["marks"]["circle.point"]["n"] >= 3 * 5, (meth, dr["marks"])
        assert dr["marks"]["path.series"]["n"] == 3
    assert svgs["heads-importance"]["marks"]["rect.cell"]["n"] == 3 * 4
    assert svgs["heads-confidence"]["marks"]["rect.cell"]["n"] == 3 * 4
    assert svgs["reference-rollout"]["marks"]["rect.bar"]["n"] == 2 * nf
    assert svgs["trade-heatmap"]["marks"]["rect.cell"]["n"] == (nf + 1) ** 2
    # Every compared window alerts (JS > 0): the alerts table has rows.
    assert text.count("<tr>", text.index('id="alerts"')) >= min(drift["alerts_total"], 5)

    # Screenshot with the browser's own log: no console error, no failed
    # load; the top of the page shows the charts' bars.
    png = os.path.join(tmp, "demo.png")
    out, err = chromium("--enable-logging=stderr", "--v=0", f"--screenshot={png}",
                        "--window-size=1280,1800", path)
    bad = [ln for ln in err.splitlines() if "CONSOLE" in ln or "Uncaught" in ln
           or "ERR_" in ln and "dbus" not in ln]
    assert not bad, bad
    px = pixels(png, tmp)
    orange, painted = px["orange"], px["painted"] / (px["w"] * px["h"])
    assert painted > 0.05, f"the report screenshot is mostly blank ({painted:.2%} painted)"
    assert orange > 2000, f"no bars in the screenshot ({orange} orange pixels)"
    print(f"   report screenshot: {png}")


def test_report_errors(d, f, tmp):
    rc, out, err = ctl(d, "report")
    assert rc == 2 and "--model is required" in err, (rc, err)
    rc, out, err = ctl(d, "report", "--model", f.model, "--listen", "x")
    assert rc == 2 and "non-negative integer" in err, (rc, err)
    rc, out, err = ctl(d, "report", "--model", "nope", "--listen", "0")
    assert rc == 1 and "unknown model 'nope'" in err and len(err.splitlines()) == 1, (rc, err)
    rc, out, err = ctl(d, "report", "--model", f.model, "--listen", "0", "--trade", "gone")
    assert rc == 1 and "not in the recent-trade cache" in err, (rc, err)
    rc, out, err = ctl(d, "report", "--model", f.model, "--listen", "0", "-o",
                       os.path.join(tmp, "no", "dir.html"))
    assert rc == 1 and "cannot write" in err, (rc, err)


@pytest.fixture(scope="module")
def tmp():
    """Where the output goes (SVG, HTML, screenshots): kept for a look."""
    tmp = tempfile.mkdtemp(prefix="xpl-report-")
    print(f"output (SVG, HTML, screenshots) in {tmp}")
    return tmp


@pytest.fixture(scope="module")
def fed():
    """A daemon (drift windows of 2) that has explained 5 trades of bc
    (31 tokens) and one of wide (64 tokens with long names)."""
    d = Daemon("--drift-window", "2")
    f = Feeder(d, "bc", FEATURES)
    for k in range(5):
        f.send(f"bc-{k}")
    wide = Feeder(d, "wide", [f"feature_{k:02d}_{'x' * (k % 9)}" for k in range(63)])
    wide.send("wide-1")
    wait_until(lambda: all(m["explained"] >= (5 if m["model"] == "bc" else 1)
                           for m in d.stats()["models"] if m["model"] in ("bc", "wide"))
               and len(d.stats()["models"]) >= 3, what="the trades to be explained")
    yield d, f, wide
    d.stop()


@pytest.fixture(scope="module")
def d(fed):
    return fed[0]


@pytest.fixture(scope="module")
def f(fed):
    return fed[1]


def test_heatmap_layout_31_tokens(d, f, tmp):
    check_heatmap_layout(d, f, "bc-3", tmp)


def test_heatmap_layout_64_tokens(fed, tmp):
    d, _, wide = fed
    check_heatmap_layout(d, wide, "wide-1", tmp)
