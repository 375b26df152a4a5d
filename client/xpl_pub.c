/*  xpl_pub: contract-v1 ingest encoder and XPUB socket.  */
#include "xpl_private.h"
#include "half.h"
#include "shard.h"

#include <assert.h>
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
    s_model_t *models;
    size_t nmodels;
    void *scratch;              /* conversion buffers, grown on demand */
    size_t scratch_cap;
    float *f32;
    size_t f32_cap;
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
    self->nshards = 1;
    self->shard_subs = calloc(1, sizeof *self->shard_subs);
    if (!self->shard_subs) {
        free(self);
        return xpl_fail_null(XPL_ENOMEM, "out of memory");
    }
    void *ctx = xpl_ctx_acquire();
    if (!ctx) {
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

void
xpl_pub_destroy(xpl_pub_t **self_p)
{
    assert(self_p);
    xpl_pub_t *self = *self_p;
    if (!self)
        return;
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
    s_model_t *m = s_find(self, model);
    if (m && s_same_schema(m, L, H, n, cls, tokens))
        return 0;
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
        if (!grown) {
            for (uint32_t i = 0; i < n; i++)
                free(copy[i]);
            free(copy);
            return xpl_fail(XPL_ENOMEM, "out of memory");
        }
        self->models = grown;
        s_stream_t *streams = calloc(self->nshards, sizeof *streams);
        if (!streams) {
            for (uint32_t i = 0; i < n; i++)
                free(copy[i]);
            free(copy);
            return xpl_fail(XPL_ENOMEM, "out of memory");
        }
        m = &self->models[self->nmodels++];
        memset(m, 0, sizeof *m);
        m->streams = streams;
        snprintf(m->model, sizeof m->model, "%s", model);
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
xpl_pub_set_wire_dtype(xpl_pub_t *self, int dtype)
{
    assert(self);
    if (dtype != XPL_WIRE_AS_GIVEN && dtype != XPL_F32 && dtype != XPL_F16 && dtype != XPL_BF16)
        return xpl_fail(XPL_EINVAL, "unknown wire dtype %d", dtype);
    self->wire_dtype = dtype;
    return 0;
}

void
xpl_pub_set_schema_every(xpl_pub_t *self, uint32_t messages)
{
    assert(self);
    self->schema_every = messages;
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
            for (uint32_t k = 0; k < self->nshards; k++) {
                if (!s_covers(self, ev + 1, len, k))
                    continue;
                if (ev[0] == 1) {
                    self->shard_subs[k]++;
                    for (size_t i = 0; i < self->nmodels; i++)
                        self->models[i].streams[k].schema_pending = true;
                } else if (ev[0] == 0 && self->shard_subs[k] > 0)
                    self->shard_subs[k]--;
            }
        }
        zmq_msg_close(&m);
        timeout_ms = 0;
    }
}

/* Every shard has a subscriber (without shards: someone subscribed). */
static bool
s_all_subscribed(const xpl_pub_t *self)
{
    for (uint32_t k = 0; k < self->nshards; k++)
        if (self->shard_subs[k] <= 0)
            return false;
    return true;
}

int
xpl_pub_wait_subscriber(xpl_pub_t *self, int timeout_ms)
{
    assert(self);
    int64_t deadline = xpl_now_ms() + timeout_ms;
    for (;;) {
        s_read_subscriptions(self, 0);
        if (s_all_subscribed(self))
            return 0;
        int left = timeout_ms < 0 ? -1 : (int)(deadline - xpl_now_ms());
        if (timeout_ms >= 0 && left <= 0)
            return xpl_fail(XPL_ETIMEOUT, "no subscriber on %s within %d ms%s", self->endpoint,
                            timeout_ms, xpl_hs_hint(&self->hs));
        zmq_pollitem_t it = {self->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, left) < 0)
            return xpl_fail_zmq("wait for a subscriber");
    }
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
    const float *f = src;
    if (in != XPL_F32) {
        void *fp = self->f32;
        if (s_reserve(&fp, &self->f32_cap, count * sizeof(float)))
            return -1;
        self->f32 = fp;
        if (in == XPL_F16)
            half_f16_decode(self->f32, src, count);
        else
            half_bf16_decode(self->f32, src, count);
        f = self->f32;
    }
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

/* Send one message of batch b on the topic of `shard` (0 without shards). */
static int
s_send(xpl_pub_t *self, const xpl_batch_t *b, uint32_t shard)
{
    if (!b || !b->model)
        return xpl_fail(XPL_EINVAL, "send: no batch or model");
    s_model_t *m = s_find(self, b->model);
    if (!m)
        return xpl_fail(XPL_EINVAL, "send: no schema set for model '%s'", b->model);
    if (b->B == 0 || !b->ids || !b->attn)
        return xpl_fail(XPL_EINVAL, "send: batch of '%s' needs B >= 1, ids and attn", b->model);
    if (b->dtype != XPL_F32 && b->dtype != XPL_F16 && b->dtype != XPL_BF16)
        return xpl_fail(XPL_EINVAL, "send: unknown dtype %d", (int)b->dtype);
    for (uint32_t i = 0; i < b->B; i++)
        if (b->ids[i].is_str && !b->ids[i].s)
            return xpl_fail(XPL_EINVAL, "send: id %u is a NULL string", i);
    s_read_subscriptions(self, 0);
    s_stream_t *st = &m->streams[shard];
    int wire = self->wire_dtype == XPL_WIRE_AS_GIVEN ? (int)b->dtype : self->wire_dtype;
    size_t count = (size_t)b->B * m->L * m->H * m->n * m->n;
    bool schema = st->schema_pending
                  || (self->schema_every && st->since_schema + 1 >= self->schema_every);
    uint32_t nkeys = 10 + (b->grad ? 1 : 0) + (b->target ? 1 : 0) + (b->y ? 1 : 0)
                     + (schema ? 2 : 0);

    /* Reserve the whole message up front: one allocation, handed to
       ZeroMQ as is (zero-copy send). */
    s_out_t out = {.oom = false};
    msgpack_sbuffer_init(&out.sb);
    size_t est = 512 + (b->grad ? 2 : 1) * count * s_dtype_size(wire) + (size_t)b->B * 48;
    for (uint32_t i = 0; i < b->B; i++)
        est += b->ids[i].is_str ? strlen(b->ids[i].s) : 0;
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
    msgpack_pack_int64(&pk, b->ts ? b->ts : s_now_ns());
    xpk_key(&pk, "ids");
    msgpack_pack_array(&pk, b->B);
    for (uint32_t i = 0; i < b->B; i++)
        xpk_id(&pk, &b->ids[i]);
    xpk_key(&pk, "L");
    msgpack_pack_uint32(&pk, m->L);
    xpk_key(&pk, "H");
    msgpack_pack_uint32(&pk, m->H);
    xpk_key(&pk, "n");
    msgpack_pack_uint32(&pk, m->n);
    xpk_key(&pk, "dtype");
    xpk_str(&pk, s_dtype_name(wire));
    xpk_key(&pk, "attn");
    if (s_pack_tensor(self, &pk, b->attn, count, b->dtype, wire))
        goto fail;
    if (b->grad) {
        xpk_key(&pk, "grad");
        if (s_pack_tensor(self, &pk, b->grad, count, b->dtype, wire))
            goto fail;
    }
    if (b->target) {
        xpk_key(&pk, "target");
        msgpack_pack_array(&pk, b->B);
        for (uint32_t i = 0; i < b->B; i++)
            msgpack_pack_int64(&pk, b->target[i]);
    }
    if (b->y) {
        xpk_key(&pk, "y");
        msgpack_pack_array(&pk, b->B);
        for (uint32_t i = 0; i < b->B; i++)
            msgpack_pack_double(&pk, b->y[i]);
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

uint64_t
xpl_pub_next_seq(const xpl_pub_t *self, const char *model)
{
    assert(self);
    const s_model_t *m = model ? s_find(self, model) : NULL;
    uint64_t sum = 0;
    for (uint32_t k = 0; m && k < self->nshards; k++)
        sum += m->streams[k].seq;
    return sum;
}

int
xpl_pub_set_shards(xpl_pub_t *self, uint32_t nshards)
{
    assert(self);
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

/* A batch over several shards: one message per shard that has trades,
   in shard order, each with its trades in batch order (copied out). */
static int
s_send_split(xpl_pub_t *self, const xpl_batch_t *b, const s_model_t *m, const uint32_t *shard)
{
    size_t per = (size_t)m->L * m->H * m->n * m->n * s_dtype_size((int)b->dtype);
    xpl_id_t *ids = malloc(b->B * sizeof *ids);
    char *attn = malloc(b->B * per);
    char *grad = b->grad ? malloc(b->B * per) : NULL;
    int64_t *target = b->target ? malloc(b->B * sizeof *target) : NULL;
    double *y = b->y ? malloc(b->B * sizeof *y) : NULL;
    int rc = 0;
    if (!ids || !attn || (b->grad && !grad) || (b->target && !target) || (b->y && !y)) {
        rc = xpl_fail(XPL_ENOMEM, "out of memory splitting a batch of %u trades", b->B);
        goto done;
    }
    for (uint32_t k = 0; k < self->nshards && rc == 0; k++) {
        uint32_t c = 0;
        for (uint32_t i = 0; i < b->B; i++) {
            if (shard[i] != k)
                continue;
            ids[c] = b->ids[i];
            memcpy(attn + c * per, (const char *)b->attn + i * per, per);
            if (grad)
                memcpy(grad + c * per, (const char *)b->grad + i * per, per);
            if (target)
                target[c] = b->target[i];
            if (y)
                y[c] = b->y[i];
            c++;
        }
        if (c == 0)
            continue;
        xpl_batch_t part = *b;
        part.B = c;
        part.ids = ids;
        part.attn = attn;
        part.grad = grad;
        part.target = target;
        part.y = y;
        rc = s_send(self, &part, k);
    }
done:
    free(ids);
    free(attn);
    free(grad);
    free(target);
    free(y);
    return rc;
}

int
xpl_pub_send(xpl_pub_t *self, const xpl_batch_t *b)
{
    assert(self);
    if (self->nshards == 1 || !b || !b->model || !b->ids || b->B == 0 || !b->attn)
        return s_send(self, b, 0);      /* s_send names what is wrong */
    const s_model_t *m = s_find(self, b->model);
    if (!m || (b->dtype != XPL_F32 && b->dtype != XPL_F16 && b->dtype != XPL_BF16))
        return s_send(self, b, 0);
    uint32_t *shard = malloc(b->B * sizeof *shard);
    if (!shard)
        return xpl_fail(XPL_ENOMEM, "out of memory");
    bool one = true;
    for (uint32_t i = 0; i < b->B; i++) {
        if (b->ids[i].is_str && !b->ids[i].s) {
            free(shard);
            return xpl_fail(XPL_EINVAL, "send: id %u is a NULL string", i);
        }
        shard[i] = xpl_shard_of(&b->ids[i], self->nshards);
        one = one && shard[i] == shard[0];
    }
    /* The common case of one trade per message needs no copy. */
    int rc = one ? s_send(self, b, shard[0]) : s_send_split(self, b, m, shard);
    free(shard);
    return rc;
}
