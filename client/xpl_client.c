/*  xpl_client: request/reply over a DEALER socket.

    Each request goes out as [request id][empty][body]; the daemon's
    ROUTER answers with the envelope it received, so the reply comes back
    as [request id][empty][body]. A reply whose id is not the one being
    waited for belongs to a call that timed out and is dropped. This keeps
    one socket usable across timeouts (a REQ socket would be stuck in its
    send/receive lockstep and need reopening, the zguide's Lazy Pirate).  */
#include "xpl_private.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

struct xpl_client_t {
    void *ctx;
    void *sock;
    char *endpoint;
    int timeout_ms;
    uint32_t next_id;
    double rtt_us;
    xpl_curve_t *curve;         /* NULL: a plain socket */
    xpl_hs_t hs;                /* its handshakes, with CURVE */
};

/* Close the socket (and its handshake monitor). */
static void
s_close(xpl_client_t *self)
{
    if (!self->sock)
        return;
    xpl_hs_close(&self->hs, self->sock);
    zmq_close(self->sock);
    self->sock = NULL;
}

/* Open the DEALER socket and connect it. 0, or -1 with the error set. */
static int
s_open(xpl_client_t *self)
{
    self->sock = xpl_socket(self->ctx, ZMQ_DEALER);
    int zero = 0;
    if (!self->sock || zmq_setsockopt(self->sock, ZMQ_LINGER, &zero, sizeof zero)) {
        xpl_fail_zmq("query socket");
        goto fail;
    }
    if (xpl_curve_apply(self->ctx, self->sock, self->curve, &self->hs, "query"))
        goto fail;
    if (zmq_connect(self->sock, self->endpoint)) {
        xpl_fail(XPL_EINVAL, "cannot connect to query endpoint '%s': %s", self->endpoint,
                 zmq_strerror(zmq_errno()));
        goto fail;
    }
    return 0;
fail:
    s_close(self);
    return -1;
}

xpl_client_t *
xpl_client_new_curve(const char *endpoint, const xpl_curve_t *curve)
{
    if (!endpoint || !*endpoint)
        return xpl_fail_null(XPL_EINVAL, "no query endpoint given");
    xpl_client_t *self = calloc(1, sizeof *self);
    if (!self)
        return xpl_fail_null(XPL_ENOMEM, "out of memory");
    self->timeout_ms = XPL_CLIENT_TIMEOUT_MS;
    /* Ids start at a random-ish value so that a reply meant for an
       earlier client on a reused connection cannot match. */
    self->next_id = (uint32_t)time(NULL) ^ (uint32_t)(uintptr_t)self;
    self->endpoint = strdup(endpoint);
    if (!self->endpoint || (curve && !(self->curve = xpl_curve_dup(curve)))) {
        xpl_fail(XPL_ENOMEM, "out of memory");
        goto fail;
    }
    if (!(self->ctx = xpl_ctx_acquire()))
        goto fail;
    if (s_open(self)) {
        xpl_ctx_release();
        goto fail;
    }
    return self;
fail:
    xpl_curve_destroy(&self->curve);
    free(self->endpoint);
    free(self);
    return NULL;
}

xpl_client_t *
xpl_client_new(const char *endpoint)
{
    return xpl_client_new_curve(endpoint, NULL);
}

void
xpl_client_destroy(xpl_client_t **self_p)
{
    assert(self_p);
    xpl_client_t *self = *self_p;
    if (!self)
        return;
    s_close(self);
    xpl_ctx_release();
    xpl_curve_destroy(&self->curve);
    free(self->endpoint);
    free(self);
    *self_p = NULL;
}

void
xpl_client_set_timeout(xpl_client_t *self, int timeout_ms)
{
    assert(self);
    self->timeout_ms = timeout_ms > 0 ? timeout_ms : -1;
}

int
xpl_client_timeout(const xpl_client_t *self)
{
    assert(self);
    return self->timeout_ms;
}

const char *
xpl_client_endpoint(const xpl_client_t *self)
{
    assert(self);
    return self->endpoint;
}

double
xpl_client_rtt_us(const xpl_client_t *self)
{
    assert(self);
    return self->rtt_us;
}

static double
s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* Receive the rest of a multipart message and close it; returns how many
   frames there were, `first` included. */
static int
s_drain(void *sock)
{
    int frames = 1, more = 0;
    size_t sz = sizeof more;
    zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz);
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        frames++;
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    return frames;
}

/* Send `req` and wait for its reply body in *body (caller closes it). */
static int
s_roundtrip(xpl_client_t *self, const char *op, const void *req, size_t size, zmq_msg_t *body)
{
    /* The daemon refused our key: libzmq dropped the connection for good,
       so start a new one (the key may have been admitted since). */
    if (self->curve && xpl_hs_refused(&self->hs)) {
        s_close(self);
        if (s_open(self))
            return -1;
    }
    uint32_t id = self->next_id++;
    double t0 = s_now_us();
    if (zmq_send(self->sock, &id, sizeof id, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0
        || zmq_send(self->sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0
        || zmq_send(self->sock, req, size, ZMQ_DONTWAIT) < 0) {
        if (zmq_errno() == EAGAIN)
            return xpl_fail(XPL_ETIMEOUT,
                            "%s: cannot send to %s (queue full: is xplaind running?)%s", op,
                            self->endpoint, xpl_hs_hint(&self->hs));
        return xpl_fail_zmq(op);
    }
    int64_t deadline = self->timeout_ms < 0 ? INT64_MAX : xpl_now_ms() + self->timeout_ms;
    for (;;) {
        int64_t left = deadline == INT64_MAX ? -1 : deadline - xpl_now_ms();
        if (deadline != INT64_MAX && left <= 0)
            return xpl_fail(XPL_ETIMEOUT,
                            "%s: no reply from %s within %d ms (is xplaind running?)%s", op,
                            self->endpoint, self->timeout_ms, xpl_hs_hint(&self->hs));
        zmq_pollitem_t it = {self->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, (long)left);
        if (rc < 0)
            return xpl_fail_zmq(op);
        if (rc == 0)
            continue;
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, self->sock, 0) < 0) {
            zmq_msg_close(&f);
            return xpl_fail_zmq(op);
        }
        bool mine = zmq_msg_size(&f) == sizeof id && memcmp(zmq_msg_data(&f), &id, sizeof id) == 0;
        bool more = zmq_msg_more(&f);
        zmq_msg_close(&f);
        if (!mine || !more) {
            if (more)
                s_drain(self->sock);
            continue;   /* a late reply to an earlier request */
        }
        zmq_msg_t delim;
        zmq_msg_init(&delim);
        int drc = zmq_msg_recv(&delim, self->sock, 0);
        bool dmore = drc >= 0 && zmq_msg_more(&delim);
        zmq_msg_close(&delim);
        if (drc != 0 || !dmore) {
            if (dmore)
                s_drain(self->sock);
            return xpl_fail(XPL_EPROTO, "%s: reply envelope without an empty delimiter", op);
        }
        zmq_msg_init(body);
        if (zmq_msg_recv(body, self->sock, 0) < 0) {
            zmq_msg_close(body);
            return xpl_fail_zmq(op);
        }
        if (zmq_msg_more(body)) {
            s_drain(self->sock);
            zmq_msg_close(body);
            return xpl_fail(XPL_EPROTO, "%s: reply has more than one body frame", op);
        }
        self->rtt_us = s_now_us() - t0;
        return 0;
    }
}

/* Round trip plus envelope check; on success *doc is parsed over *body
   (both to be freed by the caller). */
static int
s_call(xpl_client_t *self, const char *op, const msgpack_sbuffer *req, zmq_msg_t *body,
       xdoc_t *doc)
{
    char what[80];
    snprintf(what, sizeof what, "reply to '%s'", op);
    if (s_roundtrip(self, op, req->data, req->size, body))
        return -1;
    if (xdoc_parse(doc, zmq_msg_data(body), zmq_msg_size(body), what)
        || xpl_reply_check(doc, op)) {
        xdoc_free(doc);
        zmq_msg_close(body);
        return -1;
    }
    return 0;
}

static void
s_done(zmq_msg_t *body, xdoc_t *doc, msgpack_sbuffer *req)
{
    xdoc_free(doc);
    zmq_msg_close(body);
    msgpack_sbuffer_destroy(req);
}

/* Start a request map of `nargs` arguments after v and op. */
static void
s_begin(msgpack_sbuffer *sb, msgpack_packer *pk, const char *op, uint32_t nargs)
{
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(pk, 2 + nargs);
    xpk_key(pk, "v");
    msgpack_pack_int(pk, XPL_WIRE_VERSION);
    xpk_key(pk, "op");
    xpk_str(pk, op);
}

int
xpl_client_request(xpl_client_t *self, const void *request, size_t size, void **reply,
                   size_t *reply_size)
{
    assert(self && reply && reply_size);
    *reply = NULL;
    *reply_size = 0;
    if (!request || size == 0)
        return xpl_fail(XPL_EINVAL, "empty request");
    zmq_msg_t body;
    xdoc_t doc;
    /* The op, for messages; the daemon checks the request itself. */
    char op[64] = "request";
    if (xdoc_parse(&doc, request, size, "request") == 0) {
        const xnode_t *o = xn_get(doc.nodes, "op");
        if (xn_is(o, MPR_STR) && o->o.v.raw.len < sizeof op) {
            memcpy(op, o->o.v.raw.ptr, o->o.v.raw.len);
            op[o->o.v.raw.len] = '\0';
        }
        xdoc_free(&doc);
    }
    if (s_roundtrip(self, op, request, size, &body))
        return -1;
    char what[96];
    snprintf(what, sizeof what, "reply to '%s'", op);
    if (xdoc_parse(&doc, zmq_msg_data(&body), zmq_msg_size(&body), what)
        || xpl_reply_check(&doc, op)) {
        xdoc_free(&doc);
        zmq_msg_close(&body);
        return -1;
    }
    xdoc_free(&doc);
    *reply_size = zmq_msg_size(&body);
    *reply = malloc(*reply_size);
    if (!*reply) {
        zmq_msg_close(&body);
        return xpl_fail(XPL_ENOMEM, "out of memory");
    }
    memcpy(*reply, zmq_msg_data(&body), *reply_size);
    zmq_msg_close(&body);
    return 0;
}

int
xpl_client_ping(xpl_client_t *self, char *version, size_t version_size, double *uptime_s)
{
    assert(self);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    zmq_msg_t body;
    xdoc_t doc;
    s_begin(&sb, &pk, "ping", 0);
    if (s_call(self, "ping", &sb, &body, &doc)) {
        msgpack_sbuffer_destroy(&sb);
        return -1;
    }
    const xnode_t *v = xn_get(doc.nodes, "version");
    int rc = 0;
    if (!xn_is(v, MPR_STR))
        rc = xpl_fail(XPL_EPROTO, "reply to 'ping': key 'version' missing or not a string");
    else if (version && version_size) {
        size_t n = v->o.v.raw.len < version_size - 1 ? v->o.v.raw.len : version_size - 1;
        memcpy(version, v->o.v.raw.ptr, n);
        version[n] = '\0';
    }
    if (uptime_s && xn_num(xn_get(doc.nodes, "uptime_s"), uptime_s))
        *uptime_s = 0;
    s_done(&body, &doc, &sb);
    return rc;
}

xpl_models_t *
xpl_client_models(xpl_client_t *self)
{
    assert(self);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    zmq_msg_t body;
    xdoc_t doc;
    s_begin(&sb, &pk, "models", 0);
    if (s_call(self, "models", &sb, &body, &doc)) {
        msgpack_sbuffer_destroy(&sb);
        return NULL;
    }
    xpl_models_t *m = xpl_decode_models(doc.nodes, "reply to 'models'");
    s_done(&body, &doc, &sb);
    return m;
}

xpl_schema_t *
xpl_client_schema(xpl_client_t *self, const char *model)
{
    assert(self);
    if (!model)
        return xpl_fail_null(XPL_EINVAL, "schema: no model given");
    msgpack_sbuffer sb;
    msgpack_packer pk;
    zmq_msg_t body;
    xdoc_t doc;
    s_begin(&sb, &pk, "schema", 1);
    xpk_key(&pk, "model");
    xpk_str(&pk, model);
    if (s_call(self, "schema", &sb, &body, &doc)) {
        msgpack_sbuffer_destroy(&sb);
        return NULL;
    }
    xpl_schema_t *s = xpl_decode_schema(doc.nodes, "reply to 'schema'");
    s_done(&body, &doc, &sb);
    return s;
}

xpl_stats_t *
xpl_client_stats(xpl_client_t *self)
{
    assert(self);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    zmq_msg_t body;
    xdoc_t doc;
    s_begin(&sb, &pk, "stats", 0);
    if (s_call(self, "stats", &sb, &body, &doc)) {
        msgpack_sbuffer_destroy(&sb);
        return NULL;
    }
    xpl_stats_t *s = xpl_decode_stats(doc.nodes, "reply to 'stats'");
    s_done(&body, &doc, &sb);
    return s;
}

xpl_explanation_t *
xpl_client_trade(xpl_client_t *self, const char *model, xpl_id_t id, bool flow)
{
    assert(self);
    if (!model || (id.is_str && !id.s))
        return xpl_fail_null(XPL_EINVAL, "trade: no model or id given");
    msgpack_sbuffer sb;
    msgpack_packer pk;
    zmq_msg_t body;
    xdoc_t doc;
    s_begin(&sb, &pk, "trade", flow ? 3 : 2);
    xpk_key(&pk, "model");
    xpk_str(&pk, model);
    xpk_key(&pk, "id");
    xpk_id(&pk, &id);
    if (flow) {
        xpk_key(&pk, "flow");
        msgpack_pack_true(&pk);
    }
    if (s_call(self, "trade", &sb, &body, &doc)) {
        msgpack_sbuffer_destroy(&sb);
        return NULL;
    }
    xpl_explanation_t *e = xpl_decode_explanation(doc.nodes, true, "reply to 'trade'");
    s_done(&body, &doc, &sb);
    return e;
}

/* Optional arguments shared by global and drift. */
static void
s_opt_args(msgpack_packer *pk, const char *method, const int64_t *target, const uint64_t *epoch)
{
    if (method) {
        xpk_key(pk, "method");
        xpk_str(pk, method);
    }
    if (target) {
        xpk_key(pk, "target");
        msgpack_pack_int64(pk, *target);
    }
    if (epoch) {
        xpk_key(pk, "epoch");
        msgpack_pack_uint64(pk, *epoch);
    }
}

static xpl_global_t *
s_global(xpl_client_t *self, const char *model, const char *method, const int64_t *target,
         const uint64_t *epoch, const char *segment)
{
    assert(self);
    if (!model)
        return xpl_fail_null(XPL_EINVAL, "global: no model given");
    msgpack_sbuffer sb;
    msgpack_packer pk;
    zmq_msg_t body;
    xdoc_t doc;
    s_begin(&sb, &pk, "global", 1 + !!method + !!target + !!epoch + !!segment);
    xpk_key(&pk, "model");
    xpk_str(&pk, model);
    s_opt_args(&pk, method, target, epoch);
    if (segment) {
        xpk_key(&pk, "segment");
        xpk_str(&pk, segment);
    }
    if (s_call(self, "global", &sb, &body, &doc)) {
        msgpack_sbuffer_destroy(&sb);
        return NULL;
    }
    xpl_global_t *g = xpl_decode_global(doc.nodes, "reply to 'global'");
    s_done(&body, &doc, &sb);
    return g;
}

xpl_global_t *
xpl_client_global(xpl_client_t *self, const char *model, const char *method,
                  const int64_t *target, const uint64_t *epoch)
{
    return s_global(self, model, method, target, epoch, NULL);
}

xpl_global_t *
xpl_client_global_segment(xpl_client_t *self, const char *model, const char *method,
                          const char *segment)
{
    return s_global(self, model, method, NULL, NULL, segment);
}

static xpl_drift_state_t *
s_drift(xpl_client_t *self, const char *model, const char *method, const uint64_t *epoch,
        const char *segment)
{
    assert(self);
    if (!model)
        return xpl_fail_null(XPL_EINVAL, "drift: no model given");
    msgpack_sbuffer sb;
    msgpack_packer pk;
    zmq_msg_t body;
    xdoc_t doc;
    s_begin(&sb, &pk, "drift", 1 + !!method + !!epoch + !!segment);
    xpk_key(&pk, "model");
    xpk_str(&pk, model);
    s_opt_args(&pk, method, NULL, epoch);
    if (segment) {
        xpk_key(&pk, "segment");
        xpk_str(&pk, segment);
    }
    if (s_call(self, "drift", &sb, &body, &doc)) {
        msgpack_sbuffer_destroy(&sb);
        return NULL;
    }
    xpl_drift_state_t *d = xpl_decode_drift_state(doc.nodes, "reply to 'drift'");
    s_done(&body, &doc, &sb);
    return d;
}

xpl_drift_state_t *
xpl_client_drift(xpl_client_t *self, const char *model, const char *method,
                 const uint64_t *epoch)
{
    return s_drift(self, model, method, epoch, NULL);
}

xpl_drift_state_t *
xpl_client_drift_segment(xpl_client_t *self, const char *model, const char *method,
                         const char *segment)
{
    return s_drift(self, model, method, NULL, segment);
}

int
xpl_client_baseline(xpl_client_t *self, const char *model, xpl_baseline_t action,
                    const char *method)
{
    assert(self);
    if (!model || (action != XPL_BASELINE_PIN && action != XPL_BASELINE_RESET))
        return xpl_fail(XPL_EINVAL, "baseline: no model or unknown action");
    msgpack_sbuffer sb;
    msgpack_packer pk;
    zmq_msg_t body;
    xdoc_t doc;
    s_begin(&sb, &pk, "baseline", 2 + !!method);
    xpk_key(&pk, "model");
    xpk_str(&pk, model);
    xpk_key(&pk, "action");
    xpk_str(&pk, action == XPL_BASELINE_PIN ? "pin" : "reset");
    s_opt_args(&pk, method, NULL, NULL);
    if (s_call(self, "baseline", &sb, &body, &doc)) {
        msgpack_sbuffer_destroy(&sb);
        return -1;
    }
    const xnode_t *m = xn_get(doc.nodes, "methods");
    int rc = xn_is(m, MPR_ARRAY)
                 ? (int)xn_count(m)
                 : xpl_fail(XPL_EPROTO, "reply to 'baseline': key 'methods' missing or not an array");
    s_done(&body, &doc, &sb);
    return rc;
}

int
xpl_client_reference(xpl_client_t *self, const char *model, const char *method,
                     const double *values, uint32_t count, double *spearman)
{
    assert(self);
    if (!model || !method || (!values && count))
        return xpl_fail(XPL_EINVAL, "reference: no model, method or values given");
    msgpack_sbuffer sb;
    msgpack_packer pk;
    zmq_msg_t body;
    xdoc_t doc;
    s_begin(&sb, &pk, "reference", 3);
    xpk_key(&pk, "model");
    xpk_str(&pk, model);
    xpk_key(&pk, "method");
    xpk_str(&pk, method);
    xpk_key(&pk, "values");
    msgpack_pack_array(&pk, count);
    for (uint32_t i = 0; i < count; i++)
        msgpack_pack_double(&pk, values[i]);
    if (s_call(self, "reference", &sb, &body, &doc)) {
        msgpack_sbuffer_destroy(&sb);
        return -1;
    }
    const xnode_t *r = xn_get(doc.nodes, "spearman");
    double rho = NAN;
    int rc = 0;
    if (r && !xn_is(r, MPR_NIL) && xn_num(r, &rho))
        rc = xpl_fail(XPL_EPROTO, "reply to 'reference': 'spearman' is not a number or nil");
    if (spearman)
        *spearman = rho;
    s_done(&body, &doc, &sb);
    return rc;
}
