/*  bench_merge: what an aggregator pays to rebuild one model's merged
    state from its shards' whole states (daemon/aggregate.c), as a function
    of the number of shards S, features F and methods M, in process.

    One shard state per model is what daemon/aggregate_state.c sends and
    reads: per method an aggregate over all trades (agg_save/agg_load) and
    one per target class (2 classes here), a time-decayed mean
    (evdecay_save/_load), event-time windows (evwin_save/_load: 32 closed
    windows kept plus the open ones, all of them holding trades), and the
    head statistics (L=4, H=8). A rebuild decodes S such records and merges
    them (agg_merge, evdecay_merge, evwin_merge, agg_heads_merge) into an
    empty state. Reported: CPU microseconds per rebuild (median of
    repetitions), the bytes of one shard's state, and the decode share.

    A model's rebuild happens when one of its shards sends a new state,
    every glob interval (1 s by default) per shard, so the aggregator's load
    is about S x models x (rebuild / S) per second: see the README,
    "Sharding".

    usage: bench_merge [--reps N]  */
#define _GNU_SOURCE
#include "agg.h"
#include "evwin.h"
#include "snap.h"
#include "support.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CLASSES 2
#define HL 4
#define HH 8
#define KEEP 32
#define SEC 1000000000LL

typedef struct {
    uint32_t nf, methods;
    agg_t *all, *cls;           /* [methods], [methods * CLASSES] */
    evdecay_t *evd;             /* [methods] */
    evwin_t *evw;               /* [methods] */
    agg_heads_t heads;
} state_t;

static void
s_state_init(state_t *s, uint32_t nf, uint32_t methods)
{
    s->nf = nf;
    s->methods = methods;
    s->all = calloc(methods, sizeof *s->all);
    s->cls = calloc(methods * CLASSES, sizeof *s->cls);
    s->evd = calloc(methods, sizeof *s->evd);
    s->evw = calloc(methods, sizeof *s->evw);
    for (uint32_t m = 0; m < methods; m++) {
        agg_init(&s->all[m], nf, 0);
        for (int c = 0; c < CLASSES; c++)
            agg_init(&s->cls[m * CLASSES + c], nf, 0);
        evdecay_init(&s->evd[m], nf, 3 * SEC);
        evwin_init(&s->evw[m], nf, SEC, SEC / 2, KEEP);
    }
    agg_heads_init(&s->heads, HL, HH);
}

static void
s_state_free(state_t *s)
{
    for (uint32_t m = 0; m < s->methods; m++) {
        agg_destroy(&s->all[m]);
        for (int c = 0; c < CLASSES; c++)
            agg_destroy(&s->cls[m * CLASSES + c]);
        evdecay_destroy(&s->evd[m]);
        evwin_destroy(&s->evw[m]);
    }
    agg_heads_destroy(&s->heads);
    free(s->all);
    free(s->cls);
    free(s->evd);
    free(s->evw);
}

static void
s_state_reset(state_t *s)
{
    for (uint32_t m = 0; m < s->methods; m++) {
        agg_reset(&s->all[m]);
        for (int c = 0; c < CLASSES; c++)
            agg_reset(&s->cls[m * CLASSES + c]);
        evdecay_reset(&s->evd[m]);
        evwin_reset(&s->evw[m]);
    }
    agg_reset(&s->heads.importance);
    agg_reset(&s->heads.confidence);
}

/* A shard's state after 40 s of trades, 20 per second. */
static void
s_state_fill(state_t *s, rng_t *r)
{
    float *x = malloc(s->nf * sizeof *x), h[HL * HH];
    for (int t = 0; t < 800; t++) {
        for (uint32_t j = 0; j < s->nf; j++)
            x[j] = (float)rng_uniform(r);
        for (int j = 0; j < HL * HH; j++)
            h[j] = (float)rng_uniform(r);
        int64_t ts = 1796169600 * SEC + t * (SEC / 20);
        for (uint32_t m = 0; m < s->methods; m++) {
            agg_update(&s->all[m], x);
            agg_update(&s->cls[m * CLASSES + t % CLASSES], x);
            evdecay_add(&s->evd[m], ts, x);
            evwin_add(&s->evw[m], ts, x, NULL, NULL);
        }
        agg_heads_update(&s->heads, h, h);
    }
    free(x);
}

static void
s_save(msgpack_packer *pk, const state_t *s)
{
    msgpack_pack_array(pk, s->methods * (2 + CLASSES + 1) + 1);
    for (uint32_t m = 0; m < s->methods; m++) {
        agg_save(pk, &s->all[m]);
        for (int c = 0; c < CLASSES; c++)
            agg_save(pk, &s->cls[m * CLASSES + c]);
        evdecay_save(pk, &s->evd[m]);
        evwin_save(pk, &s->evw[m]);
    }
    agg_heads_save(pk, &s->heads);
}

/* Decode one shard's record into tmp and merge it into dst. */
static int
s_load_merge(const void *buf, size_t len, state_t *tmp, state_t *dst, bool merge)
{
    snap_rd_t d;
    snap_rd_init(&d, buf, len);
    uint32_t n;
    if (snap_get_array(&d, &n, "state"))
        return -1;
    for (uint32_t m = 0; m < tmp->methods; m++) {
        if (agg_load(&d, &tmp->all[m], SNAP_V2))
            return -1;
        for (int c = 0; c < CLASSES; c++)
            if (agg_load(&d, &tmp->cls[m * CLASSES + c], SNAP_V2))
                return -1;
        if (evdecay_load(&d, &tmp->evd[m]) || evwin_load(&d, &tmp->evw[m]))
            return -1;
        if (!merge)
            continue;
        agg_merge(&dst->all[m], &tmp->all[m]);
        for (int c = 0; c < CLASSES; c++)
            agg_merge(&dst->cls[m * CLASSES + c], &tmp->cls[m * CLASSES + c]);
        evdecay_merge(&dst->evd[m], &tmp->evd[m]);
        evwin_merge(&dst->evw[m], &tmp->evw[m]);
    }
    if (agg_heads_load(&d, &tmp->heads, SNAP_V2))
        return -1;
    if (merge)
        agg_heads_merge(&dst->heads, &tmp->heads);
    return 0;
}

static double
s_cpu_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int
s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int
main(int argc, char **argv)
{
    int reps = 7;
    for (int i = 1; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--reps") == 0)
            reps = atoi(argv[i + 1]) > 0 ? atoi(argv[i + 1]) : reps;
    const uint32_t shards[] = {1, 2, 4, 8, 16}, feats[] = {16, 64, 256}, methods[] = {1, 4, 8};
    printf("| shards | features | methods | state bytes/shard | rebuild us (CPU) | decode share |\n");
    printf("|---|---|---|---|---|---|\n");
    rng_t r;
    rng_seed(&r, 1);
    for (size_t fi = 0; fi < sizeof feats / sizeof *feats; fi++)
        for (size_t mi = 0; mi < sizeof methods / sizeof *methods; mi++) {
            uint32_t nf = feats[fi], nm = methods[mi];
            state_t src, tmp, dst;
            s_state_init(&src, nf, nm);
            s_state_init(&tmp, nf, nm);
            s_state_init(&dst, nf, nm);
            s_state_fill(&src, &r);
            msgpack_sbuffer sb;
            msgpack_sbuffer_init(&sb);
            msgpack_packer pk;
            msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
            s_save(&pk, &src);
            for (size_t si = 0; si < sizeof shards / sizeof *shards; si++) {
                uint32_t S = shards[si];
                double full[64], dec[64];
                int inner = (int)(20000 / (S * nm * nf / 16 + 1)) + 1;
                for (int rep = 0; rep < reps && rep < 64; rep++) {
                    double t0 = s_cpu_us();
                    for (int it = 0; it < inner; it++) {
                        s_state_reset(&dst);
                        for (uint32_t k = 0; k < S; k++)
                            if (s_load_merge(sb.data, sb.size, &tmp, &dst, true))
                                return 1;
                    }
                    double t1 = s_cpu_us();
                    for (int it = 0; it < inner; it++)
                        for (uint32_t k = 0; k < S; k++)
                            if (s_load_merge(sb.data, sb.size, &tmp, &dst, false))
                                return 1;
                    double t2 = s_cpu_us();
                    full[rep] = (t1 - t0) / inner;
                    dec[rep] = (t2 - t1) / inner;
                }
                int n = reps < 64 ? reps : 64;
                qsort(full, (size_t)n, sizeof *full, s_cmp);
                qsort(dec, (size_t)n, sizeof *dec, s_cmp);
                printf("| %u | %u | %u | %zu | %.1f | %.0f%% |\n", S, nf, nm, sb.size, full[n / 2],
                       100.0 * dec[n / 2] / full[n / 2]);
                fflush(stdout);
            }
            msgpack_sbuffer_destroy(&sb);
            s_state_free(&src);
            s_state_free(&tmp);
            s_state_free(&dst);
        }
    return 0;
}
