/*  models: the table of models the daemon has seen, their schemas and
    schema epochs, their publisher sequence tracking and their counters.

    The table is bounded (max_models); a model, once added, lives until
    the daemon stops, so other modules may keep model_t pointers and the
    model's stable `index`. A model keeps the schemas of its last
    MODEL_EPOCHS_KEPT epochs, so that state of an old epoch can still be
    reported with the feature names it refers to.  */
#ifndef XPLD_MODELS_H
#define XPLD_MODELS_H

#include "snap.h"
#include "wire.h"
#include "xmath.h"

#include <stdbool.h>
#include <stdint.h>

#define MODEL_EPOCHS_KEPT 8

/* One schema epoch: the shape, the names of its tokens and its feature
   groups (groups.h). Without groups the features are the tokens without
   CLS; with them, a group is one feature under the group's name, standing
   where its lowest token stands. Everything the daemon aggregates,
   ranks, publishes and saves is per feature: nf values. */
typedef struct {
    uint32_t epoch;         /* 1, 2, ... */
    xm_shape_t shape;
    char **tokens;          /* n names */
    const char **features;  /* nf names */
    uint32_t nf;
    bool grouped;           /* gmap and gnames are set */
    xm_groups_t gmap;       /* readout position -> feature */
    char **gnames;          /* [nf] a group's name (owned), NULL for a lone token */
    uint32_t ngroups;       /* features that are groups */
    float *gout;            /* ingest's per-feature sums of one trade */
    size_t gcap;            /* floats at gout */
} schema_t;

/* Feature f's k-th token index (0..n-1) of a grouped schema. */
static inline uint32_t
schema_feature_token(const schema_t *s, uint32_t f, uint32_t k)
{
    uint32_t p = s->gmap.pos[s->gmap.first[f] + k];
    return s->shape.cls >= 0 && p >= (uint32_t)s->shape.cls ? p + 1 : p;
}

typedef struct {
    char name[WIRE_MODEL_MAX + 1];
    uint32_t name_len;
    uint32_t index;                 /* position in the table, stable */
    char topic_xpl[WIRE_MODEL_MAX + 8];
    uint32_t topic_xpl_len;

    schema_t *schemas[MODEL_EPOCHS_KEPT];   /* ring by epoch */
    schema_t *cur;                  /* current schema (set for every model in the table) */
    xm_dtype_t last_dtype;

    bool seq_known;
    uint64_t last_seq;
    uint64_t unsequenced;           /* rejected since, seq unreadable */
    int64_t last_ts;

    uint64_t received, trades, explained, rejected, lost, restarts;
    uint64_t xpl_seq;               /* next seq on xpl/<model> */
    uint64_t flow_counter;          /* trades seen, for flow sampling */

    /* Schema changes allowed (a token bucket: per-minute rate, as many in
       a burst) and when it was last refilled. */
    double epoch_budget;
    int64_t epoch_budget_ns;
} model_t;

typedef struct {
    model_t **items;
    uint32_t count, max;
} models_t;

int models_init(models_t *m, uint32_t max_models);
void models_destroy(models_t *m);

/* Find a model by name; NULL when unknown. */
model_t *models_find(const models_t *m, const void *name, size_t len);

/* Add a model (name already validated); NULL when the table is full or
   memory runs out. A model stays in the table only once it has a schema:
   the caller drops it again (models_drop_last) when its first message is
   refused, so every model listed has one (md->cur is never NULL). */
model_t *models_add(models_t *m, const void *name, size_t len);

/* Remove the model models_add just returned (it must be the last one). */
void models_drop_last(models_t *m, model_t *md);

/* Track the publisher's seq: returns the number of messages lost (0 when
   in order), not counting messages received since the last seq whose own
   seq could not be read; sets *restart when seq went back. */
uint64_t model_track_seq(model_t *md, uint64_t seq, bool *restart);

/* Resolve the schema of an ingest message for this model, starting a new
   epoch when the shape, CLS or tokens changed. Returns XR_OK (and
   *new_epoch), XR_NO_SCHEMA (with a detail in `why`) or XR_INTERNAL. */
xr_reason_t model_apply_schema(model_t *md, const wire_ingest_t *in, bool *new_epoch,
                               char *why, size_t wlen);

/* As model_apply_schema, but a new epoch (the first schema included) is
   allowed at most `per_min` times per minute, with a burst of as many
   (0: no limit); past that the message is refused as XR_SCHEMA_RATE and
   changes nothing. `now_ns` is a monotonic clock. A
   model whose schema flaps keeps its current epoch, global state and
   drift windows instead of restarting them on every message. */
xr_reason_t model_apply_schema_limited(model_t *md, const wire_ingest_t *in, uint32_t per_min,
                                       int64_t now_ns, bool *new_epoch, char *why, size_t wlen);

/* Install a schema read back from a snapshot: `n` token names (copied)
   for `epoch`, made current when `current`. Returns 0 or -1 (out of
   memory, or a shape the names do not fit). */
int model_restore_schema(model_t *md, uint32_t epoch, const xm_shape_t *shape,
                         const wire_sv_t *tokens, bool current);

/* As model_restore_schema, with the schema's feature groups (ngroups 0:
   none), resolved against the tokens; -1 when they do not resolve. */
int model_restore_schema_groups(model_t *md, uint32_t epoch, const xm_shape_t *shape,
                                const wire_sv_t *tokens, const xm_group_def_t *groups,
                                uint32_t ngroups, bool current);

/* Read a schema's groups as saved and sent ({name: [token, ...]}, as
   enc_groups writes them) for a schema of n tokens: definitions whose
   names point into the reader's bytes; the caller frees *defs and *toks
   (also on failure). */
int model_groups_read(snap_rd_t *d, uint32_t n, xm_group_def_t **defs, xm_str_t **toks,
                      uint32_t *count);

/* Schema of a given epoch if still kept, else NULL. */
const schema_t *model_schema(const model_t *md, uint32_t epoch);

#endif
