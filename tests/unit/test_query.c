/*  Tests of daemon/query (query.c, query_global.c): the ops answer from
    a given state.

    The global state is built with global_add (no ingest, no socket);
    requests go to query_handle as bytes, and the replies are decoded
    again. The `global` op is the one that publishes, and only when the
    state changed since the last glob/ (query.h): checked on the capture
    list of the publisher.  */
#include "daemon_fixture.h"
#include "ref.h"
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

/* m1 with three trades: one drift window closed (window 2). */
static model_t *
state(fx_world_t *w)
{
    fx_up(w, OPTS);
    model_t *md = fx_model(w, "m1", 1, 1, 1, NF, -1);
    trade_t t;
    global_closed_t c;
    global_add(&w->global, md, NULL, mk(&t, V1), &c);
    global_add(&w->global, md, NULL, mk(&t, V2), &c);
    global_add(&w->global, md, NULL, mk(&t, V1), &c);
    md->explained = 3;
    return md;
}

Test(query, ping_and_models)
{
    static fx_world_t w;
    state(&w);
    fx_doc_t d;
    const msgpack_object *r = fx_query(&w, &d, "ping", NULL, NULL, NULL);
    cr_assert(fx_ok(r));
    cr_assert(fx_str_is(fx_get(r, "version"), XPL_VERSION));
    fx_doc_free(&d);
    r = fx_query(&w, &d, "models", NULL, NULL, NULL);
    cr_assert(fx_ok(r));
    const msgpack_object *ms = fx_get(r, "models");
    cr_assert_eq(ms->via.array.size, 1);
    cr_assert(fx_str_is(fx_get(&ms->via.array.ptr[0], "model"), "m1"));
    cr_assert_eq(fx_u64(&ms->via.array.ptr[0], "explained"), 3);
    cr_assert_eq(fx_u64(&ms->via.array.ptr[0], "n"), NF);
    fx_doc_free(&d);
    cr_assert_eq(w.stats.queries, 2);
    cr_assert_eq(w.stats.query_errors, 0);
    cr_assert_eq(w.cap.n, 0, "ping and models publish nothing");
    fx_down(&w);
}

Test(query, global_publishes_a_pending_change_first_then_answers_its_seq)
{
    static fx_world_t w;
    model_t *md = state(&w);
    fx_doc_t d;
    const msgpack_object *r = fx_query(&w, &d, "global", "m1", NULL, NULL);
    cr_assert(fx_ok(r));
    /* The change was pending: glob/ and heads/ went out first, and the
       reply names that glob/'s seq with the same fields. */
    cr_assert_eq(w.cap.n, 2);
    cr_assert_str_eq(w.cap.msg[0].topic, "glob/m1");
    cr_assert_eq(fx_u64(r, "seq"), 0);
    cr_assert_eq(fx_u64(r, "count"), 3);
    fx_doc_t g;
    const msgpack_object *glob = fx_decode(&g, w.cap.msg[0].body, w.cap.msg[0].len);
    cr_assert_eq(r->via.map.size, glob->via.map.size + 1, "the reply adds ok to glob/'s fields");
    for (uint32_t k = 0; k < glob->via.map.size; k++) {
        const msgpack_object_kv *kv = &glob->via.map.ptr[k];
        char key[32];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.via.str.size, kv->key.via.str.ptr);
        cr_assert(msgpack_object_equal(kv->val, *fx_get(r, key)), "field %s differs", key);
    }
    fx_doc_free(&g);
    fx_doc_free(&d);
    /* Unchanged since: answered from the state, nothing published. */
    r = fx_query(&w, &d, "global", "m1", NULL, NULL);
    cr_assert(fx_ok(r));
    cr_assert_eq(fx_u64(r, "seq"), 0);
    cr_assert_eq(w.cap.n, 2);
    fx_doc_free(&d);
    /* One method only; an unknown one is bad_argument. */
    r = fx_query(&w, &d, "global", "m1", "method", "rollout");
    cr_assert(fx_ok(r));
    const msgpack_object *mean = fx_get(fx_get(fx_get(r, "methods"), "rollout"), "mean");
    for (int k = 0; k < NF; k++)
        cr_assert(close_enough(mean->via.array.ptr[k].via.f64,
                               (2.0 * V1[k] + (double)V2[k]) / 3, 1e-12, 0));
    fx_doc_free(&d);
    r = fx_query(&w, &d, "global", "m1", "method", "diag");
    cr_assert_not(fx_ok(r));
    cr_assert(fx_str_is(fx_get(r, "code"), "not_found"));
    fx_doc_free(&d);
    (void)md;
    fx_down(&w);
}

Test(query, drift_and_baseline)
{
    static fx_world_t w;
    state(&w);
    fx_doc_t d;
    const msgpack_object *r = fx_query(&w, &d, "drift", "m1", NULL, NULL);
    cr_assert(fx_ok(r));
    cr_assert_eq(fx_u64(r, "window"), 2);
    const msgpack_object *ro = fx_get(fx_get(r, "methods"), "rollout");
    cr_assert_eq(fx_u64(ro, "windows"), 1);
    cr_assert_eq(fx_u64(ro, "filled"), 1);
    const msgpack_object *last = fx_get(ro, "last");
    cr_assert_eq(last->type, MSGPACK_OBJECT_MAP);
    cr_assert_eq(last->via.map.size, PUBLISH_WINDOW_FIELDS + 1);
    cr_assert_eq(fx_u64(last, "window"), 0);
    cr_assert_eq(fx_u64(r, "alerts_total"), 0);
    fx_doc_free(&d);
    r = fx_query(&w, &d, "baseline", "m1", "action", "pin");
    cr_assert(fx_ok(r));
    cr_assert_eq(fx_get(r, "methods")->via.array.size, 1);
    fx_doc_free(&d);
    r = fx_query(&w, &d, "drift", "m1", NULL, NULL);
    cr_assert(fx_str_is(fx_get(fx_get(fx_get(r, "methods"), "rollout"), "reference"), "pinned"));
    fx_doc_free(&d);
    r = fx_query(&w, &d, "baseline", "m1", "action", "explode");
    cr_assert_not(fx_ok(r));
    cr_assert(fx_str_is(fx_get(r, "code"), "bad_argument"));
    fx_doc_free(&d);
    cr_assert_eq(w.cap.n, 0, "drift and baseline publish nothing");
    fx_down(&w);
}

Test(query, errors_name_their_code)
{
    static fx_world_t w;
    state(&w);
    fx_doc_t d;
    const msgpack_object *r = fx_query(&w, &d, "global", "m9", NULL, NULL);
    cr_assert(fx_str_is(fx_get(r, "code"), "unknown_model"));
    fx_doc_free(&d);
    r = fx_query(&w, &d, "frobnicate", NULL, NULL, NULL);
    cr_assert(fx_str_is(fx_get(r, "code"), "unknown_op"));
    fx_doc_free(&d);
    query_handle(&w.query, "\xc1", 1);
    r = fx_decode(&d, w.query.buf.data, w.query.buf.size);
    cr_assert(fx_str_is(fx_get(r, "code"), "bad_request"));
    fx_doc_free(&d);
    r = fx_query(&w, &d, "trade", "m1", NULL, NULL);
    cr_assert(fx_str_is(fx_get(r, "code"), "bad_request"), "no id");
    fx_doc_free(&d);
    cr_assert_eq(w.stats.queries, 4);
    cr_assert_eq(w.stats.query_errors, 4);
    fx_down(&w);
}

Test(query, reference_sets_the_external_reference)
{
    static fx_world_t w;
    model_t *md = state(&w);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    enc_str(&pk, "v"); msgpack_pack_uint8(&pk, 1);
    enc_str(&pk, "op"); enc_str(&pk, "reference");
    enc_str(&pk, "model"); enc_str(&pk, "m1");
    enc_str(&pk, "method"); enc_str(&pk, "rollout");
    enc_str(&pk, "values");
    msgpack_pack_array(&pk, NF);
    for (int k = 0; k < NF; k++)
        msgpack_pack_double(&pk, V1[k]);
    query_handle(&w.query, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    fx_doc_t d;
    const msgpack_object *r = fx_decode(&d, w.query.buf.data, w.query.buf.size);
    cr_assert(fx_ok(r));
    /* The reference is V1, the mean is (2 V1 + V2) / 3: same ranking but
       for the ties of V1's last two values. */
    double mean[NF], ref[NF], rho;
    for (int k = 0; k < NF; k++) {
        mean[k] = (2.0 * V1[k] + (double)V2[k]) / 3;
        ref[k] = V1[k];
    }
    cr_assert(ref_spearman(mean, ref, NF, &rho));
    cr_assert(close_enough(fx_f64(fx_get(r, "spearman")), rho, 1e-9, 1e-12));
    fx_doc_free(&d);
    const gepoch_t *e = global_current(&w.global, md);
    cr_assert_eq(e->drift[XM_ROLLOUT].ref_kind, DRIFT_REF_EXTERNAL);
    cr_assert_eq(e->extref[XM_ROLLOUT][0], (double)V1[0]);
    cr_assert_eq(w.cap.n, 0, "reference publishes nothing itself");
    fx_down(&w);
}
