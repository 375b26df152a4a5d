/*  server: the daemon's state and its main loop.

    One thread owns everything here. The loop polls the ingest SUB, the
    query ROUTER and a signal self-pipe; an ingest message goes decode -> explain
    -> cache -> publish before the next one is read, so there is no queue
    to grow and no lock to take.  */
#ifndef XPLD_SERVER_H
#define XPLD_SERVER_H

#include "auth.h"
#include "cache.h"
#include "config.h"
#include "models.h"
#include "stats.h"
#include "wire.h"
#include "xmath.h"
#include "flow.h"
#include "global.h"
#include "metrics.h"

#include <msgpack.h>
#include <stdbool.h>

typedef struct demo_t demo_t;

typedef struct server_t {
    config_t cfg;
    int argc;
    char **argv;

    void *zctx;
    void *sub;          /* ingest */
    void *pub;          /* xpl/ glob/ drift/ heads/ */
    void *router;       /* queries */
    int sigfd;          /* read end of the signal self-pipe */
    bool stop;

    wire_decoder_t dec;
    xm_work_t *work;
    xm_opts_t opts;
    models_t models;
    global_t global;
    cache_t cache;
    stats_t stats;
    metrics_t metrics;
    auth_t auth;

    msgpack_sbuffer pbuf;   /* publish encoder, reused */
    msgpack_packer ppk;
    msgpack_sbuffer qbuf;   /* query replies, reused */
    msgpack_packer qpk;

    /* Scratch for the trade query (full matrices, on-demand flow). */
    float *mat, *tmp, *fout;
    size_t cap_mat;
    flow_work_t *qflow;
    struct qworker_t *qworker;  /* large trade replies (qjob.h) */
    void *qenv;                 /* zmq_msg_t[]: envelope of the request being handled */
    int qenv_n;
    bool qdeferred;             /* that request's reply went to the worker */

    demo_t *demo;
    int status;                 /* exit status the process will have (server_destroy) */

    /* Ingest receipt clock (see s_ingest_burst): when the ingest socket
       was last seen empty, and the receipt time the current burst's
       latencies are measured from. */
    int64_t ingest_empty_ns;
    int64_t ingest_base_ns;
    uint64_t ingest_bytes_untrimmed;    /* ingest bytes read since the heap was last trimmed */
} server_t;

/* Set up sockets and state from s->cfg (already loaded). Returns 0, or -1
   with the reason logged. */
int server_init(server_t *s);

/* Run until SIGTERM/SIGINT; returns the process exit status. */
int server_run(server_t *s);

/* Close everything. Set s->status first: with CURVE on, an abort inside
   libzmq's socket teardown exits with it (see server.c). */
void server_destroy(server_t *s);

/* Apply the explain options of the current config (methods, fusion, ...). */
void server_apply_options(server_t *s);

#endif
