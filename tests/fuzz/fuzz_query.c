/*  fuzz_query: the ROUTER request handler on a daemon with real state.

    LLVMFuzzerInitialize builds a server_t the way server_init does, minus
    sockets and signals (publishing to no socket only counts "dropped"),
    and feeds it ingest messages through the real ingest_handle: model m1
    with two schema epochs (cached trades in both, str and uint ids, with
    and without gradients, flow sampled for some), enough trades to close
    drift windows, and m2 refused as no_schema (so unknown). So schema, trade
    (matrices, on-demand flow), stats, global, baseline, reference and
    drift all do real work.

    Each input is one request body. Whatever it holds, the reply must be
    what proto/queries.md promises: exactly one msgpack map with "v": 1
    and "ok"; when not ok, a known "code" and a non-empty, valid UTF-8
    "error". A broken promise aborts, so the fuzzer reports it.  */
#include "config.h"
#include "ingest.h"
#include "log.h"
#include "mpr.h"
#include "query.h"
#include "server.h"
#include "wire.h"

#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static server_t s_srv;

#define REQUIRE(cond)                                                                      \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz_query: %s:%d: broken: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t s_rng = 0x9e3779b97f4a7c15ull;

static double
s_uniform(void)
{
    s_rng = s_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(s_rng >> 11) * 0x1p-53;
}

static void
s_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* One ingest message for `model`: B trades of L x H x n x n f32 rows that
   sum to 1, drifting with `shift`, ids from `ids` (NULL entry: uint). */
static void
s_ingest(const char *model, uint64_t seq, uint32_t L, uint32_t H, uint32_t n, int cls,
         const char *const *tokens, const char *const *ids, const uint64_t *uids, uint32_t B,
         bool grad, double shift)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 10 + (grad ? 1 : 0) + (tokens ? 2 : 0) + 2);
    s_str(&pk, "v"); msgpack_pack_uint8(&pk, 1);
    s_str(&pk, "model"); s_str(&pk, model);
    s_str(&pk, "seq"); msgpack_pack_uint64(&pk, seq);
    s_str(&pk, "ts"); msgpack_pack_int64(&pk, 1764000000000000000ll + (int64_t)seq);
    s_str(&pk, "ids");
    msgpack_pack_array(&pk, B);
    for (uint32_t b = 0; b < B; b++) {
        if (ids[b])
            s_str(&pk, ids[b]);
        else
            msgpack_pack_uint64(&pk, uids[b]);
    }
    s_str(&pk, "L"); msgpack_pack_uint32(&pk, L);
    s_str(&pk, "H"); msgpack_pack_uint32(&pk, H);
    s_str(&pk, "n"); msgpack_pack_uint32(&pk, n);
    s_str(&pk, "dtype"); s_str(&pk, "f32");
    size_t cnt = (size_t)B * L * H * n * n;
    float *a = malloc(cnt * sizeof *a), *g = malloc(cnt * sizeof *g);
    for (size_t row = 0; row < cnt / n; row++) {
        double sum = 0;
        for (uint32_t j = 0; j < n; j++)
            sum += a[row * n + j] = (float)(s_uniform() + (j == row % n ? shift : 0.0));
        for (uint32_t j = 0; j < n; j++)
            a[row * n + j] = (float)(a[row * n + j] / sum);
    }
    for (size_t k = 0; k < cnt; k++)
        g[k] = (float)(s_uniform() - 0.5);
    s_str(&pk, "attn"); msgpack_pack_bin_with_body(&pk, a, cnt * sizeof *a);
    if (grad) {
        s_str(&pk, "grad");
        msgpack_pack_bin_with_body(&pk, g, cnt * sizeof *g);
    }
    if (tokens) {
        s_str(&pk, "cls"); msgpack_pack_int32(&pk, cls);
        s_str(&pk, "tokens");
        msgpack_pack_array(&pk, n);
        for (uint32_t k = 0; k < n; k++)
            s_str(&pk, tokens[k]);
    }
    s_str(&pk, "target");
    msgpack_pack_array(&pk, B);
    for (uint32_t b = 0; b < B; b++)
        msgpack_pack_int64(&pk, (int64_t)(b % 2));
    s_str(&pk, "y");
    msgpack_pack_array(&pk, B);
    for (uint32_t b = 0; b < B; b++)
        msgpack_pack_double(&pk, 0.25 * b);

    char topic[80];
    int tl = snprintf(topic, sizeof topic, "attn/%s", model);
    ingest_frame_t parts[2] = {{topic, (size_t)tl}, {sb.data, sb.size}};
    ingest_handle(&s_srv.ingest, parts, 2, now_mono_ns());
    free(a);
    free(g);
    msgpack_sbuffer_destroy(&sb);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    server_t *s = &s_srv;
    char *args[] = {"fuzz_query", "--demo", "--log-level", "err",
                    "--methods", "rollout,grad_rollout,first_layer,attn_mean,diag,flow",
                    "--flow-every", "2", "--drift-window", "4", "--max-models", "4",
                    "--cache-entries", "32", "--cache-mb", "1", "--alerts-kept", "4",
                    "--drift-rho-min", "0.99", NULL};
    REQUIRE(config_load(&s->cfg, (int)(sizeof args / sizeof *args) - 1, args) == CFG_RUN);
    const config_t *c = &s->cfg;
    wire_limits_t lim;
    wire_limits_default(&lim);
    wire_decoder_init(&s->dec, &lim);
    stats_init(&s->stats);
    publisher_init(&s->publisher, &s->stats, NULL, NULL, NULL);
    s->sigfd = -1;
    xm_blas_single_thread();
    global_params_t gp = {.half_life = (double)c->half_life, .window = (uint32_t)c->drift_window,
                          .max_targets = (uint32_t)c->max_targets,
                          .alerts_kept = (uint32_t)c->alerts_kept};
    REQUIRE((s->work = xm_work_new()) && query_init(&s->query) == 0);
    REQUIRE(models_init(&s->models, (uint32_t)c->max_models) == 0);
    REQUIRE(global_init(&s->global, (uint32_t)c->max_models, &gp) == 0);
    REQUIRE(cache_init(&s->cache, (uint32_t)c->cache_entries, (size_t)c->cache_mb << 20) == 0);
    server_apply_options(s);
    server_wire(s);

    /* m1, epoch 1: n = 5 with CLS, gradients; 24 trades close windows,
       the shift half-way raises alerts. */
    static const char *tok1[] = {"price", "size", "spread", "side", "CLS"};
    static const char *ids1[] = {"t1", NULL, "t-\xc3\xa9"};
    static const uint64_t uids1[] = {0, 7, 0};
    for (uint64_t seq = 0; seq < 8; seq++)
        s_ingest("m1", seq, 2, 2, 5, 4, seq % 3 == 0 ? tok1 : NULL, ids1, uids1, 3, seq % 2 == 0,
                 seq < 4 ? 0.0 : 3.0);
    /* m1, epoch 2: n = 4 without CLS, no gradient. */
    static const char *tok2[] = {"a", "b", "c", "d"};
    static const char *ids2[] = {"e2", NULL};
    static const uint64_t uids2[] = {0, UINT64_MAX};
    for (uint64_t seq = 8; seq < 14; seq++)
        s_ingest("m1", seq, 1, 3, 4, -1, tok2, ids2, uids2, 2, false, 0.5);
    /* m2: its first message is rejected as no_schema, which leaves no model
       behind: queries for m2 must answer unknown_model. */
    s_ingest("m2", 0, 1, 1, 2, -1, NULL, ids2, uids2, 1, false, 0.0);

    REQUIRE(s->models.count == 1);
    model_t *m1 = models_find(&s->models, "m1", 2);
    REQUIRE(m1 && m1->cur && m1->cur->epoch == 2 && model_schema(m1, 1));
    REQUIRE(s->stats.explained == 8 * 3 + 6 * 2);
    wire_id_t t1 = {.is_str = true, .s = {(const uint8_t *)"t1", 2}};
    REQUIRE(cache_get(&s->cache, m1->index, &t1));
    return 0;
}

static bool
s_known_code(const mpr_obj_t *o)
{
    static const char *codes[] = {"bad_request", "unknown_op", "unknown_model", "not_found",
                                  "bad_argument", "internal"};
    for (size_t k = 0; k < sizeof codes / sizeof *codes; k++)
        if (mpr_str_eq(o, codes[k]))
            return true;
    return false;
}

/* The reply in s->query.buf is one map with v: 1, ok, and code/error when not ok. */
static void
s_check_reply(const server_t *s)
{
    mpr_t r;
    mpr_obj_t o;
    mpr_init(&r, s->query.buf.data, s->query.buf.size);
    REQUIRE(s->query.buf.size > 0);
    mpr_t all = r;
    REQUIRE(mpr_skip(&all, 63) == MPR_OK && mpr_left(&all) == 0);
    REQUIRE(mpr_next(&r, &o) == MPR_OK && o.type == MPR_MAP);
    uint32_t pairs = o.v.count;
    bool has_v = false, has_ok = false, ok = false, has_code = false, has_error = false;
    for (uint32_t k = 0; k < pairs; k++) {
        mpr_obj_t key, val;
        REQUIRE(mpr_next(&r, &key) == MPR_OK && key.type == MPR_STR);
        mpr_t at = r;
        REQUIRE(mpr_next(&at, &val) == MPR_OK);
        if (mpr_str_eq(&key, "v")) {
            REQUIRE(!has_v && val.type == MPR_UINT && val.v.u == 1);
            has_v = true;
        } else if (mpr_str_eq(&key, "ok")) {
            REQUIRE(!has_ok && val.type == MPR_BOOL);
            has_ok = true;
            ok = val.v.b;
        } else if (mpr_str_eq(&key, "code")) {
            REQUIRE(val.type == MPR_STR && s_known_code(&val));
            has_code = true;
        } else if (mpr_str_eq(&key, "error")) {
            REQUIRE(val.type == MPR_STR && val.v.raw.len > 0);
            REQUIRE(wire_utf8_ok(val.v.raw.ptr, val.v.raw.len));
            has_error = true;
        }
        REQUIRE(mpr_skip(&r, 62) == MPR_OK);
    }
    REQUIRE(has_v && has_ok);
    REQUIRE(ok || (has_code && has_error));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    server_t *s = &s_srv;
    uint64_t before = s->stats.queries;
    query_handle(&s->query, data, size);
    REQUIRE(s->stats.queries == before + 1);
    s_check_reply(s);
    return 0;
}
