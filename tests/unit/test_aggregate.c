/*  Tests of daemon/aggregate_state: a shard's whole state (state/<model>)
    and its merge into an aggregator's global state, without sockets.

    Three shard worlds and one single world take the same synthetic trades
    (global_add, each trade on the shard its number picks); every shard
    publishes its state through the capturing publisher; a fourth world
    merges the three states (in every order) into its epoch. Counts, means,
    m2, per class, head statistics, time-decayed means and event-time
    windows must be the single world's, within 1e-12 relative, and match a
    float64 two-pass mean kept here. A state made with another window
    length is refused by name; a state cut short anywhere is refused, never
    read past its end.  */
#include "aggregate.h"
#include "daemon_fixture.h"
#include "support.h"

#include <math.h>

#define NF 3
#define NT 300
#define SEC 1000000000LL
#define T0 1796169600000000000LL

static const char *const OPTS[] = {"--drift-window-s", "1", "--drift-lateness-s", "0.5",
                                   "--decay-half-life-s", "2", "--methods", "rollout", NULL};

typedef struct {
    float v[NF];
    float imp[2], conf[2];
    xm_result_t res;
} trade_t;

static const xm_result_t *
mk(trade_t *t, rng_t *r, bool grad)
{
    memset(t, 0, sizeof *t);
    for (int j = 0; j < NF; j++)
        t->v[j] = (float)(0.2 + 0.1 * j + 0.05 * rng_normal(r));
    for (int j = 0; j < 2; j++) {
        t->imp[j] = (float)rng_uniform(r);
        t->conf[j] = (float)rng_uniform(r);
    }
    t->res.computed = XM_BIT(XM_ROLLOUT);
    t->res.attr[XM_ROLLOUT] = t->v;
    t->res.head_importance = grad ? t->imp : NULL;
    t->res.head_confidence = t->conf;
    return &t->res;
}

static void
close_arr(const double *a, const double *b, uint32_t n, const char *what)
{
    for (uint32_t j = 0; j < n; j++)
        cr_assert(close_enough(a[j], b[j], 1e-12, 1e-300), "%s[%u]: %.17g vs %.17g", what, j, a[j],
                  b[j]);
}

static void
same_agg(const agg_t *a, const agg_t *b, const char *what)
{
    cr_assert_eq(a->count, b->count, "%s count %llu vs %llu", what, (unsigned long long)a->count,
                 (unsigned long long)b->count);
    close_arr(a->mean, b->mean, a->nfeat, what);
    close_arr(a->m2, b->m2, a->nfeat, what);
}

static fx_world_t shard[3], single, agg;

/* Feed the trades; returns the float64 mean of the rollout vectors. */
static void
feed(double *mean)
{
    model_t *sm[3], *one = fx_model(&single, "m1", 1, 1, 2, NF + 1, NF);
    for (int k = 0; k < 3; k++)
        sm[k] = fx_model(&shard[k], "m1", 1, 1, 2, NF + 1, NF);
    rng_t r;
    rng_seed(&r, 5);
    double sum[NF] = {0};
    for (int i = 0; i < NT; i++) {
        trade_t t;
        const xm_result_t *res = mk(&t, &r, i % 3 != 0);
        int64_t target = i % 2, ts = T0 + i * (SEC / 25) - (int64_t)(rng_uniform(&r) * 0.3 * SEC);
        int k = (int)(rng_next(&r) % 3);
        global_closed_t c;
        sm[k]->last_ts = ts;
        one->last_ts = ts;
        global_add(&shard[k].global, sm[k], &target, res, &c);
        global_add(&single.global, one, &target, res, &c);
        for (int j = 0; j < NF; j++)
            sum[j] += t.v[j];
    }
    for (int j = 0; j < NF; j++)
        mean[j] = sum[j] / NT;
}

static const stats_t no_stats;

Test(aggregate, three_shard_states_merge_into_the_single_state_in_any_order)
{
    fx_up(&single, OPTS);
    fx_up(&agg, OPTS);
    for (int k = 0; k < 3; k++)
        fx_up(&shard[k], OPTS);
    double ref[NF];
    feed(ref);
    for (int k = 0; k < 3; k++) {
        astate_publish(&shard[k].pub, &shard[k].global, &shard[k].models, &no_stats, (uint32_t)k, 3,
                       NULL);
        cr_assert_eq(shard[k].cap.n, 1);
        cr_assert_str_eq(shard[k].cap.msg[0].topic, "state/m1");
    }
    const int orders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    model_t *am = fx_model(&agg, "m1", 1, 1, 2, NF + 1, NF);
    const gepoch_t *se = global_current(&single.global, models_find(&single.models, "m1", 2));
    cr_assert(se);
    astate_scratch_t sc = {0};
    astate_head_t *h = malloc(sizeof *h);
    for (int o = 0; o < 6; o++) {
        /* A fresh epoch for every order: the aggregator rebuilds. */
        xm_shape_t shape = {1, 2, NF + 1, NF};
        static const uint8_t tk[4][5] = {"tok0", "tok1", "tok2", "tok3"};
        wire_sv_t tok[4];
        for (int j = 0; j < 4; j++)
            tok[j] = (wire_sv_t){tk[j], 4};
        cr_assert_eq(model_restore_schema(am, (uint32_t)(o + 1), &shape, tok, true), 0);
        gepoch_t *e = global_epoch(&agg.global, am, (uint32_t)(o + 1), true);
        cr_assert(e);
        astate_merged_t out = {.fresh = true};
        for (int m = 0; m < XM_NMETHODS; m++)
            out.next_close[m] = INT64_MAX;
        for (int i = 0; i < 3; i++) {
            const fx_msg_t *msg = &shard[orders[o][i]].cap.msg[0];
            cr_assert_eq(astate_peek(msg->body, msg->len, h), 0);
            cr_assert_eq(h->shard, (uint32_t)orders[o][i]);
            cr_assert_eq(h->shards, 3);
            cr_assert_eq(h->epoch, 1);
            cr_assert_eq(h->nf, NF);
            const char *why = NULL;
            cr_assert_eq(astate_merge(msg->body, msg->len, &agg.global, e, &sc, &out, &why), 0,
                         "%s", why);
        }
        cr_assert_eq(e->count, NT);
        cr_assert_eq(out.explained, 0, "the fixture's models explained nothing themselves");
        same_agg(&e->all[XM_ROLLOUT], &se->all[XM_ROLLOUT], "all");
        close_arr(e->all[XM_ROLLOUT].mean, ref, NF, "mean vs float64");
        cr_assert_eq(e->nclasses, 2);
        for (uint32_t c = 0; c < 2; c++) {
            const gclass_t *ac = NULL, *scl = NULL;
            for (uint32_t j = 0; j < 2; j++) {
                if (e->classes[j].target == (int64_t)c)
                    ac = &e->classes[j];
                if (se->classes[j].target == (int64_t)c)
                    scl = &se->classes[j];
            }
            cr_assert(ac && scl);
            same_agg(&ac->agg[XM_ROLLOUT], &scl->agg[XM_ROLLOUT], "class");
            double a[NF], b[NF];
            evdecay_mean(&ac->evd[XM_ROLLOUT], a);
            evdecay_mean(&scl->evd[XM_ROLLOUT], b);
            close_arr(a, b, NF, "class decayed");
        }
        same_agg(&e->heads.importance, &se->heads.importance, "head importance");
        same_agg(&e->heads.confidence, &se->heads.confidence, "head confidence");
        cr_assert_eq(e->heads.importance.count, NT - (NT + 2) / 3);
        double a[NF], b[NF];
        evdecay_mean(&e->evd[XM_ROLLOUT], a);
        evdecay_mean(&se->evd[XM_ROLLOUT], b);
        close_arr(a, b, NF, "decayed");
        /* Windows: every window the single state holds, the same. */
        evwin_t *aw = &e->evw[XM_ROLLOUT];
        evwin_t *sw = (evwin_t *)&se->evw[XM_ROLLOUT];
        cr_assert_eq(aw->max_ts, sw->max_ts);
        cr_assert_eq(aw->next_close, sw->next_close);
        cr_assert_eq(aw->late, sw->late);
        cr_assert(out.has_windows & XM_BIT(XM_ROLLOUT));
        cr_assert_leq(out.next_close[XM_ROLLOUT], sw->next_close);
        int held = 0;
        cr_assert_eq(aw->used, sw->used);
        for (int64_t k = sw->key[0] - 2; k <= sw->key[sw->used - 1] + 2; k++) {
            evwin_view_t va, vb;
            int ra = evwin_get(aw, k, &va), rb = evwin_get(sw, k, &vb);
            cr_assert_eq(ra, rb);
            if (ra < 0)
                continue;
            cr_assert_eq(va.count, vb.count, "window %lld", (long long)k);
            if (vb.count)
                close_arr(va.sum, vb.sum, NF, "window sums");
            held += vb.count > 0;
        }
        cr_assert_gt(held, 8);
    }
    astate_scratch_destroy(&sc);
    agg_heads_destroy(&sc.heads);
    free(h);
    for (int k = 0; k < 3; k++)
        fx_down(&shard[k]);
    fx_down(&single);
    fx_down(&agg);
}

Test(aggregate, refuses_other_windows_and_cut_states)
{
    static const char *const OTHER[] = {"--drift-window-s", "2", "--drift-lateness-s", "0.5",
                                        "--decay-half-life-s", "2", "--methods", "rollout", NULL};
    fx_up(&shard[0], OPTS);
    fx_up(&agg, OTHER);
    model_t *md = fx_model(&shard[0], "m1", 1, 1, 2, NF + 1, NF);
    rng_t r;
    rng_seed(&r, 9);
    for (int i = 0; i < 20; i++) {
        trade_t t;
        global_closed_t c;
        md->last_ts = T0 + i * SEC / 10;
        global_add(&shard[0].global, md, NULL, mk(&t, &r, true), &c);
    }
    astate_publish(&shard[0].pub, &shard[0].global, &shard[0].models, &no_stats, 0, 1, NULL);
    const fx_msg_t *msg = &shard[0].cap.msg[0];
    model_t *am = fx_model(&agg, "m1", 1, 1, 2, NF + 1, NF);
    gepoch_t *e = global_epoch(&agg.global, am, 1, true);
    astate_scratch_t sc = {0};
    astate_merged_t out = {0};
    const char *why = NULL;
    cr_assert_eq(astate_merge(msg->body, msg->len, &agg.global, e, &sc, &out, &why), -1);
    cr_assert(why && strstr(why, "another"), "%s", why ? why : "(none)");
    astate_head_t *h = malloc(sizeof *h);
    for (size_t cut = 0; cut < msg->len; cut += 3) {
        cr_assert_eq(astate_peek(msg->body, cut, h), -1, "a head cut at %zu of %zu read", cut,
                     msg->len);
        cr_assert_eq(astate_merge(msg->body, cut, &agg.global, e, &sc, &out, &why), -1,
                     "a state cut at %zu of %zu merged", cut, msg->len);
    }
    free(h);
    astate_scratch_destroy(&sc);
    agg_heads_destroy(&sc.heads);
    fx_down(&shard[0]);
    fx_down(&agg);
}

/* Segments: three shards' segments merge into the single world's, and a
   state with segments cut anywhere is refused. Rejections and the owned
   shards read back from the head. */
Test(aggregate, segments_merge_and_the_head_says_rejections_and_owns)
{
    static const char *const SEG[] = {"--drift-window-s", "1", "--drift-lateness-s", "0.5",
                                      "--decay-half-life-s", "2", "--methods", "rollout",
                                      "--segment-by", "desk", NULL};
    static const char *const LAB[] = {"desk=a", "desk=b", "desk=c"};
    fx_up(&single, SEG);
    fx_up(&agg, SEG);
    for (int k = 0; k < 3; k++)
        fx_up(&shard[k], SEG);
    model_t *sm[3], *one = fx_model(&single, "m1", 1, 1, 2, NF + 1, NF);
    for (int k = 0; k < 3; k++)
        sm[k] = fx_model(&shard[k], "m1", 1, 1, 2, NF + 1, NF);
    rng_t r;
    rng_seed(&r, 13);
    for (int i = 0; i < NT; i++) {
        trade_t t;
        const xm_result_t *res = mk(&t, &r, true);
        int64_t ts = T0 + i * (SEC / 25);
        int k = (int)(rng_next(&r) % 3);
        const char *l = LAB[rng_next(&r) % 3];
        global_closed_t c;
        sm[k]->last_ts = ts;
        one->last_ts = ts;
        global_add_seg(&shard[k].global, sm[k], NULL, res, l, strlen(l), &c);
        global_add_seg(&single.global, one, NULL, res, l, strlen(l), &c);
    }
    stats_t st = {.rejected_total = 7};
    st.rejected[XR_MSGPACK] = 5;
    st.rejected[XR_TOPIC] = 2;
    for (int k = 0; k < 3; k++)
        astate_publish(&shard[k].pub, &shard[k].global, &shard[k].models, &st, (uint32_t)k, 3,
                       NULL);
    model_t *am = fx_model(&agg, "m1", 1, 1, 2, NF + 1, NF);
    gepoch_t *e = global_epoch(&agg.global, am, 1, true);
    const gepoch_t *se = global_current(&single.global, one);
    cr_assert(e && se);
    astate_scratch_t sc = {0};
    astate_head_t *h = malloc(sizeof *h);
    int64_t seg_close[16 * XM_NMETHODS];
    unsigned seg_windows[16] = {0};
    uint32_t seg_had[16] = {0};
    for (size_t i = 0; i < 16 * XM_NMETHODS; i++)
        seg_close[i] = INT64_MAX;
    astate_merged_t out = {.fresh = true, .seg_close = seg_close, .seg_windows = seg_windows,
                           .seg_had = seg_had};
    for (int m = 0; m < XM_NMETHODS; m++)
        out.next_close[m] = INT64_MAX;
    for (int k = 0; k < 3; k++) {
        const fx_msg_t *msg = &shard[k].cap.msg[0];
        cr_assert_eq(astate_peek(msg->body, msg->len, h), 0);
        cr_assert_eq(h->owns, 1ull << k);
        cr_assert(h->has_rejected);
        cr_assert_eq(h->rejected_total, 7);
        cr_assert_eq(h->rejected[XR_MSGPACK], 5);
        cr_assert_eq(h->rejected[XR_TOPIC], 2);
        out.shard = k;
        const char *why = NULL;
        cr_assert_eq(astate_merge(msg->body, msg->len, &agg.global, e, &sc, &out, &why), 0, "%s",
                     why);
    }
    cr_assert_eq(e->segs.n, 3);
    cr_assert_eq(e->segs.overflow, 0);
    for (int s = 0; s < 3; s++) {
        const gseg_t *a = global_segment(e, LAB[s], 6), *b = global_segment(se, LAB[s], 6);
        cr_assert(a && b, "%s", LAB[s]);
        cr_assert_eq(a->count, b->count);
        same_agg(&a->all[XM_ROLLOUT], &b->all[XM_ROLLOUT], LAB[s]);
        double x[NF], y[NF];
        evdecay_mean(&a->evd[XM_ROLLOUT], x);
        evdecay_mean(&b->evd[XM_ROLLOUT], y);
        close_arr(x, y, NF, "segment decayed");
        cr_assert_eq(a->evw[XM_ROLLOUT].max_ts, b->evw[XM_ROLLOUT].max_ts);
        int si = -1;
        for (int i = 0; i < 3; i++)
            if (strcmp(segtab_label(&e->segs, (uint32_t)i), LAB[s]) == 0)
                si = i;
        cr_assert_eq(seg_had[si], 7u, "every shard sent %s", LAB[s]);
        cr_assert(seg_windows[si] & XM_BIT(XM_ROLLOUT));
        cr_assert_leq(seg_close[si * XM_NMETHODS + XM_ROLLOUT], b->evw[XM_ROLLOUT].next_close);
    }
    /* Cut anywhere (the segments are at the end): refused. */
    const fx_msg_t *msg = &shard[0].cap.msg[0];
    for (size_t cut = 0; cut < msg->len; cut += 5) {
        const char *why = NULL;
        cr_assert_eq(astate_merge(msg->body, cut, &agg.global, e, &sc, &out, &why), -1,
                     "a state cut at %zu of %zu merged", cut, msg->len);
    }
    free(h);
    astate_scratch_destroy(&sc);
    agg_heads_destroy(&sc.heads);
    for (int k = 0; k < 3; k++)
        fx_down(&shard[k]);
    fx_down(&single);
    fx_down(&agg);
}
