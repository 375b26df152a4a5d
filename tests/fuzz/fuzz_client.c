/*  fuzz_client: libxplain's decoders of what a daemon sends, through the
    public API, one target per topic and per query reply.

    The library is driven as an application drives it, over inproc
    sockets of its own ZeroMQ context: a fake daemon's XPUB publishes to
    an xpl_sub_t, a fake daemon's ROUTER (a thread) answers an
    xpl_client_t. FUZZ_TARGET (set by CMakeLists.txt) picks the target:

      topic_xpl, topic_glob, topic_drift, topic_heads
          input = one byte k, k bytes of model name, then the body: the
          topic is the kind's prefix + the model (as fuzz_ingest splits
          its input). The subscriber's own schema queries are answered
          with a valid schema of m1 (and unknown_model for other models),
          so m1's explanations get feature names attached.
      reply_ping, reply_models, reply_schema, reply_stats, reply_trade,
      reply_global, reply_drift, reply_baseline, reply_reference,
      reply_request
          input = the reply body to that call (reply_request: the raw
          xpl_client_request, then its JSON rendering).

    What the library promises is checked, not just survived: a malformed
    message is an XPL_EPROTO error (or, for a reply with "ok": false, the
    daemon's error), a malformed publication is counted as malformed and
    the subscriber goes on; whatever decodes is read whole through its
    fields and public accessors (every string, every vector to its stated
    length), so a result with inconsistent fields is found too. Every body
    also goes through xpl_json_from_msgpack. A broken promise aborts, so
    the fuzzer reports it.  */
#include "xpl_private.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define REQUIRE(cond)                                                                        \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "fuzz_client: %s:%d: broken: %s (error %d: %s)\n", __FILE__,    \
                    __LINE__, #cond, xpl_errno(), xpl_strerror());                           \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

enum {
    T_TOPIC_XPL, T_TOPIC_GLOB, T_TOPIC_DRIFT, T_TOPIC_HEADS,
    T_REPLY_PING, T_REPLY_MODELS, T_REPLY_SCHEMA, T_REPLY_STATS, T_REPLY_TRADE,
    T_REPLY_GLOBAL, T_REPLY_DRIFT, T_REPLY_BASELINE, T_REPLY_REFERENCE, T_REPLY_REQUEST
};

#ifndef FUZZ_TARGET
#error "FUZZ_TARGET must name the target (T_TOPIC_XPL, ...)"
#endif

#define S_PUB_EP "inproc://xpl-fuzz-pub"
#define S_QUERY_EP "inproc://xpl-fuzz-query"
#define S_WAIT_MS 20000         /* only a hang or a lost message takes this long */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- the fake daemon ---------------------------------------------------- */

static void *s_ctx;             /* the library's context (inproc needs it) */
static void *s_pub;             /* XPUB: the publishing side */
static xpl_sub_t *s_sub;
static xpl_client_t *s_client;
static pthread_t s_router_th;
static pthread_mutex_t s_mu = PTHREAD_MUTEX_INITIALIZER;
static const uint8_t *s_reply;  /* the body the ROUTER answers with (under s_mu) */
static size_t s_reply_len;
static uint8_t *s_schema_m1, *s_unknown_model;
static size_t s_schema_m1_len, s_unknown_model_len;

/* A schema query of the subscriber? Sets *m1 when it asks for m1. */
static bool
s_is_schema(const uint8_t *b, size_t len, bool *m1)
{
    xdoc_t d;
    if (xdoc_parse(&d, b, len, "request"))
        return false;
    const xnode_t *op = xn_get(d.nodes, "op"), *model = xn_get(d.nodes, "model");
    bool schema = xn_is(op, MPR_STR) && mpr_str_eq(&op->o, "schema");
    *m1 = xn_is(model, MPR_STR) && mpr_str_eq(&model->o, "m1");
    xdoc_free(&d);
    return schema;
}

/* The ROUTER: answer every request with the staged body, keeping its
   envelope; a schema query with the fixed schemas when fuzzing xpl/. */
static void *
s_router_main(void *arg)
{
    void *sock = arg;
    for (;;) {
        zmq_msg_t parts[8];
        int n = 0;
        for (bool more = true; more;) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, sock, 0) < 0) {
                zmq_msg_close(&m);
                for (int k = 0; k < n; k++)
                    zmq_msg_close(&parts[k]);
                zmq_close(sock);
                return NULL;        /* the context is terminating */
            }
            more = zmq_msg_more(&m);
            if (n < 8)
                parts[n++] = m;
            else
                zmq_msg_close(&m);
        }
        const uint8_t *body = zmq_msg_data(&parts[n - 1]);
        size_t blen = zmq_msg_size(&parts[n - 1]);
        bool m1;
        pthread_mutex_lock(&s_mu);
        const uint8_t *reply = s_reply;
        size_t rlen = s_reply_len;
        if (FUZZ_TARGET == T_TOPIC_XPL && s_is_schema(body, blen, &m1)) {
            reply = m1 ? s_schema_m1 : s_unknown_model;
            rlen = m1 ? s_schema_m1_len : s_unknown_model_len;
        }
        for (int k = 0; k < n - 1; k++)
            zmq_send(sock, zmq_msg_data(&parts[k]), zmq_msg_size(&parts[k]), ZMQ_SNDMORE);
        zmq_send(sock, reply ? (const void *)reply : "", reply ? rlen : 0, 0);
        pthread_mutex_unlock(&s_mu);
        for (int k = 0; k < n; k++)
            zmq_msg_close(&parts[k]);
    }
}

/* A fixed body: "schema_m1" (proto/examples/reply/schema), "unknown_model"
   (its error reply), or the sentinel publication "heads" / "drift". */
static uint8_t *
s_pack(const char *what, size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (strcmp(what, "schema_m1") == 0) {
        /* proto/examples/reply/schema */
        static const char *const tokens[] = {"price", "size", "spread", "side", "CLS"};
        msgpack_pack_map(&pk, 11);
        xpk_key(&pk, "v"); msgpack_pack_uint8(&pk, 1);
        xpk_key(&pk, "ok"); msgpack_pack_true(&pk);
        xpk_key(&pk, "model"); xpk_str(&pk, "m1");
        xpk_key(&pk, "epoch"); msgpack_pack_uint8(&pk, 1);
        xpk_key(&pk, "L"); msgpack_pack_uint8(&pk, 2);
        xpk_key(&pk, "H"); msgpack_pack_uint8(&pk, 2);
        xpk_key(&pk, "n"); msgpack_pack_uint8(&pk, 5);
        xpk_key(&pk, "cls"); msgpack_pack_uint8(&pk, 4);
        xpk_key(&pk, "tokens");
        msgpack_pack_array(&pk, 5);
        for (int k = 0; k < 5; k++)
            xpk_str(&pk, tokens[k]);
        xpk_key(&pk, "features");
        msgpack_pack_array(&pk, 4);
        for (int k = 0; k < 4; k++)
            xpk_str(&pk, tokens[k]);
        xpk_key(&pk, "dtype"); xpk_str(&pk, "f32");
    } else if (strcmp(what, "unknown_model") == 0) {
        msgpack_pack_map(&pk, 4);
        xpk_key(&pk, "v"); msgpack_pack_uint8(&pk, 1);
        xpk_key(&pk, "ok"); msgpack_pack_false(&pk);
        xpk_key(&pk, "code"); xpk_str(&pk, "unknown_model");
        xpk_key(&pk, "error"); xpk_str(&pk, "unknown model");
    } else if (strcmp(what, "heads") == 0) {
        /* The sentinel publication, a valid heads/ body. */
        msgpack_pack_map(&pk, 11);
        xpk_key(&pk, "v"); msgpack_pack_uint8(&pk, 1);
        xpk_key(&pk, "model"); xpk_str(&pk, "sentinel");
        xpk_key(&pk, "seq"); msgpack_pack_uint8(&pk, 0);
        xpk_key(&pk, "epoch"); msgpack_pack_uint8(&pk, 1);
        xpk_key(&pk, "ts"); msgpack_pack_uint8(&pk, 0);
        xpk_key(&pk, "L"); msgpack_pack_uint8(&pk, 1);
        xpk_key(&pk, "H"); msgpack_pack_uint8(&pk, 1);
        xpk_key(&pk, "importance");
        msgpack_pack_array(&pk, 1); msgpack_pack_array(&pk, 1); msgpack_pack_double(&pk, 0.5);
        xpk_key(&pk, "confidence");
        msgpack_pack_array(&pk, 1); msgpack_pack_array(&pk, 1); msgpack_pack_double(&pk, 0.5);
        xpk_key(&pk, "importance_count"); msgpack_pack_uint8(&pk, 1);
        xpk_key(&pk, "confidence_count"); msgpack_pack_uint8(&pk, 1);
    } else {
        /* The sentinel publication, a valid drift/ body. */
        msgpack_pack_map(&pk, 14);
        xpk_key(&pk, "v"); msgpack_pack_uint8(&pk, 1);
        xpk_key(&pk, "model"); xpk_str(&pk, "sentinel");
        xpk_key(&pk, "seq"); msgpack_pack_uint8(&pk, 0);
        xpk_key(&pk, "epoch"); msgpack_pack_uint8(&pk, 1);
        xpk_key(&pk, "method"); xpk_str(&pk, "rollout");
        xpk_key(&pk, "trades"); msgpack_pack_uint8(&pk, 4);
        xpk_key(&pk, "window"); msgpack_pack_uint8(&pk, 0);
        xpk_key(&pk, "reference"); xpk_str(&pk, "baseline");
        xpk_key(&pk, "compared"); msgpack_pack_false(&pk);
        xpk_key(&pk, "spearman"); msgpack_pack_nil(&pk);
        xpk_key(&pk, "ndcg"); msgpack_pack_nil(&pk);
        xpk_key(&pk, "js"); msgpack_pack_nil(&pk);
        xpk_key(&pk, "alert"); msgpack_pack_false(&pk);
        xpk_key(&pk, "ts"); msgpack_pack_uint8(&pk, 0);
    }
    *len = sb.size;
    return (uint8_t *)sb.data;      /* kept for the life of the process */
}

static bool s_topic_target(void) { return FUZZ_TARGET <= T_TOPIC_HEADS; }

static unsigned
s_target_kind(void)
{
    return FUZZ_TARGET == T_TOPIC_XPL ? XPL_KIND_XPL : FUZZ_TARGET == T_TOPIC_GLOB ? XPL_KIND_GLOB
           : FUZZ_TARGET == T_TOPIC_DRIFT ? XPL_KIND_DRIFT : XPL_KIND_HEADS;
}

/* The sentinel's kind: another kind than the one fuzzed. */
static unsigned
s_sentinel_kind(void)
{
    return FUZZ_TARGET == T_TOPIC_HEADS ? XPL_KIND_DRIFT : XPL_KIND_HEADS;
}

static uint8_t *s_sentinel;
static size_t s_sentinel_len;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    s_ctx = xpl_ctx_acquire();
    REQUIRE(s_ctx);
    if (FUZZ_TARGET == T_TOPIC_XPL) {   /* only its ROUTER answers schema queries */
        s_schema_m1 = s_pack("schema_m1", &s_schema_m1_len);
        s_unknown_model = s_pack("unknown_model", &s_unknown_model_len);
    }
    void *router = zmq_socket(s_ctx, ZMQ_ROUTER);
    int zero = 0;
    REQUIRE(router && zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero) == 0);
    REQUIRE(zmq_bind(router, S_QUERY_EP) == 0);
    REQUIRE(pthread_create(&s_router_th, NULL, s_router_main, router) == 0);
    pthread_detach(s_router_th);

    if (!s_topic_target()) {
        s_client = xpl_client_new(S_QUERY_EP);
        REQUIRE(s_client);
        xpl_client_set_timeout(s_client, S_WAIT_MS);
        return 0;
    }
    s_sentinel = s_pack(s_sentinel_kind() == XPL_KIND_HEADS ? "heads" : "drift", &s_sentinel_len);
    s_pub = zmq_socket(s_ctx, ZMQ_XPUB);
    int hwm = 0;
    REQUIRE(s_pub && zmq_setsockopt(s_pub, ZMQ_LINGER, &zero, sizeof zero) == 0);
    REQUIRE(zmq_setsockopt(s_pub, ZMQ_SNDHWM, &hwm, sizeof hwm) == 0);
    REQUIRE(zmq_bind(s_pub, S_PUB_EP) == 0);
    s_sub = xpl_sub_new(S_PUB_EP, FUZZ_TARGET == T_TOPIC_XPL ? S_QUERY_EP : NULL);
    REQUIRE(s_sub);
    REQUIRE(xpl_sub_subscribe(s_sub, s_target_kind(), NULL) == 0);
    REQUIRE(xpl_sub_subscribe(s_sub, s_sentinel_kind(), "sentinel") == 0);
    /* Both subscriptions have reached the XPUB before anything is sent. */
    for (int k = 0; k < 2; k++) {
        zmq_pollitem_t it = {s_pub, 0, ZMQ_POLLIN, 0};
        REQUIRE(zmq_poll(&it, 1, S_WAIT_MS) == 1);
        char sub[80];
        REQUIRE(zmq_recv(s_pub, sub, sizeof sub, 0) > 1 && sub[0] == 1);
    }
    return 0;
}

/* ---- reading a result whole ------------------------------------------ */

static volatile double s_sink;

static void
s_str(const char *s)
{
    REQUIRE(s);
    s_sink += (double)strlen(s);
}

static void
s_floats(const float *v, uint32_t n)
{
    REQUIRE(v || n == 0);
    for (uint32_t i = 0; i < n; i++)
        s_sink += v[i];
}

static void
s_doubles(const double *v, uint32_t n)
{
    REQUIRE(v || n == 0);
    for (uint32_t i = 0; i < n; i++)
        s_sink += v[i];
}

static void
s_strs(const char *const *v, uint32_t n)
{
    REQUIRE(v || n == 0);
    for (uint32_t i = 0; i < n; i++)
        s_str(v[i]);
}

static void
s_schema(const xpl_schema_t *s)
{
    s_str(s->model);
    s_str(s->dtype);
    s_strs(s->tokens, s->n);
    REQUIRE(s->cls >= -1 && (s->cls < 0 || (uint32_t)s->cls < s->n));
    REQUIRE(s->nfeat == s->n - (s->cls >= 0 ? 1u : 0u));
    s_strs(s->features, s->nfeat);
    xpl_schema_t *r = xpl_schema_ref(s);
    REQUIRE(r == s);
    xpl_schema_destroy(&r);
    REQUIRE(!r);
}

static void
s_explanation(const xpl_explanation_t *e, bool trade)
{
    s_str(e->model);
    if (e->id.is_str)
        s_str(e->id.s);
    REQUIRE(e->attr || e->nattr == 0);
    for (uint32_t i = 0; i < e->nattr; i++) {
        const xpl_attr_t *a = &e->attr[i];
        s_str(a->method);
        s_floats(a->values, a->count);
        if (e->features)
            REQUIRE(a->count == e->nfeat);
        const xpl_attr_t *found = xpl_explanation_attr(e, a->method);
        REQUIRE(found && strcmp(found->method, a->method) == 0);
    }
    if (e->features)
        s_strs(e->features, e->nfeat);
    if (e->schema) {
        REQUIRE(e->features == e->schema->features && e->nfeat == e->schema->nfeat);
        REQUIRE(e->schema->epoch == e->epoch && strcmp(e->schema->model, e->model) == 0);
        s_schema(e->schema);
    }
    if (!trade) {
        REQUIRE(e->nmatrices == 0 && !e->matrices);
        return;
    }
    REQUIRE(e->cls >= -1 && (e->cls < 0 || (uint32_t)e->cls < e->n));
    REQUIRE(e->matrices || e->nmatrices == 0);
    for (uint32_t i = 0; i < e->nmatrices; i++) {
        const xpl_matrix_t *m = &e->matrices[i];
        s_str(m->method);
        REQUIRE(m->n == e->n);
        REQUIRE((uint64_t)m->n * m->n <= UINT32_MAX);
        s_floats(m->values, m->n * m->n);
        const xpl_matrix_t *found = xpl_explanation_matrix(e, m->method);
        REQUIRE(found && strcmp(found->method, m->method) == 0);
    }
}

static void
s_model_infos(const xpl_model_info_t *m, uint32_t n)
{
    REQUIRE(m || n == 0);
    for (uint32_t i = 0; i < n; i++) {
        s_str(m[i].model);
        REQUIRE(m[i].cls >= -1);
        s_sink += (double)(m[i].received + m[i].trades + m[i].explained + m[i].rejected
                           + m[i].lost + m[i].restarts + m[i].last_seq + m[i].epoch)
                  + (double)m[i].last_ts + m[i].L + m[i].H + m[i].n;
    }
}

static void
s_counters(const xpl_counter_t *c, uint32_t n)
{
    REQUIRE(c || n == 0);
    for (uint32_t i = 0; i < n; i++) {
        s_str(c[i].name);
        s_sink += (double)c[i].value;
    }
}

static void
s_method_states(const xpl_method_state_t *m, uint32_t n, uint32_t nfeat)
{
    REQUIRE(m || n == 0);
    for (uint32_t i = 0; i < n; i++) {
        s_str(m[i].method);
        s_doubles(m[i].mean, nfeat);
        s_doubles(m[i].std, nfeat);
        s_doubles(m[i].decayed, nfeat);
        if (m[i].reference)
            s_doubles(m[i].reference, nfeat);
        s_sink += m[i].reference_spearman + (double)m[i].count;
    }
}

static void
s_global(const xpl_global_t *g)
{
    s_str(g->model);
    if (g->features)
        s_strs(g->features, g->nfeat);
    s_method_states(g->methods, g->nmethods, g->nfeat);
    for (uint32_t i = 0; i < g->nmethods; i++)
        REQUIRE(xpl_global_method(g, g->methods[i].method));
    REQUIRE(g->targets || g->ntargets == 0);
    for (uint32_t i = 0; i < g->ntargets; i++) {
        s_method_states(g->targets[i].methods, g->targets[i].nmethods, g->nfeat);
        const xpl_target_state_t *t = xpl_global_target(g, g->targets[i].target);
        REQUIRE(t && t->target == g->targets[i].target);
    }
    xpl_global_t *r = xpl_global_ref(g);
    REQUIRE(r == g);
    xpl_global_destroy(&r);
}

static void
s_window(const xpl_window_t *w)
{
    s_str(w->reference);
    s_sink += w->spearman + w->ndcg + w->js + (double)w->window + (double)w->ts;
}

static void
s_drift(const xpl_drift_t *d)
{
    s_str(d->model);
    s_str(d->method);
    s_window(&d->window);
}

static void
s_heads(const xpl_heads_t *h)
{
    s_str(h->model);
    REQUIRE((uint64_t)h->L * h->H <= UINT32_MAX);
    s_doubles(h->importance, h->L * h->H);
    s_doubles(h->confidence, h->L * h->H);
}

static void
s_drift_state(const xpl_drift_state_t *d)
{
    s_str(d->model);
    REQUIRE(d->methods || d->nmethods == 0);
    for (uint32_t i = 0; i < d->nmethods; i++) {
        const xpl_drift_method_t *m = &d->methods[i];
        s_str(m->method);
        s_str(m->reference);
        if (m->has_last)
            s_window(&m->last);
        REQUIRE(xpl_drift_state_method(d, m->method));
    }
    REQUIRE(d->alerts || d->nalerts == 0);
    for (uint32_t i = 0; i < d->nalerts; i++) {
        s_str(d->alerts[i].method);
        s_str(d->alerts[i].reference);
        s_sink += d->alerts[i].spearman + d->alerts[i].ndcg + d->alerts[i].js;
    }
}

/* ---- checks shared by every target ------------------------------------ */

/* Valid UTF-8 without NUL bytes (what the JSON renderer promises). */
static bool
s_utf8(const char *s)
{
    const uint8_t *p = (const uint8_t *)s;
    while (*p) {
        int len = *p < 0x80 ? 1 : (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3
                                : (*p & 0xf8) == 0xf0 ? 4 : 0;
        if (len == 0 || (len == 2 && *p < 0xc2))
            return false;
        for (int i = 1; i < len; i++)
            if ((p[i] & 0xc0) != 0x80)
                return false;
        p += len;
    }
    return true;
}

static void
s_json(const uint8_t *body, size_t len)
{
    xdoc_t d;
    bool parses = xdoc_parse(&d, body, len, "body") == 0;
    if (parses)
        xdoc_free(&d);
    char *j = xpl_json_from_msgpack(body, len);
    if (!j) {
        REQUIRE(!parses && xpl_errno() == XPL_EPROTO);
        return;
    }
    REQUIRE(parses && j[0] && s_utf8(j));
    free(j);
}

/* A failed call: the reply was malformed (XPL_EPROTO) or the daemon's
   error (a known code, or XPL_ESERVER for an unknown one); a reason is
   always given. Never a timeout: the reply did arrive. */
static void
s_failed(void)
{
    int e = xpl_errno();
    REQUIRE(e == XPL_EPROTO || e == XPL_ESERVER || e == XPL_EINTERNAL
            || (e >= XPL_EBAD_REQUEST && e <= XPL_EBAD_ARGUMENT));
    REQUIRE(xpl_strerror()[0] != '\0');
}

static void
s_stage(const uint8_t *data, size_t size)
{
    pthread_mutex_lock(&s_mu);
    s_reply = data;
    s_reply_len = size;
    pthread_mutex_unlock(&s_mu);
}

/* ---- topics ------------------------------------------------------------ */

static const char *
s_prefix(unsigned kind)
{
    return kind == XPL_KIND_XPL ? "xpl/" : kind == XPL_KIND_GLOB ? "glob/"
           : kind == XPL_KIND_DRIFT ? "drift/" : "heads/";
}

static void
s_publish(unsigned kind, const char *model, size_t mlen, const uint8_t *body, size_t blen)
{
    char topic[300];
    size_t plen = strlen(s_prefix(kind));
    memcpy(topic, s_prefix(kind), plen);
    memcpy(topic + plen, model, mlen);
    REQUIRE(zmq_send(s_pub, topic, plen + mlen, ZMQ_SNDMORE) == (int)(plen + mlen));
    REQUIRE(zmq_send(s_pub, body, blen, 0) == (int)blen);
}

static void
s_sentinel_event(xpl_event_t *ev)
{
    REQUIRE(ev && ev->kind == s_sentinel_kind() && strcmp(ev->model, "sentinel") == 0);
    xpl_event_destroy(&ev);
}

/* The next event (interrupted waits, see s_call, are waited again). */
static xpl_event_t *
s_recv(void)
{
    xpl_event_t *ev;
    do
        ev = xpl_sub_recv(s_sub, S_WAIT_MS);
    while (!ev && xpl_errno() == XPL_EINTR);
    return ev;
}

static void
s_topic(const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    size_t mlen = data[0] < size - 1 ? data[0] : size - 1;
    const char *model = (const char *)data + 1;
    const uint8_t *body = data + 1 + mlen;
    size_t blen = size - 1 - mlen;
    s_json(body, blen);
    s_stage(NULL, 0);

    uint64_t malformed = xpl_sub_malformed(s_sub);
    unsigned kind = s_target_kind();
    s_publish(kind, model, mlen, body, blen);
    s_publish(s_sentinel_kind(), "sentinel", 8, s_sentinel, s_sentinel_len);
    xpl_event_t *ev = s_recv();
    REQUIRE(ev);        /* at least the sentinel: anything else is a hang */
    if (ev->kind == s_sentinel_kind()) {
        /* The fuzzed message was refused: counted, with a reason. A topic
           without a model is no topic of this library: ignored. */
        REQUIRE(xpl_sub_malformed(s_sub) == malformed + (mlen > 0));
        REQUIRE(mlen == 0 || xpl_sub_last_malformed(s_sub)[0] != '\0');
        s_sentinel_event(ev);
        return;
    }
    REQUIRE(xpl_sub_malformed(s_sub) == malformed);
    REQUIRE(ev->kind == kind);
    REQUIRE(strlen(ev->model) == mlen && memcmp(ev->model, model, mlen) == 0);
    switch (kind) {
    case XPL_KIND_XPL:
        REQUIRE(ev->explanation && !ev->global && !ev->drift && !ev->heads);
        REQUIRE(strcmp(ev->explanation->model, ev->model) == 0);
        REQUIRE(ev->seq == ev->explanation->seq);
        s_explanation(ev->explanation, false);
        break;
    case XPL_KIND_GLOB:
        REQUIRE(ev->global && !ev->explanation && !ev->drift && !ev->heads);
        REQUIRE(strcmp(ev->global->model, ev->model) == 0 && ev->seq == ev->global->seq);
        s_global(ev->global);
        break;
    case XPL_KIND_DRIFT:
        REQUIRE(ev->drift && !ev->explanation && !ev->global && !ev->heads);
        REQUIRE(strcmp(ev->drift->model, ev->model) == 0 && ev->seq == ev->drift->seq);
        s_drift(ev->drift);
        break;
    default:
        REQUIRE(ev->heads && !ev->explanation && !ev->global && !ev->drift);
        REQUIRE(strcmp(ev->heads->model, ev->model) == 0 && ev->seq == ev->heads->seq);
        s_heads(ev->heads);
        break;
    }
    xpl_event_destroy(&ev);
    s_sentinel_event(s_recv());
}

/* ---- replies ----------------------------------------------------------- */

/* One call of the target's function: 0 when it succeeded (and its result
   was read whole), -1 with the library's error. */
static int
s_call_once(const uint8_t *data, size_t size)
{
    switch (FUZZ_TARGET) {
    case T_REPLY_PING: {
        char version[16];
        double up = -1;
        if (xpl_client_ping(s_client, version, sizeof version, &up))
            return -1;
        REQUIRE(memchr(version, '\0', sizeof version));
        s_sink += up;
        return 0;
    }
    case T_REPLY_MODELS: {
        xpl_models_t *m = xpl_client_models(s_client);
        if (!m)
            return -1;
        s_model_infos(m->models, m->count);
        for (uint32_t i = 0; i < m->count; i++)
            REQUIRE(xpl_models_find(m, m->models[i].model));
        xpl_models_destroy(&m);
        return 0;
    }
    case T_REPLY_SCHEMA: {
        xpl_schema_t *s = xpl_client_schema(s_client, "m1");
        if (!s)
            return -1;
        s_schema(s);
        xpl_schema_destroy(&s);
        return 0;
    }
    case T_REPLY_STATS: {
        xpl_stats_t *s = xpl_client_stats(s_client);
        if (!s)
            return -1;
        s_counters(s->counters, s->ncounters);
        s_counters(s->rejected_by_reason, s->nreasons);
        s_model_infos(s->models, s->nmodels);
        for (uint32_t i = 0; i < s->ncounters; i++) {
            uint64_t v;
            REQUIRE(xpl_stats_counter(s, s->counters[i].name, &v) == 0);
        }
        s_sink += s->uptime_s + s->latency_us.p50 + s->latency_us.p999 + s->latency_us.max;
        xpl_stats_destroy(&s);
        return 0;
    }
    case T_REPLY_TRADE: {
        xpl_explanation_t *e = xpl_client_trade(s_client, "m1", xpl_id_str("t-1"), true);
        if (!e)
            return -1;
        s_explanation(e, true);
        xpl_explanation_destroy(&e);
        return 0;
    }
    case T_REPLY_GLOBAL: {
        int64_t target = 1;
        xpl_global_t *g = xpl_client_global(s_client, "m1", "rollout", &target, NULL);
        if (!g)
            return -1;
        s_global(g);
        xpl_global_destroy(&g);
        return 0;
    }
    case T_REPLY_DRIFT: {
        xpl_drift_state_t *d = xpl_client_drift(s_client, "m1", NULL, NULL);
        if (!d)
            return -1;
        s_drift_state(d);
        xpl_drift_state_destroy(&d);
        return 0;
    }
    case T_REPLY_BASELINE: {
        return xpl_client_baseline(s_client, "m1", XPL_BASELINE_PIN, NULL) < 0 ? -1 : 0;
    }
    case T_REPLY_REFERENCE: {
        static const double values[] = {0.4, 0.3, 0.2, 0.1};
        double rho = 0;
        if (xpl_client_reference(s_client, "m1", "rollout", values, 4, &rho))
            return -1;
        s_sink += rho;
        return 0;
    }
    default: {
        static const uint8_t ping[] = {0x82, 0xa1, 'v', 0x01, 0xa2, 'o', 'p',
                                       0xa4, 'p', 'i', 'n', 'g'};
        void *reply;
        size_t len;
        if (xpl_client_request(s_client, ping, sizeof ping, &reply, &len))
            return -1;
        REQUIRE(len == size && memcmp(reply, data, size) == 0);
        char *j = xpl_json_from_msgpack(reply, len);
        REQUIRE(j);
        free(j);
        free(reply);
        return 0;
    }
    }
}

/* A signal (libFuzzer's timeout alarm) interrupts a wait with XPL_EINTR,
   as the library documents: the call is made again (the late reply of the
   interrupted one is dropped by the client). */
static void
s_call(const uint8_t *data, size_t size)
{
    s_json(data, size);
    s_stage(data, size);
    for (;;) {
        xpl_clear_error();
        if (s_call_once(data, size) == 0)
            return;
        if (xpl_errno() != XPL_EINTR)
            break;
    }
    s_failed();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (s_topic_target())
        s_topic(data, size);
    else
        s_call(data, size);
    return 0;
}
