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
        free(e->extref[m]);
        for (uint32_t c = 0; c < e->nclasses; c++)
            agg_destroy(&e->classes[c].agg[m]);
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

/* Method state is created the first time the method shows up. */
static int
s_epoch_method(global_t *g, gepoch_t *e, int m)
{
    if (e->methods & XM_BIT(m))
        return 0;
    if (agg_init(&e->all[m], e->nf, g->p.half_life) ||
        drift_init(&e->drift[m], e->nf, g->p.window, &g->p.drift))
        return -1;
    for (uint32_t c = 0; c < e->nclasses; c++)
        if (agg_init(&e->classes[c].agg[m], e->nf, g->p.half_life))
            return -1;
    e->methods |= XM_BIT(m);
    return 0;
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
        if ((e->methods & XM_BIT(m)) && agg_init(&c->agg[m], e->nf, g->p.half_life))
            return NULL;
    e->nclasses++;
    return c;
}

/* A window closed: keep it as the method's last, keep an alert for the
   drift query and log it, and hand it to the caller in `closed`. */
static void
s_record_window(global_t *g, const model_t *md, gmodel_t *gm, gepoch_t *e, int m,
                const drift_report_t *r, global_closed_t *closed)
{
    int64_t ts = now_wall_ns();
    e->last[m] = (glast_t){.valid = true, .window = r->window, .ref = r->ref,
                           .compared = r->compared, .spearman = r->spearman, .ndcg = r->ndcg,
                           .js = r->js, .alert = r->alert, .ts = ts};
    closed->w[closed->n++] = (gclosed_t){.method = m, .seq = gm->drift_seq++, .last = e->last[m]};
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
    log_limited(XR_NREASONS + 5, LOG_WARN_,
                "drift: model '%s' epoch %" PRIu32 " %s window %" PRIu64 " vs %s: rho %.3f, "
                "nDCG %.3f, JS %.3f: ALERT", md->name, e->epoch, xm_method_name((xm_method_t)m),
                r->window, drift_ref_name(r->ref), r->spearman.defined ? r->spearman.value : NAN,
                r->ndcg.defined ? r->ndcg.value : NAN, r->js.defined ? r->js.value : NAN);
}

static void s_apply_pending(global_t *g, const model_t *md, gepoch_t *e);

void
global_add(global_t *g, const model_t *md, const int64_t *target, const xm_result_t *res,
           global_closed_t *closed)
{
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
        log_limited(XR_NREASONS + 6, LOG_ERR_, "global: out of memory for model '%s'", md->name);
        return;
    }
    gclass_t *c = NULL;
    if (target && !(c = s_class(g, e, *target)))
        e->untracked++;
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(res->computed & XM_BIT(m)))
            continue;
        if (s_epoch_method(g, e, m)) {
            log_limited(XR_NREASONS + 6, LOG_ERR_, "global: out of memory for model '%s'", md->name);
            return;
        }
        agg_update(&e->all[m], res->attr[m]);
        if (c)
            agg_update(&c->agg[m], res->attr[m]);
        drift_report_t r;
        if (drift_push(&e->drift[m], res->attr[m], &r) == 1)
            s_record_window(g, md, gm, e, m, &r, closed);
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
