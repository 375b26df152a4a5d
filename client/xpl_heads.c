/*  xpl_heads: a model's head statistics (heads/ messages).  */
#include "xpl_decode.h"

#include <string.h>

/* array[L] of array[H] of numbers, flattened. */
static int
s_lh(xdc_t *c, const xnode_t *root, const char *key, uint32_t L, uint32_t H, const double **out)
{
    const xnode_t *a = xn_get(root, key);
    if (!xn_is(a, MPR_ARRAY) || xn_count(a) != L)
        return xpl_fail(XPL_EPROTO, "%s: '%s' is not an array of %u layers", c->what, key, L);
    /* L and H are the message's word: only rows that are really there
       bound the allocation (L = 1, H = 4e9 would ask for 32 GB). */
    const xnode_t *row = xn_first(a);
    for (uint32_t l = 0; l < L; l++, row = xn_next(row))
        if (!xn_is(row, MPR_ARRAY) || xn_count(row) != H)
            return xpl_fail(XPL_EPROTO, "%s: '%s' row %u is not an array of %u numbers",
                            c->what, key, l, H);
    double *v = xobj_alloc(c->obj, (size_t)L * H * sizeof *v + 1);
    if (!v)
        return -1;
    row = xn_first(a);
    for (uint32_t l = 0; l < L; l++, row = xn_next(row)) {
        const double *r;
        uint32_t n = H;
        if (xdc_doubles(c, row, key, &r, &n))
            return -1;
        memcpy(v + (size_t)l * H, r, (size_t)H * sizeof *v);
    }
    *out = v;
    return 0;
}

xpl_heads_t *
xpl_decode_heads(const xnode_t *root, const char *what)
{
    xpl_heads_t *h = xobj_new(sizeof *h);
    if (!h)
        return NULL;
    xdc_t c = {h, what};
    if (!xn_is(root, MPR_MAP)) {
        xpl_fail(XPL_EPROTO, "%s: body is not a map", what);
        goto fail;
    }
    if (xdc_str(&c, root, "model", &h->model) || xdc_u64(&c, root, "seq", &h->seq)
        || xdc_i64(&c, root, "ts", &h->ts) || xdc_u64(&c, root, "epoch", &h->epoch)
        || xdc_u32(&c, root, "L", &h->L) || xdc_u32(&c, root, "H", &h->H))
        goto fail;
    /* The arrays were bounded by the message; L * H must be too. */
    if ((uint64_t)h->L * h->H > UINT32_MAX) {
        xpl_fail(XPL_EPROTO, "%s: L * H = %u * %u is too large", what, h->L, h->H);
        goto fail;
    }
    if (s_lh(&c, root, "importance", h->L, h->H, &h->importance)
        || s_lh(&c, root, "confidence", h->L, h->H, &h->confidence)
        || xdc_u64(&c, root, "importance_count", &h->importance_count)
        || xdc_u64(&c, root, "confidence_count", &h->confidence_count))
        goto fail;
    return h;
fail:
    xobj_unref(&h);
    return NULL;
}

void
xpl_heads_destroy(xpl_heads_t **self_p)
{
    xobj_unref(self_p);
}
