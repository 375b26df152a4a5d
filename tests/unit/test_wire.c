/*  Tests of core/wire: contract-v1 ingest decoding (proto/ingest.md).

    Valid messages decode to views into the body with every field as sent;
    every rejection reason the contract names comes back for its input,
    with a readable detail; limits are enforced before anything is
    reserved; products of the shape never wrap; strings are checked as
    UTF-8 against the well-formed byte ranges of Unicode's table 3-7.

    Bodies are built from (key, packed value) pairs so that a test can
    send what msgpack-python would not: duplicate keys, wide encodings,
    bad UTF-8.  */
#include "ref.h"
#include "support.h"
#include "wire.h"

#include <inttypes.h>
#include <criterion/criterion.h>
#include <math.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- building bodies -------------------------------------------------- */

#define MAX_PAIRS 48

typedef struct {
    char key[32];
    uint8_t *val;
    size_t len;
} pair_t;

typedef struct {
    pair_t p[MAX_PAIRS];
    int n;
    uint8_t *bytes;     /* last encoding */
    size_t size;
} body_t;

typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} pk_t;

static msgpack_packer *
pk_begin(pk_t *p)
{
    msgpack_sbuffer_init(&p->sb);
    msgpack_packer_init(&p->pk, &p->sb, msgpack_sbuffer_write);
    return &p->pk;
}

/* Append a pair whose value is the packed bytes in `p` (taken over). */
static void
b_add_pk(body_t *b, const char *key, pk_t *p)
{
    cr_assert(b->n < MAX_PAIRS);
    pair_t *e = &b->p[b->n++];
    snprintf(e->key, sizeof e->key, "%s", key);
    e->val = (uint8_t *)p->sb.data;
    e->len = p->sb.size;
}

static void
b_add_raw(body_t *b, const char *key, const void *val, size_t len)
{
    pk_t p;
    pk_begin(&p);
    msgpack_sbuffer_write(&p.sb, val, len);
    b_add_pk(b, key, &p);
}

static void
b_del(body_t *b, const char *key)
{
    for (int k = 0; k < b->n; k++)
        if (strcmp(b->p[k].key, key) == 0) {
            free(b->p[k].val);
            memmove(&b->p[k], &b->p[k + 1], (size_t)(b->n - k - 1) * sizeof b->p[0]);
            b->n--;
            return;
        }
}

/* Replace the value of `key` (keeping its place) or append it. */
static void
b_set_pk(body_t *b, const char *key, pk_t *p)
{
    for (int k = 0; k < b->n; k++)
        if (strcmp(b->p[k].key, key) == 0) {
            free(b->p[k].val);
            b->p[k].val = (uint8_t *)p->sb.data;
            b->p[k].len = p->sb.size;
            return;
        }
    b_add_pk(b, key, p);
}

static void
b_set_raw(body_t *b, const char *key, const void *val, size_t len)
{
    pk_t p;
    pk_begin(&p);
    msgpack_sbuffer_write(&p.sb, val, len);
    b_set_pk(b, key, &p);
}

static void
b_set_uint(body_t *b, const char *key, uint64_t v)
{
    pk_t p;
    msgpack_pack_uint64(pk_begin(&p), v);
    b_set_pk(b, key, &p);
}

static void
b_set_int(body_t *b, const char *key, int64_t v)
{
    pk_t p;
    msgpack_pack_int64(pk_begin(&p), v);
    b_set_pk(b, key, &p);
}

static void
b_set_double(body_t *b, const char *key, double v)
{
    pk_t p;
    msgpack_pack_double(pk_begin(&p), v);
    b_set_pk(b, key, &p);
}

static void
b_set_str(body_t *b, const char *key, const void *s, size_t len)
{
    pk_t p;
    msgpack_pack_str_with_body(pk_begin(&p), s, len);
    b_set_pk(b, key, &p);
}

static void
b_set_cstr(body_t *b, const char *key, const char *s)
{
    b_set_str(b, key, s, strlen(s));
}

static void
b_set_bin(body_t *b, const char *key, const void *data, size_t len)
{
    pk_t p;
    msgpack_pack_bin_with_body(pk_begin(&p), data, len);
    b_set_pk(b, key, &p);
}

static void
b_set_nil(body_t *b, const char *key)
{
    pk_t p;
    msgpack_pack_nil(pk_begin(&p));
    b_set_pk(b, key, &p);
}

/* Array of str (from a NUL-separated list) */
static void
b_set_strs(body_t *b, const char *key, const char *const *items, int count)
{
    pk_t p;
    msgpack_packer *pk = pk_begin(&p);
    msgpack_pack_array(pk, (size_t)count);
    for (int k = 0; k < count; k++)
        msgpack_pack_str_with_body(pk, items[k], strlen(items[k]));
    b_set_pk(b, key, &p);
}

static void
b_set_ints(body_t *b, const char *key, const int64_t *v, int count)
{
    pk_t p;
    msgpack_packer *pk = pk_begin(&p);
    msgpack_pack_array(pk, (size_t)count);
    for (int k = 0; k < count; k++)
        msgpack_pack_int64(pk, v[k]);
    b_set_pk(b, key, &p);
}

static void
b_set_doubles(body_t *b, const char *key, const double *v, int count)
{
    pk_t p;
    msgpack_packer *pk = pk_begin(&p);
    msgpack_pack_array(pk, (size_t)count);
    for (int k = 0; k < count; k++)
        msgpack_pack_double(pk, v[k]);
    b_set_pk(b, key, &p);
}

/* Encode the map into one exactly-sized heap buffer (ASan sees overreads). */
static void
b_encode(body_t *b)
{
    pk_t p;
    msgpack_packer *pk = pk_begin(&p);
    msgpack_pack_map(pk, (size_t)b->n);
    for (int k = 0; k < b->n; k++) {
        msgpack_pack_str_with_body(pk, b->p[k].key, strlen(b->p[k].key));
        msgpack_sbuffer_write(&p.sb, (const char *)b->p[k].val, b->p[k].len);
    }
    free(b->bytes);
    b->size = p.sb.size;
    b->bytes = malloc(b->size ? b->size : 1);
    memcpy(b->bytes, p.sb.data, b->size);
    msgpack_sbuffer_destroy(&p.sb);
}

static void
b_free(body_t *b)
{
    for (int k = 0; k < b->n; k++)
        free(b->p[k].val);
    free(b->bytes);
    memset(b, 0, sizeof *b);
}

/* A valid message: B trades of L x H x n x n in `dtype` (0 f32, 1 f16,
   2 bf16), string ids "t0".., with cls n-1 and tokens, and (optionally)
   grad, target, y. */
typedef struct {
    int B, L, H, n, dtype;
    bool grad, target, y, schema;
} shape_t;

static size_t
elem_size(int dtype)
{
    return dtype == 0 ? 4 : 2;
}

static void
tensor(const shape_t *s, uint64_t seed, bool gradient, uint8_t **out, size_t *len)
{
    size_t cnt = (size_t)s->B * s->L * s->H * s->n * s->n;
    double *v = malloc(cnt * sizeof(double) + 8);
    rng_t r;
    rng_seed(&r, seed);
    if (gradient)
        gen_gradient(&r, v, cnt, 1.0);
    else
        gen_attention(&r, v, cnt / (size_t)s->n, s->n, 1.0);
    *len = cnt * elem_size(s->dtype);
    *out = malloc(*len + 1);
    encode_dtype(s->dtype, v, cnt, *out, v);
    free(v);
}

static void
good_body(body_t *b, const shape_t *s)
{
    memset(b, 0, sizeof *b);
    b_set_uint(b, "v", 1);
    b_set_cstr(b, "model", "m1");
    b_set_uint(b, "seq", 41);
    b_set_int(b, "ts", 1764000000000000000ll);
    char names[64][16];
    const char *ids[64];
    for (int k = 0; k < s->B; k++) {
        snprintf(names[k], sizeof names[k], "t%d", k);
        ids[k] = names[k];
    }
    b_set_strs(b, "ids", ids, s->B);
    b_set_uint(b, "L", (uint64_t)s->L);
    b_set_uint(b, "H", (uint64_t)s->H);
    b_set_uint(b, "n", (uint64_t)s->n);
    b_set_cstr(b, "dtype", s->dtype == 0 ? "f32" : s->dtype == 1 ? "f16" : "bf16");
    uint8_t *t;
    size_t tl;
    tensor(s, 1, false, &t, &tl);
    b_set_bin(b, "attn", t, tl);
    free(t);
    if (s->grad) {
        tensor(s, 2, true, &t, &tl);
        b_set_bin(b, "grad", t, tl);
        free(t);
    }
    if (s->target) {
        int64_t tg[64];
        for (int k = 0; k < s->B; k++)
            tg[k] = k % 3 - 1;
        b_set_ints(b, "target", tg, s->B);
    }
    if (s->y) {
        double y[64];
        for (int k = 0; k < s->B; k++)
            y[k] = 0.25 * k - 0.5;
        b_set_doubles(b, "y", y, s->B);
    }
    if (s->schema) {
        b_set_int(b, "cls", s->n - 1);
        char tn[64][16];
        const char *toks[64];
        for (int k = 0; k < s->n; k++) {
            snprintf(tn[k], sizeof tn[k], k == s->n - 1 ? "CLS" : "f%d", k);
            toks[k] = tn[k];
        }
        b_set_strs(b, "tokens", toks, s->n);
    }
}

static const shape_t S_DEFAULT = {.B = 2, .L = 2, .H = 3, .n = 4, .dtype = 0, .grad = true,
                                  .target = true, .y = true, .schema = true};

/* ---- decoding --------------------------------------------------------- */

typedef struct {
    wire_decoder_t d;
    wire_ingest_t in;
    xr_reason_t rc;
} dec_t;

static wire_limits_t
limits(void)
{
    wire_limits_t l;
    wire_limits_default(&l);
    return l;
}

static xr_reason_t
decode_topic(dec_t *x, const wire_limits_t *lim, const char *topic, body_t *b)
{
    wire_decoder_init(&x->d, lim);
    b_encode(b);
    x->rc = wire_decode_ingest(&x->d, topic, strlen(topic), b->bytes, b->size, &x->in);
    return x->rc;
}

static xr_reason_t
decode(dec_t *x, body_t *b)
{
    wire_limits_t l = limits();
    return decode_topic(x, &l, "attn/m1", b);
}

/* The message must be rejected with `want`, and say why. */
#define EXPECT_REJECT(x, want, what)                                                            \
    do {                                                                                        \
        cr_assert_eq((x)->rc, (want), "%s: got %s (%s), want %s", (what), xr_reason_name((x)->rc), \
                     wire_detail(&(x)->d), xr_reason_name(want));                               \
        cr_assert(wire_detail(&(x)->d)[0] != '\0', "%s: rejected as %s with no detail", (what),   \
                  xr_reason_name(want));                                                        \
    } while (0)

static void
expect_body_reason(body_t *b, xr_reason_t want, const char *what)
{
    dec_t x;
    decode(&x, b);
    EXPECT_REJECT(&x, want, what);
    wire_decoder_destroy(&x.d);
}

/* Apply `mutate` to a fresh good body and expect `want`. */
#define CASE(want, what, ...)                                                                   \
    do {                                                                                        \
        body_t b_;                                                                              \
        good_body(&b_, &S_DEFAULT);                                                             \
        body_t *b = &b_;                                                                        \
        (void)b;                                                                                \
        __VA_ARGS__;                                                                            \
        expect_body_reason(&b_, (want), (what));                                                \
        b_free(&b_);                                                                            \
    } while (0)

/* Offset of the value of `key` in the last encoding of b. */
static const uint8_t *
value_in(const body_t *b, const char *key)
{
    size_t off = b->n < 16 ? 1 : 3;     /* fixmap / map16 header */
    for (int k = 0; k < b->n; k++) {
        size_t kl = strlen(b->p[k].key);
        off += 1 + kl;
        if (strcmp(b->p[k].key, key) == 0)
            return b->bytes + off;
        off += b->p[k].len;
    }
    return NULL;
}

/* ---- valid messages --------------------------------------------------- */

Test(wire, valid_with_every_optional_key)
{
    body_t b;
    good_body(&b, &S_DEFAULT);
    dec_t x;
    cr_assert_eq(decode(&x, &b), XR_OK, "%s", wire_detail(&x.d));
    const wire_ingest_t *in = &x.in;
    cr_assert(in->model.len == 2 && memcmp(in->model.ptr, "m1", 2) == 0);
    cr_assert(in->has_seq && in->seq == 41);
    cr_assert_eq(in->ts, 1764000000000000000ll);
    cr_assert_eq(in->B, 2);
    cr_assert(in->shape.L == 2 && in->shape.H == 3 && in->shape.n == 4 && in->shape.cls == 3);
    cr_assert(in->has_cls);
    cr_assert_eq(in->dtype, XM_F32);
    cr_assert_eq(in->trade_bytes, (size_t)2 * 3 * 4 * 4 * 4);
    /* attn and grad are views of the bin payloads, not copies. */
    const uint8_t *av = value_in(&b, "attn"), *gv = value_in(&b, "grad");
    cr_assert_eq(in->attn, av + 3, "attn is not a view of the body (bin16 header)");
    cr_assert_eq(in->grad, gv + 3);
    cr_assert(in->attn >= b.bytes && in->attn + 2 * in->trade_bytes <= b.bytes + b.size);
    for (uint32_t k = 0; k < 2; k++) {
        char want[16];
        snprintf(want, sizeof want, "t%u", k);
        cr_assert(in->ids[k].is_str && in->ids[k].s.len == strlen(want) &&
                  memcmp(in->ids[k].s.ptr, want, strlen(want)) == 0);
        cr_assert(in->ids[k].s.ptr > b.bytes && in->ids[k].s.ptr < b.bytes + b.size);
    }
    cr_assert(in->target && in->target[0] == -1 && in->target[1] == 0);
    cr_assert(in->y && in->y[0] == -0.5 && in->y[1] == -0.25);
    cr_assert(in->tokens);
    const char *toks[] = {"f0", "f1", "f2", "CLS"};
    for (int k = 0; k < 4; k++)
        cr_assert(in->tokens[k].len == strlen(toks[k]) &&
                  memcmp(in->tokens[k].ptr, toks[k], in->tokens[k].len) == 0);
    cr_assert_str_eq(wire_detail(&x.d), "");
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, valid_minimal_has_no_optionals)
{
    body_t b;
    shape_t s = {.B = 1, .L = 1, .H = 1, .n = 2, .dtype = 0};
    good_body(&b, &s);
    dec_t x;
    cr_assert_eq(decode(&x, &b), XR_OK, "%s", wire_detail(&x.d));
    cr_assert(!x.in.has_cls && x.in.tokens == NULL && x.in.grad == NULL && x.in.target == NULL &&
              x.in.y == NULL);
    cr_assert_eq(x.in.shape.cls, -1, "cls must read -1 when absent");
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, dtype_variants)
{
    for (int dt = 0; dt < 3; dt++) {
        body_t b;
        shape_t s = S_DEFAULT;
        s.dtype = dt;
        good_body(&b, &s);
        dec_t x;
        cr_assert_eq(decode(&x, &b), XR_OK, "dtype %d: %s", dt, wire_detail(&x.d));
        cr_assert_eq(x.in.dtype, dt == 0 ? XM_F32 : dt == 1 ? XM_F16 : XM_BF16);
        cr_assert_eq(x.in.trade_bytes, (size_t)2 * 3 * 4 * 4 * elem_size(dt));
        cr_assert_str_eq(wire_dtype_name(x.in.dtype), dt == 0 ? "f32" : dt == 1 ? "f16" : "bf16");
        wire_decoder_destroy(&x.d);
        b_free(&b);
    }
    cr_assert_eq(wire_dtype_parse("f32", 3), XM_F32);
    cr_assert_eq(wire_dtype_parse("f16", 3), XM_F16);
    cr_assert_eq(wire_dtype_parse("bf16", 4), XM_BF16);
    cr_assert_eq(wire_dtype_parse("f32", 2), -1);
    cr_assert_eq(wire_dtype_parse("bf16", 3), -1);
    cr_assert_eq(wire_dtype_parse("f64", 3), -1);
}

Test(wire, ids_str_and_uint_any_width)
{
    body_t b;
    good_body(&b, &S_DEFAULT);
    /* ids: "é", 0 as int8 (non-negative signed counts as uint), UINT64_MAX */
    const uint8_t ids[] = {0x93, 0xa2, 0xc3, 0xa9, 0xd0, 0x00, 0xcf, 0xff, 0xff, 0xff, 0xff,
                           0xff, 0xff, 0xff, 0xff};
    b_set_raw(&b, "ids", ids, sizeof ids);
    b_del(&b, "target");
    b_del(&b, "y");
    shape_t s = S_DEFAULT;
    s.B = 3;
    uint8_t *t;
    size_t tl;
    tensor(&s, 3, false, &t, &tl);
    b_set_bin(&b, "attn", t, tl);
    free(t);
    tensor(&s, 4, true, &t, &tl);
    b_set_bin(&b, "grad", t, tl);
    free(t);
    dec_t x;
    cr_assert_eq(decode(&x, &b), XR_OK, "%s", wire_detail(&x.d));
    cr_assert_eq(x.in.B, 3);
    cr_assert(x.in.ids[0].is_str && x.in.ids[0].s.len == 2 && memcmp(x.in.ids[0].s.ptr, "\xc3\xa9", 2) == 0);
    cr_assert(!x.in.ids[1].is_str && x.in.ids[1].u == 0);
    cr_assert(!x.in.ids[2].is_str && x.in.ids[2].u == UINT64_MAX);
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, integer_and_float_widths_accepted)
{
    body_t b;
    good_body(&b, &S_DEFAULT);
    const uint8_t L_u64[] = {0xcf, 0, 0, 0, 0, 0, 0, 0, 2};       /* L as uint64 */
    const uint8_t H_i16[] = {0xd1, 0x00, 0x03};                     /* H as int16 */
    const uint8_t seq_i8[] = {0xd0, 0x29};                          /* seq 41 as int8 */
    const uint8_t ts_neg[] = {0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe};
    const uint8_t y_mixed[] = {0x92, 0xca, 0x3f, 0x00, 0x00, 0x00, 0xff};  /* [0.5f, -1] */
    const uint8_t tg_mixed[] = {0x92, 0xcc, 0x07, 0xd2, 0xff, 0xff, 0xff, 0xfd};  /* [7, -3] */
    const uint8_t v_u32[] = {0xce, 0, 0, 0, 1};
    b_set_raw(&b, "L", L_u64, sizeof L_u64);
    b_set_raw(&b, "H", H_i16, sizeof H_i16);
    b_set_raw(&b, "seq", seq_i8, sizeof seq_i8);
    b_set_raw(&b, "ts", ts_neg, sizeof ts_neg);
    b_set_raw(&b, "y", y_mixed, sizeof y_mixed);
    b_set_raw(&b, "target", tg_mixed, sizeof tg_mixed);
    b_set_raw(&b, "v", v_u32, sizeof v_u32);
    dec_t x;
    cr_assert_eq(decode(&x, &b), XR_OK, "%s", wire_detail(&x.d));
    cr_assert(x.in.shape.L == 2 && x.in.shape.H == 3 && x.in.seq == 41 && x.in.ts == -2);
    cr_assert(x.in.y[0] == 0.5 && x.in.y[1] == -1.0);
    cr_assert(x.in.target[0] == 7 && x.in.target[1] == -3);
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, grad_nil_means_absent)
{
    body_t b;
    good_body(&b, &S_DEFAULT);
    b_set_nil(&b, "grad");
    dec_t x;
    cr_assert_eq(decode(&x, &b), XR_OK, "%s", wire_detail(&x.d));
    cr_assert_null(x.in.grad);
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, unknown_keys_of_every_type_ignored)
{
    body_t b;
    good_body(&b, &S_DEFAULT);
    /* Before, between and after the known keys, every msgpack type,
       nested containers, and names close to known ones. */
    uint8_t deep[40];
    for (int k = 0; k < 30; k++)
        deep[k] = 0x91;
    deep[30] = 0x01;
    const uint8_t ext32[] = {0xc9, 0, 0, 0, 2, 0x05, 0xaa, 0xbb};
    const uint8_t fixext[] = {0xd4, 0x80, 0x01};
    const uint8_t map_nested[] = {0x82, 0xa1, 'v', 0x02, 0xa3, 'i', 'd', 's', 0x90};
    const uint8_t bin[] = {0xc4, 0x03, 0xc1, 0xc1, 0xc1};   /* 0xc1 inside a bin is data */
    const uint8_t str_bad_utf8[] = {0xa2, 0xff, 0xfe};      /* not ours to check */
    const uint8_t f32[] = {0xca, 0x7f, 0xc0, 0, 0};         /* NaN */
    const uint8_t neg[] = {0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0};
    const uint8_t arr16[] = {0xdc, 0x00, 0x02, 0xc0, 0xc3};
    body_t u;
    memset(&u, 0, sizeof u);
    b_set_nil(&u, "x_nil");
    b_set_raw(&u, "x_true", "\xc3", 1);
    b_set_raw(&u, "x_f32", f32, sizeof f32);
    b_set_double(&u, "x_f64", -1e300);
    b_set_raw(&u, "x_neg", neg, sizeof neg);
    b_set_uint(&u, "x_u64", UINT64_MAX);
    b_set_raw(&u, "x_ext32", ext32, sizeof ext32);
    b_set_raw(&u, "x_fixext", fixext, sizeof fixext);
    b_set_raw(&u, "x_map", map_nested, sizeof map_nested);
    b_set_raw(&u, "x_bin", bin, sizeof bin);
    b_set_raw(&u, "x_str", str_bad_utf8, sizeof str_bad_utf8);
    b_set_raw(&u, "x_deep", deep, 31);
    b_set_raw(&u, "x_arr16", arr16, sizeof arr16);
    b_set_cstr(&u, "V", "not the version");
    b_set_cstr(&u, "modelx", "other");
    b_set_uint(&u, "", 7);
    /* Interleave: half before everything, half at the end. */
    body_t all;
    memset(&all, 0, sizeof all);
    for (int k = 0; k < u.n / 2; k++)
        b_add_raw(&all, u.p[k].key, u.p[k].val, u.p[k].len);
    for (int k = 0; k < b.n; k++)
        b_add_raw(&all, b.p[k].key, b.p[k].val, b.p[k].len);
    for (int k = u.n / 2; k < u.n; k++)
        b_add_raw(&all, u.p[k].key, u.p[k].val, u.p[k].len);
    dec_t x, ref;
    cr_assert_eq(decode(&ref, &b), XR_OK);
    cr_assert_eq(decode(&x, &all), XR_OK, "%s", wire_detail(&x.d));
    cr_assert(x.in.B == ref.in.B && x.in.seq == ref.in.seq && x.in.ts == ref.in.ts &&
              x.in.shape.L == ref.in.shape.L && x.in.shape.n == ref.in.shape.n &&
              x.in.shape.cls == ref.in.shape.cls && x.in.trade_bytes == ref.in.trade_bytes);
    cr_assert(memcmp(x.in.attn, ref.in.attn, 2 * ref.in.trade_bytes) == 0);
    wire_decoder_destroy(&x.d);
    wire_decoder_destroy(&ref.d);
    b_free(&all);
    b_free(&u);
    b_free(&b);
}

Test(wire, version_key_anywhere)
{
    body_t b;
    good_body(&b, &S_DEFAULT);
    b_del(&b, "v");
    b_set_uint(&b, "v", 1);   /* now last */
    dec_t x;
    cr_assert_eq(decode(&x, &b), XR_OK, "%s", wire_detail(&x.d));
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, decoder_reuse_keeps_nothing_stale)
{
    /* A big message with target/y/tokens, then a small one without:
       nothing of the first shows through. */
    wire_limits_t l = limits();
    wire_decoder_t d;
    wire_decoder_init(&d, &l);
    body_t big, small;
    shape_t s1 = S_DEFAULT;
    s1.B = 40;
    good_body(&big, &s1);
    shape_t s2 = {.B = 1, .L = 1, .H = 1, .n = 3, .dtype = 2};
    good_body(&small, &s2);
    b_encode(&big);
    b_encode(&small);
    wire_ingest_t in;
    cr_assert_eq(wire_decode_ingest(&d, "attn/m1", 7, big.bytes, big.size, &in), XR_OK);
    cr_assert(d.cap_batch >= 40);
    uint32_t cap = d.cap_batch;
    cr_assert_eq(wire_decode_ingest(&d, "attn/m1", 7, small.bytes, small.size, &in), XR_OK);
    cr_assert(in.B == 1 && !in.target && !in.y && !in.tokens && !in.grad && !in.has_cls);
    cr_assert_eq(d.cap_batch, cap, "arrays must be kept for reuse, not shrunk");
    /* A failed decode leaves no usable output behind. */
    small.bytes[0] = 0x90;
    cr_assert_eq(wire_decode_ingest(&d, "attn/m1", 7, small.bytes, small.size, &in), XR_NOT_MAP);
    cr_assert(in.B == 0 && in.attn == NULL);
    wire_decoder_destroy(&d);
    b_free(&big);
    b_free(&small);
}

/* ---- every rejection reason ------------------------------------------ */

static void
expect_topic(const char *topic, xr_reason_t want)
{
    body_t b;
    good_body(&b, &S_DEFAULT);
    dec_t x;
    wire_limits_t l = limits();
    decode_topic(&x, &l, topic, &b);
    EXPECT_REJECT(&x, want, topic);
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, reason_topic)
{
    expect_topic("", XR_TOPIC);
    expect_topic("attn", XR_TOPIC);
    expect_topic("att/m1", XR_TOPIC);
    expect_topic("xpl/m1", XR_TOPIC);
    expect_topic("ATTN/m1", XR_TOPIC);
    expect_topic("attn/m2", XR_TOPIC);     /* model key "m1" differs */
    expect_topic("attn/m10", XR_TOPIC);    /* a prefix is not equal */
    expect_topic("attn/m", XR_TOPIC);
    CASE(XR_TOPIC, "model key m1x vs topic m1", b_set_cstr(b, "model", "m1x"));
    CASE(XR_TOPIC, "model key M1 vs topic m1", b_set_cstr(b, "model", "M1"));
}

Test(wire, reason_model_name)
{
    expect_topic("attn/", XR_MODEL_NAME);
    expect_topic("attn/bad name", XR_MODEL_NAME);
    expect_topic("attn/m1/x", XR_MODEL_NAME);
    expect_topic("attn/\xc3\xa9", XR_MODEL_NAME);
    char t[80] = "attn/";
    memset(t + 5, 'a', 65);
    t[70] = '\0';
    expect_topic(t, XR_MODEL_NAME);
    /* Exactly 64 bytes is a valid name. */
    t[69] = '\0';
    body_t b;
    good_body(&b, &S_DEFAULT);
    b_set_cstr(&b, "model", t + 5);
    dec_t x;
    wire_limits_t l = limits();
    cr_assert_eq(decode_topic(&x, &l, t, &b), XR_OK, "64-byte name: %s", wire_detail(&x.d));
    wire_decoder_destroy(&x.d);
    b_free(&b);
    /* Every single byte: only [A-Za-z0-9_.-] are name characters. */
    for (int c = 0; c < 256; c++) {
        char ch = (char)c;
        bool want = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == '-';
        cr_assert_eq(wire_model_name_ok(&ch, 1), want, "byte 0x%02x", c);
    }
    cr_assert(!wire_model_name_ok("", 0));
}

Test(wire, reason_model_key_differs_from_topic_before_its_name)
{
    /* proto/ingest.md checks `topic` ("model key differs from the topic")
       before `model_name`, and a message whose topic and model key
       disagree must not move any model's seq: a model key that is not a
       valid name but differs from a valid topic is a `topic` rejection,
       else the daemon (ingest.c) tracks its seq for the topic's model. */
    body_t b;
    good_body(&b, &S_DEFAULT);
    b_set_cstr(&b, "model", "bad name!");
    dec_t x;
    decode(&x, &b);
    EXPECT_REJECT(&x, XR_TOPIC, "model key 'bad name!' under topic attn/m1");
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, reason_msgpack)
{
    body_t w;
    good_body(&w, &S_DEFAULT);
    b_encode(&w);
    size_t full = w.size;
    wire_limits_t l = limits();
    /* Every truncation of a valid body. */
    for (size_t cut = 0; cut < full; cut++) {
        wire_decoder_t d;
        wire_decoder_init(&d, &l);
        uint8_t *p = malloc(cut ? cut : 1);
        memcpy(p, w.bytes, cut);
        wire_ingest_t in;
        xr_reason_t rc = wire_decode_ingest(&d, "attn/m1", 7, p, cut, &in);
        cr_assert_eq(rc, XR_MSGPACK, "body cut at %zu of %zu: %s (%s)", cut, full, xr_reason_name(rc),
                     wire_detail(&d));
        cr_assert(wire_detail(&d)[0]);
        free(p);
        wire_decoder_destroy(&d);
    }
    b_free(&w);
    /* Trailing bytes after the body map. */
    good_body(&w, &S_DEFAULT);
    b_encode(&w);
    uint8_t *p = malloc(w.size + 1);
    memcpy(p, w.bytes, w.size);
    p[w.size] = 0x00;
    wire_decoder_t d;
    wire_decoder_init(&d, &l);
    wire_ingest_t in;
    cr_assert_eq(wire_decode_ingest(&d, "attn/m1", 7, p, w.size + 1, &in), XR_MSGPACK);
    cr_assert(wire_detail(&d)[0]);
    wire_decoder_destroy(&d);
    free(p);
    b_free(&w);

    uint8_t deep[1001];
    memset(deep, 0x91, 1000);
    deep[1000] = 0x00;
    CASE(XR_MSGPACK, "0xc1 as an unknown key's value", b_set_raw(b, "x", "\xc1", 1));
    CASE(XR_MSGPACK, "0xc1 as a known key's value", b_set_raw(b, "L", "\xc1", 1));
    CASE(XR_MSGPACK, "0xc1 inside ids", b_set_raw(b, "ids", "\x92\xa1x\xc1", 4));
    CASE(XR_MSGPACK, "nesting 1000 deep", b_set_raw(b, "x", deep, sizeof deep));
    CASE(XR_MSGPACK, "nesting 1000 deep before v", b_del(b, "v"); b_set_raw(b, "x", deep, sizeof deep);
         b_set_uint(b, "v", 1));
    CASE(XR_MSGPACK, "nesting 40 deep", b_set_raw(b, "x", deep + 960, 41));
    CASE(XR_MSGPACK, "bin32 declaring 4 GiB", b_set_raw(b, "attn", "\xc6\xff\xff\xff\xf0xxxx", 9));
    CASE(XR_MSGPACK, "str32 declaring 4 GiB", b_set_raw(b, "x", "\xdb\xff\xff\xff\xff", 5));
    /* An empty body and the bare huge headers. */
    const struct { const char *b; size_t n; } raw[] = {
        {"", 0}, {"\xdd\xff\x00\x00\x00", 5}, {"\xdf\xff\xff\xff\xff", 5},
        {"\xc6\xff\xff\xff\xf0", 5}, {"\xc1", 1}, {"\x81\xa1v", 3}};
    for (size_t k = 0; k < sizeof raw / sizeof *raw; k++) {
        wire_decoder_init(&d, &l);
        p = malloc(raw[k].n + 1);
        memcpy(p, raw[k].b, raw[k].n);
        xr_reason_t rc = wire_decode_ingest(&d, "attn/m1", 7, p, raw[k].n, &in);
        cr_assert_eq(rc, XR_MSGPACK, "raw body %zu: %s", k, xr_reason_name(rc));
        cr_assert(wire_detail(&d)[0]);
        wire_decoder_destroy(&d);
        free(p);
    }
}

static void
expect_raw_body(const void *body, size_t len, xr_reason_t want, const char *what)
{
    wire_limits_t l = limits();
    wire_decoder_t d;
    wire_decoder_init(&d, &l);
    uint8_t *p = malloc(len + 1);
    memcpy(p, body, len);
    wire_ingest_t in;
    xr_reason_t rc = wire_decode_ingest(&d, "attn/m1", 7, p, len, &in);
    cr_assert_eq(rc, want, "%s: got %s (%s), want %s", what, xr_reason_name(rc), wire_detail(&d),
                 xr_reason_name(want));
    cr_assert(wire_detail(&d)[0], "%s: no detail", what);
    free(p);
    wire_decoder_destroy(&d);
}

Test(wire, reason_not_map)
{
    expect_raw_body("\x93\x01\x02\x03", 4, XR_NOT_MAP, "array body");
    expect_raw_body("\xc0", 1, XR_NOT_MAP, "nil body");
    expect_raw_body("\xa2hi", 3, XR_NOT_MAP, "str body");
    expect_raw_body("\x01", 1, XR_NOT_MAP, "int body");
    expect_raw_body("\x82\x01\x02\xa1v\x01", 6, XR_NOT_MAP, "int key before v");
    expect_raw_body("\x82\xa1v\x01\xc4\x01v\x01", 8, XR_NOT_MAP, "bin key after v");
    expect_raw_body("\x82\xa1v\x01\xc0\x01", 6, XR_NOT_MAP, "nil key after v");
    expect_raw_body("\x82\xa1v\x01\x91\xa1k\x01", 8, XR_NOT_MAP, "array key after v");
}

Test(wire, reason_version)
{
    CASE(XR_VERSION, "v = 2", b_set_uint(b, "v", 2));
    CASE(XR_VERSION, "v = 0", b_set_uint(b, "v", 0));
    CASE(XR_VERSION, "v = -1", b_set_int(b, "v", -1));
    CASE(XR_VERSION, "v missing", b_del(b, "v"));
    CASE(XR_VERSION, "v is a str", b_set_cstr(b, "v", "1"));
    CASE(XR_VERSION, "v is a float", b_set_double(b, "v", 1.0));
    CASE(XR_VERSION, "v is nil", b_set_nil(b, "v"));
    CASE(XR_VERSION, "v = 2 after a wrong-typed key", b_del(b, "v"); b_set_cstr(b, "L", "x");
         b_set_uint(b, "v", 2));
    CASE(XR_VERSION, "v = 2 with a bad dtype first", b_set_cstr(b, "dtype", "f64");
         b_del(b, "v"); b_set_uint(b, "v", 2));
}

Test(wire, reason_duplicate_key)
{
    const char *keys[] = {"v", "model", "seq", "ts", "ids", "L", "H", "n", "dtype", "attn",
                          "grad", "target", "y", "cls", "tokens"};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
        body_t b;
        good_body(&b, &S_DEFAULT);
        for (int i = 0; i < b.n; i++)
            if (strcmp(b.p[i].key, keys[k]) == 0) {
                b_add_raw(&b, keys[k], b.p[i].val, b.p[i].len);
                break;
            }
        char what[64];
        snprintf(what, sizeof what, "key '%s' twice", keys[k]);
        expect_body_reason(&b, XR_DUPLICATE_KEY, what);
        b_free(&b);
    }
    /* An unknown key twice is just ignored twice. */
    body_t b;
    good_body(&b, &S_DEFAULT);
    b_add_raw(&b, "x", "\x01", 1);
    b_add_raw(&b, "x", "\x02", 1);
    dec_t x;
    cr_assert_eq(decode(&x, &b), XR_OK, "%s", wire_detail(&x.d));
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, reason_duplicate_grad_after_nil)
{
    /* "a key given twice is duplicate_key": grad: nil then grad: <bin>
       is grad given twice. */
    body_t b;
    good_body(&b, &S_DEFAULT);
    for (int i = 0; i < b.n; i++)
        if (strcmp(b.p[i].key, "grad") == 0) {
            uint8_t *g = malloc(b.p[i].len);
            size_t gl = b.p[i].len;
            memcpy(g, b.p[i].val, gl);
            b_set_nil(&b, "grad");
            b_add_raw(&b, "grad", g, gl);
            free(g);
            break;
        }
    expect_body_reason(&b, XR_DUPLICATE_KEY, "grad: nil, then grad: bin");
    b_free(&b);
    good_body(&b, &S_DEFAULT);
    b_set_nil(&b, "grad");
    b_add_raw(&b, "grad", "\xc0", 1);
    expect_body_reason(&b, XR_DUPLICATE_KEY, "grad: nil twice");
    b_free(&b);
}

Test(wire, reason_wrong_type)
{
    CASE(XR_WRONG_TYPE, "model is an int", b_set_uint(b, "model", 1));
    CASE(XR_WRONG_TYPE, "model is a bin", b_set_bin(b, "model", "m1", 2));
    CASE(XR_WRONG_TYPE, "seq negative", b_set_int(b, "seq", -1));
    CASE(XR_WRONG_TYPE, "seq is a str", b_set_cstr(b, "seq", "1"));
    CASE(XR_WRONG_TYPE, "seq is a float", b_set_double(b, "seq", 1.0));
    CASE(XR_WRONG_TYPE, "ts is a float", b_set_double(b, "ts", 1.0));
    CASE(XR_WRONG_TYPE, "ts above INT64_MAX", b_set_uint(b, "ts", (uint64_t)INT64_MAX + 1));
    CASE(XR_WRONG_TYPE, "ids is a str", b_set_cstr(b, "ids", "t0"));
    CASE(XR_WRONG_TYPE, "ids holds a float", b_set_raw(b, "ids", "\x92\xa1x\xcb\x3f\xf0\0\0\0\0\0\0", 12));
    CASE(XR_WRONG_TYPE, "ids holds nil", b_set_raw(b, "ids", "\x92\xa1x\xc0", 4));
    CASE(XR_WRONG_TYPE, "ids holds a negative int", b_set_raw(b, "ids", "\x92\xa1x\xff", 4));
    CASE(XR_WRONG_TYPE, "ids holds an array", b_set_raw(b, "ids", "\x92\xa1x\x91\x01", 5));
    CASE(XR_WRONG_TYPE, "ids holds a bin", b_set_raw(b, "ids", "\x92\xa1x\xc4\x01x", 6));
    CASE(XR_WRONG_TYPE, "L is a str", b_set_cstr(b, "L", "2"));
    CASE(XR_WRONG_TYPE, "H is a float", b_set_double(b, "H", 3.0));
    CASE(XR_WRONG_TYPE, "n negative", b_set_int(b, "n", -4));
    CASE(XR_WRONG_TYPE, "n is nil", b_set_nil(b, "n"));
    CASE(XR_WRONG_TYPE, "dtype is an int", b_set_uint(b, "dtype", 0));
    CASE(XR_WRONG_TYPE, "attn is a str", b_set_cstr(b, "attn", "AAAA"));
    CASE(XR_WRONG_TYPE, "attn is nil", b_set_nil(b, "attn"));
    CASE(XR_WRONG_TYPE, "grad is an array", b_set_raw(b, "grad", "\x90", 1));
    CASE(XR_WRONG_TYPE, "target is an int", b_set_int(b, "target", 1));
    CASE(XR_WRONG_TYPE, "target holds a float", b_set_raw(b, "target", "\x92\x01\xca\0\0\0\0", 7));
    CASE(XR_WRONG_TYPE, "target holds a uint above INT64_MAX",
         b_set_raw(b, "target", "\x92\x01\xcf\x80\0\0\0\0\0\0\0", 11));
    CASE(XR_WRONG_TYPE, "y holds a str", b_set_raw(b, "y", "\x92\x01\xa1y", 4));
    CASE(XR_WRONG_TYPE, "y holds nil", b_set_raw(b, "y", "\x92\xc0\x01", 3));
    CASE(XR_WRONG_TYPE, "y is a float", b_set_double(b, "y", 0.5));
    CASE(XR_WRONG_TYPE, "cls is a str", b_set_cstr(b, "cls", "3"));
    CASE(XR_WRONG_TYPE, "cls is a float", b_set_double(b, "cls", 3.0));
    CASE(XR_WRONG_TYPE, "tokens is a str", b_set_cstr(b, "tokens", "a b c d"));
    CASE(XR_WRONG_TYPE, "tokens holds ints", b_set_raw(b, "tokens", "\x94\x01\x02\x03\x04", 5));
}

Test(wire, reason_dtype)
{
    CASE(XR_DTYPE, "f64", b_set_cstr(b, "dtype", "f64"));
    CASE(XR_DTYPE, "F32", b_set_cstr(b, "dtype", "F32"));
    CASE(XR_DTYPE, "empty", b_set_cstr(b, "dtype", ""));
    CASE(XR_DTYPE, "bf16x", b_set_cstr(b, "dtype", "bf16x"));
    CASE(XR_DTYPE, "f32 with a NUL", b_set_str(b, "dtype", "f32\0", 4));
    CASE(XR_DTYPE, "int8", b_set_cstr(b, "dtype", "int8"));
}

Test(wire, reason_bad_string)
{
    CASE(XR_BAD_STRING, "id not UTF-8", b_set_raw(b, "ids", "\x92\xa2\xff\xfe\xa1x", 6));
    CASE(XR_BAD_STRING, "id a lone surrogate", b_set_raw(b, "ids", "\x92\xa3\xed\xa0\x80\xa1x", 7));
    CASE(XR_BAD_STRING, "token overlong", b_set_raw(b, "tokens", "\x94\xa1" "a\xa1" "b\xa2\xc0\x80\xa1" "d", 10));
    char long_s[300];
    memset(long_s, 'x', sizeof long_s);
    CASE(XR_BAD_STRING, "id of 257 bytes", {
             pk_t p;
             msgpack_packer *pk = pk_begin(&p);
             msgpack_pack_array(pk, 2);
             msgpack_pack_str_with_body(pk, "x", 1);
             msgpack_pack_str_with_body(pk, long_s, 257);
             b_set_pk(b, "ids", &p);
         });
    CASE(XR_BAD_STRING, "token of 257 bytes", {
        pk_t p;
        msgpack_packer *pk = pk_begin(&p);
        msgpack_pack_array(pk, 4);
        for (int k = 0; k < 3; k++)
            msgpack_pack_str_with_body(pk, "t", 1);
        msgpack_pack_str_with_body(pk, long_s, 257);
        b_set_pk(b, "tokens", &p);
    });
}

Test(wire, max_str_boundary_in_bytes)
{
    wire_limits_t l = limits();
    l.max_str = 6;
    /* "é" is 2 bytes: the limit counts bytes, not characters. */
    const char *ids6[] = {"abcde", "\xc3\xa9\xc3\xa9\xc3\xa9", "\xc3\xa9\xc3\xa9\xc3\xa9x"};
    for (int len = 5; len <= 7; len++) {
        body_t b;
        good_body(&b, &S_DEFAULT);
        const char *ids[2] = {"a", ids6[len - 5]};
        cr_assert_eq(strlen(ids[1]), (size_t)len);
        b_set_strs(&b, "ids", ids, 2);
        dec_t x;
        xr_reason_t rc = decode_topic(&x, &l, "attn/m1", &b);
        cr_assert_eq(rc, len <= 6 ? XR_OK : XR_BAD_STRING, "id of %d bytes with max_str 6: %s", len,
                     xr_reason_name(rc));
        wire_decoder_destroy(&x.d);
        b_free(&b);
    }
}

Test(wire, reason_length)
{
    CASE(XR_LENGTH, "ids empty", b_set_raw(b, "ids", "\x90", 1));
    CASE(XR_LENGTH, "target too short", b_set_raw(b, "target", "\x91\x01", 2));
    CASE(XR_LENGTH, "target too long", b_set_raw(b, "target", "\x93\x01\x01\x01", 4));
    CASE(XR_LENGTH, "target empty", b_set_raw(b, "target", "\x90", 1));
    CASE(XR_LENGTH, "y too short", b_set_raw(b, "y", "\x91\x01", 2));
    CASE(XR_LENGTH, "y too long", b_set_raw(b, "y", "\x93\x01\x01\x01", 4));
    CASE(XR_LENGTH, "tokens too few", b_set_raw(b, "tokens", "\x93\xa1" "a\xa1" "b\xa1" "c", 7));
    CASE(XR_LENGTH, "tokens too many", b_set_raw(b, "tokens", "\x95\xa1" "a\xa1" "b\xa1" "c\xa1" "d\xa1" "e", 11));
}

Test(wire, reason_missing_key)
{
    const char *req[] = {"model", "seq", "ts", "ids", "L", "H", "n", "dtype", "attn"};
    for (size_t k = 0; k < sizeof req / sizeof *req; k++) {
        body_t b;
        good_body(&b, &S_DEFAULT);
        b_del(&b, req[k]);
        /* Without ids the optional per-trade arrays have nothing to match. */
        if (strcmp(req[k], "ids") == 0) {
            b_del(&b, "target");
            b_del(&b, "y");
        }
        dec_t x;
        decode(&x, &b);
        char what[64];
        snprintf(what, sizeof what, "without '%s'", req[k]);
        EXPECT_REJECT(&x, XR_MISSING_KEY, what);
        cr_assert(strstr(wire_detail(&x.d), req[k]), "detail '%s' does not name '%s'",
                  wire_detail(&x.d), req[k]);
        wire_decoder_destroy(&x.d);
        b_free(&b);
    }
    /* The optional ones are optional. */
    const char *opt[] = {"grad", "target", "y", "cls", "tokens"};
    for (size_t k = 0; k < sizeof opt / sizeof *opt; k++) {
        body_t b;
        good_body(&b, &S_DEFAULT);
        b_del(&b, opt[k]);
        dec_t x;
        cr_assert_eq(decode(&x, &b), XR_OK, "without '%s': %s", opt[k], wire_detail(&x.d));
        wire_decoder_destroy(&x.d);
        b_free(&b);
    }
}

Test(wire, reason_shape)
{
    wire_limits_t l = limits();
    CASE(XR_SHAPE, "L = 0", b_set_uint(b, "L", 0); b_set_bin(b, "attn", "", 0); b_del(b, "grad"));
    CASE(XR_SHAPE, "H = 0", b_set_uint(b, "H", 0));
    CASE(XR_SHAPE, "n = 0", b_set_uint(b, "n", 0); b_del(b, "tokens"); b_del(b, "cls"));
    CASE(XR_SHAPE, "L over max_layers", b_set_uint(b, "L", l.max_layers + 1));
    CASE(XR_SHAPE, "H over max_heads", b_set_uint(b, "H", l.max_heads + 1));
    CASE(XR_SHAPE, "n over max_tokens", b_set_uint(b, "n", l.max_tokens + 1); b_del(b, "tokens"));
    CASE(XR_SHAPE, "L = 2^32 (would truncate to 0)", b_set_uint(b, "L", 1ull << 32));
    CASE(XR_SHAPE, "n = 2^32 + 4 (would truncate to 4)", b_set_uint(b, "n", (1ull << 32) + 4);
         b_del(b, "tokens"));
    CASE(XR_SHAPE, "cls = n", b_set_int(b, "cls", 4));
    CASE(XR_SHAPE, "cls = -2", b_set_int(b, "cls", -2));
    CASE(XR_SHAPE, "cls = INT64_MIN", b_set_int(b, "cls", INT64_MIN));
    CASE(XR_SHAPE, "cls far above n", b_set_uint(b, "cls", 1ull << 40));
    /* A CLS token with n = 1 leaves no feature. */
    shape_t s = {.B = 1, .L = 1, .H = 1, .n = 1, .dtype = 0, .schema = true};
    body_t b;
    good_body(&b, &s);
    expect_body_reason(&b, XR_SHAPE, "cls 0 with n 1");
    b_set_int(&b, "cls", -1);
    dec_t x;
    cr_assert_eq(decode(&x, &b), XR_OK, "n 1 without CLS: %s", wire_detail(&x.d));
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, reason_too_large)
{
    CASE(XR_TOO_LARGE, "B*L*H*n*n over max_elems", b_set_uint(b, "L", 64); b_set_uint(b, "H", 64);
         b_set_uint(b, "n", 1024); b_del(b, "tokens"); b_del(b, "cls"); b_set_bin(b, "attn", "", 0);
         b_del(b, "grad"));
    /* Exactly at the limit is allowed; one trade more is not. */
    wire_limits_t l = limits();
    l.max_elems = 2 * 2 * 3 * 4 * 4;
    body_t b;
    good_body(&b, &S_DEFAULT);
    dec_t x;
    cr_assert_eq(decode_topic(&x, &l, "attn/m1", &b), XR_OK, "at the limit: %s", wire_detail(&x.d));
    wire_decoder_destroy(&x.d);
    l.max_elems--;
    decode_topic(&x, &l, "attn/m1", &b);
    EXPECT_REJECT(&x, XR_TOO_LARGE, "one value over max_elems");
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, reason_size)
{
    CASE(XR_SIZE, "attn one value short", {
        for (int i = 0; i < b->n; i++)
            if (strcmp(b->p[i].key, "attn") == 0) {
                uint8_t *a = malloc(b->p[i].len);
                memcpy(a, b->p[i].val + 3, b->p[i].len - 3);
                b_set_bin(b, "attn", a, b->p[i].len - 3 - 4);
                free(a);
                break;
            }
    });
    CASE(XR_SIZE, "attn one byte long", {
        uint8_t a[2 * 2 * 3 * 16 * 4 + 1] = {0};
        b_set_bin(b, "attn", a, sizeof a);
    });
    CASE(XR_SIZE, "attn empty", b_set_bin(b, "attn", "", 0));
    CASE(XR_SIZE, "grad one value short", {
        uint8_t g[2 * 2 * 3 * 16 * 4] = {0};
        b_set_bin(b, "grad", g, sizeof g - 4);
    });
    CASE(XR_SIZE, "f16 with f32 bytes", b_set_cstr(b, "dtype", "f16"));
    CASE(XR_SIZE, "bf16 with f32 bytes", b_set_cstr(b, "dtype", "bf16"));
}

Test(wire, limits_checked_before_anything_is_reserved)
{
    wire_limits_t l = limits();
    l.max_batch = 4;
    l.max_tokens = 8;
    /* ids over max_batch: rejected on its header, nothing reserved. */
    body_t b;
    good_body(&b, &S_DEFAULT);
    b_set_raw(&b, "ids", "\x95\x01\x02\x03\x04\x05", 6);
    dec_t x;
    decode_topic(&x, &l, "attn/m1", &b);
    EXPECT_REJECT(&x, XR_LENGTH, "5 ids with max_batch 4");
    cr_assert_eq(x.d.cap_batch, 0, "ids reserved (%u) before the count was checked", x.d.cap_batch);
    wire_decoder_destroy(&x.d);
    b_free(&b);
    /* target over max_batch, before ids. */
    good_body(&b, &S_DEFAULT);
    b_del(&b, "v");
    body_t c;
    memset(&c, 0, sizeof c);
    b_set_uint(&c, "v", 1);
    b_set_raw(&c, "target", "\xdc\x00\x05\x01\x01\x01\x01\x01", 8);
    for (int k = 0; k < b.n; k++)
        if (strcmp(b.p[k].key, "target"))
            b_add_raw(&c, b.p[k].key, b.p[k].val, b.p[k].len);
    decode_topic(&x, &l, "attn/m1", &c);
    EXPECT_REJECT(&x, XR_LENGTH, "5 targets with max_batch 4");
    cr_assert_eq(x.d.cap_batch, 0);
    wire_decoder_destroy(&x.d);
    b_free(&c);
    b_free(&b);
    /* tokens over max_tokens. */
    good_body(&b, &S_DEFAULT);
    const char *nine[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i"};
    b_set_strs(&b, "tokens", nine, 9);
    decode_topic(&x, &l, "attn/m1", &b);
    EXPECT_REJECT(&x, XR_LENGTH, "9 tokens with max_tokens 8");
    cr_assert_eq(x.d.cap_tokens, 0, "tokens reserved before the count was checked");
    wire_decoder_destroy(&x.d);
    b_free(&b);
    /* The largest allowed batch reserves no more than the limit needs. */
    shape_t s = S_DEFAULT;
    s.B = 4;
    good_body(&b, &s);
    cr_assert_eq(decode_topic(&x, &l, "attn/m1", &b), XR_OK, "%s", wire_detail(&x.d));
    cr_assert(x.d.cap_batch >= 4);
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, shape_products_never_wrap)
{
    /* With every limit at its maximum the products must still be checked
       without wrapping: 2^16 * 2^16 * (2^16)^2 is 2^64, which wraps to 0
       and would match an empty attn. */
    wire_limits_t l = {.max_batch = UINT32_MAX, .max_layers = UINT32_MAX, .max_heads = UINT32_MAX,
                       .max_tokens = UINT32_MAX, .max_elems = UINT64_MAX, .max_str = 256};
    const struct { uint64_t L, H, n; } cases[] = {
        {1u << 16, 1u << 16, 1u << 16},
        {UINT32_MAX, UINT32_MAX, UINT32_MAX},
        {1, 1, UINT32_MAX},
        {3, 5, 0x80000000u},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        uint64_t n = cases[k].n;
        body_t b;
        good_body(&b, &S_DEFAULT);
        b_set_uint(&b, "L", cases[k].L);
        b_set_uint(&b, "H", cases[k].H);
        b_set_uint(&b, "n", n);
        b_del(&b, "tokens");
        b_del(&b, "cls");
        b_del(&b, "grad");
        b_set_bin(&b, "attn", "", 0);
        dec_t x;
        xr_reason_t rc = decode_topic(&x, &l, "attn/m1", &b);
        cr_assert(rc == XR_TOO_LARGE || rc == XR_SIZE,
                  "L=%llu H=%llu n=%llu with an empty attn: %s", (unsigned long long)cases[k].L,
                  (unsigned long long)cases[k].H, (unsigned long long)n, xr_reason_name(rc));
        wire_decoder_destroy(&x.d);
        b_free(&b);
    }
}

Test(wire, byte_size_product_never_wraps)
{
    /* B*L*H*n*n itself fits in 64 bits (2^62 values), but times the
       element size (4) it is 2^64, which wraps to 0: an empty attn must
       not pass as 2^62 float32 values when max_elems allows them. */
    wire_limits_t l = {.max_batch = UINT32_MAX, .max_layers = UINT32_MAX, .max_heads = UINT32_MAX,
                       .max_tokens = UINT32_MAX, .max_elems = UINT64_MAX, .max_str = 256};
    body_t b;
    good_body(&b, &S_DEFAULT);
    b_set_raw(&b, "ids", "\x91\x01", 2);
    b_del(&b, "target");
    b_del(&b, "y");
    b_set_uint(&b, "L", 1u << 30);
    b_set_uint(&b, "H", 1u << 30);
    b_set_uint(&b, "n", 2);
    b_del(&b, "tokens");
    b_del(&b, "cls");
    b_del(&b, "grad");
    b_set_bin(&b, "attn", "", 0);
    dec_t x;
    xr_reason_t rc = decode_topic(&x, &l, "attn/m1", &b);
    cr_assert_neq(rc, XR_OK, "2^62 f32 values accepted in an empty attn (trade_bytes %zu)",
                  x.in.trade_bytes);
    EXPECT_REJECT(&x, XR_SIZE, "2^62 f32 values in an empty attn");
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

/* ---- validation order ------------------------------------------------- */

Test(wire, first_failing_key_decides_among_per_key_checks)
{
    /* duplicate_key ... length are decided by the key that comes first. */
    body_t w;
    good_body(&w, &S_DEFAULT);
    b_del(&w, "L");
    b_del(&w, "dtype");
    b_set_cstr(&w, "L", "x");
    b_set_cstr(&w, "dtype", "f64");
    expect_body_reason(&w, XR_WRONG_TYPE, "L wrong type, then bad dtype");
    b_del(&w, "L");
    b_set_cstr(&w, "L", "x");    /* now after dtype */
    expect_body_reason(&w, XR_DTYPE, "bad dtype, then L wrong type");
    b_free(&w);
    /* Per-key checks come before missing_key, shape, too_large, size. */
    CASE(XR_DTYPE, "bad dtype and no attn", b_set_cstr(b, "dtype", "f64"); b_del(b, "attn"));
    CASE(XR_BAD_STRING, "bad id and L = 0", b_set_raw(b, "ids", "\x92\xa1\xff\xa1x", 5);
         b_set_uint(b, "L", 0));
    CASE(XR_MISSING_KEY, "no ts and L = 0", b_del(b, "ts"); b_set_uint(b, "L", 0));
    CASE(XR_SHAPE, "L = 0 and wrong size", b_set_uint(b, "L", 0); b_set_bin(b, "attn", "x", 1));
    CASE(XR_TOO_LARGE, "too large and wrong size", b_set_uint(b, "n", 1024); b_set_uint(b, "L", 64);
         b_set_uint(b, "H", 64); b_del(b, "tokens"); b_del(b, "cls"));
    /* The topic is checked before the body is read at all. */
    body_t g;
    good_body(&g, &S_DEFAULT);
    b_set_uint(&g, "v", 2);
    dec_t x;
    wire_limits_t l = limits();
    decode_topic(&x, &l, "attn/bad name", &g);
    EXPECT_REJECT(&x, XR_MODEL_NAME, "bad topic name and v = 2");
    wire_decoder_destroy(&x.d);
    b_free(&g);
}

Test(wire, seq_reported_when_read_before_a_rejection)
{
    /* has_seq is set when seq was decoded, even if a later key fails, so
       that the daemon can track it; never when the failure came first. */
    body_t b;
    good_body(&b, &S_DEFAULT);     /* seq is the 3rd key, dtype the 9th */
    b_set_cstr(&b, "dtype", "f64");
    dec_t x;
    decode(&x, &b);
    cr_assert_eq(x.rc, XR_DTYPE);
    cr_assert(x.in.has_seq && x.in.seq == 41, "seq read before the bad dtype was not reported");
    wire_decoder_destroy(&x.d);
    b_free(&b);

    good_body(&b, &S_DEFAULT);
    b_set_uint(&b, "v", 3);
    decode(&x, &b);
    cr_assert_eq(x.rc, XR_VERSION);
    cr_assert(!x.in.has_seq, "a version rejection reads no seq");
    wire_decoder_destroy(&x.d);
    b_free(&b);

    good_body(&b, &S_DEFAULT);
    b_set_cstr(&b, "model", "m2");  /* model (2nd key) differs from the topic */
    decode(&x, &b);
    cr_assert_eq(x.rc, XR_TOPIC);
    cr_assert(!x.in.has_seq, "seq comes after model here and must not be reported");
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

/* ---- UTF-8 ------------------------------------------------------------ */

/* Well-formed UTF-8 by Unicode table 3-7 (byte ranges, no decoding). */
static bool
ref_utf8(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c <= 0x7f) { i++; continue; }
        else if (c >= 0xc2 && c <= 0xdf) need = 1;
        else if (c == 0xe0) { need = 2; lo = 0xa0; }
        else if (c >= 0xe1 && c <= 0xec) need = 2;
        else if (c == 0xed) { need = 2; hi = 0x9f; }
        else if (c >= 0xee && c <= 0xef) need = 2;
        else if (c == 0xf0) { need = 3; lo = 0x90; }
        else if (c >= 0xf1 && c <= 0xf3) need = 3;
        else if (c == 0xf4) { need = 3; hi = 0x8f; }
        else return false;
        if (len - i <= need)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return false;
        i += need + 1;
    }
    return true;
}

Test(wire, utf8_named_cases)
{
    const struct { const char *s; size_t n; bool ok; const char *what; } cases[] = {
        {"", 0, true, "empty"},
        {"abc", 3, true, "ASCII"},
        {"\x00", 1, true, "U+0000"},
        {"\xc2\x80", 2, true, "U+0080"},
        {"\xc3\xa9", 2, true, "e acute"},
        {"\xdf\xbf", 2, true, "U+07FF"},
        {"\xe0\xa0\x80", 3, true, "U+0800"},
        {"\xe2\x82\xac", 3, true, "euro"},
        {"\xed\x9f\xbf", 3, true, "U+D7FF"},
        {"\xee\x80\x80", 3, true, "U+E000"},
        {"\xef\xbf\xbf", 3, true, "U+FFFF"},
        {"\xf0\x90\x80\x80", 4, true, "U+10000"},
        {"\xf0\x9f\x98\x80", 4, true, "emoji"},
        {"\xf4\x8f\xbf\xbf", 4, true, "U+10FFFF"},
        {"\xc0\x80", 2, false, "overlong NUL"},
        {"\xc1\xbf", 2, false, "overlong 2-byte"},
        {"\xe0\x80\x80", 3, false, "overlong 3-byte NUL"},
        {"\xe0\x9f\xbf", 3, false, "overlong U+07FF"},
        {"\xf0\x80\x80\x80", 4, false, "overlong 4-byte NUL"},
        {"\xf0\x8f\xbf\xbf", 4, false, "overlong U+FFFF"},
        {"\xed\xa0\x80", 3, false, "high surrogate"},
        {"\xed\xbf\xbf", 3, false, "low surrogate"},
        {"\xed\xa0\xbd\xed\xb8\x80", 6, false, "CESU-8 pair"},
        {"\xf4\x90\x80\x80", 4, false, "U+110000"},
        {"\xf5\x80\x80\x80", 4, false, "lead F5"},
        {"\xf8\x88\x80\x80\x80", 5, false, "5-byte form"},
        {"\xfc\x84\x80\x80\x80\x80", 6, false, "6-byte form"},
        {"\xfe", 1, false, "FE"},
        {"\xff", 1, false, "FF"},
        {"\x80", 1, false, "lone continuation"},
        {"a\xbf", 2, false, "continuation after ASCII"},
        {"\xc3", 1, false, "truncated 2-byte at end"},
        {"\xe2\x82", 2, false, "truncated 3-byte at end"},
        {"\xf0\x9f\x98", 3, false, "truncated 4-byte at end"},
        {"\xc3" "A", 2, false, "2-byte cut by ASCII"},
        {"\xe2\x82" "A", 3, false, "3-byte cut by ASCII"},
        {"\xf0\x9f\x98" "A", 4, false, "4-byte cut by ASCII"},
        {"\xe2\xc3\xa9", 3, false, "lead followed by a lead"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        /* Exactly-sized copy: a validator reading past len is caught by ASan. */
        uint8_t *p = malloc(cases[k].n ? cases[k].n : 1);
        memcpy(p, cases[k].s, cases[k].n);
        cr_assert_eq(wire_utf8_ok(p, cases[k].n), cases[k].ok, "%s", cases[k].what);
        cr_assert_eq(ref_utf8(p, cases[k].n), cases[k].ok, "reference disagrees on %s", cases[k].what);
        free(p);
    }
}

Test(wire, utf8_every_sequence_up_to_three_bytes)
{
    /* All 1-, 2- and 3-byte strings, and every 4-byte string with a
       4-byte lead and continuation-range bytes. */
    uint8_t s[4];
    for (uint32_t v = 0; v < 256; v++) {
        s[0] = (uint8_t)v;
        cr_assert_eq(wire_utf8_ok(s, 1), ref_utf8(s, 1), "%02x", v);
    }
    for (uint32_t v = 0; v < 65536; v++) {
        s[0] = (uint8_t)(v >> 8);
        s[1] = (uint8_t)v;
        cr_assert_eq(wire_utf8_ok(s, 2), ref_utf8(s, 2), "%02x %02x", s[0], s[1]);
    }
    for (uint32_t v = 0; v < (1u << 24); v++) {
        s[0] = (uint8_t)(v >> 16);
        s[1] = (uint8_t)(v >> 8);
        s[2] = (uint8_t)v;
        if (wire_utf8_ok(s, 3) != ref_utf8(s, 3))
            cr_assert_fail("%02x %02x %02x: wire says %d", s[0], s[1], s[2], wire_utf8_ok(s, 3));
    }
    for (uint32_t lead = 0xf0; lead <= 0xf7; lead++)
        for (uint32_t v = 0; v < (1u << 18); v++) {
            s[0] = (uint8_t)lead;
            s[1] = (uint8_t)(0x80 | (v >> 12));
            s[2] = (uint8_t)(0x80 | ((v >> 6) & 0x3f));
            s[3] = (uint8_t)(0x80 | (v & 0x3f));
            if (wire_utf8_ok(s, 4) != ref_utf8(s, 4))
                cr_assert_fail("%02x %02x %02x %02x", s[0], s[1], s[2], s[3]);
        }
}

Test(wire, reason_names_stable)
{
    const char *names[XR_NREASONS] = {
        "ok", "frames", "topic", "msgpack", "not_map", "version", "missing_key", "wrong_type",
        "duplicate_key", "model_name", "dtype", "shape", "too_large", "size", "length",
        "bad_string", "nonfinite", "not_allowed", "too_many_models", "no_schema", "internal",
        "attention", "schema_rate", "fused_form", "needs_heads", "group_unknown_token",
        "group_token_twice", "group_cls_token", "group_empty", "group_duplicate_feature_name",
        "group_duplicate_token_name"};
    for (int r = 0; r < XR_NREASONS; r++)
        cr_assert_str_eq(xr_reason_name((xr_reason_t)r), names[r]);
    cr_assert_str_eq(xr_reason_name(XR_NREASONS), "unknown");
    cr_assert_str_eq(xr_reason_name((xr_reason_t)-1), "unknown");
}

/* ---- attention rows ------------------------------------------------------ */

/* Perturb row `r` (of n values) of A: what a buggy or hostile publisher
   might send. Returns whether the row is meant to pass at `tol`. */
static bool
s_perturb(double *row, int n, int kind, double tol)
{
    switch (kind) {
    case 0: return true;                                          /* untouched */
    case 1: for (int j = 0; j < n; j++) row[j] = -row[j]; return false;     /* negated */
    case 2: row[0] -= 3 * tol; row[n - 1] += 3 * tol; return row[0] >= -tol; /* a value pushed down */
    case 3: row[n - 1] += row[0] + 0.3 * tol; row[0] = -0.3 * tol; return true; /* tiny negative */
    case 4: for (int j = 0; j < n; j++) row[j] *= 1 + 3 * tol; return false; /* sums to 1 + 3 tol */
    case 5: for (int j = 0; j < n; j++) row[j] *= 1 + 0.3 * tol; return true;
    case 6: for (int j = 0; j < n; j++) row[j] = 0; return true;             /* fully masked */
    case 7: for (int j = 0; j < n; j++) row[j] *= 0.5; return false;         /* half a row */
    case 8: row[n / 2] = NAN; return true;                        /* left to the finiteness check */
    default: for (int j = 0; j < n; j++) row[j] = 1e15; return false;       /* huge */
    }
}

Test(wire, attention_rows_agree_with_float64_reference)
{
    static const int ns[] = {1, 2, 3, 7, 8, 9, 17, 33, 64, 130, 600};
    const double tol = 0.01;
    rng_t g;
    rng_seed(&g, 11);
    int checked = 0, failing = 0;
    for (size_t si = 0; si < sizeof ns / sizeof *ns; si++) {
        int n = ns[si], L = 1 + (int)(rng_next(&g) % 3), H = 1 + (int)(rng_next(&g) % 3);
        size_t rows = (size_t)L * H * n, count = rows * n;
        double *A = malloc(count * sizeof *A), *X = malloc(count * sizeof *X);
        uint8_t *bytes = malloc(count * 4);
        cr_assert(A && X && bytes);
        for (int kind = 0; kind < 10; kind++) {
            if (n < 2 && (kind == 2 || kind == 3))
                continue;
            for (int dt = 0; dt < 3; dt++) {
                gen_attention(&g, A, rows, n, 1.0 + (double)kind);
                size_t r = rng_next(&g) % rows;
                bool meant = s_perturb(A + r * n, n, kind, tol);
                encode_dtype(dt, A, count, bytes, X);
                long want = ref_attn_first_bad_row(L, H, n, X, tol);
                if (dt == 0)
                    cr_assert_eq(want < 0, meant, "n=%d kind %d: the reference says row %ld", n,
                                 kind, want);
                wire_attn_bad_t bad;
                xm_shape_t sh = {(uint32_t)L, (uint32_t)H, (uint32_t)n, -1};
                bool ok = wire_attn_rows_ok(&sh, (xm_dtype_t)dt, bytes, (float)tol, &bad);
                cr_assert_eq(ok, want < 0, "n=%d kind %d dtype %d: wire says %d, reference row %ld",
                             n, kind, dt, ok, want);
                if (!ok) {
                    long got = ((long)bad.l * H + bad.h) * n + bad.i;
                    cr_assert_eq(got, want, "n=%d kind %d dtype %d: first bad row %ld, want %ld", n,
                                 kind, dt, got, want);
                    double sum = 0;
                    for (int j = 0; j < n; j++)
                        sum += X[want * n + j];
                    cr_assert(close_enough(bad.sum, sum, 1e-5, 1e-6), "sum %g vs %g", bad.sum, sum);
                    failing++;
                }
                checked++;
            }
        }
        free(A);
        free(X);
        free(bytes);
    }
    cr_assert_gt(failing, 100, "only %d failing cases exercised", failing);
    cr_assert_gt(checked, 250);
}

Test(wire, attention_rows_tolerance_is_the_boundary)
{
    /* A 4 x 4 matrix, every row 0.25 (exact in float32), then its last
       row moved by multiples of tol = 1/16 (exact too). */
    xm_shape_t sh = {1, 1, 4, -1};
    float m[16], *row = m + 12;
    const float tol = 0.0625f;
    for (int k = 0; k < 16; k++) m[k] = 0.25f;
    cr_assert(wire_attn_rows_ok(&sh, XM_F32, m, tol, NULL));
    row[0] = 0.25f + 0.0625f;      /* sum 1 + tol exactly: allowed */
    cr_assert(wire_attn_rows_ok(&sh, XM_F32, m, tol, NULL));
    row[0] = 0.25f + 0.125f;       /* sum 1 + 2 tol */
    wire_attn_bad_t bad;
    cr_assert_not(wire_attn_rows_ok(&sh, XM_F32, m, tol, &bad));
    cr_assert(bad.l == 0 && bad.h == 0 && bad.i == 3, "row %u %u %u", bad.l, bad.h, bad.i);
    cr_assert_float_eq(bad.sum, 1.125f, 1e-7);
    row[0] = -0.0625f; row[1] = 0.5625f;  /* min -tol, sum 1: allowed */
    cr_assert(wire_attn_rows_ok(&sh, XM_F32, m, tol, NULL));
    row[0] = -0.125f; row[1] = 0.625f;    /* min -2 tol */
    cr_assert_not(wire_attn_rows_ok(&sh, XM_F32, m, tol, &bad));
    cr_assert_float_eq(bad.min, -0.125f, 0);
    cr_assert_float_eq(bad.sum, 1.0f, 1e-7);
    for (int k = 0; k < 4; k++) row[k] = 0;   /* fully masked */
    cr_assert(wire_attn_rows_ok(&sh, XM_F32, m, 0, NULL));
    /* What a gradient may hold is not attention. */
    for (int k = 0; k < 4; k++) row[k] = -0.25f;
    cr_assert_not(wire_attn_rows_ok(&sh, XM_F32, m, tol, NULL));
}

Test(wire, max_body_bounds_the_largest_valid_message)
{
    /* A message at every limit (B ids of max_str bytes, attn, grad and rel of
       max_elems f32, target, y, tokens) encodes to no more than
       wire_max_body, and the default is close to it (within 10%). */
    wire_limits_t lim;
    wire_limits_default(&lim);
    lim.fused = false;      /* the full form's bound (test_fused_wire: the fused one's) */
    lim.max_elems = 1u << 16;
    lim.max_batch = 16;
    lim.max_tokens = 64;
    lim.max_str = 40;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    char str[64];
    memset(str, 'x', sizeof str);
    uint32_t B = 16, L = 1, H = 1, n = 64;  /* B*L*H*n*n = 65536 = max_elems */
    size_t tbytes = (size_t)B * L * H * n * n * 4;
    uint8_t *t = calloc(tbytes, 1);
    cr_assert_not_null(t);
    msgpack_pack_map(&pk, 17);
#define KEY(k) msgpack_pack_str_with_body(&pk, k, strlen(k))
    KEY("v"); msgpack_pack_uint64(&pk, 1);
    KEY("model"); msgpack_pack_str_with_body(&pk, str, 64);
    KEY("seq"); msgpack_pack_uint64(&pk, UINT64_MAX);
    KEY("ts"); msgpack_pack_int64(&pk, INT64_MIN);
    KEY("ids"); msgpack_pack_array(&pk, B);
    for (uint32_t b = 0; b < B; b++) msgpack_pack_str_with_body(&pk, str, lim.max_str);
    KEY("L"); msgpack_pack_uint64(&pk, L);
    KEY("H"); msgpack_pack_uint64(&pk, H);
    KEY("n"); msgpack_pack_uint64(&pk, n);
    KEY("dtype"); msgpack_pack_str_with_body(&pk, "bf16", 4);
    KEY("attn"); msgpack_pack_bin_with_body(&pk, t, tbytes);
    KEY("grad"); msgpack_pack_bin_with_body(&pk, t, tbytes);
    KEY("rel"); msgpack_pack_bin_with_body(&pk, t, tbytes);
    KEY("target"); msgpack_pack_array(&pk, B);
    for (uint32_t b = 0; b < B; b++) msgpack_pack_int64(&pk, INT64_MIN);
    KEY("y"); msgpack_pack_array(&pk, B);
    for (uint32_t b = 0; b < B; b++) msgpack_pack_double(&pk, 1.0 / 3);
    KEY("cls"); msgpack_pack_int64(&pk, INT64_MIN);
    KEY("tokens"); msgpack_pack_array(&pk, n);
    for (uint32_t k = 0; k < n; k++) msgpack_pack_str_with_body(&pk, str, lim.max_str);
    /* groups at their largest: one a token, names and tokens max_str long
       (a valid one has unique names and no CLS; the size is the same) */
    KEY("groups"); msgpack_pack_map(&pk, n);
    for (uint32_t k = 0; k < n; k++) {
        msgpack_pack_str_with_body(&pk, str, lim.max_str);
        msgpack_pack_array(&pk, 1);
        msgpack_pack_str_with_body(&pk, str, lim.max_str);
    }
#undef KEY
    uint64_t max = wire_max_body(&lim);
    cr_assert_leq(sb.size, max, "a message at the limits is %zu bytes, bound %" PRIu64, sb.size, max);
    /* every string's header counted as 5 bytes (2 here), every group's array as 5 (1) */
    cr_assert_leq(max, sb.size + (64u << 10) + 512 + 10 * (size_t)n, "bound %" PRIu64
                  " is loose for %zu", max, sb.size);
    free(t);
    msgpack_sbuffer_destroy(&sb);

    wire_limits_default(&lim);
    lim.fused = false;
    max = wire_max_body(&lim);
    cr_assert_geq(max, 3 * lim.max_elems * 4);
    cr_assert_leq(max, 3 * lim.max_elems * 4 + (4u << 20), "default bound %" PRIu64, max);
}

/* ---- feature groups ------------------------------------------------------ */

/* Pack "groups" from "name:tok,tok;name:..." as a map, or as an array of
   [name, [tokens]] pairs. An empty spec is an empty map (array). */
static void
b_set_groups(body_t *b, const char *spec, bool as_map)
{
    char buf[256], *save = NULL;
    snprintf(buf, sizeof buf, "%s", spec);
    char *grp[16];
    int ng = 0;
    for (char *g = strtok_r(buf, ";", &save); g && ng < 16; g = strtok_r(NULL, ";", &save))
        grp[ng++] = g;
    pk_t p;
    msgpack_packer *pk = pk_begin(&p);
    if (as_map)
        msgpack_pack_map(pk, (size_t)ng);
    else
        msgpack_pack_array(pk, (size_t)ng);
    for (int k = 0; k < ng; k++) {
        char *colon = strchr(grp[k], ':');
        cr_assert_not_null(colon);
        *colon = '\0';
        if (!as_map)
            msgpack_pack_array(pk, 2);
        msgpack_pack_str_with_body(pk, grp[k], strlen(grp[k]));
        char *toks[16], *s2 = NULL;
        int nt = 0;
        for (char *t = strtok_r(colon + 1, ",", &s2); t && nt < 16; t = strtok_r(NULL, ",", &s2))
            toks[nt++] = t;
        msgpack_pack_array(pk, (size_t)nt);
        for (int q = 0; q < nt; q++)
            msgpack_pack_str_with_body(pk, toks[q], strlen(toks[q]));
    }
    b_set_pk(b, "groups", &p);
}

Test(wire, groups_map_and_pairs_resolve_alike)
{
    /* tokens f0 f1 f2 CLS (cls 3): {"g": [f2, f0]} makes the features
       g (where f0 stands) and f1 */
    for (int as_map = 0; as_map < 2; as_map++) {
        body_t b;
        good_body(&b, &S_DEFAULT);
        b_set_groups(&b, "g:f2,f0", as_map);
        dec_t x;
        cr_assert_eq(decode(&x, &b), XR_OK, "%s", wire_detail(&x.d));
        cr_assert(x.in.has_groups && x.in.ngroups == 1 && x.in.gmap);
        const xm_groups_t *g = x.in.gmap;
        cr_assert_eq(g->npos, 3);
        cr_assert_eq(g->nfeat, 2);
        cr_assert(g->feat_of[0] == 0 && g->feat_of[1] == 1 && g->feat_of[2] == 0);
        cr_assert(x.in.groups[0].name.len == 1 && x.in.groups[0].name.ptr[0] == 'g');
        cr_assert_eq(x.in.groups[0].ntokens, 2);
        wire_decoder_destroy(&x.d);
        b_free(&b);
    }
}

Test(wire, groups_nil_is_absent_and_empty_is_none)
{
    body_t b;
    good_body(&b, &S_DEFAULT);
    b_set_raw(&b, "groups", "\xc0", 1);
    dec_t x;
    cr_assert_eq(decode(&x, &b), XR_OK, "%s", wire_detail(&x.d));
    cr_assert(!x.in.has_groups && x.in.gmap == NULL);
    wire_decoder_destroy(&x.d);
    b_set_groups(&b, "", true);
    cr_assert_eq(decode(&x, &b), XR_OK, "%s", wire_detail(&x.d));
    cr_assert(x.in.has_groups && x.in.ngroups == 0 && x.in.gmap == NULL);
    wire_decoder_destroy(&x.d);
    /* A decoder reused after a grouped message keeps nothing of it. */
    b_set_groups(&b, "g:f0,f1", true);
    cr_assert_eq(decode(&x, &b), XR_OK, "%s", wire_detail(&x.d));
    b_del(&b, "groups");
    b_encode(&b);
    cr_assert_eq(wire_decode_ingest(&x.d, "attn/m1", 7, b.bytes, b.size, &x.in), XR_OK);
    cr_assert(!x.in.has_groups && x.in.gmap == NULL && x.in.ngroups == 0);
    wire_decoder_destroy(&x.d);
    b_free(&b);
}

Test(wire, groups_refusals_by_name)
{
    CASE(XR_GROUP_UNKNOWN_TOKEN, "unknown token", b_set_groups(b, "g:f0,zz", true));
    CASE(XR_GROUP_TOKEN_TWICE, "token in two groups", b_set_groups(b, "g:f0,f1;h:f1", true));
    CASE(XR_GROUP_TOKEN_TWICE, "token twice in one", b_set_groups(b, "g:f0,f0", false));
    CASE(XR_GROUP_CLS_TOKEN, "CLS in a group", b_set_groups(b, "g:f0,CLS", true));
    CASE(XR_GROUP_EMPTY, "empty group", b_set_groups(b, "g:", true));
    CASE(XR_GROUP_DUP_NAME, "group named as a lone token", b_set_groups(b, "f2:f0,f1", true));
    CASE(XR_GROUP_DUP_NAME, "two groups of one name", b_set_groups(b, "g:f0;g:f1", false));
    CASE(XR_GROUP_DUP_TOKEN_NAME, "tokens named alike", {
        const char *toks[] = {"f0", "f0", "f2", "CLS"};
        b_set_strs(b, "tokens", toks, 4);
        b_set_groups(b, "g:f2", true);
    });
    CASE(XR_WRONG_TYPE, "groups a str", b_set_str(b, "groups", "f0", 2));
    CASE(XR_WRONG_TYPE, "tokens not an array", b_set_raw(b, "groups", "\x81\xa1g\xa2" "f0", 6));
    CASE(XR_WRONG_TYPE, "a token not a str", b_set_raw(b, "groups", "\x81\xa1g\x91\x07", 5));
    CASE(XR_WRONG_TYPE, "a pair of three", b_set_raw(b, "groups", "\x91\x93\xa1g\x90\x01", 6));
    CASE(XR_WRONG_TYPE, "a name not a str", b_set_raw(b, "groups", "\x81\x01\x91\xa2" "f0", 6));
    CASE(XR_BAD_STRING, "a name with NUL", b_set_raw(b, "groups", "\x81\xa2g\x00\x91\xa2" "f0", 8));
    CASE(XR_LENGTH, "more tokens than n", b_set_groups(b, "g:f0,f1,f2,f0,f1", true));
    CASE(XR_MISSING_KEY, "groups without tokens", b_del(b, "tokens"); b_set_groups(b, "g:f0", true));
    CASE(XR_MISSING_KEY, "groups without cls", b_del(b, "cls"); b_set_groups(b, "g:f0", true));
}

Test(wire, groups_limit_is_configurable)
{
    body_t b;
    good_body(&b, &S_DEFAULT);
    b_set_groups(&b, "g:f0;h:f1", true);
    wire_limits_t l = limits();
    l.max_groups = 1;
    dec_t x;
    decode_topic(&x, &l, "attn/m1", &b);
    EXPECT_REJECT(&x, XR_LENGTH, "two groups, max_groups 1");
    cr_assert(strstr(wire_detail(&x.d), "limit 1"), "%s", wire_detail(&x.d));
    wire_decoder_destroy(&x.d);
    l.max_groups = 2;
    cr_assert_eq(decode_topic(&x, &l, "attn/m1", &b), XR_OK, "%s", wire_detail(&x.d));
    cr_assert_eq(x.in.gmap->nfeat, 3);
    wire_decoder_destroy(&x.d);
    b_free(&b);
}
