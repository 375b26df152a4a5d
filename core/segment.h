/*  segment: which part of the flow a trade belongs to, from its tags, and
    the bounded table of segments one model tracks (MATH.md, "Segments").

    A trade may carry tags, short key/value strings (desk, venue,
    instrument class). The operator names the tag keys to segment by, in
    an order (segkeys_t, from "desk,venue"). A trade's segment is the
    combination of its values for those keys, labelled in the operator's
    order as "desk=rates,venue=XLON"; a trade missing any of the keys
    belongs to no segment (it still counts overall).

    Tags are checked one by one (seg_tag_check): keys are 1..32 bytes of
    [A-Za-z0-9_.-], values 1..64 bytes of printable ASCII (space included)
    other than , = " and backslash, so that a label needs no escaping in a
    topic, a query reply or a Prometheus label.

    segtab_t maps labels to dense indices 0..max-1, first come first
    served; once `max` segments exist, a trade of a new one is counted in
    `overflow` and nothing else: labels beyond max are not remembered, so
    memory stays bounded whatever the flow sends. Lookups hash the label
    (FNV-1a) and compare bytes only on equal hashes: a linear scan of at
    most max 64-bit words.

    Plain fields, caller storage; segtab allocates once, at init.  */
#ifndef XPL_SEGMENT_H
#define XPL_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mpr.h"

#define SEG_KEYS_MAX 4          /* keys to segment by */
#define SEG_KEY_MAX 32          /* bytes of a tag key */
#define SEG_VALUE_MAX 64        /* bytes of a tag value */
#define SEG_TAGS_MAX 16         /* tags on one trade */
/* "k=v,k=v,...": every key and value at its longest, '=' and ','. */
#define SEG_LABEL_MAX (SEG_KEYS_MAX * (SEG_KEY_MAX + SEG_VALUE_MAX + 2) - 1)
#define SEG_MAX_SEGMENTS 4096   /* upper bound of segtab_init's max */

typedef struct {
    uint32_t n;                 /* 0: no segmentation */
    uint8_t len[SEG_KEYS_MAX];
    char key[SEG_KEYS_MAX][SEG_KEY_MAX + 1];
} segkeys_t;

/* One tag, pointing into the caller's (message) buffer. */
typedef struct {
    const char *key, *val;
    uint32_t klen, vlen;
} seg_tag_t;

typedef enum {
    SEG_OK = 0,
    SEG_BAD_KEY = 1,            /* empty, too long, or a byte outside [A-Za-z0-9_.-] */
    SEG_BAD_VALUE = 2,          /* empty, too long, or a forbidden byte */
    SEG_TOO_MANY = 3,           /* more than SEG_TAGS_MAX tags, or SEG_KEYS_MAX keys */
    SEG_DUPLICATE = 4,          /* one key twice */
    SEG_NOT_MAP = 5,            /* tags that are not a map of str to str (or nil) */
    SEG_COUNT = 6,              /* an array of per-trade tags of the wrong length */
    SEG_MSGPACK = 7             /* truncated or invalid msgpack */
} seg_err_t;

/* Name of an error ("bad_key", ...). */
const char *seg_err_name(seg_err_t e);

/* Check one tag. */
seg_err_t seg_tag_check(const char *key, size_t klen, const char *val, size_t vlen);

/* Check a trade's tags: each one, their number, no key twice. */
seg_err_t seg_tags_check(const seg_tag_t *tags, uint32_t ntags);

/* Parse "desk,venue" (no spaces; empty string: no segmentation) into *k.
   Returns SEG_OK, or an error (then *k has n = 0). */
seg_err_t segkeys_parse(segkeys_t *k, const char *list);

/* The segment label of a trade with these (checked) tags into buf (at
   least SEG_LABEL_MAX + 1 bytes, NUL-terminated). Returns its length, or
   0 when segmentation is off or a key is missing (no segment). */
size_t segkeys_label(const segkeys_t *k, const seg_tag_t *tags, uint32_t ntags, char *buf);

/* A message's `tags` value, read trade by trade. It is either one map
   (every trade of the message has those tags), or an array of `ntrades`
   items, each a map or nil (no tags) for the trade at that position. */
typedef struct {
    mpr_t r;
    bool per_trade;             /* array form */
    uint32_t ntrades, next;
    const uint8_t *data;        /* the whole value, for the map form */
    size_t len;
} seg_iter_t;

/* Check a whole `tags` value (`len` msgpack bytes) for a message of
   `ntrades` trades: its form, every tag (seg_tags_check), the array's
   length. Returns SEG_OK or the first error. The ingest decoder calls
   this once; the iterator below then needs no further checks. */
seg_err_t seg_tags_validate(const void *data, size_t len, uint32_t ntrades);

/* Start reading a value that seg_tags_validate accepted. */
void seg_iter_init(seg_iter_t *it, const void *data, size_t len, uint32_t ntrades);

/* The next trade's tags into tags[SEG_TAGS_MAX] (views into the value)
   and *ntags (0: none). Returns SEG_OK, or SEG_COUNT past the last trade
   (or another error on a value that was not validated). */
seg_err_t seg_iter_next(seg_iter_t *it, seg_tag_t *tags, uint32_t *ntags);

typedef struct {
    uint32_t max;               /* segments tracked at most */
    uint32_t n;                 /* segments tracked */
    uint64_t overflow;          /* trades of segments not tracked */
    uint64_t *hash;             /* [max] */
    uint16_t *len;              /* [max] */
    char *labels;               /* [max][SEG_LABEL_MAX + 1] */
} segtab_t;

/* An empty table of up to `max` (1..SEG_MAX_SEGMENTS) segments. Returns
   0, or -1 on a bad max or out of memory (destroy is safe then). */
int segtab_init(segtab_t *t, uint32_t max);
void segtab_destroy(segtab_t *t);

/* Index of a label, or -1 when not tracked. */
int segtab_find(const segtab_t *t, const char *label, size_t len);

/* Index of a label, adding it when there is room; -1 (and overflow + 1)
   when it is new and the table is full, or the label is empty or longer
   than SEG_LABEL_MAX. */
int segtab_get(segtab_t *t, const char *label, size_t len);

/* Label of index i (NUL-terminated), NULL when out of range. */
const char *segtab_label(const segtab_t *t, uint32_t i);

#endif
