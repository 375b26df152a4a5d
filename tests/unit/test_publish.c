/*  Tests of daemon/publish: the four topics and their encoders.

    The publisher writes into a capture list instead of a PUB socket;
    every body is decoded again and must carry the fields of
    proto/explanations.md and proto/global.md with the values it was
    given. A sink that refuses counts as dropped, as a full socket does.  */
#include "daemon_fixture.h"
#include "support.h"

#define NF 4

static const char *const OPTS[] = {"--drift-window", "2", NULL};

typedef struct {
    float v[NF];
    float conf[1];
    xm_result_t res;
} trade_t;

static const xm_result_t *
mk(trade_t *t, const float *v)
{
    memset(t, 0, sizeof *t);
    memcpy(t->v, v, sizeof t->v);
    t->conf[0] = 0.25f;
    t->res.computed = XM_BIT(XM_ROLLOUT);
    t->res.attr[XM_ROLLOUT] = t->v;
    t->res.head_confidence = t->conf;
    return &t->res;
}

static const float V1[NF] = {0.5f, 0.25f, 0.125f, 0.125f};
static const float V2[NF] = {0.25f, 0.25f, 0.25f, 0.25f};

Test(publish, xpl_body_carries_the_trade)
{
    static fx_world_t w;
    fx_up(&w, NULL);
    model_t *md = fx_model(&w, "m1", 3, 1, 1, NF, -1);
    wire_id_t ids[2] = {{.is_str = false, .u = 77}, {.is_str = true, .s = {(const uint8_t *)"t-9", 3}}};
    int64_t target[2] = {5, -2};
    double y[2] = {1.5, 2.5};
    wire_ingest_t in = {.ts = 1234, .B = 2, .ids = ids, .target = target, .y = y};
    trade_t t;
    publish_xpl(&w.pub, md, &in, 1, mk(&t, V1));
    publish_xpl(&w.pub, md, &in, 0, mk(&t, V2));
    cr_assert_eq(w.cap.n, 2);
    cr_assert_str_eq(w.cap.msg[0].topic, "xpl/m1");
    cr_assert_eq(w.stats.published, 2);
    fx_doc_t d;
    const msgpack_object *b = fx_decode(&d, w.cap.msg[0].body, w.cap.msg[0].len);
    cr_assert_eq(b->via.map.size, 9);
    cr_assert_eq(fx_u64(b, "v"), 1);
    cr_assert(fx_str_is(fx_get(b, "model"), "m1"));
    cr_assert(fx_str_is(fx_get(b, "id"), "t-9"));
    cr_assert_eq(fx_u64(b, "seq"), 0);
    cr_assert_eq(fx_u64(b, "ts"), 1234);
    cr_assert_eq(fx_u64(b, "epoch"), 3);
    cr_assert_eq(fx_get(b, "target")->via.i64, -2);
    cr_assert_eq(fx_f64(fx_get(b, "y")), 2.5);
    const msgpack_object *roll = fx_get(fx_get(b, "attr"), "rollout");
    cr_assert(roll && roll->type == MSGPACK_OBJECT_ARRAY && roll->via.array.size == NF);
    for (int k = 0; k < NF; k++)
        cr_assert_eq(roll->via.array.ptr[k].via.f64, (double)V1[k]);
    fx_doc_free(&d);
    b = fx_decode(&d, w.cap.msg[1].body, w.cap.msg[1].len);
    cr_assert_eq(fx_u64(b, "id"), 77);
    cr_assert_eq(fx_u64(b, "seq"), 1, "xpl/ seq counts per model");
    fx_doc_free(&d);
    fx_down(&w);
}

Test(publish, drift_body_is_the_closed_window)
{
    static fx_world_t w;
    fx_up(&w, OPTS);
    model_t *md = fx_model(&w, "m1", 1, 1, 1, NF, -1);
    trade_t t;
    global_closed_t c;
    global_add(&w.global, md, NULL, mk(&t, V1), &c);
    cr_assert_eq(c.n, 0);
    global_add(&w.global, md, NULL, mk(&t, V2), &c);
    cr_assert_eq(c.n, 1);
    publish_drift(&w.pub, md, &c);
    cr_assert_eq(w.cap.n, 1);
    cr_assert_str_eq(w.cap.msg[0].topic, "drift/m1");
    fx_doc_t d;
    const msgpack_object *b = fx_decode(&d, w.cap.msg[0].body, w.cap.msg[0].len);
    cr_assert_eq(b->via.map.size, 16);
    cr_assert_eq(fx_u64(b, "seq"), c.w[0].seq);
    cr_assert_eq(fx_get(b, "ts")->via.i64, c.w[0].last.ts);
    cr_assert_eq(fx_u64(b, "epoch"), 1);
    cr_assert(fx_str_is(fx_get(b, "method"), "rollout"));
    cr_assert_eq(fx_u64(b, "window"), 0);
    cr_assert_eq(fx_u64(b, "trades"), 2);
    cr_assert(fx_str_is(fx_get(b, "reference"), drift_ref_name(c.w[0].last.ref)));
    cr_assert_eq(fx_get(b, "compared")->via.boolean, false);
    cr_assert_eq(fx_get(b, "spearman")->type, MSGPACK_OBJECT_NIL, "nothing compared: nil");
    cr_assert_eq(fx_get(b, "alert")->via.boolean, false);
    const msgpack_object *v = fx_get(b, "verdict");
    cr_assert(v && v->type == MSGPACK_OBJECT_MAP);
    cr_assert(fx_str_is(fx_get(v, "mode"), "fixed"));
    cr_assert_eq(fx_get(b, "moved")->via.array.size, 0, "a baseline moved nothing");
    fx_doc_free(&d);
    /* The next window (V2 twice) is compared with the baseline, the mean
       of V1 and V2: f0 moved most (-0.125), then f2 and f3 (+0.0625
       each; f2 first, the lower index), then f1 (0). */
    global_add(&w.global, md, NULL, mk(&t, V2), &c);
    global_add(&w.global, md, NULL, mk(&t, V2), &c);
    cr_assert_eq(c.n, 1);
    publish_drift(&w.pub, md, &c);
    b = fx_decode(&d, w.cap.msg[1].body, w.cap.msg[1].len);
    const msgpack_object *mv = fx_get(b, "moved");
    cr_assert(mv && mv->type == MSGPACK_OBJECT_ARRAY && mv->via.array.size == NF);
    const msgpack_object *m0 = &mv->via.array.ptr[0];
    cr_assert_eq(fx_u64(m0, "index"), 0);
    cr_assert(fx_str_is(fx_get(m0, "feature"), md->cur->features[0]));
    cr_assert_eq(fx_f64(fx_get(m0, "delta")), 0.25 - 0.375);
    cr_assert_eq(fx_u64(&mv->via.array.ptr[1], "index"), 2);
    cr_assert_eq(fx_u64(&mv->via.array.ptr[2], "index"), 3);
    fx_doc_free(&d);
    fx_down(&w);
}

Test(publish, changed_sends_glob_and_heads_once)
{
    static fx_world_t w;
    fx_up(&w, OPTS);
    model_t *md = fx_model(&w, "m1", 1, 1, 1, NF, -1);
    fx_model(&w, "m2", 1, 1, 1, NF, -1);     /* no trades: nothing to send */
    trade_t t;
    global_closed_t c;
    int64_t target = 1;
    global_add(&w.global, md, &target, mk(&t, V1), &c);
    global_add(&w.global, md, NULL, mk(&t, V2), &c);
    publish_changed(&w.pub, &w.global, &w.models);
    cr_assert_eq(w.cap.n, 2);
    cr_assert_str_eq(w.cap.msg[0].topic, "glob/m1");
    cr_assert_str_eq(w.cap.msg[1].topic, "heads/m1");
    fx_doc_t d;
    const msgpack_object *b = fx_decode(&d, w.cap.msg[0].body, w.cap.msg[0].len);
    cr_assert_eq(b->via.map.size, PUBLISH_GLOB_FIELDS + 1);
    cr_assert_eq(fx_u64(b, "seq"), 0);
    cr_assert_eq(fx_u64(b, "count"), 2);
    cr_assert_eq(fx_get(b, "features")->via.array.size, NF);
    const msgpack_object *r = fx_get(fx_get(b, "methods"), "rollout");
    cr_assert_eq(fx_u64(r, "count"), 2);
    const msgpack_object *mean = fx_get(r, "mean");
    for (int k = 0; k < NF; k++)
        cr_assert(close_enough(mean->via.array.ptr[k].via.f64,
                               ((double)V1[k] + (double)V2[k]) / 2, 1e-12, 0));
    const msgpack_object *tg = fx_get(b, "targets");
    cr_assert_eq(tg->via.array.size, 1);
    cr_assert_eq(fx_u64(&tg->via.array.ptr[0], "target"), 1);
    cr_assert_eq(fx_u64(b, "untracked_targets"), 0);
    cr_assert_eq(global_model_const(&w.global, md)->glob_ts, fx_get(b, "ts")->via.i64);
    fx_doc_free(&d);
    b = fx_decode(&d, w.cap.msg[1].body, w.cap.msg[1].len);
    cr_assert_eq(fx_u64(b, "seq"), 0);
    cr_assert_eq(fx_u64(b, "confidence_count"), 2);
    cr_assert_eq(fx_get(b, "confidence")->via.array.ptr[0].via.array.ptr[0].via.f64, 0.25);
    fx_doc_free(&d);
    /* Nothing changed since: nothing goes out. */
    publish_changed(&w.pub, &w.global, &w.models);
    cr_assert_eq(w.cap.n, 2);
    global_add(&w.global, md, NULL, mk(&t, V2), &c);
    publish_changed(&w.pub, &w.global, &w.models);
    cr_assert_eq(w.cap.n, 4);
    b = fx_decode(&d, w.cap.msg[2].body, w.cap.msg[2].len);
    cr_assert_eq(fx_u64(b, "seq"), 1, "glob/ seq counts per model");
    fx_doc_free(&d);
    fx_down(&w);
}

Test(publish, a_refusing_sink_counts_dropped)
{
    static fx_world_t w;
    fx_up(&w, NULL);
    w.cap.refuse = true;
    publish_send(&w.pub, "t", 1, "b", 1);
    cr_assert_eq(w.stats.dropped, 1);
    cr_assert_eq(w.stats.published, 0);
    w.cap.refuse = false;
    publish_send(&w.pub, "t", 1, "b", 1);
    cr_assert_eq(w.stats.published, 1);
    cr_assert_eq(w.cap.n, 1);
    fx_down(&w);
}
