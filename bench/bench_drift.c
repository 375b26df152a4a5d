/*  bench_drift: detection delay and false alarms of the drift modes
    (fixed thresholds, calibrated, CUSUM; core/detect.h) on streams with
    a change at a known trade.

    Each replicate streams trades through one drift_t per channel (a
    channel is one attribution method) and feeds every closed window to a
    detect_t per mode, so the modes judge exactly the same windows.
    Timeline of a replicate, in trades:

      [baseline window][W calibration windows][monitored ... change)[after ...]

    False alarms: alerting windows that close after the calibration and
    at or before the change trade (no mode is judged on the calibration
    span, where the calibrated modes are silent by definition), per
    million monitored trades. Delay: trades from the change to the close
    of the first alerting window after it (a window straddling the change
    counts as after). A replicate whose mode never alerts within `post`
    trades is "missed".

    Usage: bench_drift [--quick] [--markdown] [--only NAME]
                       [--calib W] [--mult M] [--k K] [--h H] [--floor F]
    (the mode options default to detect_opts_default's).  */
#include "detect.h"
#include "drift.h"
#include "support.h"
#include "xmath.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NMODES 3
#define MAXF 32
#define MAXCH 2

/* ---- streams ------------------------------------------------------- */

typedef struct scen scen_t;
typedef struct {
    const scen_t *sc;
    rng_t rng;
    xm_work_t *xw;          /* demo stream only */
    float *A, *G;
} stream_t;

struct scen {
    const char *name;
    const char *what;
    uint32_t nf, window, nch;
    const char *chname[MAXCH];
    uint64_t monitored;     /* pre-change trades judged, per replicate */
    uint64_t post;          /* trades after the change before "missed" */
    int reps;
    /* One trade in regime `after` (0/1): nch vectors of nf floats. */
    void (*trade)(stream_t *s, int after, float x[MAXCH][MAXF]);
    double mu[2][MAXF];
    double noise;
};

/* Independent features: mean mu[regime][j], normal noise. */
static void
s_gauss_trade(stream_t *s, int after, float x[MAXCH][MAXF])
{
    for (uint32_t j = 0; j < s->sc->nf; j++)
        x[0][j] = (float)(s->sc->mu[after][j] + s->sc->noise * rng_normal(&s->rng));
}

/* The daemon's demo stream (daemon/demo.c, s_trade: same shape, regimes
   and logits; its own xorshift generator replaced by support.c's), run
   through the core methods in process. */
#define D_L 3
#define D_H 4
#define D_N 9
#define D_CLS (D_N - 1)
static const double s_regimes[2][D_N - 1] = {
    {3.0, 2.2, 1.8, 1.2, 0.2, 0.1, 0.5, 0.8},
    {0.3, 0.6, 0.4, 1.0, 0.2, 0.1, 3.0, 2.4},
};

static void
s_demo_trade(stream_t *s, int after, float x[MAXCH][MAXF])
{
    const double *imp = s_regimes[after];
    for (int l = 0; l < D_L; l++)
        for (int h = 0; h < D_H; h++)
            for (int i = 0; i < D_N; i++) {
                double logit[D_N], mx = -1e300, sum = 0;
                for (int j = 0; j < D_N; j++) {
                    double base = j == D_CLS ? 0.5 : imp[j];
                    logit[j] = (i == D_CLS ? 1.2 * base : 0.4 * base + (i == j ? 2.0 : 0.0)) +
                               0.6 * rng_normal(&s->rng) + 0.2 * h;
                    mx = logit[j] > mx ? logit[j] : mx;
                }
                for (int j = 0; j < D_N; j++)
                    sum += (logit[j] = exp(logit[j] - mx));
                for (int j = 0; j < D_N; j++) {
                    size_t k = (((size_t)l * D_H + h) * D_N + i) * D_N + j;
                    s->A[k] = (float)(logit[j] / sum);
                    double feat = j == D_CLS ? 0.1 : imp[j] / 3.0;
                    s->G[k] = (float)(feat + 0.3 * rng_normal(&s->rng));
                }
            }
    xm_opts_t o = {.methods = XM_BIT(XM_ROLLOUT) | XM_BIT(XM_GRAD_ROLLOUT)};
    xm_shape_t shape = {D_L, D_H, D_N, D_CLS};
    xm_result_t res;
    if (xm_explain(s->xw, &o, &shape, XM_F32, s->A, s->G, &res) != XM_OK) {
        fprintf(stderr, "bench_drift: xm_explain failed\n");
        exit(1);
    }
    memcpy(x[0], res.attr[XM_ROLLOUT], (D_N - 1) * sizeof(float));
    memcpy(x[1], res.attr[XM_GRAD_ROLLOUT], (D_N - 1) * sizeof(float));
}

/* ---- one replicate -------------------------------------------------- */

typedef struct {
    uint64_t fa;            /* false alarms */
    uint64_t monitored;     /* pre-change trades judged */
    int detected;
    int missed;
    double delay_sum;
    uint64_t delays[4096];  /* per detected replicate */
} tally_t;

static const char *s_mode_label[NMODES] = {"fixed", "calibrated", "cusum"};

static void
s_replicate(const scen_t *sc, const detect_opts_t *mo, uint64_t seed,
            tally_t tal[MAXCH][NMODES])
{
    stream_t s = {.sc = sc};
    rng_seed(&s.rng, seed);
    if (sc->trade == s_demo_trade) {
        s.xw = xm_work_new();
        s.A = malloc((size_t)D_L * D_H * D_N * D_N * sizeof(float));
        s.G = malloc((size_t)D_L * D_H * D_N * D_N * sizeof(float));
        if (!s.xw || !s.A || !s.G) {
            fprintf(stderr, "bench_drift: out of memory\n");
            exit(1);
        }
    }
    drift_t dr[MAXCH];
    detect_t dt[MAXCH][NMODES];
    bool done[MAXCH][NMODES] = {{false}};
    for (uint32_t c = 0; c < sc->nch; c++) {
        if (drift_init(&dr[c], sc->nf, sc->window, NULL)) {
            fprintf(stderr, "bench_drift: drift_init\n");
            exit(1);
        }
        for (int m = 0; m < NMODES; m++)
            detect_init(&dt[c][m], &mo[m], NULL);
    }
    /* Judged from the close of the last calibration window; the change
       lands a third of the way into a window, as it would by chance. */
    const uint64_t calib_end = (uint64_t)(1 + mo[1].calib_windows) * sc->window;
    const uint64_t change = calib_end + sc->monitored + sc->window / 3;
    const uint64_t end = change + sc->post;
    float x[MAXCH][MAXF];
    int pending = (int)sc->nch * NMODES;
    for (uint64_t t = 0; t < end && pending > 0; t++) {
        int after = t >= change;
        sc->trade(&s, after, x);
        const uint64_t closed_at = t + 1;       /* trades seen */
        for (uint32_t c = 0; c < sc->nch; c++) {
            drift_report_t rep;
            if (drift_push(&dr[c], x[c], &rep) != 1)
                continue;
            for (int m = 0; m < NMODES; m++) {
                detect_verdict_t v;
                detect_feed(&dt[c][m], &rep, &v);
                if (!v.alert || done[c][m])
                    continue;
                if (closed_at <= change) {
                    if (closed_at > calib_end)
                        tal[c][m].fa++;
                    continue;
                }
                tally_t *ta = &tal[c][m];
                if (ta->detected < 4096)
                    ta->delays[ta->detected] = closed_at - change;
                ta->detected++;
                ta->delay_sum += (double)(closed_at - change);
                done[c][m] = true;
                pending--;
            }
        }
    }
    for (uint32_t c = 0; c < sc->nch; c++) {
        for (int m = 0; m < NMODES; m++) {
            tal[c][m].monitored += change - calib_end;
            if (!done[c][m])
                tal[c][m].missed++;
        }
        drift_destroy(&dr[c]);
    }
    xm_work_destroy(&s.xw);
    free(s.A);
    free(s.G);
}

static int
s_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- the scenarios --------------------------------------------------- */

static scen_t s_scen[] = {
    {
        .name = "noisy-tail",
        .what = "16 features, power-law importances 1/(j+1), per-trade noise 0.5, windows of "
                "200: the tail's ranks churn; at the change features 0 and 3 trade places",
        .nf = 16, .window = 200, .nch = 1, .chname = {"synthetic"},
        .monitored = 200000, .post = 20000, .reps = 20,
        .trade = s_gauss_trade,
        .noise = 0.5,
    },
    {
        .name = "small-shift",
        .what = "8 features at the demo's first regime / 3, per-trade noise 0.4, windows of 200; "
                "at the change feature 3 rises from 0.40 to 0.65 (passes feature 2 at 0.60)",
        .nf = 8, .window = 200, .nch = 1, .chname = {"synthetic"},
        .monitored = 200000, .post = 40000, .reps = 20,
        .trade = s_gauss_trade,
        .noise = 0.4,
    },
    {
        .name = "demo",
        .what = "the daemon's demo stream (8 features; rollout and grad_rollout), windows of 500 "
                "(the daemon's default); at the change the importance regime switches as "
                "--demo-drift-every does",
        .nf = 8, .window = 500, .nch = 2, .chname = {"rollout", "grad_rollout"},
        .monitored = 100000, .post = 10000, .reps = 5,
        .trade = s_demo_trade,
    },
};
#define NSCEN (sizeof s_scen / sizeof s_scen[0])

static void
s_setup_means(void)
{
    for (int j = 0; j < 16; j++) {
        s_scen[0].mu[0][j] = s_scen[0].mu[1][j] = 1.0 / (j + 1);
    }
    s_scen[0].mu[1][0] = 1.0 / 4;
    s_scen[0].mu[1][3] = 1.0;
    static const double demo0[8] = {3.0, 2.2, 1.8, 1.2, 0.8, 0.5, 0.2, 0.1};
    for (int j = 0; j < 8; j++)
        s_scen[1].mu[0][j] = s_scen[1].mu[1][j] = demo0[j] / 3;
    s_scen[1].mu[1][3] = 0.65;
}

int
main(int argc, char **argv)
{
    bool quick = false, md = false;
    const char *only = NULL;
    detect_opts_t base;
    detect_opts_default(&base);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--quick") == 0)
            quick = true;
        else if (strcmp(a, "--markdown") == 0)
            md = true;
        else if (v && strcmp(a, "--only") == 0)
            only = argv[++i];
        else if (v && strcmp(a, "--calib") == 0)
            base.calib_windows = (uint32_t)atoi(argv[++i]);
        else if (v && strcmp(a, "--mult") == 0)
            base.multiple = atof(argv[++i]);
        else if (v && strcmp(a, "--k") == 0)
            base.cusum_k = atof(argv[++i]);
        else if (v && strcmp(a, "--h") == 0)
            base.cusum_h = atof(argv[++i]);
        else if (v && strcmp(a, "--floor") == 0)
            base.sd_floor = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_drift [--quick] [--markdown] [--only NAME] [--calib W] "
                            "[--mult M] [--k K] [--h H] [--floor F]\n");
            return 2;
        }
    }
    const char *why;
    if (detect_opts_check(&base, &why)) {
        fprintf(stderr, "bench_drift: bad %s\n", why);
        return 2;
    }
    xm_blas_single_thread();
    s_setup_means();
    detect_opts_t mo[NMODES];
    for (int m = 0; m < NMODES; m++) {
        mo[m] = base;
        mo[m].mode = (detect_mode_t)m;
    }
    double arl0 = detect_cusum_arl(mo[2].cusum_k, mo[2].cusum_h, 0, 0);
    double arl1 = detect_cusum_arl(mo[2].cusum_k, mo[2].cusum_h, 1, 0);
    printf("%sModes: fixed (rho < 0.8, ndcg@10 < 0.9, js > 0.1); calibrated (W = %u windows, "
           "z > %g, sd floor %g of the fixed margin); cusum (W = %u, k = %g, h = %g: nominal "
           "run length %.0f windows in control per statistic, %.1f at a 1-sigma shift, for "
           "standard normal z).\n\n",
           md ? "" : "# ", mo[1].calib_windows, mo[1].multiple, mo[1].sd_floor,
           mo[2].calib_windows, mo[2].cusum_k, mo[2].cusum_h, arl0, arl1);
    if (md)
        printf("| stream | method | mode | false alarms | monitored trades | false alarms per "
               "million trades | detected | delay mean (trades) | delay median | delay max |\n"
               "|---|---|---|---|---|---|---|---|---|---|\n");
    for (size_t si = 0; si < NSCEN; si++) {
        scen_t *sc = &s_scen[si];
        if (only && strcmp(only, sc->name) != 0)
            continue;
        if (quick) {
            sc->reps = sc->reps > 3 ? 3 : sc->reps;
            sc->monitored /= 4;
        }
        static tally_t tal[MAXCH][NMODES];
        memset(tal, 0, sizeof tal);
        for (int r = 0; r < sc->reps; r++)
            s_replicate(sc, mo, 1000 * (si + 1) + (uint64_t)r, tal);
        if (!md)
            printf("\n%s: %s\n", sc->name, sc->what);
        for (uint32_t c = 0; c < sc->nch; c++)
            for (int m = 0; m < NMODES; m++) {
                tally_t *ta = &tal[c][m];
                int nd = ta->detected < 4096 ? ta->detected : 4096;
                qsort(ta->delays, (size_t)nd, sizeof *ta->delays, s_cmp_u64);
                double fapm = 1e6 * (double)ta->fa / (double)ta->monitored;
                char mean[32] = "-", med[32] = "-", mx[32] = "-";
                if (nd) {
                    snprintf(mean, sizeof mean, "%.0f", ta->delay_sum / ta->detected);
                    snprintf(med, sizeof med, "%llu", (unsigned long long)ta->delays[nd / 2]);
                    snprintf(mx, sizeof mx, "%llu", (unsigned long long)ta->delays[nd - 1]);
                }
                if (md)
                    printf("| %s | %s | %s | %llu | %llu | %.1f | %d/%d | %s | %s | %s |\n",
                           sc->name, sc->chname[c], s_mode_label[m],
                           (unsigned long long)ta->fa, (unsigned long long)ta->monitored, fapm,
                           ta->detected, sc->reps, mean, med, mx);
                else
                    printf("  %-12s %-10s fa %4llu in %9llu trades = %8.1f /M; detected %2d/%2d; "
                           "delay mean %s median %s max %s\n",
                           sc->chname[c], s_mode_label[m], (unsigned long long)ta->fa,
                           (unsigned long long)ta->monitored, fapm, ta->detected, sc->reps, mean,
                           med, mx);
            }
        fflush(stdout);
    }
    if (md) {
        printf("\nStreams:\n\n");
        for (size_t si = 0; si < NSCEN; si++)
            printf("- `%s`: %s; %d replicates.\n", s_scen[si].name, s_scen[si].what,
                   s_scen[si].reps);
    }
    return 0;
}
