/*  demo: synthetic FT-Transformer-like stream. See demo.h.  */
#include "demo.h"

#include "log.h"

#include <math.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define D_L 3
#define D_H 4
#define D_N 9           /* 8 features + CLS */
#define D_CLS (D_N - 1)

static const char *s_tokens[D_N] = {"price", "size", "spread", "volatility", "side",
                                    "venue", "momentum", "imbalance", "CLS"};

/* Two importance regimes: the model leans on microstructure features,
   then on momentum and flow. */
static const double s_regimes[2][D_N - 1] = {
    {3.0, 2.2, 1.8, 1.2, 0.2, 0.1, 0.5, 0.8},
    {0.3, 0.6, 0.4, 1.0, 0.2, 0.1, 3.0, 2.4},
};

struct demo_t {
    void *sock;
    pthread_t thread;
    atomic_bool stop;
    uint64_t rate;
    uint32_t batch;
    uint64_t drift_every;       /* trades per regime, 0: one regime */
    uint64_t rng;
};

static double
s_uniform(demo_t *d)
{
    d->rng ^= d->rng << 13;
    d->rng ^= d->rng >> 7;
    d->rng ^= d->rng << 17;
    return (double)(d->rng >> 11) * 0x1p-53;
}

static double
s_normal(demo_t *d)
{
    double u = s_uniform(d), v = s_uniform(d);
    return sqrt(-2.0 * log(1.0 - u)) * cos(2.0 * M_PI * v);
}

/* One trade's attention and gradient, [L][H][n][n] float32. */
static void
s_trade(demo_t *d, const double *imp, float *A, float *G)
{
    for (int l = 0; l < D_L; l++)
        for (int h = 0; h < D_H; h++)
            for (int i = 0; i < D_N; i++) {
                double logit[D_N], mx = -1e300, sum = 0;
                for (int j = 0; j < D_N; j++) {
                    double base = j == D_CLS ? 0.5 : imp[j];
                    /* The CLS row reads the important features; other rows
                       mostly look at themselves. */
                    logit[j] = (i == D_CLS ? 1.2 * base : 0.4 * base + (i == j ? 2.0 : 0.0)) +
                               0.6 * s_normal(d) + 0.2 * h;
                    mx = logit[j] > mx ? logit[j] : mx;
                }
                for (int j = 0; j < D_N; j++)
                    sum += (logit[j] = exp(logit[j] - mx));
                for (int j = 0; j < D_N; j++) {
                    size_t k = (((size_t)l * D_H + h) * D_N + i) * D_N + j;
                    A[k] = (float)(logit[j] / sum);
                    double feat = j == D_CLS ? 0.1 : imp[j] / 3.0;
                    G[k] = (float)(feat + 0.3 * s_normal(d));
                }
            }
}

static void *
s_run(void *arg)
{
    demo_t *d = arg;
    const size_t per = (size_t)D_L * D_H * D_N * D_N;
    float *A = malloc(per * d->batch * sizeof(float)), *G = malloc(per * d->batch * sizeof(float));
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    uint64_t seq = 0, trade = 0;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    const int64_t period_ns = (int64_t)(1e9 * d->batch / (double)d->rate);

    while (A && G && !atomic_load(&d->stop)) {
        const double *imp = s_regimes[d->drift_every ? (trade / d->drift_every) % 2 : 0];
        int64_t target[4096];
        double y[4096];
        for (uint32_t b = 0; b < d->batch; b++) {
            s_trade(d, imp, A + b * per, G + b * per);
            y[b] = 1.0 / (1.0 + exp(-s_normal(d)));
            target[b] = y[b] > 0.5;
        }
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        sb.size = 0;
        /* cls and tokens go in every message: a subscriber that joins
           late (ZeroMQ's slow joiner) still learns the schema at once. */
        msgpack_pack_map(&pk, 15);
#define KEY(k) msgpack_pack_str(&pk, strlen(k)), msgpack_pack_str_body(&pk, k, strlen(k))
        KEY("v"); msgpack_pack_uint8(&pk, 1);
        KEY("model"); KEY(DEMO_MODEL);
        KEY("seq"); msgpack_pack_uint64(&pk, seq);
        KEY("ts"); msgpack_pack_int64(&pk, (int64_t)now.tv_sec * 1000000000 + now.tv_nsec);
        KEY("ids");
        msgpack_pack_array(&pk, d->batch);
        for (uint32_t b = 0; b < d->batch; b++) {
            char id[32];
            int len = snprintf(id, sizeof id, "T%08llu", (unsigned long long)(trade + b));
            msgpack_pack_str(&pk, (size_t)len);
            msgpack_pack_str_body(&pk, id, (size_t)len);
        }
        KEY("L"); msgpack_pack_uint8(&pk, D_L);
        KEY("H"); msgpack_pack_uint8(&pk, D_H);
        KEY("n"); msgpack_pack_uint8(&pk, D_N);
        KEY("dtype"); KEY("f32");
        KEY("attn");
        msgpack_pack_bin(&pk, per * d->batch * 4);
        msgpack_pack_bin_body(&pk, A, per * d->batch * 4);
        KEY("grad");
        msgpack_pack_bin(&pk, per * d->batch * 4);
        msgpack_pack_bin_body(&pk, G, per * d->batch * 4);
        KEY("target");
        msgpack_pack_array(&pk, d->batch);
        for (uint32_t b = 0; b < d->batch; b++)
            msgpack_pack_int64(&pk, target[b]);
        KEY("y");
        msgpack_pack_array(&pk, d->batch);
        for (uint32_t b = 0; b < d->batch; b++)
            msgpack_pack_double(&pk, y[b]);
        KEY("cls"); msgpack_pack_int8(&pk, D_CLS);
        KEY("tokens");
        msgpack_pack_array(&pk, D_N);
        for (int k = 0; k < D_N; k++)
            KEY(s_tokens[k]);
#undef KEY
        const char topic[] = "attn/" DEMO_MODEL;
        zmq_send(d->sock, topic, sizeof topic - 1, ZMQ_SNDMORE);
        zmq_send(d->sock, sb.data, sb.size, 0);
        seq++;
        trade += d->batch;

        next.tv_nsec += period_ns;
        while (next.tv_nsec >= 1000000000) {
            next.tv_nsec -= 1000000000;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
    msgpack_sbuffer_destroy(&sb);
    free(A);
    free(G);
    return NULL;
}

demo_t *
demo_start(void *zctx, uint64_t rate, uint32_t batch, uint64_t drift_every)
{
    demo_t *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->rate = rate;
    d->batch = batch > 4096 ? 4096 : batch;
    d->drift_every = drift_every;
    d->rng = 0x9e3779b97f4a7c15ull;
    atomic_init(&d->stop, false);
    d->sock = zmq_socket(zctx, ZMQ_PUB);
    int linger = 0;
    if (!d->sock || zmq_setsockopt(d->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_bind(d->sock, DEMO_ENDPOINT) || pthread_create(&d->thread, NULL, s_run, d)) {
        log_err("demo: cannot start: %s", zmq_strerror(zmq_errno()));
        if (d->sock)
            zmq_close(d->sock);
        free(d);
        return NULL;
    }
    if (drift_every)
        log_info("demo: streaming model '%s' at %llu trades/s (regime change every %llu trades)",
                 DEMO_MODEL, (unsigned long long)rate, (unsigned long long)drift_every);
    else
        log_info("demo: streaming model '%s' at %llu trades/s (one regime: no drift)", DEMO_MODEL,
                 (unsigned long long)rate);
    return d;
}

void
demo_stop(demo_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    demo_t *d = *self_p;
    atomic_store(&d->stop, true);
    pthread_join(d->thread, NULL);
    zmq_close(d->sock);
    free(d);
    *self_p = NULL;
}
