/*  drift: tumbling windows compared with a reference. See drift.h.  */
#include "drift.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void
drift_opts_default(drift_opts_t *o)
{
    o->rho_min = 0.8;
    o->ndcg_min = 0.9;      /* SageMaker Clarify's threshold */
    o->js_max = 0.1;
    o->ndcg_k = 10;
}

const char *
drift_ref_name(drift_ref_t r)
{
    switch (r) {
    case DRIFT_REF_NONE: return "none";
    case DRIFT_REF_BASELINE: return "baseline";
    case DRIFT_REF_PINNED: return "pinned";
    case DRIFT_REF_EXTERNAL: return "external";
    }
    return NULL;
}

int
drift_init(drift_t *d, uint32_t nfeat, uint32_t window, const drift_opts_t *opts)
{
    memset(d, 0, sizeof *d);
    rank_work_init(&d->rw);
    if (window == 0)
        return -1;
    /* Everything push will ever need, now: the rank scratch too. One
       spare value so that nfeat 0 still gets a block. */
    double *block = calloc(3 * (size_t)nfeat + 1, sizeof *block);
    if (!block || rank_work_reserve(&d->rw, nfeat) != RANK_OK) {
        free(block);
        rank_work_destroy(&d->rw);
        return -1;
    }
    d->nfeat = nfeat;
    d->window = window;
    if (opts)
        d->opts = *opts;
    else
        drift_opts_default(&d->opts);
    d->sum = block;
    d->last = block + nfeat;
    d->ref = block + 2 * (size_t)nfeat;
    return 0;
}

void
drift_destroy(drift_t *d)
{
    free(d->sum);
    rank_work_destroy(&d->rw);
    memset(d, 0, sizeof *d);
}

static void
s_stat(drift_stat_t *s, rank_status_t st, double value, bool crossed)
{
    s->defined = st == RANK_OK;
    s->value = s->defined ? value : 0;
    s->alert = s->defined && crossed;
}

/* Compare the closed window in d->last with the reference. */
static void
s_compare(drift_t *d, drift_report_t *out)
{
    double rho = 0, ndcg = 0, js = 0;
    rank_status_t st;
    st = rank_spearman(&d->rw, d->last, d->ref, d->nfeat, &rho);
    s_stat(&out->spearman, st, rho, rho < d->opts.rho_min);
    st = rank_ndcg(&d->rw, d->last, d->ref, d->nfeat, d->opts.ndcg_k, &ndcg);
    s_stat(&out->ndcg, st, ndcg, ndcg < d->opts.ndcg_min);
    st = rank_js(d->last, d->ref, d->nfeat, &js);
    s_stat(&out->js, st, js, js > d->opts.js_max);
    out->alert = out->spearman.alert || out->ndcg.alert || out->js.alert;
}

int
drift_push(drift_t *d, const float *x, drift_report_t *out)
{
    for (uint32_t j = 0; j < d->nfeat; j++)
        if (!isfinite(x[j]))
            return -1;
    for (uint32_t j = 0; j < d->nfeat; j++)
        d->sum[j] += x[j];
    if (++d->filled < d->window)
        return 0;

    for (uint32_t j = 0; j < d->nfeat; j++) {
        d->last[j] = d->sum[j] / d->window;
        d->sum[j] = 0;
    }
    d->filled = 0;
    d->has_last = true;
    memset(out, 0, sizeof *out);
    out->window = d->closed++;
    out->mean = d->last;
    if (d->ref_kind == DRIFT_REF_NONE) {
        memcpy(d->ref, d->last, d->nfeat * sizeof *d->ref);
        d->ref_kind = DRIFT_REF_BASELINE;
        out->ref = DRIFT_REF_BASELINE;
        return 1;
    }
    out->ref = d->ref_kind;
    out->compared = true;
    s_compare(d, out);
    return 1;
}

int
drift_push_mean(drift_t *d, const double *mean, drift_report_t *out)
{
    for (uint32_t j = 0; j < d->nfeat; j++)
        if (!isfinite(mean[j]))
            return -1;
    memcpy(d->last, mean, d->nfeat * sizeof *d->last);
    d->has_last = true;
    memset(out, 0, sizeof *out);
    out->window = d->closed++;
    out->mean = d->last;
    if (d->ref_kind == DRIFT_REF_NONE) {
        memcpy(d->ref, d->last, d->nfeat * sizeof *d->ref);
        d->ref_kind = DRIFT_REF_BASELINE;
        out->ref = DRIFT_REF_BASELINE;
        return 1;
    }
    out->ref = d->ref_kind;
    out->compared = true;
    s_compare(d, out);
    return 1;
}

int
drift_set_reference(drift_t *d, drift_ref_t kind, const double *ref)
{
    if (kind != DRIFT_REF_PINNED && kind != DRIFT_REF_EXTERNAL)
        return -1;
    for (uint32_t j = 0; j < d->nfeat; j++)
        if (!isfinite(ref[j]))
            return -1;
    /* memmove: handing back d->ref itself must not be undefined. */
    memmove(d->ref, ref, d->nfeat * sizeof *d->ref);
    d->ref_kind = kind;
    return 0;
}

void
drift_reset_reference(drift_t *d)
{
    d->ref_kind = DRIFT_REF_NONE;
}

void
drift_reset(drift_t *d)
{
    d->filled = 0;
    d->closed = 0;
    d->has_last = false;
    d->ref_kind = DRIFT_REF_NONE;
    memset(d->sum, 0, d->nfeat * sizeof *d->sum);
}
