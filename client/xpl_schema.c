/*  xpl_schema: a model's schema (the schema reply; the feature names an
    explanation is attached to).  */
#include "xpl_decode.h"

#include <string.h>

static int
s_token_index(const xpl_schema_t *s, const char *name)
{
    for (uint32_t j = 0; j < s->n; j++)
        if (strcmp(s->tokens[j], name) == 0)
            return (int)j;
    return -1;
}

/* "groups" (optional): a map of each group feature's name to its tokens'
   names; then feature_of, checked against the features: every group is
   a feature, every other token but CLS is the feature of its own name. */
static int
s_groups(xdc_t *c, const xnode_t *root, xpl_schema_t *s)
{
    int32_t *fo = xobj_alloc(s, (size_t)s->n * sizeof *fo);
    if (!fo)
        return -1;
    for (uint32_t j = 0; j < s->n; j++)
        fo[j] = -2;
    const xnode_t *g = xn_get(root, "groups");
    if (g && !xn_is(g, MPR_MAP))
        return xdc_bad(c, "groups", "a map of str to an array of strings");
    uint32_t ng = g ? xn_count(g) : 0;
    xpl_group_t *gs = xobj_alloc(s, (size_t)(ng ? ng : 1) * sizeof *gs);
    if (!gs)
        return -1;
    const xnode_t *k = g ? xn_first(g) : NULL;
    for (uint32_t i = 0; i < ng; i++) {
        const xnode_t *val = xn_next(k);
        if (!xn_is(k, MPR_STR) || !xn_is(val, MPR_ARRAY))
            return xdc_bad(c, "groups", "a map of str to an array of strings");
        if (!(gs[i].name = xobj_strndup(s, k->o.v.raw.ptr, k->o.v.raw.len)))
            return -1;
        uint32_t nt = xn_count(val);
        const char **tv = xobj_alloc(s, (size_t)(nt ? nt : 1) * sizeof *tv);
        if (!tv)
            return -1;
        int f = -1;
        for (uint32_t q = 0; q < s->nfeat; q++)
            if (strcmp(s->features[q], gs[i].name) == 0)
                f = (int)q;
        if (f < 0) {
            xpl_fail(XPL_EPROTO, "%s: group '%s' is not a feature", c->what, gs[i].name);
            return -1;
        }
        const xnode_t *e = xn_first(val);
        for (uint32_t q = 0; q < nt; q++, e = xn_next(e)) {
            if (!xn_is(e, MPR_STR))
                return xdc_bad(c, "groups", "a map of str to an array of strings");
            if (!(tv[q] = xobj_strndup(s, e->o.v.raw.ptr, e->o.v.raw.len)))
                return -1;
            int j = s_token_index(s, tv[q]);
            if (j < 0 || j == s->cls || fo[j] != -2) {
                xpl_fail(XPL_EPROTO, "%s: group '%s' names token '%s' %s", c->what, gs[i].name,
                         tv[q], j < 0 ? "that is not a token" : "twice or the CLS token");
                return -1;
            }
            fo[j] = f;
        }
        gs[i].tokens = tv;
        gs[i].ntokens = nt;
        k = xn_next(val);
    }
    for (uint32_t j = 0; j < s->n; j++) {
        if ((int32_t)j == s->cls) {
            fo[j] = -1;
            continue;
        }
        if (fo[j] != -2)
            continue;
        for (uint32_t q = 0; q < s->nfeat && fo[j] == -2; q++)
            if (strcmp(s->features[q], s->tokens[j]) == 0)
                fo[j] = (int32_t)q;
        if (fo[j] == -2) {
            xpl_fail(XPL_EPROTO, "%s: token '%s' is in no feature", c->what, s->tokens[j]);
            return -1;
        }
    }
    s->groups = gs;
    s->ngroups = ng;
    s->feature_of = fo;
    return 0;
}

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
    /* Groups make fewer features than tokens; without them, one a token. */
    const uint32_t most = s->n - (s->cls >= 0 ? 1u : 0u);
    const bool grouped = xn_get(root, "groups") != NULL;
    if ((s->cls >= 0 && (uint32_t)s->cls >= s->n) || s->nfeat > most ||
        (!grouped && s->nfeat != most) || s->nfeat == 0) {
        xpl_fail(XPL_EPROTO, "%s: %u features for n = %u, cls = %d", what, s->nfeat, s->n, s->cls);
        goto fail;
    }
    if (s_groups(&c, root, s))
        goto fail;
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
