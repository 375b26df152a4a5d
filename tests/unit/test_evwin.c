/*  Tests of core/evwin one state at a time: the decayed mean by event
    time against its explicit weighted sum, windows by event time against
    a direct grouping of the stream, lateness, retention, edge cases.
    Merging is tested in test_merge.c.  */
#include "drift.h"
#include "evwin.h"
#include "support.h"

#include <criterion/criterion.h>
#include <msgpack.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NF 7
#define SEC 1000000000LL

/* A realistic epoch: 2026-12-02 in ns. */
#define T0 1796169600000000000LL

static void
gen_vec(rng_t *r, float *x, int nf)
{
    for (int j = 0; j < nf; j++)
        x[j] = (float)((j - 3) * 0.7 + (0.2 + 0.1 * j) * rng_normal(r));
}

/* Explicit float64 decayed mean: weights 2^((ts_i - newest) / h). */
static void
ref_decay(const int64_t *ts, const float *x, size_t count, int nf, int64_t h, double *out)
{
    int64_t newest = ts[0];
    for (size_t i = 1; i < count; i++)
        if (ts[i] > newest)
            newest = ts[i];
    double W = 0;
    for (int j = 0; j < nf; j++)
        out[j] = 0;
    for (size_t i = 0; i < count; i++) {
        double w = exp2((double)(ts[i] - newest) / (double)h);
        W += w;
        for (int j = 0; j < nf; j++)
            out[j] += w * x[i * nf + j];
    }
    for (int j = 0; j < nf; j++)
        out[j] /= W;
}

Test(evdecay, by_hand)
{
    evdecay_t d;
    cr_assert_eq(evdecay_init(&d, 1, 10), 0);
    float a = 1, b = 3;
    cr_assert_eq(evdecay_add(&d, 0, &a), 0);
    cr_assert_eq(evdecay_add(&d, 10, &b), 0);      /* one half-life later: twice the weight */
    double m;
    evdecay_mean(&d, &m);
    cr_assert(close_enough(m, 7.0 / 3.0, 1e-15, 0), "mean %.17g", m);
    /* Seen from t = 20 the weights are 1/4 and 1/2. */
    cr_assert(close_enough(evdecay_weight_at(&d, 20), 0.75, 1e-15, 0));
    cr_assert(close_enough(evdecay_weight_at(&d, 15), 0.75 * M_SQRT2, 1e-15, 0));
    cr_assert_eq(d.count, 2);
    evdecay_destroy(&d);
    evdecay_destroy(&d);
}

Test(evdecay, matches_explicit_weights_in_any_order)
{
    enum { N = 2000 };
    rng_t r;
    rng_seed(&r, 11);
    int64_t *ts = malloc(N * sizeof *ts);
    float *x = malloc(N * NF * sizeof *x);
    int64_t h = 30 * SEC;
    for (size_t i = 0; i < N; i++) {
        /* Two hours of trades, ts out of order by up to a minute. */
        ts[i] = T0 + (int64_t)(i * 3.6 * SEC) + (int64_t)(rng_uniform(&r) * 60 * SEC);
        gen_vec(&r, x + i * NF, NF);
    }
    double want[NF], got[NF];
    ref_decay(ts, x, N, NF, h, want);
    for (int pass = 0; pass < 3; pass++) {
        /* pass 0: as generated; 1: reversed; 2: shuffled */
        size_t *ord = malloc(N * sizeof *ord);
        for (size_t i = 0; i < N; i++)
            ord[i] = pass == 1 ? N - 1 - i : i;
        if (pass == 2)
            for (size_t i = N - 1; i > 0; i--) {
                size_t k = rng_next(&r) % (i + 1), t = ord[i];
                ord[i] = ord[k];
                ord[k] = t;
            }
        evdecay_t d;
        cr_assert_eq(evdecay_init(&d, NF, h), 0);
        for (size_t i = 0; i < N; i++)
            cr_assert_eq(evdecay_add(&d, ts[ord[i]], x + ord[i] * NF), 0);
        evdecay_mean(&d, got);
        for (int j = 0; j < NF; j++)
            cr_assert(close_enough(got[j], want[j], 1e-12, 1e-14), "pass %d feature %d: %.17g vs %.17g",
                      pass, j, got[j], want[j]);
        cr_assert(d.weight >= 1.0 && d.weight < 2.0 * N, "weight %g", d.weight);
        evdecay_destroy(&d);
        free(ord);
    }
    free(ts);
    free(x);
}

/* A day of trades with a 1 ms half-life is 86 million half-lives: the sums
   neither overflow nor lose the newest trades. */
Test(evdecay, long_spans_neither_overflow_nor_underflow_the_newest)
{
    evdecay_t d;
    int64_t h = 1000000;
    cr_assert_eq(evdecay_init(&d, 2, h), 0);
    float x[2];
    for (int i = 0; i < 1000; i++) {
        x[0] = (float)i;
        x[1] = -1.0f;
        cr_assert_eq(evdecay_add(&d, T0 + (int64_t)i * 86 * SEC, x), 0);
    }
    /* The last two trades, one ms apart, decide the mean. */
    x[0] = 4000;
    cr_assert_eq(evdecay_add(&d, T0 + 999 * 86 * SEC + h, x), 0);
    double m[2];
    evdecay_mean(&d, m);
    cr_assert(isfinite(d.weight) && isfinite(d.sum[0]));
    cr_assert(close_enough(m[0], (999.0 * 1 + 4000.0 * 2) / 3.0, 1e-15, 0), "mean %.17g", m[0]);
    cr_assert(close_enough(m[1], -1.0, 1e-15, 0));
    evdecay_destroy(&d);
}

Test(evdecay, negative_times_and_refusals)
{
    evdecay_t d;
    cr_assert_eq(evdecay_init(&d, 1, 0), -1);
    cr_assert_null(d.sum);
    evdecay_destroy(&d);
    cr_assert_eq(evdecay_init(&d, 1, 4), 0);
    float a = 2, b = 5, bad = NAN;
    cr_assert_eq(evdecay_add(&d, -9, &a), 0);       /* before the epoch */
    cr_assert_eq(evdecay_add(&d, -1, &b), 0);       /* two half-lives later */
    cr_assert_eq(evdecay_add(&d, 0, &bad), -1);
    cr_assert_eq(d.count, 2);
    double m;
    evdecay_mean(&d, &m);
    cr_assert(close_enough(m, (2.0 + 5.0 * 4) / 5.0, 1e-15, 0), "mean %.17g", m);
    evdecay_t other;
    cr_assert_eq(evdecay_init(&other, 1, 5), 0);
    cr_assert_eq(evdecay_merge(&d, &other), -1);
    evdecay_destroy(&other);
    cr_assert_eq(evdecay_init(&other, 2, 4), 0);
    cr_assert_eq(evdecay_merge(&d, &other), -1);
    evdecay_destroy(&other);
    evdecay_reset(&d);
    evdecay_mean(&d, &m);
    cr_assert_eq(m, 0.0);
    cr_assert_eq(evdecay_weight_at(&d, 0), 0.0);
    evdecay_destroy(&d);
}

/* ---------------------------------------------------------------- windows */

typedef struct {
    int n;
    int64_t k[64];
    uint64_t count[64];
    double mean[64][NF];
} closed_t;

static void
s_collect(void *arg, const evwin_view_t *v)
{
    closed_t *c = arg;
    cr_assert_lt(c->n, 64);
    c->k[c->n] = v->k;
    c->count[c->n] = v->count;
    memcpy(c->mean[c->n], v->mean, NF * sizeof(double));
    c->n++;
}

Test(evwin, by_hand)
{
    evwin_t w;
    closed_t c = {0};
    cr_assert_eq(evwin_init(&w, NF, 10, 5, 4), 0);
    cr_assert_eq(w.nslots, 4 + 0 + 2);
    float x[NF] = {0};
    x[0] = 1;
    cr_assert_eq(evwin_add(&w, 0, x, s_collect, &c), 0);
    x[0] = 3;
    cr_assert_eq(evwin_add(&w, 3, x, s_collect, &c), 0);
    x[0] = 10;
    cr_assert_eq(evwin_add(&w, 12, x, s_collect, &c), 0);   /* watermark 7 */
    cr_assert_eq(c.n, 0);
    x[0] = 20;
    cr_assert_eq(evwin_add(&w, 14, x, s_collect, &c), 0);   /* watermark 9 */
    cr_assert_eq(c.n, 0);
    x[0] = 5;
    cr_assert_eq(evwin_add(&w, 9, x, s_collect, &c), 0);    /* still open: joins window 0 */
    x[0] = 7;
    cr_assert_eq(evwin_add(&w, 15, x, s_collect, &c), 0);   /* watermark 10 closes [0, 10) */
    cr_assert_eq(c.n, 1);
    cr_assert_eq(c.k[0], 0);
    cr_assert_eq(c.count[0], 3);
    cr_assert(close_enough(c.mean[0][0], 3.0, 1e-15, 0));
    x[0] = 100;
    cr_assert_eq(evwin_add(&w, 2, x, s_collect, &c), 1);    /* late: counted, not mixed in */
    cr_assert_eq(w.late, 1);
    evwin_view_t v;
    cr_assert_eq(evwin_get(&w, 0, &v), 1);
    cr_assert_eq(v.count, 3);
    cr_assert_eq(v.start_ns, 0);
    cr_assert_eq(v.end_ns, 10);
    cr_assert(close_enough(v.sum[0], 9.0, 1e-15, 0));
    cr_assert_eq(evwin_get(&w, 1, &v), 0);
    cr_assert_eq(v.count, 3);
    cr_assert(close_enough(v.mean[0], (10.0 + 20 + 7) / 3, 1e-15, 0));
    /* A NaN changes nothing, not even the watermark. */
    x[0] = NAN;
    cr_assert_eq(evwin_add(&w, 1000, x, s_collect, &c), -1);
    cr_assert_eq(w.max_ts, 15);
    /* The end of the stream: an advance closes what is left, empty
       windows silently. */
    evwin_advance(&w, 1000, s_collect, &c);
    cr_assert_eq(c.n, 2);
    cr_assert_eq(c.k[1], 1);
    cr_assert_eq(c.count[1], 3);
    evwin_destroy(&w);
    evwin_destroy(&w);
}

Test(evwin, matches_direct_grouping_with_disorder_within_lateness)
{
    enum { N = 3000 };
    rng_t r;
    rng_seed(&r, 5);
    int64_t len = 60 * SEC, late = 20 * SEC;
    int64_t *ts = malloc(N * sizeof *ts);
    float *x = malloc(N * NF * sizeof *x);
    int64_t newest = INT64_MIN;
    for (size_t i = 0; i < N; i++) {
        /* ~30 windows; each trade up to 20 s older than the newest. */
        int64_t t = T0 + (int64_t)i * 600 * (SEC / 1000);
        int64_t jitter = (int64_t)(rng_uniform(&r) * (double)late);
        ts[i] = t - jitter;
        if (ts[i] > newest)
            newest = ts[i];
        if (newest - ts[i] > late)
            ts[i] = newest - late;
        gen_vec(&r, x + i * NF, NF);
    }
    evwin_t w;
    closed_t c = {0};
    cr_assert_eq(evwin_init(&w, NF, len, late, 4), 0);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(evwin_add(&w, ts[i], x + i * NF, s_collect, &c), 0, "trade %zu late", i);
    evwin_advance(&w, INT64_MAX / 2, s_collect, &c);
    cr_assert_eq(w.late, 0);
    /* Every window that holds a trade closed once. */
    int distinct = 0;
    for (int64_t k = evwin_floor_div(T0 - late, len); k <= evwin_floor_div(newest, len); k++)
        for (size_t t = 0; t < N; t++)
            if (evwin_floor_div(ts[t], len) == k) {
                distinct++;
                break;
            }
    cr_assert_eq(c.n, distinct);
    cr_assert_gt(c.n, 25);
    for (int i = 0; i < c.n; i++) {
        double sum[NF] = {0};
        uint64_t n = 0;
        for (size_t t = 0; t < N; t++)
            if (evwin_floor_div(ts[t], len) == c.k[i]) {
                n++;
                for (int j = 0; j < NF; j++)
                    sum[j] += x[t * NF + j];
            }
        cr_assert_eq(c.count[i], n, "window %lld", (long long)c.k[i]);
        for (int j = 0; j < NF; j++)
            cr_assert(close_enough(c.mean[i][j], sum[j] / (double)n, 1e-12, 1e-14),
                      "window %lld feature %d", (long long)c.k[i], j);
        if (i)
            cr_assert_eq(c.k[i], c.k[i - 1] + 1, "windows close in order");
    }
    evwin_destroy(&w);
    free(ts);
    free(x);
}

Test(evwin, keeps_the_last_closed_windows_and_jumps_ahead)
{
    evwin_t w;
    closed_t c = {0};
    cr_assert_eq(evwin_init(&w, NF, 10, 0, 2), 0);
    float x[NF] = {0};
    for (int k = 0; k < 6; k++) {
        x[0] = (float)k;
        cr_assert_eq(evwin_add(&w, 10 * k + 5, x, s_collect, &c), 0);
    }
    cr_assert_eq(c.n, 5);                  /* windows 0..4 closed, 5 open */
    evwin_view_t v;
    cr_assert_eq(evwin_get(&w, 2, &v), -1, "dropped beyond keep");
    cr_assert_eq(evwin_get(&w, 3, &v), 1);
    cr_assert_eq(v.count, 1);
    cr_assert(close_enough(v.mean[0], 3.0, 0, 0));
    cr_assert_eq(evwin_get(&w, 4, &v), 1);
    cr_assert_eq(evwin_get(&w, 5, &v), 0);
    /* A jump of a million windows (a pause in the stream): window 5
       closes, nothing else is reported, and the last two windows that
       hold trades are still kept, however old. */
    x[0] = 42;
    cr_assert_eq(evwin_add(&w, 10000005, x, s_collect, &c), 0);
    cr_assert_eq(c.n, 6);
    cr_assert_eq(c.k[5], 5);
    cr_assert_eq(evwin_get(&w, 3, &v), -1);
    cr_assert_eq(evwin_get(&w, 4, &v), 1);
    cr_assert_eq(evwin_get(&w, 5, &v), 1);
    cr_assert_eq(v.count, 1);
    cr_assert(close_enough(v.mean[0], 5.0, 0, 0));
    cr_assert_eq(evwin_get(&w, 999999, &v), -1, "closed and empty: not held");
    cr_assert_eq(evwin_next(&w, 6, &v), 0, "the next window held is the open one");
    cr_assert_eq(v.k, 1000000);
    cr_assert_eq(evwin_next(&w, 1000001, &v), -1);
    cr_assert_eq(evwin_get(&w, 1000001, &v), 0, "open and empty");
    cr_assert_eq(v.count, 0);
    cr_assert_eq(evwin_get(&w, 1000000, &v), 0);
    cr_assert_eq(v.count, 1);
    cr_assert(close_enough(v.mean[0], 42.0, 0, 0));
    cr_assert_eq(evwin_add(&w, 5, x, s_collect, &c), 1);
    evwin_reset(&w);
    cr_assert_eq(evwin_get(&w, 1000000, &v), -1);
    cr_assert_eq(w.late, 0);
    /* Before the epoch: window -1 is [-10, 0). */
    cr_assert_eq(evwin_add(&w, -3, x, s_collect, &c), 0);
    cr_assert_eq(evwin_get(&w, -1, &v), 0);
    cr_assert_eq(v.start_ns, -10);
    cr_assert_eq(v.end_ns, 0);
    cr_assert_eq(v.count, 1);
    evwin_destroy(&w);
}

Test(evwin, refusals)
{
    evwin_t w;
    cr_assert_eq(evwin_init(&w, NF, 0, 0, 0), -1);
    cr_assert_eq(evwin_init(&w, NF, 10, -1, 0), -1);
    cr_assert_eq(evwin_init(&w, NF, 1, EVWIN_MAX_SLOTS, 0), -1, "too many slots");
    cr_assert_null(w.count);
    evwin_destroy(&w);
    evwin_t a, b;
    cr_assert_eq(evwin_init(&a, NF, 10, 5, 1), 0);
    cr_assert_eq(evwin_init(&b, NF, 10, 6, 1), 0);
    float x[NF] = {0};
    cr_assert_eq(evwin_add(&b, 3, x, NULL, NULL), 0);
    cr_assert_eq(evwin_merge(&a, &b), -1);
    cr_assert(!a.started);
    evwin_destroy(&a);
    evwin_destroy(&b);
}

/* Windows of 1 s holding 10 trades each give the same drift reports
   through drift_close_mean as count windows of 10 through drift_push. */
typedef struct {
    drift_t *d;
    int n;
    drift_report_t r[32];
    double mean[32][NF];
} dcollect_t;

static void
s_drift(void *arg, const evwin_view_t *v)
{
    dcollect_t *c = arg;
    cr_assert_eq(drift_close_mean(c->d, v->mean, &c->r[c->n]), 1);
    memcpy(c->mean[c->n], c->r[c->n].mean, sizeof c->mean[0]);
    c->n++;
}

Test(evwin, drives_drift_as_count_windows_do)
{
    drift_t byc, byt;
    cr_assert_eq(drift_init(&byc, NF, 10, NULL), 0);
    cr_assert_eq(drift_init(&byt, NF, 1, NULL), 0);
    evwin_t w;
    cr_assert_eq(evwin_init(&w, NF, SEC, 0, 0), 0);
    dcollect_t c = {.d = &byt};
    rng_t r;
    rng_seed(&r, 17);
    drift_report_t want[32];
    double want_mean[32][NF];
    int nw = 0;
    for (int t = 0; t < 200; t++) {
        float x[NF];
        gen_vec(&r, x, NF);
        if (t >= 100)                       /* a change of regime halfway */
            for (int j = 0; j < NF; j++)
                x[j] = -x[j];
        int rc = drift_push(&byc, x, &want[nw]);
        if (rc == 1) {
            memcpy(want_mean[nw], want[nw].mean, sizeof want_mean[0]);
            nw++;
        }
        cr_assert_eq(evwin_add(&w, T0 + (t / 10) * SEC + (t % 10) * (SEC / 10), x, s_drift, &c), 0);
    }
    evwin_advance(&w, T0 + 100 * SEC, s_drift, &c);
    cr_assert_eq(nw, 20);
    cr_assert_eq(c.n, nw);
    int alerts = 0;
    for (int i = 0; i < nw; i++) {
        cr_assert_eq(c.r[i].window, want[i].window);
        cr_assert_eq(c.r[i].ref, want[i].ref);
        cr_assert_eq(c.r[i].compared, want[i].compared);
        cr_assert_eq(c.r[i].alert, want[i].alert, "window %d", i);
        cr_assert_eq(c.r[i].spearman.value, want[i].spearman.value);
        cr_assert_eq(c.r[i].js.value, want[i].js.value);
        cr_assert_eq(memcmp(c.mean[i], want_mean[i], sizeof want_mean[0]), 0);
        alerts += want[i].alert;
    }
    cr_assert_geq(alerts, 10, "the second half alerts");
    double bad[NF] = {NAN};
    drift_report_t rep;
    cr_assert_eq(drift_close_mean(&byt, bad, &rep), -1);
    cr_assert_eq(byt.closed, 20);
    evwin_destroy(&w);
    drift_destroy(&byc);
    drift_destroy(&byt);
}

/* ---------------------------------------------------------------- snapshots */

Test(evwin, snapshot_records_round_trip_and_refuse_other_configurations)
{
    evwin_t w, back, other;
    evdecay_t d, dback, dother;
    cr_assert_eq(evwin_init(&w, NF, SEC, 3 * SEC, 4), 0);
    cr_assert_eq(evdecay_init(&d, NF, 5 * SEC), 0);
    rng_t r;
    rng_seed(&r, 23);
    for (int t = 0; t < 300; t++) {
        float x[NF];
        gen_vec(&r, x, NF);
        int64_t ts = T0 + t * (SEC / 4) - (int64_t)(rng_uniform(&r) * 4 * SEC);
        evwin_add(&w, ts, x, NULL, NULL);
        cr_assert_eq(evdecay_add(&d, ts, x), 0);
    }
    cr_assert_gt(w.late, 0, "some trades were late");
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    evwin_save(&pk, &w);
    evdecay_save(&pk, &d);

    cr_assert_eq(evwin_init(&back, NF, SEC, 3 * SEC, 4), 0);
    cr_assert_eq(evdecay_init(&dback, NF, 5 * SEC), 0);
    snap_rd_t rd;
    snap_rd_init(&rd, sb.data, sb.size);
    cr_assert_eq(evwin_load(&rd, &back), 0, "%s", rd.why);
    cr_assert_eq(evdecay_load(&rd, &dback), 0, "%s", rd.why);
    cr_assert_eq(mpr_left(&rd.r), 0);
    cr_assert(back.started);
    cr_assert_eq(back.max_ts, w.max_ts);
    cr_assert_eq(back.next_close, w.next_close);
    cr_assert_eq(back.late, w.late);
    cr_assert_eq(back.used, w.used);
    for (uint32_t i = 0; i < w.used; i++) {
        evwin_view_t a, b;
        cr_assert_eq(evwin_get(&w, w.key[i], &a), evwin_get(&back, w.key[i], &b));
        cr_assert_eq(a.count, b.count);
        cr_assert_eq(memcmp(a.sum, b.sum, NF * sizeof(double)), 0, "window %lld", (long long)w.key[i]);
    }
    cr_assert_eq(dback.count, d.count);
    cr_assert_eq(dback.anchor, d.anchor);
    cr_assert_eq(dback.weight, d.weight);
    cr_assert_eq(memcmp(dback.sum, d.sum, NF * sizeof(double)), 0);

    /* Another lateness, or half-life: refused, named. */
    cr_assert_eq(evwin_init(&other, NF, SEC, 2 * SEC, 4), 0);
    cr_assert_eq(evdecay_init(&dother, NF, 6 * SEC), 0);
    snap_rd_init(&rd, sb.data, sb.size);
    cr_assert_eq(evwin_load(&rd, &other), -1);
    cr_assert_not_null(strstr(rd.why, "another"), "%s", rd.why);
    snap_rd_init(&rd, sb.data, sb.size);
    cr_assert_eq(evwin_load(&rd, &back), 0);
    cr_assert_eq(evdecay_load(&rd, &dother), -1);
    cr_assert_not_null(strstr(rd.why, "half-life"), "%s", rd.why);
    /* Cut short anywhere: refused, never a crash. */
    for (size_t cut = 0; cut < sb.size; cut += 7) {
        snap_rd_init(&rd, sb.data, cut);
        int a = evwin_load(&rd, &back);
        int b = a ? -1 : evdecay_load(&rd, &dback);
        cr_assert(a == -1 || b == -1, "a record cut at %zu bytes of %zu loaded", cut, sb.size);
    }
    msgpack_sbuffer_destroy(&sb);
    evwin_destroy(&w);
    evwin_destroy(&back);
    evwin_destroy(&other);
    evdecay_destroy(&d);
    evdecay_destroy(&dback);
    evdecay_destroy(&dother);
}
