/*  Tests of the variants of MATH.md ("Variants asked for by users of the
    published tools") in core/xmath and core/groups: colsum, the discard
    ratio, the start layer, grad_rollout_signed, lrp_rollout, several
    targets per trade and feature groups, against the float64 reference
    (ref.c), against vectors written by the numpy reference (ref.py), and
    on the edge cases where a variant must equal the plain method.  */
#include "flow.h"
#include "groups.h"
#include "ref.h"
#include "support.h"
#include "xmath.h"

#include <criterion/criterion.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REL 1e-5
#define FLOOR 1e-30

typedef struct {
    int L, H, n, cls, dtype, T;
    double temp;
    uint64_t seed;
} cfg_t;

typedef struct {
    size_t cnt;             /* L*H*n*n */
    double *A, *G, *Rel;    /* exact values the library sees; G, Rel: T blocks */
    double *Gabs, *Aabs;    /* |G|, |A| (the magnitude scale of signed results) */
    void *ab, *gb, *rb;     /* wire bytes */
} trade_t;

static void
make_trade(const cfg_t *c, trade_t *t)
{
    size_t cnt = (size_t)c->L * c->H * c->n * c->n, es = c->dtype == 0 ? 4 : 2;
    rng_t r;
    rng_seed(&r, c->seed);
    t->cnt = cnt;
    t->A = malloc(cnt * sizeof(double));
    t->Aabs = malloc(cnt * sizeof(double));
    t->G = malloc(cnt * c->T * sizeof(double));
    t->Gabs = malloc(cnt * c->T * sizeof(double));
    t->Rel = malloc(cnt * c->T * sizeof(double));
    t->ab = malloc(cnt * es);
    t->gb = malloc(cnt * c->T * es);
    t->rb = malloc(cnt * c->T * es);
    for (size_t q = 0; q < (size_t)c->L * c->H; q++)
        gen_attention(&r, t->A + q * c->n * c->n, c->n, c->n, c->temp * (0.3 + rng_uniform(&r)));
    gen_gradient(&r, t->G, cnt * c->T, 2.0);
    /* relevances: mostly positive, some negative, as LRP gives */
    gen_gradient(&r, t->Rel, cnt * c->T, 0.3);
    for (size_t k = 0; k < cnt * c->T; k++)
        t->Rel[k] += 0.2 / c->n;
    encode_dtype(c->dtype, t->A, cnt, t->ab, t->A);
    encode_dtype(c->dtype, t->G, cnt * c->T, t->gb, t->G);
    encode_dtype(c->dtype, t->Rel, cnt * c->T, t->rb, t->Rel);
    for (size_t k = 0; k < cnt; k++)
        t->Aabs[k] = fabs(t->A[k]);
    for (size_t k = 0; k < cnt * c->T; k++)
        t->Gabs[k] = fabs(t->G[k]);
}

static void
free_trade(trade_t *t)
{
    free(t->A); free(t->Aabs); free(t->G); free(t->Gabs); free(t->Rel);
    free(t->ab); free(t->gb); free(t->rb);
}

#define CFG_FMT "L=%d H=%d n=%d cls=%d dtype=%d T=%d seed=%llu"
#define CFG_ARGS(c) (c)->L, (c)->H, (c)->n, (c)->cls, (c)->dtype, (c)->T, (unsigned long long)(c)->seed

/* |got - want| <= REL * (|want| + scale) + FLOOR per entry; scale NULL
   for the plain relative test, which every method's vector meets, signed
   or not (the floor only lets an exact 0 come out as 0 or a denormal).
   A scale is only for feature groups' sums of published float32 values,
   which cancel in their own right. */
static void
expect_vec(const char *what, const cfg_t *c, const xm_opts_t *o, int t, const float *got,
           const double *want, const double *scale, int nf)
{
    for (int k = 0; k < nf; k++) {
        double tol = REL * (fabs(want[k]) + (scale ? scale[k] : 0.0)) + FLOOR;
        cr_assert(fabs(got[k] - want[k]) <= tol,
                  "%s target %d " CFG_FMT " rho=%g start=%d fusion=%d resnorm=%d: [%d] got %.9g "
                  "want %.9g (tol %.3g)",
                  what, t, CFG_ARGS(c), o->discard, o->start_layer, o->fusion, o->grad_resnorm, k,
                  got[k], want[k], tol);
    }
}

static int
ref_fusion(xm_fusion_t f)
{
    return f == XM_FUSE_MEAN ? REF_MEAN : f == XM_FUSE_MAX ? REF_MAX : REF_MIN;
}

/* The magnitude scale of a signed gradient-family readout: the same
   readout computed from |G| and |X| (every product counted with its
   absolute value), and, with the residual normalisation, the bound that
   division by a row sum close to 0 implies. */
static void
signed_scale(const cfg_t *c, const double *X, const double *Xabs, const double *G,
             const double *Gabs, bool resnorm, int start, double *scale)
{
    int n = c->n;
    if (!resnorm) {
        ref_grad_rollout_v(c->L, c->H, n, c->cls, Xabs, Gabs, false, false, start, scale);
        return;
    }
    double *R = malloc(sizeof(double) * n * n), *Ra = malloc(sizeof(double) * n * n);
    ref_grad_rollout_matrix_v(c->L, c->H, n, X, G, false, false, start, R);
    ref_grad_rollout_matrix_v(c->L, c->H, n, Xabs, Gabs, false, false, start, Ra);
    double *acc = calloc(n, sizeof(double));
    int i0 = c->cls >= 0 ? c->cls : 0, i1 = c->cls >= 0 ? c->cls + 1 : n;
    for (int i = i0; i < i1; i++) {
        double S = 0, Sa = 0;
        for (int j = 0; j < n; j++) {
            S += R[i * n + j] - (i == j);
            Sa += Ra[i * n + j] - (i == j);
        }
        for (int j = 0; j < n; j++) {
            double out = S != 0 ? (R[i * n + j] - (i == j)) / S : 0;
            double a = Ra[i * n + j] - (i == j);
            acc[j] += S != 0 ? 4 * (a + fabs(out) * Sa) / fabs(S) : 0;
        }
    }
    for (int j = 0, k = 0; j < n; j++)
        if (j != c->cls)
            scale[k++] = acc[j] / (i1 - i0);
    free(acc);
    free(R);
    free(Ra);
}

/* A random grouping of nf readout positions into features. */
static int
random_groups(rng_t *r, int nf, int *feat_of)
{
    int nfeat = 0;
    for (int k = 0; k < nf; k++) {
        if (nfeat > 0 && rng_uniform(r) < 0.4)
            feat_of[k] = (int)(rng_next(r) % (uint64_t)nfeat);
        else
            feat_of[k] = nfeat++;
    }
    return nfeat;
}

static void
check_groups(const char *what, const cfg_t *c, const xm_opts_t *o, const xm_groups_t *g,
             const int *feat_of, const float *got, const double *want, const double *scale, int nf)
{
    float *gf = malloc(sizeof(float) * nf);
    double *gw = malloc(sizeof(double) * nf), *gs = malloc(sizeof(double) * nf);
    xm_groups_apply(g, got, 1, gf);
    ref_groups(nf, feat_of, (int)g->nfeat, want, gw);
    if (scale)
        ref_groups(nf, feat_of, (int)g->nfeat, scale, gs);
    else {
        /* sums of non-negative values: the sum of magnitudes is the sum */
        for (uint32_t f = 0; f < g->nfeat; f++)
            gs[f] = 0;
    }
    char name[64];
    snprintf(name, sizeof name, "%s grouped", what);
    expect_vec(name, c, o, 0, gf, gw, gs, (int)g->nfeat);
    free(gf);
    free(gw);
    free(gs);
}

/* Every core method with options `o` on one configuration, against the
   reference; `flow` adds attention flow (with o->discard_flow, on the
   discarded capacities). */
static void
check_cfg(const cfg_t *c, const xm_opts_t *o, bool flow)
{
    trade_t t;
    make_trade(c, &t);
    xm_shape_t s = {(uint32_t)c->L, (uint32_t)c->H, (uint32_t)c->n, c->cls};
    const int nf = (int)xm_nfeat(&s), n = c->n, L = c->L, H = c->H;
    const size_t nn = (size_t)n * n;
    xm_work_t *w = xm_work_new();
    xm_input_t in = {t.ab, t.gb, t.rb, (uint32_t)c->T};
    xm_result_t res;
    xm_opts_t oo = *o;
    oo.methods = XM_ALL_METHODS_CORE & ~(flow ? 0u : XM_BIT(XM_FLOW));
    cr_assert_eq(xm_explain_ex(w, &oo, &s, (xm_dtype_t)c->dtype, &in, &res), XM_OK, CFG_FMT,
                 CFG_ARGS(c));
    cr_assert_eq(res.computed, oo.methods);
    cr_assert_eq(res.ntargets, (uint32_t)c->T);

    double *want = malloc(sizeof(double) * n), *scale = malloc(sizeof(double) * n);
    int rf = ref_fusion(o->fusion);
    rng_t gr;
    rng_seed(&gr, c->seed ^ 0x5eed);
    int *feat_of = malloc(sizeof(int) * nf);
    int nfeat = random_groups(&gr, nf, feat_of);
    uint32_t *fo = malloc(sizeof(uint32_t) * nf);
    for (int k = 0; k < nf; k++)
        fo[k] = (uint32_t)feat_of[k];
    xm_groups_t g;
    cr_assert_eq(xm_groups_from_map((uint32_t)nf, fo, (uint32_t)nfeat, &g), XM_GROUP_OK);

    ref_rollout_v(L, H, n, c->cls, t.A, rf, o->discard, o->start_layer, want);
    expect_vec("rollout", c, o, 0, res.attr[XM_ROLLOUT], want, NULL, nf);
    check_groups("rollout", c, o, &g, feat_of, res.attr[XM_ROLLOUT], want, NULL, nf);
    ref_colsum(L, H, n, c->cls, t.A, rf, want);
    expect_vec("colsum", c, o, 0, res.attr[XM_COLSUM], want, NULL, nf);
    check_groups("colsum", c, o, &g, feat_of, res.attr[XM_COLSUM], want, NULL, nf);
    /* the options leave the other methods alone */
    ref_first_layer(L, H, n, c->cls, t.A, rf, want);
    expect_vec("first_layer", c, o, 0, res.attr[XM_FIRST_LAYER], want, NULL, nf);
    ref_attn_mean(L, H, n, c->cls, t.A, want);
    expect_vec("attn_mean", c, o, 0, res.attr[XM_ATTN_MEAN], want, NULL, nf);
    ref_diag(L, H, n, c->cls, t.A, want);
    expect_vec("diag", c, o, 0, res.attr[XM_DIAG], want, NULL, nf);

    /* per-layer Â of rollout and flow, and the full matrix from start */
    double *C = malloc(sizeof(double) * L * nn), *R = malloc(sizeof(double) * nn);
    float *M = malloc(nn * 4), *Tm = malloc(nn * 4);
    uint32_t s0;
    cr_assert_eq(xm_start_layer(o->start_layer, (uint32_t)L, &s0), 0);
    const float *rl = xm_work_layers(w, XM_ROLLOUT, 0);
    cr_assert_not_null(rl);
    xm_rollout_matrix((uint32_t)L - s0, (uint32_t)n, rl + s0 * nn, M, Tm);
    ref_rollout_matrix_v(L, H, n, c->cls, t.A, rf, o->discard, o->start_layer, R);
    for (size_t q = 0; q < nn; q++)
        cr_assert(close_enough(M[q], R[q], REL, 1e-12), "rollout matrix [%zu] %g vs %g " CFG_FMT, q,
                  M[q], R[q], CFG_ARGS(c));
    ref_flow_capacities_v(L, H, n, c->cls, t.A, o->discard_flow ? o->discard : 0.0, C);
    const float *fl = xm_work_flow_layers(w);
    for (size_t q = 0; q < L * nn; q++)
        cr_assert(close_enough(fl[q], C[q], REL, 1e-12), "flow capacity [%zu] %g vs %g " CFG_FMT, q,
                  fl[q], C[q], CFG_ARGS(c));
    if (flow) {
        /* flow on the reference capacities (flow itself is tested in test_flow) */
        float *cf = malloc(sizeof(float) * L * nn), *fo2 = malloc(sizeof(float) * n);
        for (size_t q = 0; q < L * nn; q++)
            cf[q] = (float)C[q];
        flow_work_t *fw = flow_work_new();
        cr_assert_eq(flow_compute(fw, (uint32_t)L, (uint32_t)n, c->cls, cf, fo2), 0);
        for (int k = 0; k < nf; k++)
            cr_assert(close_enough(res.attr[XM_FLOW][k], fo2[k], REL, 1e-12), "flow [%d] %g vs %g", k,
                      res.attr[XM_FLOW][k], fo2[k]);
        flow_work_destroy(&fw);
        free(cf);
        free(fo2);
    }

    /* the gradient family, target by target */
    double *imp = malloc(sizeof(double) * L * H), *conf = malloc(sizeof(double) * L * H);
    for (int tg = 0; tg < c->T; tg++) {
        const double *Gt = t.G + tg * t.cnt, *Rt = t.Rel + tg * t.cnt;
        const float *got = res.attr[XM_GRAD_ROLLOUT] + (size_t)tg * nf;
        ref_grad_rollout_v(L, H, n, c->cls, t.A, Gt, true, o->grad_resnorm, o->start_layer, want);
        expect_vec("grad_rollout", c, o, tg, got, want, NULL, nf);
        check_groups("grad_rollout", c, o, &g, feat_of, got, want, NULL, nf);

        got = res.attr[XM_GRAD_ROLLOUT_SIGNED] + (size_t)tg * nf;
        ref_grad_rollout_v(L, H, n, c->cls, t.A, Gt, false, o->grad_resnorm, o->start_layer, want);
        expect_vec("grad_rollout_signed", c, o, tg, got, want, NULL, nf);
        /* a group sums its members' float32 values: relative to |members| */
        for (int k = 0; k < nf; k++)
            scale[k] = fabs(want[k]);
        check_groups("grad_rollout_signed", c, o, &g, feat_of, got, want, scale, nf);

        got = res.attr[XM_LRP_ROLLOUT] + (size_t)tg * nf;
        ref_grad_rollout_v(L, H, n, c->cls, Rt, Gt, true, o->grad_resnorm, o->start_layer, want);
        expect_vec("lrp_rollout", c, o, tg, got, want, NULL, nf);

        ref_head_stats(L, H, n, t.A, Gt, imp, conf);
        for (int k = 0; k < L * H; k++) {
            double sc = 0;
            for (size_t q = 0; q < nn; q++)
                sc += fabs(t.A[k * nn + q] * Gt[k * nn + q]);
            float gi = res.head_importance[(size_t)tg * L * H + k];
            cr_assert(close_enough(gi, imp[k], 0, REL * sc + 1e-12), "importance t=%d [%d] %g vs %g",
                      tg, k, gi, imp[k]);
        }

        /* the full matrices of the clamped methods from their layers,
           with the residual normalisation when asked for */
        static const struct { int m; bool rel; } gm[] = {{XM_GRAD_ROLLOUT, false}, {XM_LRP_ROLLOUT, true}};
        for (int q = 0; q < 2; q++) {
            const float *gl = xm_work_layers(w, (xm_method_t)gm[q].m, (uint32_t)tg);
            cr_assert_not_null(gl);
            xm_grad_rollout_matrix((uint32_t)L - s0, (uint32_t)n, gl + s0 * nn, o->grad_resnorm, M,
                                   Tm);
            ref_grad_rollout_matrix_v(L, H, n, gm[q].rel ? Rt : t.A, Gt, true, o->grad_resnorm,
                                      o->start_layer, R);
            for (size_t e = 0; e < nn; e++)
                cr_assert(close_enough(M[e], R[e], REL, FLOOR), "%s matrix t=%d [%zu] %g vs %g " CFG_FMT,
                          xm_method_name((xm_method_t)gm[q].m), tg, e, M[e], R[e], CFG_ARGS(c));
        }
    }
    cr_assert_null(xm_work_layers(w, XM_GRAD_ROLLOUT, (uint32_t)c->T));

    xm_groups_free(&g);
    free(fo); free(feat_of); free(imp); free(conf); free(C); free(R); free(M); free(Tm);
    free(want); free(scale);
    xm_work_destroy(&w);
    free_trade(&t);
}

static int
pick_cls(int v, int n)
{
    switch (v % 4) {
    case 0: return -1;
    case 1: return 0;
    case 2: return n - 1;
    default: return n / 2;
    }
}

Test(variants, random_shapes_all_dtypes_all_cls)
{
    static const int ns[] = {2, 3, 5, 8, 9, 16, 17, 31, 33, 64, 100, 128};
    static const int Ls[] = {1, 2, 3, 4, 6};
    static const int Hs[] = {1, 2, 3, 8};
    static const double rhos[] = {0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0};
    rng_t r;
    rng_seed(&r, 2024);
    int count = 0;
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
        for (int v = 0; v < 12; v++) {
            cfg_t c = {.n = ns[a]};
            /* large n: the O(L n^3) reference is slow, a few corners only */
            if (c.n >= 100 && v >= 4)
                continue;
            c.L = Ls[(a + v) % 5];
            c.H = Hs[(a * 3 + v) % 4];
            c.cls = pick_cls(v, c.n);
            if (c.cls >= 0 && c.n < 2)
                continue;
            c.dtype = (v / 4 + (int)a) % 3;
            c.T = 1 + (v % 3);
            c.temp = v % 2 ? 8.0 : 1.0;
            c.seed = rng_next(&r);
            xm_opts_t o = {0};
            o.fusion = (xm_fusion_t)(rng_next(&r) % 3);
            o.grad_resnorm = rng_next(&r) % 3 == 0;
            o.discard = rhos[rng_next(&r) % 8];
            o.discard_flow = rng_next(&r) % 2;
            o.start_layer = (int32_t)(rng_next(&r) % (uint64_t)(2 * c.L)) - c.L;
            check_cfg(&c, &o, c.n <= 17);
            count++;
        }
    cr_assert_geq(count, 110);
}

/* Many random seeds over L 1..6, H 1..8, n 2..64, every CLS position,
   dtype and option, the residual normalisation in half of them (without
   CLS too): every vector to the plain 1e-5 relative of expect_vec. */
Test(variants, many_random_seeds_plain_relative)
{
    static const double rhos[] = {0.0, 0.0, 0.1, 0.35, 0.9, 1.0};
    rng_t r;
    rng_seed(&r, 77);
    for (int v = 0; v < 160; v++) {
        cfg_t c;
        c.L = 1 + (int)(rng_next(&r) % 6);
        c.H = 1 + (int)(rng_next(&r) % 8);
        c.n = 2 + (int)(rng_next(&r) % 63);
        c.cls = pick_cls(v, c.n);
        c.dtype = (v / 4) % 3;
        c.T = 1 + v % 3;
        c.temp = (double[]){1.0, 5.0, 0.3}[v % 3];
        c.seed = rng_next(&r);
        xm_opts_t o = {0};
        o.fusion = (xm_fusion_t)((v / 12) % 3);
        o.grad_resnorm = (v / 2) % 2;
        o.discard = rhos[rng_next(&r) % 6];
        o.start_layer = (int32_t)(rng_next(&r) % (uint64_t)(2 * c.L)) - c.L;
        check_cfg(&c, &o, false);
    }
}

/* Every CLS position of one shape, every dtype, every fusion. */
Test(variants, every_cls_position)
{
    for (int cls = -1; cls < 7; cls++)
        for (int dt = 0; dt < 3; dt++)
            for (int f = 0; f < 3; f++) {
                cfg_t c = {3, 2, 7, cls, dt, 2, 2.0, (uint64_t)(100 + cls * 9 + dt * 3 + f)};
                xm_opts_t o = {.fusion = (xm_fusion_t)f, .discard = 0.3 + 0.2 * f,
                               .discard_flow = f == 1, .start_layer = f - 1, .grad_resnorm = dt == 1};
                check_cfg(&c, &o, true);
            }
}

/* ---- edge cases ---------------------------------------------------------- */

static void
run(const cfg_t *c, trade_t *t, const xm_opts_t *o, uint32_t T, xm_work_t *w, xm_result_t *res)
{
    xm_shape_t s = {(uint32_t)c->L, (uint32_t)c->H, (uint32_t)c->n, c->cls};
    xm_input_t in = {t->ab, t->gb, t->rb, T};
    cr_assert_eq(xm_explain_ex(w, o, &s, (xm_dtype_t)c->dtype, &in, res), XM_OK);
}

static void
same_bits(const char *what, const float *a, const float *b, size_t count)
{
    cr_assert_not_null(a, "%s: missing", what);
    cr_assert_not_null(b, "%s: missing", what);
    for (size_t k = 0; k < count; k++)
        cr_assert(memcmp(&a[k], &b[k], 4) == 0, "%s [%zu]: %.9g vs %.9g", what, k, a[k], b[k]);
}

/* Zero options, ρ whose (int)(ρ m) is 0, s = 0 and s = -L are all the
   plain methods, bit for bit; T = 1 through xm_explain_ex is xm_explain. */
Test(variants, neutral_options_are_the_plain_path)
{
    for (int cls = -1; cls < 2; cls++)
        for (int dt = 0; dt < 3; dt++) {
            cfg_t c = {4, 3, 12, cls, dt, 1, 2.0, (uint64_t)(7 + dt + 3 * (cls + 1))};
            trade_t t;
            make_trade(&c, &t);
            xm_shape_t s = {4, 3, 12, cls};
            uint32_t nf = xm_nfeat(&s);
            xm_work_t *w0 = xm_work_new(), *w1 = xm_work_new();
            for (int f = 0; f < 3; f++) {
                xm_opts_t plain = {.methods = XM_CLASSIC_METHODS, .fusion = (xm_fusion_t)f,
                                   .grad_resnorm = f == 2};
                xm_result_t a, b;
                cr_assert_eq(xm_explain(w0, &plain, &s, (xm_dtype_t)dt, t.ab, t.gb, &a), XM_OK);
                xm_opts_t vars[] = {plain, plain, plain, plain, plain};
                vars[1].discard = 0.9 / nf;      /* (int)(ρ m) = 0 */
                vars[2].start_layer = 0;
                vars[3].start_layer = -4;
                vars[4].discard_flow = true;     /* without a discard: nothing */
                for (size_t v = 0; v < sizeof vars / sizeof *vars; v++) {
                    run(&c, &t, &vars[v], 1, w1, &b);
                    cr_assert_eq(b.computed, a.computed);
                    for (int m = 0; m < XM_NMETHODS; m++)
                        if (XM_CLASSIC_METHODS & XM_BIT(m))
                            same_bits(xm_method_name((xm_method_t)m), a.attr[m], b.attr[m], nf);
                    same_bits("importance", a.head_importance, b.head_importance, 12);
                    same_bits("confidence", a.head_confidence, b.head_confidence, 12);
                    same_bits("rollout layers", xm_work_rollout_layers(w0), xm_work_rollout_layers(w1),
                              4 * 144);
                    same_bits("grad layers", xm_work_grad_layers(w0), xm_work_grad_layers(w1), 4 * 144);
                }
            }
            xm_work_destroy(&w0);
            xm_work_destroy(&w1);
            free_trade(&t);
        }
}

/* A target repeated gives the same vectors, whether it goes through the
   fused pass (target 0) or a pass of its own. */
Test(variants, repeated_target_gives_identical_results)
{
    for (int dt = 0; dt < 3; dt++) {
        cfg_t c = {3, 4, 10, 9, dt, 3, 2.0, (uint64_t)(31 + dt)};
        trade_t t;
        make_trade(&c, &t);
        size_t bytes = t.cnt * (dt ? 2 : 4);
        memcpy((uint8_t *)t.gb + 2 * bytes, t.gb, bytes);     /* target 2 = target 0 */
        memcpy((uint8_t *)t.rb + 2 * bytes, t.rb, bytes);
        xm_work_t *w = xm_work_new();
        xm_opts_t o = {.methods = XM_ALL_METHODS_CORE & ~XM_BIT(XM_FLOW), .start_layer = 1};
        xm_result_t res;
        run(&c, &t, &o, 3, w, &res);
        for (int m = XM_GRAD_ROLLOUT; m <= XM_LRP_ROLLOUT; m++) {
            if (!(XM_GRAD_METHODS & XM_BIT(m)))
                continue;
            same_bits(xm_method_name((xm_method_t)m), res.attr[m], res.attr[m] + 2 * 9, 9);
        }
        for (int k = 0; k < 12; k++)
            cr_assert(close_enough(res.head_importance[k], res.head_importance[24 + k], 1e-6, 0),
                      "importance %d", k);
        /* and T = 1 of the same trade is target 0 of T = 3 */
        xm_result_t one;
        xm_work_t *w1 = xm_work_new();
        run(&c, &t, &o, 1, w1, &one);
        for (int m = 0; m < XM_NMETHODS_CORE; m++)
            if (one.attr[m])
                same_bits(xm_method_name((xm_method_t)m), one.attr[m], res.attr[m], 9);
        same_bits("importance", one.head_importance, res.head_importance, 12);
        xm_work_destroy(&w);
        xm_work_destroy(&w1);
        free_trade(&t);
    }
}

/* s = -1 is the last layer alone: the same as a one-layer trade of it. */
Test(variants, start_minus_one_is_the_last_layer_alone)
{
    for (int cls = -1; cls < 1; cls++) {
        cfg_t c = {5, 2, 9, cls, 0, 1, 2.0, (uint64_t)(55 + cls)};
        trade_t t;
        make_trade(&c, &t);
        size_t per = t.cnt / 5 * 4;
        cfg_t c1 = c;
        c1.L = 1;
        trade_t t1 = {.cnt = t.cnt / 5};
        t1.ab = (uint8_t *)t.ab + 4 * per;
        t1.gb = (uint8_t *)t.gb + 4 * per;
        t1.rb = (uint8_t *)t.rb + 4 * per;
        xm_opts_t o = {.methods = XM_BIT(XM_ROLLOUT) | XM_GRAD_METHODS, .start_layer = -1,
                       .discard = 0.3};
        xm_opts_t o1 = o;
        o1.start_layer = 0;
        xm_work_t *w = xm_work_new(), *w1 = xm_work_new();
        xm_result_t a, b;
        run(&c, &t, &o, 1, w, &a);
        run(&c1, &t1, &o1, 1, w1, &b);
        uint32_t nf = cls >= 0 ? 8 : 9;
        same_bits("rollout", a.attr[XM_ROLLOUT], b.attr[XM_ROLLOUT], nf);
        same_bits("grad_rollout", a.attr[XM_GRAD_ROLLOUT], b.attr[XM_GRAD_ROLLOUT], nf);
        same_bits("signed", a.attr[XM_GRAD_ROLLOUT_SIGNED], b.attr[XM_GRAD_ROLLOUT_SIGNED], nf);
        same_bits("lrp", a.attr[XM_LRP_ROLLOUT], b.attr[XM_LRP_ROLLOUT], nf);
        xm_work_destroy(&w);
        xm_work_destroy(&w1);
        free_trade(&t);
    }
}

Test(variants, bad_options_are_refused)
{
    cfg_t c = {3, 2, 6, 0, 0, 2, 1.0, 5};
    trade_t t;
    make_trade(&c, &t);
    xm_shape_t s = {3, 2, 6, 0};
    xm_work_t *w = xm_work_new();
    xm_result_t res;
    xm_input_t in = {t.ab, t.gb, t.rb, 2};
    static const int32_t bad_starts[] = {3, 4, -4, -100, INT32_MAX, INT32_MIN};
    for (size_t k = 0; k < sizeof bad_starts / sizeof *bad_starts; k++) {
        xm_opts_t o = {.methods = XM_BIT(XM_ROLLOUT), .start_layer = bad_starts[k]};
        cr_assert_eq(xm_explain_ex(w, &o, &s, XM_F32, &in, &res), XM_EARG, "start %d", bad_starts[k]);
        cr_assert_eq(res.computed, 0u);
    }
    for (int32_t st = -3; st <= 2; st++) {
        xm_opts_t o = {.methods = XM_BIT(XM_ROLLOUT), .start_layer = st};
        cr_assert_eq(xm_explain_ex(w, &o, &s, XM_F32, &in, &res), XM_OK, "start %d", st);
    }
    static const double bad_rho[] = {-0.01, 1.0000001, 2, NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < sizeof bad_rho / sizeof *bad_rho; k++) {
        xm_opts_t o = {.methods = XM_BIT(XM_ROLLOUT), .discard = bad_rho[k]};
        cr_assert_eq(xm_explain_ex(w, &o, &s, XM_F32, &in, &res), XM_EARG, "rho %g", bad_rho[k]);
    }
    xm_opts_t o = {.methods = XM_ALL_METHODS_CORE};
    xm_input_t norel_grad = {t.ab, NULL, t.rb, 1}, zero_t = {t.ab, t.gb, NULL, 0};
    cr_assert_eq(xm_explain_ex(w, &o, &s, XM_F32, &norel_grad, &res), XM_EARG, "rel without grad");
    cr_assert_eq(xm_explain_ex(w, &o, &s, XM_F32, &zero_t, &res), XM_EARG, "grad with T = 0");
    xm_input_t huge = {t.ab, t.gb, NULL, UINT32_MAX};
    xm_shape_t big = {1u << 20, 1u << 10, 1u << 15, -1};
    cr_assert_eq(xm_explain_ex(w, &o, &big, XM_F32, &huge, &res), XM_EARG, "sizes overflow");
    /* without rel: lrp_rollout is skipped, the rest is computed */
    xm_input_t norel = {t.ab, t.gb, NULL, 2};
    cr_assert_eq(xm_explain_ex(w, &o, &s, XM_F32, &norel, &res), XM_OK);
    cr_assert_eq(res.computed, XM_ALL_METHODS_CORE & ~XM_BIT(XM_LRP_ROLLOUT));
    cr_assert_null(res.attr[XM_LRP_ROLLOUT]);
    cr_assert_null(xm_work_layers(w, XM_LRP_ROLLOUT, 0));
    /* without grad: no gradient method, no targets */
    xm_input_t nograd = {t.ab, NULL, NULL, 5};
    cr_assert_eq(xm_explain_ex(w, &o, &s, XM_F32, &nograd, &res), XM_OK);
    cr_assert_eq(res.computed, XM_ALL_METHODS_CORE & ~XM_GRAD_METHODS);
    cr_assert_eq(res.ntargets, 0u);
    cr_assert_null(res.head_importance);
    xm_work_destroy(&w);
    free_trade(&t);
}

Test(variants, nonfinite_targets_and_relevances_are_refused)
{
    const float bads[] = {NAN, INFINITY, -INFINITY};
    for (int dt = 0; dt < 3; dt++)
        for (int which = 0; which < 4; which++)
            for (size_t b = 0; b < 3; b++) {
                cfg_t c = {2, 2, 6, which % 2 ? -1 : 5, dt, 3, 1.0, 9};
                trade_t t;
                make_trade(&c, &t);
                size_t es = dt == 0 ? 4 : 2;
                /* which: 0 grad of target 2, 1 rel of target 0, 2 rel of
                   target 1, 3 attn with a discard */
                uint8_t *buf = which == 0 ? t.gb : which == 3 ? t.ab : t.rb;
                size_t pos = which == 0 ? 2 * t.cnt + 41 : which == 2 ? t.cnt + 3 : 17;
                double dummy;
                encode_dtype(dt, (double[]){bads[b]}, 1, buf + pos * es, &dummy);
                xm_shape_t s = {2, 2, 6, c.cls};
                xm_input_t in = {t.ab, t.gb, t.rb, 3};
                xm_opts_t o = {.methods = which == 3 ? XM_BIT(XM_ROLLOUT) : XM_GRAD_METHODS,
                               .discard = which == 3 ? 0.5 : 0.0};
                xm_work_t *w = xm_work_new();
                xm_result_t res;
                cr_assert_eq(xm_explain_ex(w, &o, &s, (xm_dtype_t)dt, &in, &res), XM_ENONFINITE,
                             "dtype %d case %d value %g accepted", dt, which, bads[b]);
                /* a relevance is checked even when lrp_rollout is not asked for */
                if (which == 1) {
                    o.methods = XM_BIT(XM_GRAD_ROLLOUT);
                    cr_assert_eq(xm_explain_ex(w, &o, &s, (xm_dtype_t)dt, &in, &res), XM_ENONFINITE);
                }
                xm_work_destroy(&w);
                free_trade(&t);
            }
}

/* ρ = 1 drops every candidate: with CLS, row cls of every Â is e_cls and
   rollout is 0 for every feature; without, Â = I and every column mean is
   1/n. ρ near 1 leaves exactly one candidate per row. */
Test(variants, discard_ratio_near_and_at_one)
{
    for (int cls = -1; cls < 8; cls += 4) {
        cfg_t c = {3, 2, 8, cls, 0, 1, 2.0, (uint64_t)(77 + cls)};
        trade_t t;
        make_trade(&c, &t);
        xm_opts_t o = {.methods = XM_BIT(XM_ROLLOUT), .discard = 1.0};
        xm_work_t *w = xm_work_new();
        xm_result_t res;
        run(&c, &t, &o, 1, w, &res);
        int nf = cls >= 0 ? 7 : 8;
        for (int k = 0; k < nf; k++)
            cr_assert_eq(res.attr[XM_ROLLOUT][k], cls >= 0 ? 0.0f : 0.125f, "rho=1 cls=%d [%d] = %g",
                         cls, k, res.attr[XM_ROLLOUT][k]);
        /* 0.99 * 7 = 6.93 -> 6 of 7 dropped; 0.99 * 8 -> 7 of 8 */
        o.discard = 0.99;
        run(&c, &t, &o, 1, w, &res);
        const float *Ah = xm_work_rollout_layers(w);
        for (int l = 0; l < 3; l++)
            for (int i = 0; i < 8; i++) {
                int left = 0;
                for (int j = 0; j < 8; j++)
                    left += j != cls && j != i && Ah[(l * 8 + i) * 8 + j] != 0.0f;
                /* the one kept candidate may be the diagonal, which I + keeps anyway */
                cr_assert_leq(left, 1, "layer %d row %d keeps %d off-diagonal candidates", l, i, left);
            }
        double want[8];
        ref_rollout_v(3, 2, 8, cls, t.A, REF_MEAN, 0.99, 0, want);
        for (int k = 0; k < nf; k++)
            cr_assert(close_enough(res.attr[XM_ROLLOUT][k], want[k], REL, 1e-12));
        xm_work_destroy(&w);
        free_trade(&t);
    }
}

/* Ties go to the lower column: a row of equal values loses its first k
   candidates; CLS is never one of them. */
Test(variants, discard_ties_go_to_the_lower_column)
{
    enum { n = 6 };
    float A[n * n];
    for (int i = 0; i < n * n; i++)
        A[i] = 1.0f / n;
    xm_work_t *w = xm_work_new();
    xm_result_t res;
    for (int cls = -1; cls < n; cls++) {
        xm_shape_t s = {1, 1, n, cls};
        xm_opts_t o = {.methods = XM_BIT(XM_ROLLOUT), .discard = 0.5};
        cr_assert_eq(xm_explain(w, &o, &s, XM_F32, A, NULL, &res), XM_OK);
        const float *Ah = xm_work_rollout_layers(w);
        int m = cls >= 0 ? n - 1 : n, k = m / 2;
        for (int i = 0; i < n; i++) {
            int dropped = 0;
            for (int j = 0; j < n; j++) {
                if (j == cls)
                    continue;
                bool drop = dropped < k;
                dropped++;
                float v = Ah[i * n + j];
                if (j == i)
                    cr_assert_gt(v, 0.0f);
                else if (drop)
                    cr_assert_eq(v, 0.0f, "cls=%d row %d column %d kept", cls, i, j);
                else
                    cr_assert_gt(v, 0.0f, "cls=%d row %d column %d dropped", cls, i, j);
            }
            if (cls >= 0)
                cr_assert_gt(Ah[i * n + cls], 0.0f, "CLS column dropped");
        }
    }
    xm_work_destroy(&w);
}

/* colsum with mean fusion: every row sums to 1, so the column sums add up
   to n, less what CLS receives. */
Test(variants, colsum_adds_up_to_n)
{
    cfg_t c = {2, 4, 11, -1, 0, 1, 2.0, 3};
    trade_t t;
    make_trade(&c, &t);
    xm_shape_t s = {2, 4, 11, -1};
    xm_opts_t o = {.methods = XM_BIT(XM_COLSUM)};
    xm_work_t *w = xm_work_new();
    xm_result_t res;
    cr_assert_eq(xm_explain(w, &o, &s, XM_F32, t.ab, NULL, &res), XM_OK);
    double sum = 0;
    for (int k = 0; k < 11; k++)
        sum += res.attr[XM_COLSUM][k];
    cr_assert(close_enough(sum, 11.0, 1e-6, 0), "sum %g", sum);
    xm_work_destroy(&w);
    free_trade(&t);
}

/* grad_rollout_signed with G >= 0 is grad_rollout. */
Test(variants, signed_with_nonnegative_gradient_is_grad_rollout)
{
    for (int cls = -1; cls < 1; cls++) {
        cfg_t c = {3, 3, 10, cls, 0, 1, 2.0, (uint64_t)(12 + cls)};
        trade_t t;
        make_trade(&c, &t);
        float *g = t.gb;
        for (size_t k = 0; k < t.cnt; k++)
            g[k] = fabsf(g[k]);
        for (int rn = 0; rn < 2; rn++) {
            xm_opts_t o = {.methods = XM_GRAD_METHODS, .grad_resnorm = rn};
            xm_work_t *w = xm_work_new();
            xm_result_t res;
            run(&c, &t, &o, 1, w, &res);
            int nf = cls >= 0 ? 9 : 10;
            for (int k = 0; k < nf; k++)
                cr_assert(close_enough(res.attr[XM_GRAD_ROLLOUT_SIGNED][k], res.attr[XM_GRAD_ROLLOUT][k],
                                       1e-6, 0), "[%d]", k);
            xm_work_destroy(&w);
        }
        free_trade(&t);
    }
}

/* ---- method names -------------------------------------------------------- */

Test(variants, variant_methods_are_served)
{
    static const char *variants[] = {"colsum", "grad_rollout_signed", "lrp_rollout"};
    for (int k = 0; k < 3; k++) {
        int m = xm_method_parse(variants[k], strlen(variants[k]));
        cr_assert_eq(m, XM_COLSUM + k, "%s not served", variants[k]);
        cr_assert_eq(xm_method_parse_core(variants[k], strlen(variants[k])), m);
        cr_assert(xm_method_served((xm_method_t)m));
        cr_assert_str_eq(xm_method_name((xm_method_t)m), variants[k]);
    }
    for (int m = 0; m < XM_NMETHODS; m++) {
        const char *name = xm_method_name((xm_method_t)m);
        cr_assert(xm_method_served((xm_method_t)m));
        cr_assert_eq(xm_method_parse(name, strlen(name)), m);
        cr_assert_eq(xm_method_parse_core(name, strlen(name)), m);
    }
    cr_assert_null(xm_method_name(XM_NMETHODS_CORE));
    cr_assert_eq(xm_method_parse("colsums", 7), -1);
    unsigned set;
    const char *bad = NULL;
    cr_assert_eq(xm_methods_parse("rollout,colsum,lrp", &set, &bad), -1);
    cr_assert_str_eq(bad, "lrp");
    cr_assert_eq(xm_methods_parse("rollout,grad_rollout,first_layer,attn_mean,diag,flow", &set, NULL), 0);
    cr_assert_eq(set, XM_CLASSIC_METHODS);
    cr_assert_eq(xm_methods_parse("rollout,grad_rollout,first_layer,attn_mean,diag,flow,colsum,"
                                  "grad_rollout_signed,lrp_rollout", &set, NULL), 0);
    cr_assert_eq(set, XM_ALL_METHODS);
}

/* ---- feature groups ------------------------------------------------------ */

#define S(x) ((xm_str_t){x, (uint32_t)sizeof(x) - 1})

static const xm_str_t s_toks[] = {S("CLS"), S("age"), S("city_0"), S("city_1"), S("city_2"),
                                  S("ts_hour"), S("ts_dow"), S("income")};

Test(variants, groups_sum_after_the_readout)
{
    xm_shape_t s = {1, 1, 8, 0};
    xm_str_t city[] = {S("city_2"), S("city_0"), S("city_1")}, ts[] = {S("ts_dow"), S("ts_hour")};
    xm_group_def_t defs[] = {{S("time"), ts, 2}, {S("city"), city, 3}};
    xm_groups_t g;
    xm_group_where_t where;
    cr_assert_eq(xm_groups_build(&s, s_toks, defs, 2, &g, &where), XM_GROUP_OK);
    cr_assert_eq(g.npos, 7u);
    cr_assert_eq(g.nfeat, 4u);     /* age, city, time, income */
    static const uint32_t feat[] = {0, 1, 1, 1, 2, 2, 3};
    static const int32_t grp[] = {-1, 1, 0, -1};
    static const uint32_t tok[] = {1, 2, 5, 7};
    for (int k = 0; k < 7; k++)
        cr_assert_eq(g.feat_of[k], feat[k], "position %d", k);
    for (int f = 0; f < 4; f++) {
        cr_assert_eq(g.group_of[f], grp[f], "feature %d", f);
        cr_assert_eq(g.token_of[f], tok[f], "feature %d", f);
    }
    float in[14] = {1, 2, 4, 8, 16, 32, 64, -1, -2, -4, -8, -16, -32, -64}, out[8];
    xm_groups_apply(&g, in, 2, out);
    static const float want[8] = {1, 14, 48, 64, -1, -14, -48, -64};
    for (int f = 0; f < 8; f++)
        cr_assert_eq(out[f], want[f], "feature %d", f);
    xm_groups_free(&g);
    /* without CLS the CLS-named token is an ordinary token */
    xm_shape_t s2 = {1, 1, 8, -1};
    cr_assert_eq(xm_groups_build(&s2, s_toks, defs, 2, &g, NULL), XM_GROUP_OK);
    cr_assert_eq(g.nfeat, 5u);
    cr_assert_eq(g.feat_of[0], 0u);
    cr_assert_eq(g.feat_of[2], 2u);
    xm_groups_free(&g);
}

Test(variants, singleton_groups_equal_no_groups)
{
    for (int cls = -1; cls < 8; cls++) {
        xm_shape_t s = {1, 1, 8, cls};
        xm_group_def_t defs[8];
        uint32_t nd = 0;
        for (int j = 0; j < 8; j++)
            if (j != cls)
                defs[nd++] = (xm_group_def_t){s_toks[j], &s_toks[j], 1};
        for (int with = 0; with < 2; with++) {
            xm_groups_t g;
            cr_assert_eq(xm_groups_build(&s, s_toks, defs, with ? nd : 0, &g, NULL), XM_GROUP_OK);
            cr_assert_eq(g.nfeat, xm_nfeat(&s));
            float in[8] = {0.1f, -0.2f, 0.3f, 1e-30f, 5e7f, -0.0f, 7.0f, 0.125f}, out[8];
            xm_groups_apply(&g, in, 1, out);
            for (uint32_t k = 0; k < g.nfeat; k++) {
                cr_assert_eq(g.feat_of[k], k);
                cr_assert(memcmp(&in[k], &out[k], 4) == 0 || (in[k] == 0 && out[k] == 0));
                cr_assert_eq(g.token_of[k], k + (cls >= 0 && (int)k >= cls));
            }
            xm_groups_free(&g);
        }
    }
}

Test(variants, bad_groups_are_refused_with_a_reason)
{
    xm_shape_t s = {1, 1, 8, 0};
    xm_str_t ok2[] = {S("city_0"), S("city_1")}, unknown[] = {S("city_0"), S("city_9")},
             twice[] = {S("city_1"), S("city_1")}, cls[] = {S("age"), S("CLS")},
             other[] = {S("city_2"), S("city_1")};
    struct {
        xm_group_def_t d[2];
        uint32_t nd;
        xm_group_err_t want;
        int32_t group, token;
    } cases[] = {
        {{{S("city"), unknown, 2}}, 1, XM_GROUP_UNKNOWN_TOKEN, 0, 1},
        {{{S("city"), twice, 2}}, 1, XM_GROUP_TOKEN_TWICE, 0, 1},
        {{{S("city"), ok2, 2}, {S("c2"), other, 2}}, 2, XM_GROUP_TOKEN_TWICE, 1, 1},
        {{{S("a"), cls, 2}}, 1, XM_GROUP_CLS_TOKEN, 0, 1},
        {{{S("city"), ok2, 2}, {S("empty"), NULL, 0}}, 2, XM_GROUP_EMPTY, 1, -1},
        {{{S("age"), ok2, 2}}, 1, XM_GROUP_DUP_NAME, 0, -1},        /* clashes with token age */
        {{{S("x"), ok2, 1}, {S("x"), other, 1}}, 2, XM_GROUP_DUP_NAME, 1, -1},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        xm_groups_t g;
        xm_group_where_t where = {99, 99};
        xm_group_err_t rc = xm_groups_build(&s, s_toks, cases[k].d, cases[k].nd, &g, &where);
        cr_assert_eq(rc, cases[k].want, "case %zu: %s", k, xm_group_strerror(rc));
        cr_assert_eq(where.group, cases[k].group, "case %zu group", k);
        cr_assert_eq(where.token, cases[k].token, "case %zu token", k);
        cr_assert_null(g.feat_of);
        cr_assert_eq(g.nfeat, 0u);
        xm_groups_free(&g);
    }
    /* the schema itself names two tokens alike */
    xm_str_t dup[] = {S("CLS"), S("a"), S("b"), S("a")};
    xm_shape_t s4 = {1, 1, 4, 0};
    xm_groups_t g;
    cr_assert_eq(xm_groups_build(&s4, dup, NULL, 0, &g, NULL), XM_GROUP_DUP_TOKEN_NAME);
    xm_shape_t bad = {1, 1, 4, 4};
    cr_assert_eq(xm_groups_build(&bad, dup, NULL, 0, &g, NULL), XM_GROUP_EARG);
    /* every reason has its own name */
    for (int a = 1; a <= XM_GROUP_ENOMEM; a++)
        for (int b = a + 1; b <= XM_GROUP_ENOMEM; b++)
            cr_assert_str_neq(xm_group_strerror((xm_group_err_t)a), xm_group_strerror((xm_group_err_t)b));
    cr_assert_str_eq(xm_group_strerror(XM_GROUP_UNKNOWN_TOKEN), "group_unknown_token");
    cr_assert_str_eq(xm_group_strerror(XM_GROUP_TOKEN_TWICE), "group_token_twice");
    /* maps that are not onto */
    uint32_t gap[] = {0, 2, 2}, over[] = {0, 1, 5};
    cr_assert_eq(xm_groups_from_map(3, gap, 3, &g), XM_GROUP_EARG);
    cr_assert_eq(xm_groups_from_map(3, over, 2, &g), XM_GROUP_EARG);
    cr_assert_null(g.feat_of);
}

/* ---- vectors from the numpy reference (tests/gen_variant_vectors.py) ----- */

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
    case MSGPACK_OBJECT_BOOLEAN: return o->via.boolean;
    default: cr_assert_fail("not a number"); return 0;
    }
}

static size_t
flatten(const msgpack_object *o, double *out)
{
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        *out = num(o);
        return 1;
    }
    size_t k = 0;
    for (uint32_t i = 0; i < o->via.array.size; i++)
        k += flatten(&o->via.array.ptr[i], out + k);
    return k;
}

static void
near(const char *what, int ci, int ri, double got, double want, double rel, double abs)
{
    cr_assert(fabs(got - want) <= rel * fabs(want) + abs, "%s case %d run %d: %.17g vs %.17g", what,
              ci, ri, got, want);
}

Test(variants, vectors_of_the_numpy_reference)
{
    FILE *f = fopen(XPL_SOURCE_DIR "/tests/vectors/variants.msgpack", "rb");
    cr_assert_not_null(f, "tests/vectors/variants.msgpack missing");
    static char buf[1 << 20];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    cr_assert_lt(len, sizeof buf);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    cr_assert_eq(msgpack_unpack_next(&up, buf, len, NULL), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *cases = map_get(&up.data, "cases");
    cr_assert_geq(cases->via.array.size, 7u);
    static double A[1 << 14], G[1 << 14], Rl[1 << 14], Aa[1 << 14], Ga[1 << 14];
    static double want[1 << 10], mine[1 << 10], scale[1 << 10], fofd[256];
    static float fa[1 << 14], fg[1 << 14], fr[1 << 14], grouped[256];
    int checked = 0;
    for (uint32_t ci = 0; ci < cases->via.array.size; ci++) {
        const msgpack_object *c = &cases->via.array.ptr[ci];
        cfg_t cf = {(int)num(map_get(c, "L")), (int)num(map_get(c, "H")), (int)num(map_get(c, "n")),
                    (int)num(map_get(c, "cls")), 0, (int)num(map_get(c, "T")), 0, 0};
        const int L = cf.L, H = cf.H, n = cf.n, cls = cf.cls, T = cf.T;
        size_t cnt = flatten(map_get(c, "attn"), A);
        cr_assert_eq(cnt, (size_t)L * H * n * n);
        cr_assert_eq(flatten(map_get(c, "grad"), G), cnt * T);
        cr_assert_eq(flatten(map_get(c, "rel"), Rl), cnt * T);
        for (size_t k = 0; k < cnt * T; k++) {
            if (k < cnt) {
                fa[k] = (float)A[k];
                Aa[k] = fabs(A[k]);
            }
            fg[k] = (float)G[k];
            fr[k] = (float)Rl[k];
            Ga[k] = fabs(G[k]);
        }
        xm_shape_t s = {(uint32_t)L, (uint32_t)H, (uint32_t)n, cls};
        const int nf = (int)xm_nfeat(&s);
        int nfo = (int)flatten(map_get(c, "feat_of"), fofd), nfeat = (int)num(map_get(c, "nfeat"));
        cr_assert_eq(nfo, nf);
        uint32_t fo[256];
        int foi[256];
        for (int k = 0; k < nf; k++)
            foi[k] = (int)(fo[k] = (uint32_t)fofd[k]);
        xm_groups_t g;
        cr_assert_eq(xm_groups_from_map((uint32_t)nf, fo, (uint32_t)nfeat, &g), XM_GROUP_OK);

        const msgpack_object *runs = map_get(c, "runs");
        for (uint32_t ri = 0; ri < runs->via.array.size; ri++) {
            const msgpack_object *r = &runs->via.array.ptr[ri], *e = map_get(r, "expected");
            const msgpack_object *fu = map_get(r, "fusion");
            xm_opts_t o = {.methods = XM_ALL_METHODS_CORE};
            char fname[16] = {0};
            cr_assert_lt(fu->via.str.size, sizeof fname);
            memcpy(fname, fu->via.str.ptr, fu->via.str.size);
            o.fusion = (xm_fusion_t)xm_fusion_parse(fname);
            o.discard = num(map_get(r, "rho"));
            o.start_layer = (int32_t)num(map_get(r, "start"));
            o.grad_resnorm = num(map_get(r, "resnorm")) != 0;
            o.discard_flow = num(map_get(r, "discard_flow")) != 0;
            int rf = ref_fusion(o.fusion);
            xm_work_t *w = xm_work_new();
            xm_input_t in = {fa, fg, fr, (uint32_t)T};
            xm_result_t res;
            cr_assert_eq(xm_explain_ex(w, &o, &s, XM_F32, &in, &res), XM_OK);

            /* rollout, colsum, flow */
            cr_assert_eq(flatten(map_get(e, "rollout"), want), (size_t)nf);
            ref_rollout_v(L, H, n, cls, A, rf, o.discard, o.start_layer, mine);
            for (int k = 0; k < nf; k++) {
                near("ref rollout", ci, ri, mine[k], want[k], 1e-12, 1e-15);
                near("lib rollout", ci, ri, res.attr[XM_ROLLOUT][k], want[k], REL, 1e-12);
            }
            xm_groups_apply(&g, res.attr[XM_ROLLOUT], 1, grouped);
            cr_assert_eq(flatten(map_get(e, "rollout_grouped"), want), (size_t)nfeat);
            ref_groups(nf, foi, nfeat, mine, scale);
            for (int k = 0; k < nfeat; k++) {
                near("ref rollout grouped", ci, ri, scale[k], want[k], 1e-12, 1e-15);
                near("lib rollout grouped", ci, ri, grouped[k], want[k], REL, 1e-12);
            }
            cr_assert_eq(flatten(map_get(e, "colsum"), want), (size_t)nf);
            ref_colsum(L, H, n, cls, A, rf, mine);
            for (int k = 0; k < nf; k++) {
                near("ref colsum", ci, ri, mine[k], want[k], 1e-12, 1e-15);
                near("lib colsum", ci, ri, res.attr[XM_COLSUM][k], want[k], REL, 1e-12);
            }
            cr_assert_eq(flatten(map_get(e, "flow"), want), (size_t)nf);
            for (int k = 0; k < nf; k++)
                near("lib flow (networkx)", ci, ri, res.attr[XM_FLOW][k], want[k], REL, 1e-12);

            /* the gradient family, per target */
            static const struct { const char *key; int m; bool clamp, rel; } fam[] = {
                {"grad_rollout", XM_GRAD_ROLLOUT, true, false},
                {"grad_rollout_signed", XM_GRAD_ROLLOUT_SIGNED, false, false},
                {"lrp_rollout", XM_LRP_ROLLOUT, true, true},
            };
            for (int q = 0; q < 3; q++) {
                cr_assert_eq(flatten(map_get(e, fam[q].key), want), (size_t)nf * T);
                for (int t = 0; t < T; t++) {
                    const double *X = fam[q].rel ? Rl + t * cnt : A;
                    ref_grad_rollout_v(L, H, n, cls, X, G + t * cnt, fam[q].clamp, o.grad_resnorm,
                                       o.start_layer, mine);
                    if (fam[q].clamp)
                        memset(scale, 0, sizeof(double) * nf);
                    else
                        signed_scale(&cf, A, Aa, G + t * cnt, Ga + t * cnt, o.grad_resnorm,
                                     o.start_layer, scale);
                    const float *got = res.attr[fam[q].m] + (size_t)t * nf;
                    for (int k = 0; k < nf; k++) {
                        near(fam[q].key, ci, ri, mine[k], want[t * nf + k], 1e-10, 1e-12 * (1 + scale[k]));
                        near(fam[q].key, ci, ri, got[k], want[t * nf + k], REL, FLOOR);
                    }
                    if (fam[q].m == XM_GRAD_ROLLOUT_SIGNED) {
                        double gw[256], gs[256];
                        cr_assert_eq(flatten(map_get(e, "grad_rollout_signed_grouped"), gw),
                                     (size_t)nfeat * T);
                        for (int k = 0; k < nf; k++)    /* a group sums float32 members */
                            scale[k] = fabs(want[t * nf + k]);
                        ref_groups(nf, foi, nfeat, scale, gs);
                        xm_groups_apply(&g, got, 1, grouped);
                        for (int k = 0; k < nfeat; k++)
                            near("lib signed grouped", ci, ri, grouped[k], gw[t * nfeat + k], REL,
                                 REL * gs[k] + 1e-12);
                    }
                }
            }
            xm_work_destroy(&w);
            checked++;
        }
        xm_groups_free(&g);
    }
    cr_assert_geq(checked, 40);
    msgpack_unpacked_destroy(&up);
}

/* k = (int)(ρ m) with the IEEE double product: 0.29 * 100 = 28.999..., so
   28 entries go, as vit-explain's int(m * ρ) and tests/ref.py have it. */
Test(variants, discard_count_is_the_truncated_double_product)
{
    enum { n = 101 };
    static float A[n * n];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            A[i * n + j] = i == j ? 1.0f : (float)(1 + (i * 37 + j * 11) % n) / (n * n);
    xm_work_t *w = xm_work_new();
    xm_result_t res;
    xm_shape_t s = {1, 1, n, 0};
    xm_opts_t o = {.methods = XM_BIT(XM_ROLLOUT), .discard = 0.29};
    cr_assert_eq(xm_explain(w, &o, &s, XM_F32, A, NULL, &res), XM_OK);
    const float *Ah = xm_work_rollout_layers(w);
    for (int i = 0; i < n; i++) {
        int zeros = 0;
        for (int j = 1; j < n; j++)
            zeros += Ah[i * n + j] == 0.0f;
        cr_assert_eq(zeros, 28, "row %d lost %d", i, zeros);
    }
    xm_work_destroy(&w);
}
