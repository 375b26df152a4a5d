"""Which shard owns a trade (proto/README.md, "Sharding").

A trade's shard among N is shard_hash(key) % N, where key is the trade
id's UTF-8 bytes (a str id) or its decimal digits (a non-negative int id:
17 and "17" land on the same shard). shard_hash is 64-bit FNV-1a followed
by MurmurHash3's 64-bit finaliser. Shard K of N travels on the topic
prefix shard/<K>/<N>/ in front of attn/<model>; a daemon run with
--shard K/N subscribes to exactly that prefix.
"""
from typing import Union

_MASK = (1 << 64) - 1
MAX_SHARDS = 4096


def shard_hash(key: bytes) -> int:
    """The 64-bit hash of a key (bytes)."""
    h = 0xcbf29ce484222325
    for c in key:
        h = ((h ^ c) * 0x100000001b3) & _MASK
    h ^= h >> 33
    h = (h * 0xff51afd7ed558ccd) & _MASK
    h ^= h >> 33
    h = (h * 0xc4ceb9fe1a85ec53) & _MASK
    h ^= h >> 33
    return h


def id_key(trade_id: Union[str, int]) -> bytes:
    """The bytes a trade id hashes as."""
    if isinstance(trade_id, str):
        return trade_id.encode("utf-8")
    if isinstance(trade_id, bool) or int(trade_id) != trade_id or trade_id < 0:
        raise ValueError("a trade id is a str or a non-negative integer, not %r" % (trade_id,))
    return b"%d" % int(trade_id)


def shard_of(trade_id: Union[str, int], nshards: int) -> int:
    """The shard (0..nshards-1) that owns trade_id; 0 when nshards <= 1."""
    if nshards <= 1:
        return 0
    return shard_hash(id_key(trade_id)) % nshards


def shard_prefix(k: int, nshards: int) -> bytes:
    """The topic prefix of shard k of nshards: b"shard/<k>/<nshards>/"."""
    if not (1 <= nshards <= MAX_SHARDS and 0 <= k < nshards):
        raise ValueError("shard %r of %r: need 0 <= k < n <= %d" % (k, nshards, MAX_SHARDS))
    return b"shard/%d/%d/" % (k, nshards)
