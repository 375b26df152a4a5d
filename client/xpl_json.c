/*  xpl_json: msgpack -> JSON, for scripts (xplainctl query) and logs.  */
#include "xpl_private.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
    int key_depth;              /* keys being rendered around this buffer */
} s_buf_t;

static void
s_put(s_buf_t *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void
s_puts(s_buf_t *b, const char *s)
{
    s_put(b, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t
s_utf8_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if ((c & 0xe0) == 0xc0) { len = 2; cp = c & 0x1f; }
    else if ((c & 0xf0) == 0xe0) { len = 3; cp = c & 0x0f; }
    else if ((c & 0xf8) == 0xf0) { len = 4; cp = c & 0x07; }
    else return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static void
s_string(s_buf_t *b, const uint8_t *s, size_t n)
{
    s_put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            s_put(b, esc, 2);
            i++;
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            s_puts(b, esc);
            i++;
        } else {
            size_t len = s_utf8_len(s + i, n - i);
            if (len == 0) {
                s_puts(b, "\\ufffd");
                i++;
            } else {
                s_put(b, (const char *)s + i, len);
                i += len;
            }
        }
    }
    s_put(b, "\"", 1);
}

static void
s_base64(s_buf_t *b, const uint8_t *s, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    s_put(b, "\"", 1);
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)s[i + 1] << 8;
        if (i + 2 < n)
            v |= s[i + 2];
        char q[4] = {tab[v >> 18 & 63], tab[v >> 12 & 63], i + 1 < n ? tab[v >> 6 & 63] : '=',
                     i + 2 < n ? tab[v & 63] : '='};
        s_put(b, q, 4);
    }
    s_put(b, "\"", 1);
}

static void
s_number(s_buf_t *b, double x)
{
    char num[40];
    if (!isfinite(x)) {
        s_puts(b, "null");
        return;
    }
    /* The fewest digits that read back as the same value: attribution
       vectors travel as float32, which mpr widens, so a value a float32
       holds exactly is written as that float32 (0.1, not
       0.10000000149011612); any other as the double it is. */
    bool f32 = (double)(float)x == x;
    for (int digits = f32 ? 6 : 15; digits <= 17; digits++) {
        snprintf(num, sizeof num, "%.*g", digits, x);
        double back = strtod(num, NULL);
        if (f32 ? (float)back == (float)x : back == x)
            break;
    }
    if (!strpbrk(num, ".eEn"))
        strcat(num, ".0");
    s_puts(b, num);
}

static const xnode_t *s_node(s_buf_t *b, const xnode_t *n);

/* A map key: strings as they are, anything else rendered and quoted.
   Quoting escapes every '"' and '\\' of the rendering, so a container
   key inside a container key inside ... would double the output at each
   level (24 nested one-byte maps made gigabytes): a container key inside
   another key is rendered as "[...]" or "{...}". */
static const xnode_t *
s_key(s_buf_t *b, const xnode_t *k)
{
    if (k->o.type == MPR_STR) {
        s_string(b, k->o.v.raw.ptr, k->o.v.raw.len);
        return xn_next(k);
    }
    if (b->key_depth > 0 && (k->o.type == MPR_ARRAY || k->o.type == MPR_MAP)) {
        s_puts(b, k->o.type == MPR_ARRAY ? "\"[...]\"" : "\"{...}\"");
        return xn_next(k);
    }
    s_buf_t tmp = {.key_depth = b->key_depth + 1};
    const xnode_t *next = s_node(&tmp, k);
    if (tmp.oom)
        b->oom = true;
    else
        s_string(b, (const uint8_t *)tmp.p, tmp.len);
    free(tmp.p);
    return next;
}

/* Render node n; returns the node after its subtree. */
static const xnode_t *
s_node(s_buf_t *b, const xnode_t *n)
{
    char num[32];
    const mpr_obj_t *o = &n->o;
    switch (o->type) {
    case MPR_NIL: s_puts(b, "null"); break;
    case MPR_BOOL: s_puts(b, o->v.b ? "true" : "false"); break;
    case MPR_UINT:
        snprintf(num, sizeof num, "%llu", (unsigned long long)o->v.u);
        s_puts(b, num);
        break;
    case MPR_INT:
        snprintf(num, sizeof num, "%lld", (long long)o->v.i);
        s_puts(b, num);
        break;
    case MPR_FLOAT: s_number(b, o->v.f); break;
    case MPR_STR: s_string(b, o->v.raw.ptr, o->v.raw.len); break;
    case MPR_BIN:
    case MPR_EXT: s_base64(b, o->v.raw.ptr, o->v.raw.len); break;
    case MPR_ARRAY: {
        s_put(b, "[", 1);
        const xnode_t *c = xn_first(n);
        for (uint32_t i = 0; i < o->v.count; i++) {
            if (i)
                s_put(b, ", ", 2);
            c = s_node(b, c);
        }
        s_put(b, "]", 1);
        break;
    }
    case MPR_MAP: {
        s_put(b, "{", 1);
        const xnode_t *c = xn_first(n);
        for (uint32_t i = 0; i < o->v.count; i++) {
            if (i)
                s_put(b, ", ", 2);
            c = s_key(b, c);
            s_put(b, ": ", 2);
            c = s_node(b, c);
        }
        s_put(b, "}", 1);
        break;
    }
    }
    return xn_next(n);
}

char *
xpl_json_from_msgpack(const void *data, size_t size)
{
    xdoc_t d;
    if (!data || xdoc_parse(&d, data, size, "json"))
        return data ? NULL : xpl_fail_null(XPL_EINVAL, "json: no data");
    s_buf_t b = {0};
    s_node(&b, d.nodes);
    xdoc_free(&d);
    if (b.oom || !b.p) {
        free(b.p);
        return xpl_fail_null(XPL_ENOMEM, "json: out of memory");
    }
    return b.p;
}
