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

static void
s_explain_trades(ingest_t *s, model_t *md, const wire_ingest_t *in, int64_t t_recv)
{
    const xm_shape_t *shape = &md->cur->shape;
    for (uint32_t b = 0; b < in->B; b++) {
        xm_opts_t opts = *s->opts;
        if (opts.methods & XM_BIT(XM_FLOW)) {
            uint64_t every = s->cfg->flow_every;
            if (every == 0 || md->flow_counter % every != 0)
                opts.methods &= ~XM_BIT(XM_FLOW);
            md->flow_counter++;
        }
        const uint8_t *a = in->attn + (size_t)b * in->trade_bytes;
        const uint8_t *g = in->grad ? in->grad + (size_t)b * in->trade_bytes : NULL;
        if (!s_attention_ok(s, md, in, b, a))
            continue;
        xm_result_t res;
        xm_err_t rc = xm_explain(s->work, &opts, shape, in->dtype, a, g, &res);
        if (rc != XM_OK) {
            char why[96];
            snprintf(why, sizeof why, "trade %" PRIu32 " of %" PRIu32 ": %s", b, in->B,
                     rc == XM_ENONFINITE ? "NaN or Inf in attn or grad"
                     : rc == XM_ENOMEM   ? "out of memory"
                                         : "shape refused by the math library");
            ingest_reject(s->stats, md, rc == XM_ENONFINITE ? XR_NONFINITE : XR_INTERNAL, md->name,
                          md->name_len, why);
            continue;
        }
        const float *roll = xm_work_rollout_layers(s->work);
        cache_put(s->cache, &(cache_put_t){
            .model = md->index, .epoch = md->cur->epoch, .id = &in->ids[b], .ts = in->ts,
            .target = in->target ? &in->target[b] : NULL, .y = in->y ? &in->y[b] : NULL,
            .shape = shape, .res = &res, .roll = roll, .flow = xm_work_flow_layers(s->work),
            .grad = xm_work_grad_layers(s->work), .resnorm = opts.grad_resnorm});
        publish_xpl(s->pub, md, in, b, &res);
        global_closed_t closed;
        global_add(s->global, md, in->target ? &in->target[b] : NULL, &res, &closed);
        if (closed.n)
            publish_drift(s->pub, s->global, md, &closed);
        md->explained++;
        s->stats->explained++;
        stats_latency(s->stats, (uint64_t)(now_mono_ns() - t_recv));
        if (in->ts > 0)
            stats_latency_ts(s->stats, now_wall_ns() - in->ts);
    }
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
