/*  examples.h: read proto/examples/ from C (for the tests of both sides).

    A small JSON reader (enough for the .json renderings make.py writes:
    integers are kept exactly as int64 next to their double value, since
    timestamps exceed 2^53), base64 decoding of "$bin", and a loader that
    gives an example's metadata and its frames:

        ex_t *e = ex_load(dir, "xpl", "f32-first");
        jv_t *body = jv_get(e->meta, "body");
        ... e->frame[0] (topic), e->frame[1] (body), e->nframes ...
        ex_free(e);

    Everything is static inline so that a test includes it without
    warnings for what it does not use. Not part of any library: the wire
    contract is the .msgpack files, this only reads them back.  */
#ifndef XPL_PROTO_EXAMPLES_H
#define XPL_PROTO_EXAMPLES_H

#include <dirent.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { JV_NULL, JV_BOOL, JV_NUM, JV_STR, JV_ARR, JV_OBJ } jv_type_t;

typedef struct jv_t {
    jv_type_t t;
    bool b;                 /* JV_BOOL */
    double d;               /* JV_NUM */
    bool is_int;            /* JV_NUM written without fraction or exponent */
    int64_t i;              /* JV_NUM when is_int (exact) */
    char *s;                /* JV_STR, NUL-terminated */
    size_t n;               /* JV_ARR items, JV_OBJ pairs */
    struct jv_t **items;    /* JV_ARR values, JV_OBJ values */
    char **keys;            /* JV_OBJ keys */
} jv_t;

static inline void
jv_free(jv_t *v)
{
    if (!v)
        return;
    for (size_t k = 0; k < v->n; k++) {
        jv_free(v->items[k]);
        if (v->keys)
            free(v->keys[k]);
    }
    free(v->items);
    free(v->keys);
    free(v->s);
    free(v);
}

typedef struct {
    const char *p, *end;
    int depth;
} jv_parser_t;

static inline void
jv_ws(jv_parser_t *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\t' || *ps->p == '\r'))
        ps->p++;
}

static inline size_t
jv_utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xc0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12); out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18); out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

static inline int
jv_hex4(const char *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static inline char *
jv_parse_string(jv_parser_t *ps)
{
    if (ps->p >= ps->end || *ps->p != '"')
        return NULL;
    ps->p++;
    char *out = malloc((size_t)(ps->end - ps->p) + 1);
    size_t len = 0;
    while (out && ps->p < ps->end && *ps->p != '"') {
        char c = *ps->p++;
        if (c != '\\') {
            out[len++] = c;
            continue;
        }
        if (ps->p >= ps->end)
            break;
        c = *ps->p++;
        switch (c) {
        case 'n': out[len++] = '\n'; break;
        case 't': out[len++] = '\t'; break;
        case 'r': out[len++] = '\r'; break;
        case 'b': out[len++] = '\b'; break;
        case 'f': out[len++] = '\f'; break;
        case 'u': {
            uint32_t cp, lo;
            if (ps->end - ps->p < 4 || jv_hex4(ps->p, &cp)) {
                free(out);
                return NULL;
            }
            ps->p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && ps->end - ps->p >= 6 && ps->p[0] == '\\' &&
                ps->p[1] == 'u' && jv_hex4(ps->p + 2, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                ps->p += 6;
            }
            len += jv_utf8_put(out + len, cp);
            break;
        }
        default: out[len++] = c;
        }
    }
    if (!out || ps->p >= ps->end) {
        free(out);
        return NULL;
    }
    ps->p++;
    out[len] = '\0';
    return out;
}

static inline jv_t *jv_parse_value(jv_parser_t *ps);

static inline int
jv_push(jv_t *v, jv_t *item, char *key)
{
    jv_t **items = realloc(v->items, (v->n + 1) * sizeof *items);
    if (!items)
        return -1;
    v->items = items;
    if (v->t == JV_OBJ) {
        char **keys = realloc(v->keys, (v->n + 1) * sizeof *keys);
        if (!keys)
            return -1;
        v->keys = keys;
        v->keys[v->n] = key;
    }
    v->items[v->n++] = item;
    return 0;
}

static inline jv_t *
jv_parse_value(jv_parser_t *ps)
{
    jv_ws(ps);
    if (ps->p >= ps->end || ps->depth > 64)
        return NULL;
    jv_t *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    char c = *ps->p;
    if (c == '{' || c == '[') {
        v->t = c == '{' ? JV_OBJ : JV_ARR;
        char close = c == '{' ? '}' : ']';
        ps->p++;
        ps->depth++;
        jv_ws(ps);
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            ps->depth--;
            return v;
        }
        for (;;) {
            char *key = NULL;
            jv_ws(ps);
            if (v->t == JV_OBJ) {
                if (!(key = jv_parse_string(ps)))
                    goto fail;
                jv_ws(ps);
                if (ps->p >= ps->end || *ps->p++ != ':') {
                    free(key);
                    goto fail;
                }
            }
            jv_t *item = jv_parse_value(ps);
            if (!item || jv_push(v, item, key)) {
                jv_free(item);
                free(key);
                goto fail;
            }
            jv_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (ps->p < ps->end && *ps->p == close) {
                ps->p++;
                ps->depth--;
                return v;
            }
            goto fail;
        }
    }
    if (c == '"') {
        v->t = JV_STR;
        if (!(v->s = jv_parse_string(ps)))
            goto fail;
        return v;
    }
    if (ps->end - ps->p >= 4 && memcmp(ps->p, "true", 4) == 0) {
        v->t = JV_BOOL;
        v->b = true;
        ps->p += 4;
        return v;
    }
    if (ps->end - ps->p >= 5 && memcmp(ps->p, "false", 5) == 0) {
        v->t = JV_BOOL;
        ps->p += 5;
        return v;
    }
    if (ps->end - ps->p >= 4 && memcmp(ps->p, "null", 4) == 0) {
        v->t = JV_NULL;
        ps->p += 4;
        return v;
    }
    {
        /* A number: the text up to the next delimiter. */
        char buf[64];
        size_t len = 0;
        while (ps->p + len < ps->end && len < sizeof buf - 1 &&
               strchr("+-0123456789.eE", ps->p[len]) && ps->p[len])
            len++;
        if (len == 0)
            goto fail;
        memcpy(buf, ps->p, len);
        buf[len] = '\0';
        ps->p += len;
        v->t = JV_NUM;
        char *end;
        v->d = strtod(buf, &end);
        if (*end)
            goto fail;
        v->is_int = !strpbrk(buf, ".eE");
        if (v->is_int) {
            if (buf[0] == '-')
                v->i = strtoll(buf, NULL, 10);
            else
                v->i = (int64_t)strtoull(buf, NULL, 10);
        }
        return v;
    }
fail:
    jv_free(v);
    return NULL;
}

/* Parse a whole JSON text; NULL when it is not JSON. */
static inline jv_t *
jv_parse(const char *text, size_t len)
{
    jv_parser_t ps = {text, text + len, 0};
    jv_t *v = jv_parse_value(&ps);
    jv_ws(&ps);
    if (v && ps.p != ps.end) {
        jv_free(v);
        return NULL;
    }
    return v;
}

/* Value of `key` in an object, or NULL. */
static inline jv_t *
jv_get(const jv_t *o, const char *key)
{
    if (!o || o->t != JV_OBJ)
        return NULL;
    for (size_t k = 0; k < o->n; k++)
        if (strcmp(o->keys[k], key) == 0)
            return o->items[k];
    return NULL;
}

/* Item `i` of an array (or value of pair `i` of an object), or NULL. */
static inline jv_t *
jv_at(const jv_t *a, size_t i)
{
    return a && (a->t == JV_ARR || a->t == JV_OBJ) && i < a->n ? a->items[i] : NULL;
}

/* A number as a double; "NaN", "Infinity", "-Infinity" (how the
   renderings write non-finite floats) and null (an undefined statistic)
   as NAN / INFINITY. */
static inline double
jv_num(const jv_t *v)
{
    if (!v || v->t == JV_NULL)
        return NAN;
    if (v->t == JV_STR) {
        if (strcmp(v->s, "Infinity") == 0)
            return INFINITY;
        if (strcmp(v->s, "-Infinity") == 0)
            return -INFINITY;
        return NAN;
    }
    return v->t == JV_NUM ? v->d : NAN;
}

/* An integer (exact), 0 when not one. */
static inline int64_t
jv_int(const jv_t *v)
{
    return v && v->t == JV_NUM ? (v->is_int ? v->i : (int64_t)v->d) : 0;
}

static inline const char *
jv_str(const jv_t *v)
{
    return v && v->t == JV_STR ? v->s : NULL;
}

/* Decode base64 (standard alphabet, '=' padding) into a new buffer;
   NULL on a bad character. */
static inline uint8_t *
ex_b64(const char *s, size_t *len)
{
    size_t n = strlen(s);
    uint8_t *out = malloc(n / 4 * 3 + 3);
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t k = 0; out && k < n; k++) {
        char c = s[k];
        int v;
        if (c >= 'A' && c <= 'Z') v = c - 'A';
        else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
        else if (c >= '0' && c <= '9') v = c - '0' + 52;
        else if (c == '+') v = 62;
        else if (c == '/') v = 63;
        else if (c == '=') break;
        else {
            free(out);
            return NULL;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    *len = o;
    return out;
}

/* The bytes of a {"$bin": ...} rendering. */
static inline uint8_t *
jv_bin(const jv_t *v, size_t *len)
{
    const char *s = jv_str(jv_get(v, "$bin"));
    return s ? ex_b64(s, len) : NULL;
}

static inline uint8_t *
ex_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap + 1);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            uint8_t *b = realloc(buf, 2 * cap + 1);
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf)
        buf[n] = '\0';
    *len = n;
    return buf;
}

#define EX_MAX_FRAMES 4

/* One example: its .json and its frames, in order (topic first for the
   two-frame kinds; requests and replies have the body only). */
typedef struct {
    char name[128];             /* "<kind>/<base>" */
    jv_t *meta;
    jv_t *body;                 /* meta's "body" */
    int nframes;
    uint8_t *frame[EX_MAX_FRAMES];
    size_t len[EX_MAX_FRAMES];
    const uint8_t *body_bytes;  /* the body frame */
    size_t body_len;
} ex_t;

static inline void
ex_free(ex_t *e)
{
    if (!e)
        return;
    jv_free(e->meta);
    for (int k = 0; k < e->nframes; k++)
        free(e->frame[k]);
    free(e);
}

/* Load `<dir>/<kind>/<base>.json` and the files it names; NULL when
   anything is missing or malformed. */
static inline ex_t *
ex_load(const char *dir, const char *kind, const char *base)
{
    char path[1024];
    size_t len;
    snprintf(path, sizeof path, "%s/%s/%s.json", dir, kind, base);
    char *text = (char *)ex_read(path, &len);
    if (!text)
        return NULL;
    ex_t *e = calloc(1, sizeof *e);
    e->meta = jv_parse(text, len);
    free(text);
    snprintf(e->name, sizeof e->name, "%s/%s", kind, base);
    jv_t *frames = jv_get(e->meta, "frames");
    if (!frames || frames->t != JV_ARR || frames->n < 1 || frames->n > EX_MAX_FRAMES) {
        ex_free(e);
        return NULL;
    }
    for (size_t k = 0; k < frames->n; k++) {
        snprintf(path, sizeof path, "%s/%s/%s", dir, kind, jv_str(jv_at(frames, k)));
        if (!(e->frame[k] = ex_read(path, &e->len[k]))) {
            ex_free(e);
            return NULL;
        }
        e->nframes++;
    }
    e->body = jv_get(e->meta, "body");
    int b = e->nframes > 1 ? 1 : 0;
    e->body_bytes = e->frame[b];
    e->body_len = e->len[b];
    return e;
}

static inline int
ex_cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The base names of every example of `kind`, sorted; *count of them.
   Free with ex_names_free. */
static inline char **
ex_names(const char *dir, const char *kind, size_t *count)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, kind);
    *count = 0;
    DIR *d = opendir(path);
    if (!d)
        return NULL;
    char **names = NULL;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n <= 5 || strcmp(de->d_name + n - 5, ".json") != 0)
            continue;
        char **grown = realloc(names, (*count + 1) * sizeof *names);
        if (!grown)
            break;
        names = grown;
        names[*count] = strndup(de->d_name, n - 5);
        (*count)++;
    }
    closedir(d);
    if (names)
        qsort(names, *count, sizeof *names, ex_cmp_names);
    return names;
}

static inline void
ex_names_free(char **names, size_t count)
{
    for (size_t k = 0; k < count; k++)
        free(names[k]);
    free(names);
}

#endif
