/*  Tests of the snapshot records of core/agg and core/drift (their
    *_save and *_load, on snap.h): a random state saved and loaded is
    equal bit for bit and behaves the same afterwards; the first format's
    positional layout still loads; a damaged record fails with a reason
    and never reads past its bytes.  */
#include "agg.h"
#include "drift.h"
#include "snap.h"
#include "support.h"

#include <criterion/criterion.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} buf_t;

static void
buf_init(buf_t *b)
{
    msgpack_sbuffer_init(&b->sb);
    msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}

static void
fill(rng_t *r, float *x, uint32_t n)
{
    for (uint32_t j = 0; j < n; j++)
        x[j] = (float)(0.2 * j + rng_normal(r));
}

/* An aggregate of nf features after `count` random vectors. */
static void
random_agg(agg_t *a, uint32_t nf, double half_life, unsigned count, uint64_t seed)
{
    rng_t r;
    rng_seed(&r, seed);
    cr_assert_eq(agg_init(a, nf, half_life), 0);
    float *x = malloc((nf + 1) * sizeof *x);
    for (unsigned t = 0; t < count; t++) {
        fill(&r, x, nf);
        cr_assert_eq(agg_update(a, x), 0);
    }
    free(x);
}

static void
same_doubles(const double *a, const double *b, uint32_t n, const char *what)
{
    if (n)
        cr_assert(memcmp(a, b, n * sizeof *a) == 0, "%s differ", what);
}

static void
same_agg(const agg_t *a, const agg_t *b)
{
    cr_assert_eq(a->nfeat, b->nfeat);
    cr_assert_eq(a->count, b->count);
    same_doubles(a->mean, b->mean, a->nfeat, "means");
    same_doubles(a->m2, b->m2, a->nfeat, "m2");
    cr_assert_eq(a->decayed == NULL, b->decayed == NULL);
    if (a->decayed)
        same_doubles(a->decayed, b->decayed, a->nfeat, "decayed means");
}

Test(snap, agg_round_trip_is_bit_for_bit)
{
    static const uint32_t nfs[] = {0, 1, 7, 33};
    static const unsigned counts[] = {0, 1, 2, 5, 300};
    static const double hls[] = {0, 1, 20, 1e6};
    uint64_t seed = 1;
    for (size_t i = 0; i < 4; i++)
        for (size_t c = 0; c < 5; c++)
            for (size_t h = 0; h < 4; h++) {
                agg_t a, b;
                random_agg(&a, nfs[i], hls[h], counts[c], seed++);
                buf_t w;
                buf_init(&w);
                agg_save(&w.pk, &a);
                cr_assert_eq(agg_init(&b, nfs[i], hls[h]), 0);
                snap_rd_t d;
                snap_rd_init(&d, w.sb.data, w.sb.size);
                cr_assert_eq(agg_load(&d, &b, SNAP_V2), 0, "nf %u count %u: %s", nfs[i],
                             counts[c], d.why);
                cr_assert_eq(mpr_left(&d.r), 0);
                same_agg(&a, &b);
                /* ...and it goes on exactly as the original would. */
                float x[40];
                rng_t r;
                rng_seed(&r, 99);
                fill(&r, x, nfs[i]);
                agg_update(&a, x);
                agg_update(&b, x);
                same_agg(&a, &b);
                agg_destroy(&a);
                agg_destroy(&b);
                msgpack_sbuffer_destroy(&w.sb);
            }
}

Test(snap, agg_first_format_and_decayed_mismatch)
{
    /* Format 1: [count, mean, m2, nil]; the decayed mean starts at the mean. */
    double mean[3] = {0.5, -1.25, 3}, m2[3] = {1, 0, 2.5};
    buf_t w;
    buf_init(&w);
    msgpack_pack_array(&w.pk, 4);
    msgpack_pack_uint64(&w.pk, 9);
    snap_put_doubles(&w.pk, mean, 3);
    snap_put_doubles(&w.pk, m2, 3);
    msgpack_pack_nil(&w.pk);
    agg_t a;
    cr_assert_eq(agg_init(&a, 3, 10), 0);
    snap_rd_t d;
    snap_rd_init(&d, w.sb.data, w.sb.size);
    cr_assert_eq(agg_load(&d, &a, SNAP_V1), 0, "%s", d.why);
    cr_assert_eq(a.count, 9);
    same_doubles(a.mean, mean, 3, "means");
    same_doubles(a.m2, m2, 3, "m2");
    same_doubles(a.decayed, mean, 3, "decayed starts at the mean");
    /* The same bytes are not a format-2 record. */
    snap_rd_init(&d, w.sb.data, w.sb.size);
    cr_assert_eq(agg_load(&d, &a, SNAP_V2), -1);
    cr_assert_str_eq(d.why, "aggregate");
    agg_destroy(&a);
    msgpack_sbuffer_destroy(&w.sb);

    /* Saved with decayed means, loaded where they are disabled: dropped. */
    agg_t src, dst;
    random_agg(&src, 4, 5, 10, 3);
    buf_init(&w);
    agg_save(&w.pk, &src);
    cr_assert_eq(agg_init(&dst, 4, 0), 0);
    snap_rd_init(&d, w.sb.data, w.sb.size);
    cr_assert_eq(agg_load(&d, &dst, SNAP_V2), 0, "%s", d.why);
    cr_assert_null(dst.decayed);
    same_doubles(dst.mean, src.mean, 4, "means");
    agg_destroy(&src);
    agg_destroy(&dst);
    msgpack_sbuffer_destroy(&w.sb);
}

/* Pack an agg record by hand with `skip` left out and `extra` added. */
static void
pack_agg(buf_t *w, const char *skip, const char *dup, double m2_0, uint32_t nmean)
{
    double v[4] = {m2_0, 1, 2, 3};
    uint32_t n = 4 - (skip != NULL) + (dup != NULL) + 1;
    msgpack_pack_map(&w->pk, n);
    snap_put_str(&w->pk, "from_the_future");   /* unknown: skipped */
    msgpack_pack_array(&w->pk, 2);
    msgpack_pack_nil(&w->pk);
    msgpack_pack_true(&w->pk);
    const char *keys[] = {"count", "mean", "m2", "decayed"};
    for (int k = 0; k < 4 + (dup != NULL); k++) {
        const char *key = k < 4 ? keys[k] : dup;
        if (skip && strcmp(key, skip) == 0)
            continue;
        snap_put_str(&w->pk, key);
        if (strcmp(key, "count") == 0)
            msgpack_pack_uint64(&w->pk, 4);
        else if (strcmp(key, "mean") == 0)
            snap_put_doubles(&w->pk, v + 1, nmean);
        else if (strcmp(key, "m2") == 0)
            snap_put_doubles(&w->pk, v, 3);
        else
            msgpack_pack_nil(&w->pk);
    }
}

static const char *
load_agg(buf_t *w, int *rc)
{
    agg_t a;
    cr_assert_eq(agg_init(&a, 3, 8), 0);
    snap_rd_t d;
    snap_rd_init(&d, w->sb.data, w->sb.size);
    *rc = agg_load(&d, &a, SNAP_V2);
    agg_destroy(&a);
    msgpack_sbuffer_destroy(&w->sb);
    return d.why;
}

Test(snap, agg_bad_records_name_the_reason)
{
    buf_t w;
    int rc;
    buf_init(&w);
    pack_agg(&w, NULL, NULL, 0.5, 3);
    cr_assert_null(load_agg(&w, &rc));
    cr_assert_eq(rc, 0, "an unknown field is skipped");
    struct {
        const char *skip, *dup;
        double m2;
        uint32_t nmean;
        const char *why;
    } cases[] = {
        {"m2", NULL, 0.5, 3, "aggregate (count, mean or m2 missing)"},
        {NULL, "count", 0.5, 3, "aggregate count"},
        {NULL, NULL, -1, 3, "aggregate m2 (negative)"},
        {NULL, NULL, NAN, 3, "aggregate m2 (negative)"},
        {NULL, NULL, 0.5, 2, "aggregate means"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        buf_init(&w);
        pack_agg(&w, cases[k].skip, cases[k].dup, cases[k].m2, cases[k].nmean);
        const char *why = load_agg(&w, &rc);
        cr_assert_eq(rc, -1, "case %zu", k);
        cr_assert_str_eq(why, cases[k].why, "case %zu", k);
    }
}

Test(snap, every_truncation_fails_inside_the_bytes)
{
    agg_t a;
    random_agg(&a, 5, 3, 4, 7);
    drift_t dr;
    cr_assert_eq(drift_init(&dr, 5, 2, NULL), 0);
    buf_t w;
    buf_init(&w);
    agg_save(&w.pk, &a);
    size_t agg_len = w.sb.size;
    drift_save(&w.pk, &dr);
    for (size_t len = 0; len < w.sb.size; len++) {
        /* A copy of exactly `len` bytes, so that ASan sees any read past it. */
        uint8_t *p = malloc(len ? len : 1);
        memcpy(p, w.sb.data, len);
        snap_rd_t d;
        snap_rd_init(&d, p, len);
        int rc = len < agg_len ? agg_load(&d, &a, SNAP_V2)
                               : (snap_rd_init(&d, p + agg_len, len - agg_len),
                                  drift_load(&d, &dr, SNAP_V2));
        cr_assert_eq(rc, -1, "%zu bytes", len);
        cr_assert_not_null(d.why);
        free(p);
    }
    agg_destroy(&a);
    drift_destroy(&dr);
    msgpack_sbuffer_destroy(&w.sb);
}

Test(snap, heads_round_trip)
{
    agg_heads_t h, g;
    cr_assert_eq(agg_heads_init(&h, 3, 2), 0);
    rng_t r;
    rng_seed(&r, 5);
    float imp[6], conf[6];
    for (int t = 0; t < 17; t++) {
        fill(&r, imp, 6);
        fill(&r, conf, 6);
        cr_assert_eq(agg_heads_update(&h, t % 3 ? imp : NULL, conf), 0);
    }
    buf_t w;
    buf_init(&w);
    agg_heads_save(&w.pk, &h);
    cr_assert_eq(agg_heads_init(&g, 3, 2), 0);
    snap_rd_t d;
    snap_rd_init(&d, w.sb.data, w.sb.size);
    cr_assert_eq(agg_heads_load(&d, &g, SNAP_V2), 0, "%s", d.why);
    same_agg(&h.importance, &g.importance);
    same_agg(&h.confidence, &g.confidence);
    agg_heads_destroy(&g);
    /* Another shape: refused. */
    cr_assert_eq(agg_heads_init(&g, 2, 3), 0);
    snap_rd_init(&d, w.sb.data, w.sb.size);
    cr_assert_eq(agg_heads_load(&d, &g, SNAP_V2), -1);
    cr_assert_str_eq(d.why, "head statistics L (not the schema's)");
    agg_heads_destroy(&g);
    agg_heads_destroy(&h);
    msgpack_sbuffer_destroy(&w.sb);
}

static void
same_drift(const drift_t *a, const drift_t *b)
{
    cr_assert_eq(a->nfeat, b->nfeat);
    cr_assert_eq(a->filled, b->filled);
    cr_assert_eq(a->closed, b->closed);
    cr_assert_eq(a->ref_kind, b->ref_kind);
    cr_assert_eq(a->has_last, b->has_last);
    same_doubles(a->sum, b->sum, a->nfeat, "sums");
    same_doubles(a->last, b->last, a->nfeat, "last");
    same_doubles(a->ref, b->ref, a->nfeat, "reference");
}

static void
same_report(const drift_report_t *a, const drift_report_t *b)
{
    cr_assert_eq(a->window, b->window);
    cr_assert_eq(a->ref, b->ref);
    cr_assert_eq(a->compared, b->compared);
    cr_assert_eq(a->alert, b->alert);
    const drift_stat_t *sa[3] = {&a->spearman, &a->ndcg, &a->js};
    const drift_stat_t *sb[3] = {&b->spearman, &b->ndcg, &b->js};
    for (int k = 0; k < 3; k++) {
        cr_assert_eq(sa[k]->defined, sb[k]->defined);
        cr_assert_eq(sa[k]->alert, sb[k]->alert);
        cr_assert(memcmp(&sa[k]->value, &sb[k]->value, sizeof(double)) == 0);
    }
}

Test(snap, drift_round_trip_is_bit_for_bit_and_goes_on_the_same)
{
    static const unsigned pushes[] = {0, 3, 5, 13, 41};
    for (int kind = 0; kind < 4; kind++)
        for (size_t p = 0; p < 5; p++) {
            rng_t r;
            rng_seed(&r, 100 + (uint64_t)kind * 10 + p);
            drift_t a, b;
            cr_assert_eq(drift_init(&a, 6, 5, NULL), 0);
            float x[6];
            drift_report_t ra, rb;
            for (unsigned t = 0; t < pushes[p]; t++) {
                fill(&r, x, 6);
                cr_assert_geq(drift_push(&a, x, &ra), 0);
            }
            double ref[6] = {6, 5, 4, 3, 2, 1};
            if (kind == 1)
                drift_set_reference(&a, DRIFT_REF_EXTERNAL, ref);
            else if (kind == 2 && a.has_last)
                drift_set_reference(&a, DRIFT_REF_PINNED, a.last);
            else if (kind == 3)
                drift_reset_reference(&a);
            buf_t w;
            buf_init(&w);
            drift_save(&w.pk, &a);
            cr_assert_eq(drift_init(&b, 6, 5, NULL), 0);
            snap_rd_t d;
            snap_rd_init(&d, w.sb.data, w.sb.size);
            cr_assert_eq(drift_load(&d, &b, SNAP_V2), 0, "%s", d.why);
            cr_assert_eq(mpr_left(&d.r), 0);
            same_drift(&a, &b);
            for (unsigned t = 0; t < 12; t++) {
                fill(&r, x, 6);
                int ca = drift_push(&a, x, &ra), cb = drift_push(&b, x, &rb);
                cr_assert_eq(ca, cb);
                if (ca == 1)
                    same_report(&ra, &rb);
            }
            same_drift(&a, &b);
            drift_destroy(&a);
            drift_destroy(&b);
            msgpack_sbuffer_destroy(&w.sb);
        }
}

Test(snap, drift_other_window_drops_only_the_open_window)
{
    drift_t a, b;
    cr_assert_eq(drift_init(&a, 3, 4, NULL), 0);
    float x[3] = {1, 2, 3};
    drift_report_t rep;
    for (int t = 0; t < 10; t++)
        drift_push(&a, x, &rep);
    buf_t w;
    buf_init(&w);
    drift_save(&w.pk, &a);
    cr_assert_eq(drift_init(&b, 3, 7, NULL), 0);
    snap_rd_t d;
    snap_rd_init(&d, w.sb.data, w.sb.size);
    cr_assert_eq(drift_load(&d, &b, SNAP_V2), 0, "%s", d.why);
    cr_assert_eq(b.filled, 0);
    cr_assert_eq(b.closed, 2);
    cr_assert_eq(b.ref_kind, DRIFT_REF_BASELINE);
    double zero[3] = {0};
    same_doubles(b.sum, zero, 3, "sums");
    same_doubles(b.last, a.last, 3, "last");
    drift_destroy(&a);
    drift_destroy(&b);
    msgpack_sbuffer_destroy(&w.sb);
}

Test(snap, drift_first_format)
{
    double sum[2] = {1, 2}, last[2] = {0.25, 0.75}, ref[2] = {0.5, 0.5};
    buf_t w;
    buf_init(&w);
    msgpack_pack_array(&w.pk, 8);
    msgpack_pack_uint32(&w.pk, 10);
    msgpack_pack_uint32(&w.pk, 3);
    msgpack_pack_uint64(&w.pk, 4);
    msgpack_pack_uint8(&w.pk, DRIFT_REF_PINNED);
    msgpack_pack_true(&w.pk);
    snap_put_doubles(&w.pk, sum, 2);
    snap_put_doubles(&w.pk, last, 2);
    snap_put_doubles(&w.pk, ref, 2);
    drift_t b;
    cr_assert_eq(drift_init(&b, 2, 10, NULL), 0);
    snap_rd_t d;
    snap_rd_init(&d, w.sb.data, w.sb.size);
    cr_assert_eq(drift_load(&d, &b, SNAP_V1), 0, "%s", d.why);
    cr_assert_eq(b.filled, 3);
    cr_assert_eq(b.closed, 4);
    cr_assert_eq(b.ref_kind, DRIFT_REF_PINNED);
    cr_assert(b.has_last);
    same_doubles(b.sum, sum, 2, "sums");
    same_doubles(b.last, last, 2, "last");
    same_doubles(b.ref, ref, 2, "reference");
    drift_destroy(&b);
    msgpack_sbuffer_destroy(&w.sb);

    /* A reference kind past the known ones, or filled past the window. */
    for (int bad = 0; bad < 2; bad++) {
        buf_init(&w);
        msgpack_pack_array(&w.pk, 8);
        msgpack_pack_uint32(&w.pk, 10);
        msgpack_pack_uint32(&w.pk, bad ? 11 : 3);
        msgpack_pack_uint64(&w.pk, 4);
        msgpack_pack_uint8(&w.pk, bad ? DRIFT_REF_PINNED : 9);
        msgpack_pack_true(&w.pk);
        snap_put_doubles(&w.pk, sum, 2);
        snap_put_doubles(&w.pk, last, 2);
        snap_put_doubles(&w.pk, ref, 2);
        cr_assert_eq(drift_init(&b, 2, 10, NULL), 0);
        snap_rd_init(&d, w.sb.data, w.sb.size);
        cr_assert_eq(drift_load(&d, &b, SNAP_V1), -1);
        cr_assert_str_eq(d.why, "drift state");
        drift_destroy(&b);
        msgpack_sbuffer_destroy(&w.sb);
    }
}

Test(snap, drift_stat_and_reference_names)
{
    drift_stat_t st = {.defined = true, .alert = true, .value = -0.375}, got = {0};
    buf_t w;
    buf_init(&w);
    drift_stat_save(&w.pk, &st);
    snap_rd_t d;
    snap_rd_init(&d, w.sb.data, w.sb.size);
    cr_assert_eq(drift_stat_load(&d, &got, SNAP_V2), 0, "%s", d.why);
    cr_assert(got.defined && got.alert && got.value == -0.375);
    msgpack_sbuffer_destroy(&w.sb);
    for (int k = DRIFT_REF_NONE; k <= DRIFT_REF_EXTERNAL; k++) {
        const char *n = drift_ref_name((drift_ref_t)k);
        cr_assert_eq(drift_ref_parse((const uint8_t *)n, (uint32_t)strlen(n)), k);
    }
    cr_assert_eq(drift_ref_parse((const uint8_t *)"pinne", 5), -1);
}
