/*  Tests of core/detect: the calibrated and CUSUM verdicts against an
    independent float64 reference written from MATH.md (two-pass mean and
    sd, no Welford), the CUSUM run lengths against published values and a
    Monte Carlo simulation, and what-moved against a brute-force ranking.  */
#include "detect.h"
#include "support.h"

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

/* ---- the reference ------------------------------------------------- */

/* One closed window as the reference sees it: departures and whether
   each statistic was defined; `baseline` marks a captured baseline. */
typedef struct {
    bool baseline;
    bool def[3];
    double dev[3];
} rwin_t;

typedef struct {
    bool alert, stat[3], scored[3];
    double z[3], s[3];
} rout_t;

/* MATH.md, "Drift detectors", literally: segments between baselines; in
   each, the first W compared windows calibrate (two-pass mean and sample
   sd per statistic over its defined values); later windows are scored. */
static void
ref_detect(const rwin_t *w, int nwin, int mode, int W, double mult, double k, double h,
           double floor_, const double tau[3], rout_t *out)
{
    int seg = 0;        /* index of the first compared window of this segment */
    double S[3] = {0, 0, 0};
    for (int t = 0; t < nwin; t++) {
        memset(&out[t], 0, sizeof out[t]);
        if (w[t].baseline) {
            seg = t + 1;
            S[0] = S[1] = S[2] = 0;
            continue;
        }
        if (t - seg < W)
            continue;
        for (int i = 0; i < 3; i++) {
            double sum = 0;
            int n = 0;
            for (int u = seg; u < seg + W; u++)
                if (w[u].def[i]) {
                    sum += w[u].dev[i];
                    n++;
                }
            if (n < 2 || !w[t].def[i])
                continue;
            double mu = sum / n, ss = 0;
            for (int u = seg; u < seg + W; u++)
                if (w[u].def[i])
                    ss += (w[u].dev[i] - mu) * (w[u].dev[i] - mu);
            double sd = sqrt(ss / (n - 1));
            double sigma = fmax(sd, floor_ * tau[i]);
            double z = (w[t].dev[i] - mu) / sigma;
            out[t].scored[i] = true;
            out[t].z[i] = z;
            if (mode == DETECT_CALIBRATED) {
                out[t].stat[i] = z > mult;
            } else {
                S[i] = fmax(0, S[i] + z - k);
                out[t].s[i] = S[i];
                out[t].stat[i] = S[i] > h;
                if (out[t].stat[i])
                    S[i] = 0;
            }
            out[t].alert = out[t].alert || out[t].stat[i];
        }
    }
}

static void
to_report(const rwin_t *w, drift_report_t *r)
{
    memset(r, 0, sizeof *r);
    r->compared = !w->baseline;
    drift_stat_t *st[3] = {&r->spearman, &r->ndcg, &r->js};
    for (int i = 0; i < 3; i++) {
        st[i]->defined = w->def[i];
        st[i]->value = !w->def[i] ? 0 : i == 2 ? w->dev[i] : 1 - w->dev[i];
    }
}

/* A random window sequence: two regimes of departures, a few undefined
   statistics, baselines now and then. */
static void
gen_windows(rng_t *r, rwin_t *w, int nwin)
{
    for (int t = 0; t < nwin; t++) {
        w[t].baseline = t == 0 || rng_uniform(r) < 0.01;
        double shift = (t % 150) > 110 ? 3.0 : 0.0;
        for (int i = 0; i < 3; i++) {
            w[t].def[i] = rng_uniform(r) > 0.05;
            double scale = i == 2 ? 0.002 : 0.02;
            w[t].dev[i] = fabs(scale * (1 + 0.5 * rng_normal(r) + shift));
        }
    }
}

Test(detect, verdicts_match_the_reference)
{
    enum { NWIN = 3000 };
    static rwin_t w[NWIN];
    static rout_t want[NWIN];
    rng_t r;
    rng_seed(&r, 7);
    gen_windows(&r, w, NWIN);
    drift_opts_t thr;
    drift_opts_default(&thr);
    const double tau[3] = {1 - thr.rho_min, 1 - thr.ndcg_min, thr.js_max};
    const double floors[] = {0, 0.05, 0.1};
    for (int mode = DETECT_CALIBRATED; mode <= DETECT_CUSUM; mode++)
        for (size_t f = 0; f < sizeof floors / sizeof *floors; f++) {
            detect_opts_t o;
            detect_opts_default(&o);
            o.mode = (detect_mode_t)mode;
            o.calib_windows = 17;
            o.multiple = 2.5;
            o.cusum_k = 0.7;
            o.cusum_h = 3.5;
            o.sd_floor = floors[f];
            ref_detect(w, NWIN, mode, 17, 2.5, 0.7, 3.5, floors[f], tau, want);
            detect_t d;
            cr_assert_eq(detect_init(&d, &o, &thr), 0);
            int alerts = 0;
            for (int t = 0; t < NWIN; t++) {
                drift_report_t rep;
                detect_verdict_t v;
                to_report(&w[t], &rep);
                detect_feed(&d, &rep, &v);
                cr_assert_eq(v.alert, want[t].alert, "mode %d floor %g window %d", mode,
                             floors[f], t);
                alerts += v.alert;
                for (int i = 0; i < 3; i++) {
                    cr_assert_eq(v.scored[i], want[t].scored[i], "window %d stat %d", t, i);
                    cr_assert_eq(v.alert_stat[i], want[t].stat[i], "window %d stat %d", t, i);
                    cr_assert(close_enough(v.z[i], want[t].z[i], 1e-9, 1e-9),
                              "window %d stat %d z %.17g want %.17g", t, i, v.z[i], want[t].z[i]);
                    if (mode == DETECT_CUSUM && v.scored[i])
                        cr_assert(close_enough(v.cusum[i], want[t].s[i], 1e-9, 1e-9),
                                  "window %d stat %d S %.17g want %.17g", t, i, v.cusum[i],
                                  want[t].s[i]);
                }
            }
            /* The sequence has shifted stretches: a verdict that never
               alerts would pass the comparison for the wrong reason. */
            cr_assert_gt(alerts, 10, "mode %d floor %g: %d alerts", mode, floors[f], alerts);
            cr_assert_lt(alerts, NWIN / 3, "mode %d floor %g: %d alerts", mode, floors[f], alerts);
        }
}

/* Feed n windows with departures (drho, dndcg, djs), all defined. */
static void
feed(detect_t *d, int n, double drho, double dndcg, double djs, detect_verdict_t *v)
{
    rwin_t w = {false, {true, true, true}, {drho, dndcg, djs}};
    drift_report_t rep;
    to_report(&w, &rep);
    for (int t = 0; t < n; t++)
        detect_feed(d, &rep, v);
}

Test(detect, small_persistent_shift_cusum_catches_calibrated_does_not)
{
    /* Calibration: d_rho alternates 0.01 and 0.03 over W = 20 windows:
       mean 0.02, sd = sqrt(20 * 0.0001 / 19). A shift of 0.6 sd is never
       beyond 5 sd in one window; CUSUM (k 0.5, h 8) gains 0.1 per window
       and signals on the window where S first exceeds 8: the 81st. */
    detect_opts_t o;
    detect_opts_default(&o);
    o.sd_floor = 0;
    o.calib_windows = 20;
    detect_t cal, cus;
    o.mode = DETECT_CALIBRATED;
    cr_assert_eq(detect_init(&cal, &o, NULL), 0);
    o.mode = DETECT_CUSUM;
    cr_assert_eq(detect_init(&cus, &o, NULL), 0);
    detect_verdict_t v;
    for (int t = 0; t < 20; t++) {
        double x = t % 2 ? 0.03 : 0.01;
        feed(&cal, 1, x, x, x / 10, &v);
        cr_assert(v.calibrating && !v.alert);
        feed(&cus, 1, x, x, x / 10, &v);
        cr_assert(v.calibrating && !v.alert);
    }
    double mu, sigma;
    cr_assert(detect_scale(&cus, DETECT_RHO, &mu, &sigma));
    cr_assert(fabs(mu - 0.02) < 1e-15);
    cr_assert(fabs(sigma - sqrt(20 * 1e-4 / 19)) < 1e-15, "%.17g", sigma);
    double x = 0.02 + 0.63 * sigma;
    for (int t = 1; t <= 200; t++) {
        feed(&cal, 1, x, 0.02, 0.002, &v);
        cr_assert(!v.alert, "calibrated alerted on window %d", t);
        cr_assert(fabs(v.z[DETECT_RHO] - 0.63) < 1e-9);
    }
    for (int t = 1; t <= 62; t++) {
        feed(&cus, 1, x, 0.02, 0.002, &v);
        cr_assert(fabs(v.cusum[DETECT_NDCG]) == 0, "no drift in ndcg, S stays 0");
        if (t < 62) {
            cr_assert(!v.alert, "cusum alerted early, window %d S %g", t, v.cusum[DETECT_RHO]);
            cr_assert(fabs(v.cusum[DETECT_RHO] - 0.13 * t) < 1e-9);
        }
    }
    cr_assert(v.alert && v.alert_stat[DETECT_RHO] && !v.alert_stat[DETECT_JS]);
    /* ... and restarts from 0 after the signal. */
    feed(&cus, 1, x, 0.02, 0.002, &v);
    cr_assert(!v.alert && fabs(v.cusum[DETECT_RHO] - 0.13) < 1e-9);
    /* A single wild window: calibrated alerts, CUSUM does not at once
       when the jump is below h + k. */
    feed(&cal, 1, 0.02 + 6 * sigma, 0.02, 0.002, &v);
    cr_assert(v.alert && v.alert_stat[DETECT_RHO]);
    detect_restart(&cus);
    for (int t = 0; t < 20; t++) {
        double y = t % 2 ? 0.03 : 0.01;
        feed(&cus, 1, y, y, y / 10, &v);
    }
    feed(&cus, 1, 0.02 + 6 * sigma, 0.02, 0.002, &v);
    cr_assert(!v.alert && fabs(v.cusum[DETECT_RHO] - 5.5) < 1e-9);
}

Test(detect, baseline_restarts_and_fixed_mode_follows_the_thresholds)
{
    detect_opts_t o;
    detect_opts_default(&o);
    cr_assert_eq(o.mode, DETECT_FIXED);
    o.mode = DETECT_CALIBRATED;
    o.calib_windows = 3;
    detect_t d;
    cr_assert_eq(detect_init(&d, &o, NULL), 0);
    detect_verdict_t v;
    feed(&d, 3, 0.01, 0.01, 0.001, &v);
    cr_assert(d.ready);
    drift_report_t base;
    memset(&base, 0, sizeof base);
    detect_feed(&d, &base, &v);
    cr_assert(!d.ready && d.calib_seen == 0 && v.calibrating && !v.alert);
    /* Undefined statistics do not calibrate: with rho undefined in two of
       three windows it has one value and is never scored. */
    rwin_t w = {false, {false, true, true}, {0, 0.01, 0.001}};
    drift_report_t rep;
    to_report(&w, &rep);
    detect_feed(&d, &rep, &v);
    detect_feed(&d, &rep, &v);
    feed(&d, 1, 0.01, 0.01, 0.001, &v);
    cr_assert(d.ready && d.n[DETECT_RHO] == 1 && d.n[DETECT_NDCG] == 3);
    feed(&d, 1, 0.9, 0.5, 0.5, &v);
    cr_assert(!v.scored[DETECT_RHO] && !v.alert_stat[DETECT_RHO]);
    cr_assert(v.scored[DETECT_NDCG] && v.alert_stat[DETECT_NDCG] && v.alert);
    /* Fixed mode: the window's own alert, per statistic. */
    o.mode = DETECT_FIXED;
    cr_assert_eq(detect_set_opts(&d, &o, NULL), 0);
    cr_assert(!d.ready, "a new mode restarts the calibration");
    drift_report_t fx;
    memset(&fx, 0, sizeof fx);
    fx.compared = true;
    fx.js = (drift_stat_t){true, true, 0.3};
    fx.spearman = (drift_stat_t){true, false, 0.9};
    fx.alert = true;
    detect_feed(&d, &fx, &v);
    cr_assert(v.alert && v.alert_stat[DETECT_JS] && !v.alert_stat[DETECT_RHO]);
    cr_assert(fabs(v.dev[DETECT_RHO] - 0.1) < 1e-15 && v.dev[DETECT_JS] == 0.3);
    cr_assert(!v.defined[DETECT_NDCG]);
}

Test(detect, options_names_and_floor)
{
    detect_opts_t o;
    detect_opts_default(&o);
    const char *why = NULL;
    cr_assert_eq(detect_opts_check(&o, &why), 0);
    cr_assert_null(why);
    detect_opts_t bad = o;
    bad.calib_windows = 1;
    cr_assert_eq(detect_opts_check(&bad, &why), -1);
    cr_assert_str_eq(why, "calib_windows");
    bad = o;
    bad.cusum_h = 0;
    cr_assert_eq(detect_opts_check(&bad, &why), -1);
    cr_assert_str_eq(why, "cusum_h");
    bad = o;
    bad.multiple = NAN;
    cr_assert_eq(detect_opts_check(&bad, &why), -1);
    cr_assert_str_eq(why, "multiple");
    bad = o;
    bad.sd_floor = -1;
    cr_assert_eq(detect_opts_check(&bad, &why), -1);
    detect_t d;
    cr_assert_eq(detect_init(&d, &bad, NULL), -1);
    cr_assert_eq(detect_set_opts(&d, &bad, NULL), -1);
    for (int m = 0; m < 3; m++) {
        const char *n = detect_mode_name((detect_mode_t)m);
        cr_assert_eq(detect_mode_parse(n, strlen(n)), m);
    }
    cr_assert_null(detect_mode_name((detect_mode_t)3));
    cr_assert_eq(detect_mode_parse("cusu", 4), -1);
    cr_assert_eq(detect_mode_parse("cusumx", 6), -1);
    /* The floor is a fraction of the fixed margin: with constant
       calibration departures sigma is sd_floor * (1 - rho_min). */
    drift_opts_t thr;
    drift_opts_default(&thr);
    thr.rho_min = 0.6;
    o.mode = DETECT_CALIBRATED;
    o.calib_windows = 4;
    o.sd_floor = 0.1;
    cr_assert_eq(detect_init(&d, &o, &thr), 0);
    detect_verdict_t v;
    feed(&d, 4, 0.05, 0.05, 0.001, &v);
    double mu, sigma;
    cr_assert(detect_scale(&d, DETECT_RHO, &mu, &sigma));
    cr_assert(fabs(mu - 0.05) < 1e-15 && fabs(sigma - 0.04) < 1e-15, "%g %g", mu, sigma);
    cr_assert(detect_scale(&d, DETECT_JS, &mu, &sigma));
    cr_assert(fabs(sigma - 0.01) < 1e-15);
    cr_assert(!detect_scale(&d, 3, &mu, &sigma));
}

/* ---- run lengths --------------------------------------------------- */

Test(detect, cusum_arl_matches_published_values)
{
    /* One-sided CUSUM, k = 0.5 (Montgomery, Introduction to Statistical
       Quality Control, table of two-sided ARLs, doubled in control: the
       two one-sided schemes signal independently at nearly equal rates):
       h = 4: 336 in control, 8.38 at a 1-sigma shift; h = 5: 930 and
       10.4. Brook and Evans' chain converges in 1/m^2; 400 states are
       within 1%. */
    static const struct {
        double h, delta, want;
    } rows[] = {{4, 0, 336}, {4, 1, 8.38}, {5, 0, 930}, {5, 1, 10.4}};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        double arl = detect_cusum_arl(0.5, rows[i].h, rows[i].delta, 0);
        cr_assert(fabs(arl - rows[i].want) <= 0.01 * rows[i].want, "h %g delta %g: %g want %g",
                  rows[i].h, rows[i].delta, arl, rows[i].want);
    }
    double h = detect_cusum_h(0.5, 930);
    cr_assert(fabs(h - 5) < 0.02, "%g", h);
    cr_assert_lt(detect_cusum_arl(0.5, 4, 0, 0), detect_cusum_arl(0.5, 4.5, 0, 0));
    cr_assert_eq(detect_cusum_arl(0.5, 0, 0, 0), -1);
    cr_assert_eq(detect_cusum_arl(-1, 4, 0, 0), -1);
    cr_assert_eq(detect_cusum_arl(0.5, 4, 0, 1), -1);
    cr_assert_eq(detect_cusum_h(0.5, 0.5), -1);
}

Test(detect, cusum_arl_matches_simulation)
{
    /* Monte Carlo: 20000 runs of S = max(0, S + x - k), x ~ N(delta, 1);
       the mean run length's standard error is about ARL / sqrt(20000). */
    static const struct {
        double k, h, delta;
    } rows[] = {{0.5, 3, 0}, {0.25, 2, 0.5}, {1, 2.5, 0}};
    rng_t r;
    rng_seed(&r, 11);
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        enum { RUNS = 20000 };
        double total = 0;
        for (int run = 0; run < RUNS; run++) {
            double s = 0;
            long n = 0;
            do {
                s = fmax(0, s + rows[i].delta + rng_normal(&r) - rows[i].k);
                n++;
            } while (s <= rows[i].h);
            total += (double)n;
        }
        double sim = total / RUNS;
        double arl = detect_cusum_arl(rows[i].k, rows[i].h, rows[i].delta, 0);
        /* 4 standard errors (the run length's sd is about its mean) plus
           the chain's discretisation (< 1%). */
        double tol = 4 * sim / sqrt(RUNS) + 0.01 * sim;
        cr_assert(fabs(arl - sim) <= tol, "k %g h %g delta %g: chain %g simulated %g", rows[i].k,
                  rows[i].h, rows[i].delta, arl, sim);
    }
}

/* ---- what moved ---------------------------------------------------- */

/* Brute force: rank = 1 + how many features come before (larger, or
   equal with a lower index); then pick the top k by repeated scans. */
static void
ref_moved(const double *cur, const double *ref, int n, int k, int by, detect_moved_t *out)
{
    int rr[64], rc[64];
    bool used[64] = {false};
    for (int j = 0; j < n; j++) {
        rr[j] = rc[j] = 1;
        for (int i = 0; i < n; i++) {
            rr[j] += ref[i] > ref[j] || (ref[i] == ref[j] && i < j);
            rc[j] += cur[i] > cur[j] || (cur[i] == cur[j] && i < j);
        }
    }
    for (int r = 0; r < k && r < n; r++) {
        int best = -1;
        for (int j = 0; j < n; j++) {
            if (used[j])
                continue;
            double v = fabs(cur[j] - ref[j]), q = abs(rr[j] - rc[j]);
            double p1 = by ? q : v, p2 = by ? v : q;
            if (best < 0) {
                best = j;
                continue;
            }
            double bv = fabs(cur[best] - ref[best]), bq = abs(rr[best] - rc[best]);
            double b1 = by ? bq : bv, b2 = by ? bv : bq;
            if (p1 > b1 || (p1 == b1 && p2 > b2))
                best = j;
        }
        used[best] = true;
        out[r] = (detect_moved_t){(uint32_t)best, ref[best], cur[best], cur[best] - ref[best],
                                  (uint32_t)rr[best], (uint32_t)rc[best], rr[best] - rc[best]};
    }
}

Test(detect, what_moved_matches_brute_force)
{
    rng_t r;
    rng_seed(&r, 5);
    detect_work_t w;
    cr_assert_eq(detect_work_init(&w, 40), 0);
    for (int rep = 0; rep < 300; rep++) {
        int n = 1 + (int)(rng_uniform(&r) * 40);
        int k = (int)(rng_uniform(&r) * (n + 3));
        double cur[40], ref[40];
        /* Values on a coarse grid so that ties (in value, in |delta|, in
           rank change) are common. */
        for (int j = 0; j < n; j++) {
            ref[j] = floor(rng_uniform(&r) * 6) / 4 - 0.25;
            cur[j] = rng_uniform(&r) < 0.4 ? ref[j] : floor(rng_uniform(&r) * 6) / 4 - 0.25;
        }
        for (int by = 0; by < 2; by++) {
            detect_moved_t got[40], want[40];
            uint32_t cnt = detect_what_moved(&w, cur, ref, (uint32_t)n, (uint32_t)k,
                                             (detect_order_t)by, got);
            cr_assert_eq(cnt, (uint32_t)(k < n ? k : n));
            ref_moved(cur, ref, n, k, by, want);
            for (uint32_t i = 0; i < cnt; i++) {
                cr_assert_eq(got[i].feature, want[i].feature, "rep %d by %d position %u", rep, by,
                             i);
                cr_assert_eq(got[i].ref_rank, want[i].ref_rank);
                cr_assert_eq(got[i].cur_rank, want[i].cur_rank);
                cr_assert_eq(got[i].rank_up, want[i].rank_up);
                cr_assert_eq(got[i].delta, want[i].delta);
                cr_assert_eq(got[i].ref, want[i].ref);
                cr_assert_eq(got[i].cur, want[i].cur);
            }
        }
    }
    double big[41] = {0};
    detect_moved_t out[41];
    cr_assert_eq(detect_what_moved(&w, big, big, 41, 3, DETECT_BY_VALUE, out), 0u,
                 "more features than the work area holds");
    detect_work_destroy(&w);
    detect_work_destroy(&w);
}

Test(detect, what_moved_names_the_swapped_features)
{
    /* f1 and f4 trade places at the top; f0 loses a little value without
       changing rank. */
    const double ref[6] = {0.30, 0.25, 0.20, 0.12, 0.08, 0.05};
    const double cur[6] = {0.28, 0.08, 0.20, 0.12, 0.25, 0.05};
    detect_work_t w;
    cr_assert_eq(detect_work_init(&w, 6), 0);
    detect_moved_t m[3];
    cr_assert_eq(detect_what_moved(&w, cur, ref, 6, 3, DETECT_BY_VALUE, m), 3u);
    /* |delta| 0.17 for f1 and f4, both move 3 ranks: the lower index
       leads. */
    cr_assert_eq(m[0].feature, 1u);
    cr_assert_eq(m[1].feature, 4u);
    cr_assert_eq(m[2].feature, 0u);
    cr_assert_eq(m[0].ref_rank, 2u);
    cr_assert_eq(m[0].cur_rank, 5u);
    cr_assert_eq(m[0].rank_up, -3);
    cr_assert_eq(m[1].rank_up, 3);
    cr_assert_eq(m[2].rank_up, 0);
    cr_assert(fabs(m[0].delta + 0.17) < 1e-15 && fabs(m[1].delta - 0.17) < 1e-15);
    detect_work_destroy(&w);
}

/* ---- snapshots ------------------------------------------------------ */

static void
save_detect(const detect_t *d, msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    detect_save(&pk, d);
}

Test(detect, state_round_trips_and_resumes)
{
    detect_opts_t o;
    detect_opts_default(&o);
    o.mode = DETECT_CUSUM;
    o.calib_windows = 4;
    detect_t a, b;
    cr_assert_eq(detect_init(&a, &o, NULL), 0);
    detect_verdict_t v;
    for (int t = 0; t < 4; t++)
        feed(&a, 1, 0.01 + 0.01 * t, 0.02, 0.001 * (t + 1), &v);
    feed(&a, 1, 0.1, 0.02, 0.002, &v);      /* z 3.75: S 3.25 on rho */
    cr_assert(a.ready && a.cusum[DETECT_RHO] > 0);
    msgpack_sbuffer sb;
    save_detect(&a, &sb);
    cr_assert_eq(detect_init(&b, &o, NULL), 0);
    snap_rd_t rd;
    snap_rd_init(&rd, sb.data, sb.size);
    cr_assert_eq(detect_load(&rd, &b), 0, "%s", rd.why ? rd.why : "");
    cr_assert(memcmp(&a, &b, sizeof a) == 0, "bit for bit");
    /* Both continue alike. */
    detect_verdict_t va, vb;
    feed(&a, 1, 0.3, 0.02, 0.002, &va);
    feed(&b, 1, 0.3, 0.02, 0.002, &vb);
    cr_assert(va.cusum[DETECT_RHO] == vb.cusum[DETECT_RHO] && va.alert == vb.alert);
    /* Another calibration length today: not resumed. */
    o.calib_windows = 5;
    cr_assert_eq(detect_init(&b, &o, NULL), 0);
    snap_rd_init(&rd, sb.data, sb.size);
    cr_assert_eq(detect_load(&rd, &b), 0);
    cr_assert(!b.ready && b.calib_seen == 0 && b.cusum[DETECT_RHO] == 0);
    /* Damage is named, and changes nothing. */
    o.calib_windows = 4;
    cr_assert_eq(detect_init(&b, &o, NULL), 0);
    snap_rd_init(&rd, sb.data, sb.size);
    cr_assert_eq(detect_load(&rd, &b), 0);
    detect_t kept = b;
    msgpack_sbuffer bad;
    a.cusum[DETECT_JS] = -1;
    save_detect(&a, &bad);
    snap_rd_init(&rd, bad.data, bad.size);
    cr_assert_eq(detect_load(&rd, &b), -1);
    cr_assert_not_null(rd.why);
    cr_assert(memcmp(&b, &kept, sizeof b) == 0, "a refused record leaves the detector as it was");
    snap_rd_init(&rd, bad.data, bad.size - 3);
    cr_assert_eq(detect_load(&rd, &b), -1, "truncated");
    msgpack_sbuffer_destroy(&sb);
    msgpack_sbuffer_destroy(&bad);
}

Test(detect, verdict_round_trips)
{
    detect_verdict_t v = {.mode = DETECT_CALIBRATED, .scored = {true, false, true},
                          .z = {6.5, 0, -0.25}, .alert_stat = {true, false, false}, .alert = true};
    detect_moved_t mv[2] = {{3, 0.5, 0.1, -0.4, 1, 4, -3}, {0, 0.2, 0.45, 0.25, 3, 1, 2}};
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    detect_verdict_save(&pk, &v, mv, 2);
    detect_verdict_t w;
    detect_moved_t got[4];
    uint32_t n = 0;
    snap_rd_t rd;
    snap_rd_init(&rd, sb.data, sb.size);
    cr_assert_eq(detect_verdict_load(&rd, &w, got, 4, &n, 5), 0, "%s", rd.why ? rd.why : "");
    cr_assert_eq(n, 2u);
    cr_assert(w.mode == v.mode && w.alert && w.scored[2] && !w.scored[1] && w.z[0] == 6.5);
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(got[k].feature, mv[k].feature);
        cr_assert(got[k].delta == mv[k].cur - mv[k].ref && got[k].rank_up == mv[k].rank_up);
    }
    snap_rd_init(&rd, sb.data, sb.size);
    cr_assert_eq(detect_verdict_load(&rd, &w, got, 1, &n, 5), -1, "longer than the room");
    snap_rd_init(&rd, sb.data, sb.size);
    cr_assert_eq(detect_verdict_load(&rd, &w, got, 4, &n, 3), -1, "feature 3 of 3");
    msgpack_sbuffer_destroy(&sb);
}
