/*  server: the daemon's state and its main loop, and the one place that
    wires the modules together: each of them gets the parts it uses
    (global_t, publisher_t, stats_t, models_t, ...), never server_t.

    One thread owns everything here. The loop polls the ingest SUB, the
    query ROUTER and a signal self-pipe; an ingest message goes decode ->
    explain -> cache -> publish before the next one is read, so there is
    no queue to grow and no lock to take.

    The trade path, top to bottom; each stage returns to the one above
    and none calls back up:

      server.c   s_ingest_burst: receive a message, hand its frames to
      ingest.c   ingest_handle: count, reject (named reason) or go on
      wire.c       wire_decode_ingest: frames -> wire_ingest_t
      models.c     models_find/models_add, model_apply_schema_limited,
                   model_track_seq
      xmath.c      xm_explain: one trade -> xm_result_t
      cache.c      cache_put: kept for the trade query
      publish.c    publish_xpl: xpl/<model>
      global.c     global_add: aggregates, heads, drift (state only;
                   returns the windows it closed, alerts included)
      publish.c    publish_drift: drift/<model> for those windows
    and every glob_interval_ms, from the loop:
      publish.c  publish_changed: glob/<model>, heads/<model> of the
                 models global.c marks changed

    Queries: server.c s_query_burst -> query.c query_handle -> the op
    (query.c, query_trade.c, query_global.c) -> the owners' read
    functions, and the encoders publish.c shares with the topics.  */
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
#include "ingest.h"
#include "metrics.h"
#include "publish.h"
#include "query.h"
#include "shard.h"

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

    publisher_t publisher;      /* the four topics, on `pub` */
    ingest_t ingest;            /* views of the above, for ingest_handle */
    query_t query;              /* views of the above, reply buffer, scratch */
    struct qworker_t *qworker;  /* large trade replies (qjob.h) */

    demo_t *demo;
    int status;                 /* exit status the process will have (server_destroy) */

    /* Ingest receipt clock (see s_ingest_burst): when the ingest socket
       was last seen empty, and the receipt time the current burst's
       latencies are measured from. */
    int64_t ingest_empty_ns;
    int64_t ingest_base_ns;
    uint64_t ingest_bytes_untrimmed;    /* ingest bytes read since the heap was last trimmed */

    /* Sharding: "shard/K/N/" when this daemon serves share K of N (its
       topic prefix, stripped before ingest), and the aggregator when it
       runs as one (aggregate.h). */
    char shard_prefix[SHARD_PREFIX_MAX + 1];
    size_t shard_prefix_len;
    struct aggregate_t *agg;
} server_t;

/* Set up sockets and state from s->cfg (already loaded). Returns 0, or -1
   with the reason logged. */
int server_init(server_t *s);

/* Hand every module the parts of s it uses (ingest, query, publisher):
   call again when one of them changes (sockets, worker). server_init
   does; a test that builds a server_t by hand calls it itself. */
void server_wire(server_t *s);

/* Run until SIGTERM/SIGINT; returns the process exit status. */
int server_run(server_t *s);

/* Close everything. Set s->status first: with CURVE on, an abort inside
   libzmq's socket teardown exits with it (see server.c). */
void server_destroy(server_t *s);

/* Apply the explain options of the current config (methods, fusion, ...). */
void server_apply_options(server_t *s);

#endif
