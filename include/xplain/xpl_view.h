/*  xpl_view: a model's global state, kept current for you (the zguide's
    Clone pattern over glob/ and the `global` query, proto/global.md).

    A view runs a background thread that
      1. subscribes to glob/<model> and waits until its SUB socket has
         completed the handshake with the daemon (so the subscription is
         on its way before anything else: zguide issue 818's race is a
         snapshot taken before subscribing, which misses what is sent in
         between);
      2. takes a snapshot with the `global` query (seq S);
      3. applies every glob/ message with a higher seq (each is a whole
         state, so a gap loses nothing: the newer state replaces the older),
         drops those at or below the current seq, and takes a new
         snapshot when the seq goes backwards while the time goes
         forwards (the daemon restarted) and whenever the SUB reconnects
         (what was published while it was away is lost; a daemon that
         restarted with no state for the model clears the view).
    States are immutable and swapped whole under a lock: a reader gets a
    reference to one complete state (never torn, never older than one it
    could have seen before) and keeps it as long as it likes.

    xpl_view_state may be called from any thread; the other functions
    too, except that xpl_view_destroy must not race with them.  */
#ifndef XPL_VIEW_H_INCLUDED
#define XPL_VIEW_H_INCLUDED

#include "xpl_curve.h"
#include "xpl_types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xpl_view_t xpl_view_t;

/* What a view has done so far. */
typedef struct {
    uint64_t version;           /* states made visible (snapshots + updates) */
    uint64_t snapshots;         /* `global` queries answered */
    uint64_t updates;           /* glob/ messages applied */
    uint64_t dropped;           /* glob/ messages at or below the current seq */
    uint64_t gaps;              /* glob/ messages the subscriber never saw (harmless) */
    uint64_t restarts;          /* daemon restarts seen in glob/ seq (re-snapshots) */
    uint64_t reconnects;        /* new connections to the daemon (re-snapshots) */
    bool synced;                /* false while a needed snapshot failed (daemon away) */
    int64_t age_ms;             /* since the current state became visible; -1: none */
} xpl_view_stats_t;

/* Start following `model`: subscribe at `sub_endpoint`, snapshot through
   `query_endpoint`, each step waiting up to timeout_ms (> 0). Returns once
   the first snapshot is taken, or once the daemon said the model has no
   global state yet (the view then fills as soon as it has). Caller owns
   the view. NULL on error: XPL_EINVAL (bad endpoint or model name),
   XPL_ETIMEOUT (daemon unreachable), XPL_EUNKNOWN_MODEL, ... */
XPL_EXPORT xpl_view_t *xpl_view_new(const char *sub_endpoint, const char *query_endpoint,
                                    const char *model, int timeout_ms);

/* The same for a daemon that runs with CURVE on: both sockets are CURVE
   clients with `curve`'s keys (copied; the caller keeps `curve`), or
   plain when curve is NULL. A daemon that does not admit the key makes
   the start fail with XPL_ETIMEOUT after timeout_ms, with a "; CURVE:
   ..." hint in the reason (xpl_curve.h). A view whose key is refused
   later (revoked, then a reconnect) stops being synced. */
XPL_EXPORT xpl_view_t *xpl_view_new_curve(const char *sub_endpoint, const char *query_endpoint,
                                          const char *model, int timeout_ms,
                                          const xpl_curve_t *curve);

/* The same for one segment of the model (a label such as "desk=rates",
   daemon run with --segment-by): the view follows glob/<model>/<segment>
   (its own seq) and snapshots with the `global` query for that segment;
   segment NULL or "" follows the model overall (xpl_view_new_curve).
   Either view applies only its own state: the subscription glob/<model>
   also receives every segment's messages (ZeroMQ matches prefixes). */
XPL_EXPORT xpl_view_t *xpl_view_new_segment(const char *sub_endpoint, const char *query_endpoint,
                                            const char *model, const char *segment,
                                            int timeout_ms, const xpl_curve_t *curve);

/* Stop the thread, close the sockets and set *self_p to NULL; NULL-safe.
   States obtained from the view stay valid until their own destroy. */
XPL_EXPORT void xpl_view_destroy(xpl_view_t **self_p);

/* The current state: a new reference the caller drops with
   xpl_global_destroy. NULL with XPL_ENOT_FOUND when the model has no
   global state (yet, or since the daemon restarted without it). */
XPL_EXPORT xpl_global_t *xpl_view_state(xpl_view_t *self);

/* The current version (xpl_view_stats_t.version), for xpl_view_wait. */
XPL_EXPORT uint64_t xpl_view_version(xpl_view_t *self);

/* Wait until the version is above `version`, for up to timeout_ms (-1:
   forever). 0, or -1 with XPL_ETIMEOUT. */
XPL_EXPORT int xpl_view_wait(xpl_view_t *self, uint64_t version, int timeout_ms);

/* Counters and health of the view. */
XPL_EXPORT void xpl_view_stats(xpl_view_t *self, xpl_view_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif
