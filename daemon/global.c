/*  global: global attributions, head statistics, drift: state only. See
    global.h and proto/global.md.  */
#include "global.h"

#include "log.h"
#include "stats.h"     /* now_wall_ns */

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* External references read from the reference file, waiting for their
   model's epoch (kept per model name: the model may not exist yet). */
typedef struct gpending_t {
    struct gpending_t *next;
    char model[WIRE_MODEL_MAX + 1];
    int method;
    uint32_t nf;
    double *values;
} pending_t;

static void
s_pending_clear(global_t *g)
{
    while (g->pending) {
        pending_t *p = g->pending;
        g->pending = p->next;
        free(p->values);
        free(p);
    }
}

int
global_init(global_t *g, uint32_t max_models, const global_params_t *p)
{
    memset(g, 0, sizeof *g);
    g->p = *p;
    g->cap = max_models;
    g->models = calloc(max_models, sizeof *g->models);
    return g->models ? 0 : -1;
}

static void
s_epoch_free(gepoch_t *e)
{
    if (!e)
        return;
    for (int m = 0; m < XM_NMETHODS; m++) {
        agg_destroy(&e->all[m]);
        drift_destroy(&e->drift[m]);
        evwin_destroy(&e->evw[m]);
        evdecay_destroy(&e->evd[m]);
        free(e->extref[m]);
        for (uint32_t c = 0; c < e->nclasses; c++) {
            agg_destroy(&e->classes[c].agg[m]);
            evdecay_destroy(&e->classes[c].evd[m]);
        }
    }
    free(e->classes);
    agg_heads_destroy(&e->heads);
    free(e);
}

void
global_destroy(global_t *g)
{
    for (uint32_t k = 0; g->models && k < g->cap; k++) {
        gmodel_t *gm = g->models[k];
        if (!gm)
            continue;
        for (int e = 0; e < MODEL_EPOCHS_KEPT; e++)
            s_epoch_free(gm->epochs[e]);
        free(gm->alerts);
        free(gm);
    }
    free(g->models);
    s_pending_clear(g);
    memset(g, 0, sizeof *g);
}

void
global_set_thresholds(global_t *g, const drift_opts_t *o)
{
    g->p.drift = *o;
    for (uint32_t k = 0; k < g->cap; k++) {
        gmodel_t *gm = g->models[k];
        for (int e = 0; gm && e < MODEL_EPOCHS_KEPT; e++)
            for (int m = 0; gm->epochs[e] && m < XM_NMETHODS; m++)
                gm->epochs[e]->drift[m].opts = *o;
    }
}

gmodel_t *
global_model(global_t *g, const model_t *md)
{
    if (md->index >= g->cap)
        return NULL;
    gmodel_t **slot = &g->models[md->index];
    if (!*slot) {
        gmodel_t *gm = calloc(1, sizeof *gm);
        if (!gm)
            return NULL;
        if (g->p.alerts_kept && !(gm->alerts = calloc(g->p.alerts_kept, sizeof *gm->alerts))) {
            free(gm);
            return NULL;
        }
        *slot = gm;
    }
    return *slot;
}

const gmodel_t *
global_model_const(const global_t *g, const model_t *md)
{
    return md->index < g->cap ? g->models[md->index] : NULL;
}

/* The state of `epoch` in gm's ring, or NULL. */
static gepoch_t *
s_epoch_find(const gmodel_t *gm, uint32_t epoch)
{
    gepoch_t *e = epoch ? gm->epochs[(epoch - 1) % MODEL_EPOCHS_KEPT] : NULL;
    return e && e->epoch == epoch ? e : NULL;
}

const gepoch_t *
global_current(const global_t *g, const model_t *md)
{
    const gmodel_t *gm = global_model_const(g, md);
    if (!gm || !md->cur)
        return NULL;
    return s_epoch_find(gm, md->cur->epoch);
}

/* The trade-count half-life of the aggregates: none when the decayed
   mean is by event time. */
static double
s_half_life(const global_t *g)
{
    return g->p.decay_ns > 0 ? 0 : g->p.half_life;
}

/* A class's aggregate of method m. */
static int
s_class_method(const global_t *g, gepoch_t *e, gclass_t *c, int m)
{
    if (agg_init(&c->agg[m], e->nf, s_half_life(g)))
        return -1;
    return g->p.decay_ns > 0 ? evdecay_init(&c->evd[m], e->nf, g->p.decay_ns) : 0;
}

/* Method state is created the first time the method shows up. */
static int
s_epoch_method(global_t *g, gepoch_t *e, int m)
{
    if (e->methods & XM_BIT(m))
        return 0;
    if (agg_init(&e->all[m], e->nf, s_half_life(g)) ||
        drift_init(&e->drift[m], e->nf, g->p.window, &g->p.drift))
        return -1;
    if (g->p.window_ns > 0 &&
        evwin_init(&e->evw[m], e->nf, g->p.window_ns, g->p.late_ns, GLOBAL_EVWIN_KEEP))
        return -1;
    if (g->p.decay_ns > 0 && evdecay_init(&e->evd[m], e->nf, g->p.decay_ns))
        return -1;
    for (uint32_t c = 0; c < e->nclasses; c++)
        if (s_class_method(g, e, &e->classes[c], m))
            return -1;
    e->methods |= XM_BIT(m);
    return 0;
}

gepoch_t *
global_epoch_method(global_t *g, gepoch_t *e, int m)
{
    return s_epoch_method(g, e, m) ? NULL : e;
}

gepoch_t *
global_epoch(global_t *g, const model_t *md, uint32_t epoch, bool create)
{
    gmodel_t *gm = global_model(g, md);
    if (!gm || epoch == 0)
        return NULL;
    gepoch_t **slot = &gm->epochs[(epoch - 1) % MODEL_EPOCHS_KEPT];
    if (*slot && (*slot)->epoch == epoch)
        return *slot;
    const schema_t *sc = model_schema(md, epoch);
    if (!create || !sc)
        return NULL;
    gepoch_t *e = calloc(1, sizeof *e);
    if (!e || agg_heads_init(&e->heads, sc->shape.L, sc->shape.H)) {
        free(e);
        return NULL;
    }
    e->epoch = epoch;
    e->nf = sc->nf;
    e->L = sc->shape.L;
    e->H = sc->shape.H;
    s_epoch_free(*slot);
    *slot = e;
    return e;
}

static gclass_t *
s_class(global_t *g, gepoch_t *e, int64_t target)
{
    for (uint32_t c = 0; c < e->nclasses; c++)
        if (e->classes[c].target == target)
            return &e->classes[c];
    if (e->nclasses >= g->p.max_targets)
        return NULL;
    if (e->nclasses == e->cap_classes) {
        uint32_t cap = e->cap_classes ? 2 * e->cap_classes : 4;
        gclass_t *c = realloc(e->classes, cap * sizeof *c);
        if (!c)
            return NULL;
        e->classes = c;
        e->cap_classes = cap;
    }
    gclass_t *c = &e->classes[e->nclasses];
    memset(c, 0, sizeof *c);
    c->target = target;
    for (int m = 0; m < XM_NMETHODS; m++)
        if ((e->methods & XM_BIT(m)) && s_class_method(g, e, c, m))
            return NULL;
    e->nclasses++;
    return c;
}

gclass_t *
global_class(global_t *g, gepoch_t *e, int64_t target)
{
    return s_class(g, e, target);
}

/* A window closed: keep it as the method's last, keep an alert for the
   drift query and log it, and hand it to the caller in `closed`. */
static void
s_record_window(global_t *g, const model_t *md, gmodel_t *gm, gepoch_t *e, int m,
                const drift_report_t *r, uint64_t window, uint64_t trades, global_closed_t *closed)
{
    int64_t ts = now_wall_ns();
    e->last[m] = (glast_t){.valid = true, .window = window, .ref = r->ref,
                           .compared = r->compared, .spearman = r->spearman, .ndcg = r->ndcg,
                           .js = r->js, .alert = r->alert, .ts = ts, .trades = trades};
    if (closed->n < GLOBAL_CLOSED_MAX)
        closed->w[closed->n++] = (gclosed_t){.method = m, .seq = gm->drift_seq++,
                                             .last = e->last[m]};
    if (!r->alert)
        return;
    if (gm->alerts) {
        gm->alerts[gm->alerts_next] = (galert_t){.ts = ts, .epoch = e->epoch, .method = (uint8_t)m,
                                                 .window = r->window, .ref = r->ref,
                                                 .spearman = r->spearman, .ndcg = r->ndcg,
                                                 .js = r->js};
        gm->alerts_next = (gm->alerts_next + 1) % g->p.alerts_kept;
        if (gm->alerts_count < g->p.alerts_kept)
            gm->alerts_count++;
    }
    gm->alerts_total++;
    log_limited(LOGK_DRIFT_ALERT, LOG_WARN_,
                "drift: model '%s' epoch %" PRIu32 " %s window %" PRIu64 " vs %s: rho %.3f, "
                "nDCG %.3f, JS %.3f: ALERT", md->name, e->epoch, xm_method_name((xm_method_t)m),
                window, drift_ref_name(r->ref), r->spearman.defined ? r->spearman.value : NAN,
                r->ndcg.defined ? r->ndcg.value : NAN, r->js.defined ? r->js.value : NAN);
}

static void s_apply_pending(global_t *g, const model_t *md, gepoch_t *e);

/* An event-time window closing, through evwin's callback. */
typedef struct {
    global_t *g;
    const model_t *md;
    gepoch_t *e;
    int m;
    global_closed_t *closed;
} s_close_ctx_t;

static void
s_on_close(void *arg, const evwin_view_t *v)
{
    s_close_ctx_t *c = arg;
    global_close_window(c->g, c->md, c->e, c->m, v, c->closed);
}

void
global_close_window(global_t *g, const model_t *md, gepoch_t *e, int m, const evwin_view_t *v,
                    global_closed_t *closed)
{
    gmodel_t *gm = global_model(g, md);
    drift_report_t r;
    if (!gm || drift_push_mean(&e->drift[m], v->mean, &r) != 1)
        return;
    /* The window's own index (its start over its length): the same in
       every daemon whatever it saw first. */
    s_record_window(g, md, gm, e, m, &r, (uint64_t)v->k, v->count, closed);
    gm->dirty = true;
    g->gen++;
}

void
global_add(global_t *g, const model_t *md, const int64_t *target, const xm_result_t *res,
           global_closed_t *closed)
{
    const int64_t ts = md->last_ts;
    closed->n = 0;
    closed->epoch = md->cur->epoch;
    gmodel_t *gm = global_model(g, md);
    gepoch_t *e = gm ? s_epoch_find(gm, md->cur->epoch) : NULL;
    if (gm && !e) {
        /* A new epoch: the file references for it apply now, once. */
        if ((e = global_epoch(g, md, md->cur->epoch, true)))
            s_apply_pending(g, md, e);
    }
    if (!gm || !e) {
        log_limited(LOGK_GLOBAL_OOM, LOG_ERR_, "global: out of memory for model '%s'", md->name);
        return;
    }
    gclass_t *c = NULL;
    if (target && !(c = s_class(g, e, *target)))
        e->untracked++;
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(res->computed & XM_BIT(m)))
            continue;
        if (s_epoch_method(g, e, m)) {
            log_limited(LOGK_GLOBAL_OOM, LOG_ERR_, "global: out of memory for model '%s'", md->name);
            return;
        }
        agg_update(&e->all[m], res->attr[m]);
        if (c)
            agg_update(&c->agg[m], res->attr[m]);
        if (g->p.decay_ns > 0) {
            evdecay_add(&e->evd[m], ts, res->attr[m]);
            if (c)
                evdecay_add(&c->evd[m], ts, res->attr[m]);
        }
        if (g->p.window_ns > 0) {
            s_close_ctx_t cc = {g, md, e, m, closed};
            evwin_add(&e->evw[m], ts, res->attr[m], s_on_close, &cc);
            continue;
        }
        drift_report_t r;
        if (drift_push(&e->drift[m], res->attr[m], &r) == 1)
            s_record_window(g, md, gm, e, m, &r, r.window, g->p.window, closed);
    }
    agg_heads_update(&e->heads, res->head_importance, res->head_confidence);
    e->count++;
    gm->dirty = true;
    g->gen++;
}

/* ---- topic seqs -------------------------------------------------------- */

const gepoch_t *
global_take_changed(global_t *g, const model_t *md)
{
    gmodel_t *gm = md->index < g->cap ? g->models[md->index] : NULL;
    if (!gm || !gm->dirty)
        return NULL;
    const gepoch_t *e = s_epoch_find(gm, md->cur->epoch);
    if (e)
        gm->dirty = false;
    return e;
}

uint64_t
global_glob_seq(const global_t *g, const model_t *md)
{
    const gmodel_t *gm = global_model_const(g, md);
    return gm ? gm->glob_seq : 0;
}

void
global_glob_sent(global_t *g, const model_t *md, int64_t ts)
{
    gmodel_t *gm = global_model(g, md);
    if (!gm)
        return;
    gm->glob_seq++;
    gm->glob_ts = ts;
}

uint64_t
global_heads_seq_next(global_t *g, const model_t *md)
{
    gmodel_t *gm = global_model(g, md);
    return gm ? gm->heads_seq++ : 0;
}

/* ---- references -------------------------------------------------------- */

unsigned
global_baseline(global_t *g, gepoch_t *e, unsigned mask, bool pin)
{
    for (int k = 0; k < XM_NMETHODS; k++) {
        if (!(mask & XM_BIT(k)))
            continue;
        if (pin) {
            if (e->all[k].count == 0 ||
                drift_set_reference(&e->drift[k], DRIFT_REF_PINNED, e->all[k].mean))
                mask &= ~XM_BIT(k);
        } else {
            drift_reset_reference(&e->drift[k]);
        }
    }
    g->gen++;
    return mask;
}

static int
s_set_extref(global_t *g, gepoch_t *e, int m, const double *values)
{
    if (s_epoch_method(g, e, m))
        return -1;
    if (!e->extref[m] && !(e->extref[m] = malloc(e->nf * sizeof(double))))
        return -1;
    memcpy(e->extref[m], values, e->nf * sizeof(double));
    if (drift_set_reference(&e->drift[m], DRIFT_REF_EXTERNAL, values))
        return -1;
    return 0;
}

int
global_set_reference(global_t *g, const model_t *md, gepoch_t *e, int m, const double *values)
{
    if (s_set_extref(g, e, m, values))
        return -1;
    gmodel_t *gm = global_model(g, md);
    if (gm)
        gm->dirty = true;
    g->gen++;
    return 0;
}

/* Apply the pending file references of md to its epoch e. */
static void
s_apply_pending(global_t *g, const model_t *md, gepoch_t *e)
{
    for (pending_t *p = g->pending; p; p = p->next) {
        if (strcmp(p->model, md->name) != 0)
            continue;
        if (p->nf != e->nf) {
            log_warn("reference file: model '%s' %s has %" PRIu32 " values but epoch %" PRIu32
                     " has %" PRIu32 " features; not applied", md->name,
                     xm_method_name((xm_method_t)p->method), p->nf, e->epoch, e->nf);
            continue;
        }
        if (s_set_extref(g, e, p->method, p->values) != 0)
            continue;
        g->gen++;
        log_info("reference file: applied %s reference to model '%s' epoch %" PRIu32,
                     xm_method_name((xm_method_t)p->method), md->name, e->epoch);
    }
    global_model(g, md)->dirty = true;
}

int
global_load_references(global_t *g, const models_t *models, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        log_err("reference file %s: %s", path, strerror(errno));
        return -1;
    }
    s_pending_clear(g);
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, count = 0, bad = 0;
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        char *save = NULL, *tok = strtok_r(line, " \t\r\n", &save);
        if (!tok || tok[0] == '#')
            continue;
        char *mname = strtok_r(NULL, " \t\r\n", &save);
        int m = mname ? xm_method_parse(mname, strlen(mname)) : -1;
        if (!wire_model_name_ok(tok, strlen(tok)) || m < 0) {
            log_err("reference file %s:%d: expected '<model> <method> <values...>'", path, lineno);
            bad++;
            continue;
        }
        pending_t *p = calloc(1, sizeof *p);
        if (!p)
            break;
        snprintf(p->model, sizeof p->model, "%s", tok);
        p->method = m;
        uint32_t capv = 0;
        char *v;
        while ((v = strtok_r(NULL, " \t\r\n,", &save))) {
            char *end;
            double x = strtod(v, &end);
            if (*end || !isfinite(x)) {
                log_err("reference file %s:%d: '%s' is not a finite number", path, lineno, v);
                bad++;
                p->nf = 0;
                break;
            }
            if (p->nf == capv) {
                capv = capv ? 2 * capv : 16;
                double *nv = realloc(p->values, capv * sizeof *nv);
                if (!nv)
                    break;
                p->values = nv;
            }
            p->values[p->nf++] = x;
        }
        if (p->nf == 0) {
            free(p->values);
            free(p);
            continue;
        }
        p->next = g->pending;
        g->pending = p;
        count++;
    }
    free(line);
    fclose(f);
    if (bad)
        return -1;
    for (uint32_t k = 0; k < models->count; k++) {
        const model_t *md = models->items[k];
        gepoch_t *e = global_epoch(g, md, md->cur->epoch, true);
        if (e)
            s_apply_pending(g, md, e);
    }
    log_info("reference file %s: %d reference(s) read", path, count);
    return count;
}

/* ---- snapshots ---------------------------------------------------------
   The global state writes and reads its own records (snap.h); state.c
   holds the container. Records are keyed maps; SNAP_V1 reads the first
   format's positional arrays. */

static void
s_put_bool(msgpack_packer *pk, bool b)
{
    b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}

/* A method or reference kind written by name, read back by name. */
static int
s_get_method(snap_rd_t *d, int *m, const char *what)
{
    const uint8_t *p;
    uint32_t len;
    if (snap_get_str(d, &p, &len, what) || (*m = xm_method_parse((const char *)p, len)) < 0)
        return snap_fail(d, what);
    return 0;
}

static int
s_get_ref(snap_rd_t *d, drift_ref_t *r, unsigned ver, const char *what)
{
    if (ver == SNAP_V1) {
        uint64_t u;
        if (snap_get_u64(d, &u, what) || u > DRIFT_REF_EXTERNAL)
            return snap_fail(d, what);
        *r = (drift_ref_t)u;
        return 0;
    }
    const uint8_t *p;
    uint32_t len;
    int k;
    if (snap_get_str(d, &p, &len, what) || (k = drift_ref_parse(p, len)) < 0)
        return snap_fail(d, what);
    *r = (drift_ref_t)k;
    return 0;
}

/* Last closed window: nil, or {window, reference, compared, spearman,
   ndcg, js, alert, ts}. */
static void
s_last_save(msgpack_packer *pk, const glast_t *l)
{
    if (!l->valid) {
        msgpack_pack_nil(pk);
        return;
    }
    msgpack_pack_map(pk, 8);
    snap_put_str(pk, "window");
    msgpack_pack_uint64(pk, l->window);
    snap_put_str(pk, "reference");
    snap_put_str(pk, drift_ref_name(l->ref));
    snap_put_str(pk, "compared");
    s_put_bool(pk, l->compared);
    snap_put_str(pk, "spearman");
    drift_stat_save(pk, &l->spearman);
    snap_put_str(pk, "ndcg");
    drift_stat_save(pk, &l->ndcg);
    snap_put_str(pk, "js");
    drift_stat_save(pk, &l->js);
    snap_put_str(pk, "alert");
    s_put_bool(pk, l->alert);
    snap_put_str(pk, "ts");
    msgpack_pack_int64(pk, l->ts);
}

static int
s_last_load(snap_rd_t *d, glast_t *l, unsigned ver)
{
    if (snap_get_nil(d))
        return 0;
    const char *w = "last window";
    if (ver == SNAP_V1) {
        if (snap_get_array_n(d, 8, w) || snap_get_u64(d, &l->window, w) ||
            s_get_ref(d, &l->ref, ver, w) || snap_get_bool(d, &l->compared, w) ||
            drift_stat_load(d, &l->spearman, ver) || drift_stat_load(d, &l->ndcg, ver) ||
            drift_stat_load(d, &l->js, ver) || snap_get_bool(d, &l->alert, w) ||
            snap_get_i64(d, &l->ts, w))
            return snap_fail(d, w);
        l->valid = true;
        return 0;
    }
    enum { WINDOW = 1, REF = 2, COMPARED = 4, SPEARMAN = 8, NDCG = 16, JS = 32, ALERT = 64,
           TS = 128 };
    uint32_t n;
    unsigned seen = 0;
    if (snap_get_map(d, &n, w))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(d, &key, w))
            return -1;
        if (mpr_str_eq(&key, "window"))
            rc = snap_field(d, &seen, WINDOW, w) || snap_get_u64(d, &l->window, w);
        else if (mpr_str_eq(&key, "reference"))
            rc = snap_field(d, &seen, REF, w) || s_get_ref(d, &l->ref, ver, w);
        else if (mpr_str_eq(&key, "compared"))
            rc = snap_field(d, &seen, COMPARED, w) || snap_get_bool(d, &l->compared, w);
        else if (mpr_str_eq(&key, "spearman"))
            rc = snap_field(d, &seen, SPEARMAN, w) || drift_stat_load(d, &l->spearman, ver);
        else if (mpr_str_eq(&key, "ndcg"))
            rc = snap_field(d, &seen, NDCG, w) || drift_stat_load(d, &l->ndcg, ver);
        else if (mpr_str_eq(&key, "js"))
            rc = snap_field(d, &seen, JS, w) || drift_stat_load(d, &l->js, ver);
        else if (mpr_str_eq(&key, "alert"))
            rc = snap_field(d, &seen, ALERT, w) || snap_get_bool(d, &l->alert, w);
        else if (mpr_str_eq(&key, "ts"))
            rc = snap_field(d, &seen, TS, w) || snap_get_i64(d, &l->ts, w);
        else
            rc = snap_skip(d, w);
        if (rc)
            return -1;
    }
    if (snap_fields_all(d, seen, 255u, "last window (a field is missing)"))
        return -1;
    l->valid = true;
    return 0;
}

/* An external reference: nil, or nf values (a copy the epoch owns). */
static int
s_extref_load(snap_rd_t *d, gepoch_t *e, int m)
{
    if (snap_get_nil(d))
        return 0;
    double *ref = malloc(e->nf * sizeof(double) + 1);
    if (!ref)
        return snap_fail(d, "external reference (out of memory)");
    if (snap_get_doubles(d, ref, e->nf, "external reference")) {
        free(ref);
        return -1;
    }
    free(e->extref[m]);
    e->extref[m] = ref;
    return 0;
}

/* Create method m's state the way global_add does, once. */
static int
s_method_new(snap_rd_t *d, global_t *g, gepoch_t *e, int m)
{
    if (e->methods & XM_BIT(m))
        return snap_fail(d, "method (given twice)");
    if (s_epoch_method(g, e, m))
        return snap_fail(d, "method state (out of memory)");
    return 0;
}

/* Event-time windows or decayed sums of a snapshot into w or d when that
   mode is on now and was made with today's length, lateness and
   half-life; else skipped (logged): the state then starts empty, the
   rest of the snapshot still loads. */
static int
s_evtime_load(snap_rd_t *d, evwin_t *w, evdecay_t *dec)
{
    if ((w && !w->key) || (dec && !dec->sum))
        return snap_skip(d, "event-time state");
    snap_rd_t probe = *d;
    if (w ? evwin_load(&probe, w) == 0 : evdecay_load(&probe, dec) == 0) {
        *d = probe;
        return 0;
    }
    log_warn("state: %s in the snapshot not restored (%s): starting it empty",
             w ? "event-time windows" : "time-decayed means", probe.why ? probe.why : "unreadable");
    if (w)
        evwin_reset(w);
    else
        evdecay_reset(dec);
    return snap_skip(d, "event-time state");
}

/* One method of an epoch: {all, drift, extref, last}. */
static int
s_method_load(snap_rd_t *d, gepoch_t *e, int m)
{
    enum { ALL = 1, DRIFT = 2, EXTREF = 4, LAST = 8 };
    uint32_t n;
    unsigned seen = 0;
    if (snap_get_map(d, &n, "method"))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(d, &key, "method field"))
            return -1;
        if (mpr_str_eq(&key, "all"))
            rc = snap_field(d, &seen, ALL, "method aggregate") ||
                 agg_load(d, &e->all[m], SNAP_V2);
        else if (mpr_str_eq(&key, "drift"))
            rc = snap_field(d, &seen, DRIFT, "method drift") ||
                 drift_load(d, &e->drift[m], SNAP_V2);
        else if (mpr_str_eq(&key, "extref"))
            rc = snap_field(d, &seen, EXTREF, "external reference") || s_extref_load(d, e, m);
        else if (mpr_str_eq(&key, "last"))
            rc = snap_field(d, &seen, LAST, "last window") ||
                 s_last_load(d, &e->last[m], SNAP_V2);
        else if (mpr_str_eq(&key, "evw"))
            rc = s_evtime_load(d, &e->evw[m], NULL);
        else if (mpr_str_eq(&key, "evd"))
            rc = s_evtime_load(d, NULL, &e->evd[m]);
        else
            rc = snap_skip(d, "method field");
        if (rc)
            return -1;
    }
    return snap_fields_all(d, seen, ALL | DRIFT, "method (aggregate or drift missing)");
}

/* A new target class (s_class makes it, with every method's aggregate). */
static gclass_t *
s_class_new(snap_rd_t *d, global_t *g, gepoch_t *e, int64_t target)
{
    uint32_t before = e->nclasses;
    gclass_t *c = s_class(g, e, target);
    if (!c || e->nclasses == before) {
        snap_fail(d, "target classes");
        return NULL;
    }
    return c;
}

/* {target, methods: {name: agg}}, every method of the epoch present. */
static int
s_class_load(snap_rd_t *d, global_t *g, gepoch_t *e)
{
    enum { TARGET = 1, METHODS = 2, DECAY = 4 };
    uint32_t n;
    unsigned seen = 0;
    int64_t target = 0;
    mpr_t methods_at = {0}, decay_at = {0};
    if (snap_get_map(d, &n, "target class"))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(d, &key, "target class field"))
            return -1;
        if (mpr_str_eq(&key, "target")) {
            rc = snap_field(d, &seen, TARGET, "target") || snap_get_i64(d, &target, "target");
        } else if (mpr_str_eq(&key, "methods")) {
            methods_at = d->r;   /* read once the class exists */
            rc = snap_field(d, &seen, METHODS, "target class aggregates") ||
                 snap_skip(d, "target class aggregates");
        } else if (mpr_str_eq(&key, "decay")) {
            decay_at = d->r;
            rc = snap_field(d, &seen, DECAY, "target class decay") ||
                 snap_skip(d, "target class decay");
        } else {
            rc = snap_skip(d, "target class field");
        }
        if (rc)
            return -1;
    }
    if (snap_fields_all(d, seen, TARGET | METHODS, "target class (a field is missing)"))
        return -1;
    gclass_t *c = s_class_new(d, g, e, target);
    if (!c)
        return -1;
    mpr_t after = d->r;
    d->r = methods_at;
    uint32_t nm;
    unsigned got = 0;
    if (snap_get_map(d, &nm, "target class aggregates"))
        return -1;
    for (uint32_t k = 0; k < nm; k++) {
        int m;
        if (s_get_method(d, &m, "target class method") || !(e->methods & XM_BIT(m)) ||
            snap_field(d, &got, XM_BIT(m), "target class method"))
            return snap_fail(d, "target class method");
        if (agg_load(d, &c->agg[m], SNAP_V2))
            return -1;
    }
    if (got != e->methods)
        return snap_fail(d, "target class aggregates (a method is missing)");
    if (seen & DECAY) {
        d->r = decay_at;
        if (snap_get_map(d, &nm, "target class decay"))
            return -1;
        for (uint32_t k = 0; k < nm; k++) {
            int m;
            if (s_get_method(d, &m, "target class method") || !(e->methods & XM_BIT(m)))
                return snap_fail(d, "target class decay method");
            if (s_evtime_load(d, NULL, &c->evd[m]))
                return -1;
        }
    }
    d->r = after;
    return 0;
}

void
gepoch_save(msgpack_packer *pk, const gepoch_t *e)
{
    msgpack_pack_map(pk, 5);
    snap_put_str(pk, "count");
    msgpack_pack_uint64(pk, e->count);
    snap_put_str(pk, "untracked");
    msgpack_pack_uint64(pk, e->untracked);
    snap_put_str(pk, "methods");
    msgpack_pack_map(pk, (size_t)__builtin_popcount(e->methods));
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(e->methods & XM_BIT(m)))
            continue;
        snap_put_str(pk, xm_method_name((xm_method_t)m));
        bool evw = e->evw[m].key != NULL, evd = e->evd[m].sum != NULL;
        msgpack_pack_map(pk, 4 + (evw ? 1 : 0) + (evd ? 1 : 0));
        /* Event-time state, when that mode is on (keys older readers skip). */
        if (evw) {
            snap_put_str(pk, "evw");
            evwin_save(pk, &e->evw[m]);
        }
        if (evd) {
            snap_put_str(pk, "evd");
            evdecay_save(pk, &e->evd[m]);
        }
        snap_put_str(pk, "all");
        agg_save(pk, &e->all[m]);
        snap_put_str(pk, "drift");
        drift_save(pk, &e->drift[m]);
        snap_put_str(pk, "extref");
        if (e->extref[m])
            snap_put_doubles(pk, e->extref[m], e->nf);
        else
            msgpack_pack_nil(pk);
        snap_put_str(pk, "last");
        s_last_save(pk, &e->last[m]);
    }
    snap_put_str(pk, "classes");
    msgpack_pack_array(pk, e->nclasses);
    for (uint32_t c = 0; c < e->nclasses; c++) {
        /* "decay": the class's time-decayed sums, when that mode is on. */
        bool evd = false;
        for (int m = 0; m < XM_NMETHODS; m++)
            evd = evd || ((e->methods & XM_BIT(m)) && e->classes[c].evd[m].sum);
        msgpack_pack_map(pk, evd ? 3 : 2);
        snap_put_str(pk, "target");
        msgpack_pack_int64(pk, e->classes[c].target);
        snap_put_str(pk, "methods");
        msgpack_pack_map(pk, (size_t)__builtin_popcount(e->methods));
        for (int m = 0; m < XM_NMETHODS; m++) {
            if (!(e->methods & XM_BIT(m)))
                continue;
            snap_put_str(pk, xm_method_name((xm_method_t)m));
            agg_save(pk, &e->classes[c].agg[m]);
        }
        if (evd) {
            snap_put_str(pk, "decay");
            msgpack_pack_map(pk, (size_t)__builtin_popcount(e->methods));
            for (int m = 0; m < XM_NMETHODS; m++) {
                if (!(e->methods & XM_BIT(m)))
                    continue;
                snap_put_str(pk, xm_method_name((xm_method_t)m));
                evdecay_save(pk, &e->classes[c].evd[m]);
            }
        }
    }
    snap_put_str(pk, "heads");
    agg_heads_save(pk, &e->heads);
}

/* The first format: [count, untracked, [[name, agg, drift, extref, last]],
   [[target, [agg per method, in the order above]]], importance,
   confidence]. */
static int
s_epoch_load_v1(snap_rd_t *d, global_t *g, gepoch_t *e)
{
    uint32_t nm, nc;
    if (snap_get_array_n(d, 6, "epoch state") || snap_get_u64(d, &e->count, "epoch count") ||
        snap_get_u64(d, &e->untracked, "epoch untracked") || snap_get_array(d, &nm, "methods"))
        return -1;
    int order[XM_NMETHODS];
    for (uint32_t k = 0; k < nm; k++) {
        int m;
        if (k >= XM_NMETHODS || snap_get_array_n(d, 5, "method") ||
            s_get_method(d, &m, "method name") || s_method_new(d, g, e, m))
            return snap_fail(d, "method");
        order[k] = m;
        if (agg_load(d, &e->all[m], SNAP_V1) || drift_load(d, &e->drift[m], SNAP_V1) ||
            s_extref_load(d, e, m) || s_last_load(d, &e->last[m], SNAP_V1))
            return -1;
    }
    if (snap_get_array(d, &nc, "target classes"))
        return -1;
    for (uint32_t c = 0; c < nc; c++) {
        int64_t target;
        gclass_t *gc;
        if (snap_get_array_n(d, 2, "target class") || snap_get_i64(d, &target, "target") ||
            snap_get_array_n(d, nm, "target class aggregates") ||
            !(gc = s_class_new(d, g, e, target)))
            return snap_fail(d, "target class");
        for (uint32_t k = 0; k < nm; k++)
            if (agg_load(d, &gc->agg[order[k]], SNAP_V1))
                return -1;
    }
    return agg_heads_load(d, &e->heads, SNAP_V1);
}

int
gepoch_load(snap_rd_t *d, global_t *g, gepoch_t *e, unsigned ver)
{
    if (ver == SNAP_V1)
        return s_epoch_load_v1(d, g, e);
    enum { COUNT = 1, UNTRACKED = 2, METHODS = 4, CLASSES = 8, HEADS = 16 };
    uint32_t n;
    unsigned seen = 0;
    mpr_t classes_at = {0};
    if (snap_get_map(d, &n, "epoch state"))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(d, &key, "epoch state field"))
            return -1;
        if (mpr_str_eq(&key, "count")) {
            rc = snap_field(d, &seen, COUNT, "epoch count") ||
                 snap_get_u64(d, &e->count, "epoch count");
        } else if (mpr_str_eq(&key, "untracked")) {
            rc = snap_field(d, &seen, UNTRACKED, "epoch untracked") ||
                 snap_get_u64(d, &e->untracked, "epoch untracked");
        } else if (mpr_str_eq(&key, "methods")) {
            uint32_t nm;
            rc = snap_field(d, &seen, METHODS, "methods") || snap_get_map(d, &nm, "methods");
            for (uint32_t j = 0; !rc && j < nm; j++) {
                int m;
                rc = s_get_method(d, &m, "method name") || s_method_new(d, g, e, m) ||
                     s_method_load(d, e, m);
            }
        } else if (mpr_str_eq(&key, "classes")) {
            classes_at = d->r;   /* read after the methods: a class has one agg per method */
            rc = snap_field(d, &seen, CLASSES, "target classes") ||
                 snap_skip(d, "target classes");
        } else if (mpr_str_eq(&key, "heads")) {
            rc = snap_field(d, &seen, HEADS, "head statistics") ||
                 agg_heads_load(d, &e->heads, ver);
        } else {
            rc = snap_skip(d, "epoch state field");
        }
        if (rc)
            return -1;
    }
    if (snap_fields_all(d, seen, 31u, "epoch state (a field is missing)"))
        return -1;
    mpr_t after = d->r;
    d->r = classes_at;
    uint32_t nc;
    if (snap_get_array(d, &nc, "target classes"))
        return -1;
    for (uint32_t c = 0; c < nc; c++)
        if (s_class_load(d, g, e))
            return -1;
    d->r = after;
    return 0;
}

/* One alert: {ts, epoch, method, window, reference, spearman, ndcg, js};
   SNAP_V1 the same as an array, method and reference as numbers. */
static void
s_alert_save(msgpack_packer *pk, const galert_t *a)
{
    msgpack_pack_map(pk, 8);
    snap_put_str(pk, "ts");
    msgpack_pack_int64(pk, a->ts);
    snap_put_str(pk, "epoch");
    msgpack_pack_uint32(pk, a->epoch);
    snap_put_str(pk, "method");
    snap_put_str(pk, xm_method_name((xm_method_t)a->method));
    snap_put_str(pk, "window");
    msgpack_pack_uint64(pk, a->window);
    snap_put_str(pk, "reference");
    snap_put_str(pk, drift_ref_name(a->ref));
    snap_put_str(pk, "spearman");
    drift_stat_save(pk, &a->spearman);
    snap_put_str(pk, "ndcg");
    drift_stat_save(pk, &a->ndcg);
    snap_put_str(pk, "js");
    drift_stat_save(pk, &a->js);
}

static int
s_alert_load(snap_rd_t *d, galert_t *a, unsigned ver)
{
    const char *w = "alert";
    int m = 0;
    if (ver == SNAP_V1) {
        uint64_t method;
        if (snap_get_array_n(d, 8, w) || snap_get_i64(d, &a->ts, w) ||
            snap_get_u32(d, &a->epoch, w) || snap_get_u64(d, &method, w) ||
            snap_get_u64(d, &a->window, w) || s_get_ref(d, &a->ref, ver, w) ||
            drift_stat_load(d, &a->spearman, ver) || drift_stat_load(d, &a->ndcg, ver) ||
            drift_stat_load(d, &a->js, ver) || method >= XM_NMETHODS)
            return snap_fail(d, w);
        a->method = (uint8_t)method;
        return 0;
    }
    enum { TS = 1, EPOCH = 2, METHOD = 4, WINDOW = 8, REF = 16, SPEARMAN = 32, NDCG = 64, JS = 128 };
    uint32_t n;
    unsigned seen = 0;
    if (snap_get_map(d, &n, w))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(d, &key, w))
            return -1;
        if (mpr_str_eq(&key, "ts"))
            rc = snap_field(d, &seen, TS, w) || snap_get_i64(d, &a->ts, w);
        else if (mpr_str_eq(&key, "epoch"))
            rc = snap_field(d, &seen, EPOCH, w) || snap_get_u32(d, &a->epoch, w);
        else if (mpr_str_eq(&key, "method"))
            rc = snap_field(d, &seen, METHOD, w) || s_get_method(d, &m, w);
        else if (mpr_str_eq(&key, "window"))
            rc = snap_field(d, &seen, WINDOW, w) || snap_get_u64(d, &a->window, w);
        else if (mpr_str_eq(&key, "reference"))
            rc = snap_field(d, &seen, REF, w) || s_get_ref(d, &a->ref, ver, w);
        else if (mpr_str_eq(&key, "spearman"))
            rc = snap_field(d, &seen, SPEARMAN, w) || drift_stat_load(d, &a->spearman, ver);
        else if (mpr_str_eq(&key, "ndcg"))
            rc = snap_field(d, &seen, NDCG, w) || drift_stat_load(d, &a->ndcg, ver);
        else if (mpr_str_eq(&key, "js"))
            rc = snap_field(d, &seen, JS, w) || drift_stat_load(d, &a->js, ver);
        else
            rc = snap_skip(d, w);
        if (rc)
            return -1;
    }
    a->method = (uint8_t)m;
    return snap_fields_all(d, seen, 255u, "alert (a field is missing)");
}

void
gmodel_save(msgpack_packer *pk, const global_t *g, const gmodel_t *gm)
{
    msgpack_pack_map(pk, 5);
    snap_put_str(pk, "glob_seq");
    msgpack_pack_uint64(pk, gm->glob_seq);
    snap_put_str(pk, "drift_seq");
    msgpack_pack_uint64(pk, gm->drift_seq);
    snap_put_str(pk, "heads_seq");
    msgpack_pack_uint64(pk, gm->heads_seq);
    snap_put_str(pk, "alerts_total");
    msgpack_pack_uint64(pk, gm->alerts_total);
    /* alerts, oldest first */
    snap_put_str(pk, "alerts");
    uint32_t n = gm->alerts_count, kept = g->p.alerts_kept;
    msgpack_pack_array(pk, n);
    for (uint32_t k = 0; k < n; k++)
        s_alert_save(pk, &gm->alerts[(gm->alerts_next + kept - n + k) % kept]);
}

/* Alerts oldest first into the ring; the newest alerts_kept stay when
   the limit shrank since the snapshot. */
static int
s_alerts_load(snap_rd_t *d, const global_t *g, gmodel_t *gm, unsigned ver)
{
    uint32_t na, kept = g->p.alerts_kept;
    if (snap_get_array(d, &na, "alerts"))
        return -1;
    for (uint32_t k = 0; k < na; k++) {
        galert_t a = {0};
        if (s_alert_load(d, &a, ver))
            return -1;
        if (kept) {
            gm->alerts[gm->alerts_next] = a;
            gm->alerts_next = (gm->alerts_next + 1) % kept;
            if (gm->alerts_count < kept)
                gm->alerts_count++;
        }
    }
    return 0;
}

int
gmodel_load(snap_rd_t *d, const global_t *g, gmodel_t *gm, unsigned ver)
{
    if (ver == SNAP_V1)
        return snap_get_u64(d, &gm->glob_seq, "model counters") ||
                       snap_get_u64(d, &gm->drift_seq, "model counters") ||
                       snap_get_u64(d, &gm->heads_seq, "model counters") ||
                       snap_get_u64(d, &gm->alerts_total, "model counters") ||
                       s_alerts_load(d, g, gm, ver)
                   ? -1
                   : 0;
    enum { GLOB = 1, DRIFT = 2, HEADS = 4, TOTAL = 8, ALERTS = 16 };
    uint32_t n;
    unsigned seen = 0;
    if (snap_get_map(d, &n, "model global state"))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(d, &key, "model global state field"))
            return -1;
        if (mpr_str_eq(&key, "glob_seq"))
            rc = snap_field(d, &seen, GLOB, "glob_seq") ||
                 snap_get_u64(d, &gm->glob_seq, "glob_seq");
        else if (mpr_str_eq(&key, "drift_seq"))
            rc = snap_field(d, &seen, DRIFT, "drift_seq") ||
                 snap_get_u64(d, &gm->drift_seq, "drift_seq");
        else if (mpr_str_eq(&key, "heads_seq"))
            rc = snap_field(d, &seen, HEADS, "heads_seq") ||
                 snap_get_u64(d, &gm->heads_seq, "heads_seq");
        else if (mpr_str_eq(&key, "alerts_total"))
            rc = snap_field(d, &seen, TOTAL, "alerts_total") ||
                 snap_get_u64(d, &gm->alerts_total, "alerts_total");
        else if (mpr_str_eq(&key, "alerts"))
            rc = snap_field(d, &seen, ALERTS, "alerts") || s_alerts_load(d, g, gm, ver);
        else
            rc = snap_skip(d, "model global state field");
        if (rc)
            return -1;
    }
    return snap_fields_all(d, seen, 31u, "model global state (a field is missing)");
}
