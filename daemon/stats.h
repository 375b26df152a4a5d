/*  stats: the daemon's counters and latency histograms.

    One owner (the main loop) updates them; the query handler and the
    metrics endpoint read them. Latencies go into a log-linear histogram
    (16 buckets per power of two: within 6.25%) that answers
    percentiles without storing samples and never allocates.  */
#ifndef XPLD_STATS_H
#define XPLD_STATS_H

#include "models.h"
#include "wire.h"

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#define HIST_BUCKETS 976     /* 32 exact + 16 per octave up to 2^64 */
#define STATS_LE_COUNT 16

/* Bounds (ns) of the Prometheus latency histogram: 10 us to 1 s. */
extern const uint64_t stats_le_bounds_ns[STATS_LE_COUNT];

typedef struct {
    uint64_t count;
    uint64_t max;
    double sum;
    uint64_t buckets[HIST_BUCKETS];
} hist_t;

typedef struct {
    uint64_t received;          /* ingest messages */
    uint64_t received_trades;   /* trades in accepted-for-decoding messages */
    uint64_t explained;         /* trades explained */
    uint64_t published;         /* messages sent on PUB */
    uint64_t dropped;           /* PUB sends refused */
    uint64_t lost;              /* ingest messages missing from seq gaps */
    uint64_t restarts;          /* publisher restarts (seq went back) */
    uint64_t rejected_total;
    uint64_t rejected[XR_NREASONS];
    uint64_t queries;
    uint64_t query_errors;      /* replies with ok: false */
    uint64_t query_dropped;     /* requests that could not be answered */
    uint64_t query_too_large;   /* requests over query.max_size (answered bad_request) */
    uint64_t snapshots;         /* state snapshots written */
    uint64_t snapshot_errors;   /* state snapshots that failed */
    hist_t latency;             /* ns, ingest receipt by the socket -> trade published */
    uint64_t latency_le[STATS_LE_COUNT];    /* cumulative, at stats_le_bounds_ns */
    /* Event-time latency: wall clock at publication minus the trade's own
       "ts" (clamped at 0; the publisher's clock, so skew shows here). */
    hist_t latency_ts;
    uint64_t latency_ts_le[STATS_LE_COUNT];
    uint64_t attention_warned;  /* trades explained although their attention failed the check */
    int64_t start_ns;           /* CLOCK_MONOTONIC at start */
} stats_t;

void stats_init(stats_t *s);

/* ---- the counters, listed once -------------------------------------------

   Every daemon-wide counter is a row of stats_counters: where its value
   lives, its key in the `stats` reply's "counters" map, its Prometheus
   family and help text. The stats reply (stats_pack_counters) and the
   metrics exposition walk this table, so a counter is added in one place.
   Rows are in the order of the stats reply. A labelled row is an array of
   counters (one per label value): `name_<label>` keys in the stats reply,
   one family with a `label` label in the metrics. Most live in stats_t;
   the cache's and the ZAP handler's live with their owners. */
typedef enum { STATS_SRC_STATS = 0, STATS_SRC_CACHE, STATS_SRC_AUTH } stats_src_t;

/* The counters' owners: stats_t, cache_t, auth_t; a NULL owner's
   counters read 0. */
typedef struct {
    const stats_t *stats;
    const void *cache;      /* const cache_t * */
    const void *auth;       /* const auth_t * */
} stats_view_t;

typedef struct {
    const char *name;       /* key in the stats reply's counters, NULL: not there */
    const char *metric;     /* counter family after "xplaind_", NULL: not exported */
    const char *help;
    stats_src_t src;
    size_t offset;          /* of its uint64_t (labelled: uint64_t[]) in the owner */
    const char *label;      /* label of a labelled row, NULL: one value */
    const char *(*label_name)(int k);
    int first, end;         /* label indices [first, end) */
} stats_counter_t;

extern const stats_counter_t stats_counters[];
extern const size_t stats_ncounters;

/* Value of a row (of label index k, for a labelled row). */
uint64_t stats_counter_value(const stats_counter_t *c, const stats_view_t *v, int k);

/* The stats reply's "counters" map. */
void stats_pack_counters(msgpack_packer *pk, const stats_view_t *v);

/* Per-model counters (model_t), listed once the same way: the models and
   stats replies' model entries (the rows with a name), the per-model
   metric families (the rows with a metric) and the snapshot (every row,
   in this order) walk this table. */
typedef struct {
    const char *key;        /* key in a snapshot's model counters (the field's name) */
    const char *name;       /* key in a model's entry, NULL: not there */
    const char *metric;     /* counter family after "xplaind_" (label model), NULL: none */
    const char *help;
    size_t offset;          /* of its uint64_t in model_t */
} stats_model_counter_t;

extern const stats_model_counter_t stats_model_counters[];
extern const size_t stats_nmodel_counters;

static inline uint64_t
stats_model_value(const stats_model_counter_t *c, const model_t *md)
{
    return *(const uint64_t *)((const char *)md + c->offset);
}

/* Rows with a name (the pairs stats_pack_model writes). */
uint32_t stats_model_named(void);
void stats_pack_model(msgpack_packer *pk, const model_t *md);

/* A model's counters in a snapshot, keyed: a map {key: uint64} of every
   row, in table order. A loader reading such a map stores each value
   through stats_model_counter_ptr (NULL: a counter this daemon does not
   keep, to be skipped; a counter the snapshot lacks stays 0). */
void stats_model_save_keyed(msgpack_packer *pk, const model_t *md);
uint64_t *stats_model_counter_ptr(model_t *md, const void *key, size_t len);

/* The first snapshot format: every row as a bare uint64, in table order
   (the order must not change). Load reads them back through `get` (a
   reader of the snapshot's next uint64; nonzero: fail) and returns 0 or
   get's failure. */
void stats_model_save(msgpack_packer *pk, const model_t *md);
int stats_model_load(model_t *md, int (*get)(void *rd, uint64_t *v), void *rd);

/* Record one trade's latency (ns): the histogram and the Prometheus
   buckets. */
void stats_latency(stats_t *s, uint64_t ns);

/* Record one trade's event-time latency (ns, wall clock minus its ts). */
void stats_latency_ts(stats_t *s, int64_t ns);

/* Record one value (ns) in a histogram. */
void hist_add(hist_t *h, uint64_t v);

/* Value at quantile q in [0, 1] (upper edge of its bucket); 0 if empty. */
uint64_t hist_quantile(const hist_t *h, double q);

/* Upper edge of bucket `i` (values in bucket i are <= this). */
uint64_t hist_bucket_upper(int i);

/* Monotonic and wall clocks in ns. */
int64_t now_mono_ns(void);
int64_t now_wall_ns(void);

#endif
