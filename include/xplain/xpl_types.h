/*  xpl_types: what libxplain decodes, as plain C structs.

    Every result object (schema, explanation, model list, stats, ...) is
    one allocation owned by the caller: read its fields, then free it with
    its destroy function, which sets the caller's pointer to NULL. Every
    pointer inside a result (strings, vectors, nested arrays) belongs to
    that result and is valid until it is destroyed. Strings are
    NUL-terminated UTF-8 copies of what the daemon sent.

    Results are immutable once returned, so they may be read from several
    threads at once; schemas and global states are reference-counted
    (xpl_schema_ref, xpl_global_ref) so that subscribers and views can
    share them without copying.  */
#ifndef XPL_TYPES_H_INCLUDED
#define XPL_TYPES_H_INCLUDED

#include "xpl_base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Tensor element types of the wire (proto/ingest.md: dtype). */
typedef enum { XPL_F32 = 0, XPL_F16 = 1, XPL_BF16 = 2 } xpl_dtype_t;

/* A trade id: a string or an unsigned integer, as it was ingested. */
typedef struct {
    bool is_str;
    uint64_t u;                 /* when !is_str */
    const char *s;              /* when is_str */
} xpl_id_t;

/* Build an id from a string (not copied: the string must outlive the
   xpl_id_t) or from an integer. */
static inline xpl_id_t
xpl_id_str(const char *s)
{
    xpl_id_t id = {true, 0, s};
    return id;
}

static inline xpl_id_t
xpl_id_uint(uint64_t u)
{
    xpl_id_t id = {false, u, NULL};
    return id;
}

/* One method's attribution vector: `count` floats in feature order. */
typedef struct {
    const char *method;         /* "rollout", "grad_rollout", ... */
    uint32_t count;
    const float *values;
} xpl_attr_t;

/* A full n x n row-major float32 matrix of one method (trade query). */
typedef struct {
    const char *method;
    uint32_t n;
    const float *values;        /* n * n */
} xpl_matrix_t;

/* A feature group of a schema: one feature summing several tokens. */
typedef struct {
    const char *name;           /* the feature's name */
    uint32_t ntokens;
    const char *const *tokens;  /* its tokens' names, in token order */
} xpl_group_t;

/* A model's schema in one epoch (the `schema` query). Reference-counted:
   subscribers attach the same schema to every explanation of its epoch.
   Without feature groups the features are the tokens without CLS; with
   them, each group is one feature (named in `groups`) standing where its
   lowest token stands, and every attribution vector has nfeat values. */
typedef struct {
    const char *model;
    uint64_t epoch;
    uint32_t L, H, n;
    int32_t cls;                /* CLS token index, -1 for none */
    const char *const *tokens;  /* n token names */
    uint32_t nfeat;             /* n - 1 with CLS, n without; fewer with groups */
    const char *const *features;/* nfeat names of attribution entries */
    const char *dtype;          /* dtype of the last ingest message, "" if not sent */
    uint32_t ngroups;           /* feature groups, 0 without */
    const xpl_group_t *groups;  /* ngroups, in feature order */
    const int32_t *feature_of;  /* [n] feature index of each token, -1 for CLS */
} xpl_schema_t;

/* Take another reference to a schema (it is freed when the last one is
   dropped with xpl_schema_destroy). Returns `self`. */
XPL_EXPORT xpl_schema_t *xpl_schema_ref(const xpl_schema_t *self);

/* Drop a reference and set *self_p to NULL; NULL-safe. */
XPL_EXPORT void xpl_schema_destroy(xpl_schema_t **self_p);

/* One trade's explanation: an xpl/ message, or the `trade` query's reply
   (which adds n, cls, features and the full matrices). */
typedef struct {
    const char *model;
    xpl_id_t id;                /* id.s owned by the explanation */
    uint64_t seq;               /* xpl/ topic counter; 0 for a trade reply */
    int64_t ts;                 /* event time, ns since the Unix epoch */
    uint64_t epoch;             /* schema epoch */
    bool has_target;
    int64_t target;
    bool has_y;
    double y;
    uint32_t nattr;
    const xpl_attr_t *attr;     /* nattr methods, in the order received */
    /* Feature names of the attribution entries: nfeat names, or NULL when
       unknown (subscriber without a query endpoint, schema query failed,
       or the daemon has moved on to a newer epoch). */
    uint32_t nfeat;
    const char *const *features;
    const xpl_schema_t *schema; /* the schema they come from, or NULL */
    /* Trade query only (0 / NULL otherwise). */
    uint32_t n;
    int32_t cls;
    uint32_t nmatrices;
    const xpl_matrix_t *matrices;
} xpl_explanation_t;

/* The attribution vector of `method`, or NULL when absent. */
XPL_EXPORT const xpl_attr_t *xpl_explanation_attr(const xpl_explanation_t *self,
                                                  const char *method);

/* The n x n matrix of `method` (trade query), or NULL when absent. */
XPL_EXPORT const xpl_matrix_t *xpl_explanation_matrix(const xpl_explanation_t *self,
                                                      const char *method);

/* Free an explanation and set *self_p to NULL; NULL-safe. */
XPL_EXPORT void xpl_explanation_destroy(xpl_explanation_t **self_p);

/* One model as listed by the `models` and `stats` queries. */
typedef struct {
    const char *model;
    uint64_t epoch;
    uint32_t L, H, n;
    int32_t cls;
    uint64_t received;          /* ingest messages */
    uint64_t trades;            /* trades received */
    uint64_t explained;
    uint64_t rejected;
    uint64_t lost;              /* seq gaps */
    uint64_t restarts;          /* publisher restarts seen */
    uint64_t last_seq;
    int64_t last_ts;
} xpl_model_info_t;

/* The `models` query's reply. */
typedef struct {
    uint32_t count;
    const xpl_model_info_t *models;
} xpl_models_t;

/* The model named `model`, or NULL. */
XPL_EXPORT const xpl_model_info_t *xpl_models_find(const xpl_models_t *self, const char *model);

/* Free a model list and set *self_p to NULL; NULL-safe. */
XPL_EXPORT void xpl_models_destroy(xpl_models_t **self_p);

/* A named counter. */
typedef struct {
    const char *name;
    uint64_t value;
} xpl_counter_t;

/* The `stats` query's reply. The well-known counters have fields; every
   counter the daemon sent (known or not) is also in `counters`. */
typedef struct {
    double uptime_s;
    uint64_t received, received_trades, explained, published, rejected, lost,
        restarts, dropped, queries, query_errors;
    uint32_t ncounters;
    const xpl_counter_t *counters;
    uint32_t nreasons;
    const xpl_counter_t *rejected_by_reason;    /* every reason, zeros included */
    struct {
        uint64_t count;
        double p50, p90, p99, p999, max;        /* microseconds */
    } latency_us;
    uint32_t nmodels;
    const xpl_model_info_t *models;
} xpl_stats_t;

/* Value of counter `name` in *value; -1 when the daemon did not send it. */
XPL_EXPORT int xpl_stats_counter(const xpl_stats_t *self, const char *name, uint64_t *value);

/* Free stats and set *self_p to NULL; NULL-safe. */
XPL_EXPORT void xpl_stats_destroy(xpl_stats_t **self_p);

/* ---- global state, drift, head statistics (proto/global.md) ---------- */

/* One method's global aggregate over the trades of an epoch (float64).
   Every vector has the global state's nfeat entries, in feature order. */
typedef struct {
    const char *method;
    uint64_t count;             /* trades with this method */
    const double *mean;
    const double *std;          /* sample std; 0 below 2 trades */
    const double *decayed;      /* exponentially decayed mean */
    const double *reference;    /* external reference vector, or NULL */
    double reference_spearman;  /* its Spearman rho with mean; NAN when
                                   undefined or no reference is set */
} xpl_method_state_t;

/* The aggregates of one target class. */
typedef struct {
    int64_t target;
    uint32_t nmethods;
    const xpl_method_state_t *methods;
} xpl_target_state_t;

/* A model's global state in one epoch: a glob/ message or the `global`
   query's reply (always a whole state, never a delta). Reference-counted
   so that a view can hand the same state to many readers. */
typedef struct {
    const char *model;
    uint64_t seq;               /* glob/ counter this state is current at */
    int64_t ts;                 /* when the daemon sent it, ns since the epoch */
    uint64_t epoch;
    uint32_t nfeat;
    const char *const *features;/* nfeat names, or NULL when the daemon no
                                   longer keeps the epoch's schema */
    uint64_t count;             /* trades aggregated in this epoch */
    double half_life;           /* of the decayed means, in trades */
    uint32_t nmethods;
    const xpl_method_state_t *methods;
    uint32_t ntargets;
    const xpl_target_state_t *targets;
    uint64_t untracked_targets; /* trades of classes beyond the tracked ones */
    const char *segment;        /* glob/<model>/<segment> or the global reply for
                                   a segment: its label (no targets then);
                                   NULL: the model overall */
} xpl_global_t;

/* A method's aggregate over all trades, or NULL. */
XPL_EXPORT const xpl_method_state_t *xpl_global_method(const xpl_global_t *self,
                                                       const char *method);

/* A target class's aggregates, or NULL. */
XPL_EXPORT const xpl_target_state_t *xpl_global_target(const xpl_global_t *self, int64_t target);

/* Take another reference (see xpl_schema_ref). Returns `self`. */
XPL_EXPORT xpl_global_t *xpl_global_ref(const xpl_global_t *self);

/* Drop a reference and set *self_p to NULL; NULL-safe. */
XPL_EXPORT void xpl_global_destroy(xpl_global_t **self_p);

/* One closed drift window of a method, compared with its reference.
   An undefined statistic (a constant vector, no positive reference value,
   or a window that only became the baseline) is NAN, never a number. */
typedef struct {
    uint64_t window;            /* index of the window in the epoch, from 0 */
    const char *reference;      /* "baseline", "pinned" or "external" */
    bool compared;              /* false: this window became the baseline */
    double spearman, ndcg, js;
    bool alert;
    int64_t ts;                 /* when it closed, ns since the epoch */
} xpl_window_t;

/* A feature that moved in a closed window: one entry of its what-moved
   list (proto/global.md), largest change first. */
typedef struct {
    const char *feature;        /* its name, or NULL when the daemon sent none */
    uint32_t index;             /* position, token order without CLS */
    double ref, cur;            /* reference value and the window's mean */
    double delta;               /* cur - ref */
    uint32_t ref_rank, rank;    /* 1 = largest value */
    int32_t rank_up;            /* ref_rank - rank: > 0 climbed */
} xpl_moved_t;

/* How the daemon's drift mode judged a closed window, and what moved.
   From a daemon that predates drift modes: mode NULL, nmoved 0. */
typedef struct {
    const char *mode;           /* "fixed", "calibrated", "cusum", or NULL */
    bool calibrating;           /* still measuring the reference regime */
    double z[3];                /* standardised departure of spearman, ndcg, js;
                                   NAN where not scored */
    double cusum[3];            /* the CUSUMs after this window; NAN outside mode cusum */
    uint32_t nmoved;
    const xpl_moved_t *moved;
    bool alerted[3];            /* spearman, ndcg, js: the statistics that alerted
                                   in this mode (the verdict's "alerts") */
} xpl_verdict_t;

/* A drift/ message: one method's window just closed. */
typedef struct {
    const char *model;
    uint64_t seq;
    uint64_t epoch;
    const char *method;
    uint64_t trades;            /* trades per window */
    xpl_window_t window;
    const char *segment;        /* the segment's label, NULL: the model overall */
    xpl_verdict_t verdict;
} xpl_drift_t;

/* Free a drift message and set *self_p to NULL; NULL-safe. */
XPL_EXPORT void xpl_drift_destroy(xpl_drift_t **self_p);

/* A heads/ message: per-layer, per-head statistics. */
typedef struct {
    const char *model;
    uint64_t seq;
    int64_t ts;
    uint64_t epoch;
    uint32_t L, H;
    const double *importance;   /* L*H, [l * H + h]: mean |sum A*G| */
    const double *confidence;   /* L*H: mean over trades of mean_i max_j A */
    uint64_t importance_count;  /* trades with a gradient */
    uint64_t confidence_count;
} xpl_heads_t;

/* Free head statistics and set *self_p to NULL; NULL-safe. */
XPL_EXPORT void xpl_heads_destroy(xpl_heads_t **self_p);

/* A method's drift status in the `drift` query's reply. */
typedef struct {
    const char *method;
    const char *reference;      /* kind of reference in force */
    uint64_t filled;            /* trades in the open window */
    uint64_t windows;           /* windows closed so far */
    bool has_last;
    xpl_window_t last;          /* the last closed window, when has_last */
} xpl_drift_method_t;

/* A past alert. */
typedef struct {
    int64_t ts;
    uint64_t epoch;
    const char *method;
    uint64_t window;
    const char *reference;
    double spearman, ndcg, js;  /* NAN when undefined */
    const char *segment;        /* the segment that alerted, NULL: the model overall */
    xpl_verdict_t verdict;      /* its mode, evidence and what moved (mode NULL
                                   from a daemon that predates drift modes) */
} xpl_alert_t;

/* The `drift` query's reply: thresholds, per-method status, last alerts. */
typedef struct {
    const char *model;
    uint64_t epoch;
    uint64_t window;            /* trades per window */
    double rho_min, ndcg_min, js_max;
    uint32_t ndcg_k;
    uint32_t nmethods;
    const xpl_drift_method_t *methods;
    uint64_t alerts_total;
    uint32_t nalerts;
    const xpl_alert_t *alerts;  /* the last ones kept, oldest first */
    const char *mode;           /* the drift mode in force, NULL from an older daemon */
    const char *segment;        /* the segment asked about, NULL: the model overall */
    uint32_t nsegments;
    const char *const *segments;    /* labels of the segments tracked */
    uint64_t segments_overflow;     /* trades of segments not tracked */
    const xpl_verdict_t *verdicts;  /* [nmethods]: each method's last window's
                                       verdict (zero before the first) */
} xpl_drift_state_t;

/* A method's drift status, or NULL. */
XPL_EXPORT const xpl_drift_method_t *xpl_drift_state_method(const xpl_drift_state_t *self,
                                                            const char *method);

/* Free a drift status and set *self_p to NULL; NULL-safe. */
XPL_EXPORT void xpl_drift_state_destroy(xpl_drift_state_t **self_p);

#ifdef __cplusplus
}
#endif

#endif
