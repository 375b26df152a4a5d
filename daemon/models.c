/*  models: model table, schema epochs, seq tracking. See models.h.  */
#include "models.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
models_init(models_t *m, uint32_t max_models)
{
    m->items = calloc(max_models, sizeof *m->items);
    m->count = 0;
    m->max = max_models;
    return m->items ? 0 : -1;
}

static void
s_schema_free(schema_t *s)
{
    if (!s)
        return;
    for (uint32_t k = 0; k < s->shape.n; k++)
        free(s->tokens[k]);
    free(s->tokens);
    free(s->features);
    if (s->gnames)
        for (uint32_t f = 0; f < s->nf; f++)
            free(s->gnames[f]);
    free(s->gnames);
    free(s->gout);
    xm_groups_free(&s->gmap);
    free(s);
}

void
models_destroy(models_t *m)
{
    for (uint32_t k = 0; k < m->count; k++) {
        for (int e = 0; e < MODEL_EPOCHS_KEPT; e++)
            s_schema_free(m->items[k]->schemas[e]);
        free(m->items[k]);
    }
    free(m->items);
    memset(m, 0, sizeof *m);
}

model_t *
models_find(const models_t *m, const void *name, size_t len)
{
    for (uint32_t k = 0; k < m->count; k++) {
        model_t *md = m->items[k];
        if (md->name_len == len && memcmp(md->name, name, len) == 0)
            return md;
    }
    return NULL;
}

model_t *
models_add(models_t *m, const void *name, size_t len)
{
    if (m->count >= m->max || len > WIRE_MODEL_MAX)
        return NULL;
    model_t *md = calloc(1, sizeof *md);
    if (!md)
        return NULL;
    memcpy(md->name, name, len);
    md->name_len = (uint32_t)len;
    md->index = m->count;
    md->topic_xpl_len = (uint32_t)snprintf(md->topic_xpl, sizeof md->topic_xpl, "xpl/%s", md->name);
    m->items[m->count++] = md;
    return md;
}

void
models_drop_last(models_t *m, model_t *md)
{
    assert(m->count > 0 && m->items[m->count - 1] == md);
    for (int e = 0; e < MODEL_EPOCHS_KEPT; e++)
        s_schema_free(md->schemas[e]);
    free(md);
    m->items[--m->count] = NULL;
}

uint64_t
model_track_seq(model_t *md, uint64_t seq, bool *restart)
{
    uint64_t lost = 0;
    *restart = false;
    if (md->seq_known) {
        if (seq > md->last_seq + 1) {
            /* Messages that arrived but were too broken to read their seq
               fill part of the gap: they were received, not lost. */
            uint64_t gap = seq - md->last_seq - 1;
            lost = gap - (md->unsequenced < gap ? md->unsequenced : gap);
        } else if (seq <= md->last_seq) {
            *restart = true;
        }
    }
    md->unsequenced = 0;
    md->seq_known = true;
    md->last_seq = seq;
    return lost;
}

const schema_t *
model_schema(const model_t *md, uint32_t epoch)
{
    if (epoch == 0)
        return NULL;
    const schema_t *s = md->schemas[(epoch - 1) % MODEL_EPOCHS_KEPT];
    return s && s->epoch == epoch ? s : NULL;
}

static bool
s_tokens_equal(const schema_t *s, const wire_ingest_t *in)
{
    for (uint32_t k = 0; k < s->shape.n; k++)
        if (strlen(s->tokens[k]) != in->tokens[k].len ||
            memcmp(s->tokens[k], in->tokens[k].ptr, in->tokens[k].len) != 0)
            return false;
    return true;
}

/* A copy of a resolved group map. */
static int
s_gmap_copy(xm_groups_t *dst, const xm_groups_t *src)
{
    memset(dst, 0, sizeof *dst);
    dst->npos = src->npos;
    dst->nfeat = src->nfeat;
    size_t np = src->npos ? src->npos : 1, nf = src->nfeat ? src->nfeat : 1;
    dst->feat_of = malloc(np * sizeof *dst->feat_of);
    dst->group_of = malloc(nf * sizeof *dst->group_of);
    dst->token_of = malloc(nf * sizeof *dst->token_of);
    dst->first = malloc((nf + 1) * sizeof *dst->first);
    dst->pos = malloc(np * sizeof *dst->pos);
    if (!dst->feat_of || !dst->group_of || !dst->token_of || !dst->first || !dst->pos) {
        xm_groups_free(dst);
        return -1;
    }
    memcpy(dst->feat_of, src->feat_of, src->npos * sizeof *dst->feat_of);
    memcpy(dst->group_of, src->group_of, src->nfeat * sizeof *dst->group_of);
    memcpy(dst->token_of, src->token_of, src->nfeat * sizeof *dst->token_of);
    memcpy(dst->first, src->first, ((size_t)src->nfeat + 1) * sizeof *dst->first);
    memcpy(dst->pos, src->pos, src->npos * sizeof *dst->pos);
    return 0;
}

/* The features of a schema whose tokens are set: from a resolved group
   map and its definitions (defs, or the names of `prev` when inherited),
   or the tokens without CLS when map is NULL. */
static int
s_schema_features(schema_t *s, const xm_groups_t *map, const xm_group_def_t *defs,
                  const schema_t *prev)
{
    const uint32_t n = s->shape.n;
    if (!map) {
        for (uint32_t k = 0; k < n; k++)
            if ((int32_t)k != s->shape.cls)
                s->features[s->nf++] = s->tokens[k];
        return 0;
    }
    if (s_gmap_copy(&s->gmap, map))
        return -1;
    s->grouped = true;
    s->nf = map->nfeat;
    if (!(s->gnames = calloc(s->nf ? s->nf : 1, sizeof *s->gnames)))
        return -1;
    for (uint32_t f = 0; f < s->nf; f++) {
        int32_t g = map->group_of[f];
        if (g < 0) {
            s->features[f] = s->tokens[map->token_of[f]];
            continue;
        }
        s->gnames[f] = defs ? strndup(defs[g].name.ptr, defs[g].name.len) : strdup(prev->gnames[f]);
        if (!s->gnames[f])
            return -1;
        s->features[f] = s->gnames[f];
        s->ngroups++;
    }
    return 0;
}

/* Whether the message's groups (it has tokens and "groups") are those of
   the schema: same features, same names, same tokens in each. */
static bool
s_groups_equal(const schema_t *s, const wire_ingest_t *in)
{
    if (!in->gmap)
        return !s->grouped;
    const xm_groups_t *m = in->gmap;
    if (!s->grouped || m->nfeat != s->nf || m->npos != s->gmap.npos ||
        memcmp(m->feat_of, s->gmap.feat_of, m->npos * sizeof *m->feat_of) != 0)
        return false;
    for (uint32_t f = 0; f < s->nf; f++) {
        int32_t g = m->group_of[f];
        if ((g < 0) != (s->gnames[f] == NULL))
            return false;
        if (g >= 0 && (strlen(s->gnames[f]) != in->groups[g].name.len ||
                       memcmp(s->gnames[f], in->groups[g].name.ptr, in->groups[g].name.len) != 0))
            return false;
    }
    return true;
}

/* A new schema from the message, tokens taken from the message or, when
   it sent none (same n), from the previous schema; its groups are the
   message's when it has "groups", else the previous schema's when the
   tokens and CLS are unchanged (`keep_groups`), else none. */
static schema_t *
s_schema_new(const schema_t *prev, const wire_ingest_t *in, int32_t cls, bool keep_groups)
{
    schema_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->shape = in->shape;
    s->shape.cls = cls;
    uint32_t n = s->shape.n;
    s->tokens = calloc(n, sizeof *s->tokens);
    s->features = calloc(n, sizeof *s->features);
    if (!s->tokens || !s->features) {
        free(s->tokens);
        free(s->features);
        free(s);
        return NULL;
    }
    for (uint32_t k = 0; k < n; k++) {
        s->tokens[k] = in->tokens ? strndup((const char *)in->tokens[k].ptr, in->tokens[k].len)
                                  : strdup(prev->tokens[k]);
        if (!s->tokens[k]) {
            s_schema_free(s);
            return NULL;
        }
    }
    const xm_groups_t *map = in->has_groups ? in->gmap
                             : keep_groups && prev && prev->grouped ? &prev->gmap : NULL;
    if (s_schema_features(s, map, in->has_groups ? in->groups : NULL, prev)) {
        s_schema_free(s);
        return NULL;
    }
    return s;
}

/* Take one schema change from the model's budget; false when none is left. */
static bool
s_epoch_budget_take(model_t *md, uint32_t per_min, int64_t now_ns)
{
    if (per_min == 0)
        return true;
    if (md->epoch_budget_ns == 0) {
        md->epoch_budget = per_min;
    } else if (now_ns > md->epoch_budget_ns) {
        md->epoch_budget += (double)(now_ns - md->epoch_budget_ns) * per_min / 60e9;
        if (md->epoch_budget > per_min)
            md->epoch_budget = per_min;
    }
    md->epoch_budget_ns = now_ns > 0 ? now_ns : 1;
    if (md->epoch_budget < 1.0)
        return false;
    md->epoch_budget -= 1.0;
    return true;
}

xr_reason_t
model_apply_schema(model_t *md, const wire_ingest_t *in, bool *new_epoch, char *why, size_t wlen)
{
    return model_apply_schema_limited(md, in, 0, 0, new_epoch, why, wlen);
}

xr_reason_t
model_apply_schema_limited(model_t *md, const wire_ingest_t *in, uint32_t per_min, int64_t now_ns,
                           bool *new_epoch, char *why, size_t wlen)
{
    const schema_t *cur = md->cur;
    *new_epoch = false;
    if (!cur && (!in->has_cls || !in->tokens)) {
        snprintf(why, wlen, "first message of model '%s' must carry 'cls' and 'tokens'", md->name);
        return XR_NO_SCHEMA;
    }
    int32_t cls = in->has_cls ? in->shape.cls : cur->shape.cls;
    if (cur && in->shape.n != cur->shape.n && !in->tokens) {
        snprintf(why, wlen, "n changed from %" PRIu32 " to %" PRIu32 " without 'tokens'",
                 cur->shape.n, in->shape.n);
        return XR_NO_SCHEMA;
    }
    if (cur && (cls >= (int32_t)in->shape.n || (cls >= 0 && in->shape.n < 2))) {
        snprintf(why, wlen, "known cls=%" PRId32 " is out of range for n=%" PRIu32, cls, in->shape.n);
        return XR_NO_SCHEMA;
    }
    /* Groups belong to the tokens: a message without "groups" keeps the
       current ones while its tokens and CLS are those they were resolved
       against. */
    const bool same_tokens = cur && in->shape.n == cur->shape.n && cls == cur->shape.cls &&
                             (!in->tokens || s_tokens_equal(cur, in));
    if (same_tokens && in->shape.L == cur->shape.L && in->shape.H == cur->shape.H &&
        (!in->has_groups || s_groups_equal(cur, in)))
        return XR_OK;
    if (!s_epoch_budget_take(md, per_min, now_ns)) {
        snprintf(why, wlen, "more than %" PRIu32 " schema epochs a minute (epoch %" PRIu32
                 " kept; L=%" PRIu32 " H=%" PRIu32 " n=%" PRIu32 " refused)", per_min,
                 cur ? cur->epoch : 0, in->shape.L, in->shape.H, in->shape.n);
        return XR_SCHEMA_RATE;
    }

    schema_t *s = s_schema_new(cur, in, cls, same_tokens);
    if (!s) {
        snprintf(why, wlen, "out of memory for the schema");
        return XR_INTERNAL;
    }
    s->epoch = cur ? cur->epoch + 1 : 1;
    schema_t **slot = &md->schemas[(s->epoch - 1) % MODEL_EPOCHS_KEPT];
    s_schema_free(*slot);
    *slot = s;
    md->cur = s;
    *new_epoch = true;
    return XR_OK;
}

int
model_restore_schema(model_t *md, uint32_t epoch, const xm_shape_t *shape, const wire_sv_t *tokens,
                     bool current)
{
    return model_restore_schema_groups(md, epoch, shape, tokens, NULL, 0, current);
}

int
model_restore_schema_groups(model_t *md, uint32_t epoch, const xm_shape_t *shape,
                            const wire_sv_t *tokens, const xm_group_def_t *groups, uint32_t ngroups,
                            bool current)
{
    if (epoch == 0 || shape->n == 0 || shape->cls < -1 || shape->cls >= (int32_t)shape->n)
        return -1;
    wire_ingest_t in;
    memset(&in, 0, sizeof in);
    in.shape = *shape;
    in.has_cls = true;
    in.tokens = tokens;
    xm_groups_t map = {0};
    if (ngroups) {
        xm_str_t *names = malloc(shape->n * sizeof *names);
        if (!names)
            return -1;
        for (uint32_t k = 0; k < shape->n; k++)
            names[k] = (xm_str_t){(const char *)tokens[k].ptr, tokens[k].len};
        xm_group_err_t ge = xm_groups_build(shape, names, groups, ngroups, &map, NULL);
        free(names);
        if (ge != XM_GROUP_OK)
            return -1;
        in.has_groups = true;
        in.groups = groups;
        in.ngroups = ngroups;
        in.gmap = &map;
    }
    schema_t *s = s_schema_new(NULL, &in, shape->cls, false);
    xm_groups_free(&map);
    if (!s)
        return -1;
    s->epoch = epoch;
    schema_t **slot = &md->schemas[(epoch - 1) % MODEL_EPOCHS_KEPT];
    if (*slot == md->cur)
        md->cur = NULL;
    s_schema_free(*slot);
    *slot = s;
    if (current)
        md->cur = s;
    return 0;
}

/* An epoch's groups, {name: [token, ...]}, as definitions whose names
   point into the snapshot (freed by the caller: *defs and *toks). */
int
model_groups_read(snap_rd_t *d, uint32_t n, xm_group_def_t **defs, xm_str_t **toks, uint32_t *count)
{
    uint32_t ng, used = 0;
    if (snap_get_map(d, &ng, "groups"))
        return -1;
    if (ng > n)
        return snap_fail(d, "groups (more groups than tokens)");
    *defs = calloc(ng ? ng : 1, sizeof **defs);
    *toks = calloc(n, sizeof **toks);
    if (!*defs || !*toks)
        return snap_fail(d, "groups (out of memory)");
    for (uint32_t g = 0; g < ng; g++) {
        const uint8_t *p;
        uint32_t len, nt;
        if (snap_get_str(d, &p, &len, "group name") || snap_get_array(d, &nt, "group tokens"))
            return -1;
        if (nt > n - used)
            return snap_fail(d, "groups (more tokens than the schema has)");
        (*defs)[g] = (xm_group_def_t){{(const char *)p, len}, *toks + used, nt};
        for (uint32_t q = 0; q < nt; q++, used++) {
            if (snap_get_str(d, &p, &len, "group token"))
                return -1;
            (*toks)[used] = (xm_str_t){(const char *)p, len};
        }
    }
    *count = ng;
    return 0;
}
