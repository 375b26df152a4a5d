/*  mpr: bounds-checked msgpack reader. See mpr.h for the rules.  */
#include "mpr.h"

#include <string.h>

void
mpr_init(mpr_t *r, const void *data, size_t len)
{
    r->p = (const uint8_t *)data;
    r->end = r->p + len;
}

static inline uint16_t s_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t
s_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t s_be64(const uint8_t *p) { return (uint64_t)s_be32(p) << 32 | s_be32(p + 4); }

/* Read an n-byte big-endian length/value that follows the type byte. */
static inline mpr_err_t
s_take(mpr_t *r, size_t n, uint64_t *out)
{
    if (mpr_left(r) < n)
        return MPR_ETRUNC;
    switch (n) {
    case 1: *out = r->p[0]; break;
    case 2: *out = s_be16(r->p); break;
    case 4: *out = s_be32(r->p); break;
    default: *out = s_be64(r->p); break;
    }
    r->p += n;
    return MPR_OK;
}

/* A payload of `len` bytes must be present in full. */
static inline mpr_err_t
s_raw(mpr_t *r, mpr_obj_t *o, mpr_type_t t, uint64_t len)
{
    if (len > mpr_left(r))
        return MPR_ETRUNC;
    o->type = t;
    o->v.raw.ptr = r->p;
    o->v.raw.len = (uint32_t)len;
    r->p += len;
    return MPR_OK;
}

/* An array of `count` items needs at least one byte per item, a map two. */
static inline mpr_err_t
s_container(mpr_t *r, mpr_obj_t *o, mpr_type_t t, uint64_t count)
{
    uint64_t min_bytes = t == MPR_MAP ? count * 2 : count;
    if (min_bytes > mpr_left(r))
        return MPR_ETRUNC;
    o->type = t;
    o->v.count = (uint32_t)count;
    return MPR_OK;
}

mpr_err_t
mpr_next(mpr_t *r, mpr_obj_t *o)
{
    if (r->p >= r->end)
        return MPR_ETRUNC;
    uint8_t c = *r->p++;
    uint64_t x;
    mpr_err_t rc;

    if (c <= 0x7f) { o->type = MPR_UINT; o->v.u = c; return MPR_OK; }
    if (c >= 0xe0) { o->type = MPR_INT; o->v.i = (int8_t)c; return MPR_OK; }
    if ((c & 0xf0) == 0x80) return s_container(r, o, MPR_MAP, c & 0x0f);
    if ((c & 0xf0) == 0x90) return s_container(r, o, MPR_ARRAY, c & 0x0f);
    if ((c & 0xe0) == 0xa0) return s_raw(r, o, MPR_STR, c & 0x1f);

    switch (c) {
    case 0xc0: o->type = MPR_NIL; return MPR_OK;
    case 0xc2: o->type = MPR_BOOL; o->v.b = false; return MPR_OK;
    case 0xc3: o->type = MPR_BOOL; o->v.b = true; return MPR_OK;
    case 0xc4: case 0xc5: case 0xc6:
        if ((rc = s_take(r, (size_t)1 << (c - 0xc4), &x)))
            return rc;
        return s_raw(r, o, MPR_BIN, x);
    case 0xc7: case 0xc8: case 0xc9: {
        if ((rc = s_take(r, (size_t)1 << (c - 0xc7), &x)))
            return rc;
        if (mpr_left(r) < 1)
            return MPR_ETRUNC;
        int8_t et = (int8_t)*r->p++;
        if ((rc = s_raw(r, o, MPR_EXT, x)))
            return rc;
        o->v.raw.ext_type = et;
        return MPR_OK;
    }
    case 0xca: {
        if ((rc = s_take(r, 4, &x)))
            return rc;
        uint32_t b = (uint32_t)x;
        float f;
        memcpy(&f, &b, 4);
        o->type = MPR_FLOAT;
        o->v.f = f;
        return MPR_OK;
    }
    case 0xcb: {
        if ((rc = s_take(r, 8, &x)))
            return rc;
        o->type = MPR_FLOAT;
        memcpy(&o->v.f, &x, 8);
        return MPR_OK;
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
        if ((rc = s_take(r, (size_t)1 << (c - 0xcc), &x)))
            return rc;
        o->type = MPR_UINT;
        o->v.u = x;
        return MPR_OK;
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        size_t n = (size_t)1 << (c - 0xd0);
        if ((rc = s_take(r, n, &x)))
            return rc;
        int64_t i;
        switch (n) {
        case 1: i = (int8_t)x; break;
        case 2: i = (int16_t)x; break;
        case 4: i = (int32_t)x; break;
        default: i = (int64_t)x; break;
        }
        /* Canonicalise: a non-negative value is a UINT whatever its width. */
        if (i >= 0) { o->type = MPR_UINT; o->v.u = (uint64_t)i; }
        else { o->type = MPR_INT; o->v.i = i; }
        return MPR_OK;
    }
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: {
        if (mpr_left(r) < 1)
            return MPR_ETRUNC;
        int8_t et = (int8_t)*r->p++;
        if ((rc = s_raw(r, o, MPR_EXT, (uint64_t)1 << (c - 0xd4))))
            return rc;
        o->v.raw.ext_type = et;
        return MPR_OK;
    }
    case 0xd9: case 0xda: case 0xdb:
        if ((rc = s_take(r, (size_t)1 << (c - 0xd9), &x)))
            return rc;
        return s_raw(r, o, MPR_STR, x);
    case 0xdc: case 0xdd:
        if ((rc = s_take(r, c == 0xdc ? 2 : 4, &x)))
            return rc;
        return s_container(r, o, MPR_ARRAY, x);
    case 0xde: case 0xdf:
        if ((rc = s_take(r, c == 0xde ? 2 : 4, &x)))
            return rc;
        return s_container(r, o, MPR_MAP, x);
    default:
        return MPR_EINVAL;   /* 0xc1 */
    }
}

mpr_err_t
mpr_skip(mpr_t *r, int max_depth)
{
    /* Items still to skip per open container level. Depth is bounded by
       the caller; counts are bounded by the bytes left (checked in
       mpr_next), so a 64-bit counter cannot overflow. */
    uint64_t pending[64];
    if (max_depth > 63)
        max_depth = 63;
    int depth = 0;
    pending[0] = 1;
    for (;;) {
        while (pending[depth] == 0) {
            if (depth == 0)
                return MPR_OK;
            depth--;
        }
        pending[depth]--;
        mpr_obj_t o;
        mpr_err_t rc = mpr_next(r, &o);
        if (rc)
            return rc;
        if (o.type == MPR_ARRAY || o.type == MPR_MAP) {
            /* An empty container is a level too: depth counts containers. */
            if (depth + 1 > max_depth)
                return MPR_EDEPTH;
            uint64_t items = o.type == MPR_MAP ? 2ull * o.v.count : o.v.count;
            if (items)
                pending[++depth] = items;
        }
    }
}

const char *
mpr_type_name(mpr_type_t t)
{
    static const char *names[] = {"nil", "bool", "uint", "int", "float",
                                  "str", "bin", "array", "map", "ext"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

bool
mpr_str_eq(const mpr_obj_t *o, const char *s)
{
    /* One pass, no strlen: decoders compare every key of a message with
       a table of names, and most comparisons fail at the first byte. */
    if (o->type != MPR_STR)
        return false;
    const uint8_t *p = o->v.raw.ptr;
    uint32_t n = o->v.raw.len;
    for (uint32_t i = 0; i < n; i++)
        if (s[i] == '\0' || (uint8_t)s[i] != p[i])
            return false;
    return s[n] == '\0';
}
