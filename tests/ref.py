"""Independent float64 reference of core/MATH.md, in numpy.

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


def discard(F, cls, rho):
    """Discard ratio of MATH.md on a fused n x n matrix (a copy): in every
    row, zero the int(rho * m) smallest entries among the columns != cls
    (m = n - 1, or n without CLS), ties to the lower column first."""
    F = np.array(F, dtype=np.float64)
    n = F.shape[0]
    cand = [j for j in range(n) if j != cls]
    k = int(rho * len(cand))
    for i in range(n):
        for j in sorted(cand, key=lambda j: (F[i, j], j))[:k]:
            F[i, j] = 0.0
    return F


def start_layer(L, start):
    """Layers s .. L-1 for a start layer s (negative: from the end)."""
    s = L + start if start < 0 else start
    if not 0 <= s < L:
        raise ValueError("start layer %d out of range for L=%d" % (start, L))
    return range(s, L)


def rollout_matrix(A, how="mean", rho=0.0, start=0, cls=-1):
    L, _, n, _ = A.shape
    R = np.eye(n)
    for l in start_layer(L, start):
        R = rownorm(np.eye(n) + discard(fuse(A[l], how), cls, rho)) @ R
    return R


def grad_rollout_matrix(A, G, resnorm=False, start=0, clamp=True):
    """grad_rollout (A: attention) and its variants: clamp=False is
    grad_rollout_signed, A = the relevance tensor is lrp_rollout."""
    L, _, n, _ = A.shape
    R = np.eye(n)
    for l in start_layer(L, start):
        P = G[l] * A[l]
        Abar = (np.maximum(0.0, P) if clamp else P).mean(axis=0)
        R = R + Abar @ R
    if resnorm:
        R = rownorm(R - np.eye(n)) + np.eye(n)
    return R


def flow_capacities(A, rho=0.0, cls=-1):
    """Capacities of attention flow: Â_l = rownorm(I + mean_h A_l), [L][n][n],
    with the discard ratio when rho > 0."""
    L, _, n, _ = A.shape
    return np.stack([rownorm(np.eye(n) + discard(A[l].mean(axis=0), cls, rho)) for l in range(L)])


def colsum(A, cls, how="mean"):
    """Borisov's column-wise summation: sum_i F_h(A_0)[i][j], j != cls."""
    c = fuse(np.asarray(A, np.float64)[0], how).sum(axis=0)
    return c if cls < 0 else np.delete(c, cls)


def groups(vec, feat_of, nfeat):
    """Feature f = the sum of the readout positions k with feat_of[k] == f."""
    out = np.zeros(nfeat)
    for k, f in enumerate(feat_of):
        out[f] += vec[k]
    return out


def variants(A, G, cls, rel=None, fusion="mean", rho=0.0, start=0, resnorm=False,
             discard_flow=False, with_flow=False):
    """The variants of MATH.md for one trade. G and rel are [T][L][H][n][n]
    (or None); gradient methods give a list of T vectors."""
    A = np.asarray(A, dtype=np.float64)
    out = {
        "rollout": readout(rollout_matrix(A, fusion, rho, start, cls), cls),
        "colsum": colsum(A, cls, fusion),
    }
    if G is not None:
        G = np.asarray(G, dtype=np.float64)
        out["grad_rollout"] = [readout(grad_rollout_matrix(A, g, resnorm, start), cls) for g in G]
        out["grad_rollout_signed"] = [readout(grad_rollout_matrix(A, g, resnorm, start, clamp=False), cls)
                                      for g in G]
        if rel is not None:
            rel = np.asarray(rel, dtype=np.float64)
            out["lrp_rollout"] = [readout(grad_rollout_matrix(r, g, resnorm, start), cls)
                                  for r, g in zip(rel, G)]
    if with_flow:
        out["flow"] = flow_from_capacities(flow_capacities(A, rho if discard_flow else 0.0, cls), cls)
    return out


def magnitude_scale(X, G, cls, resnorm=False, start=0, clamp=True):
    """The magnitude scale of a gradient-family readout (X = A, or the
    relevance for lrp_rollout), what its float32 error is relative to: the
    same readout with every product counted by its absolute value, and,
    with the residual normalisation, the bound that its division by a row
    sum near 0 implies (as tests/unit/test_variants.c's signed_scale).
    grad_rollout_signed is compared to 1e-5 of |want| + this scale: a sum
    of products of both signs can cancel to far below its terms."""
    X, G = np.asarray(X, np.float64), np.asarray(G, np.float64)
    Xa, Ga = np.abs(X), np.abs(G)
    if not resnorm:
        return readout(grad_rollout_matrix(Xa, Ga, False, start), cls)
    n = X.shape[-1]
    I = np.eye(n)
    R = grad_rollout_matrix(X, G, False, start, clamp=clamp) - I
    Ra = grad_rollout_matrix(Xa, Ga, False, start) - I
    rows = [cls] if cls >= 0 else range(n)
    acc = np.zeros(n)
    for i in rows:
        S, Sa = R[i].sum(), Ra[i].sum()
        if S != 0:
            acc += 4 * (Ra[i] + np.abs(R[i] / S) * Sa) / abs(S)
    acc /= len(rows)
    return acc if cls < 0 else np.delete(acc, cls)


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
