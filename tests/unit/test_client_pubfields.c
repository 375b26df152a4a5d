/*  libxplain's publisher: rel, several targets per trade, and tags.

    Without a daemon, raw SUB sockets (one per shard) receive what xpl_pub
    sends and the daemon's own decoder (core/wire.c) reads it: rel and the
    per-target gradients arrive in the wire dtype, laid out
    [b][t][l][h][i][j]; the fused form is fused target by target; tags
    arrive as sent (one map, or one per trade); and all of it stays with
    its trades through micro-batching and sharding. Bad arguments are
    refused with XPL_EINVAL and send nothing.

    Against the real daemon (fork/exec of XPLAIND_PATH): lrp_rollout from
    rel and grad_rollout per target equal the float64 reference (ref.c)
    to 1e-5 relative, one xpl/ message per trade and target; tags put the
    trades into the segments of --segment-by.  */
#include <xplain/xplain.h>

#include "fuse.h"
#include "half.h"
#include "ref.h"
#include "segment.h"
#include "shard.h"
#include "support.h"
#include "wire.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

enum { L_ = 2, H_ = 3, N_ = 5, CLS_ = 4 };
#define NN (N_ * N_)
#define FULL (L_ * H_ * NN)
#define LNN (L_ * NN)
#define LH (L_ * H_)

static const char *const TOKENS[N_] = {"price", "size", "spread", "side", "CLS"};

static int64_t
s_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* B trades' attention and `per` gradient-shaped blocks each of grad and
   rel (per = T, or 1 without targets). */
static void
s_make(uint32_t B, uint32_t per, uint64_t seed, float *A, float *G, float *R)
{
    rng_t r;
    rng_seed(&r, seed);
    size_t na = (size_t)B * FULL, ng = na * per;
    double *a = malloc(na * sizeof *a), *g = malloc(ng * sizeof *g), *rl = malloc(ng * sizeof *rl);
    gen_attention(&r, a, (size_t)B * L_ * H_ * N_, N_, 2.0);
    gen_gradient(&r, g, ng, 1.0);
    gen_gradient(&r, rl, ng, 0.5);
    for (size_t k = 0; k < na; k++)
        A[k] = (float)a[k];
    for (size_t k = 0; k < ng; k++) {
        G[k] = (float)g[k];
        if (R)
            R[k] = (float)rl[k];
    }
    free(a);
    free(g);
    free(rl);
}

/* ---- raw subscribers and the daemon's decoder -------------------------- */

#define NSUB 3

typedef struct {
    xpl_pub_t *pub;
    void *ctx, *sub[NSUB];
    int nsub;
    wire_decoder_t dec;
    zmq_msg_t parts[2];
    bool have;
    int from;                   /* the subscriber of the last message */
} fx_t;

/* A publisher and `nshards` SUBs (1: attn/, else one per shard). */
static void
fx_open(fx_t *f, int nshards)
{
    memset(f, 0, sizeof *f);
    f->pub = xpl_pub_new_bind("tcp://127.0.0.1:*");
    cr_assert_not_null(f->pub, "%s", xpl_strerror());
    if (nshards > 1)
        cr_assert_eq(xpl_pub_set_shards(f->pub, (uint32_t)nshards), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(f->pub, "m1", L_, H_, N_, CLS_, TOKENS), 0);
    f->ctx = zmq_ctx_new();
    f->nsub = nshards;
    for (int k = 0; k < nshards; k++) {
        f->sub[k] = zmq_socket(f->ctx, ZMQ_SUB);
        char prefix[SHARD_PREFIX_MAX + 8] = "attn/";
        if (nshards > 1)
            shard_prefix(prefix, sizeof prefix, (uint32_t)k, (uint32_t)nshards);
        zmq_setsockopt(f->sub[k], ZMQ_SUBSCRIBE, prefix, strlen(prefix));
        cr_assert_eq(zmq_connect(f->sub[k], xpl_pub_endpoint(f->pub)), 0);
    }
    cr_assert_eq(xpl_pub_wait_subscriber(f->pub, 10000), 0,
                 "the test's SUBs never subscribed: %s", xpl_strerror());
    wire_limits_t lim;
    wire_limits_default(&lim);
    lim.fused = true;
    wire_decoder_init(&f->dec, &lim);
}

static void
fx_drop(fx_t *f)
{
    if (f->have) {
        zmq_msg_close(&f->parts[0]);
        zmq_msg_close(&f->parts[1]);
        f->have = false;
    }
}

/* The next message of any subscriber within timeout_ms, decoded (the
   shard prefix of its topic taken off, as a shard daemon does). */
static bool
fx_recv(fx_t *f, int timeout_ms, wire_ingest_t *in)
{
    fx_drop(f);
    zmq_pollitem_t it[NSUB];
    for (int k = 0; k < f->nsub; k++)
        it[k] = (zmq_pollitem_t){f->sub[k], 0, ZMQ_POLLIN, 0};
    if (zmq_poll(it, f->nsub, timeout_ms) <= 0)
        return false;
    int k = 0;
    while (!(it[k].revents & ZMQ_POLLIN))
        k++;
    f->from = k;
    for (int p = 0; p < 2; p++) {
        zmq_msg_init(&f->parts[p]);
        cr_assert_geq(zmq_msg_recv(&f->parts[p], f->sub[k], 0), 0);
    }
    f->have = true;
    const char *topic = zmq_msg_data(&f->parts[0]);
    size_t tlen = zmq_msg_size(&f->parts[0]), off = 0;
    while (off + 5 <= tlen && memcmp(topic + off, "attn/", 5))
        off++;
    xr_reason_t r = wire_decode_ingest(&f->dec, topic + off, tlen - off, zmq_msg_data(&f->parts[1]),
                                       zmq_msg_size(&f->parts[1]), in);
    cr_assert_eq(r, XR_OK, "%s: %s", xr_reason_name(r), wire_detail(&f->dec));
    return true;
}

static void
fx_close(fx_t *f)
{
    fx_drop(f);
    xpl_pub_destroy(&f->pub);
    for (int k = 0; k < f->nsub; k++)
        zmq_close(f->sub[k]);
    zmq_ctx_term(f->ctx);
    wire_decoder_destroy(&f->dec);
}

/* Trade b's tags as "k=v;k=v" (empty: none), from a decoded message. */
static void
s_tags_text(const wire_ingest_t *in, uint32_t b, char *out, size_t cap, bool *per_trade)
{
    out[0] = 0;
    if (!in->tags)
        return;
    seg_iter_t it;
    seg_iter_init(&it, in->tags, in->tags_len, in->B);
    if (per_trade)
        *per_trade = it.per_trade;
    seg_tag_t tags[SEG_TAGS_MAX];
    uint32_t n = 0;
    for (uint32_t i = 0; i <= b; i++)
        cr_assert_eq(seg_iter_next(&it, tags, &n), SEG_OK);
    size_t len = 0;
    for (uint32_t i = 0; i < n; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%.*s=%.*s", i ? ";" : "", (int)tags[i].klen,
                                tags[i].key, (int)tags[i].vlen, tags[i].val);
}

Test(client_pubfields, rel_targets_and_tags_in_the_full_form)
{
    enum { B = 2, T = 3 };
    static float A[B * FULL], G[B * T * FULL], R[B * T * FULL];
    s_make(B, T, 21, A, G, R);
    xpl_id_t ids[B] = {{true, 0, "t0"}, {false, 7, NULL}};
    int64_t targets[T] = {2, 0, 1};
    xpl_tag_t t0[2] = {{"desk", "rates"}, {"venue", "XLON"}};
    xpl_tags_t per[B] = {{2, t0}, {0, NULL}};
    fx_t f;
    fx_open(&f, 1);
    /* f16 on the wire: grad and rel converted alike. */
    cr_assert_eq(xpl_pub_set_wire_dtype(f.pub, XPL_F16), 0);
    xpl_batch_t b = {.model = "m1", .B = B, .ids = ids, .dtype = XPL_F32, .attn = A, .grad = G,
                     .rel = R, .T = T, .targets = targets, .trade_tags = per};
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0, "%s", xpl_strerror());
    wire_ingest_t in;
    cr_assert(fx_recv(&f, 10000, &in), "no message within 10 s");
    cr_assert_eq(in.B, B);
    cr_assert_eq(in.dtype, XM_F16);
    cr_assert_eq(in.ntargets, T);
    cr_assert_eq(memcmp(in.targets, targets, sizeof targets), 0);
    cr_assert_null(in.target);
    cr_assert_not_null(in.rel);
    static uint16_t h[B * T * FULL];
    half_f16_encode(h, G, B * T * FULL);
    cr_assert_eq(memcmp(in.grad, h, sizeof h), 0, "grad: [b][t][l][h][i][j] in f16");
    half_f16_encode(h, R, B * T * FULL);
    cr_assert_eq(memcmp(in.rel, h, sizeof h), 0, "rel: laid out and converted like grad");
    char txt[256];
    bool per_trade = false;
    s_tags_text(&in, 0, txt, sizeof txt, &per_trade);
    cr_assert(per_trade, "trade-by-trade tags go as an array");
    cr_assert_str_eq(txt, "desk=rates;venue=XLON");
    s_tags_text(&in, 1, txt, sizeof txt, NULL);
    cr_assert_str_eq(txt, "", "a trade without tags is nil");

    /* One set for every trade goes as one map; no targets, no rel. */
    xpl_tag_t all[1] = {{"desk", "fx options"}};
    xpl_tags_t tags = {1, all};
    int64_t target[B] = {1, 0};
    cr_assert_eq(xpl_pub_set_wire_dtype(f.pub, XPL_WIRE_AS_GIVEN), 0);
    b = (xpl_batch_t){.model = "m1", .B = B, .ids = ids, .dtype = XPL_F32, .attn = A, .grad = G,
                      .target = target, .tags = &tags};
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0, "%s", xpl_strerror());
    cr_assert(fx_recv(&f, 10000, &in), "no message within 10 s");
    cr_assert_eq(in.ntargets, 0);
    cr_assert_null(in.rel);
    for (uint32_t i = 0; i < B; i++) {
        s_tags_text(&in, i, txt, sizeof txt, &per_trade);
        cr_assert_not(per_trade);
        cr_assert_str_eq(txt, "desk=fx options");
    }

    /* Refused, nothing sent. */
    xpl_batch_t ok = {.model = "m1", .B = B, .ids = ids, .dtype = XPL_F32, .attn = A, .grad = G,
                      .rel = R, .T = T, .targets = targets, .trade_tags = per};
    xpl_tag_t bad_key[1] = {{"de sk", "x"}}, bad_val[1] = {{"desk", "a,b"}},
              twice[2] = {{"desk", "a"}, {"desk", "b"}}, empty[1] = {{"desk", ""}};
    xpl_tag_t many[17];
    char names[17][8];
    for (int i = 0; i < 17; i++) {
        snprintf(names[i], sizeof names[i], "k%d", i);
        many[i] = (xpl_tag_t){names[i], "v"};
    }
    xpl_tags_t tb[5] = {{1, bad_key}, {1, bad_val}, {2, twice}, {1, empty}, {17, many}};
    for (int c = 0; c < 12; c++) {
        b = ok;
        switch (c) {
        case 0: b.grad = NULL; break;                    /* rel and targets without grad */
        case 1: b.targets = NULL; b.T = 0; b.grad = NULL; break;    /* rel without grad */
        case 2: b.target = target; break;                /* targets beside target */
        case 3: b.T = 0; break;                          /* targets without T */
        case 4: b.targets = NULL; break;                 /* T without targets */
        case 5: b.T = XPL_PUB_MAX_TARGETS + 1; break;
        case 6: b.tags = &tags; break;                   /* both forms of tags */
        default: b.trade_tags = NULL; b.tags = &tb[c - 7]; break;
        }
        cr_assert_eq(xpl_pub_send(f.pub, &b), -1, "case %d was sent", c);
        cr_assert_eq(xpl_errno(), XPL_EINVAL, "case %d: %s", c, xpl_strerror());
    }
    xpl_tags_t bad_trade[B] = {{0, NULL}, {1, bad_val}};
    b = ok;
    b.trade_tags = bad_trade;
    cr_assert_eq(xpl_pub_send(f.pub, &b), -1);
    cr_assert(strstr(xpl_strerror(), "trade 1"), "%s", xpl_strerror());
    /* The relevance has no fused form. */
    cr_assert_eq(xpl_pub_set_fused(f.pub, true), 0);
    cr_assert_eq(xpl_pub_send(f.pub, &ok), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert(strstr(xpl_strerror(), "fused"), "%s", xpl_strerror());
    cr_assert_not(fx_recv(&f, 200, &in), "a refused batch was sent");
    fx_close(&f);
}

Test(client_pubfields, targets_in_the_fused_form)
{
    enum { B = 2, T = 2 };
    static float A[B * FULL], G[B * T * FULL];
    s_make(B, T, 22, A, G, NULL);
    xpl_id_t ids[B] = {{true, 0, "f0"}, {true, 0, "f1"}};
    int64_t targets[T] = {1, 0};
    xpl_tag_t desk[1] = {{"desk", "rates"}};
    xpl_tags_t tags = {1, desk};
    fx_t f;
    fx_open(&f, 1);
    cr_assert_eq(xpl_pub_set_fused(f.pub, true), 0);
    xpl_batch_t b = {.model = "m1", .B = B, .ids = ids, .dtype = XPL_F32, .attn = A, .grad = G,
                     .T = T, .targets = targets, .tags = &tags};
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0, "%s", xpl_strerror());
    wire_ingest_t in;
    cr_assert(fx_recv(&f, 10000, &in), "no fused message within 10 s");
    cr_assert(in.fused);
    cr_assert_eq(in.ntargets, T);
    cr_assert_eq(in.targets[0], 1);
    cr_assert_not_null(in.tags);
    static float M[B][LNN], P[B][T][LNN], imp[B][T][LH], conf[B][LH];
    for (uint32_t i = 0; i < B; i++)
        for (uint32_t t = 0; t < T; t++) {
            fuse_trade(L_, H_, N_, A + i * FULL, G + (i * T + t) * FULL, M[i], P[i][t], NULL,
                       imp[i][t], conf[i]);
            cr_assert_eq(memcmp(in.fattn + i * in.trade_bytes, M[i], sizeof M[i]), 0);
            cr_assert_eq(memcmp(in.fgrad + (i * T + t) * in.trade_bytes, P[i][t], sizeof P[i][t]),
                         0, "trade %u target %u: fgrad block [b][t]", i, t);
            cr_assert_eq(memcmp(in.head_importance + (i * T + t) * in.trade_head_bytes, imp[i][t],
                                sizeof imp[i][t]),
                         0, "trade %u target %u: head_importance block", i, t);
            cr_assert_eq(memcmp(in.head_confidence + i * in.trade_head_bytes, conf[i],
                                sizeof conf[i]),
                         0);
        }
    /* Pre-fused with targets go out as given. */
    xpl_fused_batch_t fb = {.model = "m1", .B = B, .ids = ids, .dtype = XPL_F32, .fattn = M,
                            .fgrad = P, .head_importance = &imp[0][0][0], .head_confidence = &conf[0][0],
                            .T = T, .targets = targets};
    cr_assert_eq(xpl_pub_send_fused(f.pub, &fb), 0, "%s", xpl_strerror());
    cr_assert(fx_recv(&f, 10000, &in), "no pre-fused message within 10 s");
    cr_assert_eq(in.ntargets, T);
    cr_assert_eq(memcmp(in.fgrad, P, sizeof P), 0);
    cr_assert_eq(memcmp(in.head_importance, imp, sizeof imp), 0);
    cr_assert_null(in.tags);
    fb.fgrad = NULL;
    fb.head_importance = NULL;
    cr_assert_eq(xpl_pub_send_fused(f.pub, &fb), -1, "targets without fgrad");
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    fx_close(&f);
}

/* Trades sent one by one to a micro-batching, sharded publisher: each
   arrives once, on its shard, with its grad and rel blocks, its
   targets list and its tags; a send with another targets list is not
   merged with pending trades of the first. */
Test(client_pubfields, batching_and_sharding_keep_them)
{
    enum { TRADES = 19, T = 2, SINGLES = 14 };
    static float A[TRADES * FULL], G[TRADES * T * FULL], R[TRADES * T * FULL];
    s_make(TRADES, T, 23, A, G, R);
    int64_t first[T] = {1, 0}, second[T] = {0, 1};
    char names[TRADES][16], desks[TRADES][16];
    xpl_id_t ids[TRADES];
    xpl_tag_t tag[TRADES][1];
    for (uint32_t t = 0; t < TRADES; t++) {
        snprintf(names[t], sizeof names[t], "tr-%u", t);
        ids[t] = xpl_id_str(names[t]);
        snprintf(desks[t], sizeof desks[t], "d%u", t % 4);
        tag[t][0] = (xpl_tag_t){"desk", desks[t]};
    }
    fx_t f;
    fx_open(&f, NSUB);
    cr_assert_eq(xpl_pub_set_batch(f.pub, 4, 0), 0);
    for (uint32_t t = 0; t < SINGLES; t++) {
        xpl_tags_t one = {1, tag[t]};
        xpl_batch_t b = {.model = "m1", .B = 1, .ids = &ids[t], .dtype = XPL_F32,
                         .attn = A + t * FULL, .grad = G + t * T * FULL, .rel = R + t * T * FULL,
                         .T = T, .targets = t < 10 ? first : second, .trade_tags = &one};
        cr_assert_eq(xpl_pub_send(f.pub, &b), 0, "%s", xpl_strerror());
        if (t == 9)
            cr_assert_eq(xpl_pub_pending(f.pub), 2, "two trades of the first targets pending");
        if (t == 10)
            cr_assert_eq(xpl_pub_pending(f.pub), 1, "another targets list sent the pending first");
    }
    /* A batch with one set of tags joins the pending trades. */
    xpl_tag_t all[1] = {{"desk", "all"}};
    xpl_tags_t tags = {1, all};
    enum { REST = TRADES - SINGLES };
    xpl_batch_t b = {.model = "m1", .B = REST, .ids = ids + SINGLES, .dtype = XPL_F32,
                     .attn = A + SINGLES * FULL, .grad = G + SINGLES * T * FULL,
                     .rel = R + SINGLES * T * FULL, .T = T, .targets = second, .tags = &tags};
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_flush(f.pub), 0, "%s", xpl_strerror());

    bool seen[TRADES] = {false};
    uint32_t got = 0;
    int64_t deadline = s_mono_ms() + 20000;
    wire_ingest_t in;
    while (got < TRADES) {
        cr_assert(fx_recv(&f, (int)(deadline - s_mono_ms()), &in),
                  "%u of %u trades arrived within 20 s", got, TRADES);
        cr_assert_eq(in.ntargets, T);
        cr_assert_not_null(in.rel);
        for (uint32_t i = 0; i < in.B; i++) {
            uint32_t t = 0;
            while (t < TRADES && !(in.ids[i].is_str && in.ids[i].s.len == strlen(names[t])
                                   && memcmp(in.ids[i].s.ptr, names[t], in.ids[i].s.len) == 0))
                t++;
            cr_assert_lt(t, TRADES, "unknown id");
            cr_assert_not(seen[t], "trade %u twice", t);
            seen[t] = true;
            got++;
            cr_assert_eq(xpl_shard_of(&ids[t], NSUB), (uint32_t)f.from, "trade %u on shard %d", t,
                         f.from);
            cr_assert_eq(memcmp(in.targets, t < 10 ? first : second, sizeof first), 0,
                         "trade %u: its own targets", t);
            size_t blk = (size_t)T * FULL * sizeof(float);
            cr_assert_eq(memcmp(in.attn + i * FULL * sizeof(float), A + t * FULL,
                                FULL * sizeof(float)),
                         0, "trade %u attn", t);
            cr_assert_eq(memcmp(in.grad + i * blk, G + t * T * FULL, blk), 0, "trade %u grad", t);
            cr_assert_eq(memcmp(in.rel + i * blk, R + t * T * FULL, blk), 0, "trade %u rel", t);
            char txt[64], want[64];
            s_tags_text(&in, i, txt, sizeof txt, NULL);
            snprintf(want, sizeof want, "desk=%s", t < SINGLES ? desks[t] : "all");
            cr_assert_str_eq(txt, want, "trade %u: its own tags", t);
        }
    }
    cr_assert_not(fx_recv(&f, 100, &in), "an extra message");

    /* Not batching: a batch over several shards is split, and its one
       set of tags goes whole (as a map) with every part. */
    cr_assert_eq(xpl_pub_set_batch(f.pub, 1, 0), 0);
    xpl_tag_t two[2] = {{"desk", "split"}, {"venue", "XLON"}};
    tags = (xpl_tags_t){2, two};
    b = (xpl_batch_t){.model = "m1", .B = TRADES, .ids = ids, .dtype = XPL_F32, .attn = A,
                      .grad = G, .T = T, .targets = first, .tags = &tags};
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0, "%s", xpl_strerror());
    got = 0;
    int parts = 0;
    while (got < TRADES) {
        cr_assert(fx_recv(&f, (int)(deadline - s_mono_ms()), &in),
                  "%u of %u split trades arrived", got, TRADES);
        parts++;
        got += in.B;
        for (uint32_t i = 0; i < in.B; i++) {
            char txt[64];
            bool per_trade = true;
            s_tags_text(&in, i, txt, sizeof txt, &per_trade);
            cr_assert_not(per_trade, "one set of tags stays one map");
            cr_assert_str_eq(txt, "desk=split;venue=XLON");
        }
        cr_assert_null(in.rel);
        cr_assert_eq(in.ntargets, T);
    }
    cr_assert_gt(parts, 1, "the batch was split over the shards");
    fx_close(&f);
}

/* What is held for micro-batching takes the room each new set of fields
   needs: a trade with only attn, then one with grad, rel and 3 targets
   (3 times the gradient bytes), then one of a larger model: each goes
   out whole, in its own message (run under ASan: no overflow). */
Test(client_pubfields, held_trades_change_fields_and_sizes)
{
    enum { T = 3, BL = 3, BH = 2, BN = 9 };
    static float A[FULL], G[T * FULL], R[T * FULL];
    s_make(1, T, 24, A, G, R);
    static float bigA[BL * BH * BN * BN], bigG[BL * BH * BN * BN];
    for (size_t k = 0; k < sizeof bigA / sizeof *bigA; k++) {
        bigA[k] = 1.0f / BN;
        bigG[k] = (float)(k % 7) - 3.0f;
    }
    const char *bt[BN] = {"a", "b", "c", "d", "e", "f", "g", "h", "CLS"};
    fx_t f;
    fx_open(&f, 1);
    cr_assert_eq(xpl_pub_set_schema(f.pub, "big", BL, BH, BN, BN - 1, bt), 0);
    cr_assert_eq(xpl_pub_set_batch(f.pub, 4, 0), 0);
    xpl_id_t id = xpl_id_str("h-0");
    int64_t targets[T] = {0, 2, 1};
    xpl_batch_t b = {.model = "m1", .B = 1, .ids = &id, .dtype = XPL_F32, .attn = A};
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0, "%s", xpl_strerror());
    b = (xpl_batch_t){.model = "m1", .B = 1, .ids = &id, .dtype = XPL_F32, .attn = A, .grad = G,
                      .rel = R, .T = T, .targets = targets};
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_pending(f.pub), 1, "other fields sent the first trade on its own");
    b = (xpl_batch_t){.model = "big", .B = 1, .ids = &id, .dtype = XPL_F32, .attn = bigA,
                      .grad = bigG};
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_flush(f.pub), 0, "%s", xpl_strerror());
    wire_ingest_t in;
    cr_assert(fx_recv(&f, 10000, &in), "first message");
    cr_assert(in.B == 1 && !in.grad && !in.rel && in.ntargets == 0);
    cr_assert(fx_recv(&f, 10000, &in), "second message");
    cr_assert_eq(in.ntargets, T);
    cr_assert_eq(memcmp(in.grad, G, sizeof G), 0);
    cr_assert_eq(memcmp(in.rel, R, sizeof R), 0);
    cr_assert(fx_recv(&f, 10000, &in), "third message");
    cr_assert_eq(in.shape.n, BN);
    cr_assert_eq(memcmp(in.attn, bigA, sizeof bigA), 0);
    cr_assert_eq(memcmp(in.grad, bigG, sizeof bigG), 0);
    fx_close(&f);
}

/* ---- against the daemon ------------------------------------------------- */

typedef struct {
    pid_t pid;
    char dir[64];
    char in[128], pub[128], query[128], log[128];
} daemon_t;

static daemon_t g_d;

/* xplaind with its ingest bound at d->in, or connected to `connect`. */
static void
daemon_start_in(daemon_t *d, const char *connect, const char *const *extra)
{
    snprintf(d->dir, sizeof d->dir, "/tmp/xplpf-XXXXXX");
    cr_assert_not_null(mkdtemp(d->dir));
    snprintf(d->in, sizeof d->in, "ipc://%s/in", d->dir);
    snprintf(d->pub, sizeof d->pub, "ipc://%s/pub", d->dir);
    snprintf(d->query, sizeof d->query, "ipc://%s/q", d->dir);
    snprintf(d->log, sizeof d->log, "%s/stderr.log", d->dir);
    const char *argv[32] = {XPLAIND_PATH, "--publish", d->pub, "--query", d->query,
                            connect ? "--ingest-connect" : "--ingest-bind", connect ? connect : d->in};
    int argc = 7;
    for (int i = 0; extra && extra[i] && argc < 31; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    d->pid = fork();
    cr_assert(d->pid >= 0);
    if (d->pid == 0) {
        int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    xpl_client_t *c = xpl_client_new(d->query);
    cr_assert_not_null(c);
    xpl_client_set_timeout(c, 200);
    int64_t deadline = s_mono_ms() + 30000;
    while (xpl_client_ping(c, NULL, 0, NULL) != 0) {
        int status;
        cr_assert_eq(waitpid(d->pid, &status, WNOHANG), 0, "xplaind exited early (see %s)", d->log);
        cr_assert_lt(s_mono_ms(), deadline, "xplaind did not answer ping within 30 s (see %s)",
                     d->log);
    }
    xpl_client_destroy(&c);
}

static void
daemon_start(daemon_t *d, const char *const *extra)
{
    daemon_start_in(d, NULL, extra);
}

static void
daemon_stop(daemon_t *d)
{
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        int status = 0;
        int64_t deadline = s_mono_ms() + 20000;
        while (waitpid(d->pid, &status, WNOHANG) == 0 && s_mono_ms() < deadline) {
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
        if (waitpid(d->pid, &status, WNOHANG) == 0) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &status, 0);
        }
        d->pid = 0;
    }
    if (d->dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", d->dir);
        d->dir[0] = 0;
    }
}

static void
teardown(void)
{
    daemon_stop(&g_d);
}

static void
setup_lrp(void)
{
    memset(&g_d, 0, sizeof g_d);
    const char *extra[] = {"--methods", "rollout,grad_rollout,lrp_rollout", NULL};
    daemon_start(&g_d, extra);
}

static void
setup_segments(void)
{
    memset(&g_d, 0, sizeof g_d);
    const char *extra[] = {"--segment-by", "desk", NULL};
    daemon_start(&g_d, extra);
}

static xpl_pub_t *
s_pub(void)
{
    xpl_pub_t *p = xpl_pub_new_connect(g_d.in);
    cr_assert_not_null(p, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_wait_subscriber(p, 10000), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(p, "m1", L_, H_, N_, CLS_, TOKENS), 0, "%s", xpl_strerror());
    return p;
}

/* Beat the slow joiner: throw-away trades until the subscriber sees
   one, then drain. */
static void
s_sync(xpl_pub_t *p, xpl_sub_t *s)
{
    static float A[FULL], G[FULL];
    s_make(1, 1, 99, A, G, NULL);
    xpl_id_t id = xpl_id_str("sync");
    xpl_batch_t b = {.model = "m1", .B = 1, .ids = &id, .dtype = XPL_F32, .attn = A};
    int64_t deadline = s_mono_ms() + 10000;
    while (s_mono_ms() < deadline) {
        cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
        xpl_event_t *ev = xpl_sub_recv(s, 50);
        if (ev) {
            xpl_event_destroy(&ev);
            while ((ev = xpl_sub_recv(s, 200)))
                xpl_event_destroy(&ev);
            return;
        }
    }
    cr_assert_fail("the subscriber received nothing within 10 s");
}

/* The next xpl/ event that is not one of s_sync's (a late one may still
   come after the drain when the machine is busy). */
static xpl_event_t *
s_next(xpl_sub_t *s)
{
    for (;;) {
        xpl_event_t *ev = xpl_sub_recv(s, 10000);
        if (!ev || !ev->explanation || !ev->explanation->id.is_str
            || strcmp(ev->explanation->id.s, "sync"))
            return ev;
        xpl_event_destroy(&ev);
    }
}

static void
s_widen(const float *src, double *dst, size_t count)
{
    for (size_t k = 0; k < count; k++)
        dst[k] = src[k];
}

static void
s_expect(const xpl_explanation_t *e, const char *method, const double *want)
{
    const xpl_attr_t *a = xpl_explanation_attr(e, method);
    cr_assert_not_null(a, "%s missing (target %lld)", method, (long long)e->target);
    cr_assert_eq(a->count, N_ - 1);
    for (uint32_t j = 0; j < a->count; j++)
        cr_assert(close_enough(a->values[j], want[j], 1e-5, 1e-9),
                  "%s[%u] target %lld: daemon %.9g reference %.9g", method, j,
                  (long long)e->target, a->values[j], want[j]);
}

/* Several targets with rel (f32), then one target with rel converted to
   bf16 on the wire: every xpl/ message's grad_rollout and lrp_rollout
   are the reference's on the values the daemon received. */
Test(client_pubfields, lrp_rollout_and_targets_against_the_daemon, .init = setup_lrp,
     .fini = teardown, .timeout = 120)
{
    enum { B = 2, T = 3 };
    static float A[B * FULL], G[B * T * FULL], R[B * T * FULL];
    s_make(B, T, 31, A, G, R);
    xpl_pub_t *p = s_pub();
    xpl_sub_t *s = xpl_sub_new(g_d.pub, g_d.query);
    cr_assert_not_null(s, "%s", xpl_strerror());
    cr_assert_eq(xpl_sub_subscribe(s, XPL_KIND_XPL, "m1"), 0);
    s_sync(p, s);

    xpl_id_t ids[B] = {xpl_id_uint(100), xpl_id_uint(101)};
    int64_t targets[T] = {2, 0, 1};
    xpl_batch_t b = {.model = "m1", .B = B, .ids = ids, .dtype = XPL_F32, .attn = A, .grad = G,
                     .rel = R, .T = T, .targets = targets};
    cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
    static double a[FULL], g[FULL], r[FULL];
    double want[N_];
    for (uint32_t k = 0; k < B * T; k++) {
        xpl_event_t *ev = s_next(s);
        cr_assert_not_null(ev, "xpl/ message %u of %u: %s", k, B * T, xpl_strerror());
        const xpl_explanation_t *e = ev->explanation;
        uint32_t i = (uint32_t)(e->id.u - 100), t = k % T;
        cr_assert_eq(i, k / T, "one message per trade and target, trade by trade");
        cr_assert(e->has_target);
        cr_assert_eq(e->target, targets[t], "message %u: target %lld, want %lld (target order)", k,
                     (long long)e->target, (long long)targets[t]);
        s_widen(A + i * FULL, a, FULL);
        s_widen(G + (i * T + t) * FULL, g, FULL);
        s_widen(R + (i * T + t) * FULL, r, FULL);
        ref_grad_rollout_v(L_, H_, N_, CLS_, a, g, true, false, 0, want);
        s_expect(e, "grad_rollout", want);
        ref_grad_rollout_v(L_, H_, N_, CLS_, r, g, true, false, 0, want);
        s_expect(e, "lrp_rollout", want);
        ref_rollout(L_, H_, N_, CLS_, a, REF_MEAN, want);
        s_expect(e, "rollout", want);
        xpl_event_destroy(&ev);
    }

    /* bf16 on the wire: the reference takes the bf16 values. */
    cr_assert_eq(xpl_pub_set_wire_dtype(p, XPL_BF16), 0);
    int64_t target = 1;
    b = (xpl_batch_t){.model = "m1", .B = 1, .ids = ids, .dtype = XPL_F32, .attn = A, .grad = G,
                      .rel = R, .target = &target};
    cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
    xpl_event_t *ev = s_next(s);
    cr_assert_not_null(ev, "no bf16 explanation: %s", xpl_strerror());
    static uint16_t h[FULL];
    double src[FULL];
    s_widen(A, src, FULL);
    encode_dtype(2, src, FULL, h, a);
    s_widen(G, src, FULL);
    encode_dtype(2, src, FULL, h, g);
    s_widen(R, src, FULL);
    encode_dtype(2, src, FULL, h, r);
    ref_grad_rollout_v(L_, H_, N_, CLS_, r, g, true, false, 0, want);
    s_expect(ev->explanation, "lrp_rollout", want);
    xpl_event_destroy(&ev);
    cr_assert_null(xpl_sub_recv(s, 200), "more messages than trades x targets");
    xpl_sub_destroy(&s);
    xpl_pub_destroy(&p);
}

/* The filled count of rollout's open window of one segment (or of the
   model overall, segment NULL). */
static uint64_t
s_filled(xpl_client_t *c, const char *segment)
{
    xpl_drift_state_t *d = xpl_client_drift_segment(c, "m1", "rollout", segment);
    cr_assert_not_null(d, "drift of %s: %s", segment ? segment : "m1", xpl_strerror());
    const xpl_drift_method_t *m = xpl_drift_state_method(d, "rollout");
    cr_assert_not_null(m);
    uint64_t n = m->filled;
    xpl_drift_state_destroy(&d);
    return n;
}

/* Tags, trade by trade and for a whole batch, micro-batched, put each
   trade into the segment of its desk (a trade without a desk tag, or
   without tags, into none). */
Test(client_pubfields, tags_reach_segments, .init = setup_segments, .fini = teardown,
     .timeout = 120)
{
    enum { TRADES = 9 };
    static float A[TRADES * FULL], G[TRADES * FULL];
    s_make(TRADES, 1, 41, A, G, NULL);
    xpl_pub_t *p = s_pub();
    cr_assert_eq(xpl_pub_set_batch(p, 3, 0), 0);
    xpl_tag_t rates[2] = {{"desk", "rates"}, {"venue", "XLON"}}, fx[1] = {{"desk", "fx"}},
              other[1] = {{"venue", "XPAR"}};
    /* 4 rates, 3 fx, 1 without desk, 1 without tags. */
    xpl_tags_t per[TRADES] = {{2, rates}, {1, fx}, {2, rates}, {1, other}, {1, fx},
                              {2, rates}, {0, NULL}, {2, rates}, {1, fx}};
    xpl_id_t ids[TRADES];
    for (uint32_t t = 0; t < 6; t++) {
        ids[t] = xpl_id_uint(t);
        xpl_batch_t b = {.model = "m1", .B = 1, .ids = &ids[t], .dtype = XPL_F32,
                         .attn = A + t * FULL, .grad = G + t * FULL, .trade_tags = &per[t]};
        cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
    }
    for (uint32_t t = 6; t < TRADES; t++)
        ids[t] = xpl_id_uint(t);
    xpl_batch_t b = {.model = "m1", .B = 3, .ids = ids + 6, .dtype = XPL_F32, .attn = A + 6 * FULL,
                     .grad = G + 6 * FULL, .trade_tags = per + 6};
    cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
    /* One set for a whole batch: two more fx. */
    xpl_tags_t all = {1, fx};
    xpl_id_t more[2] = {xpl_id_uint(20), xpl_id_uint(21)};
    b = (xpl_batch_t){.model = "m1", .B = 2, .ids = more, .dtype = XPL_F32, .attn = A,
                      .grad = G, .tags = &all};
    cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_flush(p), 0, "%s", xpl_strerror());

    xpl_client_t *c = xpl_client_new(g_d.query);
    cr_assert_not_null(c);
    int64_t deadline = s_mono_ms() + 20000;
    uint64_t explained = 0;
    while (explained < TRADES + 2) {
        xpl_models_t *ms = xpl_client_models(c);
        cr_assert_not_null(ms, "%s", xpl_strerror());
        const xpl_model_info_t *m = xpl_models_find(ms, "m1");
        explained = m ? m->explained + m->rejected : 0;
        cr_assert_eq(m ? m->rejected : 0, 0, "the daemon rejected a message (see %s)", g_d.log);
        xpl_models_destroy(&ms);
        cr_assert_lt(s_mono_ms(), deadline, "%llu of %d trades explained within 20 s",
                     (unsigned long long)explained, TRADES + 2);
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    xpl_drift_state_t *d = xpl_client_drift(c, "m1", "rollout", NULL);
    cr_assert_not_null(d, "%s", xpl_strerror());
    cr_assert_eq(d->nsegments, 2, "segments: desk=rates and desk=fx");
    bool r = false, f = false;
    for (uint32_t i = 0; i < d->nsegments; i++) {
        r = r || strcmp(d->segments[i], "desk=rates") == 0;
        f = f || strcmp(d->segments[i], "desk=fx") == 0;
    }
    cr_assert(r && f, "segments %s, %s", d->segments[0], d->segments[1]);
    xpl_drift_state_destroy(&d);
    cr_assert_eq(s_filled(c, "desk=rates"), 4);
    cr_assert_eq(s_filled(c, "desk=fx"), 5);
    cr_assert_eq(s_filled(c, NULL), TRADES + 2);
    xpl_client_destroy(&c);
    xpl_pub_destroy(&p);
}

/* ---- shards ------------------------------------------------------------- */

static daemon_t g_shard[2];

static void
teardown_shards(void)
{
    for (int k = 0; k < 2; k++)
        daemon_stop(&g_shard[k]);
}

/* Rollout's open-window count of a segment in one shard daemon, 0 when
   that daemon has no such segment (none of its trades had that desk). */
static uint64_t
s_shard_filled(xpl_client_t *c, const char *segment)
{
    xpl_drift_state_t *d = xpl_client_drift(c, "m1", "rollout", NULL);
    if (!d)
        return 0;           /* no trade of m1 yet */
    bool known = segment == NULL;
    for (uint32_t i = 0; !known && i < d->nsegments; i++)
        known = strcmp(d->segments[i], segment) == 0;
    xpl_drift_state_destroy(&d);
    return known ? s_filled(c, segment) : 0;
}

/* Two shard daemons (--shard K/2) fed by one sharded, micro-batching
   publisher: trades with targets, rel and their own tags reach the shard
   that owns them with all of it (every message explained, none
   rejected), and each desk's trades add up, over the shards, in that
   desk's segment. */
Test(client_pubfields, tags_targets_and_rel_over_shard_daemons, .fini = teardown_shards,
     .timeout = 120)
{
    enum { TRADES = 16, T = 2 };
    static float A[TRADES * FULL], G[TRADES * T * FULL], R[TRADES * T * FULL];
    s_make(TRADES, T, 51, A, G, R);
    memset(g_shard, 0, sizeof g_shard);
    xpl_pub_t *p = xpl_pub_new_bind("tcp://127.0.0.1:*");
    cr_assert_not_null(p, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_shards(p, 2), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_batch(p, 3, 0), 0);
    cr_assert_eq(xpl_pub_set_schema(p, "m1", L_, H_, N_, CLS_, TOKENS), 0);
    for (int k = 0; k < 2; k++) {
        char shard[8];
        snprintf(shard, sizeof shard, "%d/2", k);
        const char *extra[] = {"--shard", shard, "--segment-by", "desk", "--methods",
                               "rollout,grad_rollout,lrp_rollout", NULL};
        daemon_start_in(&g_shard[k], xpl_pub_endpoint(p), extra);
    }
    cr_assert_eq(xpl_pub_wait_subscriber(p, 10000), 0, "%s", xpl_strerror());
    char names[TRADES][16];
    xpl_id_t ids[TRADES];
    xpl_tag_t rates[1] = {{"desk", "rates"}}, fx[1] = {{"desk", "fx"}};
    uint32_t want_rates = 0, want_fx = 0, on[2] = {0, 0};
    int64_t targets[T] = {1, 0};
    for (uint32_t t = 0; t < TRADES; t++) {
        snprintf(names[t], sizeof names[t], "sh-%u", t);
        ids[t] = xpl_id_str(names[t]);
        bool r = t % 3 != 0;
        want_rates += r;
        want_fx += !r;
        on[xpl_shard_of(&ids[t], 2)]++;
        xpl_tags_t tags = {1, r ? rates : fx};
        xpl_batch_t b = {.model = "m1", .B = 1, .ids = &ids[t], .dtype = XPL_F32,
                         .attn = A + t * FULL, .grad = G + t * T * FULL, .rel = R + t * T * FULL,
                         .T = T, .targets = targets, .trade_tags = &tags};
        cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
    }
    cr_assert_eq(xpl_pub_flush(p), 0, "%s", xpl_strerror());
    cr_assert(on[0] > 0 && on[1] > 0, "the ids do not spread over both shards");

    xpl_client_t *c[2] = {xpl_client_new(g_shard[0].query), xpl_client_new(g_shard[1].query)};
    int64_t deadline = s_mono_ms() + 20000;
    for (int k = 0; k < 2; k++)
        while (s_shard_filled(c[k], NULL) < on[k]) {
            cr_assert_lt(s_mono_ms(), deadline, "shard %d: %llu of its %u trades in 20 s (see %s)",
                         k, (unsigned long long)s_shard_filled(c[k], NULL), on[k],
                         g_shard[k].log);
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
    uint64_t got_rates = 0, got_fx = 0;
    for (int k = 0; k < 2; k++) {
        xpl_stats_t *st = xpl_client_stats(c[k]);
        cr_assert_not_null(st, "%s", xpl_strerror());
        cr_assert_eq(st->rejected, 0, "shard %d rejected a message (see %s)", k, g_shard[k].log);
        xpl_stats_destroy(&st);
        cr_assert_eq(s_shard_filled(c[k], NULL), on[k], "shard %d: only its own trades", k);
        got_rates += s_shard_filled(c[k], "desk=rates");
        got_fx += s_shard_filled(c[k], "desk=fx");
    }
    cr_assert_eq(got_rates, want_rates);
    cr_assert_eq(got_fx, want_fx);
    for (int k = 0; k < 2; k++)
        xpl_client_destroy(&c[k]);
    xpl_pub_destroy(&p);
}

/* ---- programs compiled before the batch structs grew ------------------- */

/* xpl_batch_t as it was: what an old program passes to xpl_pub_send. */
typedef struct {
    const char *model;
    uint32_t B;
    const xpl_id_t *ids;
    xpl_dtype_t dtype;
    const void *attn, *grad;
    const int64_t *target;
    const double *y;
    int64_t ts;
} old_batch_t;

#undef xpl_pub_send
int xpl_pub_send(xpl_pub_t *self, const old_batch_t *batch);

/* The old entry point reads nothing past the old struct's end (here
   bytes of 0xff, which as new fields would be a rel, targets and tags
   at wild addresses). */
Test(client_pubfields, old_programs_call_the_old_entry_point)
{
    static float A[FULL], G[FULL];
    s_make(1, 1, 25, A, G, NULL);
    struct {
        old_batch_t b;
        unsigned char after[128];
    } w;
    memset(&w, 0xff, sizeof w);
    xpl_id_t id = xpl_id_str("old");
    int64_t target = 1;
    w.b = (old_batch_t){.model = "m1", .B = 1, .ids = &id, .dtype = XPL_F32, .attn = A, .grad = G,
                        .target = &target, .ts = 5};
    memset(w.after, 0xff, sizeof w.after);
    fx_t f;
    fx_open(&f, 1);
    cr_assert_eq(xpl_pub_send(f.pub, &w.b), 0, "%s", xpl_strerror());
    wire_ingest_t in;
    cr_assert(fx_recv(&f, 10000, &in), "nothing sent");
    cr_assert(in.B == 1 && in.target && in.target[0] == 1 && in.ts == 5);
    cr_assert(in.grad && !in.rel && in.ntargets == 0 && !in.tags);
    cr_assert_eq(memcmp(in.grad, G, sizeof G), 0);
    fx_close(&f);
}
