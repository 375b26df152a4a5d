/*  Tests of core/segment: tag checks, segment keys, labels, and the
    bounded segment table.  */
#include "segment.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#define TAG(k, v) ((seg_tag_t){k, v, (uint32_t)strlen(k), (uint32_t)strlen(v)})

Test(segment, tag_checks)
{
    cr_assert_eq(seg_tag_check("desk", 4, "rates EU", 8), SEG_OK);
    cr_assert_eq(seg_tag_check("instr.class-2_x", 15, "a", 1), SEG_OK);
    cr_assert_eq(seg_tag_check("", 0, "a", 1), SEG_BAD_KEY);
    cr_assert_eq(seg_tag_check("de sk", 5, "a", 1), SEG_BAD_KEY);
    cr_assert_eq(seg_tag_check("desk", 4, "", 0), SEG_BAD_VALUE);
    static const char *bad[] = {"a,b", "a=b", "a\"b", "a\\b", "a\nb", "\xc3\xa9t\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_eq(seg_tag_check("k", 1, bad[i], strlen(bad[i])), SEG_BAD_VALUE, "%zu", i);
    char longk[SEG_KEY_MAX + 2], longv[SEG_VALUE_MAX + 2];
    memset(longk, 'k', sizeof longk);
    memset(longv, 'v', sizeof longv);
    cr_assert_eq(seg_tag_check(longk, SEG_KEY_MAX, "v", 1), SEG_OK);
    cr_assert_eq(seg_tag_check(longk, SEG_KEY_MAX + 1, "v", 1), SEG_BAD_KEY);
    cr_assert_eq(seg_tag_check("k", 1, longv, SEG_VALUE_MAX), SEG_OK);
    cr_assert_eq(seg_tag_check("k", 1, longv, SEG_VALUE_MAX + 1), SEG_BAD_VALUE);
    seg_tag_t t[SEG_TAGS_MAX + 1];
    char keys[SEG_TAGS_MAX + 1][8];
    for (int i = 0; i <= SEG_TAGS_MAX; i++) {
        snprintf(keys[i], sizeof keys[i], "k%d", i);
        t[i] = TAG(keys[i], "v");
    }
    cr_assert_eq(seg_tags_check(t, SEG_TAGS_MAX), SEG_OK);
    cr_assert_eq(seg_tags_check(t, SEG_TAGS_MAX + 1), SEG_TOO_MANY);
    t[3] = TAG("k1", "w");
    cr_assert_eq(seg_tags_check(t, 5), SEG_DUPLICATE);
    cr_assert_str_eq(seg_err_name(SEG_DUPLICATE), "duplicate");
    cr_assert_str_eq(seg_err_name((seg_err_t)99), "unknown");
}

Test(segment, keys_and_labels)
{
    segkeys_t k;
    cr_assert_eq(segkeys_parse(&k, ""), SEG_OK);
    cr_assert_eq(k.n, 0u);
    char buf[SEG_LABEL_MAX + 1];
    seg_tag_t tags[] = {TAG("venue", "XLON"), TAG("desk", "rates"), TAG("book", "7")};
    cr_assert_eq(segkeys_label(&k, tags, 3, buf), 0u, "segmentation off: no segment");
    cr_assert_eq(segkeys_parse(&k, "desk,venue"), SEG_OK);
    cr_assert_eq(k.n, 2u);
    /* The operator's order, not the message's. */
    size_t len = segkeys_label(&k, tags, 3, buf);
    cr_assert_str_eq(buf, "desk=rates,venue=XLON");
    cr_assert_eq(len, strlen(buf));
    cr_assert_eq(segkeys_label(&k, tags + 1, 2, buf), 0u, "venue missing: no segment");
    cr_assert_str_eq(buf, "");
    cr_assert_eq(segkeys_parse(&k, "desk,,venue"), SEG_BAD_KEY);
    cr_assert_eq(k.n, 0u, "a bad list leaves no keys");
    cr_assert_eq(segkeys_parse(&k, "desk,desk"), SEG_DUPLICATE);
    cr_assert_eq(segkeys_parse(&k, "a,b,c,d,e"), SEG_TOO_MANY);
    cr_assert_eq(segkeys_parse(&k, "desk venue"), SEG_BAD_KEY);
    /* The longest label fits the buffer exactly. */
    char kk[SEG_KEYS_MAX][SEG_KEY_MAX + 1], list[256] = "";
    char vv[SEG_VALUE_MAX + 1];
    memset(vv, 'v', SEG_VALUE_MAX);
    vv[SEG_VALUE_MAX] = '\0';
    seg_tag_t lt[SEG_KEYS_MAX];
    for (int i = 0; i < SEG_KEYS_MAX; i++) {
        memset(kk[i], 'a' + i, SEG_KEY_MAX);
        kk[i][SEG_KEY_MAX] = '\0';
        strcat(list, i ? "," : "");
        strcat(list, kk[i]);
        lt[i] = TAG(kk[i], vv);
    }
    cr_assert_eq(segkeys_parse(&k, list), SEG_OK);
    cr_assert_eq(segkeys_label(&k, lt, SEG_KEYS_MAX, buf), (size_t)SEG_LABEL_MAX);
    cr_assert_eq(strlen(buf), (size_t)SEG_LABEL_MAX);
}

Test(segment, table_is_bounded_and_counts_the_rest)
{
    segtab_t t;
    cr_assert_eq(segtab_init(&t, 0), -1);
    segtab_destroy(&t);
    cr_assert_eq(segtab_init(&t, SEG_MAX_SEGMENTS + 1), -1);
    cr_assert_eq(segtab_init(&t, 3), 0);
    cr_assert_eq(segtab_get(&t, "desk=a", 6), 0);
    cr_assert_eq(segtab_get(&t, "desk=b", 6), 1);
    cr_assert_eq(segtab_get(&t, "desk=a", 6), 0, "a known label keeps its index");
    cr_assert_eq(segtab_get(&t, "desk=c", 6), 2);
    cr_assert_eq(segtab_get(&t, "desk=d", 6), -1, "full");
    cr_assert_eq(segtab_get(&t, "desk=d", 6), -1);
    cr_assert_eq(t.overflow, 2u);
    cr_assert_eq(segtab_get(&t, "desk=b", 6), 1, "tracked ones still count when full");
    cr_assert_eq(segtab_find(&t, "desk=c", 6), 2);
    cr_assert_eq(segtab_find(&t, "desk=d", 6), -1);
    cr_assert_eq(segtab_find(&t, "desk=", 5), -1, "a prefix is another label");
    cr_assert_str_eq(segtab_label(&t, 1), "desk=b");
    cr_assert_null(segtab_label(&t, 3));
    cr_assert_eq(segtab_get(&t, "", 0), -1);
    cr_assert_eq(t.overflow, 3u);
    cr_assert_eq(t.n, 3u);
    segtab_destroy(&t);
    segtab_destroy(&t);
    /* Many labels: each found again at its own index. */
    cr_assert_eq(segtab_init(&t, 1000), 0);
    char lab[32];
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(lab, sizeof lab, "venue=V%d", i);
        cr_assert_eq(segtab_get(&t, lab, (size_t)n), i);
    }
    for (int i = 999; i >= 0; i--) {
        int n = snprintf(lab, sizeof lab, "venue=V%d", i);
        cr_assert_eq(segtab_find(&t, lab, (size_t)n), i);
    }
    segtab_destroy(&t);
}

/* A tiny msgpack writer for the tests: fixstr, fixmap, fixarray, nil. */
typedef struct {
    uint8_t b[512];
    size_t n;
} mp_t;

static void
mp_str(mp_t *m, const char *s)
{
    size_t len = strlen(s);
    m->b[m->n++] = (uint8_t)(0xa0 | len);
    memcpy(m->b + m->n, s, len);
    m->n += len;
}

static void
mp_hdr(mp_t *m, uint8_t base, unsigned count)
{
    m->b[m->n++] = (uint8_t)(base | count);
}

Test(segment, tags_values_read_trade_by_trade)
{
    /* One map for the whole message. */
    mp_t m = {.n = 0};
    mp_hdr(&m, 0x80, 2);
    mp_str(&m, "desk");
    mp_str(&m, "rates");
    mp_str(&m, "venue");
    mp_str(&m, "XLON");
    cr_assert_eq(seg_tags_validate(m.b, m.n, 3), SEG_OK);
    seg_iter_t it;
    seg_tag_t t[SEG_TAGS_MAX];
    uint32_t n;
    seg_iter_init(&it, m.b, m.n, 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(seg_iter_next(&it, t, &n), SEG_OK);
        cr_assert_eq(n, 2u);
        cr_assert(t[1].vlen == 4 && !memcmp(t[1].val, "XLON", 4));
    }
    cr_assert_eq(seg_iter_next(&it, t, &n), SEG_COUNT);
    /* One per trade, nil for a trade without tags. */
    mp_t a = {.n = 0};
    mp_hdr(&a, 0x90, 3);
    mp_hdr(&a, 0x80, 1);
    mp_str(&a, "desk");
    mp_str(&a, "fx");
    a.b[a.n++] = 0xc0;
    mp_hdr(&a, 0x80, 1);
    mp_str(&a, "desk");
    mp_str(&a, "rates");
    cr_assert_eq(seg_tags_validate(a.b, a.n, 3), SEG_OK);
    cr_assert_eq(seg_tags_validate(a.b, a.n, 2), SEG_COUNT);
    seg_iter_init(&it, a.b, a.n, 3);
    cr_assert_eq(seg_iter_next(&it, t, &n), SEG_OK);
    cr_assert(n == 1 && t[0].vlen == 2 && !memcmp(t[0].val, "fx", 2));
    cr_assert_eq(seg_iter_next(&it, t, &n), SEG_OK);
    cr_assert_eq(n, 0u);
    cr_assert_eq(seg_iter_next(&it, t, &n), SEG_OK);
    cr_assert(n == 1 && t[0].vlen == 5);
    /* Refusals, each with its reason. */
    mp_t bad = {.n = 0};
    mp_hdr(&bad, 0x80, 1);
    mp_str(&bad, "desk");
    bad.b[bad.n++] = 0x07;                      /* an int value */
    cr_assert_eq(seg_tags_validate(bad.b, bad.n, 1), SEG_NOT_MAP);
    bad.n = 0;
    mp_str(&bad, "desk");                       /* a str, not a map */
    cr_assert_eq(seg_tags_validate(bad.b, bad.n, 1), SEG_NOT_MAP);
    bad.n = 0;
    mp_hdr(&bad, 0x80, 1);
    mp_str(&bad, "desk");
    mp_str(&bad, "a,b");
    cr_assert_eq(seg_tags_validate(bad.b, bad.n, 1), SEG_BAD_VALUE);
    bad.n = 0;
    mp_hdr(&bad, 0x80, 2);
    mp_str(&bad, "desk");
    mp_str(&bad, "a");
    mp_str(&bad, "desk");
    mp_str(&bad, "b");
    cr_assert_eq(seg_tags_validate(bad.b, bad.n, 1), SEG_DUPLICATE);
    cr_assert_eq(seg_tags_validate(m.b, m.n - 1, 1), SEG_MSGPACK, "truncated");
    uint8_t big[1] = {0x80 | 15};
    cr_assert_eq(seg_tags_validate(big, 1, 1), SEG_MSGPACK);
    mp_t many = {.n = 0};
    many.b[many.n++] = 0xde;                    /* map16 of 17 pairs */
    many.b[many.n++] = 0;
    many.b[many.n++] = 17;
    for (int i = 0; i < 17; i++) {
        char k[8];
        snprintf(k, sizeof k, "k%d", i);
        mp_str(&many, k);
        mp_str(&many, "v");
    }
    cr_assert_eq(seg_tags_validate(many.b, many.n, 1), SEG_TOO_MANY);
    /* Trailing bytes after the value. */
    m.b[m.n++] = 0xc0;
    cr_assert_eq(seg_tags_validate(m.b, m.n, 1), SEG_MSGPACK);
}
