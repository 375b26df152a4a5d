/*  snap: writing and strictly reading snapshot records. See snap.h.  */
#include "snap.h"

#include <string.h>

void
snap_put_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void
snap_put_doubles(msgpack_packer *pk, const double *x, uint32_t n)
{
    msgpack_pack_array(pk, n);
    for (uint32_t k = 0; k < n; k++)
        msgpack_pack_double(pk, x[k]);
}

void
snap_rd_init(snap_rd_t *d, const void *data, size_t len)
{
    mpr_init(&d->r, data, len);
    d->why = NULL;
}

int
snap_fail(snap_rd_t *d, const char *what)
{
    if (!d->why)
        d->why = what;
    return -1;
}

static int
s_obj(snap_rd_t *d, mpr_obj_t *o, mpr_type_t want, const char *what)
{
    if (mpr_next(&d->r, o) || o->type != want)
        return snap_fail(d, what);
    return 0;
}

int
snap_get_array(snap_rd_t *d, uint32_t *count, const char *what)
{
    mpr_obj_t o;
    if (s_obj(d, &o, MPR_ARRAY, what))
        return -1;
    *count = o.v.count;
    return 0;
}

int
snap_get_array_n(snap_rd_t *d, uint32_t n, const char *what)
{
    uint32_t c;
    if (snap_get_array(d, &c, what) || c != n)
        return snap_fail(d, what);
    return 0;
}

int
snap_get_map(snap_rd_t *d, uint32_t *pairs, const char *what)
{
    mpr_obj_t o;
    if (s_obj(d, &o, MPR_MAP, what))
        return -1;
    *pairs = o.v.count;
    return 0;
}

int
snap_get_u64(snap_rd_t *d, uint64_t *v, const char *what)
{
    mpr_obj_t o;
    if (s_obj(d, &o, MPR_UINT, what))
        return -1;
    *v = o.v.u;
    return 0;
}

int
snap_get_u32(snap_rd_t *d, uint32_t *v, const char *what)
{
    uint64_t u;
    if (snap_get_u64(d, &u, what) || u > UINT32_MAX)
        return snap_fail(d, what);
    *v = (uint32_t)u;
    return 0;
}

int
snap_get_i64(snap_rd_t *d, int64_t *v, const char *what)
{
    mpr_obj_t o;
    if (mpr_next(&d->r, &o))
        return snap_fail(d, what);
    if (o.type == MPR_INT)
        *v = o.v.i;
    else if (o.type == MPR_UINT && o.v.u <= INT64_MAX)
        *v = (int64_t)o.v.u;
    else
        return snap_fail(d, what);
    return 0;
}

int
snap_get_bool(snap_rd_t *d, bool *v, const char *what)
{
    mpr_obj_t o;
    if (s_obj(d, &o, MPR_BOOL, what))
        return -1;
    *v = o.v.b;
    return 0;
}

int
snap_get_f64(snap_rd_t *d, double *v, const char *what)
{
    mpr_obj_t o;
    if (s_obj(d, &o, MPR_FLOAT, what))
        return -1;
    *v = o.v.f;
    return 0;
}

int
snap_get_str(snap_rd_t *d, const uint8_t **ptr, uint32_t *len, const char *what)
{
    mpr_obj_t o;
    if (s_obj(d, &o, MPR_STR, what))
        return -1;
    *ptr = o.v.raw.ptr;
    *len = o.v.raw.len;
    return 0;
}

bool
snap_get_nil(snap_rd_t *d)
{
    mpr_t save = d->r;
    mpr_obj_t o;
    if (mpr_next(&d->r, &o) == MPR_OK && o.type == MPR_NIL)
        return true;
    d->r = save;
    return false;
}

int
snap_get_doubles(snap_rd_t *d, double *v, uint32_t n, const char *what)
{
    if (snap_get_array_n(d, n, what))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        double x;
        if (snap_get_f64(d, &x, what))
            return -1;
        if (v)
            v[k] = x;
    }
    return 0;
}

int
snap_skip(snap_rd_t *d, const char *what)
{
    return mpr_skip(&d->r, 16) == MPR_OK ? 0 : snap_fail(d, what);
}

int
snap_get_key(snap_rd_t *d, mpr_obj_t *key, const char *what)
{
    return s_obj(d, key, MPR_STR, what);
}

int
snap_field(snap_rd_t *d, unsigned *seen, unsigned bit, const char *what)
{
    if (*seen & bit)
        return snap_fail(d, what);
    *seen |= bit;
    return 0;
}

int
snap_fields_all(snap_rd_t *d, unsigned seen, unsigned all, const char *what)
{
    return (seen & all) == all ? 0 : snap_fail(d, what);
}
