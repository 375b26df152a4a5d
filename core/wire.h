/*  wire: contract v1 ingest decoding and the rejection vocabulary.

    wire_decode_ingest() turns the two frames of an `attn/<model>` message
    into a view: tensors, strings and ids point into the message bytes;
    nothing is copied or allocated once the decoder's small arrays have
    grown to the largest batch seen. Every way a message can be wrong has a
    named reason (xr_reason_t), shared by the daemon's counters, its logs,
    the `stats` query and the metrics endpoint.  */
#ifndef XPL_WIRE_H
#define XPL_WIRE_H

#include "groups.h"
#include "mpr.h"
#include "xmath.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WIRE_VERSION 1
#define WIRE_MODEL_MAX 64

/* Why a message was rejected. Values are stable (used as array indices
   and exported in metrics by name). */
typedef enum {
    XR_OK = 0,
    XR_FRAMES,          /* not exactly two frames */
    XR_TOPIC,           /* topic is not attn/<model>, or differs from "model" */
    XR_MSGPACK,         /* truncated or invalid msgpack, trailing bytes */
    XR_NOT_MAP,         /* body is not a map with string keys */
    XR_VERSION,         /* "v" missing or not 1 */
    XR_MISSING_KEY,     /* a required key is absent */
    XR_WRONG_TYPE,      /* a key holds the wrong msgpack type */
    XR_DUPLICATE_KEY,   /* a key appears twice */
    XR_MODEL_NAME,      /* model name not 1-64 bytes of [A-Za-z0-9_.-] */
    XR_DTYPE,           /* dtype not f32, f16 or bf16 */
    XR_SHAPE,           /* L, H or n zero or above the limits; bad cls */
    XR_TOO_LARGE,       /* B*L*H*n*n above the configured maximum */
    XR_SIZE,            /* bin length differs from B*L*H*n*n*elem */
    XR_LENGTH,          /* ids / target / y / tokens count wrong */
    XR_BAD_STRING,      /* string not UTF-8, too long, or holding a NUL */
    XR_NONFINITE,       /* NaN or Inf in a tensor */
    XR_NOT_ALLOWED,     /* model not in the configured allow-list */
    XR_TOO_MANY_MODELS, /* model table full */
    XR_NO_SCHEMA,       /* cls/tokens never given for this model */
    XR_INTERNAL,        /* out of memory while explaining */
    XR_ATTENTION,       /* an attention row is not a probability distribution */
    XR_SCHEMA_RATE,     /* the model's schema changes faster than allowed */
    XR_FUSED_FORM,      /* the fused form mixed with the full one, or incomplete */
    XR_NEEDS_HEADS,     /* a fused message to a daemon whose options need every head */
    /* Feature groups (groups.h): each refusal of a schema's groups. */
    XR_GROUP_UNKNOWN_TOKEN,     /* a group names a token the schema does not have */
    XR_GROUP_TOKEN_TWICE,       /* a token in two groups, or twice in one */
    XR_GROUP_CLS_TOKEN,         /* a group names the CLS token */
    XR_GROUP_EMPTY,             /* a group with no token */
    XR_GROUP_DUP_NAME,          /* two features with one name */
    XR_GROUP_DUP_TOKEN_NAME,    /* groups, and the schema names two tokens alike */
    XR_NREASONS
} xr_reason_t;

/* Stable snake_case name of a reason ("size", "nonfinite", ...). */
const char *xr_reason_name(xr_reason_t r);

typedef struct {
    const uint8_t *ptr;
    uint32_t len;
} wire_sv_t;

/* A trade id: a string (view) or an unsigned integer. */
typedef struct {
    bool is_str;
    uint64_t u;
    wire_sv_t s;
} wire_id_t;

typedef struct {
    uint32_t max_batch;     /* B */
    uint32_t max_layers;    /* L */
    uint32_t max_heads;     /* H */
    uint32_t max_tokens;    /* n */
    uint64_t max_elems;     /* B*L*H*n*n */
    uint32_t max_str;       /* bytes of an id or token string */
    uint32_t max_targets;   /* T, entries of "targets" (0: the default, 16) */
    uint32_t max_groups;    /* entries of "groups" (0: max_tokens); their
                               tokens together at most max_tokens */
    bool fused;             /* accept the fused form (the default); when
                               false a fused message is what it is to an
                               older daemon: missing_key (no attn) */
} wire_limits_t;

/* A decoded ingest message: a view into the message bytes and into the
   decoder's arrays, valid until the next decode or the message is freed. */
typedef struct {
    wire_sv_t model;
    bool has_seq;           /* seq decoded (set even if the message is rejected later) */
    uint64_t seq;
    int64_t ts;
    uint32_t B;
    xm_shape_t shape;       /* shape.cls valid only when has_cls */
    bool has_cls;
    xm_dtype_t dtype;
    const uint8_t *attn;    /* B*L*H*n*n values (NULL in the fused form) */
    const uint8_t *grad;    /* same, or NULL */
    const uint8_t *rel;     /* same as grad (only with grad), or NULL;
                               never in the fused form */
    /* Several targets per trade: grad (and rel) hold T blocks per trade,
       [b][t][l][h][i][j], target t's class targets[t]; ntargets 0 when
       the message has no "targets" (one gradient per trade). In the fused
       form fgrad, fgrad_signed ([b][t][l][i][j]) and head_importance
       ([b][t][l][h]) hold the T blocks. */
    const int64_t *targets;
    uint32_t ntargets;
    size_t trade_bytes;     /* bytes of one trade's tensor: L*H*n*n*elem
                               (fused form: L*n*n*elem); one target's
                               block of grad, rel, fgrad or fgrad_signed */
    /* The fused form (proto/ingest.md, "The fused form"): instead of attn
       and grad, per trade and layer the head means M_l = mean_h A_l, and
       optionally P_l = mean_h max(0, G_l A_l) and S_l = mean_h G_l A_l
       (each B*L*n*n values of `dtype`, times T for P and S), with the
       head statistics as little-endian float32 [B][L][H] ([B][T][L][H]
       for the importance). */
    bool fused;
    const uint8_t *fattn;   /* M, B*L*n*n */
    const uint8_t *fgrad;   /* P, or NULL */
    const uint8_t *fgrad_signed; /* S, or NULL (only with fgrad) */
    const uint8_t *head_importance; /* B*T*L*H f32, with fgrad only */
    const uint8_t *head_confidence; /* B*L*H f32 */
    size_t trade_head_bytes; /* L*H*4: one block of head_confidence or
                                (per target) head_importance */
    const wire_id_t *ids;   /* B */
    const int64_t *target;  /* B, or NULL */
    const double *y;        /* B, or NULL */
    const wire_sv_t *tokens;/* n, or NULL */
    /* Feature groups (only with tokens and cls): has_groups when the
       message has "groups" (an empty one included: no groups); the
       definitions (views into the message) and their resolved map. */
    bool has_groups;
    const xm_group_def_t *groups;
    uint32_t ngroups;
    const xm_groups_t *gmap; /* resolved against tokens and cls; NULL
                                when ngroups is 0 */
    const uint8_t *tags;    /* the checked msgpack `tags` value (segment.h's
                               seg_iter reads it), or NULL: none or nil */
    size_t tags_len;
} wire_ingest_t;

typedef struct {
    wire_limits_t lim;
    wire_id_t *ids;
    int64_t *target;
    double *y;
    uint32_t cap_batch;
    wire_sv_t *tokens;
    uint32_t cap_tokens;
    int64_t *targets;
    uint32_t cap_targets;
    xm_group_def_t *gdefs;  /* groups: definitions, */
    xm_str_t *gtoks;        /* their tokens back to back, */
    xm_str_t *gnames;       /* the message's token names, */
    uint32_t cap_gdefs, cap_gtoks, cap_gnames;
    xm_groups_t gmap;       /* and the resolved map (freed by the next decode) */
    char detail[192];       /* why the last decode failed */
} wire_decoder_t;

/* Safe defaults for the limits. */
void wire_limits_default(wire_limits_t *lim);

/* Bytes of the largest body frame the limits admit: attn, grad and rel of
   max_elems f32 values each, plus every other field at its largest
   (ids, target, y, tokens, the scalar keys) and their msgpack headers.
   Any larger frame cannot be a valid message: the daemon derives ZeroMQ's
   per-frame limit (ZMQ_MAXMSGSIZE) from it. */
uint64_t wire_max_body(const wire_limits_t *lim);

/* Where an attention tensor first fails to be row-stochastic. */
typedef struct {
    uint32_t l, h, i;       /* layer, head, query row */
    float sum;              /* the row's sum */
    float min;              /* its smallest value */
} wire_attn_bad_t;

/* Check that every row a[l][h][i][:] of one trade's attention (L*H*n*n
   values of `dtype`, any alignment) is a probability distribution within
   `tol`: every value >= -tol and the row sums to 1 within tol, or, a fully
   masked row, sums to 0 within tol. Returns true when all rows pass;
   otherwise false with the first failing row in *bad (when not NULL).
   A row holding NaN or Inf passes here: the finiteness check names it.
   A fast float32 pass (row sums in eight lanes, one minimum) accepts; a
   row-by-row pass in double decides and names the first failing row only
   when the fast pass saw something wrong. No allocation. */
bool wire_attn_rows_ok(const xm_shape_t *shape, xm_dtype_t dtype, const void *attn, float tol,
                       wire_attn_bad_t *bad);

/* The fused form's counterpart of wire_attn_rows_ok for trade b of a
   decoded fused message: every row of M (L*n rows) is a distribution
   within tol, every head_confidence (the mean of row maxima of
   distributions) lies in [-tol, 1 + tol], and every head_importance (an
   absolute value) is >= -tol. False with *bad naming the first failure:
   an M row as (l, h = 0, i, sum, min); a head statistic as (l, h,
   i = UINT32_MAX, sum = the value, min = 0). NaN and Inf pass here, as
   there: xm_explain_fused names them. No allocation. */
bool wire_fused_trade_ok(const wire_ingest_t *in, uint32_t b, float tol, wire_attn_bad_t *bad);

/* Initialise a decoder in caller storage; wire_decoder_destroy frees its
   arrays. */
void wire_decoder_init(wire_decoder_t *d, const wire_limits_t *lim);
void wire_decoder_destroy(wire_decoder_t *d);

/* Decode one ingest message from its topic frame and body frame. Returns
   XR_OK with *out filled, or a reason with wire_detail() saying more. */
xr_reason_t wire_decode_ingest(wire_decoder_t *d, const void *topic, size_t topic_len,
                               const void *body, size_t body_len, wire_ingest_t *out);

/* Human-readable detail of the last failed decode. */
static inline const char *
wire_detail(const wire_decoder_t *d)
{
    return d->detail;
}

/* True when `name` (len bytes) is a valid model name. */
bool wire_model_name_ok(const void *name, size_t len);

/* True when `len` bytes at `s` are well-formed UTF-8. */
bool wire_utf8_ok(const void *s, size_t len);

/* Dtype name to enum, -1 when unknown; and back. */
int wire_dtype_parse(const void *s, size_t len);
const char *wire_dtype_name(xm_dtype_t d);

#endif
