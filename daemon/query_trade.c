/*  query_trade: the `trade` op, one cached trade with its full matrices
    and on-demand flow; large replies go to the worker thread (qjob.h).
    See query.h and proto/queries.md.  */
#include "query.h"

#include "publish.h"
#include "qjob.h"

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static int
s_reserve_mat(query_t *s, size_t nn, uint32_t n)
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
s_job(query_t *s, const cache_entry_t *e, uint32_t nf, bool want_flow)
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
    j->start = e->start;
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
s_job_envelope(query_t *s, qjob_t *j)
{
    zmq_msg_t *env = s->env;
    for (int k = 0; k < s->env_n && k < QJOB_MAX_ENV; k++) {
        size_t len = zmq_msg_size(&env[k]);
        if (!(j->env[k] = malloc(len + 1)))
            return -1;
        memcpy(j->env[k], zmq_msg_data(&env[k]), len);
        j->env_len[k] = len;
        j->nenv = k + 1;
    }
    return 0;
}

int
query_op_trade(query_t *s, qreq_t *q, msgpack_packer *pk)
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
    const cache_entry_t *e = cache_get(s->cache, md->index, &id);
    if (!e)
        return qreq_fail(q, "not_found", "trade not in the recent-trade cache of model '%s'", md->name);

    const xm_shape_t *sh = &e->shape;
    uint32_t n = sh->n, nf = e->nf ? e->nf : xm_nfeat(sh);
    size_t nn = (size_t)n * n;
    unsigned methods = e->methods;
    bool want_flow = (fo && fo->v.b) || (s->opts->methods & XM_BIT(XM_FLOW));
    want_flow = want_flow && !(methods & XM_BIT(XM_FLOW));
    const schema_t *sc = model_schema(md, e->epoch);
    /* The cached vectors are per feature; an on-demand flow is per token
       and is summed into the features here, on this thread. */
    const bool group_flow = want_flow && sc && sc->grouped && sc->nf == nf;
    if (want_flow && !group_flow && nf != xm_nfeat(sh))
        return qreq_fail(q, "not_found", "the schema of epoch %u of model '%s' is no longer kept: "
                         "flow cannot be summed into its features", e->epoch, md->name);

    /* A large trade's matrices and flow go to the worker thread, so that
       ingest goes on meanwhile (qjob.h). */
    qjob_t *job = NULL;
    if (s->worker && s->env_n > 0 && !group_flow && qjob_work(sh, e->grad != NULL, want_flow) >= QJOB_MIN_WORK &&
        !(job = s_job(s, e, nf, want_flow)))
        return qreq_fail(q, "internal", "out of memory for the matrices");
    msgpack_packer jpk;
    if (job) {
        msgpack_packer_init(&jpk, &job->buf, msgpack_sbuffer_write);
        pk = &jpk;
    }

    const float *attr[XM_NMETHODS];
    memcpy(attr, e->attr, sizeof attr);
    if (!job && s_reserve_mat(s, nn, n))
        return qreq_fail(q, "internal", "out of memory for the matrices");
    if (!job && want_flow) {
        if (flow_compute(s->flow, sh->L, n, sh->cls, e->flow, s->fout))
            return qreq_fail(q, "internal", "out of memory for flow");
        if (group_flow) {
            /* nf <= n - 1 or n values: s->tmp (n*n floats) has room */
            xm_groups_apply(&sc->gmap, s->fout, 1, s->tmp);
            memcpy(s->fout, s->tmp, nf * sizeof(float));
        }
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
            return qreq_fail(q, "internal", "out of memory for the matrices");
        }
        qworker_submit(s->worker, job);
        s->deferred = true;
        return 0;
    }
    enc_attr(pk, methods, attr, nf);
    enc_str(pk, "matrices");
    msgpack_pack_map(pk, 1 + (e->grad != NULL));
    enc_str(pk, "rollout");
    /* The start layer the vectors were computed with (0: every layer). */
    const size_t skip = (size_t)e->start * nn;
    xm_rollout_matrix(sh->L - e->start, n, e->roll + skip, s->mat, s->tmp);
    msgpack_pack_bin(pk, nn * sizeof(float));
    msgpack_pack_bin_body(pk, s->mat, nn * sizeof(float));
    if (e->grad) {
        enc_str(pk, "grad_rollout");
        xm_grad_rollout_matrix(sh->L - e->start, n, e->grad + skip, e->resnorm, s->mat, s->tmp);
        msgpack_pack_bin(pk, nn * sizeof(float));
        msgpack_pack_bin_body(pk, s->mat, nn * sizeof(float));
    }
    return 0;
}
