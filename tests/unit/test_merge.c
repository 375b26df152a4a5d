/*  Exact merging: a stream cut into K random parts, each part accumulated
    on its own (as K shard daemons would), the parts merged in a random
    order and grouping (as an aggregator would), must give the statistics
    of the whole stream, checked against float64 references computed here
    from the whole stream: two-pass mean and m2 (agg, head statistics),
    explicit weighted sums (evdecay), direct grouping by window (evwin).  */
#include "agg.h"
#include "evwin.h"
#include "support.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NF 11
#define N 4000
#define SEC 1000000000LL
#define T0 1796169600000000000LL
#define REL 1e-12

typedef struct {
    int64_t ts[N];
    float x[N * NF];
    float imp[N * NF];
    bool has_imp[N];
    int part[N];
} stream_t;

/* Trades over ~10 minutes, ts disordered by up to 2 s; feature j has its
   own offset and spread. */
static stream_t *
gen(uint64_t seed, int K)
{
    stream_t *s = calloc(1, sizeof *s);
    rng_t r;
    rng_seed(&r, seed);
    int64_t newest = INT64_MIN;
    for (size_t i = 0; i < N; i++) {
        s->ts[i] = T0 + (int64_t)i * 150000000LL - (int64_t)(rng_uniform(&r) * 2.0 * SEC);
        if (s->ts[i] > newest)
            newest = s->ts[i];
        for (int j = 0; j < NF; j++) {
            s->x[i * NF + j] = (float)((j - 5) * 1.3 + (0.1 + 0.2 * j) * rng_normal(&r));
            s->imp[i * NF + j] = (float)(2.0 + j + rng_normal(&r));
        }
        s->has_imp[i] = rng_uniform(&r) < 0.7;
        s->part[i] = (int)(rng_next(&r) % (uint64_t)K);
    }
    return s;
}

/* Merge states[0..K) into one in a random grouping: repeatedly merge a
   random one into another random one, so that both the order and the
   tree of merges vary. Returns the index of the survivor. */
typedef int (merge_fn)(void *dst, const void *src);

static int
s_random_merge(rng_t *r, void *states, size_t size, int K, merge_fn *merge)
{
    int alive[64];
    for (int i = 0; i < K; i++)
        alive[i] = i;
    int n = K;
    while (n > 1) {
        int a = (int)(rng_next(r) % (uint64_t)n), b = (int)(rng_next(r) % (uint64_t)(n - 1));
        if (b >= a)
            b++;
        cr_assert_eq(merge((char *)states + alive[a] * size, (char *)states + alive[b] * size), 0);
        alive[b] = alive[--n];
    }
    return alive[0];
}

static int
s_agg_merge(void *d, const void *s)
{
    return agg_merge(d, s);
}

static int
s_heads_merge(void *d, const void *s)
{
    return agg_heads_merge(d, s);
}

static int
s_decay_merge(void *d, const void *s)
{
    return evdecay_merge(d, s);
}

static int
s_win_merge(void *d, const void *s)
{
    return evwin_merge(d, s);
}

static void
two_pass(const float *x, const bool *use, int nf, double *mean, double *m2, uint64_t *count)
{
    uint64_t n = 0;
    for (int j = 0; j < nf; j++) {
        double s = 0, q = 0;
        n = 0;
        for (size_t t = 0; t < N; t++)
            if (!use || use[t]) {
                s += x[t * nf + j];
                n++;
            }
        mean[j] = s / (double)n;
        for (size_t t = 0; t < N; t++)
            if (!use || use[t])
                q += (x[t * nf + j] - mean[j]) * (x[t * nf + j] - mean[j]);
        m2[j] = q;
    }
    *count = n;
}

static void
check_agg(const agg_t *a, const float *x, const bool *use, const char *what, int K)
{
    double mean[NF], m2[NF];
    uint64_t n;
    two_pass(x, use, a->nfeat, mean, m2, &n);
    cr_assert_eq(a->count, n, "%s K=%d: count", what, K);
    for (uint32_t j = 0; j < a->nfeat; j++) {
        cr_assert(close_enough(a->mean[j], mean[j], REL, 0), "%s K=%d mean %u: %.17g vs %.17g", what,
                  K, j, a->mean[j], mean[j]);
        cr_assert(close_enough(a->m2[j], m2[j], REL, 0), "%s K=%d m2 %u: %.17g vs %.17g", what, K, j,
                  a->m2[j], m2[j]);
    }
}

Test(merge, agg_and_heads_of_random_partitions)
{
    rng_t r;
    rng_seed(&r, 99);
    for (int K = 1; K <= 9; K += 2)
        for (int rep = 0; rep < 3; rep++) {
            stream_t *s = gen(1000 + K * 10 + rep, K);
            agg_t parts[16];
            agg_heads_t heads[16];
            for (int p = 0; p < K; p++) {
                cr_assert_eq(agg_init(&parts[p], NF, 0), 0);
                /* NF = 11 cells as 1 layer of 11 heads */
                cr_assert_eq(agg_heads_init(&heads[p], 1, NF), 0);
            }
            for (size_t t = 0; t < N; t++) {
                cr_assert_eq(agg_update(&parts[s->part[t]], s->x + t * NF), 0);
                cr_assert_eq(agg_heads_update(&heads[s->part[t]],
                                              s->has_imp[t] ? s->imp + t * NF : NULL,
                                              s->x + t * NF), 0);
            }
            int a = s_random_merge(&r, parts, sizeof parts[0], K, s_agg_merge);
            check_agg(&parts[a], s->x, NULL, "agg", K);
            int h = s_random_merge(&r, heads, sizeof heads[0], K, s_heads_merge);
            check_agg(&heads[h].confidence, s->x, NULL, "confidence", K);
            check_agg(&heads[h].importance, s->imp, s->has_imp, "importance", K);
            for (int p = 0; p < K; p++) {
                agg_destroy(&parts[p]);
                agg_heads_destroy(&heads[p]);
            }
            free(s);
        }
}

Test(merge, decayed_means_of_random_partitions)
{
    rng_t r;
    rng_seed(&r, 7);
    int64_t halves[] = {1 * SEC, 45 * SEC, 3600 * SEC, 1000};
    for (int K = 1; K <= 9; K += 2)
        for (size_t hi = 0; hi < sizeof halves / sizeof halves[0]; hi++) {
            int64_t h = halves[hi];
            stream_t *s = gen(2000 + K * 10 + hi, K);
            evdecay_t parts[16];
            for (int p = 0; p < K; p++)
                cr_assert_eq(evdecay_init(&parts[p], NF, h), 0);
            for (size_t t = 0; t < N; t++)
                cr_assert_eq(evdecay_add(&parts[s->part[t]], s->ts[t], s->x + t * NF), 0);
            int m = s_random_merge(&r, parts, sizeof parts[0], K, s_decay_merge);
            /* Reference: weights 2^((ts - newest)/h) in float64. */
            int64_t newest = INT64_MIN;
            for (size_t t = 0; t < N; t++)
                if (s->ts[t] > newest)
                    newest = s->ts[t];
            double want[NF] = {0}, W = 0, got[NF];
            for (size_t t = 0; t < N; t++) {
                double w = exp2((double)(s->ts[t] - newest) / (double)h);
                W += w;
                for (int j = 0; j < NF; j++)
                    want[j] += w * s->x[t * NF + j];
            }
            evdecay_mean(&parts[m], got);
            cr_assert_eq(parts[m].count, N);
            for (int j = 0; j < NF; j++)
                cr_assert(close_enough(got[j], want[j] / W, REL, 0),
                          "K=%d h=%lld feature %d: %.17g vs %.17g", K, (long long)h, j, got[j],
                          want[j] / W);
            for (int p = 0; p < K; p++)
                evdecay_destroy(&parts[p]);
            free(s);
        }
}

/* Each part sees its trades in stream order, as a shard does; windows of
   20 s, 3 s of lateness (the stream's disorder is 2 s: nothing is late). */
Test(merge, event_time_windows_of_random_partitions)
{
    rng_t r;
    rng_seed(&r, 3);
    int64_t len = 20 * SEC, late = 3 * SEC;
    uint32_t keep = 64;                   /* the stream spans ~31 windows */
    for (int K = 1; K <= 9; K += 2)
        for (int rep = 0; rep < 2; rep++) {
            stream_t *s = gen(3000 + K * 10 + rep, K);
            evwin_t whole, parts[16];
            cr_assert_eq(evwin_init(&whole, NF, len, late, keep), 0);
            for (int p = 0; p < K; p++)
                cr_assert_eq(evwin_init(&parts[p], NF, len, late, keep), 0);
            for (size_t t = 0; t < N; t++) {
                cr_assert_eq(evwin_add(&whole, s->ts[t], s->x + t * NF, NULL, NULL), 0);
                cr_assert_eq(evwin_add(&parts[s->part[t]], s->ts[t], s->x + t * NF, NULL, NULL), 0);
            }
            int m = s_random_merge(&r, parts, sizeof parts[0], K, s_win_merge);
            evwin_t *got = &parts[m];
            cr_assert_eq(got->max_ts, whole.max_ts);
            cr_assert_eq(got->next_close, whole.next_close);
            cr_assert_eq(got->late, 0);
            cr_assert_eq(got->used, whole.used);
            int seen = 0;
            int64_t k0 = evwin_floor_div(T0, len) - 2, k1 = evwin_floor_div(whole.max_ts, len) + 2;
            for (int64_t k = k0; k <= k1; k++) {
                evwin_view_t a, b;
                int sa = evwin_get(&whole, k, &a);
                double want_mean[NF] = {0};
                uint64_t want_n = 0;
                for (size_t t = 0; t < N; t++)
                    if (evwin_floor_div(s->ts[t], len) == k) {
                        want_n++;
                        for (int j = 0; j < NF; j++)
                            want_mean[j] += s->x[t * NF + j];
                    }
                int sb = evwin_get(got, k, &b);
                cr_assert_eq(sa, sb, "window %lld held/open/closed", (long long)k);
                if (sa < 0) {
                    cr_assert_eq(want_n, 0, "window %lld with trades not held", (long long)k);
                    continue;
                }
                cr_assert_eq(a.count, want_n, "window %lld", (long long)k);
                double gm[NF];
                memcpy(gm, b.mean, sizeof gm);
                cr_assert_eq(b.count, want_n, "K=%d window %lld", K, (long long)k);
                for (int j = 0; want_n && j < NF; j++)
                    cr_assert(close_enough(gm[j], want_mean[j] / (double)want_n, REL, 1e-15),
                              "K=%d window %lld feature %d", K, (long long)k, j);
                seen += want_n > 0;
            }
            cr_assert_gt(seen, 25);
            evwin_destroy(&whole);
            for (int p = 0; p < K; p++)
                evwin_destroy(&parts[p]);
            free(s);
        }
}

/* Merging an empty state, or into one, is a copy; merging states whose
   watermarks differ keeps the later one and drops nothing still held. */
Test(merge, windows_with_empty_and_lagging_parts)
{
    evwin_t a, b, e;
    cr_assert_eq(evwin_init(&a, 1, 10, 0, 3), 0);
    cr_assert_eq(evwin_init(&b, 1, 10, 0, 3), 0);
    cr_assert_eq(evwin_init(&e, 1, 10, 0, 3), 0);
    float x = 1;
    cr_assert_eq(evwin_add(&a, 5, &x, NULL, NULL), 0);
    x = 2;
    cr_assert_eq(evwin_add(&a, 25, &x, NULL, NULL), 0);    /* a: windows 0, 2; 0 and 1 closed */
    x = 4;
    cr_assert_eq(evwin_add(&b, 7, &x, NULL, NULL), 0);     /* b: window 0 open */
    cr_assert_eq(evwin_merge(&b, &e), 0);
    cr_assert_eq(evwin_merge(&e, &b), 0);                 /* e is now a copy of b */
    cr_assert_eq(evwin_merge(&b, &a), 0);
    evwin_view_t v;
    cr_assert_eq(evwin_get(&b, 0, &v), 1, "closed by a's watermark");
    cr_assert_eq(v.count, 2);
    cr_assert(close_enough(v.sum[0], 5.0, 0, 0));
    cr_assert_eq(evwin_get(&b, 2, &v), 0);
    cr_assert_eq(v.count, 1);
    cr_assert_eq(b.max_ts, 25);
    cr_assert_eq(evwin_merge(&a, &e), 0);                 /* the other way round */
    cr_assert_eq(evwin_get(&a, 0, &v), 1);
    cr_assert_eq(v.count, 2);
    cr_assert(close_enough(v.sum[0], 5.0, 0, 0));
    evwin_destroy(&a);
    evwin_destroy(&b);
    evwin_destroy(&e);
}
