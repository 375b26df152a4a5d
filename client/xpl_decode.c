/*  xpl_decode: daemon messages and replies -> the public structs.

    Decoders read a parsed document (xpl_doc.c) and copy what they keep
    into the result's arena, so a result never points into a ZeroMQ
    message. Every key is type-checked; a required key that is absent or
    of the wrong type makes the whole result an XPL_EPROTO error naming
    the key. Unknown keys are ignored (forward compatibility).  */
#include "xpl_private.h"

#include <math.h>
#include <string.h>

/* Decoding context: the object being filled and what is being decoded,
   for error messages. */
typedef struct {
    void *obj;
    const char *what;
} s_dc_t;

static int
s_bad(s_dc_t *c, const char *key, const char *want)
{
    return xpl_fail(XPL_EPROTO, "%s: key '%s' missing or not %s", c->what, key, want);
}

static int
s_str(s_dc_t *c, const xnode_t *map, const char *key, const char **out)
{
    const xnode_t *n = xn_get(map, key);
    if (!xn_is(n, MPR_STR))
        return s_bad(c, key, "a string");
    *out = xobj_strndup(c->obj, n->o.v.raw.ptr, n->o.v.raw.len);
    return *out ? 0 : -1;
}

static int
s_u64(s_dc_t *c, const xnode_t *map, const char *key, uint64_t *out)
{
    if (xn_uint(xn_get(map, key), out))
        return s_bad(c, key, "an unsigned integer");
    return 0;
}

static int
s_u32(s_dc_t *c, const xnode_t *map, const char *key, uint32_t *out)
{
    uint64_t v;
    if (xn_uint(xn_get(map, key), &v) || v > UINT32_MAX)
        return s_bad(c, key, "a 32-bit unsigned integer");
    *out = (uint32_t)v;
    return 0;
}

static int
s_i64(s_dc_t *c, const xnode_t *map, const char *key, int64_t *out)
{
    if (xn_int(xn_get(map, key), out))
        return s_bad(c, key, "an integer");
    return 0;
}

static int
s_cls(s_dc_t *c, const xnode_t *map, int32_t *out)
{
    int64_t v;
    if (xn_int(xn_get(map, "cls"), &v) || v < -1 || v > INT32_MAX)
        return s_bad(c, "cls", "an integer >= -1");
    *out = (int32_t)v;
    return 0;
}

/* An optional number: absent is fine, a wrong type is not. */
static int
s_opt_num(s_dc_t *c, const xnode_t *map, const char *key, double *out)
{
    const xnode_t *n = xn_get(map, key);
    if (n && xn_num(n, out))
        return s_bad(c, key, "a number");
    return 0;
}

static int
s_opt_u64(s_dc_t *c, const xnode_t *map, const char *key, uint64_t *out)
{
    const xnode_t *n = xn_get(map, key);
    if (n && xn_uint(n, out))
        return s_bad(c, key, "an unsigned integer");
    return 0;
}

/* An array of strings, copied; *count receives its length. */
static int
s_strs(s_dc_t *c, const xnode_t *map, const char *key, const char *const **out, uint32_t *count)
{
    const xnode_t *a = xn_get(map, key);
    if (!xn_is(a, MPR_ARRAY))
        return s_bad(c, key, "an array of strings");
    uint32_t n = xn_count(a);
    const char **v = xobj_alloc(c->obj, (size_t)(n ? n : 1) * sizeof *v);
    if (!v)
        return -1;
    const xnode_t *e = xn_first(a);
    for (uint32_t i = 0; i < n; i++, e = xn_next(e)) {
        if (!xn_is(e, MPR_STR))
            return s_bad(c, key, "an array of strings");
        if (!(v[i] = xobj_strndup(c->obj, e->o.v.raw.ptr, e->o.v.raw.len)))
            return -1;
    }
    *out = v;
    *count = n;
    return 0;
}

/* An array of numbers as floats. */
static int
s_floats(s_dc_t *c, const xnode_t *a, const char *key, const float **out, uint32_t *count)
{
    if (!xn_is(a, MPR_ARRAY))
        return s_bad(c, key, "an array of numbers");
    uint32_t n = xn_count(a);
    float *v = xobj_alloc(c->obj, (size_t)(n ? n : 1) * sizeof *v);
    if (!v)
        return -1;
    const xnode_t *e = xn_first(a);
    for (uint32_t i = 0; i < n; i++, e = xn_next(e)) {
        double d;
        if (xn_num(e, &d))
            return s_bad(c, key, "an array of numbers");
        v[i] = (float)d;
    }
    *out = v;
    *count = n;
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

/* ---- schema ----------------------------------------------------------- */

xpl_schema_t *
xpl_decode_schema(const xnode_t *root, const char *what)
{
    xpl_schema_t *s = xobj_new(sizeof *s);
    if (!s)
        return NULL;
    s_dc_t c = {s, what};
    uint32_t ntok;
    const xnode_t *dt = xn_get(root, "dtype");
    if (s_str(&c, root, "model", &s->model) || s_u64(&c, root, "epoch", &s->epoch)
        || s_u32(&c, root, "L", &s->L) || s_u32(&c, root, "H", &s->H)
        || s_u32(&c, root, "n", &s->n) || s_cls(&c, root, &s->cls)
        || s_strs(&c, root, "tokens", &s->tokens, &ntok)
        || s_strs(&c, root, "features", &s->features, &s->nfeat))
        goto fail;
    if (ntok != s->n) {
        xpl_fail(XPL_EPROTO, "%s: %u tokens for n = %u", what, ntok, s->n);
        goto fail;
    }
    if (s->nfeat != s->n - (s->cls >= 0 ? 1u : 0u) || (s->cls >= 0 && (uint32_t)s->cls >= s->n)) {
        xpl_fail(XPL_EPROTO, "%s: %u features for n = %u, cls = %d", what, s->nfeat, s->n, s->cls);
        goto fail;
    }
    if (xn_is(dt, MPR_STR))
        s->dtype = xobj_strndup(s, dt->o.v.raw.ptr, dt->o.v.raw.len);
    else
        s->dtype = "";
    if (!s->dtype)
        goto fail;
    return s;
fail:
    xobj_unref(&s);
    return NULL;
}

xpl_schema_t *
xpl_schema_ref(const xpl_schema_t *self)
{
    return xobj_ref(self);
}

void
xpl_schema_destroy(xpl_schema_t **self_p)
{
    xobj_unref(self_p);
}

/* ---- explanations ------------------------------------------------------ */

static void
s_explanation_fini(void *obj)
{
    xpl_explanation_t *e = obj;
    xpl_schema_t *s = (xpl_schema_t *)e->schema;
    xpl_schema_destroy(&s);
}

/* Little-endian float32 bytes to floats, whatever the host order. */
static void
s_le_floats(float *dst, const uint8_t *src, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        uint32_t b = (uint32_t)src[4 * i] | (uint32_t)src[4 * i + 1] << 8
                     | (uint32_t)src[4 * i + 2] << 16 | (uint32_t)src[4 * i + 3] << 24;
        memcpy(&dst[i], &b, 4);
    }
}

static int
s_matrices(s_dc_t *c, const xnode_t *root, xpl_explanation_t *e)
{
    const xnode_t *m = xn_get(root, "matrices");
    if (!m)
        return 0;
    if (!xn_is(m, MPR_MAP))
        return s_bad(c, "matrices", "a map");
    uint32_t n = xn_count(m);
    xpl_matrix_t *v = xobj_alloc(c->obj, (size_t)(n ? n : 1) * sizeof *v);
    if (!v)
        return -1;
    /* n * n * 4 in 64 bits wraps for n >= 2^31 (a 0-byte bin would then
       pass for a huge matrix): compare n * n with the floats present. */
    uint64_t cells = (uint64_t)e->n * e->n;
    const xnode_t *k = xn_first(m);
    for (uint32_t i = 0; i < n; i++) {
        const xnode_t *val = xn_next(k);
        if (!xn_is(k, MPR_STR) || !xn_is(val, MPR_BIN))
            return s_bad(c, "matrices", "a map of str to bin");
        if (val->o.v.raw.len % 4 != 0 || val->o.v.raw.len / 4 != cells)
            return xpl_fail(XPL_EPROTO, "%s: matrix of %zu bytes for n = %u", c->what,
                            (size_t)val->o.v.raw.len, e->n);
        size_t bytes = val->o.v.raw.len;
        float *f = xobj_alloc(c->obj, bytes ? bytes : 1);
        if (!f || !(v[i].method = xobj_strndup(c->obj, k->o.v.raw.ptr, k->o.v.raw.len)))
            return -1;
        s_le_floats(f, val->o.v.raw.ptr, bytes / 4);
        v[i].n = e->n;
        v[i].values = f;
        k = xn_next(val);
    }
    e->nmatrices = n;
    e->matrices = v;
    return 0;
}

xpl_explanation_t *
xpl_decode_explanation(const xnode_t *root, bool trade, const char *what)
{
    xpl_explanation_t *e = xobj_new(sizeof *e);
    if (!e)
        return NULL;
    xobj_set_fini(e, s_explanation_fini);
    s_dc_t c = {e, what};
    if (!xn_is(root, MPR_MAP)) {
        xpl_fail(XPL_EPROTO, "%s: body is not a map", what);
        goto fail;
    }
    if (s_str(&c, root, "model", &e->model) || s_i64(&c, root, "ts", &e->ts)
        || s_u64(&c, root, "epoch", &e->epoch))
        goto fail;
    if (!trade && s_u64(&c, root, "seq", &e->seq))
        goto fail;
    const xnode_t *id = xn_get(root, "id");
    if (xn_is(id, MPR_STR)) {
        e->id.is_str = true;
        if (!(e->id.s = xobj_strndup(e, id->o.v.raw.ptr, id->o.v.raw.len)))
            goto fail;
    } else if (xn_uint(id, &e->id.u)) {
        s_bad(&c, "id", "a string or an unsigned integer");
        goto fail;
    }
    const xnode_t *t = xn_get(root, "target");
    if (t) {
        if (xn_int(t, &e->target)) {
            s_bad(&c, "target", "an integer");
            goto fail;
        }
        e->has_target = true;
    }
    if (xn_get(root, "y")) {
        if (s_opt_num(&c, root, "y", &e->y))
            goto fail;
        e->has_y = true;
    }
    const xnode_t *a = xn_get(root, "attr");
    if (!xn_is(a, MPR_MAP)) {
        s_bad(&c, "attr", "a map");
        goto fail;
    }
    uint32_t na = xn_count(a);
    xpl_attr_t *attr = xobj_alloc(e, (size_t)(na ? na : 1) * sizeof *attr);
    if (!attr)
        goto fail;
    const xnode_t *k = xn_first(a);
    for (uint32_t i = 0; i < na; i++) {
        const xnode_t *val = xn_next(k);
        if (!xn_is(k, MPR_STR)) {
            s_bad(&c, "attr", "a map with string keys");
            goto fail;
        }
        if (!(attr[i].method = xobj_strndup(e, k->o.v.raw.ptr, k->o.v.raw.len))
            || s_floats(&c, val, "attr", &attr[i].values, &attr[i].count))
            goto fail;
        k = xn_next(val);
    }
    e->nattr = na;
    e->attr = attr;
    if (trade) {
        /* features is absent when the daemon no longer keeps the schema
           of the trade's epoch. */
        if (s_u32(&c, root, "n", &e->n) || s_cls(&c, root, &e->cls)
            || (xn_get(root, "features") && s_strs(&c, root, "features", &e->features, &e->nfeat))
            || s_matrices(&c, root, e))
            goto fail;
        if (e->cls >= 0 && (uint32_t)e->cls >= e->n) {
            xpl_fail(XPL_EPROTO, "%s: cls = %d for n = %u", what, e->cls, e->n);
            goto fail;
        }
        if (e->features && e->nfeat != e->n - (e->cls >= 0 ? 1u : 0u)) {
            xpl_fail(XPL_EPROTO, "%s: %u features for n = %u, cls = %d", what, e->nfeat, e->n,
                     e->cls);
            goto fail;
        }
    }
    for (uint32_t i = 0; i < na; i++) {
        if (e->features && attr[i].count != e->nfeat) {
            xpl_fail(XPL_EPROTO, "%s: '%s' has %u values for %u features", what,
                     attr[i].method, attr[i].count, e->nfeat);
            goto fail;
        }
    }
    return e;
fail:
    xobj_unref(&e);
    return NULL;
}

void
xpl_explanation_attach(xpl_explanation_t *e, const xpl_schema_t *schema)
{
    if (!schema || e->schema || schema->epoch != e->epoch || strcmp(schema->model, e->model))
        return;
    for (uint32_t i = 0; i < e->nattr; i++)
        if (e->attr[i].count != schema->nfeat)
            return;
    e->schema = xpl_schema_ref(schema);
    e->features = schema->features;
    e->nfeat = schema->nfeat;
}

const xpl_attr_t *
xpl_explanation_attr(const xpl_explanation_t *self, const char *method)
{
    for (uint32_t i = 0; i < self->nattr; i++)
        if (strcmp(self->attr[i].method, method) == 0)
            return &self->attr[i];
    return NULL;
}

const xpl_matrix_t *
xpl_explanation_matrix(const xpl_explanation_t *self, const char *method)
{
    for (uint32_t i = 0; i < self->nmatrices; i++)
        if (strcmp(self->matrices[i].method, method) == 0)
            return &self->matrices[i];
    return NULL;
}

void
xpl_explanation_destroy(xpl_explanation_t **self_p)
{
    xobj_unref(self_p);
}

/* ---- models and stats -------------------------------------------------- */

static int
s_model_info(s_dc_t *c, const xnode_t *m, xpl_model_info_t *out)
{
    if (!xn_is(m, MPR_MAP))
        return s_bad(c, "models", "an array of maps");
    if (s_str(c, m, "model", &out->model) || s_u64(c, m, "epoch", &out->epoch)
        || s_u32(c, m, "L", &out->L) || s_u32(c, m, "H", &out->H) || s_u32(c, m, "n", &out->n)
        || s_cls(c, m, &out->cls) || s_u64(c, m, "received", &out->received)
        || s_u64(c, m, "trades", &out->trades) || s_u64(c, m, "explained", &out->explained)
        || s_u64(c, m, "rejected", &out->rejected) || s_u64(c, m, "lost", &out->lost)
        || s_opt_u64(c, m, "restarts", &out->restarts)
        || s_opt_u64(c, m, "last_seq", &out->last_seq))
        return -1;
    const xnode_t *ts = xn_get(m, "last_ts");
    if (ts && xn_int(ts, &out->last_ts))
        return s_bad(c, "last_ts", "an integer");
    return 0;
}

static int
s_model_list(s_dc_t *c, const xnode_t *root, const xpl_model_info_t **out, uint32_t *count)
{
    const xnode_t *a = xn_get(root, "models");
    if (!xn_is(a, MPR_ARRAY))
        return s_bad(c, "models", "an array");
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

xpl_models_t *
xpl_decode_models(const xnode_t *root, const char *what)
{
    xpl_models_t *m = xobj_new(sizeof *m);
    if (!m)
        return NULL;
    s_dc_t c = {m, what};
    if (s_model_list(&c, root, &m->models, &m->count))
        xobj_unref(&m);
    return m;
}

const xpl_model_info_t *
xpl_models_find(const xpl_models_t *self, const char *model)
{
    for (uint32_t i = 0; i < self->count; i++)
        if (strcmp(self->models[i].model, model) == 0)
            return &self->models[i];
    return NULL;
}

void
xpl_models_destroy(xpl_models_t **self_p)
{
    xobj_unref(self_p);
}

/* A map of str -> uint as counters. */
static int
s_counters(s_dc_t *c, const xnode_t *root, const char *key, const xpl_counter_t **out,
           uint32_t *count)
{
    const xnode_t *m = xn_get(root, key);
    if (!xn_is(m, MPR_MAP))
        return s_bad(c, key, "a map of counters");
    uint32_t n = xn_count(m);
    xpl_counter_t *v = xobj_alloc(c->obj, (size_t)(n ? n : 1) * sizeof *v);
    if (!v)
        return -1;
    const xnode_t *k = xn_first(m);
    for (uint32_t i = 0; i < n; i++) {
        const xnode_t *val = xn_next(k);
        if (!xn_is(k, MPR_STR) || xn_uint(val, &v[i].value))
            return s_bad(c, key, "a map of str to unsigned integer");
        if (!(v[i].name = xobj_strndup(c->obj, k->o.v.raw.ptr, k->o.v.raw.len)))
            return -1;
        k = xn_next(val);
    }
    *out = v;
    *count = n;
    return 0;
}

xpl_stats_t *
xpl_decode_stats(const xnode_t *root, const char *what)
{
    xpl_stats_t *s = xobj_new(sizeof *s);
    if (!s)
        return NULL;
    s_dc_t c = {s, what};
    if (s_opt_num(&c, root, "uptime_s", &s->uptime_s)
        || s_counters(&c, root, "counters", &s->counters, &s->ncounters)
        || s_counters(&c, root, "rejected", &s->rejected_by_reason, &s->nreasons)
        || s_model_list(&c, root, &s->models, &s->nmodels))
        goto fail;
    struct {
        const char *name;
        uint64_t *field;
    } known[] = {
        {"received", &s->received}, {"received_trades", &s->received_trades},
        {"explained", &s->explained}, {"published", &s->published},
        {"rejected", &s->rejected}, {"lost", &s->lost}, {"restarts", &s->restarts},
        {"dropped", &s->dropped}, {"queries", &s->queries}, {"query_errors", &s->query_errors},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        xpl_stats_counter(s, known[i].name, known[i].field);
    const xnode_t *lat = xn_get(root, "latency_us");
    if (!xn_is(lat, MPR_MAP)) {
        s_bad(&c, "latency_us", "a map");
        goto fail;
    }
    if (s_opt_u64(&c, lat, "count", &s->latency_us.count)
        || s_opt_num(&c, lat, "p50", &s->latency_us.p50)
        || s_opt_num(&c, lat, "p90", &s->latency_us.p90)
        || s_opt_num(&c, lat, "p99", &s->latency_us.p99)
        || s_opt_num(&c, lat, "p999", &s->latency_us.p999)
        || s_opt_num(&c, lat, "max", &s->latency_us.max))
        goto fail;
    return s;
fail:
    xobj_unref(&s);
    return NULL;
}

int
xpl_stats_counter(const xpl_stats_t *self, const char *name, uint64_t *value)
{
    for (uint32_t i = 0; i < self->ncounters; i++)
        if (strcmp(self->counters[i].name, name) == 0) {
            *value = self->counters[i].value;
            return 0;
        }
    return -1;
}

void
xpl_stats_destroy(xpl_stats_t **self_p)
{
    xobj_unref(self_p);
}

/* ---- global state, drift, heads --------------------------------------- */

/* An array of exactly `n` numbers as doubles (n == UINT32_MAX: any
   length, stored in *n). */
static int
s_doubles(s_dc_t *c, const xnode_t *a, const char *key, const double **out, uint32_t *n)
{
    /* `a` may be absent (NULL) or of any type: only an array has a count. */
    if (!xn_is(a, MPR_ARRAY))
        return s_bad(c, key, "an array of numbers");
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
            return s_bad(c, key, "an array of numbers");
    *out = v;
    *n = count;
    return 0;
}

/* A float or nil (undefined: NAN). */
static int
s_stat(s_dc_t *c, const xnode_t *map, const char *key, double *out)
{
    const xnode_t *n = xn_get(map, key);
    if (xn_is(n, MPR_NIL)) {
        *out = NAN;
        return 0;
    }
    if (xn_num(n, out))
        return s_bad(c, key, "a number or nil");
    return 0;
}

static int
s_bool(s_dc_t *c, const xnode_t *map, const char *key, bool *out)
{
    if (xn_bool(xn_get(map, key), out))
        return s_bad(c, key, "a bool");
    return 0;
}

/* map method -> method-state; *nfeat fixed by the first vector seen when
   it is UINT32_MAX on entry. */
static int
s_method_states(s_dc_t *c, const xnode_t *m, uint32_t *nfeat, const xpl_method_state_t **out,
                uint32_t *count)
{
    if (!xn_is(m, MPR_MAP))
        return s_bad(c, "methods", "a map");
    uint32_t n = xn_count(m);
    xpl_method_state_t *v = xobj_alloc(c->obj, (size_t)(n ? n : 1) * sizeof *v);
    if (!v)
        return -1;
    const xnode_t *k = xn_first(m);
    for (uint32_t i = 0; i < n; i++) {
        const xnode_t *st = xn_next(k);
        if (!xn_is(k, MPR_STR) || !xn_is(st, MPR_MAP))
            return s_bad(c, "methods", "a map of method name to state");
        if (!(v[i].method = xobj_strndup(c->obj, k->o.v.raw.ptr, k->o.v.raw.len))
            || s_u64(c, st, "count", &v[i].count)
            || s_doubles(c, xn_get(st, "mean"), "mean", &v[i].mean, nfeat)
            || s_doubles(c, xn_get(st, "std"), "std", &v[i].std, nfeat)
            || s_doubles(c, xn_get(st, "decayed"), "decayed", &v[i].decayed, nfeat))
            return -1;
        v[i].reference_spearman = NAN;
        if (xn_get(st, "reference")) {
            if (s_doubles(c, xn_get(st, "reference"), "reference", &v[i].reference, nfeat)
                || s_stat(c, st, "reference_spearman", &v[i].reference_spearman))
                return -1;
        }
        k = xn_next(st);
    }
    *out = v;
    *count = n;
    return 0;
}

xpl_global_t *
xpl_decode_global(const xnode_t *root, const char *what)
{
    xpl_global_t *g = xobj_new(sizeof *g);
    if (!g)
        return NULL;
    s_dc_t c = {g, what};
    uint32_t nfeat = UINT32_MAX;
    if (!xn_is(root, MPR_MAP)) {
        xpl_fail(XPL_EPROTO, "%s: body is not a map", what);
        goto fail;
    }
    if (s_str(&c, root, "model", &g->model) || s_u64(&c, root, "seq", &g->seq)
        || s_i64(&c, root, "ts", &g->ts) || s_u64(&c, root, "epoch", &g->epoch)
        || s_u64(&c, root, "count", &g->count) || s_opt_num(&c, root, "half_life", &g->half_life)
        || s_opt_u64(&c, root, "untracked_targets", &g->untracked_targets))
        goto fail;
    const xnode_t *f = xn_get(root, "features");
    if (f && !xn_is(f, MPR_NIL)) {
        if (s_strs(&c, root, "features", &g->features, &nfeat))
            goto fail;
    }
    if (s_method_states(&c, xn_get(root, "methods"), &nfeat, &g->methods, &g->nmethods))
        goto fail;
    const xnode_t *t = xn_get(root, "targets");
    if (t) {
        if (!xn_is(t, MPR_ARRAY)) {
            s_bad(&c, "targets", "an array");
            goto fail;
        }
        uint32_t nt = xn_count(t);
        xpl_target_state_t *ts = xobj_alloc(g, (size_t)(nt ? nt : 1) * sizeof *ts);
        if (!ts)
            goto fail;
        const xnode_t *e = xn_first(t);
        for (uint32_t i = 0; i < nt; i++, e = xn_next(e)) {
            if (s_i64(&c, e, "target", &ts[i].target)
                || s_method_states(&c, xn_get(e, "methods"), &nfeat, &ts[i].methods,
                                   &ts[i].nmethods))
                goto fail;
        }
        g->targets = ts;
        g->ntargets = nt;
    }
    g->nfeat = nfeat == UINT32_MAX ? 0 : nfeat;
    return g;
fail:
    xobj_unref(&g);
    return NULL;
}

const xpl_method_state_t *
xpl_global_method(const xpl_global_t *self, const char *method)
{
    for (uint32_t i = 0; i < self->nmethods; i++)
        if (strcmp(self->methods[i].method, method) == 0)
            return &self->methods[i];
    return NULL;
}

const xpl_target_state_t *
xpl_global_target(const xpl_global_t *self, int64_t target)
{
    for (uint32_t i = 0; i < self->ntargets; i++)
        if (self->targets[i].target == target)
            return &self->targets[i];
    return NULL;
}

xpl_global_t *
xpl_global_ref(const xpl_global_t *self)
{
    return xobj_ref(self);
}

void
xpl_global_destroy(xpl_global_t **self_p)
{
    xobj_unref(self_p);
}

/* The window fields shared by drift/ messages and the drift query. */
static int
s_window(s_dc_t *c, const xnode_t *m, xpl_window_t *w)
{
    if (!xn_is(m, MPR_MAP))
        return s_bad(c, "last", "a map");
    return s_u64(c, m, "window", &w->window) || s_str(c, m, "reference", &w->reference)
                   || s_bool(c, m, "compared", &w->compared)
                   || s_stat(c, m, "spearman", &w->spearman) || s_stat(c, m, "ndcg", &w->ndcg)
                   || s_stat(c, m, "js", &w->js) || s_bool(c, m, "alert", &w->alert)
                   || s_i64(c, m, "ts", &w->ts)
               ? -1
               : 0;
}

xpl_drift_t *
xpl_decode_drift(const xnode_t *root, const char *what)
{
    xpl_drift_t *d = xobj_new(sizeof *d);
    if (!d)
        return NULL;
    s_dc_t c = {d, what};
    if (!xn_is(root, MPR_MAP)) {
        xpl_fail(XPL_EPROTO, "%s: body is not a map", what);
        xobj_unref(&d);
    } else if (s_str(&c, root, "model", &d->model) || s_u64(&c, root, "seq", &d->seq)
               || s_u64(&c, root, "epoch", &d->epoch) || s_str(&c, root, "method", &d->method)
               || s_u64(&c, root, "trades", &d->trades) || s_window(&c, root, &d->window))
        xobj_unref(&d);
    return d;
}

void
xpl_drift_destroy(xpl_drift_t **self_p)
{
    xobj_unref(self_p);
}

/* array[L] of array[H] of numbers, flattened. */
static int
s_lh(s_dc_t *c, const xnode_t *root, const char *key, uint32_t L, uint32_t H, const double **out)
{
    const xnode_t *a = xn_get(root, key);
    if (!xn_is(a, MPR_ARRAY) || xn_count(a) != L)
        return xpl_fail(XPL_EPROTO, "%s: '%s' is not an array of %u layers", c->what, key, L);
    /* L and H are the message's word: only rows that are really there
       bound the allocation (L = 1, H = 4e9 would ask for 32 GB). */
    const xnode_t *row = xn_first(a);
    for (uint32_t l = 0; l < L; l++, row = xn_next(row))
        if (!xn_is(row, MPR_ARRAY) || xn_count(row) != H)
            return xpl_fail(XPL_EPROTO, "%s: '%s' row %u is not an array of %u numbers",
                            c->what, key, l, H);
    double *v = xobj_alloc(c->obj, (size_t)L * H * sizeof *v + 1);
    if (!v)
        return -1;
    row = xn_first(a);
    for (uint32_t l = 0; l < L; l++, row = xn_next(row)) {
        const double *r;
        uint32_t n = H;
        if (s_doubles(c, row, key, &r, &n))
            return -1;
        memcpy(v + (size_t)l * H, r, (size_t)H * sizeof *v);
    }
    *out = v;
    return 0;
}

xpl_heads_t *
xpl_decode_heads(const xnode_t *root, const char *what)
{
    xpl_heads_t *h = xobj_new(sizeof *h);
    if (!h)
        return NULL;
    s_dc_t c = {h, what};
    if (!xn_is(root, MPR_MAP)) {
        xpl_fail(XPL_EPROTO, "%s: body is not a map", what);
        goto fail;
    }
    if (s_str(&c, root, "model", &h->model) || s_u64(&c, root, "seq", &h->seq)
        || s_i64(&c, root, "ts", &h->ts) || s_u64(&c, root, "epoch", &h->epoch)
        || s_u32(&c, root, "L", &h->L) || s_u32(&c, root, "H", &h->H))
        goto fail;
    /* The arrays were bounded by the message; L * H must be too. */
    if ((uint64_t)h->L * h->H > UINT32_MAX) {
        xpl_fail(XPL_EPROTO, "%s: L * H = %u * %u is too large", what, h->L, h->H);
        goto fail;
    }
    if (s_lh(&c, root, "importance", h->L, h->H, &h->importance)
        || s_lh(&c, root, "confidence", h->L, h->H, &h->confidence)
        || s_u64(&c, root, "importance_count", &h->importance_count)
        || s_u64(&c, root, "confidence_count", &h->confidence_count))
        goto fail;
    return h;
fail:
    xobj_unref(&h);
    return NULL;
}

void
xpl_heads_destroy(xpl_heads_t **self_p)
{
    xobj_unref(self_p);
}

xpl_drift_state_t *
xpl_decode_drift_state(const xnode_t *root, const char *what)
{
    xpl_drift_state_t *d = xobj_new(sizeof *d);
    if (!d)
        return NULL;
    s_dc_t c = {d, what};
    const xnode_t *th = xn_get(root, "thresholds");
    if (!xn_is(th, MPR_MAP)) {
        s_bad(&c, "thresholds", "a map");
        goto fail;
    }
    if (s_str(&c, root, "model", &d->model) || s_u64(&c, root, "epoch", &d->epoch)
        || s_u64(&c, root, "window", &d->window) || s_stat(&c, th, "rho_min", &d->rho_min) || s_stat(&c, th, "ndcg_min", &d->ndcg_min)
        || s_stat(&c, th, "js_max", &d->js_max) || s_u32(&c, th, "ndcg_k", &d->ndcg_k)
        || s_u64(&c, root, "alerts_total", &d->alerts_total))
        goto fail;
    const xnode_t *m = xn_get(root, "methods");
    if (!xn_is(m, MPR_MAP)) {
        s_bad(&c, "methods", "a map");
        goto fail;
    }
    uint32_t nm = xn_count(m);
    xpl_drift_method_t *ms = xobj_alloc(d, (size_t)(nm ? nm : 1) * sizeof *ms);
    if (!ms)
        goto fail;
    const xnode_t *k = xn_first(m);
    for (uint32_t i = 0; i < nm; i++) {
        const xnode_t *v = xn_next(k);
        if (!xn_is(k, MPR_STR) || !xn_is(v, MPR_MAP)) {
            s_bad(&c, "methods", "a map of method name to status");
            goto fail;
        }
        const xnode_t *last = xn_get(v, "last");
        if (!(ms[i].method = xobj_strndup(d, k->o.v.raw.ptr, k->o.v.raw.len))
            || s_str(&c, v, "reference", &ms[i].reference)
            || s_u64(&c, v, "filled", &ms[i].filled) || s_u64(&c, v, "windows", &ms[i].windows))
            goto fail;
        if (last && !xn_is(last, MPR_NIL)) {
            if (s_window(&c, last, &ms[i].last))
                goto fail;
            ms[i].has_last = true;
        }
        k = xn_next(v);
    }
    d->methods = ms;
    d->nmethods = nm;
    const xnode_t *al = xn_get(root, "alerts");
    if (!xn_is(al, MPR_ARRAY)) {
        s_bad(&c, "alerts", "an array");
        goto fail;
    }
    uint32_t na = xn_count(al);
    xpl_alert_t *as = xobj_alloc(d, (size_t)(na ? na : 1) * sizeof *as);
    if (!as)
        goto fail;
    const xnode_t *e = xn_first(al);
    for (uint32_t i = 0; i < na; i++, e = xn_next(e)) {
        if (!xn_is(e, MPR_MAP)) {
            s_bad(&c, "alerts", "an array of maps");
            goto fail;
        }
        if (s_i64(&c, e, "ts", &as[i].ts)
            || s_u64(&c, e, "epoch", &as[i].epoch) || s_str(&c, e, "method", &as[i].method)
            || s_u64(&c, e, "window", &as[i].window)
            || s_str(&c, e, "reference", &as[i].reference)
            || s_stat(&c, e, "spearman", &as[i].spearman) || s_stat(&c, e, "ndcg", &as[i].ndcg)
            || s_stat(&c, e, "js", &as[i].js))
            goto fail;
    }
    d->alerts = as;
    d->nalerts = na;
    return d;
fail:
    xobj_unref(&d);
    return NULL;
}

const xpl_drift_method_t *
xpl_drift_state_method(const xpl_drift_state_t *self, const char *method)
{
    for (uint32_t i = 0; i < self->nmethods; i++)
        if (strcmp(self->methods[i].method, method) == 0)
            return &self->methods[i];
    return NULL;
}

void
xpl_drift_state_destroy(xpl_drift_state_t **self_p)
{
    xobj_unref(self_p);
}
