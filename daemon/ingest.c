/*  ingest: decode -> schema -> explain -> cache -> publish. See ingest.h.  */
#include "ingest.h"

#include "log.h"

#include <inttypes.h>
#include <string.h>

void
ingest_reject(stats_t *stats, model_t *md, xr_reason_t r, const char *model, size_t mlen,
              const char *detail)
{
    stats->rejected[r]++;
    stats->rejected_total++;
    if (md)
        md->rejected++;
    log_limited(LOGK_REJECTED + r, LOG_WARN_, "ingest: rejected message%s%.*s%s: %s: %s",
                mlen ? " for model '" : "", (int)mlen, model ? model : "", mlen ? "'" : "",
                xr_reason_name(r), detail);
}

/* Is the model allowed by the configuration? */
static bool
s_allowed(const ingest_t *s, const wire_sv_t *name)
{
    const cfg_list_t *l = &s->cfg->allow_models;
    if (l->count == 0)
        return true;
    for (int k = 0; k < l->count; k++)
        if (strlen(l->items[k]) == name->len && memcmp(l->items[k], name->ptr, name->len) == 0)
            return true;
    return false;
}

/* Model name of a topic "attn/<model>" when it is valid, for attributing
   a rejected message to its model. */
static model_t *
s_topic_model(ingest_t *s, const ingest_frame_t *topic)
{
    const char *t = topic->data;
    size_t len = topic->size;
    if (len <= 5 || memcmp(t, "attn/", 5) != 0 || !wire_model_name_ok(t + 5, len - 5))
        return NULL;
    return models_find(s->models, t + 5, len - 5);
}

/* Attention rows must be probability distributions (contract: post-
   softmax attention); anything else, e.g. negated or unnormalised
   values, would be explained into meaningless numbers and poison the
   model's global means and drift. Per trade, like nonfinite: true when
   the trade is to be explained. Gradients are not constrained. */
static bool
s_attention_ok(ingest_t *s, model_t *md, const wire_ingest_t *in, uint32_t b, const uint8_t *a)
{
    int policy = s->cfg->attention_check_id;
    wire_attn_bad_t bad;
    if (policy == CFG_ATTN_OFF ||
        wire_attn_rows_ok(&md->cur->shape, in->dtype, a, (float)s->cfg->attention_tol, &bad))
        return true;
    char why[192];
    snprintf(why, sizeof why, "trade %" PRIu32 " of %" PRIu32 ": attention row l=%" PRIu32
             " h=%" PRIu32 " i=%" PRIu32 " sums to %.6g, min %.6g (tolerance %g)", b, in->B, bad.l,
             bad.h, bad.i, (double)bad.sum, (double)bad.min, s->cfg->attention_tol);
    if (policy == CFG_ATTN_WARN) {
        s->stats->attention_warned++;
        log_limited(LOGK_ATTN_WARN, LOG_WARN_, "ingest: model '%s': explained although %s",
                    md->name, why);
        return true;
    }
    ingest_reject(s->stats, md, XR_ATTENTION, md->name, md->name_len, why);
    return false;
}

/* The fused form's counterpart of s_attention_ok: rows of M are
   distributions (as means of distributions), the head statistics are in
   range (wire_fused_trade_ok). */
static bool
s_fused_ok(ingest_t *s, model_t *md, const wire_ingest_t *in, uint32_t b)
{
    int policy = s->cfg->attention_check_id;
    wire_attn_bad_t bad;
    if (policy == CFG_ATTN_OFF || wire_fused_trade_ok(in, b, (float)s->cfg->attention_tol, &bad))
        return true;
    char why[192];
    if (bad.i == UINT32_MAX)
        snprintf(why, sizeof why, "trade %" PRIu32 " of %" PRIu32 ": fused head statistic l=%" PRIu32
                 " h=%" PRIu32 " is %.6g, out of range (tolerance %g)", b, in->B, bad.l, bad.h,
                 (double)bad.sum, s->cfg->attention_tol);
    else
        snprintf(why, sizeof why, "trade %" PRIu32 " of %" PRIu32 ": fused attention row l=%" PRIu32
                 " i=%" PRIu32 " sums to %.6g, min %.6g (tolerance %g)", b, in->B, bad.l, bad.i,
                 (double)bad.sum, (double)bad.min, s->cfg->attention_tol);
    if (policy == CFG_ATTN_WARN) {
        s->stats->attention_warned++;
        log_limited(LOGK_ATTN_WARN, LOG_WARN_, "ingest: model '%s': explained although %s",
                    md->name, why);
        return true;
    }
    ingest_reject(s->stats, md, XR_ATTENTION, md->name, md->name_len, why);
    return false;
}

/* One trade of either form: false when its values failed the check
   (rejected and counted there), else the math library's answer in *rc. */
static bool
s_explain_one(ingest_t *s, model_t *md, const wire_ingest_t *in, uint32_t b, const xm_opts_t *opts,
              xm_result_t *res, xm_err_t *rc)
{
    const xm_shape_t *shape = &md->cur->shape;
    /* T gradient (and relevance) blocks per trade with "targets", in
       either form. */
    const uint32_t T = in->ntargets ? in->ntargets : 1;
    if (in->fused) {
        if (!s_fused_ok(s, md, in, b))
            return false;
        const size_t tb = (size_t)b * in->trade_bytes, hb = (size_t)b * in->trade_head_bytes;
        const size_t gtb = tb * T, ghb = hb * T;
        xm_fused_t f = {.mean = in->fattn + tb, .pos = in->fgrad ? in->fgrad + gtb : NULL,
                        .sign = in->fgrad_signed ? in->fgrad_signed + gtb : NULL,
                        .importance = in->head_importance ? in->head_importance + ghb : NULL,
                        .confidence = in->head_confidence + hb, .ntargets = T};
        *rc = xm_explain_fused(s->work, opts, shape, in->dtype, &f, res);
        return true;
    }
    const uint8_t *a = in->attn + (size_t)b * in->trade_bytes;
    const size_t gbytes = (size_t)T * in->trade_bytes;
    const uint8_t *g = in->grad ? in->grad + (size_t)b * gbytes : NULL;
    const uint8_t *rl = in->rel ? in->rel + (size_t)b * gbytes : NULL;
    if (!s_attention_ok(s, md, in, b, a))
        return false;
    xm_input_t xin = {.attn = a, .grad = g, .rel = rl, .ntargets = T};
    *rc = xm_explain_ex(s->work, opts, shape, in->dtype, &xin, res);
    return true;
}

/* A grouped schema's result: every method's vector (T of them for the
   gradient methods) summed per feature after the readout (MATH.md,
   "Feature groups"), into the schema's own buffer. Everything after
   this, cache, xpl/, aggregates and drift, sees features only. False
   when memory runs out. */
static bool
s_group_result(schema_t *sc, uint32_t T, xm_result_t *res)
{
    const uint32_t npos = sc->gmap.npos, nf = sc->nf;
    const size_t need = (size_t)XM_NMETHODS * T * nf;
    if (need > sc->gcap) {
        float *p = realloc(sc->gout, need * sizeof *p);
        if (!p)
            return false;
        sc->gout = p;
        sc->gcap = need;
    }
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(res->computed & XM_BIT(m)) || !res->attr[m])
            continue;
        const uint32_t count = (XM_GRAD_METHODS & XM_BIT(m)) ? T : 1;
        float *out = sc->gout + (size_t)m * T * nf;
        xm_groups_apply(&sc->gmap, res->attr[m], count, out);
        res->attr[m] = out;
    }
    (void)npos;
    return true;
}

/* The explain options of a model: the global ones, or its own when the
   configuration has a [model.NAME] section for it (looked up only when
   there are such sections, so the default path costs nothing). */
static void
s_model_opts(const ingest_t *s, const model_t *md, xm_opts_t *out)
{
    *out = *s->opts;
    if (s->cfg->nmodel_opts)
        config_model_opts(s->cfg, md->name, out);
}

/* A trade explained for T targets: one xpl/ message per target, named by
   its class, with every method (the gradient methods of that target);
   target 0's result is the trade's, each further one adds only its
   gradient methods to its class (global_add_target). */
static void
s_publish_targets(ingest_t *s, model_t *md, const wire_ingest_t *in, uint32_t b,
                  const xm_result_t *res, const char *label, size_t llen)
{
    const uint32_t nf = md->cur->nf;
    const size_t lh = (size_t)md->cur->shape.L * md->cur->shape.H;
    for (uint32_t t = 0; t < in->ntargets; t++) {
        xm_result_t rt = *res;
        for (int m = 0; m < XM_NMETHODS; m++)
            if ((XM_GRAD_METHODS & XM_BIT(m)) && rt.attr[m])
                rt.attr[m] += (size_t)t * nf;
        if (rt.head_importance)
            rt.head_importance += t * lh;
        publish_xpl_target(s->pub, md, in, b, &in->targets[t], &rt);
        global_closed_t closed;
        if (t == 0) {
            global_add_seg(s->global, md, &in->targets[t], &rt, label, llen, &closed);
        } else {
            rt.computed &= XM_GRAD_METHODS;
            global_add_target(s->global, md, &in->targets[t], &rt, label, llen, &closed);
        }
        if (closed.n)
            publish_drift(s->pub, md, &closed);
    }
}

static void
s_explain_trades(ingest_t *s, model_t *md, const wire_ingest_t *in, int64_t t_recv)
{
    const xm_shape_t *shape = &md->cur->shape;
    const segkeys_t *keys = &s->cfg->segkeys;
    seg_iter_t tags;
    if (in->tags)
        seg_iter_init(&tags, in->tags, in->tags_len, in->B);
    xm_opts_t mopts;
    s_model_opts(s, md, &mopts);
    for (uint32_t b = 0; b < in->B; b++) {
        /* The trade's segment, read before anything can skip the trade so
           that the per-trade tags stay in step. */
        char label[SEG_LABEL_MAX + 1];
        size_t llen = 0;
        if (in->tags) {
            seg_tag_t tv[SEG_TAGS_MAX];
            uint32_t nt;
            if (seg_iter_next(&tags, tv, &nt) == SEG_OK)
                llen = segkeys_label(keys, tv, nt, label);
        }
        xm_opts_t opts = mopts;
        if (opts.methods & XM_BIT(XM_FLOW)) {
            uint64_t every = s->cfg->flow_every;
            if (every == 0 || md->flow_counter % every != 0)
                opts.methods &= ~XM_BIT(XM_FLOW);
            md->flow_counter++;
        }
        xm_result_t res;
        xm_err_t rc;
        if (!s_explain_one(s, md, in, b, &opts, &res, &rc))
            continue;
        if (rc != XM_OK) {
            char why[128];
            snprintf(why, sizeof why, "trade %" PRIu32 " of %" PRIu32 ": %s", b, in->B,
                     rc == XM_ENONFINITE ? (in->fused ? "NaN or Inf in the fused tensors"
                                            : in->rel ? "NaN or Inf in attn, grad or rel"
                                                      : "NaN or Inf in attn or grad")
                     : rc == XM_ENOMEM   ? "out of memory"
                     : rc == XM_EHEADS   ? "the options need every head"
                                         : "explain.start_layer is outside -L..L-1 for this model");
            /* XM_EARG here is the configured start layer outside -L..L-1
               for this model's L: a shape the options cannot explain. */
            xr_reason_t r = rc == XM_ENONFINITE ? XR_NONFINITE
                            : rc == XM_EARG     ? XR_SHAPE
                            : rc == XM_EHEADS   ? XR_NEEDS_HEADS
                                                : XR_INTERNAL;
            ingest_reject(s->stats, md, r, md->name, md->name_len, why);
            continue;
        }
        if (md->cur->grouped && !s_group_result(md->cur, in->ntargets ? in->ntargets : 1, &res)) {
            ingest_reject(s->stats, md, XR_INTERNAL, md->name, md->name_len,
                          "out of memory for the feature groups' sums");
            continue;
        }
        const float *roll = xm_work_rollout_layers(s->work);
        uint32_t start = 0;     /* resolved: xm_explain_ex accepted it */
        xm_start_layer(opts.start_layer, shape->L, &start);
        cache_put(s->cache, &(cache_put_t){
            .model = md->index, .epoch = md->cur->epoch, .id = &in->ids[b], .ts = in->ts,
            .target = in->target ? &in->target[b] : NULL, .y = in->y ? &in->y[b] : NULL,
            .shape = shape, .res = &res, .roll = roll, .flow = xm_work_flow_layers(s->work),
            .grad = xm_work_grad_layers(s->work), .resnorm = opts.grad_resnorm, .start = start,
            .nf = md->cur->nf});
        global_closed_t closed;
        if (!in->ntargets) {
            publish_xpl(s->pub, md, in, b, &res);
            global_add_seg(s->global, md, in->target ? &in->target[b] : NULL, &res, label, llen,
                           &closed);
            if (closed.n)
                publish_drift(s->pub, md, &closed);
        } else {
            s_publish_targets(s, md, in, b, &res, label, llen);
        }
        md->explained++;
        s->stats->explained++;
        stats_latency(s->stats, (uint64_t)(now_mono_ns() - t_recv));
        if (in->ts > 0)
            stats_latency_ts(s->stats, now_wall_ns() - in->ts);
    }
}

/* Whether a fused message can be explained with the options of its
   model (its [model.NAME] section over the global ones) exactly as the
   full tensors would be: XR_OK, or the reason and why it cannot.
   - head fusion max or min needs every head (needs_heads);
   - lrp_rollout weighs G * Rel per head, and the relevance has no fused
     form (needs_heads): a model asking for it sends its gradients with
     every head (without a gradient neither form has lrp_rollout);
   - grad_rollout_signed is mean_h G * A, which P = mean_h max(0, G * A)
     does not give: with fgrad it needs fgrad_signed (fused_form). */
static xr_reason_t
s_fused_refusal(const ingest_t *s, const wire_ingest_t *in, char *why, size_t len)
{
    xm_opts_t o = *s->opts;
    if (s->cfg->nmodel_opts) {
        char name[WIRE_MODEL_MAX + 1];
        memcpy(name, in->model.ptr, in->model.len);
        name[in->model.len] = '\0';
        config_model_opts(s->cfg, name, &o);
    }
    if (o.fusion != XM_FUSE_MEAN) {
        snprintf(why, len, "a fused message, and head fusion is max or min (explain.fusion or "
                 "its [model.NAME] section): send every head");
        return XR_NEEDS_HEADS;
    }
    if ((o.methods & XM_BIT(XM_LRP_ROLLOUT)) && in->fgrad) {
        snprintf(why, len, "a fused message with fgrad, and lrp_rollout is asked for "
                 "(explain.methods or its [model.NAME] section): its relevance needs every "
                 "head, send attn, grad and rel");
        return XR_NEEDS_HEADS;
    }
    if ((o.methods & XM_BIT(XM_GRAD_ROLLOUT_SIGNED)) && in->fgrad && !in->fgrad_signed) {
        snprintf(why, len, "grad_rollout_signed is asked for (explain.methods or its "
                 "[model.NAME] section) and the fused message has fgrad without fgrad_signed");
        return XR_FUSED_FORM;
    }
    return XR_OK;
}

/* Sequence tracking counts every message that names its seq, so that a
   rejected message is not mistaken for a lost one. */
static void
s_track_seq(ingest_t *s, model_t *md, uint64_t seq)
{
    bool restart;
    uint64_t lost = model_track_seq(md, seq, &restart);
    md->lost += lost;
    s->stats->lost += lost;
    if (lost)
        log_limited(LOGK_SEQ_LOST, LOG_WARN_, "ingest: model '%s': %" PRIu64
                    " message(s) lost before seq %" PRIu64, md->name, lost, seq);
    if (restart) {
        md->restarts++;
        s->stats->restarts++;
        log_limited(LOGK_RESTART, LOG_NOTICE_, "ingest: model '%s': publisher restarted "
                    "(seq went back to %" PRIu64 ")", md->name, seq);
    }
}

void
ingest_handle(ingest_t *s, const ingest_frame_t *parts, int nparts, int64_t t_recv)
{
    s->stats->received++;
    if (nparts != 2) {
        char why[64];
        snprintf(why, sizeof why, "%d frames, expected 2 (topic, body)", nparts);
        model_t *md = nparts >= 1 ? s_topic_model(s, &parts[0]) : NULL;
        if (md) {
            md->received++;
            md->unsequenced++;
        }
        ingest_reject(s->stats, md, XR_FRAMES, md ? md->name : NULL, md ? md->name_len : 0, why);
        return;
    }
    wire_ingest_t in;
    xr_reason_t r = wire_decode_ingest(s->dec, parts[0].data, parts[0].size, parts[1].data,
                                       parts[1].size, &in);
    model_t *md = r == XR_OK ? models_find(s->models, in.model.ptr, in.model.len)
                             : s_topic_model(s, &parts[0]);
    if (md) {
        md->received++;
        if (in.has_seq && r != XR_TOPIC)
            s_track_seq(s, md, in.seq);
        else
            md->unsequenced++;
    }
    if (r != XR_OK) {
        ingest_reject(s->stats, md, r, md ? md->name : NULL, md ? md->name_len : 0, wire_detail(s->dec));
        return;
    }
    if (in.fused) {
        /* What the model's options ask of a fused message, checked before
           the message changes anything (no model, no schema). */
        char fwhy[192];
        xr_reason_t fr = s_fused_refusal(s, &in, fwhy, sizeof fwhy);
        if (fr != XR_OK) {
            ingest_reject(s->stats, md, fr, md ? md->name : (const char *)in.model.ptr,
                          md ? md->name_len : in.model.len, fwhy);
            return;
        }
    }
    char why[160];
    bool new_epoch;
    if (!md) {
        if (!s_allowed(s, &in.model)) {
            ingest_reject(s->stats, NULL, XR_NOT_ALLOWED, (const char *)in.model.ptr, in.model.len,
                          "model is not in ingest.allow_models");
            return;
        }
        if (!(md = models_add(s->models, in.model.ptr, in.model.len))) {
            ingest_reject(s->stats, NULL, XR_TOO_MANY_MODELS, (const char *)in.model.ptr, in.model.len,
                          "model table is full (ingest.max_models)");
            return;
        }
        if ((r = model_apply_schema_limited(md, &in, (uint32_t)s->cfg->schema_rate, now_mono_ns(),
                                            &new_epoch, why, sizeof why)) != XR_OK) {
            /* A rejected message changes nothing: no schema, no model. */
            models_drop_last(s->models, md);
            ingest_reject(s->stats, NULL, r, (const char *)in.model.ptr, in.model.len, why);
            return;
        }
        log_limited(LOGK_NEW_MODEL, LOG_INFO_, "ingest: new model '%s'", md->name);
        md->received++;
        s_track_seq(s, md, in.seq);
    } else {
        if (!s_allowed(s, &in.model)) {
            /* The allow-list can shrink on SIGHUP. */
            ingest_reject(s->stats, md, XR_NOT_ALLOWED, md->name, md->name_len,
                          "model is not in ingest.allow_models");
            return;
        }
        if ((r = model_apply_schema_limited(md, &in, (uint32_t)s->cfg->schema_rate, now_mono_ns(),
                                            &new_epoch, why, sizeof why)) != XR_OK) {
            ingest_reject(s->stats, md, r, md->name, md->name_len, why);
            return;
        }
    }
    if (new_epoch)
        log_limited(LOGK_EPOCH, LOG_INFO_,
                    "ingest: model '%s': schema epoch %" PRIu32 " (L=%" PRIu32 " H=%" PRIu32
                    " n=%" PRIu32 " cls=%" PRId32 ")", md->name, md->cur->epoch,
                    md->cur->shape.L, md->cur->shape.H, md->cur->shape.n, md->cur->shape.cls);
    md->last_dtype = in.dtype;
    md->last_ts = in.ts;
    md->trades += in.B;
    s->stats->received_trades += in.B;
    s_explain_trades(s, md, &in, t_recv);
}
