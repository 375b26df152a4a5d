/*  snap: what every owner of durable state uses to write and read its
    own snapshot record (agg_save/agg_load, drift_save/drift_load, the
    daemon's global epoch and model records), the way Redis pairs
    rdbSave<Type> with rdbLoad<Type>.

    A record is a msgpack map with named fields, so a reader finds a field
    by its name, a field it does not know is skipped, and a missing one is
    named in the error. Format 1 (the first daemon's snapshots) wrote
    positional arrays; each owner's load still reads that layout when told
    `ver` is SNAP_V1, so an old state directory keeps loading.

    Reading is strict and never trusts the bytes: every read says what it
    expected, the first surprise stops the restore, and `why` keeps the
    name of that first surprise for the log line that quarantines the
    file. The container (header, checksum, atomic write) is daemon/state.c.  */
#ifndef XPL_SNAP_H
#define XPL_SNAP_H

#include "mpr.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#define SNAP_V1 1u      /* positional arrays */
#define SNAP_V2 2u      /* keyed maps (what is written now) */

/* ---- writing ------------------------------------------------------------ */

/* A str: a map key, or a name written as a value. */
void snap_put_str(msgpack_packer *pk, const char *s);

/* An array of n float64 (bit for bit what is in memory). */
void snap_put_doubles(msgpack_packer *pk, const double *x, uint32_t n);

/* ---- reading ------------------------------------------------------------ */

typedef struct {
    mpr_t r;
    const char *why;    /* first failure, NULL while all is well */
} snap_rd_t;

void snap_rd_init(snap_rd_t *d, const void *data, size_t len);

/* Record `what` as the reason (the first one stays) and return -1. */
int snap_fail(snap_rd_t *d, const char *what);

/* Each reads one value of its type or fails with `what`. */
int snap_get_array(snap_rd_t *d, uint32_t *count, const char *what);
int snap_get_array_n(snap_rd_t *d, uint32_t n, const char *what);  /* exactly n items */
int snap_get_map(snap_rd_t *d, uint32_t *pairs, const char *what);
int snap_get_u64(snap_rd_t *d, uint64_t *v, const char *what);
int snap_get_u32(snap_rd_t *d, uint32_t *v, const char *what);
int snap_get_i64(snap_rd_t *d, int64_t *v, const char *what);      /* int or uint */
int snap_get_bool(snap_rd_t *d, bool *v, const char *what);
int snap_get_f64(snap_rd_t *d, double *v, const char *what);
int snap_get_str(snap_rd_t *d, const uint8_t **ptr, uint32_t *len, const char *what);

/* True (and consumed) when the next value is nil; false leaves it. */
bool snap_get_nil(snap_rd_t *d);

/* Exactly n float64 into v; v NULL reads and drops them. */
int snap_get_doubles(snap_rd_t *d, double *v, uint32_t n, const char *what);

/* Skip one value whatever it is (a field this reader does not know). */
int snap_skip(snap_rd_t *d, const char *what);

/* Keyed records: read the next key of a map into *key (a STR). */
int snap_get_key(snap_rd_t *d, mpr_obj_t *key, const char *what);

/* Field bookkeeping of one keyed record: snap_field fails, naming
   `what`, on a field given twice; snap_fields_all fails, naming `what`,
   unless every bit of `all` was seen. */
int snap_field(snap_rd_t *d, unsigned *seen, unsigned bit, const char *what);
int snap_fields_all(snap_rd_t *d, unsigned seen, unsigned all, const char *what);

#endif
