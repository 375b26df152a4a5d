/*  flow: attention flow by augmenting paths on the layered graph.

    Baseline implementation: one Edmonds-Karp max-flow per sink over the
    implicit layered graph (no adjacency lists: node (k, i) at layer k has
    edges to every (k-1, j)). Correct, allocation-free once warm.  */
#include "flow.h"

#include <stdlib.h>
#include <string.h>

struct flow_work_t {
    size_t cap_edges, cap_nodes;
    double *f;          /* flow on edge (l+1, i) -> (l, j), [L][n][n] */
    int32_t *prev;      /* BFS parent node, per node */
    int32_t *queue;
    double *push;       /* bottleneck reaching each node */
};

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
    flow_work_t *w = *self_p;
    free(w->f); free(w->prev); free(w->queue); free(w->push);
    free(w);
    *self_p = NULL;
}

static int
s_reserve(flow_work_t *w, uint32_t L, uint32_t n)
{
    size_t edges = (size_t)L * n * n, nodes = (size_t)(L + 1) * n;
    if (edges > w->cap_edges) {
        double *f = realloc(w->f, edges * sizeof *f);
        if (!f)
            return -1;
        w->f = f;
        w->cap_edges = edges;
    }
    if (nodes > w->cap_nodes) {
        int32_t *p = realloc(w->prev, nodes * sizeof *p);
        if (p) w->prev = p;
        int32_t *q = realloc(w->queue, nodes * sizeof *q);
        if (q) w->queue = q;
        double *u = realloc(w->push, nodes * sizeof *u);
        if (u) w->push = u;
        if (!p || !q || !u)
            return -1;
        w->cap_nodes = nodes;
    }
    return 0;
}

#define S_EPS 1e-15

static double
s_maxflow(flow_work_t *w, uint32_t L, uint32_t n, const float *C, uint32_t src, uint32_t sink)
{
    size_t nn = (size_t)n * n, nodes = (size_t)(L + 1) * n;
    memset(w->f, 0, L * nn * sizeof *w->f);
    int32_t s = (int32_t)(L * n + src), t = (int32_t)sink;
    double total = 0.0;
    for (;;) {
        for (size_t k = 0; k < nodes; k++)
            w->prev[k] = -1;
        w->prev[s] = s;
        w->push[s] = 1e300;
        size_t qh = 0, qt = 0;
        w->queue[qt++] = s;
        while (qh < qt && w->prev[t] < 0) {
            int32_t u = w->queue[qh++];
            uint32_t k = (uint32_t)u / n, i = (uint32_t)u % n;
            if (k > 0) {        /* forward edges down to layer k-1 */
                for (uint32_t j = 0; j < n; j++) {
                    int32_t v = (int32_t)((k - 1) * n + j);
                    size_t e = (size_t)(k - 1) * nn + (size_t)i * n + j;
                    double res = C[e] - w->f[e];
                    if (w->prev[v] < 0 && res > S_EPS) {
                        w->prev[v] = u;
                        w->push[v] = res < w->push[u] ? res : w->push[u];
                        w->queue[qt++] = v;
                    }
                }
            }
            if (k < L) {        /* residual back edges up to layer k+1 */
                for (uint32_t j = 0; j < n; j++) {
                    int32_t v = (int32_t)((k + 1) * n + j);
                    size_t e = (size_t)k * nn + (size_t)j * n + i;
                    double res = w->f[e];
                    if (w->prev[v] < 0 && res > S_EPS) {
                        w->prev[v] = u;
                        w->push[v] = res < w->push[u] ? res : w->push[u];
                        w->queue[qt++] = v;
                    }
                }
            }
        }
        if (w->prev[t] < 0)
            return total;
        double d = w->push[t];
        for (int32_t v = t; v != s; v = w->prev[v]) {
            int32_t u = w->prev[v];
            uint32_t ku = (uint32_t)u / n, iu = (uint32_t)u % n;
            uint32_t kv = (uint32_t)v / n, iv = (uint32_t)v % n;
            if (kv + 1 == ku)
                w->f[(size_t)kv * nn + (size_t)iu * n + iv] += d;
            else
                w->f[(size_t)ku * nn + (size_t)iv * n + iu] -= d;
        }
        total += d;
    }
}

int
flow_compute(flow_work_t *w, uint32_t L, uint32_t n, int32_t cls, const float *layers,
             float *out)
{
    if (s_reserve(w, L, n))
        return -1;
    for (uint32_t j = 0, k = 0; j < n; j++) {
        if ((int32_t)j == cls)
            continue;
        double v = 0.0;
        if (cls >= 0) {
            v = s_maxflow(w, L, n, layers, (uint32_t)cls, j);
        } else {
            for (uint32_t src = 0; src < n; src++)
                v += s_maxflow(w, L, n, layers, src, j);
            v /= n;
        }
        out[k++] = (float)v;
    }
    return 0;
}
