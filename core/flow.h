/*  flow: attention flow (Abnar & Zuidema 2020) as a per-trade method.

    The layered graph has nodes (k, j) for k = 0..L and tokens j; for each
    layer l an edge (l+1, i) -> (l, j) of capacity Â_l[i][j], where
    Â_l = rownorm(I + mean_h A_l) (rollout's matrices with mean fusion).
    The attribution of token j is the maximum flow from the source
    (L, cls) to the sink (0, j); without CLS every top node is a source in
    turn and the result is the mean over sources.  */
#ifndef XPL_FLOW_H
#define XPL_FLOW_H

#include <stdint.h>

typedef struct flow_work_t flow_work_t;

/* Work counters of a flow work area, cumulative since flow_work_new
   (for benchmarks and tests). */
typedef struct {
    uint64_t trades;        /* flow_compute calls */
    uint64_t maxflows;      /* source-sink max-flows computed (L >= 2) */
    uint64_t phases;        /* Dinic phases: one BFS and one blocking flow */
    uint64_t visits;        /* DFS steps (a node entered or resumed) */
    uint64_t grows;         /* allocations of the work area (shape grew) */
} flow_stats_t;

/* Create an empty flow work area (caller owns; grows with the shape). */
flow_work_t *flow_work_new(void);

/* Free a flow work area and set *self_p to NULL; NULL-safe. */
void flow_work_destroy(flow_work_t **self_p);

/* Max-flow attributions for one trade. `layers` holds [L][n][n]
   capacities; `out` receives n - 1 values (tokens j != cls, in order) or
   n values without CLS (cls is -1 or a token index). Returns 0, or -1
   when out of memory. Max flows are computed in double on the exact
   float capacities (capacities that are not finite and positive count
   as 0); allocates only when the shape grows. */
int flow_compute(flow_work_t *w, uint32_t L, uint32_t n, int32_t cls,
                 const float *layers, float *out);

/* Copy the work counters of `w` into *out. */
void flow_work_stats(const flow_work_t *w, flow_stats_t *out);

#endif
