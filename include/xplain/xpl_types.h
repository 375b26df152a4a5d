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

/* Tensor element types of the wire (PROTOCOL.md: dtype). */
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

/* A model's schema in one epoch (the `schema` query). Reference-counted:
   subscribers attach the same schema to every explanation of its epoch. */
typedef struct {
    const char *model;
    uint64_t epoch;
    uint32_t L, H, n;
    int32_t cls;                /* CLS token index, -1 for none */
    const char *const *tokens;  /* n token names */
    uint32_t nfeat;             /* n - 1 with CLS, n without */
    const char *const *features;/* nfeat names of attribution entries */
    const char *dtype;          /* dtype of the last ingest message, "" if not sent */
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

#ifdef __cplusplus
}
#endif

#endif
