/*  xpl_decode: what every decoder of daemon messages and replies shares
    (xpl_decode.h): typed reads of a parsed document's keys into a result
    object, and the reply envelope. The decoders themselves live with
    their class (xpl_schema.c, xpl_explanation.c, xpl_models.c,
    xpl_stats.c, xpl_global.c, xpl_drift.c, xpl_drift_state.c,
    xpl_heads.c).

    Decoders read a parsed document (xpl_doc.c) and copy what they keep
    into the result's arena, so a result never points into a ZeroMQ
    message. Every key is type-checked; a required key that is absent or
    of the wrong type makes the whole result an XPL_EPROTO error naming
    the key. Unknown keys are ignored (forward compatibility).  */
#include "xpl_decode.h"

#include <math.h>
#include <string.h>

int
xdc_bad(xdc_t *c, const char *key, const char *want)
{
    return xpl_fail(XPL_EPROTO, "%s: key '%s' missing or not %s", c->what, key, want);
}

int
xdc_str(xdc_t *c, const xnode_t *map, const char *key, const char **out)
{
    const xnode_t *n = xn_get(map, key);
    if (!xn_is(n, MPR_STR))
        return xdc_bad(c, key, "a string");
    *out = xobj_strndup(c->obj, n->o.v.raw.ptr, n->o.v.raw.len);
    return *out ? 0 : -1;
}

int
xdc_u64(xdc_t *c, const xnode_t *map, const char *key, uint64_t *out)
{
    if (xn_uint(xn_get(map, key), out))
        return xdc_bad(c, key, "an unsigned integer");
    return 0;
}

int
xdc_u32(xdc_t *c, const xnode_t *map, const char *key, uint32_t *out)
{
    uint64_t v;
    if (xn_uint(xn_get(map, key), &v) || v > UINT32_MAX)
        return xdc_bad(c, key, "a 32-bit unsigned integer");
    *out = (uint32_t)v;
    return 0;
}

int
xdc_i64(xdc_t *c, const xnode_t *map, const char *key, int64_t *out)
{
    if (xn_int(xn_get(map, key), out))
        return xdc_bad(c, key, "an integer");
    return 0;
}

int
xdc_cls(xdc_t *c, const xnode_t *map, int32_t *out)
{
    int64_t v;
    if (xn_int(xn_get(map, "cls"), &v) || v < -1 || v > INT32_MAX)
        return xdc_bad(c, "cls", "an integer >= -1");
    *out = (int32_t)v;
    return 0;
}

/* An optional number: absent is fine, a wrong type is not. */
int
xdc_opt_num(xdc_t *c, const xnode_t *map, const char *key, double *out)
{
    const xnode_t *n = xn_get(map, key);
    if (n && xn_num(n, out))
        return xdc_bad(c, key, "a number");
    return 0;
}

int
xdc_opt_u64(xdc_t *c, const xnode_t *map, const char *key, uint64_t *out)
{
    const xnode_t *n = xn_get(map, key);
    if (n && xn_uint(n, out))
        return xdc_bad(c, key, "an unsigned integer");
    return 0;
}

/* An array of strings, copied; *count receives its length. */
int
xdc_strs(xdc_t *c, const xnode_t *map, const char *key, const char *const **out, uint32_t *count)
{
    const xnode_t *a = xn_get(map, key);
    if (!xn_is(a, MPR_ARRAY))
        return xdc_bad(c, key, "an array of strings");
    uint32_t n = xn_count(a);
    const char **v = xobj_alloc(c->obj, (size_t)(n ? n : 1) * sizeof *v);
    if (!v)
        return -1;
    const xnode_t *e = xn_first(a);
    for (uint32_t i = 0; i < n; i++, e = xn_next(e)) {
        if (!xn_is(e, MPR_STR))
            return xdc_bad(c, key, "an array of strings");
        if (!(v[i] = xobj_strndup(c->obj, e->o.v.raw.ptr, e->o.v.raw.len)))
            return -1;
    }
    *out = v;
    *count = n;
    return 0;
}

static int
s_model_info(xdc_t *c, const xnode_t *m, xpl_model_info_t *out)
{
    if (!xn_is(m, MPR_MAP))
        return xdc_bad(c, "models", "an array of maps");
    if (xdc_str(c, m, "model", &out->model) || xdc_u64(c, m, "epoch", &out->epoch)
        || xdc_u32(c, m, "L", &out->L) || xdc_u32(c, m, "H", &out->H) || xdc_u32(c, m, "n", &out->n)
        || xdc_cls(c, m, &out->cls) || xdc_u64(c, m, "received", &out->received)
        || xdc_u64(c, m, "trades", &out->trades) || xdc_u64(c, m, "explained", &out->explained)
        || xdc_u64(c, m, "rejected", &out->rejected) || xdc_u64(c, m, "lost", &out->lost)
        || xdc_opt_u64(c, m, "restarts", &out->restarts)
        || xdc_opt_u64(c, m, "last_seq", &out->last_seq))
        return -1;
    const xnode_t *ts = xn_get(m, "last_ts");
    if (ts && xn_int(ts, &out->last_ts))
        return xdc_bad(c, "last_ts", "an integer");
    return 0;
}

int
xdc_model_list(xdc_t *c, const xnode_t *root, const xpl_model_info_t **out, uint32_t *count)
{
    const xnode_t *a = xn_get(root, "models");
    if (!xn_is(a, MPR_ARRAY))
        return xdc_bad(c, "models", "an array");
    uint32_t n = xn_count(a);
    xpl_model_info_t *v = xobj_alloc(c->obj, (size_t)(n ? n : 1) * sizeof *v);
    if (!v)
        return -1;
    const xnode_t *e = xn_first(a);
    for (uint32_t i = 0; i < n; i++, e = xn_next(e))
        if (s_model_info(c, e, &v[i]))
            return -1;
    *out = v;
    *count = n;
    return 0;
}

/* An array of exactly `n` numbers as doubles (n == UINT32_MAX: any
   length, stored in *n). */
int
xdc_doubles(xdc_t *c, const xnode_t *a, const char *key, const double **out, uint32_t *n)
{
    /* `a` may be absent (NULL) or of any type: only an array has a count. */
    if (!xn_is(a, MPR_ARRAY))
        return xdc_bad(c, key, "an array of numbers");
    if (*n != UINT32_MAX && xn_count(a) != *n)
        return xpl_fail(XPL_EPROTO, "%s: '%s' has %u numbers, not %u", c->what, key,
                        xn_count(a), *n);
    uint32_t count = xn_count(a);
    double *v = xobj_alloc(c->obj, (size_t)(count ? count : 1) * sizeof *v);
    if (!v)
        return -1;
    const xnode_t *e = xn_first(a);
    for (uint32_t i = 0; i < count; i++, e = xn_next(e))
        if (xn_num(e, &v[i]))
            return xdc_bad(c, key, "an array of numbers");
    *out = v;
    *n = count;
    return 0;
}

/* A float or nil (undefined: NAN). */
int
xdc_stat(xdc_t *c, const xnode_t *map, const char *key, double *out)
{
    const xnode_t *n = xn_get(map, key);
    if (xn_is(n, MPR_NIL)) {
        *out = NAN;
        return 0;
    }
    if (xn_num(n, out))
        return xdc_bad(c, key, "a number or nil");
    return 0;
}

int
xdc_bool(xdc_t *c, const xnode_t *map, const char *key, bool *out)
{
    if (xn_bool(xn_get(map, key), out))
        return xdc_bad(c, key, "a bool");
    return 0;
}

/* The window fields shared by drift/ messages and the drift query. */
int
xdc_window(xdc_t *c, const xnode_t *m, xpl_window_t *w)
{
    if (!xn_is(m, MPR_MAP))
        return xdc_bad(c, "last", "a map");
    return xdc_u64(c, m, "window", &w->window) || xdc_str(c, m, "reference", &w->reference)
                   || xdc_bool(c, m, "compared", &w->compared)
                   || xdc_stat(c, m, "spearman", &w->spearman) || xdc_stat(c, m, "ndcg", &w->ndcg)
                   || xdc_stat(c, m, "js", &w->js) || xdc_bool(c, m, "alert", &w->alert)
                   || xdc_i64(c, m, "ts", &w->ts)
               ? -1
               : 0;
}

/* A map of the three statistics to a number or nil, into out[3]. */
static int
s_per_stat(xdc_t *c, const xnode_t *m, const char *key, double *out)
{
    static const char *names[3] = {"spearman", "ndcg", "js"};
    const xnode_t *n = xn_get(m, key);
    for (int i = 0; i < 3; i++)
        out[i] = NAN;
    if (!n || xn_is(n, MPR_NIL))
        return 0;
    if (!xn_is(n, MPR_MAP))
        return xdc_bad(c, key, "a map of statistic to number");
    for (int i = 0; i < 3; i++)
        if (xn_get(n, names[i]) && xdc_stat(c, n, names[i], &out[i]))
            return -1;
    return 0;
}

/* The verdict's "alerts": an array of statistic names, into flags
   (absent: none; a name this library does not know is skipped, so that a
   newer daemon's statistic does not fail the message). */
static int
s_alerted(xdc_t *c, const xnode_t *vd, bool out[3])
{
    static const char *names[3] = {"spearman", "ndcg", "js"};
    const xnode_t *a = xn_get(vd, "alerts");
    if (!a || xn_is(a, MPR_NIL))
        return 0;
    if (!xn_is(a, MPR_ARRAY))
        return xdc_bad(c, "alerts", "an array of statistic names");
    const xnode_t *e = xn_first(a);
    for (uint32_t i = 0, n = xn_count(a); i < n; i++, e = xn_next(e)) {
        if (!xn_is(e, MPR_STR))
            return xdc_bad(c, "alerts", "an array of statistic names");
        for (int k = 0; k < 3; k++)
            if (e->o.v.raw.len == strlen(names[k])
                && memcmp(e->o.v.raw.ptr, names[k], e->o.v.raw.len) == 0)
                out[k] = true;
    }
    return 0;
}

int
xdc_verdict(xdc_t *c, const xnode_t *m, xpl_verdict_t *v)
{
    memset(v, 0, sizeof *v);
    for (int i = 0; i < 3; i++)
        v->z[i] = v->cusum[i] = NAN;
    const xnode_t *vd = xn_get(m, "verdict");
    if (vd && !xn_is(vd, MPR_NIL)) {
        if (!xn_is(vd, MPR_MAP))
            return xdc_bad(c, "verdict", "a map");
        if (xdc_str(c, vd, "mode", &v->mode) || xdc_bool(c, vd, "calibrating", &v->calibrating)
            || s_per_stat(c, vd, "z", v->z) || s_per_stat(c, vd, "cusum", v->cusum)
            || s_alerted(c, vd, v->alerted))
            return -1;
    }
    const xnode_t *mv = xn_get(m, "moved");
    if (!mv || xn_is(mv, MPR_NIL))
        return 0;
    if (!xn_is(mv, MPR_ARRAY))
        return xdc_bad(c, "moved", "an array");
    uint32_t n = xn_count(mv);
    xpl_moved_t *out = xobj_alloc(c->obj, (size_t)(n ? n : 1) * sizeof *out);
    if (!out)
        return -1;
    const xnode_t *e = xn_first(mv);
    for (uint32_t i = 0; i < n; i++, e = xn_next(e)) {
        int64_t up;
        if (!xn_is(e, MPR_MAP))
            return xdc_bad(c, "moved", "an array of maps");
        const xnode_t *f = xn_get(e, "feature");
        out[i].feature = NULL;
        if (f && !xn_is(f, MPR_NIL) && xdc_str(c, e, "feature", &out[i].feature))
            return -1;
        if (xdc_u32(c, e, "index", &out[i].index) || xdc_stat(c, e, "ref", &out[i].ref)
            || xdc_stat(c, e, "cur", &out[i].cur) || xdc_stat(c, e, "delta", &out[i].delta)
            || xdc_u32(c, e, "ref_rank", &out[i].ref_rank) || xdc_u32(c, e, "rank", &out[i].rank))
            return -1;
        if (xn_int(xn_get(e, "rank_up"), &up) || up < INT32_MIN || up > INT32_MAX)
            return xdc_bad(c, "rank_up", "an integer");
        out[i].rank_up = (int32_t)up;
    }
    v->moved = out;
    v->nmoved = n;
    return 0;
}

int
xpl_reply_check(const xdoc_t *d, const char *op)
{
    const xnode_t *root = d->nodes;
    uint64_t v;
    bool ok;
    if (!xn_is(root, MPR_MAP))
        return xpl_fail(XPL_EPROTO, "reply to '%s' is not a map", op);
    if (xn_uint(xn_get(root, "v"), &v) || v != XPL_WIRE_VERSION)
        return xpl_fail(XPL_EPROTO, "reply to '%s': 'v' missing or not %d", op,
                        XPL_WIRE_VERSION);
    if (xn_bool(xn_get(root, "ok"), &ok))
        return xpl_fail(XPL_EPROTO, "reply to '%s': 'ok' missing or not a bool", op);
    if (ok)
        return 0;
    const xnode_t *code = xn_get(root, "code");
    const xnode_t *err = xn_get(root, "error");
    char codebuf[64] = "";
    if (xn_is(code, MPR_STR) && code->o.v.raw.len < sizeof codebuf)
        memcpy(codebuf, code->o.v.raw.ptr, code->o.v.raw.len);
    int c = xpl_errno_from_code(codebuf);
    if (xn_is(err, MPR_STR))
        return xpl_fail(c, "%s: %.*s", op, (int)err->o.v.raw.len, (const char *)err->o.v.raw.ptr);
    return xpl_fail(c, "%s: daemon error%s%s", op, codebuf[0] ? " " : "", codebuf);
}
