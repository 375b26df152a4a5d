/*  publish: the four topics and their encoders. See publish.h and
    proto/explanations.md, proto/global.md.  */
#include "publish.h"

#include "rank.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

void
publisher_init(publisher_t *p, stats_t *stats, void *sock, publish_sink_fn sink, void *sink_arg)
{
    memset(p, 0, sizeof *p);
    p->sock = sock;
    p->sink = sink;
    p->sink_arg = sink_arg;
    p->stats = stats;
    msgpack_sbuffer_init(&p->buf);
    msgpack_packer_init(&p->pk, &p->buf, msgpack_sbuffer_write);
}

void
publisher_destroy(publisher_t *p)
{
    msgpack_sbuffer_destroy(&p->buf);
}

/* ---- encoders ---------------------------------------------------------- */

void
enc_strn(msgpack_packer *pk, const void *s, size_t len)
{
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

void
enc_str(msgpack_packer *pk, const char *s)
{
    enc_strn(pk, s, strlen(s));
}

void
enc_id(msgpack_packer *pk, const wire_id_t *id)
{
    if (id->is_str)
        enc_strn(pk, id->s.ptr, id->s.len);
    else
        msgpack_pack_uint64(pk, id->u);
}

void
enc_attr(msgpack_packer *pk, unsigned computed, const float *const attr[XM_NMETHODS], uint32_t nf)
{
    msgpack_pack_map(pk, (size_t)__builtin_popcount(computed));
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(computed & XM_BIT(m)))
            continue;
        enc_str(pk, xm_method_name((xm_method_t)m));
        msgpack_pack_array(pk, nf);
        for (uint32_t k = 0; k < nf; k++)
            msgpack_pack_float(pk, attr[m][k]);
    }
}

void
enc_features(msgpack_packer *pk, const schema_t *sc)
{
    msgpack_pack_array(pk, sc->nf);
    for (uint32_t k = 0; k < sc->nf; k++)
        enc_str(pk, sc->features[k]);
}

void
enc_groups(msgpack_packer *pk, const schema_t *sc)
{
    msgpack_pack_map(pk, sc->grouped ? sc->ngroups : 0);
    for (uint32_t f = 0; sc->grouped && f < sc->nf; f++) {
        if (!sc->gnames[f])
            continue;
        enc_str(pk, sc->gnames[f]);
        uint32_t cnt = sc->gmap.first[f + 1] - sc->gmap.first[f];
        msgpack_pack_array(pk, cnt);
        for (uint32_t k = 0; k < cnt; k++)
            enc_str(pk, sc->tokens[schema_feature_token(sc, f, k)]);
    }
}

static void
s_enc_stat(msgpack_packer *pk, const drift_stat_t *st)
{
    if (st->defined)
        msgpack_pack_double(pk, st->value);
    else
        msgpack_pack_nil(pk);
}

void
publish_enc_stats(msgpack_packer *pk, const drift_stat_t *spearman, const drift_stat_t *ndcg,
                  const drift_stat_t *js)
{
    enc_str(pk, "spearman");
    s_enc_stat(pk, spearman);
    enc_str(pk, "ndcg");
    s_enc_stat(pk, ndcg);
    enc_str(pk, "js");
    s_enc_stat(pk, js);
}

static const char *s_stat_names[DETECT_NSTAT] = {"spearman", "ndcg", "js"};

static void
s_enc_per_stat(msgpack_packer *pk, const bool *has, const double *v)
{
    msgpack_pack_map(pk, DETECT_NSTAT);
    for (int i = 0; i < DETECT_NSTAT; i++) {
        enc_str(pk, s_stat_names[i]);
        if (has[i])
            msgpack_pack_double(pk, v[i]);
        else
            msgpack_pack_nil(pk);
    }
}

void
publish_enc_verdict(msgpack_packer *pk, const detect_verdict_t *v)
{
    msgpack_pack_map(pk, 5);
    enc_str(pk, "mode");
    enc_str(pk, detect_mode_name(v->mode));
    enc_str(pk, "calibrating");
    enc_bool(pk, v->calibrating);
    enc_str(pk, "z");
    s_enc_per_stat(pk, v->scored, v->z);
    enc_str(pk, "cusum");
    bool cus[DETECT_NSTAT];
    for (int i = 0; i < DETECT_NSTAT; i++)
        cus[i] = v->mode == DETECT_CUSUM && v->scored[i];
    s_enc_per_stat(pk, cus, v->cusum);
    enc_str(pk, "alerts");
    int n = 0;
    for (int i = 0; i < DETECT_NSTAT; i++)
        n += v->alert_stat[i];
    msgpack_pack_array(pk, (uint32_t)n);
    for (int i = 0; i < DETECT_NSTAT; i++)
        if (v->alert_stat[i])
            enc_str(pk, s_stat_names[i]);
}

void
publish_enc_moved(msgpack_packer *pk, const detect_moved_t *m, uint32_t n, const schema_t *sc)
{
    msgpack_pack_array(pk, n);
    for (uint32_t k = 0; k < n; k++) {
        msgpack_pack_map(pk, 8);
        enc_str(pk, "feature");
        if (sc && m[k].feature < sc->nf)
            enc_str(pk, sc->features[m[k].feature]);
        else
            msgpack_pack_nil(pk);
        enc_str(pk, "index");
        msgpack_pack_uint32(pk, m[k].feature);
        enc_str(pk, "ref");
        msgpack_pack_double(pk, m[k].ref);
        enc_str(pk, "cur");
        msgpack_pack_double(pk, m[k].cur);
        enc_str(pk, "delta");
        msgpack_pack_double(pk, m[k].delta);
        enc_str(pk, "ref_rank");
        msgpack_pack_uint32(pk, m[k].ref_rank);
        enc_str(pk, "rank");
        msgpack_pack_uint32(pk, m[k].cur_rank);
        enc_str(pk, "rank_up");
        msgpack_pack_int32(pk, m[k].rank_up);
    }
}

void
publish_enc_window(msgpack_packer *pk, const glast_t *l, const uint32_t *trades,
                   const schema_t *sc)
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
    publish_enc_stats(pk, &l->spearman, &l->ndcg, &l->js);
    enc_str(pk, "alert");
    enc_bool(pk, l->alert);
    enc_str(pk, "verdict");
    publish_enc_verdict(pk, &l->verdict);
    enc_str(pk, "moved");
    publish_enc_moved(pk, l->moved, l->nmoved, sc);
}

void
publish_enc_agreement(msgpack_packer *pk, const gepoch_t *e, int m)
{
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
   pairs the caller writes after. The decayed mean is by event time when
   evd is given (scratch then holds 2 nfeat values), else by trades (the
   mean when that is off too, as in an aggregator). */
static void
s_enc_agg(msgpack_packer *pk, const agg_t *a, const evdecay_t *evd, double *scratch, size_t extra)
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
    if (evd && evd->sum) {
        evdecay_mean(evd, scratch + a->nfeat);
        s_enc_doubles(pk, scratch + a->nfeat, a->nfeat);
    } else
        s_enc_doubles(pk, a->decayed ? a->decayed : a->mean, a->nfeat);
}

/* "methods": map method -> {count, mean, std, decayed[, reference,
   reference_spearman]} for the methods in `mask`. */
static void
s_enc_methods(msgpack_packer *pk, const gepoch_t *e, const agg_t *aggs, const evdecay_t *evd,
              unsigned mask, bool with_refs, double *scratch)
{
    msgpack_pack_map(pk, (size_t)__builtin_popcount(mask));
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(mask & XM_BIT(m)))
            continue;
        enc_str(pk, xm_method_name((xm_method_t)m));
        bool ref = with_refs && e->extref[m];
        s_enc_agg(pk, &aggs[m], evd ? &evd[m] : NULL, scratch, ref ? 2 : 0);
        if (ref) {
            enc_str(pk, "reference");
            s_enc_doubles(pk, e->extref[m], e->nf);
            enc_str(pk, "reference_spearman");
            publish_enc_agreement(pk, e, m);
        }
    }
}

int
publish_enc_glob(msgpack_packer *pk, const global_t *g, const model_t *md, const gepoch_t *e,
                 unsigned mask, const int64_t *only_target, uint64_t seq, int64_t ts)
{
    const schema_t *sc = model_schema(md, e->epoch);
    double *scratch = malloc(2 * (e->nf ? e->nf : 1) * sizeof *scratch);
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
    msgpack_pack_double(pk, g->p.half_life);
    enc_str(pk, "methods");
    s_enc_methods(pk, e, e->all, e->evd, mask, true, scratch);
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
        s_enc_methods(pk, e, e->classes[c].agg, e->classes[c].evd, mask, false, scratch);
    }
    enc_str(pk, "untracked_targets");
    msgpack_pack_uint64(pk, e->untracked);
    if (g->nshards) {
        enc_str(pk, "shards");
        msgpack_pack_uint32(pk, g->nshards);
        enc_str(pk, "stale_shards");
        msgpack_pack_array(pk, (size_t)__builtin_popcount(g->stale_mask));
        for (uint32_t k = 0; k < g->nshards; k++)
            if (g->stale_mask & (1u << k))
                msgpack_pack_uint32(pk, k);
    }
    free(scratch);
    return 0;
}

int
publish_enc_glob_seg(msgpack_packer *pk, const global_t *g, const model_t *md, const gepoch_t *e,
                     const gseg_t *sg, const char *label, unsigned mask, uint64_t seq, int64_t ts)
{
    const schema_t *sc = model_schema(md, e->epoch);
    double *scratch = malloc(2 * (e->nf ? e->nf : 1) * sizeof *scratch);
    if (!scratch)
        return -1;
    enc_str(pk, "model");
    enc_strn(pk, md->name, md->name_len);
    enc_str(pk, "segment");
    enc_str(pk, label);
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
    msgpack_pack_uint64(pk, sg->count);
    enc_str(pk, "half_life");
    msgpack_pack_double(pk, g->p.half_life);
    enc_str(pk, "methods");
    s_enc_methods(pk, e, sg->all, sg->evd, mask & sg->methods, false, scratch);
    free(scratch);
    return 0;
}

#define HEADS_FIELDS 10
static void
s_enc_heads(msgpack_packer *pk, const model_t *md, const gepoch_t *e, uint64_t seq)
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

/* ---- topics ------------------------------------------------------------ */

void
publish_send(publisher_t *p, const void *topic, size_t tlen, const void *body, size_t blen)
{
    int rc;
    if (p->sink)
        rc = p->sink(p->sink_arg, topic, tlen, body, blen);
    else
        rc = zmq_send(p->sock, topic, tlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
                     zmq_send(p->sock, body, blen, ZMQ_DONTWAIT) < 0
                 ? -1
                 : 0;
    if (rc) {
        p->stats->dropped++;
        return;
    }
    p->stats->published++;
}

void
publish_xpl(publisher_t *p, model_t *md, const wire_ingest_t *in, uint32_t b, const xm_result_t *res)
{
    publish_xpl_target(p, md, in, b, in->target ? &in->target[b] : NULL, res);
}

void
publish_xpl_target(publisher_t *p, model_t *md, const wire_ingest_t *in, uint32_t b,
                   const int64_t *target, const xm_result_t *res)
{
    msgpack_packer *pk = &p->pk;
    p->buf.size = 0;
    msgpack_pack_map(pk, 7 + (target != NULL) + (in->y != NULL));
    enc_str(pk, "v");
    msgpack_pack_uint8(pk, 1);
    enc_str(pk, "model");
    enc_strn(pk, md->name, md->name_len);
    enc_str(pk, "id");
    enc_id(pk, &in->ids[b]);
    enc_str(pk, "seq");
    msgpack_pack_uint64(pk, md->xpl_seq++);
    enc_str(pk, "ts");
    msgpack_pack_int64(pk, in->ts);
    enc_str(pk, "epoch");
    msgpack_pack_uint32(pk, md->cur->epoch);
    if (target) {
        enc_str(pk, "target");
        msgpack_pack_int64(pk, *target);
    }
    if (in->y) {
        enc_str(pk, "y");
        msgpack_pack_double(pk, in->y[b]);
    }
    enc_str(pk, "attr");
    enc_attr(pk, res->computed, res->attr, md->cur->nf);
    publish_send(p, md->topic_xpl, md->topic_xpl_len, p->buf.data, p->buf.size);
}

void
publish_drift(publisher_t *p, const model_t *md, const global_closed_t *closed)
{
    /* A segment's windows go out on drift/<model>/<segment>: a subscriber
       to drift/<model> receives them too (ZeroMQ matches prefixes) and
       tells them apart by the body's "segment". */
    char topic[WIRE_MODEL_MAX + SEG_LABEL_MAX + 16];
    const schema_t *sc = model_schema(md, closed->epoch);
    for (int k = 0; k < closed->n; k++) {
        const gclosed_t *w = &closed->w[k];
        msgpack_packer *pk = &p->pk;
        p->buf.size = 0;
        msgpack_pack_map(pk, 7 + PUBLISH_WINDOW_FIELDS + (w->segment ? 1 : 0));
        enc_str(pk, "v");
        msgpack_pack_uint8(pk, 1);
        enc_str(pk, "model");
        enc_strn(pk, md->name, md->name_len);
        if (w->segment) {
            enc_str(pk, "segment");
            enc_str(pk, w->segment);
        }
        enc_str(pk, "seq");
        msgpack_pack_uint64(pk, w->seq);
        enc_str(pk, "ts");
        msgpack_pack_int64(pk, w->last.ts);
        enc_str(pk, "epoch");
        msgpack_pack_uint32(pk, closed->epoch);
        enc_str(pk, "method");
        enc_str(pk, xm_method_name((xm_method_t)w->method));
        uint32_t trades = w->last.trades > UINT32_MAX ? UINT32_MAX : (uint32_t)w->last.trades;
        publish_enc_window(pk, &w->last, &trades, sc);
        int tlen = w->segment ? snprintf(topic, sizeof topic, "drift/%s/%s", md->name, w->segment)
                              : snprintf(topic, sizeof topic, "drift/%s", md->name);
        publish_send(p, topic, (size_t)tlen, p->buf.data, p->buf.size);
    }
}

/* glob/<model>/<segment> of every tracked segment that changed: the
   segment's whole state with a seq of its own, as glob/<model> is the
   model's. A subscriber to glob/<model> receives these too (ZeroMQ
   matches prefixes) and tells them apart by the body's "segment". */
static void
s_publish_segs(publisher_t *p, global_t *g, const model_t *md, uint32_t epoch)
{
    gepoch_t *e = global_epoch(g, md, epoch, false);
    if (!e || !e->seg)
        return;
    msgpack_packer *pk = &p->pk;
    char topic[WIRE_MODEL_MAX + SEG_LABEL_MAX + 16];
    for (uint32_t i = 0; i < e->segs.n; i++) {
        gseg_t *sg = global_seg_take_changed(e, i);
        if (!sg)
            continue;
        const char *label = segtab_label(&e->segs, i);
        p->buf.size = 0;
        msgpack_pack_map(pk, PUBLISH_GLOB_SEG_FIELDS + 1);
        enc_str(pk, "v");
        msgpack_pack_uint8(pk, 1);
        int64_t ts = now_wall_ns();
        if (publish_enc_glob_seg(pk, g, md, e, sg, label, e->methods, sg->glob_seq, ts))
            continue;
        global_seg_glob_sent(sg, ts);
        int tlen = snprintf(topic, sizeof topic, "glob/%s/%s", md->name, label);
        publish_send(p, topic, (size_t)tlen, p->buf.data, p->buf.size);
    }
}

void
publish_changed(publisher_t *p, global_t *g, const models_t *models)
{
    msgpack_packer *pk = &p->pk;
    for (uint32_t k = 0; k < models->count; k++) {
        const model_t *md = models->items[k];
        const gepoch_t *e = global_take_changed(g, md);
        if (!e)
            continue;
        char topic[WIRE_MODEL_MAX + 8];

        p->buf.size = 0;
        msgpack_pack_map(pk, PUBLISH_GLOB_FIELDS_OF(g) + 1);
        enc_str(pk, "v");
        msgpack_pack_uint8(pk, 1);
        int64_t ts = now_wall_ns();
        if (publish_enc_glob(pk, g, md, e, e->methods, NULL, global_glob_seq(g, md), ts) == 0) {
            global_glob_sent(g, md, ts);
            int tlen = snprintf(topic, sizeof topic, "glob/%s", md->name);
            publish_send(p, topic, (size_t)tlen, p->buf.data, p->buf.size);
        }

        p->buf.size = 0;
        msgpack_pack_map(pk, HEADS_FIELDS + 1);
        enc_str(pk, "v");
        msgpack_pack_uint8(pk, 1);
        s_enc_heads(pk, md, e, global_heads_seq_next(g, md));
        int tlen = snprintf(topic, sizeof topic, "heads/%s", md->name);
        publish_send(p, topic, (size_t)tlen, p->buf.data, p->buf.size);
        s_publish_segs(p, g, md, e->epoch);
    }
}
