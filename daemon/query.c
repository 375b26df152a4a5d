/*  query: ROUTER ops. See query.h and proto/queries.md.  */
#include "aggregate.h"
#include "query.h"

#include "log.h"
#include "publish.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
query_init(query_t *q)
{
    msgpack_sbuffer_init(&q->buf);
    msgpack_packer_init(&q->pk, &q->buf, msgpack_sbuffer_write);
    return (q->flow = flow_work_new()) ? 0 : -1;
}

void
query_destroy(query_t *q)
{
    msgpack_sbuffer_destroy(&q->buf);
    flow_work_destroy(&q->flow);
    free(q->mat);
    free(q->tmp);
    free(q->fout);
}

const mpr_obj_t *
qreq_arg(const qreq_t *q, const char *name, mpr_t *items)
{
    for (int k = 0; k < q->nargs; k++)
        if (mpr_str_eq(&q->args[k].key, name)) {
            if (items)
                *items = q->args[k].items;
            return &q->args[k].val;
        }
    return NULL;
}

int
qreq_fail(qreq_t *q, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->error, sizeof q->error, fmt, ap);
    va_end(ap);
    q->code = code;
    return -1;
}

void
qreply_ok(msgpack_packer *pk, size_t fields)
{
    msgpack_pack_map(pk, fields + 2);
    enc_str(pk, "v");
    msgpack_pack_uint8(pk, 1);
    enc_str(pk, "ok");
    msgpack_pack_true(pk);
}

model_t *
qreq_model(query_t *s, qreq_t *q)
{
    const mpr_obj_t *m = qreq_arg(q, "model", NULL);
    if (!m) {
        qreq_fail(q, "bad_request", "argument 'model' is missing");
        return NULL;
    }
    if (m->type != MPR_STR) {
        qreq_fail(q, "bad_request", "argument 'model' must be a str, not %s", mpr_type_name(m->type));
        return NULL;
    }
    model_t *md = models_find(s->models, m->v.raw.ptr, m->v.raw.len);
    if (!md) {
        char name[WIRE_MODEL_MAX + 1];
        size_t len = m->v.raw.len < WIRE_MODEL_MAX ? m->v.raw.len : WIRE_MODEL_MAX;
        memcpy(name, m->v.raw.ptr, len);
        name[len] = '\0';
        for (size_t k = 0; k < len; k++)   /* keep the message printable */
            if ((unsigned char)name[k] < 0x20 || (unsigned char)name[k] >= 0x7f)
                name[k] = '?';
        qreq_fail(q, "unknown_model", "unknown model '%s'", name);
    }
    return md;
}

static double
s_uptime(const query_t *s)
{
    return (double)(now_mono_ns() - s->stats->start_ns) / 1e9;
}

static int
op_ping(query_t *s, qreq_t *q, msgpack_packer *pk)
{
    (void)q;
    qreply_ok(pk, 2);
    enc_str(pk, "version");
    enc_str(pk, XPL_VERSION);
    enc_str(pk, "uptime_s");
    msgpack_pack_double(pk, s_uptime(s));
    return 0;
}

/* The six fields naming a model's current schema, shared by the models
   and schema replies: model, epoch, L, H, n, cls. */
#define SCHEMA_FIELDS 6
static void
s_enc_schema_head(msgpack_packer *pk, const model_t *md)
{
    const schema_t *sc = md->cur;    /* every model in the table has one */
    enc_str(pk, "model");
    enc_strn(pk, md->name, md->name_len);
    enc_str(pk, "epoch");
    msgpack_pack_uint32(pk, sc->epoch);
    enc_str(pk, "L");
    msgpack_pack_uint32(pk, sc->shape.L);
    enc_str(pk, "H");
    msgpack_pack_uint32(pk, sc->shape.H);
    enc_str(pk, "n");
    msgpack_pack_uint32(pk, sc->shape.n);
    enc_str(pk, "cls");
    msgpack_pack_int32(pk, sc->shape.cls);
}

static void
s_model_entry(msgpack_packer *pk, const model_t *md)
{
    msgpack_pack_map(pk, SCHEMA_FIELDS + stats_model_named() + 2);
    s_enc_schema_head(pk, md);
    stats_pack_model(pk, md);
    enc_str(pk, "last_seq");
    msgpack_pack_uint64(pk, md->last_seq);
    enc_str(pk, "last_ts");
    msgpack_pack_int64(pk, md->last_ts);
}

static void
s_models_array(query_t *s, msgpack_packer *pk)
{
    msgpack_pack_array(pk, s->models->count);
    for (uint32_t k = 0; k < s->models->count; k++)
        s_model_entry(pk, s->models->items[k]);
}

static int
op_models(query_t *s, qreq_t *q, msgpack_packer *pk)
{
    (void)q;
    qreply_ok(pk, 1);
    enc_str(pk, "models");
    s_models_array(s, pk);
    return 0;
}

static int
op_schema(query_t *s, qreq_t *q, msgpack_packer *pk)
{
    model_t *md = qreq_model(s, q);
    if (!md)
        return -1;
    const schema_t *sc = md->cur;
    qreply_ok(pk, SCHEMA_FIELDS + 3 + sc->grouped);
    s_enc_schema_head(pk, md);
    enc_str(pk, "tokens");
    msgpack_pack_array(pk, sc->shape.n);
    for (uint32_t k = 0; k < sc->shape.n; k++)
        enc_str(pk, sc->tokens[k]);
    enc_str(pk, "features");
    enc_features(pk, sc);
    if (sc->grouped) {
        enc_str(pk, "groups");
        enc_groups(pk, sc);
    }
    enc_str(pk, "dtype");
    enc_str(pk, wire_dtype_name(md->last_dtype));
    return 0;
}

/* {count, p50, p90, p99, p999, max, mean} of a latency histogram, in us. */
static void
s_latency_map(msgpack_packer *pk, const hist_t *h)
{
    msgpack_pack_map(pk, 7);
    enc_str(pk, "count");
    msgpack_pack_uint64(pk, h->count);
    static const struct { const char *name; double q; } qs[] = {
        {"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}, {"p999", 0.999}};
    for (size_t k = 0; k < 4; k++) {
        enc_str(pk, qs[k].name);
        msgpack_pack_double(pk, (double)hist_quantile(h, qs[k].q) / 1e3);
    }
    enc_str(pk, "max");
    msgpack_pack_double(pk, (double)h->max / 1e3);
    enc_str(pk, "mean");
    msgpack_pack_double(pk, h->count ? h->sum / (double)h->count / 1e3 : 0.0);
}

static int
op_stats(query_t *s, qreq_t *q, msgpack_packer *pk)
{
    (void)q;
    const stats_t *st = s->stats;
    qreply_ok(pk, 7 + (s->agg ? 1 : 0));
    enc_str(pk, "version");
    enc_str(pk, XPL_VERSION);
    enc_str(pk, "uptime_s");
    msgpack_pack_double(pk, s_uptime(s));

    enc_str(pk, "counters");
    stats_pack_counters(pk, &(stats_view_t){st, s->cache, s->auth});

    enc_str(pk, "rejected");
    msgpack_pack_map(pk, XR_NREASONS - 1);
    for (int r = 1; r < XR_NREASONS; r++) {
        enc_str(pk, xr_reason_name((xr_reason_t)r));
        msgpack_pack_uint64(pk, st->rejected[r]);
    }

    enc_str(pk, "latency_us");
    s_latency_map(pk, &st->latency);
    enc_str(pk, "latency_ts_us");
    s_latency_map(pk, &st->latency_ts);

    enc_str(pk, "models");
    s_models_array(s, pk);
    if (s->agg) {
        enc_str(pk, "shards");
        aggregate_enc_shards(s->agg, pk);
    }
    return 0;
}

typedef int (*op_fn)(query_t *, qreq_t *, msgpack_packer *);

static const struct {
    const char *name;
    op_fn fn;
} s_ops[] = {
    {"ping", op_ping},
    {"models", op_models},
    {"schema", op_schema},
    {"stats", op_stats},
    {"trade", query_op_trade},
    {"global", query_op_global},
    {"baseline", query_op_baseline},
    {"reference", query_op_reference},
    {"drift", query_op_drift},
};

/* Read the request map into q. Returns 0 or fails with bad_request. */
static int
s_parse(qreq_t *q, const void *body, size_t len)
{
    mpr_t r;
    mpr_obj_t o;
    mpr_init(&r, body, len);
    mpr_err_t e = mpr_next(&r, &o);
    if (e == MPR_EINVAL)
        return qreq_fail(q, "bad_request", "request is not valid msgpack");
    if (e || o.type != MPR_MAP)
        return qreq_fail(q, "bad_request", "request is not a msgpack map");
    uint32_t pairs = o.v.count;
    for (uint32_t k = 0; k < pairs; k++) {
        mpr_obj_t key, val;
        if ((e = mpr_next(&r, &key)))
            return qreq_fail(q, "bad_request", "request map is %s",
                             e == MPR_EINVAL ? "not valid msgpack" : "truncated");
        if (key.type != MPR_STR)
            return qreq_fail(q, "bad_request", "request map key is a %s, not a str",
                             mpr_type_name(key.type));
        for (int a = 0; a < q->nargs; a++)
            if (q->args[a].key.v.raw.len == key.v.raw.len &&
                memcmp(q->args[a].key.v.raw.ptr, key.v.raw.ptr, key.v.raw.len) == 0)
                return qreq_fail(q, "bad_request", "request key '%.*s' appears twice",
                                 key.v.raw.len > 32 ? 32 : (int)key.v.raw.len,
                                 (const char *)key.v.raw.ptr);
        mpr_t at = r;
        if ((e = mpr_next(&r, &val)))
            return qreq_fail(q, "bad_request", "request map is %s",
                             e == MPR_EINVAL ? "not valid msgpack" : "truncated");
        mpr_t items = r;
        r = at;
        if (mpr_skip(&r, 16))
            return qreq_fail(q, "bad_request", "request map is truncated or nested too deeply");
        if (q->nargs == QUERY_MAX_ARGS)
            return qreq_fail(q, "bad_request", "more than %d arguments", QUERY_MAX_ARGS);
        q->args[q->nargs].key = key;
        q->args[q->nargs].val = val;
        q->args[q->nargs].items = items;
        q->nargs++;
    }
    if (mpr_left(&r))
        return qreq_fail(q, "bad_request", "bytes after the request map");
    const mpr_obj_t *v = qreq_arg(q, "v", NULL);
    if (!v || v->type != MPR_UINT || v->v.u != 1)
        return qreq_fail(q, "bad_request", "request needs \"v\": 1");
    const mpr_obj_t *op = qreq_arg(q, "op", NULL);
    if (!op || op->type != MPR_STR)
        return qreq_fail(q, "bad_request", "request needs \"op\" as a str");
    return 0;
}

void
query_handle(query_t *s, const void *body, size_t len)
{
    qreq_t q;
    q.nargs = 0;
    q.code = NULL;
    q.error[0] = '\0';
    msgpack_packer *pk = &s->pk;
    s->buf.size = 0;

    int rc = s_parse(&q, body, len);
    if (rc == 0) {
        const mpr_obj_t *op = qreq_arg(&q, "op", NULL);
        op_fn fn = NULL;
        for (size_t k = 0; k < sizeof s_ops / sizeof *s_ops; k++)
            if (mpr_str_eq(op, s_ops[k].name))
                fn = s_ops[k].fn;
        if (!fn)
            rc = qreq_fail(&q, "unknown_op", "unknown op '%.*s'", op->v.raw.len > 32 ? 32 : (int)op->v.raw.len,
                           (const char *)op->v.raw.ptr);
        else
            rc = fn(s, &q, pk);
    }
    if (rc == 0)
        s->stats->queries++;
    else
        query_reply_error(s, q.code ? q.code : "bad_request", q.error);
}

void
query_reply_error(query_t *s, const char *code, const char *error)
{
    msgpack_packer *pk = &s->pk;
    s->buf.size = 0;   /* drop any partial reply */
    s->stats->queries++;
    s->stats->query_errors++;
    msgpack_pack_map(pk, 4);
    enc_str(pk, "v");
    msgpack_pack_uint8(pk, 1);
    enc_str(pk, "ok");
    msgpack_pack_false(pk);
    enc_str(pk, "code");
    enc_str(pk, code);
    enc_str(pk, "error");
    /* Echoed input may not be UTF-8 or printable; the error must be. */
    char clean[256];
    size_t k = 0;
    for (; error[k] && k + 1 < sizeof clean; k++)
        clean[k] = (unsigned char)error[k] >= 0x80 || (unsigned char)error[k] < 0x20 ? '?' : error[k];
    clean[k] = '\0';
    enc_str(pk, clean);
    log_limited(LOGK_QUERY_ERROR, LOG_INFO_, "query: %s: %s", code, clean);
}
