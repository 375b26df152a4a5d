/*  segment: segment labels from tags, and the bounded segment table. See
    segment.h.  */
#include "segment.h"

#include <stdlib.h>
#include <string.h>

static const char *s_errs[] = {"ok",        "bad_key", "bad_value", "too_many",
                               "duplicate", "not_map", "count",     "msgpack"};

const char *
seg_err_name(seg_err_t e)
{
    return (unsigned)e < sizeof s_errs / sizeof *s_errs ? s_errs[e] : "unknown";
}

static bool
s_key_ok(const char *k, size_t len)
{
    if (len == 0 || len > SEG_KEY_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)k[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

static bool
s_value_ok(const char *v, size_t len)
{
    if (len == 0 || len > SEG_VALUE_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c > 0x7e || c == ',' || c == '=' || c == '"' || c == '\\')
            return false;
    }
    return true;
}

seg_err_t
seg_tag_check(const char *key, size_t klen, const char *val, size_t vlen)
{
    if (!s_key_ok(key, klen))
        return SEG_BAD_KEY;
    if (!s_value_ok(val, vlen))
        return SEG_BAD_VALUE;
    return SEG_OK;
}

seg_err_t
seg_tags_check(const seg_tag_t *tags, uint32_t ntags)
{
    if (ntags > SEG_TAGS_MAX)
        return SEG_TOO_MANY;
    for (uint32_t i = 0; i < ntags; i++) {
        seg_err_t e = seg_tag_check(tags[i].key, tags[i].klen, tags[i].val, tags[i].vlen);
        if (e)
            return e;
        for (uint32_t j = 0; j < i; j++)
            if (tags[j].klen == tags[i].klen && !memcmp(tags[j].key, tags[i].key, tags[i].klen))
                return SEG_DUPLICATE;
    }
    return SEG_OK;
}

seg_err_t
segkeys_parse(segkeys_t *k, const char *list)
{
    memset(k, 0, sizeof *k);
    if (!*list)
        return SEG_OK;
    segkeys_t out = {0};
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (!s_key_ok(p, len))
            return SEG_BAD_KEY;
        if (out.n == SEG_KEYS_MAX)
            return SEG_TOO_MANY;
        for (uint32_t j = 0; j < out.n; j++)
            if (out.len[j] == len && !memcmp(out.key[j], p, len))
                return SEG_DUPLICATE;
        memcpy(out.key[out.n], p, len);
        out.len[out.n++] = (uint8_t)len;
        if (!comma)
            break;
        p = comma + 1;
    }
    *k = out;
    return SEG_OK;
}

size_t
segkeys_label(const segkeys_t *k, const seg_tag_t *tags, uint32_t ntags, char *buf)
{
    size_t at = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < k->n; i++) {
        const seg_tag_t *t = NULL;
        for (uint32_t j = 0; j < ntags && !t; j++)
            if (tags[j].klen == k->len[i] && !memcmp(tags[j].key, k->key[i], k->len[i]))
                t = &tags[j];
        if (!t || t->vlen == 0 || t->vlen > SEG_VALUE_MAX) {
            buf[0] = '\0';
            return 0;
        }
        if (i)
            buf[at++] = ',';
        memcpy(buf + at, k->key[i], k->len[i]);
        at += k->len[i];
        buf[at++] = '=';
        memcpy(buf + at, t->val, t->vlen);
        at += t->vlen;
    }
    buf[at] = '\0';
    return at;
}

/* Read one map of str -> str (or nil) at the reader into tags. */
static seg_err_t
s_read_map(mpr_t *r, seg_tag_t *tags, uint32_t *ntags)
{
    mpr_obj_t o;
    *ntags = 0;
    if (mpr_next(r, &o))
        return SEG_MSGPACK;
    if (o.type == MPR_NIL)
        return SEG_OK;
    if (o.type != MPR_MAP)
        return SEG_NOT_MAP;
    if (o.v.count > SEG_TAGS_MAX)
        return SEG_TOO_MANY;
    uint32_t n = o.v.count;
    for (uint32_t i = 0; i < n; i++) {
        mpr_obj_t k, v;
        if (mpr_next(r, &k) || mpr_next(r, &v))
            return SEG_MSGPACK;
        if (k.type != MPR_STR || v.type != MPR_STR)
            return SEG_NOT_MAP;
        tags[i] = (seg_tag_t){(const char *)k.v.raw.ptr, (const char *)v.v.raw.ptr, k.v.raw.len,
                              v.v.raw.len};
    }
    *ntags = n;
    return seg_tags_check(tags, n);
}

void
seg_iter_init(seg_iter_t *it, const void *data, size_t len, uint32_t ntrades)
{
    memset(it, 0, sizeof *it);
    it->data = data;
    it->len = len;
    it->ntrades = ntrades;
    mpr_init(&it->r, data, len);
    mpr_t peek = it->r;
    mpr_obj_t o;
    if (mpr_next(&peek, &o) == MPR_OK && o.type == MPR_ARRAY) {
        it->per_trade = true;
        it->r = peek;
    }
}

seg_err_t
seg_iter_next(seg_iter_t *it, seg_tag_t *tags, uint32_t *ntags)
{
    *ntags = 0;
    if (it->next >= it->ntrades)
        return SEG_COUNT;
    it->next++;
    if (it->per_trade)
        return s_read_map(&it->r, tags, ntags);
    /* One map for every trade: read it afresh, views are the same. */
    mpr_t r;
    mpr_init(&r, it->data, it->len);
    return s_read_map(&r, tags, ntags);
}

seg_err_t
seg_tags_validate(const void *data, size_t len, uint32_t ntrades)
{
    mpr_t r;
    mpr_obj_t o;
    mpr_init(&r, data, len);
    mpr_t peek = r;
    if (mpr_next(&peek, &o))
        return SEG_MSGPACK;
    seg_tag_t tags[SEG_TAGS_MAX];
    uint32_t n;
    seg_err_t e;
    if (o.type != MPR_ARRAY) {
        if ((e = s_read_map(&r, tags, &n)))
            return e;
    } else {
        if (o.v.count != ntrades)
            return SEG_COUNT;
        r = peek;
        for (uint32_t i = 0; i < ntrades; i++)
            if ((e = s_read_map(&r, tags, &n)))
                return e;
    }
    return mpr_left(&r) ? SEG_MSGPACK : SEG_OK;
}

int
segtab_init(segtab_t *t, uint32_t max)
{
    memset(t, 0, sizeof *t);
    if (max == 0 || max > SEG_MAX_SEGMENTS)
        return -1;
    t->hash = calloc(max, sizeof *t->hash);
    t->len = calloc(max, sizeof *t->len);
    t->labels = calloc(max, SEG_LABEL_MAX + 1);
    if (!t->hash || !t->len || !t->labels) {
        segtab_destroy(t);
        return -1;
    }
    t->max = max;
    return 0;
}

void
segtab_destroy(segtab_t *t)
{
    free(t->hash);
    free(t->len);
    free(t->labels);
    memset(t, 0, sizeof *t);
}

static uint64_t
s_fnv1a(const char *s, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

static int
s_find(const segtab_t *t, const char *label, size_t len, uint64_t h)
{
    for (uint32_t i = 0; i < t->n; i++)
        if (t->hash[i] == h && t->len[i] == len &&
            !memcmp(t->labels + (size_t)i * (SEG_LABEL_MAX + 1), label, len))
            return (int)i;
    return -1;
}

int
segtab_find(const segtab_t *t, const char *label, size_t len)
{
    return s_find(t, label, len, s_fnv1a(label, len));
}

int
segtab_get(segtab_t *t, const char *label, size_t len)
{
    if (len == 0 || len > SEG_LABEL_MAX) {
        t->overflow++;
        return -1;
    }
    uint64_t h = s_fnv1a(label, len);
    int i = s_find(t, label, len, h);
    if (i >= 0)
        return i;
    if (t->n == t->max) {
        t->overflow++;
        return -1;
    }
    i = (int)t->n++;
    t->hash[i] = h;
    t->len[i] = (uint16_t)len;
    char *dst = t->labels + (size_t)i * (SEG_LABEL_MAX + 1);
    memcpy(dst, label, len);
    dst[len] = '\0';
    return i;
}

const char *
segtab_label(const segtab_t *t, uint32_t i)
{
    return i < t->n ? t->labels + (size_t)i * (SEG_LABEL_MAX + 1) : NULL;
}
