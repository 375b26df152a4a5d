/*  flow: attention flow by Dinic's algorithm on a bit-set residual graph.

    Structure used (see flow.h for the graph):

    - The top layer reduces to the source: only (L, src) has edges, so the
      source edges are row `src` of Â_{L-1}. The bottom layer reduces to
      the sink: only (0, sink) can take flow, through column `sink` of
      Â_0. What is left is a middle graph of L-1 layers of n nodes with
      complete bipartite edges between neighbours, shared by every sink.
    - Nodes of one layer are bits of a word array (n <= 64: one word), so
      the residual graph is held as bit sets: for each node the forward
      edges with residual capacity and the backward edges with flow. A BFS
      frontier expands a whole node with a few AND/ANDNOT, the DFS finds
      its next admissible arc with one count-trailing-zeros, and a node
      found to be a dead end is removed from every parent at once by
      clearing one bit of its layer's "alive" set.
    - Every node's outgoing capacities sum to 1 (rownorm) and the source
      emits at most 1, so flow never gets stuck in the middle: blocking
      happens at the sink edges and travels up. The DFS tries the sink's
      own column first in the three layers above the sink and the
      diagonal edge (capacity >= 1/2) first elsewhere, which finds the
      usual flows with few, wide augmentations (typically one Dinic
      phase for random attention).

    Max flow per sink is computed from scratch (warm starts from the
    previous sink's flow and a persistent preflow push-relabel were both
    measured slower: a sink change moves about half a unit of flow, the
    spike into the old sink's column, which costs as much as routing it
    again). Nothing is allocated per trade once the shape has been seen.

    Floating point: the algorithm runs in double, on the float capacities
    converted exactly. Termination does not depend on any epsilon: a push
    that fills an edge (or whose sum rounds up to its capacity) assigns
    flow = capacity, a cancel that empties one assigns 0, so an arc is in
    the residual bit sets exactly while its residual is positive; every
    DFS call either places all it was offered or exhausts its arcs, and
    Dinic's distance argument bounds the phases. The value is the sum of
    the sink edges' flows. Capacities that are not finite and positive
    count as 0.  */
#include "flow.h"

#include <assert.h>
#include <float.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t word_t;

/* One DFS frame: a node, what it was offered and still has to place,
   and the arc to the child currently being explored. */
typedef struct {
    uint32_t k, i, x;       /* layer 1..L-1, token, node id */
    uint32_t to;            /* pending arc's child token */
    int32_t dir;            /* pending arc: +1 forward (layer k-1), -1 backward (k+1) */
    size_t e;               /* pending arc's edge index in f */
    double lim, rem;
    double res, off;        /* pending arc's residual and the amount offered */
} frame_t;

struct flow_work_t {
    void *arena;            /* every buffer below, 64-byte aligned */
    uint32_t cap_L, cap_n;  /* shape the arena was sized for */

    /* current shape and terminals */
    uint32_t L, n, W, sink;
    const float *C;         /* [L][n][n] capacities of this trade */

    double *f;              /* [L][n][n] flow on (l+1, i) -> (l, j), l = 1..L-2 */
    double *a, *fs;         /* source edges: capacity and flow, per layer-(L-1) token */
    double *b, *ft;         /* sink edges: capacity and flow, per layer-1 token */
    double *acc;            /* per-sink sums over sources (no CLS) */
    word_t *cmask;          /* [L][n][W] capacity > 0 */
    word_t *fm;             /* [V][W] forward arcs with residual (to layer k-1) */
    word_t *bm;             /* [V][W] backward arcs: incoming edges with flow */
    word_t *cf, *cb;        /* [V][W] this phase's admissible arcs */
    word_t *vis, *cur, *nxt, *alive;    /* [L][W] per-layer sets */
    word_t *src, *snk, *snkadm;         /* [W] */
    frame_t *stack;         /* DFS frames, one per BFS level at most */

    flow_stats_t stats;
};

#define BIT(m, i) (((m)[(i) >> 6] >> ((i) & 63)) & 1u)
#define SET(m, i) ((m)[(i) >> 6] |= (word_t)1 << ((i) & 63))
#define CLR(m, i) ((m)[(i) >> 6] &= ~((word_t)1 << ((i) & 63)))

flow_work_t *
flow_work_new(void)
{
    return calloc(1, sizeof(flow_work_t));
}

void
flow_work_destroy(flow_work_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->arena);
    free(*self_p);
    *self_p = NULL;
}

void
flow_work_stats(const flow_work_t *w, flow_stats_t *out)
{
    *out = w->stats;
}

/* Carve every buffer for shape (L, n) out of one arena, or just measure
   it when `base` is NULL. Returns the bytes needed. */
static size_t
s_layout(flow_work_t *w, uint32_t L, uint32_t n, char *base)
{
    size_t W = ((size_t)n + 63) / 64, V = (size_t)L * n, off = 0;
#define CARVE(ptr, count)                                                          \
    do {                                                                           \
        off = (off + 63) & ~(size_t)63;                                            \
        if (base)                                                                  \
            (ptr) = (void *)(base + off);                                          \
        off += (size_t)(count) * sizeof *(ptr);                                    \
    } while (0)
    CARVE(w->f, (size_t)L * n * n);
    CARVE(w->a, n);
    CARVE(w->fs, n);
    CARVE(w->b, n);
    CARVE(w->ft, n);
    CARVE(w->acc, n);
    CARVE(w->cmask, V * W);
    CARVE(w->fm, V * W);
    CARVE(w->bm, V * W);
    CARVE(w->cf, V * W);
    CARVE(w->cb, V * W);
    CARVE(w->vis, (L + 1) * W);
    CARVE(w->cur, (L + 1) * W);
    CARVE(w->nxt, (L + 1) * W);
    CARVE(w->alive, (L + 1) * W);
    CARVE(w->src, W);
    CARVE(w->snk, W);
    CARVE(w->snkadm, W);
    CARVE(w->stack, V + 2);
#undef CARVE
    return off;
}

/* Make the arena fit shape (L, n), growing it only when the shape grows,
   and lay the buffers out for that shape. The flow array is all zero
   between max-flows; it is cleared here when the layout moves. */
static int
s_reserve(flow_work_t *w, uint32_t L, uint32_t n)
{
    if (!w->arena || L > w->cap_L || n > w->cap_n) {
        uint32_t gL = L > w->cap_L ? L : w->cap_L, gn = n > w->cap_n ? n : w->cap_n;
        size_t bytes = (s_layout(w, gL, gn, NULL) + 63) & ~(size_t)63;
        void *arena = aligned_alloc(64, bytes);
        if (!arena)
            return -1;
        w->stats.grows++;
        free(w->arena);
        w->arena = arena;
        w->cap_L = gL;
        w->cap_n = gn;
        w->L = w->n = 0;
    }
    if (L != w->L || n != w->n) {
        s_layout(w, L, n, w->arena);
        memset(w->f, 0, (size_t)L * n * n * sizeof *w->f);
        w->L = L;
        w->n = n;
        w->W = (n + 63) / 64;
    }
    return 0;
}

/* Capacity of edge index e, as used by the algorithm. */
static inline double
s_cap(const float *C, size_t e)
{
    float c = C[e];
    return c > 0.0f && c <= FLT_MAX ? (double)c : 0.0;
}

/* Node id of (layer k, token i) in the middle graph, k = 1..L-1. */
static inline size_t
s_node(const flow_work_t *w, uint32_t k, uint32_t i)
{
    return (size_t)(k - 1) * w->n + i;
}

/* Level-synchronous BFS from the source over the residual bit sets.
   Builds this phase's admissible arc sets (cf, cb: arcs to the next
   level) and the alive sets; returns 0 when the sink is unreachable. */
static inline __attribute__((always_inline)) int
s_bfs(flow_work_t *w, const uint32_t W)
{
    uint32_t L = w->L;
    size_t lw = (size_t)(L + 1) * W;
    word_t any_src = 0, any_snk = 0;
    for (uint32_t q = 0; q < W; q++) {
        any_src |= w->src[q];
        any_snk |= w->snk[q];
    }
    if (!any_src || !any_snk)
        return 0;   /* one side saturated: that side is the min cut */
    memset(w->vis, 0, lw * sizeof *w->vis);
    memset(w->cur, 0, lw * sizeof *w->cur);
    memcpy(w->cur + (size_t)(L - 1) * W, w->src, W * sizeof *w->src);
    memcpy(w->vis + (size_t)(L - 1) * W, w->src, W * sizeof *w->src);
    for (;;) {
        word_t hit = 0;
        for (uint32_t q = 0; q < W; q++)
            hit |= (w->snkadm[q] = w->cur[W + q] & w->snk[q]);
        if (hit) {
            /* the sink is the next level: the frontier's only arcs go to it */
            for (uint32_t k = 1; k < L; k++)
                for (uint32_t q = 0; q < W; q++)
                    for (word_t m = w->cur[(size_t)k * W + q]; m; m &= m - 1) {
                        size_t x = s_node(w, k, q * 64 + (uint32_t)__builtin_ctzll(m));
                        memset(w->cf + x * W, 0, W * sizeof *w->cf);
                        memset(w->cb + x * W, 0, W * sizeof *w->cb);
                    }
            memcpy(w->alive, w->vis, lw * sizeof *w->vis);
            return 1;
        }
        /* next level: unvisited heads of residual arcs out of the frontier */
        memset(w->nxt, 0, lw * sizeof *w->nxt);
        for (uint32_t k = 1; k < L; k++)
            for (uint32_t q = 0; q < W; q++)
                for (word_t m = w->cur[(size_t)k * W + q]; m; m &= m - 1) {
                    size_t x = s_node(w, k, q * 64 + (uint32_t)__builtin_ctzll(m));
                    if (k >= 2) {
                        const word_t *fm = w->fm + x * W, *v = w->vis + (size_t)(k - 1) * W;
                        word_t *nx = w->nxt + (size_t)(k - 1) * W;
                        for (uint32_t r = 0; r < W; r++)
                            nx[r] |= fm[r] & ~v[r];
                    }
                    if (k + 2 <= L) {
                        const word_t *bm = w->bm + x * W, *v = w->vis + (size_t)(k + 1) * W;
                        word_t *nx = w->nxt + (size_t)(k + 1) * W;
                        for (uint32_t r = 0; r < W; r++)
                            nx[r] |= bm[r] & ~v[r];
                    }
                }
        /* admissible arcs of the frontier: exactly those into the next level */
        word_t grew = 0;
        for (uint32_t k = 1; k < L; k++)
            for (uint32_t q = 0; q < W; q++)
                for (word_t m = w->cur[(size_t)k * W + q]; m; m &= m - 1) {
                    size_t x = s_node(w, k, q * 64 + (uint32_t)__builtin_ctzll(m));
                    for (uint32_t r = 0; r < W; r++) {
                        w->cf[x * W + r] = k >= 2 ? w->fm[x * W + r] & w->nxt[(size_t)(k - 1) * W + r] : 0;
                        w->cb[x * W + r] = k + 2 <= L ? w->bm[x * W + r] & w->nxt[(size_t)(k + 1) * W + r] : 0;
                    }
                }
        for (size_t q = 0; q < lw; q++) {
            w->vis[q] |= w->nxt[q];
            grew |= w->nxt[q];
        }
        if (!grew)
            return 0;
        word_t *t = w->cur;
        w->cur = w->nxt;
        w->nxt = t;
    }
}

/* First set bit of `m & al` over W words, preferring tokens p1 then p2;
   returns n when empty. */
static inline uint32_t
s_pick(const word_t *m, const word_t *al, uint32_t W, uint32_t p1, uint32_t p2, uint32_t n)
{
    if (BIT(m, p1) & BIT(al, p1))
        return p1;
    if (BIT(m, p2) & BIT(al, p2))
        return p2;
    for (uint32_t q = 0; q < W; q++) {
        word_t x = m[q] & al[q];
        if (x)
            return q * 64 + (uint32_t)__builtin_ctzll(x);
    }
    return n;
}

/* Blocking-flow DFS from layer-(L-1) node u offered `lim` by the source;
   iterative (depth can reach the number of nodes). Places flow along
   admissible arcs, several children per node, and returns the amount
   placed; a node that cannot place all it was offered is dead for the
   rest of the phase. */
static inline __attribute__((always_inline)) double
s_dfs(flow_work_t *restrict w, const uint32_t W, uint32_t u, double lim)
{
    const uint32_t L = w->L, n = w->n, t = w->sink;
    const size_t nn = (size_t)n * n;
    const float *restrict C = w->C;
    double *restrict f = w->f, *restrict ft = w->ft;
    const double *restrict b = w->b;
    word_t *restrict fm = w->fm, *restrict bm = w->bm, *restrict cf = w->cf,
           *restrict cb = w->cb, *restrict alive = w->alive, *restrict snk = w->snk,
           *restrict snkadm = w->snkadm;
    frame_t *restrict st = w->stack;
    size_t sp = 0;
    uint64_t visits = 0;
    double ret;
    st[0] = (frame_t){.k = L - 1, .i = u, .x = (L - 2) * n + u, .lim = lim, .rem = lim};
    for (;;) {
        frame_t *F = &st[sp];
        const uint32_t k = F->k, i = F->i, x = F->x;
        visits++;
        if (k == 1 && BIT(snkadm, i)) {
            double res = b[i] - ft[i];
            if (res <= F->rem) {
                /* fills the sink edge (res is > 0 while its bit is set) */
                ft[i] = b[i];
                CLR(snk, i);
                CLR(snkadm, i);
                F->rem -= res;
            } else {
                ft[i] += F->rem;
                F->rem = 0;
                if (ft[i] >= b[i]) {
                    ft[i] = b[i];
                    CLR(snk, i);
                    CLR(snkadm, i);
                }
            }
            if (F->rem <= 0) {
                ret = F->lim;
                goto pop;
            }
        }
        {
            uint32_t j = n, y;
            if (k >= 2) {
                /* near the sink steer into its column; higher up take the diagonal */
                uint32_t p1 = k <= 3 ? t : i, p2 = k <= 3 ? i : t;
                j = s_pick(cf + (size_t)x * W, alive + (size_t)(k - 1) * W, W, p1, p2, n);
            }
            if (j < n) {
                F->e = (size_t)(k - 1) * nn + (size_t)i * n + j;
                F->dir = 1;
                F->res = s_cap(C, F->e) - f[F->e];
                y = x - n + (j - i);
            } else if (k + 2 <= L
                       && (j = s_pick(cb + (size_t)x * W, alive + (size_t)(k + 1) * W, W, i, t, n)) < n) {
                F->e = (size_t)k * nn + (size_t)j * n + i;
                F->dir = -1;
                F->res = f[F->e];
                y = x + n + (j - i);
            } else {
                ret = F->lim - F->rem;
                goto pop;
            }
            F->to = j;
            F->off = F->res < F->rem ? F->res : F->rem;
            st[sp + 1] = (frame_t){.k = (uint32_t)((int32_t)k - F->dir), .i = j, .x = y,
                                   .lim = F->off, .rem = F->off};
            sp++;
            continue;
        }
    pop:
        for (;;) {
            if (sp == 0) {
                w->stats.visits += visits;
                return ret;
            }
            frame_t *P = &st[--sp];
            const uint32_t pk = P->k, pi = P->i, px = P->x, j = P->to;
            const size_t e = P->e;
            if (P->dir > 0) {
                if (ret > 0) {
                    SET(bm + (size_t)(px - n + (j - pi)) * W, pi);
                    if (ret < P->res)
                        f[e] += ret;
                    /* full, or rounded up to full: saturated either way, so
                       that an arc's bit is set exactly while its residual is
                       positive (a zero-residual arc left set would be offered
                       nothing forever) */
                    if (ret >= P->res || f[e] >= s_cap(C, e)) {
                        f[e] = s_cap(C, e);
                        CLR(fm + (size_t)px * W, j);
                        CLR(cf + (size_t)px * W, j);
                    }
                }
                if (ret < P->off)
                    CLR(alive + (size_t)(pk - 1) * W, j);
            } else {
                if (ret > 0) {
                    if (ret >= P->res) {
                        f[e] = 0.0;
                        CLR(bm + (size_t)px * W, j);
                        CLR(cb + (size_t)px * W, j);
                    } else {
                        f[e] -= ret;
                    }
                    /* the edge has residual again, unless a tiny cancel was
                       absorbed by a full edge's flow */
                    if (f[e] < s_cap(C, e))
                        SET(fm + (size_t)(px + n + (j - pi)) * W, pi);
                }
                if (ret < P->off)
                    CLR(alive + (size_t)(pk + 1) * W, j);
            }
            P->rem -= ret;
            if (P->rem > 0)
                break;      /* resume P: try its next arc */
            ret = P->lim;
        }
    }
}

/* Max flow from (L, src) to (0, sink) on the current trade, L >= 2, with
   W words per bit set (inlined for W = 1, n <= 64, and for any W). */
static inline __attribute__((always_inline)) double
s_maxflow_w(flow_work_t *w, const uint32_t W, uint32_t src, uint32_t sink)
{
    uint32_t L = w->L, n = w->n;
    size_t nn = (size_t)n * n, V = (size_t)(L - 1) * n;
    const float *C = w->C;
    w->sink = sink;
    memset(w->snk, 0, W * sizeof *w->snk);
    for (uint32_t u = 0; u < n; u++) {
        w->a[u] = s_cap(C, (size_t)(L - 1) * nn + (size_t)src * n + u);
        w->fs[u] = 0.0;
        w->b[u] = s_cap(C, (size_t)u * n + sink);
        w->ft[u] = 0.0;
        if (w->b[u] > 0)
            SET(w->snk, u);
    }
    memcpy(w->src, w->cmask + ((size_t)(L - 1) * n + src) * W, W * sizeof *w->src);
    /* forward arcs of layer k >= 2 start as the capacity pattern of Â_{k-1};
       node (k, i) is row i of layer k-1, so the arrays line up */
    memcpy(w->fm + (size_t)n * W, w->cmask + (size_t)n * W, (V - n) * W * sizeof *w->fm);
    memset(w->bm, 0, V * W * sizeof *w->bm);

    while (s_bfs(w, W)) {
        w->stats.phases++;
        word_t *al = w->alive + (size_t)(L - 1) * W;
        for (;;) {
            /* the source's own diagonal (capacity >= 1/2) first */
            uint32_t u = s_pick(w->src, al, W, src, sink, n);
            if (u >= n)
                break;
            double res = w->a[u] - w->fs[u];
            double p = s_dfs(w, W, u, res);
            if (p < res) {
                w->fs[u] += p;
                CLR(al, u);     /* u could not place it all: dead this phase */
            }
            if (p >= res || w->fs[u] >= w->a[u]) {
                w->fs[u] = w->a[u];
                CLR(w->src, u);
            }
        }
    }
    w->stats.maxflows++;

    /* value; and leave f all zero for the next sink (nonzero flows are
       exactly the bm bits) */
    double v = 0.0;
    for (uint32_t i = 0; i < n; i++)
        v += w->ft[i];
    for (uint32_t k = 1; k + 2 <= L; k++)
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t q = 0; q < W; q++)
                for (word_t m = w->bm[s_node(w, k, i) * W + q]; m; m &= m - 1) {
                    uint32_t u = q * 64 + (uint32_t)__builtin_ctzll(m);
                    w->f[(size_t)k * nn + (size_t)u * n + i] = 0.0;
                }
    return v;
}

static double
s_maxflow(flow_work_t *w, uint32_t src, uint32_t sink)
{
    return w->W == 1 ? s_maxflow_w(w, 1, src, sink) : s_maxflow_w(w, w->W, src, sink);
}

int
flow_compute(flow_work_t *w, uint32_t L, uint32_t n, int32_t cls, const float *layers,
             float *out)
{
    assert(w && layers && out && cls >= -1 && cls < (int32_t)n);
    if (L == 0 || n == 0)
        return 0;
    if (s_reserve(w, L, n))
        return -1;
    uint32_t W = w->W;
    w->C = layers;
    w->stats.trades++;

    /* capacity patterns, one bit set per row of every Â_l */
    memset(w->cmask, 0, (size_t)L * n * W * sizeof *w->cmask);
    for (size_t r = 0; r < (size_t)L * n; r++)
        for (uint32_t j = 0; j < n; j++)
            if (s_cap(layers, r * n + j) > 0)
                SET(w->cmask + r * W, j);

    uint32_t s0 = cls >= 0 ? (uint32_t)cls : 0, s1 = cls >= 0 ? (uint32_t)cls + 1 : n;
    for (uint32_t j = 0; j < n; j++)
        w->acc[j] = 0.0;
    for (uint32_t src = s0; src < s1; src++)
        for (uint32_t j = 0; j < n; j++) {
            if ((int32_t)j == cls)
                continue;
            w->acc[j] += L == 1 ? s_cap(layers, (size_t)src * n + j) : s_maxflow(w, src, j);
        }
    for (uint32_t j = 0, k = 0; j < n; j++)
        if ((int32_t)j != cls)
            out[k++] = (float)(cls >= 0 ? w->acc[j] : w->acc[j] / n);
    return 0;
}
