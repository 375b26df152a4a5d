/*  xpl_decode.h: what the decoders of libxplain share (xpl_decode.c); the
    decoders themselves are declared in xpl_private.h and live one class
    to a file. Internal: never installed.  */
#ifndef XPL_DECODE_H
#define XPL_DECODE_H

#include "xpl_private.h"

/* Decoding context: the object being filled and what is being decoded,
   for error messages. */
typedef struct {
    void *obj;
    const char *what;
} xdc_t;

/* Fail with XPL_EPROTO: `key` of c->what is missing or not `want`.
   Returns -1. */
int xdc_bad(xdc_t *c, const char *key, const char *want);

/* Required keys of a map, copied into c->obj (strings) or checked for
   range; each fails through xdc_bad. */
int xdc_str(xdc_t *c, const xnode_t *map, const char *key, const char **out);

int xdc_u64(xdc_t *c, const xnode_t *map, const char *key, uint64_t *out);

int xdc_u32(xdc_t *c, const xnode_t *map, const char *key, uint32_t *out);

int xdc_i64(xdc_t *c, const xnode_t *map, const char *key, int64_t *out);

int xdc_cls(xdc_t *c, const xnode_t *map, int32_t *out);

/* An optional number: absent is fine, a wrong type is not. */
int xdc_opt_num(xdc_t *c, const xnode_t *map, const char *key, double *out);

int xdc_opt_u64(xdc_t *c, const xnode_t *map, const char *key, uint64_t *out);

/* An array of strings, copied; *count receives its length. */
int xdc_strs(xdc_t *c, const xnode_t *map, const char *key, const char *const **out,
             uint32_t *count);

/* An array of exactly `n` numbers as doubles (n == UINT32_MAX: any
   length, stored in *n). */
int xdc_doubles(xdc_t *c, const xnode_t *a, const char *key, const double **out, uint32_t *n);

/* A float or nil (undefined: NAN). */
int xdc_stat(xdc_t *c, const xnode_t *map, const char *key, double *out);

int xdc_bool(xdc_t *c, const xnode_t *map, const char *key, bool *out);

/* The "models" array of the models and stats replies. */
int xdc_model_list(xdc_t *c, const xnode_t *root, const xpl_model_info_t **out, uint32_t *count);

/* The window fields shared by drift/ messages and the drift query. */
int xdc_window(xdc_t *c, const xnode_t *m, xpl_window_t *w);
/* The optional "verdict" and "moved" of a closed window's map into *v
   (left zero, mode NULL, when the daemon sent neither). */
int xdc_verdict(xdc_t *c, const xnode_t *m, xpl_verdict_t *v);

#endif
