/*  rank: Spearman's rho, nDCG@k and Jensen-Shannon divergence. See rank.h.  */
#include "rank.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    double v;
    uint32_t i;
} s_pair_t;

void
rank_work_init(rank_work_t *w)
{
    w->cap = 0;
    w->pairs = NULL;
    w->ranks = NULL;
}

rank_status_t
rank_work_reserve(rank_work_t *w, size_t n)
{
    if (n > UINT32_MAX)
        return RANK_EARG;
    if (n <= w->cap)
        return RANK_OK;
    /* Both buffers are replaced together so a failure leaves the old,
       smaller but consistent, work area in place. */
    s_pair_t *pairs = malloc(n * sizeof *pairs);
    double *ranks = malloc(2 * n * sizeof *ranks);
    if (!pairs || !ranks) {
        free(pairs);
        free(ranks);
        return RANK_ENOMEM;
    }
    free(w->pairs);
    free(w->ranks);
    w->pairs = pairs;
    w->ranks = ranks;
    w->cap = n;
    return RANK_OK;
}

void
rank_work_destroy(rank_work_t *w)
{
    free(w->pairs);
    free(w->ranks);
    rank_work_init(w);
}

static bool
s_finite(const double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return false;
    return true;
}

/* Ascending by value; the index only makes the order total. */
static int
s_cmp_asc(const void *pa, const void *pb)
{
    const s_pair_t *a = pa, *b = pb;
    if (a->v != b->v)
        return a->v < b->v ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

/* Descending by value, lower index first among equals (MATH.md's tie rule). */
static int
s_cmp_desc(const void *pa, const void *pb)
{
    const s_pair_t *a = pa, *b = pb;
    if (a->v != b->v)
        return a->v > b->v ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

static void
s_sort(s_pair_t *p, const double *x, size_t n, int (*cmp)(const void *, const void *))
{
    for (size_t i = 0; i < n; i++) {
        p[i].v = x[i];
        p[i].i = (uint32_t)i;
    }
    if (n > 1)      /* a cold work area has p = NULL, which qsort may not take */
        qsort(p, n, sizeof *p, cmp);
}

/* Average ranks of finite x; returns the number of distinct values. */
static size_t
s_ranks(s_pair_t *p, const double *x, size_t n, double *r)
{
    s_sort(p, x, n, s_cmp_asc);
    size_t distinct = 0;
    for (size_t j = 0; j < n;) {
        size_t k = j + 1;
        while (k < n && p[k].v == p[j].v)
            k++;
        /* Sorted positions j..k-1 hold ranks j+1..k; their mean. */
        double avg = (double)(j + 1 + k) / 2.0;
        for (size_t q = j; q < k; q++)
            r[p[q].i] = avg;
        distinct++;
        j = k;
    }
    return distinct;
}

rank_status_t
rank_average(rank_work_t *w, const double *x, size_t n, double *r)
{
    if (!s_finite(x, n))
        return RANK_ENONFINITE;
    rank_status_t st = rank_work_reserve(w, n);
    if (st != RANK_OK)
        return st;
    s_ranks(w->pairs, x, n, r);
    return RANK_OK;
}

rank_status_t
rank_spearman(rank_work_t *w, const double *a, const double *b, size_t n, double *rho)
{
    if (!s_finite(a, n) || !s_finite(b, n))
        return RANK_ENONFINITE;
    rank_status_t st = rank_work_reserve(w, n);
    if (st != RANK_OK)
        return st;
    if (n < 2)
        return RANK_UNDEFINED;
    double *ra = w->ranks, *rb = w->ranks + n;
    /* Constant means a single distinct value: decided on the ranks, not
       on a variance that rounding could leave slightly above 0. */
    if (s_ranks(w->pairs, a, n, ra) < 2 || s_ranks(w->pairs, b, n, rb) < 2)
        return RANK_UNDEFINED;
    /* Average ranks always sum to n(n+1)/2, so their mean is exact; the
       deviations are multiples of 1/2, and the sums of their products
       (at most n^3/12) are exact in double for n below about 3e5: only
       the final division and square root round. */
    double m = (double)(n + 1) / 2.0, sab = 0, saa = 0, sbb = 0;
    for (size_t i = 0; i < n; i++) {
        double da = ra[i] - m, db = rb[i] - m;
        sab += da * db;
        saa += da * da;
        sbb += db * db;
    }
    double r = sab / sqrt(saa * sbb);
    *rho = r > 1.0 ? 1.0 : r < -1.0 ? -1.0 : r;
    return RANK_OK;
}

/* DCG of the first k features of `order` with gains max(ref, 0). */
static double
s_dcg(const s_pair_t *order, const double *ref, size_t k)
{
    double dcg = 0;
    for (size_t r = 0; r < k; r++) {
        double g = ref[order[r].i];
        if (g > 0)
            dcg += g / log2((double)r + 2.0);
    }
    return dcg;
}

rank_status_t
rank_ndcg(rank_work_t *w, const double *cur, const double *ref, size_t n, size_t k,
          double *out)
{
    if (!s_finite(cur, n) || !s_finite(ref, n))
        return RANK_ENONFINITE;
    rank_status_t st = rank_work_reserve(w, n);
    if (st != RANK_OK)
        return st;
    if (k > n)
        k = n;
    s_pair_t *p = w->pairs;
    s_sort(p, ref, n, s_cmp_desc);
    double idcg = s_dcg(p, ref, k);
    if (!(idcg > 0))
        return RANK_UNDEFINED;
    s_sort(p, cur, n, s_cmp_desc);
    double dcg = s_dcg(p, ref, k);
    /* DCG <= IDCG in exact arithmetic; keep rounding from showing 1 + eps. */
    double r = dcg / idcg;
    *out = r > 1.0 ? 1.0 : r;
    return RANK_OK;
}

/* Largest |x_i|. */
static double
s_absmax(const double *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

rank_status_t
rank_js(const double *a, const double *b, size_t n, double *out)
{
    if (!s_finite(a, n) || !s_finite(b, n))
        return RANK_ENONFINITE;
    double xa = s_absmax(a, n), xb = s_absmax(b, n);
    if (xa == 0 || xb == 0)
        return RANK_UNDEFINED;
    /* Scale by the largest magnitude first so the sums neither overflow
       (values near DBL_MAX) nor lose everything to subnormals. */
    double sa = 0, sb = 0;
    for (size_t i = 0; i < n; i++) {
        sa += fabs(a[i]) / xa;
        sb += fabs(b[i]) / xb;
    }
    double js = 0;
    for (size_t i = 0; i < n; i++) {
        double p = fabs(a[i]) / xa / sa, q = fabs(b[i]) / xb / sb, m = (p + q) / 2;
        if (p > 0)
            js += p * log2(p / m);
        if (q > 0)
            js += q * log2(q / m);
    }
    js /= 2;
    /* Rounding can leave a hair below 0 for near-identical vectors. */
    *out = js < 0 ? 0 : js > 1 ? 1 : js;
    return RANK_OK;
}
