/*  mpr: a bounds-checked, zero-copy msgpack reader.

    Network input is never trusted. Every header read here is checked
    against the bytes actually present before anything is believed: a str,
    bin or ext must fit in what remains, an array of N items needs at least
    N bytes left, a map of N pairs at least 2N. So a 5-byte array header
    that declares four billion items is rejected at once instead of making
    anyone allocate for it (msgpack-c's own unpacker would try).

    Nothing is allocated and nothing is copied: strings and bins come back
    as views into the caller's buffer, valid as long as that buffer is.  */
#ifndef XPL_MPR_H
#define XPL_MPR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    MPR_NIL = 0,
    MPR_BOOL = 1,
    MPR_UINT = 2,   /* non-negative integer (any width) */
    MPR_INT = 3,    /* negative integer */
    MPR_FLOAT = 4,  /* float32 or float64, widened */
    MPR_STR = 5,
    MPR_BIN = 6,
    MPR_ARRAY = 7,
    MPR_MAP = 8,
    MPR_EXT = 9
} mpr_type_t;

typedef struct {
    mpr_type_t type;
    union {
        bool b;
        uint64_t u;
        int64_t i;
        double f;
        uint32_t count;            /* ARRAY: items, MAP: pairs */
        struct {
            const uint8_t *ptr;    /* STR, BIN, EXT payload (view) */
            uint32_t len;
            int8_t ext_type;
        } raw;
    } v;
} mpr_obj_t;

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} mpr_t;

typedef enum {
    MPR_OK = 0,
    MPR_ETRUNC = -1,    /* ran out of bytes, or a length exceeds them */
    MPR_EINVAL = -2,    /* 0xc1 (never used) byte */
    MPR_EDEPTH = -3     /* nesting deeper than the caller allows */
} mpr_err_t;

/* Start reading `len` bytes at `data`. */
void mpr_init(mpr_t *r, const void *data, size_t len);

/* Bytes not yet consumed. */
static inline size_t mpr_left(const mpr_t *r) { return (size_t)(r->end - r->p); }

/* Read one object header. STR/BIN/EXT are consumed whole (payload view in
   obj); ARRAY/MAP consume only the header: their items follow. */
mpr_err_t mpr_next(mpr_t *r, mpr_obj_t *obj);

/* Skip one complete object, nested items included, without recursion.
   More than `max_depth` (at most 63) nested arrays/maps is refused with
   MPR_EDEPTH; 0 admits scalars only. */
mpr_err_t mpr_skip(mpr_t *r, int max_depth);

/* Name of a type, for error messages ("str", "uint", ...). */
const char *mpr_type_name(mpr_type_t t);

/* True when a STR view equals the NUL-terminated `s`. */
bool mpr_str_eq(const mpr_obj_t *o, const char *s);

#endif
