/*  global: per-model global attributions, head statistics and drift, the
    one owner of that state. It keeps state only: it encodes and sends
    nothing (publish.c does), answers no query (query_global.c does).

    For every model and schema epoch it keeps, per method, a float64
    aggregate of the per-trade vectors (count, mean, sample std, decayed
    mean: core/agg.h) over all trades and per target class, the head
    statistics, and one tumbling-window drift detector (core/drift.h)
    with its reference (baseline, pinned, or external). An external
    reference is also compared with the global mean (Spearman's rho: the
    agreement of attention attributions with, say, permutation
    importance). global_add returns the windows it closed, for the
    caller to publish on drift/<model> at once; glob/<model> and
    heads/<model> go out every publish interval when the state changed
    (global_take_changed). Every topic has its own seq per model, kept
    here, and the `global` query answers with the seq its state is
    current at, so a client can join a snapshot with the updates that
    follow (zguide's Clone pattern): every glob/ message is a whole state,
    never a delta.

    state.c reads and writes this state through global_model and
    global_epoch.  */
#ifndef XPLD_GLOBAL_H
#define XPLD_GLOBAL_H

#include "agg.h"
#include "detect.h"
#include "drift.h"
#include "evwin.h"
#include "models.h"
#include "segment.h"
#include "xmath.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

/* Features named in a window's what-moved list, at most. */
#define GLOBAL_MOVED_MAX 16

/* Last closed window of one method. `alert` is the verdict of the
   configured drift mode (detect.h); the statistics' own fixed-threshold
   flags are not kept. */
typedef struct {
    bool valid;
    uint64_t window;
    drift_ref_t ref;
    bool compared;
    drift_stat_t spearman, ndcg, js;
    bool alert;
    int64_t ts;
    uint64_t trades;                /* trades in the window */
    detect_verdict_t verdict;
    uint32_t nmoved;                /* entries in moved (0 for a baseline) */
    detect_moved_t moved[GLOBAL_MOVED_MAX];
} glast_t;

/* Closed event-time windows kept for a merging aggregator (evwin keep). */
#define GLOBAL_EVWIN_KEEP 32

/* Most windows one global_add (or one aggregator merge) reports. */
#define GLOBAL_CLOSED_MAX 64

typedef struct {
    int64_t target;
    agg_t agg[XM_NMETHODS];
    evdecay_t evd[XM_NMETHODS];     /* time-decayed means (decay_ns > 0) */
} gclass_t;

/* One segment's state in an epoch (MATH.md, "Segments"): its global
   means and drift, from its own trades only. No per-class means: those
   would multiply a segment's memory by max_targets (the `global` query
   refuses a segment with a target). */
typedef struct {
    uint64_t count;                 /* trades */
    uint64_t drift_seq;             /* next seq on drift/<model>/<segment> */
    uint64_t glob_seq;              /* next seq on glob/<model>/<segment> */
    int64_t glob_ts;                /* when glob_seq - 1 was sent */
    bool dirty;                     /* changed since its glob/ was last sent */
    unsigned methods;
    agg_t all[XM_NMETHODS];
    drift_t drift[XM_NMETHODS];
    detect_t detect[XM_NMETHODS];
    glast_t last[XM_NMETHODS];
    /* The event-time modes, as the epoch's (a segment's own trades). */
    evwin_t evw[XM_NMETHODS];       /* window_ns > 0 */
    evdecay_t evd[XM_NMETHODS];     /* decay_ns > 0 */
} gseg_t;

/* State of one schema epoch of one model. */
typedef struct {
    uint32_t epoch, nf, L, H;
    uint64_t count;                 /* trades aggregated */
    unsigned methods;               /* methods with state below */
    agg_t all[XM_NMETHODS];
    gclass_t *classes;
    uint32_t nclasses, cap_classes;
    uint64_t untracked;             /* trades whose target class is past max_targets */
    agg_heads_t heads;
    drift_t drift[XM_NMETHODS];
    detect_t detect[XM_NMETHODS];   /* verdicts on drift[m]'s windows */
    detect_work_t dwork;            /* what-moved scratch, nf features */
    glast_t last[XM_NMETHODS];
    double *extref[XM_NMETHODS];    /* external reference, NULL when none */
    /* Event-time modes (global_params_t window_ns, decay_ns): windows by
       the trades' ts, which drift[] judges as they close, and
       time-decayed means. Both merge exactly across shards. */
    evwin_t evw[XM_NMETHODS];       /* window_ns > 0 */
    evdecay_t evd[XM_NMETHODS];     /* decay_ns > 0 */
    segtab_t segs;                  /* segments tracked (empty when off) */
    gseg_t **seg;                   /* [segs.max], NULL until the first trade */
} gepoch_t;

/* One alert, kept for the `drift` query. */
typedef struct {
    int64_t ts;
    uint32_t epoch;
    uint8_t method;
    char segment[SEG_LABEL_MAX + 1];  /* "" for the model overall */
    uint64_t window;
    drift_ref_t ref;
    drift_stat_t spearman, ndcg, js;
    detect_verdict_t verdict;       /* mode and evidence (zero when restored) */
    uint32_t nmoved;
    detect_moved_t moved[GLOBAL_MOVED_MAX];
} galert_t;

typedef struct {
    gepoch_t *epochs[MODEL_EPOCHS_KEPT];    /* ring by epoch */
    uint64_t glob_seq, drift_seq, heads_seq;    /* next seq per topic */
    int64_t glob_ts;                /* when glob/ glob_seq - 1 was sent */
    bool dirty;                     /* changed since glob/ was last sent */
    galert_t *alerts;               /* ring of alerts_kept */
    uint32_t alerts_next, alerts_count;
    uint64_t alerts_total;
} gmodel_t;

typedef struct {
    double half_life;
    uint32_t window;
    int64_t window_ns;              /* > 0: drift windows by event time (evwin) */
    int64_t late_ns;                /* their allowed lateness */
    int64_t decay_ns;               /* > 0: decayed means by event time (evdecay) */
    drift_opts_t drift;
    detect_opts_t detect;
    uint32_t moved_k;               /* what-moved list length, <= GLOBAL_MOVED_MAX */
    uint32_t max_segments;          /* segments tracked per model and epoch; 0: off */
    uint32_t max_targets;
    uint32_t alerts_kept;
} global_params_t;

struct gpending_t;

typedef struct {
    global_params_t p;
    gmodel_t **models;              /* by model index */
    uint32_t cap;
    uint64_t gen;                   /* bumped on every change, for snapshots */
    double cusum_arl;               /* in-control run length of one statistic's
                                       CUSUM, in windows (MATH.md) */
    struct gpending_t *pending;     /* reference-file entries (global_load_references) */
    /* An aggregator's shards (aggregate.h), reported in glob/: how many,
       and which (by position in aggregate.shards) are stale. */
    uint32_t nshards;
    uint32_t stale_mask;
} global_t;

/* One window closed by global_add: its drift/ seq and what it found. */
typedef struct {
    int method;
    int seg;                        /* segment index in the epoch, -1: overall */
    const char *segment;            /* its label (owned by the epoch), NULL: overall */
    uint64_t seq;
    glast_t last;
} gclosed_t;

/* What one global_add closed: with count windows at most one window
   per method overall and one per method in the trade's segment; with
   event-time windows a trade far ahead can close several (past
   GLOBAL_CLOSED_MAX they are kept and judged, not handed over). */
typedef struct {
    uint32_t epoch;
    int n;
    gclosed_t w[GLOBAL_CLOSED_MAX];
} global_closed_t;
_Static_assert(GLOBAL_CLOSED_MAX >= 2 * XM_NMETHODS, "a count-window add closes 2 per method");

int global_init(global_t *g, uint32_t max_models, const global_params_t *p);
void global_destroy(global_t *g);

/* Thresholds, the drift mode and its parameters, and the what-moved
   length can change at run time (SIGHUP); windows and half-life not. A
   changed mode or calibration length restarts every calibration. */
void global_set_drift(global_t *g, const drift_opts_t *o, const detect_opts_t *d,
                      uint32_t moved_k);

/* Account one explained trade of model md (current epoch): aggregates,
   heads, drift. Its event time, for the event-time modes, is
   md->last_ts (the ts of the message it came in, set by ingest). The windows it closed (with their alerts, which are also
   kept for the drift query and logged) are written to `closed` for the
   caller to publish; closed->n is 0 when none. */
void global_add(global_t *g, const model_t *md, const int64_t *target, const xm_result_t *res,
                global_closed_t *closed);

/* Judge a closed event-time window of method m of epoch e (its mean and
   trade count) against the drift reference and record it as global_add
   does: the aggregator's path for merged windows. */
void global_close_window(global_t *g, const model_t *md, gepoch_t *e, int m, const evwin_view_t *v,
                         global_closed_t *closed);

/* The state of method m in epoch e, or of class `target` (created up to
   max_targets): for the aggregator, which fills them from its shards.
   NULL when out of memory or past max_targets. */
gepoch_t *global_epoch_method(global_t *g, gepoch_t *e, int m);
gclass_t *global_class(global_t *g, gepoch_t *e, int64_t target);
/* global_add for a trade of segment `label` (len bytes; len 0: none):
   the trade counts overall and, when the segment is tracked or there is
   room for it (max_segments), in the segment too; otherwise it is
   counted in the epoch's segs.overflow. */
void global_add_seg(global_t *g, const model_t *md, const int64_t *target, const xm_result_t *res,
                    const char *label, size_t len, global_closed_t *closed);

/* For the aggregator, which fills segments from its shards: segment
   `label` of epoch e with the state of method m, created while there is
   room (NULL when not admitted, with segs.overflow + 1, or out of
   memory); its index into *index. And the judging of a closed merged
   event-time window of segment `seg`, as global_close_window overall. */
gseg_t *global_segment_method(global_t *g, gepoch_t *e, const char *label, size_t len, int m,
                              int *index);
void global_close_window_seg(global_t *g, const model_t *md, gepoch_t *e, int m, int seg,
                             const evwin_view_t *v, global_closed_t *closed);

/* Segment `label` of epoch e, or NULL when not tracked. */
const gseg_t *global_segment(const gepoch_t *e, const char *label, size_t len);

/* Segment i (0 .. e->segs.n - 1) of md's current epoch e when it changed
   since it was last taken, else NULL; takes the change. Its glob/ goes
   out with seq sg->glob_seq, then global_seg_glob_sent counts it. */
gseg_t *global_seg_take_changed(gepoch_t *e, uint32_t i);
void global_seg_glob_sent(gseg_t *sg, int64_t ts);

/* A further target of the trade just added: its methods go into the
   aggregates of class `target`, the model's and the trade's segment's,
   and into drift, but the trade is not counted again and the heads are
   left alone. */
void global_add_target(global_t *g, const model_t *md, const int64_t *target,
                       const xm_result_t *res, const char *label, size_t len,
                       global_closed_t *closed);

/* The current epoch of md when its state changed since it was last
   taken, else NULL; takes the change (for publish_changed). */
const gepoch_t *global_take_changed(global_t *g, const model_t *md);

/* Topic seqs of md: the seq of the next glob/, and that it went out at
   `ts`; the seq for the next heads/ (taken). */
uint64_t global_glob_seq(const global_t *g, const model_t *md);
void global_glob_sent(global_t *g, const model_t *md, int64_t ts);
uint64_t global_heads_seq_next(global_t *g, const model_t *md);

/* Load external references from a text file, one per line:
   `<model> <method> <v1> <v2> ... <v_nf>` ('#' comments). They apply to
   the current epoch of every model in `models` whose feature count
   matches, now, and to a model's epoch when global_add creates it (the
   model may not exist yet). Returns the number of references read, or
   -1 when the file cannot be read or a line is malformed (logged). */
int global_load_references(global_t *g, const models_t *models, const char *path);

/* Epoch state of a model (for state.c and the queries); create it when
   `create` (an epoch created here gets no file references: global_add
   applies them to the epochs it creates). */
gepoch_t *global_epoch(global_t *g, const model_t *md, uint32_t epoch, bool create);
gmodel_t *global_model(global_t *g, const model_t *md);

/* Read-only: state of a model's current epoch, NULL when it has none yet
   (creates nothing, unlike global_epoch; for the metrics endpoint). */
const gepoch_t *global_current(const global_t *g, const model_t *md);
const gmodel_t *global_model_const(const global_t *g, const model_t *md);

/* Pin the reference of the methods in `mask` to their current global
   mean (`pin`), or reset it so that the next window becomes it. Returns
   the methods changed (pinning skips a method with no trades yet). */
unsigned global_baseline(global_t *g, gepoch_t *e, unsigned mask, bool pin);

/* Set method m's external reference of epoch e of md (e->nf values).
   Returns 0, or -1 when out of memory. */
int global_set_reference(global_t *g, const model_t *md, gepoch_t *e, int m,
                         const double *values);

/* ---- snapshots (snap.h; state.c holds the container) --------------------

   gepoch_save writes one epoch's state as {count, untracked, methods:
   {name: {all, drift, extref, last}}, classes: [{target, methods: {name:
   agg}}], heads}. gepoch_load reads it into an epoch global_epoch just
   created (empty, with the schema's nf, L, H), creating each method's
   state and each class as global_add would, with today's half-life,
   window, thresholds and max_targets (more classes than that: an error).
   SNAP_V1 reads the first format's positional array. */
void gepoch_save(msgpack_packer *pk, const gepoch_t *e);
int gepoch_load(snap_rd_t *d, global_t *g, gepoch_t *e, unsigned ver);

/* A model's topic seqs and alert history: {glob_seq, drift_seq,
   heads_seq, alerts_total, alerts: [...] (oldest first)}; loading keeps
   the newest alerts_kept. SNAP_V1: the first format's four counters and
   alert array, inline in its model record. */
void gmodel_save(msgpack_packer *pk, const global_t *g, const gmodel_t *gm);
int gmodel_load(snap_rd_t *d, const global_t *g, gmodel_t *gm, unsigned ver);

#endif
