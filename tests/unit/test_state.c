/*  Tests of daemon/state: the snapshot container (header, checksum,
    atomic write, quarantine) around the records the owners write. No
    sockets, no server: a model table, a global state and the stats,
    as the daemon has them before it ingests anything.

    - random states of every owner type (models, counters, seqs, alerts,
      epochs with methods, classes, drift, references, heads) survive a
      save and a load bit for bit;
    - a truncated, corrupted, wrong-version or malformed file is moved
      aside under its own name, with the reason in the log, and the
      model table and global state are left empty;
    - the format-1 snapshot the first daemon wrote
      (tests/unit/data/snapshot-v1, made by make.py there) loads, and what
      it restores is what that daemon answered about it then.  */
#define _GNU_SOURCE
#include "global.h"
#include "models.h"
#include "snap.h"
#include "state.h"
#include "stats.h"
#include "support.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIXTURE XPL_SOURCE_DIR "/tests/unit/data/snapshot-v1"

/* ---- what a snapshot is taken of ---------------------------------------- */

static global_params_t
params(double half_life, uint32_t window, uint32_t max_targets, uint32_t alerts_kept)
{
    global_params_t p = {.half_life = half_life, .window = window, .max_targets = max_targets,
                         .alerts_kept = alerts_kept, .moved_k = 3};
    drift_opts_default(&p.drift);
    /* CUSUM with a short calibration: the detectors hold state to keep. */
    detect_opts_default(&p.detect);
    p.detect.mode = DETECT_CUSUM;
    p.detect.calib_windows = 2;
    return p;
}

/* The owners state_save and state_load take, as server.c holds them. */
typedef struct {
    models_t models;
    global_t global;
    stats_t stats;
} owners_t;

static owners_t *
owners_new(const global_params_t *p)
{
    owners_t *s = calloc(1, sizeof *s);
    cr_assert_not_null(s);
    cr_assert_eq(models_init(&s->models, 16), 0);
    cr_assert_eq(global_init(&s->global, 16, p), 0);
    return s;
}

/* The global state of a model and of one of its epochs (the one place
   this test spells global.c's accessors). */
static gmodel_t *
gm_of(owners_t *s, model_t *md)
{
    return global_model(&s->global, md);
}

static gepoch_t *
ep_of(owners_t *s, model_t *md, uint32_t epoch, bool create)
{
    return global_epoch(&s->global, md, epoch, create);
}

static void
owners_free(owners_t *s)
{
    global_destroy(&s->global);
    models_destroy(&s->models);
    free(s);
}

static char *
tmpdir(void)
{
    char *d = strdup("/tmp/xpl-test-state-XXXXXX");
    cr_assert_not_null(mkdtemp(d));
    return d;
}

static void
rmdir_all(char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') {
            char p[512];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    if (d)
        closedir(d);
    rmdir(dir);
    free(dir);
}

static uint8_t *
slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(n ? (size_t)n : 1);
    cr_assert_eq(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

static void
spit(const char *path, const void *p, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(p, 1, len, f), len);
    fclose(f);
}

/* state_load with stderr captured into *log (the caller frees it). */
static int
load_logged(owners_t *s, const char *dir, char **log)
{
    char path[] = "/tmp/xpl-test-state-log-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    int rc = state_load(&s->models, &s->global, dir);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    size_t n;
    uint8_t *p = slurp(path, &n);
    unlink(path);
    *log = realloc(p, n + 1);
    (*log)[n] = 0;
    return rc;
}

/* ---- random state of every owner type ----------------------------------- */

static void
fill(rng_t *r, float *x, uint32_t n)
{
    for (uint32_t j = 0; j < n; j++)
        x[j] = (float)(0.1 * j + fabs(rng_normal(r)));
}

static drift_stat_t
rstat(rng_t *r)
{
    return (drift_stat_t){.defined = rng_uniform(r) < 0.8, .alert = rng_uniform(r) < 0.5,
                          .value = rng_normal(r)};
}

/* An epoch as global_add leaves it after a random stream, and then some:
   references of every kind, a last window, classes. */
static void
random_epoch(owners_t *s, gepoch_t *e, rng_t *r)
{
    const global_params_t *p = &s->global.p;
    float x[64], y[64];
    e->count = rng_next(r) % 1000;
    e->untracked = rng_next(r) % 7;
    unsigned mask = (unsigned)(rng_next(r) % ((1u << XM_NMETHODS) - 1)) + 1;
    e->nclasses = e->cap_classes = (uint32_t)(rng_next(r) % (p->max_targets + 1));
    e->classes = e->nclasses ? calloc(e->nclasses, sizeof *e->classes) : NULL;
    for (uint32_t c = 0; c < e->nclasses; c++)
        e->classes[c].target = (int64_t)c * 3 - 2;
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(mask & XM_BIT(m)))
            continue;
        cr_assert_eq(agg_init(&e->all[m], e->nf, p->half_life), 0);
        cr_assert_eq(drift_init(&e->drift[m], e->nf, p->window, &p->drift), 0);
        cr_assert_eq(detect_init(&e->detect[m], &p->detect, &p->drift), 0);
        e->methods |= XM_BIT(m);
        unsigned n = (unsigned)(rng_next(r) % 40);
        drift_report_t rep;
        detect_verdict_t v;
        for (unsigned t = 0; t < n; t++) {
            fill(r, x, e->nf);
            agg_update(&e->all[m], x);
            if (drift_push(&e->drift[m], x, &rep) == 1)
                detect_feed(&e->detect[m], &rep, &v);
        }
        int kind = (int)(rng_next(r) % 4);
        if (kind == 1) {
            e->extref[m] = malloc(e->nf * sizeof(double) + 1);
            for (uint32_t j = 0; j < e->nf; j++)
                e->extref[m][j] = rng_normal(r);
            drift_set_reference(&e->drift[m], DRIFT_REF_EXTERNAL, e->extref[m]);
        } else if (kind == 2 && e->all[m].count) {
            drift_set_reference(&e->drift[m], DRIFT_REF_PINNED, e->all[m].mean);
        }
        if (rng_uniform(r) < 0.7) {
            e->last[m] = (glast_t){.valid = true, .window = rng_next(r) % 9,
                                   .ref = (drift_ref_t)(rng_next(r) % 4),
                                   .compared = rng_uniform(r) < 0.5, .spearman = rstat(r),
                                   .ndcg = rstat(r), .js = rstat(r), .alert = true,
                                   .ts = (int64_t)(rng_next(r) >> 2)};
            /* A verdict with evidence and a what-moved list. */
            glast_t *l = &e->last[m];
            l->verdict = (detect_verdict_t){.mode = DETECT_CUSUM, .scored = {true, false, true},
                                            .z = {rng_normal(r), 0, rng_normal(r)},
                                            .cusum = {rng_uniform(r), 0, rng_uniform(r)},
                                            .alert_stat = {true, false, false}, .alert = true};
            double cur[64], ref[64];
            for (uint32_t j = 0; j < e->nf; j++)
                cur[j] = rng_normal(r), ref[j] = rng_normal(r);
            l->nmoved = detect_what_moved(&e->dwork, cur, ref, e->nf, p->moved_k, DETECT_BY_VALUE,
                                          l->moved);
        }
        for (uint32_t c = 0; c < e->nclasses; c++) {
            cr_assert_eq(agg_init(&e->classes[c].agg[m], e->nf, p->half_life), 0);
            for (unsigned t = 0; t < c + 1; t++) {
                fill(r, x, e->nf);
                agg_update(&e->classes[c].agg[m], x);
            }
        }
    }
    for (unsigned t = 0; t < 5; t++) {
        fill(r, x, e->L * e->H);
        fill(r, y, e->L * e->H);
        agg_heads_update(&e->heads, t % 2 ? x : NULL, y);
    }
}

static model_t *
random_model(owners_t *s, const char *name, uint32_t nepochs, rng_t *r)
{
    model_t *md = models_add(&s->models, name, strlen(name));
    cr_assert_not_null(md);
    for (uint32_t ep = 1; ep <= nepochs; ep++) {
        xm_shape_t shape = {2, 3, 3 + ep, ep % 2 ? (int32_t)(2 + ep) : -1};
        char names[16][24];
        wire_sv_t tok[16];
        for (uint32_t t = 0; t < shape.n; t++) {
            snprintf(names[t], sizeof names[t], "w%u.%u", ep, t);
            tok[t] = (wire_sv_t){(const uint8_t *)names[t], (uint32_t)strlen(names[t])};
        }
        cr_assert_eq(model_restore_schema(md, ep, &shape, tok, ep == nepochs), 0);
    }
    md->seq_known = rng_uniform(r) < 0.8;
    md->last_seq = rng_next(r);
    md->last_ts = (int64_t)(rng_next(r) >> 1);
    uint64_t *c[] = {&md->received, &md->trades, &md->explained, &md->rejected, &md->lost,
                     &md->restarts, &md->xpl_seq, &md->flow_counter};
    for (size_t k = 0; k < 8; k++)
        *c[k] = rng_next(r) >> (k * 7);
    gmodel_t *gm = gm_of(s, md);
    gm->glob_seq = rng_next(r) % 100000;
    gm->drift_seq = rng_next(r) % 100000;
    gm->heads_seq = rng_next(r) % 100000;
    /* More alerts than the ring keeps: it wraps, as in the daemon. */
    uint32_t kept = s->global.p.alerts_kept, n = (uint32_t)(rng_next(r) % (kept + 3));
    for (uint32_t k = 0; k < n; k++) {
        gm->alerts[gm->alerts_next] = (galert_t){
            .ts = (int64_t)k * 1000 + 7, .epoch = 1 + k % nepochs,
            .method = (uint8_t)(rng_next(r) % XM_NMETHODS), .window = k,
            .ref = (drift_ref_t)(1 + rng_next(r) % 3), .spearman = rstat(r), .ndcg = rstat(r),
            .js = rstat(r)};
        gm->alerts_next = (gm->alerts_next + 1) % kept;
        if (gm->alerts_count < kept)
            gm->alerts_count++;
        gm->alerts_total++;
    }
    /* The oldest kept epoch has no global state (nil in the snapshot). */
    uint32_t first = nepochs > MODEL_EPOCHS_KEPT ? nepochs - MODEL_EPOCHS_KEPT + 1 : 1;
    for (uint32_t ep = first + (nepochs > 1); ep <= nepochs; ep++) {
        gepoch_t *e = ep_of(s, md, ep, true);
        cr_assert_not_null(e);
        random_epoch(s, e, r);
    }
    return md;
}

/* The payload with its written_ns value blanked (it is the only field
   two saves of the same state may differ in). */
static uint8_t *
payload_of(const char *dir, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, STATE_FILE);
    size_t n;
    uint8_t *p = slurp(path, &n);
    cr_assert_gt(n, 28);
    memmove(p, p + 28, n - 28);
    n -= 28;
    static const char key[] = "\xaawritten_ns";
    uint8_t *at = memmem(p, n, key, sizeof key - 1);
    cr_assert_not_null(at);
    at += sizeof key - 1;
    cr_assert(at[0] == 0xcf || at[0] == 0xd3, "written_ns is an 8-byte int");
    memset(at + 1, 0, 8);
    *len = n;
    return p;
}

static void
same_agg(const agg_t *a, const agg_t *b)
{
    cr_assert_eq(a->count, b->count);
    cr_assert_eq(a->nfeat, b->nfeat);
    if (a->nfeat) {
        cr_assert(memcmp(a->mean, b->mean, a->nfeat * sizeof(double)) == 0);
        cr_assert(memcmp(a->m2, b->m2, a->nfeat * sizeof(double)) == 0);
        cr_assert_eq(a->decayed == NULL, b->decayed == NULL);
        if (a->decayed)
            cr_assert(memcmp(a->decayed, b->decayed, a->nfeat * sizeof(double)) == 0);
    }
}

Test(state, random_states_round_trip_bit_for_bit)
{
    for (uint64_t seed = 1; seed <= 12; seed++) {
        global_params_t p = params(1 + (double)seed, 3 + (uint32_t)seed % 4, 3, 4);
        owners_t *a = owners_new(&p), *b = owners_new(&p);
        rng_t r;
        rng_seed(&r, seed);
        char *d1 = tmpdir(), *d2 = tmpdir();
        uint32_t nmodels = 1 + (uint32_t)(seed % 3);
        for (uint32_t k = 0; k < nmodels; k++) {
            char name[16];
            snprintf(name, sizeof name, "m%u", k);
            random_model(a, name, 1 + (uint32_t)((seed + k) % 10), &r);
        }
        cr_assert_eq(state_save(&a->models, &a->global, &a->stats, d1), 0);
        cr_assert_eq(a->stats.snapshots, 1);
        cr_assert_eq(state_load(&b->models, &b->global, d1), 1);
        cr_assert_eq(state_save(&b->models, &b->global, &b->stats, d2), 0);
        size_t n1, n2;
        uint8_t *p1 = payload_of(d1, &n1), *p2 = payload_of(d2, &n2);
        cr_assert_eq(n1, n2, "seed %" PRIu64, seed);
        cr_assert(memcmp(p1, p2, n1) == 0, "seed %" PRIu64 ": a reloaded state saves differently",
                  seed);
        /* And in memory, directly. */
        cr_assert_eq(b->models.count, nmodels);
        for (uint32_t k = 0; k < nmodels; k++) {
            model_t *ma = a->models.items[k], *mb = b->models.items[k];
            cr_assert_str_eq(ma->name, mb->name);
            cr_assert_eq(ma->explained, mb->explained);
            cr_assert_eq(ma->flow_counter, mb->flow_counter);
            cr_assert_eq(ma->last_seq, mb->last_seq);
            cr_assert_eq(ma->cur->epoch, mb->cur->epoch);
            gmodel_t *ga = gm_of(a, ma), *gb = gm_of(b, mb);
            cr_assert_eq(ga->alerts_count, gb->alerts_count);
            cr_assert_eq(ga->alerts_total, gb->alerts_total);
            cr_assert_eq(ga->heads_seq, gb->heads_seq);
            const gepoch_t *ea = global_current(&a->global, ma),
                           *eb = global_current(&b->global, mb);
            cr_assert_not_null(ea);
            cr_assert_not_null(eb);
            cr_assert_eq(ea->methods, eb->methods);
            cr_assert_eq(ea->nclasses, eb->nclasses);
            for (int m = 0; m < XM_NMETHODS; m++) {
                if (!(ea->methods & XM_BIT(m)))
                    continue;
                same_agg(&ea->all[m], &eb->all[m]);
                cr_assert_eq(ea->drift[m].ref_kind, eb->drift[m].ref_kind);
                cr_assert_eq(ea->drift[m].filled, eb->drift[m].filled);
                cr_assert_eq(ea->extref[m] == NULL, eb->extref[m] == NULL);
                for (uint32_t c = 0; c < ea->nclasses; c++)
                    same_agg(&ea->classes[c].agg[m], &eb->classes[c].agg[m]);
            }
            same_agg(&ea->heads.importance, &eb->heads.importance);
        }
        free(p1);
        free(p2);
        rmdir_all(d1);
        rmdir_all(d2);
        owners_free(a);
        owners_free(b);
    }
}

Test(state, no_snapshot_starts_fresh)
{
    global_params_t p = params(10, 5, 2, 3);
    owners_t *s = owners_new(&p);
    char *dir = tmpdir();
    cr_assert_eq(state_load(&s->models, &s->global, dir), 0);
    cr_assert_eq(s->models.count, 0);
    rmdir_all(dir);
    owners_free(s);
}

/* ---- unusable files are quarantined -------------------------------------- */

static uint64_t
fnv64(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t k = 0; k < n; k++)
        h = (h ^ p[k]) * 0x100000001b3ull;
    return h;
}

/* A container around `payload`, with the header's version as given. */
static uint8_t *
container(uint32_t version, const void *payload, size_t n, size_t *len)
{
    uint8_t *f = malloc(28 + n);
    memcpy(f, "XPLSTATE", 8);
    uint64_t vals[3] = {version, n, fnv64(payload, n)};
    int widths[3] = {4, 8, 8}, off = 8;
    for (int k = 0; k < 3; k++)
        for (int b = 0; b < widths[k]; b++)
            f[off++] = (uint8_t)(vals[k] >> (8 * b));
    memcpy(f + 28, payload, n);
    *len = 28 + n;
    return f;
}

/* A payload whose one model record lacks its fields. */
static msgpack_sbuffer
bad_payload(unsigned v)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    snap_put_str(&pk, "v");
    msgpack_pack_uint8(&pk, (uint8_t)v);
    snap_put_str(&pk, "written_ns");
    msgpack_pack_int64(&pk, 1);
    snap_put_str(&pk, "half_life");
    msgpack_pack_double(&pk, 10);
    snap_put_str(&pk, "models");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 1);
    snap_put_str(&pk, "name");
    snap_put_str(&pk, "m");
    return sb;
}

Test(state, unusable_files_are_moved_aside_with_the_reason)
{
    global_params_t p = params(10, 5, 2, 3);
    /* A good snapshot to damage. */
    owners_t *g = owners_new(&p);
    rng_t r;
    rng_seed(&r, 77);
    random_model(g, "good", 3, &r);
    char *gdir = tmpdir();
    cr_assert_eq(state_save(&g->models, &g->global, &g->stats, gdir), 0);
    char gpath[512];
    snprintf(gpath, sizeof gpath, "%s/%s", gdir, STATE_FILE);
    size_t glen;
    uint8_t *good = slurp(gpath, &glen);
    owners_free(g);
    rmdir_all(gdir);

    uint8_t *flipped = malloc(glen);
    memcpy(flipped, good, glen);
    flipped[glen / 2] ^= 0x40;
    uint8_t *v3 = malloc(glen), *magic = malloc(glen);
    memcpy(v3, good, glen);
    v3[8] = 3;
    memcpy(magic, good, glen);
    magic[0] = 'Y';
    msgpack_sbuffer bp = bad_payload(2), bv = bad_payload(1);
    size_t blen, vlen;
    uint8_t *bad = container(2, bp.data, bp.size, &blen);
    uint8_t *badv = container(2, bv.data, bv.size, &vlen);
    /* The good payload and one byte more, under a header that counts it. */
    uint8_t *tail = malloc(glen - 28 + 1);
    memcpy(tail, good + 28, glen - 28);
    tail[glen - 28] = 0xc0;
    size_t tlen;
    uint8_t *withtail = container(2, tail, glen - 28 + 1, &tlen);
    free(tail);
    struct {
        const char *name;
        const uint8_t *data;
        size_t len;
        const char *why;
    } cases[] = {
        {"empty", good, 0, "truncated header"},
        {"half", good, glen / 2, "truncated (payload length does not match the file size)"},
        {"flipped byte", flipped, glen, "checksum mismatch"},
        {"version 3", v3, glen, "unknown snapshot format version"},
        {"bad magic", magic, glen, "not an xplaind snapshot (bad magic)"},
        {"model without fields", bad, blen, "model (a field is missing)"},
        {"payload v not the header's", badv, vlen, "v (not the header's format version)"},
        {"bytes after the payload", withtail, tlen, "bytes after the payload"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        char *dir = tmpdir(), path[512];
        snprintf(path, sizeof path, "%s/%s", dir, STATE_FILE);
        spit(path, cases[k].data, cases[k].len);
        owners_t *s = owners_new(&p);
        char *log;
        cr_assert_eq(load_logged(s, dir, &log), -1, "%s", cases[k].name);
        cr_assert_eq(s->models.count, 0, "%s: the model table is left empty", cases[k].name);
        cr_assert_not_null(strstr(log, cases[k].why), "%s: log does not name '%s':\n%s",
                           cases[k].name, cases[k].why, log);
        cr_assert_not_null(strstr(log, "moved it to"), "%s", cases[k].name);
        cr_assert_neq(access(path, F_OK), 0, "%s: still in place", cases[k].name);
        /* Exactly one file aside, with the bytes that were there. */
        DIR *d = opendir(dir);
        struct dirent *e;
        int aside = 0;
        while ((e = readdir(d)))
            if (strncmp(e->d_name, STATE_FILE ".corrupt-", strlen(STATE_FILE ".corrupt-")) == 0) {
                char ap[512];
                snprintf(ap, sizeof ap, "%s/%s", dir, e->d_name);
                size_t n;
                uint8_t *got = slurp(ap, &n);
                cr_assert(n == cases[k].len && (n == 0 || memcmp(got, cases[k].data, n) == 0),
                          "%s: the file aside is not the original", cases[k].name);
                free(got);
                aside++;
            }
        closedir(d);
        cr_assert_eq(aside, 1, "%s", cases[k].name);
        /* The table still works: a fresh model can be added. */
        cr_assert_not_null(models_add(&s->models, "x", 1));
        free(log);
        owners_free(s);
        rmdir_all(dir);
    }
    free(good);
    free(flipped);
    free(v3);
    free(magic);
    free(bad);
    free(badv);
    free(withtail);
    msgpack_sbuffer_destroy(&bp);
    msgpack_sbuffer_destroy(&bv);
}

/* ---- the format-1 fixture ------------------------------------------------ */

static const msgpack_object *
get(const msgpack_object *o, const char *key)
{
    cr_assert_eq(o->type, MSGPACK_OBJECT_MAP, "looking up '%s' in a non-map", key);
    for (uint32_t k = 0; k < o->via.map.size; k++) {
        const msgpack_object *kk = &o->via.map.ptr[k].key;
        if (kk->type == MSGPACK_OBJECT_STR && kk->via.str.size == strlen(key) &&
            memcmp(kk->via.str.ptr, key, kk->via.str.size) == 0)
            return &o->via.map.ptr[k].val;
    }
    return NULL;
}

static const msgpack_object *
must(const msgpack_object *o, const char *key)
{
    const msgpack_object *v = get(o, key);
    cr_assert_not_null(v, "reply has no '%s'", key);
    return v;
}

static uint64_t
u64(const msgpack_object *o)
{
    cr_assert_eq(o->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    return o->via.u64;
}

static int64_t
i64(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? o->via.i64 : (int64_t)u64(o);
}

static bool
str_is(const msgpack_object *o, const char *s)
{
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

/* The reply's doubles equal these exactly (what was saved is what the
   daemon reported: no rounding anywhere). */
static void
same_vec(const msgpack_object *o, const double *v, uint32_t n, const char *what)
{
    cr_assert_eq(o->type, MSGPACK_OBJECT_ARRAY, "%s", what);
    cr_assert_eq(o->via.array.size, n, "%s", what);
    for (uint32_t k = 0; k < n; k++)
        cr_assert(o->via.array.ptr[k].via.f64 == v[k], "%s[%u]: %.17g restored, %.17g reported",
                  what, k, v[k], o->via.array.ptr[k].via.f64);
}

static void
check_agg(const msgpack_object *o, const agg_t *a, const char *what)
{
    cr_assert_eq(u64(must(o, "count")), a->count, "%s count", what);
    same_vec(must(o, "mean"), a->mean, a->nfeat, what);
    double sd[64];
    cr_assert_leq(a->nfeat, 64);
    agg_std(a, sd);   /* the reply's std is agg_std of the m2 the daemon had */
    same_vec(must(o, "std"), sd, a->nfeat, what);
    same_vec(must(o, "decayed"), a->decayed, a->nfeat, what);
}

static void
check_stat(const msgpack_object *o, const drift_stat_t *st, const char *what)
{
    if (o->type == MSGPACK_OBJECT_NIL) {
        cr_assert(!st->defined, "%s: undefined reported, defined restored", what);
        return;
    }
    cr_assert(st->defined, "%s", what);
    cr_assert(o->via.f64 == st->value, "%s: %.17g restored, %.17g reported", what, st->value,
              o->via.f64);
}

static void
check_global(owners_t *s, model_t *md, gepoch_t *e, const msgpack_object *g)
{
    gmodel_t *gm = gm_of(s, md);
    cr_assert_eq(u64(must(g, "seq")), gm->glob_seq - 1);
    cr_assert_eq(u64(must(g, "count")), e->count);
    cr_assert_eq(u64(must(g, "untracked_targets")), e->untracked);
    const msgpack_object *ms = must(g, "methods");
    cr_assert_eq(ms->via.map.size, (uint32_t)__builtin_popcount(e->methods));
    for (uint32_t k = 0; k < ms->via.map.size; k++) {
        const msgpack_object *name = &ms->via.map.ptr[k].key, *v = &ms->via.map.ptr[k].val;
        int m = xm_method_parse(name->via.str.ptr, name->via.str.size);
        cr_assert(m >= 0 && (e->methods & XM_BIT(m)));
        check_agg(v, &e->all[m], "global");
        const msgpack_object *ref = get(v, "reference");
        cr_assert_eq(ref != NULL, e->extref[m] != NULL);
        if (ref)
            same_vec(ref, e->extref[m], e->nf, "external reference");
    }
    const msgpack_object *ts = must(g, "targets");
    cr_assert_eq(ts->via.array.size, e->nclasses);
    for (uint32_t c = 0; c < e->nclasses; c++) {
        const msgpack_object *t = &ts->via.array.ptr[c];
        cr_assert_eq(i64(must(t, "target")), e->classes[c].target);
        const msgpack_object *tm = must(t, "methods");
        cr_assert_eq(tm->via.map.size, (uint32_t)__builtin_popcount(e->methods));
        for (uint32_t k = 0; k < tm->via.map.size; k++) {
            const msgpack_object *name = &tm->via.map.ptr[k].key;
            int m = xm_method_parse(name->via.str.ptr, name->via.str.size);
            cr_assert_geq(m, 0);
            check_agg(&tm->via.map.ptr[k].val, &e->classes[c].agg[m], "target class");
        }
    }
}

static void
check_drift(owners_t *s, model_t *md, gepoch_t *e, const msgpack_object *dr)
{
    gmodel_t *gm = gm_of(s, md);
    const msgpack_object *ms = must(dr, "methods");
    cr_assert_eq(ms->via.map.size, (uint32_t)__builtin_popcount(e->methods));
    for (uint32_t k = 0; k < ms->via.map.size; k++) {
        const msgpack_object *name = &ms->via.map.ptr[k].key, *v = &ms->via.map.ptr[k].val;
        int m = xm_method_parse(name->via.str.ptr, name->via.str.size);
        cr_assert_geq(m, 0);
        const drift_t *d = &e->drift[m];
        cr_assert(str_is(must(v, "reference"), drift_ref_name(d->ref_kind)));
        cr_assert_eq(u64(must(v, "filled")), d->filled);
        cr_assert_eq(u64(must(v, "windows")), d->closed);
        const msgpack_object *last = must(v, "last");
        const glast_t *l = &e->last[m];
        cr_assert_eq(last->type != MSGPACK_OBJECT_NIL, l->valid);
        if (!l->valid)
            continue;
        cr_assert_eq(u64(must(last, "window")), l->window);
        cr_assert(str_is(must(last, "reference"), drift_ref_name(l->ref)));
        cr_assert_eq(must(last, "compared")->via.boolean, l->compared);
        cr_assert_eq(must(last, "alert")->via.boolean, l->alert);
        cr_assert_eq(i64(must(last, "ts")), l->ts);
        check_stat(must(last, "spearman"), &l->spearman, "spearman");
        check_stat(must(last, "ndcg"), &l->ndcg, "ndcg");
        check_stat(must(last, "js"), &l->js, "js");
    }
    cr_assert_eq(u64(must(dr, "alerts_total")), gm->alerts_total);
    const msgpack_object *al = must(dr, "alerts");
    uint32_t n = gm->alerts_count, kept = s->global.p.alerts_kept;
    cr_assert_eq(al->via.array.size, n);
    for (uint32_t k = 0; k < n; k++) {
        const galert_t *a = &gm->alerts[(gm->alerts_next + kept - n + k) % kept];
        const msgpack_object *o = &al->via.array.ptr[k];
        cr_assert_eq(i64(must(o, "ts")), a->ts);
        cr_assert_eq(u64(must(o, "epoch")), a->epoch);
        cr_assert(str_is(must(o, "method"), xm_method_name((xm_method_t)a->method)));
        cr_assert_eq(u64(must(o, "window")), a->window);
        cr_assert(str_is(must(o, "reference"), drift_ref_name(a->ref)));
        check_stat(must(o, "spearman"), &a->spearman, "alert spearman");
        check_stat(must(o, "ndcg"), &a->ndcg, "alert ndcg");
        check_stat(must(o, "js"), &a->js, "alert js");
    }
}

static void
check_heads(owners_t *s, model_t *md, gepoch_t *e, const msgpack_object *h)
{
    cr_assert_eq(u64(must(h, "seq")), gm_of(s, md)->heads_seq - 1);
    cr_assert_eq(u64(must(h, "importance_count")), e->heads.importance.count);
    cr_assert_eq(u64(must(h, "confidence_count")), e->heads.confidence.count);
    const agg_t *aggs[2] = {&e->heads.importance, &e->heads.confidence};
    const char *names[2] = {"importance", "confidence"};
    for (int k = 0; k < 2; k++) {
        const msgpack_object *rows = must(h, names[k]);
        cr_assert_eq(rows->via.array.size, e->L);
        for (uint32_t l = 0; l < e->L; l++)
            same_vec(&rows->via.array.ptr[l], aggs[k]->mean + (size_t)l * e->H, e->H, names[k]);
    }
}

/* Everything the replies recorded when the snapshot was written. */
static void
check_fixture(owners_t *s, const msgpack_object *rep)
{
    const msgpack_object *models = must(must(rep, "models"), "models");
    cr_assert_eq(models->via.array.size, s->models.count);
    unsigned checked = 0;
    for (uint32_t k = 0; k < models->via.array.size; k++) {
        const msgpack_object *mo = &models->via.array.ptr[k];
        const msgpack_object *name = must(mo, "model");
        model_t *md = models_find(&s->models, name->via.str.ptr, name->via.str.size);
        cr_assert_not_null(md);
        cr_assert_eq(u64(must(mo, "received")), md->received);
        cr_assert_eq(u64(must(mo, "trades")), md->trades);
        cr_assert_eq(u64(must(mo, "explained")), md->explained);
        cr_assert_eq(u64(must(mo, "rejected")), md->rejected);
        cr_assert_eq(u64(must(mo, "lost")), md->lost);
        cr_assert_eq(u64(must(mo, "restarts")), md->restarts);
        cr_assert_eq(u64(must(mo, "last_seq")), md->last_seq);
        cr_assert_eq(i64(must(mo, "last_ts")), md->last_ts);
        cr_assert_eq(u64(must(mo, "epoch")), md->cur->epoch);
        cr_assert_eq(u64(must(mo, "L")), md->cur->shape.L);
        cr_assert_eq(u64(must(mo, "H")), md->cur->shape.H);
        cr_assert_eq(u64(must(mo, "n")), md->cur->shape.n);
        cr_assert_eq(i64(must(mo, "cls")), md->cur->shape.cls);
        for (uint32_t ep = 1; ep <= md->cur->epoch; ep++) {
            char key[96];
            gepoch_t *e = ep_of(s, md, ep, false);
            snprintf(key, sizeof key, "global/%s/%u", md->name, ep);
            const msgpack_object *g = get(rep, key);
            if (g) {
                cr_assert_not_null(e, "%s", key);
                check_global(s, md, e, g);
                checked++;
            }
            snprintf(key, sizeof key, "drift/%s/%u", md->name, ep);
            if ((g = get(rep, key))) {
                check_drift(s, md, e, g);
                checked++;
            }
            snprintf(key, sizeof key, "heads/%s/%u", md->name, ep);
            if ((g = get(rep, key))) {
                check_heads(s, md, e, g);
                checked++;
            }
        }
    }
    /* global and drift of alpha/1, beta/1, beta/2; heads of three. */
    cr_assert_eq(checked, 9, "only %u replies checked", checked);
}

static owners_t *
load_fixture(msgpack_unpacked *rep, uint8_t **rep_bytes, char **dir)
{
    size_t n;
    *rep_bytes = slurp(FIXTURE "/replies.msgpack", &n);
    msgpack_unpacked_init(rep);
    cr_assert_eq(msgpack_unpack_next(rep, (const char *)*rep_bytes, n, NULL),
                 MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *pp = must(&rep->data, "_params");
    global_params_t p = params(must(pp, "half_life")->via.f64, (uint32_t)u64(must(pp, "window")),
                               (uint32_t)u64(must(pp, "max_targets")),
                               (uint32_t)u64(must(pp, "alerts_kept")));
    owners_t *s = owners_new(&p);
    /* A copy: a load may move a bad file aside, never the fixture. */
    *dir = tmpdir();
    size_t len;
    uint8_t *snap = slurp(FIXTURE "/state.msgpack", &len);
    cr_assert_eq(snap[8], 1, "the fixture is a format-1 file");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", *dir, STATE_FILE);
    spit(path, snap, len);
    free(snap);
    char *log;
    int rc = load_logged(s, *dir, &log);
    cr_assert_eq(rc, 1, "the format-1 fixture did not load:\n%s", log);
    free(log);
    return s;
}

Test(state, format_1_fixture_restores_what_the_daemon_reported)
{
    msgpack_unpacked rep;
    uint8_t *bytes;
    char *dir;
    owners_t *s = load_fixture(&rep, &bytes, &dir);
    check_fixture(s, &rep.data);
    owners_free(s);
    rmdir_all(dir);
    msgpack_unpacked_destroy(&rep);
    free(bytes);
}

Test(state, format_1_fixture_saved_as_format_2_loads_the_same)
{
    msgpack_unpacked rep;
    uint8_t *bytes;
    char *dir;
    owners_t *s = load_fixture(&rep, &bytes, &dir);
    char *d2 = tmpdir();
    cr_assert_eq(state_save(&s->models, &s->global, &s->stats, d2), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", d2, STATE_FILE);
    size_t n;
    uint8_t *f = slurp(path, &n);
    cr_assert_eq(f[8], SNAP_V2, "new snapshots are format 2");
    free(f);
    owners_t *b = owners_new(&s->global.p);
    cr_assert_eq(state_load(&b->models, &b->global, d2), 1);
    check_fixture(b, &rep.data);
    owners_free(b);
    owners_free(s);
    rmdir_all(d2);
    rmdir_all(dir);
    msgpack_unpacked_destroy(&rep);
    free(bytes);
}

/* ---- event-time state beside the drift modes ---------------------------- */

#define EVT_NF 4

/* One rollout vector for trade j of window w (the ranking reverses from
   window 6 on) added at ts (50 + w) s + j ns; windows it closed are
   appended to out. */
static void
evt_add(owners_t *s, model_t *md, int w, int j, glast_t *out, int *n)
{
    static const float up[EVT_NF] = {0.4f, 0.3f, 0.2f, 0.1f};
    float v[EVT_NF], conf = 0.5f;
    for (int f = 0; f < EVT_NF; f++)
        v[f] = (w < 6 ? up[f] : up[EVT_NF - 1 - f]) + 0.01f * (float)((w * 7 + j * 3 + f) % 5);
    xm_result_t res = {.computed = XM_BIT(XM_ROLLOUT), .head_confidence = &conf};
    res.attr[XM_ROLLOUT] = v;
    md->last_ts = (int64_t)(50 + w) * 1000000000 + j;
    global_closed_t c;
    global_add_seg(&s->global, md, NULL, &res, "desk=a", 6, &c);
    cr_assert_eq(c.n % 2, 0, "the segment closes what the model closes");
    for (int k = 0; k < c.n; k++)
        out[(*n)++] = c.w[k].last;
}

/* A daemon with event-time windows, a decay by ts and CUSUM verdicts
   saves both sides' state in one method record (evw, evd, detect), the
   model's and its segment's, and a restarted one carries on exactly:
   the late count, the open windows, and the calibration and CUSUM sums
   give the windows closed after the restart the verdicts an
   uninterrupted daemon gives them. */
Test(state, event_time_windows_and_drift_modes_restart_exactly)
{
    global_params_t p = params(0, 4, 3, 4);
    p.window_ns = 1000000000;
    p.late_ns = 500000000;
    p.decay_ns = 3000000000;
    p.max_segments = 4;
    owners_t *a = owners_new(&p), *b = owners_new(&p);
    char *dir = tmpdir();
    xm_shape_t shape = {1, 1, EVT_NF, -1};
    static const char *names[EVT_NF] = {"t0", "t1", "t2", "t3"};
    wire_sv_t tok[EVT_NF];
    for (int t = 0; t < EVT_NF; t++)
        tok[t] = (wire_sv_t){(const uint8_t *)names[t], 2};
    model_t *ma = models_add(&a->models, "m", 1);
    cr_assert_not_null(ma);
    cr_assert_eq(model_restore_schema(ma, 1, &shape, tok, true), 0);
    glast_t wa[64], wb[64];
    int na = 0, nb = 0;
    for (int w = 0; w < 5; w++)
        for (int j = 0; j < 3; j++)
            evt_add(a, ma, w, j, wa, &na);
    evt_add(a, ma, 2, 9, wa, &na);     /* window 2 has closed: late */
    cr_assert_eq(na, 6, "windows 50-52 closed before the restart (lateness 0.5 s), twice");
    cr_assert_eq(state_save(&a->models, &a->global, &a->stats, dir), 0);
    cr_assert_eq(state_load(&b->models, &b->global, dir), 1);
    model_t *mb = b->models.items[0];
    const gepoch_t *ea = global_current(&a->global, ma), *eb = global_current(&b->global, mb);
    cr_assert_not_null(eb);
    cr_assert_not_null(eb->evw[XM_ROLLOUT].count, "event-time windows restored");
    cr_assert_eq(eb->evw[XM_ROLLOUT].late, 1);
    cr_assert_eq(eb->evw[XM_ROLLOUT].next_close, ea->evw[XM_ROLLOUT].next_close);
    cr_assert_eq(eb->detect[XM_ROLLOUT].calib_seen, ea->detect[XM_ROLLOUT].calib_seen);
    cr_assert_eq(eb->detect[XM_ROLLOUT].ready, ea->detect[XM_ROLLOUT].ready);
    double da[EVT_NF], db[EVT_NF];
    evdecay_mean(&ea->evd[XM_ROLLOUT], da);
    evdecay_mean(&eb->evd[XM_ROLLOUT], db);
    cr_assert(memcmp(da, db, sizeof da) == 0, "the decay by ts restored bit for bit");
    cr_assert_eq(eb->last[XM_ROLLOUT].verdict.mode, DETECT_CUSUM);
    const gseg_t *sa = global_segment(ea, "desk=a", 6), *sb = global_segment(eb, "desk=a", 6);
    cr_assert_not_null(sb);
    cr_assert_not_null(sb->evw[XM_ROLLOUT].count, "the segment's event-time windows restored");
    cr_assert_eq(sb->evw[XM_ROLLOUT].late, 1);
    cr_assert_eq(sb->evw[XM_ROLLOUT].next_close, sa->evw[XM_ROLLOUT].next_close);
    cr_assert_eq(sb->detect[XM_ROLLOUT].calib_seen, sa->detect[XM_ROLLOUT].calib_seen);
    evdecay_mean(&sb->evd[XM_ROLLOUT], db);
    cr_assert(memcmp(da, db, sizeof da) == 0, "the segment's decay by ts restored");
    /* Both carry on with the same trades. */
    na = 0;
    for (int w = 5; w < 12; w++)
        for (int j = 0; j < 3; j++) {
            evt_add(a, ma, w, j, wa, &na);
            evt_add(b, mb, w, j, wb, &nb);
        }
    cr_assert_eq(na, 14);
    cr_assert_eq(nb, na);
    bool alerted = false;
    for (int k = 0; k < na; k++) {
        cr_assert_eq(wa[k].window, (uint64_t)(53 + k / 2));
        cr_assert_eq(wb[k].window, wa[k].window);
        cr_assert_eq(wb[k].trades, wa[k].trades);
        cr_assert_eq(wb[k].alert, wa[k].alert, "window %" PRIu64, wa[k].window);
        cr_assert_eq(wb[k].verdict.calibrating, wa[k].verdict.calibrating);
        for (int i = 0; i < DETECT_NSTAT; i++)
            cr_assert(wb[k].verdict.cusum[i] == wa[k].verdict.cusum[i],
                      "window %" PRIu64 " CUSUM %d: %g restarted, %g not", wa[k].window, i,
                      wb[k].verdict.cusum[i], wa[k].verdict.cusum[i]);
        cr_assert_eq(wb[k].nmoved, wa[k].nmoved);
        alerted = alerted || wa[k].alert;
    }
    cr_assert(alerted, "the reversed ranking alerts after the restart");
    rmdir_all(dir);
    owners_free(a);
    owners_free(b);
}
