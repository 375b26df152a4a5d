/*  agg: Welford aggregates, Chan's merge, decayed means. See agg.h.  */
#include "agg.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

int
agg_init(agg_t *a, uint32_t nfeat, double half_life)
{
    memset(a, 0, sizeof *a);
    if (!isfinite(half_life) || half_life < 0)
        return -1;
    size_t arrays = half_life > 0 ? 3 : 2;
    /* One block for all arrays: one allocation, one free. */
    double *block = NULL;
    if (nfeat > 0) {
        block = calloc(arrays * nfeat, sizeof *block);
        if (!block)
            return -1;
    }
    a->nfeat = nfeat;
    a->half_life = half_life;
    /* expm1 keeps alpha accurate for long half-lives, where 1 - 2^(-1/h)
       would cancel. */
    a->alpha = half_life > 0 ? -expm1(-M_LN2 / half_life) : 0;
    a->mean = block;
    a->m2 = block ? block + nfeat : NULL;
    a->decayed = block && half_life > 0 ? block + 2 * (size_t)nfeat : NULL;
    return 0;
}

void
agg_destroy(agg_t *a)
{
    free(a->mean);
    memset(a, 0, sizeof *a);
}

void
agg_reset(agg_t *a)
{
    a->count = 0;
    if (a->nfeat == 0)
        return;
    memset(a->mean, 0, a->nfeat * sizeof *a->mean);
    memset(a->m2, 0, a->nfeat * sizeof *a->m2);
    if (a->decayed)
        memset(a->decayed, 0, a->nfeat * sizeof *a->decayed);
}

static bool
s_finitef(const float *x, uint32_t n)
{
    for (uint32_t j = 0; j < n; j++)
        if (!isfinite(x[j]))
            return false;
    return true;
}

/* Welford's update, and the decayed mean, for an already checked x. */
static void
s_update(agg_t *a, const float *x)
{
    a->count++;
    double inv = 1.0 / (double)a->count;
    for (uint32_t j = 0; j < a->nfeat; j++) {
        double v = x[j], delta = v - a->mean[j];
        a->mean[j] += delta * inv;
        a->m2[j] += delta * (v - a->mean[j]);
    }
    if (!a->decayed)
        return;
    if (a->count == 1)
        for (uint32_t j = 0; j < a->nfeat; j++)
            a->decayed[j] = x[j];
    else
        for (uint32_t j = 0; j < a->nfeat; j++)
            a->decayed[j] += a->alpha * ((double)x[j] - a->decayed[j]);
}

int
agg_update(agg_t *a, const float *x)
{
    if (!s_finitef(x, a->nfeat))
        return -1;
    s_update(a, x);
    return 0;
}

int
agg_merge(agg_t *dst, const agg_t *src)
{
    if (dst->nfeat != src->nfeat || dst->half_life != src->half_life)
        return -1;
    if (src->count == 0)
        return 0;
    if (dst->count == 0) {
        dst->count = src->count;
        if (dst->nfeat == 0)
            return 0;
        memcpy(dst->mean, src->mean, dst->nfeat * sizeof *dst->mean);
        memcpy(dst->m2, src->m2, dst->nfeat * sizeof *dst->m2);
        if (dst->decayed)
            memcpy(dst->decayed, src->decayed, dst->nfeat * sizeof *dst->decayed);
        return 0;
    }
    double na = (double)dst->count, nb = (double)src->count, n = na + nb;
    double wb = nb / n, wab = na * nb / n;
    for (uint32_t j = 0; j < dst->nfeat; j++) {
        double delta = src->mean[j] - dst->mean[j];
        dst->mean[j] += delta * wb;
        dst->m2[j] += src->m2[j] + delta * delta * wab;
    }
    dst->count += src->count;
    return 0;
}

void
agg_std(const agg_t *a, double *out)
{
    for (uint32_t j = 0; j < a->nfeat; j++)
        out[j] = a->count >= 2 ? sqrt(a->m2[j] / (double)(a->count - 1)) : 0.0;
}

int
agg_heads_init(agg_heads_t *s, uint32_t L, uint32_t H)
{
    memset(s, 0, sizeof *s);
    uint64_t cells = (uint64_t)L * H;
    if (cells > UINT32_MAX)
        return -1;
    if (agg_init(&s->importance, (uint32_t)cells, 0) < 0)
        return -1;
    if (agg_init(&s->confidence, (uint32_t)cells, 0) < 0) {
        agg_destroy(&s->importance);
        return -1;
    }
    s->L = L;
    s->H = H;
    return 0;
}

void
agg_heads_destroy(agg_heads_t *s)
{
    agg_destroy(&s->importance);
    agg_destroy(&s->confidence);
    s->L = s->H = 0;
}

int
agg_heads_update(agg_heads_t *s, const float *importance, const float *confidence)
{
    /* Check both before touching either, so a trade counts in both or none. */
    if (!s_finitef(confidence, s->confidence.nfeat) ||
        (importance && !s_finitef(importance, s->importance.nfeat)))
        return -1;
    if (importance)
        s_update(&s->importance, importance);
    s_update(&s->confidence, confidence);
    return 0;
}

int
agg_heads_merge(agg_heads_t *dst, const agg_heads_t *src)
{
    if (dst->L != src->L || dst->H != src->H)
        return -1;
    /* Same shapes and no decay: neither merge can fail now. */
    agg_merge(&dst->importance, &src->importance);
    agg_merge(&dst->confidence, &src->confidence);
    return 0;
}

/* ---- snapshots ---------------------------------------------------------- */

void
agg_save(msgpack_packer *pk, const agg_t *a)
{
    msgpack_pack_map(pk, 4);
    snap_put_str(pk, "count");
    msgpack_pack_uint64(pk, a->count);
    snap_put_str(pk, "mean");
    snap_put_doubles(pk, a->mean, a->nfeat);
    snap_put_str(pk, "m2");
    snap_put_doubles(pk, a->m2, a->nfeat);
    snap_put_str(pk, "decayed");
    if (a->decayed)
        snap_put_doubles(pk, a->decayed, a->nfeat);
    else
        msgpack_pack_nil(pk);
}

/* decayed: nil, or nfeat values (kept when this aggregate decays). */
static int
s_load_decayed(snap_rd_t *d, agg_t *a, bool *was_nil)
{
    *was_nil = snap_get_nil(d);
    return *was_nil ? 0 : snap_get_doubles(d, a->decayed, a->nfeat, "aggregate decayed means");
}

int
agg_load(snap_rd_t *d, agg_t *a, unsigned ver)
{
    bool nil = true;
    if (ver == SNAP_V1) {
        if (snap_get_array_n(d, 4, "aggregate") || snap_get_u64(d, &a->count, "aggregate count") ||
            snap_get_doubles(d, a->mean, a->nfeat, "aggregate means") ||
            snap_get_doubles(d, a->m2, a->nfeat, "aggregate m2") || s_load_decayed(d, a, &nil))
            return -1;
    } else {
        enum { COUNT = 1, MEAN = 2, M2 = 4, DECAYED = 8 };
        uint32_t n;
        unsigned seen = 0;
        if (snap_get_map(d, &n, "aggregate"))
            return -1;
        for (uint32_t k = 0; k < n; k++) {
            mpr_obj_t key;
            int rc;
            if (snap_get_key(d, &key, "aggregate field"))
                return -1;
            if (mpr_str_eq(&key, "count"))
                rc = snap_field(d, &seen, COUNT, "aggregate count") ||
                     snap_get_u64(d, &a->count, "aggregate count");
            else if (mpr_str_eq(&key, "mean"))
                rc = snap_field(d, &seen, MEAN, "aggregate means") ||
                     snap_get_doubles(d, a->mean, a->nfeat, "aggregate means");
            else if (mpr_str_eq(&key, "m2"))
                rc = snap_field(d, &seen, M2, "aggregate m2") ||
                     snap_get_doubles(d, a->m2, a->nfeat, "aggregate m2");
            else if (mpr_str_eq(&key, "decayed"))
                rc = snap_field(d, &seen, DECAYED, "aggregate decayed means") ||
                     s_load_decayed(d, a, &nil);
            else
                rc = snap_skip(d, "aggregate field");
            if (rc)
                return -1;
        }
        if (snap_fields_all(d, seen, COUNT | MEAN | M2, "aggregate (count, mean or m2 missing)"))
            return -1;
    }
    for (uint32_t k = 0; k < a->nfeat; k++)
        if (!(a->m2[k] >= 0))
            return snap_fail(d, "aggregate m2 (negative)");
    if (nil && a->decayed)   /* the snapshot had no decayed mean: start it at the mean */
        memcpy(a->decayed, a->mean, a->nfeat * sizeof(double));
    return 0;
}

void
agg_heads_save(msgpack_packer *pk, const agg_heads_t *s)
{
    msgpack_pack_map(pk, 4);
    snap_put_str(pk, "L");
    msgpack_pack_uint32(pk, s->L);
    snap_put_str(pk, "H");
    msgpack_pack_uint32(pk, s->H);
    snap_put_str(pk, "importance");
    agg_save(pk, &s->importance);
    snap_put_str(pk, "confidence");
    agg_save(pk, &s->confidence);
}

int
agg_heads_load(snap_rd_t *d, agg_heads_t *s, unsigned ver)
{
    if (ver == SNAP_V1)
        return agg_load(d, &s->importance, ver) || agg_load(d, &s->confidence, ver) ? -1 : 0;
    enum { L = 1, H = 2, IMP = 4, CONF = 8 };
    uint32_t n, v;
    unsigned seen = 0;
    if (snap_get_map(d, &n, "head statistics"))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(d, &key, "head statistics field"))
            return -1;
        if (mpr_str_eq(&key, "L"))
            rc = snap_field(d, &seen, L, "head statistics L") ||
                 snap_get_u32(d, &v, "head statistics L") ||
                 (v != s->L && snap_fail(d, "head statistics L (not the schema's)"));
        else if (mpr_str_eq(&key, "H"))
            rc = snap_field(d, &seen, H, "head statistics H") ||
                 snap_get_u32(d, &v, "head statistics H") ||
                 (v != s->H && snap_fail(d, "head statistics H (not the schema's)"));
        else if (mpr_str_eq(&key, "importance"))
            rc = snap_field(d, &seen, IMP, "head importance") ||
                 agg_load(d, &s->importance, ver);
        else if (mpr_str_eq(&key, "confidence"))
            rc = snap_field(d, &seen, CONF, "head confidence") ||
                 agg_load(d, &s->confidence, ver);
        else
            rc = snap_skip(d, "head statistics field");
        if (rc)
            return -1;
    }
    return snap_fields_all(d, seen, L | H | IMP | CONF, "head statistics (a field is missing)");
}
