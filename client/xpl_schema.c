/*  xpl_schema: a model's schema (the schema reply; the feature names an
    explanation is attached to).  */
#include "xpl_decode.h"

xpl_schema_t *
xpl_decode_schema(const xnode_t *root, const char *what)
{
    xpl_schema_t *s = xobj_new(sizeof *s);
    if (!s)
        return NULL;
    xdc_t c = {s, what};
    uint32_t ntok;
    const xnode_t *dt = xn_get(root, "dtype");
    if (xdc_str(&c, root, "model", &s->model) || xdc_u64(&c, root, "epoch", &s->epoch)
        || xdc_u32(&c, root, "L", &s->L) || xdc_u32(&c, root, "H", &s->H)
        || xdc_u32(&c, root, "n", &s->n) || xdc_cls(&c, root, &s->cls)
        || xdc_strs(&c, root, "tokens", &s->tokens, &ntok)
        || xdc_strs(&c, root, "features", &s->features, &s->nfeat))
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
