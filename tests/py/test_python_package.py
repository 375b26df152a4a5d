"""client/python as an installed package, as a user installs it.

- one version: xplain.__version__ equals the daemon's (project(xplain
  VERSION ...) in CMakeLists.txt, and `xplaind --version` of the build),
  and pyproject.toml takes it from xplain/__init__.py;
- `pip install --no-index --no-build-isolation <client/python>` into a
  fresh `python3 -m venv --system-site-packages` made by /usr/bin/python3
  (Debian's setuptools build the wheel; no PyPI) succeeds;
- from another directory, with no PYTHONPATH, the venv's python imports
  xplain from the venv's site-packages, its metadata has the version and
  the runtime requirements, the PEP 561 marker is installed, help() shows
  the docstrings of the public API, and the public signatures carry type
  hints;
- the installed package talks to the real daemon: it starts xplaind,
  captures a small model with nn.MultiheadAttention layers, rtdl-style
  attention modules (match=) and scaled_dot_product_attention calls (the
  documented formula installed under that name on PyTorch < 2.0), publishes, and receives the explanations, which equal
  tests/ref.py (float64) on the captured tensors.

Run by ctest with /usr/bin/python3 and XPL_BUILD_DIR / XPL_SOURCE_DIR.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

SOURCE = os.environ.get("XPL_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("XPL_BUILD_DIR") or os.path.join(SOURCE, "build")
XPLAIND = os.path.abspath(os.path.join(BUILD, "daemon", "xplaind"))
sys.path.insert(0, os.path.join(SOURCE, "tests"))

import pyvenv   # noqa: E402
import ref      # noqa: E402


def cmake_version():
    with open(os.path.join(SOURCE, "CMakeLists.txt")) as f:
        m = re.search(r"^project\(xplain\s+VERSION\s+([0-9.]+)", f.read(), re.M)
    assert m, "no project(xplain VERSION ...) in CMakeLists.txt"
    return m.group(1)


def source_version():
    with open(os.path.join(pyvenv.PACKAGE, "xplain", "__init__.py")) as f:
        m = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)
    assert m, "no __version__ in xplain/__init__.py"
    return m.group(1)


def test_one_version():
    v = cmake_version()
    assert source_version() == v, "xplain.__version__ %s, daemon %s" % (source_version(), v)
    out = subprocess.run([XPLAIND, "--version"], stdout=subprocess.PIPE, text=True, timeout=10).stdout
    assert out.strip() == "xplaind " + v, out
    with open(os.path.join(pyvenv.PACKAGE, "pyproject.toml")) as f:
        pp = f.read()
    assert re.search(r'^dynamic = \["version"\]$', pp, re.M) and \
        'version = {attr = "xplain.__version__"}' in pp, "pyproject.toml does not take the version from xplain"
    print("  version %s" % v)


# Run by the venv's python, in a directory that is not the source tree.
INSIDE = r'''
import importlib.metadata as md, inspect, io, json, os, pydoc, sys, typing
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F
import xplain
from xplain.torch_capture import AttentionCapture
res = {"file": xplain.__file__, "version": xplain.__version__, "dist_version": md.version("xplain"),
       "requires": md.requires("xplain"), "sys_path0": sys.path[0],
       "typed": os.path.exists(os.path.join(os.path.dirname(xplain.__file__), "py.typed"))}
res["help"] = {name: pydoc.render_doc(obj, renderer=pydoc.plaintext)
               for name, obj in (("xplain", xplain), ("AttentionCapture", xplain.AttentionCapture),
                                 ("explain_forward", xplain.explain_forward), ("Publisher", xplain.Publisher))}
res["hints"] = {name: sorted(typing.get_type_hints(f)) for name, f in (
    ("AttentionCapture.__init__", AttentionCapture.__init__), ("AttentionCapture.run", AttentionCapture.run),
    ("explain_forward", xplain.explain_forward), ("Publisher.send", xplain.Publisher.send),
    ("Subscriber.recv", xplain.Subscriber.recv), ("Client.trade", xplain.Client.trade))}

class Attn(nn.Module):            # rtdl style: [B*H, n, d_head], F.softmax
    def __init__(self, d, h):
        super().__init__()
        self.h, self.qkv, self.out = h, nn.Linear(d, 3 * d), nn.Linear(d, d)
    def forward(self, x):
        B, n, d = x.shape
        q, k, v = (t.reshape(B, n, self.h, -1).transpose(1, 2).reshape(B * self.h, n, -1)
                   for t in self.qkv(x).chunk(3, -1))
        p = F.softmax(q @ k.transpose(1, 2) / (d // self.h) ** 0.5, dim=-1)
        return self.out((p @ v).reshape(B, self.h, n, -1).transpose(1, 2).reshape(B, n, d))

if not hasattr(F, "scaled_dot_product_attention"):     # PyTorch < 2.0: the documented formula
    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
        w = torch.softmax(q @ k.transpose(-2, -1) * (scale or q.size(-1) ** -0.5), dim=-1)
        return w @ v
    F.scaled_dot_product_attention = sdpa

class Sdpa(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h, self.qkv = h, nn.Linear(d, 3 * d)
    def forward(self, x):
        B, n, d = x.shape
        q, k, v = self.qkv(x).reshape(B, n, 3, self.h, -1).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, n, d)

class Model(nn.Module):           # two MHA layers, two custom ones, two SDPA ones; CLS last
    def __init__(self, nf=4, d=8):
        super().__init__()
        self.w, self.cls = nn.Parameter(torch.randn(nf, d)), nn.Parameter(torch.randn(d))
        self.mha = nn.ModuleList([nn.MultiheadAttention(d, 2, batch_first=True) for _ in range(2)])
        self.own = nn.ModuleList([Attn(d, 2) for _ in range(2)])
        self.sdpa = nn.ModuleList([Sdpa(d, 2) for _ in range(2)])
        self.head = nn.Linear(d, 2)
    def forward(self, x):
        t = torch.cat([x[..., None] * self.w, self.cls.expand(len(x), 1, -1)], 1)
        for m in self.mha:
            t = t + m(t, t, t, need_weights=False)[0]
        for m in list(self.own) + list(self.sdpa):
            t = t + m(t)
        return self.head(t[:, -1])

torch.manual_seed(0)
model = Model()
x = torch.randn(3, 4)
c = AttentionCapture(model, match=(nn.MultiheadAttention, Attn)).run(x)
with xplain.Daemon(os.environ["XPLAIND"], methods="rollout,grad_rollout,attn_mean") as d:
    q = xplain.Client(d.query, timeout=5)
    sub = xplain.Subscriber(d.publish, models=["pkg"], query=q)
    pub = xplain.Publisher("pkg", connect=d.ingest, tokens=["a", "b", "c", "d", "CLS"], cls=4)
    assert pub.wait_subscriber(10), "the daemon never subscribed"
    got = {}
    seq = 0
    while len(got) < 3:           # the subscriber's slow join: resend until all 3 arrive
        pub.send(c.attn, grad=c.grad, ids=[0, 1, 2], target=c.target, y=c.target_prob())
        seq += 1
        assert seq < 200, "no explanations"
        e = sub.recv(timeout=0.1)
        while e is not None:
            got[e.id] = {"attr": {k: v.tolist() for k, v in e.attr.items()}, "features": e.features,
                         "target": e.target}
            e = sub.recv(timeout=0.05)
    res["ping_version"] = q.ping()["version"]
    res["got"] = got
    for s in (pub, sub, q):
        s.close()
np.save(sys.argv[1] + ".attn.npy", c.attn)
np.save(sys.argv[1] + ".grad.npy", c.grad)
res["target"] = c.target.tolist()
with open(sys.argv[1], "w") as f:
    json.dump(res, f)
'''


def test_install_and_use():
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        py, out = pyvenv.install(tmp)
        assert "Successfully installed xplain-%s" % cmake_version() in out, out
        print("  venv + pip install: %.1f s" % (time.monotonic() - t0))
        elsewhere = os.path.join(tmp, "elsewhere")
        os.mkdir(elsewhere)
        script = os.path.join(elsewhere, "use_xplain.py")
        with open(script, "w") as f:
            f.write(INSIDE)
        result = os.path.join(elsewhere, "result.json")
        pyvenv.run([py, script, result], timeout=120, cwd=elsewhere,
                   env=pyvenv.clean_env(XPLAIND=XPLAIND, XPL_BUILD_DIR="", PYTHONDONTWRITEBYTECODE="1"))
        with open(result) as f:
            res = json.load(f)
        A = np.load(result + ".attn.npy")
        G = np.load(result + ".grad.npy")

    v = cmake_version()
    site = os.path.join(tmp, "venv", "lib")
    assert res["file"].startswith(site) and "site-packages" in res["file"], res["file"]
    assert res["version"] == res["dist_version"] == res["ping_version"] == v, res
    assert sorted(r.split(";")[0].strip() for r in res["requires"] if "extra" not in r) == \
        ["msgpack", "numpy", "pyzmq"], res["requires"]
    assert any(r.startswith("torch") and "extra" in r for r in res["requires"]), res["requires"]
    assert res["typed"], "py.typed not installed"
    h = res["help"]
    assert "Capture per-head attention probabilities" in h["AttentionCapture"] or \
        "Attention and gradient capture" in h["AttentionCapture"], h["AttentionCapture"][:500]
    assert "match" in h["AttentionCapture"] and "probs" in h["AttentionCapture"]
    assert "sample" in h["explain_forward"] and "queue_size" in h["explain_forward"]
    assert "explain_forward" in h["xplain"] and re.search(r"^VERSION\s*\n\s*%s" % re.escape(v), h["xplain"], re.M)
    assert "Encodes attention" in h["Publisher"]
    for name, hints in res["hints"].items():
        assert "return" in hints and len(hints) >= 2, "%s: type hints %s" % (name, hints)

    # The explanations the installed package received, against the reference.
    assert A.shape == G.shape == (3, 6, 2, 5, 5), A.shape     # 2 MHA, 2 own softmax, 2 SDPA
    assert sorted(res["got"]) == ["0", "1", "2"], sorted(res["got"])
    for i, x in res["got"].items():
        b = int(i)
        want = ref.methods(A[b], G[b], 4)
        assert x["features"] == ["a", "b", "c", "d"] and x["target"] == res["target"][b]
        assert sorted(x["attr"]) == ["attn_mean", "grad_rollout", "rollout"], sorted(x["attr"])
        for m, vec in x["attr"].items():
            got, w = np.asarray(vec, np.float64), want[m]
            assert np.all(np.abs(got - w) <= 1e-5 * np.abs(w) + 1e-7), (i, m, got, w)
    print("  imported from %s; 3 trades explained by the daemon equal the reference" % res["file"])
