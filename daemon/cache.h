/*  cache: the bounded recent-trade cache behind the `trade` query.

    Each entry keeps a trade's explanation and the per-layer matrices it
    was built from (Â_l for rollout, Â_l with mean fusion for flow when
    they differ, Ā_l for grad_rollout), so that the full n x n matrices
    and an on-demand flow can be computed when someone asks, never on the
    hot path. The cache is bounded twice: by entries and by bytes (every
    byte it holds, not just the live ones); the oldest trades go first.
    Entry buffers are reused, so a steady stream of one shape allocates
    nothing once the ring has gone round.  */
#ifndef XPLD_CACHE_H
#define XPLD_CACHE_H

#include "wire.h"
#include "xmath.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    bool used;
    int32_t next;               /* hash chain */
    uint32_t hash;
    uint32_t model;             /* model index */
    uint32_t epoch;
    bool id_is_str;
    uint64_t id_u;
    const char *id_s;           /* into data, NUL-terminated */
    uint32_t id_len;
    int64_t ts;
    bool has_target, has_y;
    int64_t target;
    double y;
    xm_shape_t shape;
    unsigned methods;           /* attr[] present */
    uint32_t nf;                /* values of each attr vector (per feature) */
    const float *attr[XM_NMETHODS];
    const float *roll;          /* [L][n][n] Â for rollout */
    const float *flow;          /* [L][n][n] Â with mean fusion */
    const float *grad;          /* [L][n][n] Ā, or NULL */
    bool resnorm;               /* grad_rollout was residual-normalised */
    uint32_t start;             /* resolved start layer: the matrices use layers start..L-1 */
    uint8_t *data;
    size_t cap;
} cache_entry_t;

typedef struct {
    cache_entry_t *slots;
    uint32_t nslots;            /* 0: cache disabled */
    uint32_t head, count;       /* ring: next slot to fill, slots in use or holes */
    int32_t *buckets;
    uint32_t nbuckets;          /* power of two */
    size_t bytes, budget;       /* sum of slot capacities, and its bound */
    uint64_t too_big;           /* trades larger than the whole budget */
} cache_t;

/* What one put stores (pointers are copied from). */
typedef struct {
    uint32_t model, epoch;
    const wire_id_t *id;
    int64_t ts;
    const int64_t *target;      /* NULL when absent */
    const double *y;
    const xm_shape_t *shape;
    const xm_result_t *res;
    const float *roll, *flow, *grad;
    bool resnorm;
    uint32_t start;             /* resolved start layer (0: every layer) */
    uint32_t nf;                /* values of each attr vector: the schema's
                                   features (0: xm_nfeat(shape), no groups) */
} cache_put_t;

int cache_init(cache_t *c, uint32_t entries, size_t budget_bytes);
void cache_destroy(cache_t *c);

/* Store a trade, replacing an older entry with the same model and id.
   Returns 0, or -1 when it does not fit (counted in too_big) or memory
   runs out. */
int cache_put(cache_t *c, const cache_put_t *p);

/* Latest entry for (model, id), or NULL. Valid until the next put. */
const cache_entry_t *cache_get(const cache_t *c, uint32_t model, const wire_id_t *id);

#endif
