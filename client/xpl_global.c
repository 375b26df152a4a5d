/*  xpl_global: a model's global state (glob/ messages and the global
    reply).  */
#include "xpl_decode.h"

#include <math.h>
#include <string.h>

/* map method -> method-state; *nfeat fixed by the first vector seen when
   it is UINT32_MAX on entry. */
static int
s_method_states(xdc_t *c, const xnode_t *m, uint32_t *nfeat, const xpl_method_state_t **out,
                uint32_t *count)
{
    if (!xn_is(m, MPR_MAP))
        return xdc_bad(c, "methods", "a map");
    uint32_t n = xn_count(m);
    xpl_method_state_t *v = xobj_alloc(c->obj, (size_t)(n ? n : 1) * sizeof *v);
    if (!v)
        return -1;
    const xnode_t *k = xn_first(m);
    for (uint32_t i = 0; i < n; i++) {
        const xnode_t *st = xn_next(k);
        if (!xn_is(k, MPR_STR) || !xn_is(st, MPR_MAP))
            return xdc_bad(c, "methods", "a map of method name to state");
        if (!(v[i].method = xobj_strndup(c->obj, k->o.v.raw.ptr, k->o.v.raw.len))
            || xdc_u64(c, st, "count", &v[i].count)
            || xdc_doubles(c, xn_get(st, "mean"), "mean", &v[i].mean, nfeat)
            || xdc_doubles(c, xn_get(st, "std"), "std", &v[i].std, nfeat)
            || xdc_doubles(c, xn_get(st, "decayed"), "decayed", &v[i].decayed, nfeat))
            return -1;
        v[i].reference_spearman = NAN;
        if (xn_get(st, "reference")) {
            if (xdc_doubles(c, xn_get(st, "reference"), "reference", &v[i].reference, nfeat)
                || xdc_stat(c, st, "reference_spearman", &v[i].reference_spearman))
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
    xdc_t c = {g, what};
    uint32_t nfeat = UINT32_MAX;
    if (!xn_is(root, MPR_MAP)) {
        xpl_fail(XPL_EPROTO, "%s: body is not a map", what);
        goto fail;
    }
    if (xdc_str(&c, root, "model", &g->model) || xdc_u64(&c, root, "seq", &g->seq)
        || xdc_i64(&c, root, "ts", &g->ts) || xdc_u64(&c, root, "epoch", &g->epoch)
        || xdc_u64(&c, root, "count", &g->count)
        || xdc_opt_num(&c, root, "half_life", &g->half_life)
        || xdc_opt_u64(&c, root, "untracked_targets", &g->untracked_targets))
        goto fail;
    const xnode_t *sg = xn_get(root, "segment");
    if (sg && !xn_is(sg, MPR_NIL) && xdc_str(&c, root, "segment", &g->segment))
        goto fail;
    const xnode_t *f = xn_get(root, "features");
    if (f && !xn_is(f, MPR_NIL)) {
        if (xdc_strs(&c, root, "features", &g->features, &nfeat))
            goto fail;
    }
    if (s_method_states(&c, xn_get(root, "methods"), &nfeat, &g->methods, &g->nmethods))
        goto fail;
    const xnode_t *t = xn_get(root, "targets");
    if (t) {
        if (!xn_is(t, MPR_ARRAY)) {
            xdc_bad(&c, "targets", "an array");
            goto fail;
        }
        uint32_t nt = xn_count(t);
        xpl_target_state_t *ts = xobj_alloc(g, (size_t)(nt ? nt : 1) * sizeof *ts);
        if (!ts)
            goto fail;
        const xnode_t *e = xn_first(t);
        for (uint32_t i = 0; i < nt; i++, e = xn_next(e)) {
            if (xdc_i64(&c, e, "target", &ts[i].target)
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
