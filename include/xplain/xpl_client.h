/*  xpl_client: queries to xplaind's ROUTER socket (proto/queries.md,
    proto/global.md).

    A client holds one DEALER socket connected to the daemon's query
    endpoint. Each call sends one request and waits for its reply up to
    the client's timeout; a reply that arrives after its call gave up is
    recognised (every request carries its own envelope id) and discarded,
    so a timeout never shifts later replies. The daemon need not be up
    when the client is created: requests wait for it until the timeout.

    Errors: every call returns -1 (or NULL) with xpl_errno() telling why:
    XPL_ETIMEOUT when no reply came in time (daemon down or unreachable),
    the daemon's own error (XPL_EUNKNOWN_MODEL, XPL_ENOT_FOUND,
    XPL_EBAD_REQUEST, XPL_EUNKNOWN_OP, XPL_EBAD_ARGUMENT, XPL_EINTERNAL,
    XPL_ESERVER)
    with its readable sentence in xpl_strerror(), XPL_EPROTO for a reply
    that does not follow the contract, XPL_EINTR when a signal came.

    A client is used by one thread at a time.  */
#ifndef XPL_CLIENT_H_INCLUDED
#define XPL_CLIENT_H_INCLUDED

#include "xpl_curve.h"
#include "xpl_types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xpl_client_t xpl_client_t;

/* Default time to wait for a reply, in milliseconds. */
#define XPL_CLIENT_TIMEOUT_MS 3000

/* Connect a new client to the daemon's query endpoint (e.g.
   XPL_DEFAULT_QUERY_ENDPOINT). Caller owns the client. NULL on error
   (XPL_EINVAL for a malformed endpoint, XPL_EZMQ). */
XPL_EXPORT xpl_client_t *xpl_client_new(const char *endpoint);

/* The same for a daemon that runs with CURVE on: the socket is a CURVE
   client with `curve`'s keys (copied; the caller keeps `curve`), or a
   plain one when curve is NULL. A daemon that does not admit the key
   never answers: calls fail with XPL_ETIMEOUT, whose reason ends with a
   "; CURVE: ..." hint (xpl_curve.h); after a refusal the next call
   connects again, so a key admitted later works with the same client. */
XPL_EXPORT xpl_client_t *xpl_client_new_curve(const char *endpoint, const xpl_curve_t *curve);

/* Close the client and set *self_p to NULL; NULL-safe. */
XPL_EXPORT void xpl_client_destroy(xpl_client_t **self_p);

/* Time to wait for each reply, in ms (> 0), or -1 to wait forever. */
XPL_EXPORT void xpl_client_set_timeout(xpl_client_t *self, int timeout_ms);
XPL_EXPORT int xpl_client_timeout(const xpl_client_t *self);

/* The endpoint the client was created with. */
XPL_EXPORT const char *xpl_client_endpoint(const xpl_client_t *self);

/* Round-trip time of the last successful request, in microseconds. */
XPL_EXPORT double xpl_client_rtt_us(const xpl_client_t *self);

/* Send a request already encoded as msgpack (a map {"v": 1, "op": ...})
   and return the reply's msgpack bytes in *reply (caller owns; free() it)
   and their size in *reply_size. The reply's envelope is checked: when
   the daemon says ok: false this returns -1 with its error, and *reply
   is left NULL. For any op, including ones this library does not know. */
XPL_EXPORT int xpl_client_request(xpl_client_t *self, const void *request, size_t size,
                                  void **reply, size_t *reply_size);

/* Render msgpack bytes (a reply from xpl_client_request, or any msgpack
   object) as one line of JSON. Maps and arrays map over directly; bin is
   a base64 string; a non-finite float is null; a non-string map key is
   rendered to JSON and quoted; invalid UTF-8 becomes U+FFFD. Returns a
   NUL-terminated string the caller owns (free()), or NULL with
   XPL_EPROTO for malformed msgpack. */
XPL_EXPORT char *xpl_json_from_msgpack(const void *data, size_t size);

/* `ping`: is the daemon there? Copies its version string into `version`
   (of `version_size` bytes, may be NULL) and its uptime into *uptime_s
   (may be NULL). */
XPL_EXPORT int xpl_client_ping(xpl_client_t *self, char *version, size_t version_size,
                               double *uptime_s);

/* `models`: every model the daemon knows, with its counters. Caller owns
   the result (xpl_models_destroy). */
XPL_EXPORT xpl_models_t *xpl_client_models(xpl_client_t *self);

/* `schema`: a model's current schema (tokens, features, epoch). Caller
   owns the result (xpl_schema_destroy). XPL_EUNKNOWN_MODEL when the
   daemon has never seen the model. */
XPL_EXPORT xpl_schema_t *xpl_client_schema(xpl_client_t *self, const char *model);

/* `stats`: the daemon's counters, rejections by reason, latency
   percentiles and models. Caller owns the result (xpl_stats_destroy). */
XPL_EXPORT xpl_stats_t *xpl_client_stats(xpl_client_t *self);

/* `trade`: the latest explanation of one trade from the daemon's
   recent-trade cache, with feature names and the full n x n matrices of
   rollout (and grad_rollout). `flow` asks for attention flow to be
   computed on demand. Caller owns the result (xpl_explanation_destroy).
   XPL_ENOT_FOUND when the trade left the cache (or never was). */
XPL_EXPORT xpl_explanation_t *xpl_client_trade(xpl_client_t *self, const char *model,
                                               xpl_id_t id, bool flow);

/* `global`: a model's global state (the Clone pattern's snapshot: the
   reply is exactly the state of glob/ message `seq`). `method` (or NULL
   for all), `target` (or NULL for every class) and `epoch` (or NULL for
   the current one) restrict it. Caller owns the result
   (xpl_global_destroy). XPL_EUNKNOWN_MODEL; XPL_ENOT_FOUND when there is
   no state yet for that epoch or method; XPL_EBAD_ARGUMENT for an
   unknown method. */
XPL_EXPORT xpl_global_t *xpl_client_global(xpl_client_t *self, const char *model,
                                           const char *method, const int64_t *target,
                                           const uint64_t *epoch);

/* `global` of one segment of a model (a label such as "desk=rates"):
   its means, the seq of its glob/<model>/<segment> (the Clone pattern
   per segment), `segment` set; no targets (segments keep no per-class
   means). `segment` NULL is xpl_client_global for the model overall.
   XPL_ENOT_FOUND when the segment is not tracked. Caller owns the
   result. */
XPL_EXPORT xpl_global_t *xpl_client_global_segment(xpl_client_t *self, const char *model,
                                                   const char *method, const char *segment);

/* `drift`: thresholds, each method's drift status and the last alerts of
   a model (`method`, `epoch` as for xpl_client_global). Caller owns the
   result (xpl_drift_state_destroy). */
XPL_EXPORT xpl_drift_state_t *xpl_client_drift(xpl_client_t *self, const char *model,
                                               const char *method, const uint64_t *epoch);

/* `drift` of one segment of a model (a label such as "desk=rates", from
   the segments of an unsegmented reply); `segment` NULL is
   xpl_client_drift. Caller owns the result. */
XPL_EXPORT xpl_drift_state_t *xpl_client_drift_segment(xpl_client_t *self, const char *model,
                                                       const char *method, const char *segment);

/* What the `baseline` query does. */
typedef enum {
    XPL_BASELINE_PIN = 0,       /* the current global mean becomes the drift reference */
    XPL_BASELINE_RESET = 1      /* forget it: the next closed window becomes it */
} xpl_baseline_t;

/* `baseline` for every method of the model's current epoch, or only
   `method`. Returns how many methods changed (>= 0), or -1. */
XPL_EXPORT int xpl_client_baseline(xpl_client_t *self, const char *model, xpl_baseline_t action,
                                   const char *method);

/* `reference`: set an external reference attribution for `method` of the
   model's current epoch (`count` values in feature order, e.g.
   permutation importance). Its Spearman rho with the current global mean
   goes to *spearman (NAN when undefined; may be NULL). XPL_EBAD_ARGUMENT
   when count is not the model's feature count or a value is not finite. */
XPL_EXPORT int xpl_client_reference(xpl_client_t *self, const char *model, const char *method,
                                    const double *values, uint32_t count, double *spearman);

#ifdef __cplusplus
}
#endif

#endif
