/*  fuzz_ingest: the ingest path from frames to attributions.

    Input layout: one byte k, then k bytes of topic (fewer if the input
    ends), then the body: so the fuzzer controls both frames, and a seed
    is readable as topic + msgpack (tests/fuzz/make_corpus.py writes them).

    Each input is decoded by wire_decode_ingest with small limits; what the
    decoder promises is checked, not just survived: a rejection has a
    known reason and a detail, an accepted message is a view that lies
    inside the body and within the limits. Accepted messages then go
    through the model table and schema epochs (models.c) and every trade
    through xm_explain with every method (flow included: the limits keep
    it fast) and the full rollout matrices the trade query builds.  */
#include "models.h"
#include "wire.h"
#include "xmath.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TOKENS 12

static wire_decoder_t s_dec;
static xm_work_t *s_work;
static float s_mat[MAX_TOKENS * MAX_TOKENS], s_tmp[MAX_TOKENS * MAX_TOKENS];

/* A broken promise is a crash, so that the fuzzer reports it. */
#define REQUIRE(cond)                                                                       \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "fuzz_ingest: %s:%d: broken: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                        \
        }                                                                                   \
    } while (0)

static bool
s_inside(const void *p, size_t len, const uint8_t *lo, size_t size)
{
    const uint8_t *q = (const uint8_t *)p;
    return q >= lo && len <= size && q - lo <= (ptrdiff_t)(size - len);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    wire_limits_t lim = {.max_batch = 8, .max_layers = 4, .max_heads = 4,
                         .max_tokens = MAX_TOKENS, .max_elems = 4096, .max_str = 32};
    wire_decoder_init(&s_dec, &lim);
    s_work = xm_work_new();
    xm_blas_single_thread();
    return s_work ? 0 : -1;
}

static void
s_check_view(const wire_ingest_t *in, const uint8_t *topic, size_t tlen, const uint8_t *body,
             size_t blen)
{
    const wire_limits_t *lim = &s_dec.lim;
    REQUIRE(in->model.len == tlen - 5 && memcmp(in->model.ptr, topic + 5, in->model.len) == 0);
    REQUIRE(wire_model_name_ok(in->model.ptr, in->model.len));
    REQUIRE(s_inside(in->model.ptr, in->model.len, body, blen));
    REQUIRE(in->has_seq);
    REQUIRE(in->B >= 1 && in->B <= lim->max_batch);
    const xm_shape_t *sh = &in->shape;
    REQUIRE(sh->L >= 1 && sh->L <= lim->max_layers && sh->H >= 1 && sh->H <= lim->max_heads);
    REQUIRE(sh->n >= 1 && sh->n <= lim->max_tokens);
    REQUIRE(!in->has_cls || (sh->cls >= -1 && sh->cls < (int32_t)sh->n));
    REQUIRE((uint64_t)in->B * sh->L * sh->H * sh->n * sh->n <= lim->max_elems);
    REQUIRE(in->trade_bytes == (size_t)sh->L * sh->H * sh->n * sh->n * xm_dtype_size(in->dtype));
    REQUIRE(s_inside(in->attn, in->trade_bytes * in->B, body, blen));
    REQUIRE(!in->grad || s_inside(in->grad, in->trade_bytes * in->B, body, blen));
    for (uint32_t b = 0; b < in->B; b++) {
        const wire_id_t *id = &in->ids[b];
        if (id->is_str) {
            REQUIRE(id->s.len <= lim->max_str && s_inside(id->s.ptr, id->s.len, body, blen));
            REQUIRE(wire_utf8_ok(id->s.ptr, id->s.len));
        }
    }
    if (in->tokens)
        for (uint32_t k = 0; k < sh->n; k++) {
            REQUIRE(in->tokens[k].len <= lim->max_str);
            REQUIRE(s_inside(in->tokens[k].ptr, in->tokens[k].len, body, blen));
            REQUIRE(wire_utf8_ok(in->tokens[k].ptr, in->tokens[k].len));
        }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t tlen = data[0] < size - 1 ? data[0] : size - 1;
    const uint8_t *topic = data + 1, *body = topic + tlen;
    size_t blen = size - 1 - tlen;

    wire_ingest_t in;
    xr_reason_t r = wire_decode_ingest(&s_dec, topic, tlen, body, blen, &in);
    REQUIRE((unsigned)r < XR_NREASONS);
    if (r != XR_OK) {
        REQUIRE(wire_detail(&s_dec)[0] != '\0');
        REQUIRE(strlen(wire_detail(&s_dec)) < sizeof s_dec.detail);
        return 0;
    }
    s_check_view(&in, topic, tlen, body, blen);

    /* The model table and schema epochs, fresh for every input so that a
       crash never depends on the inputs before it. */
    models_t models;
    if (models_init(&models, 2))
        return 0;
    model_t *md = models_add(&models, in.model.ptr, in.model.len);
    REQUIRE(md);
    bool new_epoch, restart;
    char why[160];
    model_track_seq(md, in.seq, &restart);
    xr_reason_t sr = model_apply_schema(md, &in, &new_epoch, why, sizeof why);
    REQUIRE(sr == XR_OK || sr == XR_NO_SCHEMA || sr == XR_INTERNAL);
    if (sr == XR_OK) {
        REQUIRE(new_epoch && md->cur && md->cur->epoch == 1);
        REQUIRE(md->cur->nf == xm_nfeat(&md->cur->shape));
        /* The same message again is the same schema. */
        sr = model_apply_schema(md, &in, &new_epoch, why, sizeof why);
        REQUIRE(sr == XR_OK);
    }
    models_destroy(&models);

    xm_shape_t shape = in.shape;
    if (!in.has_cls)
        shape.cls = -1;
    xm_opts_t opts = {.methods = XM_CLASSIC_METHODS, .fusion = (xm_fusion_t)(in.seq % 3),
                      .grad_resnorm = (in.seq & 4) != 0};
    uint32_t nf = xm_nfeat(&shape);
    volatile float sink = 0;
    for (uint32_t b = 0; b < in.B; b++) {
        xm_result_t res;
        const uint8_t *a = in.attn + (size_t)b * in.trade_bytes;
        const uint8_t *g = in.grad ? in.grad + (size_t)b * in.trade_bytes : NULL;
        xm_err_t rc = xm_explain(s_work, &opts, &shape, in.dtype, a, g, &res);
        REQUIRE(rc == XM_OK || rc == XM_ENONFINITE || rc == XM_ENOMEM);
        if (rc != XM_OK)
            continue;
        unsigned want = opts.methods & (g ? XM_CLASSIC_METHODS : ~XM_GRAD_METHODS);
        REQUIRE(res.computed == want);
        for (int m = 0; m < XM_NMETHODS; m++) {
            if (!(res.computed & XM_BIT(m)))
                continue;
            REQUIRE(res.attr[m]);
            for (uint32_t k = 0; k < nf; k++)
                sink += res.attr[m][k];
        }
        xm_rollout_matrix(shape.L, shape.n, xm_work_rollout_layers(s_work), s_mat, s_tmp);
        if (g)
            xm_grad_rollout_matrix(shape.L, shape.n, xm_work_grad_layers(s_work), opts.grad_resnorm,
                                   s_mat, s_tmp);
        sink += s_mat[0];
    }
    (void)sink;
    return 0;
}
