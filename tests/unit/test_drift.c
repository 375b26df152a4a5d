/*  Tests of core/drift: window bookkeeping, reference kinds, thresholds,
    undefined statistics, and a stream whose importance ranking flips.  */
#include "drift.h"
#include "support.h"

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#define NF 12
#define W 40

/* Trade t of a stream whose ranking is f0 > f1 > ... > f11 before trade
   `flip` and reversed from it on; features 1/12 apart, per-trade noise
   0.05 (0.008 on a window mean of 40). */
static void
flip_trade(rng_t *r, int t, int flip, float *x)
{
    for (int j = 0; j < NF; j++) {
        int k = t < flip ? j : NF - 1 - j;
        x[j] = (float)((double)(NF - k) / NF + 0.05 * rng_normal(r));
    }
}

/* Push trades until one closes a window; returns the trades pushed. */
static int
push_window(drift_t *d, rng_t *r, int *t, int flip, drift_report_t *rep)
{
    float x[NF];
    for (int k = 1;; k++) {
        flip_trade(r, (*t)++, flip, x);
        int rc = drift_push(d, x, rep);
        cr_assert_geq(rc, 0);
        if (rc == 1)
            return k;
    }
}

Test(drift, ranking_flip_alerts_on_first_shifted_window_only)
{
    enum { WINDOWS = 8, FLIP = 4 * W };
    drift_t d;
    cr_assert_eq(drift_init(&d, NF, W, NULL), 0);
    rng_t r;
    rng_seed(&r, 1);
    int t = 0;
    for (int win = 0; win < WINDOWS; win++) {
        drift_report_t rep;
        cr_assert_eq(push_window(&d, &r, &t, FLIP, &rep), W, "window %d closed early or late", win);
        cr_assert_eq(rep.window, (uint64_t)win);
        cr_assert_eq(rep.ref, DRIFT_REF_BASELINE);
        if (win == 0) {
            cr_assert(!rep.compared, "the first window is the baseline");
            cr_assert(!rep.alert);
            continue;
        }
        cr_assert(rep.compared);
        cr_assert(rep.spearman.defined && rep.ndcg.defined && rep.js.defined, "window %d", win);
        if (win * W < FLIP) {
            cr_assert(!rep.alert, "false alert on window %d: rho %g ndcg %g js %g", win,
                      rep.spearman.value, rep.ndcg.value, rep.js.value);
            cr_assert_gt(rep.spearman.value, 0.95);
            cr_assert_gt(rep.ndcg.value, 0.95);
        } else {
            cr_assert(rep.alert, "no alert on shifted window %d", win);
            cr_assert(rep.spearman.alert && rep.ndcg.alert, "window %d", win);
            cr_assert_lt(rep.spearman.value, -0.95);
        }
    }
    drift_destroy(&d);
}

Test(drift, window_mean_and_indices)
{
    drift_t d;
    cr_assert_eq(drift_init(&d, 2, 4, NULL), 0);
    drift_report_t rep;
    /* (1,0) (2,0) (3,8) (6,0): means 12/4 = 3 and 8/4 = 2. */
    const float xs[4][2] = {{1, 0}, {2, 0}, {3, 8}, {6, 0}};
    for (int t = 0; t < 3; t++)
        cr_assert_eq(drift_push(&d, xs[t], &rep), 0);
    cr_assert_eq(d.filled, 3u);
    cr_assert_eq(drift_push(&d, xs[3], &rep), 1);
    cr_assert_eq(rep.mean[0], 3.0);
    cr_assert_eq(rep.mean[1], 2.0);
    cr_assert_eq(rep.window, 0u);
    cr_assert_eq(d.filled, 0u);
    /* The next window starts from zero, not from the last sums. */
    for (int t = 0; t < 4; t++)
        drift_push(&d, xs[0], &rep);
    cr_assert_eq(rep.window, 1u);
    cr_assert_eq(rep.mean[0], 1.0);
    cr_assert_eq(rep.mean[1], 0.0);
    drift_destroy(&d);
    drift_destroy(&d);
}

Test(drift, external_and_pinned_references)
{
    enum { FLIP = 2 * W };
    drift_t d;
    cr_assert_eq(drift_init(&d, NF, W, NULL), 0);
    /* An external reference that already has the flipped ranking. */
    double ext[NF];
    for (int j = 0; j < NF; j++)
        ext[j] = (double)(j + 1) / NF;
    cr_assert_eq(drift_set_reference(&d, DRIFT_REF_EXTERNAL, ext), 0);
    rng_t r;
    rng_seed(&r, 2);
    int t = 0;
    drift_report_t rep;
    for (int win = 0; win < 4; win++) {
        push_window(&d, &r, &t, FLIP, &rep);
        cr_assert(rep.compared, "with a reference set, no window becomes the baseline");
        cr_assert_eq(rep.ref, DRIFT_REF_EXTERNAL);
        cr_assert_eq(rep.alert, win * W < FLIP, "window %d", win);
    }
    /* Pin the last window (flipped) and flip back: alerts again, against
       the pinned vector. */
    cr_assert(d.has_last);
    cr_assert_eq(drift_set_reference(&d, DRIFT_REF_PINNED, d.last), 0);
    for (int win = 0; win < 2; win++) {
        push_window(&d, &r, &t, t + 1000000, &rep);  /* flip far away: original ranking */
        cr_assert_eq(rep.ref, DRIFT_REF_PINNED);
        cr_assert(rep.alert && rep.spearman.value < -0.95);
    }
    /* Dropping the reference re-baselines on the next window. */
    drift_reset_reference(&d);
    push_window(&d, &r, &t, t + 1000000, &rep);
    cr_assert(!rep.compared);
    cr_assert_eq(rep.ref, DRIFT_REF_BASELINE);
    push_window(&d, &r, &t, t + 1000000, &rep);
    cr_assert(rep.compared && !rep.alert);
    cr_assert_eq(rep.window, 7u);
    drift_destroy(&d);
}

Test(drift, thresholds_by_hand)
{
    /* Window of 1 trade: the mean is the trade. cur = 3 1 2, ref = 3 2 1.
       Spearman: ranks (3 1 2) and (3 2 1), deviations from 2 (1 -1 0) and
       (1 0 -1): rho = 1 / 2. nDCG@10 = nDCG@3: cur orders f0 f2 f1 with
       gains 3 1 2, DCG = 3 + 1/log2 3 + 2/2, IDCG = 3 + 2/log2 3 + 1/2.
       JS: p = (1/2 1/6 1/3), q = (1/2 1/3 1/6), m = (1/2 1/4 1/4):
       (1/6) log2(2/3) + (1/3) log2(4/3) = 5/6 - (1/2) log2 3. */
    const double want_rho = 0.5;
    const double want_ndcg = (4 + 1 / log2(3)) / (3.5 + 2 / log2(3));
    const double want_js = 5.0 / 6 - 0.5 * log2(3);
    const float cur[3] = {3, 1, 2};
    const double ref[3] = {3, 2, 1};
    drift_opts_t o;
    drift_opts_default(&o);
    cr_assert(o.rho_min == 0.8 && o.ndcg_min == 0.9 && o.js_max == 0.1 && o.ndcg_k == 10);
    static const struct {
        double rho_min, ndcg_min, js_max;
        bool a_rho, a_ndcg, a_js;
    } rows[] = {
        {0.8, 0.9, 0.1, true, false, false},    /* defaults: rho 0.5 < 0.8 */
        {0.4, 0.9, 0.1, false, false, false},   /* nothing crosses */
        {0.4, 0.98, 0.1, false, true, false},   /* ndcg 0.972 < 0.98 */
        {0.4, 0.9, 0.04, false, false, true},   /* js 0.0409 > 0.04 */
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        o.rho_min = rows[i].rho_min;
        o.ndcg_min = rows[i].ndcg_min;
        o.js_max = rows[i].js_max;
        drift_t d;
        cr_assert_eq(drift_init(&d, 3, 1, &o), 0);
        cr_assert_eq(drift_set_reference(&d, DRIFT_REF_EXTERNAL, ref), 0);
        drift_report_t rep;
        cr_assert_eq(drift_push(&d, cur, &rep), 1);
        cr_assert(fabs(rep.spearman.value - want_rho) <= 1e-15, "%.17g", rep.spearman.value);
        cr_assert(fabs(rep.ndcg.value - want_ndcg) <= 1e-15, "%.17g", rep.ndcg.value);
        cr_assert(fabs(rep.js.value - want_js) <= 1e-15, "%.17g", rep.js.value);
        cr_assert_eq(rep.spearman.alert, rows[i].a_rho, "row %zu", i);
        cr_assert_eq(rep.ndcg.alert, rows[i].a_ndcg, "row %zu", i);
        cr_assert_eq(rep.js.alert, rows[i].a_js, "row %zu", i);
        cr_assert_eq(rep.alert, rows[i].a_rho || rows[i].a_ndcg || rows[i].a_js, "row %zu", i);
        drift_destroy(&d);
    }
}

Test(drift, undefined_statistics_never_alert)
{
    drift_t d;
    cr_assert_eq(drift_init(&d, 3, 1, NULL), 0);
    drift_report_t rep;
    /* Constant reference: Spearman undefined; nDCG ranks f2 f0 f1 against
       equal gains, = 1; JS of (1 1 1.5)/3.5 vs uniform is 0.0125 < 0.1. */
    const double flat[3] = {1, 1, 1};
    const float cur[3] = {1, 1, 1.5f};
    cr_assert_eq(drift_set_reference(&d, DRIFT_REF_EXTERNAL, flat), 0);
    cr_assert_eq(drift_push(&d, cur, &rep), 1);
    cr_assert(!rep.spearman.defined && !rep.spearman.alert);
    cr_assert_eq(rep.spearman.value, 0.0);
    cr_assert(rep.ndcg.defined && rep.ndcg.value == 1.0);
    cr_assert(rep.js.defined && rep.js.value < 0.1);
    cr_assert(!rep.alert);
    /* All-zero reference: every statistic undefined, still no alert. */
    const double zero[3] = {0, 0, 0};
    cr_assert_eq(drift_set_reference(&d, DRIFT_REF_EXTERNAL, zero), 0);
    cr_assert_eq(drift_push(&d, cur, &rep), 1);
    cr_assert(!rep.spearman.defined && !rep.ndcg.defined && !rep.js.defined);
    cr_assert(!rep.alert);
    /* The same window against a reversed reference does alert. */
    const double rev[3] = {1.5, 1, 0.5};
    cr_assert_eq(drift_set_reference(&d, DRIFT_REF_EXTERNAL, rev), 0);
    cr_assert_eq(drift_push(&d, cur, &rep), 1);
    cr_assert(rep.alert);
    drift_destroy(&d);
}

Test(drift, bad_input_changes_nothing)
{
    drift_t d;
    cr_assert_eq(drift_init(&d, 3, 2, NULL), 0);
    drift_report_t rep;
    const float ok[3] = {1, 2, 3}, bad[3] = {1, NAN, 3};
    cr_assert_eq(drift_push(&d, ok, &rep), 0);
    cr_assert_eq(drift_push(&d, bad, &rep), -1);
    cr_assert_eq(d.filled, 1u);
    cr_assert_eq(d.sum[1], 2.0);
    const double ext[3] = {3, 2, 1}, nan_[3] = {3, NAN, 1};
    cr_assert_eq(drift_set_reference(&d, DRIFT_REF_PINNED, ext), 0);
    cr_assert_eq(drift_set_reference(&d, DRIFT_REF_EXTERNAL, nan_), -1);
    cr_assert_eq(drift_set_reference(&d, DRIFT_REF_BASELINE, ext), -1);
    cr_assert_eq(d.ref_kind, DRIFT_REF_PINNED);
    cr_assert_eq(d.ref[1], 2.0);
    drift_destroy(&d);
    cr_assert_eq(drift_init(&d, 3, 0, NULL), -1, "a window of 0 trades");
    drift_destroy(&d);
}

Test(drift, reference_names)
{
    cr_assert_str_eq(drift_ref_name(DRIFT_REF_NONE), "none");
    cr_assert_str_eq(drift_ref_name(DRIFT_REF_BASELINE), "baseline");
    cr_assert_str_eq(drift_ref_name(DRIFT_REF_PINNED), "pinned");
    cr_assert_str_eq(drift_ref_name(DRIFT_REF_EXTERNAL), "external");
    cr_assert_null(drift_ref_name((drift_ref_t)7));
}

Test(drift, a_window_closed_from_outside_is_judged_like_a_counted_one)
{
    /* Two detectors see the same windows: one counts trades, the other is
       handed each window's mean (as windows by event time are). */
    drift_t a, b;
    cr_assert_eq(drift_init(&a, NF, W, NULL), 0);
    cr_assert_eq(drift_init(&b, NF, 1000000, NULL), 0);
    rng_t r;
    rng_seed(&r, 9);
    int t = 0;
    for (int win = 0; win < 6; win++) {
        drift_report_t ra, rb;
        push_window(&a, &r, &t, 3 * W, &ra);
        double mean[NF];
        memcpy(mean, ra.mean, sizeof mean);
        cr_assert_eq(drift_close_mean(&b, mean, &rb), 1);
        cr_assert_eq(rb.window, ra.window);
        cr_assert_eq(rb.ref, ra.ref);
        cr_assert_eq(rb.compared, ra.compared, "window %d", win);
        cr_assert_eq(rb.alert, ra.alert, "window %d", win);
        cr_assert(rb.spearman.value == ra.spearman.value && rb.ndcg.value == ra.ndcg.value &&
                  rb.js.value == ra.js.value);
        cr_assert_eq(rb.mean, b.last);
        cr_assert_eq(b.filled, 0u, "the count window is not touched");
    }
    drift_report_t rb;
    double bad[NF] = {0};
    bad[3] = NAN;
    uint64_t closed = b.closed;
    cr_assert_eq(drift_close_mean(&b, bad, &rb), -1);
    cr_assert_eq(b.closed, closed);
    cr_assert(!isnan(b.last[3]));
    /* d->last itself may be handed back. */
    cr_assert_eq(drift_close_mean(&b, b.last, &rb), 1);
    cr_assert(rb.compared && rb.alert && rb.spearman.value < -0.95, "the flipped window again");
    drift_destroy(&a);
    drift_destroy(&b);
}
