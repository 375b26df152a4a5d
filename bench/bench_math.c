/*  bench_math: the math library alone, in process, no ZeroMQ.

    - single-core read bandwidth: a streaming sum over a buffer far larger
      than the last-level cache;
    - all five methods (rollout, grad_rollout, first_layer, attn_mean, diag)
      on tab32 (and tab32-f16, tab16) streaming through a pool of trades
      larger than the cache: trades/s against the bandwidth bound
      (bandwidth / tensor bytes per trade), and the same trade repeated
      (cache-hot, as in the daemon where the tensor was just received);
    - wide128: GFLOP/s of the full-matrix products (xm_rollout_matrix,
      xm_grad_rollout_matrix: cblas_sgemm) against OpenBLAS's own sgemm peak
      measured here, and OpenBLAS against a lean loop for small n;
    - the sweep n in {8..256} x L in {1,2,4,8,12} (H=8): cost per trade;
    - variants (core-only: colsum, discard ratio, start layer, the signed
      and LRP gradient methods, several targets): cache-hot cost per trade
      beside the five plain methods, interleaved.
    Bandwidth and method runs are interleaved and repeated; medians are
    reported.

    usage: bench_math [all|bw|methods|gemm|sweep|variants] [--reps N] [--seconds S]
           bench_math prof WORKLOAD N [VARIANT]   (N trades, for callgrind)  */
#define _GNU_SOURCE
#include "bench_common.h"
#include "wire.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>

static int s_reps = 5;
static double s_secs = 0.5;
static volatile float s_sink;
static char s_target[256];

typedef float v8f __attribute__((vector_size(32)));

static int
s_cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double
median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- read bandwidth ---------------------------------------------------- */

#define BW_BYTES ((size_t)512 << 20)
static float *s_bwbuf;

__attribute__((target_clones("avx2", "default"))) static float
s_stream_sum(const float *p, size_t n)
{
    v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    for (size_t i = 0; i + 32 <= n; i += 32) {
        v8f x0, x1, x2, x3;
        memcpy(&x0, p + i, 32);
        memcpy(&x1, p + i + 8, 32);
        memcpy(&x2, p + i + 16, 32);
        memcpy(&x3, p + i + 24, 32);
        a0 += x0;
        a1 += x1;
        a2 += x2;
        a3 += x3;
    }
    v8f a = (a0 + a1) + (a2 + a3);
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

/* One bandwidth measurement in GB/s (10^9 bytes/s). */
static double
bw_once(void)
{
    if (!s_bwbuf) {
        s_bwbuf = aligned_alloc(64, BW_BYTES);
        for (size_t i = 0; i < BW_BYTES / 4; i++)
            s_bwbuf[i] = (float)(i & 1023);
        s_sink += s_stream_sum(s_bwbuf, BW_BYTES / 4);
    }
    int64_t t0 = now_mono();
    s_sink += s_stream_sum(s_bwbuf, BW_BYTES / 4);
    int64_t t1 = now_mono();
    return (double)BW_BYTES / (double)(t1 - t0);
}

/* ---- methods ----------------------------------------------------------- */

typedef struct {
    wl_t w;
    size_t trade;       /* bytes of one trade's attn (= grad) */
    uint32_t ntrades;
    uint8_t *attn, *grad;
} pool_t;

/* A pool of `bytes` worth of trades, made of copies of 8 distinct ones. */
static void
pool_make(pool_t *p, const wl_t *w, size_t bytes)
{
    p->w = *w;
    p->w.B = 1;
    p->trade = wl_trade_elems(w) * xm_dtype_size(w->dtype);
    size_t per = p->trade * (w->grad ? 2 : 1);
    p->ntrades = (uint32_t)(bytes / per);
    if (p->ntrades < 2)
        p->ntrades = 2;
    uint32_t distinct = p->ntrades < 8 ? p->ntrades : 8;
    void *a, *g;
    wl_t wd = p->w;
    wd.B = distinct;
    wl_tensors(&wd, distinct, 7, &a, &g);
    p->attn = aligned_alloc(64, p->trade * p->ntrades + 64);
    p->grad = w->grad ? aligned_alloc(64, p->trade * p->ntrades + 64) : NULL;
    for (uint32_t t = 0; t < p->ntrades; t++) {
        memcpy(p->attn + t * p->trade, (uint8_t *)a + (t % distinct) * p->trade, p->trade);
        if (g)
            memcpy(p->grad + t * p->trade, (uint8_t *)g + (t % distinct) * p->trade, p->trade);
    }
    free(a);
    free(g);
}

static void
pool_free(pool_t *p)
{
    free(p->attn);
    free(p->grad);
}

static const unsigned FIVE = XM_BIT(XM_ROLLOUT) | XM_BIT(XM_GRAD_ROLLOUT) |
                             XM_BIT(XM_FIRST_LAYER) | XM_BIT(XM_ATTN_MEAN) | XM_BIT(XM_DIAG);

/* Trades/s of xm_explain (five methods) over the pool, or over trade 0
   only when `hot`. */
static double
methods_once(xm_work_t *wk, const pool_t *p, bool hot, double secs)
{
    xm_opts_t o = {.methods = FIVE, .fusion = XM_FUSE_MEAN};
    xm_shape_t s = {p->w.L, p->w.H, p->w.n, p->w.cls};
    xm_result_t res;
    uint64_t done = 0;
    int64_t t0 = now_mono(), lim = (int64_t)(secs * 1e9), t1;
    uint32_t k = 0;
    do {
        for (int r = 0; r < 16; r++) {
            size_t off = hot ? 0 : (size_t)k * p->trade;
            if (xm_explain(wk, &o, &s, p->w.dtype, p->attn + off, p->grad ? p->grad + off : NULL,
                           &res) != XM_OK) {
                fprintf(stderr, "xm_explain failed\n");
                exit(1);
            }
            s_sink += res.attr[XM_ROLLOUT][0];
            if (++k == p->ntrades)
                k = 0;
        }
        done += 16;
        t1 = now_mono();
    } while (t1 - t0 < lim);
    return (double)done / ((double)(t1 - t0) / 1e9);
}

static void
bench_methods(void)
{
    static const char *names[] = {"tab32", "tab32-f16", "tab16", "wide128"};
    printf("\n### Math library alone: five methods per trade, in process\n\n");
    printf("Read bandwidth and method runs interleaved, %d repetitions, medians. "
           "Bound = bandwidth / tensor bytes per trade (attn + grad).\n\n", s_reps);
    printf("| workload | bytes/trade | read GB/s | bound trades/s | streaming trades/s | ratio "
           "| cache-hot trades/s | hot us/trade |\n|---|---|---|---|---|---|---|---|\n");
    xm_work_t *wk = xm_work_new();
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const wl_t *w = wl_find(names[i]);
        pool_t p;
        pool_make(&p, w, (size_t)256 << 20);
        double bw[32], st[32], hot[32], ratio[32];
        size_t bytes = wl_trade_bytes(w);
        for (int r = 0; r < s_reps && r < 32; r++) {
            bw[r] = bw_once();
            st[r] = methods_once(wk, &p, false, s_secs);
            hot[r] = methods_once(wk, &p, true, s_secs);
            ratio[r] = st[r] / (bw[r] * 1e9 / (double)bytes);
        }
        double mbw = median(bw, s_reps), mst = median(st, s_reps), mhot = median(hot, s_reps);
        double mratio = median(ratio, s_reps);
        printf("| %s | %zu | %.1f | %.0f | %.0f | %.2f | %.0f | %.2f |\n", names[i], bytes, mbw,
               mbw * 1e9 / (double)bytes, mst, mratio, mhot, 1e6 / mhot);
        if (i == 0)
            snprintf(s_target, sizeof s_target,
                     "TARGET|math alone, tab32, five methods: trades/s / bandwidth bound|%.2f|>= 0.5|%s\n",
                     mratio, mratio >= 0.5 ? "yes" : "no");
        fflush(stdout);
        pool_free(&p);
    }
    xm_work_destroy(&wk);
}

/* ---- the attention check ------------------------------------------------ */

/* CPU time of this thread in ns: what a trade costs, whatever else the
   machine runs. */
static int64_t
s_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Trades per CPU second of xm_explain over the pool (streaming), preceded
   by the daemon's attention check (wire_attn_rows_ok) when `check`. */
static double
checked_once(xm_work_t *wk, const pool_t *p, bool check, bool hot, double secs)
{
    xm_opts_t o = {.methods = FIVE, .fusion = XM_FUSE_MEAN};
    xm_shape_t s = {p->w.L, p->w.H, p->w.n, p->w.cls};
    xm_result_t res;
    uint64_t done = 0;
    int64_t t0 = s_cpu_ns(), lim = (int64_t)(secs * 1e9), t1;
    uint32_t k = 0;
    do {
        for (int r = 0; r < 16; r++) {
            size_t off = hot ? 0 : (size_t)k * p->trade;
            if (check && !wire_attn_rows_ok(&s, p->w.dtype, p->attn + off, 0.01f, NULL)) {
                fprintf(stderr, "the bench's attention failed the check\n");
                exit(1);
            }
            if (xm_explain(wk, &o, &s, p->w.dtype, p->attn + off, p->grad ? p->grad + off : NULL,
                           &res) != XM_OK)
                exit(1);
            s_sink += res.attr[XM_ROLLOUT][0];
            if (++k == p->ntrades)
                k = 0;
        }
        done += 16;
        t1 = s_cpu_ns();
    } while (t1 - t0 < lim);
    return (double)done / ((double)(t1 - t0) / 1e9);
}

/* What the daemon's attention check (attention-check reject, the
   default) adds to a trade's CPU time: with and without, interleaved. */
static void
bench_check(void)
{
    static const char *names[] = {"tab32", "tab32-f16", "tab16", "wide128"};
    printf("\n### The attention check: five methods per trade, without and with it\n\n");
    printf("Streaming over a 256 MiB pool, interleaved, %d repetitions, medians; CPU time of the "
           "thread.\n\n", s_reps);
    printf("| workload | CPU us/trade without | with | added | cache-hot without | with | added "
           "|\n|---|---|---|---|---|---|---|\n");
    xm_work_t *wk = xm_work_new();
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const wl_t *w = wl_find(names[i]);
        pool_t p;
        pool_make(&p, w, (size_t)256 << 20);
        double off[32], on[32], hoff[32], hon[32];
        for (int r = 0; r < s_reps && r < 32; r++) {
            off[r] = 1e6 / checked_once(wk, &p, false, false, s_secs);
            on[r] = 1e6 / checked_once(wk, &p, true, false, s_secs);
            hoff[r] = 1e6 / checked_once(wk, &p, false, true, s_secs);
            hon[r] = 1e6 / checked_once(wk, &p, true, true, s_secs);
        }
        double moff = median(off, s_reps), mon = median(on, s_reps);
        double mhoff = median(hoff, s_reps), mhon = median(hon, s_reps);
        printf("| %s | %.2f | %.2f | %+.1f%% | %.2f | %.2f | %+.1f%% |\n", names[i], moff, mon,
               100 * (mon / moff - 1), mhoff, mhon, 100 * (mhon / mhoff - 1));
        fflush(stdout);
        pool_free(&p);
    }
    xm_work_destroy(&wk);
}

/* ---- products ---------------------------------------------------------- */

/* A lean row-major C = A B (n x n), i-k-j order, vectorised by the
   compiler: the candidate replacement for cblas_sgemm at small n. */
__attribute__((target_clones("avx2", "default"))) static void
lean_gemm(uint32_t n, const float *A, const float *B, float *C)
{
    for (uint32_t i = 0; i < n; i++) {
        float *c = C + (size_t)i * n;
        memset(c, 0, n * sizeof *c);
        for (uint32_t k = 0; k < n; k++) {
            float a = A[(size_t)i * n + k];
            const float *b = B + (size_t)k * n;
            for (uint32_t j = 0; j < n; j++)
                c[j] += a * b[j];
        }
    }
}

static double
gflops_sgemm(uint32_t n, double secs, bool lean)
{
    size_t nn = (size_t)n * n;
    float *A = aligned_alloc(64, nn * 4), *B = aligned_alloc(64, nn * 4), *C = aligned_alloc(64, nn * 4);
    for (size_t k = 0; k < nn; k++) {
        A[k] = (float)(k % 7) / 7.0f;
        B[k] = (float)(k % 5) / 5.0f;
    }
    uint64_t done = 0;
    int64_t t0 = now_mono(), t1;
    do {
        if (lean)
            lean_gemm(n, A, B, C);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n, (int)n, 1.0f, A,
                        (int)n, B, (int)n, 0.0f, C, (int)n);
        done++;
        t1 = now_mono();
    } while (t1 - t0 < (int64_t)(secs * 1e9));
    s_sink += C[0];
    free(A);
    free(B);
    free(C);
    return 2.0 * n * n * (double)n * (double)done / (double)(t1 - t0);
}

static void
bench_gemm(void)
{
    xm_blas_single_thread();
    printf("\n### Products: OpenBLAS sgemm (single thread) against a lean loop\n\n");
    printf("| n | OpenBLAS GFLOP/s | lean loop GFLOP/s | OpenBLAS us/product | lean us/product |\n"
           "|---|---|---|---|---|\n");
    static const uint32_t ns[] = {8, 16, 32, 64, 128, 256, 1024};
    double peak = 0, at128 = 0;
    for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
        double b[32], l[32];
        for (int r = 0; r < s_reps && r < 32; r++) {
            b[r] = gflops_sgemm(ns[i], s_secs / 2, false);
            l[r] = ns[i] <= 256 ? gflops_sgemm(ns[i], s_secs / 2, true) : 0;
        }
        double mb = median(b, s_reps), ml = median(l, s_reps);
        double fl = 2.0 * ns[i] * ns[i] * ns[i];
        if (ns[i] == 1024)
            peak = mb;      /* OpenBLAS's own peak: a large square product */
        if (ns[i] == 128)
            at128 = mb;
        if (ns[i] <= 256)
            printf("| %u | %.1f | %.1f | %.2f | %.2f |\n", ns[i], mb, ml, fl / mb / 1e3, fl / ml / 1e3);
        else
            printf("| %u | %.1f | - | %.0f | - |\n", ns[i], mb, fl / mb / 1e3);
        fflush(stdout);
    }

    /* wide128: the full matrices the trade query builds. */
    const wl_t *w = wl_find("wide128");
    void *a, *g;
    wl_tensors(w, 1, 3, &a, &g);
    xm_work_t *wk = xm_work_new();
    xm_opts_t o = {.methods = FIVE, .fusion = XM_FUSE_MEAN};
    xm_shape_t s = {w->L, w->H, w->n, w->cls};
    xm_result_t res;
    xm_explain(wk, &o, &s, w->dtype, a, g, &res);
    size_t nn = (size_t)w->n * w->n;
    float *out = aligned_alloc(64, nn * 4), *tmp = aligned_alloc(64, nn * 4);
    double gr[32], gg[32];
    for (int r = 0; r < s_reps && r < 32; r++) {
        for (int which = 0; which < 2; which++) {
            uint64_t done = 0;
            int64_t t0 = now_mono(), t1;
            do {
                if (which == 0)
                    xm_rollout_matrix(w->L, w->n, xm_work_rollout_layers(wk), out, tmp);
                else
                    xm_grad_rollout_matrix(w->L, w->n, xm_work_grad_layers(wk), false, out, tmp);
                done++;
                t1 = now_mono();
            } while (t1 - t0 < (int64_t)(s_secs * 1e9 / 2));
            double flops = 2.0 * w->n * w->n * (double)w->n * (which == 0 ? w->L - 1 : w->L);
            (which == 0 ? gr : gg)[r] = flops * (double)done / (double)(t1 - t0);
        }
    }
    double mr = median(gr, s_reps), mg = median(gg, s_reps);
    printf("\nwide128 full matrices (L=6, n=128): xm_rollout_matrix %.1f GFLOP/s (%.2f of OpenBLAS's "
           "peak, %.2f of a bare 128x128 sgemm), xm_grad_rollout_matrix %.1f GFLOP/s (%.2f, %.2f). "
           "OpenBLAS single-thread peak here (n=1024): %.1f GFLOP/s; bare sgemm at n=128: %.1f GFLOP/s. "
           "The hot path needs no product at all (row-vector readouts); these build the full matrices "
           "of the trade query. OpenBLAS beats the lean loop at every n measured, so it stays.\n",
           mr, mr / peak, mr / at128, mg, mg / peak, mg / at128, peak, at128);
    s_sink += out[0];
    free(out);
    free(tmp);
    free(a);
    free(g);
    xm_work_destroy(&wk);
}

/* ---- sweep ------------------------------------------------------------- */

static void
bench_sweep(void)
{
    static const uint32_t ns[] = {8, 16, 32, 64, 128, 256}, Ls[] = {1, 2, 4, 8, 12};
    printf("\n### Sweep: cost per trade of the five methods (H=8, f32, attn + grad, streaming "
           "from memory)\n\n");
    printf("| n \\ L |");
    for (size_t j = 0; j < 5; j++)
        printf(" L=%u |", Ls[j]);
    printf("\n|---|---|---|---|---|---|\n");
    xm_work_t *wk = xm_work_new();
    double bwv[32];
    for (int r = 0; r < 3; r++)
        bwv[r] = bw_once();
    double bw = median(bwv, 3);
    for (size_t i = 0; i < 6; i++) {
        printf("| n=%u |", ns[i]);
        for (size_t j = 0; j < 5; j++) {
            wl_t w = {NULL, Ls[j], 8, ns[i], (int32_t)ns[i] - 1, XM_F32, 1, 1};
            pool_t p;
            pool_make(&p, &w, (size_t)128 << 20);
            double v[32];
            for (int r = 0; r < 3; r++)
                v[r] = methods_once(wk, &p, false, s_secs / 2);
            double tps = median(v, 3), bytes = (double)wl_trade_bytes(&w);
            printf(" %.1f us (%.0f%%) |", 1e6 / tps, 100.0 * tps * bytes / (bw * 1e9));
            fflush(stdout);
            pool_free(&p);
        }
        printf("\n");
    }
    printf("\nEach cell: microseconds per trade (percentage of the read-bandwidth bound "
           "at %.1f GB/s).\n", bw);
    xm_work_destroy(&wk);
}

/* ---- variants ---------------------------------------------------------- */

typedef struct {
    const char *name;
    unsigned extra;         /* methods beside the five */
    double rho;
    int32_t start;
    uint32_t T;
    bool rel;
    bool resnorm;           /* the residual normalisation of the gradient methods */
    bool nocls;             /* the workload without its CLS token (cls = -1) */
} s_variant_t;

static const s_variant_t vs[] = {
    {"five plain methods", 0, 0, 0, 1, false},
    {"+ colsum", XM_BIT(XM_COLSUM), 0, 0, 1, false},
    {"discard ratio 0.9", 0, 0.9, 0, 1, false},
    {"start layer -1", 0, 0, -1, 1, false},
    {"+ grad_rollout_signed", XM_BIT(XM_GRAD_ROLLOUT_SIGNED), 0, 0, 1, false},
    {"+ lrp_rollout (rel)", XM_BIT(XM_LRP_ROLLOUT), 0, 0, 1, true},
    {"T = 2 targets", 0, 0, 0, 2, false},
    {"T = 4 targets", 0, 0, 0, 4, false},
    {"grad_resnorm", 0, 0, 0, 1, false, true, false},
    {"no CLS", 0, 0, 0, 1, false, false, true},
    {"no CLS, grad_resnorm", 0, 0, 0, 1, false, true, true},
    {"no CLS, + signed, grad_resnorm", XM_BIT(XM_GRAD_ROLLOUT_SIGNED), 0, 0, 1, false, true, true},
};
enum { NV = sizeof vs / sizeof *vs };

/* Cache-hot trades/s of one variant on one trade (T gradients, relevances). */
static double
variant_once(xm_work_t *wk, const wl_t *w, const s_variant_t *v, const void *a, const void *g,
             const void *rel, double secs)
{
    xm_opts_t o = {.methods = FIVE | v->extra, .discard = v->rho, .start_layer = v->start,
                   .grad_resnorm = v->resnorm};
    xm_shape_t s = {w->L, w->H, w->n, v->nocls ? -1 : w->cls};
    xm_input_t in = {a, g, v->rel ? rel : NULL, v->T};
    xm_result_t res;
    uint64_t done = 0;
    int64_t t0 = now_mono(), lim = (int64_t)(secs * 1e9), t1;
    do {
        for (int r = 0; r < 16; r++) {
            if (xm_explain_ex(wk, &o, &s, w->dtype, &in, &res) != XM_OK) {
                fprintf(stderr, "xm_explain_ex failed (%s)\n", v->name);
                exit(1);
            }
            s_sink += res.attr[XM_ROLLOUT][0];
        }
        done += 16;
        t1 = now_mono();
    } while (t1 - t0 < lim);
    return (double)done / ((double)(t1 - t0) / 1e9);
}

static void
bench_variants(void)
{
    static const char *names[] = {"tab32", "wide128"};
    printf("\n### Variants (core-only): cache-hot cost per trade beside the five plain methods\n\n");
    printf("Variants interleaved, %d repetitions, medians; the relevance tensor is the gradient "
           "reused, T targets are copies of one gradient.\n\n", s_reps);
    printf("| variant | tab32 us/trade | x plain | wide128 us/trade | x plain |\n|---|---|---|---|---|\n");
    double us[2][NV];
    for (size_t i = 0; i < 2; i++) {
        const wl_t *w = wl_find(names[i]);
        void *a, *g1;
        wl_tensors(w, 1, 5, &a, &g1);
        size_t tb = wl_trade_elems(w) * xm_dtype_size(w->dtype);
        uint8_t *g = aligned_alloc(64, 4 * tb + 64);
        for (int t = 0; t < 4; t++)
            memcpy(g + t * tb, g1, tb);
        xm_work_t *wk = xm_work_new();
        double v[NV][32];
        for (int r = 0; r < s_reps && r < 32; r++)
            for (size_t k = 0; k < NV; k++)
                v[k][r] = variant_once(wk, w, &vs[k], a, g, g, s_secs / 4);
        for (size_t k = 0; k < NV; k++)
            us[i][k] = 1e6 / median(v[k], s_reps);
        xm_work_destroy(&wk);
        free(a);
        free(g1);
        free(g);
    }
    for (size_t k = 0; k < NV; k++)
        printf("| %s | %.2f | %.2f | %.1f | %.2f |\n", vs[k].name, us[0][k], us[0][k] / us[0][0],
               us[1][k], us[1][k] / us[1][0]);
    fflush(stdout);
}

int
main(int argc, char **argv)
{
    const char *what = "all";
    if (argc == 5 && strcmp(argv[1], "prof") == 0) {
        /* For callgrind: N cache-hot trades of one workload with variant V
           of the variants table (its instruction count does not depend on
           the machine's load). */
        const wl_t *w = wl_find(argv[2]);
        int v = atoi(argv[4]);
        if (!w || v < 0 || v >= NV)
            return 2;
        void *a, *g1;
        wl_tensors(w, 1, 5, &a, &g1);
        size_t tb = wl_trade_elems(w) * xm_dtype_size(w->dtype);
        uint8_t *g = aligned_alloc(64, 4 * tb + 64);
        for (int t = 0; t < 4; t++)
            memcpy(g + t * tb, g1, tb);
        xm_work_t *wk = xm_work_new();
        variant_once(wk, w, &vs[v], a, g, g, 0);   /* warm: the work area grows once */
        for (int k = atoi(argv[3]); k > 0; k -= 16)
            variant_once(wk, w, &vs[v], a, g, g, 0);
        xm_work_destroy(&wk);
        free(a);
        free(g1);
        free(g);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "prof") == 0) {
        /* For callgrind: N cache-hot trades of one workload. */
        const wl_t *w = wl_find(argv[2]);
        if (!w)
            return 2;
        pool_t p;
        pool_make(&p, w, 1);
        xm_work_t *wk = xm_work_new();
        xm_opts_t o = {.methods = FIVE, .fusion = XM_FUSE_MEAN};
        xm_shape_t s = {w->L, w->H, w->n, w->cls};
        xm_result_t res;
        for (int k = atoi(argv[3]); k > 0; k--)
            xm_explain(wk, &o, &s, w->dtype, p.attn, p.grad, &res);
        xm_work_destroy(&wk);
        pool_free(&p);
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            s_reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            s_secs = atof(argv[++i]);
        else
            what = argv[i];
    }
    if (s_reps < 1)
        s_reps = 1;
    if (s_reps > 32)
        s_reps = 32;
    xm_blas_single_thread();
    bool all = strcmp(what, "all") == 0;
    if (all || strcmp(what, "bw") == 0) {
        double v[32];
        for (int r = 0; r < s_reps; r++)
            v[r] = bw_once();
        printf("single-core read bandwidth: %.1f GB/s (median of %d)\n", median(v, s_reps), s_reps);
    }
    if (all || strcmp(what, "methods") == 0)
        bench_methods();
    if (all || strcmp(what, "check") == 0)
        bench_check();
    if (all || strcmp(what, "gemm") == 0)
        bench_gemm();
    if (all || strcmp(what, "sweep") == 0)
        bench_sweep();
    if (all || strcmp(what, "variants") == 0)
        bench_variants();
    fputs(s_target, stdout);
    return 0;
}
