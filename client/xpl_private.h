/*  xpl_private: what the libxplain modules share and users never see.

      errors     xpl_fail() sets the thread's error code and reason
      context    one ZeroMQ context for the whole process, created by the
                 first object and terminated with the last
      objects    result objects with an arena: one allocation to free,
                 reference counted, an optional finaliser
      documents  a bounds-checked msgpack document (a flat tree over
                 core/mpr) that decoders query by key
      decoders   msgpack bodies -> the public structs, one class to a file
                 (xpl_schema.c, xpl_explanation.c, ...; their shared
                 helpers in xpl_decode.h/.c)
      encoding   small msgpack-c helpers (xpl_encode.c)
      CURVE      key sets, CURVE client sockets and the watching of their
                 handshakes for the hint of a timeout (xpl_curve.c)  */
#ifndef XPL_PRIVATE_H
#define XPL_PRIVATE_H

#include "xplain/xplain.h"
#include "mpr.h"

#include <msgpack.h>
#include <stdarg.h>
#include <stdatomic.h>

/* ---- errors ---------------------------------------------------------- */

/* Set the calling thread's error and return -1. */
int xpl_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The same, for functions returning a pointer: returns NULL. */
void *xpl_fail_null(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Set the error from a failed ZeroMQ call (zmq_errno), naming `what`. */
int xpl_fail_zmq(const char *what);

/* Clear the calling thread's error (start of an operation that may
   succeed with a NULL result). */
void xpl_clear_error(void);

/* Map a daemon error code ("unknown_model") to XPL_E*. */
int xpl_errno_from_code(const char *code);

/* ---- the process's ZeroMQ context ------------------------------------ */

/* Take a reference to the shared context (created on first use); NULL on
   failure with the error set. Every acquire needs one release. */
void *xpl_ctx_acquire(void);
void xpl_ctx_release(void);

/* Write into ep a fresh "inproc://xpl-<what>-<n>" endpoint (for a socket
   monitor). n comes from a process-wide 64-bit counter, so no name is
   ever handed out twice: libzmq may still hold a closed monitor's name
   for a while after zmq_socket_monitor(sock, NULL, 0), and an address
   (of a freed object) comes back at once. */
void xpl_inproc_endpoint(char *ep, size_t size, const char *what);

/* zmq_socket and zmq_socket_monitor (which opens a socket too), waiting
   out a context that is full only of closed sockets: libzmq frees a
   closed socket's slot (and its file descriptor) when its reaper thread
   gets to it, so a program that closes and opens objects in a loop would
   otherwise see EMFILE now and then while it holds only a few. */
void *xpl_socket(void *ctx, int type);
int xpl_socket_monitor(void *sock, const char *ep, int events);

/* Milliseconds on a monotonic clock. */
int64_t xpl_now_ms(void);

/* ---- result objects -------------------------------------------------- */

/* Allocate a zeroed public struct of `size` bytes with a hidden header
   (arena, reference count, finaliser). NULL with XPL_ENOMEM. */
void *xobj_new(size_t size);

/* Allocate `size` zeroed bytes that live as long as `obj` (16-aligned).
   NULL with XPL_ENOMEM. */
void *xobj_alloc(void *obj, size_t size);

/* Copy `len` bytes as a NUL-terminated string owned by `obj`. */
char *xobj_strndup(void *obj, const void *s, size_t len);

/* Called once, when the last reference is dropped, before the memory is
   freed (to drop references the object holds). */
void xobj_set_fini(void *obj, void (*fini)(void *obj));

/* Take a reference; returns obj. */
void *xobj_ref(const void *obj);

/* Drop a reference (free on the last) and set *obj_p to NULL. */
void xobj_unref(void *obj_p);

/* ---- msgpack documents ----------------------------------------------- */

/* A node of a parsed document: the mpr object and the number of nodes in
   its subtree, itself included. The children of an array or map follow
   it in order (a map's as key, value, key, value, ...). */
typedef struct {
    mpr_obj_t o;
    uint32_t span;
} xnode_t;

typedef struct {
    xnode_t *nodes;             /* nodes[0] is the root */
    uint32_t count;
} xdoc_t;

/* Parse one msgpack object filling exactly `len` bytes (views into buf,
   which must outlive the document). Nesting is limited to 32 levels.
   Returns 0, or -1 with XPL_EPROTO naming `what`. */
int xdoc_parse(xdoc_t *d, const void *buf, size_t len, const char *what);
void xdoc_free(xdoc_t *d);

static inline const xnode_t *xn_first(const xnode_t *n) { return n + 1; }
static inline const xnode_t *xn_next(const xnode_t *n) { return n + n->span; }

/* Number of children of an array, or pairs of a map. */
static inline uint32_t xn_count(const xnode_t *n) { return n->o.v.count; }

/* Value of `key` in a map with string keys; NULL when absent or when
   `map` is not a map. */
const xnode_t *xn_get(const xnode_t *map, const char *key);

/* Typed readers: 0 when the node has the type (integers accepted as
   floats; any non-negative integer as uint), -1 otherwise. */
int xn_uint(const xnode_t *n, uint64_t *out);
int xn_int(const xnode_t *n, int64_t *out);
int xn_num(const xnode_t *n, double *out);
int xn_bool(const xnode_t *n, bool *out);
bool xn_is(const xnode_t *n, mpr_type_t t);

/* ---- decoders (xpl_decode.c and one file per class) ------------------- */

/* Check the common reply envelope {"v": 1, "ok": ...}. Returns 0 for
   ok: true; -1 with the daemon's error (code mapped to XPL_E*, its
   sentence as the reason) for ok: false, or XPL_EPROTO. */
int xpl_reply_check(const xdoc_t *d, const char *op);

/* Decoders from a parsed body. Each returns a new object or NULL with
   XPL_EPROTO (or XPL_ENOMEM) naming `what` and the offending key. */
xpl_schema_t *xpl_decode_schema(const xnode_t *root, const char *what);
xpl_explanation_t *xpl_decode_explanation(const xnode_t *root, bool trade, const char *what);
xpl_models_t *xpl_decode_models(const xnode_t *root, const char *what);
xpl_stats_t *xpl_decode_stats(const xnode_t *root, const char *what);
xpl_global_t *xpl_decode_global(const xnode_t *root, const char *what);
xpl_drift_t *xpl_decode_drift(const xnode_t *root, const char *what);
xpl_heads_t *xpl_decode_heads(const xnode_t *root, const char *what);
xpl_drift_state_t *xpl_decode_drift_state(const xnode_t *root, const char *what);

/* Attach a schema reference (and its feature names) to an explanation
   whose epoch matches; no-op when schema is NULL or does not match. */
void xpl_explanation_attach(xpl_explanation_t *e, const xpl_schema_t *schema);

/* ---- subscriber internals (xpl_sub.c) --------------------------------- */

/* A subscriber without feature names (a CURVE client with `curve`'s keys
   unless NULL) whose SUB socket reports `events` (ZMQ_EVENT_*) on
   *monitor, a PAIR the caller reads and, after xpl_sub_stop_monitor,
   closes before destroying the subscriber. The monitor is wired before
   the SUB connects, so the first handshake is never missed. */
xpl_sub_t *xpl_sub_new_monitored(const char *sub_endpoint, const xpl_curve_t *curve,
                                 void **monitor, int events);

/* Stop the SUB's monitor (no more events are sent to *monitor after). */
void xpl_sub_stop_monitor(xpl_sub_t *self);

/* ---- CURVE (xpl_curve.c) -------------------------------------------- */

struct xpl_curve_t {
    char public_key[XPL_CURVE_KEY_LEN + 1];     /* this client's, Z85 */
    char secret_key[XPL_CURVE_KEY_LEN + 1];
    char server_key[XPL_CURVE_KEY_LEN + 1];     /* the daemon's public key */
};

/* A copy of a key set (NULL for NULL, or with XPL_ENOMEM). */
xpl_curve_t *xpl_curve_dup(const xpl_curve_t *curve);

/* The outcome of a socket's last CURVE handshake. */
enum { XPL_HS_NONE = 0, XPL_HS_OK = 1, XPL_HS_REFUSED = 2 };

/* What a CURVE client socket's handshakes said, read from its monitor. */
typedef struct {
    bool curve;                 /* the socket is a CURVE client */
    void *mon;                  /* PAIR reading the socket's monitor, or NULL */
    int last;                   /* XPL_HS_* of the last handshake */
    int status;                 /* the ZAP status of a refusal (400) */
} xpl_hs_t;

/* Make `sock` (of context `ctx`) a CURVE client with `curve`'s keys, or
   leave it plain when curve is NULL; with `hs`, also watch its handshakes
   (hs is reset either way). Call before connect or bind. 0, or -1 with
   the error set naming `what`. */
int xpl_curve_apply(void *ctx, void *sock, const xpl_curve_t *curve, xpl_hs_t *hs,
                    const char *what);

/* Read one event of a handshake monitor (ZMQ_EVENT_HANDSHAKE_SUCCEEDED /
   _FAILED_AUTH), waiting up to timeout_ms: XPL_HS_OK, XPL_HS_REFUSED (with
   the ZAP status in *status), XPL_HS_NONE for another event, -1 for none. */
int xpl_hs_event(void *monitor, long timeout_ms, int *status);

/* Has the daemon refused the key in the last handshake? (Reads what the
   monitor has.) */
bool xpl_hs_refused(xpl_hs_t *hs);

/* The suffix for the reason of a timeout: "" without CURVE or after a
   successful handshake, else "; CURVE: ..." saying whether the daemon
   refused the key. Reads what the monitor has. Valid until the next call
   in this thread. */
const char *xpl_hs_hint(xpl_hs_t *hs);
const char *xpl_curve_hint(bool curve, int last, int status);

/* Stop watching `sock` (may be NULL) and close the monitor reader; call
   before closing the socket. */
void xpl_hs_close(xpl_hs_t *hs, void *sock);

/* ---- encoding (xpl_encode.c) ------------------------------------------ */

/* msgpack-c packer helpers over an sbuffer. */
void xpk_str(msgpack_packer *pk, const char *s);
void xpk_key(msgpack_packer *pk, const char *key);
void xpk_id(msgpack_packer *pk, const xpl_id_t *id);

/* True when `s` is a valid model name (1-64 bytes of [A-Za-z0-9_.-]). */
bool xpl_model_name_ok(const char *s);

#endif
