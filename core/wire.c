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
                 + 17 * 8                           /* the known keys, "targets" longest */
                 + 1 + (5 + WIRE_MODEL_MAX)         /* v, model */
                 + 6 * 9 + 5                        /* seq ts L H n cls, dtype */
                 + 3 * (5 + tensor)                 /* attn, grad, rel */
                 + 5 + (uint64_t)lim->max_batch * id /* ids */
                 + 2 * (5 + (uint64_t)lim->max_batch * 9) /* target, y */
                 + 5 + (uint64_t)(lim->max_targets ? lim->max_targets : 16) * 9 /* targets */
                 + 5 + (uint64_t)lim->max_tokens * (lim->max_str + 5) /* tokens */
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
    K_TARGET, K_Y, K_CLS, K_TOKENS, K_TAGS, K_REL, K_TARGETS, K_COUNT
};
static const char *s_keys[K_COUNT] = {"v", "model", "seq", "ts", "ids", "L", "H", "n",
                                      "dtype", "attn", "grad", "target", "y", "cls", "tokens",
                                      "tags", "rel", "targets"};
static const unsigned s_required = 1u << K_V | 1u << K_MODEL | 1u << K_SEQ | 1u << K_TS |
                                   1u << K_IDS | 1u << K_L | 1u << K_H | 1u << K_N |
                                   1u << K_DTYPE | 1u << K_ATTN;

static int
s_key_index(const mpr_obj_t *k)
{
    for (int i = 0; i < K_COUNT; i++)
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

xr_reason_t
wire_decode_ingest(wire_decoder_t *d, const void *topic, size_t topic_len, const void *body,
                   size_t body_len, wire_ingest_t *out)
{
    memset(out, 0, sizeof *out);
    d->detail[0] = '\0';
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
    uint32_t nids = 0, ntarget = 0, ny = 0, ntokens = 0, ntargets = 0;
    wire_sv_t attn = {0}, grad = {0}, tags = {0}, rel = {0};
    bool grad_nil = false, rel_nil = false;
    for (uint32_t k = 0; k < pairs; k++) {
        mpr_obj_t key;
        if ((e = mpr_next(&r, &key)))
            return s_msgpack_fail(d, e, "map key");
        if (key.type != MPR_STR)
            return s_fail(d, XR_NOT_MAP, "map key %" PRIu32 " is a %s, not a str", k,
                          mpr_type_name(key.type));
        int ki = s_key_index(&key);
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
    if ((seen & s_required) != s_required) {
        for (int ki = 0; ki < K_COUNT; ki++)
            if ((s_required & (1u << ki)) && !(seen & (1u << ki)))
                return s_fail(d, XR_MISSING_KEY, "required key '%s' is missing", s_keys[ki]);
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
    uint64_t elems, trade_elems, gelems = 0;
    if (!s_mul_le(L * H, n * n, d->lim.max_elems, &trade_elems) ||
        !s_mul_le(trade_elems, nids, d->lim.max_elems, &elems))
        return s_fail(d, XR_TOO_LARGE,
                      "B*L*H*n*n for B=%" PRIu32 " L=%" PRIu64 " H=%" PRIu64 " n=%" PRIu64
                      " exceeds the limit of %" PRIu64 " values",
                      nids, L, H, n, d->lim.max_elems);
    /* With T targets grad and rel hold T blocks per trade; each tensor
       stays within max_elems, so the largest body is unchanged. */
    const uint32_t T = ntargets ? ntargets : 1;
    if (!s_mul_le(elems, T, d->lim.max_elems, &gelems))
        return s_fail(d, XR_TOO_LARGE,
                      "B*T*L*H*n*n for B=%" PRIu32 " T=%" PRIu32 " L=%" PRIu64 " H=%" PRIu64
                      " n=%" PRIu64 " exceeds the limit of %" PRIu64 " values",
                      nids, T, L, H, n, d->lim.max_elems);
    size_t es = xm_dtype_size(out->dtype);
    bool has_grad = (seen & (1u << K_GRAD)) && !grad_nil;
    /* A bin holds at most 2^32 - 1 bytes: larger products can never match
       (and elems * es must not wrap). */
    if (elems > UINT32_MAX / es)
        return s_fail(d, XR_SIZE, "B*L*H*n*n*%zu = %" PRIu64 "*%zu bytes cannot fit in a msgpack bin",
                      es, elems, es);
    if (attn.len != elems * es)
        return s_fail(d, XR_SIZE,
                      "attn has %" PRIu32 " bytes, B*L*H*n*n*%zu = %" PRIu64 " expected", attn.len,
                      es, elems * es);
    if (ntargets && !has_grad)
        return s_fail(d, XR_MISSING_KEY, "targets is given without grad (one gradient per target)");
    if (ntargets && (seen & (1u << K_TARGET)))
        return s_fail(d, XR_DUPLICATE_KEY, "target and targets are both given (the class of each "
                      "result would be said twice)");
    if (has_grad && grad.len != gelems * es)
        return s_fail(d, XR_SIZE,
                      "grad has %" PRIu32 " bytes, B*T*L*H*n*n*%zu = %" PRIu64 " expected",
                      grad.len, es, gelems * es);
    /* The relevance is read beside the gradient (lrp_rollout); alone it
       would mean nothing. */
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
    out->attn = attn.ptr;
    out->grad = has_grad ? grad.ptr : NULL;
    out->rel = has_rel ? rel.ptr : NULL;
    out->targets = ntargets ? d->targets : NULL;
    out->ntargets = ntargets;
    out->trade_bytes = (size_t)trade_elems * es;
    out->ids = d->ids;
    out->target = (seen & (1u << K_TARGET)) ? d->target : NULL;
    out->y = (seen & (1u << K_Y)) ? d->y : NULL;
    out->tokens = (seen & (1u << K_TOKENS)) ? d->tokens : NULL;
    return XR_OK;
}
