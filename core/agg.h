/*  agg: incremental per-feature aggregates of attribution vectors, in
    float64 (MATH.md, "Global attributions and drift" and "Head
    statistics").

    An agg_t keeps, for `nfeat` features over `count` vectors:

      mean[j]     the running mean (Welford)
      m2[j]       the sum of squared deviations from the mean; the
                  standard deviation agg_std() reports is the *sample* one,
                  sqrt(m2 / (count - 1)), when count >= 2, and 0 before
      decayed[j]  an exponentially decayed mean with a half-life of
                  `half_life` trades:
                      alpha  = 1 - 2^(-1 / half_life)
                      d_1    = x_1                          (first vector)
                      d_t    = d_{t-1} + alpha (x_t - d_{t-1})
                  so after h more trades a vector's weight has shrunk by
                  2^(-h / half_life). NULL when half_life is 0 (disabled).

    Two aggregates merge exactly by Chan et al.'s pairwise rule (count,
    mean, m2). Decayed means are NOT mergeable: they depend on the order
    of the trades, which an aggregate does not record; agg_merge leaves
    dst->decayed as it is, except that merging into an empty aggregate
    copies src's (a merge into nothing is a copy).

    Ownership: the struct lives in caller storage (stack, or embedded in a
    per-model state); agg_init allocates its arrays and agg_destroy frees
    them. All fields are plain and meant to be read. Snapshots: agg_save
    writes one, agg_load reads it back into an agg_init'ed aggregate
    (below). Invariant on restore: m2[j] >= 0.

    agg_heads_t is the same for head statistics: an L x H importance and
    an L x H confidence aggregate, kept apart because importance needs the
    gradient and so may have fewer trades behind it.  */
#ifndef XPL_AGG_H
#define XPL_AGG_H

#include "snap.h"

#include <stdint.h>

typedef struct {
    uint32_t nfeat;
    uint64_t count;         /* vectors accumulated */
    double half_life;       /* trades; 0 = no decayed mean */
    double alpha;           /* 1 - 2^(-1/half_life), 0 when disabled */
    double *mean;           /* [nfeat] */
    double *m2;             /* [nfeat] */
    double *decayed;        /* [nfeat], NULL when half_life is 0 */
} agg_t;

/* Initialise an empty aggregate of `nfeat` features in caller storage.
   `half_life` (trades) must be finite and >= 0; 0 disables the decayed
   mean. Returns 0, or -1 when out of memory or half_life is invalid
   (then *a holds no memory and agg_destroy is still safe). */
int agg_init(agg_t *a, uint32_t nfeat, double half_life);

/* Free the arrays; the struct is left empty (count 0, nfeat 0). Safe to
   call twice. */
void agg_destroy(agg_t *a);

/* Forget every vector seen, keeping size and half-life: the shard
   aggregator rebuilds its merged aggregates from its shards' states. */
void agg_reset(agg_t *a);

/* Add one vector of nfeat floats. Returns 0, or -1 when it holds a NaN
   or Inf (then nothing changes: one bad trade must not poison the
   aggregate for good). */
int agg_update(agg_t *a, const float *x);

/* Merge src into dst (Chan's parallel rule). Returns 0, or -1 when the
   feature counts or half-lives differ (dst unchanged). Decayed means:
   see above. The shard aggregator (daemon/aggregate.c) combines its
   shards' states with it. */
int agg_merge(agg_t *dst, const agg_t *src);

/* Sample standard deviation per feature into out[nfeat]:
   sqrt(m2 / (count - 1)) when count >= 2, else 0. */
void agg_std(const agg_t *a, double *out);

typedef struct {
    uint32_t L, H;
    agg_t importance;       /* L*H features, [l][h]; trades with a gradient */
    agg_t confidence;       /* L*H features, [l][h]; every trade */
} agg_heads_t;

/* Initialise empty head statistics for L layers of H heads. Returns 0,
   or -1 when out of memory. */
int agg_heads_init(agg_heads_t *s, uint32_t L, uint32_t H);

/* Free both aggregates; safe to call twice. */
void agg_heads_destroy(agg_heads_t *s);

/* Add one trade's head statistics ([L][H] each, as xm_result_t gives
   them). `importance` may be NULL (no gradient sent): only confidence
   counts the trade then. Returns 0, or -1 on a non-finite value (then
   neither aggregate changes). */
int agg_heads_update(agg_heads_t *s, const float *importance, const float *confidence);

/* Merge src into dst; -1 when the shapes differ (dst unchanged). Kept
   for the shard aggregator, as agg_merge. */
int agg_heads_merge(agg_heads_t *dst, const agg_heads_t *src);

/* ---- snapshots (snap.h) ------------------------------------------------

   agg_save writes {count, mean, m2, decayed}: a uint, two arrays of
   nfeat float64 and the decayed means (nil when disabled), bit for bit.
   agg_load reads one into an aggregate that agg_init made with the size
   and half-life of today: the arrays must have nfeat values and every m2
   be >= 0. A snapshot without decayed means starts them at the mean; one
   with them while they are disabled now drops them. A half-life other
   than the one they were decayed with simply continues with the new one.
   SNAP_V1 reads the first format's [count, mean, m2, decayed].
   Returns 0, or -1 with d->why set (the aggregate then holds partial
   values: the caller discards it). */
void agg_save(msgpack_packer *pk, const agg_t *a);
int agg_load(snap_rd_t *d, agg_t *a, unsigned ver);

/* {L, H, importance, confidence}; agg_heads_load wants the L and H that
   agg_heads_init was given. SNAP_V1: the two aggregates one after the
   other, as the first format had them inside the epoch record. */
void agg_heads_save(msgpack_packer *pk, const agg_heads_t *s);
int agg_heads_load(snap_rd_t *d, agg_heads_t *s, unsigned ver);

#endif
