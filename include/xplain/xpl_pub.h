/*  xpl_pub: publish contract-v1 ingest messages (topic attn/<model>, or
    shard/<K>/<N>/attn/<model> when sharded) from a C/C++ inference
    server.

    The publisher keeps, per model, the schema (L, H, n, cls, token names)
    and the message counter `seq`; each xpl_pub_send() encodes one batch of
    B trades with msgpack-c and sends it without copying the tensors twice.
    Tensors are given as float32, binary16 (f16) or bfloat16 buffers and
    may be converted to another wire dtype on the way (e.g. float32 in,
    f16 on the wire: half the bytes).

    `cls` and `tokens` go with the first message of a model, with the
    first message after its schema changed, and with the first message
    after a new subscriber (a daemon starting or restarting) subscribed:
    the socket is an XPUB, so the publisher sees subscriptions arrive and
    a late-joining daemon still learns the schema. xpl_pub_wait_subscriber
    lets a program wait for the daemon before its first message (ZeroMQ
    drops what a PUB sends before anyone has subscribed).

    The fused form (proto/ingest.md, "The fused form"): with
    xpl_pub_set_fused the publisher sends, per trade and layer, the head
    means the daemon needs (mean_h A, mean_h max(0, G A)) and the head
    statistics instead of every head, H times fewer bytes, computed from
    the full tensors given to xpl_pub_send; xpl_pub_send_fused sends
    fused arrays computed elsewhere (on the model's GPU).

    The optional keys of proto/ingest.md go in the batch structs: `rel`,
    the relevance tensor lrp_rollout reads (full form only); `targets`,
    several classes explained per trade at once (grad and rel then hold a
    block per target); and `tags`, for the daemon's segments (one set for
    the message, or one per trade).

    Micro-batching, for servers that score trade by trade: with
    xpl_pub_set_batch, trades are held until `batch` are pending or the
    oldest waited `delay_us` (a timer thread then sends them), and go out
    as one message; xpl_pub_flush sends what is pending, and so does
    xpl_pub_destroy. Trades of another model, another form or with other
    optional fields than the pending ones (rel, targets or another list
    of them, tags or none) send the pending ones first; tags are held
    trade by trade (a message of held trades carries them as an array).

    Errors: -1 with XPL_EINVAL for a bad argument (model name, shape,
    missing schema, NULL buffer, rel without grad or in the fused form,
    targets without a gradient or beside target, a tag breaking the
    rules), XPL_EZMQ for a socket failure,
    XPL_ETIMEOUT when no subscriber came in time. A publisher is used by
    one thread at a time (its batch timer takes turns with it).  */
#ifndef XPL_PUB_H_INCLUDED
#define XPL_PUB_H_INCLUDED

#include "xpl_curve.h"
#include "xpl_types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xpl_pub_t xpl_pub_t;

/* Wire dtype: as the buffers given to xpl_pub_send (the default). */
#define XPL_WIRE_AS_GIVEN (-1)

/* Most targets one message may carry per trade (xpl_batch_t.T): the
   upper bound of the daemon's max_trade_targets; the daemon's own limit
   (16 by default) rejects more as `length`. */
#define XPL_PUB_MAX_TARGETS 4096

/* One tag (proto/ingest.md, "Tags"): key 1-32 bytes of [A-Za-z0-9_.-],
   value 1-64 bytes of printable ASCII (space included) other than
   , = " and backslash. */
typedef struct {
    const char *key;
    const char *value;
} xpl_tag_t;

/* A trade's tags: `count` (0..16) pairs, no key twice; count 0 is no
   tags (nil on the wire). */
typedef struct {
    uint32_t count;
    const xpl_tag_t *tags;
} xpl_tags_t;

/* One message: B trades of one model. Nothing is kept after the call.
   Fields after `ts` were added later; zero (a zero-initialised or
   designated-initialiser struct) means what the struct meant before
   them: no rel, one target per trade, no tags. */
typedef struct {
    const char *model;          /* 1-64 bytes of [A-Za-z0-9_.-]; schema set */
    uint32_t B;                 /* trades in this message, >= 1 */
    const xpl_id_t *ids;        /* B trade ids */
    xpl_dtype_t dtype;          /* element type of attn, grad and rel */
    const void *attn;           /* B*L*H*n*n values, order [b][l][h][i][j],
                                   little-endian (host order on x86/ARM) */
    const void *grad;           /* d y_t / d attn, same shape and dtype, or NULL */
    const int64_t *target;      /* B target classes, or NULL */
    const double *y;            /* B model outputs, or NULL */
    int64_t ts;                 /* event time, ns since the Unix epoch; 0 = now */
    const void *rel;            /* relevance of every attention probability
                                   (lrp_rollout), laid out and typed like grad,
                                   or NULL; needs grad; full form only (with
                                   xpl_pub_set_fused on: XPL_EINVAL) */
    uint32_t T;                 /* targets per trade: 0 = none (grad is
                                   [b][l][h][i][j], class in `target`), or
                                   1..XPL_PUB_MAX_TARGETS with `targets` */
    const int64_t *targets;     /* T classes explained at once, or NULL (with
                                   T = 0); needs grad, not with `target`:
                                   grad and rel are then B*T*L*H*n*n values,
                                   [b][t][l][h][i][j], gradient t that of
                                   class targets[t]; the daemon publishes one
                                   xpl/ message per trade and target. Fused
                                   on the way: fgrad [b][t][l][i][j],
                                   head_importance [b][t][l][h] */
    const xpl_tags_t *tags;     /* one set of tags for every trade, or NULL */
    const xpl_tags_t *trade_tags;   /* B sets, trade by trade (count 0: that
                                   trade has none), or NULL; not with tags */
} xpl_batch_t;

/* One message of B pre-fused trades (xpl_pub_send_fused). */
typedef struct {
    const char *model;          /* schema set (L, H, n from it) */
    uint32_t B;
    const xpl_id_t *ids;
    xpl_dtype_t dtype;          /* element type of fattn, fgrad, fgrad_signed */
    const void *fattn;          /* B*L*n*n, [b][l][i][j]: mean_h A */
    const void *fgrad;          /* same: mean_h max(0, G A), or NULL */
    const void *fgrad_signed;   /* same: mean_h G A, or NULL (needs fgrad) */
    const float *head_importance;   /* B*L*H |sum_ij A G|; with fgrad only */
    const float *head_confidence;   /* B*L*H mean_i max_j A */
    const int64_t *target;      /* B, or NULL */
    const double *y;            /* B, or NULL */
    int64_t ts;                 /* 0 = now */
    /* Added later; zero means what it meant before (as in xpl_batch_t). */
    uint32_t T;                 /* targets per trade, 0 = none */
    const int64_t *targets;     /* T classes, or NULL; needs fgrad, not with
                                   `target`: fgrad and fgrad_signed are then
                                   B*T*L*n*n values [b][t][l][i][j] and
                                   head_importance B*T*L*H [b][t][l][h];
                                   fattn and head_confidence stay one per
                                   trade. (The fused form has no rel.) */
    const xpl_tags_t *tags;     /* as in xpl_batch_t */
    const xpl_tags_t *trade_tags;
} xpl_fused_batch_t;

/* A publisher that binds `endpoint` (the daemon then runs with
   --ingest-connect), or connects to it (the daemon runs with
   --ingest-bind). Caller owns the publisher. NULL on error (XPL_EINVAL
   for an endpoint that cannot be bound or connected). */
XPL_EXPORT xpl_pub_t *xpl_pub_new_bind(const char *endpoint);
XPL_EXPORT xpl_pub_t *xpl_pub_new_connect(const char *endpoint);

/* The same for a daemon that runs with CURVE on (whether the publisher
   binds or connects, the daemon is the CURVE server): the socket is a
   CURVE client with `curve`'s keys (copied; the caller keeps `curve`), or
   plain when curve is NULL. A daemon that does not admit the key never
   subscribes: xpl_pub_wait_subscriber times out (XPL_ETIMEOUT with a
   "; CURVE: ..." hint, xpl_curve.h) and what xpl_pub_send sends is
   dropped, as ZeroMQ drops what a PUB sends to nobody. libzmq does not
   retry a refused connection: a connecting publisher must be created
   again once its key is admitted, while one that binds is reached again
   by the daemon (which connects) by itself. */
XPL_EXPORT xpl_pub_t *xpl_pub_new_bind_curve(const char *endpoint, const xpl_curve_t *curve);
XPL_EXPORT xpl_pub_t *xpl_pub_new_connect_curve(const char *endpoint, const xpl_curve_t *curve);

/* Close the publisher, sending what is queued for up to the linger time
   (1 s by default), and set *self_p to NULL; NULL-safe. */
XPL_EXPORT void xpl_pub_destroy(xpl_pub_t **self_p);

/* The endpoint actually bound or connected (a tcp://...:* bind resolved
   to its port). Owned by the publisher. */
XPL_EXPORT const char *xpl_pub_endpoint(const xpl_pub_t *self);

/* Declare (or change) a model's schema: L layers, H heads, n tokens,
   cls the CLS token index or -1, tokens the n token names (copied). A
   change starts a new schema epoch in the daemon; setting the same
   schema again changes nothing. */
XPL_EXPORT int xpl_pub_set_schema(xpl_pub_t *self, const char *model, uint32_t L, uint32_t H,
                                  uint32_t n, int32_t cls, const char *const *tokens);

/* Dtype on the wire: XPL_F32, XPL_F16, XPL_BF16, or XPL_WIRE_AS_GIVEN.
   Conversions round to nearest even. */
XPL_EXPORT int xpl_pub_set_wire_dtype(xpl_pub_t *self, int dtype);

/* Also send cls and tokens with every `messages`-th message of a model
   (0, the default: only when needed, see above). */
XPL_EXPORT void xpl_pub_set_schema_every(xpl_pub_t *self, uint32_t messages);

/* ZeroMQ's send high-water mark, in messages (default 1000): what a PUB
   queues per subscriber before it drops. Applies to subscribers that
   connect afterwards. */
XPL_EXPORT int xpl_pub_set_sndhwm(xpl_pub_t *self, int messages);

/* How long xpl_pub_destroy may spend sending queued messages (ms). */
XPL_EXPORT void xpl_pub_set_linger(xpl_pub_t *self, int linger_ms);

/* Wait until at least one subscriber (a daemon) is subscribed to the
   publisher's messages (with shards: to each shard's), for up to
   timeout_ms (-1: forever). Returns 0 at
   once when one is; a subscriber that went away (daemon stopped) no
   longer counts. XPL_ETIMEOUT when none came, XPL_EINTR on a signal.
   A daemon's unsubscription reaches the publisher asynchronously, after
   it stopped: right after a restart this may still count the stopped
   daemon and return before the new one subscribed (what is sent then is
   lost). To wait for a new subscriber, use xpl_pub_wait_subscriptions. */
XPL_EXPORT int xpl_pub_wait_subscriber(xpl_pub_t *self, int timeout_ms);

/* Subscriptions seen so far: every subscription to the publisher's
   messages (with shards: to some shard's; one that covers several shards
   counts once) that reached it since it was created, duplicates and
   re-subscriptions included. Monotonic: unsubscriptions, sends and the
   batch timer never lower it. Takes in the subscriptions pending on the
   socket first (so call xpl_pub_set_shards before). A daemon subscribes
   once when it starts (with --shard K/N: to its shard's topics). */
XPL_EXPORT uint64_t xpl_pub_subscriptions(xpl_pub_t *self);

/* Wait until xpl_pub_subscriptions exceeds more_than, for up to
   timeout_ms (-1: forever); 0 at once if it does. To wait for a daemon
   that (re)starts, read the count before starting it:

       uint64_t before = xpl_pub_subscriptions(pub);
       ... start the daemon ...
       xpl_pub_wait_subscriptions(pub, before, 5000);

   With shards, for k shard daemons that restart, wait for more than
   before + k - 1. XPL_ETIMEOUT when not enough came, XPL_EINTR on a
   signal. */
XPL_EXPORT int xpl_pub_wait_subscriptions(xpl_pub_t *self, uint64_t more_than, int timeout_ms);

/* Send the fused form (true) or every head (false, the default): the
   full tensors given to xpl_pub_send are fused on the way (head means
   summed in head order in float32, as the daemon sums them, so the
   explanations are bit for bit those of the full form). */
XPL_EXPORT int xpl_pub_set_fused(xpl_pub_t *self, bool fused);

/* Micro-batching: hold trades until `batch` (>= 1; 1, the default, sends
   each xpl_pub_send at once) are pending, or the oldest pending trade
   waited delay_us microseconds (0: only batch and xpl_pub_flush send).
   Pending trades are sent first. */
XPL_EXPORT int xpl_pub_set_batch(xpl_pub_t *self, uint32_t batch, int64_t delay_us);

/* The batch structs grew fields at their end (rel, targets, tags). A
   program compiled with this header calls the _v2 entry points, which
   read them; one compiled before calls xpl_pub_send and
   xpl_pub_send_fused, which read only the fields its smaller struct
   has, so it runs unchanged with this library. */
#define xpl_pub_send xpl_pub_send_v2
#define xpl_pub_send_fused xpl_pub_send_fused_v2

/* Encode and send (or, batching, queue: everything is copied) one batch.
   Returns 0, or -1 (nothing sent or queued). */
XPL_EXPORT int xpl_pub_send(xpl_pub_t *self, const xpl_batch_t *batch);

/* The same for trades already fused. */
XPL_EXPORT int xpl_pub_send_fused(xpl_pub_t *self, const xpl_fused_batch_t *batch);

/* Send the pending trades now. 0 (also when none were pending) or -1. */
XPL_EXPORT int xpl_pub_flush(xpl_pub_t *self);

/* Trades pending (batching). */
XPL_EXPORT uint32_t xpl_pub_pending(const xpl_pub_t *self);

/* The seq the next message of `model` will carry (0 before the first).
   With shards: the messages of `model` sent so far over all shards. */
XPL_EXPORT uint64_t xpl_pub_next_seq(const xpl_pub_t *self, const char *model);

/* Shard the stream over `nshards` daemons (1..4096; 1, the default, is
   no sharding): each trade goes to shard xpl_shard_of(id, nshards), on
   the topic shard/<K>/<N>/attn/<model> that the daemon started with
   --shard K/N subscribes to, so ZeroMQ filters at this publisher and a
   shard never receives another's trades (proto/README.md, "Sharding").
   A batch whose trades belong to several shards is split: one message
   per shard, in shard order, its trades in batch order (copied once);
   a batch on one shard is sent as is. A trade's rel, grad slices and
   tags go with it; `targets` and message-wide tags go whole to every
   shard's message. The same holds for fused batches
   and for what micro-batching holds: trades are queued whatever their
   shard and each message that goes out is split the same way. Each shard
   has its own `seq` and gets `cls`/`tokens` when its daemon
   (re)subscribes, and xpl_pub_wait_subscriber waits until every shard
   has a subscriber.
   When a split batch fails halfway, the shards before the failing one
   were sent. Call before the first xpl_pub_wait_subscriber or
   xpl_pub_send (XPL_EINVAL after). */
XPL_EXPORT int xpl_pub_set_shards(xpl_pub_t *self, uint32_t nshards);

/* The shard count (1 when not sharded). */
XPL_EXPORT uint32_t xpl_pub_shards(const xpl_pub_t *self);

/* The shard (0..nshards-1) that owns a trade id: FNV-1a 64 of the id's
   UTF-8 bytes (str) or decimal digits (uint), then MurmurHash3's
   finaliser, mod nshards. 0 when nshards <= 1. */
XPL_EXPORT uint32_t xpl_shard_of(const xpl_id_t *id, uint32_t nshards);

#ifdef __cplusplus
}
#endif

#endif
