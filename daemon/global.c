/*  global: global attributions, head statistics, drift. See global.h and
    proto/global.md.  */
#include "global.h"

#include "log.h"
#include "publish.h"
#include "query.h"
#include "server.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* External references read from the reference file, waiting for their
   model's epoch (kept per model name: the model may not exist yet). */
typedef struct pending_t {
    struct pending_t *next;
    char model[WIRE_MODEL_MAX + 1];
    int method;
    uint32_t nf;
    double *values;
} pending_t;

static pending_t *s_pending;

static void
s_pending_clear(void)
{
    while (s_pending) {
        pending_t *p = s_pending;
        s_pending = p->next;
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
    s_pending_clear();
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
global_model(server_t *s, model_t *md)
{
    global_t *g = &s->global;
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

const gepoch_t *
global_current(const global_t *g, const model_t *md)
{
    const gmodel_t *gm = global_model_const(g, md);
    if (!gm || !md->cur || md->cur->epoch == 0)
        return NULL;
    const gepoch_t *e = gm->epochs[(md->cur->epoch - 1) % MODEL_EPOCHS_KEPT];
    return e && e->epoch == md->cur->epoch ? e : NULL;
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
global_epoch(server_t *s, model_t *md, uint32_t epoch, bool create)
{
    gmodel_t *gm = global_model(s, md);
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

static void
s_enc_stat(msgpack_packer *pk, const drift_stat_t *st)
{
    if (st->defined)
        msgpack_pack_double(pk, st->value);
    else
        msgpack_pack_nil(pk);
}

/* The three rank statistics of a window, as map entries. */
static void
s_enc_stats(msgpack_packer *pk, const drift_stat_t *spearman, const drift_stat_t *ndcg,
            const drift_stat_t *js)
{
    enc_str(pk, "spearman");
    s_enc_stat(pk, spearman);
    enc_str(pk, "ndcg");
    s_enc_stat(pk, ndcg);
    enc_str(pk, "js");
    s_enc_stat(pk, js);
}

/* The seven fields of a closed window shared by drift/ and the drift
   query: window, reference, compared, spearman, ndcg, js, alert; drift/
   adds "trades" (window size) after "window" when `trades` is given. */
#define WINDOW_FIELDS 7
static void
s_enc_window(msgpack_packer *pk, const glast_t *l, const uint32_t *trades)
{
    enc_str(pk, "window");
    msgpack_pack_uint64(pk, l->window);
    if (trades) {
        enc_str(pk, "trades");
        msgpack_pack_uint32(pk, *trades);
    }
    enc_str(pk, "reference");
    enc_str(pk, drift_ref_name(l->ref));
    enc_str(pk, "compared");
    enc_bool(pk, l->compared);
    s_enc_stats(pk, &l->spearman, &l->ndcg, &l->js);
    enc_str(pk, "alert");
    enc_bool(pk, l->alert);
}

static void
s_publish_drift(server_t *s, model_t *md, gmodel_t *gm, const gepoch_t *e, int m, const glast_t *l)
{
    msgpack_packer *pk = &s->ppk;
    s->pbuf.size = 0;
    msgpack_pack_map(pk, 7 + WINDOW_FIELDS);
    enc_str(pk, "v");
    msgpack_pack_uint8(pk, 1);
    enc_str(pk, "model");
    enc_strn(pk, md->name, md->name_len);
    enc_str(pk, "seq");
    msgpack_pack_uint64(pk, gm->drift_seq++);
    enc_str(pk, "ts");
    msgpack_pack_int64(pk, l->ts);
    enc_str(pk, "epoch");
    msgpack_pack_uint32(pk, e->epoch);
    enc_str(pk, "method");
    enc_str(pk, xm_method_name((xm_method_t)m));
    s_enc_window(pk, l, &s->global.p.window);
    char topic[WIRE_MODEL_MAX + 8];
    int tlen = snprintf(topic, sizeof topic, "drift/%s", md->name);
    publish_send(s, topic, (size_t)tlen, s->pbuf.data, s->pbuf.size);
}

static void
s_record_window(server_t *s, model_t *md, gmodel_t *gm, gepoch_t *e, int m, const drift_report_t *r)
{
    int64_t ts = now_wall_ns();
    e->last[m] = (glast_t){.valid = true, .window = r->window, .ref = r->ref,
                           .compared = r->compared, .spearman = r->spearman, .ndcg = r->ndcg,
                           .js = r->js, .alert = r->alert, .ts = ts};
    s_publish_drift(s, md, gm, e, m, &e->last[m]);
    if (!r->alert)
        return;
    if (gm->alerts) {
        gm->alerts[gm->alerts_next] = (galert_t){.ts = ts, .epoch = e->epoch, .method = (uint8_t)m,
                                                 .window = r->window, .ref = r->ref,
                                                 .spearman = r->spearman, .ndcg = r->ndcg,
                                                 .js = r->js};
        gm->alerts_next = (gm->alerts_next + 1) % s->global.p.alerts_kept;
        if (gm->alerts_count < s->global.p.alerts_kept)
            gm->alerts_count++;
    }
    gm->alerts_total++;
    log_limited(LOGK_DRIFT_ALERT, LOG_WARN_,
                "drift: model '%s' epoch %" PRIu32 " %s window %" PRIu64 " vs %s: rho %.3f, "
                "nDCG %.3f, JS %.3f: ALERT", md->name, e->epoch, xm_method_name((xm_method_t)m),
                r->window, drift_ref_name(r->ref), r->spearman.defined ? r->spearman.value : NAN,
                r->ndcg.defined ? r->ndcg.value : NAN, r->js.defined ? r->js.value : NAN);
}

void
global_add(server_t *s, model_t *md, const int64_t *target, const xm_result_t *res)
{
    global_t *g = &s->global;
    gmodel_t *gm = global_model(s, md);
    bool fresh = gm && !global_epoch(s, md, md->cur->epoch, false);
    gepoch_t *e = global_epoch(s, md, md->cur->epoch, true);
    if (!gm || !e) {
        log_limited(LOGK_GLOBAL_OOM, LOG_ERR_, "global: out of memory for model '%s'", md->name);
        return;
    }
    if (fresh)
        global_apply_pending(s, md);
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
        drift_report_t r;
        if (drift_push(&e->drift[m], res->attr[m], &r) == 1)
            s_record_window(s, md, gm, e, m, &r);
    }
    agg_heads_update(&e->heads, res->head_importance, res->head_confidence);
    e->count++;
    gm->dirty = true;
    g->gen++;
}

/* Agreement of the global mean with an external reference. */
static void
s_enc_agreement(server_t *s, msgpack_packer *pk, const gepoch_t *e, int m)
{
    (void)s;
    rank_work_t rw;
    rank_work_init(&rw);
    double rho;
    if (e->all[m].count > 0 &&
        rank_spearman(&rw, e->all[m].mean, e->extref[m], e->nf, &rho) == RANK_OK)
        msgpack_pack_double(pk, rho);
    else
        msgpack_pack_nil(pk);
    rank_work_destroy(&rw);
}

static void
s_enc_doubles(msgpack_packer *pk, const double *x, uint32_t n)
{
    msgpack_pack_array(pk, n);
    for (uint32_t k = 0; k < n; k++)
        msgpack_pack_double(pk, x[k]);
}

/* count, mean, std, decayed of an aggregate, in a map with `extra` more
   pairs the caller writes after. */
static void
s_enc_agg(msgpack_packer *pk, const agg_t *a, double *scratch, size_t extra)
{
    msgpack_pack_map(pk, 4 + extra);
    enc_str(pk, "count");
    msgpack_pack_uint64(pk, a->count);
    enc_str(pk, "mean");
    s_enc_doubles(pk, a->mean, a->nfeat);
    enc_str(pk, "std");
    agg_std(a, scratch);
    s_enc_doubles(pk, scratch, a->nfeat);
    enc_str(pk, "decayed");
    s_enc_doubles(pk, a->decayed ? a->decayed : a->mean, a->nfeat);
}

/* "methods": map method -> {count, mean, std, decayed[, reference,
   reference_spearman]} for the methods in `mask`. */
static void
s_enc_methods(server_t *s, msgpack_packer *pk, const gepoch_t *e, const agg_t *aggs,
              unsigned mask, bool with_refs, double *scratch)
{
    msgpack_pack_map(pk, (size_t)__builtin_popcount(mask));
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(mask & XM_BIT(m)))
            continue;
        enc_str(pk, xm_method_name((xm_method_t)m));
        bool ref = with_refs && e->extref[m];
        s_enc_agg(pk, &aggs[m], scratch, ref ? 2 : 0);
        if (ref) {
            enc_str(pk, "reference");
            s_enc_doubles(pk, e->extref[m], e->nf);
            enc_str(pk, "reference_spearman");
            s_enc_agreement(s, pk, e, m);
        }
    }
}

/* The fields of a glob/ body (and of the global reply), `mask` methods,
   all targets or one (`only_target`). Returns -1 when out of memory. */
static int
s_enc_glob_fields(server_t *s, msgpack_packer *pk, model_t *md, const gepoch_t *e, unsigned mask,
                  const int64_t *only_target, uint64_t seq, int64_t ts)
{
    const schema_t *sc = model_schema(md, e->epoch);
    double *scratch = malloc((e->nf ? e->nf : 1) * sizeof *scratch);
    if (!scratch)
        return -1;
    enc_str(pk, "model");
    enc_strn(pk, md->name, md->name_len);
    enc_str(pk, "seq");
    msgpack_pack_uint64(pk, seq);
    enc_str(pk, "ts");
    msgpack_pack_int64(pk, ts);
    enc_str(pk, "epoch");
    msgpack_pack_uint32(pk, e->epoch);
    enc_str(pk, "features");
    if (sc)
        enc_features(pk, sc);
    else
        msgpack_pack_nil(pk);
    enc_str(pk, "count");
    msgpack_pack_uint64(pk, e->count);
    enc_str(pk, "half_life");
    msgpack_pack_double(pk, s->global.p.half_life);
    enc_str(pk, "methods");
    s_enc_methods(s, pk, e, e->all, mask, true, scratch);
    enc_str(pk, "targets");
    uint32_t nt = 0;
    for (uint32_t c = 0; c < e->nclasses; c++)
        nt += !only_target || e->classes[c].target == *only_target;
    msgpack_pack_array(pk, nt);
    for (uint32_t c = 0; c < e->nclasses; c++) {
        if (only_target && e->classes[c].target != *only_target)
            continue;
        msgpack_pack_map(pk, 2);
        enc_str(pk, "target");
        msgpack_pack_int64(pk, e->classes[c].target);
        enc_str(pk, "methods");
        s_enc_methods(s, pk, e, e->classes[c].agg, mask, false, scratch);
    }
    enc_str(pk, "untracked_targets");
    msgpack_pack_uint64(pk, e->untracked);
    free(scratch);
    return 0;
}
#define GLOB_FIELDS 10

static void
s_enc_heads_fields(msgpack_packer *pk, model_t *md, const gepoch_t *e, uint64_t seq)
{
    enc_str(pk, "model");
    enc_strn(pk, md->name, md->name_len);
    enc_str(pk, "seq");
    msgpack_pack_uint64(pk, seq);
    enc_str(pk, "ts");
    msgpack_pack_int64(pk, now_wall_ns());
    enc_str(pk, "epoch");
    msgpack_pack_uint32(pk, e->epoch);
    enc_str(pk, "L");
    msgpack_pack_uint32(pk, e->L);
    enc_str(pk, "H");
    msgpack_pack_uint32(pk, e->H);
    const agg_t *aggs[2] = {&e->heads.importance, &e->heads.confidence};
    const char *names[2] = {"importance", "confidence"};
    for (int k = 0; k < 2; k++) {
        enc_str(pk, names[k]);
        msgpack_pack_array(pk, e->L);
        for (uint32_t l = 0; l < e->L; l++)
            s_enc_doubles(pk, aggs[k]->mean + (size_t)l * e->H, e->H);
    }
    enc_str(pk, "importance_count");
    msgpack_pack_uint64(pk, e->heads.importance.count);
    enc_str(pk, "confidence_count");
    msgpack_pack_uint64(pk, e->heads.confidence.count);
}
#define HEADS_FIELDS 10

void
global_publish_changed(server_t *s)
{
    msgpack_packer *pk = &s->ppk;
    for (uint32_t k = 0; k < s->models.count && k < s->global.cap; k++) {
        gmodel_t *gm = s->global.models[k];
        model_t *md = s->models.items[k];
        if (!gm || !gm->dirty)
            continue;
        gepoch_t *e = global_epoch(s, md, md->cur->epoch, false);
        if (!e)
            continue;
        gm->dirty = false;
        char topic[WIRE_MODEL_MAX + 8];

        s->pbuf.size = 0;
        msgpack_pack_map(pk, GLOB_FIELDS + 1);
        enc_str(pk, "v");
        msgpack_pack_uint8(pk, 1);
        int64_t ts = now_wall_ns();
        if (s_enc_glob_fields(s, pk, md, e, e->methods, NULL, gm->glob_seq, ts) == 0) {
            gm->glob_seq++;
            gm->glob_ts = ts;
            int tlen = snprintf(topic, sizeof topic, "glob/%s", md->name);
            publish_send(s, topic, (size_t)tlen, s->pbuf.data, s->pbuf.size);
        }

        s->pbuf.size = 0;
        msgpack_pack_map(pk, HEADS_FIELDS + 1);
        enc_str(pk, "v");
        msgpack_pack_uint8(pk, 1);
        s_enc_heads_fields(pk, md, e, gm->heads_seq++);
        int tlen = snprintf(topic, sizeof topic, "heads/%s", md->name);
        publish_send(s, topic, (size_t)tlen, s->pbuf.data, s->pbuf.size);
    }
}

/* ---- external references ---------------------------------------------- */

static int
s_set_extref(server_t *s, model_t *md, gepoch_t *e, int m, const double *values)
{
    (void)md;
    if (s_epoch_method(&s->global, e, m))
        return -1;
    if (!e->extref[m] && !(e->extref[m] = malloc(e->nf * sizeof(double))))
        return -1;
    memcpy(e->extref[m], values, e->nf * sizeof(double));
    if (drift_set_reference(&e->drift[m], DRIFT_REF_EXTERNAL, values))
        return -1;
    return 0;
}

void
global_apply_pending(server_t *s, model_t *md)
{
    gepoch_t *e = global_epoch(s, md, md->cur->epoch, true);
    if (!e)
        return;
    for (pending_t *p = s_pending; p; p = p->next) {
        if (strcmp(p->model, md->name) != 0)
            continue;
        if (p->nf != e->nf) {
            log_warn("reference file: model '%s' %s has %" PRIu32 " values but epoch %" PRIu32
                     " has %" PRIu32 " features; not applied", md->name,
                     xm_method_name((xm_method_t)p->method), p->nf, e->epoch, e->nf);
            continue;
        }
        if (s_set_extref(s, md, e, p->method, p->values) != 0)
            continue;
        s->global.gen++;
        log_info("reference file: applied %s reference to model '%s' epoch %" PRIu32,
                     xm_method_name((xm_method_t)p->method), md->name, e->epoch);
    }
    global_model(s, md)->dirty = true;
}

int
global_load_references(server_t *s, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        log_err("reference file %s: %s", path, strerror(errno));
        return -1;
    }
    s_pending_clear();
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
        p->next = s_pending;
        s_pending = p;
        count++;
    }
    free(line);
    fclose(f);
    if (bad)
        return -1;
    for (uint32_t k = 0; k < s->models.count; k++)
        global_apply_pending(s, s->models.items[k]);
    log_info("reference file %s: %d reference(s) read", path, count);
    return count;
}

/* ---- query ops --------------------------------------------------------- */

/* The method named by argument `method`, or -1 (with q failed). */
static int
s_method_arg(qreq_t *q, bool required)
{
    const mpr_obj_t *o = qreq_arg(q, "method", NULL);
    if (!o) {
        if (required)
            qreq_fail(q, "bad_request", "argument 'method' is missing");
        return required ? -1 : -2;
    }
    if (o->type != MPR_STR)
        return qreq_fail(q, "bad_request", "argument 'method' must be a str");
    int m = xm_method_parse((const char *)o->v.raw.ptr, o->v.raw.len);
    if (m < 0)
        return qreq_fail(q, "bad_argument", "unknown method '%.*s'",
                         o->v.raw.len > 32 ? 32 : (int)o->v.raw.len, (const char *)o->v.raw.ptr);
    return m;
}

/* Model and epoch of a global-state request: the current epoch, or
   argument `epoch`. */
static gepoch_t *
s_req_epoch(server_t *s, qreq_t *q, model_t **mdp, gmodel_t **gmp)
{
    model_t *md = qreq_model(s, q);
    if (!md)
        return NULL;
    const mpr_obj_t *eo = qreq_arg(q, "epoch", NULL);
    if (eo && eo->type != MPR_UINT) {
        qreq_fail(q, "bad_request", "argument 'epoch' must be a uint");
        return NULL;
    }
    uint32_t epoch = eo ? (uint32_t)eo->v.u : md->cur->epoch;
    gepoch_t *e = global_epoch(s, md, epoch, false);
    if (!e) {
        qreq_fail(q, "not_found", "model '%s' has no global state for epoch %" PRIu32, md->name, epoch);
        return NULL;
    }
    *mdp = md;
    *gmp = global_model(s, md);
    return e;
}

int
global_op_global(server_t *s, qreq_t *q, msgpack_packer *pk)
{
    model_t *md;
    gmodel_t *gm;
    gepoch_t *e = s_req_epoch(s, q, &md, &gm);
    if (!e)
        return -1;
    int m = s_method_arg(q, false);
    if (m == -1)
        return -1;
    unsigned mask = e->methods;
    if (m >= 0) {
        if (!(mask & XM_BIT(m)))
            return qreq_fail(q, "not_found", "method '%s' has no global state for model '%s'",
                             xm_method_name((xm_method_t)m), md->name);
        mask = XM_BIT(m);
    }
    const mpr_obj_t *to = qreq_arg(q, "target", NULL);
    int64_t target;
    if (to) {
        if (to->type == MPR_UINT && to->v.u <= INT64_MAX)
            target = (int64_t)to->v.u;
        else if (to->type == MPR_INT)
            target = to->v.i;
        else
            return qreq_fail(q, "bad_request", "argument 'target' must be an int");
    }
    /* The state is current at the seq of the last glob/ sent; when it
       changed since, the next glob/ will carry it, so report that one's
       seq minus one: a client applies every update with a higher seq. */
    uint64_t seq = gm->glob_seq ? gm->glob_seq - 1 : 0;
    if (gm->dirty && e->epoch == md->cur->epoch) {
        /* Make the snapshot exactly the state of seq: send it now. */
        global_publish_changed(s);
        seq = gm->glob_seq - 1;
    }
    qreply_ok(pk, GLOB_FIELDS);
    /* ts: when the state of seq was published (now, for an old epoch). */
    bool current = e->epoch == md->cur->epoch;
    if (s_enc_glob_fields(s, pk, md, e, mask, to ? &target : NULL, seq,
                          current ? gm->glob_ts : now_wall_ns()))
        return qreq_fail(q, "bad_argument", "out of memory");
    return 0;
}

int
global_op_baseline(server_t *s, qreq_t *q, msgpack_packer *pk)
{
    model_t *md;
    gmodel_t *gm;
    gepoch_t *e = s_req_epoch(s, q, &md, &gm);
    if (!e)
        return -1;
    const mpr_obj_t *a = qreq_arg(q, "action", NULL);
    bool pin;
    if (!a || a->type != MPR_STR)
        return qreq_fail(q, "bad_request", "argument 'action' (\"pin\" or \"reset\") is missing or not a str");
    if (mpr_str_eq(a, "pin"))
        pin = true;
    else if (mpr_str_eq(a, "reset"))
        pin = false;
    else
        return qreq_fail(q, "bad_argument", "argument 'action' must be \"pin\" or \"reset\"");
    int m = s_method_arg(q, false);
    if (m == -1)
        return -1;
    unsigned mask = m >= 0 ? XM_BIT(m) & e->methods : e->methods;
    if (!mask)
        return qreq_fail(q, "not_found", "no global state to pin for model '%s'", md->name);
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
    s->global.gen++;
    log_limited(LOGK_BASELINE, LOG_NOTICE_, "drift: model '%s' epoch %" PRIu32 ": baseline %s",
                md->name, e->epoch,
               pin ? "pinned to the current global state" : "reset (next window becomes it)");
    qreply_ok(pk, 4);
    enc_str(pk, "model");
    enc_strn(pk, md->name, md->name_len);
    enc_str(pk, "epoch");
    msgpack_pack_uint32(pk, e->epoch);
    enc_str(pk, "action");
    enc_str(pk, pin ? "pin" : "reset");
    enc_str(pk, "methods");
    msgpack_pack_array(pk, (size_t)__builtin_popcount(mask));
    for (int k = 0; k < XM_NMETHODS; k++)
        if (mask & XM_BIT(k))
            enc_str(pk, xm_method_name((xm_method_t)k));
    return 0;
}

int
global_op_reference(server_t *s, qreq_t *q, msgpack_packer *pk)
{
    model_t *md = qreq_model(s, q);
    if (!md)
        return -1;
    int m = s_method_arg(q, true);
    if (m < 0)
        return -1;
    mpr_t items;
    const mpr_obj_t *vo = qreq_arg(q, "values", &items);
    if (!vo || vo->type != MPR_ARRAY)
        return qreq_fail(q, "bad_request", "argument 'values' must be an array of floats");
    gepoch_t *e = global_epoch(s, md, md->cur->epoch, true);
    if (!e)
        return qreq_fail(q, "bad_argument", "out of memory");
    if (vo->v.count != e->nf)
        return qreq_fail(q, "bad_argument", "'values' has %" PRIu32 " entries, model '%s' has %"
                         PRIu32 " features", vo->v.count, md->name, e->nf);
    double *v = malloc((e->nf ? e->nf : 1) * sizeof *v);
    if (!v)
        return qreq_fail(q, "bad_argument", "out of memory");
    for (uint32_t k = 0; k < e->nf; k++) {
        mpr_obj_t it;
        if (mpr_next(&items, &it) ||
            !(it.type == MPR_FLOAT || it.type == MPR_UINT || it.type == MPR_INT)) {
            free(v);
            return qreq_fail(q, "bad_request", "values[%" PRIu32 "] is not a number", k);
        }
        v[k] = it.type == MPR_FLOAT ? it.v.f : it.type == MPR_UINT ? (double)it.v.u : (double)it.v.i;
        if (!isfinite(v[k])) {
            free(v);
            return qreq_fail(q, "bad_argument", "values[%" PRIu32 "] is not finite", k);
        }
    }
    int rc = s_set_extref(s, md, e, m, v);
    free(v);
    if (rc)
        return qreq_fail(q, "bad_argument", "out of memory");
    global_model(s, md)->dirty = true;
    s->global.gen++;
    log_notice("drift: model '%s' epoch %" PRIu32 ": external %s reference set", md->name,
               e->epoch, xm_method_name((xm_method_t)m));
    qreply_ok(pk, 4);
    enc_str(pk, "model");
    enc_strn(pk, md->name, md->name_len);
    enc_str(pk, "epoch");
    msgpack_pack_uint32(pk, e->epoch);
    enc_str(pk, "method");
    enc_str(pk, xm_method_name((xm_method_t)m));
    enc_str(pk, "spearman");
    s_enc_agreement(s, pk, e, m);
    return 0;
}

static void
s_enc_last(msgpack_packer *pk, const glast_t *l)
{
    msgpack_pack_map(pk, WINDOW_FIELDS + 1);
    s_enc_window(pk, l, NULL);
    enc_str(pk, "ts");
    msgpack_pack_int64(pk, l->ts);
}

int
global_op_drift(server_t *s, qreq_t *q, msgpack_packer *pk)
{
    model_t *md;
    gmodel_t *gm;
    gepoch_t *e = s_req_epoch(s, q, &md, &gm);
    if (!e)
        return -1;
    int m = s_method_arg(q, false);
    if (m == -1)
        return -1;
    unsigned mask = m >= 0 ? XM_BIT(m) & e->methods : e->methods;
    const global_params_t *p = &s->global.p;
    qreply_ok(pk, 7);
    enc_str(pk, "model");
    enc_strn(pk, md->name, md->name_len);
    enc_str(pk, "epoch");
    msgpack_pack_uint32(pk, e->epoch);
    enc_str(pk, "window");
    msgpack_pack_uint32(pk, p->window);
    enc_str(pk, "thresholds");
    msgpack_pack_map(pk, 4);
    enc_str(pk, "rho_min");
    msgpack_pack_double(pk, p->drift.rho_min);
    enc_str(pk, "ndcg_min");
    msgpack_pack_double(pk, p->drift.ndcg_min);
    enc_str(pk, "ndcg_k");
    msgpack_pack_uint32(pk, p->drift.ndcg_k);
    enc_str(pk, "js_max");
    msgpack_pack_double(pk, p->drift.js_max);
    enc_str(pk, "methods");
    msgpack_pack_map(pk, (size_t)__builtin_popcount(mask));
    for (int k = 0; k < XM_NMETHODS; k++) {
        if (!(mask & XM_BIT(k)))
            continue;
        const drift_t *d = &e->drift[k];
        enc_str(pk, xm_method_name((xm_method_t)k));
        msgpack_pack_map(pk, 4);
        enc_str(pk, "reference");
        enc_str(pk, drift_ref_name(d->ref_kind));
        enc_str(pk, "filled");
        msgpack_pack_uint32(pk, d->filled);
        enc_str(pk, "windows");
        msgpack_pack_uint64(pk, d->closed);
        enc_str(pk, "last");
        if (e->last[k].valid)
            s_enc_last(pk, &e->last[k]);
        else
            msgpack_pack_nil(pk);
    }
    enc_str(pk, "alerts_total");
    msgpack_pack_uint64(pk, gm->alerts_total);
    enc_str(pk, "alerts");
    uint32_t n = gm->alerts_count, kept = s->global.p.alerts_kept;
    uint32_t shown = 0;
    for (uint32_t k = 0; k < n; k++) {
        const galert_t *a = &gm->alerts[(gm->alerts_next + kept - n + k) % kept];
        shown += m < 0 || a->method == m;
    }
    msgpack_pack_array(pk, shown);
    for (uint32_t k = 0; k < n; k++) {
        const galert_t *a = &gm->alerts[(gm->alerts_next + kept - n + k) % kept];
        if (m >= 0 && a->method != m)
            continue;
        msgpack_pack_map(pk, 8);
        enc_str(pk, "ts");
        msgpack_pack_int64(pk, a->ts);
        enc_str(pk, "epoch");
        msgpack_pack_uint32(pk, a->epoch);
        enc_str(pk, "method");
        enc_str(pk, xm_method_name((xm_method_t)a->method));
        enc_str(pk, "window");
        msgpack_pack_uint64(pk, a->window);
        enc_str(pk, "reference");
        enc_str(pk, drift_ref_name(a->ref));
        s_enc_stats(pk, &a->spearman, &a->ndcg, &a->js);
    }
    return 0;
}
