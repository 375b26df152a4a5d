/*  libxplain's publisher: the fused form and micro-batching (no daemon).

    A raw SUB receives what xpl_pub sends; the daemon's own decoder
    (core/wire.c, fused form on) reads it, and the daemon's maths
    explains it: the fused message of a batch explains exactly as the
    full message of the same batch does (1e-6 relative, f32); f16 on
    the wire holds the f16 rounding of the fused values; pre-fused arrays
    go out as given; micro-batching sends `batch` trades a message, the
    rest after the delay (waited for with a deadline), and on flush and
    destroy.  */
#include "fuse.h"
#include "half.h"
#include "support.h"
#include "wire.h"
#include "xmath.h"

#include <xplain/xplain.h>

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define L_ 3
#define H_ 4
#define N_ 6
#define NN (N_ * N_)
#define FULL (L_ * H_ * NN)
#define LNN (L_ * NN)
#define LH (L_ * H_)

static const char *TOKENS[N_] = {"a", "b", "c", "d", "e", "CLS"};

typedef struct {
    xpl_pub_t *pub;
    void *ctx, *sub;
    wire_decoder_t dec;
    zmq_msg_t parts[2];
    bool have;
} fx_t;

static void
fx_open(fx_t *f, const char *model)
{
    memset(f, 0, sizeof *f);
    f->pub = xpl_pub_new_bind("tcp://127.0.0.1:*");
    cr_assert_not_null(f->pub, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(f->pub, model, L_, H_, N_, N_ - 1, TOKENS), 0);
    f->ctx = zmq_ctx_new();
    f->sub = zmq_socket(f->ctx, ZMQ_SUB);
    zmq_setsockopt(f->sub, ZMQ_SUBSCRIBE, "attn/", 5);
    cr_assert_eq(zmq_connect(f->sub, xpl_pub_endpoint(f->pub)), 0);
    cr_assert_eq(xpl_pub_wait_subscriber(f->pub, 10000), 0, "the test's SUB never subscribed: %s",
                 xpl_strerror());
    wire_limits_t lim;
    wire_limits_default(&lim);
    lim.fused = true;
    wire_decoder_init(&f->dec, &lim);
}

static void
fx_drop(fx_t *f)
{
    if (f->have) {
        zmq_msg_close(&f->parts[0]);
        zmq_msg_close(&f->parts[1]);
        f->have = false;
    }
}

/* Receive and decode the next message, waiting up to timeout_ms. */
static bool
fx_recv(fx_t *f, int timeout_ms, wire_ingest_t *in)
{
    fx_drop(f);
    zmq_pollitem_t it = {f->sub, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0)
        return false;
    for (int k = 0; k < 2; k++) {
        zmq_msg_init(&f->parts[k]);
        cr_assert_geq(zmq_msg_recv(&f->parts[k], f->sub, 0), 0);
    }
    f->have = true;
    xr_reason_t r = wire_decode_ingest(&f->dec, zmq_msg_data(&f->parts[0]), zmq_msg_size(&f->parts[0]),
                                       zmq_msg_data(&f->parts[1]), zmq_msg_size(&f->parts[1]), in);
    cr_assert_eq(r, XR_OK, "%s: %s", xr_reason_name(r), wire_detail(&f->dec));
    return true;
}

static void
fx_close(fx_t *f)
{
    fx_drop(f);
    xpl_pub_destroy(&f->pub);
    zmq_close(f->sub);
    zmq_ctx_term(f->ctx);
    wire_decoder_destroy(&f->dec);
}

static void
make_full(uint32_t B, uint64_t seed, float *A, float *G)
{
    rng_t r;
    rng_seed(&r, seed);
    double *a = malloc(B * FULL * sizeof(double)), *g = malloc(B * FULL * sizeof(double));
    gen_attention(&r, a, (size_t)B * L_ * H_ * N_, N_, 2.0);
    gen_gradient(&r, g, (size_t)B * FULL, 1.0);
    for (size_t k = 0; k < (size_t)B * FULL; k++) {
        A[k] = (float)a[k];
        G[k] = (float)g[k];
    }
    free(a);
    free(g);
}

Test(client_fused, fused_message_explains_like_the_full_one)
{
    enum { B = 3 };
    static float A[B * FULL], G[B * FULL];
    make_full(B, 5, A, G);
    xpl_id_t ids[B] = {{true, 0, "t0"}, {false, 11, NULL}, {true, 0, "t2"}};
    int64_t target[B] = {1, 0, 1};
    fx_t f;
    fx_open(&f, "cf");
    xpl_batch_t b = {.model = "cf", .B = B, .ids = ids, .dtype = XPL_F32, .attn = A, .grad = G,
                     .target = target};
    cr_assert_eq(xpl_pub_set_fused(f.pub, true), 0);
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0, "%s", xpl_strerror());
    wire_ingest_t in;
    cr_assert(fx_recv(&f, 10000, &in), "no fused message within 10 s");
    cr_assert(in.fused);
    cr_assert_eq(in.B, B);
    cr_assert_eq(in.shape.H, H_);
    cr_assert_not_null(in.fgrad);
    cr_assert_null(in.fgrad_signed);
    cr_assert_eq(in.trade_bytes, LNN * 4);
    xm_shape_t s = {L_, H_, N_, N_ - 1};
    /* Every served method the publisher's fused form carries: not
       grad_rollout_signed (no fgrad_signed sent) nor lrp_rollout (no
       relevance in either form here). */
    xm_opts_t o = {.methods = XM_ALL_METHODS & ~XM_BIT(XM_GRAD_ROLLOUT_SIGNED) &
                              ~XM_BIT(XM_LRP_ROLLOUT)};
    xm_work_t *wu = xm_work_new(), *wf = xm_work_new();
    for (uint32_t t = 0; t < B; t++) {
        float M[LNN], P[LNN], imp[LH], conf[LH];
        fuse_trade(L_, H_, N_, A + t * FULL, G + t * FULL, M, P, NULL, imp, conf);
        cr_assert_eq(memcmp(in.fattn + t * in.trade_bytes, M, sizeof M), 0, "trade %u: fattn", t);
        cr_assert_eq(memcmp(in.fgrad + t * in.trade_bytes, P, sizeof P), 0, "trade %u: fgrad", t);
        cr_assert_eq(memcmp(in.head_importance + t * in.trade_head_bytes, imp, sizeof imp), 0);
        cr_assert_eq(memcmp(in.head_confidence + t * in.trade_head_bytes, conf, sizeof conf), 0);
        xm_result_t ru, rf;
        cr_assert_eq(xm_explain(wu, &o, &s, XM_F32, A + t * FULL, G + t * FULL, &ru), XM_OK);
        xm_fused_t fin = {.mean = in.fattn + t * in.trade_bytes, .pos = in.fgrad + t * in.trade_bytes,
                          .importance = in.head_importance + t * in.trade_head_bytes,
                          .confidence = in.head_confidence + t * in.trade_head_bytes,
                          .ntargets = 1};
        cr_assert_eq(xm_explain_fused(wf, &o, &s, XM_F32, &fin, &rf), XM_OK);
        cr_assert_eq(rf.computed, ru.computed);
        cr_assert_eq(ru.computed, o.methods);
        for (int m = 0; m < XM_NMETHODS; m++)
            for (uint32_t k = 0; (ru.computed & XM_BIT(m)) && k < N_ - 1; k++)
                cr_assert(close_enough(rf.attr[m][k], ru.attr[m][k], 1e-6, 1e-30),
                          "trade %u %s[%u]: fused %.9g full %.9g", t,
                          xm_method_name((xm_method_t)m), k, rf.attr[m][k], ru.attr[m][k]);
    }
    /* f16 on the wire: the f16 rounding of the fused values; no grad. */
    cr_assert_eq(xpl_pub_set_wire_dtype(f.pub, XPL_F16), 0);
    b.grad = NULL;
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0, "%s", xpl_strerror());
    cr_assert(fx_recv(&f, 10000, &in), "no f16 fused message within 10 s");
    cr_assert_eq(in.dtype, XM_F16);
    cr_assert_null(in.fgrad);
    cr_assert_null(in.head_importance);
    for (uint32_t t = 0; t < B; t++) {
        float M[LNN], P[LNN], imp[LH], conf[LH], got[LNN];
        uint16_t h[LNN];
        fuse_trade(L_, H_, N_, A + t * FULL, NULL, M, P, NULL, imp, conf);
        half_f16_encode(h, M, LNN);
        cr_assert_eq(memcmp(in.fattn + t * in.trade_bytes, h, sizeof h), 0, "trade %u: f16 fattn", t);
        half_f16_decode(got, h, LNN);
        for (size_t k = 0; k < LNN; k++)
            cr_assert(close_enough(got[k], M[k], 1e-3, 1e-4));
    }
    xm_work_destroy(&wu);
    xm_work_destroy(&wf);
    fx_close(&f);
}

Test(client_fused, pre_fused_arrays_go_out_as_given)
{
    static float A[FULL], G[FULL];
    make_full(1, 6, A, G);
    float M[LNN], P[LNN], S[LNN], imp[LH], conf[LH];
    fuse_trade(L_, H_, N_, A, G, M, P, S, imp, conf);
    xpl_id_t id = {true, 0, "pf"};
    double y = 0.25;
    fx_t f;
    fx_open(&f, "pf");
    xpl_fused_batch_t fb = {.model = "pf", .B = 1, .ids = &id, .dtype = XPL_F32, .fattn = M,
                            .fgrad = P, .fgrad_signed = S, .head_importance = imp,
                            .head_confidence = conf, .y = &y};
    cr_assert_eq(xpl_pub_send_fused(f.pub, &fb), 0, "%s", xpl_strerror());
    wire_ingest_t in;
    cr_assert(fx_recv(&f, 10000, &in), "no message within 10 s");
    cr_assert(in.fused);
    cr_assert_eq(memcmp(in.fattn, M, sizeof M), 0);
    cr_assert_eq(memcmp(in.fgrad, P, sizeof P), 0);
    cr_assert_eq(memcmp(in.fgrad_signed, S, sizeof S), 0);
    cr_assert_eq(memcmp(in.head_importance, imp, sizeof imp), 0);
    cr_assert_float_eq(in.y[0], 0.25, 0);
    /* Refused: fgrad without importance; signed without fgrad. */
    fb.head_importance = NULL;
    cr_assert_eq(xpl_pub_send_fused(f.pub, &fb), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    fb.fgrad = NULL;
    cr_assert_eq(xpl_pub_send_fused(f.pub, &fb), -1);
    fb.fgrad_signed = NULL;
    fb.head_confidence = NULL;
    cr_assert_eq(xpl_pub_send_fused(f.pub, &fb), -1);
    cr_assert_eq(xpl_pub_set_sndhwm(f.pub, -1), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_eq(xpl_pub_set_sndhwm(f.pub, 5000), 0);
    fx_close(&f);
}

static int64_t
mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

Test(client_fused, micro_batching)
{
    enum { T = 10 };
    static float A[T * FULL], G[T * FULL];
    make_full(T, 7, A, G);
    fx_t f;
    fx_open(&f, "mb");
    cr_assert_eq(xpl_pub_set_batch(f.pub, 0, 0), -1);
    cr_assert_eq(xpl_pub_set_batch(f.pub, 4, 200000), 0);
    cr_assert_eq(xpl_pub_set_fused(f.pub, true), 0);
    int64_t t0 = mono_ms();
    for (uint32_t t = 0; t < T; t++) {
        xpl_id_t id = {false, t, NULL};
        int64_t target = t % 2;
        xpl_batch_t b = {.model = "mb", .B = 1, .ids = &id, .dtype = XPL_F32, .attn = A + t * FULL,
                         .grad = G + t * FULL, .target = &target};
        cr_assert_eq(xpl_pub_send(f.pub, &b), 0, "%s", xpl_strerror());
    }
    wire_ingest_t in;
    for (uint32_t m = 0; m < 2; m++) {
        cr_assert(fx_recv(&f, 10000, &in), "no batch %u within 10 s", m);
        cr_assert_eq(in.B, 4);
        for (uint32_t k = 0; k < 4; k++) {
            uint32_t t = 4 * m + k;
            cr_assert_eq(in.ids[k].u, t);
            cr_assert_eq(in.target[k], (int64_t)(t % 2));
            float M[LNN], P[LNN], imp[LH], conf[LH];
            fuse_trade(L_, H_, N_, A + t * FULL, G + t * FULL, M, P, NULL, imp, conf);
            cr_assert_eq(memcmp(in.fattn + k * in.trade_bytes, M, sizeof M), 0, "trade %u", t);
            cr_assert_eq(memcmp(in.fgrad + k * in.trade_bytes, P, sizeof P), 0, "trade %u", t);
        }
    }
    cr_assert_eq(xpl_pub_pending(f.pub), 2);
    cr_assert(fx_recv(&f, 10000, &in), "the batch timer did not send the last 2 trades within 10 s");
    cr_assert_geq(mono_ms() - t0, 190);
    cr_assert_eq(in.B, 2);
    cr_assert_eq(in.ids[1].u, 9);
    /* Another form sends what is pending first; flush and destroy send. */
    xpl_id_t id = {true, 0, "g"};
    xpl_batch_t b = {.model = "mb", .B = 1, .ids = &id, .dtype = XPL_F32, .attn = A, .grad = G};
    cr_assert_eq(xpl_pub_set_batch(f.pub, 4, 0), 0);
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0);
    b.grad = NULL;
    id.s = "nog";
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0);
    cr_assert(fx_recv(&f, 10000, &in), "the pending trade was not sent when the form changed");
    cr_assert(in.B == 1 && in.fgrad && memcmp(in.ids[0].s.ptr, "g", 1) == 0);
    cr_assert_not(fx_recv(&f, 300, &in), "a trade went out before its batch filled (no delay)");
    cr_assert_eq(xpl_pub_flush(f.pub), 0);
    cr_assert(fx_recv(&f, 10000, &in), "flush sent nothing");
    cr_assert(in.B == 1 && !in.fgrad && memcmp(in.ids[0].s.ptr, "nog", 3) == 0);
    uint64_t seq = in.seq;
    id.s = "last";
    cr_assert_eq(xpl_pub_send(f.pub, &b), 0);
    fx_drop(&f);
    xpl_pub_destroy(&f.pub);
    cr_assert(fx_recv(&f, 10000, &in), "destroy did not send the pending trade");
    cr_assert_eq(in.seq, seq + 1);
    cr_assert(memcmp(in.ids[0].s.ptr, "last", 4) == 0);
    fx_close(&f);
}
