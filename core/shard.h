/*  shard: which shard a trade belongs to, and the topics that carry a
    shard's trades (proto/README.md, "Sharding"). Socket-free: shared by
    the publishers of libxplain, the daemon and the aggregator.

    A trade's shard is shard_hash(key) mod N, where key is the trade id's
    UTF-8 bytes (a str id) or its decimal digits (a uint id: "0", "17",
    no sign, no leading zero), so that "17" and 17 land on one shard and
    any language computes the same: 64-bit FNV-1a over the key, then
    MurmurHash3's 64-bit finaliser (FNV-1a alone leaves the low bit a
    function of the bytes' parities, which would split ids that end in
    even digits badly over an even N).

    Shard K of N (0 <= K < N) of topic `attn/<model>` travels on
    `shard/<K>/<N>/attn/<model>`: a daemon serving K/N subscribes to the
    prefix `shard/<K>/<N>/`, so ZeroMQ filters at the publisher and a
    shard never receives another's trades. N = 1 is the plain topic.  */
#ifndef XPL_SHARD_H
#define XPL_SHARD_H

#include <stddef.h>
#include <stdint.h>

/* At most this many shards (a bound for topic buffers). */
#define SHARD_MAX 4096u

/* Longest prefix shard_prefix writes, NUL excluded ("shard/4095/4096/"). */
#define SHARD_PREFIX_MAX 16

/* The hash of a key of len bytes. */
uint64_t shard_hash(const void *key, size_t len);

/* The hash of a uint trade id (of its decimal digits). */
uint64_t shard_hash_uint(uint64_t id);

/* The shard of a hash among nshards (0 or 1: shard 0). */
static inline uint32_t
shard_of(uint64_t hash, uint32_t nshards)
{
    return nshards > 1 ? (uint32_t)(hash % nshards) : 0;
}

/* Write "shard/<k>/<n>/" into out (cap bytes, NUL-terminated); returns its
   length, or 0 when k >= n, n > SHARD_MAX or it does not fit. */
size_t shard_prefix(char *out, size_t cap, uint32_t k, uint32_t n);

/* Parse "K/N" (decimal, no leading zeros, 0 <= K < N <= SHARD_MAX,
   nothing else). 0, or -1. */
int shard_parse(const char *s, uint32_t *k, uint32_t *n);

/* When topic (len bytes) starts with a well-formed "shard/<k>/<n>/",
   store k and n and return the prefix length; else 0. */
size_t shard_strip(const char *topic, size_t len, uint32_t *k, uint32_t *n);

#endif
