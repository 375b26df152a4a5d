/*  libxplain against proto/examples/: the client library's decoders and
    encoders are tested against the same example messages as the daemon.

    No daemon runs. A fake PUB (an XPUB, so the test knows when the
    subscriber's subscriptions have arrived) publishes every xpl/, glob/,
    drift/ and heads/ example to an xpl_sub_t, and the decoded event must
    say what the example's .json says. A fake ROUTER answers each query
    call of xpl_client_t with the reply example of the request example
    being replayed; the decoded result (or the error, for the error
    replies) must match the reply's .json, and the request the library
    sent must match the request example. The subscriber's own schema
    queries are answered with reply/schema for m1 (so explanations of m1
    get their feature names) and reply/error-unknown_model otherwise.
    Last, xpl_pub_t encodes the ingest examples' data, and a plain SUB
    checks that what it sends is the ingest example.

    Everything goes through the public API only (xplain/xplain.h).  */
#include <xplain/xplain.h>

#include "mpr.h"

#include "examples.h"

#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#ifdef XPL_EXAMPLES_DIR
#define EXAMPLES XPL_EXAMPLES_DIR
#else
#define EXAMPLES XPL_SOURCE_DIR "/proto/examples"
#endif

static ex_t *
load(const char *name)
{
    char kind[32], base[96];
    cr_assert_eq(sscanf(name, "%31[^/]/%95s", kind, base), 2, "bad example name %s", name);
    ex_t *e = ex_load(EXAMPLES, kind, base);
    cr_assert_not_null(e, "cannot load example %s from %s", name, EXAMPLES);
    cr_assert_not_null(e->body, "%s: no body", name);
    return e;
}

/* ---- msgpack against a rendering ------------------------------------- */

/* Does the msgpack object at *r equal the rendering j? Integers of any
   width, floats as float64 or float32 (the rendering of a float32 reads
   back to the same float32), maps in any key order. Keys of the top
   level map named in `skip` are not compared (absent or present). */
static bool
mp_eq(mpr_t *r, const jv_t *j, const char *const *skip, char *why, size_t wlen, const char *path)
{
    mpr_obj_t o;
    if (mpr_next(r, &o) != MPR_OK)
        return snprintf(why, wlen, "%s: not msgpack", path), false;
    switch (o.type) {
    case MPR_NIL:
        if (j && j->t == JV_NULL)
            return true;
        break;
    case MPR_BOOL:
        if (j && j->t == JV_BOOL && j->b == o.v.b)
            return true;
        break;
    case MPR_UINT:
        if (j && j->t == JV_NUM && j->is_int && (uint64_t)j->i == o.v.u)
            return true;
        break;
    case MPR_INT:
        if (j && j->t == JV_NUM && j->is_int && j->i == o.v.i)
            return true;
        break;
    case MPR_FLOAT: {
        double d = jv_num(j);
        if (d == o.v.f || (float)d == (float)o.v.f || (isnan(d) && isnan(o.v.f)))
            return true;
        break;
    }
    case MPR_STR:
        if (j && j->t == JV_STR && strlen(j->s) == o.v.raw.len &&
            memcmp(j->s, o.v.raw.ptr, o.v.raw.len) == 0)
            return true;
        break;
    case MPR_BIN: {
        size_t len;
        uint8_t *b = jv_bin(j, &len);
        bool eq = b && len == o.v.raw.len && memcmp(b, o.v.raw.ptr, len) == 0;
        free(b);
        if (eq)
            return true;
        break;
    }
    case MPR_ARRAY:
        if (j && j->t == JV_ARR && j->n == o.v.count) {
            for (uint32_t k = 0; k < o.v.count; k++) {
                char p[256];
                snprintf(p, sizeof p, "%s[%u]", path, k);
                if (!mp_eq(r, j->items[k], NULL, why, wlen, p))
                    return false;
            }
            return true;
        }
        break;
    case MPR_MAP: {
        if (!j || j->t != JV_OBJ)
            break;
        size_t matched = 0, skipped_json = 0;
        for (size_t k = 0; k < j->n; k++)
            for (int s = 0; skip && skip[s]; s++)
                skipped_json += strcmp(j->keys[k], skip[s]) == 0;
        for (uint32_t k = 0; k < o.v.count; k++) {
            mpr_obj_t key;
            if (mpr_next(r, &key) != MPR_OK || key.type != MPR_STR)
                return snprintf(why, wlen, "%s: a key is not a str", path), false;
            char name[128];
            snprintf(name, sizeof name, "%.*s", (int)key.v.raw.len, (const char *)key.v.raw.ptr);
            bool skip_it = false;
            for (int s = 0; skip && skip[s]; s++)
                skip_it |= strcmp(name, skip[s]) == 0;
            if (skip_it) {
                mpr_skip(r, 32);
                continue;
            }
            const jv_t *v = jv_get(j, name);
            if (!v)
                return snprintf(why, wlen, "%s: key '%s' is not in the example", path, name), false;
            char p[256];
            snprintf(p, sizeof p, "%s.%s", path, name);
            if (!mp_eq(r, v, NULL, why, wlen, p))
                return false;
            matched++;
        }
        if (matched + skipped_json == j->n)
            return true;
        snprintf(why, wlen, "%s: %zu of the example's %zu keys sent", path, matched + skipped_json,
                 j->n);
        return false;
    }
    default:
        break;
    }
    snprintf(why, wlen, "%s: differs (msgpack type %s)", path, mpr_type_name(o.type));
    return false;
}

/* Are the msgpack objects at *a and *b equal: integers of any width,
   float32 and float64 alike when equal as numbers, maps in any key order?
   Keys of the top level map named in `skip` are not compared. */
static bool
mp_mp_eq(mpr_t *a, mpr_t *b, const char *const *skip)
{
    mpr_obj_t x, y;
    if (mpr_next(a, &x) != MPR_OK || mpr_next(b, &y) != MPR_OK || x.type != y.type)
        return false;
    switch (x.type) {
    case MPR_NIL: return true;
    case MPR_BOOL: return x.v.b == y.v.b;
    case MPR_UINT: return x.v.u == y.v.u;
    case MPR_INT: return x.v.i == y.v.i;
    case MPR_FLOAT: return x.v.f == y.v.f || (isnan(x.v.f) && isnan(y.v.f));
    case MPR_STR:
    case MPR_BIN:
    case MPR_EXT:
        return x.v.raw.len == y.v.raw.len && memcmp(x.v.raw.ptr, y.v.raw.ptr, x.v.raw.len) == 0;
    case MPR_ARRAY:
        if (x.v.count != y.v.count)
            return false;
        for (uint32_t k = 0; k < x.v.count; k++)
            if (!mp_mp_eq(a, b, NULL))
                return false;
        return true;
    case MPR_MAP: {
        /* For each key of a, find it in b (from b's start each time). */
        mpr_t bstart = *b, bend = *b;
        for (uint32_t k = 0; k < 2 * y.v.count; k++)
            if (mpr_skip(&bend, 32))
                return false;
        uint32_t matched = 0, skipped_b = 0;
        mpr_t scan = bstart;
        for (uint32_t k = 0; k < y.v.count; k++) {
            mpr_obj_t key;
            if (mpr_next(&scan, &key) || key.type != MPR_STR || mpr_skip(&scan, 32))
                return false;
            for (int s = 0; skip && skip[s]; s++)
                skipped_b += mpr_str_eq(&key, skip[s]);
        }
        for (uint32_t k = 0; k < x.v.count; k++) {
            mpr_obj_t key;
            if (mpr_next(a, &key) || key.type != MPR_STR)
                return false;
            bool skip_it = false;
            for (int s = 0; skip && skip[s]; s++)
                skip_it |= mpr_str_eq(&key, skip[s]);
            if (skip_it) {
                if (mpr_skip(a, 32))
                    return false;
                continue;
            }
            scan = bstart;
            bool found = false;
            for (uint32_t i = 0; i < y.v.count && !found; i++) {
                mpr_obj_t bk;
                if (mpr_next(&scan, &bk))
                    return false;
                if (bk.type == MPR_STR && bk.v.raw.len == key.v.raw.len &&
                    memcmp(bk.v.raw.ptr, key.v.raw.ptr, key.v.raw.len) == 0) {
                    if (!mp_mp_eq(a, &scan, NULL))
                        return false;
                    found = true;
                } else if (mpr_skip(&scan, 32)) {
                    return false;
                }
            }
            if (!found)
                return false;
            matched++;
        }
        *b = bend;
        return matched + skipped_b == y.v.count;
    }
    }
    return false;
}

/* What the library sent (`sent`) equals the example's body bytes. */
static void
assert_same_message(const void *sent, size_t slen, const ex_t *e, const char *const *skip)
{
    mpr_t a, b;
    mpr_init(&a, sent, slen);
    mpr_init(&b, e->body_bytes, e->body_len);
    cr_assert(mp_mp_eq(&a, &b, skip) && mpr_left(&a) == 0 && mpr_left(&b) == 0,
              "%s: the library sent another message than %s.msgpack", e->name, e->name);
}

static void
assert_mp_eq(const void *data, size_t len, const jv_t *j, const char *const *skip, const char *what)
{
    mpr_t r;
    mpr_init(&r, data, len);
    char why[512] = "";
    cr_assert(mp_eq(&r, j, skip, why, sizeof why, "body"), "%s: %s", what, why);
    cr_assert_eq(mpr_left(&r), 0, "%s: bytes after the body", what);
}

/* ---- a fake ROUTER -------------------------------------------------------- */

typedef struct {
    void *ctx;
    char ep[128];
    pthread_mutex_t mu;
    const uint8_t *reply;       /* staged reply body */
    size_t reply_len;
    uint8_t *request;           /* the last request body that got the staged reply */
    size_t request_len;
    int served;
    bool auto_schema;           /* answer schema queries with these two */
    const ex_t *schema_m1;      /* answers the subscriber's schema queries */
    const ex_t *unknown_model;
    volatile int stop;
    pthread_t th;
} router_t;

/* The op and model of a request body, for the subscriber's schema
   queries. */
static bool
s_is_schema(const uint8_t *b, size_t len, bool *m1)
{
    mpr_t r;
    mpr_obj_t o, k, v;
    mpr_init(&r, b, len);
    if (mpr_next(&r, &o) || o.type != MPR_MAP)
        return false;
    bool schema = false;
    *m1 = false;
    for (uint32_t i = 0; i < o.v.count; i++) {
        if (mpr_next(&r, &k) || k.type != MPR_STR)
            return false;
        mpr_t at = r;
        if (mpr_next(&at, &v))
            return false;
        if (mpr_str_eq(&k, "op") && mpr_str_eq(&v, "schema"))
            schema = true;
        if (mpr_str_eq(&k, "model") && mpr_str_eq(&v, "m1"))
            *m1 = true;
        if (mpr_skip(&r, 32))
            return false;
    }
    return schema;
}

static void *
s_router_main(void *arg)
{
    router_t *f = arg;
    void *sock = zmq_socket(f->ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    cr_assert_eq(zmq_bind(sock, f->ep), 0);
    while (!f->stop) {
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        zmq_msg_t parts[8];
        int n = 0;
        for (bool more = true; more; ) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            zmq_msg_recv(&m, sock, 0);
            more = zmq_msg_more(&m);
            if (n < 8)
                parts[n++] = m;
            else
                zmq_msg_close(&m);
        }
        /* Envelope: every frame before the body; the body is the last. */
        const uint8_t *body = zmq_msg_data(&parts[n - 1]);
        size_t blen = zmq_msg_size(&parts[n - 1]);
        bool m1;
        const uint8_t *reply;
        size_t rlen;
        pthread_mutex_lock(&f->mu);
        if (f->auto_schema && s_is_schema(body, blen, &m1)) {
            const ex_t *e = m1 ? f->schema_m1 : f->unknown_model;
            reply = e->body_bytes;
            rlen = e->body_len;
        } else {
            reply = f->reply;
            rlen = f->reply_len;
            free(f->request);
            f->request = malloc(blen ? blen : 1);
            memcpy(f->request, body, blen);
            f->request_len = blen;
            f->served++;
        }
        pthread_mutex_unlock(&f->mu);
        for (int k = 0; k < n - 1; k++)
            zmq_send(sock, zmq_msg_data(&parts[k]), zmq_msg_size(&parts[k]), ZMQ_SNDMORE);
        zmq_send(sock, reply ? reply : (const uint8_t *)"", reply ? rlen : 0, 0);
        for (int k = 0; k < n; k++)
            zmq_msg_close(&parts[k]);
    }
    zmq_close(sock);
    return NULL;
}

static char g_dir[64];
static router_t g_router;
static ex_t *g_schema, *g_unknown;

static void
setup(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/xplex-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    memset(&g_router, 0, sizeof g_router);
    g_router.ctx = zmq_ctx_new();
    pthread_mutex_init(&g_router.mu, NULL);
    snprintf(g_router.ep, sizeof g_router.ep, "ipc://%s/q", g_dir);
    g_schema = load("reply/schema");
    g_unknown = load("reply/error-unknown_model");
    g_router.schema_m1 = g_schema;
    g_router.unknown_model = g_unknown;
    pthread_create(&g_router.th, NULL, s_router_main, &g_router);
}

static void
teardown(void)
{
    g_router.stop = 1;
    pthread_join(g_router.th, NULL);
    zmq_ctx_term(g_router.ctx);
    free(g_router.request);
    ex_free(g_schema);
    ex_free(g_unknown);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", g_dir);
}

static void
stage(const ex_t *reply)
{
    pthread_mutex_lock(&g_router.mu);
    g_router.reply = reply->body_bytes;
    g_router.reply_len = reply->body_len;
    g_router.served = 0;
    pthread_mutex_unlock(&g_router.mu);
}

/* The request the library sent for the staged reply equals the example. */
static void
check_request(const ex_t *req)
{
    pthread_mutex_lock(&g_router.mu);
    cr_assert_eq(g_router.served, 1, "%s: %d requests reached the fake daemon", req->name,
                 g_router.served);
    uint8_t *b = g_router.request;
    size_t len = g_router.request_len;
    g_router.request = NULL;
    pthread_mutex_unlock(&g_router.mu);
    if (jv_get(req->body, "$undecodable"))
        cr_assert(len == req->body_len && memcmp(b, req->body_bytes, len) == 0,
                  "%s: sent other bytes", req->name);
    else {
        assert_mp_eq(b, len, req->body, NULL, req->name);
        assert_same_message(b, len, req, NULL);
    }
    free(b);
}

/* ---- comparisons with a rendering -------------------------------------- */

static void
expect_str(const ex_t *e, const char *field, const char *got, const jv_t *want)
{
    cr_assert_not_null(jv_str(want), "%s: %s is not a string in the example", e->name, field);
    cr_assert(got && strcmp(got, jv_str(want)) == 0, "%s: %s is '%s', example says '%s'", e->name,
              field, got ? got : "(null)", jv_str(want));
}

static void
expect_int(const ex_t *e, const char *field, int64_t got, const jv_t *want)
{
    cr_assert(want && want->t == JV_NUM && want->is_int, "%s: %s is not an integer in the example",
              e->name, field);
    cr_assert_eq(got, want->i, "%s: %s is %lld, example says %lld", e->name, field, (long long)got,
                 (long long)want->i);
}

static void
expect_num(const ex_t *e, const char *field, double got, const jv_t *want)
{
    double w = jv_num(want);
    cr_assert(got == w || (isnan(got) && isnan(w)), "%s: %s is %.17g, example says %.17g", e->name,
              field, got, w);
}

static void
expect_doubles(const ex_t *e, const char *field, const double *got, uint32_t n, const jv_t *want)
{
    cr_assert(want && want->t == JV_ARR && want->n == n, "%s: %s has %u values, example %zu", e->name,
              field, n, want ? want->n : 0);
    for (uint32_t k = 0; k < n; k++)
        expect_num(e, field, got[k], want->items[k]);
}

static void
expect_strs(const ex_t *e, const char *field, const char *const *got, uint32_t n, const jv_t *want)
{
    cr_assert(want && want->t == JV_ARR && want->n == n, "%s: %s has %u names, example %zu", e->name,
              field, n, want ? want->n : 0);
    for (uint32_t k = 0; k < n; k++)
        expect_str(e, field, got[k], want->items[k]);
}

static void
expect_id(const ex_t *e, const xpl_id_t *id, const jv_t *want)
{
    if (want && want->t == JV_STR) {
        cr_assert(id->is_str, "%s: id should be a str", e->name);
        expect_str(e, "id", id->s, want);
    } else {
        cr_assert(!id->is_str, "%s: id should be a uint", e->name);
        expect_int(e, "id", (int64_t)id->u, want);
    }
}

/* An explanation (xpl/ body or trade reply) against the body. */
static void
expect_explanation(const ex_t *e, const xpl_explanation_t *x, const jv_t *b, bool trade)
{
    expect_str(e, "model", x->model, jv_get(b, "model"));
    expect_id(e, &x->id, jv_get(b, "id"));
    if (!trade)
        expect_int(e, "seq", (int64_t)x->seq, jv_get(b, "seq"));
    expect_int(e, "ts", x->ts, jv_get(b, "ts"));
    expect_int(e, "epoch", (int64_t)x->epoch, jv_get(b, "epoch"));
    const jv_t *t = jv_get(b, "target"), *y = jv_get(b, "y");
    cr_assert_eq(x->has_target, t != NULL, "%s: has_target", e->name);
    if (t)
        expect_int(e, "target", x->target, t);
    cr_assert_eq(x->has_y, y != NULL, "%s: has_y", e->name);
    if (y)
        expect_num(e, "y", x->y, y);
    const jv_t *attr = jv_get(b, "attr");
    cr_assert(attr && attr->t == JV_OBJ && attr->n == x->nattr, "%s: %u methods", e->name, x->nattr);
    for (uint32_t i = 0; i < x->nattr; i++) {
        cr_assert_str_eq(x->attr[i].method, attr->keys[i], "%s: method %u", e->name, i);
        const jv_t *v = attr->items[i];
        cr_assert_eq(x->attr[i].count, v->n, "%s: %s has %u values", e->name, attr->keys[i],
                     x->attr[i].count);
        for (uint32_t k = 0; k < v->n; k++)
            cr_assert_eq(x->attr[i].values[k], (float)jv_num(v->items[k]), "%s: %s[%u] = %.9g, example %s",
                         e->name, attr->keys[i], k, x->attr[i].values[k], "differs");
        cr_assert_eq(xpl_explanation_attr(x, attr->keys[i]), &x->attr[i]);
    }
    if (!trade)
        return;
    expect_int(e, "n", x->n, jv_get(b, "n"));
    expect_int(e, "cls", x->cls, jv_get(b, "cls"));
    const jv_t *f = jv_get(b, "features");
    if (f)
        expect_strs(e, "features", x->features, x->nfeat, f);
    else
        cr_assert_null(x->features, "%s: features", e->name);
    const jv_t *m = jv_get(b, "matrices");
    cr_assert(m && m->n == x->nmatrices, "%s: %u matrices", e->name, x->nmatrices);
    for (uint32_t i = 0; i < x->nmatrices; i++) {
        cr_assert_str_eq(x->matrices[i].method, m->keys[i]);
        cr_assert_eq(x->matrices[i].n, x->n);
        const jv_t *vals = jv_get(m->items[i], "$f32");
        cr_assert(vals && vals->n == (size_t)x->n * x->n, "%s: matrix %s", e->name, m->keys[i]);
        for (size_t k = 0; k < vals->n; k++)
            cr_assert_eq(x->matrices[i].values[k], (float)jv_num(vals->items[k]), "%s: %s[%zu]",
                         e->name, m->keys[i], k);
        cr_assert_eq(xpl_explanation_matrix(x, m->keys[i]), &x->matrices[i]);
    }
}

static void
expect_method_states(const ex_t *e, const xpl_method_state_t *ms, uint32_t n, uint32_t nfeat,
                     const jv_t *want)
{
    cr_assert(want && want->t == JV_OBJ && want->n == n, "%s: %u method states", e->name, n);
    for (uint32_t i = 0; i < n; i++) {
        const jv_t *w = want->items[i];
        cr_assert_str_eq(ms[i].method, want->keys[i], "%s: method %u", e->name, i);
        expect_int(e, "count", (int64_t)ms[i].count, jv_get(w, "count"));
        expect_doubles(e, "mean", ms[i].mean, nfeat, jv_get(w, "mean"));
        expect_doubles(e, "std", ms[i].std, nfeat, jv_get(w, "std"));
        expect_doubles(e, "decayed", ms[i].decayed, nfeat, jv_get(w, "decayed"));
        const jv_t *ref = jv_get(w, "reference");
        if (ref) {
            cr_assert_not_null(ms[i].reference, "%s: %s has no reference", e->name, ms[i].method);
            expect_doubles(e, "reference", ms[i].reference, nfeat, ref);
            expect_num(e, "reference_spearman", ms[i].reference_spearman,
                       jv_get(w, "reference_spearman"));
        } else {
            cr_assert_null(ms[i].reference, "%s: %s has a reference", e->name, ms[i].method);
            cr_assert(isnan(ms[i].reference_spearman));
        }
    }
}

static void
expect_global(const ex_t *e, const xpl_global_t *g, const jv_t *b)
{
    expect_str(e, "model", g->model, jv_get(b, "model"));
    expect_int(e, "seq", (int64_t)g->seq, jv_get(b, "seq"));
    expect_int(e, "ts", g->ts, jv_get(b, "ts"));
    expect_int(e, "epoch", (int64_t)g->epoch, jv_get(b, "epoch"));
    expect_int(e, "count", (int64_t)g->count, jv_get(b, "count"));
    expect_num(e, "half_life", g->half_life, jv_get(b, "half_life"));
    expect_int(e, "untracked_targets", (int64_t)g->untracked_targets, jv_get(b, "untracked_targets"));
    const jv_t *f = jv_get(b, "features");
    if (f && f->t != JV_NULL)
        expect_strs(e, "features", g->features, g->nfeat, f);
    else
        cr_assert_null(g->features);
    expect_method_states(e, g->methods, g->nmethods, g->nfeat, jv_get(b, "methods"));
    const jv_t *t = jv_get(b, "targets");
    cr_assert(t && t->n == g->ntargets, "%s: %u targets", e->name, g->ntargets);
    for (uint32_t i = 0; i < g->ntargets; i++) {
        expect_int(e, "target", g->targets[i].target, jv_get(t->items[i], "target"));
        expect_method_states(e, g->targets[i].methods, g->targets[i].nmethods, g->nfeat,
                             jv_get(t->items[i], "methods"));
        cr_assert_eq(xpl_global_target(g, g->targets[i].target), &g->targets[i]);
    }
}

static void
expect_window(const ex_t *e, const xpl_window_t *w, const jv_t *b, const jv_t *ts)
{
    expect_int(e, "window", (int64_t)w->window, jv_get(b, "window"));
    expect_str(e, "reference", w->reference, jv_get(b, "reference"));
    cr_assert_eq(w->compared, jv_get(b, "compared")->b, "%s: compared", e->name);
    expect_num(e, "spearman", w->spearman, jv_get(b, "spearman"));
    expect_num(e, "ndcg", w->ndcg, jv_get(b, "ndcg"));
    expect_num(e, "js", w->js, jv_get(b, "js"));
    cr_assert_eq(w->alert, jv_get(b, "alert")->b, "%s: alert", e->name);
    expect_int(e, "ts", w->ts, ts);
}

/* The verdict and what moved of a closed window (a drift/ body, a drift
   reply's "last", or one of its alerts), both as the example says. */
static void
expect_verdict(const ex_t *e, const xpl_verdict_t *v, const jv_t *b)
{
    static const char *stats[3] = {"spearman", "ndcg", "js"};
    const jv_t *vd = jv_get(b, "verdict");
    cr_assert(vd && vd->t == JV_OBJ, "%s: the example has no verdict", e->name);
    expect_str(e, "verdict.mode", v->mode, jv_get(vd, "mode"));
    cr_assert_eq(v->calibrating, jv_get(vd, "calibrating")->b, "%s: calibrating", e->name);
    const jv_t *al = jv_get(vd, "alerts");
    for (int k = 0; k < 3; k++) {
        expect_num(e, "verdict.z", v->z[k], jv_get(jv_get(vd, "z"), stats[k]));
        expect_num(e, "verdict.cusum", v->cusum[k], jv_get(jv_get(vd, "cusum"), stats[k]));
        bool listed = false;
        for (size_t i = 0; al && i < al->n; i++)
            listed |= strcmp(jv_str(al->items[i]), stats[k]) == 0;
        cr_assert_eq(v->alerted[k], listed, "%s: verdict.alerts %s", e->name, stats[k]);
    }
    const jv_t *mv = jv_get(b, "moved");
    cr_assert(mv && mv->t == JV_ARR && mv->n == v->nmoved, "%s: %u moved, example %zu", e->name,
              v->nmoved, mv ? mv->n : 0);
    for (uint32_t i = 0; i < v->nmoved; i++) {
        const xpl_moved_t *m = &v->moved[i];
        const jv_t *w = mv->items[i];
        if (jv_get(w, "feature")->t == JV_NULL)
            cr_assert_null(m->feature, "%s: moved[%u].feature", e->name, i);
        else
            expect_str(e, "moved.feature", m->feature, jv_get(w, "feature"));
        expect_int(e, "moved.index", m->index, jv_get(w, "index"));
        expect_num(e, "moved.ref", m->ref, jv_get(w, "ref"));
        expect_num(e, "moved.cur", m->cur, jv_get(w, "cur"));
        expect_num(e, "moved.delta", m->delta, jv_get(w, "delta"));
        expect_int(e, "moved.ref_rank", m->ref_rank, jv_get(w, "ref_rank"));
        expect_int(e, "moved.rank", m->rank, jv_get(w, "rank"));
        expect_int(e, "moved.rank_up", m->rank_up, jv_get(w, "rank_up"));
    }
}

static void
expect_models(const ex_t *e, const xpl_model_info_t *m, uint32_t n, const jv_t *want)
{
    cr_assert(want && want->n == n, "%s: %u models", e->name, n);
    for (uint32_t i = 0; i < n; i++) {
        const jv_t *w = want->items[i];
        expect_str(e, "model", m[i].model, jv_get(w, "model"));
        expect_int(e, "epoch", (int64_t)m[i].epoch, jv_get(w, "epoch"));
        expect_int(e, "L", m[i].L, jv_get(w, "L"));
        expect_int(e, "H", m[i].H, jv_get(w, "H"));
        expect_int(e, "n", m[i].n, jv_get(w, "n"));
        if (jv_get(w, "cls")->t != JV_NULL)     /* nil: a model without a schema yet */
            expect_int(e, "cls", m[i].cls, jv_get(w, "cls"));
        expect_int(e, "received", (int64_t)m[i].received, jv_get(w, "received"));
        expect_int(e, "trades", (int64_t)m[i].trades, jv_get(w, "trades"));
        expect_int(e, "explained", (int64_t)m[i].explained, jv_get(w, "explained"));
        expect_int(e, "rejected", (int64_t)m[i].rejected, jv_get(w, "rejected"));
        expect_int(e, "lost", (int64_t)m[i].lost, jv_get(w, "lost"));
        expect_int(e, "restarts", (int64_t)m[i].restarts, jv_get(w, "restarts"));
        expect_int(e, "last_seq", (int64_t)m[i].last_seq, jv_get(w, "last_seq"));
        expect_int(e, "last_ts", m[i].last_ts, jv_get(w, "last_ts"));
    }
}

static void
expect_counters(const ex_t *e, const xpl_counter_t *c, uint32_t n, const jv_t *want)
{
    cr_assert(want && want->t == JV_OBJ && want->n == n, "%s: %u counters", e->name, n);
    for (uint32_t i = 0; i < n; i++) {
        cr_assert_str_eq(c[i].name, want->keys[i]);
        expect_int(e, c[i].name, (int64_t)c[i].value, want->items[i]);
    }
}

/* ---- published messages ----------------------------------------------- */

Test(client_examples, published_messages_decode_to_their_rendering, .init = setup, .fini = teardown)
{
    void *ctx = zmq_ctx_new();
    void *pub = zmq_socket(ctx, ZMQ_XPUB);
    char ep[128];
    snprintf(ep, sizeof ep, "ipc://%s/pub", g_dir);
    cr_assert_eq(zmq_bind(pub, ep), 0);
    pthread_mutex_lock(&g_router.mu);
    g_router.auto_schema = true;
    pthread_mutex_unlock(&g_router.mu);
    xpl_sub_t *s = xpl_sub_new(ep, g_router.ep);
    cr_assert_not_null(s, "%s", xpl_strerror());
    cr_assert_eq(xpl_sub_subscribe(s, XPL_KIND_ALL, NULL), 0);
    /* xpl/, glob/, drift/, heads/: four subscriptions reach the XPUB. */
    for (int k = 0; k < 4; k++) {
        zmq_pollitem_t it = {pub, 0, ZMQ_POLLIN, 0};
        cr_assert_eq(zmq_poll(&it, 1, 5000), 1, "the subscriber did not subscribe");
        char sub[64];
        cr_assert_gt(zmq_recv(pub, sub, sizeof sub, 0), 1);
        cr_assert_eq(sub[0], 1);
    }
    static const struct {
        const char *kind;
        xpl_kind_t k;
    } kinds[] = {{"xpl", XPL_KIND_XPL}, {"glob", XPL_KIND_GLOB}, {"drift", XPL_KIND_DRIFT},
                 {"heads", XPL_KIND_HEADS}};
    int total = 0;
    uint32_t moved_seen = 0;
    for (size_t kk = 0; kk < sizeof kinds / sizeof *kinds; kk++) {
        size_t count;
        char **names = ex_names(EXAMPLES, kinds[kk].kind, &count);
        cr_assert_gt(count, 0, "no %s examples", kinds[kk].kind);
        for (size_t i = 0; i < count; i++) {
            char full[160];
            snprintf(full, sizeof full, "%s/%s", kinds[kk].kind, names[i]);
            ex_t *e = load(full);
            const jv_t *b = e->body;
            cr_assert_eq(e->nframes, 2);
            zmq_send(pub, e->frame[0], e->len[0], ZMQ_SNDMORE);
            zmq_send(pub, e->frame[1], e->len[1], 0);
            xpl_event_t *ev = xpl_sub_recv(s, 5000);
            cr_assert_not_null(ev, "%s: no event (%s; malformed: %s)", e->name, xpl_strerror(),
                               xpl_sub_last_malformed(s));
            cr_assert_eq(ev->kind, kinds[kk].k, "%s: kind %d", e->name, ev->kind);
            expect_str(e, "model", ev->model, jv_get(b, "model"));
            expect_int(e, "seq", (int64_t)ev->seq, jv_get(b, "seq"));
            switch (ev->kind) {
            case XPL_KIND_XPL: {
                const xpl_explanation_t *x = ev->explanation;
                expect_explanation(e, x, b, false);
                /* Feature names from the schema query: reply/schema is m1's. */
                if (strcmp(x->model, "m1") == 0) {
                    cr_assert_not_null(x->features, "%s: no feature names", e->name);
                    expect_strs(e, "features", x->features, x->nfeat, jv_get(g_schema->body, "features"));
                    cr_assert_not_null(x->schema);
                } else {
                    cr_assert_null(x->features, "%s: features of another model", e->name);
                }
                break;
            }
            case XPL_KIND_GLOB:
                expect_global(e, ev->global, b);
                break;
            case XPL_KIND_DRIFT: {
                const xpl_drift_t *d = ev->drift;
                expect_int(e, "epoch", (int64_t)d->epoch, jv_get(b, "epoch"));
                expect_str(e, "method", d->method, jv_get(b, "method"));
                expect_int(e, "trades", (int64_t)d->trades, jv_get(b, "trades"));
                expect_window(e, &d->window, b, jv_get(b, "ts"));
                expect_verdict(e, &d->verdict, b);
                if (jv_get(b, "segment"))
                    expect_str(e, "segment", d->segment, jv_get(b, "segment"));
                else
                    cr_assert_null(d->segment, "%s: segment", e->name);
                moved_seen += d->verdict.nmoved;
                break;
            }
            case XPL_KIND_HEADS: {
                const xpl_heads_t *h = ev->heads;
                expect_int(e, "ts", h->ts, jv_get(b, "ts"));
                expect_int(e, "epoch", (int64_t)h->epoch, jv_get(b, "epoch"));
                expect_int(e, "L", h->L, jv_get(b, "L"));
                expect_int(e, "H", h->H, jv_get(b, "H"));
                const char *keys[2] = {"importance", "confidence"};
                const double *vals[2] = {h->importance, h->confidence};
                for (int k = 0; k < 2; k++) {
                    const jv_t *rows = jv_get(b, keys[k]);
                    cr_assert(rows && rows->n == h->L);
                    for (uint32_t l = 0; l < h->L; l++)
                        expect_doubles(e, keys[k], vals[k] + (size_t)l * h->H, h->H, rows->items[l]);
                }
                expect_int(e, "importance_count", (int64_t)h->importance_count,
                           jv_get(b, "importance_count"));
                expect_int(e, "confidence_count", (int64_t)h->confidence_count,
                           jv_get(b, "confidence_count"));
                break;
            }
            default:
                cr_assert_fail("unexpected kind");
            }
            xpl_event_destroy(&ev);
            ex_free(e);
            total++;
        }
        ex_names_free(names, count);
    }
    cr_assert_eq(xpl_sub_malformed(s), 0, "%s", xpl_sub_last_malformed(s));
    cr_assert_gt(total, 8);
    cr_assert_gt(moved_seen, 0, "no drift/ example with what moved was decoded");
    xpl_sub_destroy(&s);
    zmq_close(pub);
    zmq_ctx_term(ctx);
}

/* ---- queries -------------------------------------------------------------- */

static const char *
arg_str(const ex_t *req, const char *key)
{
    return jv_str(jv_get(req->body, key));
}

/* Call the library function for the request's op, with its arguments;
   check the result against the reply (ok) or the error (not ok). */
static void
replay_query(const char *name)
{
    char path[160];
    snprintf(path, sizeof path, "request/%s", name);
    ex_t *req = load(path);
    snprintf(path, sizeof path, "reply/%s", name);
    ex_t *rep = load(path);
    const jv_t *b = rep->body;
    bool ok = jv_get(b, "ok")->b;
    const char *op = arg_str(req, "op");
    const char *model = arg_str(req, "model");
    const char *method = arg_str(req, "method");
    stage(rep);
    xpl_client_t *c = xpl_client_new(g_router.ep);
    cr_assert_not_null(c);
    xpl_client_set_timeout(c, 5000);
    int rc = 0;
    if (!op || jv_get(req->body, "$undecodable") || strcmp(op, "frobnicate") == 0) {
        /* No function of the library sends these: the raw request. */
        void *reply = NULL;
        size_t size = 0;
        rc = xpl_client_request(c, req->body_bytes, req->body_len, &reply, &size);
        if (rc == 0) {
            assert_mp_eq(reply, size, b, NULL, rep->name);
            free(reply);
        }
    } else if (strcmp(op, "ping") == 0) {
        char version[64];
        double uptime = -1;
        rc = xpl_client_ping(c, version, sizeof version, &uptime);
        if (rc == 0) {
            expect_str(rep, "version", version, jv_get(b, "version"));
            expect_num(rep, "uptime_s", uptime, jv_get(b, "uptime_s"));
        }
    } else if (strcmp(op, "models") == 0) {
        xpl_models_t *m = xpl_client_models(c);
        rc = m ? 0 : -1;
        if (m) {
            expect_models(rep, m->models, m->count, jv_get(b, "models"));
            cr_assert_eq(xpl_models_find(m, m->models[0].model), &m->models[0]);
        }
        xpl_models_destroy(&m);
    } else if (strcmp(op, "schema") == 0) {
        xpl_schema_t *s = xpl_client_schema(c, model);
        rc = s ? 0 : -1;
        if (s) {
            expect_str(rep, "model", s->model, jv_get(b, "model"));
            expect_int(rep, "epoch", (int64_t)s->epoch, jv_get(b, "epoch"));
            expect_int(rep, "L", s->L, jv_get(b, "L"));
            expect_int(rep, "H", s->H, jv_get(b, "H"));
            expect_int(rep, "n", s->n, jv_get(b, "n"));
            expect_int(rep, "cls", s->cls, jv_get(b, "cls"));
            expect_strs(rep, "tokens", s->tokens, s->n, jv_get(b, "tokens"));
            expect_strs(rep, "features", s->features, s->nfeat, jv_get(b, "features"));
            expect_str(rep, "dtype", s->dtype, jv_get(b, "dtype"));
            /* feature groups: each group's tokens, and every token's feature */
            const jv_t *g = jv_get(b, "groups");
            cr_assert_eq(s->ngroups, g ? (uint32_t)g->n : 0u, "%s: groups", rep->name);
            for (uint32_t k = 0; g && k < s->ngroups; k++) {
                cr_assert_str_eq(s->groups[k].name, g->keys[k], "%s: group %u", rep->name, k);
                expect_strs(rep, "groups", s->groups[k].tokens, s->groups[k].ntokens, g->items[k]);
            }
            for (uint32_t j = 0; j < s->n; j++) {
                int32_t f = s->feature_of[j];
                if ((int32_t)j == s->cls) {
                    cr_assert_eq(f, -1, "%s: CLS token %u has a feature", rep->name, j);
                    continue;
                }
                cr_assert(f >= 0 && (uint32_t)f < s->nfeat, "%s: token %u", rep->name, j);
                bool in_group = false;
                for (uint32_t k = 0; g && k < s->ngroups; k++)
                    for (uint32_t q = 0; q < s->groups[k].ntokens; q++)
                        if (strcmp(s->groups[k].tokens[q], s->tokens[j]) == 0) {
                            in_group = true;
                            cr_assert_str_eq(s->features[f], s->groups[k].name);
                        }
                if (!in_group)
                    cr_assert_str_eq(s->features[f], s->tokens[j]);
            }
        }
        xpl_schema_destroy(&s);
    } else if (strcmp(op, "stats") == 0) {
        xpl_stats_t *s = xpl_client_stats(c);
        rc = s ? 0 : -1;
        if (s) {
            const jv_t *cnt = jv_get(b, "counters");
            expect_num(rep, "uptime_s", s->uptime_s, jv_get(b, "uptime_s"));
            expect_counters(rep, s->counters, s->ncounters, cnt);
            expect_counters(rep, s->rejected_by_reason, s->nreasons, jv_get(b, "rejected"));
            struct { const char *name; uint64_t v; } known[] = {
                {"received", s->received}, {"received_trades", s->received_trades},
                {"explained", s->explained}, {"published", s->published},
                {"rejected", s->rejected}, {"lost", s->lost}, {"restarts", s->restarts},
                {"dropped", s->dropped}, {"queries", s->queries}, {"query_errors", s->query_errors}};
            for (size_t k = 0; k < sizeof known / sizeof *known; k++)
                expect_int(rep, known[k].name, (int64_t)known[k].v, jv_get(cnt, known[k].name));
            const jv_t *lat = jv_get(b, "latency_us");
            expect_int(rep, "latency_us.count", (int64_t)s->latency_us.count, jv_get(lat, "count"));
            expect_num(rep, "p50", s->latency_us.p50, jv_get(lat, "p50"));
            expect_num(rep, "p90", s->latency_us.p90, jv_get(lat, "p90"));
            expect_num(rep, "p99", s->latency_us.p99, jv_get(lat, "p99"));
            expect_num(rep, "p999", s->latency_us.p999, jv_get(lat, "p999"));
            expect_num(rep, "max", s->latency_us.max, jv_get(lat, "max"));
            expect_models(rep, s->models, s->nmodels, jv_get(b, "models"));
        }
        xpl_stats_destroy(&s);
    } else if (strcmp(op, "trade") == 0) {
        const jv_t *idj = jv_get(req->body, "id"), *flow = jv_get(req->body, "flow");
        xpl_id_t id = idj->t == JV_STR ? xpl_id_str(idj->s) : xpl_id_uint((uint64_t)jv_int(idj));
        xpl_explanation_t *x = xpl_client_trade(c, model, id, flow && flow->b);
        rc = x ? 0 : -1;
        if (x)
            expect_explanation(rep, x, b, true);
        xpl_explanation_destroy(&x);
    } else if (strcmp(op, "global") == 0) {
        const jv_t *tj = jv_get(req->body, "target"), *ej = jv_get(req->body, "epoch");
        int64_t target = jv_int(tj);
        uint64_t epoch = (uint64_t)jv_int(ej);
        xpl_global_t *g = xpl_client_global(c, model, method, tj ? &target : NULL, ej ? &epoch : NULL);
        rc = g ? 0 : -1;
        if (g)
            expect_global(rep, g, b);
        xpl_global_destroy(&g);
    } else if (strcmp(op, "drift") == 0) {
        const jv_t *ej = jv_get(req->body, "epoch");
        uint64_t epoch = (uint64_t)jv_int(ej);
        xpl_drift_state_t *d = xpl_client_drift(c, model, method, ej ? &epoch : NULL);
        rc = d ? 0 : -1;
        if (d) {
            expect_str(rep, "model", d->model, jv_get(b, "model"));
            expect_int(rep, "epoch", (int64_t)d->epoch, jv_get(b, "epoch"));
            expect_int(rep, "window", (int64_t)d->window, jv_get(b, "window"));
            const jv_t *th = jv_get(b, "thresholds");
            expect_num(rep, "rho_min", d->rho_min, jv_get(th, "rho_min"));
            expect_num(rep, "ndcg_min", d->ndcg_min, jv_get(th, "ndcg_min"));
            expect_num(rep, "js_max", d->js_max, jv_get(th, "js_max"));
            expect_int(rep, "ndcg_k", d->ndcg_k, jv_get(th, "ndcg_k"));
            const jv_t *ms = jv_get(b, "methods");
            cr_assert(ms && ms->n == d->nmethods, "%s: %u methods", rep->name, d->nmethods);
            for (uint32_t i = 0; i < d->nmethods; i++) {
                const xpl_drift_method_t *m = &d->methods[i];
                const jv_t *w = ms->items[i];
                cr_assert_str_eq(m->method, ms->keys[i]);
                expect_str(rep, "reference", m->reference, jv_get(w, "reference"));
                expect_int(rep, "filled", (int64_t)m->filled, jv_get(w, "filled"));
                expect_int(rep, "windows", (int64_t)m->windows, jv_get(w, "windows"));
                const jv_t *last = jv_get(w, "last");
                cr_assert_eq(m->has_last, last && last->t != JV_NULL);
                if (m->has_last) {
                    expect_window(rep, &m->last, last, jv_get(last, "ts"));
                    expect_verdict(rep, &d->verdicts[i], last);
                }
                cr_assert_eq(xpl_drift_state_method(d, m->method), m);
            }
            expect_int(rep, "alerts_total", (int64_t)d->alerts_total, jv_get(b, "alerts_total"));
            const jv_t *al = jv_get(b, "alerts");
            cr_assert(al && al->n == d->nalerts);
            for (uint32_t i = 0; i < d->nalerts; i++) {
                const xpl_alert_t *a = &d->alerts[i];
                const jv_t *w = al->items[i];
                expect_int(rep, "ts", a->ts, jv_get(w, "ts"));
                expect_int(rep, "epoch", (int64_t)a->epoch, jv_get(w, "epoch"));
                expect_str(rep, "method", a->method, jv_get(w, "method"));
                expect_int(rep, "window", (int64_t)a->window, jv_get(w, "window"));
                expect_str(rep, "reference", a->reference, jv_get(w, "reference"));
                expect_num(rep, "spearman", a->spearman, jv_get(w, "spearman"));
                expect_num(rep, "ndcg", a->ndcg, jv_get(w, "ndcg"));
                expect_num(rep, "js", a->js, jv_get(w, "js"));
                expect_verdict(rep, &a->verdict, w);
                if (jv_get(w, "segment"))
                    expect_str(rep, "segment", a->segment, jv_get(w, "segment"));
                else
                    cr_assert_null(a->segment, "%s: alert segment", rep->name);
            }
        }
        xpl_drift_state_destroy(&d);
    } else if (strcmp(op, "baseline") == 0) {
        const char *action = arg_str(req, "action");
        xpl_baseline_t a = strcmp(action, "pin") == 0 ? XPL_BASELINE_PIN : XPL_BASELINE_RESET;
        rc = xpl_client_baseline(c, model, a, method);
        if (rc >= 0) {
            cr_assert_eq((size_t)rc, jv_get(b, "methods")->n, "%s: %d methods changed", rep->name, rc);
            rc = 0;
        }
    } else if (strcmp(op, "reference") == 0) {
        const jv_t *vj = jv_get(req->body, "values");
        double v[64];
        cr_assert_leq(vj->n, 64);
        for (size_t k = 0; k < vj->n; k++)
            v[k] = jv_num(vj->items[k]);
        double rho = -2;
        rc = xpl_client_reference(c, model, method, v, (uint32_t)vj->n, &rho);
        if (rc == 0)
            expect_num(rep, "spearman", rho, jv_get(b, "spearman"));
    } else {
        cr_assert_fail("%s: op '%s' has no function in the library", req->name, op);
    }
    if (ok) {
        cr_assert_eq(rc, 0, "%s: %s", rep->name, xpl_strerror());
    } else if (!ok) {
        cr_assert_eq(rc, -1, "%s: an error reply was taken for a result", rep->name);
        const char *code = jv_str(jv_get(b, "code")), *error = jv_str(jv_get(b, "error"));
        cr_assert_str_eq(xpl_errno_name(xpl_errno()), code, "%s: error %s (%s)", rep->name,
                         xpl_errno_name(xpl_errno()), xpl_strerror());
        cr_assert(strstr(xpl_strerror(), error), "%s: '%s' does not say '%s'", rep->name,
                  xpl_strerror(), error);
    }
    check_request(req);
    xpl_client_destroy(&c);
    ex_free(req);
    ex_free(rep);
}

Test(client_examples, every_reply_decodes_and_every_request_matches, .init = setup, .fini = teardown)
{
    size_t count;
    char **names = ex_names(EXAMPLES, "reply", &count);
    cr_assert_gt(count, 10);
    for (size_t k = 0; k < count; k++)
        replay_query(names[k]);
    ex_names_free(names, count);
}

/* ---- the publisher -------------------------------------------------------- */

/* What xpl_pub sends for an ingest example's data is that example
   (cls/tokens may be left out after the first message, and keys it does
   not know, like "trace", are not sent). */
Test(client_examples, publisher_sends_the_ingest_examples, .init = setup, .fini = teardown)
{
    static const char *order[] = {"f32-first", "f16-batch3", "bf16-nograd", "f32-followup"};
    char ep[128];
    snprintf(ep, sizeof ep, "ipc://%s/in", g_dir);
    xpl_pub_t *p = xpl_pub_new_bind(ep);
    cr_assert_not_null(p, "%s", xpl_strerror());
    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "attn/", 5);
    cr_assert_eq(zmq_connect(sub, ep), 0);
    cr_assert_eq(xpl_pub_wait_subscriber(p, 5000), 0, "%s", xpl_strerror());
    for (size_t k = 0; k < sizeof order / sizeof *order; k++) {
        char name[64];
        snprintf(name, sizeof name, "ingest/%s", order[k]);
        ex_t *e = load(name);
        const jv_t *b = e->body;
        if (k == 0) {
            const jv_t *tok = jv_get(b, "tokens");
            const char *tokens[16];
            for (size_t t = 0; t < tok->n; t++)
                tokens[t] = tok->items[t]->s;
            cr_assert_eq(xpl_pub_set_schema(p, "m1", (uint32_t)jv_int(jv_get(b, "L")),
                                            (uint32_t)jv_int(jv_get(b, "H")),
                                            (uint32_t)jv_int(jv_get(b, "n")),
                                            (int32_t)jv_int(jv_get(b, "cls")), tokens), 0);
        }
        cr_assert_eq(xpl_pub_next_seq(p, "m1"), (uint64_t)jv_int(jv_get(b, "seq")));
        const jv_t *ids = jv_get(b, "ids"), *tj = jv_get(b, "target"), *yj = jv_get(b, "y");
        xpl_id_t id[8];
        int64_t target[8];
        double y[8];
        for (size_t i = 0; i < ids->n; i++) {
            const jv_t *v = ids->items[i];
            id[i] = v->t == JV_STR ? xpl_id_str(v->s) : xpl_id_uint((uint64_t)v->i);
            if (tj)
                target[i] = jv_int(tj->items[i]);
            if (yj)
                y[i] = jv_num(yj->items[i]);
        }
        const char *dt = jv_str(jv_get(b, "dtype"));
        size_t alen, glen = 0;
        uint8_t *attn = jv_bin(jv_get(b, "attn"), &alen);
        uint8_t *grad = jv_get(b, "grad") ? jv_bin(jv_get(b, "grad"), &glen) : NULL;
        xpl_batch_t batch = {
            .model = "m1", .B = (uint32_t)ids->n, .ids = id,
            .dtype = strcmp(dt, "f32") == 0 ? XPL_F32 : strcmp(dt, "f16") == 0 ? XPL_F16 : XPL_BF16,
            .attn = attn, .grad = grad, .target = tj ? target : NULL, .y = yj ? y : NULL,
            .ts = jv_int(jv_get(b, "ts"))};
        cr_assert_eq(xpl_pub_send(p, &batch), 0, "%s: %s", e->name, xpl_strerror());
        zmq_msg_t topic, body;
        zmq_msg_init(&topic);
        zmq_msg_init(&body);
        zmq_pollitem_t it = {sub, 0, ZMQ_POLLIN, 0};
        cr_assert_eq(zmq_poll(&it, 1, 5000), 1, "%s: nothing sent", e->name);
        zmq_msg_recv(&topic, sub, 0);
        cr_assert(zmq_msg_more(&topic));
        zmq_msg_recv(&body, sub, 0);
        cr_assert(!zmq_msg_more(&body));
        cr_assert(zmq_msg_size(&topic) == e->len[0] &&
                  memcmp(zmq_msg_data(&topic), e->frame[0], e->len[0]) == 0, "%s: topic", e->name);
        /* The first message carries the schema; later ones may. */
        static const char *schema_keys[] = {"cls", "tokens", "trace", NULL};
        static const char *extra_keys[] = {"trace", NULL};
        const char *const *skip = k == 0 ? extra_keys : schema_keys;
        assert_mp_eq(zmq_msg_data(&body), zmq_msg_size(&body), b, skip, e->name);
        assert_same_message(zmq_msg_data(&body), zmq_msg_size(&body), e, skip);
        zmq_msg_close(&topic);
        zmq_msg_close(&body);
        free(attn);
        free(grad);
        ex_free(e);
    }
    zmq_close(sub);
    zmq_ctx_term(ctx);
    xpl_pub_destroy(&p);
}

/* The examples with a relevance tensor and with several targets per
   trade: what xpl_pub sends for their data (rel beside grad; targets
   with grad [b][t][l][h][i][j]) is the example, schema included. */
Test(client_examples, publisher_sends_rel_and_targets, .init = setup, .fini = teardown)
{
    static const char *names[] = {"ingest/m4-rel", "ingest/m5-targets", "ingest/m5-targets-fused"};
    char ep[128];
    snprintf(ep, sizeof ep, "ipc://%s/in2", g_dir);
    xpl_pub_t *p = xpl_pub_new_bind(ep);
    cr_assert_not_null(p, "%s", xpl_strerror());
    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "attn/", 5);
    cr_assert_eq(zmq_connect(sub, ep), 0);
    cr_assert_eq(xpl_pub_wait_subscriber(p, 5000), 0, "%s", xpl_strerror());
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        ex_t *e = load(names[k]);
        const jv_t *b = e->body;
        const char *model = jv_str(jv_get(b, "model"));
        const jv_t *tok = jv_get(b, "tokens");
        const char *tokens[16];
        for (size_t t = 0; tok && t < tok->n; t++)
            tokens[t] = tok->items[t]->s;
        /* The fused example follows the full one of its model (seq 1,
           no schema): the schema is set from the full one. */
        if (tok)
            cr_assert_eq(xpl_pub_set_schema(p, model, (uint32_t)jv_int(jv_get(b, "L")),
                                            (uint32_t)jv_int(jv_get(b, "H")),
                                            (uint32_t)jv_int(jv_get(b, "n")),
                                            (int32_t)jv_int(jv_get(b, "cls")), tokens), 0);
        cr_assert_eq(xpl_pub_next_seq(p, model), (uint64_t)jv_int(jv_get(b, "seq")), "%s: seq",
                     e->name);
        const jv_t *ids = jv_get(b, "ids"), *tj = jv_get(b, "target"), *yj = jv_get(b, "y"),
                   *tsj = jv_get(b, "targets");
        xpl_id_t id[8];
        int64_t target[8], targets[8];
        double y[8];
        for (size_t i = 0; i < ids->n; i++) {
            const jv_t *v = ids->items[i];
            id[i] = v->t == JV_STR ? xpl_id_str(v->s) : xpl_id_uint((uint64_t)v->i);
            if (tj)
                target[i] = jv_int(tj->items[i]);
            if (yj)
                y[i] = jv_num(yj->items[i]);
        }
        for (size_t t = 0; tsj && t < tsj->n; t++)
            targets[t] = jv_int(tsj->items[t]);
        cr_assert_str_eq(jv_str(jv_get(b, "dtype")), "f32");
        size_t len;
#define BIN(key) (jv_get(b, key) ? jv_bin(jv_get(b, key), &len) : NULL)
        uint8_t *attn = BIN("attn"), *grad = BIN("grad"), *rel = BIN("rel"), *fattn = BIN("fattn"),
                *fgrad = BIN("fgrad"), *imp = BIN("head_importance"), *conf = BIN("head_confidence");
#undef BIN
        cr_assert(rel || tsj, "%s has neither rel nor targets", e->name);
        if (fattn) {
            xpl_fused_batch_t fb = {.model = model, .B = (uint32_t)ids->n, .ids = id,
                                    .dtype = XPL_F32, .fattn = fattn, .fgrad = fgrad,
                                    .head_importance = (const float *)imp,
                                    .head_confidence = (const float *)conf,
                                    .target = tj ? target : NULL, .y = yj ? y : NULL,
                                    .ts = jv_int(jv_get(b, "ts")),
                                    .T = tsj ? (uint32_t)tsj->n : 0, .targets = tsj ? targets : NULL};
            cr_assert_eq(xpl_pub_send_fused(p, &fb), 0, "%s: %s", e->name, xpl_strerror());
        } else {
            xpl_batch_t batch = {.model = model, .B = (uint32_t)ids->n, .ids = id,
                                 .dtype = XPL_F32, .attn = attn, .grad = grad,
                                 .target = tj ? target : NULL, .y = yj ? y : NULL,
                                 .ts = jv_int(jv_get(b, "ts")), .rel = rel,
                                 .T = tsj ? (uint32_t)tsj->n : 0, .targets = tsj ? targets : NULL};
            cr_assert_eq(xpl_pub_send(p, &batch), 0, "%s: %s", e->name, xpl_strerror());
        }
        zmq_msg_t topic, body;
        zmq_msg_init(&topic);
        zmq_msg_init(&body);
        zmq_pollitem_t it = {sub, 0, ZMQ_POLLIN, 0};
        cr_assert_eq(zmq_poll(&it, 1, 5000), 1, "%s: nothing sent", e->name);
        zmq_msg_recv(&topic, sub, 0);
        zmq_msg_recv(&body, sub, 0);
        cr_assert(zmq_msg_size(&topic) == e->len[0] &&
                  memcmp(zmq_msg_data(&topic), e->frame[0], e->len[0]) == 0, "%s: topic", e->name);
        static const char *none[] = {NULL};
        assert_mp_eq(zmq_msg_data(&body), zmq_msg_size(&body), b, none, e->name);
        assert_same_message(zmq_msg_data(&body), zmq_msg_size(&body), e, none);
        zmq_msg_close(&topic);
        zmq_msg_close(&body);
        free(attn);
        free(grad);
        free(rel);
        free(fattn);
        free(fgrad);
        free(imp);
        free(conf);
        ex_free(e);
    }
    zmq_close(sub);
    zmq_ctx_term(ctx);
    xpl_pub_destroy(&p);
}
