/*  xpl_doc: a msgpack body as a flat tree of mpr objects, so decoders can
    look keys up in any order. Parsing is two passes over core/mpr (count,
    then fill): every length has been checked against the bytes present
    before a node is believed, and the node array is sized exactly, so a
    hostile message can cost at most one node per byte it really has.  */
#include "xpl_private.h"

#include <stdlib.h>
#include <string.h>

#define S_MAX_DEPTH 32

/* Walk the document once. With `nodes` NULL only count (and validate);
   otherwise fill nodes[0..count) and their spans. */
static int
s_walk(const void *buf, size_t len, xnode_t *nodes, uint32_t *count, const char *what)
{
    mpr_t r;
    mpr_init(&r, buf, len);
    uint64_t pending[S_MAX_DEPTH + 1];  /* children still to read per level */
    uint32_t open[S_MAX_DEPTH + 1];     /* node index of each open container */
    int depth = 0;
    uint32_t k = 0;
    pending[0] = 1;
    for (;;) {
        while (pending[depth] == 0) {
            if (depth == 0)
                goto done;
            if (nodes)
                nodes[open[depth]].span = k - open[depth];
            depth--;
        }
        pending[depth]--;
        mpr_obj_t o;
        mpr_err_t rc = mpr_next(&r, &o);
        if (rc)
            return xpl_fail(XPL_EPROTO, "%s: %s msgpack", what,
                            rc == MPR_EINVAL ? "invalid" : "truncated");
        if (k == UINT32_MAX)        /* a body over 4 GB of one-byte objects */
            return xpl_fail(XPL_EPROTO, "%s: msgpack of too many objects", what);
        if (nodes) {
            nodes[k].o = o;
            nodes[k].span = 1;
        }
        if (o.type == MPR_ARRAY || o.type == MPR_MAP) {
            uint64_t items = o.type == MPR_MAP ? 2ull * o.v.count : o.v.count;
            if (items > 0) {
                if (depth == S_MAX_DEPTH)
                    return xpl_fail(XPL_EPROTO, "%s: msgpack nested deeper than %d", what,
                                    S_MAX_DEPTH);
                depth++;
                pending[depth] = items;
                open[depth] = k;
            }
        }
        k++;
    }
done:
    if (mpr_left(&r) != 0)
        return xpl_fail(XPL_EPROTO, "%s: %zu bytes after the msgpack body", what, mpr_left(&r));
    *count = k;
    return 0;
}

int
xdoc_parse(xdoc_t *d, const void *buf, size_t len, const char *what)
{
    d->nodes = NULL;
    d->count = 0;
    uint32_t count;
    if (s_walk(buf, len, NULL, &count, what))
        return -1;
    d->nodes = malloc((size_t)count * sizeof *d->nodes);
    if (!d->nodes)
        return xpl_fail(XPL_ENOMEM, "%s: out of memory", what);
    s_walk(buf, len, d->nodes, &d->count, what);
    return 0;
}

void
xdoc_free(xdoc_t *d)
{
    free(d->nodes);
    d->nodes = NULL;
    d->count = 0;
}

const xnode_t *
xn_get(const xnode_t *map, const char *key)
{
    if (!map || map->o.type != MPR_MAP)
        return NULL;
    const xnode_t *k = xn_first(map);
    for (uint32_t i = 0; i < map->o.v.count; i++) {
        const xnode_t *v = xn_next(k);
        if (k->o.type == MPR_STR && mpr_str_eq(&k->o, key))
            return v;
        k = xn_next(v);
    }
    return NULL;
}

bool
xn_is(const xnode_t *n, mpr_type_t t)
{
    return n && n->o.type == t;
}

int
xn_uint(const xnode_t *n, uint64_t *out)
{
    if (!xn_is(n, MPR_UINT))
        return -1;
    *out = n->o.v.u;
    return 0;
}

int
xn_int(const xnode_t *n, int64_t *out)
{
    if (xn_is(n, MPR_INT)) {
        *out = n->o.v.i;
        return 0;
    }
    if (xn_is(n, MPR_UINT) && n->o.v.u <= (uint64_t)INT64_MAX) {
        *out = (int64_t)n->o.v.u;
        return 0;
    }
    return -1;
}

int
xn_num(const xnode_t *n, double *out)
{
    if (!n)
        return -1;
    switch (n->o.type) {
    case MPR_FLOAT: *out = n->o.v.f; return 0;
    case MPR_UINT: *out = (double)n->o.v.u; return 0;
    case MPR_INT: *out = (double)n->o.v.i; return 0;
    default: return -1;
    }
}

int
xn_bool(const xnode_t *n, bool *out)
{
    if (!xn_is(n, MPR_BOOL))
        return -1;
    *out = n->o.v.b;
    return 0;
}
