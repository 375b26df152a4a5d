/*  libxplain against malformed daemon messages: each input the client
    fuzzers (tests/fuzz/fuzz_client.c) found or were seeded with for a
    past crash is an XPL_EPROTO error, or a publication counted as
    malformed, never a crash, and the subscriber goes on.

    No daemon runs: a fake PUB (an XPUB, to know when the subscription has
    arrived) and a fake ROUTER (a thread answering every request with the
    staged body) speak to the library through its public API only.  */
#include <xplain/xplain.h>

#include <criterion/criterion.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static char g_dir[64];
static void *g_ctx;
static char g_query_ep[128], g_pub_ep[128];
static pthread_t g_th;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static msgpack_sbuffer g_reply;     /* the staged reply body (under g_mu) */
static volatile int g_stop;
static void *g_pub;                 /* the fake PUB, closed by teardown */

static void *
s_router_main(void *arg)
{
    void *sock = arg;
    while (!g_stop) {
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        zmq_msg_t parts[8];
        int n = 0;
        for (bool more = true; more;) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            zmq_msg_recv(&m, sock, 0);
            more = zmq_msg_more(&m);
            if (n < 8)
                parts[n++] = m;
            else
                zmq_msg_close(&m);
        }
        for (int k = 0; k < n - 1; k++)
            zmq_send(sock, zmq_msg_data(&parts[k]), zmq_msg_size(&parts[k]), ZMQ_SNDMORE);
        pthread_mutex_lock(&g_mu);
        zmq_send(sock, g_reply.data ? g_reply.data : "", g_reply.size, 0);
        pthread_mutex_unlock(&g_mu);
        for (int k = 0; k < n; k++)
            zmq_msg_close(&parts[k]);
    }
    zmq_close(sock);
    return NULL;
}

static void
setup(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/xplmal-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    snprintf(g_query_ep, sizeof g_query_ep, "ipc://%s/q", g_dir);
    snprintf(g_pub_ep, sizeof g_pub_ep, "ipc://%s/pub", g_dir);
    g_ctx = zmq_ctx_new();
    void *router = zmq_socket(g_ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
    cr_assert_eq(zmq_bind(router, g_query_ep), 0);
    msgpack_sbuffer_init(&g_reply);
    g_stop = 0;
    pthread_create(&g_th, NULL, s_router_main, router);
}

static void
teardown(void)
{
    g_stop = 1;
    pthread_join(g_th, NULL);
    if (g_pub)
        zmq_close(g_pub);
    g_pub = NULL;
    zmq_ctx_term(g_ctx);
    msgpack_sbuffer_destroy(&g_reply);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", g_dir);
}

/* ---- building bodies --------------------------------------------------- */

static void
key(msgpack_packer *pk, const char *k)
{
    msgpack_pack_str_with_body(pk, k, strlen(k));
}

static void
kstr(msgpack_packer *pk, const char *k, const char *v)
{
    key(pk, k);
    msgpack_pack_str_with_body(pk, v, strlen(v));
}

static void
kuint(msgpack_packer *pk, const char *k, uint64_t v)
{
    key(pk, k);
    msgpack_pack_uint64(pk, v);
}

static void
kdoubles(msgpack_packer *pk, const char *k, int n)
{
    key(pk, k);
    msgpack_pack_array(pk, (size_t)n);
    for (int i = 0; i < n; i++)
        msgpack_pack_double(pk, 0.25 * i);
}

/* A glob/ body or `global` reply of m1 without "features" (the daemon
   omits them when it no longer keeps the epoch's schema) whose method
   state lacks `drop` ("mean", "std" or "decayed"). */
static void
glob_body(msgpack_sbuffer *sb, bool reply, const char *drop)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, reply ? 8 : 7);
    kuint(&pk, "v", 1);
    if (reply) {
        key(&pk, "ok");
        msgpack_pack_true(&pk);
    }
    kstr(&pk, "model", "m1");
    kuint(&pk, "seq", 3);
    kuint(&pk, "ts", 1764000099000000000ull);
    kuint(&pk, "epoch", 1);
    kuint(&pk, "count", 6);
    key(&pk, "methods");
    msgpack_pack_map(&pk, 1);
    key(&pk, "rollout");
    const char *vecs[] = {"mean", "std", "decayed"};
    int nvecs = 0;
    for (int i = 0; i < 3; i++)
        nvecs += strcmp(vecs[i], drop) != 0;
    msgpack_pack_map(&pk, 1 + (size_t)nvecs);
    kuint(&pk, "count", 6);
    for (int i = 0; i < 3; i++)
        if (strcmp(vecs[i], drop) != 0)
            kdoubles(&pk, vecs[i], 4);
}

/* A `trade` reply of m1 with n, cls and one matrix of `matrix_bytes`. */
static void
trade_reply(msgpack_sbuffer *sb, uint64_t n, int64_t cls, size_t matrix_bytes)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 10);
    kuint(&pk, "v", 1);
    key(&pk, "ok");
    msgpack_pack_true(&pk);
    kstr(&pk, "model", "m1");
    kstr(&pk, "id", "t-1");
    kuint(&pk, "epoch", 1);
    kuint(&pk, "ts", 1764000000000000000ull);
    kuint(&pk, "n", n);
    key(&pk, "cls");
    msgpack_pack_int64(&pk, cls);
    key(&pk, "attr");
    msgpack_pack_map(&pk, 1);
    kdoubles(&pk, "rollout", 4);
    key(&pk, "matrices");
    msgpack_pack_map(&pk, 1);
    key(&pk, "rollout");
    char *zeros = calloc(1, matrix_bytes + 1);
    msgpack_pack_bin_with_body(&pk, zeros, matrix_bytes);
    free(zeros);
}

static void
stage(void (*build)(msgpack_sbuffer *))
{
    pthread_mutex_lock(&g_mu);
    msgpack_sbuffer_clear(&g_reply);
    build(&g_reply);
    pthread_mutex_unlock(&g_mu);
}

static xpl_client_t *
client(void)
{
    xpl_client_t *c = xpl_client_new(g_query_ep);
    cr_assert_not_null(c, "%s", xpl_strerror());
    xpl_client_set_timeout(c, 10000);
    return c;
}

/* ---- replies ----------------------------------------------------------- */

static const char *g_drop;
static void build_glob(msgpack_sbuffer *sb) { glob_body(sb, true, g_drop); }

Test(client_malformed, global_reply_without_features_and_a_vector_is_eproto,
     .init = setup, .fini = teardown)
{
    const char *drops[] = {"mean", "std", "decayed"};
    xpl_client_t *c = client();
    for (int i = 0; i < 3; i++) {
        g_drop = drops[i];
        stage(build_glob);
        xpl_global_t *g = xpl_client_global(c, "m1", NULL, NULL, NULL);
        cr_assert_null(g, "no %s: decoded", drops[i]);
        cr_assert_eq(xpl_errno(), XPL_EPROTO, "no %s: error %d (%s)", drops[i], xpl_errno(),
                     xpl_strerror());
        cr_assert(strstr(xpl_strerror(), drops[i]), "no %s: reason '%s'", drops[i],
                  xpl_strerror());
    }
    /* The same state with every vector decodes: the test can fail. */
    g_drop = "";
    stage(build_glob);
    xpl_global_t *g = xpl_client_global(c, "m1", NULL, NULL, NULL);
    cr_assert_not_null(g, "%s", xpl_strerror());
    cr_assert_eq(g->nfeat, 4);
    cr_assert_null(g->features);
    xpl_global_destroy(&g);
    xpl_client_destroy(&c);
}

/* n = 2^31: n * n * 4 wraps to 0 in 64 bits, so an empty matrix used to
   pass for an n x n one, read past its end by whoever used it. */
static void build_trade_wrap(msgpack_sbuffer *sb) { trade_reply(sb, 1ull << 31, -1, 0); }
static void build_trade_cls(msgpack_sbuffer *sb) { trade_reply(sb, 4, 4, 64); }
static void build_trade_ok(msgpack_sbuffer *sb) { trade_reply(sb, 4, -1, 64); }

Test(client_malformed, trade_reply_with_inconsistent_matrix_or_cls_is_eproto,
     .init = setup, .fini = teardown)
{
    xpl_client_t *c = client();
    stage(build_trade_wrap);
    xpl_explanation_t *e = xpl_client_trade(c, "m1", xpl_id_str("t-1"), false);
    cr_assert_null(e, "a 0-byte matrix for n = 2^31 decoded");
    cr_assert_eq(xpl_errno(), XPL_EPROTO, "%s", xpl_strerror());
    cr_assert(strstr(xpl_strerror(), "matrix"), "%s", xpl_strerror());

    stage(build_trade_cls);
    e = xpl_client_trade(c, "m1", xpl_id_str("t-1"), false);
    cr_assert_null(e, "cls = n decoded");
    cr_assert_eq(xpl_errno(), XPL_EPROTO, "%s", xpl_strerror());

    stage(build_trade_ok);
    e = xpl_client_trade(c, "m1", xpl_id_str("t-1"), false);
    cr_assert_not_null(e, "%s", xpl_strerror());
    cr_assert_eq(e->nmatrices, 1);
    cr_assert_eq(e->matrices[0].n, 4);
    xpl_explanation_destroy(&e);
    xpl_client_destroy(&c);
}

/* ---- publications ------------------------------------------------------ */

static void *
pub_new(void)
{
    void *pub = zmq_socket(g_ctx, ZMQ_XPUB);
    int zero = 0;
    zmq_setsockopt(pub, ZMQ_LINGER, &zero, sizeof zero);
    cr_assert_eq(zmq_bind(pub, g_pub_ep), 0);
    g_pub = pub;
    return pub;
}

static xpl_sub_t *
sub_new(void *pub, unsigned kinds, int nsubs)
{
    xpl_sub_t *s = xpl_sub_new(g_pub_ep, NULL);
    cr_assert_not_null(s, "%s", xpl_strerror());
    cr_assert_eq(xpl_sub_subscribe(s, kinds, NULL), 0);
    for (int k = 0; k < nsubs; k++) {
        zmq_pollitem_t it = {pub, 0, ZMQ_POLLIN, 0};
        cr_assert_eq(zmq_poll(&it, 1, 10000), 1, "the subscription did not arrive");
        char buf[64];
        cr_assert_gt(zmq_recv(pub, buf, sizeof buf, 0), 1);
    }
    return s;
}

static void
publish(void *pub, const char *topic, size_t tlen, const msgpack_sbuffer *body)
{
    cr_assert_eq(zmq_send(pub, topic, tlen, ZMQ_SNDMORE), (int)tlen);
    cr_assert_eq(zmq_send(pub, body->data, body->size, 0), (int)body->size);
}

/* heads/ of m1 with L = 1 and H = `H` whose single rows are empty. */
static void
heads_body(msgpack_sbuffer *sb, uint64_t H)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 11);
    kuint(&pk, "v", 1);
    kstr(&pk, "model", "m1");
    kuint(&pk, "seq", 1);
    kuint(&pk, "ts", 1);
    kuint(&pk, "epoch", 1);
    kuint(&pk, "L", 1);
    kuint(&pk, "H", H);
    for (int k = 0; k < 2; k++) {
        key(&pk, k ? "confidence" : "importance");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_array(&pk, H == 0 ? 0 : 1);
        if (H)
            msgpack_pack_double(&pk, 0.5);
    }
    kuint(&pk, "importance_count", 1);
    kuint(&pk, "confidence_count", 1);
}

/* H = 4e9 with one-number rows: refused by looking at the rows, not
   after asking for L * H * 8 = 32 GB (an abort under ASan, and memory
   the library had no business asking for). */
Test(client_malformed, heads_with_a_huge_H_is_refused_before_allocating,
     .init = setup, .fini = teardown)
{
    void *pub = pub_new();
    xpl_sub_t *s = sub_new(pub, XPL_KIND_HEADS, 1);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    heads_body(&sb, 4000000000ull);
    publish(pub, "heads/m1", 8, &sb);
    msgpack_sbuffer_clear(&sb);
    heads_body(&sb, 1);
    publish(pub, "heads/m1", 8, &sb);
    xpl_event_t *ev = xpl_sub_recv(s, 10000);
    cr_assert_not_null(ev, "%s", xpl_strerror());
    cr_assert_eq(ev->heads->H, 1);
    cr_assert_eq(xpl_sub_malformed(s), 1);
    const char *why = xpl_sub_last_malformed(s);
    cr_assert(strstr(why, "importance") && !strstr(why, "memory"), "%s", why);
    xpl_event_destroy(&ev);
    msgpack_sbuffer_destroy(&sb);
    xpl_sub_destroy(&s);
}

/* "glob/m1\0x" is no topic of m1, whatever the body says. */
Test(client_malformed, topic_with_a_nul_in_the_model_is_malformed, .init = setup,
     .fini = teardown)
{
    void *pub = pub_new();
    xpl_sub_t *s = sub_new(pub, XPL_KIND_GLOB, 1);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    glob_body(&sb, false, "");
    publish(pub, "glob/m1\0x", 9, &sb);
    publish(pub, "glob/m1", 7, &sb);
    xpl_event_t *ev = xpl_sub_recv(s, 10000);
    cr_assert_not_null(ev, "%s", xpl_strerror());
    cr_assert_eq(xpl_sub_malformed(s), 1, "the NUL topic was delivered as %s", ev->model);
    cr_assert(strstr(xpl_sub_last_malformed(s), "model name"), "%s", xpl_sub_last_malformed(s));
    xpl_event_destroy(&ev);
    msgpack_sbuffer_destroy(&sb);
    xpl_sub_destroy(&s);
}

Test(client_malformed, glob_without_features_and_a_vector_is_counted_not_fatal,
     .init = setup, .fini = teardown)
{
    void *pub = pub_new();
    xpl_sub_t *s = sub_new(pub, XPL_KIND_GLOB, 1);
    const char *drops[] = {"mean", "std", "decayed"};
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    for (int i = 0; i < 3; i++) {
        msgpack_sbuffer_clear(&sb);
        glob_body(&sb, false, drops[i]);
        publish(pub, "glob/m1", 7, &sb);
    }
    /* A good state last: the subscriber is alive and delivers it. */
    msgpack_sbuffer_clear(&sb);
    glob_body(&sb, false, "");
    publish(pub, "glob/m1", 7, &sb);
    xpl_event_t *ev = xpl_sub_recv(s, 10000);
    cr_assert_not_null(ev, "%s", xpl_strerror());
    cr_assert_eq(ev->kind, XPL_KIND_GLOB);
    cr_assert_eq(ev->global->nfeat, 4);
    cr_assert_eq(xpl_sub_malformed(s), 3);
    cr_assert(strstr(xpl_sub_last_malformed(s), "decayed"), "%s", xpl_sub_last_malformed(s));
    xpl_event_destroy(&ev);
    msgpack_sbuffer_destroy(&sb);
    xpl_sub_destroy(&s);
}

/* ---- JSON rendering ---------------------------------------------------- */

/* 24 one-pair maps, each the key of the next: quoting each key's
   rendering inside the next doubled the output at every level (a fuzzer's
   190-byte reply took half a minute and gigabytes to render). */
Test(client_malformed, json_of_keys_nested_in_keys_stays_small)
{
    uint8_t mp[64];
    size_t len = 0;
    for (int i = 0; i < 24; i++)
        mp[len++] = 0x81;           /* a map of one pair, its key next */
    mp[len++] = 0x01;               /* the innermost key */
    for (int i = 0; i < 24; i++)
        mp[len++] = 0x02;           /* the value of each */
    char *j = xpl_json_from_msgpack(mp, len);
    cr_assert_not_null(j, "%s", xpl_strerror());
    cr_assert_lt(strlen(j), 512, "%zu bytes of JSON for %zu of msgpack", strlen(j), len);
    cr_assert_str_eq(j, "{\"{\\\"{...}\\\": 2}\": 2}");
    free(j);
    /* One level of container key is rendered whole. */
    static const uint8_t one[] = {0x81, 0x91, 0xa1, 'a', 0x02};
    j = xpl_json_from_msgpack(one, sizeof one);
    cr_assert_str_eq(j, "{\"[\\\"a\\\"]\": 2}");
    free(j);
}
