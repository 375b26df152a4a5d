/*  libxplain's sharded publisher against plain ZeroMQ SUB sockets, one per
    shard (no daemon): every trade arrives once, on the shard its id hashes
    to (core/shard, the definition of proto/README.md), with its own
    tensor slices, target and y; each shard's seq runs 0, 1, 2, ... and
    its first message carries the schema; a shard's subscriber receives
    nothing of the others (ZeroMQ filters at the publisher). The fused
    form and micro-batching are split the same way.  */
#include <xplain/xplain.h>

#include "shard.h"

#include <criterion/criterion.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define NS 3
#define L 1
#define H 2
#define N 3
#define PER (L * H * N * N)

static const char *g_tokens[N] = {"a", "b", "CLS"};

typedef struct {
    char topic[128];
    uint64_t seq;
    bool schema;
    uint32_t B;
    char ids[64][32];           /* as text: "s:<str>" or "u:<uint>" */
    float attn[64][PER];
    bool has_grad;
    float grad[64][PER];
    int64_t target[64];
    double y[64];
} msg_t;

static const msgpack_object *
s_get(const msgpack_object *map, const char *key)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key)
            && memcmp(kv->key.via.str.ptr, key, kv->key.via.str.size) == 0)
            return &kv->val;
    }
    return NULL;
}

/* Receive one message within 5 s, or return false. */
static bool
s_recv(void *sub, msg_t *out)
{
    zmq_pollitem_t it = {sub, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 5000) <= 0)
        return false;
    memset(out, 0, sizeof *out);
    int tl = zmq_recv(sub, out->topic, sizeof out->topic - 1, 0);
    cr_assert_geq(tl, 0);
    zmq_msg_t body;
    zmq_msg_init(&body);
    cr_assert_geq(zmq_msg_recv(&body, sub, 0), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    cr_assert_eq(msgpack_unpack_next(&u, zmq_msg_data(&body), zmq_msg_size(&body), NULL),
                 MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *m = &u.data;
    cr_assert_eq(m->type, MSGPACK_OBJECT_MAP);
    out->seq = s_get(m, "seq")->via.u64;
    out->schema = s_get(m, "tokens") && s_get(m, "cls");
    const msgpack_object *ids = s_get(m, "ids");
    out->B = ids->via.array.size;
    cr_assert_leq(out->B, 64);
    for (uint32_t i = 0; i < out->B; i++) {
        const msgpack_object *id = &ids->via.array.ptr[i];
        if (id->type == MSGPACK_OBJECT_STR)
            snprintf(out->ids[i], sizeof out->ids[i], "s:%.*s", (int)id->via.str.size, id->via.str.ptr);
        else
            snprintf(out->ids[i], sizeof out->ids[i], "u:%llu", (unsigned long long)id->via.u64);
    }
    const msgpack_object *attn = s_get(m, "attn");
    cr_assert_eq(attn->via.bin.size, out->B * PER * sizeof(float));
    memcpy(out->attn, attn->via.bin.ptr, attn->via.bin.size);
    const msgpack_object *grad = s_get(m, "grad");
    if ((out->has_grad = grad != NULL)) {
        cr_assert_eq(grad->via.bin.size, out->B * PER * sizeof(float));
        memcpy(out->grad, grad->via.bin.ptr, grad->via.bin.size);
    }
    const msgpack_object *t = s_get(m, "target"), *y = s_get(m, "y");
    for (uint32_t i = 0; i < out->B; i++) {
        out->target[i] = t->via.array.ptr[i].via.i64;
        out->y[i] = y->via.array.ptr[i].via.f64;
    }
    msgpack_unpacked_destroy(&u);
    zmq_msg_close(&body);
    return true;
}

/* Trade number t of the test: id, tensors derived from t. */
static xpl_id_t
s_id(uint32_t t, char *buf, size_t cap)
{
    if (t % 2)
        return xpl_id_uint(1000 + t);
    snprintf(buf, cap, "trade-%u", t);
    return xpl_id_str(buf);
}

/* The index among ids[count] of the trade whose id reads `txt` as s_recv
   writes it ("s:<str>" or "u:<uint>"), or count. */
static uint32_t
s_trade_of(const xpl_id_t *ids, uint32_t count, const char *txt)
{
    for (uint32_t t = 0; t < count; t++) {
        char have[40];
        if (ids[t].is_str)
            snprintf(have, sizeof have, "s:%s", ids[t].s);
        else
            snprintf(have, sizeof have, "u:%llu", (unsigned long long)ids[t].u);
        if (strcmp(have, txt) == 0)
            return t;
    }
    return count;
}

static void
s_fill(uint32_t t, float *attn, float *grad)
{
    for (int i = 0; i < PER; i++) {
        attn[i] = (float)(t * 100 + i) / 1024.0f;
        grad[i] = (i % 3 ? -1.0f : 1.0f) * (float)(t * 100 + i) / 64.0f;
    }
}

Test(client_shard, batches_split_by_trade_id_over_three_shards)
{
    void *ctx = zmq_ctx_new();
    xpl_pub_t *p = xpl_pub_new_bind("tcp://127.0.0.1:*");
    cr_assert_not_null(p, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_shards(p, 0), -1);
    cr_assert_eq(xpl_pub_set_shards(p, NS), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_shards(p), NS);
    cr_assert_eq(xpl_pub_set_schema(p, "m1", L, H, N, 2, g_tokens), 0);
    void *sub[NS];
    for (int k = 0; k < NS; k++) {
        sub[k] = zmq_socket(ctx, ZMQ_SUB);
        char prefix[SHARD_PREFIX_MAX + 1];
        shard_prefix(prefix, sizeof prefix, (uint32_t)k, NS);
        cr_assert_eq(zmq_setsockopt(sub[k], ZMQ_SUBSCRIBE, prefix, strlen(prefix)), 0);
        cr_assert_eq(zmq_connect(sub[k], xpl_pub_endpoint(p)), 0);
        if (k == 0)
            /* One shard subscribed is not enough. */
            cr_assert_eq(xpl_pub_wait_subscriber(p, 300), -1);
    }
    cr_assert_eq(xpl_pub_wait_subscriber(p, 5000), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_shards(p, 2), -1, "too late once subscriptions were read");

    /* 60 trades in batches of 1..17 trades. */
    enum { TRADES = 60 };
    static float attn[TRADES][PER], grad[TRADES][PER];
    char names[TRADES][32];
    xpl_id_t ids[TRADES];
    int64_t target[TRADES];
    double y[TRADES];
    for (uint32_t t = 0; t < TRADES; t++) {
        ids[t] = s_id(t, names[t], sizeof names[t]);
        s_fill(t, attn[t], grad[t]);
        target[t] = t % 3;
        y[t] = t * 0.25;
    }
    uint32_t sent = 0, batches = 0;
    for (uint32_t B = 1; sent < TRADES; B = B % 17 + 1) {
        if (B > TRADES - sent)
            B = TRADES - sent;
        xpl_batch_t b = {.model = "m1", .B = B, .ids = ids + sent, .dtype = XPL_F32,
                         .attn = attn[sent], .grad = grad[sent], .target = target + sent,
                         .y = y + sent, .ts = 1};
        cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
        sent += B;
        batches++;
    }

    bool seen[TRADES] = {false};
    uint32_t got = 0, msgs = 0;
    for (int k = 0; k < NS; k++) {
        char want_topic[64];
        size_t pl = shard_prefix(want_topic, sizeof want_topic, (uint32_t)k, NS);
        snprintf(want_topic + pl, sizeof want_topic - pl, "attn/m1");
        uint64_t seq = 0;
        msg_t *m = malloc(sizeof *m);
        /* Each shard's messages until the trades are all accounted for. */
        while (got < TRADES && s_recv(sub[k], m)) {
            cr_assert_str_eq(m->topic, want_topic);
            cr_assert_eq(m->seq, seq, "shard %d: seq %llu after %llu", k, (unsigned long long)m->seq,
                         (unsigned long long)seq);
            cr_assert_eq(m->schema, seq == 0, "shard %d: schema with the first message only", k);
            cr_assert(m->has_grad);
            seq++;
            msgs++;
            for (uint32_t i = 0; i < m->B; i++) {
                uint32_t t = s_trade_of(ids, TRADES, m->ids[i]);
                cr_assert_lt(t, TRADES, "unknown id %s", m->ids[i]);
                cr_assert(!seen[t], "trade %u twice", t);
                seen[t] = true;
                got++;
                cr_assert_eq(xpl_shard_of(&ids[t], NS), (uint32_t)k, "trade %u on shard %d", t, k);
                cr_assert_eq(memcmp(m->attn[i], attn[t], sizeof attn[t]), 0, "trade %u attn", t);
                cr_assert_eq(memcmp(m->grad[i], grad[t], sizeof grad[t]), 0, "trade %u grad", t);
                cr_assert_eq(m->target[i], target[t]);
                cr_assert_eq(m->y[i], y[t]);
            }
            /* Stop reading this shard once its share is complete. */
            uint32_t share = 0, have = 0;
            for (uint32_t t = 0; t < TRADES; t++)
                if (xpl_shard_of(&ids[t], NS) == (uint32_t)k) {
                    share++;
                    have += seen[t];
                }
            if (have == share)
                break;
        }
        free(m);
        cr_assert_gt(seq, 0, "shard %d got nothing", k);
    }
    cr_assert_eq(got, TRADES, "%u of %u trades arrived", got, TRADES);
    cr_assert_eq(xpl_pub_next_seq(p, "m1"), msgs);
    cr_assert_gt(msgs, batches, "batches were split");
    /* Nothing more anywhere: no trade went to two shards. */
    for (int k = 0; k < NS; k++) {
        zmq_pollitem_t it = {sub[k], 0, ZMQ_POLLIN, 0};
        cr_assert_eq(zmq_poll(&it, 1, 100), 0, "shard %d has an extra message", k);
        zmq_close(sub[k]);
    }
    xpl_pub_destroy(&p);
    zmq_ctx_term(ctx);
}

/* Unsharded, the topic is attn/<model> as before, whole for a 64-byte
   model name, and a sharded-prefix subscriber receives nothing. */
Test(client_shard, unsharded_topics_unchanged)
{
    void *ctx = zmq_ctx_new();
    xpl_pub_t *p = xpl_pub_new_bind("tcp://127.0.0.1:*");
    cr_assert_not_null(p);
    char model[65];
    memset(model, 'x', 64);
    model[64] = 0;
    cr_assert_eq(xpl_pub_set_schema(p, model, L, H, N, 2, g_tokens), 0);
    void *plain = zmq_socket(ctx, ZMQ_SUB), *sharded = zmq_socket(ctx, ZMQ_SUB);
    cr_assert_eq(zmq_setsockopt(plain, ZMQ_SUBSCRIBE, "attn/", 5), 0);
    cr_assert_eq(zmq_setsockopt(sharded, ZMQ_SUBSCRIBE, "shard/", 6), 0);
    cr_assert_eq(zmq_connect(sharded, xpl_pub_endpoint(p)), 0);
    cr_assert_eq(xpl_pub_wait_subscriber(p, 300), -1, "a shard/ subscriber is not an attn/ one");
    cr_assert_eq(zmq_connect(plain, xpl_pub_endpoint(p)), 0);
    cr_assert_eq(xpl_pub_wait_subscriber(p, 5000), 0, "%s", xpl_strerror());
    static float a[2][PER], g[2][PER];
    char n0[32], n1[32];
    xpl_id_t ids[2] = {s_id(0, n0, sizeof n0), s_id(1, n1, sizeof n1)};
    s_fill(0, a[0], g[0]);
    s_fill(1, a[1], g[1]);
    int64_t target[2] = {0, 1};
    double y[2] = {0.5, 1.5};
    xpl_batch_t b = {.model = model, .B = 2, .ids = ids, .dtype = XPL_F32, .attn = a,
                     .grad = g, .target = target, .y = y};
    cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
    msg_t *m = malloc(sizeof *m);
    cr_assert(s_recv(plain, m));
    char want[80];
    snprintf(want, sizeof want, "attn/%s", model);
    cr_assert_str_eq(m->topic, want);
    cr_assert_eq(m->B, 2);
    cr_assert_eq(m->seq, 0);
    free(m);
    zmq_pollitem_t it = {sharded, 0, ZMQ_POLLIN, 0};
    cr_assert_eq(zmq_poll(&it, 1, 100), 0);
    zmq_close(plain);
    zmq_close(sharded);
    xpl_pub_destroy(&p);
    zmq_ctx_term(ctx);
}

/* A fused message: ids and the per-trade fattn, fgrad, head_importance
   and head_confidence slices. */
typedef struct {
    char topic[128];
    uint64_t seq;
    bool schema, has_attn;
    uint32_t B;
    char ids[64][32];
    float fattn[64][L * N * N], fgrad[64][L * N * N], imp[64][L * H], conf[64][L * H];
} fmsg_t;

static void
s_bin(const msgpack_object *m, const char *key, void *dst, size_t bytes)
{
    const msgpack_object *o = s_get(m, key);
    cr_assert_not_null(o, "no %s", key);
    cr_assert_eq(o->type, MSGPACK_OBJECT_BIN, "%s is not bin", key);
    cr_assert_eq(o->via.bin.size, bytes, "%s: %u bytes, want %zu", key, o->via.bin.size, bytes);
    memcpy(dst, o->via.bin.ptr, bytes);
}

static bool
s_recv_fused(void *sub, fmsg_t *out)
{
    zmq_pollitem_t it = {sub, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 5000) <= 0)
        return false;
    memset(out, 0, sizeof *out);
    cr_assert_geq(zmq_recv(sub, out->topic, sizeof out->topic - 1, 0), 0);
    zmq_msg_t body;
    zmq_msg_init(&body);
    cr_assert_geq(zmq_msg_recv(&body, sub, 0), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    cr_assert_eq(msgpack_unpack_next(&u, zmq_msg_data(&body), zmq_msg_size(&body), NULL),
                 MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *m = &u.data;
    out->seq = s_get(m, "seq")->via.u64;
    out->schema = s_get(m, "tokens") && s_get(m, "cls");
    out->has_attn = s_get(m, "attn") != NULL;
    const msgpack_object *ids = s_get(m, "ids");
    out->B = ids->via.array.size;
    cr_assert_leq(out->B, 64);
    for (uint32_t i = 0; i < out->B; i++) {
        const msgpack_object *id = &ids->via.array.ptr[i];
        if (id->type == MSGPACK_OBJECT_STR)
            snprintf(out->ids[i], sizeof out->ids[i], "s:%.*s", (int)id->via.str.size, id->via.str.ptr);
        else
            snprintf(out->ids[i], sizeof out->ids[i], "u:%llu", (unsigned long long)id->via.u64);
    }
    s_bin(m, "fattn", out->fattn, out->B * sizeof out->fattn[0]);
    s_bin(m, "fgrad", out->fgrad, out->B * sizeof out->fgrad[0]);
    s_bin(m, "head_importance", out->imp, out->B * sizeof out->imp[0]);
    s_bin(m, "head_confidence", out->conf, out->B * sizeof out->conf[0]);
    msgpack_unpacked_destroy(&u);
    zmq_msg_close(&body);
    return true;
}

/* The fused form, micro-batched (5 trades per message, sent one trade at
   a time): every pending batch is split by shard on its way out, each
   trade's fused slices (checked against head means computed here in
   double) reach the shard that owns it and no other, and each shard's
   seq runs without a gap. */
Test(client_shard, fused_micro_batches_split_over_shards)
{
    void *ctx = zmq_ctx_new();
    xpl_pub_t *p = xpl_pub_new_bind("tcp://127.0.0.1:*");
    cr_assert_not_null(p, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_shards(p, NS), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_fused(p, true), 0);
    cr_assert_eq(xpl_pub_set_batch(p, 5, 0), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(p, "m1", L, H, N, 2, g_tokens), 0);
    void *sub[NS];
    for (int k = 0; k < NS; k++) {
        sub[k] = zmq_socket(ctx, ZMQ_SUB);
        char prefix[SHARD_PREFIX_MAX + 1];
        shard_prefix(prefix, sizeof prefix, (uint32_t)k, NS);
        cr_assert_eq(zmq_setsockopt(sub[k], ZMQ_SUBSCRIBE, prefix, strlen(prefix)), 0);
        cr_assert_eq(zmq_connect(sub[k], xpl_pub_endpoint(p)), 0);
    }
    cr_assert_eq(xpl_pub_wait_subscriber(p, 5000), 0, "%s", xpl_strerror());

    enum { TRADES = 23 };
    static float attn[TRADES][PER], grad[TRADES][PER];
    char names[TRADES][32];
    xpl_id_t ids[TRADES];
    for (uint32_t t = 0; t < TRADES; t++) {
        ids[t] = s_id(t, names[t], sizeof names[t]);
        s_fill(t, attn[t], grad[t]);
    }
    for (uint32_t t = 0; t < TRADES; t++) {
        xpl_batch_t b = {.model = "m1", .B = 1, .ids = &ids[t], .dtype = XPL_F32,
                         .attn = attn[t], .grad = grad[t], .ts = 1};
        cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
    }
    cr_assert_eq(xpl_pub_pending(p), TRADES % 5);
    cr_assert_eq(xpl_pub_flush(p), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_pending(p), 0);

    bool seen[TRADES] = {false};
    uint32_t got = 0, msgs = 0;
    fmsg_t *m = malloc(sizeof *m);
    for (int k = 0; k < NS; k++) {
        uint32_t share = 0, have = 0;
        for (uint32_t t = 0; t < TRADES; t++)
            share += xpl_shard_of(&ids[t], NS) == (uint32_t)k;
        char want_topic[64];
        size_t pl = shard_prefix(want_topic, sizeof want_topic, (uint32_t)k, NS);
        snprintf(want_topic + pl, sizeof want_topic - pl, "attn/m1");
        uint64_t seq = 0;
        while (have < share) {
            cr_assert(s_recv_fused(sub[k], m), "shard %d: %u of its %u trades came", k, have, share);
            cr_assert_str_eq(m->topic, want_topic);
            cr_assert_eq(m->seq, seq, "shard %d: seq %llu, want %llu", k,
                         (unsigned long long)m->seq, (unsigned long long)seq);
            cr_assert_eq(m->schema, seq == 0);
            cr_assert(!m->has_attn, "the fused form carries no per-head attn");
            cr_assert_leq(m->B, 5);
            seq++;
            msgs++;
            for (uint32_t i = 0; i < m->B; i++) {
                uint32_t t = s_trade_of(ids, TRADES, m->ids[i]);
                cr_assert_lt(t, TRADES, "unknown id %s", m->ids[i]);
                cr_assert(!seen[t], "trade %u twice", t);
                cr_assert_eq(xpl_shard_of(&ids[t], NS), (uint32_t)k, "trade %u on shard %d", t, k);
                seen[t] = true;
                have++;
                got++;
                /* fattn and fgrad are the head means of A and of
                   max(0, G*A); head_importance |sum_ij A G| and
                   head_confidence mean_i max_j A per head. */
                for (int l = 0; l < L; l++) {
                    for (int e = 0; e < N * N; e++) {
                        double a = 0, pg = 0;
                        for (int h = 0; h < H; h++) {
                            size_t at = ((size_t)l * H + h) * N * N + e;
                            double ga = (double)grad[t][at] * attn[t][at];
                            a += attn[t][at];
                            pg += ga > 0 ? ga : 0;
                        }
                        cr_assert_float_eq(m->fattn[i][l * N * N + e], a / H, 1e-6 * (1 + a / H),
                                           "trade %u fattn", t);
                        cr_assert_float_eq(m->fgrad[i][l * N * N + e], pg / H, 1e-5 * (1 + pg / H),
                                           "trade %u fgrad", t);
                    }
                    for (int h = 0; h < H; h++) {
                        const float *A = attn[t] + ((size_t)l * H + h) * N * N;
                        const float *G = grad[t] + ((size_t)l * H + h) * N * N;
                        double imp = 0, conf = 0;
                        for (int r = 0; r < N; r++) {
                            double mx = 0;
                            for (int c = 0; c < N; c++) {
                                imp += (double)A[r * N + c] * G[r * N + c];
                                mx = A[r * N + c] > mx ? A[r * N + c] : mx;
                            }
                            conf += mx / N;
                        }
                        imp = imp < 0 ? -imp : imp;
                        cr_assert_float_eq(m->imp[i][l * H + h], imp, 1e-5 * (1 + imp),
                                           "trade %u head_importance", t);
                        cr_assert_float_eq(m->conf[i][l * H + h], conf, 1e-6 * (1 + conf),
                                           "trade %u head_confidence", t);
                    }
                }
            }
        }
    }
    free(m);
    cr_assert_eq(got, TRADES);
    cr_assert_eq(xpl_pub_next_seq(p, "m1"), msgs);
    cr_assert_gt(msgs, (TRADES + 4) / 5, "pending batches were split");
    for (int k = 0; k < NS; k++) {
        zmq_pollitem_t it = {sub[k], 0, ZMQ_POLLIN, 0};
        cr_assert_eq(zmq_poll(&it, 1, 100), 0, "shard %d has an extra message", k);
        zmq_close(sub[k]);
    }
    xpl_pub_destroy(&p);
    zmq_ctx_term(ctx);
}
