"""Independent float64 reference of ../shared/MATH.md, in numpy.

Written from the definitions, full matrices everywhere (no row-vector
shortcuts), so that it shares no structure with the C library it checks.
Used by the end-to-end tests and the golden-vector check.
"""
import numpy as np


def fuse(A, how):
    """Head fusion of one layer's [H][n][n] tensor."""
    if how == "mean":
        return A.mean(axis=0)
    if how == "max":
        return A.max(axis=0)
    if how == "min":
        return A.min(axis=0)
    raise ValueError(how)


def rownorm(M):
    s = M.sum(axis=1, keepdims=True)
    out = np.zeros_like(M)
    nz = s[:, 0] != 0
    out[nz] = M[nz] / s[nz]
    return out


def readout(M, cls):
    if cls < 0:
        return M.mean(axis=0)
    return np.delete(M[cls], cls)


def rollout_matrix(A, how="mean"):
    L, _, n, _ = A.shape
    R = np.eye(n)
    for l in range(L):
        R = rownorm(np.eye(n) + fuse(A[l], how)) @ R
    return R


def grad_rollout_matrix(A, G, resnorm=False):
    L, _, n, _ = A.shape
    R = np.eye(n)
    for l in range(L):
        Abar = np.maximum(0.0, G[l] * A[l]).mean(axis=0)
        R = R + Abar @ R
    if resnorm:
        R = rownorm(R - np.eye(n)) + np.eye(n)
    return R


def flow_capacities(A):
    """Capacities of attention flow: Â_l = rownorm(I + mean_h A_l), [L][n][n]."""
    L, _, n, _ = A.shape
    return np.stack([rownorm(np.eye(n) + A[l].mean(axis=0)) for l in range(L)])


def flow_from_capacities(C, cls):
    """Attention flow by networkx max-flow over capacities C [L][n][n],
    exactly the authors' construction: one maximum_flow_value per (source,
    sink), sources averaged without CLS."""
    import networkx as nx
    L, n, _ = C.shape
    g = nx.DiGraph()
    for l in range(L):
        for i in range(n):
            for j in range(n):
                g.add_edge((l + 1, i), (l, j), capacity=float(C[l, i, j]))
    sources = [cls] if cls >= 0 else list(range(n))
    out = np.zeros(n)
    for s in sources:
        for j in range(n):
            out[j] += nx.maximum_flow_value(g, (L, s), (0, j))
    out /= len(sources)
    return out if cls < 0 else np.delete(out, cls)


def flow(A, cls):
    """Attention flow of one trade's attention A [L][H][n][n]."""
    return flow_from_capacities(flow_capacities(A), cls)


def methods(A, G, cls, grad_resnorm=False, fusion="mean", with_flow=False):
    """All per-trade methods of MATH.md for one trade: dict name -> vector."""
    A = np.asarray(A, dtype=np.float64)
    L, H, n, _ = A.shape
    out = {
        "rollout": readout(rollout_matrix(A, fusion), cls),
        "first_layer": readout(fuse(A[0], fusion), cls),
        "attn_mean": readout(A.mean(axis=(0, 1)), cls),
        "diag": np.array([A[0, :, j, j].mean() for j in range(n) if j != cls]),
    }
    if G is not None:
        G = np.asarray(G, dtype=np.float64)
        out["grad_rollout"] = readout(grad_rollout_matrix(A, G, grad_resnorm), cls)
    if with_flow:
        out["flow"] = flow(A, cls)
    return out


def head_stats(A, G):
    A = np.asarray(A, dtype=np.float64)
    conf = A.max(axis=3).mean(axis=2)
    imp = None if G is None else np.abs((A * np.asarray(G, np.float64)).sum(axis=(2, 3)))
    return imp, conf


def avg_ranks(x):
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a, b):
    ra, rb = avg_ranks(a), avg_ranks(b)
    if np.all(ra == ra[0]) or np.all(rb == rb[0]):
        return None
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def ndcg(cur, ref, k):
    cur = np.asarray(cur, np.float64)
    ref = np.asarray(ref, np.float64)
    gain = np.maximum(ref, 0.0)
    by_cur = sorted(range(len(cur)), key=lambda i: (-cur[i], i))
    by_ref = sorted(range(len(ref)), key=lambda i: (-ref[i], i))
    disc = lambda order: sum(gain[f] / np.log2(r + 2) for r, f in enumerate(order[:k]))
    idcg = disc(by_ref)
    return None if idcg == 0 else float(disc(by_cur) / idcg)


def js(a, b):
    p = np.abs(np.asarray(a, np.float64))
    q = np.abs(np.asarray(b, np.float64))
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    kl = lambda x, y: sum(xi * np.log2(xi / yi) for xi, yi in zip(x, y) if xi > 0)
    return float(0.5 * kl(p, m) + 0.5 * kl(q, m))
