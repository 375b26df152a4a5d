/*  aggregate: xplaind as the aggregator of shard daemons (aggregate.shards),
    and the whole-state topic the shards send it (aggregate_state.c).

    The aggregator ingests nothing. It subscribes to state/ on every
    shard's PUB (the shard's whole state of each model, every publish
    interval), keeps the last state of each shard and model, and rebuilds
    the merged state of a model from them whenever one changes: counts,
    means, m2 (Chan), head statistics, time-decayed means and event-time
    windows merge exactly (MATH.md, "Merging across daemons"), into the
    daemon's own global state, so that glob/, heads/ and every query are
    served by the code that serves them in one daemon. Drift runs on the
    merged event-time windows: window k is judged once every shard that is
    not stale has closed it. Its PUB is an XPUB that also forwards the
    shards' xpl/ (the subscriptions it sees for xpl/ go upstream through an
    XSUB connected to every shard), and a `trade` query goes to the shard
    that owns the id (core/shard.h) through a DEALER, its reply back to
    the client.

    A shard from which no state came for aggregate.stale_ms is stale (one
    never heard from: stale_ms after the aggregator started; until then
    it holds every window open, as it may hold trades of any): its
    last state still counts, it is listed in glob/ (stale_shards), the
    stats reply, the metrics and the log, and the next state it sends
    (after a restart, its restored one) replaces it: whole states, never
    deltas, so nothing is counted twice.  */
#ifndef XPLD_AGGREGATE_H
#define XPLD_AGGREGATE_H

#include "global.h"
#include "models.h"
#include "publish.h"
#include "stats.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <zmq.h>

#define AGG_MAX_SHARDS 16
#define AGG_MAX_TOKENS 65536

struct server_t;
typedef struct aggregate_t aggregate_t;

/* ---- the aggregator (aggregate.c) ---------------------------------------- */

/* Connect to the shards of s->cfg (s->pub must be the XPUB, s->router
   bound). NULL with the reason logged. */
aggregate_t *aggregate_new(struct server_t *s);
void aggregate_destroy(aggregate_t **ap);

/* Poll items the aggregator needs (at most AGG_POLL_ITEMS), appended at
   items[*n]. */
#define AGG_POLL_ITEMS (2 * AGG_MAX_SHARDS + 2)
void aggregate_poll_items(aggregate_t *a, zmq_pollitem_t *items, int *n);

/* Handle what the polled items say (items[first..] as aggregate_poll_items
   appended them), and the timers (stale shards, pending trade queries). */
void aggregate_handle(aggregate_t *a, const zmq_pollitem_t *items, int first);

/* Rebuild the merged state of every model a shard sent a new state of
   since the last call: once per publish interval, before glob/ goes out,
   so that a model costs one rebuild (S shard states decoded and merged)
   per interval however its shards' states interleave. */
void aggregate_rebuild(aggregate_t *a);

/* A query the aggregator answers itself (trade: asked of the owning
   shard). True when it took the request (the reply comes later). */
bool aggregate_take_query(aggregate_t *a, zmq_msg_t *env, int nenv, const void *body, size_t len);

/* The stats reply's "shards" entry: array of maps. */
void aggregate_enc_shards(const aggregate_t *a, msgpack_packer *pk);

/* Shards now stale, and known. */
uint32_t aggregate_stale_count(const aggregate_t *a);

/* ---- the shard state (aggregate_state.c) ---------------------------------- */

/* state/<model> of every model with state: a shard's (a NULL), or an
   aggregator's merged state, so that another aggregator can merge
   aggregators (a tree): then the message says which shards it covers
   ("owns") and, per method and segment, the lowest window its shards
   have not all closed ("bound"). `st` gives the daemon-wide rejections. */
void astate_publish(publisher_t *p, const global_t *g, const models_t *models, const stats_t *st,
                    uint32_t k, uint32_t n, const aggregate_t *a);

/* For astate_publish: the shards an aggregator covers (bit k: shard k;
   0 before any reported) and their count; the bound of method m of model
   index mi, overall (seg -1) or of segment seg: false when there is none
   to say (no windows merged). */
uint64_t aggregate_owns(const aggregate_t *a, uint32_t *n);
bool aggregate_bound(const aggregate_t *a, uint32_t mi, int seg, int m, int64_t *bound);

/* Shards a state message may name in "owns". */
#define AGG_MAX_OWNS 64

/* The head of a state message: who sent it and the schema. Views into
   the body. */
typedef struct {
    char model[WIRE_MODEL_MAX + 1];
    uint32_t model_len;
    uint32_t shard, shards, epoch, nf;
    xm_shape_t shape;
    uint32_t ntokens;
    wire_sv_t tokens[AGG_MAX_TOKENS];
    const uint8_t *groups;      /* the schema's feature groups (raw msgpack), or NULL */
    size_t groups_len;
    uint64_t owns;                      /* shards covered: bit k (0: shard >= 64) */
    bool has_rejected;                  /* the sender's daemon-wide rejections: */
    uint64_t rejected_total;
    uint64_t rejected[XR_NREASONS];
} astate_head_t;

int astate_peek(const void *body, size_t len, astate_head_t *h);

/* Scratch for reading one shard's records before merging them. */
typedef struct {
    uint32_t nf;
    bool ready;
    agg_t agg;
    evdecay_t evd;
    evwin_t evw;
    agg_heads_t heads;
} astate_scratch_t;

int astate_scratch_size(astate_scratch_t *sc, uint32_t nf, const global_t *g);
void astate_scratch_destroy(astate_scratch_t *sc);

/* What merging gathered besides the epoch state itself. */
typedef struct {
    uint64_t received, trades, explained, rejected, lost, restarts;
    int64_t last_ts;
    unsigned has_windows;               /* methods with event-time windows */
    int64_t next_close[XM_NMETHODS];    /* lowest next_close over the fresh shards merged */
    /* Set by the caller for each shard: its position, and whether its
       windows hold back closing (false: stale). */
    int shard;
    bool fresh;
    int64_t own_close[XM_NMETHODS];     /* that shard's own next_close (INT64_MAX: none) */
    /* Segments, by the epoch's segment index (NULL when none are kept):
       as next_close and has_windows, per segment and method, and which
       shards (bit: position) sent the segment. */
    int64_t *seg_close;                 /* [max_segments][XM_NMETHODS] */
    unsigned *seg_windows;              /* [max_segments] */
    uint32_t *seg_had;                  /* [max_segments] */
} astate_merged_t;

/* Merge one shard's state message into epoch e (its aggregates add to
   what e holds). 0, or -1 with *why set (e may then hold part of it: the
   caller rebuilds). */
int astate_merge(const void *body, size_t len, global_t *g, gepoch_t *e, astate_scratch_t *sc,
                 astate_merged_t *out, const char **why);

#endif
