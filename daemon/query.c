/*  query: ROUTER ops. See query.h and proto/queries.md.  */
#include "query.h"

#include "global.h"
#include "log.h"
#include "publish.h"
#include "qjob.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

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
qreq_model(server_t *s, qreq_t *q)
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
    model_t *md = models_find(&s->models, m->v.raw.ptr, m->v.raw.len);
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
s_uptime(const server_t *s)
{
    return (double)(now_mono_ns() - s->stats.start_ns) / 1e9;
}

static int
op_ping(server_t *s, qreq_t *q, msgpack_packer *pk)
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
s_models_array(server_t *s, msgpack_packer *pk)
{
    msgpack_pack_array(pk, s->models.count);
    for (uint32_t k = 0; k < s->models.count; k++)
        s_model_entry(pk, s->models.items[k]);
}

static int
op_models(server_t *s, qreq_t *q, msgpack_packer *pk)
{
    (void)q;
    qreply_ok(pk, 1);
    enc_str(pk, "models");
    s_models_array(s, pk);
    return 0;
}

static int
op_schema(server_t *s, qreq_t *q, msgpack_packer *pk)
{
    model_t *md = qreq_model(s, q);
    if (!md)
        return -1;
    const schema_t *sc = md->cur;
    qreply_ok(pk, SCHEMA_FIELDS + 3);
    s_enc_schema_head(pk, md);
    enc_str(pk, "tokens");
    msgpack_pack_array(pk, sc->shape.n);
    for (uint32_t k = 0; k < sc->shape.n; k++)
        enc_str(pk, sc->tokens[k]);
    enc_str(pk, "features");
    enc_features(pk, sc);
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
op_stats(server_t *s, qreq_t *q, msgpack_packer *pk)
{
    (void)q;
    const stats_t *st = &s->stats;
    qreply_ok(pk, 7);
    enc_str(pk, "version");
    enc_str(pk, XPL_VERSION);
    enc_str(pk, "uptime_s");
    msgpack_pack_double(pk, s_uptime(s));

    enc_str(pk, "counters");
    stats_pack_counters(pk, &(stats_view_t){st, &s->cache, &s->auth});

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
    return 0;
}

static int
s_reserve_mat(server_t *s, size_t nn, uint32_t n)
{
    if (nn <= s->cap_mat)
        return 0;
    float *a = realloc(s->mat, nn * sizeof(float)), *b = NULL, *c = NULL;
    if (a) {
        s->mat = a;
        b = realloc(s->tmp, nn * sizeof(float));
    }
    if (b) {
        s->tmp = b;
        c = realloc(s->fout, n * sizeof(float));
    }
    if (!c)
        return -1;
    s->fout = c;
    s->cap_mat = nn;
    return 0;
}

static float *
s_dup_floats(const float *p, size_t count)
{
    float *d = malloc(count * sizeof(float) + 1);
    if (d && count)
        memcpy(d, p, count * sizeof(float));
    return d;
}

/* A worker job with copies of what the rest of the reply needs. */
static qjob_t *
s_job(server_t *s, const cache_entry_t *e, uint32_t nf, bool want_flow)
{
    (void)s;
    qjob_t *j = qjob_new();
    if (!j)
        return NULL;
    const xm_shape_t *sh = &e->shape;
    size_t layers = (size_t)sh->L * sh->n * sh->n;
    j->shape = *sh;
    j->nf = nf;
    j->methods = e->methods;
    j->want_flow = want_flow;
    j->resnorm = e->resnorm;
    bool ok = (j->roll = s_dup_floats(e->roll, layers)) != NULL;
    if (ok && want_flow)
        ok = (j->flow = s_dup_floats(e->flow, layers)) != NULL;
    if (ok && e->grad)
        ok = (j->grad = s_dup_floats(e->grad, layers)) != NULL;
    for (int m = 0; m < XM_NMETHODS && ok; m++)
        if (e->methods & XM_BIT(m))
            ok = (j->attr[m] = s_dup_floats(e->attr[m], nf)) != NULL;
    if (!ok) {
        qjob_free(j);
        return NULL;
    }
    return j;
}

/* Copy the request's envelope into the job: the worker's reply goes
   back to the client that asked. */
static int
s_job_envelope(server_t *s, qjob_t *j)
{
    zmq_msg_t *env = s->qenv;
    for (int k = 0; k < s->qenv_n && k < QJOB_MAX_ENV; k++) {
        size_t len = zmq_msg_size(&env[k]);
        if (!(j->env[k] = malloc(len + 1)))
            return -1;
        memcpy(j->env[k], zmq_msg_data(&env[k]), len);
        j->env_len[k] = len;
        j->nenv = k + 1;
    }
    return 0;
}

static int
op_trade(server_t *s, qreq_t *q, msgpack_packer *pk)
{
    model_t *md = qreq_model(s, q);
    if (!md)
        return -1;
    const mpr_obj_t *ido = qreq_arg(q, "id", NULL);
    if (!ido)
        return qreq_fail(q, "bad_request", "argument 'id' is missing");
    wire_id_t id;
    if (ido->type == MPR_STR)
        id = (wire_id_t){.is_str = true, .s = {ido->v.raw.ptr, ido->v.raw.len}};
    else if (ido->type == MPR_UINT)
        id = (wire_id_t){.is_str = false, .u = ido->v.u};
    else
        return qreq_fail(q, "bad_request", "argument 'id' must be a str or uint, not %s",
                         mpr_type_name(ido->type));
    const mpr_obj_t *fo = qreq_arg(q, "flow", NULL);
    if (fo && fo->type != MPR_BOOL)
        return qreq_fail(q, "bad_request", "argument 'flow' must be a bool");
    const cache_entry_t *e = cache_get(&s->cache, md->index, &id);
    if (!e)
        return qreq_fail(q, "not_found", "trade not in the recent-trade cache of model '%s'", md->name);

    const xm_shape_t *sh = &e->shape;
    uint32_t n = sh->n, nf = xm_nfeat(sh);
    size_t nn = (size_t)n * n;
    unsigned methods = e->methods;
    bool want_flow = (fo && fo->v.b) || (s->opts.methods & XM_BIT(XM_FLOW));
    want_flow = want_flow && !(methods & XM_BIT(XM_FLOW));
    const schema_t *sc = model_schema(md, e->epoch);

    /* A large trade's matrices and flow go to the worker thread, so that
       ingest goes on meanwhile (qjob.h). */
    qjob_t *job = NULL;
    if (s->qworker && s->qenv_n > 0 && qjob_work(sh, e->grad != NULL, want_flow) >= QJOB_MIN_WORK &&
        !(job = s_job(s, e, nf, want_flow)))
        return qreq_fail(q, "bad_argument", "out of memory for the matrices");
    msgpack_packer jpk;
    if (job) {
        msgpack_packer_init(&jpk, &job->buf, msgpack_sbuffer_write);
        pk = &jpk;
    }

    const float *attr[XM_NMETHODS];
    memcpy(attr, e->attr, sizeof attr);
    if (!job && s_reserve_mat(s, nn, n))
        return qreq_fail(q, "bad_argument", "out of memory for the matrices");
    if (!job && want_flow) {
        if (flow_compute(s->qflow, sh->L, n, sh->cls, e->flow, s->fout))
            return qreq_fail(q, "bad_argument", "out of memory for flow");
        attr[XM_FLOW] = s->fout;
        methods |= XM_BIT(XM_FLOW);
    }

    qreply_ok(pk, 9 + e->has_target + e->has_y + (sc != NULL));
    enc_str(pk, "model");
    enc_strn(pk, md->name, md->name_len);
    enc_str(pk, "id");
    if (e->id_is_str)
        enc_strn(pk, e->id_s, e->id_len);
    else
        msgpack_pack_uint64(pk, e->id_u);
    enc_str(pk, "epoch");
    msgpack_pack_uint32(pk, e->epoch);
    enc_str(pk, "ts");
    msgpack_pack_int64(pk, e->ts);
    if (e->has_target) {
        enc_str(pk, "target");
        msgpack_pack_int64(pk, e->target);
    }
    if (e->has_y) {
        enc_str(pk, "y");
        msgpack_pack_double(pk, e->y);
    }
    enc_str(pk, "n");
    msgpack_pack_uint32(pk, n);
    enc_str(pk, "cls");
    msgpack_pack_int32(pk, sh->cls);
    enc_str(pk, "L");
    msgpack_pack_uint32(pk, sh->L);
    if (sc) {
        enc_str(pk, "features");
        enc_features(pk, sc);
    }
    enc_str(pk, "attr");
    if (job) {
        if (s_job_envelope(s, job)) {
            qjob_free(job);
            return qreq_fail(q, "bad_argument", "out of memory for the matrices");
        }
        qworker_submit(s->qworker, job);
        s->qdeferred = true;
        return 0;
    }
    enc_attr(pk, methods, attr, nf);
    enc_str(pk, "matrices");
    msgpack_pack_map(pk, 1 + (e->grad != NULL));
    enc_str(pk, "rollout");
    xm_rollout_matrix(sh->L, n, e->roll, s->mat, s->tmp);
    msgpack_pack_bin(pk, nn * sizeof(float));
    msgpack_pack_bin_body(pk, s->mat, nn * sizeof(float));
    if (e->grad) {
        enc_str(pk, "grad_rollout");
        xm_grad_rollout_matrix(sh->L, n, e->grad, e->resnorm, s->mat, s->tmp);
        msgpack_pack_bin(pk, nn * sizeof(float));
        msgpack_pack_bin_body(pk, s->mat, nn * sizeof(float));
    }
    return 0;
}

typedef int (*op_fn)(server_t *, qreq_t *, msgpack_packer *);

static const struct {
    const char *name;
    op_fn fn;
} s_ops[] = {
    {"ping", op_ping},
    {"models", op_models},
    {"schema", op_schema},
    {"stats", op_stats},
    {"trade", op_trade},
    {"global", global_op_global},
    {"baseline", global_op_baseline},
    {"reference", global_op_reference},
    {"drift", global_op_drift},
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
query_handle(server_t *s, const void *body, size_t len)
{
    qreq_t q;
    q.nargs = 0;
    q.code = NULL;
    q.error[0] = '\0';
    msgpack_packer *pk = &s->qpk;
    s->qbuf.size = 0;

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
        s->stats.queries++;
    else
        query_reply_error(s, q.code ? q.code : "bad_request", q.error);
}

void
query_reply_error(server_t *s, const char *code, const char *error)
{
    msgpack_packer *pk = &s->qpk;
    s->qbuf.size = 0;   /* drop any partial reply */
    s->stats.queries++;
    s->stats.query_errors++;
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
