"""The answer cache in Redis (``CACHE_REDIS``): entries shared by every front process and
every gateway that names the same Redis.

Each route (endpoint or version) has three kinds of keys under the prefix: its entries
(``ac:<route>:e:<digest>``, each with the TTL), an index of them by last use (a sorted
set) and their sizes (a hash whose ``""`` field is the total). A read and a write are
one Lua script each, so the route's bounds (``MAX_ENTRIES``, ``MAX_MB``) hold across
processes: a write drops the least recently used until both hold. The index outlives
every entry (its expiry is moved to the last write's TTL), so an entry that expired
still counts until it is dropped, never the other way round.

The scripts are ours: a library cache (aiocache, cachetools) keeps one bound per process,
not one bound over many. They run on the front's lean Redis client (:mod:`..tenants.resp`);
a write is not waited for, so a miss's answer goes out without a second round trip.
"""

from __future__ import annotations

import hashlib
import time

import orjson

from ..tenants.resp import RespClient, RespError
from .upstream_conn import UpstreamResponse

READ = """
local value = redis.call('GET', KEYS[2])
if value then redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1]) end
return value
"""
READ_SHA = hashlib.sha1(READ.encode()).hexdigest()

# KEYS: index, sizes, entry. ARGV: member, now (ms), TTL (ms), value, MAX_ENTRIES,
# MAX_MB in bytes, the route's entry-key prefix (an evicted entry's key is made from it:
# every key of a route shares its hash tag, so they live on one node).
WRITE = """
local size = string.len(ARGV[4])
local most = tonumber(ARGV[6])
if size > most then return 0 end
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], size)
local total = redis.call('HINCRBY', KEYS[2], '', size - old)
local limit = tonumber(ARGV[5])
while redis.call('ZCARD', KEYS[1]) > limit or total > most do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  redis.call('ZREM', KEYS[1], oldest)
  total = redis.call('HINCRBY', KEYS[2], '', -tonumber(redis.call('HGET', KEYS[2], oldest) or '0'))
  redis.call('HDEL', KEYS[2], oldest)
  redis.call('DEL', ARGV[7] .. oldest)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return total
"""


class CacheDown(Exception):
    """Redis did not answer a read (the request goes to the endpoint)."""


def encode_entry(resp: UpstreamResponse) -> bytes:
    """An answer as one value: its status and headers as JSON, a newline, the body."""
    head = [resp.status, [[k.decode("latin-1"), v.decode("latin-1")] for k, v in resp.headers]]
    return orjson.dumps(head) + b"\n" + resp.body


def decode_entry(value: bytes) -> UpstreamResponse:
    """The answer :func:`encode_entry` wrote."""
    head, _, body = value.partition(b"\n")
    status, headers = orjson.loads(head)
    return UpstreamResponse(status, [(k.encode("latin-1"), v.encode("latin-1"))
                                     for k, v in headers], body, worker="cache")


class SharedAnswers:
    """The routes' entries in one Redis."""

    def __init__(self, client: RespClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def _keys(self, target: str) -> tuple[str, str, str]:
        base = f"{self.prefix}ac:{{{target}}}:"
        return base + "i", base + "s", base + "e:"

    async def get(self, target: str, key: bytes) -> UpstreamResponse | None:
        """The kept answer; None on a miss; CacheDown when Redis does not answer."""
        index, _sizes, entries = self._keys(target)
        member = key.hex()
        try:
            value = await self.client.script(READ, READ_SHA, [index, entries + member],
                                             [member, int(time.time() * 1000)])
        except (RespError, OSError, TimeoutError) as exc:
            raise CacheDown(str(exc) or type(exc).__name__) from None
        return None if value is None else decode_entry(value)

    async def put(self, target: str, key: bytes, resp: UpstreamResponse,
                  ttl: float, max_entries: int, max_bytes: int) -> bool:
        """Keep an answer (not waited for); False when Redis was not reachable."""
        index, sizes, entries = self._keys(target)
        member = key.hex()
        try:
            # EVAL with the script, not EVALSHA: the reply is not waited for, so a
            # NOSCRIPT (a restarted Redis) could not be answered by sending it then.
            await self.client.send("EVAL", WRITE, 3, index, sizes, entries + member,
                                   member, int(time.time() * 1000), int(ttl * 1000),
                                   encode_entry(resp), max_entries, max_bytes, entries)
        except (RespError, OSError, TimeoutError):
            return False
        return True
