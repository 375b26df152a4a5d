/*  xpl_drift_state: a model's drift status (the drift reply).  */
#include "xpl_decode.h"

#include <string.h>

xpl_drift_state_t *
xpl_decode_drift_state(const xnode_t *root, const char *what)
{
    xpl_drift_state_t *d = xobj_new(sizeof *d);
    if (!d)
        return NULL;
    xdc_t c = {d, what};
    const xnode_t *th = xn_get(root, "thresholds");
    if (!xn_is(th, MPR_MAP)) {
        xdc_bad(&c, "thresholds", "a map");
        goto fail;
    }
    if (xdc_str(&c, root, "model", &d->model) || xdc_u64(&c, root, "epoch", &d->epoch)
        || xdc_u64(&c, root, "window", &d->window) || xdc_stat(&c, th, "rho_min", &d->rho_min)
        || xdc_stat(&c, th, "ndcg_min", &d->ndcg_min)
        || xdc_stat(&c, th, "js_max", &d->js_max) || xdc_u32(&c, th, "ndcg_k", &d->ndcg_k)
        || xdc_u64(&c, root, "alerts_total", &d->alerts_total))
        goto fail;
    const xnode_t *m = xn_get(root, "methods");
    if (!xn_is(m, MPR_MAP)) {
        xdc_bad(&c, "methods", "a map");
        goto fail;
    }
    uint32_t nm = xn_count(m);
    xpl_drift_method_t *ms = xobj_alloc(d, (size_t)(nm ? nm : 1) * sizeof *ms);
    xpl_verdict_t *vs = xobj_alloc(d, (size_t)(nm ? nm : 1) * sizeof *vs);
    if (!ms || !vs)
        goto fail;
    memset(vs, 0, (size_t)(nm ? nm : 1) * sizeof *vs);
    const xnode_t *k = xn_first(m);
    for (uint32_t i = 0; i < nm; i++) {
        const xnode_t *v = xn_next(k);
        if (!xn_is(k, MPR_STR) || !xn_is(v, MPR_MAP)) {
            xdc_bad(&c, "methods", "a map of method name to status");
            goto fail;
        }
        const xnode_t *last = xn_get(v, "last");
        if (!(ms[i].method = xobj_strndup(d, k->o.v.raw.ptr, k->o.v.raw.len))
            || xdc_str(&c, v, "reference", &ms[i].reference)
            || xdc_u64(&c, v, "filled", &ms[i].filled) || xdc_u64(&c, v, "windows", &ms[i].windows))
            goto fail;
        if (last && !xn_is(last, MPR_NIL)) {
            if (xdc_window(&c, last, &ms[i].last) || xdc_verdict(&c, last, &vs[i]))
                goto fail;
            ms[i].has_last = true;
        }
        k = xn_next(v);
    }
    d->methods = ms;
    d->verdicts = vs;
    d->nmethods = nm;
    /* Drift modes and segments: absent from an older daemon. */
    const xnode_t *mo = xn_get(root, "mode");
    if (xn_is(mo, MPR_MAP) && xdc_str(&c, mo, "mode", &d->mode))
        goto fail;
    const xnode_t *sg = xn_get(root, "segment");
    if (sg && !xn_is(sg, MPR_NIL) && xdc_str(&c, root, "segment", &d->segment))
        goto fail;
    if (xn_get(root, "segments")
        && (xdc_strs(&c, root, "segments", &d->segments, &d->nsegments)
            || xdc_u64(&c, root, "segments_overflow", &d->segments_overflow)))
        goto fail;
    const xnode_t *al = xn_get(root, "alerts");
    if (!xn_is(al, MPR_ARRAY)) {
        xdc_bad(&c, "alerts", "an array");
        goto fail;
    }
    uint32_t na = xn_count(al);
    xpl_alert_t *as = xobj_alloc(d, (size_t)(na ? na : 1) * sizeof *as);
    if (!as)
        goto fail;
    const xnode_t *e = xn_first(al);
    for (uint32_t i = 0; i < na; i++, e = xn_next(e)) {
        if (!xn_is(e, MPR_MAP)) {
            xdc_bad(&c, "alerts", "an array of maps");
            goto fail;
        }
        if (xdc_i64(&c, e, "ts", &as[i].ts)
            || xdc_u64(&c, e, "epoch", &as[i].epoch) || xdc_str(&c, e, "method", &as[i].method)
            || xdc_u64(&c, e, "window", &as[i].window)
            || xdc_str(&c, e, "reference", &as[i].reference)
            || xdc_stat(&c, e, "spearman", &as[i].spearman) || xdc_stat(&c, e, "ndcg", &as[i].ndcg)
            || xdc_stat(&c, e, "js", &as[i].js) || xdc_verdict(&c, e, &as[i].verdict))
            goto fail;
        const xnode_t *sa = xn_get(e, "segment");
        as[i].segment = NULL;
        if (sa && !xn_is(sa, MPR_NIL) && xdc_str(&c, e, "segment", &as[i].segment))
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
