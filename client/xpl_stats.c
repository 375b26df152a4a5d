/*  xpl_stats: the stats reply, the daemon's counters and latency.  */
#include "xpl_decode.h"

#include <string.h>

/* A map of str -> uint as counters. */
static int
s_counters(xdc_t *c, const xnode_t *root, const char *key, const xpl_counter_t **out,
           uint32_t *count)
{
    const xnode_t *m = xn_get(root, key);
    if (!xn_is(m, MPR_MAP))
        return xdc_bad(c, key, "a map of counters");
    uint32_t n = xn_count(m);
    xpl_counter_t *v = xobj_alloc(c->obj, (size_t)(n ? n : 1) * sizeof *v);
    if (!v)
        return -1;
    const xnode_t *k = xn_first(m);
    for (uint32_t i = 0; i < n; i++) {
        const xnode_t *val = xn_next(k);
        if (!xn_is(k, MPR_STR) || xn_uint(val, &v[i].value))
            return xdc_bad(c, key, "a map of str to unsigned integer");
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
    xdc_t c = {s, what};
    if (xdc_opt_num(&c, root, "uptime_s", &s->uptime_s)
        || s_counters(&c, root, "counters", &s->counters, &s->ncounters)
        || s_counters(&c, root, "rejected", &s->rejected_by_reason, &s->nreasons)
        || xdc_model_list(&c, root, &s->models, &s->nmodels))
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
        xdc_bad(&c, "latency_us", "a map");
        goto fail;
    }
    if (xdc_opt_u64(&c, lat, "count", &s->latency_us.count)
        || xdc_opt_num(&c, lat, "p50", &s->latency_us.p50)
        || xdc_opt_num(&c, lat, "p90", &s->latency_us.p90)
        || xdc_opt_num(&c, lat, "p99", &s->latency_us.p99)
        || xdc_opt_num(&c, lat, "p999", &s->latency_us.p999)
        || xdc_opt_num(&c, lat, "max", &s->latency_us.max))
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
