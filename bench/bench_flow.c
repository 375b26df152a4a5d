/*  bench_flow: attention flow (core/flow) per trade, single core.

    - tab32 (L=4, H=8, n=32, CLS last) with the workloads' attention
      generator (bench_common.h), flow_compute alone on the trade's Â and
      xm_explain asked for flow only (the daemon's path: tensor pass, Â,
      flow); the same shape with random (logits ~ N(0,1)) and peaked
      (logits ~ 8 N(0,1)) attention, and without CLS;
    - growth: trades/s for n in {8,16,32,64,128} x L in {1,2,4,8,12};
    - dump/time: write a file of trades (records of tests/unit/flow_cli's
      format) and time flow_compute on it, so that bench/flow_networkx.py
      can time networkx on the very same inputs (bench/flow_compare.sh).

    Each figure is the median of --reps runs of at least --seconds each,
    cycling through a pool of distinct trades, in trades per second of
    this thread's CPU time (on 2 shared cores the steadier figure; wall
    clock too for tab32); work counters (Dinic phases and DFS steps per
    max-flow) say where the time goes.

    usage: bench_flow [all|tab32|grid] [--reps N] [--seconds S]
           bench_flow dump FILE [--n N] [--L L] [--cls C] [--gen G]
                               [--trades K] [--seed S]
           bench_flow time FILE [--reps N] [--seconds S] [--out FILE]
    G: workload (bench_common.h's generator, the default), random, peaked */
#define _GNU_SOURCE
#include "bench_common.h"
#include "flow.h"

#include <stdbool.h>

static int s_reps = 5;
static double s_secs = 0.4;

typedef enum { GEN_WORKLOAD, GEN_RANDOM, GEN_PEAKED } gen_t;

static const char *GEN_NAMES[] = {"workload", "random", "peaked"};

static int
s_cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double
s_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Attention [T][L][H][n][n] (float32) for T trades. */
static float *
s_attention(uint32_t T, uint32_t L, uint32_t H, uint32_t n, gen_t gen, uint64_t seed)
{
    size_t per = (size_t)n * n, cnt = (size_t)T * L * H * per;
    double *tmp = malloc(per * sizeof *tmp);
    float *A = malloc(cnt * sizeof *A);
    if (!tmp || !A) {
        fprintf(stderr, "bench_flow: out of memory\n");
        exit(2);
    }
    rng_t r;
    rng_seed(&r, seed);
    for (size_t q = 0; q < cnt / per; q++) {
        double temp = gen == GEN_WORKLOAD ? 4.0 * (0.3 + rng_uniform(&r)) : gen == GEN_RANDOM ? 1.0 : 8.0;
        gen_attention(&r, tmp, n, (int)n, temp);
        for (size_t k = 0; k < per; k++)
            A[q * per + k] = (float)tmp[k];
    }
    free(tmp);
    return A;
}

/* Flow capacities Â_l = rownorm(I + mean_h A_l) of T trades, from the
   library itself (xm_explain computes them for every trade). */
static float *
s_capacities(const float *A, uint32_t T, uint32_t L, uint32_t H, uint32_t n)
{
    size_t cpt = (size_t)L * n * n;
    float *C = malloc((size_t)T * cpt * sizeof *C);
    xm_work_t *xw = xm_work_new();
    if (!C || !xw) {
        fprintf(stderr, "bench_flow: out of memory\n");
        exit(2);
    }
    xm_shape_t s = {L, H, n, -1};
    xm_opts_t o = {.methods = XM_BIT(XM_ATTN_MEAN)};
    for (uint32_t t = 0; t < T; t++) {
        xm_result_t res;
        if (xm_explain(xw, &o, &s, XM_F32, A + (size_t)t * H * cpt, NULL, &res) != XM_OK) {
            fprintf(stderr, "bench_flow: xm_explain failed\n");
            exit(2);
        }
        memcpy(C + (size_t)t * cpt, xm_work_flow_layers(xw), cpt * sizeof *C);
    }
    xm_work_destroy(&xw);
    return C;
}

typedef struct {
    double tps;             /* median trades/s, wall clock */
    double tps_cpu;         /* median trades/s, this thread's CPU time */
    double phases, visits;  /* per max-flow */
} result_t;

static int64_t
s_now_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Trades/s of flow_compute cycling through T trades of capacities. */
static result_t
s_time_flow(const float *C, uint32_t T, uint32_t L, uint32_t n, int32_t cls)
{
    size_t cpt = (size_t)L * n * n;
    float *out = malloc(n * sizeof *out);
    flow_work_t *w = flow_work_new();
    double tps[64], cpu[64];
    int reps = s_reps < 64 ? s_reps : 64;
    flow_compute(w, L, n, cls, C, out);     /* warm: the work area grows once */
    flow_stats_t s0, s1;
    flow_work_stats(w, &s0);
    for (int r = 0; r < reps; r++) {
        int64_t t0 = now_mono(), c0 = s_now_cpu(), t1;
        uint64_t done = 0;
        do {
            for (uint32_t t = 0; t < T; t++, done++)
                if (flow_compute(w, L, n, cls, C + (size_t)t * cpt, out)) {
                    fprintf(stderr, "bench_flow: flow_compute failed\n");
                    exit(2);
                }
            t1 = now_mono();
        } while ((double)(t1 - t0) < s_secs * 1e9);
        tps[r] = (double)done / ((double)(t1 - t0) * 1e-9);
        cpu[r] = (double)done / ((double)(s_now_cpu() - c0) * 1e-9);
    }
    flow_work_stats(w, &s1);
    double mf = (double)(s1.maxflows - s0.maxflows);
    result_t res = {s_median(tps, reps), s_median(cpu, reps),
                    mf ? (double)(s1.phases - s0.phases) / mf : 0,
                    mf ? (double)(s1.visits - s0.visits) / mf : 0};
    flow_work_destroy(&w);
    free(out);
    return res;
}

/* Trades per CPU second of xm_explain(methods = flow) on T trades. */
static double
s_time_explain(const float *A, uint32_t T, uint32_t L, uint32_t H, uint32_t n, int32_t cls)
{
    size_t apt = (size_t)L * H * n * n;
    xm_work_t *xw = xm_work_new();
    xm_shape_t s = {L, H, n, cls};
    xm_opts_t o = {.methods = XM_BIT(XM_FLOW)};
    xm_result_t res;
    double tps[64];
    int reps = s_reps < 64 ? s_reps : 64;
    xm_explain(xw, &o, &s, XM_F32, A, NULL, &res);
    for (int r = 0; r < reps; r++) {
        int64_t t0 = now_mono(), c0 = s_now_cpu(), t1;
        uint64_t done = 0;
        do {
            for (uint32_t t = 0; t < T; t++, done++)
                if (xm_explain(xw, &o, &s, XM_F32, A + (size_t)t * apt, NULL, &res) != XM_OK) {
                    fprintf(stderr, "bench_flow: xm_explain failed\n");
                    exit(2);
                }
            t1 = now_mono();
        } while ((double)(t1 - t0) < s_secs * 1e9);
        tps[r] = (double)done / ((double)(s_now_cpu() - c0) * 1e-9);
    }
    xm_work_destroy(&xw);
    return s_median(tps, reps);
}

static void
s_tab32(void)
{
    const uint32_t T = 32, L = 4, H = 8, n = 32;
    const int32_t cls = 31;
    printf("## tab32 (L=4, H=8, n=32), one core, median of %d runs of >= %.2f s\n\n", s_reps, s_secs);
    printf("| attention | CLS | what | trades/s (CPU) | us/trade (CPU) | trades/s (wall) | max-flows/trade | "
           "phases/max-flow | DFS steps/max-flow |\n");
    printf("|---|---|---|---:|---:|---:|---:|---:|---:|\n");
    for (int g = GEN_WORKLOAD; g <= GEN_PEAKED; g++) {
        float *A = s_attention(T, L, H, n, (gen_t)g, 7000 + (uint64_t)g);
        float *C = s_capacities(A, T, L, H, n);
        result_t r = s_time_flow(C, T, L, n, cls);
        printf("| %s | last | flow_compute | %.0f | %.1f | %.0f | %u | %.2f | %.0f |\n", GEN_NAMES[g],
               r.tps_cpu, 1e6 / r.tps_cpu, r.tps, n - 1, r.phases, r.visits);
        if (g == GEN_WORKLOAD) {
            double e = s_time_explain(A, T, L, H, n, cls);
            printf("| %s | last | xm_explain(flow) | %.0f | %.1f | | %u | | |\n", GEN_NAMES[g], e, 1e6 / e,
                   n - 1);
            r = s_time_flow(C, T, L, n, -1);
            printf("| %s | none | flow_compute | %.0f | %.1f | %.0f | %u | %.2f | %.0f |\n", GEN_NAMES[g],
                   r.tps_cpu, 1e6 / r.tps_cpu, r.tps, n * n, r.phases, r.visits);
        }
        fflush(stdout);
        free(A);
        free(C);
    }
    printf("\n");
}

static void
s_grid(void)
{
    static const uint32_t NS[] = {8, 16, 32, 64, 128}, LS[] = {1, 2, 4, 8, 12};
    const uint32_t H = 8;
    for (int g = GEN_WORKLOAD; g <= GEN_PEAKED; g += 2) {
        printf("## growth, %s attention, CLS last: trades per CPU second (DFS steps per max-flow)\n\n",
               GEN_NAMES[g]);
        printf("| n \\ L |");
        for (size_t l = 0; l < sizeof LS / sizeof *LS; l++)
            printf(" %u |", LS[l]);
        printf("\n|---|");
        for (size_t l = 0; l < sizeof LS / sizeof *LS; l++)
            printf("---:|");
        printf("\n");
        for (size_t i = 0; i < sizeof NS / sizeof *NS; i++) {
            uint32_t n = NS[i], T = n <= 32 ? 16 : 4;
            printf("| %u |", n);
            for (size_t l = 0; l < sizeof LS / sizeof *LS; l++) {
                uint32_t L = LS[l];
                float *A = s_attention(T, L, H, n, (gen_t)g, 8000 + n * 31 + L);
                float *C = s_capacities(A, T, L, H, n);
                result_t r = s_time_flow(C, T, L, n, (int32_t)n - 1);
                if (L == 1)
                    printf(" %.0f |", r.tps_cpu);
                else
                    printf(" %.0f (%.0f) |", r.tps_cpu, r.visits);
                fflush(stdout);
                free(A);
                free(C);
            }
            printf("\n");
        }
        printf("\n");
    }
}

/* ---- dump / time: the inputs shared with bench/flow_networkx.py ---------- */

static int
s_dump(const char *path, uint32_t n, uint32_t L, int32_t cls, gen_t gen, uint32_t T, uint64_t seed)
{
    const uint32_t H = 8;
    float *A = s_attention(T, L, H, n, gen, seed);
    float *C = s_capacities(A, T, L, H, n);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        return 2;
    }
    size_t cpt = (size_t)L * n * n;
    for (uint32_t t = 0; t < T; t++) {
        int32_t hdr[3] = {(int32_t)L, (int32_t)n, cls};
        fwrite(hdr, sizeof *hdr, 3, f);
        fwrite(C + (size_t)t * cpt, sizeof *C, cpt, f);
    }
    int rc = fclose(f) ? 2 : 0;
    free(A);
    free(C);
    return rc;
}

static int
s_time_file(const char *path, const char *outpath)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 2;
    }
    int32_t hdr[3], first[3] = {0, 0, 0};
    float *C = NULL;
    uint32_t T = 0;
    size_t cpt = 0;
    while (fread(hdr, sizeof *hdr, 3, f) == 3) {
        if (T == 0) {
            memcpy(first, hdr, sizeof hdr);
            cpt = (size_t)hdr[0] * hdr[1] * hdr[1];
        } else if (memcmp(hdr, first, sizeof hdr)) {
            fprintf(stderr, "bench_flow: %s mixes shapes\n", path);
            return 2;
        }
        float *grown = realloc(C, (size_t)(T + 1) * cpt * sizeof *C);
        if (!grown || fread(grown + (size_t)T * cpt, sizeof *C, cpt, f) != cpt) {
            fprintf(stderr, "bench_flow: short record in %s\n", path);
            return 2;
        }
        C = grown;
        T++;
    }
    fclose(f);
    if (T == 0) {
        fprintf(stderr, "bench_flow: no trades in %s\n", path);
        return 2;
    }
    uint32_t L = (uint32_t)first[0], n = (uint32_t)first[1];
    int32_t cls = first[2];
    result_t r = s_time_flow(C, T, L, n, cls);
    printf("c_trades_per_s %.1f\nc_cpu_trades_per_s %.1f\nc_phases_per_maxflow %.3f\n"
           "c_steps_per_maxflow %.1f\n",
           r.tps, r.tps_cpu, r.phases, r.visits);
    if (outpath) {
        FILE *o = fopen(outpath, "w");
        flow_work_t *w = flow_work_new();
        float *out = malloc(n * sizeof *out);
        if (!o || !w || !out) {
            fprintf(stderr, "bench_flow: cannot write %s\n", outpath);
            return 2;
        }
        uint32_t nf = cls >= 0 ? n - 1 : n;
        for (uint32_t t = 0; t < T; t++) {
            flow_compute(w, L, n, cls, C + (size_t)t * cpt, out);
            for (uint32_t k = 0; k < nf; k++)
                fprintf(o, k ? " %.9g" : "%.9g", out[k]);
            fprintf(o, "\n");
        }
        fclose(o);
        free(out);
        flow_work_destroy(&w);
    }
    free(C);
    return 0;
}

int
main(int argc, char **argv)
{
    const char *mode = "all", *file = NULL, *outpath = NULL;
    uint32_t n = 32, L = 4, T = 16;
    int32_t cls = INT32_MIN;
    gen_t gen = GEN_WORKLOAD;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "--reps") && more)
            s_reps = atoi(argv[++i]);
        else if (!strcmp(a, "--seconds") && more)
            s_secs = atof(argv[++i]);
        else if (!strcmp(a, "--n") && more)
            n = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(a, "--L") && more)
            L = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(a, "--cls") && more)
            cls = atoi(argv[++i]);
        else if (!strcmp(a, "--trades") && more)
            T = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(a, "--seed") && more)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--out") && more)
            outpath = argv[++i];
        else if (!strcmp(a, "--gen") && more) {
            const char *g = argv[++i];
            gen = !strcmp(g, "random") ? GEN_RANDOM : !strcmp(g, "peaked") ? GEN_PEAKED : GEN_WORKLOAD;
        } else if (a[0] != '-' && (!strcmp(a, "all") || !strcmp(a, "tab32") || !strcmp(a, "grid")
                                   || !strcmp(a, "dump") || !strcmp(a, "time")))
            mode = a;
        else if (a[0] != '-' && !file)
            file = a;
        else {
            fprintf(stderr, "usage: bench_flow [all|tab32|grid] [--reps N] [--seconds S]\n"
                            "       bench_flow dump FILE [--n N] [--L L] [--cls C] "
                            "[--gen workload|random|peaked] [--trades K] [--seed S]\n"
                            "       bench_flow time FILE [--reps N] [--seconds S] [--out FILE]\n");
            return 2;
        }
    }
    if (s_reps < 1 || s_secs <= 0 || n < 2 || L < 1 || T < 1) {
        fprintf(stderr, "bench_flow: bad option value\n");
        return 2;
    }
    if (cls == INT32_MIN || cls >= (int32_t)n || cls < -1)
        cls = (int32_t)n - 1;
    if (!strcmp(mode, "dump") || !strcmp(mode, "time")) {
        if (!file) {
            fprintf(stderr, "bench_flow %s: FILE missing\n", mode);
            return 2;
        }
        return !strcmp(mode, "dump") ? s_dump(file, n, L, cls, gen, T, seed) : s_time_file(file, outpath);
    }
    if (!strcmp(mode, "all") || !strcmp(mode, "tab32"))
        s_tab32();
    if (!strcmp(mode, "all") || !strcmp(mode, "grid"))
        s_grid();
    return 0;
}
