/*  Tests of daemon/cache: the bounded recent-trade cache.

    Besides put/get, these check the cache's own promises through its
    public struct: every byte it holds is counted and stays within the
    budget, hash chains stay consistent through replacement and eviction,
    and a steady stream of one shape reuses the entry buffers instead of
    allocating per trade.  */
#include "cache.h"
#include "support.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A trade to put: every array filled from `seed`, so that a get can
   tell which put it sees. */
typedef struct {
    xm_shape_t shape;
    float *attr[XM_NMETHODS];
    float *roll, *flow, *grad;
    xm_result_t res;
    wire_id_t id;
    char idbuf[40];
    int64_t target;
    double y;
    cache_put_t put;
} trade_t;

static size_t
layer_floats(const xm_shape_t *s)
{
    return (size_t)s->L * s->n * s->n;
}

static void
mk_trade(trade_t *t, uint32_t model, bool str_id, uint64_t idnum, uint32_t L, uint32_t n,
         unsigned methods, bool sep_flow, bool grad, int64_t ts)
{
    memset(t, 0, sizeof *t);
    t->shape = (xm_shape_t){L, 2, n, n > 1 ? (int32_t)n - 1 : -1};
    uint32_t nf = xm_nfeat(&t->shape);
    float base = (float)(ts % 100000);
    t->res.computed = methods;
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(methods & XM_BIT(m)))
            continue;
        t->attr[m] = malloc(nf * sizeof(float) + 1);
        for (uint32_t k = 0; k < nf; k++)
            t->attr[m][k] = base + (float)m * 100.0f + (float)k;
        t->res.attr[m] = t->attr[m];
    }
    size_t lf = layer_floats(&t->shape);
    t->roll = malloc(lf * sizeof(float));
    for (size_t k = 0; k < lf; k++)
        t->roll[k] = base + 0.5f * (float)k;
    t->flow = t->roll;
    if (sep_flow) {
        t->flow = malloc(lf * sizeof(float));
        for (size_t k = 0; k < lf; k++)
            t->flow[k] = base - 0.25f * (float)k;
    }
    if (grad) {
        t->grad = malloc(lf * sizeof(float));
        for (size_t k = 0; k < lf; k++)
            t->grad[k] = base * 2.0f + (float)k;
    }
    if (str_id) {
        snprintf(t->idbuf, sizeof t->idbuf, "%llu", (unsigned long long)idnum);
        t->id = (wire_id_t){.is_str = true, .s = {(const uint8_t *)t->idbuf, (uint32_t)strlen(t->idbuf)}};
    } else {
        t->id = (wire_id_t){.is_str = false, .u = idnum};
    }
    t->target = ts % 3;
    t->y = (double)ts * 0.5;
    t->put = (cache_put_t){.model = model, .epoch = 1 + (uint32_t)(ts % 5), .id = &t->id, .ts = ts,
                           .target = &t->target, .y = &t->y, .shape = &t->shape, .res = &t->res,
                           .roll = t->roll, .flow = t->flow, .grad = t->grad,
                           .resnorm = (ts & 1) != 0};
}

static void
free_trade(trade_t *t)
{
    for (int m = 0; m < XM_NMETHODS; m++)
        free(t->attr[m]);
    if (t->flow != t->roll)
        free(t->flow);
    free(t->roll);
    free(t->grad);
}

/* Everything the entry holds equals what `t` put, and lies in its buffer. */
static void
expect_entry(const cache_entry_t *e, const trade_t *t)
{
    cr_assert_not_null(e, "trade ts=%lld not in the cache", (long long)t->put.ts);
    cr_assert_eq(e->ts, t->put.ts, "got the entry of ts=%lld, want ts=%lld", (long long)e->ts,
                 (long long)t->put.ts);
    cr_assert_eq(e->model, t->put.model);
    cr_assert_eq(e->epoch, t->put.epoch);
    cr_assert_eq(e->id_is_str, t->id.is_str);
    if (t->id.is_str) {
        cr_assert_eq(e->id_len, t->id.s.len);
        cr_assert(memcmp(e->id_s, t->id.s.ptr, e->id_len) == 0 && e->id_s[e->id_len] == '\0');
        cr_assert_neq((const void *)e->id_s, (const void *)t->id.s.ptr, "id kept as a view, not copied");
    } else {
        cr_assert_eq(e->id_u, t->id.u);
    }
    cr_assert(e->has_target && e->target == t->target && e->has_y && e->y == t->y);
    cr_assert(e->shape.L == t->shape.L && e->shape.H == t->shape.H && e->shape.n == t->shape.n &&
              e->shape.cls == t->shape.cls);
    cr_assert_eq(e->methods, t->res.computed);
    cr_assert_eq(e->resnorm, t->put.resnorm);
    const uint8_t *lo = e->data, *hi = e->data + e->cap;
    uint32_t nf = xm_nfeat(&t->shape);
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(t->res.computed & XM_BIT(m))) {
            cr_assert_null(e->attr[m]);
            continue;
        }
        cr_assert((const uint8_t *)e->attr[m] >= lo && (const uint8_t *)(e->attr[m] + nf) <= hi);
        cr_assert(memcmp(e->attr[m], t->attr[m], nf * sizeof(float)) == 0, "attr[%d] differs", m);
    }
    size_t lb = layer_floats(&t->shape) * sizeof(float);
    cr_assert((const uint8_t *)e->roll >= lo && (const uint8_t *)e->roll + lb <= hi);
    cr_assert(memcmp(e->roll, t->roll, lb) == 0, "rollout layers differ");
    cr_assert((const uint8_t *)e->flow >= lo && (const uint8_t *)e->flow + lb <= hi);
    cr_assert(memcmp(e->flow, t->flow, lb) == 0, "flow layers differ");
    if (t->flow == t->roll)
        cr_assert_eq(e->flow, e->roll, "flow == roll must be stored once");
    if (t->grad) {
        cr_assert((const uint8_t *)e->grad >= lo && (const uint8_t *)e->grad + lb <= hi);
        cr_assert(memcmp(e->grad, t->grad, lb) == 0, "grad layers differ");
    } else {
        cr_assert_null(e->grad);
    }
}

/* Bytes are counted exactly, within budget; chains are consistent: every
   used slot is in exactly one chain (its own bucket's), chains hold only
   used slots and end. */
static void
check_invariants(const cache_t *c)
{
    if (!c->nslots)
        return;
    size_t sum = 0;
    uint32_t used = 0;
    for (uint32_t k = 0; k < c->nslots; k++) {
        sum += c->slots[k].cap;
        cr_assert(c->slots[k].cap == 0 || c->slots[k].data, "slot %u counts a buffer it lacks", k);
        used += c->slots[k].used;
    }
    cr_assert_eq(sum, c->bytes, "bytes %zu but the slots hold %zu", c->bytes, sum);
    cr_assert(c->bytes <= c->budget, "bytes %zu over the budget %zu", c->bytes, c->budget);
    cr_assert(c->count <= c->nslots);
    uint8_t *seen = calloc(c->nslots, 1);
    uint32_t chained = 0;
    for (uint32_t b = 0; b < c->nbuckets; b++) {
        uint32_t steps = 0;
        for (int32_t k = c->buckets[b]; k >= 0; k = c->slots[k].next) {
            cr_assert((uint32_t)k < c->nslots);
            cr_assert(c->slots[k].used, "bucket %u chains the unused slot %d", b, k);
            cr_assert_eq(c->slots[k].hash & (c->nbuckets - 1), b, "slot %d in the wrong bucket", k);
            cr_assert(!seen[k], "slot %d chained twice", k);
            seen[k] = 1;
            chained++;
            cr_assert(++steps <= c->nslots, "cycle in bucket %u", b);
        }
    }
    cr_assert_eq(chained, used, "%u used slots, %u reachable through the buckets", used, chained);
    free(seen);
}

Test(cache, put_get_every_field)
{
    cache_t c;
    cr_assert_eq(cache_init(&c, 16, 1 << 20), 0);
    trade_t a, b;
    mk_trade(&a, 0, true, 12345, 3, 5, XM_CLASSIC_METHODS, true, true, 1001);
    mk_trade(&b, 0, false, 77, 2, 4, XM_BIT(XM_ROLLOUT) | XM_BIT(XM_DIAG), false, false, 1002);
    b.put.target = NULL;
    b.put.y = NULL;
    cr_assert_eq(cache_put(&c, &a.put), 0);
    cr_assert_eq(cache_put(&c, &b.put), 0);
    check_invariants(&c);
    expect_entry(cache_get(&c, 0, &a.id), &a);
    const cache_entry_t *e = cache_get(&c, 0, &b.id);
    cr_assert_not_null(e);
    cr_assert(!e->has_target && !e->has_y);
    b.put.target = &b.target;   /* compare the rest */
    b.put.y = &b.y;
    cr_assert_eq(e->ts, 1002);
    cr_assert(memcmp(e->roll, b.roll, layer_floats(&b.shape) * sizeof(float)) == 0);
    cr_assert_null(e->grad);
    /* The cache holds copies: changing the source changes nothing. */
    a.roll[0] = -1.0f;
    a.attr[XM_ROLLOUT][0] = -1.0f;
    a.idbuf[0] = 'X';
    wire_id_t again = {.is_str = true, .s = {(const uint8_t *)"12345", 5}};
    e = cache_get(&c, 0, &again);
    cr_assert_not_null(e, "entry found only through the caller's id buffer");
    cr_assert(e->roll[0] != -1.0f && e->attr[XM_ROLLOUT][0] != -1.0f);
    /* Absent ids. */
    wire_id_t none = {.is_str = false, .u = 78};
    cr_assert_null(cache_get(&c, 0, &none));
    wire_id_t none_s = {.is_str = true, .s = {(const uint8_t *)"1234", 4}};
    cr_assert_null(cache_get(&c, 0, &none_s), "a prefix of a cached id matched");
    free_trade(&a);
    free_trade(&b);
    cache_destroy(&c);
}

Test(cache, replacing_an_id_keeps_only_the_latest)
{
    cache_t c;
    cache_init(&c, 8, 1 << 20);
    trade_t t[5];
    for (int k = 0; k < 5; k++) {
        /* Same id, other content and other shapes. */
        mk_trade(&t[k], 3, true, 42, 1 + (uint32_t)k % 2, 3 + (uint32_t)k, XM_BIT(XM_ROLLOUT), false,
                 k % 2, 500 + k);
        cr_assert_eq(cache_put(&c, &t[k].put), 0);
        check_invariants(&c);
        expect_entry(cache_get(&c, 3, &t[k].id), &t[k]);
    }
    uint32_t live = 0;
    for (uint32_t k = 0; k < c.nslots; k++)
        live += c.slots[k].used;
    cr_assert_eq(live, 1, "%u live entries for one id", live);
    for (int k = 0; k < 5; k++)
        free_trade(&t[k]);
    cache_destroy(&c);
}

Test(cache, str_and_uint_ids_are_distinct)
{
    cache_t c;
    cache_init(&c, 16, 1 << 20);
    trade_t s1, u1, s0, u0;
    mk_trade(&s1, 0, true, 1, 1, 3, XM_BIT(XM_ROLLOUT), false, false, 11);     /* "1" */
    mk_trade(&u1, 0, false, 1, 1, 3, XM_BIT(XM_ROLLOUT), false, false, 12);    /* 1 */
    mk_trade(&s0, 0, true, 0, 1, 3, XM_BIT(XM_ROLLOUT), false, false, 13);     /* "0" */
    mk_trade(&u0, 0, false, 0, 1, 3, XM_BIT(XM_ROLLOUT), false, false, 14);    /* 0 */
    cache_put(&c, &s1.put);
    cache_put(&c, &u1.put);
    cache_put(&c, &s0.put);
    cache_put(&c, &u0.put);
    expect_entry(cache_get(&c, 0, &s1.id), &s1);
    expect_entry(cache_get(&c, 0, &u1.id), &u1);
    expect_entry(cache_get(&c, 0, &s0.id), &s0);
    expect_entry(cache_get(&c, 0, &u0.id), &u0);
    /* The empty string id and a uint whose bytes spell "1". */
    wire_id_t empty = {.is_str = true, .s = {(const uint8_t *)"", 0}};
    cr_assert_null(cache_get(&c, 0, &empty));
    wire_id_t ascii1 = {.is_str = false, .u = '1'};
    cr_assert_null(cache_get(&c, 0, &ascii1));
    check_invariants(&c);
    free_trade(&s1);
    free_trade(&u1);
    free_trade(&s0);
    free_trade(&u0);
    cache_destroy(&c);
}

Test(cache, models_kept_apart)
{
    cache_t c;
    cache_init(&c, 16, 1 << 20);
    trade_t a, b, b2;
    mk_trade(&a, 0, true, 7, 1, 3, XM_BIT(XM_ROLLOUT), false, false, 1);
    mk_trade(&b, 1, true, 7, 1, 3, XM_BIT(XM_ROLLOUT), false, false, 2);
    mk_trade(&b2, 1, true, 7, 2, 4, XM_BIT(XM_ATTN_MEAN), false, true, 3);
    cache_put(&c, &a.put);
    cache_put(&c, &b.put);
    expect_entry(cache_get(&c, 0, &a.id), &a);
    expect_entry(cache_get(&c, 1, &b.id), &b);
    cache_put(&c, &b2.put);   /* replaces model 1's, not model 0's */
    expect_entry(cache_get(&c, 0, &a.id), &a);
    expect_entry(cache_get(&c, 1, &b2.id), &b2);
    cr_assert_null(cache_get(&c, 2, &a.id));
    check_invariants(&c);
    free_trade(&a);
    free_trade(&b);
    free_trade(&b2);
    cache_destroy(&c);
}

Test(cache, eviction_by_entries_oldest_first)
{
    cache_t c;
    cache_init(&c, 4, 1 << 24);
    trade_t t[12];
    for (int k = 0; k < 12; k++) {
        mk_trade(&t[k], 0, k % 2, (uint64_t)k, 1, 3, XM_BIT(XM_ROLLOUT), false, false, 100 + k);
        cr_assert_eq(cache_put(&c, &t[k].put), 0);
        check_invariants(&c);
        for (int j = 0; j <= k; j++) {
            const cache_entry_t *e = cache_get(&c, 0, &t[j].id);
            if (j > k - 4)
                expect_entry(e, &t[j]);
            else
                cr_assert_null(e, "after %d puts, trade %d (older than the last 4) is still cached", k + 1, j);
        }
    }
    for (int k = 0; k < 12; k++)
        free_trade(&t[k]);
    cache_destroy(&c);
}

Test(cache, eviction_by_bytes_never_over_budget)
{
    /* Trades of several sizes into a budget of a few of them: bytes never
       exceed the budget, the latest trade is always there, the oldest go
       first (a cached trade is never older than an evicted one). */
    trade_t probe;
    mk_trade(&probe, 0, false, 0, 4, 8, XM_CLASSIC_METHODS, true, true, 0);
    cache_t c;
    size_t one = layer_floats(&probe.shape) * sizeof(float) * 3 + 6 * 16 * 2;
    free_trade(&probe);
    cr_assert_eq(cache_init(&c, 1000, one * 5 / 2 + 100), 0);
    rng_t r;
    rng_seed(&r, 3);
    trade_t *t = calloc(300, sizeof *t);
    for (int k = 0; k < 300; k++) {
        uint32_t L = 1 + (uint32_t)(rng_next(&r) % 4), n = 2 + (uint32_t)(rng_next(&r) % 7);
        mk_trade(&t[k], 0, true, (uint64_t)k, L, n, XM_CLASSIC_METHODS, rng_next(&r) % 2,
                 rng_next(&r) % 2, 10 + k);
        cr_assert_eq(cache_put(&c, &t[k].put), 0, "trade %d does not fit", k);
        check_invariants(&c);
        expect_entry(cache_get(&c, 0, &t[k].id), &t[k]);
        int oldest_cached = -1;
        for (int j = 0; j <= k; j++) {
            const cache_entry_t *e = cache_get(&c, 0, &t[j].id);
            if (!e) {
                cr_assert(oldest_cached < 0, "trade %d evicted but the older %d kept", j, oldest_cached);
                continue;
            }
            if (oldest_cached < 0)
                oldest_cached = j;
            expect_entry(e, &t[j]);
        }
        if (k >= 10)
            cr_assert(oldest_cached > 0, "nothing ever evicted: the budget is not enforced");
    }
    for (int k = 0; k < 300; k++)
        free_trade(&t[k]);
    free(t);
    cache_destroy(&c);
}

Test(cache, too_big_is_counted_and_changes_nothing)
{
    cache_t c;
    cache_init(&c, 16, 4096);
    trade_t small, big;
    mk_trade(&small, 0, true, 1, 1, 4, XM_BIT(XM_ROLLOUT), false, false, 1);
    mk_trade(&big, 0, true, 2, 8, 16, XM_CLASSIC_METHODS, true, true, 2);   /* 8 KiB per layer set */
    cr_assert_eq(cache_put(&c, &small.put), 0);
    size_t bytes = c.bytes;
    cr_assert_eq(cache_put(&c, &big.put), -1);
    cr_assert_eq(c.too_big, 1);
    cr_assert_eq(cache_put(&c, &big.put), -1);
    cr_assert_eq(c.too_big, 2);
    cr_assert_eq(c.bytes, bytes, "a refused trade changed the byte count");
    cr_assert_null(cache_get(&c, 0, &big.id));
    expect_entry(cache_get(&c, 0, &small.id), &small);
    check_invariants(&c);
    free_trade(&small);
    free_trade(&big);
    cache_destroy(&c);
}

/* Snapshot of every slot's buffer, as a sorted set: buffers may move
   between slots, but a put that frees or allocates one changes the set. */
static int
cmp_buf(const void *a, const void *b)
{
    const struct { uint8_t *p; size_t cap; } *x = a, *y = b;
    return x->p < y->p ? -1 : x->p > y->p ? 1 : 0;
}

static void
snap(const cache_t *c, uint8_t **data, size_t *cap)
{
    struct { uint8_t *p; size_t cap; } all[c->nslots];
    for (uint32_t k = 0; k < c->nslots; k++) {
        all[k].p = c->slots[k].data;
        all[k].cap = c->slots[k].cap;
    }
    qsort(all, c->nslots, sizeof all[0], cmp_buf);
    for (uint32_t k = 0; k < c->nslots; k++) {
        data[k] = all[k].p;
        cap[k] = all[k].cap;
    }
}

static void
steady_stream(uint32_t entries, size_t budget, int warm, int more)
{
    cache_t c;
    cr_assert_eq(cache_init(&c, entries, budget), 0);
    trade_t t;
    int64_t ts = 0;
    for (int k = 0; k < warm; k++, ts++) {
        mk_trade(&t, 0, false, (uint64_t)ts, 4, 12, XM_CLASSIC_METHODS & ~XM_BIT(XM_FLOW), true, true, ts);
        cr_assert_eq(cache_put(&c, &t.put), 0);
        free_trade(&t);
    }
    uint8_t **data = calloc(entries, sizeof *data), **now = calloc(entries, sizeof *now);
    size_t *cap = calloc(entries, sizeof *cap), *capnow = calloc(entries, sizeof *capnow);
    snap(&c, data, cap);
    for (int k = 0; k < more; k++, ts++) {
        mk_trade(&t, 0, false, (uint64_t)ts, 4, 12, XM_CLASSIC_METHODS & ~XM_BIT(XM_FLOW), true, true, ts);
        cr_assert_eq(cache_put(&c, &t.put), 0);
        expect_entry(cache_get(&c, 0, &t.id), &t);
        free_trade(&t);
        snap(&c, now, capnow);
        for (uint32_t s = 0; s < entries; s++)
            cr_assert(now[s] == data[s] && capnow[s] == cap[s],
                      "put %d after the ring filled (%u entries, budget %zu): buffer %u %p/%zu "
                      "became %p/%zu, a free and an allocation per trade",
                      k, entries, budget, s, (void *)data[s], cap[s], (void *)now[s], capnow[s]);
    }
    check_invariants(&c);
    free(data);
    free(now);
    free(cap);
    free(capnow);
    cache_destroy(&c);
}

Test(cache, steady_stream_reuses_buffers_when_bounded_by_entries)
{
    steady_stream(8, 64u << 20, 8, 100);
}

Test(cache, steady_stream_reuses_buffers_when_bounded_by_bytes)
{
    /* cache.h: "Entry buffers are reused, so a steady stream of one shape
       allocates nothing once the ring has gone round." With the default
       configuration (4096 entries, 64 MiB) the byte budget is what binds
       for any real shape, so this is the case the daemon runs in: room
       for 5 trades of this shape, 64 slots, the ring gone round twice. */
    trade_t t;
    mk_trade(&t, 0, false, 0, 4, 12, XM_CLASSIC_METHODS & ~XM_BIT(XM_FLOW), true, true, 0);
    size_t one = layer_floats(&t.shape) * sizeof(float) * 3 + 5 * 48;
    free_trade(&t);
    steady_stream(64, one * 5 + one / 2, 128, 100);
}

Test(cache, many_ids_and_collisions_against_a_model)
{
    /* Random puts of ids from a small pool (so replacements and long
       chains happen: 8 entries hash into 16 buckets), str and uint ids,
       three models. Entry-bound, so the rule is exact: an id is cached
       iff its latest put is among the last `entries` puts, and then with
       that put's content. */
    enum { ENTRIES = 8, POOL = 40, PUTS = 3000 };
    cache_t c;
    cache_init(&c, ENTRIES, 64u << 20);
    cr_assert_eq(c.nbuckets, 16);
    int64_t last_put[3][2][POOL];
    for (int m = 0; m < 3; m++)
        for (int s = 0; s < 2; s++)
            for (int i = 0; i < POOL; i++)
                last_put[m][s][i] = -1;
    rng_t r;
    rng_seed(&r, 77);
    for (int64_t k = 0; k < PUTS; k++) {
        uint32_t m = (uint32_t)(rng_next(&r) % 3);
        int s = (int)(rng_next(&r) % 2);
        uint64_t id = rng_next(&r) % POOL;
        trade_t t;
        mk_trade(&t, m, s, id, 1, 2 + (uint32_t)(k % 3), XM_BIT(XM_ROLLOUT), false, false, k);
        cr_assert_eq(cache_put(&c, &t.put), 0);
        free_trade(&t);
        last_put[m][s][id] = k;
        check_invariants(&c);
        for (uint32_t mm = 0; mm < 3; mm++)
            for (int ss = 0; ss < 2; ss++)
                for (uint64_t i = 0; i < POOL; i++) {
                    char buf[24];
                    snprintf(buf, sizeof buf, "%llu", (unsigned long long)i);
                    wire_id_t q = ss ? (wire_id_t){.is_str = true, .s = {(const uint8_t *)buf, (uint32_t)strlen(buf)}}
                                     : (wire_id_t){.is_str = false, .u = i};
                    const cache_entry_t *e = cache_get(&c, mm, &q);
                    int64_t lp = last_put[mm][ss][i];
                    bool want = lp >= 0 && lp > k - ENTRIES;
                    cr_assert_eq(e != NULL, want, "after put %lld: model %u %s id %llu (last put %lld) %s",
                                 (long long)k, mm, ss ? "str" : "uint", (unsigned long long)i,
                                 (long long)lp, e ? "cached" : "missing");
                    if (e)
                        cr_assert_eq(e->ts, lp, "stale entry: ts %lld, latest put %lld",
                                     (long long)e->ts, (long long)lp);
                }
    }
    cache_destroy(&c);
}

Test(cache, thousands_of_ids)
{
    cache_t c;
    cache_init(&c, 4096, 64u << 20);
    for (uint64_t k = 0; k < 10000; k++) {
        trade_t t;
        mk_trade(&t, (uint32_t)(k % 5), k % 3 == 0, k, 1, 2, XM_BIT(XM_ROLLOUT), false, false, (int64_t)k);
        cr_assert_eq(cache_put(&c, &t.put), 0);
        free_trade(&t);
    }
    check_invariants(&c);
    for (uint64_t k = 0; k < 10000; k++) {
        char buf[24];
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)k);
        wire_id_t q = k % 3 == 0 ? (wire_id_t){.is_str = true, .s = {(const uint8_t *)buf, (uint32_t)strlen(buf)}}
                                 : (wire_id_t){.is_str = false, .u = k};
        const cache_entry_t *e = cache_get(&c, (uint32_t)(k % 5), &q);
        cr_assert_eq(e != NULL, k >= 10000 - 4096, "id %llu", (unsigned long long)k);
        if (e)
            cr_assert_eq(e->ts, (int64_t)k);
        cr_assert_null(cache_get(&c, (uint32_t)(k % 5) + 1, &q));
    }
    cache_destroy(&c);
}

Test(cache, disabled_cache_and_double_destroy)
{
    cache_t c;
    cr_assert_eq(cache_init(&c, 0, 1 << 20), 0);
    trade_t t;
    mk_trade(&t, 0, true, 1, 1, 3, XM_BIT(XM_ROLLOUT), false, false, 1);
    cr_assert_eq(cache_put(&c, &t.put), 0);
    cr_assert_null(cache_get(&c, 0, &t.id));
    cache_destroy(&c);
    cr_assert_eq(cache_init(&c, 16, 0), 0);
    cr_assert_eq(cache_put(&c, &t.put), 0);
    cr_assert_null(cache_get(&c, 0, &t.id));
    cache_destroy(&c);
    cache_init(&c, 4, 1 << 20);
    cache_put(&c, &t.put);
    cache_destroy(&c);
    cache_destroy(&c);
    cr_assert_null(c.slots);
    free_trade(&t);
}
