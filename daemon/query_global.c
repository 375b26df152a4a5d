/*  query_global: the ops on global state, global, baseline, reference
    and drift. They read and change that state through global.h and
    write their replies with the encoders publish.c shares with glob/ and
    drift/. See query.h and proto/global.md.  */
#include "query.h"

#include "log.h"
#include "publish.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
s_req_epoch(query_t *s, qreq_t *q, model_t **mdp, gmodel_t **gmp)
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
    gepoch_t *e = global_epoch(s->global, md, epoch, false);
    if (!e) {
        qreq_fail(q, "not_found", "model '%s' has no global state for epoch %" PRIu32, md->name, epoch);
        return NULL;
    }
    *mdp = md;
    *gmp = global_model(s->global, md);
    return e;
}

int
query_op_global(query_t *s, qreq_t *q, msgpack_packer *pk)
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
    const mpr_obj_t *so = qreq_arg(q, "segment", NULL);
    if (so && so->type == MPR_STR) {
        const gseg_t *sg = global_segment(e, (const char *)so->v.raw.ptr, so->v.raw.len);
        if (!sg)
            return qreq_fail(q, "not_found", "model '%s' epoch %" PRIu32 " tracks no segment '%.*s'",
                             md->name, e->epoch, so->v.raw.len > 64 ? 64 : (int)so->v.raw.len,
                             (const char *)so->v.raw.ptr);
        if (qreq_arg(q, "target", NULL))
            return qreq_fail(q, "bad_argument", "segments keep no per-class means (they would "
                             "multiply a segment's memory by max_targets): ask for segment '%.*s' "
                             "without 'target', or for 'target' without 'segment'",
                             so->v.raw.len > 64 ? 64 : (int)so->v.raw.len,
                             (const char *)so->v.raw.ptr);
        char label[SEG_LABEL_MAX + 1];
        snprintf(label, sizeof label, "%.*s", (int)so->v.raw.len, (const char *)so->v.raw.ptr);
        /* The Clone pattern per segment, as for the model below: the seq
           of the segment's last glob/, after sending a pending change. */
        bool current = e->epoch == md->cur->epoch;
        if (sg->dirty && current) {
            gm->dirty = true;       /* publish_changed walks the segments of changed models */
            publish_changed(s->pub, s->global, s->models);
        }
        uint64_t seq = sg->glob_seq ? sg->glob_seq - 1 : 0;
        qreply_ok(pk, PUBLISH_GLOB_SEG_FIELDS);
        if (publish_enc_glob_seg(pk, s->global, md, e, sg, label, mask, seq,
                                 current && sg->glob_seq ? sg->glob_ts : now_wall_ns()))
            return qreq_fail(q, "internal", "out of memory");
        return 0;
    }
    if (so && so->type != MPR_NIL)
        return qreq_fail(q, "bad_request", "argument 'segment' must be a str");
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
        /* Make the snapshot exactly the state of seq: send it now (the
           contract's one publishing query, see query.h). */
        publish_changed(s->pub, s->global, s->models);
        seq = gm->glob_seq - 1;
    }
    qreply_ok(pk, PUBLISH_GLOB_FIELDS_OF(s->global));
    /* ts: when the state of seq was published (now, for an old epoch). */
    bool current = e->epoch == md->cur->epoch;
    if (publish_enc_glob(pk, s->global, md, e, mask, to ? &target : NULL, seq,
                         current ? gm->glob_ts : now_wall_ns()))
        return qreq_fail(q, "internal", "out of memory");
    return 0;
}

int
query_op_baseline(query_t *s, qreq_t *q, msgpack_packer *pk)
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
    mask = global_baseline(s->global, e, mask, pin);
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
query_op_reference(query_t *s, qreq_t *q, msgpack_packer *pk)
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
    gepoch_t *e = global_epoch(s->global, md, md->cur->epoch, true);
    if (!e)
        return qreq_fail(q, "internal", "out of memory");
    /* With "features" (names beside the values) a reference may cover
       more features than the model attributes (a TabTransformer's
       numerical columns): it is compared on those that have an
       attribution, every one of which it must name. */
    mpr_t fitems;
    const mpr_obj_t *fo = qreq_arg(q, "features", &fitems);
    const schema_t *sc = model_schema(md, e->epoch);
    if (fo && (fo->type != MPR_ARRAY || fo->v.count != vo->v.count))
        return qreq_fail(q, "bad_request", "argument 'features' must be an array of str, one "
                         "per value");
    if (fo && !sc)
        return qreq_fail(q, "internal", "the schema of the current epoch is not kept");
    if (!fo && vo->v.count != e->nf)
        return qreq_fail(q, "bad_argument", "'values' has %" PRIu32 " entries, model '%s' has %"
                         PRIu32 " features", vo->v.count, md->name, e->nf);
    double *v = malloc((e->nf ? e->nf : 1) * sizeof *v);
    bool *have = calloc(e->nf ? e->nf : 1, sizeof *have);
    if (!v || !have) {
        free(v);
        free(have);
        return qreq_fail(q, "internal", "out of memory");
    }
    uint32_t used = 0;
    for (uint32_t k = 0; k < vo->v.count; k++) {
        mpr_obj_t it, name;
        if (mpr_next(&items, &it) ||
            !(it.type == MPR_FLOAT || it.type == MPR_UINT || it.type == MPR_INT)) {
            free(v);
            free(have);
            return qreq_fail(q, "bad_request", "values[%" PRIu32 "] is not a number", k);
        }
        double x = it.type == MPR_FLOAT ? it.v.f : it.type == MPR_UINT ? (double)it.v.u : (double)it.v.i;
        if (!isfinite(x)) {
            free(v);
            free(have);
            return qreq_fail(q, "bad_argument", "values[%" PRIu32 "] is not finite", k);
        }
        uint32_t f = k;
        if (fo) {
            if (mpr_next(&fitems, &name) || name.type != MPR_STR) {
                free(v);
                free(have);
                return qreq_fail(q, "bad_request", "features[%" PRIu32 "] is not a str", k);
            }
            for (f = 0; f < e->nf; f++)
                if (strlen(sc->features[f]) == name.v.raw.len &&
                    memcmp(sc->features[f], name.v.raw.ptr, name.v.raw.len) == 0)
                    break;
            if (f == e->nf)
                continue;       /* a feature without attribution: not compared */
            if (have[f]) {
                free(v);
                free(have);
                return qreq_fail(q, "bad_argument", "feature '%s' is named twice", sc->features[f]);
            }
        }
        have[f] = true;
        v[f] = x;
        used++;
    }
    if (used != e->nf) {
        uint32_t f = 0;
        while (f < e->nf && have[f])
            f++;
        free(v);
        free(have);
        return qreq_fail(q, "bad_argument", "the reference names %" PRIu32 " of model '%s''s %"
                         PRIu32 " features (not '%s')", used, md->name, e->nf, sc->features[f]);
    }
    free(have);
    int rc = global_set_reference(s->global, md, e, m, v);
    free(v);
    if (rc)
        return qreq_fail(q, "internal", "out of memory");
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
    publish_enc_agreement(pk, e, m);
    return 0;
}

static void
s_enc_last(msgpack_packer *pk, const glast_t *l, const schema_t *sc)
{
    msgpack_pack_map(pk, PUBLISH_WINDOW_FIELDS + 1);
    publish_enc_window(pk, l, NULL, sc);
    enc_str(pk, "ts");
    msgpack_pack_int64(pk, l->ts);
}

/* An alert is listed for method m (-2: any) and segment seg (NULL: any). */
static bool
s_alert_shown(const galert_t *a, int m, const char *seg, size_t seglen)
{
    if (m >= 0 && a->method != m)
        return false;
    return !seg || (strlen(a->segment) == seglen && !memcmp(a->segment, seg, seglen));
}

int
query_op_drift(query_t *s, qreq_t *q, msgpack_packer *pk)
{
    model_t *md;
    gmodel_t *gm;
    gepoch_t *e = s_req_epoch(s, q, &md, &gm);
    if (!e)
        return -1;
    int m = s_method_arg(q, false);
    if (m == -1)
        return -1;
    /* A segment's own windows, or the model's overall ones. */
    const mpr_obj_t *so = qreq_arg(q, "segment", NULL);
    if (so && so->type != MPR_STR && so->type != MPR_NIL)
        return qreq_fail(q, "bad_request", "argument 'segment' must be a str");
    const gseg_t *sg = NULL;
    const char *seg = NULL;
    size_t seglen = 0;
    if (so && so->type == MPR_STR) {
        seg = (const char *)so->v.raw.ptr;
        seglen = so->v.raw.len;
        if (!(sg = global_segment(e, seg, seglen)))
            return qreq_fail(q, "not_found", "model '%s' epoch %" PRIu32 " tracks no segment '%.*s'",
                             md->name, e->epoch, seglen > 64 ? 64 : (int)seglen, seg);
    }
    unsigned have = sg ? sg->methods : e->methods;
    const drift_t *drs = sg ? sg->drift : e->drift;
    const detect_t *dts = sg ? sg->detect : e->detect;
    const glast_t *lasts = sg ? sg->last : e->last;
    unsigned mask = m >= 0 ? XM_BIT(m) & have : have;
    const global_params_t *p = &s->global->p;
    const schema_t *sc = model_schema(md, e->epoch);
    qreply_ok(pk, 11);
    enc_str(pk, "model");
    enc_strn(pk, md->name, md->name_len);
    enc_str(pk, "epoch");
    msgpack_pack_uint32(pk, e->epoch);
    enc_str(pk, "segment");
    if (sg)
        enc_strn(pk, seg, seglen);
    else
        msgpack_pack_nil(pk);
    enc_str(pk, "segments");
    msgpack_pack_array(pk, e->segs.n);
    for (uint32_t i = 0; i < e->segs.n; i++)
        enc_str(pk, segtab_label(&e->segs, i));
    enc_str(pk, "segments_overflow");
    msgpack_pack_uint64(pk, e->segs.overflow);
    enc_str(pk, "window");
    msgpack_pack_uint32(pk, p->window);
    enc_str(pk, "mode");
    msgpack_pack_map(pk, 8);
    enc_str(pk, "mode");
    enc_str(pk, detect_mode_name(p->detect.mode));
    enc_str(pk, "calib_windows");
    msgpack_pack_uint32(pk, p->detect.calib_windows);
    enc_str(pk, "multiple");
    msgpack_pack_double(pk, p->detect.multiple);
    enc_str(pk, "cusum_k");
    msgpack_pack_double(pk, p->detect.cusum_k);
    enc_str(pk, "cusum_h");
    msgpack_pack_double(pk, p->detect.cusum_h);
    enc_str(pk, "sd_floor");
    msgpack_pack_double(pk, p->detect.sd_floor);
    enc_str(pk, "cusum_arl");
    msgpack_pack_double(pk, s->global->cusum_arl);
    enc_str(pk, "moved_k");
    msgpack_pack_uint32(pk, p->moved_k);
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
        const drift_t *d = &drs[k];
        const detect_t *dt = &dts[k];
        enc_str(pk, xm_method_name((xm_method_t)k));
        /* Event-time windows: the trades refused as late. */
        const evwin_t *ew = sg ? &sg->evw[k] : &e->evw[k];
        bool evt = ew->count != NULL;
        msgpack_pack_map(pk, 6 + (evt ? 1 : 0));
        if (evt) {
            enc_str(pk, "late");
            msgpack_pack_uint64(pk, ew->late);
        }
        enc_str(pk, "calibrated");
        msgpack_pack_uint32(pk, dt->ready ? dt->opts.calib_windows : dt->calib_seen);
        enc_str(pk, "scale");
        msgpack_pack_map(pk, DETECT_NSTAT);
        static const char *names[DETECT_NSTAT] = {"spearman", "ndcg", "js"};
        for (int i = 0; i < DETECT_NSTAT; i++) {
            double mu, sigma;
            enc_str(pk, names[i]);
            if (detect_scale(dt, i, &mu, &sigma)) {
                msgpack_pack_array(pk, 2);
                msgpack_pack_double(pk, mu);
                msgpack_pack_double(pk, sigma);
            } else {
                msgpack_pack_nil(pk);
            }
        }
        enc_str(pk, "reference");
        enc_str(pk, drift_ref_name(d->ref_kind));
        enc_str(pk, "filled");
        msgpack_pack_uint32(pk, d->filled);
        enc_str(pk, "windows");
        msgpack_pack_uint64(pk, d->closed);
        enc_str(pk, "last");
        if (lasts[k].valid)
            s_enc_last(pk, &lasts[k], sc);
        else
            msgpack_pack_nil(pk);
    }
    enc_str(pk, "alerts_total");
    msgpack_pack_uint64(pk, gm->alerts_total);
    enc_str(pk, "alerts");
    uint32_t n = gm->alerts_count, kept = s->global->p.alerts_kept;
    uint32_t shown = 0;
    for (uint32_t k = 0; k < n; k++)
        shown += s_alert_shown(&gm->alerts[(gm->alerts_next + kept - n + k) % kept], m, seg, seglen);
    msgpack_pack_array(pk, shown);
    for (uint32_t k = 0; k < n; k++) {
        const galert_t *a = &gm->alerts[(gm->alerts_next + kept - n + k) % kept];
        if (!s_alert_shown(a, m, seg, seglen))
            continue;
        msgpack_pack_map(pk, 10 + (a->segment[0] ? 1 : 0));
        if (a->segment[0]) {
            enc_str(pk, "segment");
            enc_str(pk, a->segment);
        }
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
        publish_enc_stats(pk, &a->spearman, &a->ndcg, &a->js);
        enc_str(pk, "verdict");
        publish_enc_verdict(pk, &a->verdict);
        enc_str(pk, "moved");
        publish_enc_moved(pk, a->moved, a->nmoved, a->epoch == e->epoch ? sc : NULL);
    }
    return 0;
}
