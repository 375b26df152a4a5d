#!/usr/bin/python3
"""A real live model explained by xplaind.

An FT-Transformer (Gorishniy et al. 2021: a feature tokenizer for numeric
features, a CLS token appended last, pre-norm Transformer blocks on
torch.nn.MultiheadAttention) is trained on scikit-learn's bundled
breast-cancer data (569 rows, 30 numeric features; no download). Its test
rows are then streamed, in batches, as live trades: for each batch the
PyTorch helper captures every layer's per-head attention and its gradient
for the predicted class, and the Publisher sends them to xplaind (with
gradient x attention as the relevance tensor `rel` of lrp_rollout). The
example subscribes to the explanations and ends with two checks:

1. every per-trade vector the daemon published equals the float64
   reference (tests/ref.py, an independent numpy implementation of
   MATH.md) computed from the very tensors that were sent, to 1e-5
   relative;
2. per method, Spearman's rho between the daemon's global attribution
   (the `global` query; while the daemon has none, the mean of the
   per-trade vectors received) and permutation importance computed on the
   same model and rows: the agreement table, one row per method the
   daemon serves (the variants colsum, grad_rollout_signed and
   lrp_rollout included).

Run (from the source tree, after building the daemon), with the package
installed (client/python/README.md):

    python3 -m venv --system-site-packages ~/xplain-venv
    ~/xplain-venv/bin/pip install --no-index --no-build-isolation ./client/python
    ~/xplain-venv/bin/python examples/ft_transformer.py --xplaind build/daemon/xplaind

(or, without installing, PYTHONPATH=client/python /usr/bin/python3 ...).
The float64 reference it checks against is the source tree's tests/ref.py
(--ref), which is not part of the package.

Without --ingest-connect/--ingest-bind the example starts its own daemon
(on ipc:// endpoints in a temporary directory) and stops it at the end.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import torch
import torch.nn as nn

import xplain
from xplain.torch_capture import AttentionCapture

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(os.path.dirname(HERE), "tests", "ref.py")
ref = None          # tests/ref.py, loaded by load_ref()


def load_ref(path):
    """The source tree's float64 reference, by file path (it is a test
    module, not part of the xplain package)."""
    global ref
    import importlib.util
    spec = importlib.util.spec_from_file_location("xplain_example_ref", path)
    if spec is None or not os.path.isfile(path):
        raise SystemExit("the float64 reference %s is missing (give --ref tests/ref.py of the source tree)" % path)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)

MODEL = "ftt_breast_cancer"
METHOD_ORDER = ["rollout", "grad_rollout", "first_layer", "attn_mean", "diag", "flow", "colsum",
                "grad_rollout_signed", "lrp_rollout"]


# --- the model ------------------------------------------------------------

class FeatureTokenizer(nn.Module):
    """x [B, d_num] -> tokens [B, d_num + 1, d]: token j = x_j * W_j + b_j,
    and the CLS token appended last (index d_num), as FT-Transformer does."""

    def __init__(self, d_num, d):
        super().__init__()
        s = d ** -0.5
        self.weight = nn.Parameter(torch.empty(d_num, d).uniform_(-s, s))
        self.bias = nn.Parameter(torch.empty(d_num, d).uniform_(-s, s))
        self.cls = nn.Parameter(torch.empty(d).uniform_(-s, s))

    def forward(self, x):
        tok = x[:, :, None] * self.weight + self.bias
        return torch.cat([tok, self.cls.expand(x.shape[0], 1, -1)], dim=1)


class Block(nn.Module):
    """Pre-norm Transformer block: x + MHA(LN(x)), x + FFN(LN(x)), ReGLU
    feed-forward; the first block skips the attention pre-norm (the
    tokenizer output is used as is, as in the paper)."""

    def __init__(self, d, heads, d_ffn, attn_dropout, ffn_dropout, first):
        super().__init__()
        self.norm1 = nn.Identity() if first else nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=attn_dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, 2 * d_ffn)
        self.ff2 = nn.Linear(d_ffn, d)
        self.drop = nn.Dropout(ffn_dropout)

    def forward(self, x):
        h = self.norm1(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        x = x + a
        u, g = self.ff1(self.norm2(x)).chunk(2, dim=-1)
        return x + self.ff2(self.drop(u * torch.relu(g)))


class FTTransformer(nn.Module):
    def __init__(self, d_num, d=32, layers=3, heads=4, d_ffn=64, n_classes=2,
                 attn_dropout=0.1, ffn_dropout=0.1):
        super().__init__()
        self.tokenizer = FeatureTokenizer(d_num, d)
        self.blocks = nn.ModuleList([Block(d, heads, d_ffn, attn_dropout, ffn_dropout, i == 0)
                                     for i in range(layers)])
        self.head = nn.Sequential(nn.LayerNorm(d), nn.ReLU(), nn.Linear(d, n_classes))

    def forward(self, x):
        t = self.tokenizer(x)
        for b in self.blocks:
            t = b(t)
        return self.head(t[:, -1])          # the CLS token, last


# --- data, training, permutation importance ----------------------------------

def load_data(seed):
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    ds = load_breast_cancer()
    idx = np.arange(len(ds.target))
    tr, te = train_test_split(idx, test_size=0.3, random_state=seed, stratify=ds.target)
    sc = StandardScaler().fit(ds.data[tr])
    X = sc.transform(ds.data).astype(np.float32)
    return X, ds.target.astype(np.int64), tr, te, [str(f) for f in ds.feature_names]


def train(model, X, y, epochs, seed, lr=1e-3, batch=32):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    lossf = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(Xt), generator=g)
        for k in range(0, len(Xt), batch):
            b = perm[k:k + batch]
            opt.zero_grad()
            lossf(model(Xt[b]), yt[b]).backward()
            opt.step()
    model.eval()


def predict_proba(model, X):
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(X)), dim=1).numpy()


def log_loss(p, y):
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def permutation_importance(model, X, y, repeats, seed):
    """Mean increase of the log-loss when one feature's column is shuffled
    (Breiman's random permutation importance; log-loss rather than
    accuracy, which barely moves on a data set the model nearly solves).
    The `repeats` shuffles of a feature are scored in one forward pass."""
    rng = np.random.default_rng(seed)
    base = log_loss(predict_proba(model, X), y)
    imp = np.zeros((X.shape[1], repeats))
    for j in range(X.shape[1]):
        Xp = np.repeat(X[None], repeats, axis=0)
        for r in range(repeats):
            Xp[r, :, j] = X[rng.permutation(len(X)), j]
        p = predict_proba(model, Xp.reshape(-1, X.shape[1])).reshape(repeats, len(X), -1)
        imp[j] = [log_loss(p[r], y) - base for r in range(repeats)]
    return imp.mean(axis=1), imp.std(axis=1)


# --- streaming through xplaind ------------------------------------------------

def collect(sub, q, want_ids, timeout):
    """Explanations of `want_ids` from the subscription; any the SUB socket
    missed (slow joiner, HWM) are fetched from the daemon's trade cache."""
    got = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(want_ids) and time.monotonic() < deadline:
        x = sub.recv(timeout=0.2)
        if x is not None and x.id in want_ids:
            got[x.id] = x
    fetched = 0
    for i in want_ids:
        if i not in got:
            r = q.trade(MODEL, i)
            got[i] = xplain.Explanation(dict(r, attr={k: v.tolist() for k, v in r["attr"].items()}),
                                        r.get("features"))
            fetched += 1
    return got, fetched


def verify(sent, got, cls, rel, flow_max):
    """Compare every published per-trade vector with tests/ref.py run in
    float64 on the tensors as the daemon decoded them. `flow` is checked on
    the first `flow_max` trades that carry it (the reference runs one
    networkx max-flow per feature: seconds per trade). Returns per method
    (trades, values, max relative error, failures)."""
    out = {}
    flows = 0
    for tid, (A, G, R) in sent.items():
        with_flow = "flow" in got[tid].attr and flows < flow_max
        flows += with_flow
        want = ref.methods(A, G, cls, with_flow=with_flow)
        v = ref.variants(A, G[None], cls, R[None])
        want.update(colsum=v["colsum"], grad_rollout_signed=v["grad_rollout_signed"][0],
                    lrp_rollout=v["lrp_rollout"][0])
        # A signed sum is compared to its magnitude scale (ref.py says why).
        scale = {"grad_rollout_signed": ref.magnitude_scale(A, G, cls, clamp=False)}
        for m, v in got[tid].attr.items():
            if m not in want:
                continue
            w = want[m]
            d = np.asarray(v, np.float64)
            o = out.setdefault(m, {"trades": 0, "values": 0, "max_rel": 0.0, "failures": 0})
            o["trades"] += 1
            if d.shape != w.shape:
                o["failures"] += 1
                continue
            err = np.abs(d - w)
            o["values"] += d.size
            mag = np.abs(w) + scale.get(m, 0.0)
            o["max_rel"] = max(o["max_rel"], float(np.max(err / np.maximum(mag, 1e-30))))
            o["failures"] += int(np.sum(err > rel * mag + 1e-12))
    return out


def daemon_global(q):
    """Per method, the daemon's global mean attribution over all trades of
    the current epoch (the `global` query, proto/global.md), the number of
    trades in it and, once a reference is set, the daemon's own Spearman rho
    between the two; {} while the daemon has no global state."""
    try:
        g = q.global_state(MODEL)
    except xplain.XplainError:
        return {}
    return {m: {"mean": e["mean"], "count": e["count"], "daemon_rho": e.get("reference_spearman")}
            for m, e in g["methods"].items()}


def fmt(x, w=8):
    return ("%*.3f" % (w, x)) if isinstance(x, float) else ("%*s" % (w, "n/a" if x is None else x))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xplaind", help="daemon binary to start (default: $XPLAIND, "
                    "$XPL_BUILD_DIR/daemon/xplaind, build*/daemon/xplaind)")
    ap.add_argument("--ingest-connect", metavar="EP",
                    help="use a running daemon that binds its ingest here (--ingest-bind EP)")
    ap.add_argument("--ingest-bind", metavar="EP",
                    help="use a running daemon that connects its ingest here (--ingest-connect EP)")
    ap.add_argument("--publish", metavar="EP", help="the running daemon's --publish endpoint")
    ap.add_argument("--query", metavar="EP", help="the running daemon's --query endpoint")
    ap.add_argument("--methods", default="rollout,grad_rollout,first_layer,attn_mean,diag,flow,"
                    "colsum,grad_rollout_signed,lrp_rollout",
                    help="--methods of the daemon this example starts (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    ap.add_argument("--rows", type=int, default=0, help="stream only the first N test rows (0: all)")
    ap.add_argument("--batch", type=int, default=8, help="trades per ingest message (default 8)")
    ap.add_argument("--dtype", default="f32", choices=xplain.DTYPES)
    ap.add_argument("--repeats", type=int, default=10, help="permutation importance repeats (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: this model is too small to gain from more)")
    ap.add_argument("--flow-check", type=int, default=3, metavar="N",
                    help="check flow against the networkx reference on N trades (default 3)")
    ap.add_argument("--rel", type=float, default=1e-5, help="per-trade tolerance, relative (default 1e-5)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for explanations")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--ref", default=REF, metavar="FILE",
                    help="the float64 reference, tests/ref.py of the source tree (default: %(default)s)")
    a = ap.parse_args(argv)
    load_ref(a.ref)
    print("xplain %s from %s" % (xplain.__version__, os.path.dirname(os.path.abspath(xplain.__file__))))
    external = a.ingest_connect or a.ingest_bind
    if external and not (a.publish and a.query):
        ap.error("a running daemon needs --publish and --query as well")

    t_start = time.monotonic()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(a.threads)

    X, y, tr, te, names = load_data(a.seed)
    rows = te if a.rows <= 0 else te[:a.rows]
    model = FTTransformer(X.shape[1])
    t0 = time.monotonic()
    train(model, X[tr], y[tr], a.epochs, a.seed)
    p = predict_proba(model, X[te])
    acc = float((p.argmax(1) == y[te]).mean())
    print("trained %s: %d layers x %d heads, %d tokens (CLS last) on %d rows in %.1f s; "
          "test accuracy %.3f, log-loss %.3f"
          % (MODEL, len(model.blocks), model.blocks[0].attn.num_heads, X.shape[1] + 1,
             len(tr), time.monotonic() - t0, acc, log_loss(p, y[te])))

    daemon = None
    if not external:
        daemon = xplain.Daemon(a.xplaind, methods=a.methods).start()
        ingest, publish, query = daemon.ingest, daemon.publish, daemon.query
        print("started %s (log %s)" % (" ".join(daemon.cmd), daemon.log))
    else:
        ingest, publish, query = a.ingest_connect or a.ingest_bind, a.publish, a.query
    tokens = names + ["CLS"]
    cls = len(tokens) - 1
    try:
        q = xplain.Client(query, timeout=5.0)
        print("daemon %s" % q.ping()["version"])
        sub = xplain.Subscriber(publish, models=[MODEL], query=q)
        time.sleep(0.3)             # let the SUB's subscription reach the daemon
        kw = {"connect": ingest} if a.ingest_connect or daemon else {"bind": ingest}
        pub = xplain.Publisher(MODEL, tokens=tokens, cls=cls, dtype=a.dtype, **kw)
        if not pub.wait_subscriber(10.0):
            raise SystemExit("the daemon never subscribed to the publisher (%s)" % ingest)

        cap = AttentionCapture(model)
        sent = {}
        t0 = time.monotonic()
        for k in range(0, len(rows), a.batch):
            r = rows[k:k + a.batch]
            c = cap.run(torch.from_numpy(X[r]), target="pred")
            ids = [int(i) for i in r]
            # The relevance of every attention probability for lrp_rollout:
            # gradient x input (LRP-0's relevance where the model is
            # locally linear); an AttnLRP implementation would send its own.
            rel = np.asarray(c.attn, np.float32) * np.asarray(c.grad, np.float32)
            pub.send(c.attn, grad=c.grad, ids=ids, target=c.target, y=c.prob[:, 1], rel=rel)
            for b, i in enumerate(ids):
                # What the daemon decodes: the tensors after the wire dtype.
                sent[i] = (xplain.round_to(c.attn[b], a.dtype).astype(np.float64),
                           xplain.round_to(c.grad[b], a.dtype).astype(np.float64),
                           xplain.round_to(rel[b], a.dtype).astype(np.float64))
        t_stream = time.monotonic() - t0
        got, fetched = collect(sub, q, set(sent), a.timeout)
        print("streamed %d trades in %d messages (%s) in %.2f s; %d explanations received, "
              "%d fetched from the trade cache"
              % (len(sent), (len(rows) + a.batch - 1) // a.batch, a.dtype, t_stream,
                 len(got) - fetched, fetched))

        # 1. Per-trade numbers against the float64 reference.
        check = verify(sent, got, cls, a.rel, a.flow_check)
        print("\nper-trade check against tests/ref.py (float64, same tensors), "
              "|daemon - ref| <= %g |ref|%s:" % (a.rel, "; flow on %d trades" % a.flow_check
                                                 if "flow" in check else ""))
        print("  %-19s %7s %8s %12s %9s" % ("method", "trades", "values", "max rel err", "failures"))
        for m, o in check.items():
            print("  %-19s %7d %8d %12.2e %9d" % (m, o["trades"], o["values"], o["max_rel"], o["failures"]))
        n_flow = sum("flow" in x.attr for x in got.values())
        ok = bool(check) and all(
            o["failures"] == 0 and o["trades"] == (min(n_flow, a.flow_check) if m == "flow" else len(sent))
            for m, o in check.items())

        # 2. Global attribution vs permutation importance.
        methods = sorted({m for x in got.values() for m in x.attr}, key=METHOD_ORDER.index)
        t0 = time.monotonic()
        perm, perm_sd = permutation_importance(model, X[rows], y[rows], a.repeats, a.seed)
        t_perm = time.monotonic() - t0
        # Give the daemon permutation importance as the external reference
        # of each method: it then reports its own rho (and drift windows are
        # compared with it from now on).
        glob = daemon_global(q)
        for m in glob:
            q.reference(MODEL, m, perm)
        glob = daemon_global(q)
        table = []
        for m in methods:
            mine = np.mean([got[i].attr[m] for i in sent if m in got[i].attr], axis=0).astype(np.float64)
            g = glob.get(m)
            vec, src = (g["mean"], "global") if g is not None else (mine, "mean xpl")
            table.append({
                "method": m, "source": src, "trades": g["count"] if g else sum(m in got[i].attr for i in sent),
                "spearman": ref.spearman(vec, perm),
                "daemon_spearman": g["daemon_rho"] if g else None,
                "global_vs_mean_max_abs": float(np.max(np.abs(g["mean"] - mine))) if g else None,
                "top5": [names[j] for j in np.argsort(-vec, kind="stable")[:5]],
            })
        print("\nagreement with permutation importance (log-loss increase, %d repeats, "
              "same model and %d rows):" % (a.repeats, len(rows)))
        print("  %-19s %-9s %7s %13s %11s   %s" % ("method", "source", "trades", "spearman rho",
                                                  "daemon rho", "top 3 features"))
        for t in table:
            print("  %-19s %-9s %7d %13s %11s   %s" % (t["method"], t["source"], t["trades"],
                                                      fmt(t["spearman"], 13).strip(),
                                                      fmt(t["daemon_spearman"], 11).strip(),
                                                      ", ".join(t["top5"][:3])))
        top_perm = [names[j] for j in np.argsort(-perm, kind="stable")[:3]]
        print("  permutation importance top 3: %s (%.1f s)" % (", ".join(top_perm), t_perm))
        print("\nper-trade check: %s; total %.1f s" % ("PASS" if ok else "FAIL", time.monotonic() - t_start))
        if not ok and daemon is not None:
            print("daemon log:\n" + daemon.log_text())

        if a.json:
            with open(a.json, "w") as f:
                json.dump({"ok": ok, "accuracy": acc, "trades": len(sent), "fetched": fetched,
                           "check": check, "table": table, "features": names,
                           "permutation_importance": perm.tolist(),
                           "global_source": "global" if glob else "mean xpl",
                           "daemon_log": daemon.log if daemon else None}, f, indent=1)
        pub.close()
        sub.close()
        q.close()
        return 0 if ok else 1
    finally:
        if daemon is not None:
            daemon.cleanup()


if __name__ == "__main__":
    sys.exit(main())
