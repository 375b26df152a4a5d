/*  stats: counters and log-linear histograms. See stats.h.  */
#include "stats.h"

#include "auth.h"
#include "cache.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

const uint64_t stats_le_bounds_ns[STATS_LE_COUNT] = {
    10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
    5000000, 10000000, 25000000, 50000000, 100000000, 250000000, 500000000, 1000000000};

/* ---- the counter tables ---------------------------------------------------- */

static const char *
s_auth_kind(int k)
{
    return auth_kind_names[k];
}

static const char *
s_reason(int k)
{
    return xr_reason_name((xr_reason_t)k);
}

#define ST(f) STATS_SRC_STATS, offsetof(stats_t, f)

const stats_counter_t stats_counters[] = {
    {"received", "received_messages_total", "Ingest messages received.", ST(received)},
    {"received_trades", "received_trades_total", "Trades in ingest messages that decoded.",
     ST(received_trades)},
    {"explained", "explained_trades_total", "Trades explained and published.", ST(explained)},
    {"published", "published_messages_total", "Messages sent on the PUB socket.", ST(published)},
    /* exported by reason, the labelled row below */
    {"rejected", NULL, "Ingest messages (or trades, for nonfinite) rejected.", ST(rejected_total)},
    {"lost", "lost_messages_total", "Ingest messages missing from publisher seq gaps.", ST(lost)},
    {"restarts", "publisher_restarts_total", "Publisher restarts (seq went back).", ST(restarts)},
    {"dropped", "dropped_messages_total", "PUB sends refused by ZeroMQ.", ST(dropped)},
    {"queries", "queries_total", "Queries answered.", ST(queries)},
    {"query_errors", "query_errors_total", "Queries answered with ok: false.", ST(query_errors)},
    {"query_dropped", "query_dropped_total", "Queries that could not be answered.", ST(query_dropped)},
    {"cache_too_big", NULL, "Trades larger than the whole recent-trade cache budget (not cached).",
     STATS_SRC_CACHE, offsetof(cache_t, too_big)},
    {"snapshots", "snapshots_total", "State snapshots written.", ST(snapshots)},
    {"snapshot_errors", "snapshot_errors_total", "State snapshots that failed.", ST(snapshot_errors)},
    {"auth_admitted", "auth_admitted_total", "CURVE peers admitted by the ZAP handler.",
     STATS_SRC_AUTH, offsetof(auth_t, admitted)},
    {"auth_refused", "auth_refused_total", "CURVE peers refused, every kind.", STATS_SRC_AUTH,
     offsetof(auth_t, refused)},
    {"attention_warned", "attention_warned_total", "Trades explained although their attention rows "
     "failed the check (attention-check warn).", ST(attention_warned)},
    {"query_too_large", "query_too_large_total",
     "Queries over query.max_size (answered bad_request).", ST(query_too_large)},
    {"auth_refused", "auth_handshake_failures_total", "CURVE handshakes that failed, by kind "
     "(incomplete: connection lost during the handshake).", STATS_SRC_AUTH,
     offsetof(auth_t, by_kind), "kind", s_auth_kind, 0, 5},
    {NULL, "rejected_total", "Ingest messages (or trades, for nonfinite) rejected, by reason.",
     ST(rejected), "reason", s_reason, 1, XR_NREASONS},
};
const size_t stats_ncounters = sizeof stats_counters / sizeof *stats_counters;

#undef ST

uint64_t
stats_counter_value(const stats_counter_t *c, const stats_view_t *v, int k)
{
    const void *owner = c->src == STATS_SRC_STATS ? (const void *)v->stats
                        : c->src == STATS_SRC_CACHE ? v->cache : v->auth;
    if (!owner)
        return 0;       /* an owner the daemon runs without (no auth in a test) */
    const uint64_t *p = (const uint64_t *)((const char *)owner + c->offset);
    return c->label ? p[k] : p[0];
}

void
stats_pack_counters(msgpack_packer *pk, const stats_view_t *v)
{
    uint32_t n = 0;
    for (size_t r = 0; r < stats_ncounters; r++) {
        const stats_counter_t *c = &stats_counters[r];
        if (c->name)
            n += c->label ? (uint32_t)(c->end - c->first) : 1;
    }
    msgpack_pack_map(pk, n);
    for (size_t r = 0; r < stats_ncounters; r++) {
        const stats_counter_t *c = &stats_counters[r];
        if (!c->name)
            continue;
        for (int k = c->label ? c->first : 0; k < (c->label ? c->end : 1); k++) {
            char key[64];
            int len = c->label ? snprintf(key, sizeof key, "%s_%s", c->name, c->label_name(k))
                               : snprintf(key, sizeof key, "%s", c->name);
            msgpack_pack_str(pk, (size_t)len);
            msgpack_pack_str_body(pk, key, (size_t)len);
            msgpack_pack_uint64(pk, stats_counter_value(c, v, k));
        }
    }
}

#define MD(f) offsetof(model_t, f)

const stats_model_counter_t stats_model_counters[] = {
    {"received", "received", "model_received_messages_total", "Ingest messages received per model.",
     MD(received)},
    {"trades", "trades", NULL, "Trades in the model's messages that decoded.", MD(trades)},
    {"explained", "explained", "model_explained_trades_total", "Trades explained per model.",
     MD(explained)},
    {"rejected", "rejected", "model_rejected_total", "Rejections per model.", MD(rejected)},
    {"lost", "lost", "model_lost_messages_total", "Lost ingest messages per model.", MD(lost)},
    {"restarts", "restarts", NULL, "Publisher restarts (seq went back).", MD(restarts)},
    {"xpl_seq", NULL, NULL, "Next seq on xpl/<model>.", MD(xpl_seq)},
    {"flow_counter", NULL, NULL, "Trades seen, for flow sampling.", MD(flow_counter)},
};
const size_t stats_nmodel_counters = sizeof stats_model_counters / sizeof *stats_model_counters;

#undef MD

uint32_t
stats_model_named(void)
{
    uint32_t n = 0;
    for (size_t r = 0; r < stats_nmodel_counters; r++)
        n += stats_model_counters[r].name != NULL;
    return n;
}

void
stats_pack_model(msgpack_packer *pk, const model_t *md)
{
    for (size_t r = 0; r < stats_nmodel_counters; r++) {
        const stats_model_counter_t *c = &stats_model_counters[r];
        if (!c->name)
            continue;
        size_t len = strlen(c->name);
        msgpack_pack_str(pk, len);
        msgpack_pack_str_body(pk, c->name, len);
        msgpack_pack_uint64(pk, stats_model_value(c, md));
    }
}

void
stats_model_save_keyed(msgpack_packer *pk, const model_t *md)
{
    msgpack_pack_map(pk, stats_nmodel_counters);
    for (size_t r = 0; r < stats_nmodel_counters; r++) {
        const stats_model_counter_t *c = &stats_model_counters[r];
        size_t len = strlen(c->key);
        msgpack_pack_str(pk, len);
        msgpack_pack_str_body(pk, c->key, len);
        msgpack_pack_uint64(pk, stats_model_value(c, md));
    }
}

uint64_t *
stats_model_counter_ptr(model_t *md, const void *key, size_t len)
{
    for (size_t r = 0; r < stats_nmodel_counters; r++) {
        const stats_model_counter_t *c = &stats_model_counters[r];
        if (strlen(c->key) == len && memcmp(c->key, key, len) == 0)
            return (uint64_t *)((char *)md + c->offset);
    }
    return NULL;
}

void
stats_model_save(msgpack_packer *pk, const model_t *md)
{
    for (size_t r = 0; r < stats_nmodel_counters; r++)
        msgpack_pack_uint64(pk, stats_model_value(&stats_model_counters[r], md));
}

int
stats_model_load(model_t *md, int (*get)(void *rd, uint64_t *v), void *rd)
{
    for (size_t r = 0; r < stats_nmodel_counters; r++) {
        int rc = get(rd, (uint64_t *)((char *)md + stats_model_counters[r].offset));
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- latencies --------------------------------------------------------------- */

void
stats_latency(stats_t *s, uint64_t ns)
{
    hist_add(&s->latency, ns);
    for (int k = STATS_LE_COUNT - 1; k >= 0 && ns <= stats_le_bounds_ns[k]; k--)
        s->latency_le[k]++;
}

void
stats_latency_ts(stats_t *s, int64_t ns)
{
    uint64_t v = ns > 0 ? (uint64_t)ns : 0;
    hist_add(&s->latency_ts, v);
    for (int k = STATS_LE_COUNT - 1; k >= 0 && v <= stats_le_bounds_ns[k]; k--)
        s->latency_ts_le[k]++;
}

void
stats_init(stats_t *s)
{
    memset(s, 0, sizeof *s);
    s->start_ns = now_mono_ns();
}

/* Values below 32 have a bucket each; above, 16 buckets per octave. */
static int
s_bucket(uint64_t v)
{
    if (v < 32)
        return (int)v;
    int e = 63 - __builtin_clzll(v);
    return 32 + (e - 5) * 16 + (int)((v >> (e - 4)) & 15);
}

uint64_t
hist_bucket_upper(int i)
{
    if (i < 32)
        return (uint64_t)i;
    if (i >= HIST_BUCKETS - 1)
        return UINT64_MAX;      /* [31 * 2^59, 2^64 - 1] */
    int e = (i - 32) / 16 + 5, sub = (i - 32) % 16;
    return ((16ull + (uint64_t)sub + 1) << (e - 4)) - 1;
}

void
hist_add(hist_t *h, uint64_t v)
{
    h->buckets[s_bucket(v)]++;
    h->count++;
    h->sum += (double)v;
    if (v > h->max)
        h->max = v;
}

uint64_t
hist_quantile(const hist_t *h, double q)
{
    if (h->count == 0)
        return 0;
    q = q < 0 ? 0 : q > 1 ? 1 : q;
    uint64_t rank = (uint64_t)(q * (double)h->count);
    if (rank >= h->count)
        rank = h->count - 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen > rank) {
            uint64_t up = hist_bucket_upper(i);
            return up < h->max ? up : h->max;
        }
    }
    return h->max;
}

int64_t
now_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t
now_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
