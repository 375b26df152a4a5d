/*  bench_common: workloads and message building shared by the benchmark
    executables (bench_xplain: transport and daemon; bench_math: the math
    library in process). Header-only so that every bench_*.c stays one
    self-contained executable.  */
#ifndef XPL_BENCH_COMMON_H
#define XPL_BENCH_COMMON_H

#include "half.h"
#include "support.h"
#include "xmath.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *name;
    uint32_t L, H, n;
    int32_t cls;        /* CLS last (FT-Transformer style) unless -1 */
    xm_dtype_t dtype;
    uint32_t B;
    int grad;
} wl_t;

/* The named workloads of the benchmark tables (bench/README.md, "Workloads"). */
static const wl_t WORKLOADS[] = {
    {"tab32", 4, 8, 32, 31, XM_F32, 1, 1},
    {"tab32-b64", 4, 8, 32, 31, XM_F32, 64, 1},
    {"tab32-f16", 4, 8, 32, 31, XM_F16, 1, 1},
    {"tab16", 3, 4, 16, 15, XM_F32, 1, 1},
    {"wide128", 6, 8, 128, 127, XM_F32, 1, 1},
};
#define N_WORKLOADS (sizeof WORKLOADS / sizeof WORKLOADS[0])

static inline const wl_t *
wl_find(const char *name)
{
    for (size_t k = 0; k < N_WORKLOADS; k++)
        if (strcmp(WORKLOADS[k].name, name) == 0)
            return &WORKLOADS[k];
    return NULL;
}

/* "sweep:n=64,L=4" style ad-hoc shapes (H=8, f32, B=1, CLS last). */
static inline int
wl_parse(const char *name, wl_t *out)
{
    const wl_t *w = wl_find(name);
    if (w) {
        *out = *w;
        return 0;
    }
    unsigned n, L;
    if (sscanf(name, "n%uL%u", &n, &L) == 2 && n >= 2 && L >= 1) {
        *out = (wl_t){NULL, L, 8, n, (int32_t)n - 1, XM_F32, 1, 1};
        return 0;
    }
    return -1;
}

static inline size_t
wl_trade_elems(const wl_t *w)
{
    return (size_t)w->L * w->H * w->n * w->n;
}

/* Bytes of tensor data per trade (attn + grad). */
static inline size_t
wl_trade_bytes(const wl_t *w)
{
    return wl_trade_elems(w) * xm_dtype_size(w->dtype) * (w->grad ? 2 : 1);
}

static inline int64_t
now_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t
now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Random attention and gradient for `trades` trades of a workload, in
   its wire dtype (little-endian bytes). */
static inline void
wl_tensors(const wl_t *w, uint32_t trades, uint64_t seed, void **attn, void **grad)
{
    size_t cnt = wl_trade_elems(w) * trades, es = xm_dtype_size(w->dtype);
    double *tmp = malloc(cnt * sizeof *tmp);
    *attn = malloc(cnt * es);
    *grad = w->grad ? malloc(cnt * es) : NULL;
    if (!tmp || !*attn || (w->grad && !*grad)) {
        fprintf(stderr, "out of memory for tensors\n");
        exit(2);
    }
    rng_t r;
    rng_seed(&r, seed);
    size_t per = (size_t)w->n * w->n;
    for (size_t q = 0; q < cnt / per; q++)
        gen_attention(&r, tmp + q * per, w->n, (int)w->n, 4.0 * (0.3 + rng_uniform(&r)));
    encode_dtype((int)w->dtype, tmp, cnt, *attn, tmp);
    if (w->grad) {
        gen_gradient(&r, tmp, cnt, 1.0);
        encode_dtype((int)w->dtype, tmp, cnt, *grad, tmp);
    }
    free(tmp);
}

/* A pre-encoded ingest message whose seq, ts and ids are patched in
   place before every send. */
typedef struct {
    char topic[32];
    size_t topic_len;
    msgpack_sbuffer body;
    size_t off_seq, off_ts, off_ids;    /* each value: 1 type byte + 8 bytes */
    uint32_t B;
} wmsg_t;

static inline void
s_be64_put(char *p, uint64_t v)
{
    for (int k = 7; k >= 0; k--) {
        p[k] = (char)(v & 0xff);
        v >>= 8;
    }
}

static inline void
s_pk_str(msgpack_packer *pk, const char *s)
{
    size_t len = strlen(s);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

static inline void
wmsg_build(wmsg_t *m, const wl_t *w, const char *model, uint64_t seed)
{
    void *attn, *grad;
    wl_tensors(w, w->B, seed, &attn, &grad);
    size_t bytes = wl_trade_elems(w) * w->B * xm_dtype_size(w->dtype);
    m->topic_len = (size_t)snprintf(m->topic, sizeof m->topic, "attn/%s", model);
    m->B = w->B;
    msgpack_sbuffer_init(&m->body);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &m->body, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 15);
    s_pk_str(&pk, "v");
    msgpack_pack_uint8(&pk, 1);
    s_pk_str(&pk, "model");
    s_pk_str(&pk, model);
    s_pk_str(&pk, "seq");
    m->off_seq = m->body.size;
    msgpack_pack_fix_uint64(&pk, 0);
    s_pk_str(&pk, "ts");
    m->off_ts = m->body.size;
    msgpack_pack_fix_int64(&pk, 0);
    s_pk_str(&pk, "ids");
    msgpack_pack_array(&pk, w->B);
    m->off_ids = m->body.size;
    for (uint32_t b = 0; b < w->B; b++)
        msgpack_pack_fix_uint64(&pk, 0);
    s_pk_str(&pk, "L");
    msgpack_pack_uint32(&pk, w->L);
    s_pk_str(&pk, "H");
    msgpack_pack_uint32(&pk, w->H);
    s_pk_str(&pk, "n");
    msgpack_pack_uint32(&pk, w->n);
    s_pk_str(&pk, "dtype");
    s_pk_str(&pk, w->dtype == XM_F32 ? "f32" : w->dtype == XM_F16 ? "f16" : "bf16");
    s_pk_str(&pk, "cls");
    msgpack_pack_int32(&pk, w->cls);
    s_pk_str(&pk, "tokens");
    msgpack_pack_array(&pk, w->n);
    for (uint32_t j = 0; j < w->n; j++) {
        char tok[24];
        if ((int32_t)j == w->cls)
            snprintf(tok, sizeof tok, "CLS");
        else
            snprintf(tok, sizeof tok, "f%u", j);
        s_pk_str(&pk, tok);
    }
    s_pk_str(&pk, "target");
    msgpack_pack_array(&pk, w->B);
    for (uint32_t b = 0; b < w->B; b++)
        msgpack_pack_int32(&pk, (int32_t)(b & 1));
    s_pk_str(&pk, "y");
    msgpack_pack_array(&pk, w->B);
    for (uint32_t b = 0; b < w->B; b++)
        msgpack_pack_double(&pk, 0.5);
    s_pk_str(&pk, "attn");
    msgpack_pack_bin(&pk, bytes);
    msgpack_pack_bin_body(&pk, attn, bytes);
    s_pk_str(&pk, "grad");
    if (grad) {
        msgpack_pack_bin(&pk, bytes);
        msgpack_pack_bin_body(&pk, grad, bytes);
    } else {
        msgpack_pack_nil(&pk);
    }
    free(attn);
    free(grad);
}

/* Patch seq, ts and the B ids (id0, id0 + 1, ...). */
static inline void
wmsg_patch(wmsg_t *m, uint64_t seq, int64_t ts, uint64_t id0)
{
    s_be64_put(m->body.data + m->off_seq + 1, seq);
    s_be64_put(m->body.data + m->off_ts + 1, (uint64_t)ts);
    for (uint32_t b = 0; b < m->B; b++)
        s_be64_put(m->body.data + m->off_ids + 9 * b + 1, id0 + b);
}

#endif
