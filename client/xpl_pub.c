/*  xpl_pub: contract-v1 ingest encoder and XPUB socket.  */
#include "xpl_private.h"
#include "fuse.h"
#include "half.h"
#include "shard.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

/* One stream of a model: all of it, or with shards the share of one
   shard, with its own seq so that a shard daemon sees no gap. */
typedef struct {
    uint64_t seq;               /* next seq */
    bool schema_pending;        /* send cls/tokens with the next message */
    uint32_t since_schema;      /* messages since cls/tokens were sent */
} s_stream_t;

typedef struct {
    char model[65];
    uint32_t L, H, n;
    int32_t cls;
    char **tokens;              /* n, owned */
    s_stream_t *streams;        /* [nshards], owned */
} s_model_t;

struct xpl_pub_t {
    void *sock;
    xpl_hs_t hs;                /* its CURVE handshakes */
    char endpoint[256];
    int wire_dtype;
    uint32_t schema_every;
    uint32_t nshards;           /* >= 1; 1: plain attn/<model> topics */
    int *shard_subs;            /* [nshards] subscriptions covering the shard's
                                   topics (attn/ without shards) minus
                                   unsubscriptions */
    bool subs_read;             /* subscriptions were counted: nshards is fixed */
    uint64_t subs_seen;         /* subscriptions covering some shard's topics
                                   ever read, never decremented nor reset */
    s_model_t *models;
    size_t nmodels;
    void *scratch;              /* conversion buffers, grown on demand */
    size_t scratch_cap;
    float *f32;
    size_t f32_cap;
    bool fused;                 /* send the fused form */
    float *fz;                  /* fused scratch: M, P, S (B*L*n*n each), imp, conf */
    size_t fz_cap;
    float *fin;                 /* full tensors widened to f32 for fusing */
    size_t fin_cap;
    /* Micro-batching: trades waiting for a message, in wire dtype. */
    uint32_t batch;
    int64_t delay_us;
    struct s_pend *pend;
    pthread_mutex_t lock;       /* the socket and the pending trades */
    pthread_cond_t wake;
    pthread_t timer;
    bool timer_on, closing;
};

static xpl_pub_t *
s_new(const char *endpoint, bool bind, const xpl_curve_t *curve)
{
    if (!endpoint || !*endpoint)
        return xpl_fail_null(XPL_EINVAL, "no ingest endpoint given");
    xpl_pub_t *self = calloc(1, sizeof *self);
    if (!self)
        return xpl_fail_null(XPL_ENOMEM, "out of memory");
    self->wire_dtype = XPL_WIRE_AS_GIVEN;
    self->batch = 1;
    self->nshards = 1;
    self->shard_subs = calloc(1, sizeof *self->shard_subs);
    if (!self->shard_subs) {
        free(self);
        return xpl_fail_null(XPL_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&self->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&self->wake, &ca);
    pthread_condattr_destroy(&ca);
    void *ctx = xpl_ctx_acquire();
    if (!ctx) {
        pthread_cond_destroy(&self->wake);
        pthread_mutex_destroy(&self->lock);
        free(self->shard_subs);
        free(self);
        return NULL;
    }
    self->sock = xpl_socket(ctx, ZMQ_XPUB);
    int one = 1, linger = 1000;
    /* VERBOSER: every subscription and unsubscription of every peer
       comes up, so the publisher knows when a daemon joins or leaves. */
    if (!self->sock || zmq_setsockopt(self->sock, ZMQ_XPUB_VERBOSER, &one, sizeof one)
        || zmq_setsockopt(self->sock, ZMQ_LINGER, &linger, sizeof linger)) {
        xpl_fail_zmq("ingest socket");
        goto fail;
    }
    if (xpl_curve_apply(ctx, self->sock, curve, &self->hs, "ingest"))
        goto fail;
    if ((bind ? zmq_bind : zmq_connect)(self->sock, endpoint)) {
        xpl_fail(XPL_EINVAL, "cannot %s ingest endpoint '%s': %s", bind ? "bind" : "connect to",
                 endpoint, zmq_strerror(zmq_errno()));
        goto fail;
    }
    size_t sz = sizeof self->endpoint;
    if (!bind || zmq_getsockopt(self->sock, ZMQ_LAST_ENDPOINT, self->endpoint, &sz))
        snprintf(self->endpoint, sizeof self->endpoint, "%s", endpoint);
    return self;
fail:
    if (self->sock) {
        xpl_hs_close(&self->hs, self->sock);
        zmq_close(self->sock);
    }
    xpl_ctx_release();
    pthread_cond_destroy(&self->wake);
    pthread_mutex_destroy(&self->lock);
    free(self->shard_subs);
    free(self);
    return NULL;
}

xpl_pub_t *
xpl_pub_new_bind(const char *endpoint)
{
    return s_new(endpoint, true, NULL);
}

xpl_pub_t *
xpl_pub_new_connect(const char *endpoint)
{
    return s_new(endpoint, false, NULL);
}

xpl_pub_t *
xpl_pub_new_bind_curve(const char *endpoint, const xpl_curve_t *curve)
{
    return s_new(endpoint, true, curve);
}

xpl_pub_t *
xpl_pub_new_connect_curve(const char *endpoint, const xpl_curve_t *curve)
{
    return s_new(endpoint, false, curve);
}

static void
s_free_tokens(s_model_t *m)
{
    if (m->tokens)
        for (uint32_t i = 0; i < m->n; i++)
            free(m->tokens[i]);
    free(m->tokens);
    m->tokens = NULL;
}

static void s_pend_free(struct s_pend *p);
static int s_flush_locked(xpl_pub_t *self);

void
xpl_pub_destroy(xpl_pub_t **self_p)
{
    assert(self_p);
    xpl_pub_t *self = *self_p;
    if (!self)
        return;
    pthread_mutex_lock(&self->lock);
    s_flush_locked(self);
    self->closing = true;
    pthread_cond_broadcast(&self->wake);
    pthread_mutex_unlock(&self->lock);
    if (self->timer_on)
        pthread_join(self->timer, NULL);
    s_pend_free(self->pend);
    pthread_cond_destroy(&self->wake);
    pthread_mutex_destroy(&self->lock);
    free(self->fz);
    free(self->fin);
    xpl_hs_close(&self->hs, self->sock);
    zmq_close(self->sock);
    xpl_ctx_release();
    for (size_t i = 0; i < self->nmodels; i++) {
        s_free_tokens(&self->models[i]);
        free(self->models[i].streams);
    }
    free(self->models);
    free(self->shard_subs);
    free(self->scratch);
    free(self->f32);
    free(self);
    *self_p = NULL;
}

const char *
xpl_pub_endpoint(const xpl_pub_t *self)
{
    assert(self);
    return self->endpoint;
}

static s_model_t *
s_find(const xpl_pub_t *self, const char *model)
{
    for (size_t i = 0; i < self->nmodels; i++)
        if (strcmp(self->models[i].model, model) == 0)
            return &self->models[i];
    return NULL;
}

static bool
s_same_schema(const s_model_t *m, uint32_t L, uint32_t H, uint32_t n, int32_t cls,
              const char *const *tokens)
{
    if (!m->tokens || m->L != L || m->H != H || m->n != n || m->cls != cls)
        return false;
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(m->tokens[i], tokens[i]))
            return false;
    return true;
}

/* The schema change itself, under the lock: the batch timer reads the
   models (and the pending trades were of the old schema). */
static int
s_set_schema_locked(xpl_pub_t *self, const char *model, uint32_t L, uint32_t H, uint32_t n,
                    int32_t cls, const char *const *tokens)
{
    s_model_t *m = s_find(self, model);
    if (m && s_same_schema(m, L, H, n, cls, tokens))
        return 0;
    /* Pending trades were of the old schema (and models may move). */
    if (s_flush_locked(self))
        return -1;
    char **copy = calloc(n, sizeof *copy);
    if (!copy)
        return xpl_fail(XPL_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < n; i++)
        if (!(copy[i] = strdup(tokens[i]))) {
            while (i--)
                free(copy[i]);
            free(copy);
            return xpl_fail(XPL_ENOMEM, "out of memory");
        }
    if (!m) {
        s_model_t *grown = realloc(self->models, (self->nmodels + 1) * sizeof *grown);
        s_stream_t *streams = grown ? calloc(self->nshards, sizeof *streams) : NULL;
        if (grown)
            self->models = grown;
        if (!streams) {
            for (uint32_t i = 0; i < n; i++)
                free(copy[i]);
            free(copy);
            return xpl_fail(XPL_ENOMEM, "out of memory");
        }
        m = &self->models[self->nmodels++];
        memset(m, 0, sizeof *m);
        snprintf(m->model, sizeof m->model, "%s", model);
        m->streams = streams;
    } else
        s_free_tokens(m);
    m->L = L;
    m->H = H;
    m->n = n;
    m->cls = cls;
    m->tokens = copy;
    for (uint32_t k = 0; k < self->nshards; k++)
        m->streams[k].schema_pending = true;
    return 0;
}

int
xpl_pub_set_schema(xpl_pub_t *self, const char *model, uint32_t L, uint32_t H, uint32_t n,
                   int32_t cls, const char *const *tokens)
{
    assert(self);
    if (!xpl_model_name_ok(model))
        return xpl_fail(XPL_EINVAL, "bad model name '%s' (1-64 bytes of [A-Za-z0-9_.-])",
                        model ? model : "(null)");
    if (L == 0 || H == 0 || n == 0)
        return xpl_fail(XPL_EINVAL, "schema of '%s': L, H and n must be >= 1", model);
    if (cls < -1 || (cls >= 0 && (uint32_t)cls >= n))
        return xpl_fail(XPL_EINVAL, "schema of '%s': cls %d out of range for n = %u", model,
                        cls, n);
    if (!tokens)
        return xpl_fail(XPL_EINVAL, "schema of '%s': no token names", model);
    for (uint32_t i = 0; i < n; i++)
        if (!tokens[i])
            return xpl_fail(XPL_EINVAL, "schema of '%s': token %u is NULL", model, i);
    pthread_mutex_lock(&self->lock);
    int rc = s_set_schema_locked(self, model, L, H, n, cls, tokens);
    pthread_mutex_unlock(&self->lock);
    return rc;
}

int
xpl_pub_set_wire_dtype(xpl_pub_t *self, int dtype)
{
    assert(self);
    if (dtype != XPL_WIRE_AS_GIVEN && dtype != XPL_F32 && dtype != XPL_F16 && dtype != XPL_BF16)
        return xpl_fail(XPL_EINVAL, "unknown wire dtype %d", dtype);
    pthread_mutex_lock(&self->lock);
    self->wire_dtype = dtype;
    pthread_mutex_unlock(&self->lock);
    return 0;
}

void
xpl_pub_set_schema_every(xpl_pub_t *self, uint32_t messages)
{
    assert(self);
    self->schema_every = messages;
}

int
xpl_pub_set_sndhwm(xpl_pub_t *self, int messages)
{
    assert(self);
    if (messages < 0)
        return xpl_fail(XPL_EINVAL, "sndhwm must be >= 0, not %d", messages);
    pthread_mutex_lock(&self->lock);
    int rc = zmq_setsockopt(self->sock, ZMQ_SNDHWM, &messages, sizeof messages);
    pthread_mutex_unlock(&self->lock);
    return rc ? xpl_fail_zmq("sndhwm") : 0;
}

void
xpl_pub_set_linger(xpl_pub_t *self, int linger_ms)
{
    assert(self);
    zmq_setsockopt(self->sock, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
}

/* Does a subscription to `prefix` receive some of shard k's topics (all
   of attn/ without shards)? */
static bool
s_covers(const xpl_pub_t *self, const uint8_t *prefix, size_t len, uint32_t k)
{
    char space[SHARD_PREFIX_MAX + 8];
    size_t n = self->nshards > 1 ? shard_prefix(space, sizeof space, k, self->nshards)
                                 : (size_t)snprintf(space, sizeof space, "attn/");
    size_t common = len < n ? len : n;
    return memcmp(prefix, space, common) == 0;
}

/* Read pending (un)subscription messages. A new subscription means a
   daemon (re)joined, and must be told every model's schema again (with
   shards: the schema of the shards it subscribed to). */
static void
s_read_subscriptions(xpl_pub_t *self, int timeout_ms)
{
    self->subs_read = true;
    zmq_pollitem_t it = {self->sock, 0, ZMQ_POLLIN, 0};
    while (zmq_poll(&it, 1, timeout_ms) > 0) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, self->sock, ZMQ_DONTWAIT) >= 0 && zmq_msg_size(&m) >= 1) {
            const uint8_t *ev = zmq_msg_data(&m);
            size_t len = zmq_msg_size(&m) - 1;
            bool ours = false;
            for (uint32_t k = 0; k < self->nshards; k++) {
                if (!s_covers(self, ev + 1, len, k))
                    continue;
                ours = true;
                if (ev[0] == 1) {
                    self->shard_subs[k]++;
                    for (size_t i = 0; i < self->nmodels; i++)
                        self->models[i].streams[k].schema_pending = true;
                } else if (ev[0] == 0 && self->shard_subs[k] > 0)
                    self->shard_subs[k]--;
            }
            if (ours && ev[0] == 1)
                self->subs_seen++;
        }
        zmq_msg_close(&m);
        timeout_ms = 0;
    }
}

/* Every shard has a subscriber (without shards: someone subscribed). */
static bool
s_all_subscribed(const xpl_pub_t *self, uint64_t unused)
{
    (void)unused;
    for (uint32_t k = 0; k < self->nshards; k++)
        if (self->shard_subs[k] <= 0)
            return false;
    return true;
}

static bool
s_seen_more_than(const xpl_pub_t *self, uint64_t n)
{
    return self->subs_seen > n;
}

/* Wait until done(self, arg) holds after reading the subscriptions, in
   slices of at most 50 ms under the lock: the batch timer may send (and
   read subscriptions) in between, which is why conditions are on counts
   that only the subscriptions themselves change. */
static int
s_wait(xpl_pub_t *self, bool (*done)(const xpl_pub_t *, uint64_t), uint64_t arg, int timeout_ms,
       const char *what)
{
    int64_t deadline = xpl_now_ms() + timeout_ms;
    for (;;) {
        pthread_mutex_lock(&self->lock);
        s_read_subscriptions(self, 0);
        if (done(self, arg)) {
            pthread_mutex_unlock(&self->lock);
            return 0;
        }
        int left = timeout_ms < 0 ? -1 : (int)(deadline - xpl_now_ms());
        if (timeout_ms >= 0 && left <= 0) {
            uint64_t seen = self->subs_seen;
            pthread_mutex_unlock(&self->lock);
            return xpl_fail(XPL_ETIMEOUT, "%s on %s within %d ms (%llu subscriptions seen)%s", what,
                            self->endpoint, timeout_ms, (unsigned long long)seen,
                            xpl_hs_hint(&self->hs));
        }
        zmq_pollitem_t it = {self->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, left < 0 || left > 50 ? 50 : left);
        pthread_mutex_unlock(&self->lock);
        if (rc < 0)
            return xpl_fail_zmq("wait for a subscriber");
    }
}

int
xpl_pub_wait_subscriber(xpl_pub_t *self, int timeout_ms)
{
    assert(self);
    return s_wait(self, s_all_subscribed, 0, timeout_ms, "no subscriber");
}

uint64_t
xpl_pub_subscriptions(xpl_pub_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->lock);
    s_read_subscriptions(self, 0);
    uint64_t n = self->subs_seen;
    pthread_mutex_unlock(&self->lock);
    return n;
}

int
xpl_pub_wait_subscriptions(xpl_pub_t *self, uint64_t more_than, int timeout_ms)
{
    assert(self);
    char what[64];
    snprintf(what, sizeof what, "no subscription after the first %llu",
             (unsigned long long)more_than);
    return s_wait(self, s_seen_more_than, more_than, timeout_ms, what);
}

static const char *
s_dtype_name(int d)
{
    return d == XPL_F32 ? "f32" : d == XPL_F16 ? "f16" : "bf16";
}

static size_t
s_dtype_size(int d)
{
    return d == XPL_F32 ? 4 : 2;
}

static int
s_reserve(void **buf, size_t *cap, size_t bytes)
{
    if (*cap >= bytes)
        return 0;
    void *p = realloc(*buf, bytes);
    if (!p)
        return xpl_fail(XPL_ENOMEM, "out of memory (%zu bytes)", bytes);
    *buf = p;
    *cap = bytes;
    return 0;
}

/* Pack `count` values of dtype `in` as a bin of dtype `out`. */

/* `count` values of dtype `in` at src as float32: src itself, or widened
   into the publisher's scratch. NULL when out of memory. */
static const float *
s_widen(xpl_pub_t *self, const void *src, size_t count, int in)
{
    if (in == XPL_F32)
        return src;
    void *fp = self->f32;
    if (s_reserve(&fp, &self->f32_cap, count * sizeof(float)))
        return NULL;
    self->f32 = fp;
    if (in == XPL_F16)
        half_f16_decode(self->f32, src, count);
    else
        half_bf16_decode(self->f32, src, count);
    return self->f32;
}

static int
s_pack_tensor(xpl_pub_t *self, msgpack_packer *pk, const void *src, size_t count, int in,
              int out)
{
    size_t bytes = count * s_dtype_size(out);
    if (in == out) {
        msgpack_pack_bin(pk, bytes);
        msgpack_pack_bin_body(pk, src, bytes);
        return 0;
    }
    const float *f = s_widen(self, src, count, in);
    if (!f)
        return -1;
    const void *wire = f;
    if (out != XPL_F32) {
        if (s_reserve(&self->scratch, &self->scratch_cap, bytes))
            return -1;
        if (out == XPL_F16)
            half_f16_encode(self->scratch, f, count);
        else
            half_bf16_encode(self->scratch, f, count);
        wire = self->scratch;
    }
    msgpack_pack_bin(pk, bytes);
    msgpack_pack_bin_body(pk, wire, bytes);
    return 0;
}

static int64_t
s_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t
s_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* An sbuffer whose writer remembers running out of memory (msgpack-c's
   packers ignore the writer's result). */
typedef struct {
    msgpack_sbuffer sb;
    bool oom;
} s_out_t;

static int
s_write(void *data, const char *buf, size_t len)
{
    s_out_t *o = data;
    if (msgpack_sbuffer_write(&o->sb, buf, len))
        o->oom = true;
    return 0;
}

static void
s_free_sbuffer(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* The tensors of one message: the full form's attn, grad and rel, or
   the fused form's fattn, fgrad, fgrad_signed (all of `in` dtype,
   converted to the wire dtype on the way) and the head statistics
   (f32). */
enum { T_A, T_G, T_S, T_IMP, T_CONF, T_R, T_N };
static const char *s_full_keys[T_N] = {"attn", "grad", NULL, NULL, NULL, "rel"};
static const char *s_fused_keys[T_N] = {"fattn", "fgrad", "fgrad_signed", "head_importance",
                                        "head_confidence", NULL};

typedef struct {
    uint32_t B;
    const xpl_id_t *ids;
    int64_t ts;
    const int64_t *target;
    const double *y;
    bool fused;
    int in;                     /* dtype of the tensors but the head statistics */
    const void *t[T_N];
    uint32_t T;                 /* targets per trade, 0: no `targets` */
    const int64_t *targets;     /* [T] */
    const xpl_tags_t *tags;     /* every trade's, or NULL */
    const xpl_tags_t *trade_tags;   /* [B], or NULL */
} s_msg_t;

/* The head statistics are float32 whatever the dtype. */
static bool
s_head(int k)
{
    return k == T_IMP || k == T_CONF;
}

/* Values of tensor k for one trade: the gradient-like ones carry a
   block per target (proto/ingest.md, "Several targets per trade"). */
static size_t
s_count(const s_model_t *m, bool fused, uint32_t T, int k)
{
    size_t per_target = T ? T : 1;
    if (k == T_CONF)
        return (size_t)m->L * m->H;
    if (k == T_IMP)
        return per_target * m->L * m->H;
    size_t one = (size_t)m->L * (fused ? 1 : m->H) * m->n * m->n;
    return k == T_A ? one : per_target * one;
}

/* Bytes of tensor k for one trade in dtype `dtype`. */
static size_t
s_bytes(const s_model_t *m, bool fused, uint32_t T, int k, int dtype)
{
    return s_count(m, fused, T, k) * (s_head(k) ? sizeof(float) : s_dtype_size(dtype));
}

static void
s_pack_tags(msgpack_packer *pk, const xpl_tags_t *t)
{
    if (!t || t->count == 0) {
        msgpack_pack_nil(pk);
        return;
    }
    msgpack_pack_map(pk, t->count);
    for (uint32_t i = 0; i < t->count; i++) {
        xpk_str(pk, t->tags[i].key);
        xpk_str(pk, t->tags[i].value);
    }
}

static size_t
s_tags_size(const xpl_tags_t *t)
{
    size_t n = 1;
    for (uint32_t i = 0; t && i < t->count; i++)
        n += strlen(t->tags[i].key) + strlen(t->tags[i].value) + 4;
    return n;
}

/* Encode one message with its tensors in dtype `wire` and send it
   zero-copy on the topic of `shard` (0 without shards). */
static int
s_encode_send(xpl_pub_t *self, s_model_t *m, const s_msg_t *g, int wire, uint32_t shard)
{
    s_read_subscriptions(self, 0);
    s_stream_t *st = &m->streams[shard];
    bool schema = st->schema_pending
                  || (self->schema_every && st->since_schema + 1 >= self->schema_every);
    bool tags = g->tags || g->trade_tags;
    uint32_t ntens = 0;
    for (int k = 0; k < T_N; k++)
        ntens += g->t[k] != NULL;
    uint32_t nkeys = 9 + ntens + (g->target ? 1 : 0) + (g->y ? 1 : 0) + (schema ? 2 : 0)
                     + (g->targets ? 1 : 0) + (tags ? 1 : 0);

    /* Reserve the whole message up front: one allocation, handed to
       ZeroMQ as is (zero-copy send). */
    s_out_t out = {.oom = false};
    msgpack_sbuffer_init(&out.sb);
    size_t est = 512 + (size_t)g->B * 48 + (size_t)g->T * 9 + s_tags_size(g->tags);
    for (int k = 0; k < T_N; k++)
        if (g->t[k])
            est += g->B * s_bytes(m, g->fused, g->T, k, wire);
    for (uint32_t i = 0; i < g->B; i++)
        est += (g->ids[i].is_str ? strlen(g->ids[i].s) : 0)
               + (g->trade_tags ? s_tags_size(&g->trade_tags[i]) : 0);
    if (schema)
        for (uint32_t i = 0; i < m->n; i++)
            est += strlen(m->tokens[i]) + 5;
    if (!(out.sb.data = malloc(est)))
        return xpl_fail(XPL_ENOMEM, "out of memory (%zu bytes)", est);
    out.sb.alloc = est;
    msgpack_sbuffer *sb = &out.sb;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &out, s_write);
    msgpack_pack_map(&pk, nkeys);
    xpk_key(&pk, "v");
    msgpack_pack_int(&pk, XPL_WIRE_VERSION);
    xpk_key(&pk, "model");
    xpk_str(&pk, m->model);
    xpk_key(&pk, "seq");
    msgpack_pack_uint64(&pk, st->seq);
    xpk_key(&pk, "ts");
    msgpack_pack_int64(&pk, g->ts ? g->ts : s_now_ns());
    xpk_key(&pk, "ids");
    msgpack_pack_array(&pk, g->B);
    for (uint32_t i = 0; i < g->B; i++)
        xpk_id(&pk, &g->ids[i]);
    xpk_key(&pk, "L");
    msgpack_pack_uint32(&pk, m->L);
    xpk_key(&pk, "H");
    msgpack_pack_uint32(&pk, m->H);
    xpk_key(&pk, "n");
    msgpack_pack_uint32(&pk, m->n);
    xpk_key(&pk, "dtype");
    xpk_str(&pk, s_dtype_name(wire));
    for (int k = 0; k < T_N; k++) {
        if (!g->t[k])
            continue;
        xpk_key(&pk, g->fused ? s_fused_keys[k] : s_full_keys[k]);
        bool head = s_head(k);
        if (s_pack_tensor(self, &pk, g->t[k], g->B * s_count(m, g->fused, g->T, k),
                          head ? XPL_F32 : g->in, head ? XPL_F32 : wire))
            goto fail;
    }
    if (g->targets) {
        xpk_key(&pk, "targets");
        msgpack_pack_array(&pk, g->T);
        for (uint32_t t = 0; t < g->T; t++)
            msgpack_pack_int64(&pk, g->targets[t]);
    }
    if (tags) {
        xpk_key(&pk, "tags");
        if (g->tags)
            s_pack_tags(&pk, g->tags);
        else {
            msgpack_pack_array(&pk, g->B);
            for (uint32_t i = 0; i < g->B; i++)
                s_pack_tags(&pk, &g->trade_tags[i]);
        }
    }
    if (g->target) {
        xpk_key(&pk, "target");
        msgpack_pack_array(&pk, g->B);
        for (uint32_t i = 0; i < g->B; i++)
            msgpack_pack_int64(&pk, g->target[i]);
    }
    if (g->y) {
        xpk_key(&pk, "y");
        msgpack_pack_array(&pk, g->B);
        for (uint32_t i = 0; i < g->B; i++)
            msgpack_pack_double(&pk, g->y[i]);
    }
    if (schema) {
        xpk_key(&pk, "cls");
        msgpack_pack_int32(&pk, m->cls);
        xpk_key(&pk, "tokens");
        msgpack_pack_array(&pk, m->n);
        for (uint32_t i = 0; i < m->n; i++)
            xpk_str(&pk, m->tokens[i]);
    }
    if (out.oom) {
        xpl_fail(XPL_ENOMEM, "out of memory while encoding");
        goto fail;
    }

    char topic[SHARD_PREFIX_MAX + 5 + 64 + 1];
    size_t tlen = self->nshards > 1 ? shard_prefix(topic, sizeof topic, shard, self->nshards) : 0;
    tlen += (size_t)snprintf(topic + tlen, sizeof topic - tlen, "attn/%s", m->model);
    zmq_msg_t body;
    if (zmq_msg_init_data(&body, sb->data, sb->size, s_free_sbuffer, NULL)) {
        xpl_fail_zmq("send");
        goto fail;
    }
    if (zmq_send(self->sock, topic, tlen, ZMQ_SNDMORE) < 0) {
        zmq_msg_close(&body);       /* frees the buffer */
        return xpl_fail_zmq("send");
    }
    if (zmq_msg_send(&body, self->sock, 0) < 0) {
        zmq_msg_close(&body);
        return xpl_fail_zmq("send");
    }
    st->seq++;
    if (schema) {
        st->schema_pending = false;
        st->since_schema = 0;
    } else
        st->since_schema++;
    return 0;
fail:
    msgpack_sbuffer_destroy(sb);
    return -1;
}

/* ---- shards ------------------------------------------------------------- */

/* Send a message on the shards that own its trades: as is when they all
   belong to one (always without shards), else one message per shard that
   has trades, in shard order, each with its trades in message order
   (copied out). When a shard's send fails the shards before it were
   sent. */
static int
s_route(xpl_pub_t *self, s_model_t *m, const s_msg_t *g, int wire)
{
    if (self->nshards == 1)
        return s_encode_send(self, m, g, wire, 0);
    uint32_t *shard = malloc(g->B * sizeof *shard);
    if (!shard)
        return xpl_fail(XPL_ENOMEM, "out of memory");
    bool one = true;
    for (uint32_t i = 0; i < g->B; i++) {
        shard[i] = xpl_shard_of(&g->ids[i], self->nshards);
        one = one && shard[i] == shard[0];
    }
    if (one) {
        /* The common case of one trade per message needs no copy. */
        int rc = s_encode_send(self, m, g, wire, shard[0]);
        free(shard);
        return rc;
    }
    size_t per[T_N];
    for (int k = 0; k < T_N; k++)
        per[k] = s_bytes(m, g->fused, g->T, k, g->in);
    xpl_id_t *ids = malloc(g->B * sizeof *ids);
    int64_t *target = g->target ? malloc(g->B * sizeof *target) : NULL;
    double *y = g->y ? malloc(g->B * sizeof *y) : NULL;
    xpl_tags_t *ttags = g->trade_tags ? malloc(g->B * sizeof *ttags) : NULL;
    char *t[T_N] = {0};
    bool ok = ids && (!g->target || target) && (!g->y || y) && (!g->trade_tags || ttags);
    for (int k = 0; k < T_N; k++)
        if (g->t[k])
            ok = ok && (t[k] = malloc(g->B * per[k])) != NULL;
    int rc = ok ? 0 : xpl_fail(XPL_ENOMEM, "out of memory splitting a batch of %u trades", g->B);
    for (uint32_t k = 0; k < self->nshards && rc == 0; k++) {
        uint32_t c = 0;
        for (uint32_t i = 0; i < g->B; i++) {
            if (shard[i] != k)
                continue;
            ids[c] = g->ids[i];
            for (int j = 0; j < T_N; j++)
                if (t[j])
                    memcpy(t[j] + c * per[j], (const char *)g->t[j] + i * per[j], per[j]);
            if (target)
                target[c] = g->target[i];
            if (y)
                y[c] = g->y[i];
            if (ttags)
                ttags[c] = g->trade_tags[i];
            c++;
        }
        if (c == 0)
            continue;
        s_msg_t part = *g;
        part.B = c;
        part.ids = ids;
        part.target = target;
        part.y = y;
        part.trade_tags = ttags;
        for (int j = 0; j < T_N; j++)
            part.t[j] = t[j];
        rc = s_encode_send(self, m, &part, wire, k);
    }
    free(shard);
    free(ids);
    free(target);
    free(y);
    free(ttags);
    for (int k = 0; k < T_N; k++)
        free(t[k]);
    return rc;
}

/* ---- pending trades (micro-batching) ------------------------------------ */

/* Fields of a message beyond the tensors (bits 0..T_N-1), for
   s_has_bits: trades are merged only with trades of the same fields. */
#define S_HAS_TARGET (1u << 8)
#define S_HAS_Y (1u << 9)
#define S_HAS_TARGETS (1u << 10)
#define S_HAS_TAGS (1u << 11)

struct s_pend {
    char model[65];
    uint32_t B, cap;            /* trades pending, and room for */
    bool fused;
    int wire;                   /* dtype the tensors are held in */
    unsigned has;               /* s_has_bits of the pending trades */
    int64_t ts;                 /* the first trade's */
    int64_t since_us;           /* monotonic time the first trade came */
    size_t per[T_N];            /* bytes of one trade's tensor k */
    uint8_t *t[T_N];
    size_t tcap[T_N];           /* bytes t[k] has room for */
    xpl_id_t *ids;              /* strings owned */
    int64_t *target;
    double *y;
    xpl_tags_t *tags;           /* trade by trade, each one block owned */
    uint32_t T, cap_T;          /* the pending trades' targets */
    int64_t *targets;
};

static void
s_pend_clear(struct s_pend *p)
{
    for (uint32_t i = 0; i < p->B; i++) {
        if (p->ids[i].is_str)
            free((char *)p->ids[i].s);
        if (p->has & S_HAS_TAGS)
            free((void *)p->tags[i].tags);
    }
    p->B = 0;
}

static void
s_pend_free(struct s_pend *p)
{
    if (!p)
        return;
    s_pend_clear(p);
    for (int k = 0; k < T_N; k++)
        free(p->t[k]);
    free(p->ids);
    free(p->target);
    free(p->y);
    free(p->tags);
    free(p->targets);
    free(p);
}

static int
s_grow(void *pp, size_t bytes)
{
    void *q = realloc(*(void **)pp, bytes ? bytes : 1);
    if (!q)
        return xpl_fail(XPL_ENOMEM, "out of memory (%zu bytes)", bytes);
    *(void **)pp = q;
    return 0;
}

/* Convert `count` values of dtype `in` at src to dtype `out` at dst. */
static int
s_convert(xpl_pub_t *self, void *dst, const void *src, size_t count, int in, int out)
{
    if (in == out) {
        memcpy(dst, src, count * s_dtype_size(in));
        return 0;
    }
    const float *f = s_widen(self, src, count, in);
    if (!f)
        return -1;
    if (out == XPL_F32)
        memcpy(dst, f, count * 4);
    else if (out == XPL_F16)
        half_f16_encode(dst, f, count);
    else
        half_bf16_encode(dst, f, count);
    return 0;
}

static unsigned
s_has_bits(const s_msg_t *g)
{
    unsigned has = (g->target ? S_HAS_TARGET : 0) | (g->y ? S_HAS_Y : 0)
                   | (g->targets ? S_HAS_TARGETS : 0)
                   | (g->tags || g->trade_tags ? S_HAS_TAGS : 0);
    for (int k = 0; k < T_N; k++)
        has |= g->t[k] ? 1u << k : 0;
    return has;
}

/* Trades of a message may join the pending ones: same model, form,
   wire dtype, fields, and targets. */
static bool
s_pend_joins(const struct s_pend *p, const s_model_t *m, const s_msg_t *g, int wire)
{
    return strcmp(p->model, m->model) == 0 && p->fused == g->fused && p->wire == wire
           && p->has == s_has_bits(g) && p->T == g->T
           && (!g->T || memcmp(p->targets, g->targets, g->T * sizeof *g->targets) == 0);
}

/* A deep copy of a trade's tags in one block (dst->tags owns it). */
static int
s_tags_dup(xpl_tags_t *dst, const xpl_tags_t *src)
{
    dst->count = 0;
    dst->tags = NULL;
    if (!src || src->count == 0)
        return 0;
    size_t bytes = src->count * sizeof(xpl_tag_t);
    for (uint32_t i = 0; i < src->count; i++)
        bytes += strlen(src->tags[i].key) + strlen(src->tags[i].value) + 2;
    xpl_tag_t *t = malloc(bytes);
    if (!t)
        return xpl_fail(XPL_ENOMEM, "out of memory");
    char *str = (char *)(t + src->count);
    for (uint32_t i = 0; i < src->count; i++) {
        size_t kl = strlen(src->tags[i].key) + 1, vl = strlen(src->tags[i].value) + 1;
        t[i].key = memcpy(str, src->tags[i].key, kl);
        str += kl;
        t[i].value = memcpy(str, src->tags[i].value, vl);
        str += vl;
    }
    dst->count = src->count;
    dst->tags = t;
    return 0;
}

/* Append a message's trades to the pending ones (which are of the same
   model, form and fields, or none). */
static int
s_pend_add(xpl_pub_t *self, s_model_t *m, const s_msg_t *g)
{
    if (!self->pend && !(self->pend = calloc(1, sizeof *self->pend)))
        return xpl_fail(XPL_ENOMEM, "out of memory");
    struct s_pend *p = self->pend;
    int wire = self->wire_dtype == XPL_WIRE_AS_GIVEN ? g->in : self->wire_dtype;
    if (p->B == 0) {
        snprintf(p->model, sizeof p->model, "%s", m->model);
        p->fused = g->fused;
        p->wire = wire;
        p->has = s_has_bits(g);
        p->ts = g->ts ? g->ts : s_now_ns();
        p->since_us = s_mono_us();
        if (g->T > p->cap_T) {
            if (s_grow(&p->targets, g->T * sizeof *p->targets))
                return -1;
            p->cap_T = g->T;
        }
        p->T = g->T;
        if (g->T)
            memcpy(p->targets, g->targets, g->T * sizeof *p->targets);
        for (int k = 0; k < T_N; k++)
            p->per[k] = s_bytes(m, g->fused, g->T, k, wire);
    }
    uint32_t need = p->B + g->B;
    if (need > p->cap) {
        uint32_t cap = p->cap ? p->cap : 8;
        while (cap < need)
            cap *= 2;
        if (s_grow(&p->ids, cap * sizeof *p->ids) || s_grow(&p->target, cap * sizeof *p->target)
            || s_grow(&p->y, cap * sizeof *p->y) || s_grow(&p->tags, cap * sizeof *p->tags))
            return -1;
        p->cap = cap;
    }
    /* Each tensor by its own room: the trades pending before may have
       had other tensors, or another number of targets. */
    for (int k = 0; k < T_N; k++) {
        size_t bytes = (size_t)p->cap * p->per[k];
        if ((p->has & (1u << k)) && p->tcap[k] < bytes) {
            if (s_grow(&p->t[k], bytes))
                return -1;
            p->tcap[k] = bytes;
        }
    }
    for (int k = 0; k < T_N; k++) {
        if (!g->t[k])
            continue;
        bool head = s_head(k);
        size_t cnt = s_count(m, g->fused, g->T, k) * g->B;
        if (s_convert(self, p->t[k] + (size_t)p->B * p->per[k], g->t[k], cnt,
                      head ? XPL_F32 : g->in, head ? XPL_F32 : wire))
            return -1;
    }
    for (uint32_t i = 0; i < g->B; i++) {
        xpl_id_t id = g->ids[i];
        xpl_tags_t *tg = &p->tags[p->B + i];
        if ((p->has & S_HAS_TAGS) && s_tags_dup(tg, g->tags ? g->tags : &g->trade_tags[i])) {
            p->B += i;
            return -1;
        }
        if (id.is_str && !(id.s = strdup(id.s))) {
            if (p->has & S_HAS_TAGS)
                free((void *)tg->tags);
            p->B += i;
            return xpl_fail(XPL_ENOMEM, "out of memory");
        }
        p->ids[p->B + i] = id;
        if (g->target)
            p->target[p->B + i] = g->target[i];
        if (g->y)
            p->y[p->B + i] = g->y[i];
    }
    p->B = need;
    return 0;
}

static int
s_flush_locked(xpl_pub_t *self)
{
    struct s_pend *p = self->pend;
    if (!p || p->B == 0)
        return 0;
    s_model_t *m = s_find(self, p->model);
    int rc = -1;
    if (m) {
        s_msg_t g = {.B = p->B, .ids = p->ids, .ts = p->ts,
                     .target = (p->has & S_HAS_TARGET) ? p->target : NULL,
                     .y = (p->has & S_HAS_Y) ? p->y : NULL, .fused = p->fused, .in = p->wire,
                     .T = p->T, .targets = (p->has & S_HAS_TARGETS) ? p->targets : NULL,
                     .trade_tags = (p->has & S_HAS_TAGS) ? p->tags : NULL};
        for (int k = 0; k < T_N; k++)
            g.t[k] = (p->has & (1u << k)) ? p->t[k] : NULL;
        /* Held in the wire dtype already: no second conversion. */
        rc = s_route(self, m, &g, p->wire);
    } else {
        xpl_fail(XPL_EINVAL, "pending trades of model '%s' lost its schema", p->model);
    }
    s_pend_clear(p);
    return rc;
}

static void *
s_timer_main(void *arg)
{
    xpl_pub_t *self = arg;
    pthread_mutex_lock(&self->lock);
    while (!self->closing) {
        struct s_pend *p = self->pend;
        if (!p || p->B == 0 || self->delay_us <= 0) {
            pthread_cond_wait(&self->wake, &self->lock);
            continue;
        }
        int64_t due = p->since_us + self->delay_us, now = s_mono_us();
        if (now < due) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t ns = ts.tv_nsec + (due - now) * 1000;
            ts.tv_sec += ns / 1000000000;
            ts.tv_nsec = ns % 1000000000;
            pthread_cond_timedwait(&self->wake, &self->lock, &ts);
            continue;
        }
        s_flush_locked(self);       /* an error here has no caller to go to */
    }
    pthread_mutex_unlock(&self->lock);
    return NULL;
}

/* A message to send: at once (batch 1, nothing pending), or queued. */
static int
s_submit(xpl_pub_t *self, s_model_t *m, const s_msg_t *g)
{
    struct s_pend *p = self->pend;
    int wire = self->wire_dtype == XPL_WIRE_AS_GIVEN ? g->in : self->wire_dtype;
    if (p && p->B > 0 && !s_pend_joins(p, m, g, wire))
        if (s_flush_locked(self))
            return -1;
    if ((!p || p->B == 0) && g->B >= self->batch)
        return s_route(self, m, g, wire);
    if (s_pend_add(self, m, g))
        return -1;
    if (self->pend->B >= self->batch)
        return s_flush_locked(self);
    if (self->delay_us > 0 && !self->timer_on) {
        if (pthread_create(&self->timer, NULL, s_timer_main, self) == 0)
            self->timer_on = true;
    }
    pthread_cond_broadcast(&self->wake);
    return 0;
}

static int
s_check_ids(const xpl_id_t *ids, uint32_t B)
{
    for (uint32_t i = 0; i < B; i++)
        if (ids[i].is_str && !ids[i].s)
            return xpl_fail(XPL_EINVAL, "send: id %u is a NULL string", i);
    return 0;
}

/* A tag key: 1..32 bytes of [A-Za-z0-9_.-]; a value: 1..64 bytes of
   printable ASCII but , = " and backslash (proto/ingest.md, "Tags"). */
static bool
s_tag_ok(const char *s, bool key)
{
    if (!s)
        return false;
    size_t len = strlen(s);
    if (len == 0 || len > (key ? 32u : 64u))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ok = key ? (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                            || c == '_' || c == '.' || c == '-'
                      : c >= 0x20 && c < 0x7f && c != ',' && c != '=' && c != '"' && c != '\\';
        if (!ok)
            return false;
    }
    return true;
}

static int
s_check_tags(const char *model, const xpl_tags_t *t, long trade)
{
    char where[32] = "";
    if (trade >= 0)
        snprintf(where, sizeof where, " of trade %ld", trade);
    if (t->count > 16 || (t->count && !t->tags))
        return xpl_fail(XPL_EINVAL, "send: tags%s of '%s': %u tags (at most 16, not NULL)", where,
                        model, t->count);
    for (uint32_t i = 0; i < t->count; i++) {
        if (!s_tag_ok(t->tags[i].key, true) || !s_tag_ok(t->tags[i].value, false))
            return xpl_fail(XPL_EINVAL, "send: tag %u%s of '%s': key 1-32 bytes of "
                            "[A-Za-z0-9_.-], value 1-64 printable bytes but , = \" and \\",
                            i, where, model);
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(t->tags[i].key, t->tags[j].key) == 0)
                return xpl_fail(XPL_EINVAL, "send: tag '%s'%s of '%s' twice", t->tags[i].key,
                                where, model);
    }
    return 0;
}

/* targets and tags of a message: targets with a gradient (`grad`, the
   fused form's fgrad), not beside target, 1..XPL_PUB_MAX_TARGETS of
   them; tags either for all or trade by trade, each set by the rules. */
static int
s_check_fields(const char *model, uint32_t B, bool grad, const int64_t *target, uint32_t T,
               const int64_t *targets, const xpl_tags_t *tags, const xpl_tags_t *trade_tags)
{
    if (!targets != !T)
        return xpl_fail(XPL_EINVAL, "send: batch of '%s': T (%u) and targets go together", model,
                        T);
    if (T && (!grad || target))
        return xpl_fail(XPL_EINVAL, "send: batch of '%s': targets needs a gradient and no target",
                        model);
    if (T > XPL_PUB_MAX_TARGETS)
        return xpl_fail(XPL_EINVAL, "send: batch of '%s': %u targets (at most %u)", model, T,
                        XPL_PUB_MAX_TARGETS);
    if (tags && trade_tags)
        return xpl_fail(XPL_EINVAL, "send: batch of '%s': tags or trade_tags, not both", model);
    if (tags && s_check_tags(model, tags, -1))
        return -1;
    for (uint32_t i = 0; trade_tags && i < B; i++)
        if (s_check_tags(model, &trade_tags[i], (long)i))
            return -1;
    return 0;
}

/* Fuse B trades of full tensors into self->fz (f32): M of B*L*n*n, P
   of B*T*L*n*n (T = 1 without targets), conf of B*L*H, imp of B*T*L*H;
   with targets, block t of P and imp from gradient t (fattn and conf
   are the same for every target). */
static int
s_fuse(xpl_pub_t *self, s_model_t *m, const xpl_batch_t *b, s_msg_t *g)
{
    const size_t nn = (size_t)m->n * m->n, full = (size_t)m->L * m->H * nn;
    const size_t lnn = (size_t)m->L * nn, lh = (size_t)m->L * m->H, B = b->B;
    const size_t T = b->T ? b->T : 1;
    void *fz = self->fz;
    if (s_reserve(&fz, &self->fz_cap, (B * lnn * (1 + T) + B * lh * (1 + T)) * sizeof(float)))
        return -1;
    self->fz = fz;
    const float *A = b->attn, *G = b->grad;
    if (b->dtype != XPL_F32) {
        /* Widen to f32 once (the daemon fuses the values it decodes). */
        void *fin = self->fin;
        if (s_reserve(&fin, &self->fin_cap, (1 + (b->grad ? T : 0)) * B * full * sizeof(float)))
            return -1;
        self->fin = fin;
        void (*dec)(float *, const void *, size_t) =
            b->dtype == XPL_F16 ? half_f16_decode : half_bf16_decode;
        dec(self->fin, b->attn, B * full);
        if (b->grad)
            dec(self->fin + B * full, b->grad, B * T * full);
        A = self->fin;
        G = b->grad ? self->fin + B * full : NULL;
    }
    float *M = self->fz, *P = M + B * lnn, *conf = P + B * T * lnn, *imp = conf + B * lh;
    for (size_t i = 0; i < B; i++)
        for (size_t t = 0; t < T; t++)
            fuse_trade(m->L, m->H, m->n, A + i * full, G ? G + (i * T + t) * full : NULL,
                       M + i * lnn, P + (i * T + t) * lnn, NULL, imp + (i * T + t) * lh,
                       conf + i * lh);
    g->fused = true;
    g->in = XPL_F32;
    g->t[T_A] = M;
    g->t[T_G] = G ? P : NULL;
    g->t[T_S] = NULL;
    g->t[T_IMP] = G ? imp : NULL;
    g->t[T_CONF] = conf;
    g->t[T_R] = NULL;
    return 0;
}

int
xpl_pub_send(xpl_pub_t *self, const xpl_batch_t *b)
{
    assert(self);
    if (!b || !b->model)
        return xpl_fail(XPL_EINVAL, "send: no batch or model");
    s_model_t *m = s_find(self, b->model);
    if (!m)
        return xpl_fail(XPL_EINVAL, "send: no schema set for model '%s'", b->model);
    if (b->B == 0 || !b->ids || !b->attn)
        return xpl_fail(XPL_EINVAL, "send: batch of '%s' needs B >= 1, ids and attn", b->model);
    if (b->dtype != XPL_F32 && b->dtype != XPL_F16 && b->dtype != XPL_BF16)
        return xpl_fail(XPL_EINVAL, "send: unknown dtype %d", (int)b->dtype);
    if (s_check_ids(b->ids, b->B)
        || s_check_fields(b->model, b->B, b->grad != NULL, b->target, b->T, b->targets, b->tags,
                          b->trade_tags))
        return -1;
    if (b->rel && !b->grad)
        return xpl_fail(XPL_EINVAL, "send: batch of '%s': rel needs grad (lrp_rollout reads both)",
                        b->model);
    s_msg_t g = {.B = b->B, .ids = b->ids, .ts = b->ts, .target = b->target, .y = b->y,
                 .fused = false, .in = (int)b->dtype, .t = {b->attn, b->grad},
                 .T = b->T, .targets = b->targets, .tags = b->tags, .trade_tags = b->trade_tags};
    g.t[T_R] = b->rel;
    pthread_mutex_lock(&self->lock);
    if (self->fused && b->rel) {
        pthread_mutex_unlock(&self->lock);
        return xpl_fail(XPL_EINVAL, "send: batch of '%s': rel has no fused form (lrp_rollout "
                        "needs every head): send it with xpl_pub_set_fused off", b->model);
    }
    int rc = self->fused ? s_fuse(self, m, b, &g) : 0;
    if (rc == 0)
        rc = s_submit(self, m, &g);
    pthread_mutex_unlock(&self->lock);
    return rc;
}

int
xpl_pub_send_fused(xpl_pub_t *self, const xpl_fused_batch_t *b)
{
    assert(self);
    if (!b || !b->model)
        return xpl_fail(XPL_EINVAL, "send: no batch or model");
    s_model_t *m = s_find(self, b->model);
    if (!m)
        return xpl_fail(XPL_EINVAL, "send: no schema set for model '%s'", b->model);
    if (b->B == 0 || !b->ids || !b->fattn || !b->head_confidence)
        return xpl_fail(XPL_EINVAL, "send: fused batch of '%s' needs B >= 1, ids, fattn and "
                        "head_confidence", b->model);
    if (!b->fgrad != !b->head_importance || (b->fgrad_signed && !b->fgrad))
        return xpl_fail(XPL_EINVAL, "send: fused batch of '%s': fgrad and head_importance go "
                        "together, fgrad_signed needs fgrad", b->model);
    if (b->dtype != XPL_F32 && b->dtype != XPL_F16 && b->dtype != XPL_BF16)
        return xpl_fail(XPL_EINVAL, "send: unknown dtype %d", (int)b->dtype);
    if (s_check_ids(b->ids, b->B)
        || s_check_fields(b->model, b->B, b->fgrad != NULL, b->target, b->T, b->targets, b->tags,
                          b->trade_tags))
        return -1;
    s_msg_t g = {.B = b->B, .ids = b->ids, .ts = b->ts, .target = b->target, .y = b->y,
                 .fused = true, .in = (int)b->dtype,
                 .t = {b->fattn, b->fgrad, b->fgrad_signed, b->head_importance,
                       b->head_confidence},
                 .T = b->T, .targets = b->targets, .tags = b->tags, .trade_tags = b->trade_tags};
    pthread_mutex_lock(&self->lock);
    int rc = s_submit(self, m, &g);
    pthread_mutex_unlock(&self->lock);
    return rc;
}

/* The entry points of programs compiled before the batch structs grew:
   their structs end at `ts`, so only that much is read. */
#undef xpl_pub_send
#undef xpl_pub_send_fused
XPL_EXPORT int xpl_pub_send(xpl_pub_t *self, const xpl_batch_t *batch);
XPL_EXPORT int xpl_pub_send_fused(xpl_pub_t *self, const xpl_fused_batch_t *batch);

int
xpl_pub_send(xpl_pub_t *self, const xpl_batch_t *b)
{
    xpl_batch_t v2 = {0};
    if (b)
        memcpy(&v2, b, offsetof(xpl_batch_t, ts) + sizeof b->ts);
    return xpl_pub_send_v2(self, b ? &v2 : NULL);
}

int
xpl_pub_send_fused(xpl_pub_t *self, const xpl_fused_batch_t *b)
{
    xpl_fused_batch_t v2 = {0};
    if (b)
        memcpy(&v2, b, offsetof(xpl_fused_batch_t, ts) + sizeof b->ts);
    return xpl_pub_send_fused_v2(self, b ? &v2 : NULL);
}

int
xpl_pub_set_fused(xpl_pub_t *self, bool fused)
{
    assert(self);
    self->fused = fused;
    return 0;
}

int
xpl_pub_set_batch(xpl_pub_t *self, uint32_t batch, int64_t delay_us)
{
    assert(self);
    if (batch < 1 || delay_us < 0)
        return xpl_fail(XPL_EINVAL, "batch must be >= 1 and delay_us >= 0 (got %u, %lld)", batch,
                        (long long)delay_us);
    pthread_mutex_lock(&self->lock);
    int rc = s_flush_locked(self);
    self->batch = batch;
    self->delay_us = delay_us;
    pthread_cond_broadcast(&self->wake);
    pthread_mutex_unlock(&self->lock);
    return rc;
}

int
xpl_pub_flush(xpl_pub_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->lock);
    int rc = s_flush_locked(self);
    pthread_mutex_unlock(&self->lock);
    return rc;
}

uint32_t
xpl_pub_pending(const xpl_pub_t *self)
{
    assert(self);
    xpl_pub_t *w = (xpl_pub_t *)self;
    pthread_mutex_lock(&w->lock);
    uint32_t n = w->pend ? w->pend->B : 0;
    pthread_mutex_unlock(&w->lock);
    return n;
}

uint64_t
xpl_pub_next_seq(const xpl_pub_t *self, const char *model)
{
    assert(self);
    xpl_pub_t *w = (xpl_pub_t *)self;
    pthread_mutex_lock(&w->lock);
    const s_model_t *m = model ? s_find(self, model) : NULL;
    uint64_t sum = 0;
    for (uint32_t k = 0; m && k < self->nshards; k++)
        sum += m->streams[k].seq;
    pthread_mutex_unlock(&w->lock);
    return sum;
}

static int
s_set_shards_locked(xpl_pub_t *self, uint32_t nshards)
{
    if (nshards == 0 || nshards > SHARD_MAX)
        return xpl_fail(XPL_EINVAL, "shard count %u out of range 1..%u", nshards, SHARD_MAX);
    if (self->subs_read)
        return xpl_fail(XPL_EINVAL, "set the shard count before waiting for subscribers or sending");
    if (nshards == self->nshards)
        return 0;
    int *subs = calloc(nshards, sizeof *subs);
    s_stream_t **streams = calloc(self->nmodels + 1, sizeof *streams);
    bool ok = subs && streams;
    for (size_t i = 0; ok && i < self->nmodels; i++)
        ok = (streams[i] = calloc(nshards, sizeof **streams)) != NULL;
    if (!ok) {
        for (size_t i = 0; streams && i < self->nmodels; i++)
            free(streams[i]);
        free(streams);
        free(subs);
        return xpl_fail(XPL_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < self->nmodels; i++) {
        free(self->models[i].streams);
        self->models[i].streams = streams[i];
        for (uint32_t k = 0; k < nshards; k++)
            streams[i][k].schema_pending = true;
    }
    free(streams);
    free(self->shard_subs);
    self->shard_subs = subs;
    self->nshards = nshards;
    return 0;
}

int
xpl_pub_set_shards(xpl_pub_t *self, uint32_t nshards)
{
    assert(self);
    pthread_mutex_lock(&self->lock);
    int rc = s_set_shards_locked(self, nshards);
    pthread_mutex_unlock(&self->lock);
    return rc;
}

uint32_t
xpl_pub_shards(const xpl_pub_t *self)
{
    assert(self);
    return self->nshards;
}

uint32_t
xpl_shard_of(const xpl_id_t *id, uint32_t nshards)
{
    if (!id || nshards <= 1)
        return 0;
    uint64_t h = id->is_str ? shard_hash(id->s ? id->s : "", id->s ? strlen(id->s) : 0)
                            : shard_hash_uint(id->u);
    return shard_of(h, nshards);
}
