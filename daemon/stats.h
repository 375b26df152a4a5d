/*  stats: the daemon's counters and latency histograms.

    One owner (the main loop) updates them; the query handler and the
    metrics endpoint read them. Latencies go into a log-linear histogram
    (16 buckets per power of two: within 6.25%) that answers
    percentiles without storing samples and never allocates.  */
#ifndef XPLD_STATS_H
#define XPLD_STATS_H

#include "wire.h"

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
