/*  Tests of core/agg against a float64 two-pass reference written here:
    mean = sum x / n, m2 = sum (x - mean)^2, decayed mean as the explicit
    weighted sum of the whole stream.  */
#include "agg.h"
#include "support.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NF 13

/* A stream of `count` vectors of nf floats: feature j has its own offset
   and scale, so means and spreads differ across features. */
static float *
gen_stream(uint64_t seed, size_t count, int nf)
{
    rng_t r;
    rng_seed(&r, seed);
    float *x = malloc(count * nf * sizeof *x);
    for (size_t t = 0; t < count; t++)
        for (int j = 0; j < nf; j++)
            x[t * nf + j] = (float)((j - 4) * 1.5 + (0.1 + j * 0.3) * rng_normal(&r));
    return x;
}

/* Two-pass float64 mean and m2 of rows [from, to) of a stream. */
static void
two_pass(const float *x, size_t from, size_t to, int nf, double *mean, double *m2)
{
    for (int j = 0; j < nf; j++) {
        double s = 0, q = 0;
        for (size_t t = from; t < to; t++)
            s += x[t * nf + j];
        double m = to > from ? s / (double)(to - from) : 0;
        for (size_t t = from; t < to; t++)
            q += (x[t * nf + j] - m) * (x[t * nf + j] - m);
        mean[j] = m;
        m2[j] = q;
    }
}

static void
feed(agg_t *a, const float *x, size_t from, size_t to)
{
    for (size_t t = from; t < to; t++)
        cr_assert_eq(agg_update(a, x + t * a->nfeat), 0);
}

/* |got - want| <= rel * |want| + rel * scale: relative, with `scale` the
   data's magnitude for values that happen to be near 0. */
static void
expect_near(const char *what, size_t at, double got, double want, double rel, double scale)
{
    cr_assert(fabs(got - want) <= rel * (fabs(want) + scale), "%s [%zu]: %.17g vs %.17g", what,
              at, got, want);
}

Test(agg, welford_matches_two_pass)
{
    static const size_t lengths[] = {1, 2, 3, 17, 1000, 20000};
    for (size_t li = 0; li < sizeof lengths / sizeof *lengths; li++) {
        size_t n = lengths[li];
        float *x = gen_stream(10 + li, n, NF);
        agg_t a;
        cr_assert_eq(agg_init(&a, NF, 0), 0);
        feed(&a, x, 0, n);
        double mean[NF], m2[NF], sd[NF];
        two_pass(x, 0, n, NF, mean, m2);
        agg_std(&a, sd);
        cr_assert_eq(a.count, n);
        for (int j = 0; j < NF; j++) {
            expect_near("mean", j, a.mean[j], mean[j], 1e-12, 1.0);
            expect_near("m2", j, a.m2[j], m2[j], 1e-12, 0);
            double want_sd = n >= 2 ? sqrt(m2[j] / (double)(n - 1)) : 0;
            expect_near("std", j, sd[j], want_sd, 1e-12, 0);
        }
        agg_destroy(&a);
        free(x);
    }
}

Test(agg, std_by_hand)
{
    /* 2 4 4 4 5 5 7 9: mean 5, squared deviations 9 1 1 1 0 0 4 16 sum to
       m2 = 32; sample std sqrt(32 / 7) (the population one would be 2). */
    static const float xs[] = {2, 4, 4, 4, 5, 5, 7, 9};
    agg_t a;
    cr_assert_eq(agg_init(&a, 1, 0), 0);
    double sd;
    agg_std(&a, &sd);
    cr_assert_eq(sd, 0.0, "count 0");
    cr_assert_eq(a.mean[0], 0.0);
    for (int t = 0; t < 8; t++) {
        cr_assert_eq(agg_update(&a, &xs[t]), 0);
        if (t == 0) {
            agg_std(&a, &sd);
            cr_assert_eq(sd, 0.0, "count 1 has no sample std");
        }
    }
    agg_std(&a, &sd);
    cr_assert_eq(a.mean[0], 5.0);
    cr_assert_eq(a.m2[0], 32.0);
    cr_assert(fabs(sd - sqrt(32.0 / 7)) <= 1e-15, "%.17g", sd);
    agg_destroy(&a);
}

Test(agg, merge_equals_concatenated_stream)
{
    const size_t n = 3000;
    float *x = gen_stream(20, n, NF);
    agg_t whole;
    cr_assert_eq(agg_init(&whole, NF, 0), 0);
    feed(&whole, x, 0, n);
    static const size_t cuts[] = {0, 1, 2, 999, 1500, 2998, 2999, 3000};
    for (size_t c = 0; c < sizeof cuts / sizeof *cuts; c++) {
        agg_t a, b;
        cr_assert_eq(agg_init(&a, NF, 0), 0);
        cr_assert_eq(agg_init(&b, NF, 0), 0);
        feed(&a, x, 0, cuts[c]);
        feed(&b, x, cuts[c], n);
        cr_assert_eq(agg_merge(&a, &b), 0);
        cr_assert_eq(a.count, n);
        for (int j = 0; j < NF; j++) {
            expect_near("merged mean", cuts[c], a.mean[j], whole.mean[j], 1e-12, 1.0);
            expect_near("merged m2", cuts[c], a.m2[j], whole.m2[j], 1e-12, 0);
        }
        agg_destroy(&a);
        agg_destroy(&b);
    }
    /* Many small partials merged pairwise, as shards would be. */
    enum { PARTS = 16 };
    agg_t part[PARTS];
    for (int p = 0; p < PARTS; p++) {
        cr_assert_eq(agg_init(&part[p], NF, 0), 0);
        feed(&part[p], x, n * p / PARTS, n * (p + 1) / PARTS);
    }
    for (int step = 1; step < PARTS; step *= 2)
        for (int p = 0; p + step < PARTS; p += 2 * step)
            cr_assert_eq(agg_merge(&part[p], &part[p + step]), 0);
    double mean[NF], m2[NF];
    two_pass(x, 0, n, NF, mean, m2);
    cr_assert_eq(part[0].count, n);
    for (int j = 0; j < NF; j++) {
        expect_near("tree mean", j, part[0].mean[j], mean[j], 1e-12, 1.0);
        expect_near("tree m2", j, part[0].m2[j], m2[j], 1e-12, 0);
    }
    for (int p = 0; p < PARTS; p++)
        agg_destroy(&part[p]);
    agg_destroy(&whole);
    free(x);
}

Test(agg, merge_rejects_different_shapes)
{
    agg_t a, b, c;
    cr_assert_eq(agg_init(&a, 3, 10), 0);
    cr_assert_eq(agg_init(&b, 4, 10), 0);
    cr_assert_eq(agg_init(&c, 3, 20), 0);
    const float v[4] = {1, 2, 3, 4};
    agg_update(&a, v);
    agg_update(&b, v);
    agg_update(&c, v);
    cr_assert_eq(agg_merge(&a, &b), -1);
    cr_assert_eq(agg_merge(&a, &c), -1, "half-lives differ");
    cr_assert_eq(a.count, 1u);
    cr_assert_eq(a.mean[2], 3.0);
    agg_destroy(&a);
    agg_destroy(&b);
    agg_destroy(&c);
}

Test(agg, merge_leaves_decayed_alone_unless_empty)
{
    agg_t a, b, e;
    cr_assert_eq(agg_init(&a, 1, 4), 0);
    cr_assert_eq(agg_init(&b, 1, 4), 0);
    cr_assert_eq(agg_init(&e, 1, 4), 0);
    const float one = 1, nine = 9;
    agg_update(&a, &one);
    agg_update(&b, &nine);
    agg_update(&b, &nine);
    cr_assert_eq(agg_merge(&e, &b), 0);
    cr_assert_eq(e.count, 2u);
    cr_assert_eq(e.decayed[0], 9.0, "merge into empty is a copy");
    cr_assert_eq(agg_merge(&a, &b), 0);
    cr_assert_eq(a.decayed[0], 1.0, "decayed means are not mergeable");
    /* (1 + 9 + 9) / 3 */
    cr_assert(fabs(a.mean[0] - 19.0 / 3) <= 1e-15);
    agg_destroy(&a);
    agg_destroy(&b);
    agg_destroy(&e);
}

Test(agg, decayed_by_hand)
{
    agg_t a;
    /* Half-life 1: alpha = 1 - 2^-1 = 1/2. 4, then 0, 0: 4, 2, 1. */
    cr_assert_eq(agg_init(&a, 1, 1), 0);
    cr_assert_eq(a.alpha, 0.5);
    static const float s1[] = {4, 0, 0};
    static const double d1[] = {4, 2, 1};
    for (int t = 0; t < 3; t++) {
        agg_update(&a, &s1[t]);
        cr_assert_eq(a.decayed[0], d1[t], "t=%d", t);
    }
    agg_destroy(&a);
    /* Half-life 3: a first 0, then 3 trades of 1. The first value's
       weight is (1 - alpha)^3 = 2^-1, so d = 1 - 1/2 = 1/2. */
    cr_assert_eq(agg_init(&a, 1, 3), 0);
    const float zero = 0, one = 1;
    agg_update(&a, &zero);
    for (int t = 0; t < 3; t++)
        agg_update(&a, &one);
    cr_assert(fabs(a.decayed[0] - 0.5) <= 1e-15, "%.17g", a.decayed[0]);
    agg_destroy(&a);
}

Test(agg, decayed_matches_weighted_sum)
{
    static const double half_lives[] = {0.5, 1, 2.5, 10, 1000, 1e7};
    const size_t n = 400;
    const int nf = 4;
    float *x = gen_stream(30, n, nf);
    for (size_t h = 0; h < sizeof half_lives / sizeof *half_lives; h++) {
        agg_t a;
        cr_assert_eq(agg_init(&a, nf, half_lives[h]), 0);
        double alpha = 1 - pow(2, -1 / half_lives[h]), keep = 1 - alpha;
        for (size_t t = 0; t < n; t++) {
            agg_update(&a, x + t * nf);
            /* d_t = keep^(t) x_0 + sum_{s=1..t} alpha keep^(t-s) x_s
               (0-based t): the first vector starts the mean. */
            for (int j = 0; j < nf; j++) {
                double want = pow(keep, (double)t) * x[j];
                for (size_t s = 1; s <= t; s++)
                    want += alpha * pow(keep, (double)(t - s)) * x[s * nf + j];
                expect_near("decayed", t, a.decayed[j], want, 1e-12, 1.0);
            }
        }
        agg_destroy(&a);
    }
    free(x);
}

Test(agg, init_validates_half_life)
{
    agg_t a;
    cr_assert_eq(agg_init(&a, 3, 0), 0);
    cr_assert_null(a.decayed, "half-life 0 disables the decayed mean");
    const float v[3] = {1, 2, 3};
    cr_assert_eq(agg_update(&a, v), 0);
    cr_assert_eq(a.mean[1], 2.0);
    agg_destroy(&a);
    agg_destroy(&a);    /* twice is safe */
    cr_assert_eq(agg_init(&a, 3, -1), -1);
    cr_assert_eq(agg_init(&a, 3, NAN), -1);
    cr_assert_eq(agg_init(&a, 3, INFINITY), -1);
    agg_destroy(&a);
}

Test(agg, nonfinite_update_changes_nothing)
{
    agg_t a;
    cr_assert_eq(agg_init(&a, 3, 5), 0);
    const float good[3] = {1, 2, 3}, good2[3] = {2, 0, 7}, bad[3] = {1, NAN, 3},
                inf[3] = {INFINITY, 0, 0};
    agg_update(&a, good);
    agg_update(&a, good2);
    double mean[3], m2[3], dec[3];
    memcpy(mean, a.mean, sizeof mean);
    memcpy(m2, a.m2, sizeof m2);
    memcpy(dec, a.decayed, sizeof dec);
    cr_assert_eq(agg_update(&a, bad), -1);
    cr_assert_eq(agg_update(&a, inf), -1);
    cr_assert_eq(a.count, 2u);
    cr_assert_eq(memcmp(mean, a.mean, sizeof mean), 0);
    cr_assert_eq(memcmp(m2, a.m2, sizeof m2), 0);
    cr_assert_eq(memcmp(dec, a.decayed, sizeof dec), 0);
    agg_destroy(&a);
}

Test(agg, restored_fields_continue_the_stream)
{
    /* What persistence will do: read the plain fields, write them into a
       fresh aggregate, go on. The result must be bit-identical. */
    const size_t n = 500;
    float *x = gen_stream(40, n, NF);
    agg_t a, b;
    cr_assert_eq(agg_init(&a, NF, 25), 0);
    feed(&a, x, 0, 200);
    cr_assert_eq(agg_init(&b, NF, 25), 0);
    b.count = a.count;
    memcpy(b.mean, a.mean, NF * sizeof(double));
    memcpy(b.m2, a.m2, NF * sizeof(double));
    memcpy(b.decayed, a.decayed, NF * sizeof(double));
    feed(&a, x, 200, n);
    feed(&b, x, 200, n);
    cr_assert_eq(b.count, n);
    cr_assert_eq(memcmp(a.mean, b.mean, NF * sizeof(double)), 0);
    cr_assert_eq(memcmp(a.m2, b.m2, NF * sizeof(double)), 0);
    cr_assert_eq(memcmp(a.decayed, b.decayed, NF * sizeof(double)), 0);
    agg_destroy(&a);
    agg_destroy(&b);
    free(x);
}

/* ---- head statistics -------------------------------------------------------- */

Test(agg, heads_match_two_pass)
{
    enum { L = 3, H = 4, T = 300 };
    rng_t r;
    rng_seed(&r, 50);
    static float imp[T][L * H], conf[T][L * H];
    static bool has_grad[T];
    agg_heads_t s, s1, s2;
    cr_assert_eq(agg_heads_init(&s, L, H), 0);
    cr_assert_eq(agg_heads_init(&s1, L, H), 0);
    cr_assert_eq(agg_heads_init(&s2, L, H), 0);
    size_t with_grad = 0;
    for (int t = 0; t < T; t++) {
        has_grad[t] = t % 3 != 0;
        with_grad += has_grad[t];
        for (int k = 0; k < L * H; k++) {
            imp[t][k] = (float)fabs(rng_normal(&r) * (1 + k));
            conf[t][k] = (float)(0.2 + 0.7 * rng_uniform(&r));
        }
        const float *ip = has_grad[t] ? imp[t] : NULL;
        cr_assert_eq(agg_heads_update(&s, ip, conf[t]), 0);
        cr_assert_eq(agg_heads_update(t < T / 3 ? &s1 : &s2, ip, conf[t]), 0);
    }
    cr_assert_eq(s.confidence.count, (uint64_t)T);
    cr_assert_eq(s.importance.count, with_grad);
    for (int k = 0; k < L * H; k++) {
        double si = 0, sc = 0;
        for (int t = 0; t < T; t++) {
            si += has_grad[t] ? imp[t][k] : 0;
            sc += conf[t][k];
        }
        expect_near("importance", k, s.importance.mean[k], si / (double)with_grad, 1e-12, 0);
        expect_near("confidence", k, s.confidence.mean[k], sc / T, 1e-12, 0);
    }
    cr_assert_eq(agg_heads_merge(&s1, &s2), 0);
    cr_assert_eq(s1.importance.count, with_grad);
    for (int k = 0; k < L * H; k++) {
        expect_near("merged importance", k, s1.importance.mean[k], s.importance.mean[k], 1e-12, 0);
        expect_near("merged confidence", k, s1.confidence.mean[k], s.confidence.mean[k], 1e-12, 0);
    }
    agg_heads_t other;
    cr_assert_eq(agg_heads_init(&other, H, L), 0);
    cr_assert_eq(agg_heads_merge(&s1, &other), -1, "L x H differs");
    agg_heads_destroy(&other);
    agg_heads_destroy(&s);
    agg_heads_destroy(&s1);
    agg_heads_destroy(&s2);
    agg_heads_destroy(&s2);
}

Test(agg, heads_reject_a_trade_as_a_whole)
{
    agg_heads_t s;
    cr_assert_eq(agg_heads_init(&s, 1, 2), 0);
    const float ok[2] = {0.5f, 0.25f}, bad[2] = {0.5f, NAN};
    cr_assert_eq(agg_heads_update(&s, bad, ok), -1);
    cr_assert_eq(agg_heads_update(&s, ok, bad), -1);
    cr_assert_eq(s.importance.count, 0u);
    cr_assert_eq(s.confidence.count, 0u);
    cr_assert_eq(agg_heads_update(&s, ok, ok), 0);
    cr_assert_eq(s.importance.count, 1u);
    cr_assert_eq(s.confidence.mean[1], 0.25);
    agg_heads_destroy(&s);
}
