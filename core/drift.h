/*  drift: tumbling-window comparison of attributions with a reference
    (MATH.md, "Global attributions and drift"; the drift/ topic in proto/global.md).

    Trades are pushed one attribution vector at a time. Every `window`
    trades the window closes: its per-feature mean is compared with the
    reference by Spearman's rho, nDCG@k (the window is the current
    ranking, the reference the ideal one) and Jensen-Shannon divergence
    (rank.h), and the window starts again empty. The alert is raised when

        rho < rho_min   or   ndcg@k < ndcg_min   or   js > js_max

    (defaults 0.8, 0.9 with k = 10, 0.1), each test applying only to a
    statistic that is defined: an undefined statistic (a constant vector,
    no positive reference value, an all-zero vector) never raises the
    alert by itself, and is reported as undefined rather than as a number.

    The reference is one of
      baseline  the first window that closes while there is no reference
                (after init or drift_reset_reference); that
                window is captured, not compared
      pinned    a vector an operator pinned (typically the last closed
                window's mean, `last`, or the global mean)
      external  a vector from outside (e.g. offline permutation importance)
    and is always a copy owned by the drift_t.

    Purely computational: no clock, no sockets, no allocation after
    drift_init. The daemon owns one drift_t per model and method. The
    struct lives in caller storage; its fields are plain so that they can
    be snapshotted.  */
#ifndef XPL_DRIFT_H
#define XPL_DRIFT_H

#include "rank.h"
#include "snap.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    DRIFT_REF_NONE = 0,         /* none yet: the next closed window becomes the baseline */
    DRIFT_REF_BASELINE = 1,
    DRIFT_REF_PINNED = 2,
    DRIFT_REF_EXTERNAL = 3
} drift_ref_t;

typedef struct {
    double rho_min;             /* alert when spearman < rho_min */
    double ndcg_min;            /* alert when ndcg@ndcg_k < ndcg_min */
    double js_max;              /* alert when js > js_max */
    uint32_t ndcg_k;            /* k of nDCG@k (k > nfeat counts as nfeat) */
} drift_opts_t;

typedef struct {
    bool defined;               /* false: undefined for these vectors, value is 0 */
    bool alert;                 /* defined and across its threshold */
    double value;
} drift_stat_t;

/* Outcome of one closed window. */
typedef struct {
    uint64_t window;            /* 0-based index since init */
    drift_ref_t ref;            /* reference this window was compared with */
    bool compared;              /* false: this window was captured as the baseline */
    drift_stat_t spearman, ndcg, js;
    bool alert;                 /* any statistic alerted */
    const double *mean;         /* the window's mean (nfeat values); valid until
                                   the next drift_push or drift_destroy */
} drift_report_t;

typedef struct {
    uint32_t nfeat;
    uint32_t window;            /* trades per window */
    drift_opts_t opts;
    uint32_t filled;            /* trades in the open window */
    uint64_t closed;            /* windows closed */
    drift_ref_t ref_kind;
    bool has_last;              /* `last` holds a closed window */
    double *sum;                /* [nfeat] sums over the open window */
    double *last;               /* [nfeat] mean of the last closed window */
    double *ref;                /* [nfeat] reference (meaningless when NONE) */
    rank_work_t rw;
} drift_t;

/* Defaults: rho_min 0.8, ndcg_min 0.9, ndcg_k 10, js_max 0.1. */
void drift_opts_default(drift_opts_t *o);

/* Name of a reference kind ("none", "baseline", "pinned", "external"),
   or NULL when out of range. */
const char *drift_ref_name(drift_ref_t r);

/* Initialise a drift detector in caller storage for vectors of `nfeat`
   values and windows of `window` trades; `opts` NULL means the defaults.
   Returns 0, or -1 when window is 0 or out of memory (then *d holds no
   memory and drift_destroy is still safe). */
int drift_init(drift_t *d, uint32_t nfeat, uint32_t window, const drift_opts_t *opts);

/* Free the buffers; the struct is left empty. Safe to call twice. */
void drift_destroy(drift_t *d);

/* Add one trade's attribution vector (nfeat floats). Returns 1 when it
   closed a window (then *out describes it), 0 when the window is still
   open, -1 when x holds a NaN or Inf (nothing changes). */
int drift_push(drift_t *d, const float *x, drift_report_t *out);

/* Close a window formed elsewhere (by event time: core/evwin.h) whose
   per-feature mean is `mean` (nfeat values): compared with the reference,
   or captured as the baseline, exactly as a window drift_push closes.
   The count window of drift_push is not touched. Returns 1 (*out
   describes it, out->mean is d->last), or -1 when mean holds a NaN or Inf
   (nothing changes). */
int drift_close_mean(drift_t *d, const double *mean, drift_report_t *out);

/* Compare from now on with a copy of `ref` (nfeat values; may be d->last),
   labelled `kind`, DRIFT_REF_PINNED or DRIFT_REF_EXTERNAL. The open
   window is kept. Returns 0, or -1 when ref holds a NaN or Inf or kind is
   another value (the reference is unchanged). */
int drift_set_reference(drift_t *d, drift_ref_t kind, const double *ref);

/* Drop the reference: the next window to close becomes the baseline. The
   open window is kept. */
void drift_reset_reference(drift_t *d);

/* ---- snapshots (snap.h) ------------------------------------------------

   drift_save writes {window, filled, closed, reference, has_last, sum,
   last, ref}: the window size it was counting, the open window, the
   closed-window count, the reference kind by name ("baseline", ...), and
   the three vectors bit for bit. drift_load reads one into a detector
   that drift_init made with today's nfeat, window and thresholds: the
   vectors must have nfeat values, the kind be known, filled <= window.
   When the window size changed the open window cannot be resumed: it
   starts empty (closed windows, last and reference are kept). SNAP_V1
   reads the first format's positional array (kind as a number).
   Returns 0, or -1 with d->why set (then discard the detector). */
void drift_save(msgpack_packer *pk, const drift_t *d);
int drift_load(snap_rd_t *rd, drift_t *d, unsigned ver);

/* One window statistic: {defined, alert, value}; SNAP_V1 [defined,
   alert, value]. */
void drift_stat_save(msgpack_packer *pk, const drift_stat_t *st);
int drift_stat_load(snap_rd_t *rd, drift_stat_t *st, unsigned ver);

/* The kind named `name` (len bytes), or -1. */
int drift_ref_parse(const uint8_t *name, uint32_t len);

#endif
