/*  Tests of core/mpr: every msgpack type and width read back exactly as
    msgpack-c's packer wrote it, every truncation refused, declared lengths
    never believed before the bytes are there, nesting bounded.

    Run under AddressSanitizer (XPL_SANITIZE=ON) the truncation test also
    proves that no prefix is read past its end: the bytes after the prefix
    are poisoned while it is parsed.  */
#include "mpr.h"
#include "wire.h"

#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <msgpack.h>
#include <sanitizer/asan_interface.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A packer into a fresh sbuffer. */
typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} packbuf_t;

static void
pb_init(packbuf_t *b)
{
    msgpack_sbuffer_init(&b->sb);
    msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}

static void
pb_destroy(packbuf_t *b)
{
    msgpack_sbuffer_destroy(&b->sb);
}

/* Read exactly one object from `len` bytes and require that it used them all. */
static mpr_obj_t
read_one(const void *data, size_t len)
{
    mpr_t r;
    mpr_obj_t o;
    mpr_init(&r, data, len);
    cr_assert_eq(mpr_next(&r, &o), MPR_OK, "mpr_next failed on a valid %zu-byte object", len);
    cr_assert_eq(mpr_left(&r), 0, "%zu bytes left after one object", mpr_left(&r));
    return o;
}

/* ---- integers ------------------------------------------------------- */

static const uint64_t s_uvals[] = {0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000,
                                   0xffffffffull, 0x100000000ull, INT64_MAX,
                                   (uint64_t)INT64_MAX + 1, UINT64_MAX};

/* The type byte msgpack's canonical encoding uses for a uint. */
static uint8_t
uint_tag(uint64_t v)
{
    return v <= 0x7f ? (uint8_t)v : v <= 0xff ? 0xcc : v <= 0xffff ? 0xcd : v <= 0xffffffffull ? 0xce : 0xcf;
}

Test(mpr, uint_every_width_auto)
{
    for (size_t k = 0; k < sizeof s_uvals / sizeof *s_uvals; k++) {
        packbuf_t b;
        pb_init(&b);
        msgpack_pack_uint64(&b.pk, s_uvals[k]);
        cr_assert_eq((uint8_t)b.sb.data[0], uint_tag(s_uvals[k]), "packer chose 0x%02x for %llu",
                     (uint8_t)b.sb.data[0], (unsigned long long)s_uvals[k]);
        mpr_obj_t o = read_one(b.sb.data, b.sb.size);
        cr_assert_eq(o.type, MPR_UINT);
        cr_assert_eq(o.v.u, s_uvals[k], "got %llu want %llu", (unsigned long long)o.v.u,
                     (unsigned long long)s_uvals[k]);
        pb_destroy(&b);
    }
}

Test(mpr, uint_forced_widths)
{
    /* The same value in every width that holds it, uint8..uint64. */
    for (size_t k = 0; k < sizeof s_uvals / sizeof *s_uvals; k++) {
        uint64_t v = s_uvals[k];
        for (int w = 0; w < 4; w++) {
            if (w == 0 && v > 0xff) continue;
            if (w == 1 && v > 0xffff) continue;
            if (w == 2 && v > 0xffffffffull) continue;
            packbuf_t b;
            pb_init(&b);
            switch (w) {
            case 0: msgpack_pack_fix_uint8(&b.pk, (uint8_t)v); break;
            case 1: msgpack_pack_fix_uint16(&b.pk, (uint16_t)v); break;
            case 2: msgpack_pack_fix_uint32(&b.pk, (uint32_t)v); break;
            default: msgpack_pack_fix_uint64(&b.pk, v); break;
            }
            cr_assert_eq((uint8_t)b.sb.data[0], 0xcc + w);
            cr_assert_eq(b.sb.size, 1 + ((size_t)1 << w));
            mpr_obj_t o = read_one(b.sb.data, b.sb.size);
            cr_assert_eq(o.type, MPR_UINT);
            cr_assert_eq(o.v.u, v, "width %d: got %llu want %llu", w, (unsigned long long)o.v.u,
                         (unsigned long long)v);
            pb_destroy(&b);
        }
    }
}

static const int64_t s_ivals[] = {-1, -31, -32, -33, -127, -128, -129, -32767, -32768, -32769,
                                   INT32_MIN + 1, INT32_MIN, (int64_t)INT32_MIN - 1, INT64_MIN + 1,
                                   INT64_MIN};

Test(mpr, negative_int_every_width)
{
    for (size_t k = 0; k < sizeof s_ivals / sizeof *s_ivals; k++) {
        int64_t v = s_ivals[k];
        /* Canonical width chosen by the packer (negative fixint included). */
        packbuf_t b;
        pb_init(&b);
        msgpack_pack_int64(&b.pk, v);
        mpr_obj_t o = read_one(b.sb.data, b.sb.size);
        cr_assert_eq(o.type, MPR_INT, "%lld decoded as %s", (long long)v, mpr_type_name(o.type));
        cr_assert_eq(o.v.i, v, "got %lld want %lld", (long long)o.v.i, (long long)v);
        if (v >= -32)
            cr_assert_eq((uint8_t)b.sb.data[0], (uint8_t)v, "negative fixint expected");
        pb_destroy(&b);

        /* Every forced width that holds it: int8..int64. */
        for (int w = 0; w < 4; w++) {
            if (w == 0 && v < INT8_MIN) continue;
            if (w == 1 && v < INT16_MIN) continue;
            if (w == 2 && v < INT32_MIN) continue;
            pb_init(&b);
            switch (w) {
            case 0: msgpack_pack_fix_int8(&b.pk, (int8_t)v); break;
            case 1: msgpack_pack_fix_int16(&b.pk, (int16_t)v); break;
            case 2: msgpack_pack_fix_int32(&b.pk, (int32_t)v); break;
            default: msgpack_pack_fix_int64(&b.pk, v); break;
            }
            cr_assert_eq((uint8_t)b.sb.data[0], 0xd0 + w);
            o = read_one(b.sb.data, b.sb.size);
            cr_assert_eq(o.type, MPR_INT);
            cr_assert_eq(o.v.i, v, "int width %d: got %lld want %lld", w, (long long)o.v.i,
                         (long long)v);
            pb_destroy(&b);
        }
    }
}

Test(mpr, nonnegative_signed_is_uint)
{
    /* proto/README: a non-negative value encoded as a signed type counts
       as unsigned, whatever its width. */
    const int64_t vals[] = {0, 1, 127, INT8_MAX, INT16_MAX, INT32_MAX, INT64_MAX};
    for (size_t k = 0; k < sizeof vals / sizeof *vals; k++) {
        for (int w = 0; w < 4; w++) {
            int64_t v = vals[k];
            if ((w == 0 && v > INT8_MAX) || (w == 1 && v > INT16_MAX) || (w == 2 && v > INT32_MAX))
                continue;
            packbuf_t b;
            pb_init(&b);
            switch (w) {
            case 0: msgpack_pack_fix_int8(&b.pk, (int8_t)v); break;
            case 1: msgpack_pack_fix_int16(&b.pk, (int16_t)v); break;
            case 2: msgpack_pack_fix_int32(&b.pk, (int32_t)v); break;
            default: msgpack_pack_fix_int64(&b.pk, v); break;
            }
            mpr_obj_t o = read_one(b.sb.data, b.sb.size);
            cr_assert_eq(o.type, MPR_UINT, "int%d %lld read as %s", 8 << w, (long long)v,
                         mpr_type_name(o.type));
            cr_assert_eq(o.v.u, (uint64_t)v);
            pb_destroy(&b);
        }
    }
}

/* ---- floats --------------------------------------------------------- */

Test(mpr, float32_widened_exactly)
{
    const float vals[] = {0.0f, -0.0f, 1.0f, -1.5f, 0.1f, FLT_MIN, FLT_MAX, -FLT_MAX,
                          0x1p-149f /* smallest subnormal */, INFINITY, -INFINITY};
    for (size_t k = 0; k < sizeof vals / sizeof *vals; k++) {
        packbuf_t b;
        pb_init(&b);
        msgpack_pack_float(&b.pk, vals[k]);
        cr_assert_eq((uint8_t)b.sb.data[0], 0xca);
        mpr_obj_t o = read_one(b.sb.data, b.sb.size);
        cr_assert_eq(o.type, MPR_FLOAT);
        cr_assert(o.v.f == (double)vals[k] && !signbit(o.v.f) == !signbit(vals[k]),
                  "float32 %a read as %a", (double)vals[k], o.v.f);
        pb_destroy(&b);
    }
    packbuf_t b;
    pb_init(&b);
    msgpack_pack_float(&b.pk, NAN);
    mpr_obj_t o = read_one(b.sb.data, b.sb.size);
    cr_assert(o.type == MPR_FLOAT && isnan(o.v.f));
    pb_destroy(&b);
}

Test(mpr, float64_bits_preserved)
{
    const double vals[] = {0.0, -0.0, 1.0, 0.1, -2.5e-300, DBL_MIN, DBL_MAX, 0x1p-1074,
                           INFINITY, -INFINITY, NAN};
    for (size_t k = 0; k < sizeof vals / sizeof *vals; k++) {
        packbuf_t b;
        pb_init(&b);
        msgpack_pack_double(&b.pk, vals[k]);
        cr_assert_eq((uint8_t)b.sb.data[0], 0xcb);
        mpr_obj_t o = read_one(b.sb.data, b.sb.size);
        cr_assert_eq(o.type, MPR_FLOAT);
        uint64_t want, got;
        memcpy(&want, &vals[k], 8);
        memcpy(&got, &o.v.f, 8);
        cr_assert_eq(got, want, "float64 bits %016llx read as %016llx", (unsigned long long)want,
                     (unsigned long long)got);
        pb_destroy(&b);
    }
}

/* ---- nil, bool ------------------------------------------------------ */

Test(mpr, nil_and_bools)
{
    packbuf_t b;
    pb_init(&b);
    msgpack_pack_nil(&b.pk);
    msgpack_pack_true(&b.pk);
    msgpack_pack_false(&b.pk);
    mpr_t r;
    mpr_obj_t o;
    mpr_init(&r, b.sb.data, b.sb.size);
    cr_assert_eq(mpr_next(&r, &o), MPR_OK);
    cr_assert_eq(o.type, MPR_NIL);
    cr_assert_eq(mpr_next(&r, &o), MPR_OK);
    cr_assert(o.type == MPR_BOOL && o.v.b == true);
    cr_assert_eq(mpr_next(&r, &o), MPR_OK);
    cr_assert(o.type == MPR_BOOL && o.v.b == false);
    cr_assert_eq(mpr_left(&r), 0);
    cr_assert_eq(mpr_next(&r, &o), MPR_ETRUNC, "reading past the end must fail");
    pb_destroy(&b);
}

/* ---- str, bin, ext: views into the buffer --------------------------- */

static uint8_t *
pattern(size_t len, unsigned seed)
{
    uint8_t *p = malloc(len ? len : 1);
    for (size_t k = 0; k < len; k++)
        p[k] = (uint8_t)(k * 131u + seed);
    return p;
}

Test(mpr, str_every_width)
{
    const struct { size_t len; uint8_t tag; size_t hdr; } cases[] = {
        {0, 0xa0, 1}, {1, 0xa1, 1}, {31, 0xbf, 1}, {32, 0xd9, 2}, {255, 0xd9, 2},
        {256, 0xda, 3}, {65535, 0xda, 3}, {65536, 0xdb, 5}, {70001, 0xdb, 5}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        size_t len = cases[k].len;
        uint8_t *src = pattern(len, (unsigned)k);
        packbuf_t b;
        pb_init(&b);
        msgpack_pack_str_with_body(&b.pk, src, len);
        cr_assert_eq((uint8_t)b.sb.data[0], cases[k].tag, "str %zu: tag 0x%02x", len,
                     (uint8_t)b.sb.data[0]);
        mpr_obj_t o = read_one(b.sb.data, b.sb.size);
        cr_assert_eq(o.type, MPR_STR);
        cr_assert_eq(o.v.raw.len, len);
        cr_assert_eq((const void *)o.v.raw.ptr, (const void *)(b.sb.data + cases[k].hdr),
                     "str %zu: view does not point at the payload", len);
        cr_assert(memcmp(o.v.raw.ptr, src, len) == 0);
        free(src);
        pb_destroy(&b);
    }
}

Test(mpr, bin_every_width)
{
    const struct { size_t len; uint8_t tag; size_t hdr; } cases[] = {
        {0, 0xc4, 2}, {1, 0xc4, 2}, {255, 0xc4, 2}, {256, 0xc5, 3}, {65535, 0xc5, 3},
        {65536, 0xc6, 5}, {100003, 0xc6, 5}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        size_t len = cases[k].len;
        uint8_t *src = pattern(len, 7u + (unsigned)k);
        packbuf_t b;
        pb_init(&b);
        msgpack_pack_bin_with_body(&b.pk, src, len);
        cr_assert_eq((uint8_t)b.sb.data[0], cases[k].tag);
        mpr_obj_t o = read_one(b.sb.data, b.sb.size);
        cr_assert_eq(o.type, MPR_BIN);
        cr_assert_eq(o.v.raw.len, len);
        cr_assert_eq((const void *)o.v.raw.ptr, (const void *)(b.sb.data + cases[k].hdr));
        cr_assert(memcmp(o.v.raw.ptr, src, len) == 0);
        free(src);
        pb_destroy(&b);
    }
}

Test(mpr, ext_every_width_and_type)
{
    const struct { size_t len; uint8_t tag; size_t hdr; } cases[] = {
        {1, 0xd4, 2}, {2, 0xd5, 2}, {4, 0xd6, 2}, {8, 0xd7, 2}, {16, 0xd8, 2},
        {0, 0xc7, 3}, {3, 0xc7, 3}, {17, 0xc7, 3}, {255, 0xc7, 3}, {256, 0xc8, 4},
        {65535, 0xc8, 4}, {65536, 0xc9, 6}};
    const int8_t types[] = {0, 1, 5, 127, -1, -128};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
            size_t len = cases[k].len;
            uint8_t *src = pattern(len, (unsigned)(k + t));
            packbuf_t b;
            pb_init(&b);
            msgpack_pack_ext_with_body(&b.pk, src, len, types[t]);
            cr_assert_eq((uint8_t)b.sb.data[0], cases[k].tag, "ext %zu: tag 0x%02x", len,
                         (uint8_t)b.sb.data[0]);
            mpr_obj_t o = read_one(b.sb.data, b.sb.size);
            cr_assert_eq(o.type, MPR_EXT);
            cr_assert_eq(o.v.raw.ext_type, types[t], "ext %zu: type %d read as %d", len,
                         types[t], o.v.raw.ext_type);
            cr_assert_eq(o.v.raw.len, len);
            cr_assert_eq((const void *)o.v.raw.ptr, (const void *)(b.sb.data + cases[k].hdr));
            cr_assert(memcmp(o.v.raw.ptr, src, len) == 0);
            free(src);
            pb_destroy(&b);
        }
    }
}

/* ---- arrays and maps ------------------------------------------------ */

Test(mpr, array_every_width)
{
    const struct { uint32_t n; uint8_t tag; } cases[] = {
        {0, 0x90}, {1, 0x91}, {15, 0x9f}, {16, 0xdc}, {65535, 0xdc}, {65536, 0xdd}, {70000, 0xdd}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        uint32_t n = cases[k].n;
        packbuf_t b;
        pb_init(&b);
        msgpack_pack_array(&b.pk, n);
        for (uint32_t i = 0; i < n; i++)
            msgpack_pack_uint32(&b.pk, i % 200);
        cr_assert_eq((uint8_t)b.sb.data[0], cases[k].tag);
        mpr_t r;
        mpr_obj_t o;
        mpr_init(&r, b.sb.data, b.sb.size);
        cr_assert_eq(mpr_next(&r, &o), MPR_OK);
        cr_assert_eq(o.type, MPR_ARRAY);
        cr_assert_eq(o.v.count, n);
        /* The header only: the items follow, in order. */
        for (uint32_t i = 0; i < n; i++) {
            mpr_obj_t it;
            cr_assert_eq(mpr_next(&r, &it), MPR_OK);
            cr_assert(it.type == MPR_UINT && it.v.u == i % 200, "item %u", i);
        }
        cr_assert_eq(mpr_left(&r), 0);
        /* And mpr_skip consumes the whole array. */
        mpr_init(&r, b.sb.data, b.sb.size);
        cr_assert_eq(mpr_skip(&r, 1), MPR_OK);
        cr_assert_eq(mpr_left(&r), 0);
        pb_destroy(&b);
    }
}

Test(mpr, map_every_width)
{
    const struct { uint32_t n; uint8_t tag; } cases[] = {
        {0, 0x80}, {1, 0x81}, {15, 0x8f}, {16, 0xde}, {65535, 0xde}, {65536, 0xdf}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        uint32_t n = cases[k].n;
        packbuf_t b;
        pb_init(&b);
        msgpack_pack_map(&b.pk, n);
        for (uint32_t i = 0; i < n; i++) {
            msgpack_pack_str_with_body(&b.pk, "k", 1);
            msgpack_pack_int32(&b.pk, -(int32_t)(i % 30) - 1);
        }
        cr_assert_eq((uint8_t)b.sb.data[0], cases[k].tag);
        mpr_t r;
        mpr_obj_t o;
        mpr_init(&r, b.sb.data, b.sb.size);
        cr_assert_eq(mpr_next(&r, &o), MPR_OK);
        cr_assert(o.type == MPR_MAP && o.v.count == n, "map of %u read as %s of %u", n,
                  mpr_type_name(o.type), o.v.count);
        for (uint32_t i = 0; i < n; i++) {
            mpr_obj_t key, val;
            cr_assert_eq(mpr_next(&r, &key), MPR_OK);
            cr_assert(mpr_str_eq(&key, "k"));
            cr_assert_eq(mpr_next(&r, &val), MPR_OK);
            cr_assert(val.type == MPR_INT && val.v.i == -(int64_t)(i % 30) - 1);
        }
        cr_assert_eq(mpr_left(&r), 0);
        mpr_init(&r, b.sb.data, b.sb.size);
        cr_assert_eq(mpr_skip(&r, 1), MPR_OK);
        cr_assert_eq(mpr_left(&r), 0);
        pb_destroy(&b);
    }
}

/* ---- truncation ----------------------------------------------------- */

/* A byte builder for non-canonical (but valid) encodings: msgpack-c
   always picks the shortest width, this writes the wide ones small. */
typedef struct {
    uint8_t b[4096];
    size_t n;
} bytes_t;

static void
put(bytes_t *w, const void *p, size_t n)
{
    cr_assert(w->n + n <= sizeof w->b);
    memcpy(w->b + w->n, p, n);
    w->n += n;
}

static void
put1(bytes_t *w, uint8_t c)
{
    put(w, &c, 1);
}

static void
put_be(bytes_t *w, uint64_t v, int bytes)
{
    for (int k = bytes - 1; k >= 0; k--)
        put1(w, (uint8_t)(v >> (8 * k)));
}

/* One map holding every type in every width, wide headers included. */
static void
every_type_message(bytes_t *w)
{
    w->n = 0;
    put1(w, 0xde);                          /* map16 */
    put_be(w, 25, 2);
#define KEY(s) do { put1(w, (uint8_t)(0xa0 | (sizeof(s) - 1))); put(w, s, sizeof(s) - 1); } while (0)
    KEY("fixint"); put1(w, 0x05);
    KEY("negfix"); put1(w, 0xe0);
    KEY("u8"); put1(w, 0xcc); put_be(w, 200, 1);
    KEY("u16"); put1(w, 0xcd); put_be(w, 60000, 2);
    KEY("u32"); put1(w, 0xce); put_be(w, 4000000000u, 4);
    KEY("u64"); put1(w, 0xcf); put_be(w, UINT64_MAX - 3, 8);
    KEY("i8"); put1(w, 0xd0); put_be(w, 0x80, 1);
    KEY("i16"); put1(w, 0xd1); put_be(w, 0x8001, 2);
    KEY("i32"); put1(w, 0xd2); put_be(w, 0x80000001u, 4);
    KEY("i64"); put1(w, 0xd3); put_be(w, 0x8000000000000001ull, 8);
    KEY("f32"); put1(w, 0xca); put_be(w, 0x3fc00000u, 4);
    KEY("f64"); put1(w, 0xcb); put_be(w, 0x3ff8000000000000ull, 8);
    KEY("s8"); put1(w, 0xd9); put_be(w, 3, 1); put(w, "abc", 3);
    KEY("s16"); put1(w, 0xda); put_be(w, 3, 2); put(w, "def", 3);
    KEY("s32"); put1(w, 0xdb); put_be(w, 3, 4); put(w, "ghi", 3);
    KEY("b8"); put1(w, 0xc4); put_be(w, 2, 1); put(w, "\x01\x02", 2);
    KEY("b16"); put1(w, 0xc5); put_be(w, 2, 2); put(w, "\x03\x04", 2);
    KEY("b32"); put1(w, 0xc6); put_be(w, 2, 4); put(w, "\x05\x06", 2);
    KEY("fx"); put1(w, 0xd8); put1(w, 0x7f); put(w, "0123456789abcdef", 16);
    KEY("e8"); put1(w, 0xc7); put_be(w, 1, 1); put1(w, 0x01); put1(w, 0xaa);
    KEY("e16"); put1(w, 0xc8); put_be(w, 1, 2); put1(w, 0x02); put1(w, 0xbb);
    KEY("e32"); put1(w, 0xc9); put_be(w, 1, 4); put1(w, 0xff); put1(w, 0xcc);
    KEY("arrs");                            /* fixarray, array16, array32 */
    put1(w, 0x93);
    put1(w, 0x92); put1(w, 0xc0); put1(w, 0xc3);
    put1(w, 0xdc); put_be(w, 2, 2); put1(w, 0xc2); put1(w, 0x01);
    put1(w, 0xdd); put_be(w, 1, 4); put1(w, 0x90);
    KEY("maps");                            /* fixmap, map16, map32 */
    put1(w, 0x83);
    KEY("a"); put1(w, 0x81); KEY("x"); put1(w, 0x01);
    KEY("b"); put1(w, 0xde); put_be(w, 1, 2); KEY("y"); put1(w, 0x80);
    KEY("c"); put1(w, 0xdf); put_be(w, 1, 4); KEY("z"); put1(w, 0xc0);
    KEY("tail"); put1(w, 0xa5); put(w, "hello", 5);
#undef KEY
}

/* Walk every object with mpr_next, checking that every view lies inside
   [base, base+len). Returns the first error, or MPR_OK. */
static mpr_err_t
walk(const uint8_t *base, size_t len)
{
    mpr_t r;
    mpr_init(&r, base, len);
    uint64_t pending = 1;
    while (pending) {
        pending--;
        mpr_obj_t o;
        mpr_err_t e = mpr_next(&r, &o);
        if (e)
            return e;
        cr_assert(r.p >= base && r.p <= base + len, "reader moved outside its buffer");
        if (o.type == MPR_STR || o.type == MPR_BIN || o.type == MPR_EXT)
            cr_assert(o.v.raw.ptr >= base && o.v.raw.ptr + o.v.raw.len <= base + len,
                      "a view points outside the buffer");
        if (o.type == MPR_ARRAY)
            pending += o.v.count;
        if (o.type == MPR_MAP)
            pending += 2ull * o.v.count;
    }
    return MPR_OK;
}

Test(mpr, every_type_message_reads_whole)
{
    bytes_t w;
    every_type_message(&w);
    cr_assert_eq(walk(w.b, w.n), MPR_OK);
    mpr_t r;
    mpr_init(&r, w.b, w.n);
    cr_assert_eq(mpr_skip(&r, 4), MPR_OK);
    cr_assert_eq(mpr_left(&r), 0);

    /* Spot-check the wide non-canonical encodings. */
    mpr_obj_t o;
    mpr_init(&r, w.b, w.n);
    cr_assert_eq(mpr_next(&r, &o), MPR_OK);
    cr_assert_eq(o.v.count, 25);
    bool saw_s32 = false, saw_e32 = false, saw_i8 = false;
    for (uint32_t k = 0; k < 25; k++) {
        mpr_obj_t key, val;
        cr_assert_eq(mpr_next(&r, &key), MPR_OK);
        mpr_t at = r;
        cr_assert_eq(mpr_next(&at, &val), MPR_OK);
        if (mpr_str_eq(&key, "s32")) {
            saw_s32 = true;
            cr_assert(mpr_str_eq(&val, "ghi"));
        } else if (mpr_str_eq(&key, "e32")) {
            saw_e32 = true;
            cr_assert(val.type == MPR_EXT && val.v.raw.ext_type == -1 && val.v.raw.len == 1 &&
                      val.v.raw.ptr[0] == 0xcc);
        } else if (mpr_str_eq(&key, "i8")) {
            saw_i8 = true;
            cr_assert(val.type == MPR_INT && val.v.i == -128);
        } else if (mpr_str_eq(&key, "u64")) {
            cr_assert(val.type == MPR_UINT && val.v.u == UINT64_MAX - 3);
        } else if (mpr_str_eq(&key, "i64")) {
            cr_assert(val.type == MPR_INT && val.v.i == INT64_MIN + 1);
        }
        cr_assert_eq(mpr_skip(&r, 4), MPR_OK);
    }
    cr_assert(saw_s32 && saw_e32 && saw_i8);
}

Test(mpr, truncation_at_every_offset)
{
    bytes_t w;
    every_type_message(&w);
    uint8_t *buf = malloc(w.n);
    memcpy(buf, w.b, w.n);
    for (size_t cut = 0; cut < w.n; cut++) {
        /* Under ASan the bytes past the cut are poisoned: any read of them
           aborts the test. Without ASan, walk() checks every view. */
        ASAN_POISON_MEMORY_REGION(buf + cut, w.n - cut);
        mpr_err_t e1 = walk(buf, cut);
        mpr_t r;
        mpr_init(&r, buf, cut);
        mpr_err_t e2 = mpr_skip(&r, 8);
        const uint8_t *stopped = r.p;
        ASAN_UNPOISON_MEMORY_REGION(buf + cut, w.n - cut);
        cr_assert_eq(e1, MPR_ETRUNC, "prefix of %zu/%zu bytes: walk returned %d", cut, w.n, e1);
        cr_assert_eq(e2, MPR_ETRUNC, "prefix of %zu/%zu bytes: mpr_skip returned %d", cut, w.n, e2);
        cr_assert(stopped <= buf + cut, "mpr_skip moved past the end of a %zu-byte prefix", cut);
    }
    free(buf);
}

Test(mpr, truncated_headers_each_width)
{
    /* Each multi-byte header cut after its type byte and inside its length. */
    const uint8_t tags[] = {0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce,
                            0xcf, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9,
                            0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf};
    for (size_t k = 0; k < sizeof tags / sizeof *tags; k++) {
        /* With its zero bytes the header is complete (zero lengths and
           counts); cut anywhere inside it, it is refused. */
        uint8_t buf[24] = {tags[k]};
        mpr_t r;
        mpr_obj_t o;
        mpr_init(&r, buf, sizeof buf);
        cr_assert_eq(mpr_next(&r, &o), MPR_OK, "tag 0x%02x with zeros", tags[k]);
        size_t hdr = sizeof buf - mpr_left(&r);
        for (size_t len = 1; len < hdr; len++) {
            mpr_init(&r, buf, len);
            cr_assert_eq(mpr_next(&r, &o), MPR_ETRUNC, "tag 0x%02x cut at %zu of %zu", tags[k],
                         len, hdr);
        }
    }
}

/* ---- declared lengths larger than the message ------------------------ */

Test(mpr, huge_declared_lengths_refused)
{
    static const struct { const char *name; uint8_t b[9]; size_t n; } cases[] = {
        {"array32 of 0xff000000", {0xdd, 0xff, 0x00, 0x00, 0x00}, 5},
        {"map32 of 0xffffffff", {0xdf, 0xff, 0xff, 0xff, 0xff}, 5},
        {"bin32 of 0xfffffff0", {0xc6, 0xff, 0xff, 0xff, 0xf0}, 5},
        {"str32 of 0xffffffff", {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'}, 6},
        {"ext32 of 0xffffffff", {0xc9, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00}, 7},
        {"array16 of 0xffff", {0xdc, 0xff, 0xff, 0xc0, 0xc0}, 5},
        {"map16 of 2 in 3 bytes", {0xde, 0x00, 0x02, 0xc0, 0xc0, 0xc0}, 6},
        {"fixarray of 15 in 8 bytes", {0x9f, 0, 0, 0, 0, 0, 0, 0, 0}, 9},
        {"fixmap of 5 in 8 bytes", {0x85, 0, 0, 0, 0, 0, 0, 0, 0}, 9},
        {"bin8 of 9 in 7 bytes", {0xc4, 0x09, 1, 2, 3, 4, 5, 6, 7}, 9},
        {"fixstr of 31 in 8 bytes", {0xbf, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'}, 9},
        {"fixext16 in 8 bytes", {0xd8, 0x01, 1, 2, 3, 4, 5, 6, 7}, 9},
        {"ext8 without its type byte", {0xc7, 0x00}, 2},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        uint8_t *buf = malloc(cases[k].n);    /* exact size: ASan sees any overread */
        memcpy(buf, cases[k].b, cases[k].n);
        mpr_t r;
        mpr_obj_t o;
        mpr_init(&r, buf, cases[k].n);
        cr_assert_eq(mpr_next(&r, &o), MPR_ETRUNC, "%s: accepted", cases[k].name);
        mpr_init(&r, buf, cases[k].n);
        cr_assert_eq(mpr_skip(&r, 8), MPR_ETRUNC, "%s: skipped", cases[k].name);
        free(buf);
    }
}

Test(mpr, container_needs_one_byte_per_item)
{
    /* array of 3 with exactly 3 bytes after the header: the header reads;
       with 2 it is refused. A map of 2 needs 4 bytes. */
    const uint8_t a3[] = {0x93, 1, 2, 3}, m2[] = {0x82, 0xa0, 1, 0xa0, 2};
    mpr_t r;
    mpr_obj_t o;
    mpr_init(&r, a3, sizeof a3);
    cr_assert_eq(mpr_next(&r, &o), MPR_OK);
    cr_assert_eq(o.v.count, 3);
    mpr_init(&r, a3, sizeof a3 - 1);
    cr_assert_eq(mpr_next(&r, &o), MPR_ETRUNC);
    mpr_init(&r, m2, sizeof m2);
    cr_assert_eq(mpr_next(&r, &o), MPR_OK);
    cr_assert_eq(o.v.count, 2);
    mpr_init(&r, m2, 4);
    cr_assert_eq(mpr_next(&r, &o), MPR_ETRUNC, "a map of 2 pairs in 3 bytes");
}

Test(mpr, huge_declared_lengths_reach_the_decoder_as_msgpack)
{
    /* The same headers as an ingest body (and as the value of a key) are
       `msgpack` rejections, and the decoder reserves nothing for them. */
    static const struct { uint8_t b[16]; size_t n; } bodies[] = {
        {{0xdd, 0xff, 0x00, 0x00, 0x00}, 5},
        {{0xdf, 0xff, 0xff, 0xff, 0xff}, 5},
        {{0xc6, 0xff, 0xff, 0xff, 0xf0}, 5},
        /* {"v": 1, "ids": array32 of 0xffffffff} */
        {{0x82, 0xa1, 'v', 0x01, 0xa3, 'i', 'd', 's', 0xdd, 0xff, 0xff, 0xff, 0xff}, 13},
        /* {"v": 1, "tokens": array16 of 0xffff} */
        {{0x82, 0xa1, 'v', 0x01, 0xa6, 't', 'o', 'k', 'e', 'n', 's', 0xdc, 0xff, 0xff}, 14},
    };
    wire_limits_t lim;
    wire_limits_default(&lim);
    lim.max_batch = UINT32_MAX;
    lim.max_tokens = UINT32_MAX;
    for (size_t k = 0; k < sizeof bodies / sizeof *bodies; k++) {
        wire_decoder_t d;
        wire_decoder_init(&d, &lim);
        wire_ingest_t in;
        uint8_t *buf = malloc(bodies[k].n);
        memcpy(buf, bodies[k].b, bodies[k].n);
        xr_reason_t rc = wire_decode_ingest(&d, "attn/m1", 7, buf, bodies[k].n, &in);
        cr_assert_eq(rc, XR_MSGPACK, "body %zu: %s (%s)", k, xr_reason_name(rc), wire_detail(&d));
        cr_assert_eq(d.cap_batch, 0, "body %zu: ids reserved before the bytes were checked", k);
        cr_assert_eq(d.cap_tokens, 0, "body %zu: tokens reserved before the bytes were checked", k);
        free(buf);
        wire_decoder_destroy(&d);
    }
}

/* ---- 0xc1 ----------------------------------------------------------- */

Test(mpr, never_used_byte_c1)
{
    const uint8_t top[] = {0xc1};
    const uint8_t in_array[] = {0x93, 0x01, 0xc1, 0x02};
    const uint8_t as_key[] = {0x81, 0xc1, 0x01};
    const uint8_t deep[] = {0x91, 0x91, 0x81, 0xa1, 'k', 0xc1};
    mpr_t r;
    mpr_obj_t o;
    mpr_init(&r, top, sizeof top);
    cr_assert_eq(mpr_next(&r, &o), MPR_EINVAL);
    mpr_init(&r, top, sizeof top);
    cr_assert_eq(mpr_skip(&r, 8), MPR_EINVAL);
    mpr_init(&r, in_array, sizeof in_array);
    cr_assert_eq(mpr_skip(&r, 8), MPR_EINVAL);
    mpr_init(&r, as_key, sizeof as_key);
    cr_assert_eq(mpr_skip(&r, 8), MPR_EINVAL);
    mpr_init(&r, deep, sizeof deep);
    cr_assert_eq(mpr_skip(&r, 8), MPR_EINVAL);
    /* Every other byte value starts a valid object (given enough zeros). */
    for (int c = 0; c < 256; c++) {
        if (c == 0xc1)
            continue;
        uint8_t buf[64] = {(uint8_t)c};
        mpr_init(&r, buf, sizeof buf);
        cr_assert_eq(mpr_next(&r, &o), MPR_OK, "byte 0x%02x refused", c);
    }
}

/* ---- mpr_skip ------------------------------------------------------- */

/* `depth` nested one-item arrays around a scalar (or an empty array). */
static size_t
nested(uint8_t *buf, int depth, bool empty_inside, bool maps)
{
    size_t n = 0;
    for (int k = 0; k < depth; k++) {
        if (maps) {
            buf[n++] = 0x81;
            buf[n++] = 0xa0;    /* key "" */
        } else {
            buf[n++] = 0x91;
        }
    }
    buf[n++] = empty_inside ? 0x90 : 0x07;
    return n;
}

Test(mpr, skip_depth_limit)
{
    uint8_t buf[256];
    for (int maps = 0; maps < 2; maps++) {
        for (int lim = 0; lim <= 40; lim++) {
            mpr_t r;
            size_t n = nested(buf, lim, false, maps);
            mpr_init(&r, buf, n);
            cr_assert_eq(mpr_skip(&r, lim), MPR_OK, "%d nested %s with max_depth %d", lim,
                         maps ? "maps" : "arrays", lim);
            cr_assert_eq(mpr_left(&r), 0);
            n = nested(buf, lim + 1, false, maps);
            mpr_init(&r, buf, n);
            cr_assert_eq(mpr_skip(&r, lim), MPR_EDEPTH, "%d nested %s with max_depth %d", lim + 1,
                         maps ? "maps" : "arrays", lim);
        }
    }
}

Test(mpr, skip_depth_clamped_to_63)
{
    uint8_t buf[256];
    mpr_t r;
    size_t n = nested(buf, 63, false, false);
    mpr_init(&r, buf, n);
    cr_assert_eq(mpr_skip(&r, 1000), MPR_OK);
    n = nested(buf, 64, false, false);
    mpr_init(&r, buf, n);
    cr_assert_eq(mpr_skip(&r, 1000), MPR_EDEPTH, "max_depth above 63 must be clamped to 63");
    n = nested(buf, 200, false, false);
    mpr_init(&r, buf, n);
    cr_assert_eq(mpr_skip(&r, INT32_MAX), MPR_EDEPTH);
}

Test(mpr, skip_depth_counts_empty_containers)
{
    /* mpr.h: "More than max_depth nested arrays/maps is refused with
       MPR_EDEPTH; 0 admits scalars only". An empty array is an array: at
       max_depth 0 it is one level too deep, and 33 levels ending in an
       empty array exceed the decoder's 32 (proto: "nesting deeper than
       32" is `msgpack`). */
    uint8_t buf[256];
    mpr_t r;
    size_t n = nested(buf, 0, true, false);     /* [] */
    mpr_init(&r, buf, n);
    cr_assert_eq(mpr_skip(&r, 0), MPR_EDEPTH, "[] accepted with max_depth 0 (scalars only)");
    n = nested(buf, 32, true, false);           /* 33 levels, innermost empty */
    mpr_init(&r, buf, n);
    cr_assert_eq(mpr_skip(&r, 32), MPR_EDEPTH, "33 levels accepted with max_depth 32");
}

Test(mpr, skip_leaves_reader_after_the_object)
{
    /* [ {"a": [1, 2]}, "xy" ] then 0x2a: skip the first, read the next. */
    const uint8_t b[] = {0x92, 0x81, 0xa1, 'a', 0x92, 0x01, 0x02, 0xa2, 'x', 'y', 0x2a};
    mpr_t r;
    mpr_obj_t o;
    mpr_init(&r, b, sizeof b);
    cr_assert_eq(mpr_skip(&r, 8), MPR_OK);
    cr_assert_eq(mpr_left(&r), 1);
    cr_assert_eq(mpr_next(&r, &o), MPR_OK);
    cr_assert(o.type == MPR_UINT && o.v.u == 42);
    /* A map's pairs count twice: {"a": 1, "b": 2} is 5 objects. */
    const uint8_t m[] = {0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0x02, 0xc3};
    mpr_init(&r, m, sizeof m);
    cr_assert_eq(mpr_skip(&r, 1), MPR_OK);
    cr_assert_eq(mpr_next(&r, &o), MPR_OK);
    cr_assert(o.type == MPR_BOOL && o.v.b);
    /* Scalars skip at depth 0. */
    mpr_init(&r, m + 1, 2);
    cr_assert_eq(mpr_skip(&r, 0), MPR_OK);
    cr_assert_eq(mpr_left(&r), 0);
}

Test(mpr, skip_wide_flat_array)
{
    /* A wide array is not deep: 100000 items at depth 1. */
    size_t n = 100000;
    uint8_t *b = malloc(5 + n);
    b[0] = 0xdd;
    b[1] = 0; b[2] = 0x01; b[3] = 0x86; b[4] = 0xa0;   /* 100000 */
    memset(b + 5, 0xc0, n);
    mpr_t r;
    mpr_init(&r, b, 5 + n);
    cr_assert_eq(mpr_skip(&r, 1), MPR_OK);
    cr_assert_eq(mpr_left(&r), 0);
    mpr_init(&r, b, 5 + n - 1);
    cr_assert_eq(mpr_skip(&r, 1), MPR_ETRUNC);
    free(b);
}

/* ---- helpers -------------------------------------------------------- */

Test(mpr, str_eq_and_type_names)
{
    const uint8_t s[] = {0xa3, 'a', 'b', 'c'}, bin[] = {0xc4, 0x03, 'a', 'b', 'c'};
    mpr_obj_t o = read_one(s, sizeof s);
    cr_assert(mpr_str_eq(&o, "abc"));
    cr_assert(!mpr_str_eq(&o, "ab"));
    cr_assert(!mpr_str_eq(&o, "abcd"));
    cr_assert(!mpr_str_eq(&o, "abd"));
    o = read_one(bin, sizeof bin);
    cr_assert(!mpr_str_eq(&o, "abc"), "a bin is not a str");
    const char *names[] = {"nil", "bool", "uint", "int", "float", "str", "bin", "array", "map", "ext"};
    for (int t = 0; t <= MPR_EXT; t++)
        cr_assert_str_eq(mpr_type_name((mpr_type_t)t), names[t]);
    cr_assert_str_eq(mpr_type_name((mpr_type_t)99), "?");
}
