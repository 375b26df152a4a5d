/*  aggregate_state: the whole state a shard sends its aggregator on
    state/<model>, and its exact merge into the aggregator's global state
    (proto/global.md, "state/<model>"; MATH.md, "Merging across daemons").

    Every publish interval a shard (ingest.shard set) sends, for each model
    with state, the whole state of the model's current epoch: counts,
    means and m2 per method, per class and of the head statistics, the
    time-decayed sums and the event-time windows still held. Whole states,
    never deltas: the aggregator keeps the last one of each shard and
    rebuilds the merged state from them, so a state sent twice, or again
    after the shard restarted, replaces what it replaces and is never
    counted twice.  */
#include "aggregate.h"

#include "log.h"
#include "publish.h"
#include "snap.h"
#include "stats.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* ---- shard side ---------------------------------------------------------- */

static void
s_counters(msgpack_packer *pk, const model_t *md)
{
    msgpack_pack_map(pk, 6);
    enc_str(pk, "received");
    msgpack_pack_uint64(pk, md->received);
    enc_str(pk, "trades");
    msgpack_pack_uint64(pk, md->trades);
    enc_str(pk, "explained");
    msgpack_pack_uint64(pk, md->explained);
    enc_str(pk, "rejected");
    msgpack_pack_uint64(pk, md->rejected);
    enc_str(pk, "lost");
    msgpack_pack_uint64(pk, md->lost);
    enc_str(pk, "restarts");
    msgpack_pack_uint64(pk, md->restarts);
}

/* A method's event-time windows (with an aggregator's bound) and decay. */
static void
s_event(msgpack_packer *pk, const global_t *g, const evwin_t *w, const evdecay_t *d, bool has_bound,
        int64_t bound)
{
    enc_str(pk, "evw");
    if (g->p.window_ns > 0)
        evwin_save(pk, w);
    else
        msgpack_pack_nil(pk);
    enc_str(pk, "evd");
    if (g->p.decay_ns > 0)
        evdecay_save(pk, d);
    else
        msgpack_pack_nil(pk);
    if (has_bound) {
        enc_str(pk, "bound");
        msgpack_pack_int64(pk, bound);
    }
}

static void
s_method(msgpack_packer *pk, const global_t *g, const gepoch_t *e, int m, const aggregate_t *a,
         uint32_t mi)
{
    int64_t bound = 0;
    bool hb = a && g->p.window_ns > 0 && aggregate_bound(a, mi, -1, m, &bound);
    msgpack_pack_map(pk, 4 + hb);
    enc_str(pk, "all");
    agg_save(pk, &e->all[m]);
    s_event(pk, g, &e->evw[m], &e->evd[m], hb, bound);
    enc_str(pk, "classes");
    msgpack_pack_array(pk, e->nclasses);
    for (uint32_t c = 0; c < e->nclasses; c++) {
        msgpack_pack_array(pk, 3);
        msgpack_pack_int64(pk, e->classes[c].target);
        agg_save(pk, &e->classes[c].agg[m]);
        if (g->p.decay_ns > 0)
            evdecay_save(pk, &e->classes[c].evd[m]);
        else
            msgpack_pack_nil(pk);
    }
}

/* The segments: {overflow, list: [[label, count, {method: {all, evw, evd
   [, bound]}}], ...]}. */
static void
s_segments(msgpack_packer *pk, const global_t *g, const gepoch_t *e, const aggregate_t *a,
           uint32_t mi)
{
    uint32_t n = 0;
    for (uint32_t i = 0; e->seg && i < e->segs.n; i++)
        n += e->seg[i] != NULL;
    msgpack_pack_map(pk, 2);
    enc_str(pk, "overflow");
    msgpack_pack_uint64(pk, e->segs.overflow);
    enc_str(pk, "list");
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; e->seg && i < e->segs.n; i++) {
        const gseg_t *sg = e->seg[i];
        if (!sg)
            continue;
        msgpack_pack_array(pk, 3);
        enc_str(pk, segtab_label(&e->segs, i));
        msgpack_pack_uint64(pk, sg->count);
        msgpack_pack_map(pk, (size_t)__builtin_popcount(sg->methods));
        for (int m = 0; m < XM_NMETHODS; m++) {
            if (!(sg->methods & XM_BIT(m)))
                continue;
            int64_t bound = 0;
            bool hb = a && g->p.window_ns > 0 && aggregate_bound(a, mi, (int)i, m, &bound);
            enc_str(pk, xm_method_name((xm_method_t)m));
            msgpack_pack_map(pk, 3 + hb);
            enc_str(pk, "all");
            agg_save(pk, &sg->all[m]);
            s_event(pk, g, &sg->evw[m], &sg->evd[m], hb, bound);
        }
    }
}

/* The daemon-wide rejections, by reason: {total, <reason>: n, ...}. */
static void
s_rejected(msgpack_packer *pk, const stats_t *st)
{
    uint32_t n = 0;
    for (int r = 1; r < XR_NREASONS; r++)
        n += st->rejected[r] != 0;
    msgpack_pack_map(pk, 1 + n);
    enc_str(pk, "total");
    msgpack_pack_uint64(pk, st->rejected_total);
    for (int r = 1; r < XR_NREASONS; r++)
        if (st->rejected[r]) {
            enc_str(pk, xr_reason_name((xr_reason_t)r));
            msgpack_pack_uint64(pk, st->rejected[r]);
        }
}

void
astate_publish(publisher_t *p, const global_t *g, const models_t *models, const stats_t *st,
               uint32_t k, uint32_t n, const aggregate_t *a)
{
    msgpack_packer *pk = &p->pk;
    uint64_t owns = 0;
    if (a) {
        if (!(owns = aggregate_owns(a, &n)))
            return;     /* no shard reported yet: nothing to say */
        k = (uint32_t)__builtin_ctzll(owns);
    }
    for (uint32_t i = 0; i < models->count; i++) {
        const model_t *md = models->items[i];
        const gepoch_t *e = global_current(g, md);
        const schema_t *sc = md->cur;
        if (!e || !sc)
            continue;
        bool segs = g->p.max_segments > 0;
        p->buf.size = 0;
        msgpack_pack_map(pk, 19 + (a != NULL) + segs + sc->grouped);
        enc_str(pk, "v");
        msgpack_pack_uint8(pk, 1);
        enc_str(pk, "model");
        enc_strn(pk, md->name, md->name_len);
        enc_str(pk, "shard");
        msgpack_pack_uint32(pk, k);
        enc_str(pk, "shards");
        msgpack_pack_uint32(pk, n);
        if (a) {
            enc_str(pk, "owns");
            msgpack_pack_array(pk, (size_t)__builtin_popcountll(owns));
            for (uint32_t b = 0; b < AGG_MAX_OWNS; b++)
                if (owns >> b & 1)
                    msgpack_pack_uint32(pk, b);
        }
        enc_str(pk, "ts");
        msgpack_pack_int64(pk, now_wall_ns());
        enc_str(pk, "epoch");
        msgpack_pack_uint32(pk, e->epoch);
        enc_str(pk, "L");
        msgpack_pack_uint32(pk, sc->shape.L);
        enc_str(pk, "H");
        msgpack_pack_uint32(pk, sc->shape.H);
        enc_str(pk, "n");
        msgpack_pack_uint32(pk, sc->shape.n);
        enc_str(pk, "cls");
        msgpack_pack_int32(pk, sc->shape.cls);
        enc_str(pk, "tokens");
        msgpack_pack_array(pk, sc->shape.n);
        for (uint32_t t = 0; t < sc->shape.n; t++)
            enc_str(pk, sc->tokens[t]);
        if (sc->grouped) {      /* the features the records are over */
            enc_str(pk, "groups");
            enc_groups(pk, sc);
        }
        enc_str(pk, "counters");
        s_counters(pk, md);
        enc_str(pk, "rejected");
        s_rejected(pk, st);
        enc_str(pk, "last_ts");
        msgpack_pack_int64(pk, md->last_ts);
        enc_str(pk, "count");
        msgpack_pack_uint64(pk, e->count);
        enc_str(pk, "untracked");
        msgpack_pack_uint64(pk, e->untracked);
        enc_str(pk, "nf");
        msgpack_pack_uint32(pk, e->nf);
        enc_str(pk, "methods");
        msgpack_pack_map(pk, (size_t)__builtin_popcount(e->methods));
        for (int m = 0; m < XM_NMETHODS; m++)
            if (e->methods & XM_BIT(m)) {
                enc_str(pk, xm_method_name((xm_method_t)m));
                s_method(pk, g, e, m, a, md->index);
            }
        enc_str(pk, "heads");
        agg_heads_save(pk, &e->heads);
        if (segs) {
            enc_str(pk, "segments");
            s_segments(pk, g, e, a, md->index);
        }
        char topic[WIRE_MODEL_MAX + 8];
        int tlen = snprintf(topic, sizeof topic, "state/%s", md->name);
        publish_send(p, topic, (size_t)tlen, p->buf.data, p->buf.size);
    }
}

/* ---- aggregator side ------------------------------------------------------ */

/* The header fields of a state message, before its bulk. */
int
astate_peek(const void *body, size_t len, astate_head_t *h)
{
    memset(h, 0, sizeof *h);
    snap_rd_t d;
    snap_rd_init(&d, body, len);
    uint32_t n;
    if (snap_get_map(&d, &n, "state"))
        return -1;
    unsigned seen = 0;
    uint64_t owns = 0;
    enum { V = 1, MODEL = 2, SHARD = 4, SHARDS = 8, EPOCH = 16, L = 32, H = 64, N = 128, CLS = 256,
           TOKENS = 512, NF = 1024 };
    for (uint32_t i = 0; i < n; i++) {
        mpr_obj_t key;
        if (snap_get_key(&d, &key, "state field"))
            return -1;
        int rc = 0;
        uint32_t v32;
        if (mpr_str_eq(&key, "v"))
            rc = snap_get_u32(&d, &v32, "v") || (v32 != 1 ? snap_fail(&d, "v") : 0), seen |= V;
        else if (mpr_str_eq(&key, "model")) {
            const uint8_t *p;
            uint32_t l;
            rc = snap_get_str(&d, &p, &l, "model");
            if (!rc && (l == 0 || l > WIRE_MODEL_MAX || !wire_model_name_ok((const char *)p, l)))
                rc = snap_fail(&d, "model name");
            if (!rc) {
                memcpy(h->model, p, l);
                h->model[l] = 0;
                h->model_len = l;
            }
            seen |= MODEL;
        } else if (mpr_str_eq(&key, "shard"))
            rc = snap_get_u32(&d, &h->shard, "shard"), seen |= SHARD;
        else if (mpr_str_eq(&key, "shards"))
            rc = snap_get_u32(&d, &h->shards, "shards"), seen |= SHARDS;
        else if (mpr_str_eq(&key, "epoch"))
            rc = snap_get_u32(&d, &h->epoch, "epoch"), seen |= EPOCH;
        else if (mpr_str_eq(&key, "L"))
            rc = snap_get_u32(&d, &h->shape.L, "L"), seen |= L;
        else if (mpr_str_eq(&key, "H"))
            rc = snap_get_u32(&d, &h->shape.H, "H"), seen |= H;
        else if (mpr_str_eq(&key, "n"))
            rc = snap_get_u32(&d, &h->shape.n, "n"), seen |= N;
        else if (mpr_str_eq(&key, "nf"))
            rc = snap_get_u32(&d, &h->nf, "nf"), seen |= NF;
        else if (mpr_str_eq(&key, "cls")) {
            int64_t c;
            rc = snap_get_i64(&d, &c, "cls");
            h->shape.cls = (int32_t)c;
            seen |= CLS;
        } else if (mpr_str_eq(&key, "tokens")) {
            uint32_t nt;
            rc = snap_get_array(&d, &nt, "tokens");
            if (!rc && nt > AGG_MAX_TOKENS)
                rc = snap_fail(&d, "too many tokens");
            for (uint32_t t = 0; !rc && t < nt; t++) {
                const uint8_t *p;
                uint32_t l;
                rc = snap_get_str(&d, &p, &l, "token");
                h->tokens[t] = (wire_sv_t){p, l};
            }
            h->ntokens = nt;
            seen |= TOKENS;
        } else if (mpr_str_eq(&key, "groups")) {
            h->groups = d.r.p;
            rc = snap_skip(&d, "groups");
            h->groups_len = rc ? 0 : (size_t)(d.r.p - h->groups);
        } else if (mpr_str_eq(&key, "owns")) {
            uint32_t no;
            rc = snap_get_array(&d, &no, "owns");
            if (!rc && (no == 0 || no > AGG_MAX_OWNS))
                rc = snap_fail(&d, "owns");
            for (uint32_t o = 0; !rc && o < no; o++) {
                uint32_t b;
                rc = snap_get_u32(&d, &b, "owned shard") ||
                     (b >= AGG_MAX_OWNS ? snap_fail(&d, "owned shard") : 0);
                if (!rc)
                    owns |= 1ull << b;
            }
        } else if (mpr_str_eq(&key, "rejected")) {
            uint32_t nr;
            rc = snap_get_map(&d, &nr, "rejected");
            for (uint32_t r = 0; !rc && r < nr; r++) {
                mpr_obj_t rk;
                uint64_t v;
                rc = snap_get_key(&d, &rk, "rejection reason") || snap_get_u64(&d, &v, "rejections");
                if (rc)
                    break;
                if (mpr_str_eq(&rk, "total"))
                    h->rejected_total = v;
                for (int x = 1; x < XR_NREASONS; x++)
                    if (mpr_str_eq(&rk, xr_reason_name((xr_reason_t)x)))
                        h->rejected[x] = v;
            }
            h->has_rejected = !rc;
        } else
            rc = snap_skip(&d, "state field");
        if (rc)
            return -1;
    }
    /* A shard covers itself; an aggregator says which shards it covers. */
    if (!owns && h->shard < AGG_MAX_OWNS)
        owns = 1ull << h->shard;
    h->owns = owns;
    if (snap_fields_all(&d, seen, V | MODEL | SHARD | SHARDS | EPOCH | L | H | N | CLS | TOKENS | NF,
                        "state header") ||
        h->ntokens != h->shape.n || h->shards == 0 || h->shard >= h->shards ||
        h->shape.L == 0 || h->shape.H == 0 || h->epoch == 0 ||
        (h->shards < AGG_MAX_OWNS && h->owns >> h->shards))
        return -1;
    return 0;
}

/* Read one agg record and merge it into dst. */
static int
s_merge_agg(snap_rd_t *d, agg_t *dst, agg_t *tmp)
{
    agg_reset(tmp);
    if (agg_load(d, tmp, SNAP_V2))
        return -1;
    return agg_merge(dst, tmp) ? snap_fail(d, "aggregate of another size") : 0;
}

static int
s_merge_decay(snap_rd_t *d, evdecay_t *dst, evdecay_t *tmp)
{
    if (snap_get_nil(d))
        return dst->sum ? snap_fail(d, "no decayed sums (the shard's global.decay_s differs)") : 0;
    if (!dst->sum)
        return snap_skip(d, "decayed sums");
    evdecay_reset(tmp);
    if (evdecay_load(d, tmp))
        return -1;
    return evdecay_merge(dst, tmp) ? snap_fail(d, "decayed sums of another size") : 0;
}

/* One method's map {all, evw, evd[, bound][, classes]} merged into all,
   evw, evd (classes into e's, when given); *close: the lowest window the
   sender has not closed (its bound when it says one, else its windows'
   next_close), *windows: whether it holds windows. */
static int
s_merge_method(snap_rd_t *d, global_t *g, gepoch_t *e, int m, agg_t *all, evwin_t *evw,
               evdecay_t *evd, astate_scratch_t *sc, int64_t *close, bool *windows)
{
    uint32_t nf;
    bool has_bound = false;
    int64_t bound = 0;
    *close = INT64_MAX;
    *windows = false;
    if (snap_get_map(d, &nf, "method state"))
        return -1;
    for (uint32_t f = 0; f < nf; f++) {
        mpr_obj_t fk;
        if (snap_get_key(d, &fk, "method field"))
            return -1;
        int rc;
        if (mpr_str_eq(&fk, "all"))
            rc = s_merge_agg(d, all, &sc->agg);
        else if (mpr_str_eq(&fk, "evd"))
            rc = s_merge_decay(d, evd, &sc->evd);
        else if (mpr_str_eq(&fk, "bound"))
            rc = snap_get_i64(d, &bound, "bound"), has_bound = true;
        else if (mpr_str_eq(&fk, "evw")) {
            if (snap_get_nil(d))
                rc = g->p.window_ns > 0 ? snap_fail(d, "no event-time windows (the shard's "
                                                       "drift.window_s differs)")
                                        : 0;
            else if (g->p.window_ns <= 0)
                rc = snap_skip(d, "event-time windows");
            else {
                rc = evwin_load(d, &sc->evw);
                if (!rc)
                    rc = evwin_merge(evw, &sc->evw) ? snap_fail(d, "windows of another size") : 0;
                if (!rc && sc->evw.started)
                    *close = sc->evw.next_close;
                *windows = !rc;
            }
        } else if (e && mpr_str_eq(&fk, "classes")) {
            uint32_t ncl;
            rc = snap_get_array(d, &ncl, "classes");
            for (uint32_t c = 0; !rc && c < ncl; c++) {
                int64_t target;
                if (snap_get_array_n(d, 3, "class") || snap_get_i64(d, &target, "class target")) {
                    rc = -1;
                    break;
                }
                gclass_t *cl = global_class(g, e, target);
                if (!cl) {
                    /* Past max_targets here: the shard's classes beyond it
                       count as untracked. */
                    rc = snap_skip(d, "class aggregate") || snap_skip(d, "class decay");
                    continue;
                }
                rc = s_merge_agg(d, &cl->agg[m], &sc->agg) || s_merge_decay(d, &cl->evd[m], &sc->evd);
            }
        } else
            rc = snap_skip(d, "method field");
        if (rc)
            return -1;
    }
    /* An aggregator's windows close where all of its shards' have. */
    if (has_bound && *windows)
        *close = bound;
    return 0;
}

/* The segments of a state: each merged into the epoch's segment of its
   label (created while max_segments admits it; the trades of one that is
   not count in the epoch's overflow, as a daemon counts them). */
static int
s_merge_segments(snap_rd_t *d, global_t *g, gepoch_t *e, astate_scratch_t *sc,
                 astate_merged_t *out, const char **why)
{
    uint32_t n;
    if (snap_get_map(d, &n, "segments"))
        goto fail;
    for (uint32_t i = 0; i < n; i++) {
        mpr_obj_t key;
        if (snap_get_key(d, &key, "segments field"))
            goto fail;
        if (mpr_str_eq(&key, "overflow")) {
            uint64_t v;
            if (snap_get_u64(d, &v, "segments overflow"))
                goto fail;
            if (g->p.max_segments)
                e->segs.overflow += v;
            continue;
        }
        if (!mpr_str_eq(&key, "list") || !g->p.max_segments) {
            /* An aggregator without global.segment_by keeps none. */
            if (snap_skip(d, "segments field"))
                goto fail;
            continue;
        }
        uint32_t ns;
        if (snap_get_array(d, &ns, "segment list"))
            goto fail;
        for (uint32_t s = 0; s < ns; s++) {
            const uint8_t *lp;
            uint32_t ll, nm;
            uint64_t count;
            if (snap_get_array_n(d, 3, "segment") || snap_get_str(d, &lp, &ll, "segment label") ||
                snap_get_u64(d, &count, "segment count") || snap_get_map(d, &nm, "segment methods"))
                goto fail;
            if (ll == 0 || ll > SEG_LABEL_MAX) {
                snap_fail(d, "segment label");
                goto fail;
            }
            gseg_t *sg = NULL;
            int si = -1;
            bool counted = false;
            for (uint32_t j = 0; j < nm; j++) {
                mpr_obj_t mk;
                if (snap_get_key(d, &mk, "segment method"))
                    goto fail;
                int m = xm_method_parse((const char *)mk.v.raw.ptr, mk.v.raw.len);
                if (m < 0) {
                    if (snap_skip(d, "unknown method"))
                        goto fail;
                    continue;
                }
                uint64_t ov = e->segs.overflow;
                if (!(sg = global_segment_method(g, e, (const char *)lp, ll, m, &si))) {
                    /* Not admitted (max_segments): its trades count in
                       overflow, once. */
                    e->segs.overflow = ov + (counted ? 0 : count);
                    counted = true;
                    if (snap_skip(d, "segment method"))
                        goto fail;
                    continue;
                }
                if (astate_scratch_size(sc, e->nf, g)) {
                    *why = "out of memory";
                    return -1;
                }
                int64_t close;
                bool windows;
                if (s_merge_method(d, g, NULL, m, &sg->all[m], &sg->evw[m], &sg->evd[m], sc, &close,
                                   &windows))
                    goto fail;
                if (windows && out->seg_close) {
                    out->seg_windows[si] |= XM_BIT(m);
                    int64_t *c = &out->seg_close[(size_t)si * XM_NMETHODS + m];
                    if (out->fresh && close < *c)
                        *c = close;
                }
            }
            if (sg) {
                sg->count += count;
                if (out->seg_had)
                    out->seg_had[si] |= 1u << out->shard;
            }
        }
    }
    return 0;
fail:
    *why = d->why ? d->why : "malformed";
    return -1;
}

int
astate_merge(const void *body, size_t len, global_t *g, gepoch_t *e, astate_scratch_t *sc,
             astate_merged_t *out, const char **why)
{
    snap_rd_t d;
    snap_rd_init(&d, body, len);
    uint32_t n;
    *why = NULL;
    if (snap_get_map(&d, &n, "state"))
        goto fail;
    for (uint32_t i = 0; i < n; i++) {
        mpr_obj_t key;
        if (snap_get_key(&d, &key, "state field"))
            goto fail;
        if (mpr_str_eq(&key, "count")) {
            uint64_t v;
            if (snap_get_u64(&d, &v, "count"))
                goto fail;
            e->count += v;
        } else if (mpr_str_eq(&key, "untracked")) {
            uint64_t v;
            if (snap_get_u64(&d, &v, "untracked"))
                goto fail;
            e->untracked += v;
        } else if (mpr_str_eq(&key, "last_ts")) {
            int64_t v;
            if (snap_get_i64(&d, &v, "last_ts"))
                goto fail;
            if (v > out->last_ts)
                out->last_ts = v;
        } else if (mpr_str_eq(&key, "counters")) {
            uint32_t nc;
            if (snap_get_map(&d, &nc, "counters"))
                goto fail;
            for (uint32_t c = 0; c < nc; c++) {
                mpr_obj_t ck;
                uint64_t v;
                if (snap_get_key(&d, &ck, "counter") || snap_get_u64(&d, &v, "counter"))
                    goto fail;
                if (mpr_str_eq(&ck, "received"))
                    out->received += v;
                else if (mpr_str_eq(&ck, "trades"))
                    out->trades += v;
                else if (mpr_str_eq(&ck, "explained"))
                    out->explained += v;
                else if (mpr_str_eq(&ck, "rejected"))
                    out->rejected += v;
                else if (mpr_str_eq(&ck, "lost"))
                    out->lost += v;
                else if (mpr_str_eq(&ck, "restarts"))
                    out->restarts += v;
            }
        } else if (mpr_str_eq(&key, "heads")) {
            agg_heads_t *t = &sc->heads;
            if (t->L != e->L || t->H != e->H) {
                agg_heads_destroy(t);
                if (agg_heads_init(t, e->L, e->H)) {
                    *why = "out of memory";
                    return -1;
                }
            }
            agg_reset(&t->importance);
            agg_reset(&t->confidence);
            if (agg_heads_load(&d, t, SNAP_V2))
                goto fail;
            if (agg_heads_merge(&e->heads, t)) {
                snap_fail(&d, "head statistics of another shape");
                goto fail;
            }
        } else if (mpr_str_eq(&key, "methods")) {
            uint32_t nm;
            if (snap_get_map(&d, &nm, "methods"))
                goto fail;
            for (uint32_t j = 0; j < nm; j++) {
                mpr_obj_t mk;
                if (snap_get_key(&d, &mk, "method"))
                    goto fail;
                int m = xm_method_parse((const char *)mk.v.raw.ptr, mk.v.raw.len);
                if (m < 0) {
                    if (snap_skip(&d, "unknown method"))
                        goto fail;
                    continue;
                }
                if (!global_epoch_method(g, e, m) || astate_scratch_size(sc, e->nf, g)) {
                    *why = "out of memory";
                    return -1;
                }
                int64_t close;
                bool windows;
                if (s_merge_method(&d, g, e, m, &e->all[m], &e->evw[m], &e->evd[m], sc, &close,
                                   &windows))
                    goto fail;
                if (windows) {
                    out->has_windows |= XM_BIT(m);
                    out->own_close[m] = close;
                    /* The merged windows close where every fresh shard has. */
                    if (out->fresh && close < out->next_close[m])
                        out->next_close[m] = close;
                }
            }
        } else if (mpr_str_eq(&key, "segments")) {
            if (s_merge_segments(&d, g, e, sc, out, why))
                return -1;
        } else if (snap_skip(&d, "state field"))
            goto fail;
    }
    return 0;
fail:
    *why = d.why ? d.why : "malformed";
    return -1;
}

int
astate_scratch_size(astate_scratch_t *sc, uint32_t nf, const global_t *g)
{
    if (sc->nf == nf && sc->ready)
        return 0;
    astate_scratch_destroy(sc);
    if (agg_init(&sc->agg, nf, 0) || evdecay_init(&sc->evd, nf, g->p.decay_ns > 0 ? g->p.decay_ns : 1) ||
        (g->p.window_ns > 0 && evwin_init(&sc->evw, nf, g->p.window_ns, g->p.late_ns, GLOBAL_EVWIN_KEEP)))
        return -1;
    sc->nf = nf;
    sc->ready = true;
    return 0;
}

void
astate_scratch_destroy(astate_scratch_t *sc)
{
    agg_destroy(&sc->agg);
    evdecay_destroy(&sc->evd);
    evwin_destroy(&sc->evw);
    sc->nf = 0;
    sc->ready = false;
}
