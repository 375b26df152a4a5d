/*  rank: statistics that compare two attribution vectors (MATH.md,
    "Global attributions and drift").

      spearman   Pearson correlation of the two rank vectors, tied values
                 getting their average rank (scipy.stats.spearmanr).
                 Undefined when n < 2 or either vector is constant.
      ndcg@k     `cur` ranked descending (ties: lower index first), gain of
                 a feature = max(ref, 0), DCG@k = sum_{r=1..k} gain / log2(r+1);
                 IDCG@k the same with features ranked by `ref` itself.
                 k > n counts as n. Undefined when IDCG@k = 0 (no positive
                 reference value among the top k, or k = 0).
      js         Jensen-Shannon divergence, base 2, of |a| / sum|a| and
                 |b| / sum|b|; in [0, 1]. Undefined when either vector is
                 all zeros (it is no distribution).

    An undefined statistic is reported as RANK_UNDEFINED, never as a
    number: 0 would read as "uncorrelated" or "no drift". Non-finite input
    is RANK_ENONFINITE (reference vectors can come from clients).

    The ranking functions need O(n) scratch, kept in a rank_work_t in the
    caller's storage; it grows to the largest n seen and is then reused,
    so a warm work area allocates nothing per call. Sorting is qsort on
    (value, index) pairs: O(n log n) and independent of the input order of
    equal values.  */
#ifndef XPL_RANK_H
#define XPL_RANK_H

#include <stddef.h>

typedef enum {
    RANK_OK = 0,
    RANK_UNDEFINED = 1,     /* statistic undefined for these vectors; *out untouched */
    RANK_ENONFINITE = -1,   /* NaN or Inf in an input */
    RANK_ENOMEM = -2,
    RANK_EARG = -3          /* n too large for 32-bit indices */
} rank_status_t;

/* Scratch for the ranking functions. The fields are private. */
typedef struct {
    size_t cap;             /* vectors of up to `cap` values fit */
    void *pairs;            /* cap (value, index) pairs */
    double *ranks;          /* 2 * cap */
} rank_work_t;

/* Initialise an empty work area in caller storage; allocates nothing. */
void rank_work_init(rank_work_t *w);

/* Grow the work area to hold vectors of `n` values (the functions below
   do this themselves; call it once up front to never allocate later).
   Returns RANK_OK, RANK_ENOMEM or RANK_EARG. */
rank_status_t rank_work_reserve(rank_work_t *w, size_t n);

/* Free the work area's buffers and leave it empty (re-usable); safe to
   call twice. */
void rank_work_destroy(rank_work_t *w);

/* Average ranks (1-based; a run of equal values at sorted positions
   j..k shares rank (j + k) / 2) of `x` into `r` (n values). Returns
   RANK_OK, RANK_ENONFINITE, RANK_ENOMEM or RANK_EARG. */
rank_status_t rank_average(rank_work_t *w, const double *x, size_t n, double *r);

/* Spearman's rho of `a` and `b` (n values each) into *rho, in [-1, 1].
   RANK_UNDEFINED when n < 2 or either vector is constant. */
rank_status_t rank_spearman(rank_work_t *w, const double *a, const double *b, size_t n,
                            double *rho);

/* nDCG@k of the current vector `cur` against the reference `ref` (n values
   each) into *out, in [0, 1]. RANK_UNDEFINED when IDCG@k = 0. */
rank_status_t rank_ndcg(rank_work_t *w, const double *cur, const double *ref, size_t n,
                        size_t k, double *out);

/* Jensen-Shannon divergence (base 2) of `a` and `b` after absolute values
   and normalisation to sum 1, into *out, in [0, 1]. Needs no scratch.
   RANK_UNDEFINED when either vector is all zeros (or n = 0). */
rank_status_t rank_js(const double *a, const double *b, size_t n, double *out);

#endif
