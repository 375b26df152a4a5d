/*  xpl_explanation: one trade's explanation (xpl/ messages and the trade
    reply, with its n x n matrices).  */
#include "xpl_decode.h"

#include <string.h>

/* An array of numbers as floats. */
static int
s_floats(xdc_t *c, const xnode_t *a, const char *key, const float **out, uint32_t *count)
{
    if (!xn_is(a, MPR_ARRAY))
        return xdc_bad(c, key, "an array of numbers");
    uint32_t n = xn_count(a);
    float *v = xobj_alloc(c->obj, (size_t)(n ? n : 1) * sizeof *v);
    if (!v)
        return -1;
    const xnode_t *e = xn_first(a);
    for (uint32_t i = 0; i < n; i++, e = xn_next(e)) {
        double d;
        if (xn_num(e, &d))
            return xdc_bad(c, key, "an array of numbers");
        v[i] = (float)d;
    }
    *out = v;
    *count = n;
    return 0;
}

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
s_matrices(xdc_t *c, const xnode_t *root, xpl_explanation_t *e)
{
    const xnode_t *m = xn_get(root, "matrices");
    if (!m)
        return 0;
    if (!xn_is(m, MPR_MAP))
        return xdc_bad(c, "matrices", "a map");
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
            return xdc_bad(c, "matrices", "a map of str to bin");
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
    xdc_t c = {e, what};
    if (!xn_is(root, MPR_MAP)) {
        xpl_fail(XPL_EPROTO, "%s: body is not a map", what);
        goto fail;
    }
    if (xdc_str(&c, root, "model", &e->model) || xdc_i64(&c, root, "ts", &e->ts)
        || xdc_u64(&c, root, "epoch", &e->epoch))
        goto fail;
    if (!trade && xdc_u64(&c, root, "seq", &e->seq))
        goto fail;
    const xnode_t *id = xn_get(root, "id");
    if (xn_is(id, MPR_STR)) {
        e->id.is_str = true;
        if (!(e->id.s = xobj_strndup(e, id->o.v.raw.ptr, id->o.v.raw.len)))
            goto fail;
    } else if (xn_uint(id, &e->id.u)) {
        xdc_bad(&c, "id", "a string or an unsigned integer");
        goto fail;
    }
    const xnode_t *t = xn_get(root, "target");
    if (t) {
        if (xn_int(t, &e->target)) {
            xdc_bad(&c, "target", "an integer");
            goto fail;
        }
        e->has_target = true;
    }
    if (xn_get(root, "y")) {
        if (xdc_opt_num(&c, root, "y", &e->y))
            goto fail;
        e->has_y = true;
    }
    const xnode_t *a = xn_get(root, "attr");
    if (!xn_is(a, MPR_MAP)) {
        xdc_bad(&c, "attr", "a map");
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
            xdc_bad(&c, "attr", "a map with string keys");
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
        if (xdc_u32(&c, root, "n", &e->n) || xdc_cls(&c, root, &e->cls)
            || (xn_get(root, "features") && xdc_strs(&c, root, "features", &e->features, &e->nfeat))
            || s_matrices(&c, root, e))
            goto fail;
        if (e->cls >= 0 && (uint32_t)e->cls >= e->n) {
            xpl_fail(XPL_EPROTO, "%s: cls = %d for n = %u", what, e->cls, e->n);
            goto fail;
        }
        /* fewer features than tokens when the schema has groups */
        if (e->features && (e->nfeat > e->n - (e->cls >= 0 ? 1u : 0u) || e->nfeat == 0)) {
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
