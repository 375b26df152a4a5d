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

/* The window in d->last has closed: compare it, or capture it as the
   baseline. */
static int
s_close(drift_t *d, drift_report_t *out)
{
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
    return s_close(d, out);
}

int
drift_close_mean(drift_t *d, const double *mean, drift_report_t *out)
{
    for (uint32_t j = 0; j < d->nfeat; j++)
        if (!isfinite(mean[j]))
            return -1;
    /* memmove: handing back d->last itself must not be undefined. */
    memmove(d->last, mean, d->nfeat * sizeof *d->last);
    return s_close(d, out);
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

/* ---- snapshots ---------------------------------------------------------- */

int
drift_ref_parse(const uint8_t *name, uint32_t len)
{
    for (int r = DRIFT_REF_NONE; r <= DRIFT_REF_EXTERNAL; r++) {
        const char *n = drift_ref_name((drift_ref_t)r);
        if (strlen(n) == len && memcmp(n, name, len) == 0)
            return r;
    }
    return -1;
}

void
drift_stat_save(msgpack_packer *pk, const drift_stat_t *st)
{
    msgpack_pack_map(pk, 3);
    snap_put_str(pk, "defined");
    st->defined ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    snap_put_str(pk, "alert");
    st->alert ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    snap_put_str(pk, "value");
    msgpack_pack_double(pk, st->value);
}

int
drift_stat_load(snap_rd_t *rd, drift_stat_t *st, unsigned ver)
{
    if (ver == SNAP_V1)
        return snap_get_array_n(rd, 3, "window statistic") ||
                       snap_get_bool(rd, &st->defined, "window statistic") ||
                       snap_get_bool(rd, &st->alert, "window statistic") ||
                       snap_get_f64(rd, &st->value, "window statistic")
                   ? -1
                   : 0;
    enum { DEFINED = 1, ALERT = 2, VALUE = 4 };
    uint32_t n;
    unsigned seen = 0;
    if (snap_get_map(rd, &n, "window statistic"))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(rd, &key, "window statistic field"))
            return -1;
        if (mpr_str_eq(&key, "defined"))
            rc = snap_field(rd, &seen, DEFINED, "window statistic defined") ||
                 snap_get_bool(rd, &st->defined, "window statistic defined");
        else if (mpr_str_eq(&key, "alert"))
            rc = snap_field(rd, &seen, ALERT, "window statistic alert") ||
                 snap_get_bool(rd, &st->alert, "window statistic alert");
        else if (mpr_str_eq(&key, "value"))
            rc = snap_field(rd, &seen, VALUE, "window statistic value") ||
                 snap_get_f64(rd, &st->value, "window statistic value");
        else
            rc = snap_skip(rd, "window statistic field");
        if (rc)
            return -1;
    }
    return snap_fields_all(rd, seen, DEFINED | ALERT | VALUE, "window statistic (a field is missing)");
}

void
drift_save(msgpack_packer *pk, const drift_t *d)
{
    msgpack_pack_map(pk, 8);
    snap_put_str(pk, "window");
    msgpack_pack_uint32(pk, d->window);
    snap_put_str(pk, "filled");
    msgpack_pack_uint32(pk, d->filled);
    snap_put_str(pk, "closed");
    msgpack_pack_uint64(pk, d->closed);
    snap_put_str(pk, "reference");
    snap_put_str(pk, drift_ref_name(d->ref_kind));
    snap_put_str(pk, "has_last");
    d->has_last ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    snap_put_str(pk, "sum");
    snap_put_doubles(pk, d->sum, d->nfeat);
    snap_put_str(pk, "last");
    snap_put_doubles(pk, d->last, d->nfeat);
    snap_put_str(pk, "ref");
    snap_put_doubles(pk, d->ref, d->nfeat);
}

/* The keyed record (SNAP_V2) into the out-parameters drift_load checks. */
static int
s_load_fields(snap_rd_t *rd, drift_t *d, uint64_t *window, uint64_t *filled, uint64_t *kind)
{
    enum { WINDOW = 1, FILLED = 2, CLOSED = 4, REF_KIND = 8, HAS_LAST = 16, SUM = 32, LAST = 64,
           REF = 128 };
    uint32_t n;
    unsigned seen = 0;
    if (snap_get_map(rd, &n, "drift"))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        const uint8_t *name;
        uint32_t len;
        if (snap_get_key(rd, &key, "drift field"))
            return -1;
        if (mpr_str_eq(&key, "window"))
            rc = snap_field(rd, &seen, WINDOW, "drift window") ||
                 snap_get_u64(rd, window, "drift window");
        else if (mpr_str_eq(&key, "filled"))
            rc = snap_field(rd, &seen, FILLED, "drift filled") ||
                 snap_get_u64(rd, filled, "drift filled");
        else if (mpr_str_eq(&key, "closed"))
            rc = snap_field(rd, &seen, CLOSED, "drift closed") ||
                 snap_get_u64(rd, &d->closed, "drift closed");
        else if (mpr_str_eq(&key, "reference")) {
            int r;
            rc = snap_field(rd, &seen, REF_KIND, "drift reference kind") ||
                 snap_get_str(rd, &name, &len, "drift reference kind") ||
                 ((r = drift_ref_parse(name, len)) < 0 &&
                  snap_fail(rd, "drift reference kind (unknown)"));
            if (!rc)
                *kind = (uint64_t)r;
        } else if (mpr_str_eq(&key, "has_last"))
            rc = snap_field(rd, &seen, HAS_LAST, "drift has_last") ||
                 snap_get_bool(rd, &d->has_last, "drift has_last");
        else if (mpr_str_eq(&key, "sum"))
            rc = snap_field(rd, &seen, SUM, "drift sums") ||
                 snap_get_doubles(rd, d->sum, d->nfeat, "drift sums");
        else if (mpr_str_eq(&key, "last"))
            rc = snap_field(rd, &seen, LAST, "drift last") ||
                 snap_get_doubles(rd, d->last, d->nfeat, "drift last");
        else if (mpr_str_eq(&key, "ref"))
            rc = snap_field(rd, &seen, REF, "drift reference") ||
                 snap_get_doubles(rd, d->ref, d->nfeat, "drift reference");
        else
            rc = snap_skip(rd, "drift field");
        if (rc)
            return -1;
    }
    return snap_fields_all(rd, seen, 255u, "drift (a field is missing)");
}

int
drift_load(snap_rd_t *rd, drift_t *d, unsigned ver)
{
    uint64_t window = 0, filled = 0, kind = 0;
    if (ver == SNAP_V1) {
        if (snap_get_array_n(rd, 8, "drift") || snap_get_u64(rd, &window, "drift window") ||
            snap_get_u64(rd, &filled, "drift filled") ||
            snap_get_u64(rd, &d->closed, "drift closed") ||
            snap_get_u64(rd, &kind, "drift reference kind") ||
            snap_get_bool(rd, &d->has_last, "drift has_last") ||
            snap_get_doubles(rd, d->sum, d->nfeat, "drift sums") ||
            snap_get_doubles(rd, d->last, d->nfeat, "drift last") ||
            snap_get_doubles(rd, d->ref, d->nfeat, "drift reference"))
            return -1;
    } else if (s_load_fields(rd, d, &window, &filled, &kind)) {
        return -1;
    }
    if (kind > DRIFT_REF_EXTERNAL || filled > window)
        return snap_fail(rd, "drift state");
    d->ref_kind = (drift_ref_t)kind;
    if (window == d->window) {
        d->filled = (uint32_t)filled;
    } else {
        /* The window size changed: the open window cannot be resumed. */
        d->filled = 0;
        memset(d->sum, 0, d->nfeat * sizeof *d->sum);
    }
    return 0;
}
