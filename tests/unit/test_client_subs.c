/*  libxplain's subscription count against plain ZeroMQ SUB sockets (no
    daemon): xpl_pub_wait_subscriptions returns for a new subscriber only,
    while an old one is still subscribed (a stopped daemon whose
    unsubscription has not arrived yet), and what is sent once it returned
    reaches the new subscriber; the count never goes down (unsubscriptions,
    the batch timer reading subscriptions while sending); with shards a
    subscription counts once if it covers any shard's topics.  */
#include <xplain/xplain.h>

#include "shard.h"

#include <criterion/criterion.h>
#include <msgpack.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

static const char *g_tokens[2] = {"a", "b"};

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *
s_sub(void *ctx, const xpl_pub_t *p, const char *prefix)
{
    void *s = zmq_socket(ctx, ZMQ_SUB);
    cr_assert_not_null(s);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    cr_assert_eq(zmq_setsockopt(s, ZMQ_SUBSCRIBE, prefix, strlen(prefix)), 0);
    cr_assert_eq(zmq_connect(s, xpl_pub_endpoint(p)), 0);
    return s;
}

static void
s_send(xpl_pub_t *p, uint64_t id)
{
    float a[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    xpl_id_t tid = xpl_id_uint(id);
    xpl_batch_t b = {.model = "m", .B = 1, .ids = &tid, .dtype = XPL_F32, .attn = a};
    cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
}

/* The first trade id of the next message on `sub` within `ms`, or -1. */
static int64_t
s_recv_id(void *sub, int ms)
{
    zmq_pollitem_t it = {sub, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, ms) <= 0)
        return -1;
    char topic[64];
    int tl = zmq_recv(sub, topic, sizeof topic, 0);
    cr_assert_eq(tl, 6);
    cr_assert_eq(memcmp(topic, "attn/m", 6), 0);
    zmq_msg_t body;
    zmq_msg_init(&body);
    cr_assert(zmq_msg_recv(&body, sub, 0) > 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    cr_assert_eq(msgpack_unpack_next(&u, zmq_msg_data(&body), zmq_msg_size(&body), NULL),
                 MSGPACK_UNPACK_SUCCESS);
    int64_t id = -1;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == 3
            && memcmp(k->via.str.ptr, "ids", 3) == 0 && v->via.array.size >= 1)
            id = (int64_t)v->via.array.ptr[0].via.u64;
    }
    msgpack_unpacked_destroy(&u);
    zmq_msg_close(&body);
    cr_assert(id >= 0, "a message without ids");
    return id;
}

/* Twenty "restarts": each time a new subscriber joins while the previous
   one is still subscribed. wait_subscriber would return at once on the
   old one and the trade would miss the new one; wait_subscriptions waits
   for the new subscription, after which a trade reaches it. */
Test(pub_subs, new_subscriber_while_the_old_one_is_counted)
{
    void *ctx = zmq_ctx_new();
    xpl_pub_t *p = xpl_pub_new_bind("tcp://127.0.0.1:*");
    cr_assert_not_null(p, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(p, "m", 1, 1, 2, -1, g_tokens), 0);
    cr_assert_eq(xpl_pub_subscriptions(p), 0);
    cr_assert_eq(xpl_pub_wait_subscriptions(p, 0, 0), -1);
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    void *old = NULL;
    for (uint64_t r = 0; r < 20; r++) {
        uint64_t before = xpl_pub_subscriptions(p);
        cr_assert_eq(before, r, "one subscription per subscriber, none lost");
        if (old) {
            cr_assert_eq(xpl_pub_wait_subscriber(p, 0), 0, "the old subscriber still counts");
            cr_assert_eq(xpl_pub_wait_subscriptions(p, before, 100), -1,
                         "returned with no new subscriber");
            cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
            cr_assert(strstr(xpl_strerror(), "no subscription after the first"), "%s",
                      xpl_strerror());
        }
        void *s = s_sub(ctx, p, "attn/");
        cr_assert_eq(xpl_pub_wait_subscriptions(p, before, 5000), 0,
                     "round %llu: the new subscriber's subscription never came: %s",
                     (unsigned long long)r, xpl_strerror());
        s_send(p, r);
        cr_assert_eq(s_recv_id(s, 5000), (int64_t)r, "round %llu: the trade missed the new subscriber",
                     (unsigned long long)r);
        if (old)
            zmq_close(old);
        old = s;
    }
    zmq_close(old);
    /* Every subscriber has gone: the unsubscriptions arrive, the count of
       subscriptions seen stays. */
    int64_t deadline = s_now_ms() + 10000;
    while (xpl_pub_wait_subscriber(p, 0) == 0)
        cr_assert(s_now_ms() < deadline, "the last unsubscription never reached the publisher");
    cr_assert_eq(xpl_pub_subscriptions(p), 20);
    cr_assert_eq(xpl_pub_wait_subscriptions(p, 19, 0), 0);
    xpl_pub_destroy(&p);
    zmq_ctx_term(ctx);
}

/* The batch timer reads subscriptions (under the lock) each time it sends:
   a subscription it took in still counts for the waiter. */
Test(pub_subs, batch_timer_does_not_take_the_subscription)
{
    void *ctx = zmq_ctx_new();
    xpl_pub_t *p = xpl_pub_new_bind("tcp://127.0.0.1:*");
    cr_assert_not_null(p, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(p, "m", 1, 1, 2, -1, g_tokens), 0);
    cr_assert_eq(xpl_pub_set_batch(p, 64, 500), 0);
    uint64_t before = xpl_pub_subscriptions(p);
    void *s = s_sub(ctx, p, "attn/m");
    /* Only the timer sends (one trade pending at a time, batch 64): once
       the subscriber has a trade, the timer has read its subscription. */
    int64_t deadline = s_now_ms() + 10000;
    uint64_t id = 0;
    for (;;) {
        s_send(p, id++);
        if (s_recv_id(s, 5) >= 0)
            break;
        cr_assert(s_now_ms() < deadline, "no trade sent by the batch timer reached the subscriber");
    }
    cr_assert_eq(xpl_pub_wait_subscriptions(p, before, 0), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_subscriptions(p), before + 1);
    /* And the other way round: the timer keeps sending while a waiter
       waits for a second subscriber. */
    before = xpl_pub_subscriptions(p);
    void *s2 = s_sub(ctx, p, "attn/");
    deadline = s_now_ms() + 10000;
    while (xpl_pub_wait_subscriptions(p, before, 1) != 0) {
        cr_assert(s_now_ms() < deadline, "the second subscription never counted");
        s_send(p, id++);
    }
    cr_assert_eq(xpl_pub_subscriptions(p), before + 1);
    zmq_close(s2);
    zmq_close(s);
    xpl_pub_destroy(&p);
    zmq_ctx_term(ctx);
}

/* With shards: a subscription counts once when it covers some shard's
   topics (all of them, or one shard's); one to other topics not at all. */
Test(pub_subs, shards_count_each_subscription_once)
{
    void *ctx = zmq_ctx_new();
    xpl_pub_t *p = xpl_pub_new_bind("tcp://127.0.0.1:*");
    cr_assert_not_null(p, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_shards(p, 3), 0);
    char one[SHARD_PREFIX_MAX + 1];
    shard_prefix(one, sizeof one, 1, 3);
    void *s = s_sub(ctx, p, "shard/");
    cr_assert_eq(xpl_pub_wait_subscriptions(p, 0, 5000), 0, "%s", xpl_strerror());
    /* On the same connection, so they arrive in this order: attn/ (not a
       sharded publisher's topic) is read by the time shard 1's counts. */
    cr_assert_eq(zmq_setsockopt(s, ZMQ_SUBSCRIBE, "attn/", 5), 0);
    cr_assert_eq(zmq_setsockopt(s, ZMQ_SUBSCRIBE, one, strlen(one)), 0);
    cr_assert_eq(xpl_pub_wait_subscriptions(p, 1, 5000), 0, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_subscriptions(p), 2, "the attn/ subscription counted");
    cr_assert_eq(xpl_pub_set_shards(p, 2), -1, "too late once subscriptions were read");
    zmq_close(s);
    xpl_pub_destroy(&p);
    zmq_ctx_term(ctx);
}
