/*  xpl_drift: one closed drift window (drift/ messages).  */
#include "xpl_decode.h"

xpl_drift_t *
xpl_decode_drift(const xnode_t *root, const char *what)
{
    xpl_drift_t *d = xobj_new(sizeof *d);
    if (!d)
        return NULL;
    xdc_t c = {d, what};
    if (!xn_is(root, MPR_MAP)) {
        xpl_fail(XPL_EPROTO, "%s: body is not a map", what);
        xobj_unref(&d);
    } else if (xdc_str(&c, root, "model", &d->model) || xdc_u64(&c, root, "seq", &d->seq)
               || xdc_u64(&c, root, "epoch", &d->epoch) || xdc_str(&c, root, "method", &d->method)
               || xdc_u64(&c, root, "trades", &d->trades) || xdc_window(&c, root, &d->window)
               || xdc_verdict(&c, root, &d->verdict)
               || (xn_get(root, "segment") && xdc_str(&c, root, "segment", &d->segment)))
        xobj_unref(&d);
    return d;
}

void
xpl_drift_destroy(xpl_drift_t **self_p)
{
    xobj_unref(self_p);
}
