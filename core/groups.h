/*  groups: feature groups of a schema (MATH.md, "Feature groups").

    A schema names its n tokens; a group maps several tokens to one
    feature (a categorical column embedded as several tokens, a timestamp
    split in parts). A feature's attribution is the sum of its tokens'
    values after the readout. Tokens named by no group are features of
    their own, so a schema without groups (or with singleton groups only)
    explains exactly what the readout does.

    Feature order: each feature stands where its lowest-indexed token
    stands in token order. A group's name is its feature's name; an
    ungrouped token's name is its feature's name.

    Rejected, with a named reason: a group naming a token the schema does
    not have, a token in two groups (or twice in one), a group naming the
    CLS token (it has no attribution), a group with no token, two
    features with one name. The ingest decoder (wire.c) resolves a
    message's "groups" with xm_groups_build; the daemon sums each trade's
    vectors with xm_groups_apply.  */
#ifndef XPL_GROUPS_H
#define XPL_GROUPS_H

#include "xmath.h"

#include <stddef.h>
#include <stdint.h>

/* A byte string (not NUL-terminated), as names arrive off the wire. */
typedef struct {
    const char *ptr;
    uint32_t len;
} xm_str_t;

typedef struct {
    xm_str_t name;              /* the feature's name */
    const xm_str_t *tokens;     /* names of its tokens */
    uint32_t ntokens;
} xm_group_def_t;

typedef enum {
    XM_GROUP_OK = 0,
    XM_GROUP_UNKNOWN_TOKEN = 1,     /* names a token the schema does not have */
    XM_GROUP_TOKEN_TWICE = 2,       /* a token in two groups, or twice in one */
    XM_GROUP_CLS_TOKEN = 3,         /* names the CLS token */
    XM_GROUP_EMPTY = 4,             /* a group with no token */
    XM_GROUP_DUP_NAME = 5,          /* two features with one name */
    XM_GROUP_DUP_TOKEN_NAME = 6,    /* the schema names two tokens alike */
    XM_GROUP_EARG = 7,              /* shape out of range */
    XM_GROUP_ENOMEM = 8
} xm_group_err_t;

/* Where a refusal points: the group and its token (index into that
   group's tokens), each -1 when it does not apply. */
typedef struct {
    int32_t group;
    int32_t token;
} xm_group_where_t;

/* The resolved map from readout positions to features. */
typedef struct {
    uint32_t npos;          /* readout positions: xm_nfeat(shape) */
    uint32_t nfeat;         /* features */
    uint32_t *feat_of;      /* [npos] feature of each readout position */
    int32_t *group_of;      /* [nfeat] group definition index, -1 for a lone token */
    uint32_t *token_of;     /* [nfeat] lowest token index (0..n-1) of each feature */
    uint32_t *first;        /* [nfeat + 1] feature f's positions are */
    uint32_t *pos;          /* pos[first[f] .. first[f+1]), ascending */
} xm_groups_t;

/* Stable name of a reason ("group_unknown_token", ...), for logs and
   rejection messages. */
const char *xm_group_strerror(xm_group_err_t e);

/* Resolve `ngroups` definitions against the schema's `shape->n` token
   names (token order, CLS included). On success fills *out (free with
   xm_groups_free); on refusal *out is empty and *where (may be NULL)
   says where. */
xm_group_err_t xm_groups_build(const xm_shape_t *shape, const xm_str_t *tokens,
                               const xm_group_def_t *groups, uint32_t ngroups,
                               xm_groups_t *out, xm_group_where_t *where);

/* The groups of a plain map: feat_of[k] is the feature of readout
   position k (0 .. nfeat-1, every feature used). For callers that have
   resolved names already; XM_GROUP_EARG when the map is not onto. */
xm_group_err_t xm_groups_from_map(uint32_t npos, const uint32_t *feat_of, uint32_t nfeat,
                                  xm_groups_t *out);

/* out[f] = sum of in[k] over the positions k of feature f (ascending k,
   in double, rounded once to float), for `count` vectors of npos values
   back to back (T targets) into `count` vectors of nfeat values. No
   allocation. */
void xm_groups_apply(const xm_groups_t *g, const float *in, uint32_t count, float *out);

/* Free the arrays of *g and empty it; safe on an empty one. */
void xm_groups_free(xm_groups_t *g);

#endif
