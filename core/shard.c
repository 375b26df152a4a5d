/*  shard: trade id hash and shard topics. See shard.h.  */
#include "shard.h"

#include <stdio.h>
#include <string.h>

uint64_t
shard_hash(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 0xcbf29ce484222325ULL;        /* FNV-1a 64 */
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;                              /* MurmurHash3 fmix64 */
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

uint64_t
shard_hash_uint(uint64_t id)
{
    char digits[21];
    int n = snprintf(digits, sizeof digits, "%llu", (unsigned long long)id);
    return shard_hash(digits, (size_t)n);
}

size_t
shard_prefix(char *out, size_t cap, uint32_t k, uint32_t n)
{
    if (n == 0 || k >= n || n > SHARD_MAX)
        return 0;
    int len = snprintf(out, cap, "shard/%u/%u/", k, n);
    return len > 0 && (size_t)len < cap ? (size_t)len : 0;
}

/* 1-4 decimal digits without a leading zero at s, followed by `end`
   (or by the end of the string when end is 0); the digits read, or 0. */
static size_t
s_number(const char *s, size_t len, char end, uint32_t *out)
{
    size_t i = 0;
    uint32_t v = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
        if (i == 4)
            return 0;
        v = v * 10 + (uint32_t)(s[i] - '0');
        i++;
    }
    if (i == 0 || (i > 1 && s[0] == '0'))
        return 0;
    if (end ? i >= len || s[i] != end : i != len)
        return 0;
    *out = v;
    return i;
}

size_t
shard_strip(const char *topic, size_t len, uint32_t *k, uint32_t *n)
{
    if (len < 6 || memcmp(topic, "shard/", 6) != 0)
        return 0;
    size_t at = 6, got;
    uint32_t kk, nn;
    if (!(got = s_number(topic + at, len - at, '/', &kk)))
        return 0;
    at += got + 1;
    if (at >= len || !(got = s_number(topic + at, len - at, '/', &nn)))
        return 0;
    at += got + 1;
    if (nn == 0 || kk >= nn || nn > SHARD_MAX)
        return 0;
    *k = kk;
    *n = nn;
    return at;
}

int
shard_parse(const char *s, uint32_t *k, uint32_t *n)
{
    if (!s)
        return -1;
    size_t len = strlen(s);
    uint32_t kk, nn;
    size_t a = s_number(s, len, '/', &kk);
    if (!a)
        return -1;
    size_t b = s_number(s + a + 1, len - a - 1, 0, &nn);
    if (!b || a + 1 + b != len || nn == 0 || kk >= nn || nn > SHARD_MAX)
        return -1;
    *k = kk;
    *n = nn;
    return 0;
}
