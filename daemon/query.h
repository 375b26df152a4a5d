/*  query: the ROUTER request/reply ops of proto/queries.md.

    query_handle() reads one request body and writes exactly one reply
    into q->buf, whatever the request holds: malformed requests get
    {"ok": false, "code": "bad_request", ...}; a reply that cannot be
    built for want of memory gets "internal". The handler reads the other
    modules' state through their functions and changes none of it, except
    through ops meant to (baseline, reference).

    The ops live by concern: query.c (parsing, dispatch, ping, models,
    schema, stats), query_trade.c (trade), query_global.c (global,
    baseline, reference, drift).

    One op publishes, as the contract says (proto/global.md, "The Clone
    pattern"): `global` on a model's current epoch whose state changed
    since the last glob/ first sends the pending glob/ and heads/ of every
    changed model (publish_changed), so that the reply is exactly the
    state of the seq it names. No other op sends anything on the PUB
    socket.  */
#ifndef XPLD_QUERY_H
#define XPLD_QUERY_H

#include "auth.h"
#include "cache.h"
#include "flow.h"
#include "global.h"
#include "models.h"
#include "mpr.h"
#include "publish.h"
#include "stats.h"
#include "xmath.h"

#include <msgpack.h>

#include <stdbool.h>
#include <stddef.h>

#define QUERY_MAX_ARGS 16

/* A decoded request: its arguments by name (views into the body). */
typedef struct qreq_t {
    int nargs;
    struct {
        mpr_obj_t key;
        mpr_obj_t val;
        mpr_t items;        /* ARRAY/MAP: reader positioned at the items */
    } args[QUERY_MAX_ARGS];
    const char *code;       /* error code when a handler fails */
    char error[192];
} qreq_t;

struct qworker_t;

/* What the query handler reads and writes: the owners' state (wired by
   server.c), the reply buffer, and the request being handled. */
typedef struct query_t {
    models_t *models;
    global_t *global;
    cache_t *cache;
    stats_t *stats;
    const auth_t *auth;         /* counters for the stats reply; may be NULL */
    const xm_opts_t *opts;      /* explain options (is flow on?) */
    publisher_t *pub;           /* for the `global` op (see above) */
    struct qworker_t *worker;   /* large trade replies (qjob.h); may be NULL */
    const struct aggregate_t *agg;  /* an aggregator's shards, for stats; NULL */

    msgpack_sbuffer buf;        /* the reply, reused */
    msgpack_packer pk;

    /* Scratch for the trade op (full matrices, on-demand flow). */
    float *mat, *tmp, *fout;
    size_t cap_mat;
    flow_work_t *flow;

    /* The request being handled: its envelope (zmq_msg_t[]), and whether
       its reply went to the worker instead of q->buf. */
    void *env;
    int env_n;
    bool deferred;
} query_t;

/* Set up the reply buffer and scratch; the owners' pointers are the
   caller's to fill. Returns 0, or -1 when out of memory. */
int query_init(query_t *q);
void query_destroy(query_t *q);

/* Answer one request body; the reply is in q->buf (or, when q->deferred,
   it went to the worker). */
void query_handle(query_t *q, const void *body, size_t len);

/* Write an error reply {"ok": false, "code", "error"} into q->buf. */
void query_reply_error(query_t *q, const char *code, const char *error);

/* For op handlers: the value of argument `name`, or NULL. */
const mpr_obj_t *qreq_arg(const qreq_t *q, const char *name, mpr_t *items);

/* For op handlers: fail with a code and a message; returns -1. */
int qreq_fail(qreq_t *q, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* For op handlers: start an ok reply with `fields` more key/value pairs. */
void qreply_ok(msgpack_packer *pk, size_t fields);

/* For op handlers: the model named by the "model" argument, or fail. */
model_t *qreq_model(query_t *s, qreq_t *q);

/* The ops of query_trade.c and query_global.c, for the dispatch table. */
int query_op_trade(query_t *s, qreq_t *q, msgpack_packer *pk);
int query_op_global(query_t *s, qreq_t *q, msgpack_packer *pk);
int query_op_baseline(query_t *s, qreq_t *q, msgpack_packer *pk);
int query_op_reference(query_t *s, qreq_t *q, msgpack_packer *pk);
int query_op_drift(query_t *s, qreq_t *q, msgpack_packer *pk);

#endif
