/*  daemon_fixture: the daemon's modules wired the way server_wire does,
    without sockets: the publisher hands what it would send to a capture
    list, and ingest messages are built in memory. Header-only (static
    functions), for the unit tests of global, publish, query and ingest.  */
#ifndef XPL_DAEMON_FIXTURE_H
#define XPL_DAEMON_FIXTURE_H

#include "cache.h"
#include "config.h"
#include "global.h"
#include "ingest.h"
#include "log.h"
#include "models.h"
#include "mpr.h"
#include "publish.h"
#include "query.h"
#include "stats.h"
#include "wire.h"

#include <criterion/criterion.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- capture ----------------------------------------------------------- */

#define FX_MAX_SENT 512

typedef struct {
    char topic[80];
    uint8_t *body;
    size_t len;
} fx_msg_t;

typedef struct {
    fx_msg_t msg[FX_MAX_SENT];
    int n;
    bool refuse;            /* the sink fails (a full socket) */
} fx_capture_t;

static __attribute__((unused)) int
fx_sink(void *arg, const void *topic, size_t tlen, const void *body, size_t blen)
{
    fx_capture_t *c = arg;
    if (c->refuse)
        return -1;
    cr_assert_lt(c->n, FX_MAX_SENT, "capture full");
    fx_msg_t *m = &c->msg[c->n++];
    cr_assert_lt(tlen, sizeof m->topic);
    memcpy(m->topic, topic, tlen);
    m->topic[tlen] = '\0';
    m->body = malloc(blen + 1);
    memcpy(m->body, body, blen);
    m->len = blen;
    return 0;
}

static __attribute__((unused)) void
fx_capture_clear(fx_capture_t *c)
{
    for (int k = 0; k < c->n; k++)
        free(c->msg[k].body);
    c->n = 0;
}

/* Messages captured on topics starting with `prefix`. */
static __attribute__((unused)) int
fx_count(const fx_capture_t *c, const char *prefix)
{
    int n = 0;
    for (int k = 0; k < c->n; k++)
        n += strncmp(c->msg[k].topic, prefix, strlen(prefix)) == 0;
    return n;
}

/* ---- decoded bodies ---------------------------------------------------- */

/* A body or reply, unpacked; fx_get looks a key up in a map. */
typedef struct {
    msgpack_unpacked u;
} fx_doc_t;

static __attribute__((unused)) const msgpack_object *
fx_decode(fx_doc_t *d, const void *p, size_t len)
{
    msgpack_unpacked_init(&d->u);
    size_t off = 0;
    cr_assert_eq(msgpack_unpack_next(&d->u, p, len, &off), MSGPACK_UNPACK_SUCCESS, "not msgpack");
    cr_assert_eq(off, len, "bytes after the body");
    cr_assert_eq(d->u.data.type, MSGPACK_OBJECT_MAP, "body is not a map");
    return &d->u.data;
}

static __attribute__((unused)) void
fx_doc_free(fx_doc_t *d)
{
    msgpack_unpacked_destroy(&d->u);
}

static __attribute__((unused)) const msgpack_object *
fx_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t k = 0; k < map->via.map.size; k++) {
        const msgpack_object *kk = &map->via.map.ptr[k].key;
        if (kk->type == MSGPACK_OBJECT_STR && kk->via.str.size == strlen(key) &&
            memcmp(kk->via.str.ptr, key, kk->via.str.size) == 0)
            return &map->via.map.ptr[k].val;
    }
    return NULL;
}

static __attribute__((unused)) uint64_t
fx_u64(const msgpack_object *map, const char *key)
{
    const msgpack_object *o = fx_get(map, key);
    cr_assert(o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER, "'%s' is not a uint", key);
    return o->via.u64;
}

static __attribute__((unused)) double
fx_f64(const msgpack_object *o)
{
    cr_assert(o && (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32),
              "not a float");
    return o->via.f64;
}

static __attribute__((unused)) bool
fx_str_is(const msgpack_object *o, const char *s)
{
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

/* ---- the daemon's modules, wired --------------------------------------- */

typedef struct {
    config_t cfg;
    xm_opts_t opts;
    wire_decoder_t dec;
    xm_work_t *work;
    models_t models;
    global_t global;
    cache_t cache;
    stats_t stats;
    publisher_t pub;
    fx_capture_t cap;
    ingest_t ingest;
    query_t query;
} fx_world_t;

/* Up from command-line style options (as xplaind takes them). */
static __attribute__((unused)) void
fx_up(fx_world_t *w, const char *const *opts)
{
    memset(w, 0, sizeof *w);
    char *argv[48] = {"xplaind", "--log-level", "err", "--ingest-bind", "inproc://unused"};
    int argc = 5;
    for (int k = 0; opts && opts[k]; k++)
        argv[argc++] = (char *)opts[k];
    argv[argc] = NULL;
    cr_assert_eq(config_load(&w->cfg, argc, argv), CFG_RUN, "options refused");
    log_set_level((log_level_t)w->cfg.log_level_id);
    const config_t *c = &w->cfg;
    wire_limits_t lim;
    wire_limits_default(&lim);
    wire_decoder_init(&w->dec, &lim);
    stats_init(&w->stats);
    w->opts.methods = c->method_set;
    w->opts.fusion = (xm_fusion_t)c->fusion_id;
    w->opts.grad_resnorm = c->grad_resnorm;
    global_params_t gp = {.half_life = (double)c->half_life, .window = (uint32_t)c->drift_window,
                          .window_ns = c->drift_window_ns, .late_ns = c->drift_lateness_ns,
                          .decay_ns = c->decay_ns,
                          .max_targets = (uint32_t)c->max_targets,
                          .alerts_kept = (uint32_t)c->alerts_kept,
                          .drift = {.rho_min = c->drift_rho_min, .ndcg_min = c->drift_ndcg_min,
                                    .ndcg_k = (uint32_t)c->drift_ndcg_k,
                                    .js_max = c->drift_js_max},
                          .detect = {.mode = (detect_mode_t)c->drift_mode_id,
                                     .calib_windows = (uint32_t)c->drift_calib_windows,
                                     .multiple = c->drift_multiple, .cusum_k = c->drift_cusum_k,
                                     .cusum_h = c->drift_cusum_h, .sd_floor = c->drift_sd_floor},
                          .moved_k = (uint32_t)c->drift_moved_k,
                          .max_segments = c->segkeys.n ? (uint32_t)c->max_segments : 0};
    cr_assert(w->work = xm_work_new());
    cr_assert_eq(models_init(&w->models, (uint32_t)c->max_models), 0);
    cr_assert_eq(global_init(&w->global, (uint32_t)c->max_models, &gp), 0);
    cr_assert_eq(cache_init(&w->cache, (uint32_t)c->cache_entries, (size_t)c->cache_mb << 20), 0);
    publisher_init(&w->pub, &w->stats, NULL, fx_sink, &w->cap);
    w->ingest = (ingest_t){.cfg = &w->cfg, .opts = &w->opts, .dec = &w->dec, .work = w->work,
                           .models = &w->models, .cache = &w->cache, .global = &w->global,
                           .pub = &w->pub, .stats = &w->stats};
    cr_assert_eq(query_init(&w->query), 0);
    w->query.models = &w->models;
    w->query.global = &w->global;
    w->query.cache = &w->cache;
    w->query.stats = &w->stats;
    w->query.opts = &w->opts;
    w->query.pub = &w->pub;
}

static __attribute__((unused)) void
fx_down(fx_world_t *w)
{
    query_destroy(&w->query);
    publisher_destroy(&w->pub);
    fx_capture_clear(&w->cap);
    cache_destroy(&w->cache);
    global_destroy(&w->global);
    models_destroy(&w->models);
    xm_work_destroy(&w->work);
    wire_decoder_destroy(&w->dec);
    config_free(&w->cfg);
}

/* A model with a schema of L x H x n (cls or -1, tokens tok0, tok1,
   ...), as state restore makes one: no ingest message needed. */
static __attribute__((unused)) model_t *
fx_model(fx_world_t *w, const char *name, uint32_t epoch, uint32_t L, uint32_t H, uint32_t n,
         int32_t cls)
{
    model_t *md = models_find(&w->models, name, strlen(name));
    if (!md)
        cr_assert(md = models_add(&w->models, name, strlen(name)));
    xm_shape_t sh = {L, H, n, cls};
    static char names[64][8];
    wire_sv_t tok[64];
    cr_assert_leq(n, 64);
    for (uint32_t k = 0; k < n; k++) {
        int len = snprintf(names[k], sizeof names[k], "tok%u", k);
        tok[k] = (wire_sv_t){(const uint8_t *)names[k], (uint32_t)len};
    }
    cr_assert_eq(model_restore_schema(md, epoch, &sh, tok, true), 0);
    return md;
}

/* ---- ingest messages --------------------------------------------------- */

typedef struct {
    const char *model;
    uint64_t seq;
    uint32_t L, H, n;
    int32_t cls;            /* with tokens when >= -1 and `tokens` */
    bool tokens;
    uint32_t B;
    uint64_t id0;           /* uint ids id0, id0 + 1, ... */
    bool target;            /* targets b % 2 */
    const float *attn;      /* B*L*H*n*n, or NULL: every row peaked on column `peak` */
    uint32_t peak;
} fx_msg_spec_t;

/* The body of one ingest message into `sb` (reset first); the topic is
   "attn/<model>". Attention rows are one-hot-ish: 0.7 on `peak`, the
   rest shared, so every trade of a spec explains alike. */
static __attribute__((unused)) void
fx_ingest_body(msgpack_sbuffer *sb, const fx_msg_spec_t *m)
{
    msgpack_packer pk;
    sb->size = 0;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 10 + (m->tokens ? 2 : 0) + (m->target ? 1 : 0));
    enc_str(&pk, "v"); msgpack_pack_uint8(&pk, 1);
    enc_str(&pk, "model"); enc_str(&pk, m->model);
    enc_str(&pk, "seq"); msgpack_pack_uint64(&pk, m->seq);
    enc_str(&pk, "ts"); msgpack_pack_int64(&pk, 1764000000000000000ll + (int64_t)m->seq);
    enc_str(&pk, "ids");
    msgpack_pack_array(&pk, m->B);
    for (uint32_t b = 0; b < m->B; b++)
        msgpack_pack_uint64(&pk, m->id0 + b);
    enc_str(&pk, "L"); msgpack_pack_uint32(&pk, m->L);
    enc_str(&pk, "H"); msgpack_pack_uint32(&pk, m->H);
    enc_str(&pk, "n"); msgpack_pack_uint32(&pk, m->n);
    enc_str(&pk, "dtype"); enc_str(&pk, "f32");
    size_t cnt = (size_t)m->B * m->L * m->H * m->n * m->n;
    float *a = malloc(cnt * sizeof *a + 1);
    for (size_t k = 0; k < cnt; k++) {
        if (m->attn) {
            a[k] = m->attn[k];
        } else {
            uint32_t j = (uint32_t)(k % m->n);
            a[k] = m->n == 1 ? 1.0f : j == m->peak ? 0.7f : 0.3f / (float)(m->n - 1);
        }
    }
    enc_str(&pk, "attn");
    msgpack_pack_bin_with_body(&pk, a, cnt * sizeof *a);
    free(a);
    if (m->tokens) {
        enc_str(&pk, "cls"); msgpack_pack_int32(&pk, m->cls);
        enc_str(&pk, "tokens");
        msgpack_pack_array(&pk, m->n);
        for (uint32_t k = 0; k < m->n; k++) {
            char t[16];
            snprintf(t, sizeof t, "tok%u", k);
            enc_str(&pk, t);
        }
    }
    if (m->target) {
        enc_str(&pk, "target");
        msgpack_pack_array(&pk, m->B);
        for (uint32_t b = 0; b < m->B; b++)
            msgpack_pack_int64(&pk, (int64_t)(b % 2));
    }
}

/* Build the message of `m` and hand it to ingest_handle. */
static __attribute__((unused)) void
fx_ingest(fx_world_t *w, const fx_msg_spec_t *m)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    fx_ingest_body(&sb, m);
    char topic[80];
    int tl = snprintf(topic, sizeof topic, "attn/%s", m->model);
    ingest_frame_t fr[2] = {{topic, (size_t)tl}, {sb.data, sb.size}};
    ingest_handle(&w->ingest, fr, 2, now_mono_ns());
    msgpack_sbuffer_destroy(&sb);
}

/* ---- query requests ---------------------------------------------------- */

/* Send a request built by `fill` (a map of `pairs` pairs after v and op)
   to query_handle; returns the decoded reply (free with fx_doc_free). */
static __attribute__((unused)) const msgpack_object *
fx_query(fx_world_t *w, fx_doc_t *d, const char *op, const char *model, const char *k1,
         const char *v1)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2 + (model != NULL) + (k1 != NULL));
    enc_str(&pk, "v"); msgpack_pack_uint8(&pk, 1);
    enc_str(&pk, "op"); enc_str(&pk, op);
    if (model) {
        enc_str(&pk, "model");
        enc_str(&pk, model);
    }
    if (k1) {
        enc_str(&pk, k1);
        enc_str(&pk, v1);
    }
    query_handle(&w->query, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return fx_decode(d, w->query.buf.data, w->query.buf.size);
}

static __attribute__((unused)) bool
fx_ok(const msgpack_object *reply)
{
    const msgpack_object *o = fx_get(reply, "ok");
    cr_assert(o && o->type == MSGPACK_OBJECT_BOOLEAN, "reply without ok");
    return o->via.boolean;
}

#endif
