/*  Tests of the fused form in core: fuse_trade (full tensors to the fused
    form) and xm_explain_fused (explaining it).

    The claim under test: for the same trade, the fused form explains to
    what the full form explains to (1e-6 relative in f32, every served
    method, the variants, every CLS position), and both agree with the
    float64 reference of tests/ref.c. 16-bit fused tensors are checked
    against the reference run on the values they hold. Options that need
    individual heads are refused, not computed wrong.  */
#include "fuse.h"
#include "half.h"
#include "ref.h"
#include "support.h"
#include "xmath.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXACT 1e-6      /* fused vs full, f32 */
#define REL 1e-5        /* against the float64 reference */

typedef struct {
    int L, H, n, cls;
    uint64_t seed;
} cfg_t;

typedef struct {
    int L, H, n, T;
    double *A, *G;              /* exact float32 values, as doubles */
    float *af, *gf;             /* float32 [L][H][n][n], G: [T][...] */
    float *M, *P, *S, *imp, *conf;  /* fused: M [L][n][n], P, S [T][L][n][n], imp [T][L][H] */
} trade_t;

static void
make_trade(const cfg_t *c, int T, trade_t *t)
{
    const size_t cnt = (size_t)c->L * c->H * c->n * c->n, lnn = (size_t)c->L * c->n * c->n;
    const size_t lh = (size_t)c->L * c->H;
    rng_t r;
    rng_seed(&r, c->seed);
    *t = (trade_t){.L = c->L, .H = c->H, .n = c->n, .T = T};
    t->A = malloc(cnt * sizeof(double));
    t->G = malloc(T * cnt * sizeof(double));
    t->af = malloc(cnt * 4);
    t->gf = malloc(T * cnt * 4);
    for (size_t q = 0; q < lh; q++)
        gen_attention(&r, t->A + q * c->n * c->n, c->n, c->n, 3.0 * (0.3 + rng_uniform(&r)));
    gen_gradient(&r, t->G, T * cnt, 2.0);
    encode_dtype(0, t->A, cnt, t->af, t->A);
    encode_dtype(0, t->G, T * cnt, t->gf, t->G);
    t->M = malloc(lnn * 4);
    t->P = malloc(T * lnn * 4);
    t->S = malloc(T * lnn * 4);
    t->imp = malloc(T * lh * 4);
    t->conf = malloc(lh * 4);
    for (int k = 0; k < T; k++)
        fuse_trade(c->L, c->H, c->n, t->af, t->gf + k * cnt, t->M, t->P + k * lnn,
                   t->S + k * lnn, t->imp + k * lh, t->conf);
}

static void
free_trade(trade_t *t)
{
    free(t->A); free(t->G); free(t->af); free(t->gf);
    free(t->M); free(t->P); free(t->S); free(t->imp); free(t->conf);
}

static void
expect_same(const char *what, const cfg_t *c, const float *fused, const float *full, size_t cnt)
{
    for (size_t k = 0; k < cnt; k++)
        cr_assert(close_enough(fused[k], full[k], EXACT, 1e-30),
                  "%s L=%d H=%d n=%d cls=%d seed=%llu: [%zu] fused %.9g full %.9g", what, c->L,
                  c->H, c->n, c->cls, (unsigned long long)c->seed, k, fused[k], full[k]);
}

static void
expect_ref(const char *what, const cfg_t *c, const float *got, const double *want, int nf,
           double rel)
{
    for (int k = 0; k < nf; k++)
        cr_assert(close_enough(got[k], want[k], rel, 1e-12),
                  "%s L=%d H=%d n=%d cls=%d seed=%llu: [%d] got %.9g want %.9g", what, c->L,
                  c->H, c->n, c->cls, (unsigned long long)c->seed, k, got[k], want[k]);
}

/* fuse_trade itself, against a float64 computation of the definitions. */
static void
check_fuse(const cfg_t *c, const trade_t *t)
{
    const int L = c->L, H = c->H, n = c->n;
    for (int l = 0; l < L; l++)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double m = 0, p = 0, s = 0;
                for (int h = 0; h < H; h++) {
                    size_t q = (((size_t)l * H + h) * n + i) * n + j;
                    m += t->A[q];
                    p += fmax(0.0, t->A[q] * t->G[q]);
                    s += t->A[q] * t->G[q];
                }
                size_t o = ((size_t)l * n + i) * n + j;
                cr_assert(close_enough(t->M[o], m / H, 1e-6, 1e-12), "M %g vs %g", t->M[o], m / H);
                cr_assert(close_enough(t->P[o], p / H, 1e-5, 1e-7), "P %g vs %g", t->P[o], p / H);
                cr_assert(close_enough(t->S[o], s / H, 1e-5, 1e-7), "S %g vs %g", t->S[o], s / H);
            }
    double *imp = malloc(sizeof(double) * L * H), *conf = malloc(sizeof(double) * L * H);
    ref_head_stats(L, H, n, t->A, t->G, imp, conf);
    for (int k = 0; k < L * H; k++) {
        /* |sum A G| cancels: float32 products (the daemon's) are good to
           the scale of sum |A G|. */
        double scale = 0;
        for (size_t q = 0; q < (size_t)n * n; q++)
            scale += fabs(t->A[(size_t)k * n * n + q] * t->G[(size_t)k * n * n + q]);
        cr_assert(close_enough(t->imp[k], imp[k], 0, 1e-6 * scale + 1e-12), "imp[%d] %g vs %g", k,
                  t->imp[k], imp[k]);
        cr_assert(close_enough(t->conf[k], conf[k], 1e-6, 1e-12), "conf[%d] %g vs %g", k, t->conf[k], conf[k]);
    }
    free(imp);
    free(conf);
}

/* grad_rollout_signed: its layers cancel, so the fused form's S, the
   head mean rounded to float32 on the model's side, is not the full
   form's (which keeps it in double). Each is checked against the float64
   reference on what it was given: the full form on A and G, the fused
   form on S (a one-head attention with G = 1). */
static void
check_signed(const cfg_t *c, const trade_t *t, const xm_opts_t *o, const xm_result_t *full,
             const xm_result_t *fused)
{
    const int nf = c->n - (c->cls >= 0);
    const size_t lnn = (size_t)c->L * c->n * c->n, cnt = lnn * c->H;
    double *S = malloc(lnn * sizeof(double)), *one = malloc(lnn * sizeof(double));
    double *want = malloc((size_t)c->n * sizeof(double));
    for (size_t k = 0; k < lnn; k++)
        one[k] = 1.0;
    for (int k = 0; k < t->T; k++) {
        ref_grad_rollout_v(c->L, c->H, c->n, c->cls, t->A, t->G + k * cnt, false, o->grad_resnorm,
                           o->start_layer, want);
        expect_ref("grad_rollout_signed full", c, full->attr[XM_GRAD_ROLLOUT_SIGNED] + k * nf, want,
                   nf, REL);
        for (size_t e = 0; e < lnn; e++)
            S[e] = t->S[k * lnn + e];
        ref_grad_rollout_v(c->L, 1, c->n, c->cls, S, one, false, o->grad_resnorm, o->start_layer,
                           want);
        expect_ref("grad_rollout_signed fused", c, fused->attr[XM_GRAD_ROLLOUT_SIGNED] + k * nf,
                   want, nf, REL);
    }
    free(S); free(one); free(want);
}

/* Explain one configuration from both forms, with `o`, and compare. */
static void
check_both(const cfg_t *c, const trade_t *t, const xm_opts_t *o)
{
    xm_shape_t s = {(uint32_t)c->L, (uint32_t)c->H, (uint32_t)c->n, c->cls};
    const uint32_t nf = xm_nfeat(&s), T = (uint32_t)t->T;
    xm_work_t *wf = xm_work_new(), *wu = xm_work_new();
    xm_result_t full, fused;
    xm_input_t in = {.attn = t->af, .grad = t->gf, .ntargets = T};
    cr_assert_eq(xm_explain_ex(wu, o, &s, XM_F32, &in, &full), XM_OK);
    xm_fused_t fin = {.mean = t->M, .pos = t->P, .sign = t->S, .importance = t->imp,
                      .confidence = t->conf, .ntargets = T};
    cr_assert_eq(xm_explain_fused(wf, o, &s, XM_F32, &fin, &fused), XM_OK);
    cr_assert_eq(fused.computed, full.computed, "methods %#x vs %#x", fused.computed, full.computed);
    cr_assert_eq(fused.ntargets, T);
    for (int m = 0; m < XM_NMETHODS_CORE; m++) {
        if (!(full.computed & XM_BIT(m)) || m == XM_GRAD_ROLLOUT_SIGNED)
            continue;
        size_t cnt = (size_t)nf * ((XM_GRAD_METHODS & XM_BIT(m)) ? T : 1);
        expect_same(xm_method_name((xm_method_t)m), c, fused.attr[m], full.attr[m], cnt);
    }
    if (full.computed & XM_BIT(XM_GRAD_ROLLOUT_SIGNED))
        check_signed(c, t, o, &full, &fused);
    const size_t lh = (size_t)c->L * c->H;
    expect_same("head_confidence", c, fused.head_confidence, full.head_confidence, lh);
    /* |sum A G| cancels: the full form's own float sums are good to the
       scale of sum |A G|, the fused form's (double) to far better. */
    for (uint32_t k = 0; k < T; k++)
        for (size_t q = 0; q < lh; q++) {
            double scale = 0;
            const size_t nn = (size_t)c->n * c->n, base = (k * lh + q) * nn;
            for (size_t e = 0; e < nn; e++)
                scale += fabs(t->A[q * nn + e] * t->G[base + e]);
            cr_assert(close_enough(fused.head_importance[k * lh + q], full.head_importance[k * lh + q],
                                   0, 1e-6 * scale + 1e-30),
                      "importance[%u][%zu] fused %g full %g", k, q, fused.head_importance[k * lh + q],
                      full.head_importance[k * lh + q]);
        }
    /* The per-layer matrices the trade query reads. */
    const size_t lnn = (size_t)c->L * c->n * c->n;
    if (full.computed & XM_BIT(XM_ROLLOUT))
        expect_same("rollout layers", c, xm_work_layers(wf, XM_ROLLOUT, 0),
                    xm_work_layers(wu, XM_ROLLOUT, 0), lnn);
    expect_same("flow layers", c, xm_work_flow_layers(wf), xm_work_flow_layers(wu), lnn);
    for (uint32_t k = 0; k < T; k++)
        if (full.computed & XM_BIT(XM_GRAD_ROLLOUT))
            expect_same("grad layers", c, xm_work_layers(wf, XM_GRAD_ROLLOUT, k),
                        xm_work_layers(wu, XM_GRAD_ROLLOUT, k), lnn);
    xm_work_destroy(&wf);
    xm_work_destroy(&wu);
}

/* The reference on the full tensors, for the plain methods. */
static void
check_ref(const cfg_t *c, const trade_t *t, const xm_result_t *res)
{
    double *want = malloc(sizeof(double) * c->n);
    int nf = c->n - (c->cls >= 0);
    ref_rollout(c->L, c->H, c->n, c->cls, t->A, REF_MEAN, want);
    expect_ref("rollout", c, res->attr[XM_ROLLOUT], want, nf, REL);
    ref_grad_rollout(c->L, c->H, c->n, c->cls, t->A, t->G, false, want);
    expect_ref("grad_rollout", c, res->attr[XM_GRAD_ROLLOUT], want, nf, REL);
    ref_first_layer(c->L, c->H, c->n, c->cls, t->A, REF_MEAN, want);
    expect_ref("first_layer", c, res->attr[XM_FIRST_LAYER], want, nf, REL);
    ref_attn_mean(c->L, c->H, c->n, c->cls, t->A, want);
    expect_ref("attn_mean", c, res->attr[XM_ATTN_MEAN], want, nf, REL);
    ref_diag(c->L, c->H, c->n, c->cls, t->A, want);
    expect_ref("diag", c, res->attr[XM_DIAG], want, nf, REL);
    ref_colsum(c->L, c->H, c->n, c->cls, t->A, REF_MEAN, want);
    expect_ref("colsum", c, res->attr[XM_COLSUM], want, nf, REL);
    ref_grad_rollout_v(c->L, c->H, c->n, c->cls, t->A, t->G, false, false, 0, want);
    for (int k = 0; k < nf; k++)     /* signed values cancel: scale of the clamped ones */
        cr_assert(close_enough(res->attr[XM_GRAD_ROLLOUT_SIGNED][k], want[k], 0,
                               REL * (1.0 + fabs(want[k])) * c->L),
                  "grad_rollout_signed [%d] got %.9g want %.9g", k,
                  res->attr[XM_GRAD_ROLLOUT_SIGNED][k], want[k]);
    free(want);
}

static void
check_cfg(const cfg_t *c)
{
    trade_t t;
    make_trade(c, 1, &t);
    check_fuse(c, &t);
    xm_opts_t o = {.methods = XM_ALL_METHODS_CORE};
    check_both(c, &t, &o);

    /* And the fused result against the reference. */
    xm_shape_t s = {(uint32_t)c->L, (uint32_t)c->H, (uint32_t)c->n, c->cls};
    xm_work_t *w = xm_work_new();
    xm_result_t res;
    xm_fused_t fin = {.mean = t.M, .pos = t.P, .sign = t.S, .importance = t.imp,
                      .confidence = t.conf, .ntargets = 1};
    o.methods = XM_ALL_METHODS_CORE & ~XM_BIT(XM_FLOW);
    cr_assert_eq(xm_explain_fused(w, &o, &s, XM_F32, &fin, &res), XM_OK);
    check_ref(c, &t, &res);
    xm_work_destroy(&w);
    free_trade(&t);
}

Test(fused, fused_equals_full_on_random_shapes_and_every_cls)
{
    uint64_t seed = 1;
    const int shapes[][3] = {{1, 1, 1}, {1, 1, 2}, {1, 2, 3}, {2, 3, 5}, {3, 8, 8}, {4, 8, 9},
                             {2, 4, 16}, {1, 7, 17}, {4, 8, 32}, {2, 5, 33}, {3, 2, 40}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const int L = shapes[k][0], H = shapes[k][1], n = shapes[k][2];
        for (int cls = -1; cls < n; cls++) {
            if (cls >= 0 && n < 2)
                continue;
            cfg_t c = {L, H, n, cls, seed++};
            check_cfg(&c);
        }
    }
}

Test(fused, fused_equals_full_on_many_random_shapes)
{
    rng_t r;
    rng_seed(&r, 77);
    for (int k = 0; k < 150; k++) {
        int L = 1 + (int)(rng_uniform(&r) * 5), H = 1 + (int)(rng_uniform(&r) * 12);
        int n = 1 + (int)(rng_uniform(&r) * 48);
        int cls = (int)(rng_uniform(&r) * (n + 1)) - 1;
        if (n < 2)
            cls = -1;
        cfg_t c = {L, H, n, cls, 1000 + (uint64_t)k};
        check_cfg(&c);
    }
}

Test(fused, variants_equal_full_discard_start_resnorm_targets)
{
    const int shapes[][4] = {{3, 4, 12, 11}, {3, 4, 12, -1}, {4, 8, 32, 31}, {2, 3, 7, 0},
                             {5, 2, 9, 4}, {1, 8, 16, -1}};
    uint64_t seed = 500;
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        cfg_t c = {shapes[k][0], shapes[k][1], shapes[k][2], shapes[k][3], seed++};
        for (int T = 1; T <= 3; T++) {
            trade_t t;
            make_trade(&c, T, &t);
            const double rho[] = {0.0, 0.3, 0.9, 1.0};
            for (size_t q = 0; q < 4; q++)
                for (int start = -c.L; start < c.L; start += (c.L > 2 ? 2 : 1))
                    for (int rn = 0; rn < 2; rn++)
                        for (int df = 0; df < 2; df++) {
                            xm_opts_t o = {.methods = XM_ALL_METHODS_CORE, .discard = rho[q],
                                           .discard_flow = df, .start_layer = start,
                                           .grad_resnorm = rn};
                            check_both(&c, &t, &o);
                        }
            free_trade(&t);
        }
    }
}

/* 16-bit fused tensors: the methods of the values they hold. rollout and
   the rest read M as a one-head attention; grad_rollout reads P as the
   clamped product with G = 1 (P >= 0), the signed one S with G = 1. */
static void
check_half(const cfg_t *c, int dtype)
{
    trade_t t;
    make_trade(c, 1, &t);
    const size_t lnn = (size_t)c->L * c->n * c->n;
    double *M = malloc(lnn * sizeof(double)), *P = malloc(lnn * sizeof(double));
    double *S = malloc(lnn * sizeof(double)), *one = malloc(lnn * sizeof(double));
    uint16_t *Mb = malloc(lnn * 2), *Pb = malloc(lnn * 2), *Sb = malloc(lnn * 2);
    for (size_t k = 0; k < lnn; k++) {
        M[k] = t.M[k];
        P[k] = t.P[k];
        S[k] = t.S[k];
        one[k] = 1.0;
    }
    encode_dtype(dtype, M, lnn, Mb, M);
    encode_dtype(dtype, P, lnn, Pb, P);
    encode_dtype(dtype, S, lnn, Sb, S);
    xm_shape_t s = {(uint32_t)c->L, (uint32_t)c->H, (uint32_t)c->n, c->cls};
    xm_work_t *w = xm_work_new();
    xm_result_t res;
    xm_opts_t o = {.methods = XM_ALL_METHODS_CORE & ~XM_BIT(XM_FLOW)};
    xm_fused_t fin = {.mean = Mb, .pos = Pb, .sign = Sb, .importance = t.imp,
                      .confidence = t.conf, .ntargets = 1};
    cr_assert_eq(xm_explain_fused(w, &o, &s, (xm_dtype_t)dtype, &fin, &res), XM_OK);
    double *want = malloc(sizeof(double) * c->n);
    int nf = c->n - (c->cls >= 0);
    ref_rollout(c->L, 1, c->n, c->cls, M, REF_MEAN, want);
    expect_ref("rollout", c, res.attr[XM_ROLLOUT], want, nf, REL);
    ref_attn_mean(c->L, 1, c->n, c->cls, M, want);
    expect_ref("attn_mean", c, res.attr[XM_ATTN_MEAN], want, nf, REL);
    ref_first_layer(c->L, 1, c->n, c->cls, M, REF_MEAN, want);
    expect_ref("first_layer", c, res.attr[XM_FIRST_LAYER], want, nf, REL);
    ref_diag(c->L, 1, c->n, c->cls, M, want);
    expect_ref("diag", c, res.attr[XM_DIAG], want, nf, REL);
    ref_grad_rollout_v(c->L, 1, c->n, c->cls, P, one, true, false, 0, want);
    expect_ref("grad_rollout", c, res.attr[XM_GRAD_ROLLOUT], want, nf, REL);
    ref_grad_rollout_v(c->L, 1, c->n, c->cls, S, one, false, false, 0, want);
    expect_ref("grad_rollout_signed", c, res.attr[XM_GRAD_ROLLOUT_SIGNED], want, nf, REL);
    /* And close to the f32 result: the rounding of a 16-bit type. */
    ref_rollout(c->L, c->H, c->n, c->cls, t.A, REF_MEAN, want);
    expect_ref("rollout vs full f32", c, res.attr[XM_ROLLOUT], want, nf, dtype == 1 ? 1e-2 : 5e-2);
    free(want); free(M); free(P); free(S); free(one); free(Mb); free(Pb); free(Sb);
    xm_work_destroy(&w);
    free_trade(&t);
}

Test(fused, f16_and_bf16_explain_the_values_they_hold)
{
    uint64_t seed = 900;
    const int shapes[][3] = {{1, 2, 2}, {2, 4, 9}, {4, 8, 32}, {3, 3, 17}};
    for (int dt = 1; dt <= 2; dt++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
            for (int cls = -1; cls < shapes[k][2]; cls += (shapes[k][2] > 9 ? 7 : 1)) {
                cfg_t c = {shapes[k][0], shapes[k][1], shapes[k][2], cls, seed++};
                check_half(&c, dt);
            }
}

Test(fused, methods_without_heads_refused_or_skipped)
{
    cfg_t c = {3, 4, 8, 7, 42};
    trade_t t;
    make_trade(&c, 1, &t);
    xm_shape_t s = {3, 4, 8, 7};
    xm_work_t *w = xm_work_new();
    xm_result_t res;
    xm_fused_t fin = {.mean = t.M, .pos = t.P, .importance = t.imp, .confidence = t.conf,
                      .ntargets = 1};
    for (int f = XM_FUSE_MAX; f <= XM_FUSE_MIN; f++) {
        xm_opts_t o = {.methods = XM_ALL_METHODS, .fusion = (xm_fusion_t)f};
        cr_assert_eq(xm_explain_fused(w, &o, &s, XM_F32, &fin, &res), XM_EHEADS);
        cr_assert_eq(res.computed, 0u);
        cr_assert_null(res.attr[XM_ROLLOUT]);
    }
    /* lrp_rollout needs every head's relevance; signed needs S. */
    xm_opts_t o = {.methods = XM_ALL_METHODS_CORE};
    cr_assert_eq(xm_explain_fused(w, &o, &s, XM_F32, &fin, &res), XM_OK);
    cr_assert_eq(res.computed,
                 XM_ALL_METHODS_CORE & ~XM_BIT(XM_LRP_ROLLOUT) & ~XM_BIT(XM_GRAD_ROLLOUT_SIGNED));
    /* Without P: no gradient methods, no importance. */
    fin.pos = NULL;
    fin.importance = NULL;
    cr_assert_eq(xm_explain_fused(w, &o, &s, XM_F32, &fin, &res), XM_OK);
    cr_assert_eq(res.computed & XM_GRAD_METHODS, 0u);
    cr_assert_null(res.head_importance);
    cr_assert_not_null(res.head_confidence);
    /* Inconsistent inputs are refused. */
    xm_fused_t bad = {.mean = t.M, .pos = t.P, .confidence = t.conf, .ntargets = 1};
    cr_assert_eq(xm_explain_fused(w, &o, &s, XM_F32, &bad, &res), XM_EARG);
    bad = (xm_fused_t){.mean = t.M, .sign = t.S, .confidence = t.conf, .ntargets = 1};
    cr_assert_eq(xm_explain_fused(w, &o, &s, XM_F32, &bad, &res), XM_EARG);
    bad = (xm_fused_t){.mean = t.M, .pos = t.P, .importance = t.imp, .confidence = t.conf};
    cr_assert_eq(xm_explain_fused(w, &o, &s, XM_F32, &bad, &res), XM_EARG);
    bad = (xm_fused_t){.mean = t.M};
    cr_assert_eq(xm_explain_fused(w, &o, &s, XM_F32, &bad, &res), XM_EARG);
    xm_work_destroy(&w);
    free_trade(&t);
}

Test(fused, nonfinite_anywhere_is_named)
{
    cfg_t c = {2, 3, 6, 5, 43};
    xm_shape_t s = {2, 3, 6, 5};
    const size_t lnn = 2 * 36, lh = 6;
    xm_opts_t o = {.methods = XM_ALL_METHODS};
    xm_work_t *w = xm_work_new();
    xm_result_t res;
    const float vals[] = {NAN, INFINITY, -INFINITY};
    for (int which = 0; which < 4; which++)
        for (int v = 0; v < 3; v++) {
            trade_t t;
            make_trade(&c, 1, &t);
            float *arr = which == 0 ? t.M : which == 1 ? t.P : which == 2 ? t.imp : t.conf;
            size_t cnt = which < 2 ? lnn : lh;
            arr[(size_t)(v * 7 + which) % cnt] = vals[v];
            xm_fused_t fin = {.mean = t.M, .pos = t.P, .importance = t.imp, .confidence = t.conf,
                              .ntargets = 1};
            cr_assert_eq(xm_explain_fused(w, &o, &s, XM_F32, &fin, &res), XM_ENONFINITE,
                         "input %d value %d", which, v);
            free_trade(&t);
        }
    /* With the discard ratio too: a NaN never reaches the selection. */
    trade_t t;
    make_trade(&c, 1, &t);
    t.M[3] = NAN;
    xm_fused_t fin = {.mean = t.M, .confidence = t.conf};
    o.discard = 0.5;
    cr_assert_eq(xm_explain_fused(w, &o, &s, XM_F32, &fin, &res), XM_ENONFINITE);
    free_trade(&t);
    xm_work_destroy(&w);
}
