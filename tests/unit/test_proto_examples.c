/*  The daemon's side of proto/examples/: every ingest example decodes
    with wire_decode_ingest to exactly what its .json rendering says, and
    every rejection example is rejected for exactly its reason.

    Rejections are checked twice: the decoder's reason for those of the
    frames/decode stages, and the daemon's own ingest path (ingest_handle
    on a server built by server_init with the example's daemon_args, fed
    the examples named in "before" first) for every one, so that the
    daemon-stage reasons (not_allowed, too_many_models, no_schema,
    nonfinite) are real rejections counted in the daemon's stats too.
    Nothing is sent over a network: frames go straight to ingest_handle.

    Also: every reason the code names (xr_reason_name) has an example.  */
#include "config.h"
#include "half.h"
#include "ingest.h"
#include "log.h"
#include "server.h"
#include "wire.h"
#include "xmath.h"

#include "examples.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>
#include <zmq.h>

#ifdef XPL_EXAMPLES_DIR
#define EXAMPLES XPL_EXAMPLES_DIR
#else
#define EXAMPLES XPL_SOURCE_DIR "/proto/examples"
#endif

static ex_t *
load(const char *kind, const char *base)
{
    ex_t *e = ex_load(EXAMPLES, kind, base);
    cr_assert_not_null(e, "cannot load example %s/%s from %s", kind, base, EXAMPLES);
    cr_assert_not_null(e->body, "%s: no body", e->name);
    return e;
}

/* Value number k of a rendered tensor ("$f32", "$f16" or "$bf16"). */
static float
tensor_value(const ex_t *e, const jv_t *t, const char *dtype, size_t k)
{
    char key[8];
    snprintf(key, sizeof key, "$%s", dtype);
    const jv_t *vals = jv_get(t, key);
    cr_assert(vals && vals->t == JV_ARR && k < vals->n, "%s: no %s[%zu]", e->name, key, k);
    return (float)jv_num(jv_at(vals, k));
}

static float
wire_value(const uint8_t *p, xm_dtype_t dt, size_t k)
{
    if (dt == XM_F32) {
        float f;
        memcpy(&f, p + 4 * k, 4);
        return f;
    }
    uint16_t h = (uint16_t)(p[2 * k] | p[2 * k + 1] << 8);
    return dt == XM_F16 ? half_f16_to_f32(h) : half_bf16_to_f32(h);
}

/* A tensor view holds the bytes of the rendering's "$bin", and each value
   reads back as the rendering's number. */
static void
check_tensor_as(const ex_t *e, const char *key, const uint8_t *view, xm_dtype_t dtype, size_t len_want, const uint64_t *dims, size_t ndims)
{
    const jv_t *t = jv_get(e->body, key);
    if (!t) {
        cr_assert_null(view, "%s: %s decoded but the example has none", e->name, key);
        return;
    }
    cr_assert_not_null(view, "%s: %s not decoded", e->name, key);
    size_t len;
    uint8_t *bytes = jv_bin(t, &len);
    cr_assert_not_null(bytes, "%s: %s has no $bin", e->name, key);
    cr_assert_eq(len, len_want, "%s: %s has %zu bytes", e->name, key, len);
    cr_assert(memcmp(bytes, view, len) == 0, "%s: %s bytes differ", e->name, key);
    const char *dt = wire_dtype_name(dtype);
    size_t count = len / xm_dtype_size(dtype);
    for (size_t k = 0; k < count; k++) {
        float want = tensor_value(e, t, dt, k), got = wire_value(view, dtype, k);
        cr_assert(want == got || (isnan(want) && isnan(got)), "%s: %s[%zu] = %.9g, rendering says %.9g",
                  e->name, key, k, got, want);
    }
    const jv_t *shape = jv_get(t, "$shape");
    cr_assert(shape && shape->n == ndims, "%s: %s has no $shape of %zu", e->name, key, ndims);
    for (size_t k = 0; k < ndims; k++)
        cr_assert_eq((uint64_t)jv_int(jv_at(shape, k)), dims[k], "%s: %s $shape[%zu]", e->name,
                     key, k);
    free(bytes);
}

/* attn, grad: [B][L][H][n][n]; the fused form's tensors [B][L][n][n] and
   head statistics [B][L][H] (f32). With targets, the gradient-like
   tensors (grad, rel, fgrad, fgrad_signed, head_importance) have a block
   per target: [B][T][...]. */
static void
check_tensor(const ex_t *e, const char *key, const uint8_t *view, const wire_ingest_t *in)
{
    bool per_target = in->ntargets && strcmp(key, "attn") && strcmp(key, "fattn")
                      && strcmp(key, "head_confidence");
    uint64_t T = per_target ? in->ntargets : 1;
    uint64_t dims[6] = {in->B};
    size_t nd = 1;
    if (per_target)
        dims[nd++] = T;
    if (strncmp(key, "head_", 5) == 0) {
        dims[nd++] = in->shape.L;
        dims[nd++] = in->shape.H;
        check_tensor_as(e, key, view, XM_F32, in->B * T * in->trade_head_bytes, dims, nd);
        return;
    }
    dims[nd++] = in->shape.L;
    if (!in->fused)
        dims[nd++] = in->shape.H;
    dims[nd++] = in->shape.n;
    dims[nd++] = in->shape.n;
    check_tensor_as(e, key, view, in->dtype, in->B * T * in->trade_bytes, dims, nd);
}

static void
check_sv(const ex_t *e, const char *what, const wire_sv_t *sv, const jv_t *want)
{
    const char *s = jv_str(want);
    cr_assert_not_null(s, "%s: %s is not a string in the rendering", e->name, what);
    cr_assert(sv->len == strlen(s) && memcmp(sv->ptr, s, sv->len) == 0, "%s: %s is '%.*s', not '%s'",
              e->name, what, (int)sv->len, (const char *)sv->ptr, s);
}

/* Every field of the decoded view against the .json body. */
static void
check_decoded(const ex_t *e, const wire_ingest_t *in)
{
    const jv_t *b = e->body;
    check_sv(e, "model", &in->model, jv_get(b, "model"));
    cr_assert(in->has_seq);
    cr_assert_eq(in->seq, (uint64_t)jv_int(jv_get(b, "seq")), "%s: seq", e->name);
    cr_assert_eq(in->ts, jv_int(jv_get(b, "ts")), "%s: ts", e->name);
    const jv_t *ids = jv_get(b, "ids");
    cr_assert_eq(in->B, ids->n, "%s: B = %u", e->name, in->B);
    for (uint32_t k = 0; k < in->B; k++) {
        const jv_t *id = jv_at(ids, k);
        if (id->t == JV_STR)
            cr_assert(in->ids[k].is_str, "%s: ids[%u] should be a str", e->name, k);
        if (id->t == JV_STR)
            check_sv(e, "ids[]", &in->ids[k].s, id);
        else
            cr_assert(!in->ids[k].is_str && in->ids[k].u == (uint64_t)jv_int(id), "%s: ids[%u]",
                      e->name, k);
    }
    cr_assert_eq(in->shape.L, (uint32_t)jv_int(jv_get(b, "L")), "%s: L", e->name);
    cr_assert_eq(in->shape.H, (uint32_t)jv_int(jv_get(b, "H")), "%s: H", e->name);
    cr_assert_eq(in->shape.n, (uint32_t)jv_int(jv_get(b, "n")), "%s: n", e->name);
    cr_assert_str_eq(wire_dtype_name(in->dtype), jv_str(jv_get(b, "dtype")), "%s: dtype", e->name);
    cr_assert_eq(in->fused, jv_get(b, "fattn") != NULL, "%s: fused", e->name);
    cr_assert_eq(in->trade_bytes, (size_t)in->shape.L * (in->fused ? 1 : in->shape.H) * in->shape.n *
                                      in->shape.n * xm_dtype_size(in->dtype));
    const jv_t *cls = jv_get(b, "cls");
    cr_assert_eq(in->has_cls, cls != NULL, "%s: has_cls", e->name);
    if (cls)
        cr_assert_eq(in->shape.cls, (int32_t)jv_int(cls), "%s: cls", e->name);
    const jv_t *tokens = jv_get(b, "tokens");
    cr_assert_eq(in->tokens != NULL, tokens != NULL, "%s: tokens", e->name);
    for (size_t k = 0; tokens && k < tokens->n; k++)
        check_sv(e, "tokens[]", &in->tokens[k], jv_at(tokens, k));
    const jv_t *target = jv_get(b, "target"), *y = jv_get(b, "y");
    cr_assert_eq(in->target != NULL, target != NULL, "%s: target", e->name);
    cr_assert_eq(in->y != NULL, y != NULL, "%s: y", e->name);
    for (uint32_t k = 0; target && k < in->B; k++)
        cr_assert_eq(in->target[k], jv_int(jv_at(target, k)), "%s: target[%u]", e->name, k);
    for (uint32_t k = 0; y && k < in->B; k++)
        cr_assert_eq(in->y[k], jv_num(jv_at(y, k)), "%s: y[%u]", e->name, k);
    const jv_t *targets = jv_get(b, "targets");
    cr_assert_eq(in->ntargets, targets ? targets->n : 0, "%s: targets", e->name);
    for (uint32_t k = 0; targets && k < in->ntargets; k++)
        cr_assert_eq(in->targets[k], jv_int(jv_at(targets, k)), "%s: targets[%u]", e->name, k);
    check_tensor(e, "attn", in->attn, in);
    check_tensor(e, "grad", in->grad, in);
    check_tensor(e, "fattn", in->fattn, in);
    check_tensor(e, "fgrad", in->fgrad, in);
    check_tensor(e, "fgrad_signed", in->fgrad_signed, in);
    check_tensor(e, "head_importance", in->head_importance, in);
    check_tensor(e, "head_confidence", in->head_confidence, in);
    check_tensor(e, "rel", in->rel, in);
}

static xr_reason_t
decode(wire_decoder_t *d, const ex_t *e, wire_ingest_t *in)
{
    cr_assert_geq(e->nframes, 2, "%s: fewer than two frames", e->name);
    return wire_decode_ingest(d, e->frame[0], e->len[0], e->frame[1], e->len[1], in);
}

static xr_reason_t
reason_named(const char *name)
{
    for (int r = 0; r < XR_NREASONS; r++)
        if (strcmp(xr_reason_name((xr_reason_t)r), name) == 0)
            return (xr_reason_t)r;
    cr_assert_fail("'%s' is not a reason the daemon knows", name);
    return XR_NREASONS;
}

/* ---- a daemon without a network ---------------------------------------- */

static int g_serial;

typedef struct {
    server_t s;
    int argc;
    char *argv[40];
} daemon_t;

/* server_init as xplaind's main does, with inproc endpoints nobody
   connects to, plus the example's daemon_args. */
static void
daemon_up(daemon_t *d, const jv_t *extra)
{
    memset(d, 0, sizeof *d);
    char ep[3][64];
    int id = g_serial++;
    snprintf(ep[0], sizeof ep[0], "inproc://proto-in-%d", id);
    snprintf(ep[1], sizeof ep[1], "inproc://proto-pub-%d", id);
    snprintf(ep[2], sizeof ep[2], "inproc://proto-q-%d", id);
    const char *base[] = {"xplaind", "--ingest-bind", ep[0], "--publish", ep[1], "--query", ep[2],
                          "--log-level", "err"};
    for (size_t k = 0; k < sizeof base / sizeof *base; k++)
        d->argv[d->argc++] = strdup(base[k]);
    for (size_t k = 0; extra && k < extra->n && d->argc < 38; k++)
        d->argv[d->argc++] = strdup(jv_str(jv_at(extra, k)));
    d->argv[d->argc] = NULL;
    cr_assert_eq(config_load(&d->s.cfg, d->argc, d->argv), CFG_RUN, "daemon_args refused");
    d->s.argc = d->argc;
    d->s.argv = d->argv;
    cr_assert_eq(server_init(&d->s), 0, "server_init failed");
}

static void
daemon_down(daemon_t *d)
{
    server_destroy(&d->s);
    for (int k = 0; k < d->argc; k++)
        free(d->argv[k]);
}

/* Hand the example's frames to the daemon's ingest path. */
static void
feed(daemon_t *d, const ex_t *e)
{
    ingest_frame_t parts[EX_MAX_FRAMES];
    for (int k = 0; k < e->nframes; k++)
        parts[k] = (ingest_frame_t){e->frame[k], e->len[k]};
    ingest_handle(&d->s.ingest, parts, e->nframes, now_mono_ns());
}

/* ---- ingest -------------------------------------------------------------- */

Test(proto_examples, ingest_examples_decode_to_their_rendering)
{
    size_t count;
    char **names = ex_names(EXAMPLES, "ingest", &count);
    cr_assert_geq(count, 4, "only %zu ingest examples", count);
    wire_limits_t lim;
    wire_limits_default(&lim);
    wire_decoder_t d;
    wire_decoder_init(&d, &lim);
    bool seen[3] = {false, false, false};
    for (size_t k = 0; k < count; k++) {
        ex_t *e = load("ingest", names[k]);
        cr_assert_str_eq(jv_str(jv_get(jv_get(e->meta, "expect"), "reason")), "ok", "%s", e->name);
        cr_assert_eq(e->nframes, 2, "%s", e->name);
        const char *topic = jv_str(jv_get(e->meta, "topic"));
        cr_assert(topic && e->len[0] == strlen(topic) && memcmp(e->frame[0], topic, e->len[0]) == 0,
                  "%s: topic frame differs from the rendering", e->name);
        wire_ingest_t in;
        xr_reason_t r = decode(&d, e, &in);
        cr_assert_eq(r, XR_OK, "%s: rejected as %s: %s", e->name, xr_reason_name(r), wire_detail(&d));
        check_decoded(e, &in);
        seen[in.dtype] = true;
        ex_free(e);
    }
    cr_assert(seen[XM_F32] && seen[XM_F16] && seen[XM_BF16], "not every dtype has an example");
    wire_decoder_destroy(&d);
    ex_names_free(names, count);
}

Test(proto_examples, ingest_examples_are_explained_by_the_daemon)
{
    static const char *order[] = {"f32-first", "f16-batch3", "bf16-nograd", "f32-followup",
                                  "drift-a", "drift-b", "drift-flat"};
    daemon_t d;
    daemon_up(&d, NULL);
    uint64_t trades = 0;
    for (size_t k = 0; k < sizeof order / sizeof *order; k++) {
        ex_t *e = load("ingest", order[k]);
        feed(&d, e);
        trades += jv_get(e->body, "ids")->n;
        cr_assert_eq(d.s.stats.rejected_total, 0, "%s rejected", e->name);
        cr_assert_eq(d.s.stats.explained, trades, "%s not explained", e->name);
        ex_free(e);
    }
    /* f32-followup came without cls/tokens and changed nothing: epoch 1. */
    model_t *m1 = models_find(&d.s.models, "m1", 2);
    cr_assert(m1 && m1->cur && m1->cur->epoch == 1 && m1->lost == 0 && m1->restarts == 0);
    daemon_down(&d);
}

/* ---- rejections -------------------------------------------------------- */

static void
check_rejection(const char *base)
{
    ex_t *e = load("reject", base);
    const jv_t *x = jv_get(e->meta, "expect");
    const char *reason = jv_str(jv_get(x, "reason")), *stage = jv_str(jv_get(x, "stage"));
    cr_assert(reason && stage, "%s: expect.reason and expect.stage are required", e->name);
    cr_assert_str_eq(reason, base, "%s: named after another reason", e->name);
    xr_reason_t want = reason_named(reason);
    const jv_t *rep = jv_get(x, "reproducible");
    bool reproducible = !rep || rep->t != JV_BOOL || rep->b;

    wire_limits_t lim;
    wire_limits_default(&lim);
    wire_decoder_t dec;
    wire_decoder_init(&dec, &lim);
    wire_ingest_t in;
    if (strcmp(stage, "frames") == 0) {
        cr_assert_neq(e->nframes, 2, "%s: a frames example must not have two frames", e->name);
    } else {
        cr_assert_eq(e->nframes, 2, "%s", e->name);
        xr_reason_t got = decode(&dec, e, &in);
        xr_reason_t expect_dec = strcmp(stage, "decode") == 0 ? want : XR_OK;
        cr_assert_eq(got, expect_dec, "%s: the decoder says %s (%s), expected %s", e->name,
                     xr_reason_name(got), wire_detail(&dec), xr_reason_name(expect_dec));
    }
    wire_decoder_destroy(&dec);

    /* The daemon's ingest path counts it under exactly that reason. */
    daemon_t d;
    daemon_up(&d, jv_get(x, "daemon_args"));
    const jv_t *before = jv_get(x, "before");
    for (size_t k = 0; before && k < before->n; k++) {
        char kind[32], name[96];
        cr_assert_eq(sscanf(jv_str(jv_at(before, k)), "%31[^/]/%95s", kind, name), 2);
        ex_t *b = load(kind, name);
        feed(&d, b);
        ex_free(b);
    }
    cr_assert_eq(d.s.stats.rejected_total, 0, "%s: an example of \"before\" was rejected", e->name);
    stats_t st = d.s.stats;
    feed(&d, e);
    uint64_t explained = (uint64_t)jv_int(jv_get(x, "explained"));
    if (!reproducible) {
        /* No content can make the daemon run out of memory: a daemon
           that has memory explains this message. */
        cr_assert_eq(d.s.stats.rejected_total, st.rejected_total, "%s", e->name);
        cr_assert_gt(d.s.stats.explained, st.explained, "%s", e->name);
    } else {
        for (int r = 1; r < XR_NREASONS; r++)
            cr_assert_eq(d.s.stats.rejected[r] - st.rejected[r], r == (int)want ? 1u : 0u,
                         "%s: counted %" PRIu64 " under %s", e->name,
                         d.s.stats.rejected[r] - st.rejected[r], xr_reason_name((xr_reason_t)r));
        cr_assert_eq(d.s.stats.rejected_total - st.rejected_total, 1, "%s", e->name);
        cr_assert_eq(d.s.stats.explained - st.explained, explained, "%s: %" PRIu64 " explained",
                     e->name, d.s.stats.explained - st.explained);
    }
    daemon_down(&d);
    ex_free(e);
}

Test(proto_examples, every_rejection_example_gives_exactly_its_reason)
{
    size_t count;
    char **names = ex_names(EXAMPLES, "reject", &count);
    cr_assert_gt(count, 0);
    for (size_t k = 0; k < count; k++)
        check_rejection(names[k]);
    ex_names_free(names, count);
}

Test(proto_examples, every_reason_of_the_daemon_has_an_example)
{
    for (int r = 1; r < XR_NREASONS; r++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/reject/%s.json", EXAMPLES, xr_reason_name((xr_reason_t)r));
        FILE *f = fopen(path, "r");
        cr_expect_not_null(f, "reason '%s' has no example (%s)", xr_reason_name((xr_reason_t)r), path);
        if (f)
            fclose(f);
    }
}
