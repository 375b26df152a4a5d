/*  xmath: per-trade attribution methods. See xmath.h and MATH.md.

    The hot path is s_layer_pass: every attention row (and its gradient
    row) is read once, and in that single read we accumulate the head
    mean, the max/min fusion, the clamped gradient product, the head
    statistics and the finiteness check. Kernels use GCC/Clang vector
    extensions (8 floats) so that reductions vectorise without relaxing
    IEEE semantics; the build picks AVX2 or SSE2 code at load time.

    The variants (discard ratio, start layer, colsum, the signed and LRP
    gradient methods, several targets) run outside that pass: each costs
    only when asked for, and zero options leave the served path as it
    was.  */
#include "xmath.h"

#include "flow.h"
#include "half.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

struct xm_work_t {
    xm_shape_t shape;
    bool has_grad;
    bool fused_separately;      /* ffus holds rollout's own Â (fusion != mean,
                                   or a discard that flow does not share) */
    unsigned computed;          /* methods of the last call */
    uint32_t ntargets;          /* T of the last call */
    size_t cap_layers;          /* floats in fmean and ffus */
    float *fmean;               /* mean_h A_l, then Â_l (mean fusion) */
    float *ffus;                /* max/min over heads, then Â_l (that fusion) */
    size_t cap_gbar, cap_gsig, cap_glrp, cap_gsigd;
    float *gbar;                /* [T][L][n][n] Ā_l = mean_h max(0, G A) */
    float *gsig;                /* [T][L][n][n] mean_h G A (signed), rounded */
    double *gsigd;              /* the same in double: what the readout uses */
    float *glrp;                /* [T][L][n][n] mean_h max(0, G Rel) */
    size_t cap_sel;
    float *sel;                 /* n: one row's discard candidates */
    size_t cap_rowsum;
    double *rowsum;             /* [L][n] row sums of mean_h A_l */
    size_t cap_row;
    float *rowa, *rowg;         /* one head's n x n block decoded from 16-bit dtypes */
    size_t cap_heads, cap_imp;
    float *conf;                /* [L][H] */
    float *imp;                 /* [T][L][H] */
    double *imp_acc;
    size_t cap_attr;
    float *attr;                /* per method n floats, T * n for gradient methods */
    size_t cap_vec;
    double *v, *v2, *acc, *u;   /* n each */
    flow_work_t *flow;
};

static const char *s_method_names[XM_NMETHODS_CORE] = {
    "rollout", "grad_rollout", "first_layer", "attn_mean", "diag", "flow",
    "colsum", "grad_rollout_signed", "lrp_rollout"};

const char *
xm_method_name(xm_method_t m)
{
    return (unsigned)m < XM_NMETHODS_CORE ? s_method_names[m] : NULL;
}

bool
xm_method_served(xm_method_t m)
{
    return (unsigned)m < XM_NMETHODS;
}

static int
s_method_find(const char *name, size_t len, int count)
{
    for (int m = 0; m < count; m++)
        if (strlen(s_method_names[m]) == len && memcmp(s_method_names[m], name, len) == 0)
            return m;
    return -1;
}

int
xm_method_parse(const char *name, size_t len)
{
    return s_method_find(name, len, XM_NMETHODS);
}

int
xm_method_parse_core(const char *name, size_t len)
{
    return s_method_find(name, len, XM_NMETHODS_CORE);
}

int
xm_start_layer(int32_t s, uint32_t L, uint32_t *out)
{
    int64_t r = s < 0 ? (int64_t)L + s : (int64_t)s;
    if (r < 0 || r >= (int64_t)L)
        return -1;
    *out = (uint32_t)r;
    return 0;
}

int
xm_methods_parse(const char *list, unsigned *out, const char **bad)
{
    unsigned set = 0;
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        if (!*p)
            break;
        const char *q = p;
        while (*q && *q != ',' && *q != ' ')
            q++;
        int m = xm_method_parse(p, (size_t)(q - p));
        if (m < 0) {
            if (bad)
                *bad = p;
            return -1;
        }
        set |= XM_BIT(m);
        p = q;
    }
    *out = set;
    return 0;
}

int
xm_fusion_parse(const char *name)
{
    if (strcmp(name, "mean") == 0) return XM_FUSE_MEAN;
    if (strcmp(name, "max") == 0) return XM_FUSE_MAX;
    if (strcmp(name, "min") == 0) return XM_FUSE_MIN;
    return -1;
}

xm_work_t *
xm_work_new(void)
{
    xm_work_t *w = calloc(1, sizeof *w);
    if (w && !(w->flow = flow_work_new())) {
        free(w);
        return NULL;
    }
    return w;
}

void
xm_work_destroy(xm_work_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    xm_work_t *w = *self_p;
    free(w->fmean); free(w->ffus); free(w->gbar); free(w->gsig); free(w->gsigd); free(w->glrp);
    free(w->sel); free(w->rowsum);
    free(w->rowa); free(w->rowg);
    free(w->imp); free(w->conf); free(w->imp_acc);
    free(w->attr);
    free(w->v); free(w->v2); free(w->acc); free(w->u);
    flow_work_destroy(&w->flow);
    free(w);
    *self_p = NULL;
}

/* Grow `*p` to hold `need` elements of `size` bytes (64-byte aligned,
   padded by one vector so kernels may over-read nothing). Never shrinks. */
static int
s_grow(void **p, size_t need, size_t size)
{
    size_t bytes = (need * size + 32 + 63) & ~(size_t)63;
    void *q = aligned_alloc(64, bytes);
    if (!q)
        return -1;
    memset(q, 0, bytes);
    free(*p);
    *p = q;
    return 0;
}

/* Grow `*p` (capacity *cap elements) to at least `need` elements. */
static int
s_need(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    if (s_grow(p, need, size))
        return -1;
    *cap = need;
    return 0;
}

static int
s_reserve(xm_work_t *w, const xm_shape_t *s)
{
    size_t nn = (size_t)s->n * s->n;
    size_t layers = (size_t)s->L * nn;
    if (layers > w->cap_layers) {
        if (s_grow((void **)&w->fmean, layers, 4) || s_grow((void **)&w->ffus, layers, 4))
            return -1;
        w->cap_layers = layers;
    }
    if (s_need((void **)&w->gbar, &w->cap_gbar, layers, 4))
        return -1;
    if ((size_t)s->L * s->n > w->cap_rowsum) {
        if (s_grow((void **)&w->rowsum, (size_t)s->L * s->n, 8))
            return -1;
        w->cap_rowsum = (size_t)s->L * s->n;
    }
    if (nn > w->cap_row) {
        if (s_grow((void **)&w->rowa, nn, 4) || s_grow((void **)&w->rowg, nn, 4))
            return -1;
        w->cap_row = nn;
    }
    size_t heads = (size_t)s->L * s->H;
    if (heads > w->cap_heads) {
        if (s_grow((void **)&w->conf, heads, 4))
            return -1;
        w->cap_heads = heads;
    }
    if (heads > w->cap_imp) {
        if (s_grow((void **)&w->imp, heads, 4) || s_grow((void **)&w->imp_acc, heads, 8))
            return -1;
        w->cap_imp = heads;
    }
    if ((size_t)XM_NMETHODS_CORE * s->n > w->cap_attr) {
        if (s_grow((void **)&w->attr, (size_t)XM_NMETHODS_CORE * s->n, 4))
            return -1;
        w->cap_attr = (size_t)XM_NMETHODS_CORE * s->n;
    }
    if (s->n > w->cap_vec) {
        if (s_grow((void **)&w->v, s->n, 8) || s_grow((void **)&w->v2, s->n, 8) ||
            s_grow((void **)&w->acc, s->n, 8) || s_grow((void **)&w->u, s->n, 8))
            return -1;
        w->cap_vec = s->n;
    }
    return 0;
}

static inline v8f
s_ld(const void *p)
{
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void
s_st(void *p, v8f v)
{
    memcpy(p, &v, sizeof v);
}

static inline float
s_hsum(v8f v)
{
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

static inline v8f
s_vmax(v8f a, v8f b)
{
    v8i m = a > b;
    return (v8f)(((v8i)a & m) | ((v8i)b & ~m));
}

static inline v8f
s_vmin(v8f a, v8f b)
{
    v8i m = a < b;
    return (v8f)(((v8i)a & m) | ((v8i)b & ~m));
}

/* Row statistics that come out of the fused pass. */
typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

typedef struct {
    float rowmax;   /* max_j a_j */
    v8f vdot;       /* lanes of sum_j a_j g_j over a few rows (see s_layer_body) */
    float dot;      /* the scalar tail's share of it */
    double rowsum;  /* last head only: sum_j of the finished head-mean row */
    v8f bad;        /* accumulates x * 0: NaN as soon as any x is not finite */
} s_rowout_t;


/* The fused row kernel. `a` and `g` are float32 rows at any alignment.
   `first` (first head), `last` (last head: finish the head means by
   multiplying by 1/H and sum the finished row for the row normalisation),
   `fusion` and `grad` are compile-time constants at every call site, so
   each combination compiles to its own loop, inside the caller's target
   clone. */
static inline __attribute__((always_inline)) void
s_row(const int first, const int last, const int fusion, const int grad, uint32_t n,
      float invH, float *restrict fm, float *restrict ff, float *restrict gb,
      const uint8_t *a, const uint8_t *g, s_rowout_t *ro)
{
    const v8f zero = {0};
    const v8f ninf = zero - INFINITY;
    const v8f vinv = zero + invH;
    v8f vmax = ninf, vdot = ro->vdot, vsum = zero, bad = ro->bad;
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        v8f x = s_ld(a + 4 * j);
        bad += x * zero;
        vmax = s_vmax(x, vmax);
        v8f m = first ? x : s_ld(fm + j) + x;
        if (last) {
            m *= vinv;
            vsum += m;      /* n/8 terms per lane, then double per row */
        }
        s_st(fm + j, m);
        if (fusion == XM_FUSE_MAX)
            s_st(ff + j, first ? x : s_vmax(x, s_ld(ff + j)));
        else if (fusion == XM_FUSE_MIN)
            s_st(ff + j, first ? x : s_vmin(x, s_ld(ff + j)));
        if (grad) {
            v8f y = s_ld(g + 4 * j);
            bad += y * zero;
            v8f p = x * y;
            vdot += p;
            v8f c = (v8f)((v8i)p & (p > zero));     /* max(0, p); NaN is caught by bad */
            v8f q = first ? c : s_ld(gb + j) + c;
            s_st(gb + j, last ? q * vinv : q);
        }
    }
    vmax = s_vmax(vmax, __builtin_shufflevector(vmax, vmax, 4, 5, 6, 7, 0, 1, 2, 3));
    vmax = s_vmax(vmax, __builtin_shufflevector(vmax, vmax, 2, 3, 0, 1, 6, 7, 4, 5));
    vmax = s_vmax(vmax, __builtin_shufflevector(vmax, vmax, 1, 0, 3, 2, 5, 4, 7, 6));
    float mx = vmax[0];
    float dot = ro->dot;
    double sum = 0.0;
    if (last)
        for (int k = 0; k < 8; k++)
            sum += vsum[k];
    for (; j < n; j++) {
        float x;
        memcpy(&x, a + 4 * j, 4);
        bad[0] += x * 0.0f;
        mx = x > mx ? x : mx;
        float m = first ? x : fm[j] + x;
        if (last) {
            m *= invH;
            sum += m;
        }
        fm[j] = m;
        if (fusion == XM_FUSE_MAX)
            ff[j] = first ? x : (x > ff[j] ? x : ff[j]);
        else if (fusion == XM_FUSE_MIN)
            ff[j] = first ? x : (x < ff[j] ? x : ff[j]);
        if (grad) {
            float y;
            memcpy(&y, g + 4 * j, 4);
            bad[0] += y * 0.0f;
            float p = x * y;
            dot += p;
            float c = p > 0.0f ? p : 0.0f;
            float q = first ? c : gb[j] + c;
            gb[j] = last ? q * invH : q;
        }
    }
    ro->rowmax = mx;
    ro->vdot = vdot;
    ro->dot = dot;
    ro->rowsum = sum;
    ro->bad = bad;
}

/* One layer of one (fusion, grad) combination: read H heads of A (and
   G) once; leave mean_h A in fm (already divided by H), the max/min
   fusion in ff, Ā in gb (divided by H), the row sums of fm in
   w->rowsum, head statistics in w->imp_acc/conf. */
static inline __attribute__((always_inline)) void
s_layer_body(const int fusion, const int grad, xm_work_t *w, xm_dtype_t dt, uint32_t l,
             const uint8_t *A, const uint8_t *G, v8f *bad)
{
    const xm_shape_t *s = &w->shape;
    const uint32_t n = s->n, H = s->H;
    const size_t nn = (size_t)n * n, es = xm_dtype_size(dt);
    const float invH = 1.0f / (float)H;
    float *fm = w->fmean + l * nn, *ff = w->ffus + l * nn, *gb = w->gbar + l * nn;
    double *rs = w->rowsum + (size_t)l * n;
    s_rowout_t ro = {.bad = *bad};
    /* The gradient dot product runs in float lanes for `flush` rows (at
       most 64 products per lane), then goes on in double. */
    const uint32_t flush = n >= 512 ? 1 : 512 / n;

    for (uint32_t h = 0; h < H; h++) {
        double conf = 0.0, dot = 0.0;
        ro.vdot = (v8f){0};
        ro.dot = 0.0f;
        const int hf = h == 0, hl = h == H - 1;
        size_t hoff = ((size_t)l * H + h) * nn * es;
        const uint8_t *ha = A + hoff, *hg = grad ? G + hoff : NULL;
        size_t hes = es;
        if (dt != XM_F32) {
            /* 16-bit dtypes: decode the head's block in one vectorised
               call (it stays in L1/L2), then run the f32 kernel on it. */
            if (dt == XM_F16) {
                half_f16_decode(w->rowa, ha, nn);
                if (grad)
                    half_f16_decode(w->rowg, hg, nn);
            } else {
                half_bf16_decode(w->rowa, ha, nn);
                if (grad)
                    half_bf16_decode(w->rowg, hg, nn);
            }
            ha = (const uint8_t *)w->rowa;
            hg = grad ? (const uint8_t *)w->rowg : NULL;
            hes = 4;
        }
        for (uint32_t i = 0; i < n; i++) {
            const uint8_t *a = ha + (size_t)i * n * hes, *g = grad ? hg + (size_t)i * n * hes : NULL;
            float *fmr = fm + (size_t)i * n, *ffr = ff + (size_t)i * n, *gbr = gb + (size_t)i * n;
            if (hf && hl)
                s_row(1, 1, fusion, grad, n, invH, fmr, ffr, gbr, a, g, &ro);
            else if (hf)
                s_row(1, 0, fusion, grad, n, invH, fmr, ffr, gbr, a, g, &ro);
            else if (hl)
                s_row(0, 1, fusion, grad, n, invH, fmr, ffr, gbr, a, g, &ro);
            else
                s_row(0, 0, fusion, grad, n, invH, fmr, ffr, gbr, a, g, &ro);
            conf += ro.rowmax;
            if (hl)
                rs[i] = ro.rowsum;
            if (grad && (i + 1 == n || (i + 1) % flush == 0)) {
                v8f v = ro.vdot;
                dot += (((double)v[0] + v[4]) + ((double)v[1] + v[5])) +
                       (((double)v[2] + v[6]) + ((double)v[3] + v[7])) + ro.dot;
                ro.vdot = (v8f){0};
                ro.dot = 0.0f;
            }
        }
        w->conf[l * H + h] = (float)(conf / n);
        w->imp_acc[l * H + h] = fabs(dot);
    }
    *bad = ro.bad;
}

/* The whole layer pass is compiled once per target (AVX2+FMA+F16C, and a
   baseline), with every kernel inlined into it. */
#define XM_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))

XM_CLONES static void
s_layer_pass(xm_work_t *w, xm_fusion_t fusion, xm_dtype_t dt, uint32_t l, const uint8_t *A,
             const uint8_t *G, v8f *bad)
{
    const int grad = G != NULL;
    switch (fusion * 2 + grad) {
    case XM_FUSE_MEAN * 2: s_layer_body(XM_FUSE_MEAN, 0, w, dt, l, A, G, bad); break;
    case XM_FUSE_MEAN * 2 + 1: s_layer_body(XM_FUSE_MEAN, 1, w, dt, l, A, G, bad); break;
    case XM_FUSE_MAX * 2: s_layer_body(XM_FUSE_MAX, 0, w, dt, l, A, G, bad); break;
    case XM_FUSE_MAX * 2 + 1: s_layer_body(XM_FUSE_MAX, 1, w, dt, l, A, G, bad); break;
    case XM_FUSE_MIN * 2: s_layer_body(XM_FUSE_MIN, 0, w, dt, l, A, G, bad); break;
    default: s_layer_body(XM_FUSE_MIN, 1, w, dt, l, A, G, bad); break;
    }
}

/* ---- variants: the gradient-family pass ------------------------------

   For the targets after the first, grad_rollout_signed and lrp_rollout:
   one more read of X (A, or the relevance Rel) and of one target's G, per
   layer, leaving mean_h max(0, G X) in gc and/or mean_h G X in gsd
   (double) and gs (the same rounded to float; either both or neither
   given), |sum G X| per head in imp (or NULL), and the finiteness check
   in *bad. The clamped head sums are accumulated in float in head order
   and scaled by 1/H at the last head, exactly as the fused pass does:
   their terms are never negative, so float loses nothing that matters.
   The signed ones cancel: the product of two floats is exact in double,
   and the head sum and the mean are taken in double, so that a layer
   entry far smaller than its terms keeps its digits. */

/* No fused multiply-add here: a product must round the same way whether
   or not the clamped sum is taken beside it, so that a result does not
   depend on which other methods were asked for. */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

static inline __attribute__((always_inline)) void
s_grow_row(const int first, const int last, const int clamp, const int sign, const int fl,
           uint32_t n,
           float invH, double invHd, float *restrict gc, float *restrict gs,
           double *restrict gsd, const uint8_t *x, const uint8_t *y, v8f *vdot, float *dot,
           v8f *bad)
{
    const v8f zero = {0};
    const v8f vinv = zero + invH;
    v8f vd = *vdot, b = *bad;
    size_t j = 0;
    /* the float loop: the clamped sums and the dot product (fl), or
       nothing when only the signed sums are asked for */
    for (; fl && j + 8 <= n; j += 8) {
        v8f a = s_ld(x + 4 * j), g = s_ld(y + 4 * j);
        b += a * zero;
        b += g * zero;
        v8f p = a * g;
        vd += p;
        if (clamp) {
            v8f c = (v8f)((v8i)p & (p > zero));
            v8f q = first ? c : s_ld(gc + j) + c;
            s_st(gc + j, last ? q * vinv : q);
        }
    }
    float d = *dot;
    for (; fl && j < n; j++) {
        float a, g;
        memcpy(&a, x + 4 * j, 4);
        memcpy(&g, y + 4 * j, 4);
        b[0] += a * 0.0f;
        b[0] += g * 0.0f;
        float p = a * g;
        d += p;
        if (clamp) {
            float c = p > 0.0f ? p : 0.0f;
            float q = first ? c : gc[j] + c;
            gc[j] = last ? q * invH : q;
        }
    }
    if (sign) {
        /* four doubles at a time: the products are exact, the head sum
           and the mean in double */
        const v4d vinvd = (v4d){0} + invHd;
        const v4f z4 = {0};
        v4f b4 = z4;
        float bf = 0.0f;
        for (j = 0; j + 4 <= n; j += 4) {
            v4f a4, g4;
            memcpy(&a4, x + 4 * j, sizeof a4);
            memcpy(&g4, y + 4 * j, sizeof g4);
            if (!fl) {
                b4 += a4 * z4;
                b4 += g4 * z4;
            }
            v4d p = __builtin_convertvector(a4, v4d) * __builtin_convertvector(g4, v4d);
            v4d q = p;
            if (!first) {
                v4d o;
                memcpy(&o, gsd + j, sizeof o);
                q = o + p;
            }
            if (last) {
                q *= vinvd;
                v4f f = __builtin_convertvector(q, v4f);
                memcpy(gs + j, &f, sizeof f);
            }
            memcpy(gsd + j, &q, sizeof q);
        }
        for (; j < n; j++) {
            float a, g;
            memcpy(&a, x + 4 * j, 4);
            memcpy(&g, y + 4 * j, 4);
            if (!fl) {
                bf += a * 0.0f;
                bf += g * 0.0f;
            }
            double p = (double)a * (double)g;
            double q = first ? p : gsd[j] + p;
            if (last) {
                q *= invHd;
                gs[j] = (float)q;
            }
            gsd[j] = q;
        }
        if (!fl)
            b[0] += ((b4[0] + b4[1]) + (b4[2] + b4[3])) + bf;
    }
    *vdot = vd;
    *dot = d;
    *bad = b;
}

static inline __attribute__((always_inline)) void
s_gpass_body(const int clamp, const int sign, const int fl, xm_work_t *w, xm_dtype_t dt, uint32_t l,
             const uint8_t *X, const uint8_t *G, float *gc, float *gs, double *gsd, double *imp,
             v8f *bad)
{
    const xm_shape_t *s = &w->shape;
    const uint32_t n = s->n, H = s->H;
    const size_t nn = (size_t)n * n, es = xm_dtype_size(dt);
    const float invH = 1.0f / (float)H;
    const double invHd = 1.0 / (double)H;
    const uint32_t flush = n >= 512 ? 1 : 512 / n;
    v8f b = *bad;
    for (uint32_t h = 0; h < H; h++) {
        const int hf = h == 0, hl = h == H - 1;
        size_t hoff = ((size_t)l * H + h) * nn * es;
        const uint8_t *hx = X + hoff, *hg = G + hoff;
        size_t hes = es;
        if (dt != XM_F32) {
            if (dt == XM_F16) {
                half_f16_decode(w->rowa, hx, nn);
                half_f16_decode(w->rowg, hg, nn);
            } else {
                half_bf16_decode(w->rowa, hx, nn);
                half_bf16_decode(w->rowg, hg, nn);
            }
            hx = (const uint8_t *)w->rowa;
            hg = (const uint8_t *)w->rowg;
            hes = 4;
        }
        double dot = 0.0;
        v8f vd = {0};
        float sd = 0.0f;
        for (uint32_t i = 0; i < n; i++) {
            const uint8_t *x = hx + (size_t)i * n * hes, *y = hg + (size_t)i * n * hes;
            float *gcr = gc ? gc + (size_t)i * n : NULL, *gsr = gs ? gs + (size_t)i * n : NULL;
            double *gdr = gsd ? gsd + (size_t)i * n : NULL;
            if (hf && hl)
                s_grow_row(1, 1, clamp, sign, fl, n, invH, invHd, gcr, gsr, gdr, x, y, &vd, &sd, &b);
            else if (hf)
                s_grow_row(1, 0, clamp, sign, fl, n, invH, invHd, gcr, gsr, gdr, x, y, &vd, &sd, &b);
            else if (hl)
                s_grow_row(0, 1, clamp, sign, fl, n, invH, invHd, gcr, gsr, gdr, x, y, &vd, &sd, &b);
            else
                s_grow_row(0, 0, clamp, sign, fl, n, invH, invHd, gcr, gsr, gdr, x, y, &vd, &sd, &b);
            if (i + 1 == n || (i + 1) % flush == 0) {
                dot += (((double)vd[0] + vd[4]) + ((double)vd[1] + vd[5])) +
                       (((double)vd[2] + vd[6]) + ((double)vd[3] + vd[7])) + sd;
                vd = (v8f){0};
                sd = 0.0f;
            }
        }
        if (imp)
            imp[(size_t)l * H + h] = fabs(dot);
    }
    *bad = b;
}

XM_CLONES static void
s_gpass(xm_work_t *w, xm_dtype_t dt, uint32_t l, const uint8_t *X, const uint8_t *G, float *gc,
        float *gs, double *gsd, double *imp, v8f *bad)
{
    /* fl = 0: only the signed sums, which read and check X and G in
       their own double loop */
    switch ((gc != NULL) * 2 + (gs != NULL)) {
    case 0: s_gpass_body(0, 0, 1, w, dt, l, X, G, gc, gs, gsd, imp, bad); break;
    case 1:
        if (imp)
            s_gpass_body(0, 1, 1, w, dt, l, X, G, gc, gs, gsd, imp, bad);
        else
            s_gpass_body(0, 1, 0, w, dt, l, X, G, gc, gs, gsd, imp, bad);
        break;
    case 2: s_gpass_body(1, 0, 1, w, dt, l, X, G, gc, gs, gsd, imp, bad); break;
    default: s_gpass_body(1, 1, 1, w, dt, l, X, G, gc, gs, gsd, imp, bad); break;
    }
}

#pragma GCC pop_options

/* ---- variants: discard ratio ------------------------------------------ */

static void
s_heapsort(float *a, long m)
{
    for (long start = m / 2 - 1, end = m; end > 1;) {
        long root;
        if (start >= 0) {
            root = start--;
        } else {
            end--;
            float t = a[0]; a[0] = a[end]; a[end] = t;
            root = 0;
        }
        for (long c; (c = 2 * root + 1) < end; root = c) {
            if (c + 1 < end && a[c] < a[c + 1])
                c++;
            if (!(a[root] < a[c]))
                break;
            float t = a[root]; a[root] = a[c]; a[c] = t;
        }
    }
}

static float
s_med3(float x, float y, float z)
{
    if (x < y)
        return y < z ? y : (x < z ? z : x);
    return x < z ? x : (y < z ? z : y);
}

/* The k-th smallest (0-based) of a[0..m), reordering a. Hoare's FIND
   with a median-of-three pivot; after a few dozen rounds (an input built
   to defeat the pivot) the remaining range is heap-sorted, so a row
   costs O(m log m) at worst. No NaN reaches here. */
static float
s_kth(float *a, long m, long k)
{
    long l = 0, r = m - 1;
    for (int round = 0; l < r; round++) {
        if (round == 48) {
            s_heapsort(a + l, r - l + 1);
            break;
        }
        float x = s_med3(a[l], a[l + (r - l) / 2], a[r]);
        long i = l, j = r;
        do {
            while (a[i] < x)
                i++;
            while (x < a[j])
                j--;
            if (i <= j) {
                float t = a[i]; a[i] = a[j]; a[j] = t;
                i++;
                j--;
            }
        } while (i <= j);
        if (j < k)
            l = i;
        if (k < i)
            r = j;
    }
    return a[k];
}

/* In every row of the n x n matrix M, zero the k smallest entries among
   the columns j != cls (ties: lower column first). 0 < k <= m. */
static void
s_discard(float *M, uint32_t n, int32_t cls, uint32_t k, float *sel)
{
    for (uint32_t i = 0; i < n; i++) {
        float *row = M + (size_t)i * n;
        uint32_t m = 0;
        for (uint32_t j = 0; j < n; j++)
            if ((int32_t)j != cls)
                sel[m++] = row[j];
        if (k >= m) {
            for (uint32_t j = 0; j < n; j++)
                if ((int32_t)j != cls)
                    row[j] = 0.0f;
            continue;
        }
        float tau = s_kth(sel, m, (long)k - 1);
        uint32_t less = 0;
        for (uint32_t q = 0; q < m; q++)
            less += sel[q] < tau;
        /* First the entries equal to tau that go, lowest column first (before
           anything else becomes 0, which could equal tau), then everything
           below tau without a branch; the CLS entry is put back. */
        uint32_t eq = k - less;
        for (uint32_t j = 0; eq > 0; j++)
            if ((int32_t)j != cls && row[j] == tau) {
                row[j] = 0.0f;
                eq--;
            }
        float keep = cls >= 0 ? row[cls] : 0.0f;
        for (uint32_t j = 0; j < n; j++)
            row[j] = row[j] < tau ? 0.0f : row[j];
        if (cls >= 0)
            row[cls] = keep;
    }
}

/* ---- readouts ---------------------------------------------------------- */

/* out = r(M) for an n x n matrix (row cls without column cls, or column
   means), accumulated with weight `wgt` into a double vector. */
XM_CLONES static void
s_readout_acc(const xm_shape_t *s, const float *M, double wgt, double *acc)
{
    const uint32_t n = s->n;
    if (s->cls >= 0) {
        const float *row = M + (size_t)s->cls * n;
        for (uint32_t j = 0, k = 0; j < n; j++)
            if ((int32_t)j != s->cls)
                acc[k++] += wgt * row[j];
    } else {
        double c = wgt / n;
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t j = 0; j < n; j++)
                acc[j] += c * M[(size_t)i * n + j];
    }
}

void
xm_readout(const xm_shape_t *s, const float *M, float *out)
{
    const uint32_t n = s->n;
    for (uint32_t j = 0, k = 0; j < n; j++) {
        if ((int32_t)j == s->cls)
            continue;
        if (s->cls >= 0) {
            out[k++] = M[(size_t)s->cls * n + j];
        } else {
            double sum = 0.0;
            for (uint32_t i = 0; i < n; i++)
                sum += M[(size_t)i * n + j];
            out[k++] = (float)(sum / n);
        }
    }
}

/* In place: M <- rownorm(I + M), given the row sums of M (or NULL to
   compute them). A row summing to 0 becomes 0. */
XM_CLONES static void
s_residual_rownorm(float *M, uint32_t n, const double *sums)
{
    for (uint32_t i = 0; i < n; i++) {
        float *row = M + (size_t)i * n;
        double sum = 1.0;
        if (sums) {
            sum += sums[i];
        } else {
            for (uint32_t j = 0; j < n; j++)
                sum += row[j];
        }
        float inv = sum != 0.0 ? (float)(1.0 / sum) : 0.0f;
        float d = row[i] + 1.0f;
        for (uint32_t j = 0; j < n; j++)
            row[j] *= inv;
        row[i] = d * inv;
    }
}

/* v <- v M (row vector times n x n matrix), in double. */
XM_CLONES static void
s_vecmat(const double *v, const float *M, uint32_t n, double *out)
{
    memset(out, 0, n * sizeof *out);
    for (uint32_t i = 0; i < n; i++) {
        double vi = v[i];
        if (vi == 0.0)
            continue;
        const float *row = M + (size_t)i * n;
        for (uint32_t j = 0; j < n; j++)
            out[j] += vi * row[j];
    }
}

/* Initial row vector of a readout: e_cls, or the uniform 1/n. */
static void
s_vec_start(const xm_shape_t *s, double *v)
{
    for (uint32_t j = 0; j < s->n; j++)
        v[j] = s->cls >= 0 ? (j == (uint32_t)s->cls) : 1.0 / s->n;
}

/* Drop the CLS entry of a length-n vector into `out`. */
static void
s_vec_out(const xm_shape_t *s, const double *v, float *out)
{
    for (uint32_t j = 0, k = 0; j < s->n; j++)
        if ((int32_t)j != s->cls)
            out[k++] = (float)v[j];
}

/* r(Â_{L-1} ... Â_s) by row vectors, last layer first. */
static void
s_rollout_vec(xm_work_t *w, const float *layers, uint32_t start, float *out)
{
    const xm_shape_t *s = &w->shape;
    size_t nn = (size_t)s->n * s->n;
    double *v = w->v, *t = w->v2;
    s_vec_start(s, v);
    for (uint32_t l = s->L; l-- > start;) {
        s_vecmat(v, layers + l * nn, s->n, t);
        double *x = v; v = t; t = x;
    }
    s_vec_out(s, v, out);
}

/* v <- v M for a double matrix (the signed layers). */
XM_CLONES static void
s_vecmat_d(const double *v, const double *M, uint32_t n, double *out)
{
    memset(out, 0, n * sizeof *out);
    for (uint32_t i = 0; i < n; i++) {
        double vi = v[i];
        if (vi == 0.0)
            continue;
        const double *row = M + (size_t)i * n;
        for (uint32_t j = 0; j < n; j++)
            out[j] += vi * row[j];
    }
}

/* c <- c + M c (column vector), M float or double (the other NULL). */
XM_CLONES static void
s_matvec_acc(const float *Mf, const double *Md, uint32_t n, const double *c, double *out)
{
    for (uint32_t i = 0; i < n; i++) {
        double sum = 0.0;
        if (Mf)
            for (uint32_t j = 0; j < n; j++)
                sum += (double)Mf[(size_t)i * n + j] * c[j];
        else
            for (uint32_t j = 0; j < n; j++)
                sum += Md[(size_t)i * n + j] * c[j];
        out[i] = c[i] + sum;
    }
}

/* v <- v R for R = (I + Ā_{L-1}) ... (I + Ā_s), by row vectors, last
   layer first; the layers float (lf) or double (ld). Leaves the result
   in w->v or w->v2 and returns it. */
static double *
s_grad_vec_through(xm_work_t *w, const float *lf, const double *ld, uint32_t start)
{
    const uint32_t n = w->shape.n;
    const size_t nn = (size_t)n * n;
    double *v = w->v, *t = w->v2;
    for (uint32_t l = w->shape.L; l-- > start;) {
        if (ld)
            s_vecmat_d(v, ld + l * nn, n, t);
        else
            s_vecmat(v, lf + l * nn, n, t);
        for (uint32_t j = 0; j < n; j++)
            t[j] += v[j];
        double *x = v; v = t; t = x;
    }
    return v;
}

/* r(R) for R = (I + Ā_{L-1}) ... (I + Ā_s), optionally residual-normalised,
   from the per-layer Ā: float `lf` or double `ld` (the other NULL).
   Everything after the layers is double: R - I is taken where it cancels
   in double, never in float (the diagonal of R is 1 plus what matters). */
static void
s_grad_rollout_vec(xm_work_t *w, const float *lf, const double *ld, bool resnorm,
                   uint32_t start, float *out)
{
    const xm_shape_t *s = &w->shape;
    const uint32_t n = s->n, L = s->L;
    const size_t nn = (size_t)n * n;
    double *v;
    if (resnorm && s->cls < 0) {
        /* Column means of rownorm(R - I) + I without R itself: with the
           row sums S = R 1 - 1 (1 pushed through the layers, first layer
           first) and u_i = 1/S_i (0 for a row summing to 0),
             r_j = (1/n) (sum_i u_i (R - I)_ij + 1) = ((u R)_j - u_j + 1) / n,
           two vector passes in double instead of L float n x n products. */
        double *c = w->v, *t = w->v2, *u = w->u;
        for (uint32_t j = 0; j < n; j++)
            c[j] = 1.0;
        for (uint32_t l = start; l < L; l++) {
            s_matvec_acc(ld ? NULL : lf + l * nn, ld ? ld + l * nn : NULL, n, c, t);
            double *x = c; c = t; t = x;
        }
        for (uint32_t i = 0; i < n; i++) {
            double S = c[i] - 1.0;
            u[i] = S != 0.0 ? 1.0 / S : 0.0;
        }
        memcpy(w->v, u, n * sizeof *u);
        v = s_grad_vec_through(w, lf, ld, start);
        for (uint32_t j = 0; j < n; j++)
            v[j] = (v[j] - u[j] + 1.0) / n;
        s_vec_out(s, v, out);
        return;
    }
    s_vec_start(s, w->v);
    v = s_grad_vec_through(w, lf, ld, start);
    if (resnorm) {
        /* Row cls of rownorm(R - I) + I, column cls dropped. */
        v[s->cls] -= 1.0;
        double sum = 0.0;
        for (uint32_t j = 0; j < n; j++)
            sum += v[j];
        double inv = sum != 0.0 ? 1.0 / sum : 0.0;
        for (uint32_t j = 0; j < n; j++)
            v[j] *= inv;
    }
    s_vec_out(s, v, out);
}

/* colsum: c_j = sum_i F[i][j] for j != cls, in double. */
static void
s_colsum(xm_work_t *w, const float *F, float *out)
{
    const xm_shape_t *s = &w->shape;
    const uint32_t n = s->n;
    double *c = w->v2;
    memset(c, 0, n * sizeof *c);
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < n; j++)
            c[j] += F[(size_t)i * n + j];
    s_vec_out(s, c, out);
}

static bool
s_all_finite(const float *x, size_t count)
{
    float bad = 0.0f;
    for (size_t k = 0; k < count; k++)
        bad += x[k] * 0.0f;
    return bad == 0.0f;
}

/* Layer l's Â with a discard of k entries per row (k > 0): into ffus for
   rollout, and into fmean too when flow shares it. Row sums are taken
   again after the discard. */
static void
s_discard_layer(xm_work_t *w, const xm_opts_t *o, uint32_t l, uint32_t k)
{
    const xm_shape_t *s = &w->shape;
    const uint32_t n = s->n;
    const size_t nn = (size_t)n * n;
    float *fm = w->fmean + l * nn, *ff = w->ffus + l * nn;
    if (o->fusion == XM_FUSE_MEAN && o->discard_flow) {
        s_discard(fm, n, s->cls, k, w->sel);
        s_residual_rownorm(fm, n, NULL);
        return;
    }
    if (o->fusion == XM_FUSE_MEAN)
        memcpy(ff, fm, nn * sizeof *ff);
    s_discard(ff, n, s->cls, k, w->sel);
    s_residual_rownorm(ff, n, NULL);
    if (o->discard_flow) {
        s_discard(fm, n, s->cls, k, w->sel);
        s_residual_rownorm(fm, n, NULL);
    } else {
        s_residual_rownorm(fm, n, w->rowsum + (size_t)l * n);
    }
}

/* Multiply a, b into *out unless it overflows size_t. */
static bool
s_mul_ok(size_t a, size_t b, size_t *out)
{
    if (a && b > SIZE_MAX / a)
        return false;
    *out = a * b;
    return true;
}

xm_err_t
xm_explain(xm_work_t *w, const xm_opts_t *o, const xm_shape_t *s, xm_dtype_t dt,
           const void *attn, const void *grad, xm_result_t *out)
{
    xm_input_t in = {.attn = attn, .grad = grad, .rel = NULL, .ntargets = 1};
    return xm_explain_ex(w, o, s, dt, &in, out);
}

/* What both entry points settle before reading any tensor: arguments,
   the work area's size for T targets and the methods asked for, the
   method set that can be computed, the start layer and the discard's k. */
typedef struct {
    unsigned want;
    uint32_t T, start, kd;
    size_t tlayers;             /* L*n*n floats */
    size_t tbytes;              /* one target's full tensor in bytes */
    float *attr[XM_NMETHODS_CORE];
} s_plan_t;

static xm_err_t
s_prepare(xm_work_t *w, const xm_opts_t *o, const xm_shape_t *s, xm_dtype_t dt, uint32_t T,
          unsigned drop, s_plan_t *pl)
{
    w->computed = 0;
    w->ntargets = 0;
    if (s->L == 0 || s->H == 0 || s->n == 0 || s->cls < -1 || s->cls >= (int32_t)s->n ||
        (s->cls >= 0 && s->n < 2) || (unsigned)dt > XM_BF16 || (unsigned)o->fusion > XM_FUSE_MIN)
        return XM_EARG;
    size_t tall;
    if (!(o->discard >= 0.0 && o->discard <= 1.0) ||
        xm_start_layer(o->start_layer, s->L, &pl->start) ||
        !s_mul_ok((size_t)s->L * s->H, (size_t)s->n * s->n, &tall) ||
        !s_mul_ok(tall, xm_dtype_size(dt), &pl->tbytes) || !s_mul_ok(pl->tbytes, T ? T : 1, &tall) ||
        !s_mul_ok((size_t)s->L * s->n, s->n, &pl->tlayers) ||
        !s_mul_ok(pl->tlayers, T ? T : 1, &tall))
        return XM_EARG;
    if (s_reserve(w, s))
        return XM_ENOMEM;
    w->shape = *s;
    w->has_grad = T > 0;

    const uint32_t n = s->n, L = s->L, H = s->H;
    unsigned want = o->methods & XM_ALL_METHODS_CORE & ~drop;
    if (!T)
        want &= ~XM_GRAD_METHODS;
    /* Entries each row loses to the discard ratio (vit-explain's int(m * ρ)). */
    const uint32_t kd = (uint32_t)(o->discard * (double)(s->cls >= 0 ? n - 1 : n));
    w->fused_separately = o->fusion != XM_FUSE_MEAN || (kd > 0 && !o->discard_flow);
    if (T > 1 || (want & ~XM_CLASSIC_METHODS) || kd > 0) {
        const size_t lt = pl->tlayers * (T ? T : 1), heads = (size_t)L * H * (T ? T : 1);
        const size_t attr = ((size_t)XM_NMETHODS_CORE + 3u * (T ? T - 1 : 0)) * n;
        if ((T > 1 && (want & XM_BIT(XM_GRAD_ROLLOUT)) &&
             s_need((void **)&w->gbar, &w->cap_gbar, lt, 4)) ||
            ((want & XM_BIT(XM_GRAD_ROLLOUT_SIGNED)) &&
             (s_need((void **)&w->gsig, &w->cap_gsig, lt, 4) ||
              s_need((void **)&w->gsigd, &w->cap_gsigd, lt, 8))) ||
            ((want & XM_BIT(XM_LRP_ROLLOUT)) && s_need((void **)&w->glrp, &w->cap_glrp, lt, 4)) ||
            (kd > 0 && s_need((void **)&w->sel, &w->cap_sel, n, 4)) ||
            s_need((void **)&w->attr, &w->cap_attr, attr, 4))
            return XM_ENOMEM;
        if (heads > w->cap_imp) {
            if (s_grow((void **)&w->imp, heads, 4) || s_grow((void **)&w->imp_acc, heads, 8))
                return XM_ENOMEM;
            w->cap_imp = heads;
        }
    }
    memset(w->acc, 0, n * sizeof *w->acc);
    for (int m = 0, off = 0; m < XM_NMETHODS_CORE; m++) {
        pl->attr[m] = w->attr + (size_t)off * n;
        off += (XM_GRAD_METHODS & XM_BIT(m)) && T > 1 ? (int)T : 1;
    }
    pl->want = want;
    pl->T = T;
    pl->kd = kd;
    return XM_OK;
}

/* The readouts that come straight from layer l's head mean (attn_mean's
   sum, and at layer 0 first_layer, diag, colsum), before Â_l replaces it. */
static void
s_layer_readouts(xm_work_t *w, const xm_opts_t *o, const s_plan_t *pl, uint32_t l)
{
    const xm_shape_t *s = &w->shape;
    const uint32_t n = s->n, L = s->L;
    const size_t nn = (size_t)n * n;
    float *fm = w->fmean + l * nn, *ff = w->ffus + l * nn;
    if (pl->want & XM_BIT(XM_ATTN_MEAN))
        s_readout_acc(s, fm, 1.0 / L, w->acc);
    if (l == 0) {
        const float *f0 = o->fusion != XM_FUSE_MEAN ? ff : fm;
        if (pl->want & XM_BIT(XM_FIRST_LAYER))
            xm_readout(s, f0, pl->attr[XM_FIRST_LAYER]);
        if (pl->want & XM_BIT(XM_DIAG))
            for (uint32_t j = 0, k = 0; j < n; j++)
                if ((int32_t)j != s->cls)
                    pl->attr[XM_DIAG][k++] = fm[(size_t)j * n + j];
        if (pl->want & XM_BIT(XM_COLSUM))
            s_colsum(w, f0, pl->attr[XM_COLSUM]);
    }
}

/* Layer l's head means become Â_l (and the fused Â_l when rollout has
   its own), with the discard when asked for. Nonzero: a NaN on the way
   into the discard's selection. */
static int
s_layer_finish(xm_work_t *w, const xm_opts_t *o, const s_plan_t *pl, uint32_t l, v8f bad)
{
    const uint32_t n = w->shape.n;
    const size_t nn = (size_t)n * n;
    if (pl->kd > 0) {
        if (s_hsum(bad) != 0.0f)    /* no NaN into the selection */
            return -1;
        s_discard_layer(w, o, l, pl->kd);
        return 0;
    }
    s_residual_rownorm(w->fmean + l * nn, n, w->rowsum + (size_t)l * n);
    if (w->fused_separately)
        s_residual_rownorm(w->ffus + l * nn, n, NULL);
    return 0;
}

/* Everything after the per-layer matrices: the products, flow, the
   finiteness of the results and *out. `imp` holds the head importance
   as double (the full form's sums) or is NULL when w->imp was filled. */
static xm_err_t
s_finish(xm_work_t *w, const xm_opts_t *o, const s_plan_t *pl, bool imp_acc, xm_result_t *out)
{
    const xm_shape_t *s = &w->shape;
    const uint32_t L = s->L, H = s->H, nf = xm_nfeat(s), T = pl->T;
    const unsigned want = pl->want;
    const size_t tlayers = pl->tlayers;
    float *const *attr = pl->attr;
    if (want & XM_BIT(XM_ATTN_MEAN))
        for (uint32_t k = 0; k < nf; k++)
            attr[XM_ATTN_MEAN][k] = (float)w->acc[k];
    if (want & XM_BIT(XM_ROLLOUT))
        s_rollout_vec(w, xm_work_rollout_layers(w), pl->start, attr[XM_ROLLOUT]);
    for (uint32_t t = 0; t < T; t++) {
        if (want & XM_BIT(XM_GRAD_ROLLOUT))
            s_grad_rollout_vec(w, w->gbar + t * tlayers, NULL, o->grad_resnorm, pl->start,
                               attr[XM_GRAD_ROLLOUT] + (size_t)t * nf);
        if (want & XM_BIT(XM_GRAD_ROLLOUT_SIGNED))
            s_grad_rollout_vec(w, NULL, w->gsigd + t * tlayers, o->grad_resnorm, pl->start,
                               attr[XM_GRAD_ROLLOUT_SIGNED] + (size_t)t * nf);
        if (want & XM_BIT(XM_LRP_ROLLOUT))
            s_grad_rollout_vec(w, w->glrp + t * tlayers, NULL, o->grad_resnorm, pl->start,
                               attr[XM_LRP_ROLLOUT] + (size_t)t * nf);
    }
    if ((want & XM_BIT(XM_FLOW)) && flow_compute(w->flow, L, s->n, s->cls, w->fmean, attr[XM_FLOW]))
        return XM_ENOMEM;

    for (int m = 0; m < XM_NMETHODS_CORE; m++) {
        if (!(want & XM_BIT(m)))
            continue;
        if (!s_all_finite(attr[m], (size_t)nf * ((XM_GRAD_METHODS & XM_BIT(m)) ? T : 1)))
            return XM_ENONFINITE;
        out->attr[m] = attr[m];
    }
    if (imp_acc)
        for (size_t k = 0; k < (size_t)L * H * (T ? T : 1); k++)
            w->imp[k] = (float)w->imp_acc[k];
    w->computed = want;
    w->ntargets = T;
    out->computed = want;
    out->ntargets = T;
    out->head_confidence = w->conf;
    out->head_importance = T ? w->imp : NULL;
    return XM_OK;
}

xm_err_t
xm_explain_ex(xm_work_t *w, const xm_opts_t *o, const xm_shape_t *s, xm_dtype_t dt,
              const xm_input_t *in, xm_result_t *out)
{
    memset(out, 0, sizeof *out);
    const void *attn = in->attn, *grad = in->grad, *rel = in->rel;
    if ((grad && in->ntargets == 0) || (rel && !grad)) {
        w->computed = 0;
        w->ntargets = 0;
        return XM_EARG;
    }
    s_plan_t pl;
    xm_err_t rc = s_prepare(w, o, s, dt, grad ? in->ntargets : 0,
                            rel ? 0u : XM_BIT(XM_LRP_ROLLOUT), &pl);
    if (rc != XM_OK)
        return rc;
    const uint32_t L = s->L, H = s->H, T = pl.T;
    const size_t nn = (size_t)s->n * s->n, tlayers = pl.tlayers, tbytes = pl.tbytes;
    const unsigned want = pl.want;

    v8f bad = {0};
    for (uint32_t l = 0; l < L; l++) {
        s_layer_pass(w, o->fusion, dt, l, (const uint8_t *)attn, (const uint8_t *)grad, &bad);
        s_layer_readouts(w, o, &pl, l);
        if (s_layer_finish(w, o, &pl, l, bad))
            return XM_ENONFINITE;
    }
    if (s_hsum(bad) != 0.0f)
        return XM_ENONFINITE;

    /* Targets after the first, the signed products and the relevances:
       passes of their own, only when there is something to compute. */
    for (uint32_t t = 0; t < T; t++) {
        const uint8_t *Gt = (const uint8_t *)grad + t * tbytes;
        float *gc = t > 0 && (want & XM_BIT(XM_GRAD_ROLLOUT)) ? w->gbar + t * tlayers : NULL;
        float *gs = want & XM_BIT(XM_GRAD_ROLLOUT_SIGNED) ? w->gsig + t * tlayers : NULL;
        double *gsd = gs ? w->gsigd + t * tlayers : NULL;
        double *imp = t > 0 ? w->imp_acc + (size_t)t * L * H : NULL;
        if (t > 0 || gs)
            for (uint32_t l = 0; l < L; l++)
                s_gpass(w, dt, l, (const uint8_t *)attn, Gt, gc ? gc + l * nn : NULL,
                        gs ? gs + l * nn : NULL, gsd ? gsd + l * nn : NULL, imp, &bad);
        if (rel) {
            const uint8_t *Rt = (const uint8_t *)rel + t * tbytes;
            float *gl = want & XM_BIT(XM_LRP_ROLLOUT) ? w->glrp + t * tlayers : NULL;
            for (uint32_t l = 0; l < L; l++)
                s_gpass(w, dt, l, Rt, Gt, gl ? gl + l * nn : NULL, NULL, NULL, NULL, &bad);
        }
    }
    if (s_hsum(bad) != 0.0f)
        return XM_ENONFINITE;
    return s_finish(w, o, &pl, true, out);
}

/* ---- the fused form ----------------------------------------------------- */

/* `count` values of dtype dt at `src` (any alignment) into float32 `dst`,
   accumulating the finiteness check into *bad. Compiled per target like
   the full pass: the check's vector sum stays in a register. */
XM_CLONES static void
s_load(float *dst, const uint8_t *src, size_t count, xm_dtype_t dt, v8f *bad)
{
    if (dt == XM_F32)
        memcpy(dst, src, count * 4);
    else if (dt == XM_F16)
        half_f16_decode(dst, src, count);
    else
        half_bf16_decode(dst, src, count);
    const v8f zero = {0};
    v8f b = zero;
    size_t k = 0;
    for (; k + 8 <= count; k += 8)
        b += s_ld(dst + k) * zero;
    float t = 0.0f;
    for (; k < count; k++)
        t += dst[k] * 0.0f;
    b[0] += t;
    *bad += b;
}

/* Row sums of layer l's head means, in the same order as the full form's
   pass takes them (eight float lanes of n/8 terms, added in double, then
   the tail in double), so that Â_l comes out bit for bit the same. */
XM_CLONES static void
s_fused_rowsums(xm_work_t *w, uint32_t l)
{
    const uint32_t n = w->shape.n;
    const float *fm = w->fmean + (size_t)l * n * n;
    double *rs = w->rowsum + (size_t)l * n;
    for (uint32_t i = 0; i < n; i++) {
        const float *row = fm + (size_t)i * n;
        v8f vsum = {0};
        uint32_t j = 0;
        for (; j + 8 <= n; j += 8)
            vsum += s_ld(row + j);
        double sum = 0.0;
        for (int k = 0; k < 8; k++)
            sum += vsum[k];
        for (; j < n; j++)
            sum += row[j];
        rs[i] = sum;
    }
}

xm_err_t
xm_explain_fused(xm_work_t *w, const xm_opts_t *o, const xm_shape_t *s, xm_dtype_t dt,
                 const xm_fused_t *in, xm_result_t *out)
{
    memset(out, 0, sizeof *out);
    w->computed = 0;
    w->ntargets = 0;
    if (!in->mean || !in->confidence || (in->pos && (in->ntargets == 0 || !in->importance)) ||
        (in->sign && !in->pos))
        return XM_EARG;
    if (o->fusion != XM_FUSE_MEAN)
        return XM_EHEADS;
    const uint32_t T = in->pos ? in->ntargets : 0;
    s_plan_t pl;
    xm_err_t rc = s_prepare(w, o, s, dt, T,
                            XM_BIT(XM_LRP_ROLLOUT) | (in->sign ? 0u : XM_BIT(XM_GRAD_ROLLOUT_SIGNED)),
                            &pl);
    if (rc != XM_OK)
        return rc;
    const uint32_t L = s->L, H = s->H;
    const size_t nn = (size_t)s->n * s->n, es = xm_dtype_size(dt);
    const size_t lbytes = nn * es, tbytes = (size_t)L * lbytes;
    /* P goes to gbar for every target even when grad_rollout is not
       asked for: the trade query's matrices are built from it. */
    if (T > 1 && s_need((void **)&w->gbar, &w->cap_gbar, pl.tlayers * T, 4))
        return XM_ENOMEM;

    v8f bad = {0};
    for (uint32_t l = 0; l < L; l++) {
        s_load(w->fmean + l * nn, (const uint8_t *)in->mean + l * lbytes, nn, dt, &bad);
        s_fused_rowsums(w, l);
        s_layer_readouts(w, o, &pl, l);
        if (s_layer_finish(w, o, &pl, l, bad))
            return XM_ENONFINITE;
    }
    for (uint32_t t = 0; t < T; t++) {
        s_load(w->gbar + t * pl.tlayers, (const uint8_t *)in->pos + t * tbytes, pl.tlayers, dt,
               &bad);
        if (pl.want & XM_BIT(XM_GRAD_ROLLOUT_SIGNED)) {
            float *gs = w->gsig + t * pl.tlayers;
            double *gsd = w->gsigd + t * pl.tlayers;
            s_load(gs, (const uint8_t *)in->sign + t * tbytes, pl.tlayers, dt, &bad);
            for (size_t k = 0; k < pl.tlayers; k++)
                gsd[k] = gs[k];
        }
    }
    const size_t lh = (size_t)L * H;
    s_load(w->conf, (const uint8_t *)in->confidence, lh, XM_F32, &bad);
    if (T)
        s_load(w->imp, (const uint8_t *)in->importance, lh * T, XM_F32, &bad);
    if (s_hsum(bad) != 0.0f)
        return XM_ENONFINITE;
    return s_finish(w, o, &pl, false, out);
}

const float *
xm_work_rollout_layers(const xm_work_t *w)
{
    return w->fused_separately ? w->ffus : w->fmean;
}

const float *
xm_work_flow_layers(const xm_work_t *w)
{
    return w->fmean;
}

const float *
xm_work_grad_layers(const xm_work_t *w)
{
    return w->has_grad ? w->gbar : NULL;
}

const float *
xm_work_layers(const xm_work_t *w, xm_method_t m, uint32_t t)
{
    const size_t tl = (size_t)w->shape.L * w->shape.n * w->shape.n;
    bool on = (w->computed & XM_BIT(m)) != 0;
    switch (m) {
    case XM_ROLLOUT: return on ? xm_work_rollout_layers(w) : NULL;
    case XM_FLOW: return on ? w->fmean : NULL;
    case XM_GRAD_ROLLOUT: return on && t < w->ntargets ? w->gbar + t * tl : NULL;
    case XM_GRAD_ROLLOUT_SIGNED: return on && t < w->ntargets ? w->gsig + t * tl : NULL;
    case XM_LRP_ROLLOUT: return on && t < w->ntargets ? w->glrp + t * tl : NULL;
    default: return NULL;
    }
}

static void
s_identity(float *M, uint32_t n)
{
    memset(M, 0, (size_t)n * n * sizeof *M);
    for (uint32_t i = 0; i < n; i++)
        M[(size_t)i * n + i] = 1.0f;
}

void
xm_rollout_matrix(uint32_t L, uint32_t n, const float *layers, float *out, float *tmp)
{
    size_t nn = (size_t)n * n;
    if (L == 0) {
        s_identity(out, n);
        return;
    }
    /* Ping-pong between out and tmp, starting where the L - 1 products
       will end in out. */
    float *R = (L % 2) ? out : tmp, *T = (L % 2) ? tmp : out;
    memcpy(R, layers, nn * sizeof *R);
    for (uint32_t l = 1; l < L; l++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n, (int)n, 1.0f,
                    layers + l * nn, (int)n, R, (int)n, 0.0f, T, (int)n);
        float *x = R; R = T; T = x;
    }
}

void
xm_grad_rollout_matrix(uint32_t L, uint32_t n, const float *layers, bool resnorm, float *out,
                       float *tmp)
{
    size_t nn = (size_t)n * n;
    if (!resnorm) {
        float *R = out, *T = tmp;
        s_identity(R, n);
        for (uint32_t l = 0; l < L; l++) {
            memcpy(T, R, nn * sizeof *T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n, (int)n, 1.0f,
                        layers + l * nn, (int)n, R, (int)n, 1.0f, T, (int)n);
            float *x = R; R = T; T = x;
        }
        if (R != out)
            memcpy(out, R, nn * sizeof *R);
        return;
    }
    /* The residual normalisation needs R - I: built directly as D,
       D <- D + Ā_l (I + D) from D = 0. R's diagonal is 1 plus what the
       normalisation keeps, which R - I taken in float32 would leave a
       few digits only. */
    float *D = out, *T = tmp;
    memset(D, 0, nn * sizeof *D);
    for (uint32_t l = 0; l < L; l++) {
        const float *Al = layers + l * nn;
        for (size_t k = 0; k < nn; k++)
            T[k] = D[k] + Al[k];
        if (l > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n, (int)n, 1.0f,
                        Al, (int)n, D, (int)n, 1.0f, T, (int)n);
        float *x = D; D = T; T = x;
    }
    if (D != out)
        memcpy(out, D, nn * sizeof *D);
    for (uint32_t i = 0; i < n; i++) {
        float *row = out + (size_t)i * n;
        double sum = 0.0;
        for (uint32_t j = 0; j < n; j++)
            sum += row[j];
        float inv = sum != 0.0 ? (float)(1.0 / sum) : 0.0f;
        for (uint32_t j = 0; j < n; j++)
            row[j] *= inv;
        row[i] += 1.0f;
    }
}

void
xm_blas_single_thread(void)
{
    openblas_set_num_threads(1);
}
