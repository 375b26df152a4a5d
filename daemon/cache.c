/*  cache: bounded recent-trade cache. See cache.h.  */
#include "cache.h"

#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

/* Copy the per-layer matrices into an entry. The ring's buffers span the
   whole cache budget (64 MiB by default, more than the last-level cache),
   so the destination is cold: plain stores first read every line from
   memory (read for ownership), streaming stores do not, and they leave the
   caches to the trade that comes next. Both pointers are 16-byte aligned
   (malloc and s_align); `bytes` is a multiple of 16 whenever n is even,
   and any tail goes through memcpy. */
static void
s_copy_cold(void *dst, const void *src, size_t bytes)
{
#if defined(__x86_64__)
    if (((uintptr_t)dst & 15) == 0) {
        __m128i *d = dst;
        const __m128i *sp = src;
        size_t k = 0, nv = bytes / 16;
        for (; k < nv; k++)
            _mm_stream_si128(d + k, _mm_loadu_si128(sp + k));
        _mm_sfence();
        memcpy((char *)dst + 16 * nv, (const char *)src + 16 * nv, bytes - 16 * nv);
        return;
    }
#endif
    memcpy(dst, src, bytes);
}

int
cache_init(cache_t *c, uint32_t entries, size_t budget_bytes)
{
    memset(c, 0, sizeof *c);
    c->budget = budget_bytes;
    if (entries == 0 || budget_bytes == 0)
        return 0;
    c->nslots = entries;
    c->nbuckets = 16;
    while (c->nbuckets < 2 * entries)
        c->nbuckets *= 2;
    c->slots = calloc(entries, sizeof *c->slots);
    c->buckets = malloc(c->nbuckets * sizeof *c->buckets);
    if (!c->slots || !c->buckets) {
        cache_destroy(c);
        return -1;
    }
    for (uint32_t b = 0; b < c->nbuckets; b++)
        c->buckets[b] = -1;
    return 0;
}

void
cache_destroy(cache_t *c)
{
    for (uint32_t k = 0; c->slots && k < c->nslots; k++)
        free(c->slots[k].data);
    free(c->slots);
    free(c->buckets);
    memset(c, 0, sizeof *c);
}

static uint32_t
s_hash(uint32_t model, const wire_id_t *id)
{
    uint32_t h = 2166136261u ^ model;
    h *= 16777619u;
    if (id->is_str) {
        for (uint32_t k = 0; k < id->s.len; k++)
            h = (h ^ id->s.ptr[k]) * 16777619u;
    } else {
        for (int k = 0; k < 8; k++)
            h = (h ^ (uint8_t)(id->u >> (8 * k))) * 16777619u;
        h ^= 0x5bd1e995u;     /* keep the str "1" and the uint 1 apart */
    }
    return h;
}

static bool
s_match(const cache_entry_t *e, uint32_t hash, uint32_t model, const wire_id_t *id)
{
    if (!e->used || e->hash != hash || e->model != model || e->id_is_str != id->is_str)
        return false;
    if (!id->is_str)
        return e->id_u == id->u;
    return e->id_len == id->s.len && memcmp(e->id_s, id->s.ptr, id->s.len) == 0;
}

static void
s_unlink(cache_t *c, uint32_t slot)
{
    cache_entry_t *e = &c->slots[slot];
    int32_t *pp = &c->buckets[e->hash & (c->nbuckets - 1)];
    while (*pp >= 0 && *pp != (int32_t)slot)
        pp = &c->slots[*pp].next;
    if (*pp == (int32_t)slot)
        *pp = e->next;
    e->used = false;
}

const cache_entry_t *
cache_get(const cache_t *c, uint32_t model, const wire_id_t *id)
{
    if (!c->nslots)
        return NULL;
    uint32_t h = s_hash(model, id);
    for (int32_t k = c->buckets[h & (c->nbuckets - 1)]; k >= 0; k = c->slots[k].next)
        if (s_match(&c->slots[k], h, model, id))
            return &c->slots[k];
    return NULL;
}

/* Bytes held once slot e holds `need` bytes. */
static size_t
s_bytes_after(const cache_t *c, const cache_entry_t *e, size_t need)
{
    return e->cap < need ? c->bytes - e->cap + need : c->bytes;
}

static size_t
s_align(size_t x)
{
    return (x + 15) & ~(size_t)15;
}

int
cache_put(cache_t *c, const cache_put_t *p)
{
    if (!c->nslots)
        return 0;
    const xm_shape_t *s = p->shape;
    size_t nf = p->nf ? p->nf : xm_nfeat(s), layers = (size_t)s->L * s->n * s->n * sizeof(float);
    size_t need = s_align(p->id->is_str ? p->id->s.len + 1 : 0);
    for (int m = 0; m < XM_NMETHODS; m++)
        if (p->res->computed & XM_BIT(m))
            need += s_align(nf * sizeof(float));
    need += layers * (1 + (p->flow != p->roll) + (p->grad != NULL));
    const cache_entry_t *old = cache_get(c, p->model, p->id);
    if (old)
        s_unlink(c, (uint32_t)(old - c->slots));  /* "latest" never shows a stale one */
    if (need > c->budget) {
        c->too_big++;
        return -1;
    }

    uint32_t h = s_hash(p->model, p->id);
    if (c->count == c->nslots) {
        /* The ring is full: the oldest slot is the one we fill next; keep
           its buffer for reuse. */
        if (c->slots[c->head].used)
            s_unlink(c, c->head);
        c->count--;
    }

    cache_entry_t *e = &c->slots[c->head];
    if (e->cap < need) {
        /* Make room within the byte budget, oldest first. The first evicted
           buffer large enough moves into this slot, so that a steady stream
           bounded by bytes rather than entries allocates nothing either. */
        while (c->count > 0 && s_bytes_after(c, e, need) > c->budget) {
            uint32_t tail = (c->head + c->nslots - c->count) % c->nslots;
            cache_entry_t *o = &c->slots[tail];
            if (o->used)
                s_unlink(c, tail);
            if (e->cap < need && o->cap >= need) {
                uint8_t *d = e->data;
                size_t cap = e->cap;
                e->data = o->data;
                e->cap = o->cap;
                o->data = d;
                o->cap = cap;
            }
            c->bytes -= o->cap;
            free(o->data);
            o->data = NULL;
            o->cap = 0;
            c->count--;
        }
        if (e->cap < need) {
            c->bytes -= e->cap;
            free(e->data);
            e->cap = 0;
            if (!(e->data = malloc(need)))
                return -1;
            e->cap = need;
            c->bytes += need;
        }
    }
    c->head = (c->head + 1) % c->nslots;
    c->count++;

    uint8_t *d = e->data;
    e->used = true;
    e->hash = h;
    e->model = p->model;
    e->epoch = p->epoch;
    e->id_is_str = p->id->is_str;
    e->id_u = p->id->u;
    e->id_len = p->id->is_str ? p->id->s.len : 0;
    e->id_s = NULL;
    if (p->id->is_str) {
        memcpy(d, p->id->s.ptr, p->id->s.len);
        d[p->id->s.len] = '\0';
        e->id_s = (const char *)d;
        d += s_align(p->id->s.len + 1);
    }
    e->ts = p->ts;
    e->has_target = p->target != NULL;
    e->target = p->target ? *p->target : 0;
    e->has_y = p->y != NULL;
    e->y = p->y ? *p->y : 0;
    e->shape = *s;
    e->methods = p->res->computed;
    e->nf = (uint32_t)nf;
    for (int m = 0; m < XM_NMETHODS; m++) {
        e->attr[m] = NULL;
        if (!(e->methods & XM_BIT(m)))
            continue;
        memcpy(d, p->res->attr[m], nf * sizeof(float));
        e->attr[m] = (const float *)d;
        d += s_align(nf * sizeof(float));
    }
    s_copy_cold(d, p->roll, layers);
    e->roll = e->flow = (const float *)d;
    d += layers;
    if (p->flow != p->roll) {
        s_copy_cold(d, p->flow, layers);
        e->flow = (const float *)d;
        d += layers;
    }
    e->grad = NULL;
    e->resnorm = p->resnorm;
    e->start = p->start;
    if (p->grad) {
        s_copy_cold(d, p->grad, layers);
        e->grad = (const float *)d;
    }

    int32_t *bucket = &c->buckets[h & (c->nbuckets - 1)];
    e->next = *bucket;
    *bucket = (int32_t)(e - c->slots);
    return 0;
}
