/*  state: durable snapshots. See state.h for the file and its guarantees.  */
#define _GNU_SOURCE
#include "state.h"

#include "global.h"
#include "log.h"
#include "mpr.h"
#include "publish.h"
#include "server.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "XPLSTATE"
#define FORMAT 1u
#define HEADER 28

static uint64_t
s_fnv64(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t k = 0; k < n; k++)
        h = (h ^ p[k]) * 0x100000001b3ull;
    return h;
}

static void
s_put_le(uint8_t *p, uint64_t v, int bytes)
{
    for (int k = 0; k < bytes; k++)
        p[k] = (uint8_t)(v >> (8 * k));
}

static uint64_t
s_get_le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int k = bytes - 1; k >= 0; k--)
        v = v << 8 | p[k];
    return v;
}

/* ---- encoding ----------------------------------------------------------- */

static void
s_doubles(msgpack_packer *pk, const double *x, uint32_t n)
{
    msgpack_pack_array(pk, n);
    for (uint32_t k = 0; k < n; k++)
        msgpack_pack_double(pk, x[k]);
}

static void
s_enc_agg(msgpack_packer *pk, const agg_t *a)
{
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint64(pk, a->count);
    s_doubles(pk, a->mean, a->nfeat);
    s_doubles(pk, a->m2, a->nfeat);
    if (a->decayed)
        s_doubles(pk, a->decayed, a->nfeat);
    else
        msgpack_pack_nil(pk);
}

static void
s_enc_stat(msgpack_packer *pk, const drift_stat_t *st)
{
    msgpack_pack_array(pk, 3);
    enc_bool(pk, st->defined);
    enc_bool(pk, st->alert);
    msgpack_pack_double(pk, st->value);
}

static void
s_enc_drift(msgpack_packer *pk, const drift_t *d)
{
    msgpack_pack_array(pk, 8);
    msgpack_pack_uint32(pk, d->window);
    msgpack_pack_uint32(pk, d->filled);
    msgpack_pack_uint64(pk, d->closed);
    msgpack_pack_uint8(pk, (uint8_t)d->ref_kind);
    enc_bool(pk, d->has_last);
    s_doubles(pk, d->sum, d->nfeat);
    s_doubles(pk, d->last, d->nfeat);
    s_doubles(pk, d->ref, d->nfeat);
}

static void
s_enc_last(msgpack_packer *pk, const glast_t *l)
{
    if (!l->valid) {
        msgpack_pack_nil(pk);
        return;
    }
    msgpack_pack_array(pk, 8);
    msgpack_pack_uint64(pk, l->window);
    msgpack_pack_uint8(pk, (uint8_t)l->ref);
    enc_bool(pk, l->compared);
    s_enc_stat(pk, &l->spearman);
    s_enc_stat(pk, &l->ndcg);
    s_enc_stat(pk, &l->js);
    enc_bool(pk, l->alert);
    msgpack_pack_int64(pk, l->ts);
}

static void
s_enc_epoch_state(msgpack_packer *pk, const gepoch_t *e)
{
    msgpack_pack_array(pk, 6);
    msgpack_pack_uint64(pk, e->count);
    msgpack_pack_uint64(pk, e->untracked);
    msgpack_pack_array(pk, (size_t)__builtin_popcount(e->methods));
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(e->methods & XM_BIT(m)))
            continue;
        msgpack_pack_array(pk, 5);
        enc_str(pk, xm_method_name((xm_method_t)m));
        s_enc_agg(pk, &e->all[m]);
        s_enc_drift(pk, &e->drift[m]);
        if (e->extref[m])
            s_doubles(pk, e->extref[m], e->nf);
        else
            msgpack_pack_nil(pk);
        s_enc_last(pk, &e->last[m]);
    }
    msgpack_pack_array(pk, e->nclasses);
    for (uint32_t c = 0; c < e->nclasses; c++) {
        msgpack_pack_array(pk, 2);
        msgpack_pack_int64(pk, e->classes[c].target);
        msgpack_pack_array(pk, (size_t)__builtin_popcount(e->methods));
        for (int m = 0; m < XM_NMETHODS; m++)
            if (e->methods & XM_BIT(m))
                s_enc_agg(pk, &e->classes[c].agg[m]);
    }
    s_enc_agg(pk, &e->heads.importance);
    s_enc_agg(pk, &e->heads.confidence);
}

static void
s_enc_model(server_t *s, msgpack_packer *pk, model_t *md)
{
    gmodel_t *gm = global_model(s, md);
    msgpack_pack_array(pk, 19);
    enc_strn(pk, md->name, md->name_len);
    enc_bool(pk, md->seq_known);
    msgpack_pack_uint64(pk, md->last_seq);
    msgpack_pack_int64(pk, md->last_ts);
    stats_model_save(pk, md);
    msgpack_pack_uint64(pk, gm ? gm->glob_seq : 0);
    msgpack_pack_uint64(pk, gm ? gm->drift_seq : 0);
    msgpack_pack_uint64(pk, gm ? gm->heads_seq : 0);
    msgpack_pack_uint64(pk, gm ? gm->alerts_total : 0);
    /* alerts, oldest first */
    uint32_t n = gm ? gm->alerts_count : 0, kept = s->global.p.alerts_kept;
    msgpack_pack_array(pk, n);
    for (uint32_t k = 0; k < n; k++) {
        const galert_t *a = &gm->alerts[(gm->alerts_next + kept - n + k) % kept];
        msgpack_pack_array(pk, 8);
        msgpack_pack_int64(pk, a->ts);
        msgpack_pack_uint32(pk, a->epoch);
        msgpack_pack_uint8(pk, a->method);
        msgpack_pack_uint64(pk, a->window);
        msgpack_pack_uint8(pk, (uint8_t)a->ref);
        s_enc_stat(pk, &a->spearman);
        s_enc_stat(pk, &a->ndcg);
        s_enc_stat(pk, &a->js);
    }
    msgpack_pack_uint32(pk, md->cur->epoch);
    /* epochs, oldest first */
    uint32_t ne = 0;
    for (int k = 0; k < MODEL_EPOCHS_KEPT; k++)
        ne += md->schemas[k] != NULL;
    msgpack_pack_array(pk, ne);
    uint32_t cur = md->cur->epoch;
    for (uint32_t ep = cur > MODEL_EPOCHS_KEPT ? cur - MODEL_EPOCHS_KEPT + 1 : 1; ep <= cur; ep++) {
        const schema_t *sc = model_schema(md, ep);
        if (!sc)
            continue;
        msgpack_pack_array(pk, 7);
        msgpack_pack_uint32(pk, sc->epoch);
        msgpack_pack_uint32(pk, sc->shape.L);
        msgpack_pack_uint32(pk, sc->shape.H);
        msgpack_pack_uint32(pk, sc->shape.n);
        msgpack_pack_int32(pk, sc->shape.cls);
        msgpack_pack_array(pk, sc->shape.n);
        for (uint32_t t = 0; t < sc->shape.n; t++)
            enc_str(pk, sc->tokens[t]);
        gepoch_t *e = global_epoch(s, md, ep, false);
        if (e)
            s_enc_epoch_state(pk, e);
        else
            msgpack_pack_nil(pk);
    }
}

/* The state directory, opened once per save or load: every name below is
   resolved inside it (openat, renameat), so nothing planted along the way
   redirects a write. */
static int
s_open_dir(const char *dir)
{
    return open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* Create a fresh temporary file next to the snapshot: a name never used
   before (pid, counter, random bits), O_EXCL so an existing name, a
   symlink included, is never opened, and O_NOFOLLOW besides. */
static int
s_create_tmp(int dfd, char *name, size_t len)
{
    static uint64_t counter;
    for (int tries = 0; tries < 16; tries++) {
        uint64_t r = 0;
        if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
            r = (uint64_t)now_mono_ns() * 0x9e3779b97f4a7c15ull;
        snprintf(name, len, "%s%ld.%" PRIu64 ".%016" PRIx64, STATE_TMP_PREFIX, (long)getpid(),
                 ++counter, r);
        int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    errno = EEXIST;
    return -1;
}

int
state_save(server_t *s, const char *dir)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    enc_str(&pk, "v");
    msgpack_pack_uint8(&pk, 1);
    enc_str(&pk, "written_ns");
    msgpack_pack_int64(&pk, now_wall_ns());
    enc_str(&pk, "half_life");
    msgpack_pack_double(&pk, s->global.p.half_life);
    enc_str(&pk, "models");
    msgpack_pack_array(&pk, s->models.count);
    for (uint32_t k = 0; k < s->models.count; k++)
        s_enc_model(s, &pk, s->models.items[k]);

    uint8_t head[HEADER];
    memcpy(head, MAGIC, 8);
    s_put_le(head + 8, FORMAT, 4);
    s_put_le(head + 12, sb.size, 8);
    s_put_le(head + 20, s_fnv64((const uint8_t *)sb.data, sb.size), 8);

    char tmp[128];
    snprintf(tmp, sizeof tmp, "%s", STATE_TMP_PREFIX);
    const char *step = "open the directory of";
    int err = 0, fd = -1, dfd = s_open_dir(dir);
    if (dfd >= 0) {
        step = "create";
        fd = s_create_tmp(dfd, tmp, sizeof tmp);
    }
    if (fd >= 0) {
        step = "write";
        const uint8_t *parts[2] = {head, (const uint8_t *)sb.data};
        size_t lens[2] = {HEADER, sb.size};
        for (int p = 0; p < 2 && !err; p++) {
            size_t off = 0;
            while (off < lens[p]) {
                ssize_t w = write(fd, parts[p] + off, lens[p] - off);
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0) {
                    err = w < 0 ? errno : ENOSPC;
                    break;
                }
                off += (size_t)w;
            }
        }
        if (!err && fsync(fd) != 0) {
            step = "fsync";
            err = errno;
        }
        if (close(fd) != 0 && !err) {
            step = "close";
            err = errno;
        }
        /* rename replaces the name state.msgpack, never what it points to. */
        if (!err && renameat(dfd, tmp, dfd, STATE_FILE) != 0) {
            step = "rename";
            err = errno;
        }
        if (!err && fsync(dfd) != 0) {
            step = "fsync the directory";
            err = errno;
        }
        if (err)
            unlinkat(dfd, tmp, 0);
    } else {
        err = errno;
    }
    if (dfd >= 0)
        close(dfd);
    msgpack_sbuffer_destroy(&sb);
    if (err) {
        s->stats.snapshot_errors++;
        log_limited(LOGK_SNAPSHOT, LOG_ERR_, "state: cannot %s snapshot %s/%s: %s (the previous "
                    "snapshot is kept)", step, dir, tmp, strerror(err));
        return -1;
    }
    s->stats.snapshots++;
    return 0;
}

/* ---- decoding ----------------------------------------------------------- */

/* A strict reader over our own format: every read names what it expected,
   and the first surprise stops the restore with that name. */
typedef struct {
    mpr_t r;
    const char *what;
} rd_t;

static int
s_fail(rd_t *d, const char *what)
{
    if (!d->what)
        d->what = what;
    return -1;
}

static int
s_obj(rd_t *d, mpr_obj_t *o, mpr_type_t want, const char *what)
{
    if (mpr_next(&d->r, o) || o->type != want)
        return s_fail(d, what);
    return 0;
}

static int
s_array(rd_t *d, uint32_t *count, const char *what)
{
    mpr_obj_t o;
    if (s_obj(d, &o, MPR_ARRAY, what))
        return -1;
    *count = o.v.count;
    return 0;
}

static int
s_array_n(rd_t *d, uint32_t n, const char *what)
{
    uint32_t c;
    if (s_array(d, &c, what) || c != n)
        return s_fail(d, what);
    return 0;
}

static int
s_u64(rd_t *d, uint64_t *v, const char *what)
{
    mpr_obj_t o;
    if (s_obj(d, &o, MPR_UINT, what))
        return -1;
    *v = o.v.u;
    return 0;
}

static int
s_i64(rd_t *d, int64_t *v, const char *what)
{
    mpr_obj_t o;
    if (mpr_next(&d->r, &o))
        return s_fail(d, what);
    if (o.type == MPR_INT)
        *v = o.v.i;
    else if (o.type == MPR_UINT && o.v.u <= INT64_MAX)
        *v = (int64_t)o.v.u;
    else
        return s_fail(d, what);
    return 0;
}

static int
s_bool(rd_t *d, bool *v, const char *what)
{
    mpr_obj_t o;
    if (s_obj(d, &o, MPR_BOOL, what))
        return -1;
    *v = o.v.b;
    return 0;
}

static int
s_f64(rd_t *d, double *v, const char *what)
{
    mpr_obj_t o;
    if (s_obj(d, &o, MPR_FLOAT, what))
        return -1;
    *v = o.v.f;
    return 0;
}

/* nil, or exactly n doubles into v (which may be NULL for nil only). */
static int
s_doubles_in(rd_t *d, double *v, uint32_t n, bool nil_ok, bool *was_nil, const char *what)
{
    mpr_t save = d->r;
    mpr_obj_t o;
    if (mpr_next(&d->r, &o))
        return s_fail(d, what);
    if (o.type == MPR_NIL && nil_ok) {
        if (was_nil)
            *was_nil = true;
        return 0;
    }
    d->r = save;
    if (was_nil)
        *was_nil = false;
    if (!v || s_array_n(d, n, what))
        return s_fail(d, what);
    for (uint32_t k = 0; k < n; k++)
        if (s_f64(d, &v[k], what))
            return -1;
    return 0;
}

static int
s_str(rd_t *d, wire_sv_t *sv, const char *what)
{
    mpr_obj_t o;
    if (s_obj(d, &o, MPR_STR, what))
        return -1;
    sv->ptr = o.v.raw.ptr;
    sv->len = o.v.raw.len;
    return 0;
}

static int
s_key(rd_t *d, const char *key)
{
    mpr_obj_t o;
    if (s_obj(d, &o, MPR_STR, key) || !mpr_str_eq(&o, key))
        return s_fail(d, key);
    return 0;
}

static int
s_dec_agg(rd_t *d, agg_t *a, const char *what)
{
    bool nil;
    if (s_array_n(d, 4, what) || s_u64(d, &a->count, what) ||
        s_doubles_in(d, a->mean, a->nfeat, false, NULL, what) ||
        s_doubles_in(d, a->m2, a->nfeat, false, NULL, what) ||
        s_doubles_in(d, a->decayed, a->nfeat, true, &nil, what))
        return -1;
    for (uint32_t k = 0; k < a->nfeat; k++)
        if (!(a->m2[k] >= 0))
            return s_fail(d, what);
    if (nil && a->decayed)   /* snapshot had no decayed mean: start it at the mean */
        memcpy(a->decayed, a->mean, a->nfeat * sizeof(double));
    return 0;
}

static int
s_dec_stat(rd_t *d, drift_stat_t *st, const char *what)
{
    return s_array_n(d, 3, what) || s_bool(d, &st->defined, what) || s_bool(d, &st->alert, what) ||
                   s_f64(d, &st->value, what)
               ? -1
               : 0;
}

static int
s_dec_drift(rd_t *d, drift_t *dr)
{
    uint64_t window, filled, closed, kind;
    bool has_last;
    if (s_array_n(d, 8, "drift") || s_u64(d, &window, "drift window") ||
        s_u64(d, &filled, "drift filled") || s_u64(d, &closed, "drift closed") ||
        s_u64(d, &kind, "drift reference kind") || s_bool(d, &has_last, "drift has_last") ||
        s_doubles_in(d, dr->sum, dr->nfeat, false, NULL, "drift sums") ||
        s_doubles_in(d, dr->last, dr->nfeat, false, NULL, "drift last") ||
        s_doubles_in(d, dr->ref, dr->nfeat, false, NULL, "drift reference"))
        return -1;
    if (kind > DRIFT_REF_EXTERNAL || filled > window)
        return s_fail(d, "drift state");
    dr->ref_kind = (drift_ref_t)kind;
    dr->has_last = has_last;
    dr->closed = closed;
    if (window == dr->window) {
        dr->filled = (uint32_t)filled;
    } else {
        /* The window size changed: the open window cannot be resumed. */
        dr->filled = 0;
        memset(dr->sum, 0, dr->nfeat * sizeof(double));
    }
    return 0;
}

static int
s_dec_last(rd_t *d, glast_t *l)
{
    mpr_t save = d->r;
    mpr_obj_t o;
    if (mpr_next(&d->r, &o))
        return s_fail(d, "last window");
    if (o.type == MPR_NIL)
        return 0;
    d->r = save;
    uint64_t window, ref;
    if (s_array_n(d, 8, "last window") || s_u64(d, &window, "last window") ||
        s_u64(d, &ref, "last window") || s_bool(d, &l->compared, "last window") ||
        s_dec_stat(d, &l->spearman, "last window") || s_dec_stat(d, &l->ndcg, "last window") ||
        s_dec_stat(d, &l->js, "last window") || s_bool(d, &l->alert, "last window") ||
        s_i64(d, &l->ts, "last window") || ref > DRIFT_REF_EXTERNAL)
        return s_fail(d, "last window");
    l->valid = true;
    l->window = window;
    l->ref = (drift_ref_t)ref;
    return 0;
}

static int
s_dec_epoch_state(server_t *s, rd_t *d, model_t *md, uint32_t epoch)
{
    gepoch_t *e = global_epoch(s, md, epoch, true);
    if (!e)
        return s_fail(d, "epoch state (out of memory)");
    uint32_t nm, nc;
    if (s_array_n(d, 6, "epoch state") || s_u64(d, &e->count, "epoch count") ||
        s_u64(d, &e->untracked, "epoch untracked") || s_array(d, &nm, "methods"))
        return -1;
    unsigned order[XM_NMETHODS];
    for (uint32_t k = 0; k < nm; k++) {
        wire_sv_t name;
        if (k >= XM_NMETHODS || s_array_n(d, 5, "method") || s_str(d, &name, "method name"))
            return s_fail(d, "method");
        int m = xm_method_parse((const char *)name.ptr, name.len);
        if (m < 0 || (e->methods & XM_BIT(m)))
            return s_fail(d, "method name");
        /* Create the method's state as global_add would. */
        if (agg_init(&e->all[m], e->nf, s->global.p.half_life) ||
            drift_init(&e->drift[m], e->nf, s->global.p.window, &s->global.p.drift))
            return s_fail(d, "method state (out of memory)");
        e->methods |= XM_BIT(m);
        order[k] = (unsigned)m;
        if (s_dec_agg(d, &e->all[m], "method aggregate") || s_dec_drift(d, &e->drift[m]))
            return -1;
        bool nil;
        double *ref = malloc(e->nf * sizeof(double) + 1);
        if (!ref || s_doubles_in(d, ref, e->nf, true, &nil, "external reference")) {
            free(ref);
            return -1;
        }
        if (nil)
            free(ref);
        else
            e->extref[m] = ref;
        if (s_dec_last(d, &e->last[m]))
            return -1;
    }
    if (s_array(d, &nc, "target classes") || nc > s->global.p.max_targets)
        return s_fail(d, "target classes");
    if (nc) {
        e->classes = calloc(nc, sizeof *e->classes);
        if (!e->classes)
            return s_fail(d, "target classes (out of memory)");
        e->cap_classes = nc;
    }
    for (uint32_t c = 0; c < nc; c++) {
        gclass_t *gc = &e->classes[c];
        if (s_array_n(d, 2, "target class") || s_i64(d, &gc->target, "target") ||
            s_array_n(d, nm, "target class aggregates"))
            return s_fail(d, "target class");
        e->nclasses++;
        for (uint32_t k = 0; k < nm; k++) {
            unsigned m = order[k];
            if (agg_init(&gc->agg[m], e->nf, s->global.p.half_life))
                return s_fail(d, "target class (out of memory)");
            if (s_dec_agg(d, &gc->agg[m], "target class aggregate"))
                return -1;
        }
    }
    if (s_dec_agg(d, &e->heads.importance, "head importance") ||
        s_dec_agg(d, &e->heads.confidence, "head confidence"))
        return -1;
    return 0;
}

static int
s_model_counter(void *d, uint64_t *v)
{
    return s_u64(d, v, "model counters");
}

static int
s_dec_model(server_t *s, rd_t *d)
{
    wire_sv_t name;
    if (s_array_n(d, 19, "model") || s_str(d, &name, "model name"))
        return -1;
    if (!wire_model_name_ok(name.ptr, name.len) || models_find(&s->models, name.ptr, name.len))
        return s_fail(d, "model name");
    model_t *md = models_add(&s->models, name.ptr, name.len);
    if (!md)
        return s_fail(d, "model (table full: raise ingest.max_models)");
    gmodel_t *gm = global_model(s, md);
    if (!gm)
        return s_fail(d, "model (out of memory)");
    uint64_t *counters[] = {&gm->glob_seq, &gm->drift_seq, &gm->heads_seq, &gm->alerts_total};
    if (s_bool(d, &md->seq_known, "seq_known") || s_u64(d, &md->last_seq, "last_seq") ||
        s_i64(d, &md->last_ts, "last_ts") || stats_model_load(md, s_model_counter, d))
        return -1;
    for (size_t k = 0; k < sizeof counters / sizeof *counters; k++)
        if (s_u64(d, counters[k], "model counters"))
            return -1;
    uint32_t na;
    if (s_array(d, &na, "alerts"))
        return -1;
    uint32_t kept = s->global.p.alerts_kept;
    for (uint32_t k = 0; k < na; k++) {
        galert_t a;
        uint64_t epoch, method, window, ref;
        if (s_array_n(d, 8, "alert") || s_i64(d, &a.ts, "alert") || s_u64(d, &epoch, "alert") ||
            s_u64(d, &method, "alert") || s_u64(d, &window, "alert") || s_u64(d, &ref, "alert") ||
            s_dec_stat(d, &a.spearman, "alert") || s_dec_stat(d, &a.ndcg, "alert") ||
            s_dec_stat(d, &a.js, "alert") || method >= XM_NMETHODS || ref > DRIFT_REF_EXTERNAL)
            return s_fail(d, "alert");
        a.epoch = (uint32_t)epoch;
        a.method = (uint8_t)method;
        a.window = window;
        a.ref = (drift_ref_t)ref;
        if (kept) {   /* keep the newest `kept` when the limit shrank */
            gm->alerts[gm->alerts_next] = a;
            gm->alerts_next = (gm->alerts_next + 1) % kept;
            if (gm->alerts_count < kept)
                gm->alerts_count++;
        }
    }
    uint64_t cur;
    uint32_t ne;
    if (s_u64(d, &cur, "current epoch") || s_array(d, &ne, "epochs"))
        return -1;
    for (uint32_t k = 0; k < ne; k++) {
        uint64_t epoch, L, H, n;
        int64_t cls;
        uint32_t nt;
        if (s_array_n(d, 7, "epoch") || s_u64(d, &epoch, "epoch") || s_u64(d, &L, "L") ||
            s_u64(d, &H, "H") || s_u64(d, &n, "n") || s_i64(d, &cls, "cls") ||
            s_array(d, &nt, "tokens"))
            return -1;
        if (epoch == 0 || epoch > UINT32_MAX || L == 0 || H == 0 || n == 0 || nt != n ||
            n > 65536 || L > 65536 || H > 65536 || cls < -1 || cls >= (int64_t)n)
            return s_fail(d, "epoch schema");
        wire_sv_t *tokens = malloc(n * sizeof *tokens);
        if (!tokens)
            return s_fail(d, "epoch schema (out of memory)");
        for (uint32_t t = 0; t < nt; t++)
            if (s_str(d, &tokens[t], "token")) {
                free(tokens);
                return -1;
            }
        xm_shape_t shape = {(uint32_t)L, (uint32_t)H, (uint32_t)n, (int32_t)cls};
        int rc = model_restore_schema(md, (uint32_t)epoch, &shape, tokens, epoch == cur);
        free(tokens);
        if (rc)
            return s_fail(d, "epoch schema");
        mpr_t save = d->r;
        mpr_obj_t o;
        if (mpr_next(&d->r, &o))
            return s_fail(d, "epoch state");
        if (o.type != MPR_NIL) {
            d->r = save;
            if (s_dec_epoch_state(s, d, md, (uint32_t)epoch))
                return -1;
        }
    }
    if (!md->cur || md->cur->epoch != cur)   /* every model has a current schema */
        return s_fail(d, "current epoch");
    return 0;
}

static int
s_decode(server_t *s, const uint8_t *p, size_t n, const char **why)
{
    rd_t d = {.what = NULL};
    mpr_init(&d.r, p, n);
    mpr_obj_t o;
    uint32_t nm;
    double half_life;
    int64_t written;
    if (s_obj(&d, &o, MPR_MAP, "payload map") || o.v.count != 4 || s_key(&d, "v") ||
        s_obj(&d, &o, MPR_UINT, "v") || o.v.u != 1 || s_key(&d, "written_ns") ||
        s_i64(&d, &written, "written_ns") || s_key(&d, "half_life") ||
        s_f64(&d, &half_life, "half_life") || s_key(&d, "models") || s_array(&d, &nm, "models")) {
        *why = d.what;
        return -1;
    }
    if (half_life != s->global.p.half_life)
        log_notice("state: snapshot used half-life %g, now %g: decayed means continue with the new one",
                   half_life, s->global.p.half_life);
    for (uint32_t k = 0; k < nm; k++)
        if (s_dec_model(s, &d)) {
            *why = d.what;
            return -1;
        }
    if (mpr_left(&d.r)) {
        *why = "bytes after the payload";
        return -1;
    }
    return 0;
}

/* Forget everything a failed restore may have put in place. */
static void
s_reset(server_t *s)
{
    global_params_t p = s->global.p;
    global_destroy(&s->global);
    uint32_t max = s->models.max;
    models_destroy(&s->models);
    models_init(&s->models, max);
    global_init(&s->global, max, &p);
}

/* Remove the temporary files a crash in the middle of a save left behind
   (and anything else planted under their names: unlinkat removes a
   symlink itself, never its target). */
static void
s_remove_stale_tmp(int dfd, const char *dir)
{
    int dup_fd = dup(dfd);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!d) {
        if (dup_fd >= 0)
            close(dup_fd);
        return;
    }
    size_t plen = strlen(STATE_TMP_OLD);
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, STATE_TMP_OLD, plen) == 0 && e->d_type != DT_DIR) {
            if (unlinkat(dfd, e->d_name, 0) == 0)
                log_info("state: removed %s/%s left by an interrupted snapshot", dir, e->d_name);
        }
    closedir(d);
}

/* Move an unusable snapshot aside under a name that does not exist yet:
   state.msgpack.corrupt-<unix time>[.<k>]. Never replaces anything. */
static int
s_quarantine(int dfd, char *aside, size_t len)
{
    long long t = (long long)time(NULL);
    for (int k = 0; k < 100; k++) {
        if (k == 0)
            snprintf(aside, len, "%s.corrupt-%lld", STATE_FILE, t);
        else
            snprintf(aside, len, "%s.corrupt-%lld.%d", STATE_FILE, t, k);
        if (renameat2(dfd, STATE_FILE, dfd, aside, RENAME_NOREPLACE) == 0)
            return 0;
        if (errno == EINVAL || errno == ENOSYS) {
            /* No RENAME_NOREPLACE on this file system: a hard link fails
               on an existing name just the same. */
            if (linkat(dfd, STATE_FILE, dfd, aside, 0) == 0)
                return unlinkat(dfd, STATE_FILE, 0);
        }
        if (errno != EEXIST)
            return -1;
    }
    errno = EEXIST;
    return -1;
}

int
state_load(server_t *s, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, STATE_FILE);
    int dfd = s_open_dir(dir);
    if (dfd < 0) {
        log_err("state: cannot open %s: %s", dir, strerror(errno));
        return -1;
    }
    struct stat dst;
    if (fstat(dfd, &dst) == 0 && (dst.st_mode & (S_IWGRP | S_IWOTH)))
        log_warn("state: %s is writable by other users: they can replace or remove the "
                 "snapshot (make it 0700, owned by the daemon's user)", dir);
    s_remove_stale_tmp(dfd, dir);
    /* Only a regular file named state.msgpack is a snapshot: not what a
       symlink points to (O_NOFOLLOW), not a FIFO that would block the
       start (O_NONBLOCK, then the file type). */
    const char *why = NULL;
    int fd = openat(dfd, STATE_FILE, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            close(dfd);
            log_info("state: no snapshot in %s, starting fresh", dir);
            return 0;
        }
        if (errno != ELOOP) {
            log_err("state: cannot open %s: %s", path, strerror(errno));
            close(dfd);
            return -1;
        }
        why = "a symbolic link, not a snapshot file";
    }
    uint8_t head[HEADER];
    uint8_t *payload = NULL;
    uint64_t len = 0;
    struct stat st;
    FILE *f = NULL;
    if (!why && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)))
        why = "not a regular file";
    else if (!why && !(f = fdopen(fd, "rb")))
        why = "cannot read the file";
    else if (why)
        ;   /* reported below */
    else if (fread(head, 1, HEADER, f) != HEADER)
        why = "truncated header";
    else if (memcmp(head, MAGIC, 8) != 0)
        why = "not an xplaind snapshot (bad magic)";
    else if (s_get_le(head + 8, 4) != FORMAT)
        why = "unknown snapshot format version";
    else if ((len = s_get_le(head + 12, 8)) != (uint64_t)st.st_size - HEADER)
        why = "truncated (payload length does not match the file size)";
    else if (!(payload = malloc(len ? len : 1)) || fread(payload, 1, len, f) != len)
        why = "cannot read the payload";
    else if (s_fnv64(payload, len) != s_get_le(head + 20, 8))
        why = "checksum mismatch";
    if (f)
        fclose(f);
    else if (fd >= 0)
        close(fd);
    if (!why && s_decode(s, payload, len, &why) == 0) {
        free(payload);
        close(dfd);
        uint64_t explained = 0;
        for (uint32_t k = 0; k < s->models.count; k++)
            explained += s->models.items[k]->explained;
        log_notice("state: restored %" PRIu32 " model(s), %" PRIu64 " explained trades, from %s",
                   s->models.count, explained, path);
        return 1;
    }
    free(payload);
    s_reset(s);
    char aside[128];
    if (s_quarantine(dfd, aside, sizeof aside) == 0)
        log_err("state: snapshot %s is unusable (%s); moved it to %s/%s and starting fresh", path,
                why ? why : "corrupt", dir, aside);
    else
        log_err("state: snapshot %s is unusable (%s) and cannot be moved aside (%s); starting fresh",
                path, why ? why : "corrupt", strerror(errno));
    close(dfd);
    return -1;
}
