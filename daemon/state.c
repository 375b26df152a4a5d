/*  state: durable snapshots. See state.h for the file and its guarantees.  */
#define _GNU_SOURCE
#include "state.h"

#include "global.h"
#include "log.h"
#include "mpr.h"
#include "publish.h"
#include "snap.h"

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
#define FORMAT SNAP_V2     /* written; SNAP_V1 files still load */
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

/* ---- the model record ---------------------------------------------------
   {name, seq_known, last_seq, last_ts, counters, global, epoch, epochs:
   [{epoch, L, H, n, cls, tokens, [groups,] state}]}; groups (a grouped
   schema only) maps each group's name to its tokens' names; the global state's parts are
   written and read by global.c (gmodel_*, gepoch_*). The first format
   (SNAP_V1) was one 19-item array: name, seq_known, last_seq, last_ts,
   the eight counters, the global seqs and alerts, epoch, epochs. */

/* The per-model counters: stats.c's table, by name (the first format:
   eight uints in table order). */
static void
s_counters_save(msgpack_packer *pk, const model_t *md)
{
    stats_model_save_keyed(pk, md);
}

static int
s_counter_get(void *d, uint64_t *v)
{
    return snap_get_u64(d, v, "model counters");
}

static int
s_counters_load(snap_rd_t *d, model_t *md, unsigned ver)
{
    if (ver == SNAP_V1)
        return stats_model_load(md, s_counter_get, d);
    uint32_t n;
    if (snap_get_map(d, &n, "model counters"))
        return -1;
    for (uint32_t k = 0; k < n; k++) {
        mpr_obj_t key;
        if (snap_get_key(d, &key, "model counter"))
            return -1;
        uint64_t *v = stats_model_counter_ptr(md, key.v.raw.ptr, key.v.raw.len);
        if (v ? snap_get_u64(d, v, "model counter")
              : snap_skip(d, "model counter"))   /* a counter this daemon does not keep */
            return -1;
    }
    return 0;   /* a counter the snapshot lacks starts at 0 */
}

static void
s_schema_save(global_t *g, msgpack_packer *pk, model_t *md, const schema_t *sc)
{
    msgpack_pack_map(pk, 7 + sc->grouped);
    snap_put_str(pk, "epoch");
    msgpack_pack_uint32(pk, sc->epoch);
    snap_put_str(pk, "L");
    msgpack_pack_uint32(pk, sc->shape.L);
    snap_put_str(pk, "H");
    msgpack_pack_uint32(pk, sc->shape.H);
    snap_put_str(pk, "n");
    msgpack_pack_uint32(pk, sc->shape.n);
    snap_put_str(pk, "cls");
    msgpack_pack_int32(pk, sc->shape.cls);
    snap_put_str(pk, "tokens");
    msgpack_pack_array(pk, sc->shape.n);
    for (uint32_t t = 0; t < sc->shape.n; t++)
        enc_str(pk, sc->tokens[t]);
    if (sc->grouped) {
        snap_put_str(pk, "groups");
        enc_groups(pk, sc);
    }
    snap_put_str(pk, "state");
    gepoch_t *e = global_epoch(g, md, sc->epoch, false);
    if (e)
        gepoch_save(pk, e);
    else
        msgpack_pack_nil(pk);
}

static void
s_model_save(global_t *g, msgpack_packer *pk, model_t *md)
{
    gmodel_t *gm = global_model(g, md);
    gmodel_t none = {0};
    msgpack_pack_map(pk, 8);
    snap_put_str(pk, "name");
    enc_strn(pk, md->name, md->name_len);
    snap_put_str(pk, "seq_known");
    enc_bool(pk, md->seq_known);
    snap_put_str(pk, "last_seq");
    msgpack_pack_uint64(pk, md->last_seq);
    snap_put_str(pk, "last_ts");
    msgpack_pack_int64(pk, md->last_ts);
    snap_put_str(pk, "counters");
    s_counters_save(pk, md);
    snap_put_str(pk, "global");
    gmodel_save(pk, g, gm ? gm : &none);
    snap_put_str(pk, "epoch");
    msgpack_pack_uint32(pk, md->cur->epoch);
    /* epochs, oldest first */
    uint32_t ne = 0;
    for (int k = 0; k < MODEL_EPOCHS_KEPT; k++)
        ne += md->schemas[k] != NULL;
    snap_put_str(pk, "epochs");
    msgpack_pack_array(pk, ne);
    uint32_t cur = md->cur->epoch;
    for (uint32_t ep = cur > MODEL_EPOCHS_KEPT ? cur - MODEL_EPOCHS_KEPT + 1 : 1; ep <= cur; ep++) {
        const schema_t *sc = model_schema(md, ep);
        if (sc)
            s_schema_save(g, pk, md, sc);
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
state_save(models_t *models, global_t *global, stats_t *stats, const char *dir)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    enc_str(&pk, "v");
    msgpack_pack_uint8(&pk, FORMAT);
    enc_str(&pk, "written_ns");
    msgpack_pack_int64(&pk, now_wall_ns());
    enc_str(&pk, "half_life");
    msgpack_pack_double(&pk, global->p.half_life);
    enc_str(&pk, "models");
    msgpack_pack_array(&pk, models->count);
    for (uint32_t k = 0; k < models->count; k++)
        s_model_save(global, &pk, models->items[k]);

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
        stats->snapshot_errors++;
        log_limited(LOGK_SNAPSHOT, LOG_ERR_, "state: cannot %s snapshot %s/%s: %s (the previous "
                    "snapshot is kept)", step, dir, tmp, strerror(err));
        return -1;
    }
    stats->snapshots++;
    return 0;
}

/* ---- decoding -----------------------------------------------------------
   Strict: the first surprise stops the restore, named (snap.h). */

/* One epoch: its schema goes to models.c, its state to global.c. */
static int
s_schema_load(global_t *g, snap_rd_t *d, model_t *md, uint64_t cur, unsigned ver)
{
    uint64_t epoch = 0, L = 0, H = 0, n = 0;
    int64_t cls = 0;
    uint32_t nt = 0;
    mpr_t tokens_at = {0}, state_at = {0}, groups_at = {0};
    bool has_groups = false;
    if (ver == SNAP_V1) {
        if (snap_get_array_n(d, 7, "epoch") || snap_get_u64(d, &epoch, "epoch") ||
            snap_get_u64(d, &L, "L") || snap_get_u64(d, &H, "H") || snap_get_u64(d, &n, "n") ||
            snap_get_i64(d, &cls, "cls"))
            return -1;
        tokens_at = d->r;
        if (snap_skip(d, "tokens"))
            return -1;
        state_at = d->r;
        if (snap_skip(d, "epoch state"))
            return -1;
    } else {
        enum { EPOCH = 1, FL = 2, FH = 4, FN = 8, CLS = 16, TOKENS = 32, STATE = 64, GROUPS = 128 };
        uint32_t pairs;
        unsigned seen = 0;
        if (snap_get_map(d, &pairs, "epoch"))
            return -1;
        for (uint32_t k = 0; k < pairs; k++) {
            mpr_obj_t key;
            int rc;
            if (snap_get_key(d, &key, "epoch field"))
                return -1;
            if (mpr_str_eq(&key, "epoch"))
                rc = snap_field(d, &seen, EPOCH, "epoch") || snap_get_u64(d, &epoch, "epoch");
            else if (mpr_str_eq(&key, "L"))
                rc = snap_field(d, &seen, FL, "L") || snap_get_u64(d, &L, "L");
            else if (mpr_str_eq(&key, "H"))
                rc = snap_field(d, &seen, FH, "H") || snap_get_u64(d, &H, "H");
            else if (mpr_str_eq(&key, "n"))
                rc = snap_field(d, &seen, FN, "n") || snap_get_u64(d, &n, "n");
            else if (mpr_str_eq(&key, "cls"))
                rc = snap_field(d, &seen, CLS, "cls") || snap_get_i64(d, &cls, "cls");
            else if (mpr_str_eq(&key, "tokens"))
                rc = snap_field(d, &seen, TOKENS, "tokens") || (tokens_at = d->r, 0) ||
                     snap_skip(d, "tokens");
            else if (mpr_str_eq(&key, "state"))
                rc = snap_field(d, &seen, STATE, "epoch state") || (state_at = d->r, 0) ||
                     snap_skip(d, "epoch state");
            else if (mpr_str_eq(&key, "groups"))
                rc = snap_field(d, &seen, GROUPS, "groups") || (groups_at = d->r, 0) ||
                     (has_groups = true, 0) || snap_skip(d, "groups");
            else
                rc = snap_skip(d, "epoch field");
            if (rc)
                return -1;
        }
        if (snap_fields_all(d, seen & 127u, 127u, "epoch (a field is missing)"))
            return -1;
    }
    mpr_t after = d->r;
    d->r = tokens_at;
    if (snap_get_array(d, &nt, "tokens"))
        return -1;
    if (epoch == 0 || epoch > UINT32_MAX || L == 0 || H == 0 || n == 0 || nt != n ||
        n > 65536 || L > 65536 || H > 65536 || cls < -1 || cls >= (int64_t)n)
        return snap_fail(d, "epoch schema");
    wire_sv_t *tokens = malloc(n * sizeof *tokens);
    if (!tokens)
        return snap_fail(d, "epoch schema (out of memory)");
    for (uint32_t t = 0; t < nt; t++)
        if (snap_get_str(d, &tokens[t].ptr, &tokens[t].len, "token")) {
            free(tokens);
            return -1;
        }
    xm_shape_t shape = {(uint32_t)L, (uint32_t)H, (uint32_t)n, (int32_t)cls};
    xm_group_def_t *defs = NULL;
    xm_str_t *gtoks = NULL;
    uint32_t ngroups = 0;
    if (has_groups) {
        d->r = groups_at;
        if (model_groups_read(d, (uint32_t)n, &defs, &gtoks, &ngroups)) {
            free(tokens);
            free(defs);
            free(gtoks);
            return -1;
        }
    }
    int rc = model_restore_schema_groups(md, (uint32_t)epoch, &shape, tokens, defs, ngroups,
                                         epoch == cur);
    free(tokens);
    free(defs);
    free(gtoks);
    if (rc)
        return snap_fail(d, has_groups ? "epoch schema (its groups do not resolve)" : "epoch schema");
    d->r = state_at;
    if (!snap_get_nil(d)) {
        gepoch_t *e = global_epoch(g, md, (uint32_t)epoch, true);
        if (!e)
            return snap_fail(d, "epoch state (out of memory)");
        if (gepoch_load(d, g, e, ver))
            return -1;
    }
    d->r = after;
    return 0;
}

static int
s_epochs_load(global_t *g, snap_rd_t *d, model_t *md, uint64_t cur, unsigned ver)
{
    uint32_t ne;
    if (snap_get_array(d, &ne, "epochs"))
        return -1;
    for (uint32_t k = 0; k < ne; k++)
        if (s_schema_load(g, d, md, cur, ver))
            return -1;
    if (!md->cur || md->cur->epoch != cur)   /* every model has a current schema */
        return snap_fail(d, "current epoch");
    return 0;
}

/* The name, and a fresh model and global model under it. */
static model_t *
s_model_new(models_t *models, global_t *g, snap_rd_t *d, gmodel_t **gm)
{
    wire_sv_t name;
    if (snap_get_str(d, &name.ptr, &name.len, "model name"))
        return NULL;
    if (!wire_model_name_ok(name.ptr, name.len) || models_find(models, name.ptr, name.len)) {
        snap_fail(d, "model name");
        return NULL;
    }
    model_t *md = models_add(models, name.ptr, name.len);
    if (!md) {
        snap_fail(d, "model (table full: raise ingest.max_models)");
        return NULL;
    }
    if (!(*gm = global_model(g, md))) {
        snap_fail(d, "model (out of memory)");
        return NULL;
    }
    return md;
}

static int
s_model_load_v1(models_t *models, global_t *g, snap_rd_t *d)
{
    gmodel_t *gm;
    model_t *md;
    uint64_t cur;
    if (snap_get_array_n(d, 19, "model") || !(md = s_model_new(models, g, d, &gm)) ||
        snap_get_bool(d, &md->seq_known, "seq_known") ||
        snap_get_u64(d, &md->last_seq, "last_seq") || snap_get_i64(d, &md->last_ts, "last_ts") ||
        s_counters_load(d, md, SNAP_V1) || gmodel_load(d, g, gm, SNAP_V1) ||
        snap_get_u64(d, &cur, "current epoch"))
        return -1;
    return s_epochs_load(g, d, md, cur, SNAP_V1);
}

/* Keyed: the name first (everything else hangs off the model), the rest
   in any order once it exists. */
static int
s_model_load(models_t *models, global_t *g, snap_rd_t *d, unsigned ver)
{
    if (ver == SNAP_V1)
        return s_model_load_v1(models, g, d);
    enum { F_NAME, F_SEQ_KNOWN, F_LAST_SEQ, F_LAST_TS, F_COUNTERS, F_GLOBAL, F_EPOCH, F_EPOCHS, NF };
    static const char *const names[NF] = {"name", "seq_known", "last_seq", "last_ts",
                                          "counters", "global", "epoch", "epochs"};
    mpr_t at[NF];
    unsigned seen = 0;
    uint32_t pairs;
    if (snap_get_map(d, &pairs, "model"))
        return -1;
    for (uint32_t k = 0; k < pairs; k++) {
        mpr_obj_t key;
        if (snap_get_key(d, &key, "model field"))
            return -1;
        int f = 0;
        while (f < NF && !mpr_str_eq(&key, names[f]))
            f++;
        if (f < NF && snap_field(d, &seen, 1u << f, names[f]))
            return -1;
        if (f < NF)
            at[f] = d->r;
        if (snap_skip(d, "model field"))
            return -1;
    }
    if (snap_fields_all(d, seen, (1u << NF) - 1, "model (a field is missing)"))
        return -1;
    mpr_t after = d->r;
    gmodel_t *gm;
    model_t *md;
    uint64_t cur;
    d->r = at[F_NAME];
    if (!(md = s_model_new(models, g, d, &gm)))
        return -1;
    d->r = at[F_SEQ_KNOWN];
    if (snap_get_bool(d, &md->seq_known, "seq_known"))
        return -1;
    d->r = at[F_LAST_SEQ];
    if (snap_get_u64(d, &md->last_seq, "last_seq"))
        return -1;
    d->r = at[F_LAST_TS];
    if (snap_get_i64(d, &md->last_ts, "last_ts"))
        return -1;
    d->r = at[F_COUNTERS];
    if (s_counters_load(d, md, ver))
        return -1;
    d->r = at[F_GLOBAL];
    if (gmodel_load(d, g, gm, ver))
        return -1;
    d->r = at[F_EPOCH];
    if (snap_get_u64(d, &cur, "current epoch"))
        return -1;
    d->r = at[F_EPOCHS];
    if (s_epochs_load(g, d, md, cur, ver))
        return -1;
    d->r = after;
    return 0;
}

/* {v, written_ns, half_life, models}; v is the header's format. */
static int
s_decode(models_t *models, global_t *g, const uint8_t *p, size_t n, unsigned ver, const char **why)
{
    snap_rd_t d;
    snap_rd_init(&d, p, n);
    uint32_t pairs, nm = 0;
    unsigned seen = 0;
    uint64_t v = 0;
    double half_life = 0;
    int64_t written;
    mpr_t models_at = {0};
    enum { V = 1, WRITTEN = 2, HALF_LIFE = 4, MODELS = 8 };
    if (snap_get_map(&d, &pairs, "payload map"))
        goto fail;
    for (uint32_t k = 0; k < pairs; k++) {
        mpr_obj_t key;
        int rc;
        if (snap_get_key(&d, &key, "payload field"))
            goto fail;
        if (mpr_str_eq(&key, "v"))
            rc = snap_field(&d, &seen, V, "v") || snap_get_u64(&d, &v, "v") ||
                 (v != ver && snap_fail(&d, "v (not the header's format version)"));
        else if (mpr_str_eq(&key, "written_ns"))
            rc = snap_field(&d, &seen, WRITTEN, "written_ns") ||
                 snap_get_i64(&d, &written, "written_ns");
        else if (mpr_str_eq(&key, "half_life"))
            rc = snap_field(&d, &seen, HALF_LIFE, "half_life") ||
                 snap_get_f64(&d, &half_life, "half_life");
        else if (mpr_str_eq(&key, "models"))
            rc = snap_field(&d, &seen, MODELS, "models") || (models_at = d.r, 0) ||
                 snap_skip(&d, "models");
        else
            rc = snap_skip(&d, "payload field");
        if (rc)
            goto fail;
    }
    if (snap_fields_all(&d, seen, 15u, "payload map (a field is missing)"))
        goto fail;
    if (mpr_left(&d.r)) {
        *why = "bytes after the payload";
        return -1;
    }
    if (half_life != g->p.half_life)
        log_notice("state: snapshot used half-life %g, now %g: decayed means continue with the new one",
                   half_life, g->p.half_life);
    d.r = models_at;
    if (snap_get_array(&d, &nm, "models"))
        goto fail;
    for (uint32_t k = 0; k < nm; k++)
        if (s_model_load(models, g, &d, ver))
            goto fail;
    return 0;
fail:
    *why = d.why;
    return -1;
}

/* Forget everything a failed restore may have put in place. */
static void
s_reset(models_t *models, global_t *g)
{
    global_params_t p = g->p;
    global_destroy(g);
    uint32_t max = models->max;
    models_destroy(models);
    models_init(models, max);
    global_init(g, max, &p);
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
state_load(models_t *models, global_t *global, const char *dir)
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
    unsigned ver = 0;
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
    else if ((ver = (unsigned)s_get_le(head + 8, 4)) != SNAP_V1 && ver != SNAP_V2)
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
    if (!why && s_decode(models, global, payload, len, ver, &why) == 0) {
        free(payload);
        close(dfd);
        uint64_t explained = 0;
        for (uint32_t k = 0; k < models->count; k++)
            explained += models->items[k]->explained;
        log_notice("state: restored %" PRIu32 " model(s), %" PRIu64 " explained trades, from %s",
                   models->count, explained, path);
        return 1;
    }
    free(payload);
    s_reset(models, global);
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
