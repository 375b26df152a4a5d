/*  qjob: the heavy part of a `trade` reply, built off the main loop.

    The full n x n matrices of a trade (L matrix products each) and an
    on-demand flow (a max-flow per token) can take seconds for a large
    trade; done in the main loop they stop ingest for that long and its
    queue overflows. A trade query whose work is estimated above
    QJOB_MIN_WORK is handed to one worker thread instead, with copies of
    everything it needs (the cache entry may be replaced meanwhile): the
    reply's head, encoded by the main loop, the attributions, the
    per-layer matrices and the client's envelope. The worker appends the
    attributions (with flow) and the matrices, and wakes the main loop
    through a pipe; the main loop sends the reply.

    One job at a time: while it runs the main loop reads no further
    queries (replies keep their request order, proto/queries.md) but goes
    on with ingest, which is what the thread is for. The worker asks for a
    lower CPU priority (nice +10) than the main loop; under the systemd
    unit, whose syscall filter denies @resources with EPERM, it keeps the
    main loop's priority.  */
#ifndef XPLD_QJOB_H
#define XPLD_QJOB_H

#include "xmath.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Estimated floating-point work (multiply-adds) above which a trade
   reply goes to the worker: about 10 ms of one core. */
#define QJOB_MIN_WORK (32ull << 20)

#define QJOB_MAX_ENV 16

typedef struct {
    /* Envelope of the request: frames to send before the reply. */
    int nenv;
    size_t env_len[QJOB_MAX_ENV];
    uint8_t *env[QJOB_MAX_ENV];

    /* The reply: its head is written by the main loop, up to and
       including the "attr" key; the worker appends the rest. */
    msgpack_sbuffer buf;

    xm_shape_t shape;
    uint32_t nf;
    unsigned methods;           /* attr[] given (flow too when already computed) */
    bool want_flow;             /* compute attr flow from `flow` */
    float *attr[XM_NMETHODS];   /* nf values each, owned */
    float *roll, *flow, *grad;  /* [L][n][n], owned (flow may be NULL) */
    bool resnorm;
    uint32_t start;             /* resolved start layer of the matrices */

    int failed;                 /* set by the worker: out of memory */
} qjob_t;

typedef struct qworker_t qworker_t;

/* Estimated work of a trade reply (see QJOB_MIN_WORK). */
uint64_t qjob_work(const xm_shape_t *sh, bool grad, bool flow);

/* A new empty job (NULL when out of memory); qjob_free releases it. */
qjob_t *qjob_new(void);
void qjob_free(qjob_t *j);

/* Start the worker thread. NULL (logged) when it cannot start. */
qworker_t *qworker_new(void);

/* Read end of the wake-up pipe: poll it for POLLIN. */
int qworker_fd(const qworker_t *w);

/* Is a job submitted and not yet collected? */
bool qworker_busy(const qworker_t *w);

/* Hand a job over (only when not busy). */
void qworker_submit(qworker_t *w, qjob_t *j);

/* The finished job, or NULL while it runs; the caller owns it. */
qjob_t *qworker_collect(qworker_t *w);

/* Wait for a running job, stop the thread, free everything; NULL-safe. */
void qworker_destroy(qworker_t **w);

#endif
