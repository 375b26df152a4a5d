/*  Tests of daemon/stats: the log-linear latency histogram against sorted
    samples, its bucket edges, and the counters' clocks.

    A quantile q of n samples is the sorted sample at index floor(q n)
    (clamped to n - 1); the histogram answers with the upper edge of that
    sample's bucket (never above the max), so it may be high by at most
    one bucket width: exact below 32, at most 1/16 (6.25 %) above.  */
#include "stats.h"
#include "support.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Index of the one non-empty bucket after adding v to an empty hist. */
static int
bucket_of(uint64_t v)
{
    hist_t *h = calloc(1, sizeof *h);
    hist_add(h, v);
    int idx = -1;
    for (int i = 0; i < HIST_BUCKETS; i++)
        if (h->buckets[i]) {
            cr_assert_eq(idx, -1, "value %llu counted in two buckets", (unsigned long long)v);
            cr_assert_eq(h->buckets[i], 1);
            idx = i;
        }
    cr_assert_neq(idx, -1, "value %llu counted nowhere", (unsigned long long)v);
    free(h);
    return idx;
}

static void
check_quantiles(const uint64_t *vals, size_t n, const char *what)
{
    hist_t *h = calloc(1, sizeof *h);
    uint64_t *s = malloc(n * sizeof *s), mx = 0;
    double sum = 0;
    for (size_t k = 0; k < n; k++) {
        hist_add(h, vals[k]);
        s[k] = vals[k];
        mx = vals[k] > mx ? vals[k] : mx;
        sum += (double)vals[k];
    }
    qsort(s, n, sizeof *s, cmp_u64);
    cr_assert_eq(h->count, n);
    cr_assert_eq(h->max, mx);
    cr_assert(fabs(h->sum - sum) <= 1e-9 * sum, "%s: sum %g want %g", what, h->sum, sum);
    const double qs[] = {0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 1.0};
    for (size_t k = 0; k < sizeof qs / sizeof *qs; k++) {
        uint64_t rank = (uint64_t)(qs[k] * (double)n);
        if (rank >= n)
            rank = n - 1;
        uint64_t want = s[rank], got = hist_quantile(h, qs[k]);
        uint64_t slack = want < 32 ? 0 : want / 16;
        cr_assert(got >= want && got - want <= slack && got <= mx,
                  "%s (n=%zu): q=%g got %llu, sample %llu (allowed up to %llu, max %llu)", what, n,
                  qs[k], (unsigned long long)got, (unsigned long long)want,
                  (unsigned long long)(want + slack), (unsigned long long)mx);
    }
    cr_assert_eq(hist_quantile(h, 1.0), mx, "%s: q=1 must be the max", what);
    free(s);
    free(h);
}

Test(stats, empty_histogram)
{
    hist_t h;
    memset(&h, 0, sizeof h);
    cr_assert_eq(hist_quantile(&h, 0.0), 0);
    cr_assert_eq(hist_quantile(&h, 0.5), 0);
    cr_assert_eq(hist_quantile(&h, 1.0), 0);
}

Test(stats, small_values_are_exact)
{
    uint64_t v[64];
    for (int k = 0; k < 64; k++)
        v[k] = (uint64_t)(k % 32);
    check_quantiles(v, 64, "0..31 twice");
    for (uint64_t x = 0; x < 32; x++) {
        hist_t h;
        memset(&h, 0, sizeof h);
        hist_add(&h, x);
        cr_assert_eq(hist_quantile(&h, 0.5), x);
    }
}

Test(stats, quantiles_against_sorted_samples)
{
    rng_t r;
    rng_seed(&r, 2024);
    const size_t sizes[] = {1, 2, 7, 100, 1000, 20000, 200000};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        size_t n = sizes[si];
        uint64_t *v = malloc(n * sizeof *v);
        for (int dist = 0; dist < 6; dist++) {
            for (size_t k = 0; k < n; k++) {
                double u = rng_uniform(&r);
                switch (dist) {
                case 0: v[k] = (uint64_t)(u * 1e6); break;                       /* uniform */
                case 1: v[k] = (uint64_t)exp(u * log(1e12)); break;              /* log-uniform 1..1e12 */
                case 2: v[k] = (uint64_t)(-5e4 * log(1.0 - u)); break;           /* exponential, 50 us */
                case 3: v[k] = 123456789; break;                                 /* constant */
                case 4: v[k] = u < 0.99 ? 20000 + (uint64_t)(u * 1000) : 5000000000ull; break; /* tail */
                default: v[k] = rng_next(&r) % 64; break;                        /* tiny */
                }
            }
            char what[64];
            snprintf(what, sizeof what, "distribution %d", dist);
            check_quantiles(v, n, what);
        }
        free(v);
    }
}

Test(stats, bucket_edges_monotone_and_tight)
{
    /* Upper edges strictly increase, and each bucket is at most 1/16 of
       its lower edge wide above 32 (one value wide below). */
    uint64_t prev = hist_bucket_upper(0);
    cr_assert_eq(prev, 0);
    for (int i = 1; i < HIST_BUCKETS; i++) {
        uint64_t up = hist_bucket_upper(i);
        cr_assert(up > prev, "bucket %d upper %llu not above bucket %d's %llu", i,
                  (unsigned long long)up, i - 1, (unsigned long long)prev);
        uint64_t lower = prev + 1;
        if (lower >= 32)
            cr_assert(up - prev <= lower / 16, "bucket %d [%llu, %llu] wider than 1/16", i,
                      (unsigned long long)lower, (unsigned long long)up);
        else
            cr_assert_eq(up, prev + 1);
        prev = up;
    }
}

Test(stats, every_value_lands_in_the_bucket_its_edges_say)
{
    /* Bucket i holds exactly the values in (upper(i-1), upper(i)]: every
       value up to 70000, every power of two and its neighbours up to
       2^42, and random values below 2^43. */
    for (uint64_t v = 0; v <= 70000; v++) {
        int i = bucket_of(v);
        cr_assert(v <= hist_bucket_upper(i) && (i == 0 || v > hist_bucket_upper(i - 1)),
                  "value %llu in bucket %d (%llu, %llu]", (unsigned long long)v, i,
                  (unsigned long long)(i ? hist_bucket_upper(i - 1) : 0),
                  (unsigned long long)hist_bucket_upper(i));
    }
    rng_t r;
    rng_seed(&r, 5);
    for (int e = 5; e <= 42; e++) {
        for (int d = -1; d <= 1; d++) {
            uint64_t v = (1ull << e) + (uint64_t)(int64_t)d;
            int i = bucket_of(v);
            cr_assert(v <= hist_bucket_upper(i) && v > hist_bucket_upper(i - 1), "2^%d%+d", e, d);
        }
        for (int k = 0; k < 200; k++) {
            uint64_t v = (1ull << e) | (rng_next(&r) & ((1ull << e) - 1));
            int i = bucket_of(v);
            cr_assert(v <= hist_bucket_upper(i) && v > hist_bucket_upper(i - 1), "%llu",
                      (unsigned long long)v);
        }
    }
}

Test(stats, values_beyond_the_last_bucket)
{
    /* stats.h: "values in bucket i are <= hist_bucket_upper(i)". Values
       from 2^43 ns (2.4 hours) up are clamped into the last bucket, whose
       stated upper edge is 2^43 - 1: a quantile that falls there reports
       2^43 - 1 instead of a value near the samples. */
    const uint64_t big[] = {1ull << 43, 1ull << 50, UINT64_MAX};
    for (size_t k = 0; k < sizeof big / sizeof *big; k++) {
        int i = bucket_of(big[k]);
        cr_assert(big[k] <= hist_bucket_upper(i), "value %llu in bucket %d whose upper edge is %llu",
                  (unsigned long long)big[k], i, (unsigned long long)hist_bucket_upper(i));
    }
    uint64_t v[101];
    for (int k = 0; k < 100; k++)
        v[k] = 1ull << 50;
    v[100] = 1ull << 60;
    check_quantiles(v, 101, "2^50 with a 2^60 max");
}

Test(stats, max_tracks_the_largest)
{
    hist_t h;
    memset(&h, 0, sizeof h);
    hist_add(&h, 5);
    hist_add(&h, 1000000);
    hist_add(&h, 17);
    cr_assert_eq(h.max, 1000000);
    cr_assert_eq(hist_quantile(&h, 1.0), 1000000);
    /* The max caps the upper edge of its bucket: 1000000 lies in a bucket
       whose edge is above it, yet no quantile reports more than the max. */
    cr_assert(hist_bucket_upper(bucket_of(1000000)) > 1000000);
    cr_assert_eq(hist_quantile(&h, 0.99), 1000000);
    cr_assert_eq(hist_quantile(&h, 0.0), 5);
}

Test(stats, init_and_clocks)
{
    stats_t *s = malloc(sizeof *s);
    memset(s, 0xab, sizeof *s);
    int64_t before = now_mono_ns();
    stats_init(s);
    int64_t after = now_mono_ns();
    cr_assert(s->start_ns >= before && s->start_ns <= after);
    cr_assert(s->received == 0 && s->rejected_total == 0 && s->latency.count == 0 &&
              s->latency.max == 0 && s->latency.buckets[HIST_BUCKETS - 1] == 0);
    for (int r = 0; r < XR_NREASONS; r++)
        cr_assert_eq(s->rejected[r], 0);
    int64_t last = now_mono_ns();
    for (int k = 0; k < 1000; k++) {
        int64_t t = now_mono_ns();
        cr_assert(t >= last, "monotonic clock went back");
        last = t;
    }
    int64_t wall = now_wall_ns();
    int64_t secs = (int64_t)time(NULL);
    cr_assert(llabs(wall / 1000000000 - secs) <= 2, "wall clock %lld ns vs time() %lld s",
              (long long)wall, (long long)secs);
    free(s);
}
