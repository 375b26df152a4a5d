/*  xpl_sub: subscribe to what xplaind publishes (PUB socket):
    explanations, global state, drift windows, head statistics.

    A subscriber holds one SUB socket connected to the daemon's publish
    endpoint and, optionally, a query client used to fetch feature names:
    explanations carry only the schema `epoch`, so the subscriber asks the
    `schema` query once per model and epoch, caches the answer, and
    attaches it to every explanation of that epoch (a shared reference,
    no copy). When the query endpoint is NULL, or the query fails, the
    explanation comes without feature names (features == NULL); a failed
    schema query is retried at most once a second per model, so a daemon
    that does not answer queries cannot stall the stream.

    ZeroMQ topics are prefixes ("xpl/m1" also matches "xpl/m10"); the
    subscriber filters on the exact model name, so only what was asked for
    comes out. Messages that do not follow the contract are skipped and
    counted (xpl_sub_malformed), never returned and never fatal. To follow
   a model's global state, xpl_view (the Clone pattern) is simpler than
   subscribing to glob/ by hand.

    A subscriber is used by one thread at a time.  */
#ifndef XPL_SUB_H_INCLUDED
#define XPL_SUB_H_INCLUDED

#include "xpl_client.h"
#include "xpl_types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xpl_sub_t xpl_sub_t;

/* What to subscribe to (bit set). */
typedef enum {
    XPL_KIND_XPL = 1,           /* xpl/<model>: per-trade explanations */
    XPL_KIND_GLOB = 2,          /* glob/<model>: whole global state; also
                                   glob/<model>/<segment>, a segment's
                                   (xpl_global_t.segment set) */
    XPL_KIND_DRIFT = 4,         /* drift/<model>: a closed drift window; also
                                   drift/<model>/<segment> (xpl_drift_t.segment) */
    XPL_KIND_HEADS = 8,         /* heads/<model>: head statistics */
    XPL_KIND_ALL = 15
} xpl_kind_t;

/* One received message. Exactly the member matching `kind` is set; it is
   owned by the event. To keep it beyond the event, take it: copy the
   pointer and set the member to NULL before xpl_event_destroy. */
typedef struct {
    xpl_kind_t kind;
    const char *model;          /* owned by the event */
    uint64_t seq;               /* the topic's publish counter */
    xpl_explanation_t *explanation;     /* XPL_KIND_XPL */
    xpl_global_t *global;               /* XPL_KIND_GLOB */
    xpl_drift_t *drift;                 /* XPL_KIND_DRIFT */
    xpl_heads_t *heads;                 /* XPL_KIND_HEADS */
} xpl_event_t;

/* Free an event (and the members still in it); sets *self_p to NULL. */
XPL_EXPORT void xpl_event_destroy(xpl_event_t **self_p);

/* Connect a subscriber to `sub_endpoint` (e.g. XPL_DEFAULT_SUB_ENDPOINT).
   `query_endpoint` is used for feature names, or NULL for none. It
   subscribes to nothing yet. Caller owns it. NULL on error. */
XPL_EXPORT xpl_sub_t *xpl_sub_new(const char *sub_endpoint, const char *query_endpoint);

/* The same for a daemon that runs with CURVE on: the SUB socket and the
   query client for feature names are CURVE clients with `curve`'s keys
   (copied; the caller keeps `curve`), or plain when curve is NULL. A
   daemon that does not admit the key sends nothing: xpl_sub_recv times
   out (XPL_ETIMEOUT, with a "; CURVE: ..." hint in the reason, see
   xpl_curve.h), and since libzmq does not reconnect after a refusal, a
   refused subscriber must be created again once the key is admitted. */
XPL_EXPORT xpl_sub_t *xpl_sub_new_curve(const char *sub_endpoint, const char *query_endpoint,
                                        const xpl_curve_t *curve);

/* Close the subscriber and set *self_p to NULL; NULL-safe. */
XPL_EXPORT void xpl_sub_destroy(xpl_sub_t **self_p);

/* Subscribe to the `kinds` (XPL_KIND_* bits) of one model, or of every
   model when `model` is NULL. May be called several times. Messages
   published before the subscription reached the daemon are not seen
   (ZeroMQ pub-sub). Returns 0 or -1 (XPL_EINVAL for a bad model name or
   no kind). */
XPL_EXPORT int xpl_sub_subscribe(xpl_sub_t *self, unsigned kinds, const char *model);

/* Receive the next message that was subscribed to, waiting up to
   timeout_ms (-1: forever, 0: only what is already here). Caller owns
   the event. NULL with XPL_ETIMEOUT when none came, XPL_EINTR on a
   signal, XPL_EZMQ. */
XPL_EXPORT xpl_event_t *xpl_sub_recv(xpl_sub_t *self, int timeout_ms);

/* Messages lost between the daemon and this subscriber so far (gaps in
   each topic's seq, e.g. when the subscriber was too slow for the
   daemon's send high-water mark). */
XPL_EXPORT uint64_t xpl_sub_lost(const xpl_sub_t *self);

/* Messages skipped because they did not follow the contract, and the
   reason for the last one ("" when none). */
XPL_EXPORT uint64_t xpl_sub_malformed(const xpl_sub_t *self);
XPL_EXPORT const char *xpl_sub_last_malformed(const xpl_sub_t *self);

/* The query client used for schemas (owned by the subscriber), or NULL;
   e.g. to change its timeout. */
XPL_EXPORT xpl_client_t *xpl_sub_client(xpl_sub_t *self);

#ifdef __cplusplus
}
#endif

#endif
