/*  Tests of daemon/ingest: frames in, results or named rejections out.

    Messages are built in memory and handed to ingest_handle as frames
    (no socket); what ingest publishes lands in the fixture's capture
    list. A valid message must be explained (rollout against the float64
    reference of tests/ref.c), cached, published on xpl/ in trade order,
    with drift/ right after the trade that closes a window; a bad one
    must be counted under its reason and change nothing else.  */
#include "daemon_fixture.h"
#include "ref.h"
#include "support.h"

#include <math.h>

#define TL 1
#define TH 2
#define TN 4
#define CLS 3

static const char *const OPTS[] = {"--methods", "rollout", "--drift-window", "2",
                                   "--allow-models", "m1", NULL};

/* B trades of random attention (rows sum to 1), as f32 and as the
   doubles those f32 hold. */
static void
attention(uint64_t seed, uint32_t B, float *a, double *ad)
{
    rng_t r;
    rng_seed(&r, seed);
    size_t cnt = (size_t)B * TL * TH * TN * TN;
    gen_attention(&r, ad, cnt / TN, TN, 1.0);
    for (size_t k = 0; k < cnt; k++) {
        a[k] = (float)ad[k];
        ad[k] = a[k];
    }
}

Test(ingest, explains_caches_publishes_and_closes_windows_in_order)
{
    static fx_world_t w;
    fx_up(&w, OPTS);
    enum { B = 3 };
    static float a[B * TL * TH * TN * TN];
    static double ad[B * TL * TH * TN * TN];
    attention(7, B, a, ad);
    fx_msg_spec_t spec = {.model = "m1", .seq = 0, .L = TL, .H = TH, .n = TN, .cls = CLS,
                          .tokens = true, .B = B, .id0 = 10, .target = true, .attn = a};
    fx_ingest(&w, &spec);
    cr_assert_eq(w.stats.received, 1);
    cr_assert_eq(w.stats.received_trades, B);
    cr_assert_eq(w.stats.rejected_total, 0);
    cr_assert_eq(w.stats.explained, B);
    cr_assert_eq(w.stats.latency.count, B);
    model_t *md = models_find(&w.models, "m1", 2);
    cr_assert(md && md->cur && md->cur->epoch == 1);
    cr_assert_eq(md->explained, B);
    /* xpl/ per trade in order; the second trade closes window 0 of the
       2-trade window, so drift/ follows it at once. */
    cr_assert_eq(w.cap.n, B + 1);
    const char *want[] = {"xpl/m1", "xpl/m1", "drift/m1", "xpl/m1"};
    for (int k = 0; k < w.cap.n; k++)
        cr_assert_str_eq(w.cap.msg[k].topic, want[k], "message %d", k);
    int x = 0;
    for (int k = 0; k < w.cap.n; k++) {
        if (strcmp(w.cap.msg[k].topic, "xpl/m1") != 0)
            continue;
        fx_doc_t d;
        const msgpack_object *b = fx_decode(&d, w.cap.msg[k].body, w.cap.msg[k].len);
        cr_assert_eq(fx_u64(b, "id"), 10u + x);
        cr_assert_eq(fx_u64(b, "seq"), (uint64_t)x);
        cr_assert_eq(fx_u64(b, "target"), (uint64_t)(x % 2));
        const msgpack_object *roll = fx_get(fx_get(b, "attr"), "rollout");
        cr_assert_eq(roll->via.array.size, TN - 1);
        double ref[TN];
        ref_rollout(TL, TH, TN, CLS, ad + (size_t)x * TL * TH * TN * TN, 0, ref);
        for (int f = 0; f < TN - 1; f++)
            cr_assert(close_enough(roll->via.array.ptr[f].via.f64, ref[f], 1e-5, 1e-6),
                      "trade %d feature %d: %g, want %g", x, f, roll->via.array.ptr[f].via.f64,
                      ref[f]);
        fx_doc_free(&d);
        wire_id_t id = {.is_str = false, .u = 10u + x};
        const cache_entry_t *e = cache_get(&w.cache, md->index, &id);
        cr_assert(e, "trade %d cached", x);
        cr_assert(e->has_target && e->target == x % 2);
        x++;
    }
    const gepoch_t *e = global_current(&w.global, md);
    cr_assert(e && e->count == B);
    fx_down(&w);
}

Test(ingest, rejections_are_counted_by_reason_and_change_nothing)
{
    static fx_world_t w;
    fx_up(&w, OPTS);
    /* One frame. */
    ingest_frame_t one[1] = {{"attn/m1", 7}};
    ingest_handle(&w.ingest, one, 1, now_mono_ns());
    cr_assert_eq(w.stats.rejected[XR_FRAMES], 1);
    /* Not msgpack. */
    ingest_frame_t bad[2] = {{"attn/m1", 7}, {"\xc1", 1}};
    ingest_handle(&w.ingest, bad, 2, now_mono_ns());
    cr_assert_eq(w.stats.rejected[XR_MSGPACK], 1);
    /* A model outside ingest.allow_models is not added. */
    fx_msg_spec_t m2 = {.model = "m2", .L = TL, .H = TH, .n = TN, .cls = CLS, .tokens = true, .B = 1,
                        .peak = 1};
    fx_ingest(&w, &m2);
    cr_assert_eq(w.stats.rejected[XR_NOT_ALLOWED], 1);
    cr_assert_null(models_find(&w.models, "m2", 2));
    /* A first message without a schema leaves no model behind. */
    fx_msg_spec_t noschema = {.model = "m1", .L = TL, .H = TH, .n = TN, .B = 1, .peak = 1};
    fx_ingest(&w, &noschema);
    cr_assert_eq(w.stats.rejected[XR_NO_SCHEMA], 1);
    cr_assert_eq(w.models.count, 0);
    cr_assert_eq(w.stats.rejected_total, 4);
    cr_assert_eq(w.stats.received, 4);
    cr_assert_eq(w.stats.explained, 0);
    cr_assert_eq(w.cap.n, 0, "nothing published for rejected messages");
    fx_down(&w);
}

Test(ingest, a_bad_trade_is_rejected_alone)
{
    static fx_world_t w;
    fx_up(&w, OPTS);
    enum { B = 2 };
    static float a[B * TL * TH * TN * TN];
    static double ad[B * TL * TH * TN * TN];
    attention(9, B, a, ad);
    a[TL * TH * TN * TN + 1] += 0.5f;   /* trade 1: a row sums to 1.5 */
    fx_msg_spec_t spec = {.model = "m1", .L = TL, .H = TH, .n = TN, .cls = CLS, .tokens = true,
                          .B = B, .id0 = 1, .attn = a};
    fx_ingest(&w, &spec);
    cr_assert_eq(w.stats.rejected[XR_ATTENTION], 1);
    cr_assert_eq(w.stats.explained, 1);
    cr_assert_eq(w.cap.n, 1);
    fx_doc_t d;
    const msgpack_object *b = fx_decode(&d, w.cap.msg[0].body, w.cap.msg[0].len);
    cr_assert_eq(fx_u64(b, "id"), 1);
    fx_doc_free(&d);
    model_t *md = models_find(&w.models, "m1", 2);
    cr_assert_eq(md->rejected, 1);
    wire_id_t id2 = {.is_str = false, .u = 2};
    cr_assert_null(cache_get(&w.cache, md->index, &id2));
    fx_down(&w);
}

Test(ingest, lost_messages_and_restarts_are_counted)
{
    static fx_world_t w;
    fx_up(&w, OPTS);
    fx_msg_spec_t spec = {.model = "m1", .L = TL, .H = TH, .n = TN, .cls = CLS, .tokens = true,
                          .B = 1, .peak = 2};
    uint64_t seqs[] = {0, 1, 4, 2};
    for (int k = 0; k < 4; k++) {
        spec.seq = seqs[k];
        spec.id0 = (uint64_t)k;
        fx_ingest(&w, &spec);
    }
    model_t *md = models_find(&w.models, "m1", 2);
    cr_assert_eq(md->lost, 2, "seq 2 and 3 missing before 4");
    cr_assert_eq(w.stats.lost, 2);
    cr_assert_eq(md->restarts, 1, "seq went back from 4 to 2");
    cr_assert_eq(w.stats.explained, 4);
    fx_down(&w);
}
