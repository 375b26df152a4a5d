/*  query: the ROUTER request/reply ops of proto/queries.md.

    query_handle() reads one request body and writes exactly one reply
    into s->qbuf, whatever the request holds: malformed requests get
    {"ok": false, "code": "bad_request", ...}. The handler reads the other
    modules' state through their functions and changes none of it, except
    through ops meant to (baseline, reference).  */
#ifndef XPLD_QUERY_H
#define XPLD_QUERY_H

#include "mpr.h"
#include "server.h"

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

/* Answer one request body; the reply is in s->qbuf. */
void query_handle(server_t *s, const void *body, size_t len);

/* Write an error reply {"ok": false, "code", "error"} into s->qbuf. */
void query_reply_error(server_t *s, const char *code, const char *error);

/* For op handlers: the value of argument `name`, or NULL. */
const mpr_obj_t *qreq_arg(const qreq_t *q, const char *name, mpr_t *items);

/* For op handlers: fail with a code and a message; returns -1. */
int qreq_fail(qreq_t *q, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* For op handlers: start an ok reply with `fields` more key/value pairs. */
void qreply_ok(msgpack_packer *pk, size_t fields);

/* For op handlers: the model named by the "model" argument, or fail. */
model_t *qreq_model(server_t *s, qreq_t *q);

#endif
