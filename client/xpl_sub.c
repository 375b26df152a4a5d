/*  xpl_sub: SUB socket, topic filtering, decoding, schema cache.  */
#include "xpl_private.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* One subscription: kinds of one model (model[0] == 0: every model). */
typedef struct {
    unsigned kinds;
    char model[65];
} s_subscription_t;

/* Last seq seen per topic, for loss counting. */
typedef struct {
    unsigned kind;
    char model[65];
    uint64_t segment;           /* FNV-1a of a segment's label, 0: none */
    uint64_t last;
} s_topic_t;

/* Feature names per model: the schema of its latest epoch seen. */
typedef struct {
    char model[65];
    xpl_schema_t *schema;
    int64_t retry_at_ms;        /* no schema query before this time */
} s_schema_entry_t;

struct xpl_sub_t {
    void *sock;
    xpl_hs_t hs;                /* its CURVE handshakes */
    xpl_client_t *client;
    s_subscription_t *subs;
    size_t nsubs;
    s_topic_t *topics;
    size_t ntopics;
    s_schema_entry_t *schemas;
    size_t nschemas;
    uint64_t lost, malformed;
    char last_malformed[256];
};

static const struct {
    unsigned kind;
    const char *prefix;
} s_kinds[] = {
    {XPL_KIND_XPL, "xpl/"},
    {XPL_KIND_GLOB, "glob/"},
    {XPL_KIND_DRIFT, "drift/"},
    {XPL_KIND_HEADS, "heads/"},
};
#define S_NKINDS (sizeof s_kinds / sizeof s_kinds[0])

/* With `monitor` non-NULL, *monitor receives a PAIR socket connected to
   the SUB's monitor for the `events` (ZMQ_EVENT_*), set up before the SUB
   connects so that no event is missed; the caller closes it (after
   xpl_sub_stop_monitor). Otherwise, with CURVE, the subscriber watches
   its own handshakes for the hint of a timeout. */
static xpl_sub_t *
s_new(const char *sub_endpoint, const char *query_endpoint, const xpl_curve_t *curve,
      void **monitor, int events)
{
    if (!sub_endpoint || !*sub_endpoint)
        return xpl_fail_null(XPL_EINVAL, "no publish endpoint given");
    xpl_sub_t *self = calloc(1, sizeof *self);
    if (!self)
        return xpl_fail_null(XPL_ENOMEM, "out of memory");
    void *ctx = xpl_ctx_acquire();
    if (!ctx) {
        free(self);
        return NULL;
    }
    self->sock = xpl_socket(ctx, ZMQ_SUB);
    int zero = 0;
    if (!self->sock || zmq_setsockopt(self->sock, ZMQ_LINGER, &zero, sizeof zero)) {
        xpl_fail_zmq("subscriber socket");
        goto fail;
    }
    if (xpl_curve_apply(ctx, self->sock, curve, monitor ? NULL : &self->hs, "subscriber"))
        goto fail;
    if (monitor) {
        self->hs.curve = curve != NULL;
        char ep[64];
        xpl_inproc_endpoint(ep, sizeof ep, "sub-monitor");
        *monitor = NULL;
        if (xpl_socket_monitor(self->sock, ep, events)
            || !(*monitor = xpl_socket(ctx, ZMQ_PAIR)) || zmq_connect(*monitor, ep)) {
            xpl_fail_zmq("subscriber monitor");
            zmq_socket_monitor(self->sock, NULL, 0);
            if (*monitor)
                zmq_close(*monitor);
            *monitor = NULL;
            goto fail;
        }
    }
    if (zmq_connect(self->sock, sub_endpoint)) {
        xpl_fail(XPL_EINVAL, "cannot connect to publish endpoint '%s': %s", sub_endpoint,
                 zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (query_endpoint) {
        if (!(self->client = xpl_client_new_curve(query_endpoint, curve)))
            goto fail;
        xpl_client_set_timeout(self->client, 1000);
    }
    return self;
fail:
    if (monitor && *monitor) {
        zmq_socket_monitor(self->sock, NULL, 0);
        zmq_close(*monitor);
        *monitor = NULL;
    }
    if (self->sock) {
        xpl_hs_close(&self->hs, self->sock);
        zmq_close(self->sock);
    }
    xpl_ctx_release();
    free(self);
    return NULL;
}

xpl_sub_t *
xpl_sub_new(const char *sub_endpoint, const char *query_endpoint)
{
    return s_new(sub_endpoint, query_endpoint, NULL, NULL, 0);
}

xpl_sub_t *
xpl_sub_new_curve(const char *sub_endpoint, const char *query_endpoint, const xpl_curve_t *curve)
{
    return s_new(sub_endpoint, query_endpoint, curve, NULL, 0);
}

xpl_sub_t *
xpl_sub_new_monitored(const char *sub_endpoint, const xpl_curve_t *curve, void **monitor,
                      int events)
{
    return s_new(sub_endpoint, NULL, curve, monitor, events);
}

void
xpl_sub_stop_monitor(xpl_sub_t *self)
{
    if (self && self->sock)
        zmq_socket_monitor(self->sock, NULL, 0);
}

void
xpl_sub_destroy(xpl_sub_t **self_p)
{
    assert(self_p);
    xpl_sub_t *self = *self_p;
    if (!self)
        return;
    xpl_hs_close(&self->hs, self->sock);
    zmq_close(self->sock);
    xpl_client_destroy(&self->client);
    xpl_ctx_release();
    for (size_t i = 0; i < self->nschemas; i++)
        xpl_schema_destroy(&self->schemas[i].schema);
    free(self->schemas);
    free(self->subs);
    free(self->topics);
    free(self);
    *self_p = NULL;
}

int
xpl_sub_subscribe(xpl_sub_t *self, unsigned kinds, const char *model)
{
    assert(self);
    if (!(kinds & XPL_KIND_ALL) || (kinds & ~(unsigned)XPL_KIND_ALL))
        return xpl_fail(XPL_EINVAL, "subscribe: no or unknown kind (0x%x)", kinds);
    if (model && !xpl_model_name_ok(model))
        return xpl_fail(XPL_EINVAL, "subscribe: bad model name '%s'", model);
    s_subscription_t *grown = realloc(self->subs, (self->nsubs + 1) * sizeof *grown);
    if (!grown)
        return xpl_fail(XPL_ENOMEM, "out of memory");
    self->subs = grown;
    s_subscription_t *s = &self->subs[self->nsubs++];
    s->kinds = kinds;
    snprintf(s->model, sizeof s->model, "%s", model ? model : "");
    for (size_t k = 0; k < S_NKINDS; k++) {
        if (!(kinds & s_kinds[k].kind))
            continue;
        char topic[80];
        int len = snprintf(topic, sizeof topic, "%s%s", s_kinds[k].prefix, s->model);
        if (zmq_setsockopt(self->sock, ZMQ_SUBSCRIBE, topic, (size_t)len))
            return xpl_fail_zmq("subscribe");
    }
    return 0;
}

static bool
s_wanted(const xpl_sub_t *self, unsigned kind, const char *model)
{
    for (size_t i = 0; i < self->nsubs; i++)
        if ((self->subs[i].kinds & kind)
            && (!self->subs[i].model[0] || strcmp(self->subs[i].model, model) == 0))
            return true;
    return false;
}

static void
s_malformed(xpl_sub_t *self, const char *reason)
{
    self->malformed++;
    snprintf(self->last_malformed, sizeof self->last_malformed, "%s", reason);
}

/* Count a gap in the topic's seq. A seq at or below the last one means
   the daemon restarted: nothing is counted as lost. */
static void
s_track_seq(xpl_sub_t *self, unsigned kind, const char *model, uint64_t segment, uint64_t seq)
{
    for (size_t i = 0; i < self->ntopics; i++) {
        s_topic_t *t = &self->topics[i];
        if (t->kind == kind && t->segment == segment && strcmp(t->model, model) == 0) {
            if (seq > t->last + 1)
                self->lost += seq - t->last - 1;
            t->last = seq;
            return;
        }
    }
    s_topic_t *grown = realloc(self->topics, (self->ntopics + 1) * sizeof *grown);
    if (!grown)
        return;     /* loss counting is best effort */
    self->topics = grown;
    s_topic_t *t = &self->topics[self->ntopics++];
    t->kind = kind;
    t->segment = segment;
    snprintf(t->model, sizeof t->model, "%s", model);
    t->last = seq;
}

/* Attach feature names from the cache, asking the daemon when the cache
   has no schema of this epoch. */
static void
s_attach_schema(xpl_sub_t *self, xpl_explanation_t *e)
{
    if (!self->client)
        return;
    s_schema_entry_t *c = NULL;
    for (size_t i = 0; i < self->nschemas; i++)
        if (strcmp(self->schemas[i].model, e->model) == 0)
            c = &self->schemas[i];
    if (!c) {
        s_schema_entry_t *grown = realloc(self->schemas, (self->nschemas + 1) * sizeof *grown);
        if (!grown)
            return;
        self->schemas = grown;
        c = &self->schemas[self->nschemas++];
        memset(c, 0, sizeof *c);
        snprintf(c->model, sizeof c->model, "%s", e->model);
    }
    if ((!c->schema || c->schema->epoch < e->epoch) && xpl_now_ms() >= c->retry_at_ms) {
        /* Keep the caller's view of errors clean: a failed schema query
           only means no feature names for now. */
        int code = xpl_errno();
        char reason[256];
        snprintf(reason, sizeof reason, "%s", xpl_strerror());
        xpl_schema_t *s = xpl_client_schema(self->client, e->model);
        if (s) {
            xpl_schema_destroy(&c->schema);
            c->schema = s;
            c->retry_at_ms = s->epoch < e->epoch ? xpl_now_ms() + 100 : 0;
        } else
            c->retry_at_ms = xpl_now_ms() + 1000;
        xpl_fail(code, "%s", reason);
    }
    xpl_explanation_attach(e, c->schema);
}

static void
s_event_fini(void *obj)
{
    xpl_event_t *ev = obj;
    xpl_explanation_destroy(&ev->explanation);
    xpl_global_destroy(&ev->global);
    xpl_drift_destroy(&ev->drift);
    xpl_heads_destroy(&ev->heads);
}

void
xpl_event_destroy(xpl_event_t **self_p)
{
    xobj_unref(self_p);
}

/* Decode one message; NULL when it is not for us or malformed (counted). */
static xpl_event_t *
s_decode(xpl_sub_t *self, const zmq_msg_t *topic, const zmq_msg_t *body)
{
    const char *t = zmq_msg_data((zmq_msg_t *)topic);
    size_t tlen = zmq_msg_size((zmq_msg_t *)topic);
    size_t k;
    for (k = 0; k < S_NKINDS; k++)
        if (tlen > strlen(s_kinds[k].prefix)
            && memcmp(t, s_kinds[k].prefix, strlen(s_kinds[k].prefix)) == 0)
            break;
    if (k == S_NKINDS)
        return NULL;        /* a topic this library does not know */
    size_t plen = strlen(s_kinds[k].prefix);
    /* drift/<model>/<segment>, glob/<model>/<segment>: a segment's
       window or state; the model is what comes before the '/' (model
       names have none). */
    uint64_t segment = 0;
    if (s_kinds[k].kind == XPL_KIND_DRIFT || s_kinds[k].kind == XPL_KIND_GLOB) {
        const char *slash = memchr(t + plen, '/', tlen - plen);
        if (slash) {
            /* Each segment's topic numbers its messages on its own. */
            segment = 0xcbf29ce484222325ull;
            for (const char *p = slash; p < t + tlen; p++)
                segment = (segment ^ (unsigned char)*p) * 0x100000001b3ull;
            tlen = (size_t)(slash - t);
        }
    }
    char model[65];
    if (tlen - plen >= sizeof model) {
        s_malformed(self, "topic with a model name over 64 bytes");
        return NULL;
    }
    memcpy(model, t + plen, tlen - plen);
    model[tlen - plen] = '\0';
    /* A NUL or a byte no model name has: "xpl/m1\0x" must not pass for m1. */
    if (!xpl_model_name_ok(model) || strlen(model) != tlen - plen) {
        s_malformed(self, "topic with an invalid model name");
        return NULL;
    }
    if (!s_wanted(self, s_kinds[k].kind, model))
        return NULL;

    char what[96];
    snprintf(what, sizeof what, "%.*s", (int)tlen, t);
    xdoc_t doc;
    if (xdoc_parse(&doc, zmq_msg_data((zmq_msg_t *)body), zmq_msg_size((zmq_msg_t *)body), what)) {
        s_malformed(self, xpl_strerror());
        return NULL;
    }
    xpl_event_t *ev = xobj_new(sizeof *ev);
    if (!ev) {
        xdoc_free(&doc);
        return NULL;
    }
    xobj_set_fini(ev, s_event_fini);
    ev->kind = s_kinds[k].kind;
    ev->model = xobj_strndup(ev, model, strlen(model));
    uint64_t v;
    if (!xn_is(doc.nodes, MPR_MAP) || xn_uint(xn_get(doc.nodes, "v"), &v) || v != 1) {
        s_malformed(self, "body is not a map with \"v\": 1");
        goto fail;
    }
    const char *body_model = NULL;
    switch (ev->kind) {
    case XPL_KIND_XPL:
        if ((ev->explanation = xpl_decode_explanation(doc.nodes, false, what))) {
            ev->seq = ev->explanation->seq;
            body_model = ev->explanation->model;
        }
        break;
    case XPL_KIND_GLOB:
        if ((ev->global = xpl_decode_global(doc.nodes, what))) {
            ev->seq = ev->global->seq;
            body_model = ev->global->model;
        }
        break;
    case XPL_KIND_DRIFT:
        if ((ev->drift = xpl_decode_drift(doc.nodes, what))) {
            ev->seq = ev->drift->seq;
            body_model = ev->drift->model;
        }
        break;
    case XPL_KIND_HEADS:
        if ((ev->heads = xpl_decode_heads(doc.nodes, what))) {
            ev->seq = ev->heads->seq;
            body_model = ev->heads->model;
        }
        break;
    case XPL_KIND_ALL:
        break;          /* not a kind of its own: s_kinds has none */
    }
    if (!body_model) {
        s_malformed(self, xpl_strerror());
        goto fail;
    }
    if (strcmp(body_model, model)) {
        s_malformed(self, "body's model differs from the topic's");
        goto fail;
    }
    if (ev->explanation)
        s_attach_schema(self, ev->explanation);
    xdoc_free(&doc);
    s_track_seq(self, ev->kind, model, segment, ev->seq);
    return ev;
fail:
    xdoc_free(&doc);
    xpl_event_destroy(&ev);
    return NULL;
}

xpl_event_t *
xpl_sub_recv(xpl_sub_t *self, int timeout_ms)
{
    assert(self);
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : xpl_now_ms() + timeout_ms;
    for (;;) {
        long left = deadline == INT64_MAX ? -1 : (long)(deadline - xpl_now_ms());
        if (left < 0 && deadline != INT64_MAX)
            left = 0;
        zmq_pollitem_t it = {self->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, left);
        if (rc < 0) {
            xpl_fail_zmq("receive");
            return NULL;
        }
        if (rc == 0)
            return xpl_fail_null(XPL_ETIMEOUT, "no message within %d ms%s", timeout_ms,
                                 xpl_hs_hint(&self->hs));
        zmq_msg_t parts[2];
        int n = 0;
        bool more = true;
        while (more) {
            zmq_msg_t scratch, *m = n < 2 ? &parts[n] : &scratch;
            zmq_msg_init(m);
            if (zmq_msg_recv(m, self->sock, 0) < 0) {
                zmq_msg_close(m);
                for (int i = 0; i < n && i < 2; i++)
                    zmq_msg_close(&parts[i]);
                xpl_fail_zmq("receive");
                return NULL;
            }
            more = zmq_msg_more(m);
            if (m == &scratch)
                zmq_msg_close(m);
            n++;
        }
        xpl_event_t *ev = NULL;
        if (n == 2)
            ev = s_decode(self, &parts[0], &parts[1]);
        else
            s_malformed(self, "message without exactly two frames");
        for (int i = 0; i < n && i < 2; i++)
            zmq_msg_close(&parts[i]);
        if (ev)
            return ev;
    }
}

uint64_t
xpl_sub_lost(const xpl_sub_t *self)
{
    assert(self);
    return self->lost;
}

uint64_t
xpl_sub_malformed(const xpl_sub_t *self)
{
    assert(self);
    return self->malformed;
}

const char *
xpl_sub_last_malformed(const xpl_sub_t *self)
{
    assert(self);
    return self->last_malformed;
}

xpl_client_t *
xpl_sub_client(xpl_sub_t *self)
{
    assert(self);
    return self->client;
}
