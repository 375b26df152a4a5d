/*  Tests of core/rank: hand-worked cases, the float64 reference (ref.c,
    O(n^2) ranks and selection by repeated scans) on random vectors with
    injected ties, and the golden rank_statistics.  */
#include "rank.h"
#include "ref.h"
#include "support.h"

#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#define NMAX 1024
#define TOL 1e-12

static rank_work_t w;

static void
setup(void)
{
    rank_work_init(&w);
}

static void
teardown(void)
{
    rank_work_destroy(&w);
}

TestSuite(rank, .init = setup, .fini = teardown);

/* Random vector of n values with ties: values come from an alphabet of
   `levels` values (0 for continuous), some negative, some exactly 0. */
static void
gen_vec(rng_t *r, double *x, int n, int levels)
{
    for (int i = 0; i < n; i++) {
        double u = rng_normal(r);
        x[i] = levels > 0 ? floor(rng_uniform(r) * levels) - levels / 3 : u;
    }
    /* Also copy a few values around, so that continuous vectors tie too. */
    int copies = (int)(rng_uniform(r) * n / 4);
    for (int c = 0; c < copies; c++)
        x[(int)(rng_uniform(r) * n)] = x[(int)(rng_uniform(r) * n)];
}

static bool
is_constant(const double *x, int n)
{
    for (int i = 1; i < n; i++)
        if (x[i] != x[0])
            return false;
    return true;
}

/* ---- average ranks ------------------------------------------------------ */

Test(rank, average_ranks_by_hand)
{
    /* Sorted: 10 10 20 20 20 30 at positions 1..6; the 10s share
       (1+2)/2 = 1.5, the 20s (3+4+5)/3 = 4, the 30 is 6. */
    double x[] = {10, 20, 10, 30, 20, 20}, r[6];
    double want[] = {1.5, 4, 1.5, 6, 4, 4};
    cr_assert_eq(rank_average(&w, x, 6, r), RANK_OK);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(r[i], want[i], "[%d] %g", i, r[i]);
}

Test(rank, empty_vectors_on_a_cold_work_area)
{
    /* Nothing allocated yet and nothing to rank: defined answers, no
       null pointer handed to qsort (the sanitizer build checks that). */
    double v = 42, r[1];
    cr_assert_eq(rank_average(&w, NULL, 0, r), RANK_OK);
    cr_assert_eq(rank_ndcg(&w, NULL, NULL, 0, 3, &v), RANK_UNDEFINED);
    cr_assert_eq(rank_spearman(&w, NULL, NULL, 0, &v), RANK_UNDEFINED);
    cr_assert_eq(rank_js(NULL, NULL, 0, &v), RANK_UNDEFINED);
    cr_assert_eq(v, 42.0);
    cr_assert_eq(w.cap, 0u);
}

Test(rank, warm_work_area_is_reused)
{
    cr_assert_eq(rank_work_reserve(&w, NMAX), RANK_OK);
    void *pairs = w.pairs;
    double *ranks = w.ranks;
    rng_t r;
    rng_seed(&r, 7);
    static double a[NMAX], b[NMAX];
    for (int t = 0; t < 50; t++) {
        int n = 1 + (int)(rng_uniform(&r) * NMAX);
        gen_vec(&r, a, n, 0);
        gen_vec(&r, b, n, 0);
        double v;
        rank_spearman(&w, a, b, n, &v);
        rank_ndcg(&w, a, b, n, 10, &v);
    }
    cr_assert_eq(w.pairs, pairs, "work area reallocated below its capacity");
    cr_assert_eq(w.ranks, ranks);
    cr_assert_eq(w.cap, (size_t)NMAX);
}

/* ---- Spearman ----------------------------------------------------------- */

Test(rank, spearman_by_hand)
{
    double rho;
    /* a = 1..5 has ranks 1..5, b = 5 6 7 8 7 has ranks 1 2 3.5 5 3.5.
       Deviations from 3: (-2 -1 0 1 2) and (-2 -1 .5 2 .5); sab = 8,
       saa = 10, sbb = 9.5: rho = 8 / sqrt(95). */
    double a1[] = {1, 2, 3, 4, 5}, b1[] = {5, 6, 7, 8, 7};
    cr_assert_eq(rank_spearman(&w, a1, b1, 5, &rho), RANK_OK);
    cr_assert(close_enough(rho, 8 / sqrt(95), TOL, 0), "%.17g", rho);

    /* a = 3 1 1 2: ranks 4 1.5 1.5 3; b = 1 1 2 2: ranks 1.5 1.5 3.5 3.5.
       Deviations from 2.5: (1.5 -1 -1 .5), (-1 -1 1 1); sab = -1,
       saa = 4.5, sbb = 4: rho = -1 / sqrt(18). */
    double a2[] = {3, 1, 1, 2}, b2[] = {1, 1, 2, 2};
    cr_assert_eq(rank_spearman(&w, a2, b2, 4, &rho), RANK_OK);
    cr_assert(close_enough(rho, -1 / sqrt(18), TOL, 0), "%.17g", rho);

    /* Ties on both sides in the same places: identical ranks, rho = 1. */
    double a3[] = {1, 1, 2, 7}, b3[] = {-5, -5, 9, 10};
    cr_assert_eq(rank_spearman(&w, a3, b3, 4, &rho), RANK_OK);
    cr_assert_eq(rho, 1.0);

    /* Reversed order: rho = -1. */
    double a4[] = {0.1, 0.2, 0.3}, b4[] = {3, 2, 1};
    cr_assert_eq(rank_spearman(&w, a4, b4, 3, &rho), RANK_OK);
    cr_assert_eq(rho, -1.0);
}

Test(rank, spearman_undefined_is_not_zero)
{
    const double sentinel = 42;
    double rho = sentinel;
    double c[] = {0.5, 0.5, 0.5, 0.5}, v[] = {1, 2, 3, 4};
    cr_assert_eq(rank_spearman(&w, c, v, 4, &rho), RANK_UNDEFINED);
    cr_assert_eq(rank_spearman(&w, v, c, 4, &rho), RANK_UNDEFINED);
    cr_assert_eq(rank_spearman(&w, v, v, 1, &rho), RANK_UNDEFINED);
    cr_assert_eq(rank_spearman(&w, v, v, 0, &rho), RANK_UNDEFINED);
    cr_assert_eq(rho, sentinel, "undefined must leave *rho alone");
    /* Every length: a constant vector of n values is undefined, even
       where a variance computed from a rounded mean is not exactly 0. */
    static double k[NMAX], idx[NMAX];
    for (int n = 2; n <= NMAX; n++) {
        for (int i = 0; i < n; i++) {
            k[i] = 0.3;
            idx[i] = i;
        }
        cr_assert_eq(rank_spearman(&w, k, idx, n, &rho), RANK_UNDEFINED, "n=%d", n);
    }
}

Test(rank, spearman_matches_reference)
{
    rng_t r;
    rng_seed(&r, 1);
    static double a[NMAX], b[NMAX];
    int compared = 0;
    for (int t = 0; t < 3000; t++) {
        int n = t % 10 == 0 ? NMAX - (int)(rng_uniform(&r) * 16) : 2 + (int)(rng_uniform(&r) * 200);
        int levels = (int)(rng_uniform(&r) * 4) * 5;  /* 0, 5, 10, 15 */
        gen_vec(&r, a, n, levels);
        gen_vec(&r, b, n, (int)(rng_uniform(&r) * 4) * 5);
        if (t % 7 == 0)     /* strongly related pairs too, not only rho ~ 0 */
            for (int i = 0; i < n; i++)
                b[i] = round(a[i] * 3 + rng_normal(&r));
        double mine, want;
        rank_status_t st = rank_spearman(&w, a, b, n, &mine);
        if (is_constant(a, n) || is_constant(b, n)) {
            cr_assert_eq(st, RANK_UNDEFINED);
            continue;
        }
        cr_assert_eq(st, RANK_OK, "t=%d n=%d", t, n);
        cr_assert(ref_spearman(a, b, n, &want));
        cr_assert(fabs(mine - want) <= TOL, "t=%d n=%d: %.17g vs %.17g", t, n, mine, want);
        compared++;
    }
    cr_assert_gt(compared, 2900);
}

Test(rank, spearman_properties)
{
    rng_t r;
    rng_seed(&r, 2);
    double a[64], b[64], c[64], rho, rho2;
    for (int t = 0; t < 200; t++) {
        gen_vec(&r, a, 64, t % 2 ? 8 : 0);
        gen_vec(&r, b, 64, 0);
        /* A strictly increasing transform keeps every rank. */
        for (int i = 0; i < 64; i++)
            c[i] = exp(a[i] / 4) * 3 - 1;
        cr_assert_eq(rank_spearman(&w, a, b, 64, &rho), RANK_OK);
        cr_assert_eq(rank_spearman(&w, c, b, 64, &rho2), RANK_OK);
        cr_assert_eq(rho, rho2);
        cr_assert_eq(rank_spearman(&w, b, a, 64, &rho2), RANK_OK);
        cr_assert_eq(rho, rho2, "not symmetric");
        cr_assert(rho >= -1 && rho <= 1);
        cr_assert_eq(rank_spearman(&w, a, a, 64, &rho), RANK_OK);
        cr_assert_eq(rho, 1.0);
        for (int i = 0; i < 64; i++)
            c[i] = -a[i];
        cr_assert_eq(rank_spearman(&w, a, c, 64, &rho), RANK_OK);
        cr_assert_eq(rho, -1.0);
    }
}

/* ---- nDCG ----------------------------------------------------------------- */

Test(rank, ndcg_by_hand)
{
    double v;
    /* cur = 3 1 2 ranks f0, f2, f1; ref = 1 3 2 ranks f1, f2, f0.
       k = 2: DCG = 1/log2(2) + 2/log2(3), IDCG = 3/log2(2) + 2/log2(3). */
    double c1[] = {3, 1, 2}, r1[] = {1, 3, 2};
    cr_assert_eq(rank_ndcg(&w, c1, r1, 3, 2, &v), RANK_OK);
    cr_assert(close_enough(v, (1 + 2 / log2(3)) / (3 + 2 / log2(3)), TOL, 0), "%.17g", v);

    /* Tie in cur between f0 and f1: f0 (lower index) comes first, and its
       gain is 0: nDCG@1 = 0. The other tie break would give 1. */
    double c2[] = {1, 1, 0}, r2[] = {0, 5, 1};
    cr_assert_eq(rank_ndcg(&w, c2, r2, 3, 1, &v), RANK_OK);
    cr_assert_eq(v, 0.0);

    /* Negative reference values gain 0. cur = 5 0 0 ranks f0, f1 (tie
       f1/f2 by index); gains max(-2,0) = 0 and 1: DCG = 1/log2(3). The
       reference ranks f1 (1), f2 (0): IDCG = 1. */
    double c3[] = {5, 0, 0}, r3[] = {-2, 1, 0};
    cr_assert_eq(rank_ndcg(&w, c3, r3, 3, 2, &v), RANK_OK);
    cr_assert(close_enough(v, 1 / log2(3), TOL, 0), "%.17g", v);

    /* k beyond n counts as n: k = 10 equals k = 3 here. cur = 1 2 3 ranks
       f2 f1 f0 with gains 3 2 1 = the ideal order: 1. */
    double c4[] = {1, 2, 3}, r4[] = {1, 2, 3}, v3;
    cr_assert_eq(rank_ndcg(&w, c4, r4, 3, 10, &v), RANK_OK);
    cr_assert_eq(rank_ndcg(&w, c4, r4, 3, 3, &v3), RANK_OK);
    cr_assert_eq(v, 1.0);
    cr_assert_eq(v, v3);

    /* Fully reversed, k = 3: gains in order 1 2 3 against 3 2 1.
       DCG = 1 + 2/log2(3) + 3/2, IDCG = 3 + 2/log2(3) + 1/2. */
    double c5[] = {3, 2, 1};
    cr_assert_eq(rank_ndcg(&w, c5, r4, 3, 3, &v), RANK_OK);
    cr_assert(close_enough(v, (2.5 + 2 / log2(3)) / (3.5 + 2 / log2(3)), TOL, 0), "%.17g", v);
}

Test(rank, ndcg_undefined_when_no_ideal_gain)
{
    const double sentinel = 42;
    double v = sentinel;
    double c[] = {3, 2, 1}, neg[] = {-1, 0, -3}, late[] = {0, 0, 4};
    cr_assert_eq(rank_ndcg(&w, c, neg, 3, 3, &v), RANK_UNDEFINED);
    cr_assert_eq(rank_ndcg(&w, c, c, 3, 0, &v), RANK_UNDEFINED);
    cr_assert_eq(rank_ndcg(&w, c, c, 0, 3, &v), RANK_UNDEFINED);
    cr_assert_eq(v, sentinel);
    /* The reference's only positive value is its top, so IDCG@1 > 0 and
       cur, which puts f0 first, scores 0: defined, and 0. */
    cr_assert_eq(rank_ndcg(&w, c, late, 3, 1, &v), RANK_OK);
    cr_assert_eq(v, 0.0);
}

Test(rank, ndcg_matches_reference)
{
    rng_t r;
    rng_seed(&r, 3);
    static double a[NMAX], b[NMAX];
    int defined = 0, undefined = 0;
    for (int t = 0; t < 3000; t++) {
        int n = t % 10 == 0 ? NMAX - (int)(rng_uniform(&r) * 16) : 1 + (int)(rng_uniform(&r) * 100);
        gen_vec(&r, a, n, (int)(rng_uniform(&r) * 4) * 3);
        gen_vec(&r, b, n, (int)(rng_uniform(&r) * 4) * 3);
        if (t % 5 == 0)     /* mostly non-positive references: IDCG = 0 happens */
            for (int i = 0; i < n; i++)
                b[i] = rng_uniform(&r) < 0.9 ? -fabs(b[i]) : b[i];
        int k = 1 + (int)(rng_uniform(&r) * (n + 3));
        double mine, want;
        rank_status_t st = rank_ndcg(&w, a, b, n, k, &mine);
        if (ref_ndcg(a, b, n, k, &want)) {
            cr_assert_eq(st, RANK_OK, "t=%d", t);
            cr_assert(fabs(mine - want) <= TOL, "t=%d n=%d k=%d: %.17g vs %.17g", t, n, k, mine,
                      want);
            cr_assert(mine >= 0 && mine <= 1);
            defined++;
        } else {
            cr_assert_eq(st, RANK_UNDEFINED, "t=%d", t);
            undefined++;
        }
    }
    cr_assert_gt(defined, 2000);
    cr_assert_gt(undefined, 20);
}

/* ---- Jensen-Shannon --------------------------------------------------------- */

Test(rank, js_by_hand)
{
    double v;
    /* Disjoint supports: m = (.5, .5), each half contributes
       .5 * 1 * log2(1 / .5) = .5: JS = 1. */
    double p1[] = {1, 0}, q1[] = {0, 1};
    cr_assert_eq(rank_js(p1, q1, 2, &v), RANK_OK);
    cr_assert(close_enough(v, 1, TOL, 0), "%.17g", v);

    /* p = (1, 0), q = (.5, .5), m = (.75, .25):
       .5 log2(1/.75) + .5 (.5 log2(.5/.75) + .5 log2(.5/.25))
       = .5 (2 - log2 3) + .25 (1 - log2 3) + .25 = 1.5 - .75 log2 3.
       Scale and sign do not matter: |-7| / 7 and (3, 3) / 6. */
    double p2[] = {-7, 0}, q2[] = {3, 3};
    cr_assert_eq(rank_js(p2, q2, 2, &v), RANK_OK);
    cr_assert(close_enough(v, 1.5 - 0.75 * log2(3), TOL, 0), "%.17g", v);

    /* Same distribution up to scale and signs: 0. */
    double p3[] = {1, -2, 3}, q3[] = {-2, 4, 6};
    cr_assert_eq(rank_js(p3, q3, 3, &v), RANK_OK);
    cr_assert_eq(v, 0.0);
}

Test(rank, js_undefined_for_all_zero)
{
    const double sentinel = 42;
    double v = sentinel, z[] = {0, 0, -0.0}, x[] = {1, 2, 3};
    cr_assert_eq(rank_js(z, x, 3, &v), RANK_UNDEFINED);
    cr_assert_eq(rank_js(x, z, 3, &v), RANK_UNDEFINED);
    cr_assert_eq(rank_js(z, z, 3, &v), RANK_UNDEFINED);
    cr_assert_eq(rank_js(x, x, 0, &v), RANK_UNDEFINED);
    cr_assert_eq(v, sentinel);
}

Test(rank, js_matches_reference)
{
    rng_t r;
    rng_seed(&r, 4);
    static double a[NMAX], b[NMAX];
    for (int t = 0; t < 3000; t++) {
        int n = t % 10 == 0 ? NMAX : 1 + (int)(rng_uniform(&r) * 100);
        gen_vec(&r, a, n, (int)(rng_uniform(&r) * 3) * 4);
        gen_vec(&r, b, n, (int)(rng_uniform(&r) * 3) * 4);
        bool za = true, zb = true;
        for (int i = 0; i < n; i++) {
            za = za && a[i] == 0;
            zb = zb && b[i] == 0;
        }
        double mine;
        rank_status_t st = rank_js(a, b, n, &mine);
        if (za || zb) {
            cr_assert_eq(st, RANK_UNDEFINED);
            continue;
        }
        cr_assert_eq(st, RANK_OK);
        double want = ref_js(a, b, n);
        cr_assert(fabs(mine - want) <= TOL, "t=%d n=%d: %.17g vs %.17g", t, n, mine, want);
        cr_assert(mine >= 0 && mine <= 1);
    }
}

Test(rank, js_extreme_magnitudes)
{
    /* Values whose sum overflows, and subnormals: the same distributions
       as (1, 2, 3) and (3, 2, 1) up to scale, so the same divergence. */
    double small[] = {1, 2, 3}, rsmall[] = {3, 2, 1};
    double big[] = {DBL_MAX / 3, DBL_MAX / 1.5, DBL_MAX}, tiny[3];
    for (int i = 0; i < 3; i++)
        tiny[i] = rsmall[i] * 0x1p-1060;
    double want, v;
    cr_assert_eq(rank_js(small, rsmall, 3, &want), RANK_OK);
    cr_assert_eq(rank_js(big, tiny, 3, &v), RANK_OK);
    cr_assert(close_enough(v, want, 1e-12, 0), "%.17g vs %.17g", v, want);
}

Test(rank, nonfinite_input_is_rejected)
{
    double ok[] = {1, 2, 3}, nan_[] = {1, NAN, 3}, inf[] = {INFINITY, 2, 3}, v = 0, r[3];
    cr_assert_eq(rank_average(&w, nan_, 3, r), RANK_ENONFINITE);
    cr_assert_eq(rank_spearman(&w, ok, nan_, 3, &v), RANK_ENONFINITE);
    cr_assert_eq(rank_spearman(&w, inf, ok, 3, &v), RANK_ENONFINITE);
    cr_assert_eq(rank_ndcg(&w, nan_, ok, 3, 2, &v), RANK_ENONFINITE);
    cr_assert_eq(rank_ndcg(&w, ok, inf, 3, 2, &v), RANK_ENONFINITE);
    cr_assert_eq(rank_js(ok, inf, 3, &v), RANK_ENONFINITE);
    cr_assert_eq(rank_js(nan_, ok, 3, &v), RANK_ENONFINITE);
}

/* ---- golden rank_statistics (independent float64 implementation) ---------- */

static const msgpack_object *
map_get(const msgpack_object *m, const char *key)
{
    for (uint32_t k = 0; k < m->via.map.size; k++) {
        const msgpack_object_kv *kv = &m->via.map.ptr[k];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
            memcmp(kv->key.via.str.ptr, key, kv->key.via.str.size) == 0)
            return &kv->val;
    }
    cr_assert_fail("key %s missing", key);
    return NULL;
}

static double
num(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return o->via.f64;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return (double)o->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return (double)o->via.i64;
    default: cr_assert_fail("not a number"); return 0;
    }
}

static int
vec(const msgpack_object *o, double *out, int cap)
{
    cr_assert_eq(o->type, MSGPACK_OBJECT_ARRAY);
    cr_assert_leq(o->via.array.size, (uint32_t)cap);
    for (uint32_t i = 0; i < o->via.array.size; i++)
        out[i] = num(&o->via.array.ptr[i]);
    return (int)o->via.array.size;
}

Test(rank, golden_rank_statistics)
{
    FILE *f = fopen(XPL_SOURCE_DIR "/tests/vectors/golden.msgpack", "rb");
    cr_assert_not_null(f, "golden vectors missing");
    static char buf[1 << 20];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    cr_assert_eq(msgpack_unpack_next(&u, buf, len, NULL), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *rows = map_get(&u.data, "rank_statistics");
    cr_assert_eq(rows->type, MSGPACK_OBJECT_ARRAY);
    cr_assert_geq(rows->via.array.size, 4u);
    int undefined_seen = 0;
    for (uint32_t c = 0; c < rows->via.array.size; c++) {
        const msgpack_object *row = &rows->via.array.ptr[c];
        double a[64], b[64], v, want;
        int n = vec(map_get(row, "a"), a, 64);
        cr_assert_eq(vec(map_get(row, "b"), b, 64), n);

        const msgpack_object *sp = map_get(row, "spearman");
        rank_status_t st = rank_spearman(&w, a, b, n, &v);
        if (sp->type == MSGPACK_OBJECT_NIL) {
            cr_assert_eq(st, RANK_UNDEFINED, "case %u", c);
            undefined_seen++;
        } else {
            want = num(sp);
            cr_assert_eq(st, RANK_OK, "case %u", c);
            cr_assert(fabs(v - want) <= TOL, "spearman case %u: %.17g vs %.17g", c, v, want);
            double rv;
            cr_assert(ref_spearman(a, b, n, &rv));
            cr_assert(fabs(rv - want) <= TOL, "ref spearman case %u", c);
        }

        want = num(map_get(row, "ndcg_at_3"));
        cr_assert_eq(rank_ndcg(&w, a, b, n, 3, &v), RANK_OK, "case %u", c);
        cr_assert(fabs(v - want) <= TOL, "ndcg case %u: %.17g vs %.17g", c, v, want);
        double rv;
        cr_assert(ref_ndcg(a, b, n, 3, &rv));
        cr_assert(fabs(rv - want) <= TOL, "ref ndcg case %u", c);

        want = num(map_get(row, "js"));
        cr_assert_eq(rank_js(a, b, n, &v), RANK_OK, "case %u", c);
        cr_assert(fabs(v - want) <= TOL, "js case %u: %.17g vs %.17g", c, v, want);
        cr_assert(fabs(ref_js(a, b, n) - want) <= TOL, "ref js case %u", c);
    }
    cr_assert_geq(undefined_seen, 1, "golden set lost its undefined Spearman case");
    msgpack_unpacked_destroy(&u);
}
