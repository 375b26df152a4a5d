/*  Tests of core/wire's fused form (proto/ingest.md, "The fused form").

    A valid fused message decodes to views of its tensors and head
    statistics; each way of getting it wrong is named (fused_form,
    missing_key, size, too_large, wrong_type, duplicate_key, msgpack for
    a truncated bin); a decoder that does not take the fused form treats
    it as an older daemon does (missing_key: no attn); the per-trade value
    check names rows of M and head statistics out of range.  */
#define _GNU_SOURCE /* memmem */
#include "fuse.h"
#include "half.h"
#include "support.h"
#include "wire.h"

#include <criterion/criterion.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

enum { F_ATTN = 1, F_GRAD = 2, F_FATTN = 4, F_FGRAD = 8, F_FSIGN = 16, F_IMP = 32, F_CONF = 64 };

typedef struct {
    uint32_t B, L, H, n;
    int dtype;                  /* 0 f32, 1 f16 */
    unsigned keys;              /* F_ bits present */
    unsigned nil;               /* F_ bits sent as nil */
    const char *wrong;          /* a key sent as a str instead of bin */
    const char *twice;          /* a key sent twice */
    int short_key;              /* F_ bit whose bin is one element short */
    int trunc;                  /* cut this many bytes off the end */
    uint32_t Hdecl;             /* H declared (0: H) */
} msg_t;

typedef struct {
    float *M, *P, *S, *imp, *conf;     /* B trades */
    float *A;
} data_t;

static void
make_data(const msg_t *m, data_t *d, uint64_t seed)
{
    const size_t nn = (size_t)m->n * m->n, full = (size_t)m->L * m->H * nn, lnn = (size_t)m->L * nn;
    const size_t lh = (size_t)m->L * m->H;
    rng_t r;
    rng_seed(&r, seed);
    double *A = malloc(full * sizeof(double)), *G = malloc(full * sizeof(double));
    float *af = malloc(full * 4), *gf = malloc(full * 4);
    d->M = malloc(m->B * lnn * 4);
    d->P = malloc(m->B * lnn * 4);
    d->S = malloc(m->B * lnn * 4);
    d->imp = malloc(m->B * lh * 4);
    d->conf = malloc(m->B * lh * 4);
    d->A = malloc(m->B * full * 4);
    for (uint32_t b = 0; b < m->B; b++) {
        gen_attention(&r, A, (size_t)m->L * m->H * m->n, (int)m->n, 2.0);
        gen_gradient(&r, G, full, 1.0);
        encode_dtype(0, A, full, af, A);
        encode_dtype(0, G, full, gf, G);
        memcpy(d->A + b * full, af, full * 4);
        fuse_trade(m->L, m->H, m->n, af, gf, d->M + b * lnn, d->P + b * lnn, d->S + b * lnn,
                   d->imp + b * lh, d->conf + b * lh);
    }
    free(A); free(G); free(af); free(gf);
}

static void
free_data(data_t *d)
{
    free(d->M); free(d->P); free(d->S); free(d->imp); free(d->conf); free(d->A);
}

static void
pack_key(msgpack_packer *pk, const char *k)
{
    msgpack_pack_str(pk, strlen(k));
    msgpack_pack_str_body(pk, k, strlen(k));
}

static void
pack_tensor(msgpack_packer *pk, const float *x, size_t cnt, int dtype, bool shorten)
{
    size_t es = dtype ? 2 : 4, bytes = cnt * es - (shorten ? es : 0);
    void *buf = malloc(cnt * es);
    if (dtype)
        half_f16_encode(buf, x, cnt);
    else
        memcpy(buf, x, cnt * 4);
    msgpack_pack_bin(pk, bytes);
    msgpack_pack_bin_body(pk, buf, bytes);
    free(buf);
}

static int
count_keys(const msg_t *m)
{
    int k = 10 + (m->twice ? 1 : 0);     /* v model seq ts ids L H n dtype cls... */
    for (unsigned b = 1; b <= F_CONF; b <<= 1)
        k += (m->keys & b) != 0;
    return k;
}

/* Body of a message; *len its size (truncated when asked). */
static uint8_t *
build(const msg_t *m, const data_t *d, size_t *len)
{
    const uint32_t H = m->Hdecl ? m->Hdecl : m->H;
    const size_t nn = (size_t)m->n * m->n, lnn = (size_t)m->L * nn, lh = (size_t)m->L * m->H;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, (uint32_t)count_keys(m));
    pack_key(&pk, "v"); msgpack_pack_uint8(&pk, 1);
    pack_key(&pk, "model"); msgpack_pack_str(&pk, 2); msgpack_pack_str_body(&pk, "m1", 2);
    pack_key(&pk, "seq"); msgpack_pack_uint8(&pk, 3);
    pack_key(&pk, "ts"); msgpack_pack_int64(&pk, 1700000000000000000LL);
    pack_key(&pk, "ids");
    msgpack_pack_array(&pk, m->B);
    for (uint32_t b = 0; b < m->B; b++)
        msgpack_pack_uint32(&pk, 100 + b);
    pack_key(&pk, "L"); msgpack_pack_uint32(&pk, m->L);
    pack_key(&pk, "H"); msgpack_pack_uint32(&pk, H);
    pack_key(&pk, "n"); msgpack_pack_uint32(&pk, m->n);
    pack_key(&pk, "dtype");
    msgpack_pack_str(&pk, 3);
    msgpack_pack_str_body(&pk, m->dtype ? "f16" : "f32", 3);
    pack_key(&pk, "cls"); msgpack_pack_int32(&pk, m->n >= 2 ? (int32_t)m->n - 1 : -1);
    struct { unsigned bit; const char *key; const float *x; size_t cnt; bool head; } t[] = {
        {F_ATTN, "attn", d->A, m->B * (size_t)m->L * m->H * nn, false},
        {F_GRAD, "grad", d->A, m->B * (size_t)m->L * m->H * nn, false},
        {F_FATTN, "fattn", d->M, m->B * lnn, false},
        {F_FGRAD, "fgrad", d->P, m->B * lnn, false},
        {F_FSIGN, "fgrad_signed", d->S, m->B * lnn, false},
        {F_IMP, "head_importance", d->imp, m->B * lh, true},
        {F_CONF, "head_confidence", d->conf, m->B * lh, true},
    };
    for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
        if (!(m->keys & t[k].bit))
            continue;
        int reps = m->twice && strcmp(m->twice, t[k].key) == 0 ? 2 : 1;
        for (int r = 0; r < reps; r++) {
            pack_key(&pk, t[k].key);
            if (m->nil & t[k].bit)
                msgpack_pack_nil(&pk);
            else if (m->wrong && strcmp(m->wrong, t[k].key) == 0)
                msgpack_pack_str(&pk, 0);
            else
                pack_tensor(&pk, t[k].x, t[k].cnt, t[k].head ? 0 : m->dtype,
                            m->short_key == (int)t[k].bit);
        }
    }
    *len = sb.size - (size_t)m->trunc;
    return (uint8_t *)sb.data;
}

static xr_reason_t
decode(const msg_t *m, bool accept, wire_ingest_t *out, char *detail, data_t *d)
{
    make_data(m, d, 7 + m->L * 31 + m->n);
    size_t len;
    uint8_t *body = build(m, d, &len);
    wire_limits_t lim;
    wire_limits_default(&lim);
    lim.fused = accept;
    wire_decoder_t dec;
    wire_decoder_init(&dec, &lim);
    xr_reason_t r = wire_decode_ingest(&dec, "attn/m1", 7, body, len, out);
    snprintf(detail, 192, "%s", wire_detail(&dec));
    /* The views point into body: checked by the caller before it goes. */
    if (r == XR_OK && (m->keys & F_FATTN)) {
        const size_t es = m->dtype ? 2 : 4, lnn = (size_t)m->L * m->n * m->n;
        cr_assert(out->fused);
        cr_assert_null(out->attn);
        cr_assert_eq(out->trade_bytes, lnn * es);
        cr_assert_eq(out->trade_head_bytes, (size_t)m->L * m->H * 4);
        cr_assert_eq(out->shape.H, m->H);
        cr_assert_eq(out->B, m->B);
        float *x = malloc(m->B * lnn * 4);
        if (m->dtype)
            half_f16_decode(x, out->fattn, m->B * lnn);
        else
            memcpy(x, out->fattn, m->B * lnn * 4);
        for (size_t k = 0; k < m->B * lnn; k++)
            cr_assert(close_enough(x[k], d->M[k], m->dtype ? 1e-3 : 0, m->dtype ? 1e-4 : 0),
                      "fattn[%zu] %g vs %g", k, x[k], d->M[k]);
        free(x);
        cr_assert_eq(memcmp(out->head_confidence, d->conf, m->B * out->trade_head_bytes), 0);
        if (out->head_importance)
            cr_assert_eq(memcmp(out->head_importance, d->imp, m->B * out->trade_head_bytes), 0);
        cr_assert_eq(out->fgrad != NULL, (m->keys & F_FGRAD) && !(m->nil & F_FGRAD));
        cr_assert_eq(out->fgrad_signed != NULL, (m->keys & F_FSIGN) && !(m->nil & F_FSIGN));
    }
    free(body);
    wire_decoder_destroy(&dec);
    return r;
}

static void
expect(const msg_t *m, bool accept, xr_reason_t want, const char *in_detail)
{
    wire_ingest_t out;
    char detail[192];
    data_t d;
    xr_reason_t r = decode(m, accept, &out, detail, &d);
    cr_assert_eq(r, want, "keys %#x nil %#x: got %s (%s), want %s", m->keys, m->nil,
                 xr_reason_name(r), detail, xr_reason_name(want));
    if (in_detail)
        cr_assert(strstr(detail, in_detail), "detail '%s' lacks '%s'", detail, in_detail);
    free_data(&d);
}

#define FUSED (F_FATTN | F_FGRAD | F_IMP | F_CONF)

Test(fused_wire, valid_messages_decode_f32_and_f16)
{
    const uint32_t shapes[][4] = {{1, 1, 1, 2}, {3, 4, 8, 32}, {2, 2, 3, 5}, {5, 1, 1, 1}};
    for (size_t k = 0; k < 4; k++)
        for (int dt = 0; dt < 2; dt++) {
            msg_t m = {shapes[k][0], shapes[k][1], shapes[k][2], shapes[k][3], dt, FUSED};
            expect(&m, true, XR_OK, NULL);
            m.keys = FUSED | F_FSIGN;
            expect(&m, true, XR_OK, NULL);
            m.keys = F_FATTN | F_CONF;          /* forward only */
            expect(&m, true, XR_OK, NULL);
            m.keys = FUSED;                     /* grad parts as nil */
            m.nil = F_FGRAD | F_IMP;
            expect(&m, true, XR_OK, NULL);
        }
}

Test(fused_wire, a_decoder_without_the_fused_form_answers_as_an_older_daemon)
{
    msg_t m = {1, 2, 2, 4, 0, FUSED};
    expect(&m, false, XR_MISSING_KEY, "'attn'");
    /* And a full message still decodes with the fused keys unknown to it:
       they are ignored, as every unknown key. */
    m.keys = F_ATTN | F_IMP;
    wire_ingest_t out;
    char detail[192];
    data_t d;
    cr_assert_eq(decode(&m, false, &out, detail, &d), XR_OK, "%s", detail);
    free_data(&d);
}

Test(fused_wire, mixed_or_incomplete_forms_are_fused_form)
{
    msg_t m = {2, 2, 2, 4, 0, FUSED | F_ATTN};
    expect(&m, true, XR_FUSED_FORM, "attn");
    m.keys = FUSED | F_GRAD;
    expect(&m, true, XR_FUSED_FORM, "grad");
    m.keys = F_FATTN | F_FGRAD | F_CONF;
    expect(&m, true, XR_FUSED_FORM, "fgrad without head_importance");
    m.keys = F_FATTN | F_IMP | F_CONF;
    expect(&m, true, XR_FUSED_FORM, "head_importance without fgrad");
    m.keys = F_FATTN | F_FSIGN | F_CONF;
    expect(&m, true, XR_FUSED_FORM, "fgrad_signed without fgrad");
    m.keys = FUSED | F_FSIGN;
    m.nil = F_FGRAD | F_IMP;
    expect(&m, true, XR_FUSED_FORM, "fgrad_signed without fgrad");
    m.nil = 0;
    m.keys = F_ATTN | F_IMP;
    expect(&m, true, XR_FUSED_FORM, "without fattn");
    m.keys = F_ATTN | F_FGRAD;
    expect(&m, true, XR_FUSED_FORM, "'fgrad'");
    m.keys = F_ATTN | F_CONF;
    expect(&m, true, XR_FUSED_FORM, "'head_confidence'");
}

Test(fused_wire, missing_wrong_duplicate_and_short)
{
    msg_t m = {2, 3, 2, 5, 1, F_FATTN | F_FGRAD | F_IMP};
    expect(&m, true, XR_MISSING_KEY, "head_confidence");
    m.keys = F_FGRAD | F_IMP | F_CONF;  /* neither attn nor fattn: the full form's key */
    expect(&m, true, XR_MISSING_KEY, "'attn'");
    m.keys = FUSED;
    m.nil = F_CONF;                     /* required keys cannot be nil */
    expect(&m, true, XR_WRONG_TYPE, "head_confidence");
    m.nil = F_FATTN;
    expect(&m, true, XR_WRONG_TYPE, "fattn");
    m.nil = 0;
    const char *keys[] = {"fattn", "fgrad", "head_importance", "head_confidence"};
    for (int k = 0; k < 4; k++) {
        m.wrong = keys[k];
        expect(&m, true, XR_WRONG_TYPE, keys[k]);
        m.wrong = NULL;
        m.twice = keys[k];
        expect(&m, true, XR_DUPLICATE_KEY, keys[k]);
        m.twice = NULL;
    }
    m.keys = FUSED | F_FSIGN;
    const int bits[] = {F_FATTN, F_FGRAD, F_FSIGN, F_IMP, F_CONF};
    for (int k = 0; k < 5; k++) {
        m.short_key = bits[k];
        expect(&m, true, XR_SIZE, NULL);
    }
    m.short_key = 0;
    /* H declared larger than the head statistics sent. */
    m.Hdecl = 4;
    expect(&m, true, XR_SIZE, "head_");
    m.Hdecl = 0;
    /* A bin cut short is never read past the message. */
    for (int cut = 1; cut < 40; cut += 7) {
        m.trunc = cut;
        expect(&m, true, XR_MSGPACK, "truncated");
    }
}

Test(fused_wire, limits_are_checked_on_the_fused_sizes)
{
    /* B*L*n*n within the limit although B*L*H*n*n is not: accepted
       (the daemon's work and the bytes are those of the fused form). */
    msg_t m = {4, 2, 64, 128, 1, FUSED};
    wire_limits_t lim;
    wire_limits_default(&lim);
    cr_assert_gt((uint64_t)m.B * m.L * m.H * m.n * m.n, lim.max_elems);
    expect(&m, true, XR_OK, NULL);
    /* A head count over the limit is a shape error either way. */
    m = (msg_t){1, 1, 65, 2, 0, FUSED};
    expect(&m, true, XR_SHAPE, NULL);
    /* The largest valid fused body fits the frame limit. */
    lim.fused = true;
    wire_limits_t plain = lim;
    plain.fused = false;
    cr_assert_gt(wire_max_body(&lim), wire_max_body(&plain));
}

Test(fused_wire, too_large_counts_fused_values)
{
    msg_t m = {3, 1, 1, 8, 0, F_FATTN | F_CONF};
    wire_limits_t lim;
    wire_limits_default(&lim);
    lim.fused = true;
    lim.max_elems = 3 * 64 - 1;         /* one value short of B*L*n*n */
    data_t d;
    make_data(&m, &d, 3);
    size_t len;
    uint8_t *body = build(&m, &d, &len);
    wire_decoder_t dec;
    wire_decoder_init(&dec, &lim);
    wire_ingest_t out;
    cr_assert_eq(wire_decode_ingest(&dec, "attn/m1", 7, body, len, &out), XR_TOO_LARGE, "%s",
                 wire_detail(&dec));
    lim.max_elems = 3 * 64;
    wire_decoder_destroy(&dec);
    wire_decoder_init(&dec, &lim);
    cr_assert_eq(wire_decode_ingest(&dec, "attn/m1", 7, body, len, &out), XR_OK, "%s",
                 wire_detail(&dec));
    wire_decoder_destroy(&dec);
    free(body);
    free_data(&d);
    /* Every tensor within max_elems, but all of them together more than
       attn and grad may hold (2 * max_elems): too_large, so that the
       largest valid body (the frame limit) is the full form's. */
    m.keys = FUSED | F_FSIGN;
    make_data(&m, &d, 4);
    body = build(&m, &d, &len);
    lim.max_elems = 3 * 64;             /* 3 tensors of 192 + 2 * 3 statistics > 384 */
    wire_decoder_init(&dec, &lim);
    cr_assert_eq(wire_decode_ingest(&dec, "attn/m1", 7, body, len, &out), XR_TOO_LARGE, "%s",
                 wire_detail(&dec));
    wire_decoder_destroy(&dec);
    lim.max_elems = 3 * 64 * 3 / 2 + 3;   /* 576 + 6 <= 2 * 291 */
    wire_decoder_init(&dec, &lim);
    cr_assert_eq(wire_decode_ingest(&dec, "attn/m1", 7, body, len, &out), XR_OK, "%s",
                 wire_detail(&dec));
    wire_decoder_destroy(&dec);
    free(body);
    free_data(&d);
}

Test(fused_wire, trade_values_are_checked)
{
    msg_t m = {2, 3, 2, 4, 0, FUSED};
    data_t d;
    make_data(&m, &d, 11);
    size_t len;
    const size_t lnn = 3 * 16, lh = 6;
    wire_limits_t lim;
    wire_limits_default(&lim);
    lim.fused = true;
    wire_decoder_t dec;
    wire_decoder_init(&dec, &lim);
    wire_ingest_t out;
    wire_attn_bad_t bad;
    struct { float *arr; size_t at; float v; bool ok; uint32_t l, h, i; } cases[] = {
        {NULL, 0, 0, true, 0, 0, 0},
        {d.M, lnn + 4 * 5 + 1, 0.5f, false, 1, 0, 1},    /* trade 1, l = 1, row 1 sums to 1.5ish */
        {d.M, 2, -0.5f, false, 0, 0, 0},
        {d.conf, lh + 4, 1.5f, false, 2, 0, UINT32_MAX},
        {d.conf, 1, -0.2f, false, 0, 1, UINT32_MAX},
        {d.imp, lh + 5, -1.0f, false, 2, 1, UINT32_MAX},
        {d.imp, 0, 1e6f, true, 0, 0, 0},                 /* large importance is fine */
        {d.M, 3, NAN, true, 0, 0, 0},                    /* left to the finiteness check */
        {d.conf, 0, NAN, true, 0, 0, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        data_t e;
        make_data(&m, &e, 11);
        float *arr = cases[k].arr == d.M ? e.M : cases[k].arr == d.conf ? e.conf : e.imp;
        if (cases[k].arr) {
            if (arr == e.M && isfinite(cases[k].v) && cases[k].v > 0)
                arr[cases[k].at] += cases[k].v;
            else
                arr[cases[k].at] = cases[k].v;
        }
        uint8_t *body = build(&m, &e, &len);
        cr_assert_eq(wire_decode_ingest(&dec, "attn/m1", 7, body, len, &out), XR_OK);
        uint32_t b = (uint32_t)(cases[k].at / (arr == e.M ? lnn : lh));
        bool ok0 = wire_fused_trade_ok(&out, 0, 0.01f, &bad);
        bool ok1 = wire_fused_trade_ok(&out, 1, 0.01f, &bad);
        bool ok = b == 0 ? ok0 : ok1;
        cr_assert_eq(ok, cases[k].ok, "case %zu", k);
        cr_assert(b == 0 ? ok1 : ok0, "case %zu: the other trade is fine", k);
        if (!ok) {
            wire_fused_trade_ok(&out, b, 0.01f, &bad);
            cr_assert_eq(bad.l, cases[k].l, "case %zu l %u", k, bad.l);
            cr_assert_eq(bad.h, cases[k].h, "case %zu h %u", k, bad.h);
            cr_assert_eq(bad.i, cases[k].i, "case %zu i %u", k, bad.i);
        }
        free(body);
        free_data(&e);
    }
    wire_decoder_destroy(&dec);
    free_data(&d);
}

/* Hostile bytes: every truncation of a fused body is msgpack; random
   byte changes give some named reason (or a message still valid), never
   a read past the bytes present (the ASan build checks that); a bin
   declaring 4 GiB is msgpack, not an allocation. */
Test(fused_wire, hostile_bytes)
{
    msg_t m = {2, 2, 3, 5, 0, FUSED | F_FSIGN};
    data_t d;
    make_data(&m, &d, 21);
    size_t len;
    uint8_t *body = build(&m, &d, &len);
    wire_limits_t lim;
    wire_limits_default(&lim);
    lim.fused = true;
    wire_decoder_t dec;
    wire_decoder_init(&dec, &lim);
    wire_ingest_t in;
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *p = malloc(cut ? cut : 1);
        memcpy(p, body, cut);
        xr_reason_t r = wire_decode_ingest(&dec, "attn/m1", 7, p, cut, &in);
        cr_assert_eq(r, XR_MSGPACK, "cut at %zu of %zu: %s (%s)", cut, len, xr_reason_name(r),
                     wire_detail(&dec));
        free(p);
    }
    rng_t r;
    rng_seed(&r, 99);
    uint8_t *p = malloc(len);
    for (int k = 0; k < 20000; k++) {
        memcpy(p, body, len);
        int flips = 1 + (int)(rng_uniform(&r) * 4);
        for (int f = 0; f < flips; f++)
            p[(size_t)(rng_uniform(&r) * len)] = (uint8_t)rng_next(&r);
        xr_reason_t rc = wire_decode_ingest(&dec, "attn/m1", 7, p, len, &in);
        cr_assert(rc < XR_NREASONS);
        if (rc == XR_OK && in.fused) {
            /* Whatever decodes is within the message. */
            const uint8_t *end = p + len;
            cr_assert(in.fattn >= p && in.fattn + in.B * in.trade_bytes <= end);
            cr_assert(in.head_confidence + in.B * in.trade_head_bytes <= end);
            if (in.fgrad)
                cr_assert(in.fgrad + in.B * in.trade_bytes <= end);
            for (uint32_t b = 0; b < in.B; b++)
                (void)wire_fused_trade_ok(&in, b, 0.01f, NULL);
        } else if (rc != XR_OK) {
            cr_assert(wire_detail(&dec)[0], "%s without a detail", xr_reason_name(rc));
        }
    }
    free(p);
    /* fattn declaring 4 GiB - 16 bytes. */
    uint8_t *q = malloc(len + 16);
    memcpy(q, body, len);
    uint8_t *at = memmem(q, len, "fattn", 5);
    cr_assert_not_null(at);
    memcpy(at + 5, "\xc6\xff\xff\xff\xf0", 5);
    cr_assert_eq(wire_decode_ingest(&dec, "attn/m1", 7, q, len, &in), XR_MSGPACK);
    free(q);
    wire_decoder_destroy(&dec);
    free(body);
    free_data(&d);
}

/* A fused message with several targets: T blocks of fgrad, fgrad_signed
   and head_importance per trade (tsize: the T the blocks are sized for),
   and optionally rel, target or no fgrad. Values: uniform M, conf 1/n,
   importance imp_bad at [trade 1][target T-1][l 1][h 2], else 0.5. */
typedef struct {
    uint32_t T, tsize;
    bool rel, target, no_fgrad;
    float imp_bad;
} tmsg_t;

enum { TB = 2, TL = 2, TH = 3, TN = 4 };

static uint8_t *
build_targets(const tmsg_t *m, size_t *len)
{
    const size_t lnn = (size_t)TL * TN * TN, lh = (size_t)TL * TH, T = m->tsize;
    float *M = malloc(TB * lnn * 4), *P = calloc(TB * T * lnn, 4);
    float *imp = malloc(TB * T * lh * 4), *conf = malloc(TB * lh * 4);
    for (size_t k = 0; k < TB * lnn; k++)
        M[k] = 1.0f / TN;
    for (size_t k = 0; k < TB * lh; k++)
        conf[k] = 1.0f / TN;
    for (size_t k = 0; k < TB * T * lh; k++)
        imp[k] = 0.5f;
    imp[((1 * T + (T - 1)) * TL + 1) * TH + 2] = m->imp_bad;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 12 + (m->no_fgrad ? 0 : 3) + m->rel + m->target);
    pack_key(&pk, "v"); msgpack_pack_uint8(&pk, 1);
    pack_key(&pk, "model"); msgpack_pack_str(&pk, 2); msgpack_pack_str_body(&pk, "m1", 2);
    pack_key(&pk, "seq"); msgpack_pack_uint8(&pk, 1);
    pack_key(&pk, "ts"); msgpack_pack_int64(&pk, 1);
    pack_key(&pk, "ids"); msgpack_pack_array(&pk, TB);
    for (int b = 0; b < TB; b++)
        msgpack_pack_uint32(&pk, 10 + b);
    pack_key(&pk, "L"); msgpack_pack_uint32(&pk, TL);
    pack_key(&pk, "H"); msgpack_pack_uint32(&pk, TH);
    pack_key(&pk, "n"); msgpack_pack_uint32(&pk, TN);
    pack_key(&pk, "dtype"); msgpack_pack_str(&pk, 3); msgpack_pack_str_body(&pk, "f32", 3);
    pack_key(&pk, "targets"); msgpack_pack_array(&pk, m->T);
    for (uint32_t t = 0; t < m->T; t++)
        msgpack_pack_int32(&pk, 5 + (int)t);
    pack_key(&pk, "fattn"); pack_tensor(&pk, M, TB * lnn, 0, false);
    if (!m->no_fgrad) {
        pack_key(&pk, "fgrad"); pack_tensor(&pk, P, TB * T * lnn, 0, false);
        pack_key(&pk, "fgrad_signed"); pack_tensor(&pk, P, TB * T * lnn, 0, false);
        pack_key(&pk, "head_importance"); pack_tensor(&pk, imp, TB * T * lh, 0, false);
    }
    pack_key(&pk, "head_confidence"); pack_tensor(&pk, conf, TB * lh, 0, false);
    if (m->rel) {
        pack_key(&pk, "rel"); pack_tensor(&pk, P, TB * T * lnn, 0, false);
    }
    if (m->target) {
        pack_key(&pk, "target"); msgpack_pack_array(&pk, TB);
        msgpack_pack_uint8(&pk, 0); msgpack_pack_uint8(&pk, 1);
    }
    free(M); free(P); free(imp); free(conf);
    *len = sb.size;
    return (uint8_t *)sb.data;
}

static xr_reason_t
decode_targets(const tmsg_t *m, wire_decoder_t *dec, wire_ingest_t *out, uint8_t **body)
{
    size_t len;
    *body = build_targets(m, &len);
    wire_limits_t lim;
    wire_limits_default(&lim);
    wire_decoder_init(dec, &lim);
    return wire_decode_ingest(dec, "attn/m1", 7, *body, len, out);
}

Test(fused_wire, targets_carry_gradient_blocks_and_rel_has_no_fused_form)
{
    wire_decoder_t dec;
    wire_ingest_t in;
    uint8_t *body;
    /* Valid: T = 3 blocks per trade, views where the layout says. */
    xr_reason_t r = decode_targets(&(tmsg_t){.T = 3, .tsize = 3, .imp_bad = 0.5f}, &dec, &in, &body);
    cr_assert_eq(r, XR_OK, "%s", wire_detail(&dec));
    cr_assert(in.fused);
    cr_assert_eq(in.ntargets, 3);
    cr_assert_eq(in.targets[2], 7);
    cr_assert_eq(in.trade_bytes, (size_t)TL * TN * TN * 4);
    cr_assert_eq(in.trade_head_bytes, (size_t)TL * TH * 4);
    cr_assert_not_null(in.fgrad_signed);
    cr_assert_null(in.rel);
    cr_assert(wire_fused_trade_ok(&in, 0, 1e-4f, NULL));
    cr_assert(wire_fused_trade_ok(&in, 1, 1e-4f, NULL));
    free(body);
    wire_decoder_destroy(&dec);
    /* The importance of the last target of trade 1 is checked, and named
       by its layer and head. */
    r = decode_targets(&(tmsg_t){.T = 3, .tsize = 3, .imp_bad = -1.0f}, &dec, &in, &body);
    cr_assert_eq(r, XR_OK, "%s", wire_detail(&dec));
    wire_attn_bad_t bad;
    cr_assert(wire_fused_trade_ok(&in, 0, 1e-4f, NULL));
    cr_assert_not(wire_fused_trade_ok(&in, 1, 1e-4f, &bad));
    cr_assert_eq(bad.l, 1);
    cr_assert_eq(bad.h, 2);
    cr_assert_eq(bad.i, UINT32_MAX);
    free(body);
    wire_decoder_destroy(&dec);
    struct {
        tmsg_t m;
        xr_reason_t want;
        const char *detail;
    } bad_cases[] = {
        {{.T = 3, .tsize = 1, .imp_bad = 0.5f}, XR_SIZE, "B*T*L*n*n"},
        {{.T = 2, .tsize = 2, .rel = true, .imp_bad = 0.5f}, XR_FUSED_FORM, "relevance has no fused form"},
        {{.T = 2, .tsize = 2, .target = true, .imp_bad = 0.5f}, XR_DUPLICATE_KEY, "target and targets"},
        {{.T = 2, .tsize = 2, .no_fgrad = true, .imp_bad = 0.5f}, XR_MISSING_KEY, "without fgrad"},
    };
    for (size_t k = 0; k < sizeof bad_cases / sizeof bad_cases[0]; k++) {
        r = decode_targets(&bad_cases[k].m, &dec, &in, &body);
        cr_assert_eq(r, bad_cases[k].want, "case %zu: got %s (%s)", k, xr_reason_name(r),
                     wire_detail(&dec));
        cr_assert(strstr(wire_detail(&dec), bad_cases[k].detail), "case %zu: '%s'", k,
                  wire_detail(&dec));
        free(body);
        wire_decoder_destroy(&dec);
    }
}
