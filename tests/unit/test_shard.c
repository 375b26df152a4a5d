/*  Tests of core/shard: the trade-id hash against values computed by an
    independent Python implementation of proto/README.md's definition, its
    spread over shards, and the shard topics.  */
#include "shard.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

Test(shard, hash_matches_the_documented_vectors)
{
    cr_assert_eq(shard_hash("", 0), 0xefd01f60ba992926ULL);
    cr_assert_eq(shard_hash("0", 1), 0xc1e42af088ff1b2cULL);
    cr_assert_eq(shard_hash("t-1", 3), 0xfbf2759cb7ae29c1ULL);
    cr_assert_eq(shard_hash("trade-000042", 12), 0x53a88610d3a8bcd2ULL);
    cr_assert_eq(shard_hash("\xc3\xa9\xe2\x82\xac", 5), 0x6a5fa78123426bb1ULL);
    /* A uint id hashes as its decimal digits: 17 and "17" share a shard. */
    cr_assert_eq(shard_hash_uint(17), 0xd8273c40ac76f52cULL);
    cr_assert_eq(shard_hash_uint(17), shard_hash("17", 2));
    cr_assert_eq(shard_hash_uint(0), shard_hash("0", 1));
    cr_assert_eq(shard_hash_uint(UINT64_MAX), 0xa415ffaf93606d58ULL);
    cr_assert_eq(shard_of(0xa415ffaf93606d58ULL, 3), 2);
    cr_assert_eq(shard_of(0xa415ffaf93606d58ULL, 1), 0);
    cr_assert_eq(shard_of(0xa415ffaf93606d58ULL, 0), 0);
}

/* Sequential ids, ids ending in "0", and ids that all hold an odd number
   of odd bytes ("17-17") spread like a fair draw: every shard within 5
   binomial standard deviations of the mean, over 2..16 shards. (FNV-1a
   alone puts every id of the last kind on shards of one parity for an
   even N: its low bit is the parity of the bytes.) */
Test(shard, spread_of_sequential_and_even_ids)
{
    for (uint32_t n = 2; n <= 16; n++)
        for (int kind = 0; kind < 4; kind++) {
            uint32_t count[16] = {0};
            enum { IDS = 40000 };
            for (uint64_t i = 0; i < IDS; i++) {
                char key[32];
                int len = kind == 0 ? snprintf(key, sizeof key, "%llu", (unsigned long long)i)
                        : kind == 1 ? snprintf(key, sizeof key, "T%llu0", (unsigned long long)i)
                        : kind == 2 ? snprintf(key, sizeof key, "%llu", (unsigned long long)(i * 20))
                                    : snprintf(key, sizeof key, "%llu-%llu", (unsigned long long)i,
                                               (unsigned long long)i);
                count[shard_of(shard_hash(key, (size_t)len), n)]++;
            }
            double mean = (double)IDS / n, tol = 5 * sqrt(mean * (1 - 1.0 / n));
            for (uint32_t k = 0; k < n; k++)
                cr_assert(fabs(count[k] - mean) < tol,
                          "n=%u kind %d shard %u: %u of %d", n, kind, k, count[k], IDS);
        }
}

Test(shard, topics_and_parsing)
{
    char p[SHARD_PREFIX_MAX + 1];
    cr_assert_eq(shard_prefix(p, sizeof p, 4095, 4096), SHARD_PREFIX_MAX);
    cr_assert_str_eq(p, "shard/4095/4096/");
    cr_assert_eq(shard_prefix(p, sizeof p, 1, 3), 10);
    cr_assert_str_eq(p, "shard/1/3/");
    cr_assert_eq(shard_prefix(p, sizeof p, 3, 3), 0);
    cr_assert_eq(shard_prefix(p, sizeof p, 0, 4097), 0);
    cr_assert_eq(shard_prefix(p, 5, 0, 2), 0, "does not fit");

    uint32_t k = 99, n = 99;
    const char *t = "shard/2/3/attn/m1";
    cr_assert_eq(shard_strip(t, strlen(t), &k, &n), 10);
    cr_assert_eq(k, 2);
    cr_assert_eq(n, 3);
    const char *bad[] = {"attn/m1", "shard/3/3/attn/m1", "shard/01/3/attn/m1", "shard/1/3",
                         "shard//3/", "shard/1/0/", "shard/1/5000/", "shard/a/3/", "shard/1/3x/",
                         "shard/1-3/", "shard/12345/99999/"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(shard_strip(bad[i], strlen(bad[i]), &k, &n), 0, "%s", bad[i]);

    cr_assert_eq(shard_parse("0/1", &k, &n), 0);
    cr_assert_eq(k, 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(shard_parse("2/3", &k, &n), 0);
    cr_assert_eq(k, 2);
    cr_assert_eq(n, 3);
    const char *badp[] = {"3/3", "1/0", "/3", "1/", "1/3/", "01/3", "1/03", "-1/3", "1 /3", "",
                          "4096/4097", "1/3 "};
    for (size_t i = 0; i < sizeof badp / sizeof badp[0]; i++)
        cr_assert_eq(shard_parse(badp[i], &k, &n), -1, "'%s'", badp[i]);
    cr_assert_eq(shard_parse(NULL, &k, &n), -1);
}
