/*  groups: feature groups of a schema. See groups.h and MATH.md.

    Names are resolved by sorting once and bisecting, so a hostile schema
    with many tokens and groups costs O((n + g) log n), never n * g.  */
#include "groups.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    xm_str_t s;
    int32_t idx;
} s_named_t;

static int
s_strcmp(const xm_str_t *a, const xm_str_t *b)
{
    uint32_t m = a->len < b->len ? a->len : b->len;
    int c = m ? memcmp(a->ptr, b->ptr, m) : 0;
    if (c)
        return c;
    return (a->len > b->len) - (a->len < b->len);
}

static int
s_named_cmp(const void *x, const void *y)
{
    const s_named_t *a = x, *b = y;
    int c = s_strcmp(&a->s, &b->s);
    return c ? c : (a->idx > b->idx) - (a->idx < b->idx);
}

const char *
xm_group_strerror(xm_group_err_t e)
{
    switch (e) {
    case XM_GROUP_OK: return "ok";
    case XM_GROUP_UNKNOWN_TOKEN: return "group_unknown_token";
    case XM_GROUP_TOKEN_TWICE: return "group_token_twice";
    case XM_GROUP_CLS_TOKEN: return "group_cls_token";
    case XM_GROUP_EMPTY: return "group_empty";
    case XM_GROUP_DUP_NAME: return "group_duplicate_feature_name";
    case XM_GROUP_DUP_TOKEN_NAME: return "group_duplicate_token_name";
    case XM_GROUP_EARG: return "group_bad_argument";
    case XM_GROUP_ENOMEM: return "out_of_memory";
    }
    return "unknown";
}

void
xm_groups_free(xm_groups_t *g)
{
    if (!g)
        return;
    free(g->feat_of);
    free(g->group_of);
    free(g->token_of);
    free(g->first);
    free(g->pos);
    memset(g, 0, sizeof *g);
}

static xm_group_err_t
s_alloc(xm_groups_t *g, uint32_t npos, uint32_t nfeat)
{
    memset(g, 0, sizeof *g);
    g->npos = npos;
    g->nfeat = nfeat;
    g->feat_of = malloc((npos ? npos : 1) * sizeof *g->feat_of);
    g->group_of = malloc((nfeat ? nfeat : 1) * sizeof *g->group_of);
    g->token_of = malloc((nfeat ? nfeat : 1) * sizeof *g->token_of);
    g->first = calloc((size_t)nfeat + 1, sizeof *g->first);
    g->pos = malloc((npos ? npos : 1) * sizeof *g->pos);
    if (!g->feat_of || !g->group_of || !g->token_of || !g->first || !g->pos) {
        xm_groups_free(g);
        return XM_GROUP_ENOMEM;
    }
    return XM_GROUP_OK;
}

/* The positions of each feature from feat_of (counting sort). */
static void
s_index(xm_groups_t *g)
{
    memset(g->first, 0, ((size_t)g->nfeat + 1) * sizeof *g->first);
    for (uint32_t k = 0; k < g->npos; k++)
        g->first[g->feat_of[k] + 1]++;
    for (uint32_t f = 0; f < g->nfeat; f++)
        g->first[f + 1] += g->first[f];
    /* fill in ascending k: a cursor per feature, reusing pos as we go */
    for (uint32_t k = 0; k < g->npos; k++)
        g->pos[g->first[g->feat_of[k]]++] = k;
    for (uint32_t f = g->nfeat; f > 0; f--)
        g->first[f] = g->first[f - 1];
    g->first[0] = 0;
}

static xm_group_err_t
s_fail(xm_group_err_t e, xm_group_where_t *where, int32_t group, int32_t token)
{
    if (where) {
        where->group = group;
        where->token = token;
    }
    return e;
}

xm_group_err_t
xm_groups_build(const xm_shape_t *shape, const xm_str_t *tokens, const xm_group_def_t *groups,
                uint32_t ngroups, xm_groups_t *out, xm_group_where_t *where)
{
    memset(out, 0, sizeof *out);
    s_fail(XM_GROUP_OK, where, -1, -1);
    const uint32_t n = shape->n;
    if (n == 0 || n > INT32_MAX || shape->cls < -1 || shape->cls >= (int32_t)n ||
        (shape->cls >= 0 && n < 2) || ngroups > INT32_MAX)
        return XM_GROUP_EARG;
    const uint32_t npos = xm_nfeat(shape);
    s_named_t *byname = malloc(n * sizeof *byname);
    int32_t *grp = malloc(n * sizeof *grp), *gfeat = malloc((ngroups ? ngroups : 1) * sizeof *gfeat);
    s_named_t *fnames = malloc((npos ? npos : 1) * sizeof *fnames);
    xm_group_err_t rc = XM_GROUP_OK;
    if (!byname || !grp || !gfeat || !fnames) {
        rc = XM_GROUP_ENOMEM;
        goto done;
    }
    for (uint32_t j = 0; j < n; j++) {
        byname[j] = (s_named_t){tokens[j], (int32_t)j};
        grp[j] = -1;
    }
    qsort(byname, n, sizeof *byname, s_named_cmp);
    for (uint32_t j = 1; j < n; j++)
        if (s_strcmp(&byname[j - 1].s, &byname[j].s) == 0) {
            rc = s_fail(XM_GROUP_DUP_TOKEN_NAME, where, -1, -1);
            goto done;
        }

    for (uint32_t g = 0; g < ngroups; g++) {
        gfeat[g] = -1;
        if (groups[g].ntokens == 0) {
            rc = s_fail(XM_GROUP_EMPTY, where, (int32_t)g, -1);
            goto done;
        }
        for (uint32_t q = 0; q < groups[g].ntokens; q++) {
            s_named_t key = {groups[g].tokens[q], -1};
            /* bisect for the name (ties on idx cannot occur: names are unique) */
            uint32_t lo = 0, hi = n;
            while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                if (s_strcmp(&byname[mid].s, &key.s) < 0)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            if (lo == n || s_strcmp(&byname[lo].s, &key.s) != 0) {
                rc = s_fail(XM_GROUP_UNKNOWN_TOKEN, where, (int32_t)g, (int32_t)q);
                goto done;
            }
            int32_t j = byname[lo].idx;
            if (j == shape->cls) {
                rc = s_fail(XM_GROUP_CLS_TOKEN, where, (int32_t)g, (int32_t)q);
                goto done;
            }
            if (grp[j] >= 0) {
                rc = s_fail(XM_GROUP_TOKEN_TWICE, where, (int32_t)g, (int32_t)q);
                goto done;
            }
            grp[j] = (int32_t)g;
        }
    }

    /* Features in order of their lowest token. */
    uint32_t nfeat = 0;
    for (uint32_t j = 0; j < n; j++)
        if ((int32_t)j != shape->cls && (grp[j] < 0 || gfeat[grp[j]] < 0)) {
            if (grp[j] >= 0)
                gfeat[grp[j]] = (int32_t)nfeat;
            nfeat++;
        }
    if ((rc = s_alloc(out, npos, nfeat)) != XM_GROUP_OK)
        goto done;
    for (uint32_t g = 0; g < ngroups; g++)
        gfeat[g] = -1;
    for (uint32_t j = 0, k = 0, f = 0; j < n; j++) {
        if ((int32_t)j == shape->cls)
            continue;
        int32_t g = grp[j];
        if (g < 0 || gfeat[g] < 0) {
            if (g >= 0)
                gfeat[g] = (int32_t)f;
            out->group_of[f] = g;
            out->token_of[f] = j;
            fnames[f] = (s_named_t){g >= 0 ? groups[g].name : tokens[j], g};
            f++;
        }
        out->feat_of[k++] = g >= 0 ? (uint32_t)gfeat[g] : f - 1;
    }
    s_index(out);
    qsort(fnames, nfeat, sizeof *fnames, s_named_cmp);
    for (uint32_t f = 1; f < nfeat; f++)
        if (s_strcmp(&fnames[f - 1].s, &fnames[f].s) == 0) {
            int32_t g = fnames[f].idx >= 0 ? fnames[f].idx : fnames[f - 1].idx;
            xm_groups_free(out);
            rc = s_fail(XM_GROUP_DUP_NAME, where, g, -1);
            goto done;
        }
done:
    free(byname);
    free(grp);
    free(gfeat);
    free(fnames);
    return rc;
}

xm_group_err_t
xm_groups_from_map(uint32_t npos, const uint32_t *feat_of, uint32_t nfeat, xm_groups_t *out)
{
    memset(out, 0, sizeof *out);
    if (nfeat > npos || (npos > 0 && nfeat == 0))
        return XM_GROUP_EARG;
    xm_group_err_t rc = s_alloc(out, npos, nfeat);
    if (rc != XM_GROUP_OK)
        return rc;
    for (uint32_t f = 0; f < nfeat; f++)
        out->token_of[f] = UINT32_MAX;
    for (uint32_t k = 0; k < npos; k++) {
        if (feat_of[k] >= nfeat) {
            xm_groups_free(out);
            return XM_GROUP_EARG;
        }
        out->feat_of[k] = feat_of[k];
        if (out->token_of[feat_of[k]] == UINT32_MAX)
            out->token_of[feat_of[k]] = k;      /* readout position: no shape here */
    }
    for (uint32_t f = 0; f < nfeat; f++) {
        out->group_of[f] = -1;
        if (out->token_of[f] == UINT32_MAX) {
            xm_groups_free(out);
            return XM_GROUP_EARG;
        }
    }
    s_index(out);
    return XM_GROUP_OK;
}

void
xm_groups_apply(const xm_groups_t *g, const float *in, uint32_t count, float *out)
{
    for (uint32_t c = 0; c < count; c++) {
        const float *x = in + (size_t)c * g->npos;
        float *y = out + (size_t)c * g->nfeat;
        for (uint32_t f = 0; f < g->nfeat; f++) {
            double sum = 0.0;
            for (uint32_t q = g->first[f]; q < g->first[f + 1]; q++)
                sum += x[g->pos[q]];
            y[f] = (float)sum;
        }
    }
}
