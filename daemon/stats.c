/*  stats: counters and log-linear histograms. See stats.h.  */
#include "stats.h"

#include <string.h>
#include <time.h>

const uint64_t stats_le_bounds_ns[STATS_LE_COUNT] = {
    10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
    5000000, 10000000, 25000000, 50000000, 100000000, 250000000, 500000000, 1000000000};

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
