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
    char **names;       /* nf feature names (name=value entries), or NULL */
} pending_t;

/* Forget an entry's values (a bad line): nf becomes 0. */
static void
s_pending_empty(pending_t *p)
{
    for (uint32_t k = 0; p->names && k < p->nf; k++)
        free(p->names[k]);
    free(p->names);
    p->names = NULL;
    p->nf = 0;
}

static void
s_pending_free(pending_t *p)
{
    s_pending_empty(p);
    free(p->values);
    free(p);
}

static void
s_pending_clear(global_t *g)
{
    while (g->pending) {
        pending_t *p = g->pending;
        g->pending = p->next;
        s_pending_free(p);
    }
}

int
global_init(global_t *g, uint32_t max_models, const global_params_t *p)
{
    memset(g, 0, sizeof *g);
    g->p = *p;
    /* Params without drift-mode options (all zero: a caller that predates
       them) mean the defaults: fixed thresholds. */
    if (detect_opts_check(&g->p.detect, NULL))
        detect_opts_default(&g->p.detect);
    if (g->p.moved_k > GLOBAL_MOVED_MAX)
        g->p.moved_k = GLOBAL_MOVED_MAX;
    g->cusum_arl = detect_cusum_arl(g->p.detect.cusum_k, g->p.detect.cusum_h, 0, 0);
    g->cap = max_models;
    g->models = calloc(max_models, sizeof *g->models);
    return g->models ? 0 : -1;
}

static void s_seg_free(gseg_t *sg);

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
    detect_work_destroy(&e->dwork);
    for (uint32_t i = 0; e->seg && i < e->segs.n; i++)
        s_seg_free(e->seg[i]);
    free(e->seg);
    segtab_destroy(&e->segs);
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
global_set_drift(global_t *g, const drift_opts_t *o, const detect_opts_t *d, uint32_t moved_k)
{
    g->p.drift = *o;
    g->p.detect = *d;
    g->p.moved_k = moved_k < GLOBAL_MOVED_MAX ? moved_k : GLOBAL_MOVED_MAX;
    g->cusum_arl = detect_cusum_arl(d->cusum_k, d->cusum_h, 0, 0);
    for (uint32_t k = 0; k < g->cap; k++) {
        gmodel_t *gm = g->models[k];
        for (int e = 0; gm && e < MODEL_EPOCHS_KEPT; e++)
            for (int m = 0; gm->epochs[e] && m < XM_NMETHODS; m++) {
                gepoch_t *ep = gm->epochs[e];
                ep->drift[m].opts = *o;
                detect_set_opts(&ep->detect[m], d, o);
                for (uint32_t i = 0; ep->seg && i < ep->segs.n; i++)
                    if (ep->seg[i]) {
                        ep->seg[i]->drift[m].opts = *o;
                        detect_set_opts(&ep->seg[i]->detect[m], d, o);
                    }
            }
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
        drift_init(&e->drift[m], e->nf, g->p.window, &g->p.drift) ||
        detect_init(&e->detect[m], &g->p.detect, &g->p.drift))
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
    if (!e || agg_heads_init(&e->heads, sc->shape.L, sc->shape.H) ||
        detect_work_init(&e->dwork, sc->nf)) {
        if (e)
            agg_heads_destroy(&e->heads);
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

/* A window closed (overall: seg -1, or in segment seg), by count or by
   event time alike: judge it in the configured mode, list what moved,
   keep it as the method's last, keep an alert for the drift query and
   log it, and hand it to the caller in `closed` (past GLOBAL_CLOSED_MAX
   windows in one call it is kept and judged but not handed over). */
static void
s_record_window(global_t *g, const model_t *md, gmodel_t *gm, gepoch_t *e, int m, int seg,
                drift_t *dr, detect_t *dt, glast_t *l, const drift_report_t *r, uint64_t trades,
                global_closed_t *closed)
{
    /* Every topic counts its own seq: a segment's windows have theirs. */
    uint64_t *seqp = seg >= 0 ? &e->seg[seg]->drift_seq : &gm->drift_seq;
    int64_t ts = now_wall_ns();
    *l = (glast_t){.valid = true, .window = r->window, .ref = r->ref, .compared = r->compared,
                   .spearman = r->spearman, .ndcg = r->ndcg, .js = r->js, .ts = ts,
                   .trades = trades};
    detect_feed(dt, r, &l->verdict);
    l->alert = l->verdict.alert;
    if (r->compared)
        l->nmoved = detect_what_moved(&e->dwork, r->mean, dr->ref, e->nf, g->p.moved_k,
                                      DETECT_BY_VALUE, l->moved);
    const char *label = seg >= 0 ? segtab_label(&e->segs, (uint32_t)seg) : "";
    uint64_t seq = (*seqp)++;
    if (closed->n < GLOBAL_CLOSED_MAX)
        closed->w[closed->n++] = (gclosed_t){.method = m, .seg = seg,
                                             .segment = seg >= 0 ? label : NULL,
                                             .seq = seq, .last = *l};
    if (!l->alert)
        return;
    if (gm->alerts) {
        galert_t *a = &gm->alerts[gm->alerts_next];
        *a = (galert_t){.ts = ts, .epoch = e->epoch, .method = (uint8_t)m, .window = r->window,
                        .ref = r->ref, .spearman = r->spearman, .ndcg = r->ndcg, .js = r->js,
                        .verdict = l->verdict, .nmoved = l->nmoved};
        snprintf(a->segment, sizeof a->segment, "%s", label);
        memcpy(a->moved, l->moved, l->nmoved * sizeof *l->moved);
        gm->alerts_next = (gm->alerts_next + 1) % g->p.alerts_kept;
        if (gm->alerts_count < g->p.alerts_kept)
            gm->alerts_count++;
    }
    gm->alerts_total++;
    const schema_t *sc = model_schema(md, e->epoch);
    const char *top = l->nmoved && sc ? sc->features[l->moved[0].feature] : "-";
    log_limited(LOGK_DRIFT_ALERT, LOG_WARN_,
                "drift: model '%s'%s%s epoch %" PRIu32 " %s window %" PRIu64 " vs %s (%s): "
                "rho %.3f, nDCG %.3f, JS %.3f: ALERT; moved most: %s", md->name,
                seg >= 0 ? " segment " : "", label, e->epoch, xm_method_name((xm_method_t)m),
                r->window, drift_ref_name(r->ref), detect_mode_name(l->verdict.mode),
                r->spearman.defined ? r->spearman.value : NAN,
                r->ndcg.defined ? r->ndcg.value : NAN, r->js.defined ? r->js.value : NAN, top);
}

static void s_apply_pending(global_t *g, const model_t *md, gepoch_t *e);

/* An event-time window closing, through evwin's callback. */
typedef struct {
    global_t *g;
    const model_t *md;
    gepoch_t *e;
    int m;
    int seg;                        /* -1: the model overall */
    global_closed_t *closed;
} s_close_ctx_t;

/* Judge the closed event-time window v of method m, overall (seg -1) or
   of segment seg, as a count window closing is judged. */
static void
s_close_window(global_t *g, const model_t *md, gepoch_t *e, int m, int seg,
               const evwin_view_t *v, global_closed_t *closed)
{
    gmodel_t *gm = global_model(g, md);
    gseg_t *sg = seg >= 0 ? e->seg[seg] : NULL;
    drift_t *dr = sg ? &sg->drift[m] : &e->drift[m];
    drift_report_t r;
    if (!gm || drift_close_mean(dr, v->mean, &r) != 1)
        return;
    /* The window's own index (its start over its length): the same in
       every daemon whatever it saw first, so it names the window rather
       than the drift's count of closed windows. */
    r.window = (uint64_t)v->k;
    s_record_window(g, md, gm, e, m, seg, dr, sg ? &sg->detect[m] : &e->detect[m],
                    sg ? &sg->last[m] : &e->last[m], &r, v->count, closed);
    gm->dirty = true;
    g->gen++;
}

static void
s_on_close(void *arg, const evwin_view_t *v)
{
    s_close_ctx_t *c = arg;
    s_close_window(c->g, c->md, c->e, c->m, c->seg, v, c->closed);
}

void
global_close_window(global_t *g, const model_t *md, gepoch_t *e, int m, const evwin_view_t *v,
                    global_closed_t *closed)
{
    s_close_window(g, md, e, m, -1, v, closed);
}

static void
s_seg_free(gseg_t *sg)
{
    if (!sg)
        return;
    for (int m = 0; m < XM_NMETHODS; m++) {
        agg_destroy(&sg->all[m]);
        drift_destroy(&sg->drift[m]);
        evwin_destroy(&sg->evw[m]);
        evdecay_destroy(&sg->evd[m]);
    }
    free(sg);
}

/* The segment of a trade labelled `label`, created on its first trade
   while there is room; NULL when untracked (counted in overflow). */
static gseg_t *
s_segment(global_t *g, gepoch_t *e, const char *label, size_t len)
{
    if (!g->p.max_segments || !len)
        return NULL;
    if (!e->seg) {
        if (segtab_init(&e->segs, g->p.max_segments) ||
            !(e->seg = calloc(g->p.max_segments, sizeof *e->seg))) {
            segtab_destroy(&e->segs);
            return NULL;
        }
    }
    int i = segtab_get(&e->segs, label, len);
    if (i < 0)
        return NULL;
    if (!e->seg[i] && !(e->seg[i] = calloc(1, sizeof *e->seg[i])))
        return NULL;
    return e->seg[i];
}

/* Method state of a segment, created with the method's first trade. */
static int
s_seg_method(global_t *g, gepoch_t *e, gseg_t *sg, int m)
{
    if (sg->methods & XM_BIT(m))
        return 0;
    if (agg_init(&sg->all[m], e->nf, s_half_life(g)) ||
        drift_init(&sg->drift[m], e->nf, g->p.window, &g->p.drift) ||
        detect_init(&sg->detect[m], &g->p.detect, &g->p.drift))
        return -1;
    if (g->p.window_ns > 0 &&
        evwin_init(&sg->evw[m], e->nf, g->p.window_ns, g->p.late_ns, GLOBAL_EVWIN_KEEP))
        return -1;
    if (g->p.decay_ns > 0 && evdecay_init(&sg->evd[m], e->nf, g->p.decay_ns))
        return -1;
    sg->methods |= XM_BIT(m);
    return 0;
}

static void s_add(global_t *g, const model_t *md, const int64_t *target, const xm_result_t *res,
                  const char *label, size_t len, global_closed_t *closed, bool whole_trade);

void
global_add(global_t *g, const model_t *md, const int64_t *target, const xm_result_t *res,
           global_closed_t *closed)
{
    global_add_seg(g, md, target, res, NULL, 0, closed);
}

void
global_add_seg(global_t *g, const model_t *md, const int64_t *target, const xm_result_t *res,
               const char *label, size_t len, global_closed_t *closed)
{
    s_add(g, md, target, res, label, len, closed, true);
}

void
global_add_target(global_t *g, const model_t *md, const int64_t *target, const xm_result_t *res,
                  const char *label, size_t len, global_closed_t *closed)
{
    s_add(g, md, target, res, label, len, closed, false);
}

static void
s_add(global_t *g, const model_t *md, const int64_t *target, const xm_result_t *res,
      const char *label, size_t len, global_closed_t *closed, bool whole_trade)
{
    const int64_t ts = md->last_ts;     /* the event time of the trade's message */
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
    /* A further target adds to the segment its trade is already in; only
       a whole trade may create one or count as overflow. */
    gseg_t *sg = NULL;
    if (whole_trade) {
        sg = s_segment(g, e, label, len);
    } else if (e->seg && len) {
        int k = segtab_find(&e->segs, label, len);
        sg = k >= 0 ? e->seg[k] : NULL;
    }
    int si = sg ? segtab_find(&e->segs, label, len) : -1;
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(res->computed & XM_BIT(m)))
            continue;
        if (s_epoch_method(g, e, m) || (sg && s_seg_method(g, e, sg, m))) {
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
        drift_report_t r;
        if (g->p.window_ns > 0) {
            /* Event-time windows close through s_on_close into the same
               verdict path as count windows. */
            s_close_ctx_t cc = {g, md, e, m, -1, closed};
            evwin_add(&e->evw[m], ts, res->attr[m], s_on_close, &cc);
        } else if (drift_push(&e->drift[m], res->attr[m], &r) == 1) {
            s_record_window(g, md, gm, e, m, -1, &e->drift[m], &e->detect[m], &e->last[m], &r,
                            g->p.window, closed);
        }
        if (!sg)
            continue;
        /* A segment keeps the model's modes over its own trades. */
        agg_update(&sg->all[m], res->attr[m]);
        if (g->p.decay_ns > 0)
            evdecay_add(&sg->evd[m], ts, res->attr[m]);
        if (g->p.window_ns > 0) {
            s_close_ctx_t cc = {g, md, e, m, si, closed};
            evwin_add(&sg->evw[m], ts, res->attr[m], s_on_close, &cc);
        } else if (drift_push(&sg->drift[m], res->attr[m], &r) == 1) {
            s_record_window(g, md, gm, e, m, si, &sg->drift[m], &sg->detect[m], &sg->last[m], &r,
                            g->p.window, closed);
        }
    }
    if (sg)
        sg->dirty = true;
    if (whole_trade) {
        if (sg)
            sg->count++;
        agg_heads_update(&e->heads, res->head_importance, res->head_confidence);
        e->count++;
    }
    gm->dirty = true;
    g->gen++;
}

gseg_t *
global_segment_method(global_t *g, gepoch_t *e, const char *label, size_t len, int m, int *index)
{
    gseg_t *sg = s_segment(g, e, label, len);
    if (!sg || s_seg_method(g, e, sg, m))
        return NULL;
    *index = segtab_find(&e->segs, label, len);
    return sg;
}

void
global_close_window_seg(global_t *g, const model_t *md, gepoch_t *e, int m, int seg,
                        const evwin_view_t *v, global_closed_t *closed)
{
    if (seg >= 0 && (uint32_t)seg < e->segs.n && e->seg[seg])
        s_close_window(g, md, e, m, seg, v, closed);
}

const gseg_t *
global_segment(const gepoch_t *e, const char *label, size_t len)
{
    if (!e->seg)
        return NULL;
    int i = segtab_find(&e->segs, label, len);
    return i >= 0 ? e->seg[i] : NULL;
}

/* ---- topic seqs -------------------------------------------------------- */

gseg_t *
global_seg_take_changed(gepoch_t *e, uint32_t i)
{
    gseg_t *sg = e->seg && i < e->segs.n ? e->seg[i] : NULL;
    if (!sg || !sg->dirty)
        return NULL;
    sg->dirty = false;
    return sg;
}

void
global_seg_glob_sent(gseg_t *sg, int64_t ts)
{
    sg->glob_seq++;
    sg->glob_ts = ts;
}

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
            else
                detect_restart(&e->detect[k]);      /* a new reference, a new calibration */
        } else {
            drift_reset_reference(&e->drift[k]);    /* the baseline window restarts it */
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
    detect_restart(&e->detect[m]);
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
        if (p->names) {
            /* by name: features without attribution dropped, every
               attributed one required */
            const schema_t *sc = model_schema(md, e->epoch);
            double *v = sc ? malloc((e->nf ? e->nf : 1) * sizeof *v) : NULL;
            uint32_t found = 0;
            for (uint32_t f = 0; v && f < e->nf; f++)
                for (uint32_t k = 0; k < p->nf; k++)
                    if (strcmp(p->names[k], sc->features[f]) == 0) {
                        v[f] = p->values[k];
                        found++;
                        break;
                    }
            if (!v || found != e->nf) {
                log_warn("reference file: model '%s' %s names %" PRIu32 " of epoch %" PRIu32
                         "'s %" PRIu32 " features; not applied", md->name,
                         xm_method_name((xm_method_t)p->method), found, e->epoch, e->nf);
                free(v);
                continue;
            }
            int rc = s_set_extref(g, e, p->method, v);
            free(v);
            if (rc)
                continue;
            g->gen++;
            log_info("reference file: applied %s reference (by name) to model '%s' epoch %" PRIu32,
                     xm_method_name((xm_method_t)p->method), md->name, e->epoch);
            continue;
        }
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
            /* name=value: a reference by feature name (the last '=':
               names may hold one) */
            char *eq = strrchr(v, '=');
            if ((eq != NULL) != (p->names != NULL) && p->nf > 0) {
                log_err("reference file %s:%d: mixes name=value and plain values", path, lineno);
                bad++;
                s_pending_empty(p);
                break;
            }
            char *end, *num = eq ? eq + 1 : v;
            double x = strtod(num, &end);
            if (*end || !isfinite(x)) {
                log_err("reference file %s:%d: '%s' is not a finite number", path, lineno, v);
                bad++;
                s_pending_empty(p);
                break;
            }
            if (p->nf == capv) {
                capv = capv ? 2 * capv : 16;
                double *nv = realloc(p->values, capv * sizeof *nv);
                if (!nv)
                    break;
                p->values = nv;
                if (eq) {
                    char **nn = realloc(p->names, capv * sizeof *nn);
                    if (!nn)
                        break;
                    p->names = nn;
                }
            }
            if (eq && !(p->names[p->nf] = strndup(v, (size_t)(eq - v))))
                break;
            p->values[p->nf++] = x;
        }
        if (p->nf == 0) {
            s_pending_free(p);
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
    *m = -1;    /* set on every path: -O3 cannot see that snap_fail returns -1 */
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
    msgpack_pack_map(pk, 9);
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
    snap_put_str(pk, "verdict");
    detect_verdict_save(pk, &l->verdict, l->moved, l->nmoved);
}

/* The verdict a window of a snapshot from before drift modes had: the
   fixed thresholds', from its statistics' own flags; no evidence, nothing
   listed as moved. */
static void
s_fixed_verdict(detect_verdict_t *v, const drift_stat_t *rho, const drift_stat_t *ndcg,
                const drift_stat_t *js)
{
    *v = (detect_verdict_t){.mode = DETECT_FIXED,
                            .alert_stat = {rho->alert, ndcg->alert, js->alert}};
    v->alert = rho->alert || ndcg->alert || js->alert;
}

/* A window's verdict is optional: a snapshot from before drift modes
   has none (mode fixed, no evidence, nothing listed as moved). */
static int
s_last_load(snap_rd_t *d, glast_t *l, unsigned ver, uint32_t nf)
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
        s_fixed_verdict(&l->verdict, &l->spearman, &l->ndcg, &l->js);
        l->valid = true;
        return 0;
    }
    enum { WINDOW = 1, REF = 2, COMPARED = 4, SPEARMAN = 8, NDCG = 16, JS = 32, ALERT = 64,
           TS = 128, VERDICT = 256 };
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
        else if (mpr_str_eq(&key, "verdict"))
            rc = snap_field(d, &seen, VERDICT, w) ||
                 detect_verdict_load(d, &l->verdict, l->moved, GLOBAL_MOVED_MAX, &l->nmoved, nf);
        else
            rc = snap_skip(d, w);
        if (rc)
            return -1;
    }
    if (snap_fields_all(d, seen, 255u, "last window (a field is missing)"))
        return -1;
    if (!(seen & VERDICT))
        s_fixed_verdict(&l->verdict, &l->spearman, &l->ndcg, &l->js);
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

/* One method of an epoch: {all, drift, extref, last, detect, evw, evd}
   (detect: absent from a snapshot made before drift modes, the
   calibration then starts afresh; evw/evd: only when that event-time
   mode was on). */
static int
s_method_load(snap_rd_t *d, gepoch_t *e, int m)
{
    enum { ALL = 1, DRIFT = 2, EXTREF = 4, LAST = 8, DETECT = 16 };
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
                 s_last_load(d, &e->last[m], SNAP_V2, e->nf);
        else if (mpr_str_eq(&key, "detect"))
            rc = snap_field(d, &seen, DETECT, "drift verdict state") ||
                 detect_load(d, &e->detect[m]);
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

/* Segments of an epoch: {overflow, items: [{label, count, drift_seq,
   glob_seq, methods: {name: {all, drift, detect, last}}}]} (glob_seq is
   absent from snapshots written before segments had a glob/ topic). */
static void
s_segs_save(msgpack_packer *pk, const gepoch_t *e)
{
    msgpack_pack_map(pk, 2);
    snap_put_str(pk, "overflow");
    msgpack_pack_uint64(pk, e->segs.overflow);
    snap_put_str(pk, "items");
    uint32_t n = 0;
    for (uint32_t i = 0; e->seg && i < e->segs.n; i++)
        n += e->seg[i] != NULL;
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; e->seg && i < e->segs.n; i++) {
        const gseg_t *sg = e->seg[i];
        if (!sg)
            continue;
        msgpack_pack_map(pk, 5);
        snap_put_str(pk, "label");
        snap_put_str(pk, segtab_label(&e->segs, i));
        snap_put_str(pk, "count");
        msgpack_pack_uint64(pk, sg->count);
        snap_put_str(pk, "drift_seq");
        msgpack_pack_uint64(pk, sg->drift_seq);
        snap_put_str(pk, "glob_seq");
        msgpack_pack_uint64(pk, sg->glob_seq);
        snap_put_str(pk, "methods");
        msgpack_pack_map(pk, (size_t)__builtin_popcount(sg->methods));
        for (int m = 0; m < XM_NMETHODS; m++) {
            if (!(sg->methods & XM_BIT(m)))
                continue;
            snap_put_str(pk, xm_method_name((xm_method_t)m));
            bool evw = sg->evw[m].key != NULL, evd = sg->evd[m].sum != NULL;
            msgpack_pack_map(pk, 4 + (evw ? 1 : 0) + (evd ? 1 : 0));
            /* Event-time state, as the epoch's methods keep it. */
            if (evw) {
                snap_put_str(pk, "evw");
                evwin_save(pk, &sg->evw[m]);
            }
            if (evd) {
                snap_put_str(pk, "evd");
                evdecay_save(pk, &sg->evd[m]);
            }
            snap_put_str(pk, "all");
            agg_save(pk, &sg->all[m]);
            snap_put_str(pk, "drift");
            drift_save(pk, &sg->drift[m]);
            snap_put_str(pk, "detect");
            detect_save(pk, &sg->detect[m]);
            snap_put_str(pk, "last");
            s_last_save(pk, &sg->last[m]);
        }
    }
}

/* One segment's method: {all, drift, detect, last}. */
static int
s_seg_method_load(snap_rd_t *d, const gepoch_t *e, gseg_t *sg, int m)
{
    enum { ALL = 1, DRIFT = 2, DETECT = 4, LAST = 8 };
    const char *w = "segment method";
    uint32_t n;
    unsigned seen = 0;
    if (snap_get_map(d, &n, w))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(d, &key, w))
            return -1;
        if (mpr_str_eq(&key, "all"))
            rc = snap_field(d, &seen, ALL, w) || agg_load(d, &sg->all[m], SNAP_V2);
        else if (mpr_str_eq(&key, "drift"))
            rc = snap_field(d, &seen, DRIFT, w) || drift_load(d, &sg->drift[m], SNAP_V2);
        else if (mpr_str_eq(&key, "detect"))
            rc = snap_field(d, &seen, DETECT, w) || detect_load(d, &sg->detect[m]);
        else if (mpr_str_eq(&key, "last"))
            rc = snap_field(d, &seen, LAST, w) || s_last_load(d, &sg->last[m], SNAP_V2, e->nf);
        else if (mpr_str_eq(&key, "evw"))
            rc = s_evtime_load(d, &sg->evw[m], NULL);
        else if (mpr_str_eq(&key, "evd"))
            rc = s_evtime_load(d, NULL, &sg->evd[m]);
        else
            rc = snap_skip(d, w);
        if (rc)
            return -1;
    }
    return snap_fields_all(d, seen, 15u, "segment method (a field is missing)");
}

/* One segment: created as a trade of it would create it (a segment the
   bound no longer admits is an error: max_segments shrank). */
static int
s_seg_load(snap_rd_t *d, global_t *g, gepoch_t *e)
{
    enum { LABEL = 1, COUNT = 2, SEQ = 4, METHODS = 8 };
    const char *w = "segment";
    uint32_t n;
    unsigned seen = 0;
    gseg_t *sg = NULL;
    uint64_t count = 0, seq = 0, glob_seq = 0;
    mpr_t methods_at = {0};
    if (snap_get_map(d, &n, w))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(d, &key, w))
            return -1;
        if (mpr_str_eq(&key, "label")) {
            const uint8_t *p;
            uint32_t len;
            rc = snap_field(d, &seen, LABEL, w) || snap_get_str(d, &p, &len, "segment label");
            if (!rc && !(sg = s_segment(g, e, (const char *)p, len)))
                rc = snap_fail(d, "segment (not admitted: max_segments, or out of memory)");
        } else if (mpr_str_eq(&key, "count")) {
            rc = snap_field(d, &seen, COUNT, w) || snap_get_u64(d, &count, w);
        } else if (mpr_str_eq(&key, "drift_seq")) {
            rc = snap_field(d, &seen, SEQ, w) || snap_get_u64(d, &seq, w);
        } else if (mpr_str_eq(&key, "glob_seq")) {
            rc = snap_get_u64(d, &glob_seq, w);     /* optional: older snapshots lack it */
        } else if (mpr_str_eq(&key, "methods")) {
            methods_at = d->r;      /* read once the label made the segment */
            rc = snap_field(d, &seen, METHODS, w) || snap_skip(d, w);
        } else {
            rc = snap_skip(d, w);
        }
        if (rc)
            return -1;
    }
    if (snap_fields_all(d, seen, 15u, "segment (a field is missing)"))
        return -1;
    mpr_t after = d->r;
    d->r = methods_at;
    uint32_t nm;
    if (snap_get_map(d, &nm, "segment methods"))
        return -1;
    for (uint32_t j = 0; j < nm; j++) {
        int m;
        if (s_get_method(d, &m, "segment method name"))
            return -1;
        if (sg->methods & XM_BIT(m))
            return snap_fail(d, "segment method (given twice)");
        if (s_seg_method(g, e, sg, m))
            return snap_fail(d, "segment method state (out of memory)");
        if (s_seg_method_load(d, e, sg, m))
            return -1;
    }
    d->r = after;
    sg->count = count;
    sg->drift_seq = seq;
    sg->glob_seq = glob_seq;
    sg->dirty = true;           /* its glob/ goes out again with the state restored */
    return 0;
}

static int
s_segs_load(snap_rd_t *d, global_t *g, gepoch_t *e)
{
    enum { OVERFLOW = 1, ITEMS = 2 };
    const char *w = "segments";
    uint32_t n;
    unsigned seen = 0;
    uint64_t overflow = 0;
    if (snap_get_map(d, &n, w))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(d, &key, w))
            return -1;
        if (mpr_str_eq(&key, "overflow")) {
            rc = snap_field(d, &seen, OVERFLOW, w) || snap_get_u64(d, &overflow, w);
        } else if (mpr_str_eq(&key, "items")) {
            uint32_t ni;
            rc = snap_field(d, &seen, ITEMS, w) || snap_get_array(d, &ni, w);
            for (uint32_t i = 0; !rc && i < ni; i++)
                rc = s_seg_load(d, g, e);
        } else {
            rc = snap_skip(d, w);
        }
        if (rc)
            return -1;
    }
    if (snap_fields_all(d, seen, 3u, "segments (a field is missing)"))
        return -1;
    e->segs.overflow = overflow;
    return 0;
}

void
gepoch_save(msgpack_packer *pk, const gepoch_t *e)
{
    msgpack_pack_map(pk, 6);
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
        msgpack_pack_map(pk, 5 + (evw ? 1 : 0) + (evd ? 1 : 0));
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
        snap_put_str(pk, "detect");
        detect_save(pk, &e->detect[m]);
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
    snap_put_str(pk, "segments");
    s_segs_save(pk, e);
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
            s_extref_load(d, e, m) || s_last_load(d, &e->last[m], SNAP_V1, e->nf))
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
    enum { COUNT = 1, UNTRACKED = 2, METHODS = 4, CLASSES = 8, HEADS = 16, SEGMENTS = 32 };
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
        } else if (mpr_str_eq(&key, "segments")) {
            rc = snap_field(d, &seen, SEGMENTS, "segments") || s_segs_load(d, g, e);
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
    msgpack_pack_map(pk, 9 + (a->segment[0] ? 1 : 0));
    if (a->segment[0]) {
        snap_put_str(pk, "segment");
        snap_put_str(pk, a->segment);
    }
    snap_put_str(pk, "verdict");
    detect_verdict_save(pk, &a->verdict, a->moved, a->nmoved);
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
        s_fixed_verdict(&a->verdict, &a->spearman, &a->ndcg, &a->js);
        return 0;
    }
    enum { TS = 1, EPOCH = 2, METHOD = 4, WINDOW = 8, REF = 16, SPEARMAN = 32, NDCG = 64, JS = 128,
           SEGMENT = 256, VERDICT = 512 };
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
        else if (mpr_str_eq(&key, "segment")) {
            const uint8_t *p;
            uint32_t len;
            rc = snap_field(d, &seen, SEGMENT, w) || snap_get_str(d, &p, &len, w);
            if (!rc && (len == 0 || len > SEG_LABEL_MAX))
                rc = snap_fail(d, "alert segment label");
            if (!rc) {
                memcpy(a->segment, p, len);
                a->segment[len] = '\0';
            }
        } else if (mpr_str_eq(&key, "verdict"))
            /* Feature indices are checked against the epoch when shown. */
            rc = snap_field(d, &seen, VERDICT, w) ||
                 detect_verdict_load(d, &a->verdict, a->moved, GLOBAL_MOVED_MAX, &a->nmoved,
                                     UINT32_MAX);
        else
            rc = snap_skip(d, w);
        if (rc)
            return -1;
    }
    a->method = (uint8_t)m;
    if (!(seen & VERDICT))
        s_fixed_verdict(&a->verdict, &a->spearman, &a->ndcg, &a->js);
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
