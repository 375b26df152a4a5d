/*  wire: contract v1 ingest decoding. See wire.h and proto/.  */
#include "wire.h"

#include "half.h"
#include "segment.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *s_reason_names[XR_NREASONS] = {
    [XR_OK] = "ok",
    [XR_FRAMES] = "frames",
    [XR_TOPIC] = "topic",
    [XR_MSGPACK] = "msgpack",
    [XR_NOT_MAP] = "not_map",
    [XR_VERSION] = "version",
    [XR_MISSING_KEY] = "missing_key",
    [XR_WRONG_TYPE] = "wrong_type",
    [XR_DUPLICATE_KEY] = "duplicate_key",
    [XR_MODEL_NAME] = "model_name",
    [XR_DTYPE] = "dtype",
    [XR_SHAPE] = "shape",
    [XR_TOO_LARGE] = "too_large",
    [XR_SIZE] = "size",
    [XR_LENGTH] = "length",
    [XR_BAD_STRING] = "bad_string",
    [XR_NONFINITE] = "nonfinite",
    [XR_NOT_ALLOWED] = "not_allowed",
    [XR_TOO_MANY_MODELS] = "too_many_models",
    [XR_NO_SCHEMA] = "no_schema",
    [XR_INTERNAL] = "internal",
    [XR_ATTENTION] = "attention",
    [XR_SCHEMA_RATE] = "schema_rate",
    [XR_FUSED_FORM] = "fused_form",
    [XR_NEEDS_HEADS] = "needs_heads",
    [XR_GROUP_UNKNOWN_TOKEN] = "group_unknown_token",
    [XR_GROUP_TOKEN_TWICE] = "group_token_twice",
    [XR_GROUP_CLS_TOKEN] = "group_cls_token",
    [XR_GROUP_EMPTY] = "group_empty",
    [XR_GROUP_DUP_NAME] = "group_duplicate_feature_name",
    [XR_GROUP_DUP_TOKEN_NAME] = "group_duplicate_token_name",
};

const char *
xr_reason_name(xr_reason_t r)
{
    return (unsigned)r < XR_NREASONS ? s_reason_names[r] : "unknown";
}

void
wire_limits_default(wire_limits_t *lim)
{
    lim->max_batch = 4096;
    lim->max_layers = 64;
    lim->max_heads = 64;
    lim->max_tokens = 1024;
    /* 4 Mi values (16 MiB of f32 per tensor): one trade of the largest
       tabular transformer we size for (L = 8, H = 8, n = 256), or 64
       trades of L = 8, H = 8, n = 32. See the README's memory section. */
    lim->max_elems = 4u << 20;
    lim->max_str = 256;
    lim->max_targets = 16;
    lim->max_groups = 0;        /* max_tokens */
    lim->fused = true;
}

/* What the fused form may need beyond the full one: its tensors and head
   statistics together hold at most 2 * max_elems values (the decoder
   refuses more as too_large), as attn and grad do, so only the five keys
   and their bin headers are extra. */
static uint64_t
s_fused_extra(const wire_limits_t *lim)
{
    return lim->fused ? 5 * (16 + 5) : 0;
}

/* Room left for keys the contract lets a publisher add (ignored). */
#define WIRE_UNKNOWN_SLACK (64u << 10)

uint64_t
wire_max_body(const wire_limits_t *lim)
{
    /* A bin or str header is at most 5 bytes, an int at most 9. */
    uint64_t tensor = lim->max_elems * 4;
    if (tensor > UINT32_MAX)
        tensor = UINT32_MAX;
    uint64_t id = lim->max_str + 5 > 9 ? lim->max_str + 5 : 9;
    uint64_t b = 5                                  /* the map header */
                 + 18 * 8                           /* the known keys, "targets" longest */
                 + 1 + (5 + WIRE_MODEL_MAX)         /* v, model */
                 + 6 * 9 + 5                        /* seq ts L H n cls, dtype */
                 + 3 * (5 + tensor)                 /* attn, grad, rel */
                 + s_fused_extra(lim)               /* the fused form's keys */
                 + 5 + (uint64_t)lim->max_batch * id /* ids */
                 + 2 * (5 + (uint64_t)lim->max_batch * 9) /* target, y */
                 + 5 + (uint64_t)(lim->max_targets ? lim->max_targets : 16) * 9 /* targets */
                 + 5 + (uint64_t)lim->max_tokens * (lim->max_str + 5) /* tokens */
                 /* groups: their tokens are at most max_tokens names, and
                    each group adds a name and two headers */
                 + 5 + (uint64_t)lim->max_tokens * (lim->max_str + 5)
                 + (uint64_t)(lim->max_groups ? lim->max_groups : lim->max_tokens) *
                       (lim->max_str + 5 + 5)
                 + WIRE_UNKNOWN_SLACK;
    return b;
}

/* ---- attention rows ----------------------------------------------------- */

typedef float s_v8f __attribute__((vector_size(32)));
typedef int32_t s_v8i __attribute__((vector_size(32)));

static inline float
s_lane_sum(s_v8f v)
{
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* Is a row of sum `sum` and smallest value `mn` a distribution within tol?
   NaN or Inf pass: the finiteness check names them. */
static inline bool
s_row_fine(double sum, double mn, double tol)
{
    if (!isfinite(sum))
        return true;
    return mn >= -tol && (fabs(sum - 1.0) <= tol || fabs(sum) <= tol);
}

/* The exact answer, row by row in double: run only when the fast pass
   below saw something wrong (or for 16-bit data after decoding). */
static bool
s_rows_slow(const xm_shape_t *shape, xm_dtype_t dtype, const uint8_t *a, float tol,
            wire_attn_bad_t *bad)
{
    const uint32_t n = shape->n;
    const size_t rows = (size_t)shape->L * shape->H * n, es = xm_dtype_size(dtype);
    for (size_t r = 0; r < rows; r++) {
        double sum = 0.0, mn = INFINITY;
        const uint8_t *row = a + r * n * es;
        for (uint32_t j = 0; j < n; j++) {
            float x;
            if (dtype == XM_F32) {
                memcpy(&x, row + 4 * (size_t)j, 4);
            } else {
                uint16_t h;
                memcpy(&h, row + 2 * (size_t)j, 2);
                x = dtype == XM_F16 ? half_f16_to_f32(h) : half_bf16_to_f32(h);
            }
            sum += x;
            mn = x < mn ? x : mn;
        }
        if (s_row_fine(sum, mn, tol))
            continue;
        if (bad) {
            size_t lh = r / n;
            *bad = (wire_attn_bad_t){.l = (uint32_t)(lh / shape->H), .h = (uint32_t)(lh % shape->H),
                                     .i = (uint32_t)(r % n), .sum = (float)sum, .min = (float)mn};
        }
        return false;
    }
    return true;
}

/* The fast pass over float32 rows: eight lanes summing each row (n/8
   terms a lane), one minimum over the whole tensor, no branch per row but
   the loop's. True when every row is surely fine. */
static inline __attribute__((always_inline)) bool
s_rows_fast(const uint8_t *a, size_t rows, uint32_t n, float tol)
{
    const s_v8f zero = {0};
    s_v8f vmin = zero + INFINITY;
    float tmin = INFINITY;
    bool fine = true;
    for (size_t r = 0; r < rows; r++, a += (size_t)n * 4) {
        s_v8f vs = zero;
        uint32_t j = 0;
        for (; j + 8 <= n; j += 8) {
            s_v8f x;
            memcpy(&x, a + 4 * (size_t)j, sizeof x);
            vs += x;
            s_v8i lt = x < vmin;
            vmin = (s_v8f)(((s_v8i)x & lt) | ((s_v8i)vmin & ~lt));
        }
        float sum = s_lane_sum(vs);
        for (; j < n; j++) {
            float x;
            memcpy(&x, a + 4 * (size_t)j, sizeof x);
            sum += x;
            tmin = x < tmin ? x : tmin;
        }
        /* Not finite: fine here (finiteness is checked elsewhere). */
        fine &= !(fabsf(sum - 1.0f) > tol && fabsf(sum) > tol) || !(sum - sum == 0.0f);
    }
    for (int k = 0; k < 8; k++)
        tmin = vmin[k] < tmin ? vmin[k] : tmin;
    return fine && !(tmin < -tol);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define WIRE_HAVE_AVX2 1

/* The fast pass with AVX2 for rows of a multiple of 8 values, 8 rows at
   a time: their eight lane-sum vectors are reduced together (a transpose
   by horizontal adds), so a row costs no reduction of its own. Rows past
   the last full group of 8 go to s_rows_fast. */
__attribute__((target("avx2"))) static bool
s_rows_fast_avx2(const uint8_t *a, size_t rows, uint32_t n, float tol)
{
    const __m256 one = _mm256_set1_ps(1.0f), vtol = _mm256_set1_ps(tol);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vmin = _mm256_set1_ps(INFINITY), bad = _mm256_setzero_ps();
    const size_t stride = (size_t)n * 4;
    size_t r = 0;
    for (; r + 8 <= rows; r += 8, a += 8 * stride) {
        __m256 v[8];
        for (int k = 0; k < 8; k++)
            v[k] = _mm256_setzero_ps();
        for (uint32_t j = 0; j < n; j += 8)
            for (int k = 0; k < 8; k++) {
                __m256 x = _mm256_loadu_ps((const float *)(const void *)(a + k * stride + 4 * (size_t)j));
                v[k] = _mm256_add_ps(v[k], x);
                vmin = _mm256_min_ps(x, vmin);     /* x NaN: vmin kept */
            }
        __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
        __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20),
                                   _mm256_permute2f128_ps(t0, t1, 0x31));
        /* Bad: |sum - 1| > tol and |sum| > tol, and sum finite (sum - sum
           is 0 only then; NaN compares false, which keeps it out). */
        __m256 off1 = _mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(sum, one), absmask), vtol, _CMP_GT_OQ);
        __m256 off0 = _mm256_cmp_ps(_mm256_and_ps(sum, absmask), vtol, _CMP_GT_OQ);
        __m256 fin = _mm256_cmp_ps(_mm256_sub_ps(sum, sum), _mm256_setzero_ps(), _CMP_EQ_OQ);
        bad = _mm256_or_ps(bad, _mm256_and_ps(_mm256_and_ps(off1, off0), fin));
    }
    if (_mm256_movemask_ps(bad))
        return false;
    /* NaN never enters vmin (min_ps returns its second operand when
       either is NaN), as in the scalar pass. */
    float m[8];
    _mm256_storeu_ps(m, vmin);
    for (int k = 0; k < 8; k++)
        if (m[k] < -tol)
            return false;
    return r == rows || s_rows_fast(a, rows - r, n, tol);
}

static bool
s_rows_fast_any(const uint8_t *a, size_t rows, uint32_t n, float tol)
{
    if (n % 8 == 0 && rows >= 8 && __builtin_cpu_supports("avx2"))
        return s_rows_fast_avx2(a, rows, n, tol);
    return s_rows_fast(a, rows, n, tol);
}
#else
#define s_rows_fast_any s_rows_fast
#endif

/* Compiled twice, for AVX2 and for the baseline; the loader picks. */
__attribute__((target_clones("arch=x86-64-v3", "default"))) bool
wire_attn_rows_ok(const xm_shape_t *shape, xm_dtype_t dtype, const void *attn, float tol,
                  wire_attn_bad_t *bad)
{
    const uint32_t n = shape->n;
    const size_t rows = (size_t)shape->L * shape->H * n;
    const uint8_t *a = (const uint8_t *)attn;
    if (dtype == XM_F32) {
        if (s_rows_fast_any(a, rows, n, tol))
            return true;
    } else {
        /* 16-bit rows are decoded to float32 a block of rows at a time. */
        float buf[2048];
        size_t per = n <= 2048 ? 2048 / n : 0, r = 0;
        bool fine = per > 0;
        for (; fine && r < rows; r += per) {
            size_t c = rows - r < per ? rows - r : per;
            if (dtype == XM_F16)
                half_f16_decode(buf, a + 2 * r * n, c * n);
            else
                half_bf16_decode(buf, a + 2 * r * n, c * n);
            fine = s_rows_fast_any((const uint8_t *)buf, c, n, tol);
        }
        if (fine)
            return true;
    }
    return s_rows_slow(shape, dtype, a, tol, bad);
}

bool
wire_fused_trade_ok(const wire_ingest_t *in, uint32_t b, float tol, wire_attn_bad_t *bad)
{
    const xm_shape_t *sh = &in->shape;
    const xm_shape_t m = {sh->L, 1, sh->n, sh->cls};
    if (!wire_attn_rows_ok(&m, in->dtype, in->fattn + (size_t)b * in->trade_bytes, tol, bad))
        return false;
    const size_t lh = (size_t)sh->L * sh->H;
    const uint32_t T = in->ntargets ? in->ntargets : 1;
    for (int which = 0; which < 2; which++) {
        const uint8_t *p = which ? in->head_importance : in->head_confidence;
        if (!p)
            continue;
        /* head_importance holds one [L][H] block per target. */
        const size_t cnt = which ? lh * T : lh;
        p += (size_t)b * cnt * 4;
        for (size_t k = 0; k < cnt; k++) {
            float x;
            memcpy(&x, p + 4 * k, 4);
            /* NaN compares false both ways: left to the finiteness check. */
            bool off = which ? x < -tol : (x < -tol || x > 1.0f + tol);
            if (off) {
                if (bad)
                    *bad = (wire_attn_bad_t){.l = (uint32_t)(k % lh / sh->H),
                                             .h = (uint32_t)(k % sh->H),
                                             .i = UINT32_MAX, .sum = x, .min = 0.0f};
                return false;
            }
        }
    }
    return true;
}

void
wire_decoder_init(wire_decoder_t *d, const wire_limits_t *lim)
{
    memset(d, 0, sizeof *d);
    d->lim = *lim;
}

void
wire_decoder_destroy(wire_decoder_t *d)
{
    free(d->ids);
    free(d->target);
    free(d->y);
    free(d->tokens);
    free(d->targets);
    free(d->gdefs);
    free(d->gtoks);
    free(d->gnames);
    xm_groups_free(&d->gmap);
    memset(d, 0, sizeof *d);
}

bool
wire_model_name_ok(const void *name, size_t len)
{
    const uint8_t *p = (const uint8_t *)name;
    if (len < 1 || len > WIRE_MODEL_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

bool
wire_utf8_ok(const void *str, size_t len)
{
    const uint8_t *s = (const uint8_t *)str, *end = s + len;
    while (s < end) {
        uint8_t c = *s;
        if (c < 0x80) {
            s++;
            continue;
        }
        size_t need;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) { need = 1; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { need = 2; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { need = 3; cp = c & 0x07; min = 0x10000; }
        else return false;
        if ((size_t)(end - s) <= need)
            return false;
        for (size_t k = 1; k <= need; k++) {
            if ((s[k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        s += need + 1;
    }
    return true;
}

int
wire_dtype_parse(const void *s, size_t len)
{
    if (len == 3 && memcmp(s, "f32", 3) == 0) return XM_F32;
    if (len == 3 && memcmp(s, "f16", 3) == 0) return XM_F16;
    if (len == 4 && memcmp(s, "bf16", 4) == 0) return XM_BF16;
    return -1;
}

const char *
wire_dtype_name(xm_dtype_t d)
{
    return d == XM_F16 ? "f16" : d == XM_BF16 ? "bf16" : "f32";
}

__attribute__((format(printf, 3, 4))) static xr_reason_t
s_fail(wire_decoder_t *d, xr_reason_t r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->detail, sizeof d->detail, fmt, ap);
    va_end(ap);
    return r;
}

static xr_reason_t
s_msgpack_fail(wire_decoder_t *d, mpr_err_t e, const char *where)
{
    return s_fail(d, XR_MSGPACK, "%s: %s", where,
                  e == MPR_ETRUNC   ? "truncated (a declared length exceeds the bytes present)"
                  : e == MPR_EDEPTH ? "nested too deeply"
                                    : "invalid msgpack byte 0xc1");
}

/* The keys the decoder knows, as bits for the seen/duplicate check. */
enum {
    K_V, K_MODEL, K_SEQ, K_TS, K_IDS, K_L, K_H, K_N, K_DTYPE, K_ATTN, K_GRAD,
    K_TARGET, K_Y, K_CLS, K_TOKENS, K_TAGS, K_REL, K_TARGETS, K_GROUPS,
    K_FATTN, K_FGRAD, K_FGRAD_SIGNED, K_HEAD_IMP, K_HEAD_CONF,   /* the fused form */
    K_COUNT
};
#define K_FULL_COUNT K_FATTN
static const char *s_keys[K_COUNT] = {"v", "model", "seq", "ts", "ids", "L", "H", "n",
                                      "dtype", "attn", "grad", "target", "y", "cls", "tokens",
                                      "tags", "rel", "targets", "groups", "fattn", "fgrad", "fgrad_signed",
                                      "head_importance", "head_confidence"};
static const unsigned s_required = 1u << K_V | 1u << K_MODEL | 1u << K_SEQ | 1u << K_TS |
                                   1u << K_IDS | 1u << K_L | 1u << K_H | 1u << K_N |
                                   1u << K_DTYPE | 1u << K_ATTN;
/* The fused form needs fattn and head_confidence in place of attn. */
static const unsigned s_required_fused = (s_required & ~(1u << K_ATTN)) | 1u << K_FATTN |
                                         1u << K_HEAD_CONF;
static const unsigned s_fused_keys = 1u << K_FATTN | 1u << K_FGRAD | 1u << K_FGRAD_SIGNED |
                                     1u << K_HEAD_IMP | 1u << K_HEAD_CONF;

/* Index of a known key; a decoder that does not take the fused form
   does not know its keys (they are ignored, as by an older daemon). */
static int
s_key_index(const wire_decoder_t *d, const mpr_obj_t *k)
{
    int count = d->lim.fused ? K_COUNT : K_FULL_COUNT;
    for (int i = 0; i < count; i++)
        if (mpr_str_eq(k, s_keys[i]))
            return i;
    return -1;
}

static int
s_grow_batch(wire_decoder_t *d, uint32_t count)
{
    if (count <= d->cap_batch)
        return 0;
    uint32_t cap = d->cap_batch ? d->cap_batch : 16;
    while (cap < count)
        cap *= 2;
    wire_id_t *ids = realloc(d->ids, cap * sizeof *ids);
    if (ids)
        d->ids = ids;
    int64_t *t = realloc(d->target, cap * sizeof *t);
    if (t)
        d->target = t;
    double *y = realloc(d->y, cap * sizeof *y);
    if (y)
        d->y = y;
    if (!ids || !t || !y)
        return -1;
    d->cap_batch = cap;
    return 0;
}

static int
s_grow_tokens(wire_decoder_t *d, uint32_t count)
{
    if (count <= d->cap_tokens)
        return 0;
    uint32_t cap = d->cap_tokens ? d->cap_tokens : 64;
    while (cap < count)
        cap *= 2;
    wire_sv_t *t = realloc(d->tokens, cap * sizeof *t);
    if (!t)
        return -1;
    d->tokens = t;
    d->cap_tokens = cap;
    return 0;
}

/* A string that goes back out to subscribers must be UTF-8 and bounded. */
static xr_reason_t
s_check_str(wire_decoder_t *d, const mpr_obj_t *o, const char *what, uint32_t idx)
{
    if (o->v.raw.len > d->lim.max_str)
        return s_fail(d, XR_BAD_STRING, "%s[%" PRIu32 "] is %" PRIu32 " bytes (limit %" PRIu32 ")",
                      what, idx, o->v.raw.len, d->lim.max_str);
    if (!wire_utf8_ok(o->v.raw.ptr, o->v.raw.len))
        return s_fail(d, XR_BAD_STRING, "%s[%" PRIu32 "] is not valid UTF-8", what, idx);
    if (memchr(o->v.raw.ptr, 0, o->v.raw.len))
        return s_fail(d, XR_BAD_STRING, "%s[%" PRIu32 "] contains a NUL byte", what, idx);
    return XR_OK;
}

static xr_reason_t
s_wrong_type(wire_decoder_t *d, const char *key, const char *want, const mpr_obj_t *got)
{
    return s_fail(d, XR_WRONG_TYPE, "key '%s': expected %s, got %s", key, want,
                  mpr_type_name(got->type));
}

/* First pass: find "v" and check it before anything else is believed, so
   that a message of a future version is reported as such. */
static xr_reason_t
s_check_version(wire_decoder_t *d, mpr_t r, uint32_t pairs)
{
    for (uint32_t k = 0; k < pairs; k++) {
        mpr_obj_t key, val;
        mpr_err_t e = mpr_next(&r, &key);
        if (e)
            return s_msgpack_fail(d, e, "map key");
        if (key.type != MPR_STR)
            return s_fail(d, XR_NOT_MAP, "map key %" PRIu32 " is a %s, not a str", k,
                          mpr_type_name(key.type));
        if (mpr_str_eq(&key, "v")) {
            if ((e = mpr_next(&r, &val)))
                return s_msgpack_fail(d, e, "key 'v'");
            if (val.type != MPR_UINT || val.v.u != WIRE_VERSION)
                return s_fail(d, XR_VERSION, "unsupported version (v must be 1, got %s%s%" PRIu64 ")",
                              val.type == MPR_UINT ? "" : mpr_type_name(val.type),
                              val.type == MPR_UINT ? "" : " ",
                              val.type == MPR_UINT ? val.v.u : 0);
            return XR_OK;
        }
        if ((e = mpr_skip(&r, 32)))
            return s_msgpack_fail(d, e, "value");
    }
    return s_fail(d, XR_VERSION, "key 'v' is missing");
}

static xr_reason_t
s_uint_field(wire_decoder_t *d, const mpr_obj_t *o, const char *key, uint64_t *out)
{
    if (o->type != MPR_UINT)
        return s_wrong_type(d, key, "uint", o);
    *out = o->v.u;
    return XR_OK;
}

static xr_reason_t
s_int_field(wire_decoder_t *d, const mpr_obj_t *o, const char *key, int64_t *out)
{
    if (o->type == MPR_INT)
        *out = o->v.i;
    else if (o->type == MPR_UINT && o->v.u <= INT64_MAX)
        *out = (int64_t)o->v.u;
    else
        return s_wrong_type(d, key, "int", o);
    return XR_OK;
}

/* Overflow-checked product; false when it exceeds `limit`. */
static bool
s_mul_le(uint64_t a, uint64_t b, uint64_t limit, uint64_t *out)
{
    if (a != 0 && b > limit / a)
        return false;
    *out = a * b;
    return *out <= limit;
}

/* Grow one of the groups' arrays to `count` entries of `size` bytes. */
static int
s_grow(void **arr, uint32_t *cap, uint32_t count, size_t size)
{
    if (count <= *cap)
        return 0;
    void *p = realloc(*arr, (size_t)count * size);
    if (!p)
        return -1;
    *arr = p;
    *cap = count;
    return 0;
}

/* One group's token list: an array of str, appended to d->gtoks (whose
   room was reserved for max_tokens names, so views stay put). */
static xr_reason_t
s_group_tokens(wire_decoder_t *d, mpr_t *r, uint32_t g, uint32_t *used)
{
    mpr_obj_t o;
    mpr_err_t e;
    if ((e = mpr_next(r, &o)))
        return s_msgpack_fail(d, e, "groups");
    if (o.type != MPR_ARRAY)
        return s_fail(d, XR_WRONG_TYPE, "groups[%" PRIu32 "]: its tokens must be an array of str, "
                      "got %s", g, mpr_type_name(o.type));
    if (o.v.count > d->lim.max_tokens - *used)
        return s_fail(d, XR_LENGTH, "groups name more than %" PRIu32 " tokens in all",
                      d->lim.max_tokens);
    d->gdefs[g].tokens = d->gtoks + *used;
    d->gdefs[g].ntokens = o.v.count;
    for (uint32_t q = 0; q < o.v.count; q++) {
        mpr_obj_t it;
        xr_reason_t rc;
        if ((e = mpr_next(r, &it)))
            return s_msgpack_fail(d, e, "groups");
        if (it.type != MPR_STR)
            return s_fail(d, XR_WRONG_TYPE, "groups[%" PRIu32 "] token %" PRIu32 ": expected str, "
                          "got %s", g, q, mpr_type_name(it.type));
        if ((rc = s_check_str(d, &it, "groups token", q)))
            return rc;
        d->gtoks[(*used)++] = (xm_str_t){(const char *)it.v.raw.ptr, it.v.raw.len};
    }
    return XR_OK;
}

/* "groups": a map of feature name to an array of token names, or an array
   of [name, [token, ...]] pairs (the same thing, for languages whose maps
   have no order); nil is no key. Only read and bounded here: resolved
   against tokens and cls once both are known (s_groups_resolve). */
static xr_reason_t
s_groups_parse(wire_decoder_t *d, mpr_t *r, const mpr_obj_t *o, uint32_t *ngroups,
               uint32_t *ntoks)
{
    const bool is_map = o->type == MPR_MAP;
    if (!is_map && o->type != MPR_ARRAY)
        return s_wrong_type(d, "groups", "map or array", o);
    uint32_t lim = d->lim.max_groups ? d->lim.max_groups : d->lim.max_tokens;
    if (o->v.count > lim)
        return s_fail(d, XR_LENGTH, "groups has %" PRIu32 " entries (limit %" PRIu32 ")",
                      o->v.count, lim);
    uint32_t count = o->v.count, used = 0;
    if (s_grow((void **)&d->gdefs, &d->cap_gdefs, count ? count : 1, sizeof *d->gdefs) ||
        s_grow((void **)&d->gtoks, &d->cap_gtoks, d->lim.max_tokens, sizeof *d->gtoks))
        return s_fail(d, XR_INTERNAL, "out of memory for %" PRIu32 " groups", count);
    for (uint32_t g = 0; g < count; g++) {
        mpr_obj_t name;
        mpr_err_t e;
        xr_reason_t rc;
        if (!is_map) {
            mpr_obj_t pair;
            if ((e = mpr_next(r, &pair)))
                return s_msgpack_fail(d, e, "groups");
            if (pair.type != MPR_ARRAY || pair.v.count != 2)
                return s_fail(d, XR_WRONG_TYPE, "groups[%" PRIu32 "]: expected [name, [token, ...]], "
                              "got %s", g, pair.type == MPR_ARRAY ? "another array" :
                              mpr_type_name(pair.type));
        }
        if ((e = mpr_next(r, &name)))
            return s_msgpack_fail(d, e, "groups");
        if (name.type != MPR_STR)
            return s_fail(d, XR_WRONG_TYPE, "groups[%" PRIu32 "]: the name must be a str, got %s",
                          g, mpr_type_name(name.type));
        if ((rc = s_check_str(d, &name, "groups", g)))
            return rc;
        d->gdefs[g].name = (xm_str_t){(const char *)name.v.raw.ptr, name.v.raw.len};
        if ((rc = s_group_tokens(d, r, g, &used)))
            return rc;
    }
    *ngroups = count;
    *ntoks = used;
    return XR_OK;
}

/* Resolve the groups against the message's tokens and cls: every refusal
   of groups.h under its own reason, naming the group and token. */
static xr_reason_t
s_groups_resolve(wire_decoder_t *d, const xm_shape_t *shape, uint32_t ngroups)
{
    if (s_grow((void **)&d->gnames, &d->cap_gnames, shape->n, sizeof *d->gnames))
        return s_fail(d, XR_INTERNAL, "out of memory for the groups");
    for (uint32_t j = 0; j < shape->n; j++)
        d->gnames[j] = (xm_str_t){(const char *)d->tokens[j].ptr, d->tokens[j].len};
    xm_group_where_t w;
    xm_group_err_t ge = xm_groups_build(shape, d->gnames, d->gdefs, ngroups, &d->gmap, &w);
    if (ge == XM_GROUP_OK)
        return XR_OK;
    static const xr_reason_t map[] = {
        [XM_GROUP_UNKNOWN_TOKEN] = XR_GROUP_UNKNOWN_TOKEN, [XM_GROUP_TOKEN_TWICE] = XR_GROUP_TOKEN_TWICE,
        [XM_GROUP_CLS_TOKEN] = XR_GROUP_CLS_TOKEN, [XM_GROUP_EMPTY] = XR_GROUP_EMPTY,
        [XM_GROUP_DUP_NAME] = XR_GROUP_DUP_NAME, [XM_GROUP_DUP_TOKEN_NAME] = XR_GROUP_DUP_TOKEN_NAME,
        [XM_GROUP_EARG] = XR_SHAPE, [XM_GROUP_ENOMEM] = XR_INTERNAL};
    xr_reason_t r = (unsigned)ge < sizeof map / sizeof *map ? map[ge] : XR_INTERNAL;
    if (w.group >= 0 && w.token >= 0) {
        const xm_str_t *t = &d->gdefs[w.group].tokens[w.token];
        return s_fail(d, r, "groups: group '%.*s' token '%.*s': %s",
                      (int)(d->gdefs[w.group].name.len > 48 ? 48 : d->gdefs[w.group].name.len),
                      d->gdefs[w.group].name.ptr, (int)(t->len > 48 ? 48 : t->len), t->ptr,
                      xm_group_strerror(ge));
    }
    if (w.group >= 0)
        return s_fail(d, r, "groups: group '%.*s': %s",
                      (int)(d->gdefs[w.group].name.len > 48 ? 48 : d->gdefs[w.group].name.len),
                      d->gdefs[w.group].name.ptr, xm_group_strerror(ge));
    return s_fail(d, r, "groups: %s", xm_group_strerror(ge));
}

xr_reason_t
wire_decode_ingest(wire_decoder_t *d, const void *topic, size_t topic_len, const void *body,
                   size_t body_len, wire_ingest_t *out)
{
    memset(out, 0, sizeof *out);
    d->detail[0] = '\0';
    xm_groups_free(&d->gmap);
    const uint8_t *tp = (const uint8_t *)topic;
    if (topic_len < 5 || memcmp(tp, "attn/", 5) != 0)
        return s_fail(d, XR_TOPIC, "topic does not start with 'attn/'");
    if (!wire_model_name_ok(tp + 5, topic_len - 5))
        return s_fail(d, XR_MODEL_NAME, "model name in topic is not 1-64 bytes of [A-Za-z0-9_.-]");

    mpr_t r;
    mpr_obj_t o;
    mpr_err_t e;
    mpr_init(&r, body, body_len);
    if ((e = mpr_next(&r, &o)))
        return s_msgpack_fail(d, e, "body");
    if (o.type != MPR_MAP)
        return s_fail(d, XR_NOT_MAP, "body is a %s, not a map", mpr_type_name(o.type));
    const uint32_t pairs = o.v.count;
    xr_reason_t rc = s_check_version(d, r, pairs);
    if (rc)
        return rc;

    unsigned seen = 0;
    uint64_t L = 0, H = 0, n = 0, seq = 0;
    int64_t cls = -1;
    uint32_t nids = 0, ntarget = 0, ny = 0, ntokens = 0, ntargets = 0, ngroups = 0;
    uint32_t ngtoks = 0;
    bool groups_nil = false;
    wire_sv_t attn = {0}, grad = {0}, tags = {0}, rel = {0};
    wire_sv_t fbin[5] = {{0}};      /* fattn .. head_confidence, by K_ - K_FATTN */
    bool grad_nil = false, rel_nil = false;
    unsigned nil = 0;               /* fused keys given as nil */
    for (uint32_t k = 0; k < pairs; k++) {
        mpr_obj_t key;
        if ((e = mpr_next(&r, &key)))
            return s_msgpack_fail(d, e, "map key");
        if (key.type != MPR_STR)
            return s_fail(d, XR_NOT_MAP, "map key %" PRIu32 " is a %s, not a str", k,
                          mpr_type_name(key.type));
        int ki = s_key_index(d, &key);
        if (ki < 0) {
            if ((e = mpr_skip(&r, 32)))
                return s_msgpack_fail(d, e, "value of an unknown key");
            continue;
        }
        const char *kn = s_keys[ki];
        if (seen & (1u << ki))
            return s_fail(d, XR_DUPLICATE_KEY, "key '%s' appears twice", kn);
        seen |= 1u << ki;
        if (ki == K_TAGS) {
            /* Kept as raw bytes, checked below once the batch size is
               known: a map, or an array of maps (or nil) one per trade. */
            const uint8_t *start = r.p;
            if ((e = mpr_skip(&r, 2)) == MPR_EDEPTH)
                return s_fail(d, XR_WRONG_TYPE, "tags: nested deeper than an array of maps");
            if (e)
                return s_msgpack_fail(d, e, kn);
            tags = (wire_sv_t){start, (uint32_t)(r.p - start)};
            continue;
        }
        if ((e = mpr_next(&r, &o)))
            return s_msgpack_fail(d, e, kn);

        switch (ki) {
        case K_V:
            break;  /* checked in the first pass */
        case K_MODEL:
            if (o.type != MPR_STR)
                return s_wrong_type(d, kn, "str", &o);
            /* Equal to the topic's model, which was checked: a valid name. */
            if (o.v.raw.len != topic_len - 5 || memcmp(o.v.raw.ptr, tp + 5, o.v.raw.len) != 0)
                return s_fail(d, XR_TOPIC, "key 'model' differs from the topic's model");
            out->model.ptr = o.v.raw.ptr;
            out->model.len = o.v.raw.len;
            break;
        case K_SEQ:
            if ((rc = s_uint_field(d, &o, kn, &seq)))
                return rc;
            out->has_seq = true;
            out->seq = seq;
            break;
        case K_TS:
            if ((rc = s_int_field(d, &o, kn, &out->ts)))
                return rc;
            break;
        case K_L:
            if ((rc = s_uint_field(d, &o, kn, &L)))
                return rc;
            break;
        case K_H:
            if ((rc = s_uint_field(d, &o, kn, &H)))
                return rc;
            break;
        case K_N:
            if ((rc = s_uint_field(d, &o, kn, &n)))
                return rc;
            break;
        case K_CLS:
            if ((rc = s_int_field(d, &o, kn, &cls)))
                return rc;
            out->has_cls = true;
            break;
        case K_DTYPE: {
            if (o.type != MPR_STR)
                return s_wrong_type(d, kn, "str", &o);
            int dt = wire_dtype_parse(o.v.raw.ptr, o.v.raw.len);
            if (dt < 0)
                return s_fail(d, XR_DTYPE, "dtype must be \"f32\", \"f16\" or \"bf16\"");
            out->dtype = (xm_dtype_t)dt;
            break;
        }
        case K_ATTN:
        case K_GRAD:
            if (ki == K_GRAD && o.type == MPR_NIL) {
                grad_nil = true;    /* absent, but the key still counts as seen */
                break;
            }
            if (o.type != MPR_BIN)
                return s_wrong_type(d, kn, "bin", &o);
            *(ki == K_ATTN ? &attn : &grad) = (wire_sv_t){o.v.raw.ptr, o.v.raw.len};
            break;
        case K_REL:
            if (o.type == MPR_NIL) {
                rel_nil = true;
                break;
            }
            if (o.type != MPR_BIN)
                return s_wrong_type(d, kn, "bin", &o);
            rel = (wire_sv_t){o.v.raw.ptr, o.v.raw.len};
            break;
        case K_FATTN:
        case K_FGRAD:
        case K_FGRAD_SIGNED:
        case K_HEAD_IMP:
        case K_HEAD_CONF:
            if (ki != K_FATTN && ki != K_HEAD_CONF && o.type == MPR_NIL) {
                nil |= 1u << ki;    /* absent, but seen (a second one is a duplicate) */
                break;
            }
            if (o.type != MPR_BIN)
                return s_wrong_type(d, kn, "bin", &o);
            fbin[ki - K_FATTN] = (wire_sv_t){o.v.raw.ptr, o.v.raw.len};
            break;
        case K_IDS:
            if (o.type != MPR_ARRAY)
                return s_wrong_type(d, kn, "array", &o);
            if (o.v.count == 0 || o.v.count > d->lim.max_batch)
                return s_fail(d, XR_LENGTH, "ids has %" PRIu32 " entries (1 to %" PRIu32 " allowed)",
                              o.v.count, d->lim.max_batch);
            nids = o.v.count;
            if (s_grow_batch(d, nids))
                return s_fail(d, XR_INTERNAL, "out of memory for %" PRIu32 " ids", nids);
            for (uint32_t b = 0; b < nids; b++) {
                mpr_obj_t it;
                if ((e = mpr_next(&r, &it)))
                    return s_msgpack_fail(d, e, "ids");
                wire_id_t *id = &d->ids[b];
                if (it.type == MPR_UINT) {
                    *id = (wire_id_t){.is_str = false, .u = it.v.u};
                } else if (it.type == MPR_STR) {
                    if ((rc = s_check_str(d, &it, "ids", b)))
                        return rc;
                    *id = (wire_id_t){.is_str = true, .s = {it.v.raw.ptr, it.v.raw.len}};
                } else {
                    return s_fail(d, XR_WRONG_TYPE, "ids[%" PRIu32 "]: expected str or uint, got %s",
                                  b, mpr_type_name(it.type));
                }
            }
            break;
        case K_TARGET:
        case K_Y: {
            if (o.type != MPR_ARRAY)
                return s_wrong_type(d, kn, "array", &o);
            if (o.v.count > d->lim.max_batch)
                return s_fail(d, XR_LENGTH, "%s has %" PRIu32 " entries (limit %" PRIu32 ")", kn,
                              o.v.count, d->lim.max_batch);
            uint32_t cnt = o.v.count;
            if (s_grow_batch(d, cnt))
                return s_fail(d, XR_INTERNAL, "out of memory for %" PRIu32 " values", cnt);
            for (uint32_t b = 0; b < cnt; b++) {
                mpr_obj_t it;
                if ((e = mpr_next(&r, &it)))
                    return s_msgpack_fail(d, e, kn);
                if (ki == K_TARGET) {
                    if (it.type == MPR_UINT && it.v.u <= INT64_MAX)
                        d->target[b] = (int64_t)it.v.u;
                    else if (it.type == MPR_INT)
                        d->target[b] = it.v.i;
                    else
                        return s_fail(d, XR_WRONG_TYPE, "target[%" PRIu32 "]: expected int, got %s",
                                      b, mpr_type_name(it.type));
                } else {
                    if (it.type == MPR_FLOAT)
                        d->y[b] = it.v.f;
                    else if (it.type == MPR_UINT)
                        d->y[b] = (double)it.v.u;
                    else if (it.type == MPR_INT)
                        d->y[b] = (double)it.v.i;
                    else
                        return s_fail(d, XR_WRONG_TYPE, "y[%" PRIu32 "]: expected float, got %s", b,
                                      mpr_type_name(it.type));
                }
            }
            *(ki == K_TARGET ? &ntarget : &ny) = cnt;
            break;
        }
        case K_TARGETS: {
            if (o.type != MPR_ARRAY)
                return s_wrong_type(d, kn, "array", &o);
            uint32_t lim = d->lim.max_targets ? d->lim.max_targets : 16;
            if (o.v.count == 0 || o.v.count > lim)
                return s_fail(d, XR_LENGTH, "targets has %" PRIu32 " entries (1 to %" PRIu32
                              " allowed)", o.v.count, lim);
            ntargets = o.v.count;
            if (ntargets > d->cap_targets) {
                int64_t *t = realloc(d->targets, ntargets * sizeof *t);
                if (!t)
                    return s_fail(d, XR_INTERNAL, "out of memory for %" PRIu32 " targets", ntargets);
                d->targets = t;
                d->cap_targets = ntargets;
            }
            for (uint32_t t = 0; t < ntargets; t++) {
                mpr_obj_t it;
                if ((e = mpr_next(&r, &it)))
                    return s_msgpack_fail(d, e, kn);
                if (it.type == MPR_UINT && it.v.u <= INT64_MAX)
                    d->targets[t] = (int64_t)it.v.u;
                else if (it.type == MPR_INT)
                    d->targets[t] = it.v.i;
                else
                    return s_fail(d, XR_WRONG_TYPE, "targets[%" PRIu32 "]: expected int, got %s",
                                  t, mpr_type_name(it.type));
            }
            break;
        }
        case K_GROUPS:
            if (o.type == MPR_NIL) {
                groups_nil = true;
                break;
            }
            if ((rc = s_groups_parse(d, &r, &o, &ngroups, &ngtoks)))
                return rc;
            break;
        case K_TOKENS:
            if (o.type != MPR_ARRAY)
                return s_wrong_type(d, kn, "array", &o);
            if (o.v.count > d->lim.max_tokens)
                return s_fail(d, XR_LENGTH, "tokens has %" PRIu32 " entries (limit %" PRIu32 ")",
                              o.v.count, d->lim.max_tokens);
            ntokens = o.v.count;
            if (s_grow_tokens(d, ntokens))
                return s_fail(d, XR_INTERNAL, "out of memory for %" PRIu32 " tokens", ntokens);
            for (uint32_t t = 0; t < ntokens; t++) {
                mpr_obj_t it;
                if ((e = mpr_next(&r, &it)))
                    return s_msgpack_fail(d, e, "tokens");
                if (it.type != MPR_STR)
                    return s_fail(d, XR_WRONG_TYPE, "tokens[%" PRIu32 "]: expected str, got %s", t,
                                  mpr_type_name(it.type));
                if ((rc = s_check_str(d, &it, "tokens", t)))
                    return rc;
                d->tokens[t] = (wire_sv_t){it.v.raw.ptr, it.v.raw.len};
            }
            break;
        }
    }
    if (mpr_left(&r) != 0)
        return s_fail(d, XR_MSGPACK, "%zu trailing bytes after the body map", mpr_left(&r));
    /* The form is the one whose main tensor is there: fattn makes it the
       fused one (then attn must not be there as well, see below). */
    const bool fused = (seen & (1u << K_FATTN)) != 0;
    const unsigned required = fused ? s_required_fused : s_required;
    if ((seen & required) != required) {
        for (int ki = 0; ki < K_COUNT; ki++)
            if ((required & (1u << ki)) && !(seen & (1u << ki)))
                return s_fail(d, XR_MISSING_KEY, "required key '%s' is missing%s", s_keys[ki],
                              fused ? " (fused form)" : "");
    }
    if (fused) {
        const unsigned full = 1u << K_ATTN | 1u << K_GRAD;
        if (seen & full)
            return s_fail(d, XR_FUSED_FORM, "key '%s' of the full form in a fused message (fattn)",
                          (seen & (1u << K_ATTN)) ? "attn" : "grad");
        /* lrp_rollout weighs G * Rel per head: no head mean sent here can
           stand in for it, so the relevance has no fused form. */
        if ((seen & (1u << K_REL)) && !rel_nil)
            return s_fail(d, XR_FUSED_FORM, "key 'rel' in a fused message (the relevance has no "
                          "fused form: lrp_rollout needs every head)");
        bool has_p = (seen & (1u << K_FGRAD)) && !(nil & (1u << K_FGRAD));
        bool has_s = (seen & (1u << K_FGRAD_SIGNED)) && !(nil & (1u << K_FGRAD_SIGNED));
        bool has_i = (seen & (1u << K_HEAD_IMP)) && !(nil & (1u << K_HEAD_IMP));
        if (has_p != has_i)
            return s_fail(d, XR_FUSED_FORM, has_p ? "fgrad without head_importance"
                                                  : "head_importance without fgrad");
        if (has_s && !has_p)
            return s_fail(d, XR_FUSED_FORM, "fgrad_signed without fgrad");
    } else if (seen & s_fused_keys) {
        for (int ki = K_FATTN; ki < K_COUNT; ki++)
            if (seen & (1u << ki))
                return s_fail(d, XR_FUSED_FORM, "key '%s' of the fused form without fattn",
                              s_keys[ki]);
    }

    /* Shape and sizes: every declared count is checked against the limits
       and the bytes present before anyone uses it. */
    if (L == 0 || L > d->lim.max_layers || H == 0 || H > d->lim.max_heads || n == 0 ||
        n > d->lim.max_tokens)
        return s_fail(d, XR_SHAPE,
                      "L=%" PRIu64 " H=%" PRIu64 " n=%" PRIu64 " out of range (1..%" PRIu32
                      ", 1..%" PRIu32 ", 1..%" PRIu32 ")",
                      L, H, n, d->lim.max_layers, d->lim.max_heads, d->lim.max_tokens);
    if (out->has_cls && (cls < -1 || cls >= (int64_t)n || (cls >= 0 && n < 2)))
        return s_fail(d, XR_SHAPE, "cls=%" PRId64 " is not -1 or a token index below n=%" PRIu64,
                      cls, n);
    uint64_t elems, trade_elems, helems = 0, trade_helems = 0, gelems = 0, ghelems = 0;
    size_t es = xm_dtype_size(out->dtype);
    /* With T targets the gradient tensors (grad and rel; fgrad,
       fgrad_signed and head_importance) hold T blocks per trade. */
    const uint32_t T = ntargets ? ntargets : 1;
    if (fused) {
        /* Per trade L*n*n values a tensor and L*H head statistics; all of
           them together no more than attn and grad may hold (2 *
           max_elems), so that the largest valid body stays that of the
           full form. */
        const unsigned given = seen & ~nil;
        const uint64_t ng = !!(given & (1u << K_FGRAD)) + !!(given & (1u << K_FGRAD_SIGNED));
        const uint64_t nhead = !!(given & (1u << K_HEAD_IMP));
        const uint64_t cap = 2 * d->lim.max_elems;
        uint64_t te, th, all = 0;
        if (!s_mul_le(L, n * n, d->lim.max_elems, &trade_elems) ||
            !s_mul_le(trade_elems, nids, d->lim.max_elems, &elems) ||
            !s_mul_le(L, H, d->lim.max_elems, &trade_helems) ||
            !s_mul_le(trade_helems, nids, d->lim.max_elems, &helems) ||
            !s_mul_le(elems, T, cap, &gelems) || !s_mul_le(helems, T, cap, &ghelems) ||
            !s_mul_le(gelems, ng, cap, &te) || !s_mul_le(ghelems, nhead, cap, &th) ||
            (all = elems + helems + te + th) > cap)
            return s_fail(d, XR_TOO_LARGE,
                          "B*L*n*n or B*L*H for B=%" PRIu32 " T=%" PRIu32 " L=%" PRIu64
                          " H=%" PRIu64 " n=%" PRIu64 " exceeds the limit of %" PRIu64
                          " values (all fused tensors together: %" PRIu64 ")",
                          nids, T, L, H, n, d->lim.max_elems, cap);
    } else if (!s_mul_le(L * H, n * n, d->lim.max_elems, &trade_elems) ||
               !s_mul_le(trade_elems, nids, d->lim.max_elems, &elems))
        return s_fail(d, XR_TOO_LARGE,
                      "B*L*H*n*n for B=%" PRIu32 " L=%" PRIu64 " H=%" PRIu64 " n=%" PRIu64
                      " exceeds the limit of %" PRIu64 " values",
                      nids, L, H, n, d->lim.max_elems);
    /* Each full-form tensor stays within max_elems, so the largest body
       is unchanged. */
    else if (!s_mul_le(elems, T, d->lim.max_elems, &gelems))
        return s_fail(d, XR_TOO_LARGE,
                      "B*T*L*H*n*n for B=%" PRIu32 " T=%" PRIu32 " L=%" PRIu64 " H=%" PRIu64
                      " n=%" PRIu64 " exceeds the limit of %" PRIu64 " values",
                      nids, T, L, H, n, d->lim.max_elems);
    bool has_grad = (seen & (1u << K_GRAD)) && !grad_nil;
    bool has_fgrad = fused && (seen & ~nil & (1u << K_FGRAD));
    /* A bin holds at most 2^32 - 1 bytes: larger products can never match
       (and elems * es must not wrap). */
    if (gelems > UINT32_MAX / es || ghelems > UINT32_MAX / 4)
        return s_fail(d, XR_SIZE, "%s*%zu = %" PRIu64 "*%zu bytes cannot fit in a msgpack bin",
                      fused ? "B*T*L*n*n" : "B*T*L*H*n*n", es, gelems, es);
    if (ntargets && !has_grad && !has_fgrad)
        return s_fail(d, XR_MISSING_KEY, "targets is given without %s (one gradient per target)",
                      fused ? "fgrad" : "grad");
    if (ntargets && (seen & (1u << K_TARGET)))
        return s_fail(d, XR_DUPLICATE_KEY, "target and targets are both given (the class of each "
                      "result would be said twice)");
    if (fused) {
        for (int ki = K_FATTN; ki < K_COUNT; ki++) {
            const wire_sv_t *v = &fbin[ki - K_FATTN];
            bool head = ki == K_HEAD_IMP || ki == K_HEAD_CONF;
            bool pert = ki != K_FATTN && ki != K_HEAD_CONF;     /* one block per target */
            uint64_t want = head ? (pert ? ghelems : helems) * 4 : (pert ? gelems : elems) * es;
            if ((seen & ~nil & (1u << ki)) && v->len != want)
                return s_fail(d, XR_SIZE, "%s has %" PRIu32 " bytes, %s = %" PRIu64 " expected",
                              s_keys[ki], v->len,
                              head ? (pert ? "B*T*L*H*4 (f32)" : "B*L*H*4 (f32)")
                                   : (pert ? "B*T*L*n*n*elem" : "B*L*n*n*elem"),
                              want);
        }
    } else {
        if (attn.len != elems * es)
            return s_fail(d, XR_SIZE,
                          "attn has %" PRIu32 " bytes, B*L*H*n*n*%zu = %" PRIu64 " expected",
                          attn.len, es, elems * es);
        if (has_grad && grad.len != gelems * es)
            return s_fail(d, XR_SIZE,
                          "grad has %" PRIu32 " bytes, B*T*L*H*n*n*%zu = %" PRIu64 " expected",
                          grad.len, es, gelems * es);
    }
    /* The relevance is read beside the gradient (lrp_rollout); alone it
       would mean nothing. The fused form refused it above. */
    bool has_rel = (seen & (1u << K_REL)) && !rel_nil;
    if (has_rel && !has_grad)
        return s_fail(d, XR_MISSING_KEY, "rel is given without grad (lrp_rollout needs both)");
    if (has_rel && rel.len != gelems * es)
        return s_fail(d, XR_SIZE,
                      "rel has %" PRIu32 " bytes, B*T*L*H*n*n*%zu = %" PRIu64 " expected", rel.len,
                      es, gelems * es);
    if ((seen & (1u << K_TARGET)) && ntarget != nids)
        return s_fail(d, XR_LENGTH, "target has %" PRIu32 " entries for %" PRIu32 " ids", ntarget, nids);
    if ((seen & (1u << K_Y)) && ny != nids)
        return s_fail(d, XR_LENGTH, "y has %" PRIu32 " entries for %" PRIu32 " ids", ny, nids);
    if ((seen & (1u << K_TOKENS)) && ntokens != n)
        return s_fail(d, XR_LENGTH, "tokens has %" PRIu32 " entries for n=%" PRIu64, ntokens, n);
    /* Groups name tokens: they come with the tokens and cls they name. */
    const bool has_groups = (seen & (1u << K_GROUPS)) && !groups_nil;
    if (has_groups && (!(seen & (1u << K_TOKENS)) || !out->has_cls))
        return s_fail(d, XR_MISSING_KEY, "groups is given without %s (groups name tokens: send "
                      "them with the tokens and cls)", (seen & (1u << K_TOKENS)) ? "cls" : "tokens");
    if (has_groups && ngtoks > n)
        return s_fail(d, XR_LENGTH, "groups name %" PRIu32 " tokens in all, the schema has n=%" PRIu64,
                      ngtoks, n);
    if (has_groups && ngroups) {
        const xm_shape_t sh = {(uint32_t)L, (uint32_t)H, (uint32_t)n, (int32_t)cls};
        if ((rc = s_groups_resolve(d, &sh, ngroups)))
            return rc;
    }

    if (tags.len && !(tags.len == 1 && tags.ptr[0] == 0xc0)) {
        seg_err_t se = seg_tags_validate(tags.ptr, tags.len, nids);
        if (se == SEG_MSGPACK)
            return s_fail(d, XR_MSGPACK, "tags: truncated or trailing bytes");
        if (se == SEG_NOT_MAP)
            return s_fail(d, XR_WRONG_TYPE, "tags: expected a map of str to str, or an array "
                                            "of such maps (or nil) one per trade");
        if (se == SEG_COUNT)
            return s_fail(d, XR_LENGTH, "tags: the per-trade array's length is not the %" PRIu32
                                        " trades", nids);
        if (se)
            return s_fail(d, XR_BAD_STRING, "tags: %s (keys 1-%d bytes of [A-Za-z0-9_.-], values "
                                            "1-%d printable ASCII bytes but , = \" \\, at most %d tags)",
                          seg_err_name(se), SEG_KEY_MAX, SEG_VALUE_MAX, SEG_TAGS_MAX);
        out->tags = tags.ptr;
        out->tags_len = tags.len;
    }
    out->B = nids;
    out->shape = (xm_shape_t){(uint32_t)L, (uint32_t)H, (uint32_t)n, (int32_t)cls};
    out->attn = fused ? NULL : attn.ptr;
    out->grad = has_grad ? grad.ptr : NULL;
    out->rel = has_rel ? rel.ptr : NULL;
    out->targets = ntargets ? d->targets : NULL;
    out->ntargets = ntargets;
    out->trade_bytes = (size_t)trade_elems * es;
    out->fused = fused;
    if (fused) {
        const unsigned given = seen & ~nil;
        out->fattn = fbin[0].ptr;
        out->fgrad = (given & (1u << K_FGRAD)) ? fbin[1].ptr : NULL;
        out->fgrad_signed = (given & (1u << K_FGRAD_SIGNED)) ? fbin[2].ptr : NULL;
        out->head_importance = (given & (1u << K_HEAD_IMP)) ? fbin[3].ptr : NULL;
        out->head_confidence = fbin[4].ptr;
        out->trade_head_bytes = (size_t)trade_helems * 4;
    }
    out->ids = d->ids;
    out->target = (seen & (1u << K_TARGET)) ? d->target : NULL;
    out->y = (seen & (1u << K_Y)) ? d->y : NULL;
    out->tokens = (seen & (1u << K_TOKENS)) ? d->tokens : NULL;
    out->has_groups = has_groups;
    out->groups = ngroups ? d->gdefs : NULL;
    out->ngroups = has_groups ? ngroups : 0;
    out->gmap = has_groups && ngroups ? &d->gmap : NULL;
    return XR_OK;
}
