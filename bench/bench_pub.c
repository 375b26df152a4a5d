/*  bench_pub: what libxplain's publisher costs a live model per trade.

    bench_pub EP MODE DTYPE N BATCH
    bench_pub sink EP         the null sink pub_cost.py runs for every row
                              (C, so that it keeps up with any publisher)
      MODE  full | fused (fused from full tensors, core/fuse.c on the CPU)
            | prefused (arrays fused elsewhere, e.g. on the model's GPU)
      DTYPE f32 | f16 (the wire dtype; inputs are float32 buffers)
    binds EP (tcp), waits for one subscriber (the driver's null sink),
    publishes N tab32 trades (L=4, H=8, n=32, CLS last, with gradient,
    target and y) as fast as xpl_pub_send returns, in sends of one trade
    (BATCH > 1: the publisher's micro-batching, no delay), and prints the
    process CPU time per trade (user + system, all threads: ZeroMQ's I/O
    thread sends the bytes) and the wall time per trade:
      RESULT cpu_us=... wall_us=... sent=N
    The sink must keep up (the driver checks what it received).  */
#include "fuse.h"
#include "support.h"

#include <xplain/xplain.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <zmq.h>

#define L_ 4
#define H_ 8
#define N_ 32

static double
s_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + ru.ru_utime.tv_usec +
           ru.ru_stime.tv_usec;
}

static double
s_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* A SUB that counts messages until none came for 3 s (30 s before the
   first), then prints RESULT messages=N. */
static int
s_sink(const char *ep)
{
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_SUB);
    int hwm = 100000, tmo = 30000;
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_SUBSCRIBE, "attn/", 5);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    if (zmq_connect(s, ep))
        return 1;
    printf("READY\n");
    fflush(stdout);
    long count = 0;
    zmq_msg_t m;
    zmq_msg_init(&m);
    for (;;) {
        if (zmq_msg_recv(&m, s, 0) < 0)
            break;
        if (!zmq_msg_more(&m)) {
            count++;
            if (count == 1) {
                tmo = 3000;
                zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
            }
        }
    }
    zmq_msg_close(&m);
    printf("RESULT messages=%ld\n", count);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "sink") == 0)
        return s_sink(argv[2]);
    if (argc != 6) {
        fprintf(stderr, "usage: bench_pub EP full|fused|prefused f32|f16 N BATCH\n");
        return 2;
    }
    const char *ep = argv[1], *mode = argv[2];
    int f16 = strcmp(argv[3], "f16") == 0;
    long N = atol(argv[4]), batch = atol(argv[5]);
    const size_t full = (size_t)L_ * H_ * N_ * N_, lnn = (size_t)L_ * N_ * N_, lh = L_ * H_;
    enum { POOL = 16 };     /* distinct trades, cycled */
    float *A = malloc(POOL * full * 4), *G = malloc(POOL * full * 4);
    float *M = malloc(POOL * lnn * 4), *P = malloc(POOL * lnn * 4);
    float *imp = malloc(POOL * lh * 4), *conf = malloc(POOL * lh * 4);
    double *tmp = malloc(full * sizeof(double));
    rng_t r;
    rng_seed(&r, 3);
    for (int t = 0; t < POOL; t++) {
        gen_attention(&r, tmp, (size_t)L_ * H_ * N_, N_, 3.0);
        for (size_t k = 0; k < full; k++)
            A[t * full + k] = (float)tmp[k];
        gen_gradient(&r, tmp, full, 1.0);
        for (size_t k = 0; k < full; k++)
            G[t * full + k] = (float)tmp[k];
        fuse_trade(L_, H_, N_, A + t * full, G + t * full, M + t * lnn, P + t * lnn, NULL,
                   imp + t * lh, conf + t * lh);
    }
    const char *tokens[N_];
    char names[N_][8];
    for (int j = 0; j < N_; j++) {
        snprintf(names[j], sizeof names[j], j == N_ - 1 ? "CLS" : "f%d", j);
        tokens[j] = names[j];
    }
    xpl_pub_t *pub = xpl_pub_new_bind(ep);
    if (!pub || xpl_pub_set_sndhwm(pub, 100000) || xpl_pub_set_schema(pub, "bench", L_, H_, N_, N_ - 1, tokens)) {
        fprintf(stderr, "bench_pub: %s\n", xpl_strerror());
        return 1;
    }
    xpl_pub_set_linger(pub, 10000);
    xpl_pub_set_wire_dtype(pub, f16 ? XPL_F16 : XPL_F32);
    xpl_pub_set_fused(pub, strcmp(mode, "fused") == 0);
    xpl_pub_set_batch(pub, (uint32_t)batch, 0);
    if (xpl_pub_wait_subscriber(pub, 20000)) {
        fprintf(stderr, "bench_pub: %s\n", xpl_strerror());
        return 1;
    }
    printf("READY\n");
    fflush(stdout);
    /* Warm-up (allocations, TCP windows), then the measured run. */
    double c0 = 0, w0 = 0;
    long warm = N / 10 + 10;
    for (long i = 0; i < warm + N; i++) {
        if (i == warm) {
            xpl_pub_flush(pub);
            c0 = s_cpu_us();
            w0 = s_wall_us();
        }
        int t = (int)(i % POOL);
        xpl_id_t id = {false, (uint64_t)i, NULL};
        int64_t target = i & 1;
        double y = 0.5;
        int rc;
        if (strcmp(mode, "prefused") == 0) {
            xpl_fused_batch_t b = {.model = "bench", .B = 1, .ids = &id, .dtype = XPL_F32,
                                   .fattn = M + t * lnn, .fgrad = P + t * lnn,
                                   .head_importance = imp + t * lh, .head_confidence = conf + t * lh,
                                   .target = &target, .y = &y};
            rc = xpl_pub_send_fused(pub, &b);
        } else {
            xpl_batch_t b = {.model = "bench", .B = 1, .ids = &id, .dtype = XPL_F32,
                             .attn = A + t * full, .grad = G + t * full, .target = &target, .y = &y};
            rc = xpl_pub_send(pub, &b);
        }
        if (rc) {
            fprintf(stderr, "bench_pub: send: %s\n", xpl_strerror());
            return 1;
        }
    }
    xpl_pub_flush(pub);
    double c1 = s_cpu_us(), w1 = s_wall_us();
    /* The bytes still queued are the I/O thread's to send: destroy waits
       for them (linger), and their CPU counts too. */
    xpl_pub_destroy(&pub);
    double c2 = s_cpu_us();
    printf("RESULT cpu_us=%.2f wall_us=%.2f sent=%ld cpu_send_only_us=%.2f\n", (c2 - c0) / N,
           (w1 - w0) / N, N, (c1 - c0) / N);
    free(A); free(G); free(M); free(P); free(imp); free(conf); free(tmp);
    return 0;
}
