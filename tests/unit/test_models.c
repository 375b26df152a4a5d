/*  Tests of daemon/models: the model table, schema epochs (proto/ingest.md
    "Schema and epochs") and publisher sequence tracking ("Sequence
    numbers").  */
#include "models.h"
#include "wire.h"

#include <criterion/criterion.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An ingest view as the decoder would hand it over. */
typedef struct {
    wire_ingest_t in;
    wire_sv_t toks[64];
    char names[64][24];
} msg_t;

/* Shape L x H x n; cls < -1 means "not sent"; tokens NULL means "not
   sent", else n names (copied). */
static wire_ingest_t *
mk(msg_t *m, uint32_t L, uint32_t H, uint32_t n, int32_t cls, const char *const *tokens)
{
    memset(m, 0, sizeof *m);
    m->in.B = 1;
    m->in.shape = (xm_shape_t){L, H, n, cls < -1 ? -1 : cls};
    m->in.has_cls = cls >= -1;
    if (tokens) {
        for (uint32_t k = 0; k < n; k++) {
            snprintf(m->names[k], sizeof m->names[k], "%s", tokens[k]);
            m->toks[k] = (wire_sv_t){(const uint8_t *)m->names[k], (uint32_t)strlen(m->names[k])};
        }
        m->in.tokens = m->toks;
    }
    return &m->in;
}

#define NOCLS (-2)

static const char *T4[] = {"price", "size", "spread", "CLS"};
static const char *T5[] = {"price", "size", "spread", "side", "CLS"};

static model_t *
one_model(models_t *t)
{
    cr_assert_eq(models_init(t, 4), 0);
    model_t *md = models_add(t, "m1", 2);
    cr_assert_not_null(md);
    return md;
}

static xr_reason_t
apply(model_t *md, const wire_ingest_t *in, bool *new_epoch)
{
    char why[160] = "";
    xr_reason_t r = model_apply_schema(md, in, new_epoch, why, sizeof why);
    if (r != XR_OK)
        cr_assert(why[0], "rejected as %s without a reason", xr_reason_name(r));
    return r;
}

static void
expect_schema(const schema_t *s, uint32_t epoch, uint32_t L, uint32_t H, uint32_t n, int32_t cls,
              const char *const *tokens)
{
    cr_assert_not_null(s, "no schema for epoch %u", epoch);
    cr_assert_eq(s->epoch, epoch);
    cr_assert(s->shape.L == L && s->shape.H == H && s->shape.n == n && s->shape.cls == cls,
              "epoch %u: L=%u H=%u n=%u cls=%d, want %u %u %u %d", epoch, s->shape.L, s->shape.H,
              s->shape.n, s->shape.cls, L, H, n, cls);
    uint32_t f = 0;
    for (uint32_t k = 0; k < n; k++) {
        cr_assert_str_eq(s->tokens[k], tokens[k]);
        if ((int32_t)k != cls) {
            cr_assert(f < s->nf);
            cr_assert_str_eq(s->features[f], tokens[k], "feature %u", f);
            f++;
        }
    }
    cr_assert_eq(s->nf, f, "nf %u, want %u", s->nf, f);
}

/* ---- schema epochs ------------------------------------------------------ */

Test(models, first_message_needs_cls_and_tokens)
{
    models_t t;
    model_t *md = one_model(&t);
    msg_t m;
    bool ne = true;
    cr_assert_eq(apply(md, mk(&m, 2, 4, 4, NOCLS, NULL), &ne), XR_NO_SCHEMA);
    cr_assert(!ne);
    cr_assert_eq(apply(md, mk(&m, 2, 4, 4, 3, NULL), &ne), XR_NO_SCHEMA, "cls without tokens");
    cr_assert_eq(apply(md, mk(&m, 2, 4, 4, NOCLS, T4), &ne), XR_NO_SCHEMA, "tokens without cls");
    cr_assert_null(md->cur);
    cr_assert_null(model_schema(md, 1));
    cr_assert_eq(apply(md, mk(&m, 2, 4, 4, 3, T4), &ne), XR_OK);
    cr_assert(ne);
    expect_schema(md->cur, 1, 2, 4, 4, 3, T4);
    cr_assert_eq(model_schema(md, 1), md->cur);
    models_destroy(&t);
}

Test(models, same_schema_keeps_the_epoch)
{
    models_t t;
    model_t *md = one_model(&t);
    msg_t m;
    bool ne;
    cr_assert_eq(apply(md, mk(&m, 2, 4, 4, 3, T4), &ne), XR_OK);
    const schema_t *first = md->cur;
    /* Repeated in full, without tokens, without cls, without both. */
    const struct { int32_t cls; const char *const *tok; } again[] = {
        {3, T4}, {3, NULL}, {NOCLS, T4}, {NOCLS, NULL}};
    for (int r = 0; r < 50; r++) {
        size_t k = (size_t)r % 4;
        cr_assert_eq(apply(md, mk(&m, 2, 4, 4, again[k].cls, again[k].tok), &ne), XR_OK);
        cr_assert(!ne, "repeat %d (variant %zu) started a new epoch", r, k);
        cr_assert_eq(md->cur, first);
    }
    cr_assert_eq(md->cur->epoch, 1);
    models_destroy(&t);
}

Test(models, every_change_starts_an_epoch)
{
    models_t t;
    model_t *md = one_model(&t);
    msg_t m;
    bool ne;
    const char *T4b[] = {"price", "size", "spreads", "CLS"};
    const char *T4c[] = {"price", "size", "sprea", "CLS"};
    const char *T4d[] = {"size", "price", "spread", "CLS"};
    struct { uint32_t L, H, n; int32_t cls; const char *const *tok; const char *const *want; const char *what; } steps[] = {
        {2, 4, 4, 3, T4, T4, "first"},
        {3, 4, 4, NOCLS, NULL, T4, "L changed, tokens carried over"},
        {3, 5, 4, 3, T4, T4, "H changed"},
        {3, 5, 5, 4, T5, T5, "n changed with tokens"},
        {3, 5, 5, 0, NULL, T5, "cls changed"},
        {3, 5, 5, -1, NULL, T5, "cls removed (-1)"},
        {3, 5, 4, NOCLS, T4, T4, "n shrank with tokens, known cls -1 kept"},
        {3, 5, 4, NOCLS, T4b, T4b, "one token renamed (longer)"},
        {3, 5, 4, NOCLS, T4c, T4c, "one token renamed (shorter prefix)"},
        {3, 5, 4, NOCLS, T4d, T4d, "tokens reordered"},
        {1, 1, 4, 3, NULL, T4d, "L, H and cls at once"},
    };
    const schema_t *prev = NULL;
    for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
        cr_assert_eq(apply(md, mk(&m, steps[k].L, steps[k].H, steps[k].n, steps[k].cls, steps[k].tok), &ne),
                     XR_OK, "%s", steps[k].what);
        cr_assert(ne, "%s: no new epoch", steps[k].what);
        int32_t want_cls = steps[k].cls >= -1 ? steps[k].cls : prev->shape.cls;
        expect_schema(md->cur, (uint32_t)k + 1, steps[k].L, steps[k].H, steps[k].n, want_cls, steps[k].want);
        if (prev) {
            /* The old epoch is kept as it was, separately. */
            cr_assert_neq(md->cur, prev);
            cr_assert_eq(model_schema(md, (uint32_t)k), prev);
        }
        prev = md->cur;
    }
    models_destroy(&t);
}

Test(models, tokens_compared_one_by_one)
{
    /* ["ab", "c"] and ["a", "bc"] concatenate alike but differ. */
    models_t t;
    model_t *md = one_model(&t);
    const char *A[] = {"ab", "c"}, *B[] = {"a", "bc"};
    msg_t m;
    bool ne;
    cr_assert_eq(apply(md, mk(&m, 1, 1, 2, -1, A), &ne), XR_OK);
    cr_assert_eq(apply(md, mk(&m, 1, 1, 2, -1, B), &ne), XR_OK);
    cr_assert(ne);
    cr_assert_eq(md->cur->epoch, 2);
    models_destroy(&t);
}

Test(models, n_change_without_tokens_is_no_schema)
{
    models_t t;
    model_t *md = one_model(&t);
    msg_t m;
    bool ne;
    cr_assert_eq(apply(md, mk(&m, 2, 4, 4, 3, T4), &ne), XR_OK);
    const schema_t *cur = md->cur;
    cr_assert_eq(apply(md, mk(&m, 2, 4, 5, 4, NULL), &ne), XR_NO_SCHEMA, "n 4 -> 5 without tokens");
    cr_assert_eq(apply(md, mk(&m, 2, 4, 3, NOCLS, NULL), &ne), XR_NO_SCHEMA, "n 4 -> 3 without anything");
    cr_assert(!ne);
    cr_assert_eq(md->cur, cur, "a rejected message changed the schema");
    cr_assert_eq(md->cur->epoch, 1);
    /* Shrinking n with tokens but without cls: the known cls 3 no longer
       names a token of n = 3. */
    const char *T3[] = {"a", "b", "c"};
    cr_assert_eq(apply(md, mk(&m, 2, 4, 3, NOCLS, T3), &ne), XR_NO_SCHEMA);
    cr_assert_eq(md->cur, cur);
    /* The same with cls given is fine. */
    cr_assert_eq(apply(md, mk(&m, 2, 4, 3, -1, T3), &ne), XR_OK);
    cr_assert(ne && md->cur->epoch == 2);
    models_destroy(&t);
}

Test(models, epochs_kept_for_the_last_eight)
{
    models_t t;
    model_t *md = one_model(&t);
    msg_t m;
    bool ne;
    const uint32_t N = 3 * MODEL_EPOCHS_KEPT + 2;
    for (uint32_t e = 1; e <= N; e++) {
        cr_assert_eq(apply(md, mk(&m, e, 2, 4, 3, T4), &ne), XR_OK);
        cr_assert(ne);
        cr_assert_eq(md->cur->epoch, e);
        for (uint32_t q = 0; q <= e + 1; q++) {
            const schema_t *s = model_schema(md, q);
            bool kept = q >= 1 && q <= e && q + MODEL_EPOCHS_KEPT > e;
            cr_assert_eq(s != NULL, kept, "after epoch %u: epoch %u %s", e, q, s ? "kept" : "gone");
            if (s)
                expect_schema(s, q, q, 2, 4, 3, T4);   /* L was the epoch number */
        }
    }
    models_destroy(&t);
}

Test(models, token_with_a_nul_byte_is_refused)
{
    /* U+0000 is valid UTF-8, but a token holding a NUL byte could not be
       stored and compared as a C string: the same tokens repeated (as
       proto/ingest.md asks) would start a new epoch each time. The
       contract refuses NUL in strings (bad_string), so no model ever sees
       such a schema. The message goes through the real decoder. */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 12);
#define KEY(s) msgpack_pack_str_with_body(&pk, s, strlen(s))
    KEY("v"); msgpack_pack_uint8(&pk, 1);
    KEY("model"); KEY("m1");
    KEY("seq"); msgpack_pack_uint8(&pk, 0);
    KEY("ts"); msgpack_pack_uint8(&pk, 0);
    KEY("ids"); msgpack_pack_array(&pk, 1); KEY("t");
    KEY("L"); msgpack_pack_uint8(&pk, 1);
    KEY("H"); msgpack_pack_uint8(&pk, 1);
    KEY("n"); msgpack_pack_uint8(&pk, 2);
    KEY("dtype"); KEY("f32");
    float a[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    KEY("attn"); msgpack_pack_bin_with_body(&pk, a, sizeof a);
    KEY("cls"); msgpack_pack_int8(&pk, -1);
    KEY("tokens"); msgpack_pack_array(&pk, 2);
    msgpack_pack_str_with_body(&pk, "a\0b", 3);
    KEY("c");
#undef KEY
    wire_limits_t lim;
    wire_limits_default(&lim);
    wire_decoder_t d;
    wire_decoder_init(&d, &lim);
    wire_ingest_t in;
    cr_assert_eq(wire_decode_ingest(&d, "attn/m1", 7, sb.data, sb.size, &in), XR_BAD_STRING);
    cr_assert(strstr(wire_detail(&d), "NUL") != NULL, "detail: %s", wire_detail(&d));
    wire_decoder_destroy(&d);
    msgpack_sbuffer_destroy(&sb);
}

/* ---- seq tracking ------------------------------------------------------ */

Test(models, seq_in_order_lost_and_restart)
{
    models_t t;
    model_t *md = one_model(&t);
    bool rs;
    cr_assert_eq(model_track_seq(md, 100, &rs), 0);
    cr_assert(!rs, "the first seq is not a restart");
    cr_assert_eq(model_track_seq(md, 101, &rs), 0);
    cr_assert(!rs);
    cr_assert_eq(model_track_seq(md, 106, &rs), 4, "102..105 lost");
    cr_assert(!rs);
    cr_assert_eq(model_track_seq(md, 107, &rs), 0);
    cr_assert_eq(model_track_seq(md, 107, &rs), 0, "a repeated seq loses nothing");
    cr_assert(rs, "a repeated seq is a restart");
    cr_assert_eq(model_track_seq(md, 3, &rs), 0);
    cr_assert(rs, "seq went back");
    cr_assert_eq(md->last_seq, 3);
    cr_assert_eq(model_track_seq(md, 4, &rs), 0);
    cr_assert(!rs);
    cr_assert_eq(model_track_seq(md, 0, &rs), 0);
    cr_assert(rs);
    cr_assert_eq(model_track_seq(md, UINT64_MAX, &rs), UINT64_MAX - 1, "seq 0 -> max");
    cr_assert(!rs);
    models_destroy(&t);
}

Test(models, unsequenced_rejections_reduce_the_gap)
{
    models_t t;
    model_t *md = one_model(&t);
    bool rs;
    model_track_seq(md, 10, &rs);
    /* Two messages arrived whose seq could not be read, then seq 15:
       11..14 is a gap of 4, of which 2 arrived broken. */
    md->unsequenced = 2;
    cr_assert_eq(model_track_seq(md, 15, &rs), 2);
    cr_assert_eq(md->unsequenced, 0, "the unsequenced count must restart after each seq");
    /* More broken messages than the gap: nothing lost, no wrap. */
    md->unsequenced = 9;
    cr_assert_eq(model_track_seq(md, 17, &rs), 0);
    /* In order: the broken ones are simply forgotten. */
    md->unsequenced = 3;
    cr_assert_eq(model_track_seq(md, 18, &rs), 0);
    cr_assert_eq(md->unsequenced, 0);
    cr_assert_eq(model_track_seq(md, 21, &rs), 2, "stale unsequenced count reused");
    /* A restart forgets them too. */
    md->unsequenced = 5;
    cr_assert_eq(model_track_seq(md, 1, &rs), 0);
    cr_assert(rs);
    cr_assert_eq(md->unsequenced, 0);
    cr_assert_eq(model_track_seq(md, 4, &rs), 2);
    models_destroy(&t);
}

/* ---- the table --------------------------------------------------------- */

Test(models, table_add_find_full)
{
    models_t t;
    cr_assert_eq(models_init(&t, 3), 0);
    model_t *a = models_add(&t, "m1", 2), *b = models_add(&t, "m10", 3), *c = models_add(&t, "x.y-z_0", 7);
    cr_assert(a && b && c);
    cr_assert(a->index == 0 && b->index == 1 && c->index == 2);
    cr_assert_null(models_add(&t, "m4", 2), "the table holds 3");
    cr_assert_eq(t.count, 3);
    cr_assert_eq(models_find(&t, "m1", 2), a);
    cr_assert_eq(models_find(&t, "m10", 3), b);
    cr_assert_eq(models_find(&t, "x.y-z_0", 7), c);
    cr_assert_null(models_find(&t, "m", 1), "a prefix matched");
    cr_assert_null(models_find(&t, "m100", 4));
    cr_assert_null(models_find(&t, "m4", 2));
    cr_assert_null(models_find(&t, "M1", 2));
    cr_assert_str_eq(a->name, "m1");
    cr_assert_eq(a->name_len, 2);
    cr_assert_str_eq(b->topic_xpl, "xpl/m10");
    cr_assert_eq(b->topic_xpl_len, 7);
    cr_assert(!a->seq_known && a->cur == NULL && a->received == 0);
    models_destroy(&t);
    cr_assert_eq(t.count, 0);
}

Test(models, longest_name_and_too_long)
{
    models_t t;
    models_init(&t, 4);
    char name[80];
    memset(name, 'n', sizeof name);
    model_t *md = models_add(&t, name, WIRE_MODEL_MAX);
    cr_assert_not_null(md);
    cr_assert_eq(strlen(md->name), WIRE_MODEL_MAX);
    cr_assert_eq(md->topic_xpl_len, 4 + WIRE_MODEL_MAX);
    cr_assert_eq(strlen(md->topic_xpl), 4 + WIRE_MODEL_MAX);
    cr_assert_null(models_add(&t, name, WIRE_MODEL_MAX + 1));
    cr_assert_eq(t.count, 1);
    models_destroy(&t);
}

Test(models, models_keep_their_own_state)
{
    models_t t;
    cr_assert_eq(models_init(&t, 2), 0);
    model_t *a = models_add(&t, "a", 1), *b = models_add(&t, "b", 1);
    msg_t m;
    bool ne, rs;
    cr_assert_eq(apply(a, mk(&m, 2, 2, 4, 3, T4), &ne), XR_OK);
    cr_assert_eq(apply(b, mk(&m, 1, 1, 5, 4, T5), &ne), XR_OK);
    cr_assert_eq(apply(a, mk(&m, 3, 2, 4, 3, T4), &ne), XR_OK);
    cr_assert(a->cur->epoch == 2 && b->cur->epoch == 1);
    expect_schema(b->cur, 1, 1, 1, 5, 4, T5);
    model_track_seq(a, 5, &rs);
    cr_assert_eq(model_track_seq(b, 100, &rs), 0);
    cr_assert(!rs && a->last_seq == 5 && b->last_seq == 100);
    models_destroy(&t);
}

Test(models, schema_changes_are_rate_limited)
{
    /* 4 epochs a minute, a burst of 4: the first schema and n flapping
       4 <-> 5 on every message get 4 epochs, then the flapping is
       refused as schema_rate without touching the current epoch; 15 s
       later one more change is allowed (4/min refills one per 15 s). */
    models_t t;
    model_t *md = one_model(&t);
    msg_t a, b;
    char why[160];
    bool ne;
    const int64_t s0 = 1000000000000;
    cr_assert_eq(model_apply_schema_limited(md, mk(&a, 2, 2, 4, 3, T4), 4, s0, &ne, why, sizeof why),
                 XR_OK);
    cr_assert(ne);
    int64_t now = s0;
    for (int k = 0; k < 3; k++) {
        now += 1000;
        cr_assert_eq(model_apply_schema_limited(md, mk(&b, 2, 2, k % 2 ? 4 : 5, k % 2 ? 3 : 4,
                                                       k % 2 ? T4 : T5), 4, now, &ne, why,
                                                sizeof why), XR_OK, "change %d", k);
        cr_assert(ne);
    }
    cr_assert_eq(md->cur->epoch, 4);
    cr_assert_eq(md->cur->shape.n, 5);
    /* The same schema again is no change and always passes. */
    cr_assert_eq(model_apply_schema_limited(md, mk(&b, 2, 2, 5, 4, T5), 4, now, &ne, why, sizeof why),
                 XR_OK);
    cr_assert_not(ne);
    why[0] = '\0';
    cr_assert_eq(model_apply_schema_limited(md, mk(&a, 2, 2, 4, 3, T4), 4, now + 1000, &ne, why,
                                            sizeof why), XR_SCHEMA_RATE);
    cr_assert_not(ne);
    cr_assert(why[0]);
    cr_assert_eq(md->cur->epoch, 4, "a refused change must not start an epoch");
    cr_assert_eq(md->cur->shape.n, 5);
    /* 14 s on: still under one token. 15 s on: one. */
    cr_assert_eq(model_apply_schema_limited(md, mk(&a, 2, 2, 4, 3, T4), 4, now + 14000000000, &ne,
                                            why, sizeof why), XR_SCHEMA_RATE);
    cr_assert_eq(model_apply_schema_limited(md, mk(&a, 2, 2, 4, 3, T4), 4, now + 15100000000, &ne,
                                            why, sizeof why), XR_OK);
    cr_assert(ne);
    cr_assert_eq(md->cur->epoch, 5);
    /* 0: no limit. */
    for (int k = 0; k < 50; k++)
        cr_assert_eq(model_apply_schema_limited(md, mk(&b, 2, 2, k % 2 ? 4 : 5, k % 2 ? 3 : 4,
                                                       k % 2 ? T4 : T5), 0, now + 15100000000, &ne,
                                                why, sizeof why), XR_OK);
    cr_assert_eq(md->cur->epoch, 55);
    models_destroy(&t);
}
