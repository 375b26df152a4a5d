/*  Tests of core/xmath against the float64 reference (ref.c) and the
    golden vectors computed independently from MATH.md.  */
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

typedef struct {
    int L, H, n, cls, dtype;
    double temp;        /* logit scale: 1 smooth, 8 peaked */
    uint64_t seed;
} cfg_t;

typedef struct {
    double *A, *G;          /* exact values the library sees */
    void *abytes, *gbytes;  /* wire bytes */
} trade_t;

static void
make_trade(const cfg_t *c, trade_t *t)
{
    size_t rows = (size_t)c->L * c->H * c->n, cnt = rows * c->n;
    rng_t r;
    rng_seed(&r, c->seed);
    t->A = malloc(cnt * sizeof(double));
    t->G = malloc(cnt * sizeof(double));
    t->abytes = malloc(cnt * 4);
    t->gbytes = malloc(cnt * 4);
    /* Each layer and head draws its own temperature: layers differ, so a
       product taken in the wrong order gives a different answer. */
    for (size_t q = 0; q < (size_t)c->L * c->H; q++)
        gen_attention(&r, t->A + q * c->n * c->n, c->n, c->n, c->temp * (0.3 + rng_uniform(&r)));
    gen_gradient(&r, t->G, cnt, 2.0);
    encode_dtype(c->dtype, t->A, cnt, t->abytes, t->A);
    encode_dtype(c->dtype, t->G, cnt, t->gbytes, t->G);
}

static void
free_trade(trade_t *t)
{
    free(t->A); free(t->G); free(t->abytes); free(t->gbytes);
}

static void
expect_vec(const char *what, const cfg_t *c, const float *got, const double *want, int nf)
{
    for (int k = 0; k < nf; k++)
        cr_assert(close_enough(got[k], want[k], REL, 1e-12),
                  "%s L=%d H=%d n=%d cls=%d dtype=%d seed=%llu: [%d] got %.9g want %.9g", what,
                  c->L, c->H, c->n, c->cls, c->dtype, (unsigned long long)c->seed, k, got[k],
                  want[k]);
}

/* Run every method on one configuration and compare with the reference. */
static void
check_cfg(const cfg_t *c, xm_fusion_t fusion, bool resnorm)
{
    trade_t t;
    make_trade(c, &t);
    xm_shape_t s = {(uint32_t)c->L, (uint32_t)c->H, (uint32_t)c->n, c->cls};
    int nf = (int)xm_nfeat(&s);
    xm_work_t *w = xm_work_new();
    xm_opts_t o = {.methods = XM_CLASSIC_METHODS & ~XM_BIT(XM_FLOW), .fusion = fusion,
                   .grad_resnorm = resnorm};
    xm_result_t res;
    cr_assert_eq(xm_explain(w, &o, &s, (xm_dtype_t)c->dtype, t.abytes, t.gbytes, &res), XM_OK);
    cr_assert_eq(res.computed, o.methods);

    double *want = malloc(sizeof(double) * c->n);
    int rf = fusion == XM_FUSE_MEAN ? REF_MEAN : fusion == XM_FUSE_MAX ? REF_MAX : REF_MIN;
    ref_rollout(c->L, c->H, c->n, c->cls, t.A, rf, want);
    expect_vec("rollout", c, res.attr[XM_ROLLOUT], want, nf);
    ref_grad_rollout(c->L, c->H, c->n, c->cls, t.A, t.G, resnorm, want);
    expect_vec("grad_rollout", c, res.attr[XM_GRAD_ROLLOUT], want, nf);
    ref_first_layer(c->L, c->H, c->n, c->cls, t.A, rf, want);
    expect_vec("first_layer", c, res.attr[XM_FIRST_LAYER], want, nf);
    ref_attn_mean(c->L, c->H, c->n, c->cls, t.A, want);
    expect_vec("attn_mean", c, res.attr[XM_ATTN_MEAN], want, nf);
    ref_diag(c->L, c->H, c->n, c->cls, t.A, want);
    expect_vec("diag", c, res.attr[XM_DIAG], want, nf);

    double *imp = malloc(sizeof(double) * c->L * c->H), *conf = malloc(sizeof(double) * c->L * c->H);
    ref_head_stats(c->L, c->H, c->n, t.A, t.G, imp, conf);
    for (int k = 0; k < c->L * c->H; k++) {
        /* |sum A G| cancels: compare against the scale of sum |A G|. */
        double scale = 0;
        size_t base = (size_t)k * c->n * c->n;
        for (size_t q = 0; q < (size_t)c->n * c->n; q++)
            scale += fabs(t.A[base + q] * t.G[base + q]);
        cr_assert(close_enough(res.head_importance[k], imp[k], 0, REL * scale + 1e-12),
                  "importance[%d] got %g want %g", k, res.head_importance[k], imp[k]);
        cr_assert(close_enough(res.head_confidence[k], conf[k], REL, 1e-12),
                  "confidence[%d] got %g want %g", k, res.head_confidence[k], conf[k]);
    }

    /* The full matrices built from the kept per-layer matrices. */
    size_t nn = (size_t)c->n * c->n;
    float *M = malloc(nn * 4), *T = malloc(nn * 4);
    double *R = malloc(nn * sizeof(double));
    xm_rollout_matrix(s.L, s.n, xm_work_rollout_layers(w), M, T);
    ref_rollout_matrix(c->L, c->H, c->n, t.A, rf, R);
    for (size_t q = 0; q < nn; q++)
        cr_assert(close_enough(M[q], R[q], REL, 1e-12), "rollout matrix [%zu] %g vs %g", q, M[q], R[q]);
    xm_grad_rollout_matrix(s.L, s.n, xm_work_grad_layers(w), resnorm, M, T);
    ref_grad_rollout_matrix(c->L, c->H, c->n, t.A, t.G, resnorm, R);
    for (size_t q = 0; q < nn; q++)
        cr_assert(close_enough(M[q], R[q], REL, 1e-12), "grad_rollout matrix [%zu] %g vs %g", q, M[q], R[q]);

    free(M); free(T); free(R); free(imp); free(conf); free(want);
    xm_work_destroy(&w);
    cr_assert_null(w);
    free_trade(&t);
}

static int
pick_cls(int variant, int n)
{
    switch (variant % 3) {
    case 0: return -1;
    case 1: return 0;
    default: return n - 1;
    }
}

Test(xmath, random_shapes_all_dtypes)
{
    static const int ns[] = {2, 3, 5, 8, 9, 16, 17, 31, 32, 33, 64, 100, 128};
    static const int Ls[] = {1, 2, 3, 4, 6, 12};
    static const int Hs[] = {1, 2, 3, 8, 16};
    rng_t r;
    rng_seed(&r, 42);
    int count = 0;
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
        for (int variant = 0; variant < 9; variant++) {
            cfg_t c = {.n = ns[a]};
            /* Large n with many layers is slow in the O(L n^3) reference:
               sample the corners and a spread in between. */
            c.L = Ls[(a + variant) % 6];
            c.H = Hs[(a * 3 + variant) % 5];
            if (c.n >= 100 && variant > 3)
                continue;
            c.cls = pick_cls(variant, c.n);
            c.dtype = variant % 3 == 0 ? (int)(a % 3) : (variant / 3) % 3;
            c.temp = variant % 2 ? 8.0 : 1.0;
            c.seed = rng_next(&r);
            check_cfg(&c, (xm_fusion_t)(variant % 3), variant % 4 == 3);
            count++;
        }
    cr_assert_gt(count, 80);
}

Test(xmath, corners_of_the_shape_space)
{
    static const cfg_t cfgs[] = {
        {1, 1, 2, -1, 0, 1.0, 1}, {1, 1, 2, 0, 1, 1.0, 2}, {1, 1, 2, 1, 2, 1.0, 3},
        {12, 16, 128, -1, 0, 1.0, 4}, {12, 16, 128, 127, 0, 8.0, 5}, {12, 16, 128, 0, 1, 8.0, 6},
        {12, 1, 7, 3, 2, 4.0, 7}, {1, 16, 127, 64, 0, 2.0, 8},
    };
    for (size_t k = 0; k < sizeof cfgs / sizeof *cfgs; k++)
        for (int f = 0; f < 3; f++)
            check_cfg(&cfgs[k], (xm_fusion_t)f, f == 1);
}

/* The test data can tell the two product orders apart: if this failed,
   a library multiplying in the wrong order could still pass. */
Test(xmath, layers_do_not_commute)
{
    cfg_t c = {3, 4, 9, 8, 0, 2.0, 99};
    trade_t t;
    make_trade(&c, &t);
    size_t per = (size_t)c.H * c.n * c.n;
    double *rev = malloc(per * c.L * sizeof(double));
    for (int l = 0; l < c.L; l++)
        memcpy(rev + l * per, t.A + (c.L - 1 - l) * per, per * sizeof(double));
    double a[9], b[9];
    ref_rollout(c.L, c.H, c.n, c.cls, t.A, REF_MEAN, a);
    ref_rollout(c.L, c.H, c.n, c.cls, rev, REF_MEAN, b);
    double diff = 0;
    for (int k = 0; k < 8; k++)
        diff = fmax(diff, fabs(a[k] - b[k]) / fabs(a[k]));
    cr_assert_gt(diff, 1e-3, "reversing the layers changed rollout by only %g", diff);
    free(rev);
    free_trade(&t);
}

Test(xmath, nonfinite_inputs_are_refused)
{
    cfg_t c = {2, 2, 6, 5, 0, 1.0, 7};
    xm_shape_t s = {2, 2, 6, 5};
    xm_opts_t o = {.methods = XM_CLASSIC_METHODS & ~XM_BIT(XM_FLOW)};
    xm_result_t res;
    const float bads[] = {NAN, INFINITY, -INFINITY};
    for (int dt = 0; dt < 3; dt++)
        for (int which = 0; which < 2; which++)
            for (size_t b = 0; b < 3; b++) {
                c.dtype = dt;
                trade_t t;
                make_trade(&c, &t);
                size_t es = dt == 0 ? 4 : 2, pos = 37;
                uint8_t *buf = which ? t.gbytes : t.abytes;
                double dummy;
                encode_dtype(dt, (double[]){bads[b]}, 1, buf + pos * es, &dummy);
                xm_work_t *w = xm_work_new();
                cr_assert_eq(xm_explain(w, &o, &s, (xm_dtype_t)dt, t.abytes, t.gbytes, &res),
                             XM_ENONFINITE, "dtype %d %s value %g accepted", dt,
                             which ? "grad" : "attn", bads[b]);
                xm_work_destroy(&w);
                free_trade(&t);
            }
}

Test(xmath, without_gradient_grad_methods_are_skipped)
{
    cfg_t c = {2, 3, 5, -1, 0, 1.0, 11};
    trade_t t;
    make_trade(&c, &t);
    xm_shape_t s = {2, 3, 5, -1};
    xm_opts_t o = {.methods = XM_CLASSIC_METHODS & ~XM_BIT(XM_FLOW)};
    xm_result_t res;
    xm_work_t *w = xm_work_new();
    cr_assert_eq(xm_explain(w, &o, &s, XM_F32, t.abytes, NULL, &res), XM_OK);
    cr_assert_null(res.attr[XM_GRAD_ROLLOUT]);
    cr_assert_null(res.head_importance);
    cr_assert_not_null(res.attr[XM_ROLLOUT]);
    cr_assert_eq(res.computed & XM_BIT(XM_GRAD_ROLLOUT), 0u);
    cr_assert_null(xm_work_grad_layers(w));
    xm_work_destroy(&w);
    free_trade(&t);
}

Test(xmath, zero_gradient_rows_stay_zero_under_resnorm)
{
    cfg_t c = {2, 2, 4, 0, 0, 1.0, 5};
    trade_t t;
    make_trade(&c, &t);
    memset(t.gbytes, 0, (size_t)2 * 2 * 4 * 4 * 4);
    xm_shape_t s = {2, 2, 4, 0};
    xm_opts_t o = {.methods = XM_BIT(XM_GRAD_ROLLOUT), .grad_resnorm = true};
    xm_result_t res;
    xm_work_t *w = xm_work_new();
    cr_assert_eq(xm_explain(w, &o, &s, XM_F32, t.abytes, t.gbytes, &res), XM_OK);
    for (int k = 0; k < 3; k++)
        cr_assert_eq(res.attr[XM_GRAD_ROLLOUT][k], 0.0f);
    s.cls = -1;
    cr_assert_eq(xm_explain(w, &o, &s, XM_F32, t.abytes, t.gbytes, &res), XM_OK);
    for (int k = 0; k < 4; k++)   /* identity rows only: column means 1/n */
        cr_assert_float_eq(res.attr[XM_GRAD_ROLLOUT][k], 0.25f, 1e-7);
    xm_work_destroy(&w);
    free_trade(&t);
}

Test(xmath, bad_shapes_are_refused)
{
    xm_work_t *w = xm_work_new();
    xm_opts_t o = {.methods = XM_BIT(XM_ROLLOUT)};
    xm_result_t res;
    float a[4] = {1, 0, 0, 1};
    xm_shape_t bad[] = {{0, 1, 2, -1}, {1, 0, 2, -1}, {1, 1, 0, -1}, {1, 1, 2, 2}, {1, 1, 1, 0}, {1, 1, 2, -2}};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++)
        cr_assert_eq(xm_explain(w, &o, &bad[k], XM_F32, a, NULL, &res), XM_EARG, "shape %zu", k);
    xm_work_destroy(&w);
}

Test(xmath, method_names_round_trip)
{
    for (int m = 0; m < XM_NMETHODS; m++) {
        const char *name = xm_method_name((xm_method_t)m);
        cr_assert_eq(xm_method_parse(name, strlen(name)), m);
    }
    unsigned set;
    cr_assert_eq(xm_methods_parse("rollout, diag,flow", &set, NULL), 0);
    cr_assert_eq(set, XM_BIT(XM_ROLLOUT) | XM_BIT(XM_DIAG) | XM_BIT(XM_FLOW));
    const char *bad = NULL;
    cr_assert_eq(xm_methods_parse("rollout,shap", &set, &bad), -1);
    cr_assert_str_eq(bad, "shap");
    cr_assert_eq(xm_fusion_parse("max"), XM_FUSE_MAX);
    cr_assert_eq(xm_fusion_parse("median"), -1);
}

/* ---- golden vectors (independent float64 implementation) ---------------- */

static const msgpack_object *
map_get(const msgpack_object *m, const char *key)
{
    for (uint32_t k = 0; k < m->via.map.size; k++) {
        const msgpack_object_kv *kv = &m->via.map.ptr[k];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
            memcmp(kv->key.via.str.ptr, key, kv->key.via.str.size) == 0)
            return &kv->val;
    }
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

/* Flatten nested arrays of numbers. */
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

static msgpack_unpacked golden;

static const msgpack_object *
load_golden(void)
{
    FILE *f = fopen(XPL_SOURCE_DIR "/tests/vectors/golden.msgpack", "rb");
    cr_assert_not_null(f, "golden vectors missing");
    static char buf[1 << 20];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    msgpack_unpacked_init(&golden);
    cr_assert_eq(msgpack_unpack_next(&golden, buf, len, NULL), MSGPACK_UNPACK_SUCCESS);
    return &golden.data;
}

Test(xmath, golden_vectors)
{
    const msgpack_object *root = load_golden();
    const msgpack_object *cases = map_get(root, "cases");
    cr_assert_not_null(cases);
    cr_assert_geq(cases->via.array.size, 6u);
    static double A[1 << 16], G[1 << 16], want[256], mine[256];
    static float fa[1 << 16], fg[1 << 16];
    for (uint32_t ci = 0; ci < cases->via.array.size; ci++) {
        const msgpack_object *c = &cases->via.array.ptr[ci];
        int L = (int)num(map_get(c, "L")), H = (int)num(map_get(c, "H")), n = (int)num(map_get(c, "n"));
        int cls = (int)num(map_get(c, "cls"));
        size_t cnt = flatten(map_get(c, "attn"), A);
        cr_assert_eq(cnt, (size_t)L * H * n * n);
        flatten(map_get(c, "grad"), G);
        for (size_t k = 0; k < cnt; k++) {
            fa[k] = (float)A[k];
            fg[k] = (float)G[k];
        }
        const msgpack_object *e = map_get(c, "expected");
        xm_shape_t s = {(uint32_t)L, (uint32_t)H, (uint32_t)n, cls};
        int nf = (int)xm_nfeat(&s);
        static const struct { const char *key; int method, fusion; bool resnorm; } rows[] = {
            {"rollout_mean", XM_ROLLOUT, XM_FUSE_MEAN, false},
            {"rollout_max", XM_ROLLOUT, XM_FUSE_MAX, false},
            {"rollout_min", XM_ROLLOUT, XM_FUSE_MIN, false},
            {"grad_rollout", XM_GRAD_ROLLOUT, XM_FUSE_MEAN, false},
            {"grad_rollout_resnorm", XM_GRAD_ROLLOUT, XM_FUSE_MEAN, true},
            {"first_layer", XM_FIRST_LAYER, XM_FUSE_MEAN, false},
            {"attn_mean", XM_ATTN_MEAN, XM_FUSE_MEAN, false},
            {"diag", XM_DIAG, XM_FUSE_MEAN, false},
            {"flow", XM_FLOW, XM_FUSE_MEAN, false},
        };
        xm_work_t *w = xm_work_new();
        for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
            cr_assert_eq(flatten(map_get(e, rows[r].key), want), (size_t)nf);
            /* 1. the test reference agrees with the golden vectors */
            int rf = rows[r].fusion == XM_FUSE_MEAN ? REF_MEAN
                     : rows[r].fusion == XM_FUSE_MAX ? REF_MAX : REF_MIN;
            bool have_ref = true;
            switch (rows[r].method) {
            case XM_ROLLOUT: ref_rollout(L, H, n, cls, A, rf, mine); break;
            case XM_GRAD_ROLLOUT: ref_grad_rollout(L, H, n, cls, A, G, rows[r].resnorm, mine); break;
            case XM_FIRST_LAYER: ref_first_layer(L, H, n, cls, A, rf, mine); break;
            case XM_ATTN_MEAN: ref_attn_mean(L, H, n, cls, A, mine); break;
            case XM_DIAG: ref_diag(L, H, n, cls, A, mine); break;
            default: have_ref = false; break;
            }
            for (int k = 0; have_ref && k < nf; k++)
                cr_assert(close_enough(mine[k], want[k], 1e-12, 1e-15), "ref %s case %u [%d]: %.17g vs %.17g",
                          rows[r].key, ci, k, mine[k], want[k]);
            /* 2. the library agrees with them to float32 accuracy */
            xm_opts_t o = {.methods = XM_BIT(rows[r].method), .fusion = (xm_fusion_t)rows[r].fusion,
                           .grad_resnorm = rows[r].resnorm};
            xm_result_t res;
            cr_assert_eq(xm_explain(w, &o, &s, XM_F32, fa, fg, &res), XM_OK);
            for (int k = 0; k < nf; k++)
                cr_assert(close_enough(res.attr[rows[r].method][k], want[k], REL, 1e-12),
                          "lib %s case %u [%d]: %.9g vs %.9g", rows[r].key, ci, k,
                          res.attr[rows[r].method][k], want[k]);
        }
        xm_opts_t o = {.methods = XM_BIT(XM_ROLLOUT)};
        xm_result_t res;
        cr_assert_eq(xm_explain(w, &o, &s, XM_F32, fa, fg, &res), XM_OK);
        double imp[64], conf[64];
        flatten(map_get(e, "head_importance"), imp);
        flatten(map_get(e, "head_confidence"), conf);
        for (int k = 0; k < L * H; k++) {
            cr_assert(close_enough(res.head_importance[k], imp[k], 1e-4, 1e-6), "importance %d", k);
            cr_assert(close_enough(res.head_confidence[k], conf[k], REL, 1e-9), "confidence %d", k);
        }
        xm_work_destroy(&w);
    }
    msgpack_unpacked_destroy(&golden);
}
